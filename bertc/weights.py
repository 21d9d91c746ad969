"""Trained weights into a built model: the loading rules shared by every checkpoint format.

Nothing here knows a checkpoint format: :func:`bertc.importers.load_weights` opens the checkpoint,
picks its importer, and calls :func:`load_into`.

A checkpoint (:mod:`bertc.checkpoints`) lists tensors; an importer (:mod:`bertc.importers`)
translates each tensor name into a bertc weight path (``layer_0/attention/query/kernel``) with
the layout change it needs (a torch ``Linear`` weight is transposed, a Model Garden (H, N, D)
attention kernel reshaped), or says why it is irrelevant (an optimizer slot, HF ``position_ids``).
This module applies the rules:

- every weight of the model must be found, with the shape the model has (after the declared layout
  change; a longer position table is cut to the model's ``max_sequence_length`` and reported);
- a tensor the importer does not know, or one whose weight the model lacks, is an error, except
  the pooler of a model whose head does not read it, and a task head's tensors when the model is the
  encoder alone (reported as ignored, with the reason);
- several tensors for one weight are tied copies (a masked-LM decoder and the word embeddings):
  the same tensor saved twice, so they must be bit-identical; a *fallback* tensor is read only where no
  other tensor gives its weight (ignored, with its reason, where one does);
- every problem is collected and raised as one :class:`~bertc.errors.WeightsError`, naming the
  checkpoint tensor and the bertc weight with both shapes. Nothing is assigned unless all fit.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from bertc.errors import WeightsError


@dataclass(frozen=True)
class Target:
    """Where a checkpoint tensor goes: a bertc weight path and the layout change it needs."""

    path: str
    layout: str = "same"  # "same" | "transpose" (torch Linear / TF1 output_weights) | "reshape" (Model Garden heads)
    tied: bool = False  # a tied copy of a weight another tensor also gives (must be equal)
    # non-empty: read only where no other tensor gives the weight; where one does, this tensor is ignored with
    # this reason (an untied masked-LM decoder's bias, saved under one name or the other by transformers 4 / 5)
    fallback: str = ""


@dataclass(frozen=True)
class Ignored:
    """A checkpoint tensor that is not a weight of any model (with the reason reported)."""

    reason: str


Translation = Union[Target, Ignored, None]  # None: the importer does not know this tensor
Translator = Callable[[str], Translation]

# Weights a checkpoint may carry that the model legitimately lacks, and why.
_UNUSED_OK = {
    "pooler/": "pooler: this model's head does not read the pooled output",
}
# A task head's weights in the checkpoint of a model built without any head (the encoder alone).
HEAD_PREFIXES = ("classifier/", "token_classifier/", "span_labeler/", "masked_lm/", "next_sentence/",
                 "classifier_transform", "token_classifier_transform")
_HEADLESS = "task head of the checkpoint: this spec builds the encoder alone, or with a head without weights"
_OTHER_HEAD = "another task head of the checkpoint ({}), which this model does not have: transformers ignores it too"


@dataclass
class LoadResult:
    source: str
    format: str
    importer: str
    tensors: int
    loaded: dict[str, str] = field(default_factory=dict)  # bertc path -> checkpoint name
    notes: dict[str, str] = field(default_factory=dict)  # bertc path -> layout change made
    tied: dict[str, str] = field(default_factory=dict)  # checkpoint name -> bertc path it is a copy of
    ignored: dict[str, str] = field(default_factory=dict)  # checkpoint name -> reason

    def __repr__(self) -> str:   # the mapping's every tensor flooded a notebook cell: counts (to_json() has it all)
        return (f"LoadResult(source={self.source!r}, format={self.format!r}, importer={self.importer!r}, "
                f"tensors={self.tensors}, loaded={len(self.loaded)}, tied={len(self.tied)}, "
                f"ignored={len(self.ignored)}, layout_changes={len(self.notes)})")

    def to_json(self) -> dict:
        return {"source": self.source, "format": self.format, "importer": self.importer,
                "checkpoint_tensors": self.tensors, "weights_loaded": len(self.loaded),
                "tensors_used": len(self.loaded) + len(self.tied),
                "mapping": self.loaded, "layout_changes": self.notes, "tied_copies": self.tied,
                "ignored": [{"name": n, "reason": r} for n, r in sorted(self.ignored.items())]}

    def summary(self) -> str:
        return (f"{len(self.loaded)} weights from {self.tensors} tensors ({self.format}); "
                f"{len(self.ignored)} ignored")


def _fmt(shape) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _shaped_like(shape) -> np.ndarray:
    """An array of ``shape`` that takes no memory (every element the same zero), for :func:`_arrange` to judge a
    checkpoint tensor by its shape before reading it."""
    shape = tuple(int(d) for d in shape)
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=shape, strides=(0,) * len(shape))


def _arrange(array: np.ndarray, target: Target, want: tuple) -> tuple[Optional[np.ndarray], str]:
    """``array`` laid out as the model's weight (or None), and a note on what was changed."""
    note = ""
    if target.layout == "transpose":
        if array.ndim != 2:
            return None, f"a 2-D tensor to transpose, got {array.ndim}-D"
        array, note = array.T, "transposed (out, in) -> (in, out)"
    elif target.layout == "reshape" and array.shape != want:
        if array.size != int(np.prod(want)):
            return None, ""
        array, note = array.reshape(want), f"reshaped {_fmt(array.shape)} -> {_fmt(want)}"
    if array.shape != want and target.path.endswith("position_embeddings") and array.ndim == 2 \
            and array.shape[1] == want[1] and array.shape[0] > want[0]:
        note = (note + "; " if note else "") + f"first {want[0]} of {array.shape[0]} positions (max_sequence_length)"
        array = array[: want[0]]
    return (array if array.shape == want else None), note


def _head(path: str) -> str:
    """The task head a weight path belongs to: ``classifier`` for ``classifier/kernel`` and for its dense transform
    ``classifier_transform/kernel`` (one head of the checkpoint's, not two)."""
    return path.split("/")[0].removesuffix("_transform")


def plan(model_weights: dict[str, tuple], names: list[str], shape_of: Callable[[str], tuple],
         translate: Translator) -> tuple[dict[str, list[tuple[str, Target]]], dict[str, str], list[str]]:
    """Match checkpoint names to model weights: (path -> [(name, target)], ignored name -> reason, problems)."""
    sources: dict[str, list[tuple[str, Target]]] = {}
    ignored: dict[str, str] = {}
    problems: list[str] = []
    headless = not any(p.startswith(HEAD_PREFIXES) for p in model_weights)
    heads = {_head(p) for p in model_weights if p.startswith(HEAD_PREFIXES)}   # the model's own
    other_heads: dict[str, tuple[str, str]] = {}   # checkpoint name -> (why ignored, why a problem)
    for name in names:
        t = translate(name)
        if isinstance(t, Ignored):
            ignored[name] = t.reason
        elif t is None:
            problems.append(f"unused: checkpoint tensor '{name}' {_fmt(shape_of(name))} is not a weight bertc knows "
                            f"how to place")
        elif t.path not in model_weights:
            why = next((r for prefix, r in _UNUSED_OK.items() if t.path.startswith(prefix)), None)
            if why is None and headless and t.path.startswith(HEAD_PREFIXES):
                why = _HEADLESS
            unused = (f"unused: checkpoint tensor '{name}' {_fmt(shape_of(name))} belongs at bertc weight "
                      f"'{t.path}', which this model does not have")
            if why:
                ignored[name] = why
            elif t.path.startswith(HEAD_PREFIXES) and _head(t.path) not in heads:
                # a multi-task save: another head beside the model's own (a classifier saved with its pre-training
                # head), which transformers' class ignores too (it was refused, no way through); while the model's
                # own head is all there (else it is named: the checkpoint may be another task's model)
                other_heads[name] = (_OTHER_HEAD.format(_head(t.path)), unused)
            else:
                problems.append(unused)
        else:
            sources.setdefault(t.path, []).append((name, t))
    for path, items in sources.items():
        if any(not t.fallback for _, t in items):
            ignored.update({name: t.fallback for name, t in items if t.fallback})
            sources[path] = [(name, t) for name, t in items if not t.fallback]
    own_head_found = all(path in sources for path in model_weights if _head(path) in heads)
    for name, (why, unused) in other_heads.items():
        if own_head_found:
            ignored[name] = why
        else:
            problems.append(unused)
    for path, shape in model_weights.items():
        if path not in sources:
            problems.append(f"missing: bertc weight '{path}' {_fmt(shape)} has no tensor in the checkpoint")
        elif all(t.tied for _, t in sources[path]):
            first = sources[path][0][0]
            problems.append(f"missing: bertc weight '{path}' {_fmt(shape)} has only a tied copy ('{first}') "
                            f"in the checkpoint")
    return sources, ignored, problems


def load_into(model, checkpoint, translate: Translator, importer: str) -> LoadResult:
    """Assign every weight of ``model`` from ``checkpoint`` (all-or-nothing); raises WeightsError."""
    weights = {w.path: w for w in model.weights}
    if len(weights) != len(model.weights):
        raise WeightsError("the model has several weights with one path; bertc cannot load weights by name into it")
    shapes = {p: tuple(int(d) for d in w.shape) for p, w in weights.items()}
    names = checkpoint.names()
    sources, ignored, problems = plan(shapes, names, checkpoint.shape, translate)
    result = LoadResult(str(checkpoint.location), checkpoint.format, importer, len(names), ignored=ignored)
    values: dict[str, np.ndarray] = {}
    for path, items in sorted(sources.items()):
        want = shapes[path]
        for name, target in sorted(items, key=lambda it: it[1].tied):  # the primary tensor first
            # judged by its shape before it is read: a crafted file's tensor of gigabytes that cannot fit (a
            # storage inflating to what its shape claims) is not read at all
            array, note = _arrange(_shaped_like(checkpoint.shape(name)), target, want)
            if array is not None:
                array, note = _arrange(checkpoint.read(name), target, want)
            if array is None:
                how = {"transpose": " transposed", "reshape": " reshaped"}.get(target.layout, "")
                problems.append(f"shape: checkpoint tensor '{name}' {_fmt(checkpoint.shape(name))}{how} does not fit "
                                f"bertc weight '{path}' {_fmt(want)}"
                                + (f" ({note})" if note and target.layout != "transpose" else ""))
                continue
            if path not in values:
                values[path], result.loaded[path] = array, name
                if note:
                    result.notes[path] = note
            elif not np.array_equal(values[path], array):
                diff = float(np.max(np.abs(values[path] - array)))
                problems.append(f"tied: checkpoint tensors '{result.loaded[path]}' and '{name}' both give bertc weight "
                                f"'{path}' (tied in bertc) but differ (max abs diff {diff:.3g})")
            else:
                result.tied[name] = path
    if problems:
        head = f"cannot load weights from {checkpoint.describe()} into this model: {len(problems)} problem(s):"
        if not sources:
            head += (f"\n  (none of its tensor names is one the {importer} importer knows: is this checkpoint of a "
                     f"model bertc imports, in the format its file suggests?)")
        raise WeightsError("\n".join([head] + [f"  - {p}" for p in problems]))
    for path, array in values.items():
        weights[path].assign(array.astype(np.dtype(weights[path].dtype)))
    return result


def check_spec_weights(spec_weights: str, spec_file: Optional[Path], path: Optional[Path]) -> None:
    """Refuse the spec's ``weights`` entry when it is empty (a template's unset variable: not "no weights") or
    ``path`` (what it resolved to) is nowhere: the message names the field, the entry and, for a relative one, the
    folder it was read from (a spec moved away from its checkpoint). ``--weights`` replaces the entry unread."""
    from bertc.checkpoints import tf_checkpoint_prefix

    if path is None or not spec_weights.strip():
        raise WeightsError(f"$.weights {json.dumps(spec_weights)}: no path; give the trained weights' path (or "
                           f"--weights PATH), or leave weights out for random weights")
    if path.exists() or tf_checkpoint_prefix(path) is not None:
        return
    relative = not Path(filesystem_text(spec_weights)).expanduser().is_absolute()
    where = (f" (relative: read from the spec's folder, {Path(spec_file).resolve().parent if spec_file else Path.cwd()})"
             if relative else "")
    raise WeightsError(f"$.weights {json.dumps(spec_weights)}: {path} does not exist{where}; correct the entry, or "
                       f"give the weights on the command line (--weights PATH)")


def resolve_weights_path(spec_weights: Optional[str], spec_file: Optional[Path]) -> Optional[Path]:
    """The spec's ``weights`` entry as a path: relative entries resolve against the spec file's directory."""
    if not spec_weights:
        return None
    path = Path(filesystem_text(spec_weights)).expanduser()
    if not path.is_absolute():
        base = Path(spec_file).resolve().parent if spec_file else Path.cwd()
        path = base / path
    return path.resolve()  # normalised: "OUT/../../ckpt" and "/abs/ckpt" name one checkpoint one way


def filesystem_text(text: str) -> str:
    """A spec's path (UTF-8 text, as JSON holds it) as this process names that file: the same where the file system's
    encoding is UTF-8; under a locale whose encoding is not (LC_ALL=C: ascii), its UTF-8 bytes decoded as Python
    decodes file names (``"é"`` is the file ``b"\\xc3\\xa9"``, there ``"\\udcc3\\udca9"``). Lone surrogates written
    by an import under such a locale are the bytes they stand for."""
    import os

    try:
        return os.fsdecode(text.encode("utf-8", "surrogateescape"))
    except UnicodeError:   # a surrogate that stands for no byte: left as written (the file is then not found)
        return text


def spec_text(name: str) -> str:
    """A file name as this process got it, as a spec holds it (the inverse of :func:`filesystem_text`): its bytes
    read as UTF-8, whatever the locale (under LC_ALL=C, ``"\\udcc3\\udca9"`` is ``"é"``), so that the spec reads the
    same, and can be written as UTF-8, everywhere. Bytes that are not UTF-8 stay as Python escapes them."""
    import os

    try:
        return os.fsencode(name).decode("utf-8", "surrogateescape")
    except UnicodeError:   # text the file system's encoding cannot hold: not a name this process was given
        return name


def relative_entry(target: Path, directory: Path) -> str:
    """``target`` as a ``weights`` entry of a spec in ``directory``: relative when the two share a directory
    below the filesystem root (a project moved as a whole keeps working), absolute otherwise."""
    import os

    target, directory = Path(target).resolve(), Path(directory).resolve()
    if os.path.commonpath([target, directory]) == target.anchor:
        return spec_text(str(target))
    return spec_text(os.path.relpath(target, directory))


def weights_entry_for(weights: Path, out: Path) -> str:
    """The ``weights`` entry of the spec.json written into ``out``: the same file, relative to ``out``."""
    return relative_entry(weights, out)
