"""The built ONNX files as a consumer outside bertc uses them (bertc QA report of the artifacts' consumers):

- every padding-free artifact is valid at the opset it declares: at opset 18, ``Split`` takes ``num_outputs``
  (or a ``split`` input); an opset-13-style ``Split`` fails to load in ONNX Runtime;
- ONNX Runtime's free-dimension override (``SessionOptions.add_free_dimension_override_by_name``, the documented
  way to fix a dynamic axis) loads every optimized graph: a ``Range`` fed by ``Cast(Shape)`` to int32 trips ORT's
  shape inference once the dimension is concrete ("All inputs to 'Range' op must be of the same type");
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
    _assert_counts_describe_the_files(out, report)


# --- free-dimension overrides ------------------------------------------------------------------------------

HF = FIXTURES / "hf"
DEBERTA = ["deberta_v3_model", "deberta_v3_seq_cls", "deberta_v2_seq_cls", "deberta_v3_token_cls",
           "deberta_v2_token_cls", "deberta_qa_c2p", "deberta_v3_qa", "deberta_v3_mlm", "deberta_v2_mlm_legacy",
           "deberta_v3_mc"]
OTHERS = ["modernbert_token_cls", "modernbert_mlm", "mpnet_seq_cls", "mpnet_token_cls"]


def _fixture_built(fixture, tmp_path):
    """An imported fixture's spec and built model, with its weights."""
    from bertc.importers import import_spec, load_weights
    from bertc.weights import resolve_weights_path

    path = tmp_path / "spec.json"
    import_spec(HF / fixture, path)
    spec = load_spec(path)
    built = build_model(spec)
    load_weights(built.model, spec, resolve_weights_path(spec.weights, path))
    return spec, built


def _optimized_files(built, tmp_path) -> dict:
    """model.optimized.onnx as the optimize stage writes it (packed projections split, residual biases folded)
    and its padding-free form, written to ``tmp_path``."""
    from bertc.export.onnx import write_onnx
    from bertc.optimize.bias_folding import fold_residual_biases
    from bertc.optimize.projections import separate_projections

    low = lower_model(built, split_weights=True)
    proto, weights, _ = separate_projections(low.proto, low.weights)
    proto, weights, _ = fold_residual_biases(proto, weights)
    files = {"optimized": tmp_path / "model.optimized.onnx", "packed": tmp_path / "model.packed.onnx"}
    write_onnx(proto, weights, files["optimized"])
    write_onnx(padding_free(proto, weights)[0], weights, files["packed"])
    return files


def _fixed_dims_session(path, **dims):
    import onnxruntime as ort

    from bertc.backends import session_options

    options = session_options()
    for name, size in dims.items():
        options.add_free_dimension_override_by_name(name, size)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _assert_fixed_dims_equal_plain(spec, files, batch=3, seq=7):
    feed = _feed(spec, batch, seq, np.random.default_rng(1))
    mask = feed["input_mask"].astype(bool)
    for kind, path in files.items():
        want = _run(ort_session(path), feed)
        for dims in ({"sequence": seq}, {"batch": batch, "sequence": seq}):
            got = _run(_fixed_dims_session(path, **dims), feed)
            for name, value in want.items():
                real = (mask if value.shape[:2] == mask.shape else slice(None))
                np.testing.assert_allclose(got[name][real], value[real], atol=1e-6, rtol=0,
                                           err_msg=f"{kind} {name} {dims}")


@pytest.mark.parametrize("fixture", DEBERTA + OTHERS)
def test_optimized_artifacts_load_with_the_sequence_dimension_fixed(fixture, tmp_path):
    """ORT's free-dimension override of ``sequence`` (and ``batch``) loads the optimized and padding-free graphs
    and gives the plain session's outputs. DeBERTa's disentangled positions wrote Shape -> Cast(int32) -> Squeeze
    -> Range(int32), which ORT's shape inference refuses once the dimension is concrete."""
    spec, built = _fixture_built(fixture, tmp_path)
    _assert_fixed_dims_equal_plain(spec, _optimized_files(built, tmp_path))


POSITION_CASES = {
    "relative_bias": tiny_bert(encoder={**tiny_bert()["encoder"], "max_sequence_length": 12,
                                        "position": {"type": "relative_bias", "num_buckets": 8, "max_distance": 16}}),
    "absolute_offset": tiny_bert(encoder={**tiny_bert()["encoder"], "position": {"type": "absolute", "offset": 2}},
                                 head={"type": "token_classifier", "num_classes": 3}),
    "disentangled": _disentangled(),
}


@pytest.mark.parametrize("case", sorted(POSITION_CASES))
def test_position_ranges_compute_in_int64(case, tmp_path):
    """Every Range of the position schemes runs on int64 (the Shape's type) and is cast after: no Range reads a
    Cast of a Shape, the form ORT refuses with a fixed sequence dimension; the graphs load with it fixed."""
    spec = load_spec(POSITION_CASES[case])
    built = build_model(spec)
    low = lower_model(built)
    ranges = [n for n in _nodes(low.proto.graph) if n.op_type == "Range"]
    assert ranges
    inits = {t.name: t for t in low.proto.graph.initializer}
    for n in ranges:
        start = inits.get(n.input[0])
        assert start is None or start.data_type == 7, f"{n.name}: Range on {start.data_type}, not int64"
    _assert_fixed_dims_equal_plain(spec, _optimized_files(built, tmp_path), seq=8)


# --- report.json's node and operator counts ------------------------------------------------------------------

def _assert_counts_describe_the_files(out, report):
    """Each ONNX artifact's ``nodes`` is its file's node count, subgraph nodes included; ``op_counts`` (where
    recorded) those nodes by operator type (``domain.op`` outside the default domain), summing to ``nodes``; the
    fusion section's ``nodes`` the same figures."""
    import collections

    import onnx

    seen = set()
    for key, a in report["artifacts"].items():
        if a["format"] != "onnx":
            continue
        nodes = _nodes(onnx.load(str(out / a["path"]), load_external_data=False).graph)
        assert a["nodes"] == len(nodes), (key, a["nodes"], len(nodes))
        if "op_counts" in a:
            seen.add(key)
            want = collections.Counter(n.op_type if not n.domain else f"{n.domain}.{n.op_type}" for n in nodes)
            assert a["op_counts"] == dict(want), key
            assert sum(a["op_counts"].values()) == a["nodes"]
        assert report["fusion"]["nodes"][key] == a["nodes"], key
    assert "onnx_optimized" in seen


def test_report_counts_describe_the_files_written(tmp_path, tmp_spec):
    """ModernBERT: the fp32 optimized file computes its packed projections part by part (no Split) and runs its
    local attention in an If; report.json counted the graph before that pass and the If's top level only."""
    from bertc.pipeline import BuildOptions, build

    d = {"name": "modernbert_counts", "encoder": {
        "type": "modernbert", "vocab_size": 64, "hidden_size": 16, "num_layers": 3, "num_attention_heads": 2,
        "intermediate_size": 24, "max_sequence_length": 12, "local_attention": 4, "global_attn_every_n_layers": 3},
        "head": {"type": "token_classifier", "num_classes": 3},
        "export": {"tflite": False, "variants": ["onnx_int8", "onnx_fp16", "onnx_packed"]}}
    out = tmp_path / "out"
    report = build(tmp_spec(d), BuildOptions(out=out, parity=False))
    ops = report["artifacts"]["onnx_optimized"]["op_counts"]
    assert report["fusion"].get("separate_projections") and "If" in ops and "Split" not in ops
    _assert_counts_describe_the_files(out, report)
    # fused_ops: what one run executes (a local layer's If runs the blocked or the plain MultiHeadAttention)
    assert report["fusion"]["fused_ops"]["com.microsoft.MultiHeadAttention"] == 3
    assert ops["com.microsoft.MultiHeadAttention"] > 3
