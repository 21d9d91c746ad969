"""The end of a build, where the staged build is put at OUT: what appeared at OUT meanwhile, a kill between the
swap's two renames, SIGTERM."""
import errno
import json
import os
from pathlib import Path

import pytest

import bertc.pipeline as pipeline
from bertc.cli import main
from bertc.errors import EXIT_OUTPUT, OutputError
from bertc.output import StagedOutput
from conftest import tiny_bert


def _stage(staging: Path, marker: str, status: str = "passed") -> None:
    """What a build leaves in its staging directory: its files, then report.json and summary.txt."""
    (staging / "model.onnx").write_text(marker)
    (staging / "report.json").write_text(json.dumps({"status": status, "marker": marker, "manifest": {
        "files": {"model.onnx": {"bytes": len(marker), "sha256": "-"}}}}))
    (staging / "summary.txt").write_text(marker)


def _build(path: Path, marker: str = "old") -> Path:
    path.mkdir()
    _stage(path, marker)
    return path


def _marker(path: Path) -> str:
    return json.loads((path / "report.json").read_text())["marker"]


def _names(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


# --- D4: what appears at OUT while the build runs is left alone ----------------------------------------------------

@pytest.mark.parametrize("force", [False, True])
def test_a_folder_that_appeared_at_out_meanwhile_is_left_alone(tmp_path, force):
    out = tmp_path / "out"
    with pytest.raises(OutputError) as caught:
        with StagedOutput(out, force=force) as staging:
            _stage(staging, "new")
            out.mkdir()   # the user's, while the build ran
            (out / "notes.txt").write_text("precious")
    assert _names(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "precious"
    assert "appeared while the build ran" in str(caught.value) and "out.failed/" in str(caught.value)
    assert _marker(tmp_path / "out.failed") == "new"   # the new build is kept, whole
    assert _names(tmp_path / "out.failed") == ["model.onnx", "report.json", "summary.txt"]
    assert _names(tmp_path) == ["out", "out.failed"]   # no .out.old-*, no .out.lock, no staging


def test_a_file_that_appeared_at_out_meanwhile_is_left_alone(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "out.failed").mkdir()
    (tmp_path / "out.failed" / "mine.txt").write_text("mine")   # not a build's: the new build goes to out.failed-2
    with pytest.raises(OutputError, match="appeared while the build ran.*kept in .*out.failed-2/"):
        with StagedOutput(out) as staging:
            _stage(staging, "new")
            out.write_text("mine")
    assert out.read_text() == "mine" and _marker(tmp_path / "out.failed-2") == "new"
    assert _names(tmp_path) == ["out", "out.failed", "out.failed-2"]   # the file is not hidden as .out.old-PID


def test_forced_build_leaves_alone_what_replaced_the_build_at_out_meanwhile(tmp_path):
    out = _build(tmp_path / "out")
    with pytest.raises(OutputError, match="changed while the build ran and is not a bertc build"):
        with StagedOutput(out, force=True) as staging:
            _stage(staging, "new")
            for p in out.iterdir():
                p.unlink()
            (out / "data.bin").write_text("user data")
    assert _names(out) == ["data.bin"] and _marker(tmp_path / "out.failed") == "new"
    # the kept build (it passed) is no failed build's report: a later failed build goes beside it, a later good
    # build leaves it
    (out / "data.bin").unlink()
    with pytest.raises(ZeroDivisionError):
        with StagedOutput(out, force=True) as staging:
            _stage(staging, "failed", status="failed")
            1 / 0
    assert _marker(tmp_path / "out.failed") == "new" and _marker(tmp_path / "out.failed-2") == "failed"
    os.rmdir(out)
    with StagedOutput(out) as staging:
        _stage(staging, "good")
    assert _marker(out) == "good" and _marker(tmp_path / "out.failed") == "new"
    assert not (tmp_path / "out.failed-2").exists()


def test_forced_build_checks_the_old_build_again_once_renamed_away(tmp_path, monkeypatch):
    """OUT turned into the user's data between the check at the swap and its rename: put back, left alone."""
    out = _build(tmp_path / "out")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src) == out:   # a moment before the rename
            for p in out.iterdir():
                p.unlink()
            (out / "data.bin").write_text("user data")
        return real_replace(src, dst)

    with pytest.raises(OutputError, match="not a bertc build"):
        with StagedOutput(out, force=True) as staging:
            _stage(staging, "new")
            monkeypatch.setattr(os, "replace", replace)
    monkeypatch.undo()
    assert _names(out) == ["data.bin"] and _marker(tmp_path / "out.failed") == "new"
    assert _names(tmp_path) == ["out", "out.failed"]


def test_build_without_force_keeps_a_folder_that_appeared_at_out(tmp_spec, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_report = pipeline.write_report

    def user_makes_out(folder, report):   # the build's last step, and meanwhile the user's folder at OUT
        write_report(folder, report)
        Path("out").mkdir(exist_ok=True)
        Path("out/notes.txt").write_text("precious")

    monkeypatch.setattr(pipeline, "write_report", user_makes_out)
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", "out", "-q", "--no-export"]) == EXIT_OUTPUT
    err = capsys.readouterr().err
    assert "error: out appeared while the build ran" in err and "kept in out.failed/ instead" in err, err
    assert _names(tmp_path / "out") == ["notes.txt"]
    assert json.loads((tmp_path / "out.failed" / "report.json").read_text())["status"] == "passed"
    assert _names(tmp_path) == ["out", "out.failed", "spec.json"]


# --- D5: a build killed between the two renames of its swap left no OUT; the next build puts one back ---------------

class _Killed(BaseException):
    """A kill at that instant (SIGKILL runs no clean-up; here the exception skips the rest of the swap)."""


def _killed_in_swap(out: Path, monkeypatch, marker: str = "new") -> None:
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if ".old-" in Path(dst).name:
            raise _Killed()

    with pytest.raises(_Killed):
        with StagedOutput(out, force=True) as staging:
            _stage(staging, marker)
            monkeypatch.setattr(os, "replace", replace)
    monkeypatch.undo()
    assert not out.exists() and len(list(out.parent.glob(".out.old-*"))) == 1
    assert len(list(out.parent.glob(".out.tmp-*"))) == 1


def test_a_build_after_a_kill_in_the_swap_completes_it_even_when_it_fails(tmp_spec, tmp_path, monkeypatch, capsys):
    import bertc.check as check

    out = _build(tmp_path / "out")
    _killed_in_swap(out, monkeypatch)
    monkeypatch.setattr(check, "INVARIANCE_ATOL", -1.0)  # the next build fails its checks (exit 1)
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", str(out), "-q", "--no-export", "--force"]) == 1
    assert _marker(out) == "new"   # the complete new build the killed one was putting in place
    assert _names(out) == ["model.onnx", "report.json", "summary.txt"]
    report = json.loads((tmp_path / "out.failed" / "report.json").read_text())
    assert report["status"] == "failed" and ".out.tmp-" in report["recovered_output"]
    assert sorted(n.split("-")[0] for n in report["removed_leftovers"]) == [".out.old"]
    assert _names(tmp_path) == ["out", "out.failed", "spec.json"]


def test_without_a_complete_new_build_the_earlier_one_is_put_back(tmp_path, monkeypatch):
    out = _build(tmp_path / "out")
    _killed_in_swap(out, monkeypatch)
    staged = next(tmp_path.glob(".out.tmp-*"))
    (staged / "model.onnx").write_text("cut short")   # not the size its manifest says: not complete
    (tmp_path / ".out.failed.old-99").mkdir()   # an earlier failed report that a dead build was swapping out
    _stage(tmp_path / ".out.failed.old-99", "failed", status="failed")
    # without --force: OUT is back, so this build refuses to replace it
    with pytest.raises(OutputError, match="out already exists .*the earlier build again.*pass force=True"):
        with StagedOutput(out):
            pass
    assert _marker(out) == "old" and _names(tmp_path) == ["out"]


def test_a_complete_staged_build_of_a_killed_first_build_is_put_in_place(tmp_path):
    """Killed after its last stage, before its rename (no OUT before it): OUT missing, the build complete."""
    staged = tmp_path / ".out.tmp-dead"
    staged.mkdir()
    _stage(staged, "new")
    with StagedOutput(tmp_path / "out", force=True) as staging:
        assert _marker(tmp_path / "out") == "new"   # put in place before this build's work
        _stage(staging, "newer")
    assert _marker(tmp_path / "out") == "newer" and _names(tmp_path) == ["out"]


# --- D7: SIGTERM unwinds a build as Ctrl-C does; neither can cut the swap in two -----------------------------------

class _Unhandled(BaseException):
    """What SIGTERM raises here if the build installs no handler of its own (rather than killing pytest)."""


@pytest.fixture
def sigterm_guard():
    import signal

    def unhandled(signum, frame):
        raise _Unhandled()

    previous = signal.signal(signal.SIGTERM, unhandled)
    previous_hup = signal.signal(signal.SIGHUP, unhandled)
    # Python's own SIGINT handler, as in a command run from a shell: pytest-xdist's workers ignore SIGINT
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGTERM, previous)
    signal.signal(signal.SIGHUP, previous_hup)
    signal.signal(signal.SIGINT, previous_int)


@pytest.mark.parametrize("signame, code, word", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted"),
                                                  ("SIGHUP", 129, "hung up (SIGHUP)")])
def test_a_signal_mid_build_unwinds_it(tmp_spec, tmp_path, monkeypatch, capsys, sigterm_guard, signame, code, word):
    import signal
    import tempfile

    import bertc.export.keras_file as keras_file

    save_keras = keras_file.save_keras

    def save_then_signal(*args, **kwargs):   # a staged artifact is there when the signal comes
        entry = save_keras(*args, **kwargs)
        os.kill(os.getpid(), getattr(signal, signame))
        return entry

    monkeypatch.setattr(keras_file, "save_keras", save_then_signal)
    out = tmp_path / "out"
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", str(out), "-q", "--no-export"]) == code
    assert capsys.readouterr().err.splitlines()[-1] == f"{word}; nothing was written"
    assert _names(tmp_path) == ["spec.json"]   # no staging directory, no .out.lock
    assert not (Path(tempfile.gettempdir()) / f"bertc-native-{os.getpid()}.log").exists()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_between_the_swaps_renames_waits_for_the_swap(tmp_path, monkeypatch, sigterm_guard, signame):
    import signal

    out = _build(tmp_path / "out")
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if ".old-" in Path(dst).name:
            os.kill(os.getpid(), getattr(signal, signame))

    with StagedOutput(out, force=True) as staging:
        _stage(staging, "new")
        monkeypatch.setattr(os, "replace", replace)
    monkeypatch.undo()
    assert _marker(out) == "new" and _names(tmp_path) == ["out"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handlers put back


@pytest.mark.parametrize("signame, code, word", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")])
def test_a_signal_after_the_swap_says_the_build_was_written(tmp_spec, tmp_path, monkeypatch, capsys, sigterm_guard,
                                                            signame, code, word):
    """A tester: a signal after the new build was put at OUT (the swap's handlers restored, before bertc build
    ended) said 'nothing was written', yet OUT held the new build and the old one was gone."""
    import signal

    exit_staged = StagedOutput.__exit__

    def exit_then_signal(self, *args):
        result = exit_staged(self, *args)
        os.kill(os.getpid(), getattr(signal, signame))
        return result

    out = tmp_path / "out"
    spec = str(tmp_spec(tiny_bert()))
    assert main(["build", spec, "-o", str(out), "-q", "--no-export"]) == 0
    before = (out / "report.json").read_text()
    monkeypatch.setattr(StagedOutput, "__exit__", exit_then_signal)
    assert main(["build", spec, "-o", str(out), "-q", "--no-export", "--force"]) == code
    assert capsys.readouterr().err.splitlines()[-1] == f"{word} after the build was written: {out}/ holds it, complete"
    assert (out / "report.json").read_text() != before and json.loads((out / "report.json").read_text())["status"] \
        == "passed"
    assert _names(tmp_path) == ["out", "spec.json"]


def test_a_signal_after_the_command_ended_keeps_its_exit_status():
    """A tester: Ctrl-C or SIGTERM in the interpreter's teardown after 'wrote OUT/' (TensorFlow's: 1-2 s) ended a
    complete build with 130 / 143 and no word. Once the command has returned, the console script ends the process
    with its status: here a command returning 3 whose exit is signalled from an atexit handler."""
    import subprocess
    import sys

    for signame in ("SIGINT", "SIGTERM"):
        code = ("import atexit, os, signal, time\n"
                "import bertc.cli as cli\n"
                "def late():\n"
                f"    os.kill(os.getpid(), signal.{signame}); time.sleep(5)\n"
                "atexit.register(late)\n"
                "cli.main = lambda argv=None: 3\n"
                "cli.entry()\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 3 and "Traceback" not in proc.stderr, (signame, proc.returncode, proc.stderr)


@pytest.mark.parametrize("signame, code, word", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")])
def test_a_signal_python_discards_in_a_del_still_stops_the_build(tmp_spec, tmp_path, monkeypatch, capsys, sigterm_guard,
                                                                signame, code, word):
    """A tester: SIGTERM landing while TensorFlow ran a __del__ (a traced function collected between two stages) raised
    there, where Python discards what is raised: a traceback, then the build went on, wrote OUT and exited 0."""
    import signal

    import bertc.export.keras_file as keras_file

    save_keras = keras_file.save_keras

    class Collected:
        def __del__(self):
            os.kill(os.getpid(), getattr(signal, signame))   # the handler's exception is raised in this __del__

    def save_then_collect(*args, **kwargs):
        entry = save_keras(*args, **kwargs)
        Collected()   # made and collected at once
        return entry

    monkeypatch.setattr(keras_file, "save_keras", save_then_collect)
    out = tmp_path / "out"
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", str(out), "--no-export"]) == code
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"{word}; nothing was written" and "Traceback" not in err, err
    assert _names(tmp_path) == ["spec.json"]


def test_python_m_bertc_under_a_host_lets_the_host_finish(tmp_path):
    """A reviewer: `python -m bertc` ended the process itself after the command (os._exit), so a host running it
    (`python -m cProfile -o F -m bertc list`) never wrote its results. Its exit is the interpreter's own."""
    import subprocess
    import sys

    profile = tmp_path / "bertc.prof"
    proc = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "bertc", "list"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "embedding:" in proc.stdout, proc.stderr
    assert profile.stat().st_size > 0


# --- a tester's mutants that no test killed (M: S04, S03) ---------------------------------------------------------

def test_a_build_that_appeared_at_out_meanwhile_is_left_alone_without_force(tmp_path):
    """Only a user's folder was tried: a later check refuses any folder that is no build, so with the no-force check
    gone, a bertc build copied to OUT (or another machine's, on a file system flock does not span) was replaced."""
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="appeared while the build ran"):
        with StagedOutput(out, force=False) as staging:
            _stage(staging, "new")
            out.mkdir()
            _stage(out, "someone else's build")
    assert _marker(out) == "someone else's build"
    assert _marker(tmp_path / "out.failed") == "new"


def test_a_forced_rebuild_whose_last_rename_fails_puts_the_earlier_build_back(tmp_path, monkeypatch):
    """"OUT is the old build or the new one, never a mix, never none": with the put-back gone, a failing rename of
    the new build (EACCES, EBUSY, EIO) left no OUT, the earlier build hidden in .OUT.old-PID."""
    import bertc.output as output

    out = tmp_path / "out"
    out.mkdir()
    _stage(out, "old")
    real = os.replace

    def failing(src, dst):
        if ".tmp-" in str(src) and str(dst) == str(out):
            raise OSError(errno.EACCES, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(output.os, "replace", failing)
    with pytest.raises(OutputError):
        with StagedOutput(out, force=True) as staging:
            _stage(staging, "new")
    monkeypatch.setattr(output.os, "replace", real)
    assert _marker(out) == "old"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.old-")]
