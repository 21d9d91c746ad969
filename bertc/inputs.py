"""Deterministic, realistic model inputs (shared by validation, parity and bench)."""
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


def random_mask(batch: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """A random 0/1 attention mask as the seed notebooks feed (``np.random.randint(2, size=...)``):
    real tokens anywhere, not only a prefix. Every row keeps at least one real token; with two or
    more positions row 0 has a hole before its last real token (never a right-padded prefix) and
    row 1, when there is one, masks the first ([CLS]) position."""
    mask = rng.integers(0, 2, size=(batch, seq_len)).astype(np.int32)
    if seq_len >= 2:
        mask[0, -1], mask[0, -2] = 1, 0
        if batch > 1:
            mask[1, 0], mask[1, -1] = 0, 1
    empty = mask.sum(axis=1) == 0
    mask[empty, rng.integers(0, seq_len, size=int(empty.sum()))] = 1
    return mask


def make_inputs(spec: Spec, batch: int, seq_len: int, rng: np.random.Generator,
                lengths: Optional[Sequence[int]] = None, mask: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """int32 inputs for ``spec``'s model.

    By default the rows are right-padded: id 0, mask 0 and type 0 after each row's real length
    (``lengths``, or :func:`real_lengths`). With ``mask`` (B, S) of 0/1 the real tokens are where it
    is 1, anywhere in the row; word and type ids are then random at every position, masked or not,
    as in the seed notebooks. Token types are random; a head's extra inputs (masked-LM positions)
    always point at real tokens."""
    enc = spec.encoder
    if mask is not None:
        mask = np.asarray(mask, dtype=np.int32)
        if mask.shape != (batch, seq_len) or not mask.any(axis=1).all():
            raise ValueError(f"mask must be ({batch}, {seq_len}) with a real token in every row")
        lengths, keep = mask.sum(axis=1).astype(np.int64), np.ones_like(mask)
    else:
        lengths = np.asarray(lengths if lengths is not None else real_lengths(batch, seq_len, rng))
        mask = keep = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int32)
    out = {
        "input_word_ids": (rng.integers(1, enc.vocab_size, size=(batch, seq_len)) * keep).astype(np.int32),
        "input_mask": mask,
    }
    if "input_type_ids" in enc.input_names:
        out["input_type_ids"] = (rng.integers(0, enc.type_vocab_size, size=(batch, seq_len)) * keep).astype(np.int32)
    if spec.head is not None:
        extra = HEADS.create(spec.head, spec.encoder).make_inputs(lengths, rng)
        if not np.array_equal(mask, keep):
            # A head draws its extra inputs (token positions, e.g. masked_lm_positions) among the first
            # ``length`` positions of a row; with real tokens anywhere, map rank k to the k-th real token.
            real_positions = [np.flatnonzero(row) for row in mask]
            extra = {name: np.stack([where[np.asarray(v)] for where, v in zip(real_positions, value)]).astype(np.int32)
                     for name, value in extra.items()}
        out.update(extra)
    return out


def pad_to(inputs: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    """Append padding (zeros) on the sequence axis of the sequence inputs."""
    out = {}
    for name, value in inputs.items():
        if name.startswith("input_") and value.shape[1] < seq_len:
            value = np.pad(value, ((0, 0), (0, seq_len - value.shape[1])))
        out[name] = value
    return out
