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
    if path is None or os.environ.get("BERTC_DEBUG") == "1" or sys.stderr is None:   # started with 2>&-
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (e.g. a closed stderr): nothing to redirect
        yield
        return
    python_stderr = sys.stderr
    try:   # Python's stderr is fd 2 itself (a terminal, a file): it keeps the console through a copy of fd 2; a
        # notebook's (ipykernel's stream) is not, and reaches the notebook as it is
        replace = python_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):   # io.UnsupportedOperation is an OSError and a ValueError
        replace = False
    try:
        # appended to by every command: started afresh once past LOG_LIMIT (it only grew, for good)
        log = open(path, "wb" if _size(path) > LOG_LIMIT else "ab")
    except OSError:   # a log that cannot be written (another user's, a read-only /tmp): left unredirected
        os.close(saved)
        yield
        return
    with log:
        # fd 2 is put back whatever fails from here on (an EncodingWarning raised under -W error by an fdopen
        # without an encoding left it on the log: the command ended with exit 70 and no message on the console)
        try:
            os.dup2(log.fileno(), 2)
            if replace:
                sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=python_stderr.encoding,
                                       errors=python_stderr.errors)
            yield
        finally:
            if sys.stderr is not python_stderr:
                try:
                    sys.stderr.flush()
                    sys.stderr.close()
                except (OSError, ValueError):
                    pass
            sys.stderr = python_stderr
            os.dup2(saved, 2)
            os.close(saved)


LOG_LIMIT = 1 << 20


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def import_log() -> Path:
    """The log of what the native libraries print while they are imported: one per user (a shared name made
    every command of a second user on the machine fail on the first user's file)."""
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"bertc-import-{user}.log"


@contextlib.contextmanager
def libraries_quiet():
    """A build run from Python (:func:`bertc.build_spec`) as quiet as ``bertc build``: the native libraries' stderr into a
    log of this process (deleted afterwards), TensorFlow's and absl's Python loggers at WARNING, and the root
    logger's handlers as they were (absl's ``basicConfig``, run by TensorFlow's SavedModel writer, left one behind:
    the user's own ``logging`` calls then printed in absl's format)."""
    import logging

    loggers = [logging.getLogger(name) for name in ("tensorflow", "absl", "h5py", "tf2onnx")]
    levels = [logger.level for logger in loggers]
    handlers = list(logging.root.handlers)
    log = Path(tempfile.gettempdir()) / f"bertc-native-{os.getpid()}.log"
    existed = log.exists()
    for logger in loggers:
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        with native_stderr_to(log):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        logging.root.handlers[:] = handlers
        if not existed:
            with contextlib.suppress(OSError):
                log.unlink()
