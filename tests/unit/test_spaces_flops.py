"""search_spaces: exact FLOPs (multiply-accumulates) and parameter counts.

The expected numbers are computed here by hand from the layer formulas, independently of the
library: MACs of a conv = out_h * out_w * out_ch * in_ch / groups * k * k; of a linear layer
in * out. Parameters = conv weights + 2 per BN channel (+ classifier bias for ProxylessNAS).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import search_spaces as ss

TINY = {"width_mult": 0.25, "input_size": 32, "num_classes": 10}


@pytest.fixture(scope="module")
def tiny():
    return {name: ss.create_space(name, **TINY) for name in ("spos", "proxyless")}


def conv(h_out: int, c_in: int, c_out: int, k: int = 1, groups: int = 1) -> tuple[int, int]:
    """(MACs, params) of conv + BN."""
    weights = c_out * (c_in // groups) * k * k
    return h_out * h_out * weights, weights + 2 * c_out


def total(*layers: tuple[int, int]) -> tuple[int, int]:
    return sum(m for m, _ in layers), sum(p for _, p in layers)


# ----- SPOS ------------------------------------------------------------------------------------
def spos_block(h_in: int, c_in: int, c_out: int, stride: int, choice: str) -> tuple[int, int]:
    h = (h_in - 1) // stride + 1
    project = stride == 2 or c_in != c_out
    branch_in = c_in if project else c_in // 2
    mid, main_out = c_out // 2, c_out - (c_in if project else c_in // 2)
    k = 3 if choice == "xception" else int(choice[-1])
    if choice == "xception":
        main = [conv(h, branch_in, branch_in, 3, branch_in), conv(h, branch_in, mid),
                conv(h, mid, mid, 3, mid), conv(h, mid, mid), conv(h, mid, mid, 3, mid), conv(h, mid, main_out)]
    else:
        main = [conv(h_in, branch_in, mid), conv(h, mid, mid, k, mid), conv(h, mid, main_out)]
    proj = [conv(h, c_in, c_in, k, c_in), conv(h, c_in, c_in)] if project else []
    return total(*main, *proj)


def spos_expected(arch: dict[str, str], side: int, small: bool, stem: int, stages: list[int], last: int,
                  classes: int) -> tuple[int, int]:
    h = side if small else (side - 1) // 2 + 1
    parts = [conv(h, 3, stem, 3)]
    c_in = stem
    for stage, (depth, c_out) in enumerate(zip([4, 4, 8, 4], stages), start=1):
        for b in range(depth):
            stride = 1 if b or (stage == 1 and small) else 2
            parts.append(spos_block(h, c_in, c_out, stride, arch[f"s{stage}_b{b}"]))
            h, c_in = (h - 1) // stride + 1, c_out
    parts.append(conv(h, c_in, last))
    parts.append((last * classes, last * classes))  # classifier without bias
    return total(*parts)


# ----- ProxylessNAS -----------------------------------------------------------------------------
def mbconv(h_in: int, c_in: int, c_out: int, stride: int, k: int, e: int) -> tuple[int, int]:
    h, mid = (h_in - 1) // stride + 1, c_in * e
    layers = [conv(h_in, c_in, mid)] if e != 1 else []
    return total(*layers, conv(h, mid, mid, k, mid), conv(h, mid, c_out))


def proxyless_expected(arch: dict[str, str], side: int, small: bool, stem: int, first: int, stages: list[int],
                       last: int, classes: int) -> tuple[int, int]:
    h = side if small else (side - 1) // 2 + 1
    parts = [conv(h, 3, stem, 3), mbconv(h, stem, first, 1, 3, 1)]
    c_in = first
    for stage, (depth, c_out, s) in enumerate(zip([4, 4, 4, 4, 4, 1], stages, [2, 2, 2, 1, 2, 1]), start=1):
        for b in range(depth):
            stride = 1 if b or (stage == 1 and small) else s
            choice = arch[f"s{stage}_b{b}"]
            if choice != "skip":
                parts.append(mbconv(h, c_in, c_out, stride, int(choice[1]), int(choice[3])))
            h, c_in = (h - 1) // stride + 1, c_out
    parts.append(conv(h, c_in, last))
    parts.append((last * classes, last * classes + classes))  # classifier with bias
    return total(*parts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spos_tiny_exact(seed, tiny):
    space = tiny["spos"]
    arch = ss.random_arch(space, seed)
    # width 0.25: make_divisible(16/64/160/320/640 * 0.25, 8) = 8, 16, 40, 80, 160; last conv 1024.
    expected = spos_expected(arch, 32, True, 8, [16, 40, 80, 160], 1024, 10)
    assert (ss.count_macs(space, arch), ss.count_params(space, arch)) == expected
    assert ss.count_params(space, arch) == sum(p.numel() for p in ss.build_subnet(space, arch).parameters())


def test_spos_tiny_literal(tiny):
    arch = {label: "shuffle3" for label in ss.choices("spos")}
    # stem 32*32*8*27 = 221,184 MACs, 8*27 + 16 = 232 params; first block s1_b0 (8 -> 16, stride 1,
    # projection): pw 8->8 at 32x32 65,536 + dw 8*9*1024 73,728 + pw 8->8 65,536 + proj dw 73,728 +
    # proj pw 65,536 = 344,064 MACs.
    space = tiny["spos"]
    assert ss.count_macs(space, arch) == spos_expected(arch, 32, True, 8, [16, 40, 80, 160], 1024, 10)[0]
    assert spos_block(32, 8, 16, 1, "shuffle3")[0] == 344_064
    assert conv(32, 3, 8, 3) == (221_184, 232)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_proxyless_tiny_exact(seed, tiny):
    space = tiny["proxyless"]
    arch = ss.random_arch(space, seed)
    # width 0.25: stem 8, first block 8, stages 8, 16, 24, 24, 48, 80 (make_divisible rule); last 1280.
    expected = proxyless_expected(arch, 32, True, 8, 8, [8, 16, 24, 24, 48, 80], 1280, 10)
    assert (ss.count_macs(space, arch), ss.count_params(space, arch)) == expected
    assert ss.count_params(space, arch) == sum(p.numel() for p in ss.build_subnet(space, arch).parameters())


def test_flops_at_other_input_size():
    space = "proxyless"  # a name means the default config
    arch = {label: "k3e6" for label in ss.choices(space)}
    stages = [24, 40, 80, 96, 192, 320]
    assert ss.count_macs(space, arch) == proxyless_expected(arch, 224, False, 32, 16, stages, 1280, 1000)[0]
    assert ss.count_macs(space, arch, 160) == proxyless_expected(arch, 160, False, 32, 16, stages, 1280, 1000)[0]
    assert ss.count_macs(space, arch, 224) == 472_620_800
    assert ss.count_params(space, arch) == 4_684_776


# Per-block MACs at 224 (width 1.0, rows s1_b0 ... s4_b3, columns shuffle3/5/7, xception) of the
# reference SPOS FLOPs table, as carried by SPOS forks of megvii-model/SinglePathOneShot.
SPOS_REFERENCE_TABLE = [
    [13396992, 15805440, 19418112, 13146112]] + [[7325696, 8931328, 11339776, 12343296]] * 3 + [
    [26304768, 28111104, 30820608, 20296192]] + [[10599680, 11603200, 13108480, 16746240]] * 3 + [
    [30670080, 31673600, 33178880, 21199360]] + [[10317440, 10819200, 11571840, 15899520]] * 7 + [
    [30387840, 30889600, 31642240, 20634880]] + [[10176320, 10427200, 10803520, 15476160]] * 3


def test_spos_matches_reference_block_table():
    space = "spos"
    table = ss.choices(space)
    stem_macs, head_macs = 224 // 2 * 224 // 2 * 16 * 27, 7 * 7 * 640 * 1024 + 1024 * 1000
    for column, choice in enumerate(["shuffle3", "shuffle5", "shuffle7", "xception"]):
        arch = {label: choice for label in table}
        expected = stem_macs + head_macs + sum(row[column] for row in SPOS_REFERENCE_TABLE)
        assert ss.count_macs(space, arch) == expected, choice
    # One block at a time, against the hand formula too.
    assert spos_block(112, 16, 64, 2, "shuffle3")[0] == SPOS_REFERENCE_TABLE[0][0]
    assert spos_block(7, 640, 640, 1, "xception")[0] == SPOS_REFERENCE_TABLE[-1][3]


def test_counts_match_nni_hub_models():
    # Numbers of NNI's own hub models (ShuffleNetSpace 'spos', ProxylessNAS 'proxyless-mobile'),
    # counted with the same convention on NNI's modules: independent implementations agree.
    spos_nni = ["shuffle7", "shuffle5", "shuffle3", "shuffle5", "shuffle7", "shuffle3", "shuffle7", "shuffle3",
                "shuffle7", "shuffle3", "shuffle7", "xception", "shuffle3", "shuffle3", "shuffle3", "shuffle3",
                "xception", "shuffle7", "xception", "xception"]
    space = "spos"
    arch = dict(zip(ss.choices(space), spos_nni))
    assert (ss.count_macs(space, arch), ss.count_params(space, arch)) == (322_918_720, 3_558_464)

    stages = [["k5e3", "k3e3"], ["k7e3", "k3e3", "k5e3", "k5e3"], ["k7e6", "k5e3", "k5e3", "k5e3"],
              ["k5e6", "k5e3", "k5e3", "k5e3"], ["k7e6", "k7e6", "k7e3", "k7e3"], ["k7e6"]]
    arch = {f"s{s}_b{b}": (ops[b] if b < len(ops) else "skip")
            for s, (ops, depth) in enumerate(zip(stages, [4, 4, 4, 4, 4, 1]), start=1) for b in range(depth)}
    mobile = ss.create_space("proxyless", stage_widths=(32, 40, 80, 96, 192, 320))
    assert (ss.count_macs(mobile, arch), ss.count_params(mobile, arch)) == (320_427_584, 4_080_512)


def test_count_macs_agrees_with_a_real_forward(tiny):
    space = tiny["spos"]
    arch = ss.random_arch(space, 9)
    net = ss.build_subnet(space, arch).eval()
    macs = []

    def hook(m, _inputs, out):
        per_out = m.in_features if isinstance(m, nn.Linear) else m.in_channels // m.groups * m.kernel_size[0] ** 2
        macs.append(out[0].numel() * per_out)

    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 32))
    assert ss.count_macs(space, arch) == sum(macs)


def test_count_flops_is_the_old_name_of_count_macs():
    assert ss.count_flops is ss.count_macs
