"""LatencyBudget and BudgetedSampler over small hand-made latency tables (exact, enumerable spaces)."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from hwnas.errors import ArchitectureError, InfeasibleBudgetError
from hwnas.nas._budget import BudgetedSampler, LatencyBudget
from hwnas.tables import SCHEMA, SCHEMA_VERSION, LatencyTable

ROWS = [[0.3, 0.1, 0.2], [1.5, 0.7], [0.9, 0.4, 2.2, 0.05]]   # ms; fixed part 1.0 ms
FIXED = 1.0


def _table(rows=ROWS, fixed=FIXED) -> LatencyTable:
    blocks = [{"label": f"b{i}", "choices": [f"c{j}" for j in range(len(r))], "latency_ms": r,
               "flops": [1000 * (j + 1) for j in range(len(r))], "params": [10 * (j + 1) for j in range(len(r))]}
              for i, r in enumerate(rows)]
    return LatencyTable({"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "units": {"latency": "ms"},
                         "space": {"name": "tiny", "config": {}}, "input_shape": [1, 3, 8, 8],
                         "predictor": {"name": "tiny-predictor", "checksum": "0"},
                         "fixed": {"latency_ms": fixed, "overhead_ms": 0.0, "flops": 7, "params": 3, "slots": []},
                         "blocks": blocks})


@pytest.fixture(scope="module")
def table():
    return _table()


@pytest.fixture(scope="module")
def every_arch(table):
    """All 24 architectures with their exact latency (ms)."""
    archs = [dict(zip(table.labels, combo)) for combo in itertools.product(*table.choices.values())]
    lat = [FIXED + sum(ROWS[i][int(a[f"b{i}"][1:])] for i in range(3)) for a in archs]
    return archs, np.array(lat)


# ----- LatencyBudget ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "3"])
def test_budget_rejects_a_max_that_is_not_a_positive_number(bad):
    with pytest.raises(ValueError, match="max_ms"):
        LatencyBudget(bad)


@pytest.mark.parametrize("bad", [-0.5, 5.0, math.nan])
def test_budget_rejects_a_min_outside_zero_to_max(bad):
    with pytest.raises(ValueError, match="min_ms"):
        LatencyBudget(4.0, bad)


def test_budget_rejects_a_min_that_is_not_a_number():
    # Bug report for hwnas/nas/_budget.py (lead's file): max_ms is type-checked, min_ms is not, so a string
    # reaches math.isfinite and raises "TypeError: must be real number, not str", which does not name min_ms.
    with pytest.raises(ValueError, match="min_ms"):
        LatencyBudget(4.0, "1")


def test_budget_contains_scalars_and_arrays_inclusively():
    b = LatencyBudget(2.0, min_ms=1.0)
    assert b.contains(2.0) is True and b.contains(1.0) is True
    assert b.contains(2.0001) is False and b.contains(0.999) is False
    np.testing.assert_array_equal(b.contains(np.array([0.5, 1.5, 2.5])), [False, True, False])
    assert LatencyBudget(2.0).contains(0.0) is True
    assert str(b) == "1 ms <= latency <= 2 ms" and str(LatencyBudget(2.5)) == "latency <= 2.5 ms"


# ----- feasibility --------------------------------------------------------------------------------------------------
def test_check_feasible_is_exact_at_the_fastest_architecture(table):
    fastest = FIXED + 0.1 + 0.7 + 0.05
    BudgetedSampler(table, fastest + 1e-9).check_feasible()
    with pytest.raises(InfeasibleBudgetError, match=r"fastest architecture of the space takes 1\.85 ms") as err:
        BudgetedSampler(table, fastest - 1e-6).check_feasible()
    assert "tiny-predictor" in str(err.value)


def test_check_feasible_refuses_a_min_above_the_slowest(table):
    slowest = FIXED + 0.3 + 1.5 + 2.2
    with pytest.raises(InfeasibleBudgetError, match="slowest architecture"):
        BudgetedSampler(table, LatencyBudget(10.0, min_ms=slowest + 0.01)).check_feasible()
    BudgetedSampler(table, LatencyBudget(10.0, min_ms=slowest)).check_feasible()


def test_sampling_an_infeasible_budget_raises_before_drawing(table):
    with pytest.raises(InfeasibleBudgetError):
        BudgetedSampler(table, 0.5).sample(0)


# ----- per-architecture ---------------------------------------------------------------------------------------------
def test_accepts_and_describe_use_the_table(table, every_arch):
    archs, lat = every_arch
    sampler = BudgetedSampler(table, 2.5)
    assert [sampler.accepts(a) for a in archs] == list(lat <= 2.5)
    arch = {"b0": "c1", "b1": "c0", "b2": "c3"}
    d = sampler.describe(arch)
    assert d["latency_ms"] == pytest.approx(FIXED + 0.1 + 1.5 + 0.05)
    assert d["macs"] == 7 + 2000 + 1000 + 4000 and d["params"] == 3 + 20 + 10 + 40
    assert set(d) == {"latency_ms", "macs", "params"}


def test_accepts_names_a_bad_architecture(table):
    with pytest.raises(ArchitectureError, match="b9"):
        BudgetedSampler(table, 2.5).accepts({"b0": "c0", "b1": "c0", "b9": "c0"})


def test_a_float_budget_is_a_max(table):
    assert BudgetedSampler(table, 2.5).budget == LatencyBudget(2.5)


# ----- sampling -----------------------------------------------------------------------------------------------------
def test_samples_are_within_budget_valid_and_reproducible(table):
    sampler = BudgetedSampler(table, LatencyBudget(2.6, min_ms=2.0), batch=64)
    archs = sampler.sample_many(200, rng=3)
    assert len(archs) == 200
    lat = table.latency_batch(archs)
    assert np.all((lat >= 2.0) & (lat <= 2.6))
    assert all(set(a) == set(table.labels) and all(a[k] in table.choices[k] for k in a) for a in archs)
    assert archs == sampler.sample_many(200, rng=3)
    assert archs != sampler.sample_many(200, rng=4)
    assert sampler.sample(np.random.default_rng(3)) == archs[0]


def test_samples_are_uniform_over_the_accepted_architectures(table, every_arch):
    archs, lat = every_arch
    accepted = {tuple(sorted(a.items())) for a, ms in zip(archs, lat) if ms <= 2.6}
    n = 6000
    counts = Counter(tuple(sorted(a.items())) for a in BudgetedSampler(table, 2.6).sample_many(n, rng=0))
    assert set(counts) == accepted                     # every accepted one appears, nothing else
    expected = n / len(accepted)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 40, (chi2, len(accepted))            # df = len(accepted) - 1 (about 10): p << 1e-4 at 40


def test_acceptance_rate_estimates_the_exact_share(table, every_arch):
    _, lat = every_arch
    exact = float(np.mean(lat <= 2.6))
    assert BudgetedSampler(table, 2.6).acceptance_rate(n=50_000, rng=1) == pytest.approx(exact, abs=0.01)
    assert BudgetedSampler(table, 100.0).acceptance_rate(n=1000) == 1.0


def test_a_feasible_but_too_tight_budget_gives_up_after_max_draws():
    # 8 labels x 8 choices; only the all-fastest architecture (1 in 16.7 million) is within the budget
    rows = [[0.1] + [1.0] * 7 for _ in range(8)]
    tight = _table(rows, fixed=0.0)
    sampler = BudgetedSampler(tight, 0.8 + 1e-9, batch=1000, max_draws=5000)
    sampler.check_feasible()
    with pytest.raises(InfeasibleBudgetError, match="too few architectures"):
        sampler.sample(0)


def test_sample_many_of_zero_is_empty(table):
    # Bug report for hwnas/nas/_budget.py (lead's file): with n=0 the loop never runs and
    # np.concatenate([]) raises "need at least one array to concatenate".
    assert BudgetedSampler(table, 2.6).sample_many(0, rng=0) == []


def test_from_table_is_the_quantile_of_a_fixed_uniform_draw():
    table = _table()
    every = np.array([table.latency(dict(zip([f"b{i}" for i in range(3)], [f"c{j}" for j in combo])))
                      for combo in itertools.product(*(range(len(r)) for r in ROWS))])
    budget = LatencyBudget.from_table(table, 0.5)
    assert budget == LatencyBudget.from_table(table, 0.5)   # no seed: one draw, one budget
    assert every.min() <= budget.max_ms <= every.max()
    assert abs(np.mean(every <= budget.max_ms) - 0.5) < 0.1
    assert LatencyBudget.from_table(table, 1.0).max_ms == pytest.approx(every.max())
    assert LatencyBudget.from_table(table, 0.5, min_ms=0.1).min_ms == 0.1
    with pytest.raises(ValueError, match="quantile"):
        LatencyBudget.from_table(table, 0.0)


def test_from_range_is_the_fastest_plus_a_fraction_of_the_range():
    table = _table()
    lo, hi = table.min_latency(), table.max_latency()
    assert LatencyBudget.from_range(table, 0.35).max_ms == lo + 0.35 * (hi - lo)   # the one-shot drivers' formula
    assert LatencyBudget.from_range(table, 0.0).max_ms == lo and LatencyBudget.from_range(table, 1.0).max_ms == hi
    assert LatencyBudget.from_range(table, 0.3, min_ms=0.1).min_ms == 0.1
    with pytest.raises(ValueError, match="fraction"):
        LatencyBudget.from_range(table, 1.5)
