"""Keras -> TFLite (builtin ops only) through a SavedModel of placeholder weights.

Converting from concrete functions can leave Keras 3 variables unfrozen (NaN
outputs); going through a SavedModel is reliable. The SavedModel's serving
signature takes the model's inputs by name, so the TFLite signature
``serving_default`` has the model's input and output names. Batch and sequence
length stay dynamic (the interpreter resizes them at run time).
"""
from __future__ import annotations

import contextlib
import gc
import mmap
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from bertc.components.common import tf
from bertc.errors import FILESYSTEM_ERRNOS, ExportError
from bertc.weights import spec_text
from bertc.export.tflite_weights import WEIGHT_PREFIX, fill_weights, graph_weight_uses, placeholder_values

SIGNATURE = "serving_default"


PRECISIONS = ("fp32", "fp16", "int8")


def _signature(sig):
    return [{i.name: tf.TensorSpec((None, i.length), tf.int32, name=i.name) for i in sig.inputs}]


def serving_function(model, sig, weight_value):
    """A tf.function taking the model's inputs by name, with each weight a graph constant named
    ``bertc_weight_<k>`` whose value is ``weight_value(k, variable)``.

    Weights go in as constants (stateless_call), so the SavedModel holds no variables: the converter
    otherwise keeps Keras 3 variables as mutable READ_VARIABLE ops (NaN / failed invokes)."""
    trainable, non_trainable = list(model.trainable_variables), list(model.non_trainable_variables)
    variables = trainable + non_trainable
    values = [weight_value(k, v) for k, v in enumerate(variables)]
    n_tr = len(trainable)
    outputs = sig.output_names

    @tf.function(input_signature=_signature(sig))
    def serve(features):
        weights = [tf.constant(value, dtype=v.dtype, shape=v.shape, name=f"{WEIGHT_PREFIX}{k}")
                   for k, (v, value) in enumerate(zip(variables, values))]
        out, _ = model.stateless_call(weights[:n_tr], weights[n_tr:], features, training=False)
        return {name: out[name] for name in outputs}

    return serve


def save_serving_model(model, sig, directory: Path):
    """A SavedModel of the model with its real weights (``--keep-saved-model``)."""
    serve = serving_function(model, sig, lambda k, v: v.numpy())
    module = tf.Module()
    module.serve = serve
    tf.saved_model.save(module, str(directory), signatures={SIGNATURE: serve})
    return serve.get_concrete_function()


_OP_RE = re.compile(r"'tf\.([A-Za-z0-9_]+)' op is neither a custom op nor a flex op")


def graph_ops(concrete_function) -> list[tuple[str, str]]:
    """(op type, op name) of every op in a traced function, nested function bodies included."""
    ops = [(op.type, op.name) for op in concrete_function.graph.get_operations()]
    for fdef in concrete_function.graph.as_graph_def().library.function:
        ops += [(node.op, f"{fdef.signature.name}/{node.name}") for node in fdef.node_def]
    return ops


def explain_converter_error(message: str, ops: list[tuple[str, str]] = ()) -> str:
    """Name each op the converter could not lower to a builtin, and the layers it came from."""
    missing = list(dict.fromkeys(_OP_RE.findall(message)))
    if not missing:
        tail = message.strip().splitlines()[-3:]
        return "TFLite conversion failed: " + " | ".join(tail)
    parts = []
    for op_type in missing:
        layers = sorted({name.rsplit("/", 1)[0] for t, name in ops if t == op_type and "/" in name})
        where = ", ".join(f"'{layer}'" for layer in layers[:5]) if layers else "an unnamed scope"
        parts.append(f"op tf.{op_type} (from layer {where}) has no builtin TFLite kernel")
    return ("TFLite export needs ops outside the builtin set: " + "; ".join(parts)
            + ". Rewrite them with builtin ops (e.g. exact GELU through erf, expand_dims instead of [:, None]).")


def _converter(saved: Path, precision: str):
    converter = tf.lite.TFLiteConverter.from_saved_model(spec_text(str(saved)), signature_keys=[SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    # The conversion metadata records the converter's environment; it costs a Python round trip of the
    # whole flatbuffer and is not needed to run the model.
    converter.exclude_conversion_metadata = True
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":  # dynamic-range: int8 weights, float activations
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter


@contextlib.contextmanager
def _without_buffer_deduplication():
    """The converter's last step deduplicates equal read-only buffers through the Python flatbuffer object
    API (seconds and a full copy of the model at BERT-base size). bertc's placeholders are distinct per
    weight, so there is nothing to merge among the weights; without it equal int8 placeholders also stay
    in separate buffers. (Private hook of ``tensorflow.lite.python.lite``; skipped if it moved.)"""
    from tensorflow.lite.python import lite

    original = getattr(lite, "_deduplicate_readonly_buffers", None)
    if original is None:
        yield
        return
    lite._deduplicate_readonly_buffers = lambda model: model
    try:
        yield
    finally:
        lite._deduplicate_readonly_buffers = original


def _convert(saved: Path, precision: str, tmp: Path) -> None:
    """Convert and write the flatbuffer to ``tmp`` (the converter's bytes are dropped at once, so the
    weights are next edited in the file through a memory map, not in a second in-memory copy)."""
    with _without_buffer_deduplication():
        model = _converter(saved, precision).convert()
    try:
        tmp.write_bytes(model)
    except OSError as exc:   # a full disk: the error names the file (a plain write's does not)
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(tmp)) from None
        raise
    del model


def _fill_in_file(tmp: Path, weight, placeholders, uses, own_values):
    """Write the real weights into the flatbuffer file ``tmp`` in place (memory-mapped)."""
    error = None
    with open(tmp, "r+b") as f:
        mapped = mmap.mmap(f.fileno(), 0)
        try:
            result, filled = fill_weights(mapped, weight, placeholders, uses, own_values)
            if result is mapped:
                mapped.flush()
                result = None
        except BaseException as exc:  # its traceback holds numpy views into the map: drop it before closing
            error = exc.with_traceback(None)
        gc.collect()
        try:
            mapped.close()
        except BufferError:  # a view still alive somewhere: the map closes when it is collected
            pass
    if error is not None:
        raise error
    if result is not None:  # the flatbuffer had to be re-serialized (shared buffers split)
        tmp.write_bytes(result)
    return filled


# Above this many parameters the converter runs in a child process while the build goes on (the ONNX
# export): the converter holds the GIL for its whole C++ run (~6 s on BERT-base, ~25 s on BERT-large) and
# the ONNX export uses one core. Below it the child's start-up (importing TensorFlow) costs more than
# it saves.
BACKGROUND_ABOVE_PARAMETERS = 20_000_000


class TFLiteJob:
    """The TFLite export of one model at one or more precisions, in two halves.

    :meth:`start` traces the model with placeholder weights into a SavedModel and starts converting it,
    in a child process for large models (:data:`BACKGROUND_ABOVE_PARAMETERS`) so that the caller can
    export ONNX meanwhile; :meth:`finish` waits for the conversions, writes the real weights into each
    flatbuffer and returns the artifact entries. :meth:`cancel` (also on any exception in between, when
    used as a context manager) stops the child and removes every partial file."""

    def __init__(self, model, sig, targets: list[tuple[Path, str]], keep_saved_model: Optional[Path] = None,
                 background: Optional[bool] = None):
        for _, precision in targets:
            if precision not in PRECISIONS:
                raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.model, self.sig, self.targets, self.keep = model, sig, list(targets), keep_saved_model
        self.background = (model.count_params() > BACKGROUND_ABOVE_PARAMETERS) if background is None else background
        self.seconds = 0.0          # the caller's own time in start() + finish()
        self._child = None
        self._workdir: Optional[Path] = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cancel()

    def _partial(self, path: Path) -> Path:
        return Path(str(path) + ".partial")

    def start(self) -> "TFLiteJob":
        try:
            return self._start()
        except BaseException:
            self.cancel()   # no SavedModel directory or child left behind by a failed trace
            raise

    def _start(self) -> "TFLiteJob":
        t0 = time.perf_counter()
        variables = list(self.model.trainable_variables) + list(self.model.non_trainable_variables)
        floating = [k for k, v in enumerate(variables) if str(v.dtype).startswith("float")]
        self.variables = variables
        self.placeholders = dict(zip(floating, placeholder_values(len(floating))))
        # next to the outputs (a build's staging directory): a build killed outright leaves nothing elsewhere
        self._workdir = Path(tempfile.mkdtemp(prefix=".bertc-savedmodel-", dir=self.targets[0][0].parent))
        self.saved = self._workdir / "saved_model"
        serve = serving_function(self.model, self.sig,
                                 lambda k, v: self.placeholders[k] if k in self.placeholders else v.numpy())
        module = tf.Module()
        module.serve = serve
        # TensorFlow encodes a path as UTF-8: the name's own bytes as UTF-8 text, whatever the locale (LC_ALL=C)
        tf.saved_model.save(module, spec_text(str(self.saved)), signatures={SIGNATURE: serve})
        self.concrete = serve.get_concrete_function()
        self.saved_model_seconds = time.perf_counter() - t0
        self._t_convert = time.perf_counter()
        if self.background:
            import subprocess
            import sys

            # -P: not the working directory first on the child's path (-m puts it there, ahead of PYTHONPATH: a
            # bertc/ folder where the command ran, e.g. another checkout, was imported in place of this one)
            args = [sys.executable, "-P", "-m", "bertc.export.tflite", str(self.saved)]
            for path, precision in self.targets:
                args += [precision, str(self._partial(path))]
            self._log = self._workdir / "converter.log"
            import bertc

            # the child imports this very bertc, whatever put it on this process's path
            root = str(Path(bertc.__file__).resolve().parent.parent)
            path = os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])
            env = {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1",
                   PARENT_PID: str(os.getpid())}
            with open(self._log, "wb") as log:
                self._child = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               env=env)
        self.seconds += time.perf_counter() - t0
        return self

    def _wait(self) -> None:
        """The conversions done (in the child, or here now); raises ExportError naming the unsupported ops, or the
        ``OSError`` of a full disk (a read-only or failing file system: :data:`FILESYSTEM_ERRNOS`), which is no
        conversion's failure: the build reports it as an output error."""
        if self._child is None:
            for path, precision in self.targets:
                try:
                    _convert(self.saved, precision, self._partial(path))
                except Exception as exc:
                    if isinstance(exc, OSError) and exc.errno in FILESYSTEM_ERRNOS:
                        raise
                    raise ExportError(explain_converter_error(str(exc), graph_ops(self.concrete))) from None
            return
        code = self._child.wait()
        self._child = None
        if code in FILESYSTEM_ERRNOS:   # the child could not write (_child_main): the log may not hold why
            filename = str(self._partial(self.targets[0][0]))
            with contextlib.suppress(OSError):
                text = self._log.read_text(encoding="utf-8", errors="replace")
                if CHILD_FILE in text:
                    filename = text[text.rfind(CHILD_FILE) + len(CHILD_FILE):].strip() or filename
            raise OSError(code, os.strerror(code), filename)
        if code != 0:
            text = self._log.read_text(encoding="utf-8", errors="replace")
            marker = text.rfind(CHILD_ERROR)
            message = text[marker + len(CHILD_ERROR):] if marker >= 0 else text[-3000:]
            raise ExportError(explain_converter_error(message, graph_ops(self.concrete)))

    def finish(self) -> dict:
        """Wait for the conversions and fill in the weights: {path: artifact entry}."""
        t0 = time.perf_counter()
        self._wait()
        convert_seconds = time.perf_counter() - self._t_convert
        uses, own_values = graph_weight_uses(self.concrete, self.variables)
        entries = {}
        for path, precision in self.targets:
            t_fill = time.perf_counter()
            filled = _fill_in_file(self._partial(path), lambda k: np.asarray(self.variables[k].numpy()),
                                   self.placeholders, uses, own_values)
            os.replace(self._partial(path), path)
            entries[path] = {"path": path.name, "bytes": path.stat().st_size, "format": "tflite",
                             "precision": precision, "signature": SIGNATURE, "weights": filled.to_json(),
                             "saved_model_seconds": round(self.saved_model_seconds, 3),
                             "convert_seconds": round(convert_seconds, 3),
                             "converted_in": "a child process, while the build went on" if self.background
                             else "this process",
                             "fill_seconds": round(time.perf_counter() - t_fill, 3),
                             "saved_model": None}
        if self.keep is not None:
            save_serving_model(self.model, self.sig, self.keep)
            for entry in entries.values():
                entry["saved_model"] = self.keep.name
        self.seconds += time.perf_counter() - t0
        for entry in entries.values():
            entry["total_seconds"] = round(self.seconds, 3)
        self.cancel()  # nothing left to stop: removes the working directory
        return entries

    def cancel(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child.wait()
            self._child = None
        for path, _ in self.targets:
            self._partial(path).unlink(missing_ok=True)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


CHILD_ERROR = "\nbertc-tflite-converter-error:\n"
CHILD_FILE = "\nbertc-tflite-unwritable-file:\n"   # then the file, when the child's exit code is a FILESYSTEM_ERRNOS
PARENT_PID = "BERTC_CONVERTER_PARENT"


def die_with_parent(parent: int) -> None:
    """Make this process (a converter child) end when ``parent`` does, even when the parent is killed
    outright (SIGKILL, the OOM killer) and cannot stop it: Linux's parent-death signal, armed here, then a
    check that the parent did not die before it was armed. Elsewhere a no-op: the parent's cancel() stays
    the only stop. Linux sends the signal when the parent's *thread* that started the child ends: TFLiteJob
    must be started and finished on one thread (a build does both in one call)."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # reparented already: the parent is gone
        os._exit(1)


def export_tflite(model, sig, path: Path, keep_saved_model: Optional[Path] = None, precision: str = "fp32",
                  background: Optional[bool] = None) -> dict:
    """Convert ``model`` to TFLite at ``precision`` (fp32; fp16 weights; int8 dynamic-range weights).

    The converter sees splat placeholder weights (one number per weight tensor), so its memory and
    time do not grow with the weights; :func:`bertc.export.tflite_weights.fill_weights` then writes
    the real weights into the flatbuffer, proving the placeholder -> buffer mapping."""
    with TFLiteJob(model, sig, [(Path(path), precision)], keep_saved_model, background) as job:
        return job.start().finish()[Path(path)]


def _child_main(argv: list[str]) -> int:
    """``python -m bertc.export.tflite SAVED_MODEL PRECISION OUT [PRECISION OUT ...]`` (TFLiteJob's child)."""
    import sys

    saved, pairs = Path(argv[0]), argv[1:]
    if os.environ.get(PARENT_PID, "").isdigit():
        die_with_parent(int(os.environ[PARENT_PID]))
    try:
        for precision, out in zip(pairs[0::2], pairs[1::2]):
            _convert(saved, precision, Path(out))
    except Exception as exc:  # noqa: BLE001 - the parent turns the message into an ExportError
        if isinstance(exc, OSError) and exc.errno in FILESYSTEM_ERRNOS:
            # a full disk (or a read-only, failing one): the exit code is its errno, which the parent raises again;
            # the file is in the log if the log (on the same disk, maybe) can take it
            with contextlib.suppress(OSError):
                sys.stdout.write(CHILD_FILE + str(exc.filename or out))
                sys.stdout.flush()
            return exc.errno
        sys.stdout.write(CHILD_ERROR + str(exc))
        sys.stdout.flush()
        return 1
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_child_main(sys.argv[1:]))
