"""tokenizer_config.json's ``truncation_side: "left"`` was ignored: bertc cut every over-long text and pair on the
right, where transformers and sentence-transformers (through transformers' tokenizer) cut on the left (a cut
embedding off by 0.078, 17 of 20 RoBERTa pairs scored on other tokens), with no word at import, build or run."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import bertc
from bertc.errors import InputError

sys.path.insert(0, str(Path(__file__).parent))
from test_run import shared_builds  # noqa: E402

WORDS = "the cat sat on the mat a dog ran fast it was big red car house tree road".split()   # a token each


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    return shared_builds(tmp_path_factory, ("st_bert_mean_norm",))


def _side(build, tmp_path, side):
    out = tmp_path / f"out_{side}"
    shutil.copytree(build, out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["truncation_side"] = side
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def test_a_left_truncating_tokenizer_keeps_the_end(builds, tmp_path):
    out = _side(builds["st_bert_mean_norm"], tmp_path, "left")
    text = " ".join(WORDS)                    # 18 tokens + 2 special: the model takes 16
    keep = 14
    cut = bertc.Runtime(out, truncate=True, artifact="onnx").run([text])
    whole = bertc.Runtime(out, artifact="onnx")
    tail, head = " ".join(WORDS[-keep:]), " ".join(WORDS[:keep])
    np.testing.assert_allclose(cut, whole.run([tail]), atol=1e-6)
    assert np.abs(cut - whole.run([head])).max() > 1e-2
    right = bertc.Runtime(_side(builds["st_bert_mean_norm"], tmp_path, "right"), truncate=True, artifact="onnx")
    np.testing.assert_allclose(right.run([text]), whole.run([head]), atol=1e-6)


def test_an_unknown_truncation_side_is_refused(builds, tmp_path):
    out = _side(builds["st_bert_mean_norm"], tmp_path, "middle")
    with pytest.raises(InputError, match=r'tokenizer_config.json: truncation_side "middle" is neither "right" nor '
                                         r'"left"'):
        bertc.Runtime(out, artifact="onnx").run(["the cat"])


def test_a_long_text_cut_on_the_left_is_read_from_its_end(builds, tmp_path, monkeypatch):
    """A long text is tokenized from an end of it that holds the row's tokens (the whole of a 14 MB line took
    seconds and GBs); the tokens kept are those of the whole text's end."""
    import bertc.engine as engine

    out = _side(builds["st_bert_mean_norm"], tmp_path, "left")
    words = WORDS * 20_000                    # 360,000 words, 1.4 MB
    read = []
    ending = engine.Engine._ending
    monkeypatch.setattr(engine.Engine, "_ending", lambda self, text: read.append(ending(self, text)) or read[-1])
    cut = bertc.Runtime(out, truncate=True, artifact="onnx").run([" ".join(words)])
    assert read and len(read[0]) < 5_000 and " ".join(words).endswith(read[0])
    tail = bertc.Runtime(out, artifact="onnx").run([" ".join(words[-14:])])
    np.testing.assert_allclose(cut, tail, atol=1e-6)
