"""Strict reading of spec JSON: nesting depth and duplicate keys.

Python's ``json`` accepts duplicate keys (the last one silently wins) and recurses once
per nesting level (a deeply nested file ends in ``RecursionError``). A spec is a small,
shallow document, so both are reported as spec problems with JSON paths instead.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Optional

from bertc.errors import SpecTextError  # noqa: F401  (raised here; spec.py catches specjson.SpecTextError)
from bertc.specbase import json_path

MAX_DEPTH = 32  # a real spec nests about 6 levels (spec > encoder > hidden[i] > attention > initializer)

Problem = tuple[str, str]  # (JSON path or text location, message)


class _Object(dict):
    """A parsed JSON object that remembers the keys it was given more than once."""

    __slots__ = ("duplicates",)


def _pairs(pairs: list[tuple[str, Any]]) -> _Object:
    obj, counts = _Object(), {}
    for key, value in pairs:
        counts[key] = counts.get(key, 0) + 1
        obj[key] = value
    obj.duplicates = {k: n for k, n in counts.items() if n > 1}
    return obj


def _short_path(parts: list) -> str:
    if len(parts) > 8:
        return json_path(tuple(parts[:4])) + " ... " + json_path(tuple(parts[-2:]))[1:] + f" ({len(parts)} levels)"
    return json_path(tuple(parts))


def _too_deep_in_text(text: str, limit: int) -> Optional[Problem]:
    """Scan JSON text (without recursion) for the first container nested deeper than ``limit``, or the first
    integer longer than Python converts (``sys.get_int_max_str_digits()``, 4300 digits by default: ``json``
    would fail with a ValueError that names no place)."""
    stack: list[list] = []  # [kind, key or index]
    i, n, last_string = 0, len(text), None
    line, line_start = 1, 0
    max_digits = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
    while i < n:
        c = text[i]
        if max_digits and c in "-0123456789":   # a number: an integer, or a float (which converts at any length)
            j = i + 1
            while j < n and text[j] in "0123456789+-.eE":
                j += 1
            digits = sum(ch.isdigit() for ch in text[i:j])
            if digits > max_digits and not any(ch in ".eE" for ch in text[i:j]):
                parts = [entry[1] for entry in stack]
                parts = [p for p in parts if p is not None]
                return (f"{_short_path(parts)} (line {line}, column {i - line_start + 1})",
                        f"an integer of {digits:,} digits, more than can be read ({max_digits:,} digits) and far "
                        f"beyond any value a spec takes")
            i = j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            try:
                last_string = json.loads(text[i:j + 1])
            except ValueError:
                last_string = text[i + 1:j]
            i = j + 1
            continue
        if c == "\n":
            line, line_start = line + 1, i + 1
        elif c == ":" and stack and stack[-1][0] == "{":
            stack[-1][1] = last_string
        elif c == "," and stack and stack[-1][0] == "[":
            stack[-1][1] += 1
        elif c in "{[":
            if len(stack) >= limit:
                parts = [entry[1] for entry in stack]
                parts = [p for p in parts if p is not None]
                return (f"{_short_path(parts)} (line {line}, column {i - line_start + 1})",
                        f"nested more than {limit} levels deep; a spec needs far fewer")
            stack.append([c, 0 if c == "[" else None])
        elif c in "}]" and stack:
            stack.pop()
        i += 1
    return None


def _plain(value: Any, path: tuple, problems: list[Problem]) -> Any:
    """Convert parsed objects to plain dicts (iteratively deep is fine: depth was checked) and collect
    duplicate keys with their paths."""
    if isinstance(value, dict):
        for key, count in getattr(value, "duplicates", {}).items():
            problems.append((json_path(path + (key,)),
                             f"duplicate key {key!r} (given {count} times; JSON would silently keep only the last "
                             f"value, {json.dumps(value[key])[:60]})"))
        return {k: _plain(v, path + (k,), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, path + (i,), problems) for i, v in enumerate(value)]
    return value


def parse(text: str, limit: int = MAX_DEPTH) -> tuple[Any, list[Problem]]:
    """Parse spec JSON text. Returns (data, problems about duplicate keys); raises :class:`SpecTextError`
    (a ValueError) with a (location, message) pair for text that cannot be a spec (malformed or too deeply nested)."""
    deep = _too_deep_in_text(text, limit)
    if deep is not None:
        raise SpecTextError(*deep)
    try:
        data = json.loads(text, object_pairs_hook=_pairs)
    except json.JSONDecodeError as exc:
        raise SpecTextError(f"line {exc.lineno}, column {exc.colno}", f"invalid JSON: {exc.msg}") from None
    except RecursionError:  # belt and braces: the scan above should have caught it
        raise SpecTextError("$", f"nested more than {limit} levels deep") from None
    problems: list[Problem] = []
    return _plain(data, (), problems), problems


def depth_problem(data: Any, limit: int = MAX_DEPTH) -> Optional[Problem]:
    """The first place where an in-memory spec (dicts and lists) nests deeper than ``limit``."""
    todo = [(data, ())]
    while todo:
        value, path = todo.pop()
        if isinstance(value, (dict, list)):
            if len(path) >= limit:
                return _short_path(list(path)), f"nested more than {limit} levels deep; a spec needs far fewer"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            todo.extend((v, path + (k,)) for k, v in items)
    return None


