"""Every head's output names and shapes, at two sequence lengths (dynamic sequence axis)."""
import numpy as np
import pytest

import bertc
from bertc.signature import signature_of
from bertc.inputs import make_inputs
from bertc.spec import load_spec
from conftest import tiny_bert

HEADS = {
    "classifier": ({"type": "classifier", "num_classes": 3}, {"logits": lambda b, s: (b, 3)}),
    "token_classifier": ({"type": "token_classifier", "num_classes": 4}, {"logits": lambda b, s: (b, s, 4)}),
    "span_labeler": ({"type": "span_labeler"}, {"start_logits": lambda b, s: (b, s), "end_logits": lambda b, s: (b, s)}),
    "pretrainer": ({"type": "pretrainer", "num_token_predictions": 3, "output": "predictions"},
                   {"masked_lm": lambda b, s: (b, 3, 50), "classification": lambda b, s: (b, 2)}),
    "none": (None, {"sequence_output": lambda b, s: (b, s, 16), "pooled_output": lambda b, s: (b, 16)}),
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_output_names_and_shapes(name):
    head, expected = HEADS[name]
    spec = load_spec(tiny_bert(head=head))
    model = bertc.build_model(spec).model
    assert signature_of(spec).output_names == list(expected)
    for b, s in ((2, 5), (3, 8)):
        out = model(make_inputs(spec, b, s, np.random.default_rng(0)), training=False)
        assert sorted(out) == sorted(expected)
        for key, shape in expected.items():
            assert tuple(out[key].shape) == shape(b, s), key


def test_pretrainer_predictions_are_log_probabilities_and_decoder_is_tied():
    spec = load_spec(tiny_bert(head=HEADS["pretrainer"][0]))
    model = bertc.build_model(spec).model
    out = model(make_inputs(spec, 2, 8, np.random.default_rng(0)), training=False)
    np.testing.assert_allclose(np.exp(out["masked_lm"].numpy()).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.exp(out["classification"].numpy()).sum(-1), 1.0, atol=1e-5)
    assert not any(w.path.startswith("masked_lm") and w.shape == (50, 16) for w in model.weights)  # no untied decoder


def test_encoder_with_all_layer_outputs():
    d = tiny_bert(head=None)
    d["encoder"]["return_all_layer_outputs"] = True
    spec = load_spec(d)
    out = bertc.build_model(spec).model(make_inputs(spec, 2, 4, np.random.default_rng(0)), training=False)
    assert {"encoder_outputs_0", "encoder_outputs_1"} <= set(out)
    np.testing.assert_array_equal(out["encoder_outputs_1"].numpy(), out["sequence_output"].numpy())


@pytest.mark.parametrize("head", [{"type": "classifier", "num_classes": 1},
                                  {"type": "token_classifier", "num_classes": 1}])
def test_a_one_class_head_builds_and_its_int8_is_judged_by_score_order(tmp_path, head):
    """One output (a reranker's relevance, a regression): cross-entropy over one class is always 0, so the
    trainability check failed every such build (``bertc import`` of a cross-encoder, exit 3). It trains with the
    squared error (transformers' loss for ``num_labels == 1``), and its int8 is judged by the order of its scores
    (a one-class argmax always agrees)."""
    import json

    from bertc.cli import main

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_bert(head=head, export={"tflite": False, "variants": ["onnx_int8"]})))
    assert main(["build", str(spec), "-o", str(tmp_path / "out"), "-q"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert next(c for c in report["checks"] if c["name"] == "trainability")["passed"]
    int8 = next(r for r in report["parity"]["results"] if r["backend"] == "onnx_int8_cpu")
    assert int8["agreement"] == "score order" and int8["passed"]


def test_weighted_mean_squared_error_matches_numpy():
    from bertc import losses

    rng = np.random.default_rng(1)
    pred, target, weights = rng.normal(size=(3, 5, 1)), rng.random((3, 5)), rng.integers(0, 2, (3, 5))
    want = ((pred[..., 0] - target) ** 2 * weights).sum() / weights.sum()
    np.testing.assert_allclose(float(losses.weighted_mean_squared_error(target, pred.astype(np.float32), weights)),
                               want, rtol=1e-5)
    np.testing.assert_allclose(float(losses.weighted_mean_squared_error(target, pred.astype(np.float32))),
                               ((pred[..., 0] - target) ** 2).mean(), rtol=1e-5)


@pytest.mark.parametrize("head", [
    {"type": "sentence_embedding", "pooling": ["mean", "mean_sqrt_len_tokens", "weightedmean"], "normalize": True},
    {"type": "classifier", "num_classes": 3, "pooling": "mean"},
])
def test_fp16_tflite_gives_zeros_not_nan_for_a_row_without_a_real_token(head, tmp_path):
    """A mean over no real token divides 0 by the count's clamp, the L2 normalisation 0 by the norm's: the fp16
    TFLite artifact stores every graph constant as fp16, where 1e-9 and 1e-12 are 0, so such a row was NaN there
    (Keras: 0). The count's clamp is 1 (the count is an integer: the same float32 result for every input) and a
    zero vector is normalised to zeros; the fp16 artifact now agrees with Keras on that row, the rest to fp16's
    precision."""
    from ai_edge_litert.interpreter import Interpreter

    from bertc.export.tflite import export_tflite

    d = tiny_bert(head=head)
    d["encoder"]["num_layers"] = 1
    spec = load_spec(d)
    built = bertc.build_model(spec)
    sig = signature_of(spec)
    feed = make_inputs(spec, 2, 6, np.random.default_rng(0))
    feed["input_mask"] = np.array([[1] * 6, [0] * 6], np.int32)
    name = sig.output_names[0]
    ref = np.asarray(built.model(feed, training=False)[name])
    assert np.isfinite(ref).all()
    export_tflite(built.model, sig, tmp_path / "model.fp16.tflite", precision="fp16", background=False)
    runner = Interpreter(model_path=str(tmp_path / "model.fp16.tflite")).get_signature_runner("serving_default")
    got = runner(**feed)[name]
    assert np.isfinite(got).all(), got
    assert np.abs(got - ref).max() <= 1e-2 * max(1.0, float(np.abs(ref).max()))
    if head["type"] == "sentence_embedding":
        assert not ref[1].any() and not got[1].any()       # the empty row: zeros, in Keras and in fp16
