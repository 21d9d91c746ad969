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

import difflib
import functools
import inspect
import sys
import typing
import weakref
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
    origin: str = ""   # where the component is defined: ``module.Class (file)``


def origin_of(component: Any) -> str:
    """Where ``component`` is defined, for messages: ``module.Class (file)``."""
    module = getattr(component, "__module__", None) or "?"
    name = getattr(component, "__qualname__", None) or getattr(component, "__name__", None) or repr(component)
    file = getattr(sys.modules.get(module), "__file__", None)
    return f"{module}.{name}" + (f" ({file})" if file else "")


LAYER_KINDS = ("embedding", "position", "attention", "feedforward", "block")   # kinds whose components are layers


def is_builtin(component: Any) -> bool:
    """Whether ``component`` is one of bertc's own (defined in the ``bertc`` package), not a plug-in's."""
    module = getattr(component, "__module__", None) or ""
    return module == "bertc" or module.startswith("bertc.")


_verified = weakref.WeakSet()   # plug-in layer classes seen to be loadable from a model.keras


def serialization_problem(entry: Entry) -> Optional[str]:
    """Why a model.keras holding the plug-in layer class ``entry.component`` could not be loaded again (None when
    it could, or when it is bertc's own or no Keras layer): the class is not registered with Keras' serialization
    (no ``@bertc.serializable``), or its ``spec_cls`` is not the spec it registers with (``from_config`` would
    rebuild it from another spec, whose ``type`` refuses the saved one)."""
    cls = entry.component
    keras = sys.modules.get("keras")
    if (keras is None or entry.kind not in LAYER_KINDS or is_builtin(cls) or not isinstance(cls, type)
            or not issubclass(cls, keras.layers.Layer)):
        return None
    what = f"{entry.kind} {entry.name!r}: {origin_of(cls)}"
    clash = keras_namesake(cls)
    if clash:
        return f"{entry.kind} {entry.name!r}: {clash}"
    registered = keras.saving.get_registered_name(cls)
    if keras.saving.get_registered_object(registered) is not cls:
        return (f"{what} is not registered with Keras' serialization, so the model.keras a build writes could not "
                f"be loaded again, not even with the plug-in: decorate the class with @bertc.serializable "
                f"(bertc.components.common.serializable)")
    own = getattr(cls, "spec_cls", None)
    if own is None and any("spec_cls" in vars(c).get("__annotations__", {}) for c in cls.__mro__):
        return (f"{what} sets no spec_cls, so a saved model.keras could not rebuild its spec: set "
                f"spec_cls = {entry.spec.__name__} in the class")
    if own is not None and own is not entry.spec and _literal_type(own) != (entry.name,):
        return (f"{what} has spec_cls = {own.__name__} (type {', '.join(map(repr, _literal_type(own))) or '?'}), "
                f"not the spec it registers with, so a saved model.keras would be rebuilt from {own.__name__} and "
                f"refused: set spec_cls = {entry.spec.__name__} in the class")
    return None


def protocol_problem(entry) -> Optional[str]:
    """The methods of its kind's protocol that a plug-in component does not define (its bertc base class's only
    raises NotImplementedError: a feedforward's ``param_count``, a head's ``make_labels`` / ``loss``): found when the
    plug-in is loaded, not as an internal error of bertc's in the middle of a build. None for bertc's own."""
    cls = getattr(entry, "component", None)
    if not isinstance(cls, type) or is_builtin(cls):
        return None
    missing = []
    for name in sorted(dir(cls)):
        if name.startswith("__"):
            continue
        owner = next((k for k in cls.__mro__ if name in vars(k)), None)
        if owner is None or not is_builtin(owner):
            continue
        function = getattr(vars(owner)[name], "__func__", vars(owner)[name])
        code = getattr(function, "__code__", None)
        if code is not None and code.co_names == ("NotImplementedError",):
            missing.append(f"{name}({', '.join(code.co_varnames[:code.co_argcount])})")
    if not missing:
        return None
    return (f"{entry.kind} {entry.name!r}: {origin_of(cls)} does not define {', '.join(missing)}, which every "
            f"{entry.kind} defines (its base class {next(k for k in cls.__mro__ if is_builtin(k)).__name__} only "
            f"raises NotImplementedError)")


def keras_namesake(cls: Any) -> Optional[str]:
    """Why the plug-in class ``cls`` cannot keep the name it is registered under with Keras' serialization, when
    that name (``bertc>TransformerBlock``: ``@serializable`` names a class ``bertc>`` + its class name) is also the
    name of bertc's own class or of another plug-in's registered component; else None. Keras keeps one class a
    name, the last registered: a plug-in's ``TransformerBlock`` took bertc's, so that every ordinary model.keras
    loaded afterwards in the process failed (or computed with the plug-in's class). The other class gets its name
    back here, and ``cls`` is left unregistered."""
    keras = sys.modules.get("keras")
    if keras is None or not isinstance(cls, type) or is_builtin(cls):
        return None
    try:
        from keras.src.saving.object_registration import GLOBAL_CUSTOM_NAMES as names
    except ImportError:   # another Keras: nothing to compare with
        return None
    name = names.get(cls)
    if name is None:
        return None
    mine = origin_of(cls)
    live = {id(e.component) for r in ALL for e in r._entries.values()}
    others = [c for c, n in list(names.items())
              if n == name and c is not cls and (is_builtin(c) or id(c) in live) and origin_of(c) != mine]
    if not others:
        return None
    owner = next((c for c in others if is_builtin(c)), others[-1])
    keras.saving.get_custom_objects()[name] = owner
    names.pop(cls, None)
    return (f"{mine} is registered with Keras' serialization as {name!r}, which names {origin_of(owner)}: Keras "
            f"keeps one class per name, so models holding the other class would be loaded with this one (in this "
            f"process they would fail to load, or compute with the plug-in's code); give the class a name of its own "
            f"(e.g. My{cls.__name__})")


SHAPED_KINDS = ("attention", "feedforward", "block")   # call(x, ...) returns a tensor of x's shape


def plugin_label(cls: Any) -> str:
    """``plugin FILE: `` for a class of a loaded plug-in, else '' (:mod:`bertc.plugins`, which knows the plug-ins,
    puts its ``label_of`` here when imported: the registry does not import it)."""
    return ""


def _check_outputs(kind: str, name: str, cls: Any) -> None:
    """Wrap the ``call`` a plug-in layer class defines itself with a check of what it returns against its kind's
    protocol (attention, feedforward, block: a tensor of its input's shape; position: a dict), raising a
    :class:`PluginError` naming the plug-in, the component and its ``call``: a wrong shape failed in the next layer,
    as Keras' 'internal error' of another class (``MultiHeadAttention ... 'attention_output'``). Static shapes
    only, so it costs nothing per call; ``call``'s signature is kept (Keras reads it)."""
    call = vars(cls).get("call") if isinstance(cls, type) else None
    if (kind not in SHAPED_KINDS + ("position",) or not inspect.isfunction(call)
            or getattr(call, "checks_outputs", False)):
        return

    @functools.wraps(call)
    def checked(self, *args, **kwargs):
        out = call(self, *args, **kwargs)
        x = args[0] if args else next(iter(kwargs.values()), None)
        problem = _output_problem(kind, x, out) or (_unread_keys(self, out) if kind == "position" else None)
        if problem:
            from bertc.errors import PluginError

            code = call.__code__
            raise PluginError(f"{plugin_label(cls)}{kind} {name!r} (class {cls.__name__}): its call {problem} (at "
                              f"{code.co_filename}:{code.co_firstlineno}, {cls.__module__}.{call.__qualname__})")
        return out

    checked.checks_outputs = True
    cls.call = checked


def _unread_keys(scheme: Any, out: dict) -> Optional[str]:
    """The keys of a position scheme's output that nothing reads (a misspelt ``atention_bias`` built and passed a
    model with no position bias at all): the encoder reads ``position_ids`` and ``attention_bias``, the scheme's
    ``for_layer`` the rest (bertc's: ``rotary``, ``relative_embeddings`` / ``relative_positions``). A plug-in's own
    ``for_layer`` may read any key: not checked then."""
    reader = getattr(type(scheme), "for_layer", None)
    readers = {"PositionScheme.for_layer": (), "RotaryPositions.for_layer": ("rotary",),
               "DisentangledPositions.for_layer": ("relative_embeddings", "relative_positions")}
    if getattr(reader, "__module__", None) != "bertc.components.positions" or \
            getattr(reader, "__qualname__", None) not in readers:   # (by name: the registry imports no component)
        return None
    read = ("position_ids", "attention_bias") + readers[reader.__qualname__]
    unread = sorted(str(k) for k in out if k not in read)
    if not unread:
        return None
    return (f"returned {', '.join(map(repr, unread))}, which nothing reads (a position scheme returns "
            f"{', '.join(read)}; a for_layer of its own reads any other)")


def _output_problem(kind: str, x: Any, out: Any) -> Optional[str]:
    if kind == "position":
        return None if isinstance(out, dict) else (f"returned {type(out).__name__}, where a position scheme returns "
                                                   f"a dict (position_ids, attention_bias, ...; {{}} for none)")
    given = _dims(getattr(x, "shape", None))
    if given is None:
        return None
    if getattr(out, "shape", None) is None:
        return f"returned {type(out).__name__}, where a {kind} returns one tensor of its input's shape {_shown(given)}"
    got = _dims(out.shape)
    # every axis the output knows must be the input's: a known size where the input's is unknown (a sequence of 1
    # from a reduce_mean) failed in the next layer as bertc's internal error
    if got is not None and (len(got) != len(given) or any(
            g is not None and (w is None and i > 0 or w is not None and g != w)
            for i, (g, w) in enumerate(zip(got, given)))):
        return f"returned shape {_shown(got)}, where a {kind} returns its input's shape {_shown(given)}"
    have, want = getattr(getattr(out, "dtype", None), "name", None), getattr(getattr(x, "dtype", None), "name", None)
    if have and want and have != want:   # float64 / float16 passed, and ONNX Runtime refused a bertc node of the graph
        return f"returned {have}, where a {kind} returns its input's dtype {want}"
    return None


def _dims(shape) -> Optional[tuple]:
    try:
        return None if shape is None else tuple(None if d is None else int(d) for d in shape)
    except (TypeError, ValueError):   # unknown rank
        return None


def _shown(dims: tuple) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in dims) + ")"


def _literal_type(spec: type) -> tuple:
    field = getattr(spec, "model_fields", {}).get("type")
    return typing.get_args(field.annotation) if field is not None else ()


def _verify(entry: Entry) -> None:
    """Refuse (:class:`PluginError`) a plug-in layer class whose model.keras could not be loaded again, when a build
    first asks for it (decorators may come in either order, so not at registration)."""
    cls = entry.component
    try:
        if cls in _verified:
            return
    except TypeError:   # not weakly referable: no class
        return
    problem = serialization_problem(entry)
    if problem:
        from bertc.errors import PluginError

        raise PluginError(problem)
    if entry.kind in LAYER_KINDS and sys.modules.get("keras") is not None:
        _verified.add(cls)


def close_matches(name: str, names) -> str:
    """`` (did you mean 'x'?)`` for a name close to one of ``names`` (a typo), else ''."""
    close = difflib.get_close_matches(str(name), sorted(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
            if "bertc.components" not in sys.modules:   # bertc's own first, so that a clash is the newcomer's
                ensure_components()
            origin = origin_of(component)
            old = self._entries.get(name)
            if old is not None and old.component is not component and old.origin != origin:
                # one name, one class: a plug-in that took a built-in's (or another plug-in's) name replaced it
                # silently, and a build recorded no plug-in, so parity and load_model later ran the original
                from bertc.errors import PluginError

                raise PluginError(
                    f"{self.kind} {name!r} is already registered by {old.origin}; {origin} cannot register "
                    f"under the same name: give it a name of its own (its spec's type: Literal[...]) and use that "
                    f"type in the spec")
            clash = keras_namesake(component)   # @serializable below this decorator has just taken the name
            if clash:
                from bertc.errors import PluginError

                raise PluginError(f"{self.kind} {name!r}: {clash}")
            if not is_builtin(component):
                _check_outputs(self.kind, name, component)
            self._entries[name] = Entry(self.kind, name, spec, component, description, origin)
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
            raise KeyError(f"unknown {self.kind} type {name!r}{close_matches(name, self._entries)}; "
                           f"known: {known}") from None

    def component(self, name: str) -> Any:
        """The class registered under ``name``; a plug-in's Keras layer class that a saved model.keras could not
        rebuild (:func:`serialization_problem`) is refused here, before a build writes one."""
        entry = self.get(name)
        _verify(entry)
        return entry.component

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
