"""Candidate int8 graphs run from where they differ from the all-int8 graph (the sensitivity pass's measurements).

The sensitivity pass (:mod:`bertc.optimize.sensitivity`) measures dozens of candidates that differ from one
int8 graph, the *base*, in a few MatMuls: a candidate with layer 7's feedforward in fp32 computes layers 0-6
exactly as the base does. :class:`PrefixRuns` keeps *checkpoints*: where a group of candidates (a layer's)
begins to differ from the base, the nodes before that point (the *prefix*) and the tensors of the prefix that
the rest reads (the *frontier*: the layer's input, the mask's and positions' per-batch tensors). It runs the
base once per calibration case with every frontier tensor as an extra output, and a candidate then runs from
the latest checkpoint whose prefix it shares, fed the frontier tensors of the same case.

A node is shared with the base when the base has a node with the same outputs, the same serialized proto
(operator, attributes, input names, subgraphs) and the same initializers (the same arrays: the tuning
quantizes each weight once per form, :func:`bertc.optimize.quantize.quantize_dynamic_int8` ``memo``), all of
whose inputs (those its subgraphs read from outside included) are graph inputs, initializers or outputs of
shared nodes. ONNX Runtime then computes the rest from the same values with the same kernels, so a
candidate's outputs are those of its whole graph, bit for bit (tests/test_int8.py checks every candidate of
a fixture; the plan cache's replay, which measures the whole graph, depends on it).

The frontier tensors of every case are held for the whole pass: at most ``budget`` bytes (the build's weight
bytes), else the pass runs whole graphs as before.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from bertc.optimize.protos import outer_inputs


def _values(result) -> dict:
    """name -> initializer of an int8 graph: a TensorProto (in the proto) or an array (beside it)."""
    values = {t.name: t for t in result.proto.graph.initializer}
    values.update((name, array) for name, array in (result.weights or []))
    return values


def _same_value(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        # distinct arrays are compared when small (scales, zero points); a large one is shared only as the
        # same array (a quantized weight from the tuning's memo, an fp32 weight handed over as it is)
        return a.dtype == b.dtype and a.shape == b.shape and a.size <= 65536 and np.array_equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return False
    return a.SerializeToString() == b.SerializeToString()


class PrefixRuns:
    """Runs candidate int8 graphs from their first difference with ``base`` (an
    :class:`~bertc.optimize.quantize.Int8Result`): see the module docstring. ``session_of(proto, weights)``
    opens a session; ``feeds(session, inputs)``: a case's inputs as that session takes them."""

    def __init__(self, base, cases: list, session_of: Callable, feeds: Callable, budget: int):
        self.base, self.cases = base, cases
        self._session_of, self._feeds, self.budget = session_of, feeds, budget
        self._producer = {o: n for n in base.proto.graph.node for o in n.output}
        self._node_bytes = {n.output[0]: n.SerializeToString() for n in base.proto.graph.node if n.output}
        self._base_values = _values(base)
        self._inputs = {i.name for i in base.proto.graph.input}
        self.checkpoints: list = []   # [(the output names of a prefix of shared nodes, its frontier)], in order
        self.cache: dict = {}         # id(case inputs) -> {frontier tensor: its value in the base}
        self.held: set = set()        # the frontier tensors in the cache
        self.suffix_runs = 0

    def shared(self, result) -> set:
        """The output names of ``result``'s nodes that are shared with the base (module docstring)."""
        values = _values(result)
        shared = set(self._inputs)
        for node in result.proto.graph.node:
            b = self._producer.get(node.output[0]) if node.output else None
            if (b is not None and list(b.output) == list(node.output)
                    and self._node_bytes[b.output[0]] == node.SerializeToString()
                    and all(n in shared or (n in values and n in self._base_values
                                            and _same_value(values[n], self._base_values[n]))
                            for n in outer_inputs(node))):
                shared.update(node.output)
        return shared - self._inputs

    def _cut(self, result, prefix: set) -> tuple[list, list]:
        """(the nodes of ``result`` after ``prefix``, the tensors of ``prefix`` they read or that are outputs)."""
        suffix = [node for node in result.proto.graph.node if not node.output or node.output[0] not in prefix]
        frontier = []
        for name in [n for node in suffix for n in outer_inputs(node)] + [o.name for o in result.proto.graph.output]:
            if name in prefix and name not in frontier:
                frontier.append(name)
        return suffix, frontier

    def checkpoint(self, result) -> None:
        """Add the point where ``result`` starts to differ from the base as one the candidates may run from: the
        nodes before its first node that is not shared (in graph order, so a sibling branch after it, shared or
        not, stays out: another candidate may change that one)."""
        shared, prefix = self.shared(result), set()
        for node in result.proto.graph.node:
            if not node.output or node.output[0] not in shared:
                break
            prefix.update(node.output)
        prefix -= self._constants(result)
        if prefix:
            prefix = self._shrink(result, prefix)
            self.checkpoints.append((prefix, self._cut(result, prefix)[1]))

    @staticmethod
    def _constants(result) -> set:
        """The tensors ``result`` computes from initializers alone. They stay out of every frontier: fed as
        graph inputs they would no longer be constants to ONNX Runtime, which folds them at load and packs a
        MatMul's constant weight ahead (another summation order than packing it on each call)."""
        constant = set(_values(result))
        for node in result.proto.graph.node:
            if all(n in constant for n in outer_inputs(node)):
                constant.update(o for o in node.output if o)
        return constant

    def _shrink(self, result, prefix: set) -> set:
        """``prefix`` less its last nodes whose own inputs are in the frontier already (a smoothing's ``Mul`` of
        the layer norm that the residual reads as well): the suffix computes them again, and the frontier
        holds one tensor fewer for every case."""
        from collections import Counter

        nodes = [n for n in result.proto.graph.node if n.output and n.output[0] in prefix]
        reads = Counter(name for node in nodes for name in outer_inputs(node))
        frontier = set(self._cut(result, prefix)[1])
        for node in reversed(nodes):
            if any(reads[o] for o in node.output) or not all(o in frontier for o in node.output if o):
                continue   # another prefix node reads it, or it is not all frontier
            inputs = [n for n in outer_inputs(node) if n in prefix]
            if not all(n in frontier for n in inputs):
                continue
            prefix = prefix - set(node.output)
            frontier -= set(node.output)
            for name in outer_inputs(node):
                reads[name] -= 1
        return prefix

    def hold(self) -> bool:
        """Run the base once per case, keeping the tensors of every checkpoint's frontier; False (and nothing
        held) when they would take more than the budget."""
        from onnx import helper

        from bertc.optimize.protos import shell

        wanted = list(dict.fromkeys(n for _, frontier in self.checkpoints for n in frontier))
        if not wanted:
            return False
        proto = shell(self.base.proto)
        proto.graph.initializer.extend(self.base.proto.graph.initializer)
        outputs = {o.name for o in proto.graph.output}
        # untyped: ONNX Runtime infers each one's type (the frontier holds floats, and integer mask tensors)
        proto.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in wanted if n not in outputs)
        session = self._session_of(proto, self.base.weights)

        def tokens(case) -> int:
            return max(np.asarray(v).size for v in case.inputs.values())

        # the largest case first: when it alone, scaled to every case's tokens, is over the budget, stop there
        cases = sorted(self.cases, key=tokens, reverse=True)
        total, held = sum(tokens(c) for c in cases), 0
        for i, case in enumerate(cases):
            got = dict(zip(wanted, session.run(wanted, self._feeds(session, case.inputs))))
            held += sum(np.asarray(a).nbytes for a in got.values())
            if held > self.budget or (i == 0 and held * total > self.budget * tokens(case)):
                self.cache.clear()
                return False
            self.cache[id(case.inputs)] = got
        self.held = set(wanted)
        return True

    def runner(self, result) -> Optional[Callable]:
        """inputs -> outputs of ``result``'s graph, computed from the latest checkpoint whose prefix it shares;
        None: run the whole graph (no such checkpoint)."""
        from bertc.optimize.protos import shell

        if not self.held:
            return None
        shared = self.shared(result)
        for prefix, _ in reversed(self.checkpoints):
            if prefix <= shared:
                suffix, frontier = self._cut(result, prefix)
                if self.held.issuperset(frontier):
                    break
        else:
            return None
        outputs = [o.name for o in result.proto.graph.output]
        proto = shell(result.proto)
        kept_info = [v for v in proto.graph.value_info if v.name not in frontier]
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(kept_info)
        del proto.graph.node[:]
        proto.graph.node.extend(suffix)
        reads = {n for node in suffix for n in outer_inputs(node)}
        proto.graph.initializer.extend(t for t in result.proto.graph.initializer if t.name in reads)
        weights = [(n, a) for n, a in (result.weights or []) if n in reads]
        del proto.graph.input[:]
        proto.graph.input.extend(i for i in result.proto.graph.input if i.name in reads)
        proto.graph.input.extend(self._input_of(n) for n in frontier if n in reads)
        frontier_set = set(frontier)
        del proto.graph.output[:]
        proto.graph.output.extend(o for o in result.proto.graph.output if o.name not in frontier_set)
        computed = [o.name for o in proto.graph.output]
        session = self._session_of(proto, weights) if computed else None
        names = {i.name for i in session.get_inputs()} if computed else set()
        self.suffix_runs += 1

        def run(inputs):
            held = self.cache[id(inputs)]
            got = {}
            if computed:
                feeds = {k: v for k, v in self._feeds(session, inputs).items() if k in names}
                feeds.update((n, held[n]) for n in frontier if n in names)
                got = dict(zip(computed, session.run(computed, feeds)))
            return {n: got[n] if n in got else held[n] for n in outputs}

        return run

    def _input_of(self, name: str):
        """A graph input for the frontier tensor ``name``: its type and rank as held, each dimension fixed
        where every case has the same one (the hidden size), else symbolic."""
        from onnx import helper

        held = [np.asarray(per_case[name]) for per_case in self.cache.values()]
        dims = [d if all(h.shape[i] == d for h in held) else f"{name}_dim{i}" for i, d in enumerate(held[0].shape)]
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(held[0].dtype), dims)
