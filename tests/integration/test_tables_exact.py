"""LatencyTable against whole-subnet prediction on many random architectures (slow).

For each space at 224 px (ImageNet config) and 32 px (small-input variant), 200 random architectures: the
table's latency must match ``predictor.predict(build_subnet(space, arch))`` to 1e-9 relative (it is exact up to
float rounding; the maximum relative error is printed, run with ``-s`` to see it), and FLOPs / parameters must
equal ``count_macs`` / ``count_params``. The predictor is the unit tests' fake (see ``tests/unit/test_tables.py``).

The same exactness at 32 px with every embedded predictor: tree regressors, calibration factors and additive
terms, per-call overhead and each predictor's own fusion rules.
"""

from __future__ import annotations

import functools
import random

import pytest

import hwnas
import search_spaces as ss
from hwnas.tables import LatencyTable
from tests.unit.test_tables import fake_predictor

N_ARCHS = 200
CONFIGS = {
    ("spos", 224): {},
    ("spos", 32): {"input_size": 32, "num_classes": 10},
    ("proxyless", 224): {},
    ("proxyless", 32): {"input_size": 32, "num_classes": 10},
}


@pytest.mark.slow
@pytest.mark.parametrize("name,side", list(CONFIGS))
def test_table_matches_whole_subnet_prediction(name, side):
    pred = fake_predictor()
    space = ss.create_space(name, **CONFIGS[name, side]).eval()
    shape = (1, 3, side, side)
    table = LatencyTable.build(space, pred, shape)
    rng = random.Random(2024)
    archs = [ss.random_arch(space, rng) for _ in range(N_ARCHS)]
    from_table = table.latency_batch(archs)
    worst, worst_arch = 0.0, None
    for arch, lat in zip(archs, from_table):
        full = pred.predict(ss.build_subnet(space, arch), "torch", shape)
        rel = abs(lat - full) / full
        if rel >= worst:
            worst, worst_arch = rel, arch
        assert table.macs(arch) == ss.count_macs(space, arch, side)
        assert table.params(arch) == ss.count_params(space, arch)
    print(f"\n{name} {side}px: max relative error table vs whole subnet over {N_ARCHS} archs = {worst:.3e} "
          f"(latency range {from_table.min():.3f}..{from_table.max():.3f} ms)")
    assert worst < 1e-9, f"max relative error {worst:.3g} at {worst_arch}"


EMBEDDED = [p["name"] for p in hwnas.list_latency_predictors() if p.get("source", "embedded") == "embedded"]
N_EMBEDDED_ARCHS = 20


@functools.lru_cache(maxsize=None)
def _embedded(name: str):
    return hwnas.load_latency_predictor(name)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*(describes another machine|this machine differs).*")
@pytest.mark.parametrize("space_name", ["spos", "proxyless"])
@pytest.mark.parametrize("predictor_name", EMBEDDED)
def test_table_matches_whole_subnet_prediction_with_embedded_predictors(predictor_name, space_name):
    assert EMBEDDED, "no embedded predictor"
    pred = _embedded(predictor_name)
    space = ss.create_space(space_name, **CONFIGS[space_name, 32]).eval()
    shape = (1, 3, 32, 32)
    table = LatencyTable.build(space, pred, shape)
    rng = random.Random(2025)
    archs = [ss.random_arch(space, rng) for _ in range(N_EMBEDDED_ARCHS)] + [table.fastest_arch(),
                                                                           table.slowest_arch()]
    worst = 0.0
    for arch, lat in zip(archs, table.latency_batch(archs)):
        full = pred.predict(ss.build_subnet(space, arch), "torch", shape)
        worst = max(worst, abs(lat - full) / full)
        assert worst < 1e-9, f"{predictor_name}: relative error {abs(lat - full) / full:.3g} at {arch}"
    print(f"\n{predictor_name} {space_name} 32px: max relative error {worst:.3e} over {len(archs)} archs")
    if pred.metadata.get("calibration"):
        assert pred.kernel_scale or pred.kernel_terms   # the calibrated path is the one checked
