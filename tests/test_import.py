"""Trained weights in: every fixture reproduces its framework's reference outputs; bad checkpoints fail clearly.

Fixtures (tests/fixtures, regenerated only by tools/make_*_fixtures.py) hold tiny random-weight
checkpoints and the outputs transformers / Model Garden computed for them on fixed inputs.
"""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_bert

import bertc
from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC, OutputError, UnsupportedModel, WeightsError
from bertc.build import expected_param_count
from bertc.importers import import_spec, load_weights
from bertc.signature import signature_of
from bertc.spec import load_spec
from bertc.weights import resolve_weights_path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HF = ["bert_model", "bert_seq_cls", "bert_token_cls", "bert_qa", "bert_pretraining", "bert_mlm", "albert_model",
      "albert_seq_cls", "albert_pretraining", "albert_mlm", "st_bert_mean_norm", "st_bert_cls_dense_norm", "st_bert_pooling_concat", "st_bert_lasttoken",
      "bert_cross_encoder", "bert_mc", "albert_mc"]
MG = ["bert_encoder", "albert_encoder", "scaffold_talking_gated", "scaffold_rezero", "bert_classifier",
      "bert_span_labeler", "bert_pretrainer"]
ALL = [f"hf/{n}" for n in HF] + ["bert_tf1"] + [f"model_garden/{n}" for n in MG]
EXPECTED = {  # encoder type, head type the import must choose
    "hf/bert_model": ("bert", None), "hf/bert_seq_cls": ("bert", "classifier"),
    "hf/bert_token_cls": ("bert", "token_classifier"), "hf/bert_qa": ("bert", "span_labeler"),
    "hf/bert_pretraining": ("bert", "pretrainer"), "hf/albert_model": ("albert", None),
    "hf/albert_seq_cls": ("albert", "classifier"), "hf/albert_pretraining": ("albert", "pretrainer"),
    "hf/bert_mlm": ("bert", "masked_lm"), "hf/albert_mlm": ("albert", "masked_lm"),
    "hf/st_bert_mean_norm": ("bert", "sentence_embedding"),
    "hf/st_bert_cls_dense_norm": ("bert", "sentence_embedding"), "hf/bert_cross_encoder": ("bert", "classifier"),
    "hf/st_bert_pooling_concat": ("bert", "sentence_embedding"), "hf/st_bert_lasttoken": ("bert", "sentence_embedding"),
    "hf/bert_mc": ("bert", "multiple_choice"), "hf/albert_mc": ("albert", "multiple_choice"),
    "bert_tf1": ("bert", "pretrainer"),
    "model_garden/bert_encoder": ("bert", None), "model_garden/albert_encoder": ("albert", None),
    "model_garden/scaffold_talking_gated": ("scaffold", None), "model_garden/scaffold_rezero": ("scaffold", None),
    "model_garden/bert_classifier": ("bert", "classifier"), "model_garden/bert_span_labeler": ("bert", "span_labeler"),
    "model_garden/bert_pretrainer": ("bert", "pretrainer"),
}
ATOL = 1e-5


def imported(fixture: str, directory: Path):
    """``bertc import`` of a fixture into ``directory``: (spec path, reference arrays)."""
    ref = dict(np.load(FIXTURES / fixture / "reference.npz"))
    path = directory / "spec.json"
    data = import_spec(FIXTURES / fixture, path)
    if data.get("head", {}).get("type") == "pretrainer":  # the reference has 4 masked positions per row
        data["head"]["num_token_predictions"] = int(ref["masked_lm_positions"].shape[1])
        path.write_text(json.dumps(data))
    return path, ref


def max_diffs(run, sig, ref) -> dict:
    got = run({i.name: ref[i.name] for i in sig.inputs})
    return {o.name: float(np.max(np.abs(np.asarray(got[o.name]) - ref[o.name]))) for o in sig.outputs}


def keras_run(model):
    return lambda x: {k: v.numpy() for k, v in model(x, training=False).items()}


@pytest.mark.parametrize("fixture", ALL)
def test_imported_model_reproduces_reference_in_keras(fixture, tmp_path):
    spec_path, ref = imported(fixture, tmp_path)
    spec = load_spec(spec_path)
    assert (spec.encoder.type, spec.head.type if spec.head else None) == EXPECTED[fixture]
    if fixture.startswith("model_garden/") and fixture != "model_garden/albert_encoder":  # inferred from shapes
        assert "assumed (not in the checkpoint): activation gelu" in spec.description
    sig = signature_of(spec)
    model = bertc.build_model(spec).model
    before = max_diffs(keras_run(model), sig, ref)
    result = load_weights(model, spec, resolve_weights_path(spec.weights, spec_path))
    assert result.loaded and len(result.loaded) == len(model.weights)
    diffs = max_diffs(keras_run(model), sig, ref)
    assert max(diffs.values()) <= ATOL, diffs
    assert max(before.values()) > 1e-2  # the match comes from the loaded weights


# --- full builds (Keras + ONNX + TFLite + parity), one per module -------------------------------------

@pytest.fixture(scope="module", params=["hf/bert_model", "hf/st_bert_mean_norm", "hf/st_bert_pooling_concat",
                                        "model_garden/scaffold_talking_gated"])
def built(request, tmp_path_factory):
    from bertc.pipeline import BuildOptions, build

    work = tmp_path_factory.mktemp(request.param.replace("/", "_"))
    spec_path, ref = imported(request.param, work)
    out = work / "out"
    report = build(spec_path, BuildOptions(out=out))
    return request.param, out, report, ref


def test_every_backend_reproduces_reference(built):
    from bertc.parity import onnx_runner, tflite_runner

    fixture, out, report, ref = built
    assert report["status"] == "passed" and report["parity"]["passed"]
    sig = signature_of(load_spec(out / "spec.json"))
    for name, run in (("onnx", onnx_runner(out / "model.onnx", "CPUExecutionProvider")),
                      ("tflite", tflite_runner(out / "model.tflite"))):
        diffs = max_diffs(run, sig, ref)
        assert max(diffs.values()) <= ATOL, (fixture, name, diffs)


def test_report_names_weights_and_spec_json_points_at_them(built):
    fixture, out, report, _ = built
    w = report["weights"]
    source = FIXTURES / fixture / ("ckpt-1" if fixture.startswith("model_garden") else "")
    assert w["source"] == str(source.resolve())
    assert w["weights_loaded"] == len(w["mapping"]) and w["weights_loaded"] > 0
    written = load_spec(out / "spec.json")
    assert resolve_weights_path(written.weights, out / "spec.json") == source.resolve()
    if fixture == "hf/st_bert_mean_norm":  # BertModel's pooler is in the checkpoint but the head pools tokens
        assert {i["name"] for i in w["ignored"]} == {"pooler.dense.weight", "pooler.dense.bias"}
        assert all("does not read the pooled output" in i["reason"] for i in w["ignored"])
    if fixture.startswith("model_garden"):
        assert {"save_counter"} <= {i["name"] for i in w["ignored"]}
        assert "reshaped (2, 8, 16) -> (16, 16)" in w["layout_changes"]["layer_0/attention/attention_output/kernel"]


def test_tokenizer_is_bundled_and_parity_runs_on_real_text(built, tmp_path):
    fixture, out, report, _ = built
    if fixture == "model_garden/scaffold_talking_gated":
        assert "tokenizer" not in report and not (out / "vocab.txt").exists()
        return
    assert set(report["tokenizer"]["files"]) <= {p.name for p in out.iterdir()}
    assert "tokenizer.json" in report["tokenizer"]["files"]
    from bertc.text import encode_texts

    vocab = (FIXTURES / "hf" / "bert_model" / "vocab.txt").read_text().split("\n")
    x = encode_texts(out, ["The cat sat", "dog"], 16)
    want = [vocab.index(t) for t in ("[CLS]", "the", "cat", "sat", "[SEP]")]
    assert x["input_word_ids"][0].tolist() == want and x["input_mask"].tolist()[1] == [1, 1, 1, 0, 0]
    text = tmp_path / "texts.txt"
    text.write_text("the cat sat on the mat.\nthe dog ran fast\tit was a big red car!\n")
    assert main(["parity", str(out), "--text", str(text), "--json"]) == 0
    section = json.loads((out / "report.json").read_text())["parity"]
    assert section["passed"] and section["grid"][0]["case"].startswith("text: 2 example(s)")
    assert max(r["max_abs"] for r in section["results"] if r["precision"] == "fp32") <= 1e-4  # int8: task criteria
    assert section["inputs"]["text"]["cut"] == 0 and "cut to" not in (out / "summary.txt").read_text()
    # a line longer than the model: cut, and said (it was cut silently)
    long = tmp_path / "long.txt"
    long.write_text("the cat sat on the mat. " * 10 + "\nthe dog\n")
    assert main(["parity", str(out), "--text", str(long), "--json"]) == 0
    section = json.loads((out / "report.json").read_text())["parity"]
    assert section["inputs"]["text"]["cut"] == 1
    assert "1 of its examples cut to the model's 16 tokens" in (out / "summary.txt").read_text()
    # bench on the same text: batch 3 repeats the file's examples, padded to the longest tokenized one
    assert main(["bench", str(out), "--text", str(text), "--batch", "1,3", "--rounds", "1", "--calls", "1",
                 "--warmup", "0", "--no-plot", "--backends", "onnx_cpu"]) == 0
    bench = json.loads((out / "bench.json").read_text())
    assert bench["settings"]["inputs"] == f"text from {text}"
    widths = {(r["batch"], r["sequence_length"]) for r in bench["results"]}
    assert {b for b, _ in widths} == {1, 3} and all(0 < s <= 16 for _, s in widths)
    assert main(["bench", str(out), "--text", str(text), "--seq", "8", "--no-plot"]) == 2  # the text sets the length


# --- bertc import / build from the command line ---------------------------------------------------------

def test_cli_import_then_build_with_no_edits(tmp_path, capsys):
    spec = tmp_path / "specs" / "qa.json"
    assert main(["import", str(FIXTURES / "hf" / "bert_qa"), "-o", str(spec)]) == 0
    data = json.loads(spec.read_text())
    assert data["head"] == {"type": "span_labeler"} and "BertForQuestionAnswering" in data["description"]
    assert (spec.parent / data["weights"]).resolve() == (FIXTURES / "hf" / "bert_qa").resolve()
    out = tmp_path / "out"
    assert main(["build", str(spec), "-o", str(out), "-q", "--no-export"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["weights"]["format"] == "safetensors" and report["weights"]["weights_loaded"] == 39
    assert main(["import", str(FIXTURES / "hf" / "bert_qa"), "-o", str(spec)]) == 5  # exists, no --force


def test_cli_import_over_a_linked_spec_writes_through_the_link(tmp_path):
    """``bertc import -o LINK --force`` replaced the link by a file whose relative weights path was computed for the
    link's target directory (a spec pointing elsewhere, exit 0); now the target gets the spec and the link stays."""
    source = FIXTURES / "hf" / "bert_seq_cls"
    target = tmp_path / "deep" / "er" / "target.json"
    assert main(["import", str(source), "-o", str(target)]) == 0
    link = tmp_path / "link.json"
    link.symlink_to(target.relative_to(tmp_path))
    assert main(["import", str(source), "-o", str(link), "--force", "--name", "again"]) == 0
    assert link.is_symlink() and json.loads(target.read_text())["name"] == "again"
    data = json.loads(link.read_text())
    assert (target.parent / data["weights"]).resolve() == source.resolve()
    assert sorted(p.name for p in target.parent.iterdir()) == ["target.json"]


def test_cli_weights_option_overrides_spec(tmp_path):
    spec_path, ref = imported("hf/bert_seq_cls", tmp_path)
    data = json.loads(spec_path.read_text())
    data["weights"] = "does/not/exist"
    spec_path.write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["build", str(spec_path), "-o", str(out), "-q", "--no-export"]) == EXIT_BAD_SPEC
    assert not out.exists()
    assert main(["build", str(spec_path), "-o", str(out), "-q", "--no-export",
                 "--weights", str(FIXTURES / "hf" / "bert_seq_cls" / "model.safetensors")]) == 0
    from bertc.transfer import load_keras_model

    model = load_keras_model(out)
    sig = signature_of(load_spec(out / "spec.json"))
    assert max(max_diffs(keras_run(model), sig, ref).values()) <= ATOL


def test_a_checkpoint_whose_config_disagrees_with_the_spec_is_refused(tmp_path, capsys):
    """Weights load by name and shape: a checkpoint whose config.json says other heads, another activation or
    epsilon (same shapes) than the spec would build and pass parity against itself while computing what it was never
    trained for. The build refuses it, naming each difference; training-only settings (dropout) may differ."""
    spec_path, _ = imported("hf/bert_seq_cls", tmp_path)
    other = tmp_path / "other"
    shutil.copytree(FIXTURES / "hf" / "bert_seq_cls", other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.3, "classifier_dropout": 0.5}))
    out = tmp_path / "out"
    assert main(["build", str(spec_path), "-o", str(out), "-q", "--no-export", "--weights", str(other)]) == 0
    (other / "config.json").write_text(json.dumps({**config, "num_attention_heads": 4, "hidden_act": "relu",
                                                   "layer_norm_eps": 1e-3}))
    bad = tmp_path / "bad"
    assert main(["build", str(spec_path), "-o", str(bad), "-q", "--no-export", "--weights", str(other)]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert ("the spec does not compute what the config of this checkpoint (BertForSequenceClassification) says "
            "(3 differences") in err, err
    for line in ('$.encoder.activation: the spec has "gelu_tanh", the checkpoint\'s config "relu"',
                 "$.encoder.layer_norm_epsilon: the spec has 1e-12, the checkpoint's config 0.001",
                 "$.encoder.num_attention_heads: the spec has 2, the checkpoint's config 4"):
        assert line in err, err
    assert not bad.exists() and "Traceback" not in err
    # the spec edited the same way is refused against the original checkpoint too
    data = json.loads(spec_path.read_text())
    data["encoder"]["num_attention_heads"] = 4
    spec_path.write_text(json.dumps(data))
    assert main(["build", str(spec_path), "-o", str(bad), "-q", "--no-export"]) == EXIT_BAD_SPEC
    assert "$.encoder.num_attention_heads: the spec has 4, the checkpoint's config 2" in capsys.readouterr().err


@pytest.mark.parametrize("fixture,head", [
    ("hf/bert_seq_cls", {"type": "token_classifier", "num_classes": 3}),
    ("hf/bert_token_cls", {"type": "classifier", "num_classes": 5, "pooling": "first"}),
    ("hf/distilbert_seq_cls", {"type": "token_classifier", "num_classes": 3}),
])
def test_a_head_of_another_type_does_not_take_the_checkpoints_head_weights(tmp_path, capsys, fixture, head):
    """A sentence classifier's classifier.weight loaded by name and shape into a token classifier (and back): the
    build passed parity and tagged every token with the sentiment classes. Refused, naming $.head.type; a head with
    no weights of its own (a sentence embedding over the encoder) still builds."""
    spec_path, _ = imported(fixture, tmp_path)
    data = json.loads(spec_path.read_text())
    want = data["head"]["type"]
    data["head"] = {**head, "num_classes": data["head"].get("num_classes", head["num_classes"])}
    spec_path.write_text(json.dumps(data))
    bad = tmp_path / "bad"
    assert main(["build", str(spec_path), "-o", str(bad), "-q", "--no-export"]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert f'$.head.type: the spec has "{head["type"]}", the checkpoint\'s config "{want}"' in err, err
    assert not bad.exists() and "Traceback" not in err
    data["head"] = {"type": "sentence_embedding", "pooling": "mean"}
    spec_path.write_text(json.dumps(data))
    assert main(["build", str(spec_path), "-o", str(tmp_path / "embedder"), "-q", "--no-export"]) == 0


def test_a_multiple_choice_checkpoint_scores_pairs_as_a_one_class_classifier(tmp_path):
    """The same pooler and one-output classifier: a multiple-choice model re-specified as a classifier of one
    class scores each (text, choice) row as it scores each choice (it built before the head-type check; still)."""
    spec_path, _ = imported("hf/bert_mc", tmp_path)
    data = json.loads(spec_path.read_text())
    data["head"] = {"type": "classifier", "num_classes": 1}
    spec_path.write_text(json.dumps(data))
    assert main(["build", str(spec_path), "-o", str(tmp_path / "scorer"), "-q", "--no-export"]) == 0


def test_validate_says_what_build_would_refuse_of_the_weights(tmp_path, capsys):
    """``bertc validate`` said ok for specs that ``bertc build`` then refused for their weights (a head edited away
    from its checkpoint's, a spec moved away from a relative ``weights``); the missing path's message named neither
    the field nor where a relative entry was read from."""
    spec_path, _ = imported("hf/bert_seq_cls", tmp_path)
    assert main(["validate", str(spec_path)]) == 0
    data = json.loads(spec_path.read_text())
    data["head"]["num_classes"] = 5
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    assert main(["validate", str(edited)]) == EXIT_BAD_SPEC
    assert "$.head.num_classes: the spec has 5, the checkpoint's config 3" in capsys.readouterr().err
    moved = tmp_path / "moved"
    moved.mkdir()
    data = json.loads(spec_path.read_text())
    data["weights"] = "bert_seq_cls"
    (moved / "s.json").write_text(json.dumps(data))
    # an empty entry (a template's unset variable) built random weights silently; --weights still replaces it
    data["weights"] = ""
    (moved / "empty.json").write_text(json.dumps(data))
    for command in (["validate", str(moved / "empty.json")], ["build", str(moved / "empty.json"), "-o", str(tmp_path / "o")]):
        assert main(command) == EXIT_BAD_SPEC
        assert '$.weights "": no path; give the trained weights\' path (or --weights PATH)' in capsys.readouterr().err
    assert main(["build", str(moved / "empty.json"), "-o", str(tmp_path / "given"), "-q", "--no-export",
                 "--weights", str(FIXTURES / "hf" / "bert_seq_cls")]) == 0
    (moved / "nothing").mkdir()
    data["weights"] = "nothing"
    (moved / "nothing.json").write_text(json.dumps(data))
    assert main(["validate", str(moved / "nothing.json")]) == EXIT_BAD_SPEC   # a folder without weights, as build says
    assert "nothing" in capsys.readouterr().err
    data["weights"] = "bert_seq_cls"
    for command in (["validate", str(moved / "s.json")], ["build", str(moved / "s.json"), "-o", str(tmp_path / "o")]):
        assert main(command) == EXIT_BAD_SPEC
        err = capsys.readouterr().err
        assert (f'$.weights "bert_seq_cls": {moved / "bert_seq_cls"} does not exist (relative: read from the spec\'s '
                f"folder, {moved}); correct the entry, or give the weights on the command line (--weights PATH)") in err
        assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_init_from_a_build_carries_its_tokenizer_and_checkpoint_config(tmp_path):
    """``--init-from OUT`` copied the weights alone: the new build had no tokenizer (bertc run refused it) and no
    class names, though OUT had both. They come with the weights now, as from the checkpoint itself; a .keras
    file outside a build carries nothing."""
    import bertc

    spec_path, _ = imported("hf/st_bert_mean_norm", tmp_path)
    first = tmp_path / "first"
    assert main(["build", str(spec_path), "-o", str(first), "-q", "--no-tflite", "--no-parity"]) == 0
    data = json.loads(spec_path.read_text())
    data.pop("weights")
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(data))
    second = tmp_path / "second"
    assert main(["build", str(bare), "-o", str(second), "-q", "--no-tflite", "--no-parity",
                 "--init-from", str(first)]) == 0
    assert {"tokenizer.json", "checkpoint_config.json", "config_sentence_transformers.json"} <= \
        {p.name for p in second.iterdir()}
    assert json.loads((second / "report.json").read_text())["tokenizer"]["files"]
    texts = ["the cat sat on the mat", "a dog"]
    np.testing.assert_array_equal(bertc.Runtime(second, artifact="onnx").run(texts),
                                  bertc.Runtime(first, artifact="onnx").run(texts))
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(first / "model.keras", alone / "model.keras")
    third = tmp_path / "third"
    assert main(["build", str(bare), "-o", str(third), "-q", "--no-export", "--init-from", str(alone / "model.keras")]) == 0
    assert not (third / "tokenizer.json").exists()


def test_bertc_keras_build_is_a_weights_source(tmp_path):
    spec_path, ref = imported("model_garden/bert_classifier", tmp_path)
    first = tmp_path / "first"
    assert main(["build", str(spec_path), "-o", str(first), "-q", "--no-export"]) == 0
    again = load_spec(spec_path)
    model = bertc.build_model(again).model
    result = load_weights(model, again, first)
    assert result.format == "keras" and result.importer == "bertc"
    assert max(max_diffs(keras_run(model), signature_of(again), ref).values()) <= ATOL


# --- bad checkpoints -------------------------------------------------------------------------------------

def hf_copy(tmp_path, name="bert_seq_cls", edit=None) -> Path:
    from safetensors.numpy import load_file, save_file

    directory = tmp_path / name
    shutil.copytree(FIXTURES / "hf" / name, directory)
    if edit is not None:
        tensors = load_file(str(directory / "model.safetensors"))
        edit(tensors)
        save_file(tensors, str(directory / "model.safetensors"))
    return directory


def load_into_fresh(spec_dict_or_path, source):
    spec = load_spec(spec_dict_or_path)
    return load_weights(bertc.build_model(spec).model, spec, source)


def seq_cls_spec(tmp_path, **head):
    data = json.loads(import_spec(FIXTURES / "hf" / "bert_seq_cls", tmp_path / "s.json") and
                      (tmp_path / "s.json").read_text())
    data["head"].update(head)
    data.pop("weights")
    return data


def test_missing_tensor_is_named_with_its_shape(tmp_path):
    source = hf_copy(tmp_path, edit=lambda t: t.pop("classifier.weight"))
    with pytest.raises(WeightsError, match=r"missing: bertc weight 'classifier/kernel' \(16, 3\) has no tensor"):
        load_into_fresh(seq_cls_spec(tmp_path), source)


def test_wrong_shapes_and_unknown_tensors_are_all_listed_at_once(tmp_path):
    def edit(t):
        t["bert.encoder.layer.1.output.dense.weight"] = t["bert.encoder.layer.1.output.dense.weight"][:, :30].copy()
        t["extra.projection.weight"] = np.zeros((4, 4), np.float32)

    source = hf_copy(tmp_path, edit=edit)
    with pytest.raises(WeightsError) as err:
        load_into_fresh(seq_cls_spec(tmp_path, num_classes=5), source)
    msg = str(err.value)
    assert "4 problem(s)" in msg
    assert "shape: checkpoint tensor 'classifier.bias' (3,) does not fit bertc weight 'classifier/bias' (5,)" in msg
    assert ("shape: checkpoint tensor 'classifier.weight' (3, 16) transposed does not fit bertc weight "
            "'classifier/kernel' (16, 5)") in msg
    assert ("shape: checkpoint tensor 'bert.encoder.layer.1.output.dense.weight' (16, 30) transposed does not fit "
            "bertc weight 'layer_1/feedforward/output/kernel' (32, 16)") in msg
    assert "unused: checkpoint tensor 'extra.projection.weight' (4, 4)" in msg


def test_tensor_for_a_weight_the_model_lacks_is_an_error(tmp_path):
    spec = seq_cls_spec(tmp_path)
    spec["head"] = {"type": "span_labeler"}  # no classifier weights, and the pooler is then unused (ignored)
    with pytest.raises(WeightsError) as err:
        load_into_fresh(spec, FIXTURES / "hf" / "bert_seq_cls")
    msg = str(err.value)
    assert "unused: checkpoint tensor 'classifier.weight' (3, 16) belongs at bertc weight 'classifier/kernel'" in msg
    assert "missing: bertc weight 'span_labeler/kernel' (16, 2)" in msg and "pooler" not in msg


def test_tied_copies_must_agree(tmp_path):
    def edit(t):
        t["cls.predictions.decoder.weight"] = t["bert.embeddings.word_embeddings.weight"] + 1.0

    source = hf_copy(tmp_path, "bert_pretraining", edit)
    spec = json.loads(json.dumps(import_spec(source, tmp_path / "p.json")))
    spec.pop("weights")
    with pytest.raises(WeightsError, match=r"tied: .*'cls.predictions.decoder.weight'.*differ \(max abs diff 1\)"):
        load_into_fresh(spec, source)


def test_longer_position_table_is_cut_and_reported(tmp_path):
    spec = json.loads(json.dumps(import_spec(FIXTURES / "hf" / "bert_model", tmp_path / "m.json")))
    spec.pop("weights")
    spec["encoder"]["max_sequence_length"] = 8
    result = load_into_fresh(spec, FIXTURES / "hf" / "bert_model")
    assert result.notes["embeddings/position_embeddings"] == "first 8 of 16 positions (max_sequence_length)"


def test_truncated_safetensors(tmp_path):
    source = hf_copy(tmp_path)
    data = (source / "model.safetensors").read_bytes()
    (source / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"model.safetensors: not a readable safetensors file .*truncated"):
        load_into_fresh(seq_cls_spec(tmp_path), source)


def test_directory_without_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    shutil.copyfile(FIXTURES / "hf" / "bert_qa" / "config.json", tmp_path / "empty" / "config.json")
    with pytest.raises(WeightsError, match=r"no weights found in this directory: expected model.safetensors .* "
                                           r"it holds: config.json"):
        import_spec(tmp_path / "empty", tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_a_file_that_is_not_a_pytorch_state_dict_says_so(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError: bertc reads .bin without it
    (tmp_path / "pytorch_model.bin").write_bytes(b"not used")
    from bertc.checkpoints import open_checkpoint

    with pytest.raises(WeightsError, match=r"pytorch_model.bin: neither a zip nor a legacy torch.save file"):
        open_checkpoint(tmp_path)


@pytest.mark.parametrize("key, value, fixture", [
    ("position_embedding_type", "relative_key", "bert_model"),
    ("hidden_act", "quick_gelu", "bert_model"),
    ("is_decoder", True, "bert_model"),
    ("num_hidden_groups", 2, "albert_model"),
    ("architectures", ["BertForCausalLM"], "bert_model"),
])
def test_config_bertc_cannot_express_is_refused_naming_key_and_value(tmp_path, key, value, fixture):
    source = hf_copy(tmp_path, fixture)
    config = json.loads((source / "config.json").read_text())
    config[key] = value
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModel, match=rf"config.json: {key} = {json.dumps(value).replace('[', '.')}"):
        import_spec(source, tmp_path / "x.json")


@pytest.mark.parametrize("name", ["gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_fast"])
def test_every_name_of_the_tanh_gelu_imports_as_it(tmp_path, name):
    """gelu_python_tanh (transformers' PytorchGELUTanh's Python twin: 0.0 from gelu_new) was refused (a tester)."""
    source = hf_copy(tmp_path, "bert_model")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "hidden_act": name}))
    assert import_spec(source, tmp_path / "x.json")["encoder"]["activation"] == "gelu_tanh"


def test_cli_refusal_exits_2_without_traceback(tmp_path, capsys):
    source = hf_copy(tmp_path, "bert_model")
    config = json.loads((source / "config.json").read_text())
    config["position_embedding_type"] = "relative_key_query"
    (source / "config.json").write_text(json.dumps(config))
    assert main(["import", str(source), "-o", str(tmp_path / "x.json")]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert 'position_embedding_type = "relative_key_query"' in err and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()


def test_sentence_transformers_pooling_config_is_checked(tmp_path):
    source = tmp_path / "st"
    shutil.copytree(FIXTURES / "hf" / "st_bert_mean_norm", source)
    pooling = source / "1_Pooling" / "config.json"
    for value in (["mean", "attention"], [], 3):
        pooling.write_text(json.dumps({"embedding_dimension": 16, "pooling_mode": value}))
        with pytest.raises(UnsupportedModel, match=rf"pooling_mode = {re.escape(json.dumps(value))}"):
            import_spec(source, tmp_path / "x.json")
    pooling.write_text(json.dumps({"embedding_dimension": 16, "pooling_mode": ["mean", "max"]}))  # concatenated
    assert import_spec(source, tmp_path / "x.json")["head"]["pooling"] == ["mean", "max"]
    pooling.write_text(json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))  # <= v5
    assert import_spec(source, tmp_path / "x.json")["head"] == {
        "type": "sentence_embedding", "pooling": "cls", "normalize": True}
    # several flags: sentence-transformers' order (cls, max, mean, ...), whatever the file's; none: mean, as it reads
    pooling.write_text(json.dumps({"pooling_mode_lasttoken": True, "pooling_mode_mean_tokens": True,
                                   "pooling_mode_cls_token": True}))
    assert import_spec(source, tmp_path / "x.json")["head"]["pooling"] == ["cls", "mean", "lasttoken"]
    pooling.write_text(json.dumps({"embedding_dimension": 16, "pooling_mode_mean_tokens": False}))
    assert import_spec(source, tmp_path / "x.json")["head"]["pooling"] == "mean"


def test_empty_pooling_list_is_a_spec_error(tmp_path):
    from bertc.errors import SpecError

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(tiny_bert(head={"type": "sentence_embedding", "pooling": []})))
    with pytest.raises(SpecError, match="pooling"):
        load_spec(bad)


# --- the sentence_embedding head against an independent computation -------------------------------------

def numpy_pooling(mode: str, row: np.ndarray, m: np.ndarray) -> np.ndarray:
    """sentence-transformers' formulas, one row at a time."""
    real = row[m.astype(bool)]
    if mode == "cls":
        return row[0]
    if not len(real):   # a row without a real token: max's fill, zero sums
        return np.full(row.shape[1], -1e9, np.float32) if mode == "max" else np.zeros(row.shape[1], np.float32)
    if mode == "mean":
        return real.mean(0)
    if mode == "max":
        return real.max(0)
    if mode == "mean_sqrt_len_tokens":
        return real.sum(0) / np.sqrt(len(real))
    if mode == "weightedmean":
        w = (np.arange(1, len(m) + 1) - np.argmax(m)) * m
        return (row * w[:, None]).sum(0) / w.sum()
    return row[np.flatnonzero(m)[-1]]   # lasttoken


POOLINGS = ["mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken",
            ["cls", "mean", "lasttoken"], ["weightedmean", "max", "mean_sqrt_len_tokens"]]


@pytest.mark.parametrize("pooling", POOLINGS, ids=str)
@pytest.mark.parametrize("normalize", [False, True])
def test_sentence_pooling_matches_numpy(pooling, normalize):
    from bertc.components.heads import SentencePooling, pooling_modes

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 1, 1, 0],
                     [0, 0, 0, 0, 0]], np.int32)
    if normalize:
        mask[-1, 0] = 1  # (a zero vector cannot be normalized into a comparable one)
    got = SentencePooling(pooling, normalize)(x, mask).numpy()
    want = np.stack([np.concatenate([numpy_pooling(mode, row, m) for mode in pooling_modes(pooling)])
                     for row, m in zip(x, mask)])
    if normalize:
        want = want / np.linalg.norm(want, axis=-1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_bfloat16_safetensors_are_widened_exactly(tmp_path):
    import struct

    from bertc.checkpoints import open_checkpoint

    values = np.array([[1.0, -2.5], [0.15625, 3.0]], np.float32)  # exactly representable in bfloat16
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, len(raw)]}}).encode()
    header += b" " * ((8 - len(header) % 8) % 8)
    (tmp_path / "bf16.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + raw)
    checkpoint = open_checkpoint(tmp_path / "bf16.safetensors")
    assert checkpoint.shape("w") == (2, 2)
    got = checkpoint.read("w")
    assert got.dtype == np.float32 and np.array_equal(got, values)


def test_a_safetensors_tensor_of_a_dtype_numpy_lacks_is_named(tmp_path):
    """An F8_E4M3 tensor failed the build with "module 'numpy' has no attribute 'float8_e4m3fn'" (a tester)."""
    import struct

    from bertc.checkpoints import open_checkpoint

    header = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [2, 2], "data_offsets": [0, 4]}}).encode()
    header += b" " * ((8 - len(header) % 8) % 8)
    (tmp_path / "f8.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    checkpoint = open_checkpoint(tmp_path / "f8.safetensors")
    with pytest.raises(WeightsError, match=r"f8.safetensors: tensor 'w' has dtype F8_E4M3, which bertc cannot read"):
        checkpoint.read("w")


def test_original_bert_needs_its_config(tmp_path):
    source = tmp_path / "bert"
    shutil.copytree(FIXTURES / "bert_tf1", source)
    (source / "bert_config.json").unlink()
    with pytest.raises(WeightsError, match=r"needs its bert_config.json beside it"):
        import_spec(source / "bert_model.ckpt", tmp_path / "x.json")


def test_albert_encoder_checkpoint_without_num_layers_is_refused(tmp_path):
    source = tmp_path / "albert"
    shutil.copytree(FIXTURES / "model_garden" / "albert_encoder", source)
    (source / "encoder_config.json").unlink()
    with pytest.raises(UnsupportedModel, match=r"does not record num_layers.*encoder_config.json"):
        import_spec(source, tmp_path / "x.json")


@pytest.mark.parametrize("key, value, said", [
    ("norm_first", "false", 'norm_first = "false": expected true or false'),   # was read as True
    ("hidden_activation", ["gelu"], 'hidden_activation = ["gelu"]: expected a str'),   # was an internal error
    ("num_layers", "2", 'num_layers = "2": expected a whole number of at least 1')])
def test_a_model_garden_config_value_of_the_wrong_type_is_refused_naming_it(tmp_path, key, value, said):
    for name in ("bert_encoder", "albert_encoder"):
        source = tmp_path / name
        shutil.copytree(FIXTURES / "model_garden" / name, source)
        kind = "albert" if name == "albert_encoder" else "bert"
        config = {"num_layers": 2, "hidden_activation": "gelu", key: value}
        (source / "encoder_config.json").write_text(json.dumps({"type": kind, kind: config}))
        if (key == "norm_first") == (kind == "albert"):   # norm_first is read for BERT, num_layers for ALBERT
            continue
        with pytest.raises(WeightsError, match=re.escape(f"encoder_config.json: {said}")):
            import_spec(source, tmp_path / "x.json")


def test_import_of_a_bertc_build_reuses_its_spec(tmp_path):
    spec_path, ref = imported("hf/bert_token_cls", tmp_path)
    out = tmp_path / "out"
    assert main(["build", str(spec_path), "-o", str(out), "-q", "--no-export"]) == 0
    again = import_spec(out, tmp_path / "again" / "spec.json", name="again")
    assert again["encoder"] == json.loads((out / "spec.json").read_text())["encoder"]
    assert (tmp_path / "again" / again["weights"]).resolve() == (out / "model.keras").resolve()
    # the build's model.keras itself (the README's "a bertc build (OUT/ or .keras)"): the spec beside it
    keras_file = import_spec(out / "model.keras", tmp_path / "k" / "spec.json", name="k")
    assert keras_file["encoder"] == again["encoder"] and keras_file["head"] == again["head"]
    assert (tmp_path / "k" / keras_file["weights"]).resolve() == (out / "model.keras").resolve()
    shutil.copyfile(out / "model.keras", tmp_path / "lone.keras")    # no spec.json beside it
    with pytest.raises(WeightsError, match=r"lone.keras: a .keras file is imported from its bertc build"):
        import_spec(tmp_path / "lone.keras", tmp_path / "l.json")


def test_sharded_safetensors_directory(tmp_path):
    from safetensors.numpy import load_file, save_file

    source = tmp_path / "sharded"
    source.mkdir()
    shutil.copyfile(FIXTURES / "hf" / "bert_seq_cls" / "config.json", source / "config.json")
    tensors = load_file(str(FIXTURES / "hf" / "bert_seq_cls" / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(source / file))
    (source / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: f for f, part in shards.items() for n in part}}))
    spec_path, ref = tmp_path / "s.json", dict(np.load(FIXTURES / "hf" / "bert_seq_cls" / "reference.npz"))
    import_spec(source, spec_path)
    spec = load_spec(spec_path)
    model = bertc.build_model(spec).model
    result = load_weights(model, spec, resolve_weights_path(spec.weights, spec_path))
    assert result.tensors == len(names) and result.format == "safetensors"
    assert max(max_diffs(keras_run(model), signature_of(spec), ref).values()) <= ATOL
    # model.safetensors.index.json given by name imports the same (it was 'cannot tell what model this is')
    by_index = import_spec(source / "model.safetensors.index.json", tmp_path / "i.json")
    assert {k: v for k, v in by_index.items() if k != "weights"} == {
        k: v for k, v in json.loads(spec_path.read_text()).items() if k != "weights"}
    assert by_index["weights"].endswith("model.safetensors.index.json")


def test_a_tensor_in_two_shards_is_read_from_the_one_the_index_names(tmp_path):
    """A tensor saved in two shards (a shard left over from another save) was read from the last shard in name
    order (safetensors) or the first (.bin), whatever the index said: now the index's weight_map decides, and a copy
    it names neither of is refused naming both files."""
    from safetensors.numpy import load_file, save_file

    from bertc.checkpoints import open_checkpoint

    source = tmp_path / "sharded"
    source.mkdir()
    shutil.copyfile(FIXTURES / "hf" / "bert_seq_cls" / "config.json", source / "config.json")
    tensors = load_file(str(FIXTURES / "hf" / "bert_seq_cls" / "model.safetensors"))
    names = sorted(tensors)
    stale = "classifier.weight"
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    save_file({n: tensors[n] for n in names[::2] if n != stale} | {stale: tensors[stale]}, str(source / first))
    save_file({n: tensors[n] for n in names[1::2] if n != stale} | {stale: tensors[stale] * 0 + 7},
              str(source / second))                          # the later shard in name order holds the wrong copy
    weight_map = {n: (first if n in names[::2] else second) for n in names} | {stale: first}
    (source / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    spec_path, ref = tmp_path / "s.json", dict(np.load(FIXTURES / "hf" / "bert_seq_cls" / "reference.npz"))
    import_spec(source, spec_path)
    spec = load_spec(spec_path)
    model = bertc.build_model(spec).model
    load_weights(model, spec, resolve_weights_path(spec.weights, spec_path))
    assert max(max_diffs(keras_run(model), signature_of(spec), ref).values()) <= ATOL
    # in three shards, the index naming the last (a reviewer: refused as "in two shards" before the third was read)
    third = "model-00003-of-00003.safetensors"
    save_file({stale: tensors[stale]}, str(source / third))
    save_file({n: tensors[n] for n in names[::2] if n != stale} | {stale: tensors[stale] * 0 - 3}, str(source / first))
    weight_map[stale] = third
    (source / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model = bertc.build_model(spec).model
    load_weights(model, spec, resolve_weights_path(spec.weights, spec_path))
    assert max(max_diffs(keras_run(model), signature_of(spec), ref).values()) <= ATOL
    weight_map["bert.pooler.dense.bias"] = third   # the third still read, the stale tensor named for none
    save_file({stale: tensors[stale], "bert.pooler.dense.bias": tensors["bert.pooler.dense.bias"]}, str(source / third))
    del weight_map[stale]
    (source / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(WeightsError, match=rf"'{stale}' is in 3 shards, {first}, {second} and {third}, and the "
                                           r"index's weight_map names none of them"):
        open_checkpoint(source)


def test_masked_lm_architecture_is_a_pretrainer_when_the_file_has_next_sentence(tmp_path):
    source = hf_copy(tmp_path, "bert_pretraining")  # bert-base-uncased says BertForMaskedLM but holds both heads
    config = json.loads((source / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    (source / "config.json").write_text(json.dumps(config))
    assert import_spec(source, tmp_path / "p.json")["head"]["type"] == "pretrainer"


def test_masked_lm_only_checkpoint_imports_its_masked_lm_head_and_every_tensor(tmp_path):
    """What run_mlm.py saves (BertForMaskedLM / AlbertForMaskedLM: no pooler, no next-sentence head) is a masked_lm
    head, logits at every token; it used to be refused for its missing pooler."""
    for name in ("bert_mlm", "albert_mlm"):
        data = import_spec(FIXTURES / "hf" / name, tmp_path / f"{name}.json")
        assert data["head"]["type"] == "masked_lm" and "Encoder only" not in data["description"]
        result = load_into_fresh(tmp_path / f"{name}.json", FIXTURES / "hf" / name)
        assert not result.ignored and result.tensors == len(result.loaded) + len(result.tied), (name, result.ignored)


def test_encoder_only_import_of_a_masked_lm_checkpoint_reports_the_head_ignored(tmp_path):
    def drop_nsp(t):
        for name in [n for n in t if n.startswith("cls.seq_relationship.")]:
            t.pop(name)

    source = hf_copy(tmp_path, "bert_pretraining", drop_nsp)
    config = json.loads((source / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    (source / "config.json").write_text(json.dumps(config))
    assert import_spec(source, tmp_path / "h.json")["head"]["type"] == "masked_lm"
    data = import_spec(source, tmp_path / "m.json", encoder_only=True)
    assert "head" not in data and "Encoder only" in data["description"]
    result = load_into_fresh(tmp_path / "m.json", source)
    assert set(result.ignored) == {"cls.predictions.bias", "cls.predictions.transform.dense.weight",
                                   "cls.predictions.transform.dense.bias", "cls.predictions.transform.LayerNorm.weight",
                                   "cls.predictions.transform.LayerNorm.bias"}
    assert all("builds the encoder alone" in why for why in result.ignored.values())
    assert result.tied == {}  # the decoder weight is not in the file (tied, saved once)


def test_cli_encoder_only_drops_the_head(tmp_path, capsys):
    spec = tmp_path / "enc.json"
    assert main(["import", str(FIXTURES / "hf" / "bert_seq_cls"), "-o", str(spec), "--encoder-only"]) == 0
    assert "head" not in json.loads(spec.read_text())
    result = load_into_fresh(spec, FIXTURES / "hf" / "bert_seq_cls")
    assert set(result.ignored) == {"classifier.weight", "classifier.bias"}


def test_older_hf_layer_norm_names_gamma_beta_are_understood():
    from bertc.importers import hf
    from bertc.weights import Target

    spec = load_spec({"name": "x", "encoder": {"type": "bert", "vocab_size": 10, "hidden_size": 8, "num_layers": 1,
                                               "num_attention_heads": 2, "intermediate_size": 16}})
    translate = hf.translator([], spec)
    assert translate("bert.embeddings.LayerNorm.gamma") == Target("embeddings/layer_norm/gamma")
    assert translate("bert.encoder.layer.0.output.LayerNorm.beta") == Target(
        "layer_0/feedforward/output_layer_norm/beta")
    assert translate("bert.encoder.layer.0.attention.self.key.weight") == Target(
        "layer_0/attention/key/kernel", "transpose")


def test_sentence_transformers_dense_modules_are_imported_in_order(tmp_path):
    """LaBSE's layout (cls pooling, Dense + tanh, Normalize) with a second Dense after the first: the head lists
    both in modules.json's order, their weights come from each module's own folder, and the embedding is what
    sentence-transformers computed."""
    source = FIXTURES / "hf" / "st_bert_cls_dense_norm"
    data = import_spec(source, tmp_path / "x.json")
    assert data["head"] == {"type": "sentence_embedding", "pooling": "cls", "normalize": True,
                            "dense": [{"units": 24, "activation": "tanh", "bias": True},
                                      {"units": 12, "activation": "linear", "bias": True}]}
    spec = load_spec(tmp_path / "x.json")
    built = bertc.build_model(spec)
    assert built.model.count_params() == expected_param_count(spec)
    result = load_weights(built.model, spec, resolve_weights_path(spec.weights, tmp_path / "x.json"))
    assert result.loaded["sentence_dense_0_transform/kernel"] == "2_Dense/linear.weight"
    assert result.loaded["sentence_dense_1_transform/bias"] == "3_Dense/linear.bias"
    ref = dict(np.load(source / "reference.npz"))
    diffs = max_diffs(keras_run(built.model), signature_of(spec), ref)
    assert diffs["sentence_embedding"] <= ATOL, diffs


def test_sentence_transformers_do_lower_case_lowercases_the_text_first(tmp_path):
    """sentence-transformers (up to v5) lowercases every text before its tokenizer when sentence_bert_config.json
    says ``do_lower_case``: with a cased tokenizer, "The CAT" must then encode as "the cat" (else CAT is [UNK])."""
    from bertc.text import bundle_tokenizer, load_tokenizer

    source = tmp_path / "st"
    shutil.copytree(FIXTURES / "hf" / "st_bert_mean_norm", source)
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    tokenizer["normalizer"]["lowercase"] = False
    (source / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = json.loads((source / "tokenizer_config.json").read_text())   # a cased tokenizer, as transformers loads it
    (source / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))
    for lower in (False, True):
        (source / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16, "do_lower_case": lower}))
        out = tmp_path / f"out_{lower}"
        out.mkdir()
        section = bundle_tokenizer(source, out)
        assert "sentence_bert_config.json" in section["files"] and ("lowercase_input" in section) == lower
        tok = load_tokenizer(out, 16)
        cased, plain = tok.encode("The CAT sat").ids, tok.encode("the cat sat").ids
        assert (cased == plain) == lower and 1 not in plain   # 1: [UNK]
        assert (1 in cased) != lower


@pytest.mark.parametrize("folder, module_type", [("0_Transformer", "sentence_transformers.models.Transformer"),
                                                  ("0_BERT", "sentence_transformers.models.BERT")])
def test_sentence_transformers_directory_saved_before_v2_imports_and_builds(tmp_path, folder, module_type):
    """Before sentence-transformers 2 the transformers model sat in its module's folder (``0_Transformer/``, and
    before 1.0 ``0_BERT/`` of type ``models.BERT``): the same model laid out so imports, loads every weight
    (Dense modules included), bundles the tokenizer from that folder and computes sentence-transformers'
    embedding."""
    source = tmp_path / "st"
    shutil.copytree(FIXTURES / "hf" / "st_bert_cls_dense_norm", source)
    (source / folder).mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "sentence_bert_config.json"):
        (source / name).rename(source / folder / name)
    modules = json.loads((source / "modules.json").read_text())
    modules[0].update(path=folder, type=module_type)
    (source / "modules.json").write_text(json.dumps(modules))
    spec_path = tmp_path / "x.json"
    assert import_spec(source, spec_path)["head"]["dense"][0]["units"] == 24
    out = tmp_path / "out"
    assert main(["build", str(spec_path), "-o", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["weights"]["mapping"]["sentence_dense_1_transform/kernel"] == "3_Dense/linear.weight"
    assert report["tokenizer"]["source"] == str((source / folder).resolve()) and (out / "tokenizer.json").is_file()
    spec = load_spec(out / "spec.json")
    from bertc.parity import onnx_runner

    ref = dict(np.load(source / "reference.npz"))
    diffs = max_diffs(onnx_runner(out / "model.onnx", "CPUExecutionProvider"), signature_of(spec), ref)
    assert diffs["sentence_embedding"] <= ATOL, diffs


def _with_dense_config(tmp_path, **changes) -> Path:
    source = tmp_path / "st"
    shutil.copytree(FIXTURES / "hf" / "st_bert_cls_dense_norm", source)
    config = source / "2_Dense" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **changes}))
    return source


@pytest.mark.parametrize("changes, message", [
    ({"activation_function": "torch.nn.modules.activation.Sigmoid"},
     r"2_Dense/config.json: activation_function = \"torch.nn.modules.activation.Sigmoid\": bertc computes exactly"),
    ({"in_features": 8}, r"2_Dense/config.json: in_features = 8: the vector before this Dense module has 16 values"),
    ({"use_residual": True}, r"2_Dense/config.json: use_residual = true: bertc applies Dense modules to the pooled"),
    ({"module_input_name": "token_embeddings"}, r"module_input_name = \"token_embeddings\""),
])
def test_sentence_transformers_dense_module_bertc_cannot_compute_is_refused(tmp_path, changes, message):
    with pytest.raises(UnsupportedModel, match=message):
        import_spec(_with_dense_config(tmp_path, **changes), tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_sentence_transformers_dense_module_out_of_place_or_without_weights(tmp_path, capsys):
    source = _with_dense_config(tmp_path)
    modules = json.loads((source / "modules.json").read_text())
    (source / "modules.json").write_text(json.dumps([modules[0], modules[2], modules[1], *modules[3:]]))
    with pytest.raises(UnsupportedModel, match=r"module 1 \(2_Dense\): type = .*Transformer -> Pooling"):
        import_spec(source, tmp_path / "x.json")
    (source / "modules.json").write_text(json.dumps(modules))
    (source / "2_Dense" / "model.safetensors").unlink()
    assert main(["import", str(source), "-o", str(tmp_path / "x.json")]) != 0
    err = capsys.readouterr().err
    assert "2_Dense" in err and "has no weights" in err and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()


def test_checkpoint_of_another_model_family_says_so(tmp_path):
    from safetensors.numpy import save_file

    save_file({"transformer.h.0.attn.c_attn.weight": np.zeros((4, 12), np.float32)},
              str(tmp_path / "gpt.safetensors"))
    spec = load_spec(FIXTURES.parent.parent / "specs" / "canonical_classifier.json")
    with pytest.raises(WeightsError, match=r"none of its tensor names is one the huggingface importer knows"):
        load_weights(bertc.build_model(spec).model, spec, tmp_path / "gpt.safetensors")


def test_pytorch_pickle_with_torch_reads_like_safetensors(tmp_path):
    torch = pytest.importorskip("torch")  # bertc never requires torch; this runs where it is installed
    from safetensors.numpy import load_file

    from bertc.checkpoints import open_checkpoint

    tensors = load_file(str(FIXTURES / "hf" / "bert_seq_cls" / "model.safetensors"))
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, tmp_path / "pytorch_model.bin")
    checkpoint = open_checkpoint(tmp_path)
    assert checkpoint.format == "pytorch" and checkpoint.names() == sorted(tensors)
    assert all(np.array_equal(checkpoint.read(n), tensors[n]) for n in tensors)


def test_import_spec_from_python_never_replaces_a_file_that_is_not_a_spec(tmp_path):
    """A tester: bertc.import_spec(src, "src/config.json") overwrote the checkpoint's own config.json (exit 0 from
    Python; the command refuses it). A spec it wrote may be written again."""
    source = hf_copy(tmp_path, "bert_seq_cls")
    for victim in ("config.json", "model.safetensors"):
        before = (source / victim).read_bytes()
        with pytest.raises(OutputError, match=f"{victim} exists and is not a bertc spec"):
            import_spec(source, source / victim)
        assert (source / victim).read_bytes() == before
    spec = tmp_path / "s.json"
    import_spec(source, spec)
    assert import_spec(source, spec, name="again")["name"] == "again"


@pytest.mark.parametrize("name", ["bert_pretraining_untied", "electra_mlm_untied", "distilbert_mlm_untied",
                                  "bert_pretraining"])
def test_an_encoder_only_import_of_a_masked_lm_loads_whatever_its_decoder(name, tmp_path):
    """A tester: bertc import --encoder-only of an untied masked LM validated, and every build refused it: its decoder
    tensor was held to equal the word table ('tied ... differ'), which no head of the spec reads."""
    spec = tmp_path / "enc.json"
    import_spec(FIXTURES / "hf" / name, spec, encoder_only=True)
    result = load_into_fresh(spec, FIXTURES / "hf" / name)
    assert not any("decoder" in path for path in result.loaded.values()) and not result.tied
    if name.endswith("_untied"):   # its own decoder table, listed as a head tensor not loaded
        assert any("decoder" in n or "vocab_projector" in n or "lm_head" in n for n in result.ignored), result.ignored


@pytest.mark.parametrize("name, head", [("bert_token_cls", "classifier"), ("roberta_qa", "qa_outputs"),
                                        ("roberta_seq_cls", None)])
def test_encoder_only_import_of_a_checkpoint_without_pooler(name, head, tmp_path):
    """transformers saves its masked LM, token classifier, QA and RoBERTa classifier models without a pooler
    (dslim/bert-base-NER, deepset/roberta-base-squad2, ...): `--encoder-only` refused them all ('the checkpoint has no
    pooler', found by a tester). Their encoder now imports without one and outputs sequence_output alone: the
    hidden states the checkpoint's own head turns into transformers' logits."""
    from safetensors.numpy import load_file

    source = FIXTURES / "hf" / name
    data = import_spec(source, tmp_path / "enc.json", encoder_only=True)
    assert "head" not in data and data["encoder"]["pooler"] is False and "has no pooler" in data["description"]
    spec = load_spec(tmp_path / "enc.json")
    model = bertc.build_model(spec).model
    result = load_weights(model, spec, source)
    from bertc.signature import signature_of

    assert signature_of(spec).output_names == ["sequence_output"] and not signature_of(spec).needs_pooled
    assert not any("pooler" in n for n in result.loaded)
    if head is None:
        return
    ref = np.load(source / "reference.npz")
    feeds = {k: ref[k] for k in ("input_word_ids", "input_mask", "input_type_ids")}
    out = model(feeds)
    hidden = np.asarray(out["sequence_output"] if isinstance(out, dict) else out)
    tensors = load_file(str(source / "model.safetensors"))
    logits = hidden @ tensors[f"{head}.weight"].T + tensors[f"{head}.bias"]
    mask = ref["input_mask"].astype(bool)
    want = ref["logits"] if "logits" in ref.files else np.stack([ref["start_logits"], ref["end_logits"]], -1)
    np.testing.assert_allclose(logits[mask], want[mask], atol=1e-5)


def test_a_config_without_model_type_is_told_what_to_add(tmp_path, capsys):
    """It said 'model_type = null' (the key is missing, as in many 2019-era checkpoints: found by a tester)."""
    source = hf_copy(tmp_path, "bert_token_cls")
    config = json.loads((source / "config.json").read_text())
    del config["model_type"]
    (source / "config.json").write_text(json.dumps(config))
    assert main(["import", str(source), "-o", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert 'has no model_type' in err and 'add "model_type": "bert" (architectures BertForTokenClassification)' in err
    config["architectures"] = ["SomethingElse"]
    (source / "config.json").write_text(json.dumps(config))
    assert main(["import", str(source), "-o", str(tmp_path / "s.json")]) == 2
    assert "has no model_type" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_a_pooler_less_encoder_only_import_takes_a_head_that_pools_the_sequence(tmp_path):
    """The build's checkpoint-config check compared the encoder with a headed import of the checkpoint (pooler true)
    and refused 'pooler: false' as 'the checkpoint's config true' (a reviewer)."""
    spec_path = tmp_path / "enc.json"
    import_spec(FIXTURES / "hf" / "bert_token_cls", spec_path, encoder_only=True)
    data = json.loads(spec_path.read_text())
    data["head"] = {"type": "sentence_embedding", "pooling": "mean"}
    spec_path.write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["build", str(spec_path), "-o", str(out), "--no-tflite", "--variants", "none", "-q"]) == 0
    assert json.loads((out / "report.json").read_text())["status"] == "passed"


def test_run_of_an_encoder_with_per_token_features_alone_says_how_to_pool(tmp_path, capsys):
    """DistilBERT's encoder (and now every pooler-less encoder-only import) outputs sequence_output alone: run said it
    'does not know what a result of this model is'."""
    spec, out, texts = tmp_path / "s.json", tmp_path / "out", tmp_path / "t.txt"
    assert main(["import", str(FIXTURES / "hf" / "distilbert_model"), "-o", str(spec), "-q"]) == 0
    assert main(["build", str(spec), "-o", str(out), "--no-tflite", "--variants", "none", "--no-parity", "-q"]) == 0
    texts.write_text("a dog\n")
    capsys.readouterr()
    assert main(["run", str(out), str(texts), "-o", str(tmp_path / "e.npy")]) == 2
    err = capsys.readouterr().err
    assert "outputs sequence_output alone" in err and '"type": "sentence_embedding", "pooling": "mean"' in err


# --- the forms users hold a trained model in (a tester's round of real save formats) ---------------------------

def _seq_cls_copy(tmp_path, name="ckpt") -> Path:
    d = tmp_path / name
    shutil.copytree(FIXTURES / "hf" / "bert_seq_cls", d)
    return d


def test_a_config_without_architectures_whose_weights_hold_a_head_is_refused(tmp_path, capsys):
    """``BertConfig(...).save_pretrained`` writes no architectures; with a classifier's state dict beside it the
    import took the base model and left the trained head unread: import and build exit 0, and bertc run gave
    embeddings, not labels. Refused now, naming the class to add; --encoder-only takes the encoder; a base model's
    checkpoint without architectures imports as before."""
    d = _seq_cls_copy(tmp_path)
    config = json.loads((d / "config.json").read_text())
    del config["architectures"]
    (d / "config.json").write_text(json.dumps(config))
    assert main(["import", str(d), "-o", str(tmp_path / "a.json")]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert ("config.json: names no architectures, and the weights hold a task head (classifier.*): add the class "
            "the model was saved as to config.json, e.g. \"architectures\": [\"BertForSequenceClassification\"] (or "
            "BertForTokenClassification / BertForMultipleChoice, as it was trained), or import --encoder-only") in err
    assert not (tmp_path / "a.json").exists()
    assert main(["import", str(d), "-o", str(tmp_path / "b.json"), "--encoder-only"]) == 0
    base = tmp_path / "base"
    shutil.copytree(FIXTURES / "hf" / "bert_model", base)
    config = json.loads((base / "config.json").read_text())
    config.pop("architectures", None)
    (base / "config.json").write_text(json.dumps(config))
    assert main(["import", str(base), "-o", str(tmp_path / "c.json")]) == 0
    # a spec written by hand for such a checkpoint, with a head: its encoder is still held to the config (a
    # reviewer: the refusal above, a WeightsError, made the check skip it)
    wrong = json.loads((tmp_path / "b.json").read_text())
    wrong["encoder"]["activation"] = "relu"
    wrong["head"] = {"type": "classifier", "num_classes": 3}
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    assert main(["validate", str(tmp_path / "wrong.json")]) == EXIT_BAD_SPEC
    assert "activation" in capsys.readouterr().err


@pytest.mark.parametrize("fixture, heads, masked_lm", [
    ("bert_pretraining", "cls.*", "BertForMaskedLM"), ("albert_mlm", "predictions.*", "AlbertForMaskedLM"),
    ("roberta_mlm", "lm_head.*", "RobertaForMaskedLM"), ("modernbert_mlm", "decoder.*, head.*", "ModernBertForMaskedLM")])
def test_a_pretrained_checkpoint_without_architectures_imports_as_its_encoder(fixture, heads, masked_lm, tmp_path):
    """Checkpoints converted from Google's TF pre-training ones by an old transformers (SciBERT, Bio_ClinicalBERT)
    have no architectures and a pre-training head: AutoModel reads them as the encoder, as bertc did, and as it does
    again (a reviewer: the task-head refusal took them too), saying the head is not loaded."""
    d = tmp_path / fixture
    shutil.copytree(FIXTURES / "hf" / fixture, d)
    config = json.loads((d / "config.json").read_text())
    del config["architectures"]
    (d / "config.json").write_text(json.dumps(config))
    assert main(["import", str(d), "-o", str(tmp_path / "s.json")]) == 0
    spec = load_spec(tmp_path / "s.json")
    assert spec.head is None
    assert (f"config.json names no architectures: the encoder is imported, as transformers' AutoModel reads it; the "
            f"checkpoint's pre-training head ({heads}) is not loaded (add \"architectures\": [\"{masked_lm}\"]") \
        in spec.description


def test_a_modernbert_qa_checkpoint_without_architectures_is_offered_its_class(tmp_path, capsys):
    """ModernBERT's question answering head is head.* + classifier.* (no qa_outputs): the refusal named sequence
    and token classification alone, and following it imported a QA model as a 2-class classifier."""
    d = tmp_path / "mqa"
    shutil.copytree(FIXTURES / "hf" / "modernbert_qa", d)
    config = json.loads((d / "config.json").read_text())
    del config["architectures"]
    (d / "config.json").write_text(json.dumps(config))
    assert main(["import", str(d), "-o", str(tmp_path / "s.json")]) == EXIT_BAD_SPEC
    assert "ModernBertForQuestionAnswering" in capsys.readouterr().err


def test_weights_of_other_names_beside_a_config(tmp_path, capsys):
    """``torch.save(model.state_dict(), "x.pt")`` beside config.json: "needs its config.json beside the weights"
    (the import took .bin alone; the build read .pt); a directory whose weights have another name (x.pt,
    ``save_pretrained(variant="fp16")``'s model.fp16.safetensors) says which file to name; a variant's sharded
    index (model.safetensors.index.fp16.json, pytorch_model.bin.index.fp16.json) imports."""
    d = _seq_cls_copy(tmp_path)
    (d / "model.safetensors").unlink()
    shutil.copyfile(FIXTURES / "hf" / "bert_seq_cls_bin" / "pytorch_model.bin", d / "x.pt")
    assert main(["import", str(d / "x.pt"), "-o", str(tmp_path / "pt.json")]) == 0
    spec = load_spec(tmp_path / "pt.json")
    model = bertc.build_model(spec).model
    assert len(load_weights(model, spec, d / "x.pt").loaded) == len(model.weights)
    assert main(["import", str(d), "-o", str(tmp_path / "dir.json")]) == EXIT_BAD_SPEC
    assert f"; to read x.pt, name the file itself: {d / 'x.pt'}" in capsys.readouterr().err
    v = _seq_cls_copy(tmp_path, "variant")
    (v / "model.safetensors").rename(v / "model.fp16.safetensors")
    assert main(["import", str(v), "-o", str(tmp_path / "v.json")]) == EXIT_BAD_SPEC
    assert "to read model.fp16.safetensors, name the file itself" in capsys.readouterr().err
    assert main(["import", str(v / "model.fp16.safetensors"), "-o", str(tmp_path / "v.json")]) == 0
    sharded = _seq_cls_copy(tmp_path, "sharded")
    (sharded / "model.safetensors").unlink()
    for f in (FIXTURES / "hf" / "bert_seq_cls_bin_sharded").iterdir():
        shutil.copyfile(f, sharded / f.name.replace("pytorch_model.bin.index.json", "pytorch_model.bin.index.fp16.json"))
    index = sharded / "pytorch_model.bin.index.fp16.json"
    # one shard alone: a part of the weights (its import wrote a spec whose build failed on the missing tensors)
    assert main(["import", str(sharded / "pytorch_model-00001-of-00002.bin"), "-o", str(tmp_path / "s.json")]) == 2
    assert (f"pytorch_model-00001-of-00002.bin: one shard of a sharded checkpoint, a part of its weights: import its "
            f"index, {index}, or the directory") in capsys.readouterr().err
    assert main(["import", str(tmp_path / "nowhere" / "model-00001-of-00002.safetensors"), "-o",
                 str(tmp_path / "s.json")]) == EXIT_BAD_SPEC   # (a reviewer: exit 70, listing a folder not there)
    assert "model-00001-of-00002.safetensors: file not found" in capsys.readouterr().err
    assert main(["import", str(index), "-o", str(tmp_path / "s.json")]) == 0
    spec = load_spec(tmp_path / "s.json")
    model = bertc.build_model(spec).model
    assert spec.head.type == "classifier" and len(load_weights(model, spec, index).loaded) == len(model.weights)


def test_a_peft_adapter_is_told_to_merge_into_its_base_model(tmp_path, capsys):
    """A LoRA fine-tune saved by PeftModel.save_pretrained (adapter_config.json + adapter_model.safetensors):
    "no weights found" for the folder, "needs its config.json" for the file, and with a config.json beside it the
    import wrote a spec whose build failed on 51 missing tensors."""
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "bert-base-x",
                                                       "r": 8, "target_modules": ["query", "value"]}))
    shutil.copyfile(FIXTURES / "hf" / "bert_seq_cls" / "model.safetensors", d / "adapter_model.safetensors")
    # a folder holding a whole model beside an adapter: the model is imported
    both = tmp_path / "both"
    shutil.copytree(FIXTURES / "hf" / "bert_seq_cls", both)
    shutil.copyfile(d / "adapter_config.json", both / "adapter_config.json")
    assert main(["import", str(both), "-o", str(tmp_path / "both.json")]) == 0
    for source in (d, d / "adapter_model.safetensors"):
        for config in (False, True):
            if config:
                shutil.copyfile(FIXTURES / "hf" / "bert_seq_cls" / "config.json", d / "config.json")
            assert main(["import", str(source), "-o", str(tmp_path / "s.json")]) == EXIT_BAD_SPEC
            err = capsys.readouterr().err
            assert (f"{source}: a PEFT LORA adapter (adapter_config.json), the fine-tune's deltas to \"bert-base-x\", "
                    f"not a model: merge it into the base model and import that (peft: "
                    f"PeftModel.from_pretrained(base_model, ADAPTER_DIR).merge_and_unload()") in err, err
            assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("name, says", [
    ("tf_model.h5", "tf_model.h5 is transformers' TensorFlow (Keras h5) weights, not a TensorFlow checkpoint: convert "
                    "it with transformers 4 (the model's class: from_pretrained(DIR, from_tf=True)"),
    ("flax_model.msgpack", "flax_model.msgpack is transformers' Flax weights: convert it with transformers 4"),
    ("model.onnx", "model.onnx is a compiled model (bertc's output, or Optimum's / torch.onnx's export), not a "
                   "checkpoint bertc imports: import the checkpoint it was exported from")])
def test_weights_bertc_does_not_read_are_named_with_the_way_to_ones_it_does(name, says, tmp_path, capsys):
    """A TF-only or Flax-only Hub model, an Optimum export: refused (exit 2) as 'no weights found' / 'unknown
    weights format', naming no way forward ("a TensorFlow checkpoint" read as if tf_model.h5 were one)."""
    d = tmp_path / "ckpt"
    d.mkdir()
    shutil.copyfile(FIXTURES / "hf" / "bert_seq_cls" / "config.json", d / "config.json")
    (d / name).write_bytes(b"\x89HDF\r\n" + bytes(64))
    for source in (d, d / name):
        assert main(["import", str(source), "-o", str(tmp_path / "s.json")]) == EXIT_BAD_SPEC
        assert says in capsys.readouterr().err



def test_a_trainers_training_state_is_not_offered_as_weights(tmp_path, capsys):
    """A DeepSpeed ZeRO-3 checkpoint-N/ (config.json, optimizer.pt, scheduler.pt, rng_state.pth; no model weights):
    the folder was told to import optimizer.pt, and rng_state.pth imported, exit 0, as a classifier whose build failed
    on every weight missing."""
    d = _seq_cls_copy(tmp_path, "checkpoint-500")
    (d / "model.safetensors").unlink()
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        shutil.copyfile(FIXTURES / "hf" / "bert_seq_cls_bin" / "pytorch_model.bin", d / name)
    assert main(["import", str(d), "-o", str(tmp_path / "s.json")]) == EXIT_BAD_SPEC
    assert "name the file itself" not in capsys.readouterr().err
    assert main(["import", str(d / "rng_state.pth"), "-o", str(tmp_path / "s.json")]) == EXIT_BAD_SPEC
    assert "rng_state.pth: a Trainer's training state (the random generators' state), not the model's weights" in \
        capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def _next_sentence_checkpoint(tmp_path, architectures=("BertForNextSentencePrediction",)) -> Path:
    """BertForNextSentencePrediction's files, from the pre-training fixture: its encoder, pooler and
    cls.seq_relationship are the NSP model's, which computes its ``classification`` output."""
    def drop_mlm(t):
        for name in [n for n in t if n.startswith("cls.predictions.")]:
            t.pop(name)

    source = hf_copy(tmp_path, "bert_pretraining", drop_mlm)
    config = json.loads((source / "config.json").read_text())
    config.pop("architectures")
    if architectures:
        config["architectures"] = list(architectures)
    (source / "config.json").write_text(json.dumps(config))
    return source


def test_next_sentence_prediction_checkpoint_imports_as_a_two_class_classifier(tmp_path):
    """BertForNextSentencePrediction (the pooler and cls.seq_relationship) was refused: it is a classifier of the
    pooled output with two classes (0: B follows A), whatever num_labels says, and every tensor is read."""
    source = _next_sentence_checkpoint(tmp_path)
    config = json.loads((source / "config.json").read_text())
    config["num_labels"] = 5   # transformers' NSP head has 2 outputs whatever the config says
    (source / "config.json").write_text(json.dumps(config))
    spec_path = tmp_path / "nsp.json"
    assert main(["import", str(source), "-o", str(spec_path)]) == 0
    data = json.loads(spec_path.read_text())
    assert data["head"] == {"type": "classifier", "num_classes": 2, "dropout_rate": 0.0}
    assert "Class 0: text B follows text A" in data["description"]
    result = load_into_fresh(spec_path, source)
    assert not result.ignored and result.tensors == len(result.loaded) + len(result.tied)
    ref = dict(np.load(FIXTURES / "hf" / "bert_pretraining" / "reference.npz"))
    spec = load_spec(spec_path)
    model = bertc.build_model(spec).model
    load_weights(model, spec, resolve_weights_path(spec.weights, spec_path))
    got = keras_run(model)({i.name: ref[i.name] for i in signature_of(spec).inputs})
    assert float(np.max(np.abs(got["logits"] - ref["classification"]))) <= ATOL


def test_a_next_sentence_checkpoint_without_architectures_is_offered_its_class(tmp_path):
    source = _next_sentence_checkpoint(tmp_path, architectures=())
    assert main(["import", str(source), "-o", str(tmp_path / "s.json")]) == 0
    spec = load_spec(tmp_path / "s.json")
    assert spec.head is None
    assert "(cls.*) is not loaded (add \"architectures\": [\"BertForNextSentencePrediction\"] for the next-sentence " \
           "classifier)" in spec.description


def test_a_classifier_checkpoint_holding_a_next_sentence_head_too_ignores_that_head(tmp_path):
    """A reviewer: the next-sentence head mapped to the classifier of any classifier spec, so a classifier checkpoint
    that also held one was refused as two 'tied' copies of the classifier that differ; then it was refused as a head
    the model does not have (tester L: a multi-task save had no way through). The classifier is read from
    classifier.*, and the other head is ignored, as transformers' BertForSequenceClassification ignores it."""
    def add_nsp(t):
        t["cls.seq_relationship.weight"] = np.full((3, 16), 0.5, np.float32)
        t["cls.seq_relationship.bias"] = np.zeros(3, np.float32)

    source = hf_copy(tmp_path, "bert_seq_cls", add_nsp)
    import_spec(source, tmp_path / "s.json")
    result = load_into_fresh(tmp_path / "s.json", source)
    assert result.ignored == {n: "another task head of the checkpoint (next_sentence), which this model does not "
                                 "have: transformers ignores it too"
                              for n in ("cls.seq_relationship.weight", "cls.seq_relationship.bias")}
    assert result.loaded["classifier/kernel"] == "classifier.weight"


def test_a_pre_training_checkpoint_is_no_next_sentence_classifier(tmp_path):
    """A reviewer: once another head beside the model's own was ignored, a 2-class classifier spec loaded
    BertForPreTraining's weights, its next-sentence head as the classifier and its masked-LM head ignored. It is
    refused as before: the classifier has no tensor, the masked-LM head is named unused."""
    spec = seq_cls_spec(tmp_path, num_classes=2)
    with pytest.raises(WeightsError) as caught:
        load_into_fresh(spec, FIXTURES / "hf" / "bert_pretraining" / "model.safetensors")
    assert "missing: bertc weight 'classifier/kernel'" in str(caught.value)
    assert "unused: checkpoint tensor 'cls.predictions.bias'" in str(caught.value)
