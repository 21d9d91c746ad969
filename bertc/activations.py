"""Export-safe activations.

Every activation here lowers to ops that tf2onnx converts and TFLite runs with
builtin kernels. In particular exact GELU is written through ``erf``:
TensorFlow's own ``gelu`` lowers to ``Erfc``, which tf2onnx cannot convert.
"""
from __future__ import annotations

import math

import tensorflow as tf

from bertc.specbase import ACTIVATION_NAMES

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(x):
    """Exact GELU: 0.5 * x * (1 + erf(x / sqrt(2)))."""
    return 0.5 * x * (1.0 + tf.math.erf(x * _SQRT_HALF))


def gelu_tanh(x):
    """Tanh approximation of GELU (Model Garden's ``activations.gelu``)."""
    return 0.5 * x * (1.0 + tf.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


def relu(x):
    return tf.nn.relu(x)


def tanh(x):
    return tf.tanh(x)


def silu(x):
    return x * tf.sigmoid(x)


def linear(x):
    return x


ACTIVATIONS = {"gelu": gelu, "gelu_tanh": gelu_tanh, "relu": relu, "tanh": tanh, "silu": silu, "linear": linear}
assert tuple(ACTIVATIONS) == ACTIVATION_NAMES, "bertc.specbase.ACTIVATION_NAMES is out of date"


def get(name: str):
    return ACTIVATIONS[name]
