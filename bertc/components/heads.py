"""Task heads: ``classifier``, ``span_labeler``, ``token_classifier``, ``pretrainer``, ``masked_lm``,
``sentence_embedding``.

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

from typing import Literal, Optional, Union

import keras
import numpy as np
import tensorflow as tf
from pydantic import Field, field_validator

from bertc import activations, losses
from bertc.components.base import RowSelection
from bertc.components.common import (SpecLayer, check_positions, dense, dense_params, initializer, layer_norm,
                                     serializable)
from bertc.onnx_graph import KEEP_FP32
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


def _class_labels(rng, num_classes: int, shape) -> np.ndarray:
    """Random labels: class ids, or for one class (a score) random targets in [0, 1)."""
    if num_classes == 1:
        return rng.random(size=shape).astype(np.float32)
    return rng.integers(0, num_classes, size=shape, dtype=np.int32)


def _class_loss(logits, labels, weights=None):
    """Cross-entropy over the classes; with one class (a relevance or regression score, whose cross-entropy is
    always 0) the squared error, as transformers trains ``num_labels == 1``."""
    if logits.shape[-1] == 1:
        return losses.weighted_mean_squared_error(labels, logits, weights)
    return losses.weighted_sparse_categorical_crossentropy(labels, logits, weights=weights, from_logits=True)


def _token_labels(inputs, rng, num_classes: int) -> dict:
    """A label per position, weighted by the mask (per-token heads)."""
    mask = np.asarray(inputs["input_mask"])
    return {"labels": _class_labels(rng, num_classes, mask.shape), "weights": mask}


def _token_loss(outputs, labels):
    return _class_loss(outputs["logits"], labels["labels"], labels["weights"])


def _real_lengths(inputs) -> np.ndarray:
    return np.maximum(np.asarray(inputs["input_mask"]).sum(axis=1), 1)


class LayerNormOptions(StrictModel):
    epsilon: Epsilon = 1e-12
    bias: bool = True  # false: no beta (ModernBERT's norm_bias = false)


class TransformSpec(StrictModel):
    """What a head applies before its output projection: a dense layer, its activation, then optionally a
    layer norm. RoBERTa's and ELECTRA's classification heads (tanh / gelu), DistilBERT's pre_classifier
    (relu), DeBERTa's ContextPooler, ModernBERT's prediction head (with its norm), masked-LM transforms."""

    activation: Activation = "gelu"
    bias: bool = True
    layer_norm: Optional[LayerNormOptions] = None

    def param_count(self, n_in: int, n_out: int) -> int:
        norm = 0 if self.layer_norm is None else n_out * (2 if self.layer_norm.bias else 1)
        return dense_params(n_in, n_out, self.bias) + norm


class ClassifierSpec(StrictModel):
    type: Literal["classifier"] = "classifier"
    num_classes: PositiveInt
    dropout_rate: Rate = 0.1
    # what the classifier reads: the encoder's pooler output (BERT, ALBERT), the first token of the sequence
    # output (RoBERTa's <s>, ELECTRA, DistilBERT, DeBERTa, ModernBERT "cls"), or the mean of its real tokens
    pooling: Literal["pooler", "first", "mean"] = "pooler"
    transform: Optional[TransformSpec] = None
    initializer: Optional[InitializerSpec] = None


class MultipleChoiceSpec(StrictModel):
    """transformers' ``*ForMultipleChoice``: one score per (context, choice) row, the classifier's layers with one
    output; a question's choices are its rows, compared by a softmax over their scores."""

    type: Literal["multiple_choice"] = "multiple_choice"
    dropout_rate: Rate = 0.1
    pooling: Literal["pooler", "first", "mean"] = "pooler"
    transform: Optional[TransformSpec] = None
    initializer: Optional[InitializerSpec] = None


class TokenClassifierSpec(StrictModel):
    type: Literal["token_classifier"] = "token_classifier"
    num_classes: PositiveInt
    dropout_rate: Rate = 0.1
    transform: Optional[TransformSpec] = None
    initializer: Optional[InitializerSpec] = None


class MaskedLMSpec(StrictModel):
    type: Literal["masked_lm"] = "masked_lm"
    transform: TransformSpec = TransformSpec(layer_norm=LayerNormOptions())
    decoder_bias: bool = True
    # false: the decoder has its own (vocab_size, width) table ``masked_lm/decoder`` instead of reading the word
    # embeddings (transformers' ``tie_word_embeddings: false``)
    decoder_tied: bool = True
    initializer: Optional[InitializerSpec] = None


class SpanLabelerSpec(StrictModel):
    type: Literal["span_labeler"] = "span_labeler"
    transform: Optional[TransformSpec] = None   # ModernBERT's prediction head before the start / end layer
    initializer: Optional[InitializerSpec] = None


class PretrainerSpec(StrictModel):
    type: Literal["pretrainer"] = "pretrainer"
    num_token_predictions: PositiveInt
    num_classes: PositiveInt = 2
    output: Literal["logits", "predictions"] = "logits"
    activation: Activation = "gelu"
    layer_norm_epsilon: Epsilon = 1e-12
    decoder_tied: bool = True   # false: the masked LM's own decoder table (see MaskedLMSpec)
    initializer: Optional[InitializerSpec] = None

    def problems(self, ctx):
        if self.num_classes == 1:
            yield ("num_classes",), (
                "is 1, but the next-sentence classifier is trained by a softmax over its classes: over one class its "
                "probability is always 1 (log-probability 0) whatever the input, so it and the pooler could never "
                "learn; use 2 (is next / is not) or more")
        max_len = ctx.get("max_sequence_length")
        if max_len and self.num_token_predictions > max_len:
            yield ("num_token_predictions",), (
                f"{self.num_token_predictions} exceeds the encoder's max_sequence_length {max_len} "
                f"(at {ctx['max_sequence_length_path']})")


@serializable
class HeadActivation(keras.layers.Layer):
    """One of bertc's export-safe activations as a layer (a head transform's)."""

    def __init__(self, activation="gelu", **kwargs):
        super().__init__(**kwargs)
        self.activation = str(activation)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}

    def call(self, x):
        return activations.get(self.activation)(x)


class Transform:
    """A head's :class:`TransformSpec` in the graph: ``{name}_transform`` (dense), its activation and
    ``{name}_transform_layer_norm``; :meth:`lower` writes the same as MatMul, a (fused) activation and a
    LayerNormalization."""

    def __init__(self, spec: TransformSpec, width: int, init, name: str):
        self.spec = spec
        self.dense = dense(width, init, f"{name}_transform", use_bias=spec.bias)
        self.activation = HeadActivation(spec.activation, name=f"{name}_transform_activation")
        norm = spec.layer_norm
        self.layer_norm = None if norm is None else layer_norm(norm.epsilon, f"{name}_transform_layer_norm",
                                                               center=norm.bias)

    def __call__(self, x):
        x = self.activation(self.dense(x))
        return self.layer_norm(x) if self.layer_norm is not None else x

    def lower(self, ctx, x, part: str):
        y, bias = ctx.matmul(x, self.dense)
        y = ctx.activation(y, bias, self.spec.activation, part=f"{part}_transform")
        if self.layer_norm is not None:
            y, _ = ctx.layer_norm(y, self.layer_norm)
        return y


def _transform(spec, width: int, init, name: str) -> Optional[Transform]:
    return None if spec is None else Transform(spec, width, init, name)


def lower_pooling(ctx, x, pooling: str):
    """(B, S, H) -> (B, H): the first token (``cls``/``first``), or one of :data:`POOLING_MODES` over the real
    tokens, as :class:`SentencePooling` computes them, in plain ONNX ops; kept fp32 in the fp16 artifacts
    (weightedmean's sum of weights passes fp16's 65,504 above 361 tokens, a long sum of hidden states can)."""
    if pooling in ("cls", "first"):
        return ctx.first_token(x, keep_axis=False)
    with ctx.g.scope(f"{pooling}_pooling"), ctx.g.scope(KEEP_FP32):
        return _pool(ctx, x, pooling)


def _pool(ctx, x, pooling: str):
    """The nodes of :func:`lower_pooling` for a mode over the real tokens."""
    g = ctx.g
    m = g.node("Unsqueeze", [g.node("Cast", [ctx.inputs["input_mask"]], to=1), g.ints([-1], "axes")])
    if pooling in ("mean", "mean_sqrt_len_tokens"):
        total = ctx.reduce("ReduceSum", g.node("Mul", [x, m]), [1])
        count = g.node("Max", [ctx.reduce("ReduceSum", m, [1]), g.scalar(MIN_COUNT, "min_count")])
        if pooling == "mean_sqrt_len_tokens":
            return g.node("Div", [total, g.node("Sqrt", [count])], hint="mean_sqrt_len")
        return g.node("Div", [total, count], hint="mean")
    if pooling in ("weightedmean", "lasttoken"):
        # 1-based positions (B, S, 1) from the mask's shape
        pos = g.node("CumSum", [g.node("Add", [g.node("Mul", [m, g.scalar(0.0, "zero")]), g.scalar(1.0, "one")]),
                                g.const(1, np.int64, "seq_axis")], hint="positions")
        if pooling == "lasttoken":
            last = ctx.reduce("ReduceMax", g.node("Mul", [m, pos]), [1], keepdims=True)
            pick = g.node("Mul", [g.node("Cast", [g.node("Equal", [pos, last])], to=1), m], hint="last_token")
            return ctx.reduce("ReduceSum", g.node("Mul", [x, pick]), [1])
        outside = g.node("Mul", [g.node("Sub", [g.scalar(1.0, "one"), m]), g.scalar(1e9, "not_real")])
        first = ctx.reduce("ReduceMin", g.node("Add", [pos, outside]), [1], keepdims=True)
        weights = g.node("Mul", [m, g.node("Add", [g.node("Sub", [pos, first]), g.scalar(1.0, "one")])],
                         hint="position_weights")
        total = ctx.reduce("ReduceSum", g.node("Mul", [x, weights]), [1])
        norm = g.node("Max", [ctx.reduce("ReduceSum", weights, [1]), g.scalar(MIN_COUNT, "min_count")])
        return g.node("Div", [total, norm], hint="weightedmean")
    fill = g.node("Mul", [g.node("Sub", [g.scalar(1.0, "one"), m]), g.scalar(-1e9, "pad_fill")])
    return ctx.reduce("ReduceMax", g.node("Add", [g.node("Mul", [x, m]), fill]), [1])


@HEADS.register("classifier", spec=ClassifierSpec,
                description="Sentence classifier: [dense + activation (+ layer norm)] + dropout + dense over the "
                            "pooler output, the first token or the mean of the real tokens -> logits.")
class Classifier(Head):

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def uses_pooled(self):
        return self.spec.pooling == "pooler"

    @property
    def width(self) -> int:
        return self.encoder_spec.pooled_dim if self.uses_pooled else self.encoder_spec.hidden_size

    def rows_read(self):
        return None if self.spec.pooling == "mean" else RowSelection(first=True)

    def onnx_lowering(self, ctx, enc):
        if self.uses_pooled:
            x = enc.pooled_output
        else:
            x = lower_pooling(ctx, ctx.value(enc.sequence_output), self.spec.pooling)
            ctx.record("classifier_pooling", f"{self.spec.pooling} token" if self.spec.pooling == "first"
                       else "mean over the real tokens")
        if self.transform is not None:
            x = self.transform.lower(ctx, x, "classifier")
        ctx.record("classifier", "Gemm")
        return {"logits": ctx.gemm(x, self.classifier)}

    def build(self, enc, inputs):
        spec = self.spec
        if self.uses_pooled:
            x = enc.pooled_output
        else:
            pooling = "cls" if spec.pooling == "first" else "mean"
            x = SentencePooling(pooling, name="classifier_pooling")(enc.sequence_output, inputs["input_mask"])
        self.transform = _transform(spec.transform, self.width, self.init, "classifier")
        if self.transform is not None:
            x = self.transform(keras.layers.Dropout(spec.dropout_rate, name="classifier_transform_dropout")(x))
        x = keras.layers.Dropout(spec.dropout_rate, name="classifier_dropout")(x)
        self.classifier = dense(self.num_classes, self.init, "classifier")
        return {"logits": self.classifier(x)}

    def outputs(self):
        return [OutputInfo("logits", None, "logits")]

    def param_count(self):
        transform = self.spec.transform.param_count(self.width, self.width) if self.spec.transform else 0
        return transform + dense_params(self.width, self.num_classes)

    def make_labels(self, inputs, rng):
        return {"labels": _class_labels(rng, self.num_classes, len(inputs["input_mask"]))}

    def loss(self, outputs, labels):
        return _class_loss(outputs["logits"], labels["labels"])


@HEADS.register("multiple_choice", spec=MultipleChoiceSpec,
                description="Multiple choice (transformers' *ForMultipleChoice): the classifier's layers with one "
                            "output, a score per (context, choice) row -> logits (rows, 1); a question's choices "
                            "are compared by a softmax over their rows' scores.")
class MultipleChoice(Classifier):
    """The classifier with one output per row. A question's C choices are C rows (transformers flattens its
    (batch, C, seq) input to (batch x C, seq) the same way and reshapes the scores back to (batch, C)). Only the
    output width and the training loss differ, so the classifier's lowering computes it."""

    onnx_lowering = Classifier.onnx_lowering

    @property
    def num_classes(self) -> int:
        return 1

    def structural_zero_gradients(self) -> dict:
        """The output bias adds the same amount to every choice's score, which the softmax over the choices
        cancels: its gradient is exactly zero (transformers' has the same), by construction, not a defect."""
        return {"classifier/bias": "a bias shared by every choice cancels in the softmax over the choices"}

    def make_labels(self, inputs, rng):
        """The batch's rows as one question's choices: which one is right."""
        return {"labels": np.array([rng.integers(0, len(inputs["input_mask"]))], np.int32)}

    def loss(self, outputs, labels):
        """Cross-entropy of the softmax over the choices' scores (transformers' multiple-choice loss)."""
        scores = tf.reshape(outputs["logits"], [1, -1])
        return losses.weighted_sparse_categorical_crossentropy(labels["labels"], scores, from_logits=True)


@HEADS.register("token_classifier", spec=TokenClassifierSpec,
                description="Per-token classifier (tagging): [dense + activation (+ layer norm)] + dropout + dense "
                            "over every position -> logits.")
class TokenClassifier(Head):

    def onnx_lowering(self, ctx, enc):
        x = ctx.value(enc.sequence_output)
        if self.transform is not None:
            x = self.transform.lower(ctx, x, "token_classifier")
        ctx.record("token_classifier", "MatMul+Add")
        return {"logits": ctx.dense(x, self.classifier)}

    def build(self, enc, inputs):
        spec, width = self.spec, self.encoder_spec.hidden_size
        x = enc.sequence_output
        self.transform = _transform(spec.transform, width, self.init, "token_classifier")
        if self.transform is not None:
            x = self.transform(x)
        x = keras.layers.Dropout(spec.dropout_rate, name="token_classifier_dropout")(x)
        self.classifier = dense(spec.num_classes, self.init, "token_classifier")
        return {"logits": self.classifier(x)}

    def outputs(self):
        return [OutputInfo("logits", 1, "logits")]

    def param_count(self):
        width = self.encoder_spec.hidden_size
        transform = self.spec.transform.param_count(width, width) if self.spec.transform else 0
        return transform + dense_params(width, self.spec.num_classes)

    def make_labels(self, inputs, rng):
        return _token_labels(inputs, rng, self.spec.num_classes)

    def loss(self, outputs, labels):
        return _token_loss(outputs, labels)


@serializable
class SpanSplit(keras.layers.Layer):
    """(B, S, 2) -> start (B, S), end (B, S)."""

    def call(self, x):
        return x[:, :, 0], x[:, :, 1]


@HEADS.register("span_labeler", spec=SpanLabelerSpec,
                description="Single-span start/end predictor (SQuAD-style): [dense + activation (+ layer norm)] + "
                            "dense to 2 -> start_logits, end_logits.")
class SpanLabeler(Head):

    def onnx_lowering(self, ctx, enc):
        g = ctx.g
        x = ctx.value(enc.sequence_output)
        if self.transform is not None:
            x = self.transform.lower(ctx, x, "span_labeler")
        logits = ctx.dense(x, self.labeler)
        ctx.record("span_labeler", "MatMul+Add, Gather")
        return {name: g.node("Gather", [logits, g.const(k, np.int64, "index")], hint=name, axis=2)
                for k, name in enumerate(("start_logits", "end_logits"))}

    def build(self, enc, inputs):
        x = enc.sequence_output
        self.transform = _transform(self.spec.transform, self.encoder_spec.hidden_size, self.init, "span_labeler")
        if self.transform is not None:
            x = self.transform(x)
        self.labeler = dense(2, self.init, "span_labeler")
        start, end = SpanSplit(name="span_split")(self.labeler(x))
        return {"start_logits": start, "end_logits": end}

    def outputs(self):
        return [OutputInfo("start_logits", 1, "logits"), OutputInfo("end_logits", 1, "logits")]

    def param_count(self):
        width = self.encoder_spec.hidden_size
        transform = self.spec.transform.param_count(width, width) if self.spec.transform else 0
        return transform + dense_params(width, 2)

    def make_labels(self, inputs, rng):
        lengths = _real_lengths(inputs)
        return {"start_positions": (rng.random(len(lengths)) * lengths).astype(np.int32),
                "end_positions": (rng.random(len(lengths)) * lengths).astype(np.int32)}

    def loss(self, outputs, labels):
        return losses.span_loss(labels["start_positions"], labels["end_positions"],
                                outputs["start_logits"], outputs["end_logits"])


def _own_decoder(layer) -> Optional[object]:
    """A masked LM's own decoder table (vocab_size, width), laid out as the word table it replaces (the decoder
    multiplies by its transpose either way), or None when the decoder is tied to the word embeddings."""
    if layer.spec.decoder_tied:
        return None
    return layer.add_weight(name="decoder", shape=(layer.vocab_size, layer.table_width),
                            initializer=initializer(layer.initializer_spec))


def _decoder_params(spec, vocab_size: int, table_width: int) -> int:
    return 0 if spec.decoder_tied else vocab_size * table_width


@serializable
class MaskedLM(SpecLayer):
    """Masked-LM head: gather positions, dense + activation + layer norm, decoder tied to the word table (or,
    ``decoder_tied`` false, its own ``decoder`` table)."""

    spec_cls = PretrainerSpec

    def __init__(self, spec, hidden_size, initializer=None, vocab_size=0, table_width=0, **kwargs):
        super().__init__(spec, hidden_size, initializer, **kwargs)
        self.vocab_size, self.table_width = int(vocab_size), int(table_width)
        dt = self.dtype_policy
        self.transform = dense(self.table_width, self.initializer_spec, "transform", dtype=dt)
        self.transform_layer_norm = layer_norm(self.spec.layer_norm_epsilon, "transform_layer_norm", dtype=dt)
        self.activation_fn = activations.get(self.spec.activation)

    def build(self, sequence_output_shape=None, positions_shape=None, table_shape=None):
        self.output_bias = self.add_weight(name="output_bias", shape=(self.vocab_size,), initializer="zeros")
        self.decoder = _own_decoder(self)
        self.transform.build((None, self.hidden_size))
        self.transform_layer_norm.build((None, self.table_width))
        self.built = True

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "table_width": self.table_width}

    @staticmethod
    def param_count(spec, hidden_size, vocab_size, table_width):
        return (dense_params(hidden_size, table_width) + 2 * table_width + vocab_size
                + _decoder_params(spec, vocab_size, table_width))

    def call(self, sequence_output, positions, table=None):
        # Flatten (B, S, H) and offset the positions so one plain Gather picks them
        # (no batch_dims gather: it is not builtin everywhere). A position outside [0, S) would read another
        # row's token there: refused when called eagerly (Python only, no op; the artifacts do not check).
        check_positions(positions, sequence_output, "masked_lm_positions")
        shape = tf.shape(sequence_output)
        offsets = tf.expand_dims(tf.range(shape[0], dtype=positions.dtype) * tf.cast(shape[1], positions.dtype), 1)
        flat = tf.reshape(sequence_output, [-1, self.hidden_size])
        picked = tf.gather(flat, tf.reshape(positions + offsets, [-1]))
        x = self.transform_layer_norm(self.activation_fn(self.transform(picked)))
        table = table if self.decoder is None else tf.convert_to_tensor(self.decoder)
        logits = tf.matmul(x, table, transpose_b=True) + self.output_bias
        logits = tf.reshape(logits, tf.stack([shape[0], tf.shape(positions)[1], self.vocab_size]))
        return tf.nn.log_softmax(logits, axis=-1) if self.spec.output == "predictions" else logits

    def onnx_lowering(self, ctx, enc):
        """-> logits (B, P, V). GatherND (batch_dims 1) picks the positions (in a pruned encoder the
        last layer computed just those rows: a Slice takes them), MatMul + fused GELU,
        LayerNormalization, one Gemm against the word table itself (transB: no transposed copy), or against
        the head's own decoder table."""
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
        table = enc.word_embedding_table if self.decoder is None else ctx.weight(self.decoder)
        logits = g.node("Gemm", [x, table, ctx.weight(self.output_bias)], hint="decoder", transB=1)
        shape = g.node("Concat", [g.node("Shape", [positions], end=2), g.ints([self.vocab_size], "vocab")], axis=0)
        ctx.record("masked_lm", f"{'GatherND' if rows is None else 'Slice'}, MatMul, LayerNormalization, "
                                f"Gemm ({'tied' if self.decoder is None else 'own'} table)")
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
        lm = (self.masked_lm(enc.sequence_output, inputs["masked_lm_positions"], enc.word_embedding_table)
              if spec.decoder_tied else self.masked_lm(enc.sequence_output, inputs["masked_lm_positions"]))
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


@serializable
class TokenMaskedLM(SpecLayer):
    """Masked-LM head over every position: transform (dense + activation + layer norm), then the decoder
    tied to the word table (``decoder_tied`` false: its own ``decoder`` table) (+ ``output_bias`` when
    ``decoder_bias``). RoBERTa / XLM-R ``lm_head``, DistilBERT's vocab_transform / vocab_layer_norm /
    vocab_projector, ModernBERT's head + decoder."""

    spec_cls = MaskedLMSpec

    def __init__(self, spec, hidden_size, initializer=None, vocab_size=0, table_width=0, **kwargs):
        super().__init__(spec, hidden_size, initializer, **kwargs)
        self.vocab_size, self.table_width = int(vocab_size), int(table_width)
        t = self.spec.transform
        self.transform = dense(self.table_width, self.initializer_spec, "transform", use_bias=t.bias,
                               dtype=self.dtype_policy)
        self.transform_layer_norm = (None if t.layer_norm is None else
                                     layer_norm(t.layer_norm.epsilon, "transform_layer_norm", center=t.layer_norm.bias,
                                                dtype=self.dtype_policy))
        self.activation_fn = activations.get(t.activation)

    def build(self, sequence_output_shape=None, table_shape=None):
        self.output_bias = (self.add_weight(name="output_bias", shape=(self.vocab_size,), initializer="zeros")
                            if self.spec.decoder_bias else None)
        self.decoder = _own_decoder(self)
        self.transform.build((None, self.hidden_size))
        if self.transform_layer_norm is not None:
            self.transform_layer_norm.build((None, self.table_width))
        self.built = True

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "table_width": self.table_width}

    @staticmethod
    def param_count(spec, hidden_size, vocab_size, table_width):
        return (spec.transform.param_count(hidden_size, table_width) + (vocab_size if spec.decoder_bias else 0)
                + _decoder_params(spec, vocab_size, table_width))

    def call(self, sequence_output, table=None):
        x = self.activation_fn(self.transform(sequence_output))
        if self.transform_layer_norm is not None:
            x = self.transform_layer_norm(x)
        shape = tf.shape(sequence_output)
        table = table if self.decoder is None else tf.convert_to_tensor(self.decoder)
        logits = tf.matmul(tf.reshape(x, [-1, self.table_width]), table, transpose_b=True)
        if self.output_bias is not None:
            logits = logits + self.output_bias
        return tf.reshape(logits, tf.stack([shape[0], shape[1], self.vocab_size]))

    def onnx_lowering(self, ctx, enc):
        """-> logits (B, S, V): MatMul + fused activation, LayerNormalization, one Gemm against the word
        table itself (transB: no transposed copy) or the head's own decoder table."""
        g = ctx.g
        x = ctx.value(enc.sequence_output)
        y, bias = ctx.matmul(x, self.transform)
        y = ctx.activation(y, bias, self.spec.transform.activation, part="masked_lm_activation")
        if self.transform_layer_norm is not None:
            y, _ = ctx.layer_norm(y, self.transform_layer_norm)
        flat = g.node("Reshape", [y, g.ints([-1, self.table_width])])
        out_bias = ctx.weight(self.output_bias) if self.output_bias is not None else None
        table = enc.word_embedding_table if self.decoder is None else ctx.weight(self.decoder)
        logits = g.node("Gemm", [flat, table, out_bias], hint="decoder", transB=1)
        shape = g.node("Concat", [g.node("Shape", [x], end=2), g.ints([self.vocab_size], "vocab")], axis=0)
        ctx.record("masked_lm", f"MatMul, LayerNormalization, Gemm ({'tied' if self.decoder is None else 'own'} "
                                f"table)")
        return g.node("Reshape", [logits, shape], hint="masked_lm_logits")


@HEADS.register("masked_lm", spec=MaskedLMSpec,
                description="Masked LM over every position: dense + activation (+ layer norm), decoder tied to "
                            "the word embeddings (or its own, decoder_tied false) (+ bias) -> logits (B, S, vocab).")
class MaskedLMHead(Head):

    def onnx_lowering(self, ctx, enc):
        return {"logits": ctx.lower(self.masked_lm, enc)}

    def build(self, enc, inputs):
        e = self.encoder_spec
        self.masked_lm = TokenMaskedLM(spec=self.spec, hidden_size=e.hidden_size, initializer=self.init,
                                       vocab_size=e.vocab_size, table_width=e.embedding_table_width, name="masked_lm")
        if self.spec.decoder_tied:
            return {"logits": self.masked_lm(enc.sequence_output, enc.word_embedding_table)}
        return {"logits": self.masked_lm(enc.sequence_output)}

    def outputs(self):
        return [OutputInfo("logits", 1, "logits")]

    def param_count(self):
        e = self.encoder_spec
        return TokenMaskedLM.param_count(self.spec, e.hidden_size, e.vocab_size, e.embedding_table_width)

    def make_labels(self, inputs, rng):
        return _token_labels(inputs, rng, self.encoder_spec.vocab_size)

    def loss(self, outputs, labels):
        return _token_loss(outputs, labels)


class SentenceDenseSpec(TransformSpec):
    """One dense layer after the pooling (a sentence-transformers ``Dense`` module: LaBSE's 768 -> 768 tanh,
    distiluse's 768 -> 512 tanh): ``units`` outputs, then its activation (and a layer norm when given)."""

    units: PositiveInt
    activation: Activation = "tanh"


# sentence-transformers' pooling modes, in the order its legacy ``pooling_mode_*`` flags concatenate them
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
PoolingMode = Literal["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]


def pooling_modes(pooling) -> list:
    """The modes of a ``pooling`` field: one name, or a list whose vectors are concatenated in its order."""
    return [pooling] if isinstance(pooling, str) else list(pooling)


class SentenceEmbeddingSpec(StrictModel):
    type: Literal["sentence_embedding"] = "sentence_embedding"
    # one mode, or several whose pooled vectors are concatenated in the order given (sentence-transformers)
    pooling: Union[PoolingMode, list[PoolingMode]] = Field("mean", union_mode="left_to_right")
    # dense layers applied to the pooled vector, in order, before the normalisation
    dense: list[SentenceDenseSpec] = []
    normalize: bool = False
    initializer: Optional[InitializerSpec] = None

    @field_validator("pooling")
    @classmethod
    def _some_pooling(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("pooling: an empty list (give one mode, or several to concatenate)")
        return value


# The clamp of a mean's count (and of weightedmean's sum of weights) for a row without a real token. The count
# is an integer, 0 or at least 1 (the mask is 0 / 1), so any clamp in (0, 1] gives the same result bit for bit:
# 1, not sentence-transformers' 1e-9, which the fp16 TFLite artifact stores as an fp16 constant, 0 (0 / 0: NaN
# for such a row; Keras and every other artifact: 0).
MIN_COUNT = 1.0
MIN_NORM = 1e-12    # torch's F.normalize: x / max(||x||, 1e-12)


def normalize(x):
    """(B, D) -> x / max(L2 norm, 1e-12), as torch's ``F.normalize``. A zero vector (the mean of a row without a
    real token) gives zeros: the clamp is never 0 in float32, but the fp16 TFLite artifact stores 1e-12 as an
    fp16 constant, 0, and would give 0 / 0 (NaN); where the clamped norm is 0 the result is 0, as here. Every
    float32 result is that of the plain division."""
    norm = tf.maximum(tf.sqrt(tf.reduce_sum(tf.square(x), axis=-1, keepdims=True)), MIN_NORM)
    return tf.where(tf.equal(norm, 0.0), tf.zeros_like(x), x / norm)


@serializable
class SentencePooling(keras.layers.Layer):
    """(B, S, H) token vectors + (B, S) input mask -> (B, H x modes), pooled over the real tokens only, as
    sentence-transformers pools (each mode's vector, concatenated in the order given):

    ``mean``: sum over real tokens / their count (count clamped at 1: :data:`MIN_COUNT`);
    ``mean_sqrt_len_tokens``: the same sum / sqrt(count); ``weightedmean``: weighted by position, 1 at the
    first real token, 2 at the next position and so on (sentence-transformers' weights, counted from the first
    real token), / the sum of the weights; ``lasttoken``: the last real token (zeros for a row without one);
    ``cls``: the first token; ``max``: the element-wise max over real tokens (padding set to -1e9 first).
    ``normalize`` divides by the L2 norm (clamped at 1e-12, as torch's ``F.normalize``; a zero vector stays
    zero: :func:`normalize`).
    """

    def __init__(self, pooling="mean", normalize=False, **kwargs):
        super().__init__(**kwargs)
        self.pooling = str(pooling) if isinstance(pooling, str) else [str(p) for p in pooling]
        self.normalize = bool(normalize)

    def get_config(self):
        return {**super().get_config(), "pooling": self.pooling, "normalize": self.normalize}

    @staticmethod
    def pool(mode, x, m):
        """One mode's (B, H) vector; ``m``: the (B, S, 1) float mask."""
        if mode in ("mean", "mean_sqrt_len_tokens"):
            count = tf.maximum(tf.reduce_sum(m, axis=1), MIN_COUNT)
            return tf.reduce_sum(x * m, axis=1) / (count if mode == "mean" else tf.sqrt(count))
        # 1e9 overflows float16 (a mixed_float16 policy): 0 x inf gave NaN on every row, so float16 takes 6e4
        big = 6e4 if x.dtype == tf.float16 else 1e9
        if mode == "max":
            return tf.reduce_max(x * m + (1.0 - m) * -big, axis=1)
        if mode in ("weightedmean", "lasttoken"):
            pos = tf.cumsum(tf.ones_like(m), axis=1)  # 1-based positions, (B, S, 1)
            if mode == "lasttoken":
                last = tf.reduce_max(m * pos, axis=1, keepdims=True)  # 0 for a row without a real token
                return tf.reduce_sum(x * (tf.cast(tf.equal(pos, last), x.dtype) * m), axis=1)
            first = tf.reduce_min(pos + (1.0 - m) * big, axis=1, keepdims=True)
            weights = m * (pos - first + 1.0)
            return tf.reduce_sum(x * weights, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), MIN_COUNT)
        return tf.gather(x, 0, axis=1)

    def call(self, x, mask):
        m = tf.expand_dims(tf.cast(mask, x.dtype), -1)  # (B, S, 1)
        parts = [self.pool(mode, x, m) for mode in pooling_modes(self.pooling)]
        pooled = parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)
        if self.normalize:
            pooled = normalize(pooled)
        return pooled


@serializable
class SentenceNormalize(keras.layers.Layer):
    """(B, D) -> (B, D) / L2 norm (clamped at 1e-12, as torch's ``F.normalize``): the normalisation that follows
    a sentence embedding's dense layers (without them, :class:`SentencePooling` normalises itself)."""

    def call(self, x):
        return normalize(x)


def lower_normalize(ctx, x):
    """(B, D) -> (B, D) / max(L2 norm, 1e-12), as :class:`SentenceNormalize` computes it (kept fp32 in the fp16
    artifacts: a norm above 256 overflows fp16's sum of squares)."""
    g = ctx.g
    with g.scope("l2_normalize"), g.scope(KEEP_FP32):
        squares = g.node("Mul", [x, x])
        norm = g.node("Sqrt", [g.node("ReduceSum", [squares, g.ints([-1], "axes")], keepdims=1)])
        clamped = g.node("Max", [norm, g.scalar(MIN_NORM, "min_norm")])
        return g.node("Div", [x, clamped], hint="normalize")


@HEADS.register("sentence_embedding", spec=SentenceEmbeddingSpec,
                description="Sentence embedding (sentence-transformers): mean / cls / max / mean_sqrt_len_tokens / "
                            "weightedmean / lasttoken pooling over the real tokens (several: concatenated), "
                            "optional dense layers, optional L2 normalisation; output sentence_embedding.")
class SentenceEmbedding(Head):

    def rows_read(self):
        return RowSelection(first=True) if pooling_modes(self.spec.pooling) == ["cls"] else None

    @property
    def pooled_width(self) -> int:
        """The pooled vector's size: the hidden size per pooling mode."""
        return self.encoder_spec.hidden_size * len(pooling_modes(self.spec.pooling))

    @property
    def width(self) -> int:
        """The embedding's size: the last dense layer's units, else the pooled vector's."""
        return self.spec.dense[-1].units if self.spec.dense else self.pooled_width

    def onnx_lowering(self, ctx, enc):
        """Pooling over the real tokens as SentencePooling computes it, in plain ONNX ops (modes concatenated);
        then each dense layer (MatMul, bias and activation) and the normalisation."""
        spec = self.spec
        tokens = ctx.value(enc.sequence_output)
        parts = [lower_pooling(ctx, tokens, mode) for mode in pooling_modes(spec.pooling)]
        x = parts[0] if len(parts) == 1 else ctx.g.node("Concat", parts, hint="pooled", axis=-1)
        for i, transform in enumerate(self.dense):
            x = transform.lower(ctx, x, f"sentence_dense_{i}")
        if spec.normalize:
            x = lower_normalize(ctx, x)
        dense = "".join(f", dense {d.units} {d.activation}" for d in spec.dense)
        ctx.record("sentence_pooling", f"{' + '.join(pooling_modes(spec.pooling))} pooling{dense}"
                   + (", L2 normalize" if spec.normalize else ""))
        return {"sentence_embedding": x}

    def build(self, enc, inputs):
        spec = self.spec
        # without dense layers the pooling normalises itself (the graph of builds before dense layers existed)
        self.pooling = SentencePooling(spec.pooling, spec.normalize and not spec.dense, name="sentence_pooling")
        x = self.pooling(enc.sequence_output, inputs["input_mask"])
        self.dense = [Transform(d, d.units, self.init, f"sentence_dense_{i}") for i, d in enumerate(spec.dense)]
        for transform in self.dense:
            x = transform(x)
        if spec.dense and spec.normalize:
            x = SentenceNormalize(name="sentence_normalize")(x)
        return {"sentence_embedding": x}

    def outputs(self):
        return [OutputInfo("sentence_embedding", None, "features")]

    def param_count(self):
        widths = [self.pooled_width] + [d.units for d in self.spec.dense]
        return sum(d.param_count(n_in, d.units) for d, n_in in zip(self.spec.dense, widths))

    def make_labels(self, inputs, rng):
        n = len(inputs["input_mask"])
        targets = rng.standard_normal((n, self.width)).astype(np.float32)
        return {"targets": targets / np.linalg.norm(targets, axis=-1, keepdims=True)}

    def loss(self, outputs, labels):
        # cosine distance to fixed random directions: the objective embedding models are trained for
        e = outputs["sentence_embedding"]
        e = e / tf.maximum(tf.norm(e, axis=-1, keepdims=True), 1e-12)
        return tf.reduce_mean(1.0 - tf.reduce_sum(e * labels["targets"], axis=-1))
