"""Staging directories of killed builds are cleaned up; two builds of one OUT cannot run at once."""
import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bertc.cli import main
from bertc.errors import EXIT_CHECK_FAILED, EXIT_OUTPUT, OutputError
from bertc.output import StagedOutput
from conftest import ROOT, tiny_bert


def _wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_killed_build_leftovers_are_removed_and_concurrent_build_is_refused(tmp_spec, tmp_path, capsys):
    # A bigger-than-tiny encoder so the first build is still running while we look at it.
    spec = tmp_spec(tiny_bert(encoder={**tiny_bert()["encoder"], "num_layers": 4}))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    first = subprocess.Popen([sys.executable, "-m", "bertc.cli", "build", str(spec), "-o", str(out), "-q"],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: list(tmp_path.glob(".out.tmp-*"))), "the first build never started staging"
        # While it runs, a second build of the same OUT fails at once and names the holder.
        t0 = time.monotonic()
        assert main(["build", str(spec), "-o", str(out), "-q", "--no-export"]) == EXIT_OUTPUT
        assert time.monotonic() - t0 < 60   # refused, not made to wait (generous: a loaded 2-core CI machine)
        err = capsys.readouterr().err
        assert f"is being written by another bertc build (pid {first.pid})" in err
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(30)
    leftovers = list(tmp_path.glob(".out.tmp-*"))
    assert leftovers and not out.exists()  # SIGKILL ran no cleanup
    (Path(tempfile.gettempdir()) / f"bertc-native-{first.pid}.log").unlink(missing_ok=True)   # nor of its C++ log
    assert main(["build", str(spec), "-o", str(out), "-q", "--no-export"]) == 0
    assert not list(tmp_path.glob(".out.tmp-*")) and not list(tmp_path.glob(".out.lock"))
    report = json.loads((out / "report.json").read_text())
    assert report["removed_leftovers"] == [p.name for p in leftovers]


def test_leftovers_of_other_outputs_are_left_alone(tmp_path):
    (tmp_path / ".other.tmp-abc").mkdir()
    (tmp_path / ".out.tmp-dead").mkdir()
    with StagedOutput(tmp_path / "out") as staging:
        (staging / "x").write_text("1")
    assert (tmp_path / ".other.tmp-abc").is_dir() and not (tmp_path / ".out.tmp-dead").exists()
    assert (tmp_path / "out" / "x").read_text() == "1"


class _Failed(Exception):
    pass


def _fail_into(out: Path, marker: str = "new") -> _Failed:
    """A build of ``out`` that ran (its staging has a report.json) and then failed: where did its report go?"""
    try:
        with StagedOutput(out) as staging:
            (staging / "report.json").write_text(json.dumps({"status": "failed", "marker": marker, "manifest": {"files": {}}}))
            raise _Failed()
    except _Failed as exc:
        return exc


def test_failed_build_keeps_users_out_failed_and_its_own_report(tmp_path):
    out = tmp_path / "gg"
    users = tmp_path / "gg.failed"
    users.mkdir()
    (users / "notes.txt").write_text("precious")
    exc = _fail_into(out)
    assert (users / "notes.txt").read_text() == "precious" and sorted(p.name for p in users.iterdir()) == ["notes.txt"]
    assert exc.kept_in == tmp_path / "gg.failed-2" and exc.kept_instead_of == users
    assert json.loads((tmp_path / "gg.failed-2" / "report.json").read_text())["marker"] == "new"
    # the next failure replaces its own earlier report (a build's folder), never the user's
    assert _fail_into(out, "newer").kept_in == tmp_path / "gg.failed-2"
    assert json.loads((tmp_path / "gg.failed-2" / "report.json").read_text())["marker"] == "newer"
    # a regular file (or a link) named OUT.failed is left alone too
    (tmp_path / "ff.failed").write_text("mine")
    (tmp_path / "ll.failed").symlink_to(tmp_path / "gg.failed-2")
    assert _fail_into(tmp_path / "ff").kept_in == tmp_path / "ff.failed-2"
    assert _fail_into(tmp_path / "ll").kept_in == tmp_path / "ll.failed-2"
    assert (tmp_path / "ff.failed").read_text() == "mine" and (tmp_path / "ll.failed").is_symlink()
    # an earlier failed build's folder (or an empty one) is replaced as before
    (tmp_path / "ok.failed").mkdir()
    assert _fail_into(tmp_path / "ok").kept_instead_of is None and (tmp_path / "ok.failed" / "report.json").exists()
    # a successful build removes its stale failed report, never the user's folder
    with StagedOutput(out) as staging:
        (staging / "report.json").write_text(json.dumps({"manifest": {"files": {}}}))
    assert (users / "notes.txt").read_text() == "precious" and not (tmp_path / "gg.failed-2").exists()
    assert not list(tmp_path.glob(".gg.*"))


def test_failed_build_names_where_its_report_went(tmp_spec, tmp_path, monkeypatch, capsys):
    import bertc.check as check

    monkeypatch.setattr(check, "INVARIANCE_ATOL", -1.0)  # make the invariance checks fail (exit 1, no export)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gg.failed").mkdir()
    (tmp_path / "gg.failed" / "notes.txt").write_text("precious")
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", "gg", "--no-export"]) == EXIT_CHECK_FAILED
    err = capsys.readouterr().err
    assert "report kept in gg.failed-2/ (gg was left as it was; gg.failed is not a bertc build's folder" in err
    assert (tmp_path / "gg.failed" / "notes.txt").read_text() == "precious"
    assert json.loads((tmp_path / "gg.failed-2" / "report.json").read_text())["status"] == "failed"
    # --json prints the failed build's report too (it printed nothing: `> r.json` was empty when it mattered)
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", "gg", "--no-export", "--json", "-q"]) == EXIT_CHECK_FAILED
    printed = capsys.readouterr().out
    assert json.loads(printed)["status"] == "failed" and printed == (tmp_path / "gg.failed-2" / "report.json").read_text()


def test_out_that_is_a_file_is_an_output_error(tmp_spec, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("mine")
    for force in ([], ["--force"]):
        assert main(["build", str(tmp_spec(tiny_bert())), "-o", str(out), "-q", "--no-export", *force]) == EXIT_OUTPUT
        assert f"error: {out} exists and is not a directory" in capsys.readouterr().err
    assert out.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["out", "spec.json"]


def _fake_build(path: Path, marker: str = "old") -> Path:
    path.mkdir()
    (path / "report.json").write_text(json.dumps({"marker": marker, "manifest": {"files": {f"{marker}.txt": {}}}}))
    (path / f"{marker}.txt").write_text(marker)
    return path


def test_forced_build_through_a_link_replaces_the_target_and_keeps_the_link(tmp_path):
    real = _fake_build(tmp_path / "real")
    link = tmp_path / "link2"
    link.symlink_to("real")
    with StagedOutput(link, force=True) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".real.tmp-")
        (staging / "report.json").write_text(json.dumps({"marker": "new", "manifest": {"files": {}}}))
        # the same directory by its own path is the same OUT: one build at a time
        with pytest.raises(OutputError, match="is being written by another bertc build"):
            with StagedOutput(real, force=True):
                pass
    assert link.is_symlink() and os.readlink(link) == "real"
    assert json.loads((real / "report.json").read_text())["marker"] == "new" and not (real / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link2", "real"]   # no .link2.old-* nor anything else


def test_forced_build_onto_a_mount_point_replaces_its_contents(tmp_path, monkeypatch):
    """OUT that cannot be renamed (EBUSY: a mount point; its files on another filesystem than the staging: EXDEV)."""
    out = _fake_build(tmp_path / "out")
    (out / "sub").mkdir()
    (out / "sub" / "old.bin").write_text("old")
    (out / "report.json").write_text(json.dumps({"marker": "old", "manifest": {"files": {"old.txt": {},
                                                                                        "sub/old.bin": {}}}}))
    real_replace = os.replace

    def replace(src, dst):
        src, dst = Path(src), Path(dst)
        if out in (src, dst):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(src))
        if src.parent.name.startswith(".out.tmp-") and out in dst.parents:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", replace)
    with StagedOutput(out, force=True) as staging:
        (staging / "report.json").write_text(json.dumps({"marker": "new", "manifest": {"files": {}}}))
        (staging / "model.onnx").write_text("onnx")
        (staging / "sub").mkdir()
        (staging / "sub" / "new.bin").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]   # nothing stranded beside OUT
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["model.onnx", "report.json", "sub", "sub/new.bin"]
    assert json.loads((out / "report.json").read_text())["marker"] == "new"


def test_forced_build_into_the_working_directory(tmp_spec, tmp_path, monkeypatch, capsys):
    spec = tmp_spec(tiny_bert())
    out = _fake_build(tmp_path / "bd")
    inode = out.stat().st_ino
    monkeypatch.chdir(out)
    assert main(["build", "--force", str(spec), "-o", ".", "--no-export"]) == 0
    assert "wrote ./" in capsys.readouterr().err
    assert out.stat().st_ino == inode and Path.cwd() == out   # the same directory: a shell in it sees the new build
    assert not (out / "old.txt").exists() and "manifest" in json.loads((out / "report.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["model.keras", "report.json", "spec.json", "summary.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bd", "spec.json"]


def test_force_never_replaces_a_folder_that_merely_holds_a_report_json(tmp_spec, tmp_path, capsys):
    """A QA report: a project folder (a git repository, notes, sources) holding a report.json of its own was replaced
    by ``bertc build -o it --force``, exit 0; a failed build put its report into the user's ``OUT.failed`` holding
    data.csv and a report.json, removing data.csv. A build's folder is bertc's report with its manifest and the files
    it lists, nothing else."""
    project = tmp_path / "myproject"
    (project / ".git").mkdir(parents=True)
    (project / "notes.txt").write_text("precious")
    (project / "report.json").write_text(json.dumps({"status": "passed", "quarter": 3}))
    before = sorted(str(p.relative_to(project)) for p in project.rglob("*"))
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", str(project), "--force", "-q", "--no-export"]) == 5
    err = capsys.readouterr().err
    assert "is not a bertc build (its report.json is not a bertc build's report with a file manifest)" in err
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*")) == before
    # a bertc report listing its files, with one more of the user's beside them: refused, naming it
    (project / "report.json").write_text(json.dumps({"manifest": {"files": {"notes.txt": {}}}}))
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", str(project), "--force", "-q", "--no-export"]) == 5
    assert "is a bertc build that also holds what no build wrote (.git: yours" in capsys.readouterr().err
    # what bertc itself leaves (a killed bertc bench's chart) and a file manager's notes are no user's files
    (project / "report.json").write_text(json.dumps({"manifest": {"files": {"notes.txt": {}, ".git": {}}}}))
    (project / "bench.png.partial.png").write_bytes(b"")
    (project / ".bench.3501.png.partial.png").write_bytes(b"")   # a tester: this one was called "yours"
    (project / ".bench.3502.png").write_bytes(b"")
    (project / ".DS_Store").write_bytes(b"")
    (project / "scores.partial_eval.csv").write_text("mine")   # a user's name holding ".partial": theirs
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", str(project), "--force", "-q", "--no-export"]) == 5
    assert "(scores.partial_eval.csv: yours" in capsys.readouterr().err
    (project / "scores.partial_eval.csv").unlink()
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", str(project), "--force", "-q", "--no-export"]) == 0
    # the user's results.failed holding a report.json: a failed build keeps its report elsewhere
    users = tmp_path / "results.failed"
    users.mkdir()
    (users / "data.csv").write_text("a,b")
    (users / "report.json").write_text("{}")
    exc = _fail_into(tmp_path / "results")
    assert exc.kept_in == tmp_path / "results.failed-2" and (users / "data.csv").read_text() == "a,b"


def test_a_report_json_that_cannot_be_read_is_not_called_no_build(tmp_path):
    """A tester: OUT whose report.json this user may not read was refused as 'not a bertc build (its report.json is
    not a bertc build's report ...)'; the report was fine, only unreadable. (A folder at report.json here: root reads
    whatever the modes say.)"""
    from bertc.output import not_a_build

    (tmp_path / "report.json").mkdir()
    assert not_a_build(tmp_path) == ("has a report.json that cannot be read (Is a directory), so it is not known to "
                                     "be a build")


def test_atomic_writes_of_one_file_from_several_threads_never_show_a_reader_a_partial_text(tmp_path):
    """Every write's temporary file is its own: under one name per process, two threads writing one file (a library
    user's threads writing one shared cache) truncated each other's text under a reader, and a rename found the
    other's file gone (FileNotFoundError)."""
    import threading

    from bertc.report import write_text_atomic

    path = tmp_path / "shared.json"
    size = 100_000
    write_text_atomic(path, "0" * size)
    failures, seen, stop = [], set(), threading.Event()

    def writer(digit):
        for _ in range(60):
            try:
                write_text_atomic(path, digit * size)
            except Exception as exc:   # noqa: BLE001  (what the test is about)
                failures.append(repr(exc))

    def reader():
        while not stop.is_set():
            text = path.read_text()
            seen.add((len(text), len(set(text))))

    threads = [threading.Thread(target=writer, args=(d,)) for d in "123"]
    watching = threading.Thread(target=reader)
    watching.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watching.join()
    assert failures == [] and seen <= {(size, 1)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.json"]


def test_an_atomic_write_keeps_the_permissions_of_the_file_it_replaces(tmp_path):
    """root's `bertc parity` on a build made read-only (chmod -R a-w) replaced report.json with a new file of mode
    0644 (found by a tester): the replacement takes the replaced file's permission bits; a new file the default."""
    from bertc.report import write_text_atomic, write_texts_atomic

    report, summary = tmp_path / "report.json", tmp_path / "summary.txt"
    for path in (report, summary):
        path.write_text("old")
        path.chmod(0o444)
    write_text_atomic(report, "new")
    write_texts_atomic({report: "newer", summary: "new"})
    assert [(p.read_text(), p.stat().st_mode & 0o777) for p in (report, summary)] == [("newer", 0o444), ("new", 0o444)]
    fresh = tmp_path / "fresh.json"
    write_text_atomic(fresh, "x")
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
