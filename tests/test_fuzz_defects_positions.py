"""QA fuzz defect: absolute-position settings on an embedding network with no position table.

A ``modernbert`` embedding (or a ``custom`` one without ``use_position_embeddings``) has no learned absolute
table, so an absolute ``offset`` / ``from_ids`` / ``from_mask`` means nothing there. ``bertc validate`` crashed
(exit 70, ``param_count() got an unexpected keyword argument 'position_offset'``) on the modernbert one and
accepted the custom one silently; both are refused now, naming the JSON path.
"""
import pytest

from bertc.build import expected_param_count
from bertc.errors import SpecError
from bertc.spec import load_spec

MODERNBERT = {"type": "modernbert", "vocab_size": 10, "max_sequence_length": 8}
CUSTOM = {"type": "custom", "vocab_size": 10, "max_sequence_length": 8}
CUSTOM_TABLE = {**CUSTOM, "use_position_embeddings": True}


def scaffold(embedding, position):
    return {"name": "p", "encoder": {"type": "scaffold", "hidden_size": 8, "num_layers": 1, "embedding": embedding,
                                     "hidden": {"type": "transformer", "num_attention_heads": 2, "intermediate_size": 8},
                                     "position": position}}


@pytest.mark.parametrize("embedding", [MODERNBERT, CUSTOM])
@pytest.mark.parametrize("position, path", [
    ({"type": "absolute", "offset": 1}, "$.encoder.position.offset"),
    ({"type": "absolute", "offset": 2, "from_ids": True}, "$.encoder.position.from_ids"),
    ({"type": "absolute", "offset": 2, "from_mask": True}, "$.encoder.position.from_mask"),
    ({"type": "relative_bias", "absolute": {"offset": 2}}, "$.encoder.position.absolute.offset"),
])
def test_absolute_settings_without_a_position_table_are_refused(embedding, position, path):
    with pytest.raises(SpecError) as info:
        load_spec(scaffold(embedding, position))
    problems = info.value.problems
    assert any(p == path and "no learned absolute position table" in m for p, m in problems), problems


@pytest.mark.parametrize("embedding", [MODERNBERT, CUSTOM])
@pytest.mark.parametrize("position", [{"type": "absolute"}, {"type": "absolute", "offset": 0},
                                      {"type": "relative_bias"}])
def test_default_absolute_settings_still_validate(embedding, position):
    spec = load_spec(scaffold(embedding, position))
    assert expected_param_count(spec) > 0


def test_a_position_table_still_takes_an_offset():
    spec = load_spec(scaffold(CUSTOM_TABLE, {"type": "absolute", "offset": 2, "from_ids": True}))
    assert expected_param_count(spec) > 0
