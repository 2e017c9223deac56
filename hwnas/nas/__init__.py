"""NNI adapters and search logic over latency tables (never a module named ``nni``).

Public API (everything else is private machinery and may change):

- :class:`LatencyBudget`, :class:`BudgetedSampler` — budgets over a :class:`~hwnas.tables.LatencyTable`:
  exact feasibility check, per-architecture latency/MACs/params, uniform sampling within the budget (NNI-free);
  the default budgets' one rule each, :data:`DEFAULT_QUANTILE` (multi-trial) and :data:`DEFAULT_RANGE_FRACTION`
  (one-shot).
- :class:`LatencyProfiler`, :class:`LatencyFilter` — NNI's profiler and ``Filter`` middleware backed by a table
  (``Chain(Random(), LatencyFilter(table, budget))``); :func:`evaluate_architecture` — the trial of an NNI
  experiment; :class:`TrialRecorder` keeps full result dicts, :func:`read_records` reads them back;
  :func:`weights_path` — where a trial's trained weights are saved.
- NNI 3.0 fixes (all in one private module, each with a test): :func:`quiet_nni_import` (NNI's import-time
  notices), :func:`allowlisted_checkpoints` (checkpoints load with ``weights_only=True``),
  :func:`loopback_manager` (the experiment manager listens on 127.0.0.1 only), :func:`plain_arch`.
- :class:`LatencyLoss`, :class:`LatencyLossConfig` — the differentiable hardware-latency loss of ProxylessNAS
  (``mul#log``, ``add#linear``): expected latency from softmax(α) and the table, with an exact gradient to α.
- :class:`RandomSearchConfig`, :func:`run_random_search` — the resumable random multi-trial search without the
  NNI manager; :class:`NniSearchConfig` (sections :class:`SpaceSection`, :class:`BudgetSection`,
  :class:`StrategySection`, :class:`TrialsSection`, :class:`EngineSection`; :data:`STRATEGIES`, :data:`ENGINES`),
  :func:`run_nni_search`, :class:`NniSearchResult` — the NNI experiment (manager and web UI, or sequential), with
  :func:`choose_port` (a free loopback port). Both start with :func:`prepare_search` (predictor → latency table →
  budget → feasibility, :class:`SearchSetup`) and end with :func:`finish_search` (top-k table, PNG, best network).

Names are imported lazily on first use, so ``import hwnas.nas`` imports neither torch nor NNI.
"""

from __future__ import annotations

from hwnas._lazy import lazy_exports

_LAZY = {
    "LatencyBudget": "hwnas.nas._budget",
    "BudgetedSampler": "hwnas.nas._budget",
    "DEFAULT_QUANTILE": "hwnas.nas._budget",
    "DEFAULT_RANGE_FRACTION": "hwnas.nas._budget",
    "RandomSearchConfig": "hwnas.nas._random_search",
    "SearchResult": "hwnas.nas._random_search",
    "run_random_search": "hwnas.nas._random_search",
    "prepare_search": "hwnas.nas._prepare",
    "SearchSetup": "hwnas.nas._prepare",
    "NniSearchConfig": "hwnas.nas._nni_search",
    "NniSearchResult": "hwnas.nas._nni_search",
    "run_nni_search": "hwnas.nas._nni_search",
    "choose_port": "hwnas.nas._nni_search",
    "SpaceSection": "hwnas.nas._nni_search",
    "BudgetSection": "hwnas.nas._nni_search",
    "StrategySection": "hwnas.nas._nni_search",
    "TrialsSection": "hwnas.nas._nni_search",
    "EngineSection": "hwnas.nas._nni_search",
    "STRATEGIES": "hwnas.nas._nni_search",
    "ENGINES": "hwnas.nas._nni_search",
    "LatencyProfiler": "hwnas.nas._profiler",
    "LatencyFilter": "hwnas.nas._profiler",
    "evaluate_architecture": "hwnas.nas._trial",
    "traced_dataset": "hwnas.nas._trial",
    "TrialRecorder": "hwnas.nas._trial",
    "read_records": "hwnas.nas._trial",
    "weights_path": "hwnas.nas._trial",
    "plain_arch": "hwnas.nas._compat",
    "quiet_nni_import": "hwnas.nas._compat",
    "allowlisted_checkpoints": "hwnas.nas._compat",
    "loopback_manager": "hwnas.nas._compat",
    "LatencyLoss": "hwnas.nas._latency_loss",
    "LatencyLossConfig": "hwnas.nas._latency_loss",
    "LATENCY_LOSS_MODES": "hwnas.nas._latency_loss",
    "finish_search": "hwnas.nas._report",
    "SearchReport": "hwnas.nas._report",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
