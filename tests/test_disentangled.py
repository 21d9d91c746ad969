"""DeBERTa-v2/v3 disentangled attention (the ``disentangled`` position scheme and attention) against
transformers' DebertaV2Model: fixtures made by ``tools/make_disentangled_fixture.py`` (a tiny random model,
transformers' last_hidden_state and its weights under bertc's paths), compared at the real tokens on Keras,
model.onnx (tf2onnx), model.optimized.onnx (com.microsoft MultiHeadAttention) and TFLite; the spec rules."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest

from bertc.build import build_model
from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC
from bertc.spec import load_spec

FIXTURES = Path(__file__).parent / "fixtures" / "disentangled"
NAMES = ["deberta_v3_shared", "deberta_own_proj"]
ATOL = 1e-5


def fixture(name):
    return np.load(FIXTURES / f"{name}.npz"), json.loads((FIXTURES / f"{name}.json").read_text())


def built_with_weights(spec_dict, data):
    built = build_model(load_spec(spec_dict))
    weights = {k[len("weight:"):]: data[k] for k in data.files if k.startswith("weight:")}
    paths = {w.path for w in built.model.weights}
    assert set(weights) <= paths and paths - set(weights) <= {"pooler/kernel", "pooler/bias"} | {
        p for p in paths if p.startswith("classifier")}
    for w in built.model.weights:
        if w.path in weights:
            w.assign(weights[w.path])
    return built


def inputs_of(data):
    return {"input_word_ids": data["input_word_ids"], "input_mask": data["input_mask"]}


def diff_at_real_tokens(got, data) -> float:
    real = data["input_mask"].astype(bool)
    return float(np.abs(np.asarray(got)[real] - data["last_hidden_state"][real]).max())


# --- the maths --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_rows_are_transformers_buckets(name):
    """The scheme's row lookup is clamp(transformers' build_relative_position + att_span) (query i, key j), and
    p2c's row clamp(-bucket(j - i) + att_span) is the same row."""
    from bertc.components.positions import DisentangledSpec, disentangled_row_lookup, log_bucket_positions

    data, spec = fixture(name)
    position = DisentangledSpec.model_validate(spec["encoder"]["position"])
    n = spec["encoder"]["embedding"]["max_sequence_length"]
    buckets = data["buckets"]                                     # transformers' [i, j]
    s = buckets.shape[0]
    i, j = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    span = position.attention_span(n)
    lookup = disentangled_row_lookup(position, n)
    assert np.array_equal(lookup[i - j + n - 1], np.clip(buckets + span, 0, 2 * span - 1))
    assert np.array_equal(lookup[i - j + n - 1], np.clip(-buckets.T + span, 0, 2 * span - 1))
    far = np.arange(-5000, 5001)
    assert np.array_equal(log_bucket_positions(far, 256, 512), -log_bucket_positions(-far, 256, 512))


@pytest.mark.parametrize("name", NAMES)
def test_keras_is_transformers_debertav2(name):
    data, spec = fixture(name)
    built = built_with_weights(spec, data)
    out = built.model(inputs_of(data), training=False)["sequence_output"]
    assert diff_at_real_tokens(out, data) <= ATOL
    # the position terms matter: without the relative embeddings the model is far off
    table = next(w for w in built.model.weights if w.path == "position/rel_embeddings")
    table.assign(np.zeros(table.shape, np.float32))
    assert diff_at_real_tokens(built.model(inputs_of(data), training=False)["sequence_output"], data) > 1e-2
    assert built.model.count_params() == built.encoder.param_count(needs_pooled=True)


@pytest.mark.parametrize("name", NAMES)
def test_optimized_lowering_is_transformers_debertav2_and_prunes_for_a_classifier(name):
    from bertc.optimize.lower import lower_model
    from bertc.optimize.onnx_artifacts import ort_session

    data, spec = fixture(name)
    built = built_with_weights(spec, data)
    lowered = lower_model(built)
    assert lowered.op_counts["com.microsoft.MultiHeadAttention"] == 2 and "Softmax" not in lowered.op_counts
    assert lowered.coverage["layers"]["layer_0"]["attention"].startswith("FusedMatMul+GatherElements (c2p, p2c) + MultiHeadAttention")
    sess = ort_session(lowered.proto.SerializeToString())
    got, = sess.run(["sequence_output"], inputs_of(data))
    assert diff_at_real_tokens(got, data) <= ATOL

    d = copy.deepcopy(spec)
    d["head"] = {"type": "classifier", "num_classes": 3}
    built = built_with_weights(d, data)
    lowered = lower_model(built)
    assert lowered.pruned and lowered.coverage["layers"]["layer_1"]["attention"].endswith("(first token)")
    sess = ort_session(lowered.proto.SerializeToString())
    got, = sess.run(["logits"], inputs_of(data))
    assert np.abs(got - np.asarray(built.model(inputs_of(data), training=False)["logits"])).max() <= ATOL


# --- every backend, through the CLI ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_cli_build_every_backend_is_transformers_debertav2(name, tmp_path):
    """transformers' weights saved as a .keras file, built through the CLI with --weights: every fp32 backend
    (model.onnx, model.optimized.onnx, TFLite) matches transformers' last_hidden_state at the real tokens."""
    from bertc.backends import open_runner, plan_backends

    data, spec = fixture(name)
    weights = tmp_path / "weights.keras"
    built_with_weights(spec, data).model.save(weights)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    out = tmp_path / "out"
    assert main(["build", str(path), "-o", str(out), "-q", "--weights", str(weights)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed" and report["parity"]["passed"]
    fusion = report["fusion"]
    assert fusion["lowered"] and fusion["not_lowered"] == [] and fusion["structural_check"]["passed"]
    assert fusion["layers"]["position"]["position"].startswith("disentangled")
    backends, _ = plan_backends(out, report["artifacts"])
    worst = {}
    for backend in backends:
        if backend.precision != "fp32":
            continue
        worst[backend.name] = diff_at_real_tokens(open_runner(backend)(inputs_of(data))["sequence_output"], data)
    assert {"onnx_cpu", "onnx_optimized_cpu", "tflite"} <= set(worst)
    print(name, worst)
    assert max(worst.values()) <= ATOL, worst


# --- the spec rules ----------------------------------------------------------------------------------

def _validate(tmp_path, capsys, d):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(d))
    rc = main(["validate", str(path)])
    err = capsys.readouterr()
    return rc, err.out + err.err


def test_disentangled_attention_and_scheme_need_each_other(tmp_path, capsys):
    _, spec = fixture(NAMES[0])
    d = copy.deepcopy(spec)
    del d["encoder"]["position"]
    rc, text = _validate(tmp_path, capsys, d)
    assert rc == EXIT_BAD_SPEC
    assert "$.encoder.hidden.attention" in text and "$.encoder.position" in text and "'absolute'" in text

    d = copy.deepcopy(spec)
    d["encoder"]["hidden"]["attention"] = {"type": "multi_head", "num_heads": 4}
    rc, text = _validate(tmp_path, capsys, d)
    assert rc == EXIT_BAD_SPEC
    assert "$.encoder.position" in text and "$.encoder.hidden.attention" in text and "'multi_head'" in text

    d = {"name": "bert_disentangled", "encoder": {"type": "bert", "vocab_size": 30, "hidden_size": 16,
                                                   "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                                                   "position": {"type": "disentangled", "position_buckets": 8}}}
    rc, text = _validate(tmp_path, capsys, d)
    assert rc == EXIT_BAD_SPEC and "$.encoder.position" in text and "at $.encoder is 'multi_head'" in text

    d = copy.deepcopy(spec)
    d["encoder"]["position"]["max_relative_positions"] = 4
    rc, text = _validate(tmp_path, capsys, d)
    assert rc == EXIT_BAD_SPEC and "$.encoder.position.max_relative_positions" in text
    assert main(["validate", str(FIXTURES / f"{NAMES[0]}.json")]) == 0


def test_plugin_subclass_takes_the_portable_path_with_the_position_tensors():
    """A plug-in attention subclassing ``disentangled`` (it changes the maths' hooks, no lowering of its own)
    still needs the scheme, and its portable lowering is traced with the layer's disentangled tensors."""
    from typing import Literal

    from bertc.components.attention import DisentangledAttention, DisentangledAttentionSpec
    from bertc.components.common import serializable
    from bertc.optimize.lower import lower_model
    from bertc.optimize.onnx_artifacts import ort_session
    from bertc.registry import ATTENTION

    class PluginSpec(DisentangledAttentionSpec):
        type: Literal["disentangled_plugin"] = "disentangled_plugin"

    @ATTENTION.register("disentangled_plugin", spec=PluginSpec, description="test plug-in")
    @serializable
    class PluginAttention(DisentangledAttention):
        spec_cls = PluginSpec

        def mix_logits(self, logits):
            return logits

    try:
        data, spec = fixture(NAMES[0])
        d = copy.deepcopy(spec)
        d["encoder"]["hidden"]["attention"]["type"] = "disentangled_plugin"
        d["head"] = {"type": "classifier", "num_classes": 3}
        built = built_with_weights(d, data)
        lowered = lower_model(built)
        assert [n.split(":")[0] for n in lowered.not_lowered] == ["layer_0/attention (PluginAttention)",
                                                                  "layer_1/attention (PluginAttention)"]
        got, = ort_session(lowered.proto.SerializeToString()).run(["logits"], inputs_of(data))
        assert np.abs(got - np.asarray(built.model(inputs_of(data), training=False)["logits"])).max() <= ATOL
        del d["encoder"]["position"]
        with pytest.raises(Exception, match="needs the encoder's 'disentangled' position scheme"):
            load_spec(d)
    finally:
        ATTENTION.unregister("disentangled_plugin")
