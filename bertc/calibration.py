"""Inputs that look like the model's real inputs: the calibration and checking set of reduced precision.

Two kinds, both recorded in the report (``sources``):

- the random-id grid of parity (:func:`bertc.parity.grid_cases`): every batch size x sequence length,
  right padding and random 0/1 masks;
- real text, when the build has a tokenizer (bundled from the trained weights' directory,
  :mod:`bertc.text`): the user's own file (``bertc build --calibration FILE``, one example per line, a
  tab between a sentence pair; or JSONL, CSV, TSV, Parquet: the field ``text``, and ``text_pair``) or else
  bertc's built-in multilingual sentence set
  (``bertc/data/calibration_sentences.txt``: short and long, 20 languages, chat, URLs, numbers, and the
  markup, code and licence text of documentation and web pages).
  Text becomes these cases: the examples in padded batches of up to 64 (the cases that judge the rank agreement
  of within-batch similarities; 1,024 of a file's examples, evenly spaced, where it holds more), the shortest
  example alone and the longest alone (a lone short sentence
  is where dynamic int8 does worst: a few tokens set the activation range). A sentence embedder whose
  sentence-transformers config has prompts gets one more batch per prompt (:func:`prompted_cases`): its
  queries reach it behind "query: " or an instruction, and so do they in ``bertc run``.

The int8 tuning (:mod:`bertc.optimize.int8_tuning`) chooses its smoothing and fp32 MatMuls on these
cases, and parity judges the artifacts on the same ones, so the two verdicts agree. They judge against the
same Keras outputs too, computed once per build (:meth:`CalibrationSet.reference`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np

from bertc.errors import BertcError, CalibrationError, MissingLibrary, said

BUILTIN_NAME = "calibration_sentences.txt"


def builtin_sentences() -> list[str]:
    text = resources.files("bertc").joinpath("data", BUILTIN_NAME).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def builtin_sha256() -> str:
    """The sha256 of this bertc's built-in sentences (recorded by a build: `bertc parity OUT` of another bertc's
    version of them says so)."""
    import hashlib

    return hashlib.sha256(resources.files("bertc").joinpath("data", BUILTIN_NAME).read_bytes()).hexdigest()


@dataclass
class CalibrationSet:
    """The cases (:class:`bertc.parity.Case`) and where they came from (the report's ``sources``)."""

    cases: list = field(default_factory=list)
    sources: dict = field(default_factory=dict)
    _outputs: dict = field(default_factory=dict, repr=False, compare=False)   # id(model) -> {id(inputs): outputs}

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.cases]

    def reference(self, model):
        """A runner of ``model`` (Keras, inference mode) that computes each of these cases' outputs once: the
        int8 tunings (ONNX and TFLite) and parity judge against the same reference, which at long sequences
        costs minutes a pass (README: ModernBERT-base's default build). Valid while the model's
        weights stay as they are, which in a build they do from the weights' loading on (the structural check
        restores the ones it changes before the first judge). Inputs that are not one of the cases run each
        time."""
        from bertc.backends import keras_runner

        run = keras_runner(model)
        known = {id(c.inputs) for c in self.cases}
        outputs = self._outputs.setdefault(id(model), {})

        def reference(inputs):
            key = id(inputs)
            if key not in known:
                return run(inputs)
            if key not in outputs:
                outputs[key] = run(inputs)
            return outputs[key]

        return reference

    def to_json(self) -> dict:
        return {"sources": self.sources, "cases": [c.to_json() for c in self.cases]}


MAX_TEXT_EXAMPLES = 1024   # of a --calibration file, evenly spaced (the tuning measures every case many times)


def batched_text_cases(out_dir: Path, spec, texts: list, label: str) -> list:
    """``texts`` as cases of padded batches of at most :data:`bertc.text.TEXT_BATCH` examples
    (:func:`bertc.text.encode_batches`)."""
    from bertc.parity import Case
    from bertc.text import encode_batches

    return [Case.given(name, inputs) for name, inputs in encode_batches(out_dir, texts, spec, label)]


def text_cases(out_dir: Path, spec, texts: list, source: str) -> list:
    """The real-text cases of ``texts`` (see the module docstring), labelled with ``source``."""
    from bertc.parity import Case
    from bertc.text import encode_texts

    max_len = spec.encoder.max_sequence_length
    cases = batched_text_cases(out_dir, spec, texts, f"from {source}")
    if len(texts) > 1:
        sizes = [len(t) if isinstance(t, str) else sum(map(len, t)) for t in texts]
        shortest, longest = sizes.index(min(sizes)), sizes.index(max(sizes))
        for which, i in (("shortest", shortest), ("longest", longest)):
            cases.append(Case.given(f"text: the {which} example of {source} alone",
                                    encode_texts(out_dir, [texts[i]], max_len, spec)))
    return cases


MAX_PROMPTS = 4


def prompted_cases(out_dir: Path, spec, texts: list, source: str) -> tuple[list, list[str]]:
    """(cases, the prompt names used): for a sentence embedder whose bundled sentence-transformers config has
    prompts, every text example of ``texts`` in one padded batch behind each prompt (the default prompt first, at
    most :data:`MAX_PROMPTS`): what ``bertc run`` feeds such a model (e5's "query: ", bge's instruction), so that
    int8 is tuned and judged on it too. Sentence pairs take no prompt."""
    from bertc.text import bundled_prompts

    if spec.head is None or spec.head.type != "sentence_embedding":
        return [], []
    prompts, default = bundled_prompts(out_dir)
    names = sorted((n for n, p in prompts.items() if p), key=lambda n: (n != default, n))
    singles = [t for t in texts if isinstance(t, str)]
    cases, used, seen = [], [], set()
    for name in names:
        if len(used) == MAX_PROMPTS or not singles:
            break
        if prompts[name] in seen:
            continue
        seen.add(prompts[name])
        used.append(name)
        cases += batched_text_cases(out_dir, spec, [prompts[name] + t for t in singles],
                                    f"from {source} behind the model's prompt {name!r}")
    return cases, used


def has_tokenizer(out_dir: Path) -> bool:
    """Whether the build bundles a tokenizer's vocabulary (whether bertc can read it: :func:`bertc.text.load_tokenizer`)."""
    from bertc.text import VOCABULARIES

    return any((Path(out_dir) / n).is_file() for n in VOCABULARIES)


def real_text_cases(spec, out_dir: Path, calibration: Optional[Path] = None) -> tuple[list, dict]:
    """(cases, source record) of real text for the build in ``out_dir``; no cases (and why) when there is
    no usable tokenizer. A ``calibration`` file that cannot be used raises :class:`CalibrationError`."""
    from bertc.manifest import sha256_file
    from bertc.text import read_texts

    out_dir = Path(out_dir)
    if calibration is not None:
        calibration = Path(calibration)
        if calibration.exists() and not calibration.is_file():   # /dev/zero, a pipe: it cannot be read again
            raise CalibrationError(f"{said('--calibration', 'calibration')} {calibration}: not a regular file; the build records the file's "
                                   f"path and sha256 so that bertc parity reads the same text again: give a file")
        if not has_tokenizer(out_dir):
            raise CalibrationError(f"{said('--calibration', 'calibration')} {calibration}: this build has no tokenizer to read text with "
                                   f"(it is bundled from the trained weights' directory: tokenizer.json, vocab.txt, "
                                   f"vocab.json + merges.txt, or a SentencePiece model)")
        try:
            texts = read_texts(calibration)
            given = len(texts)
            if given > MAX_TEXT_EXAMPLES:   # evenly spaced over the file: the same ones whenever it is read
                texts = [texts[int(i)] for i in np.linspace(0, given - 1, MAX_TEXT_EXAMPLES).round()]
            cases = text_cases(out_dir, spec, texts, calibration.name)
            prompted, used = prompted_cases(out_dir, spec, texts, calibration.name)
        except (CalibrationError, MissingLibrary):   # tokenizers not installed: exit 7, as every missing library
            raise
        except BertcError as exc:
            raise CalibrationError(f"{said('--calibration', 'calibration')} {calibration}: {exc}") from None
        # where it is and what it held: `bertc parity OUT` re-runs on the same text, from any directory
        return cases + prompted, {"kind": "file", "path": os.path.abspath(calibration),
                                  "sha256": sha256_file(calibration), "examples": len(texts),
                                  **({"of": given} if given != len(texts) else {}),
                                  **({"prompts": used} if used else {})}
    if not has_tokenizer(out_dir):
        return [], {"kind": "none", "why": "no tokenizer in this build: " + (
            "its trained weights came without one (tokenizer.json, vocab.txt, or vocab.json + merges.txt beside them)"
            if spec.weights is not None else "a spec without trained weights has none")}
    texts = builtin_sentences()
    try:
        cases = text_cases(out_dir, spec, texts, "bertc's built-in set")
        prompted, used = prompted_cases(out_dir, spec, texts, "bertc's built-in set")
    except BertcError as exc:   # e.g. the tokenizer is not the model's (a build that uses this text asked for the
        # tokenizers library before its export: bertc.pipeline._text_library_present)
        return [], {"kind": "none", "why": f"the built-in sentences could not be tokenized: {exc}"}
    return cases + prompted, {"kind": "builtin", "file": f"bertc/data/{BUILTIN_NAME}", "examples": len(texts),
                              "sha256": builtin_sha256(), **({"prompts": used} if used else {})}


def calibration_set(spec, out_dir: Path, calibration: Optional[Path] = None) -> CalibrationSet:
    """The random-id grid of parity plus real text (see the module docstring)."""
    from bertc.parity import grid_cases

    grid = grid_cases(spec)
    text, source = real_text_cases(spec, out_dir, calibration)
    return CalibrationSet(grid + text, {"grid": {"kind": "random ids", "cases": len(grid)},
                                        "text": {**source, "cases": len(text)}})
