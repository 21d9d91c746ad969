"""Importing this package registers every component shipped with bertc (and imports TensorFlow and Keras:
their start-up chatter on the native stderr goes to a log file; BERTC_DEBUG=1 shows it)."""
from bertc.quiet import import_log as _import_log, native_stderr_to as _native_stderr_to

with _native_stderr_to(_import_log()):
    from bertc.components import attention, blocks, embeddings, encoders, feedforward, heads, positions  # noqa: F401
    from bertc.components import modernbert  # noqa: F401
from bertc import losses as _losses  # noqa: E402,F401  (the heads' losses, registered with Keras' serialization)
