"""experiments/benchmarks/cold_weights.py: three kernel-label methods side by side (no timing is asserted)."""

from __future__ import annotations

import json
import math

import pytest

from experiments.benchmarks import cold_weights as cw


def test_a_network_is_named_with_its_resolution():
    name, px, model = cw._network("resnet18@40")
    assert (name, px) == ("resnet18", 40) and not model.training
    with pytest.raises(SystemExit, match="NAME@RESOLUTION"):
        cw._network("resnet18")


def test_the_summary_gives_each_method_its_ratio_and_trends():
    rows = [{"network": f"n@{px}", "family": "n", "px": px, "weight_mb": 10.0 + px, "measured": 2.0,
             "hot": 1.0 + px / 100, "cold": 2.0, "profile": None, "failed": 0} for px in (32, 64, 128)]
    s = cw._summary(rows)
    assert set(s) == {"n", "ALL"} and s["ALL"]["n"] == 3
    assert s["n"]["cold"]["ratio_median"] == 1.0 and s["n"]["cold"]["within10"] == 100.0
    assert s["n"]["hot"]["ratio_median"] == pytest.approx(0.82) and s["n"]["hot"]["within10"] == 0.0
    assert s["n"]["hot"]["spearman_resolution"] == pytest.approx(1.0)
    assert s["n"]["profile"]["ratio_median"] is None
    assert "n@32" in cw._table(rows, s)


@pytest.mark.slow
def test_a_smoke_run_writes_every_method_for_every_network(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert cw.main(["--networks", "resnet18@32", "--quick", "--store", str(tmp_path / "k.jsonl"),
                    "--json", str(out), "--plot", str(tmp_path / "c.png")]) == 0
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    assert row["failed"] == 0 and row["kernels"] > 10
    for m in ("measured", "hot", "cold", "profile"):
        assert math.isfinite(row[m]) and row[m] > 0, m
    assert doc["cache_bytes"] > 0 and (tmp_path / "c.png").stat().st_size > 0
    # a rerun measures nothing again: every kernel is in the store
    stored = (tmp_path / "k.jsonl").read_text().count("\n")
    assert cw.main(["--networks", "resnet18@32", "--quick", "--store", str(tmp_path / "k.jsonl")]) == 0
    assert (tmp_path / "k.jsonl").read_text().count("\n") == stored
    assert "resnet18@32" in capsys.readouterr().out


@pytest.mark.slow
def test_a_torchscript_run_times_the_layout_conversions_and_profiles_the_primitives(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert cw.main(["--backend", "torchscript-cpu", "--predictor", "torchscript-cpu-amd-epyc-avx512-f25m17",
                    "--networks", "googlenet@32", "--quick", "--store", str(tmp_path / "k.jsonl"),
                    "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["failed"] == 0   # to_backend / to_plain kernels are timed as halves of a conversion pair
    stored = [json.loads(line) for line in (tmp_path / "k.jsonl").read_text().splitlines()]
    assert {"to_backend", "to_plain"} <= {r["type"] for r in stored}
    assert 0 <= row["weight_reorder_ms"] <= row["profile"]   # weights reorder per run where formats differ
    assert row["profile_kinds"]["convolution"] > 0
    assert "oneDNN profiles" in capsys.readouterr().out
