"""Tiny ModernBERT fixtures (random weights) with reference outputs computed by transformers.

Runs in the side environment (torch + transformers 5, not bertc's):

    /work/envs/hf/bin/python tools/make_modernbert_fixtures.py     # writes tests/fixtures/hf/modernbert_*/

Each directory holds what ``save_pretrained`` writes (config.json, model.safetensors; a tokenizer.json for
``modernbert_model``) and ``reference.npz``: the inputs (bertc names) and transformers' outputs under bertc's
output names (eager attention: the sliding-window mask as transformers' masking_utils builds it).

The models are small (hidden 32, 4 heads, 4 layers) with a local window (``local_attention`` 8 or 10: half-width
4 or 5) far below the sequence length 24, so the local layers' window matters; the rows are a full row, a
right-padded row and a row with holes in its mask. Every parameter is perturbed away from its initial value
(norm weights away from 1, biases away from 0), so a swapped or missing tensor changes the outputs. The configs
vary what bertc must follow: biases on or off (``attention_bias``, ``mlp_bias``, ``norm_bias``,
``classifier_bias``, ``decoder_bias``), ``classifier_pooling`` cls / mean, ``global_attn_every_n_layers``,
both rope thetas, the activations.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers as tr

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "hf"
SEQ, BATCH = 24, 3
NOISE = 0.1
VOCAB = 96
PAD, CLS, SEP, MASK = 0, 1, 2, 3

SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=4, num_attention_heads=4,
             max_position_embeddings=64, pad_token_id=PAD, bos_token_id=CLS, cls_token_id=CLS, eos_token_id=SEP,
             sep_token_id=SEP, local_attention=8, global_attn_every_n_layers=3,
             global_rope_theta=160000.0, local_rope_theta=10000.0)


def masks() -> np.ndarray:
    """A full row, a right-padded row (13 real tokens), a row with holes (and padding at its end)."""
    m = np.ones((BATCH, SEQ), np.int32)
    m[1, 13:] = 0
    m[2, [3, 4, 9, 15, 16, 17]] = 0
    m[2, 21:] = 0
    return m


def inputs(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = masks()
    ids = rng.integers(4, VOCAB, size=(BATCH, SEQ)).astype(np.int32)
    ids[:, 0] = CLS
    ids = np.where(mask == 1, ids, PAD).astype(np.int32)
    return {"input_word_ids": ids, "input_mask": mask}


def perturb(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * NOISE)
    model.eval()


def make(arch: str, seed: int, **config):
    cfg = tr.ModernBertConfig(**{**SMALL, **config})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(tr, arch)(cfg)
    perturb(model, seed)
    return model


def reference(model, arch: str, x) -> dict[str, np.ndarray]:
    choices = arch.endswith("MultipleChoice")   # the rows as one question's choices: (1, rows, seq)
    kwargs = dict(input_ids=torch.tensor(x["input_word_ids"], dtype=torch.long),
                  attention_mask=torch.tensor(x["input_mask"], dtype=torch.long))
    with torch.no_grad():
        out = model(**({k: v[None] for k, v in kwargs.items()} if choices else kwargs))
    if choices:
        return {"logits": out.logits.numpy().reshape(-1, 1)}
    if arch == "ModernBertModel":
        return {"sequence_output": out.last_hidden_state.numpy()}
    if arch == "ModernBertForQuestionAnswering":
        return {"start_logits": out.start_logits.numpy(), "end_logits": out.end_logits.numpy()}
    return {"logits": out.logits.numpy()}


def save_tokenizer(directory: Path) -> None:
    """A tiny word-level tokenizer.json in ModernBERT's layout ([CLS] ... [SEP] by the post-processor)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ("the a an is was of to and in on it that this with for as be by at from not are have has cat dog sat "
             "mat ran fast slow big small red blue house tree car road").split()
    vocab = {"[PAD]": PAD, "[CLS]": CLS, "[SEP]": SEP, "[MASK]": MASK, "[UNK]": 4}
    vocab.update({w: 5 + i for i, w in enumerate(words)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)])
    fast = tr.PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]",
                                      pad_token="[PAD]", mask_token="[MASK]", unk_token="[UNK]",
                                      model_max_length=SMALL["max_position_embeddings"])
    fast.save_pretrained(directory)


def write(name: str, arch: str, seed: int, tokenizer: bool = False, **config) -> Path:
    model = make(arch, seed, **config)
    directory = OUT / name
    shutil.rmtree(directory, ignore_errors=True)
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer:
        save_tokenizer(directory)
    x = inputs(seed)
    np.savez(directory / "reference.npz", **x, **reference(model, arch, x))
    return directory


# modernbert-embed's layout: ModernBertModel -> mean pooling -> Normalize, with its retrieval prompts
ST_PROMPTS = {"query": "search_query: ", "document": "search_document: "}
ST_TEXTS = ["the cat sat on the mat", "a dog", "the red car ran fast on the road", "it was a big house",
            "this tree is small and that tree is big"]


def write_sentence_transformer(name: str = "st_modernbert_mean_norm", seed: int = 26) -> Path:
    """A sentence-transformers directory on ``modernbert_model``'s architecture with :data:`ST_PROMPTS`; its
    reference.npz holds ``SentenceTransformer.encode`` of :data:`ST_TEXTS` (texts.txt) without a prompt
    (``none``) and with each prompt (``query``, ``document``)."""
    from sentence_transformers import SentenceTransformer, models

    directory = OUT / name
    shutil.rmtree(directory, ignore_errors=True)
    base = OUT / f"_{name}_base"
    make("ModernBertModel", seed).save_pretrained(base, safe_serialization=True)
    save_tokenizer(base)
    word = models.Transformer(str(base), max_seq_length=SEQ)
    st = SentenceTransformer(modules=[word, models.Pooling(word.get_embedding_dimension(), pooling_mode="mean"),
                                      models.Normalize()], device="cpu", prompts=ST_PROMPTS)
    st.save(str(directory))
    (directory / "README.md").unlink(missing_ok=True)
    shutil.rmtree(base)
    st = SentenceTransformer(str(directory), device="cpu")
    (directory / "texts.txt").write_text("".join(t + "\n" for t in ST_TEXTS))
    np.savez(directory / "reference.npz", none=st.encode(ST_TEXTS),
             **{k: st.encode(ST_TEXTS, prompt_name=k) for k in ST_PROMPTS})
    return directory


FIXTURES = {
    # ModernBERT-base's choices: no biases anywhere, exact gelu, every third layer global
    "modernbert_model": lambda: write("modernbert_model", "ModernBertModel", 21, tokenizer=True),
    # every bias on, mean pooling, a wider odd window (10: half-width 5), global every second layer
    "modernbert_seq_cls": lambda: write("modernbert_seq_cls", "ModernBertForSequenceClassification", 22,
                                        num_labels=3, classifier_pooling="mean", attention_bias=True,
                                        mlp_bias=True, norm_bias=True, classifier_bias=True, local_attention=10,
                                        global_attn_every_n_layers=2, classifier_activation="gelu"),
    # cls pooling, no biases, tanh in the classifier head, other thetas; the last layer local (the optimized
    # graph computes it for the first token alone: its window row)
    "modernbert_seq_cls_first": lambda: write("modernbert_seq_cls_first", "ModernBertForSequenceClassification", 23,
                                              num_labels=2, classifier_pooling="cls", classifier_activation="tanh",
                                              global_rope_theta=80000.0, local_rope_theta=5000.0,
                                              global_attn_every_n_layers=2),
    "modernbert_token_cls": lambda: write("modernbert_token_cls", "ModernBertForTokenClassification", 24,
                                          num_labels=5, classifier_bias=True, classifier_activation="silu",
                                          hidden_activation="gelu_pytorch_tanh"),
    "modernbert_mlm": lambda: write("modernbert_mlm", "ModernBertForMaskedLM", 25, decoder_bias=True),
    # question answering: the prediction head (with its biases and relu here) before the start / end layer
    "modernbert_qa": lambda: write("modernbert_qa", "ModernBertForQuestionAnswering", 26, classifier_bias=True,
                                   classifier_activation="relu"),
    "st_modernbert_mean_norm": write_sentence_transformer,
    # multiple choice: the prediction head and classifier over the cls token (the first real one: every row's
    # first token is real here, as a tokenizer pads), biases on
    "modernbert_mc": lambda: write("modernbert_mc", "ModernBertForMultipleChoice", 27, classifier_pooling="cls",
                                   classifier_bias=True, attention_bias=True, mlp_bias=True, norm_bias=True),
    "modernbert_mc_mean": lambda: write("modernbert_mc_mean", "ModernBertForMultipleChoice", 28,
                                        classifier_pooling="mean", classifier_activation="tanh"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"fixtures to write (default all: {', '.join(FIXTURES)})")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.names or FIXTURES:
        path = FIXTURES[name]()
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        print(f"wrote {path} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
