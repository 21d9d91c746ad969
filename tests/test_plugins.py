"""Plug-in modules on the command line: `bertc --plugin FILE|MODULE ...` and $BERTC_PLUGINS."""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC, PluginError
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
                                  "registered": ["attention 'doubled_logits'"],
                                  "sha256": hashlib.sha256(plugin.read_bytes()).hexdigest()}]
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
    assert "changed_since_build" not in json.loads((out / "report.json").read_text())["parity"]


def test_parity_with_a_plugin_edited_since_the_build_says_so(plugin_build, tmp_path):
    """The Keras model parity reloads runs the plug-in's code of today, the artifacts the build's: an edited plug-in
    (here a copy elsewhere, with one line more) is named in the report, as an edited artifact is."""
    plugin, _, out, _ = plugin_build
    edited = tmp_path / "doubled.py"
    edited.write_text(plugin.read_text() + "\nEDITED = True\n")
    proc = bertc("--plugin", str(edited), "parity", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "report.json").read_text())["parity"]["changed_since_build"] == [
        f"plug-in {plugin} (its code differs from the build's)"]
    assert f"plug-in {plugin} (its code differs from the build's)" in (out / "summary.txt").read_text()
    proc = bertc("--plugin", str(plugin), "parity", str(out))   # the build's own again: nothing to say
    assert proc.returncode == 0, proc.stderr
    assert "changed_since_build" not in json.loads((out / "report.json").read_text())["parity"]


def test_spec_with_an_unloaded_plugin_type_is_a_spec_error(plugin_build):
    _, spec, _, _ = plugin_build
    proc = bertc("validate", str(spec))
    assert proc.returncode == EXIT_BAD_SPEC and "Traceback" not in proc.stderr
    assert "unknown type 'doubled_logits'; known types: 'disentangled', 'multi_head', 'talking_heads'" in proc.stderr
    assert ("(a plug-in's component? load its module first: bertc --plugin MODULE|FILE.py ...)") in proc.stderr
    proc = bertc("--plugin", str(plugin_build[0]), "validate", str(spec))   # before the command
    assert proc.returncode == 0, proc.stderr



def test_list_keys_names_a_plugins_component_among_a_fields_choices(plugin_build):
    """``bertc list --keys`` with a plug-in: its component listed with its keys, and named among the choices of the
    fields that take its kind (a reviewer: the scaffold block's attention said a valid plug-in spec was not)."""
    proc = bertc("--plugin", str(plugin_build[0]), "list", "--keys")
    assert proc.returncode == 0, proc.stderr
    block = proc.stdout.split("\n  scaffold ")[1]
    assert "attention           one of disentangled | doubled_logits | multi_head | talking_heads | windowed" in block
    assert "\n  doubled_logits " in proc.stdout

def test_missing_plugin_module_is_exit_2_naming_it(capsys):
    assert main(["--plugin", "no_such_bertc_plugin", "list"]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert "plugin no_such_bertc_plugin: no module named 'no_such_bertc_plugin'" in err and "Traceback" not in err


def test_an_empty_plugin_name_is_refused_as_empty(capsys):
    """A reviewer: --plugin '' (an unset "$PLUGIN") said 'failed to import: ValueError: Empty module name (at
    .../bertc/plugins.py:222)', as if bertc's own file were at fault."""
    assert main(["--plugin", "", "list"]) == EXIT_BAD_SPEC
    assert capsys.readouterr().err == ("error: a plugin named by an empty string (an unset shell variable?): name a "
                                       ".py file or a module\n")


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


def test_a_plugin_that_fails_after_registering_takes_it_back_and_loads_once_fixed(tmp_path, unload):
    """A plug-in that registered a component and then raised left the component registered: loaded again once
    fixed, it registered nothing new (`registered: []`), so its builds recorded no plug-in and `bertc parity OUT`
    could not say what to load."""
    from bertc.plugins import load_plugins
    from bertc.registry import ATTENTION

    source = (EXAMPLE / "doubled_logits.py").read_text()
    plugin = tmp_path / "doubled_then_fails.py"
    plugin.write_text(source + "\nraise RuntimeError('a typo further down')\n")
    with pytest.raises(PluginError, match="a typo further down"):
        load_plugins([str(plugin)])
    assert "doubled_logits" not in ATTENTION.names()
    plugin.write_text(source)
    [record] = load_plugins([str(plugin)])
    assert record["registered"] == ["attention 'doubled_logits'"]


def test_two_plugin_files_of_one_name_are_two_modules(tmp_path, unload):
    """Two `attention.py` in two folders were both imported as `bertc_plugin_attention`: the second replaced the
    first in sys.modules, and what was the first one's was said to be the second one's."""
    from bertc.plugins import label_of, load_plugins
    from bertc.registry import ATTENTION

    first, second = tmp_path / "a" / "attention.py", tmp_path / "b" / "attention.py"
    first.parent.mkdir()
    second.parent.mkdir()
    first.write_text((EXAMPLE / "doubled_logits.py").read_text())
    second.write_text("X = 1\n")
    [one, two] = load_plugins([str(first), str(second)])
    assert (one["module"], two["module"]) == ("bertc_plugin_attention", "bertc_plugin_attention_2")
    assert label_of(ATTENTION.get("doubled_logits").component) == f"plugin {first}: "


def test_plugin_with_a_syntax_error_is_exit_2_naming_its_line(tmp_path, capsys):
    bad = tmp_path / "typo.py"
    bad.write_text("x = 1\ndef f(:\n")
    assert main(["--plugin", str(bad), "list"]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert f"plugin {bad} failed to import: SyntaxError" in err and f"(at {bad}:2)" in err


def test_loading_model_keras_of_a_plugin_build_names_the_plugin(plugin_build, unload):
    """bertc.load_model in a process without the plug-in: its first line says what is missing and how to load it,
    from Python (bertc.load_plugin) and from the command line; Keras' ~3 KB of configs are left out. (The hint was
    the last line after them, and named the command line only.)"""
    import bertc
    from bertc.errors import ModelFileError

    plugin, _, out, _ = plugin_build
    with pytest.raises(ModelFileError) as err:
        bertc.load_model(out)
    first, keras_text = str(err.value).split("\n")
    assert first == (f"{out / 'model.keras'}: cannot be loaded as a Keras model: type 'doubled_logits' is missing: the "
                     f"build used plug-in(s) {plugin} (attention 'doubled_logits'), not loaded in this process; load "
                     f"it first: from Python bertc.load_plugin({str(plugin.resolve())!r}), on the command line "
                     f"`bertc --plugin {plugin.resolve()} parity {out}` (or set BERTC_PLUGINS)")
    assert keras_text.startswith("(Keras: TypeError: ") and "Input tag 'doubled_logits'" in keras_text
    assert len(keras_text) < 800 and "config=" not in keras_text
    record = bertc.load_plugin(plugin.resolve())   # what it says, from Python: then the model loads
    assert record["registered"] == ["attention 'doubled_logits'"] and "load_plugin" in bertc.__all__
    assert bertc.load_model(out).get_layer("layer_0").attention.__class__.__name__ == "DoubledLogits"


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


# --- a plug-in's layer classes must survive model.keras: Keras serialization -----------------------------

def _architecture_example() -> str:
    """ARCHITECTURE.md's worked plug-in example (ALiBi-style distance bias), verbatim."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    section = text[text.index("### Worked example: ALiBi"):]
    code = section[section.index("```python\n") + len("```python\n"):]
    return code[:code.index("\n```")] + "\n"


@pytest.fixture
def unload():
    """What a test loads in this process (plug-ins, their components) is taken out again afterwards."""
    import bertc.plugins
    from bertc.registry import ALL

    loaded = dict(bertc.plugins._loaded)
    names = {(r.kind, n) for r in ALL for n in r.names()}
    modules = set(sys.modules)
    yield
    for registry in ALL:
        for name in registry.names():
            if (registry.kind, name) not in names:
                registry.unregister(name)
    bertc.plugins._loaded.clear()
    bertc.plugins._loaded.update(loaded)
    for module in set(sys.modules) - modules:
        if module.startswith("bertc_plugin_") or module.startswith("plugin_under_test"):
            del sys.modules[module]


def _distance_bias_spec():
    from conftest import tiny_bert

    d = tiny_bert()
    d["encoder"]["position"] = {"type": "distance_bias"}
    return d


def test_architecture_example_plugin_writes_a_model_keras_that_loads_again(tmp_path, unload):
    """The worked example was copied into plug-ins that built with exit 0 and a model.keras nothing could load
    (`Could not locate class 'DistanceBias'`, with the plug-in loaded too): it lacked @serializable."""
    import numpy as np

    import bertc
    from bertc.inputs import make_inputs
    from bertc.plugins import load_plugins

    plugin = tmp_path / "alibi.py"
    plugin.write_text(_architecture_example())
    load_plugins([str(plugin)])
    spec = bertc.load_spec(_distance_bias_spec())
    model = bertc.build_model(spec).model
    model.save(tmp_path / "model.keras")
    loaded = bertc.load_model(tmp_path / "model.keras")
    inputs = make_inputs(spec, 2, 6, np.random.default_rng(0))
    np.testing.assert_array_equal(np.asarray(loaded(inputs)["logits"]), np.asarray(model(inputs)["logits"]))


def test_a_plugin_layer_class_a_model_keras_could_not_rebuild_is_refused(tmp_path, unload, capsys):
    """Without @serializable (or with the spec_cls of another type) the build's model.keras could never be loaded:
    refused when the plug-in is loaded (exit 2), or when a build first asks for the class (a plain import),
    naming the class, its file and the fix; nothing is left registered."""
    from bertc.errors import PluginError
    from bertc.registry import POSITIONS

    bare = tmp_path / "alibi.py"
    bare.write_text(_architecture_example().replace("@serializable\n", ""))
    assert main(["--plugin", str(bare), "list"]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert (f"error: plugin {bare}: position 'distance_bias': bertc_plugin_alibi.DistanceBias ({bare}) is not "
            f"registered with Keras' serialization, so the model.keras a build writes could not be loaded again, "
            f"not even with the plug-in: decorate the class with @bertc.serializable") in err
    assert "distance_bias" not in POSITIONS and "bertc_plugin_alibi" not in sys.modules

    sys.path.insert(0, str(tmp_path))   # imported as a module of one's own: refused by the build that uses it
    try:
        bare.rename(tmp_path / "plugin_under_test.py")
        import plugin_under_test  # noqa: F401
    finally:
        sys.path.remove(str(tmp_path))
    import bertc

    with pytest.raises(PluginError, match=r"position 'distance_bias': plugin_under_test\.DistanceBias \(.*"
                                          r"plugin_under_test\.py\) is not registered with Keras' serialization"):
        bertc.build_model(_distance_bias_spec())
    POSITIONS.unregister("distance_bias")

    no_spec = tmp_path / "no_spec.py"   # serializable, but from_config could not rebuild its spec
    no_spec.write_text(_architecture_example().replace("    spec_cls = DistanceBiasSpec", "    pass"))
    assert main(["--plugin", str(no_spec), "list"]) == EXIT_BAD_SPEC
    assert (f"position 'distance_bias': bertc_plugin_no_spec.DistanceBias ({no_spec}) sets no spec_cls, so a saved "
            f"model.keras could not rebuild its spec: set spec_cls = DistanceBiasSpec") in capsys.readouterr().err


CLASHING_BLOCK = '''
from typing import Literal
from bertc.components.blocks import ScaffoldBlock, TransformerBlockSpec
from bertc.components.common import serializable
from bertc.registry import BLOCKS


class HalfResidualSpec(TransformerBlockSpec):
    type: Literal["half_residual"] = "half_residual"


@BLOCKS.register("half_residual", spec=HalfResidualSpec, description="residuals halved")
@serializable
class TransformerBlock(ScaffoldBlock):
    spec_cls = HalfResidualSpec
'''


@pytest.mark.parametrize("order", ["registered last", "serializable last"])
def test_a_plugin_class_named_as_a_bertc_class_is_refused_and_bertc_keeps_its_keras_name(tmp_path, unload, capsys,
                                                                                          order):
    """@serializable names a class 'bertc>' + its class name: a plug-in's TransformerBlock took bertc's own Keras
    name, and every ordinary model.keras then failed to load in that process (or computed with the plug-in's class)."""
    import keras

    from bertc.components.blocks import TransformerBlock
    from bertc.registry import BLOCKS

    plugin = tmp_path / "my_block.py"
    text = CLASHING_BLOCK if order == "registered last" else CLASHING_BLOCK.replace(
        '@BLOCKS.register("half_residual", spec=HalfResidualSpec, description="residuals halved")\n@serializable\n',
        '@serializable\n@BLOCKS.register("half_residual", spec=HalfResidualSpec, description="residuals halved")\n')
    plugin.write_text(text)
    assert main(["--plugin", str(plugin), "list"]) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert (f"block 'half_residual': bertc_plugin_my_block.TransformerBlock ({plugin}) is registered with Keras' "
            f"serialization as 'bertc>TransformerBlock', which names bertc.components.blocks.TransformerBlock (") in err
    assert "give the class a name of its own (e.g. MyTransformerBlock)" in err and "Traceback" not in err
    assert keras.saving.get_registered_object("bertc>TransformerBlock") is TransformerBlock
    assert keras.saving.get_registered_name(TransformerBlock) == "bertc>TransformerBlock"
    assert "half_residual" not in BLOCKS


def test_a_plugin_class_named_as_another_plugins_component_is_refused(tmp_path, unload, capsys):
    """Two plug-ins' classes of one name: the second took the first one's Keras name. A plug-in class of a name of
    its own keeps 'bertc>' + its class name, so the model.keras files of earlier builds still load."""
    import keras

    from bertc.plugins import load_plugins

    first = tmp_path / "first.py"
    first.write_text((EXAMPLE / "doubled_logits.py").read_text())
    (record,) = load_plugins([str(first)])
    doubled = sys.modules[record["module"]].DoubledLogits
    assert keras.saving.get_registered_name(doubled) == "bertc>DoubledLogits"
    second = tmp_path / "second.py"
    second.write_text((EXAMPLE / "doubled_logits.py").read_text().replace('"doubled_logits"', '"tripled_logits"')
                      .replace("DoubledLogitsSpec", "TripledLogitsSpec"))
    assert main(["--plugin", str(second), "list"]) == EXIT_BAD_SPEC
    assert (f"attention 'tripled_logits': bertc_plugin_second.DoubledLogits ({second}) is registered with Keras' "
            f"serialization as 'bertc>DoubledLogits', which names bertc_plugin_first.DoubledLogits ({first})"
            ) in capsys.readouterr().err
    assert keras.saving.get_registered_object("bertc>DoubledLogits") is doubled


FAILING_FEEDFORWARD = '''from typing import Literal

import bertc
from bertc.components.feedforward import DenseFeedforward, DenseFeedforwardSpec
from bertc.registry import FEEDFORWARD


class FailingSpec(DenseFeedforwardSpec):
    type: Literal["failing"] = "failing"


@FEEDFORWARD.register("failing", spec=FailingSpec, description="fails")
@bertc.serializable
class Failing(DenseFeedforward):
    spec_cls = FailingSpec
'''
FAILURES = {
    "__init__": ("    def __init__(self, *args, **kwargs):\n        super().__init__(*args, **kwargs)\n"
                 "        raise RuntimeError('needs a GPU')\n",
                 "feedforward 'failing' (class Failing) raised RuntimeError: needs a GPU (at {file}:19, in __init__); "
                 "an error in the plug-in's code, not in bertc"),
    "call": ("    def call(self, x, training=None):\n        raise ValueError('no such op')\n",
             "feedforward 'failing' (class Failing) raised ValueError: no such op (at {file}:18, in call); "
             "an error in the plug-in's code, not in bertc"),
    "shape": ("    def call(self, x, training=None):\n        return self.intermediate(x)\n",
              "feedforward 'failing' (class Failing): its call returned shape (None, None, 32), where a feedforward "
              "returns its input's shape (None, None, 16) (at {file}:17, bertc_plugin_failing.Failing.call)"),
    # a tester: a sequence of 1 (None, 1, 16) passed the check (rank and last axis alone) and failed in the next
    # layer as bertc's internal error; float64 passed and ONNX Runtime refused a bertc node of the graph (exit 4)
    "length": ("    def call(self, x, training=None):\n        import tensorflow as tf\n"
               "        return tf.reduce_mean(super().call(x), axis=1, keepdims=True)\n",
               "feedforward 'failing' (class Failing): its call returned shape (None, 1, 16), where a feedforward "
               "returns its input's shape (None, None, 16) (at {file}:17, bertc_plugin_failing.Failing.call)"),
    "dtype": ("    def call(self, x, training=None):\n        import tensorflow as tf\n"
              "        return tf.cast(super().call(x), tf.float64)\n",
              "feedforward 'failing' (class Failing): its call returned float64, where a feedforward returns its "
              "input's dtype float32 (at {file}:17, bertc_plugin_failing.Failing.call)"),
}


@pytest.mark.parametrize("where", list(FAILURES))
def test_an_error_in_a_plugins_code_is_the_plugins_naming_its_line(tmp_path, unload, capsys, where):
    """It was 'internal error (a bug in bertc, please report it)', exit 70, naming neither the plug-in nor its line;
    a wrong output shape failed in the next layer (MultiHeadAttention's 'attention_output')."""
    code, expected = FAILURES[where]
    plugin = tmp_path / "failing.py"
    plugin.write_text(FAILING_FEEDFORWARD + "\n" + code)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "name": "failing", "encoder": {
            "type": "scaffold", "hidden_size": 16, "num_layers": 1,
            "embedding": {"type": "standard", "vocab_size": 50, "type_vocab_size": 2, "max_sequence_length": 8},
            "hidden": {"type": "scaffold", "attention": {"type": "multi_head", "num_heads": 2},
                       "feedforward": {"type": "failing", "intermediate_size": 32}}},
        "head": {"type": "classifier", "num_classes": 2}}))
    rc = main(["--plugin", str(plugin), "build", str(spec), "-o", str(tmp_path / "out"), "-q", "--no-export",
               "--no-parity"])
    err = capsys.readouterr().err
    assert rc == EXIT_BAD_SPEC, err
    assert err == f"error: plugin {plugin}: " + expected.format(file=plugin) + "\n"
    if where == "shape":   # from Python: the same error, whatever Keras wrote around it
        import bertc
        from bertc.errors import PluginError

        with pytest.raises(PluginError, match=r"feedforward 'failing' \(class Failing\): its call returned shape"):
            bertc.build_model(json.loads(spec.read_text()))


BAD_CONFIG_BLOCK = '''from typing import Literal
from bertc.components.blocks import ScaffoldBlock, ScaffoldBlockSpec
from bertc.components.common import serializable
from bertc.registry import BLOCKS
class BadCfgBlockSpec(ScaffoldBlockSpec):
    type: Literal["blk_badcfg"] = "blk_badcfg"
@BLOCKS.register("blk_badcfg", spec=BadCfgBlockSpec, description="get_config drops the spec")
@serializable
class BadCfgBlock(ScaffoldBlock):
    spec_cls = BadCfgBlockSpec
    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "dtype": self.dtype_policy.name}
'''


def test_a_plugin_layer_its_config_does_not_rebuild_is_refused_before_model_keras(tmp_path):
    """A tester: a block whose get_config dropped its spec built and PASSED; its model.keras could never be loaded
    (bertc parity, bertc.load_model: 'ScaffoldBlock.__init__() missing ... spec', the plug-in not named)."""
    plugin = tmp_path / "badcfg.py"
    plugin.write_text(BAD_CONFIG_BLOCK)
    d = json.loads((ROOT / "specs" / "scaffold_default.json").read_text())
    d["encoder"]["hidden"] = {"type": "blk_badcfg", "attention": {"type": "multi_head", "num_heads": 4},
                              "feedforward": {"type": "dense", "intermediate_size": 64, "activation": "gelu_tanh"}}
    d["export"] = {"tflite": False, "variants": []}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(d))
    proc = bertc("build", "--plugin", str(plugin), str(spec), "-o", str(tmp_path / "out"), "-q")
    assert proc.returncode == EXIT_BAD_SPEC, proc.stderr
    assert (f"error: plugin {plugin}: BadCfgBlock (layer 'layer_0'): its get_config() does not rebuild it through "
            f"from_config()") in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


MISSPELT_POSITION = '''from typing import Literal
import tensorflow as tf
from bertc.components.common import serializable
from bertc.components.positions import PositionScheme
from bertc.registry import POSITIONS
from bertc.specbase import StrictModel
class PosTypoSpec(StrictModel):
    type: Literal["pos_typo"] = "pos_typo"
@POSITIONS.register("pos_typo", spec=PosTypoSpec, description="a misspelt key")
@serializable
class PosTypo(PositionScheme):
    spec_cls = PosTypoSpec
    def call(self, inputs):
        n = tf.range(tf.shape(inputs["input_mask"])[1])
        d = tf.cast(tf.abs(tf.expand_dims(n, 0) - tf.expand_dims(n, 1)), tf.float32)
        return {"atention_bias": -d}
'''


def test_a_position_schemes_key_that_nothing_reads_is_refused(tmp_path):
    """A tester: a position scheme returning {"atention_bias": ...} (misspelt) built and PASSED a model with no
    position bias at all: the key was dropped unread."""
    plugin = tmp_path / "typo.py"
    plugin.write_text(MISSPELT_POSITION)
    d = json.loads((ROOT / "specs" / "scaffold_default.json").read_text())
    d["encoder"]["position"] = {"type": "pos_typo"}
    d["export"] = {"tflite": False, "variants": []}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(d))
    proc = bertc("build", "--plugin", str(plugin), str(spec), "-o", str(tmp_path / "out"), "-q")
    assert proc.returncode == EXIT_BAD_SPEC, proc.stderr
    assert (f"error: plugin {plugin}: position 'pos_typo' (class PosTypo): its call returned 'atention_bias', which "
            f"nothing reads") in proc.stderr and "Traceback" not in proc.stderr


HEAD_WITHOUT_LOSS = '''from typing import Literal
from bertc.components.heads import Classifier, ClassifierSpec
from bertc.registry import HEADS
class NoLossSpec(ClassifierSpec):
    type: Literal["no_loss"] = "no_loss"
@HEADS.register("no_loss", spec=NoLossSpec, description="a head that does not reduce its loss")
class NoLoss(Classifier):
    def loss(self, outputs, labels):
        import keras
        return keras.losses.sparse_categorical_crossentropy(labels["labels"], outputs["logits"], from_logits=True)
'''


def test_a_plugin_missing_a_protocol_method_or_reducing_no_loss_is_the_plugins_error(tmp_path, monkeypatch):
    """A tester: a feedforward without param_count, a head without make_labels / loss, a head whose loss is one value
    per example: exit 70, 'internal error (a bug in bertc)'. Refused naming the plug-in, the component and what."""
    from bertc.components.feedforward import Feedforward
    from bertc.registry import Entry, protocol_problem

    class Incomplete(Feedforward):   # defines call and build, not param_count
        pass

    Incomplete.__module__ = "my_plugin"
    problem = protocol_problem(Entry(kind="feedforward", name="incomplete", spec=None, component=Incomplete,
                                     description=""))
    assert problem.startswith("feedforward 'incomplete': my_plugin.") and \
        "does not define param_count(spec, hidden_size), which every feedforward defines" in problem, problem
    assert protocol_problem(Entry(kind="feedforward", name="dense", spec=None, component=Feedforward,
                                  description="")) is None   # bertc's own
    plugin = tmp_path / "noloss.py"
    plugin.write_text(HEAD_WITHOUT_LOSS)
    d = json.loads((ROOT / "specs" / "classifier.json").read_text())
    d["head"]["type"] = "no_loss"
    d["export"] = {"tflite": False, "variants": []}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(d))
    proc = bertc("build", "--plugin", str(plugin), str(spec), "-o", str(tmp_path / "out"), "-q")
    assert proc.returncode == EXIT_BAD_SPEC, proc.stderr
    assert (f"error: plugin {plugin}: head 'no_loss' (class NoLoss): its loss returned shape (4,), where a head's "
            f"loss is one scalar") in proc.stderr


def test_an_op_onnx_cannot_express_is_named_with_its_layer_and_the_fix(tmp_path, unload, capsys):
    """A tester: Keras' own activation 'gelu' (Erfc) in a plug-in: pages of tf2onnx tracebacks, then exit 4 'No Op
    registered for Erfc', naming neither the layer nor what to do."""
    plugin = tmp_path / "failing.py"
    plugin.write_text(FAILING_FEEDFORWARD + "\n    def call(self, x, training=None):\n        import keras\n"
                      "        return keras.activations.gelu(super().call(x), approximate=False)\n")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "name": "failing", "encoder": {
            "type": "scaffold", "hidden_size": 16, "num_layers": 1,
            "embedding": {"type": "standard", "vocab_size": 50, "type_vocab_size": 2, "max_sequence_length": 8},
            "hidden": {"type": "scaffold", "attention": {"type": "multi_head", "num_heads": 2},
                       "feedforward": {"type": "failing", "intermediate_size": 32}}},
        "head": {"type": "classifier", "num_classes": 2}, "export": {"tflite": False, "variants": []}}))
    from bertc.errors import EXIT_EXPORT_FAILED as EXIT_EXPORT

    rc = main(["--plugin", str(plugin), "build", str(spec), "-o", str(tmp_path / "out"), "-q", "--no-parity"])
    err = capsys.readouterr().err
    assert rc == EXIT_EXPORT, err
    assert err.startswith("error: ONNX export failed: tf2onnx cannot convert the TensorFlow op(s) Erfc (in layer_0"), err
    assert "use bertc's 'gelu', exact GELU through erf" in err and "Traceback" not in err


def test_a_plugins_own_deprecation_warnings_are_shown(tmp_path):
    """A reviewer: the CLI's filter of libraries' deprecation warnings took every module but bertc's, so a plug-in
    author's own FutureWarning (their code) no longer showed; a library's stays quiet."""
    code = ("import warnings\n"
            "warnings.warn('my plug-in changes next release', FutureWarning)\n"
            "warnings.warn_explicit('a library note', FutureWarning, 'lib.py', 1, module='somelib.sub')\n")
    (tmp_path / "noisy_plugin.py").write_text(code)
    (tmp_path / "noisy-plugin.py").write_text(code)   # a file name that is no identifier: bertc_plugin_noisy-plugin
    (tmp_path / "pkg_noisy").mkdir()
    (tmp_path / "pkg_noisy" / "__init__.py").write_text(code)
    for plugin, env in ((str(tmp_path / "noisy_plugin.py"), None), (str(tmp_path / "noisy-plugin.py"), None),
                        ("pkg_noisy", {"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})):
        proc = bertc("--plugin", plugin, "list", env=env)
        assert proc.returncode == 0, proc.stderr
        assert "my plug-in changes next release" in proc.stderr and "a library note" not in proc.stderr, proc.stderr
