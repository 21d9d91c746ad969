"""The sensitivity pass: which quantized MatMuls to take out of per-tensor int8, the fewest that make the
criteria hold, and then which of those a cheaper int8 form (row-wise or block-wise) serves as well as fp32.

1. :func:`select_fp32`: each candidate (a MatMul or fused Attention that int8 quantizes) is measured alone
   in fp32, everything else int8, on the calibration inputs (:mod:`bertc.calibration`); the candidates are
   ranked by how much that raises the worst task figure (:class:`bertc.optimize.int8_tuning.Measurement.score`),
   and kept in fp32 one by one, most sensitive first, until the figures reach the tuning target or the
   budget of fp32 nodes (:data:`MAX_FP32_FRACTION` of the candidates; more would leave little of int8's
   speed) is spent.
2. :func:`relax`: each node so kept, least sensitive first, is tried in the int8 forms that take at most 95% of
   fp32's time on this host, cheapest first (:func:`bertc.optimize.quantize.cheaper_forms`, timed once per host
   and node shape): row-wise int8 (activations quantized per row, ``MatMulIntegerToFloat``) and block-wise int8
   (``MatMulNBits``, activations quantized per row and block of input channels), and
   stays in one when the figures hold: they meet the target where the fp32 choice
   did (or where a mix so far has reached it: a later move may not lose it), and otherwise pass the
   criteria within :data:`BLOCK_ALLOWANCE` of the fp32 choice's score; a form that reaches the target is
   preferred to a cheaper one that does not. Neither form helps every outlier (a channel that is large in
   every row takes the range of its row, and of its block in each row), so the ranking is made in fp32 and
   each move is measured.
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


def rank(candidates: list[str], measure: Callable, base_score: float,
         progress: Optional[Callable] = None) -> list[Sensitivity]:
    """Every candidate measured alone in fp32 (``measure(keep_fp32) -> Measurement``), most sensitive first
    (ties keep graph order); ``progress(text)`` before each measurement: what it is."""
    found = []
    for i, node in enumerate(candidates):
        if progress is not None:
            progress(f"each MatMul alone in fp32, {i + 1}/{len(candidates)}")
        score = measure([node]).score
        found.append(Sensitivity(node, score, base_score - score))
    return sorted(found, key=lambda s: s.score)


def select_fp32(candidates: list[str], measure: Callable, base, max_fraction: float = MAX_FP32_FRACTION,
                progress: Optional[Callable] = None) -> Selection:
    """Keep the most sensitive candidates in fp32 until ``measure(...)`` meets the target (see the module
    docstring). ``base``: the Measurement of the all-int8 graph; ``progress``: see :func:`rank`."""
    selection = Selection(best=([], base))
    if not candidates:
        return selection
    selection.ranking = rank(candidates, measure, base.score, progress)
    budget = max(1, int(len(candidates) * max_fraction))
    keep: list = []
    for s in selection.ranking[:budget]:
        if s.gain <= 0 and keep:
            break   # the rest do not help alone either
        keep = keep + [s.node]
        if progress is not None:
            progress("the most sensitive MatMul in fp32" if len(keep) == 1 else
                     f"the {len(keep)} most sensitive MatMuls in fp32")
        m = measure(keep)
        selection.steps.append((keep, m))
        if m.score < selection.best[1].score:
            selection.best = (keep, m)
        if m.meets_target:
            break
    selection.keep_fp32 = list(selection.best[0])
    return selection


BLOCKS, ROWS = "blocks", "rows"   # the cheaper forms a kept node may take (bertc.optimize.quantize)
FORM_WORDS = {BLOCKS: "block-wise int8", ROWS: "row-wise int8"}


@dataclass
class Relaxed:
    forms: dict                                       # the kept nodes now in a cheaper form: {node: form}
    fp32: list                                        # those that stay fp32
    measurement: object                               # the figures of that mix
    steps: list = field(default_factory=list)         # [({node: form} tried, fp32 list, Measurement, taken)]
    tried: dict = field(default_factory=dict)         # {node: [forms measured for it, in order]}

    @property
    def blockwise(self) -> list:
        return [n for n, f in self.forms.items() if f == BLOCKS]

    @property
    def rowwise(self) -> list:
        return [n for n, f in self.forms.items() if f == ROWS]


def relax(keep_fp32: list, reference, measure: Callable, forms_of: Callable = lambda node: [BLOCKS],
          allowance: float = BLOCK_ALLOWANCE, progress: Optional[Callable] = None) -> Relaxed:
    """Move the nodes of ``keep_fp32`` (most sensitive first, as :func:`select_fp32` keeps them) to a cheaper
    int8 form one at a time, least sensitive first, where the figures hold (see the module docstring).
    ``forms_of(node)``: the forms to try for that node, cheapest first on this host
    (:func:`bertc.optimize.quantize.int8_form_costs`); ``measure({node: form}, fp32) -> Measurement``;
    ``reference``: the Measurement of ``keep_fp32`` all in fp32. A form that meets the tuning target is taken
    at once; while the mix so far misses the target, the node's other forms are measured too and the cheapest
    that holds is taken, unless a dearer one meets the target. ``progress``: see :func:`rank`."""
    bound = max(reference.score, 0.0) + allowance

    def holds(m) -> bool:
        if current.meets_target:   # the fp32 choice, or the mix taken so far, meets the target: keep it met
            return m.meets_target
        return m.passes and m.score <= bound

    forms, fp32, current = {}, list(keep_fp32), reference
    relaxed = Relaxed({}, fp32, reference)
    for node in reversed(keep_fp32):
        trial_fp32 = [n for n in fp32 if n != node]
        chosen = None
        for form in forms_of(node):
            trial = {**forms, node: form}
            relaxed.tried.setdefault(node, []).append(form)
            if progress is not None:
                progress(f"{node} in {FORM_WORDS.get(form, form)} instead of fp32")
            m = measure(trial, trial_fp32)
            taken = holds(m) and (chosen is None or (m.meets_target and not chosen[1].meets_target))
            relaxed.steps.append((trial, trial_fp32, m, taken))
            if taken:
                if chosen is not None:   # a dearer form that meets the target replaces the cheaper one
                    relaxed.steps[chosen[2]] = relaxed.steps[chosen[2]][:3] + (False,)
                chosen = (trial, m, len(relaxed.steps) - 1)
            if chosen is not None and chosen[1].meets_target:
                break
        if chosen is not None:
            forms, fp32, current = chosen[0], trial_fp32, chosen[1]
    relaxed.forms, relaxed.fp32, relaxed.measurement = forms, fp32, current
    return relaxed
