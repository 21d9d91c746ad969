#!/usr/bin/env python3
"""What the portable path inside the optimized graph buys a plug-in: BERT-base with a plug-in attention
that has no ONNX lowering of its own.

    PYTHONPATH=. python tools/bench_plugin.py [--rounds 12] [--calls 5] [--threads 2] [--seq 128 32]

The plug-in (``doubled_logits`` from examples/plugins/doubled_logits.py: multi-head attention with its
logits doubled, loaded the way ``bertc --plugin`` loads a user's plug-in) has no ``onnx_lowering``, so each layer's attention is converted alone by
tf2onnx and spliced into ``model.optimized.onnx``; embeddings, residual + layer norms, GELU and the pooler
stay fused. The model is built in-process from specs/bert_base_classifier.json with the attention
swapped, exported both ways, checked against Keras, and the optimized, its int8 variant and the portable
``model.onnx`` are timed interleaved with bertc.bench's timing core (B1, spinning off, median of per-round
ratios to the portable graph). Figures, node counts and the optimize stage's time go to
tools/results/plugin_bert_base.json with this command. Not a test and not imported by bertc.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seq", type=int, nargs="+", default=[128, 32])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bertc-bench-plugin")
    parser.add_argument("--results", type=Path, default=ROOT / "tools" / "results" / "plugin_bert_base.json")
    args = parser.parse_args()
    command = shlex.join(["PYTHONPATH=.", "python", *sys.argv])

    import bertc.components  # noqa: F401
    from bertc.bench import Target, bench_inputs, machine_info, round_ratio, set_tensorflow_threads, time_targets
    from bertc.build import build_model
    from bertc.export.onnx import export_onnx
    from bertc.optimize.onnx_artifacts import INT8_FILE, OPTIMIZED_FILE, max_abs_vs_keras, optimize_onnx
    from bertc.optimize.runtime import sample_inputs
    from bertc.signature import signature_of
    from bertc.spec import load_spec

    from bertc.plugins import load_plugins

    set_tensorflow_threads(args.threads)
    load_plugins([str(ROOT / "examples" / "plugins" / "doubled_logits.py")])
    data = json.loads((ROOT / "specs" / "bert_base_classifier.json").read_text())
    data["name"] = "bert_base_classifier_plugin_attention"
    data["encoder"] = {"type": "scaffold", "hidden_size": 768, "num_layers": 12,
                       "embedding": {"type": "standard", "vocab_size": data["encoder"]["vocab_size"],
                                     "type_vocab_size": data["encoder"].get("type_vocab_size", 2),
                                     "max_sequence_length": data["encoder"].get("max_sequence_length", 512)},
                       "hidden": {"type": "scaffold", "attention": {"type": "doubled_logits", "num_heads": 12},
                                  "feedforward": {"type": "dense", "intermediate_size": 3072, "activation": "gelu"}}}
    spec = load_spec(data)
    sig = signature_of(spec)
    built = build_model(spec, sig)
    model = built.model
    args.out.mkdir(parents=True, exist_ok=True)
    portable = export_onnx(model, sig, args.out / "model.onnx")
    t0 = time.perf_counter()
    result = optimize_onnx(built, args.out, variants=("onnx_int8",), portable=portable)
    optimize_seconds = time.perf_counter() - t0
    if result.skip is not None or not result.passed:
        raise SystemExit(f"no optimized artifact: {result.mismatch or result.skip.reason}")
    fusion = result.section()

    from bertc.backends import CPU, Backend, onnx_feeds, ort_session

    check = sample_inputs(spec, "int32")
    targets, max_abs = [], {}
    for name, file, precision in (("portable", "model.onnx", "fp32"), ("optimized", OPTIMIZED_FILE, "fp32"),
                                  ("int8", INT8_FILE, "int8")):
        session = ort_session(Backend(name, name, args.out / file, "onnx", precision, CPU), threads=args.threads,
                              spinning=False)
        max_abs[name] = max_abs_vs_keras(session, model, check)

        def prepare(inputs, session=session):
            feeds = onnx_feeds(session, inputs)
            return lambda: session.run(None, feeds)
        targets.append(Target(name, prepare))
    shapes = [(1, s) for s in args.seq]
    before = machine_info()
    rows = time_targets(targets, shapes, bench_inputs(spec), args.rounds, args.warmup, args.calls, "portable",
                        progress=lambda text: print(text, file=sys.stderr, flush=True))
    ratios = {f"{t}/portable B1xS{s}": round_ratio(rows, t, "portable", 1, s)
              for t in ("optimized", "int8") for _, s in shapes}
    out = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "machine": {**before, "load_average_after": machine_info()["load_average"]},
           "settings": {"threads": args.threads, "rounds": args.rounds, "calls": args.calls, "warmup": args.warmup,
                        "ort_spinning": False, "ratio": "median over rounds of per-round p50 ratios"},
           "nodes": fusion["nodes"], "fused_ops": fusion["fused_ops"], "not_lowered": fusion["not_lowered"],
           "optimize_stage_seconds": round(optimize_seconds, 1), "portable_export_seconds": portable["total_seconds"],
           "max_abs_vs_keras": max_abs, "structural_check_passed": fusion["structural_check"]["passed"],
           "ratios": ratios, "results": rows}
    from bertc.bench import write_results

    write_results(args.results, out, indent=2)
    print(f"nodes: {fusion['nodes']}; fused: {fusion['fused_ops']}")
    print(f"layers on the portable path: {len(fusion['not_lowered'])}; optimize stage {optimize_seconds:.1f}s")
    print(f"max abs vs Keras: {max_abs}")
    for k, v in ratios.items():
        print(f"{k}: {v}")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
