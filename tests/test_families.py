"""The Hugging Face families beyond BERT / ALBERT: RoBERTa / XLM-R / CamemBERT, DistilBERT, ELECTRA, MPNet.

Fixtures (tests/fixtures/hf/, regenerated only by tools/make_hf_family_fixtures.py) are tiny random-weight
checkpoints of every architecture bertc imports, with the outputs transformers computed for a full row, a
right-padded row, a row with holes in its mask and that row's real tokens right-padded. Every fixture is
imported and compared with transformers in Keras and in the optimized ONNX graph; one fixture per encoder
(and the sentence-transformers one) goes through ``bertc import && bertc build`` and every artifact is
compared with transformers; the importers refuse what bertc cannot compute, naming key and value.
"""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import bertc
from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC, UnsupportedModel
from bertc.importers import import_spec, load_weights
from bertc.signature import signature_of
from bertc.spec import load_spec
from bertc.weights import resolve_weights_path

HF = Path(__file__).resolve().parent / "fixtures" / "hf"
ATOL = 1e-5
# fixture: (encoder type, head type, position scheme)
EXPECTED = {
    "roberta_model": ("bert", None), "roberta_seq_cls": ("bert", "classifier"),
    "roberta_token_cls": ("bert", "token_classifier"), "roberta_qa": ("bert", "span_labeler"),
    "roberta_mlm": ("bert", "masked_lm"), "xlmr_model": ("bert", None), "camembert_seq_cls": ("bert", "classifier"),
    "distilbert_model": ("scaffold", None), "distilbert_seq_cls": ("scaffold", "classifier"),
    "distilbert_token_cls": ("scaffold", "token_classifier"), "distilbert_qa": ("scaffold", "span_labeler"),
    "distilbert_mlm": ("scaffold", "masked_lm"),
    "electra_model": ("scaffold", None), "electra_seq_cls": ("scaffold", "classifier"),
    "electra_token_cls": ("scaffold", "token_classifier"), "electra_qa": ("scaffold", "span_labeler"),
    "electra_pretraining": ("scaffold", "token_classifier"), "electra_mlm": ("scaffold", "masked_lm"),
    "mpnet_model": ("scaffold", None), "mpnet_seq_cls": ("scaffold", "classifier"),
    "mpnet_token_cls": ("scaffold", "token_classifier"), "mpnet_qa": ("scaffold", "span_labeler"),
    "mpnet_mlm": ("scaffold", "masked_lm"), "st_mpnet_mean_norm": ("scaffold", "sentence_embedding"),
    "st_distilbert_mean_dense": ("scaffold", "sentence_embedding"),
    "roberta_mc": ("bert", "multiple_choice"), "distilbert_mc": ("scaffold", "multiple_choice"),
    "electra_mc": ("scaffold", "multiple_choice"), "mpnet_mc": ("scaffold", "multiple_choice"),
}
FIXTURES = list(EXPECTED)


def imported(name: str, directory: Path):
    """``bertc import`` of a fixture: (loaded spec, spec path, reference arrays)."""
    path = directory / f"{name}.json"
    import_spec(HF / name, path)
    return load_spec(path), path, dict(np.load(HF / name / "reference.npz"))


def loaded_model(name: str, directory: Path):
    spec, path, ref = imported(name, directory)
    built = bertc.build_model(spec)
    before = keras_outputs(built.model, spec, ref)
    result = load_weights(built.model, spec, resolve_weights_path(spec.weights, path))
    assert result.loaded and len(result.loaded) == len(built.model.weights)
    return spec, built, ref, before


def feeds(spec, ref) -> dict:
    return {i.name: ref[i.name] for i in signature_of(spec).inputs}


def keras_outputs(model, spec, ref) -> dict:
    return {k: np.asarray(v) for k, v in model(feeds(spec, ref), training=False).items()}


def max_diffs(got: dict, spec, ref) -> dict:
    return {o.name: float(np.abs(np.asarray(got[o.name]) - ref[o.name]).max()) for o in signature_of(spec).outputs}


@pytest.mark.parametrize("name", FIXTURES)
def test_keras_and_optimized_graph_are_transformers(name, tmp_path):
    from bertc.optimize.lower import lower_model
    from bertc.optimize.onnx_artifacts import ort_session

    spec, built, ref, before = loaded_model(name, tmp_path)
    assert (spec.encoder.type, spec.head.type if spec.head else None) == EXPECTED[name]
    outputs = {o.name for o in signature_of(spec).outputs}
    assert outputs == set(ref) - {"input_word_ids", "input_mask", "input_type_ids"}   # every output transformers has
    diffs = max_diffs(keras_outputs(built.model, spec, ref), spec, ref)
    assert max(diffs.values()) <= ATOL, diffs
    assert max(max_diffs(before, spec, ref).values()) > 1e-2     # the match comes from the loaded weights
    lowered = lower_model(built)
    assert lowered.op_counts.get("com.microsoft.MultiHeadAttention", 0) + lowered.op_counts.get(
        "com.microsoft.Attention", 0) == spec.encoder.layer_count and "Softmax" not in lowered.op_counts
    session = ort_session(lowered.proto.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, feeds(spec, ref))))
    diffs = max_diffs(got, spec, ref)
    assert max(diffs.values()) <= ATOL, ("optimized", diffs)


@pytest.mark.parametrize("name", ["roberta_model", "xlmr_model", "roberta_mlm", "distilbert_model", "electra_model"])
def test_a_row_with_holes_equals_its_right_padded_form(name, tmp_path):
    """Rows 2 (holes in its mask) and 3 (the same real tokens, right-padded): RoBERTa numbers positions from the
    mask, DistilBERT / ELECTRA have ordinary positions but attention ignores masked keys, so only RoBERTa's real
    tokens see the same positions; transformers agrees (the reference rows are compared too)."""
    spec, built, ref, _ = loaded_model(name, tmp_path)
    out = keras_outputs(built.model, spec, ref)
    key = "logits" if "logits" in out else "sequence_output"
    holes, padded = ref["input_mask"][2] == 1, ref["input_mask"][3] == 1
    same = float(np.abs(out[key][2][holes] - out[key][3][padded]).max())
    reference_same = float(np.abs(ref[key][2][holes] - ref[key][3][padded]).max())
    if name.startswith(("roberta", "xlmr")):
        assert same <= ATOL and reference_same <= ATOL
    else:   # absolute positions 0..S-1: the holed row's later tokens sit at other positions
        assert same > 1e-3 and reference_same > 1e-3


def test_mpnet_relative_bias_reads_raw_positions_as_transformers_does(tmp_path):
    """MPNet's relative bias buckets positions 0..S-1, not the mask-derived ids: the holed row differs from its
    right-padded form, in transformers and in bertc alike; and the bias matters."""
    spec, built, ref, _ = loaded_model("mpnet_model", tmp_path)
    assert spec.encoder.position.type == "relative_bias" and spec.encoder.position.num_buckets == 32
    out = keras_outputs(built.model, spec, ref)["sequence_output"]
    holes, padded = ref["input_mask"][2] == 1, ref["input_mask"][3] == 1
    assert np.abs(ref["sequence_output"][2][holes] - ref["sequence_output"][3][padded]).max() > 1e-3
    assert np.abs(out - ref["sequence_output"]).max() <= ATOL
    table = next(w for w in built.model.weights if w.path == "position/relative_attention_bias")
    table.assign(np.zeros(table.shape, np.float32))
    assert np.abs(keras_outputs(built.model, spec, ref)["sequence_output"] - ref["sequence_output"]).max() > 1e-2


@pytest.mark.parametrize("name", ["roberta_token_cls", "mpnet_token_cls", "st_mpnet_mean_norm"])
def test_a_real_token_with_the_pad_id_is_numbered_as_transformers_does(name, tmp_path):
    """transformers numbers RoBERTa's / MPNet's positions from the ids (``cumsum(ids != pad) * (ids != pad) +
    pad``), whatever the mask says: a real token carrying the pad id (the text "<pad>") reads position ``pad``
    and shifts the later ones, a masked token with another id is counted (pad_id_reference.npz, made by
    tools/make_pad_id_references.py). Keras, model.onnx (tf2onnx), the optimized graph and the packed one agree
    with transformers (numbered from the mask: up to 0.6 away)."""
    from bertc.export.onnx import export_onnx
    from bertc.optimize.lower import lower_model
    from bertc.optimize.onnx_artifacts import ort_session
    from bertc.optimize.padding_free import padding_free

    spec, built, _, _ = loaded_model(name, tmp_path)
    position = spec.encoder.position
    absolute = position.absolute if position.type == "relative_bias" else position
    assert absolute.from_ids and not absolute.from_mask and absolute.offset == 2
    ref = dict(np.load(HF / name / "pad_id_reference.npz"))
    ids, mask = ref["input_word_ids"], ref["input_mask"]
    assert ((ids == 1) & (mask == 1)).sum(axis=1).min() >= 1 and ((ids != 1) & (mask == 0)).any()
    assert max(max_diffs(keras_outputs(built.model, spec, ref), spec, ref).values()) <= ATOL
    lowered = lower_model(built)
    packed, _ = padding_free(lowered.proto)
    export_onnx(built.model, signature_of(spec), tmp_path / "model.onnx")
    for label, proto in (("model.onnx", (tmp_path / "model.onnx").read_bytes()),
                         ("optimized", lowered.proto.SerializeToString()), ("packed", packed.SerializeToString())):
        session = ort_session(proto)
        names = [o.name for o in session.get_outputs()]
        got = dict(zip(names, session.run(names, feeds(spec, ref))))
        if label == "packed" and "logits" in got:   # per-token output: 0.0 at padded positions, by contract
            got["logits"] = np.where(mask[..., None] == 1, got["logits"], ref["logits"])
        diffs = max_diffs(got, spec, ref)
        assert max(diffs.values()) <= ATOL, (label, diffs)


def test_the_import_says_what_each_family_is(tmp_path):
    specs = {n: imported(n, tmp_path)[0] for n in ("roberta_seq_cls", "distilbert_seq_cls", "electra_model",
                                                     "electra_seq_cls", "mpnet_mlm", "roberta_mlm")}
    roberta = specs["roberta_seq_cls"]
    assert roberta.encoder.type_vocab_size == 1 and roberta.encoder.max_sequence_length == 16   # 18 rows - offset 2
    assert roberta.encoder.position.model_dump() == {"type": "absolute", "offset": 2, "from_mask": False,
                                                     "from_ids": True}
    assert roberta.head.pooling == "first" and roberta.head.transform.activation == "tanh"
    assert roberta.head.dropout_rate == 0.2                                   # classifier_dropout
    distil = specs["distilbert_seq_cls"]
    assert distil.encoder.input_names == ["input_word_ids", "input_mask"]     # no token types
    assert distil.head.transform.activation == "relu" and distil.head.dropout_rate == 0.3   # seq_classif_dropout
    electra = specs["electra_model"].encoder
    assert electra.embedding.embedding_width == 8 and not electra.has_pooler
    assert signature_of(specs["electra_model"]).output_names == ["sequence_output"]
    assert specs["electra_seq_cls"].encoder.embedding.embedding_width is None   # embedding_size == hidden_size
    assert specs["electra_seq_cls"].head.transform.activation == "gelu"
    # the LM heads' GELU is transformers' exact one whatever hidden_act says (roberta_mlm: relu)
    assert specs["roberta_mlm"].encoder.activation == "relu"
    assert specs["roberta_mlm"].head.transform.activation == "gelu"
    assert specs["roberta_mlm"].head.transform.layer_norm.epsilon == 1e-5
    assert specs["mpnet_mlm"].encoder.position.absolute.offset == 2


# --- refusals --------------------------------------------------------------------------------------

def edited_copy(tmp_path, name, **changes) -> Path:
    source = tmp_path / name
    shutil.copytree(HF / name, source)
    cfg = json.loads((source / "config.json").read_text())
    for key, value in changes.items():
        cfg[key] = value
    (source / "config.json").write_text(json.dumps(cfg))
    return source


@pytest.mark.parametrize("fixture,changes,why", [
    ("roberta_seq_cls", {"position_embedding_type": "relative_key"}, "absolute"),
    ("roberta_model", {"is_decoder": True}, "false"),
    ("xlmr_model", {"add_cross_attention": True}, "false"),
    ("roberta_model", {"max_position_embeddings": 2}, "no position after the offset"),
    ("roberta_model", {"pad_token_id": None}, "positions start at pad_token_id"),
    ("electra_qa", {"position_embedding_type": "relative_key_query"}, "absolute"),
    ("distilbert_model", {"activation": "gelu_10"}, "no such activation"),
    ("mpnet_model", {"relative_attention_num_buckets": 64}, "32"),
    ("mpnet_seq_cls", {"pad_token_id": 0}, "1"),
    ("roberta_mlm", {"architectures": ["RobertaForCausalLM"]}, "RobertaForMaskedLM"),
    ("electra_model", {"architectures": ["ElectraForCausalLM"]}, "ElectraForPreTraining, ElectraForMaskedLM"),
    ("electra_mc", {"summary_type": "mean"}, "first token"),
    ("electra_mc", {"summary_proj_to_labels": True}, "cannot read"),
    ("electra_mc", {"summary_activation": "tanh", "summary_use_proj": False}, "no place for it"),
    ("camembert_seq_cls", {"architectures": ["CamembertForQuestionAnswering"],
                           "id2label": {"0": "a", "1": "b", "2": "c"}}, "2 outputs"),
])
def test_config_bertc_cannot_compute_is_refused_naming_key_and_value(tmp_path, fixture, changes, why):
    source = edited_copy(tmp_path, fixture, **changes)
    key, value = next((k, v) for k, v in changes.items() if k != "id2label") if "id2label" not in changes \
        else ("num_labels", 3)
    with pytest.raises(UnsupportedModel, match=re.escape(f"{key} = {json.dumps(value)}") + f".*{why}"):
        import_spec(source, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_cli_refusal_exits_2_naming_key_without_traceback(tmp_path, capsys):
    source = edited_copy(tmp_path, "mpnet_model", relative_attention_num_buckets=64)
    assert main(["import", str(source), "-o", str(tmp_path / "x.json")]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert "relative_attention_num_buckets = 64" in err and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()


def test_unknown_model_type_lists_the_families(tmp_path):
    source = edited_copy(tmp_path, "roberta_model", model_type="xlnet")
    with pytest.raises(UnsupportedModel, match=r"model_type = \"xlnet\".*distilbert.*electra.*mpnet.*roberta"):
        import_spec(source, tmp_path / "x.json")


# --- bertc import && bertc build, every artifact against transformers ---------------------------------

@pytest.fixture(scope="module", params=["xlmr_model", "distilbert_seq_cls", "electra_model", "st_mpnet_mean_norm",
                                        "st_distilbert_mean_dense", "electra_mc"])
def cli_built(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(request.param)
    spec_path = work / "spec.json"
    assert main(["import", str(HF / request.param), "-o", str(spec_path)]) == 0
    out = work / "out"
    rc = main(["build", str(spec_path), "-o", str(out), "-q"])
    return request.param, rc, out


@pytest.mark.slow
def test_cli_import_and_build_every_backend_is_transformers(cli_built):
    from bertc.backends import keras_runner, open_runner, plan_backends
    from bertc.transfer import load_keras_model

    name, rc, out = cli_built
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed" and report["parity"]["passed"]
    backends = {r["backend"] for r in report["parity"]["results"]}
    assert {"onnx_cpu", "onnx_optimized_cpu", "onnx_int8_cpu", "tflite"} <= backends
    assert report["fusion"]["lowered"] and report["fusion"]["not_lowered"] == []
    # post-norm: the residual biases travel with the layer norms in the fp32 artifacts, and they still match
    # transformers below (the fixtures' biases and norms are not trivial)
    assert report["fusion"]["folded_residual_biases"] >= 2 * (load_spec(out / "spec.json").encoder.num_layers - 1)
    assert report["weights"]["weights_loaded"] == len(report["weights"]["mapping"])
    spec = load_spec(out / "spec.json")
    ref = dict(np.load(HF / name / "reference.npz"))
    planned, _ = plan_backends(out, report["artifacts"])
    runners = {"keras": keras_runner(load_keras_model(out))}
    runners.update({b.name: open_runner(b) for b in planned if b.precision == "fp32" and not b.name.endswith("_cuda")})
    for backend, run in runners.items():
        diffs = max_diffs(run(feeds(spec, ref)), spec, ref)
        assert max(diffs.values()) <= ATOL, (backend, diffs)
    compared = set(runners)
    assert {"keras", "onnx_cpu", "onnx_optimized_cpu", "tflite"} <= compared


@pytest.mark.slow
def test_parity_on_real_text_with_the_bundled_tokenizer(cli_built, tmp_path):
    name, rc, out = cli_built
    if name in ("distilbert_seq_cls", "electra_mc"):
        pytest.skip("no tokenizer in this fixture")
    report = json.loads((out / "report.json").read_text())
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(report["tokenizer"]["files"])
    if name == "xlmr_model":
        assert "sentencepiece.bpe.model" in report["tokenizer"]["files"] and (out / "sentencepiece.bpe.model").exists()
    text = tmp_path / "texts.txt"
    text.write_text("the cat sat on the mat.\nthe dog ran fast\tit was a big red car!\n")
    assert main(["parity", str(out), "--text", str(text), "--json"]) == 0
    section = json.loads((out / "report.json").read_text())["parity"]
    assert section["passed"] and section["grid"][0]["case"].startswith("text: 2 example(s)")


# --- tokenizers -------------------------------------------------------------------------------------

def test_roberta_bpe_from_vocab_and_merges_is_its_tokenizer_json(tmp_path):
    """Older RoBERTa checkpoints ship vocab.json + merges.txt alone: bertc's byte-level BPE from them
    tokenizes as tokenizer.json (transformers' RobertaTokenizer) does, pairs included."""
    from bertc.text import bundle_tokenizer, encode_texts

    old = tmp_path / "old"
    old.mkdir()
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(HF / "roberta_model" / f, old / f)
    out = tmp_path / "out"
    out.mkdir()
    section = bundle_tokenizer(old, out)
    assert section["kind"] == "byte-level BPE (vocab.json + merges.txt)"
    texts = ["the cat sat on the mat.", ("the dog ran fast", "it was a big red car!"), "Hello  World"]
    a, b = encode_texts(HF / "roberta_model", texts, 16), encode_texts(out, texts, 16)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["input_word_ids"][0, 0] == 0 and 2 in a["input_word_ids"][0]          # <s> ... </s>
    assert not a["input_type_ids"].any()
    # and the same character offsets: a word's span without the space before it, a text's first word and a
    # long text's windows included (the post-processor's own default, add_prefix_space=True, gave " the" 0..4)
    from bertc.text import load_tokenizer

    fast, slow = load_tokenizer(HF / "roberta_model", 8), load_tokenizer(out, 8)
    for tok in (fast, slow):
        tok.enable_truncation(max_length=8, stride=1)
    for text in (" the cat", "I love \U0001F355 pizza and the big red car ran fast", ("the dog ran", "  a  big car ")):
        x, y = (t.encode(*text) if isinstance(text, tuple) else t.encode(text) for t in (fast, slow))
        assert [e.offsets for e in (x, *x.overflowing)] == [e.offsets for e in (y, *y.overflowing)], text
        assert [e.ids for e in (x, *x.overflowing)] == [e.ids for e in (y, *y.overflowing)], text
    assert fast.encode(" the cat").offsets[1][0] == 1   # not 0: the space before "the" is not in it


def test_mpnet_vocab_txt_alone_wraps_in_s_tags_as_its_tokenizer_json(tmp_path):
    from bertc.text import encode_texts

    vocab = json.loads((HF / "mpnet_model" / "tokenizer.json").read_text())["model"]["vocab"]
    (tmp_path / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    config = json.loads((HF / "mpnet_model" / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    texts = ["the cat sat", ("the dog ran", "a big car")]
    a, b = encode_texts(HF / "mpnet_model", texts, 16), encode_texts(tmp_path, texts, 16)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["input_word_ids"][1].tolist()[:4] == [0, vocab["the"], vocab["dog"], vocab["ran"]]
