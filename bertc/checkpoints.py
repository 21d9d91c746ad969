"""Checkpoint readers: one class per file format, each giving tensor name -> numpy array lazily.

A reader knows nothing about models: it lists the tensors a file holds (``names()``, ``shape()``)
and reads one on request (``read()``, always float32 for floating tensors). Which reader a path
needs is decided by :func:`open_checkpoint`. TensorFlow is imported only by the readers that need it;
torch is never a requirement (``pytorch_model.bin`` is read by :mod:`bertc.torch_pickle`). A bertc ``.keras`` file is read with h5py, never
deserialized: no reader imports bertc's layer library or a plug-in (a ``.keras`` file bertc did not
write, without ``bertc_weights.json``, is the exception: it is deserialized).
"""
from __future__ import annotations

import io
import json
import re
import os
import stat
from pathlib import Path, PurePath
from typing import Optional

import numpy as np

from bertc.errors import WeightsError, git_lfs_pointer

MANIFEST = "bertc_weights.json"   # bertc.export.keras_file.WEIGHTS_MANIFEST (not imported: it needs no Keras)

# the most a checkpoint's own JSON file (config.json, a sharded checkpoint's index, modules.json, a module's config)
# may hold: real ones are kilobytes (an index of a large model a few MB); a link to /dev/zero or a huge file would
# otherwise be read whole into memory
JSON_LIMIT = 64 << 20

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def not_regular(path) -> str:
    """What ``path`` is when it exists but is not a regular file (after symlinks: a FIFO, a device, a socket, a
    directory), else "". Opening a FIFO blocks until a writer comes, and reading a device (/dev/zero) never ends,
    so a checkpoint's files are looked at before they are opened. Never raises."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return ""
    if stat.S_ISREG(mode):
        return ""
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def regular_file(path, what: str = "file") -> Path:
    """``path``, after :class:`WeightsError` when it exists and is not a regular file (see :func:`not_regular`)."""
    kind = not_regular(path)
    if kind:
        raise WeightsError(f"{path}: is {kind}, not a regular file: bertc reads a checkpoint's {what} only from "
                           f"regular files (or links to them)")
    return Path(path)


def checkpoint_text(path, what: str = "JSON file") -> str:
    """The text of a checkpoint's JSON file (config, index, modules), after :func:`regular_file` and the
    :data:`JSON_LIMIT` size cap (:class:`WeightsError`, naming it); ``OSError`` (``FileNotFoundError`` included)
    and ``ValueError`` (not UTF-8) as reading it raises them."""
    regular_file(path, what)
    with open(path, "rb") as f:
        data = f.read(JSON_LIMIT + 1)
    if len(data) > JSON_LIMIT:
        raise WeightsError(f"{path}: more than {JSON_LIMIT >> 20} MB, far more than a checkpoint's {what} holds; "
                           f"bertc does not read it")
    return data.decode("utf-8")


def json_loads(text):
    """``json.loads`` for a checkpoint's files, where a value nested past Python's recursion limit (a crafted
    100,000-deep list) raises ValueError, as any other JSON it cannot read does, not RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def check_link(path: Path, directory: Path, what: str = "checkpoint file") -> None:
    """Refuse (:class:`WeightsError`) a file of a checkpoint that bertc copies into a build (a tokenizer file, the
    checkpoint's config) when it is a link to a file of another name outside the checkpoint's folder: a
    ``merges.txt -> ~/.ssh/id_ed25519`` (any UTF-8 text passes as a vocabulary, any JSON object as a config) would
    ship the key with the model. Followed: a link within the checkpoint's folder, one to a file of the same name
    (``ft/tokenizer.json -> ../base/tokenizer.json``), one into a download cache's content store (huggingface_hub's
    ``models--*/blobs/<hash>``, git-annex's ``.git/annex/objects``: names are hashes there)."""
    if not path.is_symlink():
        return
    target, directory = path.resolve(), directory.resolve()
    inside = directory in target.parents
    # a cache's snapshots/<revision>/ links to ../../blobs/<hash> (the cache's folder is models--<org>--<name>)
    cached = target.parent.name == "blobs" and (target.parent.parent.name.startswith(("models--", "datasets--"))
                                                or directory.parent.name == "snapshots"
                                                and directory.parent.parent == target.parent.parent) \
        or ".git/annex/objects/" in target.as_posix()
    if not (inside or cached or target.name == path.name):
        raise WeightsError(f"{path}: the {what} is a link to {target}, which is no {what} of that name, nor in a "
                           f"download cache: bertc copies the {what} into the build; link to a file named "
                           f"{path.name}, or put the file itself there")


def inside_name(name: str) -> bool:
    """Whether a file or folder name that a checkpoint's own file gives (an index's ``weight_map`` shard, a
    ``modules.json`` path) stays inside the directory it is relative to: relative, and no ``..`` leaving it. The
    name is judged, not where a symlink it names points (the Hugging Face cache's snapshots link to ../../blobs/)."""
    if not isinstance(name, str) or "\0" in name or os.path.isabs(name) or PurePath(name).drive:
        return False
    normal = os.path.normpath(name) if name else "."
    return normal != os.pardir and not normal.startswith(os.pardir + os.sep)


def _float32(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    floating = np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16"  # ml_dtypes' bfloat16
    return array.astype(np.float32) if floating else array


class Checkpoint:
    """Base: subclasses fill ``_shapes`` (name -> shape) and implement ``_read``."""

    format = "?"

    def __init__(self, location: Path):
        self.location = Path(location)
        self._shapes: dict[str, tuple[int, ...]] = {}

    def names(self) -> list[str]:
        return sorted(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def read(self, name: str) -> np.ndarray:
        try:
            return _float32(self._read(name))
        except WeightsError:
            raise
        except Exception as exc:
            raise WeightsError(f"{self.location}: cannot read tensor {name!r}: {type(exc).__name__}: {exc}") from None

    def _read(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.location} ({self.format}, {len(self._shapes)} tensors)"


class SafetensorsCheckpoint(Checkpoint):
    """One ``.safetensors`` file, or the shards named by ``model.safetensors.index.json``."""

    format = "safetensors"

    def __init__(self, location: Path, files: list[Path], weight_map: dict | None = None):
        super().__init__(location)
        from safetensors import safe_open

        self._files: dict[str, Path] = {}
        self._handles = {}
        self._dtypes: dict[str, str] = {}
        found: dict[str, list[Path]] = {}
        shapes_in, dtypes_in = {}, {}
        for path in files:
            regular_file(path, "weights")
            try:
                handle = safe_open(str(path), framework="np")
                keys = list(handle.keys())
                slices = {k: handle.get_slice(k) for k in keys}
                shapes = {k: tuple(int(d) for d in part.get_shape()) for k, part in slices.items()}
                dtypes = {k: str(part.get_dtype()) for k, part in slices.items()}
            except FileNotFoundError:
                raise WeightsError(f"{path}: file not found (named by {location})") from None
            except Exception as exc:  # safetensors_rust.SafetensorError and friends: truncated, not safetensors
                pointer = git_lfs_pointer(path)
                if pointer:
                    raise WeightsError(f"{path}: {pointer}") from None
                raise WeightsError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc}); "
                                   f"the file may be truncated or incompletely downloaded") from None
            self._handles[path] = handle
            for k in keys:
                found.setdefault(k, []).append(path)
                shapes_in[(k, path)] = shapes[k]
            dtypes_in.update({(k, path): dtype for k, dtype in dtypes.items()})
        self._files = _one_shard_each(found, location, weight_map)
        self._shapes = {k: shapes_in[(k, path)] for k, path in self._files.items()}
        self._dtypes = {k: dtypes_in[(k, path)] for k, path in self._files.items()}

    def _read(self, name):
        handle = self._handles[self._files[name]]
        dtype = self._dtypes.get(name, "")
        if dtype.startswith(("F8", "F4", "F6")) or dtype == "C64":   # no numpy type (F8_E4M3 ...), or complex
            raise WeightsError(f"{self._files[name]}: tensor {name!r} has dtype {dtype}, which bertc cannot read "
                               f"(it reads float64 / 32 / 16, bfloat16 and integer tensors): dequantize the "
                               f"checkpoint to one of those first")
        try:
            return handle.get_tensor(name)
        except (TypeError, ValueError, AttributeError) as exc:  # bfloat16 has no numpy dtype: widen it by hand
            # (safetensors 0.4.0 asks numpy for np.bfloat16: AttributeError)
            if "bf16" not in str(exc).lower() and "bfloat16" not in str(exc).lower():
                raise
            return _bf16_tensor(self._files[name], name)


def _bf16_tensor(path: Path, name: str) -> np.ndarray:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json_loads(f.read(n))
        entry = header[name]
        if entry["dtype"] != "BF16":
            raise WeightsError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, which bertc cannot read")
        start, end = entry["data_offsets"]
        f.seek(8 + n + start)
        raw = np.frombuffer(f.read(end - start), dtype="<u2")
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


def _one_shard_each(found: dict, index: Path, weight_map: Optional[dict]) -> dict:
    """{tensor name: the shard file it is read from}, from ``found`` ({name: [every shard holding it]}). A tensor in
    several shards is read from the one the index's ``weight_map`` names for it; where it names none of them, which
    copy is meant is unknown: refused, naming them (never the last shard read)."""
    chosen = {}
    for name, paths in found.items():
        if len(paths) == 1 or weight_map is None:
            chosen[name] = paths[-1]
            continue
        mapped = weight_map.get(name)
        mapped = index.parent / mapped if isinstance(mapped, str) else None
        if mapped not in paths:
            listed = ", ".join(p.name for p in paths[:-1]) + f" and {paths[-1].name}"
            raise WeightsError(f"{index}: tensor {name!r} is in {len(paths)} shards, {listed}, and the index's "
                               f"weight_map names {'none of them' if mapped is None else mapped.name} for it: which "
                               f"copy is meant is unknown (a shard from another save of the model?)")
        chosen[name] = mapped
    return chosen


def _shard_files(index: Path, kind: str) -> tuple[list[Path], dict]:
    """The shard files a sharded checkpoint's index names (its ``weight_map``: tensor name -> file beside it), as
    transformers reads them: every file named, each once; a missing one is named with the index. With them, the
    weight_map itself."""
    try:
        weight_map = json_loads(checkpoint_text(index, f"{kind} index"))["weight_map"]
        outside = next(((k, f) for k, f in weight_map.items() if isinstance(f, str) and not inside_name(f)), None)
        if outside is not None:
            raise WeightsError(f"{index}: its weight_map names {json.dumps(outside[1])} for {outside[0]!r}, a file "
                               f"outside the checkpoint's directory ({index.parent}); a sharded checkpoint's shards "
                               f"are beside its index")
        files = sorted({index.parent / f for f in weight_map.values()})
    except FileNotFoundError:
        raise WeightsError(f"{index}: file not found") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WeightsError(f"{index}: not a {kind} index (a JSON object with 'weight_map': tensor name -> shard "
                           f"file): {type(exc).__name__}: {exc}") from None
    if not files:
        raise WeightsError(f"{index}: its weight_map names no shard file")
    for f in files:
        regular_file(f, "weights")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise WeightsError(f"{index}: names {len(missing)} of its {len(files)} shard file(s) that are not beside it: "
                           f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''} (an incomplete download?)")
    return files, weight_map


def _sharded_safetensors(index: Path) -> SafetensorsCheckpoint:
    return SafetensorsCheckpoint(index, *_shard_files(index, "safetensors"))


class TorchCheckpoint(Checkpoint):
    """``pytorch_model.bin`` / ``.pt`` (a ``torch.save`` state dict), read without torch
    (:mod:`bertc.torch_pickle`: zip and legacy formats, only a state dict's names resolved). A file that reader
    refuses is tried with ``torch.load(weights_only=True)`` where torch is installed."""

    format = "pytorch"

    def __init__(self, location: Path):
        super().__init__(location)
        from bertc.torch_pickle import TorchFile

        regular_file(location, "weights")
        try:
            self._file = TorchFile(location)
        except WeightsError as exc:
            self._file, self._tensors = None, self._torch_load(location, exc)
            self._shapes = {k: tuple(int(d) for d in v.shape) for k, v in self._tensors.items()}
            return
        self._shapes = {k: ref.shape for k, ref in self._file.tensors.items()}

    @staticmethod
    def _torch_load(location: Path, error: WeightsError) -> dict:
        try:
            import torch
        except ImportError:
            raise error from None
        try:
            state = torch.load(str(location), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"{error} (torch.load: {type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict):
            raise WeightsError(f"{location}: expected a state dict (name -> tensor), got {type(state).__name__}")
        return {k: v for k, v in state.items() if hasattr(v, "shape")}

    def _read(self, name):
        if self._file is not None:
            return self._file.read(name)
        t = self._tensors[name]
        return t.float().numpy() if t.is_floating_point() else t.numpy()


class ShardedTorchCheckpoint(Checkpoint):
    """``pytorch_model-0000N-of-0000M.bin`` shards named by ``pytorch_model.bin.index.json`` (transformers 4's
    ``save_pretrained(safe_serialization=False)`` beyond ``max_shard_size``): each shard a :class:`TorchCheckpoint`,
    their tensors together under their own names."""

    format = "pytorch"

    def __init__(self, index: Path):
        super().__init__(index)
        self._parts: dict[str, TorchCheckpoint] = {}
        files, weight_map = _shard_files(index, "PyTorch shard")
        shards, found = {}, {}
        for path in files:
            shards[path] = TorchCheckpoint(path)
            for name in shards[path].names():
                found.setdefault(name, []).append(path)
        for name, path in _one_shard_each(found, index, weight_map).items():
            self._parts[name] = shards[path]
            self._shapes[name] = shards[path].shape(name)

    def _read(self, name):
        return self._parts[name]._read(name)

    def describe(self) -> str:
        files = len({id(part) for part in self._parts.values()})
        return f"{self.location} ({self.format}, {len(self._shapes)} tensors in {files} shards)"


OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


class TFCheckpoint(Checkpoint):
    """A TensorFlow checkpoint (``prefix.index`` + ``prefix.data-*``).

    Name-based (TF1, e.g. original BERT): names are the variable names. Object-based
    (``tf.train.Checkpoint``, e.g. Model Garden): names are the variables' own names recorded in the
    object graph (``transformer/layer_0/self_attention/query/kernel``), which unlike the object paths
    (``layer_with_weights-4/...``) do not depend on the order layers were created in; optimizer slots
    and bookkeeping keep their checkpoint keys.
    """

    def __init__(self, prefix: Path):
        super().__init__(prefix)
        import tensorflow as tf

        try:
            self._reader = tf.train.load_checkpoint(str(prefix))
            shapes = self._reader.get_variable_to_shape_map()
        except Exception as exc:
            raise WeightsError(f"{prefix}: not a readable TensorFlow checkpoint: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        self._keys: dict[str, str] = {}
        self.object_based = OBJECT_GRAPH_KEY in shapes
        if self.object_based:
            self.format = "tf_object_checkpoint"
            for key, name in self._object_names(shapes).items():
                self._keys[name] = key
        else:
            self.format = "tf_checkpoint"
            self._keys = {k: k for k in shapes}
        self._shapes = {name: tuple(int(d) for d in shapes[key]) for name, key in self._keys.items()}

    def _object_names(self, shapes) -> dict[str, str]:
        from tensorflow.core.protobuf import trackable_object_graph_pb2

        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(self._reader.get_tensor(OBJECT_GRAPH_KEY))
        full = {}
        for node in graph.nodes:
            for attr in node.attributes:
                if attr.checkpoint_key in shapes and attr.full_name:
                    full[attr.checkpoint_key] = attr.full_name
        counts: dict[str, int] = {}
        for name in full.values():
            counts[name] = counts.get(name, 0) + 1
        names = {}
        for key in shapes:
            if key == OBJECT_GRAPH_KEY:
                continue
            name = full.get(key)
            # optimizer slots, bookkeeping and (rare) duplicate variable names keep their object-path key
            slot = ".OPTIMIZER_SLOT" in key or key.startswith("optimizer/")
            names[key] = key if (name is None or slot or counts[name] > 1) else name
        return names

    def checkpoint_key(self, name: str) -> str:
        return self._keys[name]

    def object_children(self, path: tuple = ()) -> Optional[list]:
        """An object-based checkpoint's object graph: the local names of the children of the object reached from
        the root through ``path`` (local names, e.g. ``("model",)``; ``()``: the root's own); None for a name-based
        checkpoint, or where the graph holds no such object. Reads the graph only, never a tensor's values."""
        if not self.object_based:
            return None
        from tensorflow.core.protobuf import trackable_object_graph_pb2

        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        try:
            graph.ParseFromString(self._reader.get_tensor(OBJECT_GRAPH_KEY))
        except Exception:   # a damaged graph: nothing to tell (the names were read from it already)
            return None
        if not graph.nodes:
            return None
        node = graph.nodes[0]
        for name in path:
            ids = [c.node_id for c in node.children if c.local_name == name]
            if not ids or not 0 <= ids[0] < len(graph.nodes):
                return None
            node = graph.nodes[ids[0]]
        return [c.local_name for c in node.children]

    def _read(self, name):
        return self._reader.get_tensor(self._keys[name])


class _Window(io.RawIOBase):
    """Bytes ``start .. start+size`` of an open file, as a file of their own (a stored zip entry)."""

    def __init__(self, f, start: int, size: int):
        self._f, self._start, self._size, self._pos = f, start, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer):
        n = max(0, min(len(buffer), self._size - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


class KerasCheckpoint(Checkpoint):
    """A ``.keras`` file written by bertc: names are bertc weight paths (``w.path``).

    bertc's archive names its weights itself: ``bertc_weights.json`` (written by
    :func:`bertc.export.keras_file.save_keras`) lists each dataset of ``model.weights.h5`` that holds a
    variable (``layers/<...>/vars/0``) with the variable's path. The weights are read from the h5 with
    h5py (which Keras requires), lazily, without deserializing the model: neither bertc's layer library
    nor a plug-in the model used is imported. A variable saved twice (one variable held by two layers) is
    one name. A ``.keras`` file without that entry (an older bertc, plain Keras) is deserialized with
    :func:`bertc.transfer.load_keras_model` instead, which imports bertc's layers (and needs the model's
    plug-ins loaded).
    """

    format = "keras"

    def __init__(self, location: Path):
        super().__init__(location)
        from bertc.transfer import check_keras_archive

        path = check_keras_archive(location, error=WeightsError)
        self.location = path
        import zipfile

        import h5py

        self._zip = zipfile.ZipFile(path)
        self._h5 = self._model = None
        try:
            self._h5 = h5py.File(self._weights_file(), "r")
        except Exception as exc:
            self.close()
            raise WeightsError(f"{path}: damaged Keras archive: model.weights.h5 is not a readable HDF5 file "
                               f"({type(exc).__name__}: {exc})") from None
        self._datasets: dict[str, str] = {}   # weight path -> dataset in the h5 file
        if MANIFEST not in self._zip.namelist():
            self._deserialize()
            return
        try:
            self._read_manifest(h5py)
        except WeightsError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise WeightsError(f"{path}: damaged Keras archive: {MANIFEST} does not describe model.weights.h5: "
                               f"{type(exc).__name__}: {exc}") from None

    def _weights_file(self):
        import zipfile

        info = self._zip.getinfo("model.weights.h5")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            return self._zip.open(info)   # deflated (not bertc's own files): a seekable stream over it
        f = open(self.location, "rb")
        f.seek(info.header_offset)
        header = f.read(30)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            f.close()
            raise OSError("the local header of model.weights.h5 is damaged")
        start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
        self._raw = f
        return io.BufferedReader(_Window(f, start, info.file_size), buffer_size=1 << 20)

    def _read_manifest(self, h5py) -> None:
        size = self._zip.getinfo(MANIFEST).file_size   # what reading it unpacks (a crafted archive: gigabytes)
        if size > JSON_LIMIT:
            raise WeightsError(f"{self.location}: its {MANIFEST} unpacks to {size >> 20} MB, far more than a weight "
                               f"list holds; bertc does not read it")
        manifest = json_loads(self._zip.read(MANIFEST))
        if manifest.get("format") != "bertc-keras-weights" or manifest.get("version") != 1:
            raise WeightsError(f"{self.location}: {MANIFEST} is format {manifest.get('format')!r} version "
                               f"{manifest.get('version')!r}; this bertc reads bertc-keras-weights version 1")
        for entry in manifest["weights"]:
            name, dataset = str(entry["path"]), str(entry["dataset"])
            node = self._h5.get(dataset)
            if not isinstance(node, h5py.Dataset):
                raise WeightsError(f"{self.location}: damaged Keras archive: {MANIFEST} names {dataset!r} "
                                   f"({name}), which model.weights.h5 does not hold")
            shape = tuple(int(d) for d in node.shape)
            if name in self._datasets:   # one variable saved twice: the first copy
                if self._shapes[name] != shape:
                    raise WeightsError(f"{self.location}: damaged Keras archive: {name!r} is both "
                                       f"{self._datasets[name]} {self._shapes[name]} and {dataset} {shape}")
                continue
            self._datasets[name] = dataset
            self._shapes[name] = shape

    def _deserialize(self) -> None:
        """No manifest: the model itself, deserialized (its weights are read from the loaded variables)."""
        from bertc.errors import ModelFileError
        from bertc.transfer import load_keras_model

        self._h5.close()
        self._h5 = None
        try:
            self._model = load_keras_model(self.location)
        except ModelFileError as exc:
            self.close()
            raise WeightsError(f"{exc} (it has no {MANIFEST}, which names the weights of a .keras file "
                               f"bertc writes, so it must be deserialized)") from None
        self._variables = {}
        for w in self._model.weights:
            self._variables.setdefault(w.path, w)
        self._shapes = {name: tuple(int(d) for d in w.shape) for name, w in self._variables.items()}

    @property
    def model(self):
        """The Keras model deserialized to read its weights (a .keras that bertc did not write), else None."""
        return self._model

    def _read(self, name):
        if self._model is not None:
            return np.asarray(self._variables[name].numpy())
        dataset = self._h5[self._datasets[name]]
        value = np.asarray(dataset[()])
        if dataset.attrs.get("dtype") in ("bfloat16", b"bfloat16"):
            import ml_dtypes

            value = value.view(ml_dtypes.bfloat16) if value.dtype.itemsize == 2 else value.astype(ml_dtypes.bfloat16)
        return value

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
        self._zip.close()
        raw = getattr(self, "_raw", None)
        if raw is not None:
            raw.close()


def tf_checkpoint_prefix(path: Path) -> Optional[Path]:
    """The checkpoint prefix that ``path`` names (a prefix, its .index or a .data shard), if any."""
    text = str(path)
    if text.endswith(".index"):
        return Path(text[: -len(".index")])
    if ".data-" in path.name:
        return path.with_name(path.name.split(".data-")[0])
    if Path(text + ".index").exists():
        return path
    return None


def find_tf_checkpoint(directory: Path) -> Optional[Path]:
    """The newest checkpoint prefix in ``directory`` (its ``checkpoint`` file, or the one ``*.index``)."""
    state = directory / "checkpoint"
    if state.exists():
        for line in checkpoint_text(state, "checkpoint state file").splitlines():
            if line.startswith("model_checkpoint_path:"):
                name = line.split(":", 1)[1].strip().strip('"')
                prefix = Path(name) if Path(name).is_absolute() else directory / name
                if Path(str(prefix) + ".index").exists():
                    return prefix
    indexes = sorted(directory.glob("*.index"))
    if len(indexes) > 1:
        raise WeightsError(f"{directory}: holds {len(indexes)} TensorFlow checkpoints "
                           f"({', '.join(p.name for p in indexes)}); name one (e.g. {indexes[-1].with_suffix('')})")
    return Path(str(indexes[0])[: -len(".index")]) if indexes else None


HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


def index_kind(name: str) -> Optional[str]:
    """"safetensors" or "bin" for a sharded checkpoint's index file (``model.safetensors.index.json``, and a
    ``save_pretrained(variant=...)`` one, ``model.safetensors.index.fp16.json``), else None."""
    found = re.search(r"\.(safetensors|bin)\.index(\.[A-Za-z0-9_-]+)?\.json$", name)
    return found.group(1) if found else None


def training_state(name: str) -> Optional[str]:
    """What a Trainer's checkpoint-N/ file of training state is (``optimizer.pt``: "the optimizer's state"), or
    None for any other name."""
    if re.fullmatch(r"rng_state(_\d+)?\.pth", name):
        return "the random generators' state"
    return {"optimizer.pt": "the optimizer's state", "optimizer.bin": "the optimizer's state",
            "scheduler.pt": "the learning-rate scheduler's state", "scaler.pt": "the loss scaler's state",
            "training_args.bin": "the training arguments"}.get(name)


def _weights_beside(path: Path) -> list:
    """The files of a directory that look like weights bertc reads under another name (``x.pt``, a
    ``save_pretrained(variant="fp16")`` checkpoint's ``model.fp16.safetensors`` or its index); a Trainer's training
    state (optimizer.pt, ...) is none."""
    return sorted(p.name for p in path.iterdir() if p.is_file() and not training_state(p.name) and (
        p.suffix in (".safetensors", ".bin", ".pt", ".pth") and not re.search(r"-\d+-of-\d+\.", p.name)
        or index_kind(p.name)))
CHECKPOINT_CONFIG = "checkpoint_config.json"   # a build's copy of its checkpoint's config.json (bertc.importers)


# sentence-transformers' module types that hold the transformers model: ``Transformer``, and before v1 one
# class per architecture (its folder then is ``0_BERT/``, ``0_RoBERTa/``...)
TRANSFORMER_MODULES = ("Transformer", "BERT", "RoBERTa", "DistilBERT", "XLMRoBERTa", "CamemBERT", "ALBERT")


def _module_paths(root: Path, types: tuple) -> list[str]:
    """The folders of the modules of ``types`` in a sentence-transformers directory's ``modules.json``, in its
    order (none when it has no modules.json, or one that is not readable: the importer reports that)."""
    try:
        modules = json_loads(checkpoint_text(Path(root) / "modules.json", "modules.json"))
        paths = [(m.get("path", ""), str(m.get("type", "")).rsplit(".", 1)[-1] in types) for m in modules]
    except (OSError, ValueError, TypeError, AttributeError):
        return []
    for path, _ in paths:   # every module's, not only the ones asked for: none may name a folder elsewhere
        check_module_path(root, path)
    return [str(p) for p, wanted in paths if wanted]


def check_module_path(root: Path, path) -> None:
    """:class:`WeightsError` when a ``modules.json`` module's ``path`` names a folder outside the
    sentence-transformers directory ``root`` (absolute, or ``..`` leaving it)."""
    if isinstance(path, str) and not inside_name(path):
        raise WeightsError(f"{Path(root) / 'modules.json'}: module path {json.dumps(path)} is outside the "
                           f"sentence-transformers directory ({root}); its modules are folders inside it")


def dense_module_paths(root: Path) -> list[str]:
    """The folders of a sentence-transformers directory's ``Dense`` modules, in modules.json's order."""
    return _module_paths(root, ("Dense",))


def transformer_folder(root: Path) -> Optional[Path]:
    """Where a sentence-transformers directory keeps its transformers model: the directory itself (v2 and later)
    or the Transformer module's folder (``0_Transformer/``, ``0_BERT/``: models saved before v2); None when
    ``root`` has no modules.json or no such module."""
    paths = _module_paths(root, TRANSFORMER_MODULES)
    return Path(root) / paths[0] if paths else None


def sentence_transformers_root(directory: Path) -> Optional[Path]:
    """The sentence-transformers directory that ``directory`` (its root, or its transformer's folder) belongs to."""
    for candidate in (Path(directory), Path(directory).parent):
        if (candidate / "modules.json").is_file():
            return candidate
    return None


class ModulesCheckpoint(Checkpoint):
    """A sentence-transformers directory: the transformer's tensors under their own names, and each ``Dense``
    module's (its own ``model.safetensors``) under ``<module folder>/<name>`` (``2_Dense/linear.weight``)."""

    def __init__(self, base: Checkpoint, modules: list[tuple[str, Checkpoint]]):
        super().__init__(base.location)
        self.format = base.format
        self._parts = {name: (base, name) for name in base.names()}
        for folder, checkpoint in modules:
            self._parts.update({f"{folder}/{name}": (checkpoint, name) for name in checkpoint.names()})
        self._shapes = {key: part.shape(name) for key, (part, name) in self._parts.items()}
        self.modules = [folder for folder, _ in modules]

    def _read(self, name):
        part, inner = self._parts[name]
        return part._read(inner)

    def describe(self) -> str:
        return f"{self.location} ({self.format}, {len(self._shapes)} tensors, with module(s) {', '.join(self.modules)})"


def _with_modules(root: Path, base: Checkpoint) -> Checkpoint:
    folders = dense_module_paths(root)
    if not folders:
        return base
    modules = []
    for folder in folders:
        where = root / folder
        if not where.is_dir() or not any((where / n).exists() for n in HF_WEIGHT_FILES):
            raise WeightsError(f"{where}: the sentence-transformers Dense module {folder!r} (modules.json) has no "
                               f"weights (expected model.safetensors)")
        modules.append((folder, open_checkpoint(where)))
    return ModulesCheckpoint(base, modules)


def hub_snapshot(path: Path) -> Path:
    """``path``, or where a Hugging Face cache's repository folder (``models--org--name``, holding ``snapshots/``,
    ``refs/`` and ``blobs/``) keeps its checkpoint: the snapshot ``refs/main`` names, else its only snapshot. Where it
    has several and no ``refs/main``, a :class:`WeightsError` lists them (it was "no weights found in this directory
    ...; it holds: blobs, refs, snapshots")."""
    path = Path(path)
    snapshots = path / "snapshots"
    # only huggingface_hub's own folder, and never one holding a checkpoint itself (a training run's snapshots/)
    if not (path.resolve().name.startswith("models--") and path.is_dir() and snapshots.is_dir()
            and not any((path / n).exists() for n in ("config.json", "modules.json", *HF_WEIGHT_FILES))):
        return path
    try:
        main = (path / "refs" / "main").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        main = ""
    if main and (snapshots / main).is_dir():
        return snapshots / main
    found = sorted(p.name for p in snapshots.iterdir() if p.is_dir())
    if len(found) == 1:
        return snapshots / found[0]
    raise WeightsError(f"{path}: a Hugging Face cache's repository folder "
                       + (f"with {len(found)} snapshots and no refs/main: name one, "
                          f"{', '.join(str(snapshots / n) for n in found[:4])}{' ...' if len(found) > 4 else ''}"
                          if found else "without a snapshot (its download did not start?)"))


def open_checkpoint(path: Path) -> Checkpoint:
    """The reader for ``path``: a Hugging Face / sentence-transformers directory, a ``.safetensors``
    file, ``pytorch_model.bin``, a sharded checkpoint's index (safetensors or ``.bin`` shards), a TF checkpoint (prefix, ``.index``, or a directory holding one), a
    bertc ``.keras`` file or build directory."""
    path = Path(path)
    if path.is_dir():
        for name in HF_WEIGHT_FILES:
            if (path / name).exists():
                return _with_modules(path, open_checkpoint(path / name))
        folder = transformer_folder(path)
        if folder is not None and folder != path and folder.is_dir():   # a sentence-transformers directory before v2
            return _with_modules(path, open_checkpoint(folder))
        if (path / "model.keras").exists():
            return KerasCheckpoint(path / "model.keras")
        prefix = find_tf_checkpoint(path)
        if prefix is not None:
            return TFCheckpoint(prefix)
        found = sorted(p.name for p in path.iterdir())[:12]
        beside = _weights_beside(path)
        other = next((_other_format(n) for n in sorted(p.name for p in path.iterdir()) if _other_format(n)), None)
        raise WeightsError(
            f"{path}: no weights found in this directory: expected model.safetensors (or its sharded index), "
            f"pytorch_model.bin (or its sharded index, pytorch_model.bin.index.json), a TensorFlow checkpoint "
            f"(*.index + *.data-*) or model.keras; "
            f"it holds: {', '.join(found) if found else 'nothing'}"
            + (f"; to read {beside[0]}, name the file itself: {path / beside[0]}" if beside else
               f"; {other}" if other else ""))
    if index_kind(path.name) == "safetensors":
        return _sharded_safetensors(path)
    if index_kind(path.name) == "bin":
        return ShardedTorchCheckpoint(path)
    if path.suffix == ".safetensors":
        if not path.exists():
            raise WeightsError(f"{path}: file not found")
        return SafetensorsCheckpoint(path, [path])
    if path.suffix in (".bin", ".pt", ".pth"):
        if not path.exists():
            raise WeightsError(f"{path}: file not found")
        return TorchCheckpoint(path)
    if path.suffix == ".keras":
        return KerasCheckpoint(path)
    prefix = tf_checkpoint_prefix(path)
    if prefix is not None:
        return TFCheckpoint(prefix)
    if not path.exists():
        raise WeightsError(f"{path}: no such file or directory (nor a TensorFlow checkpoint prefix: "
                           f"{path}.index does not exist)")
    raise WeightsError(f"{path}: unknown weights format; bertc reads a Hugging Face directory, .safetensors, "
                       f"pytorch_model.bin, a sharded checkpoint's index (model.safetensors.index.json, "
                       f"pytorch_model.bin.index.json), a TensorFlow checkpoint, or a bertc .keras file"
                       + (f" ({_other_format(path.name)})" if _other_format(path.name) else ""))


def _other_format(name: str) -> Optional[str]:
    """What a weights file bertc does not read is, and the way from it to one bertc reads (None: not known)."""
    if name.endswith(".h5"):
        return (f"{name} is transformers' TensorFlow (Keras h5) weights, not a TensorFlow checkpoint: convert it with "
                f"transformers 4 (the model's class: from_pretrained(DIR, from_tf=True), then save_pretrained(OUT)) "
                f"and import OUT")
    if name.endswith(".msgpack"):
        return (f"{name} is transformers' Flax weights: convert it with transformers 4 (the model's class: "
                f"from_pretrained(DIR, from_flax=True), then save_pretrained(OUT)) and import OUT")
    if name.endswith((".onnx", ".tflite")):
        return (f"{name} is a compiled model (bertc's output, or Optimum's / torch.onnx's export), not a checkpoint "
                f"bertc imports: import the checkpoint it was exported from")
    return None


# the files of a Hugging Face / sentence-transformers directory that bertc reads (weights, configs, tokenizers), and
# the folders of one it never does
READ_SUFFIXES = frozenset({".safetensors", ".bin", ".json", ".txt", ".model", ".pt", ".pth"})
UNREAD_FOLDERS = frozenset({"onnx", "openvino", "runs", "logs"})


def refuse_git_lfs_pointers(root: Path) -> None:
    """:class:`WeightsError` naming every Git LFS pointer among the files of a checkpoint directory ``root`` and
    its subfolders one level down (sentence-transformers' modules): a clone made without Git LFS leaves pointers in
    place of the weights and, on the Hub, of large tokenizer files, which would otherwise fail one by one as
    unreadable files."""
    files = [p for p in Path(root).iterdir() if p.is_file()] if Path(root).is_dir() else []
    for sub in (p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")
                and p.name not in UNREAD_FOLDERS and not p.name.startswith("checkpoint-")) \
            if Path(root).is_dir() else ():
        try:
            files += [p for p in sub.iterdir() if p.is_file()]
        except OSError:
            continue
    # only what an import or a build reads: pointers in place of files bertc never opens (onnx/, tf_model.h5, flax)
    # are a clone's normal state after `git lfs pull --include model.safetensors,tokenizer.json`
    pointers = [p for p in sorted(files) if p.suffix in READ_SUFFIXES and git_lfs_pointer(p)]
    if pointers:
        shown = ", ".join(str(p.relative_to(root)) for p in pointers[:6]) + \
            (f" and {len(pointers) - 6} more" if len(pointers) > 6 else "")
        one = len(pointers) == 1
        raise WeightsError(f"{root}: {shown} {'is a Git LFS pointer' if one else 'are Git LFS pointers'}, not the "
                           f"{'file it stands' if one else 'files they stand'} for: the repository was cloned without "
                           f"Git LFS; run `git lfs pull` in {root} (or download the {'file' if one else 'files'} "
                           f"{'itself' if one else 'themselves'})")


def _read_entries(root: Path):
    """The entries of ``root`` and of its sentence-transformers module folders (0_Transformer, 1_Pooling, 2_Dense),
    in name order: where bertc reads a checkpoint's files (a FIFO or a broken link in the user's data/ beside the
    checkpoint is none of its business)."""
    modules = [p for p in root.iterdir() if p.is_dir() and p.name[:1].isdigit() and "_" in p.name
               and p.name.split("_", 1)[0].isdigit()]
    for folder in [root, *modules]:
        try:
            yield from sorted(folder.iterdir())
        except OSError:
            continue


def _first_six(found: list) -> str:
    return f"{', '.join(found[:6])}{f' and {len(found) - 6} more' if len(found) > 6 else ''}"


def refuse_broken_links(root: Path) -> None:
    """:class:`WeightsError` naming every file of a checkpoint directory ``root`` (and of its module folders) that
    bertc would read and that is a link to nothing: a Hugging Face cache's snapshot whose download did not finish
    links ``model.safetensors`` to a blob that is not there. It was called missing ("expected model.safetensors ...;
    it holds: ..., model.safetensors, ...") and a dangling tokenizer.json made a build without a tokenizer."""
    from bertc.tokenizer_files import TOKENIZER_FILES

    root = Path(root)
    if not root.is_dir():
        return
    # what a reader opens (an eval_results.txt, a stale pytorch_model.bin.old that links nowhere is none of its business)
    read = {"config.json", "modules.json", "config_sentence_transformers.json", *HF_WEIGHT_FILES, *TOKENIZER_FILES}
    broken = []
    for p in _read_entries(root):
        if p.name in read and p.is_symlink() and not p.exists():
            try:
                target = os.readlink(p)
            except OSError:
                target = "?"
            broken.append(f"{p.relative_to(root)} (a link to {target})")
    if broken:
        raise WeightsError(f"{root}: {_first_six(broken)} {'leads' if len(broken) == 1 else 'lead'} to no file: a "
                           f"download that did not finish "
                           f"(in a Hugging Face cache, the blob it links to is missing)? Download the checkpoint "
                           f"again")


def refuse_special_files(root: Path) -> None:
    """:class:`WeightsError` naming every file of a checkpoint directory ``root`` (and of its sentence-transformers
    module folders, ``N_Name``) that bertc would read (weights, configs, tokenizers) and that is
    a FIFO, a device or a socket (after symlinks): opening a FIFO blocks until a writer comes and a device such as
    /dev/zero never ends, so an import or a build would hang or fill memory where it should refuse at once."""
    root = Path(root)
    if not root.is_dir():
        return
    found = []
    for p in _read_entries(root):
        if p.suffix in READ_SUFFIXES:
            kind = not_regular(p)
            if kind and kind != "a directory":
                found.append(f"{p.relative_to(root)} is {kind}")
    if found:
        raise WeightsError(f"{root}: {_first_six(found)}"
                           f"; bertc reads a checkpoint's weights, configs and tokenizer files only from regular "
                           f"files (or links to them)")
