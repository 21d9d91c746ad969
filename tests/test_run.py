"""``bertc run`` / ``bertc.Runtime``: every head and input format against the model run directly, truncation,
bad input with clear messages, no partial result.

The models are the tiny Hugging Face fixtures (tests/fixtures/hf, vocab 56, 16 positions), each copied with
the bert_model fixture's tokenizer (same vocabulary) and built without TFLite. The expected values are
computed independently: the whole input tokenized by bertc.text.encode_texts into one padded batch, run
through model.onnx with ONNX Runtime, and decoded here (softmax, argmax, a brute-force span search).
"""
import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import bertc
from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC, EXIT_OUTPUT, InputError
from bertc.text import encode_texts

import tokenizers  # noqa: E402,F401  (the test extra has it: a missing one fails here, never a silent skip)
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hf"
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
LABELS = {"bert_seq_cls": ["negative", "neutral", "positive"], "bert_token_cls": ["O", "B-ANIMAL", "I-ANIMAL", "B-THING"],
          "bert_nli": ["entailment", "neutral", "contradiction"]}
LABELS["bert_multilabel"] = LABELS["bert_seq_cls"]
SOURCES = {"bert_nli": "bert_seq_cls", "bert_multilabel": "bert_seq_cls"}   # a build's fixture, where not its name
CONFIG = {"bert_multilabel": {"problem_type": "multi_label_classification"}}   # more config.json keys of a build
TEXTS = ["the cat sat on the mat.", "a dog ran fast", "it was a big red car!", "the house",
         "this tree is small , that tree is big", "cats and dogs", "the blue car", "an"]
PAIRS = [("the cat sat", "the cat sat on the mat."), ("what ran ?", "a dog ran fast on the road"),
         ("what was red ?", "it was a big red car!")]


def _build(name: str, work: Path, variants: tuple = ()) -> Path:
    from bertc.importers import import_spec
    from bertc.pipeline import BuildOptions, build

    source = work / f"{name}_src"
    shutil.copytree(FIXTURES / SOURCES.get(name, name), source)
    for f in TOKENIZER:
        if not (source / f).exists():
            shutil.copyfile(FIXTURES / "bert_model" / f, source / f)
    if name in LABELS:
        config = json.loads((source / "config.json").read_text())
        config["id2label"] = {str(i): n for i, n in enumerate(LABELS[name])}
        config["label2id"] = {n: i for i, n in enumerate(LABELS[name])}
        config.update(CONFIG.get(name, {}))
        (source / "config.json").write_text(json.dumps(config))
    spec = work / f"{name}.json"
    import_spec(source, spec)
    if variants:
        d = json.loads(spec.read_text())
        d["export"] = {**d.get("export", {}), "variants": [*d.get("export", {}).get("variants", ["onnx_int8"]),
                                                           *variants]}
        spec.write_text(json.dumps(d))
    out = work / f"{name}_out"
    report = build(spec, BuildOptions(out=out, tflite=False))
    assert report["status"] == "passed"
    return out


def shared_builds(tmp_path_factory, names) -> dict:
    """The builds of ``names``, made once per test session and shared by test_run and test_run_ray (the tests
    only read them): under pytest-xdist in the directory all workers' temporary directories share, each build
    under a file lock, so the worker that comes second waits for it rather than building it again."""
    import fcntl
    import os

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared_run_builds"
    root.mkdir(exist_ok=True)
    out = {}
    for name in names:
        with open(root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            marker = root / f"{name}.built"
            if not marker.exists():
                shutil.rmtree(root / name, ignore_errors=True)   # a build that failed half-way
                (root / name).mkdir()
                marker.write_text(str(_build(name, root / name)))
            out[name] = Path(marker.read_text())
    return out


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    return shared_builds(tmp_path_factory, ("st_bert_mean_norm", "bert_seq_cls", "bert_token_cls", "bert_qa"))


def direct(out: Path, texts, artifact="model.onnx") -> dict:
    """The outputs of one padded batch of every text, through ``artifact`` with ONNX Runtime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / artifact), providers=["CPUExecutionProvider"])
    x = encode_texts(out, texts, 16)
    names = [o.name for o in session.get_outputs()]
    return {**dict(zip(names, session.run(names, {i.name: x[i.name] for i in session.get_inputs()}))), **x}


def softmax(x):
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def write_inputs(directory: Path, texts, pairs=None) -> dict:
    """``texts`` as .txt, .jsonl, .csv and .parquet (fields text / context)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(exist_ok=True)
    rows = [{"id": i, "text": t, **({"context": pairs[i]} if pairs else {})} for i, t in enumerate(texts)]
    paths = {"txt": directory / "in.txt", "jsonl": directory / "in.jsonl", "csv": directory / "in.csv",
             "parquet": directory / "in.parquet"}
    paths["txt"].write_text("".join(t + (f"\t{pairs[i]}" if pairs else "") + "\n" for i, t in enumerate(texts)))
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    import csv

    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), paths["parquet"], row_group_size=3)
    return paths


def read_result(path: Path):
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- a run-only environment ---------------------------------------------------------------------------

RUN_ONLY = """
import json, sys

BUILD_ONLY = ("tensorflow", "keras", "pydantic", "onnx", "tf2onnx", "ai_edge_litert", "safetensors")


class NotInstalled:   # an environment set up to run builds only: numpy, click, onnxruntime, tokenizers
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BUILD_ONLY:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, NotInstalled())
import bertc
from bertc.cli import main
builds, work = json.loads(sys.argv[1]), sys.argv[2]
results = {}
for name, out in builds.items():
    fill = name in ("distilbert_mlm", "bert_pretraining")
    texts = ["the cat [MASK] on the mat.", "a [MASK] ran fast"] if fill else ["the cat sat on the mat.", "a dog ran fast"]
    rows = bertc.Runtime(out).run(list(zip(["the cat", "a dog"], texts)) if name == "bert_qa" else texts)
    pairs = ["--similarity"] if name.startswith("st_") else []   # a sentence embedder scores in.txt's pairs
    code = main(["run", out, work + ("/in_mask.txt" if fill else "/in.txt"), "-o", work + "/" + name + ".jsonl", "-q",
                 *pairs])
    results[name] = [len(rows), code]
results["list"] = main(["list"])
print(json.dumps(results))
"""


def test_running_a_build_needs_no_tensorflow_and_a_missing_library_is_named(builds, mlm_builds, tmp_path):
    """bertc.Runtime and bertc run (every head) need ONNX Runtime and the tokenizer only: they work in a process
    where TensorFlow, Keras, pydantic and the ONNX tools cannot be imported (and so never cost their start-up
    time and memory, in each Ray actor too), and load no plug-in of $BERTC_PLUGINS; a command that needs one of
    those libraries says which, and how to install it (exit 7)."""
    import os
    import subprocess
    import sys

    (tmp_path / "in.txt").write_text("the cat sat on the mat.\tthe cat\na dog ran fast\ta dog\n")
    (tmp_path / "in_mask.txt").write_text("the cat [MASK] on the mat.\na [MASK] ran fast\n")
    builds = {**builds, **mlm_builds}
    # a plug-in set for builds in the environment is not loaded by bertc run (it reads no spec)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "BERTC_PLUGINS": str(tmp_path / "plugin_for_builds.py")}
    run = subprocess.run([sys.executable, "-c", RUN_ONLY, json.dumps({k: str(v) for k, v in builds.items()}),
                          str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.splitlines()[-1])
    assert results.pop("list") == 7
    assert "error: bertc list needs tensorflow, keras, pydantic, tf2onnx, onnx, ai_edge_litert and safetensors, which " \
           "are not installed" in run.stderr   # every one missing, named (a tester: only the first was)
    assert "internal error" not in run.stderr
    assert results == {name: [2, 0] for name in builds}
    for name in builds:
        assert len((tmp_path / f"{name}.jsonl").read_text().splitlines()) == 2


# --- artifact choice ----------------------------------------------------------------------------------

def test_runtime_picks_int8_where_it_passed_parity_and_says_so(builds):
    out = builds["st_bert_mean_norm"]
    rt = bertc.Runtime(out)
    assert (rt.choice.artifact, rt.choice.provider) == ("onnx_int8", "CPUExecutionProvider")
    assert "passed parity" in rt.choice.describe() and "model.optimized.int8.onnx" in repr(rt)
    assert rt.choice.why.endswith("its activation ranges are each batch's, so a text's result shifts a little with "
                                  "the texts batched with it (artifact='onnx_optimized' does not)")
    # int8 that failed parity is never picked: optimized fp32 next, then model.onnx
    report = json.loads((out / "report.json").read_text())
    from bertc.runtime import choose_artifact

    for r in report["parity"]["results"]:
        if r["backend"] == "onnx_int8_cpu":
            r["passed"] = False
    assert choose_artifact(report).artifact == "onnx_optimized"
    del report["artifacts"]["onnx_optimized"]
    assert choose_artifact(report).artifact == "onnx"
    assert "; FAILED parity in this build;" in choose_artifact(report, "onnx_int8").why  # asked for: run, say so


def test_runtime_prefers_a_padding_free_artifact_that_gives_the_same_results(tmp_path):
    """Built, the padding-free int8 is picked before onnx_int8 (what run reads is the same, the padding's work is
    skipped); the padding-free fp32 tags every word as the optimized artifact does, on texts of mixed lengths."""
    out = _build("bert_token_cls", tmp_path, variants=("onnx_packed", "onnx_packed_int8"))
    rt = bertc.Runtime(out)
    assert rt.choice.artifact == "onnx_packed_int8" and "padding-free" in rt.choice.why
    packed = bertc.Runtime(out, artifact="onnx_packed").run(TEXTS)
    today = bertc.Runtime(out, artifact="onnx_optimized").run(TEXTS)
    assert [[t["label"] for t in r["tags"]] for r in packed] == [[t["label"] for t in r["tags"]] for r in today]
    np.testing.assert_allclose([t["score"] for r in packed for t in r["tags"]],
                               [t["score"] for r in today for t in r["tags"]], atol=1e-5)
    report = json.loads((out / "report.json").read_text())
    from bertc.runtime import choose_artifact

    for r in report["parity"]["results"]:
        if r["backend"] == "onnx_packed_int8_cpu":
            r["passed"] = False
    assert choose_artifact(report).artifact == "onnx_int8"


def test_artifact_override_gives_the_same_results_within_tolerance(builds):
    out = builds["st_bert_mean_norm"]
    a = bertc.Runtime(out, artifact="model.onnx").run(TEXTS)
    b = bertc.Runtime(out, artifact="onnx_optimized").run(TEXTS)
    ref = direct(out, TEXTS)["sentence_embedding"]
    assert a.shape == (len(TEXTS), 16) and a.dtype == np.float32
    np.testing.assert_allclose(a, ref, atol=1e-5)
    np.testing.assert_allclose(b, ref, atol=1e-4)
    with pytest.raises(InputError, match="not an ONNX artifact of this build.*onnx_int8"):
        bertc.Runtime(out, artifact="model.tflite")


# --- every head -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size,window", [(32, 2048), (3, 5), (1, 1)])
def test_embeddings_equal_the_padded_batch_in_input_order(builds, batch_size, window):
    out = builds["st_bert_mean_norm"]
    got = bertc.Runtime(out, artifact="onnx", batch_size=batch_size, window=window).run(TEXTS)
    np.testing.assert_allclose(got, direct(out, TEXTS)["sentence_embedding"], atol=1e-5)


def test_batches_are_bounded_by_padded_tokens_and_attention_cells():
    from bertc.engine import ATTENTION_CELLS_PER_TOKEN, batch_cuts

    def sizes(lengths, batch_size=32, max_tokens=16384):
        cuts = batch_cuts(lengths, batch_size, max_tokens)
        assert [a for a, _ in cuts] == [0] + [b for _, b in cuts[:-1]] and cuts[-1][1] == len(lengths)
        for a, b in cuts:
            rows, longest = b - a, max(lengths[a:b])
            assert rows == 1 or (rows <= batch_size and rows * longest <= max_tokens
                                 and rows * longest ** 2 <= ATTENTION_CELLS_PER_TOKEN * max_tokens)
        return [b - a for a, b in cuts]

    assert sizes([20] * 70) == [32, 32, 6]                       # short texts: batch_size decides
    assert sizes([512] * 40) == [32, 8]                          # 32 x 512 = the default budget
    assert sizes([600] * 40) == [27, 13]                         # tokens decide
    assert sizes([2048] * 9) == [4, 4, 1]                        # attention cells decide (8 by tokens)
    assert sizes([8192] * 3) == [1, 1, 1]                        # a long document runs alone
    assert sizes([40000, 5]) == [1, 1]                           # over the budget alone: still run, alone
    assert sizes([10, 10, 300, 300], max_tokens=600) == [2, 2]   # unsorted: padded to the batch's longest
    assert sizes([300, 10, 10], max_tokens=600) == [2, 1]
    assert batch_cuts([], 32, 16384) == []
    # a long text after short ones starts its own batch: 31 x 60 tokens are not padded to 256
    assert sizes([60] * 31 + [256, 250]) == [31, 2]
    assert sizes(list(range(16, 129, 2)) + [130]) == [32, 26]   # gradually longer: only the count cuts
    assert sizes([10] + [200]) == [2]                           # padding 1 x 190 (< 256 tokens): one call
    assert sizes([10] * 8 + [200]) == [8, 1]                    # 8 x 190 > 256 and a quarter of 80
    assert sizes([200] * 8 + [240]) == [9]                      # 8 x 40 > 256 but < a quarter of 1,600
    assert sizes([200] * 8 + [290]) == [8, 1]                   # 8 x 90 > both


def test_a_token_budget_gives_the_same_results_in_smaller_calls(builds, monkeypatch):
    out = builds["st_bert_mean_norm"]
    rt = bertc.Runtime(out, artifact="onnx", max_batch_tokens=12)
    session, shapes = rt.engine.session, []

    class Spy:   # the engine's session, recording the shape of each call
        def run(self, names, feeds):
            shapes.append(feeds["input_word_ids"].shape)
            return session.run(names, feeds)

        def __getattr__(self, name):
            return getattr(session, name)

    monkeypatch.setattr(rt.engine, "session", Spy())
    got = rt.run(TEXTS)
    np.testing.assert_allclose(got, direct(out, TEXTS)["sentence_embedding"], atol=1e-5)
    assert len(shapes) > 1 and all(b == 1 or b * s <= 12 for b, s in shapes)
    assert sum(b for b, _ in shapes) == len(TEXTS)
    with pytest.raises(InputError, match="max_batch_tokens 0: at least 1"):
        bertc.Runtime(out, max_batch_tokens=0)


def test_runtime_arguments_of_the_wrong_kind_are_named(builds):
    """The Python API's arguments: a count that is not a whole number, texts that are not a list of strings or
    (text, pair) tuples, are refused naming the argument or the text and what it was (before: Python's own
    TypeErrors, some only at run time, and "got tuple" for a (text, None) pair)."""
    out = builds["bert_seq_cls"]
    for name, value, message in (("max_length", "8", "max_length '8': a whole number, not str"),
                                 ("batch_size", 2.0, "batch_size 2.0: a whole number, not float"),
                                 ("threads", True, "threads True: a whole number, not bool"),
                                 ("threads", 0, "threads 0: at least 1"),
                                 ("window", None, "window None: a whole number, not None")):
        with pytest.raises(InputError, match=re.escape(message)):
            bertc.Runtime(out, **{name: value})
    with pytest.raises(InputError, match=re.escape("top_k 1.5: a whole number, not float")):
        bertc.Runtime(builds["bert_qa"], top_k=1.5)
    assert bertc.Runtime(out, batch_size=np.int64(2)).run(["the cat"])[0]["label"]   # a numpy integer is one
    rt = bertc.Runtime(out, artifact="onnx")
    for texts, message in ((None, "Runtime.run takes a list (or any iterable) of texts, not None"),
                           (5, "Runtime.run takes a list (or any iterable) of texts, not int"),
                           (b"abc", "not bytes (decode them to a string first)"),
                           ([("q", None)], "text 1: the pair of a (text, pair) tuple is None, not a string"),
                           ([b"the cat"], "text 1: expected a string or a (text, pair) tuple of strings, got bytes"),
                           ([("a", "b", "c")], "text 1: a tuple of 3; expected a string or a (text, pair) tuple")):
        with pytest.raises(InputError, match=re.escape(message)):
            rt.run(texts)


def test_classifier_labels_scores_and_the_checkpoints_names(builds):
    out = builds["bert_seq_cls"]
    got = bertc.Runtime(out, artifact="onnx", batch_size=3).run(TEXTS)
    probs = softmax(direct(out, TEXTS)["logits"].astype(np.float64))
    assert [r["label_id"] for r in got] == list(probs.argmax(-1))
    assert [r["label"] for r in got] == [LABELS["bert_seq_cls"][k] for k in probs.argmax(-1)]
    np.testing.assert_allclose([r["score"] for r in got], probs.max(-1), atol=1e-5)
    np.testing.assert_allclose([r["scores"] for r in got], probs, atol=1e-5)


def _with_config(out: Path, tmp_path: Path, **config) -> Path:
    """A copy of the build ``out`` whose bundled checkpoint config (checkpoint_config.json) says ``config``."""
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    bundled = copy / "checkpoint_config.json"
    bundled.write_text(json.dumps({**json.loads(bundled.read_text()), **config}))
    return copy


@pytest.mark.parametrize("config, expected", [
    ({"problem_type": "multi_label_classification"}, "sigmoid"),
    ({"problem_type": "regression"}, "raw"),
    ({"sbert_ce_default_activation_function": "torch.nn.modules.linear.Identity"}, "raw"),   # ms-marco rerankers
    ({"sentence_transformers": {"activation_fn": "torch.nn.modules.activation.Sigmoid"}}, "sigmoid"),
    ({"problem_type": "single_label_classification"}, "softmax"),
])
def test_classifier_scores_follow_the_checkpoints_config(builds, tmp_path, config, expected):
    """Scores as the checkpoint's own tools give them: transformers' pipeline (problem_type), a
    sentence-transformers CrossEncoder's activation; the label is the top class either way."""
    out = _with_config(builds["bert_seq_cls"], tmp_path, **config)
    runtime = bertc.Runtime(out, artifact="onnx", batch_size=3)
    assert runtime.scores == expected
    got = runtime.run(TEXTS)
    logits = direct(out, TEXTS)["logits"].astype(np.float64)
    want = {"softmax": softmax(logits), "sigmoid": 1 / (1 + np.exp(-logits)), "raw": logits}[expected]
    assert [r["label_id"] for r in got] == list(logits.argmax(-1))
    np.testing.assert_allclose([r["scores"] for r in got], want, atol=1e-5)
    np.testing.assert_allclose([r["score"] for r in got], want.max(-1), atol=1e-5)


def test_one_class_scores_by_sigmoid_and_scores_can_be_chosen(builds, tmp_path, capsys):
    """A one-class head (a reranker's relevance) takes sigmoid, as transformers' pipeline does (softmax of one
    logit is always 1.0); ``--scores`` overrides; scores are refused for other heads."""
    from bertc.runtime import score_function

    assert score_function(tmp_path, {}, 1) == ("sigmoid", "one class")
    assert score_function(tmp_path, {}, 3) == ("softmax", "one label per text")
    (tmp_path / "checkpoint_config.json").write_text(json.dumps({"problem_type": "single_label_classification"}))
    assert score_function(tmp_path, {}, 1)[0] == "sigmoid"      # as the pipeline: one class before problem_type
    assert score_function(tmp_path, {}, 3)[0] == "softmax"
    (tmp_path / "checkpoint_config.json").unlink()
    out = builds["bert_seq_cls"]
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    assert main(["run", str(out), str(tmp_path / "in.txt"), "-o", str(tmp_path / "r.jsonl"), "--artifact", "onnx",
                 "--scores", "raw"]) == 0
    assert "raw scores (asked for)" in capsys.readouterr().err
    np.testing.assert_allclose([r["scores"] for r in read_result(tmp_path / "r.jsonl")],
                               direct(out, TEXTS)["logits"], atol=1e-5)
    assert main(["run", str(builds["st_bert_mean_norm"]), str(tmp_path / "in.txt"), "-o", str(tmp_path / "e.npy"),
                 "--scores", "sigmoid"]) != 0
    err = capsys.readouterr().err
    assert "only a classifier's scores can be chosen" in err and "Traceback" not in err
    assert not (tmp_path / "e.npy").exists()


def test_a_cross_encoder_builds_and_runs_on_pairs_with_its_own_scores(tmp_path_factory, tmp_path, capsys):
    """A reranker as transformers saves it (one label; ms-marco's ``sbert_ce_default_activation_function``
    Identity): ``bertc import && bertc build`` passes (a one-class head used to fail validation), and ``bertc run``
    on (query, passage) pairs gives its raw logits as scores, as sentence-transformers' CrossEncoder does."""
    out = shared_builds(tmp_path_factory, ("bert_cross_encoder",))["bert_cross_encoder"]
    passages = ["the cat", "a dog", "red car", "the house"]
    paths = write_inputs(tmp_path, TEXTS[:4], pairs=passages)
    assert main(["run", str(out), str(paths["jsonl"]), "-o", str(tmp_path / "r.jsonl"), "--pair-field", "context",
                 "--artifact", "onnx"]) == 0
    assert "raw scores (the CrossEncoder activation Identity)" in capsys.readouterr().err
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = encode_texts(out, list(zip(TEXTS[:4], passages)), 16)
    logits = session.run(["logits"], x)[0]
    got = read_result(tmp_path / "r.jsonl")
    np.testing.assert_allclose([r["score"] for r in got], logits[:, 0], atol=1e-5)
    assert {r["label"] for r in got} == {"LABEL_0"}


def test_a_sentence_transformers_cross_encoder_gives_what_its_predict_gives(tmp_path_factory, tmp_path):
    """A CrossEncoder as sentence-transformers 6 saves it (modules.json with one Transformer, its Sigmoid in
    config_sentence_transformers.json; bertc import refused it, wanting a Pooling module): imported as its
    transformers classifier, and ``bertc run`` on the text pairs gives ``CrossEncoder.predict``'s scores."""
    out = shared_builds(tmp_path_factory, ("st_cross_encoder",))["st_cross_encoder"]
    reference = json.loads((FIXTURES / "st_cross_encoder" / "pairs.json").read_text())
    runtime = bertc.Runtime(out, artifact="onnx")
    assert (runtime.scores, runtime.scores_why) == ("sigmoid", "the CrossEncoder activation Sigmoid")
    got = runtime.run([tuple(p) for p in reference["pairs"]])
    np.testing.assert_allclose([r["score"] for r in got], reference["scores"], atol=1e-6)


def test_a_cross_encoder_cuts_over_long_pairs_as_its_predict_does(tmp_path_factory):
    """sentence-transformers' CrossEncoder.predict / rank always truncate their pairs; bertc refused an over-long
    (query, document) pair without --truncate, so --rank of a reranker stopped at its first long document. Cut by
    default, as sentence embedders' texts are (--no-truncate still refuses)."""
    out = shared_builds(tmp_path_factory, ("st_cross_encoder",))["st_cross_encoder"]
    runtime = bertc.Runtime(out, artifact="onnx")
    assert runtime.truncate is True
    long = ("the cat sat", " ".join(["the dog ran fast"] * 20))
    cut = runtime.run([long])
    assert runtime.truncated == 1
    np.testing.assert_allclose([r["score"] for r in cut],
                               [r["score"] for r in bertc.Runtime(out, artifact="onnx", truncate=True).run([long])])
    with pytest.raises(InputError, match="longer than the model's maximum"):
        bertc.Runtime(out, artifact="onnx", truncate=False).run([long])


def test_a_cross_encoder_ranks_each_querys_documents_as_its_rank_does(tmp_path_factory, builds, tmp_path, capsys):
    """--rank orders a query's documents as ``CrossEncoder.rank`` does: each (query, document) scored as its predict
    scores the pair (held to CrossEncoder.predict's record), best first, equal scores in the input's order, the
    best K with --top-k; a query per row with its documents (a list field, a tab before each in a .txt)."""
    out = shared_builds(tmp_path_factory, ("st_cross_encoder",))["st_cross_encoder"]
    reference = json.loads((FIXTURES / "st_cross_encoder" / "pairs.json").read_text())
    rt = bertc.Runtime(out, artifact="onnx", rank=True)
    assert rt.kind == "rank"
    # one document per query: the score is CrossEncoder.predict's for that pair
    got = rt.run([(q, [d]) for q, d in reference["pairs"]])
    np.testing.assert_allclose([g["ranking"][0]["score"] for g in got], reference["scores"], atol=1e-6)
    # a query against every document (one of them twice: a tie keeps the input's order)
    documents = [d for _, d in reference["pairs"]] + [reference["pairs"][0][1]]
    queries = [q for q, _ in reference["pairs"][:3]]
    pairs = bertc.Runtime(out, artifact="onnx").run([(q, d) for q in queries for d in documents])
    for q, ranking in zip(queries, rt.run([(q, documents) for q in queries])):
        scores = [p["score"] for p in pairs[queries.index(q) * len(documents):][:len(documents)]]
        order = sorted(range(len(documents)), key=lambda i: -scores[i])
        assert [r["index"] for r in ranking["ranking"]] == order
        assert [r["text"] for r in ranking["ranking"]] == [documents[i] for i in order]
        np.testing.assert_allclose([r["score"] for r in ranking["ranking"]], [scores[i] for i in order], atol=1e-7)
        first, twin = order.index(0), order.index(len(documents) - 1)
        assert first < twin   # equal scores: the earlier document first
    # the CLI: JSONL (a list), .txt (tabs), Parquet; --top-k; CSV cannot hold a ranking
    jsonl, txt = tmp_path / "q.jsonl", tmp_path / "q.txt"
    jsonl.write_text("".join(json.dumps({"query": q, "docs": documents}) + "\n" for q in queries))
    txt.write_text("".join("\t".join([q, *documents]) + "\n" for q in queries))
    expected = [r["ranking"][:2] for r in rt.run([(q, documents) for q in queries])]
    for source, args in ((jsonl, ["--text-field", "query", "--documents-field", "docs"]), (txt, [])):
        for suffix in ("jsonl", "parquet"):
            result = tmp_path / f"{source.suffix[1:]}.{suffix}"
            assert main(["run", str(out), str(source), "-o", str(result), "--artifact", "onnx", "--rank",
                         "--top-k", "2", *args]) == 0
            assert "rank results from" in capsys.readouterr().err
            have = [r["ranking"] for r in read_result(result)]
            assert [[(d["index"], d["text"]) for d in h] for h in have] == \
                [[(d["index"], d["text"]) for d in e] for e in expected]
            np.testing.assert_allclose([d["score"] for h in have for d in h],
                                       [d["score"] for e in expected for d in e], atol=1e-6)
    _fails(["run", str(out), str(txt), "-o", str(tmp_path / "r.csv"), "--rank"], capsys, EXIT_BAD_SPEC,
           "a .csv result cannot hold rank results; use .jsonl or .parquet")
    # refused: no documents, an empty one, a pair, documents without --rank, a classifier of several classes
    (tmp_path / "none.txt").write_text("a query\n")
    _fails(["run", str(out), str(tmp_path / "none.txt"), "-o", str(tmp_path / "r.jsonl"), "--rank"], capsys,
           EXIT_BAD_SPEC, "none.txt: line 1: 0 documents; a ranking needs one or more")
    (tmp_path / "empty.jsonl").write_text(json.dumps({"text": "q", "documents": ["a", " "]}) + "\n")
    _fails(["run", str(out), str(tmp_path / "empty.jsonl"), "-o", str(tmp_path / "r.jsonl"), "--rank"], capsys,
           EXIT_BAD_SPEC, "empty.jsonl: line 1: document 2 in field 'documents' is empty")
    _fails(["run", str(out), str(jsonl), "-o", str(tmp_path / "r.jsonl"), "--documents-field", "docs"], capsys,
           EXIT_BAD_SPEC, "--documents-field: only a ranking (--rank) reads documents")
    with pytest.raises(InputError, match="text 1: a ranking takes \\(query, \\[document, ...\\]\\) tuples"):
        rt.run([("q", "stem", ["a"])])
    # the row is a tuple: what is wrong is its documents (the message said "got tuple")
    with pytest.raises(InputError, match=r"^text 1: a ranking takes \(query, \[document, ...\]\) tuples; its documents "
                                         r"are one string, not a list \(\['abc'\] for one\)$"):
        rt.run([("q", "abc")])
    with pytest.raises(InputError, match=r"its documents are generator, not a list or tuple$"):
        rt.run([("q", (d for d in ["a", "b"]))])
    from bertc.run_io import Record

    with pytest.raises(InputError, match="line 1: a ranking pairs its query with each document; drop the pair"):
        rt.engine.predict([Record("q", "a pair", "line 1", ("a",))])
    with pytest.raises(InputError, match="rank: orders documents by a one-score model's pair scores .* this "
                                         "classifier has 3 classes"):
        bertc.Runtime(builds["bert_seq_cls"], rank=True)
    with pytest.raises(InputError, match="this model gives span results"):
        bertc.Runtime(builds["bert_qa"], rank=True)
    with pytest.raises(InputError, match="a pair prompt is for the second text of each pair that similarity=True"):
        bertc.Runtime(out, rank=True, pair_prompt="passage: ")   # a cross-encoder reads no prompt
    with pytest.raises(InputError, match="the softmax of one score is always 1"):
        bertc.Runtime(out, rank=True, scores="softmax")
    assert not (tmp_path / "r.jsonl").exists() and not (tmp_path / "r.csv").exists()


def test_a_build_keeps_what_run_reads_of_its_checkpoint_when_the_checkpoint_is_gone(tmp_path):
    """OUT is what a deployment needs: the class names and a CrossEncoder's activation come with it
    (checkpoint_config.json, config_sentence_transformers.json), not from the weights' directory it was built
    from (before, a moved OUT said LABEL_k, and a one-class model fell back to sigmoid whatever its activation)."""
    source = tmp_path / "src"
    shutil.copytree(FIXTURES / "st_cross_encoder", source)
    config = json.loads((source / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "relevance"}, {"relevance": 0}
    (source / "config.json").write_text(json.dumps(config))
    (source / "config_sentence_transformers.json").write_text(json.dumps(
        {**json.loads((source / "config_sentence_transformers.json").read_text()),
         "activation_fn": "torch.nn.modules.linear.Identity"}))
    assert main(["import", str(source), "-o", str(tmp_path / "spec.json")]) == 0
    spec = json.loads((tmp_path / "spec.json").read_text())
    spec["export"] = {"tflite": False, "variants": []}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert main(["build", str(tmp_path / "spec.json"), "-o", str(tmp_path / "out"), "-q"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["weights"]["bundled_config"] == ["checkpoint_config.json", "config_sentence_transformers.json"]
    shutil.rmtree(source)
    runtime = bertc.Runtime(tmp_path / "out", artifact="onnx")
    assert (runtime.scores, runtime.scores_why) == ("raw", "the CrossEncoder activation Identity")
    assert runtime.run([("the cat", "a cat")])[0]["label"] == "relevance"


PROMPTS = {"query": "it is a ", "passage": "the road , ", "document": ""}


def test_int8_is_calibrated_and_judged_behind_a_sentence_embedders_prompts(builds, tmp_path):
    """The calibration set (what the int8 tuning chooses on and parity judges) of a sentence embedder with
    prompts adds the real text behind each non-empty prompt, the default first; none for an embedder without
    prompts, or for a classifier."""
    from bertc.calibration import builtin_sentences, prompted_cases, real_text_cases
    from bertc.spec import load_spec

    plain = builds["st_bert_mean_norm"]
    out = tmp_path / "out"
    shutil.copytree(plain, out)
    spec = load_spec(out / "spec.json")
    plain_cases, source = real_text_cases(spec, plain)
    assert "prompts" not in source
    config = out / "config_sentence_transformers.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prompts": PROMPTS, "default_prompt_name": "passage"}))
    cases, source = real_text_cases(spec, out)
    assert source["prompts"] == ["passage", "query"]       # "document" is empty: the plain text already covers it
    assert [c.label for c in cases[:len(plain_cases)]] == [c.label for c in plain_cases]
    assert len(cases) == len(plain_cases) + 2
    texts = builtin_sentences()
    for case, (name, prompt) in zip(cases[-2:], (("passage", "the road , "), ("query", "it is a "))):
        assert f"prompt {name!r}" in case.label
        want = encode_texts(out, [prompt + t for t in texts], spec.encoder.max_sequence_length, spec)
        np.testing.assert_array_equal(case.inputs["input_word_ids"], want["input_word_ids"])
    classifier = load_spec(builds["bert_seq_cls"] / "spec.json")
    assert prompted_cases(out, classifier, texts, "x") == ([], [])


def test_a_sentence_embedders_prompts_are_put_before_each_text_as_its_encode_does(builds, tmp_path, capsys):
    """The model's prompts (config_sentence_transformers.json, bundled in OUT): its default_prompt_name's with
    no prompt asked for, a named one, a given text, "" for none; the result equals the embeddings of the
    prefixed texts. Prompts of an unknown name, both kinds at once, or for a classifier are refused."""
    plain = builds["st_bert_mean_norm"]
    out = tmp_path / "out"
    shutil.copytree(plain, out)
    config = out / "config_sentence_transformers.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prompts": PROMPTS, "default_prompt_name": "query"}))
    want = {p: bertc.Runtime(plain, artifact="onnx").run([p + t for t in TEXTS]) for p in set(PROMPTS.values())}
    assert not np.allclose(want["it is a "], want[""], atol=1e-3)   # a prompt changes the embeddings
    for kwargs, prompt in (({}, "it is a "), ({"prompt_name": "passage"}, "the road , "), ({"prompt": ""}, ""),
                           ({"prompt": "the road , "}, "the road , "), ({"prompt_name": "document"}, "")):
        runtime = bertc.Runtime(out, artifact="onnx", batch_size=3, **kwargs)
        assert runtime.prompt == prompt, kwargs
        np.testing.assert_allclose(runtime.run(TEXTS), want[prompt], atol=1e-6, err_msg=str(kwargs))
    assert bertc.Runtime(plain, artifact="onnx").prompt == ""   # no default: none
    texts = write_inputs(tmp_path, TEXTS)["txt"]
    assert main(["run", str(out), str(texts), "-o", str(tmp_path / "e.npy"), "--artifact", "onnx"]) == 0
    assert "prompt 'it is a ' (the model's default_prompt_name query)" in capsys.readouterr().err
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), want["it is a "], atol=1e-6)
    base = ["run", str(out), str(texts), "-o", str(tmp_path / "x.npy")]
    _fails(base + ["--prompt-name", "title"], capsys, 2, "--prompt-name 'title'", "'query', 'passage', 'document'")
    _fails(base + ["--prompt-name", "query", "--prompt", "q: "], capsys, 2, "--prompt and --prompt-name: give one, not both")
    _fails(base + ["--similarity", "--pair-prompt-name", "title"], capsys, 2, "--pair-prompt-name 'title'")
    _fails(base + ["--similarity", "--pair-prompt-name", "query", "--pair-prompt", "q: "], capsys, 2,
           "--pair-prompt and --pair-prompt-name: give one, not both")
    with pytest.raises(InputError, match="^pair prompt name 'title'"):   # the Python API keeps its own names
        bertc.Runtime(out, artifact="onnx", similarity=True, pair_prompt_name="title")
    _fails(["run", str(builds["bert_seq_cls"]), str(texts), "-o", str(tmp_path / "x.jsonl"), "--prompt", "q: "],
           capsys, 2, "prompts are for sentence embedders")
    config.write_text(json.dumps({"prompts": PROMPTS, "default_prompt_name": "title"}))
    _fails(base, capsys, 2, "default_prompt_name 'title' is not one of its prompts")
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "x.jsonl").exists()


def test_token_classifier_tags_are_aligned_to_words_and_characters(builds):
    out = builds["bert_token_cls"]
    texts = ["the cats sat on the mat.", "big red cars , small dogs"]
    got = bertc.Runtime(out, artifact="onnx").run(texts)
    ref = direct(out, texts)
    probs = softmax(ref["logits"].astype(np.float64))
    # the words and their character spans: "cats" is one word of two tokens (cat ##s), "." its own word
    assert [t["word"] for t in got[0]["tags"]] == ["the", "cats", "sat", "on", "the", "mat", "."]
    assert [(t["start"], t["end"]) for t in got[1]["tags"]][:3] == [(0, 3), (4, 7), (8, 12)]
    for text, row, p, ids in zip(texts, got, probs, ref["input_word_ids"]):
        first_tokens = [1]  # [CLS] then each word's first token: "cats" -> cat, ##s
        tokens = [t for t in range(1, int(ref["input_mask"][texts.index(text)].sum()) - 1)]
        from bertc.text import load_tokenizer

        enc = load_tokenizer(out, 16).encode(text)
        first_tokens = [t for t in tokens if enc.word_ids[t] is not None and (enc.word_ids[t - 1] != enc.word_ids[t])]
        assert len(first_tokens) == len(row["tags"])
        for tag, t in zip(row["tags"], first_tokens):
            assert text[tag["start"]:tag["end"]] == tag["word"]
            assert tag["label"] == LABELS["bert_token_cls"][int(p[t].argmax())]
            assert abs(tag["score"] - p[t].max()) < 1e-5


def test_classifier_scores_as_the_text_classification_pipeline(builds, tmp_path_factory):
    """Labels and scores are transformers' text-classification pipeline's (``top_k=None``: every class;
    tools/make_pipeline_references.py), texts and pairs: softmax for a single-label model, sigmoid where the
    config says multi_label_classification."""
    reference = json.loads((FIXTURES / "bert_seq_cls" / "pipeline_reference.json").read_text())
    outs = {"single_label_classification": builds["bert_seq_cls"],
            "multi_label_classification": shared_builds(tmp_path_factory, ("bert_multilabel",))["bert_multilabel"]}
    assert {r["problem_type"] for r in reference["results"]} == set(outs)
    for problem, out in outs.items():
        rows = [r for r in reference["results"] if r["problem_type"] == problem]
        got = bertc.Runtime(out, artifact="onnx").run([r["text"] if r["pair"] is None else (r["text"], r["pair"])
                                                       for r in rows])
        for g, r in zip(got, rows):
            assert g["label"] == r["labels"][0], r
            expected = dict(zip(r["labels"], r["scores"]))
            np.testing.assert_allclose(g["scores"], [expected[n] for n in LABELS["bert_seq_cls"]], atol=1e-6)
            assert abs(g["score"] - r["scores"][0]) < 1e-6


def test_zero_shot_classification_as_the_pipeline(tmp_path_factory, tmp_path, capsys):
    """An NLI classifier (the bert_seq_cls fixture named entailment / neutral / contradiction) ranks candidate
    labels as transformers' zero-shot-classification pipeline does (tools/make_pipeline_references.py): the
    same order and scores within 1e-6, single- and multi-label, one label alone, a custom template."""
    out = shared_builds(tmp_path_factory, ("bert_nli",))["bert_nli"]
    reference = json.loads((FIXTURES / "bert_seq_cls" / "zero_shot_reference.json").read_text())
    assert reference["nli_labels"] == LABELS["bert_nli"]
    cases: dict = {}
    for r in reference["results"]:
        cases.setdefault((tuple(r["candidate_labels"]), r["template"], r["multi_label"]), []).append(r)
    assert len(cases) == 8
    for (labels, template, multi), rows in cases.items():
        rt = bertc.Runtime(out, artifact="onnx", candidate_labels=list(labels), hypothesis_template=template,
                           multi_label=multi)
        assert rt.kind == "zero_shot"
        for got, r in zip(rt.run([r["text"] for r in rows]), rows):
            assert got["labels"] == r["labels"], (labels, template, multi, r["text"])
            np.testing.assert_allclose(got["scores"], r["scores"], atol=1e-6)
    # the CLI: JSONL and Parquet, the same results; the first line says what runs
    paths = write_inputs(tmp_path / "in", [r["text"] for r in rows])
    expected = bertc.Runtime(out, artifact="onnx", candidate_labels="animal, car,house").run([r["text"] for r in rows])
    for fmt in ("jsonl", "parquet"):
        result = tmp_path / f"r.{fmt}"
        assert main(["run", str(out), str(paths["jsonl"]), "-o", str(result), "--artifact", "onnx",
                     "--labels", "animal, car,house"]) == 0
        assert "3 candidate labels in 'This example is {}.'" in capsys.readouterr().err
        got = read_result(result)
        assert [g["labels"] for g in got] == [e["labels"] for e in expected]
        np.testing.assert_allclose([g["scores"] for g in got], [e["scores"] for e in expected], atol=1e-6)
    # refusals, named: a model without an entailment class, a template without {}, a pair, CSV, stray options
    with pytest.raises(InputError, match="needs an NLI model.*classes are negative, neutral, positive"):
        bertc.Runtime(shared_builds(tmp_path_factory, ("bert_seq_cls",))["bert_seq_cls"], candidate_labels=["a"])
    with pytest.raises(InputError, match="hypothesis template 'about': it has no {} where the label goes"):
        bertc.Runtime(out, candidate_labels=["a"], hypothesis_template="about")
    with pytest.raises(InputError, match="hypothesis template 'about {x}': not a template with one {}"):
        bertc.Runtime(out, candidate_labels=["a"], hypothesis_template="about {x}")
    with pytest.raises(InputError, match="candidate labels 'a', '': give one or more, none empty"):
        bertc.Runtime(out, candidate_labels="a,")
    with pytest.raises(InputError, match="each label once"):
        bertc.Runtime(out, candidate_labels=["a", "a"])
    with pytest.raises(InputError, match="give the candidate labels too"):
        bertc.Runtime(out, multi_label=True)
    with pytest.raises(InputError, match="text 1: the hypothesis 'the cat sat on the mat and the dog ran fast "
                                         "on the road to the car' leaves no room for the text in the model's 16"):
        bertc.Runtime(out, candidate_labels=["car"], hypothesis_template="the cat sat on the mat and the dog ran "
                      "fast on the road to the {}").run(["a dog"])
    with pytest.raises(InputError, match="text 1: zero-shot classification takes one text, not a pair"):
        bertc.Runtime(out, candidate_labels=["a"]).run([("a", "b")])
    _fails(["run", str(out), str(paths["jsonl"]), "-o", str(tmp_path / "r.csv"), "--labels", "a,b"], capsys,
           EXIT_BAD_SPEC, "a .csv result cannot hold zero_shot results; use .jsonl or .parquet")
    assert not (tmp_path / "r.csv").exists()


def test_multiple_choice_scores_each_questions_choices_as_transformers(tmp_path_factory, tmp_path, capsys):
    """A *ForMultipleChoice model (the bert_mc fixture) scores each (text, choice) pair, and the softmax over a
    question's choices is what transformers' multiple-choice model gives on the same tokens
    (tools/make_pipeline_references.py): 2 to 4 choices, a stem before each choice, a question cut longest first."""
    out = shared_builds(tmp_path_factory, ("bert_mc",))["bert_mc"]
    reference = json.loads((FIXTURES / "bert_mc" / "choice_reference.json").read_text())
    rt = bertc.Runtime(out, artifact="onnx", truncate=True)
    assert rt.kind == "choice"
    items = [(r["text"], r["choices"]) if r["pair"] is None else (r["text"], r["pair"], r["choices"])
             for r in reference["results"]]
    got = rt.run(items)
    for g, r in zip(got, reference["results"]):
        np.testing.assert_allclose(g["scores"], r["scores"], atol=1e-6)
        k = int(np.argmax(r["scores"]))
        assert (g["choice"], g["answer"]) == (k, r["choices"][k]) and abs(g["score"] - r["scores"][k]) < 1e-6
    # the default artifact: int8, which passed parity (the fixture's random choices are near ties, so only close)
    default = bertc.Runtime(out, truncate=True)
    assert default.choice.precision == "int8"
    np.testing.assert_allclose([s for g in default.run(items) for s in g["scores"]],
                               [s for g in got for s in g["scores"]], atol=0.01)
    # every input format: .txt (a tab before each choice), JSONL (a list), CSV (a JSON array, or a column per
    # choice), Parquet (a list column); every result format that holds a choice
    rows = [r for r in reference["results"][:2]]
    expected = rt.run([(r["text"], r["choices"]) for r in rows])
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "q.txt").write_text("".join("\t".join([r["text"], *r["choices"]]) + "\n" for r in rows))
    (inputs / "q.jsonl").write_text("".join(json.dumps({"question": r["text"], "choices": r["choices"]}) + "\n"
                                            for r in rows))
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(inputs / "q.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "choices"])
        w.writerows([r["text"], json.dumps(r["choices"])] for r in rows)
    two = [r for r in reference["results"] if len(r["choices"]) == 2]
    with open(inputs / "q2.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "a", "b"])
        w.writerows([r["text"], *r["choices"]] for r in two if r["pair"] is None)
    pq.write_table(pa.table({"question": [r["text"] for r in rows], "choices": [r["choices"] for r in rows]}),
                   inputs / "q.parquet")
    for source, args in (("q.txt", []), ("q.jsonl", ["--text-field", "question"]),
                         ("q.csv", ["--text-field", "question"]), ("q.parquet", ["--text-field", "question"])):
        for suffix in ("jsonl", "parquet", "csv"):
            result = tmp_path / f"{source}.{suffix}"
            assert main(["run", str(out), str(inputs / source), "-o", str(result), "--artifact", "onnx",
                         *args]) == 0, source
            assert "choice results from" in capsys.readouterr().err
            have = read_result(result)
            assert [int(h["choice"]) for h in have] == [e["choice"] for e in expected], (source, suffix)
            assert [h["answer"] for h in have] == [e["answer"] for e in expected]
            np.testing.assert_allclose([float(h["score"]) for h in have], [e["score"] for e in expected], atol=1e-6)
            if suffix != "csv":
                np.testing.assert_allclose([s for h in have for s in h["scores"]],
                                           [s for e in expected for s in e["scores"]], atol=1e-6)
    result = tmp_path / "columns.jsonl"
    assert main(["run", str(out), str(inputs / "q2.csv"), "-o", str(result), "--artifact", "onnx", "-q",
                 "--text-field", "question", "--choices-field", "a, b"]) == 0
    assert read_result(result) == rt.run([(r["text"], r["choices"]) for r in two if r["pair"] is None])
    # a stem (--pair-field) leads each choice, as the tuple's middle text does
    (inputs / "stem.jsonl").write_text(json.dumps({"text": "the cat sat", "stem": "it was",
                                                   "choices": ["big", "small"]}) + "\n")
    result = tmp_path / "stem.jsonl"
    assert main(["run", str(out), str(inputs / "stem.jsonl"), "-o", str(result), "--artifact", "onnx", "-q",
                 "--pair-field", "stem"]) == 0
    stem = next(r for r in reference["results"] if r["pair"] == "it was")
    np.testing.assert_allclose(read_result(result)[0]["scores"], stem["scores"], atol=1e-6)


def test_multiple_choice_refuses_what_it_cannot_score(tmp_path_factory, builds, tmp_path, capsys):
    """Bad choices are named with their line, exit 2 and write nothing; choices for a model without them, and a
    multiple-choice model without choices, are refused."""
    out = shared_builds(tmp_path_factory, ("bert_mc",))["bert_mc"]
    result = tmp_path / "r.jsonl"
    for name, content, args, needle in (
            ("one.txt", "the cat\tsat\n", [], "one.txt: line 1: 1 choice; a multiple-choice question needs 2 or more"),
            ("empty.txt", "the cat\tsat\t\n", [], "empty.txt: line 1: choice 2 is empty"),
            ("none.txt", "the cat\n", [], "none.txt: line 1: 0 choices"),
            ("miss.jsonl", '{"text": "a", "options": ["b", "c"]}\n', [],
             "miss.jsonl: line 1: no field 'choices' (it has: text, options; choose with --text-field / "
             "--pair-field / --choices-field)"),
            ("str.jsonl", '{"text": "a", "choices": "b"}\n', [], "field 'choices' is str, not a list of choices"),
            ("num.jsonl", '{"text": "a", "choices": ["b", 3]}\n', [], "line 1: choice 2 in field 'choices' is int, "
                                                                       "not text"),
            ("null.jsonl", '{"text": "a", "choices": null}\n', [], "line 1: no choices in field 'choices'"),
            ("cell.csv", "text,choices\na,b\n", [], "line 2: column 'choices' is not a JSON array of choices"),
            ("cols.csv", "text,a,b\nx,y,\n", ["--choices-field", "a,b"], "line 2: empty text in field 'b'"),
            ("dup.jsonl", '{"text": "a", "choices": ["b", "c"]}\n', ["--choices-field", "a,a"],
             "--choices-field 'a,a': one field, or several comma-separated, each once"),
            ("flag.txt", "a\tb\tc\n", ["--choices-field", "x"], "a .txt input has no fields")):
        (tmp_path / name).write_text(content)
        _fails(["run", str(out), str(tmp_path / name), "-o", str(result), "-q", *args], capsys, EXIT_BAD_SPEC, needle)
        assert not result.exists()
    (tmp_path / "in.txt").write_text("a text\n")
    _fails(["run", str(builds["bert_seq_cls"]), str(tmp_path / "in.txt"), "-o", str(result), "-q",
            "--choices-field", "c"], capsys, EXIT_BAD_SPEC,
           "--choices-field: only a multiple-choice model reads choices (this model gives classification results)")
    with pytest.raises(InputError, match="text 1: a multiple-choice model takes \\(text, \\[choice, ...\\]\\)"):
        bertc.Runtime(out).run(["a question"])
    with pytest.raises(InputError, match="text 1: 1 choice"):
        bertc.Runtime(out).run([("a question", ["one"])])
    with pytest.raises(InputError, match="scores 'raw': only a classifier's scores"):
        bertc.Runtime(out, scores="raw")


def test_entities_are_the_token_classification_pipelines(builds, capsys, tmp_path):
    """Each --aggregation's entities are transformers' token-classification pipeline's with that
    aggregation_strategy (tools/make_pipeline_references.py): the same labels and spans, scores within 1e-6."""
    out = builds["bert_token_cls"]
    reference = json.loads((FIXTURES / "bert_token_cls" / "pipeline_reference.json").read_text())
    assert reference["labels"] == LABELS["bert_token_cls"]
    for strategy in ("first", "average", "max", "simple"):   # simple: tokens grouped (a tester migrating from it)
        rows = [r for r in reference["results"] if r["aggregation"] == strategy]
        assert rows, strategy
        got = bertc.Runtime(out, artifact="onnx", aggregation=None if strategy == "first" else strategy).run(
            [r["text"] for r in rows])
        for g, r in zip(got, rows):
            assert [(e["label"], e["start"], e["end"]) for e in g["entities"]] == \
                [(e["label"], e["start"], e["end"]) for e in r["entities"]], (strategy, r["text"])
            np.testing.assert_allclose([e["score"] for e in g["entities"]], [e["score"] for e in r["entities"]],
                                       atol=1e-6)
    # the strategies differ on this fixture, so each is checked for what it is
    firsts, averages, simples = ([r["entities"] for r in reference["results"] if r["aggregation"] == s]
                                 for s in ("first", "average", "simple"))
    assert firsts != averages and firsts != simples
    # simple: a tag per token (a word's pieces each their own), where the others tag words
    words = bertc.Runtime(out, artifact="onnx").run(["the cats sat on the mats"])[0]["tags"]
    pieces = bertc.Runtime(out, artifact="onnx", aggregation="simple").run(["the cats sat on the mats"])[0]["tags"]
    assert [t["word"] for t in words] == "the cats sat on the mats".split() and len(pieces) > len(words)
    assert "".join(t["word"] for t in pieces) == "thecatssatonthemats"
    with pytest.raises(InputError, match="aggregation 'mean': use one of first, average, max, simple"):
        bertc.Runtime(out, aggregation="mean")
    with pytest.raises(InputError, match="aggregation 'max': only a token classifier's words are labelled"):
        bertc.Runtime(builds["bert_qa"], aggregation="max")


def test_entities_group_words_as_the_token_classification_pipeline_does():
    """transformers' group_entities (aggregation "first"): one entity type with B- / I- / no prefix; a B- word
    starts a new entity, anything else of the same type joins the one before it; O words are no entity and end
    the one before; an entity never crosses from the text into its pair."""
    from bertc.run_io import Record
    from bertc.engine import Engine

    text, pair = "Ann Lee met Bob in New York City today", "Paris France"
    words = [(0, "Ann", "B-PER", 0.9), (0, "Lee", "I-PER", 0.7), (0, "met", "O", 0.99), (0, "Bob", "B-PER", 0.8),
             (0, "in", "O", 0.9), (0, "New", "B-LOC", 0.6), (0, "York", "I-LOC", 0.5), (0, "City", "LOC", 0.4),
             (0, "today", "B-DATE", 0.3), (1, "Paris", "I-DATE", 0.2), (1, "France", "B-LOC", 0.1)]
    tags, cursor = [], {0: 0, 1: 0}
    for i, (seq, word, label, score) in enumerate(words):
        source = text if seq == 0 else pair
        start = source.index(word, cursor[seq])
        cursor[seq] = start + len(word)
        tags.append(((seq, i), {"word": word, "start": start, "end": start + len(word), "in": ("text", "pair")[seq],
                                "label": label, "score": score}))
    got = Engine._tag_result(tags, 5, Record(text, pair, "x"))
    assert got["tags"] == [t for _, t in tags]
    assert [(e["label"], e["text"], e["start"], e["end"], e["in"]) for e in got["entities"]] == [
        ("PER", "Ann Lee", 0, 7, "text"), ("PER", "Bob", 12, 15, "text"), ("LOC", "New York City", 19, 32, "text"),
        ("DATE", "today", 33, 38, "text"), ("DATE", "Paris", 0, 5, "pair"), ("LOC", "France", 6, 12, "pair")]
    np.testing.assert_allclose([e["score"] for e in got["entities"]], [0.8, 0.8, 0.5, 0.3, 0.2, 0.1])
    # B-PER B-PER: two entities; a one-class model (an ELECTRA discriminator's "replaced") has none
    two = [((0, 0), {**tags[0][1]}), ((0, 1), {**tags[1][1], "label": "B-PER"})]
    assert [e["text"] for e in Engine._tag_result(two, 5, Record(text, None, "x"))["entities"]] == ["Ann", "Lee"]
    assert Engine._tag_result(two, 1, Record(text, None, "x"))["entities"] == []


def test_a_pairs_tags_say_which_text_each_word_is_in(builds):
    """A text pair's tags and entities name the text they index (``in``: "text" or "pair"), as a fill-mask
    result's masks do: both texts' offsets start at 0, so without it a tag's span is ambiguous."""
    out = builds["bert_token_cls"]
    text, pair = "the cat sat on the mat", "a dog ran"
    got = bertc.Runtime(out, artifact="onnx").run([(text, pair)])[0]
    assert [(t["word"], t["in"]) for t in got["tags"]] == [(w, "text") for w in text.split()] + \
        [(w, "pair") for w in pair.split()]
    for t in got["tags"]:
        assert (text if t["in"] == "text" else pair)[t["start"]:t["end"]] == t["word"]
    for e in got["entities"]:
        assert (text if e["in"] == "text" else pair)[e["start"]:e["end"]] == e["text"]
    assert all(t["in"] == "text" for t in bertc.Runtime(out, artifact="onnx").run([text])[0]["tags"])


def test_simple_aggregation_over_windows_tags_each_token_once_from_the_window_that_holds_it(builds):
    """``--aggregation simple`` on a text longer than the model: a tag per token, each read from one window (the
    windows' tokens once each, in order), its label the argmax of that token's probabilities there."""
    out = builds["bert_token_cls"]
    word = "cat" + "s" * 30
    text = f"the cat sat on the {word} and the dog ran"
    got = bertc.Runtime(out, artifact="onnx", doc_stride=3, aggregation="simple").run([text])[0]
    tags = got["tags"]
    assert "".join(t["word"] for t in tags) == text.replace(" ", "")
    assert [t["start"] for t in tags] == sorted(t["start"] for t in tags) and len({t["start"] for t in tags}) == len(tags)
    windows = list(_hand_windows(out, None, text, 3, ["logits"]))
    assert len(windows) > 2
    read: dict = {}   # each token's probabilities in every window that holds it
    for part, c, (logits,) in windows:
        for t in range(part.start, part.stop):
            read.setdefault(tuple(c.offsets[t]), []).append(softmax(logits[t - part.start]))
    assert sorted(read) == [(t["start"], t["end"]) for t in tags]
    for t in tags:
        assert any(t["label"] == LABELS["bert_token_cls"][int(p.argmax())] and abs(t["score"] - p.max()) < 1e-6
                   for p in read[(t["start"], t["end"])]), t


@pytest.mark.parametrize("aggregation", ["first", "average", "max"])
def test_a_word_longer_than_the_windows_overlap_keeps_its_whole_span(builds, aggregation):
    """A word of more tokens than neighbouring windows share (a long identifier, a run of one letter) is whole in
    no window: it is one tag spanning the whole word, labelled from the window with its first token, and
    ``average`` / ``max`` read each of its tokens once, from whichever window holds it (before: its span ended
    where that window did, and its other tokens were never read)."""
    from bertc.text import load_tokenizer

    out = builds["bert_token_cls"]
    word = "cat" + "s" * 30   # "cat" + 30 x "##s": 31 tokens, more than a 16-token window holds
    text = f"the cat sat on the {word} and the dog ran"
    tok = load_tokenizer(out, 64)
    tok.no_truncation()
    assert len(tok.encode(word, add_special_tokens=False).ids) == 31
    for stride in (None, 3):
        got = bertc.Runtime(out, artifact="onnx", doc_stride=stride, aggregation=aggregation).run([text])[0]
        assert [t["word"] for t in got["tags"]] == text.split()
        long = got["tags"][5]
        assert (long["start"], long["end"]) == (text.index(word), text.index(word) + len(word))
    # all 31 tokens' probabilities, each from a window that holds it: the word's tag by hand
    got = bertc.Runtime(out, artifact="onnx", doc_stride=3, aggregation=aggregation).run([text])[0]["tags"][5]
    windows = list(_hand_windows(out, None, text, 3, ["logits"]))
    first = windows[0][1].word_ids.index(5)   # the word's first token among the text's tokens
    rows = {}
    for part, c, (logits,) in windows:
        for t in range(part.start, part.stop):
            if first <= t < first + 31:
                rows.setdefault(t, softmax(logits[t - part.start]))
    assert sorted(rows) == list(range(first, first + 31))
    probs = np.stack([rows[t] for t in sorted(rows)])
    if aggregation == "average":
        p = probs.mean(axis=0)
    elif aggregation == "max":
        p = probs[int(np.argmax(probs.max(axis=-1)))]
    else:
        p = probs[0]
    assert got["label"] == LABELS["bert_token_cls"][int(p.argmax())]
    assert abs(got["score"] - p.max()) < 1e-5


def test_a_one_class_token_classifier_scores_each_word_by_sigmoid(mlm_builds):
    """An ELECTRA discriminator (ElectraForPreTraining, a one-class token classifier): each word's score is the
    probability its first token was replaced, sigmoid of its logit (softmax of one logit would always be 1)."""
    out = mlm_builds["electra_pretraining"]
    texts = ["the cats sat on the mat.", "big red cars"]
    got = bertc.Runtime(out, artifact="onnx").run(texts)
    ref = direct(out, texts)["logits"].astype(np.float64)
    assert ref.shape[-1] == 1
    from bertc.text import load_tokenizer

    tok = load_tokenizer(out, 16)
    for i, (text, row) in enumerate(zip(texts, got)):
        enc = tok.encode(text)
        first = [t for t in range(1, len(enc.ids) - 1) if enc.word_ids[t] != enc.word_ids[t - 1]]
        assert [tag["start"] for tag in row["tags"]] == [enc.offsets[t][0] for t in first]
        np.testing.assert_allclose([tag["score"] for tag in row["tags"]], 1 / (1 + np.exp(-ref[i, first, 0])),
                                   atol=1e-6)
        assert {tag["label"] for tag in row["tags"]} == {"LABEL_0"}


def test_span_labeler_answers_as_the_question_answering_pipeline(builds, tmp_path, capsys):
    """Every answer (text, offsets) is transformers 4's question-answering pipeline's, score within 1e-6
    (tools/make_pipeline_references.py): pairs that fit, and long contexts read in windows of the fixture's 16
    positions at three strides, with and without no-answer."""
    out = builds["bert_qa"]
    reference = json.loads((FIXTURES / "bert_qa" / "pipeline_reference.json").read_text())
    assert reference["max_seq_len"] == 16 and reference["max_answer_len"] == 30
    for no_answer in (False, True):   # the pipeline's handle_impossible_answer: "" when [CLS] outscores every span
        for stride in sorted({r["doc_stride"] for r in reference["answers"]}):
            rows = [r for r in reference["answers"] if r["doc_stride"] == stride
                    and r["handle_impossible_answer"] == no_answer]
            got = bertc.Runtime(out, artifact="onnx", doc_stride=stride, allow_no_answer=no_answer).run(
                [(r["question"], r["context"]) for r in rows])
            for row, r in zip(got, rows):
                assert (row["start"], row["end"], row["text"]) == (r["start"], r["end"], r["answer"]), (stride, r)
                assert abs(row["score"] - r["score"]) < 1e-6, (stride, r)
    assert sum(r["answer"] == "" for r in reference["answers"]) == 3   # the no-answer cases are exercised
    # --top-k 3: the pipeline's three best answers, as a list, with and without no-answer
    for no_answer in (False, True):
        rows = [r for r in reference["top_3"] if r["handle_impossible_answer"] == no_answer]
        rt = bertc.Runtime(out, artifact="onnx", doc_stride=4, allow_no_answer=no_answer, top_k=3)
        assert rt.kind == "spans"
        for row, r in zip(rt.run([(r["question"], r["context"]) for r in rows]), rows):
            assert [(a["start"], a["end"], a["text"]) for a in row["answers"]] == \
                [(a["start"], a["end"], a["answer"]) for a in r["answers"]], r
            np.testing.assert_allclose([a["score"] for a in row["answers"]], [a["score"] for a in r["answers"]],
                                       atol=1e-6)
    assert any(a["answer"] == "" for r in reference["top_3"] for a in r["answers"])
    # the CLI: JSONL and Parquet hold the list; CSV cannot
    paths = write_inputs(tmp_path / "in", [q for q, _ in PAIRS], [c for _, c in PAIRS])
    expected = bertc.Runtime(out, artifact="onnx", top_k=2).run(PAIRS)
    for fmt in ("jsonl", "parquet"):
        result = tmp_path / f"r.{fmt}"
        assert main(["run", str(out), str(paths["jsonl"]), "-o", str(result), "-q", "--artifact", "onnx",
                     "--pair-field", "context", "--top-k", "2"]) == 0
        got = read_result(result)
        assert [[(a["start"], a["end"], a["text"]) for a in g["answers"]] for g in got] == \
            [[(a["start"], a["end"], a["text"]) for a in e["answers"]] for e in expected]
    _fails(["run", str(out), str(paths["jsonl"]), "-o", str(tmp_path / "r.csv"), "--pair-field", "context",
            "--top-k", "2"], capsys, EXIT_BAD_SPEC, "a .csv result cannot hold spans results; use .jsonl or .parquet")
    with pytest.raises(InputError, match="allow_no_answer: only a span labeler answers"):
        bertc.Runtime(builds["bert_seq_cls"], allow_no_answer=True)


def _hand_windows(out: Path, question, context: str, stride: int, outputs):
    """A long context windowed by hand: the question's (None: no question) and the context's tokens apart,
    context windows of what the 16 positions leave ([CLS] q [SEP] c [SEP], or [CLS] c [SEP]) that start
    ``room - stride`` tokens apart until one reaches the end. Yields (the window's slice of the context's
    tokens, the context's encoding, the window's ``outputs`` at its context tokens), each run through
    model.onnx on its own."""
    import onnxruntime as ort

    from bertc.text import load_tokenizer

    tok = load_tokenizer(out, 16)
    tok.no_truncation()
    q = tok.encode(question, add_special_tokens=False).ids if question is not None else []
    c = tok.encode(context, add_special_tokens=False)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    head = [cls_id, *q, sep_id] if question is not None else [cls_id]
    room = 16 - len(head) - 1
    stride = min(stride, room - 1)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    start = 0
    while True:
        part = slice(start, min(start + room, len(c.ids)))
        ids = [*head, *c.ids[part], sep_id]
        types = [0] * len(head) + [1 if question is not None else 0] * (len(ids) - len(head))
        feeds = {"input_word_ids": np.array([ids]), "input_mask": np.ones((1, len(ids)), np.int64),
                 "input_type_ids": np.array([types])}
        feeds = {i.name: feeds[i.name].astype(np.int32 if "int32" in i.type else np.int64)
                 for i in session.get_inputs()}
        values = session.run(outputs, feeds)
        yield part, c, [np.asarray(v[0][len(head):len(head) + part.stop - part.start], np.float64) for v in values]
        if part.stop >= len(c.ids):
            return
        start += room - stride


def test_span_labeler_reads_a_long_context_in_windows(builds, tmp_path, capsys):
    out = builds["bert_qa"]
    question = "what ran ?"
    context = ("a dog ran fast on the road and the cat sat on the mat . the house is big and the tree is small . "
               "this red car is fast and that blue car is small")
    from bertc.run_io import Record
    from bertc.text import load_tokenizer

    tok = load_tokenizer(out, 16)
    tok.no_truncation()
    q = tok.encode(question, add_special_tokens=False).ids
    c = tok.encode(context, add_special_tokens=False).ids
    # None: the default (128, or half the window where that is less, as the QA pipeline's); a stride of the room or
    # more is held to one fewer; --max-length shortens windows
    for length, stride in ((None, None), (None, 0), (None, 2), (None, 4), (None, 9), (None, 10), (12, 2), (8, None)):
        room = (length or 16) - 3 - len(q)
        engine = bertc.Runtime(out, artifact="onnx", doc_stride=stride, max_length=length).engine
        step = room - min(min(128, (length or 16) // 2) if stride is None else stride, room - 1)
        starts = list(range(0, len(c) - room + step, step))
        assert starts[-1] + room >= len(c) > starts[-2] + room
        windows = engine.context_windows(Record(question, context, "x"))
        assert [w.ids for w in windows] == [[2, *q, 3, *c[s:s + room], 3] for s in starts], (length, stride)
    for bad, why in ((0, r"at least 1 \(and room for the special tokens"), (17, "at most the model's maximum of 16 "
                                                                              "tokens")):
        with pytest.raises(InputError, match=f"max_length {bad}: {why}"):
            bertc.Runtime(out, max_length=bad)
    # the CLI: --doc-stride, and no --truncate needed (nor refused with --no-truncate)
    text = tmp_path / "in.txt"
    text.write_text(f"{question}\t{context}\n")
    result = tmp_path / "r.jsonl"
    assert main(["run", str(out), str(text), "-o", str(result), "-q", "--artifact", "onnx", "--doc-stride", "2",
                 "--no-truncate"]) == 0
    assert read_result(result)[0] == bertc.Runtime(out, artifact="onnx", doc_stride=2).run([(question, context)])[0]
    # a question that leaves the context no room is refused naming its line; --doc-stride only where it applies
    text.write_text("the cat sat on the mat and the dog ran fast on the road\ta dog\n")
    _fails(["run", str(out), str(text), "-o", str(result), "--force", "-q"], capsys, EXIT_BAD_SPEC,
           f"{text}: line 1: the question (14 tokens) and the special tokens (3) leave no room for the context in a "
           "row of max_length 16 tokens")
    with pytest.raises(InputError, match="doc_stride 2: only a span labeler or a token classifier reads"):
        bertc.Runtime(builds["bert_seq_cls"], doc_stride=2)
    with pytest.raises(InputError, match="doc_stride -1: 0 or more"):
        bertc.Runtime(out, doc_stride=-1)


def test_span_labeler_answers_are_spans_of_the_context_and_need_a_question(builds, tmp_path, capsys):
    """With a top k larger than a short context has spans, the answers are its spans alone (before: the zeroed
    end-before-start cells of the score matrix came back as answers, end < start and text ""); and a lone text,
    no question, is refused naming its row (before: answered from the text itself, a span of the question)."""
    out = builds["bert_qa"]
    for question, context, spans in (("cat", "the cat", 3), ("where is it ?", "on the mat", 6), ("dog", "a", 1)):
        got = bertc.Runtime(out, artifact="onnx", top_k=10).run([(question, context)])[0]["answers"]
        assert len(got) == spans, got
        assert all(a["start"] < a["end"] and context[a["start"]:a["end"]] == a["text"] for a in got), got
    with pytest.raises(InputError, match="text 2: one text; a span labeler answers a question from a context"):
        bertc.Runtime(out, artifact="onnx").run([("cat", "the cat"), "the cat sat on the mat"])
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"text": "where is the cat ?", "pair": "the cat sat on the mat ."}) + "\n")
    _fails(["run", str(out), str(source), "-o", str(tmp_path / "r.jsonl"), "-q"], capsys, EXIT_BAD_SPEC,
           f"{source}: line 1: one text; a span labeler answers a question from a context and needs both "
           "(--pair-field")
    assert not (tmp_path / "r.jsonl").exists()


def test_a_token_outside_the_models_vocabulary_is_named(builds, tmp_path, capsys):
    """A tokenizer given tokens after training, the model's embeddings not resized: a text with such a token is
    refused naming its row and the token (before: ONNX Runtime's index error, as an internal error, exit 70), in
    a long context's later windows too; texts without one run as before."""
    import tokenizers

    out = tmp_path / "added"
    shutil.copytree(builds["bert_qa"], out)
    tok = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size(True)
    tok.add_tokens(["zzznew"])
    tok.save(str(out / "tokenizer.json"))
    runtime = bertc.Runtime(out, artifact="onnx")
    context = "the cat sat on the mat and the dog ran fast on the road to the big red house"
    assert runtime.run([("where", context)]) == bertc.Runtime(builds["bert_qa"], artifact="onnx").run(
        [("where", context)])
    message = f"text 2: the token 'zzznew' (id {vocab}) is outside the model's vocabulary of {vocab}"
    with pytest.raises(InputError, match=re.escape(message)):
        runtime.run([("where", "the cat"), ("where", "a zzznew cat")])
    with pytest.raises(InputError, match=re.escape(message.replace("text 2", "text 1"))):   # in the context's last window
        runtime.run([("where", f"{context} zzznew")])
    source = tmp_path / "in.txt"
    source.write_text("where\tthe cat\nwhere\tthe zzznew\n")
    _fails(["run", str(out), str(source), "-o", str(tmp_path / "r.jsonl"), "-q"], capsys, EXIT_BAD_SPEC,
           f"{source}: line 2: the token 'zzznew'", "resize_token_embeddings")


def test_the_build_says_when_the_tokenizer_has_tokens_beyond_the_vocabulary(builds, tmp_path):
    """The build notes, in report.json and summary.txt, a bundled tokenizer with tokens the model has no
    embedding for (added after training, not resized), which bertc run would refuse; a build without says nothing."""
    import tokenizers

    from bertc.importers import import_spec
    from bertc.pipeline import BuildOptions, build

    source = tmp_path / "src"
    shutil.copytree(FIXTURES / "bert_seq_cls", source)
    for f in TOKENIZER:
        if not (source / f).exists():
            shutil.copyfile(FIXTURES / "bert_model" / f, source / f)
    tok = tokenizers.Tokenizer.from_file(str(source / "tokenizer.json"))
    vocab = tok.get_vocab_size(True)
    tok.add_tokens(["zzznew"])
    tok.save(str(source / "tokenizer.json"))
    import_spec(source, tmp_path / "spec.json")
    report = build(tmp_path / "spec.json", BuildOptions(out=tmp_path / "out", tflite=False, variants=()))
    note = f"1 token(s) beyond the model's vocabulary of {vocab} ('zzznew'): added to the tokenizer after training"
    assert report["tokenizer"]["beyond_vocabulary"].startswith(note)
    assert f"note: {note}" in (tmp_path / "out" / "summary.txt").read_text()
    assert "beyond_vocabulary" not in json.loads((builds["bert_seq_cls"] / "report.json").read_text())["tokenizer"]


def test_texts_are_cut_at_the_tokenizers_model_max_length(builds, tmp_path):
    """A tokenizer whose model_max_length is below the model's maximum: texts are cut there (and a long context
    read in windows that long), as transformers' pipelines cut them; without truncation a text is refused only
    beyond the model's own maximum, as the pipeline runs it whole; --max-length still decides; a sentence
    embedder cuts at its max_seq_length (the model's maximum here), as sentence-transformers does."""
    long = "the cat sat on the mat and the dog ran fast on the road to the big red house"
    for name, rows in (("bert_seq_cls", [long, "the cat"]), ("bert_qa", [("where", long)]),
                       ("st_bert_mean_norm", [long])):
        out = tmp_path / name
        shutil.copytree(builds[name], out)
        report = json.loads((out / "report.json").read_text())
        assert report["tokenizer"].get("model_max_length", 16) == 16   # the model's maximum
        report["tokenizer"]["model_max_length"] = 12
        (out / "report.json").write_text(json.dumps(report))
        got = bertc.Runtime(out, artifact="onnx", truncate=True).run(rows)
        cut = 16 if name == "st_bert_mean_norm" else 12
        want = bertc.Runtime(builds[name], artifact="onnx", truncate=True, max_length=cut).run(rows)
        assert (np.array_equal(got, want) if name == "st_bert_mean_norm" else got == want), name
        runtime = bertc.Runtime(out, artifact="onnx", truncate=True)
        assert runtime.max_len == cut and runtime.max_len_why == (
            "the model's" if name == "st_bert_mean_norm" else "the tokenizer's model_max_length,")
        assert bertc.Runtime(out, artifact="onnx", truncate=True, max_length=16).max_len == 16
    # no truncation: a 14-token text runs whole (the model takes 16), a longer one is refused at 16
    out = tmp_path / "bert_seq_cls"
    fourteen = "the cat sat on the mat and the dog ran fast on the"
    assert bertc.Runtime(out, artifact="onnx", truncate=False).run([fourteen]) == \
        bertc.Runtime(builds["bert_seq_cls"], artifact="onnx", truncate=False).run([fourteen])
    with pytest.raises(InputError, match="longer than the model's maximum of 16 tokens"):
        bertc.Runtime(out, artifact="onnx", truncate=False).run([long])


def test_token_classifier_tags_a_long_text_in_windows(builds, tmp_path):
    """A text longer than the model: every word tagged once, in order, each from the hand-made window where
    the word is whole and has the most tokens on its nearer side (a text's own ends count as open)."""
    out = builds["bert_token_cls"]
    text = ("the cats sat on the mats and the dogs ran fast on the roads to the big red houses . this tree is "
            "small , that tree is big and the blue cars are fast")
    for stride in (None, 0, 3):
        got = bertc.Runtime(out, artifact="onnx", doc_stride=stride).run([text, TEXTS[0]])
        assert got[1] == bertc.Runtime(out, artifact="onnx").run([TEXTS[0]])[0]   # a text that fits: as before
        windows = list(_hand_windows(out, None, text, 8 if stride is None else stride, ["logits"]))
        assert len(windows) > 2
        words = {}   # word -> (its context, the window's probabilities at its first token, start, end)
        for w, (part, c, (logits,)) in enumerate(windows):
            ids = c.word_ids[part]
            for word in dict.fromkeys(ids):
                tokens = [t for t, x in enumerate(ids) if x == word]
                whole = len(tokens) == c.word_ids.count(word)
                if not whole:
                    continue
                left = np.inf if w == 0 else tokens[0]
                right = np.inf if w == len(windows) - 1 else len(ids) - 1 - tokens[-1]
                if word not in words or min(left, right) > words[word][0]:
                    words[word] = (min(left, right), softmax(logits[tokens[0]]),
                                   c.offsets[part.start + tokens[0]][0], c.offsets[part.start + tokens[-1]][1])
        tags = got[0]["tags"]
        assert len(tags) == len(set(c.word_ids)) == len(text.split())
        for tag, word in zip(tags, sorted(words)):
            _, p, start, end = words[word]
            assert (tag["start"], tag["end"], tag["word"]) == (start, end, text[start:end])
            assert tag["label"] == LABELS["bert_token_cls"][int(p.argmax())]
            assert abs(tag["score"] - p.max()) < 1e-6
    # the CLI reads it in windows with no --truncate (and with --no-truncate)
    source = tmp_path / "in.txt"
    source.write_text(text + "\n")
    result = tmp_path / "r.jsonl"
    assert main(["run", str(out), str(source), "-o", str(result), "-q", "--artifact", "onnx", "--no-truncate"]) == 0
    assert read_result(result)[0] == bertc.Runtime(out, artifact="onnx").run([text])[0]


def _signature(fixture: str) -> dict:
    import tempfile

    from bertc.importers import import_spec
    from bertc.signature import signature_of
    from bertc.spec import load_spec

    with tempfile.TemporaryDirectory() as d:
        spec = Path(d) / "p.json"
        import_spec(FIXTURES / fixture, spec)
        return signature_of(load_spec(spec)).to_json(), json.loads(spec.read_text())


def test_what_a_result_is_follows_the_outputs_and_the_head():
    from bertc.runtime import result_kind

    # a masked-LM head's per-token logits are not a token classifier's, though both are "logits" (batch, seq, n)
    sig, spec = _signature("distilbert_mlm")
    assert result_kind(sig, spec) == ("fill_mask", {"logits": "logits"})
    sig, spec = _signature("bert_token_cls")
    assert result_kind(sig, spec) == ("tags", {"logits": "logits"})
    # a pretrainer predicts at the masked_lm_positions it is given: bertc run gives it the mask tokens'
    sig, spec = _signature("bert_pretraining")
    assert result_kind(sig, spec) == ("fill_mask", {"logits": "masked_lm"})
    # any other input besides the tokens is refused, naming it
    sig["inputs"].append({"name": "extra_ids", "dtype": "int32", "shape": ["batch", 4]})
    with pytest.raises(InputError, match="needs masked_lm_positions, extra_ids besides the tokens.*--encoder-only"):
        result_kind(sig, spec)


# --- fill-mask: a masked-LM head (Hugging Face *ForMaskedLM) and a pretrainer -------------------------------

FILL = ["the cat [MASK] on the mat.", "a [MASK] ran [MASK]", "[MASK]"]


@pytest.fixture(scope="module")
def mlm_builds(tmp_path_factory):
    return shared_builds(tmp_path_factory, ("distilbert_mlm", "bert_pretraining", "electra_pretraining"))


def _expected_fill(out: Path, texts, logits_of, top_k: int) -> list:
    """What fill-mask gives, computed here: softmax over the vocabulary at each [MASK] token, the top_k ids by
    score, the text decoded with each mask replaced by its best id."""
    from bertc.text import load_tokenizer

    tok = load_tokenizer(out, 16)
    mask_id = tok.token_to_id("[MASK]")
    expected = []
    for i, text in enumerate(texts):
        enc = tok.encode(*text) if isinstance(text, tuple) else tok.encode(text)
        where = [t for t, x in enumerate(enc.ids) if x == mask_id]
        ids, masks = list(enc.ids), []
        for n, t in enumerate(where):
            p = softmax(logits_of(i, n, t).astype(np.float64))
            top = sorted(range(len(p)), key=lambda v: (-p[v], v))[:top_k]
            masks.append(([int(v) for v in top], [float(p[v]) for v in top], enc.offsets[t]))
            ids[t] = top[0]
        expected.append((tok.decode(ids, skip_special_tokens=True), masks))
    return expected


def _assert_fill(got: list, expected: list, texts) -> None:
    assert len(got) == len(expected)
    for row, (sequence, masks), text in zip(got, expected, texts):
        assert row["sequence"] == sequence
        assert len(row["masks"]) == len(masks)
        for m, (ids, scores, (begin, end)) in zip(row["masks"], masks):
            assert [x["token_id"] for x in m["predictions"]] == ids
            np.testing.assert_allclose([x["score"] for x in m["predictions"]], scores, atol=1e-6)
            source = text if m["in"] == "text" else text[1]
            source = source[0] if isinstance(source, tuple) else source
            assert (m["start"], m["end"]) == (begin, end) and source[begin:end] == "[MASK]"


def test_fill_mask_of_a_masked_lm_head_gives_the_likeliest_tokens_at_each_mask(mlm_builds, tmp_path):
    out = mlm_builds["distilbert_mlm"]
    rt = bertc.Runtime(out, artifact="onnx", top_k=3)
    assert rt.kind == "fill_mask" and rt.mask == ("[MASK]", 4)
    ref = direct(out, FILL)
    expected = _expected_fill(out, FILL, lambda i, n, t: ref["logits"][i, t], 3)
    got = rt.run(FILL)
    _assert_fill(got, expected, FILL)
    assert [x["token"] for x in got[0]["masks"][0]["predictions"]] == \
        [rt.engine.tokenizer.id_to_token(x["token_id"]) for x in got[0]["masks"][0]["predictions"]]
    # the same through the CLI, as JSONL and Parquet (the default top_k: 5)
    paths = write_inputs(tmp_path / "in", FILL)
    for suffix in (".jsonl", ".parquet"):
        result = tmp_path / f"fill{suffix}"
        assert main(["run", str(out), str(paths["txt"]), "-o", str(result), "-q", "--artifact", "onnx"]) == 0
        rows = read_result(result)
        _assert_fill(rows, _expected_fill(out, FILL, lambda i, n, t: ref["logits"][i, t], 5), FILL)


def test_fill_mask_of_a_pretrainer_feeds_the_mask_positions(mlm_builds):
    import onnxruntime as ort

    out = mlm_builds["bert_pretraining"]
    texts = [("the cat [MASK] on", "the [MASK] ."), "a [MASK] ran [MASK]"]
    got = bertc.Runtime(out, artifact="onnx", top_k=2).run(texts)
    # the model run here on each text alone, at the positions of its mask tokens
    from bertc.text import load_tokenizer

    tok = load_tokenizer(out, 16)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = []
    for text in texts:
        enc = tok.encode(*text) if isinstance(text, tuple) else tok.encode(text)
        positions = np.zeros((1, 16), np.int32)
        where = [t for t, x in enumerate(enc.ids) if x == tok.token_to_id("[MASK]")]
        positions[0, :len(where)] = where
        feeds = {"input_word_ids": np.array([enc.ids], np.int32), "input_mask": np.array([enc.attention_mask], np.int32),
                 "input_type_ids": np.array([enc.type_ids], np.int32), "masked_lm_positions": positions}
        logits.append(session.run(["masked_lm"], feeds)[0][0])
    _assert_fill(got, _expected_fill(out, texts, lambda i, n, t: logits[i][n], 2), texts)
    assert got[0]["masks"][1]["in"] == "pair"


def test_fill_mask_refuses_what_it_cannot_fill(mlm_builds, builds, tmp_path, capsys):
    import dataclasses

    out = mlm_builds["distilbert_mlm"]
    (tmp_path / "in.txt").write_text("the cat [MASK]\nno mask here\n")
    _fails(["run", str(out), str(tmp_path / "in.txt"), "-o", str(tmp_path / "r.jsonl")], capsys, EXIT_BAD_SPEC,
           "in.txt: line 2: no [MASK] in the text")
    _fails(["run", str(out), str(tmp_path / "in.txt"), "-o", str(tmp_path / "r.csv")], capsys, EXIT_BAD_SPEC,
           "a .csv result cannot hold fill_mask results; use .jsonl or .parquet")
    _fails(["run", str(builds["bert_seq_cls"]), str(tmp_path / "in.txt"), "-o", str(tmp_path / "r.jsonl"),
            "--top-k", "3"], capsys, EXIT_BAD_SPEC,
           "only a masked-LM model's predictions, a span labeler's answers or a ranking's documents are counted")
    assert not list(tmp_path.glob("r.*"))
    # a mask cut off by truncation is named so
    (tmp_path / "long.txt").write_text(LONG + " [MASK]\n")
    _fails(["run", str(out), str(tmp_path / "long.txt"), "-o", str(tmp_path / "r.jsonl"), "--truncate"], capsys,
           EXIT_BAD_SPEC, "long.txt: line 1: no [MASK] in the text within the model's first 16 tokens")
    # a pretrainer predicts at most as many masks a text as it has positions
    rt = bertc.Runtime(mlm_builds["bert_pretraining"])
    rt.parts = dataclasses.replace(rt.parts, positions=1)
    with pytest.raises(InputError, match="text 1: 2 \\[MASK\\] tokens; this model predicts at most 1 a text"):
        rt.run(["[MASK] [MASK]"])


def test_fill_mask_batches_are_cut_to_hold_the_vocabulary_logits(mlm_builds, monkeypatch):
    import bertc.runtime as runtime

    monkeypatch.setattr(runtime, "FILL_MASK_LOGITS", 56 * 20)   # 20 tokens of the fixture's 56-token vocabulary
    rt = bertc.Runtime(mlm_builds["distilbert_mlm"], artifact="onnx")
    assert rt.max_batch_tokens == 20 and rt.parts.max_batch_tokens == 20
    texts = [f"the [MASK] {w}" for w in ("cat", "dog", "car", "house", "tree", "mat")]
    calls = []
    run = rt.engine.session.run
    rt.engine.session.run = lambda names, feeds: calls.append(feeds["input_word_ids"].shape) or run(names, feeds)
    got = rt.run(texts)
    assert all(b * s <= 20 for b, s in calls) and len(calls) > 1
    ref = direct(mlm_builds["distilbert_mlm"], texts)
    _assert_fill(got, _expected_fill(mlm_builds["distilbert_mlm"], texts, lambda i, n, t: ref["logits"][i, t], 5),
                 texts)


# --- every input and result format (the CLI) -----------------------------------------------------------

@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "parquet"])
def test_every_input_format_gives_the_same_embeddings(builds, tmp_path, fmt):
    out = builds["st_bert_mean_norm"]
    paths = write_inputs(tmp_path / "in", TEXTS)
    result = tmp_path / "emb.npy"
    assert main(["run", str(out), str(paths[fmt]), "-o", str(result), "--artifact", "onnx", "-q",
                 "--batch-size", "3"]) == 0
    np.testing.assert_allclose(np.load(result), direct(out, TEXTS)["sentence_embedding"], atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "in"]  # no temporary file left


def test_kept_fields_travel_with_each_result(builds, tmp_path, capsys):
    """--keep-fields copies input fields (ids, URLs) into each result row, in input order: from JSONL, CSV and
    Parquet into JSONL, CSV and Parquet results, with the input's types in Parquet (text from CSV); refused where a
    result has no place for them, or a result field has their name."""
    import pyarrow.parquet as pq

    cls, emb = builds["bert_seq_cls"], builds["st_bert_mean_norm"]
    paths = write_inputs(tmp_path / "in", TEXTS)     # fields id (0..), text
    expected = bertc.Runtime(cls, artifact="onnx").run(TEXTS)
    for fmt in ("jsonl", "csv", "parquet"):
        for suffix in ("jsonl", "parquet", "csv"):
            result = tmp_path / f"{fmt}.{suffix}"
            assert main(["run", str(cls), str(paths[fmt]), "-o", str(result), "--artifact", "onnx", "-q",
                         "--keep-fields", "id,text", "--window", "3", "--batch-size", "2"]) == 0
            got = read_result(result)
            ids = [str(i) if fmt == "csv" or suffix == "csv" else i for i in range(len(TEXTS))]
            assert [g["id"] for g in got] == ids, (fmt, suffix)
            assert [g["text"] for g in got] == TEXTS
            assert [g["label"] for g in got] == [e["label"] for e in expected]
            if suffix == "parquet":
                assert pq.read_schema(result).names[:2] == ["id", "text"]
    result = tmp_path / "emb.parquet"
    assert main(["run", str(emb), str(paths["parquet"]), "-o", str(result), "-q", "--keep-fields", "id"]) == 0
    table = pq.read_table(result)
    assert str(table.schema.field("id").type) == "int64" and table.column("id").to_pylist() == list(range(len(TEXTS)))
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist()), bertc.Runtime(emb).run(TEXTS),
                               atol=1e-6)
    # a value of another type in a later window cannot join its Parquet column: named, nothing written
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps({"id": i if i < 4 else f"x{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    _fails(["run", str(cls), str(mixed), "-o", str(tmp_path / "m.parquet"), "-q", "--keep-fields", "id", "--window",
            "2", "--batch-size", "2"], capsys, EXIT_OUTPUT,
           f"--keep-fields id: {mixed}: line 5: a value of type string after values of type int64: they cannot be "
           f"one Parquet column; use a .jsonl result")
    assert not (tmp_path / "m.parquet").exists()
    # refused: no place for them, a result field's name, a .txt, a missing field
    for args, needle in (
            ([str(emb), str(paths["jsonl"]), "-o", str(tmp_path / "e.npy"), "--keep-fields", "id"],
             "--keep-fields: a .npy result of embeddings has no columns to put id in; use .parquet or .jsonl"),
            ([str(emb), str(paths["jsonl"]), "-o", str(tmp_path / "e.csv"), "--keep-fields", "id"], "a .csv result"),
            ([str(cls), str(paths["jsonl"]), "-o", str(tmp_path / "r.jsonl"), "--keep-fields", "id,score"],
             "--keep-fields score: the classification results have a field of that name"),
            ([str(cls), str(paths["txt"]), "-o", str(tmp_path / "r.jsonl"), "--keep-fields", "id"],
             "a .txt input has no fields to keep"),
            ([str(cls), str(paths["csv"]), "-o", str(tmp_path / "r.jsonl"), "--keep-fields", "url"],
             "no column 'url' in the header (columns: id, text; choose with --text-field / --pair-field / "
             "--keep-fields)"),
            ([str(cls), str(paths["jsonl"]), "-o", str(tmp_path / "r.jsonl"), "--keep-fields", "id,"],
             "--keep-fields 'id,': one field, or several comma-separated, each once")):
        _fails(["run", *args, "-q"], capsys, EXIT_BAD_SPEC, needle)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("e.", "r.", "m."))) == []


def test_a_sentence_embedder_scores_pairs_by_its_similarity_function(builds, tmp_path, capsys):
    """--similarity: each text of a pair is embedded alone (as sentence-transformers encodes it) and the two compared
    by the model's similarity_fn_name (cosine by default; dot, euclidean, manhattan as
    SentenceTransformer.similarity_pairwise computes them). A pair without --similarity is refused, not joined
    into one input as a cross-encoder's would be."""
    out = builds["st_bert_mean_norm"]
    pairs = [PAIRS[0], (TEXTS[0], TEXTS[0]), (TEXTS[1], TEXTS[2])]
    emb = bertc.Runtime(out, artifact="onnx").run([t for p in pairs for t in p]).astype(np.float64)
    a, b = emb[0::2], emb[1::2]
    functions = {"cosine": (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1),
                 "dot": (a * b).sum(1), "euclidean": -np.linalg.norm(a - b, axis=1),
                 "manhattan": -np.abs(a - b).sum(1)}
    got = bertc.Runtime(out, artifact="onnx", similarity=True).run(pairs)
    np.testing.assert_allclose([g["similarity"] for g in got], functions["cosine"], atol=1e-6)
    assert abs(got[1]["similarity"] - 1.0) < 1e-6 and all(-1 <= g["similarity"] <= 1 for g in got)
    from bertc.engine import SIMILARITIES
    v = np.array([-0.544, -0.316, 0.412, 1.043, -0.129, 1.366, -0.665, 0.352])
    assert SIMILARITIES["cosine"](v, v) == 1.0 and SIMILARITIES["cosine"](v, -v) == -1.0   # not 1.0000000000000002
    assert np.isnan(SIMILARITIES["cosine"](v * np.nan, v))   # not clipped to -1.0, "most dissimilar"
    paths = write_inputs(tmp_path / "in", [p[0] for p in pairs], [p[1] for p in pairs])
    for name, expected in functions.items():   # the model's similarity_fn_name, in the build's bundled config
        copy = tmp_path / f"out_{name}"
        shutil.copytree(out, copy)
        config = copy / "config_sentence_transformers.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "similarity_fn_name": name}))
        for source, args in (("txt", []), ("jsonl", ["--pair-field", "context"])):
            result = tmp_path / f"{name}_{source}.csv"
            assert main(["run", str(copy), str(paths[source]), "-o", str(result), "--artifact", "onnx",
                         "--similarity", *args]) == 0
            assert f"; {name} similarity (the model's similarity_fn_name)" in capsys.readouterr().err
            np.testing.assert_allclose([float(r["similarity"]) for r in read_result(result)], expected, atol=1e-5)
    # prompts: the first texts' (here the model's default, query), the second texts' own (--pair-prompt-name)
    config.write_text(json.dumps({**json.loads(config.read_text()), "prompts": PROMPTS, "default_prompt_name": "query",
                                  "similarity_fn_name": "dot"}))
    rt = bertc.Runtime(copy, artifact="onnx", similarity=True, pair_prompt_name="passage")
    q = bertc.Runtime(out, artifact="onnx").run([PROMPTS["query"] + p[0] for p in pairs]).astype(np.float64)
    d = bertc.Runtime(out, artifact="onnx").run([PROMPTS["passage"] + p[1] for p in pairs]).astype(np.float64)
    np.testing.assert_allclose([g["similarity"] for g in rt.run(pairs)], (q * d).sum(1), atol=1e-5)
    assert (rt.prompt, rt.pair_prompt) == (PROMPTS["query"], PROMPTS["passage"])
    same = bertc.Runtime(copy, artifact="onnx", similarity=True)   # by default both texts get the first's prompt
    assert same.pair_prompt == PROMPTS["query"]
    with pytest.raises(InputError, match="a pair prompt is for the second text of each pair that similarity=True"):
        bertc.Runtime(copy, pair_prompt="x")
    config.write_text(json.dumps({"similarity_fn_name": "maxsim"}))
    with pytest.raises(InputError, match="similarity_fn_name 'maxsim': bertc run compares with cosine, dot"):
        bertc.Runtime(copy, similarity=True)
    # refused: a pair without --similarity, one text with it, --similarity on a classifier
    _fails(["run", str(out), str(paths["txt"]), "-o", str(tmp_path / "e.npy"), "-q"], capsys, EXIT_BAD_SPEC,
           "in.txt: line 1: a pair of texts; a sentence embedder embeds one text a row")
    with pytest.raises(InputError, match="text 1: one text; the similarity of a pair needs two"):
        bertc.Runtime(out, similarity=True).run(["one"])
    with pytest.raises(InputError, match="similarity: compares a sentence embedder's embeddings of two texts "
                                         "\\(this model gives classification results\\)"):
        bertc.Runtime(builds["bert_seq_cls"], similarity=True)
    _fails(["run", str(out), str(paths["txt"]), "-o", str(tmp_path / "s.npy"), "-q", "--similarity"], capsys,
           EXIT_BAD_SPEC, "a .npy result cannot hold similarity results")


def test_a_sentence_embedder_ranks_each_querys_documents_by_similarity(builds, tmp_path, capsys):
    """--rank with a sentence embedder (a bi-encoder): the query and each of its documents embedded alone (as
    sentence-transformers encodes them: the query's prompt, the documents' own with --pair-prompt[-name]), each
    document scored by the model's similarity function with the query, best first (as util.semantic_search orders
    a corpus; equal scores in the input's order), the best K with --top-k; JSONL, .txt (tabs), Parquet."""
    out = builds["st_bert_mean_norm"]
    # held to sentence-transformers' util.semantic_search on the fixture (tools/make_hf_fixtures.py's record; its
    # torch.topk puts the two equal documents either way: bertc keeps the input's order)
    search = json.loads((FIXTURES / "st_bert_mean_norm" / "search.json").read_text())
    for top_k, key in ((None, "all"), (3, "top_3")):
        got = bertc.Runtime(out, artifact="onnx", rank=True, top_k=top_k).run(
            [(q, search["documents"]) for q in search["queries"]])
        assert [[r["index"] for r in g["ranking"]] for g in got] == \
            [[h["index"] for h in sorted(row, key=lambda h: (-h["score"], h["index"]))] for row in search[key]]
        np.testing.assert_allclose([r["score"] for g in got for r in g["ranking"]],
                                   [h["score"] for row in search[key] for h in row], atol=1e-6)
    documents = TEXTS[:6] + [TEXTS[2]]   # the last one twice: a tie keeps the input's order
    queries = [q for q, _ in PAIRS]
    rt = bertc.Runtime(out, artifact="onnx", rank=True)
    assert (rt.kind, rt.similarity) == ("rank", "cosine")
    embed = bertc.Runtime(out, artifact="onnx")
    d = embed.run(documents).astype(np.float64)
    got = rt.run([(q, documents) for q in queries])
    for q, e, ranking in zip(queries, embed.run(queries).astype(np.float64), got):
        scores = d @ e / np.linalg.norm(d, axis=1) / np.linalg.norm(e)
        order = sorted(range(len(documents)), key=lambda i: -scores[i])
        assert [r["index"] for r in ranking["ranking"]] == order
        assert [r["text"] for r in ranking["ranking"]] == [documents[i] for i in order]
        np.testing.assert_allclose([r["score"] for r in ranking["ranking"]], scores[order], atol=1e-6)
        assert order.index(2) < order.index(len(documents) - 1)
    # the documents' own prompt, the model's similarity function (dot), --top-k
    copy = tmp_path / "out_dot"
    shutil.copytree(out, copy)
    config = copy / "config_sentence_transformers.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prompts": PROMPTS, "default_prompt_name": "query",
                                  "similarity_fn_name": "dot"}))
    q = embed.run([PROMPTS["query"] + x for x in queries]).astype(np.float64)
    p = embed.run([PROMPTS["passage"] + x for x in documents]).astype(np.float64)
    rt = bertc.Runtime(copy, artifact="onnx", rank=True, pair_prompt_name="passage", top_k=3)
    for e, ranking in zip(q, rt.run([(x, documents) for x in queries])):
        scores = p @ e
        order = sorted(range(len(documents)), key=lambda i: -scores[i])[:3]
        assert [r["index"] for r in ranking["ranking"]] == order
        np.testing.assert_allclose([r["score"] for r in ranking["ranking"]], scores[order], atol=1e-5)
    expected = [[(r["index"], r["score"]) for r in g["ranking"]] for g in rt.run([(x, documents) for x in queries])]
    jsonl, txt = tmp_path / "q.jsonl", tmp_path / "q.txt"
    jsonl.write_text("".join(json.dumps({"id": i, "query": x, "docs": documents}) + "\n" for i, x in enumerate(queries)))
    txt.write_text("".join("\t".join([x, *documents]) + "\n" for x in queries))
    for source, args in ((jsonl, ["--text-field", "query", "--documents-field", "docs", "--keep-fields", "id"]),
                         (txt, [])):
        for suffix in ("jsonl", "parquet"):
            result = tmp_path / f"{source.suffix[1:]}.{suffix}"
            assert main(["run", str(copy), str(source), "-o", str(result), "--artifact", "onnx", "--rank",
                         "--top-k", "3", "--pair-prompt-name", "passage", *args]) == 0
            line = capsys.readouterr().err
            assert "rank results from" in line and "; dot similarity (the model's similarity_fn_name)" in line
            assert f"; document prompt {PROMPTS['passage']!r} (prompt name passage)" in line and " scores (" not in line
            rows = read_result(result)
            assert [[r["index"] for r in row["ranking"]] for row in rows] == [[i for i, _ in e] for e in expected]
            np.testing.assert_allclose([r["score"] for row in rows for r in row["ranking"]],
                                       [v for e in expected for _, v in e], atol=1e-7)
            if args:
                assert [row["id"] for row in rows] == [0, 1, 2]
    # refused: --rank with --similarity, a row with a pair, no documents
    with pytest.raises(InputError, match="rank and similarity: a sentence embedder either scores"):
        bertc.Runtime(out, rank=True, similarity=True)
    from bertc.run_io import Record

    with pytest.raises(InputError, match="line 1: a ranking compares its query with each document; drop the pair"):
        bertc.Runtime(out, rank=True).engine.predict([Record("q", "a pair", "line 1", ("a",))])
    (tmp_path / "none.txt").write_text("a query\n")
    _fails(["run", str(out), str(tmp_path / "none.txt"), "-o", str(tmp_path / "r.jsonl"), "--rank"], capsys,
           EXIT_BAD_SPEC, "none.txt: line 1: 0 documents; a ranking needs one or more")
    assert not (tmp_path / "r.jsonl").exists()


def test_embeddings_at_a_lower_precision_are_sentence_transformers_quantize_embeddings(builds, tmp_path, capsys):
    """--embedding-precision writes a sentence embedder's embeddings as sentence-transformers' quantize_embeddings
    does (held to its record on the fixture: binary / ubinary packed 8 dimensions a byte, int8 / uint8 with ranges
    from calibration embeddings, values beyond them clipped), in .npy, Parquet, JSONL and CSV; what it cannot do is
    refused, named, with nothing written."""
    from bertc.quantize_embeddings import EmbeddingPrecision

    record = np.load(FIXTURES / "st_bert_mean_norm" / "quantized.npz")
    for precision in ("int8", "uint8", "binary", "ubinary"):
        calibration = record["documents"] if precision.endswith("int8") else None
        have = EmbeddingPrecision(precision, calibration)(record["queries"])
        assert have.dtype == record[precision].dtype and have.shape == record[precision].shape
        np.testing.assert_array_equal(have, record[precision])   # the queries beyond the documents' ranges: clipped
    assert np.count_nonzero(record["int8"] == 127) and np.count_nonzero(record["int8"] == -128)
    # bertc run: the build's float32 embeddings, then quantized (the documents' embeddings calibrate)
    out = builds["st_bert_mean_norm"]
    search = json.loads((FIXTURES / "st_bert_mean_norm" / "search.json").read_text())
    docs, queries = tmp_path / "docs.txt", tmp_path / "queries.jsonl"
    docs.write_text("\n".join(search["documents"]) + "\n")
    queries.write_text("".join(json.dumps({"id": i, "text": q}) + "\n" for i, q in enumerate(search["queries"])))
    assert main(["run", str(out), str(docs), "-o", str(tmp_path / "docs.npy"), "-q", "--artifact", "onnx"]) == 0
    floats = bertc.Runtime(out, artifact="onnx").run(search["queries"])
    np.testing.assert_allclose(floats, record["queries"], atol=1e-6)
    for precision in ("int8", "uint8", "binary", "ubinary"):
        calibration = ["--calibration-embeddings", str(tmp_path / "docs.npy")] if precision.endswith("int8") else []
        expected = EmbeddingPrecision(precision, np.load(tmp_path / "docs.npy") if calibration else None)(floats)
        assert np.abs(expected.astype(int) - record[precision].astype(int)).max() <= (1 if calibration else 0)
        rt = bertc.Runtime(out, artifact="onnx", embedding_precision=precision,
                           calibration_embeddings=tmp_path / "docs.npy" if calibration else None)
        np.testing.assert_array_equal(rt.run(search["queries"]), expected)
        assert rt.run([]).shape == (0, expected.shape[1]) and rt.run([]).dtype == expected.dtype
        for suffix in ("npy", "parquet", "jsonl", "csv"):
            result = tmp_path / f"{precision}.{suffix}"
            keep = ["--keep-fields", "id"] if suffix in ("parquet", "jsonl") else []
            assert main(["run", str(out), str(queries), "-o", str(result), "--artifact", "onnx",
                         "--embedding-precision", precision, *calibration, *keep]) == 0
            line = capsys.readouterr().err
            assert f"; embeddings written as {precision}" in line
            assert ("(ranges from docs.npy, 8 embeddings)" in line) == bool(calibration)
            rows = read_result(result)
            if suffix == "npy":
                assert rows.dtype == expected.dtype
            elif suffix == "csv":
                rows = [list(map(int, r)) for r in csv.reader(result.open())]
            else:
                assert [r.pop("id") for r in rows] == [0, 1, 2, 3]
                rows = [r["embedding"] for r in rows]
            np.testing.assert_array_equal(np.asarray(rows), expected)
    # refused: int8 without calibration, calibration for float32 or binary, another kind of result, a file that is
    # not .npy, integer or other-width calibration embeddings
    args = ["run", str(out), str(queries), "-o", str(tmp_path / "r.npy")]
    _fails([*args, "--embedding-precision", "uint8"], capsys, EXIT_BAD_SPEC,
           "--embedding-precision uint8: needs calibration embeddings (--calibration-embeddings FILE.npy")
    _fails([*args, "--calibration-embeddings", str(tmp_path / "docs.npy")], capsys, EXIT_BAD_SPEC,
           "--calibration-embeddings: only int8 and uint8 embeddings have ranges to calibrate (this run's precision "
           "is float32)")
    _fails([*args, "--embedding-precision", "binary", "--similarity"], capsys, EXIT_BAD_SPEC,
           "--embedding-precision binary: only a sentence embedder's embeddings are written at another precision (this "
           "run gives similarity results)")
    _fails([*args, "--embedding-precision", "int8", "--calibration-embeddings", str(docs)], capsys, EXIT_BAD_SPEC,
           "docs.txt: not a .npy file")
    np.save(tmp_path / "ints.npy", np.zeros((2, 16), np.int8))
    _fails([*args, "--embedding-precision", "int8", "--calibration-embeddings", str(tmp_path / "ints.npy")], capsys,
           EXIT_BAD_SPEC, "ints.npy: calibration embeddings are a (rows, dim) float array with one row or more, got "
           "int8 of shape (2, 16)")
    np.save(tmp_path / "narrow.npy", np.zeros((2, 5), np.float32))
    _fails([*args, "--embedding-precision", "int8", "--calibration-embeddings", str(tmp_path / "narrow.npy")], capsys,
           EXIT_BAD_SPEC, "calibration embeddings (narrow.npy, 2 embeddings) have 5 dimensions; this model's "
           "embeddings have 16")
    assert not (tmp_path / "r.npy").exists()


def test_a_byte_order_mark_at_the_start_is_no_text(builds, tmp_path):
    """Excel's "CSV UTF-8" and Notepad start a file with the UTF-8 byte-order mark: it is neither part of the
    first column's name, nor of the first JSON line, nor of the first text (files and standard input)."""
    import subprocess
    import sys

    out = builds["bert_seq_cls"]
    paths = write_inputs(tmp_path / "in", TEXTS[:3])
    expected = bertc.Runtime(out, artifact="onnx").run(TEXTS[:3])
    for fmt, path in paths.items():
        if fmt == "parquet":
            continue
        marked = tmp_path / f"bom.{fmt}"
        marked.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        result = tmp_path / f"r.{fmt}.jsonl"
        assert main(["run", str(out), str(marked), "-o", str(result), "--artifact", "onnx", "-q"]) == 0, fmt
        assert [r["scores"] for r in read_result(result)] == [e["scores"] for e in expected], fmt
        piped = subprocess.run([sys.executable, "-m", "bertc", "run", str(out), "-", "--input-format", fmt, "-o", "-",
                                "--artifact", "onnx", "-q"], input=marked.read_bytes(), capture_output=True)
        assert piped.returncode == 0, piped.stderr
        assert [json.loads(line)["scores"] for line in piped.stdout.splitlines()] == [e["scores"] for e in expected]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_classifier_results_in_every_result_format(builds, tmp_path, suffix):
    out = builds["bert_seq_cls"]
    paths = write_inputs(tmp_path / "in", TEXTS)
    result = tmp_path / f"labels{suffix}"
    assert main(["run", str(out), str(paths["jsonl"]), "-o", str(result), "-q", "--artifact", "onnx"]) == 0
    rows = read_result(result)
    probs = softmax(direct(out, TEXTS)["logits"].astype(np.float64))
    assert [r["label"] for r in rows] == [LABELS["bert_seq_cls"][k] for k in probs.argmax(-1)]
    np.testing.assert_allclose([float(r["score"]) for r in rows], probs.max(-1), atol=1e-5)


def test_embeddings_as_parquet_and_jsonl(builds, tmp_path):
    out = builds["st_bert_mean_norm"]
    paths = write_inputs(tmp_path / "in", TEXTS)
    ref = direct(out, TEXTS)["sentence_embedding"]
    for suffix in (".parquet", ".jsonl"):
        result = tmp_path / f"emb{suffix}"
        assert main(["run", str(out), str(paths["txt"]), "-o", str(result), "-q", "--artifact", "onnx"]) == 0
        np.testing.assert_allclose(np.array([r["embedding"] for r in read_result(result)]), ref, atol=1e-5)


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "parquet"])
def test_pairs_from_every_input_format(builds, tmp_path, fmt):
    out = builds["bert_qa"]
    paths = write_inputs(tmp_path / "in", [q for q, _ in PAIRS], [c for _, c in PAIRS])
    result = tmp_path / "spans.jsonl"
    extra = [] if fmt == "txt" else ["--pair-field", "context"]
    assert main(["run", str(out), str(paths[fmt]), "-o", str(result), "-q", *extra]) == 0
    assert [r["text"] for r in read_result(result)] == [r["text"] for r in bertc.Runtime(out).run(PAIRS)]


def test_tags_as_parquet(builds, tmp_path):
    out = builds["bert_token_cls"]
    paths = write_inputs(tmp_path / "in", TEXTS)
    result = tmp_path / "tags.parquet"
    assert main(["run", str(out), str(paths["csv"]), "-o", str(result), "-q"]) == 0
    rows = read_result(result)
    expected = bertc.Runtime(out).run(TEXTS)
    assert [[t["word"] for t in r["tags"]] for r in rows] == [[t["word"] for t in r["tags"]] for r in expected]
    assert [[t["label"] for t in r["tags"]] for r in rows] == [[t["label"] for t in r["tags"]] for r in expected]


# --- truncation --------------------------------------------------------------------------------------

LONG = "the cat sat on the mat and the dog ran fast on the road to the big red house"  # 20 tokens > 16


def test_over_long_text_is_truncated_as_the_tokenizer_says_or_refused_naming_the_line(builds, tmp_path, capsys):
    # an embedder truncates (as sentence-transformers does): the result is that of the first 14 word tokens
    emb = builds["st_bert_mean_norm"]
    words = LONG.split()
    rt = bertc.Runtime(emb, artifact="onnx")
    got = rt.run([LONG])
    np.testing.assert_allclose(got, direct(emb, [" ".join(words[:14])])["sentence_embedding"], atol=1e-5)
    assert rt.truncated == 1   # counted, and the run's summary says so
    (tmp_path / "long.txt").write_text(f"the cat\n{LONG}\n{LONG} again\n")
    assert main(["run", str(emb), str(tmp_path / "long.txt"), "-o", str(tmp_path / "e.npy")]) == 0
    assert "3 embedding result(s)" in (err := capsys.readouterr().err) and \
        "; 2 of them cut to the model's 16 tokens (--no-truncate refuses such texts, naming each)" in err
    (tmp_path / "short.txt").write_text("the cat\n")
    assert main(["run", str(emb), str(tmp_path / "short.txt"), "-o", str(tmp_path / "e2.npy")]) == 0
    assert "cut to" not in capsys.readouterr().err   # nothing cut: nothing said
    # a classifier whose tokenizer.json does not truncate refuses, naming the line, unless --truncate
    cls = builds["bert_seq_cls"]
    text = tmp_path / "in.txt"
    text.write_text("the cat\n" + LONG + "\n")
    result = tmp_path / "r.jsonl"
    assert main(["run", str(cls), str(text), "-o", str(result), "-q"]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert f"{text}: line 2: the text is longer than the model's maximum of 16 tokens; pass --truncate" in err
    assert "Traceback" not in err and not result.exists()
    assert main(["run", str(cls), str(text), "-o", str(result), "-q", "--truncate"]) == 0
    assert len(read_result(result)) == 2
    with pytest.raises(InputError, match="text 2: the text is longer"):
        bertc.Runtime(cls).run(["a", LONG])
    assert len(bertc.Runtime(cls, truncate=True).run(["a", LONG])) == 2


# --- bad input: a clear message, exit 2, no traceback, nothing written ---------------------------------

def _fails(args, capsys, code, *needles):
    assert main(args) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") or "\nerror: " in err, err
    assert "Traceback" not in err and err.count("error: ") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_inputs_are_named(builds, tmp_path, capsys):
    out = str(builds["st_bert_mean_norm"])
    res = tmp_path / "r.npy"
    txt = tmp_path / "a.txt"
    txt.write_text("one\n\nthree\n")
    _fails(["run", out, str(txt), "-o", str(res)], capsys, EXIT_BAD_SPEC, f"{txt}: line 2: empty text")
    jl = tmp_path / "a.jsonl"
    jl.write_text('{"text": "a"}\n{"body": "b"}\n')
    _fails(["run", out, str(jl), "-o", str(res)], capsys, EXIT_BAD_SPEC, "line 2: no field 'text' (it has: body")
    jl.write_text('{"text": "a"}\n{"text": 3}\n')
    _fails(["run", out, str(jl), "-o", str(res)], capsys, EXIT_BAD_SPEC, "line 2: field 'text' is int, not text")
    jl.write_text('{"text": "a"}\nnot json\n')
    _fails(["run", out, str(jl), "-o", str(res)], capsys, EXIT_BAD_SPEC, "line 2: not JSON")
    csv_path = tmp_path / "a.csv"
    csv_path.write_text("id,body\n1,hello\n")
    _fails(["run", out, str(csv_path), "-o", str(res)], capsys, EXIT_BAD_SPEC,
           "no column 'text' in the header (columns: id, body")
    _fails(["run", out, str(csv_path), "-o", str(res), "--text-field", "body", "--pair-field", "ctx"], capsys,
           EXIT_BAD_SPEC, "no column 'ctx'")
    paths = write_inputs(tmp_path / "in", TEXTS)
    _fails(["run", out, str(paths["parquet"]), "-o", str(res), "--text-field", "body"], capsys, EXIT_BAD_SPEC,
           "no column 'body' (columns: id, text")
    other = tmp_path / "a.xml"
    other.write_text("<a/>")
    _fails(["run", out, str(other), "-o", str(res)], capsys, EXIT_BAD_SPEC, "unknown input format '.xml'", "--input-format")
    _fails(["run", out, str(tmp_path / "missing.txt"), "-o", str(res)], capsys, EXIT_BAD_SPEC, "no such input file")
    _fails(["run", out, str(paths["txt"]), "-o", str(tmp_path / "r.xlsx")], capsys, EXIT_BAD_SPEC,
           "unknown result format '.xlsx'")
    cls = str(builds["bert_token_cls"])
    _fails(["run", cls, str(paths["txt"]), "-o", str(res)], capsys, EXIT_BAD_SPEC,
           "a .npy result cannot hold tags results; use .jsonl or .parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.txt", "a.jsonl", "a.csv", "a.xml", "in"])


def test_a_directory_that_is_not_a_bertc_build(builds, tmp_path, capsys):
    paths = write_inputs(tmp_path / "in", TEXTS)
    res = str(tmp_path / "r.npy")
    _fails(["run", str(tmp_path / "in"), str(paths["txt"]), "-o", res], capsys, EXIT_OUTPUT,   # as parity, bench
           "not a bertc build directory (no report.json")
    _fails(["run", str(tmp_path / "nope"), str(paths["txt"]), "-o", res], capsys, EXIT_BAD_SPEC, "no such build directory")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "report.json").write_text("[1, 2]")
    (fake / "spec.json").write_text("{}")
    _fails(["run", str(fake), str(paths["txt"]), "-o", res], capsys, EXIT_OUTPUT, "not a bertc build report")
    (fake / "report.json").write_text("{")   # the file named
    _fails(["run", str(fake), str(paths["txt"]), "-o", res], capsys, EXIT_OUTPUT,
           f"{fake}: not a readable bertc build ({fake / 'report.json'}: ")
    # a build without a tokenizer
    nok = tmp_path / "notok"
    shutil.copytree(builds["st_bert_mean_norm"], nok)
    for name in ("tokenizer.json", "vocab.txt"):
        (nok / name).unlink()
    _fails(["run", str(nok), str(paths["txt"]), "-o", res], capsys, EXIT_BAD_SPEC, "no tokenizer in this build")


def test_no_partial_result_on_a_late_error_and_an_existing_result_is_kept(builds, tmp_path, capsys):
    out = str(builds["st_bert_mean_norm"])
    txt = tmp_path / "a.txt"
    txt.write_text("".join(f"the cat number {i}\n" for i in range(50)) + "\n")  # line 51 is empty: fails late
    res = tmp_path / "r.npy"
    res.write_bytes(b"what the user had")
    _fails(["run", out, str(txt), "-o", str(res), "--window", "8"], capsys, EXIT_OUTPUT, "already exists; pass --force")
    _fails(["run", out, str(txt), "-o", str(res), "--window", "8", "--force"], capsys, EXIT_BAD_SPEC, "line 51: empty text")
    assert res.read_bytes() == b"what the user had"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "r.npy"]
    txt.write_text(txt.read_text().rstrip("\n") + "\n")
    assert main(["run", out, str(txt), "-o", str(res), "--window", "8", "--force", "-q"]) == 0
    assert np.load(res).shape == (50, 16)


def test_streaming_keeps_order_across_windows_and_reports_progress(builds, tmp_path, capsys):
    import io

    from bertc.runtime import Progress

    out = builds["st_bert_mean_norm"]
    texts = [TEXTS[i % len(TEXTS)] + " the" * (i % 5) for i in range(37)]
    txt = tmp_path / "a.txt"
    txt.write_text("\n".join(texts) + "\n")
    rt = bertc.Runtime(out, artifact="onnx", batch_size=4, window=10)
    stream = io.StringIO()
    progress = Progress(True, "texts", stream)
    assert rt.run_file(txt, tmp_path / "r.npy", progress=progress, total_hint=progress.set_total) == 37
    progress.close()
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), direct(out, texts)["sentence_embedding"], atol=1e-5)
    assert "37/37 texts 100%" in stream.getvalue() and "texts/s" in stream.getvalue()
    # the CLI draws no bar when stderr is not a terminal, but says what it picked and how fast it went
    assert main(["run", str(out), str(txt), "-o", str(tmp_path / "s.npy")]) == 0
    err = capsys.readouterr().err
    assert "embedding results from model.optimized.int8.onnx (onnx_int8, int8, cpu)" in err
    assert "wrote" in err and "37 embedding result(s)" in err and "\r" not in err


def test_python_api_rejects_bad_texts():
    with pytest.raises(InputError, match="no such build directory"):
        bertc.Runtime("/nonexistent/out")


def test_python_api_rejects_bad_items(builds):
    rt = bertc.Runtime(builds["st_bert_mean_norm"])
    with pytest.raises(InputError, match="text 2: empty text"):
        rt.run(["a", "  "])
    with pytest.raises(InputError, match="text 1: expected a string or a \\(text, pair\\) tuple"):
        rt.run([3])
    with pytest.raises(InputError, match="takes a list of texts"):
        rt.run("a")
    assert rt.run([]).shape == (0, 16)


# --- standard input and output ----------------------------------------------------------------------------------

def _bertc(args, stdin: bytes = b"", timeout: int = 300):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "bertc", *map(str, args)], input=stdin, capture_output=True,
                          env=env, timeout=timeout)


def test_standard_input_and_output_give_what_files_give(builds, tmp_path):
    """``-`` reads standard input (txt by default; JSONL / CSV with --input-format) and writes standard output
    (JSONL by default; CSV with --result-format), batch by batch: the same results as the files, in order."""
    paths = write_inputs(tmp_path / "in", TEXTS)
    emb, cls = builds["st_bert_mean_norm"], builds["bert_seq_cls"]
    small = ["--batch-size", "3", "--window", "4"]   # several windows and batches through the stream
    assert main(["run", str(emb), str(paths["txt"]), "-o", str(tmp_path / "emb.jsonl"), "-q", *small]) == 0
    run = _bertc(["run", emb, "-", "-o", "-", "-q", *small], paths["txt"].read_bytes())
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    assert run.stdout == (tmp_path / "emb.jsonl").read_bytes()
    assert main(["run", str(cls), str(paths["jsonl"]), "-o", str(tmp_path / "cls.csv"), "-q"]) == 0
    run = _bertc(["run", cls, "-", "-o", "-", "--input-format", "jsonl", "--result-format", "csv"],
                 paths["jsonl"].read_bytes())
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    assert run.stdout == (tmp_path / "cls.csv").read_bytes()
    assert f"wrote standard output: {len(TEXTS)} classification result(s)" in run.stderr.decode()


def test_standard_input_and_output_refuse_what_cannot_stream(builds, tmp_path):
    out = builds["st_bert_mean_norm"]
    run = _bertc(["run", out, "-", "-o", "-", "-q"], b"the cat\n\na dog\n")
    assert run.returncode == EXIT_BAD_SPEC and b"error: standard input: line 2: empty text" in run.stderr
    assert run.stdout == b"" and b"Traceback" not in run.stderr
    run = _bertc(["run", out, "-", "-o", "-", "--result-format", "npy"], b"the cat\n")
    assert run.returncode == EXIT_BAD_SPEC
    assert b"a .npy result cannot be streamed to standard output; use --result-format jsonl or csv" in run.stderr
    run = _bertc(["run", out, "-", "-o", str(tmp_path / "r.jsonl"), "--input-format", "parquet"], b"x")
    assert run.returncode == EXIT_BAD_SPEC and b"Parquet cannot be read from standard input" in run.stderr
    assert not (tmp_path / "r.jsonl").exists()


def test_a_reader_that_stops_early_stops_the_run_quietly(builds):
    """``bertc run OUT - -o - | head -1``: when standard output's reader goes away, bertc stops with 141
    (128 + SIGPIPE), as Unix tools do, and prints no traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "bertc", "run", str(builds["st_bert_mean_norm"]), "-", "-o", "-",
                             "-q", "--window", "64"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    import threading

    def feed():
        try:
            proc.stdin.write(b"the cat sat on the mat.\n" * 20000)
            proc.stdin.close()
        except BrokenPipeError:   # bertc stopped reading: what this test wants
            pass

    threading.Thread(target=feed, daemon=True).start()
    first = proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=300) == 141
    assert first.startswith(b'{"embedding": [') and b"Traceback" not in stderr and b"Exception" not in stderr


@pytest.mark.parametrize("id2label, classes, names", [
    ({"1": "b", "0": "a", "2": "c"}, 3, ["a", "b", "c"]),
    # keys that are not 0 .. n - 1: transformers names class i by id2label[i], so class 3 has no name here
    ({"0": "a", "1": "b", "2": "c", "10": "other"}, 4, None),
    ({"0": "a", "1": "b"}, 3, None),
])
def test_class_names_are_id2label_by_class_id(tmp_path, id2label, classes, names):
    from bertc.checkpoints import CHECKPOINT_CONFIG
    from bertc.runtime import read_labels

    (tmp_path / CHECKPOINT_CONFIG).write_text(json.dumps({"id2label": id2label}))
    assert read_labels(tmp_path, {}, classes) == names


def test_simple_aggregation_reads_every_token_of_a_character_of_several_bytes(tmp_path_factory):
    """A reviewer: a byte-level BPE splits "é" or an emoji into tokens sharing the character's offsets, and
    ``--aggregation simple`` keyed tokens by their offsets: all but the last were lost (an entity transformers'
    pipeline gives was missing, another's score one token's instead of the mean)."""
    from bertc.cli import main
    from bertc.text import load_tokenizer

    work = tmp_path_factory.mktemp("bpe_tags")
    source = work / "roberta_token_cls"
    shutil.copytree(FIXTURES / "roberta_token_cls", source)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):   # RoBERTa's byte-level BPE
        shutil.copyfile(FIXTURES / "roberta_model" / f, source / f)
    out = work / "out"
    assert main(["import", str(source), "-o", str(work / "spec.json")]) == 0
    assert main(["build", str(work / "spec.json"), "-o", str(out), "-q", "--no-tflite", "--no-parity",
                 "--variants", "none"]) == 0
    text = "the café 🐶 sat"
    tok = load_tokenizer(out, 64)
    e = tok.encode(text)
    spoken = [t for t, (a, b) in enumerate(e.offsets) if not e.special_tokens_mask[t] and text[a:b].strip()]
    shared = [t for t in spoken if sum(e.offsets[u] == e.offsets[t] for u in spoken) > 1]
    assert shared   # the fixture's vocabulary splits those characters into byte tokens
    got = bertc.Runtime(out, artifact="onnx", aggregation="simple").run([text])[0]
    assert len(got["tags"]) == len(spoken)
    logits = direct(out, [text])["logits"][0]
    probs = softmax(logits.astype(np.float64))
    for tag, t in zip(got["tags"], spoken):
        assert (tag["start"], tag["end"]) == tuple(e.offsets[t]) and abs(tag["score"] - probs[t].max()) < 1e-6
