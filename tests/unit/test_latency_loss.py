"""LatencyLoss: expected latency against the table, exact gradients (central differences), both forms, errors."""

from __future__ import annotations

import math

import pytest
import torch

from hwnas.errors import ArchitectureError
from hwnas.nas._latency_loss import LatencyLoss, LatencyLossConfig
from hwnas.tables import SCHEMA, SCHEMA_VERSION, LatencyTable

LATENCIES = {"a": [1.0, 2.5, 4.0], "b": [0.5, 3.0, 0.25, 6.0], "c": [2.0, 0.01]}
FIXED_MS = 1.5


def small_table() -> LatencyTable:
    """Three labels with 3, 4 and 2 choices (so the padded matrix has masked entries)."""
    blocks = [{"label": label, "choices": [f"{label}{j}" for j in range(len(ms))], "latency_ms": ms,
               "flops": [1] * len(ms), "params": [1] * len(ms)} for label, ms in LATENCIES.items()]
    return LatencyTable({
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "units": {"latency": "ms"},
        "space": {"name": "toy", "config": {}}, "input_shape": [1, 3, 8, 8],
        "predictor": {"name": "toy", "checksum": "0"},
        "fixed": {"latency_ms": FIXED_MS, "flops": 0, "params": 0}, "blocks": blocks})


@pytest.fixture(scope="module")
def proxyless_table(tmp_path_factory):
    import hwnas
    import search_spaces as ss

    space = ss.create_space("proxyless", input_size=32, num_classes=10, width_mult=0.25)
    return hwnas.LatencyTable.build(space, hwnas.load_latency_predictor("torchscript-cpu-xeon"),
                                    cache_dir=tmp_path_factory.mktemp("tables"))


def random_alpha(table: LatencyTable, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (len(table.labels), int(table.n_choices.max()))
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).requires_grad_()


def central_differences(f, alpha: torch.Tensor, h: float = 1e-4) -> torch.Tensor:
    grad = torch.zeros_like(alpha)
    with torch.no_grad():
        for index in torch.cartesian_prod(*(torch.arange(n) for n in alpha.shape)):
            i = tuple(index.tolist())
            plus, minus = alpha.clone(), alpha.clone()
            plus[i] += h
            minus[i] -= h
            grad[i] = (f(plus) - f(minus)) / (2 * h)
    return grad


def check_gradient(loss: LatencyLoss, alpha: torch.Tensor, ce: torch.Tensor) -> float:
    """Largest relative error of autograd against central differences over every valid entry of alpha."""
    value = loss(ce, alpha)
    (auto,) = torch.autograd.grad(value, alpha)
    numeric = central_differences(lambda a: loss(ce, a), alpha.detach())
    mask = loss.mask
    assert torch.all(auto[~mask] == 0), "masked (padding) entries must get no gradient"
    rel = (auto - numeric).abs()[mask] / numeric.abs()[mask].clamp_min(1e-12)
    assert numeric.abs()[mask].min() > 1e-8, "test needs non-vanishing gradients to be meaningful"
    return float(rel.max())


def test_expected_latency_matches_table_and_is_exact_for_one_hot():
    table = small_table()
    loss = LatencyLoss(table, LatencyLossConfig(target_ms=5.0, mode="add#linear"))
    alpha = random_alpha(table)
    probs = loss.probs(alpha)
    assert torch.allclose(probs.sum(1), torch.ones(3, dtype=torch.float64))
    per_label = {k: probs[i, :len(c)] for i, (k, c) in enumerate(table.choices.items())}
    expected = float(loss.expected_latency(alpha))
    assert expected == pytest.approx(float(table.expected_latency(per_label)), rel=1e-12)
    manual = FIXED_MS + sum(float(p @ torch.tensor(LATENCIES[k], dtype=torch.float64)) for k, p in per_label.items())
    assert expected == pytest.approx(manual, rel=1e-12)
    # A dict of per-label parameters gives the same value as the padded matrix.
    as_dict = {k: alpha[i, :len(c)] for i, (k, c) in enumerate(table.choices.items())}
    assert float(loss.expected_latency(as_dict)) == pytest.approx(expected, rel=1e-12)
    # Near one-hot probabilities: the latency of that architecture.
    arch = {"a": "a2", "b": "b1", "c": "c0"}
    hot = torch.full_like(alpha, -60.0)
    for i, (k, c) in enumerate(table.choices.items()):
        hot[i, c.index(arch[k])] = 60.0
    assert float(loss.expected_latency(hot)) == pytest.approx(table.latency(arch), rel=1e-9)


@pytest.mark.parametrize("mode", ["mul#log", "add#linear"])
def test_gradient_matches_central_differences_small_table(mode):
    table = small_table()
    loss = LatencyLoss(table, LatencyLossConfig(target_ms=3.0 * FIXED_MS, mode=mode, lam=0.7))
    ce = torch.tensor(1.3, dtype=torch.float64)
    for seed in range(3):
        assert check_gradient(loss, random_alpha(table, seed), ce) < 1e-6


@pytest.mark.parametrize("mode", ["mul#log", "add#linear"])
def test_gradient_matches_central_differences_proxyless_table(proxyless_table, mode):
    """Every architecture parameter of the real ProxylessNAS space (21 labels x 7 choices) on the embedded predictor."""
    table = proxyless_table
    target = 0.5 * (table.min_latency() + table.max_latency())
    loss = LatencyLoss(table, LatencyLossConfig(target_ms=target, mode=mode))
    ce = torch.tensor(2.1, dtype=torch.float64)
    err = check_gradient(loss, random_alpha(table, seed=1, scale=0.5), ce)
    assert err < 1e-3


def test_forms_match_reference_formulas():
    table = small_table()
    alpha = random_alpha(table, 2)
    ce = torch.tensor(0.8, dtype=torch.float64)
    ref = 4.0
    lin = LatencyLoss(table, LatencyLossConfig(target_ms=ref, mode="add#linear", lam=0.3))
    e = float(lin.expected_latency(alpha))
    assert float(lin(ce, alpha)) == pytest.approx(0.8 + 0.3 * (e - ref) / ref, rel=1e-12)
    # log_unit_ms=1: the reference code literally, alpha * CE * (log E / log ref) ** beta with E in ms.
    lit = LatencyLoss(table, LatencyLossConfig(target_ms=ref, mode="mul#log", alpha=0.2, beta=0.3, log_unit_ms=1.0))
    assert float(lit(ce, alpha)) == pytest.approx(0.2 * 0.8 * (math.log(e) / math.log(ref)) ** 0.3, rel=1e-12)
    # Default unit ref / 80: the reference's shape at 80 ms, whatever the target.
    scaled = LatencyLoss(table, LatencyLossConfig(target_ms=ref, mode="mul#log"))
    assert float(scaled(ce, alpha)) == pytest.approx(
        0.2 * 0.8 * (math.log(80 * e / ref) / math.log(80)) ** 0.3, rel=1e-12)
    at_target = scaled.combine(ce, torch.tensor(ref, dtype=torch.float64))
    assert float(at_target) == pytest.approx(0.2 * 0.8, rel=1e-12)


def test_latency_term_pushes_toward_target():
    """Above the target the gradient step lowers the expected latency; the CE does not change that sign."""
    table = small_table()
    for mode in ("add#linear", "mul#log"):
        loss = LatencyLoss(table, LatencyLossConfig(target_ms=FIXED_MS + 0.5, mode=mode))
        alpha = random_alpha(table, 3)
        (grad,) = torch.autograd.grad(loss(torch.tensor(1.0, dtype=torch.float64), alpha), alpha)
        before = float(loss.expected_latency(alpha))
        after = float(loss.expected_latency(alpha.detach() - 0.1 * grad))
        assert after < before


def test_config_and_input_errors():
    table = small_table()
    with pytest.raises(ValueError, match="mode"):
        LatencyLossConfig(target_ms=1.0, mode="mul#linear")
    with pytest.raises(ValueError, match="target_ms"):
        LatencyLossConfig(target_ms=-1.0)
    with pytest.raises(ValueError, match="finite"):
        LatencyLossConfig(target_ms=float("nan"))
    with pytest.raises(ValueError, match="log_unit_ms < target_ms"):
        LatencyLossConfig(target_ms=0.5, log_unit_ms=1.0)
    # The log of an expected latency must stay positive: unit (target / 80) below the fastest architecture,
    # 2.76 ms here.
    with pytest.raises(ValueError, match="fastest architecture"):
        LatencyLoss(table, LatencyLossConfig(target_ms=400.0))
    loss = LatencyLoss(table, LatencyLossConfig(target_ms=3.0))
    with pytest.raises(ArchitectureError, match="missing label"):
        loss.expected_latency({"a": torch.zeros(3), "b": torch.zeros(4)})
    with pytest.raises(ArchitectureError, match="unknown label"):
        loss.expected_latency({"a": torch.zeros(3), "b": torch.zeros(4), "c": torch.zeros(2), "d": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        loss.expected_latency({"a": torch.zeros(3), "b": torch.zeros(4), "c": torch.zeros(3)})
    with pytest.raises(ValueError, match="matrix of shape \\(3, 4\\)"):
        loss.expected_latency(torch.zeros(3, 3))


# -- under bf16 autocast (bf16-mixed training): the latency term stays in fp32 or wider -----------------------------
@pytest.mark.parametrize("mode", ["mul#log", "add#linear"])
def test_gradient_matches_central_differences_under_bf16_autocast(mode):
    """fp64 parameters: autocast changes nothing, the exact check holds with autocast on (a bf16 CE included)."""
    table = small_table()
    loss = LatencyLoss(table, LatencyLossConfig(target_ms=3.0 * FIXED_MS, mode=mode, lam=0.7))
    ce = torch.tensor(1.3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        for seed in range(3):
            alpha = random_alpha(table, seed)
            assert loss(ce, alpha).dtype == torch.float64
            assert check_gradient(loss, alpha, ce) < 1e-6


@pytest.mark.parametrize("mode", ["mul#log", "add#linear"])
def test_fp32_parameters_under_autocast_give_the_fp32_values_and_gradient(proxyless_table, mode):
    """fp32 architecture parameters (as ProxylessSupernet holds them): under autocast the value and the gradient
    are bit-identical to those without autocast, in fp32, and agree with central differences in fp64."""
    table = proxyless_table
    loss = LatencyLoss(table, LatencyLossConfig(target_ms=0.5 * (table.min_latency() + table.max_latency()),
                                                mode=mode))
    alpha = random_alpha(table, seed=4, scale=0.5).detach().float().requires_grad_()
    ce = torch.tensor(2.125)   # exact in bf16: the bf16 CE of a bf16-mixed step is the same number
    (plain,) = torch.autograd.grad(loss(ce, alpha), alpha)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = loss.expected_latency(alpha)
        value = loss(ce.bfloat16(), alpha)
        (auto,) = torch.autograd.grad(value, alpha)
    assert expected.dtype == value.dtype == auto.dtype == torch.float32
    assert torch.equal(auto, plain)
    reference = LatencyLoss(table, loss.config)
    numeric = central_differences(lambda a: reference(ce.double(), a), alpha.detach().double(), h=1e-5)
    mask = loss.mask
    rel = (auto.double() - numeric).abs()[mask] / numeric.abs()[mask].clamp_min(1e-12)
    assert float(rel.max()) < 1e-3   # fp32 autograd against fp64 differences


def test_bf16_parameters_are_computed_in_fp32(proxyless_table):
    """bf16 parameters: the expected latency is the fp32 sum of their probabilities (a bf16 sum would be off by
    ~1e-3); the gradient reaches the bf16 parameters."""
    table = proxyless_table
    loss = LatencyLoss(table, LatencyLossConfig(target_ms=table.max_latency(), mode="add#linear"))
    alpha = random_alpha(table, seed=5).detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = loss.expected_latency(alpha)
        value = loss(torch.tensor(1.0, dtype=torch.bfloat16), alpha)
        (grad,) = torch.autograd.grad(value, alpha)
    exact = float(loss.expected_latency(alpha.detach().double()))   # the same parameter values, in fp64
    assert expected.dtype == value.dtype == torch.float32
    assert float(expected) == pytest.approx(exact, rel=1e-6)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all() and grad[loss.mask].abs().sum() > 0
