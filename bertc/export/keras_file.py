"""model.keras with reproducible bytes.

Keras writes the save date into ``metadata.json``, the current time on the zip entry of
``model.weights.h5``, and ``id()`` of Python objects as ``shared_object_id`` in
``config.json``. :func:`save_keras` saves normally, then rewrites the zip: a fixed date, fixed
entry timestamps and permissions, and shared-object ids renumbered in order of appearance (the
same objects stay shared: each distinct id gets one new number). The weights are copied in
chunks, never held in memory as a whole.
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


def normalize_keras_archive(src: Path, dst: Path) -> None:
    """Copy the .keras zip ``src`` to ``dst`` with the volatile parts made fixed."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            out = zipfile.ZipInfo(info.filename, date_time=_ZIP_TIME)
            out.compress_type = info.compress_type
            out.external_attr = 0o644 << 16
            out.create_system = 3
            if info.filename == "metadata.json":
                meta = json.loads(zin.read(info))
                if "date_saved" in meta:
                    meta["date_saved"] = FIXED_DATE
                zout.writestr(out, json.dumps(meta))
            elif info.filename == "config.json":
                config = json.loads(zin.read(info))
                _renumber_shared_ids(config, {})
                zout.writestr(out, json.dumps(config))
            else:
                out.file_size = info.file_size
                with zin.open(info) as fin, zout.open(out, "w", force_zip64=info.file_size > 2**31) as fout:
                    shutil.copyfileobj(fin, fout, 16 << 20)


def save_keras(model, path: Path) -> dict:
    path = Path(path)
    raw = path.with_name(path.name + ".raw.keras")
    tmp = path.with_name(path.name + ".partial")
    try:
        model.save(raw)
        normalize_keras_archive(raw, tmp)
        os.replace(tmp, path)
    finally:
        raw.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return {"path": path.name, "bytes": path.stat().st_size, "format": "keras", "precision": "fp32"}
