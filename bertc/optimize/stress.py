"""Structural check of a lowering: the optimized graph against Keras on *stress weights*.

Parity compares artifacts on the model's own weights. Freshly initialized BERT weights (stddev
0.02) make every attention nearly uniform and every residual branch tiny, so a lowering with the
wrong head count, a wrong mask or a wrong layer-norm epsilon can agree with Keras to 1e-6 there
and still be wrong for any trained model. Here the model's weights are temporarily replaced by
ones that make every part count (kernels ~ N(0, 1/fan_in), query/key twice as sharp so
attention is peaked, ReZero alphas non-zero, layer-norm gains and biases random), the model is
lowered again and compared with Keras on inputs with random non-contiguous 0/1 masks; then the
original weights are restored. The optimized artifact itself is written from the real weights.
"""
from __future__ import annotations

import numpy as np

# Relative to the output scale: fp32 reorderings stay ~1e-6 of it on the tiny specs and on BERT-base
# (1.6e-6 measured; 12 layers amplify them: 5e-5 with 3x sharper query/key instead of 2x),
# a structural mistake is larger: layer-norm epsilon 1e-3 instead of 1e-12 gives 1e-4 to 7e-4 on the tiny
# specs, half the heads more than 1e-2.
RELATIVE_TOLERANCE = 1e-4


def stress_weights(model, seed: int = 0) -> list:
    """Assign stress weights; returns [(variable, original value)] to restore."""
    rng = np.random.default_rng(seed)
    saved = []
    for v in model.weights:
        path, shape = v.path, tuple(v.shape)
        if path.endswith("kernel") and len(shape) == 2:
            scale = 2.0 if path.endswith(("/query/kernel", "/key/kernel")) else 1.0
            value = rng.normal(0, scale / np.sqrt(shape[0]), size=shape)
        elif "rezero_alpha" in path:
            value = np.asarray(rng.uniform(0.5, 1.0))
        elif path.endswith("/gamma"):
            value = rng.uniform(0.5, 1.5, size=shape)
        elif path.endswith(("/beta", "/bias")):
            value = rng.normal(0, 0.1, size=shape)
        elif len(shape) == 2 and shape[0] == shape[1] and "softmax_weight" in path:
            value = np.eye(shape[0]) + rng.normal(0, 0.3, size=shape)   # talking-heads mixing
        else:
            continue
        saved.append((v, v.numpy()))
        v.assign(value.astype(np.float32))
    return saved


def stress_inputs(spec, input_dtype: str) -> list[dict]:
    from bertc.optimize.runtime import sample_inputs

    max_len = spec.encoder.max_sequence_length
    return [sample_inputs(spec, input_dtype, batch=3, seq=s) for s in sorted({1, min(max_len, 7), max_len})]


# Above this many parameters the check runs on a reduced clone of the model (see reduced_spec): the
# lowering code depends on the spec's structure, not on its sizes, and on BERT-base the full-size check
# cost 13 s and 1.5 GB (a second lowered copy of the weights, the saved originals) for nothing more.
CLONE_ABOVE_PARAMETERS = 2_000_000
CLONE_LAYERS, CLONE_VOCAB, CLONE_SEQUENCE = 2, 128, 32


def reduced_spec(spec):
    """``spec`` with the same components and settings (widths, heads, activations, epsilons, norm placement,
    head) but at most CLONE_LAYERS layers (when one block spec serves every layer), a vocabulary of at
    most CLONE_VOCAB and sequences of at most CLONE_SEQUENCE (:func:`bertc.build.scaled_down`). None when
    the reduced spec breaks a rule of the spec language (e.g. a plug-in with rules of its own): the check
    then runs on the model itself."""
    from bertc.build import scaled_down

    return scaled_down(spec, CLONE_LAYERS, CLONE_VOCAB, CLONE_SEQUENCE, name=f"{spec.name}_structure"[:64])


def structural_check(built, input_dtype: str, opset: int, prune) -> dict:
    """Lower the model with stress weights and compare with Keras; the model's weights are restored.
    A model above CLONE_ABOVE_PARAMETERS is checked through a reduced clone (:func:`reduced_spec`).

    Returns {"passed", "checked_on", "outputs": {name: {"max_abs", "scale", "relative"}}, "problems": [...]}."""
    checked_on = "the model itself"
    if built.model.count_params() > CLONE_ABOVE_PARAMETERS:
        reduced = reduced_spec(built.spec)
        if reduced is not None:
            from bertc.build import build_model

            built = build_model(reduced)
            enc = reduced.encoder.scaffold
            checked_on = (f"a reduced clone ({enc.num_layers} layers, vocabulary {enc.vocab_size}, sequences up to "
                          f"{enc.max_sequence_length}; same components and settings)")
    result = _check(built, input_dtype, opset, prune)
    return {**result, "checked_on": checked_on}


def _check(built, input_dtype: str, opset: int, prune) -> dict:
    from bertc.components.common import tf
    from bertc.optimize.lower import lower_model
    from bertc.optimize.runtime import ort_session

    model, spec, sig = built.model, built.spec, built.signature
    saved = stress_weights(model, spec.seed)
    try:
        proto = lower_model(built, input_dtype=input_dtype, opset=opset, prune=prune).proto
        session = ort_session(proto.SerializeToString())
        worst = {name: [0.0, 0.0] for name in sig.output_names}
        for inputs in stress_inputs(spec, input_dtype):
            ref = model({k: tf.constant(v.astype(np.int32)) for k, v in inputs.items()}, training=False)
            got = dict(zip(sig.output_names, session.run(sig.output_names, inputs)))
            for name in sig.output_names:
                r = np.asarray(ref[name], np.float32)
                worst[name][0] = max(worst[name][0], float(np.max(np.abs(r - got[name]))))
                worst[name][1] = max(worst[name][1], float(np.max(np.abs(r))))
    finally:
        for variable, value in saved:
            variable.assign(value)
    outputs, problems = {}, []
    for name, (max_abs, scale) in worst.items():
        relative = max_abs / max(scale, 1.0)
        outputs[name] = {"max_abs": max_abs, "scale": scale, "relative": relative}
        if not relative <= RELATIVE_TOLERANCE:
            problems.append(f"- onnx_optimized / {name}: max abs diff {max_abs:.3g} on stress weights "
                            f"(output scale {scale:.3g}, relative {relative:.2g} > {RELATIVE_TOLERANCE:g}): "
                            f"the ONNX lowering does not compute what the Keras model computes")
    return {"passed": not problems, "outputs": outputs, "problems": problems}
