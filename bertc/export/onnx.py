"""Keras -> ONNX through tf2onnx, without feeding the weights through the converter.

tf2onnx freezes every variable into a graph constant and copies it through
protobuf several times; on BERT-base that alone took minutes and ~13 GB. Here
the model is traced with ``stateless_call`` so that its weights are *inputs* of
the traced function; tf2onnx converts a weight-free graph, and the weights are
then written straight into the ONNX file as initializers (one copy each).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from bertc.components.common import tf
from bertc.errors import ExportError

WEIGHT_PREFIX = "bertc_weight_"


def _quiet_tf2onnx():
    for name in ("tf2onnx", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)


def export_onnx(model, sig, path: Path, opset: int = 17, input_dtype: str = "int32") -> dict:
    import onnx
    import tf2onnx
    from onnx import numpy_helper

    _quiet_tf2onnx()
    t0 = time.perf_counter()
    inputs = list(sig.inputs)
    outputs = sig.output_names
    trainable, non_trainable = list(model.trainable_variables), list(model.non_trainable_variables)
    variables = trainable + non_trainable
    dtype = tf.int64 if input_dtype == "int64" else tf.int32
    input_sig = [tf.TensorSpec((None, i.length), dtype, name=i.name) for i in inputs]
    weight_sig = [tf.TensorSpec(v.shape, v.dtype, name=f"{WEIGHT_PREFIX}{k}") for k, v in enumerate(variables)]
    n_in, n_tr = len(inputs), len(trainable)

    def serve(*args):
        feeds = {i.name: tf.cast(a, tf.int32) for i, a in zip(inputs, args[:n_in])}
        weights = list(args[n_in:])
        out, _ = model.stateless_call(weights[:n_tr], weights[n_tr:], feeds, training=False)
        return {name: tf.identity(out[name], name=name) for name in outputs}

    try:
        proto, _ = tf2onnx.convert.from_function(
            tf.function(serve), input_signature=input_sig + weight_sig, opset=opset)
    except Exception as exc:  # tf2onnx raises many types; report which op/why
        raise ExportError(f"ONNX export failed in tf2onnx: {type(exc).__name__}: {exc}") from exc
    t_convert = time.perf_counter() - t0

    graph = proto.graph
    weight_inputs = {}
    for inp in graph.input:
        base = inp.name.split(":")[0]
        if base.startswith(WEIGHT_PREFIX):
            weight_inputs[inp.name] = variables[int(base[len(WEIGHT_PREFIX):])]
    kept = [i for i in graph.input if i.name not in weight_inputs]
    del graph.input[:]
    graph.input.extend(kept)
    used = {n for node in graph.node for n in node.input}
    renames = {}
    for name, var in weight_inputs.items():
        if name not in used:
            continue  # e.g. the dropout layers' seed state: not part of the inference graph
        renames[name] = var.path  # semantic names: later stages find weights by them
        graph.initializer.append(numpy_helper.from_array(np.asarray(var.numpy()), name=var.path))
    _rename_values(graph, renames)
    _rename_io(graph, [i.name for i in inputs], outputs)
    _check_io(graph, [i.name for i in inputs], outputs)
    onnx.checker.check_model(proto)
    tmp = Path(str(path) + ".partial")
    onnx.save_model(proto, str(tmp))
    os.replace(tmp, path)
    return {"path": path.name, "format": "onnx", "precision": "fp32",
            "providers": ["CPUExecutionProvider", "CUDAExecutionProvider"], "opset": opset, "input_dtype": input_dtype, "bytes": path.stat().st_size,
            "nodes": len(graph.node), "initializers": len(graph.initializer),
            "convert_seconds": round(t_convert, 3), "total_seconds": round(time.perf_counter() - t0, 3)}


def _rename_values(graph, renames: dict) -> None:
    if not renames:
        return
    for node in graph.node:
        for k, n in enumerate(node.input):
            if n in renames:
                node.input[k] = renames[n]
        for k, n in enumerate(node.output):
            if n in renames:
                node.output[k] = renames[n]
    for value in list(graph.input) + list(graph.output):
        value.name = renames.get(value.name, value.name)


def _rename_io(graph, input_names, output_names):
    """Strip tf2onnx's ':0' suffixes so the file's names are exactly the model's, and name the
    dynamic axes 'batch' and 'sequence'."""
    wanted = set(input_names) | set(output_names)
    _rename_values(graph, {v.name: v.name.split(":")[0] for v in list(graph.input) + list(graph.output)
                           if v.name.split(":")[0] in wanted})
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if not dim.HasField("dim_value") and axis < 2:
                dim.dim_param = ("batch", "sequence")[axis]


def _check_io(graph, input_names, output_names):
    got_in, got_out = [i.name for i in graph.input], [o.name for o in graph.output]
    if sorted(got_in) != sorted(input_names) or sorted(got_out) != sorted(output_names):
        raise ExportError(f"ONNX graph has inputs {got_in} / outputs {got_out}; "
                          f"expected {input_names} / {output_names}")
