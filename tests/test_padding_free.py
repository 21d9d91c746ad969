"""The padding-free artifact (bertc/optimize/padding_free.py): per-token work on the kept tokens only.

Against today's optimized artifact (the same lowered graph, unpacked), for every bundled spec (tiny copies) and
every position kind and head: real tokens equal, padded positions of sequence outputs exactly 0, every other
output (pooled, [CLS] logits, masked LM, sentence embeddings) equal, for right-padded, left-padded and holed
masks (a row with no real token among them)."""
import copy
import json

import numpy as np
import pytest

from conftest import TINY_SPECS, tiny_bert

from bertc.build import build_model
from bertc.inputs import make_inputs
from bertc.optimize.lower import lower_model
from bertc.optimize.padding_free import PADDED_POSITIONS, PER_SEQUENCE_ABOVE, padding_free
from bertc.optimize.runtime import ort_session
from bertc.spec import load_spec

ATOL = 1e-5
FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


def _rotary(head):
    from test_rotary import SPEC

    d = copy.deepcopy(SPEC)
    d["head"] = head
    return d


def _disentangled(name, head="keep"):
    d = json.loads((FIXTURES / "disentangled" / f"{name}.json").read_text())
    if head != "keep":
        d["head"] = head
    return d


ENC = tiny_bert()["encoder"]
EXTRA = {
    "relative_bias": tiny_bert(encoder={**ENC, "max_sequence_length": 12,
                                        "position": {"type": "relative_bias", "num_buckets": 8, "max_distance": 16}}),
    "relative_bias_pretrainer": tiny_bert(encoder={**ENC, "max_sequence_length": 12, "position": {
        "type": "relative_bias", "num_buckets": 8, "max_distance": 16}},
        head={"type": "pretrainer", "num_token_predictions": 3}),
    "absolute_from_mask": tiny_bert(encoder={**ENC, "position": {"type": "absolute", "offset": 2, "from_mask": True}}),
    "absolute_offset_tokens": tiny_bert(encoder={**ENC, "position": {"type": "absolute", "offset": 2}},
                                        head={"type": "token_classifier", "num_classes": 3}),
    "sentence_mean": tiny_bert(head={"type": "sentence_embedding", "pooling": "mean", "normalize": True}),
    "sentence_max": tiny_bert(head={"type": "sentence_embedding", "pooling": "max"}),
    "sentence_cls": tiny_bert(head={"type": "sentence_embedding", "pooling": "cls"}),
    # positions counted from the mask (weightedmean, lasttoken), several modes concatenated, a Dense after
    "sentence_concat": tiny_bert(head={"type": "sentence_embedding", "normalize": True, "dense": [{"units": 12}],
                                       "pooling": ["max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]}),
    "sentence_lasttoken": tiny_bert(head={"type": "sentence_embedding", "pooling": "lasttoken"}),
    "encoder_only": tiny_bert(head=None),
    # a per-token head over flattened rows (Reshape to (B x S, W), one Gemm against the tied word table, Reshape
    # back): its output is 0.0 at padded positions like any per-token output, and it runs on the packed rows
    "masked_lm": tiny_bert(head={"type": "masked_lm"}),
    "masked_lm_plain": tiny_bert(head={"type": "masked_lm", "decoder_bias": False,
                                       "transform": {"activation": "relu", "bias": False}}),
    "rotary_classifier": _rotary({"type": "classifier", "num_classes": 3}),
    "rotary_tokens": _rotary({"type": "token_classifier", "num_classes": 3}),
    "rotary_encoder": _rotary(None),
    "disentangled_shared": _disentangled("deberta_v3_shared"),
    "disentangled_own_proj_tokens": _disentangled("deberta_own_proj", {"type": "token_classifier", "num_classes": 3}),
    # windowed attention (local layers 1 and 2; the optimized graph's blocked form is unblocked for packing)
    "modernbert_mean": {"name": "modernbert_pf", "encoder": {
        "type": "modernbert", "vocab_size": 64, "hidden_size": 16, "num_layers": 3, "num_attention_heads": 2,
        "intermediate_size": 24, "max_sequence_length": 12, "local_attention": 4, "global_attn_every_n_layers": 3},
        "head": {"type": "classifier", "num_classes": 3, "pooling": "mean"}},
}
CASES = {p.stem: p for p in TINY_SPECS}
CASES.update(EXTRA)


def masks(batch: int, seq: int, rng) -> dict:
    lengths = rng.integers(1, seq + 1, size=batch)
    lengths[0] = seq
    right = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    holes = rng.integers(0, 2, size=(batch, seq)).astype(np.int32)
    holes[1, 0] = 0
    holes[-1] = 0                                    # a row without any real token
    return {"right-padded": right, "left-padded": right[:, ::-1].copy(), "holes": holes}


def inputs_for(spec, mask, rng, dtype=np.int32) -> dict:
    """make_inputs with ``mask`` (which may have a row without real tokens: made with one, then set)."""
    some = mask.copy()
    some[~some.any(axis=1), 0] = 1
    inputs = make_inputs(spec, mask.shape[0], mask.shape[1], rng, mask=some)
    inputs["input_mask"] = mask
    return {k: v.astype(dtype) for k, v in inputs.items()}


def lowered(case):
    source = CASES[case]
    spec = load_spec(source)
    built = build_model(spec)
    return spec, built, lower_model(built)


def run(proto, inputs):
    session = ort_session(proto.SerializeToString())
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_padding_free_equals_todays_artifact_for_any_mask(case):
    """Both attention forms: per sequence (``per_sequence=0``: at any S) and the padded layout (the default at
    S = 8, below PER_SEQUENCE_ABOVE)."""
    spec, built, low = lowered(case)
    packed, report = padding_free(low.proto)
    looped, _ = padding_free(low.proto, per_sequence=0)
    rng = np.random.default_rng(7)
    seq = min(spec.encoder.max_sequence_length, 8)
    for kind, mask in masks(4, seq, rng).items():
        inputs = inputs_for(spec, mask, rng)
        want, got = run(low.proto, inputs), run(packed, inputs)
        assert list(got) == list(want)
        for name, value in run(looped, inputs).items():
            np.testing.assert_allclose(value, got[name], atol=ATOL, rtol=0, err_msg=f"{case} {kind} {name} (loop)")
        for info in built.signature.outputs:
            a, b = want[info.name], got[info.name]
            assert b.shape == a.shape and b.dtype == a.dtype, (kind, info.name)
            if info.seq_axis is None:
                np.testing.assert_allclose(b, a, atol=ATOL, rtol=0, err_msg=f"{case} {kind} {info.name}")
                continue
            real = np.moveaxis(b, info.seq_axis, 1)[mask == 1], np.moveaxis(a, info.seq_axis, 1)[mask == 1]
            np.testing.assert_allclose(real[0], real[1], atol=ATOL, rtol=0, err_msg=f"{case} {kind} {info.name}")
            assert not np.moveaxis(b, info.seq_axis, 1)[mask == 0].any(), f"{case} {kind} {info.name}: padding not 0"
    # the hidden states are packed: every projection and feedforward MatMul of the full layers runs packed
    assert report.packed.get("MatMul", 0) + report.packed.get("com.microsoft.EmbedLayerNormalization", 0) > 0
    assert [n.op_type for n in packed.graph.node][-1] == "If"      # no padding: today's graph (the fast path)
    unpacked, _ = padding_free(low.proto, fast_path=False)
    assert "com.microsoft.Attention" not in {n.op_type for n in unpacked.graph.node}


EMPTY = "rows without a real token"


@pytest.mark.parametrize("case, kept", [("classifier", ["first token", EMPTY]), ("token_classifier", []),
                                        ("pretrainer", ["first token", "masked_lm_positions", EMPTY]),
                                        ("sentence_mean", []), ("encoder_only", ["first token", EMPTY])])
def test_rows_kept_are_those_read_by_position(case, kept):
    """Padding the outputs read by position (pooler / [CLS], masked positions) is computed, nothing else."""
    _, _, low = lowered(case)
    _, report = padding_free(low.proto)
    assert report.kept_rows == kept
    assert report.to_json()["padded_positions"] == PADDED_POSITIONS == "zeros"


@pytest.mark.parametrize("fast_path", [True, False])
def test_all_real_tokens_every_position_is_todays(fast_path):
    """Without padding the artifact runs today's graph itself (bit for bit); the packed graph alone agrees too."""
    spec, built, low = lowered("token_classifier")
    packed, _ = padding_free(low.proto, fast_path=fast_path)
    rng = np.random.default_rng(1)
    inputs = inputs_for(spec, np.ones((2, 8), np.int32), rng)
    got, want = run(packed, inputs)["logits"], run(low.proto, inputs)["logits"]
    if fast_path:
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_what_runs_packed_and_what_on_the_padded_layout():
    """BERT's layer: projections, feedforward and layer norms packed; attention per sequence for long batches (an
    If per layer: a Loop over the rows on each sequence's kept tokens, or the padded (B, S) layout), or always on
    the padded layout (``per_sequence=None``: the fp16 / CUDA form)."""
    _, _, low = lowered("token_classifier")
    packed, report = padding_free(low.proto, fast_path=False)
    ops = {n.op_type for n in packed.graph.node}
    assert {"NonZero", "If"} <= ops and not {"Loop", "MultiHeadAttention"} & ops
    branches = [{n.op_type for n in a.g.node} for n in packed.graph.node if n.op_type == "If" for a in n.attribute]
    assert len(branches) == 4 and all(("ConcatFromSequence" in b) != ("MultiHeadAttention" in b) for b in branches)
    # the per-sequence branch: an If between the Loop without key masks and the one with them
    loops = [[{n.op_type for n in a.g.node} for a in n.attribute] for n in packed.graph.node if n.op_type == "If"
             for b in n.attribute for n in b.g.node if n.op_type == "If"]
    assert loops == [[{"Loop"}, {"Loop"}]] * 2
    assert report.attention_rewritten == report.per_sequence == 2 and report.padded == {}
    assert report.packed["com.microsoft.MultiHeadAttention (per sequence)"] == 2
    assert report.packed["MatMul"] == 2 * 4 + 1 and report.packed["LayerNormalization"] == 4 + 1
    assert report.to_json()["attention"].startswith(f"2 per sequence when S > {PER_SEQUENCE_ABOVE}")
    padded, report = padding_free(low.proto, fast_path=False, per_sequence=None)
    assert {"NonZero", "MultiHeadAttention"} <= {n.op_type for n in padded.graph.node}
    assert report.attention_rewritten == 2 and report.per_sequence == 0
    assert report.padded == {"com.microsoft.MultiHeadAttention": 2}
    assert report.to_json()["attention"] == "on the padded layout"


@pytest.mark.parametrize("case", ["relative_bias", "rotary_tokens", "disentangled_shared", "classifier"])
def test_per_sequence_attention_equals_the_padded_layout(case):
    """The two attention forms agree on real tokens for any mask, attention biases (relative, disentangled) and
    rotary positions included, and the default graph takes the Loop above PER_SEQUENCE_ABOVE."""
    spec, built, low = lowered(case)
    loop, report = padding_free(low.proto, fast_path=False, per_sequence=0)
    padded, _ = padding_free(low.proto, fast_path=False, per_sequence=None)
    assert report.per_sequence >= 1
    rng = np.random.default_rng(3)
    seq = min(spec.encoder.max_sequence_length, 8)
    for kind, mask in masks(5, seq, rng).items():
        inputs = inputs_for(spec, mask, rng)
        a, b = run(padded, inputs), run(loop, inputs)
        for name in a:
            np.testing.assert_allclose(b[name], a[name], atol=ATOL, rtol=0, err_msg=f"{case} {kind} {name}")


def test_the_loop_runs_above_the_threshold(tmp_path):
    """S = 12 with ``per_sequence=10``: the Loop's branch runs (ORT's profile names it), S = 8 the padded one."""
    import onnxruntime as ort

    spec, built, low = lowered("classifier")
    graph, _ = padding_free(low.proto, fast_path=False, per_sequence=10)
    rng = np.random.default_rng(4)
    ran = {}
    for seq in (8, 12):
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(tmp_path / f"profile_{seq}")
        session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
        session.run(None, inputs_for(spec, masks(3, seq, rng)["holes"], rng))
        events = json.loads(__import__("pathlib").Path(session.end_profiling()).read_text())
        ran[seq] = {e["args"].get("op_name") for e in events if e.get("cat") == "Node"}
    assert "Loop" in ran[12] and "Loop" not in ran[8]
    # each Loop names its condition (a constant true): ORT's symbolic_shape_infer failed on the empty one ONNX
    # allows (KeyError ''), and so on every packed file (found by a tester)
    def nodes(g):
        for n in g.node:
            yield n
            for a in n.attribute:
                yield from (x for sub in ([a.g] if a.HasField("g") else list(a.graphs)) for x in nodes(sub))

    loops = [n for n in nodes(graph.graph) if n.op_type == "Loop"]
    assert loops and all(n.input[1] for n in loops)


def _ran(graph, inputs, tmp_path, tag) -> set:
    """The names of the nodes ORT ran (its profile) for ``inputs``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / tag)
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    events = json.loads(__import__("pathlib").Path(session.end_profiling()).read_text())
    return {e["name"] for e in events if e.get("cat") == "Node"}, outputs


def test_per_sequence_attention_without_key_mask_when_every_kept_token_is_real(tmp_path):
    """Right padding (real first tokens): the Loop whose MultiHeadAttention has no key mask (ORT's flash kernel)
    runs; a kept padded first token (left padding under a pooler) or a row without a real token: the masked one.
    Both agree with the padded layout; an attention bias (relative positions) always keeps the mask."""
    spec, built, low = lowered("classifier")
    loop, report = padding_free(low.proto, fast_path=False, per_sequence=0)
    padded, _ = padding_free(low.proto, fast_path=False, per_sequence=None)
    assert report.unmasked == report.per_sequence == 1    # the last layer: the first token's query alone
    assert "; 1 of them without a key mask" in report.to_json()["attention"]
    rng = np.random.default_rng(5)
    for kind, mask in masks(4, 8, rng).items():
        inputs = inputs_for(spec, mask, rng)
        ran, got = _ran(loop, inputs, tmp_path, kind)
        unmasked = any("unmasked_sequences" in name for name in ran)
        masked = any("/sequences_" in name for name in ran)
        assert (unmasked, masked) == ((True, False) if kind == "right-padded" else (False, True)), kind
        want = run(padded, inputs)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=ATOL, rtol=0, err_msg=f"{kind} {name}")
    _, _, low = lowered("relative_bias")
    _, report = padding_free(low.proto, fast_path=False, per_sequence=0)
    assert report.per_sequence >= 1 and report.unmasked == 0


@pytest.mark.parametrize("case", ["sentence_mean", "token_classifier", "classifier"])
def test_rows_without_kept_tokens_and_empty_batches(case):
    """Nothing reads padded rows by position (mean pooling, token tags): a row without a real token keeps no
    token, first in the batch too; an empty batch and empty sequences run today's graph (no padding to remove)."""
    spec, built, low = lowered(case)
    rng = np.random.default_rng(6)
    for per_sequence in (0, None):
        packed, _ = padding_free(low.proto, per_sequence=per_sequence)
        mask = np.ones((3, 8), np.int32)
        mask[0], mask[1, 5:] = 0, 0
        inputs = inputs_for(spec, mask, rng)
        want, got = run(low.proto, inputs), run(packed, inputs)
        for info in built.signature.outputs:
            a, b = want[info.name], got[info.name]
            if info.seq_axis is None:
                np.testing.assert_allclose(b, a, atol=ATOL, rtol=0, err_msg=f"{case} {info.name}")
            else:
                real = mask == 1
                np.testing.assert_allclose(np.moveaxis(b, info.seq_axis, 1)[real],
                                           np.moveaxis(a, info.seq_axis, 1)[real], atol=ATOL, rtol=0,
                                           err_msg=f"{case} {info.name}")
        for shape in ((0, 8),) + (((2, 0),) if case == "sentence_mean" else ()):   # a pooler reads token 0
            empty = {k: np.zeros(shape, np.int32) for k in inputs}
            want, got = run(low.proto, empty), run(packed, empty)
            assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}, (case, shape)


MLM_FIXTURES = sorted(p.name for p in (FIXTURES / "hf").iterdir() if p.name.endswith(("_mlm", "_mlm_legacy")))


@pytest.mark.parametrize("name", MLM_FIXTURES)
def test_imported_masked_lm_heads_run_packed_and_give_zeros_at_padding(name, tmp_path):
    """Every family's masked LM (BERT, ALBERT, RoBERTa, DistilBERT, ELECTRA, MPNet, DeBERTa, ModernBERT) with its
    trained weights: the head (transform, then the tied decoder's Gemm over flattened rows) runs on the kept rows,
    its logits are today's at real tokens and exactly 0.0 at padded positions (the head of a zero or spare row is
    not zero: a decoder bias, a layer norm's beta)."""
    from bertc.importers import import_spec, load_weights
    from bertc.weights import resolve_weights_path

    import_spec(FIXTURES / "hf" / name, tmp_path / "spec.json")
    spec = load_spec(tmp_path / "spec.json")
    assert spec.head.type == "masked_lm"
    built = build_model(spec)
    assert load_weights(built.model, spec, resolve_weights_path(spec.weights, tmp_path / "spec.json")).loaded
    low = lower_model(built)
    rng = np.random.default_rng(8)
    for per_sequence in (PER_SEQUENCE_ABOVE, 0):
        packed, report = padding_free(low.proto, per_sequence=per_sequence)
        assert report.packed.get("Gemm") == 1 and "Gemm" not in report.padded, report.to_json()
        assert not {"Shape", "Concat"} & set(report.padded), report.to_json()
        for kind, mask in masks(4, 8, rng).items():
            inputs = inputs_for(spec, mask, rng)
            want, got = run(low.proto, inputs)["logits"], run(packed, inputs)["logits"]
            np.testing.assert_allclose(got[mask == 1], want[mask == 1], atol=ATOL, rtol=0, err_msg=f"{name} {kind}")
            assert not got[mask == 0].any(), f"{name} {kind}: padding not 0"
            assert want[mask == 0].any()      # today's artifact computes values there


def test_per_token_outputs_whose_shape_is_not_inferred_are_zeroed_at_padding():
    """An output declared (batch, sequence, ...) is 0.0 at padded positions even when the pass cannot follow its
    shape (here an Expand to a computed shape): it is then computed on the padded layout and zeroed there."""
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32), "table")
    nodes = [helper.make_node("Gather", ["table", "input_word_ids"], ["x"], name="embeddings"),
             helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Expand", ["x", "shape"], ["y"], name="expand"),
             helper.make_node("Add", ["y", "one"], ["out"], name="add")]
    ints = lambda name: helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", "sequence"])
    graph = helper.make_graph(nodes, "g", [ints("input_word_ids"), ints("input_mask")],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "sequence", 4])],
                              [table, numpy_helper.from_array(np.ones((4,), np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    packed, report = padding_free(model)
    assert "Expand" in report.padded
    mask = np.array([[1, 1, 0], [0, 1, 1]], np.int32)
    inputs = {"input_word_ids": np.array([[1, 2, 3], [4, 5, 6]], np.int32), "input_mask": mask}
    want, got = run(model, inputs)["out"], run(packed, inputs)["out"]
    np.testing.assert_allclose(got[mask == 1], want[mask == 1], atol=ATOL, rtol=0)
    assert not got[mask == 0].any()


def test_int64_inputs():
    d = tiny_bert()
    d["export"] = {"input_dtype": "int64"}
    spec = load_spec(d)
    built = build_model(spec)
    low = lower_model(built, input_dtype="int64")
    packed, _ = padding_free(low.proto)
    rng = np.random.default_rng(3)
    mask = masks(3, 8, rng)["holes"]
    inputs = inputs_for(spec, mask, rng, np.int64)
    np.testing.assert_allclose(run(packed, inputs)["logits"], run(low.proto, inputs)["logits"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("head", [{"type": "token_classifier", "num_classes": 3}, {"type": "masked_lm"}],
                         ids=["token_classifier", "masked_lm"])
def test_build_writes_the_packed_variants_and_parity_checks_them(tmp_path, tmp_spec, head):
    """Parity holds the fp32 artifact to 0.0 at padded positions, the int8 and fp16 ones by their task criteria
    over real tokens: each of the three gives exactly 0.0 there all the same."""
    from bertc.pipeline import BuildOptions, build

    d = tiny_bert(head=head)
    d["export"] = {"tflite": False, "variants": ["onnx_packed", "onnx_packed_int8", "onnx_packed_fp16"]}
    report = build(tmp_spec(d), BuildOptions(out=tmp_path / "out"))
    arts = report["artifacts"]
    spec = load_spec(d)
    rng = np.random.default_rng(9)
    mask = masks(3, 8, rng)["holes"]
    mask[0, 3:] = 0
    inputs = inputs_for(spec, mask, rng)
    for key, file in (("onnx_packed", "model.packed.onnx"), ("onnx_packed_int8", "model.packed.int8.onnx"),
                      ("onnx_packed_fp16", "model.packed.fp16.onnx")):
        assert arts[key]["path"] == file and arts[key]["padded_positions"] == "zeros"
        assert (tmp_path / "out" / file).exists()
        session = ort_session(str(tmp_path / "out" / file))
        logits = session.run(["logits"], inputs)[0]
        assert logits.shape[:2] == mask.shape and not logits[mask == 0].any(), f"{key}: padding not 0"
        assert logits[mask == 1].any()
    parity = report["parity"]
    assert parity["passed"]
    assert {"onnx_packed_cpu", "onnx_packed_int8_cpu", "onnx_packed_fp16_cpu"} <= set(parity["backends"])
    assert parity["max_abs_by_backend"]["onnx_packed_cpu"] <= 1e-4
    assert parity["backend_info"]["onnx_packed_cpu"]["padded_positions"] == "zeros"
    section = report["fusion"]["padding_free"]
    assert section["self_check_max_abs"] <= 1e-4 and section["attention_rewritten"] == 2
    assert "onnx_packed_cuda" in parity["skipped"] or "onnx_packed_cuda" in parity["backends"]


def test_parity_holds_a_zeros_backend_to_zeros_at_padding(tmp_path):
    """Today's artifact declared padding-free fails parity: it computes values at padded positions."""
    from bertc.backends import CPU, Backend
    from bertc.export.onnx import write_onnx
    from bertc.parity import OneAtATime, compare, grid_cases, keras_runner

    spec, built, _ = lowered("token_classifier")
    low = lower_model(built, split_weights=True)
    write_onnx(low.proto, low.weights, tmp_path / "today.onnx")
    packed, _ = padding_free(low.proto, low.weights)
    write_onnx(packed, low.weights, tmp_path / "packed.onnx")      # parity's grid: mostly padded batches
    backends = [Backend("onnx_packed_cpu", "onnx_packed", tmp_path / "today.onnx", "onnx", "fp32", CPU, "zeros"),
                Backend("onnx_packed_cuda", "onnx_packed", tmp_path / "packed.onnx", "onnx", "fp32", CPU, "zeros"),
                Backend("onnx_optimized_cpu", "onnx_optimized", tmp_path / "packed.onnx", "onnx", "fp32", CPU)]
    results = {r.backend: r for r in compare(spec, built.signature, keras_runner(built.model), backends,
                                             OneAtATime(backends), grid_cases(spec))}
    assert not results["onnx_packed_cpu"].passed          # values at padding where zeros were promised
    assert results["onnx_packed_cuda"].passed             # the padding-free graph, as promised
    assert not results["onnx_optimized_cpu"].passed       # zeros where Keras computes values


def test_not_packable_graph_is_named():
    from onnx import TensorProto, helper

    from bertc.errors import NotLowerable

    graph = helper.make_graph([helper.make_node("Identity", ["input_mask"], ["out"])], "g",
                              [helper.make_tensor_value_info("input_mask", TensorProto.INT32, ["batch", "sequence"])],
                              [helper.make_tensor_value_info("out", TensorProto.INT32, ["batch", "sequence"])])
    with pytest.raises(NotLowerable, match="no embedding lookup"):
        padding_free(helper.make_model(graph))
