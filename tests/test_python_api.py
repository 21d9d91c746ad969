"""bertc from Python (a notebook), found by a tester who never used the CLI: what the CLI refuses, the Python API
refused too little; its messages told a notebook to pass command-line flags; what the CLI prints, Python said
nowhere."""
import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import bertc
from bertc.errors import InputError, OutputError, PluginError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_run import shared_builds  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hf"


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    return shared_builds(tmp_path_factory, ("st_bert_mean_norm", "bert_seq_cls", "bert_qa"))


# --- import_spec ------------------------------------------------------------------------------------------------

def test_import_spec_keeps_an_edited_spec_without_force(tmp_path):
    """bertc.import_spec replaced a spec edited by hand silently; bertc import refuses without --force."""
    path = tmp_path / "edited.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bertc.import_spec(FIXTURES / "bert_model", path)
        data = json.loads(path.read_text())
        data["description"] = "MY EDITS"
        path.write_text(json.dumps(data))
        with pytest.raises(OutputError, match=r"edited\.json already exists; pass force=True to replace it$"):
            bertc.import_spec(FIXTURES / "bert_model", path)
        assert json.loads(path.read_text())["description"] == "MY EDITS"
        bertc.import_spec(FIXTURES / "bert_model", path, force=True)
    assert json.loads(path.read_text())["description"] != "MY EDITS"
    with pytest.raises(TypeError, match="force is True or False, not str"):
        bertc.import_spec(FIXTURES / "bert_model", path, force="no")


def test_import_spec_blames_the_name_not_bertc(tmp_path):
    """name="my model" was a WeightsError saying 'a bertc bug or an unusual config'."""
    with pytest.raises(InputError, match=r"^name 'my model': a spec name starts with a letter"):
        bertc.import_spec(FIXTURES / "bert_model", tmp_path / "n.json", name="my model")
    assert not (tmp_path / "n.json").exists()


def test_import_spec_encoder_only_and_the_no_tokenizer_warning(tmp_path):
    """The CLI's --encoder-only had no Python counterpart, and its note on a checkpoint without a tokenizer (which
    no build of it could run on text) was said only on the command line."""
    with pytest.warns(UserWarning, match=r"bert_seq_cls has no tokenizer .*bertc\.Runtime"):
        spec = bertc.import_spec(FIXTURES / "bert_seq_cls", tmp_path / "c.json", encoder_only=True)
    assert "head" not in spec
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a checkpoint with a tokenizer: no warning
        bertc.import_spec(FIXTURES / "bert_model", tmp_path / "m.json")


def test_bertc_import_still_names_its_flags(tmp_path, capsys):
    from bertc.cli import main

    out = tmp_path / "s.json"
    assert main(["import", str(FIXTURES / "bert_seq_cls"), "-o", str(out)]) == 0
    assert "note: " in capsys.readouterr().err
    assert main(["import", str(FIXTURES / "bert_seq_cls"), "-o", str(out)]) == 5
    assert capsys.readouterr().err == f"error: {out} already exists; pass --force to replace it\n"


# --- Runtime ----------------------------------------------------------------------------------------------------

def test_runtime_messages_name_parameters_not_flags(builds, tmp_path):
    cls, st = builds["bert_seq_cls"], builds["st_bert_mean_norm"]
    with pytest.raises(InputError, match=r"^artifact='nope': not an ONNX artifact of this build"):
        bertc.Runtime(cls, artifact="nope")
    rt = bertc.Runtime(cls)
    (tmp_path / "in.jsonl").write_text('{"text": "a cat"}\n')
    (tmp_path / "r.jsonl").write_text("precious\n")
    with pytest.raises(OutputError, match=r"r\.jsonl already exists; pass force=True to replace it$"):
        rt.run_file(tmp_path / "in.jsonl", tmp_path / "r.jsonl")
    with pytest.raises(InputError, match=r"choose with text_field / pair_field\)$"):
        rt.run_file(tmp_path / "in.jsonl", tmp_path / "x.jsonl", text_field="nope")   # (it has: text; choose ...)
    with pytest.raises(InputError, match=r"^choices_field: only a multiple-choice model reads choices"):
        rt.run_file(tmp_path / "in.jsonl", tmp_path / "y.jsonl", choices_field="x")
    with pytest.raises(InputError, match=r"^result_path='-': a \.parquet result cannot be streamed .* use "
                                         r"result_format=jsonl or csv, or result_path FILE\.parquet$"):
        rt.run_file(tmp_path / "in.jsonl", "-", result_format="parquet")
    with pytest.raises(InputError, match=r"give the candidate labels too \(candidate_labels\)"):
        bertc.Runtime(cls, hypothesis_template="This is {}.")
    with pytest.raises(InputError, match=r"calibration_embeddings=FILE\.npy or an array: .*bertc\.Runtime\(OUT\)"):
        bertc.Runtime(st, embedding_precision="int8")
    for message in (str(rt), rt.choice.why):
        assert "--" not in message, message
    assert (tmp_path / "r.jsonl").read_text() == "precious\n"


def test_bertc_run_still_names_its_flags(builds, tmp_path, capsys):
    from bertc.cli import main

    (tmp_path / "in.jsonl").write_text('{"text": "a cat"}\n')
    (tmp_path / "r.jsonl").write_text("precious\n")
    cls = str(builds["bert_seq_cls"])
    assert main(["run", cls, str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "r.jsonl"), "-q"]) == 5
    assert capsys.readouterr().err.endswith("already exists; pass --force to replace it\n")
    assert main(["run", cls, str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "x.jsonl"), "--artifact", "nope"]) == 2
    assert "error: --artifact nope: not an ONNX artifact" in capsys.readouterr().err
    assert main(["run", cls, str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "x.jsonl"), "--text-field",
                 "nope"]) == 2
    assert capsys.readouterr().err.rstrip().endswith("choose with --text-field / --pair-field)")


def test_run_file_force_and_keep_fields_are_checked(builds, tmp_path):
    """force="no" replaced the result (a string is true); keep_fields="" meant none (the CLI refuses it)."""
    rt = bertc.Runtime(builds["bert_seq_cls"])
    (tmp_path / "in.jsonl").write_text('{"text": "a cat", "id": 1}\n')
    (tmp_path / "r.jsonl").write_text("precious\n")
    with pytest.raises(InputError, match=r"^force 'no': True or False, not str"):
        rt.run_file(tmp_path / "in.jsonl", tmp_path / "r.jsonl", force="no")
    assert (tmp_path / "r.jsonl").read_text() == "precious\n"
    with pytest.raises(InputError, match=r"^keep_fields '': one field, or several comma-separated"):
        rt.run_file(tmp_path / "in.jsonl", tmp_path / "k.jsonl", keep_fields="")
    assert rt.run_file(tmp_path / "in.jsonl", tmp_path / "k.jsonl", keep_fields=[]) == 1
    assert set(json.loads((tmp_path / "k.jsonl").read_text())) == {"label", "label_id", "score", "scores"}


def test_a_changed_model_file_warns_from_python(builds, tmp_path):
    """A model file changed since the build ran from Python with no word (the CLI says so on its summary line)."""
    out = tmp_path / "changed"
    shutil.copytree(builds["bert_seq_cls"], out)
    rt = bertc.Runtime(out)
    path = out / rt.choice.path
    rt.close()
    import onnx

    model = onnx.load(str(path))
    model.producer_version = "edited"   # a valid model, not the bytes the build wrote
    onnx.save(model, str(path))
    with pytest.warns(UserWarning, match=rf"changed: {rt.choice.path} has CHANGED since the build"):
        bertc.Runtime(out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bertc.Runtime(builds["bert_seq_cls"])   # an intact build: no warning


def test_texts_a_notebook_passes(builds):
    """pandas' missing value was "got float"; a dict's items (ordered (question, context) pairs) were refused as a
    set; a closed Runtime's repr did not say it was closed."""
    rt = bertc.Runtime(builds["bert_seq_cls"])
    with pytest.raises(InputError, match=r"^text 2: expected a string .*, got a missing value \(NaN\)$"):
        rt.run(["a", float("nan")])
    with pytest.raises(InputError, match=r"got a missing value \(NaN\)$"):
        rt.run(np.array(["a", np.nan], dtype=object))
    qa = bertc.Runtime(builds["bert_qa"])
    pairs = {"what sat ?": "the cat sat on the mat .", "who ?": "a dog ."}
    assert qa.run(pairs.items()) == qa.run(list(pairs.items()))
    with pytest.raises(InputError, match="which a set has not"):
        rt.run({"a", "b"})
    rt.close()
    assert repr(rt) == f"Runtime({str(rt.out)!r}: closed)"


# --- the package ------------------------------------------------------------------------------------------------

def test_the_modules_the_readme_names_are_attributes_and_the_package_is_typed():
    import subprocess

    code = ("import bertc, sys; f = bertc.losses.weighted_sparse_categorical_crossentropy; "
            "g = bertc.transfer.transfer_weights; print(sorted(m for m in ('tensorflow',) if m in sys.modules)); "
            "print(bertc.errors.InputError.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-1] == "InputError"
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        bertc.nope  # noqa: B018
    assert "annotations" not in dir(bertc) and "os" not in dir(bertc) and "Runtime" in dir(bertc)
    assert (Path(bertc.__file__).parent / "py.typed").is_file()
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["bertc"]


def test_a_plugin_that_exits_is_a_plugin_error(tmp_path):
    """A plug-in's sys.exit() went through load_plugin (ending a script, or a notebook's cell)."""
    plugin = tmp_path / "exits.py"
    plugin.write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(PluginError, match=r"failed to import: SystemExit: 3 \(at .*exits\.py:2\)"):
        bertc.load_plugin(plugin)


def test_an_unknown_type_says_how_to_load_a_plugin_from_python():
    from bertc.errors import SpecError

    with pytest.raises(SpecError) as info:
        bertc.load_spec({"name": "x", "encoder": {"type": "nope"}})
    assert "bertc.load_plugin(MODULE or FILE.py)" in str(info.value) and "--plugin" not in str(info.value)


def test_load_result_repr_is_short(tmp_path):
    spec = bertc.load_spec(bertc.import_spec(FIXTURES / "bert_model", tmp_path / "m.json"))
    built = bertc.build_model(spec)
    result = bertc.load_weights(built.model, tmp_path / "m.json", FIXTURES / "bert_model")
    assert len(repr(result)) < 300 and f"loaded={len(result.loaded)}" in repr(result)


# --- bertc.build_spec -------------------------------------------------------------------------------------------

def test_build_spec_builds_from_python_quietly(tmp_path, capfd):
    """No Python way to build was documented; bertc.pipeline.build printed TensorFlow's INFO lines in a notebook and
    left absl's handler on the root logger (the user's own logging then printed in absl's format)."""
    import logging

    spec = Path(__file__).resolve().parents[1] / "specs" / "classifier.json"
    mine = logging.StreamHandler(sys.stderr)   # the program's own logging reaches its stderr during the build (a
    mine.setFormatter(logging.Formatter("USERLOG %(message)s"))   # reviewer: it went to the native log, lost)
    logging.root.addHandler(mine)
    handlers = list(logging.root.handlers)
    stages = []

    def progress(name, seconds, detail):
        stages.append(name)
        logging.getLogger("user").warning("stage %s", name)

    try:
        report = bertc.build_spec(spec, tmp_path / "out", variants=[], progress=progress)   # (TFLite's SavedModel
        assert logging.root.handlers == handlers                                          # writer called absl)
    finally:
        logging.root.removeHandler(mine)
    out, err = capfd.readouterr()
    assert out == "" and "USERLOG stage parity" in err
    # nothing else but TFLite's one native line (TF_CPP_MIN_LOG_LEVEL=3 keeps TensorFlow's; its Python INFO lines
    # are kept at WARNING)
    assert [line for line in err.splitlines() if not line.startswith("USERLOG")] in (
        [], ["INFO: Created TensorFlow Lite XNNPACK delegate for CPU."])
    assert report["status"] == "passed" and (tmp_path / "out" / "model.optimized.onnx").is_file()
    assert stages[0] == "load spec" and "parity" in stages and "export tflite" in stages
    with pytest.raises(OutputError, match=r"out already exists; pass force=True to replace it$"):
        bertc.build_spec(spec, tmp_path / "out", parity=False)
    with pytest.raises(TypeError, match="parity is True or False, not str"):
        bertc.build_spec(spec, tmp_path / "o2", parity="no")
    with pytest.raises(ValueError, match="unknown variant\\(s\\) 'int8'"):
        bertc.build_spec(spec, tmp_path / "o2", variants=["int8"])
    with pytest.raises(TypeError, match="spec is a path"):
        bertc.build_spec(bertc.load_spec(spec), tmp_path / "o2")
    assert not (tmp_path / "o2").exists()


def test_build_spec_names_the_failed_build_s_folder(tmp_path):
    from bertc.errors import ParityError

    data = json.loads((Path(__file__).resolve().parents[1] / "specs" / "classifier.json").read_text())
    data["parity"] = {"default": {"atol": 1e-12, "rtol": 0.0}}
    (tmp_path / "strict.json").write_text(json.dumps(data))
    with pytest.raises(ParityError, match=rf"^parity failed \(\d+ problem\(s\)\); report kept in "
                                          rf"{tmp_path}/out\.failed/:\n- onnx_cpu"):
        bertc.build_spec(tmp_path / "strict.json", tmp_path / "out", tflite=False, variants=[])
    assert not (tmp_path / "out").exists() and (tmp_path / "out.failed" / "report.json").is_file()


def test_build_spec_takes_the_preflight_s_ways_through(tmp_path):
    """A reviewer: a build the memory preflight refused told a Python caller to pass --memory-limit or
    --skip-preflight, which build_spec had no parameter for."""
    from bertc.errors import MemoryPreflightError

    spec = Path(__file__).resolve().parents[1] / "specs" / "classifier.json"
    with pytest.raises(MemoryPreflightError, match=r"To build anyway: memory_limit=BYTES \(use it as the available "
                                                   r"memory\) or preflight=False\.$") as caught:
        bertc.build_spec(spec, tmp_path / "out", memory_limit=1 << 20)
    assert "--" not in str(caught.value)
    report = bertc.build_spec(spec, tmp_path / "out", memory_limit=1 << 20, preflight=False, export=False)
    assert report["status"] == "passed"
    with pytest.raises(TypeError, match="memory_limit is a whole number of bytes"):
        bertc.build_spec(spec, tmp_path / "o2", memory_limit="12G")
    with pytest.raises(ValueError, match="memory_limit 0: a number of bytes above 0"):
        bertc.build_spec(spec, tmp_path / "o2", memory_limit=0)


def test_overlapping_quiet_builds_put_the_logging_set_up_back_once():
    """Two threads' builds: the first to enter saves the loggers' state, the last to leave puts it back (one leaving
    early put it back under the other, and the other then restored what the first had set)."""
    import logging

    from bertc.quiet import libraries_quiet

    tf = logging.getLogger("tensorflow")
    before = tf.level
    tf.setLevel(logging.INFO)
    try:
        first, second = libraries_quiet(), libraries_quiet()
        first.__enter__()
        second.__enter__()
        assert tf.level == logging.WARNING
        first.__exit__(None, None, None)
        assert tf.level == logging.WARNING   # the second build still runs
        second.__exit__(None, None, None)
        assert tf.level == logging.INFO
    finally:
        tf.setLevel(before)


def test_a_redirected_stderr_keeps_what_is_written_to_it_while_native_output_is_logged(tmp_path, monkeypatch):
    """A reviewer: native_stderr_to gave Python a new sys.stderr on fd 2 whatever it was: a notebook's stream (or
    contextlib.redirect_stderr) lost what was written to it inside the window (the first build_model's import of
    the components) to the kernel's terminal."""
    import io

    from bertc.quiet import native_stderr_to

    mine = io.StringIO()
    monkeypatch.setattr(sys, "stderr", mine)
    with native_stderr_to(tmp_path / "native.log"):
        print("written inside the window", file=sys.stderr)
    assert sys.stderr is mine and mine.getvalue() == "written inside the window\n"
