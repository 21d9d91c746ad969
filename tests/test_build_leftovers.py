"""An earlier build that a forced build cannot remove once the new one is in place (a read-only build: its files
cannot be unlinked) is said, with its path and the reason; and it is never put back at OUT later as if a build had
been killed between the two renames of its swap (only `.OUT.old-PID` is that; the old build of a swap that went
through is renamed `.OUT.trash-PID` before its removal). Read-only is simulated (the tests may run as root, whom
permissions do not stop): removing a tree named `.out.trash-*` or `.out.old-*` fails as it does there."""
import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from bertc.cli import main
from bertc.output import StagedOutput
from conftest import tiny_bert


def _stage(staging: Path, marker: str) -> None:
    (staging / "model.onnx").write_text(marker)
    (staging / "report.json").write_text(json.dumps({"status": "passed", "marker": marker, "manifest": {
        "files": {"model.onnx": {"bytes": len(marker), "sha256": "-"}}}}))
    (staging / "summary.txt").write_text(marker)


def _marker(path: Path) -> str:
    return json.loads((path / "report.json").read_text())["marker"]


@pytest.fixture
def read_only_old_builds(monkeypatch):
    """shutil.rmtree of a swapped-out old build fails on its first file, as in a read-only directory."""
    real = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        name = Path(path).name
        if name.startswith(".out.") and (".trash-" in name or ".old-" in name):
            error = PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(Path(path) / "model.onnx"))
            if kwargs.get("onexc") is not None:
                kwargs["onexc"](os.unlink, str(Path(path) / "model.onnx"), error)
            elif kwargs.get("onerror") is not None:
                kwargs["onerror"](os.unlink, str(Path(path) / "model.onnx"), (PermissionError, error, None))
            elif not kwargs.get("ignore_errors"):
                raise error
            return
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)


def _replace_read_only_build(out: Path) -> None:
    """A forced build over an earlier build at ``out`` that cannot be removed once the new one is in place."""
    out.mkdir()
    _stage(out, "two builds ago")
    with StagedOutput(out, force=True) as staging:
        _stage(staging, "last")
    assert _marker(out) == "last"


def test_an_old_build_that_cannot_be_removed_is_said(tmp_path, capsys, read_only_old_builds):
    _replace_read_only_build(tmp_path / "out")
    left = [p for p in tmp_path.iterdir() if p.name != "out"]
    assert [p.name for p in left] == [f".out.trash-{os.getpid()}"]   # not .out.old-PID: no swap was cut short
    err = capsys.readouterr().err
    assert err.startswith(f"warning: cannot remove {left[0]} (the build that {tmp_path / 'out'} held before this "
                          f"one): Permission denied; it stays there"), err


def test_an_old_build_that_could_not_be_removed_is_never_put_back(tmp_path, capsys, read_only_old_builds):
    out = tmp_path / "out"
    _replace_read_only_build(out)
    left = [p for p in tmp_path.iterdir() if p.name != "out"]
    capsys.readouterr()
    # the user removes OUT; the next build (no --force) finds no OUT, and puts nothing back there
    shutil.rmtree(out)
    with StagedOutput(out) as staging:
        assert not out.exists()
        _stage(staging, "next")
    assert _marker(out) == "next"
    assert capsys.readouterr().err.startswith(f"warning: cannot remove {left[0]} (what an earlier build of out "
                                              f"left): Permission denied; ")   # still there, said again


def test_the_build_command_warns_of_the_old_build_it_could_not_remove(tmp_spec, tmp_path, monkeypatch, capfd,
                                                                      read_only_old_builds):
    monkeypatch.chdir(tmp_path)
    spec = tmp_spec(tiny_bert())
    Path("out").mkdir()
    _stage(Path("out"), "earlier")
    assert main(["build", str(spec), "-o", "out", "-q", "--no-export", "--force"]) == 0
    err = capfd.readouterr().err   # printed while the native libraries' fd 2 goes to a log: Python's own stderr
    trash = tmp_path / f".out.trash-{os.getpid()}"
    assert err.startswith(f"warning: cannot remove {trash} (the build that out held before this one): Permission "
                          f"denied; it stays there"), err
    assert trash.is_dir() and json.loads((tmp_path / "out" / "report.json").read_text())["status"] == "passed"
