"""report.json and summary.txt: the one place that assembles and renders what the stages returned.

Each stage returns its result (plain data or a typed result such as the optimize stage's, whose
skips are :class:`~bertc.optimize.onnx_artifacts.Skip` records) or raises a
:class:`~bertc.errors.BertcError`; :func:`new_report` starts a build's report, the pipeline adds each
stage's section as it completes (so a failed build still has everything up to the failure), and
:func:`write_report` writes report.json and the summary (atomically); :func:`read_report` reads a finished
build's report.json back for ``bertc parity`` / ``bertc bench``, checking its shape first. It imports nothing else of
bertc's but :mod:`bertc.errors`, so any stage can use it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import json
import math
import os
import platform
from pathlib import Path


def new_report(version: str, spec_name: str, spec_file: str, signature: dict, stages: dict) -> dict:
    """A build's report before any stage ran: ``status`` is "failed" until the last stage passes."""
    return {
        "bertc_version": version, "spec_name": spec_name, "spec_file": spec_file,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        **signature,
        "stages": stages, "status": "failed",
    }


def fusion_section(result) -> dict:
    """The report's ``fusion`` section of the optimize stage's result: the lowering's own section, or for a
    skipped artifact ``{"lowered": false, "not_lowered": its layers, "skipped": its reason}``."""
    if result.skip is not None:
        return {"lowered": False, "not_lowered": list(result.skip.layers), "skipped": result.skip.reason}
    return result.fusion


def _write_new(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (the one place this module creates a file: the writability probe uses it too)."""
    path.write_text(text, encoding="utf-8", errors="surrogateescape")   # whatever the locale: a file name's bytes
    # as the system gave them (under LC_ALL=C a non-ASCII OUT's summary ended the build as exit 70)


_WRITES = itertools.count(1)   # this process's temporary names: one per write, whatever thread writes


def _beside(path: Path) -> Path:
    """The temporary name a write to ``path`` uses (``report.json.PID.N.partial``): its own, whichever process or
    thread writes (two threads writing one file under one name per process truncated each other's text under a
    reader, and one's rename found the file gone)."""
    return path.with_name(f"{path.name}.{os.getpid()}.{next(_WRITES)}.partial")


def _keep_mode(path: Path, tmp: Path) -> None:
    """``tmp`` (the text that replaces ``path``) given ``path``'s permission bits: a report.json made read-only
    (``chmod a-w``) stayed so only until root's ``bertc parity`` replaced it with a new, writable file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    os.chmod(tmp, mode & 0o7777)


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` whole or not at all: written beside it (a name of this write's own: two processes or
    threads may write one shared cache file) and renamed over it. An ``OSError`` leaves no partial file. A
    symbolic link is written through: its target gets the text, the link stays (a spec kept as a link, as
    ``bertc build -o LINK`` keeps a linked OUT)."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    tmp = _beside(path)
    try:
        _write_new(tmp, text)
        _keep_mode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


@contextlib.contextmanager
def signals_ignored():
    """SIGINT and SIGTERM ignored while files are put in place by renames (a finished build at OUT, then the removal
    of what it replaced; report.json and summary.txt): Ctrl-C, or SIGTERM unwinding as Ctrl-C does, between two
    renames would leave no OUT, or one file new and the other old. The command ends right after and says how it
    went (a signal a moment later would have found it ended)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():   # where signal handlers run, and are set
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN)
                for signum in (signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def write_texts_atomic(texts: dict) -> None:
    """Each ``{path: text}`` written as :func:`write_text_atomic` does, all or none: every text is written beside its
    file first, then all are renamed over theirs, so that a full disk cannot leave one file new and the other old
    (report.json and the summary of it)."""
    written = []
    try:
        for path, text in texts.items():
            path = Path(path)
            if path.is_symlink():
                path = Path(os.path.realpath(path))
            tmp = _beside(path)
            written.append((tmp, path))
            _write_new(tmp, text)
            _keep_mode(path, tmp)
        with signals_ignored():   # Ctrl-C or SIGTERM between two renames: one file new, the other old
            for tmp, path in written:
                os.replace(tmp, path)
    except BaseException:
        for tmp, _ in written:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        raise


def unwritable(directory: Path) -> "str | None":
    """Why files cannot be written into ``directory`` (None when they can), found by writing and removing a probe
    file: permissions, a read-only file system, ACLs and quotas all answer the same way."""
    probe = Path(directory) / f".bertc-write-probe.{os.getpid()}"
    try:
        _write_new(probe, "")
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def require_writable(out: Path, files: str, command: str) -> None:
    """Raise :class:`OutputError` (exit 5) before any work when ``command`` (``bertc parity``) could not save
    ``files`` into the build directory ``out``."""
    from bertc.errors import OutputError

    why = unwritable(out)
    if why:
        raise OutputError(f"{out}: cannot write {files} there ({why}); nothing was run: {command} saves its results "
                          f"in the build directory. Make it writable, or run it on a writable copy: "
                          f"{copy_advice(out, command)}")


def copy_advice(out: Path, command: str) -> str:
    """The commands that run ``command`` on a writable copy of the build ``out``: ``cp -r`` keeps a read-only build's
    modes (its copy is read-only too), so the copy is made writable; its placeholder name is never ``out``'s own."""
    import shlex

    copy = "COPY"
    while Path(out).name == copy or Path(out) == Path(copy):
        copy += "2"
    source = shlex.quote(str(out))
    return f"cp -r {source} {copy} && chmod -R u+w {copy} && {command} {copy}"


def _finite(value):
    """``value`` with every NaN / infinity (a check's figure on a model that computes NaN) written as the text
    "nan" / "inf" / "-inf": json.dumps would write the literal NaN, which is not JSON (jq, JavaScript and most
    parsers other than Python's refuse the file)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def report_json(report: dict) -> str:
    """report.json's text: indented, strict JSON (no NaN literal)."""
    return json.dumps(_finite(report), indent=2, default=str, allow_nan=False)


def tolerance_flags(override: dict) -> str:
    """``{"atol": 0.5, "rtol": None}`` (a parity section's ``tolerance_override``) as the flags given: ``--atol 0.5``."""
    return " ".join(f"--{k} {v:g}" for k, v in override.items() if v is not None)


def write_report(out: Path, report: dict) -> None:
    """report.json and summary.txt into ``out`` (atomically); :class:`OutputError` (exit 5) when they cannot be."""
    from bertc.errors import OutputError

    out = Path(out)
    report_text, summary = report_json(report) + "\n", summary_text(report)
    try:
        write_texts_atomic({out / "report.json": report_text, out / "summary.txt": summary})
    except OSError as exc:
        raise OutputError(f"{out}: cannot write report.json / summary.txt: {exc.strerror or exc}") from None


REQUIRED = {"bertc_version": str, "spec_name": str, "inputs": list, "outputs": list, "stages": dict, "artifacts": dict}


def read_report(out: Path) -> dict:
    """``out``/report.json, checked to be a build's report before a command (``bertc parity``, ``bertc bench``)
    does any work with it: :class:`OutputError` (exit 5, a damaged build) naming the file and what is wrong with it
    (not JSON; not an object; a section missing or of the wrong type; an artifact without its file's path; a model
    file of the manifest that no artifact lists)."""
    from bertc.errors import OutputError

    path = Path(out) / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise OutputError(f"{path}: cannot be read as JSON ({exc})") from None

    def damaged(what: str) -> OutputError:
        return OutputError(f"{path}: not a bertc build report: {what} (damaged or edited? rebuild with bertc build)")

    if not isinstance(report, dict):
        raise damaged(f"{_json_type(report)} where a report is an object")
    for key, kind in REQUIRED.items():
        if key not in report:
            raise damaged(f"no {key!r} key")
        if not isinstance(report[key], kind):
            raise damaged(f"{key!r} is {_json_type(report[key])}, not {_json_type(kind())}")
    for name, entry in report["artifacts"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"]:
            raise damaged(f"artifact {name!r} has no file path ({json.dumps(entry)[:80]})")
    plugins = report.get("plugins")
    if plugins is not None and not (isinstance(plugins, list) and
                                    all(isinstance(r, dict) and isinstance(r.get("plugin"), str) for r in plugins)):
        raise damaged("'plugins' is not a list of plug-in records")
    files = (report.get("manifest") or {}).get("files") if isinstance(report.get("manifest"), dict) else None
    listed = {entry["path"] for entry in report["artifacts"].values()}
    unlisted = sorted(f for f in (files or {}) if f.endswith((".onnx", ".tflite", ".keras")) and f not in listed)
    if unlisted:
        raise damaged(f"its manifest has {', '.join(unlisted)} but 'artifacts' does not list "
                      f"{'it' if len(unlisted) == 1 else 'them'}")
    try:
        summary_text({**report, "status": "passed", "parity": None})   # every other section it renders: a wrong
        # shape would fail after the work (status and parity are what a re-run replaces)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        raise damaged(f"its summary cannot be rendered ({type(exc).__name__}: {exc})") from None
    return report


def _json_type(value) -> str:
    """``an array``, ``a string``, ...: what JSON calls ``value``'s type."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def parity_problems(section: dict) -> list[str]:
    """One line per failed backend x output problem (``- onnx_cpu / logits: ...``), and one line per
    backend whose artifact could not be loaded (``- onnx_cpu: model.onnx: cannot be loaded ...``)."""
    lines = [f"- {backend}: {error}" for backend, error in (section.get("load_errors") or {}).items()]
    return lines + [f"- {r['backend']} / {r['output']}: {p}" for r in section["results"]
                    if not r.get("load_error") for p in r["problems"]]


_AGREEMENT = {"argmax": "argmax", "label decisions": "label decisions"}   # OutputParity.agreement, as summarised


def _parity_line(r: dict) -> str:
    if r.get("load_error"):
        return f"  FAIL  {r['backend']:<20} {r['output']:<18} not loaded"
    figures = f"{r['max_abs']:.3g}"
    if r.get("reference_non_finite") or r.get("non_finite"):   # max abs is over the finite cases alone
        figures += (f" ({r['reference_non_finite']} non-finite in the Keras reference)" if r.get("reference_non_finite")
                    else f" ({r['non_finite']} non-finite)")
    if r.get("criterion") == "task":
        if r.get("required_argmax_agreement") is not None and r.get("argmax_agreement") is not None:
            what = _AGREEMENT.get(r.get("agreement", "argmax"), "score order")
            figures += f" {what} {r['argmax_agreement']:.2%} (>= {r['required_argmax_agreement']:.0%})"
            if r.get("argmax_near_ties"):
                figures += f", {r['argmax_near_ties']} near-tie(s)"
        if r.get("required_cosine") is not None and r.get("min_cosine") is not None:
            figures += f" cosine {r['min_cosine']:.5f} (>= {r['required_cosine']:g})"
        if r.get("required_rank_agreement") is not None and r.get("rank_agreement") is not None:
            figures += f" rank {r['rank_agreement']:.4f} (>= {r['required_rank_agreement']:g})"
    else:
        figures += f" (atol {r['atol']:g}" + (f" + rtol {r['rtol']:g} x |ref|)" if r.get("rtol") else ")")
        if r.get("argmax_agreement") is not None:
            figures += f" {_AGREEMENT.get(r.get('agreement', 'argmax'), 'score order')} " \
                       f"{r['argmax_agreement']:.0%}"
        if r.get("min_cosine") is not None:
            figures += f" cosine {r['min_cosine']:.6f}"
    return f"  {'PASS' if r['passed'] else 'FAIL'}  {r['backend']:<20} {r['output']:<18} {figures}"


def parity_failure_message(section: dict) -> str:
    problems = parity_problems(section)
    return f"parity failed ({len(problems)} problem(s)):\n" + "\n".join(problems)


def fusion_summary(fusion: dict) -> str:
    """The optimized ONNX artifact in one line: fused operators, node count per ONNX artifact,
    pruning; or why there is none (and which layers were not lowered)."""
    if not fusion.get("lowered"):
        return fusion.get("skipped", "no optimized artifact")
    ops = ", ".join(f"{n} {op.split('.')[-1]}" for op, n in fusion["fused_ops"].items())
    nodes = ", ".join(f"{k} {v}" for k, v in fusion["nodes"].items())
    pruned = (f"; last layer computed for {fusion.get('pruned_rows') or 'the first token'} only"
              if fusion.get("pruned") else "")
    check = fusion.get("structural_check")
    if check:
        worst = max((o["relative"] for o in check["outputs"].values()), default=0.0)
        pruned += f"; structural check {'passed' if check['passed'] else 'FAILED'} (relative {worst:.1g})"
    portable = fusion.get("not_lowered") or []
    if portable:
        shown = "; ".join(portable[:3]) + (f"; and {len(portable) - 3} more (fusion.not_lowered in report.json)"
                                           if len(portable) > 3 else "")
        pruned += f"; {len(portable)} layer(s) on the portable path (no lowering of their own): {shown}"
    return f"{ops or 'no fused operator'}; nodes: {nodes}{pruned}"


def int8_summary(quantization: dict) -> str:
    """The int8 tuning in one line: what was done, which MatMuls left per-tensor int8 (fp32, block-wise or
    row-wise int8), the figures, the speed."""
    t = quantization["tuning"]
    parts = [f"int8 tuning: {t['tuning']}"]
    weights = t.get("weights")   # ONNX: how the weights were made; TFLite: a list, one entry per weight
    if isinstance(weights, dict) and weights.get("pair_limit"):
        parts.append("pair-limited 8-bit weights")
    sm = t.get("smoothing") or {}
    if sm.get("applied"):
        parts.append(f"smoothing alpha {sm['alpha']} on {len(sm['sites'])} activation(s)")
        if sm.get("outlier_channels"):
            parts.append(f"outlier channels apart (fp32) in {len(sm['outlier_channels'])} feedforward(s)")
    kept = t.get("kept_fp32_by_sensitivity") or []
    blocks = (t.get("block_wise_by_sensitivity") or {}).get("nodes") or []
    if t.get("no_int8_weight"):   # TFLite: a toy model whose every weight is below the converter's threshold
        parts.append(f"no weight is int8 ({t['no_int8_weight']})")
    parts.append(f"fp32 MatMuls: {', '.join(kept)}" if kept else "no MatMul kept fp32")
    if blocks:
        parts.append(f"block-wise int8 MatMuls: {', '.join(blocks)}")
    rows = (t.get("row_wise_by_sensitivity") or {}).get("nodes") or []
    if rows:
        parts.append(f"row-wise int8 MatMuls: {', '.join(rows)}")
    for output, f in (t.get("figures") or {}).items():
        bits = [f"min cosine {f['min_cosine']:.5f}" if "min_cosine" in f else "",
                f"rank agreement {f['rank_agreement']:.4f}" if "rank_agreement" in f else "",
                f"{f.get('agreement', 'argmax')} {f['argmax_agreement']:.2%}" if "argmax_agreement" in f else ""]
        parts.append(f"{output}: " + ", ".join(b for b in bits if b))
    parts.append(f"on {len(t.get('inputs') or [])} calibration case(s)")
    if t.get("cache"):
        parts.append(f"the choices of an earlier build's tuning ({t['cache'].get('made')}), measured again")
    speed = quantization.get("speed") or {}
    if speed.get("ratio") is not None:
        against = "the fp32 optimized artifact" if "threads" in speed else "model.tflite"
        threads = f", {speed['threads']} threads" if "threads" in speed else ""
        parts.append(f"latency {speed['ratio']:.2f}x {against} (batch {speed['batch']} x seq "
                     f"{speed['sequence_length']}{threads})")
    return "; ".join(parts)


def summary_text(report: dict) -> str:
    lines = [f"bertc {report['bertc_version']}: {report['spec_name']}  [{report['status'].upper()}]"]
    lines.append("inputs:  " + ", ".join(f"{i['name']} {i['dtype']}" + (f" (ONNX {i['onnx_dtype']})" if "onnx_dtype" in i
                                                                        else "") + f" {i['shape']}"
                                        for i in report["inputs"]))
    lines.append("outputs: " + ", ".join(f"{o['name']} ({o['kind']})" for o in report["outputs"]))
    if "parameters" in report:
        p = report["parameters"]
        lines.append(f"parameters: {p['actual']:,} (closed form {p['expected']:,})")
    if report.get("weights"):
        w = report["weights"]
        lines.append(f"weights: {w['summary']} from {w['source']}")
    if report.get("tokenizer"):
        t = report["tokenizer"]
        lines.append(f"tokenizer: {t['kind']}: {', '.join(t['files'])} (copied into this directory)")
        if t.get("beyond_vocabulary"):
            lines.append(f"  note: {t['beyond_vocabulary']}")
        if t.get("unsupported"):
            lines.append(f"  note: {t['unsupported']}")
    if report.get("checks"):
        lines.append("checks:")
        for c in report["checks"]:
            lines.append(f"  {'PASS' if c['passed'] else 'FAIL'}  {c['name']:<20} {c['figure']!s:<14} "
                         f"threshold {c['threshold']!s:<8} {c['detail']}")
    files = (report.get("manifest") or {}).get("files") or {}
    for name, a in (report.get("artifacts") or {}).items():
        data = a.get("external_data")
        if data and isinstance(files.get(data), dict) and "bytes" in files[data]:   # a model over 2 GB: its weights
            graph = a["bytes"] - files[data]["bytes"]                                 # in a file of their own
            lines.append(f"artifact: {a['path']} ({graph / 1e6:.2f} MB) + {data} ({files[data]['bytes'] / 1e6:.2f} MB)")
        else:
            lines.append(f"artifact: {a['path']} ({a['bytes'] / 1e6:.2f} MB)")
    for name, a in (report.get("artifacts") or {}).items():
        tuning = (a.get("quantization") or {}).get("tuning")
        if tuning:
            lines.append(f"{name}: {int8_summary(a['quantization'])}")
    for name, d in (report.get("dropped_variants") or {}).items():
        lines.append(f"dropped: {name} ({d['file']}, not requested: the spec's default variant): {d['reason']}; "
                     f"best reached: {d['best']}")
    if report.get("fusion"):
        lines.append(f"fusion: {fusion_summary(report['fusion'])}")
    parity = report.get("parity")
    if parity:
        lines.append("parity (max abs diff vs keras, over the inputs its last line names):")
        for r in parity["results"]:
            lines.append(_parity_line(r))
        for backend, error in (parity.get("load_errors") or {}).items():
            lines.append(f"  cannot load {backend}: {error}")
        for backend, why in parity["skipped"].items():
            lines.append(f"  skipped {backend}: {why}")
        if not parity["results"] and not parity.get("load_errors"):
            lines.append("  nothing compared: the build has no artifact for any backend here")
        inputs = parity.get("inputs") or {}
        text = inputs.get("text") or {}
        if text and "grid" not in inputs:   # bertc parity --text: that file alone
            lines.append(f"  inputs: {text.get('cases')} case(s) of {text.get('path')} (bertc parity --text)"
                         + (f"; {text['cut']} of its examples cut to the model's {text.get('max_length')} tokens"
                            if text.get("cut") else ""))
        elif text:
            lines.append("  inputs: the random-id grid; real text: " + (
                f"{text.get('examples')} example(s) ({text.get('kind')}: {text.get('path') or text.get('file')})"
                if text.get("kind") != "none" else f"none: {text.get('why')}"))
            if text.get("differs_from_build"):   # bertc parity --calibration FILE: not the build's text
                lines.append(f"  note: not the build's inputs: {text['differs_from_build']}")
        override = parity.get("tolerance_override")
        if override:
            lines.append("  re-judged by bertc parity with " + ", ".join(f"{k} {v:g}" for k, v in override.items()
                                                                       if v is not None) + " instead of the spec's")
        if parity.get("changed_since_build"):
            lines.append("  changed since the build (not what it wrote or ran): "
                         f"{', '.join(parity['changed_since_build'])}")
    elif report.get("parity_not_run"):
        why = report["parity_not_run"]
        lines.append(f"parity: not run ({why}): " + ("no artifact was exported to compare" if why == "--no-export" else
                                                     "the artifacts are not compared with Keras; bertc parity OUT "
                                                     "compares them"))
    diagnostic = report.get("parity_other_tolerances")
    if diagnostic:   # bertc parity --atol / --rtol: beside the build's verdict
        lines.append(f"last bertc parity {tolerance_flags(diagnostic['tolerance_override'])}: "
                     f"{'passed' if diagnostic['passed'] else 'failed'} (a diagnostic under other tolerances than "
                     f"the spec's: the build's status stays its spec's verdict)")
    lines.append("stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in report["stages"].items()))
    return "\n".join(lines) + "\n"
