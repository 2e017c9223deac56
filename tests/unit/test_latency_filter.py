"""LatencyFilter in NNI strategies (sequential engine, instant trials) and TrialRecorder's full result dicts."""

from __future__ import annotations

import json

import nni
import numpy as np
import pytest
from nni.nas.evaluator import FunctionalEvaluator
from nni.nas.execution import SequentialExecutionEngine
from nni.nas.space import ModelStatus, SimplifiedModelSpace
from nni.nas.strategy import Random, RegularizedEvolution
from nni.nas.strategy.middleware import Chain, Filter

import search_spaces as ss
from hwnas.errors import HwnasError, InfeasibleBudgetError
from hwnas.nas._budget import LatencyBudget
from hwnas.nas._compat import plain_arch
from hwnas.nas._profiler import LatencyFilter
from hwnas.nas._trial import TrialRecorder, evaluate_architecture, read_records, traced_dataset
from hwnas.tables import LatencyTable

from tests._tables import SMALL, spos_table  # noqa: E402  (shared synthetic table)


@pytest.fixture(scope="module")
def space():
    return ss.create_space("spos", **SMALL)


@pytest.fixture(scope="module")
def table():
    return spos_table()


@pytest.fixture(scope="module")
def table_path(table, tmp_path_factory):
    return str(table.save(tmp_path_factory.mktemp("table") / "latency_table.json"))


@pytest.fixture(scope="module")
def median_ms(table):
    idx = (np.random.default_rng(0).random((20_000, len(table.labels))) * table.n_choices).astype(np.int64)
    return float(np.median(table.latency_batch(idx)))


def instant_trial(model, *, table_path):
    """A trial that trains nothing: reports a fake accuracy and the table's numbers, like evaluate_architecture."""
    arch = plain_arch(nni.get_current_parameter())
    table = LatencyTable.load(table_path)
    nni.report_final_result({"default": 0.5, "accuracy": 0.5, "latency_ms": table.latency(arch),
                             "macs": table.macs(arch), "params": table.params(arch), "seconds": 0.0})


def _run(space, table_path, strategy, max_models):
    model_space = SimplifiedModelSpace.from_model(space, FunctionalEvaluator(instant_trial, table_path=table_path))
    engine = SequentialExecutionEngine(max_model_count=max_models)
    strategy(model_space, engine)
    return engine


# ----- feasibility, before any trial ------------------------------------------------------------------------------
def test_a_budget_below_the_fastest_architecture_fails_at_construction_naming_both(table):
    lo = table.min_latency()
    with pytest.raises(InfeasibleBudgetError) as err:
        LatencyFilter(table, lo * 0.99)
    msg = str(err.value)
    assert f"latency <= {lo * 0.99:g} ms" in msg and f"{lo:.4g} ms" in msg and "fastest" in msg


def test_a_minimum_above_the_slowest_architecture_fails_at_construction(table):
    hi = table.max_latency()
    with pytest.raises(InfeasibleBudgetError, match="slowest"):
        LatencyFilter(table, LatencyBudget(hi * 2, min_ms=hi * 1.01))


def test_the_fastest_architecture_alone_is_a_feasible_budget(table):
    f = LatencyFilter(table, table.min_latency())
    assert f(table.fastest_arch()) and not f(table.slowest_arch())


# ----- accept / reject exactly by the table ---------------------------------------------------------------------
def test_filter_accepts_exactly_the_architectures_within_the_budget(space, table, median_ms):
    f = LatencyFilter(table, LatencyBudget(median_ms, min_ms=table.min_latency() + 0.05))
    archs = [ss.random_arch(space, seed) for seed in range(300)]
    got = [f(a) for a in archs]
    want = [bool(f.budget.min_ms <= table.latency(a) <= median_ms) for a in archs]
    assert got == want and 50 < sum(got) < 250
    assert (f.n_accepted, f.n_rejected) == (sum(want), len(want) - sum(want))
    kept = [a for a, ok in zip(archs, want) if ok]
    assert [r["arch"] for r in f.accepted] == kept
    for rec in f.accepted:
        assert rec == {"arch": rec["arch"], "latency_ms": table.latency(rec["arch"]),
                       "macs": table.macs(rec["arch"]), "params": table.params(rec["arch"])}


def test_filter_takes_nni_models_and_works_as_a_plain_filter_function(space, table, median_ms):
    f = LatencyFilter(table, median_ms)
    models = [SimplifiedModelSpace.from_model(space).random(random_state=np.random.RandomState(s)) for s in range(20)]
    assert [f(m) for m in models] == [table.latency(plain_arch(m.sample)) <= median_ms for m in models]
    assert isinstance(f, Filter) and Filter(f).filter_fn is f


# ----- in NNI strategies on the sequential engine ----------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: Random(seed=0),
                                  lambda: RegularizedEvolution(population_size=2, sample_size=1, seed=0)],
                         ids=["random", "evolution"])
def test_strategy_chain_trains_only_archs_within_budget_and_records_full_results(space, table, table_path,
                                                                                median_ms, tmp_path, make):
    f = LatencyFilter(table, median_ms)
    rec = TrialRecorder(tmp_path / "results.jsonl")
    engine = _run(space, table_path, Chain(make(), f, rec), max_models=3)
    trained = list(engine.list_models(ModelStatus.Trained))
    assert len(trained) == 3 and f.n_accepted == 3
    for model in trained:   # NNI's own record keeps only "default"
        assert model.metric == 0.5 and table.latency(plain_arch(model)) <= median_ms
    assert [r["trial"] for r in rec.records] == [1, 2, 3]
    for r, model in zip(rec.records, trained):
        assert r["status"] == "trained" and r["arch"] == plain_arch(model)
        assert (r["default"], r["latency_ms"], r["macs"], r["params"]) == (
            0.5, table.latency(r["arch"]), table.macs(r["arch"]), table.params(r["arch"]))
        assert r["wall_seconds"] >= 0
    assert read_records(tmp_path / "results.jsonl") == json.loads(json.dumps(rec.records))


def test_a_feasible_but_tight_budget_ends_in_a_clear_error_not_an_endless_loop(space, table, table_path):
    # Only the fastest architecture (1 of 4**20) meets it: uniform proposals essentially never do.
    f = LatencyFilter(table, table.min_latency(), max_consecutive_rejections=40)
    with pytest.raises(InfeasibleBudgetError, match="40 architectures in a row") as err:
        _run(space, table_path, Chain(Random(seed=0), f, TrialRecorder()), max_models=3)
    assert f"{table.min_latency():.4g}..{table.max_latency():.4g} ms" in str(err.value)
    assert f.n_accepted == 0 and f.n_rejected == 40


def test_recorder_marks_a_failed_trial(space, table, table_path):
    def broken(model, *, table_path):
        raise RuntimeError("boom")

    rec = TrialRecorder()
    model_space = SimplifiedModelSpace.from_model(space, FunctionalEvaluator(broken, table_path=table_path))
    engine = SequentialExecutionEngine(max_model_count=1, continue_on_failure=True)
    Chain(Random(seed=0), rec)(model_space, engine)
    assert [(r["trial"], r["status"]) for r in rec.records] == [(1, "failed")] and "default" not in rec.records[0]


class _SilentEngine:
    """An engine stub that accepts models and lets the test deliver their events (as NNI's listener thread does)."""

    def __init__(self):
        self.callbacks = {}

    def register_model_event_callback(self, event_type, callback):
        self.callbacks.setdefault(event_type, []).append(callback)

    def submit_models(self, *models):
        pass

    def fire(self, event):
        for callback in self.callbacks.get(event.event_type, []):
            callback(event)


def test_recorder_wait_closes_trials_whose_end_never_arrived(space):
    from nni.nas.execution.event import FinalMetricEvent, TrainingEndEvent

    engine = _SilentEngine()
    rec = TrialRecorder()
    rec.set_engine(engine)
    models = [SimplifiedModelSpace.from_model(space).random(random_state=np.random.RandomState(s)) for s in range(3)]
    rec.submit_models(*models)
    engine.fire(FinalMetricEvent(models[0], {"default": 0.7, "latency_ms": 1.0}))
    engine.fire(TrainingEndEvent(models[0], ModelStatus.Trained))
    engine.fire(FinalMetricEvent(models[1], {"default": 0.6, "latency_ms": 2.0}))   # its end is still on the way
    assert rec.pending() == 2 and [r["trial"] for r in rec.records] == [1]
    assert rec.wait(timeout=0.05) is False and rec.pending() == 0
    assert [(r["trial"], r["status"], r.get("default")) for r in rec.records] == [
        (1, "trained", 0.7), (2, "trained", 0.6), (3, "unfinished", None)]
    assert [r["arch"] for r in rec.records] == [plain_arch(m) for m in models]


# ----- the trial function's edges ---------------------------------------------------------------------------------
def test_evaluate_architecture_outside_an_nni_trial_is_a_clear_error(space, table_path, monkeypatch):
    # NNI keeps the last trial's parameter after a sequential run (earlier tests): start from none.
    monkeypatch.setattr(nni.trial, "_params", None)
    with pytest.raises(HwnasError, match="inside an NNI trial"):
        evaluate_architecture(space, train_data=None, val_data=None, train={}, table_path=table_path)


def test_traced_datasets_travel_as_small_calls():
    from hwnas.data import DataConfig

    ds = traced_dataset(DataConfig(), "val")
    payload = nni.dump(ds)
    assert len(payload) < 300 and "hwnas.nas._trial.LoadedDataset" in payload
    back = nni.load(payload)
    assert len(back) == len(ds) and bool((back.dataset.tensors[0] == ds.dataset.tensors[0]).all())


def test_traced_datasets_patch_no_torch_class():
    # Tracing a function returning a TensorDataset made NNI patch TensorDataset in place; a plain one then broke
    # NNI's Classification evaluator (KeyError: '_nni_symbol') for the rest of the process.
    import torch
    from torch.utils.data import TensorDataset

    from hwnas.data import DataConfig

    traced_dataset(DataConfig(), "val")
    plain = TensorDataset(torch.zeros(2, 1))
    assert not hasattr(plain, "trace_symbol")
