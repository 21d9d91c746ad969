"""`bertc bench`: every artifact x backend timed; the timing core interleaves and computes ratios."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from bertc.bench import Target, round_ratio, time_targets
from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC, EXIT_OUTPUT
from conftest import tiny_bert

BENCH = ["--rounds", "1", "--calls", "2", "--warmup", "1", "--batch", "1,2", "--seq", "4"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    spec = root / "spec.json"
    spec.write_text(json.dumps(tiny_bert(export={"optimized": False, "variants": []})))
    out = root / "out"
    assert main(["build", str(spec), "-o", str(out), "-q", "--no-parity"]) == 0
    return out


@pytest.fixture(scope="module")
def benched(built, tmp_path_factory):
    """One bench run (JSON on stdout) shared by the asserts below."""
    capture = pytest.MonkeyPatch()
    import io

    out, err = io.StringIO(), io.StringIO()
    capture.setattr(sys, "stdout", out)
    capture.setattr(sys, "stderr", err)
    try:
        code = main(["bench", str(built), *BENCH, "--json", "--no-plot"])
    finally:
        capture.undo()
    return code, json.loads(out.getvalue()), err.getvalue()


def test_bench_times_every_artifact_and_backend(built, benched):
    code, result, err = benched
    assert code == 0
    report = json.loads((built / "report.json").read_text())
    assert sorted(report["artifacts"]) == ["keras", "onnx", "tflite"]
    assert list(result["targets"]) == ["keras", "onnx_cpu", "tflite"]
    assert result["targets"]["onnx_cpu"]["nodes"] == report["artifacts"]["onnx"]["nodes"]
    assert "onnx_cuda" in result["skipped"]
    rows = result["results"]
    assert [(r["target"], r["batch"], r["sequence_length"]) for r in rows] == [
        (t, b, 4) for b in (1, 2) for t in ("keras", "onnx_cpu", "tflite")]
    for r in rows:
        assert r["calls"] == 2 and 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"]
        assert r["sequences_per_s"] == pytest.approx(r["batch"] / (r["p50_ms"] / 1e3), rel=1e-3)
        assert r["ratio"] > 0
        if r["target"] == "onnx_cpu":
            assert r["ratio"] == 1.0
    assert result["command"] == "bertc bench " + str(built) + " " + " ".join(BENCH) + " --json --no-plot"
    assert result["settings"]["threads"] == 2 and result["settings"]["ort_spinning"] is False
    assert json.loads((built / "bench.json").read_text())["results"] == rows
    table = err.split("target ")[1]
    assert "onnx_cpu" in table and "keras" in table and "1.000" in table


def test_bench_without_matplotlib_says_so_and_still_prints_the_table(built, monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    (built / "bench.png").unlink(missing_ok=True)
    assert main(["bench", str(built), *BENCH, "--backends", "onnx_cpu,tflite"]) == 0
    out = capfd.readouterr().out
    assert "no chart: matplotlib is not installed (pip install 'pydot>=2' 'matplotlib>=3.7' for bench.png)" in out
    assert out.count("onnx_cpu ") == 2 and "keras" not in out.split("ratio")[1]
    assert not (built / "bench.png").exists()


def test_bench_chart(built):
    pytest.importorskip("matplotlib")
    assert main(["bench", str(built), *BENCH, "--backends", "onnx_cpu"]) == 0
    assert (built / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_chart_that_cannot_be_written_leaves_nothing_behind(built, monkeypatch, capfd):
    """A tester: on a full disk the chart's temporary .bench.PID.png.partial.png stayed in OUT, and a later
    bertc build --force refused OUT for holding it ('yours')."""
    pytest.importorskip("matplotlib")
    import errno

    from matplotlib.figure import Figure

    def full_disk(self, fname, *args, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    before = sorted(p.name for p in built.iterdir())
    assert main(["bench", str(built), *BENCH, "--backends", "onnx_cpu"]) == 0
    assert "no chart: cannot write" in capfd.readouterr().out
    assert sorted(p.name for p in built.iterdir() if p.name != "bench.json") == \
        sorted(n for n in before if n != "bench.json")


def test_bench_bad_requests(built, tmp_path, capfd):
    assert main(["bench", str(built), "--seq", "64"]) == EXIT_BAD_SPEC
    assert "--seq 64 exceeds the model's max_sequence_length 8" in capfd.readouterr().err
    assert main(["bench", str(built), "--backends", "onnx_int8_cpu"]) == EXIT_BAD_SPEC
    assert "unknown backend(s) 'onnx_int8_cpu'; this build has: keras, onnx_cpu, tflite" in capfd.readouterr().err
    assert main(["bench", str(built), "--batch", "0"]) == EXIT_BAD_SPEC
    assert main(["bench", str(tmp_path)]) == EXIT_OUTPUT
    assert "is not a bertc build directory: spec.json is missing" in capfd.readouterr().err


def test_bench_unknown_baseline_is_a_usage_error(built, capfd):
    """It timed everything with a note and exit 0, where an unknown --backends name is exit 2."""
    assert main(["bench", str(built), *BENCH, "--baseline", "nope", "--no-plot"]) == EXIT_BAD_SPEC
    captured = capfd.readouterr()
    line = next(x for x in captured.err.splitlines() if x.startswith("error: unknown baseline 'nope'; this build has: "))
    assert sorted(line.split(": ")[-1].split(", ")) == ["keras", "onnx_cpu", "onnx_cuda", "tflite"]   # CUDA or not
    assert "batch 1 x seq 4" not in captured.err   # refused before the timing
    # one the build has that cannot run here (or that --backends leaves out) still times the rest, without ratios
    assert main(["bench", str(built), *BENCH, "--baseline", "onnx_cuda", "--backends", "onnx_cpu", "--no-plot"]) == 0
    assert "note: baseline onnx_cuda is not among the timed targets: no ratios" in capfd.readouterr().out


def test_bench_reports_a_damaged_artifact_and_times_the_rest(built, tmp_path, capfd):
    out = tmp_path / "copy"
    shutil.copytree(built, out)
    (out / "model.tflite").write_bytes(b"not a flatbuffer")
    assert main(["bench", str(out), *BENCH, "--backends", "onnx_cpu,tflite", "--no-plot"]) == 0
    assert "not loaded tflite: model.tflite: cannot be loaded by LiteRT" in capfd.readouterr().out
    result = json.loads((out / "bench.json").read_text())
    assert list(result["targets"]) == ["onnx_cpu"] and "tflite" in result["load_errors"]


def test_bench_names_a_report_of_the_wrong_shape(built, tmp_path, capfd):
    """[] and "artifacts": "x" were internal errors (AttributeError)."""
    from test_parity import _damaged_reports

    out = tmp_path / "copy"
    shutil.copytree(built, out)
    (out / "bench.json").unlink(missing_ok=True)   # an earlier test's
    report = json.loads((out / "report.json").read_text())
    for damaged, problem in _damaged_reports(report):
        (out / "report.json").write_text(json.dumps(damaged))
        assert main(["bench", str(out), *BENCH, "--no-plot"]) == EXIT_OUTPUT, problem
        err = capfd.readouterr().err
        assert f"error: {out / 'report.json'}: not a bertc build report: {problem}" in err, err
        assert not (out / "bench.json").exists()


def test_bench_of_a_read_only_build_is_an_output_error(built, tmp_path, monkeypatch, capfd):
    """It timed everything, then crashed on bench.json.<pid>.partial (PermissionError, exit 70)."""
    from test_parity import read_only

    out = tmp_path / "copy"
    shutil.copytree(built, out)
    (out / "bench.json").unlink(missing_ok=True)   # an earlier test's
    read_only(out, monkeypatch)
    try:
        assert main(["bench", str(out), *BENCH, "--no-plot"]) == EXIT_OUTPUT
    finally:
        out.chmod(0o755)
    captured = capfd.readouterr()
    assert (f"error: {out}: cannot write bench.json and bench.png there (Permission denied); nothing was run: "
            f"bertc bench saves its results in the build directory. Make it writable, or run it on a writable copy: "
            f"cp -r {out} COPY && chmod -R u+w COPY && bertc bench COPY") in captured.err
    assert "internal error" not in captured.err and "onnx_cpu" not in captured.out   # nothing timed
    monkeypatch.undo()
    read_only(out, monkeypatch, probe_too=False)   # writable when the timing starts, not when it ends
    assert main(["bench", str(out), *BENCH, "--no-plot"]) == EXIT_OUTPUT
    captured = capfd.readouterr()
    assert "onnx_cpu " in captured.out   # the figures are shown
    assert (f"error: cannot write {out / 'bench.json'}: Permission denied; the results above were not saved"
            in captured.err)
    assert not (out / "bench.json").exists() and not list(out.glob("*.partial"))


def test_time_targets_interleaves_rounds_and_takes_median_ratios(monkeypatch):
    """A fake clock: each call of a target advances it by that target's cost in the current round."""
    clock, order, counts = [0.0], [], {}
    monkeypatch.setattr("bertc.bench.time.perf_counter", lambda: clock[0])
    costs = {"base": [1.0, 2.0, 1.0], "slow": [3.0, 4.0, 5.0]}  # per round; per-round ratios 3, 2, 5

    def target(name):
        def prepare(inputs):
            def call():
                k = counts.get(name, 0)
                counts[name] = k + 1
                order.append(name)
                if k >= 1:  # after the one warm-up call: 2 calls per round
                    clock[0] += costs[name][(k - 1) // 2] / 1e3
            return call
        return Target(name, prepare)

    def broken(inputs):
        raise RuntimeError("cannot run this shape")

    rows = time_targets([target("base"), target("slow"), Target("broken", broken)], [(2, 4)], lambda b, s: {},
                        rounds=3, warmup=1, calls=2, baseline="base")
    timed = order[2:]  # after one warm-up call each
    assert timed == ["base"] * 2 + ["slow"] * 2 + ["slow"] * 2 + ["base"] * 2 + ["base"] * 2 + ["slow"] * 2
    by = {r["target"]: r for r in rows}
    assert by["base"]["ratio"] == 1.0 and by["base"]["p50_ms"] == 1.0 and by["base"]["round_p50_ms"] == [1, 2, 1]
    assert by["slow"]["ratio"] == 3.0  # the median of per-round ratios (the ratio of overall medians is 4)
    assert by["slow"]["p50_ms"] == 4.0 and by["slow"]["p90_ms"] == 5.0 and by["slow"]["ratio_range"] == [2.0, 5.0]
    assert by["slow"]["sequences_per_s"] == 500.0 and by["slow"]["tokens_per_s"] == 2000.0
    assert by["broken"]["error"] == "RuntimeError: cannot run this shape" and "p50_ms" not in by["broken"]
    assert round_ratio(rows, "slow", "base", 2, 4) == 3.0
    assert round_ratio(rows, "base", "slow", 2, 4) == pytest.approx(1 / 3, abs=1e-4)
    assert round_ratio(rows, "broken", "base", 2, 4) is None


def test_time_targets_reads_the_clock_it_is_given(monkeypatch):
    """``clock`` (e.g. time.process_time for CPU time) replaces the wall clock for every timed call."""
    monkeypatch.setattr("bertc.bench.time.perf_counter", lambda: pytest.fail("the wall clock was read"))
    ticks = [0.0]

    def prepare(inputs):
        def call():
            ticks[0] += 0.002
        return call

    rows = time_targets([Target("t", prepare)], [(1, 4)], lambda b, s: {}, rounds=2, warmup=1, calls=3,
                        baseline="t", clock=lambda: ticks[0])
    assert rows[0]["calls"] == 6 and rows[0]["p50_ms"] == pytest.approx(2.0) and rows[0]["ratio"] == 1.0


def test_bench_counts_the_nodes_inside_subgraphs_as_the_report_does(tmp_path):
    """bench.json gave a padding-free artifact 5 nodes (its top level) where report.json counts ~200 (its If / Loop
    bodies included)."""
    import onnx
    from onnx import TensorProto, helper

    from bertc.bench import onnx_node_count

    def branch(name, op):
        return helper.make_graph([helper.make_node(op, ["x"], ["y"]), helper.make_node("Identity", ["y"], ["z"])],
                                 name, [], [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])

    node = helper.make_node("If", ["c"], ["out"], then_branch=branch("then", "Relu"), else_branch=branch("else", "Neg"))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                                            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert onnx_node_count(path) == 5
