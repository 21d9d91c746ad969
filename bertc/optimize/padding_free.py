"""Padding-free execution: the optimized graph rewritten to compute every per-token value on the real tokens only.

A batch of sentences of different lengths is padded to one (B, S) layout; today's optimized artifact computes
every position, real or not. This pass rewrites the lowered graph (:func:`bertc.optimize.lower.lower_model`, the
weights beside it) so that everything that acts token by token runs on the *kept* tokens packed into one (1, T + 1,
...) sequence, packed by the mask inside the graph:

- ``keep`` = ``input_mask != 0``, plus the rows some later part of the graph reads by position even when they are
  padding (the first token, read by the pooler and [CLS] heads; the rows a GatherND names, the pretrainer's masked
  positions; and every position of a row without any real token, whose attention then reads all its masked
  keys alike), so that those outputs stay exactly what today's artifact computes for any 0/1 mask;
  ``NonZero`` of the flattened ``keep`` is the (1, T) index of the kept tokens (plus one spare row, a copy of token
  (0, 0)), ``Mod`` by S their original positions (EmbedLayerNormalization's position ids, RotaryEmbedding's).
- *row-wise* operators (embedding lookups and EmbedLayerNormalization, MatMul by a weight, bias adds, activations
  and the fused BiasGelu / FastGelu, LayerNormalization / SkipLayerNormalization, RotaryEmbedding with its packed
  positions, Reshape / Transpose / Slice / Gather / Concat / Split / Softmax that leave the batch and sequence
  axes alone) run on the packed rows: what one token computes depends on that token alone; so do a Reshape that
  flattens batch and sequence into rows (B x S, W) and back, and a Gemm of such rows by constant weights (the
  masked LM's decoder against the tied word table): on the packed (T + 1, W) rows; a Shape that reads only a
  per-token value's batch and sequence sizes reads the mask's instead;
- attention runs on each sequence's kept tokens alone (:meth:`_Rewriter.sequence_attention`) when the batch is
  long (S > :data:`PER_SEQUENCE_ABOVE`; an ``If`` per layer): the fused ``Attention`` becomes its packed QKV
  MatMul; a ``Loop`` over the batch rows slices sequence b's rows of q, k and v (contiguous in the packing), its
  key mask and its rows and columns of an attention bias (relative positions, disentangled terms), and runs
  com.microsoft ``MultiHeadAttention`` on them, appending its output to a sequence that one ConcatFromSequence
  packs again; a MultiHeadAttention over per-token q, k, v (rotary, disentangled) is run the same way. When every
  kept token is real (the usual case), a second Loop passes no key mask, so ORT's CPU kernel takes its
  flash-attention path. Attention then costs the sum of the squared lengths, not B x S^2. For short batches
  (the Loop's per-sequence cost outweighs the padding's) and always with ``per_sequence=None`` (the fp16
  artifact, for CUDA, where one batched kernel beats a loop of small ones) it runs on the padded (B, S) layout:
  q, k and v unpacked (one Gather each by an inverse index) into one MultiHeadAttention with the raw 0/1 key
  padding mask. Every other operator that mixes tokens (a first-token query's attention, talking heads' Einsum
  chain, pooling, first-token Slices) reads unpacked tensors; whatever follows per token is packed again (one
  Gather).
- an ``If`` on "no position is padding" runs today's graph itself (:func:`with_fast_path`): with nothing to
  remove, the packing's copies and MultiHeadAttention's transposes would only cost (~3% at batch 1 x 128, 2
  threads, measured).

A packed attention layout (PackedMultiHeadAttention) is CUDA-only in ONNX Runtime and would make a padded first
token a key as well as a query (inexact whenever the first token is padding); the per-sequence Loop passes each
sequence's key mask, so a kept padded token is a masked key there as in the padded layout: exact on every
provider. On CUDA the same graphs run with ORT's CUDA kernels (NonZero, Gather, Loop, MultiHeadAttention, If):
untested here (no GPU).

Unpacked, the positions not kept hold the spare row's values (finite, computed like any token). That is exact for
everything bertc lowers: attention gives masked keys probability exactly 0 (exp underflows, as in Keras) and
padded queries are never read, pooling multiplies by the mask (which is why an elementwise op with a per-token
operand computed from the mask alone, as max pooling's fill, runs on the padded layout), and the heads read kept
rows. The outputs keep their names and shapes; **outputs that follow the sequence axis hold 0.0 at padded
positions** (one Where on the mask; an output is taken to follow it when its inferred shape does, or when the
graph declares it (batch, sequence, ...), so that one whose shape the pass cannot follow is zeroed too): today's artifact computes values there that depend on every padded token's
computation, which is the work this artifact exists to avoid. The real tokens hold today's values. Parity
compares them so (:mod:`bertc.parity`: the reference is set to 0 at padded positions for a backend whose artifact
says ``padded_positions: "zeros"``). Outputs that do not follow the sequence axis (pooled output, classifier
logits, masked-LM logits, sentence embeddings) are today's values for any mask.

Light values (those computed from the inputs without the hidden states: attention bias, position ids, rotary
caches, relative position biases) keep their padded computation unchanged; only the hidden states are packed.
The int8 and fp16 variants are :func:`with_fast_path` of today's graph and the packed one, each after the same
conversion (MatMuls become DynamicQuantizeMatMul; MultiHeadAttention stays fp32 in int8). The int8 one follows the
int8 tuning (:mod:`bertc.optimize.int8_tuning`): the smoothed graph is packed, and the nodes the tuning kept fp32
or gave block-wise int8 get the same there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from bertc.errors import NotLowerable

MS = "com.microsoft"
PACKED_VARIANTS = {"onnx_packed": "fp32", "onnx_packed_int8": "int8", "onnx_packed_fp16": "fp16"}
PACKED_FILES = {"onnx_packed": "model.packed.onnx", "onnx_packed_int8": "model.packed.int8.onnx",
                "onnx_packed_fp16": "model.packed.fp16.onnx"}
PADDED_POSITIONS = "zeros"

# Operators that act on each position independently (broadcasting elementwise ones).
ELEMENTWISE = {"Add", "Sum", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Greater", "Less", "And", "Or",
               "Not", "Cast", "Relu", "Tanh", "Sigmoid", "Erf", "Sqrt", "Neg", "Exp", "Log", "Abs", "Reciprocal",
               "Identity", "Softplus", "Mod", "Clip", "Gelu", "BiasGelu", "FastGelu", "QuickGelu"}
FLOAT_TYPES = {1, 10, 11, 16}   # float, float16, double, bfloat16
ATTENTION_ATTRIBUTES = {"num_heads", "mask_filter_value", "scale"}
# attention per sequence when the padded length S is above this, else on the padded layout (the Loop's per-sequence
# cost against the padded layout's wasted S x S work: BERT-base, 2 threads, measured with tools/bench_padding_free.py
# --sentences/--min-length/--max-length: about equal at S 48-64, the Loop 2% slower at S 24, 5-10% faster at S 96+)
PER_SEQUENCE_ABOVE = 64


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


@dataclass
class Dims:
    """What is known of a value's shape: per axis "B" (batch), "S" (sequence), an int, or None."""

    axes: tuple

    @property
    def rank(self) -> int:
        return len(self.axes)

    @property
    def per_token(self) -> bool:
        return self.rank >= 2 and self.axes[0] == "B" and self.axes[1] == "S"

    @property
    def flat(self) -> bool:
        """Per token with batch and sequence flattened into one axis ("BS"): a 2-D head's rows (the masked LM's
        tied decoder, one Gemm over (B x S, W))."""
        return self.rank >= 1 and self.axes[0] == "BS"


def _broadcast(dims: list) -> Optional[Dims]:
    if any(d is None for d in dims):
        return None
    rank = max(d.rank for d in dims)
    out = []
    for i in range(rank):
        seen = [d.axes[i - rank + d.rank] for d in dims if i - rank + d.rank >= 0]
        symbols = [a for a in seen if isinstance(a, str)]
        ints = [a for a in seen if isinstance(a, int) and a != 1]
        if "BS" in symbols and len(set(symbols)) > 1:   # flattened rows against a batch or sequence axis
            out.append(None)
        elif symbols:
            out.append(symbols[0])
        elif ints:
            out.append(ints[0])
        elif all(a == 1 for a in seen):
            out.append(1)
        else:
            out.append(None)
    return Dims(tuple(out))


class _Graph:
    """The lowered graph's facts the rewrite needs: constants, shapes, producers and readers."""

    def __init__(self, proto, weights: Optional[list]):
        from onnx import numpy_helper

        self.proto, self.graph = proto, proto.graph
        self.shapes: dict = {name: tuple(a.shape) for name, a in (weights or [])}
        # small constants (axes, shapes, indices), wherever they are: the int8 tuning's graphs hold every
        # initializer beside the proto (bertc.optimize.int8_tuning.split_all)
        self.const: dict = {name: np.asarray(a) for name, a in (weights or []) if np.size(a) <= 64}
        for t in self.graph.initializer:
            self.shapes[t.name] = tuple(t.dims)
            if int(np.prod(t.dims or [1])) <= 64:
                self.const[t.name] = numpy_helper.to_array(t)
        self.float_weights = {name for name, a in (weights or []) if a.dtype.kind == "f"}
        self.float_weights |= {t.name for t in self.graph.initializer if t.data_type in FLOAT_TYPES}
        self.readers: dict = {}
        for node in self.graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.outputs = [o.name for o in self.graph.output]
        # values that hold a shape made of the batch and sequence sizes and constants (Shape(x)[:2] of a
        # per-token x, concatenated with constants): per entry "B", "S" or an int
        self.shape_values: dict = {}
        # outputs declared (batch, sequence, ...): per-token whatever the inference below finds
        self.declared_per_token = {o.name: len(o.type.tensor_type.shape.dim) for o in self.graph.output
                                   if [d.dim_param for d in o.type.tensor_type.shape.dim[:2]] == ["batch", "sequence"]}
        self.dims: dict = {}
        for i in self.graph.input:
            axes = []
            for k, d in enumerate(i.type.tensor_type.shape.dim):
                axes.append("B" if d.dim_param == "batch" else "S" if d.dim_param == "sequence" else
                            (d.dim_value if d.dim_value else None))
            self.dims[i.name] = Dims(tuple(axes))
        for name, shape in self.shapes.items():
            self.dims[name] = Dims(tuple(int(s) for s in shape))

    def is_const(self, name: str) -> bool:
        return name in self.shapes

    def ints(self, name: str) -> Optional[list]:
        value = self.const.get(name)
        return None if value is None else [int(v) for v in np.asarray(value).ravel()]

    def attr(self, node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                from onnx import helper

                return helper.get_attribute_value(a)
        return default


def _infer(g: _Graph, node) -> list:
    """Dims of ``node``'s outputs (None where unknown), from its inputs' and constants."""
    op = node.op_type
    ins = [g.dims.get(n) if n else None for n in node.input]
    x = ins[0] if ins else None
    n_out = len(node.output)
    unknown = [None] * n_out
    if op in ELEMENTWISE:
        present = [d for n, d in zip(node.input, ins) if n]
        return [_broadcast(present)] + [None] * (n_out - 1)
    if x is None:
        return unknown
    if op == "MatMul" or op == "DynamicQuantizeMatMul":
        b = ins[1]
        if b is None or b.rank < 2 or x.rank < 2:
            return unknown
        lead = _broadcast([Dims(x.axes[:-2]), Dims(b.axes[:-2])]) if max(x.rank, b.rank) > 2 else Dims(())
        if lead is None:
            return unknown
        return [Dims(lead.axes + (x.axes[-2], b.axes[-1]))]
    if op == "Gemm":
        b = ins[1] if len(ins) > 1 else None
        if x.rank != 2 or b is None or b.rank != 2 or g.attr(node, "transA", 0):
            return unknown
        return [Dims((x.axes[0], b.axes[0] if g.attr(node, "transB", 0) else b.axes[1]))]
    if op == "Gather":
        idx = ins[1]
        if idx is None:
            return unknown
        axis = _norm(g.attr(node, "axis", 0), x.rank)
        return [Dims(x.axes[:axis] + idx.axes + x.axes[axis + 1:])]
    if op in ("Unsqueeze", "Squeeze"):
        axes = g.ints(node.input[1]) if len(node.input) > 1 else g.attr(node, "axes")
        if axes is None:
            return unknown
        if op == "Unsqueeze":
            rank = x.rank + len(axes)
            axes = sorted(_norm(a, rank) for a in axes)
            out = list(x.axes)
            for a in axes:
                out.insert(a, 1)
            return [Dims(tuple(out))]
        axes = {_norm(a, x.rank) for a in axes}
        return [Dims(tuple(a for i, a in enumerate(x.axes) if i not in axes))]
    if op == "Transpose":
        perm = g.attr(node, "perm") or list(range(x.rank))[::-1]
        return [Dims(tuple(x.axes[p] for p in perm))]
    if op == "Reshape":
        shape = g.ints(node.input[1])
        if shape is None:   # a shape built from the batch and sequence sizes (Shape, Concat)
            symbolic = g.shape_values.get(node.input[1])
            if symbolic is None or any(isinstance(a, int) and a <= 0 for a in symbolic):
                return unknown
            return [Dims(tuple(symbolic))]
        return [_reshape(x, shape)]
    if op == "Slice":
        axes = g.ints(node.input[3]) if len(node.input) > 3 and node.input[3] else list(range(x.rank))
        if axes is None:
            return unknown
        axes = {_norm(a, x.rank) for a in axes}
        return [Dims(tuple(None if i in axes else a for i, a in enumerate(x.axes)))]
    if op == "Concat":
        if any(d is None or d.rank != x.rank for d in ins):
            return unknown
        axis = _norm(g.attr(node, "axis"), x.rank)
        return [Dims(tuple(None if i == axis else a for i, a in enumerate(x.axes)))]
    if op == "Split":
        axis = _norm(g.attr(node, "axis", 0), x.rank)
        return [Dims(tuple(None if i == axis else a for i, a in enumerate(x.axes)))] * n_out
    if op in ("Softmax", "LogSoftmax", "CumSum", "LayerNormalization", "RotaryEmbedding"):
        return [x] + [None] * (n_out - 1)
    if op == "SkipLayerNormalization":
        return [x, None, None, x][:n_out]
    if op == "EmbedLayerNormalization":
        width = g.shapes.get(node.input[2], (None, None))[-1]
        d = Dims(x.axes + (width,))
        return [d, Dims(("B",)), d][:n_out]
    if op in ("Attention", "QAttention"):
        return [Dims(x.axes[:2] + (None,))] + [None] * (n_out - 1)
    if op == "MultiHeadAttention":
        return [Dims(x.axes[:2] + (None,))] + [None] * (n_out - 1)
    if op == "Shape":
        return [Dims((None,))]
    if op == "Einsum":
        return [_einsum(g.attr(node, "equation"), ins)]
    return unknown


def _einsum(equation, ins: list) -> Optional[Dims]:
    """Einsum's output dims from its (ellipsis-free) equation."""
    equation = equation.decode() if isinstance(equation, bytes) else str(equation)
    if "..." in equation or "->" not in equation or any(d is None for d in ins):
        return None
    lhs, rhs = equation.replace(" ", "").split("->")
    letters: dict = {}
    for term, d in zip(lhs.split(","), ins):
        if len(term) != d.rank:
            return None
        for c, a in zip(term, d.axes):
            if letters.get(c) in (None, 1):
                letters[c] = a
    return Dims(tuple(letters.get(c) for c in rhs))


def _reshape(x: Dims, shape: list) -> Optional[Dims]:
    """Reshape's output dims: 0 copies the input axis, -1 is what remains (a symbol when one is left over; "BS"
    when a per-token value's batch and sequence axes are flattened into the first axis)."""
    if (x.per_token and len(shape) >= 1 and shape[0] == -1 and all(s > 0 for s in shape[1:])
            and all(isinstance(a, int) for a in x.axes[2:])
            and int(np.prod(shape[1:], dtype=np.int64)) == int(np.prod(x.axes[2:], dtype=np.int64))):
        return Dims(("BS",) + tuple(int(s) for s in shape[1:]))
    out = [x.axes[i] if s == 0 else (s if s > 0 else None) for i, s in enumerate(shape)]
    if -1 not in shape:
        return Dims(tuple(out))
    known_in = [a for a in x.axes]
    copied = [x.axes[i] for i, s in enumerate(shape) if s == 0]
    rest = list(known_in)
    for a in copied:
        rest.remove(a)
    ints_out = int(np.prod([s for s in shape if s > 0])) if any(s > 0 for s in shape) else 1
    symbols = [a for a in rest if isinstance(a, str)]
    if any(a is None for a in rest):
        return Dims(tuple(out))
    ints_in = int(np.prod([a for a in rest if isinstance(a, int)])) if any(isinstance(a, int) for a in rest) else 1
    if len(symbols) == 1 and ints_in == ints_out:
        out[shape.index(-1)] = symbols[0]
    elif not symbols and ints_in % ints_out == 0:
        out[shape.index(-1)] = ints_in // ints_out
    return Dims(tuple(out))


def _blocked_from() -> int:
    from bertc.components.local_blocks import BLOCKED_FROM

    return BLOCKED_FROM


@dataclass
class PackReport:
    """What the rewrite did: per operator type how many nodes run packed / on the padded layout."""

    packed: dict = field(default_factory=dict)
    padded: dict = field(default_factory=dict)
    attention_rewritten: int = 0
    kept_rows: list = field(default_factory=list)   # rows kept even when padding ("first token", input names)
    fast_path: bool = True   # an If runs today's graph when no position is padding (with_fast_path)
    per_sequence: int = 0    # attentions that run on each sequence's kept tokens for long batches
    per_sequence_above: Optional[int] = PER_SEQUENCE_ABOVE
    in_blocks: dict = field(default_factory=dict)   # window w -> per-sequence attentions that may run in blocks
    unmasked: int = 0        # per-sequence attentions without a key mask when every kept token is real

    def count(self, where: dict, op: str) -> None:
        where[op] = where.get(op, 0) + 1

    def to_json(self) -> dict:
        return {"packed_ops": dict(sorted(self.packed.items())), "padded_ops": dict(sorted(self.padded.items())),
                "attention_rewritten": self.attention_rewritten, "kept_rows": self.kept_rows,
                "attention": (f"{self.per_sequence} per sequence when S > {self.per_sequence_above} (a Loop over the "
                              "batch rows: MultiHeadAttention on each sequence's kept tokens), else on the padded layout"
                              if self.per_sequence else "on the padded layout")
                + (f"; {self.unmasked} of them without a key mask (ORT's flash-attention kernel) when every kept "
                   "token is real" if self.unmasked else "")
                + "".join(f"; {n} windowed (w = {w}) in blocks of {w} queries x {3 * w} keys for a sequence whose kept "
                          f"tokens are consecutive, at least {_blocked_from() * w}, each within {w} of a real one"
                          for w, n in sorted(self.in_blocks.items())),
                "no_padding": "today's optimized graph (an If)" if self.fast_path else "the packed graph",
                "padded_positions": PADDED_POSITIONS}


class _Rewriter:
    def __init__(self, proto, weights, per_sequence: Optional[int] = PER_SEQUENCE_ABOVE, windows: Optional[dict] = None):
        from onnx import helper

        self.h = helper
        self.g = _Graph(proto, weights)
        self.nodes: list = []
        self.inits: list = []   # (name, array) small constants this pass adds
        self.packed: dict = {}  # original value -> its packed (1, T, ...) name
        self.padded: dict = {}  # original value -> its padded (B, S, ...) name (heavy values computed packed)
        self.heavy: set = set()
        self.mask_shapes: dict = {}   # node name -> the same Shape of the mask (:meth:`mask_shape`)
        self.caches: dict = {}
        self.report = PackReport()
        self.per_sequence = per_sequence
        self.windows = windows or {}   # windowed MultiHeadAttention -> (w, block bias): blocks per sequence
        self.report.per_sequence_above = per_sequence
        self._n = 0
        # Split says how many parts from opset 18 on (num_outputs; before it, the attribute does not exist)
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
        self.split_parts = (lambda n: {"num_outputs": n}) if opset >= 18 else (lambda n: {})
        self.mask_input = next((i.name for i in self.g.graph.input if i.name == "input_mask"), None)
        if self.mask_input is None:
            raise NotLowerable("padding-free: the graph has no input_mask")

    # --- small helpers ----------------------------------------------------------------------------
    def name(self, hint: str) -> str:
        self._n += 1
        return f"padding_free/{hint}_{self._n}"

    def node(self, op, inputs, hint, domain="", n_out=1, **attrs) -> list:
        outs = [self.name(hint) for _ in range(n_out)]
        self.nodes.append(self.h.make_node(op, list(inputs), outs, name=self.name(op), domain=domain, **attrs))
        return outs

    def one(self, op, inputs, hint, **attrs) -> str:
        return self.node(op, inputs, hint, **attrs)[0]

    def const(self, value, dtype, hint) -> str:
        name = self.name(hint)
        self.inits.append((name, np.asarray(value, dtype=dtype)))
        return name

    # --- classification ---------------------------------------------------------------------------
    def is_seed(self, node) -> bool:
        """An embedding lookup: where the hidden states begin."""
        g = self.g
        if node.op_type == "EmbedLayerNormalization":
            return True
        if node.op_type == "Gather" and node.input[0] in g.float_weights and len(g.shapes.get(node.input[0], ())) == 2:
            idx = g.dims.get(node.input[1])
            return idx is not None and idx.per_token and g.attr(node, "axis", 0) == 0
        return False

    def classify(self) -> None:
        g = self.g
        for node in g.graph.node:
            symbolic = self.shape_value(node)
            if symbolic is not None:
                g.shape_values[node.output[0]] = symbolic
            outs = _infer(g, node)
            for name, d in zip(node.output, outs):
                if name and d is not None:
                    g.dims[name] = d
            of_mask = self.mask_shape(node)
            if of_mask is not None:
                self.mask_shapes[node.name] = of_mask
                continue
            if self.is_seed(node) or any(n in self.heavy for n in node.input):
                self.heavy.update(n for n in node.output if n)

    def shape_value(self, node) -> Optional[tuple]:
        """The entries ("B", "S", ints) of a shape value ``node`` makes: Shape of a per-token value's leading
        axes, or a Concat (axis 0) of such and constants; None for anything else."""
        g = self.g
        if node.op_type == "Shape" and self.tok(node.input[0]):
            x = g.dims[node.input[0]]
            axes = x.axes[g.attr(node, "start", 0):g.attr(node, "end")]   # ONNX's start / end: Python's slicing
            return tuple(axes) if all(a in ("B", "S") or isinstance(a, int) for a in axes) else None
        if node.op_type == "Concat" and g.attr(node, "axis", 0) == 0:
            entries = []
            for name in node.input:
                part = g.shape_values.get(name)
                if part is None:
                    part = g.ints(name)
                    if part is None or g.const[name].ndim != 1:
                        return None
                entries.extend(part)
            return tuple(entries)
        return None

    def tok(self, name: str) -> bool:
        d = self.g.dims.get(name)
        return d is not None and d.per_token

    def flat(self, name: str) -> bool:
        d = self.g.dims.get(name)
        return d is not None and d.flat

    def rows(self, name: str) -> bool:
        """Per token, in the (B, S, ...) layout or flattened (B x S, ...)."""
        return self.tok(name) or self.flat(name)

    # --- the kept rows ------------------------------------------------------------------------------
    def row_readers(self):
        """(first token read?, [index values of GatherNDs reading rows]) over the hidden states."""
        g, first, named = self.g, False, []
        for node in g.graph.node:
            if not node.input or node.input[0] not in self.heavy:
                continue
            # a value of unknown shape may be per-token: its row reads are taken as such (at worst, a row kept)
            x = g.dims.get(node.input[0])
            if x is not None and x.flat and node.op_type in ("Gather", "GatherElements", "GatherND", "Slice"):
                # rows of the flattened (B x S, ...) tokens picked by index: padded rows may be among them
                if node.op_type == "Gather" and _norm(g.attr(node, "axis", 0), x.rank) >= 1:
                    continue
                if node.op_type == "Slice":
                    axes = g.ints(node.input[3]) if len(node.input) > 3 and node.input[3] else [0]
                    if axes is not None and 0 not in {_norm(a, x.rank) for a in axes}:
                        continue
                raise NotLowerable(f"padding-free: {node.name} reads rows of flattened tokens by index")
            if x is not None and not x.per_token:
                continue
            known, x = x is not None, x or Dims((None,) * 3)
            op = node.op_type
            if op == "Slice":
                axes = g.ints(node.input[3]) if len(node.input) > 3 and node.input[3] else None
                if axes is None or 1 not in {_norm(a, x.rank) for a in axes}:
                    continue
                starts, ends = g.ints(node.input[1]), g.ints(node.input[2])
                k = [_norm(a, x.rank) for a in axes].index(1)
                if starts is None or ends is None or starts[k] != 0 or ends[k] != 1:
                    if not known:
                        continue
                    raise NotLowerable(f"padding-free: {node.name} slices rows other than the first token")
                first = True
            elif op == "Gather" and _norm(g.attr(node, "axis", 0), x.rank) == 1:
                idx = g.ints(node.input[1])
                if idx is None or idx != [0]:
                    if not known:
                        continue
                    raise NotLowerable(f"padding-free: {node.name} gathers rows other than the first token")
                first = True
            elif op == "GatherND":
                if g.attr(node, "batch_dims", 0) != 1:
                    raise NotLowerable(f"padding-free: {node.name} is a GatherND without batch_dims=1")
                named.append(node.input[1])
        return first, named

    def keep_rows(self) -> None:
        mask = self.mask_input
        keep = self.one("Cast", [mask], "keep", to=9)                        # bool (B, S): mask != 0
        first, named = self.row_readers()
        if first or named:
            keep_i = self.one("Cast", [keep], "keep_int", to=7)
            # a row without any real token attends to all of its (masked) keys alike, so what is read of it depends
            # on every position: such a row is kept whole
            empty = self.one("Equal", [self.one("ReduceSum", [keep_i, self.const([1], np.int64, "axis1")], "real_count",
                                                keepdims=1), self.const(0, np.int64, "none")], "empty_row")
            keep_i = self.one("Max", [keep_i, self.one("Cast", [empty], "empty_int", to=7)], "keep_empty_rows")
            if first:
                shape = self.one("Shape", [mask], "batch", start=0, end=1)
                ones = self.one("Expand", [self.const([[1]], np.int64, "one"),
                                           self.one("Concat", [shape, self.const([1], np.int64, "one_col")],
                                                    "first_shape", axis=0)], "first")
                keep_i = self.one("ScatterElements", [keep_i, self.one("Mul", [ones, self.const(0, np.int64, "zero")],
                                                                      "first_index"), ones], "keep_first", axis=1)
                self.report.kept_rows.append("first token")
            for idx in named:
                # (B, P, 1) row indices per batch row -> those rows kept
                rows = self.one("Cast", [self.one("Squeeze", [idx, self.const([-1], np.int64, "axes")], "rows")],
                                "rows_int64", to=7)
                ones = self.one("Expand", [self.const(1, np.int64, "one"), self.one("Shape", [rows], "rows_shape")],
                                "ones")
                keep_i = self.one("ScatterElements", [keep_i, rows, ones], "keep_named", axis=1)
                self.report.kept_rows.append(self._input_behind(idx))
            self.report.kept_rows.append("rows without a real token")
            keep = self.one("Cast", [keep_i], "keep_bool", to=9)
        self.keep = keep
        flat = self.one("Reshape", [keep, self.const([-1], np.int64, "flat")], "keep_flat")
        kept = self.one("NonZero", [flat], "kept")                            # (1, T) int64
        # one more row, a copy of token (0, 0): the row every position not kept reads when unpacked (any finite
        # values do: attention gives those keys weight 0, outputs are zeroed there); T + 1 >= 1 rows, always
        self.index = self.one("Concat", [kept, self.const([[0]], np.int64, "spare")], "packed_index", axis=1)
        length = self.one("Shape", [mask], "sequence_length", start=1, end=2)
        self.positions = self.one("Mod", [self.index, length], "positions")  # (1, T): original positions
        self.positions32 = self.one("Cast", [self.positions], "positions_int32", to=6)
        rank = self.one("Sub", [self.one("CumSum", [self.one("Cast", [flat], "flat_int", to=7),
                                                     self.const(0, np.int64, "axis0")], "cumsum"),
                                self.const(1, np.int64, "one_")], "rank")
        total = self.one("Shape", [kept], "total", start=1, end=2)
        inverse = self.one("Where", [flat, rank, total], "inverse_flat")     # kept: its packed row; else T (spare)
        self.inverse = self.one("Reshape", [inverse, self.one("Shape", [mask], "mask_shape")], "inverse")

    def _input_behind(self, name: str) -> str:
        """The graph input a (Cast / Unsqueeze of an) index value comes from, for the report."""
        producers = {o: n for n in self.g.graph.node for o in n.output}
        while name in producers and producers[name].input:
            name = producers[name].input[0]
        return name

    # --- packing ------------------------------------------------------------------------------------
    def pack(self, name: str) -> str:
        """The (1, T, ...) packed form of the per-token value ``name``; (T, ...) of a flattened one (B x S, ...)."""
        if name in self.packed:
            return self.packed[name]
        if self.flat(name):
            if not hasattr(self, "_index_rows"):
                self._index_rows = self.one("Squeeze", [self.index, self.const([0], np.int64, "axis0")], "index_rows")
            self.packed[name] = self.one("Gather", [name, self._index_rows], "pack_rows", axis=0)
            return self.packed[name]
        rank = self.g.dims[name].rank
        if rank == 2:
            flat = self.one("Reshape", [name, self.const([-1], np.int64, "flat")], "flat")
        else:
            rest = self.one("Shape", [name], "rest", start=2)
            flat = self.one("Reshape", [name, self.one("Concat", [self.const([-1], np.int64, "minus_one"), rest],
                                                         "flat_shape", axis=0)], "flat")
        self.packed[name] = self.one("Gather", [flat, self.index], "pack", axis=0)
        return self.packed[name]

    def unpack(self, name: str) -> str:
        """The padded (B, S, ...) form of the heavy value ``name`` computed packed: one Gather of its rows by the
        inverse index; the positions not kept hold the spare row's (finite) values."""
        if name in self.padded:
            return self.padded[name]
        if self.flat(name):   # (T, ...) -> (B, S, ...) -> (B x S, ...)
            rows = self.packed[name]
            unpacked = self.one("Gather", [rows, self.inverse], "unpack_rows", axis=0)
            shape = self.one("Concat", [self.const([-1], np.int64, "minus_one"),
                                        self.one("Shape", [rows], "row_shape", start=1)], "flat_shape", axis=0)
            self.nodes.append(self.h.make_node("Reshape", [unpacked, shape], [name], name=self.name("unpack")))
            self.padded[name] = name
            return name
        rows = self.one("Squeeze", [self.packed[name], self.const([0], np.int64, "axis0_")], "rows")
        self.nodes.append(self.h.make_node("Gather", [rows, self.inverse], [name], name=self.name("unpack"), axis=0))
        self.padded[name] = name
        return name

    def padded_input(self, name: str) -> str:
        if not name or name not in self.heavy:
            return name
        return self.unpack(name) if name in self.packed and name not in self.padded else name

    def packed_input(self, name: str) -> str:
        return self.pack(name) if name not in self.packed else self.packed[name]

    # --- per node -----------------------------------------------------------------------------------
    def row_wise(self, node) -> bool:
        """True when ``node`` computes each (batch, position) row from that row alone (the other inputs
        broadcast over batch and sequence), so it can run on the packed rows."""
        g, op = self.g, node.op_type
        outs = [g.dims.get(o) for o in node.output if o]
        if not outs or outs[0] is None or not (outs[0].per_token or outs[0].flat):
            return False
        x = g.dims.get(node.input[0])
        if outs[0].flat or (x is not None and x.flat):
            return self.flat_row_wise(node, x, outs[0])
        if op in ELEMENTWISE:
            # a per-token operand computed from the inputs alone (the mask's fill of max pooling) carries its
            # padded positions' values: the op runs padded, where they are
            if any(n and self.tok(n) and n not in self.heavy for n in node.input):
                return False
            if op == "Cast" and self.h.get_attribute_value(node.attribute[0]) not in FLOAT_TYPES:
                return False
            rank = outs[0].rank
            for name in node.input:
                d = g.dims.get(name) if name else None
                if name and (d is None or d.rank > rank):
                    return False
                if name and not d.per_token:
                    # right-aligned, the axes under batch and sequence must broadcast (1 or absent)
                    if any(a != 1 for i, a in enumerate(d.axes) if i - d.rank + rank in (0, 1)):
                        return False
            return True
        if x is None or not x.per_token:
            return op == "Gather" and self.is_seed(node)
        if op in ("MatMul", "Gemm"):
            b = g.dims.get(node.input[1])
            return op == "MatMul" and b is not None and b.rank == 2 and not b.per_token
        if op == "Gather":
            return _norm(g.attr(node, "axis", 0), x.rank) >= 2 and not self.tok(node.input[1])
        if op in ("Unsqueeze", "Squeeze", "Reshape", "Transpose", "Slice", "Concat", "Split", "Softmax",
                  "LogSoftmax", "LayerNormalization"):
            if op == "Concat" and not all(self.tok(n) for n in node.input):
                return False
            if op == "Reshape" and (len(node.input) < 2 or g.ints(node.input[1]) is None
                                    or any(s in (0, -1) for s in g.ints(node.input[1])[2:])):
                return False
            if op == "Slice" and not all(g.is_const(n) for n in node.input[1:] if n):
                return False
            if op in ("Softmax", "LogSoftmax", "LayerNormalization"):
                return _norm(g.attr(node, "axis", -1), x.rank) >= 2
            return all(d is not None and d.per_token for d in outs)
        if op == "SkipLayerNormalization":
            return self.tok(node.input[1]) and not any(node.output[i] and g.readers.get(node.output[i])
                                                          for i in (1, 2) if i < len(node.output))
        if op == "EmbedLayerNormalization":
            pos = node.input[8] if len(node.input) > 8 else ""
            return (not (len(node.output) > 1 and g.readers.get(node.output[1]))) and (not pos or self.tok(pos))
        if op == "RotaryEmbedding":
            return g.ints(node.input[1]) == [0]
        return False

    def flat_row_wise(self, node, x: Optional[Dims], out: Dims) -> bool:
        """Whether ``node`` computes each row of flattened tokens (B x S, ...) from that token alone: a Reshape
        that flattens a per-token value's batch and sequence axes, or back (to a shape made of them, a
        :meth:`shape_value`), and a Gemm of the rows by constant weights (a 2-D head: the masked LM's decoder)."""
        g, op = self.g, node.op_type
        if x is None:
            return False
        if op == "Reshape":
            return ((x.per_token and out.flat and g.ints(node.input[1]) is not None)
                    or (x.flat and out.per_token and all(isinstance(a, int) for a in out.axes[2:])))
        if op == "Gemm":
            return (x.flat and out.flat and not g.attr(node, "transA", 0)
                    and all(n not in self.heavy and not self.rows(n) for n in node.input[1:] if n))
        return False

    def emit_packed(self, node) -> None:
        g, op = self.g, node.op_type
        if op == "Reshape" and self.flat(node.output[0]):    # (1, T, ...) -> (T, W): the shape [-1, W] itself
            inputs = [self.packed_input(node.input[0]), node.input[1]]
        elif op == "Reshape" and self.flat(node.input[0]):   # (T, W) -> (1, T, ...)
            shape = [1, -1] + list(g.dims[node.output[0]].axes[2:])
            inputs = [self.packed_input(node.input[0]), self.const(shape, np.int64, "packed_shape")]
        elif op == "Reshape":
            shape = g.ints(node.input[1])
            inputs = [self.packed_input(node.input[0]), self.const([1, -1] + shape[2:], np.int64, "packed_shape")]
        elif op == "EmbedLayerNormalization":
            ins = list(node.input) + [""] * (9 - len(node.input))
            inputs = [self.packed_input(ins[0]), self.packed_input(ins[1]) if ins[1] else ""] + ins[2:7] + \
                     ["", self.packed_input(ins[8]) if ins[8] else self.positions32]
        elif op == "RotaryEmbedding":
            # ORT wants at least as many cache rows as the input has rows (T may exceed S): zero rows appended,
            # never read (every position is below S)
            inputs = [self.packed_input(node.input[0]), self.positions] + [self.rotary_cache(n) for n in node.input[2:4]]
        else:
            inputs = [self.packed_input(n) if n and self.rows(n) else n for n in node.input]
        outs = []
        for k, o in enumerate(node.output):
            if not o:
                outs.append("")
                continue
            d = g.dims.get(o)
            if d is not None and (d.per_token or d.flat):
                outs.append(self.name("packed"))
                self.packed[o] = outs[-1]
            else:      # an output nobody reads (mask_index, the unused SkipLayerNorm statistics)
                outs.append(self.name("unused"))
        new = self.h.make_node(op, inputs, outs, name=node.name + "/packed", domain=node.domain)
        new.attribute.extend(node.attribute)
        self.nodes.append(new)
        self.report.count(self.report.packed, (node.domain + "." if node.domain else "") + op)

    def rotary_cache(self, name: str) -> str:
        if name not in self.caches:
            if not hasattr(self, "_cache_pads"):
                total = self.one("Shape", [self.index], "total_rows", start=1, end=2)
                self._cache_pads = self.one("Concat", [self.const([0, 0], np.int64, "pads_begin"), total,
                                                       self.const([0], np.int64, "pad_end")], "cache_pads", axis=0)
            self.caches[name] = self.one("Pad", [name, self._cache_pads], "rotary_cache_rows")
        return self.caches[name]

    def emit_attention(self, node) -> bool:
        """The fused Attention as its QKV MatMul on the packed rows, then MultiHeadAttention per sequence
        (:meth:`sequence_attention`) or on the padded layout (:meth:`batched_attention`)."""
        g = self.g
        attrs = {a.name for a in node.attribute}
        ins = list(node.input) + [""] * (6 - len(node.input))
        if (attrs - ATTENTION_ATTRIBUTES or ins[4] or len(node.input) > 6
                or not self.tok(ins[0]) or not self.tok(ins[3]) or g.dims[ins[3]].rank != 2
                or any(o and g.readers.get(o) for o in node.output[1:])):
            return False
        qkv = self.one("MatMul", [self.packed_input(ins[0]), ins[1]], "qkv")
        self.report.count(self.report.packed, "MatMul")
        self.report.attention_rewritten += 1
        if self.per_sequence is not None and ins[3] == self.mask_input:
            self.packed[node.output[0]] = self.sequence_attention(node, [qkv], ins[2], self.padded_input(ins[5]))
        else:
            self.batched_attention(node, [qkv], ins[2], ins[3], self.padded_input(ins[5]), node.output[0])
            self.report.count(self.report.padded, "com.microsoft.MultiHeadAttention")
        return True

    def batched_attention(self, node, qkv: list, bias: str, mask: str, attention_bias: str, out: str = "") -> str:
        """One MultiHeadAttention on the padded (B, S) layout over the packed ``qkv`` (the three, or one packed
        QKV split on the packed rows), each unpacked by one Gather; returns its padded output (``out``)."""
        parts = qkv if len(qkv) == 3 else self.node("Split", qkv, "qkv_split", n_out=3, axis=2, **self.split_parts(3))
        unpacked = [self.one("Gather", [self.one("Squeeze", [p, self.const([0], np.int64, "axis_0")], "rows"),
                                        self.inverse], "unpack", axis=0) for p in parts]
        out = out or self.name("attention")
        new = self.h.make_node("MultiHeadAttention", unpacked + [bias, mask] + ([attention_bias] if attention_bias
                                                                               else []),
                               [out], name=node.name + "/mha", domain=MS)
        new.attribute.extend(node.attribute)
        self.nodes.append(new)
        return out

    def emit_multi_head_attention(self, node) -> bool:
        """A MultiHeadAttention over per-token query, key and value (rotary, disentangled attention) run per
        sequence (:meth:`sequence_attention`); False (it runs on the padded layout) for any other form."""
        g = self.g
        ins = list(node.input) + [""] * (6 - len(node.input))
        if (self.per_sequence is None or len(node.input) > 6 or {a.name for a in node.attribute} - ATTENTION_ATTRIBUTES
                or any(o and g.readers.get(o) for o in node.output[1:]) or ins[4] != self.mask_input
                or not all(self.tok(n) and g.dims[n].rank == 3 for n in ins[:3])):
            return False
        self.packed[node.output[0]] = self.sequence_attention(node, [self.packed_input(n) for n in ins[:3]], ins[3],
                                                              self.padded_input(ins[5]))
        self.report.attention_rewritten += 1
        return True

    # --- attention per sequence ---------------------------------------------------------------------
    def sequences(self) -> dict:
        """The light values every per-sequence attention reads, computed once per batch so that the Loop body
        (run B times per layer) only looks them up: per batch row its first and end packed rows ((B, 1) each);
        the packed key mask (1, T + 1); the packed rows' original positions; the batch size; whether the batch
        is long enough for the Loop; whether every kept token is real (the Loop without key masks)."""
        if hasattr(self, "_sequences"):
            return self._sequences
        c = self.const
        counts = self.one("ReduceSum", [self.one("Cast", [self.keep], "keep_count", to=7), c([1], np.int64, "axis1")],
                          "kept_per_row", keepdims=0)                                                   # (B,)
        starts = self.one("CumSum", [counts, c(0, np.int64, "axis0")], "first_row", exclusive=1)       # (B,)
        ends = self.one("Add", [starts, counts], "end_row")
        length = self.one("Shape", [self.mask_input], "seq_len", start=1, end=2)                        # (1,)
        column = c([1], np.int64, "column")
        batch = self.one("Squeeze", [self.one("Shape", [self.mask_input], "batch_size", start=0, end=1),
                                     c([0], np.int64, "axes0")], "trips")                               # ()
        flat = self.one("Reshape", [self.mask_input, c([-1], np.int64, "flat_mask")], "mask_flat")
        packed_mask = self.one("Cast", [self.one("Gather", [flat, self.index], "packed_mask")], "packed_mask_int32",
                               to=6)                                                                    # (1, T + 1)
        self._sequences = {
            "starts": self.one("Unsqueeze", [starts, column], "starts"), "ends": self.one("Unsqueeze", [ends, column],
                                                                                            "ends"),
            "batch": batch,
            "positions": self.one("Squeeze", [self.positions, c([0], np.int64, "axes_0")], "packed_positions"),
            "mask": packed_mask,
            "rows": self.one("Range", [c(0, np.int64, "b0"), batch, c(1, np.int64, "b1")], "batch_rows"),
            "long": self.one("Greater", [length, c([self.per_sequence], np.int64, "per_sequence_above")], "long"),
            # every kept token is real (no kept padded first token, no row without a real token): no key mask
            "kept_real": self.one("Equal", [self.one("ReduceMin", [packed_mask], "kept_mask_min", keepdims=0),
                                            c(1, np.int32, "real")], "kept_real")}
        return self._sequences

    def sequence_attention(self, node, qkv: list, bias: str, attention_bias: str) -> str:
        """MultiHeadAttention on each sequence's kept tokens alone: a Loop over the batch rows slices sequence
        b's packed rows of q, k and v (``qkv``: the three, or one packed QKV split in the body; contiguous: the
        packing keeps row order), their key mask (a padded first token kept for the pooler is a masked key, as in
        the padded layout) and its rows and columns of ``attention_bias``; each sequence's output is appended to
        the Loop's carried sequence, which one ConcatFromSequence packs again (v's spare row as the spare row).
        Exact for any 0/1 mask: a key not kept is masked in the padded layout too. Without an attention bias or
        window, a batch whose kept tokens are all real (right or left padding, real first tokens: the usual case)
        runs a second Loop whose MultiHeadAttention has no key mask: ORT's CPU kernel then takes its
        flash-attention path (it does only without mask and bias), the same values to fp32 rounding. Returns the
        packed output's name."""
        from onnx import TensorProto

        seq, h = self.sequences(), self.h
        window = self.windows.get(node.name)
        value = lambda name: h.make_tensor_value_info(name, TensorProto.FLOAT, None)
        forms = (True,) if attention_bias or window is not None else (False, True)
        bodies = {masked: self.sequence_body(node, qkv, bias, attention_bias, window, masked) for masked in forms}
        outer, self.nodes = self.nodes, []
        empty = self.one("SequenceEmpty", [], "no_sequences", dtype=TensorProto.FLOAT)
        # a condition that stays true (not the empty one ONNX allows): ORT's symbolic_shape_infer, which TensorRT's
        # setup and quant_pre_process run, reads every Loop input by name and failed on the empty one
        always = self.const(True, np.bool_, "keep_looping")
        sequences = lambda masked: h.make_node("Loop", [seq["batch"], always, empty], [self.name("per_sequence")],
                                               name=self.name("sequences" if masked else "unmasked_sequences"),
                                               body=bodies[masked])
        if len(bodies) == 1:
            self.nodes.append(sequences(True))
            outputs = self.nodes[-1].output[0]
        else:
            branches = {masked: h.make_graph([sequences(masked)], self.name("masked" if masked else "unmasked"), [], [])
                        for masked in bodies}
            for graph in branches.values():
                graph.output.append(h.make_tensor_sequence_value_info(graph.node[0].output[0], TensorProto.FLOAT, None))
            outputs = self.one("If", [seq["kept_real"]], "per_sequence", then_branch=branches[False],
                               else_branch=branches[True])
            self.report.unmasked += 1
        # the spare row (the last packed row; any finite values do, see keep_rows): the spare row of v (a sequence
        # may have no kept token at all, when no output reads padded rows by position)
        spare = self.one("Slice", [qkv[-1], self.const([-1], np.int64, "last"), self.const([2 ** 62], np.int64, "end"),
                                   self.const([1], np.int64, "ax1")], "spare_row")
        if len(qkv) == 1:
            spare = self.node("Split", [spare], "spare_qkv", n_out=3, axis=2, **self.split_parts(3))[2]
        looped = self.one("ConcatFromSequence", [self.one("SequenceInsert", [outputs, spare], "with_spare")],
                          "attention_packed", axis=1)                                                   # (1, T + 1, D)
        # short batches: the padded layout, packed again
        self.nodes, branch = [], self.nodes
        mha = self.batched_attention(node, qkv, bias, self.mask_input, attention_bias)
        batched = self.one("Gather", [self.flat_rows(mha), self.index], "attention_packed", axis=0)
        out = self.name("attention")
        outer.append(h.make_node("If", [seq["long"]], [out], name=self.name("If"),
                                 then_branch=h.make_graph(branch, self.name("per_sequence"), [], [value(looped)]),
                                 else_branch=h.make_graph(self.nodes, self.name("padded"), [], [value(batched)])))
        self.nodes = outer
        self.report.count(self.report.packed, "com.microsoft.MultiHeadAttention (per sequence)")
        self.report.per_sequence += 1
        return out

    def sequence_body(self, node, qkv: list, bias: str, attention_bias: str, window, masked: bool):
        """The Loop body of :meth:`sequence_attention` (a GraphProto): sequence b's attention appended to the
        carried sequence of outputs. ``masked``: with its key mask (else none: every kept key is real)."""
        from onnx import TensorProto

        seq, c, h = self.sequences(), self.const, self.h
        body = []

        def add(op, inputs, hint, n_out=1, **attrs):
            outs = [self.name(hint) for _ in range(n_out)]
            body.append(h.make_node(op, inputs, outs, name=self.name(op), **attrs))
            return outs if n_out > 1 else outs[0]

        i, cond = self.name("b"), self.name("cond")
        start, end = add("Gather", [seq["starts"], i], "start"), add("Gather", [seq["ends"], i], "end")
        tokens = c([1], np.int64, "tokens")
        rows = [add("Slice", [name, start, end, tokens], "rows") for name in qkv]
        if len(rows) == 1:
            rows = add("Split", rows, "qkv", n_out=3, axis=2, **self.split_parts(3))
        key_mask = add("Slice", [seq["mask"], start, end, tokens], "key_mask") if masked else ""
        inputs = rows + [bias, key_mask]
        if window is not None:   # the plain per-sequence attention becomes the else branch of an If on blocks
            outer_body, body = body, []
        if attention_bias:
            # (1 or B, H or 1, S, S): row b (row 0 when shared), the kept positions' rows and columns
            which = self.one("Unsqueeze", [self.one("Mod", [seq["rows"], self.one("Shape", [attention_bias], "bias_rows",
                                                                                  start=0, end=1)], "bias_row"),
                                           c([1], np.int64, "col")], "bias_row_col")
            at = add("Gather", [attention_bias, add("Gather", [which, i], "bias_b")], "bias_row", axis=0)
            pos = add("Slice", [seq["positions"], start, end, c([0], np.int64, "ax0")], "positions")
            inputs.append(add("Gather", [add("Gather", [at, pos], "bias_q", axis=2), pos], "bias_qk", axis=3))
        while inputs and not inputs[-1]:
            inputs.pop()
        att = add("MultiHeadAttention", inputs, "attention", domain=MS)
        body[-1].attribute.extend(node.attribute)
        if window is not None:
            plain_nodes, body = body, outer_body
            att = self.sequence_blocks(node, add, body, plain_nodes, att, rows, bias, key_mask, i, *window)
        done = self.name("done")
        out = add("SequenceInsert", [done, att], "sequences")
        cond_out = add("Identity", [cond], "cond_out")
        return h.make_graph(body, self.name("sequence"), [h.make_tensor_value_info(i, TensorProto.INT64, []),
                                                          h.make_tensor_value_info(cond, TensorProto.BOOL, []),
                                                          h.make_tensor_sequence_value_info(done, TensorProto.FLOAT,
                                                                                            None)],
                            [h.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
                             h.make_tensor_sequence_value_info(out, TensorProto.FLOAT, None)])

    def sequence_blocks(self, node, add, body: list, plain_nodes: list, plain: str, rows: list, bias: str,
                        key_mask: str, i: str, w: int, block_bias) -> str:
        """Inside the per-sequence Loop body: an ``If`` between the plain windowed attention (``plain_nodes``, its
        output ``plain``) and the same attention in blocks of ``w`` queries against ``3 w`` keys (as
        :mod:`bertc.components.local_blocks` on the padded layout). Taken when the sequence's kept tokens are one
        run of consecutive positions (then the window over positions is the window over its packed rows) at least
        ``BLOCKED_FROM * w`` long, each with a real key within w (:meth:`block_rows`). Returns the If's output,
        (1, L, D)."""
        from onnx import TensorProto

        c, h = self.const, self.h
        taken = add("Gather", [self.block_rows(w), i], "blocks_taken")
        self.report.in_blocks[w] = self.report.in_blocks.get(w, 0) + 1
        blocked_nodes = []

        def put(op, inputs, hint, **attrs):
            out = self.name(hint)
            blocked_nodes.append(h.make_node(op, inputs, [out], name=self.name(op), **attrs))
            return out

        q, k, v = rows      # this sequence's rows, (1, L, D) each (a packed QKV is split before)
        z = c([0], np.int64, "zero")
        length = put("Shape", [q], "length", start=1, end=2)
        width = put("Shape", [q], "width", start=2, end=3)
        blocks = put("Div", [put("Add", [length, c([w - 1], np.int64, "round_up")], "l"), c([w], np.int64, "w")],
                     "blocks")
        extra = put("Sub", [put("Mul", [blocks, c([w], np.int64, "w")], "lp"), length], "extra")
        back = put("Add", [extra, c([w], np.int64, "w")], "back")
        front = c([w], np.int64, "front")
        starts = put("Mul", [put("Range", [c(0, np.int64, "r0"), put("Squeeze", [blocks], "nb"), c(1, np.int64, "r1")],
                                 "block_rows"), c(w, np.int64, "step")], "block_starts")
        index = put("Add", [put("Unsqueeze", [starts, c([1], np.int64, "ax1")], "starts_col"),
                            c(np.arange(3 * w, dtype=np.int64)[None], np.int64, "offsets")], "key_index")
        minus_one = c([-1], np.int64, "m1")

        def windows(x, pads, size):
            shape = put("Concat", [minus_one, c([size], np.int64, "rows"), width], "shape", axis=0)
            return put("Reshape", [put("Gather", [put("Pad", [x, pads], "padded"), index], "windows", axis=1), shape],
                       "blocks")

        kv_pads = put("Concat", [z, front, z, z, back, z], "kv_pads", axis=0)
        q_shape = put("Concat", [minus_one, c([w], np.int64, "rows"), width], "q_shape", axis=0)
        qb = put("Reshape", [put("Pad", [q, put("Concat", [z, z, z, z, extra, z], "q_pads", axis=0)], "q_padded"),
                             q_shape], "q_blocks")
        mask = put("Reshape", [put("Gather", [put("Pad", [key_mask, put("Concat", [z, front, z, back], "m_pads",
                                                                                       axis=0)], "m_padded"),
                                              index], "m_windows", axis=1), c([-1, 3 * w], np.int64, "m_shape")],
                   "key_mask_blocks")
        att = self.name("attention_blocks")
        if ("block_bias", w) not in self.caches:
            self.caches[("block_bias", w)] = c(block_bias, np.float32, "block_bias")
        mha = h.make_node("MultiHeadAttention", [qb, windows(k, kv_pads, 3 * w), windows(v, kv_pads, 3 * w), bias, mask,
                                                 self.caches[("block_bias", w)]], [att],
                          name=self.name("attention_blocks"), domain=MS)
        mha.attribute.extend(node.attribute)
        blocked_nodes.append(mha)
        out_shape = put("Concat", [c([1], np.int64, "one"), minus_one, width], "out_shape", axis=0)
        blocked = put("Slice", [put("Reshape", [att, out_shape], "unblocked"), z, length, c([1], np.int64, "ax")],
                      "attention_blocked")
        value = lambda name: h.make_tensor_value_info(name, TensorProto.FLOAT, None)
        return add("If", [taken], "local_attention",
                   then_branch=h.make_graph(blocked_nodes, self.name("blocks"), [], [value(blocked)]),
                   else_branch=h.make_graph(plain_nodes, self.name("plain"), [], [value(plain)]))

    def block_rows(self, w: int) -> str:
        """(B,) bool, once per batch and window: row b's kept tokens are one run of consecutive positions, at
        least ``BLOCKED_FROM * w`` of them, each with a real token within w of it (a kept first token or a kept
        named position may be padding: one farther than w from every real token attends outside its window)."""
        from bertc.components.local_blocks import BLOCKED_FROM

        key = ("block_rows", w)
        if key not in self.caches:
            c = self.const
            # real tokens within w of each position: C[i + 2w + 1] - C[i] over the mask padded by w + 1 / w
            real = self.one("Cast", [self.mask_input_bool()], "real_i", to=7)
            cumulative = self.one("CumSum", [self.one("Pad", [real, c([0, w + 1, 0, w], np.int64, "count_pads")],
                                                      "real_padded"), c(1, np.int64, "axis1")], "real_before")
            length = self.one("Shape", [self.mask_input], "seq_len", start=1, end=2)
            hi = self.one("Slice", [cumulative, c([2 * w + 1], np.int64, "hi0"),
                                    self.one("Add", [length, c([2 * w + 1], np.int64, "hi_off")], "hi1"),
                                    c([1], np.int64, "ax")], "hi")
            lo = self.one("Slice", [cumulative, c([0], np.int64, "lo0"), length, c([1], np.int64, "ax")], "lo")
            uncovered = self.one("And", [self.keep, self.one("Not", [self.one("Greater", [
                self.one("Sub", [hi, lo], "real_in_window"), c(0, np.int64, "none")], "covered")], "uncovered")],
                "kept_uncovered")
            covered = self.one("Equal", [self.one("ReduceSum", [self.one("Cast", [uncovered], "uncovered_i", to=7),
                                                                c([1], np.int64, "axis1")], "uncovered_count",
                                                  keepdims=0), c(0, np.int64, "zero_count")], "kept_covered")
            keep = self.one("Cast", [self.keep], "keep_i", to=7)                                   # (B, S)
            before = self.one("Pad", [keep, c([0, 1, 0, 0], np.int64, "shift")], "keep_shifted")   # (B, S + 1)
            previous = self.one("Slice", [before, c([0], np.int64, "s0"), c([-1], np.int64, "s1"),
                                          c([1], np.int64, "s_ax")], "keep_before")
            run_starts = self.one("ReduceSum", [self.one("Cast", [self.one("Greater", [keep, previous], "run_start")],
                                                         "run_start_i", to=7), c([1], np.int64, "axis1")],
                                  "runs", keepdims=0)
            kept = self.one("ReduceSum", [keep, c([1], np.int64, "axis1")], "kept", keepdims=0)
            one_run = self.one("And", [self.one("Equal", [run_starts, c(1, np.int64, "one_run")], "one_run"),
                                       self.one("GreaterOrEqual", [kept, c(BLOCKED_FROM * w, np.int64, "long")],
                                                "long_enough")], "long_run")
            self.caches[key] = self.one("And", [one_run, covered], "blocks_per_row")
        return self.caches[key]

    def flat_rows(self, name: str) -> str:
        """``name`` (..., D) as (rows, D)."""
        width = self.one("Shape", [name], "width", start=-1)
        return self.one("Reshape", [name, self.one("Concat", [self.const([-1], np.int64, "m1"), width], "rows_shape",
                                                   axis=0)], "rows")

    def emit_padded(self, node) -> None:
        new = self.h.make_node(node.op_type, [self.padded_input(n) for n in node.input], list(node.output),
                               name=node.name, domain=node.domain)
        new.attribute.extend(node.attribute)
        self.nodes.append(new)
        self.report.count(self.report.padded, (node.domain + "." if node.domain else "") + node.op_type)

    def run(self):
        from onnx import helper, numpy_helper

        g = self.g
        self.classify()
        if not self.heavy:
            raise NotLowerable("padding-free: no embedding lookup found (nothing to pack)")
        light = [self.mask_shapes.get(n.name, n) for n in g.graph.node if not any(o in self.heavy for o in n.output)]
        self.nodes.extend(light)
        self.keep_rows()
        for node in g.graph.node:
            if not any(o in self.heavy for o in node.output):
                continue
            if node.op_type == "Attention" and node.domain == MS and self.emit_attention(node):
                continue
            if node.op_type == "MultiHeadAttention" and node.domain == MS and self.emit_multi_head_attention(node):
                continue
            if self.row_wise(node):
                self.emit_packed(node)
            else:
                self.emit_padded(node)
        # outputs: by their names, padded; per-token outputs hold zeros at padded positions
        for out in g.outputs:
            if out not in self.heavy:
                continue
            if out in self.packed:
                self.unpack(out)
            if self.tok(out) or out in g.declared_per_token:
                raw = out + "/unmasked"
                for n in self.nodes:
                    for i, name in enumerate(n.output):
                        if name == out:
                            n.output[i] = raw
                    for i, name in enumerate(n.input):
                        if name == out:
                            n.input[i] = raw
                rank = g.dims[out].rank if self.tok(out) else g.declared_per_token[out]
                keep = self.mask_input_bool()
                if rank > 2:
                    keep = self.one("Unsqueeze", [keep, self.const(list(range(2, rank)), np.int64, "axes")],
                                    "real_tokens")
                self.nodes.append(helper.make_node("Where", [keep, raw, self.const(0.0, np.float32, "zero_out")],
                                                   [out], name=self.name("zero_padding")))
        graph = helper.make_graph(self.nodes, g.graph.name + "_padding_free", list(g.graph.input),
                                  list(g.graph.output), list(g.graph.initializer))
        graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in self.inits)
        model = helper.make_model(graph, opset_imports=list(g.proto.opset_import))
        model.ir_version = g.proto.ir_version
        model.producer_name, model.producer_version = g.proto.producer_name, g.proto.producer_version
        model.metadata_props.extend(g.proto.metadata_props)
        return model

    def mask_shape(self, node):
        """A Shape of a per-token value that reads only its batch and sequence sizes (the masked LM's output
        shape) as the same Shape of the mask (a light value: nothing is unpacked for it); else None."""
        if node.op_type != "Shape" or not self.tok(node.input[0]):
            return None
        axes = list(range(self.g.dims[node.input[0]].rank))[self.g.attr(node, "start", 0):self.g.attr(node, "end")]
        if not axes or not set(axes) <= {0, 1}:
            return None
        return self.h.make_node("Shape", [self.mask_input], list(node.output), name=node.name, start=axes[0],
                                end=axes[-1] + 1)

    def mask_input_bool(self) -> str:
        if not hasattr(self, "_mask_bool"):
            self._mask_bool = self.one("Cast", [self.mask_input], "real", to=9)
        return self._mask_bool


def padding_free(proto, weights: Optional[list] = None, fast_path: bool = True,
                 per_sequence: Optional[int] = PER_SEQUENCE_ABOVE):
    """(the padding-free ModelProto, :class:`PackReport`) of the lowered graph ``proto`` (its large weights
    beside it in ``weights``, ``lower_model(split_weights=True)``: the new proto reads the same names, so the
    same ``weights`` go with it). ``proto`` is not modified. ``fast_path``: the result is :func:`with_fast_path`
    of ``proto`` and the packed graph (a batch without padding runs ``proto`` itself); else the packed graph
    alone. Raises :class:`~bertc.errors.NotLowerable` for a graph it cannot pack (no embedding lookup, rows read
    other than the first token or named by an input). ``per_sequence``: attention runs on each sequence's kept
    tokens when the batch's S is above it (a Loop over the batch rows, :meth:`_Rewriter.sequence_attention`: the
    CPU artifacts; 0: always), else on the padded (B, S) layout; None: always on the padded layout (one batched
    MultiHeadAttention per layer: the fp16 artifact, for CUDA)."""
    from bertc.optimize.local_attention import unblocked, windows_of

    # ModernBERT's blocked local attention in its plain form, rewritten per sequence (in blocks where a sequence
    # allows: :meth:`_Rewriter.sequence_blocks`); the fast path (a batch without padding) runs ``proto`` itself
    rewriter = _Rewriter(unblocked(proto), weights, per_sequence, windows_of(proto, weights))
    model = rewriter.run()
    rewriter.report.fast_path = fast_path
    return (with_fast_path(proto, model) if fast_path else model), rewriter.report


def with_fast_path(padded, packed):
    """One model of two graphs with the same inputs and outputs: an ``If`` on "every position of input_mask is
    real" runs ``padded`` (today's optimized graph: nothing to pack, so nothing to gain and the packing's own
    copies to lose), else ``packed``. The weights are the outer graph's initializers (or inputs), read by both
    branches; each branch's values are renamed under its own prefix (no name of a branch shadows an outer one).
    ``padded`` and ``packed`` are not modified."""
    import onnx
    from onnx import TensorProto, helper

    def produced_in(graph, top: bool = True) -> set:   # values a graph and its subgraphs (Loop bodies) make
        names = set() if top else {i.name for i in graph.input}
        for n in graph.node:
            names.update(o for o in n.output if o)
            for a in n.attribute:
                if a.type == a.GRAPH:
                    names |= produced_in(a.g, top=False)
        return names

    def rename(n, prefix, produced):   # a node of a branch, its subgraphs' names and outer reads with it
        n.input[:] = [prefix + i if i in produced else i for i in n.input]
        n.output[:] = [prefix + o if o else o for o in n.output]
        n.name = prefix + n.name
        for a in n.attribute:
            if a.type == a.GRAPH:
                for v in list(a.g.input) + list(a.g.output):
                    v.name = prefix + v.name if v.name in produced else v.name
                for m in a.g.node:
                    rename(m, prefix, produced)

    def branch(model, prefix):
        produced = produced_in(model.graph)
        nodes = []
        for n in model.graph.node:
            m = onnx.NodeProto()
            m.CopyFrom(n)
            rename(m, prefix, produced)
            nodes.append(m)
        outputs = []
        for o in model.graph.output:
            v = onnx.ValueInfoProto()
            v.CopyFrom(o)
            v.name = prefix + o.name
            outputs.append(v)
        return helper.make_graph(nodes, prefix.strip("/"), [], outputs)

    inits: dict = {}
    for t in list(padded.graph.initializer) + list(packed.graph.initializer):
        inits.setdefault(t.name, t)
    mask = next(i for i in packed.graph.input if i.name == "input_mask").name
    nodes = [helper.make_node("Cast", [mask], ["padding_free/mask_bool"], name="padding_free/mask_bool", to=9),
             helper.make_node("Cast", ["padding_free/mask_bool"], ["padding_free/mask_real"], name="padding_free/real",
                              to=6),
             helper.make_node("ReduceMin", ["padding_free/mask_real"], ["padding_free/min_real"], keepdims=0,
                              name="padding_free/min_real"),
             # >= 1: the minimum of an empty mask (an empty batch, empty sequences) is the largest int32
             helper.make_node("GreaterOrEqual", ["padding_free/min_real", "padding_free/one"],
                              ["padding_free/no_padding"], name="padding_free/no_padding"),
             helper.make_node("If", ["padding_free/no_padding"], [o.name for o in packed.graph.output],
                              name="padding_free/if_no_padding", then_branch=branch(padded, "padded/"),
                              else_branch=branch(packed, "packed/"))]
    graph = helper.make_graph(nodes, packed.graph.name, list(packed.graph.input), list(packed.graph.output),
                              list(inits.values()) + [helper.make_tensor("padding_free/one", TensorProto.INT32, [], [1])])
    opsets: dict = {}
    for o in list(padded.opset_import) + list(packed.opset_import):
        opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = packed.ir_version
    model.producer_name, model.producer_version = packed.producer_name, packed.producer_version
    model.metadata_props.extend(packed.metadata_props)
    model.metadata_props.append(onnx.StringStringEntryProto(key="bertc.padded_positions", value=PADDED_POSITIONS))
    return model


# --- the artifacts ----------------------------------------------------------------------------------

def max_abs_vs_keras(session, built, inputs: dict) -> float:
    """Max abs difference to Keras of a padding-free session: Keras' values at real tokens, 0 at padded ones."""
    from bertc.components.common import tf
    from bertc.parity import expected_at_padding

    ref = built.model({k: tf.constant(v.astype(np.int32)) for k, v in inputs.items()}, training=False)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    worst = 0.0
    for info in built.signature.outputs:
        want = expected_at_padding(np.asarray(ref[info.name], np.float32), info, inputs["input_mask"], PADDED_POSITIONS)
        worst = max(worst, float(np.max(np.abs(want - got[info.name].astype(np.float32)))))
    return worst


def packed_artifacts(built, proto, weights: Optional[list], out, variants, input_dtype: str, opset: int,
                     check_inputs: dict, stage, int8_plan: Optional[tuple] = None,
                     fp32: Optional[tuple] = None) -> tuple[dict, dict]:
    """The padding-free artifacts asked for in ``variants`` (:data:`PACKED_VARIANTS`) of the optimized graph
    ``proto`` (its weights beside it): ``(artifacts, section)``, the report entries and the fusion report's
    ``padding_free`` section (what was packed, or why nothing was: then no artifact). Each is
    :func:`with_fast_path` of today's graph and the packed one after the same conversion (int8: both quantized;
    fp16: both converted), so that a batch without padding runs exactly today's artifact. ``stage``: the optimize
    stage's module (:mod:`bertc.optimize.onnx_artifacts`: its report entries, int8 options, fp16 settings).
    ``int8_plan``: how the int8 was tuned (:meth:`bertc.optimize.int8_tuning.Tuned.plan`: the smoothed fp32 graph
    and weights, the nodes kept fp32 and those in block-wise int8); the padding-free int8 is then that graph,
    packed, quantized with the same choices (matched by the weights the nodes read: packing renames them).
    ``fp32``: (proto, weights) of the fp32 optimized artifact where it differs from ``proto`` (its packed
    projections computed part by part, :mod:`bertc.optimize.projections`; its residual biases folded,
    :mod:`bertc.optimize.bias_folding`): the fp32 padding-free artifact packs that one."""
    import time
    from pathlib import Path

    from bertc.errors import ExportError
    from bertc.export.onnx import check_graph, declared_weights, write_onnx
    from bertc.optimize.local_attention import unblocked_with
    from bertc.optimize.quantize import quantize_dynamic_int8
    from bertc.optimize.runtime import ort_session

    out = Path(out)
    wanted = [v for v in PACKED_VARIANTS if v in variants]
    t0 = time.perf_counter()
    try:
        packed, report = padding_free(proto, weights, fast_path=False)
    except NotLowerable as exc:
        return {}, {"skipped": f"no padding-free artifact: {exc}", "variants": wanted}
    section = {**report.to_json(), "variants": wanted}
    extra = {"padded_positions": PADDED_POSITIONS}
    artifacts = {}

    def write(model, arrays, variant, precision, providers, **more):
        path = out / PACKED_FILES[variant]
        check_graph(model, declared_weights(arrays), f"the padding-free ONNX graph ({variant}) fails onnx.checker")
        nbytes, external = write_onnx(model, arrays, path)
        try:
            session = ort_session(path)
        except Exception as exc:
            path.unlink(missing_ok=True)
            raise ExportError(f"{path.name} does not load in ONNX Runtime (CPU, ORT_ENABLE_ALL): {exc}") from exc
        sample = max_abs_vs_keras(session, built, check_inputs)
        del session
        artifacts[variant] = stage._artifact(path, nbytes, precision, input_dtype, providers, _node_count(model), opset,
                                       external_data=external, **extra, **more,
                                       seconds=round(time.perf_counter() - t0, 3))
        return sample

    if "onnx_packed" in wanted:
        fast, fast_weights = fp32 if fp32 is not None else (proto, weights)
        fast_packed = packed if fp32 is None else padding_free(fast, fast_weights, fast_path=False)[0]
        section["self_check_max_abs"] = write(with_fast_path(fast, fast_packed), fast_weights or [], "onnx_packed",
                                              "fp32", ["CPUExecutionProvider", "CUDAExecutionProvider"])
    if "onnx_packed_int8" in wanted:
        tuning = None
        source, source_weights, source_packed, keep, blocks, rows = proto, weights, packed, [], [], []
        paired = bool(int8_plan is not None and int8_plan[4])   # the tuning's pair-limited 8-bit weights
        if int8_plan is not None and (int8_plan[2] or int8_plan[3] or int8_plan[5] or int8_plan[0] is not proto):
            try:   # the graph the int8 tuning quantized (smoothed, when it was), packed
                smoothed = int8_plan[0] is not proto
                source_packed = padding_free(*int8_plan[:2], fast_path=False)[0] if smoothed else packed
                source, source_weights, keep, blocks = int8_plan[:4]
                rows = int8_plan[5]
                tuning = {"smoothed": smoothed}
            except NotLowerable as exc:   # plain int8 of the packed graph; parity judges it
                tuning = {"skipped": f"the tuned (smoothed) graph cannot be packed: {exc}"}
        try:
            today = quantize_dynamic_int8(source, source_weights, keep, blockwise=blocks, paired=paired, rowwise=rows)
            ours = quantize_dynamic_int8(source_packed, source_weights, _same_weights(source, source_packed, keep),
                                         blockwise=_same_weights(source, source_packed, blocks), paired=paired,
                                         rowwise=_same_weights(source, source_packed, rows))
            if tuning is not None and "skipped" not in tuning:
                tuning.update(kept_fp32=ours.kept_fp32, block_wise_int8=ours.blockwise, row_wise_int8=ours.rowwise)
        except Exception as exc:
            raise ExportError(f"int8 quantization of the padding-free graph failed: {type(exc).__name__}: {exc}") from exc
        arrays = dict((today.weights or []) + (ours.weights or []))   # the same names hold the same arrays
        quantization = {"method": "dynamic", "weight_type": "QInt8", **stage.INT8_OPTIONS, **ours.weight_options(),
                        "operators": stage.int8_operators(ours, "QAttention (no padding)"),
                        "quantized": len(ours.quantized), "kept_fp32": ours.kept_fp32}
        if tuning is not None:   # the choices of onnx_int8's tuning (its report section says why)
            quantization["as_tuned"] = tuning
        sample = write(with_fast_path(today.proto, ours.proto), list(arrays.items()), "onnx_packed_int8", "int8",
                       ["CPUExecutionProvider"], quantization=quantization)
        artifacts["onnx_packed_int8"]["sample_max_abs"] = sample
    if "onnx_packed_fp16" in wanted:   # for CUDA: one batched attention per layer (no per-sequence Loop)
        batched = padding_free(proto, weights, fast_path=False, per_sequence=None)[0]
        plain, plain_weights = unblocked_with(proto, weights)
        artifacts["onnx_packed_fp16"] = {**_fp16(plain, batched, list(plain_weights or []),
                                                 out / PACKED_FILES["onnx_packed_fp16"], input_dtype, opset, built,
                                                 check_inputs, stage), "attention": "on the padded layout", **extra}
    return artifacts, section


def _same_weights(source, packed, names) -> list:
    """The nodes of ``packed`` that read the weights the nodes ``names`` of ``source`` read (the padding-free
    pass renames what it packs: a MatMul gets ``/packed``, a fused Attention becomes a QKV MatMul)."""
    names = set(names)
    read = {n.input[1] for n in source.graph.node if n.name in names and len(n.input) > 1}
    return [n.name for n in packed.graph.node if len(n.input) > 1 and n.input[1] in read
            and n.op_type in ("MatMul", "Attention")]


def _node_count(model) -> int:
    """Nodes of the graph and of its subgraphs (If branches, Loop bodies): the report's ``nodes``."""
    from bertc.onnx_graph import graph_node_count

    return graph_node_count(model.graph)


def _copy(proto):
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


def _fp16(today, packed, weights: list, dst, input_dtype: str, opset: int, built, check_inputs: dict, stage) -> dict:
    """The fp16 conversion (as ``onnx_fp16`` of the optimized graph: inputs and outputs kept, every op in fp16
    for the CUDA provider) of both graphs, combined by :func:`with_fast_path`; whether ORT's CPU provider runs
    it and how close it is."""
    import os
    import time

    import onnx
    from bertc.errors import ExportError
    from bertc.optimize.half import to_fp16
    from bertc.optimize.runtime import ort_session

    t0 = time.perf_counter()
    keep = stage.FP16_KEEP_FP32_OPS
    try:
        converted = [to_fp16(stage._attach(_copy(m), list(weights)), keep) for m in (today, packed)]
        halves, kept = [h for h, _ in converted], sum(k for _, k in converted)
        del converted
    except Exception as exc:
        raise ExportError(f"fp16 conversion of the padding-free graph failed: {type(exc).__name__}: {exc}") from exc
    # (residual norms: Sum + LayerNormalization, as onnx_fp16's: fp32 statistics on CUDA)
    half = with_fast_path(*halves)
    del halves
    tmp = str(dst) + ".partial"
    onnx.save_model(half, tmp)
    os.replace(tmp, dst)
    try:
        cpu = {"runs": True, "sample_max_abs": max_abs_vs_keras(ort_session(dst), built, check_inputs),
               "note": "runs through ORT's fp32 fallback for ops without fp16 CPU kernels (no speed-up on CPU)"}
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    except Exception as exc:
        message = str(exc)
        if "NOT_IMPLEMENTED" not in message and "Could not find an implementation" not in message:
            raise ExportError(f"{dst.name} is not a valid ONNX Runtime graph: {message}") from exc
        cpu, providers = {"runs": False, "why": message.split("\n")[0]}, ["CUDAExecutionProvider"]
    return stage._artifact(dst, dst.stat().st_size, "fp16", input_dtype, providers, _node_count(half), opset,
                           keep_fp32_ops=keep, kept_fp32_nodes=kept, cpu=cpu, seconds=round(time.perf_counter() - t0, 3))
