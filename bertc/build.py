"""spec -> the built model: a keras.Model plus handles to its parts.

Layer names follow the spec's structure (``embeddings``, ``layer_3/attention/query``, ``pooler``,
``classifier``). :func:`build_model` is the one walk of the spec: it creates the encoder and head
components, which build their layers into the functional graph and keep handles to them; later stages
(the ONNX lowering, the structural check) walk those handles, never layer names.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

from bertc.components.common import keras
from bertc.registry import ENCODERS, HEADS
from bertc.signature import Signature, signature_of
from bertc.spec import Spec, load_spec


def as_spec(spec) -> Spec:
    return spec if isinstance(spec, Spec) else load_spec(spec)


@dataclass
class Built:
    """A built model: the Keras functional model (the reference) and handles to its parts."""

    model: keras.Model
    spec: Spec
    signature: Signature
    encoder: Any          # the encoder component: .embedding, .position, .blocks, .final_layer_norm, .pooler
    head: Optional[Any]   # the head component (its layers as attributes), or None: the encoder's outputs

    @property
    def embedding(self):
        return self.encoder.embedding

    @property
    def position(self):
        return self.encoder.position

    @property
    def blocks(self) -> list:
        return self.encoder.blocks


def components_of(spec: Spec) -> tuple[Any, Optional[Any]]:
    """The encoder and head components of ``spec``, built from their specs (no layers yet)."""
    encoder = ENCODERS.create(spec.encoder)
    head = HEADS.create(spec.head, spec.encoder) if spec.head is not None else None
    return encoder, head


def expected_param_count(spec: Spec, sig: Optional[Signature] = None) -> int:
    """Closed-form parameter count from the spec alone (shared layers counted once)."""
    sig = sig or signature_of(spec)
    encoder, head = components_of(spec)
    return encoder.param_count(sig.needs_pooled) + (head.param_count() if head is not None else 0)


def build_model(spec, sig: Optional[Signature] = None) -> Built:
    """The Keras functional model of ``spec``, its weights drawn from ``spec.seed`` (the same spec builds the same
    weights in any process and any thread, builds in other threads alongside); no global random state (Python's,
    NumPy's, TensorFlow's, Keras') is read or changed."""
    spec = as_spec(spec)
    sig = sig or signature_of(spec)
    with _seeded(spec.seed):
        return _build_model(spec, sig)


class _Streams(threading.local):
    rng = None   # this thread's build's random.Random, or None: the random module itself


class _PerThreadRandom:
    """What Keras draws its default seeds from (``keras.src.random.seed_generator.python_random``, the ``random``
    module): the stream of the build running in this thread, or the ``random`` module itself outside builds. Every
    initializer and seed generator a layer makes without a seed takes ``python_random.randint(1, 1e9)``, and the
    weights follow from those seeds alone (stateless draws), so a build seeded here gives the spec's weights whatever
    other threads do, and no other thread's random numbers are drawn, rewound or replayed."""

    def __init__(self, real):
        self._real = real
        self._streams = _Streams()

    def __getattr__(self, name):
        rng = self._streams.rng
        return getattr(self._real if rng is None else rng, name)


_SEED_LOCK = threading.Lock()


@contextmanager
def _seeded(seed: int):
    """The block's Keras default seeds drawn from ``random.Random(seed)``, the stream ``keras.utils.set_random_seed``
    gives, in this thread only: set_random_seed seeded Python's, NumPy's and TensorFlow's global generators, so
    builds in two threads (or any thread drawing random numbers meanwhile) interleaved their draws and gave weights
    that were not the spec's, and putting the caller's state back afterwards replayed other threads' draws."""
    import random

    from keras.src.random import seed_generator

    with _SEED_LOCK:
        source = getattr(seed_generator, "python_random", None)
        if not isinstance(source, _PerThreadRandom):
            if source is not random:   # a Keras that draws its seeds elsewhere: weights would not follow the seed
                raise RuntimeError("this Keras does not draw its default seeds from keras.src.random.seed_generator."
                                   "python_random; bertc's seeding (bertc/build.py) must follow it")
            source = seed_generator.python_random = _PerThreadRandom(random)
    outer = source._streams.rng
    source._streams.rng = random.Random(seed)
    try:
        yield
    finally:
        source._streams.rng = outer


def _build_model(spec: Spec, sig: Signature) -> Built:
    encoder, head = components_of(spec)
    inputs = {i.name: keras.Input(shape=(i.length,), dtype="int32", name=i.name) for i in sig.inputs}
    enc = encoder.build(inputs, sig.needs_pooled)
    if head is not None:
        outputs = head.build(enc, inputs)
    else:
        outputs = {"sequence_output": enc.sequence_output, "pooled_output": enc.pooled_output}
        outputs.update({f"encoder_outputs_{i}": t for i, t in enumerate(enc.layer_outputs)})
        outputs = {name: outputs[name] for name in sig.output_names}
    missing = set(sig.output_names) - set(outputs)
    if missing:
        raise ValueError(f"the model built for {spec.name!r} lacks the outputs {sorted(missing)} of its signature")
    model = keras.Model(inputs=list(inputs.values()), outputs={n: outputs[n] for n in sig.output_names},
                        name=spec.name.replace(".", "_"))
    return Built(model, spec, sig, encoder, head)


def _scaled(node, vocab: int, seq: int):
    """``node`` (a spec model) with its ``vocab_size`` / ``max_sequence_length`` capped, when it has them."""
    update = {k: min(getattr(node, k), cap) for k, cap in (("vocab_size", vocab), ("max_sequence_length", seq))
              if isinstance(getattr(node, k, None), int) and k in type(node).model_fields}
    return node.model_copy(update=update) if update else node


def scaled_down(spec: Spec, layers: int, vocab: int, seq: int, name: Optional[str] = None) -> Optional[Spec]:
    """A clone of ``spec`` with the same components and settings but at most ``layers`` layers (when one
    block spec serves every layer), a vocabulary of at most ``vocab`` and sequences of at most ``seq``; no
    weights and no parity section. Made on the typed spec models; None when the clone breaks a rule of
    the spec language (a plug-in's own rules, say)."""
    from bertc.specbase import walk_problems

    encoder = _scaled(spec.encoder, vocab, seq)
    embedding = getattr(encoder, "embedding", None)
    if embedding is not None and "embedding" in type(encoder).model_fields:
        encoder = encoder.model_copy(update={"embedding": _scaled(embedding, vocab, seq)})
    hidden = getattr(encoder, "hidden", None)
    if isinstance(getattr(encoder, "num_layers", None), int) and (hidden is None or len(hidden) == 1):
        encoder = encoder.model_copy(update={"num_layers": min(encoder.num_layers, layers)})
        position = getattr(encoder, "position", None)
        if isinstance(getattr(position, "layer_theta", None), list):    # rotary: the first layers' thetas
            encoder = encoder.model_copy(update={"position": position.model_copy(
                update={"layer_theta": position.layer_theta[:encoder.num_layers]})})
    head = spec.head
    if head is not None and isinstance(getattr(head, "num_token_predictions", None), int):
        head = head.model_copy(update={"num_token_predictions": min(head.num_token_predictions, seq)})
    update = {"encoder": encoder, "head": head, "weights": None,
              "parity": type(spec).model_fields["parity"].get_default(call_default_factory=True)}
    if name:
        update["name"] = name
    clone = spec.model_copy(update=update)
    return None if any(True for _ in walk_problems(clone, (), {})) else clone
