"""Keep what C++ libraries (TensorFlow, tf2onnx, TFLite, ONNX Runtime) print on fd 2 off the console."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path


@contextlib.contextmanager
def native_stderr_to(path: Path | None):
    """Redirect fd 2 to ``path`` (appending); Python's own ``sys.stderr`` still reaches the console."""
    if path is None or os.environ.get("BERTC_DEBUG") == "1":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (e.g. a closed stderr): nothing to redirect
        yield
        return
    python_stderr = sys.stderr
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1)
        try:
            yield
        finally:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = python_stderr
            os.dup2(saved, 2)
            os.close(saved)


def import_log() -> Path:
    return Path(tempfile.gettempdir()) / "bertc-import.log"
