"""The preparation both multi-trial searches share: predictor → latency table → budget → feasibility check.

:func:`prepare_search` is called by :func:`hwnas.nas.run_random_search` and :func:`hwnas.nas.run_nni_search` after
they have read their data (a wrong data path fails first, in seconds) and before anything trains:

1. the latency predictor is loaded (:func:`hwnas.load_latency_predictor`);
2. the space's latency table is read from ``<out_dir>/latency_table.json`` when that file describes this space,
   space config, input size and predictor (checksum), else built and saved there;
3. the budget is the one given, else :meth:`LatencyBudget.from_table` (the quantile rule of every multi-trial
   search);
4. an infeasible budget raises :class:`~hwnas.errors.InfeasibleBudgetError` (exact, from the table's range).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from hwnas.nas._budget import DEFAULT_QUANTILE, BudgetedSampler, LatencyBudget

TABLE_FILE = "latency_table.json"


@dataclass
class SearchSetup:
    """What :func:`prepare_search` resolved.

    Attributes
    ----------
    predictor : LatencyPredictor
        The loaded predictor.
    table : LatencyTable
        The space's latency table, saved at ``table_path``.
    table_path : Path
        ``<out_dir>/latency_table.json``.
    budget : LatencyBudget
        The budget (the given one, or resolved from the quantile), ms.
    sampler : BudgetedSampler
        Uniform sampling within the budget over ``table`` (feasibility already checked).
    acceptance_rate : float
        Share of uniformly drawn architectures within the budget (100 000 draws, seed 0).
    """

    predictor: Any
    table: Any
    table_path: Path
    budget: LatencyBudget
    sampler: BudgetedSampler
    acceptance_rate: float

    @property
    def latency_range(self) -> tuple[float, float]:
        """Fastest and slowest architecture of the space, predicted ms."""
        return self.table.min_latency(), self.table.max_latency()

    def describe(self, space: str, space_config: Mapping[str, Any]) -> str:
        """One line: the space, its predicted latency range, the budget and the share it accepts."""
        lo, hi = self.latency_range
        return (f"search space {space} {dict(space_config)}: predicted latency {lo:.3f}..{hi:.3f} ms on "
                f"{self.predictor.name}; budget {self.budget} accepts {self.acceptance_rate:.1%} of the architectures")


def load_or_build_table(path: Path, space: str, space_config: Mapping[str, Any], predictor: Any) -> Any:
    """The table in ``path`` when it describes ``space`` with ``space_config`` (its ``input_size`` included) and
    ``predictor``; else a new one, saved to ``path``."""
    import search_spaces as ss
    from hwnas.errors import TableFileError
    from hwnas.tables import LatencyTable

    side = int(space_config["input_size"])
    if path.is_file():
        try:
            table = LatencyTable.load(path)
            meta = table.metadata
            if (meta["space"]["name"] == space and meta["predictor"]["checksum"] == predictor.checksum
                    and list(meta["input_shape"]) == [1, 3, side, side]
                    and all(meta["space"]["config"].get(k) == v for k, v in space_config.items())):
                return table
        except (TableFileError, KeyError, TypeError):
            pass   # rebuilt below
    table = LatencyTable.build(ss.create_space(space, **space_config), predictor)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.save(path)
    return table


def prepare_search(space: str, space_config: Mapping[str, Any], predictor: Any, out_dir: str | Path, *,
                   budget: LatencyBudget | None = None, quantile: float = DEFAULT_QUANTILE,
                   min_ms: float | None = None) -> SearchSetup:
    """Predictor, latency table, budget and sampler of a multi-trial search (see the module docstring).

    Parameters
    ----------
    space : str
        Registered search space.
    space_config : mapping
        Fields of the space's config, ``input_size`` included.
    predictor : str or LatencyPredictor
        Embedded name, directory or ``"auto"``; a loaded predictor is used as it is.
    out_dir : path
        The search's results folder (the table is kept there).
    budget : LatencyBudget, optional
        The budget; ``None``: :meth:`LatencyBudget.from_table` with ``quantile`` and ``min_ms``.
    quantile : float
        See ``budget``; in (0, 1].
    min_ms : float, optional
        Lower bound of a budget resolved from the quantile, ms.

    Returns
    -------
    SearchSetup

    Raises
    ------
    InfeasibleBudgetError
        No architecture of the space meets the budget.
    """
    import hwnas

    if isinstance(predictor, (str, os.PathLike)):
        predictor = hwnas.load_latency_predictor(predictor)
    path = Path(out_dir) / TABLE_FILE
    table = load_or_build_table(path, space, space_config, predictor)
    budget = budget or LatencyBudget.from_table(table, quantile, min_ms=min_ms)
    sampler = BudgetedSampler(table, budget)
    sampler.check_feasible()
    return SearchSetup(predictor=predictor, table=table, table_path=path, budget=budget, sampler=sampler,
                       acceptance_rate=sampler.acceptance_rate())
