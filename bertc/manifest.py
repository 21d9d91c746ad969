"""The build manifest: what a build produced and from what, checkable by anyone.

``report["manifest"]`` holds the sha256 and size of every file in OUT (whichever stage wrote
it; ``report.json`` and ``summary.txt`` describe the build and are not covered), the sha256 of
the loaded spec as canonical JSON (sorted keys, no whitespace: the same spec gives the same
hash whatever its formatting or omitted defaults), and the versions of bertc and of every
library that shapes the artifacts. Same spec + same versions -> same hashes.
"""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

NOT_COVERED = ("report.json", "summary.txt")
LIBRARIES = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "keras": ("keras",), "tf2onnx": ("tf2onnx",),
             "onnx": ("onnx",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "litert": ("ai-edge-litert",),
             "numpy": ("numpy",)}


def canonical_spec_json(spec_dict: dict) -> bytes:
    # surrogatepass: a path read under a locale that cannot decode it (LC_ALL=C: "\udcc3\udca9" for "é") still has
    # one hash, not an encoding error
    return json.dumps(spec_dict, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8",
                                                                                                   "surrogatepass")


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    # One reused buffer: a fresh 8 MB bytes object per read would be a fresh mapping, i.e. page faults
    # over every byte hashed (~1 s per 2 GB on the build machines).
    h = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


def library_versions() -> dict[str, str | None]:
    import bertc

    versions: dict[str, str | None] = {"bertc": bertc.__version__}
    for name, dists in LIBRARIES.items():
        versions[name] = None
        for dist in dists:
            try:
                versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def build_manifest(out: Path, spec_dict: dict) -> dict:
    out = Path(out)
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        if rel in NOT_COVERED or rel.endswith(".partial"):
            continue
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return {"spec_sha256": hashlib.sha256(canonical_spec_json(spec_dict)).hexdigest(),
            "files": files, "versions": library_versions()}


def verify_manifest(out: Path, manifest: dict) -> list[str]:
    """Problems found comparing the files of ``out`` with ``manifest`` (empty: they match)."""
    out = Path(out)
    problems = []
    for rel, entry in manifest["files"].items():
        path = out / rel
        if not path.exists():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest")
    return problems
