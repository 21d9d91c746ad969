"""Hugging Face ELECTRA discriminators (``model_type`` electra).

The encoder is BERT's with embeddings of their own width: word, position and type embeddings of
``embedding_size``, their layer norm at that width, then ``embeddings_project`` (a dense layer to
``hidden_size``, present only when the two differ; not ALBERT's sharing: every layer has its own weights).
bertc writes it as a ``scaffold`` encoder with the ``standard`` embedding network (``embedding_width``) and
``transformer`` blocks; there is no pooler (the encoder alone outputs ``sequence_output`` only).

Tensor names are BERT's under ``electra.`` plus ``electra.embeddings_project``. Heads:
``ElectraClassificationHead`` (dense + exact GELU + ``out_proj`` over the first token) is a ``classifier``
with ``pooling: first`` and a gelu ``transform``; token classification and question answering are BERT's.
The pretraining discriminator (``ElectraForPreTraining``: google/electra-*-discriminator as published) is a
``token_classifier`` of one class: ``discriminator_predictions.dense`` + the config's activation, then
``dense_prediction``, the logit that each token was replaced (transformers squeezes the class axis away: bertc's
``logits`` keep it, (batch, seq, 1)). The generator (``ElectraForMaskedLM``: google/electra-*-generator) is a
``masked_lm`` head: ``generator_predictions.dense`` (hidden -> embedding size) + exact GELU + ``LayerNorm``, then
``generator_lm_head``, tied to the word embeddings (its own table where ``tie_word_embeddings`` is false) with its
own bias.
"""
from __future__ import annotations

from bertc.importers.hf import (BERT_DEFAULTS, ConfigValues, HFFamily, _encoder_param, _param, _split, activation,
                               decoder_param, decoder_tied, encoder_from_config, head_from_config, num_labels, refuse,
                               register_family)
from bertc.importers.hf_roberta import (NOT_A_DECODER, check_config, first_token_classifier, head_param, head_type,
                                        masked_lm_head, strip_prefix)

# ElectraDiscriminatorPredictions / ElectraGeneratorPredictions: (kind, bertc path) by tensor stem
_PRETRAINING_HEADS = {"discriminator_predictions.dense": ("linear", "token_classifier_transform"),
                      "discriminator_predictions.dense_prediction": ("linear", "token_classifier"),
                      "generator_predictions.dense": ("linear", "masked_lm/transform"),
                      "generator_predictions.LayerNorm": ("ln", "masked_lm/transform_layer_norm"),
                      "sequence_summary.summary": ("linear", "classifier_transform")}


# ElectraConfig's defaults, for the keys config.json leaves out
DEFAULTS = {**BERT_DEFAULTS, "embedding_size": 128, "hidden_size": 256, "num_attention_heads": 4,
            "intermediate_size": 1024, "summary_type": "first", "summary_use_proj": True,
            "summary_activation": "gelu", "summary_last_dropout": 0.1}


def sequence_summary_head(cfg: dict, where: str) -> dict:
    """ElectraForMultipleChoice's head as bertc's: ElectraSequenceSummary (the first token; its ``summary``
    projection and ``summary_activation`` as the transform; ``summary_last_dropout``), then ``classifier``
    (hidden -> 1). What the summary could also be and bertc does not compute is refused."""
    c = ConfigValues(cfg, where, DEFAULTS)
    kind = cfg.get("summary_type", "first")
    if kind != "first":
        refuse(where, "summary_type", kind, "bertc's multiple-choice head reads the first token (summary_type "
                                            "\"first\"); \"mean\" would average the padding too")
    project = c.bool("summary_use_proj")
    if project and cfg.get("summary_proj_to_labels") and num_labels(cfg, where) > 0:
        refuse(where, "summary_proj_to_labels", cfg["summary_proj_to_labels"],
               "the summary would project to num_labels, which the multiple-choice classifier (hidden_size -> 1) "
               "cannot read")
    act = cfg.get("summary_activation", "gelu")
    act = activation(where, "summary_activation", act) if act else "linear"
    if not project and act != "linear":
        refuse(where, "summary_activation", cfg["summary_activation"], "without a projection (summary_use_proj "
                                                                       "false), bertc's head has no place for it")
    head = {"type": "multiple_choice", "pooling": "first", "dropout_rate": c.rate("summary_last_dropout")}
    return {**head, "transform": {"activation": act}} if project else head


class Electra(HFFamily):
    model_types = ("electra",)
    architectures = {"ElectraModel": None, "ElectraForSequenceClassification": "classifier",
                     "ElectraForTokenClassification": "token_classifier",
                     "ElectraForQuestionAnswering": "span_labeler", "ElectraForMultipleChoice": "multiple_choice",
                     "ElectraForPreTraining": "discriminator", "ElectraForMaskedLM": "masked_lm"}
    base_architecture = "ElectraModel"
    defaults = DEFAULTS

    def encoder(self, cfg, where, max_len):
        check_config(cfg, where, [], NOT_A_DECODER)
        bert = encoder_from_config({**cfg, "model_type": "bert"}, where, max_len, DEFAULTS)
        width = ConfigValues(cfg, where, DEFAULTS).int("embedding_size", minimum=1)
        embedding = {"type": "standard", "vocab_size": bert["vocab_size"], "type_vocab_size": bert["type_vocab_size"],
                     "max_sequence_length": bert["max_sequence_length"], "dropout_rate": bert["dropout_rate"],
                     "layer_norm_epsilon": bert["layer_norm_epsilon"]}
        if width != bert["hidden_size"]:
            embedding["embedding_width"] = width
        block = {"type": "transformer", "num_attention_heads": bert["num_attention_heads"],
                 "intermediate_size": bert["intermediate_size"], "activation": bert["activation"],
                 "dropout_rate": bert["dropout_rate"], "attention_dropout_rate": bert["attention_dropout_rate"],
                 "layer_norm_epsilon": bert["layer_norm_epsilon"]}
        return {"type": "scaffold", "hidden_size": bert["hidden_size"], "num_layers": bert["num_layers"],
                "pooler": False, "embedding": embedding, "hidden": block, "initializer": bert["initializer"],
                "layer_norm_epsilon": bert["layer_norm_epsilon"]}

    def has_pooler(self, names) -> bool:
        return True     # the encoder alone has none and outputs sequence_output only

    def head(self, cfg, where, enc, arch, names=()):
        kind = self.architectures[arch]
        if kind == "discriminator":   # one logit a token, after dense + the config's activation; no dropout
            return {"type": "token_classifier", "num_classes": 1, "dropout_rate": 0.0,
                    "transform": {"activation": enc["hidden"]["activation"]}}
        if kind == "masked_lm":       # ElectraGeneratorPredictions: get_activation("gelu"), the exact one
            return masked_lm_head("gelu", enc["layer_norm_epsilon"], cfg, where)
        if kind == "multiple_choice":
            return sequence_summary_head(cfg, where)
        head = head_from_config(cfg, where, enc, arch, self, names)
        # ElectraClassificationHead: get_activation("gelu"), the exact one, whatever hidden_act says
        return first_token_classifier(head, "gelu") if kind == "classifier" else head

    def translate(self, name, spec):
        rest = strip_prefix(name, "electra.")
        if rest is None and not name.startswith(("embeddings", "encoder.")):
            stem, leaf = _split(name)
            if stem in _PRETRAINING_HEADS:
                kind, path = _PRETRAINING_HEADS[stem]
                return _param(kind, leaf, path)
            return (decoder_param(name, ("generator_lm_head.weight",), ("generator_lm_head.bias",),
                                  tied=decoder_tied(spec))
                    or head_param(name, head_type(spec), decoder_tied(spec)))
        stem, leaf = _split(rest if rest is not None else name)
        if stem == "embeddings_project":
            return _param("linear", leaf, "embeddings/embedding_projection")
        return _encoder_param(rest if rest is not None else name)


register_family(Electra())
