#!/usr/bin/env python3
"""Does a build's int8 compute the same thing on an x86 CPU without VNNI?

    python tools/check_int8_portability.py OUT [--cpu EPYC-Rome] [--work DIR] [--results FILE]

bertc's int8 weights are written so that no x86 kernel of ONNX Runtime can saturate: 7-bit (plain int8), or
pair-limited 8-bit (the tuning; ``bertc/optimize/quantize.py``). Without VNNI (AVX2, AVX-512 before VNNI: Intel
before Cascade Lake, AMD EPYC before Zen 4), MLAS multiplies u8 activations by s8 weights with ``vpmaddubsw``,
which adds each pair of products in int16 and saturates. A build machine with VNNI never shows that, so an
artifact judged there could fail where it is deployed. This script runs the build's ONNX artifacts on the
same inputs natively and on an emulated CPU without VNNI (``qemu-x86_64 -cpu CPU``, user mode; QEMU 7.2+
emulates AVX2 but no AVX-512, so MLAS takes its AVX2 kernels there), and compares the outputs:

- ``model.optimized.onnx`` (fp32): the reference. Its two runs differ only by the fp32 kernels' summation order.
- every int8 ONNX artifact of the build, as written.
- two controls, the same optimized graph in plain dynamic int8: with 7-bit weights (bertc's first step, which
  cannot saturate), and with full-range 8-bit weights ([-127, 127]), what a quantizer that ignores the int16
  pair sums writes.

Per model and output, over all inputs: the lowest row cosine against the fp32 reference, natively (what the
build judged) and emulated (what the other CPU gets), and the emulated run against the native one. Exact
integers do not make the two runs bit-identical: the fp32 parts differ in their last bits, and a rounding of
an activation to int8 that sits on a boundary can go either way. That moves an int8 output a little (the
7-bit control shows how much); saturation moves it far more (the full-range control).

Inputs: the build's calibration set (parity's random-id grid, plus real text through its tokenizer when it has
one). Requires ``qemu-user`` (Debian: ``apt-get install qemu-user``) on an x86-64 host; the emulated run is
~50x slower than native. Writes tools/results/int8_portability.json (or ``--results``) with the command.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

INT8_ARTIFACTS = ("model.optimized.int8.onnx", "model.packed.int8.onnx")
PLAIN = "plain_7bit_int8.onnx"
CONTRAST = "full_range_int8.onnx"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def worker(feeds_path: Path, models: list, out_path: Path) -> None:
    """Runs each model on each case of ``feeds_path`` (1 thread) and saves the outputs as ``model|case|output``."""
    from bertc.backends import onnx_feeds
    from bertc.optimize.runtime import ort_session

    with np.load(feeds_path) as data:
        stored = {k: data[k] for k in data.files}
    cases: dict = {}
    for key, value in stored.items():
        case, name = key.split("|")
        cases.setdefault(case, {})[name] = value
    found = {}
    for model in models:
        session = ort_session(Path(model), threads=1)
        names = [o.name for o in session.get_outputs()]
        for case, inputs in cases.items():
            for name, value in zip(names, session.run(names, onnx_feeds(session, inputs))):
                found[f"{Path(model).name}|{case}|{name}"] = value
    np.savez(out_path, **found)


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """The largest |a - b|, the lowest row cosine (rows: the first axis) and how many rows differ at all."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    found = {"max_abs": float(np.max(np.abs(a - b))) if a.size else 0.0, "min_cosine": 1.0, "rows_differing": 0}
    if a.ndim >= 2 and a.size:
        x, y = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        live = norms > 0
        if live.any():
            found["min_cosine"] = float((np.sum(x[live] * y[live], axis=1) / norms[live]).min())
        found["rows_differing"] = int(np.sum(np.any(x != y, axis=1)))
    return found


def compare(native: dict, emulated: dict, model: str, reference: str) -> dict:
    """Per output, over all cases: the emulated run against the native one, and each against the native run of
    ``reference`` (the fp32 optimized artifact): the int8's accuracy where it was judged and where it runs."""
    pairs = {"emulated_vs_native": (emulated, native), "native_vs_fp32": (native, None),
             "emulated_vs_fp32": (emulated, None)}
    figures: dict = {}
    for key in native:
        name, case, output = key.split("|")
        if name != model:
            continue
        per_output = figures.setdefault(output, {})
        for label, (runs, base) in pairs.items():
            other = base[key] if base is not None else native[f"{reference}|{case}|{output}"]
            found = agreement(runs[key], other)
            f = per_output.setdefault(label, {"max_abs": 0.0, "max_abs_case": None, "min_cosine": 1.0,
                                              "min_cosine_case": None, "rows_differing": 0, "rows": 0})
            if found["max_abs"] > f["max_abs"]:
                f["max_abs"], f["max_abs_case"] = found["max_abs"], labels_of(case)
            if found["min_cosine"] < f["min_cosine"]:
                f["min_cosine"], f["min_cosine_case"] = found["min_cosine"], labels_of(case)
            f["rows_differing"] += found["rows_differing"]
            f["rows"] += runs[key].shape[0] if runs[key].ndim else 1
    return figures


LABELS: dict = {}


def labels_of(case: str) -> str:
    return LABELS.get(case, case)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, help="a bertc build directory")
    parser.add_argument("--cpu", default="EPYC-Rome",
                        help="QEMU CPU model to emulate (default EPYC-Rome: AMD Zen 2, AVX2 without VNNI)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bertc-int8-portability"))
    parser.add_argument("--results", type=Path, default=ROOT / "tools" / "results" / "int8_portability.json")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        feeds, out, *models = args.worker
        worker(Path(feeds), models, Path(out))
        return 0
    if args.out is None or not (args.out / "model.optimized.onnx").is_file():
        parser.error("OUT must be a bertc build directory with model.optimized.onnx")
    qemu = shutil.which("qemu-x86_64")
    if qemu is None or platform.machine().lower() not in ("x86_64", "amd64"):
        raise SystemExit("this check needs an x86-64 host with qemu-user (qemu-x86_64): apt-get install qemu-user")

    import onnx

    from bertc.bench import cpu_model
    from bertc.calibration import calibration_set
    from bertc.export.onnx import write_onnx
    from bertc.optimize.quantize import PAIR_LIMIT, QMAX, pair_sums, quantize_dynamic_int8
    from bertc.spec import load_spec

    out, work = args.out.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    spec = load_spec(out / "spec.json")
    calibration = calibration_set(spec, out)
    feeds = {f"{i}|{k}": np.asarray(v) for i, case in enumerate(calibration.cases) for k, v in case.inputs.items()}
    np.savez(work / "feeds.npz", **feeds)

    LABELS.update({str(i): case.label for i, case in enumerate(calibration.cases)})
    optimized = onnx.load(str(out / "model.optimized.onnx"))
    write_onnx(quantize_dynamic_int8(optimized).proto, [], work / PLAIN)
    contrast = quantize_dynamic_int8(optimized, qmax=QMAX)
    write_onnx(contrast.proto, [], work / CONTRAST)
    worst_pair = max(int(pair_sums(numpy_of(init)).max()) for init in contrast.proto.graph.initializer
                     if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 2)
    models = [out / "model.optimized.onnx"] + [out / n for n in INT8_ARTIFACTS if (out / n).is_file()] + \
        [work / PLAIN, work / CONTRAST]

    def run(prefix: list, label: str) -> tuple[dict, float]:
        target = work / f"{label}.npz"
        cmd = prefix + [sys.executable, str(Path(__file__).resolve()), "--worker", str(work / "feeds.npz"),
                        str(target)] + [str(m) for m in models]
        start = time.perf_counter()
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
        if done.returncode != 0:
            noise = [l for l in done.stderr.splitlines() if "TCG doesn't support" not in l]
            raise SystemExit(f"the {label} run failed (exit {done.returncode}):\n" + "\n".join(noise[-20:]))
        with np.load(target) as data:
            return {k: data[k] for k in data.files}, time.perf_counter() - start

    log(f"native run: {len(models)} models x {len(calibration.cases)} cases")
    native, native_s = run([], "native")
    log(f"emulated run ({args.cpu}) ...")
    emulated, emulated_s = run([qemu, "-cpu", args.cpu], "emulated")

    qemu_version = subprocess.run([qemu, "--version"], stdout=subprocess.PIPE, text=True).stdout.splitlines()[0]
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    quant = report.get("artifacts", {}).get("onnx_int8", {}).get("quantization") or {}
    result = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "build": str(out), "spec_name": report.get("spec_name"),
        "host": {"cpu": cpu_model()[0] or "unknown", "int8_kernels": host_kernels()},
        "emulated": {"qemu": qemu_version, "cpu": args.cpu, "isa": "avx2, no VNNI, no AVX-512"},
        "cases": calibration.labels, "inputs": calibration.sources,
        "seconds": {"native": round(native_s, 1), "emulated": round(emulated_s, 1)},
        "int8_weights_as_built": {k: quant[k] for k in ("weight_range", "pair_limit", "reduce_range") if k in quant},
        "controls": {PLAIN: "plain dynamic int8 of model.optimized.onnx, 7-bit weights [-64, 64] (bertc's first step)",
                     CONTRAST: "plain dynamic int8 of model.optimized.onnx, full-range weights [-127, 127] "
                               f"(largest same-sign pair sum {worst_pair}; <= {PAIR_LIMIT} cannot saturate)"},
        "models": {m.name: compare(native, emulated, m.name, "model.optimized.onnx") for m in models},
    }
    print(f"{'model':28} {'output':22} {'native vs fp32':>15} {'emulated vs fp32':>17} {'emulated vs native':>28}")
    for name, outputs in result["models"].items():
        for output, f in outputs.items():
            e = f["emulated_vs_native"]
            print(f"{name:28} {output:22} {f['native_vs_fp32']['min_cosine']:>15.6f} "
                  f"{f['emulated_vs_fp32']['min_cosine']:>17.6f} {e['min_cosine']:>12.6f} (max {e['max_abs']:.2g})")
    from bertc.bench import write_results

    write_results(args.results, result)
    print(f"wrote {args.results}")
    return 0


def numpy_of(init):
    from onnx import numpy_helper

    return numpy_helper.to_array(init)


def host_kernels() -> dict:
    from bertc.optimize.quantize import host_int8_kernels

    return host_int8_kernels()


if __name__ == "__main__":
    sys.exit(main())
