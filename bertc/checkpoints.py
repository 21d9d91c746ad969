"""Checkpoint readers: one class per file format, each giving tensor name -> numpy array lazily.

A reader knows nothing about models: it lists the tensors a file holds (``names()``, ``shape()``)
and reads one on request (``read()``, always float32 for floating tensors). Which reader a path
needs is decided by :func:`open_checkpoint`. TensorFlow and torch are imported only by the readers
that need them; torch is never a requirement (``pytorch_model.bin`` is read only when it is
installed, and the message says so otherwise). A bertc ``.keras`` file is read with h5py, never
deserialized: no reader imports bertc's layer library or a plug-in.
"""
from __future__ import annotations

import io
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


# The names of the variables a layer creates itself (``add_weight``), in creation order, for the bertc
# layers that own some; keyed by class name (a model's layers: config.json names their class) or by
# the attribute a parent layer holds it under (a layer inside another, whose class the file does not
# record). See _pick for the names a layer may not create.
_OWN_VARIABLES = {
    "EmbeddingNetwork": ("word_embeddings", "position_embeddings", "type_embeddings"),
    "CustomEmbeddingNetwork": ("word_embeddings", "position_embeddings", "type_embeddings"),
    "ReZeroBlock": ("rezero_alpha", "rezero_alpha_ffn"),
    "MaskedLM": ("output_bias",),
    "RelativeBias": ("relative_attention_bias",),
    "attention": ("pre_softmax_weight", "post_softmax_weight"),  # TalkingHeadsAttention, inside a block
}
# Optional variables, each switched by a flag of the layer's spec (absent from the spec: always there).
_SWITCHED = {"position_embeddings": "use_position_embeddings", "type_embeddings": "use_type_embeddings"}


def _keras_builtin_names(class_name: str, config: dict) -> Optional[list[str]]:
    """The variables of a Keras layer, in the order its ``build`` creates them, from its config."""
    if class_name == "Dense":
        return ["kernel"] + (["bias"] if config.get("use_bias", True) else [])
    if class_name == "EinsumDense":
        return ["kernel"] + (["bias"] if config.get("bias_axes") else [])
    if class_name == "LayerNormalization":
        return ((["gamma"] if config.get("scale", True) else [])
                + (["beta"] if config.get("center", True) and not config.get("rms_scaling") else []))
    if class_name == "Embedding":
        return ["embeddings"]
    return None


def _by_shape(shapes: list[tuple]) -> Optional[list[str]]:
    """A layer inside another, by the shapes of its variables: a Dense (kernel, bias over its last
    axis) or a LayerNormalization (gamma, beta alike), the only Keras layers bertc nests."""
    if len(shapes) == 2:
        first, second = shapes
        if len(first) >= 2 and second == first[-1:]:
            return ["kernel", "bias"]
        if len(first) == 1 and second == first:
            return ["gamma", "beta"]
    return None


def _pick(candidates: tuple, shapes: list[tuple], config: dict) -> Optional[list[str]]:
    """Which of ``candidates`` the layer created, in order: those its spec does not switch off (an
    embedding table with ``use_..._embeddings: false``); of variables that are not switched, the first
    ``len(shapes)`` (ReZero's ``rezero_alpha_ffn`` is ``rezero_alpha`` itself when shared, tracked once)."""
    spec = config.get("spec") if isinstance(config.get("spec"), dict) else {}
    present = [n for n in candidates if n not in _SWITCHED or spec.get(_SWITCHED[n], True) is not False]
    if len(present) == len(shapes):
        return present
    if len(present) > len(shapes) and not any(n in _SWITCHED for n in present):
        return present[: len(shapes)]
    return None


def _variable_names(key: str, shapes: list[tuple], layer: Optional[dict]) -> Optional[list[str]]:
    """The names of the variables one layer group holds (``vars/0``, ``vars/1``, ...), or None.

    ``layer`` is the layer's entry in config.json for a model's own layers, None for a layer inside
    another (``key`` is then the attribute its parent holds it under)."""
    if layer is not None:
        class_name, config = layer.get("class_name"), layer.get("config") or {}
        if str(layer.get("module", "")).startswith("keras"):
            return _keras_builtin_names(class_name, config)
        own = _OWN_VARIABLES.get(class_name)
        return _pick(own, shapes, config) if own else None
    named = _by_shape(shapes)
    if named is not None:
        return named
    own = _OWN_VARIABLES.get(key)
    return _pick(own, shapes, {}) if own else None


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


def _attr_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class KerasCheckpoint(Checkpoint):
    """A ``.keras`` file written by bertc: names are bertc weight paths.

    The weights are read straight from the archive's ``model.weights.h5`` with h5py (which Keras
    requires), without deserializing the model: neither bertc's layer library nor a plug-in the model
    used is imported. Keras's saving_lib writes one group per layer, nested as the layers are: the
    model's layers under ``layers/<snake_case class>[_N]``, a layer's sublayers under the attribute
    that holds them, a list of layers as ``<attribute>/<snake_case class>[_N]``. A layer's variables
    are ``<group>/vars/0``, ``vars/1``, ... in the order it created them (trainable first), and its
    name is the ``name`` attribute of that ``vars`` group (a shared layer, ALBERT's ``shared_layer``,
    is written once). A variable's path (``w.path``) is the names of the layers that hold it, outermost
    first (not the model's own: its layers are built outside it), then the variable's name, which the
    file does not record: :func:`_variable_names` gives it from the layer's class in config.json (a
    model's layers) or the shapes of its variables (Dense, LayerNormalization inside a layer).
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
        try:
            config = json.loads(self._zip.read("config.json"))
            layers = {entry.get("name"): entry for entry in config["config"]["layers"]}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise WeightsError(f"{path}: damaged Keras archive: config.json is not a Keras model config "
                               f"(a model with its list of layers): {type(exc).__name__}: {exc}") from None
        try:
            self._h5 = h5py.File(self._weights_file(), "r")
        except Exception as exc:
            raise WeightsError(f"{path}: damaged Keras archive: model.weights.h5 is not a readable HDF5 file "
                               f"({type(exc).__name__}: {exc})") from None
        self._datasets: dict[str, str] = {}   # weight path -> dataset in the h5 file
        try:
            self._walk(self._h5, [], layers, depth=0)
        except WeightsError:
            raise
        except Exception as exc:
            raise WeightsError(f"{path}: damaged Keras archive: model.weights.h5 cannot be read: "
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

    def _walk(self, group, names: list[str], layers: dict, depth: int) -> None:
        import h5py

        own = group.get("vars")
        if isinstance(own, h5py.Group) and len(own):
            keys = sorted(own, key=lambda k: (len(k), k))
            if keys != [str(i) for i in range(len(keys))]:
                raise WeightsError(f"{self.location}: damaged Keras archive: model.weights.h5 group "
                                   f"{own.name} holds {keys}, not variables 0..{len(keys) - 1}")
            shapes = [tuple(int(d) for d in own[k].shape) for k in keys]
            key = group.name.rsplit("/", 1)[-1]
            layer = layers.get(names[-1]) if depth == 2 and names else None
            var_names = _variable_names(key, shapes, layer)
            if var_names is None or len(var_names) != len(keys):
                what = f"a {layer.get('class_name')}" if layer else f"held as {key!r}"
                raise WeightsError(
                    f"{self.location}: layer {'/'.join(names) or '(the model)'} ({what}) holds {len(keys)} "
                    f"variable(s) of shapes {', '.join(map(str, shapes))} that bertc cannot name from the file "
                    f"alone (model.weights.h5 numbers a layer's variables; their names come from the layer's "
                    f"class): load the model with bertc.transfer.load_keras_model instead")
            for k, var, shape in zip(keys, var_names, shapes):
                weight = "/".join(names + [var])
                if weight in self._datasets:
                    raise WeightsError(f"{self.location}: two variables of model.weights.h5 are both {weight!r} "
                                       f"({self._datasets[weight]}, {own[k].name})")
                self._datasets[weight] = own[k].name
                self._shapes[weight] = shape
        for child in group:
            # the model (the root: its name is no part of its layers' paths) holds its weights in
            # ``layers``; an optimizer or metrics saved with it are no weights of the model
            if child == "vars" or (depth == 0 and child != "layers") or not isinstance(group[child], h5py.Group):
                continue
            sub = group[child]
            name = sub["vars"].attrs.get("name") if isinstance(sub.get("vars"), h5py.Group) else None
            if name is None:   # a list or dict of layers: no layer of its own
                self._walk(sub, names, layers, depth + 1)
            else:
                self._walk(sub, names + [_attr_text(name)], layers, depth + 1)

    def _read(self, name):
        dataset = self._h5[self._datasets[name]]
        value = np.asarray(dataset[()])
        if dataset.attrs.get("dtype") in ("bfloat16", b"bfloat16"):
            import ml_dtypes

            value = value.view(ml_dtypes.bfloat16) if value.dtype.itemsize == 2 else value.astype(ml_dtypes.bfloat16)
        return value

    def close(self) -> None:
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
