"""Numeric validation of a built model. Each check reports its measured figure."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

from bertc.build import expected_param_count
from bertc.components.common import MASK_ADDER, keras, tf
from bertc.inputs import make_inputs, pad_to, random_mask
from bertc.registry import HEADS
from bertc.signature import Signature
from bertc.spec import LONG_CONTEXT, Spec

INVARIANCE_ATOL = 1e-5
# and a relative term, as parity's tolerance has: two shapes of one computation (a short batch and the same padded,
# a row alone and in a batch) add in another order, which moves a value of 557 by one unit in the last place (3e-5):
# a correct encoder with large activations failed the check, blamed on its mask (found by a tester)
INVARIANCE_RTOL = 1e-6
INVARIANCE_THRESHOLD = f"{INVARIANCE_ATOL:g} + {INVARIANCE_RTOL:g} x |value|"
LEARNING_RATES = (1e-2, 1e-3, 1e-4)  # tried in order until the loss goes down


@dataclass
class CheckResult:
    name: str
    passed: bool
    figure: Any
    threshold: Any
    detail: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def _run(model, inputs) -> dict[str, np.ndarray]:
    out = model({k: tf.constant(v) for k, v in inputs.items()}, training=False)
    return {k: np.asarray(v) for k, v in out.items()}


def _max_diff(a: dict, b: dict, seq_len: Optional[int] = None, infos=()) -> float:
    """The max abs difference of ``a`` and ``b`` (NaN when either holds one): :func:`_invariant`'s figure."""
    return _invariant(a, b, seq_len, infos)[0]


def _invariant(a: dict, b: dict, seq_len: Optional[int] = None, infos=()) -> tuple[float, bool]:
    """(the max abs difference of ``a`` and ``b``, whether every difference is within ``INVARIANCE_ATOL +
    INVARIANCE_RTOL x |a|``); a NaN on either side fails."""
    axes = {i.name: i.seq_axis for i in infos}
    worst, within = 0.0, True
    for name in a:
        x, y = a[name], b[name]
        axis = axes.get(name)
        if seq_len is not None and axis is not None:
            x, y = (np.take(t, np.arange(seq_len), axis=axis) for t in (x, y))
        d = np.abs(x - y)
        worst = _worse(worst, d)
        within = within and bool(np.all(d <= INVARIANCE_ATOL + INVARIANCE_RTOL * np.abs(x)))
    return worst, within and not np.isnan(worst)


def _worse(worst: float, d) -> float:
    """max(worst, max(d)) keeping NaN: a difference with a NaN on one side (or both) is never a pass, where the
    builtin max(0.0, nan) is 0.0."""
    m = float(np.max(d)) if np.size(d) else 0.0
    return float("nan") if np.isnan(m) or np.isnan(worst) else max(worst, m)


SHORT_LENGTH_CAP = 32  # the short batch of the invariance checks: min(max_sequence_length // 2, this)


def validation_length(spec: Spec) -> int:
    """The length validation pads to: ``max_sequence_length``; for a long-context model (more than
    :data:`LONG_CONTEXT` positions: ModernBERT's 8,192, where one padded pass needs tens of GB) the longest
    of ``parity.sequence_lengths``, or :data:`LONG_CONTEXT` when the spec names none."""
    max_len = spec.encoder.max_sequence_length
    if max_len <= LONG_CONTEXT:
        return max_len
    return max(spec.parity.sequence_lengths or [LONG_CONTEXT])


class Passes:
    """The forward passes validation needs, each run once and shared between the checks.

    ``short``: a batch of 2 at a short length (row 0 uses all of it, row 1 one real token);
    ``short_again``: the same inputs again (determinism); ``padded``: ``short`` padded to
    :func:`validation_length` (padding invariance; at ``max_sequence_length`` every position embedding
    is used); ``row i``: row i of ``short`` alone (batch invariance). Sizes follow the model: one pass
    over that length per row, the rest at a short length, so validation costs about 2 x that length
    + 8 x 32 tokens of inference whatever the model."""

    def __init__(self, model, spec: Spec, rng):
        self.model, self.max_len = model, validation_length(spec)
        self.short_len = max(1, min(self.max_len // 2, SHORT_LENGTH_CAP))
        self.inputs = make_inputs(spec, 2, self.short_len, rng)
        self._cache: dict[str, dict] = {}
        self.tokens = 0

    def get(self, name: str) -> dict[str, np.ndarray]:
        if name not in self._cache:
            inputs = self.inputs_of(name)
            self.tokens += int(next(iter(inputs.values())).shape[0]) * int(inputs["input_word_ids"].shape[1])
            self._cache[name] = _run(self.model, inputs)
        return self._cache[name]

    def inputs_of(self, name: str) -> dict[str, np.ndarray]:
        if name in ("short", "short_again"):
            return self.inputs
        if name == "padded":
            return pad_to(self.inputs, self.max_len)
        if name.startswith("row "):
            i = int(name[4:])
            return {k: v[i:i + 1] for k, v in self.inputs.items()}
        raise KeyError(name)

    def all_outputs(self):
        return list(self._cache.items())


def check_finite(model, spec: Spec, sig: Signature, passes: Passes) -> CheckResult:
    """Every output of every validation pass (the padded one reaches max_sequence_length) is finite."""
    passes.get("short")
    passes.get("padded")
    bad: dict[str, int] = {}
    for _, out in passes.all_outputs():
        for k, v in out.items():
            bad[k] = bad.get(k, 0) + int(np.size(v) - np.isfinite(v).sum())
    n = sum(bad.values())
    return CheckResult("finite_outputs", n == 0, n, 0,
                       "non-finite values per output over all validation passes: "
                       + ", ".join(f"{k}={v}" for k, v in bad.items()))


def check_finite_weights(model, spec: Spec, sig: Signature, passes: Passes) -> CheckResult:
    """Every weight is finite: a NaN / inf in a checkpoint (one embedding row is enough) reaches the outputs only for
    the inputs that read it, which the validation passes may never hold."""
    bad = []
    for v in model.weights:
        value = np.asarray(v.value if hasattr(v, "value") else v)
        if np.issubdtype(value.dtype, np.floating):
            n = int(value.size - np.isfinite(value).sum())
            if n:
                bad.append((v.path, n))
    n = sum(k for _, k in bad)
    detail = "non-finite values in the weights" + (": " + ", ".join(f"{p} ({k})" for p, k in bad[:8])
                                                    + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
                                                    if bad else "")
    return CheckResult("finite_weights", n == 0, n, 0, detail)


def check_deterministic(model, spec: Spec, sig: Signature, passes: Passes) -> CheckResult:
    diff = _max_diff(passes.get("short"), passes.get("short_again"))
    return CheckResult("deterministic", diff == 0.0, diff, 0.0, "max abs diff between two identical calls")


def check_padding_invariance(model, spec: Spec, sig: Signature, passes: Passes) -> CheckResult:
    max_len, short = passes.max_len, passes.short_len
    if max_len < 2:
        return CheckResult("padding_invariance", True, 0.0, INVARIANCE_THRESHOLD, "skipped: max_sequence_length is 1")
    diff, within = _invariant(passes.get("short"), passes.get("padded"), short, sig.outputs)
    return CheckResult("padding_invariance", within, diff, INVARIANCE_THRESHOLD,
                       f"outputs at the first {short} positions, before and after padding to {max_len}"
                       + ("" if within else MASK_HINT))


# why a correct model can fail the two mask checks: its attention logits (very large weights) spread wider than the
# mask's -10000 hides
MASK_HINT = (f"; a masked key's attention logit gets {MASK_ADDER:g} added, which hides it only while the logits of a "
             f"row spread less than that: weights this large let masked keys through (transformers adds the float "
             f"minimum)")


def check_batch_invariance(model, spec: Spec, sig: Signature, passes: Passes) -> CheckResult:
    batched = passes.get("short")
    n = len(passes.inputs["input_word_ids"])
    diff, within = 0.0, True
    for i in range(n):
        d, ok = _invariant(passes.get(f"row {i}"), {k: v[i:i + 1] for k, v in batched.items()})
        diff, within = _worse(diff, d), within and ok
    return CheckResult("batch_invariance", within, diff, INVARIANCE_THRESHOLD,
                       f"row i of a batch of {n} against example i alone")


MASKED_LENGTH_CAP = 32  # the random-mask batch: 3 rows of min(max_sequence_length, this) tokens, two passes


def check_masked_invariance(model, spec: Spec, sig: Signature, _shared=None) -> CheckResult:
    """With a random (non-contiguous) 0/1 mask, what the real tokens compute must not depend on the
    content of the masked ones: attention ignores masked keys. Compared: sequence outputs at the real
    positions, and per-row outputs (pooled [CLS], classifier, masked-LM at real positions) of the rows
    whose first token is real (a masked [CLS] still computes its own row from its own content).
    Shapes do not change, and a masked key's weight underflows to exactly 0 in float32 (while a row's logits
    spread less than the mask's -10000: far beyond any trained model's), so the outputs must be bit-identical: a leak through the mask is often far below any tolerance at the logits of
    a randomly initialised model (~1e-6), so the threshold is exact equality. With positions numbered from
    the ids (``from_ids``) a masked token with the pad id keeps it and no other takes it: whether a masked
    token is counted is part of the input there, as in transformers. Its inputs come from its
    own seeded generator (the fourth argument, whatever the other checks share, is not used)."""
    max_len = min(spec.encoder.max_sequence_length, MASKED_LENGTH_CAP)
    if max_len < 2:
        return CheckResult("masked_invariance", True, 0.0, 0.0, "skipped: max_sequence_length is 1")
    rng = np.random.default_rng([spec.seed, 0x6D61736B])
    mask = random_mask(3, max_len, rng)
    inputs = make_inputs(spec, 3, max_len, rng, mask=mask)
    changed = dict(inputs)
    ids = inputs["input_word_ids"]
    other = rng.integers(1, spec.encoder.vocab_size, size=mask.shape)
    position = getattr(spec.encoder, "position_spec", None)
    absolute = getattr(position, "absolute", position)
    if getattr(absolute, "from_ids", False):
        # positions numbered from the ids (transformers' RoBERTa / MPNet) count the masked tokens whose id is not
        # the pad id: which masked tokens hold it is part of the input, only their other ids may change
        pad = absolute.offset - 1
        other = np.where((ids == pad) | (other == pad), ids, other)
    changed["input_word_ids"] = np.where(mask == 1, ids, other).astype(np.int32)
    if "input_type_ids" in inputs:
        changed["input_type_ids"] = np.where(mask == 1, inputs["input_type_ids"],
                                             spec.encoder.type_vocab_size - 1 - inputs["input_type_ids"]).astype(np.int32)
    a, b = _run(model, inputs), _run(model, changed)
    diff = 0.0
    for info in sig.outputs:
        d = np.abs(a[info.name] - b[info.name])
        # (batch, sequence, ...) at the real tokens, or the rows with a real first token
        d = np.moveaxis(d, info.seq_axis, 1)[mask == 1] if info.seq_axis is not None else d[mask[:, 0] == 1]
        diff = _worse(diff, d)
    return CheckResult("masked_invariance", diff == 0.0, diff, 0.0,
                       "outputs of the real tokens under a random 0/1 mask, before and after changing the masked "
                       "tokens' ids" + ("" if diff == 0.0 else MASK_HINT))


def check_param_count(model, spec: Spec, sig: Signature, passes: Passes) -> CheckResult:
    actual, expected = int(model.count_params()), expected_param_count(spec, sig)
    return CheckResult("param_count", actual == expected, actual, expected,
                       "model.count_params() against the closed-form count from the spec")


def _loss_fn(spec: Spec, inputs, rng):
    if spec.head is not None:
        head = HEADS.create(spec.head, spec.encoder)
        labels = head.make_labels(inputs, rng)

        def head_loss(out):
            loss = head.loss(out, labels)
            if len(getattr(loss, "shape", ())):   # one value per example: float() of it was an internal error
                from bertc.errors import PluginError
                from bertc.plugins import label_of

                raise PluginError(f"{label_of(type(head))}head {spec.head.type!r} (class {type(head).__name__}): its "
                                  f"loss returned shape {tuple(loss.shape)}, where a head's loss is one scalar (the "
                                  f"mean over the batch)")
            return loss

        return head_loss, "head loss"
    # An encoder alone has no objective: regress its outputs onto fixed random targets.
    targets = None

    def surrogate(out):
        nonlocal targets
        if targets is None:
            targets = {k: tf.constant(rng.standard_normal(v.shape).astype(np.float32)) for k, v in out.items()}
        return tf.add_n([tf.reduce_mean(tf.square(out[k] - targets[k])) for k in out])

    return surrogate, "surrogate MSE against random targets (no head)"


# Weights that only shape the attention logits (queries, keys, position biases, talking heads' pre-softmax mix): over
# a single key the softmax is 1 whatever the logit, so their gradient is zero in exact arithmetic
LOGIT_ONLY = frozenset({"query", "key", "pos_query_proj", "pos_key_proj", "pre_softmax_weight",
                        "relative_attention_bias", "rel_embeddings"})


def _position_terms_unread(spec: Spec) -> bool:
    """Whether the encoder's ``disentangled`` position scheme feeds no logit: every block's attention has an empty
    ``pos_att_type``."""
    position = getattr(spec.encoder, "position_spec", None)
    if getattr(position, "type", None) != "disentangled" or not hasattr(spec.encoder, "blocks"):
        return False
    for block in spec.encoder.blocks():
        scaffold = getattr(block, "as_scaffold", None)
        attention = getattr(scaffold(), "attention", None) if scaffold else None
        if getattr(attention, "pos_att_type", None) != []:
            return False
    return True


def structural_zero_gradients(spec: Spec, length: int) -> list[tuple[Any, str]]:
    """(predicate on a weight's path, why) for the weights whose gradient is zero by the mathematics of the spec,
    not by a defect: a zero gradient there is exempt from the trainability check (and said so in its record)."""
    out = []
    if length == 1:
        out.append((lambda path: bool(LOGIT_ONLY & set(path.split("/"))) or path.startswith("position/"),
                    "attention over a single position (max_sequence_length 1): the softmax is 1 whatever the logits"))
    if _position_terms_unread(spec):
        out.append((lambda path: path.startswith("position/"),
                    "no layer's disentangled attention reads the relative embeddings (pos_att_type is empty "
                    "everywhere, as transformers' DeBERTa-v2 allows): the attention is content-to-content only"))
    if spec.head is not None:
        head = HEADS.create(spec.head, spec.encoder)
        for path, why in getattr(head, "structural_zero_gradients", lambda: {})().items():
            out.append((lambda p, path=path: p == path, why))
    return out


def check_trainability(model, spec: Spec, sig: Signature, passes: Passes) -> CheckResult:
    """One SGD step on the loss over a fixed random batch: every trainable weight gets a finite,
    non-zero gradient and the loss goes down. Gradients are taken in inference mode, so the step is
    deterministic. A weight that only receives gradient once a zero-initialised gate has moved
    (ReZero's ``rezero_alpha``) is checked again after the step. The stepped weights are evaluated
    through ``stateless_call``: the model's own weights are never modified (no copy to restore), and
    the learning-rate trials are forward passes only."""
    rng = np.random.default_rng([spec.seed, 5])
    inputs = {k: tf.constant(v) for k, v in make_inputs(spec, 4, min(16, spec.encoder.max_sequence_length), rng).items()}
    loss_fn, what = _loss_fn(spec, inputs, rng)
    variables = model.trainable_variables
    fixed = [v.value for v in model.non_trainable_variables]

    def loss_at(values):
        out, _ = model.stateless_call(values, fixed, inputs, training=False)
        return loss_fn(out)

    def loss_and_grads(values):
        with tf.GradientTape() as tape:
            tape.watch(values)
            loss = loss_at(values)
        grads = tape.gradient(loss, values)
        # Gathers give IndexedSlices; densify so every gradient is one array.
        return float(loss), [None if g is None else tf.convert_to_tensor(g) for g in grads]

    def dead(grads):
        return [v.path for v, g in zip(variables, grads) if g is None or not bool(tf.reduce_any(g != 0))]

    current = [tf.convert_to_tensor(v.value) for v in variables]
    loss0, grads = loss_and_grads(current)
    nonfinite = [v.path for v, g in zip(variables, grads)
                 if g is not None and not bool(tf.reduce_all(tf.math.is_finite(g)))]
    zero = dead(grads)
    exempt = []
    if zero:   # a zero gradient the spec's mathematics implies (not rounding luck) is recorded, not failed
        rules = structural_zero_gradients(spec, int(inputs["input_word_ids"].shape[1]))
        for path in list(zero):
            why = next((w for match, w in rules if match(path)), None)
            if why is not None:
                zero.remove(path)
                exempt.append((path, why))
    loss1, used_lr, stepped = loss0, None, None
    for lr in LEARNING_RATES:
        stepped = [w - lr * g if g is not None else w for w, g in zip(current, grads)]
        loss1 = float(loss_at(stepped))
        if loss1 < loss0:
            used_lr = lr
            break
    del grads
    late = []
    if zero and stepped is not None:  # gradient reaching these only once another weight moved (e.g. a ReZero gate)
        still = set(dead(loss_and_grads(stepped)[1]))
        late = [p for p in zero if p not in still]
        zero = [p for p in zero if p in still]
    passes.tokens += 4 * 3 * int(inputs["input_word_ids"].shape[1])  # forward + backward ~ 3 forwards
    ok = not nonfinite and not zero and used_lr is not None and np.isfinite(loss0)
    detail = f"{what}; {len(variables)} weights; loss {loss0:.6g} -> {loss1:.6g}"
    detail += f" at lr {used_lr}" if used_lr else " (did not decrease at any of lr 1e-2, 1e-3, 1e-4)"
    if late:
        detail += f"; {len(late)} weight(s) get gradient only after the first step (zero-initialised gate)"
    if exempt:
        reasons = {}
        for path, why in exempt:
            reasons.setdefault(why, []).append(path)
        detail += "".join(f"; zero gradient by construction ({why}): {', '.join(paths)}" for why, paths in reasons.items())
    if zero:
        detail += f"; zero gradient: {', '.join(zero[:5])}" + (" ..." if len(zero) > 5 else "")
    if nonfinite:
        detail += f"; non-finite gradient: {', '.join(nonfinite[:5])}"
    return CheckResult("trainability", bool(ok), round(loss0 - loss1, 8), "> 0", detail)


CHECKS = (check_finite_weights, check_finite, check_deterministic, check_padding_invariance,
          check_batch_invariance, check_param_count, check_trainability, check_masked_invariance)


def run_checks(model: keras.Model, spec: Spec, sig: Signature) -> list[CheckResult]:
    passes = Passes(model, spec, np.random.default_rng([spec.seed, 0]))
    return [check(model, spec, sig, passes) for check in CHECKS]
