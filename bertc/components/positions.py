"""Position schemes (``encoder.position``): ``absolute`` (the default) and ``relative_bias``.

A position scheme (base class :class:`PositionScheme`) is a layer constructed as
``cls(spec=..., hidden_size=..., initializer=..., num_heads=..., name="position")``. The encoder
calls it once per batch on the model's inputs, ``scheme(inputs)`` -> a dict of per-batch tensors,
each optional:

- ``position_ids`` (B, S) int32: the rows of the embedding network's learned absolute position table
  that each token reads (absent: rows 0..S-1, the table sliced);
- ``attention_bias`` (1, N, S, S): added to every attention's logits, in every layer (with the
  mask's bias: the blocks receive the sum).

``onnx_lowering(ctx)`` returns the same dict as graph values; the encoder lowering computes it once
and the context hands it to every attention (:meth:`LoweringContext.position_bias`). A scheme that
changes nothing (``absolute`` with no offset, ids 0..S-1) returns ``{}`` and is never called, so
today's graphs are unchanged by it.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import tensorflow as tf

from bertc.components.base import portable
from bertc.components.common import SpecLayer, initializer, serializable
from bertc.registry import POSITIONS
from bertc.specbase import NonNegativeInt, PositiveInt, StrictModel


class AbsolutePositionSpec(StrictModel):
    """Learned absolute positions (the embedding network's ``position_embeddings`` table).

    ``offset``: the id of the first position (RoBERTa: ``padding_idx + 1`` = 2; the table then has
    ``max_sequence_length + offset`` rows). ``from_mask``: number the real tokens in order, skipping
    masked ones, as transformers derives RoBERTa's ids from the input ids (``cumsum(mask) * mask +
    padding_idx``): the k-th real token gets ``offset + k``, a masked token ``offset - 1``. A right-padded
    row and a row with holes in its mask then give each real token the same position."""

    type: Literal["absolute"] = "absolute"
    offset: NonNegativeInt = 0
    from_mask: bool = False

    def problems(self, ctx):
        if self.from_mask and self.offset < 1:
            yield ("offset",), "must be at least 1 with from_mask (masked tokens read row offset - 1)"


class RelativeBiasSpec(StrictModel):
    """Bucketed relative positions (T5, MPNet): a learned (num_buckets, num_heads) table, one for the whole
    encoder, turned into a (1, N, S, S) bias added to the logits of every layer's attention. ``absolute``
    says how the embedding network's learned absolute table, when it has one, is read (MPNet has both)."""

    type: Literal["relative_bias"] = "relative_bias"
    num_buckets: PositiveInt = 32
    max_distance: PositiveInt = 128
    bidirectional: bool = True
    absolute: AbsolutePositionSpec = AbsolutePositionSpec()

    def problems(self, ctx):
        exact = (self.num_buckets // 2 if self.bidirectional else self.num_buckets) // 2
        if exact < 1:
            yield ("num_buckets",), f"{self.num_buckets} is too few buckets (at least {4 if self.bidirectional else 2})"
        elif self.max_distance <= exact:
            yield ("max_distance",), (f"{self.max_distance} must exceed the {exact} exactly-bucketed distances "
                                      f"(num_buckets {self.num_buckets})")


class PositionScheme(SpecLayer):
    """Base of the position kind. Its lowering is the portable one: ``call(inputs)`` converted by tf2onnx
    and spliced in."""

    def __init__(self, spec, hidden_size, initializer=None, num_heads: int = 1, **kwargs):
        super().__init__(spec, hidden_size, initializer, **kwargs)
        self.num_heads = int(num_heads)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}

    @property
    def absolute(self) -> AbsolutePositionSpec:
        """How the embedding network's learned absolute table is read."""
        return AbsolutePositionSpec()

    @property
    def changes_graph(self) -> bool:
        """False when the scheme computes nothing (the embedding slices its table, no bias): not called."""
        return True

    # Whether ``call`` returns an ``attention_bias`` (a pruned last layer then computes every row when the
    # head reads rows named by an input).
    adds_attention_bias = True

    @staticmethod
    def param_count(spec, hidden_size: int, num_heads: int = 1) -> int:
        return 0

    def call(self, inputs):
        return {}

    @portable
    def onnx_lowering(self, ctx):
        names = ["input_word_ids", "input_mask"]
        args = [(ctx.int32_input(n), (None, None), tf.int32) for n in names]
        keys = sorted(self.call({n: tf.zeros((1, 2), tf.int32) for n in names}))
        outs = ctx.splice(self, args, lambda *ids: tuple(self.call(dict(zip(names, ids)))[k] for k in keys),
                          part="position")
        return dict(zip(keys, outs))


def absolute_position_ids(spec: AbsolutePositionSpec, mask):
    """(B, S) int32 ids into the absolute table (see :class:`AbsolutePositionSpec`)."""
    mask = tf.cast(mask, tf.int32)
    if spec.from_mask:
        return tf.cumsum(mask, axis=1) * mask + (spec.offset - 1)
    return tf.zeros_like(mask) + tf.expand_dims(tf.range(tf.shape(mask)[1]) + spec.offset, 0)


def lower_absolute_ids(spec: AbsolutePositionSpec, ctx):
    g = ctx.g
    mask = ctx.int32_input("input_mask")
    if spec.from_mask:
        ids = g.node("Mul", [g.node("CumSum", [mask, g.const(1, np.int32, "axis")]), mask])
        return g.node("Add", [ids, g.const(spec.offset - 1, np.int32, "padding_id")], hint="position_ids")
    length = g.node("Shape", [mask], start=1, end=2)
    steps = g.node("Range", [g.const(spec.offset, np.int32, "start"),
                             g.node("Add", [g.node("Squeeze", [g.node("Cast", [length], to=6)]),
                                            g.const(spec.offset, np.int32, "offset")]),
                             g.const(1, np.int32, "step")])
    return g.node("Add", [g.node("Mul", [mask, g.const(0, np.int32, "zero")]),
                          g.node("Unsqueeze", [steps, g.ints([0], "axes")])], hint="position_ids")


@POSITIONS.register("absolute", spec=AbsolutePositionSpec,
                    description="Learned absolute positions in the embedding network (optional offset; ids "
                                "from the mask as RoBERTa derives them).")
@serializable
class AbsolutePositions(PositionScheme):
    spec_cls = AbsolutePositionSpec
    adds_attention_bias = False

    @property
    def absolute(self) -> AbsolutePositionSpec:
        return self.spec

    @property
    def changes_graph(self) -> bool:
        return self.spec.offset != 0 or self.spec.from_mask

    def call(self, inputs):
        return {"position_ids": absolute_position_ids(self.spec, inputs["input_mask"])} if self.changes_graph else {}

    def onnx_lowering(self, ctx):
        if not self.changes_graph:
            return {}
        ctx.record("position", "position ids " + ("from the mask" if self.spec.from_mask else f"from {self.spec.offset}"))
        return {"position_ids": lower_absolute_ids(self.spec, ctx)}


def relative_buckets(spec: RelativeBiasSpec, length):
    """(S, S) int32 bucket of (key position - query position), T5's / MPNet's ``relative_position_bucket``."""
    positions = tf.range(length)
    relative = tf.expand_dims(positions, 0) - tf.expand_dims(positions, 1)      # [i, j] = j - i
    n = -relative
    buckets = spec.num_buckets
    ret = tf.zeros_like(n)
    if spec.bidirectional:
        buckets //= 2
        ret += tf.cast(n < 0, tf.int32) * buckets
        n = tf.abs(n)
    else:
        n = tf.maximum(n, 0)
    exact = buckets // 2
    # the float32 operations in transformers' order: log(n / exact) / log(max_distance / exact) * (buckets - exact)
    far = tf.math.log(tf.cast(tf.maximum(n, 1), tf.float32) / float(exact)) / math.log(spec.max_distance / exact)
    far = tf.cast(far * float(buckets - exact), tf.int32) + exact
    far = tf.minimum(far, buckets - 1)
    return ret + tf.where(n < exact, n, far)


@POSITIONS.register("relative_bias", spec=RelativeBiasSpec,
                    description="Bucketed relative positions (T5 / MPNet): one learned bias table for all layers, "
                                "added to every attention's logits.")
@serializable
class RelativeBias(PositionScheme):
    spec_cls = RelativeBiasSpec

    def build(self, input_shape=None):
        self.relative_attention_bias = self.add_weight(
            name="relative_attention_bias", shape=(self.spec.num_buckets, self.num_heads),
            initializer=initializer(self.initializer_spec))
        self.built = True

    @property
    def absolute(self) -> AbsolutePositionSpec:
        return self.spec.absolute

    @staticmethod
    def param_count(spec, hidden_size: int, num_heads: int = 1) -> int:
        return spec.num_buckets * num_heads

    def call(self, inputs):
        mask = inputs["input_mask"]
        buckets = relative_buckets(self.spec, tf.shape(mask)[1])
        bias = tf.gather(tf.convert_to_tensor(self.relative_attention_bias), buckets)      # (S, S, N)
        out = {"attention_bias": tf.expand_dims(tf.transpose(bias, [2, 0, 1]), 0)}          # (1, N, S, S)
        if self.spec.absolute.offset or self.spec.absolute.from_mask:
            out["position_ids"] = absolute_position_ids(self.spec.absolute, mask)
        return out

    def onnx_lowering(self, ctx):
        """The buckets as ONNX computes them (the same float32 log as Keras), one Gather of the table,
        Transpose to (1, N, S, S): computed once, fed to every attention."""
        g, s = ctx.g, self.spec
        with g.scope("relative_bias"):
            mask = ctx.int32_input("input_mask")
            length = g.node("Squeeze", [g.node("Cast", [g.node("Shape", [mask], start=1, end=2)], to=6)])
            positions = g.node("Range", [g.const(0, np.int32, "zero"), length, g.const(1, np.int32, "one")])
            n = g.node("Sub", [g.node("Unsqueeze", [positions, g.ints([1], "rows")]),
                               g.node("Unsqueeze", [positions, g.ints([0], "cols")])])      # [i, j] = i - j
            buckets = s.num_buckets
            ret = None
            if s.bidirectional:
                buckets //= 2
                ret = g.node("Mul", [g.node("Cast", [g.node("Less", [n, g.const(0, np.int32, "zero_i")])], to=6),
                                     g.const(buckets, np.int32, "half")])
                n = g.node("Abs", [n])
            else:
                n = g.node("Max", [n, g.const(0, np.int32, "zero_i")])
            exact = buckets // 2
            ratio = g.node("Div", [g.node("Cast", [g.node("Max", [n, g.const(1, np.int32, "one_i")])], to=1),
                                   g.const(float(exact), np.float32, "exact")])
            far = g.node("Div", [g.node("Log", [ratio]), g.const(math.log(s.max_distance / exact), np.float32, "log_max")])
            far = g.node("Cast", [g.node("Mul", [far, g.const(float(buckets - exact), np.float32, "scale")])], to=6)
            far = g.node("Min", [g.node("Add", [far, g.const(exact, np.int32, "exact_i")]),
                                 g.const(buckets - 1, np.int32, "last")])
            bucket = g.node("Where", [g.node("Less", [n, g.const(exact, np.int32, "exact_n")]), n, far])
            if ret is not None:
                bucket = g.node("Add", [ret, bucket])
            bias = g.node("Gather", [ctx.weight(self.relative_attention_bias), bucket], axis=0)    # (S, S, N)
            bias = g.node("Unsqueeze", [g.node("Transpose", [bias], perm=[2, 0, 1]), g.ints([0], "batch")],
                          hint="position_bias")
        ctx.record("position", "relative bias: buckets, Gather, computed once for every layer")
        out = {"attention_bias": bias}
        if s.absolute.offset or s.absolute.from_mask:
            out["position_ids"] = lower_absolute_ids(s.absolute, ctx)
        return out
