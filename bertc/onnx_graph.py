"""A small ONNX graph builder shared by every ONNX lowering.

Emitters never touch protobuf: they ask the builder for a weight (an initializer
named by its Keras path, added once however often it is used), a constant, or a
node, and get value names back. Names are deterministic (scope + op + counter),
so the same spec and weights give the same bytes.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

import numpy as np

MS_DOMAIN = "com.microsoft"
MS_OPSET = 1
# the oldest onnxruntime that computes bertc's fused graphs right: 1.16 to 1.20 load them and give wrong scores on
# padded batches (MultiHeadAttention with a 2-D key-padding mask; measured 1e-3 to 3e-2 on logits by a tester), so
# the files say so in their metadata (metadata_props "bertc.min_onnxruntime"), and bertc run refuses older ones
MIN_ONNXRUNTIME = "1.21"
# a scope segment: the nodes built under it stay fp32 in the fp16 artifacts (bertc.optimize.half)
KEEP_FP32 = "keep_fp32"

Value = str  # the name of a value in the graph


@dataclass(frozen=True)
class Residual:
    """``main + skip (+ bias)``, not yet added: a following layer norm fuses it into one
    residual layer norm; anything else materializes it (see the lowering context's ``value``)."""

    main: Value
    skip: Value
    bias: Optional[Value] = None


class GraphBuilder:
    def __init__(self, name: str):
        self.name = name
        self.nodes: list = []
        self.initializers: dict = {}  # name -> C-contiguous numpy array (insertion ordered)
        self.inputs: list = []
        self.outputs: list = []
        self._scope: list[str] = []
        self._used: Counter = Counter()
        self._alias: dict[str, str] = {}  # value -> graph-level name it was renamed to

    # --- names ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(self, name: str):
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def fresh(self, hint: str) -> str:
        base = "/".join(self._scope + [hint])
        self._used[base] += 1
        n = self._used[base]
        return base if n == 1 else f"{base}_{n}"

    # --- values --------------------------------------------------------------------------------
    def initializer(self, name: str, array) -> Value:
        """An initializer named ``name`` (e.g. a Keras weight path); added once, later calls reuse it."""
        if name not in self.initializers:
            self.initializers[name] = np.require(array, requirements="C")
        return name

    def weight(self, variable) -> Value:
        """A Keras variable as an fp32 initializer named by its path (``layer_0/attention/query/kernel``)."""
        return self.initializer(variable.path, np.asarray(variable.numpy(), dtype=np.float32))

    def const(self, value, dtype, hint: str = "const") -> Value:
        array = np.asarray(value, dtype=dtype)
        return self.initializer(self.fresh(hint), array)

    def ints(self, values: Sequence[int], hint: str = "shape") -> Value:
        return self.const(list(values), np.int64, hint)

    def scalar(self, value: float, hint: str = "scalar") -> Value:
        return self.const(value, np.float32, hint)

    # --- nodes ---------------------------------------------------------------------------------
    def node(self, op: str, inputs: Iterable[Optional[Value]], outputs: Union[int, Sequence[Optional[str]]] = 1,
             domain: str = "", hint: Optional[str] = None, **attrs):
        """Append ``op`` and return its output name (or a list of names when ``outputs`` > 1).

        ``None`` in ``inputs`` is an omitted optional input; ``outputs`` may list hints, ``None``
        for an omitted optional output.
        """
        from onnx import helper

        name = self.fresh(hint or op)
        hints = [f"out{k}" for k in range(outputs)] if isinstance(outputs, int) else list(outputs)
        out_names = [f"{name}/{h}" if h is not None else "" for h in hints]
        self.nodes.append(helper.make_node(op, [i or "" for i in inputs], out_names, name=name, domain=domain,
                                           **{k: v for k, v in attrs.items() if v is not None}))
        return out_names[0] if isinstance(outputs, int) and outputs == 1 else out_names

    def ms(self, op: str, inputs, outputs=1, hint=None, **attrs):
        """A com.microsoft contrib operator."""
        return self.node(op, inputs, outputs, domain=MS_DOMAIN, hint=hint, **attrs)

    @contextlib.contextmanager
    def branch(self):
        """Collect the nodes emitted inside the ``with`` into the yielded list (a subgraph's body, for
        :meth:`if_node`) instead of the graph. Initializers still go to the graph (outer scope), and a value
        memoized by the lowering must be made before the branch: one made inside is invisible outside it."""
        outer, body = self.nodes, []
        self.nodes = body
        try:
            yield body
        finally:
            self.nodes = outer

    def if_node(self, cond: Value, then: tuple, otherwise: tuple, hint: str = "If") -> Value:
        """An ``If`` on ``cond`` (a one-element bool) whose branches are ``(nodes, output)`` pairs from
        :meth:`branch`; both outputs fp32. Returns the If's output."""
        from onnx import TensorProto, helper

        name = self.fresh(hint)
        out = f"{name}/out0"
        graphs = {}
        for key, (nodes, value) in (("then_branch", then), ("else_branch", otherwise)):
            graphs[key] = helper.make_graph(nodes, f"{name}/{key}", [],
                                            [helper.make_tensor_value_info(value, TensorProto.FLOAT, None)])
        self.nodes.append(helper.make_node("If", [cond], [out], name=name, **graphs))
        return out

    def rename(self, value: Value, name: str) -> None:
        """Give the value ``value`` the graph-level name ``name`` (for the model's outputs)."""
        self._alias[value] = name
        for node in _with_subgraph_nodes(self.nodes):
            for k, out in enumerate(node.output):
                if out == value:
                    node.output[k] = name
            for k, inp in enumerate(node.input):
                if inp == value:
                    node.input[k] = name

    # --- interface -----------------------------------------------------------------------------
    def add_input(self, name: str, elem_type: int, dims: Sequence) -> Value:
        from onnx import helper

        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(dims)))
        return name

    def add_output(self, value: Value, name: str, elem_type: int, dims: Sequence) -> None:
        """Expose ``value`` as graph output ``name``; an Identity is inserted only if ``value``
        is a graph input, an initializer, or already an output."""
        from onnx import helper

        while value in self._alias:
            value = self._alias[value]
        taken = {i.name for i in self.inputs} | set(self.initializers) | {o.name for o in self.outputs}
        producers = {out for node in self.nodes for out in node.output}
        if value in taken or value not in producers:
            value = self.node("Identity", [value], hint=f"{name}_identity")
        self.rename(value, name)
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(dims)))

    def model(self, opset: int, producer: str = "bertc", split_above: Optional[int] = None):
        """The ModelProto. With ``split_above`` (bytes), initializers larger than that are left out of the
        proto and returned beside it, ``(proto, [(name, array), ...])``, for a streaming writer
        (:func:`bertc.export.onnx.write_onnx`): the weights are then never serialized in memory.
        The builder gives its initializers away: call model() once."""
        from onnx import helper, numpy_helper

        from bertc import __version__

        nodes = live_nodes(self.nodes, [o.name for o in self.outputs])
        used = {name for node in nodes for name in node.input} | {n for node in nodes for n in _subgraph_reads(node)}
        graph = helper.make_graph(nodes, self.name, self.inputs, self.outputs)
        # Moved one tensor at a time (protobuf copies on append), so the weights are never held twice. A
        # lowering may fetch a weight it then folds away (ReZero's pre-scaled output bias): it is dropped.
        weights = []
        for name in list(self.initializers):
            array = self.initializers.pop(name)
            if name not in used:
                continue
            if split_above is not None and array.nbytes > split_above:
                weights.append((name, array))
            else:
                graph.initializer.append(numpy_helper.from_array(array, name=name))
            del array
        imports = [helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, MS_OPSET)]
        model = helper.make_model(graph, opset_imports=imports, producer_name=producer)
        model.ir_version = min(model.ir_version, 9)  # loads in onnxruntime >= 1.16, but see MIN_ONNXRUNTIME
        model.producer_version = __version__
        helper.set_model_props(model, {"bertc.min_onnxruntime": MIN_ONNXRUNTIME})   # carried to every variant
        return model if split_above is None else (model, weights)

    def op_counts(self) -> dict[str, int]:
        """Operators by type (``domain.op`` outside the default domain). An ``If`` counts itself and, per type,
        the larger count of its two branches (what one run executes at most): a local attention that runs in
        blocks or plainly is one MultiHeadAttention."""
        return dict(sorted(_op_counts(self.nodes).items()))


def _op_counts(nodes: Sequence) -> Counter:
    counts: Counter = Counter()
    for n in nodes:
        counts[n.op_type if not n.domain else f"{n.domain}.{n.op_type}"] += 1
        branches = [_op_counts(a.g.node) for a in n.attribute if a.HasField("g")]
        if branches:
            counts.update({op: max(b.get(op, 0) for b in branches) for op in set().union(*branches)})
    return counts


def graph_op_counts(graph, per_run: bool = False) -> dict[str, int]:
    """Every node of ``graph`` (a GraphProto: what a file holds) by operator type (``domain.op`` outside the
    default domain), the nodes of its subgraphs included (both branches of an ``If``, a ``Loop``'s body): the
    counts sum to :func:`graph_node_count`. ``per_run``: what one run executes instead, an ``If`` counting its
    larger branch (as :meth:`GraphBuilder.op_counts`)."""
    if per_run:
        return dict(sorted(_op_counts(graph.node).items()))
    counts = Counter(n.op_type if not n.domain else f"{n.domain}.{n.op_type}" for n in _with_subgraph_nodes(graph.node))
    return dict(sorted(counts.items()))


def graph_node_count(graph) -> int:
    """The nodes of ``graph`` (a GraphProto), those of its subgraphs (``If`` branches, ``Loop`` bodies) included."""
    return len(_with_subgraph_nodes(graph.node))


def _with_subgraph_nodes(nodes: Sequence) -> list:
    """``nodes`` and, recursively, the nodes of their subgraphs (an ``If``'s branches, a ``Loop``'s body)."""
    out = []
    for node in nodes:
        out.append(node)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                out.extend(_with_subgraph_nodes(sub.node))
    return out


def _subgraph_reads(node) -> set:
    """The values the subgraphs of ``node`` (an ``If``'s branches, a ``Loop``'s body) read, outer-scope ones
    included (a superset: their own intermediate values too, harmless for liveness)."""
    names: set = set()
    for attr in node.attribute:
        graphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
        for sub in graphs:
            for inner in sub.node:
                names.update(i for i in inner.input if i)
                names |= _subgraph_reads(inner)
    return names


def live_nodes(nodes: Sequence, outputs: Sequence[str]) -> list:
    """``nodes`` (in graph order) without those whose outputs nothing reads: a lowering may make a value that
    a later choice made unnecessary (the disentangled scheme's relative embeddings, once the attentions fold
    their projections into constants); ORT would compute it on every run."""
    live, keep = set(outputs), []
    for node in reversed(list(nodes)):
        if any(o in live for o in node.output if o):
            keep.append(node)
            live.update(i for i in node.input if i)
            live |= _subgraph_reads(node)
    return keep[::-1]


def all_graphs(graph):
    """``graph`` and every subgraph below it (an If's branches, a Loop's body), outermost first."""
    from onnx import AttributeProto

    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == AttributeProto.GRAPH:
                yield from all_graphs(a.g)
            elif a.type == AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from all_graphs(sub)
