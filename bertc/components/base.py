"""The component protocol, shared by every kind (embedding, position, attention, feedforward, block,
encoder, head).

A component is an object built from its spec. It offers:

- its Keras computation: the layer kinds are Keras layers (``call``); an encoder or a head is an
  object whose ``build`` adds its layers to the functional graph and keeps handles to them;
- ``onnx_lowering(self, ctx, ...)``: the same computation written into the optimized ONNX graph
  through the :class:`~bertc.optimize.lower.LoweringContext` (the context is passed in: components
  never import :mod:`bertc.optimize`);
- ``param_count``: its closed-form parameter estimate from the spec alone;
- heads also say which rows of the last layer they read (``rows_read``) and give their training loss.

Lowerings are inherited like any method, with one safeguard (:func:`lowering_of`): an inherited
lowering serves a subclass only when the subclass changes nothing of the maths, i.e. defines no method
but the bookkeeping ones (:data:`BOOKKEEPING`). A subclass that changes the maths (a new ``call``,
``mix_logits``, ``_transform`` ...) says so by defining ``onnx_lowering`` itself; until it does, it
takes its kind's *portable* lowering (its Keras call converted by tf2onnx and spliced into the
optimized graph), which every layer kind's base class defines and marks with :func:`portable`. A
subclass that knows the inherited lowering is still right says ``onnx_lowering = Parent.onnx_lowering``.
Encoders and heads have no portable lowering: without a lowering of their own the optimized artifact is
skipped, with the reason recorded.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional

# Methods a subclass may define without changing what the component computes.
BOOKKEEPING = frozenset({"param_count", "get_config", "from_config", "describe", "__repr__"})


def portable(fn: Callable) -> Callable:
    """Mark a kind's default lowering as portable: it converts the layer's own ``call``, whatever it is."""
    fn.portable = True
    return fn


def _changes_maths(cls: type) -> bool:
    for name, value in vars(cls).items():
        if name in BOOKKEEPING or name == "onnx_lowering":
            continue
        if isinstance(value, (staticmethod, classmethod, property)) or inspect.isfunction(value):
            return True
    return False


def lowering_of(component: Any) -> Optional[Callable]:
    """The lowering function (unbound: ``fn(component, ctx, ...)``) that computes what ``component``
    (an instance or a class) computes, or None when it has none."""
    cls = component if isinstance(component, type) else type(component)
    mro = cls.__mro__
    for k, owner in enumerate(mro):
        if "onnx_lowering" not in vars(owner):
            continue
        fn = vars(owner)["onnx_lowering"]
        if fn is None:                       # explicitly none: no optimized artifact through this class
            return None
        fn = fn.__func__ if isinstance(fn, staticmethod) else fn
        if getattr(fn, "portable", False) or not any(_changes_maths(c) for c in mro[:k]):
            return fn
        return portable_lowering_of(cls)     # the maths changed below the lowering's class
    return None


def portable_lowering_of(cls: type) -> Optional[Callable]:
    """The portable lowering ``cls`` inherits from its kind's base class, or None (encoders, heads and
    classes outside the protocol have none)."""
    for owner in cls.__mro__:
        fn = vars(owner).get("onnx_lowering")
        if fn is not None and getattr(fn, "portable", False):
            return fn
    return None


def is_portable(fn: Optional[Callable]) -> bool:
    return fn is not None and getattr(fn, "portable", False)


@dataclass(frozen=True)
class RowSelection:
    """The rows of the last layer that the model's outputs read, when not all of them, in the order
    the pruned layer computes them: the first token (a pooler, a [CLS] classifier), then the rows named
    by an integer input of shape (B, P) (the masked-LM head's ``masked_lm_positions``)."""

    first: bool = True
    positions: Optional[str] = None

    @property
    def positions_start(self) -> int:
        """Where the rows of ``positions`` begin on the pruned layer's row axis."""
        return 1 if self.first else 0

    def describe(self) -> str:
        parts = ["the first token"] if self.first else []
        if self.positions:
            parts.append(f"the rows in {self.positions}")
        return " and ".join(parts)
