"""model.keras loads in a fresh process with `import bertc` alone: no spec loaded first, no warnings."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from bertc.build import build_model
from bertc.inputs import make_inputs
from bertc.spec import load_spec
from conftest import ROOT, TINY_SPECS

LOADER = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("error")          # any warning while loading is a failure
    import numpy as np
    import bertc                            # nothing else of bertc's: no spec is loaded in this process
    import keras

    results = {}
    for name, path in json.loads(sys.argv[1]).items():
        inputs = dict(np.load(path + ".inputs.npz"))
        via_keras = keras.saving.load_model(path, compile=False)
        via_bertc = bertc.load_model(path)
        outs = {}
        for tag, model in (("keras", via_keras), ("bertc", via_bertc)):
            got = model(inputs, training=False)
            outs.update({f"{tag}/{k}": np.asarray(v) for k, v in got.items()})
        np.savez(path + ".outputs.npz", **outs)
        results[name] = sorted(outs)
    print(json.dumps(results))
""")


def test_every_bundled_models_keras_file_loads_in_a_fresh_process_and_computes_the_same(tmp_path):
    """One subprocess loads every model (one test, so parallel workers do not repeat the builds)."""
    models = {}
    for spec_path in TINY_SPECS:
        spec = load_spec(spec_path)
        model = build_model(spec).model
        path = tmp_path / f"{spec_path.stem}.keras"
        model.save(path)
        inputs = make_inputs(spec, 2, min(8, spec.encoder.max_sequence_length), np.random.default_rng(0))
        np.savez(str(path) + ".inputs.npz", **inputs)
        models[spec_path.stem] = (str(path), {k: np.asarray(v) for k, v in model(inputs, training=False).items()})
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONWARNINGS": "error"}
    run = subprocess.run([sys.executable, "-c", LOADER, json.dumps({n: p for n, (p, _) in models.items()})],
                         capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    mismatches = []
    for name, (path, reference) in models.items():
        loaded = dict(np.load(path + ".outputs.npz"))
        for tag in ("keras", "bertc"):
            for output, want in reference.items():
                if not np.array_equal(loaded[f"{tag}/{output}"], want):
                    mismatches.append(f"{name}: {tag}/{output}")
    assert not mismatches and len(models) == len(TINY_SPECS)


REGISTERED = """
import sys
order = sys.argv[1]
if order == "keras first":
    import keras
    import bertc
else:
    import bertc
    assert "tensorflow" not in sys.modules and "bertc.components" not in sys.modules, "import bertc loaded TensorFlow"
    if order == "tensorflow after bertc":   # TensorFlow probes for Keras (find_spec) before importing it
        import tensorflow
    import keras
import keras.saving
assert keras.saving.get_registered_object("bertc>MultiHeadAttention") is not None, "bertc's layers are not registered"
assert not [f for f in sys.meta_path if type(f).__name__ == "_AfterKeras"], "the import hook stayed"
"""


def test_import_bertc_registers_its_layers_with_keras_in_either_order_without_loading_tensorflow_itself():
    """``import bertc`` imports no TensorFlow (running a build never needs it), yet bertc's layers are registered
    with Keras whether Keras was imported before bertc or after it, directly or through TensorFlow."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for order in ("keras first", "bertc first", "tensorflow after bertc"):
        run = subprocess.run([sys.executable, "-c", REGISTERED, order], capture_output=True, text=True, env=env,
                             timeout=300)
        assert run.returncode == 0, f"{order}: {run.stderr[-2000:]}"
