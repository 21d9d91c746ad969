"""Task heads: ``classifier``, ``span_labeler``, ``token_classifier``, ``pretrainer``, ``sentence_embedding``.

A head component (base class :class:`Head`) is an object built from its spec and the encoder's,
``cls(spec, encoder_spec)``. It offers:

- ``uses_pooled``: whether the encoder must build its pooler;
- ``extra_inputs()``: {input name: fixed length} beyond the encoder's inputs, and ``make_inputs``;
- ``build(encoder_outputs, inputs)``: {output name: tensor}, keeping handles to the layers it made;
- ``outputs()``: the outputs' :class:`OutputInfo`; ``param_count()``: closed-form parameter count;
- ``rows_read()``: the rows of the last layer its outputs read, when not all of them (the ONNX lowering
  then computes that layer for those rows alone);
- ``make_labels(inputs, rng)`` and ``loss(outputs, labels)``: the training objective, used by the
  trainability check;
- ``onnx_lowering(ctx, encoder_values)``: {output name: graph value}, walking its handles.
"""
from __future__ import annotations

from typing import Literal, Optional

import keras
import numpy as np
import tensorflow as tf

from bertc import activations, losses
from bertc.components.base import RowSelection
from bertc.components.common import SpecLayer, dense, dense_params, layer_norm, serializable
from bertc.registry import HEADS
from bertc.signature import OutputInfo
from bertc.specbase import Activation, Epsilon, InitializerSpec, PositiveInt, Rate, StrictModel


class Head:
    """Base of the head kind; a head overrides what it needs. Heads have no portable lowering: one
    without ``onnx_lowering`` of its own (``onnx_lowering = None`` here) gets no optimized artifact."""

    uses_pooled = False
    onnx_lowering = None

    def __init__(self, spec, encoder_spec):
        self.spec = spec
        self.encoder_spec = encoder_spec

    @property
    def init(self):
        """The head's initializer: its own, else the encoder's."""
        return self.spec.initializer or self.encoder_spec.initializer_spec

    def extra_inputs(self) -> dict:
        return {}

    def make_inputs(self, lengths, rng) -> dict:
        """{name: int32 array} for the extra inputs, given each row's real length."""
        return {}

    def rows_read(self) -> Optional[RowSelection]:
        """The rows of the last layer the outputs read (None: every row)."""
        return None

    def outputs(self) -> list:
        raise NotImplementedError

    def param_count(self) -> int:
        raise NotImplementedError

    def build(self, enc, inputs) -> dict:
        raise NotImplementedError

    def make_labels(self, inputs, rng) -> dict:
        raise NotImplementedError

    def loss(self, outputs, labels):
        raise NotImplementedError


def _real_lengths(inputs) -> np.ndarray:
    return np.maximum(np.asarray(inputs["input_mask"]).sum(axis=1), 1)


class ClassifierSpec(StrictModel):
    type: Literal["classifier"] = "classifier"
    num_classes: PositiveInt
    dropout_rate: Rate = 0.1
    initializer: Optional[InitializerSpec] = None


class TokenClassifierSpec(StrictModel):
    type: Literal["token_classifier"] = "token_classifier"
    num_classes: PositiveInt
    dropout_rate: Rate = 0.1
    initializer: Optional[InitializerSpec] = None


class SpanLabelerSpec(StrictModel):
    type: Literal["span_labeler"] = "span_labeler"
    initializer: Optional[InitializerSpec] = None


class PretrainerSpec(StrictModel):
    type: Literal["pretrainer"] = "pretrainer"
    num_token_predictions: PositiveInt
    num_classes: PositiveInt = 2
    output: Literal["logits", "predictions"] = "logits"
    activation: Activation = "gelu"
    layer_norm_epsilon: Epsilon = 1e-12
    initializer: Optional[InitializerSpec] = None

    def problems(self, ctx):
        max_len = ctx.get("max_sequence_length")
        if max_len and self.num_token_predictions > max_len:
            yield ("num_token_predictions",), (
                f"{self.num_token_predictions} exceeds the encoder's max_sequence_length {max_len} "
                f"(at {ctx['max_sequence_length_path']})")


@HEADS.register("classifier", spec=ClassifierSpec,
                description="Sentence classifier: dropout + dense over the pooled first token -> logits.")
class Classifier(Head):
    uses_pooled = True

    def rows_read(self):
        return RowSelection(first=True)

    def onnx_lowering(self, ctx, enc):
        ctx.record("classifier", "Gemm")
        return {"logits": ctx.gemm(enc.pooled_output, self.classifier)}

    def build(self, enc, inputs):
        x = keras.layers.Dropout(self.spec.dropout_rate, name="classifier_dropout")(enc.pooled_output)
        self.classifier = dense(self.spec.num_classes, self.init, "classifier")
        return {"logits": self.classifier(x)}

    def outputs(self):
        return [OutputInfo("logits", None, "logits")]

    def param_count(self):
        return dense_params(self.encoder_spec.pooled_dim, self.spec.num_classes)

    def make_labels(self, inputs, rng):
        return {"labels": rng.integers(0, self.spec.num_classes, size=len(inputs["input_mask"]), dtype=np.int32)}

    def loss(self, outputs, labels):
        return losses.weighted_sparse_categorical_crossentropy(labels["labels"], outputs["logits"], from_logits=True)


@HEADS.register("token_classifier", spec=TokenClassifierSpec,
                description="Per-token classifier (tagging): dropout + dense over every position -> logits.")
class TokenClassifier(Head):

    def onnx_lowering(self, ctx, enc):
        ctx.record("token_classifier", "MatMul+Add")
        return {"logits": ctx.dense(ctx.value(enc.sequence_output), self.classifier)}

    def build(self, enc, inputs):
        x = keras.layers.Dropout(self.spec.dropout_rate, name="token_classifier_dropout")(enc.sequence_output)
        self.classifier = dense(self.spec.num_classes, self.init, "token_classifier")
        return {"logits": self.classifier(x)}

    def outputs(self):
        return [OutputInfo("logits", 1, "logits")]

    def param_count(self):
        return dense_params(self.encoder_spec.hidden_size, self.spec.num_classes)

    def make_labels(self, inputs, rng):
        mask = np.asarray(inputs["input_mask"])
        return {"labels": rng.integers(0, self.spec.num_classes, size=mask.shape, dtype=np.int32), "weights": mask}

    def loss(self, outputs, labels):
        return losses.weighted_sparse_categorical_crossentropy(
            labels["labels"], outputs["logits"], weights=labels["weights"], from_logits=True)


@serializable
class SpanSplit(keras.layers.Layer):
    """(B, S, 2) -> start (B, S), end (B, S)."""

    def call(self, x):
        return x[:, :, 0], x[:, :, 1]


@HEADS.register("span_labeler", spec=SpanLabelerSpec,
                description="Single-span start/end predictor (SQuAD-style): start_logits, end_logits.")
class SpanLabeler(Head):

    def onnx_lowering(self, ctx, enc):
        g = ctx.g
        logits = ctx.dense(ctx.value(enc.sequence_output), self.labeler)
        ctx.record("span_labeler", "MatMul+Add, Gather")
        return {name: g.node("Gather", [logits, g.const(k, np.int64, "index")], hint=name, axis=2)
                for k, name in enumerate(("start_logits", "end_logits"))}

    def build(self, enc, inputs):
        self.labeler = dense(2, self.init, "span_labeler")
        start, end = SpanSplit(name="span_split")(self.labeler(enc.sequence_output))
        return {"start_logits": start, "end_logits": end}

    def outputs(self):
        return [OutputInfo("start_logits", 1, "logits"), OutputInfo("end_logits", 1, "logits")]

    def param_count(self):
        return dense_params(self.encoder_spec.hidden_size, 2)

    def make_labels(self, inputs, rng):
        lengths = _real_lengths(inputs)
        return {"start_positions": (rng.random(len(lengths)) * lengths).astype(np.int32),
                "end_positions": (rng.random(len(lengths)) * lengths).astype(np.int32)}

    def loss(self, outputs, labels):
        return losses.span_loss(labels["start_positions"], labels["end_positions"],
                                outputs["start_logits"], outputs["end_logits"])


@serializable
class MaskedLM(SpecLayer):
    """Masked-LM head: gather positions, dense + activation + layer norm, decoder tied to the word table."""

    spec_cls = PretrainerSpec

    def __init__(self, spec, hidden_size, initializer=None, vocab_size=0, table_width=0, **kwargs):
        super().__init__(spec, hidden_size, initializer, **kwargs)
        self.vocab_size, self.table_width = int(vocab_size), int(table_width)
        self.transform = dense(self.table_width, self.initializer_spec, "transform")
        self.transform_layer_norm = layer_norm(self.spec.layer_norm_epsilon, "transform_layer_norm")
        self.activation_fn = activations.get(self.spec.activation)

    def build(self, sequence_output_shape=None, positions_shape=None, table_shape=None):
        self.output_bias = self.add_weight(name="output_bias", shape=(self.vocab_size,), initializer="zeros")
        self.transform.build((None, self.hidden_size))
        self.transform_layer_norm.build((None, self.table_width))
        self.built = True

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "table_width": self.table_width}

    @staticmethod
    def param_count(spec, hidden_size, vocab_size, table_width):
        return dense_params(hidden_size, table_width) + 2 * table_width + vocab_size

    def call(self, sequence_output, positions, table):
        # Flatten (B, S, H) and offset the positions so one plain Gather picks them
        # (no batch_dims gather: it is not builtin everywhere).
        shape = tf.shape(sequence_output)
        offsets = tf.expand_dims(tf.range(shape[0], dtype=positions.dtype) * tf.cast(shape[1], positions.dtype), 1)
        flat = tf.reshape(sequence_output, [-1, self.hidden_size])
        picked = tf.gather(flat, tf.reshape(positions + offsets, [-1]))
        x = self.transform_layer_norm(self.activation_fn(self.transform(picked)))
        logits = tf.matmul(x, table, transpose_b=True) + self.output_bias
        logits = tf.reshape(logits, tf.stack([shape[0], tf.shape(positions)[1], self.vocab_size]))
        return tf.nn.log_softmax(logits, axis=-1) if self.spec.output == "predictions" else logits

    def onnx_lowering(self, ctx, enc):
        """-> logits (B, P, V). GatherND (batch_dims 1) picks the positions (in a pruned encoder the
        last layer computed just those rows: a Slice takes them), MatMul + fused GELU,
        LayerNormalization, one Gemm against the word table itself (transB: no transposed copy)."""
        g = ctx.g
        x = ctx.value(enc.sequence_output)
        rows = ctx.read_rows if enc.pruned else None
        if rows is not None and rows.positions == "masked_lm_positions":
            start = rows.positions_start
            picked = x if start == 0 else g.node(
                "Slice", [x, g.ints([start], "start"), g.ints([2**62], "end"), g.ints([1], "axis")],
                hint="masked_positions")                                          # (B, P, H)
        else:
            picked = ctx.gather_rows(x, "masked_lm_positions")                    # (B, P, H)
        positions = ctx.inputs["masked_lm_positions"]
        flat = g.node("Reshape", [picked, g.ints([-1, self.hidden_size])])
        x, bias = ctx.matmul(flat, self.transform)
        x = ctx.activation(x, bias, self.spec.activation, part="masked_lm_activation")
        x, _ = ctx.layer_norm(x, self.transform_layer_norm)
        logits = g.node("Gemm", [x, enc.word_embedding_table, ctx.weight(self.output_bias)], hint="decoder",
                        transB=1)
        shape = g.node("Concat", [g.node("Shape", [positions], end=2), g.ints([self.vocab_size], "vocab")], axis=0)
        ctx.record("masked_lm", f"{'GatherND' if rows is None else 'Slice'}, MatMul, LayerNormalization, "
                                "Gemm (tied table)")
        return g.node("Reshape", [logits, shape], hint="masked_lm_logits")


@HEADS.register("pretrainer", spec=PretrainerSpec,
                description="BERT pretraining: masked LM tied to the word embeddings + next-sentence classifier.")
class Pretrainer(Head):
    uses_pooled = True

    def rows_read(self):
        return RowSelection(first=True, positions="masked_lm_positions")

    def onnx_lowering(self, ctx, enc):
        g, spec = ctx.g, self.spec
        logits = ctx.lower(self.masked_lm, enc)
        nsp = ctx.gemm(enc.pooled_output, self.next_sentence)
        if spec.output == "predictions":
            logits = g.node("LogSoftmax", [logits], axis=-1)
            nsp = g.node("LogSoftmax", [nsp], axis=-1)
        ctx.record("next_sentence", "Gemm")
        return {"masked_lm": logits, "classification": nsp}

    def extra_inputs(self):
        return {"masked_lm_positions": self.spec.num_token_predictions}

    def make_inputs(self, lengths, rng):
        positions = [rng.integers(0, n, size=self.spec.num_token_predictions) for n in lengths]
        return {"masked_lm_positions": np.stack(positions).astype(np.int32)}

    def build(self, enc, inputs):
        spec, encoder_spec = self.spec, self.encoder_spec
        self.masked_lm = MaskedLM(spec=spec, hidden_size=encoder_spec.hidden_size, initializer=self.init,
                                  vocab_size=encoder_spec.vocab_size, table_width=encoder_spec.embedding_table_width,
                                  name="masked_lm")
        lm = self.masked_lm(enc.sequence_output, inputs["masked_lm_positions"], enc.word_embedding_table)
        self.next_sentence = dense(spec.num_classes, self.init, "next_sentence")
        nsp = self.next_sentence(enc.pooled_output)
        if spec.output == "predictions":
            nsp = keras.layers.Activation("log_softmax", name="next_sentence_log_softmax")(nsp)
        return {"masked_lm": lm, "classification": nsp}

    def outputs(self):
        kind = "log_probs" if self.spec.output == "predictions" else "logits"
        return [OutputInfo("masked_lm", None, kind), OutputInfo("classification", None, kind)]

    def param_count(self):
        e = self.encoder_spec
        return (MaskedLM.param_count(self.spec, e.hidden_size, e.vocab_size, e.embedding_table_width)
                + dense_params(e.pooled_dim, self.spec.num_classes))

    def make_labels(self, inputs, rng):
        spec, encoder_spec = self.spec, self.encoder_spec
        shape = np.asarray(inputs["masked_lm_positions"]).shape
        weights = rng.integers(0, 2, size=shape).astype(np.float32)
        weights[:, 0] = 1.0  # at least one weighted prediction per row
        return {"masked_lm_ids": rng.integers(0, encoder_spec.vocab_size, size=shape, dtype=np.int32),
                "masked_lm_weights": weights,
                "next_sentence_labels": rng.integers(0, spec.num_classes, size=shape[0], dtype=np.int32)}

    def loss(self, outputs, labels):
        logits = self.spec.output == "logits"
        mlm = losses.weighted_sparse_categorical_crossentropy(
            labels["masked_lm_ids"], outputs["masked_lm"], weights=labels["masked_lm_weights"], from_logits=logits)
        nsp = losses.weighted_sparse_categorical_crossentropy(
            labels["next_sentence_labels"], outputs["classification"], from_logits=logits)
        return mlm + nsp


class SentenceEmbeddingSpec(StrictModel):
    type: Literal["sentence_embedding"] = "sentence_embedding"
    pooling: Literal["mean", "cls", "max"] = "mean"
    normalize: bool = False


@serializable
class SentencePooling(keras.layers.Layer):
    """(B, S, H) token vectors + (B, S) input mask -> (B, H), pooled over the real tokens only.

    ``mean``: sum over real tokens / their count (sentence-transformers' formula, count clamped at 1e-9);
    ``cls``: the first token; ``max``: the element-wise max over real tokens (padding set to -1e9 first).
    ``normalize`` divides by the L2 norm (clamped at 1e-12, as torch's ``F.normalize``).
    """

    def __init__(self, pooling="mean", normalize=False, **kwargs):
        super().__init__(**kwargs)
        self.pooling, self.normalize = str(pooling), bool(normalize)

    def get_config(self):
        return {**super().get_config(), "pooling": self.pooling, "normalize": self.normalize}

    def call(self, x, mask):
        m = tf.expand_dims(tf.cast(mask, x.dtype), -1)  # (B, S, 1)
        if self.pooling == "mean":
            pooled = tf.reduce_sum(x * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1e-9)
        elif self.pooling == "max":
            pooled = tf.reduce_max(x * m + (1.0 - m) * -1e9, axis=1)
        else:
            pooled = tf.gather(x, 0, axis=1)
        if self.normalize:
            norm = tf.sqrt(tf.reduce_sum(tf.square(pooled), axis=-1, keepdims=True))
            pooled = pooled / tf.maximum(norm, 1e-12)
        return pooled


@HEADS.register("sentence_embedding", spec=SentenceEmbeddingSpec,
                description="Sentence embedding (sentence-transformers): mean / cls / max pooling over the real "
                            "tokens, optional L2 normalisation; output sentence_embedding.")
class SentenceEmbedding(Head):

    def rows_read(self):
        return RowSelection(first=True) if self.spec.pooling == "cls" else None

    def onnx_lowering(self, ctx, enc):
        """Pooling over the real tokens as SentencePooling computes it, in plain ONNX ops."""
        g, spec = ctx.g, self.spec
        x = ctx.value(enc.sequence_output)
        if spec.pooling == "cls":
            pooled = ctx.first_token(x, keep_axis=False)
        else:
            m = g.node("Unsqueeze", [g.node("Cast", [ctx.inputs["input_mask"]], to=1), g.ints([-1], "axes")])
            if spec.pooling == "mean":
                total = ctx.reduce("ReduceSum", g.node("Mul", [x, m]), [1])
                count = g.node("Max", [ctx.reduce("ReduceSum", m, [1]), g.scalar(1e-9, "min_count")])
                pooled = g.node("Div", [total, count], hint="mean")
            else:
                fill = g.node("Mul", [g.node("Sub", [g.scalar(1.0, "one"), m]), g.scalar(-1e9, "pad_fill")])
                pooled = ctx.reduce("ReduceMax", g.node("Add", [g.node("Mul", [x, m]), fill]), [1])
        if spec.normalize:
            norm = g.node("Sqrt", [ctx.reduce("ReduceSum", g.node("Mul", [pooled, pooled]), [-1], keepdims=True)])
            pooled = g.node("Div", [pooled, g.node("Max", [norm, g.scalar(1e-12, "min_norm")])], hint="normalize")
        ctx.record("sentence_pooling", f"{spec.pooling} pooling" + (", L2 normalize" if spec.normalize else ""))
        return {"sentence_embedding": pooled}

    def build(self, enc, inputs):
        self.pooling = SentencePooling(self.spec.pooling, self.spec.normalize, name="sentence_pooling")
        return {"sentence_embedding": self.pooling(enc.sequence_output, inputs["input_mask"])}

    def outputs(self):
        return [OutputInfo("sentence_embedding", None, "features")]

    def param_count(self):
        return 0

    def make_labels(self, inputs, rng):
        n = len(inputs["input_mask"])
        targets = rng.standard_normal((n, self.encoder_spec.hidden_size)).astype(np.float32)
        return {"targets": targets / np.linalg.norm(targets, axis=-1, keepdims=True)}

    def loss(self, outputs, labels):
        # cosine distance to fixed random directions: the objective embedding models are trained for
        e = outputs["sentence_embedding"]
        e = e / tf.maximum(tf.norm(e, axis=-1, keepdims=True), 1e-12)
        return tf.reduce_mean(1.0 - tf.reduce_sum(e * labels["targets"], axis=-1))
