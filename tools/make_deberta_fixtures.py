"""Tiny Hugging Face DeBERTa-v2/v3 fixtures (random weights) with transformers' outputs, for ``bertc import``.

Runs in the side environment with torch + transformers + sentencepiece (never bertc dependencies; this imports
no bertc):

    /work/envs/hf/bin/python tools/make_deberta_fixtures.py            # writes tests/fixtures/hf/deberta_*/
    /work/envs/hf/bin/python tools/make_deberta_fixtures.py --size base --out DIR   # DeBERTa-v3-base sized
                                                                       # DebertaV2Model (benchmarks; not a fixture)

Each fixture directory holds what ``save_pretrained`` writes (config.json, model.safetensors) and
``reference.npz``: the inputs under bertc's names (``input_word_ids``, ``input_mask``, ``input_type_ids``) and
transformers' outputs under bertc's output names. The batch has a full row, a right-padded row and a row with
holes in its mask; transformers' padded query rows attend to every key (its mask is ``mask_i * mask_j``, filled
row-wide), so only the real tokens' outputs are a model's meaning (the tests compare those).

Two flavours of config: ``V3`` as microsoft/deberta-v3-* ships (share_att_key, log buckets, layer-normed
relative embeddings, no absolute positions, no token types) and ``V2`` (own pos_key_proj / pos_query_proj,
absolute positions added to the input, token types, ``pos_att_type`` as the "p2c|c2p" string, an explicit
max_relative_positions). Weights are drawn large enough for sharp attention, so the position terms matter.
``deberta_v3_model`` also carries a tiny sentencepiece tokenizer (spm.model, tokenizer.json).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers as tr

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "hf"
SEQ, BATCH = 24, 3

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=32, position_buckets=8)
# DeBERTa-v3-base's dimensions (microsoft/deberta-v3-base config.json)
BASE = dict(vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            max_position_embeddings=512, position_buckets=256)
DIMS = dict(TINY)

V3 = dict(relative_attention=True, max_relative_positions=-1, position_biased_input=False, pos_att_type=["p2c", "c2p"],
          share_att_key=True, norm_rel_ebd="layer_norm", type_vocab_size=0, hidden_act="gelu", layer_norm_eps=1e-7)
V2 = dict(V3, share_att_key=False, position_biased_input=True, type_vocab_size=2, pos_att_type="p2c|c2p",
          max_relative_positions=16)

CORPUS = ("the cat sat on the mat . a dog ran fast on the road . the big red house has a small blue car . "
          "it was not slow , and that is all . is this the tree by the house ? yes !\n")


def randomize(model: torch.nn.Module, seed: int, scale: float = 1.0) -> None:
    """Every parameter away from its initial value: layer-norm gammas around 1, biases around 0, projections
    ~ N(0, 1 / fan_in) (query / key / position projections twice that, for sharp attention); the word embeddings
    small (the embedding layer norm rescales them; the tied masked-LM logits stay O(1))."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.3 * scale * torch.randn(p.shape, generator=g))
            elif "LayerNorm.bias" in name:
                p.copy_(0.2 * scale * torch.randn(p.shape, generator=g))
            elif "word_embeddings" in name:     # small: the tied masked-LM decoder's logits stay O(1)
                p.copy_(0.2 * scale * torch.randn(p.shape, generator=g))
            elif "embeddings" in name:
                p.copy_(scale * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * scale * torch.randn(p.shape, generator=g))
            else:
                wide = 2.0 if any(k in name for k in ("query_proj", "key_proj", "pos_")) else 1.0
                p.copy_(wide * scale * torch.randn(p.shape, generator=g) / np.sqrt(p.shape[1]))
    model.eval()


def inputs(seed: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(BATCH, SEQ)).astype(np.int32)
    ids[:, 0] = 1                                            # [CLS]
    mask = np.ones((BATCH, SEQ), np.int32)
    mask[1, 15:] = 0                                         # right-padded
    mask[2] = rng.integers(0, 2, size=SEQ)                   # holes
    mask[2, 0] = 1
    types = (rng.integers(0, 2, size=(BATCH, SEQ)) * mask).astype(np.int32)
    return {"input_word_ids": ids * mask, "input_mask": mask, "input_type_ids": types}


def reference(model, arch: str, x: dict, types: bool) -> dict[str, np.ndarray]:
    kwargs = dict(input_ids=torch.tensor(x["input_word_ids"], dtype=torch.long),
                  attention_mask=torch.tensor(x["input_mask"], dtype=torch.long))
    if types:
        kwargs["token_type_ids"] = torch.tensor(x["input_type_ids"], dtype=torch.long)
    choices = arch.endswith("MultipleChoice")   # the rows as one question's choices: (1, rows, seq)
    with torch.no_grad():
        out = model(**({k: v[None] for k, v in kwargs.items()} if choices else kwargs))
    if choices:
        return {"logits": out.logits.numpy().reshape(-1, 1)}
    if arch.endswith("Model"):
        return {"sequence_output": out.last_hidden_state.numpy()}
    if arch.endswith("QuestionAnswering"):
        return {"start_logits": out.start_logits.numpy(), "end_logits": out.end_logits.numpy()}
    return {"logits": out.logits.numpy()}


def save_tokenizer(directory: Path) -> None:
    """A tiny sentencepiece model laid out as DeBERTa-v3's spm.model ([PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3,
    [MASK]) and what transformers' DebertaV2Tokenizer saves from it (tokenizer.json, tokenizer_config.json)."""
    import sentencepiece as spm

    work = directory / "_spm"
    work.mkdir()
    (work / "corpus.txt").write_text(CORPUS * 20)
    spm.SentencePieceTrainer.train(
        input=str(work / "corpus.txt"), model_prefix=str(work / "spm"), vocab_size=DIMS["vocab_size"],
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]",
        unk_piece="[UNK]", user_defined_symbols=["[MASK]"], hard_vocab_limit=False, minloglevel=2)
    shutil.copyfile(work / "spm.model", directory / "spm.model")
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "DebertaV2Tokenizer"}))
    tok = tr.AutoTokenizer.from_pretrained(str(directory))
    assert len(tok) <= DIMS["vocab_size"], len(tok)
    tok.model_max_length = SEQ
    tok.save_pretrained(str(directory))
    shutil.rmtree(work)


def make(name: str, arch: str, flavour: dict, seed: int, tokenizer: bool = False, **config) -> Path:
    cfg = tr.DebertaV2Config(**{**DIMS, **flavour, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
                                "pad_token_id": 0, **config})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(tr, arch)(cfg)
    randomize(model, 100 + seed, scale=1.0 if DIMS["hidden_size"] <= 64 else 0.2)
    directory = OUT / name
    shutil.rmtree(directory, ignore_errors=True)
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer:
        save_tokenizer(directory)
    x = inputs(seed, DIMS["vocab_size"])
    if not cfg.type_vocab_size:
        x["input_type_ids"] = np.zeros_like(x["input_mask"])
    np.savez(directory / "reference.npz", **x, **reference(model, arch, x, bool(cfg.type_vocab_size)))
    return directory


FIXTURES = {
    "deberta_v3_model": lambda: make("deberta_v3_model", "DebertaV2Model", V3, 1, tokenizer=True),
    "deberta_v3_seq_cls": lambda: make("deberta_v3_seq_cls", "DebertaV2ForSequenceClassification", V3, 2,
                                       num_labels=3, pooler_hidden_act="gelu", cls_dropout=0.1),
    "deberta_v2_seq_cls": lambda: make("deberta_v2_seq_cls", "DebertaV2ForSequenceClassification", V2, 3,
                                       num_labels=2, pooler_hidden_act="tanh"),
    "deberta_v3_token_cls": lambda: make("deberta_v3_token_cls", "DebertaV2ForTokenClassification", V3, 4,
                                         num_labels=5),
    "deberta_v2_token_cls": lambda: make("deberta_v2_token_cls", "DebertaV2ForTokenClassification", V2, 5,
                                         num_labels=4),
    # no log buckets, no layer norm of the relative embeddings, c2p only
    "deberta_qa_c2p": lambda: make("deberta_qa_c2p", "DebertaV2ForQuestionAnswering", V3, 6, position_buckets=-1,
                                   max_relative_positions=12, norm_rel_ebd="none", pos_att_type=["c2p"]),
    "deberta_v3_qa": lambda: make("deberta_v3_qa", "DebertaV2ForQuestionAnswering", V3, 7),
    "deberta_v3_mlm": lambda: make("deberta_v3_mlm", "DebertaV2ForMaskedLM", V3, 8, legacy=False),
    "deberta_v2_mlm_legacy": lambda: make("deberta_v2_mlm_legacy", "DebertaV2ForMaskedLM", V2, 9, legacy=True),
    "deberta_v3_mc": lambda: make("deberta_v3_mc", "DebertaV2ForMultipleChoice", V3, 10, pooler_hidden_act="gelu",
                                  cls_dropout=0.1),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"fixtures to write (default all: {', '.join(FIXTURES)})")
    parser.add_argument("--size", choices=["tiny", "base"], default="tiny",
                        help="base: DeBERTa-v3-base dimensions, DebertaV2Model only (needs --out)")
    parser.add_argument("--out", type=Path, default=None, help="write here instead of tests/fixtures/hf")
    args = parser.parse_args()
    global OUT, DIMS
    if args.out is not None:
        OUT = args.out
    torch.set_num_threads(1)
    if args.size == "base":
        if args.out is None:
            parser.error("--size base writes ~700 MB: give --out DIR outside the repository")
        DIMS = dict(BASE)
        path = make("deberta_v3_base", "DebertaV2Model", V3, 11)
        print(f"wrote {path}")
        return 0
    for name in args.names or FIXTURES:
        path = FIXTURES[name]()
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        print(f"wrote {path} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
