"""bertc's own ``.keras`` files: tensor names already are bertc weight paths."""
from __future__ import annotations

from bertc.weights import Target

NAME = "bertc"


def translator(names, spec, location=None):
    return lambda name: Target(name)
