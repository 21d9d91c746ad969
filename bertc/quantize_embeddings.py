"""Sentence embeddings written at a lower precision, as sentence-transformers' ``quantize_embeddings``
(``SentenceTransformer.encode(precision=...)``, v6.3) writes them: what a vector index stores.

==========  ======  ====================================================================================
precision   dtype   one value
==========  ======  ====================================================================================
float32     f4      the embedding as the model gives it
binary      i1      8 dimensions a byte, 1 where the value is > 0 (``np.packbits`` along each row, most
                    significant bit first), minus 128: (rows, ceil(dim / 8)); 32x smaller (Hamming)
ubinary     u1      the same bytes without the shift (0..255)
uint8       u1      ``floor((x - min) / ((max - min) / 255))`` clipped to 0..255, per dimension, ``min``
                    and ``max`` over the calibration embeddings (a constant dimension: step 1)
int8        i1      the same minus 128
==========  ======  ====================================================================================

sentence-transformers takes the ranges from the embeddings being quantized when it has no calibration set; a
stream's ranges cannot come from rows not yet read (and would differ from batch to batch), so int8 and uint8 need
one here: float32 embeddings of a sample of the texts by the same model.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

from bertc.errors import InputError, said

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
SCALAR = ("int8", "uint8")
DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "binary": np.int8, "ubinary": np.uint8}


class EmbeddingPrecision:
    """``precision`` (one of :data:`PRECISIONS`) with, for int8 / uint8, ``calibration``: embeddings of the same
    model (an array, or a .npy file of shape (rows, dim)) whose per-dimension min and max set the ranges."""

    def __init__(self, precision: str = "float32", calibration: Union[None, str, Path, np.ndarray] = None):
        if precision not in PRECISIONS:
            raise InputError(f"embedding precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        if precision in SCALAR and calibration is None:
            sample = said("--calibration-embeddings FILE.npy", "calibration_embeddings=FILE.npy or an array")
            made = said("bertc run OUT sample.txt -o sample.npy", "bertc.Runtime(OUT).run(sample_texts)")
            raise InputError(f"embedding precision {precision}: needs calibration embeddings ({sample}: float32 "
                             f"embeddings of a sample of the texts by the same model, e.g. {made}), whose "
                             f"per-dimension min and max set the ranges")
        if precision not in SCALAR and calibration is not None:
            raise InputError(f"calibration embeddings: only int8 and uint8 embeddings have ranges to calibrate "
                             f"(this run's precision is {precision})")
        self.precision, self.dtype = precision, DTYPES[precision]
        self.starts = self.steps = None
        self.source = ""
        if calibration is not None:
            values = self._read(calibration)
            self.starts = values.min(axis=0)
            steps = (values.max(axis=0) - self.starts) / 255
            self.steps = np.where(steps == 0, 1, steps).astype(np.float32)   # a constant dimension: step 1

    def _read(self, calibration) -> np.ndarray:
        if isinstance(calibration, (list, tuple)) or (not isinstance(calibration, (str, bytes, os.PathLike))
                                                       and hasattr(calibration, "__array__")):
            try:   # rows given as a list (of lists or arrays), or an array-like (a torch / jax array, a DataFrame)
                calibration = np.asarray(calibration, dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise InputError(f"calibration embeddings: a (rows, dim) array of floats or a .npy file's path "
                                 f"({' '.join(str(exc).split())[:120]})") from None
        if isinstance(calibration, np.ndarray):
            values, where = calibration, "calibration embeddings"
        elif not isinstance(calibration, (str, bytes, os.PathLike)):
            raise InputError(f"calibration embeddings: a (rows, dim) array of floats or a .npy file's path, not "
                             f"{type(calibration).__name__}")
        else:
            path = Path(calibration)
            try:
                with open(path, "rb") as f:
                    if f.read(6) != b"\x93NUMPY":
                        raise InputError(f"{path}: not a .npy file (numpy.save's format; bertc run OUT sample.txt -o "
                                         f"sample.npy writes one)")
                values = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise InputError(f"{path}: cannot be read as a .npy array of embeddings "
                                 f"({' '.join(str(exc).split())[:200]})") from None
            where = str(path)
        if values.ndim != 2 or len(values) < 1 or values.shape[1] < 1 or values.dtype.kind != "f":
            raise InputError(f"{where}: calibration embeddings are a (rows, dim) float array with one row or more, "
                             f"got {values.dtype} of shape {values.shape}")
        values = values.astype(np.float32)
        if not np.isfinite(values).all():
            raise InputError(f"{where}: calibration embeddings hold NaN or infinite values")
        self.source = f"{'' if isinstance(calibration, np.ndarray) else Path(calibration).name + ', '}" \
                      f"{len(values)} embedding{'s' if len(values) != 1 else ''}"
        return values

    @property
    def active(self) -> bool:
        return self.precision != "float32"

    def describe(self) -> str:
        return f"embeddings written as {self.precision}" + (f" (ranges from {self.source})" if self.source else "")

    def width(self, dim: int) -> int:
        """The values of one written row for an embedding of ``dim``."""
        return (dim + 7) // 8 if self.precision in ("binary", "ubinary") else dim

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """A (rows, dim) float32 block at this precision."""
        block = np.asarray(block, np.float32)
        if self.precision == "float32":
            return block
        if self.precision in ("binary", "ubinary"):
            packed = np.packbits(block > 0, axis=-1)
            return packed if self.precision == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
        if block.shape[-1] != self.starts.shape[0]:
            raise InputError(f"calibration embeddings ({self.source}) have {self.starts.shape[0]} dimensions; this "
                             f"model's embeddings have {block.shape[-1]}: calibrate with the same model's")
        levels = np.clip(np.floor((block - self.starts) / self.steps), 0, 255)   # float32, as sentence-transformers
        return levels.astype(np.uint8) if self.precision == "uint8" else (levels - 128).astype(np.int8)
