"""Keras mixed precision: a bertc layer's sub-layers (its Dense, LayerNormalization, Dropout, nested components)
compute in the layer's own dtype policy, not the process's global one. Keras saves only the outer layer's config
(with its policy) and re-creates the sub-layers on loading, so a float32 model.keras loads under a mixed global
policy as float32, and a model built under mixed_float16 loads in an ordinary float32 process."""
import contextlib
import copy
import json

import numpy as np
import pytest

from conftest import ROOT, tiny_bert

DISENTANGLED = json.loads((ROOT / "tests" / "fixtures" / "disentangled" / "deberta_own_proj.json").read_text())
# transformer, talking-heads + gated feedforward and ReZero blocks; a factorized embedding; the masked LM
MIXED_BLOCKS = json.loads((ROOT / "specs" / "mixed_blocks.json").read_text())
MIXED_BLOCKS["encoder"]["hidden_size"] = 16
MIXED_BLOCKS["encoder"]["embedding"]["embedding_width"] = 8
MIXED_BLOCKS["head"] = {"type": "pretrainer", "num_token_predictions": 2}
MODERNBERT = {"name": "mb", "seed": 1, "encoder": {
    "type": "modernbert", "vocab_size": 32, "hidden_size": 16, "num_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 24, "max_sequence_length": 16, "local_attention": 4, "global_attn_every_n_layers": 2},
    "head": {"type": "masked_lm"}}
SPECS = {"mixed_blocks": MIXED_BLOCKS, "deberta": DISENTANGLED, "modernbert": MODERNBERT}


@contextlib.contextmanager
def global_policy(name):
    """The process-wide Keras policy ``name`` for the block, the previous one restored after it."""
    import keras

    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def _inputs(model, seq=6):
    rng = np.random.default_rng(0)
    feed = {}
    for t in model.inputs:
        name = t.name.split(":")[0]
        if name == "masked_lm_positions":
            feed[name] = np.array([[1, 3], [0, 2]], np.int32)
        elif name == "input_mask":
            feed[name] = np.ones((2, seq), np.int32)
        else:
            feed[name] = rng.integers(0, 2 if "type" in name else 20, (2, seq)).astype(np.int32)
    return feed


def _policies(model) -> dict:
    """{layer path: policy name} of every layer inside ``model`` (sub-layers too), inputs left out."""
    return {getattr(layer, "path", layer.name): layer.dtype_policy.name for layer in model._flatten_layers(include_self=False)
            if type(layer).__name__ != "InputLayer"}


def test_a_float32_model_loads_under_a_mixed_global_policy_as_float32(tmp_path):
    import keras

    import bertc

    for name, spec in SPECS.items():
        model = bertc.build_model(copy.deepcopy(spec)).model
        feed = _inputs(model)
        want = model(feed)
        model.save(tmp_path / f"{name}.keras")
        for mixed in ["mixed_float16", "mixed_bfloat16"] if name == "mixed_blocks" else ["mixed_float16"]:
            with global_policy(mixed):
                loaded = keras.saving.load_model(tmp_path / f"{name}.keras")
                got = loaded(feed)
            policies = _policies(loaded)
            assert len(policies) > 10 and set(policies.values()) == {"float32"}, (name, mixed, policies)
            for key in want:   # the same float32 computation: bit-identical
                assert got[key].dtype == "float32" and np.array_equal(np.asarray(got[key]), np.asarray(want[key]))


def test_a_model_built_under_mixed_float16_loads_in_a_float32_process_and_its_weights_import(tmp_path):
    import bertc

    spec = tiny_bert()
    with global_policy("mixed_float16"):
        mixed = bertc.build_model(spec).model
        feed = _inputs(mixed)
        want = mixed(feed)["logits"]
        mixed.save(tmp_path / "model.keras")   # Keras's own save: no bertc weights manifest, so it is deserialized
    loaded = bertc.load_model(tmp_path / "model.keras")
    policies = _policies(loaded)
    assert set(policies.values()) == {"mixed_float16"}, policies
    assert np.array_equal(np.asarray(loaded(feed)["logits"]), np.asarray(want))
    # what `bertc import` + `bertc build` do with it: a float32 model from the spec, the trained weights loaded
    target = bertc.build_model(spec).model
    assert {w.dtype for w in target.weights} == {"float32"}
    bertc.load_weights(target, spec, tmp_path / "model.keras")
    trained = {w.path: w.numpy() for w in mixed.weights}
    assert all(np.array_equal(w.numpy(), trained[w.path]) for w in target.weights)
    got = np.asarray(target(feed)["logits"])
    assert got.dtype == np.float32 and np.allclose(got, np.asarray(want, np.float32), atol=2e-2)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_imported_deberta_and_modernbert_and_every_pooling_build_and_run_under_a_mixed_policy(policy, tmp_path):
    """build_model under a mixed policy failed for every imported DeBERTa (a float32 scale constant times 16-bit
    logits) and ModernBERT (a float32 window bias), and max / weightedmean pooling gave NaN on every row under
    mixed_float16 (1e9 is inf in float16, 0 x inf NaN; found by a tester)."""
    import bertc
    from bertc.importers import import_spec

    specs = {}
    for name in ("deberta_v3_qa", "modernbert_token_cls"):
        spec = import_spec(ROOT / "tests" / "fixtures" / "hf" / name, tmp_path / f"{name}.json")
        spec.pop("weights")
        specs[name] = spec
    pooled = copy.deepcopy(tiny_bert())
    pooled["head"] = {"type": "sentence_embedding", "pooling": ["max", "weightedmean", "mean"]}
    specs["pooling"] = pooled
    for name, spec in specs.items():
        with global_policy(policy):
            model = bertc.build_model(bertc.load_spec(spec)).model
            outputs = model(_inputs(model), training=False)
        for key, value in outputs.items():
            assert np.isfinite(np.asarray(value, np.float32)).all(), (name, key)
