#!/usr/bin/env python3
"""ModernBERT's local layers in blocks (bertc/components/local_blocks.py) against the plain form, at long sequences.

    python tools/bench_local_attention.py [--work DIR] [--lengths 128 256 384 512 1024 2048] [--rounds 4] [--calls 2]
                                          [--packed] [--unpadded [--memory-lengths 2048 8192]]

ModernBERT-base's encoder (22 x 768, 12 heads, intermediate 1,152, window 128, a global layer every third; random
init, seed 0; max_sequence_length 8,192) is lowered once (``bertc.optimize.lower.lower_model``) and written twice:
``blocked.onnx`` as bertc writes model.optimized.onnx, ``plain.onnx`` with every local attention in its plain
(B, S, S) form (``local_attention.unblocked``; the global layers' unpadded fast path kept in both). Both are timed interleaved in one process (bertc.bench's timing
core: ORT CPU, 2 intra-op threads, spinning off; batch 1, every token real), the ratio is the median of per-round
ratios blocked / plain. Their outputs are compared first (batch 1, and batch 2 with a row padded within the
window). ``--packed``: the padding-free artifact of the same graph (``padding_free``: attention per sequence,
in blocks where a sequence allows) against ``blocked.onnx`` on batches of 4 right-padded rows (:data:`BATCHES`),
interleaved, one call per round; ``--lengths`` with no value skips the batch-1 rows. ``--unpadded``: the global
layers' attention without its key mask when no row is padded (``local_blocks.key_masked_attention``) against the
masked form alone (``masked.onnx``: the same graph with that If replaced by its masked branch), instead of blocked
against plain: the same timing at ``--lengths``, and for each file two batch-1 calls at ``--memory-lengths`` in a
fresh process: their seconds, the resident memory once loaded and the peak during the calls (VmHWM). Writes tools/results/bench_local_attention.json
(``--results``).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPEC = {"name": "modernbert_base_encoder", "encoder": {
    "type": "modernbert", "vocab_size": 50368, "hidden_size": 768, "num_layers": 22, "num_attention_heads": 12,
    "intermediate_size": 1152, "max_sequence_length": 8192, "local_attention": 128, "global_attn_every_n_layers": 3,
    "global_rope_theta": 160000.0, "local_rope_theta": 10000.0}}

# --packed: row lengths of each batch of 4 (right-padded to the longest)
BATCHES = ([1024, 1000, 980, 960], [512, 500, 480, 470], [1024, 700, 400, 200])


def peak_memory(path: Path, seq: int, threads: int) -> dict:
    """Two batch-1 calls of ``path`` at ``seq`` in a fresh process: the seconds of each, the resident memory once
    loaded, and the peak resident memory during the calls (VmHWM, reset after loading: /proc/self/clear_refs)."""
    import subprocess

    code = ("import re, sys, time, numpy as np; sys.path.insert(0, sys.argv[4]); "
            "from bertc.optimize.runtime import ort_session; "
            "rss = lambda key: int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1)); "
            "s = ort_session(sys.argv[1], threads=int(sys.argv[3]), spinning=False); n = int(sys.argv[2]); "
            "feed = {'input_word_ids': np.random.default_rng(0).integers(5, 50000, (1, n)).astype(np.int32), "
            "'input_mask': np.ones((1, n), np.int32)}; loaded = rss('VmRSS'); open('/proc/self/clear_refs', 'w').write('5'); "
            "times = []\n"
            "for _ in range(2):\n"
            "    t = time.perf_counter(); s.run(None, feed); times.append(time.perf_counter() - t)\n"
            "print(*times, loaded, rss('VmHWM'))")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(seq), str(threads), str(ROOT)], check=True,
                         capture_output=True, text=True).stdout.split()
    first, second, loaded, peak = float(out[0]), float(out[1]), int(out[2]), int(out[3])
    return {"seconds": [round(first, 2), round(second, 2)], "loaded_mb": loaded // 1024, "peak_mb": peak // 1024}


def write(work: Path, packed: bool = False):
    from bertc.build import build_model
    from bertc.export.onnx import write_onnx
    from bertc.optimize.local_attention import unblocked
    from bertc.optimize.lower import lower_model
    from bertc.spec import load_spec

    t0 = time.perf_counter()
    built = build_model(load_spec(SPEC))
    lowered = lower_model(built, split_weights=True)
    write_onnx(lowered.proto, lowered.weights, work / "blocked.onnx")
    write_onnx(unblocked(lowered.proto, unpadded=False), lowered.weights, work / "plain.onnx")
    write_onnx(unblocked(lowered.proto, local=False), lowered.weights, work / "masked.onnx")
    if packed:
        from bertc.optimize.padding_free import padding_free

        write_onnx(padding_free(lowered.proto, lowered.weights)[0], lowered.weights, work / "packed.onnx")
    return time.perf_counter() - t0, lowered.coverage["layers"]["layer_1"]["attention"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bertc-bench-local-attention"))
    parser.add_argument("--lengths", type=int, nargs="*", default=[128, 256, 384, 512, 1024, 2048])
    parser.add_argument("--packed", action="store_true", help="also the padding-free artifact on padded batches")
    parser.add_argument("--unpadded", action="store_true",
                        help="the global layers' unmasked attention (no row padded) against the masked form")
    parser.add_argument("--memory-lengths", type=int, nargs="*", default=[2048, 8192])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--results", type=Path, default=ROOT / "tools" / "results" / "bench_local_attention.json")
    args = parser.parse_args()

    from bertc.bench import Target, machine_info, time_targets
    from bertc.components.local_blocks import BLOCKED_FROM
    from bertc.optimize.runtime import ort_session

    args.work.mkdir(parents=True, exist_ok=True)
    seconds, attention = write(args.work, args.packed)
    print(f"lowered and written in {seconds:.0f} s; local layers: {attention}", flush=True)

    def session(name):
        return ort_session(args.work / name, threads=args.threads, spinning=False)

    base = "masked" if args.unpadded else "plain"
    rng = np.random.default_rng(0)
    check = {}
    blocked, plain = ort_session(str(args.work / "blocked.onnx")), ort_session(str(args.work / f"{base}.onnx"))
    n = 1024
    mask = np.ones((2, n), np.int32)
    mask[1, n - 40:] = 0     # padded within the window of the last real token: the blocks still run
    ids = rng.integers(5, 50000, (2, n)).astype(np.int32)
    for label, feed in (("batch 1", {"input_word_ids": ids[:1], "input_mask": mask[:1]}),
                        ("batch 2, a row padded by 40", {"input_word_ids": ids, "input_mask": mask})):
        a, b = blocked.run(None, feed)[0], plain.run(None, feed)[0]
        check[f"{label} x seq {n}"] = float(np.abs(a - b).max())
    del blocked, plain
    print(f"blocked vs {base} max abs:", check, flush=True)

    sessions = {name: session(f"{name}.onnx") for name in (base, "blocked")}

    def target(name):
        s = sessions[name]
        return Target(name, lambda inputs: (lambda: s.run(None, inputs)))

    def inputs_for(batch, seq):
        return {"input_word_ids": rng.integers(5, 50000, (batch, seq)).astype(np.int32),
                "input_mask": np.ones((batch, seq), np.int32)}

    rows = time_targets([target(base), target("blocked")], [(1, s) for s in args.lengths], inputs_for,
                        rounds=args.rounds, warmup=1, calls=args.calls, baseline=base, progress=print)
    for r in rows:
        print(f"{r['target']:8s} S {r['sequence_length']:5d}: p50 {r.get('p50_ms')} ms, ratio {r.get('ratio')}",
              flush=True)
    del sessions
    memory = {}
    if args.unpadded:
        for seq in args.memory_lengths:
            memory[f"S {seq}"] = {name: peak_memory(args.work / f"{name}.onnx", seq, args.threads)
                                  for name in ("masked", "blocked")}
            print(f"S {seq}, one call: {memory[f'S {seq}']}", flush=True)
    packed_rows = []
    if args.packed:
        sessions = {name: session(f"{name}.onnx") for name in ("blocked", "packed")}
        for lengths in BATCHES:
            longest = max(lengths)
            mask = (np.arange(longest)[None] < np.array(lengths)[:, None]).astype(np.int32)
            feed = {"input_word_ids": rng.integers(5, 50000, mask.shape).astype(np.int32), "input_mask": mask}
            outs = {name: s.run(None, feed)[0] for name, s in sessions.items()}
            times = {name: [] for name in sessions}
            for r in range(args.rounds):
                for name in (list(sessions) if r % 2 == 0 else list(sessions)[::-1]):
                    t0 = time.perf_counter()
                    sessions[name].run(None, feed)
                    times[name].append(time.perf_counter() - t0)
            row = {"lengths": lengths, "p50_ms": {k: round(float(np.median(v)) * 1e3, 1) for k, v in times.items()},
                   "packed_over_optimized": round(float(np.median([p / b for p, b in zip(times["packed"],
                                                                                            times["blocked"])])), 4),
                   "max_abs_at_real_tokens": float(np.abs(outs["packed"] - outs["blocked"])[mask.astype(bool)].max())}
            packed_rows.append(row)
            print(f"packed / optimized {lengths}: {row['packed_over_optimized']} (max abs {row['max_abs_at_real_tokens']:.2g})",
                  flush=True)
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]))] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine_info(),
        "model": SPEC, "local_attention": attention, "blocked_from": f"S >= {BLOCKED_FROM} x 64 = {BLOCKED_FROM * 64}",
        "settings": {"threads": args.threads, "rounds": args.rounds, "calls": args.calls, "batch": 1,
                     "ort_spinning": False, "interleaved": True, "ratio": f"median over rounds of blocked / {base}"},
        **({"compared": "blocked.onnx (as bertc writes it: the global layers unmasked when no row is padded) "
                        "against masked.onnx (the same, every global layer masked)"} if args.unpadded else {}),
        f"blocked_vs_{base}_max_abs": check,
        **({"memory_one_call": memory} if memory else {}),
        "rows": rows,
        "ratios": {f"S {r['sequence_length']}": r["ratio"] for r in rows if r["target"] == "blocked"},
        **({"packed_vs_optimized": {"method": "model.packed.onnx's graph against blocked.onnx (today's optimized), "
                                              "batches of 4 right-padded, interleaved, one call per round",
                                    "rows": packed_rows}} if packed_rows else {}),
    }
    from bertc.bench import write_results

    write_results(args.results, result)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
