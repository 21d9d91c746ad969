"""Trained weights read from Keras: a .keras saved by Keras, and a bertc build (OUT/ or its model.keras). Weights
load by name and shape, so a model that computes something else with the same names and shapes (another head over
the encoder, a changed activation) built, passed parity against the spec's model and exported a model that was not
the trained one (found by a tester fine-tuning in Keras). Both sources are held to what they compute."""
import copy
import json

import keras
import numpy as np

import bertc
from bertc.cli import main
from conftest import tiny_bert


def _spec(tmp_path, name, **encoder):
    d = tiny_bert()
    d["encoder"].update(encoder)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(d))
    return path, d


def _build(spec, weights, out, capsys):
    code = main(["build", str(spec), "--weights", str(weights), "-o", str(out), "-q", "--no-export"])
    return code, capsys.readouterr().err


def test_a_keras_model_that_computes_otherwise_is_refused(tmp_path, capsys):
    spec, d = _spec(tmp_path, "spec")
    trained = bertc.build_model(bertc.load_spec(d)).model
    rng = np.random.default_rng(0)   # "trained": weights well away from their small initial values
    trained.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in trained.get_weights()])
    same = tmp_path / "same.keras"
    trained.save(same)
    assert _build(spec, same, tmp_path / "ok", capsys)[0] == 0   # the spec's own model: built

    relu, _ = _spec(tmp_path, "relu", activation="relu")   # the same weights, another activation
    code, err = _build(relu, same, tmp_path / "relu_out", capsys)
    assert code == 2 and "the Keras model in it computes another 'logits' than the spec's model" in err, err

    # the encoder under another head: mean pooling of the sequence in place of the pooler, a Dense named as the
    # spec's classifier (the same weight names and shapes)
    encoder_spec = copy.deepcopy(d)
    encoder_spec.pop("head")
    encoder = bertc.build_model(bertc.load_spec(encoder_spec)).model
    encoder.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in encoder.get_weights()])
    pooled = keras.layers.GlobalAveragePooling1D()(encoder.output["sequence_output"])
    logits = keras.layers.Dense(3, name="classifier")(pooled)
    custom = keras.Model(encoder.inputs, {"logits": logits, "pooled_output": encoder.output["pooled_output"]})
    other = tmp_path / "custom.keras"
    custom.save(other)
    code, err = _build(spec, other, tmp_path / "custom_out", capsys)
    assert code == 2 and "computes another 'logits'" in err and "would not be the trained model" in err, err
    assert not (tmp_path / "custom_out").exists()


def test_a_build_is_held_to_the_spec_it_was_built_from(tmp_path, capsys):
    spec, d = _spec(tmp_path, "spec")
    out = tmp_path / "out"
    assert main(["build", str(spec), "-o", str(out), "-q", "--no-export"]) == 0
    relu, _ = _spec(tmp_path, "relu", activation="relu")
    for weights in (out, out / "model.keras"):
        code, err = _build(relu, weights, tmp_path / "relu_out", capsys)
        assert code == 2, err
        assert "the spec does not compute what this build's spec.json" in err
        assert '$.encoder.activation: the spec has "relu", the build\'s spec.json "gelu"' in err, err
    dropout, _ = _spec(tmp_path, "dropout", dropout_rate=0.3)   # a training-only setting may differ
    assert _build(dropout, out, tmp_path / "dropout_out", capsys)[0] == 0


def test_a_tf_checkpoint_of_a_bertc_model_loads_its_optimizer_state_aside(tmp_path, capsys):
    """A tf.train.Checkpoint of a fine-tuned bertc model (its variables named by bertc's weight paths) went to the
    Model Garden importer: 162 problems, each weight both "unused" and "missing" (found by a tester). Its weights
    load by path; the optimizer's variables are set aside."""
    import tensorflow as tf

    spec, d = _spec(tmp_path, "spec")
    model = bertc.build_model(bertc.load_spec(d)).model
    model.compile(optimizer="adam", loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
    rng = np.random.default_rng(1)
    inputs = {"input_word_ids": rng.integers(1, 50, (4, 8)).astype(np.int32),
              "input_mask": np.ones((4, 8), np.int32), "input_type_ids": np.zeros((4, 8), np.int32)}
    model.fit(inputs, {"logits": rng.integers(0, 3, 4)}, epochs=1, verbose=0)
    tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt" / "ckpt"))
    out = tmp_path / "out"
    code, err = _build(spec, tmp_path / "ckpt" / "ckpt", out, capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    ignored = report["weights"]["ignored"]
    assert ignored and all(i["reason"] == "optimizer state" and i["name"].startswith("adam/") for i in ignored)
    built = bertc.load_model(out)
    np.testing.assert_allclose(np.asarray(built(inputs)["logits"]), np.asarray(model(inputs)["logits"]), atol=1e-6)
