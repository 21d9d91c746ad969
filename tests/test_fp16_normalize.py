"""The fp16 artifacts computed a sentence embedding's L2 normalisation in fp16: once the pooled vector's norm passes
256 its sum of squares overflows (inf), and the embedding normalises to zeros (cosine 0 against Keras on CUDA;
ORT's CPU provider runs those ops in fp32, so CPU parity never showed it). The fp16 graphs now cast the vector to
fp32 for the normalisation. onnx's reference evaluator computes fp16 as fp16, as CUDA does."""
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from bertc.components.heads import FP32_NORMALIZE, lower_normalize
from bertc.onnx_graph import GraphBuilder
from bertc.optimize.onnx_artifacts import normalize_in_fp32


def _normalize_graph():
    g = GraphBuilder("normalize")
    x = g.add_input("x", TensorProto.FLOAT, ["batch", 8])
    with g.scope("head"):
        y = g.node("Identity", [x])     # the pooled vector, made inside the graph as in an artifact
        out = lower_normalize(types.SimpleNamespace(g=g), y)
    g.add_output(out, "sentence_embedding", TensorProto.FLOAT, ["batch", 8])
    return g.model(17)


def _fp16(proto):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(proto, keep_io_types=True)


def _sorted(model):
    """``model`` with its nodes in topological order (the converter appends its casts; ORT sorts, the reference
    evaluator does not)."""
    known = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending, order = list(model.graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        assert ready, "a cycle"
        for n in ready:
            order.append(n)
            known.update(n.output)
            pending.remove(n)
    del model.graph.node[:]
    model.graph.node.extend(order)
    return model


def test_fp16_normalisation_of_a_long_vector():
    from onnx.reference import ReferenceEvaluator

    x = np.full((2, 8), 300.0, np.float32)       # norm 849: its square sum (720,000) is inf in fp16
    x[1] = [0, 0, 0, 0, 0, 0, 0, 0]               # a zero vector stays zero
    want = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    plain = _fp16(_normalize_graph())
    broken = ReferenceEvaluator(_sorted(plain)).run(None, {"x": x})[0]
    assert np.abs(broken[0]).max() == 0.0          # what the fp16 artifact gave: zeros instead of 0.354
    half = _fp16(_normalize_graph())
    assert normalize_in_fp32(half) == 1
    onnx.checker.check_model(_sorted(half), full_check=True)
    got = ReferenceEvaluator(half).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert not np.isnan(got).any() and np.abs(got[1]).max() == 0.0
    assert [n.op_type for n in half.graph.node if FP32_NORMALIZE in n.name][0] == "Cast"


@pytest.fixture(scope="module")
def st_fp16_build(tmp_path_factory):
    from bertc.cli import main

    work = tmp_path_factory.mktemp("stfp16")
    spec = work / "st.json"
    assert main(["import", "tests/fixtures/hf/st_bert_mean_norm", "-o", str(spec)]) == 0
    assert main(["build", str(spec), "-o", str(work / "out"), "--no-tflite", "-q",
                 "--variants", "onnx_fp16,onnx_packed_fp16"]) == 0
    return work / "out"


@pytest.mark.parametrize("name", ["model.optimized.fp16.onnx", "model.packed.fp16.onnx"])
def test_built_fp16_artifacts_normalise_in_fp32(st_fp16_build, name):
    model = onnx.load(st_fp16_build / name)
    found = []

    def walk(graph):
        for n in graph.node:
            if FP32_NORMALIZE in n.name.split("/") and n.op_type == "Cast":
                found.append(n)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
    walk(model.graph)
    assert found and all(n.attribute[0].i == TensorProto.FLOAT for n in found)
