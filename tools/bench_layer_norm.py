#!/usr/bin/env python3
"""Why bertc's optimized artifact writes a residual and its layer norm as ``Sum + LayerNormalization``.

    python tools/bench_layer_norm.py [--hidden 768] [--rounds 15] [--calls 50] [--results FILE]

One-node-pattern models, ``y = LayerNorm(x + skip + bias)`` over (1, S, hidden) float32 with dynamic batch and
sequence axes, written three ways:

- ``skip_layer_norm``: com.microsoft ``SkipLayerNormalization(x, skip, gamma, beta, bias)`` (what ORT's own
  transformers optimizer, and bertc before, write);
- ``add_layer_norm``: ``Add(Add(x, bias), skip)`` + ``LayerNormalization``, which ORT's session optimizer
  (SkipLayerNormFusion) fuses back into SkipLayerNormalization: the op it runs is recorded;
- ``sum_layer_norm``: ``Sum(Add(x, bias), skip)`` + ``LayerNormalization`` (bertc's default,
  ``export.skip_layer_norm = "decomposed"``), which that pass does not match.

Each is timed with ONNX Runtime's CPU provider (spinning off) at 1 and 2 intra-op threads and S = 32, 128, 512,
interleaved in rounds; the ratio is the median over rounds of the per-round ratio of medians to
``skip_layer_norm``. Writes tools/results/bench_layer_norm.json with the command and the machine.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KINDS = ("skip_layer_norm", "add_layer_norm", "sum_layer_norm")


def pattern(kind: str, hidden: int):
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {name: rng.normal(size=hidden).astype(np.float32) for name in ("gamma", "beta", "bias")}
    if kind == "skip_layer_norm":
        nodes = [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], ["y"],
                                  domain="com.microsoft", epsilon=1e-12)]
    else:
        nodes = [helper.make_node("Add", ["x", "bias"], ["biased"]),
                 helper.make_node("Add" if kind == "add_layer_norm" else "Sum", ["biased", "skip"], ["summed"]),
                 helper.make_node("LayerNormalization", ["summed", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    value = lambda name: helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", "sequence", hidden])
    graph = helper.make_graph(nodes, kind, [value("x"), value("skip")], [value("y")],
                              [numpy_helper.from_array(w, name) for name, w in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def session(model, threads: int, as_run: Path = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    if as_run is not None:
        options.optimized_model_filepath = str(as_run)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> int:
    import onnx
    import onnxruntime as ort

    from bertc.bench import machine_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--results", type=Path, default=ROOT / "tools" / "results" / "bench_layer_norm.json")
    args = parser.parse_args()
    models = {kind: pattern(kind, args.hidden) for kind in KINDS}
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, model in models.items():
            path = Path(tmp) / f"{kind}.onnx"
            session(model, 1, path)
            runs[kind] = sorted({n.op_type for n in onnx.load(str(path)).graph.node})
    rows = []
    for threads in (1, 2):
        sessions = {kind: session(m, threads) for kind, m in models.items()}
        for seq in (32, 128, 512):
            rng = np.random.default_rng(seq)
            feeds = {name: rng.normal(size=(1, seq, args.hidden)).astype(np.float32) for name in ("x", "skip")}
            ref = sessions["skip_layer_norm"].run(None, feeds)[0]
            per_round = {kind: [] for kind in KINDS}
            for kind, s in sessions.items():
                for _ in range(10):
                    s.run(None, feeds)
            for _ in range(args.rounds):
                for kind, s in sessions.items():
                    times = []
                    for _ in range(args.calls):
                        t0 = time.perf_counter()
                        s.run(None, feeds)
                        times.append(time.perf_counter() - t0)
                    per_round[kind].append(float(np.median(times)))
            base = np.array(per_round["skip_layer_norm"])
            for kind in KINDS:
                got = sessions[kind].run(None, feeds)[0]
                rows.append({"threads": threads, "sequence_length": seq, "pattern": kind, "ops_run": runs[kind],
                             "median_ms": round(1e3 * float(np.median(per_round[kind])), 4),
                             "ratio_to_skip_layer_norm": round(float(np.median(np.array(per_round[kind]) / base)), 3),
                             "max_abs_diff_to_skip_layer_norm": float(np.max(np.abs(got - ref)))})
                print(f"threads {threads} S {seq:4d} {kind:16s} {rows[-1]['median_ms']:8.4f} ms  "
                      f"x{rows[-1]['ratio_to_skip_layer_norm']:.3f}  runs {'+'.join(runs[kind])}")
    result = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "onnxruntime": ort.__version__,
              "hidden": args.hidden, "rounds": args.rounds, "calls": args.calls, "machine": machine_info(),
              "rows": rows}
    from bertc.bench import write_results

    write_results(args.results, result, indent=2)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
