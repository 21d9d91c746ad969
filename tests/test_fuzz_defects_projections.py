"""A defect found by fuzzing the spec (QA report N): shared windowed layers in the optimized graph."""
import numpy as np
import pytest

from bertc.build import build_model
from bertc.inputs import make_inputs
from bertc.spec import load_spec

SHARED_WINDOWED = {"name": "shared_windowed", "encoder": {
    "type": "scaffold", "hidden_size": 8, "num_layers": 2,
    "embedding": {"type": "standard", "vocab_size": 30, "max_sequence_length": 8},
    "hidden": {"type": "scaffold", "attention": {"type": "windowed", "num_heads": 2},
               "feedforward": {"type": "dense", "intermediate_size": 8}},
    "share_layers": True}}


@pytest.mark.parametrize("split_weights", [False, True])
def test_shared_layers_packed_projection_slices_are_emitted_once(split_weights):
    """Every use of a shared layer's packed qkv kernel sliced it again under the same name: the optimized graph
    held 'shared_layer/attention/qkv/kernel[0:8]' twice and failed onnx.checker (initializer name is not unique)."""
    import onnx

    from bertc.optimize.lower import lower_model
    from bertc.optimize.onnx_artifacts import ort_session
    from bertc.optimize.projections import separate_projections

    spec = load_spec(SHARED_WINDOWED)
    built = build_model(spec)
    low = lower_model(built, split_weights=split_weights)
    proto, weights, n = separate_projections(low.proto, low.weights)
    assert n == 2
    names = [t.name for t in proto.graph.initializer] + [name for name, _ in weights]
    assert len(names) == len(set(names))
    if not split_weights:
        onnx.checker.check_model(proto)
        session = ort_session(proto.SerializeToString())
        outputs = [o.name for o in session.get_outputs()]
        inputs = make_inputs(spec, 2, 8, np.random.default_rng(0))
        want = built.model(inputs, training=False)
        for name, got in zip(outputs, session.run(outputs, inputs)):
            np.testing.assert_allclose(got, np.asarray(want[name]), atol=1e-5, err_msg=name)
