"""QA defects at the bottom of the declared dependency ranges (a run-only environment installs bertc with
``--no-deps``, so nothing checks the versions already there):

- onnxruntime 1.20 computes bertc's fused graphs wrongly: a build failed its structural check blaming the lowering,
  and ``bertc run`` of a build made elsewhere gave wrong scores with exit 0. The floor is 1.21, and bertc refuses an
  older onnxruntime by name before opening a session;
- tokenizers < 0.20 cannot read today's tokenizer.json files (exit 70, "internal error"): floor 0.20, refused by name;
- click 8.1 lacks ``NoArgsIsHelpError``: every error path ended in an AttributeError traceback: floor 8.2, said so;
- pyarrow 14 under NumPy 2 fails to import: bertc said "pyarrow, which is not installed" and advised the install
  that changes nothing (floor 16, the first that runs under NumPy 2; a failed import is named as one);
- safetensors 0.4.0 raises AttributeError (no np.bfloat16) on a BF16 tensor, which bertc's widening did not catch.
"""
import builtins
import json
import types

import numpy as np
import pytest

from bertc import requirements
from bertc.errors import EXIT_MISSING_LIBRARY, MissingLibrary


@pytest.mark.parametrize("dist, old, new, extra", [("onnxruntime", "1.20.1", "1.21.0", "cpu"),
                                                   ("onnxruntime-gpu", "1.20.0", "1.22.0", "gpu"),
                                                   ("tokenizers", "0.19.1", "0.20.0", "text"),
                                                   ("pyarrow", "15.0.2", "16.0.0", "parquet"),
                                                   ("click", "8.1.7", "8.2.0", None),
                                                   ("safetensors", "0.4.0", "0.4.1", None)])
def test_versions_below_the_floor_are_named_with_the_upgrade(dist, old, new, extra):
    line = requirements.too_old(dist, old, extra)
    assert line.startswith(f"{dist} {old} is older than bertc supports (") and "pip install '" in line
    assert requirements.too_old(dist, new, extra) is None
    assert requirements.too_old(dist, new + "+cu121", extra) is None
    assert requirements.too_old(dist, "", extra) is None        # no version to judge: not refused


def test_floors_follow_pyproject(monkeypatch):
    monkeypatch.setattr(requirements, "_installed_extras", lambda: {})   # a source tree without metadata
    monkeypatch.setattr(requirements, "_installed_core", lambda: [])
    requirements.too_old.cache_clear()
    try:
        assert requirements.too_old("onnxruntime", "1.20.9", "cpu") and not requirements.too_old("onnxruntime", "1.21",
                                                                                                   "cpu")
    finally:
        requirements.too_old.cache_clear()


def test_an_old_onnxruntime_is_refused_before_a_session_opens(tmp_path):
    from bertc.backends import CPU, Backend, ort_session

    fake = types.SimpleNamespace(__version__="1.20.1")
    with pytest.raises(MissingLibrary, match=r"^onnxruntime 1\.20\.1 is older than bertc supports"):
        requirements.require_onnxruntime(fake)
    import onnxruntime

    requirements.require_onnxruntime(onnxruntime)     # the installed one passes
    backend = Backend("onnx_cpu", "onnx", tmp_path / "model.onnx", "onnx", "fp32", CPU)
    old = onnxruntime.__version__
    onnxruntime.__version__ = "1.20.1"
    try:
        with pytest.raises(MissingLibrary, match="onnxruntime 1.20.1"):
            ort_session(backend)
    finally:
        onnxruntime.__version__ = old


def test_pyarrow_that_fails_to_import_is_not_called_missing(monkeypatch):
    from bertc import run_io

    real = builtins.__import__

    def broken(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            import sys
            print("A module that was compiled using NumPy 1.x cannot be run in NumPy 2.4.6", file=sys.stderr)
            raise ImportError("numpy.core.multiarray failed to import")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(MissingLibrary) as info:
        run_io._pyarrow("Parquet")
    text = str(info.value)
    assert "is installed but fails to import (numpy.core.multiarray failed to import)" in text
    assert "which is not installed" not in text



def test_pyarrow_that_needs_numpy_2_says_to_upgrade_numpy(monkeypatch):
    """A tester at the lowest versions: pyarrow 26 and later do not import under NumPy 1.x, which their metadata does
    not say, so pip pairs them; bertc advised reinstalling pyarrow, which changes nothing."""
    from importlib import metadata

    from bertc import run_io

    real = builtins.__import__

    def broken(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError("pyarrow requires NumPy 2.0 or newer, found 1.26.4")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    monkeypatch.setattr(metadata, "version", lambda name: "26.0.1" if name == "pyarrow" else "0")
    with pytest.raises(MissingLibrary) as info:
        run_io._pyarrow("--ray")
    text = str(info.value)
    assert text.startswith("--ray needs pyarrow; pyarrow 26.0.1 is installed but fails to import (pyarrow requires "
                           "NumPy 2.0 or newer, found 1.26.4): upgrade NumPy (pip install 'numpy>=2,<3')"), text
    assert "'pyarrow>=16,<26'" in text and "reinstall" not in text

def test_click_without_no_args_is_help_error_is_named(monkeypatch, capfd):
    from importlib import metadata

    from bertc import cli

    monkeypatch.setattr(cli, "NO_ARGS_IS_HELP", ())
    monkeypatch.setattr(metadata, "version", lambda name: "8.1.7" if name == "click" else "0")
    assert cli.main(["validate", "nothing.json"]) == EXIT_MISSING_LIBRARY
    err = capfd.readouterr().err
    assert err.startswith("error: click 8.1.7 is older than bertc supports (") and "Traceback" not in err


def test_bf16_tensors_are_widened_when_safetensors_raises_attribute_error(tmp_path):
    from bertc import checkpoints

    values = np.array([[1.5, -2.0], [0.25, 3.0]], np.float32)
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, len(raw)]}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + raw)

    class Handle:
        def get_tensor(self, name):
            raise AttributeError("module 'numpy' has no attribute 'bfloat16'")

    assert checkpoints._bf16_tensor(path, "w").tolist() == values.tolist()
    reader = checkpoints.SafetensorsCheckpoint.__new__(checkpoints.SafetensorsCheckpoint)
    reader._handles, reader._files, reader._dtypes = {path: Handle()}, {"w": path}, {"w": "BF16"}
    assert reader._read("w").tolist() == values.tolist()
