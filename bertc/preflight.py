"""Memory preflight: estimate the peak memory of a build from the spec, before building anything.

Every stage of a build frees what it allocates and the allocators give large blocks back
(bertc.memory; TensorFlow's oneDNN allocator, which kept them, is off: bertc/__init__.py), so
the build's resident memory returns to a base after each stage: the runtime (TensorFlow, ONNX
Runtime, LiteRT loaded) and the Keras model. The estimate of each stage is its own need on top of
that base, as a multiple of the weight bytes W (the factors below) plus the activations of its
largest forward pass (validation's padded batch, parity's grid); the peak is the heaviest stage's.
Large models also count the TFLite converter's child process beside the ONNX export. The factors
are calibrated on measured builds (``tools/bench_build.py``, ``tools/results/<spec>.json``; the
estimated and measured figures per stage are in README.md, "Memory preflight"), and
``tests/test_scale.py`` checks the estimate against those measurements.

Available memory is the smaller of the kernel's MemAvailable and the cgroup's limit minus its
usage. A build that will not fit stops before anything is written (:class:`MemoryPreflightError`,
exit 6), saying what it needs, what is available, which stage sets the peak and which options make
the build fit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from bertc.errors import MemoryPreflightError, said

GB = 1024**3
OVERHEAD = int(0.53 * GB)  # Python + TensorFlow + ONNX Runtime + LiteRT, measured after import
BUILD = 1.1                # the Keras model: stays for the whole build
VALIDATE, SAVE_KERAS, EXPORT_ONNX, EXPORT_TFLITE = 2.8, 0.2, 0.4, 2.0
TFLITE_VARIANT = {"tflite_int8": 0.35, "tflite_fp16": 0.6}
# The traced TFLite function (placeholder weights) lives from the trace until the conversion is collected.
TFLITE_TRACE = int(0.2 * GB)
# The optimized ONNX stage (lowering with the weights as arrays streamed to the file, checks, variants).
ONNX_OPTIMIZED, ONNX_VARIANT = 2.1, {"onnx_int8": 0.25, "onnx_fp16": 1.0,
                                    # the padding-free variants (bertc.optimize.padding_free): not measured,
                                    # taken as what their padded counterparts need (the same weights, rewritten)
                                    "onnx_packed": 1.0, "onnx_packed_int8": 0.25, "onnx_packed_fp16": 1.0}
# The int8 tuning (bertc.optimize.int8_tuning), which trained weights need (their activation outliers: plain
# dynamic int8 misses the criteria), runs dozens of candidate int8 graphs in turn beside the fp32 one: a
# smoothed copy of the weights, the int8 ones, each candidate's ONNX Runtime session (its packed weights, its
# arena at the largest calibration case), the one fp32 run that collects the activation statistics, and the
# all-int8 graph's layer inputs that the candidates run from (bertc.optimize.prefix_runs, at most W).
# Measured (tools/bench_build.py, tools/results/all-MiniLM-L6-v2.json and all-mpnet-base-v2.json): the optimize
# stage needs 2.2-2.5 W + 0.3 GB more than with plain int8 (5.4 W + 0.3 GB before the statistics' buffers were
# freed, README "The tuning's memory"); 2.6 W is counted. Random-init weights meet the criteria with plain int8
# (or its pair-limited weights): not counted so.
INT8_TUNING, INT8_TUNING_FIXED = 2.6, int(0.3 * GB)
TUNED_VARIANTS = ("onnx_int8", "onnx_packed_int8")
# Parity loads one artifact at a time beside the Keras model (ORT keeps a packed copy of its MatMul weights).
PARITY_ONE = 2.0
# Large models convert to TFLite in a child process during the ONNX export (bertc.export.tflite): the
# converter sees placeholder weights but writes them at full size into its flatbuffer (sampled from /proc
# beside measured builds; figures in README.md, "Memory preflight"). The fixed part is what the smallest
# measured model (all-MiniLM-L6-v2, 23 M parameters) showed: 0.4 GB had fitted BERT-base and -large alone.
TFLITE_CHILD, TFLITE_CHILD_W = int(0.6 * GB), 2.35
MARGIN = 1.0  # the factors come from measured peaks (allocator slack included) and over-predict small models
# A masked-LM head's logits at every token (rows x seq x vocabulary floats) outgrow everything else the int8 tuning
# and parity hold: the Keras reference of every calibration case stays for both stages (CalibrationSet.reference),
# and a run holds a few copies of its case's logits (the backend's output and ONNX Runtime's or LiteRT's buffers).
# Measured (tools/bench_build.py, a roberta-base RobertaForMaskedLM, vocabulary 50,265): the references of the grid
# (5,128 tokens) and of the built-in text (56 sentences, 6,048 tokens as one batch) 2.3 GB; on top of them,
# 5.8 GB while the text's batch ran (4.8 copies of its 1.2 GB of logits); 9.2 / 9.4 GB optimize / parity peaks,
# which the estimate (the text at REAL_TEXT_LENGTH tokens, OUTPUT_COPIES copies; random init: no tuning counted)
# puts at 9.8 / 10.4 GB.
REAL_TEXT_ROWS, REAL_TEXT_LENGTH = 56, 128   # the built-in calibration text (bertc.calibration) as one batch
OUTPUT_COPIES = 4


@dataclass
class Estimate:
    parameters: int
    weight_bytes: int
    peak_bytes: int
    stages: dict[str, int] = field(default_factory=dict)  # stage -> its estimated peak (base included)
    artifacts: dict[str, int] = field(default_factory=dict)  # file -> expected bytes

    def to_json(self) -> dict:
        return {"parameters": self.parameters, "weight_bytes": self.weight_bytes, "peak_bytes": self.peak_bytes,
                "stages": self.stages, "artifacts": self.artifacts}


def _dims(spec) -> tuple[int, int, int, int]:
    """(hidden, heads, intermediate, layers): exact for bert / albert, typical ratios otherwise."""
    enc = spec.encoder
    s = enc.scaffold
    hidden = s.hidden_size
    heads = getattr(enc, "num_attention_heads", None) or max(1, hidden // 64)
    inter = getattr(enc, "intermediate_size", None) or 4 * hidden
    return hidden, heads, inter, s.num_layers


def activation_bytes(spec, batch: int, seq: int) -> int:
    """Memory of one inference pass at (batch, seq): the largest layer's live tensors (attention scores
    and probabilities, the feed-forward intermediate, a few hidden-size tensors), in float32."""
    hidden, heads, inter, _ = _dims(spec)
    per_layer = batch * (3 * heads * seq * seq + seq * (2 * inter + 12 * hidden)) * 4
    return int(per_layer * 2)  # input and output of a layer live together


def logits_bytes(spec, tokens: int) -> int:
    """Bytes of a masked-LM head's logits over ``tokens`` padded tokens (0 for any other head: small outputs)."""
    head = spec.head
    if head is None or head.type != "masked_lm":
        return 0
    return 4 * tokens * spec.encoder.scaffold.vocab_size


def outputs_held(spec, real_text: bool) -> int:
    """What the references and one run's copies of a masked-LM head's logits take in the int8 tuning and parity:
    the parity grid's and (``real_text``: a tokenizer comes with trained weights) the built-in text's."""
    if not logits_bytes(spec, 1):
        return 0
    from bertc.parity import sequence_grid

    # the cases of bertc.parity.grid_cases by their sizes alone (making them to measure them took gigabytes, and a
    # minute, for a spec of 1e8 positions: the estimate that is to refuse such a build died of MemoryError)
    seqs = sequence_grid(spec)
    sizes = [b * s for b in spec.parity.batch_sizes for s in seqs]
    if max(seqs) >= 2:
        sizes += [b * max(seqs) for b in spec.parity.batch_sizes]
    if real_text:
        sizes.append(REAL_TEXT_ROWS * min(REAL_TEXT_LENGTH, spec.encoder.max_sequence_length))
    return logits_bytes(spec, sum(sizes)) + OUTPUT_COPIES * logits_bytes(spec, max(sizes))


def word_table_bytes(spec) -> int:
    """The word embedding table's float32 bytes: an ONNX int8 artifact keeps it float32 (a Gather's table, as
    the embeddings' norms, the pooler and the classifier), which on a large vocabulary is much of the model
    (XLM-R-large: 1.0 of its 2.2 GB)."""
    try:
        scaffold = spec.encoder.scaffold
        embedding = scaffold.embedding
        width = getattr(embedding, "embedding_width", None) or scaffold.hidden_size
        return 4 * int(embedding.vocab_size) * int(width)
    except (AttributeError, TypeError, ValueError):   # a plug-in embedding that declares no vocabulary
        return 0


def expected_artifacts(spec, weight_bytes: int, onnx: bool = True, tflite: bool = True,
                       optimized: bool = True) -> dict[str, int]:
    """The files a build writes and their expected sizes. ``onnx`` / ``tflite`` / ``optimized``: the build's
    options (``--no-onnx``: no ONNX artifact at all; ``--no-optimize``); the spec's ``export.onnx`` is the portable
    model.onnx alone and ``export.optimized`` the optimized artifact and its variants, each without the other, as
    the build writes them (bertc.pipeline)."""
    w = weight_bytes
    table = min(word_table_bytes(spec), w)
    int8 = table + (w - table) // 4   # ONNX int8: the word table stays float32
    try:
        layers = max(1, int(spec.encoder.scaffold.num_layers))
    except (AttributeError, TypeError, ValueError):   # a plug-in encoder without a scaffold
        layers = 12
    # Each format's own bytes beside the weights grow with the layers' nodes. Measured on the bundled tiny specs
    # (2-3 layers, 21k-37k parameters): Keras 110-150 kB, ONNX 10-30 kB, TFLite 45-70 kB; these are a little above.
    keras, onnx_graph, tflite_graph = (1024 * (a + b * layers) for a, b in ((48, 40), (16, 10), (16, 24)))
    out = {"model.keras": w + keras}
    e = spec.export
    if onnx and e.onnx:
        out["model.onnx"] = w + onnx_graph
    if onnx:
        if e.optimized and optimized:
            out["model.optimized.onnx"] = w + onnx_graph
            if "onnx_int8" in e.variants:
                out["model.optimized.int8.onnx"] = int8 + onnx_graph
            if "onnx_fp16" in e.variants:
                out["model.optimized.fp16.onnx"] = w // 2 + onnx_graph
            for variant, file, size in (("onnx_packed", "model.packed.onnx", w),
                                        ("onnx_packed_int8", "model.packed.int8.onnx", int8),
                                        ("onnx_packed_fp16", "model.packed.fp16.onnx", w // 2)):
                if variant in e.variants:
                    out[file] = size + 2 * onnx_graph   # a Loop over the sequences besides the layers
    if tflite and e.tflite:
        out["model.tflite"] = w + tflite_graph
        if "tflite_int8" in e.variants:
            out["model.int8.tflite"] = w // 4 + tflite_graph
        if "tflite_fp16" in e.variants:
            out["model.fp16.tflite"] = w // 2 + tflite_graph
        if e.keep_saved_model:   # the SavedModel the TFLite converter read (weights, the graph once more)
            out["saved_model/"] = w + tflite_graph
    return out


def estimate(spec, export: bool = True, parity: bool = True, onnx: bool = True, tflite: bool = True,
             optimize: bool = True, trained: Optional[bool] = None) -> Estimate:
    """``trained``: the build loads trained weights (default: the spec names some), whose int8 is tuned."""
    from bertc.build import expected_param_count
    from bertc.check import validation_length
    from bertc.parity import sequence_grid

    params = expected_param_count(spec)
    w = 4 * params
    e = spec.export
    # the portable model.onnx (export.onnx), and the optimized artifact (export.optimized: built without the portable
    # one too); --no-onnx (``onnx``) leaves out both
    optimized = export and onnx and optimize and e.optimized
    onnx, tflite = export and onnx and e.onnx, export and tflite and e.tflite
    # Each stage's peak: the base (runtime + the Keras model) plus what the stage itself holds.
    base = OVERHEAD + BUILD * w
    stages: dict[str, int] = {"build graph": int(base),
                              "validate": int(base + VALIDATE * w + activation_bytes(spec, 2, validation_length(spec))),
                              "save keras": int(base + SAVE_KERAS * w)}
    from bertc.export.tflite import BACKGROUND_ABOVE_PARAMETERS

    child = tflite and onnx and params > BACKGROUND_ABOVE_PARAMETERS   # converted beside the ONNX export
    beside = TFLITE_TRACE + TFLITE_CHILD + TFLITE_CHILD_W * w if child else 0
    if onnx:
        stages["export onnx"] = int(base + EXPORT_ONNX * w + beside)
    if tflite:
        variants = sum(f * w for v, f in TFLITE_VARIANT.items() if v in e.variants)
        stages["export tflite"] = int(base + (beside + variants if child else EXPORT_TFLITE * w + variants))
    # the built-in text calibrates and checks a build whose trained weights come with a tokenizer
    logits = outputs_held(spec, real_text=spec.weights is not None)
    trained = spec.weights is not None if trained is None else trained
    if optimized:
        tuning = INT8_TUNING * w + INT8_TUNING_FIXED if trained and any(v in e.variants for v in TUNED_VARIANTS) else 0
        judged = logits if any(v in e.variants for v in TUNED_VARIANTS) else 0   # the int8 judge's runs
        stages["optimize onnx"] = int(base + ONNX_OPTIMIZED * w + tuning + judged +
                                      sum(f * w for v, f in ONNX_VARIANT.items() if v in e.variants))
    if parity and spec.parity.enabled and (onnx or optimized or tflite):
        grid_act = activation_bytes(spec, max(spec.parity.batch_sizes), max(sequence_grid(spec)))
        stages["parity"] = int(base + PARITY_ONE * w + 2 * grid_act + logits)
    total = max(stages.values())
    return Estimate(params, w, int(total), stages, expected_artifacts(spec, w, onnx or optimized, tflite, optimized))


def available_memory() -> tuple[int, str]:
    """Bytes this process may still use, and where the figure comes from."""
    candidates = []
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text(encoding="utf-8").strip()
            usage = int(Path(usage_file).read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            candidates.append((int(limit) - usage, "cgroup limit"))
    if not candidates:
        try:
            candidates.append((os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free pages"))
        except (ValueError, OSError):
            return 2**62, "unknown"
    return min(candidates)


def gb(n: float) -> str:
    """Binary gigabytes, as --memory-limit 12G reads them, to two decimals (a need and what is available that
    differ by less than 0.1 were printed alike, "needs 9.0 GB ... 9.0 GB is available")."""
    return f"{n / GB:,.2f} GiB"


def parse_size(text: str) -> int:
    """'12G', '12GB', '800M', '1.5T', or bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1024, "M": 1024**2, "G": GB, "T": 1024**4}
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(float(t))
    except ValueError:
        raise ValueError(f"not a memory size: {text!r} (e.g. 12G, 800M)") from None


def check(spec, export: bool = True, parity: bool = True, onnx: bool = True, tflite: bool = True,
          memory_limit: Optional[int] = None, optimize: bool = True, trained: Optional[bool] = None) -> dict:
    """Raise :class:`MemoryPreflightError` when the build will not fit; else the preflight report section.
    ``trained``: see :func:`estimate`."""
    est = estimate(spec, export, parity, onnx, tflite, optimize, trained)
    if memory_limit is not None:
        available, source = memory_limit, said("--memory-limit", "memory_limit")
    else:
        available, source = available_memory()
    needed = int(est.peak_bytes * MARGIN)
    section = {"estimated_peak_bytes": est.peak_bytes, "available_bytes": available, "available_from": source,
               "weight_bytes": est.weight_bytes, "fits": needed <= available}
    if needed <= available:
        return section
    fitting, lightest = [], est.peak_bytes
    for flag, kwargs in ((said("--no-optimize", "optimize=False"), {"optimize": False}),
                         (said("--no-tflite", "tflite=False"), {"tflite": False}),
                         (said("--no-onnx", "onnx=False"), {"onnx": False}),
                         (said("--no-parity", "parity=False"), {"parity": False}),
                         (said("--no-export", "export=False"), {"export": False})):
        args = {"export": export, "parity": parity, "onnx": onnx, "tflite": tflite, "optimize": optimize,
                "trained": trained, **kwargs}
        other = estimate(spec, **args).peak_bytes
        lightest = min(lightest, other)
        if other * MARGIN <= available:
            fitting.append((flag, other * MARGIN))
    if spec.export.variants:   # the default int8 / fp16 files and their tuning left out, the fp32 ones kept
        bare = spec.model_copy(update={"export": spec.export.model_copy(update={"variants": []})})
        other = estimate(bare, export, parity, onnx, tflite, optimize, trained).peak_bytes
        lightest = min(lightest, other)
        if other * MARGIN <= available:
            fitting.append((said("--variants none", "variants=[]"), other * MARGIN))
    heaviest = max(est.stages, key=est.stages.get)
    hints = []
    if heaviest == "parity" and (len(spec.parity.batch_sizes) > 1 or max(spec.parity.batch_sizes) > 1):
        hints.append("smaller $.parity.batch_sizes / $.parity.sequence_lengths")
    if heaviest in ("optimize onnx", "export tflite") and spec.export.variants:
        hints.append(f"fewer variants ({said('--variants NAME,...', 'variants=[...]')} or $.export.variants)")
    # every figure compared with what is available in one unit: MiB where two of them would read alike in GiB
    figures = [needed, lightest * MARGIN, *(n for _, n in fitting)]
    size = gb if all(gb(n) != gb(available) for n in figures) else (lambda n: f"{n / 2**20:,.0f} MiB")
    if fitting:
        options = f"Options that make it fit: {'; '.join([f'{f} (needs {size(n)})' for f, n in fitting] + hints)}."
    else:
        options = (f"No build option makes it fit: the lightest build still needs {size(lightest * MARGIN)}"
                   + (f" (also worth trying: {'; '.join(hints)})" if hints else "") + ".")
    raise MemoryPreflightError(
        f"this build needs about {size(needed)} of memory at its peak, in its {heaviest} stage "
        f"({est.parameters:,} parameters = {gb(est.weight_bytes)} of float32 weights), but {size(available)} is "
        f"available ({source}). Nothing was written. {options} "
        f"To build anyway: {said('--memory-limit SIZE', 'memory_limit=BYTES')} (use it as the available memory) "
        f"or {said('--skip-preflight', 'preflight=False')}.")


def _mb(n: int) -> str:
    if n < 1e6:
        return f"{n / 1e3:,.0f} kB"
    return f"{n / 1e6:,.0f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def estimate_line(spec) -> str:
    """One line for ``bertc validate``: the build's memory estimate, what is available, the artifacts' sizes."""
    est = estimate(spec)
    available, source = available_memory()
    fits = "fits" if est.peak_bytes * MARGIN <= available else "does NOT fit"
    files = ", ".join(f"{name} ~{_mb(n)}" for name, n in est.artifacts.items())
    return (f"build peak memory ~{gb(est.peak_bytes)} ({fits}: {gb(available)} available, {source}); "
            f"artifacts: {files}")
