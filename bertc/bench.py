"""``bertc bench OUT``: latency and throughput of every artifact x backend of a build.

Method (several runtimes share the cores of one process, so the method matters):

- every ONNX Runtime session has a fixed intra-op pool (``threads``), one inter-op thread and
  thread spinning disabled (``session.intra_op.allow_spinning`` / ``session.inter_op.allow_spinning``
  = "0"): otherwise the idle pool of one session busy-waits on the cores the next one needs;
  LiteRT interpreters get ``num_threads = threads``; TensorFlow (Keras) gets the same intra-op count;
- for each batch x sequence shape: warm-up calls, then ``rounds`` rounds in which every target runs
  ``calls`` timed calls in turn (interleaved; the order rotates each round), so slow drifts of the
  machine hit every target alike;
- per target: p50 / p90 / mean over all timed calls, throughput (sequences/s at p50), and the
  ratio to the baseline (the portable ``model.onnx`` on CPU): the median over rounds of the
  per-round ratio of medians.

:func:`time_targets` is the timing core; ``tools/bench_optimized.py`` reuses it with targets of its
own (an external anchor model).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from bertc.backends import Backend, BackendLoadError, onnx_feeds, ort_session, plan_backends, tflite_interpreter
from bertc.errors import BenchError, BertcError, OutputError

BASELINE = "onnx_cpu"
DEFAULT_SEQS = (32, 128)

Call = Callable[[], object]


@dataclass
class Target:
    """Something to time: ``prepare(inputs)`` returns a zero-argument call that runs it once on
    ``inputs`` (all input conversion done up front, outside the timed call)."""

    name: str
    prepare: Callable[[dict], Call]
    info: dict = field(default_factory=dict)  # artifact, path, format, precision, provider, nodes, ...


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def time_targets(targets: list[Target], shapes: list[tuple[int, int]], inputs_for: Callable[[int, int], dict],
                 rounds: int = 5, warmup: int = 3, calls: int = 10, baseline: Optional[str] = BASELINE,
                 progress: Optional[Callable[[str], None]] = None,
                 clock: Optional[Callable[[], float]] = None) -> list[dict]:
    """Time every target at every (batch, sequence) shape, interleaved; one row per target x shape.
    ``clock``: wall time by default; ``time.process_time`` measures the CPU time of the whole process
    instead (the work done, whatever other jobs on a shared machine take from it; meaningful with one
    intra-op thread and thread spinning off, so that no idle thread is counted).

    A target that fails to prepare or to run at a shape gets a row with ``error`` (and no figures);
    ratios are null when the baseline has no figures at that shape."""
    clock = clock or time.perf_counter
    rows = []
    for batch, seq in shapes:
        inputs = inputs_for(batch, seq)
        prepared, errors = {}, {}
        for t in targets:
            try:
                call = t.prepare(inputs)
                for _ in range(max(1, warmup)):
                    call()
                prepared[t.name] = call
            except Exception as exc:  # one target's failure is reported, the others still run
                errors[t.name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        if progress:
            progress(f"batch {batch} x seq {seq}: {len(prepared)} target(s), {rounds} round(s) of {calls} call(s)")
        names = list(prepared)
        samples = {n: [] for n in names}
        medians = {n: [] for n in names}
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)] if names else []
            for name in order:
                call = prepared[name]
                if name in errors:
                    continue
                times = []
                try:
                    for _ in range(calls):
                        t0 = clock()
                        call()
                        times.append(clock() - t0)
                except Exception as exc:
                    errors[name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                    continue
                samples[name] += times
                medians[name].append(statistics.median(times))
        prepared.clear()  # release per-shape sessions / interpreters before the next shape
        base = medians.get(baseline) if baseline and baseline not in errors else None
        for t in targets:
            row = {"target": t.name, "batch": batch, "sequence_length": seq}
            if t.name in errors or not samples.get(t.name):
                row["error"] = errors.get(t.name, "no timed calls")
                rows.append(row)
                continue
            s = samples[t.name]
            p50 = _percentile(s, 50)
            ratios = [m / b for m, b in zip(medians[t.name], base)] if base else []
            row.update({
                "calls": len(s), "p50_ms": _ms(p50), "p90_ms": _ms(_percentile(s, 90)),
                "mean_ms": _ms(float(np.mean(s))), "min_ms": _ms(min(s)),
                "sequences_per_s": round(batch / p50, 2), "tokens_per_s": round(batch * seq / p50, 1),
                "ratio": round(statistics.median(ratios), 4) if ratios else None,
                "ratio_range": [round(min(ratios), 4), round(max(ratios), 4)] if ratios else None,
                "round_p50_ms": [_ms(m) for m in medians[t.name]],
            })
            rows.append(row)
    return rows


def _ms(seconds: float) -> float:
    """Seconds as milliseconds to 6 significant digits: a fixed number of decimals would quantise the
    tens-of-microseconds calls of tiny models (0.0415 ms for 41.54 us) and skew figures derived from them."""
    return float(f"{seconds * 1e3:.6g}")


def round_ratio(rows: list[dict], target: str, baseline: str, batch: int, seq: int) -> Optional[float]:
    """Median over rounds of ``target``'s per-round p50 over ``baseline``'s (same shape, same rounds)."""
    by = {r["target"]: r for r in rows if r["batch"] == batch and r["sequence_length"] == seq and "error" not in r}
    if target not in by or baseline not in by:
        return None
    pairs = list(zip(by[target]["round_p50_ms"], by[baseline]["round_p50_ms"]))
    return round(statistics.median(a / b for a, b in pairs), 4) if pairs else None


# --- targets for a build's artifacts ----------------------------------------------------------------

def onnx_node_count(path: Path) -> Optional[int]:
    """The file's nodes as report.json counts them: those inside ``If`` branches and ``Loop`` bodies included (a
    padding-free artifact is 5 nodes at the top)."""
    try:
        import onnx

        from bertc.onnx_graph import graph_node_count

        return graph_node_count(onnx.load(str(path), load_external_data=False).graph)
    except Exception:
        return None


def onnx_target(backend: Backend, threads: int) -> Target:
    session = ort_session(backend, threads=threads, spinning=False)  # loaded once, shared by all shapes

    def prepare(inputs):
        feeds = onnx_feeds(session, inputs)
        return lambda: session.run(None, feeds)

    return Target(backend.name, prepare, {**backend.to_json(), "nodes": onnx_node_count(backend.path)})


def tflite_target(backend: Backend, threads: int) -> Target:
    tflite_interpreter(backend, threads)  # fail early on a damaged file

    def prepare(inputs):
        # One interpreter per shape: the signature runner re-plans its tensors whenever shapes change.
        runner = tflite_interpreter(backend, threads).get_signature_runner("serving_default")
        return lambda: runner(**inputs)

    return Target(backend.name, prepare, backend.to_json())


def keras_target(backend: Backend, threads: int) -> Target:
    from bertc.components.common import tf
    from bertc.transfer import load_keras_model

    try:
        model = load_keras_model(backend.path)
    except BertcError as exc:
        raise BackendLoadError(str(exc)) from None
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def prepare(inputs):
        feeds = {k: tf.constant(v) for k, v in inputs.items()}
        return lambda: {k: v.numpy() for k, v in forward(feeds).items()}

    return Target(backend.name, prepare, backend.to_json())


def set_tensorflow_threads(threads: int) -> Optional[str]:
    """Fix TensorFlow's pools (effective only before TensorFlow runs its first op); a note if too late."""
    from bertc.components.common import tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        return None
    except RuntimeError:
        return "TensorFlow was already initialised: Keras runs with its default thread pools"


def artifact_targets(out_dir: Path, artifacts: dict, threads: int, only: Optional[Sequence[str]] = None,
                     baseline: Optional[str] = None) -> tuple[list[Target], dict[str, str], dict[str, str]]:
    """Targets for every artifact x backend of a build: (targets, skipped reasons, load errors). A backend of
    ``only`` or a ``baseline`` that the build does not have is a :class:`BenchError` (exit 2) naming those it has
    (one it has that cannot run here, or that ``only`` leaves out, is not: then there are no ratios)."""
    backends, skipped = plan_backends(out_dir, artifacts, include_keras=True, only=only)
    known = [b.name for b in backends] + sorted(skipped)
    if baseline is not None and baseline not in known:
        raise BenchError(f"unknown baseline {baseline!r}; this build has: {', '.join(known)}")
    if only:
        unknown = sorted(set(only) - {b.name for b in backends} - set(skipped))
        if unknown:
            raise BenchError(f"unknown backend(s) {', '.join(map(repr, unknown))}; this build has: {', '.join(known)}")
        backends = [b for b in backends if b.name in only]
        skipped = {k: v for k, v in skipped.items() if k in only}
    targets, load_errors = [], {}
    make = {"onnx": onnx_target, "tflite": tflite_target, "keras": keras_target}
    for backend in backends:
        try:
            targets.append(make[backend.format](backend, threads))
        except BackendLoadError as exc:
            load_errors[backend.name] = str(exc)
    return targets, skipped, load_errors


# --- the command ------------------------------------------------------------------------------------

@dataclass
class BenchOptions:
    batches: tuple[int, ...] = (1,)
    seqs: Optional[tuple[int, ...]] = None  # default: DEFAULT_SEQS clipped to the model's maximum
    threads: int = 2
    rounds: int = 5
    warmup: int = 3
    calls: int = 10
    baseline: str = BASELINE
    backends: Optional[tuple[str, ...]] = None
    plot: bool = True
    text: Optional[Path] = None  # real text through the build's bundled tokenizer instead of random ids


def _versions() -> dict:
    out = {}
    for module in ("onnxruntime", "tensorflow", "keras", "ai_edge_litert"):
        try:
            from importlib.metadata import version

            out[module] = version(module.replace("_", "-") if module == "ai_edge_litert" else module)
        except Exception:
            out[module] = None
    return out


# The instruction sets ONNX Runtime's CPU kernels (MLAS) dispatch on: int8 GEMMs run several times faster
# with AMX or VNNI than with plain AVX2, so int8 / fp32 ratios from different machines are not comparable.
KERNEL_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_model() -> "tuple[str | None, list[str]]":
    """The CPU's model name and which of ``KERNEL_ISA`` it has (Linux: /proc/cpuinfo; elsewhere: none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or None, []
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                None)
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return name or platform.processor() or None, [f for f in KERNEL_ISA if f in flags]


def write_results(path, data, indent: int = 1, default=None) -> None:
    """A benchmark's figures as JSON at ``path`` (its folder made when missing): what every tools/ script saves."""
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent, default=default) + "\n", encoding="utf-8")


def machine_info() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    name, isa = cpu_model()
    return {"platform": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
            "processor": name, "isa": isa, "cpu_count": os.cpu_count(),
            "load_average": [round(x, 2) for x in load] if load else None}


def read_build(out_dir: Path):
    """The spec and report of the build in ``out_dir``, checked before any timing: a damaged report.json, a
    directory where bench.json cannot be written or a build of it running is an :class:`OutputError` (exit 5), a
    plug-in the build used and this process has not loaded a :class:`PluginError` (exit 2)."""
    from bertc.plugins import require_for_build
    from bertc.report import read_report, require_writable
    from bertc.rerun import build_spec, refuse_while_building

    out_dir = Path(out_dir)
    for name in ("spec.json", "report.json"):
        if not (out_dir / name).exists():
            raise OutputError(f"{out_dir} is not a bertc build directory: {name} is missing")
    report = read_report(out_dir)
    if not report["artifacts"]:
        raise OutputError(f"{out_dir / 'report.json'} lists no artifacts (was the build run with --no-export?)")
    require_for_build(out_dir, "bench")
    require_writable(out_dir, "bench.json and bench.png", "bertc bench")   # not after the timing: exit 5 now
    refuse_while_building(out_dir, "bertc bench")   # a build about to replace OUT: its figures would be filed there
    return build_spec(out_dir), report


def shapes_for(spec, opts: BenchOptions) -> list[tuple[int, int]]:
    max_len = spec.encoder.max_sequence_length
    seqs = opts.seqs or tuple(sorted({min(s, max_len) for s in DEFAULT_SEQS}))
    too_long = [s for s in seqs if s > max_len]
    if too_long:
        raise BenchError(f"--seq {','.join(map(str, too_long))} exceeds the model's max_sequence_length {max_len}")
    return [(b, s) for b in opts.batches for s in seqs]


def bench_inputs(spec) -> Callable[[int, int], dict]:
    """Full rows (no padding), deterministic per shape."""
    from bertc.inputs import make_inputs

    return lambda b, s: make_inputs(spec, b, s, np.random.default_rng([spec.seed, b, s]), lengths=[s] * b)


def text_inputs(out_dir: Path, spec, opts: BenchOptions) -> tuple[list[tuple[int, int]], Callable[[int, int], dict]]:
    """Shapes and inputs from a text file: for each batch size B the first B examples (repeated when the file
    has fewer), tokenized by the build's bundled tokenizer and padded to the longest of them."""
    from bertc.text import encode_texts, read_texts

    if opts.seqs:
        raise BenchError("--seq cannot be combined with --text: the sequence length is the tokenized text's")
    texts = read_texts(opts.text)
    cache = {}
    for b in opts.batches:
        chosen = [texts[i % len(texts)] for i in range(b)]
        inputs = encode_texts(out_dir, chosen, spec.encoder.max_sequence_length, spec)
        cache[(b, int(inputs["input_mask"].shape[1]))] = inputs
    return list(cache), lambda b, s: cache[(b, s)]


def run_bench(out_dir: Path, opts: BenchOptions, command: str = "",
              progress: Optional[Callable[[str], None]] = None) -> dict:
    """Bench every artifact x backend of the build in ``out_dir``; write ``bench.json`` (and the chart
    ``bench.png`` when matplotlib is installed) into it and return the results (``not_saved``: why bench.json could
    not be written after all, when the directory stopped being writable during the timing). A build that replaced
    ``out_dir`` meanwhile (or is running) is a :class:`bertc.rerun.BuildReplaced` (exit 5), nothing written."""
    from bertc.report import write_text_atomic
    from bertc.runtime import check_threads

    check_threads(opts.threads)     # before anything is read: thousands of threads spend minutes being made
    out_dir = Path(out_dir)
    spec, report = read_build(out_dir)
    if opts.text is not None:
        shapes, inputs_for = text_inputs(out_dir, spec, opts)
    else:
        shapes, inputs_for = shapes_for(spec, opts), bench_inputs(spec)
    notes = []
    tf_note = set_tensorflow_threads(opts.threads)
    if tf_note:
        notes.append(tf_note)
    targets, skipped, load_errors = artifact_targets(out_dir, report["artifacts"], opts.threads, opts.backends,
                                                     opts.baseline)
    if not targets:
        raise BenchError("nothing to time: " + "; ".join(f"{k}: {v}" for k, v in {**load_errors, **skipped}.items()))
    if opts.baseline not in {t.name for t in targets}:
        notes.append(f"baseline {opts.baseline} is not among the timed targets: no ratios")
    machine_before = machine_info()
    t0 = time.perf_counter()
    rows = time_targets(targets, shapes, inputs_for, opts.rounds, opts.warmup, opts.calls,
                        opts.baseline, progress)
    seconds = round(time.perf_counter() - t0, 2)
    from bertc.rerun import changed_since_build

    changed = changed_since_build(out_dir, report)   # as bertc parity: what was timed is what is in OUT today
    if changed:
        notes.append(f"timed files that differ from the build's manifest (not what the build wrote, so not its "
                     f"figures): {', '.join(changed)}")
    result = {
        "command": command, "build": str(out_dir), "spec_name": spec.name,
        "settings": {"batches": list(opts.batches), "sequence_lengths": sorted({s for _, s in shapes}),
                     "threads": opts.threads, "rounds": opts.rounds, "warmup": opts.warmup, "calls": opts.calls,
                     "baseline": opts.baseline, "ort_spinning": False, "interleaved": True,
                     "inputs": f"text from {opts.text}" if opts.text is not None else "random ids, full rows"},
        "targets": {t.name: t.info for t in targets},
        "skipped": skipped, "load_errors": load_errors, "notes": notes,
        **({"changed_since_build": changed} if changed else {}),
        "results": rows,
        "seconds": seconds,
        "machine": {**machine_before, "load_average_after": machine_info()["load_average"]},
        "versions": _versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    from bertc.rerun import saving_into

    result["chart"] = None
    chart = None
    if opts.plot:   # drawn before OUT's lock is taken (matplotlib takes a while), moved in under it
        chart = out_dir / f".bench.{os.getpid()}.png"
        try:
            plot_latency(result, chart)
        except ImportError:
            from bertc.requirements import pip_install

            notes.append(f"no chart: matplotlib is not installed ({pip_install('plot')} for bench.png)")
            chart = None
        except OSError as exc:
            notes.append(f"no chart: cannot write {out_dir / 'bench.png'}: {exc.strerror or exc}")
            chart = None
    try:
        with saving_into(out_dir, report, "bertc bench", "its figures"):
            try:
                write_text_atomic(out_dir / "bench.json", json.dumps({k: v for k, v in result.items() if k != "chart"},
                                                                     indent=2) + "\n")
            except OSError as exc:   # it became unwritable during the timing (or the disk is full): the caller
                # still shows them
                result["not_saved"] = f"cannot write {out_dir / 'bench.json'}: {exc.strerror or exc}"
                return result
            if chart is not None:
                try:
                    os.replace(chart, out_dir / "bench.png")
                    result["chart"] = str(out_dir / "bench.png")
                except OSError as exc:
                    notes.append(f"no chart: cannot write {out_dir / 'bench.png'}: {exc.strerror or exc}")
    finally:
        if chart is not None:
            chart.unlink(missing_ok=True)
    return result


def table(result: dict) -> str:
    """The console table: one line per target x shape."""
    head = f"{'target':<22} {'batch':>5} {'seq':>5} {'p50 ms':>10} {'p90 ms':>10} {'seq/s':>10} {'ratio':>7}"
    lines = [head, "-" * len(head)]
    for r in result["results"]:
        if "error" in r:
            lines.append(f"{r['target']:<22} {r['batch']:>5} {r['sequence_length']:>5}  failed: {r['error']}")
            continue
        ratio = f"{r['ratio']:.3f}" if r.get("ratio") is not None else "-"
        lines.append(f"{r['target']:<22} {r['batch']:>5} {r['sequence_length']:>5} {r['p50_ms']:>10.3f} "
                     f"{r['p90_ms']:>10.3f} {r['sequences_per_s']:>10.1f} {ratio:>7}")
    s = result["settings"]
    lines.append(f"threads {s['threads']}, {s['rounds']} interleaved round(s) x {s['calls']} call(s), "
                 f"ratio = median per-round p50 ratio to {s['baseline']}")
    for name, why in result["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    for name, why in result["load_errors"].items():
        lines.append(f"not loaded {name}: {why}")
    for note in result["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def plot_latency(result: dict, path: Path) -> Path:
    """A bar chart of p50 latency (p90 as a whisker) by target, one group per shape. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["results"] if "error" not in r]
    shapes = sorted({(r["batch"], r["sequence_length"]) for r in rows})
    names = list(dict.fromkeys(r["target"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(names) * max(1, len(shapes)) ** 0.5 + 2), 4.5))
    width = 0.8 / max(1, len(shapes))
    for k, shape in enumerate(shapes):
        by = {r["target"]: r for r in rows if (r["batch"], r["sequence_length"]) == shape}
        xs = [i + k * width for i, n in enumerate(names) if n in by]
        p50 = [by[n]["p50_ms"] for n in names if n in by]
        p90 = [by[n]["p90_ms"] - by[n]["p50_ms"] for n in names if n in by]
        ax.bar(xs, p50, width, yerr=[[0] * len(p90), p90], capsize=2, label=f"batch {shape[0]} x seq {shape[1]}")
    ax.set_xticks([i + width * (len(shapes) - 1) / 2 for i in range(len(names))])
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("latency p50 (ms), whisker to p90")
    ax.set_yscale("log")
    ax.set_title(f"{result['spec_name']}: {result['settings']['threads']} thread(s)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".partial.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    except BaseException:   # a full disk: nothing half-written left in the build's folder
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path
