"""The portable path inside the optimized graph: a component without an ONNX lowering of its own.

A plug-in attention, feedforward, block or embedding network that defines no ``onnx_lowering``
is not a reason to give up on the optimized artifact. Its Keras ``call`` is converted on its own by
tf2onnx (traced with its weights as inputs, as the portable export traces the whole model:
:func:`bertc.export.onnx.convert_with_weight_inputs`), and the converted nodes are spliced into
the optimized graph where the component's lowering would have gone. Everything around it keeps
its fused operators (the block's residual layer norm takes the plug-in attention's output as
its residual branch), the spliced nodes read the same weight initializers as the rest of the
graph (named by Keras path, so a shared block's weights are stored once), and the report says
which layers took this path.

What each kind's call looks like is the kind's own protocol: the portable lowering is the
``onnx_lowering`` of each layer kind's base class (``Attention``, ``Feedforward``, ``Block``,
``Embedding``, ``PositionScheme`` in ``bertc/components/*.py``), which calls :func:`splice` through
``LoweringContext.splice``.
"""
from __future__ import annotations

from typing import Callable, Sequence

from bertc.errors import NotLowerable

# Domains the optimized graph declares (see GraphBuilder.model): a spliced node outside them cannot go in.
_DOMAINS = {"", "ai.onnx", "com.microsoft"}


def splice(ctx, layer, args: Sequence[tuple], call: Callable, part: str) -> list:
    """Convert ``call(*tensors)`` (the Keras layer ``layer`` applied to tensors, returning one tensor or a
    tuple) with tf2onnx and append its nodes to ``ctx.g``; returns the graph values of its outputs.

    ``args``: one ``(value, shape, dtype)`` per tensor argument: the graph value fed in and the
    TensorSpec it is traced with (``None`` for dynamic axes). ``part`` names the part in the coverage
    record. A conversion that tf2onnx cannot do, or one that needs control-flow subgraphs or
    operators of another domain, raises :class:`NotLowerable` naming the layer."""
    from onnx import helper, numpy_helper

    g = ctx.g
    variables = list(layer.trainable_variables) + list(layer.non_trainable_variables)
    # Layers of one class and config compute the same function of their weights: one conversion serves them
    # all (BERT-base's 12 layers, ALBERT's shared block lowered once per layer), its weights taken by position.
    key = ("portable", part, type(layer), _config_key(layer), tuple((shape, str(dtype)) for _, shape, dtype in args),
           tuple((tuple(v.shape), str(v.dtype)) for v in variables))
    graph, inputs, outputs, weight_index = ctx.once(key, lambda: _convert(ctx, layer, variables, args, call))
    names = {"": ""}
    for name, (value, _, _) in zip(inputs, args):
        names[name] = value
    for path, k in weight_index.items():
        names[path] = ctx.weight(variables[k])
    for init in graph.initializer:
        names[init.name] = g.initializer(g.fresh("portable_const"), numpy_helper.to_array(init))
    with g.scope("portable"):
        for node in graph.node:
            new_outputs = []
            for out in node.output:
                if out:
                    names[out] = g.fresh(f"{node.op_type}_out")
                new_outputs.append(names[out] if out else "")
            copy = helper.make_node(node.op_type, [names[i] for i in node.input], new_outputs,
                                    name=g.fresh(node.op_type), domain=node.domain)
            copy.attribute.extend(node.attribute)
            g.nodes.append(copy)
    ctx.record(part, f"portable: {len(graph.node)} tf2onnx node(s)")
    entry = f"{layer.path} ({type(layer).__name__}): no ONNX lowering of its own, converted by tf2onnx ({len(graph.node)} nodes)"
    if entry not in ctx.not_lowered:   # a shared block is lowered once per layer
        ctx.not_lowered.append(entry)
    return [names[o] for o in outputs]


def _convert(ctx, layer, variables: list, args: Sequence[tuple], call: Callable):
    """tf2onnx's conversion of ``call`` in canonical form -> (graph, input names in ``args`` order, output
    names in order, {weight path in the graph: index into ``variables``})."""
    import keras

    from bertc.components.common import tf
    from bertc.export.onnx import convert_with_weight_inputs
    from bertc.export.onnx_canonical import canonicalize

    input_sig = [tf.TensorSpec(shape, dtype, name=f"bertc_splice_input_{k}") for k, (_, shape, dtype) in enumerate(args)]

    def traced(tensors, weights):
        with keras.StatelessScope(state_mapping=list(zip(variables, weights))):
            out = call(*tensors)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {f"bertc_splice_output_{k}": tf.identity(o, name=f"bertc_splice_output_{k}") for k, o in enumerate(outs)}

    try:
        proto, weights, _ = convert_with_weight_inputs(traced, input_sig, variables, ctx.opset,
                                                       refuse_unconverted=False)   # named below, by layer
    except Exception as exc:  # tf2onnx raises many types
        raise NotLowerable(f"{layer.path} ({type(layer).__name__}) has no ONNX lowering, and tf2onnx cannot "
                           f"convert its call on its own: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    graph = proto.graph
    for node in graph.node:
        why = _unsplicable(node)
        if why:
            raise NotLowerable(f"{layer.path} ({type(layer).__name__}) has no ONNX lowering, and its tf2onnx "
                               f"conversion needs {why} ({node.op_type})")
    # tf2onnx's node order and generated names vary between runs: put them in canonical form first, so the
    # spliced names (scope + op + counter) are reproducible.
    inputs = [i.name for i in graph.input]   # in input_sig order
    outputs = sorted((o.name for o in graph.output), key=lambda n: int(n.split(":")[0].rsplit("_", 1)[1]))
    canonicalize(graph, keep=set(inputs) | set(outputs) | {p for p, _ in weights})
    position = {id(v): k for k, v in enumerate(variables)}
    return graph, inputs, outputs, {path: position[id(v)] for path, v in weights}


def _config_key(layer) -> str:
    """The layer's config without its name, as text (what makes two layers compute the same function)."""
    import json

    config = dict(layer.get_config())
    config.pop("name", None)
    return json.dumps(config, sort_keys=True, default=repr)


def _unsplicable(node) -> str:
    """Why ``node`` cannot go into the optimized graph, or ''. tf2onnx leaves a TF op it cannot convert
    in the graph under its TF name (and only logs it): ONNX's schemas tell."""
    import onnx

    if node.domain not in _DOMAINS:
        return f"operator domain {node.domain!r}"
    if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
        return "an operator ONNX does not define"
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return "a control-flow subgraph"
    return ""
