"""What a build spends beyond the model's own work: the collector's scans leave out the objects the process held
before the build (the imported libraries), and only for the build, while what a stage frees is still collected
(bertc/memory.py); tf2onnx's optimizer passes work on the graph itself, not on a copy of it per pass."""
import gc
import weakref
from pathlib import Path

import pytest

from bertc.errors import OutputError
from bertc.memory import imports_set_aside
from bertc.pipeline import BuildOptions, build
from conftest import tiny_bert


class _Cycle:
    def __init__(self):
        self.me = self


def test_objects_made_inside_are_collected_and_the_process_is_as_it_was_after():
    before = _Cycle()
    with imports_set_aside():
        assert gc.get_freeze_count() > 0   # what was alive before is set aside: not scanned
        made = _Cycle()
        gone = weakref.ref(made)
        del made
        gc.collect()
        assert gone() is None              # what the build makes and drops in a cycle is still collected
    assert gc.get_freeze_count() == 0      # and the process gets back what it had
    earlier = weakref.ref(before)
    del before
    gc.collect()
    assert earlier() is None               # garbage of before the build is collected once it ends


def test_a_process_that_set_objects_aside_itself_keeps_them_aside():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with imports_set_aside():
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_a_build_scans_only_what_it_made_and_undoes_that_when_it_ends(tmp_spec, tmp_path):
    seen = []
    build(tmp_spec(tiny_bert()), BuildOptions(out=tmp_path / "out", export=False),
          hook=lambda name, seconds, detail: seen.append((name, gc.get_freeze_count())))
    assert seen and all(count > 0 for _, count in seen), seen
    assert gc.get_freeze_count() == 0
    # and a build that fails (here: OUT exists) leaves the process as it was too
    with pytest.raises(OutputError):
        build(tmp_spec(tiny_bert()), BuildOptions(out=tmp_path / "out", export=False))
    assert gc.get_freeze_count() == 0
    assert (Path(tmp_path) / "out" / "report.json").is_file()


class _FailingPass:
    """A tf2onnx optimizer pass that fails on the graph it is given (as a pass with a bug would)."""
    calls = 0

    def __init__(self):
        self.graph_been_opt = False

    def optimize(self, graph, iteration):
        type(self).calls += 1
        raise RuntimeError("a pass that fails")


def test_onnx_export_runs_tf2onnxs_passes_in_place_and_redoes_a_failed_one_its_own_way(tmp_path, monkeypatch):
    import hashlib
    import tf2onnx.optimizer as passes

    from bertc.build import build_model
    from bertc.export.onnx import export_onnx
    from bertc.signature import signature_of
    from bertc.spec import Spec

    spec = Spec.model_validate(tiny_bert())
    model = build_model(spec).model
    copies = []
    real_deepcopy = passes.copy.deepcopy
    monkeypatch.setattr(passes.copy, "deepcopy", lambda x, *a: copies.append(type(x).__name__) or real_deepcopy(x, *a))
    export_onnx(model, signature_of(spec), tmp_path / "plain.onnx")
    assert "Graph" not in copies   # no pass had the whole graph copied for it

    monkeypatch.setitem(passes._optimizers, "failing", _FailingPass)
    export_onnx(model, signature_of(spec), tmp_path / "failing.onnx")
    # the pass failed on the graph itself, then the conversion was done again with tf2onnx's copies, which leave the
    # failing pass out: the same file as without it
    assert _FailingPass.calls >= 2 and "Graph" in copies
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("plain.onnx", "failing.onnx")]
    assert digest[0] == digest[1]
