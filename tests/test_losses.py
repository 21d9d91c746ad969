"""Losses against independent numpy computations."""
import numpy as np
import pytest

from bertc import losses


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_weighted_sparse_categorical_crossentropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=(3, 5))
    weights = rng.integers(0, 2, size=(3, 5)).astype(np.float32)
    logp = np_log_softmax(logits.astype(np.float64))
    ce = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    expected = (ce * weights).sum() / weights.sum()
    got = losses.weighted_sparse_categorical_crossentropy(labels, logp.astype(np.float32), weights)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    got_logits = losses.weighted_sparse_categorical_crossentropy(labels, logits, weights, from_logits=True)
    np.testing.assert_allclose(float(got_logits), expected, rtol=1e-5)
    unweighted = losses.weighted_sparse_categorical_crossentropy(labels, logp.astype(np.float32))
    np.testing.assert_allclose(float(unweighted), ce.mean(), rtol=1e-5)


def test_logits_given_as_log_probabilities_are_refused():
    """A pretrainer's default outputs are logits: given to the loss without from_logits, they gave a meaningless,
    even negative, loss (fine-tuning then drove it further down); now an error that says to pass from_logits."""
    import tensorflow as tf

    logits = np.random.default_rng(2).normal(size=(3, 5, 7)).astype(np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="not log-probabilities.*pass from_logits=True"):
        losses.weighted_sparse_categorical_crossentropy(np.zeros((3, 5), np.int32), logits)
    logp = np_log_softmax(logits.astype(np.float64)).astype(np.float16)   # mixed precision: a looser sum
    assert np.isfinite(float(losses.weighted_sparse_categorical_crossentropy(np.zeros((3, 5), np.int32), logp)))


def test_all_zero_weights_give_zero_not_nan():
    logp = np_log_softmax(np.ones((2, 3), np.float32))
    assert float(losses.weighted_sparse_categorical_crossentropy([0, 1], logp, [0.0, 0.0])) == 0.0


def test_span_loss_matches_numpy():
    rng = np.random.default_rng(1)
    start, end = rng.normal(size=(4, 9)).astype(np.float32), rng.normal(size=(4, 9)).astype(np.float32)
    sp, ep = rng.integers(0, 9, 4), rng.integers(0, 9, 4)
    ce = lambda lg, y: -np_log_softmax(lg.astype(np.float64))[np.arange(4), y].mean()
    np.testing.assert_allclose(float(losses.span_loss(sp, ep, start, end)), (ce(start, sp) + ce(end, ep)) / 2, rtol=1e-5)


def test_log_probabilities_rounded_to_16_bits_pass_under_a_mixed_policy():
    """Keras' compiled loss casts a mixed-precision model's predictions to float32 before the loss: a pretrainer's
    bfloat16 log-probabilities (logsumexp up to 0.021 off 0) were then held to float32's 1e-3 and model.fit failed,
    telling the user to pass from_logits=True (found by a tester). The policy says the values were 16-bit; logits are
    refused still."""
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(5)
    logits = (3 * rng.normal(size=(4, 6, 100))).astype(np.float32)
    rounded = tf.cast(tf.cast(np_log_softmax(logits.astype(np.float64)), tf.bfloat16), tf.float32)
    labels = np.zeros((4, 6), np.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="not log-probabilities"):
        losses.weighted_sparse_categorical_crossentropy(labels, rounded)   # float32 policy: bfloat16 error too big
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        assert np.isfinite(float(losses.weighted_sparse_categorical_crossentropy(labels, rounded)))
        with pytest.raises(tf.errors.InvalidArgumentError, match="not log-probabilities"):
            losses.weighted_sparse_categorical_crossentropy(labels, logits)
    finally:
        keras.config.set_dtype_policy(before)


def test_a_model_compiled_with_bertc_losses_loads_with_keras_after_import_bertc(tmp_path):
    """The losses were not registered with Keras' serialization: a fine-tuned model compiled with one and saved did
    not load with keras.saving.load_model ("Could not locate function"; found by a tester)."""
    import os
    import subprocess
    import sys

    import bertc
    from conftest import ROOT, tiny_bert

    spec = tiny_bert()
    spec["head"]["num_classes"] = 1
    model = bertc.build_model(bertc.load_spec(spec)).model
    model.compile(optimizer="adam", loss={"logits": losses.weighted_mean_squared_error})
    path = tmp_path / "compiled.keras"
    model.save(path)
    code = ("import bertc, keras, sys; m = keras.saving.load_model(sys.argv[1]); "
            "print(type(m.loss['logits'] if isinstance(m.loss, dict) else m.loss).__name__)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-1500:]
