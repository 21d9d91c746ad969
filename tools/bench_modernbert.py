#!/usr/bin/env python3
"""Issue 17's ModernBERT benchmark: bertc's ModernBERT-base artifacts against the best ONNX a user gets elsewhere.

    flock /work/wt/heavy.lock python tools/bench_modernbert.py [--work DIR] [--rebuild] [--rounds 5] [--calls 3]
    python tools/bench_modernbert.py --fidelity      # the tiny fixtures: every backend against transformers

1. The anchor, in the side environment (``--hf-python``, default /work/envs/hf/bin/python; this same file run with
   ``--anchor OUT``): transformers' ModernBertForSequenceClassification at ModernBERT-base size (22 x 768,
   intermediate 1,152, 12 heads, vocab 50,368, local window 128, a global layer every third; random init,
   seed 0, 2 labels, cls pooling), saved with ``save_pretrained`` (bertc imports that very checkpoint);
   ``torch.onnx.export`` (TorchScript exporter, opset 17, ``attn_implementation="eager"``, dynamic batch and
   sequence) of the classifier and of its ModernBertModel; ``onnxruntime.transformers.optimizer``
   (``model_type="bert"``) on each; ORT dynamic int8 (QInt8 weights) of the fused graphs. An export or fusion
   that fails is recorded (``anchor.json``) and the comparison falls back to the unfused export.
2. bertc: ``bertc import`` of that checkpoint (the classifier, and ``--encoder-only`` for the encoder), then
   ``bertc build`` (ONNX portable, optimized and int8; parity on; TFLite off; ``max_sequence_length`` 512, the
   longest length timed, so that the build's checks run at 512 rather than the model's 8,192; parity at batch 1 x
   the timed lengths).
3. Times every artifact interleaved in one process (bertc.bench's timing core): batch 1 x sequence 128 and 512,
   ORT CPU with 2 intra-op threads, spinning off; ratios are medians of per-round ratios to the fused anchor.
   Targets (issue 17): bertc optimized <= 0.80 of the fused anchor; bertc int8 <= the anchor's int8.
4. Writes tools/results/bench_modernbert.json: the command, the machine, both sides' fusion statistics and node
   counts, the builds' parity, every row.

``--fidelity``: ``bertc import`` + ``bertc build`` of every tests/fixtures/hf/modernbert_* fixture, then the max abs
difference to transformers' outputs (at the real tokens for per-token outputs) of model.keras, model.onnx,
model.optimized.onnx, model.optimized.int8.onnx and model.tflite; writes tools/results/modernbert_fidelity.json.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = dict(vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12,
            max_position_embeddings=8192, local_attention=128, global_attn_every_n_layers=3,
            global_rope_theta=160000.0, local_rope_theta=10000.0, pad_token_id=50283, bos_token_id=50281,
            cls_token_id=50281, eos_token_id=50282, sep_token_id=50282, num_labels=2, classifier_pooling="cls")
SHAPES = [(1, 128), (1, 512)]
MAX_LEN = 512
# (target, baseline, bound or None)
TARGETS = [
    ("classifier/onnx_optimized_cpu", "hf/classifier", 0.80),
    ("classifier/onnx_int8_cpu", "hf/classifier_int8", 1.00),
    ("classifier/onnx_cpu", "hf/classifier", None),
    ("hf/classifier_export", "hf/classifier", None),
    ("hf/classifier_int8", "hf/classifier", None),
    ("encoder/onnx_optimized_cpu", "hf/encoder", 0.80),
    ("encoder/onnx_int8_cpu", "hf/encoder_int8", 1.00),
    ("encoder/onnx_cpu", "hf/encoder", None),
    ("hf/encoder_export", "hf/encoder", None),
    ("hf/encoder_int8", "hf/encoder", None),
]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the anchor (side environment: torch + transformers) --------------------------------------------------

def node_counts(path: Path) -> dict:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    return {"nodes": len(graph.node), "op_types": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))}


def make_anchor(out: Path, seed: int) -> int:
    import onnx
    import onnxruntime
    import torch
    import transformers
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    config = transformers.ModernBertConfig(**BASE)
    config._attn_implementation = "eager"           # the attention pattern ORT's optimizer looks for
    classifier = transformers.ModernBertForSequenceClassification(config).eval()
    classifier.save_pretrained(out / "hf_classifier", safe_serialization=True)
    made = {"config": f"ModernBERT-base (random init, seed {seed}), {BASE}", "torch": torch.__version__,
            "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__,
            "checkpoint": str(out / "hf_classifier"), "files": {}}
    models = {"classifier": (classifier, "logits"), "encoder": (classifier.model, "last_hidden_state")}

    class ByName(torch.nn.Module):
        def __init__(self, inner, output):
            super().__init__()
            self.inner, self.output = inner, output

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)[self.output]

    for name, (model, output) in models.items():
        entry = made["files"][name] = {"output": output}
        raw, fused, int8 = (out / f"{name}{suffix}.onnx" for suffix in ("", ".opt", ".opt.int8"))
        ids = torch.ones(1, 16, dtype=torch.long)
        axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                output: {0: "batch", 1: "sequence"} if output == "last_hidden_state" else {0: "batch"}}
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                torch.onnx.export(ByName(model, output), (ids, torch.ones_like(ids)), str(raw),
                                  input_names=["input_ids", "attention_mask"], output_names=[output],
                                  dynamic_axes=axes, opset_version=17, do_constant_folding=True, dynamo=False)
        except Exception as exc:
            entry["export_error"] = f"{type(exc).__name__}: {exc}"
            log(f"{name}: torch.onnx.export failed: {entry['export_error']}")
            continue
        entry["export"] = {"path": raw.name, "seconds": round(time.perf_counter() - t0, 1), **node_counts(raw)}
        t1 = time.perf_counter()
        quantize_from = raw
        try:
            opt = optimizer.optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads,
                                           hidden_size=config.hidden_size)
            opt.save_model_to_file(str(fused))
            entry["fused"] = {"path": fused.name, "seconds": round(time.perf_counter() - t1, 1), **node_counts(fused),
                              "fusion_statistics": {k: v for k, v in opt.get_fused_operator_statistics().items() if v}}
            quantize_from = fused
        except Exception as exc:
            entry["fusion_error"] = f"{type(exc).__name__}: {exc}"
            log(f"{name}: the optimizer failed: {entry['fusion_error']}")
        t2 = time.perf_counter()
        # the fused com.microsoft ops defeat shape inference: say the MatMul outputs are float
        quantize_dynamic(str(quantize_from), str(int8), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        entry["int8"] = {"path": int8.name, "from": quantize_from.name, "seconds": round(time.perf_counter() - t2, 1),
                         **node_counts(int8)}
        log(f"{name}: {entry['export']['nodes']} nodes exported, {entry.get('fused', {}).get('nodes')} fused, "
            f"{entry['int8']['nodes']} int8")
    (out / "anchor.json").write_text(json.dumps(made, indent=2) + "\n")
    return 0


# --- bertc's side --------------------------------------------------------------------------------------

def run(cmd: list[str], what: str) -> None:
    log(f"$ {shlex.join(cmd)}")
    t0 = time.perf_counter()
    proc = subprocess.run(["nice", *cmd], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}")
    log(f"  {what}: {time.perf_counter() - t0:.0f}s")


def ensure_anchor(work: Path, hf_python: str, rebuild: bool) -> Path:
    out = work / "anchor"
    if not rebuild and (out / "anchor.json").exists():
        log(f"reusing the anchor in {out}")
        return out
    run([hf_python, str(Path(__file__).resolve()), "--anchor", str(out)], "anchor")
    return out


def ensure_build(name: str, checkpoint: Path, work: Path, rebuild: bool) -> Path:
    """``bertc import`` + ``bertc build`` of the anchor's checkpoint (``encoder``: --encoder-only)."""
    out, spec_path = work / name, work / f"{name}.spec.json"
    if not rebuild and (out / "report.json").exists() and json.loads((out / "report.json").read_text()).get(
            "status") == "passed":
        log(f"reusing {out}")
        return out
    run([sys.executable, "-m", "bertc.cli", "import", str(checkpoint), "-o", str(spec_path), "--force",
         *(["--encoder-only"] if name == "encoder" else [])], f"bertc import {name}")
    spec = json.loads(spec_path.read_text())
    spec["name"] = f"modernbert_base_{name}"
    spec["encoder"]["max_sequence_length"] = MAX_LEN
    spec["export"] = {**spec.get("export", {}), "tflite": False, "variants": ["onnx_int8"]}
    # parity at the timed shapes (batch 1, S 128 and 512, and a random mask at 512): the tiny fixtures test the
    # whole grid; here it is the base-size artifacts that are checked before they are timed
    spec["parity"] = {"batch_sizes": [1], "sequence_lengths": [s for _, s in SHAPES]}
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    run([sys.executable, "-m", "bertc.cli", "build", str(spec_path), "-o", str(out), "--force"], f"bertc build {name}")
    return out


def fidelity(results: Path, command: str) -> int:
    import tempfile

    import numpy as np

    sys.path.insert(0, str(ROOT))
    from bertc.importers import import_spec
    from bertc.parity import keras_runner, onnx_runner, tflite_runner
    from bertc.pipeline import BuildOptions, build
    from bertc.transfer import load_keras_model

    table = {}
    for fixture in sorted((ROOT / "tests" / "fixtures" / "hf").glob("modernbert_*")):
        ref = dict(np.load(fixture / "reference.npz"))
        names = [n for n in ("sequence_output", "logits", "start_logits", "end_logits", "sentence_embedding")
                 if n in ref]
        x = {"input_word_ids": ref["input_word_ids"], "input_mask": ref["input_mask"]}
        with tempfile.TemporaryDirectory() as tmp:
            spec = Path(tmp) / "spec.json"
            import_spec(fixture, spec)
            report = build(spec, BuildOptions(out=Path(tmp) / "out"))
            out = Path(tmp) / "out"
            runners = {"keras": keras_runner(load_keras_model(out)), "onnx": onnx_runner(out / "model.onnx"),
                       "onnx_optimized": onnx_runner(out / "model.optimized.onnx"),
                       "onnx_int8": onnx_runner(out / "model.optimized.int8.onnx"),
                       "tflite": tflite_runner(out / "model.tflite")}
            row = {}
            for backend, run in runners.items():
                got, row[backend] = run(x), 0.0
                for name in names:
                    have, want = np.asarray(got[name]), ref[name]
                    if have.ndim == 3 or name in ("start_logits", "end_logits"):   # per token: the real ones
                        real = ref["input_mask"].astype(bool)
                        have, want = have[real], want[real]
                    row[backend] = max(row[backend], float(np.abs(have - want).max()))
            row["fusion"] = report["fusion"]["fused_ops"] if "fused_ops" in report["fusion"] else None
            table[fixture.name] = row
        log(f"{fixture.name}: " + ", ".join(f"{k} {v:.2g}" for k, v in row.items() if isinstance(v, float)))
    results.write_text(json.dumps({"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                   "compared": "max abs diff to transformers 5 (eager), real tokens of per-token "
                                               "outputs", "fixtures": table}, indent=2) + "\n")
    print(f"wrote {results}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchor", type=Path, default=None, metavar="OUT",
                        help="(side environment) write the anchor into OUT and exit")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bertc-bench-modernbert"),
                        help="where the checkpoint, the anchor and the builds go (about 4 GB)")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--hf-python", default=os.environ.get("BERTC_HF_PYTHON", "/work/envs/hf/bin/python"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fidelity", action="store_true", help="the tiny fixtures against transformers instead")
    parser.add_argument("--results", type=Path, default=None,
                        help="default tools/results/bench_modernbert.json (--fidelity: modernbert_fidelity.json)")
    args = parser.parse_args()
    if args.anchor is not None:
        return make_anchor(args.anchor, args.seed)
    command = shlex.join([sys.executable, *sys.argv])
    if args.fidelity:
        return fidelity(args.results or ROOT / "tools" / "results" / "modernbert_fidelity.json", command)
    args.results = args.results or ROOT / "tools" / "results" / "bench_modernbert.json"
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tools"))
    args.work.mkdir(parents=True, exist_ok=True)
    anchor = ensure_anchor(args.work, args.hf_python, args.rebuild)
    made = json.loads((anchor / "anchor.json").read_text())
    builds = {name: ensure_build(name, anchor / "hf_classifier", args.work, args.rebuild)
              for name in ("classifier", "encoder")}

    import bertc.components  # noqa: F401
    from bench_optimized import anchor_target, bertc_targets, parity_of
    from bertc.bench import bench_inputs, machine_info, round_ratio, time_targets
    from bertc.spec import load_spec

    targets, unavailable = [], {}
    for name, out in builds.items():
        found, missing = bertc_targets(name, out, args.threads)
        targets += [t for t in found if t.name.split("/")[1] in ("onnx_cpu", "onnx_optimized_cpu", "onnx_int8_cpu")]
        unavailable.update(missing)
    baselines = {}
    for name in ("classifier", "encoder"):
        entry = made["files"][name]
        for label, key, file in ((f"hf/{name}", "fused", f"{name}.opt.onnx"), (f"hf/{name}_int8", "int8",
                                                                               f"{name}.opt.int8.onnx"),
                                 (f"hf/{name}_export", "export", f"{name}.onnx")):
            if key in entry:
                targets.append(anchor_target(label, anchor / file, args.threads))
            else:
                unavailable[label] = entry.get("fusion_error") or entry.get("export_error") or "not made"
        # no fused anchor (the optimizer failed): the unfused export is the baseline, as the issue says
        baselines[f"hf/{name}"] = f"hf/{name}" if "fused" in entry else f"hf/{name}_export"
    log(f"timing {len(targets)} targets: {', '.join(t.name for t in targets)}")
    before = machine_info()
    spec = load_spec(builds["classifier"] / "spec.json")
    rows = time_targets(targets, SHAPES, bench_inputs(spec), args.rounds, args.warmup, args.calls,
                        baselines["hf/classifier"], progress=log)
    after = machine_info()

    ratios, checks = [], []
    for target, base, bound in TARGETS:
        base = baselines.get(base, base)
        for batch, seq in SHAPES:
            value = round_ratio(rows, target, base, batch, seq)
            ratios.append({"target": target, "baseline": base, "batch": batch, "sequence_length": seq, "ratio": value})
            if bound is not None:
                checks.append({"target": target, "baseline": base, "sequence_length": seq, "ratio": value,
                               "bound": bound, "met": None if value is None else value <= bound})
    load = before["load_average"] or [0.0]
    fusion = {name: json.loads((out / "report.json").read_text())["artifacts"] for name, out in builds.items()}
    result = {
        "command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "settings": {"shapes": [{"batch": b, "sequence_length": s} for b, s in SHAPES], "threads": args.threads,
                     "rounds": args.rounds, "calls": args.calls, "warmup": args.warmup, "ort_spinning": False,
                     "interleaved": True, "ratio": "median over rounds of per-round p50 ratios", "clock": "wall"},
        "machine": {**before, "load_average_after": after["load_average"]},
        "notes": [f"1-min load average {load[0]:.1f} just before timing on {os.cpu_count()} cores (a machine shared "
                  f"with other engineers: see each row's ratio_range)"],
        "unavailable": unavailable,
        "bertc": {name: {"path": str(out), "artifacts": fusion[name], "parity": parity_of(out)}
                  for name, out in builds.items()},
        "anchor": made, "ratios": ratios, "targets_met": checks, "results": rows,
    }
    from bertc.bench import write_results

    write_results(args.results, result, indent=2)
    print(f"\n{'target':<32} " + " ".join(f"{'B%d S%d p50 ms' % s:>14}" for s in SHAPES))
    for t in targets:
        cells = []
        for batch, seq in SHAPES:
            row = next(r for r in rows if r["target"] == t.name and r["sequence_length"] == seq)
            cells.append(f"{row['p50_ms']:>14.1f}" if "error" not in row else f"{'failed':>14}")
        print(f"{t.name:<32} " + " ".join(cells))
    print(f"\n{'ratio':<32} {'to':<22} " + " ".join(f"{'S%d' % s:>8}" for _, s in SHAPES))
    for target, base, _ in TARGETS:
        values = [r["ratio"] for r in ratios if r["target"] == target]
        shown = next(r["baseline"] for r in ratios if r["target"] == target)
        print(f"{target:<32} {shown:<22} " + " ".join(f"{v:>8.3f}" if v is not None else f"{'-':>8}" for v in values))
    for c in checks:
        verdict = "not measured" if c["met"] is None else ("met" if c["met"] else "NOT met")
        print(f"target {c['target']} S{c['sequence_length']}: {c['ratio']} (<= {c['bound']} of {c['baseline']}) "
              f"{verdict}")
    for k, v in unavailable.items():
        print(f"unavailable {k}: {v}")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
