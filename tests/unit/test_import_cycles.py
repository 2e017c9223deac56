"""The modules of each package of hwnas import one another without a cycle (issue 16: the builder had three).

The graph counts every import of a module of the package by another: at the top of a module or inside a function
(a function-level import hides a cycle from Python, not from a reader), ``from hwnas.builder import name`` (an edge
to the module that defines ``name``, by the package's lazy table or its ``__init__``'s imports) and
``importlib.import_module("...")`` with a literal name. A backend listed by name in :data:`hwnas.builder.BACKENDS` is a plug-in looked up at run time, not an
import, and is not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("hwnas.builder", "hwnas.export", "hwnas.graph", "hwnas.nas", "hwnas.oneshot", "hwnas.predictor")


def _defining_modules(init: Path) -> dict[str, str]:
    """Public name of the package -> the module defining it: the package's lazy table (``_LAZY``) and the names
    its ``__init__`` imports from its own modules."""
    table: dict[str, str] = {}
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_LAZY":
            table.update(ast.literal_eval(node.value))
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            table.update({a.asname or a.name: node.module for a in node.names})
    return table


def import_graph(package: str) -> dict[str, set[str]]:
    """Module of ``package`` -> the modules of ``package`` it imports (full dotted names, the package itself
    excluded)."""
    folder = ROOT.joinpath(*package.split("."))
    lazy = _defining_modules(folder / "__init__.py")
    modules = {f"{package}.{p.stem}": p for p in folder.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:   # relative: from the package's folder
                    base = ".".join([package, *([base] if base else [])])
                if base == package:
                    targets.update(lazy.get(a.name, f"{package}.{a.name}") for a in node.names)
                else:
                    targets.add(base)
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
                  == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
                targets.add(str(node.args[0].value))
        graph[name] = {".".join(t.split(".")[:3]) for t in targets if t.startswith(package + ".")} & set(modules)
        graph[name].discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, ``None`` when it has none (depth-first search)."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    cycle = find_cycle(import_graph(package))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_graph_sees_function_level_and_lazy_imports(monkeypatch):
    sources = {"_a.py": "def f():\n    from hwnas.builder import measure_latency\n",
               "_backends.py": "import importlib\nimportlib.import_module('hwnas.builder._a')\n"}
    real_read, real_glob = Path.read_text, Path.glob
    folder = ROOT / "hwnas" / "builder"
    monkeypatch.setattr(Path, "glob", lambda self, pattern: (
        [folder / n for n in sources] if self == folder else real_glob(self, pattern)))
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: (
        sources[self.name] if self.parent == folder and self.name in sources else real_read(self, encoding=encoding)))
    graph = import_graph("hwnas.builder")
    assert graph == {"hwnas.builder._a": {"hwnas.builder._backends"}, "hwnas.builder._backends": {"hwnas.builder._a"}}
    assert find_cycle(graph) == ["hwnas.builder._a", "hwnas.builder._backends", "hwnas.builder._a"]


def test_find_cycle_on_a_dag():
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
