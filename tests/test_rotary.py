"""The ``rotary`` position scheme (RoPE, rotate_half): the maths against numpy, every backend through the
CLI, per-layer theta, the pruned last layer, the portable path, and the spec rules."""
import copy
import json
import math
from typing import Literal

import numpy as np
import pytest

from bertc.build import build_model
from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC
from bertc.inputs import make_inputs
from bertc.optimize.lower import lower_model
from bertc.optimize.onnx_artifacts import ort_session
from bertc.spec import load_spec

ATOL = 1e-4

SPEC = {
    "name": "rotary_tiny",
    "seed": 3,
    "encoder": {
        "type": "scaffold",
        "hidden_size": 16,
        "num_layers": 2,
        "embedding": {"type": "custom", "vocab_size": 50, "max_sequence_length": 12},
        "position": {"type": "rotary", "layer_theta": [10000.0, 160000.0]},
        # layer 0: canonical multi-head attention; layer 1: pre-norm talking heads (both lowerings rotate)
        "hidden": [
            {"type": "transformer", "num_attention_heads": 2, "intermediate_size": 32, "activation": "gelu"},
            {"type": "scaffold", "norm_first": True,
             "attention": {"type": "talking_heads", "num_heads": 2},
             "feedforward": {"type": "dense", "intermediate_size": 32, "activation": "gelu_tanh"}},
        ],
        "final_layer_norm": True,
    },
    "head": {"type": "classifier", "num_classes": 3},
}


def spec_with(**encoder):
    d = copy.deepcopy(SPEC)
    d["encoder"].update(encoder)
    return d


def sharpened(model, seed=0):
    """Query/key kernels resampled so that attention is sharp (at initialization it is nearly uniform and
    a wrong rotation would hardly show); word embeddings, every other kernel and the biases O(1)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if w.path.endswith("word_embeddings"):
            w.assign(rng.normal(0, 1, size=w.shape).astype(np.float32))
        elif w.path.endswith("softmax_weight"):    # talking heads: mixing near the identity, not near 0
            w.assign((np.eye(w.shape[0]) + rng.normal(0, 0.3, size=w.shape)).astype(np.float32))
        elif w.path.endswith("kernel") and len(w.shape) == 2:
            scale = 3 if w.path.endswith(("/query/kernel", "/key/kernel")) else 1
            w.assign(rng.normal(0, scale / np.sqrt(w.shape[0]), size=w.shape).astype(np.float32))
        elif w.path.endswith("bias"):
            w.assign(rng.normal(0, 0.5, size=w.shape).astype(np.float32))
    return model


def cases(spec):
    """Right-padded rows and random non-contiguous 0/1 masks, 1 to max_sequence_length tokens."""
    out = []
    for b, s in [(1, 1), (3, 7), (2, spec.encoder.max_sequence_length)]:
        rng = np.random.default_rng([b, s])
        inputs = make_inputs(spec, b, s, rng)
        if s > 1:
            mask = rng.integers(0, 2, size=(b, s)).astype(np.int32)
            mask[:, 0] = 1
            mask[0] = inputs["input_mask"][0]
            inputs["input_mask"] = mask
        out.append(inputs)
    return out


def max_abs_diff(built, proto, inputs_list) -> float:
    sess = ort_session(proto.SerializeToString())
    names = built.signature.output_names
    worst = 0.0
    for inputs in inputs_list:
        ref = built.model(inputs, training=False)
        for name, got in zip(names, sess.run(names, inputs)):
            assert got.shape == tuple(ref[name].shape)
            worst = max(worst, float(np.max(np.abs(np.asarray(ref[name]) - got))))
    return worst


# --- the maths --------------------------------------------------------------------------------------

def numpy_rope_attention(x, mask, weights, num_heads, theta):
    """One self-attention layer with rotary positions, in float64 numpy (GPT-NeoX / ModernBERT rotate_half)."""
    b, s, h = x.shape
    d = h // num_heads
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2) / d)
    angles = np.arange(s)[:, None] * inv_freq[None, :]
    emb = np.concatenate([angles, angles], axis=-1)                       # (S, D)
    cos, sin = np.cos(emb), np.sin(emb)

    def heads(t):
        return t.reshape(b, s, num_heads, d).transpose(0, 2, 1, 3)

    def rope(t):
        half = np.concatenate([-t[..., d // 2:], t[..., :d // 2]], axis=-1)
        return t * cos + half * sin

    q, k, v = (heads(x @ weights[n][0] + weights[n][1]) for n in ("query", "key", "value"))
    logits = rope(q) @ rope(k).transpose(0, 1, 3, 2) / math.sqrt(d)
    logits = logits + (1.0 - mask[:, None, None, :]) * -10000.0
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, h)
    return context @ weights["attention_output"][0] + weights["attention_output"][1]


@pytest.mark.parametrize("theta", [10000.0, 500.0])
def test_keras_attention_is_rope_attention(theta):
    """MultiHeadAttention with the rotary scheme's (cos, sin) against a float64 numpy RoPE attention."""
    import tensorflow as tf

    from bertc.components.attention import MultiHeadAttention, MultiHeadAttentionSpec
    from bertc.components.encoders import AttentionBias
    from bertc.components.positions import RotaryPositions, RotarySpec

    b, s, h, n = 2, 9, 16, 2
    rng = np.random.default_rng(1)
    x = rng.normal(size=(b, s, h)).astype(np.float32)
    mask = np.ones((b, s), np.int32)
    mask[1, 6:] = 0
    scheme = RotaryPositions(spec=RotarySpec(theta=theta), hidden_size=h, num_heads=n, name="position")
    layer = MultiHeadAttention(spec=MultiHeadAttentionSpec(num_heads=n, dropout_rate=0.0), hidden_size=h,
                               name="attention")
    layer.build((None, None, h))
    weights = {}
    for name in ("query", "key", "value", "attention_output"):
        dense = getattr(layer, name)
        dense.kernel.assign(rng.normal(0, 2 / np.sqrt(h), size=(h, h)).astype(np.float32))
        dense.bias.assign(rng.normal(0, 0.5, size=(h,)).astype(np.float32))
        weights[name] = (dense.kernel.numpy().astype(np.float64), dense.bias.numpy().astype(np.float64))
    (pair,) = scheme({"input_mask": tf.constant(mask)})["rotary"]
    assert pair[0].shape == (s, h // n) and pair[1].shape == (s, h // n)
    got = layer(tf.constant(x), AttentionBias()(tf.constant(mask)), training=False, rotary=pair).numpy()
    want = numpy_rope_attention(x.astype(np.float64), mask.astype(np.float64), weights, n, theta)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    plain = layer(tf.constant(x), AttentionBias()(tf.constant(mask)), training=False).numpy()
    assert np.max(np.abs(plain - want)) > 1e-2          # the rotation is really applied


# --- every backend, through the CLI ------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rotary")
    path = tmp / "rotary.json"
    path.write_text(json.dumps(SPEC))
    out = tmp / "out"
    assert main(["build", str(path), "-o", str(out), "-q"]) == 0
    return json.loads((out / "report.json").read_text())


def test_cli_build_passes_parity_on_every_backend(cli_build):
    report = cli_build
    assert report["status"] == "passed"
    assert {"onnx", "onnx_optimized", "onnx_int8", "tflite"} <= set(report["artifacts"])
    parity = report["parity"]
    assert {"onnx_cpu", "onnx_optimized_cpu", "onnx_int8_cpu", "tflite"} <= set(parity["backends"])
    assert parity["passed"] and all(r["passed"] for r in parity["results"])
    worst = {r["backend"]: r["max_abs"] for r in parity["results"]}
    assert max(v for k, v in worst.items() if k != "onnx_int8_cpu") <= ATOL, worst
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["padding_invariance"]["passed"] and checks["masked_invariance"]["passed"]
    assert checks["param_count"]["passed"]          # the scheme has no weights


def test_cli_build_lowers_rotary_onto_fused_operators(cli_build):
    fusion = cli_build["fusion"]
    assert fusion["lowered"] and fusion["pruned"] and fusion["not_lowered"] == []
    assert fusion["structural_check"]["passed"]
    layers = fusion["layers"]
    assert layers["position"]["position"].startswith("rotary: cos/sin caches")
    assert layers["layer_0"]["attention"] == "RotaryEmbedding + MultiHeadAttention"
    assert layers["layer_1"]["attention"].startswith("RotaryEmbedding + MatMul+Einsum+Softmax")
    ops = cli_build["artifacts"]["onnx_optimized"]["op_counts"]
    assert ops["com.microsoft.RotaryEmbedding"] == 4            # q and k of both layers
    assert ops["com.microsoft.MultiHeadAttention"] == 1         # layer 1 is talking heads


# --- the optimized graph against Keras, with sharp attention ------------------------------------------

@pytest.mark.parametrize("head", [None, {"type": "pretrainer", "num_token_predictions": 3, "num_classes": 2}],
                         ids=["classifier", "pretrainer"])
def test_pruned_last_layer_rotates_its_query_rows_with_their_own_positions(head):
    """The pruned last layer computes the first token's query row (a classifier) or the first token and the
    masked positions (a pretrainer): each rotated with its own position, so pruned == unpruned == Keras."""
    d = spec_with(hidden=[SPEC["encoder"]["hidden"][0]])
    if head:
        d["head"] = head
    spec = load_spec(d)
    built = build_model(spec)
    sharpened(built.model)
    full, pruned = lower_model(built, prune=False), lower_model(built, prune=True)
    assert pruned.pruned and not full.pruned
    assert pruned.coverage["layers"]["layer_1"]["attention"] == "RotaryEmbedding + MultiHeadAttention (query rows)"
    inputs = cases(spec)
    if head:
        for x in inputs:
            bs, s = x["input_word_ids"].shape
            rng = np.random.default_rng(s)
            x["masked_lm_positions"] = rng.integers(0, s, size=(bs, 3)).astype(np.int32)
    assert max_abs_diff(built, full.proto, inputs) <= ATOL
    assert max_abs_diff(built, pruned.proto, inputs) <= ATOL


def test_layer_theta_gives_each_layer_its_theta():
    """Two thetas really change the outputs against one theta (same weights: the scheme has none), and a
    layer_theta of one repeated value is that theta."""
    outputs = {}
    inputs = cases(load_spec(SPEC))[-1]
    for key, position in {"two": {"type": "rotary", "layer_theta": [10000.0, 160000.0]},
                          "one": {"type": "rotary", "theta": 10000.0},
                          "repeated": {"type": "rotary", "layer_theta": [10000.0, 10000.0]}}.items():
        built = build_model(load_spec(spec_with(position=position)))
        sharpened(built.model)
        outputs[key] = np.asarray(built.model(inputs, training=False)["logits"])
        if key == "two":
            assert built.position.thetas == [10000.0, 160000.0]
            assert [built.position.theta_index(i) for i in range(2)] == [0, 1]
            assert max_abs_diff(built, lower_model(built).proto, cases(built.spec)) <= ATOL
    assert np.max(np.abs(outputs["two"] - outputs["one"])) > 1e-3
    np.testing.assert_array_equal(outputs["repeated"], outputs["one"])


def test_plugin_attention_takes_the_portable_path_with_the_rotary_tables():
    """A plug-in attention that changes the maths (no lowering of its own) is converted by tf2onnx with this
    layer's cos / sin (S, D) as two more traced inputs, and still matches Keras."""
    from bertc.components.attention import AttentionSpecBase, MultiHeadAttention
    from bertc.components.common import serializable
    from bertc.registry import ATTENTION

    class HalvedSpec(AttentionSpecBase):
        type: Literal["rotary_test_halved"] = "rotary_test_halved"

    @ATTENTION.register("rotary_test_halved", spec=HalvedSpec, description="test plug-in without ONNX lowering")
    @serializable
    class HalvedLogits(MultiHeadAttention):
        spec_cls = HalvedSpec

        def mix_logits(self, logits):
            return 0.5 * logits

    try:
        block = {"type": "scaffold", "attention": {"type": "rotary_test_halved", "num_heads": 2},
                 "feedforward": {"type": "dense", "intermediate_size": 32}}
        spec = load_spec(spec_with(hidden=[block]))
        built = build_model(spec)
        sharpened(built.model)
        lowered = lower_model(built)
        assert [n.split(" (")[0] for n in lowered.not_lowered] == ["layer_0/attention", "layer_1/attention"]
        assert lowered.coverage["layers"]["layer_0"]["attention"].startswith("portable: ")
        assert max_abs_diff(built, lowered.proto, cases(spec)) <= ATOL
    finally:
        ATTENTION.unregister("rotary_test_halved")


# --- the spec rules ----------------------------------------------------------------------------------

@pytest.mark.parametrize("change, where", [
    ({"embedding": {"type": "standard", "vocab_size": 50, "max_sequence_length": 12}},
     "$.encoder.embedding is a 'standard' embedding"),
    ({"embedding": {"type": "custom", "vocab_size": 50, "max_sequence_length": 12, "use_position_embeddings": True}},
     "$.encoder.embedding.use_position_embeddings is true"),
], ids=["standard_embedding", "custom_with_positions"])
def test_rotary_with_a_learned_position_table_is_refused(change, where, tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec_with(**change)))
    assert main(["build", str(path), "-o", str(tmp_path / "out"), "-q"]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert "$.encoder.position: rotary positions replace learned absolute positions" in err
    assert where in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bert_encoder_with_rotary_is_refused(tmp_path, capsys):
    d = {"name": "bert_rotary", "encoder": {"type": "bert", "vocab_size": 50, "hidden_size": 16, "num_layers": 2,
                                            "num_attention_heads": 2, "intermediate_size": 32,
                                            "max_sequence_length": 8, "position": {"type": "rotary"}}}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    assert main(["build", str(path), "-o", str(tmp_path / "out"), "-q"]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert "$.encoder.position: rotary positions replace" in err and "$.encoder is a 'bert' encoder" in err


def test_layer_theta_length_and_values_are_checked(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec_with(position={"type": "rotary", "layer_theta": [10000.0, 160000.0, 10000.0]})))
    assert main(["build", str(path), "-o", str(tmp_path / "out"), "-q"]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert "$.encoder.position.layer_theta: has 3 values but the encoder has 2 layers" in err
    assert "$.encoder.num_layers" in err
    path.write_text(json.dumps(spec_with(position={"type": "rotary", "theta": 0.0, "layer_theta": [1.0, -2.0]})))
    assert main(["validate", str(path)]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert "$.encoder.position.theta" in err and "$.encoder.position.layer_theta[1]" in err


def test_odd_head_size_is_refused(capsys, tmp_path):
    d = spec_with(hidden_size=18, hidden=[{"type": "transformer", "num_attention_heads": 2, "intermediate_size": 32}])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    assert main(["validate", str(path)]) == EXIT_BAD_SPEC
    assert "$.encoder.position: rotary positions need an even head size" in capsys.readouterr().err


def test_reduced_clone_keeps_the_first_layers_thetas():
    """A large model's structural check runs on a reduced clone: its layer_theta is cut with its layers."""
    from bertc.build import scaled_down

    thetas = [160000.0, 10000.0, 10000.0, 160000.0, 10000.0, 10000.0]
    d = spec_with(num_layers=6, hidden=[SPEC["encoder"]["hidden"][0]],
                  position={"type": "rotary", "layer_theta": thetas})
    clone = scaled_down(load_spec(d), layers=2, vocab=50, seq=8)
    assert clone is not None and clone.encoder.num_layers == 2
    assert clone.encoder.position.layer_theta == thetas[:2]
