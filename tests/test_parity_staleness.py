"""`bertc parity OUT` / `bertc bench OUT` judge the build that is in OUT, on the build's own inputs, and say so when
they cannot: a build that replaces OUT while they run (D8), a calibration text that moved or changed (D1), artifacts
that are no longer the build's (D2). One tiny build with a tokenizer, shared; races are simulated in-process."""
import json
import os
import shutil

import pytest

from bertc.cli import main
from bertc.errors import EXIT_OUTPUT
from conftest import ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "hf" / "st_bert_mean_norm"
CAL = "hello world\nthe quick brown fox\njumps over the lazy dog\na b c d\n"
BENCH = ["--backends", "onnx_cpu", "--batch", "1", "--seq", "4", "--rounds", "1", "--calls", "1", "--warmup", "0",
         "--no-plot"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A sentence embedder (bundled tokenizer) built with `--calibration cal.txt`, the path typed relative."""
    root = tmp_path_factory.mktemp("staleness")
    (root / "cal.txt").write_text(CAL)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert main(["import", str(FIXTURE), "-o", "st.json"]) == 0
        assert main(["build", "st.json", "-o", "out", "-q", "--calibration", "cal.txt", "--variants", "none",
                     "--no-tflite"]) == 0
    return root / "out"


def _copy(built, tmp_path, name="out"):
    dst = tmp_path / name
    shutil.copytree(built, dst)
    return dst


def _new_build(built, tmp_path):
    """A stand-in for what `bertc build --force -o OUT` swaps in: another build's report."""
    new = _copy(built, tmp_path, "new")
    report = json.loads((new / "report.json").read_text())
    report["created"] = "2099-01-01T00:00:00+00:00"
    (new / "report.json").write_text(json.dumps(report, indent=2))
    return new


def _swap_in(new, out):
    """What the build's swap does: the old OUT renamed away, the new one renamed to OUT."""
    os.replace(out, out.with_name(".out.old"))
    os.replace(new, out)


def _during(monkeypatch, module, name, action):
    """Run ``action`` right after ``module.name`` (the work of parity / bench) returns."""
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        result = real(*args, **kwargs)
        action()
        return result

    monkeypatch.setattr(module, name, wrapped)


# --- D8: a build that replaces OUT while parity / bench run --------------------------------------------------------

def test_parity_does_not_save_over_a_build_swapped_in_while_it_ran(built, tmp_path, monkeypatch, capfd):
    import bertc.rerun

    out, new = _copy(built, tmp_path), _new_build(built, tmp_path)
    expected = (new / "report.json").read_bytes(), (new / "summary.txt").read_bytes()
    _during(monkeypatch, bertc.rerun, "run_parity", lambda: _swap_in(new, out))
    assert main(["parity", str(out)]) == EXIT_OUTPUT
    err = capfd.readouterr().err
    assert f"{out} changed while bertc parity ran: another build replaced it (report.json now describes the build " \
           f"of 2099-01-01T00:00:00+00:00" in err and "Its results were not saved" in err, err
    assert ((out / "report.json").read_bytes(), (out / "summary.txt").read_bytes()) == expected   # as the build left it


def test_parity_and_bench_do_not_save_while_a_build_of_out_runs(built, tmp_path, monkeypatch, capfd):
    import bertc.bench
    import bertc.rerun
    from bertc.output import BuildLock

    out = _copy(built, tmp_path)
    before = (out / "report.json").read_bytes()
    lock = BuildLock(out.resolve())
    try:
        lock.acquire()   # a build running now: refused before any work
        for command in (["parity", str(out)], ["bench", str(out), *BENCH]):
            assert main(command) == EXIT_OUTPUT
            err = capfd.readouterr().err
            assert f"{out} is being written by a bertc build (pid {os.getpid()}); nothing was run" in err, err
    finally:
        lock.release()
    # a build that starts while they run (it holds the lock when they save)
    _during(monkeypatch, bertc.rerun, "run_parity", lock.acquire)
    _during(monkeypatch, bertc.bench, "time_targets", lock.acquire)
    try:
        for command, what in ((["parity", str(out)], "its results"), (["bench", str(out), *BENCH], "its figures")):
            assert main(command) == EXIT_OUTPUT
            err = capfd.readouterr().err
            assert f"a bertc build of it started while bertc {command[0]} ran (pid {os.getpid()}); {what} were not " \
                   f"saved" in err, err
            lock.release()
    finally:
        lock.release()
    assert (out / "report.json").read_bytes() == before and not (out / "bench.json").exists()


def test_bench_does_not_save_into_a_build_swapped_in_while_it_ran(built, tmp_path, monkeypatch, capfd):
    import bertc.bench

    out, new = _copy(built, tmp_path), _new_build(built, tmp_path)
    _during(monkeypatch, bertc.bench, "time_targets", lambda: _swap_in(new, out))
    assert main(["bench", str(out), *BENCH]) == EXIT_OUTPUT
    assert f"{out} changed while bertc bench ran: another build replaced it" in capfd.readouterr().err
    assert not (out / "bench.json").exists() and not list(out.glob(".bench*"))


def test_a_parity_run_that_rewrote_the_parity_section_meanwhile_is_the_same_build(built, tmp_path, monkeypatch):
    """Only a replaced build is refused: another `bertc parity` of the same build saving first is not."""
    import bertc.rerun

    out = _copy(built, tmp_path)

    def other_parity():
        report = json.loads((out / "report.json").read_text())
        report["parity"]["inputs"] = {"text": {"kind": "file", "path": "other.txt", "cases": 2}}
        report["status"] = "failed"
        (out / "report.json").write_text(json.dumps(report))

    _during(monkeypatch, bertc.rerun, "run_parity", other_parity)
    assert main(["parity", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["status"] == "passed"
