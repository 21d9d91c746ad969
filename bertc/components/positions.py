"""Position schemes (``encoder.position``): ``absolute`` (the default), ``relative_bias``, ``rotary`` and
``disentangled``.

A position scheme (base class :class:`PositionScheme`) is a layer constructed as
``cls(spec=..., hidden_size=..., initializer=..., num_heads=..., max_sequence_length=..., name="position")``. The encoder
calls it once per batch on the model's inputs, ``scheme(inputs)`` -> a dict of per-batch tensors,
each optional:

- ``position_ids`` (B, S) int32: the rows of the embedding network's learned absolute position table
  that each token reads (absent: rows 0..S-1, the table sliced);
- ``attention_bias`` (1, N, S, S): added to every attention's logits, in every layer (with the
  mask's bias: the blocks receive the sum);
- ``rotary``: one ``(cos, sin)`` pair of (S, D) float32 tensors (D the head size) per distinct theta
  (:meth:`RotaryPositions.theta_index` says which pair layer i reads). The encoder passes layer i's pair to
  its block as ``rotary=(cos, sin)``, the block to its attention, which rotates queries and keys after
  splitting heads (``q * cos + rotate_half(q) * sin``). Without a rotary scheme no block or attention is
  passed a ``rotary`` argument at all.
- ``relative_embeddings`` (K, H) and ``relative_positions`` (S, S) int32 (``disentangled``): passed to every
  layer's block as ``disentangled=(relative_embeddings, relative_positions)``, and on to its ``disentangled``
  attention.

Which per-batch tensors layer i's block is called with is the scheme's :meth:`PositionScheme.for_layer`
(keyword arguments: ``rotary=``, ``disentangled=``; none for the other schemes, so their graphs are unchanged).

``disentangled`` (DeBERTa-v2/v3, as transformers' ``DebertaV2Encoder`` / ``DisentangledSelfAttention``): one
learned ``rel_embeddings`` table (2 * position_buckets rows, or 2 * max_relative_positions without buckets;
max_relative_positions < 1: max_sequence_length) and, with ``norm_rel_ebd: layer_norm``, its ``rel_layer_norm``.
transformers' relative position of query i and key j is ``i - j`` (``build_relative_position``), log-bucketed
(``make_log_bucket_position``, :func:`log_bucket_positions`: the same float32 operations in numpy); c2p reads
table row ``clamp(bucket(i - j) + att_span, 0, 2 att_span - 1)``, p2c ``clamp(-bucket(j - i) + att_span, ...)``:
the same row (buckets are odd). So the scheme gathers, for length S, the window of K (normed) table rows that
the relative positions ``i - j`` of length S read (a graph constant of (first, stop) per length,
:func:`disentangled_row_window`: K = 2S - 1 up to S = position_buckets / 2, then fewer, the log buckets sharing
rows), and ``relative_positions[i, j]`` is the window row of ``i - j``, from a graph constant lookup of size
2 * max_sequence_length - 1 (:func:`disentangled_row_lookup`; every backend reads identical rows, the TFLite
converter folds no float arithmetic, and the gathered table is no constant it could fold layer norm and
projections into).

``rotary`` (RoPE, as transformers' GPT-NeoX / ModernBERT compute it: ``rotate_half``, not interleaved)
has no weights: ``inv_freq = 1 / theta ** (arange(0, D, 2) / D)`` (float64, then a float32 constant),
angles ``float32(position) * inv_freq`` for positions 0..S-1, ``emb = concat(angles, angles)``.
``layer_theta`` gives each layer its own theta (ModernBERT: 160000 on its global-attention layers, 10000
on the others). The embedding network must then have no learned absolute position table (checked at load
time). In the optimized graph q and k are rotated by com.microsoft ``RotaryEmbedding`` from in-graph
(S, D/2) cos / sin caches (one per theta, computed once), before com.microsoft ``MultiHeadAttention``.

``onnx_lowering(ctx)`` returns the same dict as graph values (``rotary``: one :class:`RotaryCache` per
theta); the encoder lowering computes it once and the context hands it to every attention
(:meth:`LoweringContext.position_bias`; a layer's rotary caches through ``ctx.layer_positions`` and
:meth:`LoweringContext.rotary`). A scheme that
changes nothing (``absolute`` with no offset, ids 0..S-1) returns ``{}`` and is never called, so
today's graphs are unchanged by it.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal, NamedTuple, Optional

import numpy as np
import tensorflow as tf
import keras
from pydantic import Field

from bertc.components.base import portable
from bertc.components.common import SpecLayer, check_sequence_length, initializer, serializable
from bertc.onnx_graph import KEEP_FP32
from bertc.registry import POSITIONS
from bertc.specbase import NonNegativeInt, PositiveInt, StrictModel


class AbsolutePositionSpec(StrictModel):
    """Learned absolute positions (the embedding network's ``position_embeddings`` table).

    ``offset``: the id of the first position (RoBERTa: ``padding_idx + 1`` = 2; the table then has
    ``max_sequence_length + offset`` rows). ``from_ids``: transformers' RoBERTa / MPNet numbering
    (``create_position_ids_from_input_ids``: ``cumsum(ids != padding_idx) * (ids != padding_idx) +
    padding_idx``, padding_idx = ``offset - 1``): the tokens whose id is not the pad id are numbered in order,
    ``offset + k`` for the k-th, whatever the mask says, and a token whose id is the pad id reads row
    ``offset - 1``, also a real one (the text "<pad>"). ``from_mask``: the same counted over the mask instead:
    the k-th real token gets ``offset + k``, a masked token ``offset - 1``; it equals ``from_ids`` only where
    the pad id is exactly where the mask is 0. Either way a right-padded row and a row with holes in its mask
    (holding the pad id) give each real token the same position."""

    type: Literal["absolute"] = "absolute"
    offset: NonNegativeInt = 0
    from_mask: bool = False
    from_ids: bool = False

    @property
    def counted(self) -> bool:
        """Whether the ids are counted per row (``from_mask`` or ``from_ids``), not 0..S-1 plus the offset."""
        return self.from_mask or self.from_ids

    def problems(self, ctx):
        if self.from_mask and self.from_ids:
            yield ("from_ids",), ("and from_mask are two numberings of the positions (from the ids, as transformers "
                                  "numbers RoBERTa's, or from the mask): set one of them")
        elif self.from_mask and self.offset < 1:
            yield ("offset",), "must be at least 1 with from_mask (masked tokens read row offset - 1)"
        elif self.from_ids and self.offset < 1:
            yield ("offset",), "must be at least 1 with from_ids (tokens with the pad id, offset - 1, read that row)"
        if ctx.get("embedding_position_table", "") is None:
            # the encoder's embedding network has no learned absolute table: nothing would read these settings
            for field, set_ in (("offset", self.offset != 0), ("from_ids", self.from_ids), ("from_mask", self.from_mask)):
                if set_:
                    yield (field,), ("is set, but the encoder's embedding network has no learned absolute position "
                                     "table to read it (a 'modernbert' embedding, or a 'custom' one without "
                                     "use_position_embeddings): remove it, or give the embedding a position table")


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


Theta = Annotated[float, Field(gt=0.0)]


class RotarySpec(StrictModel):
    """Rotary position embeddings (RoPE; GPT-NeoX / ModernBERT ``rotate_half``, not interleaved): queries and
    keys rotated by position-dependent angles, no weights. ``theta``: the base of the frequencies;
    ``layer_theta``: one theta per layer instead (ModernBERT: 160000 on every third layer, 10000 on the
    others). The encoder's embedding network must have no learned absolute position table."""

    type: Literal["rotary"] = "rotary"
    theta: Theta = 10000.0
    layer_theta: Optional[list[Theta]] = None

    def problems(self, ctx):
        n = ctx.get("num_layers")
        if self.layer_theta is not None and n is not None and len(self.layer_theta) != n:
            yield ("layer_theta",), (f"has {len(self.layer_theta)} values but the encoder has {n} layers "
                                     f"(num_layers at {ctx['num_layers_path']}): give one theta per layer")
        d = ctx.get("head_size")
        if d and d % 2:
            yield (), f"rotary positions need an even head size, but the first block's heads are {d} wide"
        table = ctx.get("embedding_position_table")
        if table:
            yield (), (f"rotary positions replace learned absolute positions, but the embedding network adds "
                       f"them: {table}. Use a custom embedding without position embeddings")


class RotaryCache(NamedTuple):
    """One theta's rotary values in the optimized graph: the (S, D/2) cos / sin caches that com.microsoft
    ``RotaryEmbedding`` reads (position ids 0..S-1)."""

    cos: str
    sin: str
    head_size: int
    theta: float


class PositionScheme(SpecLayer):
    """Base of the position kind. Its lowering is the portable one: ``call(inputs)`` converted by tf2onnx
    and spliced in."""

    def __init__(self, spec, hidden_size, initializer=None, num_heads: int = 1, max_sequence_length: int = 512,
                 **kwargs):
        super().__init__(spec, hidden_size, initializer, **kwargs)
        self.num_heads = int(num_heads)
        self.max_sequence_length = int(max_sequence_length)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "max_sequence_length": self.max_sequence_length}

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
    def param_count(spec, hidden_size: int, num_heads: int = 1, max_sequence_length: int = 512) -> int:
        return 0

    def for_layer(self, positions: dict, layer: int) -> dict:
        """Layer ``layer``'s share of the per-batch values ``positions`` (Keras tensors from ``call``, or graph
        values from ``onnx_lowering``): the keyword arguments its block is called with and passes on to its
        attention (``rotary=``, ``disentangled=``), in the lowering ``ctx.layer_positions``. None here: every
        layer reads only the attention bias and the embedding's ids."""
        return {}

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


def absolute_position_ids(spec: AbsolutePositionSpec, mask, ids=None):
    """(B, S) int32 ids into the absolute table (see :class:`AbsolutePositionSpec`); ``ids``: the input word ids
    (needed by ``from_ids``)."""
    mask = tf.cast(mask, tf.int32)
    if spec.from_ids:
        if ids is None:
            raise ValueError("from_ids positions are numbered from the input word ids: pass them")
        counted = tf.cast(tf.not_equal(tf.cast(ids, tf.int32), spec.offset - 1), tf.int32)
        return tf.cumsum(counted, axis=1) * counted + (spec.offset - 1)
    if spec.from_mask:
        return tf.cumsum(mask, axis=1) * mask + (spec.offset - 1)
    return tf.zeros_like(mask) + tf.expand_dims(tf.range(tf.shape(mask)[1]) + spec.offset, 0)


def lower_absolute_ids(spec: AbsolutePositionSpec, ctx):
    g = ctx.g
    if spec.from_ids:   # Equal + Not (ONNX has no NotEqual), Cast, CumSum, Mul, Add: transformers' formula
        padding_id = g.const(spec.offset - 1, np.int32, "padding_id")
        counted = g.node("Cast", [g.node("Not", [g.node("Equal", [ctx.int32_input("input_word_ids"), padding_id])])],
                         to=6, hint="not_padding_id")
        ids = g.node("Mul", [g.node("CumSum", [counted, g.const(1, np.int32, "axis")]), counted])
        return g.node("Add", [ids, padding_id], hint="position_ids")
    mask = ctx.int32_input("input_mask")
    if spec.from_mask:
        ids = g.node("Mul", [g.node("CumSum", [mask, g.const(1, np.int32, "axis")]), mask])
        return g.node("Add", [ids, g.const(spec.offset - 1, np.int32, "padding_id")], hint="position_ids")
    length = g.node("Shape", [mask], start=1, end=2)
    # Range in int64 (the Shape's type), then int32: ONNX Runtime (1.32) refuses a Range fed by Cast(Shape) to
    # int32 once the sequence dimension is concrete (a free-dimension override): "All inputs to 'Range' op must be
    # of the same type" (its shape inference, not the graph, is wrong; the int64 Range avoids it, same values)
    steps = g.node("Cast", [g.node("Range", [g.const(spec.offset, np.int64, "start"),
                                             g.node("Add", [g.node("Squeeze", [length]),
                                                            g.const(spec.offset, np.int64, "offset")]),
                                             g.const(1, np.int64, "step")])], to=6)
    return g.node("Add", [g.node("Mul", [mask, g.const(0, np.int32, "zero")]),
                          g.node("Unsqueeze", [steps, g.ints([0], "axes")])], hint="position_ids")


@POSITIONS.register("absolute", spec=AbsolutePositionSpec,
                    description="Learned absolute positions in the embedding network (optional offset; ids "
                                "from the input ids as transformers derives RoBERTa's, or from the mask).")
@serializable
class AbsolutePositions(PositionScheme):
    spec_cls = AbsolutePositionSpec
    adds_attention_bias = False

    @property
    def absolute(self) -> AbsolutePositionSpec:
        return self.spec

    @property
    def changes_graph(self) -> bool:
        return self.spec.offset != 0 or self.spec.counted

    def call(self, inputs):
        if not self.changes_graph:
            return {}
        return {"position_ids": absolute_position_ids(self.spec, inputs["input_mask"], inputs.get("input_word_ids"))}

    def onnx_lowering(self, ctx):
        if not self.changes_graph:
            return {}
        ctx.record("position", "position ids " + ("from the ids" if self.spec.from_ids else "from the mask"
                                                  if self.spec.from_mask else f"from {self.spec.offset}"))
        return {"position_ids": lower_absolute_ids(self.spec, ctx)}


def relative_buckets(spec: RelativeBiasSpec, relative: np.ndarray) -> np.ndarray:
    """The bucket of each (key position - query position) in ``relative`` (int32), as transformers' MPNet /
    T5 ``relative_position_bucket`` computes it: the same float32 operations in the same order."""
    relative = np.asarray(relative, np.int32)
    n = -relative
    buckets = spec.num_buckets
    ret = np.zeros_like(n)
    if spec.bidirectional:
        buckets //= 2
        ret += (n < 0).astype(np.int32) * buckets
        n = np.abs(n)
    else:
        n = np.maximum(n, 0)
    exact = buckets // 2
    ratio = np.maximum(n, 1).astype(np.float32) / np.float32(exact)
    far = np.log(ratio) / np.float32(math.log(spec.max_distance / exact)) * np.float32(buckets - exact)
    far = np.minimum(far.astype(np.int32) + exact, buckets - 1)
    return ret + np.where(n < exact, n, far)


def bucket_lookup(spec: RelativeBiasSpec, max_length: int) -> np.ndarray:
    """(2 * max_length - 1,) int32: the bucket of ``j - i`` at index ``j - i + max_length - 1``. A constant of
    the graph, so every backend reads the same buckets (and no converter folds the float arithmetic)."""
    return relative_buckets(spec, np.arange(-(max_length - 1), max_length, dtype=np.int32)).astype(np.int32)


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
    def param_count(spec, hidden_size: int, num_heads: int = 1, max_sequence_length: int = 512) -> int:
        return spec.num_buckets * num_heads

    def call(self, inputs):
        mask = inputs["input_mask"]
        check_sequence_length(mask, self.max_sequence_length, "its relative position buckets are looked up for "
                              "distances within it")
        positions = tf.range(tf.shape(mask)[1])
        relative = tf.expand_dims(positions, 0) - tf.expand_dims(positions, 1) + (self.max_sequence_length - 1)
        buckets = tf.gather(tf.constant(bucket_lookup(self.spec, self.max_sequence_length)), relative)   # [i, j]
        bias = tf.gather(tf.convert_to_tensor(self.relative_attention_bias), buckets)      # (S, S, N)
        out = {"attention_bias": tf.expand_dims(tf.transpose(bias, [2, 0, 1]), 0)}          # (1, N, S, S)
        if self.spec.absolute.offset or self.spec.absolute.counted:
            out["position_ids"] = absolute_position_ids(self.spec.absolute, mask, inputs.get("input_word_ids"))
        return out

    def onnx_lowering(self, ctx):
        """The bucket lookup constant gathered at ``j - i``, one Gather of the table, Transpose to
        (1, N, S, S): computed once, fed to every attention."""
        g, s = ctx.g, self.spec
        with g.scope("relative_bias"):
            mask = ctx.int32_input("input_mask")
            # Range in int64, then int32 (see lower_absolute_ids: not a Range fed by Cast(Shape))
            length = g.node("Squeeze", [g.node("Shape", [mask], start=1, end=2)])
            positions = g.node("Cast", [g.node("Range", [g.const(0, np.int64, "zero"), length,
                                                         g.const(1, np.int64, "one")])], to=6)
            relative = g.node("Sub", [g.node("Unsqueeze", [positions, g.ints([0], "cols")]),
                                      g.node("Unsqueeze", [positions, g.ints([1], "rows")])])      # [i, j] = j - i
            relative = g.node("Add", [relative, g.const(self.max_sequence_length - 1, np.int32, "center")])
            lookup = g.initializer(f"{self.path}/bucket_lookup", bucket_lookup(s, self.max_sequence_length))
            bucket = g.node("Gather", [lookup, relative], axis=0)
            bias = g.node("Gather", [ctx.weight(self.relative_attention_bias), bucket], axis=0)    # (S, S, N)
            bias = g.node("Unsqueeze", [g.node("Transpose", [bias], perm=[2, 0, 1]), g.ints([0], "batch")],
                          hint="position_bias")
        ctx.record("position", "relative bias: buckets, Gather, computed once for every layer")
        out = {"attention_bias": bias}
        if s.absolute.offset or s.absolute.counted:
            out["position_ids"] = lower_absolute_ids(s.absolute, ctx)
        return out


def rotary_inv_freq(theta: float, head_size: int) -> np.ndarray:
    """(1, D/2) float32: ``1 / theta ** (arange(0, D, 2) / D)``, computed in float64 and rounded once (transformers
    5 computes it in float32: a quarter of the frequencies one ulp apart, angles within 1.2e-4 at position 8,191)."""
    inv = 1.0 / (float(theta) ** (np.arange(0, head_size, 2, dtype=np.float64) / head_size))
    return inv.astype(np.float32)[None, :]


def fp16_split(values: np.ndarray, positions: int = 2 ** 13) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``values`` as ``high + low`` (exactly, in float32): ``high`` exact in float16 and held to as few
    significant bits (11 at most) as keep ``x * high`` exact in float32 for every position x below ``positions``,
    ``low`` the rest. ``x * high + x * low`` then rounds to ``x * values`` (to one ulp where the rest's rounding
    meets a tie: a chance of 2**-bits or less)."""
    bits = min(11, 24 - max(1, int(np.ceil(np.log2(max(int(positions), 2))))))
    mantissa, exponent = np.frexp(values.astype(np.float64))
    high = np.ldexp(np.round(mantissa * 2.0 ** bits) / 2.0 ** bits, exponent)
    high = high.astype(np.float16).astype(np.float32)
    return high, (values - high).astype(np.float32)


def rotate_half(x):
    """concat(-x[..., D/2:], x[..., :D/2]) (a Split, no strided slice)."""
    x1, x2 = tf.split(x, 2, axis=-1)
    return tf.concat([-x2, x1], axis=-1)


def apply_rotary(x, cos, sin):
    """x (B, N, S, D) rotated by the (S, D) ``cos`` / ``sin`` of its positions: x * cos + rotate_half(x) * sin."""
    cos = tf.expand_dims(tf.expand_dims(cos, 0), 0)
    sin = tf.expand_dims(tf.expand_dims(sin, 0), 0)
    return x * cos + rotate_half(x) * sin


@POSITIONS.register("rotary", spec=RotarySpec,
                    description="Rotary position embeddings (RoPE, GPT-NeoX / ModernBERT rotate_half): queries and "
                                "keys rotated in every attention; optional per-layer theta; no weights.")
@serializable
class RotaryPositions(PositionScheme):
    spec_cls = RotarySpec
    adds_attention_bias = False

    def __init__(self, spec, hidden_size, initializer=None, num_heads: int = 1, **kwargs):
        super().__init__(spec, hidden_size, initializer, num_heads, **kwargs)
        self.head_size = self.hidden_size // self.num_heads
        if self.head_size % 2:
            raise ValueError(f"rotary positions need an even head size, got {self.head_size} "
                             f"(hidden_size {self.hidden_size} / {self.num_heads} heads)")

    @property
    def thetas(self) -> list[float]:
        """The distinct thetas, in the order of the first layer that uses each."""
        return list(dict.fromkeys(self.spec.layer_theta or [self.spec.theta]))

    def theta_index(self, layer: int) -> int:
        """Which of :attr:`thetas` (and of the ``rotary`` pairs) layer ``layer`` reads."""
        if not self.spec.layer_theta:
            return 0
        return self.thetas.index(self.spec.layer_theta[layer])

    def for_layer(self, positions: dict, layer: int) -> dict:
        if "rotary" not in positions:
            return {}
        pair = positions["rotary"][self.theta_index(layer)]   # Keras: (cos, sin); the lowering: a RotaryCache
        return {"rotary": tuple(pair) if isinstance(pair, list) else pair}

    def call(self, inputs):
        length = tf.shape(inputs["input_mask"])[1]
        positions = tf.expand_dims(tf.cast(tf.range(length), tf.float32), 1)          # (S, 1)
        pairs = []
        for theta in self.thetas:
            # position x frequency as transformers computes it (one float32 product), with the frequencies in two
            # parts: the first exact in float16, so the fp16 TFLite model (float16 constants) rotates by the same
            # angles; one float16 frequency would be off by up to 4.9e-4 of itself, an angle by radians at 8k tokens
            high, low = fp16_split(rotary_inv_freq(theta, self.head_size), self.max_sequence_length)
            angles = positions * tf.constant(high) + positions * tf.constant(low)      # (S, D/2)
            emb = tf.concat([angles, angles], axis=-1)                                # (S, D)
            pairs.append((tf.cos(emb), tf.sin(emb)))
        return {"rotary": pairs}

    def onnx_lowering(self, ctx):
        """Per theta, the (S, D/2) cos / sin caches of positions 0..S-1 (float32 angles as Keras computes
        them), once for every layer; each attention rotates its queries and keys with com.microsoft
        ``RotaryEmbedding`` reading them (:meth:`LoweringContext.rotate`)."""
        g = ctx.g
        caches = []
        with g.scope("rotary"), g.scope(KEEP_FP32):   # fp16 holds neither positions above 2,048 nor large angles
            length = g.node("Squeeze", [g.node("Shape", [ctx.int32_input("input_mask")], start=1, end=2)])
            steps = g.node("Range", [g.const(0, np.int64, "zero"), length, g.const(1, np.int64, "one")])
            positions = g.node("Unsqueeze", [g.node("Cast", [steps], to=1), g.ints([1], "axes")], hint="positions")
            for k, theta in enumerate(self.thetas):
                angles = g.node("Mul", [positions, g.const(rotary_inv_freq(theta, self.head_size), np.float32,
                                                           f"inv_freq_{k}")], hint=f"angles_{k}")
                caches.append(RotaryCache(g.node("Cos", [angles], hint=f"cos_cache_{k}"),
                                          g.node("Sin", [angles], hint=f"sin_cache_{k}"), self.head_size, theta))
        ctx.record("position", "rotary: cos/sin caches (S, D/2) computed once for theta "
                   + ", ".join(f"{t:g}" for t in self.thetas) + "; RotaryEmbedding in every attention")
        return {"rotary": caches}


class DisentangledSpec(StrictModel):
    """DeBERTa-v2/v3's relative positions for disentangled attention: one learned table of relative-position
    embeddings for the whole encoder (``rel_embeddings``, 2 * position_buckets rows, or 2 *
    max_relative_positions without buckets), optionally layer-normed (``norm_rel_ebd``), read by every layer's
    ``disentangled`` attention through its own projections. ``max_relative_positions`` < 1: the encoder's
    max_sequence_length (transformers' max_position_embeddings); ``position_buckets`` < 1: no log buckets."""

    type: Literal["disentangled"] = "disentangled"
    max_relative_positions: int = -1
    position_buckets: int = 256
    norm_rel_ebd: Literal["layer_norm", "none"] = "layer_norm"
    layer_norm_epsilon: Annotated[float, Field(gt=0.0, le=1e-1)] = 1e-7

    def problems(self, ctx):
        if self.position_buckets == 1:
            yield ("position_buckets",), "1 bucket is too few (at least 2, or -1 for none)"
        if self.position_buckets > 1 and self.max_relative_positions > 0 \
                and self.max_relative_positions - 1 <= self.position_buckets // 2:
            yield ("max_relative_positions",), (f"{self.max_relative_positions} must exceed position_buckets / 2 + 1 "
                                                f"({self.position_buckets // 2 + 1}) for log buckets")
        for where, kind, needs in ctx.get("attention_types", []):
            if needs != "disentangled":
                yield (), (f"disentangled positions need 'disentangled' attention in every layer, but the attention "
                           f"at {where} is {kind!r}")

    def max_relative(self, max_sequence_length: int) -> int:
        """transformers' resolved max_relative_positions."""
        return self.max_relative_positions if self.max_relative_positions >= 1 else int(max_sequence_length)

    def attention_span(self, max_sequence_length: int) -> int:
        """transformers' ``pos_ebd_size``: half the rows of the table."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative(max_sequence_length)


def log_bucket_positions(relative: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
    """transformers' DeBERTa-v2 ``make_log_bucket_position`` in numpy, the same float32 operations in the same
    order (int64 in, int64 out); odd: the bucket of -d is minus the bucket of d."""
    relative = np.asarray(relative, np.int64)
    sign = np.sign(relative)
    mid = bucket_size // 2
    abs_pos = np.where((relative < mid) & (relative > -mid), mid - 1, np.abs(relative))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pos = np.ceil(np.log(abs_pos.astype(np.float32) / np.float32(mid))
                          / np.log(np.float32((max_position - 1) / mid)) * np.float32(mid - 1)) + np.float32(mid)
    return np.where(abs_pos <= mid, relative.astype(np.float32), log_pos * sign).astype(np.int64)


def disentangled_row_lookup(spec: DisentangledSpec, max_length: int) -> np.ndarray:
    """(2 * max_length - 1,) int32: for the relative position d = i - j (query i, key j, as transformers'
    ``build_relative_position``) at index d + max_length - 1, the row of ``rel_embeddings`` that c2p reads,
    ``clamp(bucket(d) + att_span, 0, 2 * att_span - 1)``. p2c reads, for the same (i, j), the row of
    ``clamp(-bucket(j - i) + att_span, ...)``: the same row, the buckets being odd. A graph constant: every
    backend reads identical rows, and no converter folds the float arithmetic."""
    relative = np.arange(-(max_length - 1), max_length, dtype=np.int64)
    if spec.position_buckets > 0:
        relative = log_bucket_positions(relative, spec.position_buckets, spec.max_relative(max_length))
    span = spec.attention_span(max_length)
    return np.clip(relative + span, 0, 2 * span - 1).astype(np.int32)


def disentangled_row_window(spec: DisentangledSpec, max_length: int) -> np.ndarray:
    """(max_length + 1, 2) int32: for each length S, the first and one past the last row of ``rel_embeddings``
    that the relative positions of length S read (row 0 for S = 0): every row between the extremes of d = +-(S -
    1), all of them read (the clamped log bucket of d grows by at most 1 per step of d). With 256 buckets and S =
    512 that is 511 rows, where one per relative position would be 1023."""
    lookup = disentangled_row_lookup(spec, max_length)
    out = np.zeros((max_length + 1, 2), np.int32)
    for length in range(1, max_length + 1):
        rows = lookup[max_length - length:max_length + length - 1]
        out[length] = rows.min(), rows.max() + 1
    return out


@POSITIONS.register("disentangled", spec=DisentangledSpec,
                    description="DeBERTa-v2/v3 relative positions (log buckets, one shared layer-normed table) for "
                                "'disentangled' attention's c2p / p2c terms.")
@serializable
class DisentangledPositions(PositionScheme):
    """Per batch of length S: ``relative_embeddings`` (K, H), the (normed) rows of the table that length S reads,
    a contiguous window (:func:`disentangled_row_window`; K = 2S - 1 while S <= position_buckets / 2, fewer beyond:
    the log buckets share rows; gathering the rows before the layer norm and the attention's projections is
    exact: they act row by row), and ``relative_positions`` (S, S) int32: the window row that query i and key j
    read (transformers' clamped bucket of i - j, minus the window's first row). Reading rows through a
    length-dependent gather also keeps the TFLite converter from folding the layer norm and the projections of
    the table into constants of its own."""

    spec_cls = DisentangledSpec

    def __init__(self, spec, hidden_size, initializer=None, num_heads: int = 1, **kwargs):
        super().__init__(spec, hidden_size, initializer, num_heads, **kwargs)
        self.rel_layer_norm = (keras.layers.LayerNormalization(axis=-1, epsilon=self.spec.layer_norm_epsilon,
                                                               name="rel_layer_norm", dtype=self.dtype_policy)
                               if self.spec.norm_rel_ebd == "layer_norm" else None)

    @property
    def table_rows(self) -> int:
        return 2 * self.spec.attention_span(self.max_sequence_length)

    def build(self, input_shape=None):
        self.rel_embeddings = self.add_weight(name="rel_embeddings", shape=(self.table_rows, self.hidden_size),
                                              initializer=initializer(self.initializer_spec))
        if self.rel_layer_norm is not None:
            self.rel_layer_norm.build((None, self.hidden_size))
        self.built = True

    @staticmethod
    def param_count(spec, hidden_size: int, num_heads: int = 1, max_sequence_length: int = 512) -> int:
        rows = 2 * spec.attention_span(max_sequence_length)
        return rows * hidden_size + (2 * hidden_size if spec.norm_rel_ebd == "layer_norm" else 0)

    def for_layer(self, positions: dict, layer: int) -> dict:
        if "relative_embeddings" not in positions:
            return {}
        return {"disentangled": (positions["relative_embeddings"], positions["relative_positions"])}

    def call(self, inputs):
        check_sequence_length(inputs["input_mask"], self.max_sequence_length, "its disentangled relative positions "
                              "are looked up for distances within it")
        length = tf.shape(inputs["input_mask"])[1]
        n = self.max_sequence_length
        window = tf.gather(tf.constant(disentangled_row_window(self.spec, n)), length)           # [first, stop)
        emb = tf.gather(tf.convert_to_tensor(self.rel_embeddings), tf.range(window[0], window[1]))   # (K, H)
        if self.rel_layer_norm is not None:
            emb = self.rel_layer_norm(emb)
        positions = tf.range(length)
        relative = tf.expand_dims(positions, 1) - tf.expand_dims(positions, 0) + (n - 1)            # i - j + n - 1
        rows = tf.gather(tf.constant(disentangled_row_lookup(self.spec, n)), relative) - window[0]  # [i, j]
        return {"relative_embeddings": emb, "relative_positions": rows}

    def onnx_lowering(self, ctx):
        """The row window of length S from a constant (first, stop), one Gather of the table's rows in it,
        LayerNormalization, and the (S, S) window rows from the row lookup constant at i - j: computed once, read
        by every layer's disentangled attention. ``relative_table`` (:meth:`normed_table`) lets an attention fold
        its projections of the table into constants instead; the in-graph rows are then pruned as unread."""
        g, n = ctx.g, self.max_sequence_length
        with g.scope("disentangled"):
            mask = ctx.int32_input("input_mask")
            length = g.node("Squeeze", [g.node("Shape", [mask], start=1, end=2)])                  # int64
            windows = g.initializer(f"{self.path}/row_window", disentangled_row_window(self.spec, n))
            window = g.node("Gather", [windows, length], axis=0, hint="row_window")              # (2,)
            bounds = [g.node("Slice", [window, g.ints([k], f"w{k}"), g.ints([k + 1], f"w{k}_")]) for k in (0, 1)]
            first, stop = (g.node("Squeeze", [b]) for b in bounds)
            rows = g.node("Range", [first, stop, g.const(1, np.int32, "one")], hint="relative_rows")
            emb = g.node("Gather", [ctx.weight(self.rel_embeddings), rows], axis=0, hint="relative_embeddings")
            if self.rel_layer_norm is not None:
                emb, _ = ctx.layer_norm(emb, self.rel_layer_norm, part="rel_layer_norm")
            # Range in int64, then int32 (see lower_absolute_ids: not a Range fed by Cast(Shape))
            positions = g.node("Cast", [g.node("Range", [g.const(0, np.int64, "zero"), length,
                                                         g.const(1, np.int64, "one_")])], to=6)
            relative = g.node("Sub", [g.node("Unsqueeze", [positions, g.ints([1], "rows")]),
                                      g.node("Unsqueeze", [positions, g.ints([0], "cols")])])      # [i, j] = i - j
            relative = g.node("Add", [relative, g.const(n - 1, np.int32, "max_length_1")])
            lookup = g.initializer(f"{self.path}/row_lookup", disentangled_row_lookup(self.spec, n))
            relative = g.node("Sub", [g.node("Gather", [lookup, relative], axis=0), first], hint="relative_positions")
        ctx.record("position", "disentangled: row window and relative positions, computed once for every layer")
        return {"relative_embeddings": emb, "relative_positions": relative, "sequence_length": length,
                "window_bounds": bounds, "relative_table": self.normed_table}

    def normed_table(self) -> np.ndarray:
        """(R, H) float64: every row of ``rel_embeddings`` through the table's layer norm (when it has one), in
        numpy: a weight-only value, which an optimized lowering may fold into constants (an attention's projected
        and scaled relative keys / queries) instead of computing them on every batch."""
        table = np.asarray(self.rel_embeddings.numpy(), np.float64)
        norm = self.rel_layer_norm
        if norm is None:
            return table
        mean = table.mean(axis=-1, keepdims=True)
        var = ((table - mean) ** 2).mean(axis=-1, keepdims=True)
        gamma = np.asarray(norm.gamma.numpy(), np.float64) if norm.gamma is not None else 1.0
        beta = np.asarray(norm.beta.numpy(), np.float64) if norm.beta is not None else 0.0
        return (table - mean) / np.sqrt(var + norm.epsilon) * gamma + beta
