"""`bertc parity OUT` / `bertc bench OUT` on a full disk: the verdict and the figures are still printed, and the error
says why they were not saved (no space), not that a build of OUT started meanwhile. A full disk takes an empty file
(the writability probe, the lock file) but no bytes: simulated so, as a tmpfs that is full behaves."""
import errno
import json
import os
import shutil
from pathlib import Path

import pytest

import bertc.output
import bertc.report
from bertc.cli import main
from bertc.errors import EXIT_OUTPUT, OutputError
from bertc.output import BuildLock
from conftest import tiny_bert

NO_SPACE = os.strerror(errno.ENOSPC)
BENCH = ["--backends", "onnx_cpu", "--batch", "1", "--seq", "4", "--rounds", "1", "--calls", "1", "--warmup", "0",
         "--no-plot"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("full_disk")
    (root / "spec.json").write_text(json.dumps(tiny_bert()))
    assert main(["build", str(root / "spec.json"), "-o", str(root / "out"), "-q", "--variants", "none",
                 "--no-tflite", "--no-optimize"]) == 0
    return root / "out"


def _copy(built, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(built, out)
    return out


def _disk_full(monkeypatch):
    """Every byte written from here on meets ENOSPC: bertc's files (report.py writes them all) and the pid in the
    lock file; an empty file can still be made."""
    real_write_new, real_write = bertc.report._write_new, os.write

    def write_new(path, text):
        if text:
            raise OSError(errno.ENOSPC, NO_SPACE)
        real_write_new(path, text)

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".lock"):
            raise OSError(errno.ENOSPC, NO_SPACE)
        return real_write(fd, data)

    monkeypatch.setattr(bertc.report, "_write_new", write_new)
    monkeypatch.setattr(bertc.output.os, "write", write)


def _contents(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_a_lock_whose_pid_cannot_be_written_is_held_and_released(tmp_path, monkeypatch):
    _disk_full(monkeypatch)
    out = tmp_path / "out"
    first = BuildLock(out)
    first.acquire()   # the pid is for messages only: the lock is held without it
    with pytest.raises(OutputError, match=r"is being written by another bertc build \(a running process\)"):
        BuildLock(out).acquire()
    first.release()
    again = BuildLock(out)
    again.acquire()   # nothing of the first one is left holding it
    again.release()
    assert list(tmp_path.iterdir()) == []


def test_parity_on_a_full_disk_prints_its_verdict_and_says_why_it_was_not_saved(built, tmp_path, monkeypatch, capfd):
    out = _copy(built, tmp_path)
    before = _contents(out)
    _disk_full(monkeypatch)
    assert main(["parity", str(out)]) == EXIT_OUTPUT
    err = capfd.readouterr().err
    assert f"error: {out}: cannot write report.json / summary.txt: {NO_SPACE}; parity was run but its results were " \
           f"not saved. Parity passed" in err, err
    assert "a bertc build of it started" not in err
    assert _contents(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]   # no lock, no partial


def test_bench_on_a_full_disk_prints_its_figures_and_says_why_they_were_not_saved(built, tmp_path, monkeypatch,
                                                                                 capfd):
    out = _copy(built, tmp_path)
    before = _contents(out)
    _disk_full(monkeypatch)
    assert main(["bench", str(out), *BENCH]) == EXIT_OUTPUT
    captured = capfd.readouterr()
    assert "onnx_cpu" in captured.out and "p50 ms" in captured.out   # the figures
    assert f"error: cannot write {out / 'bench.json'}: {NO_SPACE}; the results above were not saved" in captured.err
    assert "a bertc build of it started" not in captured.err
    assert _contents(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_disk_that_fills_between_report_and_summary_leaves_both_as_they_were(built, tmp_path, monkeypatch, capfd):
    out = _copy(built, tmp_path)
    before = _contents(out)
    real_write_new = bertc.report._write_new

    def write_new(path, text):   # report.json's text fits, the summary's does not
        if Path(path).name.startswith("summary.txt"):
            raise OSError(errno.ENOSPC, NO_SPACE)
        real_write_new(path, text)

    monkeypatch.setattr(bertc.report, "_write_new", write_new)
    # under other tolerances: a report.json that differs from the build's (its tolerance_override)
    assert main(["parity", str(out), "--atol", "0.5"]) == EXIT_OUTPUT
    assert "its results were not saved. Parity passed" in capfd.readouterr().err
    assert _contents(out) == before   # not a new report.json beside the old summary
