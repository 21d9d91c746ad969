"""Residual biases folded into the layer norm before them, in the fp32 artifacts.

A post-norm block (BERT, RoBERTa, ELECTRA, DistilBERT, MPNet, DeBERTa) adds each projection's bias and then its
residual, ``Sum(Add(MatMul(h, W), b), r)``, where ``r`` is the output of the layer norm before the block. When
everything else that reads ``r`` is a projection with a bias of its own (``Attention``'s packed QKV, or a
``MatMul`` followed by ``Add``, ``BiasGelu`` or ``FastGelu``), the bias ``b`` can travel with ``r`` instead:

- the layer norm's beta becomes ``beta + b`` (it now writes ``r + b``),
- each projection reading ``r`` gets the bias ``c - b @ W_c`` (so ``(r + b) @ W_c + c - b @ W_c = r @ W_c + c``),
- the ``Add`` goes, and the ``Sum`` reads the MatMul directly: ``MatMul(h, W) + (r + b)``.

The same values in exact arithmetic; in float32 the sums round differently (the optimized artifact's parity
against Keras covers it). One elementwise pass per folded bias (two per layer) is saved. The folded betas and
biases are new constants, computed in float64: a constant read by other nodes (ALBERT's shared layer) is never
changed in place, and the packed weights are only read. The int8 artifacts keep the unfolded form: their
smoothing moves scales through these layer norms.

The README's Benchmarks section has the measured effect.
"""
from __future__ import annotations

import numpy as np

from bertc.optimize.projections import _names_read

# (op type, index of the input read, index of its weight, index of its bias) of a projection with its own bias
_FUSED = {"Attention": (0, 1, 2)}
# what may read such a projection's product: x + bias, then (for the activations) the function of it
_BIAS_READERS = {("", "Add"), ("ai.onnx", "Add"), ("com.microsoft", "BiasGelu"), ("com.microsoft", "FastGelu")}


def fold_residual_biases(proto, weights):
    """``(proto', weights', n)``: ``proto`` (not modified) with ``n`` residual biases folded (module docstring);
    ``weights`` ([(name, array or variable)]) plus the folded constants it reads instead."""
    from onnx import ModelProto, numpy_helper

    big = dict(weights or [])
    small = {t.name: t for t in proto.graph.initializer}
    producer = {out: node for node in proto.graph.node for out in node.output}
    readers: dict = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    read = _names_read(proto.graph)   # subgraphs and graph outputs too

    def value(name):
        if name in small:
            return numpy_helper.to_array(small[name]).astype(np.float64)
        if name in big:
            w = big[name]
            return np.asarray(w.numpy() if hasattr(w, "numpy") else w, np.float64)
        return None

    def known(name) -> bool:
        return name in small or name in big

    def only_reader(name, node) -> bool:
        return read[name] == 1 and readers.get(name, []) == [node]

    def compensation(node, r):
        """(bias name, weight name, node whose bias it is, input index) for a reader of ``r``, or None."""
        if node.domain == "com.microsoft" and node.op_type in _FUSED:
            x, w, b = _FUSED[node.op_type]
            if len(node.input) > b and node.input[x] == r and node.input[b] and known(node.input[w]) \
                    and r not in node.input[x + 1:]:
                return node.input[b], node.input[w], node, b
            return None
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and node.input[0] == r and known(node.input[1]):
            nxt = readers.get(node.output[0], [])
            if len(nxt) == 1 and read[node.output[0]] == 1 and (nxt[0].domain, nxt[0].op_type) in _BIAS_READERS:
                bias = [i for i, n in enumerate(nxt[0].input) if n != node.output[0]]
                if len(bias) == 1 and known(nxt[0].input[bias[0]]):
                    return nxt[0].input[bias[0]], node.input[1], nxt[0], bias[0]
        return None

    plans = []   # (add, sum, norm, beta index, b, [(reader, input index, bias name, weight name)])
    taken = set()
    for add in proto.graph.node:
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
            continue
        matmul = producer.get(add.input[0])
        if matmul is None or matmul.op_type != "MatMul" or not known(add.input[1]) \
                or not only_reader(add.output[0], readers.get(add.output[0], [None])[0]):
            continue
        total = readers[add.output[0]][0]
        if total.op_type != "Sum" or total.domain not in ("", "ai.onnx") or len(total.input) != 2:
            continue
        r = total.input[1] if total.input[0] == add.output[0] else total.input[0]
        norm = producer.get(r)
        if norm is None or r != norm.output[0] or id(norm) in taken:
            continue
        if norm.op_type == "LayerNormalization" and norm.domain in ("", "ai.onnx") and len(norm.input) == 3:
            beta_at = 2
        elif norm.op_type == "EmbedLayerNormalization" and norm.domain == "com.microsoft" and len(norm.input) > 6:
            beta_at = 6
        else:
            continue
        b, beta = value(add.input[1]), value(norm.input[beta_at])
        if b.ndim != 1 or beta is None or beta.shape != b.shape:
            continue
        others = [n for n in readers.get(r, []) if n is not total]
        if not others or read[r] != len(others) + 1:   # read elsewhere (a subgraph, a graph output): keep
            continue
        fixes = [compensation(n, r) for n in others]
        if any(f is None for f in fixes) or len({id(f[2]) for f in fixes}) != len(fixes):
            continue
        taken.add(id(norm))
        plans.append((add, total, norm, beta_at, b, beta, fixes))

    adds = {id(plan[0]) for plan in plans}
    plans = [p for p in plans if not any(id(f[2]) in adds for f in p[6])]   # a bias both folded and moved: keep
    if not plans:
        return proto, list(weights or []), 0
    model = ModelProto()
    model.CopyFrom(proto)
    nodes = {id(n): m for n, m in zip(proto.graph.node, model.graph.node)}
    new = {}   # name -> constant; a name made twice (shared weights: ALBERT) names the same values
    removed = set()
    for add, total, norm, beta_at, b, beta, fixes in plans:
        name = f"{norm.input[beta_at]}+{add.input[1]}"
        if name not in new:
            new[name] = numpy_helper.from_array((beta + b).astype(np.float32), name)
        nodes[id(norm)].input[beta_at] = name
        for bias, weight, reader, at in fixes:
            name = f"{bias}-{add.input[1]}@{weight}"
            if name not in new:
                new[name] = numpy_helper.from_array((value(bias) - b @ value(weight)).astype(np.float32), name)
            nodes[id(reader)].input[at] = name
        target = nodes[id(total)]
        for i, n in enumerate(target.input):
            if n == add.output[0]:
                target.input[i] = add.input[0]
        removed.add(id(add))
    kept = [nodes[id(n)] for n in proto.graph.node if id(n) not in removed]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(new.values())
    still = _names_read(model.graph)
    initializers = [t for t in model.graph.initializer if still[t.name]]
    del model.graph.initializer[:]
    model.graph.initializer.extend(initializers)
    return model, [(n, w) for n, w in (weights or []) if still[n]], len(plans)
