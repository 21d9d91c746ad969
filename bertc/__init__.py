"""bertc: a graph-first compiler for BERT-family models."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_spec", "dump_spec", "build_model"]


def load_spec(source):
    """Load and validate a spec (path to a JSON file, or a dict)."""
    from bertc.spec import load_spec as _load

    return _load(source)


def dump_spec(spec):
    from bertc.spec import dump_spec as _dump

    return _dump(spec)


def build_model(spec):
    """Build the Keras functional model of a spec (a :class:`bertc.spec.Spec`, a path or a dict)."""
    from bertc.build import build_model as _build

    return _build(spec)
