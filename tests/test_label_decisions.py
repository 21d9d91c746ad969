"""QA observation: a multi-label classifier (``problem_type`` multi_label_classification: a sigmoid per label, how
transformers' pipeline and ``bertc run`` score it) had its int8 artifacts judged, and tuned, by the argmax alone,
though its users act on each label's sigmoid > 0.5: a flipped label decision beside an unchanged top class passed.
Parity and the int8 tuning now judge its logits by the agreement of every label decision."""
import json
import shutil

import numpy as np

from bertc.backends import CPU, Backend
from bertc.parity import LABEL_DECISIONS, compare, decision_matches, label_decision_outputs
from bertc.signature import OutputInfo
from bertc.spec import load_spec
from conftest import ROOT, tiny_bert
from test_parity import _toy


def test_decisions_count_each_label_of_each_row():
    info = OutputInfo("logits", None, "logits")
    want = np.array([[2.0, -1.0, 0.5], [-3.0, 1.0, -0.01]], np.float32)
    have = np.array([[1.5, -1.2, -0.1], [-2.0, 1.1, 0.02]], np.float32)   # 2 flips: 0.5 -> -0.1, -0.01 -> 0.02
    assert decision_matches(have, want, info, np.ones((2, 4)), 0.0) == (4, 6, 0)
    assert decision_matches(have, want, info, np.ones((2, 4)), 0.01) == (5, 6, 1)   # |-0.01| <= 1% of range 5


def test_a_flipped_label_beside_the_same_top_class_fails_a_multi_label_int8():
    spec, sig, cases, reference = _toy()

    def int8(inputs):   # the top class (1.0) unchanged everywhere, the 0.5 label's logit crosses 0 in one case
        out = reference(inputs)
        if int8.calls == 0:
            out["logits"][:, 2] = -0.1
        int8.calls += 1
        return out
    int8.calls = 0
    backend = Backend("onnx_int8_cpu", "onnx_int8", None, "onnx", "int8", CPU)
    logits = {r.output: r for r in compare(spec, sig, reference, [backend], {backend.name: int8}, cases)}["logits"]
    assert logits.passed and logits.agreement == "argmax"          # what a multi-label model was judged by
    int8.calls = 0
    judged = {r.output: r for r in compare(spec, sig, reference, [backend], {backend.name: int8}, cases,
                                           decisions=frozenset({"logits"}))}["logits"]
    assert judged.agreement == LABEL_DECISIONS and judged.argmax_count == [55, 60]
    assert not judged.passed and judged.problems[0].startswith("label decision agreement (sigmoid > 0.5")


def test_which_builds_are_judged_by_label_decisions(tmp_path):
    multi = load_spec(tiny_bert(head={"type": "classifier", "num_classes": 3}))
    config = json.loads((ROOT / "tests/fixtures/hf/bert_seq_cls/config.json").read_text())
    assert label_decision_outputs(multi, tmp_path) == frozenset()             # no config: softmax
    (tmp_path / "checkpoint_config.json").write_text(json.dumps({**config, "problem_type": "single_label_classification"}))
    assert label_decision_outputs(multi, tmp_path) == frozenset()
    (tmp_path / "checkpoint_config.json").write_text(json.dumps({**config, "problem_type": "multi_label_classification"}))
    assert label_decision_outputs(multi, tmp_path) == frozenset({"logits"})
    assert label_decision_outputs(multi, None) == frozenset()
    one = load_spec(tiny_bert(head={"type": "classifier", "num_classes": 1}))
    assert label_decision_outputs(one, tmp_path) == frozenset()               # one class: score order, as before


def test_a_multi_label_build_reports_label_decisions(tmp_path):
    from bertc.cli import main

    src = tmp_path / "ml"
    shutil.copytree(ROOT / "tests/fixtures/hf/bert_seq_cls", src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "problem_type": "multi_label_classification"}))
    assert main(["import", str(src), "-o", str(tmp_path / "ml.json")]) == 0
    assert main(["build", str(tmp_path / "ml.json"), "-o", str(tmp_path / "out"), "--no-tflite", "-q"]) == 0
    report = json.loads((tmp_path / "out/report.json").read_text())
    int8 = next(r for r in report["parity"]["results"] if r["backend"] == "onnx_int8_cpu")
    assert int8["agreement"] == LABEL_DECISIONS and int8["argmax_count"][1] % 3 == 0
    assert "onnx_int8_cpu        logits" in (tmp_path / "out/summary.txt").read_text()
    assert " label decisions " in next(line for line in (tmp_path / "out/summary.txt").read_text().splitlines()
                                       if "onnx_int8_cpu" in line and "PASS" in line)
