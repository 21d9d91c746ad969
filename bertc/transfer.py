"""Copy the weights of one built model into another, matched by weight path.

Weight paths are semantic (``layer_2/attention/query/kernel``), so a canonical
``bert`` model's weights land in a default ``scaffold`` model unchanged. Any
mismatch is an error naming the first offending weight and both shapes.
"""
from __future__ import annotations

from bertc.errors import TransferError


def transfer_weights(source, target) -> int:
    """Assign every weight of ``target`` from the same-path weight of ``source``; returns the count."""
    src = {w.path: w for w in source.weights}
    tgt = list(target.weights)
    for w in tgt:
        other = src.get(w.path)
        if other is None:
            raise TransferError(f"cannot transfer weights: target weight '{w.path}' {tuple(w.shape)} "
                                f"has no counterpart in the source model")
        if tuple(other.shape) != tuple(w.shape):
            raise TransferError(f"cannot transfer weights: '{w.path}' has shape {tuple(w.shape)} in the target "
                                f"but {tuple(other.shape)} in the source")
    extra = sorted(set(src) - {w.path for w in tgt})
    if extra:
        raise TransferError(f"cannot transfer weights: source weight '{extra[0]}' {tuple(src[extra[0]].shape)} "
                            f"has no counterpart in the target model ({len(extra)} unmatched)")
    for w in tgt:
        w.assign(src[w.path].numpy())
    return len(tgt)


def load_keras_model(path):
    """Load a ``.keras`` file written by ``bertc build`` (or the ``model.keras`` inside an OUT dir)."""
    from pathlib import Path

    import bertc.components  # noqa: F401 - registers bertc's layers for deserialization
    from bertc.components.common import keras

    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.exists():
        raise TransferError(f"{path}: no such model file")
    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as exc:
        raise TransferError(f"{path}: cannot load the Keras model: {exc}") from None
