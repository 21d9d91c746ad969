"""What the command line says: one ``error: ...`` line per error (usage errors too), the exit codes of the README's
table, and the README's lists of options and names kept equal to the code's. Fast: no model is built."""
import json
import shutil
import os
import sys
from pathlib import Path

import pytest

import bertc.errors as errors
from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


# --- usage errors: one line, as every other error ------------------------------------------------------------------

@pytest.mark.parametrize("argv, command, message", [
    (["build"], "bertc build", "Missing argument 'SPEC'"),
    (["build", "spec.json"], "bertc build", "Missing option '-o' / '--out'"),
    (["build", "spec.json", "-o", "out", "--variants", "onnx_int9"], "bertc build",
     "Invalid value for --variants: unknown variant(s) 'onnx_int9'"),
    (["build", "spec.json", "-o"], "bertc build", "Option '-o' requires an argument"),
    (["build", "--nope"], "bertc build", "No such option"),   # then '--nope' (click 8.4), or: --nope (8.2, 8.3)
    (["nosuch"], "bertc", "No such command 'nosuch'"),
])
def test_a_usage_error_is_one_error_line_naming_the_commands_help(argv, command, message, capsys):
    """Click's Usage / Try / Error block was three lines and a blank one, where every other error is one line."""
    assert main(argv) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.endswith(f" (see '{command} --help')\n"), err
    assert all(a in err for a in argv if a.startswith("--n"))   # the option it does not know, named
    assert err.count("\n") == 1 and "Usage:" not in err and "Try " not in err


def test_help_and_no_command_still_print_the_help(capsys):
    assert main(["build", "--help"]) == 0
    assert capsys.readouterr().out.startswith("Usage: bertc build [OPTIONS] SPEC")
    assert main([]) == EXIT_BAD_SPEC   # `bertc` alone: the commands, on stderr (as Click does)
    err = capsys.readouterr().err
    assert err.startswith("Usage: bertc [OPTIONS] COMMAND") and "Commands:" in err and "error:" not in err


# --- exit codes ----------------------------------------------------------------------------------------------------

def test_sigterm_has_its_row_in_both_exit_code_tables():
    """bertc run exits 143 on SIGTERM; neither the README's table nor bertc/errors.py's ("the same table") had it."""
    assert errors.EXIT_TERMINATED == 143
    assert "143   ``EXIT_TERMINATED``" in errors.__doc__ and "nothing was written" in errors.__doc__
    assert "| 143 | `bertc run` ended by SIGTERM" in README and "nothing was written |" in README


# --- a missing optional library: exit 7, named with the extra that installs it, before any work -------------------

@pytest.mark.parametrize("missing, argv, says", [
    ("pyarrow", ["docs.parquet", "-o", "emb.npy"], "a Parquet input (docs.parquet) needs pyarrow"),
    ("pyarrow", ["docs.txt", "-o", "emb.parquet"], "a Parquet result (emb.parquet) needs pyarrow"),
    ("ray", ["docs.txt", "-o", "emb.npy", "--ray"], "--ray needs ray (Ray Data)"),
])
def test_bertc_run_without_an_optional_library_exits_7_before_any_work(missing, argv, says, tmp_path, monkeypatch,
                                                                      capsys):
    """They were exit 2 (InputError), after the run's first line ("bertc run OUT: embedding results from ...")."""
    from bertc.requirements import pip_install

    extra = {"pyarrow": "parquet", "ray": "ray"}[missing]
    monkeypatch.setitem(sys.modules, missing, None)   # `import pyarrow` raises ImportError, find_spec says None
    monkeypatch.chdir(tmp_path)
    assert main(["run", "no-build-needed", *argv]) == errors.EXIT_MISSING_LIBRARY   # checked before OUT is read
    err = capsys.readouterr().err
    assert err == f"error: {says}, which is not installed: {pip_install(extra)}\n"


def test_a_missing_tokenizers_library_is_exit_7_for_bertc_run_and_build_calibration(tmp_path, monkeypatch):
    """Runtime turned text.py's MissingLibrary into an InputError (exit 2), as did --calibration (CalibrationError)."""
    from types import SimpleNamespace

    from bertc.calibration import real_text_cases
    from bertc.errors import MissingLibrary
    from bertc.runtime import Runtime
    from bertc.run_ray import ray_init

    monkeypatch.setitem(sys.modules, "tokenizers", None)
    (tmp_path / "tokenizer.json").write_text("{}")   # a build that bundles a tokenizer
    runtime = Runtime.__new__(Runtime)
    runtime.out, runtime.max_len = tmp_path, 8
    with pytest.raises(MissingLibrary, match=r"tokenizers .*pip install 'tokenizers<1,>=0.20'$"):
        runtime._tokenizer_json()
    (tmp_path / "text.txt").write_text("a sentence\n")
    with pytest.raises(MissingLibrary, match=r"pip install 'tokenizers<1,>=0.20'$"):
        real_text_cases(SimpleNamespace(encoder=SimpleNamespace(max_sequence_length=8)), tmp_path,
                        tmp_path / "text.txt")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingLibrary, match=r"--ray needs ray .*pip install 'ray\[data\]<3,>=2.40' 'pyarrow>=16' 'tokenizers<1,>=0.20'$"):
        ray_init(None)


# --- a failed build: its error line names where the report went ----------------------------------------------------

@pytest.mark.parametrize("quiet", [["-q"], []])
def test_a_failed_builds_error_line_names_the_folder_of_its_report(quiet, tmp_path, monkeypatch, capsys):
    """With -q the line was only `error: parity failed (2 problem(s)):`, not where the report went (here o2.failed-2,
    o2.failed holding the user's files)."""
    import bertc.pipeline as pipeline
    from bertc.errors import ParityError

    kept = tmp_path / "o2.failed-2"
    kept.mkdir()
    (kept / "summary.txt").write_text("the summary\n")

    def failing(spec, opts, hook=None, status=None):
        exc = ParityError("parity failed (2 problem(s)):\n- onnx_cpu / logits: a\n- tflite / logits: b")
        exc.kept_in, exc.kept_instead_of = kept, tmp_path / "o2.failed"
        raise exc

    monkeypatch.setattr(pipeline, "build", failing)
    monkeypatch.chdir(tmp_path)
    assert main(["build", "spec.json", "-o", "o2", *quiet]) == errors.EXIT_PARITY_FAILED
    err = capsys.readouterr().err
    assert err.endswith("error: parity failed (2 problem(s)); report kept in o2.failed-2/:\n"
                        "- onnx_cpu / logits: a\n- tflite / logits: b\n")
    assert ("the summary" in err) is not bool(quiet)


# --- figures beside their criteria: a miss never reads as a pass ----------------------------------------------------

def test_a_dropped_variants_best_figures_show_the_digits_of_the_miss():
    """summary.txt said "best reached: sentence_embedding: min cosine 1.0000" for a miss (0.999996) of 0.9999999, and
    the problem line "min cosine 0.999996 < 1"."""
    from bertc.optimize.int8_tuning import Measurement
    from bertc.parity import OutputParity, _pct, criterion_text

    embedding = OutputParity("onnx_int8_cpu", "sentence_embedding", precision="int8", criterion="task",
                             required_cosine=0.9999999, min_cosine=0.999996, min_cosine_case="row 0",
                             required_rank_agreement=0.95, rank_agreement=0.999989, rank_agreement_case="batch")
    logits = OutputParity("onnx_int8_cpu", "logits", precision="int8", criterion="task",
                          required_argmax_agreement=0.99, argmax_agreement=0.98999)
    worst = Measurement([embedding, logits], target={}).worst()
    assert worst == ("sentence_embedding: min cosine 0.999996 (row 0); sentence_embedding: rank agreement 1.0000 "
                     "(batch); logits: argmax agreement 98.999%")
    assert criterion_text(0.9999999) == "0.9999999" and criterion_text(0.99) == "0.99"
    assert _pct(0.975) == "97.5%" and _pct(0.98999, 0.99) == "98.999%" and _pct(1.0) == "100%"


def test_a_csv_result_holds_every_field_of_a_classifier_and_a_multiple_choice_result(tmp_path):
    """CSV left out `scores` (label,label_id,score), which the README lists among a classifier's results and JSONL
    and Parquet hold; a list goes in as its JSON text, as a kept array does."""
    import csv

    from bertc import run_io

    rows = {"classification": {"label": "POS", "label_id": 1, "score": 0.75, "scores": [0.25, 0.75]},
            "choice": {"choice": 0, "answer": "a cat", "score": 0.5, "scores": [0.5, 0.375, 0.125]}}
    for kind, row in rows.items():
        path = tmp_path / f"{kind}.csv"
        with run_io.atomic_result(path, "csv", kind) as writer:
            writer.write([row])
        with open(path, newline="") as f:
            written = list(csv.DictReader(f))
        assert list(written[0]) == list(run_io.RESULT_FIELDS[kind]) == list(row)
        assert json.loads(written[0]["scores"]) == row["scores"] and written[0]["score"] == str(row["score"])


# --- the README's and --help's lists of options and names are the code's -------------------------------------------

def _readme_part(start: str, end: str) -> str:
    begin = README.index(start)
    return README[begin:README.index(end, begin + len(start))]


@pytest.mark.parametrize("command, start, end", [
    ("build", "Options: `--force`", "\n## "),
    ("parity", "- `bertc parity OUT", "\n- `"),
    ("bench", "- `bertc bench OUT", "\n- `"),
])
def test_the_readme_names_every_option_of_the_command(command, start, end):
    """The README's `bertc build` options lacked --calibration and --plugin, `bertc parity` its --json."""
    from bertc.cli import cli

    text = _readme_part(start, end)
    options = [o for p in cli.commands[command].params for o in p.opts
               if o.startswith("--") and o not in ("--help", "--out", "--output")]   # -o OUT: the synopsis
    assert [o for o in options if not any(f"{o}{after}" in text for after in " `],|")] == []


def test_every_export_variant_is_in_build_help_and_readme(capsys):
    """--variants' help and the README named four of the seven variants it accepts."""
    from bertc.names import EXPORT_VARIANTS
    from bertc.spec import ExportSpec

    assert set(EXPORT_VARIANTS) == set(ExportSpec.model_json_schema()["properties"]["variants"]["items"]["enum"])
    assert main(["build", "--help"]) == 0
    assert ", ".join(EXPORT_VARIANTS) in " ".join(capsys.readouterr().out.split())
    options = _readme_part("Options: `--force`", "\n## ")
    assert [v for v in EXPORT_VARIANTS if f"`{v}`" not in options] == []


def test_doc_stride_help_gives_its_real_default(capsys):
    assert main(["run", "--help"]) == 0
    assert "[default: 128, or half a window where that is less" in " ".join(capsys.readouterr().out.split())


def test_the_spec_reference_lists_every_registered_component():
    """The README's spec reference lacked the ModernBERT encoder, block and embedding, windowed and disentangled
    attention, the glu feedforward and the masked_lm head; its table is now held to the registries (built-ins)."""
    from bertc.registry import ALL

    table = _readme_part("| kind | names |\n", "\n\n").splitlines()[2:]
    listed = {row.split("|")[1].strip(): row.split("|")[2].strip() for row in table}
    registered = {r.kind: ", ".join(f"`{e.name}`" for e in r.entries() if e.component.__module__.startswith("bertc."))
                  for r in ALL}
    assert listed == registered
    prose = _readme_part("Encoders: `bert`", "\n\n")   # each one is described in the text above the table too
    names = [e.name for r in ALL for e in r.entries() if e.component.__module__.startswith("bertc.")]
    assert [n for n in names if f"`{n}`" not in prose] == []


def test_the_parity_backend_names_are_the_codes():
    """The README named 11 of the 17 backend names (no onnx_fp16_cpu, onnx_packed_fp16_cpu, onnx_packed_cuda, ...)."""
    import re

    from bertc.spec import BACKENDS

    text = _readme_part("Backends are named after the artifact", "A padding-free artifact")
    assert set(re.findall(r"`((?:onnx|tflite)\w*)`", text)) == set(BACKENDS)


def test_the_install_advice_names_the_extras_libraries_as_pyproject_declares_them(monkeypatch):
    """In the run-only environment (bertc installed --no-deps), "pip install 'bertc[parquet]'" pulled in every build
    library (TensorFlow and the rest: 229 MB -> 2.0 GB): the advice installs the extra's own libraries, as
    pyproject.toml declares them, with or without bertc's metadata."""
    import tomllib

    from packaging.requirements import Requirement

    from bertc import requirements

    declared = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())[
        "project"]["optional-dependencies"]

    def parsed(command: str) -> set:
        import shlex

        assert command.startswith("pip install ")
        return {str(Requirement(p)) for p in shlex.split(command)[2:]}

    for extra, fallback in requirements.DECLARED.items():
        want = {str(Requirement(p)) for p in declared[extra]}
        assert {str(Requirement(p)) for p in fallback} == want, extra
        assert parsed(requirements.pip_install(extra)) == want, extra
        monkeypatch.setattr(requirements, "_installed_extras", lambda: {})   # a source tree without metadata
        assert parsed(requirements.pip_install(extra)) == want, extra
        monkeypatch.undo()
    assert "bertc[" not in requirements.pip_install("parquet")
    core = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    assert {str(Requirement(p)) for p in requirements.DECLARED_CORE} == {str(Requirement(p)) for p in core["dependencies"]}
    assert {Requirement(p).name for p in core["dependencies"]} == set(requirements.CORE)


def test_a_missing_build_library_is_named_with_every_build_library_missing_here(monkeypatch):
    """In the run-only environment, bertc build said "needs pydantic ... or pip install pydantic", and installing it
    moved the error to the next library: the line gives one command for every one of bertc's own dependencies that is
    missing, and an extra's libraries alone for an extra's."""
    from bertc.cli import missing_library_line
    from bertc.requirements import _installed_core

    for module in ("tf2onnx", "pydantic"):
        monkeypatch.setitem(sys.modules, module, None)   # find_spec raises ValueError: not importable
    _installed_core.cache_clear()
    line = missing_library_line(ModuleNotFoundError("No module named 'pydantic'", name="pydantic"), ["build", "s.json"])
    # every one missing is named (a tester: the run-only environment lacks seven; only the first was named)
    assert line.startswith("error: bertc build needs pydantic and tf2onnx, which are not installed in this environment (")
    how = line.split("): ", 1)[1].split(". Running a build")[0]
    assert how.startswith("pip install ") and "'pydantic<3,>=2.6'" in how and "'tf2onnx<1.18,>=1.17'" in how
    assert "tensorflow" not in how and "bertc" not in how
    line = missing_library_line(ModuleNotFoundError("No module named 'pyarrow'", name="pyarrow"), ["run"])
    assert "pip install 'pyarrow>=16'. " in line and "bertc[" not in line
    assert missing_library_line(ModuleNotFoundError("x", name="somethingelse"), ["build"]) is None


def test_an_import_error_that_a_ctrl_c_made_is_told_from_a_missing_onnxruntime(monkeypatch):
    """A reviewer: a Ctrl-C 10-50 ms into ONNX Runtime's import is an ImportError ('initialization failed'), which
    backends.onnx_providers() took for 'not installed': bertc parity and build --no-optimize ran on and passed with
    every ONNX backend skipped. An import that fails once and then succeeds was the Ctrl-C's."""
    import builtins

    from bertc.backends import onnx_providers
    from bertc.requirements import import_onnxruntime

    real_import = builtins.__import__
    failures = []

    def flaky(name, *args, **kwargs):
        if name == "onnxruntime" and failures:
            raise failures.pop(0)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", flaky)
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    failures[:] = [ImportError("initialization failed")]   # the Ctrl-C's, then a good import
    with pytest.raises(KeyboardInterrupt):
        onnx_providers()
    failures[:] = [ImportError("broken install"), ImportError("broken install")]   # fails every time: not there
    assert onnx_providers() == []
    failures[:] = [ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")]
    with pytest.raises(ModuleNotFoundError):
        import_onnxruntime()
    assert import_onnxruntime().__name__ == "onnxruntime"


def test_a_command_ended_by_what_a_ctrl_c_became_is_interrupted(monkeypatch, capsys):
    """Whatever a noted Ctrl-C became on its way out (an ImportError from an extension's init), the command ends
    as interrupted (130), not as a missing library or an internal error."""
    import signal

    import bertc.cli as cli

    def list_then_ctrl_c(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))
        except KeyboardInterrupt:
            raise ImportError("initialization failed") from None

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        monkeypatch.setattr(cli, "_import_quietly", list_then_ctrl_c)
        assert cli.main(["list"]) == 130
        assert capsys.readouterr().err == "interrupted; nothing was written\n"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        monkeypatch.undo()
        assert cli.main(["list"]) == 0   # and no Ctrl-C: as before
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_failure_while_stderr_is_redirected_puts_fd_2_back(tmp_path, monkeypatch):
    """native_stderr_to redirected fd 2 to the import log, then opened Python's stderr anew outside its try: an
    exception there (an EncodingWarning raised under -W error) left fd 2 on the log, and the command ended with
    exit 70 and no message on the console (found by a tester)."""
    from bertc import quiet

    before = os.fstat(2)

    def failing_fdopen(*args, **kwargs):
        raise EncodingWarning("'encoding' argument not specified")

    monkeypatch.setattr(quiet.os, "fdopen", failing_fdopen)
    monkeypatch.setattr(sys, "stderr", sys.__stderr__)   # a stderr that is fd 2 (the CLI's): it is opened anew
    with pytest.raises(EncodingWarning):
        with quiet.native_stderr_to(tmp_path / "import.log"):
            pass
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


def test_the_cli_runs_under_warn_default_encoding_as_errors(tmp_path):
    """python -X warn_default_encoding -W error: matplotlib's and TensorFlow's open() without an encoding on import
    ended every command with exit 70 ("internal error"), and bertc's own files were opened without one too."""
    import subprocess

    from conftest import ROOT, tiny_bert

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_bert()), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args in (["validate", str(spec)], ["schema", "-o", str(tmp_path / "schema.json")]):
        proc = subprocess.run([sys.executable, "-X", "warn_default_encoding", "-W", "error", "-m", "bertc", *args],
                              env=env, capture_output=True, text=True, encoding="utf-8")
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_import_of_the_current_folder_names_it(tmp_path, monkeypatch):
    """`bertc import .` named the spec "imported" and its description said "at /" (Path('.').name is ''), so the
    same checkpoint imported as `.` and by its name gave specs, and ONNX graph names, that differ (found by a
    tester)."""
    import shutil

    from conftest import ROOT

    ckpt = tmp_path / "my_model"
    shutil.copytree(ROOT / "tests" / "fixtures" / "hf" / "bert_seq_cls", ckpt)
    monkeypatch.chdir(ckpt)
    assert main(["import", ".", "-o", str(tmp_path / "dot.json")]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["import", "my_model", "-o", str(tmp_path / "named.json")]) == 0
    dot, named = (json.loads((tmp_path / n).read_text(encoding="utf-8")) for n in ("dot.json", "named.json"))
    assert dot["name"] == named["name"] == "my_model"
    assert dot["description"] == named["description"] and " at my_model/ " in dot["description"]


def test_import_to_standard_output_and_build_into_it(tmp_path, monkeypatch, capsys):
    """`bertc import SRC -o -` wrote a file named "-" (exit 0, nothing printed) where "-o -" is standard output for
    run and schema; `bertc build SPEC -o -` made a folder named "-" (found by a tester). import prints the spec, its
    weights absolute; build refuses."""
    from conftest import ROOT

    monkeypatch.chdir(tmp_path)
    source = ROOT / "tests" / "fixtures" / "hf" / "bert_seq_cls"
    assert main(["import", str(source), "-o", "-"]) == 0
    captured = capsys.readouterr()
    spec = json.loads(captured.out)
    assert spec["name"] == "bert_seq_cls" and spec["weights"] == str(source.resolve())
    assert captured.err.startswith("wrote the spec to standard output: bert_seq_cls")
    (tmp_path / "spec.json").write_text(captured.out, encoding="utf-8")
    assert main(["build", "spec.json", "-o", "-", "-q"]) == 2
    assert "- (standard output) cannot hold a build's folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.json"]


def test_the_native_log_starts_afresh_past_its_limit(tmp_path):
    """Every command appended to /tmp/bertc-import-UID.log and nothing ever trimmed it (found by a tester)."""
    from bertc import quiet

    log = tmp_path / "import.log"
    log.write_bytes(b"x" * (quiet.LOG_LIMIT + 1))
    with quiet.native_stderr_to(log):
        os.write(2, b"native line\n")
    assert log.read_bytes() == b"native line\n"
    with quiet.native_stderr_to(log):
        os.write(2, b"next\n")
    assert log.read_bytes() == b"native line\nnext\n"


def test_a_homeless_process_keeps_keras_and_matplotlib_config_in_the_temp_folder(tmp_path, monkeypatch):
    """Under a uid with no home, Keras made a folder named "~" in the working directory (expanduser("~") is "~"),
    and with a home it cannot write Matplotlib printed two warnings on every build (found by a tester)."""
    import bertc

    for home in ("~", str(tmp_path / "missing")):
        monkeypatch.delenv("KERAS_HOME", raising=False)
        monkeypatch.delenv("MPLCONFIGDIR", raising=False)
        monkeypatch.setattr(os.path, "expanduser", lambda p, home=home: home if p == "~" else p)
        bertc._homeless_config()
        assert os.environ["KERAS_HOME"].startswith(str(Path(__import__("tempfile").gettempdir()) / "bertc-home-"))
        assert os.environ["MPLCONFIGDIR"].endswith("matplotlib")
    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setattr(os.path, "expanduser", lambda p: str(tmp_path) if p == "~" else p)
    bertc._homeless_config()   # a home it can write: left to the libraries
    assert "KERAS_HOME" not in os.environ


def test_a_build_with_a_tokenizer_needs_the_tokenizers_library_before_any_export(tmp_path, monkeypatch, capsys):
    """A tester: without the tokenizers library a checkpoint's build that bundles its tokenizer exited 0, its int8
    tuned and parity checked on random ids alone (one line of its summary said so), where --calibration and bertc
    parity are exit 7. It is exit 7 too, before any export."""
    from bertc.errors import EXIT_MISSING_LIBRARY

    fixture = Path(__file__).resolve().parent / "fixtures" / "hf" / "bert_model"
    assert main(["import", str(fixture), "-o", str(tmp_path / "s.json")]) == 0
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    capsys.readouterr()
    assert main(["build", str(tmp_path / "s.json"), "-o", str(tmp_path / "out"), "-q"]) == EXIT_MISSING_LIBRARY
    err = capsys.readouterr().err
    assert "this build checks parity and tunes int8 on its bundled tokenizer's text: real-text inputs need the " \
           "tokenizers library: pip install" in err
    assert not (tmp_path / "out").exists()
    # a reviewer: not where the build reads no text (no parity, no int8), nor where bertc cannot read the tokenizer
    assert main(["build", str(tmp_path / "s.json"), "-o", str(tmp_path / "plain"), "-q", "--no-parity",
                 "--variants", "none", "--no-tflite"]) == 0
    assert main(["build", str(tmp_path / "s.json"), "-o", str(tmp_path / "plain2"), "-q", "--no-parity",
                 "--no-optimize", "--no-tflite"]) == 0   # (the default onnx_int8 is not made without --optimize)
    japanese = tmp_path / "jp"
    shutil.copytree(fixture, japanese)
    (japanese / "tokenizer.json").unlink()
    (japanese / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertJapaneseTokenizer"}))
    assert main(["import", str(japanese), "-o", str(tmp_path / "jp.json")]) == 0
    assert main(["build", str(tmp_path / "jp.json"), "-o", str(tmp_path / "jp_out"), "-q", "--no-tflite"]) == 0
