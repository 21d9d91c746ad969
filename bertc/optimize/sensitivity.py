"""The sensitivity pass: which quantized MatMuls to keep in fp32, the fewest that make the criteria hold.

Each candidate (a MatMul or fused Attention that int8 quantizes) is measured alone in fp32, everything
else int8, on the calibration inputs (:mod:`bertc.calibration`); the candidates are ranked by how much
that raises the worst task figure (:class:`bertc.optimize.int8_tuning.Measurement.score`), and kept in
fp32 one by one, most sensitive first, until the figures reach the tuning target or the budget of fp32
nodes (:data:`MAX_FP32_FRACTION` of the candidates; more would leave little of int8's speed) is spent.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

MAX_FP32_FRACTION = 0.25


@dataclass
class Sensitivity:
    node: str
    score: float            # the worst figure's deficit with this node alone in fp32 (lower is better)
    gain: float             # how much that improves on all-int8


@dataclass
class Selection:
    keep_fp32: list = field(default_factory=list)     # in the order they were added
    ranking: list = field(default_factory=list)       # [Sensitivity], most sensitive first
    steps: list = field(default_factory=list)         # [(keep_fp32 list, Measurement)]
    best: Optional[tuple] = None                      # (keep_fp32 list, Measurement) with the lowest score


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
