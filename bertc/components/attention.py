"""Self-attention layers: ``multi_head`` (canonical BERT), ``talking_heads`` and ``disentangled`` (DeBERTa-v2/v3).

An attention component (base class :class:`Attention`) is a layer constructed as
``cls(spec=..., hidden_size=..., initializer=..., name=...)`` and called as
``layer(x, attention_bias, training=...)`` with ``x`` of shape (B, S, H) and
``attention_bias`` broadcastable to (B, N, S, S): (B, 1, 1, S) from the mask (0 for real
keys, a large negative number for padded keys), (B, N, S, S) when the encoder's position
scheme adds a relative bias to it. With a rotary position scheme it is also passed
``rotary=(cos, sin)`` (each (S, D), D the head size: this layer's angles), and rotates queries and
keys after splitting heads; without one it is never passed ``rotary``. ``disentangled`` attention is passed
``disentangled=(relative_embeddings, relative_positions)`` by the ``disentangled`` position scheme (required: a
spec error without it, with both JSON paths) and adds transformers' c2p (queries against the relative embeddings
projected by the key weights, or ``pos_key_proj``) and p2c (keys against them projected by the query weights, or
``pos_query_proj``) terms to the content logits, all scaled by 1 / sqrt(head_size * (1 + len(pos_att_type))). Its
lowering computes them with MatMul + Gather and hands them to com.microsoft ``MultiHeadAttention`` as
``attention_bias`` (its ``scale`` attribute set, the raw 0/1 mask), exact against transformers (~4e-6); the
pruned last layer gathers the first token's row of each term. It returns (B, S, H).
Residual and layer norm belong to the enclosing block. ``param_count(spec, hidden_size)`` is its closed-form
parameter count; ``onnx_lowering(ctx, x, query=None)`` its optimized ONNX (see below).
"""
from __future__ import annotations

import math
from typing import ClassVar, Literal, Optional

import tensorflow as tf
import keras
import numpy as np

from bertc.components.base import portable
from bertc.components.common import (MASK_ADDER, SpecLayer, dense, dense_params, initializer, merge_heads, serializable,
                                     split_heads)
from bertc.components.positions import apply_rotary
from bertc.errors import NotLowerable
from bertc.registry import ATTENTION
from bertc.specbase import InitializerSpec, PositiveInt, Rate, StrictModel


class AttentionSpecBase(StrictModel):
    num_heads: PositiveInt
    dropout_rate: Rate = 0.1
    initializer: Optional[InitializerSpec] = None

    @property
    def sliding_window(self) -> Optional[int]:
        """w when a query attends only to the keys within w positions of it (a sliding window), else None: parity
        leaves out the padded positions whose window holds no real token (:func:`bertc.parity.unattended`). An
        attention with a window returns it."""
        return None

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
        if not ctx.layer_positions:
            out, = ctx.splice(self, args, lambda h, bias: self.call(h, bias, training=False), part="attention")
        else:   # this layer's position tensors (rotary (cos, sin); disentangled ones), traced as more inputs
            extra, as_kwargs = ctx.layer_position_args(getattr(self, "hidden_size", None))
            out, = ctx.splice(self, args + extra,
                              lambda h, bias, *pos: self.call(h, bias, training=False, **as_kwargs(pos)),
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
        self.query = dense(h, init, "query", dtype=self.dtype_policy)
        self.key = dense(h, init, "key", dtype=self.dtype_policy)
        self.value = dense(h, init, "value", dtype=self.dtype_policy)
        self.attention_output = dense(h, init, "attention_output", dtype=self.dtype_policy)
        self.probs_dropout = keras.layers.Dropout(self.spec.dropout_rate, name="probs_dropout",
                                                  dtype=self.dtype_policy)

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


class DisentangledAttentionSpec(AttentionSpecBase):
    """DeBERTa-v2/v3 disentangled self-attention: content-to-content logits plus content-to-position (``c2p``:
    queries against projected relative embeddings) and position-to-content (``p2c``: keys against them) terms,
    all scaled by 1 / sqrt(head_size * (1 + len(pos_att_type))). ``share_att_key``: the relative embeddings
    are projected by the query / key weights themselves (v3), else by their own ``pos_query_proj`` /
    ``pos_key_proj``. Needs the encoder's ``disentangled`` position scheme."""

    type: Literal["disentangled"] = "disentangled"
    pos_att_type: list[Literal["c2p", "p2c"]] = ["p2c", "c2p"]
    share_att_key: bool = True
    # the position scheme this attention reads (subclasses, plug-ins included, inherit the requirement)
    position_scheme: ClassVar[str] = "disentangled"

    def problems(self, ctx):
        yield from super().problems(ctx)
        if len(set(self.pos_att_type)) != len(self.pos_att_type):
            yield ("pos_att_type",), f"{self.pos_att_type} names a term twice"
        kind = ctx.get("position_type")
        if kind is not None and kind != self.position_scheme:
            yield (), (f"disentangled attention needs the encoder's 'disentangled' position scheme, but the scheme "
                       f"at {ctx['position_path']} is {kind!r}")


@ATTENTION.register("disentangled", spec=DisentangledAttentionSpec,
                    description="DeBERTa-v2/v3 disentangled attention: c2p / p2c relative-position terms from the "
                                "'disentangled' position scheme's shared table.")
@serializable
class DisentangledAttention(MultiHeadAttention):
    """Weights as :class:`MultiHeadAttention` (``query``, ``key``, ``value``, ``attention_output``), plus
    ``pos_key_proj`` (c2p) / ``pos_query_proj`` (p2c) without ``share_att_key``. Called with
    ``disentangled=(relative_embeddings (K, H), relative_positions (S, S))`` from the position scheme: c2p
    ``[i, j] = q_i . pos_k[rel[i, j]]`` and p2c ``[i, j] = k_j . pos_q[rel[i, j]]`` (transformers' gathers at
    ``clamp(+-bucket + att_span)``, the rows already chosen by the scheme), each a MatMul against every row then
    one Gather of the flattened (row, relative) axis."""

    spec_cls = DisentangledAttentionSpec

    def __init__(self, spec, hidden_size, initializer=None, **kwargs):
        super().__init__(spec, hidden_size, initializer, **kwargs)
        s, h, init = self.spec, self.hidden_size, self.initializer_spec
        self.terms = [t for t in ("c2p", "p2c") if t in s.pos_att_type]
        self.scale_factor = 1 + len(self.terms)
        own, dt = not s.share_att_key, self.dtype_policy
        self.pos_key_proj = dense(h, init, "pos_key_proj", dtype=dt) if own and "c2p" in self.terms else None
        self.pos_query_proj = dense(h, init, "pos_query_proj", dtype=dt) if own and "p2c" in self.terms else None

    def build(self, x_shape, attention_bias_shape=None):
        super().build(x_shape, attention_bias_shape)
        for layer in (self.pos_key_proj, self.pos_query_proj):
            if layer is not None:
                layer.build((None, self.hidden_size))
        self.built = True

    @staticmethod
    def param_count(spec, hidden_size: int) -> int:
        own = 0 if spec.share_att_key else len(set(spec.pos_att_type))
        return (4 + own) * dense_params(hidden_size, hidden_size)

    @property
    def scale(self) -> float:
        """sqrt(head_size * scale_factor), in float32 as transformers' ``scaled_size_sqrt``."""
        return float(np.sqrt(np.float32(self.head_size) * np.float32(self.scale_factor)))

    def projection(self, term: str):
        """The Dense that projects the relative embeddings for ``term``: keys for c2p, queries for p2c."""
        if term == "c2p":
            return self.key if self.spec.share_att_key else self.pos_key_proj
        return self.query if self.spec.share_att_key else self.pos_query_proj

    def relative_logits(self, q, k, relative_embeddings, relative_positions):
        """(B, N, S, S): the c2p and p2c terms (unscaled)."""
        rel = relative_positions
        length = tf.shape(rel)[0]
        rows = tf.shape(relative_embeddings)[0]
        steps = tf.range(length) * rows
        total = None
        for term in self.terms:
            pos = split_heads(tf.expand_dims(self.projection(term)(relative_embeddings), 0), self.num_heads,
                              self.head_size)                                       # (1, N, K, D)
            att = tf.matmul(q if term == "c2p" else k, pos, transpose_b=True)       # (B, N, S, K)
            # c2p reads row i of att (the query), p2c row j (the key), at column rel[i, j]
            index = rel + (tf.expand_dims(steps, 1) if term == "c2p" else tf.expand_dims(steps, 0))
            flat = tf.reshape(att, tf.concat([tf.shape(att)[:2], [-1]], axis=0))
            value = tf.gather(flat, index, axis=2)
            total = value if total is None else total + value
        return total

    def call(self, x, attention_bias, training=None, disentangled=None):
        if disentangled is None:
            raise ValueError(f"{self.name}: disentangled attention is called with the 'disentangled' position "
                             f"scheme's tensors (disentangled=)")
        q = split_heads(self.query(x), self.num_heads, self.head_size)
        k = split_heads(self.key(x), self.num_heads, self.head_size)
        v = split_heads(self.value(x), self.num_heads, self.head_size)
        logits = tf.matmul(q, k, transpose_b=True)
        if self.terms:
            logits = logits + self.relative_logits(q, k, *disentangled)
        # times 1 / scale, a constant of the graph (dividing, the TFLite converter would fold a reciprocal of its own)
        # (in the logits' dtype: a float16 / bfloat16 policy's, float32 otherwise: the same constant)
        logits = logits * tf.constant(1.0 / self.scale, dtype=logits.dtype) + tf.cast(attention_bias, logits.dtype)
        probs = self.probs_dropout(tf.nn.softmax(logits, axis=-1), training=training)
        return self.attention_output(merge_heads(tf.matmul(probs, v), self.hidden_size))

    def onnx_lowering(self, ctx, x, query=None):
        return lower_disentangled(self, ctx, x, query)


# --- ONNX lowerings ---------------------------------------------------------------------------------
# An attention lowering gets the block's input ``x`` (B, S, H) and, when only some query rows are
# needed (the pruned last layer), ``query`` (B, F, H) taken from ``x``. It returns
# ``(attention_output @ W_o, b_o)``: the output bias is left to the block's fused residual + layer norm.

def _np(variable):
    return variable.numpy()


def lower_multi_head(layer, ctx, x, query=None):
    """All rows: one com.microsoft ``Attention`` (packed QKV MatMul, raw 0/1 mask, Keras' -10000
    mask value, and a position scheme's bias to add to the logits as its ``attention_bias``). Query rows
    only: Q/K/V MatMuls into com.microsoft ``MultiHeadAttention`` (raw 0/1 mask, the bias as its
    ``attention_bias``).
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
    if position_bias is not None and query is not None:
        q = g.node("MatMul", [query, ctx.weight(layer.query.kernel)], hint="query")
        k = g.node("MatMul", [x, ctx.weight(layer.key.kernel)], hint="key")
        v = g.node("MatMul", [x, ctx.weight(layer.value.kernel)], hint="value")
        context = g.ms("MultiHeadAttention", [q, k, v, bias, ctx.mask, position_bias], hint="attention",
                       num_heads=n, mask_filter_value=MASK_ADDER)
        ctx.record("attention", "MultiHeadAttention (attention_bias: position bias; first token)")
    elif query is None:
        # Attention computes the packed projection itself; a position bias goes in as its attention_bias
        # (input 5). Measured against Q/K/V MatMuls + MultiHeadAttention on MPNet-base (tools/results/
        # bench_families.json), the packed form is faster.
        kernel = ctx.derived(f"{path}/qkv/kernel", np.concatenate([_np(d.kernel) for d in dense], axis=1))
        inputs = [x, kernel, bias, ctx.mask] + ([None, position_bias] if position_bias is not None else [])
        context = g.ms("Attention", inputs, hint="attention", num_heads=n, mask_filter_value=MASK_ADDER)
        ctx.record("attention", "Attention" + (" (attention_bias: position bias)" if position_bias is not None else ""))
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


def lower_disentangled(layer, ctx, x, query=None):
    """Packed Q/K/V MatMul + Add and a Split (the pruned last layer: its query rows apart); per term the window
    of K relative rows projected and divided by sqrt(d * scale_factor) (folded at compile time:
    :func:`_relative_keys`), FusedMatMul of q against every row (c2p) or of every row against k (p2c), one
    GatherElements at the scheme's positions (:func:`_disentangled_index`); their sum is com.microsoft
    ``MultiHeadAttention``'s ``attention_bias``, its ``scale`` 1 / sqrt(d * scale_factor), the raw 0/1 key padding
    mask. The pruned last layer (the first token only) gathers the first row of each index."""
    from bertc.components.base import RowSelection

    g, n, d = ctx.g, layer.num_heads, layer.head_size
    rows = query is not None
    if rows and ctx.read_rows != RowSelection(first=True):
        raise NotLowerable(f"{layer.path}: disentangled attention for a row selection other than the first token")
    dense = (layer.query, layer.key, layer.value)
    if query is None and all(part.use_bias for part in dense):    # one MatMul (+ Add) and a Split
        h = layer.hidden_size
        kernel = ctx.derived(f"{layer.path}/qkv/kernel", np.concatenate([_np(part.kernel) for part in dense], axis=1))
        bias = ctx.derived(f"{layer.path}/qkv/bias", np.concatenate([_np(part.bias) for part in dense]))
        qkv = g.node("Add", [g.node("MatMul", [x, kernel], hint="qkv"), bias], hint="qkv_bias")
        q, k, v = g.node("Split", [qkv, g.ints([h, h, h], "qkv_split")], ["q", "k", "v"], axis=-1, hint="qkv_split")
    else:
        q = ctx.dense(x if query is None else query, layer.query)
        k = ctx.dense(x, layer.key)
        v = ctx.dense(x, layer.value)
    index = _disentangled_index(ctx, rows, n)                                            # (B, N, F, S)
    terms = []
    for term in layer.terms:
        keys = _relative_keys(layer, ctx, term)                                           # (N, K, D)
        if term == "c2p":       # [i, j] = (q_i . pos_k[r])[r = rel[i, j]]: row i of (B, N, F, K), column rel
            att = g.ms("FusedMatMul", [ctx.split_heads(q, n, d, (0, 2, 1, 3)), keys], hint="c2p_att", transB=1)
            terms.append(g.node("GatherElements", [att, index], axis=3, hint="c2p"))
        else:                   # [i, j] = (pos_q[r] . k_j)[r = rel[i, j]]: column j of (B, N, K, S), row rel
            att = g.ms("FusedMatMul", [keys, ctx.split_heads(k, n, d, (0, 2, 1, 3))], hint="p2c_att", transB=1)
            terms.append(g.node("GatherElements", [att, index], axis=2, hint="p2c"))
    bias = (terms[0] if len(terms) == 1 else g.node("Add", terms, hint="relative_bias")) if terms else None
    context = g.ms("MultiHeadAttention", [q, k, v, None, ctx.mask] + ([bias] if bias else []), hint="attention",
                   num_heads=n, mask_filter_value=MASK_ADDER, scale=1.0 / layer.scale)
    ctx.record("attention", "FusedMatMul+GatherElements (c2p, p2c) + MultiHeadAttention (attention_bias)"
               + (" (first token)" if rows else ""))
    return ctx.matmul(context, layer.attention_output)


def _relative_keys(layer, ctx, term: str) -> str:
    """(N, K, D): this layer's projection for ``term`` of the window of K relative rows, divided by sqrt(d *
    scale_factor), heads split (c2p's FusedMatMul reads it transposed, p2c's as it is). Weights only: folded at
    compile time into one (N, R, D) constant over the table's R rows (projected in float64), of which each batch
    slices its window (one contiguous block per head); the scheme's relative embeddings are projected in the
    graph only where the scheme has no table to fold."""
    g, n, d = ctx.g, layer.num_heads, layer.head_size
    table = ctx.positions.get("relative_table")
    if table is None:
        emb, _ = ctx.disentangled()
        pos = g.node("Mul", [ctx.dense(emb, layer.projection(term)), g.scalar(1.0 / layer.scale, "inv_scale")],
                     hint=f"{term}_pos")                                                 # (K, H), scaled
        return g.node("Transpose", [g.node("Reshape", [pos, g.ints([-1, n, d])])], perm=[1, 0, 2])
    dense = layer.projection(term)
    projected = ctx.once("relative_table", table) @ np.asarray(dense.kernel.numpy(), np.float64)
    if dense.bias is not None:
        projected = projected + np.asarray(dense.bias.numpy(), np.float64)
    projected = (projected / np.float64(layer.scale)).reshape(-1, n, d).transpose(1, 0, 2)     # (N, R, D)
    keys = ctx.derived(f"{layer.path}/{term}_relative_keys", projected)
    start, stop = ctx.positions["window_bounds"]
    ctx.record("position", "disentangled: relative keys / queries projected at compile time")
    return g.node("Slice", [keys, start, stop, g.const([1], np.int32, "axis")], hint=f"{term}_relative_keys")


def _disentangled_index(ctx, rows: bool, num_heads: int):
    """GatherElements indices of both relative terms, int32, computed once for every layer: the scheme's window
    row rel[i, j] expanded to (B, N, F, S). c2p reads it along the last axis of (B, N, F, K) (the query's row of
    its logits against every relative key), p2c along the third of (B, N, K, S) (every relative query against the
    key's column), so neither needs a transpose: an earlier lowering gathered p2c from (B, N, S, K) at rel
    transposed and transposed the result back. ``rows``: the first query row only (F = 1). One element gather per
    logit: Gather over a flattened (row, relative) axis costs ORT's CPU kernel six times as much at S = 128 (one
    copy per element, unthreaded)."""
    g = ctx.g

    def make():
        _, rel = ctx.disentangled()
        if rows:
            rel = g.node("Slice", [rel, g.ints([0], "start"), g.ints([1], "end"), g.ints([0], "axis")],
                         hint="relative_positions_first")
        batch = g.node("Shape", [ctx.mask], start=0, end=1)
        shape = g.node("Concat", [batch, g.ints([num_heads], "heads"), g.node("Shape", [rel])], axis=0)
        return g.node("Expand", [rel, shape], hint="relative_index")
    return ctx.once(("disentangled_index", rows), make)
