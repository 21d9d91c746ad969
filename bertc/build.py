"""spec -> keras.Model. Layer names follow the spec's structure
(``embeddings``, ``layer_3/attention/query``, ``pooler``, ``classifier``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from bertc.components.common import keras
from bertc.components.heads import OutputInfo
from bertc.registry import ENCODERS, HEADS
from bertc.spec import Spec, load_spec


@dataclass(frozen=True)
class InputInfo:
    name: str
    length: Optional[int]  # fixed second dimension, or None for the (dynamic) sequence axis

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": "int32", "shape": ["batch", self.length or "sequence"]}


def as_spec(spec) -> Spec:
    return spec if isinstance(spec, Spec) else load_spec(spec)


def _head(spec: Spec):
    return HEADS.component(spec.head.type) if spec.head is not None else None


def input_infos(spec: Spec) -> list[InputInfo]:
    infos = [InputInfo(n, None) for n in spec.encoder.input_names]
    head = _head(spec)
    if head is not None:
        infos += [InputInfo(n, length) for n, length in head.extra_inputs(spec.head).items()]
    return infos


def output_infos(spec: Spec) -> list[OutputInfo]:
    head = _head(spec)
    if head is not None:
        return head.outputs(spec.head, spec.encoder)
    infos = [OutputInfo("sequence_output", 1, "features"), OutputInfo("pooled_output", None, "features")]
    if spec.encoder.as_scaffold().return_all_layer_outputs:
        infos += [OutputInfo(f"encoder_outputs_{i}", 1, "features") for i in range(spec.encoder.as_scaffold().num_layers)]
    return infos


def expected_param_count(spec: Spec) -> int:
    """Closed-form parameter count from the spec alone (shared layers counted once)."""
    head = _head(spec)
    needs_pooled = head.uses_pooled(spec.head) if head is not None else True
    n = ENCODERS.component(spec.encoder.type).param_count(spec.encoder, needs_pooled)
    return n + (head.param_count(spec.head, spec.encoder) if head is not None else 0)


def build_model(spec) -> keras.Model:
    spec = as_spec(spec)
    keras.utils.set_random_seed(spec.seed)
    head = _head(spec)
    inputs = {i.name: keras.Input(shape=(i.length,), dtype="int32", name=i.name) for i in input_infos(spec)}
    needs_pooled = head.uses_pooled(spec.head) if head is not None else True
    enc = ENCODERS.component(spec.encoder.type).build(spec.encoder, inputs, needs_pooled)
    if head is not None:
        outputs = head.build(spec.head, spec.encoder, enc, inputs)
    else:
        outputs = {"sequence_output": enc.sequence_output, "pooled_output": enc.pooled_output}
        if spec.encoder.as_scaffold().return_all_layer_outputs:
            outputs.update({f"encoder_outputs_{i}": t for i, t in enumerate(enc.layer_outputs)})
    return keras.Model(inputs=list(inputs.values()), outputs=outputs, name=spec.name.replace(".", "_"))
