"""Evolutionary search under a latency budget: budget respected, improvement, determinism, errors."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest

from hwnas.errors import ArchitectureError, InfeasibleBudgetError
from hwnas.nas import BudgetedSampler, LatencyBudget
from hwnas.oneshot._evolution import Candidate, EvolutionConfig, evolve, pareto_front
from hwnas.tables import SCHEMA, SCHEMA_VERSION, LatencyTable

LABELS = [f"l{i}" for i in range(8)]
CHOICES = ["a", "b", "c", "d"]
# Choice "d" is the slowest and "a" the fastest at every position; latency of an arch = 1 + sum of its rows.
ROW = {"a": 0.10, "b": 0.20, "c": 0.30, "d": 0.45}


def synthetic_table() -> LatencyTable:
    blocks = [{"label": label, "choices": CHOICES, "latency_ms": [ROW[c] * (1 + 0.1 * i) for c in CHOICES],
               "flops": [100 * (k + 1) for k in range(4)], "params": [10 * (k + 1) for k in range(4)]}
              for i, label in enumerate(LABELS)]
    return LatencyTable({
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "units": {"latency": "ms", "flops": "multiply-accumulates per image", "params": "count"},
        "space": {"name": "synthetic", "config": {}}, "input_shape": [1, 3, 8, 8],
        "predictor": {"name": "synthetic", "checksum": "0"},
        "fixed": {"latency_ms": 1.0, "overhead_ms": 0.0, "flops": 0, "params": 0, "slots": 2},
        "blocks": blocks})


TABLE = synthetic_table()
CHOICE_TABLE = {label: list(CHOICES) for label in LABELS}


def all_latencies() -> np.ndarray:
    idx = np.array(list(itertools.product(range(4), repeat=len(LABELS))))
    return TABLE.latency_batch(idx)


def score(arch) -> float:
    """Synthetic accuracy: prefers slow choices ("d" best), so the budget binds."""
    return sum(CHOICES.index(arch[label]) for label in LABELS) / (3 * len(LABELS))


SMALL = EvolutionConfig(population=12, generations=6, parents=4, mutation_prob=0.2, n_mutation=5, n_crossover=5,
                        seed=3)


def test_every_evaluated_candidate_is_within_budget():
    lats = all_latencies()
    budget = LatencyBudget(float(np.quantile(lats, 0.3)))
    sampler = BudgetedSampler(TABLE, budget)
    evaluated = []

    def fitness(arch):
        evaluated.append(dict(arch))
        return score(arch)

    result = evolve(CHOICE_TABLE, fitness, sampler, SMALL, progress=False)
    assert len(evaluated) == len(result.history) > SMALL.population  # later generations were evaluated too
    assert all(TABLE.latency(a) <= budget.max_ms for a in evaluated)
    assert len({tuple(a.values()) for a in evaluated}) == len(evaluated)  # no architecture evaluated twice
    assert all(c.latency_ms <= budget.max_ms for c in result.history)
    assert {c.generation for c in result.history} == set(range(SMALL.generations))


def test_min_budget_is_respected_too():
    lats = all_latencies()
    budget = LatencyBudget(float(np.quantile(lats, 0.6)), min_ms=float(np.quantile(lats, 0.4)))
    result = evolve(CHOICE_TABLE, score, BudgetedSampler(TABLE, budget), SMALL, progress=False)
    assert all(budget.min_ms <= c.latency_ms <= budget.max_ms for c in result.history)


def test_evolution_improves_on_random_search():
    lats = all_latencies()
    budget = LatencyBudget(float(np.quantile(lats, 0.5)))
    sampler = BudgetedSampler(TABLE, budget)
    cfg = EvolutionConfig(population=20, generations=8, parents=5, mutation_prob=0.2, n_mutation=8, n_crossover=8,
                          seed=0)
    result = evolve(CHOICE_TABLE, score, sampler, cfg, progress=False)
    first = max(c.accuracy for c in result.history if c.generation == 0)
    assert result.best.accuracy > first
    # As good as the best of the same number of uniform samples within the budget, or better.
    random_best = max(score(a) for a in sampler.sample_many(len(result.history), np.random.default_rng(1)))
    assert result.best.accuracy >= random_best
    # The exact optimum within the budget, for reference: evolution gets close to it.
    idx = np.array(list(itertools.product(range(4), repeat=len(LABELS))))
    feasible = idx[lats <= budget.max_ms]
    optimum = feasible.sum(1).max() / (3 * len(LABELS))
    assert result.best.accuracy >= optimum - 2 / 24


def test_same_seed_same_search_other_seed_other_search():
    budget = LatencyBudget(float(np.quantile(all_latencies(), 0.5)))
    run = [evolve(CHOICE_TABLE, score, BudgetedSampler(TABLE, budget), SMALL, progress=False) for _ in range(2)]
    assert [c.arch for c in run[0].history] == [c.arch for c in run[1].history]
    other = evolve(CHOICE_TABLE, score, BudgetedSampler(TABLE, budget),
                   EvolutionConfig(**{**SMALL.__dict__, "seed": 4}), progress=False)
    assert [c.arch for c in other.history] != [c.arch for c in run[0].history]


def test_infeasible_budget_raises_before_any_evaluation():
    calls = []
    too_tight = LatencyBudget(TABLE.min_latency() * 0.99)
    with pytest.raises(InfeasibleBudgetError, match="fastest architecture"):
        evolve(CHOICE_TABLE, lambda a: calls.append(a) or 0.0, BudgetedSampler(TABLE, too_tight), SMALL,
               progress=False)
    assert calls == []


def test_labels_must_match_the_table():
    other = {f"x{i}": CHOICES for i in range(len(LABELS))}
    with pytest.raises(ArchitectureError, match="differ"):
        evolve(other, score, BudgetedSampler(TABLE, LatencyBudget(10.0)), SMALL, progress=False)


def test_non_finite_fitness_is_rejected():
    with pytest.raises(ValueError, match="not a finite number"):
        evolve(CHOICE_TABLE, lambda a: float("nan"), BudgetedSampler(TABLE, LatencyBudget(10.0)), SMALL,
               progress=False)


def test_pareto_front_and_outputs(tmp_path):
    budget = LatencyBudget(float(np.quantile(all_latencies(), 0.5)))
    result = evolve(CHOICE_TABLE, score, BudgetedSampler(TABLE, budget), SMALL, progress=False)
    front = result.pareto
    lat = [c.latency_ms for c in front]
    acc = [c.accuracy for c in front]
    assert lat == sorted(lat) and acc == sorted(acc) and len(set(acc)) == len(acc)
    for c in result.history:  # nothing in the history dominates a front member
        for f in front:
            assert not (c.accuracy > f.accuracy and c.latency_ms <= f.latency_ms)
    assert front[-1].accuracy == result.best.accuracy
    result.write_csv(tmp_path / "pareto.csv")
    rows = list(csv.DictReader(open(tmp_path / "pareto.csv", encoding="utf-8")))
    assert len(rows) == len(front) and json.loads(rows[0]["arch"]) == front[0].arch
    assert json.loads(json.dumps(result.to_dict()))["best"]["arch"] == result.best.arch


def test_pareto_front_small_case():
    def cand(acc, lat):
        return Candidate({}, acc, lat, 0, 0, 0)

    front = pareto_front([cand(0.5, 1.0), cand(0.4, 2.0), cand(0.7, 3.0), cand(0.7, 4.0), cand(0.6, 0.5)])
    assert [(c.accuracy, c.latency_ms) for c in front] == [(0.6, 0.5), (0.7, 3.0)]


def test_config_validation():
    with pytest.raises(ValueError, match="exceeds the population"):
        EvolutionConfig(population=10, n_mutation=6, n_crossover=6)
    with pytest.raises(ValueError, match="mutation_prob"):
        EvolutionConfig(mutation_prob=0.0)


def test_candidates_call_their_multiply_accumulates_macs():
    c = Candidate({"s1_b0": "shuffle3"}, 0.5, 1.0, 7, 3, 0)
    assert c.macs == 7 and c.flops == 7 and c.to_dict()["macs"] == 7 and "flops" not in c.to_dict()
