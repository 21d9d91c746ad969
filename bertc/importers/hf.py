"""Hugging Face checkpoints (``config.json`` + safetensors), and sentence-transformers directories.

A *family* (:class:`HFFamily`, registered with :func:`register_family`) knows one group of ``model_type``
values: how their ``config.json`` becomes a bertc encoder (and head) spec, and how their tensor names
(``bert.encoder.layer.0.attention.self.query.weight``) become bertc weight paths
(``layer_0/attention/query/kernel``; torch ``Linear`` weights are (out, in) and are transposed). BERT and
ALBERT are defined here; every other family lives in its own module ``hf_<family>.py``, imported at the
bottom. Anything bertc cannot compute exactly is refused, naming the key.
"""
from __future__ import annotations

import json
import os
import math
import re
from pathlib import Path
from typing import Optional

from bertc.checkpoints import (TRANSFORMER_MODULES, check_module_path, checkpoint_text, dense_module_paths,
                               json_loads, sentence_transformers_root)
from bertc.components.heads import POOLING_MODES, pooling_modes
from bertc.errors import UnsupportedModel, WeightsError
from bertc.spec import LONG_CONTEXT
from bertc.weights import Ignored, Target

NAME = "huggingface"

# HF hidden_act -> bertc activation. HF "gelu" is the exact (erf) GELU; gelu_new / gelu_pytorch_tanh /
# gelu_python_tanh / gelu_fast are the tanh approximation (the same formula, written differently).
ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_python_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu", "tanh": "tanh", "silu": "silu", "swish": "silu",
               "linear": "linear"}

DEFAULT_MLM_PREDICTIONS = 20  # masked positions per sequence of a pretrainer spec (original BERT's choice at 128)

_LINEAR = ("weight", "bias")
_LN = {"weight": "gamma", "bias": "beta", "gamma": "gamma", "beta": "beta"}

_BUFFERS = {"embeddings.position_ids": "buffer of position indices 0..N-1 (not a weight)",
            "embeddings.token_type_ids": "buffer of zero token-type ids (not a weight)"}


def _param(kind: str, leaf: str, base: str) -> Optional[Target]:
    if kind == "linear" and leaf in _LINEAR:
        return Target(f"{base}/kernel", "transpose") if leaf == "weight" else Target(f"{base}/bias")
    if kind == "ln" and leaf in _LN:
        return Target(f"{base}/{_LN[leaf]}")
    return None


_EMBEDDINGS = {"word_embeddings.weight": "embeddings/word_embeddings",
               "position_embeddings.weight": "embeddings/position_embeddings",
               "token_type_embeddings.weight": "embeddings/type_embeddings"}

_BERT_LAYER = {"attention.self.query": ("linear", "attention/query"), "attention.self.key": ("linear", "attention/key"),
               "attention.self.value": ("linear", "attention/value"),
               "attention.output.dense": ("linear", "attention/attention_output"),
               "attention.output.LayerNorm": ("ln", "attention_layer_norm"),
               "intermediate.dense": ("linear", "feedforward/intermediate"),
               "output.dense": ("linear", "feedforward/output"),
               "output.LayerNorm": ("ln", "feedforward/output_layer_norm")}

_ALBERT_LAYER = {"attention.query": ("linear", "attention/query"), "attention.key": ("linear", "attention/key"),
                 "attention.value": ("linear", "attention/value"),
                 "attention.dense": ("linear", "attention/attention_output"),
                 "attention.LayerNorm": ("ln", "attention_layer_norm"),
                 "ffn": ("linear", "feedforward/intermediate"), "ffn_output": ("linear", "feedforward/output"),
                 "full_layer_layer_norm": ("ln", "feedforward/output_layer_norm")}


def layer_param(stem: str, leaf: str, prefix: str, table: dict) -> Optional[Target]:
    """A per-layer tensor ``{prefix}.N.{sub}.{leaf}`` through ``table`` ({sub: (kind, bertc sub-path)}) ->
    ``layer_N/{sub-path}``; None when it is not one."""
    m = re.fullmatch(rf"{re.escape(prefix)}\.(\d+)\.(.+)", stem)
    if m and m.group(2) in table:
        kind, sub = table[m.group(2)]
        return _param(kind, leaf, f"layer_{m.group(1)}/{sub}")
    return None


def decoder_param(name: str, weight: tuple, bias: tuple, tied_bias: tuple = (), tied: bool = True) -> Optional[Target]:
    """A masked-LM decoder's tensors: ``weight`` names (a tied copy of the word embeddings), ``bias`` names (the
    output bias) and ``tied_bias`` names (the decoder Linear's own bias: a tied copy of it); None for any other
    name.

    ``tied`` false (``tie_word_embeddings: false``, the head's ``decoder_tied``): the weight is the head's own
    ``masked_lm/decoder`` table, and the decoder's bias is its own too. transformers 5 then reads the Linear's
    bias (``tied_bias``) and leaves the head's ``bias`` unread; transformers 4 made them one tensor, which its
    safetensors files save once, under the ``bias`` name. So the ``tied_bias`` tensor where the file has it, else
    the ``bias`` one."""
    if name in weight:
        return Target("embeddings/word_embeddings", tied=True) if tied else Target("masked_lm/decoder")
    if tied and (name in bias or name in tied_bias):
        return Target("masked_lm/output_bias", tied=name in tied_bias)
    if name in tied_bias:
        return Target("masked_lm/output_bias")
    if name in bias:
        own = next((b for b in tied_bias if b.startswith(name.rpartition(".")[0] + ".")), ", ".join(tied_bias))
        return Target("masked_lm/output_bias", fallback=(
            f"not read: with tie_word_embeddings false the decoder adds its own bias ({own}), as transformers 5 "
            f"does") if tied_bias else "")
    return None


def decoder_tied(spec) -> bool:
    """Whether the spec's masked-LM decoder (a ``masked_lm`` or ``pretrainer`` head's) is the word table. A spec
    whose head reads no decoder (the encoder alone, a sentence embedding, a classifier) has none: the checkpoint's
    decoder is a head tensor it does not load, tied or not (an untied one was held to equal the word table, and
    ``bertc import --encoder-only`` of an untied masked LM could never be built)."""
    head = getattr(spec, "head", None)
    if getattr(head, "type", None) not in ("masked_lm", "pretrainer"):
        return False
    return getattr(head, "decoder_tied", True)


def tie_word_embeddings(cfg: dict, where: str, defaults: Optional[dict] = None) -> dict:
    """The masked-LM head's ``decoder_tied`` (as a dict to merge into the head: empty where it is tied, the
    default) from ``tie_word_embeddings`` (transformers' default: true)."""
    tied = ConfigValues(cfg, where, defaults).bool("tie_word_embeddings", True)
    return {} if tied else {"decoder_tied": False}


def _split(name: str) -> tuple[str, str]:
    stem, _, leaf = name.rpartition(".")
    return stem, leaf


def _encoder_param(rest: str) -> Optional[Target]:
    """A tensor name without the ``bert.`` / ``albert.`` prefix."""
    if rest in _BUFFERS:
        return Ignored(_BUFFERS[rest])
    if rest.startswith("embeddings."):
        sub = rest[len("embeddings."):]
        if sub in _EMBEDDINGS:
            return Target(_EMBEDDINGS[sub])
        stem, leaf = _split(sub)
        if stem == "LayerNorm":
            return _param("ln", leaf, "embeddings/layer_norm")
        return None
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", rest)
    if m:
        stem, leaf = _split(m.group(2))
        if stem in _BERT_LAYER:
            kind, sub = _BERT_LAYER[stem]
            return _param(kind, leaf, f"layer_{m.group(1)}/{sub}")
        return None
    m = re.fullmatch(r"encoder\.albert_layer_groups\.0\.albert_layers\.0\.(.+)", rest)
    if m:
        stem, leaf = _split(m.group(1))
        if stem in _ALBERT_LAYER:
            kind, sub = _ALBERT_LAYER[stem]
            return _param(kind, leaf, f"shared_layer/{sub}")
        return None
    stem, leaf = _split(rest)
    if stem == "encoder.embedding_hidden_mapping_in":
        return _param("linear", leaf, "embeddings/embedding_projection")
    if stem in ("pooler.dense", "pooler"):
        return _param("linear", leaf, "pooler")
    return None


def _head_param(name: str, head: Optional[str], tied: bool = True) -> Optional[Target]:
    stem, leaf = _split(name)
    if stem == "classifier":  # BertFor{Sequence,Token}Classification both call their head "classifier"
        return _param("linear", leaf, "token_classifier" if head == "token_classifier" else "classifier")
    if stem == "qa_outputs":
        return _param("linear", leaf, "span_labeler")
    # BERT masked LM / next sentence
    if stem in ("cls.predictions.transform.dense", "predictions.dense"):
        return _param("linear", leaf, "masked_lm/transform")
    if stem in ("cls.predictions.transform.LayerNorm", "predictions.LayerNorm"):
        return _param("ln", leaf, "masked_lm/transform_layer_norm")
    decoder = decoder_param(name, ("cls.predictions.decoder.weight", "predictions.decoder.weight"),
                            ("cls.predictions.bias", "predictions.bias"),
                            ("cls.predictions.decoder.bias", "predictions.decoder.bias"), tied)
    if decoder is not None:
        return decoder
    if stem in ("cls.seq_relationship", "sop_classifier.classifier"):
        return _param("linear", leaf, "next_sentence")
    return None


def translator(names, spec, location=None):
    """Tensor name -> target, by the family of the ``config.json`` beside the weights at ``location`` (BERT's
    names when there is none: a bare BERT state dict)."""
    family, dense = FAMILIES["bert"], {}
    if location is not None:
        where = Path(location) if Path(location).is_dir() else Path(location).parent
        if (where / "config.json").is_file():
            family = family_for(read_json(where / "config.json"), str(where / "config.json"))
        st_root = sentence_transformers_root(where)   # the weights' folder, or (before v2) the one above it
        dense = {folder: i for i, folder in enumerate(dense_module_paths(st_root))} if st_root else {}

    # BertForNextSentencePrediction: its one head, cls.seq_relationship, is a classifier's (a classifier checkpoint
    # holding a next-sentence head beside its own has that head named as one the model lacks; a pre-training
    # checkpoint, its masked-LM head beside it, is no next-sentence classifier: a reviewer, its NSP head loaded as a
    # 2-class spec's classifier once the masked-LM head was ignored as another head)
    nsp_classifier = getattr(spec.head, "type", None) == "classifier" and isinstance(family, Bert) and not any(
        n.startswith(("classifier.", "cls.predictions.")) for n in names)

    def translate(name: str):
        folder, _, leaf = name.rpartition("/")
        if folder in dense:     # a sentence-transformers Dense module (bertc.checkpoints.ModulesCheckpoint)
            return _param("linear", leaf.removeprefix("linear."), f"sentence_dense_{dense[folder]}_transform")
        if nsp_classifier and name.startswith("cls.seq_relationship."):
            return _param("linear", name.rpartition(".")[2], "classifier")
        return family.translate(name, spec)

    return translate


# --- families ------------------------------------------------------------------------------------------

class HFFamily:
    """One group of Hugging Face ``model_type`` values. A family overrides ``encoder`` and ``translate``;
    ``head`` defaults to BERT's rules (classifier, token classifier, span labeler, pretrainer)."""

    model_types: tuple = ()
    architectures: dict = {}    # HF architecture name -> bertc head type (None: the encoder alone)
    masked_lm: tuple = ()       # masked-LM-only architectures (see ``head``)
    base_architecture = "?"     # what a config without ``architectures`` is
    defaults: dict = {}         # the config class's defaults, for the keys config.json may leave out

    def encoder(self, cfg: dict, where: str, max_len: Optional[int]) -> dict:
        raise NotImplementedError

    def translate(self, name: str, spec) -> Optional[Target]:
        raise NotImplementedError

    def head(self, cfg: dict, where: str, enc: dict, arch: str, names=()) -> Optional[dict]:
        return head_from_config(cfg, where, enc, arch, self, names)

    def has_pooler(self, names) -> bool:
        """Whether the checkpoint's tensors include the encoder's pooler (an encoder without a head needs it)."""
        return any(".pooler." in f".{n}" for n in names)

    def known_architectures(self) -> list:
        return [*self.architectures, *self.masked_lm]


FAMILIES: dict = {}


def register_family(family: HFFamily) -> HFFamily:
    for model_type in family.model_types:
        FAMILIES[model_type] = family
    return family


# the model type an architecture's class name belongs to, by its prefix (longest first): a config.json without
# model_type (many 2019-era checkpoints) is told what to add
_ARCHITECTURE_PREFIXES = (("XLMRoberta", "xlm-roberta"), ("DistilBert", "distilbert"), ("ModernBert", "modernbert"),
                          ("DebertaV2", "deberta-v2"), ("Camembert", "camembert"), ("Roberta", "roberta"),
                          ("Albert", "albert"), ("Electra", "electra"), ("MPNet", "mpnet"), ("Bert", "bert"))


def _known_architectures(family) -> set:
    return set(getattr(family, "architectures", {}) or {}) | set(getattr(family, "masked_lm", ()) or ())


def family_for(cfg: dict, where: str) -> HFFamily:
    model_type = cfg.get("model_type")
    if "model_type" not in cfg:
        archs = [a for a in cfg.get("architectures") or [] if isinstance(a, str)] \
            if isinstance(cfg.get("architectures"), list) else []
        # the family whose prefix the name has, where that family imports the architecture (RobertaPreLayerNorm...
        # or BertGeneration... have such a prefix and are no family bertc imports)
        guess = next((t for a in archs for prefix, t in _ARCHITECTURE_PREFIXES
                      if a.startswith(prefix) and t in FAMILIES and a in _known_architectures(FAMILIES[t])), None)
        raise UnsupportedModel(
            f"{where}: has no model_type (transformers 5 needs it as well; older versions guessed it from the folder's "
            f"name)" + (f": add \"model_type\": \"{guess}\" (architectures {archs[0]})" if guess else
                        f"; bertc imports the model types {', '.join(sorted(FAMILIES))}"))
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        refuse(where, "model_type", model_type, f"bertc imports the model types {', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]


class Bert(HFFamily):
    model_types = ("bert",)
    architectures = {"BertModel": None, "BertForSequenceClassification": "classifier",
                     "BertForTokenClassification": "token_classifier", "BertForQuestionAnswering": "span_labeler",
                     "BertForMultipleChoice": "multiple_choice", "BertForPreTraining": "pretrainer",
                     # the pooler + cls.seq_relationship: a two-class classifier of the pooled output
                     "BertForNextSentencePrediction": "next_sentence"}
    # A masked-LM-only checkpoint (bert-base-uncased says BertForMaskedLM) is a pretrainer when its file also
    # has the next-sentence head (saved from pretraining: bertc's pretrainer head always has next-sentence), else
    # a masked_lm head (logits at every token; what run_mlm.py saves, without pooler or next-sentence head).
    masked_lm = ("BertForMaskedLM",)
    base_architecture = "BertModel"
    defaults = property(lambda self: BERT_DEFAULTS)

    def encoder(self, cfg, where, max_len):
        return encoder_from_config(cfg, where, max_len)

    def translate(self, name, spec):
        head = spec.head.type if spec.head is not None else None
        for prefix in ("bert.", "albert."):
            if name.startswith(prefix):
                return _encoder_param(name[len(prefix):])
        return _encoder_param(name) or _head_param(name, head, decoder_tied(spec))


class Albert(Bert):
    model_types = ("albert",)
    architectures = {"AlbertModel": None, "AlbertForSequenceClassification": "classifier",
                     "AlbertForTokenClassification": "token_classifier",
                     "AlbertForQuestionAnswering": "span_labeler", "AlbertForMultipleChoice": "multiple_choice",
                     "AlbertForPreTraining": "pretrainer"}
    masked_lm = ("AlbertForMaskedLM",)
    base_architecture = "AlbertModel"
    defaults = property(lambda self: ALBERT_DEFAULTS)


register_family(Bert())
register_family(Albert())


# --- config.json -> spec -----------------------------------------------------------------------------

def refuse(where: str, key: str, value, why: str):
    raise UnsupportedModel(f"{where}: {key} = {json.dumps(value)}: {why}; bertc refuses rather than approximate")


def invalid(where: str, key: str, value, expected: str):
    """A config value transformers could not use either (a wrong type, null, out of range): named, with what
    the key takes."""
    raise WeightsError(f"{where}: {key} = {json.dumps(value)}: not a valid value (expected {expected})")


_NO_DEFAULT = object()
_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


class ConfigValues:
    """Typed reads of one config file (``where`` names it in messages): a key's value, or ``defaults[key]`` (the
    transformers config class's default) where the key is absent; a value of another type (null included,
    unless ``nullable``) or below ``minimum`` is refused, naming the key and the value. A key that is absent
    and has no default is named as missing."""

    def __init__(self, cfg: dict, where: str, defaults: Optional[dict] = None):
        self.cfg, self.where, self.defaults = cfg, where, defaults or {}

    def has(self, key: str) -> bool:
        return key in self.cfg

    def raw(self, key: str, default=_NO_DEFAULT):
        if key in self.cfg:
            return self.cfg[key]
        if default is _NO_DEFAULT:
            default = self.defaults.get(key, _NO_DEFAULT)
        if default is _NO_DEFAULT:
            raise WeightsError(f"{self.where}: missing config key {key!r}")
        return default

    def value(self, key: str, kind: str, default=_NO_DEFAULT, minimum=None, nullable: bool = False):
        value = self.raw(key, default)
        if value is None and nullable:
            return None
        ok = {"int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
              "bool": isinstance(value, bool), "str": isinstance(value, str)}[kind]
        expected = _KINDS[kind] + (" or null" if nullable else "")
        if not ok:
            invalid(self.where, key, value, expected)
        if minimum is not None and value < minimum:
            invalid(self.where, key, value, f"{expected} of at least {minimum}")
        return float(value) if kind == "float" else value

    def int(self, key: str, default=_NO_DEFAULT, minimum=None, nullable: bool = False):
        return self.value(key, "int", default, minimum, nullable)

    def float(self, key: str, default=_NO_DEFAULT, minimum=None, nullable: bool = False):
        return self.value(key, "float", default, minimum, nullable)

    def bool(self, key: str, default=_NO_DEFAULT, nullable: bool = False):
        return self.value(key, "bool", default, None, nullable)

    def str(self, key: str, default=_NO_DEFAULT, nullable: bool = False):
        return self.value(key, "str", default, None, nullable)

    def _within(self, key: str, default, nullable: bool, low, high, low_open: bool, high_open: bool, what: str):
        value = self.float(key, default, nullable=nullable)
        if value is not None and not ((low < value if low_open else low <= value)
                                      and (value < high if high_open else value <= high)):
            refuse(self.where, key, self.cfg.get(key, value),
                   f"bertc's {what} are {'>' if low_open else '>='} {low} and {'<' if high_open else '<='} {high}")
        return value

    def rate(self, key: str, default=_NO_DEFAULT, nullable: bool = False):
        """A dropout rate (bertc's: 0 <= rate < 1)."""
        return self._within(key, default, nullable, 0.0, 1.0, False, True, "dropout rates")

    def epsilon(self, key: str, default=_NO_DEFAULT):
        """A layer norm's epsilon (bertc's: 0 < epsilon <= 0.1)."""
        return self._within(key, default, False, 0.0, 0.1, True, False, "layer norm epsilons")

    def stddev(self, key: str, default=_NO_DEFAULT):
        """``initializer_range`` (bertc's initializers: 0 < stddev <= 10)."""
        return self._within(key, default, False, 0.0, 10.0, True, False, "initializer standard deviations")

    def activation(self, key: str, default=_NO_DEFAULT) -> str:
        return activation(self.where, key, self.raw(key, default))


def read_json(path: Path) -> dict:
    """A checkpoint's JSON config as a dict; one that is not a regular file (a FIFO, /dev/zero) or that is larger
    than any config (:data:`bertc.checkpoints.JSON_LIMIT`) is refused before it is read."""
    try:
        data = json_loads(checkpoint_text(path, "config"))
    except FileNotFoundError:
        raise WeightsError(f"{path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return data


def activation(where: str, key: str, value) -> str:
    if not isinstance(value, str) or value not in ACTIVATIONS:
        refuse(where, key, value, f"bertc has no such activation (it has {', '.join(sorted(set(ACTIVATIONS)))})")
    return ACTIVATIONS[value]


# transformers' defaults for a key config.json leaves out (BertConfig, AlbertConfig)
BERT_DEFAULTS = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                 "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
                 "initializer_range": 0.02, "layer_norm_eps": 1e-12, "classifier_dropout": None}
ALBERT_DEFAULTS = {**BERT_DEFAULTS, "vocab_size": 30000, "embedding_size": 128, "hidden_size": 4096,
                   "num_attention_heads": 64, "intermediate_size": 16384, "hidden_act": "gelu_new",
                   "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout_prob": 0.1}


def encoder_from_config(cfg: dict, where: str, max_len: Optional[int] = None, defaults: Optional[dict] = None) -> dict:
    """The bertc encoder spec of a HF BERT / ALBERT config (``where`` names the file in messages; ``defaults``:
    the values of keys it leaves out, the config class's, BERT's or ALBERT's by ``model_type`` when not given)."""
    model_type = cfg.get("model_type")
    for key, ok in (("position_embedding_type", "absolute"), ("is_decoder", False), ("add_cross_attention", False)):
        if cfg.get(key, ok) != ok:
            refuse(where, key, cfg[key], f"bertc computes only {key} = {json.dumps(ok)}")
    if model_type == "albert":
        for key in ("num_hidden_groups", "inner_group_num"):
            if cfg.get(key, 1) != 1:
                refuse(where, key, cfg[key], "bertc's ALBERT shares one block across all layers (1 group of 1 layer)")
    c = ConfigValues(cfg, where, defaults or (ALBERT_DEFAULTS if model_type == "albert" else BERT_DEFAULTS))
    positions = c.int("max_position_embeddings", minimum=1)
    hidden = c.int("hidden_size", minimum=1)
    enc = {"type": model_type, "vocab_size": c.int("vocab_size", minimum=1), "hidden_size": hidden,
           "num_layers": c.int("num_hidden_layers", minimum=1),
           "num_attention_heads": c.int("num_attention_heads", minimum=1),
           "intermediate_size": c.int("intermediate_size", minimum=1),
           "activation": c.activation("hidden_act"),
           "dropout_rate": c.rate("hidden_dropout_prob"),
           "attention_dropout_rate": c.rate("attention_probs_dropout_prob"),
           "max_sequence_length": min(positions, max_len) if max_len else positions,
           "type_vocab_size": c.int("type_vocab_size", minimum=1),
           # HF initialises Linear / Embedding weights from N(0, initializer_range)
           "initializer": {"type": "normal", "stddev": c.stddev("initializer_range")},
           "layer_norm_epsilon": c.epsilon("layer_norm_eps")}
    if model_type == "albert":
        width = c.int("embedding_size", minimum=1)
        enc["embedding_width"] = width
        if width == hidden:   # AlbertTransformer applies embedding_hidden_mapping_in whatever the widths
            enc["embedding_projection"] = "always"
    return enc


def _classifier_dropout(cfg: dict, where: str = "config.json") -> float:
    c = ConfigValues(cfg, where, ALBERT_DEFAULTS if cfg.get("model_type") == "albert" else BERT_DEFAULTS)
    if cfg.get("model_type") == "albert":
        return c.rate("classifier_dropout_prob")
    value = c.rate("classifier_dropout", nullable=True)
    return c.rate("hidden_dropout_prob") if value is None else value


def architectures(cfg: dict, where: str, family: HFFamily) -> list:
    """``architectures`` (a list of class names; the family's base model when the config has none)."""
    archs = cfg.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        invalid(where, "architectures", archs, "a list of class names, such as "
                                               f"{json.dumps([family.base_architecture])}")
    return archs or [family.base_architecture]


def architecture(cfg: dict, where: str, family: HFFamily) -> str:
    """The model's architecture (``architectures[0]``; the family's base model when the config has none),
    refused unless the family knows it."""
    archs = architectures(cfg, where, family)
    if archs[0] not in family.known_architectures():
        refuse(where, "architectures", archs, f"bertc imports {', '.join(family.known_architectures())}")
    return archs[0]


def num_labels(cfg: dict, where: str = "config.json") -> int:
    """The number of labels as transformers counts them: ``id2label``'s entries, else ``num_labels`` (2)."""
    if isinstance(cfg.get("id2label"), dict):
        return len(cfg["id2label"])
    return ConfigValues(cfg, where).int("num_labels", 2, minimum=1)


def head_from_config(cfg: dict, where: str, enc: dict, arch: str, family: HFFamily, names=()) -> Optional[dict]:
    """BERT's head rules for ``arch`` (a known architecture of ``family``)."""
    if arch in family.masked_lm:
        nsp = any(n.startswith(("cls.seq_relationship.", "sop_classifier.")) for n in names)
        if not nsp:   # BertOnlyMLMHead / AlbertMLMHead: dense (to the embedding width) + hidden_act + layer norm
            return {"type": "masked_lm", "transform": {"activation": enc["activation"],
                                                       "layer_norm": {"epsilon": enc["layer_norm_epsilon"]}},
                    **tie_word_embeddings(cfg, where)}
        head = "pretrainer"
    else:
        head = family.architectures[arch]
    labels = num_labels(cfg, where)
    if head in ("classifier", "token_classifier"):
        return {"type": head, "num_classes": labels, "dropout_rate": _classifier_dropout(cfg, where)}
    if head == "next_sentence":   # BertOnlyNSPHead: a Linear of the pooled output (no dropout), 2 outputs whatever
        return {"type": "classifier", "num_classes": 2, "dropout_rate": 0.0}   # num_labels says
    if head == "multiple_choice":   # one score a (context, choice) row: num_labels plays no part
        return {"type": head, "dropout_rate": _classifier_dropout(cfg, where)}
    if head == "span_labeler":
        if labels != 2:
            refuse(where, "num_labels", labels, "a question-answering head has 2 outputs (start, end)")
        return {"type": "span_labeler"}
    if head == "pretrainer":
        return {"type": "pretrainer", "num_token_predictions": min(DEFAULT_MLM_PREDICTIONS, enc["max_sequence_length"]),
                "num_classes": 2, "output": "logits", "activation": enc["activation"],
                "layer_norm_epsilon": enc["layer_norm_epsilon"], **tie_word_embeddings(cfg, where)}
    return None


# --- sentence-transformers ---------------------------------------------------------------------------

# sentence-transformers' legacy flags, in the order it concatenates their vectors
_LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
                   "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                   "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


def sentence_transformers_modules(root: Path) -> Optional[dict]:
    """For a sentence-transformers directory: transformer path, head spec, max length; else None."""
    modules_file = root / "modules.json"
    if not modules_file.exists():
        return None
    try:
        modules = json_loads(checkpoint_text(modules_file, "modules.json"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{modules_file}: not readable JSON: {exc}") from None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise WeightsError(f"{modules_file}: expected a JSON list of modules (objects with type and path)")
    for i, m in enumerate(modules):
        if not isinstance(m.get("path", ""), str):
            invalid(str(modules_file), f"[{i}].path", m["path"], "a folder name, relative to the model's")
        check_module_path(root, m.get("path", ""))
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    st_config = root / "config_sentence_transformers.json"
    cross_encoder = st_config.is_file() and read_json(st_config).get("model_type") == "CrossEncoder"
    if cross_encoder or (len(kinds) == 1 and kinds[0] in TRANSFORMER_MODULES and not modules[0].get("path")):
        return None   # a CrossEncoder (v5 and later) or a bare transformers model: its own head, as transformers has it
    transformer, pooling, normalize, dense = None, None, False, []
    for i, m in enumerate(modules):
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        where = f"{modules_file}: module {i} ({m.get('path') or m.get('name')})"
        if kind in TRANSFORMER_MODULES and transformer is None:
            transformer = root / m.get("path", "")
        elif kind == "Pooling" and pooling is None and transformer is not None:
            pooling = _pooling_mode(root / m.get("path", "") / "config.json")
        elif kind == "Dense" and pooling is not None and not normalize:
            dense.append(_dense_module(root / m.get("path", "") / "config.json"))
        elif kind == "Normalize" and pooling is not None and not normalize:
            normalize = True
        else:
            refuse(where, "type", m.get("type"), "bertc's sentence_embedding head is Transformer -> Pooling "
                                                  "-> Dense modules, if any -> optional Normalize")
    if transformer is None or pooling is None:
        raise WeightsError(f"{modules_file}: needs a Transformer and a Pooling module")
    # the length the model truncates to: sentence_bert_config.json (up to v5), else the tokenizer's (v6)
    max_len = None
    st_config = transformer / "sentence_bert_config.json"
    if st_config.exists():   # sentence-transformers reads it as it is (no cast): an integer or null
        st_values = read_json(st_config)
        max_len = ConfigValues(st_values, str(st_config)).int("max_seq_length", None, minimum=1, nullable=True)
        kwargs = st_values.get("processing_kwargs") if isinstance(st_values, dict) else None
        if kwargs:   # sentence-transformers 6 passes these to its tokenizer on every encode (a text / common
            # max_length cut texts at 12 tokens where bertc cut at max_seq_length's 24: other embeddings, exit 0)
            refuse(str(st_config), "processing_kwargs", kwargs, "sentence-transformers 6's tokenizer arguments "
                   "(a max_length, truncation or padding of their own) are not read by bertc, which tokenizes as "
                   "max_seq_length and the tokenizer files say: set max_seq_length to the length they give and "
                   "remove processing_kwargs")
    if max_len is None and (transformer / "tokenizer_config.json").exists():
        from bertc.text import model_max_length

        max_len = model_max_length(read_json(transformer / "tokenizer_config.json").get("model_max_length"))
    head = {"type": "sentence_embedding", "pooling": pooling, "normalize": normalize}
    if dense:
        head = {"type": "sentence_embedding", "pooling": pooling, "dense": [d for d, _ in dense],
                "normalize": normalize}
    return {"transformer": transformer, "head": head, "max_len": max_len, "dense_inputs": [n for _, n in dense]}


def check_dense_widths(head: dict, inputs: list, width: Optional[int]) -> None:
    """Each Dense module's ``in_features`` against the width of the vector it reads (the pooled vector's: the
    hidden size per pooling mode, then the units of the Dense before it)."""
    if width is not None:
        width *= len(pooling_modes(head["pooling"]))
    for d, (n_in, where) in zip(head.get("dense", []), inputs):
        if width is not None and n_in != width:
            refuse(where, "in_features", n_in, f"the vector before this Dense module has {width} values")
        width = d["units"]


# sentence-transformers Dense ``activation_function`` (a torch.nn module's full name) -> bertc's activation
_DENSE_ACTIVATIONS = {"torch.nn.modules.activation.Tanh": "tanh", "torch.nn.modules.linear.Identity": "linear",
                      "torch.nn.modules.activation.ReLU": "relu", "torch.nn.modules.activation.GELU": "gelu",
                      "torch.nn.modules.activation.SiLU": "silu"}


def _dense_module(path: Path) -> tuple[dict, tuple]:
    """A sentence-transformers Dense module's config.json -> (one ``dense`` entry of the head, (its
    ``in_features``, where), checked by :func:`check_dense_widths` once the hidden size is known)."""
    cfg = read_json(path)
    where = str(path)
    c = ConfigValues(cfg, where)
    n_in, n_out = c.int("in_features", minimum=1), c.int("out_features", minimum=1)
    activation = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    if not isinstance(activation, str) or activation not in _DENSE_ACTIVATIONS:
        refuse(where, "activation_function", activation,
               f"bertc computes exactly {', '.join(sorted(_DENSE_ACTIVATIONS))}")
    for key, default in (("use_residual", False), ("module_input_name", "sentence_embedding"),
                         ("module_output_name", None)):
        if cfg.get(key, default) not in (default, "sentence_embedding"):
            refuse(where, key, cfg.get(key), "bertc applies Dense modules to the pooled sentence embedding alone "
                                             "(no residual, no per-token Dense)")
    entry = {"units": n_out, "activation": _DENSE_ACTIVATIONS[activation], "bias": c.bool("bias", True)}
    return entry, (n_in, where)


def _pooling_mode(path: Path):
    """The pooling of a sentence-transformers Pooling config: ``pooling_mode`` (v6: a name or a list) or the
    older ``pooling_mode_*`` booleans (several: concatenated in sentence-transformers' order; none: mean, as
    sentence-transformers reads them). One mode as its name, several as a list."""
    cfg = read_json(path)
    if "pooling_mode" in cfg:
        value = cfg["pooling_mode"]
        modes = [value] if isinstance(value, str) else list(value) if isinstance(value, list) else [value]
        key, shown = "pooling_mode", value
    else:
        modes = [mode for key, mode in _LEGACY_POOLING.items() if cfg.get(key)] or ["mean"]
        key, shown = "pooling_mode_*", {k: cfg[k] for k in _LEGACY_POOLING if cfg.get(k)}
    if not modes or any(not isinstance(mode, str) or mode not in POOLING_MODES for mode in modes):
        refuse(str(path), key, shown, f"bertc pools by {', '.join(POOLING_MODES)} (one, or several concatenated)")
    if cfg.get("include_prompt") is False:
        refuse(str(path), "include_prompt", False, "bertc pools over every real token, prompt included")
    return modes[0] if len(modes) == 1 else modes


# the top-level modules of transformers' task heads, which a config.json without ``architectures`` (the family's base
# model, as AutoModel reads it) would leave unread: a trained classifier imported as a bare encoder
_TASK_HEADS = ("classifier", "qa_outputs", "pre_classifier")
# and of its pre-training heads: such a checkpoint (converted from Google's TF pre-training ones by an old
# transformers: SciBERT, Bio_ClinicalBERT, ... have no architectures) is meant to be read as its encoder
_PRETRAINING_HEADS = ("cls", "lm_head", "vocab_transform", "vocab_projector", "vocab_layer_norm", "lm_predictions",
                      "generator_lm_head", "generator_predictions", "decoder", "head", "predictions",
                      "discriminator_predictions", "sop_classifier")


def _class_prefix(cfg: dict, family: HFFamily) -> str:
    """The prefix of the model type's own class names (Camembert..., XLMRoberta..., not its family's Roberta...)."""
    model_type = cfg.get("model_type")
    prefix = next((p for p, t in _ARCHITECTURE_PREFIXES if t == model_type), None)
    base = family.base_architecture
    return prefix or (base[:-len("Model")] if base.endswith("Model") else "")


def _unnamed_head(where: str, cfg: dict, family: HFFamily, names) -> str:
    """For a config.json without ``architectures``: refuse weights holding a task head, naming the classes to add;
    for a pre-training head, the note that it is not loaded (the encoder is what AutoModel reads). Before, both
    imported as the base model silently (a tester: ``BertConfig(...).save_pretrained`` writes no architectures, and
    ``torch.save(model.state_dict())`` a classifier beside it: bertc run gave embeddings, not labels)."""
    top = {n.split(".")[0] for n in names}
    task = [h for h in _TASK_HEADS if h in top]
    prefix = _class_prefix(cfg, family)
    if task:
        suffixes = ["ForQuestionAnswering"] if task[0] == "qa_outputs" else \
            ["ForSequenceClassification", "ForTokenClassification", "ForMultipleChoice"]
        if task[0] == "classifier" and cfg.get("model_type") == "modernbert":   # its QA head is head + classifier
            suffixes.insert(2, "ForQuestionAnswering")
        known = set(family.known_architectures())
        first, *others = [prefix + c for c in suffixes if prefix + c in known] or [prefix + suffixes[0]]
        also = f" (or {' / '.join(others)}, as it was trained)" if others else ""
        raise UnsupportedModel(
            f"{where}: names no architectures, and the weights hold a task head "
            f"({', '.join(f'{h}.*' for h in task)}): add the class the model was saved as to config.json, e.g. "
            f"\"architectures\": [\"{first}\"]{also}, or import --encoder-only for the encoder alone (the head is "
            f"then not loaded)")
    pretraining = [h for h in _PRETRAINING_HEADS if h in top]
    if not pretraining:
        return ""
    nsp_only = f"{prefix}ForNextSentencePrediction" in family.known_architectures() and pretraining == ["cls"] and all(
        n.startswith("cls.seq_relationship.") for n in names if n.split(".")[0] == "cls")
    wanted = f"{prefix}ForNextSentencePrediction\"] for the next-sentence classifier" if nsp_only else \
        f"{prefix}ForMaskedLM\"] for the masked LM"
    return (f" config.json names no architectures: the encoder is imported, as transformers' AutoModel reads it; "
            f"the checkpoint's pre-training head ({', '.join(f'{h}.*' for h in pretraining)}) is not loaded (add "
            f"\"architectures\": [\"{wanted}).")


def spec_from(source: Path, names=(), encoder_only: bool = False, unnamed_head_ok: bool = False) -> dict:
    """A spec dict for a HF model directory (or a sentence-transformers one); ``names``: the checkpoint's
    tensor names; ``encoder_only``: no head (the checkpoint's head tensors are then reported as ignored);
    ``unnamed_head_ok``: a config.json without architectures is its base model whatever head the weights hold (the
    checkpoint-config check of a spec written for it compares the encoder)."""
    root = source if source.is_dir() else source.parent
    st = None if encoder_only else sentence_transformers_modules(root)
    model_dir = st["transformer"] if st else root
    where = str(model_dir / "config.json")
    cfg = read_json(model_dir / "config.json")
    family = family_for(cfg, where)
    if cfg.get("pruned_heads"):   # PretrainedConfig's: heads removed from the given layers' attention
        refuse(where, "pruned_heads", cfg["pruned_heads"], "bertc's attention has num_attention_heads heads in "
                                                           "every layer (no pruned heads)")
    enc = family.encoder(cfg, where, st["max_len"] if st else None)
    unnamed = "" if st or encoder_only or unnamed_head_ok or cfg.get("architectures") else \
        _unnamed_head(where, cfg, family, names)
    arch = architecture(cfg, where, family) if not (st or encoder_only) else \
        architectures(cfg, where, family)[0]
    head = st["head"] if st else (None if encoder_only else family.head(cfg, where, enc, arch, names))
    if st:
        check_dense_widths(head, st["dense_inputs"], enc.get("hidden_size"))
    pooler_less = head is None and enc.get("pooler", True) and names and not family.has_pooler(names)
    if pooler_less:   # what transformers saves without one (run_mlm.py, run_ner.py, run_qa.py, RoBERTa classifiers)
        enc["pooler"] = False
    dense = "".join(f", dense {d['units']} {d['activation']}" for d in (head or {}).get("dense", []))
    described = f"sentence-transformers model ({arch}, {' + '.join(pooling_modes(head['pooling']))} pooling{dense}" \
                f"{', normalized' if head['normalize'] else ''})" if st else f"Hugging Face {arch}"
    note = unnamed
    if head is not None and head["type"] == "pretrainer":
        note = (f" num_token_predictions {head['num_token_predictions']} is not in config.json: set it to the "
                f"masked positions per sequence you feed.")
    if arch == "BertForNextSentencePrediction" and head is not None:
        note += " Class 0: text B follows text A; class 1: B is a random sentence (the next-sentence labels)."
    if head is None and encoder_only:
        note += " Encoder only: the checkpoint's head tensors are not loaded (the build report lists them)."
    if pooler_less:
        note += " The checkpoint has no pooler: the encoder outputs sequence_output alone."
    if cfg.get("auto_map"):   # transformers runs that code only with trust_remote_code; bertc never runs it
        note += (f" config.json's auto_map names custom code, which bertc does not run: the standard {arch} "
                 f"architecture is assumed.")
    max_seq = enc.get("max_sequence_length") or enc.get("embedding", {}).get("max_sequence_length")  # scaffold
    table = cfg.get("max_position_embeddings", family.defaults.get("max_position_embeddings"))  # checked by encoder
    if st and isinstance(table, int) and max_seq < table:
        note += (f" max_sequence_length {max_seq} is sentence-transformers' max_seq_length, the model's own "
                 f"maximum (config.json's max_position_embeddings is {table}).")
    parity = None
    if max_seq > LONG_CONTEXT:
        # a long-context checkpoint (ModernBERT: 8,192): checked up to LONG_CONTEXT tokens, where one pass
        # at the full length would need tens of GB (attention scores grow with the square of the length)
        parity = {"sequence_lengths": [1, LONG_CONTEXT // 2 + 1, LONG_CONTEXT]}
        note += (f" Validation and parity check lengths up to {LONG_CONTEXT} (parity.sequence_lengths); the "
                 f"artifacts take up to {max_seq} tokens: add longer lengths to check them (memory grows with the "
                 f"square of the length).")
    spec = {"description": f"Imported from {described} at {Path(os.path.abspath(root)).name}/ by bertc import.{note}",
            "encoder": enc}
    if head is not None:
        spec["head"] = head
    if parity is not None:
        spec["parity"] = parity
    return spec


# The other families, one module each (each registers itself), are imported by bertc/importers/__init__.py:
# imported here, each would make an import cycle with this module.
