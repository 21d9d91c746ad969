"""A Keras model called on a sequence longer than its max_sequence_length, or on ids past its vocab_size /
type_vocab_size, is refused with a ValueError naming the limit (before: TensorFlow's bare Slice / GatherV2 error).
The checks are Python only (static shapes, concrete values): the exported graph gains no op (the pinned artifact
hashes of test_export_parity say so)."""
import numpy as np
import pytest

from conftest import tiny_bert

POSITIONS = {
    "absolute": None,
    "from_mask": {"type": "absolute", "offset": 2, "from_mask": True},
    "relative_bias": {"type": "relative_bias", "num_buckets": 8, "max_distance": 10},
}


def _feed(length, word=1, kind=0):
    return {"input_word_ids": np.full((2, length), word, np.int32), "input_mask": np.ones((2, length), np.int32),
            "input_type_ids": np.full((2, length), kind, np.int32)}


@pytest.mark.parametrize("position", list(POSITIONS))
def test_eager_calls_name_the_limit_an_input_exceeds(position):
    import bertc

    spec = tiny_bert()
    spec["encoder"] = {**spec["encoder"], "num_layers": 1}
    if POSITIONS[position]:
        spec["encoder"]["position"] = POSITIONS[position]
    model = bertc.build_model(spec).model
    assert model(_feed(8))["logits"].shape == (2, 3)       # max_sequence_length 8 itself is fine
    with pytest.raises(ValueError, match="more .*than this model's max_sequence_length 8.*at most 8 tokens"):
        model(_feed(9))
    with pytest.raises(ValueError, match=r"input_word_ids holds 50 \(at \[0, 0\]\), outside this model's "
                                         r"vocab_size 50 \(ids 0 to 49\)"):
        model(_feed(4, word=50))
    with pytest.raises(ValueError, match=r"input_word_ids holds -1 .*vocab_size 50"):
        model(_feed(4, word=-1))
    with pytest.raises(ValueError, match=r"input_type_ids holds 2 .*type_vocab_size 2 \(ids 0 to 1\)"):
        model(_feed(4, kind=2))
