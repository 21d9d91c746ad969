"""A build on a full disk (ENOSPC; a quota, a read-only or failing file system alike) is an output error (exit 5)
naming OUT, the stage and the file: not "internal error (a bug in bertc)" (exit 70), nor a failed TFLite conversion
(exit 4). Nothing of it is kept, and an earlier build at OUT stays as it was. The full disk is simulated: the write
that meets it raises OSError(ENOSPC)."""
import errno
import json
import os
from pathlib import Path

import pytest

from bertc.cli import main
from bertc.errors import EXIT_OUTPUT, ExportError, OutputError, ParityError
from conftest import tiny_bert

NO_SPACE = os.strerror(errno.ENOSPC)


def _earlier_build(out: Path) -> dict:
    """What an earlier build left at OUT (a report.json makes it a build's): {name: bytes}."""
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"status": "passed", "marker": "earlier", "manifest": {"files": {"model.onnx": {}}}}))
    (out / "model.onnx").write_text("earlier")
    return {p.name: p.read_bytes() for p in out.iterdir()}


def _check_nothing_written(tmp_path: Path, before: dict) -> None:
    out = tmp_path / "out"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # the earlier build, untouched
    # no staging directory, no .out.lock, no out.failed (an incomplete build is no failed build's report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "spec.json"]


def test_disk_full_while_saving_the_keras_model(tmp_spec, tmp_path, monkeypatch, capsys):
    import bertc.export.keras_file as keras_file

    real = keras_file.zip_keras_dir

    def zip_until_full(directory, dst):   # part of the archive written, then the disk is full
        real(directory, dst)
        raise OSError(errno.ENOSPC, NO_SPACE)   # as zipfile's write meets it: no file named

    monkeypatch.setattr(keras_file, "zip_keras_dir", zip_until_full)
    monkeypatch.chdir(tmp_path)
    before = _earlier_build(tmp_path / "out")
    code = main(["build", str(tmp_spec(tiny_bert())), "-o", "out", "-q", "--no-export", "--force"])
    err = capsys.readouterr().err
    assert code == EXIT_OUTPUT, err
    assert err.startswith(f"error: cannot write the build to out: {NO_SPACE} (stage save keras, "), err
    assert "model.keras.partial); nothing was written, out is as it was" in err, err
    assert "internal error" not in err and "Traceback" not in err
    _check_nothing_written(tmp_path, before)


def test_no_room_for_the_keras_model_is_said_before_h5py_meets_it(tmp_spec, tmp_path, monkeypatch, capsys):
    """A QA report: a disk with 128 KB left, met by h5py while Keras wrote model.weights.h5: hundreds of h5py
    tracebacks, then a segmentation fault (exit 139), the staging folder and the lock left. The room the save takes
    is checked first: exit 5 naming OUT, nothing written."""
    import collections
    import shutil

    import bertc.export.keras_file as keras_file

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, (1 << 30) - (128 << 10), 128 << 10))
    monkeypatch.setattr(keras_file.zipfile, "ZipFile", None)   # never reached: the save is refused before it
    monkeypatch.chdir(tmp_path)
    before = _earlier_build(tmp_path / "out")
    code = main(["build", str(tmp_spec(tiny_bert())), "-o", "out", "-q", "--no-export", "--force"])
    err = capsys.readouterr().err
    assert code == EXIT_OUTPUT and err.startswith(f"error: cannot write the build to out: {NO_SPACE}"), err
    assert "stage save keras" in err and "Traceback" not in err
    _check_nothing_written(tmp_path, before)


def test_disk_full_while_writing_the_tflite_file_is_no_conversion_failure(tmp_spec, tmp_path, monkeypatch, capsys):
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.name.endswith(".tflite.partial"):
            raise OSError(errno.ENOSPC, NO_SPACE)
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.chdir(tmp_path)
    before = _earlier_build(tmp_path / "out")
    code = main(["build", str(tmp_spec(tiny_bert())), "-o", "out", "-q", "--no-onnx", "--no-parity", "--force"])
    err = capsys.readouterr().err
    assert code == EXIT_OUTPUT, err
    assert err.startswith(f"error: cannot write the build to out: {NO_SPACE} (stage export tflite, "), err
    assert "model.tflite.partial); nothing was written, out is as it was" in err, err
    assert "TFLite conversion failed" not in err and "internal error" not in err
    _check_nothing_written(tmp_path, before)


def test_the_converter_child_reports_a_full_disk_by_its_exit_code(tmp_path, monkeypatch, capsys):
    """A large model's TFLite conversion runs in a child process: its full disk reaches the build as the OSError."""
    import bertc.export.tflite as tflite

    target = tmp_path / "model.tflite.partial"

    def convert(saved, precision, tmp):
        raise OSError(errno.ENOSPC, NO_SPACE, str(tmp))

    monkeypatch.setattr(tflite, "_convert", convert)
    code = tflite._child_main([str(tmp_path / "saved"), "fp32", str(target)])
    assert code == errno.ENOSPC
    log = tmp_path / "converter.log"
    log.write_text(capsys.readouterr().out)

    class Child:   # what TFLiteJob._wait finds once the child has ended
        def wait(self):
            return code

    job = tflite.TFLiteJob.__new__(tflite.TFLiteJob)
    job._child, job._log, job.targets = Child(), log, [(tmp_path / "model.tflite", "fp32")]
    with pytest.raises(OSError) as caught:
        job._wait()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    log.write_text("")   # the log, on the same full disk, could not take the file's name: the target stands in
    job._child = Child()
    with pytest.raises(OSError) as caught:
        job._wait()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)


def test_what_counts_as_the_file_systems_error():
    from bertc.errors import filesystem_error
    from bertc.pipeline import unwritable_build

    class Staged:
        given, existed = Path("out"), False

    # raised from a full disk by a stage that wraps it (an export): the disk's error, exit 5
    try:
        try:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/x/.out.tmp-a/model.onnx.partial")
        except OSError as exc:
            raise ExportError("ONNX export failed") from exc
    except ExportError as exc:
        error = unwritable_build(exc, Staged(), "export onnx")
    assert isinstance(error, OutputError)
    assert str(error) == (f"cannot write the build to out: {os.strerror(errno.EDQUOT)} (stage export onnx, "
                          f"/x/.out.tmp-a/model.onnx.partial); nothing was written")
    # TensorFlow's own error for a SavedModel it cannot write
    tf_error = type("ResourceExhaustedError", (Exception,), {"__module__": "tensorflow.python.framework.errors_impl"})
    found = filesystem_error(tf_error("{{function_node __wrapped__SaveV2}} /x/.out.tmp-a/sm/variables/part-0.data; "
                                      "No space left on device [Op:SaveV2]"))
    assert found.errno == errno.ENOSPC and found.filename == "/x/.out.tmp-a/sm/variables/part-0.data"
    # a verdict is the build's, whatever happened before it; other errors are not the disk's
    try:
        try:
            raise OSError(errno.ENOSPC, NO_SPACE)
        except OSError:
            raise ParityError("parity failed")
    except ParityError as exc:
        assert unwritable_build(exc, Staged(), "parity") is None
    assert unwritable_build(OSError(errno.ENOENT, "No such file or directory"), Staged(), "load weights") is None
    assert unwritable_build(RuntimeError("a bug"), Staged(), "build graph") is None


def test_an_onnx_file_the_disk_cannot_take_is_named_and_removed(tmp_path, monkeypatch):
    import bertc.export.onnx as onnx_export

    def write_streaming(proto, weights, tmp):   # part written, then the disk is full
        Path(tmp).write_bytes(b"part")
        raise OSError(errno.ENOSPC, NO_SPACE)

    monkeypatch.setattr(onnx_export, "write_streaming", write_streaming)
    path = tmp_path / "model.optimized.onnx"
    with pytest.raises(OSError) as caught:
        onnx_export.write_onnx(type("Proto", (), {"ByteSize": lambda self: 0})(), [], path)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == f"{path}.partial"
    assert list(tmp_path.iterdir()) == []


def test_a_staging_folder_removed_under_the_build_is_an_output_error(tmp_spec, tmp_path, monkeypatch, capsys):
    """OUT's parent removed while a build ran (rm -rf of the working folder): the next write into the staging folder
    raised FileNotFoundError, reported as "internal error (a bug in bertc)", exit 70 (found by a tester). It is an
    output error, exit 5, naming the folder that went."""
    import shutil

    import bertc.export.keras_file as keras_file

    def staging_removed(directory, dst):   # the folder goes before the archive is written
        shutil.rmtree(Path(dst).parent)
        with open(dst, "wb"):
            pass

    monkeypatch.setattr(keras_file, "zip_keras_dir", staging_removed)
    monkeypatch.chdir(tmp_path)
    code = main(["build", str(tmp_spec(tiny_bert())), "-o", "out", "-q", "--no-export"])
    err = capsys.readouterr().err
    assert code == EXIT_OUTPUT, err
    assert err.startswith("error: cannot write the build to out: its staging folder "), err
    assert "was removed while the build wrote it (stage save keras); nothing was written" in err, err
    assert "internal error" not in err and "Traceback" not in err
