"""Losses of the seed notebooks' task models."""
from __future__ import annotations

import keras
import tensorflow as tf

# registered with Keras' serialization (``import bertc`` imports this module with bertc's layers once Keras is
# loaded): a model compiled with these losses and saved did not load with keras.saving.load_model
_serializable = keras.saving.register_keras_serializable(package="bertc")


@_serializable
def weighted_sparse_categorical_crossentropy(labels, predictions, weights=None, from_logits: bool = False):
    """Mean cross-entropy over the weighted positions (Model Garden's
    ``weighted_sparse_categorical_crossentropy_loss``).

    ``predictions`` are log-probabilities (a pretrainer's outputs with its
    ``output: "predictions"``) unless ``from_logits``: a pretrainer's default
    outputs, every classifier's and a masked LM's are logits (``from_logits=True``).
    Log-probabilities are checked: values whose logsumexp over the last axis is
    not 0 (logits, given without ``from_logits``) raise ``InvalidArgumentError``
    saying so, where they used to give a meaningless, even negative, loss.
    ``labels`` has the shape of ``predictions`` without its last axis; ``weights``
    (optional) the shape of ``labels``. With weights the loss is
    ``sum(w * ce) / sum(w)`` (0 when every weight is 0); without, the plain mean.
    """
    predictions = tf.convert_to_tensor(predictions)
    if from_logits:
        predictions = tf.nn.log_softmax(predictions, axis=-1)
    else:
        total = tf.reduce_logsumexp(tf.cast(predictions, tf.float32), axis=-1)
        tf.debugging.assert_less_equal(
            tf.abs(total), _tolerance(predictions),
            message="weighted_sparse_categorical_crossentropy: the predictions are not log-probabilities (their "
                    "logsumexp over the last axis is not 0); for logits (a pretrainer's default output, a "
                    "classifier's, a masked LM's) pass from_logits=True")
    labels = tf.cast(labels, tf.int32)
    one_hot = tf.one_hot(labels, depth=tf.shape(predictions)[-1], dtype=predictions.dtype)
    per_position = -tf.reduce_sum(one_hot * predictions, axis=-1)
    if weights is None:
        return tf.reduce_mean(per_position)
    weights = tf.cast(weights, predictions.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(per_position * weights), tf.reduce_sum(weights))


def _tolerance(predictions):
    """How far from 0 the logsumexp of log-probabilities may be. In float32, 1e-3. Computed in 16 bits (the tensor's
    dtype, or a mixed-precision policy: Keras' compiled loss casts the predictions to float32 first, and a pretrainer's
    bfloat16 log-probabilities failed the float32 bound, found by a tester), each value is rounded to 2^-8 of itself:
    the logsumexp moves by at most that times the entropy, itself at most ln(vocabulary), so the bound is
    2 x 2^-8 x max(1, ln V) (0.07 at 100 classes, 0.16 at 30,522); logits are seldom that close to it in every row."""
    half = predictions.dtype in (tf.float16, tf.bfloat16) or \
        keras.config.dtype_policy().compute_dtype in ("float16", "bfloat16")
    if not half:
        return tf.constant(1e-3, tf.float32)
    vocab = tf.cast(tf.shape(predictions)[-1], tf.float32)
    return 2.0 * 2.0 ** -8 * tf.maximum(1.0, tf.math.log(vocab))


@_serializable
def weighted_mean_squared_error(targets, predictions, weights=None):
    """Mean of ``(prediction - target)^2`` over the weighted positions: the loss of a one-output classifier (a
    relevance or regression score; transformers' ``num_labels == 1``), where cross-entropy over one class is
    always 0. ``predictions`` has a last axis of size 1, ``targets`` and ``weights`` its shape without it."""
    predictions = tf.convert_to_tensor(predictions)[..., 0]
    per_position = tf.square(predictions - tf.cast(targets, predictions.dtype))
    if weights is None:
        return tf.reduce_mean(per_position)
    weights = tf.cast(weights, predictions.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(per_position * weights), tf.reduce_sum(weights))


@_serializable
def span_loss(start_positions, end_positions, start_logits, end_logits):
    """(mean CE(start) + mean CE(end)) / 2, from logits (the span-labeling notebook's loss)."""
    start = tf.keras.losses.sparse_categorical_crossentropy(start_positions, start_logits, from_logits=True)
    end = tf.keras.losses.sparse_categorical_crossentropy(end_positions, end_logits, from_logits=True)
    return (tf.reduce_mean(start) + tf.reduce_mean(end)) / 2.0
