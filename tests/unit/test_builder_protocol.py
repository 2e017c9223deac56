"""Protocol as data and the statistic functions (synthetic numbers only; no timing asserted)."""

import json
import math

import numpy as np
import pytest

from hwnas.builder._protocol import (DEFAULT_PROTOCOL, QUICK_PROTOCOL, MeasureProtocol, get_statistic,
                                     stat_trimmed_mean, summarize)
from hwnas.builder._reference import reference_workload


@pytest.mark.parametrize("name, values, expected", [
    ("min", [3.0, 1.0, 2.0], 1.0),
    ("max", [3.0, 1.0, 2.0], 3.0),
    ("median", [5.0, 1.0, 3.0, 100.0], 4.0),
    ("mean", [1.0, 2.0, 3.0], 2.0),
    ("trimmed_mean", [float(v) for v in range(1, 11)], 5.5),
    ("p0", [4.0, 2.0, 8.0], 2.0),
    ("p50", [4.0, 2.0, 8.0], 4.0),
    ("p100", [4.0, 2.0, 8.0], 8.0),
    ("p10", list(np.arange(11.0)), 1.0),
    ("p2.5", [0.0, 40.0], 1.0),
])
def test_statistics_exact(name, values, expected):
    assert get_statistic(name)(values) == pytest.approx(expected)


def test_trimmed_mean_cuts_outliers():
    values = [1.0] * 9 + [1000.0]  # one slow run in ten
    assert stat_trimmed_mean(values, 0.1) == pytest.approx(1.0)
    assert stat_trimmed_mean([1.0, 2.0, 3.0], 0.1) == pytest.approx(2.0)  # n < 10: nothing cut
    with pytest.raises(ValueError):
        stat_trimmed_mean(values, 0.5)


@pytest.mark.parametrize("bad", ["mode", "p101", "p-1", "", "P10"])
def test_unknown_statistic(bad):
    with pytest.raises(ValueError):
        get_statistic(bad)


@pytest.mark.parametrize("values", [[], [1.0, math.nan], [math.inf]])
def test_statistic_rejects_empty_and_non_finite(values):
    with pytest.raises(ValueError):
        get_statistic("min")(values)


def test_summarize_keys():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s["n"] == 4 and s["min"] == 1.0 and s["max"] == 4.0 and s["median"] == 2.5


def test_protocol_json_roundtrip_and_id():
    p = MeasureProtocol(warmup=1, runs_per_block=4, blocks=2, statistic="p10", block_aggregate="min", threads=2)
    d = json.loads(json.dumps(p.to_dict()))
    assert d["id"] == p.id and d["schema"] == 1
    assert MeasureProtocol.from_dict(d) == p
    assert MeasureProtocol.from_dict(d).id == p.id
    assert p.id != DEFAULT_PROTOCOL.id
    assert MeasureProtocol().id == DEFAULT_PROTOCOL.id  # stable
    assert p.total_runs == 8


@pytest.mark.parametrize("kwargs", [{"warmup": -1}, {"runs_per_block": 0}, {"blocks": 0}, {"threads": 0},
                                    {"statistic": "mode"}, {"block_aggregate": "nope"}])
def test_protocol_validation(kwargs):
    with pytest.raises(ValueError):
        MeasureProtocol(**kwargs)


def test_aggregate_median_of_block_minima():
    p = MeasureProtocol(statistic="min", block_aggregate="median", blocks=3, runs_per_block=3)
    runs = [[5.0, 1.0, 9.0], [2.0, 8.0, 3.0], [7.0, 4.0, 6.0]]
    assert p.block_values(runs) == [1.0, 2.0, 4.0]
    assert p.aggregate(runs) == 2.0


def test_default_protocol_is_min_based():
    assert DEFAULT_PROTOCOL.statistic == "min" and DEFAULT_PROTOCOL.threads == 1
    assert QUICK_PROTOCOL.total_runs < DEFAULT_PROTOCOL.total_runs


def test_reference_workload_fixed_and_runs():
    import torch

    state = torch.get_rng_state()
    a, b = reference_workload(), reference_workload()
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched
    assert list(a) == list(b)
    for name, (module, shape) in a.items():
        assert not module.training
        with torch.no_grad():
            ya, yb = module(torch.ones(shape)), b[name][0](torch.ones(shape))
        assert torch.equal(ya, yb), name  # same seeds -> same weights
        assert torch.isfinite(ya).all()
