"""Packed projections computed part by part in the fp32 artifacts (bertc/optimize/projections.py)."""
import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bertc.build import build_model
from bertc.export.onnx import write_onnx
from bertc.inputs import make_inputs
from bertc.optimize.lower import lower_model
from bertc.optimize.projections import ColumnSlice, separate_projections
from bertc.optimize.runtime import ort_session
from bertc.spec import load_spec

FIXTURES = Path(__file__).parent / "fixtures"


def _modernbert(**encoder):
    return {"name": "modernbert_projections", "encoder": {
        "type": "modernbert", "vocab_size": 64, "hidden_size": 16, "num_layers": 3, "num_attention_heads": 2,
        "intermediate_size": 24, "max_sequence_length": 12, "local_attention": 4, "global_attn_every_n_layers": 3,
        **encoder}, "head": {"type": "classifier", "num_classes": 3, "pooling": "mean"}}


CASES = {
    # no biases (ModernBERT-base): qkv and GLU as MatMul -> Split, in every layer
    "modernbert": (_modernbert(), 2 * 3),
    # biases everywhere: MatMul -> Add -> Split
    "modernbert_biases": (_modernbert(attention_bias=True, mlp_bias=True, norm_bias=True), 2 * 3),
    # DeBERTa-v3's disentangled attention: one packed query / key / value projection per layer
    "deberta": (json.loads((FIXTURES / "disentangled" / "deberta_v3_shared.json").read_text()), None),
}


def _run(path, inputs):
    session = ort_session(path)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))


def _splits_of_products(graph) -> int:
    """How many Splits read a MatMul's product (directly or through a bias Add)."""
    producer = {o: n for n in graph.node for o in n.output}
    count = 0
    for node in graph.node:
        if node.op_type == "Split":
            src = producer.get(node.input[0])
            if src is not None and src.op_type == "Add":
                src = next((producer[i] for i in src.input if i in producer), None)
            count += src is not None and src.op_type == "MatMul"
    return count


@pytest.mark.parametrize("case", sorted(CASES))
def test_parts_give_the_same_outputs_without_a_second_copy_of_the_weights(case, tmp_path):
    source, expected = CASES[case]
    spec = load_spec(source)    # the spec as a dict: no file needed
    built = build_model(spec)
    low = lower_model(built, split_weights=True)
    before = low.proto.SerializeToString()
    proto, weights, n = separate_projections(low.proto, low.weights)
    assert low.proto.SerializeToString() == before                   # the packed form is left for int8
    assert n == (expected if expected is not None else _splits_of_products(low.proto.graph)) and n > 0
    assert _splits_of_products(proto.graph) == 0
    # each packed weight (and bias) replaced by its column slices: no second copy
    producer = {o: node for node in low.proto.graph.node for o in node.output}

    def product(name):   # the MatMul behind a Split's input (through a bias Add)
        node = producer.get(name)
        if node is not None and node.op_type == "Add":
            node = next((producer[i] for i in node.input if i in producer), None)
        return node if node is not None and node.op_type == "MatMul" else None

    packed = {product(node.input[0]).input[1] for node in low.proto.graph.node
              if node.op_type == "Split" and product(node.input[0]) is not None}
    names = {name for name, _ in weights} | {t.name for t in proto.graph.initializer}
    assert packed and not packed & names
    total = lambda m, ws: sum(int(np.prod(w.shape)) for _, w in ws) + sum(
        int(np.prod(t.dims)) for t in m.graph.initializer if t.data_type == TensorProto.FLOAT)
    assert total(proto, weights) == total(low.proto, low.weights)
    assert all(isinstance(w, ColumnSlice) for name, w in weights if "[" in name)   # big ones: read when written
    write_onnx(low.proto, low.weights, tmp_path / "packed.onnx")
    write_onnx(proto, weights, tmp_path / "parts.onnx")
    rng = np.random.default_rng(0)
    seq = min(spec.encoder.max_sequence_length, 10)
    mask = np.ones((3, seq), np.int32)
    mask[1, 6:] = 0
    mask[2, [2, 5]] = 0
    inputs = {k: v.astype(np.int32) for k, v in make_inputs(spec, 3, seq, rng, mask=mask).items()}
    want, got = _run(tmp_path / "packed.onnx", inputs), _run(tmp_path / "parts.onnx", inputs)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-6, rtol=0, err_msg=name)


def _graph(extra_reader: bool, axis: int = -1):
    w = np.arange(24, dtype=np.float32).reshape(4, 6) / 10
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("Split", ["y", "sizes"], ["a", "b"], axis=axis)]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "b")]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["y"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])], outputs,
                              [numpy_helper.from_array(np.array([2, 4], np.int64), "sizes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), [("w", w)]


@pytest.mark.parametrize("extra_reader, axis", [(True, -1), (False, 1), (False, 0)])
def test_a_product_read_elsewhere_or_split_on_another_axis_is_left_alone(extra_reader, axis):
    proto, weights = _graph(extra_reader, axis)
    out, out_weights, n = separate_projections(proto, weights)
    assert n == 0 and out is proto and out_weights == weights


def test_unequal_parts_from_the_split_sizes(tmp_path):
    proto, weights = _graph(False)
    out, out_weights, n = separate_projections(proto, weights)
    assert n == 1 and [tuple(w.shape) for _, w in out_weights] == [(4, 2), (4, 4)]
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    write_onnx(out, out_weights, tmp_path / "parts.onnx")
    got = _run(tmp_path / "parts.onnx", {"x": x})
    y = x @ weights[0][1]
    np.testing.assert_allclose(got["a"], y[:, :2], rtol=1e-6)
    np.testing.assert_allclose(got["b"], y[:, 2:], rtol=1e-6)


def test_a_column_slice_reads_its_columns_when_written(tmp_path):
    """Weights above the lowering's split size stay beside the graph: their slices are read at write time, from
    a Keras variable or an array, and come out contiguous."""
    import keras

    w = np.arange(5 * 900, dtype=np.float32).reshape(5, 900)
    variable = keras.Variable(w)
    for source in (w, variable):
        part = ColumnSlice(source, 300, 750)
        assert part.shape == (5, 450) and part.dtype == np.float32 and part.size == 2250
        got = part.numpy()
        assert got.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(got, w[:, 300:750])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"]),
                               helper.make_node("Split", ["y"], ["a", "b", "c"], axis=-1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "abc"])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, weights, n = separate_projections(proto, [("w", variable)])
    assert n == 1 and [type(v) for _, v in weights] == [ColumnSlice] * 3   # equal parts: the Split has no sizes
    write_onnx(out, weights, tmp_path / "parts.onnx")
    x = np.random.default_rng(2).standard_normal((2, 5)).astype(np.float32)
    got = _run(tmp_path / "parts.onnx", {"x": x})
    for k, name in enumerate("abc"):
        np.testing.assert_allclose(got[name], x @ w[:, 300 * k:300 * (k + 1)], rtol=1e-5)


def test_a_bias_beside_the_graph_is_sliced_too(tmp_path):
    """At full size a packed bias can sit beside the graph with the weights (DeBERTa-v3-base's 2,304 q/k/v
    biases): it is sliced like the kernel."""
    w = np.random.default_rng(3).standard_normal((5, 6)).astype(np.float32)
    b = np.arange(6, dtype=np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"]),
                               helper.make_node("Split", ["z"], ["p", "q"], axis=-1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "pq"])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, weights, n = separate_projections(proto, [("w", w), ("b", b)])
    assert n == 1 and sorted(name for name, _ in weights) == ["b[0:3]", "b[3:6]", "w[0:3]", "w[3:6]"]
    write_onnx(out, weights, tmp_path / "parts.onnx")
    x = np.random.default_rng(4).standard_normal((2, 5)).astype(np.float32)
    got = _run(tmp_path / "parts.onnx", {"x": x})
    np.testing.assert_allclose(np.concatenate([got["p"], got["q"]], -1), x @ w + b, rtol=1e-5, atol=1e-6)
