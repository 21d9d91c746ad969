#!/usr/bin/env python3
"""Time every stage of `bertc build` and its peak memory; print and save the figures.

    python tools/bench_build.py specs/bert_base_classifier.json [--out DIR] [--no-parity] [--results FILE]
                                                                [--reuse-plans]

The build runs in a child process under ``/usr/bin/time -v`` (wall clock, CPU time, peak RSS of the
largest process as the kernel counts it). Inside the child, each stage reports its duration, the
peak RSS so far (getrusage ru_maxrss, so a stage's figure is the peak reached up to its end) and the
peak of the build's processes together (the TFLite converter of a large model runs in a child, beside
the ONNX export): the sum of their RSS, sampled every 20 ms; the build's peak is the larger of the two. The machine's
load (``uptime``) is recorded before and after: on a shared machine wall time depends on it, CPU
time much less. Results go to tools/results/<spec name>.json (or --results FILE), with the
exact command, the weight bytes and peak RSS / weight bytes. The build tunes its int8 afresh (a cache folder of
its own, seeded with this host's int8 form timings), unless ``--reuse-plans``: a replayed plan would hide
the tuning's time and memory (README, "The tuning's choices are kept").
"""
from __future__ import annotations

import argparse
import json
import shlex
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class TreeRss:
    """Peak memory of this process and all its descendants together (the build converts TFLite in a
    child process for large models), sampled every 20 ms from /proc: the sum of their VmRSS, leaving
    out a child that has not exec'ed yet (a fork still sharing the build's pages, recognized by its
    parent's command line). Shared libraries count once per process, so the figure errs high.
    (PSS from smaps_rollup would be exact but walks every page table: sampling it slowed a BERT-large
    build by half.) ``/usr/bin/time -v`` reports only the largest single process."""

    def __init__(self, interval: float = 0.02):
        import threading

        self.peak_kb = 0
        self.stage_peak_kb = 0   # since the last stage_peak_mb(): what the current stage itself reached
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    @staticmethod
    def _rss_kb(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    @staticmethod
    def _cmdline(pid: int) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return b""

    @staticmethod
    def _children(pid: int) -> list[int]:
        kids = []
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                kids += [int(k) for k in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
        return kids

    def sample(self) -> int:
        me = os.getpid()
        total, todo = self._rss_kb(me), [(me, self._cmdline(me))]
        while todo:
            pid, cmdline = todo.pop()
            for kid in self._children(pid):
                kid_cmdline = self._cmdline(kid)
                if kid_cmdline != cmdline:  # the same command line: a fork that has not exec'ed yet
                    total += self._rss_kb(kid)
                todo.append((kid, kid_cmdline))
        self.peak_kb = max(self.peak_kb, total)
        self.stage_peak_kb = max(self.stage_peak_kb, total)
        return total

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.sample()

    def peak_mb(self) -> float:
        self.sample()
        return self.peak_kb / 1024.0

    def stage_mb(self) -> tuple[float, float]:
        """(the peak since the previous call, the current total) in MB; starts the next stage's peak."""
        now = self.sample()
        peak, self.stage_peak_kb = self.stage_peak_kb, now
        return peak / 1024.0, now / 1024.0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def child(args) -> int:
    t_start = time.perf_counter()
    import bertc.components  # noqa: F401
    from bertc.pipeline import BuildOptions, build

    tree = TreeRss()
    stages = [{"stage": "import", "seconds": round(time.perf_counter() - t_start, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
               "peak_tree_rss_mb": round(tree.peak_mb(), 1)}]

    def hook(name, seconds, detail):
        stage_peak, now = tree.stage_mb()
        row = {"stage": name, "seconds": round(seconds, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
               "peak_tree_rss_mb": round(tree.peak_mb(), 1), "stage_peak_tree_rss_mb": round(stage_peak, 1),
               "end_tree_rss_mb": round(now, 1), "detail": detail}
        stages.append(row)
        print(f"{name:<18} {seconds:8.2f}s  peak RSS {row['peak_rss_mb']:8.1f} MB (all processes "
              f"{row['peak_tree_rss_mb']:8.1f} MB; this stage {stage_peak:8.1f} MB, at its end {now:8.1f} MB)  "
              f"{detail}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "out"
        opts = BuildOptions(out=out, force=True, parity=not args.no_parity, preflight=not args.skip_preflight)
        report = build(args.spec, opts, hook)
    tree.stop()
    from bertc.preflight import estimate
    from bertc.spec import load_spec

    est = estimate(load_spec(args.spec), parity=not args.no_parity)
    result = {
        "spec": str(args.spec), "spec_name": report["spec_name"], "status": report["status"],
        "parameters": report["parameters"]["actual"], "in_process_seconds": round(time.perf_counter() - t_start, 2),
        "peak_tree_rss_mb": round(tree.peak_kb / 1024.0, 1),
        "stages": stages, "preflight": report.get("preflight"), "estimate": est.to_json(),
        "parity_max_abs": (report.get("parity") or {}).get("max_abs_by_backend"),
        "artifact_bytes": {k: v["bytes"] for k, v in (report.get("artifacts") or {}).items()},
    }
    Path(args.child_result).write_text(json.dumps(result))
    return 0 if report["status"] == "passed" else 1


_TIME_FIELDS = {
    "Elapsed (wall clock) time (h:mm:ss or m:ss)": "wall",
    "User time (seconds)": "user_seconds",
    "System time (seconds)": "system_seconds",
    "Percent of CPU this job got": "cpu_percent",
    "Maximum resident set size (kbytes)": "max_rss_kb",
}


def _parse_time_v(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        key, _, value = line.strip().rpartition(": ")
        if key in _TIME_FIELDS:
            out[_TIME_FIELDS[key]] = value.strip()
    if "wall" in out:
        parts = [float(p) for p in out["wall"].split(":")]
        out["wall_seconds"] = round(sum(p * 60 ** i for i, p in enumerate(reversed(parts))), 2)
    return out


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="build directory (default: a temporary one)")
    parser.add_argument("--no-parity", action="store_true")
    parser.add_argument("--skip-preflight", action="store_true",
                        help="build even if the preflight estimate exceeds the memory available")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--reuse-plans", action="store_true",
                        help="let the build replay an int8 tuning plan of an earlier build (by default it tunes "
                             "afresh: a cache folder of its own, with only this host's int8 form timings)")
    parser.add_argument("--child-result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_result:
        return child(args)

    with tempfile.TemporaryDirectory() as tmp:
        child_result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), str(args.spec), "--child-result", str(child_result)]
        if args.out:
            cmd += ["--out", str(args.out)]
        if args.no_parity:
            cmd.append("--no-parity")
        if args.skip_preflight:
            cmd.append("--skip-preflight")
        timed = ["/usr/bin/time", "-v"] + cmd
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if not args.reuse_plans:   # the tuning's time and memory are part of what is measured
            sys.path.insert(0, str(ROOT))
            from bertc.optimize.quantize import FORM_CACHE, cache_dir

            host_cache, fresh = cache_dir(), Path(tmp) / "cache"
            fresh.mkdir()
            if host_cache is not None and (host_cache / FORM_CACHE).exists():
                shutil.copy(host_cache / FORM_CACHE, fresh / FORM_CACHE)
            env["BERTC_CACHE_DIR"] = str(fresh)
        load_before = _uptime()
        proc = subprocess.run(timed, stderr=subprocess.PIPE, text=True, env=env)
        load_after = _uptime()
        stages_text = "\n".join(line for line in proc.stderr.splitlines() if re.match(r"^\S.*\d+\.\d\ds  peak RSS", line))
        print(stages_text)
        if proc.returncode != 0 or not child_result.exists():
            print(proc.stderr[-4000:], file=sys.stderr)
            return proc.returncode or 1
        result = json.loads(child_result.read_text())
    timing = _parse_time_v(proc.stderr)
    weight_bytes = 4 * result["parameters"]
    # the build's memory: its processes together (the TFLite converter may run beside it), never less
    # than what /usr/bin/time saw for the largest one
    peak = max(int(timing.get("max_rss_kb", 0)) * 1024, int(result["peak_tree_rss_mb"] * 2**20))
    result.update({
        # as typed (every option: --out and --results too; a rerun of a line that dropped them wrote into the repo)
        "command": "PYTHONPATH=. python " + shlex.join([f"tools/{Path(__file__).name}", *sys.argv[1:]]),
        "time_v": timing, "wall_seconds": timing.get("wall_seconds"),
        "cpu_seconds": round(float(timing.get("user_seconds", 0)) + float(timing.get("system_seconds", 0)), 2),
        "peak_rss_mb": round(peak / 2**20, 1), "largest_process_rss_mb": round(int(timing.get("max_rss_kb", 0)) / 1024, 1),
        "weight_bytes": weight_bytes,
        "peak_over_weight_bytes": round(peak / weight_bytes, 2) if weight_bytes else None,
        "load_before": load_before, "load_after": load_after, "cores": os.cpu_count(),
        "machine": f"{platform.node()} {platform.machine()}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    })
    print(f"total: wall {result['wall_seconds']}s, CPU {result['cpu_seconds']}s ({timing.get('cpu_percent')}), "
          f"peak RSS {result['peak_rss_mb']} MB (all processes; largest one {result['largest_process_rss_mb']} MB) "
          f"= {result['peak_over_weight_bytes']} x weight bytes; "
          f"status {result['status']}")
    print(f"load: before [{load_before}] after [{load_after}]")
    path = args.results or Path(__file__).parent / "results" / f"{result['spec_name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0 if result["status"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
