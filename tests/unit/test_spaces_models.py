"""search_spaces: forward passes, subnets (weights, TorchScript), layout, NNI freezing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import search_spaces as ss
from search_spaces.proxyless import MBConv
from search_spaces.spos import ShuffleBlock

NAMES = ["spos", "proxyless"]
SMALL = {"width_mult": 0.25, "input_size": 32, "num_classes": 10}
jit_warnings = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def spaces():
    torch.manual_seed(0)
    return {name: ss.create_space(name, **SMALL).eval() for name in NAMES}


def _no_nni(module: nn.Module) -> bool:
    return all(not type(m).__module__.startswith("nni") for m in module.modules())


def _covering_archs(space) -> list[dict[str, str]]:
    """Architectures that together use every choice of every label."""
    table = ss.choices(space)
    width = max(len(v) for v in table.values())
    return [{label: names[i % len(names)] for label, names in table.items()} for i in range(width)]


@pytest.mark.parametrize("name", NAMES)
def test_every_choice_reachable_and_runs_at_32px(name, spaces):
    space = spaces[name]
    archs = _covering_archs(space)
    used = {(label, choice) for arch in archs for label, choice in arch.items()}
    assert used == {(label, c) for label, names in ss.choices(space).items() for c in names}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for arch in archs:
            net = ss.build_subnet(space, arch)
            assert isinstance(net, ss.ChainNet) and _no_nni(net)
            out = net(x)
            assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_small_input_variant_ends_at_4x4(name, spaces):
    slots = ss.layout(spaces[name], (1, 3, 32, 32))
    assert slots[0].out_shape[2:] == (32, 32)  # stem stride 1
    assert slots[-1].in_shape[2:] == (4, 4)
    big = ss.layout(name, (1, 3, 224, 224))
    assert big[0].out_shape[2:] == (112, 112) and big[-1].in_shape[2:] == (7, 7)


@pytest.mark.parametrize("name", NAMES)
def test_forward_at_224(name):
    torch.manual_seed(1)
    net = ss.build_subnet(name, ss.random_arch(name, 11), config={"width_mult": 0.25, "num_classes": 7}).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_supernet_dry_run_forward(name, spaces):
    with torch.no_grad():
        assert spaces[name](torch.randn(1, 3, 32, 32)).shape == (1, 10)


@jit_warnings
@pytest.mark.parametrize("name", NAMES)
def test_torchscript_parity(name, spaces):
    x = torch.randn(2, 3, 32, 32)
    for seed in (0, 1):
        net = ss.build_subnet(spaces[name], ss.random_arch(spaces[name], seed))
        scripted = torch.jit.script(net)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_subnet_inherits_weights_like_nni_freeze(name, spaces):
    space = spaces[name]
    with torch.no_grad():  # make BN statistics non-trivial so that buffers matter too
        for m in space.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 32, 32)
    for seed in (2, 3):
        arch = ss.random_arch(space, seed)
        net = ss.build_subnet(space, arch)
        assert not net.training and _no_nni(net)
        frozen = space.freeze(arch).eval()
        with torch.no_grad():
            torch.testing.assert_close(net(x), frozen(x), rtol=0, atol=0)
        # Exact key mapping: every subnet tensor is the supernet's chosen-candidate tensor.
        source = space.state_dict()
        for key, value in net.state_dict().items():
            parts = key.split(".")
            src = ".".join([*parts[:2], arch[parts[1]], *parts[2:]]) if parts[1] in arch else key
            assert torch.equal(value, source[src]), key
        # A copy, not a view: training the subnet leaves the supernet alone.
        before = copy.deepcopy(space.stem[0].weight)
        with torch.no_grad():
            net.stem[0].weight.add_(1.0)
        assert torch.equal(space.stem[0].weight, before)


def test_subnet_from_name_is_fresh_and_in_train_mode():
    net = ss.build_subnet("spos", ss.random_arch("spos", 0), config=SMALL)
    assert net.training and _no_nni(net)
    with pytest.raises(TypeError, match="only accepted with a space name"):
        ss.build_subnet(ss.create_space("spos", **SMALL), ss.random_arch("spos", 0), config=SMALL)


@pytest.mark.parametrize("name", NAMES)
def test_layout_composes_to_the_subnet(name, spaces):
    space = spaces[name]
    x = torch.randn(2, 3, 32, 32)
    slots = ss.layout(space, x.shape)
    table = ss.choices(space)
    assert [s.label for s in slots if s.label is not None] == list(table)
    assert slots[0].name == "stem" and slots[-1].name == "head" and slots[-1].out_shape == (2, 10)
    for slot in slots:
        if slot.label is None:
            assert list(slot.candidates) == ["fixed"]
        else:
            assert list(slot.candidates) == table[slot.label]
            if "skip" in slot.candidates:
                assert type(slot.candidates["skip"]) is nn.Identity
    for seed in (4, 5, 6):
        arch = ss.random_arch(space, seed)
        h = x
        with torch.no_grad():
            for slot in slots:
                assert tuple(h.shape) == slot.in_shape, slot.name
                h = slot.candidates[arch[slot.label] if slot.label else "fixed"](h)
                assert tuple(h.shape) == slot.out_shape, slot.name
            torch.testing.assert_close(h, ss.build_subnet(space, arch)(x), rtol=0, atol=0)


def test_layout_head_holds_pooling_and_classifier(spaces):
    head = ss.layout(spaces["proxyless"])[-1].candidates["fixed"]
    kinds = {type(m) for m in head.modules()}
    assert {nn.Conv2d, nn.BatchNorm2d, nn.ReLU6, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Linear} <= kinds


def test_layout_rejects_bad_shapes(spaces):
    from hwnas.errors import InputShapeError

    with pytest.raises(InputShapeError, match="3 channels"):
        ss.layout(spaces["spos"], (1, 1, 32, 32))
    with pytest.raises(InputShapeError):
        ss.layout(spaces["spos"], (3, 32, 32))


def test_block_internals_follow_the_reference():
    # SPOS split block: even channels pass through untouched, odd ones go through the main branch.
    block = ShuffleBlock(16, 16, kernel_size=3, stride=1).eval()
    x = torch.randn(1, 16, 5, 5)
    with torch.no_grad():
        out = block(x)
        torch.testing.assert_close(out[:, :8], x[:, 0::2], rtol=0, atol=0)
        torch.testing.assert_close(out[:, 8:], block.main(x[:, 1::2]), rtol=0, atol=0)
    # Projection block: cat(projection(x), main(x)), stride 2.
    with pytest.raises(ValueError, match="3x3"):
        ShuffleBlock(8, 24, kernel_size=5, stride=2, xception=True)
    block = ShuffleBlock(8, 24, kernel_size=3, stride=2, xception=True).eval()
    with torch.no_grad():
        out = block(x[:, :8])
        assert out.shape == (1, 24, 3, 3)
        torch.testing.assert_close(out[:, :8], block.proj(x[:, :8]), rtol=0, atol=0)
    assert block.proj[0].kernel_size == (3, 3) and block.proj[0].stride == (2, 2)
    dws = [m for m in block.main if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert [m.stride for m in dws] == [(2, 2), (1, 1), (1, 1)]
    assert ShuffleBlock(16, 64, kernel_size=7, stride=2).proj[0].kernel_size == (7, 7)
    # MBConv: residual only with stride 1 and equal channels; no expand conv when e = 1.
    mb = MBConv(16, 16, kernel_size=5, expand_ratio=3, stride=1).eval()
    with torch.no_grad():
        torch.testing.assert_close(mb(x), x + mb.project(mb.depthwise(mb.expand(x))), rtol=0, atol=0)
    assert not MBConv(16, 24, kernel_size=3, expand_ratio=6, stride=1).residual
    assert isinstance(MBConv(32, 16, kernel_size=3, expand_ratio=1, stride=1).expand, nn.Identity)
    assert mb.depthwise[0].out_channels == 48 and mb.depthwise[0].padding == (2, 2)
