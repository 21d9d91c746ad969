"""Tiny Hugging Face fixtures of the RoBERTa / XLM-R / CamemBERT, DistilBERT, ELECTRA and MPNet families
(random weights, every parameter perturbed) with reference outputs computed by transformers.

Runs in an environment with torch + transformers + sentence-transformers + tokenizers + sentencepiece:

    /work/envs/hf/bin/python tools/make_hf_family_fixtures.py            # writes tests/fixtures/hf/<name>/
    /work/envs/hf/bin/python tools/make_hf_family_fixtures.py roberta_mlm --verify

Habits of tools/make_hf_fixtures.py (whose ``perturb`` this uses): what ``save_pretrained`` writes plus
``reference.npz`` (the inputs under bertc's names, transformers' outputs under bertc's output names). The
batch has four rows: a full row, a right-padded row, a row with holes in its mask, and that row's real
tokens right-padded (for the families whose positions follow the mask, RoBERTa's, its real tokens' outputs
equal the holed row's). Masked positions hold the family's pad id, as a tokenizer pads: transformers derives
RoBERTa / MPNet position ids from ``input_ids != pad_token_id``, bertc from the mask.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import transformers as tr

from make_hf_fixtures import OUT, ROOT, SEQ, VOCAB, WORDS, as_choices, choice_logits, fresh, perturb, save_sentence_transformer

HOLES = [1] * 13 + [0] * 3
for _i in (3, 7, 8):
    HOLES[_i] = 0
MASKS = np.array([[1] * SEQ, [1] * 9 + [0] * (SEQ - 9), HOLES, [1] * sum(HOLES) + [0] * (SEQ - sum(HOLES))], np.int32)
# MPNet's tokenizer: RoBERTa-style specials (pad id 1, which MPNetEmbeddings hard-codes as padding_idx)
MPNET_VOCAB = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"] + WORDS + list(".,!?")
SMALL = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
TEXT = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]


def inputs(seed: int, vocab: int, pad: int, cls: int, first_id: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(first_id, vocab, size=MASKS.shape).astype(np.int32)
    ids[:, 0] = cls
    real = ids[2][MASKS[2] == 1]
    ids[3, :len(real)] = real           # row 3: row 2's real tokens, right-padded
    ids = np.where(MASKS == 1, ids, pad).astype(np.int32)
    return {"input_word_ids": ids, "input_mask": MASKS.copy(), "input_type_ids": np.zeros_like(ids)}


def reference(model, arch: str, x, types: bool) -> dict[str, np.ndarray]:
    kwargs = dict(input_ids=torch.tensor(x["input_word_ids"], dtype=torch.long),
                  attention_mask=torch.tensor(x["input_mask"], dtype=torch.long))
    if types:
        kwargs["token_type_ids"] = torch.tensor(x["input_type_ids"], dtype=torch.long)
    with torch.no_grad():
        out = model(**(as_choices(kwargs) if arch.endswith("MultipleChoice") else kwargs))
    if arch.endswith("MultipleChoice"):   # the four rows as one question's four choices
        return {"logits": choice_logits(out)}
    if arch.endswith("Model"):
        ref = {"sequence_output": out.last_hidden_state.numpy()}
        if getattr(out, "pooler_output", None) is not None:
            ref["pooled_output"] = out.pooler_output.numpy()
        return ref
    if arch.endswith(("SequenceClassification", "TokenClassification", "MaskedLM")):
        return {"logits": out.logits.numpy()}
    if arch == "ElectraForPreTraining":   # (batch, seq): bertc's one-class token classifier keeps the class axis
        return {"logits": out.logits.numpy()[..., None]}
    if arch.endswith("QuestionAnswering"):
        return {"start_logits": out.start_logits.numpy(), "end_logits": out.end_logits.numpy()}
    raise ValueError(arch)


# --- tokenizers -------------------------------------------------------------------------------------

def roberta_tokenizer(directory: Path) -> int:
    """A byte-level BPE trained on a few words: tokenizer.json plus the vocab.json / merges.txt pair (the
    files older RoBERTa checkpoints ship alone)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXT, vocab_size=300, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    directory.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(directory))
    tok = tr.RobertaTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"),
                              model_max_length=SEQ)
    tok.save_pretrained(directory)
    return len(tok)


def xlmr_tokenizer(directory: Path) -> int:
    """A unigram sentencepiece model (XLM-R's sentencepiece.bpe.model) and its tokenizer.json, with fairseq's
    offset: <s> <pad> </s> <unk>, the pieces from id 4, <mask> last."""
    import sentencepiece as spm

    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "_corpus.txt"
    corpus.write_text("\n".join(TEXT * 5))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(directory / "_sp"), vocab_size=60,
                                   model_type="unigram", character_coverage=1.0, minloglevel=2)
    corpus.unlink()
    (directory / "_sp.vocab").unlink()
    model = directory / "sentencepiece.bpe.model"
    (directory / "_sp.model").rename(model)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + pieces[3:] + [("<mask>", 0.0)]
    tok = tr.XLMRobertaTokenizer(vocab=vocab, model_max_length=SEQ)
    tok.save_pretrained(directory)
    return len(tok)


def wordpiece_tokenizer(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tr.BertTokenizerFast(vocab=str(directory / "vocab.txt"), do_lower_case=True, model_max_length=SEQ).save_pretrained(directory)
    return len(VOCAB)


def mpnet_tokenizer(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    tok = tr.MPNetTokenizer(vocab={w: i for i, w in enumerate(MPNET_VOCAB)}, model_max_length=SEQ)
    tok.save_pretrained(directory)
    return len(MPNET_VOCAB)


# --- families ---------------------------------------------------------------------------------------

ROBERTA_VOCAB, XLMR_VOCAB = 300, 62


def make(config_cls, arch: str, seed: int, **config):
    cfg = config_cls(**config)
    torch.manual_seed(seed)
    model = getattr(tr, arch)(cfg)
    perturb(model, seed)
    return model


def roberta_config(vocab=ROBERTA_VOCAB, **config):
    return dict(SMALL, vocab_size=vocab, max_position_embeddings=SEQ + 2, type_vocab_size=1, pad_token_id=1,
                bos_token_id=0, eos_token_id=2, **config)


def distilbert_config(**config):
    return dict(vocab_size=len(VOCAB), dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=SEQ,
                pad_token_id=0, **config)


def electra_config(**config):
    return dict(SMALL, vocab_size=len(VOCAB), max_position_embeddings=SEQ, type_vocab_size=2, **config)


def mpnet_config(**config):
    return dict(SMALL, vocab_size=len(MPNET_VOCAB), max_position_embeddings=SEQ + 2, pad_token_id=1,
                relative_attention_num_buckets=32, **config)


# name: (config class, architecture, config, seed, tokenizer, (vocab, pad id, first-token id), token types)
FAMILIES = {
    "roberta_model": (tr.RobertaConfig, "RobertaModel", roberta_config(), 21, roberta_tokenizer, (ROBERTA_VOCAB, 1, 0), True),
    "roberta_seq_cls": (tr.RobertaConfig, "RobertaForSequenceClassification",
                        roberta_config(num_labels=3, classifier_dropout=0.2), 22, None, (ROBERTA_VOCAB, 1, 0), True),
    "roberta_token_cls": (tr.RobertaConfig, "RobertaForTokenClassification",
                          roberta_config(num_labels=4, hidden_act="gelu_new"), 23, None, (ROBERTA_VOCAB, 1, 0), True),
    "roberta_qa": (tr.RobertaConfig, "RobertaForQuestionAnswering", roberta_config(), 24, None, (ROBERTA_VOCAB, 1, 0), True),
    "roberta_mlm": (tr.RobertaConfig, "RobertaForMaskedLM", roberta_config(hidden_act="relu", layer_norm_eps=1e-5),
                    25, None, (ROBERTA_VOCAB, 1, 0), True),
    "xlmr_model": (tr.XLMRobertaConfig, "XLMRobertaModel", roberta_config(vocab=XLMR_VOCAB, layer_norm_eps=1e-5), 26,
                   xlmr_tokenizer, (XLMR_VOCAB, 1, 0), True),
    "camembert_seq_cls": (tr.CamembertConfig, "CamembertForSequenceClassification",
                          roberta_config(vocab=XLMR_VOCAB, num_labels=2), 27, None, (XLMR_VOCAB, 1, 0), True),
    "distilbert_model": (tr.DistilBertConfig, "DistilBertModel", distilbert_config(sinusoidal_pos_embds=True), 31,
                         wordpiece_tokenizer, (len(VOCAB), 0, 2), False),
    "distilbert_seq_cls": (tr.DistilBertConfig, "DistilBertForSequenceClassification",
                           distilbert_config(num_labels=3, seq_classif_dropout=0.3), 32, None, (len(VOCAB), 0, 2), False),
    "distilbert_token_cls": (tr.DistilBertConfig, "DistilBertForTokenClassification",
                             distilbert_config(num_labels=4, activation="relu"), 33, None, (len(VOCAB), 0, 2), False),
    "distilbert_qa": (tr.DistilBertConfig, "DistilBertForQuestionAnswering", distilbert_config(), 34, None,
                      (len(VOCAB), 0, 2), False),
    "distilbert_mlm": (tr.DistilBertConfig, "DistilBertForMaskedLM", distilbert_config(), 35, None, (len(VOCAB), 0, 2), False),
    "electra_model": (tr.ElectraConfig, "ElectraModel", electra_config(embedding_size=8), 41, wordpiece_tokenizer,
                      (len(VOCAB), 0, 2), True),
    "electra_seq_cls": (tr.ElectraConfig, "ElectraForSequenceClassification",
                        electra_config(embedding_size=16, num_labels=3), 42, None, (len(VOCAB), 0, 2), True),
    "electra_token_cls": (tr.ElectraConfig, "ElectraForTokenClassification",
                          electra_config(embedding_size=8, num_labels=4, hidden_act="gelu_new"), 43, None,
                          (len(VOCAB), 0, 2), True),
    "electra_qa": (tr.ElectraConfig, "ElectraForQuestionAnswering", electra_config(embedding_size=8), 44, None,
                   (len(VOCAB), 0, 2), True),
    # google/electra-*-discriminator as published (replaced-token detection), and the generator, whose embeddings
    # are wider than its hidden states (electra-base-generator: 768 and 256)
    "electra_pretraining": (tr.ElectraConfig, "ElectraForPreTraining", electra_config(embedding_size=8), 45, None,
                            (len(VOCAB), 0, 2), True),
    "electra_mlm": (tr.ElectraConfig, "ElectraForMaskedLM", electra_config(embedding_size=24, layer_norm_eps=1e-5),
                    46, None, (len(VOCAB), 0, 2), True),
    "mpnet_model": (tr.MPNetConfig, "MPNetModel", mpnet_config(), 51, mpnet_tokenizer, (len(MPNET_VOCAB), 1, 0), False),
    "mpnet_seq_cls": (tr.MPNetConfig, "MPNetForSequenceClassification", mpnet_config(num_labels=3), 52, None,
                      (len(MPNET_VOCAB), 1, 0), False),
    "mpnet_token_cls": (tr.MPNetConfig, "MPNetForTokenClassification", mpnet_config(num_labels=4, hidden_act="relu"),
                        53, None, (len(MPNET_VOCAB), 1, 0), False),
    "mpnet_qa": (tr.MPNetConfig, "MPNetForQuestionAnswering", mpnet_config(), 54, None, (len(MPNET_VOCAB), 1, 0), False),
    "mpnet_mlm": (tr.MPNetConfig, "MPNetForMaskedLM", mpnet_config(layer_norm_eps=1e-5), 55, None,
                  (len(MPNET_VOCAB), 1, 0), False),
    # *ForMultipleChoice: the four rows as one question's four choices
    "roberta_mc": (tr.RobertaConfig, "RobertaForMultipleChoice", roberta_config(classifier_dropout=0.2), 28, None,
                   (ROBERTA_VOCAB, 1, 0), True),
    "distilbert_mc": (tr.DistilBertConfig, "DistilBertForMultipleChoice", distilbert_config(seq_classif_dropout=0.3),
                      36, None, (len(VOCAB), 0, 2), False),
    # ElectraSequenceSummary: the first token, its projection and exact gelu
    "electra_mc": (tr.ElectraConfig, "ElectraForMultipleChoice", electra_config(embedding_size=8), 47, None,
                   (len(VOCAB), 0, 2), True),
    "mpnet_mc": (tr.MPNetConfig, "MPNetForMultipleChoice", mpnet_config(), 57, None, (len(MPNET_VOCAB), 1, 0), False),
}


def write_family(name: str) -> Path:
    config_cls, arch, config, seed, tokenizer, (vocab, pad, cls), types = FAMILIES[name]
    model = make(config_cls, arch, seed, **config)
    directory = OUT / name
    fresh(directory)
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None:
        assert tokenizer(directory) == vocab
    x = inputs(seed, vocab, pad, cls)
    np.savez(directory / "reference.npz", **x, **reference(model, arch, x, types))
    return directory


def write_sentence_transformer(name: str = "st_mpnet_mean_norm", seed: int = 56) -> Path:
    """An all-mpnet-base-v2-like directory: MPNetModel -> mean pooling -> Normalize."""
    return _sentence_transformer(name, seed, make(tr.MPNetConfig, "MPNetModel", seed, **mpnet_config()),
                                 mpnet_tokenizer, (len(MPNET_VOCAB), 1, 0))


def write_distiluse(name: str = "st_distilbert_mean_dense", seed: int = 57) -> Path:
    """A distiluse-base-multilingual-cased-like directory: DistilBertModel -> mean pooling -> Dense 16 -> 8 with
    tanh, no Normalize."""
    return _sentence_transformer(name, seed, make(tr.DistilBertConfig, "DistilBertModel", seed, **distilbert_config()),
                                 wordpiece_tokenizer, (len(VOCAB), 0, 2), dense=((8, torch.nn.Tanh()),),
                                 normalize=False)


def _sentence_transformer(name: str, seed: int, model, tokenizer, ids: tuple, dense: tuple = (),
                          normalize: bool = True) -> Path:
    directory = OUT / name
    fresh(directory)
    base = OUT / f"_{name}_base"
    model.save_pretrained(base, safe_serialization=True)
    tokenizer(base)
    st = save_sentence_transformer(base, directory, seed, "mean", dense, normalize)
    x = inputs(seed, *ids)
    features = {"input_ids": torch.tensor(x["input_word_ids"], dtype=torch.long),
                "attention_mask": torch.tensor(x["input_mask"], dtype=torch.long)}
    with torch.no_grad():
        emb = st(features)["sentence_embedding"].numpy()
    np.savez(directory / "reference.npz", **x, sentence_embedding=emb)
    return directory


FIXTURES = {**{name: (lambda n=name: write_family(n)) for name in FAMILIES},
            "st_mpnet_mean_norm": write_sentence_transformer, "st_distilbert_mean_dense": write_distiluse}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"fixtures to write (default all: {', '.join(FIXTURES)})")
    parser.add_argument("--verify", action="store_true", help="import + build each with bertc and compare backends")
    parser.add_argument("--bertc-python", default="/work/main/.venv/bin/python",
                        help="the Python that has bertc's dependencies (for --verify)")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in FIXTURES]
    if unknown:
        parser.error(f"unknown fixtures {unknown}; known: {', '.join(FIXTURES)}")
    torch.set_num_threads(1)
    for name in args.names or FIXTURES:
        path = FIXTURES[name]()
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        print(f"wrote {path} ({size / 1024:.0f} KiB)")
    if args.verify:
        cmd = [args.bertc_python, str(ROOT / "tools" / "verify_fixtures.py"),
               *[str(OUT / n) for n in (args.names or FIXTURES)]]
        return subprocess.call(cmd, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
