"""KerasCheckpoint reads a bertc .keras file's weights straight from its model.weights.h5 (h5py), named by
the archive's bertc_weights.json, without deserializing the model: reading a checkpoint imports neither
bertc's layer library nor a plug-in. A .keras file without bertc_weights.json is deserialized instead."""
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import h5py
import numpy as np
import pytest

from bertc.checkpoints import MANIFEST, KerasCheckpoint, open_checkpoint
from bertc.errors import WeightsError
from bertc.export.keras_file import WEIGHTS_MANIFEST
from conftest import ROOT, TINY_SPECS, tiny_bert

EXAMPLE = ROOT / "examples" / "plugins"


def _built(spec):
    from bertc.build import build_model

    built = build_model(spec)
    return getattr(built, "model", built)


def _save(model, path):
    from bertc.export.keras_file import save_keras

    save_keras(model, path)
    return path


def _assert_same(checkpoint, want: dict):
    assert checkpoint.names() == sorted(want)
    for name in checkpoint.names():
        assert checkpoint.shape(name) == tuple(want[name].shape), name
        got = checkpoint.read(name)
        assert got.dtype == want[name].dtype and np.array_equal(got, want[name]), name


@pytest.mark.parametrize("spec", TINY_SPECS, ids=[p.stem for p in TINY_SPECS])
def test_weights_of_every_bundled_model_read_from_the_file(spec, tmp_path):
    model = _built(spec)
    path = _save(model, tmp_path / "model.keras")
    want = {w.path: w.numpy() for w in model.weights}   # a shared layer (ALBERT's shared_layer): once
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read(WEIGHTS_MANIFEST))
    listed = [entry["path"] for entry in manifest["weights"]]
    assert set(listed) == {w.path for w in model.weights} and len(listed) == len(set(listed)) == len(want)
    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
        for entry in manifest["weights"]:   # each dataset holds the variable the manifest says
            assert np.array_equal(h5[entry["dataset"]][()], want[entry["path"]]), entry
    checkpoint = KerasCheckpoint(path)
    _assert_same(checkpoint, want)
    assert checkpoint.describe() == f"{path} (keras, {len(want)} tensors)"
    assert open_checkpoint(tmp_path).names() == sorted(want)   # a build directory: its model.keras


def test_a_plugin_models_weights_read_without_the_plugin(tmp_path):
    """The plug-in is loaded only in the process that builds and saves the model."""
    plugin = tmp_path / "doubled.py"
    plugin.write_text((EXAMPLE / "doubled_logits.py").read_text())
    script = textwrap.dedent(f"""
        import numpy as np
        from bertc.plugins import load_plugins
        load_plugins([{str(plugin)!r}])
        from bertc.build import build_model
        from bertc.export.keras_file import save_keras
        built = build_model({str(EXAMPLE / "doubled_logits.json")!r})
        model = getattr(built, "model", built)
        save_keras(model, {str(tmp_path / "model.keras")!r})
        np.savez({str(tmp_path / "want.npz")!r}, **{{w.path: w.numpy() for w in model.weights}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    from bertc.registry import ATTENTION

    assert "doubled_logits" not in ATTENTION.names()   # this process never loaded the plug-in
    with np.load(tmp_path / "want.npz") as want:
        want = dict(want)
    assert any("/attention/query/kernel" in name for name in want)
    _assert_same(KerasCheckpoint(tmp_path / "model.keras"), want)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "model.keras"
    return _save(_built(tiny_bert()), path)


def _rewrite(src, dst, drop=(), replace=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename in drop:
                continue
            data = zin.read(info.filename)
            zout.writestr(info, (replace or {}).get(info.filename, data))
    return dst


def _error(path) -> str:
    with pytest.raises(WeightsError) as exc:
        KerasCheckpoint(path)
    assert str(path) in str(exc.value)
    return str(exc.value)


def test_files_that_are_not_a_bertc_keras_file(saved, tmp_path):
    assert "no such model file" in _error(tmp_path / "missing.keras")
    (tmp_path / "text.keras").write_text("not a zip at all")
    assert "not a Keras model archive" in _error(tmp_path / "text.keras")
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    assert "not a Keras model archive" in _error(truncated)
    no_weights = _rewrite(saved, tmp_path / "no_weights.keras", drop=("model.weights.h5",))
    assert "damaged Keras archive: model.weights.h5 missing" in _error(no_weights)
    no_config = _rewrite(saved, tmp_path / "no_config.keras", drop=("config.json",))
    assert "damaged Keras archive: config.json missing" in _error(no_config)
    not_h5 = _rewrite(saved, tmp_path / "not_h5.keras", replace={"model.weights.h5": b"garbage" * 100})
    assert "model.weights.h5 is not a readable HDF5 file" in _error(not_h5)
    # the manifest names the weights: config.json is not read; without it, the model must deserialize
    bad_config = _rewrite(saved, tmp_path / "bad_config.keras", replace={"config.json": b"{}"})
    assert KerasCheckpoint(bad_config).names() == KerasCheckpoint(saved).names()
    bad_config = _rewrite(bad_config, tmp_path / "bad_config_old.keras", drop=(MANIFEST,))
    assert "cannot be loaded as a Keras model" in _error(bad_config)
    assert f"no {MANIFEST}" in _error(bad_config)
    not_json = _rewrite(saved, tmp_path / "not_json.keras", replace={MANIFEST: b"{"})
    assert f"{MANIFEST} does not describe model.weights.h5" in _error(not_json)
    with zipfile.ZipFile(saved) as archive:
        manifest = json.loads(archive.read(MANIFEST))
    manifest["weights"][0]["dataset"] = "layers/nothing/vars/0"
    wrong = _rewrite(saved, tmp_path / "wrong.keras", replace={MANIFEST: json.dumps(manifest).encode()})
    assert "names 'layers/nothing/vars/0'" in _error(wrong)
    newer = _rewrite(saved, tmp_path / "newer.keras",
                     replace={MANIFEST: json.dumps({**manifest, "version": 2}).encode()})
    assert "version 2" in _error(newer)
    # a damaged byte inside the stored weights: the zip's checksum says so
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as archive:
        info = archive.getinfo("model.weights.h5")
    data[info.header_offset + 30 + len(info.filename) + info.file_size // 2] ^= 0xFF
    (tmp_path / "flipped.keras").write_bytes(bytes(data))
    assert "model.weights.h5 fails its checksum" in _error(tmp_path / "flipped.keras")
    assert open_checkpoint(saved).names() == KerasCheckpoint(saved).names()


def test_a_deflated_archive_reads_the_same(saved, tmp_path):
    deflated = tmp_path / "deflated.keras"
    with zipfile.ZipFile(saved) as zin, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
    a, b = KerasCheckpoint(saved), KerasCheckpoint(deflated)
    assert a.names() == b.names()
    for name in a.names():
        assert np.array_equal(a.read(name), b.read(name))


def test_the_manifest_entry_is_reproducible_and_last(saved, tmp_path):
    assert MANIFEST == WEIGHTS_MANIFEST
    again = _save(_built(tiny_bert()), tmp_path / "again.keras")
    assert again.read_bytes() == saved.read_bytes()
    with zipfile.ZipFile(saved) as archive:
        infos = archive.infolist()
    assert [i.filename for i in infos] == ["metadata.json", "config.json", "model.weights.h5", MANIFEST]
    assert {(i.date_time, i.external_attr, i.compress_type) for i in infos} == {
        ((1980, 1, 1, 0, 0, 0), 0o644 << 16, zipfile.ZIP_STORED)}


def test_a_keras_file_without_the_manifest_is_deserialized(tmp_path):
    """An older bertc's (or plain Keras's) .keras file: the same names and values, by loading the model."""
    model = _built(tiny_bert())
    path = _save(model, tmp_path / "model.keras")
    old = _rewrite(path, tmp_path / "old.keras", drop=(MANIFEST,))
    want = {w.path: w.numpy() for w in model.weights}
    _assert_same(KerasCheckpoint(old), want)
    assert KerasCheckpoint(old).names() == KerasCheckpoint(path).names()


_READ_ALL = """
import sys, types
from pathlib import Path
root = Path(sys.argv[1])
# bertc's package __init__ not run: what the readers themselves import
package = types.ModuleType("bertc")
package.__path__ = [str(root / "bertc")]
sys.modules["bertc"] = package
from bertc.checkpoints import open_checkpoint
checkpoint = open_checkpoint(sys.argv[2])
total = sum(int(checkpoint.read(name).size) for name in checkpoint.names())
assert total > 0
print(" ".join(m for m in ("bertc.components", "bertc.transfer", "keras", "tensorflow") if m in sys.modules) or "-")
"""


def _modules_after_reading(path):
    proc = subprocess.run([sys.executable, "-c", _READ_ALL, str(ROOT), str(path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()


# The readers themselves (bertc's package __init__ not run): `import bertc` registers the layer classes on
# purpose, so that any model.keras it wrote loads after it (DESIGN.md, "Public API first").
def test_reading_a_checkpoint_does_not_import_the_layer_library(saved):
    safetensors = ROOT / "tests" / "fixtures" / "hf" / "bert_model" / "model.safetensors"
    assert safetensors.exists()
    loaded = {"keras": _modules_after_reading(saved), "safetensors": _modules_after_reading(safetensors)}
    assert "bertc.components" not in loaded["keras"]
    # the manifest names the weights: h5py alone, no Keras
    assert "keras" not in loaded["keras"] and "tensorflow" not in loaded["keras"]
    assert loaded["safetensors"] == ["-"]   # neither keras nor tensorflow


POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"4d" * 32 + b"\nsize 90868376\n"


def test_git_lfs_pointers_are_named_as_such(tmp_path, capfd):
    """A clone made without Git LFS leaves ~130-byte pointers in place of the weights (and of large tokenizer
    files): bertc said "not a readable safetensors file ... header too large" / "neither a zip nor a legacy
    torch.save file"; import names every pointer at once, and a build's weights reader says what the file is."""
    import shutil

    from bertc.cli import main
    from bertc.errors import EXIT_BAD_SPEC

    src = tmp_path / "st"
    shutil.copytree(ROOT / "tests" / "fixtures" / "hf" / "st_bert_mean_norm", src)
    (tmp_path / "good.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    (src / "model.safetensors").write_bytes(POINTER)
    (src / "tokenizer.json").write_bytes(POINTER)
    assert main(["import", str(src), "-o", str(tmp_path / "st.json")]) == EXIT_BAD_SPEC
    err = capfd.readouterr().err
    assert "model.safetensors, tokenizer.json are Git LFS pointers, not the files they stand for" in err
    assert "git lfs pull" in err and not (tmp_path / "st.json").exists()
    shutil.copy(ROOT / "tests" / "fixtures" / "hf" / "st_bert_mean_norm" / "tokenizer.json", src / "tokenizer.json")
    shutil.copy(tmp_path / "good.safetensors", src / "model.safetensors")
    # pointers in place of what bertc never reads: a clone after `git lfs pull --include model.safetensors,...`
    (src / "onnx").mkdir()
    (src / "onnx" / "model.onnx").write_bytes(POINTER)
    (src / "tf_model.h5").write_bytes(POINTER)
    (src / "flax_model.msgpack").write_bytes(POINTER)
    assert main(["import", str(src), "-o", str(tmp_path / "st.json")]) == 0
    (src / "model.safetensors").write_bytes(POINTER)     # the pointer comes back after the import (a re-clone)
    with pytest.raises(WeightsError, match=r"model\.safetensors: a Git LFS pointer \(\d+ bytes\), not the file"):
        open_checkpoint(src / "model.safetensors")
    torch_file = tmp_path / "pytorch_model.bin"
    torch_file.write_bytes(POINTER)
    from bertc.torch_pickle import TorchFile

    with pytest.raises(WeightsError, match="a Git LFS pointer"):
        TorchFile(torch_file)
