"""How ``bertc run`` writes its result, where writing goes wrong: a short write (a full disk, a file size limit) on
standard output or on the result file, no space left (ENOSPC, EDQUOT, EIO, EFBIG), two runs writing the same RESULT,
a RESULT that is a symbolic link, a RESULT name near the file system's limit on a name's length. Every byte is
written or the run stops with one clear line naming where and why, a non-zero exit, no traceback and no partial
result.

Most tests drive :func:`bertc.run_io.atomic_result` directly (no model); those through the CLI share the session's
tiny builds (tests/test_run.py's ``shared_builds``).
"""
import errno
import io
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertc import run_io

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_run import shared_builds  # noqa: E402

ROWS = [np.arange(16, dtype=np.float32) * (i + 1) / 7 for i in range(300)]   # 300 embeddings of 16 values


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    return shared_builds(tmp_path_factory, ("st_bert_mean_norm",))


def _write(path, fmt="jsonl", rows=ROWS, force=False, batch=50):
    with run_io.atomic_result(path, fmt, "embedding", force=force) as writer:
        for i in range(0, len(rows), batch):
            writer.write(rows[i:i + batch], [()] * len(rows[i:i + batch]))


def _expected(fmt, tmp_path, rows=ROWS) -> bytes:
    """What a result of ``rows`` holds, written with no trouble."""
    path = tmp_path / f"expected.{fmt}"
    _write(path, fmt, rows)
    data = path.read_bytes()
    path.unlink()
    return data


def _bertc(args, stdout=subprocess.PIPE, fsize=None, timeout=120):
    """``bertc ARGS`` in a child process; ``fsize``: its limit on the size of a file it writes (RLIMIT_FSIZE: past it
    the system writes only part of a write, then refuses with EFBIG, as a full disk does with ENOSPC)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONDONTWRITEBYTECODE": "1"}

    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "bertc", *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          env=env, timeout=timeout, preexec_fn=limit)


def _one_clean_error(err: str, *needles):
    assert "Traceback" not in err and "internal error" not in err and "Exception ignored" not in err, err
    assert err.count("error: ") == 1, err
    for needle in needles:
        assert needle in err, err


# --- 1: a short write is never a silently shorter result --------------------------------------------------------

class _ShortWrites(io.RawIOBase):
    """A file whose every write takes at most ``most`` bytes and says so by its count, as Python's buffered file
    on a full disk or at a file size limit does (and no error)."""

    def __init__(self, most=1000):
        self.data, self.most = bytearray(), most

    def writable(self):
        return True

    def write(self, b):
        taken = bytes(memoryview(b).cast("B")[:self.most])
        self.data += taken
        return len(taken)


class _Stdout:
    """sys.stdout whose buffer writes short; ``raw``: it has an unbuffered file too (which writes short as well)."""

    def __init__(self, raw: bool):
        self.buffer = _ShortWrites()
        if raw:
            self.buffer.raw = _ShortWrites()

    def flush(self):
        pass

    @property
    def data(self) -> bytes:
        return bytes(getattr(self.buffer, "raw", self.buffer).data)


@pytest.mark.parametrize("raw", [True, False], ids=["unbuffered", "buffered"])
def test_short_writes_to_standard_output_write_every_byte(tmp_path, monkeypatch, raw):
    expected = _expected("jsonl", tmp_path)
    fake = _Stdout(raw)
    monkeypatch.setattr(sys, "stdout", fake)
    _write("-")
    assert fake.data == expected
    assert len(fake.data.splitlines()) == len(ROWS)


class _ShortFile:
    """The temporary result file, each write taking at most 1000 bytes (its count says so)."""

    def __init__(self, f):
        self._f = f

    def write(self, b):
        return self._f.write(bytes(memoryview(b).cast("B")[:1000]))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _patch_open(monkeypatch, wrap):
    """run_io's open() of the temporary result (mode "xb": created exclusively) gives ``wrap(file)``."""
    real = open

    def fake(path, mode="r", *args, **kwargs):
        f = real(path, mode, *args, **kwargs)
        return wrap(f) if mode in ("wb", "xb") else f

    monkeypatch.setattr(run_io, "open", fake, raising=False)


@pytest.mark.parametrize("fmt", ["npy", "jsonl", "csv", "parquet"])
def test_every_result_format_reads_back_the_same_float32_embeddings(tmp_path, fmt):
    """CSV wrote 7 significant digits: 28 of 48 values of a QA report's embeddings read back off by up to 6e-8."""
    import csv

    pytest.importorskip("pyarrow") if fmt == "parquet" else None
    rows = list(np.random.default_rng(0).standard_normal((40, 24)).astype(np.float32))
    _write(tmp_path / f"r.{fmt}", fmt, rows)
    path = tmp_path / f"r.{fmt}"
    if fmt == "npy":
        back = np.load(path)
    elif fmt == "csv":
        back = [list(map(float, r)) for r in csv.reader(path.open())]
    elif fmt == "jsonl":
        back = [json.loads(line)["embedding"] for line in path.read_text().splitlines()]
    else:
        import pyarrow.parquet as pq

        back = pq.read_table(path).column("embedding").to_pylist()
    np.testing.assert_array_equal(np.asarray(back, np.float32), np.asarray(rows))


@pytest.mark.parametrize("fmt", ["npy", "jsonl", "csv", "parquet"])
def test_short_writes_to_the_result_file_write_every_byte(tmp_path, monkeypatch, fmt):
    expected = _expected(fmt, tmp_path)
    _patch_open(monkeypatch, _ShortFile)
    _write(tmp_path / f"r.{fmt}", fmt)
    assert (tmp_path / f"r.{fmt}").read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"r.{fmt}"]


def test_standard_output_cut_short_by_a_file_size_limit_is_not_a_success(builds, tmp_path):
    """The QA report's case (a full disk: the system writes part of a large write, then refuses): the run fails, it
    does not say that it wrote every row."""
    txt = tmp_path / "big.txt"
    txt.write_text("".join(f"some sentence number {i} with words\n" for i in range(400)))
    with open(tmp_path / "out.jsonl", "wb") as out:
        run = _bertc(["run", builds["st_bert_mean_norm"], txt, "-o", "-"], stdout=out, fsize=50_000)
    err = run.stderr.decode()
    assert run.returncode != 0, err
    assert "wrote standard output" not in err, err
    assert (tmp_path / "out.jsonl").stat().st_size <= 50_000


# --- 4: no space left (and a quota, an I/O error, a file too large) is an output error, not a bug ---------------

class _FullDisk(_ShortFile):
    """The temporary result file on a disk with ``room`` bytes left: a write past it writes what fits, the next
    one fails with ``err`` (as ENOSPC does); ``at_close``: every write fits, closing fails (a quota on a network file
    system)."""

    def __init__(self, f, err, room=2000, at_close=False):
        super().__init__(f)
        self.err, self.room, self.at_close = err, room, at_close

    def write(self, b):
        b = bytes(memoryview(b).cast("B"))
        if self.at_close:
            return self._f.write(b)
        if self.room <= 0:
            raise OSError(self.err, os.strerror(self.err))
        n = self._f.write(b[:self.room])
        self.room -= n
        return n

    def close(self):
        was_open = not self._f.closed
        self._f.close()
        if self.at_close and was_open:
            raise OSError(self.err, os.strerror(self.err))


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG],
                         ids=["ENOSPC", "EDQUOT", "EIO", "EFBIG"])
@pytest.mark.parametrize("fmt", ["npy", "jsonl", "parquet"])
def test_a_full_disk_is_an_output_error_naming_the_result_and_leaves_nothing(tmp_path, monkeypatch, fmt, err):
    from bertc.errors import EXIT_OUTPUT, OutputError

    result = tmp_path / f"r.{fmt}"
    _patch_open(monkeypatch, lambda f: _FullDisk(f, err))
    with pytest.raises(OutputError) as caught:
        _write(result, fmt)
    message = str(caught.value)
    assert caught.value.exit_code == EXIT_OUTPUT
    assert message.startswith(f"{result}: cannot write the result: {os.strerror(err)}"), message
    assert "nothing was written" in message, message
    assert list(tmp_path.iterdir()) == []   # no partial result, no temporary file
    result.write_bytes(b"the earlier result")   # --force over an earlier result: it stays as it was
    with pytest.raises(OutputError):
        _write(result, fmt, force=True)
    assert result.read_bytes() == b"the earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == [result.name]


def test_a_quota_that_only_closing_reports_is_an_output_error(tmp_path, monkeypatch):
    from bertc.errors import OutputError

    _patch_open(monkeypatch, lambda f: _FullDisk(f, errno.EDQUOT, at_close=True))
    with pytest.raises(OutputError, match=f"r.jsonl: cannot write the result: {os.strerror(errno.EDQUOT)}"):
        _write(tmp_path / "r.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_through_the_cli_is_exit_5_with_one_line(builds, tmp_path, monkeypatch, capsys):
    from bertc.cli import main
    from bertc.errors import EXIT_OUTPUT

    txt = tmp_path / "in.txt"
    txt.write_text("".join(f"some sentence number {i} with words\n" for i in range(300)))
    result = tmp_path / "r.npy"
    _patch_open(monkeypatch, lambda f: _FullDisk(f, errno.ENOSPC))
    assert main(["run", str(builds["st_bert_mean_norm"]), str(txt), "-o", str(result), "-q"]) == EXIT_OUTPUT
    _one_clean_error(capsys.readouterr().err, f"error: {result}: cannot write the result: No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


class _FullStdout(_Stdout):
    def __init__(self, err):
        super().__init__(raw=True)

        def full(b):
            raise OSError(err, os.strerror(err))

        self.buffer.raw.write = full


def test_a_full_standard_output_is_an_output_error(tmp_path, monkeypatch):
    from bertc.errors import OutputError

    monkeypatch.setattr(sys, "stdout", _FullStdout(errno.ENOSPC))
    with pytest.raises(OutputError, match="^standard output: cannot write the results: No space left on device"):
        _write("-")
    monkeypatch.setattr(sys, "stdout", _FullStdout(errno.EPIPE))   # a reader that went away: exit 141, as before
    with pytest.raises(BrokenPipeError):
        _write("-")


@pytest.mark.parametrize("where", ["/dev/full", "limit"])
def test_standard_output_that_cannot_be_written_is_exit_5_naming_it(builds, tmp_path, where):
    from bertc.errors import EXIT_OUTPUT

    txt = tmp_path / "big.txt"
    txt.write_text("".join(f"some sentence number {i} with words\n" for i in range(400)))
    with open(where if where == "/dev/full" else tmp_path / "out.jsonl", "wb") as out:
        run = _bertc(["run", builds["st_bert_mean_norm"], txt, "-o", "-"], stdout=out,
                     fsize=None if where == "/dev/full" else 50_000)
    reason = "No space left on device" if where == "/dev/full" else "File too large"
    assert run.returncode == EXIT_OUTPUT, run.stderr.decode()
    _one_clean_error(run.stderr.decode(), f"error: standard output: cannot write the results: {reason}")


# --- 9: a RESULT that is a symbolic link is written through, as build and import write through one ---------------

def test_a_linked_result_is_written_through_to_its_target(tmp_path):
    from bertc.errors import OutputError

    expected = _expected("jsonl", tmp_path)
    shared, here = tmp_path / "shared", tmp_path / "here"
    shared.mkdir()
    here.mkdir()
    (shared / "r.jsonl").write_text("old\n")
    link = here / "latest.jsonl"
    link.symlink_to("../shared/r.jsonl")
    refused = f"{link} (a link to {shared / 'r.jsonl'}) already exists; pass force=True"
    with pytest.raises(OutputError, match=re.escape(refused)):
        _write(link)
    _write(link, force=True)
    assert link.is_symlink() and os.readlink(link) == "../shared/r.jsonl"
    assert (shared / "r.jsonl").read_bytes() == expected
    assert [p.name for p in here.iterdir()] == ["latest.jsonl"] and [p.name for p in shared.iterdir()] == ["r.jsonl"]
    chain = here / "chain.jsonl"   # a link to the link: the same file
    chain.symlink_to(link)
    _write(chain, rows=ROWS[:3], force=True)
    assert chain.is_symlink() and link.is_symlink()
    assert len((shared / "r.jsonl").read_text().splitlines()) == 3


def test_a_dangling_linked_result_creates_its_target_and_a_loop_is_refused(tmp_path):
    from bertc.errors import OutputError

    (tmp_path / "shared").mkdir()
    link = tmp_path / "latest.npy"
    link.symlink_to(tmp_path / "shared" / "r.npy")
    _write(link, "npy")   # no --force needed: nothing was there
    assert link.is_symlink()
    np.testing.assert_array_equal(np.load(tmp_path / "shared" / "r.npy"), np.stack(ROWS))
    (tmp_path / "gone.npy").symlink_to(tmp_path / "nowhere" / "r.npy")
    with pytest.raises(OutputError, match=re.escape(f"{tmp_path / 'nowhere'}: no such directory for the result")):
        _write(tmp_path / "gone.npy", "npy")
    (tmp_path / "afile").write_text("x")   # was "no such directory" (a tester)
    with pytest.raises(OutputError, match=re.escape(f"{tmp_path / 'afile'}: not a directory (a file of that name is "
                                                    f"there) for the result")):
        _write(tmp_path / "afile" / "r.npy", "npy")
    (tmp_path / "afile").unlink()
    (tmp_path / "a.npy").symlink_to("b.npy")
    (tmp_path / "b.npy").symlink_to("a.npy")
    with pytest.raises(OutputError, match="a loop of symbolic links"):
        _write(tmp_path / "a.npy", "npy", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npy", "gone.npy", "latest.npy", "shared"]


def test_run_force_through_a_link_keeps_the_link(builds, tmp_path, capsys):
    """The QA report's case: `bertc run OUT in.txt -o rlink.jsonl --force` kept the target's "old" and made the link a
    file."""
    from bertc.cli import main

    (tmp_path / "results_real").mkdir()
    (tmp_path / "results_real" / "r.jsonl").write_text("old\n")
    link = tmp_path / "rlink.jsonl"
    link.symlink_to("results_real/r.jsonl")
    txt = tmp_path / "in1.txt"
    txt.write_text("hello\n")
    assert main(["run", str(builds["st_bert_mean_norm"]), str(txt), "-o", str(link), "--force", "-q"]) == 0
    assert link.is_symlink()
    assert len(json.loads((tmp_path / "results_real" / "r.jsonl").read_text())["embedding"]) > 0


# --- 8: without --force, a RESULT another process wrote meanwhile is not replaced ----------------------------------

@pytest.mark.parametrize("hard_links", [True, False], ids=["hard-links", "no-hard-links"])
def test_a_result_written_meanwhile_is_refused_without_force(tmp_path, monkeypatch, hard_links):
    """Two runs to one RESULT without --force both pass the start's check; the one finishing second refuses (it
    replaced the first's result, exit 0, before). With --force the last one's result is kept, as asked."""
    from bertc.errors import OutputError

    if not hard_links:   # a file system without them (FAT, some network ones): link(2) says EPERM
        def no_link(*args, **kwargs):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))

        monkeypatch.setattr(run_io.os, "link", no_link)
    result = tmp_path / "r.npy"
    with pytest.raises(OutputError) as caught:
        with run_io.atomic_result(result, "npy", "embedding") as writer:
            writer.write(ROWS[:5])
            result.write_bytes(b"the other run's result")   # it finished first
    assert str(caught.value) == (f"{result} was written by another process while this run ran (it was not there when "
                                 f"the run started); without force=True a run replaces nothing, so this run's result "
                                 f"was not kept (pass force=True to replace it)")
    assert result.read_bytes() == b"the other run's result"
    assert [p.name for p in tmp_path.iterdir()] == ["r.npy"]   # the temporary file is gone
    result.unlink()
    _write(result, "npy")   # nothing appeared: put in place, no temporary name left
    np.testing.assert_array_equal(np.load(result), np.stack(ROWS))
    assert [p.name for p in tmp_path.iterdir()] == ["r.npy"]
    with run_io.atomic_result(result, "npy", "embedding", force=True) as writer:
        writer.write(ROWS[:2])
        result.write_bytes(b"the other run's result")
    np.testing.assert_array_equal(np.load(result), np.stack(ROWS[:2]))
    assert [p.name for p in tmp_path.iterdir()] == ["r.npy"]


def test_two_runs_to_one_result_without_force_never_both_succeed(builds, tmp_path):
    """The QA report's case: two `bertc run -o same.npy` started together. However they interleave, at most one
    succeeds (a refusal at the start, or at the end naming the other process); the result is a whole one of them."""
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    small.write_text("".join(f"short text {i}\n" for i in range(50)))
    big.write_text("".join(f"some sentence number {i} with words\n" for i in range(3000)))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = tmp_path / "same.npy"
    runs = [subprocess.Popen([sys.executable, "-m", "bertc", "run", str(builds["st_bert_mean_norm"]), str(txt), "-o",
                              str(result), "-q"], stderr=subprocess.PIPE, env=env) for txt in (big, small)]
    outcomes = [(run.wait(timeout=120), run.stderr.read().decode()) for run in runs]
    assert sorted(code for code, _ in outcomes) == [0, 5], outcomes
    refusal = next(err for code, err in outcomes if code == 5)
    assert "already exists; pass --force" in refusal or "was written by another process while this run ran" in refusal
    assert np.load(result).shape[0] in (50, 3000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt", "same.npy", "small.txt"]


# --- 10: a RESULT name near the limit on a name's length (NAME_MAX) can be written ---------------------------------

@pytest.mark.parametrize("name", ["R" * 240 + ".npy", "R" * 251 + ".npy", "é" * 125 + ".npy"],
                         ids=["244-bytes", "255-bytes", "254-bytes-utf8"])
def test_a_result_name_near_name_max_is_written(tmp_path, name):
    """`.NAME.partial-PID` passed NAME_MAX (255 bytes) for a NAME of 236 bytes or more, and the run was refused
    ("File name too long") though NAME itself is a valid name: its temporary name is now cut to fit, with a hash."""
    assert len(os.fsencode(name)) <= 255
    result = tmp_path / name
    temporary = []
    with run_io.atomic_result(result, "npy", "embedding") as writer:
        writer.write(ROWS)
        temporary = [p.name for p in tmp_path.iterdir()]
    np.testing.assert_array_equal(np.load(result), np.stack(ROWS))
    assert [p.name for p in tmp_path.iterdir()] == [name]
    (partial,) = temporary
    assert len(os.fsencode(partial)) <= 255 and partial.startswith(".") and partial.endswith(f".partial-{os.getpid()}")
    assert partial.startswith(run_io._partial_prefix(result)) and partial != run_io._partial_prefix(tmp_path / "R.npy")


def test_normal_temporary_names_are_unchanged_and_a_long_names_stale_ones_are_removed(tmp_path):
    assert run_io._partial_prefix(tmp_path / "r.npy") == ".r.npy.partial-"
    assert run_io._partial_prefix(tmp_path / ("R" * 235)) == "." + "R" * 235 + ".partial-"
    done = subprocess.Popen([sys.executable, "-c", "pass"])   # a process that is gone: a killed run's
    done.wait()
    long_name = "R" * 248 + ".jsonl"
    prefix = run_io._partial_prefix(tmp_path / long_name)
    assert prefix != run_io._partial_prefix(tmp_path / ("R" * 250 + ".npy"))   # another RESULT's are not its
    gone = tmp_path / f"{prefix}{done.pid}"
    gone.write_bytes(b'{"half a line')
    _write(tmp_path / long_name)
    assert sorted(p.name for p in tmp_path.iterdir()) == [long_name]


# --- found on the way: a closed standard output ---------------------------------------------------------------------

def test_a_closed_standard_output_is_exit_5_not_an_internal_error(builds, tmp_path):
    """`bertc run OUT in.txt -o - >&-`: Python starts with sys.stdout None, and the run died of an AttributeError
    (exit 70, "a bug in bertc")."""
    from bertc.errors import EXIT_OUTPUT

    txt = tmp_path / "in.txt"
    txt.write_text("a dog\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-m", "bertc", "run", str(builds["st_bert_mean_norm"]), str(txt), "-o", "-"],
                         stderr=subprocess.PIPE, env=env, timeout=120, preexec_fn=lambda: os.close(1))
    assert run.returncode == EXIT_OUTPUT, run.stderr.decode()
    _one_clean_error(run.stderr.decode(), "error: -o -: standard output is closed")


@pytest.mark.parametrize("force", [False, True])
def test_threads_of_one_process_writing_one_result_keep_their_own_temporary_files(tmp_path, force):
    """The temporary name was per process (``.RESULT.partial-PID``): threads of one service writing one RESULT
    opened the same file, truncated and wrote over each other, and the first to finish published the mixture
    (invalid JSONL) while the others failed their rename. Each writer now has a file of its own: without --force the
    first result stays whole and the others refuse; with it, one whole result is kept."""
    import json
    import threading

    from bertc.errors import OutputError

    result = tmp_path / "r.jsonl"
    inside, outcomes = threading.Barrier(3), {}
    rows = {k: [np.full(4, k, np.float32)] * (200 + 100 * k) for k in range(3)}   # writer k's rows: all k

    def write(k):
        try:
            with run_io.atomic_result(result, "jsonl", "embedding", force=force) as writer:
                inside.wait()   # all three are writing at once
                for i in range(0, len(rows[k]), 10):
                    writer.write(rows[k][i:i + 10])
            outcomes[k] = "ok"
        except OutputError as exc:
            outcomes[k] = str(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = [json.loads(line) for line in result.read_text().splitlines()]
    writers = {tuple(line) if isinstance(line, list) else json.dumps(line, sort_keys=True) for line in lines}
    assert len(writers) == 1, writers
    k = next(k for k in range(3) if len(rows[k]) == len(lines))
    assert outcomes[k] == "ok"
    if not force:
        assert list(outcomes.values()).count("ok") == 1
        assert all("was written by another process while this run ran" in v for v in outcomes.values() if v != "ok")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_temporary_names_of_threads_are_recognised_as_stale_by_their_process_id():
    assert run_io._partial_pid("1234") == 1234 and run_io._partial_pid("1234.2") == 1234
    assert run_io._partial_pid("x1") == 0 and run_io._partial_pid("12.a") == 0 and run_io._partial_pid("") == 0


# --- a RESULT that is not the user's to replace: a device or pipe, the build's own files ----------------------------

def test_a_result_that_is_a_named_pipe_or_device_is_refused_and_left_as_it_is(tmp_path):
    """A QA report: ``bertc run OUT in.txt -o /dev/null --force`` (to time a run, discarding its output) renamed the
    result over the system's /dev/null, which became a regular file; a named pipe likewise. Refused, forced or not,
    before anything is written (tested on a pipe: never on /dev/null itself)."""
    from bertc.errors import OutputError

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for force in (False, True):
        with pytest.raises(OutputError, match="is not a regular file .*result_path='-'"):
            _write(pipe, "jsonl", force=force)
    assert pipe.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_a_result_naming_one_of_the_builds_own_files_is_refused(builds, tmp_path, capsys):
    """``bertc run OUT in.txt -o OUT/model.optimized.onnx --force`` wrote the result over the build's model (the next
    run: exit 5): the build's files (its manifest's, report.json, summary.txt) are refused as results, through any
    spelling; a new file inside OUT is not the build's and may be written."""
    import shutil

    from bertc.cli import main
    from bertc.errors import EXIT_OUTPUT

    out = tmp_path / "out"
    shutil.copytree(builds["st_bert_mean_norm"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "in.txt").write_text("the cat\n")
    (tmp_path / "link").symlink_to(out / "report.json")
    for result in (out / "model.optimized.onnx", out / "report.json", tmp_path / "out" / ".." / "out" / "spec.json",
                   tmp_path / "link"):
        assert main(["run", str(out), str(tmp_path / "in.txt"), "-o", str(result), "--force",
                     "--result-format", "jsonl"]) == EXIT_OUTPUT
        err = capsys.readouterr().err
        assert "is the build's own" in err and "Traceback" not in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(["run", str(out), str(tmp_path / "in.txt"), "-o", str(out / "mine.jsonl"), "-q"]) == 0
