"""Evolutionary architecture search under a latency budget (the search of SPOS, Guo et al. 2020, Sec. 3.3).

The algorithm of the SPOS paper and its reference code (``megvii-model/SinglePathOneShot``, ``search.py``):

1. Generation 0: ``population`` architectures drawn uniformly among those within the budget.
2. Every architecture not evaluated before is scored with ``fitness`` (in SPOS: the supernet's validation
   accuracy of the architecture with inherited weights, after BatchNorm recalibration).
3. The ``parents`` best architectures evaluated so far (all generations) are the parents of the next
   generation: ``n_mutation`` mutants (a random parent, every label replaced by a uniformly random choice
   with probability ``mutation_prob``), ``n_crossover`` children (two random parents, every label taken from
   either with probability 1/2), then uniform architectures within the budget up to ``population``.
4. Steps 2-3 repeat until ``generations`` generations have been evaluated.

Constraint handling as in the reference code: a mutant or child outside the budget, or already evaluated or
already in the new generation, is discarded and drawn again, at most ``10 x`` the wanted number of times
(never an unbounded loop); the budget is checked exactly with the space's latency table, so every evaluated
architecture is within it. An infeasible budget raises :class:`~hwnas.errors.InfeasibleBudgetError` before
anything is evaluated.

The result keeps every evaluation (architecture, accuracy, predicted latency in ms, FLOPs as MACs,
parameters, generation), the best architecture, and the Pareto front of accuracy (higher is better) against
predicted latency (lower is better).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from hwnas.errors import ArchitectureError

__all__ = ["Candidate", "EvolutionConfig", "EvolutionResult", "evolve", "pareto_front"]

Arch = dict[str, str]


@dataclass
class EvolutionConfig:
    """Sizes of the evolutionary search (defaults: the SPOS paper's).

    Attributes
    ----------
    population : int
        Architectures per generation.
    generations : int
        Generations evaluated (the first is random).
    parents : int
        The top-k architectures (over all generations) that mutation and crossover draw from.
    mutation_prob : float
        Probability that a mutation replaces the choice of a label.
    n_mutation, n_crossover : int
        Mutants and crossover children per generation (the rest of the population is random).
    seed : int
        Seed of the search's random numbers.
    """

    population: int = 50
    generations: int = 20
    parents: int = 10
    mutation_prob: float = 0.1
    n_mutation: int = 25
    n_crossover: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("population", "generations", "parents"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"EvolutionConfig.{name} must be a positive int, got {value!r}")
        for name in ("n_mutation", "n_crossover"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"EvolutionConfig.{name} must be a non-negative int, got {value!r}")
        if self.n_mutation + self.n_crossover > self.population:
            raise ValueError(f"n_mutation + n_crossover ({self.n_mutation} + {self.n_crossover}) exceeds "
                             f"the population ({self.population})")
        if not (isinstance(self.mutation_prob, (int, float)) and 0.0 < self.mutation_prob <= 1.0):
            raise ValueError(f"mutation_prob must be in (0, 1], got {self.mutation_prob!r}")


@dataclass
class Candidate:
    """One evaluated architecture.

    Attributes
    ----------
    arch : dict of str to str
        The architecture.
    accuracy : float
        Its fitness (top-1 accuracy in [0, 1] in SPOS).
    latency_ms : float
        Predicted latency, ms.
    macs : int
        Multiply-accumulates per image (``flops`` is a read-only alias, kept for one release).
    params : int
        Parameters.
    generation : int
        Generation it was first evaluated in (0: the random start).
    """

    arch: Arch
    accuracy: float
    latency_ms: float
    macs: int
    params: int
    generation: int

    @property
    def flops(self) -> int:
        """Deprecated name of :attr:`macs` (it always held multiply-accumulates)."""
        return self.macs

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return asdict(self)


@dataclass
class EvolutionResult:
    """Outcome of :func:`evolve`.

    Attributes
    ----------
    history : list of Candidate
        Every evaluation, in order.
    best : Candidate
        The most accurate (ties: the faster, then the earlier).
    pareto : list of Candidate
        Non-dominated candidates (accuracy up, latency down), by increasing latency.
    budget : dict
        ``{"max_ms": float, "min_ms": float or None}``.
    config : EvolutionConfig
        The configuration used.
    """

    history: list[Candidate]
    best: Candidate
    pareto: list[Candidate]
    budget: dict[str, Any]
    config: EvolutionConfig = field(default_factory=EvolutionConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (history, best, pareto, budget, config)."""
        return {"budget": dict(self.budget), "config": asdict(self.config), "best": self.best.to_dict(),
                "pareto": [c.to_dict() for c in self.pareto], "history": [c.to_dict() for c in self.history]}

    def write_csv(self, path: str | os.PathLike, which: str = "pareto") -> None:
        """Write ``pareto`` or ``history`` as CSV: accuracy, latency_ms, macs, params, generation, arch (JSON)."""
        rows = {"pareto": self.pareto, "history": self.history}.get(which)
        if rows is None:
            raise ValueError(f"which must be 'pareto' or 'history', got {which!r}")
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["accuracy", "latency_ms", "macs", "params", "generation", "arch"])
            for c in rows:
                writer.writerow([f"{c.accuracy:.6f}", f"{c.latency_ms:.6f}", c.macs, c.params, c.generation,
                                 json.dumps(c.arch, sort_keys=False)])


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both accuracy (higher) and latency (lower), by increasing latency."""
    ordered = sorted(candidates, key=lambda c: (c.latency_ms, -c.accuracy))
    front: list[Candidate] = []
    best_acc = -math.inf
    for c in ordered:
        if c.accuracy > best_acc:
            front.append(c)
            best_acc = c.accuracy
    return front


def _choice_table(space_or_choices: Any) -> dict[str, list[str]]:
    if isinstance(space_or_choices, Mapping):
        return {str(k): list(v) for k, v in space_or_choices.items()}
    import search_spaces as ss

    return ss.choices(space_or_choices)


def _key(arch: Mapping[str, str], labels: list[str]) -> tuple[str, ...]:
    return tuple(arch[label] for label in labels)


def evolve(space_or_choices: Any, fitness: Callable[[Arch], float], sampler: Any,
           cfg: EvolutionConfig | None = None, progress: bool = True) -> EvolutionResult:
    """Evolutionary search of the SPOS paper, restricted to architectures within ``sampler``'s budget.

    Parameters
    ----------
    space_or_choices : ChainSpace, str or dict of str to list of str
        The search space (instance or registered name) or its label -> choices table.
    fitness : callable
        ``fitness(arch) -> float``, higher is better (e.g. validation accuracy after BN recalibration).
        Called once per distinct architecture.
    sampler : hwnas.nas.BudgetedSampler
        The latency table and budget: every evaluated architecture is within the budget.
    cfg : EvolutionConfig, optional
        Sizes and seed (the paper's defaults when not given).
    progress : bool
        Show a progress bar over the evaluations.

    Returns
    -------
    EvolutionResult

    Raises
    ------
    InfeasibleBudgetError
        No architecture meets the budget (raised before any evaluation), or it is too tight to sample.
    ArchitectureError
        The space's labels or choices differ from the latency table's.
    ValueError
        ``fitness`` returned a value that is not a finite number.
    """
    cfg = cfg or EvolutionConfig()
    table = _choice_table(space_or_choices)
    labels = list(table)
    if labels != list(sampler.table.labels) or any(list(sampler.table.choices[k]) != table[k] for k in labels):
        raise ArchitectureError("the search space's labels/choices differ from those of the sampler's latency "
                                f"table: {labels[:3]}... vs {list(sampler.table.labels)[:3]}...")
    sampler.check_feasible()
    rng = np.random.default_rng(cfg.seed)
    history: list[Candidate] = []
    seen: set[tuple[str, ...]] = set()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.population * cfg.generations, desc="evolution", unit="arch", leave=False)

    def evaluate(archs: list[Arch], generation: int) -> None:
        for arch in archs:
            key = _key(arch, labels)
            if key in seen:
                continue
            value = fitness(dict(arch))
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"fitness returned {value!r}, not a number") from None
            if not math.isfinite(value):
                raise ValueError(f"fitness returned {value!r} for {arch}: not a finite number")
            info = sampler.describe(arch)
            history.append(Candidate(dict(arch), value, float(info["latency_ms"]), int(info["macs"]),
                                     int(info["params"]), generation))
            seen.add(key)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(gen=generation, best=f"{max(c.accuracy for c in history):.4f}")

    def fresh(arch: Arch, taken: set[tuple[str, ...]]) -> bool:
        key = _key(arch, labels)
        return key not in seen and key not in taken and sampler.accepts(arch)

    def random_fill(want: int, taken: set[tuple[str, ...]]) -> list[Arch]:
        out: list[Arch] = []
        for _ in range(10):
            if len(out) >= want:
                break
            for arch in sampler.sample_many(2 * (want - len(out)) + 4, rng):
                key = _key(arch, labels)
                if len(out) < want and key not in seen and key not in taken:
                    out.append(arch)
                    taken.add(key)
        return out

    try:
        taken: set[tuple[str, ...]] = set()
        evaluate(random_fill(cfg.population, taken), 0)
        for generation in range(1, cfg.generations):
            parents = sorted(history, key=lambda c: (-c.accuracy, c.latency_ms))[:cfg.parents]
            taken = set()
            new: list[Arch] = []
            for _ in range(10 * cfg.n_mutation):
                if len(new) >= cfg.n_mutation:
                    break
                parent = parents[int(rng.integers(len(parents)))].arch
                child = {label: (table[label][int(rng.integers(len(table[label])))]
                                 if rng.random() < cfg.mutation_prob else parent[label]) for label in labels}
                if fresh(child, taken):
                    new.append(child)
                    taken.add(_key(child, labels))
            n_mut = len(new)
            for _ in range(10 * cfg.n_crossover):
                if len(new) - n_mut >= cfg.n_crossover:
                    break
                a = parents[int(rng.integers(len(parents)))].arch
                b = parents[int(rng.integers(len(parents)))].arch
                child = {label: (a[label] if rng.random() < 0.5 else b[label]) for label in labels}
                if fresh(child, taken):
                    new.append(child)
                    taken.add(_key(child, labels))
            new.extend(random_fill(cfg.population - len(new), taken))
            evaluate(new, generation)
    finally:
        if bar is not None:
            bar.close()
    best = sorted(history, key=lambda c: (-c.accuracy, c.latency_ms))[0]
    budget = {"max_ms": float(sampler.budget.max_ms),
              "min_ms": None if sampler.budget.min_ms is None else float(sampler.budget.min_ms)}
    return EvolutionResult(history, best, pareto_front(history), budget, cfg)
