"""A canonical form for tf2onnx graphs: the same model gives the same bytes.

tf2onnx orders nodes, numbers generated names (``Shape__49``) and picks which name a
deduplicated constant keeps by iterating Python sets and dicts, so two exports of the same
model differ in their bytes (not in what they compute). :func:`canonicalize` rewrites a graph
into a form that depends only on its structure:

- every node gets a structural key: a hash of its op type, domain, attributes and the keys
  of its inputs (graph inputs and weights by name, other constants by content);
- nodes are ordered topologically, ties broken by key;
- nodes and their outputs are named by op type and canonical position (``MatMul_117``,
  ``MatMul_117:0``): tf2onnx's own names are not stable (a node merged from several keeps
  whichever TF name came first); constants that are not weights are named by a hash of their
  content; symbolic dimensions other than ``batch`` / ``sequence`` are renumbered.

Names that mean something (the model's inputs and outputs, weights named by their Keras path)
are kept. Run it before the weight initializers are attached (it copies the initializers it reorders).
"""
from __future__ import annotations

import hashlib
import heapq

_KEPT_DIMS = {"batch", "sequence"}


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def canonicalize(graph, keep: set[str]) -> None:
    """Rewrite ``graph`` (an ``onnx.GraphProto``) in place into its canonical form; ``keep``: value names
    that are not renamed (inputs, outputs, weights)."""
    init_by_name = {i.name: i for i in graph.initializer}
    constant_key = {}
    for name, init in init_by_name.items():
        if name in keep:
            constant_key[name] = "w:" + name
        else:
            body = init.__class__()
            body.CopyFrom(init)
            body.name = ""
            constant_key[name] = "c:" + _digest(body.SerializeToString(deterministic=True))

    value_key: dict[str, str] = {n: "n:" + n for n in keep}
    value_key.update(constant_key)
    value_key[""] = ""
    node_keys = []
    for node in graph.node:  # ONNX nodes are already topologically sorted
        attrs = sorted((a.name, a.SerializeToString(deterministic=True)) for a in node.attribute)
        key = _digest(node.op_type, node.domain, *(f"{n}={v.hex()}" for n, v in attrs),
                      *(value_key.get(i, "?" + i) for i in node.input))
        node_keys.append(key)
        for j, out in enumerate(node.output):
            if out and out not in keep:
                value_key[out] = f"{key}:{j}"

    order = _topological_order(graph, node_keys)
    nodes = [graph.node[i] for i in order]

    renames: dict[str, str] = {}
    used: set[str] = set(keep)
    counters: dict[str, int] = {}

    def fresh(stem: str) -> str:
        n = counters.get(stem, 0)
        name = stem if n == 0 else f"{stem}__{n}"
        while name in used:
            n += 1
            name = f"{stem}__{n}"
        counters[stem] = n + 1
        used.add(name)
        return name

    for name in sorted(init_by_name, key=lambda n: constant_key[n]):
        if name not in keep:
            renames[name] = fresh("const_" + constant_key[name][2:14])
    node_names = []
    for i, node in enumerate(nodes):
        # tf2onnx's merged nodes keep whichever TF name it met first, so TF names are not stable: nodes are
        # named by op type and canonical position.
        name = fresh(f"{node.op_type}_{i}")
        node_names.append(name)
        for j, out in enumerate(node.output):
            if out and out not in keep and out not in renames:
                renames[out] = fresh(f"{name}:{j}")

    copies = [n.__class__() for n in nodes]
    for copy, node, name in zip(copies, nodes, node_names):
        copy.CopyFrom(node)
        copy.name = name
        for k, n in enumerate(copy.input):
            copy.input[k] = renames.get(n, n)
        for k, n in enumerate(copy.output):
            copy.output[k] = renames.get(n, n)
    del graph.node[:]
    graph.node.extend(copies)

    inits = sorted(graph.initializer, key=lambda i: renames.get(i.name, i.name))
    for init in inits:
        init.name = renames.get(init.name, init.name)
    _reorder(graph.initializer, inits)

    infos = [v for v in graph.value_info]
    for v in infos:
        v.name = renames.get(v.name, v.name)
    _reorder(graph.value_info, sorted(infos, key=lambda v: v.name))
    _renumber_dims(graph)


def _reorder(repeated, items) -> None:
    """Replace the messages of ``repeated`` by ``items`` in that order (copies: call it before the large
    weight initializers are added)."""
    copies = []
    for m in items:
        c = m.__class__()
        c.CopyFrom(m)
        copies.append(c)
    del repeated[:]
    repeated.extend(copies)


def _topological_order(graph, node_keys: list[str]) -> list[int]:
    producer = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            producer[out] = i
    deps = [set() for _ in graph.node]
    users: list[list[int]] = [[] for _ in graph.node]
    for i, node in enumerate(graph.node):
        for n in node.input:
            p = producer.get(n)
            if p is not None and p != i and p not in deps[i]:
                deps[i].add(p)
                users[p].append(i)
    pending = [len(d) for d in deps]
    ready = [(node_keys[i], i) for i in range(len(graph.node)) if pending[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, (node_keys[u], u))
    if len(order) != len(graph.node):
        raise ValueError("the ONNX graph has a cycle")
    return order


def _renumber_dims(graph) -> None:
    mapping: dict[str, str] = {}
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if not value.type.HasField("tensor_type"):
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param not in _KEPT_DIMS:
                dim.dim_param = mapping.setdefault(dim.dim_param, f"dim_{len(mapping)}")
