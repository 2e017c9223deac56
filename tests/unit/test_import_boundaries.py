"""No private import crosses a package boundary.

A *unit* is a subpackage or top-level module of :mod:`hwnas` (``hwnas.builder``, ``hwnas.cli``, ...) or a
top-level package of the repository (``search_spaces``, ``experiments``, ``examples``). A module may import the
private modules (``_name``) and private names of its own unit only; from any other unit it goes through the public
face (``hwnas.builder``, ``search_spaces``, ...). Private modules directly under :mod:`hwnas` (``hwnas._lazy``) are
the library's own plumbing: every ``hwnas`` unit may use them, nothing outside ``hwnas`` may. Imports inside
functions count as much as those at the top of a module, and so does ``importlib.import_module("...")`` with a
literal name. Tests are exempt (they test the private machinery).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("hwnas", "experiments", "search_spaces", "examples")

#: Private imports still allowed: path relative to the repository root -> the imports (``"module:name"``, or
#: ``"module"`` for every name of it) still allowed in that file. Empty since issue 16; it only shrinks, so keep it
#: empty: make the name public instead.
ALLOWED: dict[str, set[str]] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "hwnas" and len(parts) > 1 and not parts[1].startswith("_"):
        return "hwnas." + parts[1]
    return parts[0]


def _same_unit(importer: str, target_unit: str) -> bool:
    if _unit(importer) == target_unit:
        return True
    return target_unit == "hwnas" and importer.split(".")[0] == "hwnas"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _crossing(module: str, importer: str) -> bool:
    parts = module.split(".")
    if parts[0] not in SCANNED:
        return False
    return any(_private(p) for p in parts[1:]) and not _same_unit(importer, _unit(module))


def _called(node: ast.Call) -> str | None:
    return getattr(node.func, "attr", getattr(node.func, "id", None))


def violations(path: Path) -> list[str]:
    """``"file:line module[:name]"`` for every private import in ``path`` that crosses a unit boundary."""
    importer = _module_name(path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = path.relative_to(ROOT).as_posix()
    allowed = ALLOWED.get(rel, set())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(importer, is_package, node)
            targets = [(module, alias.name) for alias in node.names]
        elif (isinstance(node, ast.Call) and _called(node) == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets = [(node.args[0].value, None)]   # importlib.import_module("hwnas.x._y")
        else:
            continue
        for module, name in targets:
            if module.split(".")[0] not in SCANNED:
                continue
            bad = _crossing(module, importer)
            if name is not None and not bad:
                # ``from pkg import _mod`` (a private submodule) or ``from mod import _name`` (a private name).
                bad = _private(name) and not _same_unit(importer, _unit(f"{module}.{name}"))
            key = module if name is None else f"{module}:{name}"
            if bad and key not in allowed and module not in allowed:
                found.append(f"{rel}:{node.lineno} {key}")
    return found


def _sources() -> list[Path]:
    return sorted(p for top in SCANNED for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)


def test_no_private_import_crosses_a_package_boundary():
    found = [v for path in _sources() for v in violations(path)]
    assert not found, "private imports across package boundaries:\n" + "\n".join(found)


def test_allow_list_names_existing_files_and_imports():
    """An entry whose file or import is gone is stale: delete it (the list only shrinks)."""
    for rel, keys in ALLOWED.items():
        assert (ROOT / rel).is_file(), rel
        saved = dict(ALLOWED)
        try:
            ALLOWED[rel] = set()
            found = {v.split(" ", 1)[1] for v in violations(ROOT / rel)}
        finally:
            ALLOWED.clear()
            ALLOWED.update(saved)
        stale = sorted(k for k in keys if k not in found)
        assert not stale, f"{rel}: no longer imported, delete from ALLOWED: {stale}"


@pytest.mark.parametrize("source, expected", [
    ("from hwnas.builder._backends import measure\n", ["x.py:1 hwnas.builder._backends:measure"]),
    ("import hwnas.builder._backends\n", ["x.py:1 hwnas.builder._backends"]),
    ("from hwnas.cli import _shape\n", ["x.py:1 hwnas.cli:_shape"]),
    ("from hwnas.builder import _store\n", ["x.py:1 hwnas.builder:_store"]),
    ("def f():\n    from search_spaces._registry import lookup\n", ["x.py:2 search_spaces._registry:lookup"]),
    ("from hwnas.builder import measure_latency\n", []),
    ("from hwnas.export._common import x\n", []),
    ("from ._common import x\n", []),
    ("from hwnas._lazy import lazy_exports\n", []),
    ("import numpy._core\n", []),
    ("importlib.import_module('hwnas.builder._cli')\n", ["x.py:1 hwnas.builder._cli"]),
])
def test_scanner_flags_what_it_should(tmp_path, monkeypatch, source, expected):
    pkg = ROOT / "hwnas" / "export"
    path = pkg / "x.py"
    monkeypatch.setattr("pathlib.Path.read_text", lambda self, encoding=None: source)
    assert [v.removeprefix("hwnas/export/") for v in violations(path)] == expected


def test_outside_hwnas_may_not_use_hwnas_plumbing(monkeypatch):
    monkeypatch.setattr("pathlib.Path.read_text", lambda self, encoding=None: "from hwnas._lazy import x\n")
    assert violations(ROOT / "experiments" / "x.py") == ["experiments/x.py:1 hwnas._lazy:x"]
