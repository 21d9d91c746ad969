"""Plug-in modules: user code that registers components (``@ATTENTION.register(...)``) before a command runs.

``bertc --plugin my_attention.py build spec.json -o out`` (or ``--plugin my_package.attention``, or the
``BERTC_PLUGINS`` environment variable, paths or module names separated by commas) imports each plug-in
once, after bertc's own components. What each one registered is recorded, so the report can say which
plug-ins a build used and a later ``bertc parity OUT`` that has not loaded them can say what to load.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

from bertc import registry as _registry
from bertc.errors import BertcError, PluginError  # noqa: F401  (PluginError imported from here too)

ENV = "BERTC_PLUGINS"

_loaded: dict[str, dict] = {}   # plug-in as given -> {"plugin", "module", "path", "registered", "sha256"}


def from_environment() -> list[str]:
    return [p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip()]


def load_plugins(plugins) -> list[dict]:
    """Import every plug-in (a ``.py`` file or a module name) once; returns their records. A plug-in that
    cannot be found or fails while importing is a :class:`PluginError` naming it, the error and, for an
    exception raised by the plug-in's own code, its file and line."""
    import bertc.components  # noqa: F401  (bertc's own components first: plug-ins build on them)

    records = []
    for plugin in plugins:
        if plugin not in _loaded:
            _loaded[plugin] = _load(plugin)
        records.append(_loaded[plugin])
    return records


def loaded() -> list[dict]:
    """The plug-ins loaded in this process, in order (one record per plug-in, however many ways it was named)."""
    records = []
    for record in _loaded.values():
        if not any(record is r for r in records):
            records.append(record)
    return records


def used_by(spec_data) -> list[dict]:
    """The loaded plug-ins that registered a component whose ``type`` the spec (as a JSON-like dict) names."""
    types, stack = set(), [spec_data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("type"), str):
                types.add(item["type"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return [r for r in loaded() if any(entry.split(" ", 1)[1].strip("'") in types for entry in r["registered"])]


def missing_plugins(out_dir) -> list[dict]:
    """The plug-ins the build in ``out_dir`` used (its report.json's ``plugins``) that are not loaded here: neither
    loaded as given or from the same file, nor imported another way (a plain ``import``) that registered every
    component the report says it registered."""
    have = {r["plugin"] for r in loaded()} | {r["path"] for r in loaded() if r["path"]}
    return [r for r in _used_by_build(out_dir)
            if r.get("plugin") not in have and r.get("path") not in have and not _registered_here(r)]


def _used_by_build(out_dir) -> list[dict]:
    """The plug-in records of the build in ``out_dir`` (its report.json's ``plugins``)."""
    import json

    try:
        used = json.loads((Path(out_dir) / "report.json").read_text(encoding="utf-8")).get("plugins")
    except (OSError, ValueError, AttributeError):
        return []
    return _plugin_records(used)


def _plugin_records(used) -> list[dict]:
    """What reads as plug-in records in a report's ``plugins`` (a damaged report's: bertc.report.read_report names
    what is wrong)."""
    return [r for r in used if isinstance(r, dict) and isinstance(r.get("plugin"), str)] if isinstance(used, list) else []


def _registered_here(record: dict) -> bool:
    """Whether every component ``record`` (a report's plug-in record) registered is registered in this process by a
    plug-in (read without importing bertc's components: a plug-in's registration has imported them)."""
    from bertc.registry import BY_KIND, is_builtin

    entries = record.get("registered")
    if not isinstance(entries, list) or not entries:
        return False
    for entry in entries:
        kind, _, name = str(entry).partition(" ")
        found = getattr(BY_KIND.get(kind), "_entries", {}).get(name.strip("'"))
        if found is None or is_builtin(found.component):
            return False
    return True


def missing_for_build(out_dir, command: str = "parity") -> str:
    """'' when every plug-in the build in ``out_dir`` used (its report.json's ``plugins``) is loaded here;
    else what to load, as a sentence with the command line that does it (``bertc --plugin ... COMMAND OUT``)."""
    missing = missing_plugins(out_dir)
    if not missing:
        return ""
    names = ", ".join(f"{r['plugin']} ({', '.join(r.get('registered') or []) or 'no component'})" for r in missing)
    flags = " ".join(f"--plugin {r.get('path') or r['plugin']}" for r in missing)
    return (f"this build used plug-in(s) {names}: load them first, e.g. `bertc {flags} {command} {Path(out_dir)}` "
            f"(or set {ENV})")


def load_failure(path, exc: BaseException) -> str:
    """What :func:`bertc.load_model` says when Keras cannot rebuild the model.keras at ``path``: first what is
    missing and how to load it when a plug-in is (the class Keras could not locate or the component type no
    registry knows, the plug-in the build's report names, from Python and from the command line), then Keras' own
    words without the configs it prints whole (kilobytes of them)."""
    import re

    path = Path(path)
    text = str(exc)
    keras_text = f"{type(exc).__name__}: {_shortened(text)}"
    located = re.findall(r"Could not locate class '([^']+)'", text)
    module = re.search(r"'module': '([^']+)', 'class_name': '" + re.escape(located[-1]) + "'", text) if located else None
    tags = re.findall(r"Input tag '([^']+)' found using 'type' does not match", text)
    what = (f"class {located[-1]!r}" if located else f"type {tags[-1]!r}" if tags else "")
    missing = missing_plugins(path.parent) if what else []
    if missing:
        names = ", ".join(f"{r['plugin']} ({', '.join(r.get('registered') or []) or 'no component'})" for r in missing)
        given = [r.get("path") or r["plugin"] for r in missing]
        advice = (f"{what} is missing: the build used plug-in(s) {names}, not loaded in this process; load "
                  f"{'it' if len(missing) == 1 else 'them'} first: from Python "
                  f"{'; '.join(f'bertc.load_plugin({g!r})' for g in given)}, on the command line "
                  f"`bertc {' '.join(f'--plugin {g}' for g in given)} parity {path.parent}` (or set {ENV})")
    elif located and _used_by_build(path.parent):
        names = ", ".join(r["plugin"] for r in _used_by_build(path.parent))
        advice = (f"class {located[-1]!r} is not registered with Keras' serialization, though the build's plug-in(s) "
                  f"{names} are loaded: the class lacked @bertc.serializable when this model.keras was written (a "
                  f"build now refuses that), so no process can load it: decorate the class and build again")
    elif located:
        plugin = module.group(1) if module else None
        plugin = (f"{plugin[len('bertc_plugin_'):]}.py" if plugin and plugin.startswith("bertc_plugin_") else plugin)
        source = f" (module {module.group(1)})" if module else ""
        advice = (f"class {located[-1]!r}{source} is not registered with Keras in this process: load the plug-in "
                  f"that defines it first: from Python bertc.load_plugin({plugin or 'FILE.py'!r}), on the command "
                  f"line `bertc --plugin {plugin or 'FILE.py'} ...`; a plug-in that is loaded and still leaves it "
                  f"missing does not decorate it with @bertc.serializable (a model.keras built so cannot be loaded: "
                  f"build it again with the class decorated)")
    elif tags:
        advice = (f"type {tags[-1]!r} is no component known here: load the plug-in that registers it first: from "
                  f"Python bertc.load_plugin('FILE.py' or 'module'), on the command line `bertc --plugin FILE.py ...`")
    else:
        return f"{path}: cannot be loaded as a Keras model: {keras_text}"
    return f"{path}: cannot be loaded as a Keras model: {advice}\n(Keras: {keras_text})"


def _shortened(text: str, limit: int = 600) -> str:
    """Keras' deserialization error without the configs it prints whole (``config={...}``, ``Full object config:
    {...}``) and its repeated advice: the innermost of its 'Exception encountered:' messages, whitespace collapsed."""
    import re

    out, i = [], 0
    for match in re.finditer(r"(?:Full object )?config(?:=|: )\{", text):
        if match.start() < i:
            continue
        out.append(text[i:match.start()])
        depth, j = 0, match.end() - 1
        while j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
            if depth == 0:
                break
        i = j
    out.append(text[i:])
    text = "".join(out)
    pieces = [p for p in (p.strip(" .\n") for p in text.split("Exception encountered:")) if p]
    text = " ".join((pieces[-1] if pieces else text).split())
    text = re.sub(r" ?Please ensure that components that are Python object instances.*?from_config\(\)` method\.?",
                  "", text)
    return text if len(text) <= limit else text[:limit] + " ..."


def require_for_build(out_dir, command: str = "parity") -> None:
    """Raise :class:`PluginError` (exit 2) when the build in ``out_dir`` used plug-ins not loaded here; the message
    says how to run ``bertc COMMAND`` with them."""
    message = missing_for_build(out_dir, command)
    if message:
        raise PluginError(f"{Path(out_dir)}: {message}")


def _registered() -> set[tuple[str, str]]:
    from bertc.registry import ALL

    return {(r.kind, name) for r in ALL for name in r.names()}


def _load(plugin: str) -> dict:
    if not plugin.strip():   # --plugin '' (an unset variable): "Empty module name" looked like bertc's own fault
        raise PluginError("a plugin named by an empty string (an unset shell variable?): name a .py file or a module")
    before = _registered()
    is_file = plugin.endswith(".py") or os.sep in plugin
    if is_file:
        path = Path(plugin).expanduser().resolve()
        if not path.is_file():
            raise PluginError(f"plugin {plugin}: no such file")
        same = next((r for r in _loaded.values() if r["path"] == str(path)), None)
        if same is not None:   # the same file named another way (--plugin x.py and BERTC_PLUGINS=/abs/x.py): once
            return same
    try:
        try:
            if is_file:
                name = _module_name(path)
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(name, None)
                    raise
            else:
                module = importlib.import_module(plugin)
                path = Path(module.__file__).resolve() if getattr(module, "__file__", None) else None
        except BaseException:   # what it registered before failing is taken back: loaded again once fixed, the
            # plug-in registered nothing new, and its builds recorded no plug-in
            from bertc.registry import BY_KIND

            for kind, name in _registered() - before:
                BY_KIND[kind].unregister(name)
            raise
    except ModuleNotFoundError as exc:
        if not is_file and exc.name and plugin.startswith(exc.name):
            raise PluginError(f"plugin {plugin}: no module named {exc.name!r} (a module on the Python path, "
                              f"or a path to a .py file)") from None
        raise PluginError(f"plugin {plugin} failed to import: {_where(exc)}") from None
    except (Exception, SystemExit) as exc:   # a plug-in's sys.exit() ended a notebook's cell or a host's process
        raise PluginError(f"plugin {plugin} failed to import: {_where(exc)}") from None
    added = sorted(_registered() - before)
    _refuse_unloadable(plugin, module, added)
    return {"plugin": plugin, "module": module.__name__, "path": str(path) if path else None,
            "registered": [f"{kind} {name!r}" for kind, name in added], "sha256": _code_sha256(path)}


def _code_sha256(path: Optional[Path]) -> Optional[str]:
    """The sha256 of a plug-in's file (a module's own file: not the rest of its package), so that a later ``bertc
    parity`` or ``bench`` of the build can say when the plug-in's code is not the build's."""
    from bertc.manifest import sha256_file

    try:
        return sha256_file(Path(path)) if path else None
    except OSError:
        return None


def changed_since_build(report: dict) -> list[str]:
    """The plug-ins of a build (its ``report``'s ``plugins``) whose code loaded here differs from the code the build
    recorded (a plug-in edited since the build): the Keras model a command reloads runs the plug-in's code of
    today, the artifacts the build's."""
    now = loaded()
    changed = []
    for record in _plugin_records(report.get("plugins")):
        if not record.get("sha256"):   # an earlier bertc's build recorded none
            continue
        registered = set(record.get("registered") or [])
        same = [r for r in now if (r["path"] and r["path"] == record.get("path")) or r["plugin"] == record["plugin"]
                or registered & set(r["registered"])]
        if same and record["sha256"] not in {r.get("sha256") for r in same}:
            changed.append(f"plug-in {record['plugin']} (its code differs from the build's)")
    return changed


def _module_name(path: Path) -> str:
    """The module name a plug-in file is imported as: ``bertc_plugin_STEM``, or ``bertc_plugin_STEM_2`` (and on) when
    another file of that name holds it (two ``attention.py`` in two folders: the second replaced the first in
    ``sys.modules``, and an error in the first one's classes was said to be in the second)."""
    base = f"bertc_plugin_{path.stem}"
    for n in range(1, 10_000):
        name = base if n == 1 else f"{base}_{n}"
        held = sys.modules.get(name)
        file = getattr(held, "__file__", None)
        if held is None or (file and Path(file).resolve() == path):
            return name
    raise PluginError(f"plugin {path}: too many plug-in files named {path.name}")


def _refuse_unloadable(plugin: str, module, added) -> None:
    """A plug-in whose layer classes a saved model.keras could not rebuild (no ``@bertc.serializable``, a ``spec_cls``
    of another type) is refused now, what it registered taken back: a build would write a model.keras that no
    process could load (``bertc.registry.serialization_problem``)."""
    from bertc.registry import BY_KIND, keras_namesake, protocol_problem, serialization_problem

    problems = [p for p in (serialization_problem(BY_KIND[kind].get(name)) for kind, name in added) if p]
    problems += [p for p in (protocol_problem(BY_KIND[kind].get(name)) for kind, name in added) if p]
    problems += [p for p in (keras_namesake(c) for c in _own_classes(module)) if p]   # helper layers too
    if problems:
        for kind, name in added:
            BY_KIND[kind].unregister(name)
        if module.__name__.startswith("bertc_plugin_"):   # as one that fails while importing: not left behind
            sys.modules.pop(module.__name__, None)
        raise PluginError(f"plugin {plugin}: " + "; ".join(problems))


def label_of(cls) -> str:
    """``plugin FILE: `` for a class of a loaded plug-in (the plug-in as it was given), else ''."""
    module = sys.modules.get(getattr(cls, "__module__", None) or "")
    file = getattr(module, "__file__", None)
    plugin = _plugin_files().get(str(Path(file).resolve())) if file else None
    return f"plugin {plugin}: " if plugin else ""


_registry.plugin_label = label_of   # the registry's checks of a plug-in's call name it so


def _plugin_files() -> dict:
    """Resolved path -> plug-in (as given, or its module's name) of every file that holds a plug-in's code: the
    plug-ins loaded here, and the modules of every registered component not bertc's own (a plug-in imported as a
    module, a package's submodule). The registries are read as they are (a plug-in's registration has filled them
    with bertc's own): no TensorFlow is imported for an error of a command that needs none."""
    from bertc.registry import ALL, is_builtin

    files = {}
    for record in loaded():
        if record["path"]:
            files[record["path"]] = record["plugin"]
    for registry in ALL:
        for entry in list(registry._entries.values()):
            module = sys.modules.get(getattr(entry.component, "__module__", None) or "")
            file = getattr(module, "__file__", None)
            if file and not is_builtin(entry.component):
                files.setdefault(str(Path(file).resolve()), module.__name__)
    return files


def plugin_error(exc: BaseException) -> Optional[PluginError]:
    """What to report for ``exc`` when a plug-in's code raised it (an exception in a component's ``__init__`` or
    ``call``: not a bug in bertc), as a :class:`PluginError` (exit 2) naming the plug-in, the component, the file and
    line of the innermost frame in the plug-in's code and the exception; for a :class:`PluginError` that Keras
    re-raised with its own text around it (bertc's check of a plug-in's output), the first one's message. None when
    ``exc`` is not a plug-in's.

    Keras re-raises an exception of a layer's call as a new one of its type (its message wrapped in 'Exception
    encountered when calling ...'), the one before as its context: the innermost of the chain is what was raised."""
    chain, e = [], exc
    while e is not None and not any(e is c for c in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    if isinstance(exc, PluginError):   # Keras' copies only: a PluginError of bertc's own says what it means to
        first = [e for e in chain if isinstance(e, PluginError)][-1]
        keras = str(exc).startswith(("Exception encountered when calling", "Could not automatically infer"))
        return PluginError(str(first)) if keras and first is not exc else None
    if isinstance(exc, BertcError):   # bertc's own verdict (its message and exit code say it), wherever raised
        return None
    try:
        files = _plugin_files()
    except Exception:   # the registries unreadable: no plug-in to blame
        return None
    if not files:
        return None
    for e in reversed(chain):   # the innermost first
        found = None
        tb = e.__traceback__
        while tb is not None:
            file = str(Path(tb.tb_frame.f_code.co_filename).resolve())
            if file in files:
                found = (tb.tb_frame, tb.tb_lineno, file)
            tb = tb.tb_next
        if found is None:
            continue
        frame, line, file = found
        what = _component_of(frame.f_locals.get("self"), file)
        text = " ".join(str(e).split())
        text = text if len(text) <= 500 else text[:500] + " ..."
        return PluginError(f"plugin {files[file]}: {what}raised {type(e).__name__}" + (f": {text}" if text else "")
                           + f" (at {file}:{line}, in {frame.f_code.co_name}); an error in the plug-in's code, "
                             f"not in bertc")
    return None


def _component_of(obj, file: str) -> str:
    """``feedforward 'bad_init' (class BadInit) `` for the component ``obj`` (a frame's ``self``) is, or the one
    registered from ``file``; else ''."""
    from bertc.registry import ALL

    entries = [e for r in ALL for e in list(r._entries.values())]
    if obj is not None:
        for cls in type(obj).__mro__:
            entry = next((e for e in entries if e.component is cls), None)
            if entry is not None:
                return f"{entry.kind} {entry.name!r} (class {type(obj).__name__}) "
    from_file = [e for e in entries if getattr(sys.modules.get(getattr(e.component, "__module__", "") or ""),
                                               "__file__", None) and
                 str(Path(sys.modules[e.component.__module__].__file__).resolve()) == file]
    if len(from_file) == 1:
        e = from_file[0]
        return f"{e.kind} {e.name!r} (class {getattr(e.component, '__name__', e.component)}) "
    return ""


def _own_classes(module) -> list:
    """The classes ``module`` defines itself (not those it imports)."""
    return [v for v in list(vars(module).values()) if isinstance(v, type) and v.__module__ == module.__name__]


def _where(exc: BaseException) -> str:
    """``Type: message`` and where the plug-in's own code raised it (file:line): the innermost frame outside
    bertc and the import machinery, else the innermost one."""
    bertc_dir = str(Path(__file__).resolve().parent)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    own = [f for f in frames if not str(Path(f.filename).resolve()).startswith(bertc_dir)]
    frame = (own or frames or [None])[-1]
    where = f" (at {frame.filename}:{frame.lineno})" if frame else ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" (at {exc.filename}:{exc.lineno})"
    from bertc.errors import BertcError

    what = f"{exc}" if isinstance(exc, BertcError) else f"{type(exc).__name__}: {exc}"   # bertc's own say it all
    return f"{what}{where}"
