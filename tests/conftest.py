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


def session_folder(name: str) -> Path:
    """A scratch folder for the whole test run: made by the first process that imports this file (pytest itself),
    inherited through the environment by its xdist workers and subprocesses, removed by the process that made it
    (xdist workers end without running atexit handlers, so folders of their own would stay behind)."""
    key = f"BERTC_TEST_{name.upper()}"
    folder = os.environ.get(key)
    if not folder or not os.path.isdir(folder):
        folder = tempfile.mkdtemp(prefix=f"bertc-{name}-")
        os.environ[key] = folder
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Path(folder)


def _write_tiny_copies() -> list[Path]:
    folder = session_folder("tiny-specs")
    paths = []
    for path in SEED_SPECS:
        copy_path = folder / path.name
        part = folder / f"{path.name}.{os.getpid()}"   # workers write the same text: each renames its own whole copy
        part.write_text(json.dumps(tiny_copy(json.loads(path.read_text())), indent=2))
        os.replace(part, copy_path)
        paths.append(copy_path)
    return paths


# What bertc caches about the host (int8 form timings) goes to a folder of the test run's own: the tests never read
# or write the user's cache.
os.environ["BERTC_CACHE_DIR"] = str(session_folder("cache"))

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
