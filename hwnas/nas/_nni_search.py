"""NNI multi-trial search under a latency budget, with NNI's manager, web UI and strategies.

:func:`run_nni_search` runs a ``NasExperiment`` over the SPOS or ProxylessNAS space (the small-input variant for
32×32 data): NNI's ``Random`` or ``RegularizedEvolution`` strategy proposes architectures, hwnas's
:class:`~hwnas.nas.LatencyFilter` rejects those over the latency budget before any training (an infeasible budget
fails before the experiment starts), and each accepted architecture is trained in an NNI trial
(:func:`hwnas.nas.evaluate_architecture`: the trainer of the plain random search). Trials run through NNI's local
training service (manager and web UI on 127.0.0.1) or, with ``engine: sequential``, one after another in this
process. Data, then predictor, table and budget come first (:func:`hwnas.nas._prepare.prepare_search`, the step
shared with :func:`hwnas.nas.run_random_search`); the search ends with the report of
:func:`hwnas.nas.finish_search` (top-k table, ``search.png``, ``topk.json``, the best network).

Files in ``out_dir``: ``latency_table.json``, ``results.jsonl`` (one full record per trial), ``weights/`` (local
trials' trained weights), ``nni/<experiment id>/`` (NNI's own records and checkpoint, for a resume),
``summary.json`` and the report's files.

The configuration is one dataclass per section (:class:`NniSearchConfig`); reading it from YAML and the command
line is the entry point's job (``experiments/nni_search.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from hwnas.data import DataConfig
from hwnas.files import atomic_write
from hwnas.nas._budget import DEFAULT_QUANTILE
from hwnas.train import TrainConfig

__all__ = ["NniSearchConfig", "NniSearchResult", "run_nni_search", "SpaceSection", "BudgetSection",
           "StrategySection", "TrialsSection", "EngineSection", "STRATEGIES", "ENGINES", "choose_port"]

STRATEGIES = ("random", "evolution")
ENGINES = ("training_service", "sequential")
LOOPBACK = "127.0.0.1"
MAX_PAYLOAD_BYTES = 60_000   # NNI refuses trial parameters over 64 KB


# -- configuration -------------------------------------------------------------------------------------------------
@dataclass
class SpaceSection:
    """Search space: ``name`` (``spos`` or ``proxyless``), ``width_mult``; ``input_size`` follows the data."""

    name: str = "spos"
    width_mult: float = 0.25
    input_size: int | None = None
    small_input: bool | None = None


@dataclass
class BudgetSection:
    """Latency budget, predicted ms: ``max_ms`` (``None``: the ``quantile`` of the space's latencies), ``min_ms``."""

    max_ms: float | None = None
    min_ms: float | None = None
    quantile: float = DEFAULT_QUANTILE


@dataclass
class StrategySection:
    """NNI strategy ``random`` or ``evolution`` (``RegularizedEvolution``), wrapped in the latency filter."""

    name: str = "random"
    seed: int = 0
    dedup: bool = True
    population_size: int = 8
    sample_size: int = 4
    mutation_prob: float = 0.1
    max_consecutive_rejections: int = 10_000


@dataclass
class TrialsSection:
    """How many trials, how many at once, and what each keeps."""

    max_trial_number: int = 8
    concurrency: int = 1
    max_experiment_duration: str | None = None
    num_threads: int | None = None
    gpus_per_trial: int = 0
    keep_weights: bool = True


@dataclass
class EngineSection:
    """``training_service`` (NNI manager + web UI; ``port``, or a free one when taken) or ``sequential``.

    ``keep_ui``: after the report, keep the manager and web UI up until Ctrl-C (NNI 3.0 cannot reopen the web UI
    of a stopped NAS experiment: ``nnictl view`` needs ``pkg_resources``, ``Experiment.view`` rejects NAS configs).
    """

    name: str = "training_service"
    port: int = 8080
    nni_manager_ip: str | None = None
    keep_ui: bool = False
    debug: bool = False


@dataclass
class NniSearchConfig:
    """Everything an NNI search needs (``experiments/nni_search.py`` builds it from YAML and the command line)."""

    space: SpaceSection = field(default_factory=SpaceSection)
    predictor: str = "auto"
    budget: BudgetSection = field(default_factory=BudgetSection)
    strategy: StrategySection = field(default_factory=StrategySection)
    trials: TrialsSection = field(default_factory=TrialsSection)
    training: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    engine: EngineSection = field(default_factory=EngineSection)
    training_service: dict[str, Any] = field(default_factory=lambda: {"platform": "local"})
    out_dir: str = "runs/nni_search"
    top_k: int = 5
    export: bool = True
    measure: bool = True
    experiment_name: str = "hwnas"
    resume: str | None = None

    def __post_init__(self) -> None:
        if self.strategy.name not in STRATEGIES:
            raise ValueError(f"strategy.name must be one of {list(STRATEGIES)}, got {self.strategy.name!r}")
        if self.engine.name not in ENGINES:
            raise ValueError(f"engine.name must be one of {list(ENGINES)}, got {self.engine.name!r}")
        if self.trials.max_trial_number < 1 or self.trials.concurrency < 1:
            raise ValueError("trials.max_trial_number and trials.concurrency must be >= 1")
        if self.engine.name == "sequential" and self.trials.concurrency != 1:
            raise ValueError("the sequential engine runs one trial at a time: set trials.concurrency to 1")
        if not 0.0 < float(self.budget.quantile) <= 1.0:
            raise ValueError(f"budget.quantile must be in (0, 1], got {self.budget.quantile}")
        if not isinstance(self.training_service, Mapping) or "platform" not in self.training_service:
            raise ValueError("training_service must be a mapping with a 'platform' (NNI's training-service config)")
        size = self.space.input_size
        if size is not None and int(size) != int(self.data.image_size):
            raise ValueError(f"space.input_size={size} disagrees with data.image_size={self.data.image_size}; "
                             "leave space.input_size out to follow the data")

    @property
    def platform(self) -> str:
        return str(self.training_service["platform"])

    def space_config(self) -> dict[str, Any]:
        """Fields of the space's config: width, the data's image size and class count."""
        cfg = {"width_mult": float(self.space.width_mult), "input_size": int(self.data.image_size),
               "num_classes": int(self.data.num_classes)}
        if self.space.small_input is not None:
            cfg["small_input"] = bool(self.space.small_input)
        return cfg


# -- helpers -------------------------------------------------------------------------------------------------------
def _port_free(port: int, host: str = LOOPBACK) -> bool:
    for family, addr in ((socket.AF_INET, host), (socket.AF_INET6, "::1")):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((addr, port))
            except OSError as err:
                if family == socket.AF_INET6 and err.errno in (97, 99):   # no IPv6 on this machine
                    continue
                return False
    return True


def choose_port(preferred: int, *, pair: bool = False) -> int:
    """``preferred`` if it (and ``preferred + 1`` when ``pair``) is free on loopback, else a free port."""
    if 0 < preferred < 65535 and _port_free(preferred) and (not pair or _port_free(preferred + 1)):
        return preferred
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port < 65535 and _port_free(port) and (not pair or _port_free(port + 1)):
            return port
    raise RuntimeError("no free TCP port found on 127.0.0.1")


def _strategy(cfg: StrategySection) -> Any:
    from nni.nas.strategy import Random, RegularizedEvolution

    if cfg.name == "random":
        return Random(dedup=cfg.dedup, seed=cfg.seed)
    return RegularizedEvolution(population_size=cfg.population_size, sample_size=cfg.sample_size,
                                mutation_prob=cfg.mutation_prob, dedup=cfg.dedup, seed=cfg.seed)


def _experiment_config(cfg: NniSearchConfig, work_dir: Path) -> Any:
    from nni.experiment.config import utils as config_utils
    from nni.nas.experiment import NasExperimentConfig

    if cfg.engine.name == "sequential":
        exp_cfg = NasExperimentConfig("sequential", "simplified")
    else:
        exp_cfg = NasExperimentConfig("ts", "simplified", cfg.platform)
        exp_cfg.training_service = config_utils.load_training_service_config(dict(cfg.training_service))
        exp_cfg.trial_concurrency = int(cfg.trials.concurrency)
        exp_cfg.trial_gpu_number = int(cfg.trials.gpus_per_trial)
        ip = cfg.engine.nni_manager_ip or (LOOPBACK if cfg.platform == "local" else None)
        if ip is not None:
            exp_cfg.nni_manager_ip = ip
        if cfg.trials.max_experiment_duration:
            exp_cfg.max_experiment_duration = cfg.trials.max_experiment_duration
    exp_cfg.experiment_name = cfg.experiment_name
    exp_cfg.max_trial_number = int(cfg.trials.max_trial_number)
    exp_cfg.experiment_working_directory = str(work_dir.resolve())
    return exp_cfg


@dataclass
class NniSearchResult:
    """What :func:`run_nni_search` did: the records, the report, where the web UI was, timings (s)."""

    out_dir: Path
    experiment_id: str
    records: list[dict[str, Any]]
    report: Any
    budget: Any
    web_ui: str | None
    wall_seconds: float
    interrupted: bool = False
    filter_counts: tuple[int, int] = (0, 0)

    def seconds_per_trial(self) -> dict[str, float]:
        """Mean seconds per trained trial: inside the trial (``seconds``) and submit-to-end (``wall_seconds``)."""
        out = {}
        for key in ("seconds", "wall_seconds", "train_seconds"):
            vals = [float(r[key]) for r in self.records if r.get("status") == "trained"
                    and isinstance(r.get(key), (int, float))]
            if vals:
                out[key] = sum(vals) / len(vals)
        return out


# -- the run -------------------------------------------------------------------------------------------------------
def run_nni_search(cfg: NniSearchConfig, *, on_record: Callable[[dict], None] | None = None,
        print_fn: Callable[[str], None] | None = print) -> NniSearchResult:
    """Run (or, with ``cfg.resume``, resume) the NNI experiment of ``cfg`` and write the report.

    Raises
    ------
    InfeasibleBudgetError
        No architecture meets the budget (before the experiment starts), or the strategy proposed
        ``max_consecutive_rejections`` architectures in a row outside it.
    DataError
        Missing or malformed data (before the experiment starts).
    HwnasError
        A trial payload over NNI's limit, or a malformed record.
    """
    import nni
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.experiment import NasExperiment
    from nni.nas.strategy.middleware import Chain

    import search_spaces as ss
    from hwnas.errors import HwnasError
    from hwnas.nas._budget import LatencyBudget
    from hwnas.nas._compat import allowlisted_checkpoints, loopback_manager
    from hwnas.nas._prepare import prepare_search
    from hwnas.nas._profiler import LatencyFilter
    from hwnas.nas._report import finish_search
    from hwnas.nas._trial import TrialRecorder, evaluate_architecture, read_records, traced_dataset

    say = print_fn or (lambda _msg: None)
    start = time.perf_counter()
    out = Path(cfg.out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if cfg.resume and not (out / "nni" / cfg.resume / "checkpoint" / "config.json").is_file():
        raise HwnasError(f"cannot resume experiment {cfg.resume!r}: {out / 'nni' / cfg.resume} holds no NNI checkpoint "
                         "(resume with the --out-dir of the run that created it)")
    space_config = cfg.space_config()
    # Data first: a missing path or a malformed dataset fails here (DataError), before anything else is built.
    train_data, val_data = traced_dataset(cfg.data, "train"), traced_dataset(cfg.data, "val")
    min_ms = None if cfg.budget.min_ms is None else float(cfg.budget.min_ms)
    given = None if cfg.budget.max_ms is None else LatencyBudget(float(cfg.budget.max_ms), min_ms)
    setup = prepare_search(cfg.space.name, space_config, cfg.predictor, out, budget=given,
                           quantile=cfg.budget.quantile, min_ms=min_ms)
    predictor, table, table_path, budget = setup.predictor, setup.table, setup.table_path, setup.budget
    space = ss.create_space(cfg.space.name, **space_config)
    latency_filter = LatencyFilter(table, budget, max_consecutive_rejections=cfg.strategy.max_consecutive_rejections)
    say(setup.describe(cfg.space.name, space_config))

    local = cfg.engine.name == "sequential" or cfg.platform == "local"
    weights_dir = out / "weights" if (cfg.trials.keep_weights and local) else None
    evaluator = FunctionalEvaluator(
        evaluate_architecture, train_data=train_data, val_data=val_data, train=dataclasses.asdict(cfg.training),
        table_path=str(table_path.resolve()), space=cfg.space.name,
        weights_dir=None if weights_dir is None else str(weights_dir.resolve()), num_threads=cfg.trials.num_threads)
    payload = len(nni.dump(evaluator))
    if payload > MAX_PAYLOAD_BYTES:
        raise HwnasError(f"the trial payload is {payload} bytes, over NNI's 64 KB limit: pass data as traced "
                         "factory calls (hwnas.nas.traced_dataset), not tensors")
    results_path = out / "results.jsonl"
    previous = read_records(results_path) if cfg.resume else []
    if not cfg.resume and results_path.exists():
        results_path.unlink()   # a fresh experiment in a reused folder: its records only

    def record(rec: dict) -> None:
        acc = rec.get("default")
        say(f"trial {rec.get('trial')}: {rec.get('status')}"
            + (f", accuracy {acc:.4f}, {rec['latency_ms']:.3f} ms, {rec.get('wall_seconds', float('nan')):.1f} s"
               if isinstance(acc, (int, float)) else ""))
        if on_record is not None:
            on_record(rec)

    recorder = TrialRecorder(results_path, on_record=record)
    strategy = Chain(_strategy(cfg.strategy), latency_filter, recorder)
    exp = NasExperiment(space, evaluator, strategy, _experiment_config(cfg, out / "nni"), id=cfg.resume)
    web_ui = None
    port = 0
    if cfg.engine.name == "training_service":
        port = choose_port(int(cfg.engine.port), pair=cfg.platform != "local")
        host = LOOPBACK if cfg.platform == "local" else (cfg.engine.nni_manager_ip or "localhost")
        web_ui = f"http://{host}:{port}"
        if port != cfg.engine.port:
            say(f"port {cfg.engine.port} is taken: using {port}")
        say(f"NNI experiment {exp.id}: web UI at {web_ui} while the experiment runs")

    interrupted = stopped = False
    with warnings.catch_warnings(), allowlisted_checkpoints(), \
            (loopback_manager() if cfg.engine.name == "training_service" and cfg.platform == "local"
             else contextlib.nullcontext()):
        try:
            launch = exp.resume if cfg.resume else exp.run
            if launch(port=port or 8080, wait_completion=True, debug=cfg.engine.debug) is None:
                interrupted = stopped = True   # NNI caught Ctrl-C and stopped the experiment itself
            if not recorder.wait(timeout=0.0 if interrupted else 120.0):
                say("some trials did not end (recorded as 'unfinished' unless their result had arrived)")
            wall = time.perf_counter() - start
            records = _renumber(previous, list(recorder.records))
            trained = [r for r in records if r.get("status") == "trained"]
            say(f"{len(trained)} trial(s) trained ({len(records) - len(trained)} failed) in {wall:.1f} s; the "
                f"latency filter accepted {latency_filter.n_accepted} and rejected {latency_filter.n_rejected} "
                "proposals")
            report = finish_search(
                trained, space=cfg.space.name, space_config=space_config, budget=budget, out_dir=out,
                top_k=cfg.top_k, weights=_weights_source(trained, weights_dir), val_data=val_data,
                predictor=predictor, export=cfg.export, measure=cfg.measure, device=cfg.training.device,
                title=f"NNI {cfg.strategy.name} on {cfg.space.name}: {len(trained)} trials ({budget})",
                print_fn=print_fn)
            if cfg.engine.keep_ui and web_ui is not None and not stopped:
                say(f"the web UI stays up at {web_ui}: press Ctrl-C to stop the experiment")
                _wait_for_interrupt()
        finally:
            if not stopped:
                exp.stop()
    result = NniSearchResult(out_dir=out, experiment_id=exp.id, records=records, report=report, budget=budget,
                             web_ui=web_ui, wall_seconds=wall, interrupted=interrupted,
                             filter_counts=(latency_filter.n_accepted, latency_filter.n_rejected))
    summary = {"experiment_id": exp.id, "engine": cfg.engine.name, "platform": cfg.platform, "web_ui": web_ui,
               "budget": {"max_ms": budget.max_ms, "min_ms": budget.min_ms}, "trials": len(records),
               "trained": len(trained), "wall_seconds": wall, "seconds_per_trial": result.seconds_per_trial(),
               "filter": {"accepted": result.filter_counts[0], "rejected": result.filter_counts[1]},
               "interrupted": interrupted, "nni_dir": str((out / "nni" / exp.id).resolve())}
    atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return result


def _weights_source(trained: list[dict], weights_dir: Path | None) -> Callable[[int], Any]:
    """``trial -> state dict`` from the files the trials saved (``None`` when a trial saved none)."""
    import torch

    from hwnas.nas._trial import weights_path

    def weights_of(trial: int) -> Any:
        rec = next((r for r in trained if r["trial"] == trial), None)
        if rec is None or weights_dir is None:
            return None
        path = weights_path(weights_dir, rec["arch"])
        if not path.is_file():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]

    return weights_of


def _wait_for_interrupt() -> None:
    """Sleep until Ctrl-C or SIGTERM (the handler of SIGTERM is restored afterwards)."""
    import signal
    import threading

    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _renumber(previous: list[dict], new: list[dict]) -> list[dict]:
    """Records of a resumed run after the earlier ones, with trial ids that do not repeat."""
    used = {r.get("trial") for r in previous}
    nxt = max([int(t) for t in used if isinstance(t, int)], default=0) + 1
    out = list(previous)
    for rec in new:
        if rec.get("trial") is None or rec.get("trial") in used:
            rec = {**rec, "trial": nxt}
        used.add(rec["trial"])
        nxt = max(nxt, int(rec["trial"])) + 1
        out.append(rec)
    return out


