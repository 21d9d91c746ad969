"""The interface of a build's ONNX files: what a consumer feeds them and reads from them.

Every ONNX artifact of a build lists its inputs and outputs in one order, the signature's (report.json's
``inputs`` / ``outputs``): tf2onnx listed model.onnx's outputs by name, so ``start, end = session.run(None, feeds)``
swapped a span labeler's start and end logits on model.onnx alone (same shapes: nothing failed)."""
import json

import numpy as np
import onnx
import onnxruntime as ort

from conftest import tiny_bert

from bertc.cli import main


def test_every_onnx_artifact_lists_its_outputs_in_the_signatures_order(tmp_spec, tmp_path):
    spec = tiny_bert(head={"type": "span_labeler"})
    spec["export"] = {"tflite": False, "variants": ["onnx_int8", "onnx_packed"]}
    out = tmp_path / "out"
    assert main(["build", str(tmp_spec(spec)), "-o", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    inputs, outputs = [i["name"] for i in report["inputs"]], [o["name"] for o in report["outputs"]]
    assert outputs == ["start_logits", "end_logits"]   # not by name: "end" < "start"
    files = sorted(out.glob("*.onnx"))
    assert {f.name for f in files} >= {"model.onnx", "model.optimized.onnx", "model.optimized.int8.onnx",
                                        "model.packed.onnx"}
    rng = np.random.default_rng(0)
    feeds = {"input_word_ids": rng.integers(1, 50, (2, 8)).astype(np.int32),
             "input_mask": np.ones((2, 8), np.int32), "input_type_ids": np.zeros((2, 8), np.int32)}
    firsts = {}
    for f in files:
        graph = onnx.load(str(f), load_external_data=False).graph
        assert [v.name for v in graph.input] == inputs and [v.name for v in graph.output] == outputs, f.name
        firsts[f.name] = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(firsts["model.onnx"], firsts["model.optimized.onnx"], atol=1e-5)

