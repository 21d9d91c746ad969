"""model.keras with reproducible bytes.

Keras writes the save date into ``metadata.json``, the current time on the zip entry of
``model.weights.h5``, and ``id()`` of Python objects as ``shared_object_id`` in
``config.json``. :func:`save_keras` has Keras save an unzipped directory, then zips it itself: a
fixed date, fixed entry timestamps and permissions, and shared-object ids renumbered in order of
appearance (the same objects stay shared: each distinct id gets one new number). The weights are
copied in chunks, never held in memory as a whole.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

FIXED_DATE = "1980-01-01@00:00:00"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _renumber_shared_ids(node, mapping: dict) -> None:
    if isinstance(node, dict):
        for key in node:  # insertion order: deterministic
            if key == "shared_object_id":
                node[key] = mapping.setdefault(node[key], len(mapping) + 1)
            else:
                _renumber_shared_ids(node[key], mapping)
    elif isinstance(node, list):
        for item in node:
            _renumber_shared_ids(item, mapping)


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    info.create_system = 3
    return info


def _normalized(name: str, data: bytes) -> bytes:
    if name == "metadata.json":
        meta = json.loads(data)
        if "date_saved" in meta:
            meta["date_saved"] = FIXED_DATE
        return json.dumps(meta).encode()
    if name == "config.json":
        config = json.loads(data)
        _renumber_shared_ids(config, {})
        return json.dumps(config).encode()
    return data


def zip_keras_dir(directory: Path, dst: Path) -> None:
    """The .keras zip of a model saved with ``zipped=False``: Keras's entry order (metadata, config,
    weights, assets), fixed timestamps, normalized JSON; the weights file is streamed, not loaded."""
    directory = Path(directory)
    first = [n for n in ("metadata.json", "config.json", "model.weights.h5", "model.weights.npz")
             if (directory / n).is_file()]
    rest = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and p.relative_to(directory).as_posix() not in first)
    with zipfile.ZipFile(dst, "w") as zout:
        for name in first + rest:
            path = directory / name
            if name.endswith(".json"):
                zout.writestr(_entry(name), _normalized(name, path.read_bytes()))
                continue
            info = _entry(name)
            info.file_size = path.stat().st_size
            with open(path, "rb") as fin, zout.open(info, "w", force_zip64=info.file_size > 2**31) as fout:
                shutil.copyfileobj(fin, fout, 16 << 20)


def save_keras(model, path: Path) -> dict:
    """Save ``model`` to ``path`` (.keras) with reproducible bytes. Keras writes the weights into an
    unzipped directory first (straight to disk: its zipped save buffers the whole weights file in
    memory), then bertc zips it."""
    import tempfile

    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    workdir = Path(tempfile.mkdtemp(prefix="bertc-keras-", dir=path.parent))
    try:
        model.save(str(workdir / "model"), zipped=False)
        zip_keras_dir(workdir / "model", tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        tmp.unlink(missing_ok=True)
    return {"path": path.name, "bytes": path.stat().st_size, "format": "keras", "precision": "fp32"}
