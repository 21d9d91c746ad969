"""Pin the sha256 of every model artifact built from the tiny copies of the bundled specs.

``tests/test_export_parity.py`` builds each tiny spec (``tests/conftest.py``: the seed specs, wide
encoders narrowed to hidden 64) and compares the sha256 of its artifacts with
``tests/fixtures/artifact_sha256.json``. A refactoring that must not change what bertc computes keeps
them; an intended change regenerates the file with this script and says why in its commit:

    PYTHONPATH=. python tools/pin_artifacts.py            # writes tests/fixtures/artifact_sha256.json
    PYTHONPATH=. python tools/pin_artifacts.py --check    # compares, writes nothing
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PINS = ROOT / "tests" / "fixtures" / "artifact_sha256.json"
# The files whose bytes are what bertc computes (report, summary and manifest carry dates and timings).
ARTIFACTS = ("model.keras", "model.onnx", "model.optimized.onnx", "model.optimized.int8.onnx",
             "model.optimized.fp16.onnx", "model.tflite", "model.int8.tflite", "model.fp16.tflite")


def artifact_hashes(out: Path) -> dict:
    return {name: hashlib.sha256((out / name).read_bytes()).hexdigest()
            for name in ARTIFACTS if (out / name).is_file()}


def _tiny_specs() -> list[Path]:
    spec = importlib.util.spec_from_file_location("bertc_test_conftest", ROOT / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    return conftest.TINY_SPECS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the pinned hashes, write nothing")
    args = parser.parse_args(argv)
    from bertc.cli import main as bertc_main

    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in _tiny_specs():
            out = Path(tmp) / path.stem
            rc = bertc_main(["build", str(path), "-o", str(out), "-q"])
            if rc != 0:
                print(f"{path.stem}: build failed (exit {rc})", file=sys.stderr)
                return rc
            found[path.stem] = artifact_hashes(out)
            print(f"{path.stem}: {len(found[path.stem])} artifacts")
    if args.check:
        pinned = json.loads(PINS.read_text())
        diff = [f"{s}/{f}" for s in sorted(set(pinned) | set(found))
                for f in sorted(set(pinned.get(s, {})) | set(found.get(s, {})))
                if pinned.get(s, {}).get(f) != found.get(s, {}).get(f)]
        print("identical" if not diff else "differ: " + ", ".join(diff))
        return 1 if diff else 0
    PINS.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    print(f"wrote {PINS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
