#!/usr/bin/env python3
"""Make tests/fixtures/sentencepiece: a tiny DeBERTa-style SentencePiece model and what transformers makes of it.

    /path/to/side-env/bin/python tools/make_sentencepiece_fixture.py

Run it in the side environment that has transformers and sentencepiece (never bertc dependencies). Two Unigram
models laid out as DeBERTa-v3's ``spm.model`` is ([PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3 as control pieces): the
``deberta_v3_model`` fixture's (tools/make_deberta_fixtures.py: the default nmt_nfkc normalization, so the file
carries a precompiled character map) and ``identity/spm.model``, trained here (a few plain English sentences,
identity normalization: no character map). Each is loaded from a folder holding it alone (no tokenizer.json, as
microsoft/deberta-v3-base ships it) through transformers' ``AutoTokenizer`` under several tokenizer configs; the
ids and type ids it gives for single texts and pairs go to ``expected.json``, which tests/test_sentencepiece.py
compares bertc's tokenizer against.
"""
from __future__ import annotations

import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "sentencepiece"

# the tokenizer configs: microsoft/deberta-v3-base's own, lowercasing, punctuation split, a config that names an
# added token's id
CONFIGS = {
    "deberta_v3": {"do_lower_case": False, "vocab_type": "spm"},
    "lower_case": {"do_lower_case": True, "vocab_type": "spm"},
    "split_by_punct": {"do_lower_case": False, "split_by_punct": True, "vocab_type": "spm"},
}

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces  ",
    "many     spaces\tand a tab\nand a new line",
    "Ünïcödé àccents, ligatures ﬁ ﬂ and full-width ＡＢＣ１２３",
    "Straße, naïve café, coöperate; résumé?",
    "中文句子和日本語の文、한국어 문장",
    "emoji 🙂🚀 and symbols © ® ™ € £ ¥",
    "numbers 3.14159, 1,000,000 and 2026-12-05",
    "[CLS] literal special tokens [SEP] and [MASK] inside text",
    "e-mail: someone@example.com, url https://example.org/a?b=c&d=e",
    "punctuation!!! ... ??? (brackets) [square] {curly} <angle>",
    "",
    "a",
    "Bonjour, comment ça va ? Très bien, merci !",
    "Привет, как дела? Всё хорошо.",
    "Zero\u200bwidth and non\u00a0breaking space",
]
PAIRS = [("What is the fox doing?", "The quick brown fox jumps over the lazy dog."),
         ("short", "  spaced   out  "), ("中文", "English text")]


SMALL_CORPUS = ["the cat sat on the mat", "a dog ran fast on the road", "it was a big red car", "the house is small",
                "this tree is small and that tree is big", "cats and dogs", "the blue car is fast"]


def train(path: Path, corpus: list, **options) -> int:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 4), model_writer=model, model_type="unigram", pad_id=0, pad_piece="[PAD]",
        bos_id=1, bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]", unk_id=3, unk_piece="[UNK]",
        hard_vocab_limit=False, minloglevel=2, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return len(model.getvalue())


def main() -> int:
    import sentencepiece as spm
    import transformers

    train(OUT / "identity" / "spm.model", SMALL_CORPUS, vocab_size=60, character_coverage=1.0,
          normalization_rule_name="identity")
    models = {"hf/deberta_v3_model/spm.model": ROOT / "tests" / "fixtures" / "hf" / "deberta_v3_model" / "spm.model",
              "sentencepiece/identity/spm.model": OUT / "identity" / "spm.model"}
    sizes = {name: path.stat().st_size for name, path in models.items()}
    expected = {"transformers": transformers.__version__, "sentencepiece": spm.__version__, "texts": TEXTS,
                "pairs": PAIRS, "models": {}}
    for name, path in models.items():   # keyed by the path under tests/fixtures
        expected["models"][name] = expect(path)
    (OUT / "expected.json").write_text(json.dumps(expected, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}: {', '.join(f'{k} {v:,} bytes' for k, v in sizes.items())}; {len(TEXTS)} texts, "
          f"{len(PAIRS)} pairs, {len(CONFIGS)} configs (transformers {transformers.__version__})")
    return 0


def expect(model: Path) -> dict:
    """What transformers' AutoTokenizer gives for TEXTS and PAIRS from a folder with ``model`` alone, per config."""
    import transformers

    configs = {}
    for name, config in CONFIGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            shutil.copyfile(model, folder / "spm.model")
            (folder / "tokenizer_config.json").write_text(json.dumps(config))
            (folder / "config.json").write_text(json.dumps({"model_type": "deberta-v2"}))
            tok = transformers.AutoTokenizer.from_pretrained(str(folder))
            singles = [tok(t) for t in TEXTS]
            pairs = [tok(a, b) for a, b in PAIRS]
            configs[name] = {
                "tokenizer_config": config, "class": type(tok).__name__,
                "single": [[e["input_ids"], e.get("token_type_ids")] for e in singles],
                "pair": [[e["input_ids"], e.get("token_type_ids")] for e in pairs],
                "mask_id": tok.convert_tokens_to_ids("[MASK]")}
    return configs


if __name__ == "__main__":
    sys.exit(main())
