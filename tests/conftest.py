import atexit
import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
# Full-size benchmark specs (BERT-base / -large) belong to tools/, never to tests.
BENCHMARK_SPECS = sorted(p for p in SPECS.glob("*.json") if p.stem.startswith(("bert_base", "bert_large")))
# specs/ holds the seed notebooks' real models (e.g. 768 wide, as Model Garden's defaults say).
SEED_SPECS = sorted(p for p in SPECS.glob("*.json") if p not in BENCHMARK_SPECS)
TINY_WIDTH = 64


def tiny_copy(data: dict) -> dict:
    """A bundled spec with every wide bert/albert encoder narrowed to hidden 64 (4 heads, intermediate 128);
    everything else (heads, activations, initializers, sequence lengths) as the spec says."""
    data = copy.deepcopy(data)
    enc = data["encoder"]
    if enc.get("type") in ("bert", "albert") and enc.get("hidden_size", 768) > TINY_WIDTH:
        enc.update(hidden_size=TINY_WIDTH, num_attention_heads=4, intermediate_size=2 * TINY_WIDTH)
    return data


def _write_tiny_copies() -> list[Path]:
    folder = Path(tempfile.mkdtemp(prefix="bertc-tiny-specs-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)   # each test process removes its own copies
    paths = []
    for path in SEED_SPECS:
        copy_path = folder / path.name
        copy_path.write_text(json.dumps(tiny_copy(json.loads(path.read_text())), indent=2))
        paths.append(copy_path)
    return paths


# What bertc caches about the host (int8 form timings) goes to a folder of this test process's own, removed at exit:
# the tests never read or write the user's cache, and each process times what it needs.
_CACHE = tempfile.mkdtemp(prefix="bertc-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["BERTC_CACHE_DIR"] = _CACHE

# Tiny copies of the seed specs (same file names), for tests that build and export every model.
TINY_SPECS = _write_tiny_copies()


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
