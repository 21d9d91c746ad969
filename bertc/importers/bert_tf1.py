"""Original Google BERT checkpoints (TF1 variable names, ``bert_config.json``).

Names: ``bert/encoder/layer_0/attention/self/query/kernel`` and friends; kernels are already
(in, out) except the task heads' ``output_weights`` (num_labels, H), which are transposed. The
``gelu`` of original BERT is the tanh approximation (its ``modeling.gelu``), so ``hidden_act:
"gelu"`` in a ``bert_config.json`` becomes bertc's ``gelu_tanh``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from bertc.errors import WeightsError
from bertc.importers.hf import read_json, refuse
from bertc.weights import Ignored, Target

NAME = "bert_tf1"

# original BERT's activation names (modeling.get_activation); "gelu" there is the tanh approximation
ACTIVATIONS = {"gelu": "gelu_tanh", "relu": "relu", "tanh": "tanh", "linear": "linear"}

_LAYER = {"attention/self/query": "attention/query", "attention/self/key": "attention/key",
          "attention/self/value": "attention/value", "attention/output/dense": "attention/attention_output",
          "attention/output/LayerNorm": "attention_layer_norm", "intermediate/dense": "feedforward/intermediate",
          "output/dense": "feedforward/output", "output/LayerNorm": "feedforward/output_layer_norm"}
_EMBEDDINGS = {"bert/embeddings/word_embeddings": "embeddings/word_embeddings",
               "bert/embeddings/position_embeddings": "embeddings/position_embeddings",
               "bert/embeddings/token_type_embeddings": "embeddings/type_embeddings"}
_HEADS = {"cls/predictions/transform/dense": "masked_lm/transform",
          "cls/predictions/transform/LayerNorm": "masked_lm/transform_layer_norm",
          "bert/pooler/dense": "pooler"}
_OPTIMIZER = re.compile(r"(.*/(adam_[mv]|Adam(_\d+)?|Momentum|LAMB_[mv]))$|^(global_step|beta[12]_power)$")


def head_of(names) -> Optional[str]:
    """The head a checkpoint's tensor names say it has (run_classifier / run_squad / pretraining)."""
    names = set(names)
    if "output_weights" in names:
        return "classifier"
    if "cls/squad/output_weights" in names:
        return "span_labeler"
    if "cls/predictions/output_bias" in names and "cls/seq_relationship/output_weights" in names:
        return "pretrainer"
    return None


def translator(names, spec, location=None):
    head = spec.head.type if spec.head is not None else None

    def translate(name: str):
        if _OPTIMIZER.match(name):
            return Ignored("optimizer state / training step")
        if name in _EMBEDDINGS:
            return Target(_EMBEDDINGS[name])
        m = re.fullmatch(r"bert/embeddings/LayerNorm/(gamma|beta)", name)
        if m:
            return Target(f"embeddings/layer_norm/{m.group(1)}")
        m = re.fullmatch(r"bert/encoder/layer_(\d+)/(.+)/(kernel|bias|gamma|beta)", name)
        if m and m.group(2) in _LAYER:
            return Target(f"layer_{m.group(1)}/{_LAYER[m.group(2)]}/{m.group(3)}")
        m = re.fullmatch(r"(.+)/(kernel|bias|gamma|beta)", name)
        if m and m.group(1) in _HEADS:
            return Target(f"{_HEADS[m.group(1)]}/{m.group(2)}")
        if name == "cls/predictions/output_bias":
            return Target("masked_lm/output_bias")
        heads = {"cls/seq_relationship/": "next_sentence", "cls/squad/": "span_labeler",
                 "": "token_classifier" if head == "token_classifier" else "classifier"}
        for prefix, bertc_head in heads.items():
            if name == f"{prefix}output_weights":
                return Target(f"{bertc_head}/kernel", "transpose")
            if name == f"{prefix}output_bias":
                return Target(f"{bertc_head}/bias")
        return None

    return translate


def config_path(source: Path) -> Path:
    directory = source if source.is_dir() else source.parent
    return directory / "bert_config.json"


def spec_from(source: Path, checkpoint) -> dict:
    """A spec dict for an original BERT checkpoint with ``bert_config.json`` beside it."""
    path = config_path(source)
    if not path.exists():
        raise WeightsError(f"{source}: an original BERT checkpoint needs its bert_config.json beside it "
                           f"(looked for {path})")
    cfg, where = read_json(path), str(path)
    act = cfg.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        refuse(where, "hidden_act", act, f"original BERT's activations bertc computes are {sorted(ACTIVATIONS)}")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size") if k not in cfg]
    if missing:
        raise WeightsError(f"{where}: missing config keys {missing}")
    enc = {"type": "bert", "vocab_size": cfg["vocab_size"], "hidden_size": cfg["hidden_size"],
           "num_layers": cfg["num_hidden_layers"], "num_attention_heads": cfg["num_attention_heads"],
           "intermediate_size": cfg["intermediate_size"], "activation": ACTIVATIONS[act],
           "dropout_rate": float(cfg.get("hidden_dropout_prob", 0.1)),
           "attention_dropout_rate": float(cfg.get("attention_probs_dropout_prob", 0.1)),
           "max_sequence_length": int(cfg.get("max_position_embeddings", 512)),
           "type_vocab_size": int(cfg.get("type_vocab_size", 16)),
           "initializer": {"type": "truncated_normal", "stddev": float(cfg.get("initializer_range", 0.02))},
           "layer_norm_epsilon": 1e-12}
    names = checkpoint.names()
    head = head_of(names)
    spec = {"description": f"Imported from the original BERT checkpoint {checkpoint.location.name} "
                           f"(bert_config.json) by bertc import.", "encoder": enc}
    if head == "classifier":
        spec["head"] = {"type": "classifier", "num_classes": checkpoint.shape("output_weights")[0]}
    elif head == "span_labeler":
        spec["head"] = {"type": "span_labeler"}
    elif head == "pretrainer":
        spec["head"] = {"type": "pretrainer", "num_token_predictions": min(20, enc["max_sequence_length"]),
                        "num_classes": checkpoint.shape("cls/seq_relationship/output_weights")[0],
                        "output": "logits", "activation": enc["activation"], "layer_norm_epsilon": 1e-12}
        spec["description"] += (f" num_token_predictions {spec['head']['num_token_predictions']} is not in the "
                                f"checkpoint (max_predictions_per_seq): set it to yours.")
    return spec
