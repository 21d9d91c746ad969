#!/usr/bin/env python3
"""How much of an optimized graph's time its weight GEMMs alone take: the floor of any fp32 graph of that model.

    python tools/bench_gemm_floor.py --model OUT/model.optimized.onnx --anchor ANCHOR.onnx [--seq 128 32]
                                     [--rounds 10] [--calls 3] [--threads 2] [--label NAME] [--results FILE]
                                     [--vocab N]

Every projection of the model (a MatMul or Gemm reading a weight, the packed QKV of a fused ``Attention``) is
copied into a graph of its own that runs only those products: the same weight shapes, fed activations of the
shapes the model gives them at batch 1 x ``--seq`` (taken from a run of the model itself, so a pruned last
layer's first-token rows stay 1 row), each product reading its own input and leaving its result unread (ONNX
Runtime still runs it), with weights of the same shape and scale (random, so no denormals). That graph, the
model and the anchor (e.g. the Hugging Face export fused by ORT's optimizer: ``tools/bench_families.py``,
``tools/bench_modernbert.py`` write them) are timed interleaved in one process (bertc.bench's timing core: ORT
CPU, ``--threads`` intra-op threads, spinning off; median of per-round ratios to the anchor). The GEMMs
alone / anchor is what a graph that computes the same projections in fp32 with ORT's MLAS GEMM cannot go below;
(model - GEMMs) / anchor is what everything else in bertc's graph costs (attention's cores, norms, activations,
rotary, the embeddings), the room a faster graph would have to find. Token ids are drawn from 5..999, below
the vocabulary size: ``--vocab``, else the rows of the word-embedding initializer the ids index in the model's
and the anchor's graph, else the vocab_size of a build's spec.json beside them (it refuses when none tells).
Writes tools/results/bench_gemm_floor.json
(``--results``; rows are added under ``--label``, so one file can hold several models).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bertc.onnx_graph import all_graphs as _graphs  # noqa: E402

WEIGHT_OPS = {("", "MatMul"), ("", "Gemm"), ("com.microsoft", "FusedMatMul"), ("com.microsoft", "Attention")}


def token_ids(name: str) -> bool:
    """Whether a graph input takes token ids (what :func:`feeds_for` fills with random ids)."""
    return "mask" not in name and "type" not in name


def vocabulary_size(model_path: Path):
    """(the number of token ids the model takes, where that was read) or None: the first dimension of the
    initializer its token ids index (a Gather's table, an EmbedLayerNormalization's word embeddings), else the
    vocab_size of the build's spec.json beside it."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    graphs = list(_graphs(model.graph))
    dims = {t.name: list(t.dims) for g in graphs for t in g.initializer}
    nodes = [n for g in graphs for n in g.node]
    made_by = {o: n for n in nodes for o in n.output}
    ids = {i.name for i in model.graph.input if token_ids(i.name)} - set(dims)
    grown = True
    while grown:   # the ids as they reach the lookup (cast, reshaped)
        more = {o for n in nodes if n.op_type in ("Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten")
                and n.input and n.input[0] in ids for o in n.output}
        grown, ids = not more <= ids, ids | more
    sizes = []
    for n in nodes:
        if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] in ids and not any(
                a.name == "axis" and a.i for a in n.attribute):
            table = n.input[0]
        elif n.op_type == "EmbedLayerNormalization" and len(n.input) > 2 and n.input[0] in ids:
            table = n.input[2]
        else:
            continue
        while table not in dims and table in made_by and made_by[table].op_type in (
                "Cast", "Identity", "DequantizeLinear"):   # a table stored in another type
            table = made_by[table].input[0]
        if len(dims.get(table, [])) == 2:
            sizes.append(dims[table][0])
    if sizes:
        return min(sizes), f"{model_path}'s word-embedding initializer"
    spec = model_path.parent / "spec.json"
    try:
        encoder = json.loads(spec.read_text()).get("encoder") or {}
    except (OSError, ValueError, AttributeError):
        return None
    size = encoder.get("vocab_size") or (encoder.get("embedding") or {}).get("vocab_size")
    return (size, f"{spec}'s vocab_size") if isinstance(size, int) and size > 0 else None


def id_range(vocab: int) -> tuple[int, int]:
    """The token ids drawn: 5..999 (past the usual special tokens), within the vocabulary."""
    return (5 if vocab > 5 else 0), min(vocab, 1000)


def feeds_for(session, seq: int, rng, vocab: int) -> dict:
    """Batch 1 x ``seq``, every token real, ids in :func:`id_range` of ``vocab``."""
    low, high = id_range(vocab)
    feeds = {}
    for i in session.get_inputs():
        dtype = np.int64 if "int64" in i.type else np.int32
        if "mask" in i.name:
            feeds[i.name] = np.ones((1, seq), dtype)
        elif "type" in i.name:
            feeds[i.name] = np.zeros((1, seq), dtype)
        else:
            feeds[i.name] = rng.integers(low, high, (1, seq)).astype(dtype)
    return feeds


def gemm_floor(model_path: Path, seq: int, rng, vocab: int):
    """(floor model bytes, its feeds, a description): the model's weight products alone at batch 1 x ``seq``."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path), load_external_data=False)
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    products = [(n.input[0], n.input[1]) for n in model.graph.node
                if (n.domain, n.op_type) in WEIGHT_OPS and len(n.input) > 1 and len(weights.get(n.input[1], [])) == 2
                and not any(a.name in ("transA", "transB") and a.i for a in n.attribute)]
    if not products:
        raise SystemExit(f"{model_path}: no MatMul / Gemm / Attention reads a 2-D weight")
    # the shapes of the products' inputs at this length: run the model with them as outputs
    probe = onnx.load(str(model_path))
    known = {o.name for o in probe.graph.output}
    for name in dict.fromkeys(a for a, _ in products):
        if name not in known:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds_for(session, seq, rng, vocab))))
    del session, probe
    inputs, nodes, inits, feeds, flops = [], [], [], {}, 0
    for k, (a, w) in enumerate(products):
        shape, (rows, cols) = values[a].shape, weights[w]
        inputs.append(helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, list(shape)))
        inits.append(helper.make_tensor(f"w{k}", TensorProto.FLOAT, [rows, cols],
                                        (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32).tobytes(),
                                        raw=True))
        nodes.append(helper.make_node("MatMul", [f"x{k}", f"w{k}"], [f"y{k}"]))
        feeds[f"x{k}"] = rng.standard_normal(shape).astype(np.float32)
        flops += 2 * int(np.prod(shape[:-1])) * rows * cols
    last = helper.make_tensor_value_info(f"y{len(products) - 1}", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "gemm_floor", inputs, [last], inits)
    floor = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return floor.SerializeToString(), feeds, {"products": len(products), "gflop": round(flops / 1e9, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="bertc's model.optimized.onnx (or any ONNX)")
    parser.add_argument("--anchor", type=Path, required=True, help="the graph to compare with (same inputs)")
    parser.add_argument("--label", default=None, help="the rows' name in the results [default: the model's path]")
    parser.add_argument("--seq", type=int, nargs="+", default=[128, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=None,
                        help="the model's vocabulary size, where the graph and a spec.json beside it do not tell it "
                             "[read from them]")
    parser.add_argument("--results", type=Path, default=ROOT / "tools" / "results" / "bench_gemm_floor.json")
    args = parser.parse_args()

    from bertc.bench import Target, machine_info, time_targets
    from bertc.optimize.runtime import ort_session

    if args.vocab is not None:
        if args.vocab < 1:
            raise SystemExit(f"--vocab {args.vocab}: 1 or more")
        vocab, vocab_from = args.vocab, "--vocab"
    else:
        found = [v for v in (vocabulary_size(args.model), vocabulary_size(args.anchor)) if v]
        if not found:
            raise SystemExit(f"{args.model}: cannot tell the vocabulary size to draw token ids below (neither it nor "
                             f"{args.anchor} looks its ids up in an initializer, and no spec.json is beside them); "
                             f"give it with --vocab N")
        vocab, vocab_from = min(found)
    low, high = id_range(vocab)
    print(f"token ids drawn from {low}..{high - 1} (vocabulary {vocab}, from {vocab_from})", flush=True)
    rng = np.random.default_rng(0)
    label = args.label or str(args.model)
    sessions = {"model": ort_session(args.model, threads=args.threads, spinning=False),
                "anchor": ort_session(args.anchor, threads=args.threads, spinning=False)}
    rows, floors = [], {}
    for seq in args.seq:
        floor, floor_feeds, info = gemm_floor(args.model, seq, rng, vocab)
        floors[f"S {seq}"] = info
        sessions["gemms"] = ort_session(floor, threads=args.threads, spinning=False)
        feeds = {name: feeds_for(s, seq, rng, vocab) for name, s in sessions.items() if name != "gemms"}
        feeds["gemms"] = floor_feeds

        def target(name):
            s, f = sessions[name], feeds[name]
            return Target(name, lambda inputs: (lambda: s.run(None, f)))

        got = time_targets([target(n) for n in ("anchor", "model", "gemms")], [(1, seq)], lambda b, s: {},
                           rounds=args.rounds, warmup=2, calls=args.calls, baseline="anchor", progress=print)
        ratio = {r["target"]: r["ratio"] for r in got}
        row = {"sequence_length": seq, **info, "p50_ms": {r["target"]: r.get("p50_ms") for r in got},
               "model_over_anchor": ratio["model"], "gemms_over_anchor": ratio["gemms"],
               "rest_over_anchor": round(ratio["model"] - ratio["gemms"], 4),
               "ratio_ranges": {r["target"]: r.get("ratio_range") for r in got}}
        rows.append(row)
        print(f"{label} S {seq}: model / anchor {row['model_over_anchor']}, its {info['products']} GEMMs alone "
              f"{row['gemms_over_anchor']}, the rest {row['rest_over_anchor']}", flush=True)
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results.setdefault("models", {})[label] = {
        "command": "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]))] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine_info(),
        "model": str(args.model), "anchor": str(args.anchor),
        "settings": {"threads": args.threads, "rounds": args.rounds, "calls": args.calls, "batch": 1,
                     "token_ids": f"{low}..{high - 1} (vocabulary {vocab}, from {vocab_from})",
                     "ort_spinning": False, "interleaved": True,
                     "ratio": "median over rounds of per-round p50 ratios to the anchor"},
        "rows": rows}
    from bertc.bench import write_results

    write_results(args.results, results)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
