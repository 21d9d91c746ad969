"""Tokenizer directories whose tokenizer_config.json (or added_tokens.json) adds tokens to a vocabulary file, as
transformers' ``tokenizer.add_tokens`` / ``add_special_tokens`` + ``save_pretrained`` leave them, and directories
whose tokenizer.json transformers does not read. Pure Python (no bertc, no transformers): tests/test_added_tokens.py
builds bertc's tokenizer on them, and tools/make_added_tokens_references.py (side environment) records what
transformers' AutoTokenizer gives on the same directories (tests/fixtures/added_tokens_expected.json).
"""
from __future__ import annotations

import json
from pathlib import Path

HF = Path(__file__).parent / "fixtures" / "hf"
SENTENCEPIECE = Path(__file__).parent / "fixtures" / "sentencepiece"

TEXTS = ["The <ent> cat NEWWORD sat [E1] on newwords", "<ent><ent>newword", "a [E1]b <ent> c", "the cat <mask> [MASK]"]
PAIR = ("x <ent> the", "[E1] cat newword")


def _entry(content: str, special: bool, normalized: bool | None = None, lstrip: bool = False) -> dict:
    return {"content": content, "lstrip": lstrip, "normalized": (not special) if normalized is None else normalized,
            "rstrip": False, "single_word": False, "special": special}


def _bert_vocab() -> list[str]:
    return [t for t in (HF / "bert_model" / "vocab.txt").read_text(encoding="utf-8").split("\n") if t]


_BERT_SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}


def _write(directory: Path, files: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        if isinstance(value, bytes):
            (directory / name).write_bytes(value)
            continue
        text = value if isinstance(value, str) else json.dumps(value, indent=1)
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def _wordpiece(directory: Path, extra_vocab=(), added=None, legacy=None, tokenizer_class="BertTokenizer") -> Path:
    """BERT's fixture vocabulary (plus ``extra_vocab``), tokenizer_config.json with ``added`` as its
    added_tokens_decoder (beside the special tokens transformers lists there), or ``legacy``: added_tokens.json
    (content -> id) and special_tokens_map.json's additional_special_tokens, as transformers 3 wrote them."""
    vocab = _bert_vocab() + list(extra_vocab)
    config = {"tokenizer_class": tokenizer_class, "do_lower_case": True, **_BERT_SPECIALS}
    files = {"vocab.txt": "\n".join(vocab) + "\n"}
    if added is not None:
        config["added_tokens_decoder"] = {
            str(vocab.index(t)): _entry(t, True) for t in _BERT_SPECIALS.values()} | added
    if legacy is not None:
        files["added_tokens.json"] = legacy["added_tokens"]
        files["special_tokens_map.json"] = {**_BERT_SPECIALS,
                                            "additional_special_tokens": legacy["additional_special_tokens"]}
    files["tokenizer_config.json"] = config
    files["config.json"] = {"model_type": "bert", "vocab_size": len(vocab) + 8}
    return _write(directory, files)


def _bpe(directory: Path, added: dict) -> Path:
    """RoBERTa's fixture BPE as vocab.json + merges.txt (no tokenizer.json), tokenizer_config.json with
    ``added`` beside its five special tokens."""
    data = json.loads((HF / "roberta_model" / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    merges = ["#version: 0.2"] + [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    config = json.loads((HF / "roberta_model" / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("backend", None)
    config["added_tokens_decoder"] = {str(vocab[t]): _entry(t, True, lstrip=t == "<mask>")
                                      for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")} | added
    return _write(directory, {"vocab.json": vocab, "merges.txt": "\n".join(merges) + "\n",
                              "tokenizer_config.json": config,
                              "config.json": {"model_type": "roberta", "vocab_size": len(vocab) + 8}})


def _japanese(directory: Path) -> Path:
    """BERT's fixture tokenizer.json, but tokenizer_config.json names BertJapaneseTokenizer, a class without a
    fast tokenizer: transformers tokenizes with its Python code from vocab.txt and never reads tokenizer.json."""
    config = {"tokenizer_class": "BertJapaneseTokenizer", "do_lower_case": True, "word_tokenizer_type": "basic",
              "subword_tokenizer_type": "character", **_BERT_SPECIALS}
    return _write(directory, {"tokenizer.json": (HF / "bert_model" / "tokenizer.json").read_text(encoding="utf-8"),
                              "vocab.txt": "\n".join(_bert_vocab()) + "\n", "tokenizer_config.json": config,
                              "config.json": {"model_type": "bert", "vocab_size": 56}})


def _sentencepiece_legacy(directory: Path) -> Path:
    """ALBERT's fixture spiece.model (41 pieces, no tokenizer.json) with tokens added as transformers 3 saved them:
    added_tokens.json (content -> id) and special_tokens_map.json's additional_special_tokens. transformers adds
    such a token normalized unless it is special: "Newword" matches "NEWWORD" and "newword" after lower-casing."""
    config = {"tokenizer_class": "AlbertTokenizer", "do_lower_case": True, "keep_accents": False,
              "bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "<unk>", "sep_token": "[SEP]",
              "pad_token": "<pad>", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    return _write(directory, {
        "spiece.model": (SENTENCEPIECE / "albert" / "spiece.model").read_bytes(),
        "added_tokens.json": {"<ent>": 41, "Newword": 42, "[E1]": 43},
        "special_tokens_map.json": {k: v for k, v in config.items() if k.endswith("_token")}
        | {"additional_special_tokens": ["[E1]"]},
        "tokenizer_config.json": config, "config.json": {"model_type": "albert", "vocab_size": 48}})


N = len(_bert_vocab()) if (HF / "bert_model" / "vocab.txt").exists() else 0
LAYOUTS = {
    # tokens added after the vocabulary (ids 56, 57, 58): two ordinary ones (matched after lowercasing), one special
    "wordpiece_added": lambda d: _wordpiece(d, added={
        str(N): _entry("<ent>", False), str(N + 1): _entry("newword", False), str(N + 2): _entry("[E1]", True)}),
    # the same tokens as transformers 3 saved them: added_tokens.json and special_tokens_map.json
    "wordpiece_legacy": lambda d: _wordpiece(d, legacy={
        "added_tokens": {"<ent>": N, "newword": N + 1, "[E1]": N + 2}, "additional_special_tokens": ["[E1]"]}),
    # tokens already in vocab.txt (a replaced [unusedN] line) that the config lists as added: matched whole
    "wordpiece_in_vocab": lambda d: _wordpiece(d, extra_vocab=["<ent>", "[E1]"], added={
        str(N): _entry("<ent>", False), str(N + 1): _entry("[E1]", True)}),
    # RoBERTa's byte-level BPE from vocab.json + merges.txt with two added tokens (ids 300, 301)
    "bpe_added": lambda d: _bpe(d, added={"300": _entry("<ent>", False), "301": _entry("[E1]", True)}),
    # ALBERT's SentencePiece model with added_tokens.json (bertc matched its tokens unnormalized: "NEWWORD" was pieces)
    "sentencepiece_legacy": _sentencepiece_legacy,
}
REFUSED = {"tokenizer_json_python_class": _japanese}
