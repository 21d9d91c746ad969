"""Compiling at scale: reproducible bytes, the manifest, ONNX external data, TFLite weights written into
a flatbuffer converted from placeholders, reduced-precision TFLite variants."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from bertc.cli import main
from bertc.errors import EXIT_MEMORY
from conftest import ROOT, tiny_bert


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _spec(**export):
    d = tiny_bert()
    # hidden 64: the converter quantizes only tensors of 1024+ values, so the variants need 64 x 64 kernels
    d["encoder"].update(hidden_size=64, intermediate_size=128)
    d["export"] = {"variants": ["tflite_int8", "tflite_fp16"], **export}
    d["parity"] = {"batch_sizes": [1, 2]}
    return d


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    root = tmp_path_factory.mktemp("twice")
    spec = root / "spec.json"
    spec.write_text(json.dumps(_spec()))
    outs = [root / "out0", root / "out1"]
    assert main(["build", str(spec), "-o", str(outs[0]), "-q"]) == 0
    # the second build in another process with another hash seed: tf2onnx's node order and names follow
    # Python's set / dict iteration, which the canonical ONNX form must make irrelevant
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "bertc.cli", "build", str(spec), "-o", str(outs[1]), "-q"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return outs


def test_rebuild_is_byte_identical(twice):
    a, b = twice
    names = sorted(p.name for p in a.iterdir() if p.name not in ("report.json", "summary.txt"))
    assert {"model.keras", "model.onnx", "model.tflite", "model.int8.tflite", "model.fp16.tflite",
            "spec.json"} <= set(names)
    assert names == sorted(p.name for p in b.iterdir() if p.name not in ("report.json", "summary.txt"))
    differing = [n for n in names if _sha(a / n) != _sha(b / n)]
    assert differing == []


def test_manifest_hashes_match_the_files(twice):
    from bertc.manifest import canonical_spec_json, verify_manifest

    out = twice[0]
    report = json.loads((out / "report.json").read_text())
    manifest = report["manifest"]
    on_disk = {p.name for p in out.iterdir()} - {"report.json", "summary.txt"}
    assert set(manifest["files"]) == on_disk
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == _sha(out / name) and entry["bytes"] == (out / name).stat().st_size
    assert verify_manifest(out, manifest) == []
    spec = json.loads((out / "spec.json").read_text())
    assert manifest["spec_sha256"] == hashlib.sha256(canonical_spec_json(spec)).hexdigest()
    assert {"bertc", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "litert"} <= set(manifest["versions"])
    assert all(manifest["versions"][k] for k in ("bertc", "tensorflow", "keras", "tf2onnx", "onnx", "litert"))
    (out / "model.onnx").write_bytes((out / "model.onnx").read_bytes() + b"\0")
    assert verify_manifest(out, manifest) == ["model.onnx: sha256 differs from the manifest"]


def test_tflite_variant_artifacts(twice):
    report = json.loads((twice[1] / "report.json").read_text())
    arts = report["artifacts"]
    assert arts["tflite_int8"]["path"] == "model.int8.tflite" and arts["tflite_int8"]["precision"] == "int8"
    assert arts["tflite_fp16"]["path"] == "model.fp16.tflite" and arts["tflite_fp16"]["precision"] == "fp16"
    assert arts["tflite"]["precision"] == "fp32" and arts["tflite"]["format"] == "tflite"
    assert arts["keras"]["format"] == "keras" and arts["onnx"]["format"] == "onnx"
    # int8 weights are a quarter, fp16 half, of the fp32 file (graph overhead aside)
    assert arts["tflite_int8"]["bytes"] < 0.6 * arts["tflite"]["bytes"]
    assert arts["tflite_fp16"]["bytes"] < 0.8 * arts["tflite"]["bytes"]
    from bertc.transfer import load_keras_model

    n_weights = sum(1 for v in load_keras_model(twice[1]).weights if "float" in str(v.dtype))
    assert n_weights == 41  # embeddings 5, 2 layers x 16, pooler 2, classifier 2
    for key in ("tflite", "tflite_int8", "tflite_fp16"):
        assert arts[key]["weights"]["weights_written"] == n_weights


def test_validate_artifact_sizes_are_near_the_written_files(twice):
    """The sizes ``bertc validate`` announces come close, also for a tiny model, whose files are mostly graph: a
    fixed 256 kB an ONNX file once put them at 2-5x the bytes written. (TFLite's int8 keeps tensors of fewer
    than 1,024 values float32, which a tiny model's weight count at a quarter does not see.)"""
    from bertc.preflight import estimate
    from bertc.spec import load_spec

    out = twice[1]
    expected = estimate(load_spec(out / "spec.json")).artifacts
    written = {p.name: p.stat().st_size for p in out.iterdir() if p.name.startswith("model.")}
    assert set(written) <= set(expected), (written, expected)
    for name, size in written.items():
        assert 0.8 * size <= expected[name] <= 1.6 * size, (name, size, expected[name])


def _tflite_outputs(path, inputs):
    from bertc.parity import tflite_runner

    return tflite_runner(Path(path))(inputs)


def test_tflite_weights_are_the_keras_weights(twice):
    """The real weights landed in the placeholder buffers: fp32 is exact, fp16 / int8 within their precision."""
    from bertc.inputs import make_inputs
    from bertc.spec import load_spec
    from bertc.transfer import load_keras_model

    out = twice[0]
    spec = load_spec(out / "spec.json")
    model = load_keras_model(out)
    inputs = make_inputs(spec, 3, 8, np.random.default_rng(7))
    from bertc.parity import keras_runner

    ref = keras_runner(model)(inputs)["logits"]
    fp32 = _tflite_outputs(out / "model.tflite", inputs)["logits"]
    fp16 = _tflite_outputs(out / "model.fp16.tflite", inputs)["logits"]
    int8 = _tflite_outputs(out / "model.int8.tflite", inputs)["logits"]
    assert np.abs(fp32 - ref).max() < 1e-5
    assert 1e-7 < np.abs(fp16 - ref).max() < 1e-3  # really fp16 (not the fp32 weights), and close
    assert 1e-6 < np.abs(int8 - ref).max() < 5e-2
    assert (int8.argmax(-1) == ref.argmax(-1)).mean() >= 2 / 3


def test_tflite_fc_buffer_holds_transposed_kernel(twice):
    """FULLY_CONNECTED weights are (out, in): the buffer holds the Keras (in, out) kernel transposed."""
    from tensorflow.lite.tools import flatbuffer_utils

    from bertc.transfer import load_keras_model

    model = load_keras_model(twice[0])
    kernel = next(v.numpy() for v in model.weights if v.path == "layer_0/feedforward/intermediate/kernel")
    fb = flatbuffer_utils.read_model(str(twice[0] / "model.tflite"))
    found = []
    for t in fb.subgraphs[0].tensors:
        data = fb.buffers[t.buffer].data
        if data is not None and len(data) == kernel.nbytes and list(t.shape) == [kernel.shape[1], kernel.shape[0]]:
            found.append(np.frombuffer(bytes(data), np.float32).reshape(t.shape))
    assert any(np.array_equal(f, kernel.T) for f in found)


def test_folded_placeholder_is_refused(tmp_path):
    """A weight the converter folds with arithmetic (here x @ (0.5 * K)) cannot be mapped back: export fails
    and says so, instead of writing a wrong model."""
    import keras

    from bertc.errors import ExportError
    from bertc.export.tflite import export_tflite
    from bertc.signature import InputInfo, OutputInfo, Signature

    class Halved(keras.layers.Layer):
        def build(self, shape):
            self.kernel = self.add_weight(shape=(4, 3), name="kernel")

        def call(self, x):
            return keras.ops.matmul(x, self.kernel * 0.5)

    ids = keras.Input((None,), dtype="int32", name="input_word_ids")
    x = keras.ops.one_hot(ids, 4)
    model = keras.Model(ids, {"logits": Halved(name="halved")(x)})
    sig = Signature((InputInfo("input_word_ids"),), (OutputInfo("logits", 1, "logits"),), 8, False)
    with pytest.raises(ExportError, match="cannot map back|absent from the TFLite model"):
        export_tflite(model, sig, tmp_path / "never-written.tflite")
    assert list(tmp_path.iterdir()) == []  # no model, no partial file


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    import bertc.export.onnx as onnx_export

    root = tmp_path_factory.mktemp("external")
    spec = root / "spec.json"
    spec.write_text(json.dumps(tiny_bert()))
    import bertc.optimize.lower as lower

    saved = onnx_export.EXTERNAL_DATA_THRESHOLD, lower.SPLIT_WEIGHTS_ABOVE
    onnx_export.EXTERNAL_DATA_THRESHOLD = 10_000  # tiny_bert's weights are ~23 kB
    lower.SPLIT_WEIGHTS_ABOVE = 256               # and each of them is small: the lowering keeps 4 kB inline
    try:
        out = root / "out"
        assert main(["build", str(spec), "-o", str(out), "-q"]) == 0
    finally:
        onnx_export.EXTERNAL_DATA_THRESHOLD, lower.SPLIT_WEIGHTS_ABOVE = saved
    return out


def test_onnx_external_data_path(external):
    report = json.loads((external / "report.json").read_text())
    art = report["artifacts"]["onnx"]
    assert art["external_data"] == "model.onnx.data"
    data, graph = external / "model.onnx.data", external / "model.onnx"
    params = report["parameters"]["actual"]
    assert 4 * params <= data.stat().st_size < 4 * params + 64 * 64  # every weight, 64-byte aligned
    assert art["bytes"] == data.stat().st_size + graph.stat().st_size
    assert "model.onnx.data" in report["manifest"]["files"]
    # ONNX Runtime loaded it for parity, and onnx loads the weights back from the data file
    assert report["parity"]["passed"] and "onnx_cpu" in report["parity"]["backends"]
    model = onnx.load(str(graph))
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    from bertc.transfer import load_keras_model

    keras_model = load_keras_model(external)
    kernel = next(v.numpy() for v in keras_model.weights if v.path == "layer_1/attention/query/kernel")
    assert np.array_equal(weights["layer_1/attention/query/kernel"], kernel)
    bare = onnx.load(str(graph), load_external_data=False)
    assert all(i.data_location == onnx.TensorProto.EXTERNAL for i in bare.graph.initializer
               if i.name == "layer_1/attention/query/kernel")


def test_streamed_onnx_equals_protobuf_serialization(twice):
    """The single-file model.onnx written weight by weight is exactly protobuf's deterministic serialization."""
    path = twice[1] / "model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.SerializeToString(deterministic=True) == path.read_bytes()


def _huge(tmp_spec):
    d = tiny_bert()
    d["name"] = "huge"
    d["encoder"].update(vocab_size=30522, hidden_size=8192, num_layers=128, num_attention_heads=64,
                        intermediate_size=32768, max_sequence_length=512)
    return tmp_spec(d, "huge.json")


def test_far_too_large_spec_is_refused_at_once(tmp_spec, tmp_path, capsys):
    import time

    out = tmp_path / "out"
    t0 = time.perf_counter()
    code = main(["build", str(_huge(tmp_spec)), "-o", str(out), "-q"])
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == EXIT_MEMORY
    assert seconds < 30
    assert "this build needs about" in err and "GiB of memory at its peak" in err and "is available" in err
    assert "103,414,251,523 parameters" in err
    # validation's gradient step sets the peak: no option of the build makes it fit, and none is offered
    assert "in its validate stage" in err and "No build option makes it fit" in err and "(needs" not in err
    assert "--memory-limit" in err and "--skip-preflight" in err
    assert "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "huge.json"]


def test_memory_limit_option_drives_the_preflight(tmp_spec, tmp_path, capsys):
    spec = tmp_spec(tiny_bert())
    assert main(["build", str(spec), "-o", str(tmp_path / "a"), "-q", "--no-export", "--memory-limit", "64M"]) == EXIT_MEMORY
    assert "is available (--memory-limit)" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(["build", str(spec), "-o", str(tmp_path / "b"), "-q", "--no-export", "--memory-limit", "64M",
                 "--skip-preflight"]) == 0
    assert main(["build", str(spec), "-o", str(tmp_path / "c"), "-q", "--no-export", "--memory-limit", "lots"]) == 2
    assert "not a memory size: 'lots'" in capsys.readouterr().err
    assert main(["build", str(spec), "-o", str(tmp_path / "d"), "-q", "--no-export", "--memory-limit", "64G"]) == 0
    pre = json.loads((tmp_path / "d" / "report.json").read_text())["preflight"]
    assert pre["available_bytes"] == 64 * 2**30 and pre["fits"] and pre["estimated_peak_bytes"] > 2**29


def test_validate_prints_estimate_and_artifact_sizes(tmp_spec, capsys):
    assert main(["validate", str(_huge(tmp_spec))]) == 0
    out = capsys.readouterr().out
    assert "103,414,251,523 parameters" in out and "build peak memory ~" in out and "does NOT fit" in out
    assert "model.onnx ~413.66 GB" in out  # 103.4 G parameters x 4 bytes


def test_estimate_is_the_heaviest_stage_over_the_model():
    from bertc.preflight import OVERHEAD, estimate
    from bertc.spec import load_spec

    base = load_spec("specs/bert_base_classifier.json")
    full = estimate(base)
    assert full.weight_bytes == 4 * 109_483_778
    model = full.stages["build graph"]
    assert all(v >= model for v in full.stages.values()) and full.peak_bytes == max(full.stages.values())
    # the TFLite converter's child process beside the ONNX export sets BERT-base's peak ...
    assert max(full.stages, key=full.stages.get) == "export onnx"
    assert estimate(base, tflite=False).peak_bytes < full.peak_bytes
    assert estimate(base, optimize=False).peak_bytes == full.peak_bytes
    assert "optimize onnx" not in estimate(base, optimize=False).stages
    # ... without it, validation's gradient step does, whatever else is left out
    no_tflite = estimate(base, tflite=False)
    assert max(no_tflite.stages, key=no_tflite.stages.get) == "validate"
    assert estimate(base, export=False).peak_bytes == no_tflite.peak_bytes
    # peak / weight bytes is a constant of the pipeline (plus the fixed runtime overhead)
    assert 4 < (full.peak_bytes - OVERHEAD) / full.weight_bytes < 12


def test_padding_free_variants_count_in_the_estimate():
    """The packed variants are written in the optimize stage like their padded counterparts: the preflight
    counts their memory and lists their files."""
    from bertc.preflight import estimate
    from bertc.spec import load_spec

    data = json.loads(Path("specs/bert_base_classifier.json").read_text())
    plain = estimate(load_spec({**data, "export": {**data.get("export", {}), "variants": ["onnx_int8"]}}))
    packed = estimate(load_spec({**data, "export": {**data.get("export", {}), "variants": [
        "onnx_int8", "onnx_packed", "onnx_packed_int8", "onnx_packed_fp16"]}}))
    assert packed.stages["optimize onnx"] - plain.stages["optimize onnx"] == pytest.approx(2.25 * plain.weight_bytes, 1e-6)
    assert {"model.packed.onnx", "model.packed.int8.onnx", "model.packed.fp16.onnx"} <= set(packed.artifacts)
    assert not any("packed" in f for f in plain.artifacts)


@pytest.mark.parametrize("name", ["bert_base_classifier", "bert_large_classifier", "all-MiniLM-L6-v2",
                                  "all-mpnet-base-v2"])
def test_preflight_estimate_matches_the_measured_build(name):
    """tools/results/<spec>.json holds a measured whole build (tools/bench_build.py): the estimate stays
    within -3% / +15% of its peak (all processes), stage by stage where the stage sets the peak. The two
    sentence embedders are real checkpoints (their imported specs beside the figures), whose int8 is tuned:
    the optimize stage sets their peak."""
    from bertc.preflight import estimate
    from bertc.spec import load_spec

    measured = json.loads((ROOT / "tools" / "results" / f"{name}.json").read_text())
    spec = ROOT / "specs" / f"{name}.json"
    est = estimate(load_spec(spec if spec.exists() else ROOT / "tools" / "results" / f"{name}.spec.json"))
    assert 0.97 <= est.peak_bytes / (measured["peak_rss_mb"] * 2**20) <= 1.15, (est.stages, measured["peak_rss_mb"])
    by_stage = {s["stage"]: s["stage_peak_tree_rss_mb"] * 2**20 for s in measured["stages"] if "stage_peak_tree_rss_mb" in s}
    for stage in ("validate", "optimize onnx", "parity"):
        # a small model's parity (1.1 GB, not its peak) carries more fixed cost than the weight factors count
        least = 0.9 if stage == "parity" and measured["weight_bytes"] < 2**27 else 0.97
        assert est.stages[stage] >= least * by_stage[stage], stage


def test_a_masked_lm_heads_logits_count_in_the_estimate():
    """A masked-LM head's logits at every token (rows x seq x vocabulary) set the int8 judge's and parity's memory:
    the measured roberta-base RobertaForMaskedLM build (random init: its plain int8 meets the criteria, no tuning)
    is estimated within -3% / +15% of its peak, stage by stage; without the head the estimate is a classifier's."""
    from bertc.preflight import OUTPUT_COPIES, estimate, logits_bytes
    from bertc.spec import load_spec

    measured = json.loads((ROOT / "tools" / "results" / "roberta-base-mlm.json").read_text())
    spec = load_spec(ROOT / "tools" / "results" / "roberta-base-mlm.spec.json")
    est = estimate(spec, trained=False)
    assert 0.97 <= est.peak_bytes / (measured["peak_rss_mb"] * 2**20) <= 1.15, (est.stages, measured["peak_rss_mb"])
    by_stage = {s["stage"]: s["stage_peak_tree_rss_mb"] * 2**20 for s in measured["stages"] if "stage_peak_tree_rss_mb" in s}
    for stage in ("optimize onnx", "parity"):
        assert 0.97 * by_stage[stage] <= est.stages[stage] <= 1.15 * by_stage[stage], (stage, est.stages[stage])
    headless = estimate(spec.model_copy(update={"head": None}), trained=False)
    assert est.stages["parity"] - headless.stages["parity"] >= (1 + OUTPUT_COPIES) * logits_bytes(spec, 3 * 512)
    assert logits_bytes(spec.model_copy(update={"head": None}), 1000) == 0


def test_trained_weights_count_the_int8_tuning():
    """Trained weights get their int8 tuned (dozens of candidate graphs beside the fp32 one); random-init ones,
    and builds without an int8 variant, do not."""
    from bertc.preflight import INT8_TUNING, INT8_TUNING_FIXED, estimate
    from bertc.spec import load_spec

    spec = load_spec(ROOT / "tools" / "results" / "all-mpnet-base-v2.spec.json")
    tuned, plain = estimate(spec), estimate(spec, trained=False)
    extra = tuned.stages["optimize onnx"] - plain.stages["optimize onnx"]
    assert abs(extra - (INT8_TUNING * tuned.weight_bytes + INT8_TUNING_FIXED)) <= 1
    assert tuned.peak_bytes == tuned.stages["optimize onnx"] > plain.peak_bytes
    no_int8 = spec.model_copy(update={"export": spec.export.model_copy(update={"variants": []})})
    assert estimate(no_int8).stages["optimize onnx"] < plain.stages["optimize onnx"]
    random_init = spec.model_copy(update={"weights": None})
    assert estimate(random_init).stages == plain.stages


def test_preflight_offers_the_options_that_make_a_build_fit():
    from bertc.preflight import MemoryPreflightError, check, estimate
    from bertc.spec import load_spec

    spec = load_spec("specs/bert_base_classifier.json")
    full, lighter = estimate(spec).peak_bytes, estimate(spec, tflite=False).peak_bytes
    from bertc.errors import command_line

    with pytest.raises(MemoryPreflightError) as err, command_line():   # (as bertc build says it; Python's below)
        check(spec, memory_limit=(full + lighter) // 2)
    text = str(err.value)
    with pytest.raises(MemoryPreflightError, match=r"Options that make it fit: tflite=False \(needs .*To build "
                                                   r"anyway: memory_limit=BYTES .* or preflight=False\.$"):
        check(spec, memory_limit=(full + lighter) // 2)
    assert "in its export onnx stage" in text and "Options that make it fit: --no-tflite (needs" in text
    assert "--no-optimize" not in text and "--no-parity" not in text   # they do not lower this peak


def test_a_large_vocabularys_int8_size_and_the_variants_option_are_in_the_preflight():
    """XLM-R-large (a tester): the int8 file was estimated at 559 MB (every weight int8) and written at 1,331 MB (its
    1 GB word table stays float32); a build refused for memory was offered --no-optimize (no optimized artifact at
    all) but not --variants none, which fits and keeps it."""
    from bertc.preflight import GB, MemoryPreflightError, check, estimate, gb
    from bertc.spec import load_spec

    data = json.loads((ROOT / "specs" / "bert_large_classifier.json").read_text())
    data["encoder"]["vocab_size"] = 250_002
    spec = load_spec(data)
    est = estimate(spec, trained=True)   # trained weights: their int8 is tuned, the heaviest stage
    table = 4 * 250_002 * spec.encoder.hidden_size
    int8 = est.artifacts["model.optimized.int8.onnx"]
    assert abs(int8 - (table + (est.weight_bytes - table) / 4)) < 1e6 and int8 > 0.5 * est.artifacts["model.onnx"]
    bare = estimate(spec.model_copy(update={"export": spec.export.model_copy(update={"variants": []})}),
                    trained=True).peak_bytes
    assert bare < est.peak_bytes
    from bertc.errors import command_line

    with pytest.raises(MemoryPreflightError) as err, command_line():
        check(spec, memory_limit=int((bare + est.peak_bytes) / 2 * 1.1), trained=True)
    text = str(err.value)
    assert "--variants none (needs " in text and " GiB" in text and " GB" not in text
    assert gb(9.04 * GB) != gb(8.96 * GB)   # a need and what is available are told apart ("9.0 GB" both, before)


def test_shared_int8_placeholder_buffers_are_split(tmp_path):
    """With the converter's buffer deduplication on, every int8 placeholder kernel (all 127) lands in one
    shared buffer; fill_weights gives each weight its own buffer and the model computes like Keras."""
    from bertc.build import build_model
    from bertc.components.common import tf
    from bertc.export.tflite import SIGNATURE, _converter, serving_function
    from bertc.export.tflite_weights import fill_weights, graph_weight_uses, placeholder_values
    from bertc.inputs import make_inputs
    from bertc.parity import keras_runner, tflite_runner
    from bertc.signature import signature_of
    from bertc.spec import load_spec

    spec = load_spec(_spec())
    sig = signature_of(spec)
    model = build_model(spec, sig).model
    variables = list(model.trainable_variables) + list(model.non_trainable_variables)
    floating = [k for k, v in enumerate(variables) if "float" in str(v.dtype)]
    placeholders = dict(zip(floating, placeholder_values(len(floating))))
    serve = serving_function(model, sig, lambda k, v: placeholders[k] if k in placeholders else v.numpy())
    module = tf.Module()
    module.serve = serve
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={SIGNATURE: serve})
    fb = bytearray(_converter(tmp_path / "sm", "int8").convert())  # deduplication left on
    uses, own = graph_weight_uses(serve.get_concrete_function(), variables)
    out, filled = fill_weights(fb, lambda k: variables[k].numpy(), placeholders, uses, own)
    assert out is not fb  # re-serialized with split buffers
    assert filled.weights == len(floating)
    (tmp_path / "m.tflite").write_bytes(out)
    inputs = make_inputs(spec, 2, 8, np.random.default_rng(3))
    got = tflite_runner(tmp_path / "m.tflite")(inputs)["logits"]
    want = keras_runner(model)(inputs)["logits"]
    assert np.abs(got - want).max() < 5e-2 and (got.argmax(-1) == want.argmax(-1)).all()


def test_shared_validation_passes_still_catch_a_model_that_reads_padding():
    """The checks share their forward passes; a model that averages over padded positions still fails padding
    invariance (and only the checks it should)."""
    import keras

    from bertc.check import run_checks
    from bertc.signature import signature_of
    from bertc.spec import load_spec

    spec = load_spec(tiny_bert())
    sig = signature_of(spec)
    inputs = [keras.Input((None,), dtype="int32", name=n) for n in sig.input_names]
    emb = keras.layers.Embedding(50, 8, name="emb")(inputs[0])
    logits = keras.layers.Dense(3, name="classifier")(keras.ops.mean(emb, axis=1))  # padding included
    model = keras.Model(inputs, {"logits": logits})
    results = {c.name: c for c in run_checks(model, spec, sig)}
    assert not results["padding_invariance"].passed and results["padding_invariance"].figure > 1e-4
    assert "padding to 8" in results["padding_invariance"].detail
    assert results["batch_invariance"].passed and results["deterministic"].passed
    assert results["finite_outputs"].passed and results["trainability"].passed
    assert not results["param_count"].passed


def test_optimized_artifacts_take_the_external_data_path_too(external):
    report = json.loads((external / "report.json").read_text())
    for key, name in (("onnx_optimized", "model.optimized.onnx"), ("onnx_int8", "model.optimized.int8.onnx")):
        art = report["artifacts"][key]
        assert art["external_data"] == f"{name}.data" and f"{name}.data" in report["manifest"]["files"]
        assert art["bytes"] == (external / name).stat().st_size + (external / f"{name}.data").stat().st_size
        bare = onnx.load(str(external / name), load_external_data=False)
        assert any(i.data_location == onnx.TensorProto.EXTERNAL for i in bare.graph.initializer)
    backends = report["parity"]["backends"]
    assert {"onnx_optimized_cpu", "onnx_int8_cpu"} <= set(backends) and report["parity"]["passed"]


def test_tflite_converted_in_a_child_process_is_the_same_file(tmp_path, monkeypatch):
    """Large models are converted in a child process while the build goes on: same bytes as in-process. The child
    imports this bertc even where the command runs beside another one (``python -m`` put the working directory first
    on its path: a checkout's bertc/ there was imported instead, found by a tester)."""
    import hashlib

    from bertc.build import build_model
    from bertc.export.tflite import export_tflite
    from bertc.signature import signature_of
    from bertc.spec import load_spec

    spec = load_spec(tiny_bert())
    sig = signature_of(spec)
    model = build_model(spec, sig).model
    here = export_tflite(model, sig, tmp_path / "here.tflite", background=False)
    child = export_tflite(model, sig, tmp_path / "child.tflite", background=True)
    assert (here["converted_in"], child["converted_in"]) == ("this process", "a child process, while the build went on")
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("here.tflite", "child.tflite")]
    assert digest[0] == digest[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.tflite", "here.tflite"]
    elsewhere = tmp_path.parent / (tmp_path.name + "-elsewhere")
    (elsewhere / "bertc").mkdir(parents=True)
    (elsewhere / "bertc" / "__init__.py").write_text("raise SystemExit('the bertc of the working directory')\n")
    monkeypatch.chdir(elsewhere)
    export_tflite(model, sig, tmp_path / "again.tflite", background=True)
    assert hashlib.sha256((tmp_path / "again.tflite").read_bytes()).hexdigest() == digest[0]


def test_child_converter_failure_names_the_op_and_leaves_nothing(tmp_path):
    import keras

    from bertc.components.common import tf
    from bertc.errors import ExportError
    from bertc.export.tflite import export_tflite
    from bertc.signature import InputInfo, OutputInfo, Signature

    class Erfc(keras.layers.Layer):   # TensorFlow's Erfc has no builtin TFLite kernel
        def call(self, x):
            return tf.math.erfc(x)

    ids = keras.Input((None,), dtype="int32", name="input_word_ids")
    model = keras.Model(ids, {"logits": Erfc(name="bad_activation")(keras.ops.one_hot(ids, 4))})
    sig = Signature((InputInfo("input_word_ids"),), (OutputInfo("logits", 1, "logits"),), 8, False)
    with pytest.raises(ExportError, match=r"op tf\.Erfc \(from layer .*bad_activation"):
        export_tflite(model, sig, tmp_path / "never-written.tflite", background=True)
    assert list(tmp_path.iterdir()) == []


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")   # exited, waiting for a reaper


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's parent-death signal")
def test_converter_child_does_not_outlive_a_killed_build(tmp_path):
    """A build killed outright (SIGKILL: no cleanup runs) takes its converter child with it: the child ends
    without converting anything, instead of running on as an orphan."""
    import time

    script = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT / 'tests')!r})
from conftest import tiny_bert
from bertc.build import build_model
from bertc.export.tflite import TFLiteJob
from bertc.signature import signature_of
from bertc.spec import load_spec
spec = load_spec(tiny_bert())
sig = signature_of(spec)
job = TFLiteJob(build_model(spec, sig).model, sig, [(__import__('pathlib').Path({str(tmp_path)!r}) / 'model.tflite', 'fp32')],
                background=True).start()
print(job._child.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert parent.returncode == -9, parent.stderr[-2000:]
    child = int(parent.stdout.split()[-1])
    deadline = time.monotonic() + 120
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(child), "the converter child outlived its killed parent"
    # it stopped before converting: no output, partial or whole; only the killed job's working directory
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".bertc-savedmodel-")] == []


def test_the_spec_hash_names_the_weights_alike_wherever_out_is(tmp_path):
    """OUT/spec.json names the weights relative to OUT, and spec_sha256 hashed that entry: the same spec and
    checkpoint built into out/ and deep/er/out/ had different spec hashes (found by a tester), so a cache keyed on
    it never hit. It names them by their absolute path; another checkpoint still hashes differently."""
    import shutil

    ckpt = tmp_path / "ck"
    shutil.copytree(ROOT / "tests" / "fixtures" / "hf" / "bert_model", ckpt)
    spec = tmp_path / "spec.json"
    assert main(["import", str(ckpt), "-o", str(spec)]) == 0
    outs = [tmp_path / "out", tmp_path / "deep" / "er" / "out"]
    for out in outs:
        assert main(["build", str(spec), "-o", str(out), "-q", "--no-export"]) == 0
    written = [json.loads((o / "spec.json").read_text())["weights"] for o in outs]
    assert written == ["../ck", "../../../ck"]   # spec.json keeps naming them relative to OUT
    hashes = [json.loads((o / "report.json").read_text())["manifest"]["spec_sha256"] for o in outs]
    assert hashes[0] == hashes[1]
    shutil.copytree(ckpt, tmp_path / "ck2")
    other = tmp_path / "other.json"
    other.write_text(spec.read_text().replace('"ck"', '"ck2"'))
    assert main(["build", str(other), "-o", str(tmp_path / "out2"), "-q", "--no-export"]) == 0
    assert json.loads((tmp_path / "out2" / "report.json").read_text())["manifest"]["spec_sha256"] != hashes[0]
