"""Random multi-trial search without the NNI manager: sample within the budget, train, evaluate, resume.

:func:`run_random_search` runs ``cfg.trials`` trials. Trial ``i`` draws its architecture uniformly among those
within the latency budget from a generator seeded by ``(seed, i)`` (redrawing an architecture an earlier trial
already has), builds it freshly initialised (init seeded by ``(seed, i)``), trains it for ``train.epochs`` epochs
with :func:`hwnas.train.train_model` and evaluates it on the validation split. Over-budget architectures are
rejected by the latency table before any training is spent on them; an infeasible budget stops the search before
anything trains.

Files in ``out_dir``:

- ``config.json``: the search's configuration (what must not change for a resume), written when the first trial
  starts;
- ``trials.jsonl``: one JSON line per finished trial, ``{"trial", "arch", "default" (accuracy), "latency_ms",
  "macs", "params", "train_loss", "steps", "seconds"}``, appended and flushed as each trial ends;
- ``trials/<i>.pt``: the trial's trained state dict (only the current top-k are kept unless
  ``keep_weights="all"``), written before its line so a listed trial always has its weights;
- ``latency_table.json``: the space's latency table (built once, reused by a resumed run);
- the report of :func:`hwnas.nas._report.finish_search` (``topk.json``, ``search.png``, ``best/``).

A trial whose training diverges (:class:`FloatingPointError`) is recorded with ``"default": null`` and its
``"error"``, never ranked, and the search goes on.

Resuming: running again with the same configuration skips the trials listed in ``trials.jsonl`` and runs the
rest; ``trials`` may grow. A line torn by a kill (the last one) is dropped; any other unreadable line, or a
different configuration once a trial has finished, is an error unless ``fresh=True`` (which discards the previous
results). A folder where no trial finished (a run that failed on its data, its budget, or was stopped in its first
trial) is not locked: another configuration takes it over. The data is read before the space is priced, so a
wrong data path fails in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from hwnas.data import DataConfig
from hwnas.errors import HwnasError, InfeasibleBudgetError, StoreError
from hwnas.files import append_jsonl, atomic_write, read_jsonl
from hwnas.nas._budget import DEFAULT_QUANTILE, BudgetedSampler, LatencyBudget
from hwnas.nas._prepare import TABLE_FILE, prepare_search  # TABLE_FILE: where a search keeps its table
from hwnas.train import TrainConfig

__all__ = ["RandomSearchConfig", "SearchResult", "read_trials", "run_random_search", "trial_archs"]

CONFIG_FILE, TRIALS_FILE, WEIGHTS_DIR = "config.json", "trials.jsonl", "trials"
_MAX_REDRAWS = 1000
# Fields that do not change what a trial computes: they may differ between a run and its resume.
_RUN_ONLY = {"out_dir", "trials", "top_k", "keep_weights", "export", "measure"}
_RUN_ONLY_TRAIN = {"device", "seed"}   # train.seed is replaced per trial
_RUN_ONLY_DATA = {"num_workers"}


@dataclass
class RandomSearchConfig:
    """A random multi-trial search.

    Attributes
    ----------
    out_dir : str
        Results folder (created; a run resumes from it).
    space : str
        Registered search space (``"proxyless"`` or ``"spos"``).
    space_config : dict
        Fields of the space's config. ``input_size`` and ``num_classes`` default to the data's image size and
        classes and must agree with them when given.
    predictor : str
        Latency predictor (embedded name or directory) defining the latencies, ms.
    budget : LatencyBudget, optional
        The latency budget. ``None``: :meth:`LatencyBudget.from_table` with ``budget_quantile`` (the quantile of
        the latency of uniformly drawn architectures, the same rule as the NNI search), so about that share of
        the space passes.
    budget_quantile : float
        See ``budget``; in (0, 1].
    trials : int
        Architectures trained in all (a resumed run counts the finished ones).
    data : DataConfig
        Training and validation data (digits by default).
    train : TrainConfig
        How each architecture is trained (its ``seed`` is replaced per trial).
    seed : int
        Seeds the architecture sequence, the weight initialisations and the training of every trial.
    top_k : int
        Rows of the final table.
    keep_weights : {"topk", "all"}
        Keep the state dicts of the current top-k trials only (default), or of every trial.
    export : bool
        Export the best network to TorchScript at the end (when :mod:`hwnas.export` is available).
    measure : bool
        Let the export measure the exported file on this machine.
    """

    out_dir: str = "runs/random_search"
    space: str = "proxyless"
    space_config: dict[str, Any] = field(default_factory=lambda: {"width_mult": 0.35})
    predictor: str = "auto"
    budget: LatencyBudget | None = None
    budget_quantile: float = DEFAULT_QUANTILE
    trials: int = 8
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    top_k: int = 5
    keep_weights: str = "topk"
    export: bool = True
    measure: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.budget, (int, float)) and not isinstance(self.budget, bool):
            self.budget = LatencyBudget(float(self.budget))
        if self.budget is not None and not isinstance(self.budget, LatencyBudget):
            raise TypeError(f"budget must be a LatencyBudget, a number of ms or None, got {type(self.budget).__name__}")
        if not 0.0 < float(self.budget_quantile) <= 1.0:
            raise ValueError(f"budget_quantile must be in (0, 1], got {self.budget_quantile}")
        if int(self.trials) < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")
        if int(self.top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.keep_weights not in ("topk", "all"):
            raise ValueError(f"keep_weights must be 'topk' or 'all', got {self.keep_weights!r}")
        sc = dict(self.space_config or {})
        for key, want in (("input_size", int(self.data.image_size)), ("num_classes", None)):
            if key == "num_classes":
                want = self.data.num_classes
            if key in sc and int(sc[key]) != want:
                what = "image_size" if key == "input_size" else "number of classes"
                raise ValueError(f"space_config {key}={sc[key]} disagrees with the data's {what} {want} "
                                 f"(dataset {self.data.name!r}); leave it out to follow the data")
            sc[key] = want
        self.space_config = sc

    def identity(self) -> dict[str, Any]:
        """The JSON-safe part of the configuration that a resumed run must share (see ``config.json``)."""
        doc = _jsonable(dataclasses.asdict(self))
        for key in _RUN_ONLY:
            doc.pop(key, None)
        for key in _RUN_ONLY_TRAIN:
            doc["train"].pop(key, None)
        for key in _RUN_ONLY_DATA:
            doc["data"].pop(key, None)
        return doc


@dataclass
class SearchResult:
    """What :func:`run_random_search` did.

    Attributes
    ----------
    records : list of dict
        Every finished trial (``trials.jsonl``), in trial order.
    budget : LatencyBudget
        The budget used (resolved from the quantile when the config gave none), ms.
    latency_range : (float, float)
        Fastest and slowest architecture of the space, predicted ms.
    acceptance_rate : float
        Share of uniformly drawn architectures within the budget.
    resumed : int
        Trials found finished in ``out_dir`` and not rerun.
    ran : list of int
        Ids of the trials trained by this call.
    seconds : float
        Wall time of this call, s.
    report : SearchReport
        The final report (top-k table, files, best network).
    out_dir : Path
    """

    records: list[dict[str, Any]]
    budget: LatencyBudget
    latency_range: tuple[float, float]
    acceptance_rate: float
    resumed: int
    ran: list[int]
    seconds: float
    report: Any
    out_dir: Path

    @property
    def best(self) -> dict[str, Any] | None:
        return self.report.best if self.report is not None else None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


def _seed_of(seed: int, i: int, stream: int) -> int:
    """A 32-bit seed for trial ``i`` of a search seeded ``seed``; ``stream`` separates the uses."""
    return int(np.random.SeedSequence([int(seed), int(i), int(stream)]).generate_state(1)[0])


# -- architectures ------------------------------------------------------------------------------------------------
def trial_archs(sampler: BudgetedSampler, n: int, seed: int) -> list[dict[str, str]]:
    """The architectures of trials ``0..n-1``: trial ``i`` draws from a generator seeded by ``(seed, i)``.

    A draw equal to an earlier trial's architecture is redrawn from the same generator, so the sequence has no
    duplicates and its first ``m`` entries do not depend on ``n`` (a grown or resumed search continues it).

    Raises
    ------
    InfeasibleBudgetError
        No architecture meets the budget, or fewer than ``n`` distinct ones were found.
    """
    sampler.check_feasible()
    seen: set[tuple[tuple[str, str], ...]] = set()
    archs = []
    for i in range(int(n)):
        rng = np.random.default_rng([int(seed), i])
        for _ in range(_MAX_REDRAWS):
            arch = sampler.sample(rng)
            key = tuple(sorted(arch.items()))
            if key not in seen:
                break
        else:
            raise InfeasibleBudgetError(
                f"trial {i}: {_MAX_REDRAWS} draws within the budget {sampler.budget} all repeat earlier trials; "
                f"the budget admits fewer than {n} distinct architectures: loosen it or run fewer trials")
        seen.add(key)
        archs.append(arch)
    return archs


# -- files --------------------------------------------------------------------------------------------------------
def read_trials(path: str | os.PathLike, *, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a ``trials.jsonl``, in file order.

    Read with :func:`hwnas.files.read_jsonl`: a last line without its newline (a write torn by a kill) is dropped
    with a warning, and with ``repair`` cut from the file so that later appends start on a clean line.

    Raises
    ------
    StoreError
        Any other line is unreadable or is not a trial record (the message names the file and the line; remove
        that line or start afresh with ``--force``).
    """
    return read_jsonl(path, valid=_is_trial, repair=repair, what="a trial record")


def _is_trial(rec: Any) -> bool:
    return isinstance(rec, dict) and isinstance(rec.get("trial"), int) and "arch" in rec


def _append_record(path: Path, rec: Mapping[str, Any]) -> None:
    append_jsonl(path, _jsonable(rec), fsync=True)


def _save_state(state: Mapping[str, Any], path: Path) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(dict(state), f))


def _prune_weights(weights_dir: Path, records: list[dict[str, Any]], budget: LatencyBudget, top_k: int) -> None:
    from hwnas.nas._report import rank_records

    keep = {r["trial"] for r in rank_records(records, budget, top_k)}
    for rec in records:
        if rec["trial"] not in keep:
            (weights_dir / f"{rec['trial']}.pt").unlink(missing_ok=True)


def _prepare_out_dir(out: Path, identity: dict[str, Any], fresh: bool, say: Callable[[str], None]) -> None:
    """Check that ``out`` may hold this search. A folder is only claimed by the configuration of its finished trials:
    ``config.json`` is written when the first trial starts (:func:`_write_config`), and a folder whose
    ``config.json`` has no finished trial behind it (a run that failed or was stopped before any trial ended) is
    taken over by the new configuration, with a note."""
    cfg_file = out / CONFIG_FILE
    if fresh:
        for name in (CONFIG_FILE, TRIALS_FILE, "topk.json", "search.png"):
            (out / name).unlink(missing_ok=True)
        for name in (WEIGHTS_DIR, "best"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    if cfg_file.is_file():
        try:
            old = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise StoreError(f"{cfg_file} is unreadable ({err}); start afresh with --force") from None
        if old != identity:
            diff = _diff(old, identity)
            if read_trials(out / TRIALS_FILE):
                raise StoreError(f"{out} holds a search with another configuration ({diff}); resume with the same "
                                 "configuration, pick another out_dir, or discard the old results with --force")
            say(f"note: {out} holds no finished trial of its earlier configuration ({diff}): starting this one there")
            cfg_file.unlink()
    elif (out / TRIALS_FILE).is_file() and read_trials(out / TRIALS_FILE):
        raise StoreError(f"{out / TRIALS_FILE} has trials but {cfg_file} is missing: cannot tell whether they belong "
                         "to this configuration; pick another out_dir or discard them with --force")


def _write_config(out: Path, identity: dict[str, Any]) -> None:
    cfg_file = out / CONFIG_FILE
    if not cfg_file.is_file():
        atomic_write(cfg_file, json.dumps(identity, indent=2) + "\n")


def _diff(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        parts = [_diff(old.get(k), new.get(k), f"{prefix}{k}.") for k in sorted(set(old) | set(new))
                 if old.get(k) != new.get(k)]
        return "; ".join(p for p in parts if p)
    return f"{prefix.rstrip('.')}: was {old!r}, now {new!r}"


# -- the search ---------------------------------------------------------------------------------------------------
def run_random_search(cfg: RandomSearchConfig, *, progress: bool = True, fresh: bool = False,
                      train_fn: Callable[..., Any] | None = None, log: Callable[[str], None] | None = print,
                      ) -> SearchResult:
    """Run (or resume) the random multi-trial search of ``cfg`` and write its report.

    Parameters
    ----------
    cfg : RandomSearchConfig
    progress : bool
        tqdm bars over the trials and each trial's training steps.
    fresh : bool
        Discard the results already in ``cfg.out_dir`` instead of resuming.
    train_fn : callable, optional
        Replaces :func:`hwnas.train.train_model` (same signature and result); for tests.
    log : callable or None
        Receives the progress lines and the final report (``print``; ``None``: silent).

    Returns
    -------
    SearchResult

    Raises
    ------
    InfeasibleBudgetError
        No architecture of the space meets the budget, or fewer than ``trials`` distinct ones do (raised before
        any training; only the latency table is written to ``out_dir`` by then).
    DataError
        The data cannot be read (raised first, before the space is priced).
    StoreError
        ``out_dir`` holds finished trials of another configuration, or a corrupt ``trials.jsonl``.
    """
    import torch

    import search_spaces as ss
    from hwnas.nas._report import finish_search
    from hwnas.train import train_model

    start = time.perf_counter()
    say = log or (lambda _msg: None)
    train_fn = train_fn or train_model
    out = Path(cfg.out_dir)
    # Cheap checks first: the data is read (a wrong path fails here, in seconds) before the space is priced.
    train_ds, val_ds = cfg.data.dataset("train"), cfg.data.dataset("val")
    setup = prepare_search(cfg.space, cfg.space_config, cfg.predictor, out, budget=cfg.budget,
                           quantile=cfg.budget_quantile)
    predictor, budget, sampler = setup.predictor, setup.budget, setup.sampler
    (lo, hi), rate = setup.latency_range, setup.acceptance_rate
    archs = trial_archs(sampler, cfg.trials, cfg.seed)   # before anything trains: fails here if too few fit

    identity = cfg.identity()
    identity["predictor_checksum"] = predictor.checksum
    identity["resolved_budget"] = {"max_ms": budget.max_ms, "min_ms": budget.min_ms}
    _prepare_out_dir(out, identity, fresh, say)
    trials_file, weights_dir = out / TRIALS_FILE, out / WEIGHTS_DIR
    records = read_trials(trials_file, repair=True)
    done = {r["trial"]: r for r in records}
    for i, rec in done.items():
        if i < len(archs) and rec["arch"] != archs[i]:
            raise StoreError(f"{trials_file}: trial {i} has architecture {rec['arch']}, but this configuration "
                             f"draws {archs[i]}; the file belongs to another search (use --force to discard it)")
    todo = [i for i in range(cfg.trials) if i not in done]
    say(setup.describe(cfg.space, cfg.space_config))
    say(f"{len(done)} trial(s) already finished in {out}, {len(todo)} to run "
        f"({cfg.train.epochs} epoch(s) each on {cfg.data.name})")

    resumed = len(done)
    if todo:
        _write_config(out, identity)   # from the first trial on, the folder belongs to this configuration
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.trials, initial=cfg.trials - len(todo), desc="trials", unit="trial")
        try:
            for i in todo:
                arch = archs[i]
                described = sampler.describe(arch)
                if not budget.contains(described["latency_ms"]):   # by construction; a guard against edits
                    raise HwnasError(f"trial {i}: sampled {described['latency_ms']:.3f} ms over the budget {budget}")
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(_seed_of(cfg.seed, i, 1))
                    net = ss.build_subnet(cfg.space, arch, config=cfg.space_config)
                    tcfg = dataclasses.replace(cfg.train, seed=_seed_of(cfg.seed, i, 2))
                    t0 = time.perf_counter()
                    try:
                        result = train_fn(net, train_ds, val_ds, tcfg, progress=progress)
                    except FloatingPointError as err:   # a diverged trial is recorded, not fatal to the search
                        result = None
                        failure = str(err)
                if result is not None:
                    rec = {"trial": i, "arch": arch, "default": float(result.accuracy), **described,
                           "train_loss": float(result.train_loss), "steps": int(result.steps),
                           "seconds": float(result.seconds)}
                    _save_state({k: v.detach().cpu() for k, v in net.state_dict().items()}, weights_dir / f"{i}.pt")
                else:
                    rec = {"trial": i, "arch": arch, "default": None, **described, "train_loss": None, "steps": None,
                           "seconds": time.perf_counter() - t0, "error": failure}
                _append_record(trials_file, rec)
                records.append(rec)
                if cfg.keep_weights == "topk":
                    _prune_weights(weights_dir, records, budget, cfg.top_k)
                acc = "failed (" + rec["error"] + ")" if rec["default"] is None else f"{rec['default']:.4f}"
                msg = (f"trial {i}: accuracy {acc}, {rec['latency_ms']:.3f} ms, "
                       f"{rec['macs'] / 1e6:.1f} M MACs, {rec['params'] / 1e6:.3f} M params, {rec['seconds']:.1f} s")
                if bar is not None:
                    bar.update(1)
                    accs = [r["default"] for r in records
                            if isinstance(r["default"], float) and math.isfinite(r["default"])]
                    if accs:
                        bar.set_postfix(best=f"{max(accs):.4f}")
                    bar.write(msg)
                else:
                    say(msg)
        finally:
            if bar is not None:
                bar.close()

    records = sorted(records, key=lambda r: r["trial"])
    report = finish_search(records, space=cfg.space, space_config=cfg.space_config, budget=budget, out_dir=out,
                           top_k=cfg.top_k, weights=weights_dir, val_data=val_ds, predictor=predictor,
                           export=cfg.export, measure=cfg.measure, device=cfg.train.device,
                           title=f"random search, {cfg.space} on {cfg.data.name}: {len(records)} trials", print_fn=log)
    return SearchResult(records=records, budget=budget, latency_range=(lo, hi), acceptance_rate=rate,
                        resumed=resumed, ran=todo, seconds=time.perf_counter() - start, report=report,
                        out_dir=out)
