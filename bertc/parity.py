"""Same inputs through every backend, one report.

The Keras model (inference mode) is the reference. Backends: ONNX Runtime on
the CPU provider, on the CUDA provider when the installed onnxruntime has it,
and TFLite (ai_edge_litert). Every backend x output is checked for shape,
dtype and values over a grid of batch sizes and sequence lengths; all failures
are collected and reported together.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from bertc.errors import ParityError
from bertc.inputs import make_inputs
from bertc.signature import Signature
from bertc.spec import Spec


@dataclass
class OutputParity:
    backend: str
    output: str
    atol: float
    rtol: float
    cases: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    mean_abs: float = 0.0
    argmax_agreement: Optional[float] = None
    worst_case: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def sequence_grid(spec: Spec) -> list[int]:
    if spec.parity.sequence_lengths:
        return list(spec.parity.sequence_lengths)
    max_len = spec.encoder.max_sequence_length
    middle = max(1, max_len // 2) | 1  # an odd length in the middle
    return sorted({1, min(middle, max_len), max_len})


def grid(spec: Spec) -> list[tuple[int, int]]:
    return [(b, s) for b in spec.parity.batch_sizes for s in sequence_grid(spec)]


def grid_inputs(spec: Spec) -> list[tuple[str, dict[str, np.ndarray]]]:
    cases = []
    for b, s in grid(spec):
        rng = np.random.default_rng([spec.seed, b, s])
        cases.append((f"batch {b} x seq {s}", make_inputs(spec, b, s, rng)))
    return cases


# --- backends: each is name -> callable(inputs dict) -> outputs dict -------------------------------

def keras_runner(model) -> Callable:
    from bertc.components.common import tf

    def run(inputs):
        out = model({k: tf.constant(v) for k, v in inputs.items()}, training=False)
        return {k: np.asarray(v) for k, v in out.items()}

    return run


def onnx_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def onnx_runner(path: Path, provider: str, input_dtype: str = "int32") -> Callable:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=[provider])
    if provider not in session.get_providers():
        raise ParityError(f"ONNX Runtime could not use {provider} for {path.name}")
    names = [o.name for o in session.get_outputs()]
    cast = np.int64 if input_dtype == "int64" else np.int32

    def run(inputs):
        values = session.run(names, {k: v.astype(cast) for k, v in inputs.items()})
        return dict(zip(names, values))

    return run


def tflite_runner(path: Path) -> Callable:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner("serving_default")

    def run(inputs):
        return {k: np.array(v) for k, v in runner(**inputs).items()}

    return run


def available_backends(out_dir: Path, report_export: dict) -> tuple[dict[str, Callable], dict[str, str]]:
    """Runners for the artifacts present, and a reason for each backend that is skipped."""
    runners, skipped = {}, {}
    onnx_path, tflite_path = out_dir / "model.onnx", out_dir / "model.tflite"
    dtype = (report_export.get("onnx") or {}).get("input_dtype", "int32")
    providers = onnx_providers()
    if not onnx_path.exists():
        skipped["onnx_cpu"] = skipped["onnx_cuda"] = "no model.onnx (ONNX export disabled)"
    elif not providers:
        skipped["onnx_cpu"] = skipped["onnx_cuda"] = ("onnxruntime is not installed: pip install 'bertc[cpu]' "
                                                      "(or 'bertc[gpu]' for CUDA)")
    else:
        runners["onnx_cpu"] = onnx_runner(onnx_path, "CPUExecutionProvider", dtype)
        if "CUDAExecutionProvider" in providers:
            runners["onnx_cuda"] = onnx_runner(onnx_path, "CUDAExecutionProvider", dtype)
        else:
            skipped["onnx_cuda"] = "CUDA provider not available (install onnxruntime-gpu on a CUDA machine)"
    if tflite_path.exists():
        runners["tflite"] = tflite_runner(tflite_path)
    else:
        skipped["tflite"] = "no model.tflite (TFLite export disabled)"
    return runners, skipped


# --- comparison -----------------------------------------------------------------------------------

def compare(spec: Spec, sig: Signature, reference: Callable, backends: dict[str, Callable],
            cases: Optional[list] = None) -> list[OutputParity]:
    infos = sig.outputs
    results = {(b, o.name): OutputParity(b, o.name, spec.parity.tolerance(b).atol, spec.parity.tolerance(b).rtol)
               for b in backends for o in infos}
    sums = {key: [0.0, 0] for key in results}
    agree = {key: [0, 0] for key in results}
    for case, inputs in (cases if cases is not None else grid_inputs(spec)):
        ref = reference(inputs)
        for backend, run in backends.items():
            try:
                got = run(inputs)
            except Exception as exc:  # a backend that cannot run a case is a parity failure, not a crash
                for o in infos:
                    results[(backend, o.name)].problems.append(f"{case}: failed to run: {type(exc).__name__}: {exc}")
                continue
            for o in infos:
                r, key = results[(backend, o.name)], (backend, o.name)
                r.cases += 1
                want = ref[o.name]
                if o.name not in got:
                    r.problems.append(f"{case}: output missing (got {sorted(got)})")
                    continue
                have = np.asarray(got[o.name])
                if have.shape != want.shape:
                    r.problems.append(f"{case}: shape {have.shape} != reference {want.shape}")
                    continue
                if have.dtype != want.dtype:
                    r.problems.append(f"{case}: dtype {have.dtype} != reference {want.dtype}")
                diff = np.abs(have.astype(np.float64) - want.astype(np.float64))
                if not np.all(np.isfinite(have)):
                    r.problems.append(f"{case}: {int(np.size(have) - np.isfinite(have).sum())} non-finite values")
                    continue
                max_abs = float(diff.max()) if diff.size else 0.0
                rel = float((diff / np.maximum(np.abs(want), 1e-6)).max()) if diff.size else 0.0
                if max_abs >= r.max_abs:
                    r.worst_case = case
                r.max_abs, r.max_rel = max(r.max_abs, max_abs), max(r.max_rel, rel)
                sums[key][0] += float(diff.sum())
                sums[key][1] += diff.size
                if o.kind in ("logits", "log_probs") and want.size:
                    agree[key][0] += int((have.argmax(-1) == want.argmax(-1)).sum())
                    agree[key][1] += int(np.prod(want.shape[:-1]))
                bound = r.atol + r.rtol * np.abs(want)
                if np.any(diff > bound):
                    r.problems.append(f"{case}: max abs diff {max_abs:.3g} > atol {r.atol:g}"
                                      + (f" + rtol {r.rtol:g}*|ref|" if r.rtol else ""))
    for key, r in results.items():
        r.mean_abs = sums[key][0] / sums[key][1] if sums[key][1] else 0.0
        if agree[key][1]:
            r.argmax_agreement = agree[key][0] / agree[key][1]
    return list(results.values())


def run_parity(spec: Spec, sig: Signature, model, out_dir: Path, export_report: dict,
               cases: Optional[list] = None) -> dict:
    """Parity of the artifacts in ``out_dir`` against ``model``: the report section, with
    ``passed`` false (and every problem listed) when any backend disagrees. ``cases`` ((name, inputs)
    pairs, e.g. tokenized text) replace the default grid of random inputs."""
    backends, skipped = available_backends(out_dir, export_report)
    results = compare(spec, sig, keras_runner(model), backends, cases)
    section = {
        "reference": "keras (inference mode)",
        "grid": ([{"batch": b, "sequence_length": s} for b, s in grid(spec)] if cases is None else
                 [{"case": name, "batch": len(x["input_mask"]), "sequence_length": x["input_mask"].shape[1]}
                  for name, x in cases]),
        "backends": sorted(backends), "skipped": skipped,
        "results": [r.to_json() for r in results],
        "passed": all(r.passed for r in results),
        "max_abs_by_backend": {b: max((r.max_abs for r in results if r.backend == b), default=0.0) for b in backends},
    }
    return section


def rerun_parity(out_dir: Path, atol: Optional[float] = None, rtol: Optional[float] = None,
                 text: Optional[Path] = None) -> dict:
    """``bertc parity OUT/``: reload the Keras model and artifacts of a build, compare, and update
    ``report.json`` (atomically) with the new parity section."""
    import json

    from bertc.errors import OutputError
    from bertc.report import write_report
    from bertc.signature import signature_of
    from bertc.spec import Tolerance, load_spec
    from bertc.transfer import load_keras_model

    out_dir = Path(out_dir)
    for name in ("spec.json", "model.keras", "report.json"):
        if not (out_dir / name).exists():
            raise OutputError(f"{out_dir} is not a bertc build directory: {name} is missing")
    spec = load_spec(out_dir / "spec.json")
    if atol is not None or rtol is not None:
        tol = Tolerance(atol=spec.parity.default.atol if atol is None else atol,
                        rtol=spec.parity.default.rtol if rtol is None else rtol)
        spec = spec.model_copy(update={"parity": spec.parity.model_copy(update={"default": tol, "backends": {}})})
    try:
        report = json.loads((out_dir / "report.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise OutputError(f"{out_dir / 'report.json'}: cannot be read as JSON ({exc})") from None
    cases = None
    if text is not None:
        from bertc.text import text_cases

        cases = text_cases(out_dir, text, spec)
    section = run_parity(spec, signature_of(spec), load_keras_model(out_dir), out_dir, report.get("artifacts") or {},
                         cases)
    report["parity"] = section
    report["status"] = "passed" if section["passed"] else "failed"
    write_report(out_dir, report)
    return section
