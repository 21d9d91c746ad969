"""Name -> component registries. Importing this module imports no TensorFlow; reading a registry imports the
shipped components (:func:`ensure_components`).

A component is a class registered under a ``type`` name of one *kind*
(embedding, position, attention, feedforward, block, encoder, head). It carries
its pydantic spec model (whose ``type`` field is ``Literal[name]``) and a
one-line description; the class itself follows its kind's protocol
(:mod:`bertc.components.base`): built from its spec, it has a Keras call, an
ONNX lowering and a parameter estimate.

Importing :mod:`bertc.components` registers everything shipped with bertc; a
plug-in registers itself the same way::

    @ATTENTION.register("my_attention", spec=MyAttentionSpec,
                        description="...")
    class MyAttention(AttentionComponent): ...
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Callable, Optional

_generation = 0  # bumped on every registration; spec.py rebuilds its models when it changes


def generation() -> int:
    ensure_components()
    return _generation


_loaders: list = []   # what fills the registries when they are first read (bertc/__init__.py: the shipped components)
_loading = False


def on_first_read(loader: Callable[[], None]) -> None:
    """Call ``loader`` (once, when it succeeds) before a registry is first read."""
    _loaders.append(loader)


def ensure_components() -> None:
    """Run the loaders of :func:`on_first_read`: ``import bertc`` registers the import of
    :mod:`bertc.components` (every component shipped with bertc, and with them TensorFlow and Keras) there
    instead of importing it, so that running a built model (:mod:`bertc.runtime`) needs no TensorFlow; whatever
    reads a registry gets them here. A read while they are being imported sees what is registered so far."""
    global _loading
    if _loading or not _loaders:
        return
    _loading = True
    try:
        while _loaders:
            _loaders[0]()
            _loaders.pop(0)
    finally:
        _loading = False


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    spec: type
    component: Any
    description: str


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, spec: type, description: str) -> Callable[[Any], Any]:
        type_field = getattr(spec, "model_fields", {}).get("type")
        literal = typing.get_args(type_field.annotation) if type_field is not None else ()
        if literal != (name,):
            raise TypeError(f"{spec.__name__}.type must be Literal[{name!r}] to register as {self.kind} {name!r}")

        def decorator(component: Any) -> Any:
            global _generation
            self._entries[name] = Entry(self.kind, name, spec, component, description)
            _generation += 1
            return component

        return decorator

    def unregister(self, name: str) -> None:
        global _generation
        del self._entries[name]
        _generation += 1

    def get(self, name: str) -> Entry:
        ensure_components()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise KeyError(f"unknown {self.kind} type {name!r}; known: {known}") from None

    def component(self, name: str) -> Any:
        return self.get(name).component

    def create(self, spec, *args, **kwargs) -> Any:
        """The component registered under ``spec.type``, built from ``spec`` (``cls(spec, *args, **kwargs)``)."""
        return self.component(spec.type)(spec, *args, **kwargs)

    def kind_of(self, cls: type) -> Optional[str]:
        """This registry's name for the class ``cls`` (or None when ``cls`` is not registered here)."""
        ensure_components()
        return next((e.name for e in self._entries.values() if e.component is cls), None)

    def names(self) -> list[str]:
        ensure_components()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        ensure_components()
        return name in self._entries

    def spec_union(self) -> Any:
        """The discriminated union of every registered spec model (for pydantic)."""
        from typing import Annotated, Union

        from pydantic import Field

        models = tuple(e.spec for e in self.entries())
        if len(models) == 1:
            return models[0]
        return Annotated[Union[models], Field(discriminator="type")]


EMBEDDINGS = Registry("embedding")
POSITIONS = Registry("position")
ATTENTION = Registry("attention")
FEEDFORWARD = Registry("feedforward")
BLOCKS = Registry("block")
ENCODERS = Registry("encoder")
HEADS = Registry("head")

ALL = (EMBEDDINGS, POSITIONS, ATTENTION, FEEDFORWARD, BLOCKS, ENCODERS, HEADS)
BY_KIND = {r.kind: r for r in ALL}
