"""Checkpoint readers: one class per file format, each giving tensor name -> numpy array lazily.

A reader knows nothing about models: it lists the tensors a file holds (``names()``, ``shape()``)
and reads one on request (``read()``, always float32 for floating tensors). Which reader a path
needs is decided by :func:`open_checkpoint`. TensorFlow and torch are imported only by the readers
that need them; torch is never a requirement (``pytorch_model.bin`` is read only when it is
installed, and the message says so otherwise).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from bertc.errors import WeightsError


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

    def __init__(self, location: Path, files: list[Path]):
        super().__init__(location)
        from safetensors import safe_open

        self._files: dict[str, Path] = {}
        self._handles = {}
        for path in files:
            try:
                handle = safe_open(str(path), framework="np")
                keys = list(handle.keys())
                shapes = {k: tuple(int(d) for d in handle.get_slice(k).get_shape()) for k in keys}
            except FileNotFoundError:
                raise WeightsError(f"{path}: file not found (named by {location})") from None
            except Exception as exc:  # safetensors_rust.SafetensorError and friends: truncated, not safetensors
                raise WeightsError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc}); "
                                   f"the file may be truncated or incompletely downloaded") from None
            self._handles[path] = handle
            for k in keys:
                self._files[k] = path
            self._shapes.update(shapes)

    def _read(self, name):
        handle = self._handles[self._files[name]]
        try:
            return handle.get_tensor(name)
        except (TypeError, ValueError) as exc:  # bfloat16 has no numpy dtype: widen it by hand
            if "bf16" not in str(exc).lower() and "bfloat16" not in str(exc).lower():
                raise
            return _bf16_tensor(self._files[name], name)


def _bf16_tensor(path: Path, name: str) -> np.ndarray:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        entry = header[name]
        if entry["dtype"] != "BF16":
            raise WeightsError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, which bertc cannot read")
        start, end = entry["data_offsets"]
        f.seek(8 + n + start)
        raw = np.frombuffer(f.read(end - start), dtype="<u2")
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


def _sharded_safetensors(index: Path) -> SafetensorsCheckpoint:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"{index}: not a safetensors index (a JSON object with 'weight_map'): {exc}") from None
    files = sorted({index.parent / f for f in weight_map.values()})
    return SafetensorsCheckpoint(index, files)


class TorchCheckpoint(Checkpoint):
    """``pytorch_model.bin`` (a torch pickle); needs torch, loaded with ``weights_only=True``."""

    format = "pytorch"

    def __init__(self, location: Path):
        super().__init__(location)
        try:
            import torch
        except ImportError:
            raise WeightsError(
                f"{location}: a PyTorch pickle can only be read with torch installed (pip install torch), "
                f"and bertc does not require it; convert it to safetensors instead "
                f"(transformers: model.save_pretrained(dir, safe_serialization=True))") from None
        try:
            state = torch.load(str(location), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"{location}: cannot read the PyTorch checkpoint: {type(exc).__name__}: {exc}") from None
        if not isinstance(state, dict):
            raise WeightsError(f"{location}: expected a state dict (name -> tensor), got {type(state).__name__}")
        self._tensors = {k: v for k, v in state.items() if hasattr(v, "shape")}
        self._shapes = {k: tuple(int(d) for d in v.shape) for k, v in self._tensors.items()}

    def _read(self, name):
        t = self._tensors[name]
        return t.float().numpy() if t.is_floating_point() else t.numpy()


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

    def _read(self, name):
        return self._reader.get_tensor(self._keys[name])


class KerasCheckpoint(Checkpoint):
    """A ``.keras`` file written by bertc: names are bertc weight paths."""

    format = "keras"

    def __init__(self, location: Path):
        super().__init__(location)
        from bertc.errors import TransferError
        from bertc.transfer import load_keras_model

        try:
            model = load_keras_model(location)
        except TransferError as exc:
            raise WeightsError(str(exc)) from None
        self._values = {w.path: w for w in model.weights}
        self._shapes = {p: tuple(int(d) for d in w.shape) for p, w in self._values.items()}

    def _read(self, name):
        return self._values[name].numpy()


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
        for line in state.read_text().splitlines():
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


HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def open_checkpoint(path: Path) -> Checkpoint:
    """The reader for ``path``: a Hugging Face / sentence-transformers directory, a ``.safetensors``
    file, ``pytorch_model.bin``, a TF checkpoint (prefix, ``.index``, or a directory holding one), a
    bertc ``.keras`` file or build directory."""
    path = Path(path)
    if path.is_dir():
        for name in HF_WEIGHT_FILES:
            if (path / name).exists():
                return open_checkpoint(path / name)
        if (path / "model.keras").exists():
            return KerasCheckpoint(path / "model.keras")
        prefix = find_tf_checkpoint(path)
        if prefix is not None:
            return TFCheckpoint(prefix)
        found = sorted(p.name for p in path.iterdir())[:12]
        raise WeightsError(
            f"{path}: no weights found in this directory: expected model.safetensors (or its sharded index), "
            f"pytorch_model.bin, a TensorFlow checkpoint (*.index + *.data-*) or model.keras; "
            f"it holds: {', '.join(found) if found else 'nothing'}")
    if path.name.endswith(".safetensors.index.json"):
        return _sharded_safetensors(path)
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
                       f"pytorch_model.bin (with torch), a TensorFlow checkpoint, or a bertc .keras file")
