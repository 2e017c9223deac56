"""The random multi-trial search loop (hwnas.nas._random_search) with training replaced by a cheap stand-in.

The stand-in "trains" nothing: it evaluates the freshly initialised network on the validation data, so every
recorded accuracy is real for the saved weights (the report reloads and re-evaluates the best) and depends only on
the trial's seeded initialisation. The real trainer runs in tests/integration/test_random_search_e2e.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import hwnas
from hwnas.data import DataConfig
from hwnas.errors import InfeasibleBudgetError, StoreError
from hwnas.nas import _report
from hwnas.nas._budget import BudgetedSampler, LatencyBudget
from hwnas.nas._random_search import (CONFIG_FILE, TABLE_FILE, TRIALS_FILE, RandomSearchConfig, read_trials,
                                      run_random_search, trial_archs)
from hwnas.tables import LatencyTable
from hwnas.train import TrainConfig, TrainResult, evaluate

SPACE_CONFIG = {"width_mult": 0.25}
DATA = DataConfig(image_size=8, val_fraction=0.02)           # 40 validation images at 8x8: fast evaluations


@pytest.fixture(scope="module")
def table_cache(tmp_path_factory):
    """The 8x8 proxyless table, built once and copied into every test's out_dir (where the search keeps it)."""
    import search_spaces as ss

    space = ss.create_space("proxyless", input_size=8, num_classes=10, **SPACE_CONFIG)
    table = LatencyTable.build(space, hwnas.load_latency_predictor("torchscript-cpu-xeon"))
    path = table.save(tmp_path_factory.mktemp("tables") / TABLE_FILE)
    return path, table


@pytest.fixture(autouse=True)
def _no_export_no_plot(monkeypatch):
    # both are tested in test_search_report.py; here they would only cost time
    monkeypatch.setattr(_report, "_export_fn", lambda: None)
    monkeypatch.setattr(_report, "_plot", lambda *args, **kwargs: None)


class FakeTrain:
    """Stands in for train_model; records which trials (by train seed) it ran."""

    def __init__(self, fail_on: int | None = None):
        self.calls = []
        self.fail_on = fail_on

    def __call__(self, model, train_ds, val_ds, cfg, progress=False):
        self.calls.append(cfg.seed)
        if self.fail_on is not None and len(self.calls) - 1 == self.fail_on:
            raise FloatingPointError("train_model: the training loss diverged (nan); lower the learning rate")
        return TrainResult(accuracy=evaluate(model, val_ds), train_loss=1.0, steps=0, seconds=0.01)


def _cfg(out, **kw):
    kw.setdefault("trials", 3)
    kw.setdefault("predictor", "torchscript-cpu-xeon")   # the predictor of the cached table
    return RandomSearchConfig(out_dir=str(out), space_config=dict(SPACE_CONFIG), data=DATA,
                              train=TrainConfig(epochs=1, max_steps=2), **kw)


def _run(cfg, table_cache, train=None, **kw):
    path, _ = table_cache
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    shutil.copy(path, Path(cfg.out_dir) / TABLE_FILE)
    train = train or FakeTrain()
    return run_random_search(cfg, progress=False, train_fn=train, log=None, **kw), train


def _strip(recs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


# ----- resume -------------------------------------------------------------------------------------------------------
def test_resume_after_a_kill_runs_only_the_unfinished_trials(tmp_path, table_cache):
    straight, _ = _run(_cfg(tmp_path / "straight", trials=4), table_cache)

    out = tmp_path / "killed"
    first, train1 = _run(_cfg(out, trials=3), table_cache)
    assert len(train1.calls) == 3 and [r["trial"] for r in first.records] == [0, 1, 2]
    with open(out / TRIALS_FILE, "a") as f:                  # killed while writing trial 3's line
        f.write('{"trial": 3, "arch": {"s1_b0": "k')
    second, train2 = _run(_cfg(out, trials=4), table_cache)
    assert len(train2.calls) == 1 and second.resumed == 3 and second.ran == [3]
    assert [r["trial"] for r in second.records] == [0, 1, 2, 3]
    assert _strip(second.records) == _strip(straight.records)           # same archs, inits and accuracies
    assert [json.loads(line)["trial"] for line in (out / TRIALS_FILE).read_text().splitlines()] == [0, 1, 2, 3]
    assert second.best == straight.best


def test_a_torn_last_record_is_rerun(tmp_path, table_cache):
    out = tmp_path / "torn"
    _run(_cfg(out, trials=3), table_cache)
    text = (out / TRIALS_FILE).read_text()
    (out / TRIALS_FILE).write_text(text[: len(text) - 25])                # trial 2's line cut short
    again, train = _run(_cfg(out, trials=3), table_cache)
    assert again.ran == [2] and len(train.calls) == 1 and len(read_trials(out / TRIALS_FILE)) == 3


def test_a_finished_search_reruns_nothing(tmp_path, table_cache):
    out = tmp_path / "done"
    first, _ = _run(_cfg(out), table_cache)
    again, train = _run(_cfg(out), table_cache)
    assert train.calls == [] and again.ran == [] and again.records == first.records


def test_another_configuration_is_refused_unless_fresh(tmp_path, table_cache):
    out = tmp_path / "cfg"
    _run(_cfg(out), table_cache)
    with pytest.raises(StoreError, match=r"seed: was 0, now 1.*--force"):
        _run(_cfg(out, seed=1), table_cache)
    with pytest.raises(StoreError, match=r"train\.lr: was 0\.05, now 0\.1"):
        _run(RandomSearchConfig(out_dir=str(out), space_config=dict(SPACE_CONFIG), data=DATA, trials=3,
                                predictor="torchscript-cpu-xeon", train=TrainConfig(epochs=1, max_steps=2, lr=0.1)),
             table_cache)
    fresh, train = _run(_cfg(out, seed=1, trials=2), table_cache, fresh=True)
    assert fresh.resumed == 0 and len(train.calls) == 2 and len(read_trials(out / TRIALS_FILE)) == 2
    assert json.loads((out / CONFIG_FILE).read_text())["seed"] == 1
    _run(_cfg(out, seed=1, trials=2, top_k=1, keep_weights="all"), table_cache)   # run-only fields may change


def test_a_corrupt_middle_line_is_an_error(tmp_path, table_cache):
    out = tmp_path / "corrupt"
    _run(_cfg(out), table_cache)
    lines = (out / TRIALS_FILE).read_text().splitlines()
    lines[1] = "garbage"
    (out / TRIALS_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(StoreError, match="line 2 is not a trial record"):
        _run(_cfg(out), table_cache)


def test_trials_without_a_config_file_are_refused(tmp_path, table_cache):
    out = tmp_path / "orphan"
    _run(_cfg(out), table_cache)
    (out / CONFIG_FILE).unlink()
    with pytest.raises(StoreError, match="config.json is missing"):
        _run(_cfg(out), table_cache)


# ----- budget -------------------------------------------------------------------------------------------------------
def test_an_infeasible_budget_stops_before_any_training(tmp_path, table_cache):
    _, table = table_cache
    cfg = _cfg(tmp_path / "infeasible", budget=LatencyBudget(table.min_latency() * 0.9))
    train = FakeTrain()
    with pytest.raises(InfeasibleBudgetError, match="fastest architecture"):
        _run(cfg, table_cache, train=train)
    assert train.calls == []
    assert not (tmp_path / "infeasible" / TRIALS_FILE).exists() and not (tmp_path / "infeasible" / CONFIG_FILE).exists()


def test_every_trial_is_within_the_budget_and_described_by_the_table(tmp_path, table_cache):
    _, table = table_cache
    result, _ = _run(_cfg(tmp_path / "budget", trials=5, budget_quantile=0.2, top_k=2), table_cache)
    assert result.acceptance_rate == pytest.approx(0.2, abs=0.02)
    assert table.min_latency() < result.budget.max_ms < table.max_latency()
    for rec in result.records:
        assert rec["latency_ms"] <= result.budget.max_ms
        assert rec["latency_ms"] == pytest.approx(table.latency(rec["arch"]))
        assert (rec["macs"], rec["params"]) == (table.macs(rec["arch"]), table.params(rec["arch"]))
    assert len({json.dumps(r["arch"], sort_keys=True) for r in result.records}) == 5
    kept = sorted(p.name for p in (tmp_path / "budget" / "trials").iterdir())   # only the top-2 weights remain
    assert kept == sorted(f"{r['trial']}.pt" for r in result.report.top)
    assert (tmp_path / "budget" / "best" / "state_dict.pt").is_file() and result.report.reload_accuracy is not None


def test_a_diverged_trial_is_recorded_and_the_search_goes_on(tmp_path, table_cache):
    result, train = _run(_cfg(tmp_path / "nan", trials=3), table_cache, train=FakeTrain(fail_on=1))
    failed = result.records[1]
    assert failed["default"] is None and "diverged" in failed["error"] and len(train.calls) == 3
    assert result.best["trial"] != 1 and not (tmp_path / "nan" / "trials" / "1.pt").exists()


# ----- pieces -------------------------------------------------------------------------------------------------------
def test_trial_archs_are_seeded_distinct_and_prefix_stable(table_cache):
    _, table = table_cache
    sampler = BudgetedSampler(table, LatencyBudget(float(table.max_latency())))
    five = trial_archs(sampler, 5, seed=7)
    assert trial_archs(sampler, 3, seed=7) == five[:3] and trial_archs(sampler, 5, seed=8) != five
    assert len({json.dumps(a, sort_keys=True) for a in five}) == 5


def test_trial_archs_refuses_a_budget_with_too_few_architectures():
    from hwnas.tables import SCHEMA, SCHEMA_VERSION

    blocks = [{"label": f"s1_b{i}", "choices": ["a", "b"], "latency_ms": [0.1, 1.0], "flops": [1, 2],
               "params": [1, 2]} for i in range(3)]
    tiny = LatencyTable({"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "units": {"latency": "ms"},
                         "space": {"name": "tiny", "config": {}}, "input_shape": [1, 3, 8, 8],
                         "predictor": {"name": "p", "checksum": "0"},
                         "fixed": {"latency_ms": 0.0, "overhead_ms": 0.0, "flops": 0, "params": 0, "slots": []},
                         "blocks": blocks})
    sampler = BudgetedSampler(tiny, LatencyBudget(1.25))   # a a a, and the three with one b: 4 of 8
    archs = trial_archs(sampler, 4, seed=0)
    assert sorted("".join(a.values()) for a in archs) == ["aaa", "aab", "aba", "baa"]
    with pytest.raises(InfeasibleBudgetError, match="fewer than 5 distinct"):
        trial_archs(sampler, 5, seed=0)


def test_read_trials_ignores_only_a_torn_last_line(tmp_path):
    f = tmp_path / "t.jsonl"
    assert read_trials(f) == []
    good = '{"trial": 0, "arch": {}}\n{"trial": 1, "arch": {}}\n'
    f.write_text(good + '{"trial": 2, "ar')
    assert [r["trial"] for r in read_trials(f)] == [0, 1] and f.read_text().endswith('"ar')
    assert [r["trial"] for r in read_trials(f, repair=True)] == [0, 1] and f.read_text() == good
    f.write_text(good + '{"trial": 2, "arch": {}}')            # complete JSON but no newline: not finished
    assert len(read_trials(f)) == 2
    f.write_text('{"trial": "zero", "arch": {}}\n' + good)
    with pytest.raises(StoreError, match="line 1"):
        read_trials(f)


@pytest.mark.parametrize("kwargs, match", [
    ({"space_config": {"num_classes": 5}}, "num_classes=5 disagrees"),
    ({"space_config": {"input_size": 32}}, "input_size=32 disagrees"),
    ({"trials": 0}, "trials"), ({"top_k": 0}, "top_k"), ({"keep_weights": "best"}, "keep_weights"),
    ({"budget_quantile": 0.0}, "budget_quantile"), ({"budget": "3ms"}, "budget")])
def test_config_checks(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        RandomSearchConfig(data=DATA, **kwargs)


def test_config_follows_the_data_and_takes_a_float_budget():
    cfg = RandomSearchConfig(data=DATA, budget=2.5)
    assert cfg.budget == LatencyBudget(2.5)
    assert cfg.space_config == {"width_mult": 0.35, "input_size": 8, "num_classes": 10}
    ident = cfg.identity()
    assert "trials" not in ident and "out_dir" not in ident and "device" not in ident["train"]
    json.dumps(ident)


# ----- command line (experiments/random_search.py) -----------------------------------------------------------------
def test_cli_help_is_complete(capsys):
    from experiments import random_search as cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--budget-ms", "--budget-quantile", "--trials", "--epochs", "--data-root", "--force", "--config",
                 "--out-dir", "resume"):
        assert flag in text


def test_cli_yaml_sets_defaults_and_flags_win(tmp_path):
    from experiments import random_search as cli

    yml = tmp_path / "c.yaml"
    yml.write_text("trials: 3\nbudget-ms: 2.5\nepochs: 1\nwidth_mult: 0.25\ndata_root: null\nimage_size: 8\n")
    cfg = cli.to_config(cli.parse_args(["--config", str(yml), "--epochs", "4", "--out-dir", str(tmp_path / "o")]))
    assert cfg.trials == 3 and cfg.budget == LatencyBudget(2.5) and cfg.train.epochs == 4
    assert cfg.space_config == {"width_mult": 0.25, "input_size": 8, "num_classes": 10}
    assert cfg.out_dir == str(tmp_path / "o") and cfg.data.name == "digits" and cfg.budget_quantile == 0.5


def test_cli_defaults_match_the_shipped_yaml():
    from experiments import random_search as cli

    yml = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "random_search.yaml"
    shipped = cli.to_config(cli.parse_args(["--config", str(yml)]))
    assert shipped.identity() == cli.to_config(cli.parse_args([])).identity()


def test_cli_refuses_unknown_yaml_keys_and_bad_values(tmp_path, capsys):
    from experiments import random_search as cli

    yml = tmp_path / "c.yaml"
    yml.write_text("trials: 3\nepocs: 2\n")
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["--config", str(yml)])
    assert exit_.value.code == 2 and "unknown option(s) ['epocs']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args(["--config", str(tmp_path / "missing.yaml")])
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["--budget-min-ms", "1", "--out-dir", str(tmp_path / "o")]) == 2
    assert "--budget-min-ms needs --budget-ms" in capsys.readouterr().err
    assert cli.main(["--trials", "0", "--out-dir", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_cli_reports_an_infeasible_budget_as_an_error(tmp_path, capsys, table_cache):
    from experiments import random_search as cli

    path, _ = table_cache
    (tmp_path / "o").mkdir()
    shutil.copy(path, tmp_path / "o" / TABLE_FILE)
    code = cli.main(["--budget-ms", "0.01", "--out-dir", str(tmp_path / "o"), "--image-size", "8", "--width-mult",
                     "0.25", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "error: no architecture meets the latency budget latency <= 0.01 ms" in err


# ----- what locks a folder ------------------------------------------------------------------------------------------
def test_a_wrong_data_path_fails_before_the_space_is_priced(tmp_path, monkeypatch):
    from hwnas.errors import DataError

    def no_pricing(*args, **kwargs):
        raise AssertionError("the space was priced before the data was checked")

    monkeypatch.setattr(hwnas, "load_latency_predictor", no_pricing)
    monkeypatch.setattr(LatencyTable, "build", no_pricing)
    out = tmp_path / "bad_data"
    cfg = RandomSearchConfig(out_dir=str(out), space_config=dict(SPACE_CONFIG),
                             data=DataConfig(name="cifar10", root=str(tmp_path / "nonexistent")), trials=2)
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        run_random_search(cfg, progress=False, train_fn=FakeTrain(), log=None)
    assert not (out / CONFIG_FILE).exists() and not (out / TABLE_FILE).exists()


def test_a_folder_without_finished_trials_is_not_locked(tmp_path, table_cache):
    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed()

    out = tmp_path / "no_trial"
    with pytest.raises(Killed):                             # stopped during its first trial: nothing finished
        _run(_cfg(out), table_cache, train=killed)
    assert (out / CONFIG_FILE).is_file() and read_trials(out / TRIALS_FILE) == []
    lines = []
    path, _ = table_cache
    shutil.copy(path, out / TABLE_FILE)
    result = run_random_search(_cfg(out, seed=1), progress=False, train_fn=FakeTrain(), log=lines.append)
    assert result.ran == [0, 1, 2] and json.loads((out / CONFIG_FILE).read_text())["seed"] == 1
    assert any("holds no finished trial of its earlier configuration (seed: was 0, now 1)" in line for line in lines)
    with pytest.raises(StoreError, match=r"seed: was 1, now 2"):   # now a trial has finished: locked
        _run(_cfg(out, seed=2), table_cache)
