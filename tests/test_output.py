"""Staging directories of killed builds are cleaned up; two builds of one OUT cannot run at once."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bertc.cli import main
from bertc.errors import EXIT_OUTPUT
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
        assert time.monotonic() - t0 < 10
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
