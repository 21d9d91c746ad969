"""model.keras with reproducible bytes.

Keras writes the save date into ``metadata.json``, the current time on the zip entry of
``model.weights.h5``, and ``id()`` of Python objects as ``shared_object_id`` in
``config.json``. :func:`save_keras` has Keras save an unzipped directory, then zips it itself: a
fixed date, fixed entry timestamps and permissions, and shared-object ids renumbered in order of
appearance (the same objects stay shared: each distinct id gets one new number). The weights are
copied in chunks, never held in memory as a whole.

``model.weights.h5`` numbers each layer's variables (``layers/<...>/vars/0``) without naming them, so
the archive gains one entry of bertc's own, ``bertc_weights.json`` (:data:`WEIGHTS_MANIFEST`): for each
dataset of the h5 that holds a variable, in the order Keras wrote them, the variable's path
(``variable.path``, e.g. ``layer_0/attention/query/kernel``). It lets a reader name the weights with
h5py alone (:class:`bertc.checkpoints.KerasCheckpoint`), without deserializing the model.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

FIXED_DATE = "1980-01-01@00:00:00"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
WEIGHTS_MANIFEST = "bertc_weights.json"
MANIFEST_FORMAT = "bertc-keras-weights"
MANIFEST_VERSION = 1


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
    first = [n for n in ("metadata.json", "config.json", "model.weights.h5", "model.weights.npz", WEIGHTS_MANIFEST)
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


def _saved_variables(model) -> list[tuple[str, object]]:
    """(h5 dataset, what was stored there) for every value Keras's saving_lib writes for ``model``, in
    the order it writes them.

    The same walk as ``keras.src.saving.saving_lib._save_state`` (Keras 3.15), with Keras's own helpers:
    each saveable once (by id), its ``save_own_variables`` into ``<inner path>/vars`` (a Layer stores
    ``_trainable_variables + _non_trainable_variables`` as ``0``, ``1``, ...), then its children in
    ``_walk_saveable``'s order (a Functional/Sequential model's ``layers`` first, then its attributes,
    private ones last), a list/dict/tuple of saveables as ``<attribute>/<snake_case class>[_N]`` and a
    nested container as ``container[_N]``. :func:`_weights_manifest` checks the result against the file."""
    from keras.src.saving.keras_saveable import KerasSaveable
    from keras.src.saving.saving_lib import _get_unique_name, _walk_saveable
    from keras.src.utils import naming

    found: list[tuple[str, object]] = []
    visited: set[int] = set()

    def join(inner: str, name: str) -> str:
        return f"{inner}/{name}" if inner else name

    def state(saveable, inner: str) -> None:
        if id(saveable) in visited:
            return
        if hasattr(saveable, "save_own_variables"):
            store: dict = {}
            saveable.save_own_variables(store)
            for key, value in store.items():
                found.append((join(join(inner, "vars"), str(key)), value))
        visited.add(id(saveable))
        for attr, child in _walk_saveable(saveable):
            if isinstance(child, KerasSaveable):
                state(child, join(inner, attr))
            elif isinstance(child, (list, dict, tuple)):
                container(child, join(inner, attr), set())

    def container(items, inner: str, seen: set) -> None:
        if id(items) in seen:
            return
        seen.add(id(items))
        used: dict = {}
        for item in (list(items.values()) if isinstance(items, dict) else items):
            if isinstance(item, KerasSaveable):
                state(item, join(inner, _get_unique_name(naming.to_snake_case(item.__class__.__name__), used)))
            elif isinstance(item, (list, dict, tuple)):
                container(item, join(inner, _get_unique_name("container", used)), seen)

    state(model, "")
    return found


def _h5_datasets(h5_path: Path) -> dict[str, tuple[int, ...]]:
    import h5py

    shapes: dict[str, tuple[int, ...]] = {}
    with h5py.File(h5_path, "r") as h5:
        h5.visititems(lambda name, obj: shapes.__setitem__(name, tuple(int(d) for d in obj.shape))
                      if isinstance(obj, h5py.Dataset) else None)
    return shapes


def _weights_manifest(model, h5_path: Path) -> dict:
    """The content of :data:`WEIGHTS_MANIFEST` for ``model`` just saved to ``h5_path``: each dataset that
    holds a variable, with the variable's path, in the order Keras wrote them. Raises RuntimeError when
    the walk and the file disagree (a dataset missing from either, another shape, two variables with one
    path): a Keras whose saving walk differs from 3.15's."""
    import keras

    saved = _saved_variables(model)
    datasets = _h5_datasets(h5_path)
    mismatch = sorted(set(datasets) ^ {d for d, _ in saved})
    weights, owner = [], {}
    for dataset, value in saved:
        shape = tuple(int(d) for d in getattr(value, "shape", ()))
        if dataset in datasets and datasets[dataset] != shape:
            mismatch.append(f"{dataset} {datasets[dataset]} != {shape}")
        if not isinstance(value, keras.Variable):
            continue   # a value a layer saves that is no variable (none of bertc's do): not a weight
        if owner.setdefault(value.path, id(value)) != id(value):
            raise RuntimeError(f"cannot describe the weights of model.weights.h5: two variables are both "
                               f"{value.path!r}")
        weights.append({"dataset": dataset, "path": value.path})
    if mismatch:
        raise RuntimeError(f"cannot describe the weights of model.weights.h5: Keras {keras.__version__} saved "
                           f"them otherwise than bertc's walk of the model says ({', '.join(mismatch[:5])})")
    return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "weights": weights}


def _require_room(model, path: Path) -> None:
    """An ``OSError`` (ENOSPC, naming ``path``) where the disk has not the room the save takes at its peak: the
    weights twice (h5 file, then the zip of it) and a margin. h5py meeting a full disk printed hundreds of
    tracebacks, then crashed the process (a segmentation fault, exit 139) instead of raising."""
    import errno

    import numpy as np

    try:
        weights = sum(int(np.prod(v.shape)) * np.dtype(str(v.dtype)).itemsize for v in model.weights)
        free = shutil.disk_usage(path.parent).free
    except (OSError, TypeError, ValueError):   # no figure to go by: let the save tell
        return
    need = 2 * weights + (1 << 20)
    if free < need:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (saving the Keras model takes about "
                                    f"{need / 2**20:,.1f} MB; {free / 2**20:,.1f} MB free)", str(path))


def _require_rebuildable(model) -> None:
    """Refuse (:class:`PluginError`, exit 2) a plug-in's layer that its own config does not rebuild
    (``from_config(get_config())``), before any model.keras is written: a get_config that drops the spec wrote a
    model.keras that the build passed and that no process could load again, not even with the plug-in (its error
    then named bertc's base class). The model's own layers, which the saved config rebuilds one by one (a layer
    inside another is rebuilt by its parent, from the parent's spec); each plug-in class once; bertc's own layers
    are held to it by the tests."""
    from bertc.errors import PluginError
    from bertc.registry import is_builtin

    seen = set()
    for layer in model.layers:
        cls = type(layer)
        if cls in seen or is_builtin(cls) or cls.__module__.split(".")[0] == "keras":
            continue
        seen.add(cls)
        try:
            cls.from_config(layer.get_config())
        except Exception as exc:
            from bertc.plugins import label_of

            raise PluginError(f"{label_of(cls)}{cls.__name__} (layer {layer.name!r}): its get_config() does not "
                              f"rebuild it through from_config() ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:400]}), so the model.keras "
                              f"a build writes could not be loaded again, not even with the plug-in: get_config() "
                              f"must return what __init__ takes (the spec among it)") from None


def save_keras(model, path: Path) -> dict:
    """Save ``model`` to ``path`` (.keras) with reproducible bytes. Keras writes the weights into an
    unzipped directory first (straight to disk: its zipped save buffers the whole weights file in
    memory), then bertc zips it, with :data:`WEIGHTS_MANIFEST` naming the variables of the h5."""
    import tempfile

    path = Path(path)
    _require_rebuildable(model)
    _require_room(model, path)
    tmp = path.with_name(path.name + ".partial")
    workdir = Path(tempfile.mkdtemp(prefix="bertc-keras-", dir=path.parent))
    try:
        model.save(str(workdir / "model"), zipped=False)
        manifest = _weights_manifest(model, workdir / "model" / "model.weights.h5")
        (workdir / "model" / WEIGHTS_MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n",
                                                          encoding="utf-8")
        try:
            zip_keras_dir(workdir / "model", tmp)
        except OSError as exc:   # a full disk: the error names the file (zipfile's writes do not)
            if exc.filename is None and exc.errno is not None:
                raise OSError(exc.errno, exc.strerror, str(tmp)) from None
            raise
        os.replace(tmp, path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        tmp.unlink(missing_ok=True)
    return {"path": path.name, "bytes": path.stat().st_size, "format": "keras", "precision": "fp32"}
