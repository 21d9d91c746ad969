"""Self-attention layers: ``multi_head`` (canonical BERT) and ``talking_heads``.

An attention component (base class :class:`Attention`) is a layer constructed as
``cls(spec=..., hidden_size=..., initializer=..., name=...)`` and called as
``layer(x, attention_bias, training=...)`` with ``x`` of shape (B, S, H) and
``attention_bias`` broadcastable to (B, N, S, S): (B, 1, 1, S) from the mask (0 for real
keys, a large negative number for padded keys), (B, N, S, S) when the encoder's position
scheme adds a relative bias to it. With a rotary position scheme it is also passed
``rotary=(cos, sin)`` (each (S, D), D the head size: this layer's angles), and rotates queries and
keys after splitting heads; without one it is never passed ``rotary``. It returns (B, S, H).
Residual and layer norm belong to the enclosing block. ``param_count(spec, hidden_size)`` is its closed-form
parameter count; ``onnx_lowering(ctx, x, query=None)`` its optimized ONNX (see below).
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import tensorflow as tf
import keras
import numpy as np

from bertc.components.base import portable
from bertc.components.common import (MASK_ADDER, SpecLayer, dense, dense_params, initializer, merge_heads, serializable,
                                     split_heads)
from bertc.components.positions import apply_rotary
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


class Attention(SpecLayer):
    """Base of the attention kind. Its lowering is the portable one: ``call(x, attention_bias)``
    converted by tf2onnx and spliced in (:mod:`bertc.optimize.portable`); it computes every query row
    (its output bias included), and a pruned layer takes its rows from the output."""

    @staticmethod
    def param_count(spec, hidden_size: int) -> int:
        raise NotImplementedError

    @portable
    def onnx_lowering(self, ctx, x, query=None):
        hidden = getattr(self, "hidden_size", None)
        args = [(x, (None, None, hidden), tf.float32), (ctx.attention_bias(), ctx.attention_bias_shape, tf.float32)]
        if ctx.rotary() is None:
            out, = ctx.splice(self, args, lambda h, bias: self.call(h, bias, training=False), part="attention")
        else:   # this layer's rotary (cos, sin), each (S, D), traced as two more inputs
            args += ctx.rotary_tables_args()
            out, = ctx.splice(self, args, lambda h, bias, cos, sin: self.call(h, bias, training=False, rotary=(cos, sin)),
                              part="attention")
        return (ctx.rows(out) if query is not None else out), None


@ATTENTION.register("multi_head", spec=MultiHeadAttentionSpec,
                    description="Scaled dot-product multi-head self-attention (canonical BERT).")
@serializable
class MultiHeadAttention(Attention):
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

    def call(self, x, attention_bias, training=None, rotary=None):
        q = split_heads(self.query(x), self.num_heads, self.head_size)
        if rotary is not None:                      # the position scheme's (cos, sin), each (S, D)
            q = apply_rotary(q, *rotary)
        q = q * (1.0 / math.sqrt(self.head_size))
        k = split_heads(self.key(x), self.num_heads, self.head_size)
        if rotary is not None:
            k = apply_rotary(k, *rotary)
        v = split_heads(self.value(x), self.num_heads, self.head_size)
        logits = self.mix_logits(self.attention_logits(q, k)) + attention_bias
        probs = self.mix_probs(tf.nn.softmax(logits, axis=-1))
        probs = self.probs_dropout(probs, training=training)
        context = merge_heads(tf.matmul(probs, v), self.hidden_size)
        return self.attention_output(context)

    def onnx_lowering(self, ctx, x, query=None):
        return lower_multi_head(self, ctx, x, query)


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

    def onnx_lowering(self, ctx, x, query=None):
        return lower_talking_heads(self, ctx, x, query)


# --- ONNX lowerings ---------------------------------------------------------------------------------
# An attention lowering gets the block's input ``x`` (B, S, H) and, when only some query rows are
# needed (the pruned last layer), ``query`` (B, F, H) taken from ``x``. It returns
# ``(attention_output @ W_o, b_o)``: the output bias is left to the block's fused residual + layer norm.

def _np(variable):
    return variable.numpy()


def lower_multi_head(layer, ctx, x, query=None):
    """All rows: one com.microsoft ``Attention`` (packed QKV MatMul, raw 0/1 mask, Keras' -10000
    mask value). Query rows only, or a position scheme's bias to add to the logits: Q/K/V MatMuls
    into com.microsoft ``MultiHeadAttention`` (raw 0/1 mask, and the bias as its ``attention_bias``).
    Rotary positions: Q/K/V MatMul + Add, com.microsoft ``RotaryEmbedding`` on q and k, then
    ``MultiHeadAttention``."""
    g, n = ctx.g, layer.num_heads
    path = layer.path
    dense = (layer.query, layer.key, layer.value)
    bias = ctx.derived(f"{path}/qkv/bias", np.concatenate([_np(d.bias) for d in dense]))
    position_bias = ctx.position_bias(rows=query is not None)
    if ctx.rotary() is not None:
        # Q/K/V MatMul + bias, q and k rotated (com.microsoft RotaryEmbedding: each query row with its own
        # position, the pruned layer's first token with position 0), then MultiHeadAttention (no packed
        # bias: it was added before the rotation).
        q = ctx.rotate(ctx.dense(x if query is None else query, layer.query), n, rows=query is not None)
        k = ctx.rotate(ctx.dense(x, layer.key), n)
        v = ctx.dense(x, layer.value)
        context = g.ms("MultiHeadAttention", [q, k, v, None, ctx.mask] + ([position_bias] if position_bias else []),
                       hint="attention", num_heads=n, mask_filter_value=MASK_ADDER)
        ctx.record("attention", "RotaryEmbedding + MultiHeadAttention" + (" (query rows)" if query is not None else ""))
        return ctx.matmul(context, layer.attention_output)
    if position_bias is not None:
        q = g.node("MatMul", [x if query is None else query, ctx.weight(layer.query.kernel)], hint="query")
        k = g.node("MatMul", [x, ctx.weight(layer.key.kernel)], hint="key")
        v = g.node("MatMul", [x, ctx.weight(layer.value.kernel)], hint="value")
        context = g.ms("MultiHeadAttention", [q, k, v, bias, ctx.mask, position_bias], hint="attention",
                       num_heads=n, mask_filter_value=MASK_ADDER)
        ctx.record("attention", "MultiHeadAttention (attention_bias: position bias)")
    elif query is None:
        kernel = ctx.derived(f"{path}/qkv/kernel", np.concatenate([_np(d.kernel) for d in dense], axis=1))
        context = g.ms("Attention", [x, kernel, bias, ctx.mask], hint="attention", num_heads=n,
                       mask_filter_value=MASK_ADDER)
        ctx.record("attention", "Attention")
    else:
        q = g.node("MatMul", [query, ctx.weight(layer.query.kernel)], hint="query")
        k = g.node("MatMul", [x, ctx.weight(layer.key.kernel)], hint="key")
        v = g.node("MatMul", [x, ctx.weight(layer.value.kernel)], hint="value")
        context = g.ms("MultiHeadAttention", [q, k, v, bias, ctx.mask], hint="attention", num_heads=n,
                       mask_filter_value=MASK_ADDER)
        ctx.record("attention", "MultiHeadAttention (first token)")
    return ctx.matmul(context, layer.attention_output)


def lower_talking_heads(layer, ctx, x, query=None):
    """No fused operator mixes heads: Q/K/V MatMul + bias (the 1/sqrt(d) scale folded into the query
    weights), Einsum head mixing around a plain Softmax, the mask as an additive bias."""
    g, n, d = ctx.g, layer.num_heads, layer.head_size
    scale = 1.0 / math.sqrt(d)
    path = layer.path
    q_in = x if query is None else query
    q = g.node("MatMul", [q_in, ctx.derived(f"{path}/query/kernel_scaled", _np(layer.query.kernel) * scale)],
               hint="query")
    q = g.node("Add", [q, ctx.derived(f"{path}/query/bias_scaled", _np(layer.query.bias) * scale)])
    k = ctx.dense(x, layer.key)
    v = ctx.dense(x, layer.value)
    rotary = ctx.rotary() is not None
    if rotary:                                    # rotated before the heads are split (RoPE is linear: the
        q = ctx.rotate(q, n, rows=query is not None)      # folded scale commutes with it)
        k = ctx.rotate(k, n)
    q = ctx.split_heads(q, n, d, (0, 2, 1, 3))    # (B, N, F, D)
    k = ctx.split_heads(k, n, d, (0, 2, 3, 1))    # (B, N, D, T)
    v = ctx.split_heads(v, n, d, (0, 2, 1, 3))    # (B, N, T, D)
    logits = g.node("MatMul", [q, k], hint="logits")
    logits = g.node("Einsum", [logits, ctx.weight(layer.pre_softmax_weight)],
                    hint="pre_softmax_mix", equation="bnft,nm->bmft")
    logits = g.node("Add", [logits, ctx.attention_bias(rows=query is not None)], hint="mask")
    probs = g.node("Softmax", [logits], axis=-1)
    probs = g.node("Einsum", [probs, ctx.weight(layer.post_softmax_weight)], hint="post_softmax_mix",
                   equation="bnft,nm->bmft")
    context = ctx.merge_heads(g.node("MatMul", [probs, v], hint="context"), layer.hidden_size)
    ctx.record("attention", ("RotaryEmbedding + " if rotary else "")
               + "MatMul+Einsum+Softmax (talking heads: no fused operator)")
    return ctx.matmul(context, layer.attention_output)
