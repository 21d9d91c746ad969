#!/usr/bin/env python3
"""Block-wise int8 (MatMulNBits, 8 bits, accuracy_level 4) against per-tensor int8 and fp32, one MatMul at a time.

    python tools/bench_block_int8.py [--rounds 15] [--calls 20] [--threads 2] [--results FILE]

For each (M, K, N) of MiniLM's and BERT-base's MatMuls at sequence 128 (and one at 32): an fp32 ``MatMul`` by a
random weight (N(0, 0.05)); bertc's per-tensor int8 of it (``DynamicQuantizeMatMul``, 7-bit weights per column:
bertc.optimize.quantize.quantize_dynamic_int8); and ``MatMulNBits`` with 8-bit weights at block 32, 64 and 128 and
7-bit (``[-64, 64]``, what bertc writes: bertc.optimize.quantize.quantize_blocks) or full-range weights. The input
is N(0, 1) with two outlier channels 30x the rest (what real checkpoints' activations have). Recorded per variant:
the relative max error and the min per-row cosine against fp32, and the latency (ORT CPU, ``--threads``, spinning
off, interleaved rounds; ratio = median of the per-round ratios to fp32). Writes ``--results`` with the command.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = [(128, 384, 1152), (128, 384, 384), (128, 384, 1536), (128, 1536, 384), (128, 768, 768), (128, 768, 3072),
          (128, 3072, 768), (32, 768, 3072)]


def _graph(node, k: int, n: int, initializers: list):
    from onnx import TensorProto, helper

    graph = helper.make_graph([node], "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def variants(k: int, n: int, rng) -> dict:
    from onnx import helper, numpy_helper

    from bertc.optimize.quantize import quantize_blocks, quantize_dynamic_int8

    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    fp32 = _graph(helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), k, n, [numpy_helper.from_array(w, "w")])
    out = {"fp32": fp32, "per_tensor_int8": quantize_dynamic_int8(fp32).proto}
    for block in (32, 64, 128):
        for qmax, label in ((64, "7bit"), (127, "8bit")):
            q, scale = quantize_blocks(w, block, qmax)
            node = helper.make_node("MatMulNBits", ["x", "q", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=8,
                                    block_size=block, accuracy_level=4)
            out[f"block{block}_{label}"] = _graph(node, k, n, [numpy_helper.from_array(q, "q"),
                                                               numpy_helper.from_array(scale, "s")])
    return out


def session(model, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=ROOT / "tools" / "results" / "bench_block_int8.json")
    args = parser.parse_args()
    from bertc.bench import machine_info

    rows = []
    for m, k, n in SHAPES:
        rng = np.random.default_rng([m, k, n])
        sessions = {name: session(model, args.threads) for name, model in variants(k, n, rng).items()}
        x = rng.standard_normal((m, k)).astype(np.float32)
        x[:, [3, 77]] *= 30.0
        want = sessions["fp32"].run(None, {"x": x})[0]
        times = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, s in sessions.items():
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    s.run(None, {"x": x})
                times[name].append((time.perf_counter() - t0) / args.calls)
        row = {"m": m, "k": k, "n": n, "variants": {}}
        for name, s in sessions.items():
            got = s.run(None, {"x": x})[0]
            cos = np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
            row["variants"][name] = {
                "relative_max_error": round(float(np.abs(got - want).max() / np.abs(want).max()), 5),
                "min_row_cosine": round(float(cos.min()), 6),
                "p50_ms": round(statistics.median(times[name]) * 1e3, 4),
                "ratio_to_fp32": round(statistics.median(a / b for a, b in zip(times[name], times["fp32"])), 3)}
        rows.append(row)
        print(f"{m} x {k} x {n}: " + ", ".join(f"{name} {v['ratio_to_fp32']:.2f} (cos {v['min_row_cosine']:.5f})"
                                               for name, v in row["variants"].items()), flush=True)
    result = {"command": "python " + shlex.join(["tools/bench_block_int8.py", *sys.argv[1:]]),
              "machine": machine_info(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "method": f"ORT CPU, {args.threads} threads, spinning off, {args.rounds} interleaved rounds x "
                        f"{args.calls} calls; ratio = median of per-round ratios to fp32; input N(0, 1) with two "
                        "channels x30", "rows": rows}
    from bertc.bench import write_results

    write_results(args.results, result)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
