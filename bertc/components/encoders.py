"""Encoders: ``bert`` (canonical), ``scaffold`` (pluggable) and ``albert``.

An encoder component (base class :class:`Encoder`) is built from its spec, ``cls(spec)``. Its
``build(inputs, needs_pooled)`` adds the encoder to the Keras functional graph and keeps handles to
what it built (``embedding``, ``position``, ``blocks``: one per layer index, ``final_layer_norm``,
``pooler``); its ``onnx_lowering(ctx, needs_pooled, prune_last)`` walks those handles;
``param_count(needs_pooled)`` is its closed-form count.

Every encoder spec says what it is as a scaffold (``spec.scaffold``): the canonical BERT encoder *is*
a scaffold encoder with the standard embedding network and ``transformer`` blocks, and ALBERT is one
with a factorized embedding and one block shared by every layer. One graph builder
(:class:`ScaffoldEncoder`) serves all three, which is what makes their weights interchangeable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional

import keras
import tensorflow as tf
from pydantic import Field, field_validator

from bertc.components.blocks import TransformerBlockSpec
from bertc.components.common import MASK_ADDER, check_not_empty, dense, dense_params, layer_norm, serializable
from bertc.components.embeddings import ProjectionRule, StandardEmbeddingSpec
from bertc.components.positions import AbsolutePositionSpec
from bertc.registry import BLOCKS, EMBEDDINGS, ENCODERS, POSITIONS
from bertc.specbase import (DEFAULT_INITIALIZER, Activation, Epsilon, InitializerSpec, LayerCount, PositiveInt,
                            Rate, StrictModel, TypeVocabSize, VocabSize, component_field, json_path)

DEFAULT_POSITION = AbsolutePositionSpec()


class _EncoderSpecBase(StrictModel):
    """What every encoder spec offers the builder, heads and checks (through its scaffold view)."""

    def as_scaffold(self) -> "ScaffoldEncoderSpec":
        raise NotImplementedError

    @property
    def scaffold(self) -> "ScaffoldEncoderSpec":
        """The encoder as a scaffold encoder."""
        return self.as_scaffold()

    @property
    def position_spec(self):
        """The position scheme (``position``; learned absolute positions when the spec names none)."""
        return self.position or DEFAULT_POSITION

    @property
    def input_names(self) -> list[str]:
        return self.scaffold.embedding.input_names

    @property
    def pooled_dim(self) -> int:
        s = self.scaffold
        return s.pooled_output_dim or s.hidden_size

    @property
    def has_pooler(self) -> bool:
        """Whether the encoder has a pooler (its ``pooler``: true unless a spec says false)."""
        return self.scaffold.pooler

    @property
    def embedding_table_width(self) -> int:
        s = self.scaffold
        return s.embedding.width(s.hidden_size)

    @property
    def initializer_spec(self) -> InitializerSpec:
        return self.scaffold.initializer

    @property
    def layer_count(self) -> int:
        return self.scaffold.num_layers

    @property
    def all_layer_outputs(self) -> bool:
        return self.scaffold.return_all_layer_outputs

    def child_context(self, ctx, path):
        return {**ctx, "hidden_size": self.hidden_size, "hidden_size_path": json_path(path + ("hidden_size",)),
                "num_layers": self.num_layers, "num_layers_path": json_path(path + ("num_layers",)),
                "embedding_position_table": self._position_table(path), "head_size": self._head_size(),
                "position_type": self.position_spec.type, "position_path": json_path(path + ("position",)),
                "attention_types": self._attention_types(path)}

    def _attention_types(self, path) -> list[tuple[str, str, Optional[str]]]:
        """(where, attention type, the position scheme it needs: its spec's ``position_scheme``) of every block
        spec: a position scheme that needs a particular attention (``disentangled``) checks them, and that
        attention checks the scheme (``position_type``)."""
        if "hidden" not in type(self).model_fields:
            return [(json_path(path), "multi_head", None)]
        out = []
        for i, block in enumerate(self.hidden):
            where = path + (("hidden",) if len(self.hidden) == 1 else ("hidden", i))   # one block: its dict form
            scaffold = getattr(block, "as_scaffold", None)
            attention = getattr(scaffold(), "attention", None) if scaffold else None
            needs = getattr(attention, "position_scheme", None)
            if attention is not None and "attention" in type(block).model_fields:
                out.append((json_path(where + ("attention",)), attention.type, needs))
            else:
                out.append((json_path(where), getattr(attention, "type", "multi_head"), needs))
        return out

    def _head_size(self) -> Optional[int]:
        heads = first_block_heads(self.scaffold)
        return None if self.hidden_size % heads else self.hidden_size // heads

    def _position_table(self, path) -> Optional[str]:
        """Where the embedding network's learned absolute position table comes from (a position scheme that
        replaces it, ``rotary``, names it), or None when it has none."""
        if "embedding" not in type(self).model_fields:
            return (f"{json_path(path)} is a {self.type!r} encoder, whose standard embedding network always has "
                    f"one (use a 'scaffold' encoder with a 'custom' embedding)")
        embedding = self.embedding
        if not getattr(embedding, "use_position_embeddings", False):
            return None
        where = json_path(path + ("embedding",))
        if "use_position_embeddings" in type(embedding).model_fields:
            return f"{where}.use_position_embeddings is true"
        return f"{where} is a {embedding.type!r} embedding, which always has a learned position table"


def _block_or_blocks(schema: dict) -> None:
    """The JSON Schema of ``hidden`` as bertc reads it: one block object, or a non-empty list of them."""
    items = schema.pop("items")
    schema.pop("type", None)
    schema["anyOf"] = [items, {"type": "array", "items": items, "minItems": 1}]


class ScaffoldEncoderSpec(_EncoderSpecBase):
    type: Literal["scaffold"] = "scaffold"
    hidden_size: PositiveInt
    num_layers: LayerCount
    embedding: component_field("embedding")  # any registered embedding spec, by its "type"
    # one block for every layer (an object, or a list of one), or one per layer
    hidden: Annotated[list[component_field("block")], Field(json_schema_extra=_block_or_blocks)]
    position: Optional[component_field("position")] = None  # the position scheme (None: learned absolute)
    share_layers: bool = False
    pooled_output_dim: Optional[PositiveInt] = None
    # False: the encoder has no pooler (DistilBERT, ELECTRA, DeBERTa, ModernBERT): without a head it outputs
    # sequence_output only, and no head may read the pooled output
    pooler: bool = True
    pooler_initializer: Optional[InitializerSpec] = None
    initializer: InitializerSpec = DEFAULT_INITIALIZER
    return_all_layer_outputs: bool = False
    final_layer_norm: bool = False
    final_layer_norm_bias: bool = True  # false: the final layer norm has no beta (ModernBERT's norm_bias)
    layer_norm_epsilon: Epsilon = 1e-12

    @field_validator("hidden", mode="before")
    @classmethod
    def _one_block_for_all(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @field_validator("hidden", mode="after")
    @classmethod
    def _some_block(cls, value: list) -> list:
        if not value:
            raise ValueError("is empty: give one block spec for every layer (an object, or a list of one), "
                             "or one per layer")
        return value

    def as_scaffold(self) -> "ScaffoldEncoderSpec":
        return self

    # bert / albert have these as fields; a scaffold encoder takes them from its embedding network.
    @property
    def max_sequence_length(self) -> int:
        return self.embedding.max_sequence_length

    @property
    def vocab_size(self) -> int:
        return self.embedding.vocab_size

    @property
    def type_vocab_size(self) -> Optional[int]:
        return self.embedding.type_vocab_size if self.embedding.use_type_embeddings else None

    def blocks(self) -> list:
        return list(self.hidden) * self.num_layers if len(self.hidden) == 1 else list(self.hidden)

    def problems(self, ctx):
        if len(self.hidden) not in (1, self.num_layers):
            yield ("hidden",), (f"has {len(self.hidden)} block specs but num_layers is {self.num_layers} "
                                f"(give one block spec for every layer, or exactly num_layers of them)")
        if self.share_layers and len(self.hidden) != 1:
            yield ("share_layers",), "needs exactly one block spec in hidden (the shared block)"


class BertEncoderSpec(_EncoderSpecBase):
    """The canonical BERT encoder (Model Garden's TransformerEncoder / BertEncoder)."""

    type: Literal["bert"] = "bert"
    vocab_size: VocabSize
    hidden_size: PositiveInt = 768
    num_layers: LayerCount = 12
    num_attention_heads: PositiveInt = 12
    intermediate_size: PositiveInt = 3072
    activation: Activation = "gelu"
    dropout_rate: Rate = 0.1
    attention_dropout_rate: Rate = 0.1
    max_sequence_length: PositiveInt = 512
    type_vocab_size: TypeVocabSize = 2
    initializer: InitializerSpec = DEFAULT_INITIALIZER
    layer_norm_epsilon: Epsilon = 1e-12
    norm_first: bool = False
    return_all_layer_outputs: bool = False
    position: Optional[component_field("position")] = None  # the position scheme (None: learned absolute)
    # False: no pooler (a checkpoint saved without one: transformers' masked LM, token classifier, QA and RoBERTa
    # classifier models); without a head the encoder outputs sequence_output only
    pooler: bool = True

    def problems(self, ctx):
        if self.hidden_size % self.num_attention_heads:
            yield ("num_attention_heads",), (
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")

    def _embedding(self, **extra) -> StandardEmbeddingSpec:
        return StandardEmbeddingSpec(
            vocab_size=self.vocab_size, type_vocab_size=self.type_vocab_size,
            max_sequence_length=self.max_sequence_length, dropout_rate=self.dropout_rate,
            layer_norm_epsilon=self.layer_norm_epsilon, **extra)

    def _block(self) -> TransformerBlockSpec:
        return TransformerBlockSpec(
            num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
            activation=self.activation, dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate, norm_first=self.norm_first,
            layer_norm_epsilon=self.layer_norm_epsilon)

    def as_scaffold(self) -> ScaffoldEncoderSpec:
        return ScaffoldEncoderSpec(
            hidden_size=self.hidden_size, num_layers=self.num_layers, embedding=self._embedding(),
            hidden=[self._block()], position=self.position, initializer=self.initializer, final_layer_norm=self.norm_first,
            layer_norm_epsilon=self.layer_norm_epsilon, return_all_layer_outputs=self.return_all_layer_outputs,
            pooler=self.pooler)


class AlbertEncoderSpec(BertEncoderSpec):
    """ALBERT: factorized embeddings (embedding_width -> projection) and one block shared by all layers.
    ``embedding_projection`` "always": the projection at embedding_width == hidden_size too (transformers' ALBERT);
    "factorized": only where they differ (Model Garden's AlbertEncoder, the original ALBERT)."""

    type: Literal["albert"] = "albert"
    embedding_width: PositiveInt = 128
    embedding_projection: ProjectionRule = "factorized"
    norm_first: bool = False   # refused when true (below): the message names the encoder that has it

    def problems(self, ctx):
        yield from super().problems(ctx)
        if self.norm_first:
            yield ("norm_first",), (
                "is true, but an albert encoder's shared block is post-LN, as Model Garden's AlbertEncoder and "
                "transformers' ALBERT compute it; for a pre-LN block shared by every layer use a scaffold encoder "
                "with one transformer block with norm_first true and share_layers true")
        if self.embedding_width == 1:
            yield ("embedding_width",), (
                "is 1, but the embedding's layer norm normalizes over it: a layer norm over a single value outputs "
                "its beta whatever the ids, so the model would ignore its input; use 2 or more")

    def as_scaffold(self) -> ScaffoldEncoderSpec:
        return ScaffoldEncoderSpec(
            hidden_size=self.hidden_size, num_layers=self.num_layers,
            embedding=self._embedding(embedding_width=self.embedding_width,
                                      embedding_projection=self.embedding_projection), hidden=[self._block()],
            share_layers=True, position=self.position, initializer=self.initializer,
            layer_norm_epsilon=self.layer_norm_epsilon,
            return_all_layer_outputs=self.return_all_layer_outputs, pooler=self.pooler)


@serializable
class AttentionBias(keras.layers.Layer):
    """input_mask (B, S) -> additive attention bias (B, 1, 1, S): 0 for real keys, -10000 for padding."""

    def call(self, mask):
        # every encoder reads its mask here: refuse an empty sequence when called eagerly (Python only, no op)
        check_not_empty(mask)
        bias = (1.0 - tf.cast(mask, tf.float32)) * MASK_ADDER
        return tf.expand_dims(tf.expand_dims(bias, 1), 1)


@serializable
class AddPositionBias(keras.layers.Layer):
    """The mask's bias (B, 1, 1, S) plus a position scheme's (1, N, S, S) -> (B, N, S, S)."""

    def call(self, mask_bias, position_bias):
        return mask_bias + position_bias


@serializable
class FirstToken(keras.layers.Layer):
    def call(self, x):
        return x[:, 0, :]


@dataclass
class EncoderOutputs:
    sequence_output: Any
    pooled_output: Any
    layer_outputs: list = field(default_factory=list)
    word_embedding_table: Any = None


@dataclass
class EncoderValues:
    """The encoder's outputs as ONNX graph values (what a head's lowering reads)."""

    sequence_output: Any
    pooled_output: Optional[Any]
    layer_outputs: list
    word_embedding_table: Optional[Any]
    pruned: bool = False


class Encoder:
    """Base of the encoder kind: a component object built from its spec (``cls(spec)``). ``build`` adds the
    encoder's layers to the Keras graph and keeps handles to them; ``onnx_lowering`` walks those handles.
    An encoder without a lowering of its own (``onnx_lowering = None``) gets no optimized artifact."""

    onnx_lowering = None

    def __init__(self, spec):
        self.spec = spec

    @property
    def input_names(self) -> list[str]:
        return self.spec.input_names

    def param_count(self, needs_pooled: bool) -> int:
        raise NotImplementedError

    def build(self, inputs: dict, needs_pooled: bool) -> EncoderOutputs:
        raise NotImplementedError


def first_block_heads(scaffold: ScaffoldEncoderSpec) -> int:
    """The attention heads of a scaffold encoder's first block."""
    block = scaffold.blocks()[0]
    spec = getattr(block, "as_scaffold", lambda: block)()
    attention = getattr(spec, "attention", None)
    return int(getattr(attention, "num_heads", None) or getattr(block, "num_attention_heads", 1))


class ScaffoldEncoder(Encoder):
    """Any encoder spec through its scaffold view: embeddings (+ the position scheme's per-batch tensors),
    one block per layer (a shared block is one layer object called at every index), optional final layer
    norm, pooler."""

    def __init__(self, spec):
        super().__init__(spec)
        self.scaffold = spec.scaffold
        self.position_spec = spec.position_spec
        # handles to the built layers (set by build)
        self.embedding = self.position = self.final_layer_norm = self.pooler = None
        self.blocks: list = []

    @property
    def num_heads(self) -> int:
        """The attention heads of the first block (what a shared position bias is sized for)."""
        return first_block_heads(self.scaffold)

    def _position_layer(self):
        s = self.scaffold
        return POSITIONS.create(self.position_spec, hidden_size=s.hidden_size, initializer=s.initializer,
                                num_heads=self.num_heads, max_sequence_length=self.spec.max_sequence_length,
                                name="position")

    def param_count(self, needs_pooled: bool) -> int:
        s = self.scaffold
        h = s.hidden_size
        position = POSITIONS.component(self.position_spec.type)
        offset = self._position_layer().absolute.offset
        embedding = EMBEDDINGS.component(s.embedding.type)
        n = (embedding.param_count(s.embedding, h, position_offset=offset) if offset
             else embedding.param_count(s.embedding, h))
        n += position.param_count(self.position_spec, h, num_heads=self.num_heads,
                                  max_sequence_length=self.spec.max_sequence_length)
        blocks = s.blocks()[:1] if s.share_layers else s.blocks()
        n += sum(BLOCKS.component(b.type).param_count(b, h) for b in blocks)
        n += (2 if s.final_layer_norm_bias else 1) * h if s.final_layer_norm else 0
        return n + (dense_params(h, s.pooled_output_dim or h) if needs_pooled else 0)

    def build(self, inputs: dict, needs_pooled: bool) -> EncoderOutputs:
        s = self.scaffold
        h = s.hidden_size
        self.position = self._position_layer()
        offset = self.position.absolute.offset
        self.embedding = EMBEDDINGS.create(s.embedding, hidden_size=h, initializer=s.initializer, name="embeddings",
                                           **({"position_offset": offset} if offset else {}))
        positions = self.position(inputs) if self.position.changes_graph else {}
        embedding_inputs = {n: inputs[n] for n in s.embedding.input_names}
        if "position_ids" in positions:
            embedding_inputs["position_ids"] = positions["position_ids"]
        x, table = self.embedding(embedding_inputs)
        bias = AttentionBias(name="attention_bias")(inputs["input_mask"])
        if "attention_bias" in positions:
            bias = AddPositionBias(name="position_bias")(bias, positions["attention_bias"])
        shared = BLOCKS.create(s.blocks()[0], hidden_size=h, initializer=s.initializer,
                               name="shared_layer") if s.share_layers else None
        outputs, self.blocks = [], []
        for i, block in enumerate(s.blocks()):   # each layer built before the next is made (initializer seeds)
            layer = shared or BLOCKS.create(block, hidden_size=h, initializer=s.initializer, name=f"layer_{i}")
            # layer i's share of the per-batch position tensors (rotary=: its theta's (cos, sin); disentangled=:
            # the relative embeddings and positions), as keyword arguments; none for the other schemes
            x = layer(x, bias, **self.position.for_layer(positions, i))
            self.blocks.append(layer)
            outputs.append(x)
        if s.final_layer_norm:
            self.final_layer_norm = layer_norm(s.layer_norm_epsilon, "final_layer_norm", center=s.final_layer_norm_bias)
            x = outputs[-1] = self.final_layer_norm(x)
        pooled = None
        if needs_pooled:
            self.pooler = dense(s.pooled_output_dim or h, s.pooler_initializer or s.initializer, "pooler",
                                activation="tanh")
            pooled = self.pooler(FirstToken(name="first_token")(x))
        return EncoderOutputs(x, pooled, outputs, table)

    def onnx_lowering(self, ctx, needs_pooled: bool, prune_last: bool = False) -> EncoderValues:
        """The encoder as ONNX: the position scheme's per-batch values (once), embeddings, each layer's
        block (a shared block lowered once per layer, its weights stored once), final layer norm, pooler.
        ``prune_last``: the outputs read only some rows of the last layer (``ctx.read_rows``), so that layer
        computes its attention output and feedforward for those alone; its output has those rows only (the
        first token, when read, first)."""
        if self.position.changes_graph:
            with ctx.layer_scope("position"):
                ctx.positions = ctx.lower(self.position)
        with ctx.layer_scope("embeddings"):
            x, table = ctx.lower(self.embedding)
        outputs = []
        last = len(self.blocks) - 1
        for i, layer in enumerate(self.blocks):
            # this layer's share of the per-batch position values (its rotary caches: LoweringContext.rotary;
            # the disentangled relative embeddings and positions: LoweringContext.disentangled)
            ctx.layer_positions = self.position.for_layer(ctx.positions, i)
            with ctx.layer_scope(f"layer_{i}"):
                x = ctx.lower(layer, x, rows_only=prune_last and i == last)
            outputs.append(x)
        ctx.layer_positions = {}
        if self.final_layer_norm is not None:
            with ctx.layer_scope("final_layer_norm"):
                x = outputs[-1] = ctx.layer_norm(x, self.final_layer_norm)[0]
        pooled = None
        if needs_pooled:
            with ctx.layer_scope("pooler"):
                pooled = ctx.gemm(ctx.first_token(ctx.value(x), keep_axis=False), self.pooler)
        return EncoderValues(x, pooled, outputs, table, pruned=prune_last)


@ENCODERS.register("scaffold", spec=ScaffoldEncoderSpec,
                   description="Encoder with a pluggable embedding network and per-layer pluggable blocks.")
class Scaffold(ScaffoldEncoder):
    """The scaffold encoder as its spec gives it."""


@ENCODERS.register("bert", spec=BertEncoderSpec,
                   description="Canonical BERT encoder: standard embeddings, N transformer blocks, pooler.")
class Bert(ScaffoldEncoder):
    """BERT: the standard embedding network and ``transformer`` blocks (``BertEncoderSpec.as_scaffold``)."""


@ENCODERS.register("albert", spec=AlbertEncoderSpec,
                   description="ALBERT encoder: factorized embeddings and one block shared by all layers.")
class Albert(ScaffoldEncoder):
    """ALBERT: factorized embeddings and one block shared by every layer (``AlbertEncoderSpec.as_scaffold``)."""
