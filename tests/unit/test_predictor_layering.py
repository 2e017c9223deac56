"""``hwnas.predictor`` imports nothing of ``hwnas.builder`` (issue 16): pricing a model needs no measurement code.

Two checks: no module of the predictor package names ``hwnas.builder`` in an import (top level, inside a function
or ``importlib.import_module`` with a literal name), and, at run time, pricing an ``nn.Module``, a TorchScript file
and an ONNX file written by ``hwnas export`` loads no module of ``hwnas.builder`` (the TorchScript file's recorded
input shape is read through :mod:`hwnas.export`, whose shared warning filter used to come from the builder).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PREDICTOR = ROOT / "hwnas" / "predictor"


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``path``, relative imports resolved within ``hwnas.predictor``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["hwnas", "predictor"][: 2 - (node.level - 1)]
                found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            else:
                found.append((node.lineno, node.module or ""))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
            found.append((node.lineno, node.args[0].value))
    return found


def test_no_predictor_module_imports_the_builder():
    found = [f"{path.relative_to(ROOT)}:{line} {module}" for path in sorted(PREDICTOR.glob("*.py"))
             for line, module in _imported_modules(path) if module.split(".")[:2] == ["hwnas", "builder"]]
    assert not found, "hwnas.predictor imports the builder:\n" + "\n".join(found)


def test_the_scan_sees_function_level_and_relative_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from hwnas.builder import measure\n    import importlib\n"
                   "    importlib.import_module('hwnas.builder._fit')\nfrom ._format import read_predictor\n")
    assert sorted(_imported_modules(src)) == [(2, "hwnas.builder"), (3, "importlib"), (4, "hwnas.builder._fit"),
                                              (5, "hwnas.predictor._format")]


_PRICE = """
import json, sys
import torch
import hwnas.predictor as P

names = {}
for entry in P.list_latency_predictors():
    names.setdefault(entry["backend"], entry["name"])
ts = P.load_latency_predictor(names["torchscript-cpu"])
ms = [ts.predict(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()), "torch", (1, 3, 16, 16)),
      ts.predict(sys.argv[1], "torchscript")]
if "onnxruntime-cpu" in names:
    ms.append(P.load_latency_predictor(names["onnxruntime-cpu"]).predict(sys.argv[2], "onnx"))
print(json.dumps({"ms": ms, "builder": sorted(m for m in sys.modules if m.split(".")[:2] == ["hwnas", "builder"])}))
"""


def test_pricing_models_and_files_loads_no_builder_module(tmp_path):
    from hwnas.export import export_torchscript

    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
    ts_file, onnx_file = tmp_path / "m.pt", tmp_path / "m.onnx"
    export_torchscript(model, ts_file, (1, 3, 16, 16), onnx=onnx_file, measure=False, parity_inputs=1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", _PRICE, str(ts_file), str(onnx_file)],
                          capture_output=True, text=True, timeout=280, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(ms > 0 for ms in out["ms"]) and len(out["ms"]) >= 2
    assert out["builder"] == [], f"pricing imported {out['builder']}"
