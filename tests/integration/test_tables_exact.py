"""LatencyTable against whole-subnet prediction on many random architectures (slow).

For each space at 224 px (ImageNet config) and 32 px (small-input variant), 200 random architectures: the
table's latency must match ``predictor.predict(build_subnet(space, arch))`` within 1 % (it is exact up to float
rounding; the maximum relative error is printed, run with ``-s`` to see it), and FLOPs / parameters must equal
``count_flops`` / ``count_params``. The predictor is the unit tests' fake (see ``tests/unit/test_tables.py``).
"""

from __future__ import annotations

import random

import pytest

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
        assert table.flops(arch) == ss.count_flops(space, arch, side)
        assert table.params(arch) == ss.count_params(space, arch)
    print(f"\n{name} {side}px: max relative error table vs whole subnet over {N_ARCHS} archs = {worst:.3e} "
          f"(latency range {from_table.min():.3f}..{from_table.max():.3f} ms)")
    assert worst < 0.01, f"max relative error {worst:.3g} at {worst_arch}"
