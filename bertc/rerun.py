"""``bertc parity OUT``: parity of a finished build re-run on what is in OUT today.

Apart from :mod:`bertc.parity`, which the build's calibration set (:mod:`bertc.calibration`) itself uses: the re-run
judges the build's own inputs, the grid and its real text.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from bertc.parity import run_parity


def rerun_parity(out_dir: Path, atol: Optional[float] = None, rtol: Optional[float] = None,
                 text: Optional[Path] = None) -> dict:
    """``bertc parity OUT/``: reload the Keras model and artifacts of a build, compare, and update
    ``report.json`` (atomically) with the new parity section. A damaged report.json, or a build directory that
    cannot be written, is an :class:`OutputError` (exit 5) before any work."""
    from bertc.errors import OutputError
    from bertc.plugins import require_for_build
    from bertc.report import read_report, require_writable, write_report
    from bertc.signature import signature_of
    from bertc.spec import Tolerance, load_spec
    from bertc.transfer import load_keras_model

    out_dir = Path(out_dir)
    for name in ("spec.json", "model.keras", "report.json"):
        if not (out_dir / name).exists():
            raise OutputError(f"{out_dir} is not a bertc build directory: {name} is missing")
    report = read_report(out_dir)   # a damaged report.json stops here, before the work (exit 5)
    require_for_build(out_dir)
    require_writable(out_dir, "report.json and summary.txt", "bertc parity")   # not after the work: exit 5 now
    spec = load_spec(out_dir / "spec.json")
    if atol is not None or rtol is not None:
        tol = Tolerance(atol=spec.parity.default.atol if atol is None else atol,
                        rtol=spec.parity.default.rtol if rtol is None else rtol)
        spec = spec.model_copy(update={"parity": spec.parity.model_copy(update={"default": tol, "backends": {}})})
    if text is not None:
        from bertc.text import text_cases

        cases = text_cases(out_dir, text, spec)
        inputs = {"text": {"kind": "file", "path": str(text), "cases": len(cases)}}
    else:   # the build's own inputs: the grid and its real text (its --calibration file, if it is still there)
        from bertc.calibration import calibration_set

        recorded = ((report.get("calibration") or {}).get("text") or {})
        file = Path(recorded["path"]) if recorded.get("kind") == "file" and recorded.get("path") else None
        calibration = calibration_set(spec, out_dir, file if file is not None and file.is_file() else None)
        cases, inputs = calibration.cases, calibration.sources
    model = load_keras_model(out_dir)
    section = run_parity(spec, signature_of(spec), model, out_dir, report["artifacts"], cases)
    section["inputs"] = inputs
    if atol is not None or rtol is not None:   # a verdict under other tolerances than the spec's says so
        section["tolerance_override"] = {"atol": atol, "rtol": rtol}
    changed = changed_since_build(out_dir, report)
    if changed:
        section["changed_since_build"] = changed
    report["parity"] = section
    report["status"] = "passed" if section["passed"] else "failed"
    try:
        write_report(out_dir, report)
    except OutputError as exc:   # it became unwritable during the work (or the disk is full): the verdict still
        from bertc.report import parity_failure_message

        verdict = "passed" if section["passed"] else parity_failure_message(section)
        raise OutputError(f"{exc}; parity was run but its results were not saved. Parity {verdict}") from None
    return section


def changed_since_build(out_dir: Path, report: dict) -> list[str]:
    """The files of the build's manifest that are missing or whose sha256 differs now: parity judges what is in OUT
    today, and the report says when that is not what the build wrote."""
    from bertc.manifest import sha256_file

    changed = []
    for name, entry in ((report.get("manifest") or {}).get("files") or {}).items():
        path = Path(out_dir) / name
        if not path.is_file():
            changed.append(f"{name} (missing)")
        elif path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
            changed.append(name)
    return changed
