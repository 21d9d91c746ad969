"""Ad-hoc measurement: node counts and ORT CPU latency of bertc's optimized ONNX artifacts against
its portable tf2onnx model.onnx, for one spec (default: BERT-base classifier), built in-process.

    PYTHONPATH=. python tools/measure_optimized.py specs/bert_base_classifier.json --seq 128 32

Sessions run in one process with a fixed intra-op thread count and thread spinning disabled; rounds
are interleaved (each round runs every artifact once, in rotating order) and the figure is the
median over rounds of each artifact's latency divided by the portable model's in the same round.
Not a test and not imported by bertc.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def session(path, threads):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    o.log_severity_level = 3
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def optimized_node_count(path):
    """Nodes after ORT's own ORT_ENABLE_ALL pass (what actually runs)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        o = ort.SessionOptions()
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        o.optimized_model_filepath = str(Path(d) / "opt.onnx")
        o.log_severity_level = 3
        ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
        import onnx

        return len(onnx.load(o.optimized_model_filepath, load_external_data=False).graph.node)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", nargs="?", default="specs/bert_base_classifier.json")
    ap.add_argument("--seq", type=int, nargs="+", default=[128, 32])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--cpu-time", action="store_true",
                    help="1 intra-op thread (runs on the calling thread) and that thread's CPU time instead of wall "
                         "time: robust on a machine shared with other jobs")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bertc-measure")
    ap.add_argument("--results", type=Path, help="also write the figures (and this command) to this JSON file")
    args = ap.parse_args()

    from bertc.build import build_model
    from bertc.export.onnx import export_onnx
    from bertc.inputs import make_inputs
    from bertc.optimize.lower import lower_model
    from bertc.optimize.onnx_artifacts import optimize_onnx
    from bertc.signature import signature_of
    from bertc.spec import load_spec

    spec = load_spec(args.spec)
    sig = signature_of(spec)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = build_model(spec, sig)
    print(f"built {spec.name} in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    portable = export_onnx(model, sig, out / "model.onnx")
    print(f"tf2onnx export {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    result = optimize_onnx(model, spec, sig, out, variants=("onnx_int8",), portable=portable)
    print(f"optimize onnx {time.perf_counter() - t0:.1f}s")
    import onnx

    encoder = lower_model(model, spec, sig, prune=False).proto   # the whole last layer: the encoder alone
    onnx.save_model(encoder, str(out / "model.optimized.unpruned.onnx"))
    paths = {"portable": out / "model.onnx", "optimized": out / "model.optimized.onnx",
             "optimized_unpruned": out / "model.optimized.unpruned.onnx", "int8": out / "model.optimized.int8.onnx"}
    nodes = {k: len(onnx.load(str(p), load_external_data=False).graph.node) for k, p in paths.items()}
    after_ort = {k: optimized_node_count(p) for k, p in paths.items()}
    print("nodes (file):", nodes)
    print("nodes after ORT_ENABLE_ALL:", after_ort)
    print("fused ops:", result["fusion"]["fused_ops"])
    print("structural check:", result["fusion"]["structural_check"]["outputs"], "self check:", result["fusion"]["self_check_max_abs"])
    if args.cpu_time:
        args.threads = 1
    clock = time.thread_time if args.cpu_time else time.perf_counter
    sessions = {k: session(p, args.threads) for k, p in paths.items()}
    figures = {"spec": spec.name, "threads": args.threads, "rounds": args.rounds,
               "clock": "thread CPU time" if args.cpu_time else "wall", "nodes": nodes,
               "nodes_after_ort": after_ort, "latency": {}}
    for seq in args.seq:
        rng = np.random.default_rng(seq)
        inputs = make_inputs(spec, 1, seq, rng, lengths=[seq])
        names = list(sessions)
        for s in sessions.values():            # warm-up
            for _ in range(3):
                s.run(None, inputs)
        times = {k: [] for k in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for k in order:
                t = clock()
                sessions[k].run(None, inputs)
                times[k].append(clock() - t)
        ratios = {k: statistics.median(a / b for a, b in zip(times[k], times["portable"])) for k in names}
        medians = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        pruning = statistics.median(a / b for a, b in zip(times["optimized"], times["optimized_unpruned"]))
        figures["latency"][f"B1xS{seq}"] = {"median_ms": medians, "ratio_to_portable": ratios,
                                            "pruned_over_unpruned": pruning}
        print(f"B1 x S{seq}: " + ", ".join(f"{k} {medians[k]:.1f} ms ({ratios[k]:.2f})" for k in names)
              + f"; pruned / unpruned {pruning:.3f}")
    print(json.dumps(figures, indent=1))
    if args.results:
        import shlex
        import sys

        figures = {"command": shlex.join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                   **figures}
        args.results.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
