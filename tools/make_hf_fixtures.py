"""Tiny Hugging Face fixtures (random weights) with reference outputs computed by transformers.

Runs in an environment with torch + transformers + sentence-transformers (not bertc's):

    /work/envs/hf/bin/python tools/make_hf_fixtures.py            # writes tests/fixtures/hf/<name>/
    /work/envs/hf/bin/python tools/make_hf_fixtures.py --verify   # then imports + builds each with bertc
                                                                  # and compares Keras / ONNX / TFLite

Every parameter is perturbed away from its initial value (layer-norm gammas away from 1, biases away
from 0), so a swapped or missing tensor changes the outputs. Each fixture directory holds what
``save_pretrained`` writes (config.json, model.safetensors; a tokenizer for some) and
``reference.npz``: the inputs (bertc names) and transformers' outputs under bertc's output names.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import transformers as tr

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "hf"
SEQ, BATCH, PREDICTIONS = 16, 3, 4
LENGTHS = [16, 1, 9]  # a full row, a single real token, a padded row
WORDS = ("the a an is was of to and in on it that this with for as be by at from not are have has "
         "cat dog sat mat ran fast slow big small red blue house tree car road").split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [f"##{c}" for c in "sdeingly"] + list(".,!?")

SMALL = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
             max_position_embeddings=SEQ, type_vocab_size=2, vocab_size=len(VOCAB))
# --size base: BERT-base dimensions (a proof run written outside the repository, not a test fixture)
BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            max_position_embeddings=512, type_vocab_size=2, vocab_size=30522)
NOISE = {"tiny": 0.1, "base": 0.02}
noise = NOISE["tiny"]


def perturb(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * noise)
    model.eval()


def inputs(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = (np.arange(SEQ)[None, :] < np.array(LENGTHS)[:, None]).astype(np.int32)
    ids = rng.integers(5, len(VOCAB), size=(BATCH, SEQ)).astype(np.int32)
    ids[:, 0] = 2  # [CLS]
    types = (rng.integers(0, 2, size=(BATCH, SEQ)) * mask).astype(np.int32)
    positions = np.stack([rng.integers(0, n, size=PREDICTIONS) for n in LENGTHS]).astype(np.int32)
    return {"input_word_ids": ids * mask, "input_mask": mask, "input_type_ids": types,
            "masked_lm_positions": positions}


def torch_inputs(x):
    return dict(input_ids=torch.tensor(x["input_word_ids"], dtype=torch.long),
                attention_mask=torch.tensor(x["input_mask"], dtype=torch.long),
                token_type_ids=torch.tensor(x["input_type_ids"], dtype=torch.long))


def gather(logits: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return np.stack([logits[i, positions[i]] for i in range(len(positions))])


def as_choices(kwargs: dict) -> dict:
    """A *ForMultipleChoice model's inputs: the batch's rows as one question's choices, (1, rows, seq)."""
    return {k: v[None] for k, v in kwargs.items()}


def choice_logits(out) -> np.ndarray:
    """transformers' (questions, choices) scores as bertc's: one row each, (rows, 1)."""
    return out.logits.numpy().reshape(-1, 1)


def reference(model, arch: str, x) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(**(as_choices if arch.endswith("MultipleChoice") else dict)(torch_inputs(x)))
    if arch.endswith("MultipleChoice"):
        return {"logits": choice_logits(out)}
    if arch.endswith("Model"):
        return {"sequence_output": out.last_hidden_state.numpy(), "pooled_output": out.pooler_output.numpy()}
    if arch.endswith(("SequenceClassification", "TokenClassification", "MaskedLM")):
        return {"logits": out.logits.numpy()}
    if arch.endswith("QuestionAnswering"):
        return {"start_logits": out.start_logits.numpy(), "end_logits": out.end_logits.numpy()}
    if arch.endswith("PreTraining"):
        nsp = out.seq_relationship_logits if hasattr(out, "seq_relationship_logits") else out.sop_logits
        return {"masked_lm": gather(out.prediction_logits.numpy(), x["masked_lm_positions"]),
                "classification": nsp.numpy()}
    raise ValueError(arch)


def save_tokenizer(directory: Path) -> None:
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    tr.BertTokenizerFast(vocab=str(vocab), do_lower_case=True, model_max_length=SEQ).save_pretrained(directory)


# files another tool writes into a fixture folder (tools/make_pipeline_references.py, which needs transformers 4;
# tools/make_pad_id_references.py): kept when this tool remakes the folder, which deleted them
OTHER_TOOLS = ("pipeline_reference.json", "zero_shot_reference.json", "choice_reference.json", "pad_id_reference.npz")


def fresh(directory: Path) -> None:
    """Empty ``directory`` for a fixture remade, except the files of :data:`OTHER_TOOLS`."""
    if not directory.is_dir():
        return
    for item in directory.iterdir():
        if item.name in OTHER_TOOLS:
            continue
        shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()


def write(name: str, model, arch: str, seed: int, tokenizer: bool = False, extra: dict | None = None) -> Path:
    directory = OUT / name
    fresh(directory)
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer:
        save_tokenizer(directory)
    x = inputs(seed)
    np.savez(directory / "reference.npz", **x, **(extra or reference(model, arch, x)))
    return directory


def make_bert(arch: str, seed: int, **config):
    cfg = tr.BertConfig(**{**SMALL, **config})
    torch.manual_seed(seed)
    model = getattr(tr, arch)(cfg)
    perturb(model, seed)
    return model


def make_albert(arch: str, seed: int, **config):
    width = 8 if SMALL["hidden_size"] <= 64 else 128
    cfg = tr.AlbertConfig(**{**SMALL, "embedding_size": width, "hidden_act": "gelu_new", **config})
    torch.manual_seed(seed)
    model = getattr(tr, arch)(cfg)
    perturb(model, seed)
    return model


def save_sentence_transformer(base: Path, directory: Path, seed: int, pooling_mode, dense: tuple,
                              normalize: bool, legacy_pooling: bool = False):
    """The sentence-transformers directory of the transformers checkpoint in ``base`` (removed after): pooling
    (a mode or a list of modes), a Dense module per (out_features, torch activation) of ``dense`` (seeded),
    optionally Normalize; ``legacy_pooling``: the Pooling config rewritten with the ``pooling_mode_*`` flags of
    sentence-transformers before v6. Returns the model loaded back from ``directory`` (what the reference
    outputs are computed with)."""
    import json

    from sentence_transformers import SentenceTransformer, models

    word = models.Transformer(str(base), max_seq_length=SEQ)
    pooling = models.Pooling(word.get_word_embedding_dimension(), pooling_mode=pooling_mode)
    modules = [word, pooling]
    width = word.get_word_embedding_dimension() * (1 if isinstance(pooling_mode, str) else len(pooling_mode))
    torch.manual_seed(seed)
    for units, activation in dense:
        modules.append(models.Dense(width, units, activation_function=activation))
        width = units
    st = SentenceTransformer(modules=modules + ([models.Normalize()] if normalize else []), device="cpu")
    st.save(str(directory))
    (directory / "README.md").unlink(missing_ok=True)  # the generated model card: not needed to load the model
    if legacy_pooling:
        config = next(directory.glob("*_Pooling/config.json"))
        cfg = json.loads(config.read_text())
        modes = cfg.pop("pooling_mode")
        modes = [modes] if isinstance(modes, str) else modes
        cfg.update({flag: mode in modes for flag, mode in LEGACY_POOLING_FLAGS.items()})
        config.write_text(json.dumps(cfg, indent=2) + "\n")
    shutil.rmtree(base)
    return SentenceTransformer(str(directory), device="cpu")


# sentence-transformers' Pooling flags before v6, in the order it concatenates their vectors
LEGACY_POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                        "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                        "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
# masks for the pooling modes that count positions: a full row, one real token, right-padded, left-padded, holes
POOLING_MASKS = np.array([[1] * 16, [1] + [0] * 15, [1] * 9 + [0] * 7, [0] * 5 + [1] * 11,
                          [1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 0, 0]], np.int32)


def masked_inputs(seed: int, mask: np.ndarray) -> dict[str, np.ndarray]:
    """As :func:`inputs`, for any 0/1 mask (SEQ columns): [CLS] at each row's first real token."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, len(VOCAB), size=mask.shape).astype(np.int32)
    ids[np.arange(len(mask)), mask.argmax(1)] = 2  # [CLS]
    types = (rng.integers(0, 2, size=mask.shape) * mask).astype(np.int32)
    positions = np.stack([rng.choice(np.flatnonzero(m), size=PREDICTIONS) for m in mask]).astype(np.int32)
    return {"input_word_ids": ids * mask, "input_mask": mask, "input_type_ids": types,
            "masked_lm_positions": positions}


def make_sentence_transformer(seed: int, name: str = "st_bert_mean_norm", pooling_mode="mean",
                              dense: tuple = (), normalize: bool = True, legacy_pooling: bool = False,
                              mask: np.ndarray | None = None) -> Path:
    """A sentence-transformers directory: BertModel -> ``pooling_mode`` pooling (a list: concatenated) -> a
    Dense module per (out_features, torch activation) of ``dense`` (LaBSE: cls, 768 -> 768 tanh, Normalize) ->
    Normalize; ``mask``: the reference inputs' mask (default: :func:`inputs`' three rows)."""
    directory = OUT / name
    fresh(directory)
    base = OUT / "_st_base"
    bert = make_bert("BertModel", seed)
    bert.save_pretrained(base, safe_serialization=True)
    save_tokenizer(base)
    st = save_sentence_transformer(base, directory, seed, pooling_mode, dense, normalize, legacy_pooling)
    x = inputs(seed) if mask is None else masked_inputs(seed, mask)
    features = {k: v for k, v in torch_inputs(x).items()}
    with torch.no_grad():
        emb = st(features)["sentence_embedding"].numpy()
    np.savez(directory / "reference.npz", **x, sentence_embedding=emb)
    return directory


CROSS_ENCODER_PAIRS = [["the cat sat on the mat", "a cat is on the mat"], ["the dog ran fast", "it was a big red car"],
                       ["a small blue house", "the house is small and blue"], ["it is slow", "the dog was fast"],
                       ["the cat", "the cat"]]


def make_cross_encoder(seed: int, name: str = "st_cross_encoder") -> Path:
    """A sentence-transformers CrossEncoder directory (v6: modules.json with one Transformer, the Sigmoid
    activation in config_sentence_transformers.json) of a one-label BertForSequenceClassification; reference:
    ``CrossEncoder.predict`` of :data:`CROSS_ENCODER_PAIRS` (text in, activated scores out) in pairs.json."""
    import json

    from sentence_transformers import CrossEncoder

    directory = OUT / name
    fresh(directory)
    base = OUT / "_ce_base"
    make_bert("BertForSequenceClassification", seed, num_labels=1).save_pretrained(base, safe_serialization=True)
    save_tokenizer(base)
    CrossEncoder(str(base), num_labels=1, max_length=SEQ, device="cpu").save(str(directory))
    (directory / "README.md").unlink(missing_ok=True)
    shutil.rmtree(base)
    scores = CrossEncoder(str(directory), device="cpu").predict(CROSS_ENCODER_PAIRS)
    (directory / "pairs.json").write_text(json.dumps({"pairs": CROSS_ENCODER_PAIRS,
                                                      "scores": [float(x) for x in scores]}, indent=1) + "\n")
    return directory


SEARCH_QUERIES = ["the cat sat", "what ran fast ?", "a big red car", "the house"]
SEARCH_DOCUMENTS = ["the cat sat on the mat .", "a dog ran fast on the road", "it was a big red car !", "the house",
                    "this tree is small , that tree is big", "cats and dogs", "the blue car", "the house"]


def semantic_search_reference(name: str = "st_bert_mean_norm") -> Path:
    """``util.semantic_search`` of :data:`SEARCH_QUERIES` over :data:`SEARCH_DOCUMENTS` (one twice) with the
    sentence-transformers fixture ``name`` as it is (its weights are not rewritten): every document's score with each
    query, best first, in search.json beside it; and the top 3. And quantized.npz: the queries' embeddings as
    ``quantize_embeddings`` writes them at each precision, int8 / uint8 calibrated on the documents'."""
    import json

    from sentence_transformers import SentenceTransformer, util

    directory = OUT / name
    model = SentenceTransformer(str(directory), device="cpu")
    q = model.encode(SEARCH_QUERIES, convert_to_tensor=True)
    d = model.encode(SEARCH_DOCUMENTS, convert_to_tensor=True)
    hits = {k: [[{"index": h["corpus_id"], "score": float(h["score"])} for h in row]
                for row in util.semantic_search(q, d, top_k=k)] for k in (len(SEARCH_DOCUMENTS), 3)}
    (directory / "search.json").write_text(json.dumps({"queries": SEARCH_QUERIES, "documents": SEARCH_DOCUMENTS,
                                                       "all": hits[len(SEARCH_DOCUMENTS)], "top_3": hits[3]},
                                                      indent=1) + "\n")
    # quantize_embeddings of the queries' embeddings, int8 / uint8 ranges from the documents' (calibration_embeddings)
    from sentence_transformers.util import quantize_embeddings

    queries, documents = q.numpy(), d.numpy()
    np.savez(directory / "quantized.npz", queries=queries, documents=documents,
             **{p: quantize_embeddings(queries, precision=p, calibration_embeddings=documents)
                for p in ("int8", "uint8", "binary", "ubinary")})
    return directory


FIXTURES = {
    "bert_model": lambda: write("bert_model", make_bert("BertModel", 1), "BertModel", 1, tokenizer=True),
    "bert_seq_cls": lambda: write("bert_seq_cls", make_bert("BertForSequenceClassification", 2, num_labels=3,
                                                             hidden_act="gelu_new"),
                                  "BertForSequenceClassification", 2),
    "bert_token_cls": lambda: write("bert_token_cls", make_bert("BertForTokenClassification", 3, num_labels=4,
                                                                 hidden_act="relu"),
                                    "BertForTokenClassification", 3),
    "bert_qa": lambda: write("bert_qa", make_bert("BertForQuestionAnswering", 4), "BertForQuestionAnswering", 4),
    # gelu_new: original BERT's (tanh) gelu, so that bert_tf1 can be written from these weights
    "bert_pretraining": lambda: write("bert_pretraining", make_bert("BertForPreTraining", 5, hidden_act="gelu_new"),
                                      "BertForPreTraining", 5, tokenizer=True),
    # what run_mlm.py saves (and many domain-adapted BERTs publish): the masked-LM head alone, no pooler, no
    # next-sentence head
    "bert_mlm": lambda: write("bert_mlm", make_bert("BertForMaskedLM", 15, hidden_act="relu"), "BertForMaskedLM", 15,
                              tokenizer=True),
    # the three rows as one question's three choices
    "bert_mc": lambda: write("bert_mc", make_bert("BertForMultipleChoice", 17, classifier_dropout=0.2), "BertForMultipleChoice",
                             17, tokenizer=True),
    "albert_mc": lambda: write("albert_mc", make_albert("AlbertForMultipleChoice", 18), "AlbertForMultipleChoice", 18),
    "albert_model": lambda: write("albert_model", make_albert("AlbertModel", 6), "AlbertModel", 6),
    "albert_mlm": lambda: write("albert_mlm", make_albert("AlbertForMaskedLM", 16), "AlbertForMaskedLM", 16),
    "albert_seq_cls": lambda: write("albert_seq_cls", make_albert("AlbertForSequenceClassification", 7,
                                                                   num_labels=2, classifier_dropout_prob=0.1),
                                    "AlbertForSequenceClassification", 7),
    "albert_pretraining": lambda: write("albert_pretraining", make_albert("AlbertForPreTraining", 8),
                                        "AlbertForPreTraining", 8),
    # a cross-encoder reranker (cross-encoder/ms-marco-MiniLM-L-6-v2's layout): one label, raw scores
    "bert_cross_encoder": lambda: write("bert_cross_encoder", make_bert(
        "BertForSequenceClassification", 11, num_labels=1,
        sbert_ce_default_activation_function="torch.nn.modules.linear.Identity"),
        "BertForSequenceClassification", 11, tokenizer=True),
    "st_cross_encoder": lambda: make_cross_encoder(12),
    "st_bert_mean_norm": lambda: make_sentence_transformer(9),
    # references for bertc run --rank and --embedding-precision (search.json, quantized.npz; the weights stay)
    "st_bert_mean_norm_search": lambda: semantic_search_reference("st_bert_mean_norm"),
    # LaBSE's layout (cls pooling, Dense + tanh, Normalize) with a second Dense (no activation) after it
    "st_bert_cls_dense_norm": lambda: make_sentence_transformer(
        10, "st_bert_cls_dense_norm", "cls", ((24, torch.nn.Tanh()), (12, torch.nn.Identity()))),
    # four pooling modes concatenated (the flags of sentence-transformers before v6), then Dense 64 -> 12 tanh;
    # rows left-padded and with holes: weightedmean counts from the first real token, lasttoken takes the last
    "st_bert_pooling_concat": lambda: make_sentence_transformer(
        13, "st_bert_pooling_concat", ["max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"],
        ((12, torch.nn.Tanh()),), legacy_pooling=True, mask=POOLING_MASKS),
    # last-token pooling alone (v6's pooling_mode), normalized
    "st_bert_lasttoken": lambda: make_sentence_transformer(14, "st_bert_lasttoken", "lasttoken", mask=POOLING_MASKS),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"fixtures to write (default all: {', '.join(FIXTURES)})")
    parser.add_argument("--verify", action="store_true", help="import + build each with bertc and compare backends")
    parser.add_argument("--bertc-python", default="/work/main/.venv/bin/python",
                        help="the Python that has bertc's dependencies (for --verify)")
    parser.add_argument("--size", choices=["tiny", "base"], default="tiny",
                        help="base: BERT-base dimensions, for a full-size proof (needs --out)")
    parser.add_argument("--out", type=Path, default=None, help="write here instead of tests/fixtures/hf")
    args = parser.parse_args()
    global OUT, noise
    if args.size == "base":
        if args.out is None:
            parser.error("--size base writes hundreds of MB per model: give --out DIR outside the repository")
        SMALL.update(BASE)
        noise = NOISE["base"]
    if args.out is not None:
        OUT = args.out
    torch.set_num_threads(1)
    for name in args.names or FIXTURES:
        path = FIXTURES[name]()
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        print(f"wrote {path} ({size / 1024:.0f} KiB)")
    if args.verify:
        cmd = [args.bertc_python, str(ROOT / "tools" / "verify_fixtures.py"), *[
            str(OUT / n) for n in (args.names or FIXTURES) if (OUT / n).is_dir()]]   # a reference alone: no folder
        return subprocess.call(cmd, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
