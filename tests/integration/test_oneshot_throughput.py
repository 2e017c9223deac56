"""experiments/benchmarks/oneshot_throughput.py: the SPOS side-by-side report (no timing is asserted)."""

from __future__ import annotations

import json
import re

import pytest

from experiments.benchmarks import oneshot_throughput as ot


def test_quick_sets_the_goal_setting():
    args = ot.parser().parse_args(["--quick"])
    assert args.quick and ot.QUICK["image_size"] == 32 and ot.QUICK["batch_size"] == 64
    assert ot.QUICK["method"] == "spos" and ot.SPOS_PLAIN_LIMIT == 1.15


@pytest.mark.slow
def test_spos_side_by_side_reports_both_ratios_and_ends_with_the_ratio_line(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert ot.main(["--method", "spos", "--image-size", "8", "--batch-size", "4", "--steps", "2",
                    "--warmup-steps", "1", "--threads", "1", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out.read_text())
    ratios = result["spos_plain_ratios"]
    assert re.fullmatch(r"spos step / plain path x\d+\.\d\d", lines[-1])
    assert lines[-1] == f"spos step / plain path x{ratios['spos_step_over_plain']:.2f}"
    rows = {r["pipeline"]: r for r in result["rows"]}
    assert set(rows) == {"NNI 3.0 stock", "plain path/NNI", "hwnas", "plain path"}
    assert ratios["spos_step_over_plain"] == pytest.approx(rows["hwnas"]["ms_per_step"]
                                                           / rows["plain path"]["ms_per_step"])
    assert ratios["nni_step_over_plain"] == pytest.approx(rows["NNI 3.0 stock"]["ms_per_step"]
                                                          / rows["plain path/NNI"]["ms_per_step"])
    assert ratios["limit"] == 1.15 and ratios["clock"] == "wall"
    assert any("NNI 3.0 RandomOneShot step / its plain path" in line for line in lines)
