"""QA fuzz defect: an encoder ``initializer: zeros`` validated but every build failed the trainability check
(exit 1): zeros reaching the embedding tables makes every token embed to 0, so the outputs do not depend on the
input. validate refuses it now, at the JSON path that sets it; zeros elsewhere (a head's own) stays a choice."""
import pytest

from bertc.errors import SpecError
from bertc.spec import load_spec

ZEROS = {"type": "zeros"}
BERT = {"type": "bert", "vocab_size": 30, "hidden_size": 8, "num_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 8, "max_sequence_length": 8}
CUSTOM = {"type": "custom", "vocab_size": 10, "max_sequence_length": 8}


def scaffold(embedding, **kw):
    return {"type": "scaffold", "hidden_size": 8, "num_layers": 1, "embedding": embedding,
            "hidden": {"type": "transformer", "num_attention_heads": 2, "intermediate_size": 8}, **kw}


@pytest.mark.parametrize("encoder, path", [
    ({**BERT, "initializer": ZEROS}, "$.encoder.initializer.type"),
    (scaffold(CUSTOM, initializer=ZEROS), "$.encoder.initializer.type"),
    (scaffold({**CUSTOM, "initializer": ZEROS}), "$.encoder.embedding.initializer.type"),
])
def test_zeros_reaching_the_embedding_tables_is_refused(encoder, path):
    with pytest.raises(SpecError) as info:
        load_spec({"name": "z", "encoder": encoder})
    assert any(p == path and "every token would embed to the same vector" in m for p, m in info.value.problems)


@pytest.mark.parametrize("data", [
    {"encoder": scaffold({**CUSTOM, "initializer": {"type": "normal"}}, initializer=ZEROS)},
    {"encoder": BERT, "head": {"type": "classifier", "num_classes": 2, "initializer": ZEROS}},
])
def test_zeros_elsewhere_still_validates(data):
    load_spec({"name": "z", **data})
