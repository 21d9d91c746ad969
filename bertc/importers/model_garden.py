"""Model Garden object-based checkpoints (``tf.train.Checkpoint`` of an encoder or a task model).

Tensors are named by the variables' own names recorded in the checkpoint's object graph
(``transformer/layer_0/self_attention/query/kernel``). Attention kernels are einsum-shaped,
(H, N, D) for query/key/value and (N, D, H) for the output, and are reshaped to bertc's
(H, N*D) / (N*D, H). Encoders: BertEncoder (``transformer/layer_i``), AlbertEncoder (one
``transformer`` block), EncoderScaffold (blocks named by class, ``transformer_scaffold``,
``transformer_scaffold_1``, ..., ordered by the number Keras appended when creating them).
A TransformerScaffold given an explicit ``attention_cfg`` / ``feedforward_cfg`` names that sub-layer by its class
(``talking_heads_attention``, ``gated_feedforward``) instead of ``self_attention`` / ``feedforward``; both are read.
Task models: BertClassifier, BertSpanLabeler, BertTokenClassifier, BertPretrainer (BertPretrainerV2 is refused).
A BertSpanLabeler and a 2-class BertTokenClassifier save the same tensors: the checkpoint's object graph (the model's
``span_labeling`` or ``classifier`` child) tells them apart.
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
# a TransformerScaffold sub-layer built from an explicit attention_cfg / feedforward_cfg takes its class's name
_SUBLAYER_ALIASES = {"talking_heads_attention": "self_attention", "multi_head_attention": "self_attention",
                     "gated_feedforward": "feedforward"}
_ALIASED = re.compile(rf"([a-z_]+?(?:_\d+)?)/({'|'.join(_SUBLAYER_ALIASES)})(?:_\d+)?/(.+)")
_EMBEDDINGS = {"word_embeddings/embeddings": "embeddings/word_embeddings",
               "position_embedding/embeddings": "embeddings/position_embeddings",
               "type_embeddings/embeddings": "embeddings/type_embeddings"}


def _is_bookkeeping(name: str) -> Optional[str]:
    if name == "save_counter" or name.endswith("save_counter/.ATTRIBUTES/VARIABLE_VALUE"):
        return "checkpoint bookkeeping (save_counter)"
    if ".OPTIMIZER_SLOT" in name or name.startswith("optimizer/") or re.match(r"^(Adam|AdamW|SGD|LAMB)[^/]*/", name):
        return "optimizer state"
    return None


def _canonical(name: str) -> str:
    """The name with a TransformerScaffold sub-layer named by its class (``transformer_scaffold/gated_feedforward/...``,
    ``.../talking_heads_attention/...``: an explicit feedforward_cfg / attention_cfg) under its default name
    (``feedforward``, ``self_attention``)."""
    m = _ALIASED.fullmatch(name)
    if m and not name.startswith("transformer/layer_"):
        return f"{m.group(1)}/{_SUBLAYER_ALIASES[m.group(2)]}/{m.group(3)}"
    return name


def _split_block(name: str) -> Optional[tuple[str, str]]:
    """(block prefix, rest) for a transformer-block variable name, else None."""
    name = _canonical(name)
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
        m = re.fullmatch(r"final_layer_norm/(gamma|beta)", name)   # EncoderScaffold(layer_norm_before_pooling=True)
        if m:
            return Target(f"final_layer_norm/{m.group(1)}")
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

IMPORTED = ("BertEncoder, AlbertEncoder and EncoderScaffold encoders, alone or under BertClassifier, BertSpanLabeler, "
            "BertTokenClassifier or BertPretrainer")
# the tables of Model Garden's standard embedding network (BertEncoder, AlbertEncoder, EncoderScaffold's default)
_TABLES = {"position_embedding/embeddings": "position embeddings", "type_embeddings/embeddings": "type embeddings"}
CUSTOM_MAX_SEQUENCE_LENGTH = 512   # a custom embedding network without a position table records no length


def _object_children(checkpoint) -> Optional[set]:
    """The local names of the children of the checkpoint's root and of each of its children (the model is one:
    ``tf.train.Checkpoint(model=...)``); None where the checkpoint has no object graph to read."""
    children = getattr(checkpoint, "object_children", None)
    root = children(()) if children is not None else None
    if root is None:
        return None
    found = set(root)
    for name in root:
        found |= set(children((name,)) or ())
    return found


def spec_from(source: Path, checkpoint) -> dict:
    location = checkpoint.location
    canonical = {}
    for raw in checkpoint.names():
        canonical.setdefault(_canonical(raw), raw)
    names = set(canonical)
    directory = source if source.is_dir() else source.parent
    cfg, cfg_path = _read_config(directory)
    assumed, notes = [], []

    def setting(key, default, what):
        if key in cfg:
            value = cfg[key]
            if type(value) is not type(default):   # "false" (a string) read as a flag was True
                raise WeightsError(f"{cfg_path}: {key} = {json.dumps(value, default=str)}: expected "
                                   f"{'true or false' if isinstance(default, bool) else 'a ' + type(default).__name__}")
            return value
        assumed.append(f"{what} {default}")
        return default

    def sublayers(prefix):
        return sorted({n[len(prefix) + 1:].split("/")[0] for n in names if n.startswith(prefix + "/")})

    def shape(name, what=""):
        if name not in canonical:
            block = next((p for p in prefixes if name.startswith(p + "/")), None)
            found = f" (block '{block}' holds sub-layers {', '.join(sublayers(block)) or 'none'})" if block else ""
            raise WeightsError(f"{location}: no tensor '{name}'{' (' + what + ')' if what else ''}{found}: not a "
                               f"checkpoint bertc can import; bertc imports Model Garden's {IMPORTED}")
        return checkpoint.shape(canonical[name])

    if "word_embeddings/embeddings" not in names:
        raise WeightsError(f"{location}: no 'word_embeddings/embeddings' tensor: not a checkpoint of "
                           f"a Model Garden BERT-family encoder (or of a task model holding one)")
    v2 = sorted(n for n in names if n.startswith("bert/"))
    if v2:
        raise UnsupportedModel(
            f"{location}: a Model Garden BertPretrainerV2 checkpoint (its heads' tensors are under 'bert/': "
            f"'{v2[0]}' ...): bertc does not import BertPretrainerV2; it imports Model Garden's {IMPORTED} "
            f"(BertPretrainer: masked-LM tensors under 'cls/predictions/')")
    prefixes: list = []
    vocab, width = shape("word_embeddings/embeddings")
    hidden = shape("embedding_projection/kernel")[1] if "embedding_projection/kernel" in names else width
    indices = block_indices(names)
    prefixes = sorted(indices, key=indices.get)
    if not prefixes:
        raise WeightsError(f"{location}: no transformer block tensors found")
    first = prefixes[0]
    heads = shape(f"{first}/self_attention/query/kernel", "the first block's attention query")[1]
    act_name = setting("hidden_activation", "gelu", "activation")
    if assumed:
        assumed[-1] = "activation gelu (Model Garden's default, tanh-approximated: bertc gelu_tanh)"
    if act_name not in _MG_ACTIVATIONS:
        raise UnsupportedModel(f"{cfg_path}: hidden_activation = {json.dumps(act_name)}: bertc computes "
                               f"{sorted(_MG_ACTIVATIONS)}; bertc refuses rather than approximate")
    act = _MG_ACTIVATIONS[act_name]
    kinds = {p: ("rezero" if f"{p}/rezero_alpha" in names
                 else "talking_heads" if f"{p}/self_attention/pre_softmax_weight" in names
                 else "gated" if f"{p}/feedforward/intermediate_0/kernel" in names else "transformer")
             for p in prefixes}
    bert_blocks = all(re.fullmatch(r"transformer/layer_\d+", p) for p in prefixes)
    # AlbertEncoder: one block named "transformer", shared by every layer, and a pooler_transform (an
    # EncoderScaffold's one block may be named "transformer" too, but its pooler is cls_transform)
    albert = cfg.get("type") == "albert" or (prefixes == ["transformer"] and "cls_transform/kernel" not in names)
    missing = [n for n in _TABLES if n not in names]
    custom = (not bert_blocks and not albert and len(missing) == len(_TABLES)
              and not any(n.startswith("embeddings/") for n in names))
    if missing and not custom:
        what = (f"{location}: no {' or '.join(repr(n) for n in missing)} tensor (the embedding network's "
                f"{' and '.join(_TABLES[n] for n in missing)})")
        if bert_blocks or albert:
            raise WeightsError(f"{what}: a Model Garden {'AlbertEncoder' if albert else 'BertEncoder'} always has "
                               f"word, position and type embeddings: a damaged or partial checkpoint")
        raise UnsupportedModel(
            f"{what}: bertc imports an EncoderScaffold's standard embedding network (word, position and type "
            f"embeddings with a layer norm) or one of word embeddings alone (the customize_encoder notebook's custom "
            f"network); write this one's spec by hand (a 'custom' embedding: use_position_embeddings, "
            f"use_type_embeddings, use_layer_norm)")
    if custom:
        max_len = CUSTOM_MAX_SEQUENCE_LENGTH
    else:
        max_len = shape("position_embedding/embeddings")[0]
    common = {"vocab_size": vocab, "hidden_size": hidden, "num_attention_heads": heads, "max_sequence_length": max_len,
              "type_vocab_size": None if custom else shape("type_embeddings/embeddings")[0], "activation": act,
              "layer_norm_epsilon": 1e-12}
    if albert:  # AlbertEncoder: (factorized) embeddings, one shared block
        if prefixes != ["transformer"]:
            where = f"{cfg_path}: type albert, but" if cfg.get("type") == "albert" else f"{location}:"
            raise WeightsError(f"{where} the checkpoint holds {len(prefixes)} transformer blocks ({first}, ...), not "
                               f"an AlbertEncoder's one shared block 'transformer'")
        layers = cfg.get("num_layers")
        if layers is not None and (type(layers) is not int or layers < 1):
            raise WeightsError(f"{cfg_path}: num_layers = {json.dumps(layers, default=str)}: expected a whole "
                               f"number of at least 1")
        if layers is None:
            raise UnsupportedModel(
                f"{location}: an AlbertEncoder checkpoint does not record num_layers (its one block is "
                f"shared); put Model Garden's encoder config beside it as encoder_config.json, e.g. "
                f'{{"type": "albert", "albert": {{"num_layers": 12}}}}')
        enc = {"type": "albert", **common, "embedding_width": width, "num_layers": layers,
               "intermediate_size": shape(f"{first}/intermediate/kernel", "the shared block's feedforward")[1]}
    elif bert_blocks and set(kinds.values()) == {"transformer"}:  # BertEncoder
        inner = shape(f"{first}/intermediate/kernel", "the first block's feedforward")[1]
        norm_first = setting("norm_first", False, "norm_first")
        if width == hidden and not norm_first:
            enc = {"type": "bert", **common, "num_layers": len(prefixes), "intermediate_size": inner,
                   "norm_first": norm_first}
        else:
            enc = _bert_as_scaffold(common, width, len(prefixes), inner, norm_first)
            why = []
            if width != hidden:
                why.append(f"embedding_width {width} (factorized embeddings, projected to hidden_size {hidden}, "
                           f"and a transformer block per layer), which bertc's bert encoder does not take")
            if norm_first:
                why.append("norm_first (pre-layer-norm blocks and no final layer norm: bertc's bert encoder with "
                           "norm_first adds a final layer norm)")
            notes.append(f"Model Garden's BertEncoder with {' and '.join(why)}, written as a scaffold encoder")
    else:
        enc = _scaffold_spec(common, prefixes, kinds, names, shape, sublayers, location, custom, width, assumed)
        if custom:
            notes.append("a custom embedding network of word embeddings alone (no position or type embeddings, "
                         "no layer norm; inputs input_word_ids and input_mask), as the customize_encoder notebook's")
            assumed.append(f"max_sequence_length {CUSTOM_MAX_SEQUENCE_LENGTH} (a custom embedding network without "
                           f"a position table records none)")
    head = _head(names, shape, _object_children(checkpoint), assumed)
    if head and head["type"] == "pretrainer":
        head["num_token_predictions"] = min(20, common["max_sequence_length"])
        head["activation"] = "linear"
        assumed.append(f"num_token_predictions {head['num_token_predictions']} (min(20, max_sequence_length); "
                       f"the masked_lm_positions input's width)")
        assumed.append("output logits (BertPretrainer's output='logits'; 'predictions' for log-probabilities)")
        assumed.append("masked-LM transform activation linear (BertPretrainer's default activation=None)")
    notes_text = "".join(f"; {n}" for n in notes)
    assumptions = f"; assumed (not in the checkpoint): {', '.join(assumed)}" if assumed else ""
    spec = {"description": f"Imported from the Model Garden checkpoint {directory.name}/{location.name}"
                           f"{' with ' + cfg_path.name if cfg_path else ''} by bertc import (shapes of "
                           f"{len(names)} tensors){notes_text}{assumptions}.", "encoder": enc}
    if head:
        spec["head"] = head
    return spec


def _bert_as_scaffold(common, width, num_layers, inner, norm_first) -> dict:
    """Model Garden's BertEncoder as a scaffold encoder: its standard embedding network (with ``embedding_width``
    where it is factorized) and a transformer block per layer; pre-layer-norm blocks without a final layer norm."""
    embedding = {"type": "standard", "vocab_size": common["vocab_size"],
                 "type_vocab_size": common["type_vocab_size"], "max_sequence_length": common["max_sequence_length"]}
    if width != common["hidden_size"]:
        embedding["embedding_width"] = width
    block = {"type": "transformer", "num_attention_heads": common["num_attention_heads"], "intermediate_size": inner,
             "activation": common["activation"], "norm_first": norm_first,
             "layer_norm_epsilon": common["layer_norm_epsilon"]}
    return {"type": "scaffold", "hidden_size": common["hidden_size"], "num_layers": num_layers,
            "embedding": embedding, "hidden": block}


def _scaffold_spec(common, prefixes, kinds, names, shape, sublayers, location, custom, width, assumed) -> dict:
    if len(set(kinds.values())) != 1:
        raise UnsupportedModel(f"{location}: blocks of different kinds {sorted(set(kinds.values()))}: write the "
                               f"spec by hand (bertc's scaffold encoder takes one block spec per layer)")
    kind, first = kinds[prefixes[0]], prefixes[0]
    if f"{first}/intermediate/kernel" not in names and f"{first}/feedforward/intermediate_0/kernel" not in names:
        raise UnsupportedModel(
            f"{location}: block '{first}' has no feedforward bertc reads (neither '{first}/intermediate/kernel' nor "
            f"'{first}/feedforward/intermediate_0/kernel'; it holds sub-layers {', '.join(sublayers(first))}): "
            f"bertc imports "
            f"EncoderScaffold blocks of Transformer, TransformerScaffold (dense or GatedFeedforward feedforward, "
            f"multi-head or talking-heads attention) and ReZeroTransformer")
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
        assumed.append("post-layer-norm blocks (norm_first false: a block's tensors do not tell)")
    if block["type"] == "rezero":
        block["layer_norm_epsilon"] = common["layer_norm_epsilon"]
    if custom:
        embedding = {"type": "custom", "vocab_size": common["vocab_size"],
                     "max_sequence_length": common["max_sequence_length"]}
    else:
        embedding = {"type": "standard", "vocab_size": common["vocab_size"],
                     "type_vocab_size": common["type_vocab_size"], "max_sequence_length": common["max_sequence_length"]}
    if width != common["hidden_size"]:
        embedding["embedding_width"] = width
    pooled = shape("cls_transform/kernel")[1] if "cls_transform/kernel" in names else None
    enc = {"type": "scaffold", "hidden_size": common["hidden_size"], "num_layers": len(prefixes),
           "embedding": embedding, "hidden": block}
    if pooled:
        enc["pooled_output_dim"] = pooled
    if "final_layer_norm/gamma" in names:   # EncoderScaffold(layer_norm_before_pooling=True)
        enc["final_layer_norm"] = True
    return enc


def _head(names, shape, children, assumed) -> Optional[dict]:
    """The task head the checkpoint's tensors (and, for 2 classes per token, its object graph) say."""
    if "sentence_prediction/logits/kernel" in names:
        return {"type": "classifier", "num_classes": shape("sentence_prediction/logits/kernel")[1]}
    if "cls/predictions/output_bias/bias" in names:
        return {"type": "pretrainer", "num_token_predictions": 1,
                "num_classes": shape("predictions/transform/logits/kernel", "BertPretrainer's classification")[1],
                "output": "logits"}
    if "predictions/transform/logits/kernel" in names:
        n = shape("predictions/transform/logits/kernel")[1]
        if n != 2:
            return {"type": "token_classifier", "num_classes": n}
        # BertSpanLabeler and a 2-class BertTokenClassifier save the same tensors; the object graph names the
        # layer: BertSpanLabeler's span_labeling, BertTokenClassifier's classifier
        if children is not None and "span_labeling" in children:
            return {"type": "span_labeler"}
        if children is not None and "classifier" in children:
            return {"type": "token_classifier", "num_classes": 2}
        assumed.append('head span_labeler (BertSpanLabeler; a 2-class BertTokenClassifier saves the same tensors and '
                       'the object graph does not say which: for one, use head {"type": "token_classifier", '
                       '"num_classes": 2})')
        return {"type": "span_labeler"}
    return None
