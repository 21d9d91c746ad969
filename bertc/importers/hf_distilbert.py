"""Hugging Face DistilBERT (``model_type`` distilbert).

The encoder is a ``scaffold`` one: a ``custom`` embedding network with word and position embeddings and its
layer norm but no token types (the model's inputs are ``input_word_ids`` and ``input_mask``), BERT's
post-norm ``transformer`` blocks, no pooler (the encoder alone outputs ``sequence_output`` only). Every
layer norm has epsilon 1e-12 (hard-coded by transformers). A ``sinusoidal_pos_embds`` model stores its
sinusoidal table as ``position_embeddings.weight``: bertc reads it as a learned table, exactly.

Tensor names: ``distilbert.embeddings.*``, ``distilbert.transformer.layer.N.attention.{q,k,v,out}_lin``,
``sa_layer_norm``, ``ffn.lin1`` / ``ffn.lin2``, ``output_layer_norm``. Heads: ``pre_classifier`` + ReLU +
``classifier`` over the first token (a ``classifier`` with ``pooling: first`` and a relu ``transform``),
token classification (``classifier``), question answering (``qa_outputs``), masked LM (``vocab_transform``,
the config's activation, ``vocab_layer_norm``, ``vocab_projector`` tied to the word embeddings, or its own with
``tie_word_embeddings`` false).
"""
from __future__ import annotations


from bertc.importers.hf import (decoder_param, decoder_tied, layer_param, _BUFFERS, ConfigValues, HFFamily, _param,
                                _split, head_from_config, num_labels, register_family)
from bertc.importers.hf_roberta import check_config, first_token_classifier, masked_lm_head, strip_prefix
from bertc.weights import Ignored, Target

EPSILON = 1e-12   # DistilBERT's layer norms, whatever the config says

# DistilBertConfig's defaults, for the keys config.json leaves out
DEFAULTS = {"vocab_size": 30522, "max_position_embeddings": 512, "n_layers": 6, "n_heads": 12, "dim": 768,
            "hidden_dim": 4 * 768, "dropout": 0.1, "attention_dropout": 0.1, "activation": "gelu",
            "initializer_range": 0.02, "qa_dropout": 0.1, "seq_classif_dropout": 0.2}

_LAYER = {"attention.q_lin": ("linear", "attention/query"), "attention.k_lin": ("linear", "attention/key"),
          "attention.v_lin": ("linear", "attention/value"), "attention.out_lin": ("linear", "attention/attention_output"),
          "sa_layer_norm": ("ln", "attention_layer_norm"), "ffn.lin1": ("linear", "feedforward/intermediate"),
          "ffn.lin2": ("linear", "feedforward/output"), "output_layer_norm": ("ln", "feedforward/output_layer_norm")}
_EMBEDDINGS = {"embeddings.word_embeddings.weight": "embeddings/word_embeddings",
               "embeddings.position_embeddings.weight": "embeddings/position_embeddings"}
_HEAD = {"pre_classifier": ("linear", "classifier_transform"), "qa_outputs": ("linear", "span_labeler"),
         "vocab_transform": ("linear", "masked_lm/transform"), "vocab_layer_norm": ("ln", "masked_lm/transform_layer_norm")}


def encoder_param(rest: str):
    """A tensor name without ``distilbert.``."""
    if rest in _BUFFERS:
        return Ignored(_BUFFERS[rest])
    if rest in _EMBEDDINGS:
        return Target(_EMBEDDINGS[rest])
    stem, leaf = _split(rest)
    if stem == "embeddings.LayerNorm":
        return _param("ln", leaf, "embeddings/layer_norm")
    return layer_param(stem, leaf, "transformer.layer", _LAYER)


class DistilBert(HFFamily):
    model_types = ("distilbert",)
    architectures = {"DistilBertModel": None, "DistilBertForSequenceClassification": "classifier",
                     "DistilBertForTokenClassification": "token_classifier",
                     "DistilBertForQuestionAnswering": "span_labeler", "DistilBertForMultipleChoice": "multiple_choice",
                     "DistilBertForMaskedLM": "masked_lm"}
    base_architecture = "DistilBertModel"
    defaults = DEFAULTS

    def encoder(self, cfg, where, max_len):
        check_config(cfg, where, [], {})
        c = ConfigValues(cfg, where, DEFAULTS)
        positions = c.int("max_position_embeddings", minimum=1)
        dropout = c.rate("dropout")
        return {"type": "scaffold", "hidden_size": c.int("dim", minimum=1), "num_layers": c.int("n_layers", minimum=1),
                "pooler": False,
                "embedding": {"type": "custom", "vocab_size": c.int("vocab_size", minimum=1),
                              "max_sequence_length": min(positions, max_len) if max_len else positions,
                              "use_position_embeddings": True, "use_layer_norm": True, "dropout_rate": dropout,
                              "layer_norm_epsilon": EPSILON},
                "hidden": {"type": "transformer", "num_attention_heads": c.int("n_heads", minimum=1),
                           "intermediate_size": c.int("hidden_dim", minimum=1),
                           "activation": c.activation("activation"),
                           "dropout_rate": dropout, "attention_dropout_rate": c.rate("attention_dropout"),
                           "layer_norm_epsilon": EPSILON},
                "initializer": {"type": "normal", "stddev": c.stddev("initializer_range")},
                "layer_norm_epsilon": EPSILON}

    def has_pooler(self, names) -> bool:
        return True     # the encoder alone has none and outputs sequence_output only

    def head(self, cfg, where, enc, arch, names=()):
        kind = self.architectures[arch]
        c = ConfigValues(cfg, where, DEFAULTS)
        if kind == "masked_lm":
            return masked_lm_head(enc["hidden"]["activation"], EPSILON, cfg, where)
        if kind == "span_labeler":
            return head_from_config(cfg, where, enc, arch, self, names)
        if kind == "multiple_choice":   # DistilBertForMultipleChoice: the sequence classifier's layers, one output
            return first_token_classifier({"type": kind, "dropout_rate": c.rate("seq_classif_dropout")},
                                          "relu")
        if kind is None:
            return None
        dropout = c.rate("seq_classif_dropout" if kind == "classifier" else "dropout")
        head = {"type": kind, "num_classes": num_labels(cfg, where), "dropout_rate": dropout}
        return first_token_classifier(head, "relu") if kind == "classifier" else head

    def translate(self, name, spec):
        rest = strip_prefix(name, "distilbert.")
        if rest is not None:
            return encoder_param(rest)
        found = encoder_param(name)     # DistilBertModel saved alone
        if found is not None:
            return found
        stem, leaf = _split(name)
        if stem == "classifier":        # the sequence classifier's output layer, or the token classifier
            head = spec.head.type if spec.head is not None else None
            return _param("linear", leaf, "token_classifier" if head == "token_classifier" else "classifier")
        if stem in _HEAD:
            kind, path = _HEAD[stem]
            return _param(kind, leaf, path)
        return decoder_param(name, ("vocab_projector.weight",), ("vocab_projector.bias",), tied=decoder_tied(spec))


register_family(DistilBert())
