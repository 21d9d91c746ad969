"""Residual biases folded into the layer norm before them in the fp32 artifacts (bertc/optimize/bias_folding.py)."""
import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bertc.build import build_model
from bertc.export.onnx import write_onnx
from bertc.inputs import make_inputs
from bertc.optimize.bias_folding import fold_residual_biases
from bertc.optimize.lower import lower_model
from bertc.optimize.projections import separate_projections
from bertc.optimize.runtime import ort_session
from bertc.spec import load_spec

ROOT = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures"

CASES = {
    # BERT, every token read: in each layer the attention output's bias (residual: the norm before the layer,
    # read by the fused Attention) and the feedforward output's (residual: the attention norm, read by the
    # intermediate MatMul + BiasGelu)
    "bert_tokens": ({**json.loads((ROOT / "specs" / "token_classifier.json").read_text()),
                     "encoder": {**json.loads((ROOT / "specs" / "token_classifier.json").read_text())["encoder"],
                                 "norm_first": False}}, 2 * 2),
    # ALBERT: one layer's weights for all three. Layer 0's attention residual is the embedding projection (no
    # norm), and the classifier's last layer reads the first token's row of its input (a Gather, not a
    # projection): both stay; the shared constants are never changed, each folded one is new
    "albert_shared": (json.loads((ROOT / "specs" / "albert.json").read_text()), 4),
    # DeBERTa-v3's q / k / v as three MatMul + Add after separate_projections; token classifier (no pruning)
    "deberta": ({**json.loads((FIXTURES / "disentangled" / "deberta_v3_shared.json").read_text()),
                 "head": {"type": "token_classifier", "num_classes": 3}}, None),
}


def _randomize(model, seed=0):
    """Non-zero biases and betas, gammas away from 1: a fold that dropped or doubled a bias shows."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(int(d) for d in v.shape)
        if v.path.endswith(("bias", "beta")):
            v.assign(rng.normal(0.0, 0.5, shape).astype(np.float32))
        elif v.path.endswith("gamma"):
            v.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))


def _run(path, inputs):
    session = ort_session(path)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_folded_biases_give_the_same_outputs_with_two_adds_fewer_a_layer(case, tmp_path):
    source, expected = CASES[case]
    spec = load_spec(source)    # the spec as a dict: no file needed
    built = build_model(spec)
    _randomize(built.model)
    low = lower_model(built, split_weights=True)
    proto, weights, _ = separate_projections(low.proto, low.weights)
    before = proto.SerializeToString()
    values = {name: np.array(w.numpy() if hasattr(w, "numpy") else w) for name, w in weights}
    folded, folded_weights, n = fold_residual_biases(proto, weights)
    assert proto.SerializeToString() == before                        # the int8 artifacts read the unfolded form
    for name, w in weights:                                           # nor is any weight changed in place
        np.testing.assert_array_equal(np.asarray(w.numpy() if hasattr(w, "numpy") else w), values[name])
    layers = spec.encoder.num_layers
    assert n == (expected if expected is not None else 2 * layers) and n > 0
    adds = lambda m: sum(node.op_type == "Add" for node in m.graph.node)
    assert adds(folded) == adds(proto) - n
    names = [t.name for t in folded.graph.initializer]
    assert len(names) == len(set(names))                              # a constant folded twice is written once
    write_onnx(proto, weights, tmp_path / "unfolded.onnx")
    write_onnx(folded, folded_weights, tmp_path / "folded.onnx")
    seq = min(spec.encoder.max_sequence_length, 10)
    mask = np.ones((3, seq), np.int32)
    mask[1, 6:] = 0
    mask[2, [2, 5]] = 0
    inputs = {k: v.astype(np.int32) for k, v in make_inputs(spec, 3, seq, np.random.default_rng(1), mask=mask).items()}
    want, got = _run(tmp_path / "unfolded.onnx", inputs), _run(tmp_path / "folded.onnx", inputs)
    keras_out = built.model(inputs)
    keras_out = keras_out if isinstance(keras_out, dict) else {"logits": keras_out}
    for name in want:
        scale = max(1.0, float(np.abs(want[name]).max()))
        np.testing.assert_allclose(got[name], want[name], atol=2e-6 * scale, rtol=0, err_msg=name)
        np.testing.assert_allclose(got[name], np.asarray(keras_out[name]), atol=1e-5 * scale, rtol=0, err_msg=name)


def test_a_pre_norm_block_has_no_norm_before_its_residual():
    """Pre-norm (norm_first): the residual stream is the Sums themselves, so nothing is folded."""
    spec = load_spec(json.loads((ROOT / "specs" / "token_classifier.json").read_text()))
    low = lower_model(build_model(spec), split_weights=True)
    folded, _, n = fold_residual_biases(low.proto, low.weights)
    assert n == 0 and folded is low.proto


def _graph(read_also: str = ""):
    """x -> LayerNorm -> r; Sum(MatMul(h, w) + b, r) -> y; r also read by MatMul(r, v) + c -> z, and by
    ``read_also``: "output" (r is a graph output), "relu" (a reader that is not a projection), "nobias" (a
    projection without a bias of its own)."""
    rng = np.random.default_rng(2)
    consts = {n: rng.normal(0, 0.5, s).astype(np.float32) for n, s in
              (("gamma", (4,)), ("beta", (4,)), ("w", (4, 4)), ("b", (4,)), ("v", (4, 3)), ("c", (3,)), ("u", (4, 2)))}
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["r"], axis=-1),
             helper.make_node("MatMul", ["h", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["mb"]),
             helper.make_node("Sum", ["mb", "r"], ["y"]),
             helper.make_node("MatMul", ["r", "v"], ["rv"]), helper.make_node("Add", ["rv", "c"], ["z"])]
    outputs = ["y", "z"]
    if read_also == "output":
        outputs.append("r")
    elif read_also == "relu":
        nodes.append(helper.make_node("Relu", ["r"], ["relu"]))
        outputs.append("relu")
    elif read_also == "nobias":
        nodes.append(helper.make_node("MatMul", ["r", "u"], ["ru"]))
        outputs.append("ru")
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 4]) for n in ("x", "h")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(a, n) for n, a in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_fold_is_exact_where_every_other_reader_is_a_projection_with_a_bias(tmp_path):
    proto = _graph()
    folded, _, n = fold_residual_biases(proto, [])
    assert n == 1 and [node.op_type for node in folded.graph.node].count("Add") == 1
    rng = np.random.default_rng(3)
    feeds = {n: rng.normal(0, 1, (2, 4)).astype(np.float32) for n in ("x", "h")}
    (tmp_path / "a.onnx").write_bytes(proto.SerializeToString())
    (tmp_path / "b.onnx").write_bytes(folded.SerializeToString())
    want, got = _run(tmp_path / "a.onnx", feeds), _run(tmp_path / "b.onnx", feeds)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-6, err_msg=name)


@pytest.mark.parametrize("read_also", ["output", "relu", "nobias"])
def test_a_norm_read_by_anything_else_is_left_alone(read_also):
    proto = _graph(read_also)
    folded, weights, n = fold_residual_biases(proto, [])
    assert n == 0 and folded is proto and weights == []
