"""Embedding networks: ``standard`` (word + position + type) and ``custom``.

An embedding component is a layer constructed as
``cls(spec=..., hidden_size=..., initializer=..., name="embeddings")`` and called
with a dict of the model's int32 inputs. It returns ``(embeddings, table)``:
(B, S, H) embeddings and the word-embedding table (V, E) that a masked-LM
decoder ties to. Its spec decides which inputs the model has
(``spec.input_names``); ``input_mask`` is always one of them because it drives
the attention mask. ``param_count(spec, hidden_size)`` is its closed-form count.
"""
from __future__ import annotations

from typing import Literal, Optional

import keras
import tensorflow as tf

from bertc.components.base import portable
from bertc.components.common import (SpecLayer, check_ids, check_sequence_length, concrete_values, dense,
                                     dense_params, initializer, layer_norm, serializable)
from bertc.registry import EMBEDDINGS
from bertc.specbase import Epsilon, InitializerSpec, PositiveInt, Rate, StrictModel, TypeVocabSize, VocabSize


# When the embedding network ends in a dense projection to hidden_size: "factorized" where embedding_width differs
# from it (BERT, Model Garden's and the original ALBERT); "always" also at equal widths (transformers' ALBERT, whose
# embedding_hidden_mapping_in is there whatever embedding_size is)
ProjectionRule = Literal["factorized", "always"]


class _EmbeddingSpecBase(StrictModel):
    @property
    def input_names(self) -> list[str]:
        names = ["input_word_ids", "input_mask"]
        return names + (["input_type_ids"] if self.use_type_embeddings else [])

    def width(self, hidden_size: int) -> int:
        return self.embedding_width or hidden_size

    def projects(self, hidden_size: int) -> bool:
        """Whether a dense ``embedding_projection`` (width -> hidden_size) follows the embeddings: where the widths
        differ, and with ``embedding_projection: always`` also where they are equal."""
        rule = getattr(self, "embedding_projection", "factorized")   # an embedding spec without the field: factorized
        return rule == "always" or self.width(hidden_size) != hidden_size

    def problems(self, ctx):
        # (a width of 1 taken from hidden_size is the encoder's problem: it names hidden_size)
        if self.use_layer_norm and self.embedding_width == 1:
            yield ("embedding_width",), (
                "is 1, but the embedding's layer norm normalizes over it: a layer norm over a single value outputs "
                "its beta whatever the ids, so the model would ignore its input; use 2 or more")


class StandardEmbeddingSpec(_EmbeddingSpecBase):
    type: Literal["standard"] = "standard"
    vocab_size: VocabSize
    type_vocab_size: TypeVocabSize = 2
    max_sequence_length: PositiveInt = 512
    embedding_width: Optional[PositiveInt] = None
    embedding_projection: ProjectionRule = "factorized"
    dropout_rate: Rate = 0.1
    layer_norm_epsilon: Epsilon = 1e-12
    initializer: Optional[InitializerSpec] = None

    use_position_embeddings = property(lambda self: True)
    use_type_embeddings = property(lambda self: True)
    use_layer_norm = property(lambda self: True)


class CustomEmbeddingSpec(_EmbeddingSpecBase):
    """Word embeddings plus whichever of position / type / layer norm the spec asks for.

    With the defaults this is the seed notebook's custom network: word
    embeddings only, two inputs (``input_word_ids``, ``input_mask``).
    """

    type: Literal["custom"] = "custom"
    vocab_size: VocabSize
    max_sequence_length: PositiveInt
    use_position_embeddings: bool = False
    use_type_embeddings: bool = False
    type_vocab_size: Optional[TypeVocabSize] = None
    use_layer_norm: bool = False
    dropout_rate: Rate = 0.0
    embedding_width: Optional[PositiveInt] = None
    embedding_projection: ProjectionRule = "factorized"
    layer_norm_epsilon: Epsilon = 1e-12
    initializer: Optional[InitializerSpec] = None

    def problems(self, ctx):
        yield from super().problems(ctx)
        if self.use_type_embeddings and self.type_vocab_size is None:
            yield ("type_vocab_size",), "is required when use_type_embeddings is true"
        if not self.use_type_embeddings and self.type_vocab_size is not None:
            yield ("type_vocab_size",), "is set but use_type_embeddings is false (the model has no input_type_ids)"


class Embedding(SpecLayer):
    """Base of the embedding kind. Its lowering is the portable one: ``call({input: ids})`` ->
    (embeddings, table), converted by tf2onnx and spliced in (:mod:`bertc.optimize.portable`)."""

    @staticmethod
    def param_count(spec, hidden_size: int) -> int:
        raise NotImplementedError

    @portable
    def onnx_lowering(self, ctx):
        names = list(self.spec.input_names)
        args = [(ctx.int32_input(n), (None, None), tf.int32) for n in names]
        x, table = ctx.splice(self, args, lambda *ids: self.call(dict(zip(names, ids)), training=False),
                              part="embeddings")
        return x, table


def _check_inputs(layer, inputs) -> None:
    """Refuse an input past a limit of the embedding network, naming it (Python only, no op: see :func:`check_ids`)."""
    s = layer.spec
    check_ids(inputs["input_word_ids"], s.vocab_size, "input_word_ids", "vocab_size",
              " (text tokenized for another model?)")
    if layer.type_embeddings is not None:
        check_ids(inputs["input_type_ids"], s.type_vocab_size, "input_type_ids", "type_vocab_size")
    if layer.position_embeddings is None:
        return
    n, rows = s.max_sequence_length, s.max_sequence_length + layer.position_offset
    if "position_ids" in inputs:   # from the position scheme: past the table only when a sequence is too long
        ids = concrete_values(inputs["position_ids"])
        top = int(ids.max()) if ids is not None and ids.size else 0
        if top >= rows:
            raise ValueError(f"a sequence has more tokens than this model's max_sequence_length {n} (its position ids "
                             f"reach {top}, past the {rows} rows of its position_embeddings table): cut or split the "
                             f"sequences to at most {n} tokens")
    else:
        check_sequence_length(inputs["input_word_ids"], rows, f"its position_embeddings table has {rows} rows")


@serializable
class EmbeddingNetwork(Embedding):
    """Embeddings as BERT/ALBERT compute them; weight names follow Model Garden."""

    spec_cls = StandardEmbeddingSpec

    def __init__(self, spec, hidden_size, initializer=None, position_offset: int = 0, **kwargs):
        super().__init__(spec, hidden_size, initializer, **kwargs)
        s, dt = self.spec, self.dtype_policy
        # rows of the position table before position 0 (the encoder's absolute position scheme says)
        self.position_offset = int(position_offset)
        self.width = s.width(self.hidden_size)
        self.layer_norm = layer_norm(s.layer_norm_epsilon, "layer_norm", dtype=dt) if s.use_layer_norm else None
        self.dropout = keras.layers.Dropout(s.dropout_rate, name="dropout", dtype=dt)
        self.embedding_projection = (
            dense(self.hidden_size, self.initializer_spec, "embedding_projection", dtype=dt)
            if s.projects(self.hidden_size) else None)

    def build(self, input_shape=None):
        s, init = self.spec, initializer(self.initializer_spec)
        self.word_embeddings = self.add_weight(name="word_embeddings", shape=(s.vocab_size, self.width), initializer=init)
        self.position_embeddings = self.add_weight(
            name="position_embeddings", shape=(s.max_sequence_length + self.position_offset, self.width), initializer=init,
        ) if s.use_position_embeddings else None
        self.type_embeddings = self.add_weight(
            name="type_embeddings", shape=(s.type_vocab_size, self.width), initializer=init,
        ) if s.use_type_embeddings else None
        if self.layer_norm is not None:
            self.layer_norm.build((None, None, self.width))
        if self.embedding_projection is not None:
            self.embedding_projection.build((None, None, self.width))
        self.built = True

    def get_config(self):
        config = super().get_config()
        if self.position_offset:
            config["position_offset"] = self.position_offset
        return config

    @staticmethod
    def param_count(spec, hidden_size: int, position_offset: int = 0) -> int:
        e = spec.width(hidden_size)
        n = spec.vocab_size * e
        n += (spec.max_sequence_length + position_offset) * e if spec.use_position_embeddings else 0
        n += spec.type_vocab_size * e if spec.use_type_embeddings else 0
        n += 2 * e if spec.use_layer_norm else 0
        return n + (dense_params(e, hidden_size) if spec.projects(hidden_size) else 0)

    def call(self, inputs, training=None):
        _check_inputs(self, inputs)
        word_ids = inputs["input_word_ids"]
        table = tf.convert_to_tensor(self.word_embeddings)
        x = tf.gather(table, word_ids)
        if self.position_embeddings is not None and "position_ids" in inputs:   # from the position scheme
            x = x + tf.gather(tf.convert_to_tensor(self.position_embeddings), inputs["position_ids"])
        elif self.position_embeddings is not None:
            seq_len = tf.shape(word_ids)[1]
            positions = tf.slice(tf.convert_to_tensor(self.position_embeddings), [0, 0], tf.stack([seq_len, -1]))
            # the slice's static width is unknown (its size is a tensor): say it, or a width of 1 broadcast
            # against it leaves the sum's last axis unknown and the layer norm cannot be built
            positions.set_shape([None, self.width])
            x = x + tf.expand_dims(positions, 0)
        if self.type_embeddings is not None:
            x = x + tf.gather(tf.convert_to_tensor(self.type_embeddings), inputs["input_type_ids"])
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        x = self.dropout(x, training=training)
        if self.embedding_projection is not None:
            x = self.embedding_projection(x)
        return x, table

    def onnx_lowering(self, ctx):
        return lower_embeddings(self, ctx)


EMBEDDINGS.register("standard", spec=StandardEmbeddingSpec,
                    description="Word + position + token-type embeddings, layer norm, dropout (BERT); "
                                "embedding_width < hidden_size factorizes them (ALBERT; embedding_projection "
                                "'always': projected at equal widths too).")(EmbeddingNetwork)


@serializable
class CustomEmbeddingNetwork(EmbeddingNetwork):
    spec_cls = CustomEmbeddingSpec


EMBEDDINGS.register("custom", spec=CustomEmbeddingSpec,
                    description="Word embeddings with optional position / type embeddings and layer norm; "
                                "the model's inputs follow from the spec.")(CustomEmbeddingNetwork)


# --- ONNX lowering ----------------------------------------------------------------------------------

def lower_embeddings(layer, ctx):
    """-> (embeddings (B, S, H), word table). Word + position (+ type) embeddings with a layer norm are
    one com.microsoft EmbedLayerNormalization; other combinations are Gather/Slice/Add and a plain
    LayerNormalization. ALBERT's projection follows as MatMul + Add."""
    g = ctx.g
    table = ctx.weight(layer.word_embeddings)
    types = layer.type_embeddings is not None
    position_ids = ctx.positions.get("position_ids")
    if layer.position_embeddings is not None and layer.layer_norm is not None:
        ln = layer.layer_norm
        x = g.ms("EmbedLayerNormalization",
                 [ctx.int32_input("input_word_ids"), ctx.int32_input("input_type_ids") if types else None,
                  table, ctx.weight(layer.position_embeddings), ctx.weight(layer.type_embeddings) if types else None,
                  ctx.weight(ln.gamma), ctx.weight(ln.beta)] + ([None, position_ids] if position_ids else []),
                 ["out", "mask_index"],                                                 # ORT's shape inference
                 hint="embed_layer_norm", epsilon=float(ln.epsilon))[0]                  # needs output 1 named
        ctx.record("embeddings", "EmbedLayerNormalization")
    else:
        ids = ctx.inputs["input_word_ids"]
        x = g.node("Gather", [table, ids], hint="word_embeddings")
        parts = ["Gather"]
        if layer.position_embeddings is not None and position_ids:
            x = g.node("Add", [x, g.node("Gather", [ctx.weight(layer.position_embeddings), position_ids],
                                         hint="position_embeddings")], hint="add_positions")
            parts.append("position Gather+Add")
        elif layer.position_embeddings is not None:
            length = g.node("Shape", [ids], hint="sequence_length", start=1, end=2)
            positions = g.node("Slice", [ctx.weight(layer.position_embeddings), g.ints([0], "start"), length,
                                         g.ints([0], "axis")], hint="position_embeddings")
            x = g.node("Add", [x, positions], hint="add_positions")
            parts.append("position Slice+Add")
        if types:
            x = g.node("Add", [x, g.node("Gather", [ctx.weight(layer.type_embeddings), ctx.inputs["input_type_ids"]],
                                         hint="type_embeddings")], hint="add_types")
            parts.append("type Gather+Add")
        ctx.record("embeddings", " + ".join(parts))
        if layer.layer_norm is not None:
            x, _ = ctx.layer_norm(x, layer.layer_norm, part="embedding_layer_norm")
    if layer.embedding_projection is not None:
        x = ctx.dense(x, layer.embedding_projection)
        ctx.record("embedding_projection", "MatMul+Add")
    return x, table
