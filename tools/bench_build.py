#!/usr/bin/env python3
"""Time every stage of `bertc build` and its peak memory; print and save the figures.

    python tools/bench_build.py specs/bert_base_classifier.json [--out DIR] [--no-parity]

Peak memory is the process's peak resident set size (getrusage ru_maxrss), read after each
stage, so each stage's figure is the peak reached so far. Results go to
tools/results/<spec name>.json (or --results FILE).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="build directory (default: a temporary one)")
    parser.add_argument("--no-parity", action="store_true")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()

    t_start = time.perf_counter()
    import bertc.components  # noqa: F401
    from bertc.pipeline import BuildOptions, build

    stages = [{"stage": "import", "seconds": round(time.perf_counter() - t_start, 3), "peak_rss_mb": round(peak_rss_mb(), 1)}]

    def hook(name, seconds, detail):
        row = {"stage": name, "seconds": round(seconds, 3), "peak_rss_mb": round(peak_rss_mb(), 1), "detail": detail}
        stages.append(row)
        print(f"{name:<16} {seconds:8.2f}s  peak RSS {row['peak_rss_mb']:8.1f} MB  {detail}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "out"
        report = build(args.spec, BuildOptions(out=out, force=True, parity=not args.no_parity), hook)
    total = time.perf_counter() - t_start
    result = {
        "spec": str(args.spec), "spec_name": report["spec_name"], "status": report["status"],
        "parameters": report["parameters"]["actual"], "total_seconds": round(total, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1), "stages": stages,
        "parity_max_abs": (report.get("parity") or {}).get("max_abs_by_backend"),
        "artifact_bytes": {k: v["bytes"] for k, v in (report.get("artifacts") or {}).items()},
        "machine": f"{platform.node()} {platform.machine()}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"{'total':<16} {total:8.2f}s  peak RSS {result['peak_rss_mb']:8.1f} MB  status {report['status']}")
    path = args.results or Path(__file__).parent / "results" / f"{report['spec_name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0 if report["status"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
