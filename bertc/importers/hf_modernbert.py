"""Hugging Face ModernBERT checkpoints (``model_type`` ``modernbert``): ``ModernBertModel`` and its
sequence classification, token classification and masked-LM heads, as transformers 5 computes them.

Every key of ``ModernBertConfig`` is decided here: translated into the ``modernbert`` encoder spec or a head,
ignored because it does not change what the model computes at inference (named in :data:`INERT`), or refused,
naming the key and the value, when bertc cannot compute it exactly (:func:`encoder`).

Tensor names (the task models' ``model.`` prefix stripped) -> bertc weight paths: ``Wqkv`` stays packed
(``attention/qkv``), ``Wi`` too (``feedforward/intermediate``: input then gate); torch ``Linear`` weights are
transposed; ``head.dense`` / ``head.norm`` are the heads' transform; the masked-LM ``decoder.weight`` is tied
to the word embeddings (the head's own ``decoder`` table where ``tie_word_embeddings`` is false) and
``decoder.bias`` is its ``output_bias``.
"""
from __future__ import annotations

import re
from typing import Optional

from bertc.importers.hf import ConfigValues, HFFamily, decoder_tied, invalid, num_labels, refuse, register_family
from bertc.weights import Ignored, Target

# Keys that change nothing bertc computes at inference, and why.
INERT = {
    "deterministic_flash_attn": "a flash-attention kernel setting (bertc has no such kernel)",
    "reference_compile": "torch.compile of the reference implementation",
    "repad_logits_with_grad": "an unpadding detail of older transformers releases' training",
    "sparse_prediction": "masked-LM training only: with labels, the logits of the labelled tokens alone",
    "sparse_pred_ignore_index": "masked-LM training only (sparse_prediction's label to skip)",
    "initializer_cutoff_factor": "initialisation of new weights (bertc truncates at 2 standard deviations)",
    "pad_token_id": "the embedding's padding_idx: only its gradient differs",
    "bos_token_id": "a tokenizer id", "eos_token_id": "a tokenizer id", "cls_token_id": "a tokenizer id",
    "sep_token_id": "a tokenizer id",
    "problem_type": "the training loss of the classifier",
}

ARCHITECTURES = {
    "ModernBertModel": None,
    "ModernBertForSequenceClassification": "classifier",
    "ModernBertForTokenClassification": "token_classifier",
    "ModernBertForMaskedLM": "masked_lm",
    "ModernBertForQuestionAnswering": "span_labeler",
    "ModernBertForMultipleChoice": "multiple_choice",
}
_LAYER_TYPES = {"full_attention": "global", "sliding_attention": "local"}
_POOLING = {"cls": "first", "mean": "mean"}
_ROPE_KEYS = {"rope_type", "rope_theta"}

# ModernBertConfig's defaults, for the keys config.json leaves out
DEFAULTS = {"vocab_size": 50368, "hidden_size": 768, "intermediate_size": 1152, "num_hidden_layers": 22,
            "num_attention_heads": 12, "hidden_activation": "gelu", "max_position_embeddings": 8192,
            "initializer_range": 0.02, "norm_eps": 1e-5, "norm_bias": False, "attention_bias": False,
            "attention_dropout": 0.0, "local_attention": 128, "embedding_dropout": 0.0, "mlp_bias": False,
            "mlp_dropout": 0.0, "decoder_bias": True, "classifier_pooling": "cls", "classifier_dropout": 0.0,
            "classifier_bias": False, "classifier_activation": "gelu", "tie_word_embeddings": True,
            "global_attn_every_n_layers": 3, "global_rope_theta": 160000.0, "local_rope_theta": 10000.0}


def _rope_theta(cfg: dict, where: str, layer_type: str) -> float:
    """The theta of ``layer_type`` layers: ``rope_parameters[layer_type]`` (transformers 5), else the older
    ``global_rope_theta`` / ``local_rope_theta``; only the default (unscaled) RoPE. A ``local_rope_theta`` of
    null is ``global_rope_theta``, as transformers 4 reads it (``if config.local_rope_theta is not None``)."""
    if cfg.get("rope_scaling") is not None:
        refuse(where, "rope_scaling", cfg["rope_scaling"], "bertc computes unscaled rotary positions only")
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and isinstance(params.get(layer_type), dict):
        p = params[layer_type]
        key = f"rope_parameters.{layer_type}"
        if p.get("rope_type", "default") != "default":
            refuse(where, f"{key}.rope_type", p["rope_type"], "bertc computes the default rotary positions only")
        extra = sorted(set(p) - _ROPE_KEYS)
        if extra:
            refuse(where, f"{key}.{extra[0]}", p[extra[0]], "a rotary scaling or partial rotation bertc does not "
                                                              "compute")
        if "rope_theta" in p:
            return _theta(where, f"{key}.rope_theta", p["rope_theta"])
    elif params is not None and not isinstance(params, dict):
        refuse(where, "rope_parameters", params, "expected one entry per layer type")
    key = "local_rope_theta" if layer_type == "sliding_attention" else "global_rope_theta"
    if key == "local_rope_theta" and cfg.get(key, DEFAULTS[key]) is None:
        key = "global_rope_theta"
    return _theta(where, key, cfg.get(key, DEFAULTS[key]))


def _theta(where: str, key: str, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or value == float("inf"):
        invalid(where, key, value, "a positive number")
    return float(value)


def _layer_types(cfg: dict, where: str, layers: int) -> Optional[list[str]]:
    """Each layer's kind, or None when ``global_attn_every_n_layers`` (the older key) says it all."""
    types = cfg.get("layer_types")
    if types is None:
        return None
    if not isinstance(types, list) or len(types) != layers:
        refuse(where, "layer_types", types, f"expected one entry per layer ({layers})")
    bad = [t for t in types if not isinstance(t, str) or t not in _LAYER_TYPES]
    if bad:
        refuse(where, "layer_types", types, f"{bad[0]!r} is not full_attention or sliding_attention")
    return [_LAYER_TYPES[t] for t in types]


def encoder(cfg: dict, where: str, max_len: Optional[int] = None) -> dict:
    """The bertc ``modernbert`` encoder spec of a HF ModernBERT config."""
    c = ConfigValues(cfg, where, DEFAULTS)
    hidden, heads = c.int("hidden_size", minimum=1), c.int("num_attention_heads", minimum=1)
    if cfg.get("head_dim") not in (None, hidden // heads):
        refuse(where, "head_dim", cfg["head_dim"], f"bertc's heads are hidden_size / num_attention_heads "
                                                    f"= {hidden // heads} wide")
    for key in ("is_decoder", "add_cross_attention"):
        if cfg.get(key):
            refuse(where, key, cfg[key], "bertc's ModernBERT is a bidirectional encoder")
    layers = c.int("num_hidden_layers", minimum=1)
    positions = c.int("max_position_embeddings", minimum=1)
    local = c.int("local_attention", minimum=0)
    kinds = _layer_types(cfg, where, layers)
    every = c.int("global_attn_every_n_layers", minimum=1) if kinds is None else cfg.get("global_attn_every_n_layers", 3)
    every_n = ["global" if i % every == 0 else "local" for i in range(layers)] \
        if isinstance(every, int) and not isinstance(every, bool) and every >= 1 else None
    any_local = "local" in (kinds if kinds is not None else every_n)
    if any_local and local // 2 < 1:
        refuse(where, "local_attention", local, "bertc's local layers need a window of at least one token on each "
                                                "side (local_attention // 2 >= 1); with 0 each token attends to itself "
                                                "alone")
    enc = {"type": "modernbert", "vocab_size": c.int("vocab_size", minimum=1), "hidden_size": hidden,
           "num_layers": layers, "num_attention_heads": heads, "intermediate_size": c.int("intermediate_size", minimum=1),
           "activation": c.activation("hidden_activation"),
           "max_sequence_length": min(positions, max_len) if max_len else positions,
           "layer_norm_epsilon": c.epsilon("norm_eps"),
           "norm_bias": c.bool("norm_bias"), "attention_bias": c.bool("attention_bias"),
           "mlp_bias": c.bool("mlp_bias"), "local_attention": local,
           "global_rope_theta": _rope_theta(cfg, where, "full_attention"),
           "local_rope_theta": _rope_theta(cfg, where, "sliding_attention"),
           "embedding_dropout": c.rate("embedding_dropout"),
           "attention_dropout": c.rate("attention_dropout"),
           "mlp_dropout": c.rate("mlp_dropout"),
           # transformers initialises new weights from a normal truncated at initializer_cutoff_factor sigmas
           "initializer": {"type": "truncated_normal", "stddev": c.stddev("initializer_range")}}
    if not any_local and local < 1:
        # every layer global: the window is never read (in transformers either); the spec takes a positive one
        del enc["local_attention"]
    if kinds is not None and kinds != every_n:
        enc["layer_types"] = kinds
    elif every_n is not None:
        enc["global_attn_every_n_layers"] = every
    return enc


def head(cfg: dict, where: str, enc: dict, arch: str, names=()) -> Optional[dict]:
    """The head spec of ``arch``: ModernBERT's prediction head (dense, ``classifier_activation``, norm) is every
    head's ``transform``."""
    kind = ARCHITECTURES[arch]
    if kind is None:
        return None
    c = ConfigValues(cfg, where, DEFAULTS)
    transform = {"activation": c.activation("classifier_activation"), "bias": c.bool("classifier_bias"),
                 "layer_norm": {"epsilon": enc["layer_norm_epsilon"], "bias": enc["norm_bias"]}}
    if kind == "masked_lm":
        own = {} if c.bool("tie_word_embeddings") else {"decoder_tied": False}
        return {"type": "masked_lm", "transform": transform, "decoder_bias": c.bool("decoder_bias"), **own}
    if kind == "span_labeler":   # the prediction head, then classifier: num_labels 2, split into start / end
        if num_labels(cfg, where) != 2:
            refuse(where, "num_labels", num_labels(cfg, where), "a question-answering head has 2 outputs (start, end)")
        return {"type": "span_labeler", "transform": transform}
    out = {"type": kind, "num_classes": num_labels(cfg, where), "dropout_rate": c.rate("classifier_dropout"),
           "transform": transform}
    if kind == "multiple_choice":   # one output a (context, choice) row
        del out["num_classes"]
    if kind in ("classifier", "multiple_choice"):
        pooling = cfg.get("classifier_pooling", "cls")
        if not isinstance(pooling, str) or pooling not in _POOLING:
            refuse(where, "classifier_pooling", pooling, "bertc pools the cls token or the mean of the real tokens")
        out["pooling"] = _POOLING[pooling]
    return out


# --- tensor names ---------------------------------------------------------------------------------------

_LINEAR = {"weight": ("kernel", "transpose"), "bias": ("bias", "same")}
_NORM = {"weight": "gamma", "bias": "beta"}
_LAYER = {"attn.Wqkv": ("linear", "attention/qkv"), "attn.Wo": ("linear", "attention/attention_output"),
          "attn_norm": ("norm", "attention_layer_norm"), "mlp_norm": ("norm", "feedforward/output_layer_norm"),
          "mlp.Wi": ("linear", "feedforward/intermediate"), "mlp.Wo": ("linear", "feedforward/output")}
_HEAD_BASE = {"classifier": "classifier", "token_classifier": "token_classifier", "masked_lm": "masked_lm",
              "span_labeler": "span_labeler", "multiple_choice": "classifier"}


def _param(kind: str, leaf: str, base: str) -> Optional[Target]:
    if kind == "linear" and leaf in _LINEAR:
        name, layout = _LINEAR[leaf]
        return Target(f"{base}/{name}", layout)
    if kind == "norm" and leaf in _NORM:
        return Target(f"{base}/{_NORM[leaf]}")
    return None


def _encoder_param(rest: str) -> Optional[Target]:
    stem, _, leaf = rest.rpartition(".")
    if rest == "embeddings.tok_embeddings.weight":
        return Target("embeddings/word_embeddings")
    if stem == "embeddings.norm":
        return _param("norm", leaf, "embeddings/layer_norm")
    if stem == "final_norm":
        return _param("norm", leaf, "final_layer_norm")
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", stem)
    if m and m.group(2) in _LAYER:
        kind, sub = _LAYER[m.group(2)]
        return _param(kind, leaf, f"layer_{m.group(1)}/{sub}")
    return None


def _head_param(name: str, kind: Optional[str], tied: bool = True) -> Optional[Target]:
    stem, _, leaf = name.rpartition(".")
    if stem not in ("head.dense", "head.norm", "classifier", "decoder"):
        return None
    if kind is None:
        return Ignored("task head of the checkpoint: this spec builds the encoder alone (no head)")
    if kind == "sentence_embedding":
        return Ignored("task head of the checkpoint: this spec's sentence_embedding head has no weights")
    if kind not in _HEAD_BASE and kind != "masked_lm":
        return None   # a head ModernBERT has no tensors for: the loader names the tensor as unused
    if kind == "masked_lm":
        if stem == "head.dense":
            return _param("linear", leaf, "masked_lm/transform")
        if stem == "head.norm":
            return _param("norm", leaf, "masked_lm/transform_layer_norm")
        if name == "decoder.weight":
            return Target("embeddings/word_embeddings", tied=True) if tied else Target("masked_lm/decoder")
        if name == "decoder.bias":
            return Target("masked_lm/output_bias")
        return None
    base = _HEAD_BASE[kind]
    if stem == "head.dense":
        return _param("linear", leaf, f"{base}_transform")
    if stem == "head.norm":
        return _param("norm", leaf, f"{base}_transform_layer_norm")
    if stem == "classifier":
        return _param("linear", leaf, base)
    return None


def translate(name: str, spec) -> Optional[Target]:
    """A ModernBERT tensor name -> bertc weight path (``spec``: the spec it is loaded into)."""
    kind = spec.head.type if spec.head is not None else None
    rest = name[len("model."):] if name.startswith("model.") else name
    return _encoder_param(rest) or _head_param(name, kind, decoder_tied(spec))


class ModernBertFamily(HFFamily):
    model_types = ("modernbert",)
    architectures = ARCHITECTURES
    base_architecture = "ModernBertModel"
    defaults = DEFAULTS

    def encoder(self, cfg, where, max_len):
        return encoder(cfg, where, max_len)

    def head(self, cfg, where, enc, arch, names=()):
        return head(cfg, where, enc, arch, names)

    def has_pooler(self, names) -> bool:
        return True   # the modernbert encoder has none to load: without a head it outputs the sequence alone

    def translate(self, name, spec):
        return translate(name, spec)


register_family(ModernBertFamily())
