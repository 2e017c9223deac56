"""The NNI search (hwnas.nas.run_nni_search, configured as experiments.nni_search reads it) end to end: sequential
engine with resume, and the local training service with the manager on loopback; plus its configuration and the
infeasible-budget error before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
import torch

from experiments import nni_search
from hwnas.errors import DataError, InfeasibleBudgetError
from hwnas.nas import NniSearchConfig, choose_port, run_nni_search
from hwnas.tables import LatencyTable

KEYS = {"trial", "status", "arch", "default", "accuracy", "latency_ms", "macs", "params", "train_loss", "steps",
        "train_seconds", "seconds", "wall_seconds"}


def _cfg(out: Path, **sections) -> NniSearchConfig:
    doc = {"space": {"name": "spos", "width_mult": 0.25}, "budget": {"quantile": 0.6},
           "strategy": {"name": "random", "seed": 0}, "trials": {"max_trial_number": 3, "num_threads": 1},
           "training": {"epochs": 1, "max_steps": 2, "batch_size": 32, "bn_recalibration_batches": 1},
           "engine": {"name": "sequential"}, "out": str(out), "export": False, "measure": False}
    for key, value in sections.items():
        doc[key] = {**doc[key], **value} if isinstance(value, dict) and isinstance(doc.get(key), dict) else value
    return nni_search.config_from_dict(doc)


def _check_records(result, n: int) -> None:
    table = LatencyTable.load(result.out_dir / "latency_table.json")
    trained = [r for r in result.records if r["status"] == "trained"]
    assert len(trained) == n and len({r["trial"] for r in trained}) == n
    for rec in trained:
        assert KEYS <= set(rec), KEYS - set(rec)
        assert rec["latency_ms"] == table.latency(rec["arch"]) <= result.budget.max_ms
        assert (rec["macs"], rec["params"]) == (table.macs(rec["arch"]), table.params(rec["arch"]))
        assert 0.0 <= rec["default"] == rec["accuracy"] <= 1.0 and rec["steps"] == 2


# ----- fast: configuration and the infeasible budget -----------------------------------------------------------------
def test_default_yaml_loads_and_overrides_win():
    cfg = nni_search.load_config(nni_search.DEFAULT_CONFIG, ["strategy.name=evolution", "training.epochs=3",
                                                             "training_service.platform=local"])
    assert cfg.strategy.name == "evolution" and cfg.training.epochs == 3 and cfg.engine.name == "training_service"
    assert cfg.training_service == {"platform": "local"} and cfg.space_config()["input_size"] == 32
    with pytest.raises(ValueError, match="unknown key"):
        nni_search.load_config(None, ["strategy.population=3"])
    with pytest.raises(ValueError, match="strategy.name"):
        nni_search.load_config(None, ["strategy.name=grid"])


@pytest.mark.slow
def test_missing_data_fails_before_anything_is_built(tmp_path):
    cfg = _cfg(tmp_path / "run", data={"name": "cifar10", "root": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match="nowhere"):
        run_nni_search(cfg, print_fn=None)
    assert not (tmp_path / "run" / "latency_table.json").exists() and not (tmp_path / "run" / "nni").exists()


@pytest.mark.slow
def test_infeasible_budget_fails_before_the_experiment_starts(tmp_path):
    cfg = _cfg(tmp_path / "run", budget={"max_ms": 0.01})
    with pytest.raises(InfeasibleBudgetError, match=r"latency <= 0.01 ms.*fastest architecture of the space takes"):
        run_nni_search(cfg, print_fn=None)
    assert not (tmp_path / "run" / "nni").exists() and not (tmp_path / "run" / "results.jsonl").exists()


# ----- slow: real experiments -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sequential_engine_runs_three_trials_reports_full_dicts_and_resumes(tmp_path):
    out = tmp_path / "run"
    result = run_nni_search(_cfg(out), print_fn=None)
    _check_records(result, 3)
    assert result.web_ui is None and result.filter_counts[0] == 3
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["trial"] for r in lines] == [1, 2, 3]
    top = json.loads((out / "topk.json").read_text())["top"]
    assert top[0]["default"] == max(r["default"] for r in result.records)
    assert (out / "search.png").stat().st_size > 0 and (out / "best" / "arch.json").is_file()
    state = torch.load(out / "best" / "state_dict.pt", weights_only=True)
    assert state and result.report.reload_accuracy == top[0]["default"]
    # the NNI launch ends like the random search: the winner's prediction against its measurement, one line
    winner = [line for line in result.report.summary().splitlines() if "; winner predicted " in line]
    assert len(winner) == 1 and winner[0].startswith(f"budget {result.report.budget.max_ms:.3f} ms")

    # Resume the stopped experiment (NNI's checkpoint load needs allowlisted_checkpoints) for one more trial.
    more = _cfg(out, trials={"max_trial_number": 4}, resume=result.experiment_id)
    resumed = run_nni_search(more, print_fn=None)
    assert resumed.experiment_id == result.experiment_id
    _check_records(resumed, 4)
    assert [r["arch"] for r in resumed.records[:3]] == [r["arch"] for r in result.records]
    assert resumed.records[3]["arch"] not in [r["arch"] for r in result.records]


@pytest.mark.slow
def test_training_service_runs_two_trials_with_the_manager_on_loopback_and_stops_cleanly(tmp_path):
    port = choose_port(18080)
    seen: list[set[str]] = []

    def listening(_rec):
        seen.append({c.laddr.ip for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port})

    cfg = _cfg(tmp_path / "run", trials={"max_trial_number": 2}, engine={"name": "training_service", "port": port})
    result = run_nni_search(cfg, on_record=listening, print_fn=None)
    _check_records(result, 2)
    assert result.web_ui == f"http://127.0.0.1:{port}"
    assert seen and all(addrs == {"127.0.0.1"} for addrs in seen)   # manager and web UI: loopback only
    # Stopped cleanly: nothing listens on the port and no manager process of this experiment is left.
    assert not [c for c in psutil.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    left = [p for p in psutil.process_iter(["cmdline"]) if result.experiment_id in " ".join(p.info["cmdline"] or [])]
    assert not left
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["trained"] == 2 and summary["web_ui"] == result.web_ui

    # The same proposals train to the same numbers in the sequential engine (seeded init, seeded training).
    same = run_nni_search(_cfg(tmp_path / "seq", trials={"max_trial_number": 2}), print_fn=None)
    key = ("arch", "default", "latency_ms", "train_loss")
    assert [[r[k] for k in key] for r in same.records] == [[r[k] for k in key] for r in result.records]
