"""The pip command that installs what one of bertc's extras needs (``bertc[parquet]``, ...), read from bertc's own
metadata (pyproject.toml's extras), so that the advice installs those libraries alone. ``pip install
'bertc[parquet]'`` would do it in a full install, but in the run-only environment (README, "Running a build on
text": bertc installed ``--no-deps``) it pulls in every build library too (TensorFlow, ~1.8 GB)."""
from __future__ import annotations

import functools
import re
import shlex

# the extras as pyproject.toml declares them, for a bertc that runs from a source tree without its metadata
DECLARED = {"cpu": ["onnxruntime>=1.20,<2"], "gpu": ["onnxruntime-gpu>=1.20,<2"], "text": ["tokenizers>=0.15,<1"],
            "parquet": ["pyarrow>=14"], "ray": ["ray[data]>=2.40,<3", "pyarrow>=14", "tokenizers>=0.15,<1"],
            "plot": ["pydot>=2", "matplotlib>=3.7"]}


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
DECLARED_CORE = ["tensorflow-cpu>=2.21,<2.22", "keras>=3.15,<4", "numpy>=1.26,<3", "click>=8.1,<9", "pydantic>=2.6,<3",
                 "tf2onnx>=1.17,<1.18", "onnx>=1.17,<1.24", "ai-edge-litert>=2.0,<3", "safetensors>=0.4,<1"]


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
    """``pip install 'pyarrow>=14'``: the command that installs the libraries of bertc's ``extra``."""
    packages = _installed_extras().get(extra) or DECLARED[extra]
    return "pip install " + " ".join(shlex.quote(p) for p in packages)
