"""What tokenizer_config.json (and the checkpoint's model_type) decide about a bundled tokenizer, as transformers'
AutoTokenizer decides it: the ids of bertc's tokenizer against transformers' own.

The expected ids were produced by transformers 5.25's ``AutoTokenizer.from_pretrained(dir)`` (``tokenizer(text)
["input_ids"]``, and ``["token_type_ids"]`` for the pair where the class gives them) on the very directories
:func:`_layout` writes (the vocabulary below, the tokenizer_config.json of each case, a config.json with its
model_type), by a script in the side environment; transformers 4.57 gives the same ids for every case but
``tokenizer_json_mpnet_no_chinese_split`` (4.57's MPNetTokenizerFast keeps tokenizer.json's handle_chinese_chars,
5.25's MPNetTokenizer takes tokenize_chinese_chars). No transformers or torch is needed here.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")

from bertc.checkpoints import CHECKPOINT_CONFIG  # noqa: E402
from bertc.text import load_tokenizer  # noqa: E402

HF = Path(__file__).parent / "fixtures" / "hf"
# the BERT fixture's vocabulary (ids 0-55) and what the texts need beyond it: accented, CJK and cased words, MPNet's
# special tokens
EXTRA = ["café", "cafe", "é", "##é", "##e", "中", "文", "中文", "The", "CAT", "Dog", "<s>", "</s>", "<pad>", "<mask>"]
TEXTS = ["café", "Café the cat", "the 中文 cat", "The CAT sat", "naïve Dog ran", "the <mask> sat </s>", "[CLS] the [MASK]"]
PAIR = ("The cat", "a DOG")


def _vocab() -> list[str]:
    return [t for t in (HF / "bert_model" / "vocab.txt").read_text().split("\n") if t] + EXTRA


def _tokenizer_json(normalizer: dict, mpnet: bool = False) -> dict:
    """The BERT fixture's tokenizer.json over the vocabulary above (MPNet's: its post-processor and special tokens,
    as MPNetTokenizerFast writes them), its BertNormalizer's options set to ``normalizer``."""
    data = json.loads((HF / "bert_model" / "tokenizer.json").read_text())
    vocab = {t: i for i, t in enumerate(_vocab())}
    data["model"]["vocab"] = vocab
    data["normalizer"].update(normalizer)
    if mpnet:
        data["post_processor"] = {"type": "RobertaProcessing", "sep": ["</s>", vocab["</s>"]],
                                  "cls": ["<s>", vocab["<s>"]], "trim_offsets": True, "add_prefix_space": False}
        data["added_tokens"] = [{"id": vocab[t], "content": t, "single_word": False, "lstrip": t == "<mask>",
                                 "rstrip": False, "normalized": False, "special": True}
                                for t in ("<s>", "<pad>", "</s>", "[UNK]", "<mask>")]
    return data


def _layout(directory: Path, config: dict, model_type: str, tokenizer_json: dict | None = None) -> Path:
    """A build's tokenizer files: vocab.txt (or ``tokenizer_json``), tokenizer_config.json ``config``, and the
    checkpoint's config.json as a build bundles it (checkpoint_config.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer_json is None:
        (directory / "vocab.txt").write_text("\n".join(_vocab()) + "\n", encoding="utf-8")
    else:
        (directory / "tokenizer.json").write_text(json.dumps(tokenizer_json), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / CHECKPOINT_CONFIG).write_text(json.dumps({"model_type": model_type, "vocab_size": len(_vocab())}))
    return directory


def _assert_ids(directory: Path, expected: tuple) -> None:
    """``expected``: the ids of :data:`TEXTS`, and of :data:`PAIR` with its type ids (None where the class gives
    none: DistilBERT's and MPNet's; bertc's MPNet gives 0 for every token, as its model reads none)."""
    texts, (pair_ids, pair_types) = expected
    tok = load_tokenizer(directory, 64)
    assert [tok.encode(t).ids for t in TEXTS] == texts
    pair = tok.encode(*PAIR)
    assert pair.ids == pair_ids
    if pair_types is not None:
        assert pair.type_ids == pair_types
    elif pair_ids[0] == _vocab().index("<s>"):
        assert pair.type_ids == [0] * len(pair_ids)


# -- vocab.txt alone: do_lower_case, strip_accents, tokenize_chinese_chars (BertTokenizer) ---------------------------

VOCAB_TXT = {
    # lowercased, accents kept (café, not cafe), CJK not split (中文 one word)
    "lower_keep_accents_no_chinese_split": (
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "strip_accents": False,
         "tokenize_chinese_chars": False},
        ([[2, 56, 3], [2, 56, 5, 29, 3], [2, 5, 63, 29, 3], [2, 5, 29, 31, 3],
          [2, 1, 30, 33, 3], [2, 5, 1, 1, 1, 31, 1, 1, 1, 1, 3], [2, 2, 5, 4, 3]],
         ([2, 5, 29, 3, 6, 30, 3], [0, 0, 0, 0, 1, 1, 1]))),
    # cased: strip_accents null follows do_lower_case (accents kept)
    "cased": (
        {"tokenizer_class": "BertTokenizer", "do_lower_case": False},
        ([[2, 56, 3], [2, 1, 5, 29, 3], [2, 5, 61, 62, 29, 3], [2, 64, 65, 31, 3],
          [2, 1, 66, 33, 3], [2, 5, 1, 1, 1, 31, 1, 1, 1, 1, 3], [2, 2, 5, 4, 3]],
         ([2, 64, 29, 3, 6, 1, 3], [0, 0, 0, 0, 1, 1, 1]))),
    # cased, accents stripped (café -> cafe)
    "cased_strip_accents": (
        {"tokenizer_class": "BertTokenizer", "do_lower_case": False, "strip_accents": True},
        ([[2, 57, 3], [2, 1, 5, 29, 3], [2, 5, 61, 62, 29, 3], [2, 64, 65, 31, 3],
          [2, 1, 66, 33, 3], [2, 5, 1, 1, 1, 31, 1, 1, 1, 1, 3], [2, 2, 5, 4, 3]],
         ([2, 64, 29, 3, 6, 1, 3], [0, 0, 0, 0, 1, 1, 1]))),
    # transformers' defaults: lowercased, accents stripped, CJK split
    "defaults": (
        {"tokenizer_class": "BertTokenizer"},
        ([[2, 57, 3], [2, 57, 5, 29, 3], [2, 5, 61, 62, 29, 3], [2, 5, 29, 31, 3],
          [2, 1, 30, 33, 3], [2, 5, 1, 1, 1, 31, 1, 1, 1, 1, 3], [2, 2, 5, 4, 3]],
         ([2, 5, 29, 3, 6, 30, 3], [0, 0, 0, 0, 1, 1, 1]))),
    # MPNetTokenizerFast named: <s> A </s></s> B </s>; [CLS] / [MASK] are plain text there
    "mpnet_class": (
        {"tokenizer_class": "MPNetTokenizerFast"},
        ([[67, 57, 68], [67, 57, 5, 29, 68], [67, 5, 61, 62, 29, 68], [67, 5, 29, 31, 68],
          [67, 1, 30, 33, 68], [67, 5, 70, 31, 68, 68], [67, 1, 1, 1, 5, 1, 1, 1, 68]],
         ([67, 5, 29, 68, 68, 6, 30, 68], None))),
}


@pytest.mark.parametrize("case", sorted(VOCAB_TXT))
def test_vocab_txt_alone_takes_tokenizer_config_options(tmp_path, case):
    config, expected = VOCAB_TXT[case]
    _assert_ids(_layout(tmp_path, config, "bert"), expected)


def test_a_normalizer_option_of_another_type_is_refused_naming_it(tmp_path):
    from bertc.errors import InputError

    _layout(tmp_path, {"tokenizer_class": "BertTokenizer", "strip_accents": "yes"}, "bert")
    with pytest.raises(InputError, match=r"tokenizer_config.json: strip_accents is \"yes\"; transformers' tokenizer "
                                         r"takes true or false or null"):
        load_tokenizer(tmp_path, 16)


# -- tokenizer.json + tokenizer_config.json: the BERT-like classes put the config's options into its BertNormalizer --

FILE_NORMALIZER = {"lowercase": True, "strip_accents": None, "handle_chinese_chars": True}
TOKENIZER_JSON = {
    # tokenizer.json lowercases, tokenizer_config.json says cased: transformers tokenizes cased
    "bert_cased": (
        {"tokenizer_class": "BertTokenizer", "do_lower_case": False}, "bert", FILE_NORMALIZER,
        ([[2, 56, 3], [2, 1, 5, 29, 3], [2, 5, 61, 62, 29, 3], [2, 64, 65, 31, 3],
          [2, 1, 66, 33, 3], [2, 5, 1, 1, 1, 31, 1, 1, 1, 1, 3], [2, 2, 5, 4, 3]],
         ([2, 64, 29, 3, 6, 1, 3], [0, 0, 0, 0, 1, 1, 1]))),
    # no tokenizer_class: the model type's (BertTokenizer) does the same
    "no_class_bert_keep_accents_no_chinese_split": (
        {"do_lower_case": True, "strip_accents": False, "tokenize_chinese_chars": False}, "bert", FILE_NORMALIZER,
        ([[2, 56, 3], [2, 56, 5, 29, 3], [2, 5, 63, 29, 3], [2, 5, 29, 31, 3],
          [2, 1, 30, 33, 3], [2, 5, 1, 1, 1, 31, 1, 1, 1, 1, 3], [2, 2, 5, 4, 3]],
         ([2, 5, 29, 3, 6, 30, 3], [0, 0, 0, 0, 1, 1, 1]))),
    "distilbert_cased": (
        {"tokenizer_class": "DistilBertTokenizer", "do_lower_case": False}, "distilbert", FILE_NORMALIZER,
        ([[2, 56, 3], [2, 1, 5, 29, 3], [2, 5, 61, 62, 29, 3], [2, 64, 65, 31, 3],
          [2, 1, 66, 33, 3], [2, 5, 1, 1, 1, 31, 1, 1, 1, 1, 3], [2, 2, 5, 4, 3]],
         ([2, 64, 29, 3, 6, 1, 3], None))),
    "electra_fast_cased": (
        {"tokenizer_class": "ElectraTokenizerFast", "do_lower_case": False}, "electra", FILE_NORMALIZER,
        ([[2, 56, 3], [2, 1, 5, 29, 3], [2, 5, 61, 62, 29, 3], [2, 64, 65, 31, 3],
          [2, 1, 66, 33, 3], [2, 5, 1, 1, 1, 31, 1, 1, 1, 1, 3], [2, 2, 5, 4, 3]],
         ([2, 64, 29, 3, 6, 1, 3], [0, 0, 0, 0, 1, 1, 1]))),
    "mpnet_cased": (
        {"tokenizer_class": "MPNetTokenizer", "do_lower_case": False}, "mpnet", FILE_NORMALIZER,
        ([[67, 56, 68], [67, 1, 5, 29, 68], [67, 5, 61, 62, 29, 68], [67, 64, 65, 31, 68],
          [67, 1, 66, 33, 68], [67, 5, 70, 31, 68, 68], [67, 1, 1, 1, 5, 1, 1, 1, 68]],
         ([67, 64, 29, 68, 68, 6, 1, 68], None))),
    # transformers 5.25 (4.57 splits 中文 here: its MPNetTokenizerFast keeps tokenizer.json's handle_chinese_chars)
    "mpnet_no_chinese_split": (
        {"tokenizer_class": "MPNetTokenizer", "tokenize_chinese_chars": False}, "mpnet", FILE_NORMALIZER,
        ([[67, 57, 68], [67, 57, 5, 29, 68], [67, 5, 63, 29, 68], [67, 5, 29, 31, 68],
          [67, 1, 30, 33, 68], [67, 5, 70, 31, 68, 68], [67, 1, 1, 1, 5, 1, 1, 1, 68]],
         ([67, 5, 29, 68, 68, 6, 30, 68], None))),
    # a cased tokenizer.json whose config says nothing: the class's defaults (lowercase, strip accents, split CJK) win
    "file_cased_config_silent": (
        {"tokenizer_class": "BertTokenizer"}, "bert",
        {"lowercase": False, "strip_accents": False, "handle_chinese_chars": False, "clean_text": False},
        ([[2, 57, 3], [2, 57, 5, 29, 3], [2, 5, 61, 62, 29, 3], [2, 5, 29, 31, 3],
          [2, 1, 30, 33, 3], [2, 5, 1, 1, 1, 31, 1, 1, 1, 1, 3], [2, 2, 5, 4, 3]],
         ([2, 5, 29, 3, 6, 30, 3], [0, 0, 0, 0, 1, 1, 1]))),
    # PreTrainedTokenizerFast (TokenizersBackend in transformers 5) takes tokenizer.json as it is: still lowercased
    "generic_fast_class_keeps_the_file": (
        {"tokenizer_class": "PreTrainedTokenizerFast", "do_lower_case": False}, "bert", FILE_NORMALIZER,
        ([[2, 57, 3], [2, 57, 5, 29, 3], [2, 5, 61, 62, 29, 3], [2, 5, 29, 31, 3],
          [2, 1, 30, 33, 3], [2, 5, 1, 1, 1, 31, 1, 1, 1, 1, 3], [2, 2, 5, 4, 3]],
         ([2, 5, 29, 3, 6, 30, 3], None))),
}


@pytest.mark.parametrize("case", sorted(TOKENIZER_JSON))
def test_tokenizer_json_takes_tokenizer_config_options_where_transformers_does(tmp_path, case):
    config, model_type, normalizer, expected = TOKENIZER_JSON[case]
    tokenizer_json = _tokenizer_json(normalizer, mpnet=model_type == "mpnet")
    _assert_ids(_layout(tmp_path, config, model_type, tokenizer_json), expected)


def test_tokenizer_json_of_every_fixture_is_unchanged_by_its_own_config():
    """Every committed fixture's tokenizer_config.json agrees with its tokenizer.json: the same ids as the file."""
    import tokenizers

    checked = 0
    for directory in sorted(HF.iterdir()):
        if (directory / "tokenizer.json").is_file():
            whole = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
            tok = load_tokenizer(directory, 512)
            for text in ("The Café sat on the 中文 mat.", "naïve [MASK] <mask> DOG"):
                assert tok.encode(text).ids == whole.encode(text).ids, (directory.name, text)
            checked += 1
    assert checked >= 15


# -- vocab.txt without tokenizer_class: the model type's tokenizer, as AutoTokenizer picks it -------------------------

NO_CLASS = {
    # MPNet: <s> A </s></s> B </s> (not BERT's [CLS] / [SEP], which this vocabulary has too)
    "mpnet": (
        {"do_lower_case": True},
        ([[67, 57, 68], [67, 57, 5, 29, 68], [67, 5, 61, 62, 29, 68], [67, 5, 29, 31, 68],
          [67, 1, 30, 33, 68], [67, 5, 70, 31, 68, 68], [67, 1, 1, 1, 5, 1, 1, 1, 68]],
         ([67, 5, 29, 68, 68, 6, 30, 68], None))),
    "mpnet_cased": (
        {"do_lower_case": False},
        ([[67, 56, 68], [67, 1, 5, 29, 68], [67, 5, 61, 62, 29, 68], [67, 64, 65, 31, 68],
          [67, 1, 66, 33, 68], [67, 5, 70, 31, 68, 68], [67, 1, 1, 1, 5, 1, 1, 1, 68]],
         ([67, 64, 29, 68, 68, 6, 1, 68], None))),
    **{model_type: (
        {"do_lower_case": True},
        ([[2, 57, 3], [2, 57, 5, 29, 3], [2, 5, 61, 62, 29, 3], [2, 5, 29, 31, 3],
          [2, 1, 30, 33, 3], [2, 5, 1, 1, 1, 31, 1, 1, 1, 1, 3], [2, 2, 5, 4, 3]],
         ([2, 5, 29, 3, 6, 30, 3], [0, 0, 0, 0, 1, 1, 1]))) for model_type in ("bert", "distilbert", "electra")},
}


@pytest.mark.parametrize("case", sorted(NO_CLASS))
def test_vocab_txt_without_tokenizer_class_is_the_model_types_tokenizer(tmp_path, case):
    config, expected = NO_CLASS[case]
    _assert_ids(_layout(tmp_path, config, case.split("_")[0]), expected)


def test_vocab_txt_whose_model_type_reads_another_file_is_refused_naming_the_class(tmp_path):
    from bertc.errors import InputError

    _layout(tmp_path, {"do_lower_case": True}, "roberta")
    with pytest.raises(InputError, match=r'names no tokenizer_class, and for the checkpoint\'s model_type "roberta" '
                                         r"transformers loads RobertaTokenizer, which bertc does not build from "
                                         r"vocab.txt; without tokenizer.json, bertc builds BertTokenizer"):
        load_tokenizer(tmp_path, 16)


# -- a tokenizer class bertc does not build exactly is refused, at bundling (the report) and by load_tokenizer -------

@pytest.mark.parametrize("named, files", [("BertJapaneseTokenizer", "vocab.txt"), ("PhobertTokenizer", "vocab.txt"),
                                          ("PreTrainedTokenizerFast", "vocab.txt"), ("RobertaTokenizer", "vocab.txt"),
                                          ("XLMRobertaTokenizer", "vocab.txt")])
def test_an_unimplemented_tokenizer_class_is_refused_naming_it(tmp_path, named, files):
    """transformers' BertJapaneseTokenizer (cl-tohoku/bert-base-japanese's vocab.txt: MeCab words, cased, CJK not
    split) is not a BertTokenizer: bertc tokenized it as one, silently."""
    from bertc.errors import InputError
    from bertc.text import bundle_tokenizer

    source = _layout(tmp_path / "src", {"tokenizer_class": named}, "bert")
    message = (rf'tokenizer_config.json: tokenizer_class "{named}" is a tokenizer bertc does not build from {files}: '
               r"its tokens would not be transformers'; without tokenizer.json, bertc builds BertTokenizer, "
               r"DistilBertTokenizer, ElectraTokenizer and MPNetTokenizer from vocab.txt")
    with pytest.raises(InputError, match=message):
        load_tokenizer(source, 16)
    out = tmp_path / "out"
    out.mkdir()
    section = bundle_tokenizer(source, out)
    assert section["tokenizer_class"] == named
    assert section["unsupported"].startswith(str(source / "tokenizer_config.json")), section["unsupported"]
    assert section["unsupported"].endswith("; bertc run and parity on text refuse it")


def test_the_build_summary_notes_an_unsupported_tokenizer(tmp_path):
    from bertc.report import summary_text
    from bertc.text import bundle_tokenizer

    source = _layout(tmp_path / "src", {"tokenizer_class": "BertJapaneseTokenizer"}, "bert")
    (tmp_path / "out").mkdir()
    section = bundle_tokenizer(source, tmp_path / "out")
    report = {"bertc_version": "0", "spec_name": "m", "status": "passed", "inputs": [], "outputs": [], "stages": {},
              "tokenizer": section}
    assert f"  note: {section['unsupported']}" in summary_text(report).splitlines()


@pytest.mark.parametrize("named", ["BertTokenizer", "BertTokenizerFast", "DistilBertTokenizer", "DistilBertTokenizerFast",
                                   "ElectraTokenizer", "ElectraTokenizerFast", "MPNetTokenizer", "MPNetTokenizerFast",
                                   None])
def test_the_wordpiece_classes_read_vocab_txt(tmp_path, named):
    from bertc.text import bundle_tokenizer

    source = _layout(tmp_path / "src", {"tokenizer_class": named} if named else {}, "bert")
    (tmp_path / "out").mkdir()
    assert "unsupported" not in bundle_tokenizer(source, tmp_path / "out")
    first = load_tokenizer(source, 16).encode("the cat").ids[0]
    assert first == (_vocab().index("<s>") if named and named.startswith("MPNet") else _vocab().index("[CLS]"))


def test_no_tokenizer_bertc_reads_today_is_refused(tmp_path):
    """Every committed fixture's tokenizer, the SentencePiece families by their class names (and their ...Fast
    names), RoBERTa's vocab.json + merges.txt, and a tokenizer.json of a class that reads it (ModernBERT's
    PreTrainedTokenizerFast / TokenizersBackend; a class without a fast tokenizer is refused: test_added_tokens)
    still load and bundle without a note."""
    import shutil

    from bertc.text import bundle_tokenizer

    def usable(directory: Path) -> None:
        out = tmp_path / f"out_{len(list(tmp_path.iterdir()))}"
        out.mkdir()
        assert "unsupported" not in bundle_tokenizer(directory, out), directory
        assert load_tokenizer(directory, 16).encode("the cat").ids

    for directory in sorted(HF.iterdir()):
        if any((directory / n).is_file() for n in ("tokenizer.json", "vocab.txt", "vocab.json")):
            usable(directory)
    for fixture, model in (("deberta_v3_model", "spm.model"), ("xlmr_model", "sentencepiece.bpe.model")):
        named = json.loads((HF / fixture / "tokenizer_config.json").read_text())["tokenizer_class"]
        for cls in (named, named + "Fast"):
            d = tmp_path / f"{fixture}_{cls}"
            d.mkdir()
            shutil.copyfile(HF / fixture / model, d / model)
            (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls}))
            usable(d)
    sp = Path(__file__).parent / "fixtures" / "sentencepiece"
    for family, model, cls in (("albert", "spiece.model", "AlbertTokenizerFast"),
                               ("camembert", "sentencepiece.bpe.model", "CamembertTokenizer")):
        d = tmp_path / f"sp_{family}"
        d.mkdir()
        shutil.copyfile(sp / family / model, d / model)
        (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls}))
        usable(d)
    for cls in ("RobertaTokenizer", "RobertaTokenizerFast", None):
        d = tmp_path / f"roberta_{cls}"
        d.mkdir()
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(HF / "roberta_model" / name, d / name)
        (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls} if cls else {}))
        shutil.copyfile(HF / "roberta_model" / "config.json", d / "config.json")
        usable(d)
    for cls in ("PreTrainedTokenizerFast", "TokenizersBackend"):
        d = tmp_path / f"json_{cls}"
        shutil.copytree(HF / "modernbert_model", d)
        (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls}))
        usable(d)
    # an original TF1 BERT checkpoint's vocab.txt: no tokenizer_config.json, no model type
    usable(Path(__file__).parent / "fixtures" / "bert_tf1")


# -- the files transformers reads beside tokenizer_config.json (tester L) ---------------------------------------------
# expected: transformers 5.25's AutoTokenizer.from_pretrained(dir)(text)["input_ids"] on the directories
# _beside_layout writes (a side-environment script; bertc's before: "stm" refused at run time, "added" split <ent>,
# "aps" tokenized every first word without its space)

BESIDE_TEXTS = ["the cat sat", "an <ent> here<ent>x", "Hello world, the cat.", "the <mask> sat"]
BESIDE = {
    "stm": [[2, 5, 29, 31, 3], [2, 7, 1, 1, 1, 1, 1, 1, 1, 1, 3], [2, 1, 1, 53, 5, 29, 52, 3], [2, 5, 1, 1, 1, 31, 3]],
    "added": [[2, 5, 29, 31, 3], [2, 7, 56, 1, 56, 1, 3], [2, 1, 1, 53, 5, 29, 52, 3], [2, 5, 1, 1, 1, 31, 3]],
    "aps": [[0, 271, 73, 273, 263, 270, 263, 2], [0, 276, 225, 32, 73, 82, 88, 34, 268, 73, 266, 32, 73, 82, 88, 34, 92, 2],
            [0, 225, 44, 73, 80, 287, 275, 292, 80, 72, 16, 271, 73, 273, 263, 18, 2], [0, 271, 73, 225, 4, 270, 263, 2]],
}


def _beside_layout(d: Path, case: str) -> Path:
    import shutil

    d.mkdir()
    vocab = [t for t in (HF / "bert_model" / "vocab.txt").read_text().split("\n") if t]
    if case == "stm":   # transformers 4's layout: the special tokens named in special_tokens_map.json alone
        vocab = ["<cls>" if t == "[CLS]" else "<sep>" if t == "[SEP]" else t for t in vocab]
        (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
        (d / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 64}))
        (d / "special_tokens_map.json").write_text(json.dumps(
            {"cls_token": "<cls>", "sep_token": "<sep>", "unk_token": "[UNK]", "pad_token": "[PAD]",
             "mask_token": "[MASK]"}))
        (d / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": len(vocab)}))
    elif case == "added":   # a fine-tune's added_tokens.json beside its base model's tokenizer.json
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(HF / "bert_model" / f, d)
        (d / "added_tokens.json").write_text(json.dumps({"<ent>": len(vocab)}))
        (d / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": len(vocab) + 1}))
    else:   # RoBERTa's tokenizer.json (add_prefix_space false) under a config that says true
        for f in ("tokenizer.json", "vocab.json", "merges.txt", "config.json"):
            shutil.copy(HF / "roberta_model" / f, d)
        config = json.loads((HF / "roberta_model" / "tokenizer_config.json").read_text())
        (d / "tokenizer_config.json").write_text(json.dumps({**config, "add_prefix_space": True}))
    return d


@pytest.mark.parametrize("case", sorted(BESIDE))
def test_special_tokens_map_added_tokens_json_and_add_prefix_space_count_as_in_transformers(tmp_path, case):
    tok = load_tokenizer(_beside_layout(tmp_path / case, case), 64)
    assert [tok.encode(t).ids for t in BESIDE_TEXTS] == BESIDE[case]
