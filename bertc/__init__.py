"""bertc: a graph-first compiler for BERT-family models.

``import bertc`` registers bertc's Keras layers with Keras' serialization, so a
``model.keras`` written by ``bertc build`` loads in any process::

    import bertc, keras
    model = keras.saving.load_model("out/model.keras")   # or: bertc.load_model("out")

It imports no TensorFlow itself: the layers are registered when Keras is imported (at once when it
already is), so a process that only runs a build (:class:`Runtime`, ``bertc run``) never loads it.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Callable, Sequence, Union

if TYPE_CHECKING:   # for type checkers (the package has py.typed): nothing of these is imported at run time
    import keras

    from bertc.build import Built
    from bertc.signature import Signature
    from bertc.spec import Spec
    from bertc.weights import LoadResult

SpecLike = Union["Spec", dict, str, os.PathLike]   # what the functions below take as a spec

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow's oneDNN ops (on by default on x86) bring oneDNN's CPU allocator, which keeps every block
# it ever freed in its own pool for the life of the process: validation's gradient step (~3 x the
# weight bytes) then stays resident under every later stage of a build (BERT-large: 9.6 GB peak with
# oneDNN, 5.8 GB without, same wall time). Off unless set, and only when TensorFlow is not loaded yet
# (it reads the variable once); TF_ENABLE_ONEDNN_OPTS=1 turns it back on.
if "tensorflow" not in sys.modules:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def _homeless_config() -> None:
    """Keras keeps its config in ``~/.keras`` and Matplotlib (imported by Keras) in ``~/.config/matplotlib``. Under a
    uid with no home (a container's arbitrary uid, HOME unset) ``expanduser("~")`` is "~" and Keras made a folder
    named "~" in the working directory; with a home that cannot be written, Matplotlib printed two lines of warnings
    on every build. Both then keep their config in a folder of the temporary directory, unless told where."""
    import tempfile

    home = os.path.expanduser("~")
    if home != "~" and os.access(home, os.W_OK):
        return
    user = os.getuid() if hasattr(os, "getuid") else "user"
    place = os.path.join(tempfile.gettempdir(), f"bertc-home-{user}")
    os.environ.setdefault("KERAS_HOME", os.path.join(place, ".keras"))
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(place, "matplotlib"))


_homeless_config()

__version__ = "0.1.0"

__all__ = ["__version__", "load_spec", "dump_spec", "build_model", "load_model", "signature_of", "load_weights",
           "import_spec", "build_spec", "Runtime", "serializable", "load_plugin"]

from bertc import registry as _registry  # noqa: E402
from bertc.runtime import Runtime  # noqa: E402  (bertc run from Python: ONNX Runtime, no TensorFlow)


_SUBMODULES = ("errors", "losses", "transfer", "parity")   # (losses and transfer import TensorFlow when used)


def __getattr__(name: str):
    """``bertc.losses``, ``bertc.transfer``, ``bertc.errors``, ...: the modules the README names, imported when first
    used (``import bertc`` stays light: no TensorFlow)."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"bertc.{name}")
    raise AttributeError(f"module 'bertc' has no attribute {name!r}")


def __dir__() -> list:   # the public API alone: inspect.getmembers(bertc) imported TensorFlow through the modules
    return sorted(__all__)


def _register_with_keras() -> None:
    """Register bertc's layers with Keras' serialization, so ``keras.saving.load_model`` reads a ``model.keras``
    after ``import bertc``, without making ``import bertc`` import TensorFlow (its start-up time and memory, which
    running a built model with :class:`Runtime` or ``bertc run`` never needs): at once when Keras is imported
    already, else right after Keras is first imported (an import hook that removes itself)."""
    if "keras" in sys.modules:
        import bertc.components  # noqa: F401
    elif not any(isinstance(f, _AfterKeras) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterKeras())


class _AfterKeras:
    """A ``sys.meta_path`` finder that finds nothing itself: for ``keras`` it hands back the real module's spec with
    a loader that imports :mod:`bertc.components` once Keras has run (and takes itself out of ``sys.meta_path``
    then, not before: TensorFlow probes for Keras with ``importlib.util.find_spec`` before importing it)."""

    def __init__(self):
        self.busy = False

    def find_spec(self, name, path=None, target=None):
        if name != "keras" or self.busy:
            return None
        import importlib.util

        self.busy = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy = False
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisterAfter(spec.loader, self)
        return spec


class _RegisterAfter:
    """Keras' own loader, then bertc's components (whose layers register themselves with Keras)."""

    def __init__(self, loader, finder):
        self._loader, self._finder = loader, finder

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self._finder]
        if "bertc.components" not in sys.modules:
            try:
                import bertc.components  # noqa: F401
            except Exception:   # Keras itself imported fine: bertc's own use of its components will say what failed
                pass


_register_with_keras()


def _import_components() -> None:
    import bertc.components  # noqa: F401


_registry.on_first_read(_import_components)   # what reads a registry gets the shipped components


def _spec_of(spec: SpecLike, function: str) -> Spec:
    """``spec`` as a loaded :class:`bertc.spec.Spec`: one already (as it is), a dict, or a path to a spec's JSON
    file (loaded and validated: :class:`bertc.errors.SpecError`); anything else a TypeError saying what is taken."""
    from bertc.spec import Spec, load_spec as _load

    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, (dict, str, os.PathLike)):
        return _load(spec)
    raise TypeError(f"bertc.{function}: the spec is a bertc Spec (bertc.load_spec), a dict or the path of a spec's "
                    f"JSON file, not {type(spec).__name__}")


def load_spec(source: SpecLike) -> Spec:
    """Load and validate a spec (path to a JSON file, or a dict; a loaded spec is returned as it is). Raises
    :class:`bertc.errors.SpecError`."""
    return _spec_of(source, "load_spec")


def dump_spec(spec: SpecLike) -> dict:
    """The spec (loaded, a dict or a path) as a JSON-ready dict (defaults filled in)."""
    from bertc.spec import dump_spec as _dump

    return _dump(_spec_of(spec, "dump_spec"))


def signature_of(spec: SpecLike) -> Signature:
    """The model's interface (inputs and outputs) computed from a spec (loaded, a dict or a path)."""
    from bertc.signature import signature_of as _sig

    return _sig(_spec_of(spec, "signature_of"))


def build_model(spec: SpecLike) -> Built:
    """Build a spec (a :class:`bertc.spec.Spec`, a path or a dict): a :class:`bertc.build.Built` holding the
    Keras functional model (``.model``) and handles to its parts (``.encoder``, ``.head``, ``.embedding``,
    ``.position``, ``.blocks``, ``.signature``)."""
    from bertc.build import build_model as _build

    return _build(_spec_of(spec, "build_model"))


def load_model(path: str | os.PathLike) -> keras.Model:
    """Load a Keras model written by ``bertc build``: an OUT directory or a ``.keras`` file.

    Raises :class:`bertc.errors.ModelFileError` naming the file when it is missing or damaged.
    """
    from bertc.transfer import load_keras_model

    return load_keras_model(path)


def load_weights(model: keras.Model, spec: SpecLike, source: str | os.PathLike) -> LoadResult:
    """Load trained weights (a HF directory / .safetensors, a TF checkpoint, a bertc build) into ``model``
    built from ``spec``; all or nothing. Returns what was loaded; raises :class:`bertc.errors.WeightsError`
    listing every missing, misshapen or unused tensor."""
    from bertc.importers import load_weights as _load

    return _load(model, _spec_of(spec, "load_weights"), source)


def _checked(function: str, paths: dict, flags: dict) -> None:
    """A TypeError naming the argument of ``bertc.<function>`` that is not a path (``paths``) or not True or False
    (``flags``: parity="no" is true)."""
    for name, value in paths.items():
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"bertc.{function}: {name} is a path (str or os.PathLike), not {type(value).__name__}"
                            + (" (the spec's JSON file: its weights are found beside it)"
                               if function == "build_spec" and name == "spec" else ""))
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"bertc.{function}: {name} is True or False, not {type(value).__name__}")


def import_spec(source: str | os.PathLike, spec_path: str | os.PathLike, name: str | None = None, *,
                encoder_only: bool = False, force: bool = False) -> dict:
    """Write a spec for the trained checkpoint at ``source`` to ``spec_path`` (``bertc import``; ``"-"``: standard
    output); returns it. ``name``: the spec's name (default: the checkpoint folder's); ``encoder_only``: the encoder
    without the checkpoint's task head; ``force``: replace a spec already at ``spec_path`` (without it, as ``bertc
    import`` without ``--force``, an existing file is an :class:`bertc.errors.OutputError`). A checkpoint without a
    tokenizer imports with a ``UserWarning`` (``bertc import``'s note): its build could not run on text."""
    import warnings
    from pathlib import Path

    from bertc.importers import import_spec as _import, no_tokenizer_note

    _checked("import_spec", {"source": source, "spec_path": spec_path}, {"encoder_only": encoder_only, "force": force})
    spec = _import(source, spec_path, name, encoder_only, force)
    note = no_tokenizer_note(source, spec, None if str(spec_path) == "-" else Path(spec_path))
    if note is not None:
        warnings.warn(note, UserWarning, stacklevel=2)
    return spec


def build_spec(spec: str | os.PathLike, out: str | os.PathLike, *, force: bool = False, parity: bool = True,
               optimize: bool = True, onnx: bool = True, tflite: bool = True, variants: Sequence[str] | None = None,
               calibration: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
               init_from: str | os.PathLike | None = None, export: bool = True, preflight: bool = True,
               memory_limit: int | None = None, progress: Callable[[str, float, str], None] | None = None) -> dict:
    """``bertc build SPEC -o OUT`` from Python: build the spec's JSON file ``spec`` into the folder ``out`` and return
    its report (``report.json``'s contents). The keywords are ``bertc build``'s flags: ``force`` (replace an
    existing build), ``parity=False`` (``--no-parity``), ``optimize=False``, ``onnx=False``, ``tflite=False``,
    ``variants`` (a list of names replacing the spec's ``export.variants``: ``[]`` for none), ``calibration`` (a text
    file for int8 tuning and parity), ``weights`` (trained weights overriding the spec's), ``init_from`` (a build to
    start from), ``export=False`` (``--no-export``), ``preflight=False`` (``--skip-preflight``), ``memory_limit`` (bytes
    the memory preflight takes as available, ``--memory-limit``). ``progress(stage, seconds, detail)`` hears of each
    stage as it ends (as ``bertc build`` prints them).

    TensorFlow's and tf2onnx's Python log lines are kept quiet, and the logging set-up is left as it was. Unlike
    ``bertc build``, it leaves the signal handlers as they are: SIGTERM ends the process where it stands (the next
    build of the same ``out`` removes what it left). A build that fails raises its :class:`bertc.errors.BertcError` (a ``ParityError``, a ``CheckFailed``,
    an ``OutputError``, ...; where the failed build's report was kept, in ``OUT.failed``, the message's first line
    names it) and leaves ``out`` as it was."""
    from pathlib import Path

    from bertc.names import EXPORT_VARIANTS
    from bertc.pipeline import BuildOptions, build as _build
    from bertc.quiet import libraries_quiet

    _checked("build_spec", {"spec": spec, "out": out},
             {"force": force, "parity": parity, "optimize": optimize, "onnx": onnx, "tflite": tflite, "export": export,
              "preflight": preflight})
    if variants is not None:
        if isinstance(variants, str) or not all(isinstance(v, str) for v in variants):
            raise TypeError("bertc.build_spec: variants is a list of names (e.g. ['onnx_int8']; [] for none)")
        unknown = [v for v in variants if v not in EXPORT_VARIANTS]
        if unknown:
            raise ValueError(f"bertc.build_spec: unknown variant(s) {', '.join(map(repr, unknown))}; known: "
                             f"{', '.join(EXPORT_VARIANTS)}")
        variants = tuple(dict.fromkeys(variants))
    if memory_limit is not None:
        import numbers

        if isinstance(memory_limit, bool) or not isinstance(memory_limit, numbers.Integral):
            raise TypeError(f"bertc.build_spec: memory_limit is a whole number of bytes (e.g. 12 * 2**30), not "
                            f"{type(memory_limit).__name__}")
        if memory_limit <= 0:
            raise ValueError(f"bertc.build_spec: memory_limit {memory_limit}: a number of bytes above 0")
        memory_limit = int(memory_limit)
    paths = {"calibration": calibration, "weights": weights, "init_from": init_from}
    opts = BuildOptions(out=Path(out), force=force, parity=parity, optimize=optimize, onnx=onnx, tflite=tflite,
                        export=export, preflight=preflight, memory_limit=memory_limit, variants=variants,
                        **{k: None if v is None else Path(v) for k, v in paths.items()})
    from bertc.errors import BertcError

    try:
        with libraries_quiet():
            import bertc.components  # noqa: F401  (TensorFlow's start-up chatter into the log too)

            return _build(spec, opts, progress)
    except BertcError as exc:   # its first line names the folder the failed build's report went to, as bertc build's
        failed = getattr(exc, "kept_in", None)
        if failed is not None and exc.args and isinstance(exc.args[0], str):
            first, newline, rest = exc.args[0].partition("\n")
            colon = ":" if first.endswith(":") else ""
            exc.args = (f"{first[:len(first) - len(colon)]}; report kept in {failed}/{colon}{newline}{rest}",
                        *exc.args[1:])
        raise


def serializable(cls: type) -> type:
    """Register a plug-in's layer class with Keras' serialization (as bertc's own layers are), so that a model.keras
    holding it loads wherever the plug-in is loaded: ``@bertc.serializable`` on the class, beside its registration
    (``@ATTENTION.register(...)``). A plug-in layer class without it is refused (``PluginError``) before a build
    writes a model.keras that no process could load."""
    from bertc.components.common import serializable as _serializable

    return _serializable(cls)


def load_plugin(plugin: str | os.PathLike) -> dict:
    """Load a plug-in, as ``bertc --plugin PLUGIN`` does: a ``.py`` file (a path) or a module name on the Python
    path, imported once, after bertc's own components; its components are then known to specs, builds and
    :func:`load_model` (a model.keras built with it loads only once it is loaded). Returns its record
    (``plugin``, ``module``, ``path``, ``registered``). Raises :class:`bertc.errors.PluginError` naming the file and
    line when it cannot be found or fails while importing, or is refused (a layer class a saved model.keras could
    not rebuild, a name already taken)."""
    from bertc.plugins import load_plugins

    return load_plugins([os.fspath(plugin)])[0]
