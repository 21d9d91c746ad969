"""The build's memory habits (bertc/memory.py): what a stage frees is collected, and the collector's scans leave
out the objects the process held before the build (the imported libraries), and only for the build."""
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
