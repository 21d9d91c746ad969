"""Texts as transformers and sentence-transformers read them.

sentence_bert_config.json's ``do_lower_case``: sentence-transformers lowercases each text with ``str.lower()``
before its tokenizer. bertc did it with the tokenizers library's Lowercase normalizer, which maps one character at
a time: a word's final capital sigma became σ where str.lower() gives ς (ΟΔΥΣΣΕΥΣ -> ...##σ, not ...##ς), so the
ids, and the embeddings, differed from sentence-transformers'."""
import json
import shutil
import sys
from pathlib import Path

import pytest

import bertc
from bertc.text import encode_texts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_run import shared_builds  # noqa: E402


def _greek(folder: Path) -> dict:
    """The build's tokenizer with three of its tokens renamed α, ##σ and ##ς (the model's vocabulary size kept),
    lowercasing as sentence-transformers' do_lower_case says; returns the new tokens' ids."""
    path = folder / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    vocab = tokenizer["model"]["vocab"]
    renamed = dict(zip(["!", "?", ","], ["α", "##σ", "##ς"]))
    tokenizer["model"]["vocab"] = {renamed.get(k, k): v for k, v in vocab.items()}
    path.write_text(json.dumps(tokenizer))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16, "do_lower_case": True}))
    return {t: vocab[k] for k, t in renamed.items()}


@pytest.fixture(scope="module")
def greek_build(tmp_path_factory):
    source = shared_builds(tmp_path_factory, ("st_bert_mean_norm",))["st_bert_mean_norm"]
    out = tmp_path_factory.mktemp("lower") / "out"
    shutil.copytree(source, out)
    return out, _greek(out)


def test_parity_text_lowercases_as_str_lower(greek_build):
    out, ids = greek_build
    got = encode_texts(out, ["ΑΣ", "ας", "ασ", ("ΑΣ", "ΑΣ")], 16)["input_word_ids"]
    assert list(got[0][1:3]) == [ids["α"], ids["##ς"]] and list(got[0]) == list(got[1])   # the final sigma
    assert list(got[2][1:3]) == [ids["α"], ids["##σ"]]
    assert list(got[3][1:3]) == [ids["α"], ids["##ς"]] and list(got[3][4:6]) == [ids["α"], ids["##ς"]]


def test_bertc_run_lowercases_as_str_lower(greek_build):
    out, _ = greek_build
    rt = bertc.Runtime(out, artifact="onnx")
    upper, final, medial = rt.run(["ΑΣ", "ας", "ασ"])
    assert (upper == final).all() and not (upper == medial).all()


# --- the text files of parity --text, bench --text and --calibration (bertc.text.read_texts) ---------------------------

def test_text_files_end_lines_as_bertc_run_does(tmp_path):
    """read_texts split lines at U+2028, U+0085, \\x0b, \\x0c, ... (str.splitlines), where bertc run's .txt lines do
    not end: on one file parity judged 9 examples where run read 5. A byte-order mark is no part of the text."""
    from bertc.text import read_texts

    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffa b\r\nc\u2028d\x0ce\x85f\rg\th\n\n  \ni\x1cj\n".encode())
    assert read_texts(path) == ["a b", "c\u2028d\x0ce\x85f", ("g", "h"), "i\x1cj"]


@pytest.mark.parametrize("line, says", [("abc\t", "line 2: empty pair after the tab"),
                                        ("\tabc", "line 2: empty text before the tab"),
                                        ("abc\t  ", "line 2: empty pair after the tab")])
def test_a_tab_with_nothing_on_one_side_is_refused_naming_the_line(tmp_path, line, says):
    """"abc<TAB>" was encoded as a pair with an empty second text ([CLS] abc [SEP] [SEP]), which transformers never
    makes; bertc run refuses the line, and so do parity, bench and calibration now."""
    from bertc.errors import InputError
    from bertc.text import read_texts

    path = tmp_path / "t.txt"
    path.write_text(f"first\n{line}\n")
    with pytest.raises(InputError, match=f"^{path}: {says}"):
        read_texts(path)
