"""Write a model's real weights into a TFLite flatbuffer converted from placeholder weights.

The TFLite converter copies every constant of the graph several times (GraphDef,
MLIR attributes, flatbuffer, Python bytes): on BERT-base that took a minute and
~10 GB. bertc therefore converts a graph whose weights are *splat* placeholders
(one distinct value per weight tensor, stored as one number) and afterwards writes
the real weights into the flatbuffer's buffers, in place, in one pass.

The mapping from a placeholder to the buffers that hold it is proven, not assumed:

- a float buffer holding a splat of weight k's placeholder value is weight k, in the
  orientation the consuming TFLite op implies (``FULLY_CONNECTED`` weights are
  ``(out, in)``: the transpose of a Keras ``(in, out)`` kernel used as ``x @ K``,
  the tensor itself when the graph computed ``x @ K^T``), with every byte count and
  shape checked;
- every weight that the inference graph uses is written at least once;
- every other float buffer holds only values that are constants of the traced graph
  itself (a buffer the converter derived from a placeholder by arithmetic, e.g. a
  bias folded with a scale, would hold a value that is neither; it fails the export);
- reduced-precision variants are handled the same way: fp16 buffers take the weight
  in float16; int8 (dynamic-range) buffers are identified by their quantization
  scale (``placeholder / 127`` per channel) and receive the weight quantized
  symmetrically along the tensor's quantized dimension, with the real scales written
  into the tensor's quantization parameters.

Anything the rules do not account for raises :class:`bertc.errors.ExportError`.
Parity (``bertc.parity``) then proves the result numerically.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from bertc.errors import ExportError

WEIGHT_PREFIX = "bertc_weight_"
_BANDS = (1.0, 16.0, 256.0, 4096.0, -1.0, -16.0, -256.0, -4096.0)  # exact in float16 and float32
_STEPS = 1023  # 1 + j/1024, j = 1..1023: exact with float16's 10 mantissa bits

# TFLite TensorType codes (schema.fbs)
_FLOAT32, _FLOAT16, _INT8 = 0, 1, 9


def placeholder_values(n: int) -> list[float]:
    """``n`` distinct placeholder values, exactly representable in float16, none a simple multiple
    (2**k) of another inside the same band, spread over bands far apart so that a scale folded
    into a placeholder (1/sqrt(d), 0.5, ...) does not land on another weight's value."""
    if n > _STEPS * len(_BANDS):
        raise ExportError(f"TFLite export supports at most {_STEPS * len(_BANDS)} weight tensors, the model has {n}")
    return [_BANDS[k // _STEPS] * (1.0 + (k % _STEPS + 1) / 1024.0) for k in range(n)]


@dataclass
class WeightUse:
    """How the traced TensorFlow graph consumes one weight: whether a matmul reads it as its
    right operand untransposed (``x @ K``) or transposed (``x @ K^T``)."""

    index: int
    path: str
    matmul_transposed: set = field(default_factory=set)  # {False, True}: transpose_b of the matmuls reading it
    used: bool = True


def _fan_in(outputs) -> set:
    """Names of the ops the outputs depend on."""
    seen, stack = set(), [t.op for t in outputs]
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return seen


def graph_weight_uses(concrete_function, variables) -> tuple[dict[int, WeightUse], set]:
    """Weights by placeholder index, how the graph reads each (and whether the outputs depend on it),
    and the float values of the graph's own (non-weight) constants."""
    from tensorflow.python.framework import tensor_util

    graph = concrete_function.graph
    live = _fan_in(concrete_function.outputs)
    uses, own_values = {}, set()
    for op in graph.get_operations():
        if op.type != "Const":
            continue
        name = op.name.rsplit("/", 1)[-1]
        if name.startswith(WEIGHT_PREFIX):
            k = int(name[len(WEIGHT_PREFIX):])
            use = WeightUse(k, variables[k].path)
            _walk_consumers(op.outputs[0], use)
            use.used = op.name in live
            uses[k] = use
            continue
        value = tensor_util.MakeNdarray(op.get_attr("value"))
        if value.dtype.kind == "f" and value.size <= 1 << 16:
            own_values.update(np.unique(value.astype(np.float32)).tolist())
    return uses, own_values


_PASS_THROUGH = {"Identity", "Reshape", "ExpandDims", "Squeeze", "Cast"}


def _walk_consumers(tensor, use: WeightUse, depth: int = 0) -> None:
    for consumer in tensor.consumers():
        if consumer.type in _PASS_THROUGH and depth < 8:
            _walk_consumers(consumer.outputs[0], use, depth + 1)
        elif consumer.type in ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "BatchMatMul"):
            if consumer.inputs[1] is not tensor and not _reaches(consumer.inputs[1], tensor):
                raise ExportError(f"TFLite export: weight {use.path!r} is the left operand of {consumer.name}; "
                                  "bertc only maps weights used as the right operand of a matmul")
            flag = "transpose_b" if consumer.type == "MatMul" else "adj_y"
            use.matmul_transposed.add(bool(consumer.get_attr(flag)))


def _reaches(tensor, source, depth: int = 0) -> bool:
    if tensor is source:
        return True
    if depth > 8 or tensor.op.type not in _PASS_THROUGH:
        return False
    return _reaches(tensor.op.inputs[0], source, depth + 1)


@dataclass
class _Slot:
    subgraph: int
    index: int
    buffer: int
    tensor: str
    shape: tuple
    dtype: int
    data: np.ndarray  # uint8 view into the flatbuffer's bytes
    scale: Optional[np.ndarray] = None  # float32 view of the quantization scales (int8)
    quantized_dimension: int = 0
    consumers: list = field(default_factory=list)  # (op name, input position)


def _op_names():
    from tensorflow.lite.python import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _slots(fb: bytearray) -> tuple[list[_Slot], object]:
    """Every tensor of every subgraph that has constant data, with writable views into ``fb``."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(fb, 0)
    names = _op_names()
    codes = []
    for i in range(model.OperatorCodesLength()):
        c = model.OperatorCodes(i)
        codes.append(names.get(max(c.BuiltinCode(), c.DeprecatedBuiltinCode()), "CUSTOM"))
    slots, activations = [], []
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        consumers: dict[int, list] = {}
        dequantized: dict[int, int] = {}  # output of a DEQUANTIZE -> its (fp16 / int8 constant) input
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            name = codes[op.OpcodeIndex()]
            inputs = op.InputsAsNumpy() if op.InputsLength() else []
            for pos, t in enumerate(inputs):
                consumers.setdefault(int(t), []).append((name, pos))
            if name == "DEQUANTIZE" and op.OutputsLength():
                dequantized[int(op.Outputs(0))] = int(inputs[0])
        for out, src in dequantized.items():  # a weight read through DEQUANTIZE is read by the ops after it
            consumers.setdefault(src, []).extend(consumers.get(out, []))
        for t in range(sg.TensorsLength()):
            tensor = sg.Tensors(t)
            b = tensor.Buffer()
            q = tensor.Quantization()
            scale = q.ScaleAsNumpy() if q is not None and q.ScaleLength() else None
            data = _buffer_view(fb, model.Buffers(b)) if b != 0 else None
            if data is None or data.size == 0:
                if isinstance(scale, np.ndarray):  # an activation carrying a weight's scale (e.g. GATHER's output)
                    activations.append((tensor.Name().decode(), scale))
                continue
            slots.append(_Slot(s, t, b, tensor.Name().decode(), tuple(int(d) for d in tensor.ShapeAsNumpy())
                               if tensor.ShapeLength() else (), tensor.Type(), data,
                               scale if isinstance(scale, np.ndarray) else None,
                               q.QuantizedDimension() if q is not None else 0, consumers.get(t, [])))
    return slots, activations


def _buffer_view(fb: bytearray, buf) -> Optional[np.ndarray]:
    offset = buf.Offset()
    if offset > 1:  # models over 2 GB keep buffer data after the flatbuffer
        return np.frombuffer(fb, np.uint8, int(buf.Size()), int(offset))
    if buf.DataLength() == 0:
        return None
    return buf.DataAsNumpy()


def _as(slot: _Slot, dtype) -> np.ndarray:
    return slot.data.view(dtype)


def _identify(slot: _Slot, by_value: dict) -> Optional[int]:
    """The weight a constant tensor holds a placeholder of, or None."""
    if slot.dtype == _FLOAT32:
        values = _as(slot, np.float32)
    elif slot.dtype == _FLOAT16:
        values = _as(slot, np.float16).astype(np.float32)
    elif slot.dtype == _INT8 and slot.scale is not None:
        q = _as(slot, np.int8)
        if q.size == 0 or not np.all(q == q.flat[0]) or abs(int(q.flat[0])) != 127:
            return None
        scales = np.unique(slot.scale)
        if scales.size != 1:
            return None
        k = _nearest(by_value, float(scales[0]) * 127.0 * np.sign(q.flat[0]), rel=1e-5)
        return k
    else:
        return None
    first = values.flat[0]
    if not np.all(values == first):
        return None
    return by_value.get(float(first))


def _nearest(by_value: dict, value: float, rel: float) -> Optional[int]:
    for v, k in by_value.items():
        if abs(v - value) <= rel * abs(v):
            return k
    return None


def _oriented(weight: np.ndarray, slot: _Slot, use: WeightUse) -> np.ndarray:
    """The weight laid out as ``slot`` holds it (the shape check proves it)."""
    n = int(np.prod(slot.shape)) if slot.shape else 1
    if n != weight.size:
        raise ExportError(f"TFLite export: tensor {slot.tensor!r} holds {n} values, weight {use.path!r} has "
                          f"{weight.size} (shape {weight.shape}); the converter changed it in a way bertc cannot map")
    fc_weight = any(op == "FULLY_CONNECTED" and pos == 1 for op, pos in slot.consumers)
    if fc_weight:
        if len(use.matmul_transposed) != 1:
            raise ExportError(f"TFLite export: weight {use.path!r} feeds FULLY_CONNECTED but the graph reads it "
                              f"through {'no matmul' if not use.matmul_transposed else 'both x@K and x@K^T'}")
        transposed_in_graph = next(iter(use.matmul_transposed))
        matrix = weight.reshape(-1, weight.shape[-1]) if weight.ndim != 2 else weight
        out = matrix if transposed_in_graph else matrix.T  # FULLY_CONNECTED computes x @ W^T, W is (out, in)
        if tuple(out.shape) != tuple(slot.shape):
            raise ExportError(f"TFLite export: FULLY_CONNECTED weights {slot.tensor!r} have shape {slot.shape}, "
                              f"weight {use.path!r} laid out (out, in) is {out.shape}")
        return out
    squeezed = tuple(d for d in slot.shape if d != 1)
    if squeezed != tuple(d for d in weight.shape if d != 1):
        raise ExportError(f"TFLite export: tensor {slot.tensor!r} (shape {slot.shape}) holds weight {use.path!r} "
                          f"of shape {weight.shape} in a layout bertc cannot map")
    return weight


def _quantize(w: np.ndarray, slot: _Slot) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantization along the tensor's quantized dimension (TFLite's dynamic-range scheme)."""
    channels = slot.scale.size
    if channels == 1:
        amax = np.array([np.max(np.abs(w))], np.float32)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.round(w / scale[0]), -127, 127).astype(np.int8)
        return q, scale
    axis = slot.quantized_dimension
    if w.shape[axis] != channels:
        raise ExportError(f"TFLite export: tensor {slot.tensor!r} has {channels} quantization scales but "
                          f"{w.shape[axis]} channels on axis {axis}")
    other = tuple(a for a in range(w.ndim) if a != axis)
    amax = np.max(np.abs(w), axis=other).astype(np.float32)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = channels
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


@dataclass
class FillReport:
    weights: int
    buffers_written: int
    bytes_written: int
    graph_constants: int

    def to_json(self) -> dict:
        return {"weights_written": self.weights, "buffers_written": self.buffers_written,
                "weight_bytes_written": self.bytes_written, "graph_constant_buffers": self.graph_constants}


def fill_weights(fb: bytearray, weight: Callable[[int], np.ndarray], values: dict[int, float],
                 uses: dict[int, WeightUse], own_values: set) -> tuple[bytearray, FillReport]:
    """Write the real weights (``weight(k)``: the array of placeholder ``k``, fetched one at a time so no
    second copy of all weights is held) over their placeholders in ``fb`` (in place unless the converter
    made two weights share one buffer); the flatbuffer and what was written."""
    by_value = {float(np.float32(v)): k for k, v in values.items()}
    own_values = set(own_values) | {0.0}  # the converter's own zeros (e.g. an FC without bias)
    own_fp16 = set()
    for v in own_values:   # the graph's own constants as fp16 buffers hold them
        own_fp16.update(_fp16_forms(v))
    slots, identified = _identify_all(fb, by_value)
    holders: dict[int, set] = {}
    for slot, k in zip(slots, identified):
        if k is not None:
            holders.setdefault(slot.buffer, set()).add(_content_key(slot, k))
    shared = {b for b, ks in holders.items() if len(ks) > 1}
    if shared:  # e.g. int8 placeholders all quantize to 127 and the converter deduplicates equal buffers
        fb = _split_buffers(fb, slots, identified, shared)
        slots, identified = _identify_all(fb, by_value)
    written: dict[int, int] = {}  # buffer -> weight index
    seen_weights: set[int] = set()
    n_bytes, n_own = 0, 0
    stray, rescaled = [], []
    for slot, k in zip(slots, identified):
        if k is None:
            if slot.dtype in (_FLOAT32, _FLOAT16):
                vals = np.unique(_as(slot, np.float32 if slot.dtype == _FLOAT32 else np.float16).astype(np.float32))
                if not set(vals.tolist()) <= (own_values if slot.dtype == _FLOAT32 else own_fp16):
                    stray.append(f"{slot.tensor!r} (shape {slot.shape}, values {vals[:3].tolist()}...)")
                    continue
            n_own += 1
            continue
        if slot.buffer in written:
            if written[slot.buffer] != _content_key(slot, k):
                raise ExportError(f"TFLite export: buffer {slot.buffer} is shared by tensors that need different "
                                  f"contents ({slot.tensor!r})")
            continue
        use = uses.get(k)
        if use is None:
            raise ExportError(f"TFLite export: tensor {slot.tensor!r} holds the placeholder of weight {k}, "
                              "which the traced graph does not contain")
        w = _oriented(weight(k), slot, use)
        if slot.dtype == _FLOAT32:
            src = np.ascontiguousarray(w, dtype=np.float32)
        elif slot.dtype == _FLOAT16:
            src = np.ascontiguousarray(w, dtype=np.float16)
        else:
            src, scale = _quantize(np.asarray(w, np.float32), slot)
            rescaled.append((slot.scale.copy(), scale))
            slot.scale[:] = scale
        raw = src.reshape(-1).view(np.uint8)
        if raw.size != slot.data.size:
            raise ExportError(f"TFLite export: tensor {slot.tensor!r} has {slot.data.size} bytes, "
                              f"weight {use.path!r} gives {raw.size}")
        slot.data[:] = raw
        written[slot.buffer] = _content_key(slot, k)
        seen_weights.add(k)
        n_bytes += raw.size
    if rescaled:
        _rescale_activations(fb, rescaled)
    if stray:
        raise ExportError("TFLite export: the converter derived constants from placeholder weights that bertc "
                          "cannot map back (folded arithmetic): " + "; ".join(stray[:5]))
    missing = [uses[k].path for k in uses if uses[k].used and k in values and k not in seen_weights]
    if missing:
        raise ExportError("TFLite export: weights used by the graph but absent from the TFLite model "
                          f"(folded by the converter?): {', '.join(missing[:5])}")
    return fb, FillReport(len(seen_weights), len(written), n_bytes, n_own)


_FP16_MAX = float(np.finfo(np.float16).max)   # 65504


def _fp16_forms(value: float) -> set:
    """The values an fp16 buffer may hold for the graph constant ``value``: rounded to fp16, and for a constant
    beyond fp16's range (max pooling's -1e9 mask fill, weightedmean's 1e9) both the overflow to inf and the
    largest finite fp16 (the converter saturates: -1e9 becomes -65504). A constant of the graph itself does
    not depend on any weight, so whichever form the converter wrote, no placeholder is hidden in it."""
    with np.errstate(over="ignore"):
        forms = {float(np.float32(np.float16(value)))}
    if np.isfinite(value) and abs(value) > _FP16_MAX:
        forms.add(float(np.copysign(_FP16_MAX, value)))
    return forms


def _content_key(slot: _Slot, k: int) -> tuple:
    """What a buffer must hold: a weight, in one dtype, quantized one way (per tensor or per channel on an
    axis); a tied embedding read by GATHER (per tensor) and by FULLY_CONNECTED (per channel) needs two."""
    scales = slot.scale.size if slot.scale is not None else 0
    return (k, slot.dtype, scales, slot.quantized_dimension if scales > 1 else None)


def _identify_all(fb: bytearray, by_value: dict) -> tuple[list[_Slot], list[Optional[int]]]:
    slots, _ = _slots(fb)
    return slots, [_identify(slot, by_value) for slot in slots]


def _rescale_activations(fb: bytearray, rescaled: list[tuple[np.ndarray, np.ndarray]]) -> int:
    """Int8 ops such as GATHER copy their weight's quantization scale onto their output tensor: give
    those outputs the real scale too (placeholder scales are distinct per weight, so the match is exact)."""
    _, activations = _slots(fb)
    n = 0
    for name, scale in activations:
        for old, new in rescaled:
            if scale.size == old.size and np.array_equal(scale, old):
                scale[:] = new
                n += 1
                break
    return n


def _split_buffers(fb: bytearray, slots, identified, shared: set) -> bytearray:
    """Give every weight its own buffer where the converter made several weights share one
    (re-serializes the model through the flatbuffer object API)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(fb)
    fresh: dict[tuple, int] = {}  # (old buffer, content) -> new buffer
    for slot, k in zip(slots, identified):
        if slot.buffer not in shared or k is None:
            continue
        key = (slot.buffer, _content_key(slot, k))
        if key not in fresh:
            buffer = schema.BufferT()
            buffer.data = np.array(model.buffers[slot.buffer].data, copy=True)
            model.buffers.append(buffer)
            fresh[key] = len(model.buffers) - 1
        model.subgraphs[slot.subgraph].tensors[slot.index].buffer = fresh[key]
    return bytearray(flatbuffer_utils.convert_object_to_bytearray(model))
