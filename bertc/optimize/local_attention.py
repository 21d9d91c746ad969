"""The plain form of ModernBERT's blocked local attention and of its global attention's unpadded fast path
(:mod:`bertc.components.local_blocks`), for the passes that rewrite attention themselves: the padding-free
artifact (attention per sequence, in blocks again where a sequence allows: :func:`windows_of`) and the fp16
variant."""
from __future__ import annotations

from typing import Optional

from bertc.components.local_blocks import NAME, PLAIN_BIAS, UNPADDED


def is_local_attention(node) -> bool:
    """A local layer's ``If`` between its blocked and plain attention."""
    return node.op_type == "If" and node.name.rsplit("/", 1)[-1].startswith(NAME)


def is_unpadded_attention(node) -> bool:
    """A global attention's ``If`` between its unmasked form (no row padded) and its masked one."""
    return node.op_type == "If" and node.name.rsplit("/", 1)[-1].startswith(UNPADDED)


def _is_local_if(node, local: bool = True, unpadded: bool = True) -> bool:
    return ((local and (is_local_attention(node) or (node.op_type == "If" and node.name.endswith(PLAIN_BIAS))))
            or (unpadded and is_unpadded_attention(node)))


def unblocked(proto, local: bool = True, unpadded: bool = True):
    """``proto`` with every blocked local attention replaced by its plain form (the else branch's
    ``MultiHeadAttention``, reading the plain window bias, whose own ``If`` becomes its else branch's nodes) and
    every global attention's unpadded fast path by its masked form (its else branch): for the passes that
    rewrite attention themselves. The same proto when it has none. ``local`` / ``unpadded`` False: keep that kind
    (a benchmark's comparison of one of them alone)."""
    from onnx import helper

    graph = proto.graph
    if not any(_is_local_if(n, local, unpadded) for n in graph.node):
        return proto
    nodes = []
    for node in graph.node:
        if _is_local_if(node, local, unpadded):
            branch = next(a.g for a in node.attribute if a.name == "else_branch")
            produced = branch.output[0].name
            for inner in branch.node:
                copy = helper.make_node(inner.op_type, list(inner.input),
                                        [node.output[0] if o == produced else o for o in inner.output],
                                        name=inner.name, domain=inner.domain)
                copy.attribute.extend(inner.attribute)
                nodes.append(copy)
            continue
        nodes.append(node)
    out = type(proto)()
    out.CopyFrom(proto)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    from bertc.onnx_graph import _subgraph_reads, live_nodes

    live = live_nodes(list(out.graph.node), [o.name for o in out.graph.output])
    del out.graph.node[:]
    out.graph.node.extend(live)
    used = {i for n in live for i in n.input} | {i for n in live for i in _subgraph_reads(n)}
    keep = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out


def unblocked_with(proto, weights: Optional[list]) -> tuple:
    """(:func:`unblocked` ``proto``, ``weights`` without the arrays only the blocks read): for a pass that moves
    the weights into the graph (ONNX Runtime would warn about, then drop, initializers nothing reads)."""
    plain = unblocked(proto)
    if plain is proto or not weights:
        return plain, weights
    from bertc.onnx_graph import _subgraph_reads

    read = {i for n in plain.graph.node for i in n.input} | {i for n in plain.graph.node for i in _subgraph_reads(n)}
    return plain, [(name, array) for name, array in weights if name in read]


def windows_of(proto, weights: Optional[list] = None) -> dict:
    """``{plain MultiHeadAttention's name: (w, block bias (1, 1, w, 3 w))}`` for every blocked local attention of
    ``proto`` (the names :func:`unblocked` leaves): the padding-free pass runs them in blocks per sequence."""
    from onnx import numpy_helper

    arrays = dict(weights or [])
    inits = {t.name: t for t in proto.graph.initializer}
    out = {}
    for node in proto.graph.node:
        if not is_local_attention(node):
            continue
        branches = {a.name: a.g for a in node.attribute}
        plain = next(n for n in branches["else_branch"].node if n.op_type == "MultiHeadAttention")
        blocks = next(n for n in branches["then_branch"].node if n.op_type == "MultiHeadAttention")
        name = blocks.input[5]
        bias = arrays[name] if name in arrays else numpy_helper.to_array(inits[name])
        out[plain.name] = (int(bias.shape[2]), bias)
    return out
