"""Every error type of bertc, and the CLI's exit codes.

Every failure a user can cause or meet is a :class:`BertcError` with a message that reads well on its
own; the CLI prints it (one ``error: ...`` message, no traceback) and exits with its ``exit_code``.
Any other exception reaching the CLI is a bug in bertc: it prints one ``internal error: ...`` line
saying so and exits with :data:`EXIT_INTERNAL`; ``BERTC_TRACEBACK=1`` (or ``BERTC_DEBUG=1``) prints
the traceback too.

====  ===========================  ==========================================================
code  name                         meaning
====  ===========================  ==========================================================
0                                  success
1     ``EXIT_CHECK_FAILED``        numeric validation failed (a check of ``bertc build``), or a
                                   weight transfer (``--init-from``) does not fit
2     ``EXIT_BAD_SPEC``            the spec, the command line, the weights or a plug-in is wrong
                                   (a plug-in's own code raised, or returned the wrong shape),
                                   or the input of ``bertc run`` (a missing field, an empty text)
3     ``EXIT_PARITY_FAILED``       a backend disagrees with the Keras reference (or the
                                   optimized lowering fails its structural check)
4     ``EXIT_EXPORT_FAILED``       ONNX / TFLite export failed
5     ``EXIT_OUTPUT``              the output directory cannot be written as asked, or a model
                                   file in it is missing or damaged
6     ``EXIT_MEMORY``              the memory preflight refused the build: it would not fit in
                                   the memory available (nothing was written)
7     ``EXIT_MISSING_LIBRARY``     a library the command needs is not installed (e.g. ``bertc
                                   build`` where bertc was installed to run builds only)
70    ``EXIT_INTERNAL``            internal error: an unexpected exception, a bug in bertc
129   ``EXIT_HANGUP``              SIGHUP (a closed terminal or ssh session) ended ``bertc run`` /
                                   ``build`` / ``parity`` / ``bench``: unwound as on SIGTERM
130                                interrupted (Ctrl-C); ``bertc build`` and ``bertc run``:
                                   interrupted; nothing was written
141   ``EXIT_BROKEN_PIPE``         ``bertc run ... -o -``: standard output's reader went away
                                   (``| head``; 128 + SIGPIPE, as Unix tools exit)
143   ``EXIT_TERMINATED``          ``bertc run`` ended by SIGTERM (``timeout``, ``kill``, a
                                   scheduler), or ``bertc build`` / ``parity`` / ``bench``:
                                   terminated; nothing was written (128 + SIGTERM)
====  ===========================  ==========================================================

``NotLowerable`` (an ONNX lowering that cannot express a component) never reaches the CLI: the optimize
stage turns it into a recorded skip of the optimized artifact, with its message as the reason.
"""
from __future__ import annotations

import errno as _errno

EXIT_CHECK_FAILED = 1      # numeric validation failed
EXIT_BAD_SPEC = 2          # the spec (or the command line) is wrong
EXIT_PARITY_FAILED = 3     # a backend disagrees with the Keras reference
EXIT_EXPORT_FAILED = 4     # ONNX / TFLite export failed
EXIT_OUTPUT = 5            # the output directory cannot be written as asked, or a model file in it is damaged
EXIT_MEMORY = 6            # the memory preflight refused the build
EXIT_MISSING_LIBRARY = 7   # a library the command needs is not installed
EXIT_INTERNAL = 70         # an unexpected exception: a bug in bertc (sysexits' EX_SOFTWARE)
EXIT_HANGUP = 129          # SIGHUP (a closed terminal) ended bertc run / build / parity / bench: unwound as SIGTERM
EXIT_INTERRUPTED = 130     # Ctrl-C
EXIT_BROKEN_PIPE = 141     # the reader of standard output went away (128 + SIGPIPE)
EXIT_TERMINATED = 143      # SIGTERM ended bertc run / build / parity / bench: nothing was written


# Errors of the place a command writes to, not of bertc nor of its input: a full disk or quota, a file too large for it,
# a read-only file system, a failing device. Met while writing a build they are output errors (exit 5), naming where.
# ENAMETOOLONG: an OUT whose path leaves no room for the names of the files a build writes inside it
FILESYSTEM_ERRNOS = frozenset(getattr(_errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EIO",
                                                                 "ENAMETOOLONG") if hasattr(_errno, name))


GIT_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def git_lfs_pointer(path) -> str:
    """When the file at ``path`` is a Git LFS pointer (a clone made without Git LFS: a ~130-byte text file in
    place of the weights), the words that say so, else "". Never raises."""
    import os

    try:
        size = os.stat(path).st_size
        if size > 1024:
            return ""
        with open(path, "rb") as f:
            head = f.read(len(GIT_LFS_POINTER))
    except OSError:
        return ""
    if head != GIT_LFS_POINTER:
        return ""
    return (f"a Git LFS pointer ({size} bytes), not the file it stands for: the repository was cloned without "
            f"Git LFS; run `git lfs pull` in its repository (or download the file itself)")


def filesystem_error(exc: BaseException | None, errnos=FILESYSTEM_ERRNOS) -> "OSError | None":
    """The ``OSError`` of one of ``errnos`` (default :data:`FILESYSTEM_ERRNOS`) that ``exc`` is or was raised from
    (its ``__cause__`` / ``__context__`` chain: a stage that wraps what it met, as the ONNX and TFLite exports do);
    None when there is none. TensorFlow's file writes (a SavedModel) raise its own errors, ``PATH; No space left on
    device``: one of those is read as the ``OSError`` it reports."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in errnos:
            return exc
        if type(exc).__module__.startswith("tensorflow"):
            found = _tensorflow_filesystem_error(str(exc))
            if found is not None and found.errno in errnos:
                return found
        exc = exc.__cause__ or exc.__context__
    return None


def _tensorflow_filesystem_error(message: str) -> "OSError | None":
    import os
    import re

    for code in FILESYSTEM_ERRNOS:
        reason = os.strerror(code)
        match = re.search(r"(?:^|[\s}])(/[^;\n]*); " + re.escape(reason), message)
        if match or f"; {reason}" in message:
            return OSError(code, reason, match.group(1) if match else None)
    return None


_COMMAND_LINE = [0]   # how many `bertc` commands (bertc.cli.main) are running in this process


def said(flag: str, parameter: str) -> str:
    """How a message names an option of ``bertc run`` / ``bertc.Runtime``: the flag (``--force``) while a ``bertc``
    command runs, the Python parameter (``force=True``) otherwise, so that a notebook is not told to pass a flag."""
    return flag if _COMMAND_LINE[0] else parameter


def command_line_running() -> bool:
    """Whether a ``bertc`` command (the CLI) is running in this process: it says, on its own summary lines, what the
    Python API says in warnings."""
    return bool(_COMMAND_LINE[0])


class command_line:
    """The block runs a ``bertc`` command: :func:`said` gives the flags."""

    def __enter__(self):
        _COMMAND_LINE[0] += 1
        return self

    def __exit__(self, *exc):
        _COMMAND_LINE[0] -= 1
        return False


class BertcError(Exception):
    exit_code = EXIT_CHECK_FAILED


class SpecError(BertcError):
    """A spec failed to load. ``problems`` holds every (json_path, message) found."""

    exit_code = EXIT_BAD_SPEC

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = list(problems)
        if [p for p, _ in self.problems] == ["$"] and self.problems[0][1].startswith(FILE_LEVEL):
            # the file itself (missing, unreadable): one line, as every other missing file ("$:" reads oddly)
            super().__init__(f"{source}: {self.problems[0][1]}")
            return
        lines = [f"{source}: {len(self.problems)} problem(s) in the spec:"]
        lines += [f"  {path}: {msg}" for path, msg in self.problems]
        super().__init__("\n".join(lines))


# a SpecError's problem about the spec file itself, not its content
FILE_LEVEL = ("file not found", "cannot read the file")


class SpecTextError(BertcError, ValueError):
    """Spec text that cannot be a spec (malformed JSON, nested too deeply): where, and what is wrong.

    Still a ``ValueError`` for callers of :func:`bertc.specjson.parse` that catch that."""

    exit_code = EXIT_BAD_SPEC

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


class PluginError(BertcError):
    """A plug-in that cannot be found or fails while importing, or a build that needs one not loaded."""

    exit_code = EXIT_BAD_SPEC


class InputError(BertcError):
    """Input that ``bertc run`` cannot use (unknown format, missing field or column, empty or over-long
    text, not a bertc build): the message names the file and the line or row."""

    exit_code = EXIT_BAD_SPEC


class DamagedBuild(InputError):
    """A directory given as a build that is not one, or whose report, spec, bundled config or tokenizer cannot be
    read: exit 5, as ``bertc parity`` and ``bertc bench`` say of it (the file named); an :class:`InputError` to
    ``bertc.Runtime``'s callers still."""

    exit_code = EXIT_OUTPUT


class CheckFailed(BertcError):
    exit_code = EXIT_CHECK_FAILED


class ExportError(BertcError):
    exit_code = EXIT_EXPORT_FAILED


class ParityError(BertcError):
    exit_code = EXIT_PARITY_FAILED


class OutputError(BertcError):
    exit_code = EXIT_OUTPUT


class ModelFileError(OutputError):
    """A model file (model.keras) is missing, truncated or not what it claims to be."""


class BackendLoadError(OutputError):
    """An artifact that is listed in the report but cannot be loaded (missing, truncated, garbage, or no
    runtime for it here); the message names the file. Parity and bench record it per backend."""


class BenchError(BertcError):
    """A bench request that cannot be met (unknown backend, sequence too long, nothing to time)."""

    exit_code = EXIT_BAD_SPEC


class CalibrationError(BertcError):
    """Calibration text that cannot be used (``--calibration FILE``: unreadable, empty, or no tokenizer)."""

    exit_code = EXIT_BAD_SPEC


class MissingLibrary(BertcError):
    """A library or program the command needs is not installed (the message says how to install it)."""

    exit_code = EXIT_MISSING_LIBRARY


class NoOnnxRuntime(MissingLibrary, BackendLoadError):
    """``bertc run`` / :class:`bertc.Runtime` without onnxruntime: a missing library (exit 7), and a backend that
    cannot be loaded, as a Runtime raised it before (a caller catching :class:`BackendLoadError` still does)."""

    exit_code = EXIT_MISSING_LIBRARY


class MemoryPreflightError(BertcError):
    """The build would not fit in the memory available (nothing written)."""

    exit_code = EXIT_MEMORY


class TransferError(BertcError):
    exit_code = EXIT_CHECK_FAILED


class WeightsError(BertcError):
    """Trained weights cannot be read or do not fit the model; the message lists every problem."""

    exit_code = EXIT_BAD_SPEC


class UnsupportedModel(WeightsError):
    """A foreign model (config key and value named) that bertc cannot express exactly."""


class BuildFailed(BertcError):
    """A build stage reached a verdict against the build (validation, the structural check of the
    optimized lowering, parity): carries that stage's error (``cause``, whose exit code it takes) so
    that :func:`bertc.pipeline.build` writes the partial report (status "failed") to ``OUT.failed/``
    before re-raising ``cause``."""

    def __init__(self, cause: BertcError):
        super().__init__(str(cause))
        self.cause = cause
        self.exit_code = cause.exit_code


class NotLowerable(BertcError):
    """Raised inside an ONNX lowering when a component has none (the optimized artifact is then skipped,
    with this message as the reason)."""
