"""An original-BERT checkpoint fixture (TF1 variable names), written from the HF pretraining fixture.

    PYTHONPATH=. python tools/make_bert_tf1_fixture.py     # bertc's environment (TensorFlow + safetensors)

tests/fixtures/hf/bert_pretraining was made with hidden_act gelu_new, which is what original BERT's
``gelu`` computes (the tanh approximation), so its reference outputs are those of the original
BERT model too. This writes its weights under google-research/bert's variable names with a
``tf.compat.v1`` Saver (a name-based checkpoint, as ``run_pretraining.py`` wrote them), plus
``bert_config.json`` (``hidden_act: "gelu"``), vocab.txt, Adam slots and global_step (which the
importer must ignore), and the same reference.npz.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "fixtures" / "hf" / "bert_pretraining"
OUT = ROOT / "tests" / "fixtures" / "bert_tf1"

_LAYER = {"attention.self.query": "attention/self/query", "attention.self.key": "attention/self/key",
          "attention.self.value": "attention/self/value", "attention.output.dense": "attention/output/dense",
          "attention.output.LayerNorm": "attention/output/LayerNorm", "intermediate.dense": "intermediate/dense",
          "output.dense": "output/dense", "output.LayerNorm": "output/LayerNorm"}


def tf1_name(hf: str, value: np.ndarray):
    """(original BERT name, value in its layout) for a HF tensor, or None for HF-only tensors."""
    leaf = hf.rsplit(".", 1)[1]
    kind = {"weight": "kernel", "bias": "bias"}
    ln = {"weight": "gamma", "bias": "beta"}
    m = re.fullmatch(r"bert\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", hf)
    if m:
        stem = _LAYER[m.group(2)]
        if stem.endswith("LayerNorm"):
            return f"bert/encoder/layer_{m.group(1)}/{stem}/{ln[leaf]}", value
        return f"bert/encoder/layer_{m.group(1)}/{stem}/{kind[leaf]}", value.T if leaf == "weight" else value
    fixed = {"bert.embeddings.word_embeddings.weight": "bert/embeddings/word_embeddings",
             "bert.embeddings.position_embeddings.weight": "bert/embeddings/position_embeddings",
             "bert.embeddings.token_type_embeddings.weight": "bert/embeddings/token_type_embeddings",
             "cls.predictions.bias": "cls/predictions/output_bias"}
    if hf in fixed:
        return fixed[hf], value
    for prefix, name in (("bert.embeddings.LayerNorm", "bert/embeddings/LayerNorm"),
                         ("cls.predictions.transform.LayerNorm", "cls/predictions/transform/LayerNorm")):
        if hf.startswith(prefix + "."):
            return f"{name}/{ln[leaf]}", value
    for prefix, name in (("bert.pooler.dense", "bert/pooler/dense"),
                         ("cls.predictions.transform.dense", "cls/predictions/transform/dense")):
        if hf.startswith(prefix + "."):
            return f"{name}/{kind[leaf]}", value.T if leaf == "weight" else value
    if hf.startswith("cls.seq_relationship."):  # original BERT keeps this one as (num_labels, H)
        return f"cls/seq_relationship/output_{'weights' if leaf == 'weight' else 'bias'}", value
    return None


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    try:
        import tensorflow as tf
        from safetensors.numpy import load_file
    except ModuleNotFoundError as e:
        raise SystemExit(f"{Path(__file__).name}: needs {e.name}, which {sys.executable} lacks: run it in bertc's "
                         f"environment (pip install -e . installs TensorFlow and safetensors)")

    tensors = load_file(str(SOURCE / "model.safetensors"))
    variables = {}
    for hf, value in sorted(tensors.items()):
        mapped = tf1_name(hf, value)
        if mapped is None:
            print(f"  (not in original BERT) {hf}")
            continue
        variables[mapped[0]] = np.ascontiguousarray(mapped[1], dtype=np.float32)
    # training state a real run_pretraining.py checkpoint carries
    for name in ("bert/pooler/dense/kernel", "bert/pooler/dense/bias"):
        variables[f"{name}/adam_m"] = np.zeros_like(variables[name])
        variables[f"{name}/adam_v"] = np.zeros_like(variables[name])
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    with tf.Graph().as_default():
        tf_vars = [tf.compat.v1.Variable(v, name=n) for n, v in variables.items()]
        tf_vars.append(tf.compat.v1.Variable(np.int64(1000), name="global_step"))
        saver = tf.compat.v1.train.Saver(tf_vars)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(OUT / "bert_model.ckpt"), write_meta_graph=False, write_state=False)
    hf_cfg = json.loads((SOURCE / "config.json").read_text())
    assert hf_cfg["hidden_act"] == "gelu_new", "the reference must use original BERT's (tanh) gelu"
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
            "initializer_range")
    config = {k: hf_cfg[k] for k in keys}
    config["hidden_act"] = "gelu"
    (OUT / "bert_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(SOURCE / "vocab.txt", OUT / "vocab.txt")
    shutil.copyfile(SOURCE / "reference.npz", OUT / "reference.npz")
    size = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT.relative_to(ROOT)} ({len(variables) + 1} variables, {size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
