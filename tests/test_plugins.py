"""Plug-in modules on the command line: `bertc --plugin FILE|MODULE ...` and $BERTC_PLUGINS."""
import json
import os
import subprocess
import sys

import pytest

from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC
from bertc.transfer import load_keras_model
from conftest import ROOT

EXAMPLE = ROOT / "examples" / "plugins"   # the README's example plug-in and its spec


def bertc(*args, env=None, cwd=ROOT):
    """`bertc ARGS` in a fresh process (plug-ins register for real and leave this process's registries alone)."""
    return subprocess.run([sys.executable, "-m", "bertc.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def plugin_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    plugin = root / "doubled.py"   # a copy: the report records the path as given
    plugin.write_text((EXAMPLE / "doubled_logits.py").read_text())
    d = json.loads((EXAMPLE / "doubled_logits.json").read_text())
    d["export"] = {"tflite": False}
    spec = root / "spec.json"
    spec.write_text(json.dumps(d))
    out = root / "out"
    proc = bertc("build", "--plugin", str(plugin), str(spec), "-o", str(out), "-q")   # after the command
    return plugin, spec, out, proc


def test_build_with_a_plugin_file_records_it_and_lowers_around_it(plugin_build):
    plugin, _, out, proc = plugin_build
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["plugins"] == [{"plugin": str(plugin), "module": "bertc_plugin_doubled", "path": str(plugin.resolve()),
                                  "registered": ["attention 'doubled_logits'"]}]
    assert report["parity"]["passed"] and {"onnx_optimized", "onnx_int8"} <= set(report["artifacts"])
    assert [n.split(" (")[0] for n in report["fusion"]["not_lowered"]] == [f"layer_{i}/attention" for i in range(3)]


def test_parity_of_a_plugin_build_says_which_plugin_to_load(plugin_build):
    plugin, _, out, _ = plugin_build
    proc = bertc("parity", str(out))
    assert proc.returncode == EXIT_BAD_SPEC
    assert (f"error: {out}: this build used plug-in(s) {plugin} (attention 'doubled_logits'): load them first, "
            f"e.g. `bertc --plugin {plugin.resolve()} parity {out}` (or set BERTC_PLUGINS)") in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = bertc("bench", str(out), "--rounds", "1", "--calls", "1", "--seq", "4", "--no-plot")
    assert proc.returncode == EXIT_BAD_SPEC   # it suggested running `... parity OUT`
    assert f"e.g. `bertc --plugin {plugin.resolve()} bench {out}` (or set BERTC_PLUGINS)" in proc.stderr
    proc = bertc("parity", str(out), env={"BERTC_PLUGINS": str(plugin)})
    assert proc.returncode == 0, proc.stderr


def test_spec_with_an_unloaded_plugin_type_is_a_spec_error(plugin_build):
    _, spec, _, _ = plugin_build
    proc = bertc("validate", str(spec))
    assert proc.returncode == EXIT_BAD_SPEC and "Traceback" not in proc.stderr
    assert "unknown type 'doubled_logits'; known types: 'disentangled', 'multi_head', 'talking_heads'" in proc.stderr
    assert ("(a plug-in's component? load its module first: bertc --plugin MODULE|FILE.py ...)") in proc.stderr
    proc = bertc("--plugin", str(plugin_build[0]), "validate", str(spec))   # before the command
    assert proc.returncode == 0, proc.stderr


def test_missing_plugin_module_is_exit_2_naming_it(capsys):
    assert main(["--plugin", "no_such_bertc_plugin", "list"]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert "plugin no_such_bertc_plugin: no module named 'no_such_bertc_plugin'" in err and "Traceback" not in err


def test_missing_plugin_file_is_exit_2_naming_it(tmp_path, capsys):
    assert main(["--plugin", str(tmp_path / "absent.py"), "list"]) == EXIT_BAD_SPEC
    assert f"plugin {tmp_path / 'absent.py'}: no such file" in capsys.readouterr().err


def test_plugin_that_raises_is_exit_2_naming_its_line(tmp_path, capsys):
    bad = tmp_path / "broken.py"
    bad.write_text("import os\n\nraise RuntimeError('needs a GPU')\n")
    assert main(["--plugin", str(bad), "list"]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert f"plugin {bad} failed to import: RuntimeError: needs a GPU (at {bad}:3)" in err and "Traceback" not in err
    assert "bertc_plugin_broken" not in sys.modules


def test_plugin_with_a_syntax_error_is_exit_2_naming_its_line(tmp_path, capsys):
    bad = tmp_path / "typo.py"
    bad.write_text("x = 1\ndef f(:\n")
    assert main(["--plugin", str(bad), "list"]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert f"plugin {bad} failed to import: SyntaxError" in err and f"(at {bad}:2)" in err


def test_loading_model_keras_of_a_plugin_build_names_the_plugin(plugin_build):
    """bertc.load_model in a process without the plug-in: the damaged-file error is not the whole story."""
    from bertc.errors import ModelFileError

    plugin, _, out, _ = plugin_build
    with pytest.raises(ModelFileError) as err:
        load_keras_model(out)
    assert "doubled_logits" in str(err.value) and f"this build used plug-in(s) {plugin}" in str(err.value)
    assert f"--plugin {plugin.resolve()}" in str(err.value)


def test_list_says_how_a_plugin_reaches_the_optimized_artifact(tmp_path):
    proc = bertc("list", "--plugin", str(EXAMPLE / "doubled_logits.py"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.strip() for line in lines if "[optimized ONNX" in line] == [
        "doubled_logits     Multi-head attention with its logits doubled (an example plug-in).  "
        "[optimized ONNX: its Keras call through tf2onnx, spliced in]"]   # every bundled component lowers itself


def test_a_loaded_plugin_the_spec_does_not_use_is_not_recorded(tmp_path):
    from conftest import tiny_bert

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_bert()))
    out = tmp_path / "out"
    proc = bertc("--plugin", str(EXAMPLE / "doubled_logits.py"), "build", str(spec), "-o", str(out), "-q", "--no-export")
    assert proc.returncode == 0, proc.stderr
    assert "plugins" not in json.loads((out / "report.json").read_text())


DUPLICATE = """
from bertc.components.attention import MultiHeadAttention, MultiHeadAttentionSpec
from bertc.registry import ATTENTION


@ATTENTION.register("multi_head", spec=MultiHeadAttentionSpec, description="a replacement")
class Dup(MultiHeadAttention):
    def mix_logits(self, logits):
        return 2.0 * logits
"""


def test_a_plugin_that_takes_a_built_in_name_is_refused_naming_both(tmp_path, capsys):
    """It replaced the built-in silently ("registered no component", no `plugins` in the report), so parity and
    load_model without it ran the built-in: other numbers, exit 0."""
    from bertc.components.attention import MultiHeadAttention
    from bertc.registry import ATTENTION

    dup = tmp_path / "dup.py"
    dup.write_text(DUPLICATE)
    assert main(["--plugin", str(dup), "list"]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert (f"error: plugin {dup} failed to import: attention 'multi_head' is already registered by "
            f"bertc.components.attention.MultiHeadAttention (") in err
    assert f"); bertc_plugin_dup.Dup ({dup}) cannot register under the same name" in err
    assert f"(at {dup}:6)" in err and "registered no component" not in err and "Traceback" not in err
    assert ATTENTION.component("multi_head") is MultiHeadAttention and "bertc_plugin_dup" not in sys.modules


def test_a_second_plugin_that_takes_the_first_ones_name_is_refused(tmp_path):
    first = tmp_path / "first.py"
    first.write_text((EXAMPLE / "doubled_logits.py").read_text())
    second = tmp_path / "second.py"
    second.write_text((EXAMPLE / "doubled_logits.py").read_text().replace("class DoubledLogits(", "class Other("))
    proc = bertc("--plugin", str(first), "list", "--plugin", str(second))
    assert proc.returncode == EXIT_BAD_SPEC and "Traceback" not in proc.stderr
    assert (f"error: plugin {second} failed to import: attention 'doubled_logits' is already registered by "
            f"bertc_plugin_first.DoubledLogits ({first}); bertc_plugin_second.Other ({second}) cannot register "
            f"under the same name") in proc.stderr
    # the same file named twice (a relative and an absolute path) is one plug-in, imported once
    proc = bertc("--plugin", first.name, "list", env={"BERTC_PLUGINS": str(first)}, cwd=tmp_path)
    assert proc.returncode == 0 and "doubled_logits" in proc.stdout and proc.stderr == "", proc.stderr


def test_registry_refuses_a_second_class_under_a_name_but_not_a_redefinition():
    from pydantic import BaseModel
    from typing import Literal

    from bertc.errors import PluginError
    from bertc.registry import Registry

    class Mine(BaseModel):
        type: Literal["mine"] = "mine"

    registry = Registry("test")

    def define():
        class Layer:
            pass
        return Layer

    first, again = define(), define()   # one definition run twice (a notebook cell re-run, a module reloaded)
    registry.register("mine", spec=Mine, description="")(first)
    registry.register("mine", spec=Mine, description="")(again)
    assert registry.component("mine") is again

    class Other:
        pass

    with pytest.raises(PluginError, match=r"test 'mine' is already registered by .*define\.<locals>\.Layer .*; "
                                          r".*Other .* cannot register under the same name"):
        registry.register("mine", spec=Mine, description="")(Other)
    assert registry.component("mine") is again


@pytest.mark.parametrize("kind, typo, meant", [("ENCODERS", "bret", "bert"), ("HEADS", "clasifier", "classifier"),
                                               ("FEEDFORWARD", "gatd", "gated")])
def test_an_unknown_component_type_suggests_the_close_one(kind, typo, meant):
    import bertc.registry

    with pytest.raises(KeyError) as err:
        getattr(bertc.registry, kind).get(typo)
    assert f"type {typo!r} (did you mean {meant!r}?); known: " in str(err.value)
