"""The built ONNX files as a consumer outside bertc uses them (bertc QA report of the artifacts' consumers):

- every padding-free artifact is valid at the opset it declares: at opset 18, ``Split`` takes ``num_outputs``
  (or a ``split`` input); an opset-13-style ``Split`` fails to load in ONNX Runtime;
- ONNX Runtime's free-dimension override (``SessionOptions.add_free_dimension_override_by_name``, the documented
  way to fix a dynamic axis) loads every optimized graph: a ``Range`` fed by ``Cast(Shape)`` to int32 trips ORT's
  data propagation once the dimension is concrete ("All inputs to 'Range' op must be of the same type");
- report.json's ``nodes`` and ``op_counts`` describe the file written (subgraph nodes included)."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_bert

from bertc.build import build_model
from bertc.optimize.lower import lower_model
from bertc.optimize.padding_free import padding_free
from bertc.optimize.runtime import ort_session
from bertc.spec import load_spec

FIXTURES = Path(__file__).parent / "fixtures"
ATOL = 1e-5


def _graphs(graph):
    """``graph`` and, recursively, every subgraph of its nodes (If branches, Loop bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graphs(sub)


def _nodes(graph):
    return [n for g in _graphs(graph) for n in g.node]


def _feed(spec, batch, seq, rng, dtype=np.int32):
    from bertc.inputs import make_inputs

    mask = (np.arange(seq)[None, :] < np.array([seq] + [max(1, seq - 2 - k) for k in range(batch - 1)])[:, None])
    inputs = make_inputs(spec, batch, seq, rng, mask=mask.astype(np.int32))
    return {k: v.astype(dtype) for k, v in inputs.items()}


def _run(session, feed):
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


# --- padding-free artifacts at opset 18 ---------------------------------------------------------------

def _disentangled():
    return json.loads((FIXTURES / "disentangled" / "deberta_v3_shared.json").read_text())


OPSET18_CASES = {
    "bert": tiny_bert(),
    "bert_tokens": tiny_bert(head={"type": "token_classifier", "num_classes": 3}),
    "disentangled": _disentangled(),
    "modernbert": {"name": "modernbert_pf", "encoder": {
        "type": "modernbert", "vocab_size": 64, "hidden_size": 16, "num_layers": 3, "num_attention_heads": 2,
        "intermediate_size": 24, "max_sequence_length": 12, "local_attention": 4, "global_attn_every_n_layers": 3},
        "head": {"type": "classifier", "num_classes": 3, "pooling": "mean"}},
}


@pytest.mark.parametrize("case", sorted(OPSET18_CASES))
@pytest.mark.parametrize("per_sequence", [0, None], ids=["per_sequence", "batched"])
def test_padding_free_graph_is_valid_at_opset_18(case, per_sequence):
    """Every Split the padding-free pass writes says how many parts (num_outputs from opset 18 on); the graph
    passes onnx.checker's full check and ONNX Runtime's load, and equals the lowered graph on real tokens."""
    import onnx

    spec = load_spec(OPSET18_CASES[case])
    low = lower_model(build_model(spec), opset=18)
    packed, _ = padding_free(low.proto, per_sequence=per_sequence)
    assert {(o.domain, o.version) for o in packed.opset_import if o.domain in ("", "ai.onnx")} == {("", 18)}
    splits = [n for n in _nodes(packed.graph) if n.op_type == "Split"]
    assert splits or case == "disentangled"
    for n in splits:
        assert len(n.input) > 1 and n.input[1] or any(a.name == "num_outputs" for a in n.attribute), n.name
    onnx.checker.check_model(packed, full_check=True)
    rng = np.random.default_rng(0)
    feed = _feed(spec, 3, 8, rng)
    mask = feed["input_mask"].astype(bool)
    want = _run(ort_session(low.proto.SerializeToString()), feed)
    got = _run(ort_session(packed.SerializeToString()), feed)
    for name, value in want.items():
        if value.shape[:2] == mask.shape:
            np.testing.assert_allclose(got[name][mask], value[mask], atol=ATOL, rtol=0, err_msg=name)
        else:
            np.testing.assert_allclose(got[name], value, atol=ATOL, rtol=0, err_msg=name)


def test_build_at_opset_18_writes_the_padding_free_variants(tmp_path, tmp_spec):
    """``bertc build --opset 18`` with the padding-free variants: every ONNX artifact declares opset 18, loads in
    ONNX Runtime and passes parity (it failed to load: an opset-13-style Split in the packed graph)."""
    import onnx

    from bertc.pipeline import BuildOptions, build

    d = tiny_bert(head={"type": "token_classifier", "num_classes": 3})
    d["export"] = {"tflite": False, "variants": ["onnx_int8", "onnx_packed", "onnx_packed_int8"]}
    out = tmp_path / "out"
    report = build(tmp_spec(d), BuildOptions(out=out, opset=18))
    onnx_files = {k: a for k, a in report["artifacts"].items() if a["format"] == "onnx"}
    assert {"onnx", "onnx_optimized", "onnx_int8", "onnx_packed", "onnx_packed_int8"} <= set(onnx_files)
    for key, a in onnx_files.items():
        model = onnx.load(str(out / a["path"]))
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18], key
        assert a["opset"] == 18, key
    assert report["parity"]["passed"]
    assert {"onnx_packed_cpu", "onnx_packed_int8_cpu"} <= set(report["parity"]["backends"])
