"""Importing this package registers every component shipped with bertc."""
from bertc.components import attention, blocks, embeddings, encoders, feedforward, heads, positions  # noqa: F401
from bertc.components import modernbert  # noqa: F401
