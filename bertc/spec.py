"""The bertc spec: typed, frozen models, ``load_spec`` and error formatting.

The ``type`` unions (encoder, head, embedding, block, attention, feedforward)
are built from the registries, so a component registered later (a plug-in)
is accepted as soon as it is registered.
"""
from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, ValidationError

from bertc import registry, specjson
from bertc.errors import SpecError, said
from bertc.names import EXPORT_VARIANTS  # the command line reads it without pydantic
from bertc.specbase import (PositiveInt, StrictModel, component_field, json_path, rebuild_component_models,
                            vocab_size_problem, walk_problems)

# Parity / bench backend names: an artifact id (see the artifact contract in report.json) with, for
# ONNX artifacts, the execution provider it runs on. fp32 backends are held to atol/rtol; the reduced-
# precision ones (int8, fp16) to the task-level criteria of ``parity.task``.
FP32_BACKENDS = ("onnx_cpu", "onnx_cuda", "onnx_optimized_cpu", "onnx_optimized_cuda", "tflite",
                 "onnx_packed_cpu", "onnx_packed_cuda")
REDUCED_BACKENDS = ("onnx_int8_cpu", "onnx_int8_cuda", "onnx_fp16_cpu", "onnx_fp16_cuda", "tflite_int8", "tflite_fp16",
                    "onnx_packed_int8_cpu", "onnx_packed_int8_cuda", "onnx_packed_fp16_cpu", "onnx_packed_fp16_cuda")
BACKENDS = FP32_BACKENDS + REDUCED_BACKENDS
BackendName = Literal[BACKENDS]  # type: ignore[valid-type]


class ExportSpec(StrictModel):
    onnx: bool = True
    tflite: bool = True
    # The ONNX Runtime artifact lowered straight from the spec (fused com.microsoft operators).
    optimized: bool = True
    # Reduced-precision variants: onnx_int8 (dynamic quantization of the optimized graph, for CPUs),
    # onnx_fp16 (for ONNX Runtime's CUDA provider), tflite_int8 (dynamic-range), tflite_fp16; onnx_packed
    # (the padding-free optimized graph: per-token work on the real tokens only, bertc/optimize/padding_free.py)
    # and its onnx_packed_int8 / onnx_packed_fp16 conversions.
    variants: Annotated[list[Literal[EXPORT_VARIANTS]], Field(json_schema_extra={"uniqueItems": True})] = ["onnx_int8"]
    # A residual sum followed by a layer norm in the optimized artifact: "decomposed" (Sum + LayerNormalization,
    # the default: ONNX Runtime's CPU SkipLayerNormalization kernel is several times slower than the two ops,
    # tools/bench_layer_norm.py; a Sum, not an Add, so that ORT's session optimizer does not fuse them back) or
    # "fused" (com.microsoft SkipLayerNormalization, one kernel: for a graph that only runs on CUDA).
    skip_layer_norm: Literal["decomposed", "fused"] = "decomposed"
    opset: Literal[17, 18] = 17
    input_dtype: Literal["int32", "int64"] = "int32"
    keep_saved_model: bool = False

    def problems(self, ctx):
        # (a variant that export.optimized / export.tflite false leaves out is not a problem here: a build of an
        # earlier bertc may have written such an OUT/spec.json; bertc build and validate refuse a spec that names one,
        # variants_left_out, and --variants naming one that the build leaves out is refused by it)
        yield from _repeats(self.variants, "variants")


def _repeats(values: list, field: str):
    """A problem for each value that an earlier item of the list ``field`` already holds."""
    first: dict = {}
    for i, value in enumerate(values):
        if value in first:
            yield (field, i), f"{json.dumps(value)} is listed twice (already at {field}[{first[value]}])"
        else:
            first[value] = i


def variants_left_out(export: ExportSpec) -> list[tuple[str, str]]:
    """(JSON path, problem) for each variant a spec names (``export.variants`` written in it) that its own export
    settings leave unbuilt: a TFLite variant with ``export.tflite`` false, an ONNX one with ``export.optimized``
    false (``export.onnx`` false leaves out the portable model.onnx alone: the variants are made from the optimized
    artifact). Such a build had no such artifact and said nothing (``--variants`` naming it was refused). Checked
    by ``bertc validate`` and by ``bertc build`` where no ``--variants`` replaces the list; ``bertc parity`` /
    ``run`` / ``bench`` never check a build's OUT/spec.json for it (an earlier bertc's may hold such a list)."""
    if "variants" not in export.model_fields_set:   # the default: left out quietly, as OUT/spec.json records
        return []
    problems = []
    for i, variant in enumerate(export.variants):
        off = "tflite" if variant.startswith("tflite") else "optimized"
        if not getattr(export, off):
            made = "TFLite" if off == "tflite" else "optimized ONNX"
            problems.append((f"$.export.variants[{i}]", f"{json.dumps(variant)}: export.{off} false leaves no {made} "
                                                        f"artifact to make it from; drop one of them"))
    return problems


def backend_builder(backend: str, export: "ExportSpec") -> Optional[str]:
    """Why the spec's export builds no artifact for ``backend`` (the export setting that leaves it out), or None."""
    if backend.startswith("onnx_packed"):
        variant = "onnx_packed" + backend[len("onnx_packed"):].rsplit("_", 1)[0]
        if not export.optimized:
            return "$.export.optimized is false"
        if variant not in export.variants:
            return f"$.export.variants does not list {variant!r}"
    elif backend.startswith("onnx_optimized"):
        if not export.optimized:
            return "$.export.optimized is false"
    elif backend in ("onnx_cpu", "onnx_cuda"):
        if not export.onnx:
            return "$.export.onnx is false"
    elif backend == "tflite" and not export.tflite:
        return "$.export.tflite is false"
    return None


class Tolerance(StrictModel):
    atol: Annotated[float, Field(ge=0.0, le=1.0)] = 1e-4
    # relative to |reference|, per value: fp32 rounding grows with the value (its unit in the last place is 4.9e-4
    # at 5,000, an outlier channel's size in trained models), so atol alone failed exact builds on a few ulps
    rtol: Annotated[float, Field(ge=0.0, le=1.0)] = 1e-5


class TaskCriteria(StrictModel):
    """Pass criteria of reduced-precision artifacts (int8, fp16), checked per output."""

    min_argmax_agreement: Annotated[float, Field(ge=0.0, le=1.0)] = 0.99  # logits / log-probs outputs
    min_cosine: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.99  # feature outputs
    # Sentence embeddings (feature outputs without a sequence axis): Spearman rank correlation of the
    # within-batch cosine similarities (every pair of rows) against the reference's, in every case of at
    # least 4 rows: what retrieval users depend on (the order of neighbours), beside the per-row cosine.
    min_rank_agreement: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.95
    # A prediction whose reference top-1 / chosen-class margin is within this fraction of the reference
    # output's range (in that case) is a near-tie: any rounding may flip it, so it is not a disagreement.
    argmax_tie_fraction: Annotated[float, Field(ge=0.0, le=0.5)] = 0.01


# Above this many positions a model is long-context: validation pads to the lengths parity checks
# (bertc.check.validation_length), and `bertc import` names those lengths (parity.sequence_lengths).
LONG_CONTEXT = 2048


class ParitySpec(StrictModel):
    enabled: bool = True
    default: Tolerance = Tolerance()
    task: TaskCriteria = TaskCriteria()
    # Per-backend atol / rtol for the fp32 backends (the others use ``task``).
    # (the schema names the fp32 backends alone; any other is refused with the reason, see problems)
    backends: Annotated[dict[BackendName, Tolerance],
                        Field(json_schema_extra={"propertyNames": {"enum": list(FP32_BACKENDS)}})] = {}
    batch_sizes: Annotated[list[PositiveInt], Field(min_length=1, json_schema_extra={"uniqueItems": True})] = [1, 3]
    sequence_lengths: Optional[Annotated[list[PositiveInt], Field(min_length=1)]] = Field(
        default=None, json_schema_extra={"uniqueItems": True})

    def tolerance(self, backend: str) -> Tolerance:
        return self.backends.get(backend, self.default)

    def problems(self, ctx):
        for name in self.backends:
            if name in REDUCED_BACKENDS:
                yield ("backends", name), (
                    f"{name} runs a reduced-precision artifact: it is judged by parity.task "
                    "(min_argmax_agreement, min_cosine), not by atol/rtol")
        yield from _repeats(self.batch_sizes, "batch_sizes")
        yield from _repeats(self.sequence_lengths or [], "sequence_lengths")
        max_len = ctx.get("max_sequence_length")
        for i, n in enumerate(self.sequence_lengths or []):
            if max_len and n > max_len:
                yield ("sequence_lengths", i), (
                    f"{n} exceeds the encoder's max_sequence_length {max_len} (at {ctx['max_sequence_length_path']})")


class Spec(StrictModel):
    schema_uri: Optional[str] = Field(default=None, alias="$schema")
    name: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]
    description: str = ""
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    # Trained weights to load into the built model (a path relative to the spec file): a Hugging Face
    # directory or .safetensors file, a TF checkpoint (original BERT names or Model Garden), a .keras file.
    weights: Optional[str] = None
    encoder: component_field("encoder")
    head: Optional[component_field("head")] = None
    export: ExportSpec = ExportSpec()
    parity: ParitySpec = ParitySpec()

    model_config = {**StrictModel.model_config, "populate_by_name": True}

    def problems(self, ctx):
        if self.weights is not None and "\x00" in self.weights:   # JSON's \u0000: no file system's path holds it
            yield ("weights",), "holds a NUL character (\\u0000), which no path can hold"
        if getattr(self.encoder, "hidden_size", None) == 1:   # every encoder type (plug-ins too)
            yield ("encoder", "hidden_size"), (
                "is 1: a hidden size of at least 2 is needed (a layer norm over a single value outputs its beta "
                "whatever the input, so the model would ignore its input; and the portable ONNX export "
                "mis-converts a single attention head of size 1)")
        # zeros reaching the embedding tables (the embedding's own initializer, else the encoder's): every token
        # embeds to the same vector, so the outputs do not depend on the input (a zeros initializer elsewhere, a
        # head's or a block's own, is the spec's choice)
        embedding = getattr(self.encoder, "embedding", None)
        own = getattr(embedding, "initializer", None)
        where = ("encoder", "embedding", "initializer", "type") if own is not None else ("encoder", "initializer", "type")
        if getattr(own if own is not None else getattr(self.encoder, "initializer", None), "type", None) == "zeros":
            yield where, (
                "is 'zeros' and initializes the embedding tables: every token would embed to the same vector (0), so "
                "every output is the same whatever the input and the weights after it get no gradient; use a random "
                "initializer (truncated_normal, normal, glorot_uniform)")
        # the shipped encoders and embeddings refuse such a vocabulary as they read it (VocabSize); any other
        # (a plug-in's) is held to the same bounds here
        vocab = getattr(self.encoder, "vocab_size", None)
        if isinstance(vocab, int) and vocab_size_problem(vocab):
            own = "vocab_size" in type(self.encoder).model_fields
            yield ("encoder", "vocab_size") if own else ("encoder", "embedding", "vocab_size"), vocab_size_problem(vocab)
        for name in self.parity.backends:
            if name in FP32_BACKENDS and backend_builder(name, self.export):
                yield ("parity", "backends", name), (
                    f"a tolerance for {name}, whose artifact this spec does not build "
                    f"({backend_builder(name, self.export)})")
        if self.head is not None and not self.encoder.has_pooler:
            from bertc.registry import HEADS

            if HEADS.create(self.head, self.encoder).uses_pooled:
                if "pooler" in type(self.encoder).model_fields:
                    yield ("encoder", "pooler"), (f"is false, but the {self.head.type!r} head at $.head reads the "
                                                  f"pooled output"
                                                  + (" (pool the sequence: pooling 'first' or 'mean')"
                                                     if "pooling" in type(self.head).model_fields else ""))
                else:
                    yield ("head",), (f"the {self.head.type!r} head reads the encoder's pooled output, but the "
                                      f"{self.encoder.type!r} encoder has no pooler"
                                      + (" (pool the sequence: pooling 'first' or 'mean')"
                                         if "pooling" in type(self.head).model_fields else ""))

    def child_context(self, ctx, path):
        # bert / albert declare max_sequence_length themselves; a scaffold encoder takes it from its embedding.
        own = "max_sequence_length" in type(self.encoder).model_fields
        seq_path = ("encoder", "max_sequence_length") if own else ("encoder", "embedding", "max_sequence_length")
        return {**ctx, "max_sequence_length": self.encoder.max_sequence_length,
                "max_sequence_length_path": json_path(seq_path)}


_built_generation = -1


def ensure_models() -> None:
    """Rebuild the spec models from the registries' current contents (plug-ins included).

    Component fields are resolved when a model's schema is built (see
    :class:`bertc.specbase.ComponentOf`), so after a registration the models are rebuilt,
    leaves first, with pydantic's public ``model_rebuild``. Cheap when nothing changed.
    """
    global _built_generation
    import bertc.components  # noqa: F401 - registers the shipped components

    if _built_generation == registry.generation():
        return
    rebuild_component_models()
    Spec.model_rebuild(force=True)
    _built_generation = registry.generation()


def _all_field_names() -> set[str]:
    names = set(Spec.model_fields) | {"$schema"}
    for reg in registry.ALL:
        for e in reg.entries():
            names |= set(e.spec.model_fields)
    for m in (ExportSpec, ParitySpec, Tolerance, TaskCriteria):
        names |= set(m.model_fields)
    return names


def _user_loc(loc: tuple, raw: Any) -> tuple:
    """Drop the parts of a pydantic location the user never wrote (union tags, wrapped lists)."""
    out, node = [], raw
    for part in loc:
        if isinstance(node, dict):
            if part in node:
                out.append(part)
                node = node[part]
            elif isinstance(part, int) or node.get("type") == part:
                continue  # a dict accepted as a one-item list, or a discriminated-union tag
            else:
                out.append(part)
                node = None
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            out.append(part)
            node = node[part]
        elif isinstance(part, str) and "[" in part:  # pydantic's internal step names (e.g. 'function-after[...]')
            continue
        else:
            out.append(part)
            node = None
    return tuple(out)


def _own_fields(loc: tuple, data: Any) -> Optional[set[str]]:
    """The keys the object holding the unknown key at ``loc`` takes: the spec's own, export's, parity's, or those of
    the component types named by its ``type``; None where that cannot be told (a suggestion then comes from every
    key bertc knows)."""
    parent = _user_loc(loc[:-1], data)
    node = data
    for part in parent:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    if not parent:
        return set(Spec.model_fields) | {"$schema"}
    if parent in (("export",), ("parity",)):
        return set((ExportSpec if parent[0] == "export" else ParitySpec).model_fields)
    kind = node.get("type") if isinstance(node, dict) else None
    fields = {f for reg in registry.ALL for e in reg.entries() if e.name == kind for f in e.spec.model_fields}
    return fields or None


def _message(err: dict, known_fields: set[str], data: Any = None) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        key = err["loc"][-1]
        own = _own_fields(tuple(err["loc"]), data)
        if key in known_fields and (own is None or key not in own):   # a key of other component types
            return f"unknown key {key!r} for this component (other component types take it)"
        close = difflib.get_close_matches(str(key), sorted(own if own is not None else known_fields), n=1)
        return f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        from bertc.registry import close_matches

        known = [t.strip().strip("'\"") for t in str(ctx.get("expected_tags") or "").split(",")]
        return (f"unknown type {ctx.get('tag')!r}{close_matches(ctx.get('tag'), [k for k in known if k])}; known "
                f"types: {ctx.get('expected_tags')} (a plug-in's component? load its module first: "
                f"{said('bertc --plugin MODULE|FILE.py ...', 'bertc.load_plugin(MODULE or FILE.py)')})")
    if kind == "union_tag_not_found":
        return "missing 'type' (says which component this is)"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value).bit_length() > 128:
        msg += f", got an integer of about {int(abs(value).bit_length() * 0.30103) + 1:,} digits"
    elif isinstance(value, (int, float, str, bool)) or value is None:
        msg += f", got {json.dumps(value)}"
    return msg


def _cross_problems_beside(data: dict, exc: ValidationError, rounds: int = 6) -> list[tuple[str, str]]:
    """The cross-field problems (:func:`walk_problems`) of a spec that also has field problems, so that one run
    lists every problem: each wrong value is taken out (its default takes its place; a required one takes its
    whole object out, where that object is optional) until the rest validates. A problem that may come from what
    stands in for a taken-out value (in the same object or below it, or naming that key) is left out rather than
    reported wrongly. When what is wrong cannot be taken out (the encoder itself, a component's type), the sections
    that do not depend on the encoder are checked alone (:func:`_section_problems`)."""
    import copy

    repaired, removed = copy.deepcopy(data), []

    def take_out(loc: tuple) -> bool:
        parent = repaired
        for part in loc[:-1]:
            if isinstance(parent, dict) and part in parent or \
                    isinstance(parent, list) and isinstance(part, int) and part < len(parent):
                parent = parent[part]
            else:
                return False
        if not loc or not isinstance(parent, dict) or loc[-1] not in parent or loc[-1] == "type" or \
                loc == ("encoder",):
            return False
        del parent[loc[-1]]
        removed.append(loc)
        return True

    for _ in range(rounds):
        for err in exc.errors():
            loc = _user_loc(err["loc"], repaired)
            # a required value cannot be taken out alone: its object goes (the head, a block's part), if it may
            target = loc[:-1] if err["type"] == "missing" else loc
            while target and isinstance(target[-1], int):   # an item of a list: the list's owner key
                target = target[:-1]
            if not take_out(target):
                return _section_problems(data, exc)
        try:
            spec = Spec.model_validate(repaired)
        except ValidationError as again:
            exc = again
            continue
        keys = {str(loc[-1]) for loc in removed}
        found = []
        for loc, msg in walk_problems(spec, (), {}):
            where = _user_loc(loc, data)
            if any(where[:-1] == r[:-1] or where[:len(r)] == r for r in removed) or \
                    any(re.search(rf"\b{re.escape(k)}\b", msg) for k in keys):
                continue
            found.append((json_path(where), msg))
        return found
    return _section_problems(data, exc)


def _section_problems(data: dict, exc: ValidationError) -> list[tuple[str, str]]:
    """The cross-field problems of the export and parity sections checked alone, where the spec around them cannot
    be repaired (a wrong encoder field hid a variant listed twice): each section with no field problem of its own,
    without what needs the encoder (a sequence length against its maximum)."""
    wrong = {_user_loc(err["loc"], data)[:1] for err in exc.errors()}
    found = []
    for key, model in (("export", ExportSpec), ("parity", ParitySpec)):
        section = data.get(key)
        if not isinstance(section, dict) or (key,) in wrong:
            continue
        try:
            part = model.model_validate(section)
        except ValidationError:
            continue
        found += [(json_path((key, *loc)), msg) for loc, msg in walk_problems(part, (), {})]
    return found


def _validate(data: Any, source: str, problems: Optional[list[tuple[str, str]]] = None) -> Spec:
    """Validate parsed spec data; ``problems`` are ones already found in the text (duplicate keys),
    reported together with the rest."""
    ensure_models()
    problems = list(problems or [])
    if not isinstance(data, dict):
        raise SpecError(source, problems + [("$", f"the spec must be a JSON object, got {type(data).__name__}")])
    deep = specjson.depth_problem(data)
    if deep is not None:
        raise SpecError(source, problems + [deep])
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        known = _all_field_names()
        seen = set(problems)
        for err in exc.errors():
            item = (json_path(_user_loc(err["loc"], data)), _message(err, known, data))
            if item not in seen:
                seen.add(item)
                problems.append(item)
        problems += [p for p in _cross_problems_beside(data, exc) if p not in seen]
        raise SpecError(source, problems) from None
    problems += [(json_path(_user_loc(loc, data)), msg) for loc, msg in walk_problems(spec, (), {})]
    if problems:
        raise SpecError(source, problems)
    return spec


def _decode(raw: bytes, source: str) -> str:
    """A spec file's text: UTF-8, with or without the byte order mark that Windows editors write first."""
    if raw.startswith(b"PK\x03\x04"):   # a zip: a Keras model (model.keras) named where a spec goes
        raise SpecError(source, [("$", "a zip archive (a Keras .keras model?), not a JSON spec: a build's spec is the "
                                       "spec.json beside its model.keras; `bertc import FILE.keras -o spec.json` "
                                       "makes a spec of a .keras model")])
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SpecError(source, [("$", "the file is UTF-16 text (it starts with a UTF-16 byte order mark); "
                                       "a spec is UTF-8: save it as UTF-8")])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[:exc.start]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        raise SpecError(source, [(f"line {line}, column {column}",
                                  f"not UTF-8 text (byte 0x{raw[exc.start]:02x}): a spec is UTF-8; save it as "
                                  f"UTF-8")]) from None


def load_spec(source: Union[str, Path, dict]) -> Spec:
    """Load and validate a spec from a JSON file path or a dict. Raises :class:`SpecError`."""
    if isinstance(source, dict):
        return _validate(source, "<spec>")
    path = Path(source)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(str(path), [("$", "file not found (no spec file at this path)")]) from None
    except OSError as exc:
        raise SpecError(str(path), [("$", f"cannot read the file: {exc.strerror or exc}")]) from None
    text = _decode(raw, str(path))
    try:
        data, problems = specjson.parse(text)
    except specjson.SpecTextError as exc:
        raise SpecError(str(path), [(exc.where, exc.message)]) from None
    return _validate(data, str(path), problems)


def dump_spec(spec: Spec) -> dict:
    """The spec as a JSON-ready dict; ``load_spec(dump_spec(s)) == s``."""
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)


def json_schema() -> dict:
    ensure_models()
    schema = Spec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "bertc spec"
    return schema
