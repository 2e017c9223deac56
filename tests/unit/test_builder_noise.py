"""The noise study's analysis on synthetic numbers (the script itself is run by hand, see its docstring)."""

import pytest

from experiments.benchmarks.noise import agreement, analyse, parse_args, recommend, settle_runs, value


def test_agreement():
    a = agreement([1.0, 1.04, 1.2])
    assert a["spread"] == pytest.approx(0.2)
    assert a["within_5"] == pytest.approx(1 / 3) and a["within_10"] == pytest.approx(1 / 3)


def test_value_median_of_block_stat():
    assert value([[3.0, 1.0], [2.0, 5.0], [9.0, 4.0]], "min") == 2.0


def test_analyse_and_recommend_prefers_stable_statistic():
    # min is stable across processes, mean is not
    procs = [{"models": {"m": {"runs_ms": [[1.0, 1.0 + j], [1.0, 2.0 + 3 * j]]}},
              "reference": {"r": [[0.5, 0.5]]}} for j in range(3)]
    s = analyse(procs, ["m"], ["min", "mean"])
    assert s["m"]["min"]["spread"] == 0.0 and s["m"]["mean"]["spread"] > 0.5
    assert recommend(s, ["min", "mean"])["statistic"] == "min"


def test_args():
    a = parse_args(["--models", "tiny_convnet, resnet18", "--processes", "2"])
    assert a.models == ["tiny_convnet", "resnet18"] and a.processes == 2
    with pytest.raises(SystemExit):
        parse_args(["--processes", "1"])


def test_settle_runs():
    assert settle_runs([80.0, 30.0, 10.4, 12.0, 10.1], 10.0) == 2
    assert settle_runs([80.0, 10.0, 10.0, 60.0, 10.0], 10.0) == 1  # a later spike is noise, not warm-up
    assert settle_runs([10.0, 10.0], 10.0) == 0
    assert settle_runs([], 10.0) == 0
