#!/usr/bin/env python3
"""Make tests/fixtures/sentencepiece: tiny SentencePiece models and what transformers makes of them, per family.

    /path/to/side-env/bin/python tools/make_sentencepiece_fixture.py

Run it in the side environment that has transformers and sentencepiece (never bertc dependencies). For each
family whose checkpoints can ship a SentencePiece model without tokenizer.json (DeBERTa-v2/v3 ``spm.model``,
ALBERT ``spiece.model``, XLM-RoBERTa and CamemBERT ``sentencepiece.bpe.model``): Unigram models laid out as the
family's are (special pieces first), trained here on a few plain English sentences with identity normalization
(no character map, a few hundred bytes each), and the ``deberta_v3_model`` fixture's model
(tools/make_deberta_fixtures.py: nmt_nfkc normalization, so the file carries a precompiled character map) under the
family's file name. Each is loaded from a folder holding it alone, a tokenizer config and a config.json naming
the model type, through transformers' ``AutoTokenizer``, under several tokenizer configs; the ids and type ids it
gives for single texts and pairs go to ``expected.json``, which tests/test_sentencepiece.py compares bertc's
tokenizer against.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "sentencepiece"

# how transformers 5 writes an added token (XLM-R's <mask> takes the space before it)
MASK_LSTRIP = {"content": "<mask>", "lstrip": True, "rstrip": False, "normalized": False, "single_word": False,
               "special": True}
# per family: (model_type, file name, the layout of the trained model, tokenizer configs)
FAMILIES = {
    "deberta-v2": ("spm.model", dict(pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2,
                                     eos_piece="[SEP]", unk_id=3, unk_piece="[UNK]"),
                   {"deberta_v3": {"do_lower_case": False, "vocab_type": "spm"},
                    "lower_case": {"do_lower_case": True, "vocab_type": "spm"},
                    "split_by_punct": {"do_lower_case": False, "split_by_punct": True, "vocab_type": "spm"}}),
    "albert": ("spiece.model", dict(pad_id=0, pad_piece="<pad>", unk_id=1, unk_piece="<unk>", bos_id=2,
                                    bos_piece="[CLS]", eos_id=3, eos_piece="[SEP]", control_symbols=["[MASK]"]),
               {"default": {}, "albert_base_v2": {"do_lower_case": True, "keep_accents": False, "remove_space": True},
                "cased_accents": {"do_lower_case": False, "keep_accents": True}}),
    "xlm-roberta": ("sentencepiece.bpe.model", dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1),
                    {"default": {}, "mask_lstrip": lambda pieces: {"added_tokens_decoder": {str(pieces + 1): MASK_LSTRIP}}}),
    "camembert": ("sentencepiece.bpe.model", dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1), {"default": {}}),
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
    "fill the <mask> here, <s> and </s> there, <unk> and <pad>",
    "``quoted'' text and ``more''",
    "e-mail: someone@example.com, url https://example.org/a?b=c&d=e",
    "punctuation!!! ... ??? (brackets) [square] {curly} <angle>",
    "",
    "a",
    "Bonjour, comment ça va ? Très bien, merci !",
    "Привет, как дела? Всё хорошо.",
    "Zero\u200bwidth and non\u00a0breaking space",
]
PAIRS = [("What is the fox doing?", "The quick brown fox jumps over the lazy dog."),
         ("short", "  spaced   out  "), ("中文", "English text"), ("the <mask> sat", "on the mat")]
SMALL_CORPUS = ["the cat sat on the mat", "a dog ran fast on the road", "it was a big red car", "the house is small",
                "this tree is small and that tree is big", "cats and dogs", "the blue car is fast"]
WITH_MAP = ROOT / "tests" / "fixtures" / "hf" / "deberta_v3_model" / "spm.model"


def train(path: Path, corpus: list, **options) -> int:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus * 4), model_writer=model, model_type="unigram",
                                   hard_vocab_limit=False, minloglevel=2, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return len(model.getvalue())


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    try:
        import sentencepiece as spm
        import transformers
    except ModuleNotFoundError as e:
        raise SystemExit(f"{Path(__file__).name}: needs {e.name}, which {sys.executable} lacks: run it in a side "
                         f"environment with transformers and sentencepiece (pip install transformers sentencepiece)")

    expected = {"transformers": transformers.__version__, "sentencepiece": spm.__version__, "texts": TEXTS,
                "pairs": PAIRS, "models": {}}
    for family, (file_name, layout, configs) in FAMILIES.items():
        folder = family.replace("-", "_")
        trained = OUT / folder / file_name
        train(trained, SMALL_CORPUS, vocab_size=60, character_coverage=1.0, normalization_rule_name="identity",
              **layout)
        for key, path in ((f"{folder}/identity", trained), (f"{folder}/with_charsmap", WITH_MAP)):
            expected["models"][key] = {
                "model_type": family, "file": str(path.relative_to(ROOT / "tests" / "fixtures")),
                "file_name": file_name, "configs": expect(path, family, file_name, configs)}
    (OUT / "expected.json").write_text(json.dumps(expected, ensure_ascii=False) + "\n")
    sizes = {p.relative_to(OUT).as_posix(): p.stat().st_size for p in sorted(OUT.rglob("*.model"))}
    print(f"wrote {OUT}: {', '.join(f'{k} {v:,} bytes' for k, v in sizes.items())}; {len(TEXTS)} texts, "
          f"{len(PAIRS)} pairs, {len(expected['models'])} models (transformers {transformers.__version__})")
    return 0


def expect(model: Path, family: str, file_name: str, configs: dict) -> dict:
    """What transformers' AutoTokenizer gives for TEXTS and PAIRS from a folder with ``model`` alone (as
    ``file_name``), per tokenizer config."""
    import transformers

    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_file=str(model)).get_piece_size()
    out = {}
    for name, config in configs.items():
        config = config(pieces) if callable(config) else config   # a config that names ids: from the model's size
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            shutil.copyfile(model, folder / file_name)
            (folder / "tokenizer_config.json").write_text(json.dumps(config))
            (folder / "config.json").write_text(json.dumps({"model_type": family}))
            tok = transformers.AutoTokenizer.from_pretrained(str(folder))
            singles = [tok(t) for t in TEXTS]
            pairs = [tok(a, b) for a, b in PAIRS]
            out[name] = {
                "tokenizer_config": config, "class": type(tok).__name__,
                "single": [[e["input_ids"], e.get("token_type_ids")] for e in singles],
                "pair": [[e["input_ids"], e.get("token_type_ids")] for e in pairs],
                "mask_id": tok.convert_tokens_to_ids(str(tok.mask_token))}
    return out


if __name__ == "__main__":
    sys.exit(main())
