"""A readable table of a built graph, and an optional drawing of it."""
from __future__ import annotations

from pathlib import Path

from bertc.errors import InputError, MissingLibrary, OutputError


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


GRAPHVIZ_HINT = "install Graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz)"


PLOT_FORMATS = ("dot", "png", "svg", "pdf")


def plot_format(path: Path) -> str:
    """The drawing's format, from ``path``'s suffix (:class:`InputError` for one that is none of
    :data:`PLOT_FORMATS`)."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        raise InputError(f"--plot {path}: unknown format {path.suffix or '(none)'!r}; use .png, .svg, .pdf or .dot")
    return fmt


def check_plot(path: Path) -> None:
    """What ``bertc inspect --plot`` checks before any work: the suffix (exit 2) and pydot, which every format
    needs (exit 7). Neither imports anything."""
    import importlib.util

    plot_format(path)
    try:
        found = importlib.util.find_spec("pydot") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        _no_pydot()


def _no_pydot():
    from bertc.requirements import pip_install

    raise MissingLibrary(f"--plot needs pydot: {pip_install('plot')}") from None


def graph_dot(model):
    """The model as a pydot graph: one box per layer with its name, type and input/output shapes."""
    from bertc.components.common import keras

    try:
        import pydot  # noqa: F401
    except ImportError:
        _no_pydot()
    return keras.utils.model_to_dot(model, show_shapes=True, show_layer_names=True, show_dtype=False,
                                    expand_nested=False, dpi=64, rankdir="TB")


def plot_graph(model, path: Path, replace: bool = True) -> None:
    """Draw the graph to ``path``: ``.dot`` writes Graphviz source (needs only pydot); ``.png``, ``.svg`` or
    ``.pdf`` render it with Graphviz's ``dot`` program. ``replace`` False: a file at ``path`` (one that appeared
    since the command checked) is refused, not replaced."""
    path = Path(path)
    fmt = plot_format(path)
    if not path.parent.is_dir():
        raise OutputError(f"--plot {path}: no such directory {path.parent}")
    dot = graph_dot(model)
    if fmt == "dot":
        _write(path, dot.to_string().encode(), replace)
        return
    try:
        data = dot.create(format=fmt)
    except (OSError, FileNotFoundError, AssertionError) as exc:
        raise MissingLibrary(f"--plot {path}: rendering needs the Graphviz 'dot' program ({type(exc).__name__}: {exc}); "
                         f"{GRAPHVIZ_HINT}, or write Graphviz source with --plot {path.with_suffix('.dot').name}") from None
    _write(path, data, replace)


def _write(path: Path, data: bytes, replace: bool = True) -> None:
    try:
        with open(path, "wb" if replace else "xb") as f:
            f.write(data)
    except FileExistsError:
        raise OutputError(f"--plot {path}: already exists; pass --force to replace it") from None
    except OSError as exc:
        raise OutputError(f"--plot {path}: cannot write it: {exc}") from None
