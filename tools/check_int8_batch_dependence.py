"""How much a built model's results depend on the batch a text is run in, artifact by artifact.

Dynamic int8 quantizes each activation with one range over the whole batch tensor, so a text's int8 result moves
with the texts batched beside it; fp32 artifacts should agree to rounding. The texts are the sentences of this
repository's README (or --input FILE, one per line), cut to the model's maximum length where longer (as
``bertc run --truncate``; the record counts them). Not a benchmark: it measures agreement, not time.

    python tools/check_int8_batch_dependence.py OUT [--texts 256] [--batch 32] [--results FILE.json]

For a sentence embedder: min / mean cosine of each text's embedding run alone (batch 1) against run in batches,
the max abs difference, and the share of each text's five nearest neighbours (cosine, among the texts) that stay
the same. For a classifier: the share of labels that stay the same and the max score difference.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def readme_sentences(n: int) -> list[str]:
    text = re.sub(r"[`*|#\[\]()]", " ", (ROOT / "README.md").read_text())
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 20 < len(s.strip()) < 400][:n]


def neighbours(e: np.ndarray, k: int = 5) -> np.ndarray:
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = e @ e.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1)[:, :k]


def main() -> int:
    import bertc

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    texts = ([t for t in args.input.read_text().splitlines() if t.strip()][:args.texts] if args.input
             else readme_sentences(args.texts))
    report = json.loads((args.out / "report.json").read_text())
    rows, truncated = {}, 0
    for artifact, info in report["artifacts"].items():
        if not str(info.get("path", "")).endswith(".onnx"):
            continue
        # truncate: a classifier's tokenizer may not cut texts by itself, and its maximum can be short
        alone = bertc.Runtime(args.out, artifact=artifact, batch_size=1, truncate=True)
        batched = bertc.Runtime(args.out, artifact=artifact, batch_size=args.batch, truncate=True)
        a, b = alone.run(texts), batched.run(texts)
        truncated = alone.truncated
        if isinstance(a, np.ndarray):
            a, b = a.astype(np.float64), b.astype(np.float64)
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            same = np.mean([len(set(x) & set(y)) / 5 for x, y in zip(neighbours(a), neighbours(b))])
            rows[artifact] = {"min_cosine": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6),
                              "max_abs": float(np.abs(a - b).max()), "top5_neighbours_same": round(float(same), 4)}
        else:
            labels = np.mean([x.get("label") == y.get("label") for x, y in zip(a, b)])
            diff = max(abs(x.get("score", 0) - y.get("score", 0)) for x, y in zip(a, b))
            rows[artifact] = {"labels_same": round(float(labels), 4), "max_score_diff": float(diff)}
        print(f"{artifact}: " + ", ".join(f"{k} {v}" for k, v in rows[artifact].items()))
    if truncated:
        print(f"{truncated} of {len(texts)} texts cut to the model's maximum length")
    record = {"command": "python " + " ".join([f"tools/{Path(__file__).name}", *sys.argv[1:]]),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "out": str(args.out),
              "texts": len(texts), "truncated": truncated, "batch": args.batch, "artifacts": rows}
    if args.results:
        args.results.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
