"""What an installed bertc says about the environment it finds (found by a tester installing the wheel in fresh
virtual environments): a CUDA provider that onnxruntime lists but cannot use, onnxruntime and onnxruntime-gpu both
installed, a library missing or too old. Each is the environment's problem, named with what fixes it (exit 7, or a
backend skipped with the reason), never a build's verdict taken away, a damaged build, or an export error."""
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import bertc
import bertc.runtime
from bertc import backends, requirements
from bertc.cli import main
from bertc.errors import EXIT_MISSING_LIBRARY, InputError, MissingLibrary

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import tiny_bert  # noqa: E402
from test_run import shared_builds  # noqa: E402

TEXTS = ["the cat sat on the mat", "a dog", "rain again today"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return shared_builds(tmp_path_factory, ("st_bert_mean_norm",))["st_bert_mean_norm"]


@pytest.fixture
def copy(built, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(built, out)
    return out


@pytest.fixture
def listed_cuda(monkeypatch):
    """onnxruntime lists CUDA (as onnxruntime-gpu does on any host), but its sessions run on the CPU: this CPU
    onnxruntime, asked for CUDA, makes a CPU session, as onnxruntime-gpu does where its CUDA libraries do not load."""
    import onnxruntime

    real = onnxruntime.get_available_providers
    if "CUDAExecutionProvider" in real():
        pytest.skip("this onnxruntime has a CUDA provider: the test fakes one that cannot run")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *real()])
    monkeypatch.setattr(backends, "_problems", {})


def test_a_listed_cuda_that_cannot_run_is_skipped_not_failed(copy, listed_cuda, capsys):
    """Parity skipped the CUDA backends with the reason; it had failed them ('ONNX Runtime could not use
    CUDAExecutionProvider'), and so set a good build's status to failed (then `bertc run` refused it)."""
    problem = backends.provider_problem(backends.CUDA)
    assert problem.startswith("onnxruntime lists CUDAExecutionProvider but cannot use it on this host")
    assert backends.CUDA not in backends.onnx_providers()
    assert main(["parity", str(copy), "-q"]) == 0
    report = json.loads((copy / "report.json").read_text())
    assert report["status"] == "passed"
    assert report["parity"]["skipped"]["onnx_cuda"] == problem
    capsys.readouterr()


def test_run_says_where_it_runs_when_cuda_cannot(copy, listed_cuda, capsys):
    """`--device cuda` is refused with the reason; the default picks the CPU and says so (it said 'cuda' and ran on
    the CPU). `--device cpu` never tries CUDA (a reviewer: a CPU run made a CUDA session it was told to avoid)."""
    assert bertc.Runtime(copy, device="cpu").choice.provider == backends.CPU and backends._problems == {}
    with pytest.raises(InputError, match="^device='cuda': onnxruntime lists CUDAExecutionProvider but cannot use"):
        bertc.Runtime(copy, device="cuda")
    runtime = bertc.Runtime(copy)
    assert runtime.choice.provider == backends.CPU
    texts = copy.parent / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    assert main(["run", str(copy), str(texts), "-o", str(copy.parent / "e.npy"), "--device", "cuda"]) == 2
    assert "error: --device cuda: onnxruntime lists CUDAExecutionProvider" in capsys.readouterr().err
    assert not (copy.parent / "e.npy").exists()
    assert main(["run", str(copy), str(texts), "-o", str(copy.parent / "e.npy")]) == 0
    assert ", cpu)" in capsys.readouterr().err and np.load(copy.parent / "e.npy").shape[0] == len(TEXTS)


def test_two_onnxruntime_distributions_are_named_before_any_work(copy, tmp_path, monkeypatch, capsys):
    """onnxruntime and onnxruntime-gpu write one package folder: whichever wrote last is what imports, and the
    report recorded the other's version. Refused with the fix, exit 7, by run, parity and build (before its first
    stage's work)."""
    monkeypatch.setattr(requirements, "onnxruntime_distributions", lambda folder=None: ("onnxruntime", "onnxruntime-gpu"))
    texts = tmp_path / "texts.txt"
    texts.write_text("a\n")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_bert()))
    for argv in (["run", str(copy), str(texts), "-o", str(tmp_path / "e.npy")], ["parity", str(copy)],
                 ["build", str(spec), "-o", str(tmp_path / "b")]):
        assert main(argv) == EXIT_MISSING_LIBRARY, argv
        err = capsys.readouterr().err
        assert "error: onnxruntime and onnxruntime-gpu are both installed in " in err, (argv, err)
        assert "; they share one package folder (onnxruntime), each over the other's files. Keep one: pip uninstall " \
               "-y onnxruntime onnxruntime-gpu, then pip install 'onnxruntime-gpu" in err, (argv, err)
    assert not (tmp_path / "e.npy").exists() and not (tmp_path / "b").exists()
    assert json.loads((copy / "report.json").read_text())["status"] == "passed"


def test_only_distributions_in_the_imported_packages_folder_count(tmp_path):
    """A system site-packages' onnxruntime under a virtual environment's onnxruntime-gpu shares no files with it:
    not a clash (found by a reviewer: every command refused such a working environment)."""
    import os

    import onnxruntime

    here = os.path.realpath(onnxruntime.__path__[0])
    assert len(requirements.onnxruntime_distributions(here)) == 1   # onnxruntime, or onnxruntime-gpu
    assert requirements.onnxruntime_distributions(str(tmp_path)) == ()
    requirements.check_onnxruntime_install(onnxruntime)


def test_an_incomplete_onnxruntime_is_named():
    """What uninstalling onnxruntime-gpu beside onnxruntime leaves: a package without ONNX Runtime's API. bertc run
    said 'internal error (a bug in bertc)', the build blamed the exported model."""
    with pytest.raises(MissingLibrary, match="onnxruntime imports from .* but is incomplete .* pip install "
                                             "--force-reinstall"):
        requirements.check_onnxruntime_install(types.SimpleNamespace(__path__=["/somewhere/onnxruntime"]))


def test_an_onnxruntime_too_old_stops_the_build_before_its_work(tmp_path, monkeypatch, capsys):
    """It failed after both exports, as an export error (exit 4)."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "1.20.1")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_bert()))
    assert main(["build", str(spec), "-o", str(tmp_path / "b")]) == EXIT_MISSING_LIBRARY
    err = capsys.readouterr().err
    assert "onnxruntime 1.20.1 is older than bertc supports" in err and "export onnx" not in err
    assert not (tmp_path / "b").exists()


def test_missing_libraries_are_exit_7_for_run_and_parity(copy, tmp_path, monkeypatch, capsys):
    """run without onnxruntime was exit 5 (a load error); parity without tokenizers called the build unreadable
    ('rebuild it, or restore the file', exit 5): both are a pip install away."""
    texts = tmp_path / "texts.txt"
    texts.write_text("a dog\n")
    monkeypatch.setitem(sys.modules, "tokenizers", None)   # import tokenizers: ImportError
    assert main(["parity", str(copy)]) == EXIT_MISSING_LIBRARY
    err = capsys.readouterr().err
    assert "real-text inputs need the tokenizers library: pip install" in err and "rebuild" not in err
    assert json.loads((copy / "report.json").read_text())["status"] == "passed"
    monkeypatch.undo()
    monkeypatch.setattr(bertc.runtime, "onnx_providers", lambda probe=True: [])
    with pytest.raises(MissingLibrary, match="onnxruntime is not installed: pip install"):
        bertc.Runtime(copy)


def test_no_tokenizer_in_the_build_is_said_before_the_missing_library(tmp_path, monkeypatch, capsys):
    """Installing tokenizers, as the first message asked, only led to 'no tokenizer in this build'."""
    from bertc.text import load_tokenizer

    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(InputError, match="no tokenizer in this build"):
        load_tokenizer(tmp_path, 16)


def test_ray_runs_on_the_actors_cpus(copy, tmp_path, capsys):
    """Ray's actors ask for CPUs only: a CUDA choice in them fell back to the CPU (and, with the session's provider
    checked, stopped the job): `--device cuda --ray` is refused before Ray starts, a Runtime on CUDA is refused by
    run_ray, and `--ray` alone takes the CPU's artifact."""
    from bertc.run_ray import run_ray

    texts = tmp_path / "texts.txt"
    texts.write_text("a dog\n")
    assert main(["run", str(copy), str(texts), "-o", str(tmp_path / "e.npy"), "--ray", "--device", "cuda"]) == 2
    assert "--device cuda with --ray: bertc's Ray actors ask the cluster for CPUs" in capsys.readouterr().err
    on_cuda = types.SimpleNamespace(choice=types.SimpleNamespace(provider=backends.CUDA, path="model.onnx"))
    with pytest.raises(InputError, match="over Ray the model runs on the actors' CPUs"):
        next(run_ray(on_cuda, []))   # before Ray starts


def test_an_onnxruntime_that_does_not_import_is_not_called_missing(monkeypatch):
    """Installed but failing to import (a library of its own missing): said so with its error, not 'not installed'."""
    import builtins

    real = builtins.__import__

    def failing(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("libonnxruntime.so.1.31: cannot open shared object file")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing)
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    why = backends.no_onnxruntime()
    assert why.startswith("onnxruntime is installed but does not import (libonnxruntime.so.1.31: cannot open")
    assert "pip install --force-reinstall" in why
