"""A sequence needs at least 1 token: called eagerly on a batch of empty sequences (B, 0), every model refuses with
a ValueError naming that limit, whatever its head and position scheme (before: a classifier failed in TensorFlow's
StridedSlice of the first token, a mean / max pooling gave another raw error, and a token classifier, span labeler,
masked LM or rotary (ModernBERT) encoder returned empty arrays). Python only (the static shape), like the other
input checks: a traced graph (the exports) gains no op."""
import numpy as np
import pytest

import bertc
from bertc.importers import import_spec
from bertc.spec import load_spec
from conftest import ROOT, tiny_bert

HEADS = {
    "classifier": {"type": "classifier", "num_classes": 3},
    "classifier_mean": {"type": "classifier", "num_classes": 3, "pooling": "mean"},
    "multiple_choice": {"type": "multiple_choice", "pooling": "first"},
    "token_classifier": {"type": "token_classifier", "num_classes": 4},
    "span_labeler": {"type": "span_labeler"},
    "pretrainer": {"type": "pretrainer", "num_token_predictions": 2},
    "masked_lm": {"type": "masked_lm"},
    "sentence_embedding": {"type": "sentence_embedding", "pooling": ["cls", "max", "mean", "lasttoken"]},
    "none": None,
}
POSITIONS = {"from_mask": {"type": "absolute", "offset": 2, "from_mask": True},
             "relative_bias": {"type": "relative_bias", "num_buckets": 8, "max_distance": 10}}
EMPTY = r"0 tokens per sequence, fewer than the 1 this model needs .*give every sequence at least 1 token"


def _feed(model, length):
    feed = {i.name: np.ones((2, length), np.int32) for i in model.inputs}
    if "input_type_ids" in feed:
        feed["input_type_ids"][:] = 0
    if "masked_lm_positions" in feed:
        feed["masked_lm_positions"] = np.zeros((2, model.get_layer("masked_lm_positions").output.shape[1]), np.int32)
    return feed


def _refuses_empty(spec):
    model = bertc.build_model(load_spec(spec)).model
    model(_feed(model, 1), training=False)                       # 1 token, the limit itself, is fine
    with pytest.raises(ValueError, match=EMPTY):
        model(_feed(model, 0), training=False)


@pytest.mark.parametrize("head", list(HEADS))
def test_every_head_refuses_an_empty_sequence(head):
    spec = tiny_bert(head=HEADS[head])
    spec["encoder"] = {**spec["encoder"], "num_layers": 1}
    _refuses_empty(spec)


@pytest.mark.parametrize("position", list(POSITIONS))
def test_every_position_scheme_refuses_an_empty_sequence(position):
    spec = tiny_bert(head={"type": "token_classifier", "num_classes": 2})
    spec["encoder"] = {**spec["encoder"], "num_layers": 1, "position": POSITIONS[position]}
    _refuses_empty(spec)


@pytest.mark.parametrize("fixture", ["modernbert_token_cls", "deberta_v3_seq_cls", "albert_seq_cls"])
def test_every_family_refuses_an_empty_sequence(fixture, tmp_path):
    """Rotary (ModernBERT), disentangled (DeBERTa) and factorized embeddings (ALBERT), imported (no weights)."""
    path = tmp_path / "spec.json"
    import_spec(ROOT / "tests" / "fixtures" / "hf" / fixture, path)
    _refuses_empty(str(path))
