"""Command line: argument parsing, progress output and exit codes only."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Callable, Optional

import click

from bertc.errors import (EXIT_BAD_SPEC, EXIT_BROKEN_PIPE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_MISSING_LIBRARY,
                          EXIT_OUTPUT, BertcError)
from bertc.names import EXPORT_VARIANTS
from bertc.output import parents_made
from bertc.quiet import import_log, native_stderr_to
from bertc.plugins import plugin_error

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _err(text: str = "", **kw) -> None:
    """``text`` on stderr; nothing where stderr can no longer take it (a closed terminal after SIGHUP: EIO), so that
    the command still ends with its own status."""
    try:
        click.echo(text, err=True, **kw)
    except OSError as exc:
        if exc.errno != errno.EIO:   # (a reader of stderr gone, `2>&1 | head`, still stops the command: exit 141)
            raise


def _green(text: str) -> str:
    """``text`` in green where colour is welcome: never with NO_COLOR set (no-color.org) or on a dumb terminal
    (Click itself drops the colour where stderr is no terminal)."""
    if os.environ.get("NO_COLOR") or _dumb_terminal():
        return text
    return click.style(text, fg="green")


class _Path(click.Path):
    """click.Path, refusing an empty path: "" (an unset shell variable, "$OUT") was taken as the working directory,
    named "." in messages (an internal error for bertc run's OUT; bertc build -o "" aimed at the working directory)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value:
            self.fail("the path is empty (an unset shell variable?)", param, ctx)
        return super().convert(value, param, ctx)


class _SpecPath(_Path):
    """A spec file's path: a folder holding a spec.json (a build's OUT, a checkpoint imported into one) is refused
    naming that file, where click said only "is a directory"."""

    def __init__(self):
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value, param, ctx):
        if isinstance(value, (str, Path)) and str(value) and Path(value).is_dir() and (Path(value) / "spec.json").is_file():
            self.fail(f"{value} is a folder; its spec is {Path(value) / 'spec.json'}", param, ctx)
        return super().convert(value, param, ctx)


class _OutputOption(click.Option):
    """``-o`` with both long forms, ``--out`` and ``--output`` (every command takes either): messages name it as
    ``--help`` shows it first (``'-o' / '--output'``), not with the alias too."""

    def get_error_hint(self, ctx) -> str:
        return " / ".join(f"'{o}'" for o in self.opts[:2])


class _StatusLine:
    """What a long stage is doing now (the int8 tuning: minutes on a base-size model), on one line of the
    terminal that the next line overwrites; nothing when stderr is not a terminal."""

    def __init__(self, enabled: bool):
        self.enabled, self.shown, self.width = enabled, False, 100

    def __call__(self, stage: str, seconds: float, text: str) -> None:
        if not self.enabled:
            return
        import shutil

        width = shutil.get_terminal_size((100, 24)).columns
        line = f"  ..  {stage:<16} {seconds:7.0f}s  {' '.join(text.split())}"
        if len(line) >= width:
            line = line[:max(width - 4, 8)] + "..."
        self.width = width
        # a dumb terminal (TERM=dumb: Emacs' shell, some CI logs) has no erase-line code: spaces overwrite instead
        self._write("\r" + line.ljust(width - 1) if _dumb_terminal() else "\r\033[K" + line)
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self._write("\r" + " " * (self.width - 1) + "\r" if _dumb_terminal() else "\r\033[K")
            self.shown = False

    def _write(self, text: str) -> None:
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except OSError as exc:   # the terminal is gone (SIGHUP: EIO): no more status lines; the command goes on, or
            if exc.errno != errno.EIO:   # unwinds
                raise
            self.enabled = False


def _dumb_terminal() -> bool:
    return os.environ.get("TERM") == "dumb"


def _import_quietly():
    """Import TensorFlow / Keras with their start-up chatter kept off the console."""
    with native_stderr_to(import_log()):   # a Ctrl-C it makes an ImportError: main() counts it
        import bertc.components  # noqa: F401


_SIGINTS: list = []   # the Ctrl-Cs this process's noting handler saw (:func:`_sigint_noted`)


def _noting_handler(signum, frame):
    _SIGINTS.append(signum)
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigint_noted():
    """Ctrl-C raises KeyboardInterrupt as Python's own handler does, and is counted in :data:`_SIGINTS`: what an
    extension makes of it on its way (ONNX Runtime's module init: ImportError 'initialization failed', swallowed
    by a caller that tolerates a failed import) is then still known to be a Ctrl-C. Only where Python's own handler
    is set, in the main thread (an ignored SIGINT stays ignored; a host's handler is the host's)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _noting_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _load_plugins(ctx, param, plugins):
    """Import the plug-ins named by --plugin (and $BERTC_PLUGINS) while the command line is parsed, so before
    any command reads a spec or a build."""
    from bertc.plugins import from_environment, load_plugins, loaded

    argv = ((ctx.find_root().obj or {}).get("argv") or []) if ctx is not None else []
    # bertc run reads no spec (it runs the ONNX artifacts): $BERTC_PLUGINS would only import TensorFlow for it
    running = _command_of(argv) == "run"
    already = {r["plugin"] for r in loaded()}
    wanted = [p for p in ([] if running else from_environment()) + list(plugins) if p not in already]
    if wanted:
        _import_quietly()
        # a module plug-in's own warnings are shown as Python shows them (a file plug-in's module name is bertc's)
        _quiet_libraries([p for p in wanted if not (p.endswith(".py") or os.sep in p)])
        for record in load_plugins(list(dict.fromkeys(wanted))):
            if not record["registered"]:
                _err(f"note: plugin {record['plugin']} registered no component")


def _command_of(argv: list):
    """The subcommand named on the command line (None before one is)."""
    return next((a for a in argv if a in cli.commands), None)


def plugin_option(f):
    """``--plugin MODULE|FILE.py``, before the command (``bertc --plugin x.py build ...``) or after it."""
    return click.option("--plugin", "plugins", multiple=True, metavar="MODULE|FILE.py", expose_value=False,
                        callback=_load_plugins, is_eager=True,
                        help="Import a plug-in that registers components (repeatable; also $BERTC_PLUGINS, "
                             "comma-separated).")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bertc")
@plugin_option
def cli():
    """bertc: compile BERT-family model specs to validated Keras, ONNX and TFLite artifacts."""


@cli.command()
@plugin_option
@click.argument("spec", type=_SpecPath())
# a file there: exit 5, as the build says; --output as import, run and schema spell it
@click.option("-o", "--out", "--output", cls=_OutputOption, type=_Path(path_type=Path), required=True,
              help="Output directory (written atomically).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--no-export", is_flag=True, help="Stop after the Keras model (no ONNX, TFLite or parity).")
@click.option("--no-parity", is_flag=True, help="Export but skip the parity stage.")
@click.option("--no-optimize", is_flag=True,
              help="No optimized ONNX Runtime artifact (model.optimized.onnx) nor its int8/fp16 variants.")
@click.option("--variants", default=None, metavar="LIST", callback=lambda ctx, param, value: _variants(value),
              help="Reduced-precision and padding-free variants, comma-separated, replacing the spec's "
                   f"export.variants: {', '.join(EXPORT_VARIANTS)} ('' or 'none' for none).")
@click.option("--calibration", type=_Path(dir_okay=False, exists=True, path_type=Path), default=None,
              metavar="FILE", help="Your own text (one example per line, a tab between a pair; or "
                                   ".jsonl/.csv/.tsv/.parquet: the field text, and text_pair for a pair), tokenized by the bundled "
                                   "tokenizer: int8 is tuned and parity checked on it instead of the built-in sentences.")
@click.option("--opset", type=click.Choice(["17", "18"]), default=None, help="ONNX opset (default: the spec's, 17).")
@click.option("--int64-inputs", is_flag=True, default=None, help="ONNX inputs as int64 instead of int32.")
@click.option("--keep-saved-model", is_flag=True, default=None, help="Keep the SavedModel used for TFLite.")
@click.option("--init-from", type=_Path(path_type=Path), default=None,
              help="Copy weights from a built model (OUT dir or .keras) before validation.")
@click.option("--weights", type=_Path(path_type=Path), default=None,
              help="Trained weights to load (HF dir / .safetensors, TF checkpoint, .keras); overrides the spec's.")
@click.option("--no-onnx", is_flag=True, help="Skip the ONNX export (and its parity).")
@click.option("--no-tflite", is_flag=True, help="Skip the TFLite export (and its parity).")
@click.option("--skip-preflight", is_flag=True, help="Build even if the memory estimate exceeds what is available.")
@click.option("--memory-limit", default=None, metavar="SIZE",
              help="Memory the preflight may assume available (e.g. 12G) instead of measuring it.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout.")
def build(spec, out, force, no_export, no_parity, no_optimize, variants, calibration, opset, int64_inputs, keep_saved_model,
          init_from, weights, no_onnx, no_tflite, skip_preflight, memory_limit, quiet, as_json):
    """Build SPEC: graph, numeric validation, ONNX + TFLite export, parity; write OUT/.

    \b
    The int8 tuning keeps its choices and its int8 timings per host in ~/.cache/bertc
    ($BERTC_CACHE_DIR or $XDG_CACHE_HOME/bertc; BERTC_CACHE_DIR=off keeps none): a build of the
    same graph, weights and calibration text replays them and measures the result once."""
    if str(out) == "-":   # every other command's "-o -" is standard output: a folder named "-" was not meant
        raise click.BadParameter("- (standard output) cannot hold a build's folder: name a folder (--json prints "
                                 "the report to standard output)", param_hint="-o")
    if as_json:
        _needs_stdout("--json's report")
    from bertc.pipeline import BuildOptions
    from bertc.pipeline import build as run_build

    from bertc.run_io import stderr_is_terminal

    status = _StatusLine(not quiet and stderr_is_terminal())

    stop_if_signalled = lambda: None   # noqa: E731  (the signal handlers' check, once they are set)

    def hook(name, seconds, detail):
        stop_if_signalled()   # a signal Python discarded in a __del__ during the stage
        status.clear()
        if not quiet:
            _err(f"  {_green('ok')}  {name:<16} {seconds:7.2f}s  {detail}")

    if not quiet:
        _err(f"bertc build {spec} -> {out}")
    opts = BuildOptions(out=out, force=force, export=not no_export, parity=not no_parity, optimize=not no_optimize,
                        opset=int(opset) if opset else None, input_dtype="int64" if int64_inputs else None,
                        keep_saved_model=keep_saved_model, init_from=init_from, weights=weights,
                        onnx=not no_onnx, tflite=not no_tflite, preflight=not skip_preflight,
                        memory_limit=_size(memory_limit), variants=variants, calibration=calibration)
    placed = []   # the new build is in place at OUT (a signal after that moment interrupts a build that is written)
    opts.on_placed = lambda: placed.append(True)
    try:
        with _sigterm_unwinds() as stop_if_signalled:
            _import_quietly()
            with _native_log():   # TF / converter C++ chatter
                try:
                    report = run_build(spec, opts, hook, status)
                finally:
                    status.clear()
    except (_Terminated, KeyboardInterrupt) as exc:   # unwound: the staging directory, the lock and the log are gone
        terminated = isinstance(exc, _Terminated)
        _err(f"{exc.said if terminated else 'interrupted'}"
              + (f" after the build was written: {_shown(Path(out))}/ holds it, complete" if placed else
                 "; nothing was written"))
        # what the signal cut short mid-construction (TensorFlow's objects) may complain as the interpreter collects
        # it at exit: noise after this line
        import atexit

        atexit.register(setattr, sys, "unraisablehook", lambda unraisable: None)
        raise SystemExit(exc.code if terminated else EXIT_INTERRUPTED) from None
    except BertcError as exc:
        failed = getattr(exc, "kept_in", None)   # OUT.failed, or OUT.failed-2 ... when OUT.failed is not a build's
        if failed is None or not (failed / "summary.txt").exists():
            raise
        if as_json:   # `bertc build --json > r.json` printed nothing exactly when the report matters: the failed one's
            with contextlib.suppress(OSError, ValueError):
                click.echo((failed / "report.json").read_text(encoding="utf-8"), nl=False)
        if not quiet:
            _err((failed / "summary.txt").read_text(encoding="utf-8"))
            taken = getattr(exc, "kept_instead_of", None)
            _err(f"report kept in {_shown(failed)}/ ({out} was left as it was"
                 + (f"; {_shown(taken)} is not a bertc build's folder, left alone)" if taken else ")"))
        raise _naming_folder(exc, _shown(failed)) from exc   # the error line says where the report is, -q or not
    _finished(0)   # OUT holds the new build: what is left is to say so
    if as_json:
        from bertc.report import report_json

        click.echo(report_json(report))
    elif not quiet:
        try:
            _err((Path(out) / "summary.txt").read_text(encoding="utf-8"))
        except OSError as exc:   # OUT removed or replaced since the build put it there: the build is done all the same
            _err(f"note: cannot read {out}/summary.txt back ({exc.strerror or exc}): the build finished and was "
                 f"placed at {out}/, and something has changed it since")
        _err(f"wrote {out}/")


def _naming_folder(exc: BertcError, folder: Path) -> BertcError:
    """``exc`` (same exit code) with its first line naming the folder its failed build's report went to:
    ``parity failed (16 problem(s)); report kept in OUT.failed-2/:`` and the problems below."""
    first, newline, rest = str(exc).partition("\n")
    colon = ":" if first.endswith(":") else ""
    named = BertcError(f"{first[:len(first) - len(colon)]}; report kept in {folder}/{colon}{newline}{rest}")
    named.exit_code = exc.exit_code
    return named


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it is below it (as ``-o`` was probably given)."""
    try:
        return Path(os.path.relpath(path)) if path.is_absolute() and Path.cwd() in path.parents else path
    except (OSError, ValueError):
        return path


class _Terminated(BaseException):   # not an Exception: no handler on the way may take it for an error of its own
    """SIGTERM, or SIGHUP (the terminal or ssh session closed), raised by _sigterm_unwinds (bertc build, run, parity,
    bench): the command unwinds and ends with 128 + the signal's number, as a shell reports a process it ended."""

    def __init__(self, signum: int = 15):
        super().__init__(signum)
        self.signum = signum

    @property
    def code(self) -> int:
        return 128 + self.signum   # EXIT_TERMINATED (143) for SIGTERM, EXIT_HANGUP (129) for SIGHUP

    @property
    def said(self) -> str:
        import signal

        return "hung up (SIGHUP)" if self.signum == getattr(signal, "SIGHUP", None) else "terminated"


def _stop_signals() -> tuple:
    """The signals that unwind a command as Ctrl-C does: SIGTERM, and SIGHUP where there is one (a build or run
    started from a terminal or ssh session that closed was ended where it stood, its temporary files left behind)."""
    import signal

    return tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def _sigterm_unwinds():
    """SIGTERM (``timeout``, ``kill``, a job scheduler) raises :class:`_Terminated`, so that the command unwinds as on
    Ctrl-C; Python's default ends the process where it stands, leaving its temporary files behind.

    A signal that lands while Python runs a ``__del__`` (TensorFlow collects its traced functions between a build's
    stages) raises there, where Python discards what is raised: the build went on, wrote OUT and exited 0, with a
    traceback printed. Such a discarded _Terminated or KeyboardInterrupt is kept instead (not printed), and the
    function yielded raises it again: call it where the command may stop (a build's stage ends)."""
    import signal
    import threading

    pending: list = []

    def raise_pending() -> None:
        if pending:
            raise pending.pop()

    def terminated(signum, frame):
        raise _Terminated(signum)

    if threading.current_thread() is not threading.main_thread():   # where signal handlers run, and are set
        yield raise_pending
        return
    previous_hook = sys.unraisablehook

    def unraisable(unraisable):
        if isinstance(unraisable.exc_value, (_Terminated, KeyboardInterrupt)):
            pending.append(unraisable.exc_value)
        else:
            previous_hook(unraisable)

    # a SIGHUP ignored when the command began (nohup) stays ignored
    previous = {signum: signal.getsignal(signum) for signum in _stop_signals()}
    for signum, handler in previous.items():
        if signum == signal.SIGTERM or handler is not signal.SIG_IGN:
            signal.signal(signum, terminated)
    sys.unraisablehook = unraisable
    try:
        yield raise_pending
        raise_pending()
    finally:
        sys.unraisablehook = previous_hook
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _needs_stdout(what: str) -> None:
    """Refuse, before any work, a command whose output is what it prints when standard output is closed (started
    with ``>&-``: Click's echo then writes nowhere, and the command exited 0 having printed nothing)."""
    if sys.stdout is None:
        from bertc.errors import OutputError

        raise OutputError(f"{what} is printed to standard output, which is closed (bertc was started without one); "
                          f"give it one (a pipe, > FILE)")


@contextlib.contextmanager
def _stops_cleanly(written: Path):
    """SIGTERM unwinds the block as Ctrl-C does (its files' temporary copies removed, what it replaces all or none)
    and ends the command with 143: bertc parity and bench were ended where they stood, between the renames of
    report.json and summary.txt (one new, the other old) or with a temporary file left in OUT. ``written``: the
    file the command replaces last (its report): one replaced before the signal is said to be."""
    def state():
        with contextlib.suppress(OSError):
            st = os.stat(written)
            return st.st_ino, st.st_mtime_ns, st.st_size
        return None

    before = state()
    try:
        with _sigterm_unwinds():
            yield
    except _Terminated as exc:
        _err(f"{exc.said} after {written} was written" if state() != before else f"{exc.said}; nothing was written")
        raise SystemExit(exc.code) from None


@contextlib.contextmanager
def _native_log():
    """The native libraries' stderr (TensorFlow, the converters, ONNX Runtime) into a log of this process, deleted
    afterwards; kept, and named, only when an unexpected error ends the command (``BERTC_DEBUG=1``: not redirected).
    A :class:`BertcError` names what is wrong itself, so its log goes too."""
    import tempfile

    log = Path(tempfile.gettempdir()) / f"bertc-native-{os.getpid()}.log"
    _remove_dead_empty_logs(log.parent)
    keep = False   # an empty log, or one after a clean end, an exit or Ctrl-C, is never left behind
    try:
        with native_stderr_to(log if os.environ.get("BERTC_DEBUG") != "1" else None):
            yield
    except BertcError:
        raise
    except Exception:
        keep = log.exists() and log.stat().st_size > 0
        if keep:
            _err(f"native library output was saved to {log}")
        raise
    finally:
        if not keep:
            log.unlink(missing_ok=True)


def _remove_dead_empty_logs(folder: Path) -> None:
    """The empty native logs of killed bertc processes (SIGKILL: no ``finally`` ran), one per kill, never removed:
    a log with something in it was kept on purpose (named on the console), and a live process's is its own."""
    import re

    try:
        logs = list(folder.glob("bertc-native-*.log"))
    except OSError:
        return
    for log in logs:
        found = re.fullmatch(r"bertc-native-(\d+)\.log", log.name)
        if found is None or int(found[1]) == os.getpid():
            continue
        try:
            if log.stat().st_size:
                continue
            os.kill(int(found[1]), 0)   # alive (or another user's: PermissionError): left alone
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                log.unlink()
        except (OSError, OverflowError):
            continue


def _variants(text):
    """``--variants a,b``: each name checked against the spec language's own list (exit 2 otherwise)."""
    if text is None:
        return None
    names = [] if text.strip().lower() in ("", "none") else [t.strip() for t in text.split(",")]
    unknown = [n for n in names if n not in EXPORT_VARIANTS]
    if unknown:
        raise click.BadParameter(f"unknown variant(s) {', '.join(map(repr, unknown))}; "
                                 f"known: {', '.join(EXPORT_VARIANTS)}", param_hint="--variants")
    return tuple(dict.fromkeys(names))


def _size(text):
    if text is None:
        return None
    from bertc.preflight import parse_size

    try:
        size = parse_size(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--memory-limit") from None
    if size <= 0:
        raise click.BadParameter(f"{text!r}: a memory size above zero (e.g. 12G, 800M)", param_hint="--memory-limit")
    return size


@cli.command("import")
@plugin_option
@click.argument("source", type=_Path(path_type=Path))
@click.option("-o", "--output", "--out", cls=_OutputOption, type=_Path(dir_okay=False, path_type=Path), required=True,
              help="The spec file to write (its weights entry points at SOURCE, relative to it where they share a "
                   "directory below /); - for standard "
                   "output (the weights entry absolute).")
@click.option("--name", default=None, help="The spec's name (default: from SOURCE).")
@click.option("--encoder-only", is_flag=True,
              help="The encoder alone, without the checkpoint's task head (Hugging Face checkpoints).")
@click.option("--force", is_flag=True, help="Replace the spec file if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="Errors only (with -o -, the spec is printed all the same).")
def import_checkpoint(source, output, name, encoder_only, force, quiet):
    """Write a spec for a trained checkpoint (Hugging Face, sentence-transformers, original BERT, Model Garden)."""
    from bertc.errors import OutputError
    from bertc.importers import SPEC_NAME, import_spec, is_spec

    if name is not None and not re.fullmatch(SPEC_NAME, name):
        raise click.BadParameter(f"{name!r}: a spec name starts with a letter, then up to 63 letters, digits, _ . or -",
                                 param_hint="--name")

    if str(output) == "-":
        _needs_stdout("import -o -'s spec")
        _import_quietly()
        spec = import_spec(source, output, name, encoder_only, force)
        if not quiet:
            _err(f"wrote the spec to standard output: {spec['name']} ({spec['encoder']['type']} encoder, "
                 f"{spec.get('head', {}).get('type', 'no')} head); weights: {spec['weights']}")
            _no_tokenizer_note(source, spec, None)
        return
    if output.exists() and not force:
        raise OutputError(f"{output} already exists; pass --force to replace it")
    if output.exists() and not is_spec(output):   # e.g. the checkpoint's own config.json
        raise OutputError(f"{output} exists and is not a bertc spec (a JSON object with an encoder): --force "
                          f"replaces only a spec; choose another -o")
    _import_quietly()

    spec = import_spec(source, output, name, encoder_only, force)
    if quiet:
        return
    head = spec.get("head", {}).get("type", "no")
    # status on stderr, as every other command's (standard output is for -o -'s spec)
    _err(f"wrote {output}: {spec['name']} ({spec['encoder']['type']} encoder, {head} head); "
         f"weights: {spec['weights']}")
    _err(f"  {spec['description']}")
    _no_tokenizer_note(source, spec, output)


def _no_tokenizer_note(source: Path, spec: dict, spec_path: Optional[Path]) -> None:
    """One line on stderr when the checkpoint has no tokenizer beside its weights (:func:`no_tokenizer_note`)."""
    from bertc.importers import no_tokenizer_note

    note = no_tokenizer_note(source, spec, spec_path)
    if note is not None:
        _err(f"note: {note}")


@cli.command()
@plugin_option
@click.argument("specs", nargs=-1, required=True, type=_SpecPath())
def validate(specs):
    """Check one or more specs (all problems of each, with JSON paths)."""
    _import_quietly()
    from bertc.build import expected_param_count
    from bertc.errors import SpecError
    from bertc.preflight import estimate_line
    from bertc.spec import load_spec, variants_left_out

    bad = 0
    for path in specs:
        try:
            spec = load_spec(path)
            left_out = variants_left_out(spec.export)   # what bertc build refuses as well
            if left_out:
                raise SpecError(str(path), left_out)
        except SpecError as exc:
            bad += 1
            _err(f"error: {exc}")   # as every other command's errors
            continue
        problem = _weights_problem(spec, path)
        if problem:   # what `bertc build` would refuse before building anything: said now
            bad += 1
            _err(f"error: {path}: {problem}")
            continue
        click.echo(f"ok  {path}: {spec.name} ({spec.encoder.type} encoder, "
                   f"{spec.head.type if spec.head else 'no'} head, {expected_param_count(spec):,} parameters)")
        click.echo("    " + estimate_line(spec))
    if bad:
        raise SystemExit(EXIT_BAD_SPEC)


def _weights_problem(spec, path) -> Optional[str]:
    """Why ``bertc build`` would refuse the spec's trained weights before building (missing; a checkpoint whose
    config.json says another model than the spec), or None. Only the checkpoint's config is read."""
    from bertc.checkpoints import open_checkpoint
    from bertc.errors import BertcError
    from bertc.importers import check_checkpoint_config
    from bertc.weights import check_spec_weights, resolve_weights_path

    if spec.weights is None:
        return None
    weights = resolve_weights_path(spec.weights, Path(path))
    try:
        check_spec_weights(spec.weights, Path(path), weights)
        open_checkpoint(weights)   # a folder without weights, a file of no known format: said as the build says it
        check_checkpoint_config(spec, weights)
    except (BertcError, OSError) as exc:
        return str(exc)
    return None


@cli.command()
@plugin_option
@click.option("-o", "--output", "--out", cls=_OutputOption, type=_Path(dir_okay=False, path_type=Path),
              help="Write to a file (its missing folders are made); - for standard output.")
@click.option("--force", is_flag=True, help="Replace an existing -o file.")
def schema(output, force):
    """Print the JSON Schema of the spec language."""
    to_file = output is not None and str(output) != "-"   # -o -: standard output, as every other command's
    if force and not to_file:   # it meant nothing there (the schema went to standard output all the same)
        raise click.UsageError("--force replaces an existing -o FILE; without one the schema goes to standard "
                               "output and there is nothing to replace")
    if not to_file:
        _needs_stdout("the schema")
    else:
        _check_output_file(output, force, "-o")
    _import_quietly()
    from bertc.spec import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if to_file:
        from bertc.errors import OutputError

        with parents_made(output, "-o"):
            try:
                output.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise OutputError(f"-o {output}: cannot write it: {exc.strerror or exc}") from None
        _err(f"wrote {output}")
    else:
        click.echo(text, nl=False)


def _check_output_file(path: Path, force: bool, option: str) -> None:
    """Refuse, before any work, an output file that exists (without ``force``: the user's file was replaced), that
    is not a regular file, or whose folder is a file (exit 5, naming ``option`` and the path). A missing folder is
    no refusal: :func:`bertc.output.parents_made` makes it, as ``bertc build -o`` and ``bertc import -o`` do."""
    from bertc.errors import OutputError

    if os.path.lexists(path) and not force:   # `bertc schema -o my_spec.json` replaced the user's spec
        raise OutputError(f"{option} {path}: already exists; pass --force to replace it")
    if path.exists() and not path.is_file():
        raise OutputError(f"{option} {path}: is not a regular file")
    folder = _existing_ancestor(path)
    if folder is not None and not folder.is_dir():
        what = "a link to nothing" if folder.is_symlink() and not folder.exists() else "a file of that name is there"
        raise OutputError(f"{option} {path}: {folder} is not a directory ({what})")


def _existing_ancestor(path: Path) -> Optional[Path]:
    """The nearest folder above ``path`` that exists (or is a link, dangling or not); None when none does."""
    parent = Path(path).parent
    while not (parent.exists() or parent.is_symlink()):
        if parent == parent.parent:
            return None
        parent = parent.parent
    return parent


@cli.command("list")
@plugin_option
@click.option("--keys", is_flag=True, help="Under each component, its spec keys: what each takes, required or its "
                                           "default.")
def list_components(keys):
    """List the registered components, by kind (and how each one reaches the optimized ONNX artifact,
    when not through an ONNX lowering of its own)."""
    _needs_stdout("the list")
    _import_quietly()
    from bertc.keys import key_lines
    from bertc.optimize.lower import own_lowering, portable_lowering
    from bertc.registry import ALL

    for reg in ALL:
        click.echo(f"{reg.kind}:")
        for e in reg.entries():
            note = ("" if own_lowering(e.component) is not None else
                    "  [optimized ONNX: its Keras call through tf2onnx, spliced in]" if portable_lowering(e.component)
                    else "  [no optimized ONNX artifact: no ONNX lowering]")
            click.echo(f"  {e.name:<18} {e.description}{note}")
            if keys:
                for line in key_lines(e.spec):
                    click.echo(f"      {line}")
    if keys:   # the spec's own keys and its export and parity sections
        from bertc.spec import ExportSpec, ParitySpec, Spec

        click.echo("spec:")
        for name, model in (("(top level)", Spec), ("export", ExportSpec), ("parity", ParitySpec)):
            click.echo(f"  {name}")
            for line in key_lines(model):
                click.echo(f"      {line}")


@cli.command()
@plugin_option
@click.argument("spec", type=_SpecPath())
@click.option("--plot", type=_Path(dir_okay=False, path_type=Path),
              help="Draw the graph (layer names, types, shapes): .png/.svg/.pdf need Graphviz; .dot writes its source "
                   "(its missing folders are made).")
@click.option("--force", is_flag=True, help="Replace an existing --plot file.")
def inspect(spec, plot, force):
    """Print the built graph: layers, output shapes, parameters, shared layers."""
    if force and plot is None:
        raise click.UsageError("--force replaces an existing --plot FILE; without --plot nothing is written")
    _needs_stdout("the graph")
    if plot is not None:   # the drawing's path checked before any work (a bad suffix printed the table first)
        from bertc.inspect import check_plot

        check_plot(plot)
        _check_output_file(plot, force, "--plot")
    _import_quietly()
    from bertc.inspect import graph_table, plot_graph

    with parents_made(plot, "--plot") if plot is not None else contextlib.nullcontext():
        model = __import__("bertc").build_model(spec).model
        if plot is not None:   # drawn first: a drawing that fails (no Graphviz) leaves no table on standard output
            plot_graph(model, plot, replace=force)
    click.echo(graph_table(model))
    if plot is not None:
        _err(f"wrote {plot}")   # status on stderr: standard output holds the table alone


@cli.command()
@plugin_option
@click.argument("out", type=_Path(file_okay=False, exists=True, path_type=Path))
@click.option("--atol", type=click.FloatRange(0, 1), default=None, callback=lambda c, p, v: _not_nan(v, p),
              help="Absolute tolerance for every backend, 0 to 1.")
@click.option("--rtol", type=click.FloatRange(0, 1), default=None, callback=lambda c, p, v: _not_nan(v, p),
              help="Relative tolerance for every backend, 0 to 1.")
@click.option("--text", type=_Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Real inputs: a text file (one example per line, a tab between a sentence pair; or .jsonl/.csv/"
                   ".tsv/.parquet: the field text, and text_pair for a pair) tokenized by "
                   "the tokenizer bundled in OUT, instead of random ids.")
@click.option("--calibration", type=_Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The build's inputs with this file as their real text: where the build's --calibration text is "
                   "now (checked against its sha256), or other text (recorded as not the build's).")
@click.option("--json", "as_json", is_flag=True, help="Print the parity section as JSON.")
@click.option("-q", "--quiet", is_flag=True,
              help="Errors only: no summary (--json's section is printed all the same); the exit code is the verdict.")
def parity(out, atol, rtol, text, calibration, as_json, quiet):
    """Re-run parity on a built OUT/ directory (Keras reference vs ONNX Runtime and TFLite)."""
    if as_json:
        _needs_stdout("--json's parity section")
    _import_quietly()
    from bertc.rerun import rerun_parity, verdict_text

    with _stops_cleanly(out / "report.json"), _native_log():   # TFLite's "Created TensorFlow Lite XNNPACK delegate"
        section, report = rerun_parity(out, atol, rtol, text, calibration)   # line and the like, as a build's
    if as_json:
        from bertc.report import report_json

        click.echo(report_json(section))
    elif not quiet:   # the summary; under --atol / --rtol with that diagnostic verdict in its parity section
        click.echo(verdict_text(report, section), nl=False)
    if not section["passed"]:
        from bertc.errors import ParityError
        from bertc.report import parity_failure_message

        raise ParityError(parity_failure_message(section))


def _not_nan(value, param):
    if value is not None and value != value:
        raise click.BadParameter("nan is not a tolerance (0 to 1)", param_hint=f"--{param.name}")
    return value


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers separated by commas, got {text!r}", param_hint=option)
    return values


@cli.command()
@plugin_option
@click.argument("out", type=_Path(file_okay=False, exists=True, path_type=Path))
@click.option("--batch", default="1", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--seq", default=None, help="Sequence lengths, comma-separated [default: 32,128 up to the model's maximum].")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True,
              help="Intra-op threads of every runtime.")
@click.option("--rounds", type=click.IntRange(1), default=5, show_default=True, help="Interleaved timing rounds.")
@click.option("--calls", type=click.IntRange(1), default=10, show_default=True, help="Timed calls per target per round.")
@click.option("--warmup", type=click.IntRange(0), default=3, show_default=True, help="Untimed calls per target and shape (at least one is made).")
@click.option("--baseline", default="onnx_cpu", show_default=True, help="Backend the ratios are relative to.")
@click.option("--backends", default=None, help="Only these backends, comma-separated (e.g. onnx_cpu,onnx_optimized_cpu).")
@click.option("--no-plot", is_flag=True, help="Do not draw bench.png.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (the table goes to stderr).")
@click.option("--text", "text", type=_Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Time real text (one example per line, a tab between a pair; or .jsonl/.csv/.tsv/.parquet: "
                   "the field text, and text_pair) through the bundled tokenizer.")
@click.option("-q", "--quiet", is_flag=True,
              help="Errors only: no progress, table nor 'wrote' line (--json's results are printed all the same; "
                   "bench.json is written).")
def bench(out, batch, seq, threads, rounds, calls, warmup, baseline, backends, no_plot, as_json, text, quiet):
    """Time every artifact x backend of a built OUT/: latency p50/p90, throughput, ratio to model.onnx on CPU.
    Writes OUT/bench.json and OUT/bench.png (with matplotlib)."""
    import shlex
    import warnings

    if as_json:
        _needs_stdout("--json's figures")
    if not baseline.strip():   # an unset shell variable: the message said "unknown baseline ; this build has: ..."
        raise click.BadParameter("'' is no backend's name (an unset shell variable?); e.g. onnx_cpu, the default",
                                 param_hint="--baseline")
    _import_quietly()
    from bertc.bench import BenchOptions, run_bench, table

    opts = BenchOptions(batches=_int_list(batch, "--batch"), seqs=_int_list(seq, "--seq") if seq else None,
                        threads=threads, rounds=rounds, warmup=warmup, calls=calls, baseline=baseline,
                        backends=tuple(b.strip() for b in backends.split(",") if b.strip()) if backends else None,
                        plot=not no_plot, text=text)
    argv = (click.get_current_context().obj or {}).get("argv")
    command = "bertc " + shlex.join(argv) if argv is not None else ""
    with _stops_cleanly(out / "bench.json"), _native_log(), warnings.catch_warnings():   # runtimes' C++ chatter
        warnings.simplefilter("ignore")  # Keras' load-time UserWarnings about layer build()
        shown = (lambda line: None) if quiet else (lambda line: _err(f"  {line}"))
        result = run_bench(out, opts, command, progress=shown)
    text = table(result)
    if as_json:
        if not quiet:
            _err(text)
        from bertc.report import report_json

        click.echo(report_json(result))
    elif not quiet:
        click.echo(text)
    if result.get("not_saved"):   # the figures are shown above; the exit code says they were not kept
        from bertc.errors import OutputError

        shown = "the results above" if as_json or not quiet else "the results"
        raise OutputError(f"{result['not_saved']}; {shown} were not saved")
    if not quiet:
        _err(f"wrote {out / 'bench.json'}" + (f" and {result['chart']}" if result.get("chart") else ""))


@cli.command("run")
@click.argument("out", type=_Path(path_type=Path))
@click.argument("input_path", metavar="INPUT", type=_Path(path_type=Path))
@click.option("-o", "--output", "--out", "result", cls=_OutputOption, type=_Path(path_type=Path), required=True,
              help="The result file: .npy (embeddings), .parquet, .jsonl or .csv; written beside itself and renamed "
                   "when complete (its missing folders are made). - : standard output (JSONL or CSV, batch by "
                   "batch).")
@click.option("--force", is_flag=True, help="Replace RESULT if it exists.")
@click.option("--input-format", type=click.Choice(["txt", "jsonl", "csv", "tsv", "parquet"]), default=None,
              help="The input's format [default: from its suffix; txt for - (standard input)].")
@click.option("--result-format", type=click.Choice(["npy", "jsonl", "csv", "parquet"]), default=None,
              help="The result's format [default: from its suffix; jsonl for - (standard output)].")
@click.option("--text-field", default="text", show_default=True, help="JSONL field / CSV or Parquet column of the text.")
@click.option("--pair-field", default=None, help="Field / column of the second text of a pair (e.g. the context "
                                                 "of a question). In a .txt, a tab separates the pair. A "
                                                 "multiple-choice model puts it, and a space, before each choice.")
@click.option("--choices-field", default=None, metavar="FIELD|A,B,...",
              help="A multiple-choice model's choices: the field / column holding each row's list of them (in CSV, a "
                   "JSON array), or several, comma-separated, holding one choice each. In a .txt, a tab before each "
                   "choice [default: choices].")
@click.option("--rank", is_flag=True,
              help="Order each row's documents for its text (the query), best first: a one-score classifier (a "
                   "cross-encoder reranker) by each (query, document) pair's score, as CrossEncoder.rank; a sentence "
                   "embedder by the similarity of the query's and each document's embeddings (as --similarity). "
                   "--top-k keeps the best K.")
@click.option("--documents-field", default=None, metavar="FIELD|A,B,...",
              help="With --rank: the field / column holding each row's documents (in CSV, a JSON array), or several, "
                   "comma-separated, holding one each. In a .txt, a tab before each document [default: documents].")
@click.option("--keep-fields", default=None, metavar="A,B,...",
              help="Input fields / columns (an id, a URL) copied into each result row beside the result, with their "
                   "types in Parquet: JSONL, CSV or Parquet input and result.")
@click.option("--artifact", default=None, metavar="ID|FILE",
              help="Run this ONNX artifact (e.g. onnx_optimized, model.onnx) instead of the one picked for the host.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the model runs: cuda (ONNX Runtime's CUDA provider: onnxruntime-gpu), cpu, or auto: CUDA "
                   "where this onnxruntime has it, else the CPU.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="ONNX Runtime intra-op threads [default: one per core; with --ray: 1 per actor].")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True,
              help="Texts per model call, at most.")
@click.option("--max-batch-tokens", type=click.IntRange(1), default=16384, show_default=True,
              help="Padded tokens per model call (texts x longest), at most; attention's texts x longest² is held "
                   "under 1,024 x this, so long documents go a few or one at a time. A longer text runs alone.")
@click.option("--window", type=click.IntRange(1), default=2048, show_default=True,
              help="Texts read, sorted by length and batched at a time (bounds memory).")
@click.option("--truncate/--no-truncate", default=None,
              help="Cut texts longer than the model's maximum, or refuse them naming the line [default: as the "
                   "bundled tokenizer says; sentence embedders truncate]. A span labeler's context and a token "
                   "classifier's text are read in overlapping windows instead (--doc-stride).")
@click.option("--max-length", type=click.IntRange(1), default=None, metavar="N",
              help="Tokens per model row at most, fewer than the model's maximum: where texts are cut, and how long "
                   "a long text's windows are (transformers' QA pipeline reads 384) [default: the model's maximum].")
@click.option("--doc-stride", type=click.IntRange(0), default=None,
              help="A span labeler's context (or a token classifier's text) longer than the model's maximum is read "
                   "in windows, each with the whole question; neighbouring windows share this many tokens (fewer than "
                   "a window holds). The best span of any window is the answer; each word is tagged from the "
                   "window where it has the most context [default: 128, or half a window where that is less: "
                   "half the model's maximum or of --max-length].")
@click.option("--scores", type=click.Choice(["softmax", "sigmoid", "raw"]), default=None,
              help="A classifier's scores: softmax, sigmoid (each class alone: multi-label, one-class rerankers) or "
                   "the raw logits [default: as the checkpoint's config says (a CrossEncoder's activation, "
                   "problem_type), else sigmoid for one class and softmax for more].")
@click.option("--top-k", type=click.IntRange(1), default=None,
              help="A masked-LM model's predictions per mask token (fill-mask) [default: 5]; a span labeler's best "
                   "answers, as a list (\"answers\") [default: the best alone]; a ranking's best documents [default: "
                   "all].")
@click.option("--allow-no-answer", is_flag=True,
              help="A span labeler may answer \"\" (start = end = 0) when its [CLS] start and end outscore every "
                   "span of the context, as transformers' handle_impossible_answer (models trained on SQuAD 2.0).")
@click.option("--aggregation", type=click.Choice(["first", "average", "max", "simple"]), default=None,
              help="A token classifier's word label, as transformers' aggregation_strategy: its first token's, the "
                   "mean of its tokens' probabilities, or its most confident token's [default: first]; simple: a "
                   "tag per token, entities grouped from them (a word may be split).")
@click.option("--labels", "candidate_labels", default=None, metavar="A,B,...",
              help="Zero-shot classification with an NLI classifier (an entailment class in its config): the "
                   "candidate labels, comma-separated; each text gets them likeliest first, with scores.")
@click.option("--hypothesis-template", default=None, metavar="TEXT",
              help="Zero-shot: the hypothesis each label is put in, {} for the label [default: \"This example is "
                   "{}.\"].")
@click.option("--multi-label", is_flag=True,
              help="Zero-shot: score each label alone (entailment against contradiction), not against each other.")
@click.option("--similarity", is_flag=True,
              help="A sentence embedder scores text pairs (--pair-field, or a tab in a .txt): each text embedded alone, "
                   "the two compared by the model's similarity function (config_sentence_transformers.json's "
                   "similarity_fn_name: cosine, dot, euclidean, manhattan; cosine by default).")
@click.option("--prompt", default=None, metavar="TEXT",
              help="A sentence embedder's prompt, put before each text (e.g. \"query: \"; \"\" for none) [default: "
                   "the model's default prompt, if its sentence-transformers config names one].")
@click.option("--pair-prompt", default=None, metavar="TEXT",
              help="With --similarity: the prompt before each pair's second text (e.g. \"passage: \"; \"\" for none); "
                   "with --rank and a sentence embedder, before each document [default: the first text's].")
@click.option("--pair-prompt-name", default=None, metavar="NAME",
              help="With --similarity (--rank): one of the model's prompts for each pair's second text (document).")
@click.option("--prompt-name", default=None, metavar="NAME",
              help="One of the model's prompts (config_sentence_transformers.json), e.g. query or passage.")
@click.option("--embedding-precision", type=click.Choice(["float32", "int8", "uint8", "binary", "ubinary"]),
              default="float32", show_default=True,
              help="A sentence embedder's embeddings as sentence-transformers' quantize_embeddings writes them (what a "
                   "vector index stores): binary / ubinary pack 8 dimensions a byte (value > 0), 32x smaller; int8 / "
                   "uint8 one byte a dimension, its range from --calibration-embeddings.")
@click.option("--calibration-embeddings", type=_Path(dir_okay=False), default=None, metavar="FILE.npy",
              help="With --embedding-precision int8 / uint8: float32 embeddings of a sample of the texts by the same "
                   "model (bertc run OUT sample.txt -o sample.npy); each dimension's min and max set its range.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Run over Ray Data: on the cluster at ADDRESS, or a local Ray when none is given.")
@click.option("--actors", type=click.IntRange(1), default=None,
              help="With --ray: actors (one ONNX Runtime session each) [default: the cluster's CPUs / --threads].")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar nor summary line.")
def run_command(out, input_path, result, force, input_format, result_format, text_field, pair_field, choices_field,
                rank, documents_field, keep_fields, artifact, device,
                threads, batch_size, max_batch_tokens, window, truncate, max_length, doc_stride, allow_no_answer,
                aggregation,
                scores, top_k,
                candidate_labels,
                hypothesis_template, multi_label, similarity, prompt, pair_prompt, pair_prompt_name, prompt_name,
                embedding_precision, calibration_embeddings, ray_address, actors, quiet):
    """Run the model built in OUT on the texts of INPUT (.txt one per line, .jsonl, .csv/.tsv, .parquet; - for
    standard input); write RESULT: embeddings, labels and scores, spans, tags and entities, a masked-LM model's
    predictions at each mask token, zero-shot labels (--labels), or a multiple-choice model's choice, one per input
    row, in input order (- for standard output)."""
    import time

    from bertc.errors import InputError
    from bertc.runtime import Progress, Runtime
    from bertc.run_io import field_list, require_libraries, stderr_is_terminal

    if ray_address is not None and device == "cuda":
        raise InputError("--device cuda with --ray: bertc's Ray actors ask the cluster for CPUs and run on them; run "
                         "on the GPU without --ray, or over Ray with --device cpu")
    if ray_address is not None:   # the actors' sessions are on CPUs: the artifact chosen is the CPU's (auto chose
        device = "cpu"            # CUDA on a GPU driver, whose actors, given no GPU by Ray, could not run it)
    if actors is not None and ray_address is None:   # it was ignored: the run went on in this process
        raise InputError(f"--actors {actors}: only with --ray (the Ray actors that run the model); without --ray the "
                         f"run is in this process (--threads sets its threads)")
    if keep_fields is not None:   # '' kept nothing, where ',' was refused
        field_list(keep_fields, "--keep-fields")
    given = {name for name, value in (("max_length", max_length), ("doc_stride", doc_stride), ("top_k", top_k),
                                      ("aggregation", aggregation), ("allow_no_answer", allow_no_answer),
                                      ("similarity", similarity), ("threads", threads),
                                      ("calibration embeddings", calibration_embeddings),
                                      ("embedding precision", embedding_precision != "float32"),
                                      ("scores", scores), ("hypothesis template", hypothesis_template),
                                      ("candidate labels", candidate_labels), ("rank", rank),
                                      ("prompt name", prompt_name), ("pair prompt name", pair_prompt_name),
                                      ("prompt and prompt name", prompt is not None and prompt_name is not None),
                                      ("pair prompt and pair prompt name",
                                       pair_prompt is not None and pair_prompt_name is not None))
             if value not in (None, False)}

    # a library the formats or --ray need and that is missing: exit 7 before the model is loaded or a line printed
    require_libraries(input_path, input_format, result, result_format, ray=ray_address is not None)
    # ONNX Runtime's own warnings on the console (its telemetry's as its environment is made, where the cache folder
    # cannot be written, in colour): errors only, as its sessions'; the environment is made here, its words logged
    with contextlib.suppress(Exception), _native_log():
        from bertc.requirements import import_onnxruntime

        onnxruntime = import_onnxruntime()   # a Ctrl-C in its import: KeyboardInterrupt, which this does not swallow

        onnxruntime.set_default_logger_severity(3)
    with _flags_named(given, out):   # the Runtime's checks name its parameters (max_length): the flags typed, here
        runtime = Runtime(out, artifact=artifact, device=device, threads=threads, batch_size=batch_size,
                          window=window, truncate=truncate, scores=scores, prompt=prompt, prompt_name=prompt_name,
                          max_batch_tokens=max_batch_tokens, top_k=top_k, doc_stride=doc_stride,
                          candidate_labels=candidate_labels, hypothesis_template=hypothesis_template,
                          multi_label=multi_label, allow_no_answer=allow_no_answer, aggregation=aggregation,
                          max_length=max_length, similarity=similarity, pair_prompt=pair_prompt,
                          pair_prompt_name=pair_prompt_name, rank=rank, embedding_precision=embedding_precision,
                          calibration_embeddings=calibration_embeddings)
    if not quiet:
        _err(f"bertc run {out}: {runtime.kind} results from {runtime.choice.describe()}"
             + (f"; {runtime.scores} scores ({runtime.scores_why})"
                if runtime.kind == "classification" or runtime.kind == "rank" and not runtime.similarity else "")
             + (f"; prompt {runtime.prompt!r} ({runtime.prompt_why})" if runtime.prompt else "")
             + (f"; {runtime.precision.describe()}" if runtime.precision.active else "")
             + (f"; {runtime.similarity} similarity ({runtime.similarity_why})" if runtime.similarity else "")
             + (f"; {'document' if runtime.kind == 'rank' else 'pair'} prompt {runtime.pair_prompt!r} "
                f"({runtime.pair_prompt_why})" if runtime.similarity and runtime.pair_prompt != runtime.prompt else "")
             + (f"; the {runtime.parts.top_k} likeliest tokens at each {runtime.mask[0]}"
                if runtime.kind == "fill_mask" else "")
             + (f"; {len(runtime.parts.candidates)} candidate labels in {runtime.parts.hypothesis!r}"
                f"{', each alone' if runtime.parts.multi_label else ''}" if runtime.kind == "zero_shot" else ""))
        if runtime.legacy_config:
            _err(f"note: {runtime.legacy_config}")
    progress = Progress(enabled=not quiet and stderr_is_terminal(), label="texts")
    start = time.perf_counter()
    rows = written = None
    # RESULT's missing folders made, as build -o and import -o make OUT's; removed again when the run fails or is
    # stopped (a failed run leaves nothing behind)
    with parents_made(result, "-o") if str(result) != "-" else contextlib.nullcontext():
        try:
            # SIGTERM (`timeout`, `kill`, a job scheduler) unwinds as Ctrl-C does, so that the temporary result is
            # removed (Python's default would end the process where it stands and leave .RESULT.partial-PID behind);
            # with --ray, the lines Ray's driver (its C++ core worker) writes to stderr itself, such as its warning
            # that Ray Data's actors have constructor arguments in the object store, off the console (as a build's)
            with _sigterm_unwinds(), (_native_log() if ray_address is not None else contextlib.nullcontext()):
                with _flags_named(given, out, input_path, result):
                    rows = runtime.run_file(input_path, result, input_format=input_format, text_field=text_field,
                                            pair_field=pair_field, choices_field=choices_field,
                                            keep_fields=keep_fields, documents_field=documents_field,
                                            result_format=result_format, force=force, progress=progress,
                                            total_hint=progress.set_total, ray_address=ray_address,
                                            ray_actors=actors)
        except BrokenPipeError:   # the reader of standard output stopped (`| head`): stop too, quietly, as Unix
            # tools do
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(EXIT_BROKEN_PIPE) from None
        except (_Terminated, KeyboardInterrupt) as exc:   # the result's temporary file is gone (run_io.atomic_result)
            # unless the signal came once RESULT was written (leaving the signal handlers' context)
            written, rows, interrupted, stopped = rows, None, isinstance(exc, KeyboardInterrupt), exc
        finally:
            progress.close()
        if rows is None:
            _err(("interrupted" if interrupted else stopped.said)
                  + ("" if str(result) == "-" else
                     f" after {result} was written: it holds all {written:,} result(s)" if written is not None else
                     "; nothing was written"))
            # 128 + SIGINT / SIGTERM / SIGHUP, as a shell reports a process that the signal ended
            raise SystemExit(EXIT_INTERRUPTED if interrupted else stopped.code)
    _finished(0)   # RESULT is written: what is left is to say so
    seconds = time.perf_counter() - start
    if not quiet:
        _err(f"wrote {'standard output' if str(result) == '-' else result}: {rows:,} {runtime.kind} result(s) in "
             f"{seconds:.2f}s "
             f"({rows / max(seconds, 1e-9):,.1f} texts/s" + (", over Ray)" if ray_address is not None else ")")
             + (f"; {runtime.truncated:,} of them cut to {runtime.max_len_why} {runtime.max_len} tokens (--no-truncate "
                f"refuses such texts, naming each)" if runtime.truncated else ""))


# the Runtime's parameters, as its messages name them first, and the bertc run flags that set them
RUN_FLAGS = {"max_length": "--max-length", "doc_stride": "--doc-stride", "top_k": "--top-k",
             "aggregation": "--aggregation", "allow_no_answer": "--allow-no-answer", "similarity": "--similarity",
             "threads": "--threads", "calibration embeddings": "--calibration-embeddings",
             "embedding precision": "--embedding-precision", "scores": "--scores",
             "hypothesis template": "--hypothesis-template", "candidate labels": "--labels", "rank": "--rank",
             "prompt name": "--prompt-name", "pair prompt name": "--pair-prompt-name",
             "prompt and prompt name": "--prompt and --prompt-name",
             "pair prompt and pair prompt name": "--pair-prompt and --pair-prompt-name"}


@contextlib.contextmanager
def _flags_named(given, *paths):
    """An :class:`InputError` of the Runtime whose message starts with a parameter's name (``max_length 1000: at
    most ...``) says the flag instead (``--max-length 1000: ...``): the one the user typed, so only for the
    parameters in ``given`` (those set on the command line). The Python API keeps its own names. A message about
    one of ``paths`` (OUT, INPUT, RESULT: a build directory named ``scores``) is left as it is."""
    from bertc.errors import InputError

    try:
        yield
    except InputError as exc:
        message = str(exc)
        if any(message.startswith(f"{path}:") or message.startswith(f"{path}/") for path in paths):
            raise
        for name in sorted(given, key=len, reverse=True):   # "rank and similarity" before "rank"
            # the name as a label ("top_k 3:", "similarity:"), not as a noun ("calibration embeddings (FILE) have")
            if name in RUN_FLAGS and re.match(rf"{re.escape(name)}(?=:| [^(]|$)", message):
                if name == "rank" and message.startswith("rank and similarity") and "similarity" in given:
                    message = "--rank and --similarity" + message[len("rank and similarity"):]
                else:
                    message = RUN_FLAGS[name] + message[len(name):]
                exc.args = (message, *exc.args[1:])
                break
        raise


def _traceback_wanted() -> bool:
    return os.environ.get("BERTC_TRACEBACK") == "1" or os.environ.get("BERTC_DEBUG") == "1"


# bertc's dependencies by import name: None for its own (pyproject.toml's dependencies: the build's libraries, which
# a run-only environment of numpy, click, onnxruntime and tokenizers lacks: README, "Running a build on text"), else
# the extra that installs it
LIBRARIES = {"tensorflow": None, "keras": None, "pydantic": None, "pydantic_core": None, "tf2onnx": None, "onnx": None,
             "ai_edge_litert": None, "safetensors": None, "numpy": None, "click": None, "onnxruntime": "cpu",
             "tokenizers": "text", "pyarrow": "parquet", "ray": "ray"}


def missing_library_line(exc: ModuleNotFoundError, argv: list) -> str | None:
    """The one line for a dependency of bertc's that is not installed (None for any other missing module): the pip
    command that installs it and every other of bertc's own dependencies missing here (installing the one named
    only moved the error to the next), or the libraries of its extra alone (``pip install 'bertc[parquet]'`` in the
    run-only environment would pull in the whole build stack)."""
    from bertc.requirements import pip_install, pip_install_core

    name = (exc.name or "").split(".")[0]
    if name not in LIBRARIES:
        return None
    command = _command_of(argv)
    what = f"bertc {command}" if command else "bertc"
    extra = LIBRARIES[name]
    how = pip_install(extra) if extra else (pip_install_core() or f"pip install {name}")
    names = [name]
    if not extra:   # every one of bertc's own missing here, not only the first imported (a run-only environment
        import importlib.util   # lacks seven)

        for other, its_extra in LIBRARIES.items():
            if its_extra is not None or other in (name, "pydantic_core") or sys.modules.get(other) is not None:
                continue   # an extra's, the one named, or imported already
            try:
                found = importlib.util.find_spec(other) is not None
            except (ImportError, ValueError):   # ValueError: None in sys.modules, an import of it blocked
                found = False
            if not found:
                names.append(other)
    needs = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    which = "which is" if len(names) == 1 else "which are"
    return (f"error: {what} needs {needs}, {which} not installed in this environment ({sys.executable}): {how}. "
            f"Running a build (bertc run, bertc.Runtime) needs only numpy, click, onnxruntime and tokenizers")


def usage_error_line(exc: click.ClickException, argv: list = ()) -> str:
    """Click's error (a usage error: a missing argument, an unknown or bad option) as one ``error: ...`` line,
    pointing at the command's ``--help`` instead of Click's Usage / Try / Error block."""
    message = re.sub(r"\.\s+\(", " (", " ".join(exc.format_message().split()))   # "'--x'. (Did you mean ...?)"
    message = message[:-1] if message.endswith(".") else message
    ctx = getattr(exc, "ctx", None)   # None where Click raised it without one (an option missing its value)
    command = ctx.command_path if ctx is not None else " ".join(["bertc", *filter(None, [_command_of(list(argv))])])
    return f"error: {message}" + (f" (see '{command} --help')" if isinstance(exc, click.UsageError) else "")


def internal_error_line(exc: BaseException) -> str:
    """The one line printed for an unexpected exception (a bug in bertc)."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= 500 else text[:500] + " ..."
    return (f"internal error (a bug in bertc, please report it): {type(exc).__name__}"
            + (f": {text}" if text else "")
            + ("" if _traceback_wanted() else "; set BERTC_TRACEBACK=1 to print the traceback"))


# Click 8.2's (8.1 shows the help and exits 0 itself; bertc needs 8.2, said at start, but must not crash on 8.1)
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _click_too_old() -> Optional[str]:
    """The error line for a Click older than bertc's floor (looked up only when Click lacks 8.2's exception: the
    metadata lookup costs every command ~10 ms)."""
    if NO_ARGS_IS_HELP:
        return None
    from importlib import metadata

    from bertc.requirements import too_old

    try:
        return too_old("click", metadata.version("click"))
    except metadata.PackageNotFoundError:
        return None


# the modules whose deprecation warnings the CLI does not show: every one but bertc's and the plug-ins' (the user's own
# code: a file plug-in is imported as bertc_plugin_STEM, a module plug-in under its own name; _quiet_libraries). A list
# of libraries missed the ones they import in turn: Keras imports matplotlib when it is installed, and matplotlib
# < 3.10.7 calls pyparsing 3.3's deprecated names.
_LIBRARIES = r"(?!(bertc|bertc_plugin_.*)(\.|$))"
_QUIET_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
_PLUGIN_MODULES: list = []   # the module plug-ins loaded so far (every --plugin of the command line)


def _quiet_libraries(plugins=()) -> None:
    """Ignore the deprecation warnings (:data:`_QUIET_CATEGORIES`, and EncodingWarning) of every module but bertc's
    and the plug-ins' (``plugins``: module plug-ins' names, kept as the user's own code: shown as Python shows them),
    replacing the filters an earlier call put first."""
    import warnings

    global _LIBRARIES
    before = _LIBRARIES
    _PLUGIN_MODULES.extend(m for m in plugins if m not in _PLUGIN_MODULES)
    if _PLUGIN_MODULES:
        names = "|".join(["bertc", r"bertc_plugin_.*", *(re.escape(m) for m in _PLUGIN_MODULES)])
        _LIBRARIES = rf"(?!({names})(\.|$))"
    warnings.filters[:] = [f for f in warnings.filters if getattr(f[3], "pattern", None) not in (before, _LIBRARIES)]
    for category in _QUIET_CATEGORIES:   # the libraries' notes to their own users (Keras's numpy __array__ one):
        # under PYTHONWARNINGS=error they ended every build as exit 70
        warnings.filterwarnings("ignore", category=category, module=_LIBRARIES)
    # -X warn_default_encoding: a note to each library's developers (matplotlib's and TensorFlow's open() without an
    # encoding, on import); under -W error every command ended as exit 70. bertc's own files name their encoding.
    warnings.filterwarnings("ignore", category=EncodingWarning, module=_LIBRARIES)


def main(argv=None) -> int:
    """Run the CLI; the exit codes are those of :mod:`bertc.errors` (its docstring has the table)."""
    from bertc.errors import command_line

    before = len(_SIGINTS)
    with _sigint_noted(), command_line():   # messages name the flags, not the Python API's parameters
        return _main(argv, lambda: len(_SIGINTS) > before)


def _main(argv, interrupted: Callable[[], bool]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if sys.stderr is None:   # started with 2>&-: print(file=sys.stderr) would write to standard output (--json's)
        sys.stderr = open(os.devnull, "w", encoding="utf-8")
    _quiet_libraries()
    old = _click_too_old()
    if old is not None:
        _err(f"error: {old}")
        return EXIT_MISSING_LIBRARY
    try:
        cli.main(args=argv, prog_name="bertc", standalone_mode=False, obj={"argv": argv})
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except NO_ARGS_IS_HELP as exc:   # `bertc` alone: its help
        exc.show()
        return EXIT_BAD_SPEC
    except click.ClickException as exc:   # a usage error (a missing -o, a bad --variants): one line, as every error
        _err(usage_error_line(exc, argv))
        return EXIT_BAD_SPEC
    except click.exceptions.Abort as exc:   # Click's for Ctrl-C (KeyboardInterrupt) where a command does not say more
        _err("interrupted" if isinstance(exc.__cause__, KeyboardInterrupt) else "aborted")
        return EXIT_INTERRUPTED
    except BertcError as exc:
        exc = plugin_error(exc) or exc   # bertc's check of a plug-in's output, re-raised by Keras: its own words
        _err(f"error: {exc}")
        return exc.exit_code
    except SystemExit as exc:
        if exc.code == 1 and isinstance(sys.stdout, click.utils.PacifyFlushWrapper):   # Click's own EPIPE exit
            return EXIT_BROKEN_PIPE   # `bertc list | true`: as `bertc run -o - | head` (1 is "checks failed")
        return int(exc.code or 0)
    except BrokenPipeError:   # a write to standard output outside Click's guard
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        _err("interrupted; nothing was written")
        return EXIT_INTERRUPTED
    except Exception as exc:
        return _failed(exc, argv, interrupted())


def _failed(exc: Exception, argv: list, interrupted: bool) -> int:
    """The exit status (and its line) of a command ended by an exception no other handler of :func:`main` took."""
    if interrupted:   # what a Ctrl-C became on its way (an extension's import makes it an ImportError)
        _err("interrupted; nothing was written")
        return EXIT_INTERRUPTED
    if isinstance(exc, ModuleNotFoundError):
        line = missing_library_line(exc, argv)
        if line is None:
            if _traceback_wanted():
                traceback.print_exc()
            _err(internal_error_line(exc))
            return EXIT_INTERNAL
        _err(line)
        return EXIT_MISSING_LIBRARY
    # a bug in bertc: say so in one line, the traceback on request
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:   # a path given: checking it raises
        _err(f"error: {exc.filename or 'a path given'}: the name is too long for the file system "
             f"({exc.strerror or exc})")
        return EXIT_BAD_SPEC
    if _traceback_wanted():
        traceback.print_exc()
    if isinstance(exc, OSError) and (exc.errno in (errno.EACCES, errno.EPERM) and exc.filename or
                                     exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)):
        # a file or folder this user may not read (inside a build: a checksum, a timing), or standard output on a
        # full disk (bertc schema > FILE): the place's, not a bug
        _err(f"error: {exc.filename or 'standard output'}: {exc.strerror or exc}")
        return EXIT_OUTPUT
    blamed = plugin_error(exc)   # raised by a plug-in's code: the plug-in's error (exit 2), not bertc's
    if blamed is not None:
        _err(f"error: {blamed}")
        return blamed.exit_code
    _err(internal_error_line(exc))
    return EXIT_INTERNAL


_SCRIPT = []   # set by entry(): this process is the bertc command, whose end is its own (not a host's)


def entry(skip_teardown: bool = True) -> None:
    """The ``bertc`` console script: :func:`main`, then the process ends with the command's own status. The
    interpreter's teardown (TensorFlow's objects and libraries: 1-2 s after 'wrote OUT/') is skipped once the
    atexit handlers have run: a Ctrl-C or SIGTERM in it ended a complete build with 130 / 143 and no word, and a
    wrapper read the build as failed. With a thread still running, the interpreter's own exit waits for it.
    ``skip_teardown`` False (``python -m bertc``, which may run under a host: ``python -m cProfile -m bertc``
    writes its profile at exit): the interpreter's own exit, a signal in its Python part still ending the process
    with the command's status."""
    import atexit
    import threading

    _SCRIPT.append(True)
    code = main()
    _signals_end_with(code)
    if not skip_teardown or \
            any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    _leave(code)


def _finished(code: int = 0) -> None:
    """The command's work is done and what remains is to say so: as the bertc command, a signal from now on ends
    the process with ``code`` (a Ctrl-C between a build's swap and the end of its summary ended a complete build
    with 130). Not in a host's process (``main()`` called from Python keeps its own handlers)."""
    if _SCRIPT:
        _signals_end_with(code)


def _leave(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):   # a reader gone (| head): the command has said its status already
            stream.flush()
    os._exit(code)


def _signals_end_with(code: int) -> None:
    """A Ctrl-C or SIGTERM from now on ends the process with ``code``: the command is done."""
    import signal

    for signum in (signal.SIGINT, *_stop_signals()):
        with contextlib.suppress(ValueError, OSError):   # not the main thread (an embedding host)
            if signum != getattr(signal, "SIGHUP", None) or signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, lambda signum, frame: _leave(code))   # (nohup's SIGHUP stays ignored)


if __name__ == "__main__":
    entry()
