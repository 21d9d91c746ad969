"""Import, build and compare: the reference outputs of each fixture against every bertc backend.

    PYTHONPATH=. python tools/verify_fixtures.py [--atol 1e-5] [--results FILE] tests/fixtures/hf/* ...

For each fixture directory (one with ``reference.npz``): ``bertc import`` it, ``bertc build`` the spec
(Keras, ONNX, TFLite), run the reference inputs through model.keras, model.onnx (ONNX Runtime CPU)
and model.tflite, and print the max abs diff against the reference per output (and the cosine
similarity for feature outputs); an output along the sequence axis is compared at the real tokens of a padded
reference (``"compared": "real tokens"`` in its row: transformers' padded rows mean nothing, DeBERTa's attend to
every key). Adds the rows to --results (default tools/results/import_fidelity.json:
a fixture's row replaces its earlier one, the others stay), with the command of this run (``command``, and
under ``commands`` for each fixture it gave a row for) and its date; exits 1 when a difference exceeds --atol.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "tools" / "results" / "import_fidelity.json"


def backends(out: Path, sig):
    from bertc.parity import keras_runner, onnx_runner, tflite_runner
    from bertc.transfer import load_keras_model

    runners = {"keras": keras_runner(load_keras_model(out))}
    if (out / "model.onnx").exists():
        runners["onnx"] = onnx_runner(out / "model.onnx", "CPUExecutionProvider")
    if (out / "model.tflite").exists():
        runners["tflite"] = tflite_runner(out / "model.tflite")
    return runners


def verify(fixture: Path, work: Path) -> dict:
    from bertc.importers import import_spec
    from bertc.pipeline import BuildOptions, build
    from bertc.signature import signature_of
    from bertc.spec import load_spec

    spec_path = work / f"{fixture.name}.json"
    spec_dict = import_spec(fixture_source(fixture), spec_path)
    ref = dict(np.load(fixture / "reference.npz"))
    if spec_dict.get("head", {}).get("type") == "pretrainer":  # as many masked positions as the reference has
        spec_dict["head"]["num_token_predictions"] = int(ref["masked_lm_positions"].shape[1])
        spec_path.write_text(json.dumps(spec_dict))
    out = work / fixture.name
    build(spec_path, BuildOptions(out=out, force=True))
    spec = load_spec(out / "spec.json")
    sig = signature_of(spec)
    inputs = {i.name: ref[i.name] for i in sig.inputs}
    row = {}
    for backend, run in backends(out, sig).items():
        got = run(inputs)
        real = ref["input_mask"].astype(bool) if "input_mask" in ref else None
        for o in sig.outputs:
            want, have = ref[o.name], np.asarray(got[o.name])
            entry = {}
            if real is not None and want.ndim >= 2 and want.shape[:2] == real.shape and not real.all():
                # a per-token output at the real tokens: transformers' padded query rows mean nothing (DeBERTa's
                # attend to every key, its mask being mask_i x mask_j), as the tests compare them
                want, have = want[real], have[real]
                entry["compared"] = "real tokens"
            entry = {"max_abs": float(np.max(np.abs(want - have))), **entry}
            if o.kind == "features":
                a, b = want.reshape(len(want), -1), have.reshape(len(have), -1)
                cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
                entry["min_cosine"] = float(cos.min())
            row[f"{backend}/{o.name}"] = entry
    return row


def fixture_source(fixture: Path) -> Path:
    """What ``bertc import`` is given for a fixture directory (a TF checkpoint prefix where there is one)."""
    for name in ("bert_model.ckpt", "ckpt-1"):
        if (fixture / f"{name}.index").exists():
            return fixture / name
    return fixture


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fixtures", nargs="+", type=Path, help="fixture directories (each with reference.npz)")
    parser.add_argument("--atol", type=float, default=1e-5, help="the largest max abs diff that passes [%(default)s]")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help=f"the JSON file the rows are added to [{RESULTS.relative_to(ROOT)}]")
    args = parser.parse_args(argv)
    command = "PYTHONPATH=. python " + " ".join(shlex.quote(a) for a in [f"tools/{Path(__file__).name}", *argv])
    results, worst = {}, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for fixture in args.fixtures:
            key = f"{fixture.parent.name}/{fixture.name}"
            row = verify(fixture, Path(tmp))
            results[key] = row
            for key, e in row.items():
                worst = max(worst, e["max_abs"])
                cos = f"  cos {e['min_cosine']:.8f}" if "min_cosine" in e else ""
                print(f"{fixture.name:<24} {key:<32} max abs diff {e['max_abs']:.2e}{cos}", flush=True)
    path = args.results
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text()) if path.exists() else {}
    record = {**previous, **results, "command": command,
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "commands": {**previous.get("commands", {}), **{key: command for key in results}}}
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(f"{'model':<36} {'backend':<8} max abs diff over outputs")
    for key, row in sorted(results.items()):
        for backend in ("keras", "onnx", "tflite"):
            values = [e["max_abs"] for k, e in row.items() if k.startswith(backend + "/")]
            if values:
                print(f"{key:<36} {backend:<8} {max(values):.2e}")
    print(f"worst max abs diff {worst:.2e}; wrote {path}")
    return 0 if worst <= args.atol else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
