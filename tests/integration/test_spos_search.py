"""experiments/spos_search.py end to end on digits, tiny: train a few steps, evolve, write every output (slow)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import hwnas
import search_spaces as ss
from experiments import spos_search

pytestmark = pytest.mark.slow

TINY = ["--data", "digits", "--image-size", "16", "--width-mult", "0.25", "--epochs", "1", "--max-steps", "3",
        "--batch-size", "32", "--population", "4", "--generations", "2", "--parents", "2", "--n-mutation", "1",
        "--n-crossover", "1", "--bn-batches", "2", "--no-progress", "--no-measure", "--threads", "1",
        "--log-every", "1"]


def test_spos_search_end_to_end(tmp_path):
    out = tmp_path / "run"
    summary = spos_search.run(spos_search.parse_args([*TINY, "--out", str(out)]))
    for name in ("pareto.csv", "history.csv", "pareto.png", "best_arch.json", "best_subnet.pt", "search.json",
                 "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    assert summary["steps"] == 3

    doc = json.loads((out / "best_arch.json").read_text())
    arch = doc["arch"]
    assert doc["space"] == "spos" and doc["input_shape"] == [1, 3, 16, 16]
    assert doc["space_config"]["width_mult"] == 0.25 and doc["space_config"]["num_classes"] == 10
    space = ss.create_space("spos", input_size=16, num_classes=10, width_mult=0.25)
    ss.validate_arch(space, arch)
    predictor = hwnas.load_latency_predictor(spos_search.DEFAULT_PREDICTOR)
    table = hwnas.LatencyTable.build(space, predictor, input_shape=(1, 3, 16, 16), cache_dir=out / "tables")
    assert table.latency(arch) <= summary["budget_ms"]
    assert table.latency(arch) == pytest.approx(summary["predicted_latency_ms"])

    history = list(csv.DictReader(open(out / "history.csv", encoding="utf-8")))
    assert len(history) == summary["candidates"] >= 4
    assert all(float(r["latency_ms"]) <= summary["budget_ms"] for r in history)
    assert max(float(r["accuracy"]) for r in history) == pytest.approx(summary["accuracy"], abs=1e-6)

    # The saved subnet is the best architecture with its inherited weights (BN recalibrated), loadable safely.
    state = torch.load(out / "best_subnet.pt", weights_only=True)
    net = ss.build_subnet("spos", arch, config={"input_size": 16, "num_classes": 10, "width_mult": 0.25})
    net.load_state_dict(state)
    trained = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    key = next(k for k in state if k.startswith("blocks.s2_b0.") and "weight" in k and state[k].dim() == 4)
    src = "supernet.space.blocks.s2_b0." + arch["s2_b0"] + key[len("blocks.s2_b0"):]
    assert torch.equal(state[key], trained[src])

    # hwnas.export is part of this package: the best subnet is always exported, with its inherited weights
    export = summary["export"]
    assert export["path"] == str(out / "best_subnet.torchscript.pt") and export["method"] == "script"
    assert export["arch"] == arch and export["predictor"] == predictor.name
    assert export["predicted_ms"] == pytest.approx(predictor.predict(net.eval(), "torch", (1, 3, 16, 16)), rel=1e-9)
    assert export["measured_ms"] is None and export["ratio"] is None        # --no-measure
    scripted = torch.jit.load(export["path"])
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net.eval()(x), rtol=0, atol=1e-5)

    # Resuming a finished run trains nothing more and finds the same architecture with the same accuracy.
    again = spos_search.run(spos_search.parse_args([*TINY, "--out", str(out), "--resume", "--no-export"]))
    assert again["steps"] == 3
    assert again["best_arch"] == summary["best_arch"] and again["accuracy"] == summary["accuracy"]


def test_infeasible_budget_fails_before_training(tmp_path, capsys):
    code = spos_search.main([*TINY, "--out", str(tmp_path), "--budget-ms", "0.01"])
    assert code == 2
    assert "no architecture meets the latency budget" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()


def test_yaml_config_fills_defaults(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("budget_ms: 3.3\npopulation: 7\n", encoding="utf-8")
    args = spos_search.parse_args(["--config", str(cfg), "--population", "9"])
    assert args.budget_ms == 3.3 and args.population == 9
    cfg.write_text("bogus_option: 1\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        spos_search.parse_args(["--config", str(cfg)])
