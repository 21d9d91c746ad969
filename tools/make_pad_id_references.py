"""transformers' outputs for rows in which a real token (mask 1) carries the pad id, next to the fixtures of
tools/make_hf_family_fixtures.py: ``tests/fixtures/hf/<name>/pad_id_reference.npz`` (inputs under bertc's names,
outputs under bertc's output names), the fixture's weights untouched.

RoBERTa / XLM-R / CamemBERT and MPNet number their absolute positions from the ids
(``create_position_ids_from_input_ids``: ``cumsum(ids != pad) * (ids != pad) + pad``), not from the mask: a
literal "<pad>" in a text (the tokenizer maps it to the pad id, mask 1) reads position ``pad`` and the tokens
after it shift down, and a masked position whose id is not the pad id is counted. The rows here have both
(the fixtures' own reference.npz holds the pad id exactly where the mask is 0). Runs where transformers and
sentence-transformers are installed:

    /work/envs/hf/bin/python tools/make_pad_id_references.py
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hf"
FIXTURES = {"roberta_token_cls": "RobertaForTokenClassification", "mpnet_token_cls": "MPNetForTokenClassification",
            "st_mpnet_mean_norm": None}
SEQ = 12


def rows(vocab: int, pad: int, cls: int, eos: int, seed: int = 3) -> dict[str, np.ndarray]:
    """Four rows of SEQ tokens, the pad id among the real tokens of each:
    0: every token real, the pad id at positions 3 and 7;
    1: right-padded (8 real), the pad id at position 2 (real) and at the padding;
    2: a hole at position 4 whose id is not the pad id, the pad id at position 6 (real), right-padded from 10;
    3: the pad id at positions 1 and 2 (real), a hole at 5 holding the pad id, right-padded from 9."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(4, SEQ)).astype(np.int32)
    mask = np.ones((4, SEQ), np.int32)
    ids[:, 0] = cls
    ids[0, [3, 7]] = pad
    ids[0, -1] = eos
    mask[1, 8:] = 0
    ids[1, 2] = pad
    ids[1, 7] = eos
    mask[2, 4] = 0            # a hole whose id stays a word id
    mask[2, 10:] = 0
    ids[2, 6] = pad
    ids[2, 9] = eos
    mask[3, 5] = 0
    mask[3, 9:] = 0
    ids[3, [1, 2]] = pad
    ids[3, 8] = eos
    ids[1, 8:] = ids[2, 10:] = ids[3, 9:] = pad
    ids[3, 5] = pad
    return {"input_word_ids": ids, "input_mask": mask, "input_type_ids": np.zeros_like(ids)}


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    try:
        import torch
        import transformers as tr
        from sentence_transformers import SentenceTransformer
    except ModuleNotFoundError as e:
        raise SystemExit(f"{Path(__file__).name}: needs {e.name}, which {sys.executable} lacks: run it in a side "
                         f"environment with torch, transformers and sentence-transformers (pip install torch "
                         f"transformers sentence-transformers)")
    for name, arch in FIXTURES.items():
        directory = OUT / name
        if arch is None:   # sentence-transformers: MPNet -> mean pooling -> Normalize
            model = SentenceTransformer(str(directory), device="cpu")
            cfg = model[0].auto_model.config
        else:
            model = getattr(tr, arch).from_pretrained(directory, attn_implementation="eager").eval()
            cfg = model.config
        pad = cfg.pad_token_id
        assert pad == 1, (name, pad)
        x = rows(cfg.vocab_size, pad, cfg.bos_token_id if cfg.bos_token_id is not None else 0,
                 cfg.eos_token_id if cfg.eos_token_id is not None else 2)
        ids, mask = torch.tensor(x["input_word_ids"], dtype=torch.long), torch.tensor(x["input_mask"], dtype=torch.long)
        with torch.no_grad():
            if arch is None:
                out = {"sentence_embedding": model({"input_ids": ids, "attention_mask": mask})["sentence_embedding"]
                       .numpy()}
            else:
                out = {"logits": model(input_ids=ids, attention_mask=mask).logits.numpy()}
        np.savez(directory / "pad_id_reference.npz", **x, **out)
        print(name, {k: v.shape for k, v in out.items()}, json.dumps(x["input_word_ids"].tolist()[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
