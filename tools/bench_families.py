#!/usr/bin/env python3
"""Issue 16's benchmark: bertc's imported RoBERTa, DistilBERT, ELECTRA and MPNet classifiers at BERT-base size
against what a user of each would otherwise deploy.

    python tools/bench_families.py [FAMILY ...] [--work DIR] [--rebuild] [--rounds 10] [--calls 10] [--threads 2]

For each family (default all: roberta distilbert electra mpnet):
1. In the side environment with torch + transformers (``--hf-python``; this file's ``anchor`` mode), a
   random-init ``<Family>ForSequenceClassification`` of the base model's size (roberta-base,
   distilbert-base-uncased, google/electra-base-discriminator, microsoft/mpnet-base configurations; 2 labels)
   is saved with ``save_pretrained``, exported by ``torch.onnx.export`` (TorchScript exporter, opset 17,
   ``attn_implementation="eager"``, dynamic batch and sequence, the inputs the family's forward takes),
   fused by ``onnxruntime.transformers.optimizer`` with ``model_type="bert"`` (what Optimum does for all of
   them), and ORT dynamic int8 of the fused graph: the anchor.
2. ``bertc import`` of the saved checkpoint and ``bertc build`` (ONNX portable, optimized and int8; parity on).
3. bertc's ``model.onnx``, ``model.optimized.onnx``, ``model.optimized.int8.onnx`` and the anchor's fused fp32
   and int8 graphs timed interleaved in this one process (bertc.bench's timing core: batch 1 x sequence 128
   and 32, fixed intra-op threads, spinning off, median of per-round ratios).
Prints and writes tools/results/bench_families.json: ratios, both sides' node counts and fusion statistics
(the anchor's ``get_fused_operator_statistics``, bertc's report ``fusion``), the issue's targets
(optimized <= 0.95 of the anchor, MPNet <= 0.85; int8 <= the anchor's int8), and the exact command.

    python tools/bench_families.py fidelity [FIXTURE ...]

imports and builds every family fixture of tests/fixtures/hf (tools/make_hf_family_fixtures.py; default all)
through the whole pipeline (parity included) and compares each artifact with transformers' reference outputs:
max abs diff per backend and output (fp32), and for int8 the max abs diff, argmax agreement and cosine;
writes tools/results/bench_families_fidelity.json.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("roberta", "distilbert", "electra", "mpnet")
SHAPES = [(1, 128), (1, 32)]
BOUNDS = {"roberta": 0.95, "distilbert": 0.95, "electra": 0.95, "mpnet": 0.85}
BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
# the base checkpoints' configurations (random init), 2 labels
CONFIGS = {
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification",
                dict(BASE, vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                     bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)),
    "distilbert": ("DistilBertConfig", "DistilBertForSequenceClassification",
                   dict(vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072, max_position_embeddings=512)),
    "electra": ("ElectraConfig", "ElectraForSequenceClassification",
                dict(BASE, vocab_size=30522, embedding_size=768, max_position_embeddings=512, type_vocab_size=2)),
    "mpnet": ("MPNetConfig", "MPNetForSequenceClassification",
              dict(BASE, vocab_size=30527, max_position_embeddings=514, pad_token_id=1, layer_norm_eps=1e-5,
                   relative_attention_num_buckets=32)),
}
TYPES = {"roberta": False, "distilbert": False, "electra": True, "mpnet": False}   # the anchor's token_type_ids


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- anchor mode (side environment: torch + transformers + onnxruntime; bertc is not imported) ----------

def node_counts(path: Path) -> dict:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    ops = collections.Counter((f"{n.domain}." if n.domain else "") + n.op_type for n in graph.node)
    return {"nodes": len(graph.node), "op_types": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))}


def make_anchor(family: str, out: Path, seed: int) -> int:
    import onnx
    import onnxruntime
    import torch
    import transformers
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    config_name, arch, config = CONFIGS[family]
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = getattr(transformers, config_name)(**config, num_labels=2, attn_implementation="eager")
    model = getattr(transformers, arch)(cfg).eval()
    model.save_pretrained(out / "hf", safe_serialization=True)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if TYPES[family] else [])

    class ByName(torch.nn.Module):   # keywords: transformers 5's positional order is not (ids, mask, types)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(names, args)), return_dict=True)["logits"]

    ids = torch.full((1, 16), 5, dtype=torch.long)
    args = tuple(torch.ones_like(ids) if n == "attention_mask" else (ids if n == "input_ids" else torch.zeros_like(ids))
                 for n in names)
    raw, fused, int8 = (out / f"anchor{s}.onnx" for s in ("", ".opt", ".opt.int8"))
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(ByName(model), args, str(raw), input_names=names, output_names=["logits"],
                          dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}},
                          opset_version=17, do_constant_folding=True, dynamo=False)
    t1 = time.perf_counter()
    opt = optimizer.optimize_model(str(raw), model_type="bert", num_heads=12, hidden_size=768)
    opt.save_model_to_file(str(fused))
    t2 = time.perf_counter()
    quantize_dynamic(str(fused), str(int8), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    made = {"family": family, "architecture": arch, "config": config, "seed": seed, "inputs": names,
            "torch": torch.__version__, "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__,
            "export": {"path": raw.name, "seconds": round(t1 - t0, 1), **node_counts(raw)},
            "fused": {"path": fused.name, "seconds": round(t2 - t1, 1), **node_counts(fused),
                      "fusion_statistics": {k: v for k, v in opt.get_fused_operator_statistics().items() if v}},
            "int8": {"path": int8.name, **node_counts(int8)}}
    (out / "anchor.json").write_text(json.dumps(made, indent=2) + "\n")
    log(f"{family} anchor: {made['export']['nodes']} nodes exported, {made['fused']['nodes']} fused "
        f"({made['fused']['fusion_statistics']})")
    return 0


# --- bench mode (bertc's environment) -------------------------------------------------------------------

def run(cmd: list[str], what: str) -> None:
    log(f"$ {shlex.join(cmd)}")
    t0 = time.perf_counter()
    proc = subprocess.run(["nice", *cmd], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}")
    log(f"  {what}: {time.perf_counter() - t0:.0f}s")


def ensure(family: str, work: Path, hf_python: str, rebuild: bool) -> tuple[Path, Path]:
    """(the anchor directory, bertc's build) of ``family``, made when missing."""
    anchor = work / family
    if rebuild or not (anchor / "anchor.json").exists():
        run([hf_python, str(Path(__file__).resolve()), "anchor", family, str(anchor)], f"{family} anchor")
    out = work / family / "bertc"
    if rebuild or not (out / "report.json").exists() or json.loads((out / "report.json").read_text()).get("status") != "passed":
        spec = work / family / "spec.json"
        run([sys.executable, "-m", "bertc.cli", "import", str(anchor / "hf"), "-o", str(spec), "--force"],
            f"bertc import {family}")
        data = json.loads(spec.read_text())
        data["export"] = {**data.get("export", {}), "tflite": False, "variants": ["onnx_int8"]}
        spec.write_text(json.dumps(data, indent=2) + "\n")
        run([sys.executable, "-m", "bertc.cli", "build", str(spec), "-o", str(out), "--force"], f"bertc build {family}")
    return anchor, out


def anchor_targets(anchor: Path, threads: int) -> list:
    """The anchor's fused fp32 and int8 graphs, fed bertc's inputs under HF's names (int64, as exported)."""
    from bertc.backends import CPU, Backend, onnx_feeds, ort_session
    from bertc.bench import Target, onnx_node_count

    names = {"input_word_ids": "input_ids", "input_mask": "attention_mask", "input_type_ids": "token_type_ids"}
    targets = []
    for label, file in (("anchor", "anchor.opt.onnx"), ("anchor_int8", "anchor.opt.int8.onnx")):
        backend = Backend(label, "anchor", anchor / file, "onnx", "int8" if "int8" in file else "fp32", CPU)
        session = ort_session(backend, threads=threads, spinning=False)
        wanted = {i.name for i in session.get_inputs()}

        def prepare(inputs, session=session, wanted=wanted):
            feeds = onnx_feeds(session, {names[k]: v for k, v in inputs.items() if names.get(k) in wanted})
            return lambda: session.run(None, feeds)

        targets.append(Target(label, prepare, {**backend.to_json(), "nodes": onnx_node_count(anchor / file)}))
    return targets


def bench_family(family: str, anchor: Path, out: Path, args) -> dict:
    from bertc.bench import artifact_targets, bench_inputs, round_ratio, time_targets
    from bertc.spec import load_spec

    report = json.loads((out / "report.json").read_text())
    artifacts = {k: v for k, v in report["artifacts"].items() if k != "keras"}
    found, _, errors = artifact_targets(out, artifacts, args.threads)
    keep = {"onnx_cpu": "portable", "onnx_optimized_cpu": "optimized", "onnx_int8_cpu": "int8"}
    targets = [t for t in found if t.name in keep]
    for t in targets:
        t.name = keep[t.name]
    targets += anchor_targets(anchor, args.threads)
    spec = load_spec(out / "spec.json")
    rows = time_targets(targets, SHAPES, bench_inputs(spec), args.rounds, args.warmup, args.calls, "anchor",
                        progress=log)
    made = json.loads((anchor / "anchor.json").read_text())
    entry = {"architecture": made["architecture"], "anchor": {k: made[k] for k in ("export", "fused", "int8")},
             "bertc": {"fusion": report.get("fusion"), "nodes": {t.name: t.info.get("nodes") for t in targets},
                       "parity": [{k: r.get(k) for k in ("backend", "output", "max_abs", "argmax_agreement", "passed")}
                                  for r in report["parity"]["results"]]},
             "errors": errors, "latency": {}, "targets_met": {}, "results": rows}
    for batch, seq in SHAPES:
        by = {r["target"]: r for r in rows if r["sequence_length"] == seq and "error" not in r}
        ratios = {"optimized/anchor": round_ratio(rows, "optimized", "anchor", batch, seq),
                  "portable/anchor": round_ratio(rows, "portable", "anchor", batch, seq),
                  "int8/anchor_int8": round_ratio(rows, "int8", "anchor_int8", batch, seq),
                  "anchor_int8/anchor": round_ratio(rows, "anchor_int8", "anchor", batch, seq)}
        entry["latency"][f"B{batch}xS{seq}"] = {"median_ms": {k: v["p50_ms"] for k, v in by.items()}, "ratios": ratios}
        entry["targets_met"][f"S{seq}"] = {
            "optimized": None if ratios["optimized/anchor"] is None else ratios["optimized/anchor"] <= BOUNDS[family],
            "int8": None if ratios["int8/anchor_int8"] is None else ratios["int8/anchor_int8"] <= 1.0}
    return entry


FIDELITY = ["roberta_model", "roberta_seq_cls", "roberta_token_cls", "roberta_qa", "roberta_mlm", "xlmr_model",
            "camembert_seq_cls", "distilbert_model", "distilbert_seq_cls", "distilbert_token_cls", "distilbert_qa",
            "distilbert_mlm", "electra_model", "electra_seq_cls", "electra_token_cls", "electra_qa", "electra_pretraining",
            "electra_mlm", "mpnet_model",
            "mpnet_seq_cls", "mpnet_token_cls", "mpnet_qa", "mpnet_mlm", "st_mpnet_mean_norm", "st_distilbert_mean_dense",
            # *ForMultipleChoice of every family (the fixtures' rows are one question's choices)
            "bert_mc", "albert_mc", "roberta_mc", "distilbert_mc", "electra_mc", "mpnet_mc", "deberta_v3_mc",
            "modernbert_mc", "modernbert_mc_mean"]


def fidelity(names: list[str], command: str) -> int:
    """Every artifact of every family fixture against transformers' outputs."""
    import tempfile

    import numpy as np

    from bertc.backends import keras_runner, open_runner, plan_backends
    from bertc.transfer import load_keras_model
    from bertc.importers import import_spec
    from bertc.pipeline import BuildOptions, build
    from bertc.signature import signature_of
    from bertc.spec import load_spec

    results, worst = {}, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            fixture = ROOT / "tests" / "fixtures" / "hf" / name
            spec_path = Path(tmp) / f"{name}.json"
            import_spec(fixture, spec_path)
            out = Path(tmp) / name
            report = build(spec_path, BuildOptions(out=out, force=True))
            spec = load_spec(out / "spec.json")
            sig = signature_of(spec)
            ref = dict(np.load(fixture / "reference.npz"))
            feeds = {i.name: ref[i.name] for i in sig.inputs}
            planned, _ = plan_backends(out, report["artifacts"])
            row = {"status": report["status"], "parity_passed": report["parity"]["passed"],
                   "fusion": report["fusion"].get("fused_ops"), "backends": {}}
            runners = [("keras", "fp32", keras_runner(load_keras_model(out)))]
            runners += [(b.name, b.precision, open_runner(b)) for b in planned if not b.name.endswith("_cuda")]
            for backend, precision, run in runners:
                got = run(feeds)
                entry = {}
                for o in sig.outputs:
                    want, have = ref[o.name], np.asarray(got[o.name])
                    e = {"max_abs": float(np.abs(want - have).max())}
                    if precision != "fp32":
                        a, b = want.reshape(-1, want.shape[-1]), have.reshape(-1, have.shape[-1])
                        cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
                        e["min_cosine"] = float(cos.min())
                        if o.kind == "logits":
                            e["argmax_agreement"] = float((a.argmax(-1) == b.argmax(-1)).mean())
                    else:
                        worst = max(worst, e["max_abs"])
                    entry[o.name] = e
                row["backends"][backend] = entry
                print(f"{name:<22} {backend:<20} " + ", ".join(
                    f"{k} {v['max_abs']:.2e}" + (f" argmax {v['argmax_agreement']:.3f}" if "argmax_agreement" in v else "")
                    for k, v in entry.items()), flush=True)
            results[name] = row
    path = ROOT / "tools" / "results" / "bench_families_fidelity.json"
    previous = json.loads(path.read_text()).get("fixtures", {}) if path.exists() else {}
    path.write_text(json.dumps({"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                "worst_fp32_max_abs": worst, "fixtures": {**previous, **results}}, indent=1) + "\n")
    print(f"worst fp32 max abs diff against transformers {worst:.2e}; wrote {path.relative_to(ROOT)}")
    return 0 if worst <= 1e-5 and all(r["status"] == "passed" for r in results.values()) else 1


def main() -> int:
    if sys.argv[1:2] == ["fidelity"]:
        sys.path.insert(0, str(ROOT))
        names = sys.argv[2:] or FIDELITY
        unknown = [n for n in names if n not in FIDELITY]
        if unknown:
            raise SystemExit(f"unknown fixtures {unknown}; known: {', '.join(FIDELITY)}")
        return fidelity(names, shlex.join([sys.executable, *sys.argv]))
    if sys.argv[1:2] == ["anchor"]:
        parser = argparse.ArgumentParser(description="make one family's anchor (side environment)")
        parser.add_argument("mode")
        parser.add_argument("family", choices=FAMILIES)
        parser.add_argument("out", type=Path)
        parser.add_argument("--seed", type=int, default=0)
        a = parser.parse_args()
        return make_anchor(a.family, a.out, a.seed)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", choices=[[], *FAMILIES], default=[])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bertc-bench-families"),
                        help="where the checkpoints, anchors and builds go (about 2 GB per family)")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--hf-python", default=os.environ.get("BERTC_HF_PYTHON", "/work/envs/hf/bin/python"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--results", type=Path, default=ROOT / "tools" / "results" / "bench_families.json")
    args = parser.parse_args()
    families = args.families or list(FAMILIES)
    command = shlex.join([sys.executable, *sys.argv])
    sys.path.insert(0, str(ROOT))
    from bertc.bench import machine_info, set_tensorflow_threads

    set_tensorflow_threads(args.threads)
    previous = json.loads(args.results.read_text()) if args.results.exists() else {}
    result = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "settings": {"shapes": [{"batch": b, "sequence_length": s} for b, s in SHAPES], "threads": args.threads,
                           "rounds": args.rounds, "calls": args.calls, "warmup": args.warmup, "ort_spinning": False,
                           "interleaved": True, "ratio": "median over rounds of per-round p50 ratios"},
              "bounds": {"optimized/anchor": BOUNDS, "int8/anchor_int8": 1.0},
              "families": dict(previous.get("families", {}))}
    for family in families:
        anchor, out = ensure(family, args.work, args.hf_python, args.rebuild)
        before = machine_info()
        entry = bench_family(family, anchor, out, args)
        entry["machine"] = {**before, "load_average_after": machine_info()["load_average"]}
        entry["command"] = command
        result["families"][family] = entry
        for shape, lat in entry["latency"].items():
            print(f"{family:<10} {shape:<9} " + ", ".join(f"{k} {v}" for k, v in lat["ratios"].items())
                  + "  (ms: " + ", ".join(f"{k} {v:.1f}" for k, v in lat["median_ms"].items()) + ")", flush=True)
        from bertc.bench import write_results

        write_results(args.results, result)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
