"""The wheel: built without setuptools warnings, and with every embedded predictor's files (issue 18, item 4).

The package is built from a copy of the source tree (no ``build/`` left over from an earlier build can hide a
missing file) with the test environment's setuptools, offline.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
_SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", ".pytest_cache",
                               ".hwnas_cache", "experiments", "tests")


def test_wheel_builds_quietly_and_carries_the_predictors(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=_SKIP)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-w", str(tmp_path / "wheels"), str(src)], capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "absent from the `packages` configuration" not in log and "Warning" not in log, log

    (wheel,) = (tmp_path / "wheels").glob("hwnas-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    predictors = ROOT / "hwnas" / "predictors"
    want = {f"hwnas/predictors/{p.relative_to(predictors).as_posix()}" for p in predictors.rglob("*")
            if p.is_file() and p.suffix in (".json", ".npz")}
    assert any(n.endswith("/regressors.npz") for n in want) and want <= names, sorted(want - names)
    assert {"hwnas/cli.py", "hwnas/export/_arch_file.py", "search_spaces/__init__.py"} <= names
    assert not any("__pycache__" in n or n.startswith(("tests/", "experiments/")) for n in names)
