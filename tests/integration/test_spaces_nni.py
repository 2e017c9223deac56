"""search_spaces with NNI's own machinery: one-shot supernets, frozen model contexts."""

from __future__ import annotations

import pytest
import torch
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule
from nni.nas.space import model_context
from nni.nas.strategy import Proxyless, RandomOneShot

import search_spaces as ss

SMALL = {"width_mult": 0.25, "input_size": 32, "num_classes": 10}


def _sample(supernet, arch):
    for module in supernet.modules():
        if isinstance(module, BaseSuperNetModule):
            module.resample(dict(arch))


@pytest.mark.parametrize("name", ["spos", "proxyless"])
def test_random_one_shot_supernet_transfers_to_subnets(name):
    torch.manual_seed(0)
    space = ss.create_space(name, **SMALL)
    supernet = RandomOneShot().mutate_model(space)  # in place: LayerChoice -> PathSamplingLayer
    assert sorted(supernet.simplify()) == sorted(ss.choices(name))
    supernet.eval()
    x = torch.randn(2, 3, 32, 32)
    for seed in (0, 1):
        arch = ss.random_arch(space, seed)
        _sample(supernet, arch)
        with torch.no_grad():
            torch.testing.assert_close(ss.build_subnet(supernet, arch)(x), supernet(x), rtol=0, atol=0)
    exported = {}
    for module in supernet.modules():
        if isinstance(module, BaseSuperNetModule):
            exported.update(module.export({}))
    ss.validate_arch(space, {str(k): v for k, v in exported.items()})


def test_proxyless_supernet_keeps_candidate_keys():
    torch.manual_seed(0)
    space = ss.create_space("proxyless", **SMALL)
    reference = {k: v.clone() for k, v in space.state_dict().items()}
    supernet = Proxyless().mutate_model(space)
    arch = ss.random_arch(space, 3)
    net = ss.build_subnet(supernet, arch)
    for key, value in net.state_dict().items():
        parts = key.split(".")
        src = ".".join([*parts[:2], arch[parts[1]], *parts[2:]]) if parts[1] in arch else key
        assert torch.equal(value, reference[src]), key


@pytest.mark.parametrize("name", ["spos", "proxyless"])
def test_space_built_in_nni_model_context(name):
    arch = ss.random_arch(name, 4)
    space_cls = type(ss.create_space(name, **SMALL))
    with model_context(arch):  # how NNI's multi-trial engines instantiate a sampled model
        fixed = space_cls(**SMALL).eval()
    net = ss.build_subnet(fixed, arch)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), fixed(x), rtol=0, atol=0)
    other = dict(arch)
    label = next(iter(other))
    other[label] = next(c for c in ss.choices(name)[label] if c != arch[label])
    with pytest.raises(ValueError, match="do not fit|no entry"):
        ss.build_subnet(fixed, other)
