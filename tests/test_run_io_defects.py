"""``bertc run``'s input and output on the inputs that once went wrong: pipes and FIFOs, CSV quirks (long fields,
stray quotes, bad UTF-8), text that is not valid Unicode, Parquet column types, empty inputs, SIGTERM, kept values in
CSV / JSONL results. Each bad input stops with one clear line naming where, a non-zero exit, no traceback and no
partial result; each good one gives one result a row, in order.
"""
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC, EXIT_OUTPUT

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_run import _bertc, _fails, read_result, shared_builds  # noqa: E402


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    return shared_builds(tmp_path_factory, ("st_bert_mean_norm", "bert_seq_cls", "bert_token_cls"))


def _no_leftovers(directory: Path, *expected):
    assert sorted(p.name for p in directory.iterdir()) == sorted(expected)


# --- 1: a pipe or a FIFO is read once ---------------------------------------------------------------------------

def test_a_pipe_or_fifo_input_is_read_once_not_counted_away(builds, tmp_path):
    cls = builds["bert_seq_cls"]
    res = tmp_path / "ps.jsonl"
    run = _bertc(["run", cls, "/dev/stdin", "-o", res, "--input-format", "txt"], b"a dog\nthe cat\n", timeout=120)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    assert len(read_result(res)) == 2
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "wb") as f:
            f.write(b"a dog\nthe cat\nthe red car\n")

    threading.Thread(target=feed, daemon=True).start()
    run = _bertc(["run", cls, fifo, "-o", tmp_path / "f.jsonl", "--input-format", "txt"], timeout=120)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    assert len(read_result(tmp_path / "f.jsonl")) == 3


# --- 2: a Parquet result that fails after its first window --------------------------------------------------------

def test_a_parquet_result_that_fails_late_prints_one_line_and_no_pyarrow_traceback(builds, tmp_path):
    txt = tmp_path / "tb.txt"
    txt.write_text("a dog\n" * 20 + "\nthe cat\n")   # line 21 is empty: after two windows were written
    run = _bertc(["run", builds["bert_seq_cls"], txt, "-o", tmp_path / "tb.parquet", "-q", "--window", "8",
                  "--batch-size", "4"])
    err = run.stderr.decode()
    assert run.returncode == EXIT_BAD_SPEC and "line 21: empty text" in err, err
    assert "Traceback" not in err and "Exception ignored" not in err and err.count("\n") == 1, err
    _no_leftovers(tmp_path, "tb.txt")


# --- 3: a Parquet input's kept columns keep their types ---------------------------------------------------------

def test_kept_columns_of_a_parquet_input_keep_its_types(builds, tmp_path):
    import datetime
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    cls = str(builds["bert_seq_cls"])
    types = {"i32": pa.int32(), "u8": pa.uint8(), "f32": pa.float32(), "ts": pa.timestamp("ms"),
             "dec": pa.decimal128(5, 2), "id": pa.int64()}
    columns = {"i32": [1, 2, 3, 4], "u8": [1, 2, 3, 255], "f32": [1.5, 2.25, None, 4.0],
               "ts": [datetime.datetime(2020, 1, 1, 1, 2, 3, 456000)] * 4,
               "dec": [decimal.Decimal("1.50"), decimal.Decimal("123.25"), None, decimal.Decimal("0.01")],
               "id": [None, None, 3, 4]}   # null first: its type must not come from the first rows
    table = pa.table({**{k: pa.array(v, types[k]) for k, v in columns.items()},
                      "text": ["a dog", "x", "the cat", "y"]})
    pq.write_table(table, tmp_path / "in.parquet")
    pq.write_table(table.slice(0, 0), tmp_path / "empty.parquet")
    keep = ",".join(types)
    for name in ("in", "empty"):
        res = tmp_path / f"{name}.res.parquet"
        assert main(["run", cls, str(tmp_path / f"{name}.parquet"), "-o", str(res), "--keep-fields", keep,
                     "--window", "2", "--batch-size", "1", "-q"]) == 0
        got = pq.read_table(res)
        assert {k: got.schema.field(k).type for k in types} == types
        assert [{k: r[k] for k in types} for r in got.to_pylist()] == table.select(list(types)).slice(
            0, got.num_rows).to_pylist()
        assert got.num_rows == (4 if name == "in" else 0)


def test_kept_jsonl_values_are_typed_by_every_line_not_converted_to_the_first_rows_type(builds, tmp_path, capsys):
    """A Parquet result's kept columns were typed by the first window's values and later values converted to fit:
    a float after integers truncated (2.5 -> 2), an object's new key dropped, a field null in the first window and
    filled later refused; exit 0 for the first two. A JSONL file's lines are now all read for the types first;
    standard input (read once) keeps the first rows' types and refuses a value that needs another."""
    import pyarrow.parquet as pq

    cls = str(builds["bert_seq_cls"])
    texts = ["a dog", "the cat", "x", "y", "the dog", "a cat"]
    rows = [{"text": t, "price": i, "v": [i], "meta": {"a": i}, "url": None} for i, t in enumerate(texts)]
    rows[-1].update(price=2.5, v=[1.5, 0.99], meta={"b": "kept"}, url="https://example.org")
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = tmp_path / "r.parquet"
    assert main(["run", cls, str(path), "-o", str(res), "--keep-fields", "price,v,meta,url", "--window", "2",
                 "--batch-size", "1", "-q"]) == 0
    got = pq.read_table(res)
    assert [str(got.schema.field(k).type) for k in ("price", "v", "url")] == ["double", "list<element: double>",
                                                                           "string"]
    assert got.column("price").to_pylist() == [0, 1, 2, 3, 4, 2.5]
    assert got.column("v").to_pylist()[-1] == [1.5, 0.99]
    assert got.column("meta").to_pylist()[0] == {"a": 0, "b": None}
    assert got.column("meta").to_pylist()[-1] == {"a": None, "b": "kept"}
    assert got.column("url").to_pylist() == [None] * 5 + ["https://example.org"]
    # standard input: the first rows' type holds, a value that needs another stops the run, nothing written
    for field, found, was in (("price", "double", "values of type int64"), ("meta", "struct<a: int64, b: string>",
                                                                           "values of type struct<a: int64>"),
                              ("url", "string", "no value (null)")):
        out = tmp_path / f"stdin_{field}.parquet"
        run = _bertc(["run", cls, "-", "--input-format", "jsonl", "-o", out, "--keep-fields", field, "--window", "2",
                      "--batch-size", "1", "-q"], path.read_bytes(), timeout=120)
        assert run.returncode == EXIT_OUTPUT, run.stderr
        assert f"--keep-fields {field}: a value of type {found} after the first rows' {was}" in run.stderr.decode()
        assert not out.exists()
    # a pipe given by name (/dev/stdin, a FIFO) is read once: typed by its first rows, every row in the result
    ints = "".join(json.dumps({"text": t, "price": i}) + "\n" for i, t in enumerate(texts)).encode()
    out = tmp_path / "dev_stdin.parquet"
    run = _bertc(["run", cls, "/dev/stdin", "--input-format", "jsonl", "-o", out, "--keep-fields", "price", "-q"],
                 ints, timeout=120)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    assert pq.read_table(out).column("price").to_pylist() == list(range(len(texts)))
    # a file whose values no one type holds is refused before the model runs, naming the line
    rows[3]["price"] = "n/a"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _fails(["run", cls, str(path), "-o", str(tmp_path / "bad.parquet"), "--keep-fields", "price", "-q"], capsys,
           EXIT_OUTPUT, f"--keep-fields price: {path}: line 4: a value of type string after values of type int64")
    assert not (tmp_path / "bad.parquet").exists()


# --- 4, 5, 6: CSV / TSV: long fields, bad UTF-8 and stray quotes named by their line --------------------------------

def test_a_csv_header_naming_a_column_twice_is_refused_for_what_it_is(builds, tmp_path, capsys):
    """``text,text`` over ``first,second`` was refused as "line 2: 1 field(s), the header has 2" (the reader keeps
    one of two columns of one name): the row had two."""
    path = tmp_path / "twice.csv"
    path.write_text("id,text,id\n1,a dog,2\n")
    _fails(["run", str(builds["bert_seq_cls"]), str(path), "-o", str(tmp_path / "r.jsonl"), "-q"], capsys,
           EXIT_BAD_SPEC, f"{path}: line 1: the header names the column 'id' twice; give each column its own name")
    assert not (tmp_path / "r.jsonl").exists()


def test_a_file_name_too_long_for_the_file_system_is_an_error_not_a_bug(builds, tmp_path, capsys):
    """An INPUT or RESULT name over 255 bytes was "internal error (a bug in bertc ...): OSError", exit 70."""
    (tmp_path / "in.txt").write_text("a dog\n")
    long = "a" * 300
    for args in ([str(tmp_path / "in.txt"), "-o", str(tmp_path / f"{long}.jsonl")],
                 [str(tmp_path / f"{long}.txt"), "-o", str(tmp_path / "r.jsonl")]):
        err = _fails(["run", str(builds["bert_seq_cls"]), *args, "-q"], capsys, EXIT_BAD_SPEC,
                     f"{long}", "the name is too long for the file system")
        assert "internal error" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_a_blank_line_of_a_one_column_csv_is_an_empty_text_not_skipped(builds, tmp_path, capsys):
    """A tester: "text\\na\\n\\nb" gave 2 results for 3 rows, exit 0 (the csv module skips blank lines), while a
    whitespace-only line there, or a blank line of a .txt, is refused as an empty text."""
    cls = str(builds["bert_seq_cls"])
    one = tmp_path / "one.csv"
    one.write_text("text\na dog\n\nthe cat\n")
    _fails(["run", cls, str(one), "-o", str(tmp_path / "r.jsonl"), "-q"], capsys, EXIT_BAD_SPEC, "line 3: empty text")
    assert not (tmp_path / "r.jsonl").exists()
    # several columns: a blank line holds no row (skipped, as pandas does); a blank line inside quotes is text
    several = tmp_path / "several.csv"
    several.write_text('id,text\n1,a dog\n\n2,"the\n\ncat"\n')
    assert main(["run", cls, str(several), "-o", str(tmp_path / "r.jsonl"), "--keep-fields", "id", "-q"]) == 0
    assert [r["id"] for r in read_result(tmp_path / "r.jsonl")] == ["1", "2"]
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('text\n"a\n\ndog"\nthe cat\n')
    assert main(["run", cls, str(quoted), "-o", str(tmp_path / "q.jsonl"), "-q"]) == 0
    assert len(read_result(tmp_path / "q.jsonl")) == 2


def test_blank_lines_of_a_jsonl_file_hold_no_row(builds, tmp_path, capsys):
    """A trailing blank line (an editor's, a concatenation's) stopped the run as an 'empty line'; pandas and pyarrow
    skip blank JSON lines. A line naming a later error still counts the blank ones; an empty text is still refused."""
    cls = str(builds["bert_seq_cls"])
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a dog", "id": 1}\n\n \t\r\n{"text": "the cat", "id": 2}\n\n')
    res = tmp_path / "r.jsonl"
    assert main(["run", cls, str(path), "-o", str(res), "--keep-fields", "id", "-q"]) == 0
    assert [r["id"] for r in read_result(res)] == [1, 2]
    path.write_text('{"text": "a dog"}\n\n{"text": ""}\n')
    _fails(["run", cls, str(path), "-o", str(tmp_path / "e.jsonl"), "-q"], capsys, EXIT_BAD_SPEC, "line 3: empty text")
    path.write_text('{"text": "a dog"}\n\u00a0\n')        # not JSON white space: not a blank line
    _fails(["run", cls, str(path), "-o", str(tmp_path / "e.jsonl"), "-q"], capsys, EXIT_BAD_SPEC, "line 2: not JSON")


def test_a_csv_field_over_128_kib_is_read(builds, tmp_path):
    import csv

    path = tmp_path / "long.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["text", "id"], ["a dog " * 30000, "1"], ['the cat, "big"\nand more', "2"],
                                 ["the dog", "3"]])
    res = tmp_path / "r.jsonl"
    assert main(["run", str(builds["bert_seq_cls"]), str(path), "-o", str(res), "--truncate", "--keep-fields", "id",
                 "-q"]) == 0
    assert [r["id"] for r in read_result(res)] == ["1", "2", "3"]


def test_bad_utf8_in_csv_is_named_by_its_line(builds, tmp_path, capsys):
    cls = str(builds["bert_seq_cls"])
    path = tmp_path / "bad.csv"
    path.write_bytes(b'text\na dog\n"the \xff cat"\n')
    _fails(["run", cls, str(path), "-o", str(tmp_path / "r.jsonl")], capsys, EXIT_BAD_SPEC,
           f"{path}: line 3: not UTF-8 text")
    tsv = tmp_path / "bad.tsv"
    tsv.write_bytes(b'id\ttext\n1\ta dog\n2\tthe cat\n3\tthe \xc3 dog\n')
    _fails(["run", cls, str(tsv), "-o", str(tmp_path / "r.jsonl")], capsys, EXIT_BAD_SPEC,
           f"{tsv}: line 4: not UTF-8 text")
    run = _bertc(["run", cls, "-", "-o", "-", "--input-format", "csv"], path.read_bytes())
    assert run.returncode == EXIT_BAD_SPEC and b"error: standard input: line 3: not UTF-8 text" in run.stderr
    assert b"Traceback" not in run.stderr
    _no_leftovers(tmp_path, "bad.csv", "bad.tsv")


def test_a_stray_or_unclosed_quote_stops_with_its_line_not_a_silent_merge(builds, tmp_path, capsys):
    cls = str(builds["bert_seq_cls"])
    res = tmp_path / "r.jsonl"
    tsv = tmp_path / "q.tsv"
    tsv.write_text('id\ttext\n1\t"Stop" he said\n2\t"I am the cat\n3\tthe dog ran\n4\tthe red car\n')
    _fails(["run", cls, str(tsv), "-o", str(res)], capsys, EXIT_BAD_SPEC,
           f"{tsv}: line 2: not valid TSV: a quote inside a field that is not quoted whole")
    tsv.write_text('id\ttext\n1\tStop he said\n2\t"I am the cat\n3\tthe dog ran\n4\tthe red car\n')
    _fails(["run", cls, str(tsv), "-o", str(res)], capsys, EXIT_BAD_SPEC,
           f"{tsv}: line 3: not valid TSV: a quoted field that is never closed", "end of the input, line 5")
    tsv.write_text('id\ttext\n1\tStop\n2\t"I am the cat\n3\tthe dog ran\n4\t"the red car"\n')
    _fails(["run", cls, str(tsv), "-o", str(res)], capsys, EXIT_BAD_SPEC, f"{tsv}: line 5: not valid TSV",
           "the row began in line 3")
    _no_leftovers(tmp_path, "q.tsv")
    # valid quoting still reads: delimiters, line breaks and doubled quotes inside quoted fields, CRLF line ends
    good = tmp_path / "good.csv"
    good.write_bytes(b'id,text\r\n1,"a dog, a cat"\r\n2,"the cat\r\nsat ""here"""\r\n3,it said "hi" once\r\n')
    assert main(["run", cls, str(good), "-o", str(res), "--keep-fields", "id", "-q"]) == 0
    assert [r["id"] for r in read_result(res)] == ["1", "2", "3"]
    # a row of more fields than the header lost the extra ones (an unquoted comma cut its text short), exit 0;
    # one of fewer got "" for the missing ones
    bad = tmp_path / "fields.csv"
    bad.write_text("id,text\n1,a dog\n2,hello, world the cat\n")
    _fails(["run", cls, str(bad), "-o", str(res), "--force"], capsys, EXIT_BAD_SPEC,
           f"{bad.name}: line 3: 3 field(s), the header has 2 (a text holding the delimiter must be quoted)")
    bad.write_text("text,id,extra\na dog,1\n")
    _fails(["run", cls, str(bad), "-o", str(res), "--force", "--keep-fields", "id"], capsys, EXIT_BAD_SPEC,
           f"{bad.name}: line 2: 2 field(s), the header has 3")


# --- 7: text that is not valid Unicode ----------------------------------------------------------------------------

def test_lone_surrogates_are_refused_naming_the_line_and_field(builds, tmp_path, capsys):
    import bertc
    from bertc.errors import InputError

    cls = str(builds["bert_seq_cls"])
    res = tmp_path / "r.jsonl"
    jl = tmp_path / "s.jsonl"
    jl.write_text('{"text": "a dog"}\n{"text": "a \\ud800 dog"}\n')
    _fails(["run", cls, str(jl), "-o", str(res)], capsys, EXIT_BAD_SPEC,
           f"{jl}: line 2: field 'text' is not valid Unicode: a lone surrogate")
    jl.write_text('{"text": "a dog", "context": "the cat \\udc01"}\n')
    _fails(["run", cls, str(jl), "-o", str(res), "--pair-field", "context"], capsys, EXIT_BAD_SPEC,
           f"{jl}: line 1: field 'context' is not valid Unicode")
    for kept in ('"x\\ud800"', '{"k": ["x\\ud800"]}'):
        for suffix in (".jsonl", ".csv", ".parquet"):
            jl.write_text('{"text": "a dog", "id": "x"}\n{"text": "a dog", "id": %s}\n' % kept)
            _fails(["run", cls, str(jl), "-o", str(tmp_path / f"r{suffix}"), "--keep-fields", "id"], capsys,
                   EXIT_BAD_SPEC, f"{jl}: line 2: kept field 'id' is not valid Unicode")
    _no_leftovers(tmp_path, "s.jsonl")
    rt = bertc.Runtime(cls)
    with pytest.raises(InputError, match="text 2: the text is not valid Unicode"):
        rt.run(["a dog", "a \ud800 dog"])
    with pytest.raises(InputError, match="text 1: the pair is not valid Unicode"):
        rt.run([("a dog", "the \udfff cat")])


# --- 8: an empty input's embeddings have the width and type a non-empty one's have ----------------------------------

def test_an_empty_inputs_embeddings_have_the_shape_and_type_of_a_non_empty_ones(builds, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    st = str(builds["st_bert_mean_norm"])
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "some.txt").write_text("a dog\nthe cat sat\n")
    assert main(["run", st, str(tmp_path / "some.txt"), "-o", str(tmp_path / "cal.npy"), "-q"]) == 0
    for precision in ("float32", "ubinary", "binary", "int8"):
        options = ["--embedding-precision", precision] + (
            ["--calibration-embeddings", str(tmp_path / "cal.npy")] if precision == "int8" else [])
        for suffix in (".npy", ".parquet"):
            got = {}
            for name in ("empty", "some"):
                res = tmp_path / f"{name}.{precision}{suffix}"
                assert main(["run", st, str(tmp_path / f"{name}.txt"), "-o", str(res), "-q", *options]) == 0
                got[name] = np.load(res) if suffix == ".npy" else pq.read_table(res)
            if suffix == ".npy":
                assert got["empty"].shape == (0, got["some"].shape[1]) and got["empty"].dtype == got["some"].dtype
            else:
                assert got["empty"].schema == got["some"].schema, (got["empty"].schema, got["some"].schema)
                assert pa.concat_tables([got["empty"], got["some"]]).num_rows == 2   # shards concatenate


# --- 9: SIGTERM cleans up as Ctrl-C does ------------------------------------------------------------------------

@pytest.mark.parametrize("signame, word", [("SIGTERM", "terminated"), ("SIGHUP", "hung up (SIGHUP)")])
def test_sigterm_and_sighup_remove_the_partial_result_and_exit_143_and_129(builds, tmp_path, signame, word):
    """SIGHUP (a tester: the terminal or ssh session of a long run closed) ended the run where it stood, exit 129, no
    word, its .RESULT.partial-PID (gigabytes on a large job) and the folder -o made left behind: it unwinds as
    SIGTERM does now, with its own exit status."""
    import signal
    import subprocess
    import time

    txt = tmp_path / "big.txt"
    txt.write_text("the cat sat on the mat and a dog\n" * 200000)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "bertc", "run", str(builds["st_bert_mean_norm"]), str(txt), "-o",
                             str(tmp_path / "big.npy"), "-q", "--window", "64"], stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".big.npy.partial-") for p in tmp_path.iterdir()):   # it is writing
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    proc.send_signal(getattr(signal, signame))
    assert proc.wait(timeout=60) == 128 + getattr(signal, signame)
    err = proc.stderr.read().decode()
    assert err == f"{word}; nothing was written\n", err
    _no_leftovers(tmp_path, "big.txt")


def test_a_closed_terminal_unwinds_a_run_with_129(builds, tmp_path):
    """A reviewer: a terminal really closed (not kill -HUP: the progress bar's terminal then fails every write with
    EIO) ended bertc run with exit 1, the write error of the progress bar's last line replacing the hang-up."""
    import fcntl
    import pty
    import select
    import signal
    import subprocess
    import termios
    import time

    txt = tmp_path / "big.txt"
    txt.write_text("the cat sat on the mat and a dog\n" * 1000000)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    master, slave = pty.openpty()

    def controlling_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "-m", "bertc", "run", str(builds["st_bert_mean_norm"]), str(txt), "-o",
                             str(tmp_path / "big.npy"), "--window", "64"], stdin=slave, stdout=slave, stderr=slave,
                            env=env, preexec_fn=controlling_terminal, close_fds=True)
    os.close(slave)
    seen, deadline = b"", time.monotonic() + 120
    while b"texts/s" not in seen:   # its progress bar is on the terminal
        assert proc.poll() is None and time.monotonic() < deadline, seen.decode(errors="replace")[-2000:]
        if select.select([master], [], [], 0.1)[0]:
            seen += os.read(master, 65536)
    os.close(master)   # the terminal goes away: SIGHUP, and every later write to it fails
    assert proc.wait(timeout=60) == 128 + signal.SIGHUP
    _no_leftovers(tmp_path, "big.txt")


def test_a_signal_once_the_result_is_written_says_so(builds, tmp_path, monkeypatch, capsys):
    """A signal as the run left its signal handlers' context, RESULT written in full, said 'nothing was written'."""
    import contextlib

    import bertc.cli as cli

    unwinds = cli._sigterm_unwinds

    @contextlib.contextmanager
    def then_interrupted():
        with unwinds():
            yield
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_sigterm_unwinds", then_interrupted)
    (tmp_path / "in.txt").write_text("a dog\nthe cat\n")
    res = tmp_path / "r.jsonl"
    assert main(["run", str(builds["bert_seq_cls"]), str(tmp_path / "in.txt"), "-o", str(res), "-q"]) == 130
    assert capsys.readouterr().err == f"interrupted after {res} was written: it holds all 2 result(s)\n"
    assert len(read_result(res)) == 2


# --- 10: kept JSON values in CSV results, kept NaN in JSONL results --------------------------------------------------

def test_kept_json_values_are_json_in_csv_and_a_kept_nan_is_null_in_jsonl(builds, tmp_path):
    import csv

    cls = str(builds["bert_seq_cls"])
    jl = tmp_path / "k.jsonl"
    jl.write_text('{"text": "a dog", "m": {"a": [1, 2]}, "b": true, "f": NaN, "l": [1.5, Infinity], "n": null}\n'
                  '{"text": "the cat", "m": [], "b": false, "f": 2.5, "l": ["x"], "n": "y"}\n')
    keep = ["--keep-fields", "m,b,f,l,n", "-q"]
    assert main(["run", cls, str(jl), "-o", str(tmp_path / "r.csv"), *keep]) == 0
    with open(tmp_path / "r.csv", newline="") as f:
        rows = [row[:5] for row in csv.reader(f)]
    assert rows[1:] == [['{"a": [1, 2]}', "true", "nan", "[1.5, null]", ""], ["[]", "false", "2.5", '["x"]', "y"]]
    assert main(["run", cls, str(jl), "-o", str(tmp_path / "r.jsonl"), *keep]) == 0
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    got = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} is no JSON")) for line in lines]
    assert [{k: r[k] for k in "mbfln"} for r in got] == [
        {"m": {"a": [1, 2]}, "b": True, "f": None, "l": [1.5, None], "n": None},
        {"m": [], "b": False, "f": 2.5, "l": ["x"], "n": "y"}]


# --- 11: a null text is named as null ----------------------------------------------------------------------------

def test_a_null_text_is_named_null_not_empty(builds, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cls = str(builds["bert_seq_cls"])
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": ["a dog", "the cat", None], "context": ["x", None, "y"]}), path)
    _fails(["run", cls, str(path), "-o", str(tmp_path / "r.jsonl")], capsys, EXIT_BAD_SPEC,
           f"{path}: row 3: field 'text' is null (missing)")
    _fails(["run", cls, str(path), "-o", str(tmp_path / "r.jsonl"), "--pair-field", "context"], capsys,
           EXIT_BAD_SPEC, f"{path}: row 2: field 'context' is null (missing)")
    jl = tmp_path / "n.jsonl"
    jl.write_text('{"text": "a dog"}\n{"text": null}\n')
    _fails(["run", cls, str(jl), "-o", str(tmp_path / "r.jsonl")], capsys, EXIT_BAD_SPEC,
           f"{jl}: line 2: field 'text' is null (missing)")
    _no_leftovers(tmp_path, "n.parquet", "n.jsonl")


# --- 12: the result may not be the input ------------------------------------------------------------------------

def test_a_result_that_is_the_input_is_refused_even_with_force(builds, tmp_path, capsys):
    from bertc.errors import EXIT_OUTPUT

    st = str(builds["st_bert_mean_norm"])
    jl = tmp_path / "in.jsonl"
    jl.write_text('{"text": "a dog"}\n')
    (tmp_path / "link.jsonl").symlink_to(jl)
    for result in (jl, tmp_path / "link.jsonl", tmp_path / ".." / tmp_path.name / "in.jsonl"):
        _fails(["run", st, str(jl), "-o", str(result), "--force"], capsys, EXIT_OUTPUT,
               f"is the input {jl} itself; the result would replace the input")
    assert jl.read_text() == '{"text": "a dog"}\n'
    _no_leftovers(tmp_path, "in.jsonl", "link.jsonl")


# --- a lone CR (an old Mac's line end) ends a line ----------------------------------------------------------------

def test_a_lone_cr_ends_a_line_in_txt(builds, tmp_path, capsys):
    cls = str(builds["bert_seq_cls"])
    txt = tmp_path / "mac.txt"
    txt.write_bytes(b"a dog\rthe cat\rthe red car\r")
    assert main(["run", cls, str(txt), "-o", str(tmp_path / "r.jsonl"), "-q"]) == 0
    assert len(read_result(tmp_path / "r.jsonl")) == 3
    txt.write_bytes(b"a dog\r\rthe cat\r")
    _fails(["run", cls, str(txt), "-o", str(tmp_path / "s.jsonl")], capsys, EXIT_BAD_SPEC, f"{txt}: line 2: empty text")


# --- a .txt has no fields: an empty side of a tab is named as such ------------------------------------------------

def test_an_empty_side_of_a_tab_in_txt_is_named(builds, tmp_path, capsys):
    """A .txt line's tab separates a text and its pair; an empty side is named by its place (before: "empty text
    in field 'pair'", a field a .txt does not have)."""
    cls = str(builds["bert_seq_cls"])
    txt = tmp_path / "pairs.txt"
    for content, message in ((b"a dog\tthe cat\n\tthe cat\n", "line 2: empty text before the tab"),
                             (b"a dog\tthe cat\nthe cat\t \n", "line 2: empty pair after the tab")):
        txt.write_bytes(content)
        err = _fails(["run", cls, str(txt), "-o", str(tmp_path / "r.jsonl")], capsys, EXIT_BAD_SPEC, message)
        assert "field" not in err
        assert not (tmp_path / "r.jsonl").exists()


# --- a job killed outright leaves its temporary file: the next run to the same RESULT removes it -----------------

def test_the_next_run_removes_the_temporary_files_of_killed_runs_and_no_live_ones(builds, tmp_path):
    """SIGKILL (or the out-of-memory killer) leaves ``.RESULT.partial-PID`` behind, which nothing removed, even a
    later run to the same RESULT. That run now removes each whose process is gone; a live run's stays: its process
    running here, or its file locked (a run on another machine sharing the folder)."""
    import fcntl
    import subprocess

    dead = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2)]
    for p in dead:
        p.wait()
    live = subprocess.Popen(["sleep", "300"])
    try:
        gone = tmp_path / f".r.jsonl.partial-{dead[0].pid}"
        kept = [tmp_path / f".r.jsonl.partial-{live.pid}", tmp_path / f".r.jsonl.partial-{dead[1].pid}",
                tmp_path / f".other.jsonl.partial-{dead[0].pid}", tmp_path / ".r.jsonl.partial-x1"]
        for path in [gone, *kept]:
            path.write_bytes(b'{"half a line')
        with open(kept[1], "rb+") as locked:   # held by a run elsewhere
            fcntl.flock(locked, fcntl.LOCK_EX)
            txt = tmp_path / "in.txt"
            txt.write_text("a dog\nthe cat\n")
            assert main(["run", str(builds["bert_seq_cls"]), str(txt), "-o", str(tmp_path / "r.jsonl"), "-q"]) == 0
    finally:
        live.kill()
        live.wait()
    assert len(read_result(tmp_path / "r.jsonl")) == 2
    _no_leftovers(tmp_path, "in.txt", "r.jsonl", *(p.name for p in kept))


def test_a_leftover_with_this_process_id_is_removed_and_a_live_thread_s_kept(tmp_path):
    """A container's service is PID 1 on every start: a `.RESULT.partial-1` an earlier (killed) run left was never
    removed (this process's own files were always taken for live). Now only a locked one is: another thread's."""
    import fcntl
    import os

    from bertc import run_io

    result = tmp_path / "r.jsonl"
    old = tmp_path / f".r.jsonl.partial-{os.getpid()}"             # an earlier process's, with this PID
    live = tmp_path / f".r.jsonl.partial-{os.getpid()}.2"          # a thread of this process writing now
    for path in (old, live):
        path.write_bytes(b'{"half a line')
    with open(live, "rb+") as writing:
        fcntl.flock(writing, fcntl.LOCK_EX)
        with run_io.atomic_result(result, "jsonl", "embedding") as writer:
            writer.write([np.ones(2, np.float32)])
        assert not old.exists() and live.exists()
    assert result.read_text().count("\n") == 1


# --- a stop signal ends a stream on a whole record --------------------------------------------------------------

def test_sigterm_ends_a_stream_to_a_slow_reader_on_a_whole_line(builds, tmp_path):
    """`bertc run OUT big.txt -o - | slow-reader` stopped by SIGTERM ended its output on half a JSON line every time
    (the write the signal interrupted was cut where it stood): a reader appending to a file (`-o - >> r.jsonl`) or
    parsing line by line was left a broken line. The record half written is finished first now."""
    import signal
    import subprocess
    import time

    txt = tmp_path / "big.txt"
    txt.write_text("the cat sat on the mat and a dog\n" * 100000)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "bertc", "run", str(builds["bert_seq_cls"]), str(txt), "-o", "-",
                             "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    data, deadline = b"", time.monotonic() + 120
    while len(data) < 150000:   # read slowly, so that bertc waits in a write
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
        data += proc.stdout.read1(1000)
        time.sleep(0.001)
    time.sleep(0.3)   # the pipe fills: bertc is inside a write
    proc.send_signal(signal.SIGTERM)
    data += proc.stdout.read()
    assert proc.wait(timeout=60) == 143
    assert proc.stderr.read().decode() == "terminated\n"
    assert data.endswith(b"\n") and len(data) < len(txt.read_text()) * 3
    rows = [json.loads(line) for line in data.decode().splitlines()]
    assert rows and all(set(r) == {"label", "label_id", "score", "scores"} for r in rows)


class _Stop(BaseException):
    pass


def _stop_on(signum):
    def handler(s, frame):
        raise _Stop(s)
    return handler


def test_a_stop_signal_waits_for_the_record_half_written_then_is_handled(monkeypatch):
    """Unit: a CSV record with a line break inside a quoted field is one record (the stream does not stop at its
    inner line end); the signal's own handler runs once the record is whole; every handler is put back."""
    import signal
    import time

    from bertc import run_io

    r, w = os.pipe()
    records = [b'"a\nb,' + b"x" * 200000 + b'",1\n', b"second,2\n" * 100000]   # each more than a pipe holds
    data = b"".join(records)
    ends = [len(records[0]), len(data)]
    got, sent = bytearray(), []

    def slow_reader():
        while True:
            chunk = os.read(r, 512)
            if not chunk:
                return
            got.extend(chunk)
            if len(got) >= 1024 and not sent:   # the writer is inside the first record
                sent.append(True)
                os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.0005)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGHUP)}
    old = signal.signal(signal.SIGTERM, _stop_on(signal.SIGTERM))
    reader = threading.Thread(target=slow_reader)
    reader.start()
    try:
        sink = run_io._Sink(os.fdopen(w, "wb", buffering=0, closefd=False), "standard output", "the results")
        with pytest.raises(_Stop):
            run_io._write_records(sink, memoryview(data), ends)
        assert signal.getsignal(signal.SIGTERM).__name__ == "handler"
        assert {s: signal.getsignal(s) for s in before} == before
    finally:
        signal.signal(signal.SIGTERM, old)
        os.close(w)
        reader.join(timeout=30)
        os.close(r)
    assert bytes(got) == records[0]   # the first record whole, nothing of the second


def test_a_stop_signal_gives_a_reader_that_reads_nothing_a_bounded_wait(monkeypatch):
    """A reader of standard output that stopped reading: the stop is handled after STOP_GRACE seconds, the record
    cut (there is no other way to end), not never."""
    import signal
    import time

    from bertc import run_io

    monkeypatch.setattr(run_io, "STOP_GRACE", 0.5)
    r, w = os.pipe()
    data = b"y" * (1 << 20) + b"\n"
    old = signal.signal(signal.SIGTERM, _stop_on(signal.SIGTERM))
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        sink = run_io._Sink(os.fdopen(w, "wb", buffering=0, closefd=False), "standard output", "the results")
        began = time.monotonic()
        timer.start()
        with pytest.raises(_Stop):
            run_io._write_records(sink, memoryview(data), [len(data)])
        assert 0.7 < time.monotonic() - began < 5
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, old)
        os.close(w)
        os.close(r)


def test_a_stream_written_from_another_thread_defers_no_signal():
    """Signal handlers are the main thread's: a stream written from a worker thread (a service's Runtime.run_file to
    standard output) leaves them as they are and writes all."""
    import signal

    from bertc import run_io

    r, w = os.pipe()
    seen, done = {}, []

    def worker():
        with run_io._stops_deferred() as noted:
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            seen["noted"] = noted
        sink = run_io._Sink(os.fdopen(w, "wb", buffering=0, closefd=False), "standard output", "the results")
        run_io._write_records(sink, memoryview(b"a\nb\n"), [2, 4])
        done.append(True)

    handler = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=worker)
    t.start()
    t.join(timeout=30)
    os.close(w)
    assert done and seen["handler"] is handler and seen["noted"] == []
    assert os.read(r, 100) == b"a\nb\n"
    os.close(r)


def test_a_signal_while_the_handlers_are_swapped_leaves_none_swapped(monkeypatch):
    """A reviewer: a SIGTERM raised while _stops_deferred swapped the handlers in (SIGINT's swapped, SIGTERM's not
    yet) left SIGINT on the noting handler for good: Ctrl-C swallowed from then on."""
    import signal

    from bertc import run_io

    real = signal.signal
    calls = []

    def signal_then_term(signum, handler):
        previous = real(signum, handler)
        calls.append(signum)
        if len(calls) == 1:   # SIGINT swapped: SIGTERM comes now, its handler still the caller's
            raise _Stop(signal.SIGTERM)
        return previous

    sigint, sigterm = signal.getsignal(signal.SIGINT), real(signal.SIGTERM, _stop_on(signal.SIGTERM))
    try:
        monkeypatch.setattr(signal, "signal", signal_then_term)
        with pytest.raises(_Stop):
            with run_io._stops_deferred():
                pass
        monkeypatch.setattr(signal, "signal", real)
        assert signal.getsignal(signal.SIGINT) is sigint
    finally:
        real(signal.SIGTERM, sigterm)
        real(signal.SIGINT, sigint)


def test_a_stop_signal_whose_handler_returns_loses_no_record(monkeypatch):
    """A reviewer: a program's SIGHUP handler that reopens its logs (returns, raises nothing) came while a batch was
    streamed: the rest of the batch was dropped (95,443 of 100,000 lines arrived, run_file saying 100,000)."""
    import signal
    import time

    from bertc import run_io

    r, w = os.pipe()
    data = b"".join(b"record %06d\n" % i for i in range(20000))
    ends = [12 * (i + 1) for i in range(20000)]
    got, heard = bytearray(), []

    def slow_reader():
        while chunk := os.read(r, 4096):
            got.extend(chunk)
            if len(got) >= 8192 and len(heard) < 3 and not getattr(slow_reader, "sent", 0) > len(heard):
                slow_reader.sent = len(heard) + 1
                os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.0005)

    old = signal.signal(signal.SIGHUP, lambda s, f: heard.append(s))
    reader = threading.Thread(target=slow_reader)
    reader.start()
    try:
        sink = run_io._Sink(os.fdopen(w, "wb", buffering=0, closefd=False), "standard output", "the results")
        run_io._write_records(sink, memoryview(data), ends)
    finally:
        signal.signal(signal.SIGHUP, old)
        os.close(w)
        reader.join(timeout=30)
        os.close(r)
    assert heard and bytes(got) == data


def test_two_stop_signals_in_one_deferred_batch_are_both_handled():
    """A reviewer: a SIGHUP whose handler returns and then Ctrl-C in one deferred batch: only the first was handled,
    the Ctrl-C lost."""
    import signal

    from bertc import run_io

    heard = []
    old_hup = signal.signal(signal.SIGHUP, lambda s, f: heard.append("hup"))
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with run_io._stops_deferred() as noted:
                os.kill(os.getpid(), signal.SIGHUP)
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGHUP)
                for _ in range(1000):   # the handlers run between bytecodes
                    if len(noted) == 3:
                        break
        assert heard == ["hup"]
    finally:
        signal.signal(signal.SIGHUP, old_hup)
        signal.signal(signal.SIGINT, old_int)
