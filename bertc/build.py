"""spec -> keras.Model. Layer names follow the spec's structure
(``embeddings``, ``layer_3/attention/query``, ``pooler``, ``classifier``)."""
from __future__ import annotations

from typing import Optional

from bertc.components.common import keras
from bertc.registry import ENCODERS, HEADS
from bertc.signature import Signature, signature_of
from bertc.spec import Spec, load_spec


def as_spec(spec) -> Spec:
    return spec if isinstance(spec, Spec) else load_spec(spec)


def _head(spec: Spec):
    return HEADS.component(spec.head.type) if spec.head is not None else None


def expected_param_count(spec: Spec, sig: Optional[Signature] = None) -> int:
    """Closed-form parameter count from the spec alone (shared layers counted once)."""
    sig = sig or signature_of(spec)
    head = _head(spec)
    n = ENCODERS.component(spec.encoder.type).param_count(spec.encoder, sig.needs_pooled)
    return n + (head.param_count(spec.head, spec.encoder) if head is not None else 0)


def build_model(spec, sig: Optional[Signature] = None) -> keras.Model:
    spec = as_spec(spec)
    sig = sig or signature_of(spec)
    keras.utils.set_random_seed(spec.seed)
    head = _head(spec)
    inputs = {i.name: keras.Input(shape=(i.length,), dtype="int32", name=i.name) for i in sig.inputs}
    enc = ENCODERS.component(spec.encoder.type).build(spec.encoder, inputs, sig.needs_pooled)
    if head is not None:
        outputs = head.build(spec.head, spec.encoder, enc, inputs)
    else:
        outputs = {"sequence_output": enc.sequence_output, "pooled_output": enc.pooled_output}
        outputs.update({f"encoder_outputs_{i}": t for i, t in enumerate(enc.layer_outputs)})
        outputs = {name: outputs[name] for name in sig.output_names}
    missing = set(sig.output_names) - set(outputs)
    if missing:
        raise ValueError(f"the model built for {spec.name!r} lacks the outputs {sorted(missing)} of its signature")
    return keras.Model(inputs=list(inputs.values()), outputs={n: outputs[n] for n in sig.output_names},
                       name=spec.name.replace(".", "_"))
