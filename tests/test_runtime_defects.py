"""``bertc.Runtime`` on the cases that once went wrong: one Runtime used by several threads at once, a damaged
build whose bundled files cannot be read, arguments of the wrong kind, texts in a container without an order, and
one very long line. Each reuses test_run's tiny builds (made once per session)."""
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import bertc

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
