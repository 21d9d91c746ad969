"""QA defects: NaN passed for a match.

- parity compared a backend with a non-finite Keras reference and passed it (a checkpoint with a NaN embedding row:
  Keras NaN at rows whose masked tokens read it, the padding-free artifact finite there: ``PASS max abs 6e-08``):
  ``differences`` dropped NaN (``max(0.0, nan)`` is 0.0, ``nan > atol`` is False) and only the backend's values
  were checked for finiteness;
- validation: ``masked_invariance`` (and the other invariance checks) reduced a NaN difference to 0.0 and passed,
  and nothing checked that the loaded weights are finite, so such a checkpoint built with every check PASS.
"""
import numpy as np

from bertc import check
from bertc.backends import CPU, Backend
from bertc.build import build_model
from bertc.parity import compare, differences
from bertc.signature import signature_of
from bertc.spec import load_spec
from conftest import tiny_bert
from test_parity import _toy


def test_differences_keep_nan():
    max_abs, rel, _, beyond = differences(np.ones(3, np.float32), np.array([np.nan, 1, 1], np.float32), 1e-4, 0)
    assert np.isnan(max_abs) and np.isnan(rel) and beyond
    max_abs, _, _, beyond = differences(np.array([np.nan, 1, 1], np.float32), np.ones(3, np.float32), 1e-4, 0)
    assert np.isnan(max_abs) and beyond
    assert differences(np.ones(3), np.ones(3), 1e-4, 0)[3] is False


def test_a_non_finite_reference_fails_the_backend_compared_with_it():
    spec, sig, cases, reference = _toy()

    def nan_reference(inputs):
        out = reference(inputs)
        out["logits"][0, 1] = np.nan
        return out

    backend = Backend("onnx_packed_cpu", "onnx_packed", None, "onnx", "fp32", CPU)
    results = {r.output: r for r in compare(spec, sig, nan_reference, [backend], {backend.name: reference}, cases)}
    bad = results["logits"]
    assert not bad.passed
    assert all("the Keras reference itself has 1 non-finite values" in p for p in bad.problems)
    assert bad.reference_non_finite == len(cases) and bad.non_finite == 0
    assert len(bad.problems) == len(cases)
    assert results["sequence_output"].passed


def test_nan_weights_fail_validation():
    spec = load_spec(tiny_bert())
    sig = signature_of(spec)
    model = build_model(spec, sig).model
    assert all(r.passed for r in check.run_checks(model, spec, sig) if r.name != "trainability")
    table = next(v for v in model.weights if v.path == "embeddings/word_embeddings")
    value = np.array(table.numpy())
    value[7] = np.nan
    table.assign(value)
    results = {r.name: r for r in check.run_checks(model, spec, sig)}
    weights = results["finite_weights"]
    assert not weights.passed and weights.figure == value.shape[1]
    assert table.path in weights.detail


def test_a_nan_difference_fails_the_invariance_checks():
    assert np.isnan(check._worse(0.0, np.array([0.0, np.nan])))
    assert np.isnan(check._worse(np.nan, np.array([1.0])))
    assert check._worse(0.5, np.array([0.25])) == 0.5
    a, b = {"x": np.array([1.0, np.nan])}, {"x": np.array([1.0, 2.0])}
    assert np.isnan(check._max_diff(a, b))


def test_report_json_is_strict_json(tmp_path):
    import json

    from bertc.report import new_report, report_json, write_report

    report = {**new_report("0", "nan", "nan.json", {"inputs": [], "outputs": []}, {}), "checks": [{"name": "masked_invariance", "passed": False, "figure": float("nan"), "threshold": 0.0,
                          "detail": "x"}], "figures": [float("inf"), -float("inf"), np.float64("nan"), 1.5]}
    text = report_json(report)

    def refuse(token):
        raise AssertionError(f"{token} literal in report.json")

    back = json.loads(text, parse_constant=refuse)
    assert back["checks"][0]["figure"] == "nan" and back["figures"] == ["inf", "-inf", "nan", 1.5]
    write_report(tmp_path, report)
    json.loads((tmp_path / "report.json").read_text(), parse_constant=refuse)
    assert "FAIL  masked_invariance    nan" in (tmp_path / "summary.txt").read_text()


def test_nan_on_both_sides_is_the_reference_s_and_the_summary_says_non_finite():
    from bertc.report import _parity_line

    spec, sig, cases, reference = _toy()

    def nan_reference(inputs):
        out = reference(inputs)
        out["logits"][:] = np.nan
        return out

    def nan_backend(inputs):
        out = reference(inputs)
        out["logits"][0, 0] = np.inf
        return out

    backend = Backend("onnx_cpu", "onnx", None, "onnx", "fp32", CPU)
    both = {r.output: r for r in compare(spec, sig, nan_reference, [backend], {backend.name: nan_reference}, cases)}
    assert all("the Keras reference itself has" in p for p in both["logits"].problems)
    line = _parity_line(both["logits"].to_json())
    assert line.startswith("  FAIL") and "non-finite in the Keras reference" in line
    ours = {r.output: r for r in compare(spec, sig, reference, [backend], {backend.name: nan_backend}, cases)}
    assert ours["logits"].non_finite == len(cases) and "(4 non-finite)" in _parity_line(ours["logits"].to_json())
