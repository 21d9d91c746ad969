"""Keras helpers shared by the components."""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bertc.specbase import DEFAULT_INITIALIZER, InitializerSpec, StrictModel, rebuild_component_models  # noqa: E402

MASK_ADDER = -10000.0  # added to attention logits of padded keys (exp() underflows to exactly 0 in fp32)


def serializable(cls):
    return keras.saving.register_keras_serializable(package="bertc")(cls)


def initializer(spec: InitializerSpec | dict | None):
    spec = InitializerSpec.model_validate(spec) if isinstance(spec, dict) else (spec or DEFAULT_INITIALIZER)
    if spec.type == "truncated_normal":
        return keras.initializers.TruncatedNormal(stddev=spec.stddev)
    if spec.type == "normal":
        return keras.initializers.RandomNormal(stddev=spec.stddev)
    if spec.type == "glorot_uniform":
        return keras.initializers.GlorotUniform()
    return keras.initializers.Zeros()


def dense(units: int, init, name: str, activation=None, use_bias: bool = True, dtype=None) -> keras.layers.Dense:
    """A Dense layer. A layer that creates it as its own sub-layer passes ``dtype=self.dtype_policy``:
    without it the sub-layer takes the process's global policy, not its parent's (see :class:`SpecLayer`)."""
    return keras.layers.Dense(units, activation=activation, kernel_initializer=initializer(init), name=name,
                              use_bias=use_bias, dtype=dtype)


def layer_norm(epsilon: float, name: str, center: bool = True, dtype=None) -> keras.layers.LayerNormalization:
    """A layer norm over the last axis; ``center=False``: no beta (ModernBERT's bias-free norms). ``dtype``:
    as :func:`dense`'s."""
    return keras.layers.LayerNormalization(axis=-1, epsilon=epsilon, name=name, center=center, dtype=dtype)


def check_sequence_length(ids, limit: int, reads: str) -> None:
    """Refuse (ValueError) a batch of ids (B, S) longer than the model's ``max_sequence_length`` ``limit``, which
    the calling layer's ``reads`` (what it would index past) cannot serve; the bare TensorFlow slice / gather error
    would name neither. It reads the static shape only: no op joins a traced graph (an exported one's S is unknown,
    so it checks nothing there), and a Keras model called eagerly, or traced on a known length, is checked."""
    shape = tf.TensorShape(getattr(ids, "shape", None))
    length = shape[-1] if shape.rank and shape.rank >= 2 else None
    if length is not None and int(length) > int(limit):
        raise ValueError(f"the input has {int(length)} tokens per sequence, more than this model's max_sequence_length "
                         f"{int(limit)} ({reads}): cut or split the sequences to at most {int(limit)} tokens")


def check_not_empty(ids) -> None:
    """Refuse (ValueError) a batch of ids or a mask (B, S) with no token per sequence (S = 0): an empty sequence
    has no first token to pool and no key to attend to, and the bare TensorFlow error (a StridedSlice out of
    bounds), or an empty output, would not say so. Like :func:`check_sequence_length` it reads the static shape
    only: no op joins a traced graph."""
    shape = tf.TensorShape(getattr(ids, "shape", None))
    length = shape[-1] if shape.rank and shape.rank >= 2 else None
    if length is not None and int(length) == 0:
        raise ValueError("the input has 0 tokens per sequence, fewer than the 1 this model needs (an empty sequence "
                         "has no token to attend to or to pool): give every sequence at least 1 token")


def concrete_values(tensor):
    """``tensor``'s values as numpy when it has them (eager execution), else None (traced: no op is added)."""
    if not (tf.executing_eagerly() and hasattr(tensor, "numpy")):
        return None
    return np.asarray(tensor.numpy())


def _first_outside(values, size: int):
    """(index, value) of the first of ``values`` outside ``[0, size)``, or None."""
    bad = (values < 0) | (values >= size)
    if not bad.any():
        return None
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    return list(where), int(values[where])


def check_ids(ids, size: int, input_name: str, limit_name: str, hint: str = "") -> None:
    """Refuse (ValueError) ids outside ``[0, size)`` when they are concrete (a Keras model called eagerly),
    naming the input, the first offending id and the model's ``limit_name``; the bare TensorFlow gather error
    names neither. Traced (an exported graph, ``fit`` / ``predict``), it does nothing: no op is added."""
    values = concrete_values(ids)
    if values is None or not values.size:
        return
    found = _first_outside(values, size)
    if found:
        raise ValueError(f"{input_name} holds {found[1]} (at {found[0]}), outside this model's "
                         f"{limit_name} {int(size)} (ids 0 to {int(size) - 1}){hint}")


def check_positions(positions, sequence, input_name: str) -> None:
    """Refuse (ValueError) token positions (B, P) outside ``[0, S)``, S the length of ``sequence`` (B, S, ...),
    when they are concrete (a Keras model called eagerly), naming the input, the first offending position and
    S. A head that gathers its rows through the flattened batch would read a token of another sequence there
    (S: the next row's first token, -1: the previous row's last) and no error would say so. Traced (an exported
    graph, ``fit`` / ``predict``), it does nothing: no op is added."""
    values = concrete_values(positions)
    shape = tf.TensorShape(getattr(sequence, "shape", None))
    length = shape[1] if shape.rank and shape.rank >= 2 else None
    if values is None or not values.size or length is None:
        return
    found = _first_outside(values, int(length))
    if found:
        raise ValueError(f"{input_name} holds {found[1]} (at {found[0]}), outside the {int(length)} tokens of each "
                         f"sequence (positions 0 to {int(length) - 1}): each picks a token of its own sequence")


def with_last_dim(shape, width: int) -> tuple:
    """``shape`` with its last dimension replaced (the input shape of a layer that follows a projection)."""
    return tuple(shape[:-1]) + (int(width),)


def dense_params(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def split_heads(x, num_heads: int, head_size: int):
    """(B, S, N*D) -> (B, N, S, D) with dynamic B and S."""
    shape = tf.shape(x)
    x = tf.reshape(x, tf.concat([shape[:2], [num_heads, head_size]], axis=0))
    return tf.transpose(x, [0, 2, 1, 3])


def merge_heads(x, width: int):
    """(B, N, S, D) -> (B, S, N*D)."""
    if x.shape[1] == 1 and x.shape[-1] == width:
        # One head: a plain squeeze (the same numbers). The Transpose + Reshape(Shape(.)[:2]) form is exported
        # wrongly by tf2onnx when N is 1: it turns the transpose into a Reshape, merges it with the next one and
        # keeps that one's copy-this-dim zeros, giving Reshape(B, 1, S, D -> [0, 0, D]), which fails for S > 1.
        return tf.squeeze(x, axis=1)
    x = tf.transpose(x, [0, 2, 1, 3])
    shape = tf.shape(x)
    return tf.reshape(x, tf.concat([shape[:2], [width]], axis=0))


class SpecLayer(keras.layers.Layer):
    """A layer whose configuration is its spec model (round-trips through JSON).

    Subclasses set ``spec_cls``. Constructor arguments are the config: ``spec``
    (model or dict), ``hidden_size`` and ``initializer`` (the encoder-level
    default, used where the spec leaves its own initializer unset).

    Every sub-layer a subclass creates (``dense``, ``layer_norm``, ``keras.layers.Dropout``, a nested
    component) is given ``dtype=self.dtype_policy``. Keras saves only the outer layer's config, with its
    dtype policy, and re-creates the sub-layers in ``__init__`` on loading: a sub-layer left to the global
    policy would compute in another dtype than its parent whenever the loading process's policy differs
    from the saving one's (a float32 model.keras loaded under ``mixed_float16``, a mixed-precision model
    loaded in a float32 process), and the model would fail to load.
    """

    spec_cls: type[StrictModel]

    def __init__(self, spec, hidden_size: int, initializer=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(spec, StrictModel):  # from a config (deserialization): plug-ins may have registered since
            rebuild_component_models()
            spec = self.spec_cls.model_validate(spec)
        self.spec = spec
        self.hidden_size = int(hidden_size)
        init = initializer if isinstance(initializer, (InitializerSpec, type(None))) else InitializerSpec.model_validate(initializer)
        own = getattr(self.spec, "initializer", None)
        self.initializer_spec = own or init or DEFAULT_INITIALIZER

    def get_config(self):
        config = super().get_config()
        config.update(
            spec=self.spec.model_dump(mode="json"),
            hidden_size=self.hidden_size,
            initializer=self.initializer_spec.model_dump(mode="json"),
        )
        return config
