#!/usr/bin/env python3
"""Build the speed anchor of tools/bench_optimized.py (runs in a side environment with torch).

    /work/envs/hf/bin/python tools/hf_anchor.py OUT_DIR [--seed 0]

Writes, for Hugging Face's BERT-base (bert-base-uncased config, random init):
  classifier.onnx, classifier.opt.onnx, classifier.opt.int8.onnx   (BertForSequenceClassification, 2 labels)
  encoder.onnx, encoder.opt.onnx, encoder.opt.int8.onnx             (BertModel)
  anchor.json: how each file was made, node counts and fused-op counts.
Export: torch.onnx.export (TorchScript exporter, opset 17, dynamic batch and sequence, int64 inputs);
fusion: onnxruntime.transformers.optimizer (model_type "bert"); int8: onnxruntime.quantization's
dynamic quantization (QInt8 weights) of the fused graph. Needs torch, transformers, onnx, onnxruntime;
bertc itself is not imported.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path


def node_counts(path: Path) -> dict:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    return {"nodes": len(graph.node), "op_types": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))}


def export(model, path: Path, outputs: list[str]) -> None:
    """``model`` through torch.onnx.export with the inputs its forward takes (input_ids, attention_mask and, where
    it has them, token_type_ids: MPNet, DistilBERT and RoBERTa-style models without a type table have none)."""
    import inspect

    import torch

    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in
                                               inspect.signature(model.forward).parameters else [])

    class ByName(torch.nn.Module):  # named arguments: the models' positional order is not (ids, mask, types)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            out = self.inner(**dict(zip(names, args)), return_dict=True)
            return tuple(out[name] for name in outputs)

    batch, seq = 1, 16
    ids = torch.ones(batch, seq, dtype=torch.long)
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))[:len(names)]
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    for name in outputs:
        axes[name] = {0: "batch", 1: "sequence"} if name == "last_hidden_state" else {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(ByName(model), args, str(path), input_names=names, output_names=outputs, dynamic_axes=axes,
                          opset_version=17, do_constant_folding=True, dynamo=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        import onnx
        import torch
        import transformers
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.transformers import optimizer
    except ImportError as exc:
        print(f"missing {exc.name}: this script needs torch, transformers, onnx and onnxruntime", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
                                     num_labels=2, attn_implementation="eager")  # the attention pattern ORT fuses
    made = {"config": "bert-base-uncased (random init, seed %d)" % args.seed, "torch": torch.__version__,
            "transformers": transformers.__version__, "files": {}}
    import onnxruntime

    made["onnxruntime"] = onnxruntime.__version__
    models = {"classifier": (transformers.BertForSequenceClassification, ["logits"]),
              "encoder": (transformers.BertModel, ["last_hidden_state", "pooler_output"])}
    for name, (cls, outputs) in models.items():
        model = cls(config).eval()
        t0 = time.perf_counter()
        raw, fused, int8 = (args.out / f"{name}{suffix}.onnx" for suffix in ("", ".opt", ".opt.int8"))
        export(model, raw, outputs)
        t1 = time.perf_counter()
        opt = optimizer.optimize_model(str(raw), model_type="bert", num_heads=12, hidden_size=768)
        opt.save_model_to_file(str(fused))
        t2 = time.perf_counter()
        # the fused com.microsoft ops defeat shape inference: say the MatMul outputs are float
        quantize_dynamic(str(fused), str(int8), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        t3 = time.perf_counter()
        del model
        made["files"][name] = {
            "outputs": outputs,
            "export": {"path": raw.name, "seconds": round(t1 - t0, 1), **node_counts(raw)},
            "fused": {"path": fused.name, "seconds": round(t2 - t1, 1), **node_counts(fused),
                      "fusion_statistics": {k: v for k, v in opt.get_fused_operator_statistics().items() if v}},
            "int8": {"path": int8.name, "seconds": round(t3 - t2, 1), **node_counts(int8)},
        }
        print(f"{name}: {made['files'][name]['export']['nodes']} nodes exported, "
              f"{made['files'][name]['fused']['nodes']} fused, {made['files'][name]['int8']['nodes']} int8", flush=True)
    (args.out / "anchor.json").write_text(json.dumps(made, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
