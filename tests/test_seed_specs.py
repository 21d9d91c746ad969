"""specs/ holds the seed notebooks' real models, Model Garden's defaults included.

The expected parameter counts were measured with Model Garden itself (tf-models-official 2.20,
tf-keras 2.21): ``BertEncoder(vocab_size=100, num_layers=2, max_sequence_length=16)`` under
BertPretrainer / BertSpanLabeler / BertClassifier, and the customize_encoder notebook's ``cfg``
under ``BertClassifier(..., num_classes=2)`` (``tools/model_garden_param_counts.py`` reproduces them).
"""
import pytest

from bertc.build import build_model, expected_param_count
from bertc.spec import load_spec
from conftest import SPECS

MODEL_GARDEN_PARAMS = {
    "pretrainer": 15_463_014,
    "classifier": 14_870_786,
    # Model Garden's BertEncoder always builds its pooler (768 * 768 + 768), which BertSpanLabeler never
    # reads; bertc builds no unread layer (stated in the spec's description).
    "span_labeler": 14_870_786 - (768 * 768 + 768),
    "canonical_classifier": 30_594,
    "albert": 29_154,
}


@pytest.mark.parametrize("name", sorted(MODEL_GARDEN_PARAMS))
def test_seed_spec_has_model_gardens_parameter_count(name):
    spec = load_spec(SPECS / f"{name}.json")
    assert expected_param_count(spec) == MODEL_GARDEN_PARAMS[name]


def test_first_notebooks_encoder_is_model_gardens_default():
    for name in ("pretrainer", "span_labeler", "classifier"):
        enc = load_spec(SPECS / f"{name}.json").encoder
        assert (enc.hidden_size, enc.num_attention_heads, enc.intermediate_size, enc.type_vocab_size,
                enc.activation, enc.max_sequence_length, enc.num_layers, enc.vocab_size) == (
                    768, 12, 3072, 16, "gelu_tanh", 16, 2, 100), name
        description = load_spec(SPECS / f"{name}.json").description
        for stated in ("hidden_size 768", "type_vocab_size 16", "intermediate_size 3072", "gelu_tanh"):
            assert stated in description, (name, stated)


def test_heads_use_model_gardens_glorot_uniform_and_pretrainer_has_no_mlm_activation():
    for path in SPECS.glob("*.json"):
        spec = load_spec(path)
        if spec.head is not None and path.stem not in ("token_classifier", "mixed_blocks") \
                and not path.stem.startswith(("bert_base", "bert_large")):
            assert spec.head.initializer is not None and spec.head.initializer.type == "glorot_uniform", path.stem
    pretrainer = load_spec(SPECS / "pretrainer.json").head
    assert pretrainer.activation == "linear" and pretrainer.output == "predictions"
    assert load_spec(SPECS / "albert.json").encoder.embedding_width == 128


def test_glorot_uniform_head_is_really_built_with_it():
    """The classifier kernel's spread is glorot's (limit sqrt(6 / (fan_in + fan_out))), not N(0, 0.02)."""
    import numpy as np

    model = build_model(load_spec(SPECS / "canonical_classifier.json")).model
    kernel = next(w for w in model.weights if w.path == "classifier/kernel").numpy()
    limit = np.sqrt(6.0 / (32 + 2))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.1
