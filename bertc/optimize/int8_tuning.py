"""Accuracy-aware int8: plain dynamic int8 first, then smoothing, then block-wise int8 (or fp32) for the most
sensitive MatMuls.

Every candidate graph is measured by the same task criteria parity applies (``spec.parity.task``:
per-row cosine and rank agreement of sentence embeddings, argmax agreement of logits) on the
calibration inputs (:mod:`bertc.calibration`: parity's random-id grid plus real text through the
bundled tokenizer), against the Keras reference. The tuning aims a little higher than the criteria
(:data:`TARGET_MARGIN` of the way from each criterion to a perfect figure), so that an artifact that just
passes on the calibration cases is not left at the edge:

1. plain dynamic int8 (:func:`bertc.optimize.quantize.quantize_dynamic_int8`, ORT's ``quantize_dynamic``
   arithmetic, 7-bit weights). When it meets the target, it is the artifact, byte for byte what bertc wrote before.
   Otherwise every later step uses pair-limited 8-bit weights (:func:`bertc.optimize.quantize.quantize_columns_paired`:
   as portable across x86 CPUs as 7 bits, finer), first alone: when they meet the target, that is the artifact.
2. smoothing (:mod:`bertc.optimize.smoothing`), each alpha of :data:`ALPHAS` tried; the best kept.
3. the sensitivity pass (:mod:`bertc.optimize.sensitivity`) on the best of 1 and 2: the most sensitive
   MatMuls are kept in fp32, then each of them is tried in block-wise int8 (``MatMulNBits``, activations
   quantized per row and block of input channels: :mod:`bertc.optimize.quantize`; cheaper than fp32)
   and stays there where the figures hold. An ONNX Runtime without 8-bit ``MatMulNBits`` (before 1.22)
   keeps them all in fp32.

The result says what was done (the artifact's ``quantization`` section): per MatMul int8, block-wise int8 or
fp32 and why,
the smoothing applied, the figures of each step and on which inputs, and the latency against the fp32
optimized graph (:func:`speed_against_fp32`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from bertc.optimize.protos import shell as _shell
from bertc.optimize.sensitivity import FORM_WORDS

TARGET_MARGIN = 0.5
PAIRED_STEP = "plain dynamic int8, pair-limited 8-bit weights"
ALPHAS = (0.5, 0.65, 0.8)   # tried after the per-activation choice (smoothing.choose_alphas)


# --- graphs as (proto, weights) --------------------------------------------------------------------

def split_all(proto, weights: Optional[list]) -> tuple:
    """(proto without initializers, every initializer as [(name, array)]): the form smoothing edits."""
    from onnx import numpy_helper

    arrays = [(t.name, numpy_helper.to_array(t)) for t in proto.graph.initializer]
    return _shell(proto), arrays + [(n, np.asarray(a)) for n, a in (weights or [])]


IN_MEMORY_TYPES = (np.float32, np.float16, np.int8, np.uint8)   # the weight matrices session_of hands over as they are


def session_of(proto, weights: Optional[list]):
    """An in-memory ONNX Runtime CPU session (every graph optimization on) of ``proto`` + ``weights``.

    The tuning opens one per candidate graph, dozens per build. The large weights are not copied into a
    serialized model: each is declared as external data and handed to ONNX Runtime as an OrtValue over the
    array itself (``SessionOptions.add_external_initializers``), which makes a session of a base-size model
    several times quicker to open. Those are the matrices (floats or int8, two or more dimensions); vectors,
    scalars and integer tensors (shapes, axes, sizes: what shape inference reads) stay inline."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, numpy_helper

    from bertc.backends import session_options

    whole = _shell(proto)
    whole.graph.initializer.extend(proto.graph.initializer)
    names, values = [], []
    for name, array in weights or []:
        array = np.asarray(array)
        if array.ndim < 2 or array.dtype not in IN_MEMORY_TYPES:
            whole.graph.initializer.append(numpy_helper.from_array(array, name))
            continue
        array = np.ascontiguousarray(array)
        t = whole.graph.initializer.add()
        t.name, t.data_type, t.data_location = name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), \
            TensorProto.EXTERNAL
        t.dims.extend(array.shape)
        where = t.external_data.add()
        where.key, where.value = "location", "in-memory"
        names.append(name)
        values.append(ort.OrtValue.ortvalue_from_numpy(array))
    options = session_options()
    if names:
        options.add_external_initializers(names, values)
    session = ort.InferenceSession(whole.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session._bertc_weights = values   # the arrays stay alive as long as the session
    return session


def with_outputs(proto, names: list[str]):
    """A shell of ``proto`` whose graph also outputs the tensors ``names`` (for calibration statistics)."""
    from onnx import TensorProto, helper

    out = _shell(proto)
    out.graph.initializer.extend(proto.graph.initializer)
    have = {o.name for o in out.graph.output}
    out.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have)
    return out


# --- measuring ---------------------------------------------------------------------------------------

@dataclass
class Measurement:
    """The task figures of one candidate graph on the calibration inputs."""

    results: list                     # [bertc.parity.OutputParity]
    target: dict                      # criterion -> the tuning target
    score: float = 0.0                # the worst normalized shortfall (<= 0: every target met)
    label: str = ""

    @property
    def passes(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def meets_target(self) -> bool:
        return self.passes and self.score <= 0

    def figures(self) -> dict:
        out = {}
        for r in self.results:
            f = {}
            if r.min_cosine is not None:
                f.update(min_cosine=round(r.min_cosine, 6), min_cosine_case=r.min_cosine_case)
            if r.rank_agreement is not None:
                f.update(rank_agreement=round(r.rank_agreement, 6), rank_agreement_case=r.rank_agreement_case)
            if r.argmax_agreement is not None:
                f.update(argmax_agreement=round(r.argmax_agreement, 6))
                if r.agreement != "argmax":   # one-class logits: the order of the scores (bertc.parity)
                    f["agreement"] = r.agreement
            f["max_abs"] = round(r.max_abs, 6)
            if r.problems:
                f["problems"] = list(r.problems)
            out[r.output] = f
        return out

    def worst(self) -> str:
        """The worst figure in words, e.g. ``sentence_embedding: min cosine 0.9760 (batch 3 x seq 129, row 2)``: a
        figure that misses its criterion with the decimals that show it (0.999996 for 0.9999999, never 1.0000)."""
        from bertc.parity import figure_text

        parts = []
        for r in self.results:
            if r.min_cosine is not None:
                parts.append(f"{r.output}: min cosine {figure_text(r.min_cosine, r.required_cosine)} "
                             f"({r.min_cosine_case})")
            if r.rank_agreement is not None:
                parts.append(f"{r.output}: rank agreement {figure_text(r.rank_agreement, r.required_rank_agreement)} "
                             f"({r.rank_agreement_case})")
            if r.argmax_agreement is not None:
                parts.append(f"{r.output}: {r.agreement} agreement "
                             f"{figure_text(r.argmax_agreement, r.required_argmax_agreement, percent=True)}")
        return "; ".join(parts)


class Judge:
    """Measures candidate int8 graphs against the Keras reference on ``cases`` (computed once)."""

    def __init__(self, spec, sig, model, cases: list, margin: float = TARGET_MARGIN, reference=None, out=None):
        from bertc.backends import keras_runner
        from bertc.parity import label_decision_outputs

        self.spec, self.sig, self.cases = spec, sig, cases
        # a multi-label classifier is judged by its per-label decisions, as parity judges it (``out``: the build)
        self.decisions = label_decision_outputs(spec, out)
        reference = reference or keras_runner(model)   # a build's: CalibrationSet.reference (computed once)
        self._refs = {id(c.inputs): reference(c.inputs) for c in cases}
        task = spec.parity.task
        self.target = {k: v + margin * (1.0 - v) for k, v in (("cosine", task.min_cosine),
                                                              ("rank_agreement", task.min_rank_agreement),
                                                              ("argmax_agreement", task.min_argmax_agreement))}
        self.criteria = {"cosine": task.min_cosine, "rank_agreement": task.min_rank_agreement,
                         "argmax_agreement": task.min_argmax_agreement}
        self.measured = 0

    @property
    def backend(self):
        """What a candidate int8 graph is judged as (its parity results' backend)."""
        from bertc.backends import CPU, Backend

        return Backend("onnx_int8_cpu", "onnx_int8", Path("(tuning)"), "onnx", "int8", CPU)

    def measure(self, proto, weights: Optional[list], label: str = "") -> Measurement:
        from bertc.backends import onnx_feeds

        session = session_of(proto, weights)
        names = [o.name for o in session.get_outputs()]

        def run(inputs):
            return dict(zip(names, session.run(names, onnx_feeds(session, inputs))))

        return self.measure_runner(run, self.backend, label)

    def measure_runner(self, run, backend, label: str = "") -> Measurement:
        """The figures of ``run`` (inputs -> outputs), judged as ``backend`` (a :class:`bertc.backends.Backend`)."""
        from bertc.parity import compare

        results = compare(self.spec, self.sig, lambda inputs: self._refs[id(inputs)], [backend],
                          {backend.name: run}, self.cases, decisions=self.decisions)
        self.measured += 1
        return Measurement(results, self.target, self._score(results), label)

    def _score(self, results) -> float:
        worst = -1.0
        for r in results:
            for key, figure, need in (("cosine", r.min_cosine, r.required_cosine),
                                      ("rank_agreement", r.rank_agreement, r.required_rank_agreement),
                                      ("argmax_agreement", r.argmax_agreement, r.required_argmax_agreement)):
                if figure is None or need is None:
                    continue
                room = max(1.0 - need, 1e-6)
                worst = max(worst, (self.target[key] - figure) / room)
            if r.problems and worst <= 0:   # e.g. non-finite values: never good enough
                worst = max(worst, 1.0)
        return worst


# --- the tuning ----------------------------------------------------------------------------------------

@dataclass
class Tuned:
    """What :func:`tune_int8` chose: the int8 graph (``result``: an :class:`~bertc.optimize.quantize.Int8Result`)
    and the report's ``quantization`` section (``section``); ``passed``: the criteria hold."""

    result: object
    section: dict
    passed: bool
    measurement: Measurement
    smoothed: Optional[tuple] = None     # (proto, weights) of the smoothed fp32 graph, when smoothing was kept
    steps: list = field(default_factory=list)
    keep_fp32: list = field(default_factory=list)   # the nodes the result leaves fp32 (sensitivity + side paths)
    blockwise: list = field(default_factory=list)   # the nodes the result gives block-wise int8
    paired: bool = False                            # pair-limited 8-bit weights (else ORT's 7-bit ones)
    rowwise: list = field(default_factory=list)     # the nodes the result gives row-wise int8
    # what the tuning chose past plain int8, enough to make ``result`` again (the plan cache): the smoothing's
    # alpha (one, or {site tensor: alpha}; None: not smoothed) and the sensitivity pass's nodes
    choices: Optional[dict] = None

    def plan(self, proto, weights) -> tuple:
        """(fp32 proto, its weights, keep_fp32, blockwise, paired, rowwise): what :func:`quantize_dynamic_int8` turned into
        ``result`` (``proto`` / ``weights``: the graph the tuning started from); the padding-free int8 variant
        is quantized the same way (:mod:`bertc.optimize.padding_free`)."""
        source = self.smoothed if self.smoothed is not None else (proto, weights)
        return (*source, list(self.keep_fp32), list(self.blockwise), self.paired, list(self.rowwise))


FORM_STEP = "cheaper int8 form"   # a step of the relaxation (bertc.optimize.sensitivity.relax)


def _step(name: str, m: Measurement, **extra) -> dict:
    return {"step": name, "meets_target": m.meets_target, "passes_criteria": m.passes, "score": round(m.score, 4),
            "figures": m.figures(), **extra}


def with_ranges(proto, names: list[str], full: list[str] = ()):
    """A shell of ``proto`` whose graph also outputs the tensors ``full`` and, for each tensor of ``names``, its
    per-channel min and max over every row (``{name}/bertc_low``, ``/bertc_high``: the last axis is the channel)
    and its shape as rows x channels (``/bertc_rows``), computed in the graph: ONNX Runtime then never holds those
    tensors themselves as outputs (the feedforwards' are four hidden sizes wide, for every token of a batch)."""
    from onnx import TensorProto, helper, numpy_helper

    out = with_outputs(proto, list(full))
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 17)
    axes = "bertc_range_axes"
    if opset >= 18:
        out.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), axes))
    for name in names:
        flat, low, high, rows = (f"{name}/bertc_{part}" for part in ("flat", "low", "high", "rows"))
        out.graph.node.append(helper.make_node("Flatten", [name], [flat], axis=-1))
        for op, result in (("ReduceMin", low), ("ReduceMax", high)):
            out.graph.node.append(helper.make_node(op, [flat, axes], [result], keepdims=0) if opset >= 18 else
                                  helper.make_node(op, [flat], [result], axes=[0], keepdims=0))
        out.graph.node.append(helper.make_node("Shape", [flat], [rows]))
        out.graph.output.extend([helper.make_tensor_value_info(low, TensorProto.FLOAT, None),
                                 helper.make_tensor_value_info(high, TensorProto.FLOAT, None),
                                 helper.make_tensor_value_info(rows, TensorProto.INT64, None)])
    return out


def activation_statistics(proto, weights: list, sites: list, feedforwards: list, judge: Judge,
                          rows: bool = True) -> tuple:
    """(samples, absmax) of the smoothing sites' and feedforwards' activations over the judge's cases (one fp32
    run each): :func:`bertc.optimize.smoothing.collect_samples` and each tensor's per-channel max |value|.

    Sample rows are kept for the sites alone (what :func:`bertc.optimize.smoothing.choose_alphas` reads), and
    for none unless ``rows``; a tensor without them is reduced to its ranges in the graph
    (:func:`with_ranges`). The statistics' session is freed, and the heap it leaves returned to the system,
    before this returns (README, "The tuning's memory")."""
    from bertc.backends import onnx_feeds
    from bertc.memory import release
    from bertc.optimize.smoothing import Ranges, collect_samples

    tensors = [s.tensor for s in sites] + [f.tensor for f in feedforwards]
    sampled = {s.tensor for s in sites} if rows else set()
    ranged = [n for n in dict.fromkeys(tensors) if n not in sampled]
    fp32 = session_of(with_ranges(proto, ranged, sorted(sampled)), weights)

    def run_with_outputs(names, inputs):
        wanted = [n for n in names if n in sampled]
        for n in ranged:
            wanted += [f"{n}/bertc_low", f"{n}/bertc_high", f"{n}/bertc_rows"]
        got = dict(zip(wanted, fp32.run(wanted, onnx_feeds(fp32, inputs))))
        return [got[n] if n in sampled else
                Ranges(got[f"{n}/bertc_low"], got[f"{n}/bertc_high"], int(got[f"{n}/bertc_rows"][0]))
                for n in names]

    samples = collect_samples(run_with_outputs, tensors, [c.inputs for c in judge.cases], rows_of=sampled)
    absmax = {n: np.max([np.maximum(np.abs(lo), np.abs(hi)) for lo, hi in zip(v.lows, v.highs)], axis=0)
              for n, v in samples.items()}
    del fp32, run_with_outputs
    release()
    return samples, absmax


def prefix_runs(quantized: Callable, candidates: list[str], judge: Judge, budget: int):
    """A :class:`bertc.optimize.prefix_runs.PrefixRuns` over ``quantized([])`` (the pass's all-int8 graph) with a
    checkpoint where each group of candidates begins (``layer_3/...``: the first of them alone in fp32), or None
    when the checkpoints' tensors take more than ``budget`` bytes (the pass then runs whole graphs)."""
    from bertc.backends import onnx_feeds
    from bertc.memory import release
    from bertc.optimize.prefix_runs import PrefixRuns

    runs = PrefixRuns(quantized([]), judge.cases, session_of, onnx_feeds, budget)
    groups = list(dict.fromkeys(node.split("/")[0] for node in candidates))
    for group in groups:
        runs.checkpoint(quantized([next(n for n in candidates if n.split("/")[0] == group)]))
    held = runs.hold()
    release()
    return runs if held else None


def tune_int8(proto, weights: Optional[list], judge: Judge, log=None, cache: bool = False) -> Tuned:
    """The int8 graph of the fp32 optimized graph ``proto`` (+ ``weights`` beside it), tuned until the
    criteria hold (see the module docstring).

    ``cache``: the choices of a tuning that went past plain int8 are kept per host in bertc's cache folder
    (:func:`bertc.optimize.quantize.cache_dir`, ``int8_tuning/``), keyed by everything they depend on (the
    graph, every weight, the calibration inputs, the criteria, the host's int8 kernels and ONNX Runtime,
    bertc's version and tuning code). A build of the same graph, weights and inputs then rebuilds the graph of those
    choices and measures it once; when its figures are those the tuning measured, that is the result (the
    report's ``cache`` says so), else the tuning runs again."""
    say = log or (lambda text: None)

    def status(text: str) -> None:   # a long build's status line (bertc.pipeline.Stages.status)
        say(f"int8 tuning: {text}")

    key = plan_key(proto, weights, judge) if cache and cache_folder() is not None else None
    if key is not None:
        plan = cached_plan(key)
        if plan is not None:
            status("the choices of an earlier build of this graph, weights and inputs")
            tuned = _replay(plan, proto, weights, judge, key)
            if tuned is not None:
                return tuned
    tuned = _tune(proto, weights, judge, status)
    if key is not None:
        store_plan(key, tuned)   # when it went past plain int8 (``choices``)
    return tuned


def _tune(proto, weights: Optional[list], judge: Judge, log) -> Tuned:
    from bertc.memory import release as release_memory
    from bertc.optimize.quantize import (cheaper_forms, form_costs_source, int8_form_costs, quantizable_nodes,
                                         quantize_dynamic_int8, weight_shapes)
    from bertc.optimize.sensitivity import BLOCKS, ROWS, relax, select_fp32
    from bertc.optimize.smoothing import choose_alphas, find_feedforwards, find_sites, smooth, split_outliers

    t0 = time.perf_counter()
    log("plain dynamic int8")
    plain = quantize_dynamic_int8(proto, weights)
    m_plain = judge.measure(plain.proto, plain.weights, "plain")
    steps = [_step("plain dynamic int8", m_plain)]
    log(f"plain int8: {m_plain.worst()}")
    candidates = quantizable_nodes(proto, weights)
    if m_plain.meets_target:
        return Tuned(plain, _section(judge, steps, candidates, [], [], None, [], m_plain, t0), True, m_plain)
    # 1b. pair-limited 8-bit weights, from here on
    plain = quantize_dynamic_int8(proto, weights, paired=True)
    m_plain = judge.measure(plain.proto, plain.weights, "plain, pair-limited 8-bit weights")
    steps.append(_step(PAIRED_STEP, m_plain))
    log(f"plain int8, pair-limited 8-bit weights: {m_plain.worst()}")
    if m_plain.meets_target:
        return Tuned(plain, _section(judge, steps, candidates, [], [], None, [], m_plain, t0, paired=True), True,
                     m_plain, paired=True)
    # 2. smoothing, and the feedforwards' outlier channels on an fp32 side path
    base_proto, base_weights = split_all(proto, weights)
    sites, feedforwards = find_sites(base_proto, base_weights), find_feedforwards(base_proto, base_weights)
    best = ("plain", base_proto, base_weights, m_plain, {}, None, [])
    if sites or feedforwards:
        plain = None   # made again below if it stays the result, rather than held beside every candidate
        log("calibration statistics of the activations")
        samples, absmax = activation_statistics(base_proto, base_weights, sites, feedforwards, judge)
        per_site = choose_alphas(sites, base_weights, samples, absmax)
        samples = None   # the sample rows serve the choice of alphas alone: freed, and their heap returned
        release_memory()
        last = None   # (alpha, proto, weights) of the last alpha measured
        for alpha in (per_site, *ALPHAS):
            label = "per activation (least int8 product error)" if isinstance(alpha, dict) else alpha
            log(f"smoothing, alpha {label}")
            last = None   # one smoothed copy of the weights at a time (a base-size model's: 0.4 GB)
            s_proto, s_weights, applied = smooth(base_proto, base_weights, sites, absmax, alpha)
            s_proto, s_weights, split, side = split_outliers(s_proto, s_weights, feedforwards, absmax)
            q = quantize_dynamic_int8(s_proto, s_weights, side, paired=True)
            m = judge.measure(q.proto, q.weights, f"smoothing alpha {label}")
            q = None
            steps.append(_step(f"smoothing, alpha {label}; outlier channels apart in {len(split)} feedforward(s)", m,
                               sites=len(applied)))
            log(f"smoothing alpha {label}, {len(split)} outlier split(s): {m.worst()}")
            if m.score < best[3].score:   # its graph is made again below unless it is the last one measured
                best = (f"smoothing alpha {label}", None, None, m,
                        {"sites": applied, "outlier_channels": split, "side": side, "alpha": alpha}, label, side)
            last, s_proto, s_weights = (alpha, s_proto, s_weights), None, None
            if m.meets_target:
                break
        if best[1] is None:   # smoothing won: the best alpha's graph (smoothing is deterministic)
            chosen = best[4]["alpha"]
            if last is not None and last[0] is chosen:
                made = last[1:]
            else:
                last = None
                s_proto, s_weights, _ = smooth(base_proto, base_weights, sites, absmax, chosen)
                made = split_outliers(s_proto, s_weights, feedforwards, absmax)[:2]
                s_proto = s_weights = None
            best = (best[0], *made, *best[3:])
            made = None
        last = None
    name, b_proto, b_weights, m_best, applied, alpha, side = best
    keep, blocks, rows, ranking, costs, tried, timed = [], [], [], [], {}, {}, []
    if not m_best.meets_target:
        # 3. the sensitivity pass on the best graph so far: the most sensitive MatMuls in fp32, then each of
        # them in a form cheaper than fp32 on this host (row-wise or block-wise int8) where the figures hold
        memo: dict = {}   # every candidate of this pass quantizes the same weights: once per weight and form

        def quantized(keep_fp32, blockwise=(), rowwise=()):
            return quantize_dynamic_int8(b_proto, b_weights, list(keep_fp32) + side, blockwise=blockwise, paired=True,
                                         rowwise=rowwise, memo=memo)

        prefix = None   # the candidates run from where they differ from the all-int8 graph (prefix_runs.py)

        def measure(keep_fp32, blockwise=(), rowwise=()):
            q = quantized(keep_fp32, blockwise, rowwise)
            label = "; ".join(f"{words}: {', '.join(nodes)}" for words, nodes in (("fp32", keep_fp32),
                                                                                  ("row-wise int8", rowwise),
                                                                                  ("block-wise int8", blockwise))
                              if nodes)
            run = prefix.runner(q) if prefix is not None else None
            return judge.measure(q.proto, q.weights, label) if run is None else \
                judge.measure_runner(run, judge.backend, label)

        sensitive = [n for n in quantizable_nodes(b_proto, b_weights) if n not in side]
        log("the all-int8 graph's tensors where the candidates differ from it")
        prefix = prefix_runs(quantized, sensitive, judge, sum(np.asarray(a).nbytes for _, a in b_weights or []))
        selection = select_fp32(sensitive, measure, m_best, progress=log)
        ranking = selection.ranking
        for kept, m in selection.steps:
            steps.append(_step("sensitivity", m, keep_fp32=list(kept)))
        keep, m_best = selection.best
        if keep:
            shapes = weight_shapes(b_proto, b_weights, keep)
            costs = {node: int8_form_costs(*shapes[node]) for node in keep}
            timed = sorted({form_costs_source(*shapes[node]) or "" for node in keep})

            def forms_of(node):
                return cheaper_forms(*shapes[node])

            def measure_forms(choice, fp32):
                return measure(fp32, [n for n, f in choice.items() if f == BLOCKS],
                               [n for n, f in choice.items() if f == ROWS])

            relaxed = relax(keep, m_best, measure_forms, forms_of, progress=log)
            for choice, f, m, taken in relaxed.steps:
                tried = {n: FORM_WORDS[form] for n, form in choice.items()}
                steps.append(_step(FORM_STEP, m, forms=tried, keep_fp32=list(f), taken=taken))
            blocks, rows, keep, m_best = relaxed.blockwise, relaxed.rowwise, relaxed.fp32, relaxed.measurement
            tried = relaxed.tried
    if keep or blocks or rows:
        final = quantized(keep, blocks, rows)
    else:
        final = quantize_dynamic_int8(b_proto, b_weights, side, paired=True) if applied else \
            plain if plain is not None else quantize_dynamic_int8(proto, weights, paired=True)
    section = _section(judge, steps, candidates, keep, blocks, alpha, applied, m_best, t0, ranking, paired=True,
                       rows=rows, costs=costs, tried=tried, timed=timed)
    return Tuned(final, section, m_best.passes, m_best, (b_proto, b_weights) if applied else None, steps,
                 keep + side, list(blocks), paired=True, rowwise=list(rows),
                 choices={"alpha": (applied or {}).get("alpha"), "keep_fp32": list(keep), "blockwise": list(blocks),
                          "rowwise": list(rows)})


def _section(judge: Judge, steps: list, candidates: list, keep: list, blocks: list, alpha, applied: list,
             m: Measurement, t0: float, ranking: Optional[list] = None, paired: bool = False, rows: list = (),
             costs: Optional[dict] = None, tried: Optional[dict] = None, timed: list = ()) -> dict:
    from bertc.optimize.quantize import (BLOCK_SIZE, FORM_CACHE, FORM_GAIN, FORM_ROWS, FORM_THREADS, PAIR_LIMIT, QMAX,
                                         WEIGHT_QMAX, cache_dir, host_int8_kernels)

    sensitivity = {s.node: s for s in ranking or []}
    order = {s.node: i + 1 for i, s in enumerate(ranking or [])}
    cache = cache_dir()
    plain_ok = len(steps) == 1 or (len(steps) == 2 and paired)   # plain int8, or with pair-limited weights
    costs, tried = costs or {}, tried or {}
    nodes = []
    for name in candidates:
        form = "int8_block" if name in blocks else "int8_row" if name in rows else None
        entry = {"node": name, "precision": "fp32" if name in keep else form or "int8"}
        s = sensitivity.get(name)
        if name in keep or form:
            words = FORM_WORDS["blocks" if name in blocks else "rows"] if form else "kept fp32"
            entry["why"] = (f"{words} by the sensitivity pass: most "
                            f"sensitive #{order[name]} of {len(candidates)}; alone in fp32 its score is {s.score:.3f} "
                            f"(all-int8 {s.score + s.gain:.3f}; <= 0 meets the target)"
                            + (f"; in {words} the figures hold" if form else
                               f"; {' / '.join(FORM_WORDS[f] for f in tried[name])} did not hold the figures"
                               if tried.get(name) else
                               f"; no int8 form takes {FORM_GAIN:.0%} of fp32's time or less on this host"
                               if name in costs else ""))
            if name in costs:
                entry["form_ms"] = costs[name]
        elif plain_ok:
            entry["why"] = f"int8: {steps[-1]['step']} meets the target"
        elif s is not None:
            entry["why"] = f"int8: less sensitive (#{order[name]} of {len(candidates)}, gain {s.gain:.3f} alone in fp32)"
        else:
            entry["why"] = "int8: the smoothed graph meets the target"
        if s is not None:
            entry["sensitivity_score"] = round(s.score, 4)
        nodes.append(entry)
    for name in (applied or {}).get("side", []):
        nodes.append({"node": name, "precision": "fp32",
                      "why": "fp32 side path of its feedforward's outlier channels (smoothing.outlier_channels)"})
    block_wise = {"nodes": list(blocks), "operator": "com.microsoft.MatMulNBits", "bits": 8, "accuracy_level": 4,
                  "block_size": BLOCK_SIZE, "weights": {"range": [-WEIGHT_QMAX, WEIGHT_QMAX],
                                                        "per": f"output column and block of {BLOCK_SIZE} rows"},
                  "activations": f"int8 per row and block of {BLOCK_SIZE} input channels (in the kernel)"}
    row_wise = {"nodes": list(rows), "operator": "com.microsoft.MatMulIntegerToFloat",
                "weights": "the int8 weights of the other MatMuls (per output column)",
                "activations": "uint8 around 128 per row: max|row| / 127 (Abs, ReduceMax, Div, QuantizeLinear; "
                               "a Mul by the row's scale after)",
                "form_ms": {"what": f"one ({FORM_ROWS}, K) x (K, N) product in each form on this host, ORT CPU "
                                    f"{FORM_THREADS} threads (bertc.optimize.quantize.int8_form_costs); a form is "
                                    f"tried where it takes at most {FORM_GAIN:.0%} of fp32's time",
                            "nodes": costs, "timed": list(timed),
                            # the host's cache file where there is one (None: timings kept nowhere, e.g. an
                            # unwritable home or BERTC_CACHE_DIR=off)
                            "cache": str(cache / FORM_CACHE) if cache and (cache / FORM_CACHE).is_file() else None}}
    return {
        "tuning": ("pair-limited weights" if paired else "plain") if plain_ok else (
            "smoothing" if applied and not (keep or blocks or rows) else "smoothing + sensitivity" if applied else "sensitivity"),
        "weights": {"range": [-QMAX, QMAX], "per": "output column", "pair_limit": PAIR_LIMIT,
                    "scale": f"min(largest same-sign magnitude sum of a pair of input rows (2i, 2i+1) / {QMAX}, "
                             f"max|w| / {WEIGHT_QMAX})",
                    "why": "pair-limited 8-bit: no int16 sum of x86 u8 x s8 kernels without VNNI can saturate"}
        if paired else {"range": [-WEIGHT_QMAX, WEIGHT_QMAX], "per": "output column"},
        "measured_on": host_int8_kernels(),
        "criteria": judge.criteria, "target": {k: round(v, 6) for k, v in judge.target.items()},
        "target_margin": TARGET_MARGIN,
        "inputs": [c.label for c in judge.cases],
        "figures": m.figures(), "meets_target": m.meets_target, "passes_criteria": m.passes,
        "smoothing": {"applied": bool(applied), "alpha": alpha, "sites": (applied or {}).get("sites", []),
                      "outlier_channels": (applied or {}).get("outlier_channels", [])},
        "matmuls": nodes, "kept_fp32_by_sensitivity": list(keep), "block_wise_by_sensitivity": block_wise,
        "row_wise_by_sensitivity": row_wise,
        "steps": steps, "graphs_measured": judge.measured, "seconds": round(time.perf_counter() - t0, 3),
    }


# --- the plan cache (tune_int8(cache=True)) -----------------------------------------------------------------

PLAN_VERSION = 1      # part of the key: bump it when the tuning's choices or their replay change
PLAN_FOLDER = "int8_tuning"
PLANS_KEPT = 16       # the most recent plans kept; older ones are deleted


def cache_folder() -> Optional[Path]:
    from bertc.optimize.quantize import cache_dir

    folder = cache_dir()
    return None if folder is None else folder / PLAN_FOLDER


def plan_key(proto, weights: Optional[list], judge: Judge) -> str:
    """sha256 of everything the tuning's choices depend on (see :func:`tune_int8`), the source of the modules
    that make them included (a changed bertc tunes again, whatever its version says)."""
    import hashlib
    import json

    import bertc
    from bertc.optimize.quantize import form_host_key

    h = hashlib.sha256()

    def add(text: str) -> None:
        h.update(text.encode())
        h.update(b"\0")

    add(f"bertc {bertc.__version__} plan v{PLAN_VERSION} | {form_host_key()} | margin {TARGET_MARGIN}")
    # the code that chooses and rebuilds
    for module in ("int8_tuning", "quantize", "sensitivity", "smoothing", "prefix_runs"):
        h.update((Path(__file__).parent / f"{module}.py").read_bytes())
    add(json.dumps(judge.sig.to_json(), sort_keys=True, default=str))
    add(repr(judge.spec.parity.task))
    h.update(_shell(proto).SerializeToString(deterministic=True))
    for t in proto.graph.initializer:
        h.update(t.SerializeToString(deterministic=True))
    def add_array(name: str, array) -> None:
        a = np.asarray(array)
        add(f"{name} {a.dtype} {a.shape}")
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))

    for name, array in weights or []:
        add_array(name, array)
    for case in judge.cases:
        add(case.label)
        for k in sorted(case.inputs):
            add_array(k, case.inputs[k])
    return h.hexdigest()


def cached_plan(key: str) -> Optional[dict]:
    import json

    folder = cache_folder()
    try:
        plan = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None
    ok = isinstance(plan, dict) and plan.get("key") == key and isinstance(plan.get("choices"), dict) and \
        isinstance(plan.get("section"), dict) and isinstance(plan.get("figures"), dict)
    return plan if ok else None


def store_plan(key: str, tuned: Tuned) -> None:
    """Write ``tuned``'s choices beside its figures and report section (atomically; a folder that cannot be
    written is skipped), and delete all but the :data:`PLANS_KEPT` most recent plans."""
    import datetime
    import json

    from bertc.report import write_text_atomic

    folder = cache_folder()
    if folder is None or tuned.choices is None:
        return
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    plan = {"what": "bertc's int8 tuning choices for one graph, weights and inputs on one host "
                    "(bertc.optimize.int8_tuning.tune_int8); delete this folder to tune again",
            "key": key, "made": now, "paired": tuned.paired, "choices": tuned.choices,
            "figures": tuned.measurement.figures(), "section": tuned.section}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / f"{key}.json", json.dumps(plan, indent=1, default=str))
        plans = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in plans[PLANS_KEPT:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


def _form_costs_now(used: Optional[dict], proto, weights: Optional[list]) -> Optional[list]:
    """Whether a plan's choices still stand on this host's form timings: ``used`` ({node: {form: ms}}, the timings
    its sensitivity pass chose forms by) must be what the form-cost cache holds now for each node's shape. Deleted
    (the README's way to time again) or timed again: None, and the tuning runs again (timing afresh). Else where
    the cache's timings come from (``["timed on this host DATE"]``; [] when the plan used none)."""
    from bertc.optimize.quantize import _cached_form_costs, weight_shapes

    if not used:
        return []
    if not isinstance(used, dict):
        return None
    shapes = weight_shapes(proto, weights, used)
    cached, timed = _cached_form_costs(), set()
    for node, ms in used.items():
        entry = cached.get("{}x{}".format(*shapes[node])) if node in shapes else None
        if entry is None or not isinstance(ms, dict) or \
                {f: float(v) for f, v in entry["ms"].items()} != {f: float(v) for f, v in ms.items()}:
            return None
        timed.add(f"timed on this host {entry.get('measured', '')}".strip())
    return sorted(timed)


def _replay(plan: dict, proto, weights: Optional[list], judge: Judge, key: str) -> Optional[Tuned]:
    """The graph of a cached plan's choices, measured once: a :class:`Tuned` when its figures are the plan's,
    else None (the tuning runs again)."""
    from bertc.optimize.quantize import quantize_dynamic_int8
    from bertc.optimize.smoothing import find_feedforwards, find_sites, smooth, split_outliers

    t0 = time.perf_counter()
    choices = plan["choices"]
    keep, blocks, rows = (list(choices.get(k) or []) for k in ("keep_fp32", "blockwise", "rowwise"))
    alpha = choices.get("alpha")
    b_proto, b_weights = split_all(proto, weights)
    side, smoothed = [], None
    try:
        if alpha is not None:
            sites, feedforwards = find_sites(b_proto, b_weights), find_feedforwards(b_proto, b_weights)
            _, absmax = activation_statistics(b_proto, b_weights, sites, feedforwards, judge, rows=False)
            b_proto, b_weights, _ = smooth(b_proto, b_weights, sites, absmax, alpha)
            b_proto, b_weights, _, side = split_outliers(b_proto, b_weights, feedforwards, absmax)
            smoothed = (b_proto, b_weights)
        final = quantize_dynamic_int8(b_proto, b_weights, keep + side, blockwise=blocks, paired=True, rowwise=rows)
    except (KeyError, TypeError, ValueError):   # a plan this graph does not fit: tune
        return None
    row_wise = plan["section"].get("row_wise_by_sensitivity")
    form_ms = row_wise.get("form_ms") if isinstance(row_wise, dict) else None
    timed = _form_costs_now(form_ms.get("nodes") if isinstance(form_ms, dict) else None, b_proto, b_weights)
    if timed is None:   # the host's form timings the choices were made from are gone or were timed again
        return None
    m = judge.measure(final.proto, final.weights, "the cached plan")
    if m.figures() != plan["figures"]:
        return None
    section = {**plan["section"], "seconds": round(time.perf_counter() - t0, 3),
               "cache": {"plan": str(cache_folder() / f"{key}.json"), "made": plan.get("made"),
                         "tuning_seconds": plan["section"].get("seconds"),
                         "graphs_measured_then": plan["section"].get("graphs_measured"),
                         "what": "the choices of an earlier tuning of this graph, weights and calibration inputs on "
                                 "this host, rebuilt and measured once: the same figures"}}
    section["graphs_measured"] = 1
    if timed:   # where this build took the timings from: the host's cache (this build timed nothing)
        section["row_wise_by_sensitivity"] = {**row_wise, "form_ms": {**form_ms, "timed": timed}}
    return Tuned(final, section, m.passes, m, smoothed, [], keep + side, blocks, paired=True, rowwise=rows,
                 choices=dict(choices))


def latency_pair(spec, runner_of, fp32_path: Path, int8_path: Path, batch: int, seq: int, rounds: int, calls: int,
                 warmup: int) -> dict:
    """Latency of ``int8_path`` against ``fp32_path`` at (``batch``, ``seq``), interleaved rounds; ``runner_of(name,
    path, inputs)`` gives a call that runs the file once. The ratio is the median of per-round p50 ratios."""
    from bertc.bench import Target, round_ratio, time_targets
    from bertc.inputs import make_inputs

    seq = min(seq, spec.encoder.max_sequence_length)

    def target(name, path):
        return Target(name, lambda inputs: runner_of(name, path, inputs))

    def inputs_for(b, s):
        return make_inputs(spec, b, s, np.random.default_rng([spec.seed, b, s, 7]))

    rows = time_targets([target("fp32", fp32_path), target("int8", int8_path)], [(batch, seq)], inputs_for,
                        rounds=rounds, warmup=warmup, calls=calls, baseline="fp32")
    by = {r["target"]: r for r in rows}
    return {"batch": batch, "sequence_length": seq, "rounds": rounds, "calls": calls,
            "fp32_p50_ms": by["fp32"].get("p50_ms"), "int8_p50_ms": by["int8"].get("p50_ms"),
            "ratio": round_ratio(rows, "int8", "fp32", batch, seq)}


def speed_against_fp32(fp32_path: Path, int8_path: Path, spec, batch: int = 1, seq: int = 128, threads: int = 2,
                       rounds: int = 5, calls: int = 5) -> dict:
    """Latency of the int8 artifact against the fp32 optimized one (ONNX Runtime CPU, ``threads`` threads,
    spinning off, interleaved rounds; the ratio is the median of per-round ratios)."""
    from bertc.backends import CPU, Backend, onnx_feeds, ort_session

    def runner_of(name, path, inputs):
        session = ort_session(Backend(name, name, path, "onnx", "fp32", CPU), threads, spinning=False)
        feeds = onnx_feeds(session, inputs)
        return lambda: session.run(None, feeds)

    out = latency_pair(spec, runner_of, fp32_path, int8_path, batch, seq, rounds, calls, warmup=2)
    return {**out, "threads": threads,
            "method": "ORT CPU, spinning off, interleaved rounds; ratio = median per-round p50 ratio (int8 / fp32)"}
