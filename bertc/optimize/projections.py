"""Packed projections computed part by part in the fp32 artifacts.

The lowerings pack projections that read the same input into one MatMul and split its output on the last axis:
ModernBERT's ``Wqkv`` (q, k, v) and GLU ``Wi`` (input, gate), DeBERTa's query / key / value. One MatMul is what
the int8 artifact wants (one activation quantization for all parts). In fp32 the ``Split`` is only a copy of
the product; :func:`separate_projections` rewrites each
``MatMul(x, W) [+ b] -> Split(axis=-1)`` whose intermediate values nothing else reads into one MatMul (and Add)
per part over W's columns (and b's entries), writing straight into the Split's outputs. Each column is computed
as before (the same dot products: outputs equal), and no copy of the weights is kept: the parts replace the
packed weight, whose columns they read only when the artifact is written (:class:`ColumnSlice`).

The README's Benchmarks section has the measured effect (ModernBERT-base); the int8 variant keeps the packed
MatMul, since one ``DynamicQuantizeMatMul`` per part would quantize the same input once per part.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np


class ColumnSlice:
    """Columns ``[start, stop)`` of a weight (a Keras variable or an array), read when the artifact is written
    (:func:`bertc.export.onnx.write_onnx` takes anything with ``shape``, ``dtype`` and ``numpy()``)."""

    def __init__(self, source, start: int, stop: int):
        self.source, self.start, self.stop = source, int(start), int(stop)
        shape = tuple(int(d) for d in source.shape)
        self.shape = shape[:-1] + (self.stop - self.start,)
        dtype = source.dtype
        self.dtype = np.dtype(getattr(dtype, "as_numpy_dtype", dtype))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def numpy(self) -> np.ndarray:
        array = np.asarray(self.source.numpy() if hasattr(self.source, "numpy") else self.source)
        return np.ascontiguousarray(array[..., self.start:self.stop])


def _names_read(graph) -> dict:
    """name -> how many nodes read it, subgraphs (If / Loop bodies) included, and the graph outputs."""
    count: dict = defaultdict(int)

    def walk(g):
        for node in g.node:
            for name in node.input:
                if name:
                    count[name] += 1
            for attr in node.attribute:
                for sub in ([attr.g] if attr.type == attr.GRAPH else list(attr.graphs)):
                    walk(sub)
        for out in g.output:
            count[out.name] += 1

    walk(graph)
    return count


def separate_projections(proto, weights):
    """``(proto', weights', n)``: ``proto`` (not modified) with each packed projection that feeds only a Split of
    its last axis computed part by part (module docstring); ``weights`` ([(name, array or variable)]) with the
    packed weights replaced by their column slices; ``n`` the projections rewritten."""
    from onnx import ModelProto, helper, numpy_helper

    model = ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    big = dict(weights or [])
    small = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    read = _names_read(graph)

    def array(name):   # a small constant's values, or None
        return numpy_helper.to_array(small[name]) if name in small else None

    def shape(name):   # a constant's shape (beside the graph or in it), or None
        return tuple(int(d) for d in big[name].shape) if name in big else \
            tuple(small[name].dims) if name in small else None

    plans = {}   # id(split) -> (matmul, add, x, weight, bias, sizes)
    for split in graph.node:
        axis = next((helper.get_attribute_value(a) for a in split.attribute if a.name == "axis"), 0)
        if split.op_type != "Split" or split.domain not in ("", "ai.onnx") or axis != -1 or read[split.input[0]] != 1:
            continue
        add, y, bias = None, split.input[0], None
        node = producer.get(y)
        if node is not None and node.op_type == "Add" and node.domain in ("", "ai.onnx"):
            consts = [n for n in node.input if shape(n) is not None and len(shape(n)) == 1]
            others = [n for n in node.input if n not in consts]
            if len(consts) != 1 or len(others) != 1 or read[others[0]] != 1:
                continue
            add, bias, y = node, consts[0], others[0]
            node = producer.get(y)
        if node is None or node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        w = node.input[1]
        if shape(w) is None or len(shape(w)) != 2:
            continue
        n = shape(w)[1]
        if len(split.input) > 1 and split.input[1]:
            sizes = array(split.input[1])
            sizes = None if sizes is None else [int(s) for s in sizes.ravel()]
        else:
            sizes = [n // len(split.output)] * len(split.output) if n % len(split.output) == 0 else None
        if not sizes or sum(sizes) != n or len(sizes) != len(split.output) or \
                (bias is not None and shape(bias) != (n,)):
            continue
        plans[id(split)] = (node, add, node.input[0], w, bias, sizes)

    if not plans:
        return proto, list(weights or []), 0
    removed = {id(n) for node, add, *_ in plans.values() for n in (node, add) if n is not None}
    new_weights, new_small = dict(big), {}   # a slice once by name: shared layers' projections read the same one
    nodes = []
    for node in graph.node:
        if id(node) in removed:
            continue
        if id(node) not in plans:
            nodes.append(node)
            continue
        matmul, add, x, w, bias, sizes = plans[id(node)]
        start = 0
        for k, (size, out) in enumerate(zip(sizes, node.output)):
            name = f"{w}[{start}:{start + size}]"
            if w in big:
                new_weights[name] = ColumnSlice(big[w], start, start + size)
            elif name not in new_small:
                new_small[name] = numpy_helper.from_array(
                    np.ascontiguousarray(numpy_helper.to_array(small[w])[:, start:start + size]), name)
            part = f"{matmul.output[0]}/part{k}" if add is not None else out
            nodes.append(helper.make_node("MatMul", [x, name], [part], name=f"{matmul.name or matmul.output[0]}/part{k}"))
            if add is not None:
                b = f"{bias}[{start}:{start + size}]"
                if bias in big:
                    new_weights[b] = ColumnSlice(big[bias], start, start + size)
                elif b not in new_small:
                    new_small[b] = numpy_helper.from_array(np.ascontiguousarray(array(bias)[start:start + size]), b)
                nodes.append(helper.make_node("Add", [part, b], [out], name=f"{add.name or add.output[0]}/part{k}"))
            start += size
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_small.values())
    still = _names_read(graph)
    kept = [t for t in graph.initializer if still[t.name]]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model, [(name, w) for name, w in new_weights.items() if still[name]], len(plans)
