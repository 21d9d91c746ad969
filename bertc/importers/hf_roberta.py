"""Hugging Face RoBERTa, XLM-RoBERTa and CamemBERT (``model_type`` roberta / xlm-roberta / camembert).

The encoder is BERT's with two differences bertc expresses in the ``bert`` encoder spec: learned absolute
positions offset by ``padding_idx + 1`` (``pad_token_id + 1``; the table has ``max_position_embeddings`` rows,
so ``max_sequence_length`` is ``max_position_embeddings - pad_token_id - 1``), numbered from the ids as
transformers numbers them (``from_ids``: ``cumsum(ids != pad) * (ids != pad) + pad``, whatever the mask says:
a real token with the pad id, the text "<pad>", reads row ``pad`` and the later ones shift down; a row with
holes in its mask, holding the pad id, equals its right-padded form), and a type vocabulary of 1. Tensor
names are BERT's under ``roberta.``.

Heads: ``RobertaClassificationHead`` (dense + tanh + ``out_proj`` over ``<s>``) is a ``classifier`` with
``pooling: first`` and a tanh ``transform``; ``RobertaLMHead`` (dense, exact GELU, layer norm, the decoder
tied to the word embeddings plus ``lm_head.bias``; with ``tie_word_embeddings`` false its own decoder and bias)
is ``masked_lm``; token classification and question answering are BERT's.

The helpers here (:func:`check_config`, :func:`first_token_classifier`, :func:`masked_lm_head`,
:data:`CLASSIFICATION_HEAD`) serve the other RoBERTa-like families too (MPNet, ELECTRA, DistilBERT).
"""
from __future__ import annotations

import json
from typing import Optional

from bertc.importers.hf import (BERT_DEFAULTS, ConfigValues, HFFamily, decoder_param, decoder_tied, _encoder_param,
                                _param, _split, encoder_from_config, head_from_config, refuse, register_family,
                                tie_word_embeddings)
from bertc.weights import Target


def check_config(cfg: dict, where: str, required: list, exact: dict) -> None:
    """Refuse what bertc cannot compute (``exact``: key -> the only value bertc computes; absent keys
    pass) and name the keys ``required`` that are missing (keys without a default in transformers' config
    class; a key with one takes it, read by :class:`bertc.importers.hf.ConfigValues`)."""
    from bertc.errors import WeightsError

    for key, ok in exact.items():
        if key in cfg and cfg[key] != ok:
            refuse(where, key, cfg[key], f"bertc computes only {key} = {json.dumps(ok)}")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise WeightsError(f"{where}: missing config keys {missing}")


NOT_A_DECODER = {"position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False}


def first_token_classifier(head: dict, activation: str) -> dict:
    """BERT's classifier spec as the RoBERTa-style heads compute it: dense + ``activation`` over the first
    token (no pooler), then dropout and the output projection."""
    return {**head, "pooling": "first", "transform": {"activation": activation}}


def masked_lm_head(activation: str, epsilon: float, cfg: dict, where: str) -> dict:
    """A LM head of dense + ``activation`` + layer norm, then the decoder (its own where the config's
    ``tie_word_embeddings`` is false)."""
    return {"type": "masked_lm", "transform": {"activation": activation, "layer_norm": {"epsilon": epsilon}},
            **tie_word_embeddings(cfg, where)}


# RobertaClassificationHead / ElectraClassificationHead / MPNetClassificationHead: classifier.dense + out_proj
CLASSIFICATION_HEAD = {"classifier.dense": "classifier_transform", "classifier.out_proj": "classifier"}
# RobertaLMHead / MPNetLMHead
LM_HEAD = {"lm_head.dense": ("linear", "masked_lm/transform"), "lm_head.layer_norm": ("ln", "masked_lm/transform_layer_norm")}


def head_param(name: str, head: Optional[str] = None, tied: bool = True) -> Optional[Target]:
    """The head tensors shared by RoBERTa, ELECTRA and MPNet checkpoints (``head``: the spec's head type;
    ``tied``: whether its masked-LM decoder is the word table)."""
    stem, leaf = _split(name)
    if stem in CLASSIFICATION_HEAD:
        return _param("linear", leaf, CLASSIFICATION_HEAD[stem])
    if stem == "classifier":        # *ForTokenClassification, *ForMultipleChoice (a linear layer over the pooler)
        return _param("linear", leaf, "classifier" if head == "multiple_choice" else "token_classifier")
    if stem == "qa_outputs":
        return _param("linear", leaf, "span_labeler")
    if stem in LM_HEAD:
        kind, path = LM_HEAD[stem]
        return _param(kind, leaf, path)
    return decoder_param(name, ("lm_head.decoder.weight",), ("lm_head.bias",), ("lm_head.decoder.bias",), tied)


def head_type(spec) -> Optional[str]:
    return spec.head.type if spec.head is not None else None


def strip_prefix(name: str, prefix: str) -> Optional[str]:
    """``name`` without the base model's prefix, or None when it has none (a head tensor, or a base model
    saved alone)."""
    return name[len(prefix):] if name.startswith(prefix) else None


# RobertaConfig's defaults (XLMRobertaConfig's and CamembertConfig's vocabulary: 30522)
ROBERTA_DEFAULTS = {**BERT_DEFAULTS, "vocab_size": 50265, "pad_token_id": 1}


class Roberta(HFFamily):
    model_types = ("roberta", "xlm-roberta", "camembert")
    architectures = {f"{p}{a}": h for p in ("Roberta", "XLMRoberta", "Camembert")
                     for a, h in (("Model", None), ("ForSequenceClassification", "classifier"),
                                  ("ForTokenClassification", "token_classifier"),
                                  ("ForQuestionAnswering", "span_labeler"), ("ForMultipleChoice", "multiple_choice"),
                                  ("ForMaskedLM", "masked_lm"))}
    base_architecture = "RobertaModel"

    def defaults_for(self, cfg) -> dict:
        return ROBERTA_DEFAULTS if cfg.get("model_type") == "roberta" else {**ROBERTA_DEFAULTS, "vocab_size": 30522}

    defaults = ROBERTA_DEFAULTS

    def encoder(self, cfg, where, max_len):
        check_config(cfg, where, [], NOT_A_DECODER)
        defaults = self.defaults_for(cfg)
        c = ConfigValues(cfg, where, defaults)
        pad = cfg.get("pad_token_id", 1)
        if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
            refuse(where, "pad_token_id", pad, "RoBERTa's positions start at pad_token_id + 1; bertc needs it")
        offset = pad + 1
        rows = c.int("max_position_embeddings", minimum=1)
        if rows <= offset:
            refuse(where, "max_position_embeddings", rows, f"leaves no position after the offset pad_token_id + 1 "
                                                           f"= {offset}")
        # BERT's translation of the rest, with the positions the table holds after the offset
        enc = encoder_from_config({**cfg, "model_type": "bert", "max_position_embeddings": rows - offset}, where, max_len,
                                  defaults)
        enc["position"] = {"type": "absolute", "offset": offset, "from_ids": True}
        return enc

    def head(self, cfg, where, enc, arch, names=()):
        kind = self.architectures[arch]
        if kind == "masked_lm":     # RobertaLMHead: transformers' gelu is the exact one, whatever hidden_act says
            return masked_lm_head("gelu", enc["layer_norm_epsilon"], cfg, where)
        head = head_from_config(cfg, where, enc, arch, self, names)
        return first_token_classifier(head, "tanh") if kind == "classifier" else head

    def translate(self, name, spec):
        rest = strip_prefix(name, "roberta.")
        if rest is not None:
            return _encoder_param(rest)
        return _encoder_param(name) or head_param(name, head_type(spec), decoder_tied(spec))


register_family(Roberta())
