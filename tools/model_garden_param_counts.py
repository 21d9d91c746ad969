"""Parameter counts of the seed notebooks' models as Model Garden itself builds them.

Run in a separate environment (never a bertc dependency):
    python3 -m venv /tmp/mg && . /tmp/mg/bin/activate && pip install tensorflow-cpu==2.21.0 \
        && pip install --no-deps tf-keras==2.21.0 tf-models-official==2.20.0 && pip install gin-config pyyaml scipy
    python tools/model_garden_param_counts.py
tests/test_seed_specs.py holds the figures it printed. (Model Garden 2.20 has no TransformerEncoder alias any
more: BertEncoder is the same network, with ``max_sequence_length`` for the notebook's ``sequence_length``.)
"""
import os, json
os.environ["TF_USE_LEGACY_KERAS"]="1"
import tensorflow as tf
from official.nlp import modeling
from official.modeling import activations
out={}
net = modeling.networks.BertEncoder(vocab_size=100, num_layers=2, max_sequence_length=16)
def nets():
    return modeling.networks.BertEncoder(vocab_size=100, num_layers=2, max_sequence_length=16)
out["encoder_defaults"] = {k: str(v) for k, v in net.get_config().items()}
out["pretrainer"] = modeling.models.BertPretrainer(nets(), num_classes=2, num_token_predictions=8, output='predictions').count_params()
out["span_labeler"] = modeling.models.BertSpanLabeler(nets()).count_params()
out["classifier"] = modeling.models.BertClassifier(nets(), num_classes=2).count_params()
cfg = dict(vocab_size=100, hidden_size=32, num_layers=3, num_attention_heads=4, intermediate_size=64, activation=activations.gelu,
           dropout_rate=0.1, attention_dropout_rate=0.1, max_sequence_length=16, type_vocab_size=2,
           initializer=tf.keras.initializers.TruncatedNormal(stddev=0.02))
out["canonical_classifier"] = modeling.models.BertClassifier(modeling.networks.BertEncoder(**cfg), num_classes=2).count_params()
out["albert"] = modeling.models.BertClassifier(modeling.networks.AlbertEncoder(**cfg), num_classes=2).count_params()
print(json.dumps(out, indent=1))
