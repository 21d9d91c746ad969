"""A pretrainer's masked_lm_positions index the tokens of their own row: called eagerly, the Keras model refuses a
position outside [0, S) with a ValueError naming the input, the position and the limit (before: the head's gather
through the flattened batch read a token of a neighbouring row silently: S the next row's first token, -1 the
previous row's last). Like the id checks it is Python only: a traced graph (predict, the exports) gains no op."""
import numpy as np
import pytest

import bertc
from bertc.inputs import make_inputs
from bertc.spec import load_spec
from conftest import tiny_bert

B, S = 3, 6


@pytest.fixture(scope="module")
def pretrainer():
    d = tiny_bert(head={"type": "pretrainer", "num_token_predictions": 3})
    d["encoder"] = {**d["encoder"], "num_layers": 1}
    spec = load_spec(d)
    return bertc.build_model(spec).model, make_inputs(spec, B, S, np.random.default_rng(0))


def _with(feed, row, slot, position):
    positions = np.tile(np.arange(3, dtype=np.int32), (B, 1))
    positions[row, slot] = position
    return {**feed, "masked_lm_positions": positions}


@pytest.mark.parametrize("position", [S, S + 5, -1])
def test_eager_call_refuses_a_position_outside_the_sequence(pretrainer, position):
    model, feed = pretrainer
    with pytest.raises(ValueError, match=rf"masked_lm_positions holds {position} \(at \[1, 2\]\), outside the "
                                         rf"{S} tokens of each sequence \(positions 0 to {S - 1}\)"):
        model(_with(feed, 1, 2, position), training=False)


def test_the_last_and_first_positions_read_their_own_row(pretrainer):
    """Positions 0 and S - 1 are fine, and they read the row's own tokens: a row's outputs do not change when
    the other rows of the batch change."""
    model, feed = pretrainer
    at = _with(feed, 1, 2, S - 1)
    at["masked_lm_positions"][1, 0] = 0
    out = model(at, training=False)["masked_lm"].numpy()
    other = {k: v.copy() for k, v in at.items()}
    for name in ("input_word_ids",):
        other[name][[0, 2]] = (other[name][[0, 2]] + 7) % 50
    np.testing.assert_allclose(model(other, training=False)["masked_lm"].numpy()[1], out[1], atol=1e-6)
