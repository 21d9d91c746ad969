"""Accuracy-aware TFLite int8 (dynamic range): the sensitivity pass on ``model.int8.tflite``.

The converter's dynamic-range int8 stores the weights of FULLY_CONNECTED (and the like) as int8, per output
channel; LiteRT's hybrid kernels quantize each activation row at run time. Where that misses the spec's
task criteria, the most sensitive weights go back to fp32 (their op then runs its float kernel), the same
way and with the same ranking, budget and target as the ONNX int8 (:mod:`bertc.optimize.sensitivity`,
:class:`bertc.optimize.int8_tuning.Judge`: Keras on the calibration inputs):

1. the converted int8 file is measured; when it meets the target it stays byte for byte as converted;
2. each candidate weight is measured alone in fp32, the candidates ranked, and the most sensitive kept in
   fp32 one by one until the target holds or a quarter of them are;
3. the chosen mix replaces ``model.int8.tflite`` (written atomically), and its speed against ``model.tflite``
   is measured (LiteRT, batch 1 x sequence 128, interleaved rounds).

A candidate is an int8 weight tensor whose readers all have a float kernel (FULLY_CONNECTED, BATCH_MATMUL,
CONV_2D, DEPTHWISE_CONV_2D, GATHER, EMBEDDING_LOOKUP) and whose same-named tensor in ``model.tflite`` holds its
fp32 values (both files come from one conversion of the same graph, bertc.export.tflite). Going back to fp32
copies that tensor's buffer over: the weights need no second mapping from Keras.

Smoothing (the ONNX int8's second step) is not applied here: TFLite's graph is the converter's, and folding
scales into a post-norm BERT's layer norm would change the residual that reads it, which the ONNX graph
avoids with a branch ``Mul`` (bertc.optimize.smoothing) that a converted TFLite graph cannot get.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
import numpy as np

FLOAT_KERNELS = {"FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D", "DEPTHWISE_CONV_2D", "GATHER", "EMBEDDING_LOOKUP"}
_FLOAT32, _INT8 = 0, 9   # TFLite TensorType codes (schema.fbs)


def _name(tensor) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


def _has_data(model, tensor) -> bool:
    data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
    return data is not None and len(data) > 0


def candidates(int8_model, fp32_model) -> list[str]:
    """Names of the int8 weights that can go back to fp32 (see the module docstring), in tensor order."""
    from tensorflow.lite.tools import flatbuffer_utils

    graph, fp32 = int8_model.subgraphs[0], {_name(t): t for t in fp32_model.subgraphs[0].tensors}
    readers: dict = {}
    for op in graph.operators:
        kind = flatbuffer_utils.opcode_to_name(int8_model, op.opcodeIndex)
        for i in op.inputs if op.inputs is not None else []:
            readers.setdefault(int(i), set()).add(kind)
    out = []
    for index, t in enumerate(graph.tensors):
        if t.type != _INT8 or not _has_data(int8_model, t) or not readers.get(index):
            continue
        twin = fp32.get(_name(t))
        if (readers[index] <= FLOAT_KERNELS and twin is not None and twin.type == _FLOAT32
                and _has_data(fp32_model, twin) and list(twin.shape) == list(t.shape)):
            out.append(_name(t))
    return out


def with_fp32(int8_model, fp32_model, names) -> bytes:
    """The int8 model (as bytes) with the weights ``names`` back in fp32 (``int8_model`` is not changed)."""
    import copy

    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    names = set(names)
    model = copy.copy(int8_model)
    model.buffers = list(int8_model.buffers)
    graph = copy.copy(int8_model.subgraphs[0])
    graph.tensors = [copy.copy(t) for t in int8_model.subgraphs[0].tensors]
    model.subgraphs = [graph] + list(int8_model.subgraphs[1:])
    fp32 = {_name(t): t for t in fp32_model.subgraphs[0].tensors}
    for t in graph.tensors:
        if _name(t) in names:
            buffer = schema.BufferT()
            buffer.data = fp32_model.buffers[fp32[_name(t)].buffer].data
            model.buffers.append(buffer)
            t.buffer, t.type, t.quantization = len(model.buffers) - 1, _FLOAT32, None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


# tensorflow/lite/tools/optimize: the dynamic-range converter leaves a weight of fewer values than this in fp32
CONVERTER_MIN_ELEMENTS = 1024


def int8_weight_count(content: bytes) -> int:
    """How many constant int8 tensors (the weights the converter quantized) a TFLite file holds."""
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_content=content).get_tensor_details()
    return sum(1 for d in details if d["dtype"] == np.int8 and "quantization_parameters" in d
               and len(d["quantization_parameters"].get("scales", ())) > 0)


def _runner(content: bytes):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=content).get_signature_runner("serving_default")

    def run(inputs):
        return {k: np.array(v) for k, v in runner(**inputs).items()}

    return run


def tune_tflite_int8(int8_path: Path, fp32_path: Path, judge, log=None) -> dict:
    """Tune ``int8_path`` in place until the criteria of ``judge`` hold (see the module docstring); the
    artifact's ``quantization.tuning`` section."""
    from tensorflow.lite.tools import flatbuffer_utils

    from bertc.backends import Backend
    from bertc.optimize.sensitivity import select_fp32

    log = log or (lambda text: None)
    t0 = time.perf_counter()
    backend = Backend("tflite_int8", "tflite_int8", Path("(tuning)"), "tflite", "int8")
    content = Path(int8_path).read_bytes()
    plain = judge.measure_runner(_runner(content), backend, "plain dynamic-range int8")
    steps = [_step("plain dynamic-range int8", plain)]
    log(f"tflite int8: {plain.worst()}")
    keep, ranking, best = [], [], plain
    names: list = []
    if not plain.meets_target:
        int8_model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
        fp32_model = flatbuffer_utils.read_model_from_bytearray(bytearray(Path(fp32_path).read_bytes()))
        names = candidates(int8_model, fp32_model)

        def measure(keep_fp32):
            return judge.measure_runner(_runner(with_fp32(int8_model, fp32_model, keep_fp32)), backend,
                                        f"fp32: {', '.join(keep_fp32)}")

        selection = select_fp32(names, measure, plain)
        ranking = selection.ranking
        for kept, m in selection.steps:
            steps.append(_step("sensitivity", m, keep_fp32=list(kept)))
            log(f"tflite fp32 {kept}: {m.worst()}")
        keep, best = selection.best
        if keep:
            tmp = Path(f"{int8_path}.tmp-{os.getpid()}")
            tmp.write_bytes(with_fp32(int8_model, fp32_model, keep))
            os.replace(tmp, int8_path)
    int8_weights = int8_weight_count(Path(int8_path).read_bytes())
    order = {s.node: (i + 1, s) for i, s in enumerate(ranking)}
    weights = []
    for name in names:
        entry = {"tensor": name, "precision": "fp32" if name in keep else "int8"}
        if name in order:
            i, s = order[name]
            entry["sensitivity_score"] = round(s.score, 4)
            entry["why"] = (f"{'kept fp32' if name in keep else 'int8: less sensitive'} (#{i} of {len(names)}; "
                            f"alone in fp32 its score is {s.score:.3f}, all-int8 {s.score + s.gain:.3f}; "
                            f"<= 0 meets the target)")
        weights.append(entry)
    return {
        "tuning": "plain" if len(steps) == 1 else "sensitivity",
        "criteria": judge.criteria, "target": {k: round(v, 6) for k, v in judge.target.items()},
        "inputs": [c.label for c in judge.cases],
        "figures": best.figures(), "meets_target": best.meets_target, "passes_criteria": best.passes,
        "smoothing": {"applied": False, "why": "not applied to TFLite (bertc.optimize.tflite_int8's docstring)"},
        "weights": weights, "kept_fp32_by_sensitivity": list(keep), "int8_weights": int8_weights,
        **({"no_int8_weight": f"the converter quantizes no weight of fewer than {CONVERTER_MIN_ELEMENTS} values, and "
                              f"this model has none larger: the file computes in fp32"} if not int8_weights else {}),
        "steps": steps, "graphs_measured": len(steps) + len(ranking),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _step(name: str, m, **extra) -> dict:
    return {"step": name, "meets_target": m.meets_target, "passes_criteria": m.passes, "score": round(m.score, 4),
            "figures": m.figures(), **extra}


def speed_against_fp32(fp32_path: Path, int8_path: Path, spec, batch: int = 1, seq: int = 128,
                       rounds: int = 3, calls: int = 3) -> dict:
    """Latency of the TFLite int8 file against ``model.tflite`` (LiteRT, its default threads, interleaved
    rounds; the ratio is the median of per-round ratios)."""
    from bertc.optimize.int8_tuning import latency_pair

    def runner_of(name, path, inputs):
        run = _runner(Path(path).read_bytes())
        return lambda: run(inputs)

    out = latency_pair(spec, runner_of, fp32_path, int8_path, batch, seq, rounds, calls, warmup=1)
    return {**out, "method": "LiteRT, interleaved rounds; ratio = median per-round p50 ratio (int8 / fp32)"}
