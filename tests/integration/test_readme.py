"""The README as a tested promise: every fenced ``python`` block of README.md runs as written (issue 18, item 3).

Blocks are found by their fence (```` ```python ````), whatever the sections around them say, and each runs in a
fresh interpreter from a temporary folder (so nothing is written into the repository), in README order. ``TINY``
may shrink a block's settings for the test (a string of the block and its replacement); a replacement whose string
no longer occurs is simply not applied, so rewriting the README never breaks this test, only a block that fails does.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
#: README text -> what the test runs instead (tiny settings); none needed today: every block runs in seconds.
TINY: dict[str, str] = {}
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every fenced ``python`` block of a Markdown text."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _FENCE.finditer(text)]


def test_python_blocks_are_found():
    text = "intro\n```python\nx = 1\n```\n\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n"), (9, "y = 2\n")]
    assert BLOCKS, "README.md has no python block"


BLOCKS = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_python_block_runs(line, code, tmp_path):
    for old, new in TINY.items():
        code = code.replace(old, new)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"README.md line {line}: the block fails:\n{code}\n{done.stderr[-3000:]}"
