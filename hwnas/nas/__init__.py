"""NNI adapters and search logic over latency tables (never a module named ``nni``).

Public API (everything else is private machinery and may change):

- :class:`LatencyBudget`, :class:`BudgetedSampler` — budgets over a :class:`~hwnas.tables.LatencyTable`:
  exact feasibility check, per-architecture latency/FLOPs/params, uniform sampling within the budget (NNI-free).

Names are imported lazily on first use, so ``import hwnas.nas`` imports neither torch nor NNI.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LatencyBudget": "hwnas.nas._budget",
    "BudgetedSampler": "hwnas.nas._budget",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hwnas.nas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
