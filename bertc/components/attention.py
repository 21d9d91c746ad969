"""Self-attention layers: ``multi_head`` (canonical BERT) and ``talking_heads``.

An attention component is a layer constructed as
``cls(spec=..., hidden_size=..., initializer=..., name=...)`` and called as
``layer(x, attention_bias, training=...)`` with ``x`` of shape (B, S, H) and
``attention_bias`` of shape (B, 1, 1, S) (0 for real keys, a large negative
number for padded keys). It returns (B, S, H). Residual and layer norm belong
to the enclosing block. ``param_count(spec, hidden_size)`` is its closed-form
parameter count.
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import tensorflow as tf
import keras

from bertc.components.common import SpecLayer, dense, dense_params, initializer, merge_heads, serializable, split_heads
from bertc.registry import ATTENTION
from bertc.specbase import InitializerSpec, PositiveInt, Rate, StrictModel


class AttentionSpecBase(StrictModel):
    num_heads: PositiveInt
    dropout_rate: Rate = 0.1
    initializer: Optional[InitializerSpec] = None

    def problems(self, ctx):
        hidden = ctx.get("hidden_size")
        if hidden and hidden % self.num_heads:
            yield ("num_heads",), (
                f"hidden_size {hidden} (at {ctx['hidden_size_path']}) is not divisible by num_heads {self.num_heads}"
            )


class MultiHeadAttentionSpec(AttentionSpecBase):
    type: Literal["multi_head"] = "multi_head"


class TalkingHeadsAttentionSpec(AttentionSpecBase):
    type: Literal["talking_heads"] = "talking_heads"


@ATTENTION.register("multi_head", spec=MultiHeadAttentionSpec,
                    description="Scaled dot-product multi-head self-attention (canonical BERT).")
@serializable
class MultiHeadAttention(SpecLayer):
    spec_cls = MultiHeadAttentionSpec

    def __init__(self, spec, hidden_size, initializer=None, **kwargs):
        super().__init__(spec, hidden_size, initializer, **kwargs)
        h, init = self.hidden_size, self.initializer_spec
        self.num_heads = self.spec.num_heads
        self.head_size = h // self.num_heads
        self.query = dense(h, init, "query")
        self.key = dense(h, init, "key")
        self.value = dense(h, init, "value")
        self.attention_output = dense(h, init, "attention_output")
        self.probs_dropout = keras.layers.Dropout(self.spec.dropout_rate, name="probs_dropout")

    def build(self, x_shape, attention_bias_shape=None):
        for layer in (self.query, self.key, self.value, self.attention_output):
            layer.build(x_shape)
        self.built = True

    @staticmethod
    def param_count(spec, hidden_size: int) -> int:
        return 4 * dense_params(hidden_size, hidden_size)

    def attention_logits(self, q, k):
        """(B, N, F, D) x (B, N, T, D) -> (B, N, F, T); the hook variants override around."""
        return tf.matmul(q, k, transpose_b=True)

    def mix_logits(self, logits):
        return logits

    def mix_probs(self, probs):
        return probs

    def call(self, x, attention_bias, training=None):
        q = split_heads(self.query(x), self.num_heads, self.head_size) * (1.0 / math.sqrt(self.head_size))
        k = split_heads(self.key(x), self.num_heads, self.head_size)
        v = split_heads(self.value(x), self.num_heads, self.head_size)
        logits = self.mix_logits(self.attention_logits(q, k)) + attention_bias
        probs = self.mix_probs(tf.nn.softmax(logits, axis=-1))
        probs = self.probs_dropout(probs, training=training)
        context = merge_heads(tf.matmul(probs, v), self.hidden_size)
        return self.attention_output(context)


@ATTENTION.register("talking_heads", spec=TalkingHeadsAttentionSpec,
                    description="Talking-heads attention: learned head mixing before and after the softmax.")
@serializable
class TalkingHeadsAttention(MultiHeadAttention):
    """Shazeer et al. 2020. Weights ``pre_softmax_weight`` and ``post_softmax_weight`` (N x N)."""

    spec_cls = TalkingHeadsAttentionSpec

    def build(self, x_shape, attention_bias_shape=None):
        shape = (self.num_heads, self.num_heads)
        self.pre_softmax_weight = self.add_weight(
            name="pre_softmax_weight", shape=shape, initializer=initializer(self.initializer_spec))
        self.post_softmax_weight = self.add_weight(
            name="post_softmax_weight", shape=shape, initializer=initializer(self.initializer_spec))
        super().build(x_shape, attention_bias_shape)

    @staticmethod
    def param_count(spec, hidden_size: int) -> int:
        return MultiHeadAttention.param_count(spec, hidden_size) + 2 * spec.num_heads * spec.num_heads

    @staticmethod
    def _mix_heads(t, weight):
        # (B, N, F, T) -> (B, F, T, N) @ (N, N) -> back; matmul instead of einsum keeps TFLite builtin.
        t = tf.matmul(tf.transpose(t, [0, 2, 3, 1]), weight)
        return tf.transpose(t, [0, 3, 1, 2])

    def mix_logits(self, logits):
        return self._mix_heads(logits, self.pre_softmax_weight)

    def mix_probs(self, probs):
        return self._mix_heads(probs, self.post_softmax_weight)
