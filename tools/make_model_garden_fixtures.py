"""Tiny Model Garden checkpoints (random weights) with reference outputs computed by Model Garden.

Runs in an environment with tf-models-official and tf-keras (not bertc's):

    TF_USE_LEGACY_KERAS=1 /work/envs/mg/bin/python tools/make_model_garden_fixtures.py

Writes tests/fixtures/model_garden/<name>/: an object-based checkpoint (``tf.train.Checkpoint(model=...)
.save``: ckpt-1.index, ckpt-1.data-*, checkpoint) and reference.npz (the inputs, and Model Garden's
outputs under bertc's output names). Every variable is perturbed away from its initial value (ReZero's
alpha away from 0, layer-norm gammas away from 1), so a misplaced tensor changes the outputs.
The seed encoders (BertEncoder, AlbertEncoder, EncoderScaffold with talking-heads attention + gated
feedforward, EncoderScaffold with ReZero blocks) and task models (BertClassifier, BertSpanLabeler,
BertPretrainer) of the notebooks are covered.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from official.modeling import activations  # noqa: E402
from official.nlp.modeling import layers, models, networks  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "model_garden"
VOCAB, HIDDEN, HEADS, INTER, SEQ, LAYERS = 40, 16, 2, 32, 16, 2
LENGTHS, PREDICTIONS = [16, 1, 9], 4
INIT = tf.keras.initializers.TruncatedNormal(stddev=0.02)


def inputs(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = (np.arange(SEQ)[None, :] < np.array(LENGTHS)[:, None]).astype(np.int32)
    ids = (rng.integers(1, VOCAB, size=(len(LENGTHS), SEQ)) * mask).astype(np.int32)
    types = (rng.integers(0, 2, size=ids.shape) * mask).astype(np.int32)
    positions = np.stack([rng.integers(0, n, size=PREDICTIONS) for n in LENGTHS]).astype(np.int32)
    return {"input_word_ids": ids, "input_mask": mask, "input_type_ids": types, "masked_lm_positions": positions}


def perturb(model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for v in sorted(model.variables, key=lambda v: v.name):
        v.assign(v.numpy() + rng.normal(0.0, 0.1, size=v.shape).astype(np.float32))


def bert_encoder():
    return networks.BertEncoder(vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=LAYERS, num_attention_heads=HEADS,
                                inner_dim=INTER, max_sequence_length=SEQ, type_vocab_size=2)


def scaffold(hidden_cls, **hidden_extra):
    cfg = dict(num_attention_heads=HEADS, intermediate_size=INTER, intermediate_activation=activations.gelu,
               dropout_rate=0.1, attention_dropout_rate=0.1, kernel_initializer=INIT, **hidden_extra)
    if hidden_cls is layers.ReZeroTransformer:
        cfg = dict(num_attention_heads=HEADS, inner_dim=INTER, inner_activation=activations.gelu,
                   dropout_rate=0.1, attention_dropout_rate=0.1, kernel_initializer=INIT)
    embedding = dict(vocab_size=VOCAB, type_vocab_size=2, hidden_size=HIDDEN, seq_length=SEQ, max_seq_length=SEQ,
                     initializer=INIT, dropout_rate=0.1)
    return networks.EncoderScaffold(pooled_output_dim=HIDDEN, pooler_layer_initializer=INIT,
                                    num_hidden_instances=LAYERS, hidden_cls=hidden_cls, hidden_cfg=cfg,
                                    embedding_cfg=embedding, dict_outputs=True)


def encoder_outputs(out) -> dict:
    if isinstance(out, dict):
        return {"sequence_output": out["sequence_output"], "pooled_output": out["pooled_output"]}
    return {"sequence_output": out[0], "pooled_output": out[1]}


def make(name: str, seed: int, model, call, config: dict | None = None) -> Path:
    x = inputs(seed)
    feed = {k: x[k] for k in ("input_word_ids", "input_mask", "input_type_ids")}
    call(model, {**feed, "masked_lm_positions": x["masked_lm_positions"]})  # build
    perturb(model, seed)
    outputs = {k: np.asarray(v) for k, v in call(model, {**feed, "masked_lm_positions": x["masked_lm_positions"]}).items()}
    directory = OUT / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    tf.train.Checkpoint(model=model).save(str(directory / "ckpt"))
    if config:
        (directory / "encoder_config.json").write_text(json.dumps(config, indent=2) + "\n")
    np.savez(directory / "reference.npz", **x, **outputs)
    size = sum(p.stat().st_size for p in directory.iterdir())
    print(f"wrote {directory.relative_to(ROOT)} ({size / 1024:.0f} KiB): {sorted(outputs)}")
    return directory


def encoder_call(model, x):
    feed = {k: x[k] for k in ("input_word_ids", "input_mask", "input_type_ids")}
    return encoder_outputs(model(feed, training=False))


def classifier_call(model, x):
    out = model({k: x[k] for k in ("input_word_ids", "input_mask", "input_type_ids")}, training=False)
    return {"logits": out["logits"] if isinstance(out, dict) else out}


def span_call(model, x):
    out = model({k: x[k] for k in ("input_word_ids", "input_mask", "input_type_ids")}, training=False)
    start, end = (out["start_logits"], out["end_logits"]) if isinstance(out, dict) else out
    return {"start_logits": start, "end_logits": end}


def pretrainer_call(model, x):
    out = model(x, training=False)
    return {"masked_lm": out["masked_lm"], "classification": out["classification"]}


FIXTURES = {
    "bert_encoder": lambda: make("bert_encoder", 11, bert_encoder(), encoder_call),
    "albert_encoder": lambda: make(
        "albert_encoder", 12,
        networks.AlbertEncoder(vocab_size=VOCAB, embedding_width=8, hidden_size=HIDDEN, num_layers=LAYERS,
                               num_attention_heads=HEADS, intermediate_size=INTER, max_sequence_length=SEQ,
                               type_vocab_size=2),
        encoder_call, config={"type": "albert", "albert": {"num_layers": LAYERS, "hidden_activation": "gelu"}}),
    "scaffold_talking_gated": lambda: make(
        "scaffold_talking_gated", 13,
        scaffold(layers.TransformerScaffold, attention_cls=layers.TalkingHeadsAttention,
                 feedforward_cls=layers.GatedFeedforward), encoder_call),
    "scaffold_rezero": lambda: make("scaffold_rezero", 14, scaffold(layers.ReZeroTransformer), encoder_call),
    "bert_classifier": lambda: make("bert_classifier", 15, models.BertClassifier(bert_encoder(), num_classes=3),
                                    classifier_call),
    "bert_span_labeler": lambda: make("bert_span_labeler", 16, models.BertSpanLabeler(bert_encoder()), span_call),
    "bert_pretrainer": lambda: make(
        "bert_pretrainer", 17,
        models.BertPretrainer(bert_encoder(), num_classes=2, num_token_predictions=PREDICTIONS,
                              activation=activations.gelu, output="logits"),
        pretrainer_call),
}


def main(argv) -> int:
    for name in argv or FIXTURES:
        FIXTURES[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
