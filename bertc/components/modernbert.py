"""ModernBERT (Warner et al. 2024), as transformers' ``ModernBertModel`` computes it: the ``modernbert`` encoder
and the components it is made of.

- embedding ``modernbert``: word embeddings, a layer norm (optionally without beta: ``norm_bias``), dropout; no
  position or type table (positions are rotary);
- attention ``windowed``: one packed ``qkv`` projection (transformers' ``Wqkv``: q, k, v each ``N * D`` wide,
  head-major), biases optional (``use_bias``: ``attention_bias``), rotary q and k from the encoder's
  ``rotary`` scheme, and an optional sliding window: with ``window`` w a query at position i attends to the
  keys j with ``|i - j| <= w`` (transformers' ``sliding_window_bidirectional_overlay`` with
  ``sliding_window = local_attention // 2``), combined with the padding mask;
- feedforward ``glu``: one ``intermediate`` projection 2I wide split into input and gate,
  ``output(dropout(act(input) * gate))`` (transformers' ``ModernBertMLP``: GeGLU with gelu), pre-norm, its
  layer norm and biases optional;
- block ``modernbert``: pre-norm ``x + attn(attn_norm(x))`` then ``x + mlp(mlp_norm(x))``; ``attention_norm``
  false drops ``attn_norm`` (transformers' layer 0 has ``nn.Identity`` there: the embedding norm precedes it);
- encoder ``modernbert``: the embedding, one block per layer (global attention on every
  ``global_attn_every_n_layers``-th layer from layer 0, or as ``layer_types`` says; a window of
  ``local_attention // 2`` on the others), rotary positions with ``global_rope_theta`` on the global layers and
  ``local_rope_theta`` on the local ones, and the final norm. It has no pooler: an encoder without a head
  outputs ``sequence_output`` alone, and a classifier reads the sequence (``pooling`` ``first`` or ``mean``).

Position ids are 0..S-1 whatever the mask (transformers 5 does not unpad: a row with holes keeps the positions
of its tokens). Lowerings: the packed qkv as one MatMul (+ Add) and a Split, com.microsoft ``RotaryEmbedding``
on q and k, com.microsoft ``MultiHeadAttention`` with the raw 0/1 key padding mask and, on local layers, the
window as its ``attention_bias`` ((1, 1, S, S), 0 inside and -5000 outside (:data:`WINDOW_ADDER`), computed
once per window), or from S = 6 w, where every position has a real key in its window, the window in blocks of w
queries against 3 w keys (:mod:`bertc.components.local_blocks`: an ``If`` per local layer); the
norms as residual layer norms (``Sum`` + ``LayerNormalization`` / ``SkipLayerNormalization``, ``ctx.layer_norm``) (beta omitted without ``norm_bias``); the GLU as
one MatMul, a Split, com.microsoft ``Gelu`` (``BiasGelu`` with a bias, ``FastGelu`` for tanh gelu) times the
gate, and the output MatMul whose bias the next residual layer norm takes.
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import keras
import numpy as np
import tensorflow as tf

from bertc.components import local_blocks
from bertc.components.attention import Attention, AttentionSpecBase
from bertc.components.base import RowSelection
from bertc.components.blocks import Block
from bertc.components.common import (MASK_ADDER, dense, dense_params, layer_norm, merge_heads, serializable,
                                     split_heads, with_last_dim)
from bertc.components.embeddings import EmbeddingNetwork, _EmbeddingSpecBase
from bertc.components.encoders import ScaffoldEncoder, ScaffoldEncoderSpec, _EncoderSpecBase
from bertc.components.feedforward import _ResidualFeedforward, lower_residual
from bertc.components.positions import RotarySpec, Theta, apply_rotary
from bertc.errors import NotLowerable
from bertc.onnx_graph import KEEP_FP32, Residual
from bertc.registry import ATTENTION, BLOCKS, EMBEDDINGS, ENCODERS, FEEDFORWARD
from bertc.specbase import (Activation, Epsilon, InitializerSpec, LayerCount, PositiveInt, Rate, StrictModel, VocabSize)

GLOBAL, LOCAL = "global", "local"
# Added to the logits of the keys outside a query's window. Half the padding mask's value: a real query (its
# own key is always in its window) gives an outside key exactly zero weight either way (exp underflows), and a
# padded query whose window holds no real key attends to the real keys outside it rather than to the padded
# keys inside, so padded rows do not depend on how far the padding goes (bertc's padding invariance check).
WINDOW_ADDER = MASK_ADDER / 2


# --- embedding ----------------------------------------------------------------------------------------

class ModernBertEmbeddingSpec(_EmbeddingSpecBase):
    """Word embeddings -> layer norm (``norm_bias``: with beta) -> dropout. Inputs: ``input_word_ids``,
    ``input_mask``."""

    type: Literal["modernbert"] = "modernbert"
    vocab_size: VocabSize
    max_sequence_length: PositiveInt
    layer_norm_epsilon: Epsilon = 1e-5
    norm_bias: bool = False
    dropout_rate: Rate = 0.0
    initializer: Optional[InitializerSpec] = None

    use_position_embeddings = property(lambda self: False)
    use_type_embeddings = property(lambda self: False)
    use_layer_norm = property(lambda self: True)
    embedding_width = property(lambda self: None)
    type_vocab_size = property(lambda self: None)


@EMBEDDINGS.register("modernbert", spec=ModernBertEmbeddingSpec,
                     description="ModernBERT embeddings: word table, layer norm (optionally without beta), dropout; "
                                 "no position or type table.")
@serializable
class ModernBertEmbedding(EmbeddingNetwork):
    spec_cls = ModernBertEmbeddingSpec

    def __init__(self, spec, hidden_size, initializer=None, **kwargs):
        super().__init__(spec, hidden_size, initializer, **kwargs)
        self.layer_norm = layer_norm(self.spec.layer_norm_epsilon, "layer_norm", center=self.spec.norm_bias,
                                     dtype=self.dtype_policy)

    @staticmethod
    def param_count(spec, hidden_size: int) -> int:
        return spec.vocab_size * hidden_size + hidden_size * (2 if spec.norm_bias else 1)

    # the same maths as the standard network without position / type tables: its lowering (Gather +
    # LayerNormalization, beta omitted without norm_bias) serves
    onnx_lowering = EmbeddingNetwork.onnx_lowering


# --- attention ------------------------------------------------------------------------------------------

class WindowedAttentionSpec(AttentionSpecBase):
    """Multi-head self-attention with one packed ``qkv`` projection (q, k, v each hidden wide, head-major, as
    transformers' ``Wqkv``), optional biases, and an optional sliding window: a query at i attends to the keys
    at ``|i - j| <= window`` (None: every key)."""

    type: Literal["windowed"] = "windowed"
    dropout_rate: Rate = 0.0
    use_bias: bool = False
    window: Optional[PositiveInt] = None

    @property
    def sliding_window(self) -> Optional[int]:
        return self.window


def window_bias(length, window: int):
    """(1, 1, S, S) float32: 0 where ``|i - j| <= window``, :data:`WINDOW_ADDER` elsewhere (float arithmetic on
    the positions: builtin TFLite ops)."""
    n = tf.cast(tf.range(length), tf.float32)
    distance = tf.abs(tf.expand_dims(n, 0) - tf.expand_dims(n, 1))
    bias = tf.cast(tf.greater(distance, float(window)), tf.float32) * WINDOW_ADDER
    return tf.expand_dims(tf.expand_dims(bias, 0), 0)


@ATTENTION.register("windowed", spec=WindowedAttentionSpec,
                    description="Multi-head attention with a packed qkv projection, optional biases and an optional "
                                "sliding window |i - j| <= window (ModernBERT's local layers).")
@serializable
class WindowedAttention(Attention):
    """Weights ``qkv`` (H, 3H) and ``attention_output`` (H, H), each with a bias when ``use_bias``."""

    spec_cls = WindowedAttentionSpec

    def __init__(self, spec, hidden_size, initializer=None, **kwargs):
        super().__init__(spec, hidden_size, initializer, **kwargs)
        h, s = self.hidden_size, self.spec
        self.num_heads = s.num_heads
        self.head_size = h // self.num_heads
        self.qkv = dense(3 * h, self.initializer_spec, "qkv", use_bias=s.use_bias, dtype=self.dtype_policy)
        self.attention_output = dense(h, self.initializer_spec, "attention_output", use_bias=s.use_bias,
                                      dtype=self.dtype_policy)
        self.probs_dropout = keras.layers.Dropout(s.dropout_rate, name="probs_dropout", dtype=self.dtype_policy)

    def build(self, x_shape, attention_bias_shape=None):
        self.qkv.build(x_shape)
        self.attention_output.build(x_shape)
        self.built = True

    @staticmethod
    def param_count(spec, hidden_size: int) -> int:
        return dense_params(hidden_size, 3 * hidden_size, spec.use_bias) + dense_params(hidden_size, hidden_size,
                                                                                         spec.use_bias)

    def call(self, x, attention_bias, training=None, rotary=None):
        q, k, v = (split_heads(t, self.num_heads, self.head_size) for t in tf.split(self.qkv(x), 3, axis=-1))
        if rotary is not None:                      # the position scheme's (cos, sin), each (S, D)
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        logits = tf.matmul(q * (1.0 / math.sqrt(self.head_size)), k, transpose_b=True) + attention_bias
        if self.spec.window is not None:
            logits = logits + tf.cast(window_bias(tf.shape(x)[1], self.spec.window), logits.dtype)   # mixed policies
        probs = self.probs_dropout(tf.nn.softmax(logits, axis=-1), training=training)
        return self.attention_output(merge_heads(tf.matmul(probs, v), self.hidden_size))

    def onnx_lowering(self, ctx, x, query=None):
        return lower_windowed(self, ctx, x, query)


# --- feedforward ----------------------------------------------------------------------------------------

class GLUFeedforwardSpec(StrictModel):
    """Gated linear unit as transformers' ``ModernBertMLP``: ``intermediate`` (H -> 2I) split into input and
    gate, ``output(dropout(act(input) * gate))`` (GeGLU with gelu); ``use_bias``: both projections have one."""

    type: Literal["glu"] = "glu"
    intermediate_size: PositiveInt
    activation: Activation = "gelu"
    dropout_rate: Rate = 0.0
    use_bias: bool = False
    initializer: Optional[InitializerSpec] = None


@FEEDFORWARD.register("glu", spec=GLUFeedforwardSpec,
                      description="GLU feedforward with one packed input+gate projection (ModernBERT's GeGLU), "
                                  "optional biases; residual and layer norm (optionally without beta).")
@serializable
class GLUFeedforward(_ResidualFeedforward):
    """Weights ``intermediate`` (H, 2I: input then gate), ``output`` (I, H), ``output_layer_norm`` (the
    pre-norm's ``mlp_norm``; beta only with ``layer_norm_bias``)."""

    spec_cls = GLUFeedforwardSpec

    def __init__(self, spec, hidden_size, initializer=None, norm_first=False, layer_norm_epsilon=1e-12,
                 layer_norm_bias: bool = True, **kwargs):
        super().__init__(spec, hidden_size, initializer, norm_first, layer_norm_epsilon, **kwargs)
        s, init = self.spec, self.initializer_spec
        self.layer_norm_bias = bool(layer_norm_bias)
        self.intermediate = dense(2 * s.intermediate_size, init, "intermediate", use_bias=s.use_bias,
                                  dtype=self.dtype_policy)
        self.output_dense = dense(self.hidden_size, init, "output", use_bias=s.use_bias, dtype=self.dtype_policy)
        self.inner_dropout = keras.layers.Dropout(s.dropout_rate, name="inner_dropout", dtype=self.dtype_policy)
        self.output_layer_norm = layer_norm(self.layer_norm_epsilon, "output_layer_norm", center=self.layer_norm_bias,
                                            dtype=self.dtype_policy)

    def get_config(self):
        return {**super().get_config(), "layer_norm_bias": self.layer_norm_bias}

    def build(self, x_shape):
        self.intermediate.build(x_shape)
        self.output_dense.build(with_last_dim(x_shape, self.spec.intermediate_size))
        self.output_layer_norm.build(x_shape)
        self.built = True

    @staticmethod
    def param_count(spec, hidden_size: int, layer_norm_bias: bool = True) -> int:
        h, i = hidden_size, spec.intermediate_size
        return (dense_params(h, 2 * i, spec.use_bias) + dense_params(i, h, spec.use_bias)
                + h * (2 if layer_norm_bias else 1))

    def call(self, x, training=None):
        def transform(h):
            inner, gate = tf.split(self.intermediate(h), 2, axis=-1)
            return self.output_dense(self.inner_dropout(self.activation_fn(inner) * gate, training=training))
        return self.residual(x, transform, lambda y, training=None: y, self.output_layer_norm, training)

    def onnx_lowering(self, ctx, x):
        return lower_residual(self, ctx, x, lambda h: lower_glu(self, ctx, h), self.output_layer_norm)


# --- block ----------------------------------------------------------------------------------------------

class ModernBertBlockSpec(StrictModel):
    """Pre-norm block: ``x + attention(attention_layer_norm(x))`` (without ``attention_norm``: of x itself),
    then ``x + feedforward(output_layer_norm(x))``; norms with beta only when ``norm_bias``."""

    type: Literal["modernbert"] = "modernbert"
    attention: WindowedAttentionSpec
    feedforward: GLUFeedforwardSpec
    attention_norm: bool = True
    norm_bias: bool = False
    layer_norm_epsilon: Epsilon = 1e-5
    dropout_rate: Rate = 0.0
    initializer: Optional[InitializerSpec] = None

    def problems(self, ctx):
        yield from (((("attention",) + p), m) for p, m in self.attention.problems(ctx))


@BLOCKS.register("modernbert", spec=ModernBertBlockSpec,
                 description="ModernBERT's pre-norm block: windowed (or global) attention and a GLU feedforward, "
                             "norms optionally without beta; layer 0 without its attention norm.")
@serializable
class ModernBertBlock(Block):
    spec_cls = ModernBertBlockSpec

    def __init__(self, spec, hidden_size, initializer=None, **kwargs):
        super().__init__(spec, hidden_size, initializer, **kwargs)
        s = self.spec
        init = s.initializer or self.initializer_spec
        self.attention = WindowedAttention(spec=s.attention, hidden_size=self.hidden_size, initializer=init,
                                           name="attention", dtype=self.dtype_policy)
        self.attention_layer_norm = (layer_norm(s.layer_norm_epsilon, "attention_layer_norm", center=s.norm_bias,
                                                dtype=self.dtype_policy)
                                     if s.attention_norm else None)
        self.attention_dropout = keras.layers.Dropout(s.dropout_rate, name="attention_dropout", dtype=self.dtype_policy)
        self.feedforward = GLUFeedforward(spec=s.feedforward, hidden_size=self.hidden_size, initializer=init,
                                          norm_first=True, layer_norm_epsilon=s.layer_norm_epsilon,
                                          layer_norm_bias=s.norm_bias, name="feedforward",
                                          dtype=self.dtype_policy)

    def build(self, x_shape, attention_bias_shape=None):
        self.attention.build(x_shape, attention_bias_shape)
        if self.attention_layer_norm is not None:
            self.attention_layer_norm.build(x_shape)
        self.feedforward.build(x_shape)
        self.built = True

    @staticmethod
    def param_count(spec, hidden_size: int) -> int:
        h = hidden_size
        norm = h * (2 if spec.norm_bias else 1)
        return (WindowedAttention.param_count(spec.attention, h) + (norm if spec.attention_norm else 0)
                + GLUFeedforward.param_count(spec.feedforward, h, spec.norm_bias))

    def call(self, x, attention_bias, training=None, rotary=None):
        h = self.attention_layer_norm(x) if self.attention_layer_norm is not None else x
        extra = {"rotary": rotary} if rotary is not None else {}
        x = x + self.attention_dropout(self.attention(h, attention_bias, training=training, **extra), training=training)
        return self.feedforward(x, training=training)

    def onnx_lowering(self, ctx, x, rows_only=False):
        return lower_modernbert_block(self, ctx, x, rows_only)


# --- encoder --------------------------------------------------------------------------------------------

class ModernBertEncoderSpec(_EncoderSpecBase):
    """ModernBERT's encoder in its config's terms (transformers' ``ModernBertConfig``). Layer i is global
    when ``i % global_attn_every_n_layers == 0``, unless ``layer_types`` lists every layer's kind; local layers
    attend within ``local_attention // 2`` positions either side."""

    type: Literal["modernbert"] = "modernbert"
    vocab_size: VocabSize
    hidden_size: PositiveInt = 768
    num_layers: LayerCount = 22
    num_attention_heads: PositiveInt = 12
    intermediate_size: PositiveInt = 1152
    activation: Activation = "gelu"
    max_sequence_length: PositiveInt = 8192
    layer_norm_epsilon: Epsilon = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    global_attn_every_n_layers: PositiveInt = 3
    layer_types: Optional[list[Literal["global", "local"]]] = None
    local_attention: PositiveInt = 128
    global_rope_theta: Theta = 160000.0
    local_rope_theta: Theta = 10000.0
    embedding_dropout: Rate = 0.0
    attention_dropout: Rate = 0.0
    mlp_dropout: Rate = 0.0
    initializer: InitializerSpec = InitializerSpec(type="truncated_normal", stddev=0.02)
    return_all_layer_outputs: bool = False

    # what the scaffold view and the heads read
    type_vocab_size = property(lambda self: None)
    position_spec = property(lambda self: self.scaffold.position)   # rotary, one theta per layer

    def problems(self, ctx):
        if self.hidden_size % self.num_attention_heads:
            yield ("num_attention_heads",), (
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
        elif (self.hidden_size // self.num_attention_heads) % 2:
            yield ("num_attention_heads",), (
                f"rotary positions need an even head size, but hidden_size {self.hidden_size} / "
                f"{self.num_attention_heads} heads is {self.hidden_size // self.num_attention_heads}")
        if self.layer_types is not None and len(self.layer_types) != self.num_layers:
            yield ("layer_types",), (f"has {len(self.layer_types)} entries but num_layers is {self.num_layers} "
                                     f"(give one per layer)")
        if self.local_attention < 2 and LOCAL in self.kinds():
            yield ("local_attention",), f"{self.local_attention} leaves no window (local_attention // 2 is 0)"

    def child_context(self, ctx, path):
        return ctx   # the scaffold view is built valid from these fields; nothing to hand down

    def kinds(self) -> list[str]:
        """Each layer's attention: ``global`` or ``local``."""
        if self.layer_types is not None and len(self.layer_types) == self.num_layers:
            return list(self.layer_types)
        return [GLOBAL if i % self.global_attn_every_n_layers == 0 else LOCAL for i in range(self.num_layers)]

    @property
    def window(self) -> int:
        """The half-width of the local layers' window (transformers' ``sliding_window``)."""
        return self.local_attention // 2

    def as_scaffold(self) -> ScaffoldEncoderSpec:
        kinds = self.kinds()
        blocks = []
        for i, kind in enumerate(kinds):
            attention = WindowedAttentionSpec(num_heads=self.num_attention_heads, dropout_rate=self.attention_dropout,
                                              use_bias=self.attention_bias,
                                              window=self.window if kind == LOCAL and self.window else None)
            feedforward = GLUFeedforwardSpec(intermediate_size=self.intermediate_size, activation=self.activation,
                                             dropout_rate=self.mlp_dropout, use_bias=self.mlp_bias)
            blocks.append(ModernBertBlockSpec(attention=attention, feedforward=feedforward, attention_norm=i > 0,
                                              norm_bias=self.norm_bias, layer_norm_epsilon=self.layer_norm_epsilon,
                                              dropout_rate=self.attention_dropout))
        thetas = [self.global_rope_theta if kind == GLOBAL else self.local_rope_theta for kind in kinds]
        embedding = ModernBertEmbeddingSpec(vocab_size=self.vocab_size, max_sequence_length=self.max_sequence_length,
                                            layer_norm_epsilon=self.layer_norm_epsilon, norm_bias=self.norm_bias,
                                            dropout_rate=self.embedding_dropout)
        return ScaffoldEncoderSpec(
            hidden_size=self.hidden_size, num_layers=self.num_layers, embedding=embedding, hidden=blocks,
            position=RotarySpec(layer_theta=thetas), initializer=self.initializer, final_layer_norm=True,
            final_layer_norm_bias=self.norm_bias, layer_norm_epsilon=self.layer_norm_epsilon,
            return_all_layer_outputs=self.return_all_layer_outputs, pooler=False)


@ENCODERS.register("modernbert", spec=ModernBertEncoderSpec,
                   description="ModernBERT encoder: bias-free norms, rotary positions (global / local theta), "
                               "alternating global and sliding-window attention, GeGLU, final norm; no pooler.")
class ModernBert(ScaffoldEncoder):
    """ModernBERT through its scaffold view (:meth:`ModernBertEncoderSpec.as_scaffold`)."""


# --- ONNX lowerings -------------------------------------------------------------------------------------

def _split(ctx, x, parts: int, width: int, hint: str) -> list:
    g = ctx.g
    return g.node("Split", [x, g.ints([width] * parts, f"{hint}_split")], [f"{hint}_{k}" for k in range(parts)],
                  hint=hint, axis=-1)


def _packed(ctx, layer_dense, x, hint: str):
    """x @ kernel (+ bias) of a packed projection."""
    y, bias = ctx.matmul(x, layer_dense)
    return ctx.g.node("Add", [y, bias], hint=f"{hint}_bias") if bias else y


def _slice_dense(ctx, layer_dense, x, part: int, parts: int, hint: str):
    """x @ columns ``part`` of ``parts`` of a packed Dense (+ those bias entries): a derived initializer."""
    kernel = layer_dense.kernel.numpy()
    width = kernel.shape[1] // parts
    cols = slice(part * width, (part + 1) * width)
    y = ctx.g.node("MatMul", [x, ctx.derived(f"{layer_dense.kernel.path}[{part}/{parts}]", kernel[:, cols])], hint=hint)
    if layer_dense.use_bias:
        y = ctx.g.node("Add", [y, ctx.derived(f"{layer_dense.bias.path}[{part}/{parts}]", layer_dense.bias.numpy()[cols])],
                       hint=f"{hint}_bias")
    return y


def _window_bias(ctx, window: int, rows: bool):
    """(1, 1, S, S) (``rows``: the first token's row, (1, 1, 1, S)): 0 where |i - j| <= window, WINDOW_ADDER
    elsewhere; once per window for every layer."""
    return ctx.once(("window_bias", window, rows), lambda: _window_bias_nodes(ctx, window, rows))


def _window_bias_nodes(ctx, window: int, rows: bool):
    """The nodes of :func:`_window_bias`, not memoized (the blocked local attention builds them inside a branch)."""
    g = ctx.g
    with g.scope(f"window_{window}"), g.scope(KEEP_FP32):   # fp16 positions above 2,048 are not integers
        length = g.node("Shape", [ctx.inputs["input_mask"]], start=1, end=2)
        steps = g.node("Cast", [g.node("Range", [g.const(0, np.int64, "zero"), g.node("Squeeze", [length]),
                                                 g.const(1, np.int64, "one")])], to=1, hint="positions")
        keys = g.node("Unsqueeze", [steps, g.ints([0], "axes")])                       # (1, S)
        queries = (g.const(np.zeros((1, 1), np.float32), np.float32, "first") if rows
                   else g.node("Unsqueeze", [steps, g.ints([1], "axes")]))           # (S, 1) / (1, 1)
        distance = g.node("Abs", [g.node("Sub", [keys, queries])])
        outside = g.node("Cast", [g.node("Greater", [distance, g.scalar(float(window), "window")])], to=1)
        bias = g.node("Mul", [outside, g.scalar(WINDOW_ADDER, "window_adder")])
        return g.node("Unsqueeze", [bias, g.ints([0, 1], "axes")], hint="window_bias")


def lower_windowed(layer, ctx, x, query=None):
    """Packed qkv: one MatMul (+ Add) and a Split (the pruned last layer: q from its rows, k and v from every
    row, each a MatMul on its columns); q and k rotated by com.microsoft ``RotaryEmbedding`` when the encoder has
    rotary positions; com.microsoft ``MultiHeadAttention`` with the raw 0/1 mask and, with a window, its
    ``attention_bias``."""
    g, n, h = ctx.g, layer.num_heads, layer.hidden_size
    rows = query is not None
    if rows and ctx.read_rows != RowSelection(first=True):
        raise NotLowerable(f"{layer.path}: windowed attention for a row selection other than the first token")
    if not rows:
        q, k, v = _split(ctx, _packed(ctx, layer.qkv, x, "qkv"), 3, h, "qkv")
    else:
        q = _slice_dense(ctx, layer.qkv, query, 0, 3, "query")
        k = _slice_dense(ctx, layer.qkv, x, 1, 3, "key")
        v = _slice_dense(ctx, layer.qkv, x, 2, 3, "value")
    rotary = ctx.rotary() is not None
    if rotary:
        q, k = ctx.rotate(q, n, rows=rows), ctx.rotate(k, n)
    bias = ctx.position_bias(rows=rows)
    window = layer.spec.window
    blocked = window is not None and not rows and bias is None
    if blocked:    # the window in blocks at long sequences (bertc/components/local_blocks.py)
        context = local_blocks.windowed_attention(ctx, q, k, v, window, n, h,
                                                  lambda: _window_bias_nodes(ctx, window, False), MASK_ADDER,
                                                  WINDOW_ADDER)
    else:
        if window is not None:
            window_bias = _window_bias(ctx, window, rows)
            bias = window_bias if bias is None else g.node("Add", [bias, window_bias], hint="attention_bias")
        if bias is None:   # the mask alone: dropped when no row is padded (flash attention, no S x S scores)
            context = local_blocks.key_masked_attention(ctx, q, k, v, num_heads=n, mask_filter_value=MASK_ADDER)
        else:
            context = g.ms("MultiHeadAttention", [q, k, v, None, ctx.mask, bias], hint="attention", num_heads=n,
                           mask_filter_value=MASK_ADDER)
    ctx.record("attention", ("RotaryEmbedding + " if rotary else "") + "MultiHeadAttention"
               + (f" (attention_bias: window {window}" if window else "")
               + (f"; in blocks of {window} queries x {3 * window} keys from S {local_blocks.BLOCKED_FROM * window} "
                  f"when every position has a real key in its window" if blocked else "")
               + (")" if window else "")
               + (" (without the mask when no row is padded)" if bias is None and not blocked else "")
               + (" (first token)" if rows else ""))
    return ctx.matmul(context, layer.attention_output)


def lower_glu(layer, ctx, h):
    """act(h W_in + b_in) * (h W_gate + b_gate), then W_out: one MatMul, a Split (the bias split too), the
    activation fused with its bias (BiasGelu / Gelu / FastGelu), Mul; returns (product, output bias)."""
    g, width = ctx.g, layer.spec.intermediate_size
    inner, gate = _split(ctx, ctx.matmul(h, layer.intermediate)[0], 2, width, "glu")
    bias_in = bias_gate = None
    if layer.intermediate.use_bias:
        b = layer.intermediate.bias.numpy()
        bias_in = ctx.derived(f"{layer.intermediate.bias.path}[0/2]", b[:width])
        bias_gate = ctx.derived(f"{layer.intermediate.bias.path}[1/2]", b[width:])
        gate = g.node("Add", [gate, bias_gate], hint="gate_bias")
    inner = ctx.activation(inner, bias_in, layer.spec.activation, part="feedforward_activation")
    ctx.record("feedforward", "MatMul + Split (GLU) + Mul")
    return ctx.matmul(g.node("Mul", [inner, gate], hint="glu"), layer.output_dense)


def lower_modernbert_block(layer, ctx, x, rows_only=False):
    """Pre-norm: the incoming pending sum and the attention norm are one residual layer norm (its sum
    the residual branch); without the attention norm (layer 0) the attention reads the input itself. The
    attention output, its bias and the residual stay pending for the feedforward's residual layer norm."""
    if layer.attention_layer_norm is not None:
        normed, summed = ctx.layer_norm(x, layer.attention_layer_norm, want_sum=True)
    else:
        normed = summed = ctx.value(x)
    query = ctx.rows(normed) if rows_only else None
    a, bias = ctx.lower(layer.attention, normed, query)
    skip = ctx.rows(summed) if rows_only else summed
    return ctx.lower(layer.feedforward, Residual(a, skip, bias))
