"""``torch.save`` files read without torch (bertc.torch_pickle).

Fixtures (tests/fixtures/torch/, tests/fixtures/hf/bert_seq_cls_bin/) are written by torch itself
(tools/make_torch_fixtures.py, a side environment); these tests run without torch.
"""
import os
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import bertc
from bertc.checkpoints import open_checkpoint
from bertc.cli import main
from bertc.errors import WeightsError
from bertc.importers import import_spec, load_weights
from bertc.signature import signature_of
from bertc.spec import load_spec
from bertc.torch_pickle import TorchFile
from bertc.weights import resolve_weights_path

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def no_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)   # import torch -> ImportError: nothing here may need it


@pytest.mark.parametrize("name", ["views.pt", "views_legacy.pt"])
def test_every_dtype_and_view_reads_as_torch_wrote_it(name):
    """Zip and legacy formats; float32/64/16, bfloat16 (widened to float32), int64/32/8, uint8, bool; views sharing
    one storage (transposed, at an offset, strided), a scalar, an empty tensor, a Parameter."""
    want = np.load(FIXTURES / "torch" / "views.npz")
    found = TorchFile(FIXTURES / "torch" / name)
    assert sorted(found.tensors) == sorted(want.files)
    for key in want.files:
        got = found.read(key)
        assert got.dtype == want[key].dtype and got.shape == want[key].shape, key
        assert np.array_equal(got, want[key]), key
    assert found.tensors["base_t"].storage is found.tensors["base"].storage   # one storage, read per tensor


def test_a_transformers_directory_with_pytorch_model_bin_imports_and_computes_what_transformers_did(tmp_path):
    """bert_seq_cls's weights as transformers saves them without safetensors: ``bertc import`` and the weights
    give transformers' logits, with no torch installed."""
    source = tmp_path / "bert_seq_cls_bin"
    source.mkdir()
    (source / "pytorch_model.bin").write_bytes((FIXTURES / "hf" / "bert_seq_cls_bin" / "pytorch_model.bin").read_bytes())
    (source / "config.json").write_text((FIXTURES / "hf" / "bert_seq_cls" / "config.json").read_text())
    checkpoint = open_checkpoint(source)
    assert checkpoint.format == "pytorch"
    import_spec(source, tmp_path / "spec.json")
    spec = load_spec(tmp_path / "spec.json")
    built = bertc.build_model(spec)
    result = load_weights(built.model, spec, resolve_weights_path(spec.weights, tmp_path / "spec.json"))
    assert len(result.loaded) == len(built.model.weights) and result.format == "pytorch"
    ref = dict(np.load(FIXTURES / "hf" / "bert_seq_cls" / "reference.npz"))
    sig = signature_of(spec)
    got = built.model({i.name: ref[i.name] for i in sig.inputs}, training=False)
    assert np.max(np.abs(np.asarray(got["logits"]) - ref["logits"])) <= 1e-5


class _Shell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _zip_with(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")
    return path


def test_a_pickle_naming_anything_but_a_state_dict_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = pickle.dumps({"x": _Shell(marker)}, protocol=2)
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text((FIXTURES / "hf" / "bert_seq_cls" / "config.json").read_text())
    _zip_with(directory / "pytorch_model.bin", evil)
    with pytest.raises(WeightsError, match=r"not a readable PyTorch state dict: it names posix\.system, which is not "
                                           r"part of a tensor state dict"):
        open_checkpoint(directory)
    legacy = tmp_path / "legacy.bin"
    legacy.write_bytes(b"".join(pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, {})) + evil)
    with pytest.raises(WeightsError, match=r"it names posix\.system"):
        open_checkpoint(legacy)
    # the legacy format's plain pickles (magic number, version, system info) name nothing either
    for head in ([evil], [pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2), evil]):
        legacy.write_bytes(b"".join(head) + evil)
        with pytest.raises(WeightsError):
            open_checkpoint(legacy)
    assert main(["import", str(directory), "-o", str(tmp_path / "x.json")]) != 0
    err = capsys.readouterr().err
    assert "posix.system" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "x.json").exists()


def test_damaged_files_say_what_is_wrong(tmp_path):
    source = (FIXTURES / "torch" / "views.pt").read_bytes()
    with zipfile.ZipFile(FIXTURES / "torch" / "views.pt") as z:
        members = {n: z.read(n) for n in z.namelist()}
    key = next(n for n in members if "/data/" in n and len(members[n]) > 8)
    with zipfile.ZipFile(tmp_path / "short.pt", "w") as z:
        for n, data in members.items():
            z.writestr(n, data[:4] if n == key else data)
    found = TorchFile(tmp_path / "short.pt")
    broken = [name for name, ref in found.tensors.items() if f"data/{ref.storage.key}" in key]
    with pytest.raises(WeightsError, match=r"short.pt: storage .* is truncated"):
        found.read(broken[0])
    (tmp_path / "cut.pt").write_bytes(source[: len(source) // 3])
    with pytest.raises(WeightsError, match=r"cut.pt: (neither a zip|not a torch.save file|not a readable)"):
        TorchFile(tmp_path / "cut.pt")
    _zip_with(tmp_path / "list.pt", pickle.dumps([1, 2], protocol=2))
    with pytest.raises(WeightsError, match=r"list.pt: expected a state dict \(name -> tensor\), got list"):
        TorchFile(tmp_path / "list.pt")
