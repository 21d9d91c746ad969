"""The heads the imported families need: a classifier over the first token or the mean of the real tokens
with a transform (RoBERTa, ELECTRA, DistilBERT, DeBERTa, ModernBERT), a token classifier with a transform
(ModernBERT) and a masked-LM head over every position (RoBERTa, DistilBERT, ModernBERT): built, lowered
with fused operators and checked on every backend."""
import json

import numpy as np
import pytest

from bertc.build import build_model
from bertc.cli import main
from bertc.inputs import make_inputs
from bertc.spec import load_spec
from conftest import tiny_bert

CASES = {
    "classifier_first_tanh": {"type": "classifier", "num_classes": 3, "pooling": "first",
                              "transform": {"activation": "tanh"}},
    "classifier_mean_norm_no_bias": {"type": "classifier", "num_classes": 2, "pooling": "mean",
                                     "transform": {"activation": "gelu", "bias": False,
                                                   "layer_norm": {"epsilon": 1e-5, "bias": False}}},
    "token_classifier_transform": {"type": "token_classifier", "num_classes": 4,
                                   "transform": {"activation": "gelu_tanh", "layer_norm": {"epsilon": 1e-5}}},
    "masked_lm_no_decoder_bias": {"type": "masked_lm", "decoder_bias": False,
                                  "transform": {"activation": "gelu", "layer_norm": {"bias": False}}},
}

WEIGHTS = {
    "classifier_first_tanh": {"classifier_transform/kernel", "classifier_transform/bias", "classifier/kernel",
                              "classifier/bias"},
    "classifier_mean_norm_no_bias": {"classifier_transform/kernel", "classifier_transform_layer_norm/gamma",
                                     "classifier/kernel", "classifier/bias"},
    "token_classifier_transform": {"token_classifier_transform/kernel", "token_classifier_transform/bias",
                                   "token_classifier_transform_layer_norm/gamma",
                                   "token_classifier_transform_layer_norm/beta", "token_classifier/kernel",
                                   "token_classifier/bias"},
    "masked_lm_no_decoder_bias": {"masked_lm/transform/kernel", "masked_lm/transform/bias",
                                  "masked_lm/transform_layer_norm/gamma"},
}


def _head_weights(model) -> set:
    return {w.path for w in model.weights if not w.path.startswith(("embeddings", "layer_", "pooler"))}


@pytest.mark.parametrize("name", sorted(CASES))
def test_head_weights_parameter_count_and_no_pooler(name):
    spec = load_spec(tiny_bert(head=CASES[name]))
    built = build_model(spec)
    assert _head_weights(built.model) == WEIGHTS[name]
    assert not any(w.path.startswith("pooler") for w in built.model.weights)   # no head here reads the pooler
    assert built.model.count_params() == sum(int(np.prod(w.shape)) for w in built.model.weights)
    from bertc.build import expected_param_count
    assert expected_param_count(spec) == built.model.count_params()


def test_mean_pooling_reads_only_real_tokens_and_first_pooling_only_the_first():
    rng = np.random.default_rng(0)
    for name, changes in (("classifier_mean_norm_no_bias", False), ("classifier_first_tanh", True)):
        spec = load_spec(tiny_bert(head=CASES[name]))
        model = build_model(spec).model
        inputs = make_inputs(spec, 2, 8, rng)
        inputs["input_mask"][:] = 1
        inputs["input_mask"][:, 5:] = 0
        other = {k: v.copy() for k, v in inputs.items()}
        other["input_word_ids"][:, 6] = (other["input_word_ids"][:, 6] + 1) % 50   # a padded token only
        a = model(inputs, training=False)["logits"].numpy()
        b = model(other, training=False)["logits"].numpy()
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
        other["input_word_ids"][:, 2] = (other["input_word_ids"][:, 2] + 1) % 50   # a real, non-first token
        c = model(other, training=False)["logits"].numpy()
        assert np.abs(a - c).max() > 1e-3 * np.abs(a).max()   # every real token reaches the first token's row


def test_masked_lm_logits_are_tied_to_the_word_table():
    spec = load_spec(tiny_bert(head=CASES["masked_lm_no_decoder_bias"]))
    model = build_model(spec).model
    out = model(make_inputs(spec, 2, 6, np.random.default_rng(0)), training=False)["logits"]
    assert tuple(out.shape) == (2, 6, 50)
    assert not any(tuple(w.shape) == (50, 16) and w.path.startswith("masked_lm") for w in model.weights)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_head_builds_fused_with_parity_on_every_backend(tmp_path, name):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(tiny_bert(head=CASES[name])))
    out = tmp_path / "out"
    assert main(["build", str(path), "-o", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    results = report["parity"]["results"]
    assert {"onnx_cpu", "onnx_optimized_cpu", "onnx_int8_cpu", "tflite"} <= {r["backend"] for r in results}
    assert all(r["passed"] for r in results)
    assert max(r["max_abs"] for r in results if r["precision"] == "fp32") <= 1e-5
    fusion = json.dumps(report["fusion"])
    assert "not_lowered" not in report["fusion"] or not report["fusion"]["not_lowered"]
    if "transform" in CASES[name] and CASES[name]["transform"]["activation"].startswith("gelu"):
        assert "Gelu" in fusion   # BiasGelu, FastGelu or (without a bias) Gelu
