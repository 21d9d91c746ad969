"""Tokens a checkpoint adds to its vocabulary file (``tokenizer.add_tokens`` / ``add_special_tokens``, saved in
tokenizer_config.json's ``added_tokens_decoder`` or transformers 3's added_tokens.json), and a tokenizer.json that
transformers never reads (a tokenizer class without a fast tokenizer): bertc's ids against those transformers'
AutoTokenizer gives on the same directories (tests/added_tokens_layouts.py; the ids in
tests/fixtures/added_tokens_expected.json were recorded with transformers 5.25 by
tools/make_added_tokens_references.py, and 4.57 gives the same). Before, bertc ignored the added tokens ("<ent>"
became "<", "ent", ">" or [UNK]) and tokenized such a tokenizer.json as if transformers used it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")

from added_tokens_layouts import LAYOUTS, PAIR, REFUSED, TEXTS  # noqa: E402
from bertc.errors import InputError  # noqa: E402
from bertc.text import load_tokenizer, vocabulary_kind  # noqa: E402

EXPECTED = json.loads((Path(__file__).parent / "fixtures" / "added_tokens_expected.json").read_text())


def test_the_recorded_texts_are_these():
    assert EXPECTED["texts"] == TEXTS and tuple(EXPECTED["pair"]) == PAIR


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_added_tokens_are_tokenized_as_transformers_does(tmp_path, name):
    tok = load_tokenizer(LAYOUTS[name](tmp_path / name), 64)
    want = EXPECTED["layouts"][name]
    assert [tok.encode(t).ids for t in TEXTS] == want["ids"]
    pair = tok.encode(*PAIR)
    assert pair.ids == want["pair_ids"]
    if want["pair_type_ids"] is not None:
        assert pair.type_ids == want["pair_type_ids"]


def test_a_tokenizer_json_of_a_class_without_a_fast_tokenizer_is_refused(tmp_path):
    directory = REFUSED["tokenizer_json_python_class"](tmp_path / "ja")
    with pytest.raises(InputError, match=r"tokenizer_class \"BertJapaneseTokenizer\" has no fast tokenizer"):
        load_tokenizer(directory, 64)
    # transformers' ids differ from what the tokenizer.json would give: the refusal is not over-cautious
    tok_json = json.loads((directory / "tokenizer.json").read_text())
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "BertTokenizerFast"
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    assert tok_json["model"]["type"] == "WordPiece"
    assert [load_tokenizer(directory, 64).encode(t).ids for t in TEXTS] != \
        EXPECTED["layouts"]["tokenizer_json_python_class"]["ids"]


def test_an_added_token_the_vocabulary_puts_elsewhere_is_refused(tmp_path):
    directory = LAYOUTS["wordpiece_added"](tmp_path / "moved")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"]["60"] = config["added_tokens_decoder"].pop("58")   # a gap: [E1] would be 58
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"added_tokens_decoder puts '\[E1\]' at id 60, but the vocabulary gives "
                                         r"it id 58"):
        load_tokenizer(directory, 64)


@pytest.mark.parametrize("decoder, message", [
    ([{"content": "<ent>"}], "added_tokens_decoder is list"),
    ({"x": {"content": "<ent>"}}, 'added token "x"'),
    ({"56": {"content": ""}}, 'added token "56"')])
def test_a_damaged_added_tokens_decoder_is_named(tmp_path, decoder, message):
    directory = LAYOUTS["wordpiece_added"](tmp_path / "bad")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = decoder
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=message):
        load_tokenizer(directory, 64)


def test_the_build_notes_a_refused_tokenizer(tmp_path):
    """What the build's report says (bundle_tokenizer's check) is what run refuses."""
    directory = REFUSED["tokenizer_json_python_class"](tmp_path / "ja")
    with pytest.raises(InputError, match="no fast tokenizer"):
        vocabulary_kind(directory, json.loads((directory / "tokenizer_config.json").read_text()), "bert")
