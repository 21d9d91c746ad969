"""The model's interface flows one way: one Signature from the spec, no import cycles between stages."""
import ast
from pathlib import Path

import pytest

from bertc.build import build_model
from bertc.signature import signature_of
from bertc.spec import load_spec
from conftest import ROOT, TINY_SPECS

PACKAGE = ROOT / "bertc"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """bertc module -> the bertc modules it imports anywhere (top level or inside functions)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets |= {f"{node.module}.{a.name}" for a in node.names}
        # Importing a package's submodule runs the package's __init__: not an edge of interest.
        graph[name] = {t for t in targets if t in modules and t != name and not name.startswith(t + ".")
                       and t != "bertc"}
    return graph


def _cycles(graph):
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycles_between_bertc_modules():
    graph = _imports()
    assert "bertc.pipeline" not in graph["bertc.parity"]
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _packages(graph) -> dict[str, set[str]]:
    """The module graph with each subpackage (bertc.components, bertc.optimize, ...) as one node; a
    top-level module (bertc.build, bertc.registry, ...) stays its own node."""
    def node(module):
        return ".".join(module.split(".")[:2])
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(node(module), set()).update(node(t) for t in targets if node(t) != node(module))
    return packages


def test_no_import_cycles_between_bertc_packages():
    packages = _packages(_imports())
    assert "bertc.optimize" not in packages["bertc.components"]   # components get the lowering context passed in
    cycles = _cycles(packages)
    assert not cycles, "package import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_package_cycle_check_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _packages({"bertc.x.a": {"bertc.y.b"}, "bertc.y.b": {"bertc.x.c"}, "bertc.x.c": set()}) == {
        "bertc.x": {"bertc.y"}, "bertc.y": {"bertc.x"}}


def test_report_rendering_has_its_own_module():
    graph = _imports()
    # renders and reads data; of bertc's, only the error types (a leaf that imports nothing of bertc's)
    assert graph["bertc.report"] <= {"bertc.errors"} and graph["bertc.errors"] == set()
    assert "bertc.report" in graph["bertc.pipeline"] and "bertc.report" in graph["bertc.rerun"]


@pytest.mark.parametrize("spec_path", TINY_SPECS, ids=lambda p: p.stem)
def test_signature_is_the_built_models_interface(spec_path):
    spec = load_spec(spec_path)
    sig = signature_of(spec)
    model = build_model(spec, sig).model
    assert [t.name for t in model.inputs] == sig.input_names
    assert list(model.output.keys() if isinstance(model.output, dict) else model.output_names) == sig.output_names
    for info in sig.inputs:
        assert tuple(next(t for t in model.inputs if t.name == info.name).shape) == info.shape
