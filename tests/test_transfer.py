"""A canonical bert model's weights load into a default scaffold model with identical outputs."""
import numpy as np
import pytest

import bertc
from bertc.errors import TransferError
from bertc.inputs import make_inputs
from bertc.spec import load_spec
from bertc.transfer import transfer_weights
from conftest import spec_dict

HEADS = {"classifier": {"type": "classifier", "num_classes": 2},
         "span_labeler": {"type": "span_labeler"},
         "token_classifier": {"type": "token_classifier", "num_classes": 3},
         "pretrainer": {"type": "pretrainer", "num_token_predictions": 4, "output": "predictions",
                        "activation": "gelu_tanh"},
         "encoder_alone": None}


@pytest.mark.parametrize("head", sorted(HEADS))
def test_bert_weights_into_default_scaffold_give_same_outputs(head):
    bert, scaffold = spec_dict("canonical_classifier"), spec_dict("scaffold_default")
    bert["head"] = scaffold["head"] = HEADS[head]
    scaffold["seed"] = 7  # different initial weights: equality must come from the transfer
    bert_spec, scaffold_spec = load_spec(bert), load_spec(scaffold)
    source, target = bertc.build_model(bert_spec).model, bertc.build_model(scaffold_spec).model
    inputs = make_inputs(bert_spec, 3, 16, np.random.default_rng(0))
    before = target(inputs, training=False)
    assert transfer_weights(source, target) == len(source.weights)
    want, got = source(inputs, training=False), target(inputs, training=False)
    for name in want:
        assert np.max(np.abs(want[name].numpy() - got[name].numpy())) <= 1e-6, name
    assert any(np.max(np.abs(before[n].numpy() - want[n].numpy())) > 1e-3 for n in want)


def test_transfer_into_incompatible_model_names_weight_and_shapes():
    bert = spec_dict("canonical_classifier")
    wide = spec_dict("scaffold_default")
    wide["encoder"]["hidden"]["intermediate_size"] = 48
    with pytest.raises(TransferError, match=r"'layer_0/feedforward/intermediate/kernel' has shape \(32, 48\) "
                                            r"in the target but \(32, 64\) in the source"):
        transfer_weights(bertc.build_model(load_spec(bert)).model, bertc.build_model(load_spec(wide)).model)


def test_transfer_into_model_with_other_weights_is_refused():
    with pytest.raises(TransferError, match="rezero_alpha.*no counterpart in the source"):
        transfer_weights(bertc.build_model(load_spec(spec_dict("canonical_classifier"))).model,
                         bertc.build_model(load_spec(spec_dict("rezero"))).model)
