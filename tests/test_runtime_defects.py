"""``bertc.Runtime`` on the cases that once went wrong: one Runtime used by several threads at once, a damaged
build whose bundled files cannot be read, arguments of the wrong kind, texts in a container without an order, and
one very long line. Each reuses test_run's tiny builds (made once per session)."""
import json
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import bertc
from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC, EXIT_OUTPUT, BackendLoadError, InputError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_run import shared_builds  # noqa: E402


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    return shared_builds(tmp_path_factory, ("st_bert_mean_norm", "bert_seq_cls", "bert_token_cls", "bert_qa"))


def _in_threads(work, n: int) -> list:
    """``work(k)`` for k in 0 .. n - 1, each in its own thread, all started together; their results (or what they
    raised)."""
    results, start = [None] * n, threading.Barrier(n)

    def run(k):
        start.wait()
        try:
            results[k] = work(k)
        except BaseException as exc:   # a pyo3 PanicException is a BaseException
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# --- one Runtime, several threads -----------------------------------------------------------------------

class _SlowTokenizer:
    """A tokenizers.Tokenizer that lets other threads run before each encoding, as a long text's encoding does on a
    busy machine: what one thread sets on a tokenizer (truncation, its stride) between its own setting and encoding
    is then another's."""

    real = None

    def __init__(self, tok):
        self._tok = tok

    @classmethod
    def from_str(cls, text):
        return cls(cls.real.from_str(text))

    def encode(self, *args, **kwargs):
        time.sleep(0.002)
        return self._tok.encode(*args, **kwargs)

    def encode_batch(self, *args, **kwargs):
        time.sleep(0.002)
        return self._tok.encode_batch(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_one_runtime_gives_several_threads_the_results_it_gives_one(builds, monkeypatch):
    """Threads calling run() on one Runtime at once get exactly the single-threaded results: a span labeler's long
    contexts (each question's length sets its windows' stride, once on a tokenizer all threads shared: wrong
    answers, tokenizer panics, loops), a token classifier's long texts, and the count of texts truncation cut
    (once the engine's last predict()'s, which another thread's predict() reset)."""
    import tokenizers

    context = "the cat sat on the mat . the dog ran fast on the road ."
    questions = [("what " + "is the " * (i % 5) + "cat ?", context) for i in range(10)]
    qa = bertc.Runtime(builds["bert_qa"], artifact="onnx", threads=1, window=2, batch_size=2)
    ref = [qa.run(questions), qa.run(questions[::-1])]
    texts = ["the cat " * (3 + i % 9) + "sat" for i in range(12)]
    tags = bertc.Runtime(builds["bert_token_cls"], artifact="onnx", threads=1, window=2, batch_size=2)
    ref_tags = tags.run(texts)
    long = ["the cat sat on the mat " * 6, "the cat"] * 8
    emb = bertc.Runtime(builds["st_bert_mean_norm"], artifact="onnx", threads=1, window=2, batch_size=2)
    ref_emb = emb.run(long)
    assert emb.truncated == 8

    shared = {name: bertc.Runtime(builds[name], artifact="onnx", threads=1, window=2, batch_size=2)
              for name in ("bert_qa", "bert_token_cls", "st_bert_mean_norm")}   # each engine made in the threads
    monkeypatch.setattr(_SlowTokenizer, "real", tokenizers.Tokenizer)
    monkeypatch.setattr(tokenizers, "Tokenizer", _SlowTokenizer)
    got = _in_threads(lambda k: shared["bert_qa"].run(questions if k % 2 == 0 else questions[::-1]), 4)
    for k, result in enumerate(got):
        assert result == ref[k % 2], f"thread {k}: {result!r:.300}"
    assert _in_threads(lambda k: shared["bert_token_cls"].run(texts), 4) == [ref_tags] * 4
    for result in _in_threads(lambda k: shared["st_bert_mean_norm"].run(long), 4):
        assert isinstance(result, np.ndarray) and np.array_equal(result, ref_emb)
    assert shared["st_bert_mean_norm"].truncated == 4 * 8   # each thread's cut texts counted once


def test_windowing_tokenizers_are_lent_not_made_anew_in_each_thread(builds, monkeypatch):
    """A span labeler's long contexts were windowed by a tokenizer each thread made for itself (a parse of
    tokenizer.json, a second for XLM-R's vocabulary) and kept: a thread-per-request server paid it on every request,
    and a pool of 32 threads held 32 copies (a tester). They are lent from a pool now: one made, however many threads
    come one after another, and the results are those of one thread."""
    import tokenizers

    made = []

    class Counting(_SlowTokenizer):
        @classmethod
        def from_str(cls, text):
            made.append(1)
            return super().from_str(text)

    context = "the cat sat on the mat . the dog ran fast on the road ."
    questions = [("what is the cat ?", context), ("where did the dog run ?", context)]
    qa = bertc.Runtime(builds["bert_qa"], artifact="onnx", threads=1)
    want = qa.run(questions)
    monkeypatch.setattr(Counting, "real", tokenizers.Tokenizer)
    monkeypatch.setattr(tokenizers, "Tokenizer", Counting)
    fresh = bertc.Runtime(builds["bert_qa"], artifact="onnx", threads=1)
    fresh.engine   # its own tokenizer made first
    made.clear()
    for _ in range(20):   # a thread per request, one after another
        result = []
        worker = threading.Thread(target=lambda: result.append(fresh.run(questions)))
        worker.start()
        worker.join()
        assert result == [want]
    assert len(made) == 1 and len(fresh.engine._windowing) == 1
    assert _in_threads(lambda k: fresh.run(questions), 4) == [want] * 4
    assert len(made) <= 4 and len(fresh.engine._windowing) == len(made)   # one a call running at once, at most


# --- an input that pauses -------------------------------------------------------------------------------

def test_an_input_that_pauses_has_what_came_so_far_run(builds):
    """`tail -f log | bertc run OUT - -o -` gave no result until 2,048 lines had come, or the input ended (a tester):
    with a stall, the window read so far is given once the input pauses; a reading error is raised as it came."""
    from bertc.engine import windows
    from bertc.run_io import Record

    taken = threading.Event()

    def paused():
        yield Record("one", None, "line 1")
        yield Record("two", None, "line 2")
        assert taken.wait(30), "the first lines were never run while the input paused"
        yield Record("three", None, "line 3")

    got = []
    for window in windows(paused(), 2048, stall=0.05):
        got.append([r.text for r in window])
        taken.set()
    assert got == [["one", "two"], ["three"]]

    def failing():
        yield Record("one", None, "line 1")
        raise InputError("in.jsonl: line 2: not JSON")

    with pytest.raises(InputError, match="line 2: not JSON"):
        list(windows(failing(), 2048, stall=30))
    assert [len(w) for w in windows((Record(str(i), None, "") for i in range(5)), 2, stall=30)] == [2, 2, 1]


def test_a_trickling_input_has_each_record_run_within_the_stall(builds):
    """A reviewer: the stall was a gap between two records, so a log growing by a line every 0.1 s gave nothing for
    2,048 lines: a window is given once its first record has waited the stall."""
    from bertc.engine import windows
    from bertc.run_io import Record

    def trickle():
        for i in range(40):
            time.sleep(0.05)
            yield Record(str(i), None, f"line {i + 1}")

    start, firsts = time.monotonic(), []
    for window in windows(trickle(), 2048, stall=0.2):
        firsts.append(time.monotonic() - start)
    assert len(firsts) > 3 and firsts[0] < 1.0   # not one window at the input's end (2 s)


def test_a_run_that_stops_early_closes_its_input_and_leaves_no_reader(builds):
    """A reviewer: the reading thread of a stopped run (an error, Ctrl-C) stayed for the process's life, holding
    the input open (a pipe's writer never saw it closed) and reading records no one would run."""
    from bertc.engine import windows
    from bertc.run_io import Record

    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                i += 1
                yield Record(str(i), None, f"line {i}")
        finally:
            closed.set()

    read = windows(endless(), 4, stall=5)
    assert len(next(read)) == 4
    read.close()   # the run stops
    assert closed.wait(10)
    deadline = time.monotonic() + 10
    while any(t.name == "bertc-input" and t.is_alive() for t in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_file_result_from_a_pipe_is_read_in_whole_windows(builds, tmp_path):
    """A reviewer: the stall applied to any input that is no regular file, a file result too (renamed into place at
    the end: nothing to gain): a Parquet result's kept columns were typed from whatever came before the first pause,
    and an int then a float in them failed the run."""
    import pyarrow.parquet as pq

    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)

    def produce():
        with open(fifo, "w") as f:
            f.write('{"text": "a cat", "n": 1}\n')
            f.flush()
            time.sleep(1.0)
            f.write('{"text": "a dog", "n": 2.5}\n')

    producer = threading.Thread(target=produce)
    producer.start()
    runtime = bertc.Runtime(builds["bert_seq_cls"], artifact="onnx")
    assert runtime.run_file(fifo, tmp_path / "r.parquet", keep_fields="n") == 2
    producer.join()
    assert pq.read_table(tmp_path / "r.parquet").column("n").to_pylist() == [1.0, 2.5]


def test_bertc_run_on_a_pipe_writes_each_line_s_result_while_the_input_is_open(builds):
    import subprocess

    out = builds["bert_seq_cls"]
    want = bertc.Runtime(out, artifact="onnx").run(["a cat sat"])[0]
    run = subprocess.Popen([sys.executable, "-m", "bertc", "run", str(out), "-", "-o", "-", "--artifact", "onnx"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        run.stdin.write(b"a cat sat\n")
        run.stdin.flush()
        line = []
        reader = threading.Thread(target=lambda: line.append(run.stdout.readline()), daemon=True)
        reader.start()
        reader.join(120)   # the input is still open
        assert line and json.loads(line[0])["scores"] == want["scores"]
    finally:
        run.stdin.close()
        run.wait(60)
    assert run.returncode == 0, run.stderr.read()


def test_a_window_below_the_batch_size_is_kept(builds):
    """`--window 8` read 32 texts at a time (the window was raised to the batch size without a word)."""
    runtime = bertc.Runtime(builds["bert_seq_cls"], artifact="onnx", window=1)
    assert runtime.window == 1 and len(list(runtime.iter_results(["a", "b c", "d"]))) == 3


# --- the model file: held open, not in memory; closing --------------------------------------------------

def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_runtime_keeps_no_copy_of_the_model_in_memory_and_runs_the_build_it_read(builds, tmp_path):
    """A Runtime read the model into memory and opened ONNX Runtime's session from those bytes, which the session
    keeps as long as it lives: twice the model's size resident (a tester: +87 MB a Runtime of a 43 MB model, +43 MB
    a session opened from the file). The session is opened from the file now, the bytes dropped once checked
    against the manifest; a build swapped in at OUT (`bertc build --force`) before the first run still leaves this
    Runtime running the build it read (the file it holds open), and sending it to another process sends that one."""
    import pickle

    out = _copy(builds["bert_seq_cls"], tmp_path)
    texts = ["a cat sat", "the dog ran fast"]
    first = bertc.Runtime(out, artifact="onnx")
    want = first.run(texts)
    assert first.parts.model == b"" and first.engine.parts.model == b""
    assert first.engine.parts.model_path == str(out / "model.onnx")
    held = bertc.Runtime(out, artifact="onnx")
    other = tmp_path / "other.onnx"   # another model in the file's place, as a rebuild's rename puts it
    shutil.copy(out / "model.optimized.onnx", other)
    os.replace(other, out / "model.onnx")
    assert held.run(texts) == want and held.engine.parts.model != b""   # the bytes of the file it checked
    assert pickle.loads(pickle.dumps(first)).run(texts) == want


def test_a_touched_model_file_or_one_the_process_can_no_longer_open_still_runs(builds, tmp_path, monkeypatch):
    """A reviewer: a model file only touched (its bytes the same) was refused as changed, and a process that could no
    longer open the path (privileges dropped after the Runtime was made) failed at its first run: the file is held
    open, and its bytes, checked again, serve."""
    import bertc.runtime as runtime_code

    out = _copy(builds["bert_seq_cls"], tmp_path)
    want = bertc.Runtime(out, artifact="onnx").run(["a cat sat"])
    touched = bertc.Runtime(out, artifact="onnx")
    os.utime(out / "model.onnx", (1, 1))
    assert touched.run(["a cat sat"]) == want
    barred = bertc.Runtime(out, artifact="onnx")
    real = runtime_code.Engine

    def no_path(parts, *args):
        if not parts.model:
            raise BackendLoadError("model.onnx: cannot be loaded by ONNX Runtime: Permission denied")
        return real(parts, *args)

    monkeypatch.setattr(runtime_code, "Engine", no_path)
    assert barred.run(["a cat sat"]) == want and barred.engine.parts.model != b""


def test_a_model_file_changed_in_place_after_the_runtime_checked_it_is_refused(builds, tmp_path):
    import pickle

    out = _copy(builds["bert_seq_cls"], tmp_path)
    runtime = bertc.Runtime(out, artifact="onnx")
    with open(out / "model.onnx", "ab") as f:   # the file the Runtime holds, written to
        f.write(b"\0")
    for act in (lambda: runtime.run(["a cat"]), lambda: pickle.dumps(runtime)):
        with pytest.raises(BackendLoadError, match=re.escape(f"{out / 'model.onnx'}: changed in place since this "
                                                             f"Runtime checked it against the build's manifest")):
            act()


def test_close_releases_the_session_and_the_model_file(builds):
    """Runtime had no close() nor context manager: a service swapping builds could release the old one's session,
    threads and memory only by dropping every reference to it (a tester)."""
    before = _fds()
    with bertc.Runtime(builds["bert_seq_cls"], artifact="onnx") as runtime:
        want = runtime.run(["a cat sat"])
        assert _fds() > before
    assert _fds() == before and runtime._engine is None
    with pytest.raises(InputError, match=re.escape("this Runtime was closed (Runtime.close()): create it again")):
        runtime.run(["a cat sat"])
    runtime.close()   # again: nothing more to release
    assert bertc.Runtime(builds["bert_seq_cls"], artifact="onnx").run(["a cat sat"]) == want


# --- a damaged build: its bundled files ------------------------------------------------------------------

def _copy(out: Path, tmp_path: Path, name: str = "out") -> Path:
    copy = tmp_path / name
    shutil.copytree(out, copy)
    return copy


@pytest.mark.parametrize("build, name", [("bert_seq_cls", "checkpoint_config.json"),
                                         ("st_bert_mean_norm", "config_sentence_transformers.json"),
                                         ("st_bert_mean_norm", "sentence_bert_config.json"),
                                         ("bert_seq_cls", "tokenizer_config.json")])
def test_a_bundled_config_that_cannot_be_read_is_a_damaged_build(builds, tmp_path, capsys, build, name):
    """A config file in OUT that is there but is not JSON (a truncated copy) is refused naming it, as a damaged
    report.json is (exit 5): it was skipped, and the run went on without the class names, the problem type, the
    prompt or the lowercasing it says, exit 0 (or read the trained weights' folder instead)."""
    out = _copy(builds[build], tmp_path)
    path = out / name
    path.write_text(path.read_text()[:20])
    with pytest.raises(InputError, match=re.escape(f"{out}: not a readable bertc build ({path}: ")):
        bertc.Runtime(out)
    (tmp_path / "in.txt").write_text("the cat\n")
    result = tmp_path / "r.jsonl"
    assert main(["run", str(out), str(tmp_path / "in.txt"), "-o", str(result)]) == EXIT_OUTPUT   # as parity and bench
    err = capsys.readouterr().err
    assert f"error: {out}: not a readable bertc build ({path}: " in err and "Traceback" not in err
    assert not result.exists()
    path.write_text("[1, 2]")   # JSON, not an object
    with pytest.raises(InputError, match=re.escape(f"({path}: not a JSON object, but list)")):
        bertc.Runtime(out)


def test_the_builds_own_checkpoint_config_wins_over_the_weights_folder(builds, tmp_path, capsys):
    """OUT's checkpoint_config.json is what run reads: the config beside the trained weights (report.json's
    weights.source) only for a build that bundled none. Before, a bundled config without class names let the
    weights folder's (edited since the build) name them; a bundled config deleted from OUT let it too: now a
    damaged build."""
    out = _copy(builds["bert_seq_cls"], tmp_path)
    source = tmp_path / "weights"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"id2label": {"0": "x", "1": "y", "2": "z"},
                                                    "problem_type": "multi_label_classification"}))
    report = json.loads((out / "report.json").read_text())
    report["weights"]["source"] = str(source)
    (out / "report.json").write_text(json.dumps(report))
    bundled = out / "checkpoint_config.json"
    config = json.loads(bundled.read_text())
    del config["id2label"], config["label2id"]
    bundled.write_text(json.dumps(config))
    rt = bertc.Runtime(out, artifact="onnx")
    assert rt.run(["the cat"])[0]["label"].startswith("LABEL_") and rt.scores == "softmax"
    bundled.unlink()
    with pytest.raises(InputError, match=re.escape(f"({bundled}, which the build bundled, is missing)")):
        bertc.Runtime(out)
    # a build that bundled none (an older one) reads the weights folder's
    del report["weights"]["bundled_config"]
    (out / "report.json").write_text(json.dumps(report))
    rt = bertc.Runtime(out, artifact="onnx")
    assert rt.run(["the cat"])[0]["label"] in ("x", "y", "z") and rt.scores == "sigmoid"
    # and says so: what such a build gives changes with that folder (found by a tester), never silently
    assert rt.legacy_config.startswith("this build, from an earlier bertc, bundles no checkpoint config: config.json")
    assert f"read from {source} as it is now" in rt.legacy_config
    (tmp_path / "in.txt").write_text("the cat\n")
    assert main(["run", str(out), str(tmp_path / "in.txt"), "-o", str(tmp_path / "r.jsonl"), "--artifact", "onnx"]) == 0
    assert f"note: {rt.legacy_config}" in capsys.readouterr().err
    for name in ("config.json", "config_sentence_transformers.json"):
        (source / name).unlink(missing_ok=True)
    rt = bertc.Runtime(out, artifact="onnx")
    assert rt.run(["the cat"])[0]["label"].startswith("LABEL_")
    assert f"and {source} holds none now: class names LABEL_i" in rt.legacy_config
    assert bertc.Runtime(builds["bert_seq_cls"]).legacy_config is None


def test_a_config_the_build_did_not_bundle_is_not_read_beside_the_weights(builds, tmp_path):
    """A build that bundled its checkpoint's config.json but had no config_sentence_transformers.json to bundle read
    one that appeared beside the trained weights later (report.json's weights.source): the same OUT scored a pair
    with raw logits, then with their sigmoid, then raw again once moved. What the build did not bundle is absent."""
    out = _copy(builds["bert_seq_cls"], tmp_path)
    source = tmp_path / "weights"
    source.mkdir()
    (source / "config_sentence_transformers.json").write_text(json.dumps(
        {"activation_fn": "torch.nn.modules.activation.Sigmoid", "prompts": {"query": "query: "},
         "default_prompt_name": "query", "similarity_fn_name": "dot"}))
    report = json.loads((out / "report.json").read_text())
    assert report["weights"]["bundled_config"] == ["checkpoint_config.json"]
    report["weights"]["source"] = str(source)
    (out / "report.json").write_text(json.dumps(report))
    want = bertc.Runtime(builds["bert_seq_cls"], artifact="onnx")
    rt = bertc.Runtime(out, artifact="onnx")
    assert (rt.scores, rt.scores_why) == (want.scores, want.scores_why) and rt.scores != "sigmoid"
    assert rt.run(["the cat"]) == want.run(["the cat"])
    # a build whose checkpoint had nothing to bundle records so too, and reads nothing beside the weights either
    (out / "checkpoint_config.json").unlink()
    report["weights"]["bundled_config"] = []
    (out / "report.json").write_text(json.dumps(report))
    assert bertc.Runtime(out, artifact="onnx").scores != "sigmoid"


@pytest.mark.parametrize("damage", ["{", "{}", "truncated"])
def test_a_damaged_tokenizer_json_is_named(builds, tmp_path, capsys, damage):
    """A tokenizer.json in OUT that the tokenizers library cannot read (cut short, not JSON, not a tokenizer) is a
    damaged build named as such, exit 5; it was "internal error (a bug in bertc ...): Exception: EOF while parsing",
    exit 70."""
    out = _copy(builds["st_bert_mean_norm"], tmp_path)
    path = out / "tokenizer.json"
    path.write_text(path.read_text()[:500] if damage == "truncated" else damage)
    with pytest.raises(InputError, match=re.escape(f"{out}: not a readable bertc build (its tokenizer, {path}: ")):
        bertc.Runtime(out)
    (tmp_path / "in.txt").write_text("the cat\n")
    assert main(["run", str(out), str(tmp_path / "in.txt"), "-o", str(tmp_path / "r.npy")]) == EXIT_OUTPUT
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: not a readable bertc build (its tokenizer, {path}: ") and \
        "internal error" not in err and "Traceback" not in err


# --- Runtime's arguments ---------------------------------------------------------------------------------

def test_runtime_arguments_the_cli_would_refuse_are_named(builds, tmp_path):
    """What bertc run refuses, Runtime refuses, naming the argument and its value: a device other than auto, cpu or
    cuda (gpu and None ran on the CPU), a yes / no that is not a bool (truncate="no" truncated), a prompt that is not
    a string (a TypeError at run time), a build directory that is not a path (Python's TypeError)."""
    emb, cls = builds["st_bert_mean_norm"], builds["bert_seq_cls"]
    for out, kwargs, message in (
            (emb, {"device": "gpu"}, "device 'gpu': use one of auto, cpu, cuda"),
            (emb, {"device": None}, "device None: use one of auto, cpu, cuda"),
            (emb, {"device": "CPU"}, "device 'CPU': use one of auto, cpu, cuda"),
            (cls, {"truncate": "no"}, "truncate 'no': True, False or None, not str"),
            (cls, {"truncate": 1}, "truncate 1: True, False or None, not int"),
            (emb, {"spinning": "no"}, "spinning 'no': True or False, not str"),
            (cls, {"multi_label": "yes", "candidate_labels": ["a", "b"]}, "multi_label 'yes': True or False, not str"),
            (emb, {"similarity": None}, "similarity None: True or False, not None"),
            (emb, {"rank": 0}, "rank 0: True or False, not int"),
            (builds["bert_qa"], {"allow_no_answer": "false"}, "allow_no_answer 'false': True or False, not str"),
            (emb, {"prompt": 5}, "prompt 5: a string, not int"),
            (emb, {"prompt_name": b"query"}, "prompt_name b'query': a string, not bytes"),
            (emb, {"pair_prompt": 1.5, "similarity": True}, "pair_prompt 1.5: a string, not float"),
            (cls, {"candidate_labels": 5}, "candidate_labels 5: a list of labels"),
            (cls, {"hypothesis_template": 3, "candidate_labels": "a,b"}, "hypothesis_template 3: a string, not int"),
            (emb, {"artifact": 0}, "artifact 0: a string, not int"),
            (None, {}, "out None: the build directory's path (a string or a pathlib.Path), not None"),
            (5, {}, "out 5: the build directory's path (a string or a pathlib.Path), not int")):
        with pytest.raises(InputError, match=re.escape(message)):
            bertc.Runtime(out, **kwargs)
    # what they take: the CLI's values, numpy bools, a path-like artifact
    assert bertc.Runtime(str(cls), device="cpu", truncate=np.bool_(True), spinning=False,
                         artifact=Path("model.onnx")).run(["the cat " * 20])[0]["label"]


# --- texts in a container without an order; a missing artifact ------------------------------------------

def test_texts_in_a_mapping_or_a_set_are_refused_naming_its_type(builds):
    """run() gives results in the texts' order: a dict (whose keys were embedded as the texts) and a set (no order)
    are refused naming the type; ordered iterables still run."""
    rt = bertc.Runtime(builds["st_bert_mean_norm"], artifact="onnx")
    texts = {"a": "the cat", "b": "a dog"}
    for given, message in ((texts, "not dict, whose keys it would read as the texts"),
                           ({"the cat"}, "not set: results come in the texts' order, which a set has not"),
                           (frozenset({"the cat"}), "not frozenset")):
        with pytest.raises(InputError, match=re.escape(message)):
            rt.run(given)
    ref = rt.run(["the cat", "a dog"])
    for given in (("the cat", "a dog"), texts.values(), (t for t in ["the cat", "a dog"])):
        assert np.array_equal(rt.run(given), ref)


def test_iter_results_takes_what_run_takes_window_by_window(builds):
    """A tester: the public iter_results took bertc's internal records only (texts: AttributeError 'str' object has
    no attribute 'pair'). It takes texts, checked as run() checks them, and yields each window as run() gives it."""
    emb = bertc.Runtime(builds["st_bert_mean_norm"], artifact="onnx", window=2, batch_size=2)
    texts = ["the cat", "a dog", "the mat", "a bird", "the end"]
    windows = list(emb.iter_results(t for t in texts))
    assert [w.shape[0] for w in windows] == [2, 2, 1] and all(isinstance(w, np.ndarray) for w in windows)
    assert np.array_equal(np.concatenate(windows), emb.run(texts))
    cls = bertc.Runtime(builds["bert_seq_cls"], artifact="onnx", window=4, batch_size=4)
    assert [r for w in cls.iter_results(texts) for r in w] == cls.run(texts)
    with pytest.raises(InputError, match=r"Runtime.iter_results takes a list of texts; for one text pass \[text\]"):
        cls.iter_results("the cat")   # at the call, not at the first next()
    seen = []
    assert sum(len(w) for w in cls.iter_results(texts, progress=seen.append)) == 5 and seen == [4, 1]
    with pytest.raises(InputError, match=r"not ndarray of no dimension \(one value\): pass \[str\(value\)\]"):
        cls.run(np.array("the cat"))
    with pytest.raises(InputError, match="text 2: expected a string"):
        list(cls.iter_results(["the cat", 5]))


def test_arrays_whose_items_are_not_texts_are_refused_saying_what_to_pass(builds):
    """A tester: a pyarrow array ('got StringScalar') and a 2-D numpy array of pairs ('got ndarray') were refused
    without a word of what to pass instead."""
    import pyarrow as pa

    cls = bertc.Runtime(builds["bert_seq_cls"], artifact="onnx", truncate=True)
    for given in (pa.array(["a cat", "the dog"]), pa.chunked_array([["a cat"], ["the dog"]])):
        with pytest.raises(InputError, match=r"whose items are pyarrow scalars: pass texts.to_pylist\(\)"):
            cls.run(given)
    assert cls.run(pa.array(["a cat", "the dog"]).to_pylist()) == cls.run(["a cat", "the dog"])
    pairs = np.array([["a cat", "the dog"], ["a bird", "the mat"]])
    with pytest.raises(InputError, match=r"not a 2-D ndarray: for pairs pass \[tuple\(row\) for row in array\]"):
        cls.run(pairs)
    assert cls.run([tuple(row) for row in pairs]) == cls.run([("a cat", "the dog"), ("a bird", "the mat")])
    assert cls.run(np.array(["a cat", "the dog"])) == cls.run(["a cat", "the dog"])   # 1-D: texts


def test_an_empty_path_is_refused_as_empty(builds, tmp_path, capsys, monkeypatch):
    """A tester: bertc run '' (an unset "$OUT") was an internal error (exit 70), Runtime('') a bare ValueError; an
    empty INPUT or RESULT was named "."; bertc build -o '' aimed at the working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("a dog\n")
    out = str(builds["bert_seq_cls"])
    for argv, name in ((["run", "", "in.txt", "-o", "r.jsonl"], "'OUT'"), (["run", out, "", "-o", "r.jsonl"], "'INPUT'"),
                       (["run", out, "in.txt", "-o", ""], "'-o' / '--output'"),
                       (["build", "spec.json", "-o", ""], "'-o' / '--out'"), (["import", "", "-o", "s.json"], "'SOURCE'"),
                       (["validate", ""], "'SPECS...'")):
        assert main(argv) == EXIT_BAD_SPEC, argv
        err = capsys.readouterr().err
        assert f"Invalid value for {name}: the path is empty (an unset shell variable?)" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]
    with pytest.raises(InputError, match="the build directory's path is empty"):
        bertc.Runtime("")
    # "." and "/" are no build either: named as such (a ValueError from the failed-build lookup, exit 70, before)
    for path in (".", "/"):
        with pytest.raises(InputError, match=rf"^{re.escape(path)}: not a bertc build directory \(no report.json"):
            bertc.Runtime(path)
        assert main(["run", path, "in.txt", "-o", "r.jsonl"]) == EXIT_OUTPUT
    capsys.readouterr()


def test_a_directory_at_result_is_named_as_one_not_told_to_force(builds, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("a dog\n")
    (tmp_path / "r.jsonl").mkdir()
    for force in ([], ["--force"]):
        assert main(["run", str(builds["bert_seq_cls"]), str(tmp_path / "in.txt"), "-o", str(tmp_path / "r.jsonl"),
                     "-q", *force]) == 5
        assert capsys.readouterr().err == f"error: {tmp_path / 'r.jsonl'} is a directory; the result is a file\n"


def test_a_missing_artifact_file_names_one_that_is_there(builds, tmp_path, capsys):
    """The artifact picked (or asked for) whose file is gone: exit 5, naming another artifact of the build whose
    file is there, as --artifact (before: only that the file was missing)."""
    out = _copy(builds["st_bert_mean_norm"], tmp_path)
    picked = bertc.Runtime(out).choice
    (out / picked.path).unlink()
    from bertc.errors import EXIT_OUTPUT, BackendLoadError

    with pytest.raises(BackendLoadError, match=re.escape(f"{picked.path}: listed in report.json but cannot be read")) \
            as caught:
        bertc.Runtime(out)
    other = re.search(r"run another of its artifacts that is there: artifact='(\w+)' \(([\w.]+)\)", str(caught.value))
    assert other and other[1] != picked.artifact and (out / other[2]).is_file(), str(caught.value)
    assert bertc.Runtime(out, artifact=other[1]).run(["the cat"]).shape[0] == 1
    (tmp_path / "in.txt").write_text("the cat\n")
    assert main(["run", str(out), str(tmp_path / "in.txt"), "-o", str(tmp_path / "r.npy"), "--artifact",
                 picked.artifact]) == EXIT_OUTPUT
    assert f"--artifact {other[1]} ({other[2]}" in capsys.readouterr().err
    for path in out.glob("*.onnx"):
        path.unlink()
    with pytest.raises(BackendLoadError, match="no other ONNX artifact of this build that can run here is there"):
        bertc.Runtime(out)


# --- one very long line ------------------------------------------------------------------------------------

class _SeenTokenizer(_SlowTokenizer):
    """A tokenizers.Tokenizer that refuses a text longer than ``single`` characters, or a pair with a text longer than
    ``pair`` (whose truncation's overflow grows as the product of the two lengths: two 200,000-character texts took
    9.6 GB), and records the longest text it was given."""

    longest, single, pair = 0, 250_000, 20_000

    @classmethod
    def _saw(cls, inputs):
        for x in inputs:
            texts = [x] if isinstance(x, str) else list(x)
            cls.longest = max([cls.longest, *map(len, texts)])
            assert max(map(len, texts)) <= (cls.single if len(texts) == 1 else cls.pair), \
                f"tokenized whole: {[len(t) for t in texts]} characters"

    def encode(self, *args, **kwargs):
        self._saw([tuple(a for a in args if isinstance(a, str))])
        return self._tok.encode(*args, **kwargs)

    def encode_batch(self, inputs, *args, **kwargs):
        self._saw(inputs)
        return self._tok.encode_batch(inputs, *args, **kwargs)


def test_a_very_long_line_is_tokenized_from_a_prefix_that_keeps_the_same_tokens(builds, monkeypatch):
    """A line truncation cuts to the model's 16 tokens is tokenized from a prefix of it, never whole (a 50 MB line
    took 5.2 GB and 85 s, all of it to keep 16 tokens): the embedding, a pair's classification and the count of
    cut texts are what the same text gives when short enough to be tokenized whole; refused just as fast."""
    import tokenizers

    words = "the cat sat on the mat "
    long, short = words * 100_000, words * 200   # 2.3 MB; 4,600 characters, tokenized whole
    emb = bertc.Runtime(builds["st_bert_mean_norm"], artifact="onnx")
    cls = bertc.Runtime(builds["bert_seq_cls"], artifact="onnx", truncate=True)
    refuse = bertc.Runtime(builds["bert_seq_cls"], artifact="onnx", truncate=False)
    monkeypatch.setattr(_SeenTokenizer, "real", tokenizers.Tokenizer)
    monkeypatch.setattr(tokenizers, "Tokenizer", _SeenTokenizer)
    ref = emb.run([short, "the cat"])
    assert _SeenTokenizer.longest == len(short)
    assert np.array_equal(emb.run([long, "the cat"]), ref) and emb.truncated == 2
    pairs = [("the cat", long), (long, "a dog"), (long[:200_000], long[:200_000] + "a dog")]
    got = cls.run(pairs)
    assert got == cls.run([("the cat", short), (short, "a dog"), (short, short + "a dog")])
    assert cls.truncated == 6
    with pytest.raises(InputError, match="text 2: the text is longer than the model's maximum of 16 tokens"):
        refuse.run(["the cat", long])
    # the 2.3 MB line was never tokenized whole (the last pair's two 200,000-character texts were counted alone, to
    # know which one truncation cuts more)
    assert _SeenTokenizer.longest == 200_005


TOKENIZERS = ("bert_model", "roberta_model", "deberta_v3_model", "xlmr_model")


def _content(e, sequence: int, keep=None) -> list:
    at = [t for t, s in enumerate(e.sequence_ids) if s == sequence]
    return [(e.ids[t], tuple(e.offsets[t]), e.type_ids[t], e.word_ids[t]) for t in at[:keep]]


@pytest.mark.parametrize("fixture", TOKENIZERS)
def test_a_long_texts_prefix_keeps_exactly_the_tokens_of_the_whole(monkeypatch, fixture):
    """Engine._shortened on the fixtures' tokenizers (WordPiece, byte-level BPE, SentencePiece Unigram), with its
    thresholds lowered to a few hundred characters: every text and pair gives the tokens (ids, offsets, type and
    word ids) and the overflow that the whole gives; a pair as truncation longest first cuts it (each text's share
    only depends on which is the longer: checked against the tokenizer on pairs short enough to encode whole), one
    of them both texts long at an odd and an even room."""
    import random

    rng = random.Random(fixture)
    vocabulary = "the cat sat on a mat dog ran fast , . ! big red car naïve 东京 12 34 x-y don't".split()

    def text(n):
        out = ""
        while len(out) < n:
            out += rng.choice(vocabulary) + rng.choice([" ", " ", "  ", "\n", "\t"])
        return out

    assert _shortened_as_whole(monkeypatch, fixture, text, rng) >= 20


@pytest.mark.parametrize("fixture", TOKENIZERS)
def test_a_long_text_without_spaces_is_cut_too_and_keeps_the_tokens_of_the_whole(monkeypatch, fixture):
    """A QA report: a pair of two long texts without ASCII spaces (Chinese) was tokenized whole, with the product of
    both texts' truncation windows (3.3 GB for 19,000 characters each, then killed); a 6 MB line of it took 1 GB.
    Such texts are cut between characters (words of Chinese, Thai, Latin letters, combining accents, emoji run
    together) and still give the tokens and the overflow of the whole."""
    import random

    rng = random.Random(fixture + "nospace")
    # "a" + "s" * 150 between commas: a WordPiece word past its 100 characters is one [UNK], and a piece of it cut
    # off would be word pieces (the review of the first version of the cut caught it keeping other tokens)
    vocabulary = ["东京", "大学", "的", "猫", "ภาษาไทย", "naïve", "cafe\u0301", "数据", "🙂", "x", "，", "。", "12",
                  ",a" + "s" * 150 + ","]

    def text(n):
        out = ""
        while len(out) < n:
            out += rng.choice(vocabulary)
        return out

    assert _shortened_as_whole(monkeypatch, fixture, text, rng) >= 20


def _shortened_as_whole(monkeypatch, fixture, text, rng) -> int:
    """How many of Engine._shortened's texts and pairs of ``text(n)`` characters were cut, each checked to give the
    tokens of the whole (see the tests above)."""
    import types

    import tokenizers

    from bertc import engine as engine_code

    monkeypatch.setattr(engine_code, "LONG_TEXT_CHARS", 400)
    monkeypatch.setattr(engine_code, "LONG_TEXT_CHARS_PER_TOKEN", 4)
    monkeypatch.setattr(engine_code, "COUNT_CHARS", 700)
    monkeypatch.setattr(engine_code, "PREFIX_CHARS", 200)
    source = (Path(__file__).resolve().parent / "fixtures" / "hf" / fixture / "tokenizer.json").read_text()
    cut = 0
    for max_len in (24, 25):
        for kind in ("single", "pair", "zero_shot"):
            engine = engine_code.Engine.__new__(engine_code.Engine)
            engine.parts = types.SimpleNamespace(max_len=max_len, kind=kind, tokenizer_json=source)
            engine._local, engine._plain_tokenizer, engine._windowing = threading.local(), None, []
            engine.tokenizer = tokenizers.Tokenizer.from_str(source)
            engine.tokenizer.enable_truncation(max_len, strategy="only_first" if kind == "zero_shot" else "longest_first")
            room = max_len - engine.tokenizer.num_special_tokens_to_add(kind != "single")
            cases = {"single": lambda: text(rng.choice([600, 1500, 3000])),
                     "zero_shot": lambda: (text(rng.choice([600, 3000])), "sports"),
                     "pair": lambda: rng.choice([(text(2500), text(40)), (text(40), text(2500)), (text(2500), text(300)),
                                                 (text(1500), text(2600)), (text(2600), text(1500)),
                                                 (text(60), text(50))])}[kind]
            for _ in range(8):
                x = cases()
                y = engine._shortened(x)
                cut += y != x
                got = engine.tokenizer.encode(*y) if isinstance(y, tuple) else engine.tokenizer.encode(y)
                if isinstance(x, str):
                    whole = engine.tokenizer.encode(x)
                    assert _content(got, 0) == _content(whole, 0) and got.ids == whole.ids
                    assert bool(got.overflowing) == bool(whole.overflowing)
                    continue
                plain = engine._plain().encode(*x)   # no truncation (a long pair's overflow grows as the product)
                n = [plain.sequence_ids.count(0), plain.sequence_ids.count(1)]
                if sum(n) <= room:
                    keep = n
                elif kind == "zero_shot":   # only_first
                    keep = [room - n[1], n[1]]
                else:   # longest first: the shorter text keeps up to half the room (the first one on a tie)
                    shorter = 0 if n[0] <= n[1] else 1
                    keep = [0, 0]
                    keep[shorter] = min(n[shorter], room // 2)
                    keep[1 - shorter] = room - keep[shorter]
                assert _content(got, 0) == _content(plain, 0, keep[0]) and \
                    _content(got, 1) == _content(plain, 1, keep[1]), (fixture, max_len, kind, [len(t) for t in x])
                assert bool(got.overflowing) == (sum(n) > room)
                if sum(len(t) for t in x) < 200:   # the rule above is the tokenizer's
                    assert got.ids == engine.tokenizer.encode(*x).ids
    return cut


@pytest.mark.parametrize("name", ["st_bert_mean_norm", "bert_seq_cls", "bert_qa"])
def test_a_max_length_below_the_special_tokens_is_refused(builds, name):
    """max_length 1 passed the check ("from 1 to the model's maximum"), but the tokenizers library ignores a
    truncation below its special tokens, so nothing was cut: a long text reached ONNX Runtime (exit 70, an index out
    of range), a short one ran uncut (exit 0, truncated 0) though 1 token was asked for."""
    runtime = bertc.Runtime(builds[name], max_length=1, truncate=True)
    text = "the cat sat on the mat " * 10
    with pytest.raises(InputError, match=r"^max_length 1: leaves no room for the text: the tokenizer adds 2 special "
                                         r"tokens to each row \(at least 3\)$"):
        runtime.run([("what sat ?", text)] if name == "bert_qa" else [text])
    assert len(bertc.Runtime(builds[name], max_length=3, truncate=True).run(["hi", text])) == 2 \
        if name != "bert_qa" else True


def test_a_row_the_tokenizer_did_not_cut_never_reaches_the_model(builds):
    """The tokenizers library ignores a truncation it cannot meet (a RoBERTa pair's 4 special tokens in 3): the row
    came out longer than max_length and reached ONNX Runtime; it is named instead (simulated: truncation off)."""
    runtime = bertc.Runtime(builds["bert_seq_cls"], max_length=5, truncate=True)
    runtime.engine.tokenizer.no_truncation()
    with pytest.raises(InputError, match=r"^text 1: cannot be cut to 5 tokens: the tokenizer adds 3 special tokens to "
                                         r"a pair \(max_length too small\)$"):
        runtime.run([("the cat sat on the mat", "a dog ran")])
    # a pair with room for its special tokens alone was cut to [CLS] [SEP] [SEP] and scored (the same for every row)
    with pytest.raises(InputError, match=r"^text 1: max_length 4 leaves no room for a pair's texts: the tokenizer adds "
                                         r"3 special tokens to a pair \(at least 5\)$"):
        bertc.Runtime(builds["bert_seq_cls"], max_length=4, truncate=True).run([("the cat sat", "a dog ran")])
    assert len(bertc.Runtime(builds["bert_seq_cls"], max_length=4, truncate=True).run(["the cat sat"])) == 1


def test_a_dataframe_is_refused_not_read_as_its_column_names(builds):
    """Runtime.run(df) iterated the DataFrame: its column names, one result for N rows (the embedding of "text"),
    exit 0; a dict is refused for the same reason. Its text column (a Series) is what to pass."""
    pandas = pytest.importorskip("pandas")
    runtime = bertc.Runtime(builds["st_bert_mean_norm"])
    frame = pandas.DataFrame({"text": ["a cat", "a dog", "a car"], "other": ["x", "y", "z"]})
    with pytest.raises(InputError, match=r"not DataFrame, whose column names it would read as the texts: pass its "
                                         r"text column, df\['text'\], or for pairs df\[\['text', 'other'\]\]"):
        runtime.run(frame)
    assert runtime.run(frame["text"]).shape[0] == 3


def test_a_build_replaced_while_a_runtime_reads_it_is_refused_not_mixed(builds, tmp_path, monkeypatch):
    """Runtime read report.json, the labels, the model and the tokenizer one file at a time: a `bertc build --force`
    swapping another build in meanwhile gave one build's scores under the other's labels (exit 0). A replaced build
    is now refused (create the Runtime again), and a link to a build (blue / green) is read through its target."""
    import bertc.runtime as runtime_module

    out, other = tmp_path / "out", tmp_path / "other"
    shutil.copytree(builds["bert_seq_cls"], out)
    shutil.copytree(builds["bert_seq_cls"], other)
    real = runtime_module.result_kind

    def swap_then(report, spec):   # the rebuild lands after report.json was read
        out.rename(tmp_path / "old")
        other.rename(out)
        return real(report, spec)

    monkeypatch.setattr(runtime_module, "result_kind", swap_then)
    with pytest.raises(InputError, match=r"replaced by another build while this Runtime read it .* create the "
                                         r"Runtime again"):
        bertc.Runtime(out)
    monkeypatch.setattr(runtime_module, "result_kind", real)
    assert bertc.Runtime(out).run(["a cat"])            # the new build, whole
    # OUT a mount point or the working directory: a build replaces its files one by one, the old ones held in
    # .bertc-replaced-*, and the directory stays: refused while that folder is there
    (out / ".bertc-replaced-abc123").mkdir()
    with pytest.raises(InputError, match=r"a build is replacing its files in place \(.bertc-replaced-abc123 holds"):
        bertc.Runtime(out)
    (out / ".bertc-replaced-abc123").rmdir()
    link = tmp_path / "current"
    link.symlink_to(out)
    runtime = bertc.Runtime(link)
    assert runtime.out == out.resolve()


def test_a_runtime_sent_to_another_process_is_the_same_build_there(builds, tmp_path):
    """pickle.dumps(Runtime) failed naming a lock or an ONNX Runtime session (spawn / forkserver pools, a
    ProcessPoolExecutor). It travels as what it read: the same build in the receiving process, whatever OUT holds."""
    import pickle
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    out = tmp_path / "out"
    shutil.copytree(builds["bert_seq_cls"], out)
    runtime = bertc.Runtime(out, truncate=True, scores="sigmoid")
    texts = ["a cat sat", "the dog ran fast"]
    want = runtime.run(texts)
    sent = pickle.dumps(runtime)
    shutil.rmtree(out)   # OUT gone (or rebuilt) before the copy is made: it never reads OUT
    copy = pickle.loads(sent)
    assert copy is not runtime and copy.run(texts) == want and copy.scores == "sigmoid"
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        assert pool.submit(runtime.run, texts).result(timeout=300) == want


def test_a_child_forked_while_another_thread_held_the_runtime_lock_runs(builds):
    """gunicorn --preload: a warm-up thread building the engine (holding the Runtime's lock) when the server
    forked left the lock held for ever in the child, which hung at its first run."""
    import os
    import signal

    runtime = bertc.Runtime(builds["st_bert_mean_norm"])
    want = runtime.run(["a request"])
    fresh = bertc.Runtime(builds["st_bert_mean_norm"])
    fresh._lock.acquire()   # as the warm-up thread holds it at the fork
    try:
        pid = os.fork()
        if pid == 0:   # pragma: no cover (the child)
            signal.alarm(60)
            code = 0 if np.array_equal(fresh.run(["a request"]), want) else 3
            os._exit(code)
    finally:
        fresh._lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_candidate_labels_that_are_not_strings_are_refused(builds):
    with pytest.raises(InputError, match=r"^candidate labels: each label is a string, not None \(None in "
                                         r"\['sports', None\]\)$"):
        bertc.Runtime(builds["bert_seq_cls"], candidate_labels=["sports", None])


def test_calibration_embeddings_as_rows_or_a_wrong_kind(builds):
    runtime = bertc.Runtime(builds["st_bert_mean_norm"])
    sample = runtime.run(["a cat", "a dog", "a car"])
    rows = bertc.Runtime(builds["st_bert_mean_norm"], embedding_precision="int8",
                         calibration_embeddings=sample.tolist())
    arrays = bertc.Runtime(builds["st_bert_mean_norm"], embedding_precision="int8", calibration_embeddings=sample)
    assert (rows.run(["a cat"]) == arrays.run(["a cat"])).all()
    with pytest.raises(InputError, match=r"^calibration embeddings: a \(rows, dim\) array of floats or a .npy file's "
                                         r"path, not dict$"):
        bertc.Runtime(builds["st_bert_mean_norm"], embedding_precision="int8", calibration_embeddings={"a": 1})


@pytest.mark.parametrize("fixture", TOKENIZERS)
def test_a_tagged_words_span_is_its_characters_without_the_space_before_it(fixture):
    """A QA report: with a DeBERTa-v3 (SentencePiece) tokenizer every tag after the first word began at the space
    before it (' Cats' 3..8, entity ' sat on'), its tokens' offsets covering the space they carry; WordPiece and BPE
    gave none. Every tokenizer's words are now their characters, ``text[start:end] == word``."""
    import types

    import tokenizers

    from bertc import engine as engine_code
    from bertc.run_io import Record

    tok = tokenizers.Tokenizer.from_file(str(Path(__file__).resolve().parent / "fixtures" / "hf" / fixture /
                                             "tokenizer.json"))
    text = "The Cats  sat on\tthe MATS 東京 ok"
    e = tok.encode(text)
    engine = engine_code.Engine.__new__(engine_code.Engine)
    engine.parts = types.SimpleNamespace(aggregation="first", labels=["O", "B-X", "I-X"])
    logits = np.tile(np.array([0.0, 0.0, 1.0], np.float32), (len(e.ids), 1))   # every word I-X: one entity
    tags = [tag for _, tag in engine._tags(logits, e, Record(text, None, "line 1"))]
    assert [t["word"] for t in tags if t["word"].strip()] and all(
        t["word"] == text[t["start"]:t["end"]] and t["word"] == t["word"].strip() for t in tags), tags
    assert [t["word"] for t in tags][:3] == ["The", "Cats", "sat"], tags
    entities = engine._tag_result([((0, k), t) for k, t in enumerate(tags)], 3, Record(text, None, "line 1"))["entities"]
    assert entities[0]["text"] == entities[0]["text"].strip() and entities[0]["start"] == 0


def test_a_long_text_is_never_cut_inside_a_word_wordpiece_reads_as_one_unknown(monkeypatch):
    """The review of the first cut without spaces: words of 230 letters joined by commas were cut inside a word,
    whose cut-off piece (under WordPiece's 100 characters a word) became word pieces where the whole word is one
    [UNK]: other tokens kept than the whole text's (an embedding off by 0.037). Cut after a comma, they are the same."""
    import threading
    import types

    import tokenizers

    from bertc import engine as engine_code

    monkeypatch.setattr(engine_code, "LONG_TEXT_CHARS", 400)
    monkeypatch.setattr(engine_code, "LONG_TEXT_CHARS_PER_TOKEN", 4)
    monkeypatch.setattr(engine_code, "PREFIX_CHARS", 200)
    source = (Path(__file__).resolve().parent / "fixtures" / "hf" / "bert_model" / "tokenizer.json").read_text()
    engine = engine_code.Engine.__new__(engine_code.Engine)
    engine.parts = types.SimpleNamespace(max_len=16, kind="single", tokenizer_json=source)
    engine._local, engine._plain_tokenizer, engine._windowing = threading.local(), None, []
    engine.tokenizer = tokenizers.Tokenizer.from_str(source)
    engine.tokenizer.enable_truncation(16)
    for word in ("a" + "s" * 229, "q" * 150):
        text = ",".join([word] * 90)
        cut = engine._shortened(text)
        assert len(cut) < len(text) and cut.endswith(","), len(cut)
        assert engine.tokenizer.encode(cut).ids == engine.tokenizer.encode(text).ids
    # a control character (a form feed between pdftotext's pages, \x0b, \x01, DEL) is deleted by BERT's normalizer:
    # the word around it is one word of 161 characters, one [UNK] (the second review: cut there, 0.0425 off)
    for control in "\x0c\x0b\x01\x7f":
        text = "b" * 150 + "," + "a" + "s" * 59 + control + "s" * 100 + ",cat" * 400
        assert engine.tokenizer.encode(engine._shortened(text)).ids == engine.tokenizer.encode(text).ids, repr(control)


def test_a_long_text_is_never_cut_inside_a_run_of_one_character(monkeypatch):
    """A tester: "!" * 16,385 (or a title, a line of 3,000 "!" and prose) on an XLM-R build whose tokenizer is a
    SentencePiece Unigram model got other ids than transformers at the start of the text ([0, 4, 62 ..] for
    [0, 161, 275, 62 ..]): the prefix was cut inside the run, and a Unigram model segments a run as a whole, by its
    length. A run of one character is now cut at its end, or the text read whole."""
    import types

    import tokenizers
    from tokenizers import models, pre_tokenizers, processors

    from bertc import engine as engine_code

    vocab = [("<s>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0), ("!", -2.0), ("!!", -3.5), ("!!!", -5.2),
             ("x", -2.0), ("a", -2.0), ("b", -2.0)]
    tok = tokenizers.Tokenizer(models.Unigram(vocab, 2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 1)])
    assert tok.encode("x " + "!" * 1500).ids[3:5] != tok.encode("x " + "!" * 1501).ids[3:5]   # why it matters
    monkeypatch.setattr(engine_code, "LONG_TEXT_CHARS", 400)
    monkeypatch.setattr(engine_code, "LONG_TEXT_CHARS_PER_TOKEN", 4)
    monkeypatch.setattr(engine_code, "COUNT_CHARS", 700)
    monkeypatch.setattr(engine_code, "PREFIX_CHARS", 200)
    engine = engine_code.Engine.__new__(engine_code.Engine)
    engine.parts = types.SimpleNamespace(max_len=24, kind="single", tokenizer_json=tok.to_str())
    engine._local, engine._plain_tokenizer, engine._windowing = threading.local(), None, []
    engine.tokenizer = tokenizers.Tokenizer.from_str(tok.to_str())
    engine.tokenizer.enable_truncation(24)
    for text in ("!" * 3001, "x " + "!" * 3001 + " a b" * 300, "x " + "!" * 2999 + "a" * 3000,
                 "x " + "!a" * 1500 + "!" * 1501):
        short = engine._shortened(text)
        assert engine.tokenizer.encode(short).ids == engine.tokenizer.encode(text).ids, text[:20]


def test_an_answer_is_its_words_without_the_white_space_a_byte_level_bpe_word_carries():
    """A RoBERTa / MPNet span labeler's answers began or ended with white space ('\\xa0Paris.\\r\\n\\r\\n ', '\\t '), some
    were white space alone, and 'start and end\\t ' and 'start and end' were two answers splitting one score (found by
    a tester): an answer is trimmed, and one of white space alone is none."""
    from bertc.engine import Engine, _answer_span

    context = "Line  two   has\u00a0Paris.\r\n\r\n  Third\tline"
    begin = context.index("\u00a0")
    assert _answer_span(context, begin, begin + len("\u00a0Paris.\r\n\r\n ")) == (begin + 1, begin + 7)
    assert _answer_span(context, begin, begin + 1) == (begin + 1, begin + 1)   # white space alone: empty
    tabbed = "  \ttabbed  start and end\t "
    one = _answer_span(tabbed, tabbed.index("start"), len(tabbed))
    two = _answer_span(tabbed, tabbed.index("start"), tabbed.index("end") + 3)
    assert one == two
    merged = Engine._span_answer([(0.0124, *one, tabbed[one[0]:one[1]]), (0.0091, *two, tabbed[two[0]:two[1]])])
    assert merged["text"] == "start and end" and merged["score"] == pytest.approx(0.0215)


def test_answers_and_words_keep_the_combining_marks_of_decomposed_text():
    """In NFD text (macOS file names, text copied from PDFs) an uncased WordPiece normalizer drops the accents, so no
    token held a word-final one ('José' was tagged 'Jose'), and a byte-level BPE makes an accent its own word (an
    answer began on a lone U+0301): words end after their marks, answers begin and end on whole words."""
    import unicodedata

    from bertc.engine import _answer_span, _spoken
    from bertc.run_io import Record

    text = unicodedata.normalize("NFD", "José André et Zoë")
    tags = [((0, 0), {"word": "Jose", "start": 0, "end": 4}), ((0, 1), {"word": "Andre", "start": 6, "end": 11}),
            ((0, 2), {"word": "et", "start": 13, "end": 15}), ((0, 3), {"word": "Zoe", "start": 16, "end": 19})]
    got = _spoken(tags, Record(text, None, "text 1"))
    assert [t["word"] for _, t in got] == [unicodedata.normalize("NFD", w) for w in ("José", "André", "et", "Zoë")]
    assert all(text[t["start"]:t["end"]] == t["word"] for _, t in got)
    bpe = [((0, 0), {"word": "cr", "start": 0, "end": 2}), ((0, 1), {"word": "\u0300", "start": 2, "end": 3}),
           ((0, 2), {"word": "me", "start": 3, "end": 5})]
    assert [t["end"] for _, t in _spoken(bpe, Record("cr\u0300me", None, "text 1"))] == [2, 3, 5]
    context = unicodedata.normalize("NFD", "written in 1813; café crème.")
    accent = context.index("\u0301")
    assert context[slice(*_answer_span(context, accent, len(context)))] == unicodedata.normalize("NFD", "café crème.")
    cr = context.index("cre")
    assert context[slice(*_answer_span(context, cr, cr + 3))] == unicodedata.normalize("NFD", "crème")


def test_a_long_calibration_or_parity_text_file_is_read_in_bounded_batches(builds, tmp_path):
    """A --calibration file of 20,000 short lines was one padded batch: the build reached 16 GB and was still running
    after 8 minutes, and the rank agreement over every pair of rows grew with the square of the lines (found by a
    tester). The text is read in batches of 64, each padded to its own longest line; a --calibration file uses
    1,024 of its examples, evenly spaced, and the report says how many of how many."""
    from bertc.calibration import MAX_TEXT_EXAMPLES, real_text_cases
    from bertc.spec import load_spec
    from bertc.text import TEXT_BATCH, text_cases

    out = builds["st_bert_mean_norm"]
    spec = load_spec(out / "spec.json")
    lines = [("the cat " * (1 + i % 5)).strip() for i in range(1500)]
    path = tmp_path / "many.txt"
    path.write_text("\n".join(lines) + "\n")
    cases, source = real_text_cases(spec, out, path)
    assert (source["examples"], source["of"]) == (MAX_TEXT_EXAMPLES, 1500)
    batches = [c for c in cases if c.label.startswith("text: examples ")]
    assert len(batches) == MAX_TEXT_EXAMPLES // TEXT_BATCH and {c.batch for c in batches} == {TEXT_BATCH}
    assert batches[0].label == f"text: examples 1-64 of {MAX_TEXT_EXAMPLES} from many.txt"
    assert max(c.batch for c in cases) == TEXT_BATCH
    assert all(c.sequence_length == int(c.inputs["input_mask"].sum(axis=1).max()) for c in batches)   # own longest
    parity, cut = text_cases(out, path, spec)   # bertc parity --text: every example, in batches too
    assert sum(len(inputs["input_mask"]) for label, inputs in parity if "examples" in label) == 1500 and cut == 0
    short = tmp_path / "few.txt"
    short.write_text("the cat\nthe cat sat\n")
    cases, source = real_text_cases(spec, out, short)
    assert cases[0].label == "text: 2 example(s) from few.txt" and "of" not in source


def test_a_structured_calibration_or_parity_file_is_read_by_its_fields(builds, tmp_path):
    """--calibration, parity --text and bench --text read every file as lines of text: a JSONL file's examples were
    '{"text": "the cat sat"}' as it stands, its braces, quotes and field name tokenized (exit 0; noticed in review).
    JSONL, CSV, TSV and Parquet are read as bertc run reads them: the field text, and text_pair where the file has it;
    a file without the field is refused, naming it."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from bertc.calibration import real_text_cases
    from bertc.errors import CalibrationError
    from bertc.spec import load_spec
    from bertc.text import read_texts

    out = builds["st_bert_mean_norm"]
    spec = load_spec(out / "spec.json")
    plain = tmp_path / "few.txt"
    plain.write_text("the cat\tsat down\nthe dog ran\n")
    rows = [{"id": 1, "text": "the cat", "text_pair": "sat down"}, {"id": 2, "text": "the dog ran", "text_pair": None}]
    jsonl = tmp_path / "few.jsonl"
    jsonl.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows))
    with pytest.raises(InputError, match=r"few.jsonl: line 2: no field 'text_pair' .*'text_pair' for a pair"):
        read_texts(jsonl)   # a pair field in one row is a pair field in every row, as bertc run reads it
    jsonl.write_text("\n".join(json.dumps({"id": r["id"], "text": r["text"]}) for r in rows) + "\n")
    assert read_texts(jsonl) == ["the cat", "the dog ran"]
    csv_path = tmp_path / "few.csv"
    csv_path.write_text('text,text_pair\nthe cat,sat down\n"the dog, it ran",off\n')
    assert read_texts(csv_path) == [("the cat", "sat down"), ("the dog, it ran", "off")]
    tsv = tmp_path / "few.tsv"
    tsv.write_text("id\ttext\n1\tthe cat\n")
    assert read_texts(tsv) == ["the cat"]
    parquet = tmp_path / "few.parquet"
    pq.write_table(pa.table({"text": ["the cat", "the dog ran"], "text_pair": ["sat down", "home"]}), parquet)
    assert read_texts(parquet) == [("the cat", "sat down"), ("the dog ran", "home")]
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence\nthe cat\n")
    with pytest.raises(InputError, match=r"bad.csv: no column 'text' .*columns: sentence; examples are read from"):
        read_texts(bad)
    with pytest.raises(CalibrationError, match="^calibration .*bad.csv: .*no column 'text'"):   # (from Python)
        real_text_cases(spec, out, bad)
    jsonl.write_text(json.dumps({"text": "the cat", "text_pair": "sat down"}) + "\n"
                     + json.dumps({"text": "the dog ran", "text_pair": "home"}) + "\n")
    from_jsonl, source = real_text_cases(spec, out, jsonl)
    plain.write_text("the cat\tsat down\nthe dog ran\thome\n")
    from_txt, _ = real_text_cases(spec, out, plain)
    assert source["examples"] == 2 and len(from_jsonl) == len(from_txt)
    for a, b in zip(from_jsonl, from_txt):   # the same tokens as the same text in a .txt
        assert all(np.array_equal(a.inputs[k], b.inputs[k]) for k in b.inputs)


def test_run_says_when_the_chosen_file_changed_since_the_build(builds, tmp_path):
    """bertc run said "passed parity" of a model.optimized.onnx whose weights had been scaled since the build (its
    embeddings 0.345 off; found by a tester); bertc parity knew. The chosen file's bytes are checked against the
    manifest, and the line says it changed. --artifact of an int8 file names its batch dependence, as the default
    choice of one does."""
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "out"
    shutil.copytree(builds["st_bert_mean_norm"], out)
    assert "CHANGED" not in bertc.Runtime(out, artifact="onnx_optimized").choice.why
    int8 = bertc.Runtime(out, artifact="onnx_int8").choice.why
    assert int8.startswith("as asked (artifact); passed parity; its activation ranges are each batch's")
    path = out / "model.optimized.onnx"
    model = onnx.load(str(path))
    first = next(i for i in model.graph.initializer if numpy_helper.to_array(i).dtype == np.float32
                 and numpy_helper.to_array(i).size > 100)
    first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first) * 3, first.name))
    onnx.save(model, str(path))
    with pytest.warns(UserWarning, match="model.optimized.onnx has CHANGED since the build"):   # (Python's say)
        why = bertc.Runtime(out, artifact="onnx_optimized").choice.why
    assert why.startswith("as asked (artifact); passed parity; but model.optimized.onnx has CHANGED since the "
                          "build (its sha256 is not the manifest's)")


def test_run_file_makes_the_result_s_missing_folders_as_bertc_run_does(builds, tmp_path):
    """`bertc run -o runs/today/r.jsonl` made the folders, Runtime.run_file refused them: "no such directory for the
    result" (a tester). Both make them now, and a run that fails removes those it made."""
    runtime = bertc.Runtime(builds["bert_seq_cls"], artifact="onnx")
    (tmp_path / "in.txt").write_text("a cat sat\nthe dog\n")
    assert runtime.run_file(tmp_path / "in.txt", tmp_path / "runs" / "today" / "r.jsonl") == 2
    assert len((tmp_path / "runs" / "today" / "r.jsonl").read_text().splitlines()) == 2
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(InputError, match="line 2"):
        runtime.run_file(tmp_path / "bad.jsonl", tmp_path / "other" / "deeper" / "r.jsonl")
    assert not (tmp_path / "other").exists()


# --- a tester's mutants that no test killed (M: R01, O01, E10) -----------------------------------------------------

def test_a_build_without_parity_runs_its_fp32_artifact_not_an_unjudged_int8():
    """With the rule "an artifact whose parity was not run is used only if it is fp32" gone, a --no-parity build ran
    its int8 file, which nothing had checked."""
    from bertc.runtime import choose_artifact

    cpu = ["CPUExecutionProvider"]
    report = {"artifacts": {
        "onnx": {"path": "model.onnx", "format": "onnx", "precision": "fp32", "providers": cpu},
        "onnx_optimized": {"path": "model.optimized.onnx", "format": "onnx", "precision": "fp32", "providers": cpu},
        "onnx_int8": {"path": "model.optimized.int8.onnx", "format": "onnx", "precision": "int8", "providers": cpu}}}
    choice = choose_artifact(report, device="cpu")
    assert choice.artifact == "onnx_optimized" and "parity was not run" in choice.why


def test_a_windows_txt_input_gives_texts_without_their_carriage_return(tmp_path):
    """The CRLF tests read JSONL, CSV and parity's texts: a .txt for bertc run kept '\\r' at each text's end (its pair's,
    its last choice's), a token of its own to a byte-level BPE or SentencePiece tokenizer."""
    from bertc.run_io import input_spec, read_records

    path = tmp_path / "crlf.txt"
    path.write_bytes(b"the cat sat\r\nq one\tctx two\r\nlast\r\n")
    assert [(r.text, r.pair) for r in read_records(input_spec(path))] == [
        ("the cat sat", None), ("q one", "ctx two"), ("last", None)]


def test_fill_mask_orders_equal_scores_by_token_id():
    """"likeliest first; equal scores by token id": untested, argpartition's arbitrary order passed."""
    import types

    from bertc import engine as engine_code
    from bertc.run_io import Record

    engine = engine_code.Engine.__new__(engine_code.Engine)
    engine.parts = types.SimpleNamespace(top_k=5, positions=0)
    engine.tokenizer = types.SimpleNamespace(decode=lambda ids, skip_special_tokens=False: " ".join(map(str, ids)))
    engine._mask_positions = lambda e: [1]
    logits = np.zeros((3, 15), np.float32)
    logits[1, 10:] = np.log(2.0)   # tokens 10-14 twice as likely as 0-9, each tie exact
    e = types.SimpleNamespace(ids=[0, 1, 2], offsets=[(0, 0), (0, 1), (1, 1)], sequence_ids=[0, 0, 0])
    got = engine._fill(logits, e, Record("x", None, "line 1"))["masks"][0]["predictions"]
    assert [p["token_id"] for p in got] == [10, 11, 12, 13, 14]
    logits[1, :] = 0.0   # every score equal: the lowest ids
    assert [p["token_id"] for p in engine._fill(logits, e, Record("x", None, "line 1"))["masks"][0]["predictions"]] \
        == [0, 1, 2, 3, 4]
