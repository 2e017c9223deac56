"""SPOS supernet: single-path forward, budget-respecting sampling, weights out, per-candidate evaluation.

Resume equivalence of the Lightning module: tests/integration/test_spos_resume.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import search_spaces as ss
from hwnas.errors import ArchitectureError, InfeasibleBudgetError
from hwnas.nas import BudgetedSampler, LatencyBudget
from hwnas.oneshot._spos import SinglePathSupernet, SposSupernetModule, SubnetEvaluator, SupernetConfig
from hwnas.oneshot._trainer import ResidentLoader
from hwnas.tables import SCHEMA, SCHEMA_VERSION, LatencyTable

SIDE = 8  # 8x8 inputs keep the 20-block space fast on one CPU thread


def _space(seed: int = 0):
    torch.manual_seed(seed)
    return ss.create_space("spos", input_size=SIDE, num_classes=3, width_mult=0.25, dropout=0.0)


def _table(space) -> LatencyTable:
    """A table over the real labels with made-up, position-dependent latencies (a predictor is not under test)."""
    labels = ss.choices(space)
    ms = {"shuffle3": 0.10, "shuffle5": 0.12, "shuffle7": 0.15, "xception": 0.20}
    blocks = [{"label": label, "choices": names, "latency_ms": [ms[c] * (1 + 0.05 * i) for c in names],
               "flops": [1000] * len(names), "params": [100] * len(names)}
              for i, (label, names) in enumerate(labels.items())]
    return LatencyTable({
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "units": {"latency": "ms", "flops": "multiply-accumulates per image", "params": "count"},
        "space": {"name": "spos", "config": {}}, "input_shape": [1, 3, SIDE, SIDE],
        "predictor": {"name": "made-up", "checksum": "0"},
        "fixed": {"latency_ms": 0.5, "overhead_ms": 0.0, "flops": 0, "params": 0, "slots": 2}, "blocks": blocks})


@pytest.fixture(scope="module")
def space():
    return _space()


@pytest.fixture(scope="module")
def table(space):
    return _table(space)


@pytest.fixture(scope="module")
def budget(table):
    lo, hi = table.min_latency(), table.max_latency()
    return LatencyBudget(lo + 0.3 * (hi - lo))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, SIDE, SIDE, generator=g)
    y = torch.randint(0, 3, (48,), generator=g)
    return x, y


def test_single_path_forward_equals_the_built_subnet(space):
    supernet = SinglePathSupernet(space).eval()
    x = torch.randn(2, 3, SIDE, SIDE)
    for seed in (0, 1):
        arch = ss.random_arch(space, seed)
        with torch.no_grad():
            torch.testing.assert_close(supernet(x, arch), supernet.subnet(arch).eval()(x))


def test_parameter_names_are_the_spaces(space):
    supernet = SinglePathSupernet(space)
    assert {k.removeprefix("space.") for k in supernet.state_dict()} == set(space.state_dict())


def test_only_the_sampled_path_gets_gradients(space):
    supernet = SinglePathSupernet(space).train()
    arch = ss.random_arch(space, 3)
    supernet.zero_grad(set_to_none=True)
    supernet(torch.randn(4, 3, SIDE, SIDE), arch).sum().backward()
    for name, p in supernet.named_parameters():
        parts = name.split(".")
        if parts[1] == "blocks":
            label, choice = parts[2], parts[3]
            assert (p.grad is not None) == (arch[label] == choice), name
        else:
            assert p.grad is not None, name


def test_invalid_architecture_is_named(space):
    arch = dict(ss.random_arch(space, 0), s2_b1="shuffle9")
    with pytest.raises(ArchitectureError, match="s2_b1"):
        SinglePathSupernet(space)(torch.randn(1, 3, SIDE, SIDE), arch)


def test_sampled_paths_respect_the_budget_and_are_a_function_of_the_step(space, table, budget):
    module = SposSupernetModule(space, BudgetedSampler(table, budget), SupernetConfig(seed=1))
    archs = [module.sample_arch(step) for step in range(200)]
    assert all(table.latency(a) <= budget.max_ms for a in archs)
    assert archs[17] == module.sample_arch(17)
    assert len({tuple(a.values()) for a in archs}) > 150  # not one path over and over
    other = SposSupernetModule(space, BudgetedSampler(table, budget), SupernetConfig(seed=2))
    assert other.sample_arch(17) != archs[17]
    assert all(table.latency(a) <= budget.max_ms for a in module.val_archs)


def test_infeasible_budget_and_wrong_table_fail_at_construction(space, table):
    with pytest.raises(InfeasibleBudgetError):
        SposSupernetModule(space, BudgetedSampler(table, LatencyBudget(table.min_latency() / 2)))
    other = ss.create_space("proxyless", input_size=SIDE, num_classes=3, width_mult=0.25)
    with pytest.raises(ArchitectureError, match="another space"):
        SposSupernetModule(other, BudgetedSampler(table, LatencyBudget(10.0)))


def test_evaluator_recalibrates_per_candidate_without_touching_the_supernet(space, data):
    x, y = data
    train = ResidentLoader([x, y], 16, shuffle=True, seed=0)
    val = ResidentLoader([x, y], 24, shuffle=False)
    before = {k: v.clone() for k, v in space.state_dict().items()}
    evaluator = SubnetEvaluator(SinglePathSupernet(space), train, val, n_bn_batches=2)
    arch = ss.random_arch(space, 5)
    net = evaluator.subnet(arch)
    shared = ss.build_subnet(space, arch)
    assert not torch.equal(net.head.bn.running_mean, shared.head.bn.running_mean)
    acc = evaluator(arch)
    assert 0.0 <= acc <= 1.0 and evaluator.evaluations == 1
    after = space.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    with torch.no_grad():  # the accuracy is that of the recalibrated subnet
        expected = (net(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(expected)


def test_config_validation():
    with pytest.raises(ValueError, match="schedule"):
        SupernetConfig(schedule="step")
    with pytest.raises(ValueError, match="label_smoothing"):
        SupernetConfig(label_smoothing=1.0)


def test_lr_schedule_decays_linearly_to_zero():
    from hwnas.oneshot._spos import _lr_factor

    assert [_lr_factor(s, 10, 0, "linear") for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
    assert _lr_factor(0, 10, 2, "cosine") == 0.5 and _lr_factor(2, 10, 2, "cosine") == 1.0
    assert np.isclose(_lr_factor(10, 10, 2, "cosine"), 0.0)


def test_paths_do_not_depend_on_the_order_steps_are_asked_for(space, table, budget):
    # paths are drawn PATH_CHUNK at a time; step t's path is the same whichever steps were asked before
    from hwnas.oneshot._spos import PATH_CHUNK

    ordered = SposSupernetModule(space, BudgetedSampler(table, budget), SupernetConfig(seed=3))
    reference = {t: ordered.sample_arch(t) for t in range(PATH_CHUNK + 5)}
    jumping = SposSupernetModule(space, BudgetedSampler(table, budget), SupernetConfig(seed=3))
    for t in (PATH_CHUNK + 4, 5, PATH_CHUNK - 1, 0, PATH_CHUNK, 5):
        assert jumping.sample_arch(t) == reference[t]
    assert reference[0] != reference[PATH_CHUNK] or reference[1] != reference[PATH_CHUNK + 1]


def test_checkpoint_of_another_sampling_scheme_is_refused(space, table, budget):
    from hwnas.errors import HwnasError

    module = SposSupernetModule(space, BudgetedSampler(table, budget))
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    module.on_load_checkpoint(checkpoint)   # its own loads
    checkpoint["hwnas_spos"].pop("sampling")   # as written before paths were drawn in chunks
    with pytest.raises(HwnasError, match="sampling"):
        module.on_load_checkpoint(checkpoint)
