"""OUT names close to NAME_MAX (255 bytes): bertc's own names beside OUT (.OUT.lock, .OUT.tmp-*, .OUT.old-PID,
OUT.failed) take a shortened form of the name with a hash of it when the whole would not fit, so that any name the
file system takes can be built; names of usual lengths keep their names."""
import json
import os
import re
from pathlib import Path

import pytest

from bertc.errors import OutputError
from bertc.output import BuildLock, StagedOutput

NAME_MAX = 255


def _stage(staging: Path, marker: str, status: str = "passed") -> None:
    (staging / "model.onnx").write_text(marker)
    (staging / "report.json").write_text(json.dumps({"status": status, "marker": marker, "manifest": {
        "files": {"model.onnx": {"bytes": len(marker), "sha256": "-"}}}}))
    (staging / "summary.txt").write_text(marker)


def _marker(path: Path) -> str:
    return json.loads((path / "report.json").read_text())["marker"]


def test_usual_names_keep_their_sibling_names_and_long_ones_fit():
    from bertc.output import sibling_stem

    assert sibling_stem("out") == "out"
    assert sibling_stem("x" * 231) == "x" * 231   # ".x...x.failed-NNN.old-PID" still fits
    for name in ["L" * 232, "L" * 255, "é" * 127, "名" * 85]:
        stem = sibling_stem(name)
        assert len(os.fsencode(f".{stem}.failed-999.old-4194304")) <= NAME_MAX, name
        assert stem != name and stem.startswith(name[:60])
    assert sibling_stem("L" * 250 + "a") != sibling_stem("L" * 250 + "b")   # the hash tells them apart


@pytest.mark.parametrize("name", ["L" * 250, "é" * 127])
def test_an_out_name_close_to_name_max_builds_rebuilds_and_keeps_a_failed_report(tmp_path, name):
    out = tmp_path / name
    with StagedOutput(out) as staging:
        assert len(os.fsencode(staging.name)) <= NAME_MAX
        names = [p.name for p in tmp_path.iterdir()]
        assert len(names) == 2 and all(len(os.fsencode(n)) <= NAME_MAX for n in names)   # the lock, the staging
        _stage(staging, "first")
    assert _marker(out) == "first" and [p.name for p in tmp_path.iterdir()] == [name]
    with StagedOutput(out, force=True) as staging:   # the swap's .OUT.old-PID fits too
        _stage(staging, "second")
    assert _marker(out) == "second" and [p.name for p in tmp_path.iterdir()] == [name]
    with pytest.raises(ZeroDivisionError) as caught:
        with StagedOutput(out, force=True) as staging:
            _stage(staging, "failed", status="failed")
            1 / 0
    kept = caught.value.kept_in
    assert kept.parent == tmp_path and kept.name.endswith(".failed") and _marker(kept) == "failed"
    assert len(os.fsencode(kept.name)) <= NAME_MAX and kept.name.startswith(name[:60])
    assert _marker(out) == "second"


def test_a_long_named_build_killed_in_its_swap_is_put_back(tmp_path, monkeypatch):
    out = tmp_path / ("L" * 250)
    out.mkdir()
    _stage(out, "old")

    class Killed(BaseException):
        pass

    real_replace = os.replace

    def replace(src, dst):   # killed between the swap's two renames
        real_replace(src, dst)
        if ".old-" in Path(dst).name:
            raise Killed()

    with pytest.raises(Killed):
        with StagedOutput(out, force=True) as staging:
            _stage(staging, "new")
            monkeypatch.setattr(os, "replace", replace)
    monkeypatch.undo()
    assert not out.exists()
    with pytest.raises(OutputError, match="already exists .*complete build that a build killed while putting it"):
        with StagedOutput(out):
            pass
    assert _marker(out) == "new" and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_the_lock_of_a_long_name_is_one_lock(tmp_path):
    out = tmp_path / ("L" * 255)
    first = BuildLock(out)
    first.acquire()
    with pytest.raises(OutputError, match=f"{out} is being written by another bertc build \\(pid {os.getpid()}\\)"):
        BuildLock(out).acquire()
    first.release()


def test_bertc_run_points_at_the_failed_report_of_a_long_named_build(tmp_path):
    """bertc run on OUT without report.json names the failed build's report beside it: for a name too long for
    OUT.failed that is the shortened name the build used, which the hint looked past."""
    import bertc
    from bertc.errors import InputError
    from bertc.output import sibling_stem

    for name in ("out", "x" * 240):
        out = tmp_path / name
        out.mkdir()
        failed = tmp_path / f"{sibling_stem(name)}.failed"
        failed.mkdir()
        with pytest.raises(InputError, match=re.escape(f"(a failed build's report is in {failed}/)")):
            bertc.Runtime(out)


def test_an_out_path_near_path_max_is_an_output_error(tmp_path, tmp_spec, capsys):
    """An OUT of 4,065 characters: its files' paths (the Keras save's work folder inside it) pass PATH_MAX, and the
    build ended in "internal error ... File name too long" (exit 70); the place's fault, exit 5 naming OUT."""
    from bertc.cli import main
    from bertc.errors import EXIT_OUTPUT
    from conftest import tiny_bert

    deep = tmp_path
    while len(str(deep)) < 4034 - 201:
        deep = deep / ("d" * 200)
    deep = deep / ("d" * (4034 - len(str(deep)) - 1))
    os.makedirs(deep)
    out = deep / ("o" * 30)
    assert main(["build", str(tmp_spec(tiny_bert())), "-o", str(out), "-q", "--no-export"]) == EXIT_OUTPUT
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write the build to {out}") and "File name too long" in err, err
    assert not os.path.lexists(out)
