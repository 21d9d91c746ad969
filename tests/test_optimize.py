"""The optimized ONNX Runtime artifact lowered straight from the spec, and its int8 / fp16 variants.

Every bundled spec's optimized graph is run with ONNX Runtime (CPU, ORT_ENABLE_ALL) against the
Keras reference, including non-contiguous random 0/1 masks and fully masked rows.
"""
import collections
import json
from typing import Literal

import numpy as np
import onnx
import pytest

from bertc.build import build_model as _build_model
from bertc.inputs import make_inputs
from bertc.optimize.lower import LoweringContext, lower_model, missing_lowerings, prunable
from bertc.optimize.onnx_artifacts import (FP16_FILE, INT8_FILE, OPTIMIZED_FILE, optimize_onnx, ort_session)
from bertc.optimize.stress import stress_weights
from bertc.signature import signature_of
from bertc.spec import load_spec
from conftest import TINY_SPECS, spec_dict, tiny_copy

ATOL = 1e-4
_MODELS = {}
_BUILT = {}


def build_model(spec, sig=None):
    """bertc's build_model, remembering the Built of each Keras model (the tests hold the Keras model)."""
    b = _build_model(spec, sig)
    _BUILT[id(b.model)] = b
    return b


def built_of(model):
    return _BUILT[id(model)]


def built(name: str, **spec_overrides):
    """(spec, sig, model) for a bundled spec, built once per module, with weights that make every
    part count: at initialization (stddev 0.02) attention is nearly uniform, so a wrong head count
    or mask would hardly show; here query/key kernels are resampled so that attention is sharp, and
    ReZero's alphas (initialized to 0) are non-zero."""
    key = (name, json.dumps(spec_overrides, sort_keys=True))
    if key not in _MODELS:
        d = tiny_copy(spec_dict(name))
        for k, v in spec_overrides.items():   # export={...} is merged into the spec's export section
            d[k] = {**d.get(k, {}), **v} if k == "export" else v
        spec = load_spec(d)
        sig = signature_of(spec)
        b = build_model(spec, sig)
        model = b.model
        for k, w in enumerate(v for v in model.weights if "rezero_alpha" in v.path):
            w.assign(np.float32(0.5 + 0.25 * k))
        rng = np.random.default_rng(0)
        for w in model.weights:   # activations O(1) throughout (as in a trained model), sharp attention
            if w.path.endswith("kernel") and len(w.shape) == 2:
                scale = 3 if w.path.endswith(("/query/kernel", "/key/kernel")) else 1
                w.assign(rng.normal(0, scale / np.sqrt(w.shape[0]), size=w.shape).astype(np.float32))
        _MODELS[key] = (spec, sig, model)
    return _MODELS[key]


def session(proto):
    return ort_session(proto.SerializeToString())


def random_mask_cases(spec, input_dtype="int32", fully_masked=False):
    """Padded rows and random non-contiguous 0/1 masks at several lengths; with ``fully_masked`` the
    last row has no real token at all. (Keras computes such a row's logits as ``s - 10000`` in fp32,
    which keeps only ~1e-3 of ``s``: with sharp attention the reference itself is that imprecise,
    so fully masked rows are compared with the initialized weights, see below.)"""
    cases = []
    for b, s in [(1, 1), (3, 7), (4, spec.encoder.max_sequence_length)]:
        rng = np.random.default_rng([b, s])
        inputs = make_inputs(spec, b, s, rng)
        if s > 1:
            mask = rng.integers(0, 2, size=(b, s)).astype(np.int32)
            mask[0] = inputs["input_mask"][0]      # keep one ordinary padded row
            if fully_masked:
                mask[-1] = 0
            inputs["input_mask"] = mask
        cast = np.int64 if input_dtype == "int64" else np.int32
        cases.append({k: v.astype(cast) for k, v in inputs.items()})
    return cases


def max_abs_diff(model, sess, sig, cases) -> dict:
    worst = collections.defaultdict(float)
    for inputs in cases:
        ref = model({k: v.astype(np.int32) for k, v in inputs.items()}, training=False)
        got = dict(zip(sig.output_names, sess.run(sig.output_names, inputs)))
        for name in sig.output_names:
            assert got[name].shape == tuple(ref[name].shape), name
            worst[name] = max(worst[name], float(np.max(np.abs(np.asarray(ref[name]) - got[name]))))
    return dict(worst)


def op_counts(proto):
    return collections.Counter(n.op_type for n in proto.graph.node)


# --- fusion coverage -------------------------------------------------------------------------------

@pytest.mark.parametrize("skip_layer_norm", ["decomposed", "fused"])
def test_canonical_encoder_is_fully_fused(skip_layer_norm):
    """Every layer lowers to fused kernels; a residual and its layer norm are Add + LayerNormalization by
    default (export.skip_layer_norm) or one SkipLayerNormalization ("fused")."""
    spec, sig, model = built("canonical_classifier", export={"skip_layer_norm": skip_layer_norm})
    lowered = lower_model(built_of(model), prune=False)
    layers = spec.encoder.num_layers
    ops = op_counts(lowered.proto)
    fused = skip_layer_norm == "fused"
    assert ops["Attention"] == layers
    assert ops["SkipLayerNormalization"] == (2 * layers if fused else 0)
    # decomposed: the output bias (Add), the residual (Sum), LayerNormalization, twice per layer
    assert ops["LayerNormalization"] == (0 if fused else 2 * layers)
    assert ops["Add"] == ops["Sum"] == (0 if fused else 2 * layers)   # (the classifier's bias is its Gemm's)
    assert ops["FastGelu"] == layers                       # gelu_tanh
    assert ops["EmbedLayerNormalization"] == 1
    assert ops["MatMul"] == 3 * layers                     # attention output, intermediate, output
    # nothing else is decomposed: no layer norm pieces, no softmax, no GELU pieces
    for op in ("ReduceMean", "Sqrt", "Pow", "Div", "Softmax", "Erf", "Transpose", "Cast"):
        assert ops[op] == 0, op
    assert lowered.nodes == len(lowered.proto.graph.node) == (7 if fused else 11) * layers + 1 + 4
    norm = "SkipLayerNormalization" if fused else "Sum + LayerNormalization"
    for i in range(layers):
        assert lowered.coverage["layers"][f"layer_{i}"] == {
            "attention": "Attention", "attention_layer_norm": norm,
            "feedforward_activation": "FastGelu", "output_layer_norm": norm}
    assert lowered.coverage["layers"]["embeddings"] == {"embeddings": "EmbedLayerNormalization"}
    worst = max_abs_diff(model, session(lowered.proto), sig, random_mask_cases(spec))
    assert max(worst.values()) <= ATOL, worst


def test_decomposed_layer_norms_stay_decomposed_in_onnx_runtime(tmp_path):
    """ORT's session optimizer has a SkipLayerNormFusion pass (Add + LayerNormalization -> SkipLayerNormalization):
    the default artifact's Sum + LayerNormalization must reach the CPU provider as written (what tools/bench_layer_norm.py measures), not be fused back."""
    import onnxruntime as ort

    spec, sig, model = built("canonical_classifier")
    lowered = lower_model(built_of(model), prune=False)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "as_run.onnx")
    ort.InferenceSession(lowered.proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ran = op_counts(onnx.load(str(tmp_path / "as_run.onnx")))
    assert ran["SkipLayerNormalization"] == 0 and ran["LayerNormalization"] == 2 * spec.encoder.num_layers


@pytest.mark.parametrize("skip_layer_norm", ["decomposed", "fused"])
def test_pre_norm_exact_gelu_encoder_fuses_residuals_into_the_next_layer_norm(skip_layer_norm):
    spec, sig, model = built("token_classifier", export={"skip_layer_norm": skip_layer_norm})  # norm_first, exact GELU
    ops = op_counts(lower_model(built_of(model)).proto)
    layers = spec.encoder.num_layers
    assert ops["Attention"] == layers and ops["BiasGelu"] == layers
    # per layer: attention residual + FFN norm; the FFN residual goes into the next layer's first
    # norm (or the final norm); only the first layer's first norm sees a plain tensor. Decomposed, each of
    # those 2 * layers residuals is its sum (bias Add + residual Add, once: the next residual branch reads it).
    if skip_layer_norm == "fused":
        assert ops["SkipLayerNormalization"] == 2 * layers and ops["LayerNormalization"] == 1
        assert ops["Add"] == 1                              # the token classifier's bias
    else:
        assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == 2 * layers + 1
        assert ops["Sum"] == 2 * layers and ops["Add"] == 2 * layers + 1



@pytest.mark.parametrize("name", ["canonical_classifier", "token_classifier"])
def test_fp16_takes_fused_skip_layer_norms_apart(name):
    """``export.skip_layer_norm: "fused"`` is the fp32 artifact's choice: the fp16 graph's residual norms are
    Sum + LayerNormalization all the same (ORT's CUDA SkipLayerNormalization sums its statistics in fp16), the
    fused node's sum output (the pre-norm token classifier's residual branch reads it) now the Sum's."""
    import copy

    from bertc.optimize.half import to_fp16, unfuse_skip_layer_norms

    spec, sig, model = built(name, export={"skip_layer_norm": "fused"})
    fused = lower_model(built_of(model)).proto
    layers = spec.encoder.num_layers
    assert op_counts(fused)["SkipLayerNormalization"] == 2 * layers
    unfused = copy.deepcopy(fused)
    assert unfuse_skip_layer_norms(unfused) == 2 * layers
    ops = op_counts(unfused)
    assert ops["SkipLayerNormalization"] == 0 and ops["Sum"] == 2 * layers
    onnx.checker.check_model(unfused)
    cases = random_mask_cases(spec)
    assert max(max_abs_diff(model, session(unfused), sig, cases).values()) <= ATOL
    half, _ = to_fp16(copy.deepcopy(fused), [])
    assert op_counts(half)["SkipLayerNormalization"] == 0 and op_counts(half)["EmbedLayerNormalization"] == 0
    got = session(half).run(sig.output_names, cases[1])
    ref = model(cases[1], training=False)
    for out, g in zip(sig.output_names, got):
        assert np.max(np.abs(np.asarray(ref[out]) - g)) < 0.05, out

def test_interface_names_dtypes_and_dynamic_axes():
    spec, sig, model = built("pretrainer")
    proto = lower_model(built_of(model), input_dtype="int64").proto
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == sig.input_names
    assert [o.name for o in proto.graph.output] == sig.output_names
    for i in proto.graph.input:
        assert i.type.tensor_type.elem_type == onnx.TensorProto.INT64
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims["input_word_ids"] == ["batch", "sequence"]
    assert dims["masked_lm_positions"] == ["batch", spec.head.num_token_predictions]
    assert {"com.microsoft", ""} == {o.domain for o in proto.opset_import}
    assert "layer_0/attention/qkv/kernel" in {t.name for t in proto.graph.initializer}


def test_lowering_is_deterministic():
    spec, sig, model = built("mixed_blocks")
    assert lower_model(built_of(model)).proto.SerializeToString() == \
        lower_model(built_of(model)).proto.SerializeToString()


# --- numerics against Keras ------------------------------------------------------------------------

@pytest.mark.parametrize("path", TINY_SPECS, ids=lambda p: p.stem)
def test_optimized_matches_keras_with_random_masks(path):
    spec, sig, model = built(path.stem)
    assert not missing_lowerings(built_of(model))
    lowered = lower_model(built_of(model))
    onnx.checker.check_model(lowered.proto)
    worst = max_abs_diff(model, session(lowered.proto), sig, random_mask_cases(spec))
    assert set(worst) == set(sig.output_names)
    assert max(worst.values()) <= ATOL, worst


@pytest.mark.parametrize("name", ["canonical_classifier", "mixed_blocks"])
def test_fully_masked_rows_match_keras(name):
    """Rows without any real token: every fused and decomposed (talking heads, in mixed_blocks)
    attention path adds the same -10000."""
    spec = load_spec(tiny_copy(spec_dict(name)))
    sig = signature_of(spec)
    model = build_model(spec, sig).model   # initialized weights (see random_mask_cases)
    for prune in (False, True):
        proto = lower_model(built_of(model), prune=prune).proto
        worst = max_abs_diff(model, session(proto), sig, random_mask_cases(spec, fully_masked=True))
        assert max(worst.values()) <= ATOL, (prune, worst)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_without_head_exposes_every_layer_output(norm_first):
    """No head: sequence_output, pooled_output and every layer's output; with pre-norm a layer's
    output is the sum a SkipLayerNormalization of the next layer also produces (reused, not re-added)."""
    from conftest import tiny_bert

    d = tiny_bert()
    d.pop("head")
    d["encoder"].update(norm_first=norm_first, return_all_layer_outputs=True, activation="relu")
    spec = load_spec(d)
    sig = signature_of(spec)
    model = build_model(spec, sig).model
    lowered = lower_model(built_of(model))
    assert not lowered.pruned
    assert [o.name for o in lowered.proto.graph.output] == sig.output_names == [
        "sequence_output", "pooled_output", "encoder_outputs_0", "encoder_outputs_1"]
    worst = max_abs_diff(model, session(lowered.proto), sig, random_mask_cases(spec))
    assert max(worst.values()) <= ATOL, worst
    if norm_first:
        # layer 0's output is the residual sum that layer 1's first layer norm reads (one Sum, not re-added);
        # the last residual goes into the final layer norm. Per layer, each of the two residuals is a bias Add
        # and a Sum; + the two ReLU biases.
        producer = {out: n for n in lowered.proto.graph.node for out in n.output}
        assert producer["encoder_outputs_0"].op_type == "Sum"
        readers = [n.op_type for n in lowered.proto.graph.node if "encoder_outputs_0" in n.input]
        assert sorted(readers) == ["LayerNormalization", "Sum"]   # layer 1's attention norm and its residual
        ops = op_counts(lowered.proto)
        assert ops["Sum"] == 2 * 2 and ops["Add"] == 2 * 2 + 2
    assert lowered.coverage["layers"]["layer_0"]["feedforward_activation"] == "relu"


@pytest.mark.parametrize("pooling,normalize,opset", [("mean", True, 17), ("max", False, 17), ("max", True, 18),
                                                     ("cls", True, 17)])
def test_sentence_embedding_head(pooling, normalize, opset):
    from conftest import tiny_bert

    d = tiny_bert(head={"type": "sentence_embedding", "pooling": pooling, "normalize": normalize})
    spec = load_spec(d)
    sig = signature_of(spec)
    model = build_model(spec, sig).model
    stress_weights(model)
    lowered = lower_model(built_of(model), opset=opset)
    assert lowered.pruned == (pooling == "cls")
    worst = max_abs_diff(model, session(lowered.proto), sig, random_mask_cases(spec))
    assert worst["sentence_embedding"] <= ATOL, worst


def test_int64_inputs_match_keras():
    spec, sig, model = built("albert")
    proto = lower_model(built_of(model), input_dtype="int64").proto
    worst = max_abs_diff(model, session(proto), sig, random_mask_cases(spec, "int64"))
    assert max(worst.values()) <= ATOL


class _Override:
    """A view of a Keras layer with some attributes replaced (to lower it deliberately wrong)."""

    def __init__(self, layer, **attrs):
        self._layer = layer
        self.__dict__.update(attrs)

    def __getattr__(self, name):
        return getattr(self._layer, name)


def test_wrong_head_count_is_caught(monkeypatch):
    from bertc.components import attention

    spec, sig, model = built("canonical_classifier")
    right = attention.MultiHeadAttention.onnx_lowering
    monkeypatch.setattr(attention.MultiHeadAttention, "onnx_lowering",
                        lambda self, ctx, x, query=None: right(_Override(self, num_heads=self.num_heads // 2),
                                                               ctx, x, query))
    proto = lower_model(built_of(model)).proto
    worst = max_abs_diff(model, session(proto), sig, random_mask_cases(spec))
    assert worst["logits"] > 100 * ATOL, worst


def test_wrong_layer_norm_epsilon_is_caught(monkeypatch):
    spec, sig, model = built("token_classifier")
    right = LoweringContext.layer_norm
    monkeypatch.setattr(LoweringContext, "layer_norm",
                        lambda self, v, ln, *a, **k: right(self, v, _Override(ln, epsilon=1e-2), *a, **k))
    proto = lower_model(built_of(model)).proto
    worst = max_abs_diff(model, session(proto), sig, random_mask_cases(spec))
    assert worst["logits"] > 100 * ATOL, worst


def test_wrong_lowering_fails_the_build_even_where_initialized_weights_hide_it(monkeypatch, tmp_path):
    """With freshly initialized weights attention is nearly uniform: half the heads gives the same
    logits to ~1e-6, so parity on the model's own weights cannot see it. The structural check on
    stress weights does, and the build fails as a parity failure naming the output."""
    from bertc.cli import main
    from bertc.components import attention
    from bertc.errors import EXIT_PARITY_FAILED

    right = attention.MultiHeadAttention.onnx_lowering
    monkeypatch.setattr(attention.MultiHeadAttention, "onnx_lowering",
                        lambda self, ctx, x, query=None: right(_Override(self, num_heads=self.num_heads // 2),
                                                               ctx, x, query))
    d = tiny_copy(spec_dict("canonical_classifier"))
    d["export"] = {"tflite": False, "onnx": False}
    spec = load_spec(d)
    sig = signature_of(spec)
    model = build_model(spec, sig).model
    lowered = lower_model(built_of(model))
    hidden = max_abs_diff(model, session(lowered.proto), sig, random_mask_cases(spec))
    assert hidden["logits"] < ATOL          # invisible on the initialized weights ...
    before = [w.numpy().copy() for w in model.weights]
    result = optimize_onnx(built_of(model), tmp_path)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))   # weights restored
    check = result.section()["structural_check"]
    assert not check["passed"] and check["outputs"]["logits"]["relative"] > 1e-2      # ... caught here
    assert result.mismatch.startswith("the optimized ONNX lowering disagrees with Keras")
    assert "- onnx_optimized / logits: max abs diff" in result.mismatch
    assert set(result.artifacts) == {"onnx_optimized"}                              # no variants

    path = tmp_path / "spec.json"
    path.write_text(json.dumps(d))
    out = tmp_path / "out"
    assert main(["build", str(path), "-o", str(out), "-q", "--no-parity"]) == EXIT_PARITY_FAILED
    assert not out.exists()
    report = json.loads((tmp_path / "out.failed" / "report.json").read_text())
    assert report["status"] == "failed" and not report["fusion"]["structural_check"]["passed"]


def test_structural_check_passes_for_every_bundled_spec_lowering():
    from bertc.optimize.stress import structural_check

    for path in TINY_SPECS:
        spec, sig, model = built(path.stem)
        check = structural_check(built_of(model), "int32", 17, None)
        assert check["passed"], (path.stem, check["problems"])


# --- semantic pruning ------------------------------------------------------------------------------

def test_which_heads_allow_pruning():
    expected = {"canonical_classifier": True, "albert": True, "mixed_blocks": True, "pretrainer": True,
                "span_labeler": False, "token_classifier": False}
    for name, allowed in expected.items():
        spec = load_spec(tiny_copy(spec_dict(name)))
        assert prunable(build_model(spec)) is allowed, name
    d = tiny_copy(spec_dict("classifier"))
    d.pop("head")
    spec = load_spec(d)
    assert not prunable(build_model(spec))                   # sequence_output is an output


def pretrainer_cases(spec):
    """random_mask_cases plus masked-LM positions that repeat, point at padded rows, and at row 0."""
    cases = random_mask_cases(spec)
    for inputs in cases:
        b, s = inputs["input_word_ids"].shape
        p = inputs["masked_lm_positions"].shape[1]
        positions = np.random.default_rng([b, s, 9]).integers(0, s, size=(b, p))
        positions[:, :2] = positions[:, :1]      # a repeated position
        positions[0, -1] = s - 1                 # the last row of the padded example
        positions[-1, -2] = 0                    # the [CLS] row itself
        inputs["masked_lm_positions"] = positions.astype(inputs["masked_lm_positions"].dtype)
    return cases


PRETRAINER_HEAD = {"type": "pretrainer", "num_token_predictions": 5, "num_classes": 2}


@pytest.mark.parametrize("name, overrides", [("canonical_classifier", {}), ("mixed_blocks", {}), ("custom_embedding", {}),
                                             ("pretrainer", {}), ("mixed_blocks", {"head": PRETRAINER_HEAD}),
                                             ("albert", {"head": PRETRAINER_HEAD})])
def test_pruned_graph_equals_unpruned(name, overrides):
    """mixed_blocks ends with a ReZero block after a pre-norm talking-heads block, plus a final norm; ALBERT
    shares one block across layers. A pretrainer's last layer computes [CLS] (next sentence) and the masked
    positions (masked LM)."""
    spec, sig, model = built(name, **overrides)
    full, pruned = lower_model(built_of(model), prune=False), lower_model(built_of(model), prune=True)
    assert pruned.pruned and not full.pruned
    last = f"layer_{spec.encoder.as_scaffold().num_layers - 1}"
    assert pruned.coverage["layers"][last]["attention"] != full.coverage["layers"][last]["attention"]
    cases = pretrainer_cases(spec) if spec.head.type == "pretrainer" else random_mask_cases(spec)
    a, b = session(full.proto), session(pruned.proto)
    for inputs in cases:
        for ya, yb in zip(a.run(sig.output_names, inputs), b.run(sig.output_names, inputs)):
            np.testing.assert_allclose(yb, ya, rtol=0, atol=1e-6)
    assert max(max_abs_diff(model, b, sig, cases).values()) <= ATOL


def test_pruned_pretrainer_computes_cls_and_the_masked_rows():
    """The pretrainer's last feedforward runs on (B, 1 + P, I): [CLS] for the next-sentence head, then the
    P masked positions, which the masked-LM head takes with a Slice instead of gathering all S rows."""
    spec, sig, model = built("pretrainer")
    last = f"layer_{spec.encoder.num_layers - 1}/"
    inputs = pretrainer_cases(spec)[-1]
    lowered = lower_model(built_of(model))
    assert lowered.pruned and lowered.rows.describe() == "the first token and the rows in masked_lm_positions"
    proto = lowered.proto
    gelu = [n for n in proto.graph.node if n.op_type == "FastGelu" and n.name.startswith(last)]
    proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(gelu[0].output[0]))
    rows = session(proto).run([gelu[0].output[0]], inputs)[0].shape
    batch, p = inputs["masked_lm_positions"].shape
    assert rows == (batch, 1 + p, spec.encoder.intermediate_size)
    assert "Slice" in lowered.coverage["layers"]["head"]["masked_lm"]


def test_forcing_pruning_where_every_row_is_read_is_an_error():
    spec, sig, model = built("span_labeler")
    with pytest.raises(ValueError, match="nothing to prune"):
        lower_model(built_of(model), prune=True)
    assert not lower_model(built_of(model)).pruned


def test_pruned_last_layer_computes_one_row():
    """The last layer's feedforward runs on (B, 1, I) in the pruned graph, on (B, S, I) otherwise."""
    spec, sig, model = built("canonical_classifier")
    last = f"layer_{spec.encoder.num_layers - 1}/"
    inputs = random_mask_cases(spec)[-1]
    rows = {}
    for prune in (False, True):
        proto = lower_model(built_of(model), prune=prune).proto
        gelu = [n for n in proto.graph.node if n.op_type == "FastGelu" and n.name.startswith(last)]
        assert len(gelu) == 1
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(gelu[0].output[0]))
        rows[prune] = session(proto).run([gelu[0].output[0]], inputs)[0].shape
        attention = {n.op_type for n in proto.graph.node if n.name.startswith(last) and "Attention" in n.op_type}
        assert attention == ({"MultiHeadAttention"} if prune else {"Attention"})
    batch, seq = inputs["input_word_ids"].shape
    assert rows == {False: (batch, seq, spec.encoder.intermediate_size),
                    True: (batch, 1, spec.encoder.intermediate_size)}


# --- plug-ins without a lowering -----------------------------------------------------------------

def test_plugin_attention_without_lowering_takes_the_portable_path_and_passes_parity(tmp_path):
    """A plug-in attention with no lowering of its own is converted by tf2onnx and spliced into the
    optimized graph; the blocks around it keep their fused layer norms, and parity holds."""
    from bertc.cli import main
    from bertc.components.attention import AttentionSpecBase, MultiHeadAttention
    from bertc.components.common import serializable
    from bertc.registry import ATTENTION

    class DoubledSpec(AttentionSpecBase):
        type: Literal["doubled_logits"] = "doubled_logits"

    @ATTENTION.register("doubled_logits", spec=DoubledSpec, description="test plug-in without ONNX lowering")
    @serializable
    class DoubledLogits(MultiHeadAttention):
        """Inherits multi_head's lowering, which would be wrong for it: it must not be used."""
        spec_cls = DoubledSpec

        def mix_logits(self, logits):
            return 2.0 * logits

    try:
        d = spec_dict("talking_heads")
        d["encoder"]["hidden"]["attention"]["type"] = "doubled_logits"
        d["export"] = {"tflite": False}
        spec = load_spec(d)
        model = build_model(spec, signature_of(spec)).model
        assert missing_lowerings(built_of(model)) == []          # it has a way in: the portable path
        spec_path = tmp_path / "plugin.json"
        spec_path.write_text(json.dumps(d))
        out = tmp_path / "out"
        assert main(["build", str(spec_path), "-o", str(out), "-q"]) == 0
        report = json.loads((out / "report.json").read_text())
        assert {"onnx_optimized", "onnx_int8"} <= set(report["artifacts"])
        fusion = report["fusion"]
        assert fusion["lowered"] and fusion["pruned"]
        assert [n.split(":")[0] for n in fusion["not_lowered"]] == [
            f"layer_{i}/attention (DoubledLogits)" for i in range(3)]
        for i in range(3):
            layer = fusion["layers"][f"layer_{i}"]
            assert layer["attention"].startswith("portable: ")
            assert layer["attention_layer_norm"] == layer["output_layer_norm"] == "Sum + LayerNormalization"
        ops = report["artifacts"]["onnx_optimized"]["op_counts"]
        assert ops["LayerNormalization"] == 6 and ops["com.microsoft.EmbedLayerNormalization"] == 1
        assert "com.microsoft.Attention" not in ops and "com.microsoft.MultiHeadAttention" not in ops
        backends = {r["backend"] for r in report["parity"]["results"]}
        assert {"onnx_optimized_cpu", "onnx_int8_cpu"} <= backends and report["parity"]["passed"]
        summary = (out / "summary.txt").read_text()
        assert "3 layer(s) on the portable path (no lowering of their own): layer_0/attention (DoubledLogits)" in summary
    finally:
        ATTENTION.unregister("doubled_logits")


def _plugin_feedforward():
    import tensorflow as tf

    from bertc.components.feedforward import DenseFeedforward, DenseFeedforwardSpec
    from bertc.components.common import serializable
    from bertc.registry import FEEDFORWARD

    class SquaredReluSpec(DenseFeedforwardSpec):
        type: Literal["squared_relu"] = "squared_relu"

    @FEEDFORWARD.register("squared_relu", spec=SquaredReluSpec, description="test plug-in without ONNX lowering")
    @serializable
    class SquaredRelu(DenseFeedforward):
        spec_cls = SquaredReluSpec

        def _transform(self, x):
            return self.output_dense(tf.square(tf.nn.relu(self.intermediate(x))))

    def use(d):
        d["encoder"]["hidden"]["feedforward"]["type"] = "squared_relu"
    return FEEDFORWARD, "squared_relu", use, "feedforward", "layer_{i}/feedforward (SquaredRelu)"


def _plugin_block():
    from bertc.components.blocks import ScaffoldBlock, ScaffoldBlockSpec
    from bertc.components.common import serializable
    from bertc.registry import BLOCKS

    class HalvedSpec(ScaffoldBlockSpec):
        type: Literal["halved"] = "halved"

    @BLOCKS.register("halved", spec=HalvedSpec, description="test plug-in without ONNX lowering")
    @serializable
    class Halved(ScaffoldBlock):
        spec_cls = HalvedSpec

        def call(self, x, attention_bias, training=None):
            return 0.5 * super().call(x, attention_bias, training=training)

    def use(d):
        d["encoder"]["hidden"]["type"] = "halved"
    return BLOCKS, "halved", use, "block", "layer_{i} (Halved)"


def _plugin_embeddings():
    from bertc.components.embeddings import EmbeddingNetwork, StandardEmbeddingSpec
    from bertc.components.common import serializable
    from bertc.registry import EMBEDDINGS

    class ScaledSpec(StandardEmbeddingSpec):
        type: Literal["scaled"] = "scaled"

    @EMBEDDINGS.register("scaled", spec=ScaledSpec, description="test plug-in without ONNX lowering")
    @serializable
    class Scaled(EmbeddingNetwork):
        spec_cls = ScaledSpec

        def call(self, inputs, training=None):
            x, table = super().call(inputs, training=training)
            return 1.5 * x, table

    def use(d):
        d["encoder"]["embedding"]["type"] = "scaled"
    return EMBEDDINGS, "scaled", use, "embeddings", "embeddings (Scaled)"


@pytest.mark.parametrize("make", [_plugin_feedforward, _plugin_block, _plugin_embeddings],
                         ids=["feedforward", "block", "embeddings"])
@pytest.mark.parametrize("input_dtype", ["int32", "int64"])
def test_plugin_of_every_kind_takes_the_portable_path(make, input_dtype, tmp_path):
    """Feedforward, block and embedding plug-ins without a lowering: spliced in, the rest still fused,
    the artifact equal to Keras (random non-contiguous masks included), and the same bytes when lowered
    again (tf2onnx's own names and order vary within a process)."""
    registry, name, use, part, path = make()
    try:
        d = spec_dict("talking_heads")
        use(d)
        spec = load_spec(d)
        sig = signature_of(spec)
        model = build_model(spec, sig).model
        result = optimize_onnx(built_of(model), tmp_path, input_dtype=input_dtype, variants=("onnx_int8",))
        assert result.mismatch is None and set(result.artifacts) == {"onnx_optimized", "onnx_int8"}
        fusion = result.section()
        layers = ["embeddings"] if part == "embeddings" else [f"layer_{i}" for i in range(3)]
        assert [n.split(":")[0] for n in fusion["not_lowered"]] == [path.format(i=i) for i in range(3)][:len(layers)]
        for layer in layers:
            assert fusion["layers"][layer][part].startswith("portable: ")
        if part != "embeddings":
            assert fusion["layers"]["embeddings"]["embeddings"] == "EmbedLayerNormalization"
        if part == "feedforward":
            assert all(fusion["layers"][layer]["attention_layer_norm"] == "Sum + LayerNormalization" for layer in layers)
        assert fusion["structural_check"]["passed"]
        sess = ort_session(tmp_path / OPTIMIZED_FILE)
        rng = np.random.default_rng(5)
        for seq in (1, 5, spec.encoder.max_sequence_length):
            inputs = make_inputs(spec, 3, seq, rng)
            inputs["input_mask"] = rng.integers(0, 2, size=(3, seq)).astype(np.int32)
            inputs["input_mask"][:, 0] = 1
            ref = np.asarray(model(inputs, training=False)["logits"])
            got = sess.run(["logits"], {k: v.astype(input_dtype) for k, v in inputs.items()})[0]
            assert np.max(np.abs(ref - got)) <= ATOL
        again = lower_model(built_of(model), input_dtype=input_dtype)
        first = lower_model(built_of(model), input_dtype=input_dtype)
        assert again.proto.SerializeToString(deterministic=True) == first.proto.SerializeToString(deterministic=True)
        if part != "embeddings":   # one conversion serves the three layers: each still reads its own weights
            read = {i for node in first.proto.graph.node for i in node.input}
            assert {f"layer_{i}/feedforward/intermediate/kernel" for i in range(3)} <= read
    finally:
        registry.unregister(name)


def test_fusion_summary_names_at_most_three_portable_layers():
    from bertc.report import fusion_summary

    fusion = {"lowered": True, "fused_ops": {"com.microsoft.SkipLayerNormalization": 24},
              "nodes": {"onnx_optimized": 527}, "not_lowered": [f"layer_{i}/attention (Mine): converted" for i in range(12)]}
    text = fusion_summary(fusion)
    assert text.startswith("24 SkipLayerNormalization; nodes: onnx_optimized 527; 12 layer(s) on the portable path")
    assert "layer_2/attention (Mine)" in text and "layer_3/" not in text
    assert text.endswith("; and 9 more (fusion.not_lowered in report.json)")


def test_plugin_tf2onnx_cannot_convert_is_reported_and_the_build_goes_on(tmp_path):
    """A plug-in whose call has no ONNX conversion (lgamma): no optimized artifact, the reason names the
    layer and the TF op; nothing is written."""
    import tensorflow as tf

    from bertc.components.feedforward import DenseFeedforward, DenseFeedforwardSpec
    from bertc.components.common import serializable
    from bertc.registry import FEEDFORWARD

    class LgammaSpec(DenseFeedforwardSpec):
        type: Literal["lgamma_ff"] = "lgamma_ff"

    @FEEDFORWARD.register("lgamma_ff", spec=LgammaSpec, description="test plug-in tf2onnx cannot convert")
    @serializable
    class LgammaFeedforward(DenseFeedforward):
        spec_cls = LgammaSpec

        def _transform(self, x):
            return self.output_dense(tf.math.lgamma(tf.nn.softplus(self.intermediate(x)) + 1.0))

    try:
        d = spec_dict("talking_heads")
        d["encoder"]["hidden"]["feedforward"]["type"] = "lgamma_ff"
        spec = load_spec(d)
        sig = signature_of(spec)
        model = build_model(spec, sig).model
        result = optimize_onnx(built_of(model), tmp_path)
        assert result.artifacts == {} and result.mismatch is None
        fusion = result.section()
        assert not fusion["lowered"]
        assert fusion["not_lowered"] == [
            "layer_0/feedforward (LgammaFeedforward) has no ONNX lowering, and its tf2onnx conversion "
            "needs an operator ONNX does not define (Lgamma)"]
        assert fusion["skipped"].startswith("no optimized ONNX artifact: layer_0/feedforward (LgammaFeedforward)")
        assert not (tmp_path / OPTIMIZED_FILE).exists()
    finally:
        FEEDFORWARD.unregister("lgamma_ff")


def test_plugin_head_without_lowering_is_reported_and_the_build_goes_on(tmp_path):
    """The head and the encoder have no portable path (the model's outputs are theirs): no optimized
    artifact, the head named, and the build still writes the portable model.onnx."""
    from bertc.cli import main
    from bertc.components.heads import Classifier, ClassifierSpec
    from bertc.registry import HEADS

    class PlainSpec(ClassifierSpec):
        type: Literal["plain_classifier"] = "plain_classifier"

    @HEADS.register("plain_classifier", spec=PlainSpec, description="test plug-in head without ONNX lowering")
    class PlainClassifier(Classifier):
        """Changes the maths (doubled logits) without a lowering: the inherited one must not serve it."""

        def build(self, enc, inputs):
            return {"logits": 2.0 * super().build(enc, inputs)["logits"]}

    try:
        d = tiny_copy(spec_dict("canonical_classifier"))
        d["head"]["type"] = "plain_classifier"
        d["export"] = {"tflite": False}
        spec_path = tmp_path / "plugin.json"
        spec_path.write_text(json.dumps(d))
        out = tmp_path / "out"
        assert main(["build", str(spec_path), "-o", str(out), "-q", "--no-parity"]) == 0
        report = json.loads((out / "report.json").read_text())
        assert set(report["artifacts"]) == {"keras", "onnx"}
        assert report["fusion"]["not_lowered"] == ["head ('plain_classifier')"]
        assert "1 component(s) have no ONNX lowering (head ('plain_classifier'))" in report["fusion"]["skipped"]
        assert "head ('plain_classifier')" in (out / "summary.txt").read_text()
    finally:
        HEADS.unregister("plain_classifier")


# --- variants and the pipeline -------------------------------------------------------------------

@pytest.fixture(scope="module")
def canonical_build(tmp_path_factory):
    from bertc.cli import main

    d = tiny_copy(spec_dict("canonical_classifier"))
    d["export"] = {"tflite": False, "variants": ["onnx_int8", "onnx_fp16"]}
    root = tmp_path_factory.mktemp("optimized")
    path = root / "spec.json"
    path.write_text(json.dumps(d))
    out = root / "out"
    assert main(["build", str(path), "-o", str(out), "-q", "--no-parity"]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_build_writes_optimized_int8_fp16_with_the_artifact_contract(canonical_build):
    out, report = canonical_build
    arts = report["artifacts"]
    expected = {"onnx_optimized": (OPTIMIZED_FILE, "fp32"), "onnx_int8": (INT8_FILE, "int8"),
                "onnx_fp16": (FP16_FILE, "fp16")}
    for key, (name, precision) in expected.items():
        a = arts[key]
        assert (a["path"], a["format"], a["precision"], a["input_dtype"]) == (name, "onnx", precision, "int32")
        assert a["bytes"] == (out / name).stat().st_size
        assert a["nodes"] == len(onnx.load(str(out / name)).graph.node)
        assert "CUDAExecutionProvider" in a["providers"] or key == "onnx_int8"
    assert arts["onnx_int8"]["providers"] == ["CPUExecutionProvider"]
    fusion = report["fusion"]
    assert fusion["lowered"] and fusion["pruned"] and fusion["not_lowered"] == []
    assert fusion["nodes"]["onnx_optimized"] < fusion["nodes"]["onnx"] / 5
    assert fusion["self_check_max_abs"] <= ATOL
    assert arts["onnx_optimized"]["coverage"]["layers"] == fusion["layers"]
    summary = (out / "summary.txt").read_text()
    assert "fusion: 2 Attention, 1 EmbedLayerNormalization, 3 FastGelu, 1 MultiHeadAttention" in summary
    assert f"onnx_optimized {fusion['nodes']['onnx_optimized']}" in summary


def test_int8_artifact_agrees_with_keras_on_argmax(canonical_build):
    import keras

    out, report = canonical_build
    spec = load_spec(out / "spec.json")
    model = keras.saving.load_model(out / "model.keras")
    proto = onnx.load(str(out / INT8_FILE))
    assert op_counts(proto)["QAttention"] == 2               # the two unpruned layers; MHA has no weights
    sess = ort_session(out / INT8_FILE)
    rng = np.random.default_rng(3)
    inputs = make_inputs(spec, 256, 16, rng)
    inputs["input_mask"] = rng.integers(0, 2, size=(256, 16)).astype(np.int32)
    inputs["input_mask"][:, 0] = 1
    ref = np.asarray(model(inputs, training=False)["logits"])
    got = sess.run(["logits"], inputs)[0]
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.99
    assert 0 < np.max(np.abs(ref - got)) < 0.05 * np.max(np.abs(ref))     # really quantized, and close


def test_fp16_artifact_keeps_int_inputs_and_fp32_outputs(canonical_build):
    out, report = canonical_build
    proto = onnx.load(str(out / FP16_FILE))
    assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [onnx.TensorProto.INT32] * 3
    assert [o.type.tensor_type.elem_type for o in proto.graph.output] == [onnx.TensorProto.FLOAT]
    weights = {t.name: t.data_type for t in proto.graph.initializer}
    assert weights["layer_0/attention/qkv/kernel"] == onnx.TensorProto.FLOAT16
    cpu = report["artifacts"]["onnx_fp16"]["cpu"]
    assert report["artifacts"]["onnx_fp16"]["providers"][0] == "CUDAExecutionProvider"
    if cpu["runs"]:
        assert 0 < cpu["sample_max_abs"] < 1e-2
    # its residual norms stay Sum + LayerNormalization: ORT's CUDA SkipLayerNormalization sums its mean and mean
    # square in fp16 (outside its strict mode): a residual stream of RMS 256 overflowed to rows of beta, a mean 30
    # standard deviations from 0 gave NaN (a tester's emulation of the kernel); LayerNormalization's sums in fp32
    ops = op_counts(proto)
    layers = json.loads((out / "spec.json").read_text())["encoder"]["num_layers"]
    # and the embeddings' EmbedLayerNormalization (whose CUDA kernel sums in fp16 too) is Gathers, Sum, LayerNorm
    assert ops["SkipLayerNormalization"] == 0 and ops["EmbedLayerNormalization"] == 0
    assert ops["Sum"] == 2 * layers + 1 and ops["LayerNormalization"] == 2 * layers + 1


def test_variants_of_a_pretrainer_whose_decoder_shares_the_word_table(tmp_path):
    """The tied MLM decoder reads the word table: one fp32 table in the int8 graph, its Gemm kept fp32."""
    spec = load_spec(tiny_copy(spec_dict("pretrainer")))
    sig = signature_of(spec)
    model = build_model(spec, sig).model
    result = optimize_onnx(built_of(model), tmp_path)
    int8 = onnx.load(str(tmp_path / INT8_FILE))
    tables = [t for t in int8.graph.initializer if t.name.startswith("embeddings/word_embeddings")]
    assert [(t.name, list(t.dims)) for t in tables] == [("embeddings/word_embeddings", [spec.encoder.vocab_size, 64])]
    # the decoder Gemm reads the word table (fp32 for EmbedLayerNormalization too): it stays fp32
    assert result.artifacts["onnx_int8"]["quantization"]["kept_fp32"] == [
        "embeddings/embed_layer_norm", "head/decoder", "head/next_sentence", "pooler/pooler"]
    inputs = random_mask_cases(spec)[1]
    ref = model(inputs, training=False)
    for name in (INT8_FILE, FP16_FILE):
        got = dict(zip(sig.output_names, ort_session(tmp_path / name).run(sig.output_names, inputs)))
        for out in sig.output_names:
            r = np.asarray(ref[out]).reshape(-1, np.shape(ref[out])[-1])
            g = got[out].reshape(r.shape)
            assert np.mean(r.argmax(-1) == g.argmax(-1)) >= 0.9, (name, out)


def test_variants_follow_the_spec_and_no_optimize(tmp_path):
    from bertc.cli import main

    d = tiny_copy(spec_dict("classifier"))
    d["export"] = {"tflite": False, "onnx": False, "variants": ["onnx_int8"]}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(d))
    assert main(["build", str(path), "-o", str(tmp_path / "a"), "-q", "--no-parity"]) == 0
    assert sorted(p.name for p in (tmp_path / "a").glob("*.onnx")) == [INT8_FILE, OPTIMIZED_FILE]
    assert main(["build", str(path), "-o", str(tmp_path / "b"), "-q", "--no-parity", "--no-optimize"]) == 0
    assert not list((tmp_path / "b").glob("*.onnx"))
    assert "fusion" not in json.loads((tmp_path / "b" / "report.json").read_text())


def test_large_models_are_checked_through_a_reduced_clone_that_still_catches_a_wrong_lowering(monkeypatch):
    """Above CLONE_ABOVE_PARAMETERS the structural check lowers a reduced clone (same components and
    settings, fewer layers, smaller vocabulary and sequences): a halved head count is still caught."""
    from bertc.components import attention
    from bertc.optimize import stress

    spec, sig, model = built("canonical_classifier")
    reduced = stress.reduced_spec(spec.model_copy(update={"encoder": spec.encoder.model_copy(
        update={"num_layers": 6, "vocab_size": 5000, "max_sequence_length": 256})}))
    enc = reduced.encoder
    assert (enc.num_layers, enc.vocab_size, enc.max_sequence_length) == (2, 128, 32)
    assert (enc.hidden_size, enc.num_attention_heads, enc.activation, enc.layer_norm_epsilon) == (
        spec.encoder.hidden_size, spec.encoder.num_attention_heads, spec.encoder.activation,
        spec.encoder.layer_norm_epsilon)
    monkeypatch.setattr(stress, "CLONE_ABOVE_PARAMETERS", 0)
    before = [w.numpy().copy() for w in model.weights]
    good = stress.structural_check(built_of(model), "int32", 17, None)
    assert good["passed"] and good["checked_on"].startswith("a reduced clone (2 layers")
    right = attention.MultiHeadAttention.onnx_lowering
    monkeypatch.setattr(attention.MultiHeadAttention, "onnx_lowering",
                        lambda self, ctx, x, query=None: right(_Override(self, num_heads=self.num_heads // 2),
                                                               ctx, x, query))
    bad = stress.structural_check(built_of(model), "int32", 17, None)
    assert not bad["passed"] and bad["outputs"]["logits"]["relative"] > 1e-2
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))  # the model is untouched


@pytest.mark.parametrize("name,reduce_range", [("canonical_classifier", False), ("pretrainer", False),
                                               ("canonical_classifier", True)])
def test_int8_is_what_onnxruntimes_own_dynamic_quantizer_computes(name, reduce_range, tmp_path):
    """bertc writes the int8 graph itself (no per-channel Python loop); ORT's quantize_dynamic, with the
    same options, on the same optimized graph, must give the same int8 weights and the same outputs; and
    the tuning's 7-bit weights are ORT's ``reduce_range``."""
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from bertc.optimize.onnx_artifacts import INT8_OPTIONS
    from bertc.optimize.quantize import QMAX, REDUCED_QMAX, quantize_dynamic_int8

    spec, sig, model = built(name)
    proto = lower_model(built_of(model)).proto
    ours = quantize_dynamic_int8(proto, qmax=REDUCED_QMAX if reduce_range else QMAX)
    assert op_counts(ours.proto).get("MatMul", 0) == 0 and op_counts(ours.proto)["DynamicQuantizeMatMul"] > 0
    # ORT's quantizer rewrites Gemm as MatMul + Add (B transposed in place): give it the weight-bearing
    # Gemms as MatMul + Add on a transposed copy, and keep them fp32, as bertc does.
    theirs_in = onnx.ModelProto()
    theirs_in.CopyFrom(proto)
    graph, keep = theirs_in.graph, []
    inits = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            w = node.input[1]
            if trans_b:
                graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[w]).T.copy(), w + "_t"))
                w += "_t"
            nodes += [helper.make_node("MatMul", [node.input[0], w], [node.name + "/p"], name=node.name),
                      helper.make_node("Add", [node.name + "/p", node.input[2]], list(node.output))]
            keep.append(node.name)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    quantize_dynamic(theirs_in, tmp_path / "ort.onnx", weight_type=QuantType.QInt8, nodes_to_exclude=keep,
                     **{**INT8_OPTIONS, "reduce_range": reduce_range},
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    theirs = onnx.load(str(tmp_path / "ort.onnx"))
    mine = {t.name: numpy_helper.to_array(t) for t in ours.proto.graph.initializer if t.name.endswith(
        ("_quantized", "_scale", "_zero_point"))}
    ort = {t.name: numpy_helper.to_array(t) for t in theirs.graph.initializer if t.name in mine}
    assert set(ort) == set(mine) and len(mine) >= 9
    for key, value in mine.items():
        np.testing.assert_array_equal(value, ort[key], err_msg=key)
    a, b = session(ours.proto), ort_session(tmp_path / "ort.onnx")
    for inputs in random_mask_cases(spec):
        for x, y in zip(a.run(sig.output_names, inputs), b.run(sig.output_names, inputs)):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
