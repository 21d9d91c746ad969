"""Keep what C++ libraries (TensorFlow, tf2onnx, TFLite, ONNX Runtime) print on fd 2 off the console."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
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
    try:   # Python's stderr is fd 2 itself (a terminal, a file): it keeps the console through a copy of fd 2; one
        # that is not (a notebook's stream, contextlib.redirect_stderr) keeps going where it went
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


_QUIET_LOCK = threading.Lock()
_QUIET: dict = {"depth": 0, "saved": None}
_QUIET_LOGGERS = ("tensorflow", "absl", "h5py", "tf2onnx")


@contextlib.contextmanager
def libraries_quiet():
    """A build run from Python (:func:`bertc.build_spec`) as quiet as ``bertc build`` where it matters to a program:
    TensorFlow's, absl's and tf2onnx's Python loggers at WARNING, and the root logger's handlers as they were (absl's
    ``basicConfig``, run by TensorFlow's SavedModel writer, left one behind: the user's own ``logging`` calls then
    printed in absl's format). Overlapping calls (builds in two threads) share it: the first saves, the last puts
    back. The native libraries' stderr (fd 2) is left alone, unlike the CLI's: redirected, it took the program's own
    stderr logging with it, and two threads' builds left fd 2 on a deleted file (a reviewer); with
    TF_CPP_MIN_LOG_LEVEL=3 (``import bertc`` sets it) TFLite's one "XNNPACK delegate" line is all it prints."""
    import logging

    with _QUIET_LOCK:
        if _QUIET["depth"] == 0:
            loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
            _QUIET["saved"] = ([(logger, logger.level) for logger in loggers], list(logging.root.handlers))
            for logger in loggers:
                if logger.getEffectiveLevel() < logging.WARNING:
                    logger.setLevel(logging.WARNING)
        _QUIET["depth"] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET["depth"] -= 1
            if _QUIET["depth"] == 0:
                levels, handlers = _QUIET["saved"]
                for logger, level in levels:
                    logger.setLevel(level)
                logging.root.handlers[:] = handlers
