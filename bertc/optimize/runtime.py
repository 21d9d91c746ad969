"""ONNX Runtime sessions and sample inputs shared by the optimize stage and its checks."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np


def ort_session(path_or_bytes, provider: str = "CPUExecutionProvider", threads: Optional[int] = None,
                spinning: bool = True):
    """A session of a model file or serialized model (:func:`session_options`)."""
    import onnxruntime as ort

    from bertc.backends import session_options

    options = session_options(threads, spinning)
    from bertc.weights import spec_text

    # a file's name as UTF-8 text, what ORT takes: under LC_ALL=C (file names ascii to Python) a non-ASCII name's
    # escapes were "incompatible constructor arguments", and parity there failed every ONNX artifact of a good build
    source = spec_text(str(path_or_bytes)) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(source, options, providers=[provider])


def sample_inputs(spec, input_dtype: str, batch: int = 3, seq: Optional[int] = None) -> dict:
    """A small batch whose masks are random 0/1 (holes in the middle, not only right padding)."""
    from bertc.inputs import make_inputs

    seq = seq or min(spec.encoder.max_sequence_length, 9)
    rng = np.random.default_rng([spec.seed, 8])
    inputs = make_inputs(spec, batch, seq, rng)
    mask = rng.integers(0, 2, size=(batch, seq)).astype(np.int32)
    mask[:, 0] = 1
    inputs["input_mask"] = mask
    cast = np.int64 if input_dtype == "int64" else np.int32
    return {k: v.astype(cast) for k, v in inputs.items()}
