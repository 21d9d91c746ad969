"""Dynamic int8 quantization of the optimized graph, written as the operators ONNX Runtime runs.

``onnxruntime.quantization.quantize_dynamic`` (per channel, symmetric int8 weights) turns every
weight MatMul into DynamicQuantizeLinear + MatMulInteger + Cast + Mul, and the fused Attention
into DynamicQuantizeLinear + QAttention; ORT's graph optimizer then fuses the MatMul chains back
into ``DynamicQuantizeMatMul`` when the session loads. Doing that through the quantizer costs a
Python loop over every output channel (83k on BERT-base: ~7 s) and several copies of the model
(shape inference through a temporary file). bertc knows which tensors are weights, so it writes
the result directly, with the same arithmetic, vectorized:

- every ``MatMul`` whose B is a 2-D fp32 initializer -> com.microsoft ``DynamicQuantizeMatMul``
  (A quantized per call to uint8 inside the kernel; B int8 per output column);
- every com.microsoft ``Attention`` -> ``DynamicQuantizeLinear`` on its input + ``QAttention``
  (packed QKV weights int8 per column, same mask and attributes); one with an ``attention_bias`` (which
  QAttention lacks) -> ``DynamicQuantizeMatMul`` on the packed weights, ``Split``, ``MultiHeadAttention``;
- everything else stays fp32: embedding tables, layer norms, biases, ``Gemm`` (pooler, classifier,
  the masked-LM decoder that shares the word table), the weight-free ``MultiHeadAttention``.

Weights: ``scale = max|w| / 64`` per output column, zero point 0, ``q = clip(round(w / scale), -64, 64)``
rounding half to even, as ORT's ``quantize_nparray`` does with ``reduce_range`` (7-bit weights); an all-zero
column gets scale 1. The test suite checks the result against ``quantize_dynamic`` itself. Why 7 bits: on
x86 CPUs without VNNI (AVX2; AVX-512 before VNNI: most cloud CPUs of a few years ago, AMD EPYC before Zen 4)
ORT's u8 x s8 kernels sum pairs of products in int16 (``vpmaddubsw``), which saturates once 2 * 255 * |q|
exceeds 32,767. Full-range weights (|q| <= 127) then silently compute something else there than on a VNNI
CPU: a tiny DeBERTa masked LM's argmax agreement with fp32 fell to 75% on an AVX2 machine, 94% with 7-bit
weights. With |q| <= 64 no sum can saturate, so every x86 CPU computes the same integers, and an int8
artifact judged on the build machine holds where it is deployed. The int8 tuning recovers the bit lost.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np

MS_DOMAIN = "com.microsoft"
QMAX = 127          # full symmetric int8: [-127, 127]
REDUCED_QMAX = 64   # ORT's reduce_range for int8 weights: [-64, 64] (no int16 saturation without VNNI)
WEIGHT_QMAX = REDUCED_QMAX   # what bertc writes (the module docstring says why)


@dataclass
class Int8Result:
    proto: object
    quantized: list = field(default_factory=list)   # node names now running on int8 weights
    kept_fp32: list = field(default_factory=list)   # weight-bearing nodes left in fp32
    weights: Optional[list] = None                  # [(name, array)] beside ``proto`` (when given so)


def quantize_columns(weight: np.ndarray, qmax: int = WEIGHT_QMAX) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) fp32 -> (int8 (K, N), fp32 scale (N,)): symmetric in [-qmax, qmax], per output column."""
    w = np.asarray(weight, dtype=np.float32)
    absmax = np.max(np.abs(w), axis=0)
    scale = (absmax * np.float32(2.0)) / np.float32(2 * qmax)
    scale = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
    q = np.clip(np.round(w / scale), -qmax, qmax).astype(np.int8)
    return q, scale


def host_int8_kernels() -> dict:
    """What this host's ORT CPU int8 kernels can do, as far as the OS says: the machine, its widest x86
    vector extension, and whether it has VNNI (u8 x s8 products summed in int32: no saturation, whatever
    the weight range). The int8 tuning records it beside its figures: without VNNI, full-range weights would
    saturate there (bertc's 7-bit weights cannot)."""
    import platform

    machine = platform.machine().lower()
    info = {"machine": machine}
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return info
    flags: set = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        return info
    if not flags:
        return {**info, "isa": "unknown", "vnni": None}
    info["isa"] = next((name for flag, name in (("avx512f", "avx512"), ("avx2", "avx2"), ("sse4_1", "sse4.1"))
                        if flag in flags), "sse2")
    info["vnni"] = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    return info


def _is_weight_matmul(node, float_matrix) -> bool:
    return node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and float_matrix(node.input[1])


def _is_weight_attention(node, float_matrix) -> bool:
    return node.op_type == "Attention" and node.domain == MS_DOMAIN and float_matrix(node.input[1])


def float_matrix_test(proto, weights: Optional[list] = None):
    """``name -> bool``: whether ``name`` is a 2-D fp32 initializer of ``proto`` (or of ``weights`` beside it)."""
    from onnx import TensorProto

    arrays = dict(weights or [])
    inits = {t.name: t for t in proto.graph.initializer}

    def test(name: str) -> bool:
        if name in arrays:
            return arrays[name].dtype == np.float32 and arrays[name].ndim == 2
        t = inits.get(name)
        return t is not None and t.data_type == TensorProto.FLOAT and len(t.dims) == 2

    return test


def quantizable_nodes(proto, weights: Optional[list] = None) -> list[str]:
    """The MatMul / Attention nodes :func:`quantize_dynamic_int8` gives int8 weights, in graph order."""
    test = float_matrix_test(proto, weights)
    return [n.name for n in proto.graph.node if _is_weight_matmul(n, test) or _is_weight_attention(n, test)]


def quantize_dynamic_int8(proto, weights: Optional[list] = None, keep_fp32: Iterable[str] = (),
                          qmax: int = WEIGHT_QMAX) -> Int8Result:
    """A new ModelProto (``proto`` is not modified) with int8 weights in [-qmax, qmax] on MatMul and Attention.

    ``weights``: [(name, array)] initializers kept beside ``proto`` (``lower_model(split_weights=True)``);
    the result then keeps its weights beside its proto too (``Int8Result.weights``). ``keep_fp32``: names
    of MatMul / Attention nodes left in fp32 (the sensitivity pass's choice, :mod:`bertc.optimize.sensitivity`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    arrays = dict(weights or [])
    inits = {t.name: t for t in graph.initializer}

    def shape_of(name: str):
        if name in arrays:
            a = arrays[name]
            return (a.dtype == np.float32, a.ndim)
        t = inits.get(name)
        return None if t is None else (t.data_type == TensorProto.FLOAT, len(t.dims))

    def array_of(name: str) -> np.ndarray:
        return arrays[name] if name in arrays else numpy_helper.to_array(inits[name])

    readers: dict = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    float_matrix = float_matrix_test(proto, weights)

    keep_fp32 = set(keep_fp32)
    new_inits: dict = {}    # name -> array (replacements and additions)
    replaced: set = set()   # fp32 weights no node reads any more
    nodes, quantized, kept = [], [], []

    def int8_weight(name: str) -> tuple[str, str, str]:
        if f"{name}_quantized" not in new_inits:
            q, scale = quantize_columns(array_of(name), qmax)
            new_inits[f"{name}_quantized"] = q
            new_inits[f"{name}_scale"] = scale
            new_inits[f"{name}_zero_point"] = np.zeros(scale.shape, np.int8)
            if all(r.op_type in ("MatMul", "Attention") and r.name not in keep_fp32 for r in readers[name]):
                replaced.add(name)
        return f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"

    for node in graph.node:
        if node.name in keep_fp32:
            kept.append(node.name)
            nodes.append(node)
        elif _is_weight_matmul(node, float_matrix):
            wq, ws, wz = int8_weight(node.input[1])
            nodes.append(helper.make_node("DynamicQuantizeMatMul", [node.input[0], wq, ws, wz], list(node.output),
                                          name=f"{node.name}_quant", domain=MS_DOMAIN))
            quantized.append(node.name)
        elif _is_weight_attention(node, float_matrix) and len(node.input) > 5 and node.input[5]:
            # QAttention has no attention_bias: the packed projection as one DynamicQuantizeMatMul, split
            # into q, k, v for MultiHeadAttention (same packed bias, mask, attention_bias and attributes).
            wq, ws, wz = int8_weight(node.input[1])
            qkv = f"{node.name}/qkv"
            nodes.append(helper.make_node("DynamicQuantizeMatMul", [node.input[0], wq, ws, wz], [qkv],
                                          name=f"{node.name}_quant", domain=MS_DOMAIN))
            parts = [f"{node.name}/{p}" for p in ("q", "k", "v")]
            sizes = f"{node.name}/split_sizes"
            new_inits[sizes] = np.full(3, array_of(node.input[1]).shape[1] // 3, np.int64)
            nodes.append(helper.make_node("Split", [qkv, sizes], parts, name=f"{node.name}/split", axis=-1))
            mha = helper.make_node("MultiHeadAttention", parts + [node.input[2], node.input[3], node.input[5]],
                                   list(node.output[:1]), name=f"{node.name}/mha", domain=MS_DOMAIN)
            mha.attribute.extend(a for a in node.attribute if a.name in ("num_heads", "mask_filter_value", "scale"))
            nodes.append(mha)
            quantized.append(node.name)
        elif _is_weight_attention(node, float_matrix):
            x = node.input[0]
            xq, xs, xz = f"{node.name}/input_quantized", f"{node.name}/input_scale", f"{node.name}/input_zero_point"
            nodes.append(helper.make_node("DynamicQuantizeLinear", [x], [xq, xs, xz], name=f"{node.name}/quantize_input"))
            wq, ws, wz = int8_weight(node.input[1])
            rest = list(node.input[2:]) + [""] * (4 - len(node.input[2:]))   # bias, mask, past, ...
            inputs = [xq, wq, rest[0], xs, ws, rest[1], xz, wz]
            if rest[2]:
                inputs.append(rest[2])
            q = helper.make_node("QAttention", inputs, list(node.output), name=f"{node.name}_quant", domain=MS_DOMAIN)
            q.attribute.extend(node.attribute)
            nodes.append(q)
            quantized.append(node.name)
        else:
            if any((shape_of(n) or (False, 0))[1] >= 2 for n in node.input):
                kept.append(node.name)
            nodes.append(node)

    out = onnx.ModelProto()  # field by field: a CopyFrom would copy every fp32 weight once more
    out.ir_version, out.producer_name, out.producer_version = proto.ir_version, proto.producer_name, \
        proto.producer_version
    out.doc_string = proto.doc_string
    out.metadata_props.extend(proto.metadata_props)
    out.opset_import.extend(proto.opset_import)
    if not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    g = out.graph
    g.name, g.doc_string = graph.name, graph.doc_string
    g.input.extend(graph.input)
    g.value_info.extend(graph.value_info)
    g.output.extend(graph.output)
    g.node.extend(nodes)
    for t in graph.initializer:
        if t.name not in replaced:
            g.initializer.append(t)
    if weights is not None:
        kept_weights = [(name, a) for name, a in weights if name not in replaced]
        return Int8Result(out, quantized, sorted(kept), kept_weights + sorted(new_inits.items()))
    g.initializer.extend(numpy_helper.from_array(new_inits[name], name) for name in sorted(new_inits))
    return Int8Result(out, quantized, sorted(kept))
