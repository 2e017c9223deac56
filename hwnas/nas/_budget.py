"""Latency budgets over a search space's :class:`~hwnas.tables.LatencyTable` (NNI-free core of the filters).

The table makes every check exact and cheap: an architecture's latency is a gather and a sum, and the fastest
and slowest architectures of the space are the per-label minima and maxima, so a budget no architecture meets
is known before anything is sampled or trained.

Default budgets, when the user names no ``max_ms``, follow two documented rules, each in one place:

- multi-trial searches (the random search, the NNI search): :meth:`LatencyBudget.from_table`, a quantile
  (:data:`DEFAULT_QUANTILE`) of the latency of uniformly drawn architectures: about that share of the space passes;
- one-shot searches (the SPOS budget, the ProxylessNAS latency target): :meth:`LatencyBudget.from_range`, the
  fastest latency plus a fraction (:data:`DEFAULT_RANGE_FRACTION`, both entry points) of the space's range. A
  supernet search aims at a point of the range, and uniform architectures concentrate in its middle, so a
  quantile would put the target far from the fast end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from hwnas.errors import InfeasibleBudgetError

__all__ = ["BudgetedSampler", "LatencyBudget", "DEFAULT_QUANTILE", "DEFAULT_RANGE_FRACTION", "QUANTILE_DRAWS"]

#: Quantile of the space's predicted latency that :meth:`LatencyBudget.from_table` uses by default.
DEFAULT_QUANTILE = 0.5
#: Uniform architectures :meth:`LatencyBudget.from_table` draws (a fixed draw, seed 0).
QUANTILE_DRAWS = 100_000
#: Where in the space's predicted latency range :meth:`LatencyBudget.from_range` puts a one-shot budget by default.
DEFAULT_RANGE_FRACTION = 0.35


@dataclass(frozen=True)
class LatencyBudget:
    """Accept architectures with ``min_ms <= latency <= max_ms`` (predicted, ms).

    Attributes
    ----------
    max_ms : float
        Largest accepted latency, ms.
    min_ms : float, optional
        Smallest accepted latency, ms (e.g. to keep a search away from trivially small networks).
    """

    max_ms: float
    min_ms: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.max_ms, (int, float)) and math.isfinite(self.max_ms) and self.max_ms > 0):
            raise ValueError(f"max_ms must be a positive number of ms, got {self.max_ms!r}")
        if self.min_ms is not None and not (isinstance(self.min_ms, (int, float)) and math.isfinite(self.min_ms)
                                            and 0 <= self.min_ms <= self.max_ms):
            raise ValueError(f"min_ms must be in [0, max_ms={self.max_ms}], got {self.min_ms!r}")

    @classmethod
    def from_table(cls, table: Any, quantile: float = DEFAULT_QUANTILE, *, min_ms: float | None = None
                   ) -> "LatencyBudget":
        """The default budget of a search: a quantile of the space's predicted latency.

        The one rule every driver uses when no ``max_ms`` is given: ``max_ms`` is the ``quantile`` quantile of
        the latency of :data:`QUANTILE_DRAWS` architectures drawn uniformly with a fixed generator (seed 0), so
        the same space, predictor and quantile give the same budget in every driver, whatever its own seed.

        Parameters
        ----------
        table : LatencyTable
            The space's latency table (``n_choices``, ``latency_batch``).
        quantile : float
            In ``(0, 1]``: about this fraction of the architectures is within the budget (0.5 by default).
        min_ms : float, optional
            Lower bound, ms, passed through.

        Returns
        -------
        LatencyBudget
        """
        if not 0.0 < float(quantile) <= 1.0:
            raise ValueError(f"the budget quantile must be in (0, 1], got {quantile}")
        rng = np.random.default_rng(0)
        n = np.asarray(table.n_choices)
        idx = (rng.random((QUANTILE_DRAWS, len(n))) * n).astype(np.int64)
        return cls(float(np.quantile(table.latency_batch(idx), float(quantile))), min_ms)

    @classmethod
    def from_range(cls, table: Any, fraction: float = DEFAULT_RANGE_FRACTION, *, min_ms: float | None = None
                   ) -> "LatencyBudget":
        """The default budget of a one-shot search: ``fastest + fraction * (slowest - fastest)``, ms.

        Parameters
        ----------
        table : LatencyTable
            The space's latency table (``min_latency``, ``max_latency``).
        fraction : float
            In ``[0, 1]``: where in the space's predicted latency range the budget lies (0: the fastest
            architecture only); default :data:`DEFAULT_RANGE_FRACTION`.
        min_ms : float, optional
            Lower bound, ms, passed through.

        Returns
        -------
        LatencyBudget
        """
        if not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"the budget fraction must be in [0, 1], got {fraction}")
        lo, hi = float(table.min_latency()), float(table.max_latency())
        return cls(lo + float(fraction) * (hi - lo), min_ms)

    def contains(self, latency_ms: Any) -> Any:
        """Whether ``latency_ms`` (a float or an array, ms) is within the budget."""
        ok = np.asarray(latency_ms) <= self.max_ms
        if self.min_ms is not None:
            ok = ok & (np.asarray(latency_ms) >= self.min_ms)
        return bool(ok) if np.ndim(ok) == 0 else ok

    def __str__(self) -> str:
        lo = f"{self.min_ms:g} ms <= " if self.min_ms is not None else ""
        return f"{lo}latency <= {self.max_ms:g} ms"


class BudgetedSampler:
    """Checks, describes and samples architectures of a table's space within a :class:`LatencyBudget`.

    Parameters
    ----------
    table : LatencyTable
        The space's per-choice latency table (its predictor defines "latency").
    budget : LatencyBudget or float
        The budget; a float is ``LatencyBudget(max_ms=value)``.
    batch : int
        Candidates drawn per vectorised rejection round of :meth:`sample`.
    max_draws : int
        Candidates drawn in all before :meth:`sample` gives up with :class:`InfeasibleBudgetError` (the budget
        is feasible but so tight that uniform sampling almost never meets it).
    """

    def __init__(self, table: Any, budget: LatencyBudget | float, *, batch: int = 4096, max_draws: int = 2_000_000):
        self.table = table
        self.budget = budget if isinstance(budget, LatencyBudget) else LatencyBudget(float(budget))
        self._batch, self._max_draws = int(batch), int(max_draws)
        self._labels = list(table.labels)
        self._choices = [list(table.choices[label]) for label in self._labels]
        self._n = np.array([len(c) for c in self._choices], dtype=np.int64)
        self._feasible_checked = False

    # -- checks ---------------------------------------------------------------------------------------------------
    def check_feasible(self) -> None:
        """Raise :class:`InfeasibleBudgetError` unless some architecture of the space meets the budget.

        Exact: the space's latencies span ``[table.min_latency(), table.max_latency()]``, and the budget must
        reach the fastest (``max_ms``) and not exceed the slowest (``min_ms``).
        """
        lo, hi = self.table.min_latency(), self.table.max_latency()
        if self.budget.max_ms < lo:
            raise InfeasibleBudgetError(
                f"no architecture meets the latency budget {self.budget}: the fastest architecture of the space "
                f"takes {lo:.4g} ms on predictor {self._predictor_name()} (slowest {hi:.4g} ms)")
        if self.budget.min_ms is not None and self.budget.min_ms > hi:
            raise InfeasibleBudgetError(
                f"no architecture meets the latency budget {self.budget}: the slowest architecture of the space "
                f"takes {hi:.4g} ms on predictor {self._predictor_name()} (fastest {lo:.4g} ms)")
        self._feasible_checked = True

    def _predictor_name(self) -> str:
        try:
            return str(self.table.metadata["predictor"]["name"])
        except (AttributeError, KeyError, TypeError):
            return "?"

    def accepts(self, arch: Mapping[str, str]) -> bool:
        """Whether ``arch`` is within the budget (raises :class:`ArchitectureError` for an invalid one)."""
        return bool(self.budget.contains(self.table.latency(arch)))

    def describe(self, arch: Mapping[str, str]) -> dict[str, Any]:
        """``{"latency_ms": float (ms), "macs": int, "params": int}`` of ``arch`` from the table."""
        return {"latency_ms": self.table.latency(arch), "macs": self.table.macs(arch),
                "params": self.table.params(arch)}

    # -- sampling -------------------------------------------------------------------------------------------------
    def sample_many(self, n: int, rng: np.random.Generator | int | None = None) -> list[dict[str, str]]:
        """``n`` architectures drawn independently and uniformly from those within the budget.

        Vectorised rejection sampling: uniform candidates are drawn ``batch`` at a time and scored with the
        table, so millions of candidates cost about a second.
        """
        if not self._feasible_checked:
            self.check_feasible()
        if n <= 0:
            return []
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        picked: list[np.ndarray] = []
        have, drawn = 0, 0
        while have < n:
            if drawn >= self._max_draws:
                rate = have / max(drawn, 1)
                raise InfeasibleBudgetError(
                    f"latency budget {self.budget} is met by too few architectures to sample: {have} of {drawn} "
                    f"uniform draws (acceptance {rate:.2e}); the space spans {self.table.min_latency():.4g}.."
                    f"{self.table.max_latency():.4g} ms: loosen the budget")
            idx = (rng.random((self._batch, len(self._n))) * self._n).astype(np.int64)
            ok = self.budget.contains(self.table.latency_batch(idx))
            drawn += self._batch
            if np.any(ok):
                picked.append(idx[ok])
                have += int(np.count_nonzero(ok))
        rows = np.concatenate(picked)[:n]
        return [{label: self._choices[j][int(i)] for j, (label, i) in enumerate(zip(self._labels, row))}
                for row in rows]

    def sample(self, rng: np.random.Generator | int | None = None) -> dict[str, str]:
        """One architecture drawn uniformly from those within the budget (see :meth:`sample_many`)."""
        return self.sample_many(1, rng)[0]

    def acceptance_rate(self, n: int = 100_000, rng: np.random.Generator | int | None = 0) -> float:
        """Share of uniformly drawn architectures within the budget (an estimate from ``n`` draws)."""
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        idx = (rng.random((int(n), len(self._n))) * self._n).astype(np.int64)
        return float(np.mean(self.budget.contains(self.table.latency_batch(idx))))
