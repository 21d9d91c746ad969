"""bertc: a graph-first compiler for BERT-family models.

``import bertc`` registers bertc's Keras layers with Keras' serialization, so a
``model.keras`` written by ``bertc build`` loads in any process::

    import bertc, keras
    model = keras.saving.load_model("out/model.keras")   # or: bertc.load_model("out")
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow's oneDNN ops (on by default on x86) bring oneDNN's CPU allocator, which keeps every block
# it ever freed in its own pool for the life of the process: validation's gradient step (~3 x the
# weight bytes) then stays resident under every later stage of a build (BERT-large: 9.6 GB peak with
# oneDNN, 5.8 GB without, same wall time). Off unless set, and only when TensorFlow is not loaded yet
# (it reads the variable once); TF_ENABLE_ONEDNN_OPTS=1 turns it back on.
if "tensorflow" not in sys.modules:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"

__all__ = ["__version__", "load_spec", "dump_spec", "build_model", "load_model", "signature_of", "load_weights",
           "import_spec", "Runtime"]

# Registers the components (spec models, Keras layers). Deserializing a model.keras needs
# the layer classes, so this cannot be deferred; it builds nothing. TensorFlow's start-up
# chatter on the native stderr goes to a log file (BERTC_DEBUG=1 shows it).
from bertc.quiet import import_log as _import_log, native_stderr_to as _native_stderr_to  # noqa: E402

with _native_stderr_to(_import_log()):
    import bertc.components  # noqa: E402,F401


from bertc.runtime import Runtime  # noqa: E402  (bertc run from Python; imports no TensorFlow of its own)


def load_spec(source):
    """Load and validate a spec (path to a JSON file, or a dict). Raises :class:`bertc.errors.SpecError`."""
    from bertc.spec import load_spec as _load

    return _load(source)


def dump_spec(spec):
    """The spec as a JSON-ready dict (defaults filled in)."""
    from bertc.spec import dump_spec as _dump

    return _dump(spec)


def signature_of(spec):
    """The model's interface (inputs and outputs) computed from a loaded spec."""
    from bertc.signature import signature_of as _sig

    return _sig(spec)


def build_model(spec):
    """Build a spec (a :class:`bertc.spec.Spec`, a path or a dict): a :class:`bertc.build.Built` holding the
    Keras functional model (``.model``) and handles to its parts (``.encoder``, ``.head``, ``.embedding``,
    ``.position``, ``.blocks``, ``.signature``)."""
    from bertc.build import build_model as _build

    return _build(spec)


def load_model(path):
    """Load a Keras model written by ``bertc build``: an OUT directory or a ``.keras`` file.

    Raises :class:`bertc.errors.ModelFileError` naming the file when it is missing or damaged.
    """
    from bertc.transfer import load_keras_model

    return load_keras_model(path)


def load_weights(model, spec, source):
    """Load trained weights (a HF directory / .safetensors, a TF checkpoint, a bertc build) into ``model``
    built from ``spec``; all or nothing. Returns what was loaded; raises :class:`bertc.errors.WeightsError`
    listing every missing, misshapen or unused tensor."""
    from bertc.importers import load_weights as _load

    return _load(model, load_spec(spec) if not hasattr(spec, "encoder") else spec, source)


def import_spec(source, spec_path, name=None):
    """Write a spec for the trained checkpoint at ``source`` to ``spec_path`` (``bertc import``); returns it."""
    from bertc.importers import import_spec as _import

    return _import(source, spec_path, name)
