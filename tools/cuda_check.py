#!/usr/bin/env python3
"""bertc's ONNX artifacts on ONNX Runtime's CUDA provider: parity and latency (issue 8).

The GPU machine needs no TensorFlow and no bertc install: the builds, the Keras reference and bertc's
own parity criteria stay here; the GPU machine only runs ONNX Runtime (plus torch + transformers to
export the Hugging Face speed anchor). Three steps.

1. Here, in bertc's environment. Build every spec with the fp16 variant (a copy of the spec with
   ``"export": {"variants": ["onnx_int8", "onnx_fp16"]}``), e.g. ``bertc build COPY.json -o OUT --force
   --no-tflite``, then::

       python tools/cuda_check.py prepare --bundle .gpu/bundle --payload PAYLOAD_DIR \
           --parity-build OUT_1 --parity-build OUT_2 ... \
           --bench-build classifier=OUT_BERT_BASE_CLASSIFIER --bench-build encoder=OUT_BERT_BASE_ENCODER \
           [--ort-archive onnxruntime_gpu.tar.xz] [--part-mib 55]

   It writes a small *bundle* (every ONNX graph with its large initializers stripped; bertc's parity
   grid inputs of each parity build (``bertc.parity.grid_cases``: right-padded rows and random 0/1
   masks); BERT-base bench inputs (``bertc.bench.bench_inputs``) and CPU-vs-CUDA check inputs; a copy
   of bertc's TF-free modules ``backends.py``, ``bench.py``, ``errors.py``; ``manifest.json``) and a
   *payload* (``payload.bin``: an optional onnxruntime-gpu package archive, made with
   ``tar cJf ort.tar.xz onnxruntime onnxruntime_gpu-*.dist-info`` from the wheel's contents, then the
   parity builds' weights, each distinct tensor once; an fp16 tensor is stored as the fp16 cast of its
   fp32 twin plus the few elements the converter changed). ``--part-mib N`` also cuts the payload into
   ``part-NNN`` files of N MiB, for a machine that can be sent only so much per call.
   The BERT-base graphs carry no weights: the device refills every initializer of two or more
   dimensions with seeded random values (normal, std 0.02; the fp16 graph the fp16 cast of the same
   values), so BERT-base timings and the CPU-vs-CUDA check use RANDOM weights of the right shapes;
   biases, layer-norm parameters and constants keep their built values.

2. On the CUDA machine (python3 with numpy, onnx, onnxruntime-gpu (or the payload's archive);
   torch + transformers for the anchor), in a checkout of this repository with the bundle::

       python3 tools/cuda_check.py device --bundle .gpu/bundle --payload PAYLOAD_DIR/payload.bin --out RESULTS \
           [--stages anchor-export-bg,setup,anchor,bench,placements,basecheck,parity] \
           [--anchor-raw-mask] [--bench-no-tf32] [--rounds 10 --calls 20 --warmup 10]

   Parts instead of one payload: one call per part, in order, each ``--parts DIR_WITH_THIS_PART``
   (appended to ``--state``, default /tmp/cuda_check; checked by sha256) and ``--stages append`` until
   the stages' data is complete; ``anchor-export-bg`` starts the anchor's torch export in the
   background meanwhile. This is how tools/results/cuda_*.json were made (the commands are recorded
   there). Stages:
     setup      onnxruntime-gpu (extracted from the payload, or ``--ort-site DIR``, or installed), the
                pip nvidia-* CUDA libraries on LD_LIBRARY_PATH (the script re-executes itself), and a
                probe session that must run on CUDAExecutionProvider;
     anchor     HF BertForSequenceClassification / BertModel (bert-base config, random init) exported by
                tools/hf_anchor.py's export (torch.onnx.export, opset 17), fused by
                onnxruntime.transformers.optimizer (model_type "bert", use_gpu=True), and the fused
                model's convert_float_to_float16(keep_io_types=True); ``--anchor-raw-mask`` adds the
                same fusion keeping the raw 2-D attention mask (as bertc's Attention takes it; the
                default bert fusion turns the mask into a 1-D mask index, which assumes right padding);
     bench      bertc.bench.time_targets (warm-up, interleaved rounds, rotating order) over bertc's
                BERT-base model.optimized.onnx, model.optimized.fp16.onnx, model.onnx and the anchor,
                sessions opened as bertc bench opens them (bertc.backends.ort_session, providers =
                [CUDAExecutionProvider], 2 intra-op threads, spinning off), inputs and outputs as numpy
                (as bertc bench), then again with IOBinding (inputs on the GPU, outputs left there);
                ``--bench-no-tf32`` adds the fp32 fused graphs with the CUDA option use_tf32=0;
     placements which execution provider ran each node of each bench model (ORT's profiler);
     basecheck  the BERT-base graphs on CUDA against the same fp32 graph on ORT's CPU provider;
     parity     every parity build's model.onnx, model.optimized.onnx (each also with use_tf32=0) and
                model.optimized.fp16.onnx on CUDA over the build's own grid, in the session bertc
                parity opens; the outputs come back as npz, plus each session's providers and node
                placement.
   Everything lands in RESULTS (device.json, *.npz). ``--dry-run-cpu`` rehearses the whole pipeline
   on the CPU provider (its figures mean nothing).

3. Here again::

       python tools/cuda_check.py report --bundle .gpu/bundle --device-results RESULTS [RESULTS ...] \
           [--device-command "..."]

   replays the CUDA outputs through ``bertc.parity.compare`` against each build's Keras model
   (bertc's grid and criteria, exactly as ``bertc build`` applies them: fp32 atol + rtol * |ref|; fp16
   argmax agreement with near-ties and per-row cosine over real tokens), computes the BERT-base
   CPU-vs-CUDA figures with bertc.parity's ``row_cosines`` / ``argmax_matches``, the latency ratios
   with ``bertc.bench.round_ratio``, and writes tools/results/cuda_parity.json and
   tools/results/cuda_bench.json.

On a CUDA machine that also has bertc (TensorFlow and onnxruntime-gpu), ``bertc build`` / ``bertc
parity`` run the CUDA backends themselves; this tool is for a GPU machine without bertc's stack, and
for the latency comparison with the anchor.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
EP = CUDA  # the provider under test on the device; ``device --dry-run-cpu`` swaps in CPU to rehearse the pipeline
STORE_MIN_ELEMENTS = 1024  # parity graphs: float initializers at least this large go to the payload
RANDOM_MIN_ELEMENTS = 4096  # bench graphs: float initializers of >= 2 dims and at least this large are refilled
RANDOM_STD = 0.02
ALIGN = 64
LITE_MODULES = ("backends.py", "bench.py", "errors.py")  # bertc's modules that import no TensorFlow
CUDA_ARTIFACTS = ("onnx", "onnx_optimized", "onnx_fp16")  # the artifacts parity runs on CUDA
HF_NAMES = {"input_word_ids": "input_ids", "input_mask": "attention_mask", "input_type_ids": "token_type_ids"}
BENCH_SHAPES = [(1, 32), (1, 128), (8, 32), (8, 128), (32, 128)]
IOBINDING_SHAPES = [(1, 32), (1, 128), (8, 32), (8, 128)]
PREPARED_SHAPES = [(1, 32), (1, 128), (1, 512), (8, 32), (8, 128), (8, 512), (32, 32), (32, 128)]  # bench inputs in the bundle


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def sha256_file(path: Path, start: int = 0, size: int | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = size if size is not None else os.path.getsize(path) - start
        while left > 0:
            block = f.read(min(left, 1 << 24))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def bertc_sources_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "bertc").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def random_values(name: str, shape, seed: int = 0):
    """Deterministic normal(0, RANDOM_STD) float32 values for the initializer ``name``."""
    import numpy as np

    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return (rng.standard_normal(size=tuple(shape), dtype=np.float32) * np.float32(RANDOM_STD))


# =====================================================================================================
# prepare (here, bertc's environment)
# =====================================================================================================

class Payload:
    """payload.bin: members appended one after another (64-byte aligned), each tensor stored once."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")
        self.offset = 0
        self.by_hash: dict[str, tuple[int, int]] = {}

    def _pad(self) -> None:
        pad = (-self.offset) % ALIGN
        if pad:
            self.file.write(b"\0" * pad)
            self.offset += pad

    def add_bytes(self, data: bytes) -> tuple[int, int]:
        key = hashlib.sha1(data).hexdigest()
        if key in self.by_hash:
            return self.by_hash[key]
        self._pad()
        where = (self.offset, len(data))
        self.file.write(data)
        self.offset += len(data)
        self.by_hash[key] = where
        return where

    def add_file(self, path: Path) -> dict:
        self._pad()
        start = self.offset
        with open(path, "rb") as f:
            shutil.copyfileobj(f, self.file)
        self.offset += path.stat().st_size
        return {"offset": start, "nbytes": path.stat().st_size, "sha256": sha256_file(path)}

    def close(self) -> None:
        self._pad()
        self.file.close()


def strip_parity_graph(model, payload: Payload, fp32_twins: dict) -> dict:
    """Move the large float initializers of ``model`` into ``payload``; return the fill of each one.
    fp16 tensors whose fp32 twin (same name and shape, from an fp32 artifact of the same build) is
    known are stored as that cast plus a patch of the elements that differ (the fp16 converter clamps
    tiny magnitudes)."""
    import numpy as np
    from onnx import numpy_helper

    fills = {}
    for t in model.graph.initializer:
        value = numpy_helper.to_array(t)
        if value.dtype not in (np.float32, np.float16) or value.size < STORE_MIN_ELEMENTS:
            continue
        value = np.ascontiguousarray(value)
        fill = None
        if value.dtype == np.float16 and t.name in fp32_twins and fp32_twins[t.name][0].shape == value.shape:
            src, where = fp32_twins[t.name]
            differ = np.flatnonzero(src.astype(np.float16).view(np.uint16).ravel() != value.view(np.uint16).ravel())
            if differ.size <= max(16, value.size // 1000):
                fill = {"kind": "fp16_cast", "src": list(where),
                        "patch_index": list(payload.add_bytes(differ.astype(np.int64).tobytes())),
                        "patch_value": list(payload.add_bytes(value.ravel()[differ].tobytes()))}
        if fill is None:
            fill = {"kind": "store", "at": list(payload.add_bytes(value.tobytes()))}
            if value.dtype == np.float32:
                fp32_twins[t.name] = (value, tuple(fill["at"]))
        fill.update(dtype=str(value.dtype), shape=list(value.shape))
        fills[t.name] = fill
        _clear(t)
    return fills


def strip_random_graph(model) -> dict:
    """Strip the initializers of >= 2 dims (>= RANDOM_MIN_ELEMENTS) that the device refills at random."""
    import numpy as np
    from onnx import helper

    fills = {}
    for t in model.graph.initializer:
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
        size = int(np.prod(t.dims)) if len(t.dims) else 1
        if dtype not in (np.float32, np.float16) or len(t.dims) < 2 or size < RANDOM_MIN_ELEMENTS:
            continue
        fills[t.name] = {"kind": "random", "std": RANDOM_STD, "dtype": str(np.dtype(dtype)), "shape": list(t.dims)}
        _clear(t)
    return fills


def _clear(t) -> None:
    t.raw_data = b""
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        t.ClearField(field)
    t.ClearField("external_data")
    t.data_location = 0


def save_inputs(path: Path, named: list[tuple[str, dict]]) -> list[str]:
    import numpy as np

    arrays = {f"{i}:{k}": v for i, (_, inputs) in enumerate(named) for k, v in inputs.items()}
    np.savez_compressed(path, **arrays)
    return [label for label, _ in named]


def inputs_hash(inputs: dict) -> str:
    import numpy as np

    digest = hashlib.sha1()
    for k in sorted(inputs):
        v = np.ascontiguousarray(inputs[k])
        digest.update(k.encode() + str(v.dtype).encode() + str(v.shape).encode() + v.tobytes())
    return digest.hexdigest()


def cmd_prepare(args) -> int:
    import numpy as np
    import onnx

    from bertc.backends import artifact_info
    from bertc.bench import bench_inputs
    from bertc.inputs import make_inputs, random_mask
    from bertc.parity import grid_cases
    from bertc.spec import load_spec

    bundle, payload_dir = args.bundle, args.payload
    if bundle.exists():
        shutil.rmtree(bundle)
    for d in (bundle / "graphs", bundle / "inputs", bundle / "bertc_lite"):
        d.mkdir(parents=True)
    payload_dir.mkdir(parents=True, exist_ok=True)
    for old in payload_dir.glob("part-*"):
        old.unlink()
    for name in LITE_MODULES:
        shutil.copy2(ROOT / "bertc" / name, bundle / "bertc_lite" / name)
    payload = Payload(payload_dir / "payload.bin")
    manifest = {"created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": shlex.join([sys.executable, *sys.argv]),
                "bertc_sources": bertc_sources_hash(),
                "bertc_lite": {n: hashlib.sha256((ROOT / "bertc" / n).read_bytes()).hexdigest()[:16] for n in LITE_MODULES},
                "members": {}, "parity": {}, "bench": {}}
    if args.ort_archive:
        manifest["members"]["ort"] = {**payload.add_file(args.ort_archive), "file": args.ort_archive.name}
        log(f"payload: onnxruntime archive {args.ort_archive} ({args.ort_archive.stat().st_size / 2**20:.1f} MiB)")

    # parity builds: graphs with weights in the payload, bertc's grid inputs
    for out in args.parity_build:
        out = out.resolve()
        report = json.loads((out / "report.json").read_text())
        if report.get("status") != "passed":
            raise SystemExit(f"{out}: the build did not pass (status {report.get('status')!r})")
        spec = load_spec(out / "spec.json")
        name = spec.name
        start = payload.offset
        arts, twins = {}, {}
        chosen = [(aid, artifact_info(aid, e)) for aid, e in report["artifacts"].items() if aid in CUDA_ARTIFACTS]
        chosen.sort(key=lambda kv: kv[1]["precision"] != "fp32")  # fp32 first: fp16 weights refer to them
        for aid, info in chosen:
            if CUDA not in info["providers"]:
                continue
            model = onnx.load(str(out / info["path"]))
            fills = strip_parity_graph(model, payload, twins)
            graph = f"graphs/{name}.{aid}.onnx"
            onnx.save(model, str(bundle / graph))
            arts[aid] = {"graph": graph, "fills": fills, "precision": info["precision"], "path": info["path"],
                         "providers": info["providers"], "input_dtype": info.get("input_dtype"),
                         "sha256": report.get("manifest", {}).get("files", {}).get(info["path"], {}).get("sha256")}
        missing = [a for a in CUDA_ARTIFACTS if a not in arts]
        cases = grid_cases(spec)
        inputs_file = f"inputs/{name}.npz"
        save_inputs(bundle / inputs_file, [(c.label, c.inputs) for c in cases])
        end = payload.offset
        manifest["parity"][name] = {
            "build": str(out), "spec_sha256": report.get("manifest", {}).get("spec_sha256"),
            "artifacts": arts, "missing_artifacts": missing, "inputs": inputs_file,
            "cases": [{**c.to_json(), "inputs_sha1": inputs_hash(c.inputs)} for c in cases],
            "payload_end": end, "payload_start": start,
        }
        log(f"{name}: {', '.join(arts)} ({(end - start) / 2**20:.1f} MiB of weights), {len(cases)} cases"
            + (f"; not built: {', '.join(missing)}" if missing else ""))

    # bench builds: weightless graphs, bench and check inputs
    for item in args.bench_build:
        label, _, out = item.partition("=")
        out = Path(out).resolve()
        report = json.loads((out / "report.json").read_text())
        spec = load_spec(out / "spec.json")
        arts = {}
        for aid, entry in report["artifacts"].items():
            info = artifact_info(aid, entry)
            if aid not in CUDA_ARTIFACTS or CUDA not in info["providers"]:
                continue
            model = onnx.load(str(out / info["path"]))
            fills = strip_random_graph(model)
            graph = f"graphs/base_{label}.{aid}.onnx"
            onnx.save(model, str(bundle / graph))
            arts[aid] = {"graph": graph, "fills": fills, "precision": info["precision"], "path": info["path"],
                         "nodes": len(model.graph.node)}
        make_bench = bench_inputs(spec)
        shapes = sorted(set(BENCH_SHAPES) | set(IOBINDING_SHAPES) | set(PREPARED_SHAPES))
        bench_file = f"inputs/bench_{label}.npz"
        save_inputs(bundle / bench_file, [(f"{b}x{s}", make_bench(b, s)) for b, s in shapes])
        checks = []
        # sequence outputs (an encoder) come back whole: fewer tokens keep the file under the device's limits
        grid = (((2, 33, "right_padding"), (2, 128, "right_padding"), (2, 128, "random")) if spec.head is None else
                ((2, 33, "right_padding"), (8, 128, "right_padding"), (8, 128, "random"), (1, 512, "right_padding")))
        for b, s, mask in grid:
            rng = np.random.default_rng([spec.seed, b, s, 7])
            if mask == "random":
                inputs = make_inputs(spec, b, s, rng, mask=random_mask(b, s, rng))
            else:
                inputs = make_inputs(spec, b, s, rng)
            checks.append((f"batch {b} x seq {s}" + (", random mask" if mask == "random" else ""), inputs))
        check_file = f"inputs/check_{label}.npz"
        save_inputs(bundle / check_file, checks)
        manifest["bench"][label] = {"build": str(out), "spec": spec.name, "artifacts": arts,
                                    "bench_inputs": bench_file, "bench_shapes": [f"{b}x{s}" for b, s in shapes],
                                    "check_inputs": check_file, "check_cases": [c for c, _ in checks]}
        log(f"bench {label} ({spec.name}): {', '.join(arts)}")
    payload.close()
    manifest["payload"] = {"file": "payload.bin", "nbytes": payload.offset}
    for name, entry in manifest["parity"].items():
        entry["sha256"] = sha256_file(payload.path, entry["payload_start"], entry["payload_end"] - entry["payload_start"])
    if args.part_mib:
        size = args.part_mib << 20
        parts = []
        with open(payload.path, "rb") as f:
            i = 0
            while True:
                block = f.read(size)
                if not block:
                    break
                part = payload_dir / f"part-{i:03d}"
                part.write_bytes(block)
                parts.append({"file": part.name, "nbytes": len(block), "sha256": hashlib.sha256(block).hexdigest()})
                i += 1
        manifest["payload"]["parts"] = parts
        log(f"payload split into {len(parts)} part(s) of at most {args.part_mib} MiB")
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    log(f"bundle {bundle}: {size / 2**20:.1f} MiB; payload {payload.path}: {payload.offset / 2**20:.1f} MiB")
    return 0


# =====================================================================================================
# device (the CUDA machine: numpy, onnx, onnxruntime-gpu; torch + transformers for the anchor)
# =====================================================================================================

def load_bertc_lite(bundle: Path):
    """bertc's TF-free modules (copied into the bundle by ``prepare``) as ``bertc.backends`` /
    ``bertc.bench``, without running ``bertc/__init__.py`` (which imports TensorFlow)."""
    import importlib
    import types

    if "bertc" not in sys.modules:
        pkg = types.ModuleType("bertc")
        pkg.__path__ = [str(bundle / "bertc_lite")]
        sys.modules["bertc"] = pkg
    return importlib.import_module("bertc.backends"), importlib.import_module("bertc.bench")


def nvidia_lib_dirs() -> list[str]:
    """The lib folders of the pip ``nvidia-*`` packages (CUDA, cuBLAS, cuDNN, ... as torch installs them)."""
    import importlib.util

    found = []
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    for base in (spec.submodule_search_locations if spec and spec.submodule_search_locations else []):
        for lib in sorted(Path(base).glob("*/lib")) + sorted(Path(base).glob("*/*/lib")):
            if any(lib.glob("*.so*")):
                found.append(str(lib))
    return found


def _ints(session) -> dict:
    import numpy as np

    ints = {"tensor(int32)": np.int32, "tensor(int64)": np.int64}
    return {i.name: ints.get(i.type) for i in session.get_inputs()}


def feeds_for(session, inputs: dict, rename: dict | None = None) -> dict:
    """``inputs`` under the session's input names (``rename``: bertc name -> the model's), cast to the
    integer type each input declares; inputs the model does not take are left out."""
    types = _ints(session)
    out = {}
    for k, v in inputs.items():
        k = (rename or {}).get(k, k)
        if k in types:
            out[k] = v.astype(types[k]) if types[k] is not None else v
    return out


def cases_of(data, count: int) -> list[dict]:
    return [{k.split(":", 1)[1]: data[k] for k in data.files if k.split(":", 1)[0] == str(i)} for i in range(count)]


class Device:
    def __init__(self, args):
        self.args = args
        self.bundle = args.bundle
        self.manifest = json.loads((self.bundle / "manifest.json").read_text())
        self.out = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = args.state
        self.state.mkdir(parents=True, exist_ok=True)
        self.work = self.state / "models"
        self.work.mkdir(exist_ok=True)
        self.result = {"argv": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "provider_under_test": EP,
                       "stages": {}}
        self.ort = None
        self.sessions, self.session_paths = {}, {}

    def save(self) -> None:
        self.result["saved"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        (self.out / "device.json").write_text(json.dumps(self.result, indent=1, default=str) + "\n")

    # --- payload ----------------------------------------------------------------------------------------
    def payload_path(self) -> Path:
        return self.args.payload if self.args.payload else self.state / "payload.bin"

    def append_parts(self) -> dict:
        """Append the parts carried so far (in order, each checked) to the state's payload.bin."""
        parts = self.manifest["payload"].get("parts", [])
        done_file = self.state / "parts_done.json"
        done = json.loads(done_file.read_text()) if done_file.exists() else []
        got = []
        if self.args.parts:
            for p in sorted(self.args.parts.glob("part-*")):
                shutil.copy2(p, self.state / p.name)
        with open(self.state / "payload.bin", "ab") as f:
            for part in parts:
                if part["file"] in done:
                    continue
                src = self.state / part["file"]
                if not src.exists():
                    break
                data = src.read_bytes()
                if hashlib.sha256(data).hexdigest() != part["sha256"]:
                    raise SystemExit(f"{part['file']}: sha256 mismatch")
                f.write(data)
                src.unlink()
                done.append(part["file"])
                got.append(part["file"])
        done_file.write_text(json.dumps(done))
        return {"appended": got, "parts_done": len(done), "parts_total": len(parts),
                "payload_bytes": os.path.getsize(self.state / "payload.bin"),
                "payload_total": self.manifest["payload"]["nbytes"]}

    def have_bytes(self, end: int) -> bool:
        path = self.payload_path()
        return path.exists() and os.path.getsize(path) >= end

    def read(self, at) -> bytes:
        offset, nbytes = at
        with open(self.payload_path(), "rb") as f:
            f.seek(offset)
            return f.read(nbytes)

    # --- onnxruntime ------------------------------------------------------------------------------------
    def setup(self) -> dict:
        """onnxruntime-gpu from the payload (or --ort-site), CUDA libraries, and a check that a session
        really runs on the provider under test."""
        if self.ort is not None:
            return self.result["stages"].get("setup", {})
        info = {"LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH")}
        site = self.args.ort_site or (self.state / "ort_site")
        member = self.manifest["members"].get("ort")
        if member and not (site / "onnxruntime" / "__init__.py").exists() and not self.args.ort_site:
            if not self.have_bytes(member["offset"] + member["nbytes"]):
                raise SystemExit("the onnxruntime archive is not complete in the payload yet")
            import io
            import tarfile

            if sha256_file(self.payload_path(), member["offset"], member["nbytes"]) != member["sha256"]:
                raise SystemExit("onnxruntime archive: sha256 mismatch")
            t0 = time.perf_counter()
            tmp = site.with_name(site.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            with tarfile.open(fileobj=io.BytesIO(self.read((member["offset"], member["nbytes"]))), mode="r:xz") as tar:
                tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            tmp.rename(site)
            info["extract_seconds"] = round(time.perf_counter() - t0, 1)
        if (site / "onnxruntime" / "__init__.py").exists():
            sys.path.insert(0, str(site))
            info["site"] = str(site)
        if EP == CUDA:
            # CUDA / cuDNN libraries: LD_LIBRARY_PATH (set by cmd_device) names the pip nvidia-* folders;
            # importing torch first loads the same libraries; onnxruntime.preload_dlls() whatever else it finds.
            try:
                import torch

                info["torch"] = torch.__version__
                info["torch_cuda"] = torch.version.cuda
            except Exception as exc:  # torch is optional
                info["torch"] = f"not importable: {exc}"
        import onnxruntime as ort

        if EP == CUDA and hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()
                info["preload_dlls"] = "ok"
            except Exception as exc:
                info["preload_dlls"] = f"{type(exc).__name__}: {exc}"
        info["onnxruntime"] = ort.__version__
        info["onnxruntime_file"] = ort.__file__
        info["device"] = ort.get_device()
        info["available_providers"] = ort.get_available_providers()
        if EP not in info["available_providers"]:
            raise SystemExit(f"{EP} not available: {info}")
        import numpy as np
        from onnx import TensorProto, helper

        g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel())])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        s = ort.InferenceSession(m.SerializeToString(), providers=[EP])
        x = np.arange(16, dtype=np.float32).reshape(4, 4)
        y = s.run(None, {"x": x})[0]
        info["probe_session_providers"] = s.get_providers()
        info["probe_provider_options"] = s.get_provider_options().get(EP)
        info["probe_ok"] = bool(np.array_equal(x, y))
        if not info["probe_ok"] or s.get_providers()[0] != EP:
            raise SystemExit(f"probe on {EP} failed: {info}")
        self.ort = ort
        self.result["stages"]["setup"] = info
        return info

    def session(self, path: Path, provider: str = None, options: dict | None = None, threads: int | None = None):
        """A plain session (bertc's settings: log level 3; ``threads``: fixed pools, spinning off)."""
        ort = self.ort
        o = ort.SessionOptions()
        o.log_severity_level = 3
        if threads:
            o.intra_op_num_threads = threads
            o.inter_op_num_threads = 1
            o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            o.add_session_config_entry("session.intra_op.allow_spinning", "0")
            o.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), o, providers=[(provider or EP, options or {})])

    # --- graphs -----------------------------------------------------------------------------------------
    def materialize(self, graph: str, fills: dict, tag: str) -> Path:
        """The bundle's stripped graph with its initializers refilled, written under the state dir."""
        import numpy as np
        import onnx

        path = self.work / f"{tag}.{Path(graph).name}"
        if path.exists():
            return path
        model = onnx.load(str(self.bundle / graph))
        for t in model.graph.initializer:
            fill = fills.get(t.name)
            if fill is None:
                continue
            dtype = np.dtype(fill["dtype"])
            if fill["kind"] == "store":
                data = self.read(fill["at"])
            elif fill["kind"] == "fp16_cast":
                value = np.frombuffer(self.read(fill["src"]), np.float32).astype(np.float16)
                index = np.frombuffer(self.read(fill["patch_index"]), np.int64)
                value[index] = np.frombuffer(self.read(fill["patch_value"]), np.float16)
                data = value.tobytes()
            elif fill["kind"] == "random":
                data = random_values(t.name, fill["shape"]).astype(dtype).tobytes()
            else:
                raise SystemExit(f"{graph}: unknown fill {fill['kind']}")
            if len(data) != int(np.prod(fill["shape"])) * dtype.itemsize:
                raise SystemExit(f"{graph}: {t.name}: {len(data)} bytes for {fill}")
            t.raw_data = data
        tmp = path.with_suffix(".partial")
        onnx.save(model, str(tmp))
        tmp.rename(path)
        return path

    def placement(self, path: Path, inputs: dict, options: dict | None = None, rename: dict | None = None) -> dict:
        """Which execution provider ran each node (ORT's profiler), in a session of its own."""
        ort = self.ort
        o = ort.SessionOptions()
        o.log_severity_level = 3
        o.enable_profiling = True
        o.profile_file_prefix = str(self.state / f"profile_{path.stem}")
        session = ort.InferenceSession(str(path), o, providers=[(EP, options or {})])
        session.run(None, feeds_for(session, inputs, rename))
        profile = Path(session.end_profiling())
        events = json.loads(profile.read_text())
        profile.unlink()
        by_provider, elsewhere, seen = {}, {}, set()
        for e in events:
            a = e.get("args", {})
            if e.get("cat") != "Node" or "provider" not in a or not e.get("name", "").endswith("_kernel_time"):
                continue
            node = e["name"][: -len("_kernel_time")]
            if node in seen:
                continue
            seen.add(node)
            by_provider[a["provider"]] = by_provider.get(a["provider"], 0) + 1
            if a["provider"] != EP:
                elsewhere[node] = a.get("op_name")
        return {"session_providers": session.get_providers(), "nodes_by_provider": by_provider,
                "nodes_not_on_provider_under_test": elsewhere}

    # --- parity -----------------------------------------------------------------------------------------
    def parity(self) -> dict:
        import numpy as np

        backends, _ = load_bertc_lite(self.bundle)
        results, outputs = {}, {}
        for name, entry in self.manifest["parity"].items():
            if not self.have_bytes(entry["payload_end"]):
                results[name] = {"skipped": "its weights are not in the payload yet"}
                continue
            if sha256_file(self.payload_path(), entry["payload_start"], entry["payload_end"] - entry["payload_start"]) \
                    != entry["sha256"]:
                results[name] = {"error": "payload sha256 mismatch"}
                continue
            cases = cases_of(np.load(self.bundle / entry["inputs"]), len(entry["cases"]))
            spec_result = {}
            for aid, art in entry["artifacts"].items():
                path = self.materialize(art["graph"], art["fills"], name)
                modes = [("default", None)]
                if art["precision"] == "fp32" and EP == CUDA:
                    modes.append(("no_tf32", {"use_tf32": "0"}))
                for mode, options in modes:
                    key = f"{aid}_cuda" + ("" if mode == "default" else f"@{mode}")
                    t0 = time.perf_counter()
                    try:
                        if options is None:  # the session bertc parity opens
                            be = backends.Backend(f"{aid}_cuda", aid, path, "onnx", art["precision"], EP)
                            session = backends.ort_session(be)
                        else:
                            session = self.session(path, options=options)
                        names = [o.name for o in session.get_outputs()]
                        for i, inputs in enumerate(cases):
                            got = session.run(names, backends.onnx_feeds(session, inputs))
                            for n, v in zip(names, got):
                                outputs[f"{name}::{key}::{i}::{n}"] = v
                        spec_result[key] = {
                            "session_providers": session.get_providers(),
                            "provider_options": session.get_provider_options().get(EP),
                            "placement": self.placement(path, cases[-1], options),
                            "seconds": round(time.perf_counter() - t0, 2)}
                        del session
                    except Exception as exc:
                        spec_result[key] = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"}
                    log(f"parity {name} {key}: {spec_result[key].get('error') or 'ok'}")
            results[name] = spec_result
        np.savez_compressed(self.out / "parity_outputs.npz", **outputs)
        return results

    # --- anchor -----------------------------------------------------------------------------------------
    def anchor_dir(self) -> Path:
        return self.state / "anchor"

    def anchor(self) -> dict:
        """Fuse the exported HF models with the installed onnxruntime (use_gpu=True), and their fp16."""
        anchor = self.anchor_dir()
        done, running = anchor / "export.done", anchor / "export.pid"
        deadline = time.time() + 900
        while not done.exists() and running.exists() and time.time() < deadline:
            try:
                os.kill(int(running.read_text()), 0)
            except (OSError, ValueError):
                break  # the background export died
            time.sleep(2)
        if not done.exists():
            log("anchor export: not done in the background; exporting now")
            if (self.state / "anchor_export.log").exists():
                log((self.state / "anchor_export.log").read_text()[-3000:])
            anchor_export(anchor)
        if (anchor / "anchor.json").exists():
            return json.loads((anchor / "anchor.json").read_text())
        from onnxruntime.transformers import optimizer
        from onnxruntime.transformers.fusion_options import FusionOptions

        made = json.loads(done.read_text())
        made["fused_by_onnxruntime"] = self.ort.__version__
        # "" = the anchor (model_type bert's default: a 1-D mask index, which assumes right padding);
        # ".rawmask" (--anchor-raw-mask) = the same fusion keeping the raw 2-D attention mask, as bertc does
        variants = [("", None)]
        if self.args.anchor_raw_mask:
            raw = FusionOptions("bert")
            raw.use_raw_attention_mask(True)
            variants.append((".rawmask", raw))
        for name in ("classifier", "encoder"):
            for suffix, options in variants:
                t0 = time.perf_counter()
                opt = optimizer.optimize_model(str(anchor / f"{name}.onnx"), model_type="bert", num_heads=12,
                                               hidden_size=768, use_gpu=True, optimization_options=options)
                opt.save_model_to_file(str(anchor / f"{name}{suffix}.opt.onnx"))
                stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
                nodes = len(opt.model.graph.node)
                opt.convert_float_to_float16(keep_io_types=True)
                opt.save_model_to_file(str(anchor / f"{name}{suffix}.opt.fp16.onnx"))
                how = ("onnxruntime.transformers.optimizer.optimize_model(model_type='bert', num_heads=12, "
                       "hidden_size=768, use_gpu=True" + (", optimization_options=FusionOptions('bert') with "
                                                          "use_raw_attention_mask(True))" if options else ")"))
                made["files"][name][f"fused{suffix}"] = {
                    "path": f"{name}{suffix}.opt.onnx", "nodes": nodes, "fusion_statistics": stats, "how": how,
                    "fp16": {"path": f"{name}{suffix}.opt.fp16.onnx", "nodes": len(opt.model.graph.node),
                             "how": "the fused model's convert_float_to_float16(keep_io_types=True)"},
                    "seconds": round(time.perf_counter() - t0, 1)}
                log(f"anchor {name}{suffix}: {nodes} fused nodes ({stats})")
        (anchor / "anchor.json").write_text(json.dumps(made, indent=1))
        return made

    # --- bench ------------------------------------------------------------------------------------------
    def bench_sessions(self) -> dict:
        """name -> (session, input renaming, info); bertc's sessions as bertc bench opens them."""
        if self.sessions:
            return self.sessions
        backends, bench = load_bertc_lite(self.bundle)
        threads = self.args.threads
        for label, entry in self.manifest["bench"].items():
            for aid in ("onnx_optimized", "onnx_fp16", "onnx"):
                art = entry["artifacts"].get(aid)
                if art is None:
                    continue
                path = self.materialize(art["graph"], art["fills"], f"base_{label}")
                be = backends.Backend(f"{label}/{aid}_cuda", aid, path, "onnx", art["precision"], EP)
                session = backends.ort_session(be, threads=threads, spinning=False)
                self.session_paths[be.name] = path
                self.sessions[be.name] = (session, None, {
                    "file": art["path"], "spec": entry["spec"], "precision": art["precision"], "nodes": art["nodes"],
                    "session_providers": session.get_providers(),
                    "provider_options": session.get_provider_options().get(EP)})
        anchor = self.anchor_dir()
        for model in ("classifier", "encoder"):
            for suffix in ("", ".rawmask"):
                for precision in ("fp32", "fp16"):
                    file = f"{model}{suffix}.opt{'.fp16' if precision == 'fp16' else ''}.onnx"
                    label = f"hf/{model}{'_rawmask' if suffix else ''}{'_fp16' if precision == 'fp16' else ''}_cuda"
                    if not (anchor / file).exists() or (suffix and not self.args.anchor_raw_mask):
                        continue
                    be = backends.Backend(label, "anchor", anchor / file, "onnx", precision, EP)
                    session = backends.ort_session(be, threads=threads, spinning=False)
                    self.session_paths[label] = anchor / file
                    self.sessions[label] = (session, HF_NAMES, {
                        "file": file, "precision": be.precision, "nodes": bench.onnx_node_count(anchor / file),
                        "session_providers": session.get_providers(),
                        "provider_options": session.get_provider_options().get(EP)})
        if self.args.bench_no_tf32 and EP == CUDA:
            # the fp32 fused graphs again, with the CUDA provider's TF32 math off (use_tf32=0)
            for name in ("classifier/onnx_optimized_cuda", "encoder/onnx_optimized_cuda", "hf/classifier_cuda", "hf/encoder_cuda"):
                if name not in self.sessions:
                    continue
                first, rename, info = self.sessions[name]
                session = self.session(self.session_paths[name], options={"use_tf32": "0"}, threads=threads)
                self.sessions[f"{name}@no_tf32"] = (session, rename, {
                    **info, "session_providers": session.get_providers(),
                    "provider_options": session.get_provider_options().get(EP)})
        return self.sessions

    def _target(self, bench, name, session, rename, iobinding):
        ort = self.ort
        outputs = [o.name for o in session.get_outputs()]
        device = "cuda" if EP == CUDA else "cpu"

        def prepare(inputs):
            feeds = feeds_for(session, inputs, rename)
            if not iobinding:
                return lambda: session.run(None, feeds)
            binding = session.io_binding()
            keep = [ort.OrtValue.ortvalue_from_numpy(v, device, 0) for v in feeds.values()]
            for k, value in zip(feeds, keep):
                binding.bind_ortvalue_input(k, value)
            for o in outputs:
                binding.bind_output(o, device, 0)

            def call():
                session.run_with_iobinding(binding)
                binding.synchronize_outputs()
                return keep

            return call

        return bench.Target(name, prepare, {})

    def bench(self) -> dict:
        import numpy as np

        _, bench = load_bertc_lite(self.bundle)
        entry = next(iter(self.manifest["bench"].values()))
        data = np.load(self.bundle / entry["bench_inputs"])

        unknown = [f"{b}x{s}" for b, s in (self.args.shapes or []) + (self.args.iobinding_shapes or [])
                   if f"{b}x{s}" not in entry["bench_shapes"]]
        if unknown:
            raise SystemExit(f"no bench inputs for {unknown}: the bundle has {entry['bench_shapes']}")

        def inputs_for(b, s):
            prefix = str(entry["bench_shapes"].index(f"{b}x{s}"))
            return {k.split(":", 1)[1]: data[k] for k in data.files if k.split(":", 1)[0] == prefix}

        sessions = self.bench_sessions()
        out = {"settings": {"rounds": self.args.rounds, "calls": self.args.calls, "warmup": self.args.warmup,
                            "threads": self.args.threads, "ort_spinning": False, "interleaved": True,
                            "inputs": f"bertc.bench.bench_inputs of {entry['spec']} (full rows, no padding)",
                            "timing_core": "bertc.bench.time_targets (the bundle's copy of bertc/bench.py)",
                            "ratio": "median over rounds of per-round p50 ratios (bertc.bench.round_ratio)"},
               "targets": {k: v[2] for k, v in sessions.items()}}
        shapes_by_mode = {"numpy": self.args.shapes or BENCH_SHAPES, "iobinding": self.args.iobinding_shapes or IOBINDING_SHAPES}
        for mode, shapes in shapes_by_mode.items():
            targets = [self._target(bench, k, s, rename, mode == "iobinding") for k, (s, rename, _) in sessions.items()]
            log(f"bench ({mode} IO): {len(targets)} targets at {shapes}")
            t0 = time.perf_counter()
            rows = bench.time_targets(targets, shapes, inputs_for, self.args.rounds, self.args.warmup,
                                      self.args.calls, baseline="hf/classifier_cuda", progress=log)
            out[mode] = {"shapes": [list(s) for s in shapes], "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
            self.result["stages"]["bench"] = out
            self.save()
        return out

    def placements(self) -> dict:
        """Node placement of every bench model (a session of its own with the profiler on)."""
        import numpy as np

        out = {}
        entry = next(iter(self.manifest["bench"].values()))
        data = np.load(self.bundle / entry["bench_inputs"])
        inputs = {k.split(":", 1)[1]: data[k] for k in data.files if k.split(":", 1)[0] == "0"}
        for label, entry in self.manifest["bench"].items():
            for aid, art in entry["artifacts"].items():
                path = self.materialize(art["graph"], art["fills"], f"base_{label}")
                out[f"{label}/{aid}_cuda"] = self.placement(path, inputs)
        for path in sorted(self.anchor_dir().glob("*.opt*.onnx")):
            file = path.name
            if path.exists():
                out[f"hf/{file}"] = self.placement(path, inputs, rename=HF_NAMES)
        return out

    # --- BERT-base CPU vs CUDA --------------------------------------------------------------------------
    def basecheck(self) -> dict:
        """BERT-base graphs (random weights) on CUDA against the same fp32 graph on ORT's CPU provider."""
        import numpy as np

        backends, _ = load_bertc_lite(self.bundle)
        self.sessions.clear()  # the bench's sessions are not needed any more
        out, arrays = {}, {}
        for label, entry in self.manifest["bench"].items():
            cases = cases_of(np.load(self.bundle / entry["check_inputs"]), len(entry["check_cases"]))
            # (artifact, provider, provider options, key): the CPU runs are the reference
            runs = [("onnx_optimized", CPU, None, "onnx_optimized_cpu"), ("onnx_optimized", EP, None, "onnx_optimized_cuda"),
                    ("onnx_fp16", EP, None, "onnx_fp16_cuda"), ("onnx", CPU, None, "onnx_cpu"), ("onnx", EP, None, "onnx_cuda")]
            if EP == CUDA:
                runs.insert(2, ("onnx_optimized", CUDA, {"use_tf32": "0"}, "onnx_optimized_cuda@no_tf32"))
            info = {}
            for aid, provider, options, key in runs:
                art = entry["artifacts"].get(aid)
                if art is None:
                    continue
                path = self.materialize(art["graph"], art["fills"], f"base_{label}")
                session = self.session(path, provider, options)
                names = [x.name for x in session.get_outputs()]
                for i, inputs in enumerate(cases):
                    for n, v in zip(names, session.run(names, backends.onnx_feeds(session, inputs))):
                        arrays[f"{label}::{key}::{i}::{n}"] = v
                info[key] = {"session_providers": session.get_providers(),
                             "provider_options": session.get_provider_options().get(provider)}
                log(f"basecheck {label} {key}: done")
                del session
            out[label] = info
            np.savez_compressed(self.out / f"basecheck_{label}.npz", **arrays)
            arrays.clear()
        return out


def anchor_export(anchor: Path, seed: int = 0) -> None:
    """Export HF BertForSequenceClassification and BertModel (bert-base config, random init) with
    tools/hf_anchor.py's export (torch.onnx.export, TorchScript exporter, opset 17)."""
    import importlib.util

    import torch
    import transformers

    spec = importlib.util.spec_from_file_location("hf_anchor", ROOT / "tools" / "hf_anchor.py")
    hf_anchor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hf_anchor)
    anchor.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    layers = int(os.environ.get("CUDA_CHECK_ANCHOR_LAYERS", "12"))  # fewer only to rehearse the pipeline
    config = transformers.BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=layers, num_attention_heads=12,
                                     intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
                                     num_labels=2, attn_implementation="eager")  # the attention pattern ORT fuses
    made = {"config": f"bert-base-uncased (random init, seed {seed})" + (f", {layers} layers" if layers != 12 else ""),
            "torch": torch.__version__, "transformers": transformers.__version__, "files": {}}
    for name, cls, outputs in (("classifier", transformers.BertForSequenceClassification, ["logits"]),
                               ("encoder", transformers.BertModel, ["last_hidden_state", "pooler_output"])):
        t0 = time.perf_counter()
        model = cls(config).eval()
        hf_anchor.export(model, anchor / f"{name}.onnx", outputs)
        counted = hf_anchor.node_counts(anchor / f"{name}.onnx")
        made["files"][name] = {"outputs": outputs, "export": {"path": f"{name}.onnx", "nodes": counted["nodes"],
                                                              "seconds": round(time.perf_counter() - t0, 1),
                                                              "how": "tools/hf_anchor.py export(): torch.onnx.export "
                                                                     "opset 17, dynamo=False, int64 inputs"}}
        log(f"anchor export {name}: {time.perf_counter() - t0:.1f}s")
        del model
    (anchor / "export.done").write_text(json.dumps(made))


def machine() -> dict:
    import platform

    info = {"cpus": os.cpu_count(),
            "platform": f"{platform.system()} {platform.release()} {platform.machine()}, Python {platform.python_version()}",
            "python": sys.executable}
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    except Exception as exc:
        info["nvidia_smi"] = f"not available: {exc}"
    try:
        import numpy
        import onnx

        info["numpy"], info["onnx"] = numpy.__version__, onnx.__version__
    except Exception as exc:
        info["import_error"] = str(exc)
    return info


NEEDS_ORT = {"setup", "anchor", "bench", "placements", "basecheck", "parity"}


def cmd_device(args) -> int:
    global EP
    if args.dry_run_cpu:
        EP = CPU
    stages = [s for s in args.stages.split(",") if s]
    if stages == ["anchor-export"]:  # the background job
        anchor_export(args.state / "anchor")
        return 0
    if EP == CUDA and NEEDS_ORT & set(stages) and not os.environ.get("CUDA_CHECK_REEXEC"):
        # dlopen reads LD_LIBRARY_PATH at process start: name the pip nvidia-* lib folders, then start again
        dirs = nvidia_lib_dirs()
        if dirs:
            env = {**os.environ, "CUDA_CHECK_REEXEC": "1",
                   "LD_LIBRARY_PATH": ":".join(dirs + [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p])}
            os.execve(sys.executable, [sys.executable, *sys.argv], env)
    dev = Device(args)
    dev.result["machine"] = machine()
    dev.save()
    failed = False
    if args.parts or "append" in stages:
        dev.result["stages"]["append"] = dev.append_parts()
        log(f"payload: {dev.result['stages']['append']}")
        dev.save()
    for stage in stages:
        if stage == "append":
            continue
        t0 = time.perf_counter()
        log(f"== stage {stage}")
        try:
            if stage in NEEDS_ORT:
                dev.setup()
            if stage == "anchor-export-bg":
                anchor = args.state / "anchor"
                anchor.mkdir(parents=True, exist_ok=True)
                logf = open(args.state / "anchor_export.log", "w")
                cmd = [sys.executable, str(Path(__file__).resolve()), "device", "--bundle", str(args.bundle),
                       "--out", str(args.state / "bg_out"), "--state", str(args.state), "--stages", "anchor-export"]
                proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, start_new_session=True)
                (anchor / "export.pid").write_text(str(proc.pid))
                value = {"started": shlex.join(cmd), "pid": proc.pid}
            elif stage == "setup":
                value = dev.result["stages"]["setup"]
            elif stage == "anchor":
                value = dev.anchor()
            elif stage == "bench":
                value = dev.bench()
            elif stage == "placements":
                value = dev.placements()
            elif stage == "basecheck":
                value = dev.basecheck()
            elif stage == "parity":
                value = dev.parity()
            else:
                raise SystemExit(f"unknown stage {stage}")
            dev.result["stages"][stage] = value
        except (Exception, SystemExit) as exc:
            import traceback

            failed = True
            dev.result["stages"][stage] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            log(traceback.format_exc())
            if stage == "setup" or dev.ort is None and stage in NEEDS_ORT:
                dev.save()
                return 1
        dev.result.setdefault("stage_seconds", {})[stage] = round(time.perf_counter() - t0, 1)
        log(f"== stage {stage}: {time.perf_counter() - t0:.1f}s")
        dev.save()
    return 1 if failed else 0

# =====================================================================================================
# report (here, bertc's environment)
# =====================================================================================================

def _load_npz(dirs: list[Path], name: str) -> dict:
    import numpy as np

    merged = {}
    for d in dirs:
        if (d / name).exists():
            with np.load(d / name) as data:
                merged.update({k: data[k] for k in data.files})
    return merged


def _device_json(dirs: list[Path]) -> list[dict]:
    return [json.loads((d / "device.json").read_text()) for d in dirs if (d / "device.json").exists()]


def cmd_report(args) -> int:
    import numpy as np

    from bertc.backends import Backend, keras_runner
    from bertc.bench import round_ratio
    from bertc.parity import argmax_matches, compare, grid_cases, row_cosines
    from bertc.signature import signature_of
    from bertc.spec import load_spec
    from bertc.transfer import load_keras_model

    manifest = json.loads((args.bundle / "manifest.json").read_text())
    devices = _device_json(args.device_results)
    setup = next((d["stages"]["setup"] for d in reversed(devices) if "error" not in d["stages"].get("setup", {"error": 1})), {})
    machine_info = next((d["machine"] for d in reversed(devices) if "machine" in d), {})
    common = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": machine_info.get("nvidia_smi"),
              "machine": machine_info, "onnxruntime": setup.get("onnxruntime"),
              "onnxruntime_device": setup.get("device"), "available_providers": setup.get("available_providers"),
              "cuda_provider_options": setup.get("probe_provider_options"), "torch": setup.get("torch"),
              "commands": {"prepare": manifest["command"], "device": args.device_command or [d["argv"] for d in devices],
                           "report": shlex.join([sys.executable, *sys.argv])},
              "bertc_sources_at_prepare": manifest["bertc_sources"], "bertc_lite_modules": manifest["bertc_lite"]}

    # --- parity -------------------------------------------------------------------------------------
    outputs = _load_npz(args.device_results, "parity_outputs.npz")
    parity_stage = {}
    for d in devices:
        for name, value in (d["stages"].get("parity") or {}).items():
            if isinstance(value, dict) and "skipped" not in value:
                parity_stage[name] = value
    specs_out, failures = {}, []
    for name, entry in manifest["parity"].items():
        if name not in parity_stage:
            specs_out[name] = {"status": "not run on the device"}
            failures.append(f"{name}: not run on the device")
            continue
        build = Path(entry["build"])
        spec = load_spec(build / "spec.json")
        sig = signature_of(spec)
        cases = grid_cases(spec)
        same = [c.to_json() | {"inputs_sha1": inputs_hash(c.inputs)} for c in cases] == entry["cases"]
        if not same:
            raise SystemExit(f"{name}: bertc's parity grid changed since prepare; prepare again")
        model = load_keras_model(build)
        keras = keras_runner(model)
        ref_cache = {}

        def reference(inputs, _keras=keras, _cache=ref_cache):
            key = inputs_hash(inputs)
            if key not in _cache:
                _cache[key] = _keras(inputs)
            return _cache[key]

        index = {inputs_hash(c.inputs): i for i, c in enumerate(cases)}
        device = parity_stage[name]
        sections = {}
        for mode in ("default", "no_tf32"):
            backends, runners = [], {}
            for aid, art in entry["artifacts"].items():
                key = f"{aid}_cuda" + ("" if mode == "default" else f"@{mode}")
                if key not in device:
                    continue
                b = Backend(f"{aid}_cuda", aid, build / art["path"], "onnx", art["precision"], CUDA)
                backends.append(b)
                if "error" in device[key]:
                    continue

                def run(inputs, _key=key):
                    i = index[inputs_hash(inputs)]
                    prefix = f"{name}::{_key}::{i}::"
                    return {k[len(prefix):]: v for k, v in outputs.items() if k.startswith(prefix)}

                runners[b.name] = run
            if not backends:
                continue
            results = compare(spec, sig, reference, backends, runners, cases)
            for r in results:
                key = f"{r.backend}" + ("" if mode == "default" else f"@{mode}")
                if "error" in device.get(key, {}):
                    r.problems.append(f"failed on the device: {device[key]['error']}")
            sections[mode] = {
                "provider_options": "bertc's (ONNX Runtime defaults)" if mode == "default" else {"use_tf32": "0"},
                "passed": all(r.passed for r in results),
                "results": [r.to_json() for r in results],
                "device": {k: v for k, v in device.items() if (k.endswith("_cuda") if mode == "default" else k.endswith(f"@{mode}"))},
            }
            if mode == "default":
                for r in results:
                    failures += [f"{name} / {r.backend} / {r.output}: {p}" for p in r.problems]
        specs_out[name] = {"build": str(build), "cases": len(cases), "grid": [c.to_json() for c in cases],
                           "artifacts": {a: {"path": v["path"], "precision": v["precision"], "sha256": v["sha256"]}
                                         for a, v in entry["artifacts"].items()},
                           "missing_artifacts": entry["missing_artifacts"], **sections}
        del model
    summary = {}
    for name, spec_out in specs_out.items():
        for mode in ("default", "no_tf32"):
            for r in (spec_out.get(mode) or {}).get("results", []):
                figure = {"passed": r["passed"], "criterion": r["criterion"], "max_abs": r["max_abs"], "worst_case": r["worst_case"]}
                if r["criterion"] == "task":
                    figure.update(argmax_agreement=r["argmax_agreement"], argmax_count=r["argmax_count"],
                                  argmax_near_ties=r["argmax_near_ties"], min_cosine=r["min_cosine"])
                summary.setdefault(mode, {}).setdefault(name, {}).setdefault(r["backend"], {})[r["output"]] = figure
    failures_no_tf32 = [f"{name} / {b} / {o}" for name, by in summary.get("no_tf32", {}).items()
                        for b, outs in by.items() for o, f in outs.items() if not f["passed"]]
    notes = []
    fp32_failed = sorted({f.split(" / ")[1] for f in failures if " / " in f and "fp16" not in f.split(" / ")[1]})
    if fp32_failed and summary.get("no_tf32") and not failures_no_tf32:
        worst = max(f["max_abs"] for by in summary["default"].values() for b, outs in by.items() if "fp16" not in b
                    for f in outs.values())
        worst_off = max(f["max_abs"] for by in summary["no_tf32"].values() for outs in by.values() for f in outs.values())
        notes.append(f"fp32 artifacts ({', '.join(fp32_failed)}) fail atol on the CUDA provider's default options "
                     f"(use_tf32=1: TF32 matmuls; worst max abs {worst:.3g}) and pass with use_tf32=0 (worst {worst_off:.3g})")
    parity_json = {**common, "notes": notes, "summary": summary, "failures_no_tf32": failures_no_tf32, "what": "bertc parity (bertc.parity.compare, the spec's grid and criteria) of each build's "
                   "ONNX artifacts on ONNX Runtime's CUDA provider against the build's Keras model; the CUDA outputs "
                   "were computed on the device and replayed here. 'default' = the session bertc parity opens "
                   "(bertc.backends.ort_session, providers=[CUDAExecutionProvider], default provider options); "
                   "'no_tf32' = the same with the CUDA provider option use_tf32=0 (fp32 artifacts only).",
                   "passed": not failures, "failures": failures, "specs": specs_out}

    # --- BERT-base CPU vs CUDA -----------------------------------------------------------------------
    basecheck = {}
    for label, entry in manifest["bench"].items():
        base_arrays = _load_npz(args.device_results, f"basecheck_{label}.npz")
        spec = load_spec(Path(entry["build"]) / "spec.json")
        sig = signature_of(spec)
        data = np.load(args.bundle / entry["check_inputs"])
        masks = [data[f"{i}:input_mask"] for i in range(len(entry["check_cases"]))]
        keys = sorted({k.split("::")[1] for k in base_arrays if k.startswith(f"{label}::")})
        rows = []
        for ref_key, have_key in (("onnx_optimized_cpu", "onnx_optimized_cuda"), ("onnx_optimized_cpu", "onnx_optimized_cuda@no_tf32"),
                                  ("onnx_optimized_cpu", "onnx_fp16_cuda"), ("onnx_cpu", "onnx_cuda")):
            if ref_key not in keys or have_key not in keys:
                continue
            for o in sig.outputs:
                max_abs, max_ref, cos_min, agree, n, ties, worst = 0.0, 0.0, None, 0, 0, 0, ""
                for i, case in enumerate(entry["check_cases"]):
                    want = base_arrays[f"{label}::{ref_key}::{i}::{o.name}"]
                    have = base_arrays[f"{label}::{have_key}::{i}::{o.name}"]
                    diff = float(np.abs(have.astype(np.float64) - want).max())
                    if diff >= max_abs:
                        max_abs, worst = diff, case
                    max_ref = max(max_ref, float(np.abs(want).max()))
                    cos = row_cosines(have, want, o, masks[i])
                    cos_min = float(cos.min()) if cos_min is None else min(cos_min, float(cos.min()))
                    if o.kind in ("logits", "log_probs"):
                        a, c, t = argmax_matches(have, want, o, masks[i], spec.parity.task.argmax_tie_fraction)
                        agree, n, ties = agree + a, n + c, ties + t
                rows.append({"reference": ref_key, "backend": have_key, "output": o.name, "max_abs": max_abs,
                             "worst_case": worst, "max_abs_reference": max_ref, "min_row_cosine": cos_min,
                             "argmax_agreement": (agree / n) if n else None, "argmax_count": [agree, n] if n else None,
                             "argmax_near_ties": ties if n else None})
        basecheck[label] = {"spec": entry["spec"], "cases": entry["check_cases"], "rows": rows,
                            "device": next((d["stages"]["basecheck"][label] for d in devices
                                            if isinstance(d["stages"].get("basecheck"), dict) and label in d["stages"]["basecheck"]), None)}

    # --- bench --------------------------------------------------------------------------------------
    pairs = []
    for m in ("classifier", "encoder"):
        pairs += [(f"{m}/onnx_optimized_cuda", f"hf/{m}_cuda"), (f"{m}/onnx_fp16_cuda", f"hf/{m}_fp16_cuda"),
                  (f"{m}/onnx_cuda", f"hf/{m}_cuda"), (f"{m}/onnx_fp16_cuda", f"{m}/onnx_optimized_cuda"),
                  (f"hf/{m}_fp16_cuda", f"hf/{m}_cuda"),
                  # --bench-no-tf32: the fp32 fused graphs with TF32 off
                  (f"{m}/onnx_optimized_cuda@no_tf32", f"hf/{m}_cuda@no_tf32"),
                  (f"{m}/onnx_optimized_cuda@no_tf32", f"{m}/onnx_optimized_cuda"), (f"hf/{m}_cuda@no_tf32", f"hf/{m}_cuda"),
                  # --anchor-raw-mask: the anchor fused with the raw 2-D attention mask, as bertc's graphs take it
                  (f"{m}/onnx_optimized_cuda", f"hf/{m}_rawmask_cuda"), (f"{m}/onnx_fp16_cuda", f"hf/{m}_rawmask_fp16_cuda"),
                  (f"hf/{m}_rawmask_cuda", f"hf/{m}_cuda"), (f"hf/{m}_rawmask_fp16_cuda", f"hf/{m}_fp16_cuda")]
    runs = []
    for d in devices:
        stage = d["stages"].get("bench")
        if not isinstance(stage, dict) or "numpy" not in stage:
            continue
        ratios = {}
        for mode in ("numpy", "iobinding"):
            rows = (stage.get(mode) or {}).get("rows", [])
            shapes = sorted({(r["batch"], r["sequence_length"]) for r in rows})
            ratios[mode] = [{"target": t, "baseline": b, "batch": bb, "sequence_length": ss, "ratio": v}
                            for t, b in pairs for bb, ss in shapes
                            if (v := round_ratio(rows, t, b, bb, ss)) is not None]
        anchor = d["stages"].get("anchor")
        runs.append({"device_command": d["argv"], "started": d["started"], "settings": stage.get("settings"),
                     "targets": stage.get("targets"), "anchor": anchor if isinstance(anchor, dict) and "files" in anchor else None,
                     "node_placement": d["stages"].get("placements"), "ratios": ratios,
                     "results": {m: (stage.get(m) or {}).get("rows") for m in ("numpy", "iobinding")},
                     "seconds": {m: (stage.get(m) or {}).get("seconds") for m in ("numpy", "iobinding")}})
    bench_json = {**common, "what": "CUDA latency of bertc's BERT-base artifacts against the Hugging Face fused anchor "
                  "(ONNX Runtime CUDA provider). bertc's graphs hold RANDOM weights of the right shapes (normal, std "
                  f"{RANDOM_STD}; the fp16 graph the fp16 cast of the same values; biases, layer-norm parameters and "
                  "constants as built); the anchor holds transformers' random init. ratio = median over rounds of the "
                  "per-round p50 ratio (bertc.bench.round_ratio); 'numpy' = inputs and outputs as numpy arrays through "
                  "session.run (what bertc bench does), 'iobinding' = inputs bound on the GPU once, outputs left on the GPU. "
                  "Each entry of 'runs' is one device process (its own sessions, interleaved timing of all its targets).",
                  "runs": runs, "bert_base_cpu_vs_cuda": basecheck,
                  "stage_seconds": [d.get("stage_seconds") for d in devices]}
    results_dir = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "cuda_parity.json").write_text(json.dumps(parity_json, indent=1, default=str) + "\n")
    (results_dir / "cuda_bench.json").write_text(json.dumps(bench_json, indent=1, default=str) + "\n")
    print_summary(parity_json, bench_json)
    return 0


def print_summary(parity: dict, bench: dict) -> None:
    print(f"device: {parity['device']}; onnxruntime {parity['onnxruntime']}")
    print("\n| spec | backend | output | criterion | figure | passed |\n| --- | --- | --- | --- | --- | --- |")
    for name, s in parity["specs"].items():
        for r in (s.get("default") or {}).get("results", []):
            if r["criterion"] == "tolerance":
                fig = f"max abs {r['max_abs']:.2e} (atol {r['atol']:g})"
            else:
                parts = [f"max abs {r['max_abs']:.2e}"]
                if r["argmax_agreement"] is not None:
                    parts.append(f"argmax {r['argmax_agreement'] * 100:.1f}% {r['argmax_count']} ties {r['argmax_near_ties']}")
                if r["min_cosine"] is not None:
                    parts.append(f"min cos {r['min_cosine']:.5f}")
                fig = ", ".join(parts)
            print(f"| {name} | {r['backend']} | {r['output']} | {r['criterion']} | {fig} | {r['passed']} |")
    for f in parity["failures"]:
        print(f"FAIL {f}")
    for i, run in enumerate(bench.get("runs", [])):
        for mode, rows in run["ratios"].items():
            print(f"\nrun {i + 1}, ratios ({mode} IO):")
            for r in rows:
                print(f"  {r['target']:<40} / {r['baseline']:<36} B{r['batch']} S{r['sequence_length']}: {r['ratio']:.3f}")


# =====================================================================================================

def _shapes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in item.split("x")) for item in text.split(",") if item]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="here: bundle + payload from bertc builds")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--payload", type=Path, required=True, help="directory for payload.bin (and its parts)")
    p.add_argument("--parity-build", type=Path, action="append", default=[])
    p.add_argument("--bench-build", action="append", default=[], help="LABEL=OUT (classifier=..., encoder=...)")
    p.add_argument("--ort-archive", type=Path, help="a .tar.xz of an onnxruntime-gpu package tree (onnxruntime/...)")
    p.add_argument("--part-mib", type=int, default=0, help="also split the payload into parts of this size")
    d = sub.add_parser("device", help="on the CUDA machine")
    d.add_argument("--bundle", type=Path, required=True)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--state", type=Path, default=Path("/tmp/cuda_check"))
    d.add_argument("--payload", type=Path, help="the whole payload.bin (instead of --parts)")
    d.add_argument("--parts", type=Path, help="a directory with this call's part-NNN files")
    d.add_argument("--ort-site", type=Path, help="a directory holding an onnxruntime-gpu package to import")
    d.add_argument("--stages", default="setup,anchor,bench,placements,basecheck,parity")
    d.add_argument("--rounds", type=int, default=10)
    d.add_argument("--calls", type=int, default=20)
    d.add_argument("--warmup", type=int, default=10)
    d.add_argument("--threads", type=int, default=2, help="intra-op threads of the bench sessions (bertc bench's default)")
    d.add_argument("--shapes", type=_shapes, help="numpy-IO bench shapes, e.g. 1x32,8x128 (default: %s)"
                   % ",".join(f"{b}x{s}" for b, s in BENCH_SHAPES))
    d.add_argument("--iobinding-shapes", type=_shapes, help="IOBinding bench shapes (default: %s)"
                   % ",".join(f"{b}x{s}" for b, s in IOBINDING_SHAPES))
    d.add_argument("--anchor-raw-mask", action="store_true",
                   help="also fuse the anchor keeping the raw 2-D attention mask (as bertc's Attention takes it) and time it")
    d.add_argument("--bench-no-tf32", action="store_true",
                   help="also time the fp32 fused graphs (bertc's and the anchor's) with the CUDA option use_tf32=0")
    d.add_argument("--dry-run-cpu", action="store_true",
                   help="rehearse the whole pipeline on the CPU provider (no GPU); its figures mean nothing")
    r = sub.add_parser("report", help="here: bertc's parity criteria on the device's outputs; results JSON")
    r.add_argument("--bundle", type=Path, required=True)
    r.add_argument("--device-results", type=Path, nargs="+", required=True)
    r.add_argument("--device-command", action="append", help="the exact command(s) run on the device, to record")
    r.add_argument("--results-dir", type=Path, default=ROOT / "tools" / "results",
                   help="where cuda_parity.json and cuda_bench.json go")
    args = parser.parse_args()
    if args.command in ("prepare", "report"):
        sys.path.insert(0, str(ROOT))
        import bertc  # noqa: F401 - registers the components
    if args.command == "prepare":
        return cmd_prepare(args)
    if args.command == "device":
        return cmd_device(args)
    return cmd_report(args)


if __name__ == "__main__":
    sys.exit(main())
