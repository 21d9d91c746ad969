"""Tokenizers from a SentencePiece model alone (bertc/sentencepiece.py: DeBERTa-v2/v3's ``spm.model``, ALBERT's
``spiece.model``, XLM-RoBERTa's and CamemBERT's ``sentencepiece.bpe.model``) against transformers' own.

tests/fixtures/sentencepiece/expected.json (tools/make_sentencepiece_fixture.py, transformers 5 in the side
environment) holds what ``AutoTokenizer.from_pretrained`` gives from a folder with a SentencePiece model, a
tokenizer config and the model type alone, per family: a model laid out as the family's (no character map) and
one with a precompiled character map, under the family's tokenizer configs.
"""
import json
import shutil
from pathlib import Path

import pytest

import tokenizers  # noqa: F401  (the test extra has it)
from bertc.errors import BertcError
from bertc.sentencepiece import BPE, deberta_v2, read_model

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "sentencepiece" / "expected.json").read_text(encoding="utf-8"))
CASES = [(model, name) for model, entry in EXPECTED["models"].items() for name in entry["configs"]]
IDENTITY = FIXTURES / "sentencepiece" / "deberta_v2" / "spm.model"


@pytest.mark.parametrize("model,config", CASES)
def test_ids_and_type_ids_are_transformers_own(model, config, tmp_path):
    """A build holding the family's SentencePiece file, its tokenizer config and its checkpoint's config (as
    ``bertc build`` bundles them) tokenizes as transformers does."""
    from bertc.checkpoints import CHECKPOINT_CONFIG
    from bertc.text import load_tokenizer

    entry = EXPECTED["models"][model]
    want = entry["configs"][config]
    shutil.copyfile(FIXTURES / entry["file"], tmp_path / entry["file_name"])
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(want["tokenizer_config"]))
    (tmp_path / CHECKPOINT_CONFIG).write_text(json.dumps({"model_type": entry["model_type"]}))
    tok = load_tokenizer(tmp_path, 512)
    for text, (ids, types) in zip(EXPECTED["texts"], want["single"]):
        got = tok.encode(text)
        assert got.ids == ids and (types is None or got.type_ids == types), text
    for (a, b), (ids, types) in zip(EXPECTED["pairs"], want["pair"]):
        got = tok.encode(a, b)
        assert got.ids == ids and (types is None or got.type_ids == types), (a, b)


def test_the_model_file_is_read_as_sentencepiece_writes_it():
    with_map = read_model(FIXTURES / "hf" / "deberta_v3_model" / "spm.model")
    identity = read_model(IDENTITY)
    assert [p.piece for p in with_map.pieces[:4]] == ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    assert [p.type for p in with_map.pieces[:4]] == [3, 3, 3, 2]          # control, control, control, unknown
    assert with_map.unk_id == 3 and with_map.model_type == 1 and not with_map.byte_fallback
    assert len(with_map.precompiled_charsmap) > 1000 and identity.precompiled_charsmap == b""
    assert all(p.score < 0 for p in with_map.pieces[5:]) and with_map.pieces[5].score > with_map.pieces[-1].score


@pytest.mark.parametrize("content", [b"", b"{\"model\": \"not a sentencepiece file\"}\n", b"\x0a\xff\xff\xff\xff\x0f"])
def test_a_file_that_is_not_a_sentencepiece_model_is_named(tmp_path, content):
    path = tmp_path / "spm.model"
    path.write_bytes(content)
    with pytest.raises(BertcError, match=f"{path}: not a SentencePiece model"):
        read_model(path)


def test_a_truncated_model_is_refused(tmp_path):
    data = (FIXTURES / "hf" / "deberta_v3_model" / "spm.model").read_bytes()
    path = tmp_path / "spm.model"
    path.write_bytes(data[:1000])
    with pytest.raises(BertcError, match="not a SentencePiece model"):
        read_model(path)


def test_what_deberta_tokenizer_is_not_is_refused(monkeypatch, tmp_path):
    import bertc.sentencepiece as sp

    model = read_model(FIXTURES / "hf" / "deberta_v3_model" / "spm.model")
    model.model_type = BPE
    monkeypatch.setattr(sp, "read_model", lambda path: model)
    with pytest.raises(BertcError, match="Unigram"):
        deberta_v2(tmp_path / "spm.model", {})


def test_the_configs_added_tokens_get_the_ids_it_names(tmp_path):
    path = IDENTITY
    tok = deberta_v2(path, {"added_tokens_decoder": {"40": {"content": "[MASK]", "special": True},
                                                     "41": {"content": "<extra>", "special": True}}})
    assert tok.token_to_id("[MASK]") == 40 and tok.token_to_id("<extra>") == 41
    assert tok.encode("the cat <extra>").ids[-2:] == [41, 2]
    with pytest.raises(BertcError, match=r"tokenizer_config.json: added_tokens_decoder puts '<extra>' at id 45"):
        deberta_v2(path, {"added_tokens_decoder": {"45": {"content": "<extra>"}}})


@pytest.mark.parametrize("fixture,model_file", [("deberta_v3_model", "spm.model"),
                                                ("xlmr_model", "sentencepiece.bpe.model")])
def test_a_build_with_the_sentencepiece_model_alone_reads_text_as_its_tokenizer_json_does(fixture, model_file,
                                                                                           tmp_path):
    """These fixtures' tokenizer.json were written by transformers from their SentencePiece model: a build that has
    the model alone (as microsoft/deberta-v3-base ships, or an XLM-R saved before fast tokenizers) tokenizes text
    the same way, and the calibration of a build finds it usable."""
    from bertc.calibration import has_tokenizer
    from bertc.checkpoints import CHECKPOINT_CONFIG
    from bertc.text import bundle_tokenizer, encode_texts, load_tokenizer

    source = tmp_path / "src"
    source.mkdir()
    for name in (model_file, "tokenizer_config.json"):
        shutil.copyfile(FIXTURES / "hf" / fixture / name, source / name)
    out = tmp_path / "out"
    out.mkdir()
    assert bundle_tokenizer(source, out)["kind"] == f"SentencePiece ({model_file})"
    assert has_tokenizer(out)
    whole = tokenizers.Tokenizer.from_file(str(FIXTURES / "hf" / fixture / "tokenizer.json"))
    tok = load_tokenizer(out, 512)
    # ASCII text: the transformers that wrote those tokenizer.json left the model's character map (NFKC) out of
    # them, where transformers 5.25 (expected.json) and SentencePiece itself apply it, as bertc does
    ascii_texts = [t for t in EXPECTED["texts"] if t.isascii()]
    assert len(ascii_texts) >= 8
    for text in ascii_texts + ["the cat sat on the mat.", "  two  spaces ", "[MASK] and [CLS] <mask> <s>"]:
        assert tok.encode(text).ids == whole.encode(text).ids, text
    for a, b in [(a, b) for a, b in EXPECTED["pairs"] if (a + b).isascii()]:
        assert (tok.encode(a, b).ids, tok.encode(a, b).type_ids) == (whole.encode(a, b).ids,
                                                                      whole.encode(a, b).type_ids)
    # the checkpoint's model type alone (no tokenizer_class) names the family too
    (out / "tokenizer_config.json").write_text(json.dumps({}))
    shutil.copyfile(FIXTURES / "hf" / fixture / "config.json", out / CHECKPOINT_CONFIG)
    assert load_tokenizer(out, 64).encode("the cat").ids == whole.encode("the cat").ids
    assert set(encode_texts(out, ["the cat", "a dog ran"], 16)) >= {"input_word_ids", "input_mask"}


def test_a_sentencepiece_model_of_another_family_alone_is_named(tmp_path):
    from bertc.text import load_tokenizer

    out = tmp_path / "out"
    out.mkdir()
    shutil.copyfile(FIXTURES / "sentencepiece" / "albert" / "spiece.model", out / "spiece.model")
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
    with pytest.raises(BertcError, match=r'tokenizer_config.json: tokenizer_class "T5Tokenizer" is a tokenizer bertc '
                                         r"does not build from spiece.model"):
        load_tokenizer(out, 16)
    (out / "tokenizer_config.json").write_text(json.dumps({}))
    with pytest.raises(BertcError, match=r"only spiece.model is bundled, and neither tokenizer_config.json's "
                                         r"tokenizer_class nor the checkpoint's model_type names a family"):
        load_tokenizer(out, 16)
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "AlbertTokenizer"}))
    assert load_tokenizer(out, 16).encode("the cat").ids[0] == 2          # ALBERT's [CLS]
