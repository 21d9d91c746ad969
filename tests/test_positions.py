"""Position schemes (``encoder.position``): absolute (offset, ids from the mask), relative_bias, and a
position scheme and a head added as plug-ins, each one class and one registration."""
import json
import math
from typing import Literal

import numpy as np
import pytest

from bertc.build import build_model
from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC
from bertc.inputs import make_inputs
from bertc.spec import load_spec
from conftest import tiny_bert


def _relative_bucket_reference(relative, num_buckets=32, max_distance=128):
    """transformers' MPNet / T5 ``relative_position_bucket`` (bidirectional), in numpy float32 as torch computes it."""
    ret = np.zeros_like(relative)
    n = -relative
    num_buckets //= 2
    ret += (n < 0).astype(relative.dtype) * num_buckets
    n = np.abs(n)
    max_exact = num_buckets // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        val = np.log(n.astype(np.float32) / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
    val = np.where(n < max_exact, 0, val * np.float32(num_buckets - max_exact))   # log(0) is never used
    val = max_exact + val.astype(relative.dtype)
    val = np.minimum(val, num_buckets - 1)
    return ret + np.where(n < max_exact, n, val)


@pytest.mark.parametrize("buckets,distance", [(32, 128), (16, 20)])
def test_relative_buckets_are_transformers_buckets(buckets, distance):
    from bertc.components.positions import RelativeBiasSpec, bucket_lookup, relative_buckets

    length = 300
    positions = np.arange(length)
    relative = (positions[None, :] - positions[:, None]).astype(np.int32)     # memory - context
    with np.errstate(invalid="ignore"):
        expected = _relative_bucket_reference(relative, buckets, distance)
    spec = RelativeBiasSpec(num_buckets=buckets, max_distance=distance)
    assert np.array_equal(relative_buckets(spec, relative), expected)
    lookup = bucket_lookup(spec, length)
    assert np.array_equal(lookup[relative + length - 1], expected)


def _relative_spec(**position):
    d = tiny_bert()
    d["encoder"].update(max_sequence_length=12, position={"type": "relative_bias", "num_buckets": 8,
                                                          "max_distance": 10, **position})
    return d


def test_relative_bias_is_one_table_shared_by_every_layer():
    built = build_model(load_spec(_relative_spec()))
    tables = [w for w in built.model.weights if "relative_attention_bias" in w.path]
    assert [w.path for w in tables] == ["position/relative_attention_bias"] and tuple(tables[0].shape) == (8, 2)
    assert built.position.__class__.__name__ == "RelativeBias"
    # the bias the scheme computes is the table gathered at transformers' buckets, (1, N, S, S)
    table = np.random.default_rng(1).normal(0, 3, size=(8, 2)).astype(np.float32)
    tables[0].assign(table)
    mask = np.ones((1, 7), np.int32)
    got = np.asarray(built.position({"input_word_ids": mask, "input_mask": mask})["attention_bias"])
    positions = np.arange(7)
    buckets = _relative_bucket_reference((positions[None, :] - positions[:, None]).astype(np.int32), 8, 10)
    assert got.shape == (1, 2, 7, 7) and np.allclose(got[0], np.transpose(table[buckets], (2, 0, 1)))
    # and every layer adds it: the outputs move with the table (relative to their size)
    inputs = make_inputs(built.spec, 2, 6, np.random.default_rng(0), lengths=[6, 5])
    before = np.asarray(built.model(inputs, training=False)["logits"])
    tables[0].assign(-table)
    after = np.asarray(built.model(inputs, training=False)["logits"])
    assert np.abs(after - before).max() > 1e-3 * np.abs(before).max()   # fp32 noise is ~1e-7 of it


def _build(tmp_path, d, name="spec"):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(d))
    out = tmp_path / f"{name}_out"
    rc = main(["build", str(path), "-o", str(out), "-q"])
    kept = out if out.exists() else tmp_path / f"{name}_out.failed"
    report = json.loads((kept / "report.json").read_text()) if (kept / "report.json").exists() else {}
    return rc, report, out


def _assert_every_backend_passed(report):
    assert report["status"] == "passed"
    backends = {r["backend"] for r in report["parity"]["results"]}
    assert {"onnx_cpu", "onnx_optimized_cpu", "onnx_int8_cpu", "tflite"} <= backends
    assert all(r["passed"] for r in report["parity"]["results"])
    fp32 = [r for r in report["parity"]["results"] if r["precision"] == "fp32"]
    assert max(r["max_abs"] for r in fp32) <= 1e-5


@pytest.mark.slow
def test_relative_bias_classifier_builds_with_fused_attention_and_parity(tmp_path):
    rc, report, out = _build(tmp_path, _relative_spec())
    assert rc == 0, report.get("error")
    _assert_every_backend_passed(report)
    fusion = report["fusion"]
    assert fusion["layers"]["position"]["position"].startswith("relative bias")
    # every row: the packed Attention with the bias as its attention_bias; the pruned last layer (the
    # classifier reads the first token only, bias rows too): Q/K/V MatMuls + MultiHeadAttention
    assert fusion["layers"]["layer_0"]["attention"] == "Attention (attention_bias: position bias)"
    assert fusion["layers"]["layer_1"]["attention"] == "MultiHeadAttention (attention_bias: position bias; first token)"
    assert fusion["pruned"]
    ops = report["artifacts"]["onnx_optimized"]["op_counts"]
    assert ops["com.microsoft.MultiHeadAttention"] == 1 and ops["com.microsoft.Attention"] == 1
    # int8: QAttention has no attention_bias, so the packed projection is a DynamicQuantizeMatMul split into
    # MultiHeadAttention (the int8 parity above passed with it)
    import collections
    import onnx
    ops8 = collections.Counter(n.op_type for n in onnx.load(str(out / "model.optimized.int8.onnx")).graph.node)
    assert "QAttention" not in ops8 and "Attention" not in ops8
    assert ops8["MultiHeadAttention"] == 2 and ops8["Split"] == 1
    assert report["parameters"]["actual"] == report["parameters"]["expected"]


@pytest.mark.slow
def test_relative_bias_pretrainer_computes_every_row_of_its_last_layer(tmp_path):
    d = _relative_spec()
    d["head"] = {"type": "pretrainer", "num_token_predictions": 3}
    d["export"] = {"tflite": False}
    rc, report, _ = _build(tmp_path, d)
    assert rc == 0
    assert report["status"] == "passed" and not report["fusion"]["pruned"]


def test_absolute_ids_from_the_mask_are_robertas():
    """RoBERTa's ids (transformers: cumsum(ids != pad) * (ids != pad) + padding_idx) from the mask: the k-th real
    token reads row offset + k, a masked one row offset - 1; a row with holes equals its right-padded form."""
    import tensorflow as tf

    from bertc.components.positions import AbsolutePositionSpec, absolute_position_ids

    mask = np.array([[1, 1, 1, 0, 0], [1, 0, 1, 0, 1]], np.int32)
    ids = absolute_position_ids(AbsolutePositionSpec(offset=2, from_mask=True), tf.constant(mask)).numpy()
    padding_idx = 1
    assert np.array_equal(ids, np.cumsum(mask, axis=1) * mask + padding_idx)
    plain = absolute_position_ids(AbsolutePositionSpec(offset=2), tf.constant(mask)).numpy()
    assert np.array_equal(plain, np.tile(np.arange(2, 7), (2, 1)))


def test_absolute_ids_from_the_ids_are_transformers_formula():
    """``from_ids``: transformers' create_position_ids_from_input_ids, the pad id being offset - 1: a real token with
    the pad id reads row offset - 1 and the later ones shift down, a masked token with another id is counted; from
    the mask differs exactly there. Setting both is a spec problem."""
    import tensorflow as tf

    from bertc.components.positions import AbsolutePositionSpec, absolute_position_ids

    mask = np.array([[1, 1, 1, 1, 1, 0], [1, 0, 1, 1, 0, 0]], np.int32)
    words = np.array([[0, 7, 1, 8, 2, 1], [0, 9, 1, 5, 1, 1]], np.int32)
    spec = AbsolutePositionSpec(offset=2, from_ids=True)
    ids = absolute_position_ids(spec, tf.constant(mask), tf.constant(words)).numpy()
    real = (words != 1).astype(np.int32)
    assert np.array_equal(ids, np.cumsum(real, axis=1) * real + 1)
    assert ids.tolist() == [[2, 3, 1, 4, 5, 1], [2, 3, 1, 4, 1, 1]]
    from_mask = absolute_position_ids(AbsolutePositionSpec(offset=2, from_mask=True), tf.constant(mask)).numpy()
    assert not np.array_equal(ids, from_mask)
    assert [p for _, p in spec.problems({})] == []
    both = [p for _, p in AbsolutePositionSpec(offset=2, from_ids=True, from_mask=True).problems({})]
    assert len(both) == 1 and "set one of them" in both[0]
    assert "at least 1 with from_ids" in next(AbsolutePositionSpec(offset=0, from_ids=True).problems({}))[1]


def test_masked_invariance_keeps_which_masked_tokens_hold_the_pad_id_with_from_ids():
    """The build's masked_invariance check changes the masked tokens' ids; with positions from the ids whether a
    masked token holds the pad id is counted (transformers too), so the check keeps that and passes exactly."""
    from bertc import check
    from bertc.signature import signature_of

    d = _roberta_like(from_mask=False, from_ids=True)
    d["encoder"]["vocab_size"] = 4      # ids 1..3: the pad id 1 often, masked or not
    d["head"] = {"type": "token_classifier", "num_classes": 3}    # compared at every real token
    spec = load_spec(d)
    sig = signature_of(spec)
    result = check.check_masked_invariance(build_model(spec, sig).model, spec, sig)
    assert result.passed and result.figure == 0.0


def _roberta_like(**position):
    d = tiny_bert()
    d["encoder"].update(max_sequence_length=10, type_vocab_size=1,
                        position={"type": "absolute", "offset": 2, "from_mask": True, **position})
    return d


def test_offset_positions_table_and_hole_invariance():
    built = build_model(load_spec(_roberta_like()))
    table = next(w for w in built.model.weights if w.path == "embeddings/position_embeddings")
    assert tuple(table.shape) == (12, 16)         # max_sequence_length + offset rows
    rng = np.random.default_rng(3)
    words = rng.integers(1, 50, size=(1, 4)).astype(np.int32)
    padded = {"input_word_ids": np.pad(words, ((0, 0), (0, 3))), "input_mask": np.array([[1, 1, 1, 1, 0, 0, 0]], np.int32),
              "input_type_ids": np.zeros((1, 7), np.int32)}
    holes_mask = np.array([[1, 0, 1, 0, 0, 1, 1]], np.int32)
    holes_words = np.zeros((1, 7), np.int32)
    holes_words[0, holes_mask[0] == 1] = words[0]
    holes = {"input_word_ids": holes_words, "input_mask": holes_mask, "input_type_ids": np.zeros((1, 7), np.int32)}
    d = _roberta_like()
    d.pop("head")
    enc = build_model(load_spec(d)).model
    a = np.asarray(enc(padded, training=False)["sequence_output"])[0, :4]
    b = np.asarray(enc(holes, training=False)["sequence_output"])[0, holes_mask[0] == 1]
    assert np.abs(a - b).max() < 1e-5


@pytest.mark.slow
def test_offset_positions_build_with_position_ids_in_the_fused_embedding(tmp_path):
    rc, report, _ = _build(tmp_path, _roberta_like())
    assert rc == 0
    _assert_every_backend_passed(report)
    fusion = report["fusion"]["layers"]
    assert fusion["embeddings"]["embeddings"] == "EmbedLayerNormalization"
    assert fusion["position"]["position"] == "position ids from the mask"


def test_position_spec_errors_name_the_path(tmp_path, capsys):
    d = _roberta_like(offset=0)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    assert main(["validate", str(path)]) == EXIT_BAD_SPEC
    err = capsys.readouterr()
    assert "$.encoder.position.offset: must be at least 1 with from_mask" in err.out + err.err
    d = _relative_spec(type="nope")
    path.write_text(json.dumps(d))
    assert main(["validate", str(path)]) == EXIT_BAD_SPEC
    err = capsys.readouterr()
    assert "$.encoder.position" in err.out + err.err and "relative_bias" in err.out + err.err


# --- plug-ins: a position scheme and a head, one class and one registration each ------------------------

@pytest.mark.slow
def test_plugin_position_scheme_and_head_build_with_parity_and_an_optimized_artifact(tmp_path):
    """ALiBi-style distance bias (a position scheme without an ONNX lowering: it takes the portable path)
    and a mean-pooling classifier head with its own lowering, registered in the test: the build writes
    the optimized artifact and int8, and parity passes on every backend."""
    import tensorflow as tf

    from bertc.components.common import dense, dense_params
    from bertc.components.heads import Head, SentencePooling
    from bertc.components.positions import PositionScheme
    from bertc.losses import weighted_sparse_categorical_crossentropy
    from bertc.components.common import serializable
    from bertc.registry import HEADS, POSITIONS
    from bertc.signature import OutputInfo
    from bertc.specbase import PositiveInt, StrictModel

    class DistanceBiasSpec(StrictModel):
        type: Literal["distance_bias"] = "distance_bias"

    calls = []

    @POSITIONS.register("distance_bias", spec=DistanceBiasSpec, description="test plug-in: -slope_h * |i - j|")
    @serializable
    class DistanceBias(PositionScheme):
        spec_cls = DistanceBiasSpec

        def call(self, inputs):
            calls.append("call")
            n = tf.range(tf.shape(inputs["input_mask"])[1])
            distance = tf.cast(tf.abs(tf.expand_dims(n, 0) - tf.expand_dims(n, 1)), tf.float32)
            slopes = tf.constant([2.0 ** -(h + 1) for h in range(self.num_heads)], tf.float32)
            # (no arithmetic on constants alone: the TFLite converter would fold it into a constant of its own)
            bias = tf.expand_dims(tf.expand_dims(slopes, -1), -1) * tf.expand_dims(-distance, 0)
            return {"attention_bias": tf.expand_dims(bias, 0)}

    class MeanClassifierSpec(StrictModel):
        type: Literal["mean_classifier"] = "mean_classifier"
        num_classes: PositiveInt

    @HEADS.register("mean_classifier", spec=MeanClassifierSpec, description="test plug-in: dense over mean tokens")
    class MeanClassifier(Head):
        def build(self, enc, inputs):
            self.dense = dense(self.spec.num_classes, self.encoder_spec.initializer_spec, "mean_classifier")
            pooled = SentencePooling("mean", name="mean_pooling")(enc.sequence_output, inputs["input_mask"])
            return {"logits": self.dense(pooled)}

        def outputs(self):
            return [OutputInfo("logits", None, "logits")]

        def param_count(self):
            return dense_params(self.encoder_spec.hidden_size, self.spec.num_classes)

        def make_labels(self, inputs, rng):
            return {"labels": rng.integers(0, self.spec.num_classes, size=len(inputs["input_mask"])).astype(np.int32)}

        def loss(self, outputs, labels):
            return weighted_sparse_categorical_crossentropy(labels["labels"], outputs["logits"], from_logits=True)

        def onnx_lowering(self, ctx, enc):
            g = ctx.g
            x = ctx.value(enc.sequence_output)
            m = g.node("Unsqueeze", [g.node("Cast", [ctx.inputs["input_mask"]], to=1), g.ints([-1], "axes")])
            total = ctx.reduce("ReduceSum", g.node("Mul", [x, m]), [1])
            count = g.node("Max", [ctx.reduce("ReduceSum", m, [1]), g.scalar(1e-9, "min_count")])
            ctx.record("mean_classifier", "mean pooling, Gemm")
            return {"logits": ctx.gemm(g.node("Div", [total, count]), self.dense)}

    try:
        d = tiny_bert()
        d["encoder"].update(max_sequence_length=10, position={"type": "distance_bias"})
        d["head"] = {"type": "mean_classifier", "num_classes": 3}
        rc, report, out = _build(tmp_path, d)
        assert rc == 0, report.get("error")
        assert calls                                            # the plug-in scheme really computed the bias
        _assert_every_backend_passed(report)
        fusion = report["fusion"]
        assert fusion["layers"]["position"]["position"].startswith("portable: ")
        assert [n.split(":")[0] for n in fusion["not_lowered"]] == ["position (DistanceBias)"]
        assert fusion["layers"]["head"]["mean_classifier"] == "mean pooling, Gemm"
        assert not fusion["pruned"]
        assert {"onnx_optimized", "onnx_int8"} <= set(report["artifacts"])
        # the model.keras it wrote loads again (ARCHITECTURE.md's example had no @serializable: it never did)
        from bertc.transfer import load_keras_model

        calls.clear()
        loaded = load_keras_model(out)
        assert calls                                            # rebuilt with the plug-in's own class
        spec = load_spec(d)
        inputs = make_inputs(spec, 2, 7, np.random.default_rng(0))
        np.testing.assert_allclose(np.asarray(loaded(inputs)["logits"]),
                                   np.asarray(build_model(spec).model(inputs)["logits"]), atol=1e-6)
    finally:
        POSITIONS.unregister("distance_bias")
        HEADS.unregister("mean_classifier")
