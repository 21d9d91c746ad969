"""Hugging Face DeBERTa-v2/v3 through ``bertc import``: every fixture (tools/make_deberta_fixtures.py: tiny random
models saved by transformers, with its outputs) reproduces transformers at the real tokens of a full row, a
right-padded row and a row with holes, in Keras and in the optimized ONNX graph; full CLI builds compare every
backend; what bertc cannot compute exactly is refused, naming the key."""
import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import bertc
from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC
from bertc.importers import import_spec, load_weights
from bertc.signature import signature_of
from bertc.spec import load_spec
from bertc.weights import resolve_weights_path

HF = Path(__file__).resolve().parent / "fixtures" / "hf"
FIXTURES = ["deberta_v3_model", "deberta_v3_seq_cls", "deberta_v2_seq_cls", "deberta_v3_token_cls",
            "deberta_v2_token_cls", "deberta_qa_c2p", "deberta_v3_qa", "deberta_v3_mlm", "deberta_v2_mlm_legacy",
            "deberta_v3_mc"]
HEADS = {"deberta_v3_model": None, "deberta_v3_seq_cls": "classifier", "deberta_v2_seq_cls": "classifier",
         "deberta_v3_token_cls": "token_classifier", "deberta_v2_token_cls": "token_classifier",
         "deberta_qa_c2p": "span_labeler", "deberta_v3_qa": "span_labeler", "deberta_v3_mlm": "masked_lm",
         "deberta_v2_mlm_legacy": "masked_lm", "deberta_v3_mc": "multiple_choice"}
ATOL = 1e-5


def imported(fixture: str, directory: Path):
    path = directory / "spec.json"
    import_spec(HF / fixture, path)
    return path, dict(np.load(HF / fixture / "reference.npz"))


def reference_name(ref: dict, output: str) -> str:
    """transformers' output under bertc's name (the masked-LM head's logits are the reference's ``logits``)."""
    return output if output in ref else "logits"


def diff_at_real_tokens(got, want, mask) -> float:
    """Max abs diff over the real tokens of per-token outputs, over everything else. transformers' padded query
    rows attend to every key (its mask is mask_i * mask_j, filled row-wide): their values mean nothing."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    if got.ndim >= 2 and got.shape[:2] == mask.shape:
        return float(np.abs(got[mask.astype(bool)] - want[mask.astype(bool)]).max())
    return float(np.abs(got - want).max())


def max_diffs(run, sig, ref) -> dict:
    got = run({i.name: ref[i.name] for i in sig.inputs})
    return {o.name: diff_at_real_tokens(got[o.name], ref[reference_name(ref, o.name)], ref["input_mask"])
            for o in sig.outputs if reference_name(ref, o.name) in ref}


def keras_run(model):
    return lambda x: {k: v.numpy() for k, v in model(x, training=False).items()}


@pytest.mark.parametrize("fixture", FIXTURES)
def test_imported_deberta_reproduces_transformers_in_keras_and_optimized_onnx(fixture, tmp_path):
    from bertc.optimize.lower import lower_model
    from bertc.optimize.onnx_artifacts import ort_session

    spec_path, ref = imported(fixture, tmp_path)
    spec = load_spec(spec_path)
    assert spec.encoder.type == "scaffold" and (spec.head.type if spec.head else None) == HEADS[fixture]
    assert spec.encoder.position.type == "disentangled"
    sig = signature_of(spec)
    built = bertc.build_model(spec)
    before = max_diffs(keras_run(built.model), sig, ref)
    result = load_weights(built.model, spec, resolve_weights_path(spec.weights, spec_path))
    assert result.loaded and len(result.loaded) == len(built.model.weights)
    diffs = max_diffs(keras_run(built.model), sig, ref)
    assert diffs and max(diffs.values()) <= ATOL, diffs
    assert max(before.values()) > 1e-2                      # the match comes from the loaded weights
    lowered = lower_model(built)
    assert not lowered.not_lowered, lowered.not_lowered
    assert lowered.op_counts["com.microsoft.MultiHeadAttention"] == spec.encoder.num_layers
    session = ort_session(lowered.proto.SerializeToString())

    def run(x):
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, x)))

    diffs = max_diffs(run, sig, ref)
    assert max(diffs.values()) <= ATOL, diffs


def test_v3_config_becomes_the_expected_spec(tmp_path):
    spec = json.loads(imported("deberta_v3_seq_cls", tmp_path)[0].read_text())
    enc = spec["encoder"]
    assert enc["embedding"] == {"type": "custom", "vocab_size": 64, "max_sequence_length": 32,
                                "use_position_embeddings": False, "use_layer_norm": True, "layer_norm_epsilon": 1e-7,
                                "dropout_rate": 0.1}
    assert enc["position"] == {"type": "disentangled", "max_relative_positions": 32, "position_buckets": 8,
                               "norm_rel_ebd": "layer_norm", "layer_norm_epsilon": 1e-7}
    assert enc["hidden"]["attention"] == {"type": "disentangled", "num_heads": 4, "dropout_rate": 0.1,
                                          "pos_att_type": ["p2c", "c2p"], "share_att_key": True}
    assert spec["head"]["pooling"] == "first" and spec["head"]["transform"]["activation"] == "gelu"
    assert spec["head"]["dropout_rate"] == 0.1 and spec["head"]["num_classes"] == 3
    v2 = json.loads(imported("deberta_v2_token_cls", tmp_path)[0].read_text())["encoder"]
    assert v2["embedding"]["use_position_embeddings"] and v2["embedding"]["type_vocab_size"] == 2
    assert v2["hidden"]["attention"]["share_att_key"] is False and v2["position"]["max_relative_positions"] == 16
    assert "input_type_ids" in load_spec(tmp_path / "spec.json").encoder.input_names


def _variant(tmp_path, fixture="deberta_v3_seq_cls", **changes):
    """A copy of a fixture directory with its config.json changed (None deletes a key)."""
    directory = tmp_path / f"{fixture}_variant"
    shutil.copytree(HF / fixture, directory)
    cfg = json.loads((directory / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (directory / "config.json").write_text(json.dumps(cfg))
    return directory


def test_pos_att_type_string_and_defaults_read_as_transformers_does(tmp_path):
    """The "p2c|c2p" string of older configs, a repeated term (transformers counts it once), and keys left out
    (transformers' defaults: no log buckets, no layer norm of the relative embeddings, own projections)."""
    spec = import_spec(_variant(tmp_path, pos_att_type="P2C | c2p|c2p"), tmp_path / "a.json")
    assert spec["encoder"]["hidden"]["attention"]["pos_att_type"] == ["p2c", "c2p"]
    spec = import_spec(_variant(tmp_path / "b", pos_att_type=None, position_buckets=None, norm_rel_ebd=None,
                                share_att_key=None), tmp_path / "b.json")
    assert spec["encoder"]["hidden"]["attention"]["pos_att_type"] == []
    assert spec["encoder"]["hidden"]["attention"]["share_att_key"] is False
    assert spec["encoder"]["position"]["position_buckets"] == -1 and spec["encoder"]["position"]["norm_rel_ebd"] == "none"


REFUSED = [
    (dict(relative_attention=False), "relative_attention = false"),
    (dict(relative_attention=None), "relative_attention = false"),    # transformers' default
    (dict(conv_kernel_size=3, conv_act="gelu"), "conv_kernel_size = 3"),
    (dict(embedding_size=16), "embedding_size = 16"),
    (dict(attention_head_size=4), "attention_head_size = 4"),
    (dict(pooler_hidden_size=16), "pooler_hidden_size = 16"),
    (dict(position_buckets=1), "position_buckets = 1"),
    (dict(max_relative_positions=5), "max_relative_positions = 5"),
    (dict(max_position_embeddings=5), "max_position_embeddings = 5"),
    (dict(pos_att_type=["c2p", "p2p"]), 'pos_att_type = ["c2p", "p2p"]'),
    (dict(pos_att_type="c2p|p2p"), 'pos_att_type = "c2p|p2p"'),
    (dict(norm_rel_ebd="layer_norm|batch_norm"), 'norm_rel_ebd = "layer_norm|batch_norm"'),
    (dict(hidden_act="mish"), 'hidden_act = "mish"'),
    (dict(pooler_hidden_act="mish"), 'pooler_hidden_act = "mish"'),
    (dict(architectures=["DebertaV2ForCausalLM"]), '"DebertaV2ForCausalLM"'),
]


@pytest.mark.parametrize("changes,named", REFUSED, ids=[next(iter(c)) + "-" + str(i) for i, (c, _) in enumerate(REFUSED)])
def test_what_bertc_cannot_compute_exactly_is_refused_naming_the_key(changes, named, tmp_path, capsys):
    source = _variant(tmp_path, **changes)
    out = tmp_path / "spec.json"
    assert main(["import", str(source), "-o", str(out)]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert named in err and "config.json" in err and "Traceback" not in err, err
    assert not out.exists()


def test_checkpoint_extras_are_reported_as_ignored(tmp_path):
    """A v3 checkpoint as microsoft ships it: the replaced-token-detection head (mask_predictions) and an unused
    absolute position table (position_biased_input false) are ignored with their reason, nothing else."""
    from safetensors.numpy import load_file, save_file

    directory = _variant(tmp_path, "deberta_v3_token_cls")
    tensors = load_file(str(directory / "model.safetensors"))
    tensors["deberta.embeddings.position_embeddings.weight"] = np.zeros((32, 32), np.float32)
    tensors["mask_predictions.dense.weight"] = np.zeros((32, 32), np.float32)
    tensors["mask_predictions.classifier.bias"] = np.zeros((1,), np.float32)
    save_file(tensors, str(directory / "model.safetensors"))
    spec_path = tmp_path / "spec.json"
    import_spec(directory, spec_path)
    spec = load_spec(spec_path)
    result = load_weights(bertc.build_model(spec).model, spec, directory)
    assert set(result.ignored) == {"deberta.embeddings.position_embeddings.weight", "mask_predictions.dense.weight",
                                   "mask_predictions.classifier.bias"}
    assert "position_biased_input false" in result.ignored["deberta.embeddings.position_embeddings.weight"]
    assert "replaced-token-detection" in result.ignored["mask_predictions.dense.weight"]


# --- bertc import DIR -o spec.json && bertc build spec.json -o out, every backend ------------------------

BUILT = ["deberta_v3_seq_cls", "deberta_v2_token_cls", "deberta_v3_mlm", "deberta_v3_model"]


@pytest.mark.slow
@pytest.mark.parametrize("fixture", BUILT)
def test_cli_import_and_build_every_backend_reproduces_transformers(fixture, tmp_path, capsys):
    from bertc.backends import open_runner, plan_backends

    spec_path, out = tmp_path / "spec.json", tmp_path / "out"
    assert main(["import", str(HF / fixture), "-o", str(spec_path)]) == 0
    assert main(["build", str(spec_path), "-o", str(out), "-q"]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed" and report["parity"]["passed"]
    fusion = report["fusion"]
    assert fusion["lowered"] and fusion["not_lowered"] == [] and fusion["structural_check"]["passed"]
    assert fusion["fused_ops"]["com.microsoft.MultiHeadAttention"] == 2
    assert fusion["layers"]["layer_0"]["output_layer_norm"] == "Sum + LayerNormalization"
    assert fusion["layers"]["layer_0"]["attention"].startswith("FusedMatMul+GatherElements (c2p")
    spec = load_spec(out / "spec.json")
    sig = signature_of(spec)
    ref = dict(np.load(HF / fixture / "reference.npz"))
    backends, _ = plan_backends(out, report["artifacts"])
    worst, int8 = {}, []
    for backend in backends:
        if backend.precision != "fp32":
            int8.append(backend.name)
            continue
        worst[backend.name] = max(max_diffs(open_runner(backend), sig, ref).values())
    assert {"onnx_cpu", "onnx_optimized_cpu", "tflite"} <= set(worst), worst
    assert max(worst.values()) <= ATOL, worst
    # int8 artifacts pass the task criteria of the parity report (argmax agreement / cosine)
    assert "onnx_int8_cpu" in int8
    assert all(r["passed"] for r in report["parity"]["results"] if r["backend"] in int8)
    if fixture == "deberta_v3_model":                  # its sentencepiece tokenizer is bundled and used
        assert {"spm.model", "tokenizer.json"} <= set(report["tokenizer"]["files"]) and (out / "spm.model").exists()
        text = tmp_path / "texts.txt"
        text.write_text("the cat sat on the mat.\nis this the tree by the house?\ta dog ran fast!\n")
        assert main(["parity", str(out), "--text", str(text), "--json"]) == 0
        section = json.loads((out / "report.json").read_text())["parity"]
        assert section["passed"] and section["grid"][0]["case"].startswith("text: 2 example(s)")
        # spm.model alone (as microsoft/deberta-v3-base ships it) reads the text as tokenizer.json does
        from bertc.text import encode_texts

        texts = ["the cat sat on the mat.", "is this the tree by the house?"]
        whole = encode_texts(out, texts, 16)
        (out / "tokenizer.json").unlink()
        alone = encode_texts(out, texts, 16)
        assert all(np.array_equal(whole[k], alone[k]) for k in whole)
        assert main(["parity", str(out), "--text", str(text), "--json"]) == 0


def test_spm_model_alone_is_bundled_and_read(tmp_path):
    from bertc.text import bundle_tokenizer, load_tokenizer

    source = tmp_path / "src"
    source.mkdir()
    shutil.copyfile(HF / "deberta_v3_model" / "spm.model", source / "spm.model")
    shutil.copyfile(HF / "deberta_v3_model" / "tokenizer_config.json", source / "tokenizer_config.json")
    out = tmp_path / "out"
    out.mkdir()
    section = bundle_tokenizer(source, out)
    assert section["kind"] == "SentencePiece (spm.model)" and (out / "spm.model").exists()
    assert section["tokenizer_class"] == "DebertaV2Tokenizer"
    # read as transformers reads it (tests/test_sentencepiece.py compares the ids)
    assert load_tokenizer(out, 16).encode("the cat sat").ids[0] == 1   # [CLS]


@pytest.mark.parametrize("position,n", [({"position_buckets": 256}, 512), ({"position_buckets": 8}, 32),
                                        ({"position_buckets": 8, "max_relative_positions": 16}, 32),
                                        ({"position_buckets": -1, "max_relative_positions": 12}, 32)])
def test_row_window_is_exactly_the_rows_each_length_reads(position, n):
    """The scheme gathers, for length S, the window (first, stop) of table rows: every row the relative positions
    of length S read, and only those (they are contiguous)."""
    from bertc.components.positions import DisentangledSpec, disentangled_row_lookup, disentangled_row_window

    spec = DisentangledSpec(**position)
    lookup, window = disentangled_row_lookup(spec, n), disentangled_row_window(spec, n)
    for s in range(1, n + 1):
        read = set(lookup[n - s:n + s - 1].tolist())
        assert read == set(range(*window[s])), s
    if n == 512:
        assert window[512].tolist() == [1, 512] and window[128][1] - window[128][0] == 255


def test_encoder_without_pooler(tmp_path, capsys):
    """``pooler: false``: the headless model outputs sequence_output alone; a head reading the pooled output is
    a spec error naming both places."""
    spec = json.loads(imported("deberta_v3_model", tmp_path)[0].read_text())
    assert spec["encoder"]["pooler"] is False
    assert signature_of(load_spec(spec)).output_names == ["sequence_output"]
    spec["head"] = {"type": "classifier", "num_classes": 2}          # pooling: the pooler (the default)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    assert main(["validate", str(path)]) == EXIT_BAD_SPEC
    err = capsys.readouterr()
    assert "$.encoder.pooler: is false, but the 'classifier' head at $.head reads the pooled output" in err.out + err.err


def test_encoder_only_import_ignores_the_task_head(tmp_path):
    """``--encoder-only`` of a sequence classifier: the encoder alone (sequence_output), the ContextPooler and the
    classifier tensors reported as ignored."""
    spec_path = tmp_path / "spec.json"
    assert main(["import", str(HF / "deberta_v3_seq_cls"), "-o", str(spec_path), "--encoder-only"]) == 0
    spec = load_spec(spec_path)
    assert spec.head is None and signature_of(spec).output_names == ["sequence_output"]
    model = bertc.build_model(spec).model
    result = load_weights(model, spec, HF / "deberta_v3_seq_cls")
    assert set(result.ignored) == {"pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias"}
    ref = dict(np.load(HF / "deberta_v3_model" / "reference.npz"))
    assert set(keras_run(model)({n: ref[n] for n in ("input_word_ids", "input_mask")})) == {"sequence_output"}
