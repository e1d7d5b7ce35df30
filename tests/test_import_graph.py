"""The runtime's import graph has no circle, and the v1 surface depends on the bridge, never
the reverse (issue 24). Read from the source with ast: every import counts, the deferred ones
inside functions too, since a circle dodged by a deferred import is still a circle."""
import ast
import os

from conftest import ROOT

PACKAGE = "azml_v1_bridge"
SURFACE = f"{PACKAGE}.surface"


def modules() -> dict:
    """{module name: path} of every module of the runtime package."""
    out = {}
    base = os.path.join(ROOT, PACKAGE)
    for here, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(here, name), ROOT)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(here, name)
    return out


def imports_of(name: str, path: str, known: dict) -> set:
    """The runtime modules `name` imports (package __init__s aside)."""
    is_package = path.endswith("__init__.py")
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            if node.level:
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]  # `from .x import f`: module x
            if target and target != name and not known[target].endswith("__init__.py"):
                found.add(target)
    return found


def test_the_runtime_import_graph_has_no_circle():
    known = modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()
             if not path.endswith("__init__.py")}
    assert "azml_v1_bridge.patch" in graph and "azml_v1_bridge.surface.reads" in graph["azml_v1_bridge.surface.standins"]
    cycles = []
    state: dict = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_v1_surface_is_imported_only_by_the_activation():
    known = modules()
    importers = sorted(name for name, path in known.items()
                       if not name.startswith(SURFACE)
                       and any(t.startswith(SURFACE) for t in imports_of(name, path, {
                           **known, SURFACE: os.path.join(ROOT, "surface-as-module.py")})))
    assert importers == [PACKAGE]  # azml_v1_bridge/__init__.py's activation, nothing else
