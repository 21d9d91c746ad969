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
    """run_io's open() of the temporary result (mode "wb") gives ``wrap(file)``."""
    real = open

    def fake(path, mode="r", *args, **kwargs):
        f = real(path, mode, *args, **kwargs)
        return wrap(f) if mode == "wb" else f

    monkeypatch.setattr(run_io, "open", fake, raising=False)


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
