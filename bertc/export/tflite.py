"""Keras -> TFLite (builtin ops only) through a SavedModel.

Converting from concrete functions can leave Keras 3 variables unfrozen (NaN
outputs); going through a SavedModel is reliable. The SavedModel's serving
signature takes the model's inputs by name, so the TFLite signature
``serving_default`` has the model's input and output names. Batch and sequence
length stay dynamic (the interpreter resizes them at run time).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

from bertc.components.common import tf
from bertc.errors import ExportError

SIGNATURE = "serving_default"


def save_serving_model(model, sig, directory: Path):
    inputs = sig.inputs
    outputs = sig.output_names
    signature = [{i.name: tf.TensorSpec((None, i.length), tf.int32, name=i.name) for i in inputs}]

    # Weights go in as constants (stateless_call), so the SavedModel holds no variables: the
    # converter otherwise keeps Keras 3 variables as mutable READ_VARIABLE ops (NaN / failed invokes).
    trainable = [v.numpy() for v in model.trainable_variables]
    non_trainable = [v.numpy() for v in model.non_trainable_variables]
    module = tf.Module()

    @tf.function(input_signature=signature)
    def serve(features):
        out, _ = model.stateless_call([tf.constant(w) for w in trainable], [tf.constant(w) for w in non_trainable],
                                      features, training=False)
        return {name: out[name] for name in outputs}

    module.serve = serve
    tf.saved_model.save(module, str(directory), signatures={SIGNATURE: serve})
    return serve.get_concrete_function()


_OP_RE = re.compile(r"'tf\.([A-Za-z0-9_]+)' op is neither a custom op nor a flex op")


def graph_ops(concrete_function) -> list[tuple[str, str]]:
    """(op type, op name) of every op in a traced function, nested function bodies included."""
    ops = [(op.type, op.name) for op in concrete_function.graph.get_operations()]
    for fdef in concrete_function.graph.as_graph_def().library.function:
        ops += [(node.op, f"{fdef.signature.name}/{node.name}") for node in fdef.node_def]
    return ops


def explain_converter_error(message: str, ops: list[tuple[str, str]] = ()) -> str:
    """Name each op the converter could not lower to a builtin, and the layers it came from."""
    missing = list(dict.fromkeys(_OP_RE.findall(message)))
    if not missing:
        tail = message.strip().splitlines()[-3:]
        return "TFLite conversion failed: " + " | ".join(tail)
    parts = []
    for op_type in missing:
        layers = sorted({name.rsplit("/", 1)[0] for t, name in ops if t == op_type and "/" in name})
        where = ", ".join(f"'{layer}'" for layer in layers[:5]) if layers else "an unnamed scope"
        parts.append(f"op tf.{op_type} (from layer {where}) has no builtin TFLite kernel")
    return ("TFLite export needs ops outside the builtin set: " + "; ".join(parts)
            + ". Rewrite them with builtin ops (e.g. exact GELU through erf, expand_dims instead of [:, None]).")


def export_tflite(model, sig, path: Path, keep_saved_model: Optional[Path] = None) -> dict:
    t0 = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bertc-savedmodel-"))
    try:
        saved = workdir / "saved_model"
        serving = save_serving_model(model, sig, saved)
        t_saved = time.perf_counter() - t0
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            flatbuffer = converter.convert()
        except Exception as exc:
            raise ExportError(explain_converter_error(str(exc), graph_ops(serving))) from None
        tmp = Path(str(path) + ".partial")
        tmp.write_bytes(flatbuffer)
        os.replace(tmp, path)
        if keep_saved_model is not None:
            shutil.move(str(saved), str(keep_saved_model))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"path": path.name, "bytes": path.stat().st_size, "signature": SIGNATURE,
            "saved_model_seconds": round(t_saved, 3), "total_seconds": round(time.perf_counter() - t0, 3),
            "saved_model": keep_saved_model.name if keep_saved_model is not None else None}
