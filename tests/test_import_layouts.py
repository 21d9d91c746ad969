"""Hugging Face checkpoint layouts beyond the common one, each computed as transformers computes it.

Fixtures (tests/fixtures/hf/, written only by tools/make_layout_fixtures.py) are tiny random-weight checkpoints
with transformers' outputs: masked LMs with ``tie_word_embeddings: false`` (``*_untied``), bert_seq_cls's weights in
sharded ``pytorch_model-0000N-of-0000M.bin`` files (``bert_seq_cls_bin_sharded``, as transformers 4 writes them), an
ALBERT whose ``embedding_size`` equals ``hidden_size`` (``albert_equal_embedding``).
Where a variant needs no fixture of its own, a fixture's tensors are rewritten here with safetensors (no torch
needed).
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import bertc
from bertc.build import expected_param_count
from bertc.checkpoints import open_checkpoint
from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC, WeightsError
from bertc.importers import import_spec, load_weights
from bertc.signature import signature_of
from bertc.spec import load_spec
from bertc.weights import resolve_weights_path

HF = Path(__file__).resolve().parent / "fixtures" / "hf"
ATOL = 1e-5


def feeds(spec, ref) -> dict:
    return {i.name: ref[i.name] for i in signature_of(spec).inputs}


def outputs_of(model, spec, ref) -> dict:
    return {k: np.asarray(v) for k, v in model(feeds(spec, ref), training=False).items()}


def max_diff(got: dict, spec, ref) -> float:
    return max(float(np.abs(np.asarray(got[o.name]) - ref[o.name]).max()) for o in signature_of(spec).outputs)


def loaded(source: Path, tmp_path: Path, reference: Path = None):
    """``bertc import`` of ``source``, the Keras model built from the spec with the checkpoint's weights loaded:
    (spec, built model, load result, reference arrays)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "spec.json"
    data = import_spec(source, path)
    ref = dict(np.load(reference or Path(source) / "reference.npz"))
    if data.get("head", {}).get("type") == "pretrainer":   # as many masked positions as the reference has
        data["head"]["num_token_predictions"] = ref["masked_lm_positions"].shape[1]
        path.write_text(json.dumps(data))
    spec = load_spec(path)
    built = bertc.build_model(spec)
    result = load_weights(built.model, spec, source)
    assert len(result.loaded) == len(built.model.weights)
    return spec, built, result, ref


def rewritten(tmp_path: Path, fixture: str, config: dict = None, edit=None) -> Path:
    """A copy of the fixture with ``config`` merged into config.json and ``edit(tensors)`` applied to its
    model.safetensors (a dict of name -> array, changed in place)."""
    from safetensors.numpy import load_file, save_file

    target = tmp_path / fixture
    shutil.copytree(HF / fixture, target)
    if config:
        cfg = json.loads((target / "config.json").read_text())
        cfg.update(config)
        (target / "config.json").write_text(json.dumps(cfg))
    if edit:
        tensors = load_file(str(target / "model.safetensors"))
        edit(tensors)
        save_file(tensors, str(target / "model.safetensors"))
    return target


# --- masked LMs with tie_word_embeddings false: the decoder a table of its own --------------------------------

UNTIED = {"bert_mlm_untied": ("masked_lm", "cls.predictions.bias"),
          "bert_pretraining_untied": ("pretrainer", "cls.predictions.bias"),
          "roberta_mlm_untied": ("masked_lm", "lm_head.bias"),
          "distilbert_mlm_untied": ("masked_lm", None),
          "electra_mlm_untied": ("masked_lm", None)}


@pytest.mark.parametrize("name", list(UNTIED))
def test_an_untied_masked_lm_decoder_is_its_own_table(name, tmp_path):
    """transformers 5 gives the untied decoder its own weight and bias; the head's ``bias`` tensor (saved, differing,
    never read) is reported as ignored with the reason."""
    head, unread = UNTIED[name]
    spec, built, result, ref = loaded(HF / name, tmp_path)
    assert spec.head.type == head and spec.head.decoder_tied is False
    assert "masked_lm/decoder" in result.loaded and not result.tied
    assert int(built.model.count_params()) == expected_param_count(spec)
    assert max_diff(outputs_of(built.model, spec, ref), spec, ref) <= ATOL
    if unread:
        assert set(result.ignored) == {unread} and "tie_word_embeddings false" in result.ignored[unread]


@pytest.mark.parametrize("name", ["bert_mlm_untied", "bert_pretraining_untied"])
def test_the_optimized_graph_multiplies_by_the_own_decoder(name, tmp_path):
    from bertc.optimize.lower import lower_model
    from bertc.optimize.onnx_artifacts import ort_session

    spec, built, _, ref = loaded(HF / name, tmp_path)
    lowered = lower_model(built)
    session = ort_session(lowered.proto.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    assert max_diff(dict(zip(names, session.run(names, feeds(spec, ref)))), spec, ref) <= ATOL


def test_a_transformers_4_untied_decoder_bias_saved_once_is_read(tmp_path):
    """transformers 4 makes the untied decoder's bias the head's ``bias`` (one tensor, saved once, under
    cls.predictions.bias): that tensor is then the decoder's bias."""
    def as_transformers_4(t):
        t["cls.predictions.bias"] = t.pop("cls.predictions.decoder.bias")

    source = rewritten(tmp_path, "bert_mlm_untied", edit=as_transformers_4)
    spec, built, result, ref = loaded(source, tmp_path)
    assert result.loaded["masked_lm/output_bias"] == "cls.predictions.bias" and not result.ignored
    assert max_diff(outputs_of(built.model, spec, ref), spec, ref) <= ATOL


@pytest.mark.parametrize("fixture,weight,table", [
    ("modernbert_mlm", "decoder.weight", "model.embeddings.tok_embeddings.weight"),
    ("deberta_v2_mlm_legacy", "cls.predictions.decoder.weight", "deberta.embeddings.word_embeddings.weight")])
def test_modernbert_and_legacy_deberta_untied_decoders_are_read(fixture, weight, table, tmp_path):
    """Their tied fixtures with tie_word_embeddings false and the decoder saved as a copy of the word table: the
    outputs of the tied model (tests/test_modernbert.py and tests/test_deberta.py compare those with transformers),
    read from the decoder's own tensor."""
    source = rewritten(tmp_path, fixture, {"tie_word_embeddings": False},
                       lambda t: t.__setitem__(weight, t[table].copy()))
    spec, built, result, ref = loaded(source, tmp_path / "untied")
    assert spec.head.decoder_tied is False and result.loaded["masked_lm/decoder"] == weight
    tied_spec, tied, _, _ = loaded(HF / fixture, tmp_path / "tied")
    assert tied_spec.head.decoder_tied is True
    assert max_diff(outputs_of(built.model, spec, ref), spec, outputs_of(tied.model, tied_spec, ref)) <= 1e-6


def test_a_tied_config_still_refuses_a_decoder_that_differs_from_the_word_table(tmp_path):
    """tie_word_embeddings true (the default): transformers ties the decoder to the word table, so a checkpoint whose
    decoder tensor differs from it is not the model its config describes."""
    source = rewritten(tmp_path, "bert_mlm_untied", {"tie_word_embeddings": True})
    path = tmp_path / "spec.json"
    import_spec(source, path)
    spec = load_spec(path)
    assert spec.head.decoder_tied is True
    with pytest.raises(WeightsError, match=r"tied: .*cls.predictions.decoder.weight.* differ"):
        load_weights(bertc.build_model(spec).model, spec, source)


# --- sharded checkpoints: pytorch_model-0000N-of-0000M.bin + pytorch_model.bin.index.json ---------------------

SHARDS = HF / "bert_seq_cls_bin_sharded"


def sharded_bin(tmp_path: Path) -> Path:
    """bert_seq_cls as transformers 4 saves it with safe_serialization=False beyond max_shard_size."""
    source = tmp_path / "bert_bin_sharded"
    shutil.copytree(SHARDS, source)
    shutil.copyfile(HF / "bert_seq_cls" / "config.json", source / "config.json")
    return source


@pytest.mark.parametrize("given", ["directory", "index"])
def test_sharded_pytorch_bin_imports_and_computes_what_transformers_did(given, tmp_path):
    """Imported from the directory or from its index file: every shard's tensors, bert_seq_cls's logits."""
    source = sharded_bin(tmp_path)
    shards = sorted(p.name for p in source.glob("pytorch_model-*.bin"))
    assert len(shards) >= 2
    checkpoint = open_checkpoint(source)
    assert checkpoint.format == "pytorch" and f"in {len(shards)} shards" in checkpoint.describe()
    weight_map = json.loads((source / "pytorch_model.bin.index.json").read_text())["weight_map"]
    assert checkpoint.names() == sorted(weight_map)
    given_path = source if given == "directory" else source / "pytorch_model.bin.index.json"
    spec_path = tmp_path / "spec.json"
    import_spec(given_path, spec_path)
    spec = load_spec(spec_path)
    assert resolve_weights_path(spec.weights, spec_path) == given_path.resolve()
    built = bertc.build_model(spec)
    result = load_weights(built.model, spec, resolve_weights_path(spec.weights, spec_path))
    assert result.format == "pytorch" and result.tensors == len(weight_map) == len(result.loaded)
    ref = dict(np.load(HF / "bert_seq_cls" / "reference.npz"))
    assert max_diff(outputs_of(built.model, spec, ref), spec, ref) <= ATOL


def test_a_missing_shard_is_named_with_its_index(tmp_path, capsys):
    source = sharded_bin(tmp_path)
    missing = sorted(source.glob("pytorch_model-*.bin"))[-1]
    missing.unlink()
    for given in (source, source / "pytorch_model.bin.index.json"):
        out = tmp_path / "spec.json"
        assert main(["import", str(given), "-o", str(out)]) == EXIT_BAD_SPEC
        err = capsys.readouterr().err
        assert "pytorch_model.bin.index.json" in err and missing.name in err and "not beside it" in err, err
        assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("index", ["{}", "[1, 2]", '{"weight_map": {"a": 3}}', "not json"])
def test_an_unreadable_index_is_named(index, tmp_path):
    source = sharded_bin(tmp_path)
    (source / "pytorch_model.bin.index.json").write_text(index)
    with pytest.raises(WeightsError, match=r"pytorch_model.bin.index.json: not a PyTorch shard index"):
        open_checkpoint(source)


# --- ALBERT with embedding_size == hidden_size: transformers still projects (embedding_hidden_mapping_in) -----------

def test_albert_with_equal_widths_keeps_its_embedding_projection(tmp_path):
    from bertc.optimize.lower import lower_model
    from bertc.optimize.onnx_artifacts import ort_session

    spec, built, result, ref = loaded(HF / "albert_equal_embedding", tmp_path)
    enc = spec.encoder
    assert (enc.type, enc.embedding_width, enc.hidden_size, enc.embedding_projection) == ("albert", 16, 16, "always")
    assert result.loaded["embeddings/embedding_projection/kernel"] == "encoder.embedding_hidden_mapping_in.weight"
    assert int(built.model.count_params()) == expected_param_count(spec)
    assert max_diff(outputs_of(built.model, spec, ref), spec, ref) <= ATOL
    session = ort_session(lower_model(built).proto.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    assert max_diff(dict(zip(names, session.run(names, feeds(spec, ref)))), spec, ref) <= ATOL


@pytest.mark.parametrize("rule,projected", [(None, False), ("factorized", False), ("always", True)])
def test_an_albert_spec_at_equal_widths_projects_only_when_it_says_always(rule, projected):
    """Model Garden's AlbertEncoder (and the original ALBERT) project only where the widths differ: a spec without
    embedding_projection keeps that; "always" is transformers' ALBERT."""
    enc = {"type": "albert", "vocab_size": 30, "hidden_size": 8, "embedding_width": 8, "num_layers": 2,
           "num_attention_heads": 2, "intermediate_size": 16, "max_sequence_length": 8}
    if rule:
        enc["embedding_projection"] = rule
    spec = load_spec({"name": "albert_equal", "encoder": enc})
    built = bertc.build_model(spec)
    paths = {w.path for w in built.model.weights}
    assert ("embeddings/embedding_projection/kernel" in paths) is projected
    assert int(built.model.count_params()) == expected_param_count(spec)


# --- a Hugging Face cache (tester L) ----------------------------------------------------------------------------

def _hub_cache(tmp_path, fixture: str = "bert_cross_encoder", snapshots=("abc123",), main_ref="abc123") -> Path:
    """tmp_path/hub/models--org--bert-cls as huggingface_hub lays it out: the files in blobs/ named by a hash, each
    snapshot a folder of relative links into ../../blobs, refs/main naming the snapshot."""
    import hashlib

    repo = tmp_path / "hub" / "models--org--bert-cls"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    for snapshot in snapshots:
        (repo / "snapshots" / snapshot).mkdir(parents=True)
        for f in sorted((HF / fixture).iterdir()):
            blob = hashlib.sha1(f.read_bytes()).hexdigest()
            shutil.copyfile(f, repo / "blobs" / blob)
            (repo / "snapshots" / snapshot / f.name).symlink_to(f"../../blobs/{blob}")
    if main_ref:
        (repo / "refs" / "main").write_text(main_ref)
    return repo


def test_a_hub_cache_repository_folder_imports_its_main_snapshot_named_after_the_model(tmp_path, capsys):
    """The spec was named `m_<commit hash>`, and the repository folder (models--org--name) was 'no weights found in
    this directory ...; it holds: blobs, refs, snapshots'."""
    repo = _hub_cache(tmp_path, snapshots=("abc123", "def456"))
    for source in (repo, repo / "snapshots" / "abc123"):
        spec = import_spec(source, tmp_path / "s.json")
        assert spec["name"] == "bert-cls"
        assert resolve_weights_path(spec["weights"], tmp_path / "s.json") == repo / "snapshots" / "abc123"
    built = bertc.build_model(tmp_path / "s.json")
    assert load_weights(built.model, load_spec(tmp_path / "s.json"), repo).tensors > 0
    (repo / "refs" / "main").unlink()
    assert main(["import", str(repo), "-o", str(tmp_path / "t.json")]) == EXIT_BAD_SPEC
    assert capsys.readouterr().err == (f"error: {repo}: a Hugging Face cache's repository folder with 2 snapshots and "
                                       f"no refs/main: name one, {repo}/snapshots/abc123, {repo}/snapshots/def456\n")


def test_a_link_to_a_blob_that_is_not_there_is_named(tmp_path, capsys):
    """An interrupted download leaves model.safetensors linking to a missing blob: it was 'expected
    model.safetensors ...; it holds: ..., model.safetensors'; a dangling tokenizer.json imported and built without a
    tokenizer."""
    for name in ("model.safetensors", "tokenizer.json"):
        repo = _hub_cache(tmp_path / name)
        link = repo / "snapshots" / "abc123" / name
        (link.parent / link.readlink()).unlink()
        with pytest.raises(WeightsError, match=rf"abc123: {name} \(a link to \.\./\.\./blobs/\w+\) leads to no file: "
                                               rf"a download that did not finish"):
            import_spec(repo, tmp_path / "s.json")
        assert not (tmp_path / "s.json").exists()


def test_a_sentence_transformers_folder_without_its_modules_json_is_refused(tmp_path, capsys):
    """A copy that left modules.json out was imported as a BertModel: its pooler output, 1.5 off the embeddings
    (tester L)."""
    source = tmp_path / "st"
    shutil.copytree(HF / "st_bert_mean_norm", source)
    (source / "modules.json").unlink()
    assert main(["import", str(source), "-o", str(tmp_path / "s.json")]) == EXIT_BAD_SPEC
    assert capsys.readouterr().err == (
        f"error: {source}: a sentence-transformers model (it has config_sentence_transformers.json, 1_Pooling/, "
        f"2_Normalize/) without its modules.json, which says how its embeddings are made (pooling, Dense, "
        f"Normalize): imported without it, it would give its transformer's outputs, not its embeddings. Put the "
        f"model's modules.json back (a copy or a download that left it out), or import the transformer alone with "
        f"--encoder-only\n")
    assert not (tmp_path / "s.json").exists()
    assert import_spec(source, tmp_path / "e.json", encoder_only=True)["encoder"]["type"] == "bert"


def test_only_a_hub_cache_folder_is_taken_for_one_and_only_files_bertc_reads_must_not_dangle(tmp_path):
    """A reviewer: a checkpoint folder of its own that held snapshots/ and refs/ (a training run's) was taken for a
    Hugging Face cache; a dangling eval_results.txt (a file bertc never reads) refused the import."""
    look = tmp_path / "run"
    shutil.copytree(HF / "bert_model", look)
    (look / "snapshots" / "epoch1").mkdir(parents=True)
    (look / "snapshots" / "epoch2").mkdir()
    (look / "refs").mkdir()
    (look / "eval_results.txt").symlink_to("/nonexistent/blob")
    spec = import_spec(look, tmp_path / "s.json")
    assert resolve_weights_path(spec["weights"], tmp_path / "s.json") == look
    (look / "tokenizer.json").unlink()
    (look / "tokenizer.json").symlink_to("/nonexistent/blob")   # one it reads
    with pytest.raises(WeightsError, match=r"tokenizer\.json \(a link to /nonexistent/blob\) leads to no file"):
        import_spec(look, tmp_path / "s.json")


def test_a_cross_encoder_folder_without_modules_json_imports_as_its_classifier(tmp_path):
    """A reviewer: the refusal of a sentence-transformers folder without modules.json caught a CrossEncoder, whose
    modules.json lists its transformer alone (the model is the classifier), and its advice dropped the head."""
    source = tmp_path / "ce"
    shutil.copytree(HF / "st_cross_encoder", source)
    with_modules = import_spec(source, tmp_path / "a.json")
    (source / "modules.json").unlink()
    without = import_spec(source, tmp_path / "b.json")
    assert without["head"] == with_modules["head"] and without["head"]["type"] == "classifier"


def test_a_link_to_a_hub_cache_repository_folder_imports(tmp_path):
    """A reviewer: a link named otherwise (`ln -s .../models--org--bert-cls tiny`) was no longer taken for the
    cache's folder: 'no weights found ...; it holds: blobs, refs, snapshots'."""
    repo = _hub_cache(tmp_path)
    (tmp_path / "tiny").symlink_to(repo)
    assert import_spec(tmp_path / "tiny", tmp_path / "s.json")["name"] == "bert-cls"
