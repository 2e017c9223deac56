"""The shared end of a search (hwnas.nas._report): ranking, table, files, the best network reloaded."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import TensorDataset

import search_spaces as ss
from hwnas.errors import HwnasError
from hwnas.nas import _report
from hwnas.nas._budget import LatencyBudget
from hwnas.nas._report import finish_search, format_table, rank_records, short_arch
from hwnas.train import evaluate

SPACE, CONFIG = "proxyless", {"input_size": 8, "num_classes": 10, "width_mult": 0.25}
BUDGET = LatencyBudget(2.0)


def _rec(trial, acc, lat, arch=None, flops=1_000_000, params=50_000):
    return {"trial": trial, "arch": arch or {"s1_b0": "k3e3"}, "default": acc, "latency_ms": lat, "flops": flops,
            "params": params}


# ----- ranking and formatting ---------------------------------------------------------------------------------------
def test_rank_by_accuracy_then_latency_within_budget_only():
    recs = [_rec(0, 0.80, 1.5), _rec(1, 0.90, 1.9), _rec(2, 0.95, 2.5), _rec(3, 0.90, 1.2),
            _rec(4, math.nan, 1.0), _rec(5, None, 1.0), _rec(6, 0.70, 0.5)]
    ranked = rank_records(recs, BUDGET)
    assert [r["trial"] for r in ranked] == [3, 1, 0, 6]              # 2 is over budget, 4 and 5 have no accuracy
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4]
    assert [r["trial"] for r in rank_records(recs, BUDGET, top_k=2)] == [3, 1]
    assert [r["trial"] for r in rank_records(recs, LatencyBudget(2.0, min_ms=1.0))] == [3, 1, 0]
    assert "rank" not in recs[3]                                      # the caller's records are not modified


def test_malformed_records_are_named():
    with pytest.raises(HwnasError, match=r"lacks \['latency_ms'"):
        rank_records([{"trial": 0, "arch": {}, "default": 0.5}], BUDGET)
    with pytest.raises(HwnasError, match=r"repeat trial id\(s\) \[1\]"):
        rank_records([_rec(1, 0.5, 1.0), _rec(1, 0.6, 1.0)], BUDGET)
    with pytest.raises(HwnasError, match="not a dict"):
        rank_records([("trial", 0)], BUDGET)


def test_short_arch_groups_stages():
    arch = {"s1_b0": "k3e6", "s1_b1": "skip", "s2_b0": "k7e3"}
    assert short_arch(arch) == "k3e6 - | k7e3"
    assert short_arch({"s1_b0": "shuffle3", "s1_b1": "xception", "s2_b0": "shuffle7"}) == "s3 x | s7"
    assert short_arch({"layer_1": "a", "layer_2": "b"}) == "a b"


def test_table_has_one_row_per_record_with_units():
    top = rank_records([_rec(7, 0.9123, 1.2345, flops=12_340_000, params=456_000)], BUDGET)
    text = format_table(top)
    head, rule, row = text.splitlines()
    assert all(w in head for w in ("rank", "trial", "accuracy", "latency ms", "MACs (M)", "params (M)", "arch"))
    assert row.split()[:6] == ["1", "7", "0.9123", "1.234", "12.34", "0.456"]
    assert "no trial within the budget" in format_table([])


# ----- finish_search ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three subnets with random weights saved as trials and their real accuracy on a small validation set,
    labelled so that trial 1 is right on every image."""
    torch.manual_seed(0)
    val = TensorDataset(torch.randn(30, 3, 8, 8), torch.arange(30) % 10)
    weights = tmp_path_factory.mktemp("weights")
    recs = []
    for trial, lat in enumerate([1.5, 1.0, 1.8]):
        arch = ss.random_arch(SPACE, seed=trial)
        net = ss.build_subnet(SPACE, arch, config=CONFIG).eval()
        torch.save(net.state_dict(), weights / f"{trial}.pt")
        recs.append({**_rec(trial, None, lat, arch=arch), "seconds": 1.0})
    # make trial 1 the best by construction: label the validation images with its predictions
    net1 = ss.build_subnet(SPACE, recs[1]["arch"], config=CONFIG).eval()
    net1.load_state_dict(torch.load(weights / "1.pt"))
    with torch.no_grad():
        pred = net1(val.tensors[0]).argmax(1)
    val = TensorDataset(val.tensors[0], pred.clone())                      # trial 1 is 100% right on it
    for r in recs:
        net = ss.build_subnet(SPACE, r["arch"], config=CONFIG).eval()
        net.load_state_dict(torch.load(weights / f"{r['trial']}.pt"))
        r["default"] = evaluate(net, val)
    assert recs[1]["default"] == 1.0 and max(r["default"] for r in recs) == 1.0
    return recs, weights, val


@pytest.fixture
def no_export(monkeypatch):
    monkeypatch.setattr(_report, "_export_fn", lambda: None)


def test_writes_the_files_and_reloads_the_best(trained, tmp_path, no_export):
    recs, weights, val = trained
    rep = finish_search(recs, space=SPACE, space_config=CONFIG, budget=BUDGET, out_dir=tmp_path, top_k=2,
                        weights=weights, val_data=val, print_fn=None)
    assert rep.best["trial"] == 1 and [r["rank"] for r in rep.top] == [1, 2] and len(rep.top) == 2
    assert rep.reload_accuracy == 1.0 and rep.n_trials == 3 and rep.n_within_budget == 3
    doc = json.loads((tmp_path / "topk.json").read_text())
    assert doc["budget"] == {"max_ms": 2.0, "min_ms": None} and doc["space"]["config"] == CONFIG
    assert [r["trial"] for r in doc["top"]] == [r["trial"] for r in rep.top]
    assert doc["units"]["latency_ms"].startswith("ms")
    assert (tmp_path / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = json.loads((tmp_path / "best" / "arch.json").read_text())
    assert best["arch"] == recs[1]["arch"] and best["space"] == SPACE
    net = ss.build_subnet(SPACE, best["arch"], config=CONFIG)
    net.load_state_dict(torch.load(tmp_path / "best" / "state_dict.pt", weights_only=True), strict=True)
    assert evaluate(net, val) == 1.0
    assert set(rep.files) == {"topk_json", "plot", "best_arch", "best_state_dict"}
    assert any("export_subnet is not available" in n for n in rep.notes)


def test_prints_the_table_and_where_the_files_are(trained, tmp_path, no_export):
    recs, weights, _ = trained
    lines = []
    finish_search(recs, space=SPACE, space_config=CONFIG, budget=BUDGET, out_dir=tmp_path, weights=weights,
                  print_fn=lines.append)
    text = "\n".join(lines)
    assert "latency ms" in text and "best: trial 1" in text and str(tmp_path / "topk.json") in text


def test_over_budget_best_is_never_chosen(trained, tmp_path, no_export):
    recs, weights, val = trained
    rep = finish_search(recs, space=SPACE, space_config=CONFIG, budget=LatencyBudget(1.6), out_dir=tmp_path,
                        weights=weights, val_data=val, print_fn=None)
    assert rep.best["trial"] == 1 and all(r["latency_ms"] <= 1.6 for r in rep.top) and rep.n_within_budget == 2
    rep = finish_search(recs, space=SPACE, space_config=CONFIG, budget=LatencyBudget(0.5), out_dir=tmp_path / "none",
                        weights=weights, print_fn=None)
    assert rep.best is None and rep.top == [] and (tmp_path / "none" / "search.png").is_file()
    assert not (tmp_path / "none" / "best").exists() and "no trial is within the budget" in rep.notes[0]


def test_weights_from_a_callable_or_missing(trained, tmp_path, no_export):
    recs, weights, val = trained
    rep = finish_search(recs, space=SPACE, space_config=CONFIG, budget=BUDGET, out_dir=tmp_path,
                        weights=lambda t: torch.load(weights / f"{t}.pt"), val_data=val, print_fn=None)
    assert rep.reload_accuracy == 1.0 and rep.files["best_state_dict"].is_file()
    rep = finish_search(recs, space=SPACE, space_config=CONFIG, budget=BUDGET, out_dir=tmp_path / "w", weights=None,
                        print_fn=None)
    assert "best_state_dict" not in rep.files and rep.files["best_arch"].is_file()
    assert "only its architecture is saved" in rep.notes[0]


def test_weights_of_another_trial_are_refused(trained, tmp_path, no_export):
    recs, weights, val = trained
    other = [r for r in recs if r["trial"] != 1 and r["arch"] != recs[1]["arch"]][0]
    with pytest.raises(HwnasError, match="do not fit its architecture"):
        finish_search(recs, space=SPACE, space_config=CONFIG, budget=BUDGET, out_dir=tmp_path,
                      weights=lambda t: weights / f"{other['trial']}.pt", print_fn=None)


def test_a_reload_that_does_not_reproduce_the_accuracy_is_an_error(trained, tmp_path, no_export):
    recs, weights, val = trained
    wrong = TensorDataset(val.tensors[0], (val.tensors[1] + 1) % 10)    # trial 1 is now 0% right
    with pytest.raises(HwnasError, match="evaluates to 0.0000, but its trial recorded 1.0000"):
        finish_search(recs, space=SPACE, space_config=CONFIG, budget=BUDGET, out_dir=tmp_path, weights=weights,
                      val_data=wrong, print_fn=None)


def test_unreadable_weights_file_is_named(trained, tmp_path, no_export):
    recs, _, _ = trained
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "1.pt").write_bytes(b"torn")
    with pytest.raises(HwnasError, match=r"cannot read the weights of trial 1 from .*1\.pt"):
        finish_search(recs, space=SPACE, space_config=CONFIG, budget=BUDGET, out_dir=tmp_path,
                      weights=tmp_path / "w", print_fn=None)


def test_export_is_called_with_the_best_and_its_weights(trained, tmp_path, monkeypatch):
    recs, weights, val = trained
    calls = []

    class Report:
        path, method, parity_max_abs_diff, predicted_ms, measured_ms = "x.pt", "script", 0.0, 1.0, 1.1

    def fake_export(space, arch, *, out, weights, config, predictor, measure):
        calls.append((space, arch, out, config, predictor, measure, sorted(weights)))
        return Report()

    monkeypatch.setattr(_report, "_export_fn", lambda: fake_export)
    rep = finish_search(recs, space=SPACE, space_config=CONFIG, budget=BUDGET, out_dir=tmp_path, weights=weights,
                        predictor="pred", measure=False, print_fn=None)
    (space, arch, out, config, predictor, measure, keys), = calls
    assert (space, arch, out, config, predictor, measure) == (SPACE, recs[1]["arch"], tmp_path / "best" / "model.pt",
                                                              CONFIG, "pred", False)
    assert keys == sorted(torch.load(weights / "1.pt"))
    assert rep.export is not None and str(rep.files["best_model"]) == "x.pt"
    assert "exported x.pt" in rep.summary()
