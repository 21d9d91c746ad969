"""Importers: a foreign checkpoint's config -> a bertc spec, its tensor names -> bertc weight paths.

One module per family of checkpoints, each exposing:

- ``NAME``: the label the report uses;
- ``translator(names, spec, location)``: a function from a checkpoint tensor name to a
  :class:`bertc.weights.Target` (bertc weight path + layout change), an
  :class:`bertc.weights.Ignored` (with the reason), or None (unknown);
- ``spec_from(source)``: the spec (a dict) that expresses the checkpoint's model exactly, or
  :class:`bertc.errors.UnsupportedModel` naming the config key and value bertc cannot express.

Importers never build graphs; :mod:`bertc.weights` holds the loading rules, applied by
:func:`load_weights` here (and by the pipeline's "load weights" stage, :func:`load_weights_stage`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType
from typing import Optional

from bertc.errors import UnsupportedModel, WeightsError


def importer_for(checkpoint) -> ModuleType:
    """The importer that reads ``checkpoint``'s tensor names."""
    from bertc.importers import bert_tf1, bertc_keras, hf, model_garden

    fmt = checkpoint.format
    if fmt == "keras":
        return bertc_keras
    if fmt in ("safetensors", "pytorch"):
        return hf
    if fmt == "tf_object_checkpoint":   # Model Garden's, or a tf.train.Checkpoint of a Keras model bertc built
        return bertc_keras if bertc_keras.holds_bertc_paths(checkpoint.names()) else model_garden
    if fmt == "tf_checkpoint":
        return bert_tf1
    raise WeightsError(f"{checkpoint.location}: no importer for format {fmt!r}")


def _spec_name(source: Path) -> str:
    import re

    source = Path(os.path.abspath(source))   # `bertc import .` names its folder, not "imported"
    base = source.name if source.is_dir() else (source.parent.name or source.stem)
    folder = (source if source.is_dir() else source.parent).resolve()   # (a link to the cache's folder too)
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        base = folder.parent.parent.name.split("--")[-1]   # a Hugging Face cache's models--org--name/snapshots/HASH
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("_.-") or "imported"
    return (name if name[0].isalpha() else f"m_{name}")[:64]


def _refuse_a_sentence_transformer_without_modules(root: Path) -> None:
    """A sentence-transformers folder whose modules.json is missing (a copy or download that left it out) was imported
    as its transformer alone, silently: a BertModel's pooler output, not the embeddings its pooling (Dense,
    Normalize) makes."""
    from bertc.errors import UnsupportedModel, said

    if (root / "modules.json").exists() or not root.is_dir():
        return
    from bertc.tokenizer_files import read_json

    st_config = root / "config_sentence_transformers.json"
    # a CrossEncoder's modules.json lists its transformer alone: without it, it imports as it is (a classifier)
    found = [st_config.name] if st_config.is_file() and read_json(st_config).get("model_type") != "CrossEncoder" \
        else []
    found += sorted(f"{p.name}/" for p in root.iterdir() if p.is_dir() and p.name[:1].isdigit() and "_" in p.name
                    and p.name.split("_", 1)[1] in ("Pooling", "Dense", "Normalize"))
    if found:
        raise UnsupportedModel(f"{root}: a sentence-transformers model (it has {', '.join(found)}) without its "
                               f"modules.json, which says how its embeddings are made (pooling, Dense, Normalize): "
                               f"imported without it, it would give its transformer's outputs, not its embeddings. "
                               f"Put the model's modules.json back (a copy or a download that left it out), or "
                               f"import the transformer alone with {said('--encoder-only', 'encoder_only=True')}")


def _refuse_training_state(source: Path) -> None:
    """A Trainer's training state beside a checkpoint-N/'s config.json (optimizer.pt, rng_state.pth, ...) is no
    model: rng_state.pth imported, exit 0, and its build failed on every weight missing."""
    from bertc.checkpoints import training_state

    if not source.is_dir() and training_state(source.name):
        raise WeightsError(f"{source}: a Trainer's training state ({training_state(source.name)}), not the model's "
                           f"weights: import the model saved beside it (model.safetensors or pytorch_model.bin; a "
                           f"DeepSpeed ZeRO-3 checkpoint-N/ holds none: save the model with Trainer.save_model "
                           f"first)")


def _refuse_a_shard(source: Path, root: Path) -> None:
    """One shard of a sharded checkpoint (``model-00001-of-00004.safetensors``) holds a part of the weights: its
    import wrote a spec whose build failed on the missing tensors. Refused, naming the index to import."""
    import re

    if source.is_dir() or not root.is_dir() or not re.search(r"-\d+-of-\d+\.(safetensors|bin)$", source.name):
        return   # (a path in no folder: "file not found", said where the weights are opened)
    from bertc.checkpoints import index_kind

    indexes = sorted(p.name for p in root.iterdir() if index_kind(p.name))
    raise WeightsError(f"{source}: one shard of a sharded checkpoint, a part of its weights: import "
                       + (f"its index, {root / indexes[0]}" if indexes else "its index file (*.index.json), which "
                          "is not beside it") + ", or the directory")


def _refuse_an_adapter(source: Path, root: Path) -> None:
    """A PEFT adapter (LoRA, ...: adapter_config.json and adapter_model.*) holds the fine-tune's low-rank deltas
    alone, not a model: said so, with how to merge it into its base model (was "no weights found", or, given the
    adapter file, "needs its config.json")."""
    from bertc.checkpoints import HF_WEIGHT_FILES

    config = root / "adapter_config.json"
    if not (config.is_file() and (source.is_dir() or source.name.startswith("adapter_model"))):
        return
    if source.is_dir() and any((root / name).is_file() for name in HF_WEIGHT_FILES):   # a model beside it: that one
        return
    base, kind = "its base model", "a PEFT"
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
        if isinstance(cfg, dict):
            base = json.dumps(cfg["base_model_name_or_path"]) if isinstance(cfg.get("base_model_name_or_path"),
                                                                           str) else base
            kind = f"a PEFT {cfg['peft_type']}" if isinstance(cfg.get("peft_type"), str) else kind
    except (OSError, UnicodeDecodeError, ValueError):
        pass
    raise UnsupportedModel(
        f"{source}: {kind} adapter (adapter_config.json), the fine-tune's deltas to {base}, not a model: merge it "
        f"into the base model and import that (peft: PeftModel.from_pretrained(base_model, ADAPTER_DIR)"
        f".merge_and_unload().save_pretrained(MERGED_DIR), with the tokenizer saved beside; then bertc import "
        f"MERGED_DIR)")


def spec_for(source: Path, encoder_only: bool = False, unnamed_head_ok: bool = False) -> tuple[dict, Path]:
    """The spec (a dict, without name and weights) of the model at ``source``, and the weights path.
    ``encoder_only``: the encoder alone (a Hugging Face checkpoint's head is then not loaded); ``unnamed_head_ok``:
    see :func:`bertc.importers.hf.spec_from`."""
    from bertc.checkpoints import (hub_snapshot, index_kind, open_checkpoint, refuse_broken_links,
                                   refuse_git_lfs_pointers, refuse_special_files)
    from bertc.importers import bert_tf1, hf, model_garden

    source = hub_snapshot(Path(source))
    root = source if source.is_dir() else source.parent
    refuse_broken_links(root)
    _refuse_an_adapter(source, root)
    _refuse_a_shard(source, root)
    _refuse_training_state(source)
    weights_file = source.suffix in (".safetensors", ".bin", ".pt", ".pth") or index_kind(source.name) is not None
    if (root / "modules.json").exists() or (source.is_dir() and (root / "config.json").exists()) \
            or (weights_file and (root / "config.json").exists()):
        refuse_special_files(root)
        refuse_git_lfs_pointers(root)
        checkpoint = open_checkpoint(source)  # the weights must be there and readable
        if not checkpoint.names():   # the build would list every weight as missing
            raise WeightsError(f"{checkpoint.location}: holds no tensors: not the trained weights of a model (an "
                               f"empty or damaged file; download it again)")
        from bertc.text import check_tokenizer

        check_tokenizer(source)   # a damaged tokenizer file is said now, not when the build copies it
        checkpoint_configs(source)   # as is a config the build copies that cannot be copied
        if not encoder_only:
            _refuse_a_sentence_transformer_without_modules(root)
        return hf.spec_from(source, checkpoint.names(), encoder_only, unnamed_head_ok), source
    if encoder_only:
        raise WeightsError(f"{source}: --encoder-only applies to Hugging Face checkpoints")
    build = source if source.is_dir() else source.parent if source.suffix == ".keras" else None
    if build is not None and (build / "spec.json").exists() and (build / "model.keras").exists() \
            and (source.is_dir() or source.name == "model.keras"):
        from bertc.checkpoints import checkpoint_text, json_loads

        try:
            spec = json_loads(checkpoint_text(build / "spec.json", "spec"))
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{build / 'spec.json'}: not a readable bertc spec ({exc})") from None
        if not isinstance(spec, dict):
            raise WeightsError(f"{build / 'spec.json'}: not a bertc spec (a JSON object)")
        spec.pop("weights", None)
        spec.pop("name", None)
        spec["description"] = f"Imported from the bertc build {Path(os.path.abspath(build)).name}/ by bertc import."
        return spec, build / "model.keras"
    if source.suffix == ".keras":
        raise WeightsError(f"{source}: a .keras file is imported from its bertc build: model.keras with the "
                           f"build's spec.json beside it (the spec says what the model is)")
    checkpoint = open_checkpoint(source)
    if checkpoint.format == "tf_checkpoint":
        return bert_tf1.spec_from(source, checkpoint), checkpoint.location
    if checkpoint.format == "tf_object_checkpoint":
        return model_garden.spec_from(source, checkpoint), checkpoint.location
    raise WeightsError(f"{source}: cannot tell what model this is: a Hugging Face checkpoint needs its "
                       f"config.json beside the weights")


def no_tokenizer_note(source, spec: dict, spec_path: Optional[Path]) -> Optional[str]:
    """What to say when the checkpoint has no tokenizer beside its weights, else None: the build will bundle none
    (the same test as the build's, :func:`bertc.text.check_tokenizer` of the spec's weights), so ``bertc run``,
    ``bertc parity --text`` and ``--calibration`` refuse it; said at the import rather than at the first run."""
    from bertc.errors import BertcError
    from bertc.text import check_tokenizer
    from bertc.weights import resolve_weights_path

    weights = spec.get("weights")
    if not isinstance(weights, str) or not weights:
        return None
    try:
        if check_tokenizer(resolve_weights_path(weights, spec_path)) is not None:
            return None
    except (BertcError, OSError):   # a damaged tokenizer file: the import has said so already, or the build will
        return None
    return (f"{source} has no tokenizer (tokenizer.json, vocab.txt, vocab.json + merges.txt or a SentencePiece "
            f"model): `bertc run` (bertc.Runtime), `bertc parity --text` and `--calibration` will need one; put the "
            f"checkpoint's tokenizer files beside its weights and import again")


SPEC_NAME = r"[A-Za-z][A-Za-z0-9_.-]{0,63}"   # the spec's "name" (spec.py's pattern)


def check_spec_name(name, given_as: str = "name") -> None:
    """Refuse a spec name the spec would refuse, naming the argument (``--name`` / ``name``) rather than the
    imported spec (which the importer would otherwise blame, as "a bertc bug or an unusual config")."""
    import re

    from bertc.errors import InputError

    if name is not None and not (isinstance(name, str) and re.fullmatch(SPEC_NAME, name)):
        raise InputError(f"{given_as} {name!r}: a spec name starts with a letter, then up to 63 letters, digits, "
                         f"_ . or -")


def import_spec(source: Path, spec_path: Path, name: str | None = None, encoder_only: bool = False,
                force: bool = True) -> dict:
    """Write a spec for the checkpoint at ``source`` to ``spec_path`` (weights relative to it; ``"-"``: to standard
    output, weights absolute); returns it. An existing spec at ``spec_path`` is replaced only with ``force`` (never
    another file: the checkpoint's config.json); ``bertc import`` and :func:`bertc.import_spec` pass it as their
    user said (``--force``, ``force=True``; neither replaces a spec by default).
    The spec is validated before anything is written."""
    import json

    from bertc.errors import OutputError, SpecError, said
    from bertc.weights import relative_entry
    from bertc.spec import load_spec

    check_spec_name(name)
    from bertc.checkpoints import hub_snapshot

    source, stdout = hub_snapshot(Path(source)), str(spec_path) == "-"
    spec_path = Path(spec_path)
    if not stdout and os.path.lexists(spec_path) and not is_spec(spec_path):   # the checkpoint's config.json, ...
        raise OutputError(f"{spec_path} exists and is not a bertc spec (a JSON object with an encoder): an import "
                          f"replaces only a spec; choose another path")
    if not stdout and os.path.lexists(spec_path) and not force:   # a spec edited by hand was replaced from Python
        raise OutputError(f"{spec_path} already exists; pass {said('--force', 'force=True')} to replace it")
    spec, weights = spec_for(source, encoder_only)
    # spec_path "-": the spec goes to standard output, its weights absolute (it lies nowhere they are relative to)
    data = {"name": name or _spec_name(source), **spec,
            "weights": relative_entry(weights, Path(spec_path.resolve().anchor) if stdout
                                      else spec_path.resolve().parent)}
    try:
        loaded = load_spec(data)
    except SpecError as exc:
        raise WeightsError(f"{source}: the imported spec is not valid (a bertc bug or an unusual config):\n"
                           + "\n".join(f"  {p}: {m}" for p, m in exc.problems)) from None
    del loaded  # valid; the file keeps what import determined (defaults stay implicit)
    text = json.dumps(data, indent=2) + "\n"
    if stdout:
        import sys

        sys.stdout.write(text)
        sys.stdout.flush()
        return json.loads(text)
    try:
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        from bertc.report import write_text_atomic

        write_text_atomic(spec_path, text)
    except OSError as exc:
        raise OutputError(f"cannot write {spec_path}: {exc}") from None
    return json.loads(text)


def is_spec(path: Path) -> bool:
    """Whether ``path`` holds a bertc spec (what an import may replace): a JSON object with an encoder."""
    import json

    try:
        if not Path(path).is_file():
            return False
        with open(path, "rb") as f:
            value = json.loads(f.read(64 << 20))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(value, dict) and isinstance(value.get("encoder"), dict)


def load_weights(model, spec, source):
    """Load the trained weights at ``source`` into ``model`` (built from ``spec``): open the checkpoint,
    pick its importer, apply :func:`bertc.weights.load_into`. Returns the :class:`bertc.weights.LoadResult`."""
    from bertc.checkpoints import hub_snapshot, open_checkpoint, refuse_broken_links
    from bertc.weights import load_into

    source = hub_snapshot(Path(source))
    refuse_broken_links(source if source.is_dir() else source.parent)
    checkpoint = open_checkpoint(source)
    importer = importer_for(checkpoint)
    translate = importer.translator(checkpoint.names(), spec, location=checkpoint.location)
    result = load_into(model, checkpoint, translate, importer.NAME)
    result.source = str(Path(source).resolve())
    trained = getattr(checkpoint, "model", None)
    if trained is not None:
        same_outputs(model, trained, spec, checkpoint.location)
    return result


SOURCE_ATOL = 1e-4   # the same weights in the same graph agree to float32 rounding (~1e-6)


def same_outputs(model, trained, spec, location) -> None:
    """Refuse trained weights read from a Keras model (a .keras saved by Keras, not by bertc: deserialized to be
    read) whose model computes something else than ``spec``'s with those weights: weights load by name and shape, so
    an encoder under another head (mean pooling in place of the pooler), a changed activation or an added layer
    built, passed parity against the spec's model and exported a model that was not the trained one (found by a
    tester). Both models run on the same small batch; every output of the spec's model must be an output of the
    trained one, equal to :data:`SOURCE_ATOL` + 1e-4 x |value| (a model saved under a mixed-precision policy: to 2% of
    the output's largest value, + 1e-3)."""
    import numpy as np

    from bertc.inputs import make_inputs

    inputs = make_inputs(spec, 2, min(8, spec.encoder.max_sequence_length), np.random.default_rng(0))
    names = [t.name.split(":")[0] for t in model.inputs]
    try:
        theirs = trained({k: inputs[k] for k in names}, training=False)   # a functional model reads inputs by name
    except Exception as exc:
        raise WeightsError(f"{location}: the Keras model in it does not take the inputs of the spec's model "
                           f"({', '.join(names)}): {type(exc).__name__}: {' '.join(str(exc).split())[:300]}; it is "
                           f"not the model the spec describes") from None
    ours = model({k: inputs[k] for k in names}, training=False)
    if not isinstance(theirs, dict):
        theirs = dict(zip(getattr(trained, "output_names", None) or [], theirs if isinstance(theirs, (list, tuple))
                          else [theirs]))
    missing = [k for k in ours if k not in theirs]
    if missing:
        raise WeightsError(f"{location}: the Keras model in it has the outputs {sorted(theirs) or 'none named'}, the "
                           f"spec's model {sorted(ours)}: it is not the model the spec describes (its weights fit by "
                           f"name and shape, what it computes does not); build a spec of that model, or give the "
                           f"encoder's weights to a spec of yours with --init-from")
    # a model saved under a mixed-precision policy computes in 16 bits where the spec's computes in float32: held to
    # 2% of its output's range (bfloat16 keeps 8 bits: 0.4% a value, more through the layers), not to float32's bound
    half = any(getattr(getattr(layer, "dtype_policy", None), "compute_dtype", "float32") in ("float16", "bfloat16")
               for layer in getattr(trained, "layers", []))
    for name in ours:
        a, b = np.asarray(ours[name], np.float64), np.asarray(theirs[name], np.float64)
        bound = (0.02 * float(np.max(np.abs(b), initial=0.0)) + 1e-3) if half else SOURCE_ATOL + 1e-4 * np.abs(b)
        if a.shape != b.shape or not np.all(np.abs(a - b) <= bound):
            diff = "shape " + str(b.shape) if a.shape != b.shape else f"max abs diff {float(np.max(np.abs(a - b))):.3g}"
            raise WeightsError(f"{location}: the Keras model in it computes another {name!r} than the spec's model "
                               f"with the same weights ({diff} on a batch of 2): its layers or settings are not the "
                               f"spec's (a changed activation, another head, an added layer), so the build would not "
                               f"be the trained model; build the spec it was made from")


def checkpoint_configs(weights: Path) -> list[tuple[Path, str, str]]:
    """(path, name in OUT, text) of what ``bertc run`` reads of the checkpoint at ``weights``: its config.json
    (class names, ``problem_type``; as ``checkpoint_config.json``, since OUT is not a transformers directory) and
    sentence-transformers' ``config_sentence_transformers.json`` (a CrossEncoder's activation), each a JSON object
    read through the checks of a checkpoint's own files; a link to a file of another name outside the checkpoint
    is refused (:class:`WeightsError`): a credentials file that parses as JSON, or any file under a name nothing else
    reads, would be shipped in OUT."""
    from bertc.checkpoints import CHECKPOINT_CONFIG, check_link, checkpoint_text, json_loads, transformer_folder

    weights = Path(weights)
    source = weights if weights.is_dir() else weights.parent
    folder = transformer_folder(source)
    model_dir = folder if folder is not None and (folder / "config.json").is_file() else source
    wanted = [(model_dir / "config.json", CHECKPOINT_CONFIG), (source / CHECKPOINT_CONFIG, CHECKPOINT_CONFIG),
              (source / "config_sentence_transformers.json", "config_sentence_transformers.json")]
    found, names = [], set()
    for path, name in wanted:
        if path.is_file() and name not in names:
            check_link(path, source, "checkpoint config")
            try:
                text = checkpoint_text(path, "config")
                if not isinstance(json_loads(text), dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as exc:
                raise WeightsError(f"{path}: not a readable JSON config ({exc}); bertc copies it into the build "
                                   f"for bertc run") from None
            found.append((path, name, text))
            names.add(name)
    return found


def bundle_checkpoint_config(weights: Path, out: Path) -> list[str]:
    """Write into OUT what ``bertc run`` reads of the checkpoint (:func:`checkpoint_configs`), so that OUT runs the
    same anywhere. Returns the names written."""
    from bertc.errors import OutputError

    written = []
    for path, name, text in checkpoint_configs(weights):
        try:
            (Path(out) / name).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot copy {path} into the build: {exc}") from None
        written.append(name)
    return written


# settings of a spec that never change what a trained model computes at inference (training-time only)
_TRAINING_ONLY = ("dropout", "initializer")


def _differences(have, want, path: str = "$") -> list[tuple[str, object, object]]:
    """(JSON path, spec's value, checkpoint's value) where two spec sections differ, training-only keys aside."""
    if isinstance(have, dict) and isinstance(want, dict):
        found = []
        for key in sorted(set(have) | set(want), key=str):
            if any(word in str(key) for word in _TRAINING_ONLY):
                continue
            found += _differences(have.get(key), want.get(key), f"{path}.{key}")
        return found
    if isinstance(have, list) and isinstance(want, list) and len(have) == len(want):
        return [d for i, (a, b) in enumerate(zip(have, want)) for d in _differences(a, b, f"{path}[{i}]")]
    return [] if have == want else [(path, have, want)]


def check_checkpoint_config(spec, weights: Path) -> None:
    """Refuse to load a Hugging Face checkpoint into a spec that computes something else than its config.json
    says: weights load by name and shape, so a spec and a checkpoint that disagree on what leaves the shapes alone
    (the heads' count, the activation, a layer norm's epsilon, the positions) would build, pass parity against
    itself, and compute what the checkpoint was never trained for. The encoder (and the head, when both have one of
    the same type) must be what ``bertc import`` of the checkpoint gives; training-only settings (dropout, the
    initializer) may differ."""
    from bertc.checkpoints import open_checkpoint
    from bertc.errors import SpecError
    from bertc.spec import load_spec

    weights = Path(weights)
    root = weights if weights.is_dir() else weights.parent
    # a bertc build (OUT/, or its model.keras): held to the spec.json it was built from, as a checkpoint to its config
    build = (root / "spec.json").is_file() and (root / "model.keras").is_file() and \
        (weights.is_dir() or weights.name == "model.keras")
    if not build and (not ((root / "config.json").is_file() or (root / "modules.json").is_file()) or
                      open_checkpoint(weights).format not in ("safetensors", "pytorch")):
        return
    try:
        # (a config.json without architectures: the encoder compared, whatever head the weights hold; a reviewer
        # found the check skipped, the import's refusal of such a head being a WeightsError)
        expected, _ = spec_for(weights, encoder_only=spec.head is None, unnamed_head_ok=True)
        wanted = load_spec({"name": spec.name, **expected})
    except (WeightsError, SpecError):   # a config bertc cannot import: the spec was written by hand for it
        return
    have, want = spec.model_dump(mode="json"), wanted.model_dump(mode="json")
    if isinstance(have.get("encoder"), dict) and isinstance(want.get("encoder"), dict) and \
            have["encoder"].get("pooler") is False:
        # a spec may leave a checkpoint's pooler out: no head it validates with reads it (a pooler-less encoder-only
        # import given a head, a reviewer found refused as "the checkpoint's config true")
        want["encoder"]["pooler"] = False
    found = _differences(have.get("encoder"), want.get("encoder"), "$.encoder")
    if have.get("head") and want.get("head"):
        if have["head"].get("type") == want["head"].get("type"):
            found += _differences(have["head"], want["head"], "$.head")
        elif not _weightless(have["head"]) and not _one_choice_scorer(have["head"], want["head"]):
            # another head's trained weights (a sentence classifier's classifier.weight read by a token
            # classifier, loaded by name and shape): not this head's
            found.append(("$.head.type", have["head"].get("type"), want["head"].get("type")))
    more = f"\n  ... and {len(found) - 12} more" if len(found) > 12 else ""
    if found and build:
        shown = "\n".join(f"  {p}: the spec has {json_text(a)}, the build's spec.json {json_text(b)}"
                          for p, a, b in found[:12]) + more
        raise WeightsError(f"{weights}: the spec does not compute what this build's spec.json ({root / 'spec.json'}) "
                           f"says ({len(found)} difference{'s' if len(found) > 1 else ''}; whether or not the weights' "
                           f"shapes fit, the model would not be the trained one):\n{shown}\nbuild that spec.json "
                           f"(bertc build {root / 'spec.json'} -o OUT), or start a new model from these weights with "
                           f"--init-from {root}")
    if found:
        shown = "\n".join(f"  {p}: the spec has {json_text(a)}, the checkpoint's config {json_text(b)}"
                          for p, a, b in found[:12]) + (f"\n  ... and {len(found) - 12} more" if len(found) > 12 else "")
        architecture = "a sentence-transformers model" if (root / "modules.json").is_file() else \
            next(iter(_config_architectures(root)), None)
        raise WeightsError(f"{weights}: the spec does not compute what the config of this checkpoint"
                           + (f" ({architecture})" if architecture else "") + " says "
                           f"({len(found)} difference{'s' if len(found) > 1 else ''}; whether or not its weights' "
                           f"shapes fit, the model would not be the trained one):\n{shown}\nre-import it (bertc "
                           f"import {weights} -o SPEC --force) or point the spec at the checkpoint it was written "
                           f"for; bertc builds a trained model as it was trained (a new or resized head has no "
                           f"trained weights)")


def _one_choice_scorer(have: dict, want: dict) -> bool:
    """A multiple-choice checkpoint's head as a one-class classifier over the pooler: the same pooler and one-output
    classifier, scoring each (text, choice) row as the multiple-choice model scores each choice."""
    return want.get("type") == "multiple_choice" and have.get("type") == "classifier" and \
        have.get("num_classes") == 1 and have.get("pooling", "pooler") == "pooler" and not have.get("transform")


def _weightless(head: dict) -> bool:
    """Whether a spec's head (as JSON) has no weights of its own: a sentence embedding without dense layers, which
    any checkpoint's encoder can feed (the checkpoint's own head is then not read)."""
    return head.get("type") == "sentence_embedding" and not head.get("dense")


def _config_architectures(root: Path) -> list:
    """config.json's ``architectures`` (the transformers class it was saved from), [] where it names none (or
    cannot be read: the check above read it already)."""
    from bertc.importers.hf import read_json

    try:
        names = read_json(root / "config.json").get("architectures")
    except WeightsError:
        return []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def json_text(value) -> str:
    import json

    return "absent" if value is None else json.dumps(value)


def load_weights_stage(model, spec, weights: Path, out: Path, init_from=None) -> dict:
    """The pipeline's "load weights" stage: load, then bundle the tokenizer found beside the weights.
    Returns the report sections ``weights`` (and ``tokenizer`` when there is one)."""
    from bertc.checkpoints import refuse_special_files
    from bertc.text import bundle_tokenizer

    if init_from is not None:
        raise WeightsError(f"both trained weights ({weights}) and --init-from ({init_from}) were given; "
                           f"use one of them")
    root = Path(weights) if Path(weights).is_dir() else Path(weights).parent
    if (root / "config.json").exists() or (root / "modules.json").exists():   # a Hugging Face directory: its
        refuse_special_files(root)                                             # tokenizer files are read too
    check_checkpoint_config(spec, weights)
    result = load_weights(model, spec, weights)
    sections = {"weights": {**result.to_json(), "summary": result.summary()}}
    # recorded even when empty: bertc run then knows the build bundled all there was, and reads nothing beside the
    # trained weights (which may have changed, or gone, since)
    sections["weights"]["bundled_config"] = bundle_checkpoint_config(Path(weights), Path(out))
    tokenizer = bundle_tokenizer(Path(weights), out)
    if tokenizer:
        beyond = _tokens_beyond_vocabulary(spec, Path(out))
        if beyond:
            tokenizer["beyond_vocabulary"] = beyond
        sections["tokenizer"] = tokenizer
    return sections


def _tokens_beyond_vocabulary(spec, out: Path) -> Optional[str]:
    """What the bundled tokenizer has beyond the model's vocabulary (tokens added to it after training, the
    embeddings not resized), said in the report: ``bertc run`` refuses a text with such a token. None when it has
    nothing beyond, or when it cannot be read here (the tokenizers library is optional)."""
    from bertc.spec import dump_spec

    encoder = dump_spec(spec)["encoder"]   # a scaffold's vocabulary is its embedding's
    vocab = encoder.get("vocab_size") or (encoder.get("embedding") or {}).get("vocab_size")
    try:
        from bertc.text import load_tokenizer

        tok = load_tokenizer(out, 8)
    except Exception:   # no tokenizers library, or a tokenizer bertc run will name the problem of itself
        return None
    size = tok.get_vocab_size(True)
    if not vocab or size <= vocab:
        return None
    extra = [tok.id_to_token(i) for i in range(vocab, min(size, vocab + 5))]
    return (f"{size - vocab:,} token(s) beyond the model's vocabulary of {vocab:,} ({', '.join(map(repr, extra))}"
            f"{', ...' if size - vocab > 5 else ''}): added to the tokenizer after training, never given embeddings; "
            f"bertc run refuses a text with one")


# The Hugging Face families beyond BERT / ALBERT, one module each, registering itself with bertc.importers.hf
# (imported here rather than at the bottom of hf.py, which each of them imports: no import cycle).
from bertc.importers import hf_roberta  # noqa: E402,F401
from bertc.importers import hf_distilbert  # noqa: E402,F401
from bertc.importers import hf_electra  # noqa: E402,F401
from bertc.importers import hf_mpnet  # noqa: E402,F401
from bertc.importers import hf_deberta  # noqa: E402,F401
from bertc.importers import hf_modernbert  # noqa: E402,F401
