"""Deterministic, realistic model inputs (shared by validation and parity)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from bertc.registry import HEADS
from bertc.spec import Spec


def real_lengths(batch: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """Row 0 uses the whole length, row 1 a single real token, the rest random lengths."""
    lengths = rng.integers(1, seq_len + 1, size=batch)
    lengths[0] = seq_len
    if batch > 1:
        lengths[1] = 1
    return lengths.astype(np.int64)


def make_inputs(spec: Spec, batch: int, seq_len: int, rng: np.random.Generator,
                lengths: Optional[Sequence[int]] = None) -> dict[str, np.ndarray]:
    """int32 inputs for ``spec``'s model: padded rows (id 0, mask 0, type 0 after each row's real length),
    random token types, and masked-LM positions inside each row's real tokens."""
    enc = spec.encoder
    lengths = np.asarray(lengths if lengths is not None else real_lengths(batch, seq_len, rng))
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int32)
    out = {
        "input_word_ids": (rng.integers(1, enc.vocab_size, size=(batch, seq_len)) * mask).astype(np.int32),
        "input_mask": mask,
    }
    if "input_type_ids" in enc.input_names:
        out["input_type_ids"] = (rng.integers(0, enc.type_vocab_size, size=(batch, seq_len)) * mask).astype(np.int32)
    if spec.head is not None:
        out.update(HEADS.component(spec.head.type).make_inputs(spec.head, lengths, rng))
    return out


def pad_to(inputs: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    """Append padding (zeros) on the sequence axis of the sequence inputs."""
    out = {}
    for name, value in inputs.items():
        if name.startswith("input_") and value.shape[1] < seq_len:
            value = np.pad(value, ((0, 0), (0, seq_len - value.shape[1])))
        out[name] = value
    return out
