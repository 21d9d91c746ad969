"""Transformer blocks: ``transformer`` (canonical), ``rezero`` and ``scaffold``.

A block component is a layer constructed as
``cls(spec=..., hidden_size=..., initializer=..., name=...)`` and called as
``layer(x, attention_bias, training=...)`` -> (B, S, H); with a rotary position scheme also with
``rotary=(cos, sin)`` (this layer's (S, D) angles), with a disentangled one with ``disentangled=(relative
embeddings, relative positions)``, which it passes on to its attention (never passed without such a scheme).
``param_count(spec, hidden_size)`` is its closed-form parameter count.

``transformer`` is a ``scaffold`` block with ``multi_head`` attention and a
``dense`` feedforward: same layer, same weight names, so a canonical encoder's
weights load into a default scaffold encoder unchanged.
"""
from __future__ import annotations

from typing import Literal, Optional

import keras

from bertc import activations
from bertc.components.attention import MultiHeadAttention, MultiHeadAttentionSpec
from bertc.components.base import portable
from bertc.components.common import SpecLayer, dense, dense_params, layer_norm, serializable, with_last_dim
from bertc.components.feedforward import DenseFeedforwardSpec
from bertc.onnx_graph import Residual
from bertc.registry import ATTENTION, BLOCKS, FEEDFORWARD
from bertc.specbase import Activation, Epsilon, InitializerSpec, PositiveInt, Rate, StrictModel, component_field


def _heads_problem(hidden_ctx, num_heads, field="num_attention_heads"):
    hidden = hidden_ctx.get("hidden_size")
    if hidden and hidden % num_heads:
        yield (field,), (
            f"hidden_size {hidden} (at {hidden_ctx['hidden_size_path']}) is not divisible by {field} {num_heads}"
        )


class ScaffoldBlockSpec(StrictModel):
    type: Literal["scaffold"] = "scaffold"
    attention: component_field("attention")  # any registered attention spec, by its "type"
    feedforward: component_field("feedforward")
    dropout_rate: Rate = 0.1
    norm_first: bool = False
    layer_norm_epsilon: Epsilon = 1e-12
    initializer: Optional[InitializerSpec] = None

    def as_scaffold(self) -> "ScaffoldBlockSpec":
        return self


class TransformerBlockSpec(StrictModel):
    type: Literal["transformer"] = "transformer"
    num_attention_heads: PositiveInt
    intermediate_size: PositiveInt
    activation: Activation = "gelu"
    dropout_rate: Rate = 0.1
    attention_dropout_rate: Rate = 0.1
    norm_first: bool = False
    layer_norm_epsilon: Epsilon = 1e-12
    initializer: Optional[InitializerSpec] = None

    def problems(self, ctx):
        yield from _heads_problem(ctx, self.num_attention_heads)

    def as_scaffold(self) -> ScaffoldBlockSpec:
        return ScaffoldBlockSpec(
            attention=MultiHeadAttentionSpec(num_heads=self.num_attention_heads, dropout_rate=self.attention_dropout_rate),
            feedforward=DenseFeedforwardSpec(intermediate_size=self.intermediate_size, activation=self.activation,
                                             dropout_rate=self.dropout_rate),
            dropout_rate=self.dropout_rate, norm_first=self.norm_first,
            layer_norm_epsilon=self.layer_norm_epsilon, initializer=self.initializer,
        )


class ReZeroBlockSpec(StrictModel):
    type: Literal["rezero"] = "rezero"
    num_attention_heads: PositiveInt
    intermediate_size: PositiveInt
    activation: Activation = "gelu"
    dropout_rate: Rate = 0.1
    attention_dropout_rate: Rate = 0.1
    use_layer_norm: bool = False
    share_rezero: bool = True
    layer_norm_epsilon: Epsilon = 1e-12
    initializer: Optional[InitializerSpec] = None

    def problems(self, ctx):
        yield from _heads_problem(ctx, self.num_attention_heads)


def position_arguments(rotary=None, disentangled=None) -> dict:
    """The position scheme's per-layer tensors a block passes on to its attention, only those it was given."""
    return {k: v for k, v in (("rotary", rotary), ("disentangled", disentangled)) if v is not None}


class Block(SpecLayer):
    """Base of the block kind. Its lowering is the portable one: ``call(x, attention_bias)``, converted
    by tf2onnx and spliced in (:mod:`bertc.optimize.portable`). It computes every row; a pruned last
    layer's output is then the rows the outputs read."""

    @staticmethod
    def param_count(spec, hidden_size: int) -> int:
        raise NotImplementedError

    @portable
    def onnx_lowering(self, ctx, x, rows_only=False):
        import tensorflow as tf

        args = [(ctx.value(x), (None, None, getattr(self, "hidden_size", None)), tf.float32),
                (ctx.attention_bias(), ctx.attention_bias_shape, tf.float32)]
        if not ctx.layer_positions:
            out, = ctx.splice(self, args, lambda h, bias: self.call(h, bias, training=False), part="block")
        else:   # this layer's position tensors (rotary (cos, sin); disentangled ones), traced as more inputs
            extra, as_kwargs = ctx.layer_position_args(getattr(self, "hidden_size", None))
            out, = ctx.splice(self, args + extra,
                              lambda h, bias, *pos: self.call(h, bias, training=False, **as_kwargs(pos)), part="block")
        return ctx.rows(out) if rows_only else out


@BLOCKS.register("scaffold", spec=ScaffoldBlockSpec,
                 description="Block with pluggable attention and feedforward (Model Garden TransformerScaffold).")
@serializable
class ScaffoldBlock(Block):
    spec_cls = ScaffoldBlockSpec

    def __init__(self, spec, hidden_size, initializer=None, **kwargs):
        super().__init__(spec, hidden_size, initializer, **kwargs)
        s = self.spec.as_scaffold()
        self.norm_first = s.norm_first
        init, dt = s.initializer or self.initializer_spec, self.dtype_policy
        self.attention = ATTENTION.component(s.attention.type)(
            spec=s.attention, hidden_size=self.hidden_size, initializer=init, name="attention", dtype=dt)
        self.attention_dropout = keras.layers.Dropout(s.dropout_rate, name="attention_dropout", dtype=dt)
        self.attention_layer_norm = layer_norm(s.layer_norm_epsilon, "attention_layer_norm", dtype=dt)
        self.feedforward = FEEDFORWARD.component(s.feedforward.type)(
            spec=s.feedforward, hidden_size=self.hidden_size, initializer=init, norm_first=s.norm_first,
            layer_norm_epsilon=s.layer_norm_epsilon, name="feedforward", dtype=dt)

    def build(self, x_shape, attention_bias_shape=None):
        self.attention.build(x_shape, attention_bias_shape)
        self.attention_layer_norm.build(x_shape)
        self.feedforward.build(x_shape)
        self.built = True

    @staticmethod
    def param_count(spec, hidden_size: int) -> int:
        s = spec.as_scaffold()
        return (ATTENTION.component(s.attention.type).param_count(s.attention, hidden_size)
                + 2 * hidden_size
                + FEEDFORWARD.component(s.feedforward.type).param_count(s.feedforward, hidden_size))

    def call(self, x, attention_bias, training=None, rotary=None, disentangled=None):
        h = self.attention_layer_norm(x) if self.norm_first else x
        extra = position_arguments(rotary, disentangled)
        x = x + self.attention_dropout(self.attention(h, attention_bias, training=training, **extra), training=training)
        if not self.norm_first:
            x = self.attention_layer_norm(x)
        return self.feedforward(x, training=training)

    def onnx_lowering(self, ctx, x, rows_only=False):
        return lower_scaffold_block(self, ctx, x, rows_only)


@BLOCKS.register("transformer", spec=TransformerBlockSpec,
                 description="Canonical BERT block: multi-head attention + dense feedforward, post- or pre-norm.")
@serializable
class TransformerBlock(ScaffoldBlock):
    """A scaffold block with ``multi_head`` attention and a ``dense`` feedforward (its spec says which)."""

    spec_cls = TransformerBlockSpec


@BLOCKS.register("rezero", spec=ReZeroBlockSpec,
                 description="ReZero block: residuals scaled by a trainable 'rezero_alpha' initialised to 0.")
@serializable
class ReZeroBlock(Block):
    """Bachlechner et al. 2020, as Model Garden's ReZeroTransformer.

    ``x + alpha * attn(x)`` then ``y + alpha * ffn(y)``; ``use_layer_norm`` adds
    the layer norms of the paper's "ReZero + LayerNorm" variant;
    ``share_rezero: false`` gives the feedforward its own ``rezero_alpha_ffn``.
    """

    spec_cls = ReZeroBlockSpec

    def __init__(self, spec, hidden_size, initializer=None, **kwargs):
        super().__init__(spec, hidden_size, initializer, **kwargs)
        s, init, h, dt = self.spec, self.initializer_spec, self.hidden_size, self.dtype_policy
        self.attention = MultiHeadAttention(
            spec=MultiHeadAttentionSpec(num_heads=s.num_attention_heads, dropout_rate=s.attention_dropout_rate),
            hidden_size=h, initializer=init, name="attention", dtype=dt)
        self.attention_dropout = keras.layers.Dropout(s.dropout_rate, name="attention_dropout", dtype=dt)
        self.intermediate = dense(s.intermediate_size, init, "intermediate", dtype=dt)
        self.output_dense = dense(h, init, "output", dtype=dt)
        self.output_dropout = keras.layers.Dropout(s.dropout_rate, name="output_dropout", dtype=dt)
        self.activation_fn = activations.get(s.activation)
        if s.use_layer_norm:
            self.attention_layer_norm = layer_norm(s.layer_norm_epsilon, "attention_layer_norm", dtype=dt)
            self.output_layer_norm = layer_norm(s.layer_norm_epsilon, "output_layer_norm", dtype=dt)

    def build(self, x_shape, attention_bias_shape=None):
        self.rezero_alpha = self.add_weight(name="rezero_alpha", shape=(), initializer="zeros")
        self.rezero_alpha_ffn = self.rezero_alpha if self.spec.share_rezero else self.add_weight(
            name="rezero_alpha_ffn", shape=(), initializer="zeros")
        self.attention.build(x_shape, attention_bias_shape)
        self.intermediate.build(x_shape)
        self.output_dense.build(with_last_dim(x_shape, self.spec.intermediate_size))
        if self.spec.use_layer_norm:
            self.attention_layer_norm.build(x_shape)
            self.output_layer_norm.build(x_shape)
        self.built = True

    @staticmethod
    def param_count(spec, hidden_size: int) -> int:
        h, i = hidden_size, spec.intermediate_size
        n = 4 * dense_params(h, h) + dense_params(h, i) + dense_params(i, h)
        n += 1 if spec.share_rezero else 2
        return n + (4 * h if spec.use_layer_norm else 0)

    def call(self, x, attention_bias, training=None, rotary=None, disentangled=None):
        extra = position_arguments(rotary, disentangled)
        a = self.attention_dropout(self.attention(x, attention_bias, training=training, **extra), training=training)
        x = x + self.rezero_alpha * a
        if self.spec.use_layer_norm:
            x = self.attention_layer_norm(x)
        f = self.output_dropout(self.output_dense(self.activation_fn(self.intermediate(x))), training=training)
        x = x + self.rezero_alpha_ffn * f
        if self.spec.use_layer_norm:
            x = self.output_layer_norm(x)
        return x

    def onnx_lowering(self, ctx, x, rows_only=False):
        return lower_rezero_block(self, ctx, x, rows_only)


# --- ONNX lowerings ---------------------------------------------------------------------------------
# A block lowering gets the layer input (a value, or a pending residual sum that a layer norm can
# fuse) and returns the layer output the same way. ``rows_only``: the outputs read only some rows of
# this layer's output (``ctx.read_rows``: the first token, masked positions), so attention output and
# feedforward are computed for those rows alone (queries from those rows, keys and values from every
# row); the layer's output then has those rows only, in ``ctx.rows`` order.

def lower_scaffold_block(layer, ctx, x, rows_only=False):
    """Post-norm: Attention -> residual layer norm (residual + output bias + LN, ``ctx.layer_norm``) -> feedforward.
    Pre-norm: the incoming residual sum and this layer's first layer norm become one
    residual layer norm whose sum is the residual branch."""
    if layer.norm_first:
        normed, summed = ctx.layer_norm(x, layer.attention_layer_norm, want_sum=True)
        query = ctx.rows(normed) if rows_only else None
        a, bias = ctx.lower(layer.attention, normed, query)
        skip = ctx.rows(summed) if rows_only else summed
        return ctx.lower(layer.feedforward, Residual(a, skip, bias))
    x = ctx.value(x)
    query = ctx.rows(x) if rows_only else None
    a, bias = ctx.lower(layer.attention, x, query)
    h, _ = ctx.layer_norm(Residual(a, query or x, bias), layer.attention_layer_norm)
    return ctx.lower(layer.feedforward, h)


def lower_rezero_block(layer, ctx, x, rows_only=False):
    """x + alpha * (attention + b_o): the bias is pre-scaled (alpha * b_o), so with use_layer_norm
    the sum and the norm are one residual layer norm (``ctx.layer_norm``); without it the sum stays pending."""
    g, s = ctx.g, layer.spec
    alpha, alpha_ffn = float(layer.rezero_alpha.numpy()), float(layer.rezero_alpha_ffn.numpy())
    x = ctx.value(x)
    query = ctx.rows(x) if rows_only else None
    a, _ = ctx.lower(layer.attention, x, query)
    out = layer.attention.attention_output
    a = g.node("Mul", [a, ctx.weight(layer.rezero_alpha)], hint="rezero_scale")
    r = Residual(a, query or x, ctx.derived(f"{out.bias.path}*{layer.rezero_alpha.path}", out.bias.numpy() * alpha))
    h = ctx.layer_norm(r, layer.attention_layer_norm)[0] if s.use_layer_norm else ctx.value(r)
    inner, inner_bias = ctx.matmul(h, layer.intermediate)
    inner = ctx.activation(inner, inner_bias, s.activation, part="feedforward_activation")
    f, _ = ctx.matmul(inner, layer.output_dense)
    alpha_ffn_var = layer.rezero_alpha_ffn
    f = g.node("Mul", [f, ctx.weight(alpha_ffn_var)], hint="rezero_scale_ffn")
    r = Residual(f, h, ctx.derived(f"{layer.output_dense.bias.path}*{alpha_ffn_var.path}",
                                   layer.output_dense.bias.numpy() * alpha_ffn))
    return ctx.layer_norm(r, layer.output_layer_norm)[0] if s.use_layer_norm else r
