"""Run a built model on text: ``bertc run OUT INPUT -o RESULT`` and ``bertc.Runtime("OUT").run(texts)``.

``Runtime(out)`` reads OUT's report.json (no TensorFlow), picks the artifact for this host
(:func:`choose_artifact`), and holds an :class:`Engine`: the bundled tokenizer, one ONNX Runtime session
and the decoding of the model's outputs into results. The engine's whole state travels as a small
picklable :class:`EngineParts` (the model bytes, the tokenizer JSON, the labels), which is how each Ray
actor builds its own engine without seeing OUT.

Batching: texts are tokenized a window at a time (``window`` rows, bounded memory), sorted by token length
inside the window, cut into batches padded to their own longest row, and their results put back in input
order. A batch holds at most ``batch_size`` texts and at most ``max_batch_tokens`` padded tokens (rows x
longest), and its attention scores at most ``ATTENTION_CELLS_PER_TOKEN`` x that many cells a head (rows x
longest²: what a CPU attention kernel allocates, heads x cells floats); a text longer than that runs alone
(:func:`batch_cuts`). Short texts batch ``batch_size`` at a time; a long-context model's long documents go
a few, or one, at a time instead of exhausting memory. What the model's outputs are decides what a result
is (:func:`result_kind`):

====================================  ==============  ===============================================
outputs                               kind            one result
====================================  ==============  ===============================================
one (batch, dim) features output      embedding       float32 vector (``sentence_embedding``, or the
                                                      encoder's ``pooled_output`` without a head)
``logits`` (batch, classes)           classification  ``{"label", "label_id", "score", "scores"}``;
                                                      scores: softmax, sigmoid or raw logits, as the
                                                      checkpoint's tools give them (:func:`score_function`)
``start_logits`` + ``end_logits``     span            ``{"start", "end", "text", "score"}``: character
                                                      offsets into the text (the pair's, for a pair); a
                                                      context longer than the model's maximum is read in
                                                      overlapping windows (``doc_stride`` tokens shared
                                                      by neighbours), as transformers' QA pipeline reads
                                                      and scores it (:meth:`Engine._span_candidates`)
``logits`` (batch, seq, classes)      tags            ``{"tags": [{"word", "start", "end", "in", "label",
                                                      "score"}]}``: one per word, its first token's tag
                                                      (softmax; sigmoid of a single class: an ELECTRA
                                                      discriminator's probability of "replaced"); a text
                                                      longer than the model is read in overlapping
                                                      windows, each word tagged from the one where it
                                                      has the most context
the same, with ``top_k``            spans           ``{"answers": [...]}``: the ``top_k`` best, so
an NLI classifier's ``logits`` with   zero_shot       ``{"labels", "scores"}``: the candidate labels,
candidate labels                                      likeliest first, as transformers' zero-shot
                                                      pipeline scores them (:func:`zero_shot_ids`)
a sentence embedder's output, with    similarity      ``{"similarity"}``: the two texts of each pair
``similarity`` and text pairs                         embedded alone, then compared by the model's
                                                      similarity function (:func:`similarity_function`,
                                                      as ``SentenceTransformer.similarity_pairwise``)
a one-score classifier (a cross-      rank            ``{"ranking": [{"index", "text", "score"}]}``: a
encoder reranker) with ``rank``                       query's documents, best first, scored as the
                                                      classifier scores pairs (``CrossEncoder.rank``)
a sentence embedder's output, with    rank            the same; each document's score: the similarity of
``rank``                                              its embedding with the query's (as ``similarity``)
a ``multiple_choice`` head's          choice          ``{"choice", "answer", "score", "scores"}``: each
``logits`` (batch, 1)                                 (text, choice) pair scored, the softmax over a
                                                      question's choices (transformers'
                                                      ``*ForMultipleChoice``); the likeliest choice's
                                                      index and text
a masked-LM head's logits (batch,     fill_mask       ``{"sequence", "masks": [{"start", "end", "in",
seq, vocab), or ``masked_lm`` at                      "predictions": [{"token", "token_id", "score"}]}]}``:
``masked_lm_positions`` (a                            the ``top_k`` likeliest tokens at each mask token
pretrainer's)                                         of the text (its character offsets, ``in`` the text
                                                      or its pair); ``sequence``: the text with each mask
                                                      replaced by its likeliest token (as transformers'
                                                      fill-mask pipeline gives them)
====================================  ==============  ===============================================
"""
from __future__ import annotations

import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from bertc.backends import CPU, CUDA, PROVIDER_SUFFIX, artifact_info, backend_name, onnx_providers
from bertc.errors import BackendLoadError, BertcError, InputError, MissingLibrary
from bertc.run_io import Record

STANDARD_INPUTS = ("input_word_ids", "input_mask", "input_type_ids")
POSITIONS = "masked_lm_positions"   # a pretrainer's input: where its masked-LM head predicts
DEFAULT_TOP_K = 5                   # fill-mask predictions per mask (transformers' fill-mask pipeline's default)
# a masked-LM head's logits (rows x longest x vocabulary floats) per model call, at most: its batches are cut to fit
# (a 50,265-token vocabulary: 667 padded tokens, 128 MB), since those logits outgrow everything else the call holds
FILL_MASK_LOGITS = 1 << 25
MASK_TOKENS = ("[MASK]", "<mask>", "[mask]")   # the mask token when the tokenizer's config does not name one
MAX_ANSWER_TOKENS = 30  # the longest span the span labeler may return, in tokens (transformers' run_qa.py's default)
# a span labeler's long context, a token classifier's long text: the tokens each window shares with the next
# (transformers' QA pipeline's doc_stride default: 128, or half the window where that is less), held below what
# a window holds of the context
DEFAULT_DOC_STRIDE = 128
DEFAULT_BATCH, DEFAULT_WINDOW = 32, 2048
# padded tokens per model call (rows x longest; text-embeddings-inference's default max_batch_tokens): 32 texts
# of 512 tokens, so a 512-position model batches as before; attention's rows x longest² is held under 1,024 x
# that (a 768-wide, 12-head model's unpadded and masked attention buffers then stay under ~0.9 GB)
DEFAULT_BATCH_TOKENS = 16384
ATTENTION_CELLS_PER_TOKEN = 1024
# a text (or one text of a pair) longer than this many characters a token of the row (and than LONG_TEXT_CHARS) that
# truncation cuts is tokenized from a prefix, cut at whitespace, that holds the row's tokens and LONG_TEXT_MARGIN more
# (Engine._prefix): a 50 MB line is not tokenized whole (~100 bytes of memory a character) to keep 16 tokens
LONG_TEXT_CHARS_PER_TOKEN, LONG_TEXT_CHARS, LONG_TEXT_MARGIN = 32, 16384, 16
COUNT_CHARS = 1 << 20   # a long text counted in tokens (Engine._count), so many characters at a time
PREFIX_CHARS = 1024     # the shortest prefix of a long text tried (Engine._prefix)
# a batch stops growing when the next (longer) text would pad the rows already in it by more than this many
# tokens, and by more than a quarter of their real tokens: one long text in a window is not a whole batch's width
PADDING_PER_CUT = 256


# --- the build directory -----------------------------------------------------------------------------

def read_build(out) -> tuple[dict, dict]:
    """report.json and spec.json of a bertc build directory; an :class:`InputError` if it is not one."""
    out = Path(out)
    if not out.is_dir():
        raise InputError(f"{out}: no such build directory" if not out.exists() else f"{out}: not a directory")
    report_path = out / "report.json"
    if not report_path.is_file():
        hint = f" (a failed build's report is in {out}.failed/)" if Path(f"{out}.failed").is_dir() else ""
        raise InputError(f"{out}: not a bertc build directory (no report.json; make one with bertc build){hint}")
    try:
        report = json.loads(report_path.read_text())
        spec = json.loads((out / "spec.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{out}: not a readable bertc build ({exc})") from None
    if not isinstance(report, dict) or "artifacts" not in report or "outputs" not in report:
        raise InputError(f"{out}/report.json: not a bertc build report (no artifacts / outputs)")
    if report.get("status") != "passed":
        raise InputError(f"{out}: the build's status is {report.get('status')!r}, not 'passed'; rebuild it")
    return report, spec


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
    available = onnx_providers()
    if not available:
        raise BackendLoadError("onnxruntime is not installed: pip install 'bertc[cpu]' (or 'bertc[gpu]' for CUDA)")
    if device == "cuda" and CUDA not in available:
        raise InputError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    providers = [CUDA, CPU] if device == "cuda" or (device == "auto" and CUDA in available) else [CPU]
    infos = {k: artifact_info(k, v) for k, v in report["artifacts"].items()}
    onnx = {k: v for k, v in infos.items() if v["format"] == "onnx"}
    if artifact is not None:
        matches = [k for k, v in onnx.items() if artifact in (k, v["path"])]
        if not matches:
            have = ", ".join(f"{k} ({v['path']})" for k, v in onnx.items()) or "none"
            raise InputError(f"--artifact {artifact}: not an ONNX artifact of this build (it has: {have})")
        k = matches[0]
        for provider in providers:
            if provider in onnx[k]["providers"] and provider in available:
                verdict = passed_parity(report, k, provider)
                why = {True: "passed parity", False: "FAILED parity in this build", None: "parity not run"}[verdict]
                return Choice(k, onnx[k]["path"], provider, onnx[k]["precision"], f"as asked (--artifact); {why}")
        raise InputError(f"--artifact {artifact}: meant for {', '.join(onnx[k]['providers'])}, none available here")
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
            what = {0: f"{onnx[k]['precision']}, the fastest that {note}", 1: f"optimized fp32, {note}",
                    2: f"the portable export, {note}"}.get(rank, note)
            if not padded:
                what += "; padding-free (per-token work on the real tokens only)"
            fp32 = [c[4] for c in candidates if c[0] == 1]
            if onnx[k]["precision"] == "int8" and fp32:
                # dynamic int8 quantizes each activation with one range over the whole batch tensor
                what += (f"; its activation ranges are each batch's, so a text's result shifts a little with the "
                         f"texts batched with it (--artifact {min(fp32)} does not)")
            return Choice(k, onnx[k]["path"], provider, onnx[k]["precision"], what)
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
        raise InputError(f"{out}: not a readable bertc build ({path}: {exc}); rebuild it, or restore the file") \
            from None
    if not isinstance(config, dict):
        raise InputError(f"{out}: not a readable bertc build ({path}: not a JSON object, but "
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
            raise InputError(f"{out}: not a readable bertc build ({Path(out) / name}, which the build bundled, is "
                             f"missing); rebuild it, or restore the file")


def _checkpoint_configs(out: Path, report: dict, name: str = "config.json") -> Iterator[dict]:
    """The Hugging Face config.json (or ``name``) of the build: OUT's copy (bundled by the build as
    ``checkpoint_config.json``, or OUT's ``name``), the first of them there; only a build that bundled none reads
    the one beside the trained weights (an older build), where that can be read. One in OUT that cannot be read
    is an error (:func:`build_json`). At most one config."""
    from bertc.checkpoints import CHECKPOINT_CONFIG

    for inside in ([CHECKPOINT_CONFIG] if name == "config.json" else []) + [name]:
        config = build_json(out, inside)
        if config is not None:
            yield config
            return
    source = (report.get("weights") or {}).get("source")
    if source:
        src = Path(source)
        try:
            config = json.loads(((src if src.is_dir() else src.parent) / name).read_text())
        except (OSError, ValueError):
            return
        if isinstance(config, dict):
            yield config


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


def score_function(out: Path, report: dict, classes: Optional[int]) -> tuple[str, str]:
    """(one of :data:`SCORES`, why) for a classifier's logits, as the checkpoint's own tools score them: a
    sentence-transformers CrossEncoder's activation (``activation_fn`` of config_sentence_transformers.json, or in
    config.json ``sentence_transformers.activation_fn`` or the older ``sbert_ce_default_activation_function``:
    Sigmoid, or Identity for raw scores such as ms-marco's); else
    transformers' text-classification pipeline: ``problem_type`` regression raw, multi-label or a single class
    sigmoid, otherwise softmax."""
    for config in _checkpoint_configs(out, report, "config_sentence_transformers.json"):   # CrossEncoder, v5 on
        activation = config.get("activation_fn")
        if config.get("model_type") == "CrossEncoder" and activation in _CROSS_ENCODER:
            return _CROSS_ENCODER[activation], f"the CrossEncoder activation {activation.rsplit('.', 1)[-1]}"
    for config in _checkpoint_configs(out, report):
        st = config.get("sentence_transformers")
        activation = (st.get("activation_fn") if isinstance(st, dict) else None) or \
            config.get("sbert_ce_default_activation_function")
        if activation in _CROSS_ENCODER:
            return _CROSS_ENCODER[activation], f"the CrossEncoder activation {activation.rsplit('.', 1)[-1]}"
        problem = config.get("problem_type")
        if problem == "regression":
            return "raw", "problem_type regression"
        if problem == "multi_label_classification":
            return "sigmoid", "problem_type multi_label_classification"
        if problem == "single_label_classification":
            return "softmax", "problem_type single_label_classification"
        break
    if classes == 1:
        return "sigmoid", "one class"
    return "softmax", "one label per text"


AGGREGATIONS = ("first", "average", "max")   # a token classifier's word label (transformers' aggregation_strategy)
DEFAULT_HYPOTHESIS = "This example is {}."   # transformers' zero-shot-classification pipeline's template


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
                    prompt_name: Optional[str] = None) -> tuple[str, str]:
    """(the text put before each input, why) as ``SentenceTransformer.encode`` does it: ``prompt`` itself
    (``""``: none), else the prompt named ``prompt_name`` among the model's ``prompts``
    (config_sentence_transformers.json, bundled in OUT by the build; e5's and bge's "query: "), else the model's
    ``default_prompt_name``'s, else none."""
    if prompt is not None and prompt_name is not None:
        raise InputError("give a prompt or a prompt name, not both")
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
            raise InputError(f"prompt name {prompt_name!r}: the model's prompts are "
                             f"{', '.join(map(repr, prompts)) or 'none (config_sentence_transformers.json has no prompts)'}")
        return prompts[prompt_name], f"prompt name {prompt_name}"
    if kind == "embedding" and default is not None:
        return prompts[default], f"the model's default_prompt_name {default}"
    return "", ""


# sentence-transformers' similarity functions (``similarity_fn_name``), pairwise, on float64 vectors
SIMILARITIES = {"cosine": lambda a, b: float(a @ b / max(np.linalg.norm(a), 1e-12) / max(np.linalg.norm(b), 1e-12)),
                "dot": lambda a, b: float(a @ b), "dot_product": lambda a, b: float(a @ b),
                "euclidean": lambda a, b: -float(np.linalg.norm(a - b)),
                "manhattan": lambda a, b: -float(np.abs(a - b).sum())}


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


def truncation_default(out: Path, kind: str) -> bool:
    """Whether over-long texts are truncated when neither --truncate nor --no-truncate is given: when the
    bundled tokenizer.json turns truncation on, and for sentence embedders (sentence-transformers always
    truncates to max_seq_length, which the import took as the model's max_sequence_length)."""
    if kind == "embedding":
        return True
    try:
        return bool(json.loads((Path(out) / "tokenizer.json").read_text()).get("truncation"))
    except (OSError, ValueError, AttributeError):
        return False


# --- the engine: tokenizer + session + decoding --------------------------------------------------------

@dataclass
class EngineParts:
    """Everything an :class:`Engine` needs, picklable (sent once to each Ray actor)."""

    model: bytes
    model_name: str
    tokenizer_json: str
    provider: str
    precision: str
    kind: str
    outputs: dict
    inputs: list
    max_len: int
    truncate: bool
    labels: Optional[list] = None
    batch_size: int = DEFAULT_BATCH
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS
    provider_options: dict = field(default_factory=dict)
    scores: str = "softmax"          # a classifier's scores: softmax, sigmoid (each class alone) or raw logits
    prompt: str = ""                 # put before each text (a sentence embedder's prompt)
    mask: tuple = ("", -1)           # fill-mask: the mask token and its id
    top_k: int = DEFAULT_TOP_K       # fill-mask: predictions per mask
    positions: int = 0               # fill-mask on a pretrainer: its masked_lm_positions per text
    doc_stride: int = DEFAULT_DOC_STRIDE   # a span labeler's long context: tokens shared by neighbouring windows
    no_answer: bool = False          # a span labeler may answer "" (its leading token's start x end wins)
    aggregation: str = "first"       # a token classifier's word: its first token's, its tokens' mean or max
    answers: int = 0                 # a span labeler's answers (0 the best alone, k its k best as a list);
                                     # a ranking's documents (0 all)
    candidates: tuple = ()           # zero-shot: the candidate labels
    hypothesis: str = DEFAULT_HYPOTHESIS   # zero-shot: the hypothesis each label is put in
    nli: tuple = (0, 0)              # zero-shot: the (entailment, contradiction) class ids
    multi_label: bool = False        # zero-shot: each label alone (entailment vs contradiction)
    similarity: str = "cosine"       # a sentence embedder's pairs: how their two embeddings are compared
    pair_prompt: str = ""            # ... and the prompt put before each pair's second text
    vocab_size: int = 0              # the model's vocabulary (0: unknown): a token id at or above it is refused


def batch_cuts(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each batch over rows of these token ``lengths`` (ascending): each batch as many
    rows as fit, at most ``batch_size``, with rows x longest <= ``max_tokens`` and rows x longest² <=
    :data:`ATTENTION_CELLS_PER_TOKEN` x ``max_tokens``; a row that alone exceeds them is a batch of its own.
    A row that would pad the rows before it by more than :data:`PADDING_PER_CUT` tokens and a quarter of their
    real tokens starts the next batch (a window's few long texts go together, not each with 31 short ones).
    Sorted lengths give the fewest batches (each padded to its own longest)."""
    cells = ATTENTION_CELLS_PER_TOKEN * max_tokens
    cuts, start, n = [], 0, len(lengths)
    while start < n:
        stop, longest, real = start + 1, lengths[start], lengths[start]
        while stop < n and stop - start < batch_size:
            rows, wider = stop - start + 1, max(longest, lengths[stop])
            if rows * wider > max_tokens or rows * wider * wider > cells:
                break
            if (rows - 1) * (wider - longest) > max(PADDING_PER_CUT, real / 4):
                break
            stop, longest, real = stop + 1, wider, real + lengths[stop]
        cuts.append((start, stop))
        start = stop
    return cuts


class Engine:
    def __init__(self, parts: EngineParts, threads: Optional[int] = None, spinning: bool = True):
        import onnxruntime as ort
        import tokenizers

        self.parts = parts
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        provider = (parts.provider, parts.provider_options) if parts.provider_options else parts.provider
        try:
            self.session = ort.InferenceSession(parts.model, options, providers=[provider])
        except Exception as exc:
            raise BackendLoadError(f"{parts.model_name}: cannot be loaded by ONNX Runtime: "
                                   f"{' '.join(str(exc).split())[:300]}") from None
        types = {i.name: i.type for i in self.session.get_inputs()}
        self.int_types = {n: (np.int64 if types.get(n) == "tensor(int64)" else np.int32) for n in parts.inputs}
        self.tokenizer = tokenizers.Tokenizer.from_str(parts.tokenizer_json)
        # zero-shot pairs cut the text, never the hypothesis (as transformers' pipeline)
        self.tokenizer.enable_truncation(max_length=parts.max_len,
                                         strategy="only_first" if parts.kind == "zero_shot" else "longest_first")
        self.tokenizer.no_padding()
        # tokens added to the tokenizer after training, never given embeddings (the model's vocabulary was not
        # resized): their ids are out of the embedding table's range, which ONNX Runtime reports as a crash
        self.vocab_limit = parts.vocab_size if 0 < parts.vocab_size < self.tokenizer.get_vocab_size(True) else 0
        # what differs between threads calling predict() at once (one engine may serve several): a span labeler's
        # long contexts' tokenizer, whose truncation each context sets (its stride), and the records truncation cut.
        # self.tokenizer's settings never change after this, and ONNX Runtime's session.run is thread-safe
        self._local = threading.local()
        self.output_names = list(parts.outputs.values())
        self.embeds = "embedding" in parts.outputs   # a sentence embedder's ranking: similarities, not pair scores

    @property
    def cut(self) -> set:
        """Where the records that truncation cut in this thread's last :meth:`predict` are (``Record.where``)."""
        if not hasattr(self._local, "cut"):
            self._local.cut = set()
        return self._local.cut

    # tokens -------------------------------------------------------------------------------------------
    def encode(self, records: Sequence[Record], prompt: Optional[str] = None) -> list:
        """One encoding per record (a span labeler's long context: see :meth:`features`); ``prompt`` (default: the
        sentence embedder's) before each single text."""
        prompt = self.parts.prompt if prompt is None else prompt
        inputs = [prompt + r.text if r.pair is None else (r.text, r.pair) for r in records]
        inputs = [x if self.windowed(r) else self._shortened(x) for r, x in zip(records, inputs)]
        try:
            encodings = self.tokenizer.encode_batch(inputs)
        except Exception:   # tokenizers' truncation error: a zero-shot hypothesis that alone outgrows the model
            for r, x in zip(records, inputs):
                try:
                    self.tokenizer.encode(*x) if isinstance(x, tuple) else self.tokenizer.encode(x)
                except Exception as exc:
                    if self.parts.kind == "zero_shot":
                        raise InputError(f"{r.where}: the hypothesis {x[1]!r} leaves no room for the text in the "
                                         f"model's {self.parts.max_len} tokens; use a shorter template or "
                                         f"label") from None
                    raise InputError(f"{r.where}: cannot be cut to the model's maximum of {self.parts.max_len} "
                                     f"tokens ({' '.join(str(exc).split())})") from None
            raise
        for r, e in zip(records, encodings):
            if self.vocab_limit:   # what the model runs: the encoding, and a windowed record's other windows
                for x in [e, *e.overflowing] if self.windowed(r) else [e]:
                    if x.ids and max(x.ids) >= self.vocab_limit:
                        self._outside_vocabulary(r, x)
            if e.overflowing and not self.windowed(r):
                if not self.parts.truncate:
                    raise InputError(f"{r.where}: the text is longer than the model's maximum of "
                                     f"{self.parts.max_len} tokens; pass --truncate to cut it "
                                     f"(Runtime(..., truncate=True))")
                self.cut.add(r.where)   # the input record this row came from was cut
        if self.parts.kind == "fill_mask":
            token, token_id = self.parts.mask
            for r, e in zip(records, encodings):
                masks = e.ids.count(token_id)
                if not masks:
                    cut = f" within the model's first {self.parts.max_len} tokens" if e.overflowing else ""
                    raise InputError(f"{r.where}: no {token} in the text{cut}; fill-mask predicts the tokens "
                                     f"written as {token}")
                if self.parts.positions and masks > self.parts.positions:
                    raise InputError(f"{r.where}: {masks} {token} tokens; this model predicts at most "
                                     f"{self.parts.positions} a text")
        return encodings

    def _plain(self):
        """This thread's copy of the tokenizer without truncation (to count a text's tokens)."""
        import tokenizers

        tok = getattr(self._local, "plain", None)
        if tok is None:
            tok = self._local.plain = tokenizers.Tokenizer.from_str(self.parts.tokenizer_json)
            tok.no_truncation()
            tok.no_padding()
        return tok

    def _count(self, text: str) -> tuple[int, int]:
        """(the tokens of ``text``, how many that count may be off by): counted :data:`COUNT_CHARS` characters at a
        time (memory bounded by them), each piece cut at whitespace, ``LONG_TEXT_MARGIN`` tokens of doubt a cut."""
        total, start, cuts = 0, 0, 0
        while start < len(text):
            found = _WHITESPACE.search(text, start + COUNT_CHARS) if start + COUNT_CHARS < len(text) else None
            end = found.start() if found else len(text)
            total += len(self._plain().encode(text[start:end], add_special_tokens=False).ids)
            start, cuts = end, cuts + 1
        return total, max(cuts - 1, 0) * LONG_TEXT_MARGIN

    def _prefix(self, text: str, tokens: int) -> tuple[str, int]:
        """(a prefix of ``text`` of at least ``tokens`` tokens, its tokens), or (``text``, -1) where none is found: cut
        at an ASCII whitespace past 8 characters a token (the last one before where there is none past), tried 4 times
        as long until it holds that many."""
        size = max(PREFIX_CHARS, 8 * tokens)
        while size < len(text):
            found = _WHITESPACE.search(text, size)
            cut = found.start() if found else max(text.rfind(c, 0, size) for c in " \t\n\r\x0b\x0c")
            if cut <= 0:
                break
            count = len(self._plain().encode(text[:cut], add_special_tokens=False).ids)
            if count >= tokens:
                return text[:cut], count
            size *= 4
        return text, -1

    def _shortened(self, x):
        """A text, or a (text, pair) tuple, whose over-long texts (over ``LONG_TEXT_CHARS`` characters, and
        ``LONG_TEXT_CHARS_PER_TOKEN`` a token of the row) are cut to prefixes that truncation cuts as it cuts the whole
        (the same tokens kept, offsets, overflow; the whole text is never tokenized at once): each prefix holds the
        row's tokens and ``LONG_TEXT_MARGIN`` more, so that the cut is far from every token kept and the prefix
        overflows the row as the text does. A zero-shot pair cuts only its text, never the hypothesis. A pair cut
        longest first keeps, of each text, what depends only on which is the longer: the cut one's prefix is made
        longer than the other text (or, both cut, the longer one's than the shorter one's, where the row's room is odd
        and a count of each, piece by piece, says which is longer). Where none of that holds, the whole."""
        limit = max(LONG_TEXT_CHARS, LONG_TEXT_CHARS_PER_TOKEN * self.parts.max_len)
        least = self.parts.max_len + LONG_TEXT_MARGIN
        if isinstance(x, str):
            return self._prefix(x, least)[0] if len(x) > limit else x
        long = [len(t) > limit for t in x]
        if self.parts.kind == "zero_shot" or not all(long):   # truncation only_first, or one text cut
            if not long[0] and (self.parts.kind == "zero_shot" or not long[1]):
                return x
            k = 0 if long[0] else 1
            other = 0 if self.parts.kind == "zero_shot" else len(self._plain().encode(x[1 - k],
                                                                                   add_special_tokens=False).ids)
            cut, count = self._prefix(x[k], max(least, other + 1))
            return x if count < 0 else ((cut, x[1]) if k == 0 else (x[0], cut))
        room = self.parts.max_len - self.tokenizer.num_special_tokens_to_add(True)
        shorter = 0
        if room % 2:   # each keeps half the room, the longer one the odd token: which is it?
            (na, da), (nb, db) = self._count(x[0]), self._count(x[1])
            if abs(na - nb) <= da + db:
                return x
            shorter = 0 if na < nb else 1
        first, count = self._prefix(x[shorter], least)
        second, more = self._prefix(x[1 - shorter], max(least, count + 1))
        if count < 0 or more < 0:
            return x
        return (first, second) if shorter == 0 else (second, first)

    def _outside_vocabulary(self, r: Record, e) -> None:
        t = next(t for t, i in enumerate(e.ids) if i >= self.vocab_limit)
        raise InputError(f"{r.where}: the token {e.tokens[t]!r} (id {e.ids[t]}) is outside the model's vocabulary "
                         f"of {self.vocab_limit}: the tokenizer has {self.tokenizer.get_vocab_size(True)} tokens, so "
                         f"tokens were added to it and the model's embeddings were not resized (transformers: "
                         f"model.resize_token_embeddings(len(tokenizer)))")

    def windowed(self, record: Record) -> bool:
        """Whether this record is read in overlapping windows when it does not fit the model: a span labeler's
        context, a token classifier's single text (its pairs are cut or refused as any other head's)."""
        return self.parts.kind == "span" or (self.parts.kind == "tags" and record.pair is None)

    def features(self, records: Sequence[Record]) -> tuple[list, list[int]]:
        """The encodings the model runs on and, for each, the index of its record: one per record, except a
        record that does not fit the model and is read in windows (:meth:`windowed`): overlapping windows of
        its context (each with the whole question; :meth:`context_windows`)."""
        if self.parts.kind == "zero_shot":   # one (text, hypothesis) pair per candidate label, record by record
            for r in records:
                if r.pair is not None:
                    raise InputError(f"{r.where}: zero-shot classification takes one text, not a pair")
            pairs = [Record(r.text, self.parts.hypothesis.format(label), r.where)
                     for r in records for label in self.parts.candidates]
            n = len(self.parts.candidates)
            return self.encode(pairs), [i // n for i in range(len(pairs))]
        if self.parts.kind == "similarity":   # each text of a pair embedded alone
            singles = []
            for r in records:
                if r.pair is None:
                    raise InputError(f"{r.where}: one text; the similarity of a pair needs two (--pair-field, or a "
                                     f"tab between them in a .txt)")
                singles.extend((Record(self.parts.prompt + r.text, None, r.where),
                                Record(self.parts.pair_prompt + r.pair, None, r.where)))
            return self.encode(singles, prompt=""), [i // 2 for i in range(len(singles))]
        if self.parts.kind == "embedding" and self.parts.outputs["embedding"] == "sentence_embedding":
            paired = next((r for r in records if r.pair is not None), None)
            if paired is not None:
                raise InputError(f"{paired.where}: a pair of texts; a sentence embedder embeds one text a row "
                                 f"(sentence-transformers never joins two into one input): drop the pair, or pass "
                                 f"--similarity (Runtime(..., similarity=True)) to compare the two texts' embeddings")
        if self.parts.kind == "rank" and self.embeds:   # the query and each of its documents embedded alone
            singles, owners = [], []
            for k, r in enumerate(records):
                self._check_ranked(r)
                singles.append(Record(self.parts.prompt + r.text, None, r.where))
                singles.extend(Record(self.parts.pair_prompt + d, None, r.where) for d in r.choices)
                owners.extend([k] * (1 + len(r.choices)))
            return self.encode(singles, prompt=""), owners
        if self.parts.kind in ("choice", "rank"):   # one (text, choice) pair per choice; a pair leads each choice
            pairs, owners = [], []
            for k, r in enumerate(records):
                if self.parts.kind == "rank":
                    self._check_ranked(r)
                if not r.choices:
                    raise InputError(f"{r.where}: no choices; a multiple-choice model scores each text's choices "
                                     f"(a list per row: --choices-field, or Runtime.run([(text, [choice, ...])]))")
                pairs.extend(Record(r.text, c if r.pair is None else f"{r.pair} {c}", r.where) for c in r.choices)
                owners.extend([k] * len(r.choices))
            return self.encode(pairs), owners
        if self.parts.kind == "span":   # a question answered from a context: a lone text is neither
            alone = next((r for r in records if r.pair is None), None)
            if alone is not None:
                raise InputError(f"{alone.where}: one text; a span labeler answers a question from a context and "
                                 f"needs both (--pair-field, or a tab between them in a .txt; "
                                 f"Runtime.run([(question, context)]))")
        encodings = self.encode(records)
        if self.parts.kind not in ("span", "tags"):
            return encodings, list(range(len(records)))
        features, owners = [], []
        for i, (r, e) in enumerate(zip(records, encodings)):
            windows = self.context_windows(r) if e.overflowing and self.windowed(r) else [e]
            features.extend(windows)
            owners.extend([i] * len(windows))
        return features, owners

    def _check_ranked(self, r: Record) -> None:
        if not r.choices:
            raise InputError(f"{r.where}: no documents; a ranking orders each query's documents (a list per "
                             f"row: --documents-field, or Runtime.run([(query, [document, ...])]))")
        if r.pair is not None:
            raise InputError(f"{r.where}: a ranking " + ("compares its query with each document" if self.embeds else
                                                         "pairs its query with each document")
                             + "; drop the pair (--pair-field)")

    def context_windows(self, record: Record) -> list:
        """A long context's windows, as transformers' question-answering pipeline reads one: every window
        holds the whole question (the first text of a pair; a token classifier's single text is all context) and
        as much of the context as fits, and shares ``doc_stride`` tokens with the next, or one fewer than the context it holds
        where that is less (so that each window moves on; the pipeline refuses such a stride). A question that
        leaves no room for the context is refused naming the line."""
        import tokenizers

        tok = getattr(self._local, "windowing", None)   # this thread's own: its truncation is set for each context
        if tok is None:
            tok = self._local.windowing = tokenizers.Tokenizer.from_str(self.parts.tokenizer_json)
            tok.no_padding()
        pair = record.pair is not None
        tok.no_truncation()
        question = len(tok.encode(record.text, add_special_tokens=False).ids) if pair else 0
        special = tok.num_special_tokens_to_add(pair)
        room = self.parts.max_len - special - question
        if room < 1:
            raise InputError(f"{record.where}: the question alone takes {question} of the model's "
                             f"{self.parts.max_len} tokens ({special} more are special tokens); no room is left "
                             f"for the context")
        tok.enable_truncation(max_length=self.parts.max_len, stride=min(self.parts.doc_stride, room - 1),
                              strategy="only_second" if pair else "longest_first")
        first = tok.encode(record.text, record.pair) if pair else tok.encode(record.text)
        return [first, *first.overflowing]

    def _feeds(self, encodings) -> dict:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for i, e in enumerate(encodings):
            n = len(e.ids)
            ids[i, :n], mask[i, :n], types[i, :n] = e.ids, e.attention_mask, e.type_ids
        arrays = {"input_word_ids": ids, "input_mask": mask, "input_type_ids": types}
        if self.parts.positions:   # a pretrainer's: the mask tokens' positions, 0 after them (predicted, not read)
            arrays[POSITIONS] = np.zeros((len(encodings), self.parts.positions), np.int64)
            for i, e in enumerate(encodings):
                where = self._mask_positions(e)
                arrays[POSITIONS][i, :len(where)] = where
        return {n: arrays[n].astype(self.int_types[n]) for n in self.parts.inputs}

    def _mask_positions(self, e) -> list[int]:
        token_id = self.parts.mask[1]
        return [t for t, i in enumerate(e.ids) if i == token_id]

    # the model ----------------------------------------------------------------------------------------
    def predict(self, records: Sequence[Record]) -> list:
        """One result per record, in the records' order: the batches are cut from the records (a long
        context's windows: :meth:`features`) sorted by token length and padded to their own longest."""
        self._local.cut = set()
        if not records:
            return []
        encodings, owners = self.features(records)
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        results: list = [None] * len(records)
        counts = np.bincount(owners, minlength=len(records))   # features per record
        # what is decoded once a record's every feature has run: a token classifier's windows' logits, a span
        # labeler's windows' candidates, a zero-shot text's logits for each candidate label
        pending: dict = {}
        for start, stop in batch_cuts([len(encodings[i].ids) for i in order], self.parts.batch_size,
                                      self.parts.max_batch_tokens):
            chunk = order[start:stop]
            batch = [encodings[i] for i in chunk]
            values = dict(zip(self.output_names, self.session.run(self.output_names, self._feeds(batch))))
            for j, i in enumerate(chunk):
                k = owners[i]
                if self.parts.kind == "tags" and counts[k] > 1:
                    pending.setdefault(k, []).append((i, np.array(values["logits"][j][:len(encodings[i].ids)])))
                elif self.parts.kind in ("zero_shot", "choice") or (self.parts.kind == "rank" and not self.embeds):
                    # a label's, a choice's, a document's pair score
                    pending.setdefault(k, []).append((i, np.array(values["logits"][j], np.float64)))
                elif self.parts.kind in ("similarity", "rank"):
                    # similarity, feature i: record i // 2, its text (even) or pair (odd); rank: the query, then
                    # each document
                    pending.setdefault(k, []).append((i, np.array(values[self.parts.outputs["embedding"]][j],
                                                                  np.float64)))
                elif self.parts.kind == "span":   # every window's candidates, summed once all are in
                    pending.setdefault(k, []).append((i, self._span_candidates(
                        values[self.parts.outputs["start"]][j], values[self.parts.outputs["end"]][j], encodings[i],
                        records[k])))
                else:
                    results[k] = self._decode(values, j, encodings[i], records[k])
        for k, parts in pending.items():
            parts = sorted(parts, key=lambda p: p[0])   # window order
            if self.parts.kind == "zero_shot":
                results[k] = self._zero_shot(np.stack([logits for _, logits in parts]))
            elif self.parts.kind == "choice":
                results[k] = self._choice(np.stack([logits[0] for _, logits in parts]), records[k])
            elif self.parts.kind == "rank" and self.embeds:
                similar = SIMILARITIES[self.parts.similarity]
                results[k] = self._ranking(np.array([similar(parts[0][1], d) for _, d in parts[1:]]), records[k],
                                           "raw")
            elif self.parts.kind == "rank":
                results[k] = self._ranking(np.stack([logits[0] for _, logits in parts]), records[k])
            elif self.parts.kind == "similarity":
                results[k] = {"similarity": SIMILARITIES[self.parts.similarity](parts[0][1], parts[1][1])}
            elif self.parts.kind == "span":
                results[k] = self._span_answer([c for _, (candidates, _) in parts for c in candidates],
                                               min(null for _, (_, null) in parts) if self.parts.no_answer else None,
                                               self.parts.answers)
            else:
                tags = self._window_tags(parts, encodings, records[k])
                results[k] = self._tag_result(tags, parts[0][1].shape[-1], records[k])
        return results

    # decoding -----------------------------------------------------------------------------------------
    def _label(self, k: int) -> str:
        labels = self.parts.labels
        return labels[k] if labels and k < len(labels) else f"LABEL_{k}"

    def _decode(self, values: dict, j: int, e, record: Record):
        kind, outs = self.parts.kind, self.parts.outputs
        if kind == "embedding":
            return np.asarray(values[outs["embedding"]][j], np.float32)
        if kind == "classification":
            logits = values["logits"][j].astype(np.float64)
            probs = {"softmax": _softmax, "sigmoid": _sigmoid, "raw": lambda x: x}[self.parts.scores](logits)
            k = int(np.argmax(probs))
            return {"label": self._label(k), "label_id": k, "score": float(probs[k]),
                    "scores": [float(p) for p in probs]}
        if kind == "fill_mask":
            return self._fill(values[outs["logits"]][j], e, record)
        return self._tag_result(self._tags(values["logits"][j], e, record), values["logits"].shape[-1], record)

    @staticmethod
    def _choice(scores: np.ndarray, record: Record) -> dict:
        """A multiple-choice question's result: the softmax over its choices' scores (transformers'
        ``*ForMultipleChoice`` logits, reshaped to (questions, choices)); the likeliest choice, the first on a tie."""
        p = _softmax(scores)
        k = int(np.argmax(p))
        return {"choice": k, "answer": record.choices[k], "score": float(p[k]), "scores": [float(x) for x in p]}

    def _ranking(self, logits: np.ndarray, record: Record, activation: Optional[str] = None) -> dict:
        """A query's documents, best first, as ``CrossEncoder.rank`` orders them: each (query, document) pair's score
        as the classifier scores it (the CrossEncoder's activation: sigmoid, or the raw logit), sorted high to low
        (equal scores in the input's order), the ``top_k`` best when it is set. A sentence embedder's: the
        similarities of the query's embedding with each document's (``activation`` "raw"), as
        ``sentence_transformers.util.semantic_search`` orders a corpus by them."""
        scores = {"sigmoid": _sigmoid, "raw": lambda x: x}[activation or self.parts.scores](logits)
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        order = order[:self.parts.answers] if self.parts.answers else order
        return {"ranking": [{"index": i, "text": record.choices[i], "score": float(scores[i])} for i in order]}

    def _fill(self, logits, e, record: Record) -> dict:
        """The ``top_k`` likeliest tokens at each mask token (softmax over the vocabulary, as transformers'
        fill-mask pipeline), and the text with each mask replaced by its likeliest one."""
        where = self._mask_positions(e)
        rows = logits[:len(where)] if self.parts.positions else logits[where]
        ids, masks = list(e.ids), []
        for t, row in zip(where, rows):
            p = _softmax(row.astype(np.float64))
            k = min(self.parts.top_k, p.shape[-1])
            top = np.argpartition(-p, k - 1)[:k]
            top = top[np.lexsort((top, -p[top]))]   # likeliest first; equal scores by token id
            begin, end = e.offsets[t]
            masks.append({"start": int(begin), "end": int(end), "in": "pair" if e.sequence_ids[t] == 1 else "text",
                          "predictions": [{"token": self.tokenizer.decode([int(i)], skip_special_tokens=False),
                                           "token_id": int(i), "score": float(p[i])} for i in top]})
            ids[t] = int(top[0])
        return {"sequence": self.tokenizer.decode(ids, skip_special_tokens=True), "masks": masks}

    def _span_candidates(self, start_logits, end_logits, e, record: Record) -> tuple[list, float]:
        """One window's candidate answers, as transformers 4's question-answering pipeline finds them (its
        ``select_starts_ends`` / ``decode_spans``, ``align_to_words``): softmax of the start and of
        the end logits over the context's tokens and the leading special token ([CLS], ``<s>``: the mass a model
        trained with unanswerable questions puts on "no answer" in this window, which makes windows comparable);
        then the 2k + 10 likeliest spans of the context for k answers (start <= end < start +
        :data:`MAX_ANSWER_TOKENS`, p(start) x p(end)), each widened to whole words. ``[(score, start, end, text)]``
        in character offsets; and this window's no-answer score, the leading token's p(start) x p(end) (0.0
        without one)."""
        context = 1 if record.pair is not None else 0
        text = record.pair if record.pair is not None else record.text
        n = len(e.ids)
        inside = np.array([e.sequence_ids[t] == context and e.special_tokens_mask[t] == 0 for t in range(n)])
        if not inside.any():
            return [], 0.0
        normal = inside.copy()
        normal[0] = bool(e.special_tokens_mask[0])
        p_start = _softmax(np.where(normal, start_logits[:n].astype(np.float64), -np.inf))
        p_end = _softmax(np.where(normal, end_logits[:n].astype(np.float64), -np.inf))
        null = float(p_start[0] * p_end[0]) if normal[0] else 0.0
        p_start[~inside], p_end[~inside] = 0.0, 0.0   # the leading token normalizes, never answers
        scores = np.tril(np.triu(np.outer(p_start, p_end)), MAX_ANSWER_TOKENS - 1).ravel()
        # the spans a window offers before word alignment: as the pipeline's, 2 x its top_k + 10
        top = np.argsort(-scores, kind="stable")[:2 * max(self.parts.answers, 1) + 10]
        first, last = {}, {}
        for t, w in enumerate(e.word_ids):
            if w is not None and e.sequence_ids[t] == context:
                first.setdefault(w, t)
                last[w] = t
        out = []
        for flat in top:
            s, t = divmod(int(flat), n)
            if not (inside[s] and inside[t]) or not 0 <= t - s < MAX_ANSWER_TOKENS:   # outside the band: score 0
                continue
            begin = e.offsets[first[e.word_ids[s]]][0] if e.word_ids[s] is not None else e.offsets[s][0]
            end = e.offsets[last[e.word_ids[t]]][1] if e.word_ids[t] is not None else e.offsets[t][1]
            out.append((float(scores[flat]), int(begin), int(end), text[begin:end]))
        return out, null

    def _zero_shot(self, logits: np.ndarray) -> dict:
        """One text's candidate labels from its (labels, classes) NLI logits, as transformers' zero-shot pipeline
        scores them: softmax of the entailment logits over the labels, or with ``multi_label`` (or a single
        label) each label's softmax of contradiction vs entailment; likeliest first."""
        entail, contra = self.parts.nli
        if self.parts.multi_label or len(self.parts.candidates) == 1:
            scores = _softmax(logits[:, [contra, entail]])[:, 1]
        else:
            scores = _softmax(logits[:, entail])
        order = np.argsort(scores)[::-1]   # the pipeline's order, equal scores included (the last given first)
        return {"labels": [self.parts.candidates[i] for i in order], "scores": [float(scores[i]) for i in order]}

    @staticmethod
    def _span_answer(candidates: list, null: Optional[float] = None, answers: int = 0) -> dict:
        """The answer of a record from its windows' candidates (in window order, each window's likeliest first):
        as the pipeline, one answer per text (compared without case), its score the sum of its candidates'
        (one answer found in two overlapping windows, or from two spans that widen to the same words, adds up),
        its span the first candidate's; the highest score wins, the first found where they tie. ``null`` (with
        ``no_answer``: the least of the windows' no-answer scores, as the pipeline's
        ``handle_impossible_answer``) competes as the answer "" at 0..0, after the others where it ties.
        ``answers`` k > 0: ``{"answers": [...]}``, the k best so (the pipeline's ``top_k``)."""
        found: dict = {}
        for score, begin, end, text in candidates:
            key = text.lower()
            if key in found:
                found[key]["score"] += score
            else:
                found[key] = {"start": begin, "end": end, "text": text, "score": score}
        ranked = list(found.values()) + ([{"start": 0, "end": 0, "text": "", "score": null}] if null is not None else [])
        ranked.sort(key=lambda a: -a["score"])   # stable: the first found first among equals
        if answers:
            return {"answers": ranked[:answers]}
        return ranked[0] if ranked else {"start": 0, "end": 0, "text": "", "score": 0.0}

    @staticmethod
    def _words(e) -> dict:
        """``(sequence, word) -> [first token, last token, start, end]`` of each word of an encoding, in order
        (``start`` / ``end``: character offsets of its first token's start and its last token's end)."""
        words: dict = {}
        for t, word in enumerate(e.word_ids):
            if word is None or e.special_tokens_mask[t]:
                continue
            key = (e.sequence_ids[t], word)
            begin, end = e.offsets[t]
            if key not in words:
                words[key] = [t, t, begin, end]
            else:
                words[key][1], words[key][3] = t, end
        return words

    def _tag(self, logits, key, begin: int, end: int, record: Record) -> dict:
        """One word's tag from its tokens' ``logits`` (tokens, classes), as transformers' token-classification
        pipeline labels a word (``aggregation``): its first token's probabilities, their mean over its tokens,
        or those of its token with the highest one."""
        text = record.text if key[0] == 0 else record.pair
        # one class (an ELECTRA discriminator's "replaced"): its probability, as a one-class classifier's
        probs = (_sigmoid if logits.shape[-1] == 1 else _softmax)(logits.astype(np.float64))
        aggregation = self.parts.aggregation
        probs = probs.mean(axis=0) if aggregation == "average" else \
            probs[int(np.argmax(probs.max(axis=-1)))] if aggregation == "max" else probs[0]
        k = int(np.argmax(probs))
        return {"word": text[begin:end], "start": int(begin), "end": int(end),
                "in": "pair" if key[0] == 1 else "text", "label": self._label(k), "score": float(probs[k])}

    def _tags(self, logits, e, record: Record) -> list:
        return [(key, self._tag(logits[first:last + 1], key, begin, end, record))
                for key, (first, last, begin, end) in self._words(e).items()]

    @staticmethod
    def _tag_result(tags: list, classes: int, record: Record) -> dict:
        """``{"tags", "entities"}`` from ``(word key, tag)`` in word order. Entities as transformers'
        token-classification pipeline groups words (``aggregation_strategy`` first / average / max: the words'
        labels as :meth:`_tag` gives them): neighbouring words of one entity type (``B-X`` / ``I-X`` / ``X``) are one entity
        unless a word's label begins with ``B-``, ``O`` words are no entity, and an entity never crosses from a
        text into its pair. ``label``: the type, ``score``: the mean of its words' scores, ``start`` / ``end`` /
        ``text``: its character span. A one-class model (an ELECTRA discriminator) has no entities."""
        entities, current = [], None   # current: the entity the next word may join
        for (sequence, _), tag in tags if classes > 1 else []:
            label = tag["label"]
            kind = label[2:] if label[:2] in ("B-", "I-") else label
            if kind == "O":
                current = None
            elif current and current["sequence"] == sequence and current["label"] == kind and label[:2] != "B-":
                current["end"] = tag["end"]
                current["scores"].append(tag["score"])
            else:
                current = {"label": kind, "start": tag["start"], "end": tag["end"], "in": tag["in"],
                           "scores": [tag["score"]], "sequence": sequence}
                entities.append(current)
        for x in entities:
            text = record.text if x.pop("sequence") == 0 else record.pair
            x["text"], x["score"] = text[x["start"]:x["end"]], float(np.mean(x.pop("scores")))
        return {"tags": [tag for _, tag in tags], "entities": entities}

    def _window_tags(self, parts: list, encodings: list, record: Record) -> list:
        """A long text's tags from its overlapping windows (``parts``: (feature index, logits), in window order):
        each word tagged from the window that holds its first token, most of its tokens and, among those, the
        most tokens on its nearer side (the first window counts as open on the left, the last on the right: a
        text's ends are not cut), as BERT's reference code picks a token's "max context" window. A word with more
        tokens than a window shares with the next is whole in none: it keeps its whole span, and its tokens that
        window lacks are read from the other windows (``average`` / ``max`` see every token once)."""
        windows = [(self._words(encodings[i]), encodings[i], logits) for i, logits in parts]
        starts: dict = {}
        for words, _, _ in windows:
            for key, (_, _, begin, _) in words.items():
                starts[key] = min(begin, starts.get(key, begin))
        seen: dict = {}   # word -> [(rank, {token's character offsets: its logits}, start, end)], one per window
        for w, (words, e, logits) in enumerate(windows):
            content = [t for t, s in enumerate(e.sequence_ids) if s is not None and not e.special_tokens_mask[t]]
            for key, (first, last, begin, end) in words.items():
                left = np.inf if w == 0 else first - content[0]
                right = np.inf if w == len(windows) - 1 else content[-1] - last
                rank = (begin == starts[key], last - first + 1, min(left, right))
                tokens = {tuple(e.offsets[t]): logits[t] for t in range(first, last + 1)}
                seen.setdefault(key, []).append((rank, tokens, begin, end))
        tags = []
        for key in sorted(seen):
            held = sorted(seen[key], key=lambda x: x[0], reverse=True)   # stable: the earlier window among equals
            tokens: dict = {}
            for _, part, _, _ in held:   # the best window's tokens, then what it lacks from the others
                for offsets, row in part.items():
                    tokens.setdefault(offsets, row)
            row = np.stack([tokens[o] for o in sorted(tokens)])
            begin, end = min(x[2] for x in held), max(x[3] for x in held)
            tags.append((key, self._tag(row, key, begin, end, record)))
        return tags


_WHITESPACE = re.compile(r"[ \t\n\r\x0b\x0c]")   # where a long text may be cut (Engine._prefix)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))   # 1 / (1 + exp(-x)), without overflow


def _softmax(x: np.ndarray) -> np.ndarray:
    """Softmax along the last axis."""
    z = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


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
                raise InputError(f"{where}: " + ("a ranking takes (query, [document, ...]) tuples" if ranking else
                                                 "a multiple-choice model takes (text, [choice, ...]) or (text, "
                                                 "pair, [choice, ...]) tuples") + f", got {type(t).__name__}")
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
    return Path(out)


def windows(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    window: list = []
    for r in records:
        window.append(r)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


class Runtime:
    """A built model ready to run on text.

    >>> rt = bertc.Runtime("out/")              # picks the artifact for this host (rt.choice says which)
    >>> rt.run(["a sentence", "another one"])   # embeddings: a (2, dim) float32 array; other heads: dicts
    >>> mc.run([("The cat sat on", ["the mat", "the moon"])])   # a multiple-choice model: {"choice": 0, ...}

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
        import os

        artifact = _text("artifact", os.fspath(artifact) if isinstance(artifact, os.PathLike) else artifact)
        prompt, prompt_name = _text("prompt", prompt), _text("prompt_name", prompt_name)
        pair_prompt, pair_prompt_name = _text("pair_prompt", pair_prompt), _text("pair_prompt_name", pair_prompt_name)
        hypothesis_template = _text("hypothesis_template", hypothesis_template)
        scores, aggregation = _text("scores", scores), _text("aggregation", aggregation)
        embedding_precision = _text("embedding_precision", embedding_precision, optional=False)
        if candidate_labels is not None and not isinstance(candidate_labels, (str, list, tuple)):
            raise InputError(f"candidate_labels {candidate_labels!r}: a list of labels (or one string, the labels "
                             f"separated by commas), not {_kind_of(candidate_labels)}")
        self.report, self.spec = read_build(self.out)
        check_build_files(self.out, self.report)
        self.kind, self.outputs = result_kind(self.report, self.spec)
        self.choice = choose_artifact(self.report, artifact, device)
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
        self.threads, self.window, self.spinning = threads, max(window, batch_size), spinning
        self.max_len, self.max_len_why = max_sequence_length(self.spec), "the model's"
        self.truncate = truncation_default(self.out, self.kind) if truncate is None else bool(truncate)
        if max_length is not None:
            if not 1 <= max_length <= self.max_len:
                raise InputError(f"max_length {max_length!r}: from 1 to the model's maximum of {self.max_len} tokens")
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
            raise InputError("rank and similarity: a sentence embedder either scores each row's pair (--similarity) "
                             "or orders each row's documents (--rank), not both")
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
            raise InputError("a pair prompt is for the second text of each pair that --similarity compares, or for "
                             "the documents a sentence embedder ranks (Runtime(..., similarity=True) or rank=True)")
        if similarity or (rank and self.kind == "embedding"):
            # each pair's two texts, or a query and each of its documents, embedded alone and compared
            if self.kind != "embedding":
                raise InputError(f"similarity: compares a sentence embedder's embeddings of two texts (this model "
                                 f"gives {self.kind} results)")
            self.similarity, self.similarity_why = similarity_function(self.out, self.report)
            if pair_prompt is not None or pair_prompt_name is not None:   # e5 / bge: passages get their own
                self.pair_prompt, self.pair_prompt_why = sentence_prompt(self.out, self.report, self.kind,
                                                                         pair_prompt, pair_prompt_name)
            self.kind, answers = ("rank", top_k or 0) if rank else ("similarity", answers)
        path = self.out / self.choice.path
        if (self.report["artifacts"][self.choice.artifact].get("external_data")):
            raise InputError(f"{path.name} keeps its weights in external data files; bertc run needs a single-file artifact")
        try:
            model = path.read_bytes()
        except OSError as exc:
            raise BackendLoadError(f"{path.name}: listed in report.json but cannot be read: {exc}"
                                   f"{self._other_artifact(device)}") from None
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
        self.parts = EngineParts(model=model, model_name=path.name, tokenizer_json=tokenizer_json, **fill,
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
                                 vocab_size=_vocab_size(self.spec) or 0, provider_options=provider_options(backend))
        from bertc.quantize_embeddings import EmbeddingPrecision

        if self.kind != "embedding" and (embedding_precision != "float32" or calibration_embeddings is not None):
            raise InputError(f"embedding precision {embedding_precision}: only a sentence embedder's embeddings are "
                             f"written at another precision (this run gives {self.kind} results)")
        self.precision = EmbeddingPrecision(embedding_precision, calibration_embeddings)
        self._engine: Optional[Engine] = None
        self._lock = threading.Lock()   # one engine for every thread, and the count below: see :meth:`run`
        self.truncated = 0   # texts (records) cut to the model's maximum so far, by run(), run_file() or over Ray

    def _other_artifact(self, device: str) -> str:
        """Where the chosen artifact's file cannot be read: the artifact :func:`choose_artifact` picks among those
        whose files are there, as ``--artifact`` to run instead (or that there is none)."""
        there = {k: v for k, v in self.report["artifacts"].items()
                 if k != self.choice.artifact and isinstance(v, dict) and (self.out / str(v.get("path", ""))).is_file()}
        try:
            other = choose_artifact({**self.report, "artifacts": there}, None, device)
        except InputError:
            return "; no other ONNX artifact of this build that can run here is there: rebuild it"
        return (f"; the build is damaged: rebuild it, or run another of its artifacts that is there: --artifact "
                f"{other.artifact} ({other.path}; Runtime(..., artifact={other.artifact!r}))")

    def _zero_shot_parts(self, candidates, template, multi_label: bool, scores, labels) -> dict:
        """EngineParts' zero-shot fields (and ``self.kind`` "zero_shot") when candidate labels are given."""
        if candidates is None:
            if template is not None or multi_label:
                raise InputError("a hypothesis template and multi-label scoring are for zero-shot classification: "
                                 "give the candidate labels too (--labels)")
            return {}
        if isinstance(candidates, str):
            candidates = [c.strip() for c in candidates.split(",")]
        candidates = [str(c).strip() for c in candidates]
        if self.kind != "classification":
            raise InputError(f"candidate labels: zero-shot classification runs an NLI classifier (this model gives "
                             f"{self.kind} results)")
        if not candidates or any(not c for c in candidates):
            raise InputError(f"candidate labels {', '.join(map(repr, candidates))}: give one or more, none empty")
        if len(set(candidates)) < len(candidates):
            raise InputError(f"candidate labels {', '.join(map(repr, candidates))}: each label once")
        if scores is not None:
            raise InputError("--scores: a zero-shot result's scores are the labels' entailment probabilities")
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
            raise InputError(f"{self.out}: not a readable bertc build (its tokenizer, {where}: "
                             f"{' '.join(str(exc).split())[:300]}); rebuild it, or restore the file") from None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:   # threads that come first at once build one engine, not one each
                if self._engine is None:
                    self._engine = Engine(self.parts, self.threads, self.spinning)
        return self._engine

    def _count_cut(self, n: int) -> None:
        if n:
            with self._lock:
                self.truncated += n

    def __repr__(self) -> str:
        return f"Runtime({str(self.out)!r}: {self.kind} results from {self.choice.describe()})"

    # running ----------------------------------------------------------------------------------------
    def iter_results(self, records: Iterable[Record], progress: Optional[Callable[[int], None]] = None) -> Iterator[list]:
        """Results window by window, in input order (each window a list of results)."""
        for results, _ in self._iter_kept(records, progress):
            yield results

    def _iter_kept(self, records: Iterable[Record], progress=None) -> Iterator[tuple[list, list]]:
        """(results, their records' kept values) window by window, in input order; counts the records that
        truncation cut (``self.truncated``)."""
        engine = self.engine
        for window in windows(records, self.window):
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

    def run(self, texts: Iterable):
        """Results of ``texts`` (strings, or (text, pair) tuples; for a multiple-choice model (text, [choice, ...])
        or (text, stem, [choice, ...]) tuples) in their order: an (n, dim) float32 array for an embedder (int8 or
        uint8 at another ``embedding_precision``), else a list with one result per text (see the module docstring)."""
        if isinstance(texts, str):
            raise InputError("Runtime.run takes a list of texts; for one text pass [text]")
        if isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
            raise InputError(f"Runtime.run takes a list (or any iterable) of texts, not {_kind_of(texts)}")
        from collections.abc import Mapping, Set

        if isinstance(texts, Mapping):   # iterating one gives its keys
            raise InputError(f"Runtime.run takes a list (or any ordered iterable) of texts, not {_kind_of(texts)}, "
                             f"whose keys it would read as the texts: pass list(texts.values()) for its values")
        if isinstance(texts, Set):   # a set, frozenset, dict keys / items view
            raise InputError(f"Runtime.run takes a list (or any ordered iterable) of texts, not {_kind_of(texts)}: "
                             f"results come in the texts' order, which a set has not; pass a list")
        results = [r for window in self.iter_results(_records(texts, self.kind in ("choice", "rank"),
                                                              self.kind == "rank")) for r in window]
        if self.kind == "embedding":
            dim = self.engine.session.get_outputs()[0].shape[-1]
            return np.stack(results) if results else \
                np.zeros((0, self.precision.width(dim) if isinstance(dim, int) else 0), self.precision.dtype)
        return results

    def run_file(self, input_path, result_path, *, input_format: Optional[str] = None, text_field: str = "text",
                 pair_field: Optional[str] = None, result_format: Optional[str] = None, force: bool = False,
                 progress: Optional[Callable[[int], None]] = None, total_hint: Optional[Callable[[int], None]] = None,
                 ray_address: Optional[str] = None, ray_actors: Optional[int] = None,
                 choices_field: Optional[str] = None, keep_fields=None, documents_field: Optional[str] = None) -> int:
        """Read INPUT, write RESULT (atomically), return the number of rows. ``ray_address`` ("" for a
        local Ray) runs the job over Ray Data instead of in this process (:func:`bertc.runtime.run_ray`).
        ``choices_field``: a multiple-choice model's choices (:func:`bertc.run_io.input_spec`); ``keep_fields``
        ("id,url" or a list): input fields each result row gets too, beside the result (JSONL, CSV, Parquet)."""
        import os

        from bertc import run_io
        from bertc.errors import OutputError

        if choices_field is not None and self.kind != "choice":
            raise InputError(f"--choices-field: only a multiple-choice model reads choices (this model gives "
                             f"{self.kind} results)")
        if documents_field is not None and self.kind != "rank":
            raise InputError(f"--documents-field: only a ranking (--rank) reads documents (this model gives "
                             f"{self.kind} results)")
        spec = run_io.input_spec(input_path, input_format, text_field, pair_field, self.kind in ("choice", "rank"),
                                 choices_field or documents_field, keep_fields, ranking=self.kind == "rank")
        fmt = run_io.result_format(result_path, self.kind, result_format, spec.keep)
        if not spec.stdin and str(result_path) != run_io.STDIO and Path(result_path).exists() \
                and os.path.samefile(spec.path, result_path):   # a link or another spelling of the same file too
            raise OutputError(f"-o {result_path}: is the input {spec.path} itself; the result would replace the "
                              f"input (--force does not change that): write the result to another file")
        if total_hint:
            total_hint(run_io.count_rows(spec))
        rows = 0

        def empty_width() -> Optional[int]:
            """An embedding row's width at this precision, from the ONNX output's shape (an empty result's)."""
            shape = next((o.shape for o in self.engine.session.get_outputs()
                          if o.name == self.outputs.get("embedding")), None)
            return self.precision.width(shape[-1]) if shape and isinstance(shape[-1], int) else None

        with run_io.atomic_result(result_path, fmt, self.kind, force, spec.keep, self.precision.dtype,
                                  run_io.kept_types(spec), empty_width) as writer:
            if ray_address is not None:
                batches = run_ray(self, run_io.read_records(spec), ray_address, ray_actors, progress, kept=True)
            else:
                batches = self._iter_kept(run_io.read_records(spec), progress)
            for results, kept in batches:
                writer.write(results, kept)
                rows += len(results)
        return rows


# --- Ray Data ----------------------------------------------------------------------------------------

class RayPredictor:
    """The ``map_batches`` actor: one engine (one ONNX Runtime session with ``threads`` threads) per actor,
    built from the :class:`EngineParts` in Ray's object store. Each result leaves as bytes (an embedding's
    float32 row, else JSON), with the row's index so that the driver writes every row once, in order. A
    bertc error (an over-long text) leaves as data too (``error``): Ray Data would wrap a raised one into
    an exception that no longer says what it was."""

    def __init__(self, parts_ref, threads: int):
        import ray

        parts = parts_ref[0] if isinstance(parts_ref, list) else parts_ref
        self.engine = Engine(ray.get(parts) if isinstance(parts, ray.ObjectRef) else parts, threads)

    def __call__(self, batch: dict) -> dict:
        index = np.asarray(batch["index"], np.int64)
        options = batch["choices"] if "choices" in batch else [()] * len(index)
        records = [Record(str(t), str(p) if has else None, str(w), tuple(str(c) for c in choices) or None)
                   for t, p, has, w, choices in zip(batch["text"], batch["pair"], batch["has_pair"], batch["where"],
                                                    options)]
        errors = np.array([""] * len(index), dtype=object)
        kept = batch["kept"] if "kept" in batch else np.array([b""] * len(index), dtype=object)   # passed through
        try:
            results = self.engine.predict(records)
        except BertcError as exc:
            errors[0] = json.dumps([type(exc).__name__, str(exc)])
            return {"index": index, "result": np.array([b""] * len(index), dtype=object), "error": errors,
                    "kept": kept, "cut": np.zeros(len(index), dtype=bool)}
        if self.engine.parts.kind == "embedding":
            encoded = [np.asarray(r, "<f4").tobytes() for r in results]
        else:
            encoded = [json.dumps(r, ensure_ascii=False).encode() for r in results]
        cut = np.array([r.where in self.engine.cut for r in records], dtype=bool)
        return {"index": index, "result": np.array(encoded, dtype=object), "error": errors, "kept": kept, "cut": cut}


def _ray_blocks(records: Iterable[Record], size: int):
    """The input as pyarrow tables of ``size`` rows (index, text, pair, has_pair, where, choices, kept: the kept
    values pickled, which the actors pass back untouched), put in Ray's object store one at a time (Ray spills them
    to disk when its memory is full)."""
    import pickle

    import pyarrow as pa
    import ray

    refs, index = [], 0
    for window in windows(records, size):
        table = pa.table({"index": pa.array(range(index, index + len(window)), pa.int64()),
                          "text": [r.text for r in window], "pair": [r.pair or "" for r in window],
                          "has_pair": [r.pair is not None for r in window], "where": [r.where for r in window],
                          "choices": pa.array([list(r.choices or ()) for r in window], pa.list_(pa.string())),
                          "kept": pa.array([pickle.dumps(r.kept) if r.kept else b"" for r in window], pa.binary())})
        refs.append(ray.put(table))
        index += len(window)
    return refs, index


RAY_CONNECT_TIMEOUT = 10.0   # seconds for a Ray cluster's address to answer at all


def _check_reachable(address: str, named: str) -> None:
    """Refuse a ``HOST:PORT`` or ``ray://HOST[:PORT]`` address that no TCP connection reaches within
    ``RAY_CONNECT_TIMEOUT`` (a closed port, an unknown host, a host that does not answer): ``ray.init`` would
    retry it for good, printing "Failed to get cluster ID" lines; or one where something else than a Ray cluster
    answers (:func:`_not_grpc`: a web server's port), where ``ray.init`` would wait for good. ``named``: the address
    as the message says it (the option or RAY_ADDRESS). An address without a port (``auto``, a malformed one) is
    left to Ray."""
    import socket

    client = address.startswith("ray://")
    rest = address[len("ray://"):] if client else address
    host, colon, port = rest.rpartition(":")
    if not colon:
        host, port = (rest, "10001") if client else ("", "")   # Ray Client's default port
    host = host.strip("[]")   # [::1]:6379
    if not host or not port.isdigit():
        return
    try:
        connection = socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT)
    except socket.gaierror as exc:
        why = f"unknown host {host!r} ({exc.strerror})"
    except socket.timeout:
        why = f"no answer from {host}:{port} in {RAY_CONNECT_TIMEOUT:g} s"
    except OSError as exc:
        why = f"{host}:{port}: {exc.strerror or exc}"
    else:
        why = _not_grpc(connection, f"{host}:{port}")
        if why is None:
            return
    raise InputError(f"{named}: cannot connect to a Ray cluster: {why} (a cluster's address is its head's "
                     f"HOST:PORT, the GCS port, 6379 by default, or ray://HOST:10001 for Ray Client)")


# HTTP/2's client connection preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, Ray Client's server)
# answers with its own SETTINGS frame (type 4, the fourth byte of the 9-byte frame header)
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _not_grpc(connection, where: str) -> Optional[str]:
    """None when the server at the other end of ``connection`` speaks gRPC (HTTP/2), as a Ray cluster's GCS and Ray
    Client's server do; else why not (a web server, a database, a port that accepts and stays silent): ``ray.init``
    would wait on such a port for good. Closes ``connection``."""
    import socket

    data = b""
    try:
        with connection:
            connection.sendall(_HTTP2_PREFACE)
            while len(data) < 9:
                chunk = connection.recv(9 - len(data))
                if not chunk:
                    break
                data += chunk
    except socket.timeout:
        if not data:
            return f"{where} accepts connections but does not answer as a Ray cluster (a gRPC server) does, in " \
                   f"{RAY_CONNECT_TIMEOUT:g} s"
    except OSError as exc:
        return f"{where}: {exc.strerror or exc}"
    if len(data) == 9 and data[3] == 4:
        return None
    reply = f"it replied {data!r}" if data else "it closed the connection"
    return f"{where} answers, but not as a Ray cluster (a gRPC server) does: {reply}"


def ray_init(address: Optional[str]):
    try:
        import ray
    except ImportError:
        from bertc.run_io import RAY_MISSING

        raise MissingLibrary(RAY_MISSING) from None
    if not ray.is_initialized():
        import os

        if address and address != "auto":
            _check_reachable(address, f"--ray {address}")
        elif os.environ.get("RAY_ADDRESS") and os.environ["RAY_ADDRESS"] != "auto":   # what ray.init connects to
            _check_reachable(os.environ["RAY_ADDRESS"], f"--ray {address or '(local)'}: RAY_ADDRESS="
                                                        f"{os.environ['RAY_ADDRESS']}")
        kwargs = {"address": address} if address else {}
        import signal

        # ray.init puts its own SIGTERM handlers over the caller's (Python's: exit; its core worker's: a stack dump,
        # then abort, exit 134, which skips every cleanup); a Python handler of the caller's (bertc run's: unwind,
        # remove the temporary result, shut the local Ray down at exit, exit 143) is put back afterwards
        main = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main else None
        try:
            ray.init(**kwargs, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                     ignore_reinit_error=True)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise InputError(f"--ray {address or '(local)'}: cannot connect to a Ray cluster: "
                             f"{' '.join(str(exc).split())[:300]}") from None
        finally:
            if callable(sigterm):
                signal.signal(signal.SIGTERM, sigterm)
    return ray


def run_ray(runtime: Runtime, records: Iterable[Record], address: Optional[str] = None,
            actors: Optional[int] = None, progress: Optional[Callable[[int], None]] = None,
            predictor=RayPredictor, kept: bool = False) -> Iterator[list]:
    """The runtime's job over Ray Data: ``map_batches`` with a pool of ``actors`` (default: the cluster's
    CPUs divided by the threads per actor) :class:`RayPredictor` actors of ``runtime.threads`` threads each
    (default 1). Yields results in input order, each row exactly once: a worker that dies is restarted by
    Ray and its batch retried; a row seen twice is dropped, a row missing is an error. ``kept``: yields
    (results, their records' kept values) instead."""
    ray = ray_init(address)
    import logging

    import ray.data

    for name in ("ray.data", "ray"):  # Ray Data's INFO lines (plan, "execution finished") off the console
        logging.getLogger(name).setLevel(logging.WARNING)
    # and its "Progress bars disabled. To enable, set ...": bertc turns them off, and draws its own
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)

    threads = runtime.threads or 1
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    if hasattr(context, "enable_operator_progress_bars"):
        context.enable_operator_progress_bars = False
    # one block per window, one window per map_batches call: the same windows, sorted and batched as in one
    # process, so the same results (dynamic int8 quantizes each batch's activations with its own scale)
    refs, total = _ray_blocks(records, runtime.window)
    if not total:
        return
    parts_ref = ray.put(runtime.parts)
    # no more actors than windows (the rest would idle, and Ray Data warns of them); restarts and retries are Ray
    # Data's defaults for an actor pool (max_restarts=-1, max_task_retries=-1), which passing them as remote args
    # (deprecated: Ray 2.64 drops them) only repeated
    ds = ray.data.from_arrow_refs(refs).map_batches(
        predictor, fn_constructor_args=([parts_ref], threads), batch_size=runtime.window, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(actors, len(refs))), num_cpus=threads)
    batches = _ordered_once(runtime, ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2),
                            total, progress)
    yield from (batches if kept else (results for results, _ in batches))


def _actor_error(message: str) -> BertcError:
    from bertc import errors

    name, text = json.loads(message)
    cls = getattr(errors, name, BertcError)
    return cls(text) if cls in (InputError, BackendLoadError, errors.OutputError) else BertcError(text)


def _ordered_once(runtime: Runtime, batches, total: int, progress) -> Iterator[tuple[list, list]]:
    """The results of ``batches`` (each with its rows' ``index``), checked to come in input order with every
    row exactly once: a row seen again (a retried batch) is dropped, a row missing is an error. Yields
    (results, their rows' kept values)."""
    import pickle

    expected = 0
    for batch in batches:
        failed = [e for e in batch["error"] if e]
        if failed:
            raise _actor_error(failed[0])
        index = batch["index"]
        keep = index >= expected
        if not keep.any():
            continue
        index = index[keep]
        if index[0] != expected or np.any(np.diff(index) != 1):
            raise BertcError(f"the Ray job lost rows: expected row {expected}, got {int(index[0])}")
        expected = int(index[-1]) + 1
        if runtime.kind == "embedding":
            results = runtime.at_precision([np.frombuffer(r, "<f4") for r in batch["result"][keep]])
        else:
            results = [json.loads(r) for r in batch["result"][keep]]
        runtime._count_cut(int(np.count_nonzero(batch["cut"][keep])))
        if progress:
            progress(len(results))
        yield results, [pickle.loads(k) if len(k) else () for k in batch["kept"][keep]]
    if expected != total:
        raise BertcError(f"the Ray job returned {expected} of {total} rows")


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
        self.stream.write(f"\r  {text}  {self.rate():,.1f} {self.label}/s ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

