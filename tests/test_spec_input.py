"""Hostile spec input: duplicate keys, deep nesting, and a property-based fuzz of `bertc validate`."""
import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC, SpecError
from bertc.spec import load_spec
from conftest import TINY_SPECS, tiny_bert


def test_duplicate_keys_are_errors_with_paths(tmp_spec):
    text = json.dumps(tiny_bert())
    text = text.replace('"hidden_size": 16', '"hidden_size": 32, "hidden_size": 30')
    text = text.replace('"name": "tiny"', '"name": "tiny", "name": "tiny2"')
    with pytest.raises(SpecError) as info:
        load_spec(tmp_spec(text))
    problems = dict(info.value.problems)
    assert problems["$.encoder.hidden_size"].startswith("duplicate key 'hidden_size' (given 2 times")
    assert "last value, 30" in problems["$.encoder.hidden_size"]
    assert problems["$.name"].startswith("duplicate key 'name'")


@pytest.mark.parametrize("opening,closing", [("[", "]"), ('{"a": ', "}")])
def test_deep_nesting_is_a_spec_error_not_a_crash(tmp_spec, capsys, opening, closing):
    inner = opening * 5000 + ("1" if opening != "[" else "") + closing * 5000
    text = json.dumps(tiny_bert()).replace('"seed": 1', f'"seed": {inner}')
    path = tmp_spec(text)
    assert main(["validate", str(path)]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert "$.seed" in err and "nested more than 32 levels deep" in err and "line 1, column" in err
    assert "internal error" not in err and "Traceback" not in err


def test_deep_dict_given_to_the_api_is_a_spec_error():
    data = tiny_bert()
    node = data["encoder"]
    for _ in range(100):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(SpecError, match=r"\$\.encoder\.x\.x\.x .* nested more than 32 levels"):
        load_spec(data)


def test_strings_with_brackets_do_not_count_as_nesting(tmp_spec):
    d = tiny_bert()
    d["description"] = "[" * 100 + '{"' * 50
    assert load_spec(tmp_spec(d)).description == d["description"]


# --- property-based: whatever the mutation, `bertc validate` says ok (0) or names problems (2) ------

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)), max_leaves=8)
KEYS = st.sampled_from(["type", "hidden_size", "num_layers", "hidden", "embedding", "attention", "feedforward",
                        "num_heads", "vocab_size", "max_sequence_length", "head", "num_classes", "parity",
                        "export", "sequence_lengths", "intermediate_size", "activation", "initializer", "x"])


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _mutate(data, data_strategy):
    paths = list(_paths(data))
    path = data_strategy.draw(st.sampled_from(paths))
    op = data_strategy.draw(st.sampled_from(["set", "delete", "add", "wrap"]))
    if not path:
        return data_strategy.draw(JSON_VALUES) if op == "set" else data
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    if op == "set":
        parent[key] = data_strategy.draw(JSON_VALUES)
    elif op == "delete":
        del parent[key]
    elif op == "add" and isinstance(parent, dict):
        parent[data_strategy.draw(KEYS)] = data_strategy.draw(JSON_VALUES)
    elif op == "wrap":
        parent[key] = [parent[key]] if data_strategy.draw(st.booleans()) else {"type": parent[key]}
    return data


def _text_mutation(text, data_strategy):
    op = data_strategy.draw(st.sampled_from(["none", "truncate", "duplicate_key", "nest"]))
    if op == "truncate":
        return text[:data_strategy.draw(st.integers(0, max(0, len(text) - 1)))]
    if op == "duplicate_key":
        return text.replace("{", '{"type": "bert", ', 1)
    if op == "nest":
        depth = data_strategy.draw(st.integers(1, 3000))
        return text.replace('"seed"', '"x": ' + "[" * depth + "]" * depth + ', "seed"', 1)
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(base=st.sampled_from(TINY_SPECS), data=st.data())
def test_validate_only_ever_exits_0_or_2(tmp_path, capsys, base, data):
    spec = json.loads(base.read_text())
    for _ in range(data.draw(st.integers(1, 4))):
        spec = _mutate(spec, data)
    text = _text_mutation(json.dumps(spec), data)
    path = tmp_path / "mutant.json"
    path.write_text(text)
    code = main(["validate", str(path)])
    out = capsys.readouterr()
    assert code in (0, EXIT_BAD_SPEC), out
    assert "Traceback" not in out.err and "internal error" not in out.err, out.err
    if code == EXIT_BAD_SPEC:
        assert "problem(s) in the spec" in out.err and "\n  $" in out.err or "line " in out.err, out.err


def test_validate_cli_never_shows_a_traceback_in_a_fresh_process(tmp_spec):
    """The installed entry point (not the in-process main) on the worst inputs."""
    bad = tmp_spec('{"name": "x", "encoder": ' + "[" * 20000 + "]" * 20000 + "}")
    run = subprocess.run([sys.executable, "-m", "bertc.cli", "validate", str(bad)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == EXIT_BAD_SPEC and "Traceback" not in run.stderr and "nested more than" in run.stderr


def test_an_integer_too_long_to_read_is_a_spec_error_with_its_place(tmp_spec, capsys):
    """json.loads fails on an integer of more than 4300 digits with a ValueError naming no place (validate
    crashed); a float of any length converts, and an integer given through the API is reported without its digits."""
    text = json.dumps(tiny_bert()).replace('"seed": 1', '"seed": ' + "9" * 5000)
    path = tmp_spec(text)
    assert main(["validate", str(path)]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    column = text.index("9" * 5000) + 1
    assert f"$.seed (line 1, column {column}): an integer of 5,000 digits, more than can be read (4,300 digits)" in err
    assert "internal error" not in err
    long_float = json.dumps(tiny_bert(description="x")).replace('"seed": 1', '"seed": 1.' + "5" * 5000)
    with pytest.raises(SpecError) as info:
        load_spec(tmp_spec(long_float))
    assert [p for p, _ in info.value.problems] == ["$.seed"]   # a value problem (not an integer), not a crash
    with pytest.raises(SpecError) as info:
        load_spec(tiny_bert(seed=10**5000))
    (where, msg), = info.value.problems
    assert where == "$.seed" and msg.endswith("got an integer of about 5,001 digits")


def test_a_byte_order_mark_is_accepted_and_other_encodings_are_named(tmp_path):
    """Windows editors start UTF-8 files with a BOM: it was refused with Python's 'decode using utf-8-sig'."""
    text = json.dumps(tiny_bert())
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_spec(bom) == load_spec(tiny_bert())
    utf16 = tmp_path / "utf16.json"
    utf16.write_text(text, encoding="utf-16")
    with pytest.raises(SpecError) as info:
        load_spec(utf16)
    assert info.value.problems == [("$", "the file is UTF-16 text (it starts with a UTF-16 byte order mark); a spec "
                                         "is UTF-8: save it as UTF-8")]
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(text.replace('"tiny"', '"tiny",\n "description": "caf\xe9"', 1).encode("latin-1"))
    with pytest.raises(SpecError) as info:
        load_spec(latin1)
    (where, msg), = info.value.problems
    assert where == "line 2, column 21" and msg == "not UTF-8 text (byte 0xe9): a spec is UTF-8; save it as UTF-8"


@pytest.mark.parametrize("command", ["build", "validate", "inspect"])
def test_a_build_folder_or_a_keras_model_given_as_the_spec_names_the_spec_to_give(tmp_path, capsys, command):
    """`bertc inspect OUT` said only "is a directory", and `bertc inspect OUT/model.keras` "not UTF-8 text (byte
    0xa5) ... save it as UTF-8" (found by a tester): the folder's spec.json, and what a .keras model is, are named."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "spec.json").write_text(json.dumps(tiny_bert()))
    keras_file = out / "model.keras"
    keras_file.write_bytes(b"PK\x03\x04" + bytes(range(256)))
    extra = ["-o", str(tmp_path / "new")] if command == "build" else []
    assert main([command, str(out), *extra]) == EXIT_BAD_SPEC
    assert f"{out} is a folder; its spec is {out / 'spec.json'}" in capsys.readouterr().err
    assert main([command, str(keras_file), *extra]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert "a zip archive (a Keras .keras model?), not a JSON spec: a build's spec is the spec.json beside its " \
           "model.keras" in err and "UTF-8" not in err and "Traceback" not in err
