"""ONNX model protos as the int8 tuning handles them (a graph whose large weights travel beside it): a copy
without the weights, and what a node reads from its graph, its subgraphs' outer reads included."""
from __future__ import annotations


def shell(proto):
    """A copy of ``proto`` without its initializers (field by field: no weight is copied)."""
    import onnx

    out = onnx.ModelProto()
    out.ir_version, out.producer_name, out.producer_version = proto.ir_version, proto.producer_name, \
        proto.producer_version
    out.doc_string = proto.doc_string
    out.metadata_props.extend(proto.metadata_props)
    out.opset_import.extend(proto.opset_import)
    g = out.graph
    g.name, g.doc_string = proto.graph.name, proto.graph.doc_string
    for part in ("input", "output", "value_info", "node"):
        getattr(g, part).extend(getattr(proto.graph, part))
    return out


def outer_inputs(node) -> list[str]:
    """The tensors ``node`` reads from its graph: its inputs and what its subgraphs (If, Loop) read from outside."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            inner = {i.name for i in g.input} | {t.name for t in g.initializer}
            for sub in g.node:
                for n in outer_inputs(sub):
                    if n not in inner and n not in names:
                        names.append(n)
                inner.update(sub.output)
            names.extend(o.name for o in g.output if o.name not in inner and o.name not in names)
    return names
