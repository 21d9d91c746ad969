"""Building blocks of the spec language shared by every component.

Kept free of TensorFlow so that components can declare their spec models
without paying for a TensorFlow import.
"""
from __future__ import annotations

from typing import Annotated, Any, Iterator, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, GetCoreSchemaHandler
from pydantic_core import core_schema

# Activation names understood everywhere (bertc.activations implements them).
ACTIVATION_NAMES = ("gelu", "gelu_tanh", "relu", "tanh", "silu", "linear")
Activation = Literal["gelu", "gelu_tanh", "relu", "tanh", "silu", "linear"]

PositiveInt = Annotated[int, Field(ge=1)]
# a layer count: the deepest encoders have a few dozen layers; far beyond, a spec is a typo (10**12 layers made
# bertc validate itself run out of memory, and 10**6 took it 19 s to call "fitting")
MAX_LAYERS = 10_000
LayerCount = Annotated[int, Field(ge=1, le=MAX_LAYERS)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Rate = Annotated[float, Field(ge=0.0, lt=1.0)]
Epsilon = Annotated[float, Field(gt=0.0, le=1e-1)]

Problem = tuple[tuple[Any, ...], str]  # (path relative to the model, message)

# Token and type ids are int32 (the model's inputs; bertc.inputs draws them as such): the largest id of a
# vocabulary, vocab_size - 1, must fit.
MAX_VOCAB = 2**31


def vocab_size_problem(value: int) -> "str | None":
    """Why ``value`` cannot be a vocabulary's size (word ids), or None."""
    if value < 2:
        return ("a vocabulary needs at least 2 ids: id 0 is the padding id, and the inputs of validation, parity "
                "and bench draw real tokens' ids from 1 .. vocab_size - 1")
    if value > MAX_VOCAB:
        return (f"exceeds {MAX_VOCAB:,} (2**31): ids are int32, so the largest id, vocab_size - 1, must be at most "
                f"2**31 - 1")
    return None


def _check_vocab_size(value: int) -> int:
    problem = vocab_size_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _check_type_vocab_size(value: int) -> int:
    if value > MAX_VOCAB:
        raise ValueError(f"exceeds {MAX_VOCAB:,} (2**31): type ids are int32, so the largest, type_vocab_size - 1, "
                         f"must be at most 2**31 - 1")
    return value


# A vocabulary's size: 2 .. 2**31 (the schema says so too).
VocabSize = Annotated[int, Field(json_schema_extra={"minimum": 2, "maximum": MAX_VOCAB}),
                      AfterValidator(_check_vocab_size)]
TypeVocabSize = Annotated[int, Field(ge=1, json_schema_extra={"maximum": MAX_VOCAB}),
                          AfterValidator(_check_type_vocab_size)]


class StrictModel(BaseModel):
    """Base of every spec model: unknown keys are errors, values are typed, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def problems(self, ctx: dict[str, Any]) -> Iterator[Problem]:
        """Cross-field rules. ``ctx`` carries facts from enclosing specs (e.g. hidden_size)."""
        return iter(())

    def child_context(self, ctx: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
        """Facts this model hands down to the models inside it (``path`` is its own)."""
        return ctx


class ComponentOf:
    """Field type marker: any spec model registered as a component of ``kind``.

    ``attention: Annotated[StrictModel, ComponentOf("attention")]`` validates against the
    discriminated union (on ``type``) of every spec model registered in that registry when
    the enclosing model's schema is built. A plug-in registered later is picked up when the
    enclosing models are rebuilt (``bertc.spec.ensure_models()`` does that through pydantic's
    public ``model_rebuild``).
    """

    def __init__(self, kind: str):
        self.kind = kind

    def __repr__(self) -> str:
        return f"ComponentOf({self.kind!r})"

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        from bertc.registry import BY_KIND

        registry = BY_KIND[self.kind]
        if not registry.names():
            kind = self.kind

            def nothing_registered(value: Any) -> Any:
                raise ValueError(f"no {kind} component is registered (import bertc.components)")

            return core_schema.no_info_plain_validator_function(nothing_registered)
        return handler.generate_schema(registry.spec_union())


_rebuilt_generation = -1


def rebuild_component_models() -> None:
    """Rebuild every registered component's spec model (leaves first) after registrations changed,
    so component fields accept plug-ins registered since. Cheap when nothing changed."""
    global _rebuilt_generation
    from bertc import registry

    if _rebuilt_generation == registry.generation():
        return
    for kind in ("attention", "feedforward", "embedding", "position", "block", "encoder", "head"):
        for entry in registry.BY_KIND[kind].entries():
            entry.spec.model_rebuild(force=True)
    _rebuilt_generation = registry.generation()


def component_field(kind: str) -> Any:
    """The annotation of a field holding any registered ``kind`` component's spec."""
    return Annotated[StrictModel, ComponentOf(kind)]


class InitializerSpec(StrictModel):
    type: Literal["truncated_normal", "normal", "glorot_uniform", "zeros"] = "truncated_normal"
    stddev: Annotated[float, Field(gt=0.0, le=10.0)] = 0.02


DEFAULT_INITIALIZER = InitializerSpec()


def walk_problems(model: StrictModel, path: tuple[Any, ...], ctx: dict[str, Any]) -> Iterator[Problem]:
    """Every cross-field problem in the tree under ``model``, with absolute paths."""
    for rel, msg in model.problems(ctx):
        yield path + tuple(rel), msg
    child_ctx = model.child_context(ctx, path)
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
        for index, item in items:
            if isinstance(item, StrictModel):
                sub = path + ((name,) if index is None else (name, index))
                yield from walk_problems(item, sub, child_ctx)


def json_path(loc: tuple[Any, ...]) -> str:
    out = "$"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
