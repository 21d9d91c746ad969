"""Smoothing before dynamic int8: per-channel scales moved from the activations into the weights, exactly.

Dynamic int8 quantizes a MatMul's activation per tensor (one uint8 range for the whole input), so a few
hidden channels with large values (real BERTs have them: layer norms with a few large gamma / beta entries)
take most of the range and leave the other channels a handful of levels. SmoothQuant's remedy: divide
channel ``j`` of the activation by ``s_j`` and multiply row ``j`` of the following weight by ``s_j``; the
product is the same in exact arithmetic, and the activation's range shrinks. The weights are quantized per
output column, so the larger rows cost them little. ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``, with
``max|X_j|`` measured on calibration inputs (:func:`activation_absmax`).

Where the scale goes, found by graph structure on any bertc-lowered graph (:func:`find_sites`):

- a layer norm (``LayerNormalization``, com.microsoft ``SkipLayerNormalization`` /
  ``EmbedLayerNormalization``) whose normalized output feeds weight MatMuls or a fused ``Attention``
  (``kind="layer_norm"``). One scale per channel serves all of them (Q/K/V packed in one Attention, or
  several MatMuls reading the same tensor). When nothing else reads that output (pre-norm blocks), the
  scale is folded into the layer norm's gamma and beta (``method="fold"``). When something else reads it
  (post-norm BERT: the same tensor is the residual input of the next layer norm), the residual must keep
  the unscaled values: the MatMuls then read a branch copy, ``Mul(x, 1/s)`` (``method="branch"``), one
  elementwise op per layer norm.
- a fused ``Attention`` whose output feeds only weight MatMuls (the attention output projection,
  ``kind="attention_value"``): the context is linear in V, so ``1/s`` goes into V's columns of the packed
  QKV weight and bias (``method="fold"``). V's weights are quantized per column, so this costs them nothing.

In fp32 the smoothed graph computes what the original computes up to rounding (the tests hold it to 1e-6).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from bertc.optimize.protos import outer_inputs
from bertc.optimize.quantize import MS_DOMAIN, _is_weight_attention, _is_weight_matmul, float_matrix_test

# op type -> (gamma input index, beta input index) of the layer norms whose output 0 is the normalized tensor
NORMS = {"LayerNormalization": (1, 2), "SkipLayerNormalization": (2, 3), "EmbedLayerNormalization": (5, 6)}
SCALE_RANGE = (1e-4, 1e4)


@dataclass
class Site:
    """One activation that can be smoothed: ``tensor`` (produced by node ``source``), read by the weight
    MatMul / Attention nodes ``consumers`` (node name, weight name); ``others``: the other nodes reading it."""

    kind: str   # "layer_norm" | "attention_value"
    source: str
    op: str
    tensor: str
    consumers: list = field(default_factory=list)
    others: list = field(default_factory=list)

    @property
    def method(self) -> str:
        return "branch" if self.kind == "layer_norm" and self.others else "fold"


def find_sites(proto, weights: Optional[list] = None) -> list[Site]:
    """Every activation of ``proto`` that smoothing can reach (see the module docstring), in graph order."""
    test = float_matrix_test(proto, weights)
    readers: dict = {}
    for node in proto.graph.node:
        for name in outer_inputs(node):   # an If's branches read from outside too
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in proto.graph.output}
    sites = []
    for node in proto.graph.node:
        if node.op_type in NORMS and node.domain in ("", "ai.onnx", MS_DOMAIN):
            kind = "layer_norm"
            gamma_at, beta_at = NORMS[node.op_type]
            if len(node.input) <= gamma_at or not _initializer_1d(proto, weights, node.input[gamma_at]):
                continue
        elif node.op_type == "Attention" and node.domain == MS_DOMAIN and test(node.input[1]):
            kind = "attention_value"
        else:
            continue
        tensor = node.output[0]
        consumers, others = [], []
        for r in readers.get(tensor, []):
            if (_is_weight_matmul(r, test) or _is_weight_attention(r, test)) and r.input[0] == tensor:
                consumers.append((r.name, r.input[1]))
            else:
                others.append(r.name)
        if tensor in outputs:
            others.append("(graph output)")
        if not consumers or (kind == "attention_value" and (others or _has_past(node))):
            continue
        sites.append(Site(kind, node.name, node.op_type, tensor, consumers, others))
    return sites


def _has_past(node) -> bool:
    return len(node.input) > 4 and bool(node.input[4])


def _initializer_1d(proto, weights, name: str) -> bool:
    if any(n == name for n, _ in weights or []):
        return dict(weights)[name].ndim == 1
    return any(t.name == name and len(t.dims) == 1 for t in proto.graph.initializer)


def activation_absmax(run_with_outputs, tensors: list[str], inputs: list[dict]) -> dict:
    """Per tensor, max |x| per channel (last axis) over every row, token and input.
    ``run_with_outputs(names, inputs) -> list of arrays`` runs the fp32 graph with those tensors as outputs."""
    absmax = {n: None for n in tensors}
    for feed in inputs:
        for name, value in zip(tensors, run_with_outputs(tensors, feed)):
            m = np.max(np.abs(value.reshape(-1, value.shape[-1])), axis=0)
            absmax[name] = m if absmax[name] is None else np.maximum(absmax[name], m)
    return absmax


def smoothing_scales(x_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel scale, 1 where a channel is all zero, clipped to :data:`SCALE_RANGE`."""
    x = np.asarray(x_absmax, np.float64)
    w = np.asarray(w_absmax, np.float64)
    ok = (x > 0) & (w > 0)
    s = np.ones_like(x)
    s[ok] = x[ok] ** alpha / w[ok] ** (1.0 - alpha)
    return np.clip(s, *SCALE_RANGE).astype(np.float32)


def smooth(proto, weights: list, sites: list[Site], absmax: dict, alpha):
    """(new proto, new weights, applied): ``proto`` / ``weights`` ([(name, array)], every initializer beside
    the proto) are not modified; arrays that change are replaced by new ones, others are shared.
    ``alpha``: one for every site, or {site tensor: alpha} (:func:`choose_alphas`).
    ``applied``: per site, what was done (the report's ``smoothing.sites``)."""
    import onnx
    from onnx import helper

    arrays = dict(weights)
    changed: dict = {}
    readers: dict = {}
    for node in proto.graph.node:
        for name in outer_inputs(node):   # an If's branches read from outside too
            readers.setdefault(name, set()).add(node.name)

    def array(name: str) -> np.ndarray:
        return changed[name] if name in changed else arrays[name]   # a private copy is only in changed

    def private(name: str, owner: str) -> str:
        """``name``, or a copy of it when a node other than ``owner`` reads it too."""
        if readers.get(name, set()) <= {owner}:
            return name
        copy = f"{name}/smoothed_for_{owner}"
        changed[copy] = array(name)
        return copy

    out = onnx.ModelProto()
    out.CopyFrom(proto)   # the proto holds no weights (they are beside it): a cheap copy
    by_name = {n.name: n for n in out.graph.node}
    inserted: dict = {}   # node name -> Mul node to insert after it
    applied = []
    for site in sites:
        w_abs = np.max(np.stack([np.max(np.abs(array(w)), axis=1) for _, w in site.consumers]), axis=0)
        x_abs = absmax[site.tensor]
        site_alpha = alpha.get(site.tensor, 0.5) if isinstance(alpha, dict) else alpha
        s = smoothing_scales(x_abs, w_abs, site_alpha)
        if site.kind == "layer_norm" and site.method == "fold":
            node = by_name[site.source]
            gamma_at, beta_at = NORMS[site.op]
            for at in (gamma_at, beta_at):
                if len(node.input) > at and node.input[at]:
                    name = private(node.input[at], site.source)
                    node.input[at] = name
                    changed[name] = (array(name) / s).astype(np.float32)
            reads = site.tensor
        elif site.kind == "layer_norm":
            reads = f"{site.source}/smoothed"
            scale_name = f"{site.source}/smoothing_inverse_scale"
            changed[scale_name] = (np.float32(1.0) / s).astype(np.float32)
            inserted[site.source] = helper.make_node("Mul", [site.tensor, scale_name], [reads],
                                                     name=f"{site.source}/smooth")
        else:   # attention_value: V's columns of the packed weight and bias
            node = by_name[site.source]
            width = s.shape[0]
            for at in (1, 2):
                if len(node.input) > at and node.input[at]:
                    name = private(node.input[at], site.source)
                    node.input[at] = name
                    a = array(name).copy()
                    a[..., a.shape[-1] - width:] /= s
                    changed[name] = a.astype(np.float32)
            reads = site.tensor
        for consumer, weight in site.consumers:
            node = by_name[consumer]
            name = private(weight, consumer)
            node.input[1] = name
            changed[name] = (array(name) * s[:, None]).astype(np.float32)
            if reads != site.tensor:
                node.input[0] = reads
        applied.append({"tensor": site.tensor, "source": site.source, "kind": site.kind, "method": site.method,
                        "consumers": [c for c, _ in site.consumers], "alpha": site_alpha,
                        "activation_absmax": round(float(np.max(x_abs)), 4),
                        "activation_absmax_after": round(float(np.max(x_abs / s)), 4),
                        "scale_range": [round(float(s.min()), 5), round(float(s.max()), 5)]})
    if inserted:
        ordered = []
        for node in out.graph.node:
            ordered.append(node)
            if node.name in inserted:
                ordered.append(inserted[node.name])
        del out.graph.node[:]
        out.graph.node.extend(ordered)
    new_weights = [(n, changed.get(n, a)) for n, a in weights] + sorted(
        (n, a) for n, a in changed.items() if n not in arrays)
    return out, new_weights, applied


# --- outlier channels of a feedforward's hidden activation ------------------------------------------------
#
# The activation between a feedforward's two MatMuls (GELU's output) has no layer norm in front to fold a
# scale into, and GELU does not commute with one. Real checkpoints put one or two channels there an order of
# magnitude above the rest (all-MiniLM-L6-v2: 24.7 against a 90th percentile of 2.9 in its first layer).
# Those channels are computed apart, in fp32, exactly: the first MatMul's columns, the bias and the second
# MatMul's rows of the outlier channels move to a small fp32 side path (``<name>/outlier_channels``) whose
# product is added to the int8 main path's. The rest keep their node names and are quantized as before.

FEEDFORWARD_ACTIVATIONS = ("BiasGelu", "FastGelu")   # com.microsoft, (x, bias): per-channel, elementwise
OUTLIER_RATIO = 3.0       # a channel whose max |x| is above this many times the 90th percentile of the channels'
OUTLIER_MAX_FRACTION = 1 / 32


@dataclass
class FeedforwardSite:
    """MatMul ``first`` -> ``activation`` (with bias) -> MatMul ``second``, each read only by the next."""

    first: str
    activation: str
    second: str
    tensor: str    # the activation's output (the second MatMul's input)


def find_feedforwards(proto, weights: Optional[list] = None) -> list[FeedforwardSite]:
    test = float_matrix_test(proto, weights)
    readers: dict = {}
    producer = {}
    for node in proto.graph.node:
        for name in outer_inputs(node):   # an If's branches read from outside too
            readers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node
    outputs = {o.name for o in proto.graph.output}
    sites = []
    for act in proto.graph.node:
        if act.op_type not in FEEDFORWARD_ACTIVATIONS or act.domain != MS_DOMAIN or len(act.input) != 2:
            continue
        first = producer.get(act.input[0])
        after = readers.get(act.output[0], [])
        if first is None or not _is_weight_matmul(first, test) or len(after) != 1 or not _is_weight_matmul(after[0], test):
            continue
        if len(readers.get(first.output[0], [])) != 1 or first.output[0] in outputs or act.output[0] in outputs:
            continue
        if not _initializer_1d(proto, weights, act.input[1]):
            continue
        sites.append(FeedforwardSite(first.name, act.name, after[0].name, act.output[0]))
    return sites


def outlier_channels(absmax: np.ndarray, ratio: float = OUTLIER_RATIO,
                     max_fraction: float = OUTLIER_MAX_FRACTION) -> np.ndarray:
    """The channels (sorted) whose max |x| exceeds ``ratio`` x the 90th percentile, the largest first, at most
    ``max_fraction`` of them."""
    absmax = np.asarray(absmax, np.float64)
    bound = ratio * float(np.percentile(absmax, 90))
    order = np.argsort(-absmax, kind="stable")
    chosen = [int(c) for c in order[:max(1, int(len(absmax) * max_fraction))] if absmax[c] > bound]
    return np.asarray(sorted(chosen), np.int64)


def split_outliers(proto, weights: list, sites: list[FeedforwardSite], absmax: dict,
                   ratio: float = OUTLIER_RATIO):
    """(new proto, new weights, applied, fp32 nodes): the feedforwards of ``sites`` with their outlier
    channels (:func:`outlier_channels` of ``absmax[site.tensor]``) on an fp32 side path (see above).
    ``fp32 nodes``: the side path's MatMuls, which int8 must leave in fp32."""
    from onnx import helper

    arrays = dict(weights)
    changed: dict = {}
    out = _copy_shell(proto)
    by_name = {n.name: n for n in out.graph.node}
    after: dict = {}    # node name -> nodes to insert after it
    applied, fp32_nodes = [], []
    for site in sites:
        channels = outlier_channels(absmax[site.tensor], ratio)
        if not len(channels):
            continue
        first, act, second = by_name[site.first], by_name[site.activation], by_name[site.second]
        w1, b1, w2 = arrays.get(first.input[1], changed.get(first.input[1])), arrays[act.input[1]], \
            arrays.get(second.input[1], changed.get(second.input[1]))
        rest = np.setdiff1d(np.arange(w1.shape[1]), channels)
        names = {k: f"{site.first}/{k}" for k in ("rest_kernel", "outlier_kernel")}
        names.update({k: f"{site.activation}/{k}" for k in ("rest_bias", "outlier_bias")})
        names.update({k: f"{site.second}/{k}" for k in ("rest_kernel2", "outlier_kernel2")})
        changed[names["rest_kernel"]] = np.ascontiguousarray(w1[:, rest])
        changed[names["outlier_kernel"]] = np.ascontiguousarray(w1[:, channels])
        changed[names["rest_bias"]] = np.ascontiguousarray(b1[rest])
        changed[names["outlier_bias"]] = np.ascontiguousarray(b1[channels])
        changed[names["rest_kernel2"]] = np.ascontiguousarray(w2[rest, :])
        changed[names["outlier_kernel2"]] = np.ascontiguousarray(w2[channels, :])
        first.input[1] = names["rest_kernel"]
        act.input[1] = names["rest_bias"]
        second.input[1] = names["rest_kernel2"]
        y = second.output[0]
        main = f"{site.second}/main_out"
        second.output[0] = main
        side1 = helper.make_node("MatMul", [first.input[0], names["outlier_kernel"]], [f"{site.first}/outlier_channels_out"],
                                 name=f"{site.first}/outlier_channels")
        side_act = helper.make_node(act.op_type, [side1.output[0], names["outlier_bias"]],
                                    [f"{site.activation}/outlier_channels_out"], name=f"{site.activation}/outlier_channels",
                                    domain=act.domain)
        side_act.attribute.extend(act.attribute)
        side2 = helper.make_node("MatMul", [side_act.output[0], names["outlier_kernel2"]],
                                 [f"{site.second}/outlier_channels_out"], name=f"{site.second}/outlier_channels")
        add = helper.make_node("Add", [main, side2.output[0]], [y], name=f"{site.second}/add_outlier_channels")
        after[site.second] = [side1, side_act, side2, add]
        fp32_nodes += [side1.name, side2.name]
        x = np.asarray(absmax[site.tensor])
        applied.append({"feedforward": [site.first, site.activation, site.second], "channels": channels.tolist(),
                        "of": int(w1.shape[1]), "activation_absmax": round(float(x.max()), 4),
                        "activation_absmax_after": round(float(x[rest].max()), 4)})
    ordered = []
    for node in out.graph.node:
        ordered.append(node)
        ordered.extend(after.get(node.name, []))
    del out.graph.node[:]
    out.graph.node.extend(ordered)
    used = {i for n in out.graph.node for i in outer_inputs(n)}   # an If's branches read weights from outside
    new_weights = [(n, changed.get(n, a)) for n, a in weights if n in used] + sorted(
        (n, a) for n, a in changed.items() if n not in arrays and n in used)
    return out, new_weights, applied, fp32_nodes


def _copy_shell(proto):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)   # the proto holds no weights (they are beside it): a cheap copy
    return out


# --- alpha per activation --------------------------------------------------------------------------------
#
# One alpha for every activation is a compromise: the layer norm feeding a feedforward in all-MiniLM-L6-v2
# has outliers of 28 against 7 for the embeddings'. :func:`choose_alphas` picks, per site, the alpha whose
# int8 product is closest to the fp32 one on the calibration activations, computing dynamic int8 as ONNX
# Runtime does (per call: one asymmetric uint8 range for the activation; pair-limited int8 weights per
# column, as the tuning writes them), in numpy.

SITE_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SAMPLE_ROWS = 256


@dataclass
class SiteSample:
    """Per calibration case, a site's per-channel min / max over the whole tensor and a sample of its rows."""

    lows: list = field(default_factory=list)
    highs: list = field(default_factory=list)
    rows: list = field(default_factory=list)


@dataclass
class Ranges:
    """What a run gives of a tensor whose rows are not sampled: its per-channel min and max over every row,
    and how many rows it has (:func:`bertc.optimize.int8_tuning.with_ranges` computes them in the graph)."""

    low: np.ndarray
    high: np.ndarray
    rows: int


def collect_samples(run_with_outputs, tensors: list[str], inputs: list[dict], seed: int = 0,
                    rows_of: Optional[set] = None) -> dict:
    """tensor -> :class:`SiteSample` over ``inputs``. ``rows_of``: the tensors whose sample rows are kept (None:
    all); the others keep only their ranges, and ``run_with_outputs`` may give those as :class:`Ranges`. The
    rows are drawn for every tensor either way, so a tensor's sample does not depend on which others keep
    theirs."""
    rng = np.random.default_rng(seed)
    samples = {n: SiteSample() for n in tensors}
    for feed in inputs:
        for name, value in zip(tensors, run_with_outputs(tensors, feed)):
            s = samples[name]
            if isinstance(value, Ranges):
                x, rows = None, value.rows
                s.lows.append(value.low)
                s.highs.append(value.high)
            else:
                x = value.reshape(-1, value.shape[-1])
                rows = len(x)
                s.lows.append(x.min(axis=0))
                s.highs.append(x.max(axis=0))
            picked = rng.choice(rows, SAMPLE_ROWS, replace=False) if rows > SAMPLE_ROWS else None
            if rows_of is None or name in rows_of:
                if x is None:
                    raise ValueError(f"{name}: its sample rows are wanted, but the run gave only its ranges")
                s.rows.append(x if picked is None else x[picked])
    return samples


def _int8_columns(w: np.ndarray) -> np.ndarray:
    """``w`` through the int8 weights the tuning writes after smoothing (pair-limited 8-bit, per column)."""
    from bertc.optimize.quantize import quantize_columns_paired

    q, scale = quantize_columns_paired(w)
    return q.astype(np.float64) * scale.astype(np.float64)


def int8_product_error(sample: SiteSample, weight: np.ndarray, s: np.ndarray,
                       products: Optional[list] = None) -> float:
    """|| int8(x / s) @ int8(s * W) - x @ W ||^2 over the sample, each case quantized with its own range.
    ``products``: each case's ``x @ W``, when the caller has them (they do not depend on ``s``)."""
    wq = _int8_columns(weight * s[:, None])
    total = 0.0
    for i, (lo, hi, x) in enumerate(zip(sample.lows, sample.highs, sample.rows)):
        lo_t, hi_t = min(0.0, float(np.min(lo / s))), max(0.0, float(np.max(hi / s)))
        scale = (hi_t - lo_t) / 255.0 or 1.0
        zero = np.round(-lo_t / scale)
        xq = (np.clip(np.round(x / s / scale) + zero, 0, 255) - zero) * scale
        total += float(np.sum((xq @ wq - (x @ weight if products is None else products[i])) ** 2))
    return total


def choose_alphas(sites: list[Site], weights: list, samples: dict, absmax: dict,
                  alphas: tuple = SITE_ALPHAS) -> dict:
    """site tensor -> the alpha of :data:`SITE_ALPHAS` with the smallest :func:`int8_product_error`."""
    arrays = dict(weights)
    chosen = {}
    for site in sites:
        w = np.concatenate([np.asarray(arrays[name], np.float64) for _, name in site.consumers], axis=1)
        w_abs = np.max(np.abs(w), axis=1)
        sample = samples[site.tensor]
        products = [x @ w for x in sample.rows]   # the fp32 products, the same for every alpha
        errors = {a: int8_product_error(sample, w, smoothing_scales(absmax[site.tensor], w_abs, a).astype(np.float64),
                                        products)
                  for a in alphas}
        chosen[site.tensor] = min(errors, key=errors.get)
    return chosen
