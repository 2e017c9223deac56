"""Kernel detection: deterministic matching by fusion rules, and exact features."""

import torch.nn as nn

from hwnas.graph import capture
from hwnas.kernels import FEATURE_NAMES, FusionRules, detect_kernels, op_macs, op_params

from tests.unit.test_graph import TinyNet

RULES = FusionRules([["conv", "bn", "relu"], ["conv", "bn"], ["dwconv", "bn", "relu6"], ["add", "relu"]])


def test_longest_rule_wins_and_every_op_is_in_one_kernel():
    g = capture(TinyNet(), "torch", (1, 3, 32, 32))
    ks = detect_kernels(g, RULES)
    # the batch norms are folded into their convolutions (as the backends do), so conv-bn-relu is conv-relu
    assert [k.type for k in ks] == ["conv-relu", "dwconv-relu6", "add", "global_avgpool", "reshape", "fc"]
    names = [n.name for k in ks for n in k.nodes]
    assert sorted(names) == sorted(n.name for n in g) and len(names) == len(set(names))


def test_no_fusion_across_a_branch():
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.relu = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU()

        def forward(self, x):
            y = self.bn(self.conv(x))   # y is read twice: the bn folds into the conv, the relu may not fuse
            return self.relu(y) + y

    ks = detect_kernels(capture(Branch(), "torch", (1, 4, 8, 8)), RULES)
    assert [k.type for k in ks] == ["conv", "relu", "add"]


def test_no_rules_means_one_kernel_per_op():
    g = capture(TinyNet(), "torch", (1, 3, 32, 32))
    assert [k.type for k in detect_kernels(g, FusionRules([]))] == [n.op for n in g]


def test_features_are_exact():
    g = capture(TinyNet(), "torch", (1, 3, 32, 32))
    k = detect_kernels(g, RULES)[0]   # conv 3->8, k3 s2, 32 -> 16, the bn folded in as a bias; relu
    f = k.features
    assert set(f) == set(FEATURE_NAMES)
    assert (f["hin"], f["cin"], f["cout"], f["hout"], f["kernel"], f["stride"], f["groups"]) == (32, 3, 8, 16, 3, 2, 1)
    assert f["macs"] * 1e6 == 8 * 16 * 16 * 3 * 3 * 3
    assert round(f["params"] * 1e6) == 8 * 3 * 9                  # conv weights (the folded bn's bias not counted)
    assert round(f["elementwise"] * 1e6) == 8 * 16 * 16            # the relu's output
    assert round(f["in_elems"] * 1e6) == 3 * 32 * 32 and round(f["out_elems"] * 1e6) == 8 * 16 * 16
    dw = detect_kernels(g, RULES)[1]
    assert dw.features["groups"] == 8 and dw.features["macs"] * 1e6 == 8 * 16 * 16 * 25
    # the epilogue counts: the op after the main op, not the main op itself
    assert (f["epi_relu"], f["epi_relu6"], f["epi_add"]) == (1, 0, 0)
    assert (dw.features["epi_relu6"], dw.features["epi_relu"]) == (1, 0)
    add = detect_kernels(g, RULES)[2]
    assert add.type == "add" and add.features["epi_add"] == 0


def test_op_macs_and_params_fc():
    g = capture(TinyNet(), "torch", (1, 3, 32, 32))
    fc = g.nodes[-1]
    assert op_macs(fc) == 80 and op_params(fc) == 90


def test_detection_is_deterministic():
    g = capture(TinyNet(), "torch", (1, 3, 32, 32))
    a = [(k.type, [n.name for n in k.nodes]) for k in detect_kernels(g, RULES)]
    b = [(k.type, [n.name for n in k.nodes]) for k in detect_kernels(g, RULES)]
    assert a == b
