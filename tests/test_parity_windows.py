"""Parity of a model with sliding-window attention at the padded positions whose window holds no real token: such a
query attends to padding alone, every key shifted by the same mask adder (-10000), and the backends round the scores
differently at that magnitude (up to 3e-4 at the outputs of an imported ModernBERT: bertc build failed its own
parity on correct models, 6 of 11 configs with local layers). Those positions are left out; every other position,
padded ones included, is still compared."""
import json

import numpy as np

from bertc.parity import _without, unattended
from bertc.spec import load_spec

ENCODER = {"type": "modernbert", "vocab_size": 64, "hidden_size": 16, "num_layers": 3, "num_attention_heads": 2,
           "intermediate_size": 24, "max_sequence_length": 64, "local_attention": 4, "global_attn_every_n_layers": 3}


def test_the_positions_left_out_are_padding_out_of_every_real_tokens_window():
    spec = load_spec({"name": "w", "encoder": ENCODER})   # window: |i - j| <= 2
    mask = np.array([[1, 1, 1, 0, 0, 0, 0, 0],
                     [1, 1, 1, 1, 1, 1, 1, 1],
                     [0, 0, 0, 0, 1, 0, 0, 0],
                     [1, 0, 0, 0, 0, 0, 1, 0]])
    got = unattended(spec, mask)
    want = np.zeros(mask.shape, bool)
    want[0, 5:] = True          # 3 and 4 see position 2
    want[2, [0, 1, 7]] = True   # 2, 3, 5, 6 see position 4
    want[3, 3] = True           # 3 away from both real tokens (0 and 6); 1, 2, 4, 5, 7 within 2 of one
    np.testing.assert_array_equal(got, want)
    assert unattended(spec, np.ones((2, 8), int)) is None
    for length in (1, 2, 3):   # no longer than the window (the int8 tuning's one-token cases)
        short = np.zeros((2, length), int)
        short[0, 0] = short[1, -1] = 1
        assert unattended(spec, short) is None, length
        wide = load_spec({"name": "w", "encoder": {**ENCODER, "local_attention": 16}})   # broke int8 tuning
        assert unattended(wide, short) is None, length
    np.testing.assert_array_equal(unattended(spec, np.array([[1, 0, 0, 0], [0, 0, 0, 0]])),
                                  [[False, False, False, True], [True, True, True, True]])
    assert unattended(load_spec({"name": "g", "encoder": {**ENCODER, "global_attn_every_n_layers": 1}}), mask) is None
    assert unattended(load_spec(json.loads(json.dumps({"name": "b", "encoder": {
        "type": "bert", "vocab_size": 50, "hidden_size": 16, "num_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 32, "max_sequence_length": 8}}))), mask) is None


def test_any_attention_with_a_sliding_window_says_so_by_its_spec_not_by_its_type_name(monkeypatch):
    """Parity found windows by the built-in's type name ("windowed"): an attention plug-in with a window under its
    own name got no allowance. Every attention spec's `sliding_window` is asked."""
    from bertc.components.attention import TalkingHeadsAttentionSpec
    from conftest import spec_dict

    spec = load_spec(spec_dict("talking_heads"))   # a scaffold block with its own attention component
    mask = np.array([[1, 0, 0, 0, 0, 0, 0, 0]])
    assert unattended(spec, mask) is None
    monkeypatch.setattr(TalkingHeadsAttentionSpec, "sliding_window", property(lambda self: 2))
    np.testing.assert_array_equal(unattended(spec, mask), [[False] * 3 + [True] * 5])


def test_only_those_positions_are_set_aside_along_the_sequence_axis():
    from types import SimpleNamespace

    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    positions = np.array([[False, True, False], [False, False, True]])
    got = _without(x, positions, SimpleNamespace(seq_axis=1))
    assert (got[0, 1] == 0).all() and (got[1, 2] == 0).all() and got.dtype == x.dtype
    assert (got[0, [0, 2]] == x[0, [0, 2]]).all() and (got[1, :2] == x[1, :2]).all()
