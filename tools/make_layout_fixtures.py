"""Tiny Hugging Face fixtures of checkpoint layouts beyond the common one, with transformers' reference outputs
(tests/test_import_layouts.py reads them without torch):

- ``*_untied``: masked LMs saved with ``tie_word_embeddings: false`` (the decoder a table of its own; transformers 5
  gives it its own bias too, so ``cls.predictions.bias`` / ``lm_head.bias`` are saved but not read): BERT's masked LM
  and pretraining heads, RoBERTa's, DistilBERT's and ELECTRA's generator (decoder at the embedding width);
- ``albert_equal_embedding``: an ALBERT whose ``embedding_size`` equals ``hidden_size`` (transformers still applies
  ``embedding_hidden_mapping_in``, a hidden -> hidden dense layer);
- ``bert_seq_cls_bin_sharded``: bert_seq_cls's weights as transformers 4 shards them without safetensors
  (``save_pretrained(safe_serialization=False, max_shard_size=...)``: ``pytorch_model-0000N-of-0000M.bin`` and
  ``pytorch_model.bin.index.json``; config.json and the reference are bert_seq_cls's). transformers 5 always writes
  safetensors, so this one needs transformers 4:

    /work/envs/hf/bin/python tools/make_layout_fixtures.py                             # every other fixture
    /work/envs/hf4/bin/python tools/make_layout_fixtures.py bert_seq_cls_bin_sharded   # transformers 4

Weights are random and every parameter is perturbed (tools/make_hf_fixtures.py's ``perturb``); reference.npz holds
the inputs under bertc's names and transformers' outputs under bertc's output names, as the other fixtures do.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers as tr

import make_hf_family_fixtures as fam
import make_hf_fixtures as hf

OUT = hf.OUT


def _bert(name: str, arch: str, seed: int, **config) -> Path:
    return hf.write(name, hf.make_bert(arch, seed, **config), arch, seed)


def _family(name: str, config_cls, arch: str, config: dict, seed: int, ids: tuple, types: bool) -> Path:
    model = fam.make(config_cls, arch, seed, **config)
    directory = OUT / name
    shutil.rmtree(directory, ignore_errors=True)
    model.save_pretrained(directory, safe_serialization=True)
    x = fam.inputs(seed, *ids)
    np.savez(directory / "reference.npz", **x, **fam.reference(model, arch, x, types))
    return directory


def bert_seq_cls_bin_sharded() -> Path:
    if int(tr.__version__.split(".")[0]) >= 5:
        raise SystemExit("bert_seq_cls_bin_sharded needs transformers 4 (5 writes safetensors whatever "
                         "safe_serialization says): run this script with /work/envs/hf4/bin/python")
    from safetensors.torch import load_file

    source, directory = OUT / "bert_seq_cls", OUT / "bert_seq_cls_bin_sharded"
    model = tr.BertForSequenceClassification(tr.BertConfig.from_pretrained(source))
    model.load_state_dict(load_file(str(source / "model.safetensors")), strict=False)
    staging = OUT / "_bin_sharded"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=False, max_shard_size="20KB")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    shards = sorted(staging.glob("pytorch_model-*.bin"))
    assert len(shards) >= 2 and (staging / "pytorch_model.bin.index.json").exists(), sorted(staging.iterdir())
    for path in [*shards, staging / "pytorch_model.bin.index.json"]:
        shutil.copy(path, directory / path.name)
    shutil.rmtree(staging)
    return directory


FIXTURES = {
    "bert_mlm_untied": lambda: _bert("bert_mlm_untied", "BertForMaskedLM", 61, tie_word_embeddings=False),
    "bert_pretraining_untied": lambda: _bert("bert_pretraining_untied", "BertForPreTraining", 62,
                                             tie_word_embeddings=False),
    "roberta_mlm_untied": lambda: _family("roberta_mlm_untied", tr.RobertaConfig, "RobertaForMaskedLM",
                                          fam.roberta_config(tie_word_embeddings=False), 63, (fam.ROBERTA_VOCAB, 1, 0),
                                          True),
    "distilbert_mlm_untied": lambda: _family("distilbert_mlm_untied", tr.DistilBertConfig, "DistilBertForMaskedLM",
                                             fam.distilbert_config(tie_word_embeddings=False), 64,
                                             (len(hf.VOCAB), 0, 2), False),
    "electra_mlm_untied": lambda: _family("electra_mlm_untied", tr.ElectraConfig, "ElectraForMaskedLM",
                                          fam.electra_config(embedding_size=8, tie_word_embeddings=False), 65,
                                          (len(hf.VOCAB), 0, 2), True),
    "albert_equal_embedding": lambda: hf.write("albert_equal_embedding",
                                               hf.make_albert("AlbertModel", 66, embedding_size=hf.SMALL["hidden_size"]),
                                               "AlbertModel", 66),
    "bert_seq_cls_bin_sharded": bert_seq_cls_bin_sharded,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"fixtures to write (default all but bert_seq_cls_bin_sharded, "
                                                 f"which needs transformers 4: {', '.join(FIXTURES)})")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in FIXTURES]
    if unknown:
        parser.error(f"unknown fixtures {unknown}; known: {', '.join(FIXTURES)}")
    torch.set_num_threads(1)
    for name in args.names or [n for n in FIXTURES if n != "bert_seq_cls_bin_sharded"]:
        path = FIXTURES[name]()
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        print(f"wrote {path} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
