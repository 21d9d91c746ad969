"""A build's artifacts as runnable backends (shared by parity and bench).

``report["artifacts"]`` maps an artifact id to its file and what it is (``format``,
``precision``; ONNX entries also ``input_dtype`` and ``providers``, the ONNX Runtime
execution providers the artifact is meant for). Each ONNX artifact runs on every provider it
is meant for that the installed onnxruntime has (a backend ``<id>_cpu`` / ``<id>_cuda``);
each TFLite artifact runs on LiteRT (backend ``<id>``). A backend that cannot run here is
*skipped* with the reason; an artifact that is listed but cannot be loaded (missing,
truncated, garbage) raises :class:`BackendLoadError` naming the file and what is wrong.
"""
from __future__ import annotations

import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from bertc.errors import BackendLoadError
from bertc.requirements import pip_install

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
PROVIDER_SUFFIX = {CPU: "cpu", CUDA: "cuda"}
FORMAT_BY_SUFFIX = {".keras": "keras", ".onnx": "onnx", ".tflite": "tflite"}
NO_ONNXRUNTIME = f"onnxruntime is not installed: {pip_install('cpu')} (or {pip_install('gpu')} for CUDA)"
NO_CUDA = "CUDA provider not available (install onnxruntime-gpu on a CUDA machine)"

Runner = Callable[[dict], dict]  # model inputs (name -> array) -> outputs (name -> array)


@dataclass(frozen=True)
class Backend:
    name: str  # e.g. onnx_cpu, onnx_int8_cpu, onnx_fp16_cuda, tflite_int8, keras
    artifact: str  # the artifact id in report["artifacts"]
    path: Path
    format: str  # keras | onnx | tflite
    precision: str  # fp32 | int8 | fp16
    provider: Optional[str] = None  # ONNX Runtime execution provider (ONNX backends only)
    # what outputs along the sequence axis hold at padded positions: None (computed, as Keras), "zeros"
    # (the padding-free artifacts, bertc/optimize/padding_free.py)
    padded_positions: Optional[str] = None

    @property
    def reduced_precision(self) -> bool:
        return self.precision != "fp32"

    def to_json(self) -> dict:
        out = {"name": self.name, "artifact": self.artifact, "path": self.path.name, "format": self.format,
               "precision": self.precision, "provider": self.provider}
        settings = provider_options(self)
        if settings:
            out["provider_options"] = settings
        if self.padded_positions:
            out["padded_positions"] = self.padded_positions
        return out


def artifact_info(artifact_id: str, entry: dict) -> dict:
    """``entry`` with ``format``, ``precision`` and (ONNX) ``providers`` filled in when a report
    written before the artifact contract lacks them (inferred from the file name)."""
    info = dict(entry)
    path = str(info.get("path", ""))
    suffix = next((s for s in FORMAT_BY_SUFFIX if path.endswith(s)), "")
    info.setdefault("format", FORMAT_BY_SUFFIX.get(suffix, "unknown"))
    precision = next((p for p in ("int8", "fp16") if p in artifact_id or f".{p}." in path), "fp32")
    info.setdefault("precision", precision)
    if info["format"] == "onnx":
        info.setdefault("providers", [CUDA] if info["precision"] == "fp16" else [CPU, CUDA])
        info.setdefault("input_dtype", "int32")
    return info


def backend_name(artifact_id: str, provider: Optional[str] = None) -> str:
    return f"{artifact_id}_{PROVIDER_SUFFIX.get(provider, provider)}" if provider else artifact_id


def onnx_providers(probe: bool = True) -> list[str]:
    """The execution providers of the installed onnxruntime that can run a session here: CUDA only where
    :func:`provider_problem` finds none (``probe=False``: as onnxruntime lists them, CUDA untried; for a caller that
    will not use it)."""
    from bertc.requirements import import_onnxruntime

    try:
        ort = import_onnxruntime()   # a Ctrl-C during its import: KeyboardInterrupt, not "not installed"
    except ImportError:
        return []
    return [p for p in ort.get_available_providers() if p != CUDA or not probe or provider_problem(CUDA) is None]


# A one-node model (Identity of a float[1]; IR 7, opset 13) to try a provider with, serialized here: a run-only
# environment has onnxruntime but not the onnx package.
_PROBE_MODEL = (b'\x08\x07:7\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x01pZ\x0f\n\x01x\x12\n\n\x08\x08\x01\x12\x04\n'
                b'\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r')
_problems: dict[str, Optional[str]] = {}
_problems_lock = threading.Lock()


def provider_problem(provider: str) -> Optional[str]:
    """Why ``provider``, which the installed onnxruntime lists, cannot run a session on this host (None: it
    can). onnxruntime-gpu lists CUDA whatever the host has; a session asked for it where its libraries do not load
    (no GPU driver, a CUDA or cuDNN it was not built for) runs on the CPU instead and says so only in ONNX Runtime's
    log: parity then failed a good build's CUDA backends, and ``bertc run`` said "cuda" while it ran on the CPU.
    Tried once per process with a one-node model (the answer stays for the process's life); the reason is ONNX
    Runtime's own words (the library that failed to load, or the error of the provider's set-up)."""
    if provider == CPU:
        return None
    with _problems_lock:
        if provider not in _problems:
            _problems[provider] = _try_provider(provider)
        return _problems[provider]


def _try_provider(provider: str) -> Optional[str]:
    import contextlib
    import io
    import tempfile

    import onnxruntime as ort

    from bertc.quiet import native_stderr_to

    printed = io.StringIO()   # onnxruntime prints its "EP Error ... Falling back" banner on stdout: not bertc's
    with tempfile.TemporaryDirectory(prefix="bertc-provider-") as folder:
        log = Path(folder) / "log"
        try:
            with native_stderr_to(log), contextlib.redirect_stdout(printed), warnings.catch_warnings():
                warnings.simplefilter("ignore")   # onnxruntime's "not in available provider names"
                used = ort.InferenceSession(_PROBE_MODEL, providers=[provider]).get_providers()
        except Exception as exc:
            return f"{provider} cannot run a session here: {_first_line(exc)}"
        if provider in used:
            return None
        said = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    said = re.sub(r"\x1b\[[0-9;]*m", "", said + "\n" + printed.getvalue())
    lines = said.splitlines()
    why = next((line[line.index("Failed to load"):] for line in lines if "Failed to load" in line), None)
    why = why or next((line[line.index("EP Error") + len("EP Error"):].strip() for line in lines
                       if "EP Error " in line), None)
    why = why or next((m.group(1) for m in map(re.compile(r"\[E:onnxruntime[^\]]*\]\s*(.+)").search, lines) if m), None)
    return (f"onnxruntime lists {provider} but cannot use it on this host"
            + (f" ({_first_line(ValueError(why))})" if why else " (a session asked for it ran on the CPU: no usable "
               "GPU, its driver, or a CUDA / cuDNN that this onnxruntime was not built for)"))


def no_onnxruntime() -> str:
    """Why no ONNX backend can run: onnxruntime not installed, or installed but failing to import (its error)."""
    import importlib.util

    from bertc.requirements import import_onnxruntime

    try:
        if importlib.util.find_spec("onnxruntime") is None:
            return NO_ONNXRUNTIME
        import_onnxruntime()
    except ModuleNotFoundError:
        return NO_ONNXRUNTIME
    except ImportError as exc:
        from bertc.requirements import ONNXRUNTIME_EXTRAS, onnxruntime_distributions

        extra = next((ONNXRUNTIME_EXTRAS[d] for d in onnxruntime_distributions() if d in ONNXRUNTIME_EXTRAS), "cpu")
        return (f"onnxruntime is installed but does not import ({_first_line(exc)}); reinstall it: "
                f"{pip_install(extra).replace('pip install', 'pip install --force-reinstall', 1)}")
    return NO_ONNXRUNTIME


def provider_missing(provider: str) -> str:
    """Why a backend on ``provider`` cannot run here (:func:`onnx_providers` left it out)."""
    if provider == CUDA:
        return _problems.get(CUDA) or NO_CUDA
    return f"{provider} not available in this onnxruntime"


def plan_backends(out_dir: Path, artifacts: dict, include_keras: bool = False,
                  only: Optional[Sequence[str]] = None) -> tuple[list[Backend], dict[str, str]]:
    """The backends to run for the artifacts of ``out_dir`` (in the report's order), and a reason for
    each one that cannot run on this machine. ``only``: the backends the caller will keep (``bertc bench
    --backends``): CUDA is not tried when none of them is on it."""
    out_dir = Path(out_dir)
    backends, skipped = [], {}
    probe = only is None or any(name.endswith("_" + PROVIDER_SUFFIX[CUDA]) for name in only)
    available = onnx_providers(probe)
    none_why = no_onnxruntime() if not available else ""
    for artifact_id, entry in artifacts.items():
        info = artifact_info(artifact_id, entry)
        path = out_dir / info["path"]
        if info["format"] == "keras":
            if include_keras:
                backends.append(Backend(artifact_id, artifact_id, path, "keras", info["precision"]))
        elif info["format"] == "onnx":
            if not info["providers"]:
                skipped[artifact_id] = f"{info['path']} lists no execution provider to run it on"
            for provider in info["providers"]:
                name = backend_name(artifact_id, provider)
                if not available:
                    skipped[name] = none_why
                elif provider not in available:
                    skipped[name] = provider_missing(provider)
                else:
                    backends.append(Backend(name, artifact_id, path, "onnx", info["precision"], provider,
                                            info.get("padded_positions")))
        elif info["format"] == "tflite":
            backends.append(Backend(artifact_id, artifact_id, path, "tflite", info["precision"]))
    for artifact_id, file, names in (("onnx", "model.onnx", ("onnx_cpu", "onnx_cuda")), ("tflite", "model.tflite", ("tflite",))):
        if artifact_id not in artifacts:
            for name in names:
                skipped.setdefault(name, f"no {file} (not exported)")
    return backends, skipped


# --- loading ----------------------------------------------------------------------------------------

def _first_line(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def _require_file(backend: Backend) -> None:
    if not backend.path.exists():
        raise BackendLoadError(f"{backend.path.name}: listed in report.json but missing from {backend.path.parent}")
    if backend.path.is_dir():
        raise BackendLoadError(f"{backend.path.name}: is a directory, not a model file")


def provider_options(backend: Backend) -> dict:
    """Execution-provider settings for ``backend``. ONNX Runtime's CUDA provider runs fp32 MatMul, Gemm and
    the fused Attention on TF32 tensor cores by default (10-bit mantissa), too coarse for parity's fp32
    tolerance (measured: README.md, "CUDA figures"; tools/results/cuda_parity.json). An fp32 artifact is
    meant to compute what Keras computes, so on CUDA it runs with ``use_tf32=0``; the fp16 artifact is
    the fast one on GPUs."""
    if backend.provider == CUDA and backend.precision == "fp32":
        return {"use_tf32": "0"}
    return {}


def session_options(threads: Optional[int] = None, spinning: bool = True):
    """The ONNX Runtime session options of every session bertc makes (parity, bench, ``bertc run``, the optimize
    stage's checks and int8 tuning): what is checked runs as what is run. Every graph optimization on, errors only in
    the log; ``threads`` fixes the intra-op pool (one inter-op thread, sequential execution); ``spinning=False``
    stops idle pool threads from busy-waiting (several sessions sharing the cores, as in ``bertc bench``: one
    session's spinning pool would take the cores of the next)."""
    import onnxruntime as ort

    from bertc.requirements import require_onnxruntime

    require_onnxruntime(ort)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def ort_session(backend: Backend, threads: Optional[int] = None, spinning: bool = True):
    """An ONNX Runtime session for ``backend`` (:func:`session_options`)."""
    import onnxruntime as ort

    options = session_options(threads, spinning)
    _require_file(backend)
    settings = provider_options(backend)
    try:
        from bertc.weights import spec_text   # its name as UTF-8 text, whatever the locale (ort_session says why)

        session = ort.InferenceSession(spec_text(str(backend.path)), options,
                                       providers=[(backend.provider, settings) if settings else backend.provider])
    except Exception as exc:
        raise BackendLoadError(f"{backend.path.name}: cannot be loaded by ONNX Runtime: {_first_line(exc)}") from None
    if backend.provider not in session.get_providers():
        raise BackendLoadError(f"{backend.path.name}: ONNX Runtime could not use {backend.provider} "
                               f"(session has {session.get_providers()})")
    return session


_ORT_INTS = {"tensor(int32)": np.int32, "tensor(int64)": np.int64}


def onnx_feeds(session, inputs: dict) -> dict:
    """``inputs`` cast to the integer type each input of the session declares."""
    types = {i.name: _ORT_INTS.get(i.type) for i in session.get_inputs()}
    return {k: (v.astype(types[k]) if types.get(k) is not None else v) for k, v in inputs.items()}


def onnx_runner(backend: Backend, threads: Optional[int] = None, spinning: bool = True) -> Runner:
    session = ort_session(backend, threads, spinning)
    names = [o.name for o in session.get_outputs()]

    def run(inputs):
        return dict(zip(names, session.run(names, onnx_feeds(session, inputs))))

    return run


def tflite_interpreter(backend: Backend, threads: Optional[int] = None):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise BackendLoadError(f"{backend.path.name}: the LiteRT runtime is not installed "
                               f"(pip install 'ai-edge-litert>=2.0,<3'): {exc}") from None
    _require_file(backend)
    try:
        from bertc.weights import spec_text

        return Interpreter(model_path=spec_text(str(backend.path)), num_threads=threads)
    except Exception as exc:
        raise BackendLoadError(f"{backend.path.name}: cannot be loaded by LiteRT: {_first_line(exc)}") from None


def tflite_runner(backend: Backend, threads: Optional[int] = None) -> Runner:
    interpreter = tflite_interpreter(backend, threads)
    try:
        runner = interpreter.get_signature_runner("serving_default")
    except Exception as exc:
        raise BackendLoadError(f"{backend.path.name}: has no 'serving_default' signature: {_first_line(exc)}") from None

    def run(inputs):
        return {k: np.array(v) for k, v in runner(**inputs).items()}

    return run


def keras_runner(model) -> Runner:
    from bertc.components.common import tf

    def run(inputs):
        out = model({k: tf.constant(v) for k, v in inputs.items()}, training=False)
        return {k: np.asarray(v) for k, v in out.items()}

    return run


def open_runner(backend: Backend, threads: Optional[int] = None, spinning: bool = True) -> Runner:
    """A runner for ``backend`` (ONNX or TFLite); raises :class:`BackendLoadError`."""
    if backend.format == "onnx":
        return onnx_runner(backend, threads, spinning)
    if backend.format == "tflite":
        return tflite_runner(backend, threads)
    raise BackendLoadError(f"{backend.path.name}: no runner for format {backend.format!r}")
