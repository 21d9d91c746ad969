"""bertc's own weights: tensor names already are bertc weight paths. A ``.keras`` file bertc wrote (or Keras saved
from a bertc model), and a ``tf.train.Checkpoint`` of a Keras model bertc built (its object graph names each variable
by its path), whose optimizer's variables (``adam/iteration``, ``adam/layer_0_..._momentum``, ...) are left aside."""
from __future__ import annotations

from bertc.weights import Ignored, Target

NAME = "bertc"


def optimizer_prefixes(names) -> set:
    """The first path parts that hold a Keras 3 optimizer's variables (every Keras optimizer keeps
    ``NAME/iteration``)."""
    return {n.split("/", 1)[0] for n in names if n.count("/") == 1 and n.endswith("/iteration")}


def translator(names, spec, location=None):
    optimizers = optimizer_prefixes(names)

    def translate(name: str):
        if name.split("/", 1)[0] in optimizers:
            return Ignored("optimizer state")
        return Target(name)

    return translate


def holds_bertc_paths(names) -> bool:
    """Whether a TensorFlow object checkpoint's variables are named by bertc's weight paths (a tf.train.Checkpoint of
    a Keras model bertc built), not Model Garden's (``word_embeddings/embeddings``)."""
    return "embeddings/word_embeddings" in set(names)
