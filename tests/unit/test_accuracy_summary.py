"""The predictor-accuracy benchmark's summary: the keys a script reads, computed from the rows (issue 14)."""

import pytest

from experiments.benchmarks.predictor_accuracy import _single_pass_agreement, _summary

KEYS = {"noise_within10", "raw_within10", "cal_cv_within10", "lofo_within10", "flops_within10",
        "op_lookup_within10", "raw_sum_ratio_median", "kendall_tau"}


def _row(family, side, measured, raw, cal, passes):
    return {"family": family, "side": side, "measured_ms": measured, "hwnas_raw": raw, "hwnas_cal_cv": cal,
            "hwnas_lofo": cal * 1.2, "flops_lofo": measured * 2, "op_lookup": None, "pass_ms": passes,
            "noise_within10": _single_pass_agreement(passes)}


def test_noise_is_a_single_pass_against_the_median_of_the_others():
    assert _single_pass_agreement([10.0]) is None
    assert _single_pass_agreement([10.0, 10.5, 10.2]) == 1.0
    assert _single_pass_agreement([10.0, 10.1, 10.2, 13.0]) == pytest.approx(3 / 4)   # the fourth pass is off


def test_summary_keys_and_values():
    rows = [_row("a", s, m, 0.8 * m, m * 1.05, [m, m * 1.02, m * 0.99]) for s, m in ((64, 1.0), (96, 2.0),
                                                                                       (128, 4.0), (160, 8.0))]
    rows += [_row("b", 64, 3.0, 3.0, 9.0, [3.0, 4.0])]
    s = _summary(rows, ["a", "b"])
    assert set(s) == {"all", "families"} and set(s["families"]) == {"a", "b"}
    a = s["families"]["a"]
    assert KEYS <= set(a) and a["n"] == 4
    assert a["noise_within10"] == 100.0 and a["cal_cv_within10"] == 100.0 and a["lofo_within10"] == 0.0
    assert a["raw_within10"] == 0.0 and a["flops_within10"] == 0.0 and a["op_lookup_within10"] is None
    assert a["raw_sum_ratio_median"] == pytest.approx(0.8) and a["kendall_tau"] == pytest.approx(1.0)
    b = s["families"]["b"]
    assert b["noise_within10"] == 0.0 and b["kendall_tau"] is None      # one network: no ranking
    assert s["all"]["n"] == 5 and s["all"]["cal_cv_within10"] == pytest.approx(80.0)
