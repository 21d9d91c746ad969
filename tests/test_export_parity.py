"""Every bundled spec exports to ONNX and TFLite and passes parity; broken artifacts are caught."""
import hashlib
import json

import onnx
import pytest
from onnx import numpy_helper

import bertc
from bertc.cli import main
from bertc.errors import EXIT_PARITY_FAILED, InputError
from conftest import ROOT, TINY_SPECS

# sha256 of every artifact of each tiny bundled spec (tools/pin_artifacts.py writes it; a change to what bertc
# computes regenerates it, in a commit that says why)
PINNED = json.loads((ROOT / "tests" / "fixtures" / "artifact_sha256.json").read_text())


@pytest.mark.parametrize("path", TINY_SPECS, ids=lambda p: p.stem)
def test_spec_builds_exports_and_passes_parity(path, tmp_path):
    out = tmp_path / "out"
    assert main(["build", str(path), "-o", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed"
    parity = report["parity"]
    assert {"onnx_cpu", "onnx_optimized_cpu", "onnx_int8_cpu", "tflite"} <= set(parity["backends"])
    assert all(r["passed"] and r["cases"] == 8 for r in parity["results"])  # 6 right-padded + 2 random-mask cases
    fp32 = [r for r in parity["results"] if r["precision"] == "fp32"]
    assert {r["criterion"] for r in fp32} == {"tolerance"} and max(r["max_abs"] for r in fp32) <= 1e-4
    assert all(r["criterion"] == "task" for r in parity["results"] if r["precision"] != "fp32")
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    names = [i["name"] for i in report["inputs"]]
    assert [i.name for i in model.graph.input] == names
    assert sorted(o.name for o in model.graph.output) == sorted(o["name"] for o in report["outputs"])
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]
    assert any(i.name == "layer_0/attention/query/kernel" or i.name.startswith("shared_layer/")
               for i in model.graph.initializer)
    # the files bertc writes say which onnxruntime computes them right (1.16-1.20 load them and compute padded
    # batches wrongly; found by a tester) and who wrote them
    from bertc.onnx_graph import MIN_ONNXRUNTIME
    from bertc.requirements import DECLARED

    assert f"onnxruntime>={MIN_ONNXRUNTIME}," in DECLARED["cpu"][0]
    for name in ("model.optimized.onnx", "model.optimized.int8.onnx"):
        written = onnx.load(str(out / name), load_external_data=False)
        assert {p.key: p.value for p in written.metadata_props} == {"bertc.min_onnxruntime": MIN_ONNXRUNTIME}
        assert (written.producer_name, written.producer_version) == ("bertc", bertc.__version__)
    hashes = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(out.glob("model.*"))
              if f.suffix in (".keras", ".onnx", ".tflite")}
    assert hashes == PINNED[path.stem], (
        "the artifacts' bytes changed: if intended, run tools/pin_artifacts.py and say why in the commit")


@pytest.fixture(scope="module")
def canonical(tmp_path_factory):
    out = tmp_path_factory.mktemp("canonical") / "out"
    assert main(["build", "specs/canonical_classifier.json", "-o", str(out), "-q", "--int64-inputs",
                 "--opset", "18"]) == 0
    return out


def test_int64_inputs_and_opset_option(canonical):
    model = onnx.load(str(canonical / "model.onnx"))
    assert model.opset_import[0].version == 18 or any(o.version == 18 for o in model.opset_import if o.domain == "")
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in model.graph.input)
    # recorded: OUT/spec.json, report.json's inputs and summary.txt said int32 / opset 17, and a build of
    # OUT/spec.json made other files
    from bertc.spec import load_spec

    export = load_spec(canonical / "spec.json").export
    assert (export.opset, export.input_dtype) == (18, "int64")
    report = json.loads((canonical / "report.json").read_text())
    assert all(i["dtype"] == "int32" and i["onnx_dtype"] == "int64" for i in report["inputs"])
    assert "input_word_ids int32 (ONNX int64) ['batch', 'sequence']" in (canonical / "summary.txt").read_text()


def test_perturbed_onnx_weight_fails_parity(canonical, capsys):
    model = onnx.load(str(canonical / "model.onnx"))
    for init in model.graph.initializer:
        if init.name == "classifier/kernel":
            w = numpy_helper.to_array(init).copy()
            w[0, 0] += 0.5
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(canonical / "model.onnx"))
    assert main(["parity", str(canonical)]) == EXIT_PARITY_FAILED
    err = capsys.readouterr().err
    assert "parity failed" in err and "- onnx_cpu / logits: batch 1 x seq 1: max abs diff" in err
    assert "tflite" not in err.split("parity failed")[1]  # the untouched backend still agrees
    report = json.loads((canonical / "report.json").read_text())
    assert report["status"] == "failed"
    bad = [r for r in report["parity"]["results"] if not r["passed"]]
    assert [(r["backend"], r["output"]) for r in bad] == [("onnx_cpu", "logits")]
    assert bad[0]["max_abs"] > 1e-3
    # the re-run judges the build's own inputs (recorded), and says what changed since the build
    assert report["parity"]["inputs"]["grid"] == {"kind": "random ids", "cases": len(report["parity"]["grid"])}
    assert report["parity"]["changed_since_build"] == ["model.onnx"]
    # a looser tolerance may pass it: a diagnostic, kept beside the build's verdict, which stays the spec's (bertc
    # run serves by it: a failed build is not made runnable by a re-run under looser tolerances)
    capsys.readouterr()
    assert main(["parity", str(canonical), "--atol", "1"]) == 0
    printed = capsys.readouterr().out
    assert "[PASSED]" in printed and "re-judged by bertc parity with atol 1 instead of the spec's" in printed
    assert "the build's status stays 'failed', its spec's verdict" in printed
    report = json.loads((canonical / "report.json").read_text())
    assert report["status"] == "failed" and "tolerance_override" not in report["parity"]
    assert report["parity_other_tolerances"]["tolerance_override"] == {"atol": 1.0, "rtol": None}
    assert report["parity_other_tolerances"]["passed"] and not report["parity"]["passed"]
    summary = (canonical / "summary.txt").read_text()
    assert "[FAILED]" in summary and "last bertc parity --atol 1: passed (a diagnostic under other tolerances" in summary
    assert "changed since the build (not what it wrote or ran): model.onnx" in summary
    with pytest.raises(InputError, match="the build's status is 'failed'"):
        bertc.Runtime(canonical)
    # and the spec's own verdict, run again, replaces the build's and drops the diagnostic
    assert main(["parity", str(canonical)]) == EXIT_PARITY_FAILED
    assert "parity_other_tolerances" not in json.loads((canonical / "report.json").read_text())


def test_tflite_error_names_op_and_layer():
    import tensorflow as tf

    from bertc.export.tflite import explain_converter_error, graph_ops

    @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32)])
    def f(x):
        with tf.name_scope("layer_0/feedforward"):
            return tf.math.erfc(x)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with pytest.raises(Exception) as info:
        converter.convert()
    message = explain_converter_error(str(info.value), graph_ops(f.get_concrete_function()))
    assert "tf.Erfc" in message and "layer_0/feedforward" in message



def test_tflite_fp16_keeps_graph_constants_beyond_fp16_range(tmp_path, tmp_spec):
    """Max pooling fills padding with -1e9 (weightedmean counts from +1e9): the fp16 converter saturates such a
    graph constant to -65504 / 65504 rather than writing inf. It depends on no weight, so the weights are written
    around it and every pooling mode (here all six, concatenated) builds model.fp16.tflite and passes parity."""
    from bertc.components.heads import POOLING_MODES
    from conftest import tiny_bert

    d = tiny_bert(head={"type": "sentence_embedding", "pooling": list(POOLING_MODES)})
    d["export"] = {"variants": ["tflite_fp16"]}
    out = tmp_path / "out"
    assert main(["build", str(tmp_spec(d)), "-o", str(out), "-q", "--no-onnx"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"]["tflite_fp16"]["path"] == "model.fp16.tflite"
    fp16 = [r for r in report["parity"]["results"] if r["backend"] == "tflite_fp16"]
    assert fp16 and all(r["passed"] for r in fp16)


def test_fp16_forms_of_a_graph_constant():
    from bertc.export.tflite_weights import _fp16_forms

    assert _fp16_forms(-1e9) == {float("-inf"), -65504.0} and _fp16_forms(1e9) == {float("inf"), 65504.0}
    assert _fp16_forms(0.5) == {0.5} and _fp16_forms(65504.0) == {65504.0} and _fp16_forms(1e-9) == {0.0}
