"""Hostile Hugging Face checkpoint directories (a download is untrusted input): each is refused at once, naming the
file and what is wrong, without reading memory outside a tensor, filling memory, hanging, or reading files outside
the checkpoint's directory."""
import collections
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bertc import checkpoints
from bertc.checkpoints import open_checkpoint
from bertc.cli import main
from bertc.errors import WeightsError
from bertc.importers import import_spec, spec_for
from bertc.torch_pickle import TorchFile

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BERT = FIXTURES / "hf" / "bert_seq_cls"


@pytest.fixture(autouse=True)
def no_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)   # no torch.load fallback: bertc's own reader alone


_UNBLOCK = """
import os, sys, time
time.sleep(10)
while True:
    try:
        os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK))
    except OSError:   # no reader waiting
        pass
    time.sleep(0.5)
"""


@pytest.fixture
def fifo():
    """Makes FIFOs that a reader still waiting on them after 10 s finds ended (another process opens and closes
    them for writing), so a bertc that opens one fails the test rather than hanging the suite (neither a signal nor
    a thread helps where native code blocks in open() holding the GIL)."""
    watchdogs = []

    def make(path):
        os.mkfifo(path)
        watchdogs.append(subprocess.Popen([sys.executable, "-c", _UNBLOCK, str(path)]))
        return path

    yield make
    for process in watchdogs:
        process.kill()
        process.wait()


# --- torch.save zip files, written without torch ------------------------------------------------------------

class _Tensor:
    def __init__(self, key, offset, size, stride):
        self.args = (key, offset, size, stride)

    def __reduce__(self):
        key, offset, size, stride = self.args
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (_Storage(key), offset, tuple(size), tuple(stride), False, collections.OrderedDict())


class _Storage:
    def __init__(self, key):
        self.key = key


def torch_zip(path: Path, tensors: dict, member_bytes: dict = None) -> Path:
    """A ``torch.save`` zip file of float32 tensors: ``tensors``: name -> (values, view) where ``view`` may set
    ``size``, ``stride``, ``offset`` (default: the values' own); ``member_bytes``: storage key -> the member's bytes
    in place of the values'."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    storage_type = type("FloatStorage", (), {"__module__": "torch"})
    torch.FloatStorage = storage_type

    def _rebuild_tensor_v2(*args):
        pass

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    numels, blobs, state = {}, {}, collections.OrderedDict()
    for i, (name, (values, view)) in enumerate(tensors.items()):
        values = np.ascontiguousarray(values, dtype="<f4")
        key = str(i)
        numels[key], blobs[key] = values.size, values.tobytes()
        state[name] = _Tensor(key, view.get("offset", 0), view.get("size", values.shape),
                              view.get("stride", tuple(s // 4 for s in values.strides)))
    blobs.update(member_bytes or {})

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", storage_type, obj.key, "cpu", numels[obj.key]) if isinstance(obj, _Storage) else None

    buffer = io.BytesIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "torch", torch)
        mp.setitem(sys.modules, "torch._utils", utils)
        Pickler(buffer, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", buffer.getvalue())
        z.writestr("archive/byteorder", "little")
        for key, data in blobs.items():
            z.writestr(f"archive/data/{key}", data)
    return path


def test_the_test_writer_makes_files_bertc_reads(tmp_path):
    values = np.arange(16, dtype=np.float32).reshape(4, 4)
    found = TorchFile(torch_zip(tmp_path / "ok.bin", {"w": (values, {}), "t": (values, {"stride": (1, 4)})}))
    assert np.array_equal(found.read("w"), values) and np.array_equal(found.read("t"), values.T)


@pytest.mark.parametrize("view, problem", [
    ({"stride": (-4, 1)}, "not a view torch.save writes"),         # rows read backwards from before the storage
    ({"stride": (4, -1)}, "not a view torch.save writes"),
    ({"size": (-1, 4)}, "not a view torch.save writes"),
    ({"offset": -4}, "not a view torch.save writes"),
    ({"stride": (4,)}, "not a view torch.save writes"),            # a stride missing
    ({"offset": 1}, r"reaches past its storage \(to value 17\)"),
    ({"stride": (5, 1)}, r"reaches past its storage \(to value 19\)"),
])
def test_a_tensor_whose_view_leaves_its_storage_is_refused_naming_it(tmp_path, capsys, view, problem):
    """as_strided reads whatever memory a view names: a negative stride read heap bytes as weights (or, far enough,
    crashed the build); the view is checked whole when the file is opened, so bertc import refuses it too."""
    source = tmp_path / "ck"
    source.mkdir()
    shutil.copy(BERT / "config.json", source)
    torch_zip(source / "pytorch_model.bin", {"w": (np.ones((4, 4)), view)})
    with pytest.raises(WeightsError, match=rf"pytorch_model.bin: tensor 'w' \(size .*\): {problem}"):
        open_checkpoint(source).read("w")
    assert main(["import", str(source), "-o", str(tmp_path / "spec.json")]) == 2
    err = capsys.readouterr().err
    assert "tensor 'w'" in err and "Traceback" not in err and not (tmp_path / "spec.json").exists()


def test_a_storage_member_that_inflates_beyond_its_tensors_is_refused_unread(tmp_path, monkeypatch):
    """A small file whose storage member inflates far beyond what its tensors say was read whole, then sliced."""
    values = np.ones(16, dtype=np.float32)
    path = torch_zip(tmp_path / "bomb.bin", {"w": (values, {})}, {"0": values.tobytes() + bytes(4 << 20)})
    assert path.stat().st_size < 64 << 10
    inflated = []
    real_read = zipfile.ZipExtFile.read
    monkeypatch.setattr(zipfile.ZipExtFile, "read", lambda self, n=-1: inflated.append(self.name) or real_read(self, n))
    found = TorchFile(path)
    with pytest.raises(WeightsError, match=r"bomb.bin: storage 0 \(archive/data/0\) holds 4194368 bytes, but its "
                                           r"tensors say 16 values of 4 bytes \(64 bytes\)"):
        found.read("w")
    assert inflated and "archive/data/0" not in inflated   # refused by its size, not inflated


def test_a_tensor_is_read_no_further_than_it_reaches(tmp_path, monkeypatch):
    values = np.arange(1024, dtype=np.float32)
    path = torch_zip(tmp_path / "part.bin", {"w": (values, {"size": (2, 2), "stride": (2, 1)})})
    found = TorchFile(path)
    asked = []
    real_read = zipfile.ZipExtFile.read
    monkeypatch.setattr(zipfile.ZipExtFile, "read", lambda self, n=-1: asked.append(n) or real_read(self, n))
    assert np.array_equal(found.read("w"), [[0, 1], [2, 3]])
    assert asked == [16]   # four float32 values, not the 1,024 of the storage


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.safetensors", "config.json", "tokenizer.json",
                                  "tokenizer_config.json", "model.safetensors.index.json"])
def test_a_fifo_in_place_of_a_checkpoint_file_is_refused_at_once(tmp_path, capsys, fifo, name):
    """Opening a FIFO blocks until something writes to it: bertc import hung for good."""
    source = tmp_path / "ck"
    source.mkdir()
    for kept in ("config.json", "model.safetensors"):
        if kept != name and not (name == "pytorch_model.bin" and kept == "model.safetensors"):
            shutil.copy(BERT / kept, source)
    fifo(source / name)
    with pytest.raises(WeightsError, match=rf"{name} is a FIFO \(named pipe\)"):
        spec_for(source)
    assert main(["import", str(source), "-o", str(tmp_path / "spec.json")]) == 2
    assert "FIFO" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin", "x.safetensors.index.json"])
def test_a_weights_file_named_directly_that_is_a_fifo_is_refused(tmp_path, fifo, name):
    fifo(tmp_path / name)
    with pytest.raises(WeightsError, match=rf"{name}: is a FIFO \(named pipe\), not a regular file"):
        open_checkpoint(tmp_path / name)


def test_a_config_linked_to_dev_zero_or_too_large_is_refused(tmp_path, monkeypatch):
    """config.json linked to /dev/zero was read until memory ran out (internal error: MemoryError, exit 70)."""
    source = tmp_path / "ck"
    shutil.copytree(BERT, source)
    (source / "config.json").unlink()
    (source / "config.json").symlink_to("/dev/zero")
    with pytest.raises(WeightsError, match=r"config.json is a character device"):
        spec_for(source)
    from bertc.importers.hf import read_json

    with pytest.raises(WeightsError, match=r"config.json: is a character device, not a regular file"):
        read_json(source / "config.json")
    (source / "config.json").unlink()
    config = json.loads((BERT / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "padding": "x" * 4000}))
    monkeypatch.setattr(checkpoints, "JSON_LIMIT", 2000)
    with pytest.raises(WeightsError, match=r"config.json: more than 0 MB, far more than a checkpoint's config holds"):
        spec_for(source)
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "torch", None)
    assert spec_for(source)[0]["encoder"]["hidden_size"] == config["hidden_size"]


def _keys():
    from safetensors import safe_open

    return list(safe_open(str(BERT / "model.safetensors"), "np").keys())


@pytest.mark.parametrize("shard", ["../elsewhere/x.safetensors", "ABSOLUTE", "sub/../../elsewhere/x.safetensors"])
def test_an_index_naming_a_shard_outside_the_checkpoint_is_refused(tmp_path, capsys, shard):
    """An index's weight_map naming ../../elsewhere/x.safetensors (or an absolute path) was read silently."""
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(BERT / "model.safetensors", tmp_path / "elsewhere" / "x.safetensors")
    shard = str(tmp_path / "elsewhere" / "x.safetensors") if shard == "ABSOLUTE" else shard
    source = tmp_path / "ck"
    source.mkdir()
    shutil.copy(BERT / "config.json", source)
    index = {"metadata": {}, "weight_map": {k: shard for k in _keys()}}
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match=r"model.safetensors.index.json: its weight_map names .* for '.*', a file "
                                           r"outside the checkpoint's directory"):
        open_checkpoint(source)
    assert main(["import", str(source), "-o", str(tmp_path / "spec.json")]) == 2
    assert json.dumps(shard) in capsys.readouterr().err
    (source / "model.safetensors.index.json").unlink()
    (source / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match=r"pytorch_model.bin.index.json: its weight_map names .* outside"):
        open_checkpoint(source)


def test_the_hub_cache_layout_links_to_blobs_outside_the_snapshot_and_keeps_working(tmp_path):
    """The Hugging Face cache's snapshots/<rev>/ holds links to ../../blobs/<hash>: the names are inside."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc123"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    for name, blob in (("config.json", "c0nf"), ("model-00001-of-00001.safetensors", "w3ights")):
        shutil.copy(BERT / ("model.safetensors" if name.endswith("safetensors") else name), blobs / blob)
        (snapshot / name).symlink_to(Path("../../blobs") / blob)
    index = {"metadata": {}, "weight_map": {k: "model-00001-of-00001.safetensors" for k in _keys()}}
    (blobs / "1ndex").write_text(json.dumps(index))
    (snapshot / "model.safetensors.index.json").symlink_to("../../blobs/1ndex")
    checkpoint = open_checkpoint(snapshot)
    assert sorted(checkpoint.names()) == sorted(_keys())
    assert spec_for(snapshot)[0]["encoder"]["hidden_size"] == 16


@pytest.mark.parametrize("path", ["../outside", "ABSOLUTE", "1_Pooling/../../outside"])
def test_a_modules_json_path_outside_the_directory_is_refused(tmp_path, path):
    source = tmp_path / "st"
    shutil.copytree(FIXTURES / "hf" / "st_bert_mean_norm", source)
    shutil.copytree(source / "1_Pooling", tmp_path / "outside")
    path = str(tmp_path / "outside") if path == "ABSOLUTE" else path
    modules = json.loads((source / "modules.json").read_text())
    modules[1]["path"] = path
    (source / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(WeightsError, match=rf"modules.json: module path {json.dumps(path)} is outside the "
                                           r"sentence-transformers directory"):
        spec_for(source)
    modules[1]["path"], modules[0]["path"] = "1_Pooling", path   # the Transformer module's folder too
    (source / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(WeightsError, match=r"is outside the sentence-transformers directory"):
        open_checkpoint(source)


def test_custom_code_named_by_auto_map_is_said_not_to_run(tmp_path):
    source = tmp_path / "ck"
    shutil.copytree(BERT, source)
    config = json.loads((source / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (source / "config.json").write_text(json.dumps(config))
    spec = import_spec(source, tmp_path / "spec.json")
    assert "auto_map names custom code, which bertc does not run: the standard BertForSequenceClassification " \
           "architecture is assumed" in spec["description"]
    assert "auto_map" not in import_spec(BERT, tmp_path / "plain.json")["description"]


def test_a_fifo_in_a_folder_bertc_never_reads_is_no_reason_to_refuse(tmp_path, fifo):
    """The second review: a FIFO in the user's data/ folder beside the checkpoint refused the whole import; only the
    root and a sentence-transformers directory's module folders (N_Name) are looked at. One in 1_Pooling still is."""
    source = tmp_path / "ck"
    shutil.copytree(BERT, source)
    (source / "data").mkdir()
    fifo(source / "data" / "stream.txt")
    assert spec_for(source) is not None
    (source / "1_Pooling").mkdir()
    fifo(source / "1_Pooling" / "config.json")
    with pytest.raises(WeightsError, match=r"1_Pooling/config.json is a FIFO"):
        spec_for(source)


# --- files the build copies, nesting, non-Hugging Face folders, unpacking -----------------------------------------

@pytest.mark.parametrize("name", ["config_sentence_transformers.json", "checkpoint_config.json"])
def test_a_config_the_build_copies_linked_to_a_file_outside_is_refused(tmp_path, capsys, name):
    """OUT got config_sentence_transformers.json / checkpoint_config.json as they were, links followed: one linked to
    ~/.aws/credentials (never parsed in a plain Hugging Face folder) or to any JSON object (a docker config) was
    shipped in the build, exit 0 (a tester). They are refused as tokenizer files linked elsewhere are."""
    from bertc.importers import bundle_checkpoint_config

    secret = tmp_path / "home" / "creds.json"
    secret.parent.mkdir()
    secret.write_text(json.dumps({"auths": {"registry": {"auth": "SECRET-TOKEN"}}}))
    source = tmp_path / "ck"
    shutil.copytree(BERT, source)
    if name == "checkpoint_config.json":   # a bertc build's (its config.json as the build copied it)
        (source / "config.json").unlink()
    (source / name).symlink_to(secret)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(WeightsError, match=rf"{name}: the checkpoint config is a link to {secret}, which is no "
                                           rf"checkpoint config of that name"):
        bundle_checkpoint_config(source, out)
    assert list(out.iterdir()) == []
    if name == "config_sentence_transformers.json":
        assert main(["import", str(source), "-o", str(tmp_path / "spec.json")]) == 2
        assert "is a link to" in capsys.readouterr().err and not (tmp_path / "spec.json").exists()
    # a link to a file of the same name (a fine-tune beside its base), or within the folder, is followed
    (source / name).unlink()
    same = tmp_path / "base" / name
    same.parent.mkdir()
    same.write_text(json.dumps({"activation_fn": "torch.nn.modules.activation.Sigmoid"}))
    (source / name).symlink_to(same)
    assert name in bundle_checkpoint_config(source, out)
    assert json.loads((out / name).read_text()) == json.loads(same.read_text())
    # what is copied is a JSON object read as any config of the checkpoint is
    (source / name).unlink()
    (source / name).write_text("[1, 2]")
    with pytest.raises(WeightsError, match=rf"{name}: not a readable JSON config \(not a JSON object\)"):
        bundle_checkpoint_config(source, out)


@pytest.mark.parametrize("name", ["config.json", "modules.json", "tokenizer_config.json",
                                  "config_sentence_transformers.json"])
def test_json_nested_past_the_recursion_limit_is_refused_not_an_internal_error(tmp_path, capsys, name):
    source = tmp_path / "ck"
    shutil.copytree(BERT, source)
    (source / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]) + "\n")
    (source / name).write_text("[" * 100_000 + "]" * 100_000)
    assert main(["import", str(source), "-o", str(tmp_path / "spec.json")]) == 2
    err = capsys.readouterr().err
    assert "nested too deeply" in err and "internal error" not in err, err


def test_files_of_tf_model_garden_and_build_folders_are_read_as_a_checkpoints_files(tmp_path, fifo):
    """The TF checkpoint's state file, Model Garden's encoder_config.json / params.yaml and a build's spec.json
    were read with no file-type check or size cap: a FIFO hung bertc import, /dev/zero filled memory."""
    from bertc.checkpoints import find_tf_checkpoint
    from bertc.importers import model_garden

    tf = tmp_path / "tf"
    tf.mkdir()
    fifo(tf / "checkpoint")
    with pytest.raises(WeightsError, match=r"checkpoint: is a FIFO \(named pipe\), not a regular file"):
        find_tf_checkpoint(tf)
    mg = tmp_path / "mg"
    mg.mkdir()
    (mg / "encoder_config.json").symlink_to("/dev/zero")
    with pytest.raises(WeightsError, match=r"encoder_config.json: is a character device, not a regular file"):
        model_garden._read_config(mg)
    build = tmp_path / "build"
    build.mkdir()
    (build / "model.keras").write_bytes(b"")
    (build / "spec.json").symlink_to("/dev/zero")
    with pytest.raises(WeightsError, match=r"spec.json: is a character device, not a regular file"):
        spec_for(build)


def test_a_data_pkl_that_unpacks_to_more_than_a_state_dict_takes_is_refused_unread(tmp_path, monkeypatch):
    """A 1 MB pytorch_model.bin whose data.pkl inflated to 1 GiB was read whole (2.7 GB of memory, exit 0)."""
    from bertc import torch_pickle

    path = torch_zip(tmp_path / "p.bin", {"w": (np.zeros(4, np.float32), {})})
    size = zipfile.ZipFile(path).getinfo("archive/data.pkl").file_size
    monkeypatch.setattr(torch_pickle, "PICKLE_LIMIT", size - 1)
    inflated = []
    real_read = zipfile.ZipExtFile.read
    monkeypatch.setattr(zipfile.ZipExtFile, "read", lambda self, n=-1: inflated.append(self.name) or real_read(self, n))
    with pytest.raises(WeightsError, match=r"p.bin: its archive/data.pkl unpacks to 0 MB, far more than the names and "
                                           r"shapes of a state dict take"):
        TorchFile(path)
    assert "archive/data.pkl" not in inflated
    monkeypatch.setattr(torch_pickle, "PICKLE_LIMIT", size)
    assert list(TorchFile(path).tensors) == ["w"]


@pytest.mark.parametrize("data, said", [
    # the magic number, the protocol, then a frame claiming 15 exabytes: the pickle module's MemoryError
    (bytes.fromhex("80028a0a6cfc9c46f9206aa850192e80024de903955e67beee96c3d62e8002") + b"}q\x00(", "MemoryError"),
    (b"PK\x03\x04", None),   # a zip's signature alone
])
def test_a_damaged_torch_file_is_refused_not_an_internal_error(tmp_path, data, said):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(data)
    with pytest.raises(WeightsError, match=r"pytorch_model.bin: (not a readable PyTorch state dict|neither a zip)"
                       + (f".*{said}" if said else "")):
        TorchFile(path)


def test_a_zip_of_a_version_python_cannot_read_is_refused(tmp_path):
    path = torch_zip(tmp_path / "pytorch_model.bin", {"w": (np.zeros(4, np.float32), {})})
    data = bytearray(path.read_bytes())
    end = data.rfind(b"PK\x01\x02")   # the last central directory entry: "version needed to extract" 9.4
    data[end + 6:end + 8] = (94).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"not a readable PyTorch state dict: zip file version 9.4"):
        TorchFile(path)


def test_a_tensor_whose_shape_cannot_fit_is_refused_before_it_is_read(tmp_path):
    """The shape is known from the file's header: a crafted tensor of gigabytes (a storage inflating to exactly
    what its shape claims, so the inflation check passes) was read whole, then refused for its shape."""
    from bertc.weights import Target, load_into

    class Weight:
        def __init__(self, path, shape):
            self.path, self.shape, self.dtype, self.value = path, shape, "float32", None

        def assign(self, value):
            self.value = value

    class Model:
        weights = [Weight("a/kernel", (4, 3)), Weight("b/kernel", (4, 3))]

    class Checkpoint:
        location, format, read_names = tmp_path / "x", "test", []
        shapes = {"a.weight": (3, 4), "b.weight": (56, 4_793_490)}

        def names(self):
            return sorted(self.shapes)

        def shape(self, name):
            return self.shapes[name]

        def read(self, name):
            self.read_names.append(name)
            return np.ones(self.shapes[name], np.float32)

        def describe(self):
            return "a test checkpoint"

    checkpoint = Checkpoint()
    with pytest.raises(WeightsError, match=r"checkpoint tensor 'b.weight' \(56, 4793490\) transposed does not fit "
                                           r"bertc weight 'b/kernel' \(4, 3\)"):
        load_into(Model(), checkpoint, lambda name: Target(name[0] + "/kernel", "transpose"), "test")
    assert checkpoint.read_names == ["a.weight"]


def test_a_pickles_build_opcode_cannot_alter_bertcs_own_functions(tmp_path):
    """BUILD on an allowed global set attributes on bertc's _rebuild_tensor itself (its __defaults__), for the rest
    of the process (a tester); what a pickle names is now a new function each time."""
    from bertc import torch_pickle

    before = torch_pickle._rebuild_tensor.__defaults__
    state = pickle.dumps((None, {"__defaults__": (7,), "__kwdefaults__": {"x": 1}}), protocol=2)[2:-1]
    data = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n" + state + b"b0}."
    assert torch_pickle._Unpickler(io.BytesIO(data), {}, legacy=False).load() == {}
    assert torch_pickle._rebuild_tensor.__defaults__ == before
    assert torch_pickle._rebuild_tensor.__kwdefaults__ is None


def test_a_weights_file_without_tensors_is_refused_at_import(tmp_path, capsys):
    """A safetensors file whose header is {} (or a pickled {}) imported with exit 0; the build then listed every
    weight as missing (a tester)."""
    source = tmp_path / "ck"
    shutil.copytree(BERT, source)
    header = b"{}      "
    (source / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(WeightsError, match=r"model.safetensors: holds no tensors"):
        spec_for(source)
    (source / "model.safetensors").unlink()
    torch_zip(source / "pytorch_model.bin", {})
    assert main(["import", str(source), "-o", str(tmp_path / "spec.json")]) == 2
    assert "pytorch_model.bin: holds no tensors" in capsys.readouterr().err
    assert not (tmp_path / "spec.json").exists()
