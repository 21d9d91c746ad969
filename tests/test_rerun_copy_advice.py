"""`bertc parity OUT` / `bertc bench OUT` on a build directory they cannot write advise running on a copy: a copy that
is writable (`cp -r` keeps a read-only build's modes), and never a copy of the build onto itself. Read-only is
simulated (the tests may run as root): the writability probe answers "Permission denied"."""
import json
import os
import subprocess
from pathlib import Path

import pytest

import bertc.report
from bertc.cli import main
from bertc.errors import EXIT_OUTPUT


def _build_dir(path: Path) -> Path:
    """What parity and bench read before they check that they can write: a build's files and a report of its shape."""
    path.mkdir()
    (path / "spec.json").write_text("{}")
    (path / "model.keras").write_text("")
    (path / "report.json").write_text(json.dumps({
        "bertc_version": "0", "spec_name": "tiny", "inputs": [], "outputs": [], "stages": {},
        "artifacts": {"keras": {"path": "model.keras", "bytes": 0}}}))
    return path


@pytest.fixture
def read_only(monkeypatch):
    monkeypatch.setattr(bertc.report, "unwritable", lambda directory: os.strerror(13))


@pytest.mark.parametrize("command", ["parity", "bench"])
def test_the_copy_advice_makes_a_writable_copy_and_never_one_onto_itself(tmp_path, monkeypatch, capsys, read_only,
                                                                         command):
    monkeypatch.chdir(tmp_path)
    _build_dir(tmp_path / "st")
    assert main([command, "st"]) == EXIT_OUTPUT
    err = capsys.readouterr().err
    files = "report.json and summary.txt" if command == "parity" else "bench.json and bench.png"
    assert err.startswith(f"error: st: cannot write {files} there (Permission denied); nothing was run"), err
    assert f"run it on a writable copy: cp -r st COPY && chmod -R u+w COPY && bertc {command} COPY\n" in err, err
    # on that copy, named COPY: another name for its copy
    _build_dir(tmp_path / "COPY")
    assert main([command, "COPY"]) == EXIT_OUTPUT
    err = capsys.readouterr().err
    assert f"cp -r COPY COPY2 && chmod -R u+w COPY2 && bertc {command} COPY2\n" in err, err
    assert main([command, str(tmp_path / "COPY")]) == EXIT_OUTPUT
    assert f"cp -r {tmp_path / 'COPY'} COPY2 &&" in capsys.readouterr().err


def test_the_advised_commands_give_a_writable_copy_of_a_read_only_build(tmp_path):
    out = _build_dir(tmp_path / "ro build")
    for path in [*out.iterdir(), out]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        advice = bertc.report.copy_advice(out, "true")
        assert subprocess.run(advice, shell=True, cwd=tmp_path).returncode == 0, advice
        copy = tmp_path / "COPY"
        assert all(os.stat(p).st_mode & 0o200 for p in [copy, *copy.iterdir()])   # the owner may write each
        assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in out.iterdir())
    finally:
        for path in [out, *out.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
