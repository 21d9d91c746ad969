#!/usr/bin/env python3
"""Writes the ``torch.save`` fixtures that tests/test_torch_pickle.py reads without torch.

    /work/envs/hf/bin/python tools/make_torch_fixtures.py      # a side environment with torch

- tests/fixtures/torch/views.pt (zip format) and views_legacy.pt (``_use_new_zipfile_serialization=False``):
  a state dict of every storage dtype bertc reads (float32, float64, float16, bfloat16, int64, int32, int8,
  uint8, bool), views that share a storage (a transpose, a slice at an offset, a strided column), a scalar, an
  empty tensor, an ``nn.Parameter``; views.npz holds what each must read as (bfloat16 widened to float32).
- tests/fixtures/hf/bert_seq_cls_bin/pytorch_model.bin: bert_seq_cls's weights as transformers 4 saved them with
  ``safe_serialization=False``: ``torch.save(model.state_dict())``, an OrderedDict with ``_metadata`` (the config and
  reference come from bert_seq_cls in the test).
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "torch"


def views() -> collections.OrderedDict:
    import torch

    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    state = collections.OrderedDict()
    state["f32"] = torch.randn(3, 5, generator=g)
    state["f64"] = torch.randn(2, 3, generator=g, dtype=torch.float64)
    state["f16"] = torch.randn(7, generator=g).half()
    state["bf16"] = torch.randn(2, 4, generator=g).bfloat16()
    state["i64"] = torch.arange(-5, 5, dtype=torch.int64).reshape(2, 5)
    state["i32"] = torch.tensor([1, -2, 3], dtype=torch.int32)
    state["i8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    state["u8"] = torch.tensor([0, 255, 7], dtype=torch.uint8)
    state["bool"] = torch.tensor([True, False, True])
    state["base"] = base
    state["base_t"] = base.t()                # the same storage, transposed
    state["base_rows"] = base[1:3]            # at an offset
    state["base_col"] = base[:, 2]            # strided
    state["scalar"] = torch.tensor(2.5)
    state["empty"] = torch.zeros(0, 3)
    state["param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
    return state


def expected(state) -> dict:
    import torch

    return {k: (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy() for k, v in state.items()}


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    try:
        import torch
        import transformers as tr   # a model's state_dict(): an OrderedDict with its _metadata, as older transformers saved
        from safetensors.torch import load_file
    except ModuleNotFoundError as e:
        raise SystemExit(f"{Path(__file__).name}: needs {e.name}, which {sys.executable} lacks: run it in a side "
                         f"environment with torch, transformers and safetensors (pip install torch transformers "
                         f"safetensors numpy)")
    OUT.mkdir(parents=True, exist_ok=True)
    state = views()
    torch.save(state, OUT / "views.pt")
    torch.save(state, OUT / "views_legacy.pt", _use_new_zipfile_serialization=False)
    np.savez(OUT / "views.npz", **expected(state))
    hf = ROOT / "tests" / "fixtures" / "hf"
    target = hf / "bert_seq_cls_bin"
    target.mkdir(exist_ok=True)
    model = tr.BertForSequenceClassification(tr.BertConfig.from_pretrained(hf / "bert_seq_cls"))
    model.load_state_dict(load_file(str(hf / "bert_seq_cls" / "model.safetensors")), strict=False)
    state = model.state_dict()
    assert hasattr(state, "_metadata")
    torch.save(state, target / "pytorch_model.bin")
    for path in sorted([*OUT.iterdir(), *target.iterdir()]):
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
