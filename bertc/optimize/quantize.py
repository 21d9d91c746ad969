"""Dynamic int8 quantization of the optimized graph, written as the operators ONNX Runtime runs.

``onnxruntime.quantization.quantize_dynamic`` (per channel, symmetric int8 weights) turns every
weight MatMul into DynamicQuantizeLinear + MatMulInteger + Cast + Mul, and the fused Attention
into DynamicQuantizeLinear + QAttention; ORT's graph optimizer then fuses the MatMul chains back
into ``DynamicQuantizeMatMul`` when the session loads. Doing that through the quantizer costs a
Python loop over every output channel (83k on BERT-base: ~7 s) and several copies of the model
(shape inference through a temporary file). bertc knows which tensors are weights, so it writes
the result directly, with the same arithmetic, vectorized:

- every ``MatMul`` whose B is a 2-D fp32 initializer -> com.microsoft ``DynamicQuantizeMatMul``
  (A quantized per call to uint8 inside the kernel; B int8 per output column);
- every com.microsoft ``Attention`` -> ``DynamicQuantizeLinear`` on its input + ``QAttention``
  (packed QKV weights int8 per column, same mask and attributes); one with an ``attention_bias`` (which
  QAttention lacks) -> ``DynamicQuantizeMatMul`` on the packed weights, ``Split``, ``MultiHeadAttention``;
- everything else stays fp32: embedding tables, layer norms, biases, ``Gemm`` (pooler, classifier,
  the masked-LM decoder that shares the word table), the weight-free ``MultiHeadAttention``.

Block-wise int8 (``blockwise``: the nodes the int8 tuning's sensitivity pass picks, see
:mod:`bertc.optimize.sensitivity`): com.microsoft ``MatMulNBits`` with 8-bit weights and ``accuracy_level`` 4,
ORT's int8 kernel that quantizes A per row and per block of :data:`BLOCK_SIZE` input channels (one activation
outlier channel then costs the precision of its own block of one row, not of the whole tensor), and B per
output column and block. A fused Attention picked so becomes ``MatMulNBits`` on the packed weights, ``Split``
and ``MultiHeadAttention``. Its cost lies between per-tensor int8 and fp32 on most x86 CPUs (measured per MatMul
shape by tools/bench_block_int8.py; the README has the figures); on a CPU with AMX it is no faster than fp32.

Row-wise int8 (``rowwise``, the other form the sensitivity pass may pick, :func:`int8_form_costs`): A quantized per
row (per token) at run time, ``QuantizeLinear`` of ``A / s`` with ``s = max|A row| / 127`` to uint8 around 128, then
com.microsoft ``MatMulIntegerToFloat`` with the same int8 weights as ``DynamicQuantizeMatMul`` (per output
column) and a ``Mul`` by ``s``: one token whose activations are 30x the others' no longer takes the range of every
row. It runs on ORT's u8 x s8 kernels (activations in [1, 255] as with per-tensor int8: the weights' pair limits
hold), so it stays close to per-tensor int8's speed where MatMulNBits is not.

Weights: ``scale = max|w| / 64`` per output column, zero point 0, ``q = clip(round(w / scale), -64, 64)``
rounding half to even, as ORT's ``quantize_nparray`` does with ``reduce_range`` (7-bit weights); an all-zero
column gets scale 1. The test suite checks the result against ``quantize_dynamic`` itself. Why 7 bits: on
x86 CPUs without VNNI (AVX2; AVX-512 before VNNI: most cloud CPUs of a few years ago, AMD EPYC before Zen 4)
ORT's u8 x s8 kernels sum pairs of products in int16 (``vpmaddubsw``: ``a[2i] * q[2i] + a[2i+1] * q[2i+1]``
over adjacent input channels, activations ``a`` in [0, 255]), which saturates beyond 32,767. Full-range weights
(|q| <= 127) then silently compute something else there than on a VNNI CPU: a tiny DeBERTa masked LM's argmax
agreement with fp32 fell to 75% on an AVX2 machine, 94% with 7-bit weights. With |q| <= 64 no sum can
saturate, so every x86 CPU computes the same integers, and an int8 artifact judged on the build machine holds
where it is deployed.

**Pair-limited 8-bit weights** (``paired=True``, :func:`quantize_columns_paired`; the int8 tuning's choice once
plain int8 misses its target): the int16 sum only needs each *pair* (2i, 2i+1) of one column to stay within 128
on each side (``255 * 128 = 32,640``), not each weight within 64. The column's scale is ``max pair / 127``, the
largest same-sign sum of a pair's magnitudes, or the 7-bit scale where that is finer; a single weight may use
the whole 8-bit range when its neighbour is small or of the other sign. On all-MiniLM-L6-v2's weights the step
is 1.2-1.3x the 8-bit one where 7 bits cost 2x (an effective 99-107 levels where 7 bits give 64), and no x86
kernel can saturate: VNNI sums in int32, AVX2 and AVX-512BW sum these pairs (MLAS packs B in groups of 4
input channels from channel 0), SSE widens to int16 first.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from bertc.optimize.protos import outer_inputs

MS_DOMAIN = "com.microsoft"
QMAX = 127          # full symmetric int8: [-127, 127]
REDUCED_QMAX = 64   # ORT's reduce_range for int8 weights: [-64, 64] (no int16 saturation without VNNI)
PAIR_LIMIT = 128    # pair-limited weights: |q[2i]| + |q[2i+1]| of one sign <= 128 (255 * 128 fits in int16)
WEIGHT_QMAX = REDUCED_QMAX   # what bertc writes (the module docstring says why)
BLOCK_SIZE = 128    # input channels per scale of block-wise int8 (MatMulNBits); the fastest of 32 / 64 / 128


@dataclass
class Int8Result:
    proto: object
    quantized: list = field(default_factory=list)   # node names now running on int8 weights
    kept_fp32: list = field(default_factory=list)   # weight-bearing nodes left in fp32
    weights: Optional[list] = None                  # [(name, array)] beside ``proto`` (when given so)
    qmax: int = WEIGHT_QMAX                         # the weights' range when not ``paired``
    blockwise: list = field(default_factory=list)   # node names now running block-wise int8 (MatMulNBits)
    paired: bool = False                            # pair-limited 8-bit weights (else [-qmax, qmax])
    rowwise: list = field(default_factory=list)     # node names now running row-wise int8 (MatMulIntegerToFloat)

    def weight_options(self) -> dict:
        """How the int8 weights were made, for the report (besides ORT's ``per_channel`` / int8 weight type)."""
        if self.paired:
            return {"reduce_range": False, "weight_range": [-QMAX, QMAX], "pair_limit": PAIR_LIMIT}
        return {"reduce_range": self.qmax == REDUCED_QMAX, "weight_range": [-self.qmax, self.qmax]}


def quantize_columns(weight: np.ndarray, qmax: int = WEIGHT_QMAX) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) fp32 -> (int8 (K, N), fp32 scale (N,)): symmetric in [-qmax, qmax], per output column."""
    w = np.asarray(weight, dtype=np.float32)
    absmax = np.max(np.abs(w), axis=0)
    scale = (absmax * np.float32(2.0)) / np.float32(2 * qmax)
    scale = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
    q = np.clip(np.round(w / scale), -qmax, qmax).astype(np.int8)
    return q, scale


def pair_sums(q: np.ndarray) -> np.ndarray:
    """(K, N) weights (int or float) -> (ceil(K / 2), N): the larger same-sign magnitude sum of each pair of input rows
    (2i, 2i+1) of each column (K odd: the last row pairs with a zero), what an int16 ``vpmaddubsw`` adds."""
    v = np.asarray(q)
    v = v.astype(np.int64 if np.issubdtype(v.dtype, np.integer) else np.float64, copy=False)
    if v.shape[0] % 2:
        v = np.concatenate([v, np.zeros((1, v.shape[1]), v.dtype)])
    a, b = v[0::2], v[1::2]
    return np.maximum(np.maximum(a, 0) + np.maximum(b, 0), np.maximum(-a, 0) + np.maximum(-b, 0))


def quantize_columns_paired(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) fp32 -> (int8 (K, N) in [-127, 127], fp32 scale (N,)), symmetric per output column, every pair of
    input rows (2i, 2i+1) within :data:`PAIR_LIMIT` per sign (see the module docstring): ``scale = min(max pair
    / 127, max|w| / 64)``, so a pair's rounded sum is at most 127 + 1 and no column is coarser than 7 bits."""
    w = np.asarray(weight, dtype=np.float32)
    pairs = pair_sums(w).max(axis=0) if w.shape[0] else np.zeros(w.shape[1], np.float32)
    absmax = np.max(np.abs(w), axis=0) if w.shape[0] else pairs
    scale = np.minimum(pairs.astype(np.float32) / np.float32(QMAX), absmax / np.float32(REDUCED_QMAX))
    scale = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
    q = np.clip(np.round(w / scale), -QMAX, QMAX).astype(np.int8)
    return q, scale


def quantize_blocks(weight: np.ndarray, block: int = BLOCK_SIZE, qmax: int = WEIGHT_QMAX) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """(K, N) fp32 -> MatMulNBits' 8-bit B: (uint8 (N, ceil(K / block), block) = q + 128, fp32 scales (N * blocks,)):
    symmetric in [-qmax, qmax] per output column and block of ``block`` input rows (K padded with zeros)."""
    w = np.asarray(weight, dtype=np.float32)
    k, n = w.shape
    blocks = -(-k // block)
    w = np.pad(w, ((0, blocks * block - k), (0, 0))).T.reshape(n, blocks, block)
    scale = np.max(np.abs(w), axis=-1) / np.float32(qmax)
    scale = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
    q = np.clip(np.round(w / scale[..., None]), -qmax, qmax).astype(np.int16) + 128
    return q.astype(np.uint8), scale.reshape(-1)


_BLOCK_INT8: dict = {}


def block_int8_available() -> bool:
    """Whether this ONNX Runtime runs 8-bit ``MatMulNBits`` on the CPU (ORT >= 1.22): a one-node model is
    loaded and run once per process."""
    if "ok" not in _BLOCK_INT8:
        from onnx import TensorProto, helper, numpy_helper

        q, scale = quantize_blocks(np.eye(16, 8, dtype=np.float32), 16)
        node = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain=MS_DOMAIN, K=16, N=8, bits=8,
                                block_size=16, accuracy_level=4)
        graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
                                  [numpy_helper.from_array(q, "w"), numpy_helper.from_array(scale, "s")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)])
        try:
            from bertc.optimize.runtime import ort_session

            x = np.arange(32, dtype=np.float32).reshape(2, 16) / 8
            y = ort_session(model.SerializeToString()).run(None, {"x": x})[0]
            _BLOCK_INT8["ok"] = bool(np.allclose(y, x[:, :8], atol=0.1))
        except Exception:   # an ORT without the 8-bit kernel refuses the model: fp32 is kept instead
            _BLOCK_INT8["ok"] = False
    return _BLOCK_INT8["ok"]


_FORM_COSTS: dict = {}
_FORM_SOURCES: dict = {}   # (k, n) -> where int8_form_costs took its timings from
FORM_ROWS = 128      # the rows (tokens) a form's cost is timed at: batch 1 x sequence 128
FORM_THREADS = 2     # ... at the benchmarks' intra-op threads
FORM_GAIN = 0.95     # a form is offered only where it takes at most this share of fp32's time
FORM_VERSION = 1     # part of the cache key: bump it when a form's operators change
FORM_CACHE = "int8_form_costs.json"


def cache_dir() -> Optional[Path]:
    """Where bertc keeps what it measured about this host: ``$BERTC_CACHE_DIR``, else ``$XDG_CACHE_HOME/bertc``,
    else ``~/.cache/bertc``; ``BERTC_CACHE_DIR=off`` keeps nothing."""
    import os

    chosen = os.environ.get("BERTC_CACHE_DIR")
    if chosen is not None:
        return None if chosen.strip().lower() in ("off", "none", "") else Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME")
    try:
        return (Path(base) if base else Path.home() / ".cache") / "bertc"
    except RuntimeError:   # no home directory to be found: nothing is kept
        return None


@functools.lru_cache(maxsize=1)
def form_host_key() -> str:
    """What makes one host's form timings another's: the CPU (model name, int8 instruction set, cores), ONNX
    Runtime's version, and the timing's shape, threads and form version."""
    import os
    import platform

    import onnxruntime

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    isa = host_int8_kernels()
    return (f"{model} | {isa.get('isa', isa['machine'])}{' vnni' if isa.get('vnni') else ''}"
            f"{' amx' if isa.get('amx') else ''} | {os.cpu_count()} cpus | onnxruntime {onnxruntime.__version__} | "
            f"{FORM_ROWS} rows, {FORM_THREADS} threads, forms v{FORM_VERSION}")


def _cached_form_costs() -> dict:
    """This host's entries of the form-cost cache ({} when there is none, it is unreadable or another host's)."""
    import json

    folder = cache_dir()
    try:
        data = json.loads((folder / FORM_CACHE).read_text(encoding="utf-8")) if folder else {}
        entries = data.get("hosts", {}).get(form_host_key(), {})
        return {key: entry for key, entry in entries.items()
                if isinstance(entry, dict) and isinstance(entry.get("ms"), dict) and "fp32" in entry["ms"]
                and all(isinstance(v, (int, float)) and v > 0 for v in entry["ms"].values())}
    except (OSError, ValueError, AttributeError):
        return {}


def _store_form_costs(key: str, costs: dict) -> None:
    """Add one shape's timings to the cache file (re-read, updated, written beside itself and renamed: a
    concurrent build loses at most its own entry); a cache that cannot be written is skipped."""
    import datetime
    import json

    from bertc.report import write_text_atomic

    folder = cache_dir()
    if folder is None:
        return
    path = folder / FORM_CACHE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("hosts"), dict):
                raise ValueError
        except (OSError, ValueError):
            data = {"what": "bertc's int8 form timings per host (bertc.optimize.quantize.int8_form_costs); "
                            "delete this file to measure again", "hosts": {}}
        host = data["hosts"].setdefault(form_host_key(), {})
        if not isinstance(host, dict):
            host = data["hosts"][form_host_key()] = {}
        now = datetime.datetime.now(datetime.timezone.utc)
        host[key] = {"ms": costs, "measured": now.strftime("%Y-%m-%d %H:%M UTC")}
        write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass


def _time_forms(k: int, n: int) -> dict:
    """Milliseconds of one (:data:`FORM_ROWS`, k) x (k, n) product in each form (see :func:`int8_form_costs`)."""
    import time

    from onnx import TensorProto, helper, numpy_helper

    from bertc.optimize.runtime import ort_session

    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n)).astype(np.float32)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, k])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    source = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="m")], "form",
                                                 [x_info], [y_info], [numpy_helper.from_array(w, "w")]),
                               opset_imports=[helper.make_opsetid("", 17)])
    forms = {"fp32": (), "rows": (["m"], ())}
    if block_int8_available():
        forms["blocks"] = ((), ["m"])
    sessions = {}
    for form, choice in forms.items():
        model = source if not choice else quantize_dynamic_int8(source, rowwise=choice[0], blockwise=choice[1]).proto
        try:
            sessions[form] = ort_session(model.SerializeToString(), threads=FORM_THREADS, spinning=False)
        except Exception:   # an ONNX Runtime without the form's kernels: the form is not offered
            if form == "fp32":
                raise
    x = {"x": rng.standard_normal((1, FORM_ROWS, k)).astype(np.float32)}
    times: dict = {form: [] for form in sessions}
    for _ in range(9):
        for form, session in sessions.items():
            session.run(None, x)
            t0 = time.perf_counter()
            for _ in range(10):
                session.run(None, x)
            times[form].append((time.perf_counter() - t0) * 100)
    return {form: round(float(np.min(v)), 4) for form, v in times.items()}


def int8_form_costs(k: int, n: int) -> dict:
    """Milliseconds of one (:data:`FORM_ROWS`, k) x (k, n) product on this host's ORT CPU in each form a kept
    node may take: ``fp32`` (MatMul), ``rows`` (row-wise int8) and, where this ORT has it, ``blocks``
    (block-wise int8): one-node models, interleaved, the fastest of 9 rounds of 10 calls (other work on the machine
    only ever adds time; about 0.2 s per shape). Which form is cheaper depends on the CPU: on one with AMX,
    MatMulNBits' int8 kernel is no faster than fp32 while the u8 x s8 products of the row-wise form are.

    Timed once per host (:func:`form_host_key`) and shape, then read from the cache (:func:`cache_dir`,
    ``int8_form_costs.json``): the tuning's choices are then the same in every build on this host, where fresh
    timings of two near-equal forms would pick either from one build to the next."""
    key = (k, n)
    if key in _FORM_COSTS:
        return _FORM_COSTS[key]
    name = f"{k}x{n}"
    cached = _cached_form_costs().get(name)
    if cached is not None:
        _FORM_COSTS[key] = {form: float(v) for form, v in cached["ms"].items()}
        _FORM_SOURCES[key] = f"timed on this host {cached.get('measured', '')}".strip()
        return _FORM_COSTS[key]
    _FORM_COSTS[key] = _time_forms(k, n)
    _FORM_SOURCES[key] = "timed by this build"
    _store_form_costs(name, _FORM_COSTS[key])
    return _FORM_COSTS[key]


def form_costs_source(k: int, n: int) -> Optional[str]:
    """Where :func:`int8_form_costs` took (k, n)'s timings from: this build, or the cache (with the date)."""
    return _FORM_SOURCES.get((k, n))


def cheaper_forms(k: int, n: int) -> list[str]:
    """The forms of :func:`int8_form_costs` that take at most :data:`FORM_GAIN` of fp32's time at (k, n) on this
    host, cheapest first: a form within 5% of fp32 gains nothing worth its rounding (and timings that close
    could order it either way)."""
    costs = int8_form_costs(k, n)
    return sorted((f for f in costs if f != "fp32" and costs[f] <= FORM_GAIN * costs["fp32"]), key=costs.get)


def host_int8_kernels() -> dict:
    """What this host's ORT CPU int8 kernels can do, as far as the OS says: the machine, its widest x86
    vector extension, and whether it has VNNI (u8 x s8 products summed in int32: no saturation, whatever
    the weight range). The int8 tuning records it beside its figures: without VNNI, full-range weights would
    saturate there (bertc's 7-bit weights cannot)."""
    import platform

    machine = platform.machine().lower()
    info = {"machine": machine}
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return info
    flags: set = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        return info
    if not flags:
        return {**info, "isa": "unknown", "vnni": None}
    info["isa"] = next((name for flag, name in (("avx512f", "avx512"), ("avx2", "avx2"), ("sse4_1", "sse4.1"))
                        if flag in flags), "sse2")
    info["vnni"] = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    info["amx"] = "amx_int8" in flags  # MLAS's AMX u8s8 GEMM: int8 several times faster than fp32
    return info


def _is_weight_matmul(node, float_matrix) -> bool:
    return node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and float_matrix(node.input[1])


def _is_weight_attention(node, float_matrix) -> bool:
    return node.op_type == "Attention" and node.domain == MS_DOMAIN and float_matrix(node.input[1])


def float_matrix_test(proto, weights: Optional[list] = None):
    """``name -> bool``: whether ``name`` is a 2-D fp32 initializer of ``proto`` (or of ``weights`` beside it)."""
    from onnx import TensorProto

    arrays = dict(weights or [])
    inits = {t.name: t for t in proto.graph.initializer}

    def test(name: str) -> bool:
        if name in arrays:
            return arrays[name].dtype == np.float32 and arrays[name].ndim == 2
        t = inits.get(name)
        return t is not None and t.data_type == TensorProto.FLOAT and len(t.dims) == 2

    return test


def weight_shapes(proto, weights: Optional[list], names: Iterable[str]) -> dict:
    """``{node name: (K, N)}``: the weight matrix of each named MatMul / Attention node of ``proto``."""
    arrays = dict(weights or [])
    inits = {t.name: t for t in proto.graph.initializer}
    names = set(names)
    return {node.name: tuple(arrays[node.input[1]].shape) if node.input[1] in arrays else tuple(inits[node.input[1]].dims)
            for node in proto.graph.node if node.name in names}


def quantizable_nodes(proto, weights: Optional[list] = None) -> list[str]:
    """The MatMul / Attention nodes :func:`quantize_dynamic_int8` gives int8 weights, in graph order."""
    test = float_matrix_test(proto, weights)
    return [n.name for n in proto.graph.node if _is_weight_matmul(n, test) or _is_weight_attention(n, test)]


def quantize_dynamic_int8(proto, weights: Optional[list] = None, keep_fp32: Iterable[str] = (),
                          qmax: int = WEIGHT_QMAX, blockwise: Iterable[str] = (), paired: bool = False,
                          rowwise: Iterable[str] = (), memo: Optional[dict] = None) -> Int8Result:
    """A new ModelProto (``proto`` is not modified) with int8 weights in [-qmax, qmax] on MatMul and Attention.

    ``weights``: [(name, array)] initializers kept beside ``proto`` (``lower_model(split_weights=True)``);
    the result then keeps its weights beside its proto too (``Int8Result.weights``). ``keep_fp32``: names
    of MatMul / Attention nodes left in fp32; ``blockwise``: those given block-wise int8 (``MatMulNBits``; the
    sensitivity pass's choice, :mod:`bertc.optimize.sensitivity`); ``rowwise``: those given row-wise int8
    (activations per row: ``MatMulIntegerToFloat``, see the module docstring); ``paired``: pair-limited 8-bit
    weights (:func:`quantize_columns_paired`) instead of ``qmax``. ``memo``: a dict kept across calls on the same
    weights (the int8 tuning quantizes one graph dozens of times): each weight is quantized once per form, and
    again only when its array (or initializer) is another object."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    arrays = dict(weights or [])
    inits = {t.name: t for t in graph.initializer}

    def shape_of(name: str):
        if name in arrays:
            a = arrays[name]
            return (a.dtype == np.float32, a.ndim)
        t = inits.get(name)
        return None if t is None else (t.data_type == TensorProto.FLOAT, len(t.dims))

    def array_of(name: str) -> np.ndarray:
        return arrays[name] if name in arrays else numpy_helper.to_array(inits[name])

    def quantized_weight(name: str, form, make) -> tuple:
        """``make(array_of(name))``, or what it gave for this very array before (``memo``)."""
        if memo is None:
            return make(array_of(name))
        source = arrays[name] if name in arrays else inits[name]
        hit = memo.get((name, form))
        if hit is None or hit[0] is not source:
            hit = memo[(name, form)] = (source, make(array_of(name)))
        return hit[1]

    readers: dict = {}
    for node in graph.node:
        for name in outer_inputs(node):   # an If's branches read from outside too
            readers.setdefault(name, []).append(node)

    float_matrix = float_matrix_test(proto, weights)

    keep_fp32, blockwise, rowwise = set(keep_fp32), set(blockwise), set(rowwise)
    new_inits: dict = {}    # name -> array (replacements and additions)
    replaced: set = set()   # fp32 weights no node reads any more
    nodes, quantized, kept, blocked, rowed = [], [], [], [], []
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)

    def unread_after(name: str) -> None:
        if all(r.op_type in ("MatMul", "Attention") and r.name not in keep_fp32 for r in readers[name]):
            replaced.add(name)

    def int8_weight(name: str) -> tuple[str, str, str]:
        if f"{name}_quantized" not in new_inits:
            q, scale = quantized_weight(name, "paired", quantize_columns_paired) if paired else \
                quantized_weight(name, qmax, lambda w: quantize_columns(w, qmax))
            new_inits[f"{name}_quantized"] = q
            new_inits[f"{name}_scale"] = scale
            new_inits[f"{name}_zero_point"] = np.zeros(scale.shape, np.int8)
            unread_after(name)
        return f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"

    def block_matmul(node, output: str) -> object:
        """MatMulNBits (8 bits, accuracy level 4) of ``node``'s A and weight into ``output``."""
        name = node.input[1]
        k, n = array_of(name).shape
        if f"{name}_blocks" not in new_inits:
            new_inits[f"{name}_blocks"], new_inits[f"{name}_block_scales"] = quantized_weight(name, "blocks",
                                                                                              quantize_blocks)
            unread_after(name)
        return helper.make_node("MatMulNBits", [node.input[0], f"{name}_blocks", f"{name}_block_scales"], [output],
                                name=f"{node.name}_blocks", domain=MS_DOMAIN, K=k, N=n, bits=8, block_size=BLOCK_SIZE,
                                accuracy_level=4)

    def row_matmul(node, output: str) -> list:
        """Row-wise int8 of ``node``'s A and weight into ``output`` (the module docstring)."""
        wq, ws, wz = int8_weight(node.input[1])
        if "row_int8/one" not in new_inits:
            new_inits.update({"row_int8/one": np.array(1.0, np.float32), "row_int8/zero_point": np.array(128, np.uint8),
                              "row_int8/per_level": np.array(1.0 / QMAX, np.float32),
                              "row_int8/tiny": np.array(1e-30, np.float32)})
            if opset >= 18:   # ReduceMax's axes: an input from opset 18, an attribute before
                new_inits["row_int8/last_axis"] = np.array([-1], np.int64)
        p = f"{node.name}_rows"
        axes = {"axes": [-1]} if opset < 18 else {}
        return [helper.make_node("Abs", [node.input[0]], [f"{p}/abs"], name=f"{p}/abs"),
                helper.make_node("ReduceMax", [f"{p}/abs"] + ([] if opset < 18 else ["row_int8/last_axis"]),
                                 [f"{p}/absmax"], name=f"{p}/absmax", keepdims=1, **axes),
                helper.make_node("Max", [f"{p}/absmax", "row_int8/tiny"], [f"{p}/range"], name=f"{p}/range"),
                helper.make_node("Mul", [f"{p}/range", "row_int8/per_level"], [f"{p}/scale"], name=f"{p}/scale"),
                helper.make_node("Div", [node.input[0], f"{p}/scale"], [f"{p}/scaled"], name=f"{p}/scaled"),
                helper.make_node("QuantizeLinear", [f"{p}/scaled", "row_int8/one", "row_int8/zero_point"],
                                 [f"{p}/quantized"], name=f"{p}/quantize"),
                helper.make_node("MatMulIntegerToFloat", [f"{p}/quantized", wq, "row_int8/one", ws,
                                                          "row_int8/zero_point", wz],
                                 [f"{p}/unscaled"], name=f"{p}/matmul", domain=MS_DOMAIN),
                helper.make_node("Mul", [f"{p}/unscaled", f"{p}/scale"], [output], name=p)]

    def packed_attention(node, projection) -> None:
        """An Attention as ``projection`` (into the packed q|k|v) + Split + MultiHeadAttention (same packed bias,
        mask, attention_bias and attributes)."""
        qkv = f"{node.name}/qkv"
        made = projection(qkv)
        nodes.extend(made if isinstance(made, list) else [made])
        parts = [f"{node.name}/{p}" for p in ("q", "k", "v")]
        sizes = f"{node.name}/split_sizes"
        new_inits[sizes] = np.full(3, array_of(node.input[1]).shape[1] // 3, np.int64)
        nodes.append(helper.make_node("Split", [qkv, sizes], parts, name=f"{node.name}/split", axis=-1))
        extra = [node.input[5]] if len(node.input) > 5 and node.input[5] else []
        mha = helper.make_node("MultiHeadAttention", parts + [node.input[2], node.input[3]] + extra,
                               list(node.output[:1]), name=f"{node.name}/mha", domain=MS_DOMAIN)
        mha.attribute.extend(a for a in node.attribute if a.name in ("num_heads", "mask_filter_value", "scale"))
        nodes.append(mha)

    for node in graph.node:
        if node.name in keep_fp32:
            kept.append(node.name)
            nodes.append(node)
        elif (node.name in blockwise or node.name in rowwise) and (_is_weight_matmul(node, float_matrix)
                                                                   or _is_weight_attention(node, float_matrix)):
            make, done = (block_matmul, blocked) if node.name in blockwise else (row_matmul, rowed)
            if _is_weight_matmul(node, float_matrix):
                made = make(node, node.output[0])
                nodes.extend(made if isinstance(made, list) else [made])
            else:
                packed_attention(node, lambda qkv, node=node, make=make: make(node, qkv))
            done.append(node.name)
        elif _is_weight_matmul(node, float_matrix):
            wq, ws, wz = int8_weight(node.input[1])
            nodes.append(helper.make_node("DynamicQuantizeMatMul", [node.input[0], wq, ws, wz], list(node.output),
                                          name=f"{node.name}_quant", domain=MS_DOMAIN))
            quantized.append(node.name)
        elif _is_weight_attention(node, float_matrix) and len(node.input) > 5 and node.input[5]:
            # QAttention has no attention_bias: the packed projection as one DynamicQuantizeMatMul
            wq, ws, wz = int8_weight(node.input[1])
            packed_attention(node, lambda qkv, node=node, w=(wq, ws, wz): helper.make_node(
                "DynamicQuantizeMatMul", [node.input[0], *w], [qkv], name=f"{node.name}_quant", domain=MS_DOMAIN))
            quantized.append(node.name)
        elif _is_weight_attention(node, float_matrix):
            x = node.input[0]
            xq, xs, xz = f"{node.name}/input_quantized", f"{node.name}/input_scale", f"{node.name}/input_zero_point"
            nodes.append(helper.make_node("DynamicQuantizeLinear", [x], [xq, xs, xz], name=f"{node.name}/quantize_input"))
            wq, ws, wz = int8_weight(node.input[1])
            rest = list(node.input[2:]) + [""] * (4 - len(node.input[2:]))   # bias, mask, past, ...
            inputs = [xq, wq, rest[0], xs, ws, rest[1], xz, wz]
            if rest[2]:
                inputs.append(rest[2])
            q = helper.make_node("QAttention", inputs, list(node.output), name=f"{node.name}_quant", domain=MS_DOMAIN)
            q.attribute.extend(node.attribute)
            nodes.append(q)
            quantized.append(node.name)
        else:
            if any((shape_of(n) or (False, 0))[1] >= 2 for n in node.input):
                kept.append(node.name)
            nodes.append(node)

    out = onnx.ModelProto()  # field by field: a CopyFrom would copy every fp32 weight once more
    out.ir_version, out.producer_name, out.producer_version = proto.ir_version, proto.producer_name, \
        proto.producer_version
    out.doc_string = proto.doc_string
    out.metadata_props.extend(proto.metadata_props)
    out.opset_import.extend(proto.opset_import)
    if not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    g = out.graph
    g.name, g.doc_string = graph.name, graph.doc_string
    g.input.extend(graph.input)
    g.value_info.extend(graph.value_info)
    g.output.extend(graph.output)
    g.node.extend(nodes)
    for t in graph.initializer:
        if t.name not in replaced:
            g.initializer.append(t)
    if weights is not None:
        kept_weights = [(name, a) for name, a in weights if name not in replaced]
        return Int8Result(out, quantized, sorted(kept), kept_weights + sorted(new_inits.items()), qmax, blocked, paired,
                          rowed)
    g.initializer.extend(numpy_helper.from_array(new_inits[name], name) for name in sorted(new_inits))
    return Int8Result(out, quantized, sorted(kept), qmax=qmax, blockwise=blocked, paired=paired, rowwise=rowed)
