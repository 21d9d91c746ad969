"""How bertc behaves in the environments it is started in (a QA sweep): standard error or input closed, standard
output's reader gone, an unbounded --threads, a build judged by a diagnostic ``bertc parity --atol``."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bertc
from bertc.errors import EXIT_BROKEN_PIPE, InputError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_run import shared_builds  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _shell(command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "BERTC": f"{sys.executable} -m bertc"}
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=240)


def test_a_command_started_with_standard_error_closed_runs():
    """``bertc list 2>&-`` exited 70 with no message (the redirection of the native libraries' output flushed
    ``sys.stderr``, None there); ``bertc validate`` likewise."""
    run = _shell(f"$BERTC list 2>&-; echo rc=$?; $BERTC validate {ROOT / 'specs' / 'classifier.json'} 2>&- >/dev/null; "
                 f"echo rc=$?")
    assert run.stdout.count("rc=0") == 2 and "embedding:" in run.stdout, run.stdout


def test_a_command_whose_output_is_printed_refuses_a_closed_standard_output(tmp_path):
    """A tester: bertc schema / list / build --json with standard output closed (>&-) exited 0 having printed nothing;
    bertc run -o - says so (exit 5). They refuse before any work now; a command printing only notes still runs."""
    run = _shell(f"$BERTC list >&-; echo rc=$? >&2; $BERTC schema >&-; echo rc=$? >&2; "
                 f"$BERTC build {ROOT / 'specs' / 'classifier.json'} -o {tmp_path / 'never'} --json >&-; echo rc=$? >&2; "
                 f"$BERTC validate {ROOT / 'specs' / 'classifier.json'} >&-; echo rc=$? >&2")
    assert [line for line in run.stderr.splitlines() if line.startswith("rc=")] == ["rc=5", "rc=5", "rc=5", "rc=0"], \
        run.stderr
    for what in ("the list", "the schema", "--json's report"):
        assert f"error: {what} is printed to standard output, which is closed" in run.stderr
    assert not (tmp_path / "never").exists()


def test_standard_outputs_reader_gone_is_exit_141_in_every_command():
    """``bertc list | true`` exited 1 (Click's own handling of EPIPE), which the exit-code table gives to failed
    checks; ``bertc run -o - | head`` exits 141 (128 + SIGPIPE), as Unix tools do: every command now does."""
    run = _shell("$BERTC list | true; echo rc=${PIPESTATUS[0]}; $BERTC schema | true; echo rc=${PIPESTATUS[0]}")
    assert run.stdout.split() == [f"rc={EXIT_BROKEN_PIPE}"] * 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr


def test_reading_a_closed_standard_input_is_an_input_error(monkeypatch):
    """``bertc run OUT - -o R <&-``: internal error (exit 70) 'NoneType has no attribute buffer'."""
    from bertc import run_io

    monkeypatch.setattr(sys, "stdin", None)
    spec = run_io.input_spec("-", None, "text", None, False, None, ())
    with pytest.raises(InputError, match="standard input is closed"):
        run_io._open_binary(spec)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    return shared_builds(tmp_path_factory, ("st_bert_mean_norm",))


def test_threads_beyond_any_use_are_refused(builds):
    """``--threads 3000`` on 2 cores spent minutes creating the pool, deaf to SIGTERM (100,000: 4,921 threads and
    16 GB after 11 minutes)."""
    limit = max(64, 4 * (os.cpu_count() or 1))
    many = bertc.Runtime(builds["st_bert_mean_norm"], threads=limit + 1)   # over Ray they would be each actor's
    with pytest.raises(InputError, match=f"threads {limit + 1}: more than {limit} ONNX Runtime threads"):
        many.run(["the cat"])
    with pytest.raises(InputError, match=f"threads {limit + 1}: more than {limit} ONNX Runtime threads"):
        many.run_file(Path(__file__), Path(builds["st_bert_mean_norm"]).parent / "never.npy")
    assert bertc.Runtime(builds["st_bert_mean_norm"], threads=3, artifact="onnx").run(["the cat"]).shape[0] == 1


def test_bench_threads_beyond_any_use_are_refused(builds, capsys):
    """``bertc bench --threads 5000`` made a 5,000-thread pool per artifact (as ``bertc run`` did): refused first,
    exit 2, nothing written."""
    from bertc.cli import main

    limit = max(64, 4 * (os.cpu_count() or 1))
    out = Path(builds["st_bert_mean_norm"])
    before = sorted(p.name for p in out.iterdir())
    assert main(["bench", str(out), "--threads", str(limit + 1), "--rounds", "1"]) == 2
    assert f"threads {limit + 1}: more than {limit} ONNX Runtime threads" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.parametrize("status", ["failed", "passed"])
def test_a_build_judged_by_an_earlier_bertc_under_other_tolerances_says_how_to_judge_it_again(builds, tmp_path,
                                                                                               status):
    """An earlier bertc's ``bertc parity OUT --atol X`` put its verdict in the build's place: ``bertc run`` said
    "rebuild it" of a build it had failed (not needed), and served one it had passed under looser tolerances. Either
    way it names the override and ``bertc parity OUT``."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(builds["st_bert_mean_norm"], out)
    report = json.loads((out / "report.json").read_text())
    report["status"] = status
    report["parity"]["tolerance_override"] = {"atol": 1e-12, "rtol": None}
    (out / "report.json").write_text(json.dumps(report))
    with pytest.raises(InputError, match=rf"the build's status '{status}' is not its spec's verdict: its last parity "
                                         r"run \(--atol 1e-12, by an earlier bertc\) judged it under other tolerances "
                                         r"and put that verdict in its place; `bertc parity .*` judges it again by its "
                                         r"spec"):
        bertc.Runtime(out)


def test_a_diagnostic_tolerance_leaves_the_builds_status_either_way(builds, tmp_path, capsys):
    """``bertc parity OUT --atol 0`` failed a good build (``bertc run`` then refused it) and ``--atol 1`` passed a
    failed one (served as "passed parity"): a verdict under other tolerances is kept beside the build's."""
    import shutil

    from bertc.cli import main

    out = tmp_path / "out"
    shutil.copytree(builds["st_bert_mean_norm"], out)
    before = json.loads((out / "report.json").read_text())
    assert main(["parity", str(out), "--atol", "0", "--rtol", "0"]) == 3
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed" and report["parity"] == before["parity"]
    assert not report["parity_other_tolerances"]["passed"]
    assert bertc.Runtime(out).run(["a short text"]).shape[0] == 1   # still served
    assert "last bertc parity --atol 0 --rtol 0: failed" in (out / "summary.txt").read_text()
    capsys.readouterr()


@pytest.mark.parametrize("address, why", [
    ("ray://127.0.0.1:abc", "not a Ray Client address: the port 'abc' is not a port number"),
    ("ray://", "not a Ray Client address: no host"),
    ("ray://127.0.0.1:99999", "not a Ray Client address: the port '99999' is not a port number"),
    ("127.0.0.1:abc", "not a Ray cluster address: the port 'abc' is not a port number"),
    ("ray://[::1]:abc", "not a Ray Client address: the port 'abc' is not a port number"),   # "the port '1]'" before
])
def test_a_malformed_ray_address_is_refused_at_once(address, why):
    """``--ray ray://127.0.0.1:abc`` (or ``ray://``) waited 31 s, printed Ray's raw warning, then said "ray client
    connection timeout"; port 99999 was "Connection refused"."""
    import time

    from bertc.run_ray import _check_reachable

    start = time.perf_counter()
    with pytest.raises(InputError, match=why):
        _check_reachable(address, f"--ray {address}")
    assert time.perf_counter() - start < 1


def test_no_color_and_a_dumb_terminal_get_no_colour(monkeypatch):
    from bertc.cli import _green

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert _green("ok") != "ok"
    monkeypatch.setenv("NO_COLOR", "1")
    assert _green("ok") == "ok"
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert _green("ok") == "ok"


def test_a_build_under_pythonwarnings_error_is_not_ended_by_a_librarys_deprecation(tmp_path, tmp_spec):
    """``PYTHONWARNINGS=error bertc build``: 'internal error ... DeprecationWarning: __array__ implementation ...'
    (Keras calling numpy), exit 70."""
    spec = tmp_spec(__import__("conftest").tiny_bert())
    run = _shell(f"PYTHONWARNINGS=error $BERTC build {spec} -o {tmp_path / 'out'} -q --no-export; echo rc=$?")
    assert "rc=0" in run.stdout, run.stderr[-2000:]


def test_a_build_of_weights_in_a_non_ascii_folder_under_the_c_locale(tmp_path):
    """Under LC_ALL=C with PYTHONUTF8=0 (file names are ascii to Python, others' bytes escaped), a build of weights in
    "ckpt é" ended as exit 70 writing its summary in the locale's encoding; summary and report are UTF-8 files."""
    import shutil

    checkpoint = tmp_path / "ckpt é"
    shutil.copytree(ROOT / "tests" / "fixtures" / "hf" / "bert_seq_cls", checkpoint)
    spec, out = tmp_path / "spec.json", tmp_path / "out é"
    c = "env -u LANG -u LANGUAGE LC_ALL=C PYTHONUTF8=0 PYTHONCOERCECLOCALE=0"
    # and ONNX Runtime, TensorFlow's SavedModel and LiteRT took such names' escapes: the build failed to optimize
    # (exit 4), and parity there failed every ONNX artifact of a good build, marking it failed
    run = _shell(f"$BERTC import '{checkpoint}' -o {spec} >/dev/null; {c} $BERTC build {spec} -o '{out}' -q "
                 f"--variants ''; echo rc=$?; {c} $BERTC parity '{out}' >/dev/null; echo rc=$?")
    assert run.stdout.split() == ["rc=0", "rc=0"], run.stdout + run.stderr[-2000:]
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["status"] == "passed"
    assert "ckpt é" in (out / "summary.txt").read_text(encoding="utf-8")


def test_a_build_this_user_may_not_read_is_named_not_an_internal_error(builds, tmp_path, monkeypatch, capsys):
    """A tester (root without CAP_DAC_OVERRIDE, so that modes apply): an artifact of the build that may not be read
    was exit 70 in bertc parity and bertc bench (its checksum), a build folder that may not be searched exit 70 in
    bertc run and a raw PermissionError from Runtime. Simulated here (root reads whatever the modes say)."""
    import shutil

    import bertc.manifest as manifest
    from bertc.cli import main
    from bertc.errors import EXIT_OUTPUT

    out = tmp_path / "out"
    shutil.copytree(builds["st_bert_mean_norm"], out)
    locked = out / "model.onnx"
    real = manifest.sha256_file

    def sha256_file(path, *args, **kwargs):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(manifest, "sha256_file", sha256_file)
    assert main(["parity", str(out)]) == 0   # named among the files that are not the build's; its backend judged
    assert "internal error" not in capsys.readouterr().err
    assert json.loads((out / "report.json").read_text())["parity"]["changed_since_build"] == [
        "model.onnx (cannot be read: Permission denied)"]
    monkeypatch.undo()
    import bertc.rerun as rerun

    def unreadable_spec(out_dir, *args, **kwargs):   # any other file of the build, wherever it is read
        raise PermissionError(13, "Permission denied", str(Path(out_dir) / "spec.json"))

    monkeypatch.setattr(rerun, "rerun_parity", unreadable_spec)
    assert main(["parity", str(out)]) == EXIT_OUTPUT
    assert capsys.readouterr().err == f"error: {out / 'spec.json'}: Permission denied\n"
    monkeypatch.undo()
    is_file = Path.is_file

    def unsearchable(self):
        if self.parent == out:
            raise PermissionError(13, "Permission denied", str(self))
        return is_file(self)

    monkeypatch.setattr(Path, "is_file", unsearchable)
    with pytest.raises(InputError, match=f"{out}: cannot read the build directory: Permission denied"):
        bertc.Runtime(out)


def test_sigterm_in_bertc_parity_leaves_report_and_summary_both_new_or_both_old(builds, tmp_path, monkeypatch, capsys):
    """A tester: bertc parity had no SIGTERM handler, so one between the renames of report.json and summary.txt left
    the new verdict beside the old summary and summary.txt.PID.partial in OUT. The renames ignore signals now, and a
    SIGTERM before them unwinds: exit 143, nothing written."""
    import shutil
    import signal

    import bertc.rerun as rerun
    from bertc.cli import main

    out = tmp_path / "out"
    shutil.copytree(builds["st_bert_mean_norm"], out)
    before = {name: (out / name).read_text() for name in ("report.json", "summary.txt")}
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if str(src).endswith(".partial"):
            os.kill(os.getpid(), signal.SIGTERM)   # between the two renames

    def unhandled(signum, frame):
        raise AssertionError("SIGTERM reached no handler of bertc's")

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        monkeypatch.setattr(os, "replace", replace)
        assert main(["parity", str(out), "--atol", "0.5"]) == 0   # the signal came while signals were ignored
        monkeypatch.undo()
        report = json.loads((out / "report.json").read_text())
        assert report["parity_other_tolerances"]["tolerance_override"]["atol"] == 0.5
        assert "0.5" in (out / "summary.txt").read_text()
        assert not [p.name for p in out.iterdir() if "partial" in p.name]
        shutil.rmtree(out)
        shutil.copytree(builds["st_bert_mean_norm"], out)
        run_parity = rerun.run_parity

        def terminated_midway(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return run_parity(*args, **kwargs)

        monkeypatch.setattr(rerun, "run_parity", terminated_midway)
        assert main(["parity", str(out), "--atol", "0.5"]) == 143
        assert capsys.readouterr().err.splitlines()[-1] == "terminated; nothing was written"
        assert {name: (out / name).read_text() for name in before} == before
        assert not [p.name for p in out.iterdir() if "partial" in p.name]
        monkeypatch.undo()
        import bertc.report as report_module   # a SIGTERM once the report is replaced (a reviewer: it said
        write_report = report_module.write_report   # "nothing was written")

        def written_then_terminated(*args, **kwargs):
            write_report(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)

        monkeypatch.setattr(report_module, "write_report", written_then_terminated)
        assert main(["parity", str(out), "--atol", "0.5"]) == 143
        assert capsys.readouterr().err.splitlines()[-1] == f"terminated after {out / 'report.json'} was written"
        assert json.loads((out / "report.json").read_text())["parity_other_tolerances"]["tolerance_override"]["atol"] \
            == 0.5
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_empty_native_logs_of_killed_commands_are_removed(tmp_path, monkeypatch):
    """A tester: every SIGKILLed build or run left an empty $TMPDIR/bertc-native-PID.log that nothing removed. The
    next command removes the empty ones of dead processes; a live process's, and one with content (kept on purpose,
    named when it was kept), stay."""
    import tempfile

    from bertc.cli import _native_log

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f"bertc-native-{dead_pid}.log").write_text("")
    (tmp_path / f"bertc-native-{dead_pid + 1}0.log").write_text("kept: an internal error's output")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f"bertc-native-{live.pid}.log").write_text("")
        with _native_log():
            pass
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [f"bertc-native-{dead_pid + 1}0.log", f"bertc-native-{live.pid}.log"])
    finally:
        live.kill()
        live.wait()


def test_deprecations_of_every_library_but_bertc_are_not_errors():
    """A tester installing the lowest versions bertc allows: matplotlib < 3.10.7 (which Keras imports when it is
    installed) with pyparsing 3.3 warns of pyparsing's old names, and under PYTHONWARNINGS=error every build ended
    as exit 70 'internal error': the CLI ignored the deprecations of a list of libraries, without matplotlib."""
    import warnings

    from bertc.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["--version"]) == 0   # the CLI's filters go first
        for module in ("matplotlib._fontconfig_pattern", "pyparsing", "pydot", "keras.src.ops"):
            warnings.warn_explicit("'parseString' deprecated", DeprecationWarning, "lib.py", 1, module=module)
        with pytest.raises(DeprecationWarning):   # bertc's own are still errors there
            warnings.warn_explicit("old", DeprecationWarning, "cli.py", 1, module="bertc.cli")
