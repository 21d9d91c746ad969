"""CLI exit codes, messages without tracebacks, and atomic output."""
import json
import shutil
from pathlib import Path

import pytest

from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC, EXIT_CHECK_FAILED, EXIT_INTERNAL, EXIT_MISSING_LIBRARY, EXIT_OUTPUT
from conftest import tiny_bert

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_validate_ok_and_bad(tmp_spec, capsys):
    good = tmp_spec(tiny_bert(), "good.json")
    bad = tmp_spec({**tiny_bert(), "seed": -1}, "bad.json")
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad)]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert "$.seed: Input should be greater than or equal to 0, got -1" in err and "Traceback" not in err


def test_build_bad_spec_exits_2_without_traceback(tmp_spec, tmp_path, capsys):
    path = tmp_spec('{"name": "x", "encoder": {"type": "bert", "vocab_size": 10,}}')
    assert main(["build", str(path), "-o", str(tmp_path / "out"), "-q"]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert "invalid JSON" in err and "line 1" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_usage_error_exits_2(capsys):
    assert main(["build"]) == EXIT_BAD_SPEC


def test_schema_is_json(capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "bertc spec"


def test_schema_to_a_path_that_cannot_be_written_is_an_output_error(tmp_path, monkeypatch, capsys):
    """Both were internal errors (FileNotFoundError / PermissionError, exit 70); inspect --plot gave exit 5."""
    import errno
    import pathlib

    missing = tmp_path / "no" / "schema.json"   # a missing folder is made, as build -o and import -o make it
    assert main(["schema", "-o", str(missing)]) == 0 and json.loads(missing.read_text())["title"] == "bertc spec"
    (tmp_path / "afile").write_text("x")   # a file where the folder goes: exit 5, naming it
    assert main(["schema", "-o", str(tmp_path / "afile" / "s.json")]) == EXIT_OUTPUT
    assert f"{tmp_path / 'afile'} is not a directory (a file of that name is there)" in capsys.readouterr().err
    denied = tmp_path / "schema.json"
    write = pathlib.Path.write_text

    def refused(self, *args, **kwargs):   # what a read-only directory answers (root is not stopped by chmod)
        if self == denied:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return write(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", refused)
    assert main(["schema", "-o", str(denied)]) == EXIT_OUTPUT
    err = capsys.readouterr().err
    assert f"error: -o {denied}: cannot write it: Permission denied" in err and "internal error" not in err
    monkeypatch.undo()
    assert main(["schema", "-o", str(denied)]) == 0 and json.loads(denied.read_text())["title"] == "bertc spec"
    # an existing file (the user's spec) is replaced only with --force, as bertc import -o and bertc run -o
    spec = tmp_path / "my_spec.json"
    spec.write_text("{}")
    assert main(["schema", "-o", str(spec)]) == EXIT_OUTPUT and spec.read_text() == "{}"
    assert f"error: -o {spec}: already exists; pass --force to replace it" in capsys.readouterr().err
    assert main(["schema", "-o", str(spec), "--force"]) == 0 and json.loads(spec.read_text())["title"] == "bertc spec"
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["schema", "-o", "-"]) == 0 and not (tmp_path / "-").exists()   # standard output, no file named -
    assert json.loads(capsys.readouterr().out)["title"] == "bertc spec"


@pytest.fixture
def built(tmp_spec, tmp_path):
    out = tmp_path / "out"
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", str(out), "-q", "--no-export"]) == 0
    return out


def test_build_writes_report_and_summary(built):
    report = json.loads((built / "report.json").read_text())
    assert report["status"] == "passed" and {c["name"] for c in report["checks"]} == {
        "finite_weights", "finite_outputs", "deterministic", "padding_invariance", "batch_invariance", "param_count", "trainability",
        "masked_invariance"}
    assert all(c["passed"] for c in report["checks"])
    assert "PASS  param_count" in (built / "summary.txt").read_text()
    assert sorted(p.name for p in built.iterdir()) == ["model.keras", "report.json", "spec.json", "summary.txt"]
    assert not list(built.parent.glob(".out.tmp-*"))


def test_existing_output_is_kept_without_force(built, tmp_spec, capsys):
    marker = built / "mine.txt"
    marker.write_text("keep me")
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", str(built), "-q", "--no-export"]) == EXIT_OUTPUT
    assert "already exists; pass --force" in capsys.readouterr().err
    assert marker.read_text() == "keep me"
    # forced, a build holding what no build wrote (the user's file) is refused too, naming it (a QA report: a
    # project folder holding a report.json of its own, a git repository, was replaced by --force)
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", str(built), "-q", "--no-export", "--force"]) == EXIT_OUTPUT
    assert "exists and is a bertc build that also holds what no build wrote (mine.txt: yours to move or remove)" \
        in capsys.readouterr().err
    assert marker.read_text() == "keep me"
    marker.unlink()
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", str(built), "-q", "--no-export", "--force"]) == 0
    assert (built / "report.json").exists()


def test_force_never_replaces_what_a_build_or_an_import_did_not_write(tmp_spec, tmp_path, capsys):
    """--force replaces a build's OUT (its report.json) or an empty folder, and a spec; never a checkpoint's folder
    or file, nor the user's data (an -o pointed at the folder the weights are read from lost them)."""
    import shutil

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "hf" / "bert_seq_cls", checkpoint)
    before = sorted(p.name for p in checkpoint.iterdir())
    config = (checkpoint / "config.json").read_text()
    assert main(["import", str(checkpoint), "-o", str(checkpoint / "config.json"), "--force"]) == EXIT_OUTPUT
    assert "config.json exists and is not a bertc spec (a JSON object with an encoder)" in capsys.readouterr().err
    assert (checkpoint / "config.json").read_text() == config
    spec = checkpoint / "spec.json"
    assert main(["import", str(checkpoint), "-o", str(spec)]) == 0
    assert main(["import", str(checkpoint), "-o", str(spec), "--force"]) == 0   # a spec: replaced
    assert main(["build", str(spec), "-o", str(checkpoint), "-q", "--no-export", "--force"]) == EXIT_OUTPUT
    assert "ckpt exists and is not a bertc build (no report.json): --force replaces only a build's output" in \
        capsys.readouterr().err
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(before + ["spec.json"])
    for name in ("a b/../c", ""):   # a bad --name is the option's fault (it blamed the checkpoint), never ignored
        assert main(["import", str(checkpoint), "-o", str(tmp_path / "n.json"), "--name", name]) == EXIT_BAD_SPEC
        assert "Invalid value for --name" in capsys.readouterr().err and not (tmp_path / "n.json").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", str(empty), "-q", "--no-export", "--force"]) == 0


def test_failed_build_leaves_existing_output_untouched(built, tmp_spec, monkeypatch, capsys):
    import bertc.check as check

    monkeypatch.setattr(check, "INVARIANCE_ATOL", -1.0)  # make the invariance checks fail
    before = (built / "report.json").read_text()
    code = main(["build", str(tmp_spec(tiny_bert())), "-o", str(built), "-q", "--no-export", "--force"])
    assert code == EXIT_CHECK_FAILED
    assert (built / "report.json").read_text() == before
    failed = built.with_name("out.failed")
    assert json.loads((failed / "report.json").read_text())["status"] == "failed"
    assert "numeric validation failed" in capsys.readouterr().err
    assert not list(built.parent.glob(".out.tmp-*"))


def test_interrupted_build_leaves_nothing(tmp_spec, tmp_path, monkeypatch):
    import bertc.check as check

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(check, "run_checks", interrupt)
    monkeypatch.setattr("bertc.check.run_checks", interrupt)
    out = tmp_path / "out"
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", str(out), "-q"]) == 130
    assert list(tmp_path.iterdir()) == [tmp_path / "spec.json"]


def test_inspect_plot_shows_layer_names_and_shapes(tmp_spec, tmp_path, capsys):
    dot = tmp_path / "graph.dot"
    assert main(["inspect", str(tmp_spec(tiny_bert())), "--plot", str(dot)]) == 0
    text = dot.read_text()
    for name in ("input_word_ids", "input_mask", "input_type_ids", "embeddings", "layer_0", "pooler", "classifier"):
        assert f"<b>{name}</b>" in text, name
    assert "Output shape: <b>(None, 3)</b>" in text  # the classifier's logits
    assert "<b>(None, 16)</b>" in text  # the pooler's width


def test_inspect_plot_unknown_format_is_a_clear_error(tmp_spec, tmp_path, capsys, monkeypatch):
    spec = str(tmp_spec(tiny_bert()))
    assert main(["inspect", spec, "--plot", str(tmp_path / "graph.jpgx")]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert "unknown format '.jpgx'" in err and "Traceback" not in err
    (tmp_path / "no").write_text("x")   # a file where the folder goes (a missing folder is made): exit 5, naming it
    assert main(["inspect", spec, "--plot", str(tmp_path / "no" / "g.dot")]) == EXIT_OUTPUT   # was an internal error
    assert f"--plot {tmp_path / 'no' / 'g.dot'}: {tmp_path / 'no'} is not a directory" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))   # no Graphviz: a missing program, not a failed check (exit 1)
    assert main(["inspect", spec, "--plot", str(tmp_path / "g.png")]) == EXIT_MISSING_LIBRARY
    assert "rendering needs the Graphviz 'dot' program" in capsys.readouterr().err


def test_out_of_range_tolerances_and_sizes_are_usage_errors(built, capsys):
    """--atol / --rtol outside 0..1 (or nan) and a --memory-limit of zero or less are refused as usage errors (they
    were an internal error, and a run refused for "-5.0 GB available"); a build without a tokenizer asked for text
    parity is the input's fault (exit 2), not a failed check."""
    for option, value in (("--atol", "-1"), ("--atol", "5"), ("--rtol", "nan"), ("--rtol", "-0.5")):
        assert main(["parity", str(built), option, value]) == EXIT_BAD_SPEC
        assert f"Invalid value for {option}" in capsys.readouterr().err.replace("'", "")
    assert main(["build", str(built / "spec.json"), "-o", str(built.with_name("x")), "--memory-limit", "-5G"]) == \
        EXIT_BAD_SPEC
    assert "a memory size above zero" in capsys.readouterr().err
    text = built.with_name("t.txt")
    text.write_text("a text\n")
    assert main(["parity", str(built), "--text", str(text)]) == EXIT_BAD_SPEC
    assert "no tokenizer in this build" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_parity_on_a_damaged_model_keras_names_the_file(built, capsys, damage):
    keras_file = built / "model.keras"
    if damage == "garbage":
        keras_file.write_bytes(b"definitely not a zip archive")
    elif damage == "truncated":
        keras_file.write_bytes(keras_file.read_bytes()[:2000])
    else:
        keras_file.unlink()
    assert main(["parity", str(built)]) == EXIT_OUTPUT
    err = capsys.readouterr().err
    assert "model.keras" in err and "Traceback" not in err and "internal error" not in err
    if damage != "missing":
        assert "not a Keras model archive" in err


def test_variants_option_replaces_the_specs_and_is_recorded(tmp_spec, tmp_path, capsys):
    spec = tmp_spec(tiny_bert())        # default variants: onnx_int8
    out = tmp_path / "out"
    assert main(["build", str(spec), "-o", str(out), "-q", "--no-parity", "--variants", "onnx_fp16,tflite_fp16"]) == 0
    files = {p.name for p in out.iterdir()}
    assert {"model.optimized.fp16.onnx", "model.fp16.tflite"} <= files and "model.optimized.int8.onnx" not in files
    assert json.loads((out / "spec.json").read_text())["export"]["variants"] == ["onnx_fp16", "tflite_fp16"]
    assert main(["build", str(spec), "-o", str(out), "-q", "--force", "--no-parity", "--no-tflite",
                 "--variants", "none"]) == 0
    assert not any(".int8." in p.name or ".fp16." in p.name for p in out.iterdir())
    # a tolerance of a backend the replacing variants no longer build leaves OUT/spec.json (which could not be
    # read back: a tolerance of an unbuilt backend is a problem of the spec)
    from bertc.spec import load_spec

    packed = tiny_bert(export={"variants": ["onnx_packed"]},
                       parity={"backends": {"onnx_packed_cpu": {"atol": 1e-3}, "onnx_cpu": {"atol": 1e-3}}})
    assert main(["build", str(tmp_spec(packed, "packed.json")), "-o", str(out), "-q", "--force", "--no-parity",
                 "--no-tflite", "--variants", "none"]) == 0
    written = load_spec(out / "spec.json")
    assert set(written.parity.backends) == {"onnx_cpu"} and written.export.variants == []


def test_options_that_leave_an_artifact_out_are_recorded_and_contradictions_refused(tmp_spec, tmp_path, capsys):
    """``--variants tflite_int8 --no-tflite`` built no TFLite, exit 0, and OUT/spec.json listed the variant with
    ``tflite: true`` (built again from OUT/spec.json: another set of files): the contradiction is refused before
    anything is written, and --no-tflite / --no-optimize are recorded as the other options are."""
    from bertc.spec import load_spec

    spec = tmp_spec(tiny_bert(parity={"backends": {"tflite": {"atol": 1e-3}, "onnx_optimized_cpu": {"atol": 1e-3}}}))
    no_tflite = tmp_spec(tiny_bert(export={"tflite": False}), "no_tflite.json")
    out = tmp_path / "out"
    for path, args, why in ((spec, ["--variants", "tflite_int8", "--no-tflite"], "--no-tflite"),
                            (spec, ["--variants", "onnx_int8", "--no-optimize"], "--no-optimize"),
                            (spec, ["--no-onnx", "--variants", "onnx_fp16"], "--no-onnx"),
                            (spec, ["--no-export", "--variants", "tflite_fp16"], "--no-export"),
                            (no_tflite, ["--variants", "tflite_int8"], "the spec's export.tflite false")):
        assert main(["build", str(path), "-o", str(out), "-q", *args]) == EXIT_BAD_SPEC
        err = capsys.readouterr().err
        name = args[args.index("--variants") + 1]
        assert f"--variants {name}: {why} leaves no" in err, err
        assert not out.exists()
    assert main(["build", str(spec), "-o", str(out), "-q", "--no-parity", "--no-tflite"]) == 0
    written = load_spec(out / "spec.json")
    assert written.export.tflite is False and written.export.optimized is True
    assert "tflite" not in written.parity.backends    # (a tolerance of what it no longer builds: not a valid spec)
    # no ONNX export: no optimized artifact either, and OUT/spec.json says both
    assert main(["build", str(spec), "-o", str(out), "-q", "--force", "--no-parity", "--no-onnx", "--no-tflite"]) == 0
    written = load_spec(out / "spec.json")
    assert (written.export.onnx, written.export.optimized, written.export.tflite) == (False, False, False)
    assert not written.parity.backends



def test_a_spec_naming_a_variant_its_own_export_leaves_out_is_refused(tmp_spec, tmp_path, capsys):
    """A tester writing specs from the README: ``export.tflite: false`` with ``variants: ["tflite_int8"]`` (or
    ``optimized: false`` with an ONNX variant) validated and built, exit 0, with no such artifact and no word of it,
    where ``--variants`` naming it is refused. A variant left out by a flag for this build leaves OUT/spec.json,
    which builds again."""
    from bertc.spec import load_spec

    out = tmp_path / "out"
    for export, where, message in (
            ({"tflite": False, "variants": ["onnx_int8", "tflite_int8"]}, "$.export.variants[1]",
             '"tflite_int8": export.tflite false leaves no TFLite artifact'),
            ({"optimized": False, "variants": ["onnx_fp16"]}, "$.export.variants[0]",
             '"onnx_fp16": export.optimized false leaves no optimized ONNX artifact')):
        path = tmp_spec(tiny_bert(export=export))
        for command in (["validate", str(path)], ["build", str(path), "-o", str(out), "-q"]):
            assert main(command) == EXIT_BAD_SPEC
            err = capsys.readouterr().err
            assert f"{where}: {message}" in err and "drop one of them" in err, err
            assert not out.exists()
    # the default variants are left out quietly (OUT/spec.json names none); export.onnx false leaves out model.onnx
    # alone (the variants are the optimized artifact's); --variants replaces the spec's list (an earlier bertc's
    # OUT/spec.json may hold such a one)
    assert main(["validate", str(tmp_spec(tiny_bert(export={"optimized": False})))]) == 0
    assert main(["validate", str(tmp_spec(tiny_bert(export={"onnx": False, "variants": ["onnx_packed"]})))]) == 0
    old = tmp_spec(tiny_bert(export={"tflite": False, "variants": ["tflite_int8"]}), "old.json")
    assert main(["build", str(old), "-o", str(out), "-q", "--no-parity", "--variants", "onnx_int8"]) == 0
    shutil.rmtree(out)
    named = tmp_spec(tiny_bert(export={"variants": ["onnx_int8", "tflite_int8"]}), "named.json")
    assert main(["build", str(named), "-o", str(out), "-q", "--no-parity", "--no-tflite"]) == 0
    written = load_spec(out / "spec.json")
    assert written.export.tflite is False and written.export.variants == ["onnx_int8"]
    assert main(["build", str(out / "spec.json"), "-o", str(tmp_path / "again"), "-q", "--no-parity"]) == 0

def test_unknown_variant_exits_2_before_anything_is_written(tmp_spec, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", str(out), "--variants", "onnx_int8,onnx_int4"]) \
        == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert "unknown variant(s) 'onnx_int4'; known: onnx_int8, onnx_fp16, tflite_int8, tflite_fp16" in err
    assert "Traceback" not in err and not out.exists()


def test_internal_error_has_its_own_exit_code_and_no_traceback(tmp_spec, tmp_path, monkeypatch, capsys):
    from bertc.errors import EXIT_INTERNAL

    def bug(*a, **k):
        raise RuntimeError("boom in a stage")

    monkeypatch.setattr("bertc.check.run_checks", bug)
    monkeypatch.delenv("BERTC_TRACEBACK", raising=False)
    monkeypatch.delenv("BERTC_DEBUG", raising=False)
    spec, out = tmp_spec(tiny_bert()), tmp_path / "out"
    assert main(["build", str(spec), "-o", str(out), "-q", "--no-export"]) == EXIT_INTERNAL
    assert EXIT_INTERNAL not in (EXIT_CHECK_FAILED, EXIT_OUTPUT)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("internal error")]
    assert lines == ["internal error (a bug in bertc, please report it): RuntimeError: boom in a stage; "
                     "set BERTC_TRACEBACK=1 to print the traceback"]
    assert "Traceback" not in err and not out.exists()
    monkeypatch.setenv("BERTC_TRACEBACK", "1")
    assert main(["build", str(spec), "-o", str(out), "-q", "--no-export"]) == EXIT_INTERNAL
    assert "Traceback" in capsys.readouterr().err


def test_the_native_log_is_kept_only_when_an_unexpected_error_wrote_to_it(monkeypatch, capsys):
    """The native libraries' stderr goes to /tmp/bertc-native-PID.log while a command runs: it is deleted after a
    clean end, a bertc error, an exit, Ctrl-C, or an internal error that left it empty (each of those used to leave
    an empty file behind but the first two), and kept and named after an internal error with something in it."""
    import os
    import tempfile
    from pathlib import Path

    from bertc import cli
    from bertc.errors import InputError

    monkeypatch.delenv("BERTC_DEBUG", raising=False)
    log = Path(tempfile.gettempdir()) / f"bertc-native-{os.getpid()}.log"
    with cli._native_log():
        os.write(2, b"start-up chatter\n")
    assert not log.exists()
    for exc in (InputError("bad"), RuntimeError("bug"), SystemExit(3), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with cli._native_log():
                raise exc
        assert not log.exists(), exc
    with pytest.raises(RuntimeError):
        with cli._native_log():
            os.write(2, b"what the native library said\n")
            raise RuntimeError("bug")
    assert log.read_text() == "what the native library said\n" and f"saved to {log}" in capsys.readouterr().err
    log.unlink()


def test_memory_preflight_refusal_has_its_own_exit_code(tmp_spec, tmp_path, capsys):
    from bertc.errors import EXIT_MEMORY, MemoryPreflightError

    assert MemoryPreflightError.exit_code == EXIT_MEMORY and EXIT_MEMORY != EXIT_OUTPUT
    out = tmp_path / "out"
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", str(out), "-q", "--memory-limit", "1M"]) == EXIT_MEMORY
    err = capsys.readouterr().err
    assert "this build needs about" in err and "Traceback" not in err and not out.exists()


def test_exit_codes_are_distinct_and_documented():
    import bertc.errors as errors

    codes = {name: value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    assert len(set(codes.values())) == len(codes)
    for name, value in codes.items():
        assert name in errors.__doc__ or value == errors.EXIT_INTERRUPTED, name
        assert f"| {value} |" in open(__import__("pathlib").Path(errors.__file__).parent.parent / "README.md").read()


def test_a_skipped_optimized_artifact_is_a_recorded_skip_with_its_reason():
    from bertc.optimize.onnx_artifacts import OptimizeResult, Skip
    from bertc.report import fusion_summary

    result = OptimizeResult(skip=Skip("onnx_optimized", "no optimized ONNX artifact: head ('mine') has no lowering",
                                      ("head ('mine')",)))
    assert result.artifacts == {} and result.passed and result.mismatch is None
    section = result.section()
    assert section == {"lowered": False, "not_lowered": ["head ('mine')"],
                       "skipped": "no optimized ONNX artifact: head ('mine') has no lowering"}
    assert fusion_summary(section) == section["skipped"]


def test_build_records_the_skip_in_report_and_summary(tmp_spec, tmp_path, monkeypatch):
    """No onnxruntime: the optimize stage records a skip with its reason; the build still passes."""
    import importlib
    import types

    import bertc.optimize.onnx_artifacts as oa

    real = importlib.util.find_spec
    fake_util = types.SimpleNamespace(find_spec=lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    monkeypatch.setattr(oa, "importlib", types.SimpleNamespace(util=fake_util))
    d = tiny_bert()
    d["export"] = {"tflite": False}
    out = tmp_path / "out"
    assert main(["build", str(tmp_spec(d)), "-o", str(out), "-q", "--no-parity"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed" and set(report["artifacts"]) == {"keras", "onnx"}
    assert report["fusion"] == {"lowered": False, "not_lowered": [],
                                "skipped": "no optimized ONNX artifact: onnxruntime is not installed "
                                           "(pip install 'onnxruntime<2,>=1.21')"}
    assert "onnxruntime is not installed" in (out / "summary.txt").read_text()


def test_status_line_fits_the_terminal_and_is_cleared(monkeypatch, capsys):
    """A long stage's status line (bertc build on a terminal): cut to the terminal's width, overwritten in place,
    cleared before the next line; nothing at all when stderr is not a terminal."""
    from bertc.cli import _StatusLine

    monkeypatch.setenv("COLUMNS", "48")
    monkeypatch.setenv("TERM", "xterm")
    line = _StatusLine(True)
    line("optimize onnx", 12.4, "int8 tuning: each MatMul alone in fp32, 23/48")
    line.clear()
    line.clear()   # once is enough
    err = capsys.readouterr().err
    shown = err.split("\r\x1b[K")
    full = "  ..  optimize onnx         12s  int8 tuning: each MatMul alone in fp32, 23/48"
    assert shown[0] == "" and shown[1] == full[:44] + "..." and shown[2:] == [""]   # under the 48 columns
    quiet = _StatusLine(False)
    quiet("optimize onnx", 1.0, "anything")
    quiet.clear()
    assert capsys.readouterr().err == ""
    # TERM=dumb has no erase-line code (it was written all the same; found by a tester): spaces overwrite the line
    monkeypatch.setenv("TERM", "dumb")
    dumb = _StatusLine(True)
    dumb("optimize onnx", 12.4, "int8 tuning")
    dumb.clear()
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert err == "\r" + "  ..  optimize onnx         12s  int8 tuning".ljust(47) + "\r" + " " * 47 + "\r"


def test_a_missing_dependency_is_named_and_any_other_missing_module_is_a_bug(monkeypatch, capsys):
    import bertc.registry as registry

    def missing(name):
        def ensure():
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return ensure

    monkeypatch.setattr(registry, "ensure_components", missing("tf2onnx"))
    assert main(["list"]) == EXIT_MISSING_LIBRARY
    err = capsys.readouterr().err
    assert "error: bertc list needs tf2onnx, which is not installed" in err and "pip install" in err
    monkeypatch.setattr(registry, "ensure_components", missing("google.protobuf.nothing"))
    assert main(["list"]) == EXIT_INTERNAL
    assert "internal error (a bug in bertc" in capsys.readouterr().err


def test_python_dash_m_bertc_is_the_bertc_command(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "bertc", "validate", str(ROOT / "specs" / "rezero.json")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith("ok  "), run.stderr[-2000:]
    missing = subprocess.run([sys.executable, "-m", "bertc", "validate", str(tmp_path / "nope.json")],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert missing.returncode == 2 and "file not found" in missing.stderr


def test_an_unwritable_native_log_leaves_stderr_as_it_is(tmp_path, monkeypatch):
    """The native libraries' log: one per user, and one that cannot be opened (another user's file, a read-only
    temporary directory) leaves fd 2 unredirected instead of failing the command (PermissionError, exit 70)."""
    import os

    from bertc.quiet import import_log, native_stderr_to

    assert str(os.getuid()) in import_log().name
    monkeypatch.delenv("BERTC_DEBUG", raising=False)
    before = os.fstat(2)
    with native_stderr_to(tmp_path / "missing-dir" / "x.log"):   # cannot be opened
        assert os.fstat(2).st_ino == before.st_ino
    log = tmp_path / "native.log"
    with native_stderr_to(log):
        assert os.fstat(2).st_ino == log.stat().st_ino
    assert os.fstat(2).st_ino == before.st_ino
