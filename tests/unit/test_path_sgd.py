"""PathSGD: the single-path supernet's optimizer steps the path's parameter groups only, with SGD's exact update."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import search_spaces as ss
from hwnas.oneshot._path_sgd import PathSGD, unit_param_groups
from hwnas.oneshot._spos import SinglePathSupernet
from tests.unit.test_spos import SIDE, _space

LR, MOMENTUM, WD = 0.05, 0.9, 1e-2   # a large weight decay, so that a wrongly decayed group shows


def _pair(foreach: bool | None = None):
    """Two identical supernets: one for torch's SGD over two groups (its default, per-tensor update on a CPU), one
    for PathSGD over unit groups."""
    a, b = SinglePathSupernet(_space(0)).train(), SinglePathSupernet(_space(0)).train()
    decay = [p for p in a.parameters() if p.dim() > 1]
    no_decay = [p for p in a.parameters() if p.dim() <= 1]
    sgd = torch.optim.SGD([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=LR, momentum=MOMENTUM)
    path_sgd = PathSGD(unit_param_groups(b.compile_targets(), WD), lr=LR, momentum=MOMENTUM, foreach=foreach)
    return a, sgd, b, path_sgd


def _step(net, opt, arch, x, y):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(net(x, arch), y).backward()
    opt.step()


def test_unit_groups_hold_every_parameter_once_and_refuse_shared_ones():
    net = SinglePathSupernet(_space(0))
    groups = unit_param_groups(net.compile_targets(), WD)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    assert all((g["weight_decay"] == WD) == (g["params"][0].dim() > 1) for g in groups)
    with pytest.raises(ValueError, match="two units"):
        unit_param_groups([net.space.stem, net.space.stem[0]], WD)


def test_a_paths_groups_get_gradients_all_or_none():
    # PathSGD's premise: a group is active when its first parameter has a gradient
    net = SinglePathSupernet(_space(0)).train()
    groups = unit_param_groups(net.compile_targets(), WD)
    for seed in (0, 1, 2):
        net.zero_grad(set_to_none=True)
        net(torch.randn(2, 3, SIDE, SIDE), ss.random_arch(net.space, seed)).sum().backward()
        assert all(len({p.grad is None for p in g["params"]}) == 1 for g in groups)


@pytest.mark.parametrize("foreach", [None, True])   # SposSupernetModule uses foreach=True
def test_steps_equal_torch_sgd_bit_for_bit_and_unsampled_candidates_stay(foreach):
    a, sgd, b, path_sgd = _pair(foreach)
    g = torch.Generator().manual_seed(0)
    archs = [ss.random_arch(a.space, seed) for seed in range(4)] * 2   # revisits: momentum of an earlier step
    for arch in archs:
        x, y = torch.randn(4, 3, SIDE, SIDE, generator=g), torch.randint(0, 3, (4,), generator=g)
        _step(a, sgd, arch, x, y)
        _step(b, path_sgd, arch, x, y)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    for k in pa:
        ma, mb = sgd.state[pa[k]].get("momentum_buffer"), path_sgd.state[pb[k]].get("momentum_buffer")
        assert (ma is None) == (mb is None) and (ma is None or torch.equal(ma, mb)), k
    start = dict(SinglePathSupernet(_space(0)).named_parameters())
    used = {(label, arch[label]) for arch in archs for label in arch}
    for k, p in pb.items():
        parts = k.split(".")
        if parts[1] == "blocks" and (parts[2], parts[3]) not in used:
            assert torch.equal(p, start[k]), k       # never on a path: no decay, no momentum step
    assert any(parts[1] == "blocks" and (parts[2], parts[3]) not in used for parts in (k.split(".") for k in pb))


def test_zero_grad_clears_the_path_and_only_sets_to_none():
    _, _, b, path_sgd = _pair()
    arch = ss.random_arch(b.space, 0)
    F.cross_entropy(b(torch.randn(2, 3, SIDE, SIDE), arch), torch.tensor([0, 1])).backward()
    assert any(p.grad is not None for p in b.parameters())
    path_sgd.step()
    path_sgd.zero_grad()
    assert all(p.grad is None for p in b.parameters())
    with pytest.raises(ValueError, match="None"):
        path_sgd.zero_grad(set_to_none=False)


def test_state_dict_round_trip_continues_identically():
    _, _, b, opt = _pair()
    arch = ss.random_arch(b.space, 1)
    x, y = torch.randn(2, 3, SIDE, SIDE), torch.tensor([0, 2])
    _step(b, opt, arch, x, y)
    buffer = io.BytesIO()   # through a file, as a checkpoint (in memory, state dicts share their tensors)
    torch.save({"net": b.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    c = SinglePathSupernet(_space(0)).train()
    c.load_state_dict(saved["net"])
    opt_c = PathSGD(unit_param_groups(c.compile_targets(), WD), lr=LR, momentum=MOMENTUM)
    opt_c.load_state_dict(saved["opt"])
    _step(b, opt, arch, x, y)
    _step(c, opt_c, arch, x, y)
    assert all(torch.equal(p, q) for p, q in zip(b.parameters(), c.parameters()))


def test_a_loose_module_steps_like_sgd():
    # not a supernet: one unit, every group active, the same as SGD
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    b = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    b.load_state_dict(a.state_dict())
    opts = (torch.optim.SGD(a.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD),
            PathSGD(b.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD))
    x = torch.randn(5, 3)
    for _ in range(3):
        for net, opt in zip((a, b), opts):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
