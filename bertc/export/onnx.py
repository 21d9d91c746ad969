"""Keras -> ONNX through tf2onnx, without feeding the weights through the converter.

tf2onnx freezes every variable into a graph constant and copies it through
protobuf several times; on BERT-base that alone took minutes and ~13 GB. Here
the model is traced with ``stateless_call`` so that its weights are *inputs* of
the traced function; tf2onnx converts a weight-free graph, and the weights are
then written straight into the ONNX file as initializers (one copy each).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

import bertc

from bertc.components.common import tf
from bertc.errors import ExportError
from bertc.export.onnx_canonical import canonicalize

WEIGHT_PREFIX = "bertc_weight_"
# Above this many bytes the weights go to ONNX external data (model.onnx + model.onnx.data): protobuf
# cannot serialize a message over 2 GB. Tests lower it to exercise that path on a tiny model.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


def _quiet_tf2onnx():
    for name in ("tf2onnx", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)


def export_onnx(model, sig, path: Path, opset: int = 17, input_dtype: str = "int32") -> dict:
    t0 = time.perf_counter()
    inputs = list(sig.inputs)
    outputs = sig.output_names
    trainable, non_trainable = list(model.trainable_variables), list(model.non_trainable_variables)
    dtype = tf.int64 if input_dtype == "int64" else tf.int32
    input_sig = [tf.TensorSpec((None, i.length), dtype, name=i.name) for i in inputs]
    n_tr = len(trainable)

    def serve(args, weights):
        feeds = {i.name: tf.cast(a, tf.int32) for i, a in zip(inputs, args)}
        out, _ = model.stateless_call(weights[:n_tr], weights[n_tr:], feeds, training=False)
        return {name: tf.identity(out[name], name=name) for name in outputs}

    try:
        proto, weights, weight_values = convert_with_weight_inputs(serve, input_sig, trainable + non_trainable, opset)
    except ExportError:   # what it could not convert, said already
        raise
    except Exception as exc:  # tf2onnx raises many types; report which op/why
        raise ExportError(f"ONNX export failed in tf2onnx: {type(exc).__name__}: {exc}") from exc
    t_convert = time.perf_counter() - t0

    graph = proto.graph
    _rename_io(graph, [i.name for i in inputs], outputs)
    _check_io(graph, [i.name for i in inputs], outputs)
    _order_io(graph, [i.name for i in inputs], outputs)
    graph.name = model.name
    graph.doc_string = f"bertc {bertc.__version__}: {model.name} through tf2onnx"  # tf2onnx writes a TF function counter here
    canonicalize(graph, keep={i.name for i in inputs} | set(outputs) | {p for p, _ in weights})
    check_graph(proto, weight_values, "the exported ONNX graph is invalid")
    size, external = write_onnx(proto, weights, path)
    return {"path": path.name, "format": "onnx", "precision": "fp32",
            "providers": ["CPUExecutionProvider", "CUDAExecutionProvider"], "opset": opset,
            "input_dtype": input_dtype, "bytes": size, "external_data": external,
            "nodes": len(graph.node), "initializers": len(graph.initializer) + len(weights),
            "convert_seconds": round(t_convert, 3), "total_seconds": round(time.perf_counter() - t0, 3)}


def convert_with_weight_inputs(call, input_sig: list, variables: list, opset: int, refuse_unconverted: bool = True):
    """tf2onnx's conversion of ``call(inputs, weights)`` (``inputs``: tensors per ``input_sig``; ``weights``:
    tensors standing for ``variables``, in order), with the weights as graph inputs rather than frozen
    constants, so the converter never sees (or copies) their values.

    Returns ``(proto, weights, declared)``: the graph reads each weight by its Keras path and has only the
    ``input_sig`` inputs left (tf2onnx's names, ``name:0``); ``weights`` is ``[(path, variable)]`` of the
    weights it reads, sorted by path (unread ones, such as dropout seed state, are left out); ``declared``
    their ValueInfoProtos, for :func:`check_graph` before the weights are attached. An op tf2onnx could not
    convert is an :class:`ExportError` naming it (``refuse_unconverted``; else it is left in the graph, for the
    caller to name: the optimized lowering's splice says which layer has no ONNX path)."""
    import tf2onnx

    _quiet_tf2onnx()
    n_in = len(input_sig)
    weight_sig = [tf.TensorSpec(v.shape, v.dtype, name=f"{WEIGHT_PREFIX}{k}") for k, v in enumerate(variables)]

    def traced(*args):
        return call(list(args[:n_in]), list(args[n_in:]))

    def convert(in_place: bool):
        with _converter_errors() as errors, _passes_in_place(in_place):   # tf2onnx's own error log (pages of
            proto, _ = tf2onnx.convert.from_function(   # tracebacks), kept to say what failed
                tf.function(traced), input_signature=input_sig + weight_sig, opset=opset)
        return proto, errors

    failed = False
    try:
        proto, errors = convert(in_place=True)
    except MemoryError:   # the copies would need more
        raise
    except Exception:   # noqa: BLE001 - one of tf2onnx's passes failed on the graph itself: converted again its
        failed = True     # own way, which leaves a failing pass out (or fails as it would); out of this block, so
    if failed:            # that the failed conversion's graph (held by the exception's frames) is freed first
        proto, errors = convert(in_place=False)
    unconverted = _unconverted(errors) if refuse_unconverted else None
    if unconverted:
        raise ExportError(unconverted)
    graph = proto.graph
    weight_inputs = {}
    for inp in graph.input:
        base = inp.name.split(":")[0]
        if base.startswith(WEIGHT_PREFIX):
            weight_inputs[inp.name] = (inp, variables[int(base[len(WEIGHT_PREFIX):])])
    used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
    renames = {name: var.path for name, (_, var) in weight_inputs.items() if name in used}
    declared = []
    for name in renames:
        value = type(weight_inputs[name][0])()
        value.CopyFrom(weight_inputs[name][0])
        value.name = renames[name]
        declared.append(value)
    kept = [i for i in graph.input if i.name not in weight_inputs]
    del graph.input[:]
    graph.input.extend(kept)
    _rename_values(graph, renames)
    weights = sorted(((renames[name], var) for name, (_, var) in weight_inputs.items() if name in renames),
                     key=lambda item: item[0])
    return proto, weights, declared


_passes = threading.local()


@contextlib.contextmanager
def _passes_in_place(on: bool):
    """tf2onnx's optimizer copies the whole graph before each of its passes (some forty, each a deep copy of every
    node), to go back to the copy when a pass fails; on BERT-base the copies were half of the conversion's time and
    memory. In this block (this thread's conversion) the passes work on the graph itself: a failing pass then fails
    the conversion, which :func:`convert_with_weight_inputs` does again with the copies."""
    import tf2onnx.optimizer as passes

    if not getattr(passes.optimize_graph, "bertc_in_place", False):
        copying = passes.optimize_graph

        def optimize_graph(graph, catch_errors=True, optimizers=None):
            return copying(graph, catch_errors and not getattr(_passes, "in_place", False), optimizers=optimizers)

        optimize_graph.bertc_in_place = True
        passes.optimize_graph = optimize_graph
    before, _passes.in_place = getattr(_passes, "in_place", False), on
    try:
        yield
    finally:
        _passes.in_place = before


class _Collected(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record):
        try:
            self.messages.append(record.getMessage())
        except Exception:   # a record that cannot be formatted: not worth failing the export for
            pass


@contextlib.contextmanager
def _converter_errors():
    """tf2onnx's error records during the block, kept (not printed: a node it cannot convert printed pages of its
    tracebacks before bertc's one line)."""
    logger = logging.getLogger("tf2onnx")
    handlers, propagate = list(logger.handlers), logger.propagate
    collected = _Collected()
    logger.handlers[:] = [collected]
    logger.propagate = False
    try:
        yield collected.messages
    finally:
        logger.handlers[:] = handlers
        logger.propagate = propagate


def _unconverted(messages: list[str]) -> Optional[str]:
    """What tf2onnx could not convert, by op and layer, with what to do (None: it converted everything): ops ONNX
    has no operator for (Keras' own gelu lowers to Erfc, lgamma, py_function) and ones its converter fails on."""
    import re

    found: dict[str, set] = {}
    for text in messages:
        for node, op in re.findall(r"Tensorflow op \[([^\]]+): (\w+)\] is not supported", text):
            found.setdefault(op, set()).add(node.rsplit("/", 1)[0])
        for node in re.findall(r"Failed to convert node '([^']+)'", text):
            op = node.rsplit("/", 1)[-1].split("_")[0] or node
            found.setdefault(op, set()).add(node.rsplit("/", 1)[0])
    if not found:
        return None
    parts = [f"{op} (in {', '.join(sorted(layers)[:4])}{', ...' if len(layers) > 4 else ''})"
             for op, layers in sorted(found.items())]
    return ("ONNX export failed: tf2onnx cannot convert the TensorFlow op(s) " + "; ".join(parts) + ". Write those "
            "computations with ops ONNX has (Keras' own activation 'gelu' lowers to Erfc: use bertc's 'gelu', exact "
            "GELU through erf, bertc.activations.gelu; no tf.py_function)")


def check_graph(proto, declared, message: str) -> None:
    """onnx.checker on ``proto`` with ``declared`` (ValueInfoProtos of the weights not attached yet) as
    extra graph inputs, so no weight data is serialized; a failure is an ExportError ``message: why``."""
    import onnx

    graph = proto.graph
    n = len(graph.input)
    graph.input.extend(declared)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{message}: {exc}") from None
    finally:
        while len(graph.input) > n:
            graph.input.pop()


def declared_weights(weights) -> list:
    """ValueInfoProtos for [(name, array)]: what :func:`check_graph` declares."""
    from onnx import helper

    return [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(a.dtype)), list(a.shape))
            for name, a in weights]


def _tensor_header(name: str, array_shape, dtype) -> bytes:
    """A TensorProto's fields before ``raw_data`` (field 9): dims, data_type, name."""
    from onnx import TensorProto, helper

    t = TensorProto()
    t.dims.extend(int(d) for d in array_shape)
    t.data_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    t.name = name
    return t.SerializeToString(deterministic=True)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, length: int) -> bytes:
    return _varint((number << 3) | 2) + _varint(length)


def _split(message, before: set[str]):
    """Two copies of ``message``: the fields named in ``before``, and the others."""
    head, tail = message.__class__(), message.__class__()
    head.CopyFrom(message)
    tail.CopyFrom(message)
    for f in message.DESCRIPTOR.fields:
        (tail if f.name in before else head).ClearField(f.name)
    return head, tail


def write_onnx(proto, weights, path: Path) -> tuple[int, Optional[str]]:
    """Write ``proto`` plus ``weights`` ([(name, Keras variable or array)], added as initializers) to ``path``
    atomically: inline ``raw_data`` streamed one weight at a time, or ONNX external data
    (``path.data``) when the whole would pass protobuf's 2 GB limit. Returns (bytes on disk, the
    external data file's name or None)."""
    path = Path(path)
    tmp = Path(str(path) + ".partial")
    data_path = path.with_name(path.name + ".data")
    total = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for _, v in weights)
    external = bool(weights) and total + proto.ByteSize() > EXTERNAL_DATA_THRESHOLD
    try:
        if external:
            write_external(proto, weights, tmp, data_path)
        else:
            data_path.unlink(missing_ok=True)
            write_streaming(proto, weights, tmp)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(tmp)) from None   # a full disk: the error names the file
        raise
    os.replace(tmp, path)
    size = path.stat().st_size + (data_path.stat().st_size if external else 0)
    return size, (data_path.name if external else None)


def _values(weight) -> np.ndarray:
    return _little_endian(np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight))


def _little_endian(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    return array.astype(array.dtype.newbyteorder("<"), copy=False)


def write_streaming(proto, weights, path: Path) -> None:
    """Write ``proto`` with the weights as ``raw_data`` initializers, one weight in memory at a time.

    The bytes are what protobuf's deterministic serializer writes for the whole model (fields in
    number order): the model's fields before ``graph``, the graph (its nodes, name and small
    initializers, then each weight initializer, then inputs, outputs, value_info), the model's
    fields after it."""
    graph = proto.graph
    model_head, model_tail = _split(proto, {"ir_version", "producer_name", "producer_version", "domain",
                                            "model_version", "doc_string"})
    model_head.ClearField("graph")
    model_tail.ClearField("graph")
    graph_head, graph_tail = _split(graph, {"node", "name", "initializer"})
    pieces = []
    graph_len = graph_head.ByteSize() + graph_tail.ByteSize()
    for name, var in weights:
        header = _tensor_header(name, var.shape, var.dtype)
        n = int(np.prod(var.shape)) * np.dtype(var.dtype).itemsize
        tensor_len = len(header) + len(_field(9, n)) + n
        pieces.append((header, n, var))
        graph_len += len(_field(5, tensor_len)) + tensor_len
    with open(path, "wb") as f:
        f.write(model_head.SerializeToString(deterministic=True))
        f.write(_field(7, graph_len))
        f.write(graph_head.SerializeToString(deterministic=True))
        for header, n, var in pieces:
            data = _values(var)
            assert data.nbytes == n
            f.write(_field(5, len(header) + len(_field(9, n)) + n))
            f.write(header)
            f.write(_field(9, n))
            f.write(memoryview(data).cast("B"))
            del data
        f.write(graph_tail.SerializeToString(deterministic=True))
        f.write(model_tail.SerializeToString(deterministic=True))


def write_external(proto, weights, path: Path, data_path: Path) -> None:
    """ONNX external data: the weights in ``data_path`` (next to ``path``, 64-byte aligned), the graph in
    ``path`` (protobuf cannot hold more than 2 GB in one message)."""
    from onnx import TensorProto, helper

    graph = proto.graph
    n_before = len(graph.initializer)
    tmp_data = Path(str(data_path) + ".partial")
    offset = 0
    try:
        with open(tmp_data, "wb") as f:
            for name, var in weights:
                data = _values(var)
                pad = (-offset) % 64
                f.write(b"\0" * pad)
                offset += pad
                f.write(memoryview(data).cast("B"))
                t = graph.initializer.add()
                t.name = name
                t.dims.extend(int(d) for d in data.shape)
                t.data_type = helper.np_dtype_to_tensor_dtype(data.dtype)
                t.data_location = TensorProto.EXTERNAL
                for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(data.nbytes))):
                    entry = t.external_data.add()
                    entry.key, entry.value = key, value
                offset += data.nbytes
                del data
        with open(path, "wb") as f:
            f.write(proto.SerializeToString(deterministic=True))
        os.replace(tmp_data, data_path)
    finally:
        tmp_data.unlink(missing_ok=True)
        while len(graph.initializer) > n_before:
            graph.initializer.pop()


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


def _order_io(graph, input_names, output_names):
    """The graph's inputs and outputs in the signature's order (tf2onnx lists a dict's outputs by name), the order
    of every other ONNX artifact of the build: ``start, end = session.run(None, feeds)`` must not swap a span
    labeler's logits on model.onnx alone."""
    for values, names in ((graph.input, input_names), (graph.output, output_names)):
        ordered = sorted((copy.deepcopy(v) for v in values), key=lambda v: names.index(v.name))
        del values[:]
        values.extend(ordered)


def _check_io(graph, input_names, output_names):
    got_in, got_out = [i.name for i in graph.input], [o.name for o in graph.output]
    if sorted(got_in) != sorted(input_names) or sorted(got_out) != sorted(output_names):
        raise ExportError(f"ONNX graph has inputs {got_in} / outputs {got_out}; "
                          f"expected {input_names} / {output_names}")
