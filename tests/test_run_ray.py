"""``bertc run --ray``: the same job over Ray Data on a local Ray with 2 CPUs gives the single-process result,
in input order, and an actor killed mid-job is restarted by Ray with every row in the result exactly once.

Ray is part of the ``test`` extra: its absence is a failure here, not a skip. One local Ray serves the module
(``ray.init`` takes ~10 s on 2 cores).
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import bertc
from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC
from bertc.run_ray import RayPredictor, run_ray
from bertc.run_io import input_spec, read_records

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_run import LABELS, TEXTS, _bertc, read_result, shared_builds  # noqa: E402

ray = pytest.importorskip("ray") if os.environ.get("BERTC_ALLOW_NO_RAY") == "1" else __import__("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    return shared_builds(tmp_path_factory, ("st_bert_mean_norm", "bert_seq_cls", "bert_mc"))


def texts(n: int) -> list:
    return [f"{TEXTS[i % len(TEXTS)]}" + " the cat" * (i % 6) for i in range(n)]


def test_ray_run_equals_the_single_process_run_in_input_order(local_ray, builds, tmp_path, capsys):
    rows = texts(300)
    txt = tmp_path / "in.txt"
    txt.write_text("\n".join(rows) + "\n")
    out = builds["st_bert_mean_norm"]
    single, over_ray = tmp_path / "single.npy", tmp_path / "ray.npy"
    assert main(["run", str(out), str(txt), "-o", str(single), "-q", "--batch-size", "8", "--window", "64"]) == 0
    assert main(["run", str(out), str(txt), "-o", str(over_ray), "-q", "--batch-size", "8", "--window", "64",
                 "--ray", "--threads", "1"]) == 0
    a, b = np.load(single), np.load(over_ray)
    assert a.shape == (300, 16)
    np.testing.assert_array_equal(a, b)  # same artifact, same batches: the same bytes
    # int8 embeddings: the actors' float32 rows quantized by the driver, as in one process
    int8 = tmp_path / "int8.parquet"
    assert main(["run", str(out), str(txt), "-o", str(int8), "-q", "--window", "64", "--ray", "--threads", "1",
                 "--embedding-precision", "int8", "--calibration-embeddings", str(single)]) == 0
    expected = bertc.Runtime(out, embedding_precision="int8", calibration_embeddings=single, window=64).run(rows)
    np.testing.assert_array_equal(np.asarray([r["embedding"] for r in read_result(int8)], np.int8), expected)
    # labels too, written as JSONL by the driver in input order
    cls = builds["bert_seq_cls"]
    res = tmp_path / "labels.jsonl"
    args = ["run", str(cls), str(txt), "-o", str(res), "-q", "--ray", "--actors", "2", "--threads", "1", "--window", "32"]
    assert main(args) == EXIT_BAD_SPEC  # an actor's error is the CLI's error: named, no traceback, nothing written
    err = capsys.readouterr().err
    assert f"error: {txt}: line 5: the text is longer than the model's maximum of 16 tokens" in err, err
    assert "Traceback" not in err and not res.exists()
    capsys.readouterr()
    assert main([a for a in args if a != "-q"] + ["--truncate"]) == 0
    single = bertc.Runtime(cls, truncate=True, window=32)
    expected = single.run(rows)
    assert single.truncated > 0 and f"; {single.truncated} of them cut to the model's 16 tokens" in \
        capsys.readouterr().err   # the actors say which rows they cut
    got = read_result(res)
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    assert set(r["label"] for r in got) <= set(LABELS["bert_seq_cls"])
    assert [r["scores"] for r in got] == [r["scores"] for r in expected]


def test_multiple_choice_and_kept_fields_over_ray_are_the_single_process_run(local_ray, builds, tmp_path):
    """Each row's choices travel with it to the actors (a list column) and come back as its result; the kept
    fields come back with their rows, in their types."""
    questions = [(t, [t.split()[-1], "the mat", "a dog ran"][:2 + i % 2]) for i, t in enumerate(texts(60))]
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "tag": {"n": i}, "text": t, "choices": c}) + "\n"
                             for i, (t, c) in enumerate(questions)))
    result = tmp_path / "r.jsonl"
    assert main(["run", str(builds["bert_mc"]), str(jsonl), "-o", str(result), "-q", "--truncate", "--ray",
                 "--actors", "2", "--threads", "1", "--window", "16", "--keep-fields", "id,tag"]) == 0
    expected = bertc.Runtime(builds["bert_mc"], truncate=True, window=16).run(questions)
    got = read_result(result)
    assert [(g.pop("id"), g.pop("tag")) for g in got] == [(i, {"n": i}) for i in range(60)]
    assert got == json.loads(json.dumps(expected))
    # a sentence embedder's ranking: the query and each document embedded by the actors, ordered as one process does
    rows = [(q, list(c) + [q.split()[0]]) for q, c in questions[:24]]
    jsonl.write_text("".join(json.dumps({"text": q, "documents": d}) + "\n" for q, d in rows))
    assert main(["run", str(builds["st_bert_mean_norm"]), str(jsonl), "-o", str(result), "-q", "--rank", "--top-k", "2",
                 "--ray", "--actors", "2", "--threads", "1", "--window", "8", "--force"]) == 0
    expected = bertc.Runtime(builds["st_bert_mean_norm"], rank=True, top_k=2, window=8).run(rows)
    assert read_result(result) == json.loads(json.dumps(expected))


class KillsItselfOnce(RayPredictor):
    """An actor that, the first time any actor reaches its third batch, records it in a file and kills its
    own process (as an OOM kill or a lost node would)."""

    marker: str = ""
    calls = 0

    def __call__(self, batch):
        self.calls += 1
        if self.calls == 3 and not os.path.exists(self.marker):
            Path(self.marker).write_text(f"killed pid {os.getpid()} at rows {int(batch['index'][0])}..\n")
            os._exit(1)
        return super().__call__(batch)


def test_a_killed_actor_is_retried_and_the_result_has_every_row_once(local_ray, builds, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this module
    marker = tmp_path / "killed.txt"
    KillsItselfOnce.marker = str(marker)
    rows = texts(400)
    txt = tmp_path / "in.txt"
    txt.write_text("\n".join(rows) + "\n")
    rt = bertc.Runtime(builds["st_bert_mean_norm"], batch_size=8, window=40, threads=1)
    got = [r for window in run_ray(rt, read_records(input_spec(txt)), actors=2, predictor=KillsItselfOnce)
           for r in window]
    assert marker.exists() and "killed pid" in marker.read_text()  # the kill happened
    assert len(got) == 400
    np.testing.assert_array_equal(np.stack(got), rt.run(rows))  # every row once, in order


def test_a_ray_job_from_python_leaves_the_callers_ray_data_settings_and_loggers_alone(local_ray, builds, tmp_path):
    """run_file(ray_address=...) kept input order, turned progress bars off and quieted Ray's loggers for good: a
    process using Ray Data for more lost its own settings."""
    import logging

    import ray.data

    context = ray.data.DataContext.get_current()
    before = (context.execution_options.preserve_order, context.enable_progress_bars)
    level = logging.getLogger("ray.data").level
    context.execution_options.preserve_order, context.enable_progress_bars = False, True
    logging.getLogger("ray.data").setLevel(logging.DEBUG)
    try:
        txt = tmp_path / "in.txt"
        txt.write_text("\n".join(texts(20)) + "\n")
        rt = bertc.Runtime(builds["st_bert_mean_norm"], window=8, threads=1)
        assert rt.run_file(txt, tmp_path / "emb.npy", ray_address="") == 20
        assert (context.execution_options.preserve_order, context.enable_progress_bars) == (False, True)
        assert logging.getLogger("ray.data").level == logging.DEBUG
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = before
        logging.getLogger("ray.data").setLevel(level)


def test_an_unreachable_ray_address_fails_at_once_naming_it(builds, tmp_path):
    """``ray.init`` retries an address where no cluster answers for good ("Failed to get cluster ID" lines, still
    going after five minutes): bertc refuses it after one TCP try, exit 2, the existing RESULT as it was."""
    import socket

    txt, result = tmp_path / "in.txt", tmp_path / "r.npy"
    txt.write_text("a dog\n")
    result.write_bytes(b"ORIG")
    with socket.socket() as closed:   # bound, never listening: a connection to it is refused
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
        run = _bertc(["run", builds["st_bert_mean_norm"], txt, "-o", result, "--force", "-q", "--ray", address],
                     timeout=120)
    err = run.stderr.decode()
    assert run.returncode == EXIT_BAD_SPEC, err[-2000:]
    assert f"error: --ray {address}: cannot connect to a Ray cluster: {address}: Connection refused" in err, err
    assert "Traceback" not in err and "cluster ID" not in err, err
    assert result.read_bytes() == b"ORIG" and sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "r.npy"]


def test_an_address_where_no_ray_cluster_answers_is_refused(local_ray, monkeypatch):
    """A port where something else listens (a web server; one that accepts and stays silent) is refused naming what
    answered: ray.init waited there for good. A Ray cluster's GCS (it speaks gRPC) passes the same check."""
    import http.server
    import socket
    import threading

    from bertc.errors import InputError
    from bertc.run_ray import _check_reachable

    _check_reachable(ray.get_runtime_context().gcs_address, "--ray gcs")   # the module's Ray: no error
    web = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    web.RequestHandlerClass.log_message = lambda *args: None
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{web.server_address[1]}"
        with pytest.raises(InputError, match=rf"--ray {address}: cannot connect to a Ray cluster: {address} answers, "
                                             r"but not as a Ray cluster \(a gRPC server\) does: it replied b'"):
            _check_reachable(address, f"--ray {address}")
    finally:
        web.shutdown()
    monkeypatch.setattr("bertc.run_ray.RAY_CONNECT_TIMEOUT", 0.5)
    with socket.socket() as silent:   # listening: the connection is accepted (by the kernel), nothing ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(InputError, match=rf"{address} accepts connections but does not answer as a Ray cluster"):
            _check_reachable(address, f"--ray {address}")


def test_sigterm_over_ray_ends_as_without_ray(local_ray, builds, tmp_path):
    """SIGTERM mid-job (here a driver of the module's local Ray) unwinds as it does in one process: exit 143,
    "terminated; nothing was written", RESULT as it was, no temporary file. ray.init had put its core worker's
    SIGTERM handler over bertc's (a stack dump, then abort: exit 134, the temporary file left behind)."""
    import signal
    import subprocess
    import time

    txt, result = tmp_path / "in.txt", tmp_path / "r.jsonl"
    txt.write_text("\n".join(texts(4000)) + "\n")
    result.write_bytes(b"ORIG")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    job = subprocess.Popen([sys.executable, "-m", "bertc", "run", str(builds["st_bert_mean_norm"]), str(txt), "-o",
                            str(result), "--force", "-q", "--window", "16", "--batch-size", "1", "--threads", "1",
                            "--ray", ray.get_runtime_context().gcs_address], stderr=subprocess.PIPE, env=env)
    partial = tmp_path / f".r.jsonl.partial-{job.pid}"
    deadline = time.monotonic() + 300   # ~10 s on an idle 2-core machine
    while job.poll() is None and time.monotonic() < deadline and not (partial.exists() and partial.stat().st_size):
        time.sleep(0.2)   # until the actors' first results are written
    assert job.poll() is None, job.stderr.read().decode()[-2000:]
    job.send_signal(signal.SIGTERM)
    err = job.communicate(timeout=120)[1].decode()
    assert job.returncode == 143, err[-2000:]
    assert err.rstrip().endswith("terminated; nothing was written") and "SIGTERM received" not in err, err[-2000:]
    assert result.read_bytes() == b"ORIG" and sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "r.jsonl"]


def test_a_ray_run_prints_bertc_lines_only(local_ray, builds, tmp_path):
    """A small job over Ray (one window; the module's Ray, 2 CPUs: a pool of 2 actors asked) says what one process
    says, and gives its result. Before: a RayDeprecationWarning on bertc's map_batches call (max_restarts /
    max_task_retries as remote args), Ray's core worker's "E" line about actor restarts, Ray Data's "Progress bars
    disabled" and its UserWarning that the pool had more actors than the job had windows."""
    out, txt, result = builds["st_bert_mean_norm"], tmp_path / "in.txt", tmp_path / "r.npy"
    txt.write_text("\n".join(texts(7)) + "\n")
    run = _bertc(["run", out, txt, "-o", result, "--threads", "1", "--ray", ray.get_runtime_context().gcs_address],
                 timeout=180)
    err = run.stderr.decode()
    assert run.returncode == 0, err[-3000:]
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"bertc run {out}: embedding results from "), err[-3000:]
    assert lines[1].startswith(f"wrote {result}: 7 embedding result(s) in ") and "over Ray" in lines[1], err[-3000:]
    np.testing.assert_array_equal(np.load(result), bertc.Runtime(out).run(texts(7)))


def test_threads_no_node_has_are_refused_not_waited_for(local_ray, builds, tmp_path):
    """``--ray --threads 3`` on a cluster of 2-CPU nodes: each actor asks for 3 CPUs, is never placed, and Ray Data
    waited for good ("The job may hang forever"); refused, naming the largest node's CPUs."""
    import time

    import bertc
    from bertc.errors import InputError

    txt = tmp_path / "in.txt"
    txt.write_text("a dog\n")
    start = time.perf_counter()
    with pytest.raises(InputError, match="^threads 3: each Ray actor takes that many CPUs, and no node of this "
                                         "cluster has more than 2; pass threads=2 or fewer"):
        bertc.Runtime(builds["st_bert_mean_norm"], threads=3).run_file(txt, tmp_path / "r.npy", ray_address="")
    assert time.perf_counter() - start < 60 and not (tmp_path / "r.npy").exists()
