"""The sensitivity pass: which quantized MatMuls to take out of per-tensor int8, the fewest that make the
criteria hold, and then which of those block-wise int8 serves as well as fp32.

1. :func:`select_fp32`: each candidate (a MatMul or fused Attention that int8 quantizes) is measured alone
   in fp32, everything else int8, on the calibration inputs (:mod:`bertc.calibration`); the candidates are
   ranked by how much that raises the worst task figure (:class:`bertc.optimize.int8_tuning.Measurement.score`),
   and kept in fp32 one by one, most sensitive first, until the figures reach the tuning target or the
   budget of fp32 nodes (:data:`MAX_FP32_FRACTION` of the candidates; more would leave little of int8's
   speed) is spent.
2. :func:`relax_to_blocks`: each node so kept, least sensitive first, is tried in block-wise int8
   (``MatMulNBits``, activations quantized per row and block of input channels; cheaper than fp32), and
   stays there when the figures hold: they meet the target where the fp32 choice
   did (or where a block-wise mix so far has reached it: a later move may not lose it), and otherwise pass the
   criteria within :data:`BLOCK_ALLOWANCE` of the fp32 choice's score. Block-wise
   int8 does not help every outlier (a channel that is large in every row takes the range of its block in
   each row), so the ranking is made in fp32 and each move is measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

MAX_FP32_FRACTION = 0.25
# how much worse than the all-fp32 choice (in Measurement.score units: 0 = the tuning target, 0.5 = the
# criterion when the margin is 0.5) a block-wise int8 mix may score: a cosine of 0.001 at the 0.99 criterion
BLOCK_ALLOWANCE = 0.1


@dataclass
class Sensitivity:
    node: str
    score: float            # the worst figure's deficit with this node alone taken out (lower is better)
    gain: float             # how much that improves on all-int8


@dataclass
class Selection:
    keep_fp32: list = field(default_factory=list)     # in the order they were added
    ranking: list = field(default_factory=list)       # [Sensitivity], most sensitive first
    steps: list = field(default_factory=list)         # [(nodes list, Measurement)]
    best: Optional[tuple] = None                      # (nodes list, Measurement) with the lowest score


def rank(candidates: list[str], measure: Callable, base_score: float) -> list[Sensitivity]:
    """Every candidate measured alone in fp32 (``measure(keep_fp32) -> Measurement``), most sensitive first
    (ties keep graph order)."""
    found = []
    for node in candidates:
        score = measure([node]).score
        found.append(Sensitivity(node, score, base_score - score))
    return sorted(found, key=lambda s: s.score)


def select_fp32(candidates: list[str], measure: Callable, base, max_fraction: float = MAX_FP32_FRACTION) -> Selection:
    """Keep the most sensitive candidates in fp32 until ``measure(...)`` meets the target (see the module
    docstring). ``base``: the Measurement of the all-int8 graph."""
    selection = Selection(best=([], base))
    if not candidates:
        return selection
    selection.ranking = rank(candidates, measure, base.score)
    budget = max(1, int(len(candidates) * max_fraction))
    keep: list = []
    for s in selection.ranking[:budget]:
        if s.gain <= 0 and keep:
            break   # the rest do not help alone either
        keep = keep + [s.node]
        m = measure(keep)
        selection.steps.append((keep, m))
        if m.score < selection.best[1].score:
            selection.best = (keep, m)
        if m.meets_target:
            break
    selection.keep_fp32 = list(selection.best[0])
    return selection


@dataclass
class Relaxed:
    blockwise: list                                   # the kept nodes now in block-wise int8
    fp32: list                                        # those that stay fp32
    measurement: object                               # the figures of that mix
    steps: list = field(default_factory=list)         # [(blockwise list, fp32 list, Measurement, taken)]


def relax_to_blocks(keep_fp32: list, reference, measure: Callable,
                    allowance: float = BLOCK_ALLOWANCE) -> Relaxed:
    """Move the nodes of ``keep_fp32`` (most sensitive first, as :func:`select_fp32` keeps them) to block-wise
    int8 one at a time, least sensitive first, where the figures hold (see the module docstring).
    ``measure(blockwise, fp32) -> Measurement``; ``reference``: the Measurement of ``keep_fp32`` all in fp32."""
    bound = max(reference.score, 0.0) + allowance

    def holds(m) -> bool:
        if current.meets_target:   # the fp32 choice, or the mix taken so far, meets the target: keep it met
            return m.meets_target
        return m.passes and m.score <= bound

    blocks, fp32, current = [], list(keep_fp32), reference
    relaxed = Relaxed([], fp32, reference)
    for node in reversed(keep_fp32):
        trial_blocks, trial_fp32 = blocks + [node], [n for n in fp32 if n != node]
        m = measure(trial_blocks, trial_fp32)
        taken = holds(m)
        relaxed.steps.append((trial_blocks, trial_fp32, m, taken))
        if taken:
            blocks, fp32, current = trial_blocks, trial_fp32, m
    relaxed.blockwise, relaxed.fp32, relaxed.measurement = blocks, fp32, current
    return relaxed
