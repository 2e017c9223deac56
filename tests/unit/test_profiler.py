"""LatencyProfiler: NNI's profiler interface over a latency table, exact, and accepted by NNI's adapters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nni.nas.oneshot.pytorch.profiler import ExpectationProfilerPenalty, RangeProfilerFilter
from nni.nas.profiler import ExpressionProfiler, Profiler
from nni.nas.space import SimplifiedModelSpace

import search_spaces as ss
from hwnas.errors import ArchitectureError
from hwnas.nas._profiler import LatencyProfiler

from tests._tables import SMALL, spos_table  # noqa: E402  (shared synthetic table)


@pytest.fixture(scope="module")
def space():
    return ss.create_space("spos", **SMALL)


@pytest.fixture(scope="module")
def table():
    return spos_table()


@pytest.fixture(scope="module")
def archs(space):
    return [ss.random_arch(space, seed) for seed in range(40)]


def test_profiler_is_an_nni_expression_profiler_and_profile_is_the_table_lookup(table, archs):
    profiler = LatencyProfiler(table)
    assert isinstance(profiler, ExpressionProfiler) and isinstance(profiler, Profiler)
    for arch in archs:
        assert profiler.profile(arch) == table.latency(arch)      # exact, not approximately
        assert profiler.expression.evaluate(arch) == pytest.approx(table.latency(arch), rel=1e-12)


def test_profile_takes_nni_samples_with_label_keys(space, table):
    model = SimplifiedModelSpace.from_model(space).random(random_state=np.random.RandomState(1))
    arch = {str(k): v for k, v in model.sample.items()}
    assert LatencyProfiler(table, space).profile(model.sample) == table.latency(arch)


def test_profile_rejects_an_architecture_the_table_does_not_have(table, archs):
    bad = dict(archs[0], s1_b0="k3e3")
    with pytest.raises(ArchitectureError, match="s1_b0"):
        LatencyProfiler(table).profile(bad)


def test_range_profiler_filter_accepts_exactly_by_the_table(table, archs):
    lat = np.array([table.latency(a) for a in archs])
    hi, lo = float(np.median(lat)), float(np.quantile(lat, 0.2))
    keep = RangeProfilerFilter(LatencyProfiler(table), min=lo, max=hi)
    assert [keep(a) for a in archs] == [bool(lo <= v <= hi) for v in lat]
    assert 0 < sum(keep(a) for a in archs) < len(archs)


def test_expectation_penalty_takes_the_profiler_and_matches_the_table_expectation(table):
    rng = np.random.default_rng(0)
    probs, sample = {}, {}
    for label, names in table.choices.items():
        p = rng.dirichlet(np.ones(len(names)))
        probs[label] = torch.tensor(p, dtype=torch.float64)
        sample[label] = dict(zip(names, p.tolist()))
    penalty = ExpectationProfilerPenalty(LatencyProfiler(table), baseline=2.0)
    expected = float(table.expected_latency(probs))
    # NNI sums the expectation in float32; the table's expectation is float64 here.
    assert penalty.profile(sample) == pytest.approx(expected, rel=1e-6)
    loss, details = penalty(torch.tensor(1.0), sample)
    assert details["penalty"] == pytest.approx(expected, rel=1e-6)
    assert float(loss) == pytest.approx(1.0 + (expected / 2.0 - 1.0), rel=1e-6)
    onehot = {label: {name: float(name == arch_choice) for name in names}
              for (label, names), arch_choice in zip(table.choices.items(), table.fastest_arch().values())}
    assert penalty.profile(onehot) == pytest.approx(table.min_latency(), rel=1e-6)


def test_profiler_checks_the_model_space_it_is_given(table, space):
    LatencyProfiler(table, space)   # the space of the table: fine
    with pytest.raises(ArchitectureError, match="does not fit"):
        LatencyProfiler(table, ss.create_space("proxyless", **SMALL))
