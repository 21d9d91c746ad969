"""Defects found by fuzzing the spec (QA report N): one attention head in the portable model.onnx, and the parity
message of a backend that cannot run a case."""
import numpy as np
import pytest

from bertc import signature_of
from bertc.build import build_model
from bertc.inputs import make_inputs
from bertc.spec import load_spec

ONE_HEAD = {
    "bert": {"name": "one_head_bert", "encoder": {
        "type": "bert", "vocab_size": 30, "hidden_size": 8, "num_layers": 1, "num_attention_heads": 1,
        "intermediate_size": 8, "max_sequence_length": 12}},
    "talking_heads": {"name": "one_head_talking", "encoder": {
        "type": "scaffold", "hidden_size": 8, "num_layers": 1,
        "embedding": {"type": "standard", "vocab_size": 30, "max_sequence_length": 12},
        "hidden": {"type": "scaffold", "attention": {"type": "talking_heads", "num_heads": 1},
                   "feedforward": {"type": "dense", "intermediate_size": 8}}}},
}


@pytest.mark.parametrize("kind", sorted(ONE_HEAD))
def test_one_head_model_onnx_runs_at_every_sequence_length(kind, tmp_path):
    """tf2onnx exported merge_heads' Transpose + Reshape wrongly for one head (a Reshape to [0, 0, D] of the
    (B, 1, S, D) tensor): model.onnx failed in ONNX Runtime for any sequence longer than one token."""
    from bertc.export.onnx import export_onnx
    from bertc.optimize.onnx_artifacts import ort_session

    spec = load_spec(ONE_HEAD[kind])
    built = build_model(spec)
    export_onnx(built.model, signature_of(spec), tmp_path / "model.onnx")
    session = ort_session((tmp_path / "model.onnx").read_bytes())
    names = [o.name for o in session.get_outputs()]
    for batch, seq in ((1, 1), (2, 9), (1, 12)):
        inputs = make_inputs(spec, batch, seq, np.random.default_rng(seq))
        want = built.model(inputs, training=False)
        got = dict(zip(names, session.run(names, inputs)))
        for name in names:
            np.testing.assert_allclose(got[name], np.asarray(want[name]), atol=1e-5, err_msg=f"{name} at {seq}")


def test_a_run_error_keeps_what_went_wrong():
    """ONNX Runtime's message starts with a long source location and C++ signature; the 300-character cut
    dropped the shapes that say what went wrong."""
    from bertc.parity import run_error_text

    exc = RuntimeError(
        "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Reshape node. Name:'Reshape_64' "
        "Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/reshape_helper.h:91 "
        "onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, onnxruntime::TensorShapeVector&, "
        "bool) input_shape_size == requested_shape_size was false. The input tensor cannot be reshaped to the "
        "requested shape. Input shape:{1,1,9,32}, requested shape:{1,1,32}\n")
    text = run_error_text(exc)
    assert "Input shape:{1,1,9,32}, requested shape:{1,1,32}" in text and "Reshape_64" in text
    assert "onnxruntime_src" not in text and "\n" not in text
    long = run_error_text(RuntimeError("x" * 1000 + " the end"))
    assert len(long) <= 400 and long.endswith("the end") and long.startswith("xxx")

