"""No source file of the library, the entry points or the examples runs past 600 lines (issue 16).

A file that grows past it is split by concern (as ``hwnas.builder._config`` and ``hwnas.builder._reference`` left
``_build`` and ``_protocol``), not by cutting it in half. Tests are not counted.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("hwnas", "experiments", "search_spaces", "examples")
MAX_LINES = 600


def test_no_source_file_exceeds_the_line_limit():
    sizes = {path.relative_to(ROOT).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
             for top in SCANNED for path in (ROOT / top).rglob("*.py") if "__pycache__" not in path.parts}
    assert sizes, "no source file found"
    too_long = {path: n for path, n in sorted(sizes.items()) if n > MAX_LINES}
    assert not too_long, f"over {MAX_LINES} lines (split by concern): {too_long}"
