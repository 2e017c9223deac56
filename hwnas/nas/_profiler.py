"""NNI adapters over a :class:`~hwnas.tables.LatencyTable`: a latency profiler and a latency-budget filter.

- :class:`LatencyProfiler` is NNI's profiler interface (``profile(sample) -> float``, ms). It is an
  ``ExpressionProfiler`` (``fixed + Σ_l switch_case(label_l, row_l)``), so NNI's ``RangeProfilerFilter`` (SPOS's
  ``RandomOneShot(filter=...)``) and ``ExpectationProfilerPenalty`` (ProxylessNAS) accept it; ``profile`` itself is
  the table's exact lookup.
- :class:`LatencyFilter` is NNI's ``Filter`` strategy middleware with a latency budget (``max_ms``, optional
  ``min_ms``): ``Chain(Random(), LatencyFilter(table, 5.0))`` or ``Chain(RegularizedEvolution(...), ...)``. It is
  also a plain callable on a model or a sample, for ``Filter(fn)`` or ``RandomOneShot(filter=fn)``.

Limitations
-----------
- Feasibility is checked exactly against the space's fastest and slowest architectures (the per-label minima and
  maxima of the table). A ``[min_ms, max_ms]`` window inside that range can still be empty or nearly so; then the
  rejection cap (``max_consecutive_rejections``) turns sampling that would never end into
  :class:`~hwnas.errors.InfeasibleBudgetError`.
- ``ExpectationProfilerPenalty`` computes the expectation with ``softmax(...).tolist()``, so NNI's penalty carries no
  gradient (Python floats, no graph); use :class:`hwnas.nas.LatencyLoss` for a differentiable latency loss.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from nni.mutable import Categorical, MutableExpression
from nni.nas.profiler import ExpressionProfiler
from nni.nas.strategy.middleware import Filter

from hwnas.errors import ArchitectureError, InfeasibleBudgetError
from hwnas.nas._budget import BudgetedSampler, LatencyBudget
from hwnas.nas._compat import plain_arch

__all__ = ["LatencyFilter", "LatencyProfiler"]

_logger = logging.getLogger(__name__)


def _space_choices(model_space: Any) -> dict[str, list[str]]:
    """Label -> choice names of an NNI model space (or an ``ExecutableModelSpace``), from ``simplify()``."""
    try:
        mutables = model_space.simplify()
    except AttributeError:
        raise TypeError(f"model_space must be an NNI model space (with simplify()), got "
                        f"{type(model_space).__name__}") from None
    out: dict[str, list[str]] = {}
    for label, mutable in mutables.items():
        values = getattr(mutable, "values", None)
        if values is None:
            raise ArchitectureError(f"label {str(label)!r} of the model space is a {type(mutable).__name__}, "
                                    "not a categorical choice: a latency table cannot price it")
        out[str(label)] = [str(v) for v in values]
    return out


def _check_table_fits_space(table: Any, model_space: Any) -> None:
    """Raise :class:`ArchitectureError` unless ``model_space`` has exactly the table's labels and choices."""
    space = _space_choices(model_space)
    if set(space) != set(table.labels):
        raise ArchitectureError(
            f"the latency table does not fit the model space: labels only in the space "
            f"{sorted(set(space) - set(table.labels))}, only in the table {sorted(set(table.labels) - set(space))}")
    for label in table.labels:
        if sorted(space[label]) != sorted(table.choices[label]):
            raise ArchitectureError(f"the latency table does not fit the model space: label {label!r} has choices "
                                    f"{space[label]} in the space and {table.choices[label]} in the table")


class LatencyProfiler(ExpressionProfiler):
    """NNI profiler of predicted latency (ms), backed by a :class:`~hwnas.tables.LatencyTable`.

    Parameters
    ----------
    table : LatencyTable
        Per-choice latencies of the space on the target predictor and input shape.
    model_space : ModelSpace, optional
        NNI's ``Profiler`` signature; when given, it must have exactly the table's labels and choices
        (:class:`ArchitectureError` otherwise). The profiler never runs the space.

    Attributes
    ----------
    expression : MutableExpression
        ``fixed + Σ_l switch_case(label_l, {choice: ms})`` over ``nni.mutable.Categorical`` leaves labelled like the
        space, all constants float: what ``ExpectationProfilerPenalty`` takes expectations of.
    table : LatencyTable

    Examples
    --------
    >>> profiler = LatencyProfiler(table)
    >>> profiler.profile({"s1_b0": "shuffle3", ...})          # ms, == table.latency(arch)
    >>> RandomOneShot(filter=RangeProfilerFilter(profiler, max=5.0))
    """

    def __init__(self, table: Any, model_space: Any = None):
        super().__init__(model_space)
        if model_space is not None:
            _check_table_fits_space(table, model_space)
        self.table = table
        rows = table.rows
        expression: Any = float(table.fixed_latency)
        for label in table.labels:
            names = list(table.choices[label])
            choice = Categorical(names, label=label)
            expression = expression + MutableExpression.switch_case(
                choice, {name: float(rows[label][name]) for name in names})
        self.expression = expression

    def profile(self, sample: Mapping[str, Any]) -> float:
        """Predicted latency of one architecture, ms: exactly ``table.latency(sample)``.

        Raises
        ------
        ArchitectureError
            A label or choice the table does not have, or a missing label.
        """
        return float(self.table.latency(plain_arch(sample)))

    def __repr__(self) -> str:
        return f"LatencyProfiler(labels={len(self.table.labels)}, range={self.table.min_latency():.4g}.." \
               f"{self.table.max_latency():.4g} ms)"


class LatencyFilter(Filter):
    """NNI ``Filter`` middleware that keeps architectures within a latency budget (predicted, ms).

    Parameters
    ----------
    table : LatencyTable
        The space's latency table (its predictor and input shape define "latency").
    budget : LatencyBudget or float
        ``LatencyBudget(max_ms, min_ms=None)``; a float is ``max_ms``.
    max_consecutive_rejections : int
        Rejections in a row after which the filter raises :class:`InfeasibleBudgetError` (a feasible budget met by
        too few architectures for the strategy to find them), instead of NNI's silent stop (NNI's own ``patience``
        is set one higher so that this error comes first).
    record : bool
        Keep ``{"arch", "latency_ms", "macs", "params"}`` of every accepted architecture in :attr:`accepted`.

    Raises
    ------
    InfeasibleBudgetError
        At construction, before any trial: no architecture of the space meets the budget; the message names the
        budget and the fastest (or slowest) possible latency.

    Attributes
    ----------
    sampler : BudgetedSampler
        The NNI-free checks (:meth:`~BudgetedSampler.accepts`, :meth:`~BudgetedSampler.describe`).
    accepted : list of dict
        Accepted architectures with their predicted latency (ms), MACs and parameters, in order.
    n_accepted, n_rejected : int
        Counts so far.

    Notes
    -----
    Use it directly in a chain, ``Chain(Random(), LatencyFilter(table, 5.0))``, or as the function of another
    filter: ``latency_filter(model_or_sample) -> bool`` takes an ``ExecutableModelSpace`` (its ``.sample``) or a
    sample dict. A filter instance belongs to one strategy (NNI binds a middleware to one engine).
    """

    def __init__(self, table: Any, budget: LatencyBudget | float, *, max_consecutive_rejections: int = 10_000,
                 record: bool = True):
        if int(max_consecutive_rejections) < 1:
            raise ValueError(f"max_consecutive_rejections must be >= 1, got {max_consecutive_rejections}")
        self.sampler = BudgetedSampler(table, budget)
        self.sampler.check_feasible()
        self.max_consecutive_rejections = int(max_consecutive_rejections)
        self.record = bool(record)
        self.accepted: list[dict[str, Any]] = []
        self.n_accepted = 0
        self.n_rejected = 0
        self._streak = 0
        super().__init__(self._check, patience=self.max_consecutive_rejections + 1)

    @property
    def table(self) -> Any:
        return self.sampler.table

    @property
    def budget(self) -> LatencyBudget:
        return self.sampler.budget

    def extra_repr(self) -> str:
        return f"budget=({self.budget}), accepted={self.n_accepted}, rejected={self.n_rejected}"

    def __call__(self, model_or_sample: Any) -> bool:
        return self._check(model_or_sample)

    def accepts(self, arch: Mapping[str, str]) -> bool:
        """Whether ``arch`` is within the budget (no counting or recording)."""
        return self.sampler.accepts(plain_arch(arch))

    def describe(self, arch: Mapping[str, str]) -> dict[str, Any]:
        """``{"latency_ms": float (ms), "macs": int, "params": int}`` of ``arch`` from the table."""
        return self.sampler.describe(plain_arch(arch))

    def _check(self, model_or_sample: Any) -> bool:
        arch = plain_arch(model_or_sample)
        info = self.sampler.describe(arch)
        if self.budget.contains(info["latency_ms"]):
            self.n_accepted += 1
            self._streak = 0
            if self.record:
                self.accepted.append({"arch": arch, **info})
            return True
        self.n_rejected += 1
        self._streak += 1
        _logger.debug("latency filter: %.4g ms outside the budget %s", info["latency_ms"], self.budget)
        if self._streak >= self.max_consecutive_rejections:
            rate = self.sampler.acceptance_rate(20_000, rng=0)
            raise InfeasibleBudgetError(
                f"latency budget {self.budget}: {self._streak} architectures in a row proposed by the strategy were "
                f"outside it ({self.n_accepted} accepted so far); the space spans {self.table.min_latency():.4g}.."
                f"{self.table.max_latency():.4g} ms and about {rate:.2%} of uniformly drawn architectures meet the "
                f"budget. Loosen the budget (or raise max_consecutive_rejections)")
        return False
