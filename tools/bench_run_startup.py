#!/usr/bin/env python3
"""What running a built model costs before its first text: `bertc run` and `bertc.Runtime` in fresh processes.

    python tools/bench_run_startup.py OUT [--code DIR ...] [--repeat 5] [--ray] [--input FILE] [--results FILE]

Each case runs ``--repeat`` times, alternating between the code trees (``--code``: bertc checkouts, the
current tree when none is given), each run in a fresh Python process:

- ``cli``: ``bertc run OUT two-lines.txt -o result.npy --force -q`` (python -m bertc.cli; ``--input FILE``
  runs FILE instead; ``result.jsonl`` where OUT's model gives no embeddings), wall time and the process's
  peak RSS (``wait4``'s ru_maxrss);
- ``python``: ``import bertc; bertc.Runtime(OUT).run([...])``, the same, plus whether TensorFlow / Keras were
  imported (a built model needs ONNX Runtime and the tokenizer only);
- ``ray`` (with ``--ray``): ``bertc run ... --ray --actors 2`` (a local Ray), wall time and the peak RSS of each
  Ray Data actor process (its title names the predictor), sampled every 20 ms from /proc.

The medians are printed and saved (tools/results/bench_run_startup.json unless ``--results``) with the exact
command, the host and the date.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PYTHON_CASE = """
import json, sys
import bertc
rows = bertc.Runtime(sys.argv[1]).run(["the first text.", "and a second one"])
print(json.dumps({"rows": len(rows), "imported": sorted(m for m in ("tensorflow", "keras") if m in sys.modules)}))
"""


def timed(cmd: list, env: dict, cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of ``cmd`` in a fresh process, in ``cwd`` (never a source tree: the
    current directory comes first on the child's sys.path)."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
        out.seek(0)
        return seconds, usage.ru_maxrss / 1024.0, out.read().decode()


class ActorRss:
    """Peak RSS per process of the Ray Data actors running bertc's predictor (``ray::...RayPredictor...`` in
    their command line), sampled from /proc while a run lasts."""

    def __init__(self, interval: float = 0.02):
        import threading

        self.peaks: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval):
        while not self._stop.is_set():
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    if not title.startswith("ray::") or "Predictor" not in title:
                        continue
                    rss = next(int(line.split()[1]) for line in (proc / "status").read_text().splitlines()
                               if line.startswith("VmRSS:"))
                except (OSError, StopIteration, ValueError):
                    continue
                self.peaks[proc.name] = max(self.peaks.get(proc.name, 0), rss)
            self._stop.wait(interval)

    def stop(self) -> list:
        self._stop.set()
        self._thread.join()
        return sorted(round(kb / 1024.0, 1) for kb in self.peaks.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="a bertc build (OUT directory) with a bundled tokenizer")
    parser.add_argument("--code", type=Path, action="append", default=None,
                        help="a bertc source tree to run (repeatable; default: this checkout)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--input", type=Path, default=None,
                        help="the texts of the cli and ray cases (default: two short lines)")
    parser.add_argument("--ray", action="store_true", help="also time bertc run --ray --actors 2 (a local Ray)")
    parser.add_argument("--results", type=Path, default=ROOT / "tools" / "results" / "bench_run_startup.json")
    args = parser.parse_args()
    codes = [c.resolve() for c in (args.code or [ROOT])]
    out = args.out.resolve()
    with tempfile.TemporaryDirectory(prefix="bertc-startup-") as work:
        return bench(args, codes, out, Path(work))


def result_name(out: Path, code: Path) -> str:
    """``result.npy`` for a model that gives embeddings, else ``result.jsonl`` (a .npy holds only embeddings)."""
    kind = subprocess.run([sys.executable, "-c", "import sys, bertc; print(bertc.Runtime(sys.argv[1]).kind)", str(out)],
                          env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True, text=True, check=True)
    return "result.npy" if kind.stdout.strip().splitlines()[-1] == "embedding" else "result.jsonl"


def bench(args, codes: list, out: Path, work: Path) -> int:
    result = str(work / result_name(out, codes[-1]))
    inputs = work / "in.txt"
    inputs.write_text("the first text.\nand a second one\n")
    if args.input is not None:
        inputs = args.input.resolve()
    runs: dict = {str(c): {"cli": [], "python": [], **({"ray": []} if args.ray else {})} for c in codes}
    actors: dict = {str(c): [] for c in codes}
    imported: dict = {}
    for _ in range(args.repeat):
        for code in codes:
            env = {**os.environ, "PYTHONPATH": str(code)}
            seconds, mb, _ = timed([sys.executable, "-m", "bertc.cli", "run", str(out), str(inputs), "-o",
                                    result, "--force", "-q"], env, work)
            runs[str(code)]["cli"].append((seconds, mb))
            seconds, mb, text = timed([sys.executable, "-c", PYTHON_CASE, str(out)], env, work)
            runs[str(code)]["python"].append((seconds, mb))
            imported[str(code)] = json.loads(text.strip().splitlines()[-1])["imported"]
            if args.ray:
                sampler = ActorRss()
                seconds, mb, _ = timed([sys.executable, "-m", "bertc.cli", "run", str(out), str(inputs), "-o",
                                        result, "--force", "-q", "--ray", "--actors", "2"], env, work)
                peaks = sampler.stop()
                runs[str(code)]["ray"].append((seconds, max(peaks, default=0.0)))
                actors[str(code)].append(peaks)
    figures = {code: {case: {"median_seconds": round(statistics.median(s for s, _ in r), 3),
                             "median_peak_rss_mb": round(statistics.median(m for _, m in r), 1),
                             "runs": [[round(s, 3), round(m, 1)] for s, m in r]}
                      for case, r in cases.items()} | {"imports": imported[code]}
               | ({"ray_actor_peak_rss_mb": actors[code]} if args.ray else {})
               for code, cases in runs.items()}
    for code, f in figures.items():
        print(f"{code}: bertc run {f['cli']['median_seconds']:.2f} s, {f['cli']['median_peak_rss_mb']:.0f} MB; "
              f"bertc.Runtime {f['python']['median_seconds']:.2f} s, {f['python']['median_peak_rss_mb']:.0f} MB; "
              f"imports {', '.join(f['imports']) or 'no TensorFlow / Keras'}"
              + (f"; bertc run --ray (2 actors) {f['ray']['median_seconds']:.2f} s, each actor's peak "
                 f"{f['ray']['median_peak_rss_mb']:.0f} MB (median of the largest)" if args.ray else ""))
    record = {"command": shlex.join([sys.executable, *sys.argv]), "date": time.strftime("%Y-%m-%d"),
              "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                       "cpus": os.cpu_count(), "python": platform.python_version()},
              "out": str(out), "input": str(inputs) if args.input is not None else "two short lines",
              "input_lines": sum(1 for _ in open(inputs, encoding="utf-8")), "repeat": args.repeat, "figures": figures}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
