"""ModernBERT's local layers in blocks (bertc/components/local_blocks.py; the plain form again:
bertc/optimize/local_attention.py): the optimized graph runs the window as blocks of w queries against 3 w keys
when S >= BLOCKED_FROM * w and every position has a real key within w of it, the plain (B, S, S) attention
otherwise; both compute what Keras computes. Stress weights (peaked attention,
random norms) so that a key wrongly in or out of a window shows."""
import json
import os

import numpy as np
import pytest

import bertc.components.local_blocks as local
from bertc.optimize.local_attention import is_local_attention, unblocked
from bertc.build import build_model
from bertc.components.common import tf
from bertc.optimize.lower import lower_model
from bertc.optimize.runtime import ort_session
from bertc.optimize.stress import stress_weights
from bertc.spec import load_spec

W = 4   # local_attention 8: |i - j| <= 4
SPEC = {"name": "local_blocks", "encoder": {
    "type": "modernbert", "vocab_size": 64, "hidden_size": 16, "num_layers": 3, "num_attention_heads": 2,
    "intermediate_size": 24, "max_sequence_length": 64, "local_attention": 2 * W, "global_attn_every_n_layers": 3}}


@pytest.fixture(scope="module")
def model():
    built = build_model(load_spec(SPEC))
    saved = stress_weights(built.model, 0)
    yield built
    for variable, value in saved:
        variable.assign(value)


def masks(seq: int, rng) -> dict:
    full = np.ones((3, seq), np.int32)
    near = full.copy()
    near[1, max(1, seq - W):] = 0              # padding within the window of the last real token
    near[2, max(1, seq - 1):] = 0
    far = full.copy()
    far[1, max(1, seq // 3):] = 0                # padded positions farther than W from any real token
    holes = (rng.random((3, seq)) < 0.6).astype(np.int32)
    holes[:, 0] = 1
    left = full.copy()
    left[1, : seq // 2] = 0
    empty = full.copy()
    empty[2] = 0                                 # a row without a real token
    return {"full": full, "near": near, "far": far, "holes": holes, "left": left, "empty": empty}


def covered(mask) -> bool:
    """Every position has a real key within W (what the graph's condition computes)."""
    seq = mask.shape[1]
    return all(mask[b, max(0, i - W): i + W + 1].any() for b in range(mask.shape[0]) for i in range(seq))


def profiled(proto):
    import tempfile

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    # a prefix of its own: ORT names the file by the time to the millisecond, which two test workers can share
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="bertc-profile-"), "profile")
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def nodes_ran(session) -> str:
    """The names of the nodes the profiled session ran, one per line."""
    path = session.end_profiling()
    try:
        events = json.loads(open(path).read())
    finally:
        os.remove(path)
        os.rmdir(os.path.dirname(path))
    return "\n".join(e.get("name", "") for e in events if e.get("cat") == "Node")


@pytest.mark.parametrize("seq", [1, 7, 23, 24, 25, 40, 64])
def test_blocks_run_where_exact_and_equal_the_plain_form_and_keras(model, seq):
    proto = lower_model(model).proto
    # the plain form of the local layers alone (the global layer as in proto), and every layer masked
    plain = ort_session(unblocked(proto, unpadded=False).SerializeToString())
    masked = ort_session(unblocked(proto, local=False).SerializeToString())
    rng = np.random.default_rng(seq)
    for kind, mask in masks(seq, rng).items():
        ids = rng.integers(1, 64, mask.shape).astype(np.int32)
        inputs = {"input_word_ids": ids, "input_mask": mask}
        session = profiled(proto)
        got = session.run(None, inputs)[0]
        expect_blocks = seq >= local.BLOCKED_FROM * W and covered(mask)
        ran = nodes_ran(session)
        assert ("attention_blocks" in ran) == expect_blocks, (seq, kind)
        assert ("attention_unpadded" in ran) == bool(mask.all()), (seq, kind)   # the global layer without its mask
        # the two forms sum the same terms (a key outside a window has weight exactly 0 in the plain form)
        np.testing.assert_allclose(got, plain.run(None, inputs)[0], atol=1e-6, rtol=0, err_msg=f"{seq} {kind}")
        # a batch without padding runs the global layer without its mask (flash attention): the same to rounding;
        # with padding exactly the masked form
        np.testing.assert_allclose(got, masked.run(None, inputs)[0], atol=5e-6 if mask.all() else 0, rtol=0,
                                   err_msg=f"{seq} {kind} vs the masked global layer")
        ref = np.asarray(model.model({k: tf.constant(v) for k, v in inputs.items()}, training=False)["sequence_output"])
        real = mask.astype(bool)
        np.testing.assert_allclose(got[real], ref[real], atol=2e-5, rtol=0, err_msg=f"{seq} {kind} vs Keras")


def test_some_cases_take_each_form():
    """The grid above is not vacuous: blocks at 24, 25, 40 and 64 for the full and near masks, the plain form for
    the far-padded one and every length below 6 W."""
    rng = np.random.default_rng(0)
    assert covered(masks(40, rng)["near"]) and not covered(masks(40, rng)["far"])
    assert local.BLOCKED_FROM * W == 24


def test_forced_blocks_at_every_length_equal_the_plain_form(model, monkeypatch):
    """BLOCKED_FROM 0: the blocks whenever every position is covered, at lengths that are not a multiple of the
    block (the last block's queries padded) and shorter than one block."""
    monkeypatch.setattr(local, "BLOCKED_FROM", 0)
    proto = lower_model(model).proto
    fast, plain = ort_session(proto.SerializeToString()), ort_session(unblocked(proto).SerializeToString())
    rng = np.random.default_rng(3)
    for seq in (1, 2, 3, 5, 9, 13):
        mask = np.ones((2, seq), np.int32)
        mask[1, seq - 1:] = 0 if seq > 1 else 1
        inputs = {"input_word_ids": rng.integers(1, 64, mask.shape).astype(np.int32), "input_mask": mask}
        np.testing.assert_allclose(fast.run(None, inputs)[0], plain.run(None, inputs)[0], atol=1e-6, rtol=0)
    for shape in ((0, 30), (2, 0)):      # an empty batch, empty sequences: the plain form's empty outputs
        inputs = {"input_word_ids": np.zeros(shape, np.int32), "input_mask": np.ones(shape, np.int32)}
        assert fast.run(None, inputs)[0].shape == plain.run(None, inputs)[0].shape == (*shape, 16)


def test_unblocked_is_the_plain_graph(model):
    lowered = lower_model(model)
    proto = lowered.proto
    # the report counts what one run executes at most: one MultiHeadAttention per layer, blocked or plain,
    # masked or not; Ifs: the two local layers' (blocks or plain), the plain window bias', the global layer's
    assert lowered.op_counts["com.microsoft.MultiHeadAttention"] == 3 and lowered.op_counts["If"] == 4
    ifs = [n for n in proto.graph.node if n.op_type == "If"]
    assert len([n for n in ifs if is_local_attention(n)]) == 2         # the two local layers of three
    assert len([n for n in ifs if n.name.endswith(local.UNPADDED)]) == 1   # the global one: unmasked if unpadded
    flat = unblocked(proto)
    ops = [n.op_type for n in flat.graph.node]
    assert "If" not in ops and ops.count("MultiHeadAttention") == 3
    names = {t.name for t in flat.graph.initializer}
    assert not any("local_blocks" in n for n in names)                      # the blocks' constants dropped
    assert unblocked(flat) is flat


def test_padding_free_artifact_packs_the_plain_form_and_keeps_the_blocks_without_padding(model):
    """The packed graph attends per sequence (made from the plain form); a batch without padding runs today's
    graph, blocks included (the fast path)."""
    from bertc.optimize.padding_free import padding_free

    proto = lower_model(model).proto
    packed, _ = padding_free(proto)
    plain = ort_session(unblocked(proto).SerializeToString())
    session = ort_session(packed.SerializeToString())
    rng = np.random.default_rng(5)
    for kind, mask in masks(40, rng).items():
        inputs = {"input_word_ids": rng.integers(1, 64, mask.shape).astype(np.int32), "input_mask": mask}
        real = mask.astype(bool)
        np.testing.assert_allclose(session.run(None, inputs)[0][real], plain.run(None, inputs)[0][real], atol=1e-5,
                                   rtol=0, err_msg=kind)


def test_padding_free_attends_in_blocks_per_sequence_where_a_sequence_is_one_run(model):
    """The packed graph's per-sequence attention (the Loop, forced at any S) runs a windowed layer in blocks for
    a sequence whose kept tokens are consecutive positions, at least 6 w of them, and plainly otherwise (holes,
    short rows, a row without real tokens); real tokens equal the plain optimized graph's either way."""
    from bertc.optimize.padding_free import padding_free

    proto = lower_model(model).proto
    packed, report = padding_free(proto, per_sequence=0)
    assert "; 2 windowed (w = 4) in blocks of 4 queries x 12 keys" in report.to_json()["attention"]
    plain = ort_session(unblocked(proto).SerializeToString())
    rng = np.random.default_rng(11)
    seq = 40
    cases = masks(seq, rng)
    cases["holes_long"] = np.ones((3, seq), np.int32)
    cases["holes_long"][:, 10] = 0                   # every row has a hole: no sequence is one run
    cases["first_padded"] = np.ones((3, seq), np.int32)
    cases["first_padded"][1, :1] = 0                 # left padding by one: still one run, of 39 positions
    expect = {"full": None, "near": True, "far": True, "holes": False, "left": True, "empty": True,
              "holes_long": False, "first_padded": True}     # full: no padding, the fast path (today's graph)
    for kind, mask in cases.items():
        inputs = {"input_word_ids": rng.integers(1, 64, mask.shape).astype(np.int32), "input_mask": mask}
        session = profiled(packed)
        got = session.run(None, inputs)[0]
        ran = "padding_free/attention_blocks" in nodes_ran(session)
        assert ran == bool(expect[kind]), (kind, ran)
        real = mask.astype(bool)
        np.testing.assert_allclose(got[real], plain.run(None, inputs)[0][real], atol=1e-5, rtol=0, err_msg=kind)


def test_padding_free_classifier_keeps_a_padded_first_token_exactly():
    """First-token pooling keeps a padded first token (left padding): one position before the real ones is still
    one run (blocks), a longer padding is not (plain); the logits equal the plain optimized graph's."""
    from bertc.optimize.padding_free import padding_free

    spec = {**SPEC, "name": "local_blocks_cls", "head": {"type": "classifier", "num_classes": 3, "pooling": "first"}}
    built = build_model(load_spec(spec))
    saved = stress_weights(built.model, 1)
    try:
        proto = lower_model(built).proto
    finally:
        for variable, value in saved:
            variable.assign(value)
    packed, _ = padding_free(proto, per_sequence=0)
    plain, session = ort_session(unblocked(proto).SerializeToString()), ort_session(packed.SerializeToString())
    rng = np.random.default_rng(2)
    mask = np.ones((3, 40), np.int32)
    mask[0, :1] = 0
    mask[1, :12] = 0
    mask[2, 30:] = 0
    inputs = {"input_word_ids": rng.integers(1, 64, mask.shape).astype(np.int32), "input_mask": mask}
    np.testing.assert_allclose(session.run(None, inputs)[0], plain.run(None, inputs)[0], atol=1e-5, rtol=0)
