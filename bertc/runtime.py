"""Run a built model on text: ``bertc run OUT INPUT -o RESULT`` and ``bertc.Runtime("OUT").run(texts)``.

``Runtime(out)`` reads OUT's report.json (no TensorFlow), picks the artifact for this host
(:func:`choose_artifact`), and holds an :class:`bertc.engine.Engine`: the bundled tokenizer, one ONNX Runtime
session and the decoding of the model's outputs into results (the batching and the results of each kind of model
are described there). The engine's whole state travels as a small picklable :class:`bertc.engine.EngineParts` (the
model bytes, the tokenizer JSON, the labels), which is how each Ray actor (:mod:`bertc.run_ray`) builds its own
engine without seeing OUT; in this process the model stays in its file, held open (:class:`_ModelFile`).
"""
from __future__ import annotations

import errno
import json
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from bertc.backends import (CPU, CUDA, PROVIDER_SUFFIX, artifact_info, backend_name, no_onnxruntime, onnx_providers,
                            provider_missing)
from bertc.engine import (DEFAULT_BATCH, DEFAULT_BATCH_TOKENS, DEFAULT_DOC_STRIDE, DEFAULT_HYPOTHESIS, DEFAULT_TOP_K,
                          POSITIONS, SIMILARITIES, Engine, EngineParts, windows)
from bertc.errors import (BackendLoadError, BertcError, DamagedBuild, InputError, MissingLibrary, NoOnnxRuntime,
                          command_line_running, said)
from bertc.run_io import Record
from bertc.text import lowercases_input

STANDARD_INPUTS = ("input_word_ids", "input_mask", "input_type_ids")
# a masked-LM head's logits (rows x longest x vocabulary floats) per model call, at most: its batches are cut to fit
# (a 50,265-token vocabulary: 667 padded tokens, 128 MB), since those logits outgrow everything else the call holds
FILL_MASK_LOGITS = 1 << 25
MASK_TOKENS = ("[MASK]", "<mask>", "[mask]")   # the mask token when the tokenizer's config does not name one
DEFAULT_WINDOW = 2048   # texts tokenized, sorted and batched together (bounded memory)
CLOSED = "this Runtime was closed (Runtime.close()): create it again"
STALL_SECONDS = 0.2     # a streamed result from a pipe: a text waits this long at most for others to batch with



# --- the build directory -----------------------------------------------------------------------------

def read_build(out) -> tuple[dict, dict]:
    """report.json and spec.json of a bertc build directory; an :class:`InputError` if it is not one."""
    out = Path(out)
    if not out.is_dir():
        raise InputError(f"{out}: no such build directory" if not out.exists() else f"{out}: not a directory")
    report_path = out / "report.json"
    try:
        found = report_path.is_file()
    except OSError as exc:   # a folder that may not be searched (Permission denied): a raw PermissionError before
        raise InputError(f"{out}: cannot read the build directory: {exc.strerror or exc}") from None
    if not found:
        from bertc.output import sibling_stem

        named = out.resolve()   # "." or "/" has no name of its own: the working directory's, or none
        failed = named.with_name(f"{sibling_stem(named.name)}.failed") if named.name else None   # where a failed
        hint = f" (a failed build's report is in {failed}/)" if failed is not None and failed.is_dir() else ""   # build
        # of OUT left its report
        raise DamagedBuild(f"{out}: not a bertc build directory (no report.json; make one with bertc build){hint}")
    read = {}
    for path in (report_path, out / "spec.json"):
        try:
            read[path.name] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:   # UnicodeDecodeError is a ValueError
            why = (exc.strerror or exc) if isinstance(exc, OSError) else exc
            raise DamagedBuild(f"{out}: not a readable bertc build ({path}: {why}); rebuild it, or restore the "
                               f"file") from None
    report, spec = read["report.json"], read["spec.json"]
    if not isinstance(report, dict) or "artifacts" not in report or "outputs" not in report:
        raise DamagedBuild(f"{out}/report.json: not a bertc build report (no artifacts / outputs)")
    parity = report.get("parity") if isinstance(report.get("parity"), dict) else {}
    override = parity.get("tolerance_override")
    if isinstance(override, dict):
        # an earlier bertc's `bertc parity OUT --atol X` put its verdict in the build's place (this one keeps it
        # beside it): the status it set, passed or failed, is not the spec's verdict, so neither is served
        from bertc.report import tolerance_flags

        tolerances = tolerance_flags(override)
        raise InputError(f"{out}: the build's status {report.get('status')!r} is not its spec's verdict: its last "
                         f"parity run ({tolerances}, by an earlier bertc) judged it under other tolerances and put "
                         f"that verdict in its place; `bertc parity {out}` judges it again by its spec")
    if report.get("status") != "passed":
        raise InputError(f"{out}: the build's status is {report.get('status')!r}, not 'passed'; rebuild it")
    return report, spec


# every Runtime of this process: a child of fork() gets fresh locks (one another thread held at the fork would
# never be released there: the child hung at its first run)
_RUNTIMES: "weakref.WeakSet[Runtime]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for runtime in list(_RUNTIMES):
        runtime._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _file_stamp(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class _ModelFile:
    """The ONNX file a Runtime checked against the build's manifest, held open instead of held in memory: ONNX
    Runtime's session is opened from its path while the path still names this file, unchanged (a session made from
    bytes keeps them as long as it lives: twice the model's size in memory), and its bytes are read again from the
    open file to send the Runtime to another process, or to open a session once the path no longer serves (a
    rebuild replaced the file, the process may no longer open it). Bytes read again must be those first read (their
    sha256): a file changed in place since is refused; one only touched is not."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self.fd)
        self.stamp = _file_stamp(os.fstat(self.fd))
        self.digest: Optional[str] = None   # the sha256 of the first read

    def read(self) -> bytes:
        import hashlib

        if not self._closer.alive:
            raise InputError(CLOSED)
        stamp = _file_stamp(os.fstat(self.fd))
        chunks, at = [], 0
        while chunk := os.pread(self.fd, 1 << 30, at):
            chunks.append(chunk)
            at += len(chunk)
        data = b"".join(chunks)
        digest = hashlib.sha256(data).hexdigest()
        if self.digest is not None and digest != self.digest:
            raise BackendLoadError(f"{self.path}: changed in place since this Runtime checked it against the build's "
                                   f"manifest: create the Runtime again")
        self.digest, self.stamp = digest, stamp
        return data

    def at_path(self) -> bool:
        """Whether the file's path still names this file, unchanged since it was read."""
        try:
            return self._closer.alive and _file_stamp(os.stat(self.path)) == self.stamp
        except OSError:
            return False

    def close(self) -> None:
        self._closer()


def _directory_identity(out: Path) -> tuple:
    """Which build ``out`` holds now: the (device, inode) of its directory, and its report's creation time and file
    manifest (``bertc build --force`` puts a new directory at OUT, whose inode number may be the one just freed:
    the report tells such builds apart; ``bertc parity OUT`` rewrites report.json, and changes neither)."""
    from bertc.output import _HOLD

    try:
        st = os.stat(out)
        holding = [n for n in os.listdir(out) if n.startswith(_HOLD)]
        report = json.loads((Path(out) / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    if holding:   # a build replacing OUT's files one by one (a mount point, the working directory), or killed at it
        raise InputError(f"{out}: a build is replacing its files in place ({holding[0]} holds the old ones), or was "
                         f"killed while doing so: wait for it and create the Runtime again (or rebuild OUT)")
    made = report.get("created") if isinstance(report, dict) else None
    files = json.dumps(report.get("manifest"), sort_keys=True, default=str) if isinstance(report, dict) else ""
    return st.st_dev, st.st_ino, made, files


def tokenizer_max_length(report: dict) -> Optional[int]:
    """The bundled tokenizer's ``model_max_length`` (tokenizer_config.json, as the build recorded it), or None
    where it has none or transformers' "no limit" (a huge number)."""
    from bertc.text import model_max_length

    return model_max_length((report.get("tokenizer") or {}).get("model_max_length"))


def max_sequence_length(spec: dict) -> int:
    enc = spec.get("encoder", {})
    return int(enc.get("max_sequence_length") or (enc.get("embedding") or {}).get("max_sequence_length") or 512)


def result_kind(report: dict, spec: Optional[dict] = None) -> tuple[str, dict]:
    """What one result of this model is (see the module docstring) and which outputs make it. ``spec``: the
    build's spec.json (its head type tells a masked-LM head's per-token logits from a token classifier's)."""
    outputs = {o["name"]: o for o in report["outputs"]}
    extra = [i["name"] for i in report["inputs"] if i["name"] not in STANDARD_INPUTS]
    if extra == [POSITIONS] and "masked_lm" in outputs:   # a pretrainer: logits at the positions it is given
        return "fill_mask", {"logits": "masked_lm"}
    if extra:
        raise InputError(f"bertc run cannot feed this model: it needs {', '.join(extra)} besides the tokens; "
                         f"build the encoder alone (bertc import --encoder-only) or with a task head to run it on text")
    if "start_logits" in outputs and "end_logits" in outputs:
        return "span", {"start": "start_logits", "end": "end_logits"}
    head = ((spec or {}).get("head") or {}).get("type")
    if head == "multiple_choice" and "logits" in outputs:
        return "choice", {"logits": "logits"}
    for name in ("masked_lm", "logits"):
        if name in outputs and outputs[name]["seq_axis"] is not None and (name == "masked_lm" or head == "masked_lm"):
            return "fill_mask", {"logits": name}
    if "masked_lm" in outputs:
        raise InputError("bertc run cannot decode this model's masked_lm output (neither per token nor at "
                         f"{POSITIONS}); build the encoder alone (bertc import --encoder-only) or with a task head")
    if "logits" in outputs:
        return ("tags" if outputs["logits"]["seq_axis"] is not None else "classification"), {"logits": "logits"}
    for name in ("sentence_embedding", "pooled_output"):
        if name in outputs:
            return "embedding", {"embedding": name}
    pooled = [o["name"] for o in report["outputs"] if o["seq_axis"] is None and o["kind"] == "features"]
    if len(pooled) == 1:
        return "embedding", {"embedding": pooled[0]}
    if list(outputs) == ["sequence_output"]:   # an encoder without pooler or head: features per token only
        raise InputError("bertc run gives one result per text, and this model outputs sequence_output alone (features "
                         "per token: an encoder without pooler or head). For a sentence embedding, give its spec the "
                         "head {\"type\": \"sentence_embedding\", \"pooling\": \"mean\"} (or \"first\") and build "
                         "it again")
    raise InputError(f"bertc run does not know what a result of this model is (outputs: {', '.join(outputs)})")


def passed_parity(report: dict, artifact_id: str, provider: str) -> Optional[bool]:
    """Whether the artifact passed parity on ``provider``: True, False, or None when it was not compared."""
    parity = report.get("parity")
    if not parity:
        return None
    name = backend_name(artifact_id, provider)
    if name in (parity.get("load_errors") or {}):
        return False
    rows = [r for r in parity.get("results", []) if r.get("backend") == name]
    return all(r.get("passed") for r in rows) if rows else None


@dataclass(frozen=True)
class Choice:
    artifact: str
    path: str
    provider: str
    precision: str
    why: str

    def describe(self) -> str:
        return f"{self.path} ({self.artifact}, {self.precision}, {PROVIDER_SUFFIX.get(self.provider, self.provider)}): {self.why}"


def _measured(report: dict, artifact_id: str) -> str:
    """The reduced-precision artifact's speed against fp32 as its build measured it, where it did: it is chosen for
    having passed parity (int8 is the faster on any model of real size; on a tiny one the build may have measured it
    slower, and the line said "the fastest" all the same)."""
    speed = ((report["artifacts"].get(artifact_id) or {}).get("quantization") or {}).get("speed")
    if not isinstance(speed, dict) or not isinstance(speed.get("ratio"), (int, float)):
        return ""
    shape = (f" at B{speed['batch']} x S{speed['sequence_length']}"
             if "batch" in speed and "sequence_length" in speed else "")
    return f" ({speed['ratio']:.2f}x the optimized fp32 artifact's latency in the build{shape})"


def _batch_note(precision: str, fp32: list) -> str:
    """What an int8 artifact's results depend on: dynamic int8 quantizes each activation with one range over the whole
    batch tensor; ``fp32``: the optimized fp32 artifacts that do not."""
    if precision != "int8":
        return ""
    other = f" ({said(f'--artifact {min(fp32)}', f'artifact={min(fp32)!r}')} does not)" if fp32 else ""
    return (f"; its activation ranges are each batch's, so a text's result shifts a little with the texts batched "
            f"with it{other}")


def _checked_against_manifest(choice: Choice, report: dict, digest: Optional[str] = None,
                              data: Optional[Path] = None) -> Choice:
    """``choice``, its ``why`` saying so when the file's bytes are not those the build wrote (its sha256 in the
    report's manifest): "passed parity" was said of a file whose weights had since been changed (found by a
    tester). ``digest``: the sha256 of the bytes the Runtime read (:class:`_ModelFile`); or, for ``data`` (the
    model's external data file, which ONNX Runtime reads itself), that file, read in blocks."""
    import dataclasses

    name = choice.path if data is None else data.name
    entry = (((report.get("manifest") or {}).get("files") or {}).get(name)
             if isinstance(report.get("manifest"), dict) else None)
    if not isinstance(entry, dict) or not entry.get("sha256"):
        return choice
    if data is not None:
        from bertc.manifest import sha256_file

        digest = sha256_file(data)
    if digest == entry["sha256"]:
        return choice
    return dataclasses.replace(choice, why=f"{choice.why}; but {name} has CHANGED since the build (its sha256 "
                                           f"is not the manifest's): the build's parity judged the file it wrote, "
                                           f"not this one (bertc parity OUT checks this one)")


def _rank(artifact_id: str, info: dict, provider: str) -> int:
    """Lower is preferred: reduced precision that passed parity first (int8 on CPU, fp16 on CUDA), then
    bertc's optimized fp32 artifacts, then the portable model.onnx."""
    if info["precision"] == ("fp16" if provider == CUDA else "int8"):
        return 0
    if info["precision"] != "fp32":
        return 9
    return 2 if artifact_id == "onnx" else 1


def choose_artifact(report: dict, artifact: Optional[str] = None, device: str = "auto") -> Choice:
    """The ONNX artifact to run on this host. CUDA when onnxruntime has it (``device="auto"``); a
    reduced-precision artifact only where it passed parity on that provider; fp32 artifacts that passed
    parity (or whose parity was not run) next, bertc's optimized ones before model.onnx; among equals, a
    padding-free one (``model.packed*.onnx``: the same values wherever run reads them), then an artifact whose
    report entry says ``"preferred": true``, then the report's order. ``artifact`` (an id
    of report.json's artifacts or a file name) overrides the choice."""
    available = onnx_providers(probe=device != "cpu")   # CUDA is not tried for a run told to use the CPU
    if not available:
        raise NoOnnxRuntime(no_onnxruntime())
    if device == "cuda" and CUDA not in available:
        raise InputError(f"{said('--device cuda', 'device=' + repr(device))}: {provider_missing(CUDA)}")
    providers = [CUDA, CPU] if device == "cuda" or (device == "auto" and CUDA in available) else [CPU]
    infos = {k: artifact_info(k, v) for k, v in report["artifacts"].items()}
    onnx = {k: v for k, v in infos.items() if v["format"] == "onnx"}
    if artifact is not None:
        asked = said(f"--artifact {artifact}", f"artifact={artifact!r}")
        matches = [k for k, v in onnx.items() if artifact in (k, v["path"])]
        if not matches:
            have = ", ".join(f"{k} ({v['path']})" for k, v in onnx.items()) or "none"
            dropped = (report.get("dropped_variants") or {}) if isinstance(report.get("dropped_variants"), dict) else {}
            gone = next((d for k, d in dropped.items() if isinstance(d, dict) and artifact in (k, d.get("file"))), None)
            if gone is not None:   # not a typo: the build made it and dropped it
                best = f" (best: {gone['best']})" if gone.get("best") else ""
                raise InputError(f"{asked}: the build dropped this variant: {gone.get('reason')}{best}; "
                                 f"it has: {have}")
            raise InputError(f"{asked}: not an ONNX artifact of this build (it has: {have})")
        k = matches[0]
        for provider in providers:
            if provider in onnx[k]["providers"] and provider in available:
                verdict = passed_parity(report, k, provider)
                why = {True: "passed parity", False: "FAILED parity in this build", None: "parity not run"}[verdict]
                fp32 = [f for f, v in onnx.items() if v["precision"] == "fp32" and _rank(f, v, provider) == 1]
                return Choice(k, onnx[k]["path"], provider, onnx[k]["precision"],
                              f"as asked ({said('--artifact', 'artifact')}); {why}"
                              f"{_batch_note(onnx[k]['precision'], fp32)}")
        raise InputError(f"{asked}: meant for {', '.join(onnx[k]['providers'])}, none available here")
    for provider in providers:
        candidates = []
        for order, (k, info) in enumerate(onnx.items()):
            if provider not in info["providers"]:
                continue
            verdict = passed_parity(report, k, provider)
            if verdict is None and info["precision"] == "fp32" and provider == CUDA:
                verdict = passed_parity(report, k, CPU)  # an fp32 artifact checked on CPU runs on CUDA (no TF32)
            if verdict is False or (verdict is None and info["precision"] != "fp32"):
                continue
            # a padding-free artifact computes what run reads (the real tokens, pooled and sentence outputs) as
            # its padded counterpart does, and skips the padding's work: first among equals
            padding_free = info.get("padded_positions") == "zeros"
            candidates.append((_rank(k, info, provider), not padding_free, not info.get("preferred", False), order, k,
                               verdict))
        if candidates:
            rank, padded, _, _, k, verdict = min(candidates)
            note = "passed parity" if verdict else "parity was not run in this build"
            what = {0: f"{onnx[k]['precision']}, {note}{_measured(report, k)}", 1: f"optimized fp32, {note}",
                    2: f"the portable export, {note}"}.get(rank, note)
            if not padded:
                what += "; padding-free (per-token work on the real tokens only)"
            fp32 = [c[4] for c in candidates if c[0] == 1]
            return Choice(k, onnx[k]["path"], provider, onnx[k]["precision"],
                          what + _batch_note(onnx[k]["precision"], fp32))
    raise InputError("no ONNX artifact of this build can run here (none exported, or none passed parity)")


# the JSON files of a build that bertc run reads besides report.json and spec.json, where the build bundled them: the
# checkpoint's config.json (as checkpoint_config.json; config.json itself in a build that is also a transformers
# directory), sentence-transformers' configs, the tokenizer's settings
BUILD_JSON = ("checkpoint_config.json", "config.json", "config_sentence_transformers.json", "sentence_bert_config.json",
              "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def build_json(out: Path, name: str) -> Optional[dict]:
    """OUT's ``name`` (a JSON object), or None where OUT has no such file. One that is there and cannot be read, is
    not JSON or not an object is a damaged build, refused naming the file as a damaged report.json is: read past,
    the run would silently lose what it says (class names, a prompt, lowercasing)."""
    path = Path(out) / name
    if not path.exists():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:   # UnicodeDecodeError is a ValueError
        raise DamagedBuild(f"{out}: not a readable bertc build ({path}: {exc}); rebuild it, or restore the file") \
            from None
    if not isinstance(config, dict):
        raise DamagedBuild(f"{out}: not a readable bertc build ({path}: not a JSON object, but "
                         f"{type(config).__name__}); rebuild it, or restore the file")
    return config


def check_build_files(out: Path, report: dict) -> None:
    """Refuse a build whose bundled JSON files (:data:`BUILD_JSON`) are there but unreadable (:func:`build_json`),
    or that lacks a checkpoint config its report says it bundled (``weights.bundled_config``): run would read the
    one beside the trained weights instead, which may have changed since, or none."""
    for name in BUILD_JSON:
        build_json(out, name)
    bundled = (report.get("weights") or {}).get("bundled_config") or []
    for name in bundled if isinstance(bundled, list) else []:
        if isinstance(name, str) and not (Path(out) / name).exists():
            raise DamagedBuild(f"{out}: not a readable bertc build ({Path(out) / name}, which the build bundled, is "
                             f"missing); rebuild it, or restore the file")


def _checkpoint_configs(out: Path, report: dict, name: str = "config.json") -> Iterator[dict]:
    """The Hugging Face config.json (or ``name``) of the build: OUT's copy (bundled by the build as
    ``checkpoint_config.json``, or OUT's ``name``), the first of them there. Only a build from before the build
    bundled these files (its report records no ``weights.bundled_config``, and OUT has no checkpoint_config.json)
    reads the one beside the trained weights, where that can be read; a later build bundled all there was, so what
    it did not bundle is absent, whatever the weights' directory holds now. One in OUT that cannot be read is an
    error (:func:`build_json`). At most one config."""
    from bertc.checkpoints import CHECKPOINT_CONFIG

    for inside in ([CHECKPOINT_CONFIG] if name == "config.json" else []) + [name]:
        config = build_json(out, inside)
        if config is not None:
            yield config
            return
    folder = _weights_folder(out, report)
    if folder is not None:
        try:
            config = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(config, dict):
            yield config


def _weights_folder(out: Path, report: dict) -> Optional[Path]:
    """The folder of the trained weights (report.json's ``weights.source``) where a build from before builds bundled
    the checkpoint's configs reads them (its report records no ``weights.bundled_config``, and OUT has no
    checkpoint_config.json); None for any other build."""
    from bertc.checkpoints import CHECKPOINT_CONFIG

    weights = report.get("weights") or {}
    source = weights.get("source") if isinstance(weights, dict) else None
    if not source or "bundled_config" in weights or (Path(out) / CHECKPOINT_CONFIG).exists():
        return None
    return Path(source) if Path(source).is_dir() else Path(source).parent


def legacy_config_note(out: Path, report: dict) -> Optional[str]:
    """What to tell the user of a build from before builds bundled the checkpoint's config.json (its report records
    no ``weights.bundled_config`` and OUT holds none), whose class names, score function and prompts are read from
    the folder of the trained weights as it is today (:func:`_checkpoint_configs`): a folder edited since, or gone
    (OUT copied to another machine), changes its results with no change to OUT. None for any other build."""
    from bertc.text import ST_CONFIG

    folder = _weights_folder(out, report)
    if folder is None or (Path(out) / "config.json").exists():   # OUT's own config.json is read first
        return None
    found = [n for n in ("config.json", ST_CONFIG) if (folder / n).is_file()]
    if found:
        return (f"this build, from an earlier bertc, bundles no checkpoint config: {' and '.join(found)} read from "
                f"{folder} as it is now (class names, score function, prompts); build it again with this bertc to "
                f"bundle them")
    return (f"this build, from an earlier bertc, bundles no checkpoint config, and {folder} holds none now: class "
            f"names LABEL_i and the default score function; build it again from its checkpoint with this bertc")


def read_labels(out: Path, report: dict, classes: Optional[int]) -> Optional[list[str]]:
    """The checkpoint's class names (``id2label`` of a Hugging Face config.json beside the trained weights,
    or in OUT), when the build knows them and they number the model's classes. Class ``i`` is named by
    ``id2label[i]`` as transformers names it, never by its place among the keys: a config whose keys are not
    0 .. n - 1 (``{0, 1, 2, 10}`` on 4 classes) names none, so its classes are ``LABEL_i``."""
    for config in _checkpoint_configs(out, report):
        id2label = config.get("id2label")
        if isinstance(id2label, dict) and id2label:
            try:
                by_id = {int(k): str(v) for k, v in id2label.items()}
            except (TypeError, ValueError):
                continue
            n = len(by_id) if classes is None else classes
            if sorted(by_id) == list(range(n)):
                return [by_id[i] for i in range(n)]
    return None


SCORES = ("softmax", "sigmoid", "raw")
# a sentence-transformers CrossEncoder's activation (config.json) -> the scores it gives
_CROSS_ENCODER = {"torch.nn.modules.activation.Sigmoid": "sigmoid", "torch.nn.modules.linear.Identity": "raw"}


MAX_THREADS = 64   # the most intra-op threads a Runtime takes, or 4 a core where that is more


def check_threads(threads: Optional[int]) -> None:
    """Refuse more intra-op threads than this machine can use (:data:`MAX_THREADS`, or 4 a core): 3,000 on 2 cores
    spent minutes creating the pool, deaf to SIGTERM. Checked where this process makes its sessions; over Ray the
    threads are each actor's, checked against the CPUs of the cluster's nodes (:func:`bertc.run_ray.run_ray`), which
    may be many more than the client's."""
    most = max(MAX_THREADS, 4 * (os.cpu_count() or 1))
    if threads is not None and threads > most:
        raise InputError(f"threads {threads}: more than {most} ONNX Runtime threads (4 a core of this machine's "
                         f"{os.cpu_count()}, at least {MAX_THREADS}) only slow a run down; one a core is fastest")


def cross_encoder_activations(out: Path, report: dict) -> list:
    """The activations a sentence-transformers CrossEncoder records for its scores, most recent format first
    (``activation_fn`` of config_sentence_transformers.json, v5 on; config.json's
    ``sentence_transformers.activation_fn`` or the older ``sbert_ce_default_activation_function``), None for
    one that names none; [] where the build's checkpoint was no CrossEncoder."""
    found = []
    for config in _checkpoint_configs(out, report, "config_sentence_transformers.json"):
        if config.get("model_type") == "CrossEncoder":
            found.append(config.get("activation_fn"))
    for config in _checkpoint_configs(out, report):
        st = config.get("sentence_transformers")
        if isinstance(st, dict) or "sbert_ce_default_activation_function" in config:
            found.append((st.get("activation_fn") if isinstance(st, dict) else None)
                         or config.get("sbert_ce_default_activation_function"))
    return found


def is_cross_encoder(out: Path, report: dict) -> bool:
    """Whether the build's checkpoint was a sentence-transformers CrossEncoder."""
    return bool(cross_encoder_activations(out, report))


def score_function(out: Path, report: dict, classes: Optional[int]) -> tuple[str, str]:
    """(one of :data:`SCORES`, why) for a classifier's logits, as the checkpoint's own tools score them: a
    sentence-transformers CrossEncoder's activation (``activation_fn`` of config_sentence_transformers.json, or in
    config.json ``sentence_transformers.activation_fn`` or the older ``sbert_ce_default_activation_function``:
    Sigmoid, or Identity for raw scores such as ms-marco's); else
    transformers' text-classification pipeline: ``problem_type`` regression raw, multi-label or a single class
    sigmoid (a single class whatever its problem_type says: the softmax of one logit is always 1), otherwise
    softmax."""
    for activation in cross_encoder_activations(out, report):
        if activation in _CROSS_ENCODER:
            return _CROSS_ENCODER[activation], f"the CrossEncoder activation {activation.rsplit('.', 1)[-1]}"
    for config in _checkpoint_configs(out, report):
        problem = config.get("problem_type")
        if problem == "regression":
            return "raw", "problem_type regression"
        if problem == "multi_label_classification":
            return "sigmoid", "problem_type multi_label_classification"
        if problem == "single_label_classification" and classes != 1:   # the pipeline: one class is sigmoid first
            return "softmax", "problem_type single_label_classification"
        break
    if classes == 1:
        return "sigmoid", "one class"
    return "softmax", "one label per text"


# a token classifier's word label (transformers' aggregation_strategy); "simple": a tag per token, grouped as tokens
AGGREGATIONS = ("first", "average", "max", "simple")


def zero_shot_ids(labels: Optional[list]) -> tuple[int, int]:
    """(entailment, contradiction) class ids of an NLI classifier, as transformers' zero-shot-classification
    pipeline finds them: the first label beginning with "entail" (any case); contradiction is the label
    beginning with "contradict" or "not_entail" / "not entail", else the pipeline's own rule (the last class
    when entailment is the first, else the first). Refused, naming the model's labels, without an entailment
    label."""
    names = [str(n) for n in labels or []]
    entail = next((i for i, n in enumerate(names) if n.lower().startswith("entail")), None)
    if entail is None:
        raise InputError("zero-shot classification needs an NLI model, whose config names an entailment class; "
                         + (f"this model's classes are {', '.join(names)}" if names else
                            "this build knows no class names (no id2label in the checkpoint's config.json)"))
    contra = next((i for i, n in enumerate(names) if i != entail and n.lower().replace(" ", "_").startswith(
        ("contradict", "not_entail"))), None)
    return entail, (contra if contra is not None else (len(names) - 1 if entail == 0 else 0))


def sentence_prompt(out: Path, report: dict, kind: str, prompt: Optional[str] = None,
                    prompt_name: Optional[str] = None, label: str = "prompt") -> tuple[str, str]:
    """(the text put before each input, why) as ``SentenceTransformer.encode`` does it: ``prompt`` itself
    (``""``: none), else the prompt named ``prompt_name`` among the model's ``prompts``
    (config_sentence_transformers.json, bundled in OUT by the build; e5's and bge's "query: "), else the model's
    ``default_prompt_name``'s, else none."""
    if prompt is not None and prompt_name is not None:   # label: "prompt", or "pair prompt" (the pair's second texts')
        raise InputError(f"{label} and {label} name: give one, not both")
    if kind != "embedding" and (prompt or prompt_name):
        raise InputError(f"prompts are for sentence embedders; this model gives {kind} results")
    from bertc.text import ST_CONFIG, read_prompts

    prompts, default = {}, None
    for config in _checkpoint_configs(out, report, ST_CONFIG):
        prompts, default = read_prompts(config)
        if default is not None and default not in prompts:
            raise InputError(f"config_sentence_transformers.json of {out}: default_prompt_name {default!r} is not "
                             f"one of its prompts ({', '.join(map(repr, prompts)) or 'none'})")
        break
    if prompt is not None:
        return prompt, "asked for" if prompt else ""
    if prompt_name is not None:
        if prompt_name not in prompts:
            raise InputError(f"{label} name {prompt_name!r}: the model's prompts are "
                             f"{', '.join(map(repr, prompts)) or 'none (config_sentence_transformers.json has no prompts)'}")
        return prompts[prompt_name], f"prompt name {prompt_name}"
    if kind == "embedding" and default is not None:
        return prompts[default], f"the model's default_prompt_name {default}"
    return "", ""




def similarity_function(out: Path, report: dict) -> tuple[str, str]:
    """(the name of one of :data:`SIMILARITIES`, why): the ``similarity_fn_name`` of the model's
    config_sentence_transformers.json, else cosine (sentence-transformers' default)."""
    for config in _checkpoint_configs(out, report, "config_sentence_transformers.json"):
        name = config.get("similarity_fn_name")
        if name is None:
            break
        if name not in SIMILARITIES:
            raise InputError(f"config_sentence_transformers.json of {out}: similarity_fn_name {name!r}: bertc run "
                             f"compares with {', '.join(SIMILARITIES)}")
        return name, "the model's similarity_fn_name"
    return "cosine", "sentence-transformers' default"


def _vocab_size(spec: dict) -> Optional[int]:
    encoder = spec.get("encoder") or {}
    size = encoder.get("vocab_size") or (encoder.get("embedding") or {}).get("vocab_size")
    return int(size) if isinstance(size, int) else None


def mask_token(out: Path, tokenizer) -> tuple[str, int]:
    """(the mask token, its id) of the bundled tokenizer: the one tokenizer_config.json (or
    special_tokens_map.json) names, else the first of :data:`MASK_TOKENS` it knows."""
    from bertc.text import _read_json

    named = []
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        value = _read_json(Path(out) / name).get("mask_token")
        value = value.get("content") if isinstance(value, dict) else value   # an AddedToken written out
        if isinstance(value, str) and value:
            named.append(value)
    for token in (*named, *MASK_TOKENS):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token, int(token_id)
    raise InputError(f"{out}: the bundled tokenizer has no mask token ({', '.join(dict.fromkeys((*named, *MASK_TOKENS)))}"
                     f" unknown to it), so bertc run cannot say where to fill in")


def truncation_default(out: Path, kind: str, report: Optional[dict] = None) -> bool:
    """Whether over-long texts are truncated when neither --truncate nor --no-truncate is given: when the
    bundled tokenizer.json turns truncation on, for sentence embedders (sentence-transformers always
    truncates to max_seq_length, which the import took as the model's max_sequence_length) and for a
    sentence-transformers CrossEncoder (``predict`` and ``rank`` always truncate their pairs)."""
    if kind == "embedding" or (kind == "classification" and report is not None and is_cross_encoder(out, report)):
        return True
    try:
        return bool(json.loads((Path(out) / "tokenizer.json").read_text(encoding="utf-8")).get("truncation"))
    except (OSError, ValueError, AttributeError):
        return False


# --- the runtime --------------------------------------------------------------------------------------

def _records(texts: Iterable, choices: bool = False, ranking: bool = False) -> Iterator[Record]:
    """Records of ``Runtime.run``'s texts: strings, (text, pair) tuples; for a multiple-choice model (``choices``)
    (text, [choice, ...]) or (text, pair, [choice, ...]) tuples; for a ranking (query, [document, ...])."""
    from bertc.run_io import _check_choices, check_unicode

    for n, t in enumerate(texts, 1):
        where = f"text {n}"
        options = None
        if choices:
            if not (isinstance(t, (tuple, list)) and len(t) in ((2,) if ranking else (2, 3))
                    and isinstance(t[-1], (tuple, list))):
                shape = ("a ranking takes (query, [document, ...]) tuples" if ranking else
                         "a multiple-choice model takes (text, [choice, ...]) or (text, pair, [choice, ...]) tuples")
                if isinstance(t, (tuple, list)) and len(t) in ((2,) if ranking else (2, 3)):   # the last is not a list
                    what = "documents" if ranking else "choices"
                    got = (f"its {what} are one string, not a list ([{t[-1]!r}] for one)" if isinstance(t[-1], str)
                           else f"its {what} are {_kind_of(t[-1])}, not a list or tuple")
                else:
                    got = f"got {_kind_of(t)}" + (f" of {len(t)}" if isinstance(t, (tuple, list)) else "")
                raise InputError(f"{where}: {shape}; {got}")
            options = _check_choices(list(t[-1]), where, ranking=ranking)
            t = t[0] if len(t) == 2 else tuple(t[:2])
        if isinstance(t, str):
            text, pair = t, None
        elif isinstance(t, (tuple, list)) and len(t) == 2 and all(isinstance(v, str) for v in t):
            text, pair = t
        elif isinstance(t, (tuple, list)) and len(t) == 2:
            which = "text" if not isinstance(t[0], str) else "pair"
            raise InputError(f"{where}: the {which} of a (text, pair) tuple is {_kind_of(t[0 if which == 'text' else 1])}"
                             f", not a string")
        elif isinstance(t, (tuple, list)):
            raise InputError(f"{where}: a tuple of {len(t)}; expected a string or a (text, pair) tuple of strings")
        else:
            raise InputError(f"{where}: expected a string or a (text, pair) tuple of strings, got {_kind_of(t)}")
        for value, what in ((text, "text"), (pair, "pair")):
            if value is not None and not value.strip():
                raise InputError(f"{where}: empty {what}")
            check_unicode(value, where, f"the {what}")
        yield Record(text, pair, where, options)


def _kind_of(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, (float, np.floating)) and value != value:   # pandas' missing value (None in a Series)
        return "a missing value (NaN)"
    if isinstance(value, (bytes, bytearray)):
        return "bytes (decode them to a string first)"
    return type(value).__name__


def _whole(name: str, value, minimum: Optional[int] = None, optional: bool = True) -> Optional[int]:
    """A count argument of :class:`Runtime`: a whole number (numpy integers too; a bool, a float or a string is
    refused, not converted), at least ``minimum`` if given (else its range is checked where it is used), or None
    where ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} {value!r}: a whole number, not {_kind_of(value)}")
    if minimum is not None and value < minimum:
        raise InputError(f"{name} {value!r}: at least {minimum}")
    return int(value)


def _flag(name: str, value, optional: bool = False) -> Optional[bool]:
    """A yes / no argument of :class:`Runtime`: True or False (a numpy bool too), or None where ``optional``; a
    string ("no" would be true), a number or anything else is refused, not read as its truth."""
    if value is None and optional:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} {value!r}: {'True, False or None' if optional else 'True or False'}, not "
                         f"{_kind_of(value)}")
    return bool(value)


def _text(name: str, value, optional: bool = True) -> Optional[str]:
    """A text argument of :class:`Runtime` (a prompt, a name, a template): a string, or None where ``optional``."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InputError(f"{name} {value!r}: a string, not {_kind_of(value)}")
    return value


DEVICES = ("auto", "cpu", "cuda")   # bertc run --device's choices


def _build_path(out) -> Path:
    """``Runtime``'s build directory: a path (a string or an ``os.PathLike``)."""
    import os

    if not isinstance(out, (str, os.PathLike)):
        raise InputError(f"out {out!r}: the build directory's path (a string or a pathlib.Path), not "
                         f"{_kind_of(out)}")
    if not os.fspath(out):   # an unset shell variable ("$OUT"): Path("") is the working directory, named "."
        raise InputError("the build directory's path is empty (an unset variable?): name the folder bertc build wrote")
    return Path(out)


class Runtime:
    """A built model ready to run on text.

    >>> rt = bertc.Runtime("out/")              # picks the artifact for this host (rt.choice says which)
    >>> rt.run(["a sentence", "another one"])   # embeddings: a (2, dim) float32 array; other heads: dicts
    >>> mc = bertc.Runtime("mc_out/")           # a multiple-choice model: a context and its choices
    >>> mc.run([("The cat sat on", ["the mat", "the moon"])])   # [{"choice": 0, ...}]

    ``artifact`` forces one of the build's ONNX artifacts (its id or file name); ``device`` is "auto"
    (CUDA when available), "cpu" or "cuda"; ``threads`` sets ONNX Runtime's intra-op threads (default:
    its own, one per core); ``spinning=False`` stops idle ORT threads from busy-waiting (for cores shared
    with other work); ``truncate`` None follows the tokenizer (:func:`truncation_default`), True cuts
    over-long texts to the model's maximum, False refuses them naming the text; ``scores`` (a classifier's:
    "softmax", "sigmoid", "raw") overrides what :func:`score_function` reads from the checkpoint's config;
    ``prompt`` (a text) or ``prompt_name`` (one of the model's) puts a prompt before each text, as
    ``SentenceTransformer.encode`` does, and with neither the model's default prompt applies
    (:func:`sentence_prompt`; ``prompt=""`` for none). ``top_k``: a masked-LM model's predictions per mask
    token (:data:`DEFAULT_TOP_K`). ``doc_stride``: a span labeler's context, or a token classifier's text, longer
    than the model's maximum is read in overlapping windows, and this many tokens are shared by neighbouring
    ones (:data:`DEFAULT_DOC_STRIDE`; :meth:`Engine.context_windows`); ``allow_no_answer``: a span labeler
    answers "" when its [CLS] start and end outscore every span (a model trained on SQuAD 2.0); ``aggregation``:
    how a token classifier labels a word from its tokens (:data:`AGGREGATIONS`, as transformers' pipeline).
    ``max_length``: tokens per model row at most, below the model's maximum (where texts are cut, and how long a
    long context's windows are: transformers' QA pipeline reads 384-token windows unless told otherwise).
    ``candidate_labels``: an NLI classifier
    (an entailment class in its config) classifies each text into these labels, zero-shot: each label put in
    ``hypothesis_template`` (:data:`DEFAULT_HYPOTHESIS`), entailment scored against the text, ``multi_label``
    each label alone (:meth:`Engine._zero_shot`). ``batch_size`` and ``max_batch_tokens`` bound each
    model call (texts; padded tokens, and through them attention's memory: :func:`batch_cuts`); ``window``
    texts are read, sorted by length and batched at a time. ``similarity``: a sentence embedder scores text pairs
    instead, each text embedded alone (with the prompt, if any) and the two compared by the model's similarity
    function (:func:`similarity_function`); without it, a pair given to a sentence embedder is refused.
    ``pair_prompt`` / ``pair_prompt_name``: the second texts' own prompt (a retrieval model's passages: e5's
    "passage: ", none for bge's), resolved as ``prompt`` is; by default the first texts' one. ``rank``: each
    record is a query and its documents, ordered best first (``top_k``: the best K) by a one-score classifier's
    (query, document) scores (a cross-encoder, as ``CrossEncoder.rank``), or by a sentence embedder's similarity of
    the query's embedding with each document's (the documents take ``pair_prompt``; as ``util.semantic_search``).
    ``embedding_precision``: a sentence embedder's embeddings as sentence-transformers' ``quantize_embeddings``
    writes them (float32, int8, uint8, binary, ubinary; :mod:`bertc.quantize_embeddings`); int8 and uint8 take
    their ranges from ``calibration_embeddings`` (float32 embeddings by the same model: an array or a .npy file).

    One Runtime may serve several threads at once: each gets exactly the results it would get alone (one ONNX
    Runtime session, whose calls run side by side; a span labeler's windowing tokenizer per thread), and
    ``truncated`` counts every thread's cut texts.
    """

    def __init__(self, out, artifact: Optional[str] = None, device: str = "auto", threads: Optional[int] = None,
                 batch_size: int = DEFAULT_BATCH, window: int = DEFAULT_WINDOW, truncate: Optional[bool] = None,
                 spinning: bool = True, scores: Optional[str] = None, prompt: Optional[str] = None,
                 prompt_name: Optional[str] = None, max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
                 top_k: Optional[int] = None, doc_stride: Optional[int] = None,
                 candidate_labels: Optional[Sequence[str]] = None, hypothesis_template: Optional[str] = None,
                 multi_label: bool = False, allow_no_answer: bool = False, aggregation: Optional[str] = None,
                 max_length: Optional[int] = None, similarity: bool = False, pair_prompt: Optional[str] = None,
                 pair_prompt_name: Optional[str] = None, rank: bool = False, embedding_precision: str = "float32",
                 calibration_embeddings=None):
        from bertc.backends import Backend, provider_options

        self.out = _build_path(out)
        if device not in DEVICES:   # what bertc run --device takes (None, "gpu", "CPU" are not)
            raise InputError(f"device {device!r}: use one of {', '.join(DEVICES)}")
        truncate, spinning = _flag("truncate", truncate, optional=True), _flag("spinning", spinning)
        multi_label, allow_no_answer = _flag("multi_label", multi_label), _flag("allow_no_answer", allow_no_answer)
        similarity, rank = _flag("similarity", similarity), _flag("rank", rank)
        artifact = _text("artifact", os.fspath(artifact) if isinstance(artifact, os.PathLike) else artifact)
        prompt, prompt_name = _text("prompt", prompt), _text("prompt_name", prompt_name)
        pair_prompt, pair_prompt_name = _text("pair_prompt", pair_prompt), _text("pair_prompt_name", pair_prompt_name)
        hypothesis_template = _text("hypothesis_template", hypothesis_template)
        scores, aggregation = _text("scores", scores), _text("aggregation", aggregation)
        embedding_precision = _text("embedding_precision", embedding_precision, optional=False)
        if candidate_labels is not None and not isinstance(candidate_labels, (str, list, tuple)):
            raise InputError(f"candidate_labels {candidate_labels!r}: a list of labels (or one string, the labels "
                             f"separated by commas), not {_kind_of(candidate_labels)}")
        if self.out.is_symlink():   # blue / green: `current -> build_v7`, flipped at will; one target is read
            self.out = Path(os.path.realpath(self.out))
        identity = _directory_identity(self.out)   # the build read below must be one build, start to end
        self.report, self.spec = read_build(self.out)
        check_build_files(self.out, self.report)
        self.kind, self.outputs = result_kind(self.report, self.spec)
        self.choice = choose_artifact(self.report, artifact, device)
        self.legacy_config = legacy_config_note(self.out, self.report)   # an earlier bertc's build: what it reads
        batch_size, window = _whole("batch_size", batch_size, 1, False), _whole("window", window, 1, False)
        max_batch_tokens = _whole("max_batch_tokens", max_batch_tokens, 1, False)
        threads, top_k = _whole("threads", threads, 1), _whole("top_k", top_k)
        doc_stride, max_length = _whole("doc_stride", doc_stride), _whole("max_length", max_length)
        counted = ("fill_mask", "span") + (("classification", "embedding") if rank else ())
        if top_k is not None and (self.kind not in counted or top_k < 1):
            raise InputError(f"top_k {top_k!r}: " + ("at least 1" if self.kind in counted else
                                                     f"only a masked-LM model's predictions, a span labeler's "
                                                     f"answers or a ranking's documents are counted (this model "
                                                     f"gives {self.kind} results)"))
        answers = top_k if self.kind == "span" and top_k else 0
        if aggregation is not None and (self.kind != "tags" or aggregation not in AGGREGATIONS):
            raise InputError(f"aggregation {aggregation!r}: " + (f"use one of {', '.join(AGGREGATIONS)}"
                                                                 if self.kind == "tags" else
                                                                 f"only a token classifier's words are labelled "
                                                                 f"(this model gives {self.kind} results)"))
        if allow_no_answer and self.kind != "span":
            raise InputError(f"allow_no_answer: only a span labeler answers (this model gives {self.kind} results)")
        if doc_stride is not None and (self.kind not in ("span", "tags") or doc_stride < 0):
            raise InputError(f"doc_stride {doc_stride!r}: " + ("0 or more" if self.kind in ("span", "tags") else
                                                               f"only a span labeler or a token classifier reads a "
                                                               f"long text in windows (this model gives {self.kind} "
                                                               f"results)"))
        # a window below batch_size is kept (it was raised to batch_size: --window 1 read 32 texts at a time), and
        # its batches are no larger than it
        self.threads, self.window, self.spinning = threads, window, spinning
        self.max_len, self.max_len_why = max_sequence_length(self.spec), "the model's"
        self.truncate = truncation_default(self.out, self.kind, self.report) if truncate is None else bool(truncate)
        if max_length is not None:
            if not 1 <= max_length <= self.max_len:
                raise InputError(f"max_length {max_length!r}: " + (
                    f"at most the model's maximum of {self.max_len} tokens" if max_length > self.max_len else
                    "at least 1 (and room for the special tokens the tokenizer adds and a text's)"))
            self.max_len, self.max_len_why = int(max_length), "--max-length"
        elif self.kind != "embedding" and (self.truncate or self.kind in ("span", "tags")):
            # where texts are cut (or read in windows): at the tokenizer's model_max_length where it is below the
            # model's maximum, as transformers' pipelines cut them (a sentence embedder cuts at its
            # max_seq_length, which the import took as the model's maximum, as sentence-transformers does)
            shorter = tokenizer_max_length(self.report)
            if shorter and shorter < self.max_len:
                self.max_len, self.max_len_why = shorter, "the tokenizer's model_max_length,"
        classes = None
        if self.kind in ("classification", "tags"):
            classes = int((self.spec.get("head") or {}).get("num_classes") or 0) or None
        zero_shot = self._zero_shot_parts(candidate_labels, hypothesis_template, multi_label, scores,
                                          read_labels(self.out, self.report, classes))
        if scores is not None and scores not in SCORES:
            raise InputError(f"scores {scores!r}: use one of {', '.join(SCORES)}")
        if scores is not None and self.kind != "classification":
            raise InputError(f"scores {scores!r}: only a classifier's scores can be chosen (this model gives "
                             f"{self.kind} results)")
        # a classifier's scores: as its own tools give them (score_function), or as asked
        self.scores, self.scores_why = ("softmax", "") if self.kind != "classification" else \
            (scores, "asked for") if scores else score_function(self.out, self.report, classes)
        self.prompt, self.prompt_why = sentence_prompt(self.out, self.report, self.kind, prompt, prompt_name)
        if rank and similarity:
            raise InputError(f"rank and similarity: a sentence embedder either scores each row's pair "
                             f"({said('--similarity', 'similarity=True')}) or orders each row's documents "
                             f"({said('--rank', 'rank=True')}), not both")
        if rank and self.kind != "embedding":   # a reranker: each query's documents ordered by the pairs' scores
            if self.kind != "classification" or classes != 1:
                raise InputError("rank: orders documents by a one-score model's pair scores (a cross-encoder "
                                 "reranker, num_labels 1) or by a sentence embedder's similarities; "
                                 + (f"this classifier has {classes} classes" if classes
                                    else f"this model gives {self.kind} results"))
            if self.scores == "softmax":
                raise InputError("scores 'softmax': the softmax of one score is always 1; rank by sigmoid or raw")
            self.kind, answers = "rank", top_k or 0
        self.similarity, self.similarity_why = "", ""
        self.pair_prompt, self.pair_prompt_why = self.prompt, self.prompt_why
        if (pair_prompt is not None or pair_prompt_name is not None) and not (similarity or self.kind == "embedding" and rank):
            raise InputError(f"a pair prompt is for the second text of each pair that "
                             f"{said('--similarity', 'similarity=True')} compares, or for the documents a sentence "
                             f"embedder ranks ({said('--rank', 'rank=True')})")
        if similarity or (rank and self.kind == "embedding"):
            # each pair's two texts, or a query and each of its documents, embedded alone and compared
            if self.kind != "embedding":
                raise InputError(f"similarity: compares a sentence embedder's embeddings of two texts (this model "
                                 f"gives {self.kind} results)")
            self.similarity, self.similarity_why = similarity_function(self.out, self.report)
            if pair_prompt is not None or pair_prompt_name is not None:   # e5 / bge: passages get their own
                self.pair_prompt, self.pair_prompt_why = sentence_prompt(self.out, self.report, self.kind,
                                                                         pair_prompt, pair_prompt_name, "pair prompt")
            self.kind, answers = ("rank", top_k or 0) if rank else ("similarity", answers)
        path = self.out / self.choice.path
        try:
            model_file = _ModelFile(path)
            model_file.read()   # its sha256, checked against the manifest; the session is opened from the file
        except OSError as exc:
            raise BackendLoadError(f"{path.name}: listed in report.json but cannot be read: {exc}"
                                   f"{self._other_artifact(device)}") from None
        chosen = self.choice.why
        self.choice = _checked_against_manifest(self.choice, self.report, model_file.digest)
        # a model over protobuf's 2 GB keeps its weights in OUT/<file>.data: ONNX Runtime reads them from OUT's
        # folder (the graph alone is in memory), checked against the manifest as the graph is
        external = self.report["artifacts"][self.choice.artifact].get("external_data")
        external_folder, external_stamp = "", ()
        if external:
            data = self.out / str(external)
            if not data.is_file():
                raise BackendLoadError(f"{data.name}: the weights of {path.name} (its external data) are not there"
                                       f"{self._other_artifact(device)}")
            stat = data.stat()   # ONNX Runtime reads the file when a session is made: it must be the one hashed
            self.choice = _checked_against_manifest(self.choice, self.report, data=data)
            external_folder = str(data.resolve().parent)
            external_stamp = (data.name, stat.st_size, stat.st_mtime_ns)   # (taken first: a change while hashed shows)
        if self.choice.why != chosen and not command_line_running():   # (bertc run says so on its summary line)
            import warnings

            changed = self.choice.why[len(chosen):].lstrip("; ").removeprefix("but ")
            warnings.warn(f"{self.out}: {changed}", UserWarning, stacklevel=2)
        backend = Backend(self.choice.artifact, self.choice.artifact, path, "onnx", self.choice.precision,
                          self.choice.provider)
        tokenizer_json = self._tokenizer_json()
        fill, self.mask = {}, None   # mask: fill-mask's (mask token, its id)
        if self.kind == "fill_mask":
            import tokenizers

            tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
            self.mask = mask_token(self.out, tokenizer)
            positions = next((i["shape"][-1] for i in self.report["inputs"] if i["name"] == POSITIONS), 0)
            if not positions:   # logits at every token: the batches are cut to hold them
                vocab = _vocab_size(self.spec) or tokenizer.get_vocab_size()
                max_batch_tokens = max(1, min(max_batch_tokens, FILL_MASK_LOGITS // max(vocab, 1)))
            fill = {"mask": self.mask, "top_k": top_k or DEFAULT_TOP_K, "positions": int(positions or 0)}
        self.max_batch_tokens = max_batch_tokens
        if answers and self.kind == "span":
            self.kind = "spans"   # {"answers": [...]}: a result of its own shape (JSONL, Parquet)
        self.parts = EngineParts(model=b"", model_name=path.name, tokenizer_json=tokenizer_json, **fill,
                                 external_data_folder=external_folder, external_data_stamp=external_stamp,
                                 provider=self.choice.provider, precision=self.choice.precision,
                                 kind="span" if self.kind == "spans" else self.kind,
                                 outputs=self.outputs, inputs=[i["name"] for i in self.report["inputs"]],
                                 max_len=self.max_len, truncate=self.truncate,
                                 labels=read_labels(self.out, self.report, classes), batch_size=batch_size,
                                 max_batch_tokens=max_batch_tokens,
                                 scores=self.scores, prompt=self.prompt,
                                 doc_stride=min(DEFAULT_DOC_STRIDE, self.max_len // 2) if doc_stride is None
                                 else doc_stride, **zero_shot,
                                 no_answer=bool(allow_no_answer), aggregation=aggregation or "first", answers=answers,
                                 similarity=self.similarity or "cosine", pair_prompt=self.pair_prompt,
                                 vocab_size=_vocab_size(self.spec) or 0, provider_options=provider_options(backend),
                                 lowercase=lowercases_input(self.out))
        from bertc.quantize_embeddings import EmbeddingPrecision

        if self.kind != "embedding" and (embedding_precision != "float32" or calibration_embeddings is not None):
            raise InputError(f"embedding precision {embedding_precision}: only a sentence embedder's embeddings are "
                             f"written at another precision (this run gives {self.kind} results)")
        self.precision = EmbeddingPrecision(embedding_precision, calibration_embeddings)
        if _directory_identity(self.out) != identity:
            # `bertc build --force` swapped another build in (or a link was pointed at another) while the report,
            # labels, model and tokenizer were read one file at a time: they may come from two builds
            raise InputError(f"{self.out}: replaced by another build while this Runtime read it (a rebuild, or the "
                             f"link pointed elsewhere); its files may be of two builds: create the Runtime again")
        self._engine: Optional[Engine] = None
        self._model_file: Optional[_ModelFile] = model_file
        self._closed = False
        self._lock = threading.Lock()   # one engine for every thread, and the count below: see :meth:`run`
        _RUNTIMES.add(self)
        self.truncated = 0   # texts (records) cut to the model's maximum so far, by run(), run_file() or over Ray

    def __getstate__(self):
        """A Runtime sent to another process (multiprocessing's spawn, a ProcessPoolExecutor) travels as what it read
        (the model's bytes, the tokenizer, the labels): the same build there, whatever OUT holds by then. Its ONNX
        Runtime session does not travel (the receiving process opens its own on first use); a worker that runs many
        tasks is better given its own Runtime (an initializer) than one sent with every task. A model over 2 GB (its
        weights in an external data file) travels as its graph: each process reads the weights from OUT's folder."""
        state = self.__dict__.copy()
        state.pop("_engine", None)
        state.pop("_lock", None)
        state["parts"] = self.portable_parts()
        state["_model_file"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._engine, self._lock = None, threading.Lock()
        _RUNTIMES.add(self)

    def portable_parts(self) -> EngineParts:
        """The engine's parts with the model's bytes (read again from the file this Runtime checked), for a process
        that does not see OUT (a Ray actor, a pickled copy)."""
        if self._closed:
            raise InputError(CLOSED)
        if self.parts.model or self._model_file is None:
            return self.parts
        import dataclasses

        return dataclasses.replace(self.parts, model=self._model_file.read())

    def close(self) -> None:
        """Release this Runtime's ONNX Runtime session (its memory and threads) and its open model file now, rather
        than when the last reference to it goes; calls already running finish first. A closed Runtime refuses to
        run. ``with bertc.Runtime(out) as rt:`` closes it at the block's end."""
        with self._lock:
            self._closed, self._engine = True, None
            if self._model_file is not None:
                self._model_file.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _other_artifact(self, device: str) -> str:
        """Where the chosen artifact's file cannot be read: the artifact :func:`choose_artifact` picks among those
        whose files are there, as ``--artifact`` to run instead (or that there is none)."""
        there = {k: v for k, v in self.report["artifacts"].items()
                 if k != self.choice.artifact and isinstance(v, dict) and (self.out / str(v.get("path", ""))).is_file()}
        try:
            other = choose_artifact({**self.report, "artifacts": there}, None, device)
        except InputError:
            return "; no other ONNX artifact of this build that can run here is there: rebuild it"
        return (f"; the build is damaged: rebuild it, or run another of its artifacts that is there: "
                f"{said(f'--artifact {other.artifact}', f'artifact={other.artifact!r}')} ({other.path})")

    def _zero_shot_parts(self, candidates, template, multi_label: bool, scores, labels) -> dict:
        """EngineParts' zero-shot fields (and ``self.kind`` "zero_shot") when candidate labels are given."""
        if candidates is None:
            if template is not None or multi_label:
                raise InputError("a hypothesis template and multi-label scoring are for zero-shot classification: "
                                 f"give the candidate labels too ({said('--labels', 'candidate_labels')})")
            return {}
        if isinstance(candidates, str):
            candidates = [c.strip() for c in candidates.split(",")]
        wrong = [c for c in candidates if not isinstance(c, str)]   # None, bytes, 3.5: were scored as str() of them
        if wrong:
            raise InputError(f"candidate labels: each label is a string, not {_kind_of(wrong[0])} "
                             f"({wrong[0]!r} in {list(candidates)!r})")
        candidates = [c.strip() for c in candidates]
        if self.kind != "classification":
            raise InputError(f"candidate labels: zero-shot classification runs an NLI classifier (this model gives "
                             f"{self.kind} results)")
        if not candidates or any(not c for c in candidates):
            raise InputError(f"candidate labels {', '.join(map(repr, candidates))}: give one or more, none empty")
        if len(set(candidates)) < len(candidates):
            raise InputError(f"candidate labels {', '.join(map(repr, candidates))}: each label once")
        if scores is not None:
            raise InputError("scores: a zero-shot result's scores are the labels' entailment probabilities")
        template = DEFAULT_HYPOTHESIS if template is None else template
        try:
            formatted = template.format(candidates[0])
        except (IndexError, KeyError, ValueError) as exc:
            raise InputError(f"hypothesis template {template!r}: not a template with one {{}} for the label "
                             f"({exc})") from None
        if formatted == template:
            raise InputError(f"hypothesis template {template!r}: it has no {{}} where the label goes")
        nli = zero_shot_ids(labels)
        self.kind = "zero_shot"
        return {"candidates": tuple(candidates), "hypothesis": template, "nli": nli, "multi_label": bool(multi_label)}

    def _tokenizer_json(self) -> str:
        from bertc.text import load_tokenizer

        try:
            return load_tokenizer(self.out, self.max_len).to_str()
        except (InputError, MissingLibrary):   # tokenizers not installed: exit 7, as every missing library
            raise
        except BertcError as exc:  # text.py's: no tokenizer bundled
            raise InputError(str(exc)) from None
        except Exception as exc:
            # the tokenizers library's plain Exception (tokenizer.json truncated, not JSON, not a tokenizer), an
            # unreadable file's OSError, sentencepiece's RuntimeError: a damaged build, as a damaged report.json
            if type(exc) is not Exception and not isinstance(exc, (OSError, RuntimeError)):
                raise
            from bertc.text import VOCABULARIES

            present = [name for name in VOCABULARIES if (self.out / name).exists()]
            where = self.out / present[0] if present else self.out
            raise DamagedBuild(f"{self.out}: not a readable bertc build (its tokenizer, {where}: "
                             f"{' '.join(str(exc).split())[:300]}); rebuild it, or restore the file") from None

    @property
    def engine(self) -> Engine:
        engine = self._engine
        if engine is None:
            with self._lock:   # threads that come first at once build one engine, not one each
                if self._closed:
                    raise InputError(CLOSED)
                if self._engine is None:
                    check_threads(self.threads)
                    self._engine = self._new_engine()
                engine = self._engine
        return engine

    def _new_engine(self) -> Engine:
        """The engine, its session opened from the model file's path where that still names the file this Runtime
        checked (then no copy of the model's bytes stays in memory), else from the file held open."""
        import dataclasses

        held = self._model_file
        if self.parts.model or held is None:
            return Engine(self.parts, self.threads, self.spinning)
        if not held.at_path():   # a file touched since (same inode, other times) is checked again by its bytes:
            held.read()           # unchanged, it serves from its path; changed in place, it is refused
        if held.at_path():
            try:
                engine = Engine(dataclasses.replace(self.parts, model_path=str(held.path)), self.threads,
                                self.spinning)
            except BackendLoadError:   # the path cannot be opened now (privileges dropped since): the file held
                engine = None
            if engine is not None and held.at_path():   # the file opened was the one checked (no rebuild meanwhile)
                return engine
        return Engine(dataclasses.replace(self.parts, model=held.read()), self.threads, self.spinning)

    def _count_cut(self, n: int) -> None:
        if n:
            with self._lock:
                self.truncated += n

    def __repr__(self) -> str:
        return f"Runtime({str(self.out)!r}: " + ("closed)" if self._closed else
                                                 f"{self.kind} results from {self.choice.describe()})")

    # running ----------------------------------------------------------------------------------------
    def iter_results(self, texts: Iterable, progress: Optional[Callable[[int], None]] = None
                     ) -> "Iterator[np.ndarray | list[dict]]":
        """The results of ``texts`` (what :meth:`run` takes, checked the same way, at once) window by window, in
        their order, as :meth:`run` gives them for that window (an embedder's a (k, dim) array, else a list): a
        generator of millions of texts is read as the windows are, and its results are never all held at once.
        ``progress`` hears how many results each window gave."""
        self._check_texts(texts, "Runtime.iter_results")
        records = _records(texts, self.kind in ("choice", "rank"), self.kind == "rank")
        return (self._gathered(results) for results, _ in self._iter_kept(records, progress))

    def _iter_kept(self, records: Iterable[Record], progress=None, stall: Optional[float] = None
                   ) -> Iterator[tuple[list, list]]:
        """(results, their records' kept values) window by window, in input order; counts the records that
        truncation cut (``self.truncated``). ``stall``: an input that may pause is run as far as it came once it
        paused that long (:func:`bertc.engine.windows`)."""
        engine = self.engine
        for window in windows(records, self.window, stall):
            results = engine.predict(window)
            self._count_cut(len(engine.cut))   # this thread's predict()'s
            if progress:
                progress(len(results))
            yield self.at_precision(results), [r.kept for r in window]

    def at_precision(self, results: list) -> list:
        """An embedder's results (float32 rows) at the run's embedding precision (:mod:`bertc.quantize_embeddings`);
        other results as they are."""
        if self.kind != "embedding" or not self.precision.active or not results:
            return results
        return list(self.precision(np.stack(results)))

    def run(self, texts: Iterable) -> "np.ndarray | list[dict]":
        """Results of ``texts`` (strings, or (text, pair) tuples; for a multiple-choice model (text, [choice, ...])
        or (text, stem, [choice, ...]) tuples) in their order: an (n, dim) float32 array for an embedder (int8 or
        uint8 at another ``embedding_precision``), else a list with one result per text, a dict of plain Python
        values: a classifier's ``{"label", "label_id", "score", "scores"}``, a span labeler's ``{"start", "end",
        "text", "score"}`` (``{"answers": [...]}`` with ``top_k``), a token classifier's ``{"tags", "entities"}``, a
        fill-mask model's ``{"sequence", "masks"}``, zero-shot's ``{"labels", "scores"}``, a pair's
        ``{"similarity"}``, a multiple-choice model's ``{"choice", "answer", "score", "scores"}``, a ranking's
        ``{"ranking"}`` (:mod:`bertc.run_io`'s docstring and the README's "Running a build on text" spell out
        each field)."""
        self._check_texts(texts, "Runtime.run")
        results = [r for window, _ in self._iter_kept(_records(texts, self.kind in ("choice", "rank"),
                                                               self.kind == "rank")) for r in window]
        return self._gathered(results)

    def _gathered(self, results: list):
        """An embedder's results as one (n, dim) array (n may be 0), other results as the list they are."""
        if self.kind == "embedding":
            dim = self.engine.session.get_outputs()[0].shape[-1]
            return np.stack(results) if results else \
                np.zeros((0, self.precision.width(dim) if isinstance(dim, int) else 0), self.precision.dtype)
        return results

    @staticmethod
    def _check_texts(texts, method: str) -> None:
        """What :meth:`run` and :meth:`iter_results` refuse as a whole, before any text is read."""
        if isinstance(texts, str):
            raise InputError(f"{method} takes a list of texts; for one text pass [text]")
        if isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__") or getattr(texts, "ndim", 1) == 0:
            raise InputError(f"{method} takes a list (or any iterable) of texts, not {_kind_of(texts)}"
                             + (" of no dimension (one value): pass [str(value)]" if getattr(texts, "ndim", 1) == 0
                                else ""))
        from collections.abc import ItemsView, KeysView, Mapping, Set

        if type(texts).__module__.startswith("pyarrow") and hasattr(texts, "to_pylist"):   # its items are Scalars
            raise InputError(f"{method} takes a list (or any ordered iterable) of texts, not {_kind_of(texts)}, "
                             f"whose items are pyarrow scalars: pass texts.to_pylist()")
        if getattr(texts, "ndim", 1) > 1 and hasattr(texts, "dtype"):   # a 2-D numpy array of pairs: rows are arrays
            raise InputError(f"{method} takes a list (or any ordered iterable) of texts, not a {texts.ndim}-D "
                             f"{_kind_of(texts)}: for pairs pass [tuple(row) for row in array]")
        if isinstance(texts, Mapping):   # iterating one gives its keys
            raise InputError(f"{method} takes a list (or any ordered iterable) of texts, not {_kind_of(texts)}, "
                             f"whose keys it would read as the texts: pass list(texts.values()) for its values")
        if hasattr(texts, "columns") and not hasattr(texts, "dtype"):   # a pandas / polars DataFrame (a Series has
            # a dtype and no columns): iterating one gives its column names
            columns = [str(c) for c in list(texts.columns)[:2]]
            how = f"its text column, df[{columns[0]!r}]" if columns else "its text column"
            if len(columns) > 1:
                how += f", or for pairs df[[{columns[0]!r}, {columns[1]!r}]].itertuples(index=False)"
            raise InputError(f"{method} takes a list (or any ordered iterable) of texts, not {_kind_of(texts)}, "
                             f"whose column names it would read as the texts: pass {how}")
        if isinstance(texts, Set) and not isinstance(texts, (KeysView, ItemsView)):   # a set, a frozenset (a dict's
            # keys and items keep their order: (question, context) items are pairs)
            raise InputError(f"{method} takes a list (or any ordered iterable) of texts, not {_kind_of(texts)}: "
                             f"results come in the texts' order, which a set has not; pass a list")

    def _own_file(self, result_path) -> Optional[str]:
        """The name of the build's file that ``result_path`` is (through links and other spellings), or None: a
        result written over OUT's model or report (``-o OUT/model.optimized.onnx --force``) left a damaged build."""
        from bertc.output import build_entries

        try:
            where = Path(os.path.realpath(result_path))
            inside = where.relative_to(Path(os.path.realpath(self.out))).as_posix()
        except (OSError, ValueError):
            return None
        ours = build_entries((self.report.get("manifest") or {}).get("files") or {})
        return inside if inside.split("/")[0] in ours else None

    def run_file(self, input_path, result_path, *, input_format: Optional[str] = None, text_field: str = "text",
                 pair_field: Optional[str] = None, result_format: Optional[str] = None, force: bool = False,
                 progress: Optional[Callable[[int], None]] = None, total_hint: Optional[Callable[[int], None]] = None,
                 ray_address: Optional[str] = None, ray_actors: Optional[int] = None,
                 choices_field: Optional[str] = None, keep_fields=None, documents_field: Optional[str] = None) -> int:
        """Read INPUT, write RESULT (atomically), return the number of rows. ``ray_address`` ("" for a
        local Ray) runs the job over Ray Data instead of in this process (:func:`bertc.run_ray.run_ray`).
        ``choices_field``: a multiple-choice model's choices (:func:`bertc.run_io.input_spec`); ``keep_fields``
        ("id,url" or a list): input fields each result row gets too, beside the result (JSONL, CSV, Parquet)."""
        import contextlib
        import dataclasses
        import os

        from bertc import run_io
        from bertc.errors import OutputError
        from bertc.output import parents_made
        from bertc.run_ray import run_ray

        force = _flag("force", force)   # force="no" replaced the result: a string is true
        if ray_address is None:   # over Ray the threads are each actor's: checked against the nodes (run_ray)
            check_threads(self.threads)
        if choices_field is not None and self.kind != "choice":
            raise InputError(f"{said('--choices-field', 'choices_field')}: only a multiple-choice model reads "
                             f"choices (this model gives {self.kind} results)")
        if documents_field is not None and self.kind != "rank":
            raise InputError(f"{said('--documents-field', 'documents_field')}: only a ranking "
                             f"({said('--rank', 'rank=True')}) reads documents (this model gives {self.kind} results)")
        spec = run_io.input_spec(input_path, input_format, text_field, pair_field, self.kind in ("choice", "rank"),
                                 choices_field or documents_field, keep_fields, ranking=self.kind == "rank")
        fmt = run_io.result_format(result_path, self.kind, result_format, spec.keep)
        if not spec.stdin and str(result_path) != run_io.STDIO and Path(result_path).exists() \
                and os.path.samefile(spec.path, result_path):   # a link or another spelling of the same file too
            raise OutputError(f"{said('-o ', 'result_path ')}{result_path}: is the input {spec.path} itself; the "
                              f"result would replace the input ({said('--force', 'force=True')} does not change "
                              f"that): write the result to another file")
        own = self._own_file(result_path) if str(result_path) != run_io.STDIO else None
        if own is not None:
            raise OutputError(f"{said('-o ', 'result_path ')}{result_path}: is the build's own {own}; the result "
                              f"would replace it ({said('--force', 'force=True')} does not change that): write the "
                              f"result outside {self.out}")
        if total_hint:
            total_hint(run_io.count_rows(spec))
        rows = 0

        def empty_width() -> Optional[int]:
            """An embedding row's width at this precision, from the ONNX output's shape (an empty result's)."""
            shape = next((o.shape for o in self.engine.session.get_outputs()
                          if o.name == self.outputs.get("embedding")), None)
            return self.precision.width(shape[-1]) if shape and isinstance(shape[-1], int) else None

        # RESULT's missing folders made, as bertc run -o makes them, and removed again when the run fails
        with parents_made(result_path, "result_path") if str(result_path) != run_io.STDIO else \
                contextlib.nullcontext(), \
                run_io.atomic_result(result_path, fmt, self.kind, force, spec.keep, self.precision.dtype,
                                     run_io.kept_types(spec, fmt), empty_width) as writer:
            if ray_address is not None:
                batches = run_ray(self, run_io.read_records(spec), ray_address, ray_actors, progress, kept=True)
            elif str(result_path) == run_io.STDIO and not run_io.is_regular_file(spec):
                # a stream from a pipe or a FIFO, which may pause or trickle (tail -f): each line's result leaves
                # within STALL_SECONDS, not a window later (a file result is renamed into place at the end: whole
                # windows, as from a file)
                batches = self._iter_kept(run_io.read_records(dataclasses.replace(spec, own_stdin=True)), progress,
                                          STALL_SECONDS)
            else:
                batches = self._iter_kept(run_io.read_records(spec), progress)
            for results, kept in batches:
                writer.write(results, kept)
                rows += len(results)
        return rows


class Progress:
    """A one-line progress bar on stderr (rows, percent when the total is known, rows/s), redrawn at most
    ten times a second; silent when stderr is not a terminal or ``enabled`` is False."""

    def __init__(self, enabled: bool, label: str = "rows", stream=None):
        self._stream = stream
        self.enabled, self.label = enabled, label
        self.total: Optional[int] = None
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0

    @property
    def stream(self):
        """``stream``, else sys.stderr as it is when drawn (bertc run --ray moves fd 2 to a log meanwhile, and
        sys.stderr to the console's copy)."""
        return self._stream or sys.stderr

    def set_total(self, total: Optional[int]) -> None:
        self.total = total

    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.1 or (self.total and self.done >= self.total)):
            self.last = now
            self._draw()

    def _draw(self) -> None:
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            text = f"[{bar:<30}] {self.done:,}/{self.total:,} {self.label} {frac:4.0%}"
        else:
            text = f"{self.done:,} {self.label}"
        self._write(f"\r  {text}  {self.rate():,.1f} {self.label}/s ")

    def close(self) -> None:
        if self.enabled and self.done:
            self._draw()
            self._write("\n")

    def _write(self, text: str) -> None:
        if not self.enabled:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except OSError as exc:   # the terminal is gone (SIGHUP: EIO): no more progress; the run goes on, or unwinds
            if exc.errno != errno.EIO:   # (a reader of stderr gone, `2>&1 | head`, still stops the run)
                raise
            self.enabled = False

