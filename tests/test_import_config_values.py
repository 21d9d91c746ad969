"""``bertc import`` of Hugging Face configs with unusual values: a missing key takes the transformers config
class's default; a value transformers could not use either (a wrong type, null) or one bertc cannot compute
is refused with one ``error:`` line naming the file, the key and the value (exit 2), never an internal error.

Import only (no build): each test copies a fixture and edits its config.json.
"""
import json
import shutil
from pathlib import Path

import pytest

from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC
from bertc.importers import import_spec

HF = Path(__file__).resolve().parent / "fixtures" / "hf"


def copy(tmp_path: Path, fixture: str, edit=None, file: str = "config.json") -> Path:
    source = tmp_path / fixture
    shutil.copytree(HF / fixture, source)
    if edit is not None:
        path = source / file
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return source


def refused(source: Path, capsys, tmp_path: Path) -> str:
    """Runs ``bertc import``; asserts exit 2 with an ``error:`` line; returns stderr."""
    capsys.readouterr()
    code = main(["import", str(source), "-o", str(tmp_path / "x.json"), "--force"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_SPEC, err
    assert err.startswith("error: ") and "internal error" not in err, err
    assert not (tmp_path / "x.json").exists()
    return err


def setter(**values):
    def edit(cfg):
        cfg.update(values)
    return edit


def dropper(*keys):
    def edit(cfg):
        for key in keys:
            cfg.pop(key, None)
    return edit


# --- 1. wrong types and nulls are refused, naming the file, key and value --------------------------------

@pytest.mark.parametrize("fixture, key, value, shown", [
    ("bert_seq_cls", "hidden_act", ["gelu"], 'hidden_act = ["gelu"]'),
    ("bert_seq_cls", "layer_norm_eps", None, "layer_norm_eps = null"),
    ("bert_seq_cls", "hidden_size", "16", 'hidden_size = "16"'),
    ("bert_seq_cls", "num_hidden_layers", True, "num_hidden_layers = true"),
    ("bert_seq_cls", "max_position_embeddings", 16.5, "max_position_embeddings = 16.5"),
    ("bert_seq_cls", "hidden_dropout_prob", None, "hidden_dropout_prob = null"),
    ("bert_seq_cls", "classifier_dropout", "0.1", 'classifier_dropout = "0.1"'),
    ("albert_seq_cls", "embedding_size", None, "embedding_size = null"),
    ("roberta_seq_cls", "max_position_embeddings", "20", 'max_position_embeddings = "20"'),
    ("roberta_seq_cls", "layer_norm_eps", None, "layer_norm_eps = null"),
    ("distilbert_seq_cls", "dim", None, "dim = null"),
    ("distilbert_seq_cls", "seq_classif_dropout", None, "seq_classif_dropout = null"),
    ("electra_seq_cls", "embedding_size", "16", 'embedding_size = "16"'),
    ("electra_mc", "summary_use_proj", None, "summary_use_proj = null"),
    ("mpnet_seq_cls", "layer_norm_eps", None, "layer_norm_eps = null"),
    ("deberta_v3_seq_cls", "conv_kernel_size", "3", 'conv_kernel_size = "3"'),
    ("deberta_v3_seq_cls", "position_buckets", None, "position_buckets = null"),
    ("deberta_v3_seq_cls", "cls_dropout", "x", 'cls_dropout = "x"'),
    ("deberta_v3_seq_cls", "hidden_act", {"gelu": 1}, 'hidden_act = {"gelu": 1}'),
    ("modernbert_seq_cls", "norm_eps", None, "norm_eps = null"),
    ("modernbert_seq_cls", "classifier_dropout", None, "classifier_dropout = null"),
    ("modernbert_seq_cls", "classifier_pooling", ["cls"], 'classifier_pooling = ["cls"]'),
    ("modernbert_seq_cls", "layer_types", [["full_attention"]] * 4, "layer_types = "),
    ("modernbert_seq_cls", "attention_bias", "true", 'attention_bias = "true"'),
])
def test_a_bad_value_is_refused_naming_the_key(tmp_path, capsys, fixture, key, value, shown):
    err = refused(copy(tmp_path, fixture, setter(**{key: value})), capsys, tmp_path)
    assert f"{fixture}/config.json: {shown}" in err, err


def test_num_labels_null_without_id2label_is_refused(tmp_path, capsys):
    """transformers counts id2label's entries when there is one (num_labels is then ignored), else num_labels."""
    err = refused(copy(tmp_path, "bert_seq_cls", lambda cfg: (cfg.pop("id2label"), cfg.pop("label2id"),
                                                               cfg.update(num_labels=None))), capsys, tmp_path)
    assert "num_labels = null" in err, err
    spec = import_spec(copy(tmp_path / "b", "bert_seq_cls", setter(num_labels=None)), tmp_path / "y.json")
    assert spec["head"]["num_classes"] == 3


def test_modernbert_null_local_rope_theta_is_the_global_one(tmp_path):
    """transformers 4's ModernBertAttention: ``if config.local_rope_theta is not None: rope_theta = ...``, else
    the local layers rotate with ``global_rope_theta``."""
    def edit(cfg):
        del cfg["rope_parameters"]
        cfg.update(local_rope_theta=None, global_rope_theta=80000.0)
    spec = import_spec(copy(tmp_path, "modernbert_seq_cls", edit), tmp_path / "x.json")
    assert spec["encoder"]["local_rope_theta"] == spec["encoder"]["global_rope_theta"] == 80000.0

    def default_global(cfg):
        del cfg["rope_parameters"]
        cfg["local_rope_theta"] = None
    spec = import_spec(copy(tmp_path / "b", "modernbert_seq_cls", default_global), tmp_path / "y.json")
    assert spec["encoder"]["local_rope_theta"] == spec["encoder"]["global_rope_theta"] == 160000.0


@pytest.mark.parametrize("edit, shown", [
    (lambda cfg: (cfg.pop("rope_parameters"), cfg.update(global_rope_theta=None)), "global_rope_theta = null"),
    (lambda cfg: (cfg.pop("rope_parameters"), cfg.update(local_rope_theta="1e4")), 'local_rope_theta = "1e4"'),
    (lambda cfg: cfg["rope_parameters"]["full_attention"].update(rope_theta=None),
     "rope_parameters.full_attention.rope_theta = null"),
])
def test_modernbert_bad_rope_theta_is_refused(tmp_path, capsys, edit, shown):
    err = refused(copy(tmp_path, "modernbert_seq_cls", edit), capsys, tmp_path)
    assert shown in err, err


@pytest.mark.parametrize("value", ["12", 12.0, True, 0])
def test_sentence_transformers_max_seq_length_must_be_an_integer(tmp_path, capsys, value):
    """sentence-transformers reads max_seq_length as it is (no cast): a string is refused, not compared."""
    source = copy(tmp_path, "st_bert_mean_norm", setter(max_seq_length=value), "sentence_bert_config.json")
    err = refused(source, capsys, tmp_path)
    assert f"sentence_bert_config.json: max_seq_length = {json.dumps(value)}" in err, err


@pytest.mark.parametrize("kwargs", [{"text": {"max_length": 12}}, {"common": {"max_length": 10}}])
def test_sentence_transformers_6_processing_kwargs_are_refused_not_ignored(tmp_path, capsys, kwargs):
    """sentence-transformers 6 tokenizes with sentence_bert_config.json's processing_kwargs (a text / common
    max_length cut at 12 tokens): bertc, which reads max_seq_length alone, cut at 24, and embeddings of longer texts
    differed (cosine 0.965), exit 0 (found by a tester). Refused, named, until bertc reads them."""
    source = copy(tmp_path, "st_bert_mean_norm", setter(processing_kwargs=kwargs), "sentence_bert_config.json")
    err = refused(source, capsys, tmp_path)
    assert f"sentence_bert_config.json: processing_kwargs = {json.dumps(kwargs)}" in err, err


def test_sentence_transformers_null_max_seq_length_is_the_model_length(tmp_path):
    source = copy(tmp_path, "st_bert_mean_norm", setter(max_seq_length=None), "sentence_bert_config.json")
    (source / "tokenizer_config.json").unlink()
    spec = import_spec(source, tmp_path / "x.json")
    assert spec["encoder"]["max_sequence_length"] == 16


def test_sentence_transformers_module_path_must_be_a_string(tmp_path, capsys):
    def edit(modules):
        modules[1]["path"] = 1
    source = tmp_path / "st"
    shutil.copytree(HF / "st_bert_mean_norm", source)
    modules = json.loads((source / "modules.json").read_text())
    edit(modules)
    (source / "modules.json").write_text(json.dumps(modules))
    err = refused(source, capsys, tmp_path)
    assert "modules.json: [1].path = 1" in err, err


# --- 1. a missing key takes transformers' default -------------------------------------------------------

def test_st_modernbert_without_max_position_embeddings_takes_8192(tmp_path):
    spec = import_spec(copy(tmp_path, "st_modernbert_mean_norm", dropper("max_position_embeddings")),
                       tmp_path / "x.json")
    tokenizer = json.loads((HF / "st_modernbert_mean_norm" / "tokenizer_config.json").read_text())
    assert spec["encoder"]["max_sequence_length"] == tokenizer["model_max_length"]   # the length it truncates to
    assert "config.json's max_position_embeddings is 8192" in spec["description"]


@pytest.mark.parametrize("fixture, positions", [
    ("bert_seq_cls", 512), ("albert_seq_cls", 512), ("roberta_seq_cls", 512 - 2), ("electra_seq_cls", 512),
    ("distilbert_seq_cls", 512), ("mpnet_seq_cls", 512 - 2), ("deberta_v3_seq_cls", 512),
    ("modernbert_seq_cls", 8192),
])
def test_missing_max_position_embeddings_takes_the_family_default(tmp_path, fixture, positions):
    """BertConfig / AlbertConfig / RobertaConfig / ElectraConfig / DistilBertConfig / MPNetConfig / DebertaV2Config:
    512; ModernBertConfig: 8192 (RoBERTa's and MPNet's tables start after the padding offset 2)."""
    spec = import_spec(copy(tmp_path, fixture, dropper("max_position_embeddings")), tmp_path / "x.json")
    enc = spec["encoder"]
    assert (enc.get("max_sequence_length") or enc["embedding"]["max_sequence_length"]) == positions


def test_missing_keys_with_defaults_import_as_transformers_reads_them(tmp_path):
    spec = import_spec(copy(tmp_path, "bert_seq_cls", dropper("layer_norm_eps", "hidden_act", "hidden_dropout_prob",
                                                               "classifier_dropout", "initializer_range")),
                       tmp_path / "x.json")
    enc = spec["encoder"]
    assert (enc["layer_norm_epsilon"], enc["activation"], enc["dropout_rate"]) == (1e-12, "gelu", 0.1)
    assert spec["head"]["dropout_rate"] == 0.1


# --- 2. ModernBERT with every layer global: the local window is never read --------------------------------

def test_modernbert_all_global_layers_accept_any_local_attention(tmp_path):
    def edit(cfg):
        del cfg["layer_types"]
        cfg.update(global_attn_every_n_layers=1, local_attention=0)
    spec = import_spec(copy(tmp_path, "modernbert_seq_cls", edit), tmp_path / "x.json")
    enc = spec["encoder"]
    assert enc["global_attn_every_n_layers"] == 1 and "layer_types" not in enc
    assert "local_attention" not in enc   # unused: the spec's default stands in


def test_modernbert_all_global_layer_types_accept_local_attention_0(tmp_path):
    def edit(cfg):
        cfg.update(layer_types=["full_attention"] * 4, local_attention=0)
    spec = import_spec(copy(tmp_path, "modernbert_seq_cls", edit), tmp_path / "x.json")
    from bertc.spec import load_spec

    loaded = load_spec({k: v for k, v in spec.items() if k != "weights"} | {"weights": None})
    assert loaded.encoder.kinds() == ["global"] * 4


def test_modernbert_local_layers_still_need_a_window(tmp_path, capsys):
    def edit(cfg):
        del cfg["layer_types"]
        cfg.update(global_attn_every_n_layers=2, local_attention=1)
    err = refused(copy(tmp_path, "modernbert_seq_cls", edit), capsys, tmp_path)
    assert "local_attention = 1: bertc's local layers need a window of at least one token on each side" in err, err


# --- 3. architectures must be a list ---------------------------------------------------------------------

@pytest.mark.parametrize("fixture, value", [
    ("bert_seq_cls", "BertForSequenceClassification"),
    ("bert_seq_cls", [["BertForSequenceClassification"]]),
    ("modernbert_seq_cls", "ModernBertForSequenceClassification"),
])
def test_architectures_must_be_a_list(tmp_path, capsys, fixture, value):
    """transformers does not check it, and ``architectures[0]`` of a string is its first letter."""
    err = refused(copy(tmp_path, fixture, setter(architectures=value)), capsys, tmp_path)
    assert f"architectures = {json.dumps(value)}: not a valid value (expected a list of class names" in err, err
    assert "bertc imports" not in err


def test_architectures_string_is_refused_for_a_sentence_transformers_model_too(tmp_path, capsys):
    err = refused(copy(tmp_path, "st_bert_mean_norm", setter(architectures="BertModel")), capsys, tmp_path)
    assert 'architectures = "BertModel"' in err, err


# --- 4. pruned heads -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["bert_seq_cls", "albert_seq_cls", "roberta_seq_cls", "electra_seq_cls",
                                     "distilbert_seq_cls", "mpnet_seq_cls", "deberta_v3_seq_cls",
                                     "modernbert_seq_cls", "st_bert_mean_norm"])
def test_pruned_heads_are_refused(tmp_path, capsys, fixture):
    err = refused(copy(tmp_path, fixture, setter(pruned_heads={"0": [1]})), capsys, tmp_path)
    assert 'pruned_heads = {"0": [1]}' in err, err


@pytest.mark.parametrize("value", [{}, None])
def test_empty_pruned_heads_import(tmp_path, value):
    spec = import_spec(copy(tmp_path, "bert_seq_cls", setter(pruned_heads=value)), tmp_path / "x.json")
    assert spec["head"]["type"] == "classifier"


# --- every key, any type: a named refusal or an import, never an internal error ---------------------------

@pytest.mark.parametrize("fixture", ["bert_seq_cls", "roberta_mlm", "distilbert_mc", "electra_mc", "mpnet_seq_cls",
                                     "deberta_v3_seq_cls", "modernbert_seq_cls", "st_modernbert_mean_norm"])
def test_no_config_value_crashes_the_import(tmp_path, fixture):
    """Nor an imported spec that bertc's own spec check refuses (that message names the spec's field, not the
    config's key)."""
    from bertc.errors import BertcError

    base = json.loads((HF / fixture / "config.json").read_text())
    source = copy(tmp_path, fixture)
    for key in [*base, "pruned_heads", "architectures", "max_position_embeddings"]:
        for value in (None, ["x"], {"a": 1}, "12", True, 1.5, -1, 0):
            (source / "config.json").write_text(json.dumps({**base, key: value}))
            try:
                import_spec(source, tmp_path / "x.json")
            except BertcError as exc:
                assert "the imported spec is not valid" not in str(exc), (key, value, str(exc))
