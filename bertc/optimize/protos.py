"""ONNX model protos as the int8 tuning handles them: a graph whose large weights travel beside it."""
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
