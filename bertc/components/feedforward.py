"""Feedforward sublayers: ``dense`` (canonical BERT) and ``gated`` (GLU / GEGLU).

A feedforward component is a layer constructed as
``cls(spec=..., hidden_size=..., initializer=..., norm_first=..., layer_norm_epsilon=..., name=...)``
and called as ``layer(x, training=...)``. It owns its residual connection and
layer norm (post-norm: ``LN(x + f(x))``; pre-norm: ``x + f(LN(x))``), as
Model Garden's feedforward blocks do, so that a gated feedforward can stack
``num_blocks`` of them. ``param_count(spec, hidden_size)`` is its closed-form
parameter count.
"""
from __future__ import annotations

from typing import Literal, Optional

import keras

from bertc import activations
from bertc.components.base import portable
from bertc.components.common import SpecLayer, dense, dense_params, layer_norm, serializable, with_last_dim
from bertc.onnx_graph import Residual
from bertc.registry import FEEDFORWARD
from bertc.specbase import Activation, InitializerSpec, PositiveInt, Rate, StrictModel


class DenseFeedforwardSpec(StrictModel):
    type: Literal["dense"] = "dense"
    intermediate_size: PositiveInt
    activation: Activation = "gelu"
    dropout_rate: Rate = 0.1
    initializer: Optional[InitializerSpec] = None


class GatedFeedforwardSpec(StrictModel):
    type: Literal["gated"] = "gated"
    intermediate_size: PositiveInt
    activation: Activation = "gelu"
    dropout_rate: Rate = 0.1
    use_gate: bool = True
    num_blocks: PositiveInt = 1
    dropout_position: Literal["before_residual", "after_residual"] = "before_residual"
    initializer: Optional[InitializerSpec] = None


class Feedforward(SpecLayer):
    """Base of the feedforward kind. Its lowering is the portable one: ``call(x)`` (residual and layer
    norm included), converted by tf2onnx and spliced in (:mod:`bertc.optimize.portable`)."""

    @staticmethod
    def param_count(spec, hidden_size: int) -> int:
        raise NotImplementedError

    @portable
    def onnx_lowering(self, ctx, x):
        import tensorflow as tf

        out, = ctx.splice(self, [(ctx.value(x), (None, None, getattr(self, "hidden_size", None)), tf.float32)],
                          lambda h: self.call(h, training=False), part="feedforward")
        return out


class _ResidualFeedforward(Feedforward):
    def __init__(self, spec, hidden_size, initializer=None, norm_first=False, layer_norm_epsilon=1e-12, **kwargs):
        super().__init__(spec, hidden_size, initializer, **kwargs)
        self.norm_first = bool(norm_first)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.activation_fn = activations.get(self.spec.activation)

    def get_config(self):
        config = super().get_config()
        config.update(norm_first=self.norm_first, layer_norm_epsilon=self.layer_norm_epsilon)
        return config

    def residual(self, x, transform, dropout, norm, training, dropout_after=False):
        y = transform(norm(x) if self.norm_first else x)
        if not dropout_after:
            y = dropout(y, training=training)
        out = x + y
        if not self.norm_first:
            out = norm(out)
        return dropout(out, training=training) if dropout_after else out


@FEEDFORWARD.register("dense", spec=DenseFeedforwardSpec,
                      description="Dense -> activation -> dense, with residual and layer norm (canonical BERT).")
@serializable
class DenseFeedforward(_ResidualFeedforward):
    spec_cls = DenseFeedforwardSpec

    def __init__(self, spec, hidden_size, initializer=None, norm_first=False, layer_norm_epsilon=1e-12, **kwargs):
        super().__init__(spec, hidden_size, initializer, norm_first, layer_norm_epsilon, **kwargs)
        init, dt = self.initializer_spec, self.dtype_policy
        self.intermediate = dense(self.spec.intermediate_size, init, "intermediate", dtype=dt)
        self.output_dense = dense(self.hidden_size, init, "output", dtype=dt)
        self.output_dropout = keras.layers.Dropout(self.spec.dropout_rate, name="output_dropout", dtype=dt)
        self.output_layer_norm = layer_norm(self.layer_norm_epsilon, "output_layer_norm", dtype=dt)

    def build(self, x_shape):
        self.intermediate.build(x_shape)
        self.output_dense.build(with_last_dim(x_shape, self.spec.intermediate_size))
        self.output_layer_norm.build(x_shape)
        self.built = True

    @staticmethod
    def param_count(spec, hidden_size: int) -> int:
        i = spec.intermediate_size
        return dense_params(hidden_size, i) + dense_params(i, hidden_size) + 2 * hidden_size

    def _transform(self, x):
        return self.output_dense(self.activation_fn(self.intermediate(x)))

    def call(self, x, training=None):
        return self.residual(x, self._transform, self.output_dropout, self.output_layer_norm, training)

    def onnx_lowering(self, ctx, x):
        def transform(h):
            inner, bias = ctx.matmul(h, self.intermediate)
            inner = ctx.activation(inner, bias, self.spec.activation, part="feedforward_activation")
            return ctx.matmul(inner, self.output_dense)
        return lower_residual(self, ctx, x, transform, self.output_layer_norm)


@FEEDFORWARD.register("gated", spec=GatedFeedforwardSpec,
                      description="Gated linear unit feedforward (GEGLU with gelu), weight 'gate'; stackable.")
@serializable
class GatedFeedforward(_ResidualFeedforward):
    """Model Garden's GatedFeedforward: act(x W_i) * (x W_g) -> W_o, ``num_blocks`` times."""

    spec_cls = GatedFeedforwardSpec

    def __init__(self, spec, hidden_size, initializer=None, norm_first=False, layer_norm_epsilon=1e-12, **kwargs):
        super().__init__(spec, hidden_size, initializer, norm_first, layer_norm_epsilon, **kwargs)
        init, s, dt, n = self.initializer_spec, self.spec, self.dtype_policy, self.spec.num_blocks
        self.intermediate = [dense(s.intermediate_size, init, f"intermediate_{i}", dtype=dt) for i in range(n)]
        self.gate = [dense(s.intermediate_size, init, f"gate_{i}", dtype=dt) for i in range(n)] if s.use_gate else None
        self.output_dense = [dense(self.hidden_size, init, f"output_{i}", dtype=dt) for i in range(n)]
        self.output_dropout = [keras.layers.Dropout(s.dropout_rate, name=f"output_dropout_{i}", dtype=dt)
                               for i in range(n)]
        self.output_layer_norm = [layer_norm(self.layer_norm_epsilon, f"output_layer_norm_{i}", dtype=dt)
                                  for i in range(n)]

    def build(self, x_shape):
        inner = with_last_dim(x_shape, self.spec.intermediate_size)
        for i in range(self.spec.num_blocks):
            self.intermediate[i].build(x_shape)
            if self.gate is not None:
                self.gate[i].build(x_shape)
            self.output_dense[i].build(inner)
            self.output_layer_norm[i].build(x_shape)
        self.built = True

    @staticmethod
    def param_count(spec, hidden_size: int) -> int:
        h, i = hidden_size, spec.intermediate_size
        per_block = dense_params(h, i) + dense_params(i, h) + 2 * h
        if spec.use_gate:
            per_block += dense_params(h, i)
        return spec.num_blocks * per_block

    def call(self, x, training=None):
        after = self.spec.dropout_position == "after_residual"
        for i in range(self.spec.num_blocks):
            def transform(h, i=i):
                inner = self.activation_fn(self.intermediate[i](h))
                if self.gate is not None:
                    inner = inner * self.gate[i](h)
                return self.output_dense[i](inner)

            x = self.residual(x, transform, self.output_dropout[i], self.output_layer_norm[i], training, after)
        return x

    def onnx_lowering(self, ctx, x):
        for i in range(self.spec.num_blocks):
            def transform(h, i=i):
                inner, bias = ctx.matmul(h, self.intermediate[i])
                inner = ctx.activation(inner, bias, self.spec.activation, part=f"feedforward_activation_{i}")
                if self.gate is not None:
                    inner = ctx.g.node("Mul", [inner, ctx.dense(h, self.gate[i])], hint=f"gate_{i}")
                return ctx.matmul(inner, self.output_dense[i])
            x = lower_residual(self, ctx, x, transform, self.output_layer_norm[i])
        return x


# --- ONNX lowerings ---------------------------------------------------------------------------------

def lower_residual(layer, ctx, x, transform, norm):
    """Post-norm ``LN(x + f(x))``: one residual layer norm (residual + f's output bias + LN, ``ctx.layer_norm``).
    Pre-norm ``x + f(LN(x))``: the incoming pending sum and LN become one residual layer norm
    (its sum output is ``x``); the result is left as a pending sum for the next layer norm."""
    if layer.norm_first:
        normed, summed = ctx.layer_norm(x, norm, want_sum=True)
        y, bias = transform(normed)
        return Residual(y, summed, bias)
    x = ctx.value(x)
    y, bias = transform(x)
    return ctx.layer_norm(Residual(y, x, bias), norm)[0]
