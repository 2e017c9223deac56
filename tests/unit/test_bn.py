"""BatchNorm recalibration: exact statistics, restored momentum, eval mode, per-candidate isolation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import search_spaces as ss
from hwnas.oneshot._bn import batchnorm_layers, recalibrate_bn


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(),
                         nn.Dropout(0.5), nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5))


def _features(net: nn.Sequential, x: torch.Tensor, upto: int) -> torch.Tensor:
    with torch.no_grad():
        return net[:upto](x)


def test_single_batch_gives_its_exact_mean_and_unbiased_variance():
    net = _net()
    x = torch.randn(16, 3, 6, 6) * 2 + 1
    before = net[1].running_mean.clone()
    recalibrate_bn(net, [(x, torch.zeros(16))])
    f = _features(net, x, 1)
    assert not torch.equal(net[1].running_mean, before)
    torch.testing.assert_close(net[1].running_mean, f.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net[1].running_var, f.var((0, 2, 3), unbiased=True), rtol=1e-5, atol=1e-6)
    assert int(net[1].num_batches_tracked) == 1


def test_several_batches_give_the_average_of_the_batch_statistics():
    net = _net()
    batches = [torch.randn(8, 3, 5, 5) + i for i in range(3)]
    recalibrate_bn(net, batches)
    # The second BN sees the first one's *recalibrated-mode* (batch-statistics) output: replay it in train mode.
    means1, vars1, means2, vars2 = [], [], [], []
    for x in batches:
        f1 = _features(net, x, 1)
        means1.append(f1.mean((0, 2, 3)))
        vars1.append(f1.var((0, 2, 3)))
        h = (f1 - means1[-1][None, :, None, None]) / torch.sqrt(f1.var((0, 2, 3), unbiased=False) + 1e-5)[
            None, :, None, None]
        h = torch.relu(h * net[1].weight[None, :, None, None] + net[1].bias[None, :, None, None])
        with torch.no_grad():
            f2 = net[4](h)  # dropout stayed in eval mode: identity
        means2.append(f2.mean((0, 2, 3)))
        vars2.append(f2.var((0, 2, 3)))
    torch.testing.assert_close(net[1].running_mean, torch.stack(means1).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net[1].running_var, torch.stack(vars1).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net[5].running_mean, torch.stack(means2).mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(net[5].running_var, torch.stack(vars2).mean(0), rtol=1e-4, atol=1e-5)


def test_momentum_and_mode_restored_weights_untouched_no_rng_drawn():
    net = _net().train()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(4, 3, 4, 4)]
    torch.manual_seed(5)
    expected_draw = torch.rand(1)
    torch.manual_seed(5)
    recalibrate_bn(net, batches)
    assert torch.equal(torch.rand(1), expected_draw)  # dropout stayed in eval mode
    assert net[1].momentum == 0.3 and net[5].momentum == 0.1
    assert not any(m.training for m in net.modules())
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())


def test_n_batches_limits_and_errors():
    net = _net()
    batches = [torch.randn(4, 3, 4, 4) for _ in range(5)]
    recalibrate_bn(net, iter(batches), n_batches=2)
    assert int(net[1].num_batches_tracked) == 2
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_bn(net, [])
    assert net[1].momentum == 0.3  # restored after the error too
    with pytest.raises(ValueError, match="n_batches"):
        recalibrate_bn(net, batches, n_batches=0)


@pytest.fixture(scope="module")
def tiny_space():
    torch.manual_seed(0)
    return ss.create_space("spos", input_size=16, num_classes=4, width_mult=0.25)


def _bn_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k}


def test_recalibrating_a_candidate_leaves_the_supernet_and_other_candidates_alone(tiny_space):
    a = ss.random_arch(tiny_space, 1)
    b = ss.random_arch(tiny_space, 2)
    supernet_before = _bn_state(tiny_space)
    net_b = ss.build_subnet(tiny_space, b)
    b_before = _bn_state(net_b)
    net_a = ss.build_subnet(tiny_space, a)
    a_before = _bn_state(net_a)
    recalibrate_bn(net_a, [torch.randn(8, 3, 16, 16)])
    a_after, supernet_after, b_after = net_a.state_dict(), tiny_space.state_dict(), net_b.state_dict()
    changed = [k for k in a_before if not torch.equal(a_before[k], a_after[k])]
    assert len(changed) == len(batchnorm_layers(net_a)) * 2  # every running mean and var changed
    assert all(torch.equal(v, supernet_after[k]) for k, v in supernet_before.items())
    assert all(torch.equal(v, b_after[k]) for k, v in b_before.items())
