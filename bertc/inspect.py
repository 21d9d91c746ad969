"""A readable table of a built graph, and an optional drawing of it."""
from __future__ import annotations

from pathlib import Path

from bertc.errors import BertcError


def graph_table(model) -> str:
    rows = [("layer", "type", "output shape", "params", "calls")]
    for layer in model.layers:
        calls = len(getattr(layer, "_inbound_nodes", []) or [])
        try:
            out = layer.output
            shapes = [tuple(t.shape) for t in (out if isinstance(out, (list, tuple)) else [out])]
            shape = ", ".join(str(s).replace("None", "?") for s in shapes)
        except (AttributeError, ValueError):
            shape = "(several)"
        rows.append((layer.name, type(layer).__name__, shape, f"{layer.count_params():,}",
                     f"{calls} (shared)" if calls > 1 else str(calls)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"total parameters: {model.count_params():,}")
    return "\n".join(lines)


def plot_graph(model, path: Path) -> None:
    from bertc.components.common import keras

    try:
        import pydot  # noqa: F401
    except ImportError:
        raise BertcError("--plot needs pydot and Graphviz: pip install 'bertc[plot]' and install Graphviz "
                         "(Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz)") from None
    try:
        keras.utils.plot_model(model, to_file=str(path), show_shapes=True, dpi=64, expand_nested=False)
    except (ImportError, OSError, FileNotFoundError) as exc:
        raise BertcError(f"--plot needs the Graphviz 'dot' program ({exc}); install Graphviz "
                         "(Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz)") from None
    if not Path(path).exists():
        raise BertcError("--plot: Graphviz did not write the image; is the 'dot' program installed "
                         "(apt-get install graphviz)?")
