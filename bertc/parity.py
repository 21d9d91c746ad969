"""Same inputs through every backend, one report.

The Keras model (inference mode) is the reference. The backends come from the build's
artifacts (``report["artifacts"]``, see :mod:`bertc.backends`): every ONNX artifact on ONNX
Runtime's CPU provider and, when the installed onnxruntime has it, the CUDA provider; every
TFLite artifact on LiteRT. The grid: each batch size x sequence length with right-padded rows,
plus, per batch size, a case with random 0/1 masks (real tokens anywhere in a row, as the seed
notebooks feed), so a lowering that assumes right padding is caught.

Criteria, per backend x output:

- fp32 artifacts: shape, dtype and values within ``atol + rtol * |reference|`` at every case;
- int8 / fp16 artifacts (task level, ``spec.parity.task``): argmax agreement of ``logits`` /
  ``log_probs`` outputs over the grid >= ``min_argmax_agreement`` (for one-class logits, a reranker's or a
  regression's score, the agreement of the order of every pair of rows instead: the top class of one is
  always the same); cosine similarity of feature outputs, per row over its real tokens, >= ``min_cosine``;
  the max abs diff is recorded.

Every failure is collected; an artifact that cannot be loaded fails its backend (naming the file
and why), never the run.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from pydantic import BaseModel

from bertc import backends as _backends
from bertc.backends import CPU, Backend, BackendLoadError, Runner, backend_name, open_runner, plan_backends
from bertc.backends import keras_runner  # noqa: F401 - part of this module's API (tools/verify_fixtures.py)
from bertc.inputs import make_inputs, random_mask
from bertc.memory import release as release_memory
from bertc.signature import OutputInfo, Signature
from bertc.spec import Spec


@dataclass
class OutputParity:
    backend: str
    output: str
    precision: str = "fp32"
    criterion: str = "tolerance"  # "tolerance" (fp32: atol/rtol) or "task" (int8/fp16: parity.task)
    atol: Optional[float] = None
    rtol: Optional[float] = None
    required_argmax_agreement: Optional[float] = None  # task criterion on logits / log_probs outputs
    required_cosine: Optional[float] = None  # task criterion on feature outputs
    cases: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    mean_abs: float = 0.0
    argmax_agreement: Optional[float] = None  # logits / log_probs outputs
    argmax_count: Optional[list] = None  # [agreeing, compared]
    argmax_near_ties: int = 0  # flipped predictions that were near-ties in the reference (counted as agreeing)
    # what argmax_agreement measures: "argmax" (the top class), or "score order" for one-class logits (a
    # reranker's or a regression's score, where the top class is always the one): the pairs of rows (of real
    # tokens, per token), over every case, that the backend orders as the reference does (near-ties, within
    # argmax_tie_fraction of the reference's range, count as agreeing)
    agreement: str = "argmax"
    min_cosine: Optional[float] = None  # feature outputs: the lowest per-row cosine over the grid
    min_cosine_case: str = ""
    required_rank_agreement: Optional[float] = None  # task criterion on sentence embeddings
    rank_agreement: Optional[float] = None  # the lowest, over cases of >= RANK_MIN_ROWS rows
    rank_agreement_case: str = ""
    worst_case: str = ""
    non_finite: int = 0   # NaN / inf values in the backend's outputs where the reference is finite
    reference_non_finite: int = 0   # ... in the Keras reference's (the model itself: no backend compared there)
    load_error: Optional[str] = None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass(frozen=True)
class Case:
    label: str
    batch: int
    sequence_length: int
    mask: str  # "right_padding" or "random"
    inputs: dict

    @classmethod
    def given(cls, label: str, inputs: dict) -> "Case":
        """A case from outside the grid (e.g. tokenized text): its mask is whatever the inputs hold."""
        mask = np.asarray(inputs["input_mask"])
        return cls(label, int(mask.shape[0]), int(mask.shape[1]), "given", inputs)

    def to_json(self) -> dict:
        return {"case": self.label, "batch": self.batch, "sequence_length": self.sequence_length, "mask": self.mask}


def sequence_grid(spec: Spec) -> list[int]:
    if spec.parity.sequence_lengths:
        return list(spec.parity.sequence_lengths)
    max_len = spec.encoder.max_sequence_length
    middle = max(1, max_len // 2) | 1  # an odd length in the middle
    return sorted({1, min(middle, max_len), max_len})


def grid_cases(spec: Spec) -> list[Case]:
    """Right-padded rows at every batch size x sequence length, then one random-mask case per batch
    size at the longest length of the grid (when it has at least two positions)."""
    cases = []
    seqs = sequence_grid(spec)
    for b in spec.parity.batch_sizes:
        for s in seqs:
            rng = np.random.default_rng([spec.seed, b, s])
            cases.append(Case(f"batch {b} x seq {s}", b, s, "right_padding", make_inputs(spec, b, s, rng)))
    longest = max(seqs)
    if longest >= 2:
        for b in spec.parity.batch_sizes:
            rng = np.random.default_rng([spec.seed, b, longest, 1])
            mask = random_mask(b, longest, rng)
            cases.append(Case(f"batch {b} x seq {longest}, random mask", b, longest, "random",
                              make_inputs(spec, b, longest, rng, mask=mask)))
    return cases


# --- figures ----------------------------------------------------------------------------------------

def _rows(value: np.ndarray, info: OutputInfo, mask: np.ndarray) -> list[np.ndarray]:
    """Per batch row, the row's values (over its real tokens when the output follows the sequence)."""
    if info.seq_axis is None:
        return [value[i].ravel() for i in range(value.shape[0])]
    by_token = np.moveaxis(value, info.seq_axis, 1)
    return [by_token[i][mask[i] == 1].ravel() for i in range(value.shape[0])]


def row_cosines(have: np.ndarray, want: np.ndarray, info: OutputInfo, mask: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``have`` and ``want`` (1 when both are zero, 0 when one is)."""
    out = []
    for a, b in zip(_rows(have.astype(np.float64), info, mask), _rows(want.astype(np.float64), info, mask)):
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        out.append(1.0 if na == nb == 0 else (0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))))
    return np.asarray(out)


RANK_MIN_ROWS = 4  # rank agreement is judged on batches of at least this many rows (6 pairs)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` (ties get their average rank)."""
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    ranks = np.empty(len(x), np.float64)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and ordered[j + 1] == ordered[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def rank_agreement(have: np.ndarray, want: np.ndarray) -> Optional[float]:
    """Spearman rank correlation between the within-batch cosine similarities of ``have``'s rows (every
    pair) and those of ``want``'s: 1 when int8 orders every pair of sentences as the reference does.
    None for fewer than 3 rows (fewer than 3 pairs)."""
    n = have.shape[0]
    if n < 3:
        return None

    def similarities(x):
        x = x.reshape(n, -1).astype(np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        return (x @ x.T)[np.triu_indices(n, 1)]

    a, b = _ranks(similarities(have)), _ranks(similarities(want))
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a @ a) * (b @ b)))
    return 1.0 if denominator == 0 else float(a @ b / denominator)


def argmax_matches(have: np.ndarray, want: np.ndarray, info: OutputInfo, mask: np.ndarray,
                   tie_fraction: float = 0.0) -> tuple[int, int, int]:
    """(agreeing, compared, near-ties) predictions: argmax over the last axis; when the sequence is another
    axis (per-token logits), only the real tokens' predictions count. A prediction that differs counts as
    agreeing when it is a near-tie: the reference scores the chosen class within ``tie_fraction`` of the
    reference's range (max - min over this output) of its own top class."""
    got, ref = have.argmax(-1), want.argmax(-1)
    margin = np.take_along_axis(want, ref[..., None], -1)[..., 0] - np.take_along_axis(want, got[..., None], -1)[..., 0]
    tie = margin <= tie_fraction * float(want.max() - want.min()) if want.size else np.zeros_like(got, bool)
    same, near = got == ref, (got != ref) & tie
    if info.seq_axis is not None and info.seq_axis != have.ndim - 1:
        same, near = (np.moveaxis(x, info.seq_axis, 1)[mask == 1] for x in (same, near))
    return int(same.sum() + near.sum()), int(same.size), int(near.sum())


def order_matches(have: np.ndarray, want: np.ndarray, tie_fraction: float = 0.0) -> tuple[int, int, int]:
    """(agreeing, compared, near-ties) pairs of rows of one-class scores ``have`` / ``want`` (N,): a pair agrees
    when the backend orders its two scores as the reference does, or is a near-tie when the reference's two scores
    are within ``tie_fraction`` of the reference's range."""
    have, want = np.asarray(have, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    if want.size > ORDER_MAX_SCORES:   # evenly spaced scores: the pairs grow with the square of their number
        pick = np.linspace(0, want.size - 1, ORDER_MAX_SCORES).astype(np.int64)
        have, want = have[pick], want[pick]
    i, j = np.triu_indices(want.size, 1)
    d_want, d_have = want[i] - want[j], have[i] - have[j]
    same = np.sign(d_want) == np.sign(d_have)
    tie = np.abs(d_want) <= tie_fraction * float(want.max() - want.min()) if want.size else same
    near = ~same & tie
    return int(same.sum() + near.sum()), int(same.size), int(near.sum())


ORDER_MAX_SCORES = 2000


def decision_matches(have: np.ndarray, want: np.ndarray, info: OutputInfo, mask: np.ndarray,
                     tie_fraction: float = 0.0) -> tuple[int, int, int]:
    """(agreeing, compared, near-ties) decisions of a multi-label classifier: each label of each row (of each real
    token, per-token logits) is on when its sigmoid passes 0.5, its logit 0; a flipped decision counts as agreeing
    when the reference's logit is within ``tie_fraction`` of the reference's range of 0."""
    same = (have > 0) == (want > 0)
    tie = np.abs(want) <= tie_fraction * float(want.max() - want.min()) if want.size else np.zeros_like(same)
    near = ~same & tie
    if info.seq_axis is not None and info.seq_axis != have.ndim - 1:
        same, near = (np.moveaxis(x, info.seq_axis, 1)[mask == 1] for x in (same, near))
    return int(same.sum() + near.sum()), int(same.size), int(near.sum())


LABEL_DECISIONS = "label decisions"   # OutputParity.agreement of a multi-label classifier's logits


def label_decision_outputs(spec: Spec, out_dir) -> frozenset:
    """The outputs judged by their per-label decisions rather than the argmax: a classifier whose checkpoint scores
    its labels each alone (``problem_type`` multi_label_classification: a sigmoid per label, as transformers'
    pipeline and ``bertc run`` score them), with more than one label."""
    head = spec.head
    if out_dir is None or getattr(head, "type", None) != "classifier" or getattr(head, "num_classes", 1) < 2:
        return frozenset()
    from bertc.runtime import score_function

    try:   # the build's own configs only (bundled by the build): never the weights' directory as it is now
        score, _ = score_function(Path(out_dir), {"weights": {"bundled_config": None}}, head.num_classes)
    except Exception:   # an unreadable bundled config: bertc run refuses the build; judge by the argmax here
        return frozenset()
    return frozenset({"logits"}) if score == "sigmoid" else frozenset()


def _one_class(info: OutputInfo, want: np.ndarray) -> bool:
    """A logits output with one class: a relevance or regression score (per row, or per token), not a choice."""
    return info.kind == "logits" and want.ndim >= 2 and want.shape[-1] == 1 and info.seq_axis != want.ndim - 1


def _scores(x: np.ndarray, info: OutputInfo, mask: np.ndarray) -> np.ndarray:
    """One-class logits as a flat array of scores: one per row, or one per real token."""
    x = x[..., 0]
    if info.seq_axis is None:
        return x.reshape(-1)
    return np.moveaxis(x, info.seq_axis, 1)[np.asarray(mask) == 1]


def expected_at_padding(want: np.ndarray, info: OutputInfo, mask: np.ndarray, padded: Optional[str]) -> np.ndarray:
    """The reference as a backend promises it: a padding-free artifact (``padded_positions`` "zeros") computes
    nothing at padded positions and holds 0 there in every output along the sequence axis, so the reference is
    compared with zeros there (and Keras' values at every real token)."""
    if padded != "zeros" or info.seq_axis is None:
        return want
    keep = np.asarray(mask) != 0
    keep = keep.reshape(keep.shape + (1,) * (want.ndim - 2))
    return np.where(np.moveaxis(keep, 1, info.seq_axis) if info.seq_axis != 1 else keep, want, 0).astype(want.dtype)


def unattended(spec: Spec, mask: np.ndarray) -> Optional[np.ndarray]:
    """(batch, seq) bool: the padded positions of a model with sliding-window attention whose window holds no real
    token (None when there are none). Such a query attends to padding alone: every key gets the same mask adder
    (-10000), and what softmax makes of the scores rounded at that magnitude differs from backend to backend (by up
    to 3e-4 at the outputs); its value means nothing and reaches no other position (keys at padded positions are
    masked), so parity leaves those positions out of the comparison of outputs along the sequence axis."""
    encoder = spec.encoder
    view = encoder.as_scaffold() if hasattr(encoder, "as_scaffold") else encoder
    windows = []

    def walk(node):   # every component spec of the encoder: an attention's says its window (``sliding_window``)
        if isinstance(node, BaseModel):
            window = getattr(node, "sliding_window", None)
            if isinstance(window, int) and not isinstance(window, bool):
                windows.append(window)
            for name in type(node).model_fields:
                walk(getattr(node, name))
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(view)
    if not windows:
        return None
    real = np.asarray(mask) != 0
    w, length = min(windows), real.shape[1]
    near = np.zeros_like(real)
    for shift in range(-min(w, length - 1), min(w, length - 1) + 1):   # a real token within w positions either side
        lo, hi = max(0, -shift), min(length, length - shift)
        near[:, lo:hi] |= real[:, lo + shift:hi + shift]
    noise = ~real & ~near
    return noise if noise.any() else None


def _without(x: np.ndarray, positions: np.ndarray, info: OutputInfo) -> np.ndarray:
    """``x`` with 0 at ``positions`` (batch, seq) of its sequence axis."""
    keep = ~positions.reshape(positions.shape + (1,) * (x.ndim - 2))
    return np.where(np.moveaxis(keep, 1, info.seq_axis) if info.seq_axis != 1 else keep, x, 0).astype(x.dtype)


def _pct(x: float, threshold: Optional[float] = None) -> str:
    """``x`` as a percentage, 2 decimals at most; more where fewer would not read as below ``threshold``."""
    for digits in range(2, 12):
        text = f"{x * 100:.{digits}f}"
        if threshold is None or x >= threshold or float(text) / 100 < threshold:
            return (text.rstrip("0").rstrip(".") if "." in text else text) + "%"
    return f"{x * 100!r}%"


def _below(x: float, threshold: float) -> str:
    """``x`` with enough decimals to read as lower than ``threshold``."""
    for digits in range(4, 12):
        text = f"{x:.{digits}f}"
        if float(text) < threshold:
            return text
    return repr(x)


def criterion_text(threshold: float) -> str:
    """A criterion as written in the spec (0.9999999, not ``:g``'s 1)."""
    return f"{threshold:.10g}"


def figure_text(x: float, threshold: Optional[float] = None, percent: bool = False) -> str:
    """A figure beside its criterion: 4 decimals (a percentage: 2) where it meets it, else enough to read as below
    it (a miss of 0.9999999 never reads 1.0000)."""
    if percent:
        return _pct(x, threshold)
    return _below(x, threshold) if threshold is not None and x < threshold else f"{x:.4f}"


# --- comparison -------------------------------------------------------------------------------------

def _sentence_embedding(info: OutputInfo) -> bool:
    return info.kind == "features" and info.seq_axis is None


def _result(spec: Spec, backend: Backend, info: OutputInfo) -> OutputParity:
    if backend.reduced_precision:
        task = spec.parity.task
        return OutputParity(backend.name, info.name, backend.precision, "task",
                            required_argmax_agreement=task.min_argmax_agreement if info.kind != "features" else None,
                            required_cosine=task.min_cosine if info.kind == "features" else None,
                            required_rank_agreement=task.min_rank_agreement if _sentence_embedding(info) else None)
    tol = spec.parity.tolerance(backend.name)
    return OutputParity(backend.name, info.name, backend.precision, "tolerance", tol.atol, tol.rtol)


DIFF_CHUNK = 1 << 22   # values compared at a time: a masked LM's (rows, seq, vocabulary) logits are gigabytes


def differences(have: np.ndarray, want: np.ndarray, atol: Optional[float],
                rtol: Optional[float]) -> tuple[float, float, float, bool]:
    """(max abs diff, max relative diff, sum of abs diffs, whether any value is beyond atol + rtol x |want|: False
    without an atol) of two arrays of one shape, in float64, :data:`DIFF_CHUNK` values at a time: a float64 copy of
    a masked LM's logits over a batch of real text (56 x 150 x 50,265) would be gigabytes, several of them at once."""
    h, w = have.reshape(-1), want.reshape(-1)
    max_abs = rel = total = 0.0
    beyond = False
    for start in range(0, w.size, DIFF_CHUNK):
        wc = w[start:start + DIFF_CHUNK].astype(np.float64)
        diff = np.abs(h[start:start + DIFF_CHUNK].astype(np.float64) - wc)
        np.abs(wc, out=wc)
        worst = float(diff.max())
        max_abs = worst if np.isnan(worst) or np.isnan(max_abs) else max(max_abs, worst)
        total += float(diff.sum())
        if atol is not None and not beyond:   # NaN (on either side) is beyond any tolerance
            beyond = bool(np.any(~(diff <= atol + (rtol or 0.0) * wc)))
        worst = float((diff / np.maximum(wc, 1e-6)).max())
        rel = worst if np.isnan(worst) or np.isnan(rel) else max(rel, worst)
    return max_abs, rel, total, beyond


# ONNX Runtime's messages carry its source location and the C++ signature that raised ("/onnxruntime_src/.../
# reshape_helper.h:91 onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, ...)"): long,
# and what says what went wrong (the shapes) comes after it
_ORT_SOURCE = re.compile(r"\S*onnxruntime_src/\S+:\d+ (?:[\w:~<>]+\((?:[^()]|\([^()]*\))*\)(?: const)? ?)?")


def run_error_text(exc: BaseException, limit: int = 400) -> str:
    """One line for a backend's run error: whitespace collapsed, ONNX Runtime's source location and C++ signature
    dropped, and when still over ``limit`` characters its start and its end (where the shapes are) kept."""
    text = _ORT_SOURCE.sub("", " ".join(str(exc).split())).strip()
    if len(text) <= limit:
        return text
    head = limit // 2
    return f"{text[:head]} ... {text[-(limit - head - 5):]}"


def compare(spec: Spec, sig: Signature, reference: Runner, backends: list[Backend],
            runners: dict[str, Runner], cases: Optional[list[Case]] = None,
            progress: Optional[Callable[[str], None]] = None,
            decisions: frozenset = frozenset()) -> list[OutputParity]:
    """Every backend x output against ``reference`` over the grid. ``runners`` holds the backends that
    loaded; a backend without one keeps whatever load error its results already carry. ``progress(text)``:
    before each run, which (a build's status line: minutes at long sequences)."""
    cases = grid_cases(spec) if cases is None else cases
    say = progress or (lambda text: None)
    results = {(b.name, o.name): _result(spec, b, o) for b in backends for o in sig.outputs}
    sums = {key: [0.0, 0] for key in results}
    agree = {key: [0, 0] for key in results}
    scores: dict = {}   # one-class logits: (backend's, reference's) scores of every row of every case
    refs = []   # outputs only: small beside any model
    for i, case in enumerate(cases):
        say(f"keras reference, case {i + 1}/{len(cases)} ({case.label})")
        refs.append(reference(case.inputs))
    noises = [unattended(spec, case.inputs["input_mask"]) for case in cases]   # per case, whatever the backend
    for backend in backends:   # one backend at a time: ``runners`` may open each lazily and let it go after
        say(f"{backend.name}: loading")
        run = runners.get(backend.name)
        if run is None:
            continue
        for i, (case, ref, noise) in enumerate(zip(cases, refs, noises)):
            say(f"{backend.name}, case {i + 1}/{len(cases)} ({case.label})")
            mask = case.inputs["input_mask"]
            try:
                got = run(case.inputs)
            except Exception as exc:  # a backend that cannot run a case is a parity failure, not a crash
                for o in sig.outputs:
                    results[(backend.name, o.name)].problems.append(
                        f"{case.label}: failed to run: {type(exc).__name__}: {run_error_text(exc)}")
                continue
            for o in sig.outputs:
                key = (backend.name, o.name)
                r = results[key]
                r.cases += 1
                want = expected_at_padding(ref[o.name], o, mask, backend.padded_positions)
                if o.name not in got:
                    r.problems.append(f"{case.label}: output missing (got {sorted(got)})")
                    continue
                have = np.asarray(got[o.name])
                if have.shape != want.shape:
                    r.problems.append(f"{case.label}: shape {have.shape} != reference {want.shape}")
                    continue
                if have.dtype != want.dtype and not (backend.precision == "fp16" and have.dtype == np.float16):
                    r.problems.append(f"{case.label}: dtype {have.dtype} != reference {want.dtype}")
                # NaN propagates to min / max; the reference first: NaN there is the model's, not the backend's
                if want.size and not (np.isfinite(want.min()) and np.isfinite(want.max())):
                    n = int(np.size(want) - np.isfinite(want).sum())
                    r.reference_non_finite += n
                    r.problems.append(f"{case.label}: the Keras reference itself has {n} non-finite values (the model "
                                      f"computes them, whatever the backend): nothing to compare with")
                    continue
                if have.size and not (np.isfinite(have.min()) and np.isfinite(have.max())):
                    n = int(np.size(have) - np.isfinite(have).sum())
                    r.non_finite += n
                    r.problems.append(f"{case.label}: {n} non-finite values")
                    continue
                if noise is not None and o.seq_axis is not None:   # padded positions out of every real token's window
                    have, want = _without(have, noise, o), _without(want, noise, o)
                max_abs, rel, total, beyond = differences(have, want, r.atol, r.rtol)
                if max_abs >= r.max_abs:
                    r.worst_case = case.label
                r.max_abs, r.max_rel = max(r.max_abs, max_abs), max(r.max_rel, rel)
                sums[key][0] += total
                sums[key][1] += want.size
                if _one_class(o, want):
                    r.agreement = "score order"
                    pooled = scores.setdefault(key, ([], []))
                    pooled[0].append(_scores(have, o, mask))
                    pooled[1].append(_scores(want, o, mask))
                elif o.name in decisions and o.kind == "logits" and want.size:
                    r.agreement = LABEL_DECISIONS
                    same, n, near = decision_matches(have, want, o, mask, spec.parity.task.argmax_tie_fraction)
                    agree[key][0] += same
                    agree[key][1] += n
                    r.argmax_near_ties += near
                elif o.kind in ("logits", "log_probs") and want.size:
                    same, n, near = argmax_matches(have, want, o, mask, spec.parity.task.argmax_tie_fraction)
                    agree[key][0] += same
                    agree[key][1] += n
                    r.argmax_near_ties += near
                if o.kind == "features" and want.size:
                    cos = row_cosines(have, want, o, mask)
                    worst = int(cos.argmin())
                    if r.min_cosine is None or cos[worst] < r.min_cosine:
                        r.min_cosine, r.min_cosine_case = float(cos[worst]), f"{case.label}, row {worst}"
                    rank = rank_agreement(have, want) if _sentence_embedding(o) and want.shape[0] >= RANK_MIN_ROWS \
                        else None
                    if rank is not None and (r.rank_agreement is None or rank < r.rank_agreement):
                        r.rank_agreement, r.rank_agreement_case = rank, case.label
                if r.criterion == "tolerance" and beyond:
                    r.problems.append(f"{case.label}: max abs diff {max_abs:.3g} > atol {r.atol:g}"
                                      + (f" + rtol {r.rtol:g}*|ref|" if r.rtol else ""))
        run = None  # the last reference to this backend's session: let it go before the next one loads
        release = getattr(runners, "release", None)
        if release is not None:
            release(backend.name)
    for key, (have, want) in scores.items():
        same, n, near = order_matches(np.concatenate(have), np.concatenate(want), spec.parity.task.argmax_tie_fraction)
        agree[key] = [same, n]
        results[key].argmax_near_ties = near
    for key, r in results.items():
        r.mean_abs = sums[key][0] / sums[key][1] if sums[key][1] else 0.0
        if agree[key][1]:
            r.argmax_agreement = agree[key][0] / agree[key][1]
            r.argmax_count = list(agree[key])
        if r.criterion == "task" and r.load_error is None and r.cases:
            need = r.required_argmax_agreement
            if need is not None and r.argmax_agreement is not None and r.argmax_agreement < need:
                ties = f", {r.argmax_near_ties} near-tie(s) counted as agreeing" if r.argmax_near_ties else ""
                what = {"argmax": "argmax agreement", LABEL_DECISIONS: "label decision agreement (sigmoid > 0.5, each "
                        "label of each row)"}.get(r.agreement, "score order agreement (pairs of rows)")
                r.problems.append(f"{what} {_pct(r.argmax_agreement, need)} ({agree[key][0]}/{agree[key][1]}{ties}) "
                                  f"< {criterion_text(need * 100)}%")
            if r.required_cosine is not None and r.min_cosine is not None and r.min_cosine < r.required_cosine:
                r.problems.append(f"min cosine {_below(r.min_cosine, r.required_cosine)} < "
                                  f"{criterion_text(r.required_cosine)} "
                                  f"({r.min_cosine_case})")
            need = r.required_rank_agreement
            if need is not None and r.rank_agreement is not None and r.rank_agreement < need:
                r.problems.append(f"rank agreement of within-batch similarities {_below(r.rank_agreement, need)} "
                                  f"< {criterion_text(need)} ({r.rank_agreement_case})")
    return list(results.values())


def onnx_runner(path, provider: str = CPU) -> Runner:
    """A runner for one ONNX file on ``provider`` (inputs cast to the integer types the file declares)."""
    path = Path(path)
    return _backends.onnx_runner(Backend(backend_name("onnx", provider), "onnx", path, "onnx", "fp32", provider))


def tflite_runner(path) -> Runner:
    """A runner for one TFLite file's ``serving_default`` signature."""
    path = Path(path)
    return _backends.tflite_runner(Backend("tflite", "tflite", path, "tflite", "fp32"))


class OneAtATime:
    """The ``runners`` of :func:`compare` opened on demand, one at a time: a backend is loaded when
    compare reaches it and let go (its session, its copy of the weights) before the next one loads,
    so parity holds one artifact in memory beside the Keras model instead of all of them."""

    def __init__(self, backends: list[Backend]):
        self.backends = {b.name: b for b in backends}
        self.errors: dict[str, str] = {}
        self._open: Optional[Runner] = None

    def get(self, name: str) -> Optional[Runner]:
        self.release(name)
        try:
            self._open = open_runner(self.backends[name])
        except BackendLoadError as exc:
            self.errors[name] = str(exc)
            return None
        return self._open

    def release(self, name: Optional[str] = None) -> None:
        if self._open is not None:
            self._open = None
            release_memory()


def run_parity(spec: Spec, sig: Signature, model, out_dir: Path, artifacts: dict,
               cases: Optional[list] = None, reference: Optional[Runner] = None,
               progress: Optional[Callable[[str], None]] = None) -> dict:
    """Parity of the artifacts listed in ``artifacts`` (``report["artifacts"]``) in ``out_dir`` against
    ``model``: the report section, with ``passed`` false (and every problem listed) when any backend
    disagrees or cannot be loaded. ``cases`` (:class:`Case` objects or (name, inputs) pairs, e.g.
    tokenized text) replace the default grid; ``reference``: ``model``'s runner when the caller has one that
    already holds its outputs (:meth:`bertc.calibration.CalibrationSet.reference`)."""
    backends, skipped = plan_backends(Path(out_dir), artifacts)
    runners = OneAtATime(backends)
    cases = grid_cases(spec) if cases is None else [c if isinstance(c, Case) else Case.given(*c) for c in cases]
    results = compare(spec, sig, reference or keras_runner(model), backends, runners, cases, progress,
                      decisions=label_decision_outputs(spec, out_dir))
    load_errors = runners.errors
    for r in results:
        if r.backend in load_errors:
            r.load_error = load_errors[r.backend]
            r.problems.append(r.load_error)
    names = [b.name for b in backends]
    task = spec.parity.task
    return {
        "reference": "keras (inference mode)",
        "grid": [c.to_json() for c in cases],
        "backends": names,
        "backend_info": {b.name: b.to_json() for b in backends},
        "skipped": skipped,
        "load_errors": load_errors,
        "criteria": {"fp32": "atol + rtol * |reference| at every case",
                     "int8/fp16": {"min_argmax_agreement": task.min_argmax_agreement, "min_cosine": task.min_cosine,
                                   "min_rank_agreement": task.min_rank_agreement,
                                   "rank_agreement_min_rows": RANK_MIN_ROWS}},
        "results": [r.to_json() for r in results],
        "passed": all(r.passed for r in results),
        "max_abs_by_backend": {b: max((r.max_abs for r in results if r.backend == b), default=0.0)
                               for b in names if b not in load_errors},
    }
