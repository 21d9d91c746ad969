"""`bertc parity OUT` / `bertc bench OUT` judge the build that is in OUT, on the build's own inputs, and say so when
they cannot: a build that replaces OUT while they run (D8), a calibration text that moved or changed (D1), artifacts
that are no longer the build's (D2). One tiny build with a tokenizer, shared; races are simulated in-process."""
import hashlib
import json
import os
import shutil

import pytest

from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC, EXIT_OUTPUT
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


# --- D1: the build's --calibration text, recorded by absolute path and sha256 ----------------------------------------

def _text(out):
    return json.loads((out / "report.json").read_text())["parity"]["inputs"]["text"]


def test_parity_reruns_the_builds_calibration_text_from_any_directory(built, tmp_path, monkeypatch):
    """The build recorded `cal.txt` as typed: from another directory parity fell back to the built-in sentences."""
    cal = built.parent / "cal.txt"
    recorded = json.loads((built / "report.json").read_text())["calibration"]["text"]
    assert recorded["path"] == str(cal) and recorded["sha256"] == hashlib.sha256(CAL.encode()).hexdigest()
    out = _copy(built, tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["parity", str(out)]) == 0
    text = _text(out)
    assert (text["kind"], text["path"], text["examples"]) == ("file", str(cal), 4) and "differs_from_build" not in text


def test_parity_refuses_a_calibration_text_that_changed_or_is_gone(built, tmp_path, monkeypatch, capfd):
    out = _copy(built, tmp_path)
    cal = tmp_path / "cal.txt"
    cal.write_text(CAL)
    report = json.loads((out / "report.json").read_text())
    report["calibration"]["text"]["path"] = str(cal)
    (out / "report.json").write_text(json.dumps(report))
    before = (out / "report.json").read_bytes()
    offer = f"name where that text is now with `bertc parity {out} --calibration FILE`"
    cal.write_text("zzz\nqqq qqq qqq\n")   # edited: the same name, other text
    assert main(["parity", str(out)]) == EXIT_BAD_SPEC
    err = capfd.readouterr().err
    assert f"{out} was built with --calibration {cal}, whose content has changed since the build" in err, err
    assert offer in err
    cal.unlink()
    assert main(["parity", str(out)]) == EXIT_BAD_SPEC
    err = capfd.readouterr().err
    assert f"{out} was built with --calibration {cal}, which is not there any more" in err and offer in err, err
    assert (out / "report.json").read_bytes() == before   # nothing run, nothing written
    # an earlier bertc's record: the path as typed, no hash; not found from here is refused too (was: built-in text)
    legacy = json.loads(before)
    legacy["calibration"]["text"] = {k: v for k, v in legacy["calibration"]["text"].items() if k != "sha256"}
    legacy["calibration"]["text"]["path"] = "cal.txt"
    (out / "report.json").write_text(json.dumps(legacy))
    monkeypatch.chdir(tmp_path)
    assert main(["parity", str(out)]) == EXIT_BAD_SPEC
    assert "was built with --calibration cal.txt (relative to the directory that build was run from" in \
        capfd.readouterr().err
    (out / "report.json").write_bytes(before)
    # --calibration names the text: the build's, moved (checked by its hash), or another one, recorded as such
    (tmp_path / "moved.txt").write_text(CAL)
    assert main(["parity", str(out), "--calibration", "moved.txt"]) == 0
    text = _text(out)
    assert text["path"] == str(tmp_path / "moved.txt") and "differs_from_build" not in text
    (tmp_path / "other.txt").write_text("zzz\nqqq qqq qqq\n")
    assert main(["parity", str(out), "--calibration", "other.txt"]) == 0
    assert _text(out)["differs_from_build"].startswith(f"the build's real text was {cal} (sha256 ")
    assert "note: not the build's inputs: the build's real text was" in (out / "summary.txt").read_text()
    assert main(["parity", str(out), "--calibration", "moved.txt", "--text", "moved.txt"]) == EXIT_BAD_SPEC
    assert "--calibration and --text cannot be combined" in capfd.readouterr().err


# --- D2: bench times what is in OUT today, and says when that is not the build's -------------------------------------

def test_bench_names_timed_files_that_are_not_the_builds(built, tmp_path, capfd):
    out = _copy(built, tmp_path)
    assert main(["bench", str(out), *BENCH]) == 0   # the build's own files: no note
    assert "changed_since_build" not in json.loads((out / "bench.json").read_text())
    assert "differ from the build's manifest" not in capfd.readouterr().out
    shutil.copyfile(out / "model.optimized.onnx", out / "model.onnx")   # another file in model.onnx's place
    assert main(["bench", str(out), *BENCH]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert result["changed_since_build"] == ["model.onnx"]
    note = "timed files that differ from the build's manifest (not what the build wrote, so not its figures): model.onnx"
    assert note in result["notes"] and f"note: {note}" in capfd.readouterr().out


def test_parity_says_when_the_built_in_sentences_are_not_the_builds(built, tmp_path):
    """An upgrade between a build and `bertc parity OUT` can change bertc's built-in sentences (46, later 56): the
    re-run judged the build on today's and recorded them as the build's own inputs, without a word."""
    from bertc.calibration import builtin_sentences, builtin_sha256

    out = _copy(built, tmp_path)
    report = json.loads((out / "report.json").read_text())
    now = {"kind": "builtin", "file": "bertc/data/calibration_sentences.txt", "examples": len(builtin_sentences())}

    def rerun(recorded):
        if recorded is None:
            report.pop("calibration", None)
        else:
            report["calibration"] = {**report.get("calibration", {}), "text": recorded}
        (out / "report.json").write_text(json.dumps(report))
        assert main(["parity", str(out)]) == 0
        return _text(out)

    assert "differs_from_build" not in rerun({**now, "sha256": builtin_sha256()})
    assert rerun({**now, "sha256": "0" * 64})["differs_from_build"].startswith(
        "the build's real text was another bertc's built-in sentences")
    older = rerun({**now, "examples": 46})["differs_from_build"]
    assert older == (f"the build's real text was an earlier bertc's built-in sentences (46 example(s)), this one's "
                     f"are {len(builtin_sentences())}")
    assert "these are not known to be the same" in rerun(now)["differs_from_build"]
    assert rerun(None)["differs_from_build"] == "the build had no real-text parity (an earlier bertc)"
    assert "note: not the build's inputs:" in (out / "summary.txt").read_text()
