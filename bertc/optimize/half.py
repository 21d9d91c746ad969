"""The fp16 conversion of an optimized graph, with the parts that must stay fp32 kept fp32.

``onnxruntime.transformers.float16`` converts every float tensor of a graph to fp16. A few computations of
bertc's graphs are wrong in fp16 whatever kernel runs them, because their values leave fp16's range or
precision: a sentence embedding's sum of squares (a norm above 256 overflows), weightedmean pooling's sum of
weights (n (n + 1) / 2 passes 65,504 above 361 tokens) and a mean's sum over long sequences, rotary angles
(position x frequency: above position 2,048 fp16 does not hold an integer, and an angle of 1,000 radians is
held to 0.5), a sliding window's position distances. The lowerings build such nodes in a scope holding the
:data:`bertc.onnx_graph.KEEP_FP32` segment (:func:`bertc.onnx_graph.GraphBuilder.scope`), and
:func:`to_fp16` computes every such run in fp32: one Cast to fp32 per fp16 value entering it, its initializers
and constants at their fp32 values, one Cast to fp16 per value leaving it.

The converter's own ``node_block_list`` cannot do this: it casts every output of a blocked node back to fp16
(a sum of squares still overflows between the blocked ReduceSum and the next blocked node), adds a Cast only
where shape inference typed the value (not below a com.microsoft op), and puts its casts in the main graph
even for a node of a subgraph.
"""
from __future__ import annotations

import numpy as np
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from bertc.onnx_graph import KEEP_FP32, all_graphs

# ops whose output type is fixed whatever their inputs' (the rest: their first input's, as every op bertc emits)
_INT64_OUT = {"Shape", "Size", "NonZero", "ArgMax", "ArgMin"}
_BOOL_OUT = {"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Xor", "Not", "IsNaN",
             "IsInf"}


def kept_fp32(name: str) -> bool:
    """Whether the node named ``name`` was built in a scope kept in fp32."""
    return KEEP_FP32 in name.split("/")


def _originals(proto) -> tuple[dict, dict]:
    """Before conversion: the fp32 initializers the kept nodes read (name -> TensorProto), and their tensor
    attributes (node name -> {attribute name: TensorProto})."""
    inits, attrs = {}, {}
    graphs = list(all_graphs(proto.graph))
    every_init = {i.name: i for g in graphs for i in g.initializer}
    for g in graphs:
        for n in g.node:
            if not kept_fp32(n.name):
                continue
            for name in n.input:
                if name in every_init and every_init[name].data_type == TensorProto.FLOAT:
                    inits[name] = _copy(every_init[name])
            tensors = {a.name: _copy(a.t) for a in n.attribute if a.type == AttributeProto.TENSOR
                       and a.t.data_type == TensorProto.FLOAT}
            if tensors:
                attrs[n.name] = tensors
    return inits, attrs


def _copy(tensor):
    out = TensorProto()
    out.CopyFrom(tensor)
    return out


class _Types:
    """Element types of the converted graph's values: declared (inputs, outputs, value_info, initializers),
    else from their producer (a Cast's ``to``, the fixed-type ops above, a subgraph's declared output, else the
    type of its data input: the first, but Where's and OneHot's values and EmbedLayerNormalization's table)."""

    def __init__(self, graphs):
        self.known, self.producer = {}, {}
        for g in graphs:
            for v in list(g.input) + list(g.output) + list(g.value_info):
                if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
                    self.known[v.name] = v.type.tensor_type.elem_type
            for i in g.initializer:
                self.known[i.name] = i.data_type
            for n in g.node:
                for o in n.output:
                    self.producer[o] = n

    def __call__(self, name: str) -> int:
        chain = []   # values whose type is their producer's first (or data) input's: followed without recursion
        kind = TensorProto.UNDEFINED
        while name:
            if name in self.known:
                kind = self.known[name]
                break
            n = self.producer.get(name)
            if n is None or name in chain:
                break
            chain.append(name)
            rule = self._rule(n, name)
            if isinstance(rule, str):
                name = rule
            else:
                kind = rule
                break
        for value in chain:
            self.known[value] = kind
        return kind

    def _rule(self, n, name: str):
        """The type of output ``name`` of node ``n`` (an int), or the input whose type it is (a str)."""
        k = list(n.output).index(name)
        if n.op_type == "Cast":
            return next(a.i for a in n.attribute if a.name == "to")
        if n.op_type in _INT64_OUT or (n.op_type == "TopK" and k == 1):
            return TensorProto.INT64
        if n.op_type in _BOOL_OUT:
            return TensorProto.BOOL
        if n.op_type in ("ConstantOfShape", "Constant"):
            return next((a.t.data_type for a in n.attribute if a.name == "value"),
                        TensorProto.FLOAT16 if n.op_type == "ConstantOfShape" else TensorProto.UNDEFINED)
        if n.op_type in ("If", "Loop", "Scan"):   # the type its subgraph declares for that output
            body = next(a.g for a in n.attribute if a.type == AttributeProto.GRAPH)
            k += 1 if n.op_type == "Loop" else 0   # a Loop body's first output: its condition
            if k >= len(body.output):
                return TensorProto.UNDEFINED
            return body.output[k].type.tensor_type.elem_type or body.output[k].name
        if n.domain == "com.microsoft":
            # their outputs are their data's type (EmbedLayerNormalization's first input is the ids; its second
            # output the int32 mask index)
            if n.op_type == "EmbedLayerNormalization":
                return TensorProto.INT32 if k == 1 else n.input[2]
            return n.input[0]
        if n.op_type == "Where":
            return n.input[1]
        if n.op_type == "OneHot":
            return n.input[2]
        return next((i for i in n.input if i), "")


def keep_fp32_scopes(half, inits: dict, attrs: dict) -> int:
    """Compute the kept-fp32 nodes of the converted graph ``half`` in fp32 (in place): ``inits`` / ``attrs``
    from :func:`_originals` of the graph before conversion. Returns the number of nodes kept."""
    graphs = list(all_graphs(half.graph))
    types = _Types(graphs)
    members = {id(n) for g in graphs for n in g.node if kept_fp32(n.name)}
    if not members:
        return 0
    made = {o for g in graphs for n in g.node if id(n) in members for o in n.output}
    kind = {name: types(name) for g in graphs for n in g.node if id(n) in members
            for name in list(n.input) + list(n.output) if name}        # before any change below
    outside = {i for g in graphs for n in g.node if id(n) not in members for i in n.input}
    outside |= {o.name for g in graphs for o in g.output}
    every_init = {i.name: (g, i) for g in graphs for i in g.initializer}
    init_users: dict = {}
    for g in graphs:
        for n in g.node:
            for i in n.input:
                init_users.setdefault(i, set()).add(id(n) in members)
    renamed = {name: f"{name}/{KEEP_FP32}_value" for name in made
               if name in outside and kind[name] == TensorProto.FLOAT16}
    bounds = (f"{KEEP_FP32}/fp16_lowest", f"{KEEP_FP32}/fp16_max")
    if renamed:
        top = float(np.finfo(np.float16).max)
        half.graph.initializer.extend([numpy_helper.from_array(np.array(-top, np.float32), bounds[0]),
                                       numpy_helper.from_array(np.array(top, np.float32), bounds[1])])
    # a graph's nodes are rebuilt below (a repeated field's extend copies its messages, subgraphs included): each
    # subgraph before the graph holding it, so that the copy holds the subgraph as changed
    for gi, g in reversed(list(enumerate(graphs))):
        mark = KEEP_FP32 if gi == 0 else f"{KEEP_FP32}_{gi}"     # names are unique across subgraphs too
        into: dict = {}      # an fp16 value read by kept nodes -> its Cast to fp32 (one per graph)
        order = []
        for n in g.node:
            if id(n) not in members:
                order.append(n)
                continue
            _fp32_attributes(n, attrs.get(n.name, {}))
            for k, name in enumerate(n.input):
                if not name:
                    continue
                if name in renamed:
                    n.input[k] = renamed[name]
                elif name in made:
                    continue
                elif name in every_init and every_init[name][1].data_type == TensorProto.FLOAT16:
                    n.input[k] = _fp32_initializer(name, inits, every_init, init_users[name] == {True})
                elif kind[name] == TensorProto.FLOAT16:
                    if name not in into:
                        into[name] = helper.make_node("Cast", [name], [f"{name}/{mark}"], to=TensorProto.FLOAT,
                                                      name=f"{name}/{mark}/cast")
                        order.append(into[name])       # just before its first reader
                    n.input[k] = into[name].output[0]
            order.append(n)
            for k, name in enumerate(n.output):
                if name in renamed:   # saturated to fp16's range, as the converter holds constants (an
                    # all-padding row's max-pooled -1e9 became -inf, then NaN in a Dense after it)
                    n.output[k] = renamed[name]
                    order.append(helper.make_node("Clip", [renamed[name], *bounds], [f"{renamed[name]}/saturated"],
                                                  name=f"{name}/{KEEP_FP32}/saturate"))
                    order.append(helper.make_node("Cast", [f"{renamed[name]}/saturated"], [name],
                                                  to=TensorProto.FLOAT16, name=f"{name}/{KEEP_FP32}/to_fp16"))
        del g.node[:]
        g.node.extend(order)
        keep = [v for v in g.value_info if v.name not in made]
        del g.value_info[:]
        g.value_info.extend(keep)
    _fp32_to_fp32_readers(half, renamed)
    return len(members)


def _fp32_to_fp32_readers(half, renamed: dict) -> None:
    """A Cast to fp32 reading a kept value (the converter's cast of a graph output back to fp32: a sentence
    embedding) reads the fp32 value itself, not its fp16 copy; a copy no one reads then goes. (The kept nodes read
    the fp32 names already: a reader of an fp16 copy is outside them.)"""
    if not renamed:
        return
    graphs = list(all_graphs(half.graph))
    for g in graphs:
        for n in g.node:
            if n.op_type == "Cast" and n.input[0] in renamed and \
                    next(a.i for a in n.attribute if a.name == "to") == TensorProto.FLOAT:
                n.input[0] = renamed[n.input[0]]
    read = {i for g in graphs for n in g.node for i in n.input} | {o.name for g in graphs for o in g.output}
    unread = {n.output[0] for g in graphs for n in g.node
              if n.op_type == "Cast" and n.output[0] in renamed and n.output[0] not in read}
    unread |= {f"{renamed[name]}/saturated" for name in unread}   # the Clip before such a Cast
    for g in reversed(graphs):   # subgraphs first (see keep_fp32_scopes)
        keep = [n for n in g.node if n.output[0] not in unread]
        if len(keep) != len(g.node):
            del g.node[:]
            g.node.extend(keep)


def _fp32_attributes(node, originals: dict) -> None:
    """A kept node's fp32 semantics back: Cast to fp32 again, tensor attributes at their fp32 values."""
    for a in node.attribute:
        if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT16:
            a.i = TensorProto.FLOAT
        elif a.type == AttributeProto.TENSOR and a.name in originals:
            a.t.CopyFrom(originals[a.name])
        elif a.type == AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT16:
            a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype("float32"), a.t.name))


def _fp32_initializer(name: str, inits: dict, every_init: dict, only_kept: bool) -> str:
    """The fp32 initializer a kept node reads in place of the fp16 ``name``: its value before conversion,
    in place when only kept nodes read it, else as a copy beside it."""
    owner, tensor = every_init[name]
    fp32 = inits.get(name)
    if fp32 is None:
        fp32 = numpy_helper.from_array(numpy_helper.to_array(tensor).astype("float32"), name)
    if only_kept:
        tensor.CopyFrom(fp32)
        return name
    copy_name = f"{name}/{KEEP_FP32}"
    if copy_name not in every_init:
        fp32 = _copy(fp32)
        fp32.name = copy_name
        owner.initializer.append(fp32)
        every_init[copy_name] = (owner, fp32)
    return copy_name


def _unfuse(proto, op_type: str, rewrite) -> int:
    """Replace, in place, each com.microsoft ``op_type`` node for which ``rewrite(node, read)`` returns standard
    nodes (``read``: every value some node or graph output reads; None: kept as it is), subgraphs first (a rebuilt
    graph holds copies of its subgraphs). Returns how many were replaced."""
    count = 0
    graphs = list(all_graphs(proto.graph))
    read = {i for g in graphs for n in g.node for i in n.input} | {o.name for g in graphs for o in g.output}
    for graph in reversed(graphs):
        nodes = []
        for n in graph.node:
            new = rewrite(n, read) if n.op_type == op_type and n.domain == "com.microsoft" else None
            if new is None:
                nodes.append(n)
            else:
                nodes.extend(new)
                count += 1
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def _sum_and_norm(parts: list, total: str, gamma: str, beta: str, out: str, stem: str, eps: float) -> list:
    """Sum of ``parts`` (a Sum, not Adds, so that ORT's fusions do not fuse it back) into ``total``, then a
    LayerNormalization into ``out``: a fused norm's standard ops."""
    from onnx import helper

    return [helper.make_node("Sum", parts, [total], name=f"{stem}/unfused/sum"),
            helper.make_node("LayerNormalization", [total, gamma] + ([beta] if beta else []), [out],
                             name=f"{stem}/unfused/layer_norm", axis=-1, epsilon=eps)]


def unfuse_embed_layer_norms(proto) -> int:
    """Rewrite, in place, each com.microsoft EmbedLayerNormalization whose mask index no one reads as the standard
    ops it fuses: Gather of the word (and type) rows, the position rows (Gather at its position_ids, else the
    table's first S rows), one Sum and a LayerNormalization. For the fp16 artifacts: ORT's CUDA kernel sums the
    layer norm's mean and mean square in fp16 (a mean far from 0 against the spread loses the variance, an RMS above
    256 overflows), LayerNormalization's in fp32; run once a batch, the unfused form costs little. Returns how many
    were rewritten."""
    from onnx import helper

    def rewrite(n, read):
        ins = list(n.input) + [""] * (9 - len(n.input))
        ids, segments, words, table, types, gamma, beta, mask, positions = ins[:9]
        if any(o and o in read for o in n.output[1:]) or mask:   # (bertc never passes a mask: kept fused)
            return None
        stem = n.name or n.output[0]
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-12)
        parts = [f"{stem}/unfused/words", f"{stem}/unfused/positions"]
        nodes = [helper.make_node("Gather", [words, ids], [parts[0]], name=parts[0], axis=0)]
        if positions:
            nodes.append(helper.make_node("Gather", [table, positions], [parts[1]], name=parts[1], axis=0))
        else:
            shape, start = f"{stem}/unfused/length", f"{stem}/unfused/start"
            nodes.append(helper.make_node("Shape", [ids], [shape], name=shape, start=1, end=2))
            nodes.append(helper.make_node("Constant", [], [start], name=start,
                                          value=helper.make_tensor(start, 7, [1], [0])))
            nodes.append(helper.make_node("Slice", [table, start, shape, start], [parts[1]], name=parts[1]))
        if segments and types:
            parts.append(f"{stem}/unfused/types")
            nodes.append(helper.make_node("Gather", [types, segments], [parts[2]], name=parts[2], axis=0))
        return nodes + _sum_and_norm(parts, f"{stem}/unfused/sum", gamma, beta, n.output[0], stem, eps)

    return _unfuse(proto, "EmbedLayerNormalization", rewrite)


def unfuse_skip_layer_norms(proto) -> int:
    """Rewrite, in place, each com.microsoft SkipLayerNormalization whose mean and inverse standard deviation no one
    reads as the standard ops the default lowering writes (``export.skip_layer_norm`` "decomposed"): one Sum of the
    input, the skip and the bias (the node's fourth output when something reads it) and a LayerNormalization. For the
    fp16 artifacts of a spec that asks for the fused form: ORT's CUDA kernel sums its statistics in fp16 (NaN once the
    residual stream's RMS passes 256), LayerNormalization's in fp32. Returns how many were rewritten."""
    def rewrite(n, read):
        if any(o and o in read for o in n.output[1:3]):
            return None
        x, skip, gamma, beta, bias = (list(n.input) + [""] * (5 - len(n.input)))[:5]
        stem = n.name or n.output[0]
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-12)
        total = n.output[3] if len(n.output) > 3 and n.output[3] else f"{stem}/unfused/sum"
        return _sum_and_norm([x, skip] + ([bias] if bias else []), total, gamma, beta, n.output[0], stem, eps)

    return _unfuse(proto, "SkipLayerNormalization", rewrite)


def to_fp16(proto, op_block_list: list) -> tuple:
    """``proto`` converted to fp16 (inputs and outputs kept as they are), its kept-fp32 scopes in fp32, its
    EmbedLayerNormalization and SkipLayerNormalization unfused (:func:`unfuse_embed_layer_norms`,
    :func:`unfuse_skip_layer_norms`: whatever ``export.skip_layer_norm`` says, the fp16 graphs' residual norms are
    Sum + LayerNormalization); returns the converted model and the number of nodes kept in fp32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    unfuse_embed_layer_norms(proto)
    unfuse_skip_layer_norms(proto)
    inits, attrs = _originals(proto)
    half = convert_float_to_float16(proto, keep_io_types=True, op_block_list=op_block_list)
    return half, keep_fp32_scopes(half, inits, attrs)
