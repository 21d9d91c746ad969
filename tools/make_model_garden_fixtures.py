"""Tiny Model Garden checkpoints (random weights) with reference outputs computed by Model Garden.

Runs in an environment with tf-models-official and tf-keras (not bertc's):

    TF_USE_LEGACY_KERAS=1 /work/envs/mg/bin/python tools/make_model_garden_fixtures.py

Writes tests/fixtures/model_garden/<name>/: an object-based checkpoint (``tf.train.Checkpoint(model=...)
.save``: ckpt-1.index, ckpt-1.data-*, checkpoint) and reference.npz (the inputs, and Model Garden's
outputs under bertc's output names). Every variable is perturbed away from its initial value (ReZero's
alpha away from 0, layer-norm gammas away from 1), so a misplaced tensor changes the outputs.
The seed encoders (BertEncoder, AlbertEncoder, EncoderScaffold with talking-heads attention + gated
feedforward, EncoderScaffold with ReZero blocks) and task models (BertClassifier, BertSpanLabeler,
BertPretrainer with its default activation=None) of the notebooks are covered, and the variations
tests/test_model_garden_import.py imports: an AlbertEncoder with embedding_width == hidden_size (no projection),
a 2-class BertTokenClassifier, TransformerScaffold sub-layers from an explicit attention_cfg / feedforward_cfg
(named by their class), EncoderScaffold(layer_norm_before_pooling=True), BertEncoder(norm_first=True),
BertEncoder(embedding_width < hidden_size), the customize_encoder notebook's custom embedding network (word
embeddings only, two inputs), and a BertPretrainerV2 (which bertc refuses).

One fixture or several: ``... make_model_garden_fixtures.py bert_norm_first scaffold_custom_embedding``. Each
is made in a process of its own (Keras numbers the blocks of an EncoderScaffold by the layers created before
them, and a fixture must not depend on which others were made with it).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
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


def bert_encoder(**extra):
    return networks.BertEncoder(vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=LAYERS, num_attention_heads=HEADS,
                                inner_dim=INTER, max_sequence_length=SEQ, type_vocab_size=2, **extra)


def scaffold(hidden_cls, encoder_extra=None, **hidden_extra):
    cfg = dict(num_attention_heads=HEADS, intermediate_size=INTER, intermediate_activation=activations.gelu,
               dropout_rate=0.1, attention_dropout_rate=0.1, kernel_initializer=INIT, **hidden_extra)
    if hidden_cls is layers.ReZeroTransformer:
        cfg = dict(num_attention_heads=HEADS, inner_dim=INTER, inner_activation=activations.gelu,
                   dropout_rate=0.1, attention_dropout_rate=0.1, kernel_initializer=INIT)
    embedding = dict(vocab_size=VOCAB, type_vocab_size=2, hidden_size=HIDDEN, seq_length=SEQ, max_seq_length=SEQ,
                     initializer=INIT, dropout_rate=0.1)
    return networks.EncoderScaffold(pooled_output_dim=HIDDEN, pooler_layer_initializer=INIT,
                                    num_hidden_instances=LAYERS, hidden_cls=hidden_cls, hidden_cfg=cfg,
                                    embedding_cfg=embedding, dict_outputs=True, **(encoder_extra or {}))


def explicit_cfgs():
    """TransformerScaffold with an explicit attention_cfg (talking heads) and feedforward_cfg (GatedFeedforward,
    two blocks, no gate): the sub-layers take their class's name (talking_heads_attention/, gated_feedforward/)."""
    return scaffold(layers.TransformerScaffold, attention_cls=layers.TalkingHeadsAttention,
                    attention_cfg=dict(num_heads=HEADS, key_dim=HIDDEN // HEADS, dropout=0.1, kernel_initializer=INIT),
                    feedforward_cls=layers.GatedFeedforward,
                    feedforward_cfg=dict(inner_dim=INTER, inner_activation=activations.gelu, dropout=0.1,
                                         use_gate=False, num_blocks=2, kernel_initializer=INIT))


def attention_cfg_final_norm():
    """TransformerScaffold with an explicit attention_cfg of the default attention class (multi_head_attention/),
    in an EncoderScaffold(layer_norm_before_pooling=True) (final_layer_norm/)."""
    return scaffold(layers.TransformerScaffold, encoder_extra=dict(layer_norm_before_pooling=True),
                    attention_cfg=dict(num_heads=HEADS, key_dim=HIDDEN // HEADS, dropout=0.1, kernel_initializer=INIT))


def custom_embedding_scaffold():
    """The customize_encoder notebook's custom embedding network: word embeddings and the attention mask, two
    inputs (input_word_ids, input_mask), no position or type embeddings, no layer norm."""
    word_ids = tf.keras.layers.Input(shape=(SEQ,), dtype=tf.int32, name="input_word_ids")
    mask = tf.keras.layers.Input(shape=(SEQ,), dtype=tf.int32, name="input_mask")
    embedding = layers.OnDeviceEmbedding(vocab_size=VOCAB, embedding_width=HIDDEN, initializer=INIT,
                                         name="word_embeddings")
    x = embedding(word_ids)
    network = tf.keras.Model([word_ids, mask], [x, layers.SelfAttentionMask()([x, mask])])
    cfg = dict(num_attention_heads=HEADS, intermediate_size=INTER, intermediate_activation=activations.gelu,
               dropout_rate=0.1, attention_dropout_rate=0.1, kernel_initializer=INIT)
    return networks.EncoderScaffold(pooled_output_dim=HIDDEN, pooler_layer_initializer=INIT,
                                    num_hidden_instances=LAYERS, hidden_cls=layers.Transformer, hidden_cfg=cfg,
                                    embedding_cls=network, embedding_data=embedding.embeddings, dict_outputs=True)


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


def two_input_encoder_call(model, x):
    return encoder_outputs(model([x["input_word_ids"], x["input_mask"]], training=False))


def token_call(model, x):
    out = model({k: x[k] for k in ("input_word_ids", "input_mask", "input_type_ids")}, training=False)
    return {"logits": out["logits"] if isinstance(out, dict) else out}


def pretrainer_v2_call(model, x):
    out = model(x, training=False)
    return {"mlm_logits": out["mlm_logits"], "next_sentence": out["next_sentence"]}


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
        # BertPretrainer's default activation=None: a linear masked-LM transform
        models.BertPretrainer(bert_encoder(), num_classes=2, num_token_predictions=PREDICTIONS, output="logits"),
        pretrainer_call),
    "albert_width_eq_hidden": lambda: make(
        "albert_width_eq_hidden", 18,
        networks.AlbertEncoder(vocab_size=VOCAB, embedding_width=HIDDEN, hidden_size=HIDDEN, num_layers=LAYERS,
                               num_attention_heads=HEADS, intermediate_size=INTER, max_sequence_length=SEQ,
                               type_vocab_size=2),
        encoder_call, config={"type": "albert", "albert": {"num_layers": LAYERS, "hidden_activation": "gelu"}}),
    "bert_token_classifier_2": lambda: make(
        "bert_token_classifier_2", 19, models.BertTokenClassifier(bert_encoder(), num_classes=2), token_call),
    "scaffold_explicit_cfgs": lambda: make("scaffold_explicit_cfgs", 20, explicit_cfgs(), encoder_call),
    "scaffold_attention_cfg_final_norm": lambda: make(
        "scaffold_attention_cfg_final_norm", 21, attention_cfg_final_norm(), encoder_call),
    "bert_norm_first": lambda: make("bert_norm_first", 22, bert_encoder(norm_first=True), encoder_call,
                                    config={"type": "bert", "bert": {"norm_first": True}}),
    "bert_embedding_width": lambda: make("bert_embedding_width", 23, bert_encoder(embedding_width=8), encoder_call),
    "scaffold_custom_embedding": lambda: make(
        "scaffold_custom_embedding", 24, custom_embedding_scaffold(), two_input_encoder_call),
    "bert_pretrainer_v2": lambda: make(
        "bert_pretrainer_v2", 25,
        models.BertPretrainerV2(bert_encoder(), classification_heads=[
            layers.ClassificationHead(inner_dim=HIDDEN, num_classes=2, name="next_sentence")]),
        pretrainer_v2_call),
}


def main(argv) -> int:
    names = argv or list(FIXTURES)
    unknown = sorted(set(names) - set(FIXTURES))
    if unknown:
        print(f"unknown fixture(s) {unknown}; known: {sorted(FIXTURES)}", file=sys.stderr)
        return 2
    if len(names) == 1:
        # the initial weights too (the perturbation is seeded per fixture): a rerun makes the same fixture
        tf.keras.utils.set_random_seed(0)
        FIXTURES[names[0]]()
        return 0
    for name in names:   # each in a fresh process: Keras' layer numbering must not depend on the others
        subprocess.run([sys.executable, __file__, name], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
