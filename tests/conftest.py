import copy
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
TINY_SPECS = sorted(p for p in SPECS.glob("*.json") if p.stem not in ("bert_base_classifier", "bert_large_classifier"))


def spec_dict(name: str) -> dict:
    return json.loads((SPECS / f"{name}.json").read_text())


def tiny_bert(**overrides) -> dict:
    d = {"name": "tiny", "seed": 1,
         "encoder": {"type": "bert", "vocab_size": 50, "hidden_size": 16, "num_layers": 2, "num_attention_heads": 2,
                     "intermediate_size": 32, "max_sequence_length": 8},
         "head": {"type": "classifier", "num_classes": 3}}
    d = copy.deepcopy(d)
    for key, value in overrides.items():
        d[key] = value
    return d


@pytest.fixture
def tmp_spec(tmp_path):
    def write(data, name="spec.json"):
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        return path
    return write
