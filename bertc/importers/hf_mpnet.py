"""Hugging Face MPNet (``model_type`` mpnet), and sentence-transformers models on it (all-mpnet-base-v2).

MPNet's encoder: word + learned absolute position embeddings (no token types) and their layer norm, BERT's
post-norm blocks, and one table of learned relative-position biases (``encoder.relative_attention_bias``,
(buckets, heads)) shared by every layer and added to each attention's scaled logits. bertc writes it as a
``scaffold`` encoder with a ``custom`` embedding network, ``transformer`` blocks and the ``relative_bias``
position scheme, whose ``absolute`` part numbers the positions as RoBERTa does (offset 2 = padding_idx + 1,
``from_ids``).

What transformers' ``MPNetModel`` computes, and bertc with it:
- ``MPNetEmbeddings`` hard-codes ``padding_idx = 1``: positions ``cumsum(ids != 1) * (ids != 1) + 1``,
  whatever ``pad_token_id`` and the mask say; bertc computes the same (``from_ids``, offset 2), a real token
  with id 1 (the text "<pad>") included. A config whose ``pad_token_id`` is not 1 is refused (its padding
  would not be what the position ids skip).
- ``MPNetEncoder.compute_position_bias`` buckets ``key - query`` positions 0..S-1 (not the padding-aware
  ids: a row with holes does not equal its right-padded form, in transformers either) with
  ``relative_position_bucket(num_buckets=32, max_distance=128)``, the number 32 fixed by the call whatever
  ``relative_attention_num_buckets`` says; bertc's ``relative_buckets`` is that formula (the same float32
  operations, checked against torch for every distance below 1200). A config with another number of buckets
  is refused: transformers would index a table of that size with 32 buckets.
- Attention adds the bias after scaling by 1 / sqrt(head size), then the mask: bertc adds (mask bias +
  position bias) to the scaled logits.

Heads: ``MPNetClassificationHead`` (dense + tanh + ``out_proj`` over ``<s>``, as RoBERTa's), token
classification, question answering, ``MPNetLMHead`` (dense, exact GELU, layer norm, tied decoder + bias; its own
decoder with ``tie_word_embeddings`` false).
"""
from __future__ import annotations


from bertc.importers.hf import (layer_param, _BERT_LAYER, _BUFFERS, BERT_DEFAULTS, ConfigValues, HFFamily, _param, _split,
                                decoder_tied, head_from_config, refuse, register_family)
from bertc.importers.hf_roberta import (check_config, first_token_classifier, head_param, head_type, masked_lm_head,
                                        strip_prefix)
from bertc.weights import Ignored, Target

PADDING_IDX = 1       # MPNetEmbeddings.padding_idx
# MPNetConfig's defaults, for the keys config.json leaves out
DEFAULTS = {**BERT_DEFAULTS, "vocab_size": 30527, "relative_attention_num_buckets": 32, "pad_token_id": 1}
BUCKETS, MAX_DISTANCE = 32, 128   # MPNetEncoder.compute_position_bias / relative_position_bucket

_LAYER = {"attention.attn.q": ("linear", "attention/query"), "attention.attn.k": ("linear", "attention/key"),
          "attention.attn.v": ("linear", "attention/value"), "attention.attn.o": ("linear", "attention/attention_output"),
          "attention.LayerNorm": ("ln", "attention_layer_norm"),
          **{k: v for k, v in _BERT_LAYER.items() if k.startswith(("intermediate.", "output."))}}
_EMBEDDINGS = {"embeddings.word_embeddings.weight": "embeddings/word_embeddings",
               "embeddings.position_embeddings.weight": "embeddings/position_embeddings",
               "encoder.relative_attention_bias.weight": "position/relative_attention_bias"}


def encoder_param(rest: str):
    """A tensor name without ``mpnet.``."""
    if rest in _BUFFERS:
        return Ignored(_BUFFERS[rest])
    if rest in _EMBEDDINGS:
        return Target(_EMBEDDINGS[rest])
    stem, leaf = _split(rest)
    if stem == "embeddings.LayerNorm":
        return _param("ln", leaf, "embeddings/layer_norm")
    if stem == "pooler.dense":
        return _param("linear", leaf, "pooler")
    return layer_param(stem, leaf, "encoder.layer", _LAYER)


class MPNet(HFFamily):
    model_types = ("mpnet",)
    architectures = {"MPNetModel": None, "MPNetForSequenceClassification": "classifier",
                     "MPNetForTokenClassification": "token_classifier", "MPNetForQuestionAnswering": "span_labeler",
                     "MPNetForMultipleChoice": "multiple_choice", "MPNetForMaskedLM": "masked_lm"}
    base_architecture = "MPNetModel"
    defaults = DEFAULTS

    def encoder(self, cfg, where, max_len):
        check_config(cfg, where, [], {"relative_attention_num_buckets": BUCKETS, "pad_token_id": PADDING_IDX})
        c = ConfigValues(cfg, where, DEFAULTS)
        offset = PADDING_IDX + 1
        rows = c.int("max_position_embeddings", minimum=1)
        if rows <= offset:
            refuse(where, "max_position_embeddings", rows, f"leaves no position after MPNet's offset {offset}")
        positions = rows - offset
        dropout = c.rate("hidden_dropout_prob")
        eps = c.epsilon("layer_norm_eps")
        return {"type": "scaffold", "hidden_size": c.int("hidden_size", minimum=1),
                "num_layers": c.int("num_hidden_layers", minimum=1),
                "embedding": {"type": "custom", "vocab_size": c.int("vocab_size", minimum=1),
                              "max_sequence_length": min(positions, max_len) if max_len else positions,
                              "use_position_embeddings": True, "use_layer_norm": True, "dropout_rate": dropout,
                              "layer_norm_epsilon": eps},
                "hidden": {"type": "transformer", "num_attention_heads": c.int("num_attention_heads", minimum=1),
                           "intermediate_size": c.int("intermediate_size", minimum=1),
                           "activation": c.activation("hidden_act"),
                           "dropout_rate": dropout,
                           "attention_dropout_rate": c.rate("attention_probs_dropout_prob"),
                           "layer_norm_epsilon": eps},
                "position": {"type": "relative_bias", "num_buckets": BUCKETS, "max_distance": MAX_DISTANCE,
                             "bidirectional": True, "absolute": {"type": "absolute", "offset": offset, "from_ids": True}},
                "initializer": {"type": "normal", "stddev": c.stddev("initializer_range")},
                "layer_norm_epsilon": eps}

    def head(self, cfg, where, enc, arch, names=()):
        kind = self.architectures[arch]
        if kind == "masked_lm":     # MPNetLMHead: transformers' gelu (exact), whatever hidden_act says
            return masked_lm_head("gelu", enc["hidden"]["layer_norm_epsilon"], cfg, where)
        head = head_from_config(cfg, where, enc, arch, self, names)
        return first_token_classifier(head, "tanh") if kind == "classifier" else head

    def translate(self, name, spec):
        rest = strip_prefix(name, "mpnet.")
        if rest is not None:
            return encoder_param(rest)
        return encoder_param(name) or head_param(name, head_type(spec), decoder_tied(spec))


register_family(MPNet())
