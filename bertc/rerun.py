"""``bertc parity OUT``: parity of a finished build re-run on what is in OUT today.

Apart from :mod:`bertc.parity`, which the build's calibration set (:mod:`bertc.calibration`) itself uses: the re-run
judges the build's own inputs, the grid and its real text.

``bertc parity OUT`` and ``bertc bench OUT`` save their results into OUT, which a ``bertc build --force -o OUT`` may
replace while they run. They refuse to start while a build holds OUT's lock (:class:`bertc.output.BuildLock`), and
save under that lock, only while OUT is still the build they read (:func:`saving_into`): else their results, on the
files of an earlier build or a mix, would land in the new build (a parity report with the old manifest and spec).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from bertc.errors import CalibrationError, DamagedBuild, OutputError
from bertc.memory import imports_set_aside
from bertc.parity import run_parity


DIAGNOSTIC = "parity_other_tolerances"   # report.json's key for bertc parity --atol / --rtol's last verdict


def rerun_parity(out_dir: Path, atol: Optional[float] = None, rtol: Optional[float] = None,
                 text: Optional[Path] = None, calibration: Optional[Path] = None) -> tuple[dict, dict]:
    """``bertc parity OUT/``: reload the Keras model and artifacts of a build, compare, and update
    ``report.json`` (atomically) with the new parity section. A damaged report.json, or a build directory that
    cannot be written, is an :class:`OutputError` (exit 5) before any work; so is a build's ``--calibration`` text
    that is missing or changed (:func:`build_text`), a :class:`CalibrationError` (exit 2), unless ``calibration``
    names the text to use instead (recorded as ``differs_from_build`` when it is not the build's). Returns the new
    parity section and the report written with it (:func:`verdict_text` prints them)."""
    from bertc.plugins import require_for_build
    from bertc.report import read_report, require_writable, write_report
    from bertc.signature import signature_of
    from bertc.spec import Tolerance
    from bertc.transfer import load_keras_model

    out_dir = Path(out_dir)
    for name in ("spec.json", "model.keras", "report.json"):
        if not (out_dir / name).exists():
            raise OutputError(f"{out_dir} is not a bertc build directory: {name} is missing")
    report = read_report(out_dir)   # a damaged report.json stops here, before the work (exit 5)
    require_for_build(out_dir)
    require_writable(out_dir, "report.json and summary.txt", "bertc parity")   # not after the work: exit 5 now
    refuse_while_building(out_dir, "bertc parity")
    spec = build_spec(out_dir)
    if atol is not None or rtol is not None:
        tol = Tolerance(atol=spec.parity.default.atol if atol is None else atol,
                        rtol=spec.parity.default.rtol if rtol is None else rtol)
        spec = spec.model_copy(update={"parity": spec.parity.model_copy(update={"default": tol, "backends": {}})})
    if text is not None:
        from bertc.text import text_cases

        if calibration is not None:
            raise CalibrationError("--calibration and --text cannot be combined: --calibration FILE re-runs the "
                                   "build's inputs with FILE as their real text, --text FILE judges that text alone")
        cases, cut = text_cases(out_dir, text, spec)
        inputs = {"text": {"kind": "file", "path": str(text), "cases": len(cases),
                           "cut": cut, "max_length": spec.encoder.max_sequence_length}}
    else:   # the build's own inputs: the grid and its real text (its --calibration file, checked to be the same)
        from bertc.calibration import calibration_set, has_tokenizer

        recorded = (report.get("calibration") or {}).get("text") or {}
        if (recorded.get("kind") in ("builtin", "file") or calibration is not None) and has_tokenizer(out_dir):
            from bertc.text import require_tokenizers

            require_tokenizers()   # the library missing is exit 7, not the build's tokenizer damaged (exit 5)
        file = calibration if calibration is not None else build_text(out_dir, recorded)
        calibration_inputs = calibration_set(spec, out_dir, file)
        cases, inputs = calibration_inputs.cases, calibration_inputs.sources
        now = inputs.get("text") or {}
        if recorded.get("kind") in ("builtin", "file") and now.get("kind") == "none":
            # the build judged real text, which cannot be tokenized now (a damaged tokenizer.json): a damaged
            # build, not a re-run on the grid alone passed as the build's verdict
            raise DamagedBuild(f"{out_dir}: not a readable bertc build (the real text its parity judged cannot be "
                               f"read now: {now.get('why')}); rebuild it, or restore the file")
        differs = _not_the_builds(now, recorded)
        if differs:
            inputs["text"]["differs_from_build"] = differs
    model = load_keras_model(out_dir)
    with imports_set_aside():   # each backend's release scans what parity made, not every imported module
        section = run_parity(spec, signature_of(spec), model, out_dir, report["artifacts"], cases)
    section["inputs"] = inputs
    changed = changed_since_build(out_dir, report)
    if changed:
        section["changed_since_build"] = changed
    if atol is not None or rtol is not None:
        # a verdict under other tolerances than the spec's is a diagnostic, kept beside the build's own: the build's
        # status (what bertc run and bertc.Runtime serve by) stays its spec's verdict, whichever way this one goes
        section["tolerance_override"] = {"atol": atol, "rtol": rtol}
        report[DIAGNOSTIC] = section
    else:
        report["parity"] = section
        report.pop("parity_not_run", None)   # it has run now
        report["status"] = "passed" if section["passed"] else "failed"
        report.pop(DIAGNOSTIC, None)   # of the build as it was then
    try:
        with saving_into(out_dir, report, "bertc parity", "its results"):
            write_report(out_dir, report)
    except BuildReplaced:   # an OutputError too, but nothing to add: OUT is another build now
        raise
    except OutputError as exc:   # it became unwritable during the work (or the disk is full): the verdict still
        from bertc.report import parity_failure_message

        verdict = "passed" if section["passed"] else parity_failure_message(section)
        raise OutputError(f"{exc}; parity was run but its results were not saved. Parity {verdict}") from None
    return section, report


def build_spec(out_dir: Path):
    """OUT/spec.json, loaded; one that cannot be (edited, truncated) is a damaged build (exit 5, as a damaged
    report.json), not a bad spec of the user's (exit 2). Plug-ins the build needs are loaded before this."""
    from bertc.errors import SpecError
    from bertc.spec import load_spec

    try:
        return load_spec(Path(out_dir) / "spec.json")
    except SpecError as exc:
        raise DamagedBuild(f"{out_dir}: not a readable bertc build ({exc}); rebuild it, or restore the file") \
            from None


def verdict_text(report: dict, section: dict) -> str:
    """What ``bertc parity`` prints of the re-run's ``section`` and the ``report`` it wrote: the build's summary
    (summary.txt's text); for a verdict under other tolerances (kept beside the build's), that verdict in the
    summary's parity section and a line saying the build's status is still its spec's."""
    from bertc.report import summary_text

    if "tolerance_override" not in section:
        return summary_text(report)
    shown = {k: v for k, v in report.items() if k != DIAGNOSTIC}
    shown.update(parity=section, status="passed" if section["passed"] else "failed")
    return summary_text(shown) + (f"the build's status stays {report.get('status')!r}, its spec's verdict: a verdict "
                                  f"under other tolerances is a diagnostic, kept in report.json as {DIAGNOSTIC}\n")


def build_text(out_dir: Path, recorded: dict) -> Optional[Path]:
    """The ``--calibration`` file the build recorded (``calibration.text``: its absolute path and sha256), for a
    re-run on the build's own inputs; None when the build's real text was bertc's built-in sentences (or none). A
    file that is missing or whose content changed since the build is a :class:`CalibrationError` (exit 2) naming it:
    parity on other text would pass for the build's own verdict."""
    from bertc.manifest import sha256_file

    if recorded.get("kind") != "file" or not recorded.get("path"):
        return None
    path = Path(recorded["path"])
    offer = (f"bertc parity re-runs the build's own inputs: name where that text is now with `bertc parity {out_dir} "
             f"--calibration FILE` (checked against the build's sha256; another text is judged and recorded as not "
             f"the build's), or judge a text alone with --text FILE")
    if not path.is_file():
        where = "" if path.is_absolute() else (f" (relative to the directory that build was run from, {Path.cwd()} "
                                               f"tried: bertc records an absolute path since)")
        raise CalibrationError(f"{out_dir} was built with --calibration {path}{where}, which is not there any more; "
                               f"{offer}")
    want = recorded.get("sha256")
    if want:
        have = sha256_file(path)
        if have != want:
            raise CalibrationError(f"{out_dir} was built with --calibration {path}, whose content has changed since "
                                   f"the build (sha256 {have[:16]}..., the build's {want[:16]}...); {offer}")
    return path


def _not_the_builds(text: dict, recorded: dict) -> Optional[str]:
    """What the build's real text was, when the re-run's ``text`` (a calibration set's record) is not it (None:
    it is the same file content, or the same built-in sentences: an upgraded bertc's may differ)."""
    if not recorded:   # an earlier bertc's build, from before parity on real text (a build that ran no parity
        # records why it had no real text, kind "none")
        return "the build had no real-text parity (an earlier bertc)" if text.get("kind") in ("file", "builtin") \
            else None
    if recorded.get("kind") == "builtin" and text.get("kind") == "builtin":
        return _not_the_builtin(text, recorded)
    if recorded.get("kind") == "none" and text.get("kind") == "builtin":
        return f"the build had no real text ({recorded.get('why')})"
    if recorded.get("kind") == "file":
        build = f"{recorded.get('path')}" + (f" (sha256 {recorded['sha256'][:16]}...)" if recorded.get("sha256") else "")
        if text.get("kind") != "file":
            return f"the build's real text was {build}"
        if not recorded.get("sha256"):   # an earlier bertc's build: its path alone, relative as typed
            return (f"the build's real text was {build}, of which it recorded no sha256 (an earlier bertc): this "
                    f"text is not known to be the same")
        return None if text.get("sha256") == recorded["sha256"] else f"the build's real text was {build}"
    if text.get("kind") == "file":
        return ("the build's real text was bertc's built-in sentences" if recorded.get("kind") == "builtin" else
                f"the build had no real text ({recorded.get('why')})")
    return None


def _not_the_builtin(text: dict, recorded: dict) -> Optional[str]:
    """Whether this bertc's built-in sentences (``text``) are not the ones the build was judged on (an upgrade
    between the build and the re-run can change them): by sha256, or for a build that recorded none, by count."""
    was = f"{recorded.get('examples')} example(s)"
    if recorded.get("sha256"):
        if recorded["sha256"] == text.get("sha256"):
            return None
        return (f"the build's real text was another bertc's built-in sentences ({was}, sha256 "
                f"{recorded['sha256'][:16]}...), this one's are {text.get('examples')} (sha256 "
                f"{str(text.get('sha256'))[:16]}...)")
    if recorded.get("examples") != text.get("examples"):
        return (f"the build's real text was an earlier bertc's built-in sentences ({was}), this one's are "
                f"{text.get('examples')}")
    return (f"the build's real text was an earlier bertc's built-in sentences ({was}), of which it recorded no "
            f"sha256: these are not known to be the same")


def changed_since_build(out_dir: Path, report: dict) -> list[str]:
    """The files of the build's manifest that are missing or whose sha256 differs now, and the build's plug-ins whose
    code loaded here differs from the build's: parity judges what is in OUT today, with the plug-ins of today, and
    the report says when that is not what the build wrote."""
    from bertc.manifest import sha256_file
    from bertc.plugins import changed_since_build as plugins_changed

    changed = []
    for name, entry in ((report.get("manifest") or {}).get("files") or {}).items():
        path = Path(out_dir) / name
        try:
            if not path.is_file():
                changed.append(f"{name} (missing)")
            elif path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
                changed.append(name)
        except OSError as exc:   # one this user may not read: named, and the command goes on (its backend says more)
            changed.append(f"{name} (cannot be read: {exc.strerror or exc})")
    return changed + plugins_changed(report)


class BuildReplaced(OutputError):
    """OUT is no longer the build a command read at its start (exit 5): its results were not saved."""


def _lock(out_dir: Path):
    from bertc.output import BuildLock

    return BuildLock(Path(out_dir).resolve())   # where ``bertc build -o OUT`` locks it (links followed)


def refuse_while_building(out_dir: Path, command: str) -> None:
    """:class:`OutputError` (exit 5) when a ``bertc build`` of ``out_dir`` is running: it is about to replace
    the build ``command`` would judge."""
    lock = _lock(out_dir)
    try:
        lock.acquire()
    except OutputError:
        raise OutputError(f"{out_dir} is being written by a bertc build ({lock.holder()}); nothing was run: "
                          f"run {command} when that build has finished") from None
    except OSError:   # no lock file can be made beside OUT: nor can a build make one, so none is running
        return
    lock.release()


def _build_of(report: dict) -> str:
    """What identifies the build a report describes: all of it but what ``bertc parity`` rewrites (as canonical
    JSON: a NaN figure equals itself)."""
    import json

    return json.dumps({k: v for k, v in report.items() if k not in ("parity", "parity_not_run", "status", DIAGNOSTIC)},
                      sort_keys=True, default=str)


def replaced_since(out_dir: Path, report: dict) -> Optional[str]:
    """Why ``out_dir`` is no longer the build whose report.json read as ``report`` (None: it still is; a
    ``bertc parity`` that rewrote its parity section meanwhile leaves it the same build)."""
    import json

    try:
        now = json.loads((Path(out_dir) / "report.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "its report.json is gone"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"its report.json cannot be read now ({exc})"
    if not isinstance(now, dict) or _build_of(now) != _build_of(report):
        created = now.get("created") if isinstance(now, dict) else None
        return ("another build replaced it" + (f" (report.json now describes the build of {created}; "
                                               f"this one read the build of {report.get('created')})"
                                               if created and created != report.get("created") else ""))
    return None


@contextmanager
def saving_into(out_dir: Path, report: dict, command: str, what: str):
    """Hold OUT's build lock while ``command`` saves ``what`` into ``out_dir``, after checking that ``out_dir``
    is still the build ``report`` was read from: :class:`BuildReplaced` (exit 5), nothing written, when a build
    is running or has replaced it since."""
    lock = _lock(out_dir)
    try:
        lock.acquire()
    except OutputError:
        raise BuildReplaced(f"{out_dir}: a bertc build of it started while {command} ran ({lock.holder()}); "
                            f"{what} were not saved (that build replaces what they describe): run {command} again "
                            f"when the build has finished") from None
    except OSError:   # no lock file can be made beside OUT: nor can a build make one
        lock = None
    try:
        why = replaced_since(out_dir, report)
        if why:
            raise BuildReplaced(f"{out_dir} changed while {command} ran: {why}. {what[0].upper()}{what[1:]} were "
                                f"not saved: they describe the earlier build's files (or a mix), not this one; "
                                f"run {command} again")
        yield
    finally:
        if lock is not None:
            lock.release()
