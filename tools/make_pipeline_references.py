"""What transformers' own pipelines answer on the tiny fixtures, for tests/test_run.py to hold ``bertc run`` to.

Runs in a side environment with torch and transformers 4 (transformers 5 has no question-answering pipeline):

    python3 -m venv /work/envs/hf4 && /work/envs/hf4/bin/pip install torch==2.13.0 "transformers>=4.50,<5"
    /work/envs/hf4/bin/python tools/make_pipeline_references.py

Writes tests/fixtures/hf/bert_qa/pipeline_reference.json: ``pipeline("question-answering")`` on the
bert_qa fixture (with bert_model's tokenizer, as the tests give it) for short pairs (one window) and long
contexts read in windows: ``max_seq_len`` 16 (the fixture's positions), ``doc_stride`` 2, 4 and 5,
``max_answer_len`` 30 (bertc's), with and without ``handle_impossible_answer``; and ``top_k`` 3. And tests/fixtures/hf/bert_seq_cls/zero_shot_reference.json:
``pipeline("zero-shot-classification")`` on the bert_seq_cls fixture with NLI class names (entailment,
neutral, contradiction), three candidate labels, the default and a custom hypothesis template, single- and
multi-label. And tests/fixtures/hf/bert_token_cls/pipeline_reference.json: ``pipeline("token-classification")``'s
entities on the bert_token_cls fixture (the tests' labels) with ``aggregation_strategy`` first, average, max
and simple.
And tests/fixtures/hf/bert_seq_cls/pipeline_reference.json: ``pipeline("text-classification", top_k=None)`` on
texts and pairs, the fixture as a single-label and as a multi-label model (``problem_type``). And
tests/fixtures/hf/bert_mc/choice_reference.json: the bert_mc fixture (BertForMultipleChoice) on questions of two to
four choices, as transformers' multiple-choice examples run one (it has no pipeline): the tokenizer on (text,
choice) pairs (a stem put before each choice with a space, as run_swag.py's endings), padded, truncated longest
first, one (1, choices, seq) batch, softmax over the choices.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import transformers as tr

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "hf"
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
LONG = ("a dog ran fast on the road and the cat sat on the mat . the house is big and the tree is small . "
        "this red car is fast and that blue car is small")
CASES = [["the cat sat", "the cat sat on the mat."], ["what ran ?", "a dog ran fast on the road"],
         ["what was red ?", "it was a big red car!"],
         ["what ran ?", LONG], ["what ran ?", LONG[:60]],
         ["what was red ?", "it was a big red car! the house is big and the tree is small , that tree is big and "
                            "the blue cars are fast"],
         ["the cat", "the cats sat on the mats and the dogs ran fast on the roads to the big red houses"]]
STRIDES = (2, 4, 5)
NLI_LABELS = ["entailment", "neutral", "contradiction"]
CLS_LABELS = ["negative", "neutral", "positive"]
CLS_TEXTS = ["the cat sat on the mat.", "a dog ran fast", "it was a big red car!", "the house", "an"]
CLS_PAIRS = [("the cat sat", "the cat sat on the mat."), ("what ran ?", "a dog ran fast on the road")]
NER_LABELS = ["O", "B-ANIMAL", "I-ANIMAL", "B-THING"]
NER_TEXTS = ["the cat sat on the mat.", "a dog ran fast", "it was a big red car!", "the house",
             "this tree is small , that tree is big", "cats and dogs", "the blue car", "an",
             "the cats sat on the mats and the dogs ran"]
CANDIDATES = ["animal", "car", "house"]
ZERO_SHOT_TEXTS = ["the cat sat on the mat.", "a dog ran fast", "it was a big red car!", "the house"]
MAX_ANSWER = 30
# (text, stem or None, choices): the last outgrows the fixture's 16 positions (truncated longest first)
CHOICE_CASES = [("the cat sat on the", None, ["mat", "road", "tree"]),
                ("what ran fast ?", None, ["a dog", "the house", "a big red car", "it"]),
                ("the cat sat", "it was", ["big", "small"]),
                ("is the house big ?", "the house is", ["big and red", "small", "not big"]),
                ("a dog ran fast on the road and the cat sat on the mat", "then",
                 ["the dog sat on the mat too", "a car ran"])]


def fixture(work: Path, name: str, labels=None) -> str:
    """A copy of the fixture ``name`` with bert_model's tokenizer (as the tests give it) and, with ``labels``,
    those class names in its config; its path."""
    work.mkdir(parents=True, exist_ok=True)
    source = work / name
    shutil.copytree(FIXTURES / name, source)
    for f in TOKENIZER:
        shutil.copyfile(FIXTURES / "bert_model" / f, source / f)
    if labels:
        config = json.loads((source / "config.json").read_text())
        config["id2label"] = {str(i): n for i, n in enumerate(labels)}
        config["label2id"] = {n: i for i, n in enumerate(labels)}
        (source / "config.json").write_text(json.dumps(config))
    return str(source)


def question_answering(work: Path) -> dict:
    qa = tr.pipeline("question-answering", model=fixture(work, "bert_qa"), device="cpu")
    rows = []
    for no_answer in (False, True):
        for stride in STRIDES:
            for question, context in CASES:
                got = qa(question=question, context=context, doc_stride=stride, max_seq_len=16,
                         max_answer_len=MAX_ANSWER, handle_impossible_answer=no_answer)
                rows.append({"question": question, "context": context, "doc_stride": stride,
                             "handle_impossible_answer": no_answer, "start": got["start"], "end": got["end"],
                             "answer": got["answer"], "score": float(got["score"])})
    top = []   # top_k 3: the pipeline's three best (a list), long contexts included
    for no_answer in (False, True):
        for question, context in CASES:
            got = qa(question=question, context=context, doc_stride=4, max_seq_len=16, max_answer_len=MAX_ANSWER,
                     handle_impossible_answer=no_answer, top_k=3)
            top.append({"question": question, "context": context, "doc_stride": 4,
                        "handle_impossible_answer": no_answer, "answers": [
                            {"start": a["start"], "end": a["end"], "answer": a["answer"], "score": float(a["score"])}
                            for a in (got if isinstance(got, list) else [got])]})
    return {"max_seq_len": 16, "max_answer_len": MAX_ANSWER, "answers": rows, "top_3": top}


def zero_shot(work: Path) -> dict:
    classify = tr.pipeline("zero-shot-classification", model=fixture(work, "bert_seq_cls", NLI_LABELS), device="cpu")
    rows = []
    for template in ("This example is {}.", "the {} is here"):
        for multi in (False, True):
            for labels in (CANDIDATES, CANDIDATES[:1]):
                for got in classify(ZERO_SHOT_TEXTS, candidate_labels=labels, hypothesis_template=template,
                                    multi_label=multi):
                    rows.append({"text": got["sequence"], "candidate_labels": labels, "template": template,
                                 "multi_label": multi, "labels": got["labels"],
                                 "scores": [float(x) for x in got["scores"]]})
    return {"nli_labels": NLI_LABELS, "results": rows}


def token_classification(work: Path) -> dict:
    source = fixture(work, "bert_token_cls", NER_LABELS)
    rows = []
    for strategy in ("first", "average", "max", "simple"):
        ner = tr.pipeline("token-classification", model=source, device="cpu", aggregation_strategy=strategy)
        for text, got in zip(NER_TEXTS, ner(NER_TEXTS)):
            rows.append({"text": text, "aggregation": strategy, "entities": [
                {"label": e["entity_group"], "start": e["start"], "end": e["end"], "score": float(e["score"])}
                for e in got]})
    return {"labels": NER_LABELS, "results": rows}


def text_classification(work: Path) -> dict:
    rows = []
    for problem in ("single_label_classification", "multi_label_classification"):
        source = fixture(work / problem, "bert_seq_cls", CLS_LABELS)
        config = json.loads((Path(source) / "config.json").read_text())
        (Path(source) / "config.json").write_text(json.dumps({**config, "problem_type": problem}))
        classify = tr.pipeline("text-classification", model=source, device="cpu", top_k=None)
        inputs = [*CLS_TEXTS, *({"text": q, "text_pair": c} for q, c in CLS_PAIRS)]
        for x, got in zip(inputs, classify(inputs)):
            text, pair = (x["text"], x["text_pair"]) if isinstance(x, dict) else (x, None)
            rows.append({"problem_type": problem, "text": text, "pair": pair, "labels": [g["label"] for g in got],
                         "scores": [float(g["score"]) for g in got]})
    return {"labels": CLS_LABELS, "results": rows}


def multiple_choice(work: Path) -> dict:
    import torch

    source = fixture(work, "bert_mc")
    tokenizer = tr.AutoTokenizer.from_pretrained(source)
    model = tr.AutoModelForMultipleChoice.from_pretrained(source).eval()
    rows = []
    for text, stem, choices in CHOICE_CASES:
        second = [c if stem is None else f"{stem} {c}" for c in choices]
        batch = tokenizer([text] * len(choices), second, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**{k: v.unsqueeze(0) for k, v in batch.items()}).logits[0]
        rows.append({"text": text, "pair": stem, "choices": choices,
                     "scores": [float(x) for x in torch.softmax(logits.double(), -1)]})
    return {"max_length": int(tokenizer.model_max_length), "results": rows}


def main() -> int:
    if tr.__version__.split(".")[0] != "4":
        sys.exit(f"transformers {tr.__version__}: the question-answering pipeline is transformers 4's")
    for make, path in ((text_classification, "bert_seq_cls/pipeline_reference.json"),
                       (question_answering, "bert_qa/pipeline_reference.json"),
                       (zero_shot, "bert_seq_cls/zero_shot_reference.json"),
                       (token_classification, "bert_token_cls/pipeline_reference.json"),
                       (multiple_choice, "bert_mc/choice_reference.json")):
        with tempfile.TemporaryDirectory() as d:
            record = {"transformers": tr.__version__, **make(Path(d))}
        (FIXTURES / path).write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {FIXTURES / path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
