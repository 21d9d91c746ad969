"""Make tests/fixtures/disentangled/<name>.npz + <name>.json: a tiny random DebertaV2Model (transformers, eager
attention) run on a full row, a right-padded row and a row with holes in its mask, with every weight renamed to
bertc's weight paths and the bertc spec that builds the same model.

Runs in a side environment with torch + transformers (never a bertc dependency; this imports no bertc):

    python3 -m venv /work/envs/hf && /work/envs/hf/bin/pip install torch transformers safetensors numpy
    /work/envs/hf/bin/python tools/make_disentangled_fixture.py

The npz holds ``input_word_ids``, ``input_mask``, ``last_hidden_state`` (transformers' output) and one array
per weight under ``weight:<bertc path>`` (Keras orientation: Dense kernels are (in, out)); ``buckets`` holds
transformers' ``build_relative_position`` for the fixture's length (query i, key j at [i, j]).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import DebertaV2Model

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "disentangled"
HIDDEN, LAYERS, HEADS, INTERMEDIATE, VOCAB, MAX_POSITIONS, BUCKETS, EPS = 32, 2, 4, 64, 60, 32, 8, 1e-7
LENGTH = 24

CONFIGS = {
    # DeBERTa-v3 style: query / key weights shared with the position projections, max_relative_positions -1
    "deberta_v3_shared": {"share_att_key": True, "max_relative_positions": -1},
    # own pos_key_proj / pos_query_proj, an explicit max_relative_positions
    "deberta_own_proj": {"share_att_key": False, "max_relative_positions": 16},
}


def bertc_spec(name: str, share_att_key: bool, max_relative_positions: int) -> dict:
    return {
        "name": name,
        "seed": 7,
        "encoder": {
            "type": "scaffold",
            "hidden_size": HIDDEN,
            "num_layers": LAYERS,
            "layer_norm_epsilon": EPS,
            # position_biased_input false, type_vocab_size 0: word embeddings and a layer norm
            "embedding": {"type": "custom", "vocab_size": VOCAB, "max_sequence_length": MAX_POSITIONS,
                          "use_layer_norm": True, "layer_norm_epsilon": EPS, "dropout_rate": 0.0},
            "position": {"type": "disentangled", "max_relative_positions": max_relative_positions,
                         "position_buckets": BUCKETS, "norm_rel_ebd": "layer_norm", "layer_norm_epsilon": EPS},
            "hidden": {"type": "scaffold", "layer_norm_epsilon": EPS, "dropout_rate": 0.0,
                       "attention": {"type": "disentangled", "num_heads": HEADS, "dropout_rate": 0.0,
                                     "pos_att_type": ["p2c", "c2p"], "share_att_key": share_att_key},
                       "feedforward": {"type": "dense", "intermediate_size": INTERMEDIATE, "activation": "gelu",
                                       "dropout_rate": 0.0}},
        },
    }


def randomize(model: DebertaV2Model, seed: int) -> None:
    """Weights large enough for sharp attention (the position terms then matter); layer norms perturbed."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif "LayerNorm.bias" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "embeddings" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                scale = 2.0 if any(k in name for k in ("query_proj", "key_proj", "pos_")) else 1.0
                p.copy_(scale * torch.randn(p.shape, generator=g) / np.sqrt(p.shape[1]))


def bertc_weights(model: DebertaV2Model) -> dict[str, np.ndarray]:
    """transformers' state dict under bertc's weight paths (Linear (out, in) -> Dense kernel (in, out))."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    out = {
        "embeddings/word_embeddings": sd["embeddings.word_embeddings.weight"],
        "embeddings/layer_norm/gamma": sd["embeddings.LayerNorm.weight"],
        "embeddings/layer_norm/beta": sd["embeddings.LayerNorm.bias"],
        "position/rel_embeddings": sd["encoder.rel_embeddings.weight"],
        "position/rel_layer_norm/gamma": sd["encoder.LayerNorm.weight"],
        "position/rel_layer_norm/beta": sd["encoder.LayerNorm.bias"],
    }
    dense = {"attention.self.query_proj": "attention/query", "attention.self.key_proj": "attention/key",
             "attention.self.value_proj": "attention/value", "attention.self.pos_key_proj": "attention/pos_key_proj",
             "attention.self.pos_query_proj": "attention/pos_query_proj",
             "attention.output.dense": "attention/attention_output", "intermediate.dense": "feedforward/intermediate",
             "output.dense": "feedforward/output"}
    norms = {"attention.output.LayerNorm": "attention_layer_norm", "output.LayerNorm": "feedforward/output_layer_norm"}
    for i in range(LAYERS):
        for hf, ours in dense.items():
            key = f"encoder.layer.{i}.{hf}"
            if f"{key}.weight" in sd:
                out[f"layer_{i}/{ours}/kernel"] = sd[f"{key}.weight"].T.copy()
                out[f"layer_{i}/{ours}/bias"] = sd[f"{key}.bias"]
        for hf, ours in norms.items():
            out[f"layer_{i}/{ours}/gamma"] = sd[f"encoder.layer.{i}.{hf}.weight"]
            out[f"layer_{i}/{ours}/beta"] = sd[f"encoder.layer.{i}.{hf}.bias"]
    used = {"embeddings.position_ids"}
    assert len(out) == len(sd) - len(used & set(sd)), sorted(set(sd))
    return out


def inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(3, LENGTH)).astype(np.int32)
    mask = np.ones((3, LENGTH), np.int32)
    mask[1, 15:] = 0                                        # right-padded
    mask[2] = rng.integers(0, 2, size=LENGTH)               # holes
    mask[2, 0] = 1
    ids[mask == 0] = 0
    return ids, mask


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    try:
        import torch
        from transformers import DebertaV2Config, DebertaV2Model
        from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position
    except ModuleNotFoundError as e:
        raise SystemExit(f"{Path(__file__).name}: needs {e.name}, which {sys.executable} lacks: run it in a side "
                         f"environment with torch and transformers (pip install torch transformers safetensors numpy)")
    OUT.mkdir(parents=True, exist_ok=True)
    for k, (name, options) in enumerate(CONFIGS.items()):
        config = DebertaV2Config(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            intermediate_size=INTERMEDIATE, hidden_act="gelu", hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, max_position_embeddings=MAX_POSITIONS, type_vocab_size=0,
            layer_norm_eps=EPS, relative_attention=True, position_buckets=BUCKETS, norm_rel_ebd="layer_norm",
            pos_att_type=["p2c", "c2p"], position_biased_input=False, pad_token_id=0, **options)
        config._attn_implementation = "eager"
        torch.manual_seed(k)
        model = DebertaV2Model(config).eval()
        randomize(model, 100 + k)
        ids, mask = inputs(k)
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor(ids, dtype=torch.long),
                           attention_mask=torch.tensor(mask, dtype=torch.long)).last_hidden_state.numpy()
        probe = torch.zeros(1, LENGTH, HIDDEN)
        buckets = build_relative_position(probe, probe, bucket_size=BUCKETS,
                                          max_position=options["max_relative_positions"] if options["max_relative_positions"] > 0
                                          else MAX_POSITIONS)[0].numpy().astype(np.int32)
        arrays = {"input_word_ids": ids, "input_mask": mask, "last_hidden_state": hidden.astype(np.float32),
                  "buckets": buckets}
        arrays.update({f"weight:{path}": value for path, value in bertc_weights(model).items()})
        np.savez_compressed(OUT / f"{name}.npz", **arrays)
        (OUT / f"{name}.json").write_text(json.dumps(bertc_spec(name, **options), indent=2) + "\n")
        print(name, (OUT / f"{name}.npz").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
