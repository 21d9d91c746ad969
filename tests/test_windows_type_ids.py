"""A long context's windows get the type ids of the tokenizer's template (found by a tester). The tokenizers
library gives the second text's tokens of every overflowing window type id 1, whatever the post-processor says:
XLM-R's and CamemBERT's template gives every token 0 and their embeddings hold one type id, so any question whose
context needed a second window stopped with ONNX Runtime's 'input index out of range' (exit 70)."""
import json
import shutil
from pathlib import Path

import pytest

import bertc
from bertc.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hf"


@pytest.fixture(scope="module")
def xlmr_qa(tmp_path_factory):
    """The RoBERTa QA fixture's tensors as an XLM-R checkpoint (type_vocab_size 1), with the XLM-R fixture's
    tokenizer (template ``<s> $A </s> </s> $B </s>``, every type id 0)."""
    root = tmp_path_factory.mktemp("xlmr_qa")
    checkpoint = root / "checkpoint"
    checkpoint.mkdir()
    shutil.copy(FIXTURES / "roberta_qa" / "model.safetensors", checkpoint)
    config = json.loads((FIXTURES / "roberta_qa" / "config.json").read_text())
    assert config["type_vocab_size"] == 1
    config.update(model_type="xlm-roberta", architectures=["XLMRobertaForQuestionAnswering"])
    (checkpoint / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json", "sentencepiece.bpe.model"):
        shutil.copy(FIXTURES / "xlmr_model" / name, checkpoint)
    spec, out = root / "spec.json", root / "out"
    assert main(["import", str(checkpoint), "-o", str(spec), "-q"]) == 0
    assert main(["build", str(spec), "-o", str(out), "--no-tflite", "--variants", "none", "--no-parity", "-q"]) == 0
    return out


def test_every_window_of_a_long_context_has_the_templates_type_ids(xlmr_qa, tmp_path):
    from bertc.run_io import Record

    runtime = bertc.Runtime(xlmr_qa, artifact="onnx")
    context = " ".join(["a b"] * 40)
    windows = runtime.engine.context_windows(Record("what?", context, "text 1"))
    assert len(windows) > 1 and all(set(w.type_ids) == {0} for w in windows)
    assert [len(w.ids) for w in windows] == [len(w.type_ids) for w in windows]
    answers = runtime.run([("what?", context)])
    assert len(answers) == 1 and answers[0]["text"] and context[answers[0]["start"]:answers[0]["end"]] == answers[0]["text"]
    inputs = tmp_path / "in.txt"
    inputs.write_text(f"what?\t{context}\n")
    assert main(["run", str(xlmr_qa), str(inputs), "-o", str(tmp_path / "r.jsonl")]) == 0
    assert json.loads((tmp_path / "r.jsonl").read_text())["text"] == answers[0]["text"]


def test_a_bert_templates_second_text_keeps_type_id_1():
    """BERT's ``[CLS] $A [SEP] $B:1 [SEP]:1``: every window already has what its template says; kept as it is."""
    import tokenizers

    from bertc.engine import _as_template_types

    tok = tokenizers.Tokenizer.from_file(str(FIXTURES / "bert_model" / "tokenizer.json"))
    tok.enable_truncation(max_length=16, stride=2, strategy="only_second")
    first = tok.encode("what is it", " ".join(["the cat sat"] * 10))
    assert first.overflowing
    for window in first.overflowing:
        assert _as_template_types(window, first) is window
        second = [i for i, s in enumerate(window.sequence_ids) if s == 1]
        assert second and {window.type_ids[i] for i in second} == {1}
