"""The model's interface, computed once from the spec.

A :class:`Signature` says which inputs the model takes (name, fixed length or the
dynamic sequence axis) and which outputs it gives (name, which axis follows the
sequence, what kind of values). Every stage (build, check, export, parity, report)
receives the same object instead of asking the spec again. No TensorFlow here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Optional

OutputKind = Literal["features", "logits", "log_probs"]


@dataclass(frozen=True)
class InputInfo:
    name: str
    length: Optional[int] = None  # fixed second dimension, or None for the (dynamic) sequence axis

    @property
    def shape(self) -> tuple:
        return (None, self.length)

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": "int32", "shape": ["batch", self.length or "sequence"]}


@dataclass(frozen=True)
class OutputInfo:
    name: str
    seq_axis: Optional[int]  # axis that follows the input sequence (padding invariance compares it up to real length)
    kind: OutputKind

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Signature:
    inputs: tuple[InputInfo, ...]
    outputs: tuple[OutputInfo, ...]
    max_sequence_length: int
    needs_pooled: bool  # whether the encoder builds its pooler (a head reads it, or no head)

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def output(self, name: str) -> OutputInfo:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(f"no output {name!r}; the model's outputs are {self.output_names}")

    def to_json(self) -> dict:
        return {"inputs": [i.to_json() for i in self.inputs], "outputs": [o.to_json() for o in self.outputs]}


def encoder_outputs(encoder_spec) -> list[OutputInfo]:
    """The outputs of an encoder without a head."""
    infos = [OutputInfo("sequence_output", 1, "features")]
    if encoder_spec.has_pooler:   # an encoder without a pooler (ModernBERT) outputs the sequence alone
        infos.append(OutputInfo("pooled_output", None, "features"))
    if encoder_spec.all_layer_outputs:
        infos += [OutputInfo(f"encoder_outputs_{i}", 1, "features") for i in range(encoder_spec.layer_count)]
    return infos


def signature_of(spec) -> Signature:
    """The interface of ``spec``'s model (a loaded :class:`bertc.spec.Spec`)."""
    from bertc.registry import HEADS

    inputs = [InputInfo(n) for n in spec.encoder.input_names]
    if spec.head is None:
        outputs, needs_pooled = encoder_outputs(spec.encoder), spec.encoder.has_pooler
    else:
        head = HEADS.create(spec.head, spec.encoder)
        inputs += [InputInfo(n, length) for n, length in head.extra_inputs().items()]
        outputs, needs_pooled = head.outputs(), bool(head.uses_pooled)
    return Signature(tuple(inputs), tuple(outputs), spec.encoder.max_sequence_length, needs_pooled)
