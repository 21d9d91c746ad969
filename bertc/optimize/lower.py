"""Spec + built Keras model -> an ONNX Runtime graph on fused operators, written directly.

Nothing here pattern-matches: the spec says what every layer computes, so each
component lowers itself (``onnx_lowering`` next to its Keras layer in
``bertc/components/*.py``) into a :class:`~bertc.onnx_graph.GraphBuilder`
through the :class:`LoweringContext` below, which offers the fused building
blocks (``Attention``, residual layer norms, ``BiasGelu`` / ``FastGelu``,
``LayerNormalization``) and records which part of which layer became which
operator (the fusion coverage of the report).

Lowerings are inherited like any method, with the safeguard of
:func:`bertc.components.base.lowering_of`: a subclass that changes the maths without a lowering of its
own takes its kind's portable path (its Keras call converted alone by tf2onnx and spliced in:
:mod:`bertc.optimize.portable`). An encoder or head without a lowering makes the optimized artifact
impossible, and :func:`missing_lowerings` names every such component so the pipeline can skip the
artifact and say why. The lowering walks the handles of the built model (:class:`bertc.build.Built`):
the encoder's embedding, position scheme and blocks, the head's layers; it never looks a layer up by name.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from bertc.components.base import RowSelection, is_portable, lowering_of, portable_lowering_of
from bertc.components.common import MASK_ADDER
from bertc.errors import NotLowerable
from bertc.onnx_graph import GraphBuilder, Residual, Value

ACTIVATION_FUSIONS = {"gelu": "BiasGelu", "gelu_tanh": "FastGelu"}


def own_lowering(component) -> Optional[Any]:
    """The lowering that computes what ``component`` computes, unless it is its kind's portable one."""
    fn = lowering_of(component)
    return None if is_portable(fn) else fn


def portable_lowering(component) -> Optional[Any]:
    """The portable lowering ``component`` gets from its kind's base class (None for encoders and heads)."""
    return portable_lowering_of(component if isinstance(component, type) else type(component))


@dataclass
class Coverage:
    """Per layer (scope), which part became which operator."""

    layers: dict = field(default_factory=dict)
    current: str = "model"

    def record(self, part: str, op: str) -> None:
        self.layers.setdefault(self.current, {})[part] = op


class LoweringContext:
    """What a component's ``onnx_lowering`` gets: the graph builder plus fused building blocks."""

    def __init__(self, g: GraphBuilder, inputs: dict[str, Value], input_dtype: str, opset: int = 17,
                 skip_layer_norm: str = "decomposed"):
        self.g = g
        # how a pending residual and its layer norm are lowered ("decomposed" / "fused": ExportSpec.skip_layer_norm)
        self.skip_layer_norm = skip_layer_norm
        self.opset = opset
        self.inputs = inputs
        self.input_dtype = input_dtype
        self.coverage = Coverage()
        self._memo: dict = {}
        # The rows of the last layer the outputs read (None: all of them); a block lowered with
        # ``rows_only`` computes its attention output and feedforward for these rows alone (``rows``).
        self.read_rows: Optional[RowSelection] = None
        # The layers that had no lowering of their own and took the portable path, as the report lists them.
        self.not_lowered: list[str] = []
        # The position scheme's per-batch values ({"position_ids", "attention_bias"}, each optional), set
        # once by the encoder's lowering before its embeddings and blocks are lowered.
        self.positions: dict[str, Value] = {}
        # The current layer's share of them ({"rotary": its theta's RotaryCache}, {"disentangled": (relative
        # embeddings, relative positions)}), set by the encoder's lowering before each layer is lowered (read
        # through :meth:`rotary` / :meth:`disentangled`).
        self.layer_positions: dict[str, Any] = {}

    # --- scopes and components ----------------------------------------------------------------
    @contextlib.contextmanager
    def layer_scope(self, name: str):
        previous = self.coverage.current
        self.coverage.current = name
        with self.g.scope(name):
            yield
        self.coverage.current = previous

    def record(self, part: str, op: str) -> None:
        self.coverage.record(part, op)

    def lower(self, layer, *args, **kwargs):
        """Lower a sub-layer through its own component lowering; a registered component without one
        takes its kind's portable path (its Keras call converted by tf2onnx and spliced in:
        :mod:`bertc.optimize.portable`), recorded in :attr:`not_lowered`."""
        fn = lowering_of(layer)
        if fn is None:
            raise NotLowerable(f"{layer.path} ({type(layer).__name__}) has no ONNX lowering")
        return fn(layer, self, *args, **kwargs)

    def splice(self, layer, args, call, part: str) -> list:
        """``call(*tensors)`` of the Keras layer ``layer`` converted by tf2onnx and spliced in: a kind's
        portable lowering (:func:`bertc.optimize.portable.splice`)."""
        from bertc.optimize.portable import splice

        return splice(self, layer, args, call, part)

    # --- inputs --------------------------------------------------------------------------------
    def int32_input(self, name: str) -> Value:
        """Graph input ``name`` as int32 (one Cast when the model takes int64)."""
        value = self.inputs[name]
        if self.input_dtype == "int32":
            return value
        return self.once(("int32", name), lambda: self.g.node("Cast", [value], hint=f"{name}_int32", to=6))

    def int64_input(self, name: str) -> Value:
        value = self.inputs[name]
        if self.input_dtype == "int64":
            return value
        return self.once(("int64", name), lambda: self.g.node("Cast", [value], hint=f"{name}_int64", to=7))

    @property
    def mask(self) -> Value:
        """input_mask as int32 (B, S): the raw 0/1 mask the fused attention operators take."""
        return self.int32_input("input_mask")

    def position_bias(self, rows: bool = False) -> Optional[Value]:
        """The position scheme's (1, N, S, S) bias to add to every attention's logits, or None. ``rows``:
        only the query rows the pruned last layer computes (the first token: (1, N, 1, S))."""
        bias = self.positions.get("attention_bias")
        if bias is None or not rows:
            return bias
        if self.read_rows != RowSelection(first=True):
            raise NotLowerable("a position bias with a row selection other than the first token")
        g = self.g
        return self.once("position_bias_first", lambda: g.node(
            "Slice", [bias, g.ints([0], "start"), g.ints([1], "end"), g.ints([2], "axis")], hint="position_bias_first"))

    def rotary(self):
        """The current layer's rotary caches (a :class:`~bertc.components.positions.RotaryCache`: (S, D/2)
        cos and sin of positions 0..S-1), or None without a rotary position scheme."""
        return self.layer_positions.get("rotary")

    def rotate(self, x: Value, num_heads: int, rows: bool = False) -> Value:
        """x (B, S, N*D) with each head's q or k rotated by the current layer's rotary angles: one
        com.microsoft ``RotaryEmbedding`` (not interleaved). ``rows``: x holds the query rows the pruned
        last layer computes (:attr:`read_rows`), each rotated with its own position."""
        cache = self.rotary()
        cos, sin = cache.cos, cache.sin
        if rows and self.read_rows.positions:
            # ORT wants at least as many cache rows as x has rows (1 + P may exceed S): F zero rows appended,
            # never read (every position is below S)
            cos, sin = self._padded_cache(cos, x), self._padded_cache(sin, x)
        self.record("rotary", "RotaryEmbedding")
        return self.g.ms("RotaryEmbedding", [x, self._rotary_position_ids(rows), cos, sin],
                         hint="rotary", num_heads=num_heads, interleaved=0)

    def _padded_cache(self, cache: Value, x: Value) -> Value:
        g = self.g

        def make():
            pads = self.once(("rotary_pads", x), lambda: g.node(
                "Concat", [g.ints([0, 0], "pads_begin"), g.node("Shape", [x], start=1, end=2), g.ints([0], "pad_end")],
                axis=0, hint="rotary_cache_pads"))
            return g.node("Pad", [cache, pads], hint="rotary_cache_rows")
        return self.once(("rotary_padded", cache, x), make)

    def _rotary_position_ids(self, rows: bool) -> Value:
        """RotaryEmbedding's position ids: [0] (its offset form: row s has position s) for every row or for
        the first token alone; else (B, F) int64, the first token's 0 then the rows named by an input."""
        g, sel = self.g, self.read_rows
        if not rows or not sel.positions:
            return self.once("rotary_offset", lambda: g.ints([0], "rotary_position_offset"))

        def make():
            named = self.int64_input(sel.positions)
            if not sel.first:
                return named
            zero = g.node("Mul", [g.node("Slice", [named, g.ints([0], "start"), g.ints([1], "end"), g.ints([1], "axis")]),
                                  g.const(0, np.int64, "zero")], hint="first_position")
            return g.node("Concat", [zero, named], axis=1, hint="rotary_row_positions")
        return self.once("rotary_row_positions", make)

    def disentangled(self):
        """The current layer's disentangled position values, ``(relative_embeddings (K, H), relative_positions
        (S, S) int32)`` (:class:`~bertc.components.positions.DisentangledPositions`), or None without that scheme."""
        return self.layer_positions.get("disentangled")

    def layer_position_args(self, width: Optional[int] = None):
        """The current layer's position values as its Keras call takes them, for a portable lowering's
        :meth:`splice`: ``(args, as_kwargs)``, ``args`` the ``(value, shape, dtype)`` arguments to trace and
        ``as_kwargs(tensors)`` the keyword arguments (``rotary=``, ``disentangled=``) made from them; ``width``: the
        hidden size (the relative embeddings' last axis)."""
        import tensorflow as tf

        args, names = [], []
        if self.rotary() is not None:
            args += self.rotary_tables_args()
            names.append("rotary")
        if self.disentangled() is not None:
            emb, rel = self.disentangled()
            args += [(emb, (None, width), tf.float32), (rel, (None, None), tf.int32)]
            names.append("disentangled")

        def as_kwargs(tensors):
            return {name: tuple(tensors[2 * k:2 * k + 2]) for k, name in enumerate(names)}
        return args, as_kwargs

    def rotary_tables_args(self) -> list:
        """The current layer's rotary angles as the Keras call takes them, ``cos`` and ``sin`` (S, D)
        (each half-width cache twice), as ``(value, shape, dtype)`` arguments of a portable lowering's
        :meth:`splice`."""
        import tensorflow as tf

        cache = self.rotary()

        def full(half):
            return self.once(("rotary_full", half), lambda: self.g.node("Concat", [half, half], axis=-1,
                                                                        hint="rotary_table"))
        return [(full(cache.cos), (None, cache.head_size), tf.float32),
                (full(cache.sin), (None, cache.head_size), tf.float32)]

    @property
    def attention_bias_shape(self) -> tuple:
        """The shape :meth:`attention_bias` has, as a tf.TensorSpec takes it (the portable path traces with it)."""
        return (None, 1, 1, None) if self.positions.get("attention_bias") is None else (None, None, None, None)

    def attention_bias(self, rows: bool = False) -> Value:
        """(B, 1, 1, S) additive bias: 0 for real keys, MASK_ADDER for masked ones (as the Keras model),
        plus the position scheme's bias when it has one ((B, N, S, S); ``rows``: see :meth:`position_bias`)."""
        mask_bias = self._mask_bias()
        position = self.position_bias(rows)
        if position is None:
            return mask_bias
        return self.once(("attention_bias", rows), lambda: self.g.node("Add", [mask_bias, position], hint="attention_bias"))

    def _mask_bias(self) -> Value:
        def make():
            with self.g.scope("attention_bias"):
                m = self.g.node("Cast", [self.inputs["input_mask"]], to=1)
                inv = self.g.node("Sub", [self.g.scalar(1.0, "one"), m])
                bias = self.g.node("Mul", [inv, self.g.scalar(MASK_ADDER, "mask_adder")])
                return self.g.node("Unsqueeze", [bias, self.g.ints([1, 2], "axes")])
        return self.once("attention_bias", make)

    def once(self, key, make):
        """``make()`` once per ``key`` for this lowering (a shared value, node or conversion), memoized."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    # --- weights -------------------------------------------------------------------------------
    def weight(self, variable) -> Value:
        return self.g.weight(variable)

    def derived(self, name: str, array) -> Value:
        """An initializer computed from weights (a packed QKV kernel, a folded scale), named after them."""
        return self.g.initializer(name, np.asarray(array, dtype=np.float32))

    # --- values --------------------------------------------------------------------------------
    def value(self, v: Union[Value, Residual]) -> Value:
        """Materialize a pending residual sum (memoized: one Add chain per residual)."""
        if not isinstance(v, Residual):
            return v

        def make():
            total = self.g.node("Add", [v.main, v.bias], hint="add_bias") if v.bias else v.main
            # decomposed: a two-input Sum (the same fp32 addition), which ONNX Runtime's SkipLayerNormFusion does
            # not match, so a LayerNormalization reading it is not fused back into SkipLayerNormalization
            return self.g.node("Sum" if self.skip_layer_norm == "decomposed" else "Add", [total, v.skip],
                               hint="residual")
        return self.once(("residual", v), make)

    def layer_norm(self, v: Union[Value, Residual], ln, want_sum: bool = False, part: Optional[str] = None):
        """LayerNorm(v) with the Keras layer ``ln``'s gamma/beta/epsilon -> (normed, the summed input or None).

        A pending residual becomes its sum (bias Add + Sum, memoized: the residual branch of pre-layer-norm blocks reads
        it) and a LayerNormalization; with ``skip_layer_norm="fused"`` one SkipLayerNormalization (residual +
        bias + layer norm), whose fourth output is the sum itself when ``want_sum``."""
        gamma, eps = self.weight(ln.gamma), float(ln.epsilon)
        beta = self.weight(ln.beta) if ln.beta is not None else None   # center=False: no beta (optional input)
        part = part or ln.name
        if isinstance(v, Residual) and self.skip_layer_norm == "decomposed":
            summed = self.value(v)
            normed = self.g.node("LayerNormalization", [summed, gamma] + ([beta] if beta else []), hint=ln.name,
                                 axis=-1, epsilon=eps)
            self.record(part, "Sum + LayerNormalization")
            return normed, (summed if want_sum else None)
        if isinstance(v, Residual):
            key = ("residual", v)
            outs = ["out", None, None, "sum"] if want_sum and key not in self._memo else ["out"]
            names = self.g.ms("SkipLayerNormalization", [v.main, v.skip, gamma, beta, v.bias],
                              outs if len(outs) > 1 else 1, hint=ln.name, epsilon=eps)
            normed = names[0] if isinstance(names, list) else names
            if isinstance(names, list):
                self._memo[key] = names[3]
            self.record(part, "SkipLayerNormalization")
            return normed, (self.value(v) if want_sum else None)
        normed = self.g.node("LayerNormalization", [v, gamma] + ([beta] if beta else []), hint=ln.name, axis=-1,
                             epsilon=eps)
        self.record(part, "LayerNormalization")
        return normed, (v if want_sum else None)

    def matmul(self, x: Value, dense) -> tuple[Value, Optional[Value]]:
        """x @ kernel of the Keras Dense ``dense`` -> (product, bias): the bias is left to a fused consumer
        (None for a Dense without bias)."""
        product = self.g.node("MatMul", [x, self.weight(dense.kernel)], hint=dense.name)
        return product, (self.weight(dense.bias) if dense.use_bias else None)

    def dense(self, x: Value, dense, part: Optional[str] = None) -> Value:
        """x @ kernel + bias (activation of the Dense layer included: only linear and tanh occur)."""
        y, b = self.matmul(x, dense)
        return self._dense_activation(self.g.node("Add", [y, b], hint=f"{dense.name}_bias") if b else y, dense)

    def _dense_activation(self, y: Value, dense) -> Value:
        act = getattr(dense.activation, "__name__", "linear")
        if act == "tanh":
            return self.g.node("Tanh", [y])
        if act != "linear":
            raise NotLowerable(f"{dense.path}: Dense activation {act!r} has no lowering")
        return y

    def gemm(self, x2d: Value, dense, trans_b: bool = False, weight: Optional[Value] = None) -> Value:
        """A 2-D Dense (pooler, classifiers) as one Gemm (+ Tanh for the pooler)."""
        w = weight or self.weight(dense.kernel)
        bias = self.weight(dense.bias) if dense.use_bias else None
        y = self.g.node("Gemm", [x2d, w, bias], hint=dense.name, transB=int(trans_b) or None)
        return self._dense_activation(y, dense)

    def activation(self, x: Value, bias: Value, name: str, part: str = "activation") -> Value:
        """act(x + bias); exact and tanh GELU fuse the bias add (BiasGelu / FastGelu). ``bias`` None: act(x)
        (exact GELU is then com.microsoft Gelu, tanh GELU a FastGelu without its optional bias)."""
        g = self.g
        if name in ACTIVATION_FUSIONS:
            op = ACTIVATION_FUSIONS[name] if bias or name != "gelu" else "Gelu"
            self.record(part, op)
            return g.ms(op, [x, bias] if bias else [x])
        y = g.node("Add", [x, bias], hint="bias") if bias else x
        self.record(part, name)
        if name == "relu":
            return g.node("Relu", [y])
        if name == "tanh":
            return g.node("Tanh", [y])
        if name == "silu":
            return g.node("Mul", [y, g.node("Sigmoid", [y])])
        if name == "linear":
            return y
        raise NotLowerable(f"activation {name!r} has no lowering")

    def first_token(self, x: Value, keep_axis: bool = True) -> Value:
        """Row 0 of the sequence axis: (B, 1, H) (or (B, H) with ``keep_axis=False``)."""
        g = self.g
        if keep_axis:
            return g.node("Slice", [x, g.ints([0], "start"), g.ints([1], "end"), g.ints([1], "axis")],
                          hint="first_token")
        return g.node("Gather", [x, g.const(0, np.int64, "index0")], hint="first_token", axis=1)

    def gather_rows(self, x: Value, positions: str) -> Value:
        """(B, S, H) -> (B, P, H): the rows named by the int input ``positions`` (B, P), per batch row."""
        g = self.g
        index = self.once(("rows", positions), lambda: g.node(
            "Unsqueeze", [self.int64_input(positions), g.ints([-1], "axes")], hint=f"{positions}_index"))
        return g.node("GatherND", [x, index], hint=positions, batch_dims=1)

    def rows(self, x: Value) -> Value:
        """The rows of ``x`` (B, S, H) that the outputs read (:attr:`read_rows`), in its order."""
        sel = self.read_rows
        if sel is None:
            raise ValueError("rows(): no row selection (the outputs read every row)")
        parts = ([self.first_token(x)] if sel.first else []) + ([self.gather_rows(x, sel.positions)]
                                                                 if sel.positions else [])
        return parts[0] if len(parts) == 1 else self.g.node("Concat", parts, hint="read_rows", axis=1)

    def reduce(self, op: str, x: Value, axes, keepdims: bool = False) -> Value:
        """ReduceSum / ReduceMax / ... over ``axes`` (an input from opset 18 on, ReduceSum from 13)."""
        if op == "ReduceSum" or self.opset >= 18:
            return self.g.node(op, [x, self.g.ints(list(axes), "axes")], keepdims=int(keepdims))
        return self.g.node(op, [x], axes=list(axes), keepdims=int(keepdims))

    # --- attention building blocks ----------------------------------------------------------------
    def split_heads(self, x: Value, num_heads: int, head_size: int, perm) -> Value:
        g = self.g
        x = g.node("Reshape", [x, g.ints([0, -1, num_heads, head_size])])
        return g.node("Transpose", [x], perm=list(perm))

    def merge_heads(self, x: Value, width: int) -> Value:
        g = self.g
        x = g.node("Transpose", [x], perm=[0, 2, 1, 3])
        return g.node("Reshape", [x, g.ints([0, -1, width])])


@dataclass
class Lowered:
    proto: Any
    coverage: dict
    nodes: int
    op_counts: dict
    pruned: bool
    weights: Optional[list] = None  # [(name, array)] left out of ``proto`` (``split_weights``)
    rows: Optional[RowSelection] = None  # what the pruned last layer computes
    not_lowered: list = field(default_factory=list)  # layers that took the portable path (tf2onnx, spliced)


def rows_read(built) -> Optional[RowSelection]:
    """The rows of the last layer the outputs read, when the head says they are not all of them
    (``Head.rows_read``): the first token, or the rows named by an input (and the first token). None:
    every row (no head, a head reading every row, or a position bias with rows named by an input)."""
    rows = built.head.rows_read() if built.head is not None else None
    position = built.position
    if rows is not None and rows.positions and position is not None and position.changes_graph \
            and position.adds_attention_bias:
        return None
    return rows


def prunable(built) -> bool:
    """True when the outputs read only some rows of the last layer (:func:`rows_read`)."""
    return rows_read(built) is not None


def missing_lowerings(built) -> list[str]:
    """Every layer without an ONNX lowering (its own or its kind's portable one), and the encoder / head
    components without a lowering, as ``'layer_1/my_layer (MyLayer)'`` / ``"head ('my_head')"``."""
    from bertc.components.common import SpecLayer
    from bertc.registry import ALL

    missing = []
    for layer in _all_layers(built.model):
        cls = type(layer)
        if lowering_of(layer) is None and isinstance(layer, SpecLayer):
            kind, name = next(((r.kind, r.kind_of(cls)) for r in ALL if r.kind_of(cls)), ("layer", cls.__name__))
            missing.append(f"{layer.path} ({kind} {name!r}, {cls.__name__})")
    if lowering_of(built.encoder) is None:
        missing.append(f"encoder ({built.spec.encoder.type!r})")
    if built.head is not None and lowering_of(built.head) is None:
        missing.append(f"head ({built.spec.head.type!r})")
    return missing


def _all_layers(model):
    """Every layer once, except those inside a layer that takes the portable path (converted whole)."""
    out, seen = [], set()

    def walk(layer):
        for sub in getattr(layer, "_layers", []):
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            out.append(sub)
            if not is_portable(lowering_of(sub)):
                walk(sub)
    walk(model)
    return out


# Initializers above this size are weights: ``split_weights`` keeps them out of the proto.
SPLIT_WEIGHTS_ABOVE = 4096


def lower_model(built, input_dtype: str = "int32", opset: int = 17,
                prune: Optional[bool] = None, split_weights: bool = False) -> Lowered:
    """The whole model as one ONNX graph with the model's exact input/output names and dynamic
    ``batch``/``sequence`` axes. ``prune`` (default: when the outputs read only some rows of the last
    layer, :func:`rows_read`) computes that layer's attention output and feedforward for those rows
    alone: the [CLS] row of a classifier; [CLS] and the masked positions of a pretrainer.
    ``split_weights``: the weights are returned as arrays beside a proto without them (written by
    :func:`bertc.export.onnx.write_onnx`, never serialized in memory)."""
    import onnx

    model, spec, sig = built.model, built.spec, built.signature
    rows = rows_read(built) if prune is not False else None
    if prune and rows is None:
        raise ValueError(f"{spec.name}: nothing to prune, the outputs read every row of the last layer")
    prune = rows is not None
    elem = onnx.TensorProto.INT64 if input_dtype == "int64" else onnx.TensorProto.INT32
    g = GraphBuilder(spec.name.replace(".", "_") + "_optimized")
    inputs = {i.name: g.add_input(i.name, elem, ["batch", i.length or "sequence"]) for i in sig.inputs}
    ctx = LoweringContext(g, inputs, input_dtype, opset, spec.export.skip_layer_norm)
    ctx.read_rows = rows
    if lowering_of(built.encoder) is None:
        raise NotLowerable(f"encoder {spec.encoder.type!r} has no ONNX lowering")
    enc = built.encoder.onnx_lowering(ctx, sig.needs_pooled, prune)
    if built.head is not None:
        if lowering_of(built.head) is None:
            raise NotLowerable(f"head {spec.head.type!r} has no ONNX lowering")
        with ctx.layer_scope("head"):
            outputs = built.head.onnx_lowering(ctx, enc)
    else:
        outputs = {"sequence_output": enc.sequence_output, "pooled_output": enc.pooled_output}
        outputs.update({f"encoder_outputs_{i}": v for i, v in enumerate(enc.layer_outputs)})
    for info in sig.outputs:
        value = ctx.value(outputs[info.name])
        shape = model.output[info.name].shape
        dims = ["batch"] + [("sequence" if axis == info.seq_axis else d if d is not None else f"{info.name}_{axis}")
                            for axis, d in enumerate(shape) if axis > 0]
        g.add_output(value, info.name, onnx.TensorProto.FLOAT, dims)
    nodes, op_counts = len(g.nodes), g.op_counts()
    if split_weights:
        proto, weights = g.model(opset, split_above=SPLIT_WEIGHTS_ABOVE)
        return Lowered(proto, {"layers": ctx.coverage.layers}, nodes, op_counts, enc.pruned, weights,
                       rows if enc.pruned else None, ctx.not_lowered)
    return Lowered(g.model(opset), {"layers": ctx.coverage.layers}, nodes, op_counts, enc.pruned,
                   rows=rows if enc.pruned else None, not_lowered=ctx.not_lowered)
