"""Streaming readers and writers of ``bertc run``: text in, results out, never a whole file in memory.

A reader yields :class:`Record` s (the text, its optional pair, and where it is in the input, for error
messages) one at a time from a .txt (one text per line, a tab before the pair), JSONL, CSV/TSV or
Parquet file. A writer takes results in input order, batch by batch, into a temporary file beside the
result (``.RESULT.partial-PID``) that :func:`atomic_result` puts at RESULT only once everything was written (without
``--force`` only where nothing appeared there meanwhile): an error, Ctrl-C or SIGTERM removes it and leaves RESULT as
it was; a job killed outright (SIGKILL, the out-of-memory killer) leaves no partial RESULT either, only its temporary
file, which the next run to the same RESULT removes (:func:`_remove_stale_partials`). ``-`` is standard input (text
formats: .txt by default, JSONL, CSV / TSV) or standard output (JSONL by default, or CSV), for pipelines: results
are written there batch by batch, in input order, and an error stops the stream (the exit code says so). In a .txt,
CSV or TSV input a lone CR (an old Mac's line end) ends a line as LF and CRLF do.

Result rows come from :mod:`bertc.runtime`: an embedding is a float32 vector; a classification is
``{"label", "label_id", "score", "scores"}``; a span ``{"start", "end", "text", "score"}`` (with a top k: ``{"answers": [...]}``); tags are
``{"tags": [{"word", "start", "end", "in", "label", "score"}, ...], "entities": [{"label", "start", "end",
"in", "text", "score"}, ...]}`` (``in``: the text or its pair); a fill-mask result
``{"sequence", "masks": [{"start", "end", "in", "predictions": [{"token", "token_id", "score"}, ...]}, ...]}``; a
zero-shot result ``{"labels", "scores"}`` (likeliest first); a sentence pair's ``{"similarity"}``; a multiple-choice
result ``{"choice", "answer", "score", "scores"}`` (the likeliest choice's index and text, and every choice's
probability in the input's order); a ranking ``{"ranking": [{"index", "text", "score"}, ...]}`` (best first).

``keep``: fields of the input (an id, a URL) copied into each result row beside the result (JSONL, CSV and Parquet
results; the record carries their values, in the input's types, to the writer).

A multiple-choice model's record carries its choices (a ranking's, its query's documents): in a .txt, tabs separate
the text from each choice; in JSONL, CSV and Parquet, ``choices_field`` names one field holding the list (in CSV, a
JSON array) or several fields holding one choice each.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import re
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from bertc.errors import InputError, MissingLibrary, OutputError, said
from bertc.requirements import pip_install

INPUT_FORMATS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
                 ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
RESULT_FORMATS = {".npy": "npy", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
                  ".pq": "parquet"}
STDIO = "-"   # INPUT / RESULT: standard input / output
STDOUT_FORMATS = ("jsonl", "csv")   # the result formats written as a stream (.npy rewrites its header at the end)
KINDS_BY_RESULT_FORMAT = {"npy": ("embedding",),
                          "csv": ("embedding", "classification", "span", "choice", "similarity"),
                          "jsonl": ("embedding", "classification", "span", "spans", "tags", "fill_mask", "zero_shot",
                                    "choice", "similarity", "rank"),
                          "parquet": ("embedding", "classification", "span", "spans", "tags", "fill_mask",
                                      "zero_shot", "choice", "similarity", "rank")}
DEFAULT_CHOICES_FIELD = "choices"
# the fields of one result of each kind (a kept input field may not take one of their names)
RESULT_FIELDS = {"embedding": ("embedding",), "classification": ("label", "label_id", "score", "scores"),
                 "span": ("start", "end", "text", "score"), "spans": ("answers",), "tags": ("tags", "entities"),
                 "fill_mask": ("sequence", "masks"), "zero_shot": ("labels", "scores"),
                 "choice": ("choice", "answer", "score", "scores"), "similarity": ("similarity",), "rank": ("ranking",)}


@dataclass(frozen=True)
class Record:
    text: str
    pair: Optional[str]
    where: str  # "in.txt: line 3", "in.parquet: row 7", "text 2": for messages
    choices: Optional[tuple] = None   # a multiple-choice question's choices
    kept: tuple = ()                  # the values of the input fields copied into the result (InputSpec.keep)


@dataclass(frozen=True)
class InputSpec:
    """How to read an input file: its format, which fields hold the text (and its pair), and, for a
    multiple-choice model (``choices``), which hold its choices."""

    path: Path
    format: str
    text_field: str = "text"
    pair_field: Optional[str] = None
    choices: bool = False
    choices_field: tuple = (DEFAULT_CHOICES_FIELD,)
    keep: tuple = ()
    ranking: bool = False   # the lists are a reranker's documents (one or more), not a question's choices
    choose: str = ""        # how the user names other fields, for messages [default: run's options]
    # standard input read by a thread (engine.windows with a stall): through a reader of its own on the same file
    # descriptor; one on sys.stdin.buffer left blocked there as the interpreter exits makes it abort closing sys.stdin.
    # (Bytes sys.stdin.buffer had already read ahead are not seen then: hence only when a thread reads.)
    own_stdin: bool = False

    @property
    def text_fields(self) -> list:
        """The fields the model reads: the text, its pair, the choices."""
        return [self.text_field] + ([self.pair_field] if self.pair_field else []) + \
            (list(self.choices_field) if self.choices else [])

    @property
    def fields(self) -> list:
        """The fields a row must have."""
        return self.text_fields + list(self.keep)

    @property
    def stdin(self) -> bool:
        return str(self.path) == STDIO

    @property
    def name(self) -> str:
        """The input as messages name it."""
        return "standard input" if self.stdin else str(self.path)


def _known(table: dict) -> str:
    return ", ".join(sorted(set(table)))


def field_list(value, option: str) -> tuple:
    """Field names given as "a,b" (or a sequence): each once, none empty."""
    names = tuple(f.strip() for f in (value.split(",") if isinstance(value, str) else value))
    if not names or not all(names) or len(set(names)) < len(names):
        raise InputError(f"{option} {value!r}: one field, or several comma-separated, each once")
    return names


def input_spec(path, fmt: Optional[str] = None, text_field: str = "text", pair_field: Optional[str] = None,
               choices: bool = False, choices_field: Optional[str] = None, keep=None,
               ranking: bool = False) -> InputSpec:
    """``choices``: the model is a multiple-choice one (each row has choices); ``choices_field``: the field holding
    them (a list), or several fields, comma-separated, holding one choice each [default: "choices"]. ``ranking``:
    the lists are the documents a reranker orders (each row a query and its documents; ``choices_field``'s default
    "documents", one document is enough). ``keep``: fields ("a,b" or a list) whose values each result row gets
    too."""
    path = Path(path)
    stdin = str(path) == STDIO
    if not stdin and path.is_dir():   # whatever the format: its suffix (none) said "unknown input format" first
        raise InputError(f"{path}: is a directory, not an input file")
    if fmt is None:
        fmt = "txt" if stdin else INPUT_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise InputError(f"{path}: unknown input format {path.suffix or '(no suffix)'!r}; known: "
                             f"{_known(INPUT_FORMATS)} (or name one with "
                             f"{said('--input-format ', 'input_format=')}{'|'.join(sorted(set(INPUT_FORMATS.values())))})")
    elif fmt not in set(INPUT_FORMATS.values()):
        raise InputError(f"unknown input format {fmt!r}; known: {', '.join(sorted(set(INPUT_FORMATS.values())))}")
    if stdin:
        if fmt == "parquet":
            raise InputError("Parquet cannot be read from standard input (it is read from its end); "
                             "give its file name instead of -")
    elif not path.exists():
        raise InputError(f"{path}: no such input file")
    elif path.is_dir():
        raise InputError(f"{path}: is a directory, not an input file")
    option = said("--documents-field", "documents_field") if ranking else said("--choices-field", "choices_field")
    if choices_field is not None and not choices:
        raise InputError(f"{said('--choices-field', 'choices_field')}: only a multiple-choice model reads choices")
    names = field_list(choices_field or ("documents" if ranking else DEFAULT_CHOICES_FIELD), option)
    # "" is refused as --keep-fields '' is (a list, empty or not, is the fields)
    kept = field_list(keep, said("--keep-fields", "keep_fields")) if keep is not None and (
        isinstance(keep, str) or len(keep)) else ()
    spec = InputSpec(path, fmt, text_field, pair_field, choices, names, kept, ranking)
    if fmt == "txt" and kept:
        raise InputError(f"{spec.name}: a .txt input has no fields to keep; {said('--keep-fields', 'keep_fields')} "
                         f"is for JSONL, CSV and Parquet ({said('--input-format', 'input_format')})")
    if fmt == "txt" and (text_field != "text" or pair_field or choices_field):
        what = "a query: a tab before each document" if ranking else "a multiple-choice question: a tab before each choice"
        raise InputError(f"{spec.name}: a .txt input has no fields (one text per line, a tab before its pair"
                         f"{'; ' + what if choices else ''}); "
                         f"{said('--text-field / --pair-field', 'text_field / pair_field')}"
                         f"{' / ' + option if choices else ''} are for JSONL, CSV and Parquet "
                         f"({said('--input-format', 'input_format')})")
    return spec


_SURROGATE = re.compile("[\ud800-\udfff]")


def _invalid_unicode(value) -> Optional[str]:
    """The first lone surrogate in a string (or in a JSON value's strings, keys too), else None. JSON's
    ``"\\ud800"`` escape without its pair decodes to one: no character, and no UTF-8 can write it, so the tokenizer
    and every result writer fail on it."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        return found.group() if found else None
    if isinstance(value, dict):
        return next(filter(None, map(_invalid_unicode, [*value, *value.values()])), None)
    if isinstance(value, (list, tuple)):
        return next(filter(None, map(_invalid_unicode, value)), None)
    return None


def check_unicode(value, where: str, what: str):
    """``value``, refused (naming ``where`` and ``what``) where it holds a lone surrogate."""
    bad = _invalid_unicode(value)
    if bad is not None:
        raise InputError(f"{where}: {what} is not valid Unicode: a lone surrogate {ascii(bad)} (half of a UTF-16 "
                         f"pair, e.g. a JSON \\u escape without its other half)")
    return value


def _check_text(value, where: str, field: str, empty: str = "") -> str:
    """``value`` as a row's text; ``empty``: what an empty one is called (default: the text, in ``field``)."""
    if value is None:   # a Parquet null, a JSON null: no text at all, which "empty text" would misname
        raise InputError(f"{where}: field {field!r} is null (missing) (give the row its text or remove it: bertc "
                         f"skips no row, so that each result is its input row's)")
    if not isinstance(value, str):
        raise InputError(f"{where}: field {field!r} is {type(value).__name__}, not text")
    check_unicode(value, where, f"field {field!r}" if field else "the text")
    if not value.strip():
        raise InputError(f"{where}: " + (empty or "empty text" + (f" in field {field!r}" if field else ""))
                         + " (remove the row or give it text: bertc skips no row, so that each result is its input "
                           "row's)")
    return value


MIN_CHOICES = 2


def _check_choices(values, where: str, field: str = "", ranking: bool = False) -> tuple:
    """A question's choices, each a non-empty text: two or more (``ranking``: a query's documents, one or more)."""
    named = f" in field {field!r}" if field else ""
    item, least = ("document", 1) if ranking else ("choice", MIN_CHOICES)
    if len(values) < least:
        need = "a ranking needs one or more" if ranking else f"a multiple-choice question needs {MIN_CHOICES} or more"
        raise InputError(f"{where}: {len(values)} {item}{'s' * (len(values) != 1)}{named}; {need}")
    for n, value in enumerate(values, 1):
        if value is None:
            raise InputError(f"{where}: {item} {n}{named} is null (missing; every {item} needs text)")
        if not isinstance(value, str):
            raise InputError(f"{where}: {item} {n}{named} is {type(value).__name__}, not text")
        check_unicode(value, where, f"{item} {n}{named}")
        if not value.strip():
            raise InputError(f"{where}: {item} {n}{named} is empty (every {item} needs text)")
    return tuple(values)


def _choices(row: dict, spec: InputSpec, loc: str) -> tuple:
    """The choices (a ranking's documents) of a row: one field's list (CSV: a JSON array), or one from each of
    several fields."""
    items, option = ("documents", said("--documents-field", "documents_field")) if spec.ranking else \
        ("choices", said("--choices-field", "choices_field"))
    if len(spec.choices_field) > 1:
        values = []
        for f in spec.choices_field:
            values.append(_check_text(row[f], loc, f))
        return _check_choices(values, loc, ranking=spec.ranking)
    field = spec.choices_field[0]
    value = row[field]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{loc}: no {items} in field {field!r} (every row needs its {items})")
    if isinstance(value, str) and spec.format in ("csv", "tsv"):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
        if not isinstance(value, list):
            raise InputError(f"{loc}: column {field!r} is not a JSON array of {items}; give the {items} as one "
                             f"(e.g. [\"yes\", \"no\"]) or name one column for each: {option} A,B,C")
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise InputError(f"{loc}: field {field!r} is {type(value).__name__}, not a list of {items} (or name one "
                         f"field for each: {option} A,B,C)")
    return _check_choices(list(value), loc, field, spec.ranking)


def _open_binary(spec: InputSpec):
    if spec.stdin:
        if sys.stdin is None:   # started with <&-
            raise InputError("-: standard input is closed; pipe the input in, or name the input file")
        if spec.own_stdin:
            with contextlib.suppress(AttributeError, OSError, ValueError):   # else not a file (a test's stream)
                return os.fdopen(os.dup(sys.stdin.fileno()), "rb")
        return contextlib.nullcontext(sys.stdin.buffer)
    return open(spec.path, "rb")


def _decode_error(spec: InputSpec, where: str, exc: Exception):
    return InputError(f"{spec.name}: {where}: not UTF-8 text ({exc.reason if hasattr(exc, 'reason') else exc})")


BOM = b"\xef\xbb\xbf"


def _decode_line(raw: bytes, n: int) -> str:
    """Line ``n`` (1-based) as text; the first without the UTF-8 byte-order mark that Windows tools (Excel's "CSV
    UTF-8", Notepad) put at the start of a file, which is no part of the text."""
    return (raw[len(BOM):] if n == 1 and raw.startswith(BOM) else raw).decode("utf-8")


_LONE_CR = re.compile(r"(?<=\r)(?!\n)")   # after a \r that no \n follows: an old Mac line end


def _text_lines(spec: InputSpec) -> Iterator[str]:
    """The lines of a .txt, CSV or TSV input, each decoded alone, so that bytes that are not UTF-8 are named by
    their line (a decoding text stream only knows its chunk); lines end as text mode's ``newline=""``, which the
    csv module asks for, ends them (LF, CRLF or a lone CR: an old Mac's file is not one long line), so the csv
    reader's ``line_num`` counts them too."""
    with _open_binary(spec) as f:
        n = 0
        for raw in f:
            try:
                text = _decode_line(raw, n + 1)
            except UnicodeDecodeError as exc:
                raise _decode_error(spec, f"line {n + 1}", exc) from None
            for line in _LONE_CR.split(text):
                if line:
                    n += 1
                    yield line


def _read_txt(spec: InputSpec) -> Iterator[Record]:
    for n, line in enumerate(_text_lines(spec), 1):   # LF, CRLF, or an old Mac's lone CR ends a line
        line = line.rstrip("\r\n")
        loc = f"{spec.name}: line {n}"
        if spec.choices:   # the text, then a tab before each choice
            text, *choices = line.split("\t")
            yield Record(_check_text(text, loc, ""), None, loc, _check_choices(choices, loc, ranking=spec.ranking))
            continue
        text, _, pair = line.partition("\t")
        empty = "empty text before the tab" if "\t" in line else ""
        yield Record(_check_text(text, loc, "", empty),
                     _check_text(pair, loc, "", "empty pair after the tab") if "\t" in line else None, loc)


def _choose_with(spec: InputSpec) -> str:
    if spec.choose:
        return spec.choose
    lists = " / " + (said("--documents-field", "documents_field") if spec.ranking else
                     said("--choices-field", "choices_field"))
    return ("choose with " + said("--text-field / --pair-field", "text_field / pair_field")
            + (lists if spec.choices else "") + (" / " + said("--keep-fields", "keep_fields") if spec.keep else ""))


def _fields(row: dict, spec: InputSpec, where: str) -> Record:
    missing = [f for f in spec.fields if f not in row]
    if missing:
        raise InputError(f"{spec.name}: {where}: no field {missing[0]!r} (it has: {', '.join(map(str, row)) or 'none'}; "
                         f"{_choose_with(spec)})")
    loc = f"{spec.name}: {where}"
    pair = _check_text(row[spec.pair_field], loc, spec.pair_field) if spec.pair_field else None
    choices = _choices(row, spec, loc) if spec.choices else None
    return Record(_check_text(row[spec.text_field], loc, spec.text_field), pair, loc, choices,
                  tuple(check_unicode(row[f], loc, f"kept field {f!r}") for f in spec.keep))


def _read_jsonl(spec: InputSpec) -> Iterator[Record]:
    with _open_binary(spec) as f:
        for n, raw in enumerate(f, 1):
            where = f"line {n}"
            try:
                line = _decode_line(raw, n)
            except UnicodeDecodeError as exc:
                raise _decode_error(spec, where, exc) from None
            if not line.strip(" \t\r\n"):   # JSON's white space: a blank line holds no object (a trailing one
                continue                      # is common), skipped as pandas' and pyarrow's JSON lines readers do
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise InputError(f"{spec.name}: {where}: not JSON: {exc}") from None
            if not isinstance(row, dict):
                raise InputError(f"{spec.name}: {where}: a JSON {type(row).__name__}, not an object with a "
                                 f"{spec.text_field!r} field")
            yield _fields(row, spec, where)


def _lift_csv_field_limit() -> None:
    """Lift the csv module's 128 KiB limit on a field (a long document in one cell is text like any other), as far
    as this platform's C long allows."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def _csv_error(spec: InputSpec, exc: csv.Error, began: int, line: int) -> InputError:
    """What is wrong, and where, in words: the csv module's own says neither (and a quote left open runs on to
    the end of the input, so where it ends is not where the mistake is)."""
    what, text = spec.format.upper(), str(exc)
    since = f" (the row began in line {began}: a quote left open there runs on to here)" if began < line else ""
    if "expected after" in text:
        return InputError(f"{spec.name}: line {line}: not valid {what}: a quote inside a field that is not quoted "
                          f"whole{since}; quote the whole field and double the quotes in it (\"he said \"\"hi\"\"\")")
    if "unexpected end of data" in text:
        return InputError(f"{spec.name}: line {began}: not valid {what}: a quoted field that is never closed (a \" "
                          f"opens it and none ends it before the end of the input, line {line}); close it, or quote "
                          f"the whole field and double the quotes in it")
    return InputError(f"{spec.name}: line {line}: not valid {what}: {text}{since}")


class _CsvRows(csv.DictReader):
    """``csv.DictReader``, but a blank line of a one-column file is a row (an empty text, refused as one, as a blank
    line of a .txt is), not skipped: the results no longer lined up with the file's rows, and no one said so. In a
    file of several columns a blank line holds no row and is skipped, as pandas skips it."""

    def __next__(self):
        if self.line_num == 0:
            self.fieldnames   # noqa: B018 (read for its side effect: the header)
        row = next(self.reader)
        self.line_num = self.reader.line_num
        while row == [] and len(self.fieldnames or ()) != 1:
            row = next(self.reader)
            self.line_num = self.reader.line_num
        if row == []:
            row = [""]
        fields = dict(zip(self.fieldnames, row))
        if len(row) > len(self.fieldnames):
            fields[self.restkey] = row[len(self.fieldnames):]
        for key in self.fieldnames[len(row):]:
            fields[key] = self.restval
        return fields


def _read_csv(spec: InputSpec) -> Iterator[Record]:
    _lift_csv_field_limit()
    # strict: a stray quote is an error, not a field that swallows the rows after it until the next quote
    reader = _CsvRows(_text_lines(spec), delimiter="\t" if spec.format == "tsv" else ",", strict=True)
    began = 1   # the line the row being read began in (a quoted text may span lines)
    try:
        header = reader.fieldnames or []
        twice = next((c for i, c in enumerate(header) if c in header[:i]), None)
        if twice is not None:   # the reader keeps one of them: every row would be miscounted or lose a field
            raise InputError(f"{spec.name}: line 1: the header names the column {twice!r} twice; give each column "
                             f"its own name")
        missing = [c for c in spec.fields if c not in header]
        if missing:
            raise InputError(f"{spec.name}: no column {missing[0]!r} in the header (columns: "
                             f"{', '.join(header) or 'none'}; {_choose_with(spec)})")
        began = reader.line_num + 1
        for row in reader:
            # reader.line_num is the line the row ended on; a row of more or fewer fields than the header is
            # refused: its extra fields were dropped (an unquoted comma cut the text short) or its last ones were ""
            count = len(row) - (None in row) + len(row.get(None) or ()) - sum(v is None for v in row.values())
            if count != len(header):
                raise InputError(f"{spec.name}: line {reader.line_num}: {count} field(s), the header has "
                                 f"{len(header)}" + (" (a text holding the delimiter must be quoted)"
                                                     if count > len(header) else ""))
            yield _fields(row, spec, f"line {reader.line_num}")
            began = reader.line_num + 1
    except csv.Error as exc:
        raise _csv_error(spec, exc, began, reader.reader.line_num) from None   # DictReader's own lags an error


def _pyarrow(what: str = "Parquet"):
    from bertc.requirements import require_version

    said = io.StringIO()   # NumPy's 30-line "compiled using NumPy 1.x" stack, printed before the ImportError
    try:
        with contextlib.redirect_stderr(said):
            import pyarrow
            import pyarrow.parquet  # noqa: F401
        sys.stderr.write(said.getvalue())
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("pyarrow"):
            raise _pyarrow_broken(what, exc) from None
        raise MissingLibrary(f"{what} needs pyarrow, which is not installed: {pip_install('parquet')}") from None
    except ImportError as exc:   # installed, and fails to import (built for NumPy 1.x under NumPy 2, ...)
        raise _pyarrow_broken(what, exc) from None
    require_version(pyarrow, "pyarrow", "parquet")
    return pyarrow


def _pyarrow_broken(what: str, exc: ImportError) -> MissingLibrary:
    from importlib import metadata

    from bertc.requirements import too_old

    try:
        version = metadata.version("pyarrow")
    except metadata.PackageNotFoundError:
        version = "?"
    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    old = too_old("pyarrow", version, "parquet")
    if not old and "requires numpy 2" in str(exc).lower():   # pyarrow >= 26 under NumPy 1.x (its metadata does not
        # say so, so pip pairs them; reinstalling pyarrow changes nothing)
        fix = "upgrade NumPy (pip install 'numpy>=2,<3'), or, where NumPy must stay 1.x, pip install 'pyarrow>=16,<26'"
    else:
        fix = old or f"reinstall it: {pip_install('parquet')}"
    return MissingLibrary(f"{what} needs pyarrow; pyarrow {version} is installed but fails to import ({first.strip()})"
                          f": {fix}")


RAY_MISSING = f"--ray needs ray (Ray Data), which is not installed: {pip_install('ray')}"


def require_libraries(input_path, input_format: Optional[str] = None, result_path=None,
                      result_format: Optional[str] = None, ray: bool = False) -> None:
    """The optional libraries a run needs (pyarrow for Parquet; ray, and pyarrow for its blocks, for ``--ray``),
    checked before any work: :class:`MissingLibrary` (exit 7) naming each and the extra that installs it. An unknown
    format is left to :func:`input_spec` / :func:`result_format`, which name it."""
    import importlib.util

    if ray:
        if importlib.util.find_spec("ray") is None:
            raise MissingLibrary(RAY_MISSING)
        _pyarrow("--ray")
    read = input_format or ("txt" if str(input_path) == STDIO else INPUT_FORMATS.get(Path(input_path).suffix.lower()))
    written = result_format or (None if result_path is None else "jsonl" if str(result_path) == STDIO
                                else RESULT_FORMATS.get(Path(result_path).suffix.lower()))
    if read == "parquet":
        _pyarrow(f"a Parquet input ({input_path})")
    if written == "parquet":
        _pyarrow(f"a Parquet result ({result_path})")


def _read_parquet(spec: InputSpec) -> Iterator[Record]:
    pa = _pyarrow()
    try:
        f = pa.parquet.ParquetFile(spec.path)
    except Exception as exc:
        raise InputError(f"{spec.path}: not a Parquet file: {' '.join(str(exc).split())}") from None
    names = f.schema_arrow.names
    columns = list(dict.fromkeys(spec.fields))
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputError(f"{spec.path}: no column {missing[0]!r} (columns: {', '.join(names)}; "
                         f"{_choose_with(spec)})")
    n = 0
    for batch in f.iter_batches(batch_size=4096, columns=columns):
        values = {c: batch.column(c).to_pylist() for c in columns}
        for i in range(batch.num_rows):   # a null stays None: a text's is named as null, a kept one's kept null
            n += 1
            yield _fields({c: values[c][i] for c in columns}, spec, f"row {n}")


def unify_kept(known, found):
    """The one Parquet type for a kept column whose values so far were of type ``known`` and now of ``found`` (an int
    and a float: double; a null: the other; two objects: one struct with the keys of both); None when no type holds
    both (a number and a text)."""
    pa = _pyarrow()
    try:
        return pa.unify_schemas([pa.schema([("x", known)]), pa.schema([("x", found)])],
                                promote_options="permissive").field("x").type
    except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError):
        return None


def _jsonl_kept_types(spec: InputSpec) -> list:
    """The Parquet types of a JSONL file's kept fields, from all its lines (read once before the run, as a Parquet
    input's schema is: a result's columns are typed when it is opened, and typed by the first rows only a float after
    integers, or a key an object gains later, was converted to fit and lost)."""
    pa = _pyarrow()
    types, chunk = [pa.null()] * len(spec.keep), []

    def refuse(i: int, name: str):
        """The first line of the chunk whose value no type holds together with the values before it."""
        known = types[i]
        for record in chunk:
            try:
                found = pa.array([record.kept[i]]).type
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
                raise OutputError(f"{said('--keep-fields', 'keep_fields')} {name}: {record.where}: its value cannot be a Parquet column "
                                  f"({' '.join(str(exc).split())[:200]}); use a .jsonl result") from None
            both = unify_kept(known, found)
            if both is None:
                raise OutputError(f"{said('--keep-fields', 'keep_fields')} {name}: {record.where}: a value of type {found} after values of "
                                  f"type {known}: they cannot be one Parquet column; use a .jsonl result")
            known = both
        raise OutputError(f"{said('--keep-fields', 'keep_fields')} {name}: its values cannot be one Parquet column; "
                          f"use a .jsonl result")

    def merge():
        for i, name in enumerate(spec.keep):
            try:
                found = pa.array([r.kept[i] for r in chunk]).type
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                refuse(i, name)
            both = unify_kept(types[i], found)
            if both is None:
                refuse(i, name)
            types[i] = both

    for record in read_records(spec):
        chunk.append(record)
        if len(chunk) == 4096:
            merge()
            chunk = []
    if chunk:
        merge()
    return types


def kept_types(spec: InputSpec, fmt: str = "parquet") -> Optional[list]:
    """The pyarrow types of the kept columns (``spec.keep``) of a result in format ``fmt`` when it is Parquet (None
    for the others): a Parquet input's columns' (its
    rows' Python values alone would make an int32 an int64, a float32 a double, a null first column type null); a
    JSONL file's, read from all its lines (:func:`_jsonl_kept_types`); None for standard input, whose kept columns are
    typed by the first rows' values, and for CSV, whose values are texts."""
    if fmt != "parquet" or not spec.keep or spec.stdin:
        return None
    if spec.format == "jsonl":
        try:   # a pipe, a FIFO, /dev/stdin can be read once only: typed by its first rows, as standard input
            regular = stat.S_ISREG(os.stat(spec.path).st_mode)
        except OSError:   # the reader names it
            return None
        return _jsonl_kept_types(spec) if regular else None
    if spec.format != "parquet":
        return None
    try:
        schema = _pyarrow().parquet.ParquetFile(spec.path).schema_arrow
    except Exception:   # not a Parquet file: the reader says so
        return None
    if any(name not in schema.names for name in spec.keep):   # the reader names the missing column
        return None
    return [schema.field(name).type for name in spec.keep]


READERS = {"txt": _read_txt, "jsonl": _read_jsonl, "csv": _read_csv, "tsv": _read_csv, "parquet": _read_parquet}


def columns(spec: InputSpec) -> list:
    """The field names of a JSONL (its first object's), CSV / TSV (the header) or Parquet (the schema) input; none
    for a .txt or an empty file. Errors as reading the file raises them."""
    if spec.format == "parquet":
        try:
            return list(_pyarrow().parquet.ParquetFile(spec.path).schema_arrow.names)
        except (InputError, MissingLibrary):
            raise
        except Exception as exc:
            raise InputError(f"{spec.path}: not a Parquet file: {' '.join(str(exc).split())}") from None
    if spec.format in ("csv", "tsv"):
        line = next(_text_lines(spec), "")
        return next(csv.reader([line], delimiter="\t" if spec.format == "tsv" else ","), [])
    if spec.format == "jsonl":
        with _open_binary(spec) as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = _decode_line(raw, n)
                except UnicodeDecodeError as exc:
                    raise _decode_error(spec, f"line {n}", exc) from None
                if line.strip(" \t\r\n"):
                    try:
                        row = json.loads(line)
                    except ValueError as exc:
                        raise InputError(f"{spec.name}: line {n}: not JSON: {exc}") from None
                    return list(row) if isinstance(row, dict) else []
    return []


def read_records(spec: InputSpec) -> Iterator[Record]:
    """The records of ``spec``'s file, streamed; an :class:`InputError` names the line or row of a bad one."""
    try:
        yield from READERS[spec.format](spec)
    except OSError as exc:
        raise InputError(f"{spec.name}: cannot read: {exc}") from None


def is_regular_file(spec: InputSpec) -> bool:
    """Whether the input is a regular file (read at once to its end), not standard input, a pipe or a FIFO (which
    may pause)."""
    if spec.stdin:
        try:
            return stat.S_ISREG(os.fstat(sys.stdin.fileno()).st_mode)
        except (AttributeError, OSError, ValueError):
            return True
    try:
        return stat.S_ISREG(os.stat(spec.path).st_mode)
    except OSError:   # the reader names it
        return True


def count_rows(spec: InputSpec) -> Optional[int]:
    """How many rows the input has, when that is cheap to know (for the progress bar); else None. Only a regular
    file is counted: a pipe, a FIFO or /dev/stdin (``<(...)``) can be read once only, and counting it would leave
    nothing for the run (or wait forever on a FIFO)."""
    if spec.stdin:
        return None
    try:
        if not stat.S_ISREG(os.stat(spec.path).st_mode):
            return None
        if spec.format == "parquet":
            return _pyarrow().parquet.ParquetFile(spec.path).metadata.num_rows
        if spec.format in ("txt", "jsonl"):
            n, last = 0, b"\n"
            with open(spec.path, "rb") as f:
                while chunk := f.read(1 << 20):
                    n += chunk.count(b"\n")
                    last = chunk[-1:]
            return n + (last != b"\n")
    except Exception:
        return None
    return None


# --- results ----------------------------------------------------------------------------------------

def result_format(path, kind: str, fmt: Optional[str] = None, keep: tuple = ()) -> str:
    """The result's format (its suffix's, or ``fmt``), refused where it cannot hold ``kind`` results, or the kept
    fields ``keep`` beside them."""
    path = Path(path)
    stdout = str(path) == STDIO
    fmt = fmt or ("jsonl" if stdout else RESULT_FORMATS.get(path.suffix.lower()))
    if fmt is None:
        raise InputError(f"{path}: unknown result format {path.suffix or '(no suffix)'!r}; known: "
                         f"{_known(RESULT_FORMATS)} (or name one with {said('--result-format', 'result_format')})")
    if fmt not in KINDS_BY_RESULT_FORMAT:
        raise InputError(f"unknown result format {fmt!r}; known: {', '.join(sorted(KINDS_BY_RESULT_FORMAT))}")
    where = "standard output" if stdout else str(path)
    if stdout and fmt not in STDOUT_FORMATS:
        raise InputError(f"{said('-o -', 'result_path=' + repr(STDIO))}: a .{fmt} result cannot be streamed to standard output; "
                         f"use {said('--result-format ', 'result_format=')}{' or '.join(STDOUT_FORMATS)}, or "
                         f"{said('-o ', 'result_path ')}FILE.{fmt}")
    if kind not in KINDS_BY_RESULT_FORMAT[fmt]:
        fits = [f".{f}" for f, kinds in KINDS_BY_RESULT_FORMAT.items() if kind in kinds
                and (not stdout or f in STDOUT_FORMATS)]
        raise InputError(f"{where}: a .{fmt} result cannot hold {kind} results; use {' or '.join(fits)}")
    if keep and (fmt == "npy" or (fmt == "csv" and kind == "embedding")):
        raise InputError(f"{said('--keep-fields', 'keep_fields')}: a .{fmt} result of embeddings has no columns to put "
                         f"{', '.join(keep)} in; use .parquet or .jsonl")
    clash = [f for f in keep if f in RESULT_FIELDS.get(kind, ())]
    if clash:
        raise InputError(f"{said('--keep-fields', 'keep_fields')} {clash[0]}: the {kind} results have a field of that name "
                         f"({', '.join(RESULT_FIELDS[kind])})")
    if fmt == "parquet":
        _pyarrow()
    return fmt


class _NpyWriter:
    """A (rows, dim) .npy of ``dtype`` (float32 embeddings; int8 / uint8 ones, :mod:`bertc.quantize_embeddings`)
    written row block by row block: the header is rewritten with the row count at the end (padded to a fixed size,
    so it never moves the data). ``empty_width``: the row width of an empty result (asked only when no row came)."""

    HEADER = 128

    def __init__(self, f, dtype=np.float32, empty_width=None):
        self.f, self.rows, self.dim, self.empty_width = f, 0, None, empty_width
        self.dtype = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)
        f.write(b"\0" * self.HEADER)

    def _header(self) -> bytes:
        body = repr({"descr": self.dtype.str, "fortran_order": False, "shape": (self.rows, self.dim or 0)}).encode()
        prefix = b"\x93NUMPY\x01\x00"
        pad = self.HEADER - len(prefix) - 2 - len(body) - 1
        return prefix + (len(body) + pad + 1).to_bytes(2, "little") + body + b" " * pad + b"\n"

    def write(self, rows, kept=None) -> None:
        block = np.ascontiguousarray(rows, dtype=self.dtype)
        if self.dim is None:
            self.dim = block.shape[1]
        self.f.write(block.tobytes())
        self.rows += len(block)

    def close(self) -> None:
        if self.dim is None and self.empty_width is not None:   # no row: (0, dim), as Runtime.run([]) gives
            self.dim = self.empty_width()
        self.f.seek(0)
        self.f.write(self._header())


def _plain(row) -> dict:
    if isinstance(row, np.ndarray):   # float32 values as Python floats; int8 / uint8 ones as ints
        return {"embedding": (row.astype(float) if row.dtype.kind == "f" else row).tolist()}
    return row


def _kept_json(value):
    """A kept value JSON cannot write as it is (a Parquet timestamp, decimal, bytes): its text."""
    return value.hex() if isinstance(value, bytes) else str(value)


def _finite(value):
    """A kept value with each NaN or infinity (a JSONL input's ``NaN``, a Parquet float's) as None: JSON has no such
    number, and Python's ``NaN`` / ``Infinity`` tokens would make the line unreadable to other JSON readers; null is
    what pandas and Spark write for a missing float."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class _JsonlWriter:
    def __init__(self, f, keep: tuple = ()):
        self.f = io.TextIOWrapper(f, encoding="utf-8", newline="\n", write_through=False)
        self.keep = keep

    def write(self, rows, kept=None) -> None:
        if self.keep:
            rows = [{**dict(zip(self.keep, map(_finite, k))), **_plain(r)} for r, k in zip(rows, kept)]
        self.f.write("".join(json.dumps(_plain(r), ensure_ascii=False, default=_kept_json) + "\n" for r in rows))

    def close(self) -> None:
        self.f.flush()
        self.f.detach()


def _kept_csv(value):
    """A kept value as a CSV cell: a JSON object, array or boolean as its JSON text (not Python's repr, which no
    other tool reads back), bytes as hex, None as an empty cell; anything else as its text."""
    if isinstance(value, (dict, list, tuple, bool)):
        return json.dumps(_finite(value), ensure_ascii=False, default=_kept_json)
    return _kept_json(value) if isinstance(value, bytes) else value


def _result_csv(value):
    """A result field as a CSV cell: a list (scores) as its JSON text, anything else as it is."""
    return json.dumps(value) if isinstance(value, (list, tuple)) else value


class _CsvWriter:
    def __init__(self, f, kind: str, keep: tuple = ()):
        self.f = io.TextIOWrapper(f, encoding="utf-8", newline="", write_through=False)
        self.kind, self.writer, self.keep = kind, csv.writer(self.f), keep
        # every field of the result, as JSONL and Parquet hold them: a list (a classifier's or a multiple-choice
        # model's scores) as its JSON text, as a kept array is written
        self.columns = None if kind == "embedding" else list(RESULT_FIELDS[kind])
        if self.columns:
            self.writer.writerow([*keep, *self.columns])

    def write(self, rows, kept=None) -> None:
        if self.kind == "embedding":
            # each value's shortest text that reads back as the same float32 (".7g" lost up to 6e-8)
            self.writer.writerows(map(str, r) for r in rows)
        else:
            kept = kept if self.keep else [()] * len(rows)
            self.writer.writerows([*map(_kept_csv, k), *(_result_csv(r[c]) for c in self.columns)]
                                  for r, k in zip(rows, kept))

    def close(self) -> None:
        self.f.flush()
        self.f.detach()


class _ParquetWriter:
    def __init__(self, f, kind: str, keep: tuple = (), dtype=np.float32, keep_types: Optional[list] = None,
                 empty_width=None):
        self.pa = _pyarrow()
        self.f, self.kind, self.writer, self.keep, self.dtype = f, kind, None, keep, np.dtype(dtype)
        self.empty_width = empty_width
        # the kept columns' types: the input's (keep_types: a Parquet input's columns, a JSONL file's values), else
        # as the first rows give them (standard input)
        self.kept_types: Optional[list] = keep_types
        self.typed_by = "its column's" if keep_types is not None else "the first rows'"
        self.first_typed = keep_types is None

    def _kept_columns(self, kept) -> dict:
        """The kept fields as columns of :attr:`kept_types`, or else typed as the first rows' values are (JSON's
        types), each later value held to that type: one that needs another (a float after integers, an object with a
        new key) is refused, never converted to fit (pyarrow truncates a float into an integer column, drops a key a
        struct lacks)."""
        pa, columns = self.pa, {}
        for i, name in enumerate(self.keep):
            values = [k[i] for k in kept]
            if self.kept_types is None or self.first_typed:
                try:
                    array = pa.array(values)
                except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
                    raise OutputError(f"{said('--keep-fields', 'keep_fields')} {name}: its values cannot be one Parquet column "
                                      f"({' '.join(str(exc).split())[:200]}); use a .jsonl result") from None
                if self.kept_types is None or array.type == self.kept_types[i]:
                    columns[name] = array
                    continue
                known = self.kept_types[i]
                if unify_kept(known, array.type) != known:
                    was = "no value (null)" if pa.types.is_null(known) else f"values of type {known}"
                    raise OutputError(f"{said('--keep-fields', 'keep_fields')} {name}: a value of type {array.type} after the first rows' {was}"
                                      f": a Parquet result's columns are typed by the first rows when the input is "
                                      f"standard input (a file's are read from all its rows); use a .jsonl result, or "
                                      f"a file as input")
            try:
                array = pa.array(values, type=self.kept_types[i])
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
                raise OutputError(f"{said('--keep-fields', 'keep_fields')} {name}: a value that is not of {self.typed_by} type "
                                  f"({self.kept_types[i]}): {' '.join(str(exc).split())[:200]}; use a .jsonl "
                                  f"result") from None
            columns[name] = array
        return columns

    def _table(self, rows):
        pa = self.pa
        if self.kind == "embedding":
            block = np.ascontiguousarray(rows, dtype=self.dtype)
            values = pa.array(block.reshape(-1))
            return pa.table({"embedding": pa.FixedSizeListArray.from_arrays(values, block.shape[1])})
        if self.kind == "tags":
            tag = pa.struct([("word", pa.string()), ("start", pa.int32()), ("end", pa.int32()), ("in", pa.string()),
                             ("label", pa.string()), ("score", pa.float32())])
            entity = pa.struct([("label", pa.string()), ("start", pa.int32()), ("end", pa.int32()),
                                ("in", pa.string()), ("text", pa.string()), ("score", pa.float32())])
            return pa.table({"tags": pa.array([r["tags"] for r in rows], pa.list_(tag)),
                             "entities": pa.array([r["entities"] for r in rows], pa.list_(entity))})
        if self.kind == "fill_mask":
            prediction = pa.struct([("token", pa.string()), ("token_id", pa.int32()), ("score", pa.float32())])
            mask = pa.struct([("start", pa.int32()), ("end", pa.int32()), ("in", pa.string()),
                              ("predictions", pa.list_(prediction))])
            return pa.table({"sequence": pa.array([r["sequence"] for r in rows], pa.string()),
                             "masks": pa.array([r["masks"] for r in rows], pa.list_(mask))})
        if self.kind == "spans":
            answer = pa.struct([("start", pa.int32()), ("end", pa.int32()), ("text", pa.string()),
                                ("score", pa.float32())])
            return pa.table({"answers": pa.array([r["answers"] for r in rows], pa.list_(answer))})
        if self.kind == "zero_shot":
            return pa.table({"labels": pa.array([r["labels"] for r in rows], pa.list_(pa.string())),
                             "scores": pa.array([r["scores"] for r in rows], pa.list_(pa.float32()))})
        if self.kind == "similarity":
            return pa.table({"similarity": pa.array([r["similarity"] for r in rows], pa.float32())})
        if self.kind == "rank":
            document = pa.struct([("index", pa.int32()), ("text", pa.string()), ("score", pa.float32())])
            return pa.table({"ranking": pa.array([r["ranking"] for r in rows], pa.list_(document))})
        if self.kind == "choice":
            return pa.table({"choice": pa.array([r["choice"] for r in rows], pa.int32()),
                             "answer": pa.array([r["answer"] for r in rows], pa.string()),
                             "score": pa.array([r["score"] for r in rows], pa.float32()),
                             "scores": pa.array([r["scores"] for r in rows], pa.list_(pa.float32()))})
        if self.kind == "classification":
            return pa.table({"label": pa.array([r["label"] for r in rows], pa.string()),
                             "label_id": pa.array([r["label_id"] for r in rows], pa.int32()),
                             "score": pa.array([r["score"] for r in rows], pa.float32()),
                             "scores": pa.array([r["scores"] for r in rows], pa.list_(pa.float32()))})
        return pa.table({"start": pa.array([r["start"] for r in rows], pa.int32()),
                         "end": pa.array([r["end"] for r in rows], pa.int32()),
                         "text": pa.array([r["text"] for r in rows], pa.string()),
                         "score": pa.array([r["score"] for r in rows], pa.float32())})

    def write(self, rows, kept=None) -> None:
        table = self._table(rows)
        if self.keep:
            columns = self._kept_columns(kept)
            if self.kept_types is None:
                self.kept_types = [c.type for c in columns.values()]
            for i, (name, column) in enumerate(columns.items()):
                table = table.add_column(i, name, column)
        if self.writer is None:
            self.writer = self.pa.parquet.ParquetWriter(self.f, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is None:  # no row at all: an empty file with the schema
            # an embedding's fixed width, as a non-empty result's (so that shards' tables concatenate)
            width = self.empty_width() if self.kind == "embedding" and self.empty_width is not None else None
            schema = self._table([]).schema if self.kind != "embedding" else \
                self.pa.schema([("embedding", self.pa.list_(self.pa.from_numpy_dtype(self.dtype), width or -1))])
            for i, name in enumerate(self.keep):   # a Parquet input's types; else no row said one
                kept_type = self.kept_types[i] if self.kept_types else self.pa.null()
                schema = schema.insert(i, self.pa.field(name, kept_type))
            self.writer = self.pa.parquet.ParquetWriter(self.f, schema)
        self.writer.close()

    def abandon(self) -> None:
        """Close the pyarrow writer after an error (into the temporary file, which is then removed)."""
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
            self.writer = None


def _writer(f, fmt: str, kind: str, keep: tuple = (), dtype=np.float32, keep_types: Optional[list] = None,
            empty_width=None):
    if fmt == "npy":
        return _NpyWriter(f, dtype, empty_width)
    if fmt == "jsonl":
        return _JsonlWriter(f, keep)
    if fmt == "csv":
        return _CsvWriter(f, kind, keep)
    return _ParquetWriter(f, kind, keep, dtype, keep_types, empty_width)


class _Sink(io.RawIOBase):
    """The binary file a result writer writes into (the temporary result, or standard output), every byte of each
    write written: a full disk or a file size limit makes the system write only part of what it was given, which
    Python's buffered files pass on as a smaller count and no error (the rest of a batch lost, the run saying it
    wrote every row); the rest is written again, until all of it is or the system says why not.

    Why not is an :class:`OutputError` (exit 5) naming ``where`` and the reason (no space left on device, a disk
    quota, an I/O error, a file too large), never an ``OSError``, which the CLI would report as a bug in bertc;
    ``after`` ends its message (what became of the result). A reader of standard output that went away stays a
    ``BrokenPipeError`` (exit 141, quietly). Once a write failed, the sink drops what the writer's layers flush as
    they are let go of (the run is failing already: no second error, none as the process exits).
    Standard output is written through its unbuffered file (:func:`_stdout_sink`), so that nothing of a failed
    stream is left in Python's buffer (flushed again, and failing again, as the process exits). Closing the sink
    leaves the file open (its owner closes it; standard output stays open)."""

    def __init__(self, f, where: str, what: str, after: str = ""):
        self.f, self.where, self.what, self.after = f, where, what, after
        self.failed = False
        try:
            self.fd = f.fileno()
            self.regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):   # a test's capture: no file
            self.fd, self.regular = None, True

    def do(self, call, *args):
        """``call(*args)`` on the file, its ``OSError`` an :class:`OutputError` naming where and why."""
        try:
            return call(*args)
        except BrokenPipeError:
            self.failed = True
            raise
        except OSError as exc:
            self.failed = True
            raise OutputError(f"{self.where}: cannot write {self.what}: {exc.strerror or exc}{self.after}") from None

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self.f.seekable()

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.do(self.f.seek, pos, whence)

    def tell(self) -> int:
        return self.do(self.f.tell)

    def flush(self) -> None:
        if not self.closed and not self.f.closed and not self.failed:
            self.do(self.f.flush)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.failed:
            return len(view)
        done = 0
        while done < len(view):
            n = self.do(self.f.write, view[done:])
            if n is None:   # a non-blocking file that is full for now (a pipe): wait until it takes more
                _wait_writable(self.f)
                continue
            if n <= 0:
                self.do(_raise, OSError(errno.EIO, "the system wrote none of the bytes given it"))
            done += n
        return done


    def write_some(self, view, timeout: float) -> int:
        """Write some of ``view`` and say how much, waiting at most about ``timeout`` seconds for a pipe, a terminal
        or a socket to take some (0 if it took none): a write that cannot block for long, so that its caller can
        stop between writes. A regular file (or a file without a descriptor) takes all of it."""
        if self.failed:
            return len(view)
        if self.regular:
            return self.write(view)
        import select

        try:
            if not select.select([], [self.fd], [], timeout)[1]:
                return 0
        except (OSError, ValueError):   # select refused the descriptor: a write of a pipe's atomic size still ends
            pass
        n = self.do(self.f.write, view[:_STREAM_CHUNK])
        if n is None:   # non-blocking and full after all
            return 0
        if n <= 0:
            self.do(_raise, OSError(errno.EIO, "the system wrote none of the bytes given it"))
        return n


def _raise(exc: BaseException):
    raise exc


def _wait_writable(f) -> None:
    import select

    try:
        select.select([], [f.fileno()], [])
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        import time

        time.sleep(0.01)


def _stdout_sink() -> _Sink:
    """Standard output as a :class:`_Sink`: its unbuffered file, once what Python holds for it is written (its
    buffered file where it has none: a test's capture)."""
    out = getattr(sys.stdout, "buffer", None)
    if out is None:   # bertc started with its standard output closed (`>&-`): Python's sys.stdout is None
        raise OutputError("-o -: standard output is closed (bertc was started without one); give it one (a pipe, "
                          "> FILE), or write the results to a file: -o FILE")
    sink = _Sink(getattr(out, "raw", None) or out, "standard output", "the results",
                 "; what it received is incomplete")
    sink.do(sys.stdout.flush)
    sink.do(out.flush)
    return sink


STOP_GRACE = 2.0   # seconds a stop signal waits for the record half written to standard output to be finished
_STREAM_CHUNK = 4096   # bytes written to a pipe once it can take more (PIPE_BUF: such a write never blocks)


@contextlib.contextmanager
def _stops_deferred():
    """Within the block, a stop signal (Ctrl-C, SIGTERM, SIGHUP) whose handler is Python code (Python's own
    KeyboardInterrupt, the CLI's) is noted in the list yielded instead of handled; on leaving, the handlers are put
    back and each noted signal is handled then, in the order they came (a handler that raises does so where the
    block ends). Only in the main thread, where signal handlers run and are set: elsewhere the list stays empty."""
    import signal

    noted: list = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    previous: dict = {}
    active = [True]

    def note(signum, frame):
        if active[0]:
            noted.append((signum, frame))
        else:   # left in place by a signal that came as the handlers were being put back: the handler it replaced
            previous[signum](signum, frame)

    try:   # (a signal that comes while the handlers are swapped: those swapped already are put back)
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)
            handler = None if signum is None else signal.getsignal(signum)
            if callable(handler):
                previous[signum] = handler
                signal.signal(signum, note)
        yield noted
    finally:
        active[0] = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        first = {}
        for signum, frame in noted:   # each signal once, in the order they came (a SIGHUP whose handler returns,
            first.setdefault(signum, frame)   # then a Ctrl-C: both heard; the first that raises ends the stream)
        for signum, frame in first.items():
            previous[signum](signum, frame)


class _Streamed:
    """The writer of a result streamed to standard output (JSONL or CSV): each batch's records are made in memory,
    then written out and flushed at once (a pipeline's next stage sees them), every record whole. A stop signal that
    comes while a record is half written lets it be finished first (for up to :data:`STOP_GRACE` seconds, should
    the reader of standard output not read): the stream then ends on a whole line, which a reader appending to a
    file (``-o - >> results.jsonl``) or parsing line by line can use. (It was cut where the signal came: a
    half JSON line, a CSV record without its end.)"""

    def __init__(self, writer, buffer: io.BytesIO, out: "_Sink"):
        self.writer, self.buffer, self.out = writer, buffer, out
        self.ends: list = []
        self._mark()   # a CSV result's header: a record of its own

    def _mark(self) -> None:
        self.writer.f.flush()   # the text layer into the buffer
        if self.buffer.tell() and (not self.ends or self.ends[-1] != self.buffer.tell()):
            self.ends.append(self.buffer.tell())

    def _send(self) -> None:
        data, ends = self.buffer.getvalue(), self.ends
        self.buffer.seek(0)
        self.buffer.truncate()
        self.ends = []
        if data:
            _write_records(self.out, memoryview(data), ends)
        self.out.flush()

    def write(self, rows, kept=None) -> None:
        for i in range(len(rows)):   # one at a time: where each record ends
            self.writer.write(rows[i:i + 1], None if kept is None else kept[i:i + 1])
            self._mark()
        self._send()

    def close(self) -> None:
        self._mark()
        self.writer.close()
        self._send()


def _write_records(out: "_Sink", data: memoryview, ends: list) -> None:
    """``data`` (records ending at the offsets ``ends``) written to ``out``, a stop signal handled at the next record
    end (:class:`_Streamed`): its handler raises (the CLI's, Python's KeyboardInterrupt) and the stream ends there, or
    it returns and the rest is written."""
    done = 0
    while done < len(data):
        deadline = None
        with _stops_deferred() as noted:
            while done < len(data):
                end = len(data)
                if noted:
                    if deadline is None:
                        deadline = time.monotonic() + STOP_GRACE
                    end = next((e for e in ends if e >= done), len(data))
                    if end == done or time.monotonic() > deadline:
                        break   # leaving the block handles the signal
                done += out.write_some(data[done:end], timeout=0.1)
        # a handler that did not raise (a program's SIGHUP that reopens its logs, one that sets a flag): the rest
        # is written (a reviewer: it was dropped, the run saying it wrote every row)


def _lock(f) -> bool:
    """Take an exclusive lock on the open file ``f`` (released when it is closed); False where another process
    holds one. True too where there are no such locks (Windows, a file system without them): the caller goes on
    unlocked."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # PermissionError: another user's process; or a platform that cannot tell: alive
        return True
    return True


_PARTIAL = ".partial-"
_PID_ROOM = 10   # the digits a temporary name keeps for its process id


def _partial_prefix(path: Path) -> str:
    """How the temporary names of a run's RESULT ``path`` begin, its process id to follow: ``.RESULT.partial-``.
    Where that and the id could pass the file system's limit on a name's length (NAME_MAX: 255 bytes; a RESULT name
    of 236 to 255 bytes), RESULT's name is cut to fit (at a character's end) and a hash of the whole name added
    (``.RESUL~1a2b3c4d.partial-``), so that such a RESULT can be written; its temporary names stay its own."""
    name = os.fsencode(path.name)
    try:
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):   # unknown here: the common limit
        limit = 255
    if 1 + len(name) + len(_PARTIAL) + _PID_ROOM <= limit:
        return f".{path.name}{_PARTIAL}"
    import hashlib

    digest = hashlib.sha256(name).hexdigest()[:8]
    room = max(limit - 1 - len(_PARTIAL) - _PID_ROOM - 1 - len(digest), 0)
    return f".{name[:room].decode('utf-8', 'ignore')}~{digest}{_PARTIAL}"


def _partial_pid(suffix: str) -> int:
    """The process id of a temporary name's ``suffix``: ``PID``, or ``PID.N`` for the N-th writer of one RESULT in one
    process (threads); 0 for anything else."""
    pid, dot, n = suffix.partition(".")
    return int(pid) if pid.isdigit() and (not dot or n.isdigit()) else 0


def _open_partial(path: Path) -> tuple:
    """(file, its path): a temporary file of this writer's own beside RESULT ``path``, created exclusively:
    ``.RESULT.partial-PID``, or ``.RESULT.partial-PID.N`` where another thread of this process writes the same
    RESULT (the name was per process: threads opened one file, truncated and wrote over each other, and the first to
    finish published the mixture)."""
    prefix, pid = _partial_prefix(path), os.getpid()
    with _OWN_PARTIALS:   # created and locked at once: this process's cleanup never takes a live one for stale
        for n in range(1, 100):   # the PID and ".N" keep within _PID_ROOM (a PID has at most 7 digits)
            tmp = path.with_name(f"{prefix}{pid}" + (f".{n}" if n > 1 else ""))
            try:
                f = open(tmp, "xb")   # created exclusively
            except FileExistsError:
                continue
            _lock(f)   # held while it is written: a later run sees that it is not stale (from another machine too)
            _MINE.add(str(tmp))
            return f, tmp
    raise OSError(errno.EEXIST, f"99 writers of this process already write {path.name}")


_OWN_PARTIALS = threading.Lock()   # this process's temporary files: made (and locked) or judged stale one at a time
# the temporary files this process made: never stale to it, whatever locks say (per-process locks on a network file
# system, none at all); a file with this PID that is not among them is an earlier process's (PID reuse, PID 1)
_MINE: set = set()


def _own_partials_after_fork() -> None:   # a lock another thread held at fork() is never released in the child
    global _OWN_PARTIALS, _MINE
    _OWN_PARTIALS = threading.Lock()
    _MINE = set()   # the parent's writers' files: not the child's (its own PID differs anyway)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_own_partials_after_fork)


def _remove_stale_partials(path: Path) -> None:
    """Remove the temporary files (``.RESULT.partial-PID``) that runs to ``path`` killed outright (SIGKILL, the
    out-of-memory killer) left behind: each whose process is gone and that no process holds locked. A live run's
    (its process running here, or its lock held from another machine sharing the folder) is left alone."""
    prefix = _partial_prefix(path)
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix) and _partial_pid(n[len(prefix):])]
    except OSError:
        return
    for name in names:
        stale, pid = path.parent / name, _partial_pid(name[len(prefix):])
        own = pid == os.getpid()   # another thread's (live), or an earlier process's with this PID (PID 1)
        if not own and _process_alive(pid):
            continue
        try:
            with _OWN_PARTIALS if own else contextlib.nullcontext():
                if own and str(stale) in _MINE:   # this process's, being written
                    continue
                with open(stale, "rb+") as f:
                    if not _lock(f):   # a live run's, on another machine
                        continue
                    stale.unlink()
        except OSError:   # gone already, or not ours to open: left alone
            continue


# link(2) where the file system has no hard links (FAT, some network file systems)
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}


def _publish(tmp: Path, path: Path, force: bool, where: str, after: str) -> None:
    """Put the finished temporary file ``tmp`` at ``path``. With ``force``, renamed over what is there. Without it,
    only where nothing is, checked as it is put there, not only when the run started: a hard link (which fails where
    a file appeared meanwhile), then the temporary name removed; where the file system has no hard links, the name
    is taken first (created exclusively), then renamed over. So of two runs to one RESULT without ``--force``, the one
    finishing second refuses instead of replacing the other's result."""
    try:
        if force:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))   # the name is this run's now
            try:
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    path.unlink()   # the empty file that took the name
                raise
            return
        with contextlib.suppress(OSError):   # the result is in place; a temporary name left is removed as stale later
            tmp.unlink()
    except FileExistsError:
        raise OutputError(f"{where} was written by another process while this run ran (it was not there when the run "
                          f"started); without {said('--force', 'force=True')} a run replaces nothing, so this run's "
                          f"result was not kept (pass {said('--force', 'force=True')} to replace it)") from None
    except OSError as exc:
        raise OutputError(f"{where}: cannot put the result in place: {exc.strerror or exc}{after}") from None


def _followed(path: Path) -> Path:
    """Where RESULT is written: ``path``, or, where it is a symbolic link, the file it leads to (links of links
    followed; a dangling link's target, which the run creates), as ``bertc build -o LINK`` and ``bertc import -o LINK``
    write through a link: the link stays, its target gets the result."""
    if not path.is_symlink():
        return path
    target = Path(os.path.realpath(path))
    if target.is_symlink():
        raise OutputError(f"{path}: cannot follow the link to the result: a loop of symbolic links")
    return target


@contextlib.contextmanager
def atomic_result(path, fmt: str, kind: str, force: bool = False, keep: tuple = (), dtype=np.float32,
                  keep_types: Optional[list] = None, empty_width: Optional[Callable[[], Optional[int]]] = None):
    """A writer (``.write(rows)``) into a temporary file beside ``path``, put there when the block ends without an
    error (:func:`_publish`: without ``force`` only where nothing appeared meanwhile); on any error (or Ctrl-C) the
    temporary file is removed and ``path`` is as it was. A symbolic link ``path`` is written through
    (:func:`_followed`): the file it leads to gets the result.
    ``-``: standard output, written batch by batch. ``keep_types``: the kept columns' pyarrow types in a Parquet
    result (:func:`kept_types`). ``empty_width``: the width of an embedding row (its values at ``dtype``), asked
    only when no row came, so that an empty .npy or Parquet result has the shape a non-empty one would."""
    path = Path(path)
    if str(path) == STDIO:   # a stream: each batch is written and flushed as it comes
        out = _stdout_sink()
        buffer = io.BytesIO()
        writer = _writer(buffer, fmt, kind, keep, dtype)
        streamed = _Streamed(writer, buffer, out)
        try:
            yield streamed
            streamed.close()
        except BaseException:
            with contextlib.suppress(Exception):   # its text layer lets go of the batch's buffer unflushed
                writer.f.detach()
            raise
        return
    given, path = path, _followed(path)   # a link: its target is written (beside it, the temporary file)
    where = str(given) if path == given else f"{given} (a link to {path})"   # RESULT in messages
    if path.exists() and not path.is_dir() and not path.is_file():   # /dev/null, a named pipe, a socket
        raise OutputError(f"{where} is not a regular file (a device, a pipe or a socket): a result is written beside "
                          f"RESULT and renamed over it, which would replace it ({said('--force', 'force=True')} does "
                          f"not change that); to stream the result, write it to standard output: "
                          f"{said('-o -', 'result_path=' + repr(STDIO))} (jsonl or csv) and redirect it")
    if path.is_dir():   # before --force's advice: it would not help
        raise OutputError(f"{where} is a directory; the result is a file")
    if path.exists() and not force:
        raise OutputError(f"{where} already exists; pass {said('--force', 'force=True')} to replace it")
    if not path.parent.is_dir():
        raise OutputError(f"{path.parent}: " + ("not a directory (a file of that name is there)"
                                                if path.parent.exists() else "no such directory")
                          + " for the result")
    _remove_stale_partials(path)
    try:
        f, tmp = _open_partial(path)
    except OSError as exc:
        raise OutputError(f"cannot write the result beside {where}: {exc}") from None
    # a full disk, a quota, an I/O error: an OutputError naming RESULT (exit 5), the temporary file removed
    after = f"; nothing was written ({given} is as it was)"
    sink = _Sink(f, where, "the result", after)
    try:
        try:
            writer = _writer(sink, fmt, kind, keep, dtype, keep_types, empty_width)
            try:
                yield writer
                writer.close()
            except BaseException:
                # let go of a writer that holds the file (pyarrow's) while the file is open: left to the garbage
                # collector, it would close itself into the closed file and print a traceback past our message
                if hasattr(writer, "abandon"):
                    writer.abandon()
                raise
            sink.flush()
            sink.do(f.close)   # what only closing says (a quota, a network file system)
        finally:
            with contextlib.suppress(OSError):   # after an error: its flush fails again, the file is closed anyway
                f.close()
        _publish(tmp, path, force, where, after)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        with _OWN_PARTIALS:
            _MINE.discard(str(tmp))


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
