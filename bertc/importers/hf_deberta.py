"""Hugging Face DeBERTa-v2 / v3 (``model_type`` "deberta-v2": microsoft/deberta-v3-*, mdeberta-v3, deberta-v2-*).

``config.json`` becomes a scaffold encoder: a ``custom`` embedding (word embeddings; learned absolute positions
only with ``position_biased_input``; token types only with ``type_vocab_size`` > 0; layer norm), the
``disentangled`` position scheme (the encoder's shared ``rel_embeddings``, ``position_buckets`` log buckets,
``max_relative_positions`` resolved as transformers does, ``norm_rel_ebd``) and post-norm ``scaffold`` blocks of
``disentangled`` attention (``pos_att_type``, ``share_att_key``; scaled by sqrt(head_size * (1 + #terms))) and a
dense feedforward. Heads: ``ContextPooler`` + classifier (the first token, dense + ``pooler_hidden_act``), token
classification, question answering, masked LM (the v3 ``lm_predictions.lm_head``, which always reads the word
embeddings, and the legacy ``cls.predictions``, tied to them unless ``tie_word_embeddings`` is false).

What transformers would compute differently from that is refused, naming the key: ``relative_attention`` false,
the ``conv_kernel_size`` ConvLayer of deberta-v2-xlarge / xxlarge, an ``embedding_size`` other than hidden_size
(its bias-free ``embed_proj``), ``attention_head_size``, ``pooler_hidden_size``, degenerate bucket settings, and
``pos_att_type`` / ``norm_rel_ebd`` entries other than the ones transformers' DeBERTa-v2 computes.

Tensor names (``deberta.encoder.layer.0.attention.self.query_proj.weight``) map to bertc weight paths
(``layer_0/attention/query/kernel``); torch ``Linear`` weights are (out, in) and are transposed.
"""
from __future__ import annotations

from typing import Optional

from bertc.importers.hf import (layer_param, ConfigValues, HFFamily, _param, decoder_param, decoder_tied, num_labels,
                               refuse, register_family)
from bertc.weights import Ignored, Target

ARCHITECTURES = {"DebertaV2Model": None, "DebertaV2ForSequenceClassification": "classifier",
                 "DebertaV2ForTokenClassification": "token_classifier",
                 "DebertaV2ForQuestionAnswering": "span_labeler", "DebertaV2ForMultipleChoice": "multiple_choice",
                 "DebertaV2ForMaskedLM": "masked_lm"}
TERMS = ("c2p", "p2c")

# transformers' defaults when config.json leaves a key out (DebertaV2Config, and the modules' getattr defaults)
DEFAULTS = {"vocab_size": 128100, "hidden_size": 1536, "num_hidden_layers": 24, "num_attention_heads": 24,
            "intermediate_size": 6144, "relative_attention": False, "max_relative_positions": -1, "position_buckets": -1,
            "position_biased_input": True, "pos_att_type": None, "share_att_key": False, "norm_rel_ebd": "none",
            "type_vocab_size": 0, "layer_norm_eps": 1e-7, "hidden_act": "gelu", "pooler_hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512,
            "conv_kernel_size": 0, "legacy": True, "tie_word_embeddings": True, "initializer_range": 0.02}


def _get(cfg: dict, key: str):
    return cfg.get(key, DEFAULTS.get(key))


def pos_att_type(cfg: dict, where: str) -> list[str]:
    """The terms transformers computes: ``pos_att_type`` as a list or the "p2c|c2p" string of older configs."""
    value = _get(cfg, "pos_att_type")
    if value is None:
        return []
    items = [x.strip() for x in value.lower().split("|")] if isinstance(value, str) else value
    if not isinstance(items, list) or any(not isinstance(x, str) for x in items):
        refuse(where, "pos_att_type", value, "expected a list of 'c2p' / 'p2c' or a 'p2c|c2p' string")
    unknown = [x for x in items if x not in TERMS]
    if unknown:
        refuse(where, "pos_att_type", value, f"{unknown} is not a term transformers' DeBERTa-v2 computes (it "
                                             f"computes c2p and p2c; DeBERTa-v1's p2p is ignored there)")
    return [t for t in dict.fromkeys(items)]            # transformers counts each term once


def norm_rel_ebd(cfg: dict, where: str) -> str:
    value = _get(cfg, "norm_rel_ebd")
    parts = [x.strip() for x in str(value).lower().split("|")]
    unknown = [x for x in parts if x not in ("layer_norm", "none", "")]
    if unknown:
        refuse(where, "norm_rel_ebd", value, "bertc reads 'layer_norm' or 'none'")
    return "layer_norm" if "layer_norm" in parts else "none"


def encoder(cfg: dict, where: str, max_len: Optional[int] = None) -> dict:
    """The bertc encoder spec (a scaffold encoder) of a DeBERTa-v2/v3 config."""
    c = ConfigValues(cfg, where, DEFAULTS)
    hidden, heads = c.int("hidden_size", minimum=1), c.int("num_attention_heads", minimum=1)
    if not c.bool("relative_attention"):
        refuse(where, "relative_attention", _get(cfg, "relative_attention"),
               "bertc's DeBERTa computes disentangled (relative) attention")
    if (c.int("conv_kernel_size", nullable=True) or 0) > 0:
        refuse(where, "conv_kernel_size", cfg["conv_kernel_size"],
               "bertc has no DeBERTa ConvLayer (the convolution after the first layer)")
    if cfg.get("embedding_size", hidden) != hidden:
        refuse(where, "embedding_size", cfg["embedding_size"],
               f"differs from hidden_size {hidden}: bertc has no bias-free embed_proj")
    if hidden % heads == 0 and cfg.get("attention_head_size", hidden // heads) != hidden // heads:
        refuse(where, "attention_head_size", cfg["attention_head_size"],
               f"bertc's heads are hidden_size / num_attention_heads = {hidden // heads} wide")
    positions = c.int("max_position_embeddings", minimum=1)
    buckets = c.int("position_buckets")
    max_relative = c.int("max_relative_positions")
    resolved = max_relative if max_relative >= 1 else positions
    if buckets == 1:
        refuse(where, "position_buckets", buckets, "1 bucket divides by zero in transformers' log buckets")
    if buckets > 1 and resolved - 1 <= buckets // 2:
        key, value = ("max_relative_positions", max_relative) if max_relative >= 1 else \
            ("max_position_embeddings", positions)
        refuse(where, key, value, f"the log buckets need max_relative_positions - 1 > position_buckets / 2 "
                                  f"({buckets // 2}); transformers divides by log(<= 1) otherwise")
    eps = c.epsilon("layer_norm_eps")
    dropout = c.rate("hidden_dropout_prob")
    types = c.int("type_vocab_size", minimum=0, nullable=True) or 0
    biased = c.bool("position_biased_input")
    embedding = {"type": "custom", "vocab_size": c.int("vocab_size", minimum=1),
                 "max_sequence_length": min(positions, max_len) if max_len else positions,
                 "use_position_embeddings": biased, "use_layer_norm": True, "layer_norm_epsilon": eps,
                 "dropout_rate": dropout}
    if types > 0:
        embedding.update(use_type_embeddings=True, type_vocab_size=types)
    act = c.activation("hidden_act")
    return {
        "type": "scaffold", "hidden_size": hidden, "num_layers": c.int("num_hidden_layers", minimum=1),
        "layer_norm_epsilon": eps, "pooler": False,     # DeBERTa has none (its ContextPooler is the classifier's)
        # transformers initialises Linear / Embedding weights from N(0, initializer_range)
        "initializer": {"type": "normal", "stddev": c.stddev("initializer_range")},
        "embedding": embedding,
        # max_relative_positions resolved here: a shorter max_sequence_length must not change the buckets
        "position": {"type": "disentangled", "max_relative_positions": resolved,
                     "position_buckets": buckets if buckets > 0 else -1, "norm_rel_ebd": norm_rel_ebd(cfg, where),
                     "layer_norm_epsilon": eps},
        "hidden": {"type": "scaffold", "layer_norm_epsilon": eps, "dropout_rate": dropout,
                   "attention": {"type": "disentangled", "num_heads": heads,
                                 "dropout_rate": c.rate("attention_probs_dropout_prob"),
                                 "pos_att_type": pos_att_type(cfg, where),
                                 "share_att_key": c.bool("share_att_key")},
                   "feedforward": {"type": "dense", "intermediate_size": c.int("intermediate_size", minimum=1),
                                   "activation": act, "dropout_rate": dropout}},
    }


def head(cfg: dict, where: str, enc: dict, arch: str, names=()) -> Optional[dict]:
    """The bertc head spec of ``arch`` (one of :data:`ARCHITECTURES`)."""
    kind = ARCHITECTURES[arch]
    hidden = enc["hidden_size"]
    c = ConfigValues(cfg, where, DEFAULTS)
    dropout = c.rate("hidden_dropout_prob")
    if kind in ("classifier", "multiple_choice"):   # ContextPooler + classifier (one output a choice)
        if cfg.get("pooler_hidden_size", hidden) != hidden:
            refuse(where, "pooler_hidden_size", cfg["pooler_hidden_size"],
                   f"bertc's ContextPooler is hidden_size ({hidden}) wide")
        cls_dropout = c.rate("cls_dropout", None, nullable=True)
        classes = {"num_classes": num_labels(cfg, where)} if kind == "classifier" else {}
        return {"type": kind, **classes, "pooling": "first",
                "transform": {"activation": c.activation("pooler_hidden_act"),
                              "bias": True, "layer_norm": None},
                "dropout_rate": dropout if cls_dropout is None else cls_dropout}
    if kind == "token_classifier":
        return {"type": "token_classifier", "num_classes": num_labels(cfg, where), "dropout_rate": dropout}
    if kind == "span_labeler":
        if num_labels(cfg, where) != 2:
            refuse(where, "num_labels", num_labels(cfg, where), "a question-answering head has 2 outputs (start, end)")
        return {"type": "span_labeler"}
    if kind == "masked_lm":
        # the legacy head's decoder is a Linear of its own where tie_word_embeddings is false; v3's
        # lm_predictions multiplies by the word table whatever the config says
        own = c.bool("legacy") and not c.bool("tie_word_embeddings")
        return {"type": "masked_lm",
                "transform": {"activation": enc["hidden"]["feedforward"]["activation"], "bias": True,
                              "layer_norm": {"epsilon": enc["layer_norm_epsilon"], "bias": True}},
                "decoder_bias": True, **({"decoder_tied": False} if own else {})}
    return None


# --- tensor names -> bertc weight paths ----------------------------------------------------------------

_EMBEDDINGS = {"word_embeddings.weight": "embeddings/word_embeddings",
               "position_embeddings.weight": "embeddings/position_embeddings",
               "token_type_embeddings.weight": "embeddings/type_embeddings"}
_LAYER = {"attention.self.query_proj": ("linear", "attention/query"),
          "attention.self.key_proj": ("linear", "attention/key"),
          "attention.self.value_proj": ("linear", "attention/value"),
          "attention.self.pos_key_proj": ("linear", "attention/pos_key_proj"),
          "attention.self.pos_query_proj": ("linear", "attention/pos_query_proj"),
          "attention.output.dense": ("linear", "attention/attention_output"),
          "attention.output.LayerNorm": ("ln", "attention_layer_norm"),
          "intermediate.dense": ("linear", "feedforward/intermediate"),
          "output.dense": ("linear", "feedforward/output"),
          "output.LayerNorm": ("ln", "feedforward/output_layer_norm")}
_HEADS = {"pooler.dense": ("linear", "classifier_transform"),
          "qa_outputs": ("linear", "span_labeler"),
          # v3 masked LM (legacy false) and the legacy BERT-like one
          "lm_predictions.lm_head.dense": ("linear", "masked_lm/transform"),
          "lm_predictions.lm_head.LayerNorm": ("ln", "masked_lm/transform_layer_norm"),
          "cls.predictions.transform.dense": ("linear", "masked_lm/transform"),
          "cls.predictions.transform.LayerNorm": ("ln", "masked_lm/transform_layer_norm")}
_RTD = "the replaced-token-detection head of ELECTRA-style pretraining (mask_predictions): no task head of bertc's"


def _split(name: str) -> tuple[str, str]:
    stem, _, leaf = name.rpartition(".")
    return stem, leaf


def _encoder_param(rest: str, spec) -> Optional[Target]:
    """A tensor name without the ``deberta.`` prefix."""
    if rest == "embeddings.position_ids":
        return Ignored("buffer of position indices 0..N-1 (not a weight)")
    if rest.startswith("embeddings."):
        sub = rest[len("embeddings."):]
        if sub == "position_embeddings.weight" and not spec.encoder.embedding.use_position_embeddings:
            return Ignored("absolute position table of a model with position_biased_input false: transformers "
                           "does not read it either")
        if sub in _EMBEDDINGS:
            return Target(_EMBEDDINGS[sub])
        stem, leaf = _split(sub)
        return _param("ln", leaf, "embeddings/layer_norm") if stem == "LayerNorm" else None
    if rest == "encoder.rel_embeddings.weight":
        return Target("position/rel_embeddings")
    stem, leaf = _split(rest)
    if stem == "encoder.LayerNorm":
        return _param("ln", leaf, "position/rel_layer_norm")
    return layer_param(stem, leaf, "encoder.layer", _LAYER)


def _head_param(name: str, head: Optional[str], tied: bool = True) -> Optional[Target]:
    if name.startswith("mask_predictions."):
        return Ignored(_RTD)
    decoder = decoder_param(name, ("cls.predictions.decoder.weight",), ("lm_predictions.lm_head.bias", "cls.predictions.bias"),
                            ("cls.predictions.decoder.bias",), tied)
    if decoder is not None:
        return decoder
    stem, leaf = _split(name)
    if stem == "classifier":    # DebertaV2For{Sequence,Token}Classification both call it "classifier"
        return _param("linear", leaf, "token_classifier" if head == "token_classifier" else "classifier")
    if stem in _HEADS:
        kind, base = _HEADS[stem]
        return _param(kind, leaf, base)
    return None


def translate(name: str, spec) -> Optional[Target]:
    """A DeBERTa checkpoint tensor name -> its bertc weight path (Target), Ignored with the reason, or None."""
    head_type = spec.head.type if spec.head is not None else None
    if name.startswith("deberta."):
        return _encoder_param(name[len("deberta."):], spec)
    return _encoder_param(name, spec) or _head_param(name, head_type, decoder_tied(spec))


class Deberta(HFFamily):
    model_types = ("deberta-v2",)
    architectures = ARCHITECTURES
    base_architecture = "DebertaV2Model"
    defaults = DEFAULTS

    def encoder(self, cfg, where, max_len):
        return encoder(cfg, where, max_len)

    def head(self, cfg, where, enc, arch, names=()):
        return head(cfg, where, enc, arch, names)

    def translate(self, name, spec):
        return translate(name, spec)


register_family(Deberta())
