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


def pip_install(extra: str) -> str:
    """``pip install 'pyarrow>=14'``: the command that installs the libraries of bertc's ``extra``."""
    packages = _installed_extras().get(extra) or DECLARED[extra]
    return "pip install " + " ".join(shlex.quote(p) for p in packages)
