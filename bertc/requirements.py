"""The pip command that installs what one of bertc's extras needs (``bertc[parquet]``, ...), read from bertc's own
metadata (pyproject.toml's extras), so that the advice installs those libraries alone. ``pip install
'bertc[parquet]'`` would do it in a full install, but in the run-only environment (README, "Running a build on
text": bertc installed ``--no-deps``) it pulls in every build library too (TensorFlow, ~1.8 GB)."""
from __future__ import annotations

import functools
import os
import re
import shlex
from typing import Optional

# the extras as pyproject.toml declares them, for a bertc that runs from a source tree without its metadata
DECLARED = {"cpu": ["onnxruntime>=1.21,<2"], "gpu": ["onnxruntime-gpu>=1.21,<2"], "text": ["tokenizers>=0.20,<1"],
            "parquet": ["pyarrow>=16"], "ray": ["ray[data]>=2.40,<3", "pyarrow>=16", "tokenizers>=0.20,<1"],
            "plot": ["pydot>=2", "matplotlib>=3.7"]}


def import_onnxruntime():
    """``onnxruntime``, imported. A Ctrl-C during its first import comes out of its extension's init as an
    ImportError ('initialization failed', 'import numpy failed'), which a caller that tolerates a missing ONNX
    Runtime (no ONNX backends) went on from: the command ran on, reporting every ONNX backend skipped. Such an
    ImportError is told apart from a missing or broken install by importing again: when that succeeds, the first
    was the Ctrl-C's, raised as KeyboardInterrupt."""
    try:
        import onnxruntime
    except ModuleNotFoundError:
        raise
    except ImportError as first:
        try:
            import onnxruntime  # noqa: F811
        except ImportError:
            raise first from None
        raise KeyboardInterrupt from None
    check_onnxruntime_install(onnxruntime)
    return onnxruntime


# the distributions that install the one ``onnxruntime`` package folder
ONNXRUNTIME_FLAVOURS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml",
                        "onnxruntime-qnn", "onnxruntime-training")


@functools.lru_cache(maxsize=4)
def onnxruntime_distributions(folder: Optional[str] = None) -> tuple[str, ...]:
    """The onnxruntime distributions pip has installed into the folder that holds the ``onnxruntime`` package
    imported here (``folder``: that package's folder; None: anywhere on the path). Normally one: a distribution in
    another folder (a system site-packages under a virtual environment's) shares no files with it."""
    from importlib import metadata

    found = []
    for name in ONNXRUNTIME_FLAVOURS:
        for dist in metadata.distributions(name=name):   # every copy on the path, not only the first
            try:
                here = folder is None or os.path.realpath(str(dist.locate_file("onnxruntime"))) == folder
            except (OSError, TypeError, ValueError):
                here = False
            if here:
                found.append(name)
                break
    return tuple(found)


def check_onnxruntime_install(module, version_first: bool = False) -> None:
    """:class:`~bertc.errors.MissingLibrary` (exit 7) for an onnxruntime install that cannot be trusted: two of its
    distributions at once (``onnxruntime`` and ``onnxruntime-gpu`` write the same package folder, each over the
    other's files: the module that imports is whichever wrote last, and uninstalling one takes files the other
    needs), or a module without ONNX Runtime's API (what is left after such an uninstall: bertc said 'internal
    error' or blamed the exported model). ``version_first``: a version older than bertc supports is named before an
    incomplete module (:func:`require_onnxruntime`)."""
    from bertc.errors import MissingLibrary

    paths = list(getattr(module, "__path__", None) or [])
    folder = os.path.realpath(paths[0]) if paths else None
    dists = onnxruntime_distributions(folder)
    if len(dists) > 1:
        raise MissingLibrary(
            f"{' and '.join(dists)} are {'both' if len(dists) == 2 else 'all'} installed in {os.path.dirname(folder)}; "
            f"they share one package folder (onnxruntime), each over the other's files. Keep one: pip uninstall -y "
            f"{' '.join(dists)}, then {pip_install('gpu')} for CUDA, or {pip_install('cpu')} for the CPU")
    dist = dists[0] if dists else "onnxruntime"
    if version_first:
        require_version(module, dist, ONNXRUNTIME_EXTRAS.get(dist))
    if not all(hasattr(module, name) for name in ("InferenceSession", "SessionOptions", "get_available_providers")):
        requirement = _requirement(dist, ONNXRUNTIME_EXTRAS.get(dist)) or dist
        raise MissingLibrary(
            f"onnxruntime imports from {folder or '?'} but is incomplete (no "
            f"InferenceSession: part of it was removed, e.g. by uninstalling onnxruntime-gpu beside onnxruntime); "
            f"reinstall it: pip install --force-reinstall {shlex.quote(requirement)}")


# the extra of bertc that installs each flavour
ONNXRUNTIME_EXTRAS = {"onnxruntime": "cpu", "onnxruntime-gpu": "gpu"}


@functools.lru_cache(maxsize=1)
def _installed_extras() -> dict:
    """{extra: [requirement, ...]} of the installed bertc's metadata ({} without it)."""
    from importlib import metadata

    try:
        requires = metadata.requires("bertc") or []
    except metadata.PackageNotFoundError:
        return {}
    extras: dict = {}
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        if extra:
            extras.setdefault(extra.group(1), []).append(spec.strip())
    return extras


# bertc's own dependencies (pyproject.toml's ``dependencies``): the import name of each distribution
CORE = {"tensorflow-cpu": "tensorflow", "keras": "keras", "numpy": "numpy", "click": "click", "pydantic": "pydantic",
        "tf2onnx": "tf2onnx", "onnx": "onnx", "ai-edge-litert": "ai_edge_litert", "safetensors": "safetensors"}
DECLARED_CORE = ["tensorflow-cpu>=2.21,<2.22", "keras>=3.15,<4", "numpy>=1.26,<3", "click>=8.2,<9", "pydantic>=2.6,<3",
                 "tf2onnx>=1.17,<1.18", "onnx>=1.17,<1.24", "ai-edge-litert>=2.0,<3", "safetensors>=0.4.1,<1"]


@functools.lru_cache(maxsize=1)
def _installed_core() -> list:
    """bertc's own requirements as its metadata declares them ([] without it)."""
    from importlib import metadata

    try:
        return [r.strip() for r in metadata.requires("bertc") or [] if ";" not in r]
    except metadata.PackageNotFoundError:
        return []


def pip_install_core() -> str:
    """``pip install 'tensorflow-cpu<2.22,>=2.21' ...``: the command that installs those of bertc's own dependencies
    that cannot be imported here (the build's libraries, which the run-only environment leaves out), all at once:
    one missing library is seldom the last."""
    import importlib.util

    missing = []
    for requirement in _installed_core() or DECLARED_CORE:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip()
        module = CORE.get(name.lower().replace("_", "-"), name.replace("-", "_"))
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(requirement)
    return "pip install " + " ".join(shlex.quote(p) for p in missing) if missing else ""


def pip_install(extra: str) -> str:
    """``pip install 'pyarrow>=16'``: the command that installs the libraries of bertc's ``extra``."""
    packages = _installed_extras().get(extra) or DECLARED[extra]
    return "pip install " + " ".join(shlex.quote(p) for p in packages)


def _requirement(dist: str, extra: Optional[str]) -> Optional[str]:
    """bertc's requirement on ``dist`` (``"onnxruntime>=1.21,<2"``): of ``extra``, or of bertc itself."""
    pool = (_installed_extras().get(extra) or DECLARED.get(extra, [])) if extra else \
        (_installed_core() or DECLARED_CORE)
    for requirement in pool:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip()
        if name.lower().replace("_", "-") == dist:
            return requirement
    return None


def _release(version: str) -> tuple:
    """(1, 20, 1) of "1.20.1" / "1.20.1+cu121" / "1.21.0.dev20240101"."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(x) for x in match.group(0).split(".")) if match else ()


@functools.lru_cache(maxsize=None)
def too_old(dist: str, installed: str, extra: Optional[str] = None) -> Optional[str]:
    """The error line when ``installed`` (the imported module's ``__version__``) is below bertc's floor for ``dist``
    (a run-only environment installs bertc with ``--no-deps``, and an older library already there stays), else
    None."""
    requirement = _requirement(dist, extra)
    floor = re.search(r">=\s*([0-9][0-9.]*)", requirement or "")
    if floor is None or not _release(installed):
        return None
    want = _release(floor.group(1))
    have = _release(installed)
    width = max(len(want), len(have))
    if have + (0,) * (width - len(have)) >= want + (0,) * (width - len(want)):
        return None
    return (f"{dist} {installed} is older than bertc supports ({requirement}); upgrade it: "
            f"pip install {shlex.quote(requirement)}")


def require_version(module, dist: str, extra: Optional[str] = None) -> None:
    """:class:`~bertc.errors.MissingLibrary` (exit 7) when the imported ``module`` of ``dist`` is older than bertc's
    floor: onnxruntime 1.20 computes the fused graphs wrongly (a build fails its structural check, and ``bertc run``
    of a build made elsewhere gives wrong scores), tokenizers < 0.20 cannot read today's tokenizer.json files."""
    line = too_old(dist, str(getattr(module, "__version__", "")), extra)
    if line is not None:
        from bertc.errors import MissingLibrary

        raise MissingLibrary(line)


def require_onnxruntime(ort) -> None:
    """:func:`check_onnxruntime_install`, then :func:`require_version` for onnxruntime, or onnxruntime-gpu where that
    is what is installed."""
    check_onnxruntime_install(ort, version_first=True)
