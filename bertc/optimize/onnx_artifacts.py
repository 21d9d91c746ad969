"""The "optimize onnx" stage: the fused ONNX Runtime artifact and its int8 / fp16 variants.

- ``onnx_optimized`` (``model.optimized.onnx``): the graph lowered straight from the spec
  (:mod:`bertc.optimize.lower`), checked by ``onnx.checker`` and loaded into ONNX Runtime's CPU
  provider with every graph optimization on; one sample (a non-contiguous 0/1 mask) is run and its
  max abs difference to Keras recorded (parity then checks the whole grid), and the lowering is
  checked structurally on stress weights (:mod:`bertc.optimize.stress`): a wrong lowering fails
  the build even where the model's own (freshly initialized) weights would hide it.
- ``onnx_int8`` (``model.optimized.int8.onnx``): ONNX Runtime's dynamic quantization of that graph,
  written directly as the operators ORT runs (:mod:`bertc.optimize.quantize`): MatMul and the fused
  Attention get int8 weights (per-channel, 7-bit; see :data:`INT8_OPTIONS`; pair-limited 8-bit once the
  tuning needs more, :mod:`bertc.optimize.int8_tuning`); embeddings, layer norms, the pooler and classifier
  Gemms stay fp32.
- ``onnx_fp16`` (``model.optimized.fp16.onnx``): weights and activations in float16 for the CUDA
  provider. Inputs stay int32/int64 and outputs fp32 (``keep_io_types``); layer norms
  (LayerNormalization; the residual norms as Sum + LayerNormalization), (Log)Softmax and the fused
  Attention's softmax run on fp16 tensors, and ONNX Runtime's CUDA kernels accumulate mean/variance
  and the softmax sums in fp32 (see :data:`FP16_KEEP_FP32_OPS`). The -10000 mask value is exact in fp16.
  What fp16 cannot hold stays fp32 (:mod:`bertc.optimize.half`: rotary angles, window distances, pooling
  sums, the L2 normalisation; the report's ``kept_fp32_nodes``). ONNX Runtime's CPU provider
  has no fp16 MatMul or Attention kernel, which the stage verifies and records (``providers``).

A plug-in attention, feedforward, block or embedding network without an ONNX lowering of its own takes
the portable path inside the optimized graph (:mod:`bertc.optimize.portable`: its Keras call converted
by tf2onnx and spliced in, everything around it still fused); ``fusion.not_lowered`` lists those layers.
A model whose encoder or head has no lowering, or whose plug-in tf2onnx cannot convert on its own, gets
no optimized artifact (nor variants): the stage's result records a :class:`Skip` with the reason and the
layers concerned, and the build goes on with the portable ``model.onnx``.
"""
from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from bertc.errors import ExportError
from bertc.optimize.runtime import ort_session, sample_inputs

OPTIMIZED_FILE = "model.optimized.onnx"
INT8_FILE = "model.optimized.int8.onnx"
FP16_FILE = "model.optimized.fp16.onnx"

# Dynamic quantization: int8 weights per output channel (README.md, "int8 quantization choices"), 7-bit as
# ORT's ``reduce_range`` gives them (bertc.optimize.quantize says why); these are the options of ORT's
# quantize_dynamic that bertc's plain int8 equals (a test checks it). The int8 tuning switches to pair-limited
# 8-bit weights (bertc.optimize.int8_tuning); the report's ``weight_range`` / ``pair_limit`` say which.
# Only MatMul and the fused Attention are quantized: embeddings, layer norms and the pooler /
# classifier Gemms stay fp32 (small, and the most sensitive).
INT8_OPTIONS = {"per_channel": True, "reduce_range": True, "op_types_to_quantize": ["MatMul", "Attention"]}
# No op is blocked from fp16: ORT's CUDA kernels for LayerNormalization, Softmax / LogSoftmax and the fused
# Attention's softmax accumulate in fp32. (Its SkipLayerNormalization and EmbedLayerNormalization kernels sum their
# statistics in fp16, SkipLayerNormalization unless in its strict mode: the fp16 graphs keep Sum + LayerNormalization
# for the residual norms and take EmbedLayerNormalization apart, bertc.optimize.half.)
# (Blocking LogSoftmax also trips onnxruntime.transformers.float16 when it produces a graph output:
# the output Cast it inserts gets the wrong type.)
FP16_KEEP_FP32_OPS: list = []


def _save(proto, path: Path) -> int:
    import onnx

    tmp = Path(str(path) + ".partial")
    onnx.save_model(proto, str(tmp))
    os.replace(tmp, path)
    return path.stat().st_size


def max_abs_vs_keras(session, model, inputs: dict) -> float:
    from bertc.components.common import tf

    ref = model({k: tf.constant(v.astype(np.int32)) for k, v in inputs.items()}, training=False)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, inputs)))
    return max(float(np.max(np.abs(np.asarray(ref[n], np.float32) - got[n].astype(np.float32)))) for n in names)


def _artifact(path: Path, nbytes: int, precision: str, input_dtype: str, providers: list, nodes: int,
              opset: int, **extra) -> dict:
    return {"path": path.name, "bytes": nbytes, "format": "onnx", "precision": precision,
            "input_dtype": input_dtype, "providers": providers, "nodes": nodes, "opset": opset, **extra}


@dataclass(frozen=True)
class Skip:
    """An artifact the stage did not make, and why: ``reason`` is the whole sentence (the report's
    ``fusion.skipped``), ``layers`` the layers concerned (``fusion.not_lowered``)."""

    artifact: str
    reason: str
    layers: tuple[str, ...] = ()


@dataclass
class OptimizeResult:
    """What the "optimize onnx" stage made: ``artifacts`` (id -> report entry), ``fusion`` (the report's
    fusion section when the graph was lowered: per-layer coverage, node counts, the layers on the portable
    path, the structural check) or ``skip`` (no optimized artifact, nor variants, and why).

    A lowering that fails its structural check is not a skip: ``passed`` is false and ``mismatch`` says
    what disagrees (the build then fails as a parity failure); ``artifacts`` then holds the optimized
    artifact alone (no variant is written from a wrong graph)."""

    artifacts: dict = field(default_factory=dict)
    fusion: Optional[dict] = None
    skip: Optional[Skip] = None
    dropped: dict = field(default_factory=dict)   # variant id -> why it was not written (the report's dropped_variants)

    @property
    def structural_check(self) -> Optional[dict]:
        return (self.fusion or {}).get("structural_check")

    @property
    def passed(self) -> bool:
        check = self.structural_check
        return check is None or bool(check["passed"])

    @property
    def mismatch(self) -> Optional[str]:
        if self.passed:
            return None
        return ("the optimized ONNX lowering disagrees with Keras (structural check, no variant written):\n"
                + "\n".join(self.structural_check["problems"]))

    def section(self) -> dict:
        """The report's ``fusion`` section (:func:`bertc.report.fusion_section`)."""
        from bertc.report import fusion_section

        return fusion_section(self)


def optimize_onnx(built, out: Path, opset: int = 17, input_dtype: str = "int32",
                  variants: tuple = ("onnx_int8", "onnx_fp16"), prune: Optional[bool] = None,
                  portable: Optional[dict] = None, requested: Optional[tuple] = None,
                  calibration=None, log=None) -> OptimizeResult:
    """Write the optimized artifact and the ONNX variants asked for; an :class:`OptimizeResult`.

    int8 is tuned on ``calibration`` (a :class:`bertc.calibration.CalibrationSet`; default: parity's grid)
    until the spec's task criteria hold (:mod:`bertc.optimize.int8_tuning`). ``requested``: the variants the
    user asked for explicitly (default: all of ``variants``); an int8 variant that is not among them and
    misses its criteria after tuning is not written (``OptimizeResult.dropped`` says why).

    A model the stage cannot lower gets a result with a :class:`Skip` (and no artifact); an artifact that
    cannot be written or loaded raises :class:`~bertc.errors.ExportError`."""
    from bertc.onnx_graph import graph_node_count, graph_op_counts
    from bertc.optimize.lower import NotLowerable, lower_model, missing_lowerings
    from bertc.optimize.stress import structural_check

    out = Path(out)
    if importlib.util.find_spec("onnxruntime") is None:   # the stage loads, checks and quantizes with it
        from bertc.requirements import pip_install

        return OptimizeResult(skip=Skip("onnx_optimized", "no optimized ONNX artifact: onnxruntime is not installed "
                                                          f"({pip_install('cpu')})"))
    model, spec = built.model, built.spec
    missing = missing_lowerings(built)
    if missing:
        return OptimizeResult(skip=Skip(
            "onnx_optimized", f"no optimized ONNX artifact: {len(missing)} component(s) have no ONNX lowering "
                              f"({'; '.join(missing)}); the portable model.onnx is unaffected", tuple(missing)))
    t0 = time.perf_counter()
    try:
        lowered = lower_model(built, input_dtype=input_dtype, opset=opset, prune=prune, split_weights=True)
    except NotLowerable as exc:
        return OptimizeResult(skip=Skip("onnx_optimized", f"no optimized ONNX artifact: {exc}", (str(exc),)))
    from bertc.export.onnx import check_graph, declared_weights, write_onnx
    from bertc.optimize.bias_folding import fold_residual_biases
    from bertc.optimize.projections import separate_projections

    # fp32: packed projections part by part (no Split copy), residual biases folded into the layer norms before
    # them (no Add); the int8 variants quantize (and smooth) the graph as lowered
    fast_proto, fast_weights, separated = separate_projections(lowered.proto, lowered.weights)
    fast_proto, fast_weights, folded = fold_residual_biases(fast_proto, fast_weights)
    # onnx.checker sees the graph with its weights declared as inputs: no weight data is serialized for it
    check_graph(fast_proto, declared_weights(fast_weights), "the optimized ONNX graph fails onnx.checker")
    path = out / OPTIMIZED_FILE
    nbytes, external = write_onnx(fast_proto, fast_weights, path)   # streamed, one weight at a time
    try:
        session = ort_session(path)
    except Exception as exc:  # ORT raises its own types; name the artifact and the cause
        raise ExportError(f"{path.name} does not load in ONNX Runtime (CPU, ORT_ENABLE_ALL): {exc}") from exc
    check_inputs = sample_inputs(spec, input_dtype)
    self_check = max_abs_vs_keras(session, model, check_inputs)
    del session
    structure = structural_check(built, input_dtype, opset, lowered.pruned)
    # nodes and op_counts: the file written (after the passes above; subgraph nodes included)
    artifacts = {"onnx_optimized": _artifact(
        path, nbytes, "fp32", input_dtype, ["CPUExecutionProvider", "CUDAExecutionProvider"],
        graph_node_count(fast_proto.graph), opset,
        op_counts=graph_op_counts(fast_proto.graph), pruned=lowered.pruned, coverage=lowered.coverage,
        external_data=external, seconds=round(time.perf_counter() - t0, 3))}
    fused_ops = {op: n for op, n in graph_op_counts(fast_proto.graph, per_run=True).items()
                 if op.startswith("com.microsoft.")}
    proto, weights, coverage, pruned = lowered.proto, lowered.weights, lowered.coverage, lowered.pruned
    pruned_rows = lowered.rows.describe() if lowered.rows is not None else None
    not_lowered = lowered.not_lowered
    del lowered
    dropped: dict = {}
    padding_free = None
    int8_plan = None   # how the int8 was tuned: the padding-free int8 is quantized the same way
    if structure["passed"] and ("onnx_int8" in variants or "onnx_packed_int8" in variants):
        from bertc.optimize.int8_tuning import Judge

        if calibration is None:
            from bertc.calibration import CalibrationSet
            from bertc.parity import grid_cases

            calibration = CalibrationSet(grid_cases(spec), {"grid": {"kind": "random ids"}})
        judge = Judge(spec, built.signature, model, calibration.cases, reference=calibration.reference(model),
                      out=out)
        if "onnx_int8" in variants:
            must = requested is None or "onnx_int8" in requested
            entry, tuned = quantize_int8(proto, weights, out / INT8_FILE, input_dtype, opset, judge=judge,
                                         required=must, log=log, inputs=calibration.sources, with_tuning=True)
            if entry.get("dropped"):
                dropped[("onnx_int8")] = entry["dropped"]
            else:
                artifacts["onnx_int8"] = entry
        else:
            from bertc.optimize.int8_tuning import tune_int8

            tuned = tune_int8(proto, weights, judge, log, cache=True)
        int8_plan = tuned.plan(proto, weights) if tuned is not None else None
    if structure["passed"] and any(v.startswith("onnx_packed") for v in variants):   # bertc/optimize/padding_free.py
        import sys

        from bertc.optimize.padding_free import packed_artifacts

        packed, padding_free = packed_artifacts(built, proto, weights, out, variants, input_dtype, opset, check_inputs,
                                                sys.modules[__name__], int8_plan=int8_plan,
                                                fp32=(fast_proto, fast_weights) if separated or folded else None)
        artifacts.update(packed)
    if structure["passed"]:
        if "onnx_fp16" in variants:  # the fp16 converter takes a whole model: the weights move into the proto
            from bertc.optimize.local_attention import unblocked_with

            # for CUDA: ModernBERT's local attention in its plain form (bertc/optimize/local_attention.py)
            proto, weights = unblocked_with(proto, weights)
            proto, weights = _attach(proto, list(weights or [])), None
            artifacts["onnx_fp16"] = convert_fp16(proto, out / FP16_FILE, input_dtype, opset, model, check_inputs)
    del proto, weights, fast_proto, fast_weights
    fusion = {
        "lowered": True, "not_lowered": not_lowered, "pruned": pruned, "pruned_rows": pruned_rows,
        "layers": coverage["layers"],
        "nodes": {**({"onnx": portable["nodes"]} if portable and "nodes" in portable else {}),
                  **{k: a["nodes"] for k, a in artifacts.items()}},
        "fused_ops": fused_ops,
        "self_check_max_abs": self_check,
        # packed projections (MatMul + Split) computed part by part in the fp32 artifacts (bertc/optimize/projections.py)
        **({"separate_projections": separated} if separated else {}),
        # residual biases folded into the layer norm before them in the fp32 artifacts (bertc/optimize/bias_folding.py)
        **({"folded_residual_biases": folded} if folded else {}),
        "structural_check": structure,
        **({"padding_free": padding_free} if padding_free is not None else {}),
    }
    return OptimizeResult(artifacts, fusion, dropped=dropped)


def _attach(proto, weights: list):
    """``proto`` with ``weights`` ([(name, array)]) moved in as initializers (the list is emptied)."""
    from onnx import numpy_helper

    while weights:
        name, array = weights.pop(0)
        proto.graph.initializer.append(numpy_helper.from_array(array, name))
        del array
    return proto


def quantize_int8(proto, weights: Optional[list], dst: Path, input_dtype: str, opset: int, judge=None,
                  required: bool = True, log=None, inputs: Optional[dict] = None, with_tuning: bool = False):
    """Dynamic int8 (see :mod:`bertc.optimize.quantize`) of the optimized graph (its weights in ``proto`` or
    beside it in ``weights``), written streamed and checked to load in ORT; its report entry.

    With a ``judge`` (:class:`bertc.optimize.int8_tuning.Judge`), the int8 graph is tuned until the task
    criteria hold (:func:`bertc.optimize.int8_tuning.tune_int8`) and timed against the fp32 optimized artifact
    beside ``dst``; an int8 graph that still misses them is written when ``required`` (parity then fails the
    build), and otherwise not: the entry is then ``{"dropped": why}``. ``with_tuning``: ``(entry, the
    :class:`~bertc.optimize.int8_tuning.Tuned` or None)``."""
    from bertc.export.onnx import write_onnx
    from bertc.onnx_graph import graph_node_count
    from bertc.optimize.quantize import quantize_dynamic_int8

    t0 = time.perf_counter()
    tuning = tuned = None
    try:
        if judge is None:
            result = quantize_dynamic_int8(proto, weights)
        else:
            from bertc.optimize.int8_tuning import tune_int8

            tuned = tune_int8(proto, weights, judge, log, cache=True)
            result, tuning = tuned.result, {**tuned.section, "sources": inputs or {}}
            if not tuned.passed and not required:
                entry = {"dropped": {
                    "variant": "onnx_int8", "file": dst.name, "requested": False,
                    "reason": f"default variant not requested, misses its criteria after tuning ({tuning['tuning']})",
                    "best": tuned.measurement.worst(), "problems": [p for r in tuned.measurement.results
                                                                    for p in r.problems],
                    "quantization": tuning}}
                return (entry, tuned) if with_tuning else entry
        nbytes, external = write_onnx(result.proto, result.weights or [], dst)
        ort_session(dst)
    except Exception as exc:
        dst.unlink(missing_ok=True)
        raise ExportError(f"int8 quantization of the optimized graph failed: {type(exc).__name__}: {exc}") from exc
    quantization = {"method": "dynamic", "weight_type": "QInt8", **INT8_OPTIONS, **result.weight_options(),
                    "operators": int8_operators(result), "quantized": len(result.quantized), "kept_fp32": result.kept_fp32}
    if result.blockwise:
        quantization["block_wise_int8"] = result.blockwise
    if result.rowwise:
        quantization["row_wise_int8"] = result.rowwise
    if tuning is not None:
        quantization["tuning"] = tuning
        try:
            quantization["speed"] = speed_of(dst.with_name(OPTIMIZED_FILE), dst, judge.spec)
        except Exception as exc:   # a timing that cannot run is recorded, never a failed build
            quantization["speed"] = {"error": f"{type(exc).__name__}: {exc}"}
    entry = _artifact(dst, nbytes, "int8", input_dtype, ["CPUExecutionProvider"], graph_node_count(result.proto.graph),
                      opset, external_data=external, quantization=quantization,
                      seconds=round(time.perf_counter() - t0, 3))
    return (entry, tuned) if with_tuning else entry


def int8_operators(result, attention: str = "QAttention") -> list:
    """The com.microsoft operators an :class:`~bertc.optimize.quantize.Int8Result` runs its int8 products on."""
    return (["DynamicQuantizeMatMul", attention] + (["MatMulNBits"] if result.blockwise else [])
            + (["MatMulIntegerToFloat"] if result.rowwise else []))


def speed_of(fp32: Path, int8: Path, spec) -> dict:
    from bertc.optimize.int8_tuning import speed_against_fp32

    return speed_against_fp32(fp32, int8, spec)


def convert_fp16(proto, dst: Path, input_dtype: str, opset: int, model, check_inputs: dict) -> dict:
    from bertc.optimize.half import to_fp16
    from bertc.onnx_graph import graph_node_count

    t0 = time.perf_counter()
    try:
        half, kept = to_fp16(proto, FP16_KEEP_FP32_OPS)
    except Exception as exc:
        raise ExportError(f"fp16 conversion of the optimized graph failed: {type(exc).__name__}: {exc}") from exc
    # (the residual norms stay Sum + LayerNormalization: ORT's CUDA SkipLayerNormalization sums its mean and mean
    # square in fp16 unless a session asks for its strict mode; LayerNormalization's kernel sums in fp32)
    nbytes = _save(half, dst)
    providers, cpu = fp16_on_cpu(dst, model, check_inputs)
    return _artifact(dst, nbytes, "fp16", input_dtype, providers, graph_node_count(half.graph), opset,
                     keep_fp32_ops=FP16_KEEP_FP32_OPS, kept_fp32_nodes=kept, cpu=cpu, seconds=round(time.perf_counter() - t0, 3))


def fp16_on_cpu(path: Path, model, check_inputs: dict) -> tuple[list, dict]:
    """Whether ORT's CPU provider runs the fp16 graph, and how close it is to Keras there.

    ORT's CPU provider has no fp16 MatMul / Attention kernel; its InsertCastTransformer runs such
    nodes in fp32 between inserted Casts. So the graph runs on CPU (correct, fp16-rounded weights)
    but gains no speed there: CUDA is the provider it is meant for. A graph that does not even
    type-check raises (it would fail on CUDA too)."""
    try:
        session = ort_session(path)
        max_abs = max_abs_vs_keras(session, model, check_inputs)
    except Exception as exc:
        message = str(exc)
        if "NOT_IMPLEMENTED" not in message and "Could not find an implementation" not in message:
            raise ExportError(f"{path.name} is not a valid ONNX Runtime graph: {message}") from exc
        return ["CUDAExecutionProvider"], {"runs": False, "why": message.split("\n")[0]}
    return ["CUDAExecutionProvider", "CPUExecutionProvider"], {
        "runs": True, "sample_max_abs": max_abs,
        "note": "runs through ORT's fp32 fallback for ops without fp16 CPU kernels (no speed-up on CPU)"}

