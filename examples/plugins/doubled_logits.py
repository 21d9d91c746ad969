"""An example plug-in: multi-head attention with doubled attention logits (a sharper softmax).

    bertc --plugin examples/plugins/doubled_logits.py build examples/plugins/doubled_logits.json -o out

It is one spec model, one layer class and one registration; it defines no ONNX lowering, so in
``model.optimized.onnx`` each layer's attention is converted by tf2onnx and spliced in while the rest of
the model keeps its fused operators (the report's ``fusion.not_lowered`` lists those layers).
"""
from typing import Literal

from bertc.components.attention import AttentionSpecBase, MultiHeadAttention
from bertc.components.common import serializable
from bertc.registry import ATTENTION


class DoubledLogitsSpec(AttentionSpecBase):
    type: Literal["doubled_logits"] = "doubled_logits"


@ATTENTION.register("doubled_logits", spec=DoubledLogitsSpec,
                    description="Multi-head attention with its logits doubled (an example plug-in).")
@serializable
class DoubledLogits(MultiHeadAttention):
    spec_cls = DoubledLogitsSpec

    def mix_logits(self, logits):
        return 2.0 * logits
