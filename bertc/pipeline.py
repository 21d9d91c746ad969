"""``bertc build``: spec -> validated Keras model -> ONNX / TFLite -> parity -> OUT/.

Every stage is timed; the report (``report.json``) and a short human summary
(``summary.txt``) are written with the artifacts. The output directory is
staged and swapped in atomically (see :mod:`bertc.output`).
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import bertc
from bertc.errors import BuildFailed, CheckFailed, ExportError, MissingLibrary, OutputError, ParityError
from bertc.manifest import build_manifest
from bertc.memory import imports_set_aside, release as release_memory, tune_allocator
from bertc.report import fusion_summary, new_report, parity_failure_message, write_report
from bertc.spec import EXPORT_VARIANTS

TFLITE_VARIANTS = (("tflite_int8", "int8", "model.int8.tflite"), ("tflite_fp16", "fp16", "model.fp16.tflite"))

StageHook = Callable[[str, float, str], None]  # (stage name, seconds, one-line detail)


@dataclass
class BuildOptions:
    out: Path
    force: bool = False
    export: bool = True
    parity: bool = True
    optimize: bool = True
    opset: Optional[int] = None
    input_dtype: Optional[str] = None
    keep_saved_model: Optional[bool] = None
    init_from: Optional[Path] = None
    weights: Optional[Path] = None  # trained weights; overrides the spec's ``weights`` entry
    onnx: bool = True
    tflite: bool = True
    preflight: bool = True
    memory_limit: Optional[int] = None  # bytes the preflight may assume available (instead of measuring)
    variants: Optional[tuple] = None  # replaces the spec's export.variants (``--variants``)
    calibration: Optional[Path] = None  # the user's text for int8 tuning and parity (``--calibration``)
    on_placed: Optional[Callable[[], None]] = None   # called once the new build is in place at ``out``


StatusHook = Callable[[str, float, str], None]   # (stage name, seconds so far, what it is doing now)


class Stages:
    def __init__(self, hook: Optional[StageHook] = None, status: Optional[StatusHook] = None):
        self.hook = hook or (lambda name, seconds, detail: None)
        self._status = status
        self.current, self._t0 = "", time.perf_counter()
        self.timings: dict[str, float] = {}

    def status(self, text: str) -> None:
        """What the running stage is doing now (the int8 tuning's steps: minutes on a base-size model)."""
        if self._status is not None:
            self._status(self.current, time.perf_counter() - self._t0, text)

    @contextlib.contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        note = {"detail": ""}
        self.current, self._t0 = name, t0
        yield note
        self.current = ""   # between stages (an error's message names the stage it stopped, or none)
        release_memory()  # what the stage freed goes back to the system before the next one
        seconds = time.perf_counter() - t0
        self.timings[name] = round(seconds, 3)
        self.hook(name, seconds, note["detail"])


class Calibration:
    """The calibration / checking inputs of a build (:mod:`bertc.calibration`), made on first use (the
    tokenizer is in ``out`` by then) and recorded in the report (``calibration``)."""

    def __init__(self, spec, out: Path, file: Optional[Path], report: dict):
        self.spec, self.out, self.file, self.report = spec, out, file, report
        self._set = None

    def get(self):
        if self._set is None:
            from bertc.calibration import calibration_set

            self._set = calibration_set(self.spec, self.out, self.file)
            self.report["calibration"] = self._set.sources
        return self._set


def _export_options(spec, opts: BuildOptions) -> dict:
    e = spec.export
    return {"opset": opts.opset or e.opset, "input_dtype": opts.input_dtype or e.input_dtype,
            "keep_saved_model": e.keep_saved_model if opts.keep_saved_model is None else opts.keep_saved_model}


def _variants_made(opts: BuildOptions, spec, off: dict) -> None:
    """Refuse ``--variants`` naming one that this build leaves unbuilt (``--variants tflite_int8 --no-tflite``, or a
    spec's ``export.tflite`` false: no TFLite at all, exit 0, OUT/spec.json listing the variant)."""
    from bertc.errors import InputError, said

    for name in opts.variants or ():   # (the spec's export.onnx false leaves out model.onnx alone, not these)
        kind = "tflite" if name.startswith("tflite") else "optimized"
        if not (off[kind] or not getattr(spec.export, kind)):
            continue
        why = (said("--no-export", "export=False") if not opts.export else
               said("--no-tflite", "tflite=False") if kind == "tflite" and not opts.tflite else
               said("--no-onnx", "onnx=False") if kind == "optimized" and not opts.onnx else
               said("--no-optimize", "optimize=False") if kind == "optimized" and not opts.optimize else
               f"the spec's export.{kind} false")
        made = "TFLite" if kind == "tflite" else "optimized ONNX"
        raise InputError(f"{said('--variants', 'variants')} {name}: {why} leaves no {made} artifact to make it "
                         f"from; drop one of them")


def _carried_from_build(source: Path, out: Path) -> dict:
    """What ``bertc run`` reads beside the weights, from the bertc build ``--init-from`` names (its OUT, or its
    model.keras): the tokenizer files and the checkpoint's config (class names, a CrossEncoder's activation,
    prompts), as a build from that checkpoint bundles them; a .keras file outside a build carries nothing. Returns
    the report's ``tokenizer`` section where there is one."""
    from bertc.importers import bundle_checkpoint_config
    from bertc.text import bundle_tokenizer

    build = source if source.is_dir() else source.parent
    if not (build / "report.json").is_file():
        return {}
    bundle_checkpoint_config(build, out)
    tokenizer = bundle_tokenizer(build, out)
    return {"tokenizer": tokenizer} if tokenizer else {}


def requested_variants(spec, opts: BuildOptions) -> tuple:
    """The variants the user asked for: those of ``--variants``, or of the spec when it names them
    (``export.variants`` present in the file); none when the spec's default applies. A requested variant
    that misses its criteria fails the build; a default one is dropped (:func:`drop_failed_variants`)."""
    if opts.variants is not None:
        return tuple(opts.variants)
    return tuple(spec.export.variants) if "variants" in spec.export.model_fields_set else ()


def tune_tflite(spec, sig, model, out: Path, tflite_artifacts: dict, calibration, log=None) -> str:
    """The TFLite int8 file tuned until the task criteria hold (:mod:`bertc.optimize.tflite_int8`), its
    artifact entry given the ``quantization`` section; the stage's one-line detail."""
    from bertc.optimize.int8_tuning import Judge
    from bertc.optimize.tflite_int8 import speed_against_fp32, tune_tflite_int8

    entry = tflite_artifacts["tflite_int8"]
    path, fp32 = out / entry["path"], out / tflite_artifacts["tflite"]["path"]
    try:
        tuning = tune_tflite_int8(path, fp32, Judge(spec, sig, model, calibration.cases,
                                                    reference=calibration.reference(model), out=out), log)
    except Exception as exc:   # LiteRT and the flatbuffer API raise their own types: name the artifact and cause
        raise ExportError(f"int8 tuning of {path.name} failed: {type(exc).__name__}: {exc}") from exc
    tuning["sources"] = calibration.sources
    quantization = {"method": "dynamic range", "tuning": tuning}
    try:
        quantization["speed"] = speed_against_fp32(fp32, path, spec)
    except Exception as exc:   # a timing that cannot run is recorded, never a failed build
        quantization["speed"] = {"error": f"{type(exc).__name__}: {exc}"}
    entry.update(quantization={**entry.get("quantization", {}), **quantization}, bytes=path.stat().st_size)
    kept = tuning["kept_fp32_by_sensitivity"]
    return (f"{tuning['tuning']}: " + (f"{len(kept)} of {len(tuning['weights'])} weights kept fp32; " if kept else "")
            + ", ".join(f"{o}: " + ", ".join(
                f"{f.get('agreement', 'argmax').replace(' ', '_') + '_agreement' if k == 'argmax_agreement' else k} {v}"
                for k, v in f.items() if k in ("min_cosine", "rank_agreement", "argmax_agreement"))
                for o, f in tuning["figures"].items()))


def drop_failed_variants(section: dict, artifacts: dict, requested: tuple, out: Path) -> dict:
    """Parity ``section`` without the backends of variants nobody asked for that failed it: their files
    are removed from ``out`` and ``artifacts``; returns {variant: why} (the report's ``dropped_variants``)."""
    variants = {v for v in EXPORT_VARIANTS if v not in requested}
    failed = {r["backend"] for r in section["results"] if not r["passed"]}
    info = section.get("backend_info") or {}
    dropped = {}
    for backend in sorted(failed):
        artifact = (info.get(backend) or {}).get("artifact")
        if artifact not in variants or artifact not in artifacts:
            continue
        entry = artifacts.pop(artifact)
        for name in (entry.get("path"), entry.get("external_data")):
            if name:
                (out / name).unlink(missing_ok=True)
        problems = [f"{r['output']}: {p}" for r in section["results"] if r["backend"] == backend for p in r["problems"]]
        dropped[artifact] = {"variant": artifact, "file": entry.get("path"), "requested": False,
                             "reason": f"default variant not requested, fails parity ({backend})",
                             "best": "; ".join(problems), "problems": problems}
    if dropped:
        gone = {b for b in failed if (info.get(b) or {}).get("artifact") in dropped}
        section["dropped_results"] = [r for r in section["results"] if r["backend"] in gone]
        section["results"] = [r for r in section["results"] if r["backend"] not in gone]
        section["backends"] = [b for b in section["backends"] if b not in gone]
        section["max_abs_by_backend"] = {b: v for b, v in section["max_abs_by_backend"].items() if b not in gone}
        section["load_errors"] = {b: e for b, e in (section.get("load_errors") or {}).items() if b not in gone}
        section["passed"] = all(r["passed"] for r in section["results"]) and not section.get("load_errors")
    return dropped


def build(spec_path, opts: BuildOptions, hook: Optional[StageHook] = None, status: Optional[StatusHook] = None,
          warn: Optional[Callable[[str], None]] = None) -> dict:
    """Build ``spec_path`` into ``opts.out``; ``hook`` hears of each finished stage, ``status`` of a long stage's
    progress, ``warn`` of what the build could not clean up beside OUT (default: a ``warning:`` line on stderr). A
    full disk (or quota, a read-only or failing file system) while the build writes is an :class:`OutputError`
    (exit 5) naming OUT, the stage and the file, with nothing written (:func:`unwritable_build`)."""
    with imports_set_aside():   # each stage's release scans what the build made, not every imported module
        return _build(spec_path, opts, hook, status, warn)


def _onnxruntime_checked(opts: BuildOptions) -> None:
    """An installed onnxruntime that the build would use (to optimize, quantize, check the ONNX artifacts) but that
    is older than bertc supports, or a broken install (two of its distributions at once): exit 7 before any work,
    not an export error after both exports. None installed: the build goes on without what needs it, and says so."""
    import importlib.util

    if not (opts.export and opts.onnx) or importlib.util.find_spec("onnxruntime") is None:
        return
    from bertc.errors import MissingLibrary
    from bertc.requirements import import_onnxruntime, require_onnxruntime

    try:
        ort = import_onnxruntime()
    except ImportError:   # installed, but failing to import: said so (it was an internal error, exit 70)
        from bertc.backends import no_onnxruntime

        raise MissingLibrary(no_onnxruntime()) from None
    require_onnxruntime(ort)


def _build(spec_path, opts: BuildOptions, hook: Optional[StageHook], status: Optional[StatusHook],
           warn: Optional[Callable[[str], None]]) -> dict:
    from bertc.output import StagedOutput
    from bertc.errors import SpecError
    from bertc.spec import dump_spec, load_spec, variants_left_out

    tune_allocator()
    stages = Stages(hook, status)
    with stages.stage("load spec") as note:
        spec = load_spec(spec_path)
        left_out = variants_left_out(spec.export) if opts.variants is None else []   # (--variants replaces them)
        if left_out:
            raise SpecError(str(spec_path), left_out)
        note["detail"] = spec.name
        _onnxruntime_checked(opts)
        requested = requested_variants(spec, opts)
        # the default variants (none named): OUT/spec.json names none either, so that a build from it may drop a
        # default variant as this one could (written out, they were a request, and its rebuild failed, exit 3)
        default_variants = opts.variants is None and "variants" not in spec.export.model_fields_set
        overrides = {k: v for k, v in (("opset", opts.opset), ("input_dtype", opts.input_dtype),
                                       ("keep_saved_model", opts.keep_saved_model)) if v is not None}
        # --no-export, --no-onnx, --no-optimize, --no-tflite (where the spec would build it): OUT/spec.json builds
        # what this build did (no ONNX export: no optimized artifact either)
        off = {"onnx": not (opts.export and opts.onnx), "optimized": not (opts.export and opts.onnx and opts.optimize),
               "tflite": not (opts.export and opts.tflite)}
        _variants_made(opts, spec, off)
        overrides.update({k: False for k, leave in off.items() if leave and getattr(spec.export, k)})
        if overrides:   # --opset, --int64-inputs, --keep-saved-model: OUT/spec.json records what was built
            spec = spec.model_copy(update={"export": spec.export.model_copy(update=overrides)})
        if opts.variants is not None:  # OUT/spec.json then records the variants this build made
            spec = spec.model_copy(update={"export": spec.export.model_copy(update={"variants": list(opts.variants)})})
        elif overrides and not default_variants:   # and not those the flags left out (--no-tflite: no tflite_int8)
            made = [v for v in spec.export.variants if not variants_left_out(spec.export.model_copy(
                update={"variants": [v]}))]
            spec = spec.model_copy(update={"export": spec.export.model_copy(update={"variants": made})})
        if opts.variants is not None or overrides:
            # and no tolerance of a backend those settings no longer build (the spec would not validate again)
            from bertc.spec import backend_builder

            kept = {b: t for b, t in spec.parity.backends.items() if backend_builder(b, spec.export) is None}
            if kept != spec.parity.backends:
                spec = spec.model_copy(update={"parity": spec.parity.model_copy(update={"backends": kept})})
    from bertc.weights import check_spec_weights, resolve_weights_path, spec_text, weights_entry_for

    weights = opts.weights or resolve_weights_path(spec.weights, spec_path)
    if opts.weights is None and spec.weights is not None:
        check_spec_weights(spec.weights, spec_path, weights)
    if weights is not None:
        # spec.json in OUT names the same weights, relative to OUT (where that spec.json lives)
        spec = spec.model_copy(update={"weights": weights_entry_for(weights, opts.out)})
    preflight = None
    if opts.preflight:  # before anything is written: a build that cannot fit stops here (exit 6)
        from bertc.preflight import check as memory_preflight, gb

        with stages.stage("preflight") as note:
            preflight = memory_preflight(spec, opts.export, opts.parity, opts.onnx, opts.tflite, opts.memory_limit,
                                         opts.optimize, trained=weights is not None or opts.init_from is not None)
            note["detail"] = (f"needs ~{gb(preflight['estimated_peak_bytes'])}, "
                              f"{gb(preflight['available_bytes'])} available ({preflight['available_from']})")
    from bertc.signature import signature_of

    sig = signature_of(spec)
    staged = StagedOutput(opts.out, opts.force, warn, opts.on_placed)  # refuses an existing OUT before any work
    with staged as tmp:
        try:
            io = sig.to_json()
            if spec.export.input_dtype != "int32":   # Keras and TFLite take int32 whatever the ONNX files take
                for i in io["inputs"]:
                    i["onnx_dtype"] = spec.export.input_dtype
            report = new_report(bertc.__version__, spec.name, str(spec_path), io, stages.timings)
            failure = None
            try:
                build_into(spec, sig, tmp, opts, stages, report, weights=weights, requested=requested)
            except BuildFailed as exc:  # a verdict against the build: its report goes to OUT.failed/, then it is raised
                failure = exc.cause
            if staged.removed_leftovers:
                report["removed_leftovers"] = staged.removed_leftovers  # staging dirs of dead builds of OUT
            if staged.recovered:
                report["recovered_output"] = staged.recovered   # put back at OUT first, from a dead build's swap
            if preflight is not None:
                report["preflight"] = preflight
            stages.current = "write spec.json"
            written = dump_spec(spec)
            if default_variants:
                written.get("export", {}).pop("variants", None)
            (tmp / "spec.json").write_text(json.dumps(written, indent=2) + "\n", encoding="utf-8")
            with stages.stage("manifest") as note:  # every file in OUT, whichever stage wrote it
                # the spec's hash names its weights by their absolute path, not by the path relative to OUT that
                # spec.json holds: the same spec and weights hashed differently with each place OUT was built
                hashed = written if weights is None else {**written, "weights": spec_text(str(Path(weights).resolve()))}
                report["manifest"] = build_manifest(tmp, hashed)
                note["detail"] = f"sha256 of {len(report['manifest']['files'])} files"
            stages.current = "write report.json"
            write_report(tmp, report)
        except Exception as exc:   # a full disk is the place's, not bertc's nor the model's: exit 5, naming it
            error = unwritable_build(exc, staged, stages.current)
            if error is None:
                raise
            raise error from exc   # the staging directory is removed on the way out: nothing of it is kept
        if failure is not None:
            raise failure
    return report


def unwritable_build(exc: BaseException, staged, stage: str) -> "Optional[OutputError]":
    """The :class:`OutputError` (exit 5) for ``exc`` when the build failed because its files could not be written
    (:func:`bertc.errors.filesystem_error`: a full disk or quota, a read-only or failing file system), met by
    ``stage`` directly or inside a stage that wraps it (ONNX and TFLite exports raise ExportError from it); None for
    any other failure (a verdict, a bug)."""
    from bertc.errors import BertcError, filesystem_error

    if isinstance(exc, BertcError) and not isinstance(exc, (ExportError, OutputError)):
        return None   # a verdict against the build (a check, parity), the spec, the weights: theirs
    cause = filesystem_error(exc)
    if cause is None:
        import errno

        tmp = getattr(staged, "tmp", None)
        if tmp is not None and not Path(tmp).exists() and filesystem_error(exc, (errno.ENOENT, errno.ESTALE)):
            # the staging folder (beside OUT) was removed under the build: rm -rf of OUT's parent, say
            where = f"stage {stage}" if stage else "the build"
            return OutputError(f"cannot write the build to {staged.given}: its staging folder {tmp} was removed "
                               f"while the build wrote it ({where}); nothing was written")
        return None
    import os

    reason = os.strerror(cause.errno)
    where = f"stage {stage}" if stage else "the build"
    if cause.filename:
        where += f", {cause.filename}"
    return OutputError(f"cannot write the build to {staged.given}: {reason} ({where}); nothing was written"
                       + (f", {staged.given} is as it was" if staged.existed else ""))


def _reads_text(spec, opts: BuildOptions) -> bool:
    """Whether the build checks parity or tunes an int8 variant, on its bundled tokenizer's text where it has one."""
    variants = spec.export.variants
    onnx_int8 = spec.export.optimized and opts.optimize and opts.onnx and \
        any(v in ("onnx_int8", "onnx_packed_int8") for v in variants)
    tflite_int8 = spec.export.tflite and opts.tflite and "tflite_int8" in variants
    return opts.export and ((opts.parity and spec.parity.enabled) or onnx_int8 or tflite_int8)


def _text_library_present(out: Path) -> None:
    """The tokenizers library asked for (exit 7) before any export, where the build bundles a tokenizer bertc reads
    and will check parity or tune int8 on its text: without it such a build exited 0, checked on random ids alone
    (one line of its summary said so). Not where bertc cannot read that tokenizer: the library would not help."""
    from bertc.calibration import has_tokenizer
    from bertc.errors import BertcError, said
    from bertc.text import _model_type, _read_json, require_tokenizers, vocabulary_kind

    if not has_tokenizer(out):
        return
    try:
        vocabulary_kind(out, _read_json(out / "tokenizer_config.json"), _model_type(out))
    except BertcError:   # a tokenizer bertc does not build, or cannot read (the report says so)
        return
    try:
        require_tokenizers()
    except MissingLibrary as exc:
        raise MissingLibrary(f"this build checks parity and tunes int8 on its bundled tokenizer's text: {exc} (or "
                             f"build with {said('--no-parity and --variants none', 'parity=False and variants=[]')})"
                             ) from None


def build_into(spec, sig, out: Path, opts: BuildOptions, stages: Stages, report: dict,
               weights: Optional[Path] = None, requested: tuple = ()) -> None:
    """Run the stages after the preflight into the staging directory ``out``, adding each stage's section to
    ``report`` (:func:`bertc.report.new_report`) as it completes. A stage's verdict against the build
    (validation, the optimized lowering's structural check, parity) raises :class:`BuildFailed` carrying
    its error, once ``report`` holds that stage's section; any other error propagates as raised."""
    from bertc.build import build_model, expected_param_count
    from bertc.check import run_checks

    from bertc.plugins import used_by
    from bertc.spec import dump_spec

    calibration = Calibration(spec, out, opts.calibration, report)
    plugins = used_by(dump_spec(spec))
    if plugins:   # what a later `bertc parity OUT` (or any loader of model.keras) has to import first
        report["plugins"] = plugins
    with stages.stage("build graph") as note:
        built = build_model(spec, sig)
        model = built.model
        report["parameters"] = {"actual": int(model.count_params()), "expected": expected_param_count(spec, sig)}
        note["detail"] = f"{model.count_params():,} parameters, {len(model.layers)} layers"
    if weights is not None:
        from bertc.importers import load_weights_stage

        with stages.stage("load weights") as note:
            report.update(load_weights_stage(model, spec, weights, out, init_from=opts.init_from))
            note["detail"] = report["weights"]["summary"]
    if opts.init_from is not None:
        from bertc.transfer import load_keras_model, transfer_weights

        with stages.stage("transfer weights") as note:
            n = transfer_weights(load_keras_model(opts.init_from), model)
            report["weights_from"] = str(opts.init_from)
            note["detail"] = f"{n} weights from {opts.init_from}"
            report.update(_carried_from_build(Path(opts.init_from), out))
    if opts.calibration is not None:   # the user's text is checked (readable, a tokenizer to read it) before any export
        calibration.get()
    elif _reads_text(spec, opts):
        _text_library_present(out)
    with stages.stage("validate") as note:
        checks = run_checks(model, spec, sig)
        report["checks"] = [c.to_json() for c in checks]
        failed = [c for c in checks if not c.passed]
        note["detail"] = f"{len(checks) - len(failed)}/{len(checks)} checks passed"
    if failed:
        raise BuildFailed(CheckFailed("numeric validation failed:\n" + "\n".join(
            f"- {c.name}: {c.figure} (threshold {c.threshold}); {c.detail}" for c in failed)))
    artifacts = {}
    with stages.stage("save keras") as note:
        from bertc.export.keras_file import save_keras

        artifacts["keras"] = save_keras(model, out / "model.keras")
        note["detail"] = f"{artifacts['keras']['bytes'] / 1e6:.2f} MB"
    report["artifacts"] = artifacts
    if opts.export:
        eo = _export_options(spec, opts)
        tflite_artifacts = {}
        tflite = None
        if spec.export.tflite and opts.tflite:
            from bertc.export.tflite import TFLiteJob

            keep = out / "saved_model" if eo["keep_saved_model"] else None
            ids = ["tflite"] + [v for v, _, _ in TFLITE_VARIANTS if v in spec.export.variants]
            files = {"tflite": ("fp32", "model.tflite"), **{v: (p, n) for v, p, n in TFLITE_VARIANTS}}
            targets = [(out / files[i][1], files[i][0]) for i in ids]
            onnx_meanwhile = spec.export.onnx and opts.onnx
            tflite = TFLiteJob(model, sig, targets, keep, background=None if onnx_meanwhile else False)
            # The converter runs while ONNX is exported (a child process for large models); its result is
            # collected before the optimize stage, so that the two never hold memory at the same time.
            with stages.stage("trace tflite") as note:
                tflite.start()
                note["detail"] = ("converting in a child process meanwhile" if tflite.background
                                  else "placeholder SavedModel")
        with tflite if tflite is not None else contextlib.nullcontext():  # a failure stops the converter
            if spec.export.onnx and opts.onnx:
                from bertc.export.onnx import export_onnx

                with stages.stage("export onnx") as note:
                    artifacts["onnx"] = export_onnx(model, sig, out / "model.onnx", eo["opset"], eo["input_dtype"])
                    note["detail"] = f"opset {eo['opset']}, {artifacts['onnx']['bytes'] / 1e6:.2f} MB"
            if tflite is not None:
                with stages.stage("export tflite") as note:
                    entries = tflite.finish()
                    tflite_artifacts = {i: entries[path] for i, (path, _) in zip(ids, targets)}
                    note["detail"] = ", ".join(f"{e['path']} {e['bytes'] / 1e6:.2f} MB" for e in tflite_artifacts.values())
        if spec.export.optimized and opts.optimize and opts.onnx:
            from bertc.optimize.onnx_artifacts import optimize_onnx

            with stages.stage("optimize onnx") as note:
                result = optimize_onnx(built, out, eo["opset"], eo["input_dtype"], spec.export.variants,
                                       portable=artifacts.get("onnx"), requested=requested,
                                       calibration=calibration.get(), log=stages.status)
                artifacts.update(result.artifacts)
                report["fusion"] = result.section()
                if result.dropped:
                    report.setdefault("dropped_variants", {}).update(result.dropped)
                note["detail"] = fusion_summary(report["fusion"]) + "".join(
                    f"; {v} dropped ({d['best']})" for v, d in result.dropped.items())
            artifacts.update(tflite_artifacts)
            if not result.passed:
                raise BuildFailed(ParityError(result.mismatch))
        if "tflite_int8" in tflite_artifacts and "tflite" in tflite_artifacts:
            with stages.stage("tune tflite int8") as note:
                note["detail"] = tune_tflite(spec, sig, model, out, tflite_artifacts, calibration.get(), stages.status)
        artifacts.update(tflite_artifacts)
    if opts.export and opts.parity and spec.parity.enabled:
        from bertc.parity import run_parity

        with stages.stage("parity") as note:
            cases = calibration.get()
            section = run_parity(spec, sig, model, out, artifacts, cases.cases, reference=cases.reference(model),
                                 progress=stages.status)
            section["inputs"] = cases.sources
            dropped = drop_failed_variants(section, artifacts, requested, out)
            if dropped:
                report.setdefault("dropped_variants", {}).update(dropped)
            report["parity"] = section
            worst = ", ".join(f"{b} {d:.2g}" for b, d in section["max_abs_by_backend"].items())
            note["detail"] = f"max abs diff: {worst or 'no backend'}" + "".join(f"; {v} dropped" for v in dropped)
        if not section["passed"]:
            raise BuildFailed(ParityError(parity_failure_message(section)))
    if not (opts.export and opts.parity and spec.parity.enabled):   # recorded, and said in summary.txt (the int8
        # tuning's inputs in "calibration" said nothing of it)
        report["parity_not_run"] = ("--no-export" if not opts.export else "--no-parity" if not opts.parity
                                    else "parity.enabled false in the spec")
    if "calibration" not in report:   # no parity and no int8 tuning: no inputs (bertc parity OUT says so, not that
        # an earlier bertc built it)
        report["calibration"] = {"text": {"kind": "none", "why": f"the build ran no parity ({report['parity_not_run']})"}}
    report["status"] = "passed"

