"""Model Garden object-based checkpoints (``tf.train.Checkpoint`` of an encoder or a task model).

Tensors are named by the variables' own names recorded in the checkpoint's object graph
(``transformer/layer_0/self_attention/query/kernel``). Attention kernels are einsum-shaped,
(H, N, D) for query/key/value and (N, D, H) for the output, and are reshaped to bertc's
(H, N*D) / (N*D, H). Encoders: BertEncoder (``transformer/layer_i``), AlbertEncoder (one
``transformer`` block), EncoderScaffold (blocks named by class, ``transformer_scaffold``,
``transformer_scaffold_1``, ..., ordered by the number Keras appended when creating them).
Task models: BertClassifier, BertSpanLabeler, BertTokenClassifier, BertPretrainer.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from bertc.checkpoints import checkpoint_text
from bertc.errors import UnsupportedModel, WeightsError
from bertc.weights import Ignored, Target

NAME = "model_garden"

_BLOCK_SUBLAYERS = ("self_attention/", "self_attention_layer_norm/", "intermediate/", "output/",
                    "output_layer_norm/", "feedforward/", "rezero_alpha")
_EMBEDDINGS = {"word_embeddings/embeddings": "embeddings/word_embeddings",
               "position_embedding/embeddings": "embeddings/position_embeddings",
               "type_embeddings/embeddings": "embeddings/type_embeddings"}


def _is_bookkeeping(name: str) -> Optional[str]:
    if name == "save_counter" or name.endswith("save_counter/.ATTRIBUTES/VARIABLE_VALUE"):
        return "checkpoint bookkeeping (save_counter)"
    if ".OPTIMIZER_SLOT" in name or name.startswith("optimizer/") or re.match(r"^(Adam|AdamW|SGD|LAMB)[^/]*/", name):
        return "optimizer state"
    return None


def _split_block(name: str) -> Optional[tuple[str, str]]:
    """(block prefix, rest) for a transformer-block variable name, else None."""
    m = re.fullmatch(r"(transformer/layer_\d+)/(.+)", name)
    if m:
        return m.group(1), m.group(2)
    m = re.fullmatch(r"([a-z_]+?(?:_\d+)?)/(.+)", name)
    if m and any(m.group(2).startswith(s) for s in _BLOCK_SUBLAYERS):
        return m.group(1), m.group(2)
    return None


def _prefix_order(prefix: str) -> tuple:
    m = re.fullmatch(r"(.+?)(?:_(\d+))?", prefix)
    return (m.group(1), int(m.group(2) or 0))


def block_indices(names) -> dict[str, int]:
    """Block prefix -> layer index. ``transformer/layer_3`` says its index; class-named blocks of an
    EncoderScaffold (``transformer_scaffold_2``, ``transformer_scaffold_3``) follow Keras' creation order."""
    prefixes = {p[0] for p in map(_split_block, names) if p is not None}
    explicit = {p: int(p.rsplit("_", 1)[1]) for p in prefixes if re.fullmatch(r"transformer/layer_\d+", p)}
    others = sorted(prefixes - set(explicit), key=_prefix_order)
    return {**explicit, **{p: i for i, p in enumerate(others)}}


def _block_target(rest: str, base: str, block_type: str) -> Optional[Target]:
    m = re.fullmatch(r"self_attention/(query|key|value|attention_output)/(kernel|bias)", rest)
    if m:
        return Target(f"{base}/attention/{m.group(1)}/{m.group(2)}", "reshape")
    m = re.fullmatch(r"self_attention/((?:pre|post)_softmax_weight)", rest)
    if m:
        return Target(f"{base}/attention/{m.group(1)}")
    m = re.fullmatch(r"self_attention_layer_norm/(gamma|beta)", rest)
    if m:
        return Target(f"{base}/attention_layer_norm/{m.group(1)}")
    ff = "" if block_type == "rezero" else "feedforward/"
    m = re.fullmatch(r"(intermediate|output|output_layer_norm)/(kernel|bias|gamma|beta)", rest)
    if m:
        return Target(f"{base}/{ff}{m.group(1)}/{m.group(2)}")
    m = re.fullmatch(r"feedforward/((?:intermediate|gate|output|output_layer_norm)_\d+)/(kernel|bias|gamma|beta)", rest)
    if m:
        return Target(f"{base}/feedforward/{m.group(1)}/{m.group(2)}")
    if rest in ("rezero_alpha", "rezero_alpha_ffn"):
        return Target(f"{base}/{rest}")
    return None


def translator(names, spec, location=None):
    enc = spec.encoder.scaffold
    blocks = enc.blocks()
    head = spec.head.type if spec.head is not None else None
    indices = block_indices(names)

    def translate(name: str):
        why = _is_bookkeeping(name)
        if why:
            return Ignored(why)
        if name in _EMBEDDINGS:
            return Target(_EMBEDDINGS[name])
        m = re.fullmatch(r"embeddings/layer_norm/(gamma|beta)", name)
        if m:
            return Target(f"embeddings/layer_norm/{m.group(1)}")
        m = re.fullmatch(r"embedding_projection/(kernel|bias)", name)
        if m:
            return Target(f"embeddings/embedding_projection/{m.group(1)}")
        m = re.fullmatch(r"(?:pooler_transform|cls_transform)/(kernel|bias)", name)
        if m:
            return Target(f"pooler/{m.group(1)}")
        m = re.fullmatch(r"(sentence_prediction|predictions/transform)/logits/(kernel|bias)", name)
        if m:
            if m.group(1) == "sentence_prediction":
                return Target(f"classifier/{m.group(2)}")
            bertc_head = {"pretrainer": "next_sentence", "token_classifier": "token_classifier",
                          "classifier": "classifier"}.get(head, "span_labeler")
            return Target(f"{bertc_head}/{m.group(2)}")
        m = re.fullmatch(r"cls/predictions/transform/(dense|LayerNorm)/(kernel|bias|gamma|beta)", name)
        if m:
            sub = "transform" if m.group(1) == "dense" else "transform_layer_norm"
            return Target(f"masked_lm/{sub}/{m.group(2)}")
        if name == "cls/predictions/output_bias/bias":
            return Target("masked_lm/output_bias")
        split = _split_block(name)
        if split is not None:
            i = indices[split[0]]
            base = "shared_layer" if enc.share_layers else f"layer_{i}"
            block_type = blocks[min(i, len(blocks) - 1)].type
            return _block_target(split[1], base, block_type)
        return None

    return translate


# --- spec from the checkpoint's shapes (and an optional config) ----------------------------------------

CONFIG_NAMES = ("encoder_config.json", "params.yaml", "params.yml")


def _read_config(directory: Path) -> tuple[dict, Optional[Path]]:
    """Model Garden's EncoderConfig (``{"type": "bert", "bert": {...}}``, alone or at
    ``task.model.encoder`` of an experiment's params.yaml), if one sits beside the checkpoint."""
    for name in CONFIG_NAMES:
        path = directory / name
        if not path.exists():
            continue
        try:
            text = checkpoint_text(path, "config")
            if path.suffix == ".json":
                data = json.loads(text)
            else:
                try:
                    import yaml
                except ImportError:
                    raise WeightsError(f"{path}: reading a YAML config needs pyyaml (pip install pyyaml)") from None
                data = yaml.safe_load(text)
            enc = (((data or {}).get("task") or {}).get("model") or {}).get("encoder") or data
            kind = enc.get("type", "bert")
            return {"type": kind, **(enc.get(kind) or {})}, path
        except WeightsError:
            raise
        except Exception as exc:  # malformed JSON / YAML, or not Model Garden's EncoderConfig layout
            raise WeightsError(f"{path}: not a Model Garden encoder config ({type(exc).__name__}: {exc}); expected "
                               f'{{"type": "bert", "bert": {{...}}}} or an experiment params.yaml') from None
    return {}, None


_MG_ACTIVATIONS = {"gelu": "gelu_tanh", "relu": "relu", "tanh": "tanh", "linear": "linear", "identity": "linear",
                   "swish": "silu", "silu": "silu", "exact_gelu": "gelu"}


def spec_from(source: Path, checkpoint) -> dict:
    names, shape = checkpoint.names(), checkpoint.shape
    directory = source if source.is_dir() else source.parent
    cfg, cfg_path = _read_config(directory)
    assumed = []

    def setting(key, default, what):
        if key in cfg:
            value = cfg[key]
            if type(value) is not type(default):   # "false" (a string) read as a flag was True
                raise WeightsError(f"{cfg_path}: {key} = {json.dumps(value, default=str)}: expected "
                                   f"{'true or false' if isinstance(default, bool) else 'a ' + type(default).__name__}")
            return value
        assumed.append(f"{what} {default}")
        return default

    if "word_embeddings/embeddings" not in names:
        raise WeightsError(f"{checkpoint.location}: no 'word_embeddings/embeddings' tensor: not a checkpoint of "
                           f"a Model Garden BERT-family encoder (or of a task model holding one)")
    vocab, width = shape("word_embeddings/embeddings")
    hidden = shape("embedding_projection/kernel")[1] if "embedding_projection/kernel" in names else width
    indices = block_indices(names)
    prefixes = sorted(indices, key=indices.get)
    if not prefixes:
        raise WeightsError(f"{checkpoint.location}: no transformer block tensors found")
    first = prefixes[0]
    heads = shape(f"{first}/self_attention/query/kernel")[1]
    act_name = setting("hidden_activation", "gelu", "activation")
    if assumed:
        assumed[-1] = "activation gelu (Model Garden's default, tanh-approximated: bertc gelu_tanh)"
    if act_name not in _MG_ACTIVATIONS:
        raise UnsupportedModel(f"{cfg_path}: hidden_activation = {json.dumps(act_name)}: bertc computes "
                               f"{sorted(_MG_ACTIVATIONS)}; bertc refuses rather than approximate")
    act = _MG_ACTIVATIONS[act_name]
    common = {"vocab_size": vocab, "hidden_size": hidden, "num_attention_heads": heads,
              "max_sequence_length": shape("position_embedding/embeddings")[0],
              "type_vocab_size": shape("type_embeddings/embeddings")[0], "activation": act,
              "layer_norm_epsilon": 1e-12}
    kinds = {p: ("rezero" if f"{p}/rezero_alpha" in names
                 else "talking_heads" if f"{p}/self_attention/pre_softmax_weight" in names
                 else "gated" if f"{p}/feedforward/intermediate_0/kernel" in names else "transformer")
             for p in prefixes}
    if width != hidden:  # AlbertEncoder: factorized embeddings, one shared block
        if len(prefixes) != 1:
            raise WeightsError(f"{checkpoint.location}: factorized embeddings with {len(prefixes)} blocks: bertc's "
                               f"ALBERT shares one block")
        layers = cfg.get("num_layers")
        if layers is not None and (type(layers) is not int or layers < 1):
            raise WeightsError(f"{cfg_path}: num_layers = {json.dumps(layers, default=str)}: expected a whole "
                               f"number of at least 1")
        if layers is None:
            raise UnsupportedModel(
                f"{checkpoint.location}: an AlbertEncoder checkpoint does not record num_layers (its one block is "
                f"shared); put Model Garden's encoder config beside it as encoder_config.json, e.g. "
                f'{{"type": "albert", "albert": {{"num_layers": 12}}}}')
        enc = {"type": "albert", **common, "embedding_width": width, "num_layers": layers,
               "intermediate_size": shape(f"{first}/intermediate/kernel")[1]}
    elif set(kinds.values()) == {"transformer"} and all(p.startswith("transformer/layer_") for p in prefixes):
        enc = {"type": "bert", **common, "num_layers": len(prefixes),
               "intermediate_size": shape(f"{first}/intermediate/kernel")[1],
               "norm_first": setting("norm_first", False, "norm_first")}
    else:
        enc = _scaffold_spec(common, prefixes, kinds, names, shape, directory)
    head = _head(names, shape)
    if head and head["type"] == "pretrainer":
        head["num_token_predictions"] = min(20, common["max_sequence_length"])
    assumptions = f"; assumed (not in the checkpoint): {', '.join(assumed)}" if assumed else ""
    spec = {"description": f"Imported from the Model Garden checkpoint {directory.name}/{checkpoint.location.name}"
                           f"{' with ' + cfg_path.name if cfg_path else ''} by bertc import (shapes of "
                           f"{len(names)} tensors){assumptions}.", "encoder": enc}
    if head:
        if head["type"] == "pretrainer":
            head["activation"] = act
        spec["head"] = head
    return spec


def _scaffold_spec(common, prefixes, kinds, names, shape, directory) -> dict:
    if len(set(kinds.values())) != 1:
        raise UnsupportedModel(f"{directory}: blocks of different kinds {sorted(set(kinds.values()))}: write the "
                               f"spec by hand (bertc's scaffold encoder takes one block spec per layer)")
    kind, first = kinds[prefixes[0]], prefixes[0]
    if kind == "rezero":
        block = {"type": "rezero", "num_attention_heads": common["num_attention_heads"],
                 "intermediate_size": shape(f"{first}/intermediate/kernel")[1], "activation": common["activation"],
                 "use_layer_norm": f"{first}/output_layer_norm/gamma" in names,
                 "share_rezero": f"{first}/rezero_alpha_ffn" not in names}
    else:
        attention = {"type": "talking_heads" if kind == "talking_heads" else "multi_head",
                     "num_heads": common["num_attention_heads"]}
        if kind == "gated" or f"{first}/feedforward/intermediate_0/kernel" in names:
            n = len({m.group(1) for m in (re.fullmatch(rf"{re.escape(first)}/feedforward/intermediate_(\d+)/kernel", x)
                                          for x in names) if m})
            ff = {"type": "gated", "intermediate_size": shape(f"{first}/feedforward/intermediate_0/kernel")[1],
                  "activation": common["activation"], "num_blocks": n,
                  "use_gate": f"{first}/feedforward/gate_0/kernel" in names}
        else:
            ff = {"type": "dense", "intermediate_size": shape(f"{first}/intermediate/kernel")[1],
                  "activation": common["activation"]}
        block = {"type": "scaffold", "attention": attention, "feedforward": ff,
                 "layer_norm_epsilon": common["layer_norm_epsilon"]}
    if block["type"] == "rezero":
        block["layer_norm_epsilon"] = common["layer_norm_epsilon"]
    embedding = {"type": "standard", "vocab_size": common["vocab_size"],
                 "type_vocab_size": common["type_vocab_size"], "max_sequence_length": common["max_sequence_length"]}
    pooled = shape("cls_transform/kernel")[1] if "cls_transform/kernel" in names else None
    enc = {"type": "scaffold", "hidden_size": common["hidden_size"], "num_layers": len(prefixes),
           "embedding": embedding, "hidden": block}
    if pooled:
        enc["pooled_output_dim"] = pooled
    return enc


def _head(names, shape) -> Optional[dict]:
    names = set(names)
    if "sentence_prediction/logits/kernel" in names:
        return {"type": "classifier", "num_classes": shape("sentence_prediction/logits/kernel")[1]}
    if "cls/predictions/output_bias/bias" in names:
        return {"type": "pretrainer", "num_token_predictions": 1,
                "num_classes": shape("predictions/transform/logits/kernel")[1], "output": "logits"}
    if "predictions/transform/logits/kernel" in names:
        n = shape("predictions/transform/logits/kernel")[1]
        return {"type": "span_labeler"} if n == 2 else {"type": "token_classifier", "num_classes": n}
    return None
