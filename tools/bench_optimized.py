#!/usr/bin/env python3
"""Issue 8's target benchmark: bertc's BERT-base artifacts against the fused Hugging Face anchor.

    python tools/bench_optimized.py [--work DIR] [--rebuild] [--rounds 10] [--calls 10] [--threads 2]
    python tools/bench_optimized.py --pruning [SPEC] [--seq 128 32] [--cpu-time] [--results FILE]

1. Builds (or reuses, when the work directory holds a passed build of the same spec by the same bertc
   sources) bertc's artifacts for specs/bert_base_classifier.json and specs/bert_base_encoder.json, each
   in a subprocess (`bertc build`, parity included): ONNX (portable, optimized, int8) for both, and the
   classifier's TFLite fp32 + int8 in a build of their own (optional: the TFLite converter needs ~10 GB).
2. Builds (or reuses) the anchor in a side environment with torch + transformers (`--hf-python`,
   default /work/envs/hf/bin/python) through tools/hf_anchor.py: HF BertForSequenceClassification and
   BertModel (bert-base config, random init), torch.onnx.export opset 17, onnxruntime.transformers
   optimizer (model_type bert), plus ORT dynamic int8 of the fused graphs.
3. Times everything interleaved in this one process with bertc.bench's timing core: batch 1 x
   sequence 128 and 32, fixed intra-op threads, thread spinning off, median of per-round ratios.
4. Prints ratios to the anchor (classifier artifacts vs the HF classifier, encoder artifacts vs
   HF BertModel, TFLite int8 vs TFLite fp32), node counts, the issue's targets; writes
   tools/results/bench_optimized.json with the exact command.
5. The floor of the pruned classifier: an encoder build with BERT-base's last layer removed (11 layers), timed
   against the HF classifier. A classifier whose pruned last layer and head cost nothing would measure this, so
   a target below the floor cannot be met by any lowering of the last layer on the machine at hand.
6. The least a pruned last layer can cost: one row through one layer's weight matrices (each read once,
   matrix-vector products bound by memory), timed over 12 distinct copies (no cache helps) and divided by 12.
   floor + that is the least any exact fp32 pruned classifier can measure here (``least_possible``).

``--pruning [SPEC]`` (default specs/bert_base_classifier.json) measures last-layer pruning instead: it builds
SPEC (`bertc build`, ONNX only, int8 variant, parity off), lowers the same model once more without pruning
(the whole last layer), and times ``model.onnx``, ``model.optimized.onnx``, the unpruned graph and
``model.optimized.int8.onnx`` at batch 1 x each ``--seq``: node counts (in the file and after ORT's own
ORT_ENABLE_ALL pass), latency ratios to ``model.onnx`` and pruned / unpruned (median of per-round ratios);
``--results`` writes them (tools/results/optimized_bert_base*.json).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLASSIFIER, ENCODER = ROOT / "specs" / "bert_base_classifier.json", ROOT / "specs" / "bert_base_encoder.json"
# The bench builds: (spec, export settings, required). The TFLite artifacts get a build of their own: the
# TFLite converter peaks near 10 GB on BERT-base, and when it cannot run, the ONNX figures still stand.
# (spec, export settings, encoder overrides, required)
BUILDS = {"classifier": (CLASSIFIER, {"tflite": False, "variants": ["onnx_int8"]}, {}, True),
          "encoder": (ENCODER, {"tflite": False, "variants": ["onnx_int8"]}, {}, True),
          "classifier_tflite": (CLASSIFIER, {"onnx": False, "optimized": False, "variants": ["tflite_int8"]}, {}, False),
          # The floor of last-layer pruning: BERT-base's encoder with its last layer gone (11 layers). A classifier
          # whose last layer cost nothing at all would still run these 11 layers, the embeddings and the head.
          "floor": (ENCODER, {"onnx": False, "tflite": False, "variants": []}, {"num_layers": 11}, False)}
SHAPES = [(1, 128), (1, 32)]
# (target, anchor it is compared with, issue's bound or None)
TARGETS = [
    ("classifier/onnx_optimized_cpu", "hf/classifier", {128: 0.95, 32: 0.92}),
    ("classifier/onnx_int8_cpu", "hf/classifier", {128: 0.60}),
    ("classifier/onnx_cpu", "hf/classifier", None),
    ("hf/classifier_int8", "hf/classifier", None),
    ("encoder/onnx_optimized_cpu", "hf/encoder", {128: 1.00, 32: 1.00}),
    ("encoder/onnx_int8_cpu", "hf/encoder", None),
    ("encoder/onnx_cpu", "hf/encoder", None),
    ("hf/encoder_int8", "hf/encoder", None),
    ("classifier_tflite/tflite_int8", "classifier_tflite/tflite", None),
    ("floor/onnx_optimized_cpu", "hf/classifier", None),
]
# A target's floor: what it would measure if everything pruning can remove cost nothing. The pruned classifier
# still runs 11 full layers, the embeddings, its last layer's [CLS] row and the head; the floor runs only the
# 11 layers and the embeddings, so the classifier's ratio cannot go below the floor's.
FLOORS = {"classifier/onnx_optimized_cpu": "floor/onnx_optimized_cpu"}
HF_HELP = ("the anchor needs torch and transformers in a side environment (never in bertc's):\n"
           "  python3 -m venv /work/envs/hf\n"
           "  /work/envs/hf/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu\n"
           "  /work/envs/hf/bin/pip install transformers onnx onnxruntime\n"
           "then run this script with --hf-python /work/envs/hf/bin/python (or --no-anchor for bertc's artifacts only)")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class StepFailed(Exception):
    pass


def run(cmd: list[str], what: str) -> None:
    log(f"$ {shlex.join(cmd)}")
    t0 = time.perf_counter()
    proc = subprocess.run(["nice", *cmd], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        why = " (killed: out of memory?)" if proc.returncode == -9 else ""
        raise StepFailed(f"{what} failed (exit {proc.returncode}{why}): {shlex.join(cmd)}")
    log(f"  {what}: {time.perf_counter() - t0:.0f}s")


def bench_spec(name: str, work: Path) -> Path:
    """The spec file of a bench build: the bundled spec with the bench's export settings."""
    source, export, encoder, _ = BUILDS[name]
    spec = json.loads(source.read_text())
    spec["export"] = {**spec.get("export", {}), **export}
    spec["encoder"] = {**spec["encoder"], **encoder}
    if encoder:
        spec["name"] = f"{spec['name']}_{name}"
    path = work / f"{name}.spec.json"
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def source_hash() -> str:
    """A digest of bertc's sources: a build is reused only when made by the same code."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "bertc").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_build(name: str, work: Path, rebuild: bool, parity: bool = True) -> Path:
    spec_path = bench_spec(name, work)
    out, stamp = work / name, work / f"{name}.stamp"
    wanted = {"spec": json.loads(spec_path.read_text()), "bertc_sources": source_hash(), "parity": parity}
    if not rebuild and (out / "report.json").exists() and stamp.exists():
        report = json.loads((out / "report.json").read_text())
        if report.get("status") == "passed" and json.loads(stamp.read_text()) == wanted:
            log(f"reusing {out} (built {report.get('created')} by the same spec and bertc sources)")
            return out
    stamp.unlink(missing_ok=True)
    run([sys.executable, "-m", "bertc.cli", "build", str(spec_path), "-o", str(out), "--force",
         *([] if parity else ["--no-parity"])], f"bertc build {name}")
    stamp.write_text(json.dumps(wanted))
    return out


def anchor_reusable(work: Path, rebuild: bool) -> bool:
    return not rebuild and (work / "anchor" / "anchor.json").exists()


def check_hf_python(hf_python: str) -> None:
    """Exit with how to create the side environment when ``hf_python`` cannot build the anchor."""
    probe = subprocess.run([hf_python, "-c", "import torch, transformers, onnx, onnxruntime"],
                           capture_output=True, text=True) if Path(hf_python).exists() else None
    if probe is None or probe.returncode != 0:
        why = f"{hf_python} does not exist" if probe is None else (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(f"cannot build the anchor with {hf_python}: {why}\n{HF_HELP}")


def ensure_anchor(work: Path, hf_python: str, rebuild: bool) -> Path:
    out = work / "anchor"
    if anchor_reusable(work, rebuild):
        log(f"reusing the anchor in {out}")
        return out
    run([hf_python, str(ROOT / "tools" / "hf_anchor.py"), str(out)], "HF anchor")
    return out


def bertc_targets(name: str, out: Path, threads: int):
    from bertc.bench import artifact_targets

    report = json.loads((out / "report.json").read_text())
    artifacts = {k: v for k, v in report["artifacts"].items() if k != "keras"}
    targets, skipped, errors = artifact_targets(out, artifacts, threads)
    for t in targets:
        t.name = f"{name}/{t.name}"
        t.info["build"] = str(out)
    skipped = {k: v for k, v in skipped.items() if not v.endswith("(not exported)")}  # by the bench's choice
    return targets, {f"{name}/{k}": v for k, v in {**skipped, **errors}.items()}


def anchor_target(label: str, path: Path, threads: int):
    """An anchor ONNX file fed bertc's inputs under HF's names (int64, as exported)."""
    from bertc.backends import CPU, Backend, onnx_feeds, ort_session
    from bertc.bench import Target, onnx_node_count

    backend = Backend(label, "anchor", path, "onnx", "int8" if ".int8." in path.name else "fp32", CPU)
    session = ort_session(backend, threads=threads, spinning=False)
    names = {"input_word_ids": "input_ids", "input_mask": "attention_mask", "input_type_ids": "token_type_ids"}

    def prepare(inputs):
        feeds = onnx_feeds(session, {names[k]: v for k, v in inputs.items() if k in names})
        return lambda: session.run(None, feeds)

    return Target(label, prepare, {**backend.to_json(), "nodes": onnx_node_count(path)})


# The weight read of one pruned layer: what the pruned last layer costs at the very least, however it is
# lowered. Computing one row still reads every weight of the layer once (Q/K/V/output 768 x 768, feedforward
# 768 x 3072 and back: 28.3 MB in fp32), and at batch 1 these matrix-vector products are bound by memory, not
# arithmetic. WEIGHT_READ_LAYERS distinct copies (as the model's 12 layers are distinct: 340 MB, far past any
# cache) are chained and the time divided by their number.
WEIGHT_READ_LAYERS = 12
WEIGHT_READ_SHAPES = [(768, 768)] * 4 + [(768, 3072), (3072, 768)]


def weight_read_target(work: Path, threads: int):
    """One row (1 x 1 x 768) through WEIGHT_READ_LAYERS layers' worth of BERT-base matrices, one MatMul each."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from bertc.backends import CPU, Backend, ort_session
    from bertc.bench import Target

    path = work / "weight_read.onnx"
    if not path.exists():
        rng = np.random.default_rng(0)
        nodes, inits, x = [], [], "x"
        for layer in range(WEIGHT_READ_LAYERS):
            for k, shape in enumerate(WEIGHT_READ_SHAPES):
                w = f"w{layer}_{k}"
                inits.append(numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), w))
                nodes.append(helper.make_node("MatMul", [x, w], [f"y{layer}_{k}"]))
                x = f"y{layer}_{k}"
        graph = helper.make_graph(nodes, "weight_read", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 768])],
                                  [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [1, 1, 768])], inits)
        onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    backend = Backend("weight_read", "weight_read", path, "onnx", "fp32", CPU)
    session = ort_session(backend, threads=threads, spinning=False)
    x = np.ones((1, 1, 768), np.float32)

    def prepare(inputs):
        return lambda: session.run(None, {"x": x})

    return Target(f"weight_read/x{WEIGHT_READ_LAYERS}", prepare,
                  {**backend.to_json(), "nodes": WEIGHT_READ_LAYERS * len(WEIGHT_READ_SHAPES)})


def parity_of(out: Path) -> dict:
    """Per backend of a build: passed, and the task figures of the reduced-precision ones."""
    parity = json.loads((out / "report.json").read_text()).get("parity") or {}
    summary = {}
    for r in parity.get("results", []):
        entry = summary.setdefault(r["backend"], {"passed": True})
        entry["passed"] &= r["passed"]
        entry[r["output"]] = {k: r.get(k) for k in ("max_abs", "argmax_agreement", "min_cosine") if r.get(k) is not None}
    return summary


def optimized_node_count(path: Path):
    """Nodes after ORT's own ORT_ENABLE_ALL pass (what actually runs)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        o = ort.SessionOptions()
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        o.optimized_model_filepath = str(Path(d) / "opt.onnx")
        o.log_severity_level = 3
        ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
        return len(onnx.load(o.optimized_model_filepath, load_external_data=False).graph.node)


# --pruning: the build's targets under short names, and the unpruned lowering beside them
PRUNING_TARGETS = {"portable": "onnx_cpu", "optimized": "onnx_optimized_cpu", "int8": "onnx_int8_cpu"}


def pruning_bench(args, command: str) -> int:
    """Last-layer pruning of SPEC: pruned vs unpruned optimized graph, both vs the portable model.onnx."""
    spec_path = Path(args.pruning).resolve()
    BUILDS["pruning"] = (spec_path, {"tflite": False, "variants": ["onnx_int8"]}, {}, True)
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        out = ensure_build("pruning", args.work, args.rebuild, parity=False)
    except StepFailed as exc:
        raise SystemExit(str(exc)) from None

    import onnx

    import bertc
    from bertc.backends import CPU, Backend
    from bertc.bench import bench_inputs, onnx_target, round_ratio, set_tensorflow_threads, time_targets
    from bertc.optimize.lower import lower_model
    from bertc.spec import load_spec

    set_tensorflow_threads(args.threads)
    spec = load_spec(out / "spec.json")
    unpruned = out / "model.optimized.unpruned.onnx"
    # The same spec lowered with its whole last layer (random weights of the same shapes: latency only)
    onnx.save_model(lower_model(bertc.build_model(spec), prune=False).proto, str(unpruned))
    report = json.loads((out / "report.json").read_text())
    by_name = {t.name: t for t in bertc_targets("pruning", out, args.threads)[0]}
    targets = []
    for short, backend in PRUNING_TARGETS.items():
        if f"pruning/{backend}" not in by_name:
            raise SystemExit(f"{out} has no {backend} backend (artifacts: {', '.join(report['artifacts'])})")
        target = by_name[f"pruning/{backend}"]
        target.name = short
        targets.append(target)
    extra = onnx_target(Backend("optimized_unpruned", "optimized_unpruned", unpruned, "onnx", "fp32", CPU), args.threads)
    targets.insert(2, extra)
    targets[2].name = "optimized_unpruned"
    paths = {t.name: out / t.info["path"] for t in targets}
    nodes = {k: len(onnx.load(str(p), load_external_data=False).graph.node) for k, p in paths.items()}
    after_ort = {k: optimized_node_count(p) for k, p in paths.items()}
    log(f"nodes (file): {nodes}; after ORT_ENABLE_ALL: {after_ort}")
    shapes = [(1, s) for s in args.seq]
    rows = time_targets(targets, shapes, bench_inputs(spec), args.rounds, args.warmup, args.calls, "portable",
                        progress=log, clock=time.process_time if args.cpu_time else time.perf_counter)
    figures = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "spec": spec.name,
               "threads": args.threads, "rounds": args.rounds, "calls": args.calls, "warmup": args.warmup,
               "clock": "process CPU time" if args.cpu_time else "wall", "nodes": nodes, "nodes_after_ort": after_ort,
               "fusion": report.get("fusion", {}).get("fused_ops"), "latency": {}, "results": rows}
    for batch, seq in shapes:
        by = {r["target"]: r for r in rows if r["sequence_length"] == seq and "error" not in r}
        entry = {"median_ms": {k: by[k]["p50_ms"] for k in by},
                 "ratio_to_portable": {k: round_ratio(rows, k, "portable", batch, seq) for k in by},
                 "pruned_over_unpruned": round_ratio(rows, "optimized", "optimized_unpruned", batch, seq)}
        figures["latency"][f"B{batch}xS{seq}"] = entry
        print(f"B{batch} x S{seq}: " + ", ".join(f"{k} {entry['median_ms'][k]:.2f} ms ({entry['ratio_to_portable'][k]})"
                                                 for k in by) + f"; pruned / unpruned {entry['pruned_over_unpruned']}")
    if args.results:
        from bertc.bench import write_results

        write_results(args.results, figures)
        print(f"wrote {args.results}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pruning", nargs="?", const=str(CLASSIFIER), default=None, metavar="SPEC",
                        help="measure last-layer pruning of SPEC (default: the BERT-base classifier) instead of the "
                             "anchor benchmark: pruned vs unpruned optimized graph vs model.onnx")
    parser.add_argument("--seq", type=int, nargs="+", default=[128, 32], help="sequence lengths of --pruning (batch 1)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bertc-bench-optimized"),
                        help="where the builds and the anchor go (about 4 GB)")
    parser.add_argument("--rebuild", action="store_true", help="build bertc's artifacts and the anchor again")
    parser.add_argument("--hf-python", default=os.environ.get("BERTC_HF_PYTHON", "/work/envs/hf/bin/python"))
    parser.add_argument("--no-anchor", action="store_true", help="time bertc's artifacts only (ratios to model.onnx)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default 2; 1 with --cpu-time)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time the process's CPU time with 1 thread instead of wall time with 2: the work each "
                             "graph does, less exposed to other jobs on a shared machine than wall time (memory "
                             "contention still shows); the issue's targets are wall time at 2 threads")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--results", type=Path, default=None,
                        help="the JSON file to write (default tools/results/bench_optimized.json; with --pruning, "
                             "none unless given)")
    args = parser.parse_args()
    if args.threads is None:
        args.threads = 1 if args.cpu_time else 2
    if args.cpu_time and args.threads != 1:
        parser.error("--cpu-time counts every thread's CPU time: use it with --threads 1")
    command = shlex.join([sys.executable, *sys.argv])
    if args.pruning is not None:
        return pruning_bench(args, command)
    if args.results is None:
        args.results = ROOT / "tools" / "results" / "bench_optimized.json"

    args.work.mkdir(parents=True, exist_ok=True)
    if not args.no_anchor and not anchor_reusable(args.work, args.rebuild):
        check_hf_python(args.hf_python)  # before the long builds
    builds, failed = {}, {}
    for name, (_, _, _, required) in BUILDS.items():
        try:
            builds[name] = ensure_build(name, args.work, args.rebuild)
        except StepFailed as exc:
            if required:
                raise SystemExit(str(exc)) from None
            failed[name] = str(exc)
            log(f"{exc}; going on without it")
    try:
        anchor = None if args.no_anchor else ensure_anchor(args.work, args.hf_python, args.rebuild)
    except StepFailed as exc:
        raise SystemExit(str(exc)) from None

    import bertc.components  # noqa: F401
    from bertc.bench import bench_inputs, machine_info, round_ratio, set_tensorflow_threads, time_targets
    from bertc.spec import load_spec

    set_tensorflow_threads(args.threads)
    targets, unavailable = [], {}
    for name, out in builds.items():
        found, missing = bertc_targets(name, out, args.threads)
        targets += found
        unavailable.update(missing)
    if anchor is not None:
        for label, file in (("hf/classifier", "classifier.opt.onnx"), ("hf/classifier_int8", "classifier.opt.int8.onnx"),
                            ("hf/encoder", "encoder.opt.onnx"), ("hf/encoder_int8", "encoder.opt.int8.onnx")):
            targets.append(anchor_target(label, anchor / file, args.threads))
    targets.append(weight_read_target(args.work, args.threads))
    log(f"timing {len(targets)} targets: {', '.join(t.name for t in targets)}")
    before = machine_info()
    spec = load_spec(builds["classifier"] / "spec.json")
    baseline = "hf/classifier" if anchor is not None else "classifier/onnx_cpu"
    rows = time_targets(targets, SHAPES, bench_inputs(spec), args.rounds, args.warmup, args.calls, baseline,
                        progress=log, clock=time.process_time if args.cpu_time else time.perf_counter)
    after = machine_info()

    names = [t.name for t in targets]
    ratios, checks = [], []
    for target, base, bound in TARGETS:
        if anchor is None and base.startswith("hf/"):
            base = target.split("/")[0] + "/onnx_cpu"
        for batch, seq in SHAPES:
            value = round_ratio(rows, target, base, batch, seq)
            ratios.append({"target": target, "baseline": base, "batch": batch, "sequence_length": seq, "ratio": value})
            if bound and seq in bound and base.startswith("hf/"):
                floor = round_ratio(rows, FLOORS[target], base, batch, seq) if target in FLOORS else None
                read = round_ratio(rows, f"weight_read/x{WEIGHT_READ_LAYERS}", base, batch, seq)
                read = None if floor is None or read is None else round(read / WEIGHT_READ_LAYERS, 4)
                least = None if floor is None or read is None else round(floor + read, 4)
                checks.append({"target": target, "sequence_length": seq, "ratio": value, "bound": bound[seq],
                               "met": None if value is None else value <= bound[seq], "floor": floor,
                               "one_layer_weight_read": read, "least_possible": least,
                               "reachable": None if least is None else least <= bound[seq]})
    nodes = {t.name: t.info.get("nodes") for t in targets if t.info.get("nodes") is not None}
    load = before["load_average"] or [0.0]
    noisy = load[0] > 0.5 * (os.cpu_count() or 1)  # other work on the cores just before timing
    result = {
        "command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "settings": {"shapes": [{"batch": b, "sequence_length": s} for b, s in SHAPES], "threads": args.threads,
                     "rounds": args.rounds, "calls": args.calls, "warmup": args.warmup, "ort_spinning": False,
                     "interleaved": True, "ratio": "median over rounds of per-round p50 ratios",
                     "clock": "process CPU time" if args.cpu_time else "wall"},
        "machine": {**before, "load_average_after": after["load_average"]},
        "notes": ([f"the machine was shared and busy (1-min load average {load[0]:.1f} just before timing, on "
                   f"{os.cpu_count()} cores): figures are noisy; see each row's ratio_range"] if noisy else []),
        "unavailable": unavailable, "failed_builds": failed,
        "builds": {name: {"path": str(out), "artifacts": json.loads((out / "report.json").read_text())["artifacts"],
                          "parity": parity_of(out)} for name, out in builds.items()},
        "anchor": json.loads((anchor / "anchor.json").read_text()) if anchor is not None else None,
        "node_counts": nodes, "ratios": ratios, "targets_met": checks, "results": rows,
    }
    from bertc.bench import write_results

    write_results(args.results, result, indent=2)

    print(f"\n{'target':<32} " + " ".join(f"{'B%d S%d p50 ms' % s:>14}" for s in SHAPES) + f" {'nodes':>7}")
    for name in names:
        cells = []
        for batch, seq in SHAPES:
            row = next(r for r in rows if r["target"] == name and r["sequence_length"] == seq and r["batch"] == batch)
            cells.append(f"{row['p50_ms']:>14.2f}" if "error" not in row else f"{'failed':>14}")
        print(f"{name:<32} " + " ".join(cells) + f" {nodes.get(name, ''):>7}")
    print(f"\n{'ratio':<32} {'to':<20} " + " ".join(f"{'S%d' % s:>8}" for _, s in SHAPES))
    for target, base, _ in TARGETS:
        values = [next(r["ratio"] for r in ratios if r["target"] == target and r["sequence_length"] == s)
                  for _, s in SHAPES]
        base = next(r["baseline"] for r in ratios if r["target"] == target)
        print(f"{target:<32} {base:<20} " + " ".join(f"{v:>8.3f}" if v is not None else f"{'-':>8}" for v in values))
    for c in checks:
        verdict = "not measured (artifact absent)" if c["met"] is None else ("met" if c["met"] else "NOT met")
        print(f"target {c['target']} S{c['sequence_length']}: {c['ratio']} (<= {c['bound']}) {verdict}")
        if c["floor"] is not None:
            print(f"  floor {FLOORS[c['target']]}: {c['floor']} (11 layers + embeddings alone)")
        if c.get("least_possible") is not None:
            why = ("reachable only if the rest costs at most "
                   f"{c['bound'] - c['least_possible']:.3f} of the anchor" if c["reachable"] else
                   "so the bound is out of reach on this machine for any exact fp32 lowering of the last layer")
            print(f"  + one layer's weights read once for one row: {c['one_layer_weight_read']} -> at least "
                  f"{c['least_possible']}: {why}")
    for k, v in unavailable.items():
        print(f"unavailable {k}: {v}")
    for name, why in failed.items():
        print(f"build {name}: {why}")
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
