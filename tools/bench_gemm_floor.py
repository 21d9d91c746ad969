#!/usr/bin/env python3
"""How much of an optimized graph's time its weight GEMMs alone take: the floor of any fp32 graph of that model.

    python tools/bench_gemm_floor.py --model OUT/model.optimized.onnx --anchor ANCHOR.onnx [--seq 128 32]
                                     [--rounds 10] [--calls 3] [--threads 2] [--label NAME] [--results FILE]

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
rotary, the embeddings), the room a faster graph would have to find. Writes tools/results/bench_gemm_floor.json
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

WEIGHT_OPS = {("", "MatMul"), ("", "Gemm"), ("com.microsoft", "FusedMatMul"), ("com.microsoft", "Attention")}


def feeds_for(session, seq: int, rng) -> dict:
    """Batch 1 x ``seq``, every token real, ids in 5..999."""
    feeds = {}
    for i in session.get_inputs():
        dtype = np.int64 if "int64" in i.type else np.int32
        if "mask" in i.name:
            feeds[i.name] = np.ones((1, seq), dtype)
        elif "type" in i.name:
            feeds[i.name] = np.zeros((1, seq), dtype)
        else:
            feeds[i.name] = rng.integers(5, 1000, (1, seq)).astype(dtype)
    return feeds


def gemm_floor(model_path: Path, seq: int, rng):
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
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds_for(session, seq, rng))))
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
    parser.add_argument("--results", type=Path, default=ROOT / "tools" / "results" / "bench_gemm_floor.json")
    args = parser.parse_args()

    from bertc.bench import Target, machine_info, time_targets
    from bertc.optimize.runtime import ort_session

    rng = np.random.default_rng(0)
    label = args.label or str(args.model)
    sessions = {"model": ort_session(args.model, threads=args.threads, spinning=False),
                "anchor": ort_session(args.anchor, threads=args.threads, spinning=False)}
    rows, floors = [], {}
    for seq in args.seq:
        floor, floor_feeds, info = gemm_floor(args.model, seq, rng)
        floors[f"S {seq}"] = info
        sessions["gemms"] = ort_session(floor, threads=args.threads, spinning=False)
        feeds = {name: feeds_for(s, seq, rng) for name, s in sessions.items() if name != "gemms"}
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
                     "ort_spinning": False, "interleaved": True,
                     "ratio": "median over rounds of per-round p50 ratios to the anchor"},
        "rows": rows}
    from bertc.bench import write_results

    write_results(args.results, results)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
