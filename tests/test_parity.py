"""Parity over every artifact of a build: fp32 tolerances, int8/fp16 task criteria, random-mask
cases, damaged artifacts, CUDA planning."""
import json
import shutil

import numpy as np
import pytest

from bertc.backends import CPU, CUDA, NO_CUDA, Backend, plan_backends
from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC, EXIT_OUTPUT, EXIT_PARITY_FAILED, SpecError
from bertc.inputs import make_inputs, random_mask
from bertc.parity import Case, argmax_matches, compare, grid_cases, row_cosines, sequence_grid
from bertc.signature import InputInfo, OutputInfo, Signature, signature_of
from bertc.spec import load_spec
from conftest import spec_dict, tiny_bert

NO_VARIANTS = {"optimized": False, "variants": []}  # this file adds its own int8 / fp16 artifacts


# --- inputs and grid --------------------------------------------------------------------------------

def test_random_mask_is_non_contiguous_with_a_real_token_per_row():
    rng = np.random.default_rng(0)
    for batch, seq in [(1, 2), (3, 8), (7, 5), (4, 16)]:
        mask = random_mask(batch, seq, rng)
        assert mask.shape == (batch, seq) and set(np.unique(mask)) <= {0, 1}
        assert (mask.sum(axis=1) >= 1).all()
        prefix = (np.arange(seq)[None, :] < mask.sum(axis=1)[:, None]).astype(np.int32)
        assert not np.array_equal(mask[0], prefix[0])  # row 0 is never a right-padded prefix
        if batch > 1:
            assert mask[1, 0] == 0  # a masked [CLS]
    assert random_mask(2, 1, rng).tolist() == [[1], [1]]


def test_grid_adds_random_mask_cases_with_valid_head_inputs():
    spec = load_spec(spec_dict("pretrainer"))
    cases = grid_cases(spec)
    seqs, batches = sequence_grid(spec), spec.parity.batch_sizes
    assert len(cases) == len(batches) * (len(seqs) + 1)
    random_cases = [c for c in cases if c.mask == "random"]
    assert [(c.batch, c.sequence_length) for c in random_cases] == [(b, max(seqs)) for b in batches]
    for c in random_cases:
        mask = c.inputs["input_mask"]
        rows = np.arange(c.batch)[:, None]
        assert (mask[rows, c.inputs["masked_lm_positions"]] == 1).all()  # predictions only at real tokens
        assert c.inputs["input_word_ids"][mask == 0].any()  # masked tokens keep random ids, as the notebooks feed
    # the right-padded cases are exactly what make_inputs gives (validation and parity share one source)
    first = cases[0]
    again = make_inputs(spec, first.batch, first.sequence_length,
                        np.random.default_rng([spec.seed, first.batch, first.sequence_length]))
    assert all(np.array_equal(first.inputs[k], again[k]) for k in again)


# --- figures against an independent computation ------------------------------------------------------

def test_row_cosines_only_count_real_tokens():
    rng = np.random.default_rng(1)
    want = rng.standard_normal((2, 4, 3))
    have = want.copy()
    mask = np.array([[1, 0, 1, 0], [0, 1, 1, 1]])
    have[0, 1] = 100.0  # a padded position: ignored
    have[1, 2] *= -1.0  # a real position: counts
    info = OutputInfo("sequence_output", 1, "features")
    cos = row_cosines(have, want, info, mask)
    a, b = have[1][[1, 2, 3]].ravel(), want[1][[1, 2, 3]].ravel()
    assert cos[0] == pytest.approx(1.0)
    assert cos[1] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    pooled = OutputInfo("pooled_output", None, "features")
    assert row_cosines(np.zeros((1, 3)), np.zeros((1, 3)), pooled, mask[:1]).tolist() == [1.0]
    assert row_cosines(np.zeros((1, 3)), np.ones((1, 3)), pooled, mask[:1]).tolist() == [0.0]


def test_differences_in_chunks_are_those_of_the_whole_arrays(monkeypatch):
    """A masked LM's logits are compared a chunk at a time (float64 copies of the whole would be gigabytes): the
    figures are those of the whole arrays, and a value beyond atol + rtol x |want| in any chunk is found."""
    import bertc.parity as parity

    rng = np.random.default_rng(0)
    want = rng.standard_normal((3, 7, 11)).astype(np.float32)
    want[2, 6, 10] = 1.0
    have = (want + rng.standard_normal(want.shape) * 1e-5).astype(np.float32)
    have[2, 6, 10] = want[2, 6, 10] + 3e-4   # in the last chunk
    whole = np.abs(have.astype(np.float64) - want.astype(np.float64))
    expected = (whole.max(), (whole / np.maximum(np.abs(want), 1e-6)).max(), whole.sum())
    monkeypatch.setattr(parity, "DIFF_CHUNK", 10)
    max_abs, rel, total, beyond = parity.differences(have, want, 1e-4, 0.0)
    np.testing.assert_allclose((max_abs, rel, total), expected, rtol=1e-12)
    assert beyond and max_abs == pytest.approx(3e-4, rel=1e-3)
    assert not parity.differences(have, want, 1e-3, 0.0)[3]
    assert not parity.differences(have, want, 1e-4, 10.0)[3]         # |want| x rtol covers it
    assert not parity.differences(have, want, None, None)[3]         # no tolerance: nothing is beyond it


def test_the_default_fp32_tolerance_holds_rounding_of_large_values_not_errors():
    """A tester's BERT with one outlier channel (~5,500, as trained models have) failed its own exact build: its
    backends differed from Keras by 3 units in the last place there (1.46e-3 > atol 1e-4), as transformers' fp32 does
    from its fp64. The default tolerance is relative too (rtol 1e-5): that passes, a real error does not."""
    import bertc.parity as parity
    from bertc.spec import ParitySpec

    tol = ParitySpec().default
    ulp = float(np.spacing(np.float32(5500.0)))
    want = np.array([[5500.0, 0.5, -1.25]], dtype=np.float32)
    assert not parity.differences(want + np.float32([3 * ulp, 0, 0]), want, tol.atol, tol.rtol)[3]
    assert parity.differences(want + np.float32([3 * ulp, 0, 0]), want, tol.atol, 0.0)[3]      # atol alone: failed
    for error in ([0.1, 0, 0], [0, 2e-4, 0], [0, 0, -2e-4]):                                  # errors still fail
        assert parity.differences(want + np.float32(error), want, tol.atol, tol.rtol)[3], error


def test_argmax_matches_per_token_only_at_real_tokens():
    want = np.zeros((2, 3, 4))
    want[..., 1] = 1.0
    have = want.copy()
    have[0, 2, 3] = 5.0  # padded token of row 0: not counted
    have[1, 0, 2] = 5.0  # real token of row 1: a disagreement
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    assert argmax_matches(have, want, OutputInfo("logits", 1, "logits"), mask) == (4, 5, 0)
    span = OutputInfo("start_logits", 1, "logits")  # sequence is the argmax axis: one prediction per row
    assert argmax_matches(have[..., 0], want[..., 0], span, mask) == (2, 2, 0)


def test_near_ties_in_the_reference_do_not_count_as_disagreements():
    info = OutputInfo("logits", None, "logits")
    want = np.array([[0.0, 1.0, 0.996], [0.0, 1.0, 0.5], [0.0, 1.0, 0.98]])  # range 1: ties within 0.01
    have = np.array([[0.0, 0.9, 1.0], [0.0, 1.0, 0.5], [0.0, 0.9, 1.0]])  # rows 0 and 2 flip to class 2
    mask = np.ones((3, 1))
    assert argmax_matches(have, want, info, mask, 0.01) == (2, 3, 1)  # row 0: margin 0.004, a near-tie
    assert argmax_matches(have, want, info, mask, 0.0) == (1, 3, 0)
    assert argmax_matches(have, want, info, mask, 0.05) == (3, 3, 2)


def test_one_class_logits_are_judged_by_the_order_of_their_scores():
    """A reranker's or a regression's one logit: its argmax is always class 0, so argmax agreement could never
    fail. The order of every pair of rows, over all cases, is judged instead: reversed scores fail, noise within
    the near-tie margin and a shift of every score pass."""
    spec = load_spec(tiny_bert(head=None))
    sig = Signature((InputInfo("input_word_ids"), InputInfo("input_mask")), (OutputInfo("logits", None, "logits"),),
                    8, False)
    rng = np.random.default_rng(3)
    cases = [Case(f"case {k}", 4, 6, "random", {"input_mask": np.ones((4, 6), np.int32),
                                                   "input_word_ids": rng.integers(0, 50, (4, 6)).astype(np.int32)})
             for k in range(3)]

    def reference(inputs):
        return {"logits": inputs["input_word_ids"].sum(-1, keepdims=True).astype(np.float32) / 10}

    runs = {"reversed": lambda x: {"logits": -reference(x)["logits"]},
            "shifted": lambda x: {"logits": reference(x)["logits"] + 3.0},
            "noisy": lambda x: {"logits": reference(x)["logits"] + rng.normal(0, 1e-4, (4, 1)).astype(np.float32)}}
    backends = [Backend(f"onnx_{k}_cpu", "onnx_int8", None, "onnx", "int8", CPU) for k in runs]
    results = {r.backend: r for r in compare(spec, sig, reference, backends,
                                             {f"onnx_{k}_cpu": run for k, run in runs.items()}, cases)}
    bad = results["onnx_reversed_cpu"]
    assert bad.agreement == "score order" and bad.argmax_count[1] == 66   # 12 rows: 66 pairs
    assert not bad.passed and bad.problems[0].startswith("score order agreement (pairs of rows) ")
    assert results["onnx_shifted_cpu"].passed and results["onnx_shifted_cpu"].argmax_agreement == 1.0
    assert results["onnx_noisy_cpu"].passed


def _toy(spec_over=None):
    spec = load_spec(tiny_bert(head=None, **(spec_over or {})))
    sig = Signature((InputInfo("input_word_ids"), InputInfo("input_mask")),
                    (OutputInfo("logits", None, "logits"), OutputInfo("sequence_output", 1, "features")), 8, False)
    rng = np.random.default_rng(2)
    cases = []
    for k in range(4):
        mask = random_mask(5, 6, rng)
        cases.append(Case(f"case {k}", 5, 6, "random", {"input_mask": mask, "input_word_ids": mask * 0}))

    def reference(inputs):
        n = len(inputs["input_mask"])
        logits = np.tile(np.array([0.0, 1.0, 0.5], np.float32), (n, 1))
        return {"logits": logits, "sequence_output": np.ones((n, 6, 4), np.float32)}

    return spec, sig, cases, reference


def test_task_criteria_failures_name_backend_output_and_figure():
    spec, sig, cases, reference = _toy()
    calls = {"n": 0}

    def int8(inputs):
        out = reference(inputs)
        calls["n"] += 1
        if calls["n"] == 1:
            out["logits"][0] = [2.0, 0.0, 0.0]  # 1 of 20 predictions flips: 95% < 99%
        out["sequence_output"] = out["sequence_output"] + 0.01
        return out

    def fp16(inputs):
        out = reference(inputs)
        out["sequence_output"][:, :, 0] = -1.0  # cosine 0.5 at every row
        return out

    backends = [Backend("onnx_int8_cpu", "onnx_int8", None, "onnx", "int8", CPU),
                Backend("onnx_fp16_cpu", "onnx_fp16", None, "onnx", "fp16", CPU)]
    results = {(r.backend, r.output): r for r in
               compare(spec, sig, reference, backends, {"onnx_int8_cpu": int8, "onnx_fp16_cpu": fp16}, cases)}
    flip = results[("onnx_int8_cpu", "logits")]
    assert flip.criterion == "task" and flip.argmax_count == [19, 20] and flip.max_abs == pytest.approx(2.0)
    assert flip.problems == ["argmax agreement 95% (19/20) < 99%"]
    assert results[("onnx_int8_cpu", "sequence_output")].passed  # a small offset keeps the cosine near 1
    assert results[("onnx_int8_cpu", "sequence_output")].min_cosine > 0.9999
    bad = results[("onnx_fp16_cpu", "sequence_output")]
    assert bad.min_cosine == pytest.approx(0.5) and not bad.passed
    assert bad.problems == ["min cosine 0.5000 < 0.99 (case 0, row 0)"]
    assert results[("onnx_fp16_cpu", "logits")].passed

    spec, *_ = _toy({"parity": {"task": {"min_argmax_agreement": 0.9, "min_cosine": 0.4}}})
    calls["n"] = 0
    assert all(r.passed for r in compare(spec, sig, reference, backends,
                                         {"onnx_int8_cpu": int8, "onnx_fp16_cpu": fp16}, cases))


def test_a_lowering_that_assumes_right_padding_is_caught():
    # Feature outputs: a random-init classifier's logits barely move (~1e-4) under a wrong mask.
    spec = load_spec(tiny_bert(head=None))
    sig = signature_of(spec)
    from bertc.backends import keras_runner
    from bertc.build import build_model

    reference = keras_runner(build_model(spec, sig).model)

    def right_padded(inputs):  # what a lowering using mask lengths (ORT's mask_index) computes
        n = inputs["input_mask"].sum(axis=1)
        prefix = (np.arange(inputs["input_mask"].shape[1])[None, :] < n[:, None]).astype(np.int32)
        return reference({**inputs, "input_mask": prefix})

    backend = Backend("onnx_optimized_cpu", "onnx_optimized", None, "onnx", "fp32", CPU)
    for result in compare(spec, sig, reference, [backend], {backend.name: right_padded}):
        assert result.problems and all("random mask: max abs diff" in p for p in result.problems)
        assert len(result.problems) == len(spec.parity.batch_sizes)  # every random-mask case, no right-padded one


def test_masked_invariance_check_catches_a_model_that_ignores_the_mask(monkeypatch):
    from bertc import check
    from bertc.build import build_model

    spec = load_spec(tiny_bert())
    sig = signature_of(spec)
    ok = check.check_masked_invariance(build_model(spec, sig).model, spec, sig)
    assert ok.passed and ok.figure == 0.0
    monkeypatch.setattr("bertc.components.encoders.MASK_ADDER", 0.0)  # attention no longer masks keys
    bad = check.check_masked_invariance(build_model(spec, sig).model, spec, sig)
    assert not bad.passed and bad.figure > 0.0
    # a tester: weights large enough that a row's logits spread past the mask's -10000 failed with no word of why
    assert "gets -10000 added, which hides it only while" in bad.detail and "added" not in ok.detail


# --- planning ---------------------------------------------------------------------------------------

ARTIFACTS = {
    "keras": {"path": "model.keras", "bytes": 1, "format": "keras", "precision": "fp32"},
    "onnx": {"path": "model.onnx", "bytes": 1, "opset": 17, "input_dtype": "int32"},  # an older report's entry
    "onnx_optimized": {"path": "model.optimized.onnx", "bytes": 1, "format": "onnx", "precision": "fp32",
                       "input_dtype": "int32", "providers": [CPU, CUDA]},
    "onnx_int8": {"path": "model.optimized.int8.onnx", "bytes": 1, "format": "onnx", "precision": "int8",
                  "input_dtype": "int32", "providers": [CPU]},
    "onnx_fp16": {"path": "model.optimized.fp16.onnx", "bytes": 1, "format": "onnx", "precision": "fp16",
                  "input_dtype": "int32", "providers": [CUDA]},
    "tflite": {"path": "model.tflite", "bytes": 1},
    "tflite_int8": {"path": "model.int8.tflite", "bytes": 1, "format": "tflite", "precision": "int8"},
}


def test_backends_follow_the_artifacts_and_providers(monkeypatch, tmp_path):
    monkeypatch.setattr("bertc.backends.onnx_providers", lambda probe=True: [CPU])
    backends, skipped = plan_backends(tmp_path, ARTIFACTS)
    assert [(b.name, b.precision, b.path.name) for b in backends] == [
        ("onnx_cpu", "fp32", "model.onnx"), ("onnx_optimized_cpu", "fp32", "model.optimized.onnx"),
        ("onnx_int8_cpu", "int8", "model.optimized.int8.onnx"), ("tflite", "fp32", "model.tflite"),
        ("tflite_int8", "int8", "model.int8.tflite")]
    assert skipped == {"onnx_cuda": NO_CUDA, "onnx_optimized_cuda": NO_CUDA, "onnx_fp16_cuda": NO_CUDA}
    monkeypatch.setattr("bertc.backends.onnx_providers", lambda probe=True: [CUDA, CPU])
    backends, skipped = plan_backends(tmp_path, ARTIFACTS)
    assert {"onnx_cuda", "onnx_optimized_cuda", "onnx_fp16_cuda"} <= {b.name for b in backends}
    assert "onnx_int8_cuda" not in {b.name for b in backends} and skipped == {}
    monkeypatch.setattr("bertc.backends.onnx_providers", lambda probe=True: [])
    _, skipped = plan_backends(tmp_path, ARTIFACTS)
    assert "onnxruntime is not installed" in skipped["onnx_int8_cpu"]


def test_spec_backend_keys():
    spec = load_spec(tiny_bert(parity={"backends": {"onnx_optimized_cpu": {"atol": 1e-3}, "tflite": {"atol": 1e-3}}}))
    assert spec.parity.tolerance("onnx_optimized_cpu").atol == 1e-3
    with pytest.raises(SpecError) as info:
        load_spec(tiny_bert(parity={"backends": {"onnx_int8_cpu": {"atol": 1e-2}}}))
    assert "$.parity.backends.onnx_int8_cpu: onnx_int8_cpu runs a reduced-precision artifact" in str(info.value)


# --- a real build with int8 and fp16 artifacts --------------------------------------------------------

@pytest.fixture(scope="module")
def encoder_build(tmp_path_factory):
    """A tiny encoder (feature outputs) built and exported, plus ORT int8 (dynamic quantization) and
    fp16 copies of its model.onnx listed as artifacts that run on the CPU provider."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.float16 import convert_float_to_float16

    root = tmp_path_factory.mktemp("encoder")
    spec = root / "spec.json"
    spec.write_text(json.dumps(tiny_bert(head=None, export=NO_VARIANTS)))
    out = root / "out"
    assert main(["build", str(spec), "-o", str(out), "-q", "--no-parity"]) == 0
    # 7-bit weights, as bertc writes them: full-range ones saturate ORT's int16 sums on x86 without VNNI
    quantize_dynamic(str(out / "model.onnx"), str(out / "test.int8.onnx"), weight_type=QuantType.QInt8,
                     reduce_range=True)
    onnx.save(convert_float_to_float16(onnx.load(str(out / "model.onnx")), keep_io_types=True),
              str(out / "test.fp16.onnx"))
    report = json.loads((out / "report.json").read_text())
    for name, precision in (("int8", "int8"), ("fp16", "fp16")):
        report["artifacts"][f"onnx_{name}"] = {
            "path": f"test.{name}.onnx", "bytes": (out / f"test.{name}.onnx").stat().st_size, "format": "onnx",
            "precision": precision, "input_dtype": "int32", "providers": [CPU, CUDA]}
    (out / "report.json").write_text(json.dumps(report))
    assert main(["parity", str(out)]) == 0
    return out


def _copy(build, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(build, dst)
    return dst


def test_every_artifact_is_checked_with_its_criteria(encoder_build):
    report = json.loads((encoder_build / "report.json").read_text())
    parity = report["parity"]
    assert parity["passed"] and report["status"] == "passed"
    assert parity["backends"] == ["onnx_cpu", "tflite", "onnx_int8_cpu", "onnx_fp16_cpu"]
    assert {"onnx_cuda", "onnx_int8_cuda", "onnx_fp16_cuda"} <= set(parity["skipped"])
    assert sum(g["mask"] == "random" for g in parity["grid"]) == 2 and len(parity["grid"]) == 8
    results = {(r["backend"], r["output"]): r for r in parity["results"]}
    assert set(results) == {(b, o) for b in parity["backends"] for o in ("sequence_output", "pooled_output")}
    for (backend, output), r in results.items():
        assert r["cases"] == 8 and r["min_cosine"] is not None
        if backend in ("onnx_int8_cpu", "onnx_fp16_cpu"):
            assert r["criterion"] == "task" and r["required_cosine"] == 0.99 and r["atol"] is None
            assert 0.99 <= r["min_cosine"] < 1.0 and r["max_abs"] > 1e-5
        else:
            assert r["criterion"] == "tolerance" and r["max_abs"] <= 1e-4 and r["min_cosine"] > 0.99999
    assert results[("onnx_int8_cpu", "sequence_output")]["max_abs"] > results[("onnx_cpu", "sequence_output")]["max_abs"]
    summary = (encoder_build / "summary.txt").read_text()
    assert "PASS  onnx_int8_cpu        sequence_output" in summary and "cosine" in summary


def test_task_criteria_miss_fails_the_build(encoder_build, tmp_path, capfd):
    out = _copy(encoder_build, tmp_path)
    spec = json.loads((out / "spec.json").read_text())
    spec["parity"]["task"]["min_cosine"] = 0.999999
    (out / "spec.json").write_text(json.dumps(spec))
    assert main(["parity", str(out)]) == EXIT_PARITY_FAILED
    err = capfd.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("- onnx_int8_cpu / sequence_output: min cosine 0.99"))
    figure = float(line.split("min cosine ")[1].split()[0])
    assert figure < 0.999999 and "< 0.999999 (batch " in line
    assert "- onnx_cpu" not in err and "- tflite" not in err
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed"


def test_damaged_artifacts_fail_their_backend_and_update_the_report(encoder_build, tmp_path, capfd):
    out = _copy(encoder_build, tmp_path)
    onnx_bytes = (out / "model.onnx").read_bytes()
    (out / "model.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 2])  # truncated
    (out / "model.tflite").write_bytes(b"\x00garbage" * 100)
    (out / "test.int8.onnx").unlink()
    assert main(["parity", str(out)]) == EXIT_PARITY_FAILED
    err = capfd.readouterr().err
    assert "internal error" not in err and "Traceback" not in err
    assert "- onnx_cpu: model.onnx: cannot be loaded by ONNX Runtime: [ONNXRuntimeError]" in err
    # (then LiteRT's own words: "The model is not a valid Flatbuffer buffer" in 2.3, "Model provided has model
    # identifier ..." in 2.0)
    assert "- tflite: model.tflite: cannot be loaded by LiteRT: " in err
    assert "- onnx_int8_cpu: test.int8.onnx: listed in report.json but missing from" in err
    assert "onnx_fp16_cpu" not in err.split("parity failed")[1]  # the intact artifact still passes
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed"
    assert sorted(report["parity"]["load_errors"]) == ["onnx_cpu", "onnx_int8_cpu", "tflite"]
    assert all(r["passed"] for r in report["parity"]["results"] if r["backend"] == "onnx_fp16_cpu")
    assert "cannot load tflite: model.tflite" in (out / "summary.txt").read_text()


def test_reduced_backend_tolerance_is_a_spec_error(tmp_spec):
    assert main(["validate", str(tmp_spec(tiny_bert(parity={"backends": {"tflite_fp16": {"atol": 1}}})))]) == EXIT_BAD_SPEC


def test_unreadable_report_is_an_output_error(encoder_build, tmp_path, capfd):
    out = _copy(encoder_build, tmp_path)
    (out / "report.json").write_text("{ half a report")
    assert main(["parity", str(out)]) == EXIT_OUTPUT
    assert "report.json: cannot be read" in capfd.readouterr().err


def _damaged_reports(report: dict) -> list:
    """report.json texts of the wrong shape, and the problem each one's message names."""
    no_artifacts = {k: v for k, v in report.items() if k != "artifacts"}
    return [([], "an array where a report is an object"),
            ({}, "no 'bertc_version' key"),
            ({**report, "artifacts": "x"}, "'artifacts' is a string, not an object"),
            (no_artifacts, "no 'artifacts' key"),   # it compared nothing, exit 0: "no model.onnx (not exported)"
            ({**report, "artifacts": {"keras": report["artifacts"]["keras"]}},
             "its manifest has model.onnx, model.tflite but 'artifacts' does not list them"),
            ({**report, "artifacts": {**report["artifacts"], "onnx": "model.onnx"}},
             "artifact 'onnx' has no file path"),
            ({**report, "plugins": "doubled.py"}, "'plugins' is not a list of plug-in records"),
            ({**report, "checks": [1]}, "its summary cannot be rendered (TypeError")]


def test_a_report_of_the_wrong_shape_is_named_before_any_work(encoder_build, tmp_path, capfd):
    """Valid JSON of the wrong shape was an internal error (AttributeError, KeyError 'bertc_version') after the
    work, or, without "artifacts", a pass comparing nothing."""
    out = _copy(encoder_build, tmp_path)
    report = json.loads((out / "report.json").read_text())
    for damaged, problem in _damaged_reports(report):
        text = json.dumps(damaged)
        (out / "report.json").write_text(text)
        assert main(["parity", str(out)]) == EXIT_OUTPUT, problem
        err = capfd.readouterr().err
        assert f"error: {out / 'report.json'}: not a bertc build report: {problem}" in err, err
        assert "internal error" not in err and (out / "report.json").read_text() == text


def read_only(directory, monkeypatch, probe_too=True):
    """``directory`` made read-only: its permissions, and, for root (whom they do not stop), every file bertc.report
    creates in it refused as the OS refuses it (``probe_too=False``: only the results, not the writability probe: a
    directory that became read-only during the work)."""
    import errno
    import os

    import bertc.report

    write = bertc.report._write_new

    def refused(path, text):
        if path.parent == directory and (probe_too or not path.name.startswith(".bertc-write-probe")):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        write(path, text)

    if probe_too:
        directory.chmod(0o555)
    if os.geteuid() == 0 or not probe_too:
        monkeypatch.setattr(bertc.report, "_write_new", refused)


def test_parity_of_a_read_only_build_is_an_output_error_before_the_work(encoder_build, tmp_path, monkeypatch, capfd):
    """It ran the whole parity, then crashed on report.json.<pid>.partial (PermissionError, exit 70)."""
    out = _copy(encoder_build, tmp_path)
    before = (out / "report.json").read_text()
    read_only(out, monkeypatch)
    try:
        assert main(["parity", str(out)]) == EXIT_OUTPUT
    finally:
        out.chmod(0o755)
    err = capfd.readouterr().err
    assert (f"error: {out}: cannot write report.json and summary.txt there (Permission denied); nothing was run: "
            f"bertc parity saves its results in the build directory. Make it writable, or run it on a writable copy: "
            f"cp -r {out} COPY && chmod -R u+w COPY && bertc parity COPY") in err
    assert "internal error" not in err and "PASS" not in err   # no work done
    assert (out / "report.json").read_text() == before and not list(out.glob("*.partial"))
    monkeypatch.undo()
    read_only(out, monkeypatch, probe_too=False)   # writable when parity starts, not when it ends
    assert main(["parity", str(out)]) == EXIT_OUTPUT
    err = capfd.readouterr().err
    assert (f"error: {out}: cannot write report.json / summary.txt: Permission denied; parity was run but its "
            f"results were not saved. Parity passed") in err
    assert (out / "report.json").read_text() == before and not list(out.glob("*.partial"))


def test_fp32_artifacts_run_on_cuda_without_tf32(monkeypatch, tmp_path):
    """CUDA's default TF32 matmuls broke fp32 parity on an H100 (tools/results/cuda_parity.json): fp32
    artifacts ask for exact fp32, the fp16 artifact and CPU sessions get no CUDA settings."""
    import onnxruntime as ort

    from bertc.backends import ort_session

    seen = []

    class FakeSession:
        def __init__(self, path, options, providers):
            seen.append(providers)
            self.providers = [p if isinstance(p, str) else p[0] for p in providers]

        def get_providers(self):
            return self.providers

    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    fp32 = Backend("onnx_optimized_cuda", "onnx_optimized", path, "onnx", "fp32", CUDA)
    fp16 = Backend("onnx_fp16_cuda", "onnx_fp16", path, "onnx", "fp16", CUDA)
    cpu = Backend("onnx_cpu", "onnx", path, "onnx", "fp32", CPU)
    for backend in (fp32, fp16, cpu):
        ort_session(backend)
    assert seen == [[(CUDA, {"use_tf32": "0"})], [CUDA], [CPU]]
    assert fp32.to_json()["provider_options"] == {"use_tf32": "0"} and "provider_options" not in fp16.to_json()


def test_a_build_that_ran_no_parity_says_so_until_parity_runs(tmp_path):
    """A tester writing specs from the README: a build with --no-parity (or the spec's parity.enabled false) recorded
    why only when no int8 tuning had filled the report's calibration section first, so the default build said
    nothing of it: report.json had no parity section and summary.txt only [PASSED]."""
    for name, flags, d in (("flag", ["--no-parity"], tiny_bert(export={"tflite": False})),
                           ("spec", [], tiny_bert(export={"tflite": False}, parity={"enabled": False}))):
        spec, out = tmp_path / f"{name}.json", tmp_path / name
        spec.write_text(json.dumps(d))
        assert main(["build", str(spec), "-o", str(out), "-q", *flags]) == 0
        report = json.loads((out / "report.json").read_text())
        why = "--no-parity" if flags else "parity.enabled false in the spec"
        assert "onnx_int8" in report["artifacts"] and "parity" not in report   # (the int8 tuning ran: calibration)
        assert report["parity_not_run"] == why
        assert f"parity: not run ({why})" in (out / "summary.txt").read_text()
    assert main(["parity", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "parity_not_run" not in report and report["parity"]["passed"]
    assert "parity: not run" not in (out / "summary.txt").read_text()


# --- a tester's mutants that no test killed (M: P02, P10) ----------------------------------------------------------

@pytest.mark.parametrize("need, flips, passes", [(0.96, 1, False), (0.95, 1, True), (0.951, 1, False),
                                                 (1.0, 0, True)])
def test_argmax_agreement_is_judged_at_its_exact_threshold(need, flips, passes):
    """The only failing example was 95% against 99%: 1 point of slack in the comparison passed every test."""
    spec, sig, cases, reference = _toy({"parity": {"task": {"min_argmax_agreement": need}}})
    calls = {"n": 0}

    def int8(inputs):
        out = reference(inputs)
        calls["n"] += 1
        if calls["n"] <= flips:
            out["logits"][0] = [2.0, 0.0, 0.0]   # 1 of 20 predictions flips: 95%
        return out

    r = next(r for r in compare(spec, sig, reference, [Backend("onnx_int8_cpu", "onnx_int8", None, "onnx", "int8",
                                                               CPU)], {"onnx_int8_cpu": int8}, cases)
             if r.output == "logits")
    assert r.argmax_agreement == (0.95 if flips else 1.0)
    assert r.passed is passes, r.problems


def test_an_unrequested_variant_dropped_at_the_parity_stage_lets_the_build_pass(tmp_path):
    """drop_failed_variants was only run where nothing was dropped: with its re-judging of the section gone, a default
    int8 that failed the final parity (a replayed tuning plan whose figures differ) was deleted and reported dropped,
    and the build still failed with exit 3."""
    from bertc.pipeline import drop_failed_variants

    def fresh():
        (tmp_path / "model.optimized.int8.onnx").write_bytes(b"x")
        artifacts = {"onnx": {"path": "model.onnx"}, "onnx_int8": {"path": "model.optimized.int8.onnx"}}
        section = {"results": [{"backend": "onnx_cpu", "output": "logits", "passed": True, "problems": []},
                               {"backend": "onnx_int8_cpu", "output": "logits", "passed": False,
                                "problems": ["argmax agreement 90% (18/20) < 99%"]}],
                   "backend_info": {"onnx_cpu": {"artifact": "onnx"}, "onnx_int8_cpu": {"artifact": "onnx_int8"}},
                   "backends": ["onnx_cpu", "onnx_int8_cpu"],
                   "max_abs_by_backend": {"onnx_cpu": 0.0, "onnx_int8_cpu": 1.0}, "load_errors": {}, "passed": False}
        return artifacts, section

    artifacts, section = fresh()
    dropped = drop_failed_variants(section, artifacts, (), tmp_path)
    assert list(dropped) == ["onnx_int8"] and list(artifacts) == ["onnx"]
    assert section["passed"] is True and [r["backend"] for r in section["results"]] == ["onnx_cpu"]
    assert not (tmp_path / "model.optimized.int8.onnx").exists()
    artifacts, section = fresh()   # asked for (in the spec or on the command line): never dropped, the build fails
    assert not drop_failed_variants(section, artifacts, ("onnx_int8",), tmp_path)
    assert section["passed"] is False and "onnx_int8" in artifacts
    assert (tmp_path / "model.optimized.int8.onnx").exists()
