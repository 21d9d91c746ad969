"""Copy the weights of one built model into another, matched by weight path.

Weight paths are semantic (``layer_2/attention/query/kernel``), so a canonical
``bert`` model's weights land in a default ``scaffold`` model unchanged. Any
mismatch is an error naming the first offending weight and both shapes.
"""
from __future__ import annotations

from bertc.errors import ModelFileError, TransferError


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


def check_keras_archive(path, error=ModelFileError):
    """``path`` (a ``.keras`` file, or an OUT dir holding ``model.keras``) as a Path, once it is seen to be
    a whole Keras archive: a zip holding ``config.json`` and ``model.weights.h5`` whose entries pass their
    checksums. Raises ``error`` (by default :class:`ModelFileError`) naming the file and what is wrong."""
    import zipfile
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise error(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        raise error(f"{path}: not a Keras model archive (a .keras file is a zip archive; this one is "
                    f"{path.stat().st_size:,} bytes of something else: truncated or overwritten?)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = {"config.json", "model.weights.h5"} - names
            if missing:
                raise error(f"{path}: damaged Keras archive: {', '.join(sorted(missing))} missing")
            bad = archive.testzip()
            if bad is not None:
                raise error(f"{path}: damaged Keras archive: {bad} fails its checksum")
    except zipfile.BadZipFile as exc:
        raise error(f"{path}: damaged Keras archive: {exc}") from None
    except (EOFError, OSError) as exc:  # an entry runs past the end of a truncated file
        raise error(f"{path}: damaged Keras archive: {type(exc).__name__}: {exc}") from None
    return path


def load_keras_model(path):
    """Load a ``.keras`` file written by ``bertc build`` (or the ``model.keras`` inside an OUT dir).

    Raises :class:`ModelFileError` naming the file when it is missing, not a Keras archive
    (truncated, overwritten) or cannot be deserialized. (To read the weights alone, without
    deserializing the model or importing bertc's layers, use :class:`bertc.checkpoints.KerasCheckpoint`.)
    """
    import bertc.components  # noqa: F401 - registers bertc's layers for deserialization
    from bertc.components.common import keras

    path = check_keras_archive(path)
    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as exc:   # first what to load when a plug-in is missing, then Keras' words, shortened
        from bertc.plugins import load_failure

        raise ModelFileError(load_failure(path, exc)) from None
