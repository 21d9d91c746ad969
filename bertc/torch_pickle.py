"""``torch.save`` files (``pytorch_model.bin``, ``.pt``) read without torch.

Many trained checkpoints exist only as a PyTorch state dict. Reading one with ``torch.load`` needs torch (a
2 GB install bertc does not require), and converting it to safetensors needs torch too. The format is simple
enough to read directly:

- the **zip** format (``torch.save`` since torch 1.6): ``<archive>/data.pkl`` is a pickle of the state dict in
  which each tensor is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` and each storage a
  persistent id ``("storage", torch.FloatStorage, key, location, numel)``; the storage's bytes are the archive
  member ``<archive>/data/<key>`` (little-endian unless ``<archive>/byteorder`` says ``big``);
- the **legacy** format (before torch 1.6, or ``_use_new_zipfile_serialization=False``): pickles of the magic
  number, the protocol version and system info, then the state dict (persistent ids ``("storage", type, key,
  location, numel, view)``), then the list of storage keys, then each storage in that order as an int64 element
  count followed by its bytes.

The unpickler resolves only the names a tensor state dict uses (``collections.OrderedDict``, the tensor and
parameter rebuild functions, the storage types); anything else is refused, so reading a file never runs code
from it (what ``torch.load(weights_only=True)`` guarantees too). Tensors are read lazily: opening a file parses
its pickle and records where each tensor's bytes are.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from bertc.errors import WeightsError, git_lfs_pointer

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C   # torch.serialization.MAGIC_NUMBER (legacy format)
# the most a zip file's data.pkl may unpack to: it holds the state dict's names, shapes and storage keys (a few
# hundred bytes a tensor), its data is in other members; a crafted one of a megabyte unpacked to gigabytes
PICKLE_LIMIT = 64 << 20
# torch storage type -> numpy dtype ("bf16": bfloat16, read as uint16 and widened to float32)
STORAGES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
            "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
            "BoolStorage": "?"}


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def itemsize(self) -> int:
        return 2 if self.name == "BFloat16Storage" else np.dtype(STORAGES[self.name]).itemsize


@dataclass
class _Storage:
    """Where one storage's bytes are: an archive member (zip) or a file offset (legacy)."""

    kind: _StorageType
    key: str
    numel: int
    offset: Optional[int] = None     # legacy: the file offset of its bytes


@dataclass(frozen=True)
class TensorRef:
    """A tensor of the file, not read yet: its storage and its view of it."""

    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return TensorRef(storage, int(storage_offset), tuple(int(d) for d in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *rest):
    return data


def _rebuild_from_type(func, new_type, args, state=None):   # a tensor (or Parameter) with Python attributes
    return func(*args)


_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
            ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
            ("torch", "Tensor"): "torch.Tensor", ("torch.nn.parameter", "Parameter"): "torch.nn.Parameter"}


def _fresh(func):
    """``func`` behind a new function for each name a pickle looks up: the BUILD opcode sets attributes on what
    ``find_class`` returned (a function's ``__defaults__``, ``__kwdefaults__``), and a crafted file would otherwise
    alter bertc's own functions for the rest of the process."""
    def call(*args):
        return func(*args)
    return call


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict, legacy: bool):
        super().__init__(file)
        self.storages, self.legacy = storages, legacy

    def find_class(self, module, name):
        if module == "torch" and name in STORAGES:
            return _StorageType(name)
        if (module, name) in _ALLOWED:
            found = _ALLOWED[(module, name)]
            return _fresh(found) if callable(found) and not isinstance(found, type) else found
        raise pickle.UnpicklingError(f"it names {module}.{name}, which is not part of a tensor state dict")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or _text(pid[0]) != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        kind, key, numel = pid[1], _text(pid[2]), int(pid[4])
        if not isinstance(kind, _StorageType):
            raise pickle.UnpicklingError(f"storage of unknown type {kind!r:.80}")
        if self.legacy and len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (legacy format) are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(kind, key, numel)
        return self.storages[key]


class _DataOnly(pickle.Unpickler):
    """For the legacy format's plain pickles (magic number, version, system info, storage keys): no names."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it names {module}.{name}, which is not part of a tensor state dict")


def _text(value) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


class TorchFile:
    """The tensors of one ``torch.save`` file: ``tensors`` (name -> :class:`TensorRef`) and :meth:`read`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.storages: dict = {}
        try:
            if zipfile.is_zipfile(self.path):
                state = self._open_zip()
            else:
                state = self._open_legacy()
        except WeightsError:
            raise
        except OSError as exc:
            raise WeightsError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError,
                zipfile.BadZipFile, NotImplementedError, MemoryError, RecursionError) as exc:
            # damaged or crafted: a length past the file's end (MemoryError), a zip of a version or compression
            # Python cannot read (NotImplementedError)
            detail = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise WeightsError(f"{self.path}: not a readable PyTorch state dict: {detail}") from None
        if not isinstance(state, dict):
            raise WeightsError(f"{self.path}: expected a state dict (name -> tensor), got {type(state).__name__}")
        if "state_dict" in state and isinstance(state["state_dict"], dict):   # a training checkpoint's wrapper
            state = state["state_dict"]
        self.tensors = {str(k): v for k, v in state.items() if isinstance(v, TensorRef)}
        for name in self.tensors:   # a view outside its storage is refused on opening (bertc import), not at the read
            self._extent(name)

    def _open_zip(self) -> object:
        self._zip = zipfile.ZipFile(self.path)
        pickles = [n for n in self._zip.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise WeightsError(f"{self.path}: a zip file, but not one torch.save wrote (no single data.pkl)")
        self._prefix = pickles[0][: -len("data.pkl")]
        order = self._prefix + "byteorder"
        if order in self._zip.namelist() and self._zip.read(order).strip() != b"little":
            raise WeightsError(f"{self.path}: big-endian tensors; bertc reads little-endian PyTorch files")
        size = self._zip.getinfo(pickles[0]).file_size   # what reading it unpacks: a state dict's names and shapes
        if size > PICKLE_LIMIT:
            raise WeightsError(f"{self.path}: its {pickles[0]} unpacks to {size >> 20} MB, far more than the names "
                               f"and shapes of a state dict take; bertc does not read it")
        with self._zip.open(pickles[0]) as f:
            return _Unpickler(io.BytesIO(f.read()), self.storages, legacy=False).load()

    def _open_legacy(self) -> object:
        self._zip = None
        with open(self.path, "rb") as f:
            try:
                magic = _DataOnly(f).load()
            except Exception:
                pointer = git_lfs_pointer(self.path)
                raise WeightsError(f"{self.path}: " + (pointer or "neither a zip nor a legacy torch.save file")) \
                    from None
            if magic != MAGIC_NUMBER:
                raise WeightsError(f"{self.path}: not a torch.save file (no magic number)")
            _DataOnly(f).load()                  # protocol version
            info = _DataOnly(f).load()           # system info
            if isinstance(info, dict) and info.get("little_endian") is False:
                raise WeightsError(f"{self.path}: big-endian tensors; bertc reads little-endian PyTorch files")
            state = _Unpickler(f, self.storages, legacy=True).load()
            keys = [_text(k) for k in _DataOnly(f).load()]
            for key in keys:
                storage = self.storages[key]
                numel = int.from_bytes(f.read(8), "little")
                if numel != storage.numel:
                    raise WeightsError(f"{self.path}: storage {key} holds {numel} values, its tensors say {storage.numel}")
                storage.offset = f.tell()
                f.seek(numel * storage.kind.itemsize, io.SEEK_CUR)
        return state

    def _bytes(self, storage: _Storage, count: int) -> bytes:
        """The first ``count`` values of ``storage`` (the ones a tensor reaches), read alone: a zip member is read
        no further than them, so a small file whose member inflates far beyond what its tensors say costs no more
        than the tensors."""
        size, want = storage.numel * storage.kind.itemsize, count * storage.kind.itemsize
        if self._zip is not None:
            member = f"{self._prefix}data/{storage.key}"
            try:
                info = self._zip.getinfo(member)
            except KeyError:
                raise WeightsError(f"{self.path}: storage {storage.key} has no member {member} in the archive") \
                    from None
            if info.file_size < size:
                raise WeightsError(f"{self.path}: storage {storage.key} is truncated ({info.file_size} of {size} "
                                   f"bytes)")
            if info.file_size != size:
                raise WeightsError(f"{self.path}: storage {storage.key} ({member}) holds {info.file_size} bytes, "
                                   f"but its tensors say {storage.numel} values of {storage.kind.itemsize} bytes "
                                   f"({size} bytes): not a file torch.save wrote")
            with self._zip.open(info) as f:
                data = f.read(want)
        else:
            with open(self.path, "rb") as f:
                f.seek(storage.offset)
                data = f.read(min(want, max(0, os.fstat(f.fileno()).st_size - storage.offset)))
        if len(data) < want:
            raise WeightsError(f"{self.path}: storage {storage.key} is truncated ({len(data)} of {size} bytes)")
        return data

    def _extent(self, name: str) -> int:
        """How many values of its storage tensor ``name`` reaches (0 for an empty tensor), its view checked whole:
        as_strided trusts its arguments, and a negative stride, size or offset (or a stride per dimension missing)
        would read memory outside the storage."""
        ref = self.tensors[name]
        numel = ref.storage.numel
        where = f"{self.path}: tensor {name!r} (size {list(ref.shape)}, stride {list(ref.stride)}, storage offset " \
                f"{ref.offset}, storage {ref.storage.key} of {numel} values)"
        if len(ref.stride) != len(ref.shape) or ref.offset < 0 or numel < 0 or \
                any(d < 0 for d in ref.shape) or any(s < 0 for s in ref.stride):
            raise WeightsError(f"{where}: not a view torch.save writes (sizes, strides and the offset are >= 0, "
                               f"one stride a dimension)")
        need = ref.offset + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride)) + 1 if all(ref.shape) else 0
        if need > numel:
            raise WeightsError(f"{where}: reaches past its storage (to value {need})")
        return need

    def read(self, name: str) -> np.ndarray:
        ref = self.tensors[name]
        kind, need = ref.storage.kind, self._extent(name)
        raw = np.frombuffer(self._bytes(ref.storage, need), dtype="<u2" if kind.name == "BFloat16Storage"
                            else np.dtype(STORAGES[kind.name]).newbyteorder("<"))
        view = np.lib.stride_tricks.as_strided(raw[ref.offset:], shape=ref.shape,
                                               strides=[s * raw.itemsize for s in ref.stride]) if need else \
            np.zeros(ref.shape, raw.dtype)
        array = np.array(view)
        if kind.name == "BFloat16Storage":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array
