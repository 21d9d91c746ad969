"""``bertc import`` of Model Garden checkpoints beyond the seed notebooks' defaults: each fixture
(tools/make_model_garden_fixtures.py, tiny random weights, Model Garden's outputs in reference.npz) is imported,
built with its checkpoint's weights and compared with Model Garden; what bertc cannot import is refused clearly
(exit 2, naming the checkpoint).
"""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import bertc
from bertc.checkpoints import TFCheckpoint, open_checkpoint
from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC, UnsupportedModel, WeightsError
from bertc.importers import import_spec, load_weights, model_garden
from bertc.signature import signature_of
from bertc.spec import load_spec
from bertc.weights import resolve_weights_path

MG = Path(__file__).resolve().parent / "fixtures" / "model_garden"
ATOL = 1e-5
ASSUMED = "assumed (not in the checkpoint): "


def imported(fixture: str, directory: Path):
    """``bertc import`` of a Model Garden fixture: (spec data, spec path, reference arrays)."""
    ref = dict(np.load(MG / fixture / "reference.npz"))
    path = directory / "spec.json"
    data = import_spec(MG / fixture, path)
    return data, path, ref


def diffs_after_loading(spec_path: Path, ref: dict, edit=None) -> dict:
    """Max abs difference of every output from Model Garden's, the imported spec built with the checkpoint's
    weights (``edit``: a change to the spec's data first). Also checks every weight was loaded, and that without the
    checkpoint's weights the outputs are far off (the match comes from the weights)."""
    data = json.loads(spec_path.read_text())
    if edit:
        edit(data)
        spec_path.write_text(json.dumps(data))
    spec = load_spec(spec_path)
    sig = signature_of(spec)
    model = bertc.build_model(spec).model

    def run():
        got = model({i.name: ref[i.name] for i in sig.inputs}, training=False)
        return {o.name: float(np.max(np.abs(np.asarray(got[o.name]) - ref[o.name]))) for o in sig.outputs}

    before = run()
    result = load_weights(model, spec, resolve_weights_path(spec.weights, spec_path))
    assert result.loaded and len(result.loaded) == len(model.weights)
    assert max(before.values()) > 1e-2
    return run()


def exact(fixture, tmp_path, edit=None):
    data, path, ref = imported(fixture, tmp_path)
    diffs = diffs_after_loading(path, ref, edit)
    assert max(diffs.values()) <= ATOL, (fixture, diffs)
    return data, diffs


def assumptions(description: str) -> str:
    return description.split(ASSUMED, 1)[1] if ASSUMED in description else ""


# --- F1: AlbertEncoder with embedding_width == hidden_size (no embedding_projection) ------------------------------

def test_albert_encoder_without_projection_is_imported_as_albert(tmp_path):
    """Its one shared block (``transformer``, no ``layer_i``) was read as a 1-layer scaffold: wrong outputs, exit 0."""
    data, _ = exact("albert_width_eq_hidden", tmp_path)
    enc = data["encoder"]
    assert enc["type"] == "albert" and enc["num_layers"] == 2
    assert enc["embedding_width"] == enc["hidden_size"] == 16


def test_albert_encoder_without_projection_or_config_is_refused_for_num_layers(tmp_path):
    source = tmp_path / "albert"
    shutil.copytree(MG / "albert_width_eq_hidden", source)
    (source / "encoder_config.json").unlink()
    with pytest.raises(UnsupportedModel, match=re.escape(str(source / "ckpt-1")) + r": an AlbertEncoder checkpoint "
                       r"does not record num_layers.*encoder_config.json"):
        import_spec(source, tmp_path / "x.json")


def test_a_config_saying_albert_over_bert_encoder_blocks_is_refused(tmp_path):
    source = tmp_path / "bert"
    shutil.copytree(MG / "bert_encoder", source)
    (source / "encoder_config.json").write_text(json.dumps({"type": "albert", "albert": {"num_layers": 2}}))
    with pytest.raises(WeightsError, match=r"encoder_config.json: type albert, but the checkpoint holds 2 "
                                           r"transformer blocks \(transformer/layer_0, \.\.\.\), not an AlbertEncoder"):
        import_spec(source, tmp_path / "x.json")


# --- F2: BertPretrainer's masked-LM transform activation: Model Garden's default None (linear) -------------------

def predictions(data):
    data["head"]["num_token_predictions"] = 4   # the reference has 4 masked positions per row


def test_pretrainer_masked_lm_activation_defaults_to_linear_and_is_said_assumed(tmp_path):
    data, _ = exact("bert_pretrainer", tmp_path, predictions)   # made with BertPretrainer's default activation
    head = data["head"]
    assert head["type"] == "pretrainer" and head["activation"] == "linear"
    assumed = assumptions(data["description"])
    assert assumed.startswith("activation gelu")   # the encoder's, first
    for said in ("masked-LM transform activation linear (BertPretrainer's default activation=None)",
                 "num_token_predictions 16", "output logits"):
        assert said in assumed, data["description"]
    # the encoder's activation there (what import wrote) is far off Model Garden's default

    def gelu(d):
        predictions(d)
        d["head"]["activation"] = "gelu_tanh"

    diffs = diffs_after_loading(tmp_path / "spec.json", dict(np.load(MG / "bert_pretrainer" / "reference.npz")), gelu)
    assert diffs["masked_lm"] > 1e-2 and diffs["classification"] <= ATOL


# --- F8: BertTokenClassifier with 2 classes vs BertSpanLabeler ---------------------------------------------------

def test_two_class_token_classifier_is_not_a_span_labeler(tmp_path):
    """Both save predictions/transform/logits (H, 2); the object graph tells them apart, with nothing assumed."""
    data, diffs = exact("bert_token_classifier_2", tmp_path / "token")
    assert data["head"] == {"type": "token_classifier", "num_classes": 2}
    assert set(diffs) == {"logits"} and "span_labeler" not in data["description"]
    data, diffs = exact("bert_span_labeler", tmp_path / "span")
    assert data["head"] == {"type": "span_labeler"} and "head span_labeler" not in data["description"]
    assert set(diffs) == {"start_logits", "end_logits"}


def test_a_two_class_head_the_object_graph_does_not_name_is_said_assumed(tmp_path, monkeypatch):
    monkeypatch.setattr(TFCheckpoint, "object_children", lambda self, path=(): None)
    for fixture in ("bert_token_classifier_2", "bert_span_labeler"):
        data, _, _ = imported(fixture, tmp_path)
        assert data["head"] == {"type": "span_labeler"}
        assert 'head span_labeler (BertSpanLabeler; a 2-class BertTokenClassifier saves the same tensors' \
            in assumptions(data["description"])
        assert '"token_classifier", "num_classes": 2' in data["description"]


def test_object_children_reads_the_object_graph():
    checkpoint = open_checkpoint(MG / "bert_span_labeler" / "ckpt-1")
    assert {"model", "save_counter"} <= set(checkpoint.object_children())
    assert "span_labeling" in checkpoint.object_children(("model",))
    assert checkpoint.object_children(("no such object",)) is None


# --- F4: TransformerScaffold sub-layers from an explicit attention_cfg / feedforward_cfg -------------------------

def test_sublayers_named_by_their_class_are_read(tmp_path):
    """``transformer_scaffold/talking_heads_attention/...`` and ``.../gated_feedforward/...``: internal error."""
    data, _ = exact("scaffold_explicit_cfgs", tmp_path)
    block = data["encoder"]["hidden"]
    assert block["attention"]["type"] == "talking_heads"
    assert block["feedforward"] == {"type": "gated", "intermediate_size": 32, "activation": "gelu_tanh",
                                    "num_blocks": 2, "use_gate": False}


def test_a_hand_written_spec_loads_sublayers_named_by_their_class(tmp_path):
    """The spec the import writes, written by hand: its weights load (they were 'unused' / 'missing')."""
    data, _, ref = imported("scaffold_explicit_cfgs", tmp_path)
    hand = tmp_path / "hand.json"
    hand.write_text(json.dumps({"name": "hand", "encoder": data["encoder"],
                                "weights": str(MG / "scaffold_explicit_cfgs" / "ckpt-1")}))
    assert max(diffs_after_loading(hand, ref).values()) <= ATOL


# --- F5: EncoderScaffold(layer_norm_before_pooling=True); F4 with the default attention class ---------------------

def test_final_layer_norm_before_pooling_is_imported(tmp_path):
    data, diffs = exact("scaffold_attention_cfg_final_norm", tmp_path)   # multi_head_attention/ too
    assert data["encoder"]["final_layer_norm"] is True
    assert data["encoder"]["hidden"]["attention"]["type"] == "multi_head"
    assert set(diffs) == {"sequence_output", "pooled_output"}


# --- F6: BertEncoder(norm_first=True): pre-layer-norm blocks, no final layer norm ----------------------------------

def test_pre_layer_norm_bert_encoder_is_a_scaffold_without_final_norm(tmp_path):
    data, _ = exact("bert_norm_first", tmp_path)
    enc = data["encoder"]
    assert enc["type"] == "scaffold" and not enc.get("final_layer_norm")
    assert enc["hidden"]["type"] == "transformer" and enc["hidden"]["norm_first"] is True
    assert enc["embedding"]["type"] == "standard" and "embedding_width" not in enc["embedding"]
    assert "BertEncoder with norm_first" in data["description"] and "scaffold encoder" in data["description"]
    assert "norm_first" not in assumptions(data["description"])   # the config said it


# --- F7: the customize_encoder notebook's custom embedding network --------------------------------------------------

def test_custom_embedding_network_of_word_embeddings_is_imported(tmp_path):
    data, _ = exact("scaffold_custom_embedding", tmp_path)
    enc = data["encoder"]
    assert enc["embedding"] == {"type": "custom", "vocab_size": 40, "max_sequence_length": 512}
    assert [i.name for i in signature_of(load_spec(tmp_path / "spec.json")).inputs] == ["input_word_ids",
                                                                                        "input_mask"]
    assert "max_sequence_length 512" in assumptions(data["description"])


class Without:
    """A checkpoint with some of its tensors left out (a damaged or unusual one): what spec_from reads."""

    def __init__(self, fixture, *left_out):
        self._c = open_checkpoint(MG / fixture / "ckpt-1")
        self.location, self._left_out = self._c.location, set(left_out)

    def names(self):
        return [n for n in self._c.names() if n not in self._left_out]

    def shape(self, name):
        if name in self._left_out:
            raise KeyError(name)
        return self._c.shape(name)

    def object_children(self, path=()):
        return self._c.object_children(path)


def test_an_embedding_network_without_some_tables_is_refused_naming_them():
    ckpt = Without("bert_encoder", "type_embeddings/embeddings")
    with pytest.raises(WeightsError, match=re.escape(f"{ckpt.location}: no 'type_embeddings/embeddings' tensor (the "
                                                     f"embedding network's type embeddings): a Model Garden "
                                                     f"BertEncoder always has")):
        model_garden.spec_from(MG / "bert_encoder", ckpt)
    ckpt = Without("scaffold_talking_gated", "position_embedding/embeddings")
    with pytest.raises(UnsupportedModel, match=r"no 'position_embedding/embeddings' tensor \(the embedding "
                                               r"network's position embeddings\): bertc imports an EncoderScaffold"):
        model_garden.spec_from(MG / "scaffold_talking_gated", ckpt)


@pytest.mark.parametrize("fixture, tensor", [
    ("bert_encoder", "transformer/layer_0/intermediate/kernel"),
    ("bert_encoder", "transformer/layer_0/self_attention/query/kernel"),
    ("scaffold_rezero", "re_zero_transformer/intermediate/kernel"),
    ("bert_pretrainer", "predictions/transform/logits/kernel")])
def test_a_missing_tensor_is_refused_naming_it(fixture, tensor):
    """Was an internal error (KeyError) for each."""
    assert tensor in open_checkpoint(MG / fixture / "ckpt-1").names()
    ckpt = Without(fixture, tensor)
    with pytest.raises(WeightsError, match=re.escape(f"{ckpt.location}: ") + r".*" + re.escape(f"'{tensor}'")):
        model_garden.spec_from(MG / fixture, ckpt)


# --- F9: BertEncoder(embedding_width); BertPretrainerV2 -------------------------------------------------------------

def test_factorized_bert_encoder_is_a_scaffold_with_embedding_width(tmp_path):
    """Was refused as ALBERT ("bertc's ALBERT shares one block")."""
    data, _ = exact("bert_embedding_width", tmp_path)
    enc = data["encoder"]
    assert enc["type"] == "scaffold" and enc["num_layers"] == 2 and enc["hidden_size"] == 16
    assert enc["embedding"]["type"] == "standard" and enc["embedding"]["embedding_width"] == 8
    assert enc["hidden"]["type"] == "transformer" and enc["hidden"]["norm_first"] is False
    assert "BertEncoder with embedding_width 8" in data["description"]


def test_bert_pretrainer_v2_is_refused_naming_it(tmp_path, capsys):
    """Was imported as an encoder alone, whose build then failed on the heads' tensors."""
    source = MG / "bert_pretrainer_v2"
    with pytest.raises(UnsupportedModel, match=re.escape(str(source / "ckpt-1")) + r": a Model Garden "
                       r"BertPretrainerV2 checkpoint .*bertc does not import BertPretrainerV2; it imports .*"
                       r"BertPretrainer"):
        import_spec(source, tmp_path / "x.json")
    assert main(["import", str(source), "-o", str(tmp_path / "y.json")]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert "BertPretrainerV2" in err and "internal error" not in err and not (tmp_path / "y.json").exists()


@pytest.mark.parametrize("fixture, remove", [("albert_width_eq_hidden", "encoder_config.json"),
                                              ("bert_pretrainer_v2", None)])
def test_refusals_exit_2_from_the_command_line(tmp_path, capsys, fixture, remove):
    source = tmp_path / fixture
    shutil.copytree(MG / fixture, source)
    if remove:
        (source / remove).unlink()
    assert main(["import", str(source), "-o", str(tmp_path / "s.json")]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert str(source / "ckpt-1") in err and "internal error" not in err
