"""Layout conversions predicted by the NCHWc rules (issue 14, item 1): where a blocked chain meets an op with no
blocked kernel, and where the rules meet ONNX Runtime's compiled graph. Nothing here asserts a timing."""

import pytest
import torch
import torch.nn as nn

from hwnas.builder._layout import ORT_NCHWC, block_size, layout_conversions
from hwnas.graph import capture


class _Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                  nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))

    def forward(self, x):
        return self.head(self.body(x))


class _Concat(nn.Module):
    """Two conv branches of ``c`` channels each, concatenated, into a conv."""

    def __init__(self, c: int):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, c, 1)
        self.b = nn.Conv2d(16, c, 3, padding=1)
        self.out = nn.Conv2d(2 * c, 16, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        return self.out(torch.cat([self.a(y), self.b(y)], 1))


def _kinds(graph, block):
    return sorted((c.kind, graph[c.source].op if c.source in graph else c.source)
                  for c in layout_conversions(graph, block))


def test_a_chain_without_concat_converts_only_where_it_leaves_the_blocked_ops():
    g = capture(_Chain().eval(), "torch", (1, 3, 16, 16))
    # the first conv reads the plain image itself; conv, relu, pool stay blocked; the flatten needs plain
    assert _kinds(g, 8) == [("to_plain", "global_avgpool")]


def test_concat_of_unaligned_branches_converts_each_branch_and_back():
    g = capture(_Concat(12).eval(), "torch", (1, 3, 16, 16))
    kinds = _kinds(g, 8)
    assert kinds.count(("to_plain", "conv")) == 3          # both branches (12 channels, padded), the output
    assert ("to_blocked", "concat") in kinds               # 24 channels into the last conv
    aligned = capture(_Concat(16).eval(), "torch", (1, 3, 16, 16))
    assert _kinds(aligned, 8) == [("to_plain", "conv")]    # 16 + 16: the concat stays blocked
    assert _kinds(g, 4) == [("to_plain", "conv")]          # 12 is a multiple of a block of 4


def _cr(i, o, groups=1, k=1):
    return nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2, groups=groups), nn.ReLU())


# probe networks of ONNX Runtime 1.32's NCHWc rules (32 input channels, 16x16)
_PROBES = {
    "unaligned_dw": nn.Sequential(_cr(32, 64), _cr(64, 34), _cr(34, 34, 34, 3), _cr(34, 64)),
    "padded_dw": nn.Sequential(_cr(32, 64), _cr(64, 24), _cr(24, 24, 24, 3), _cr(24, 48), _cr(48, 16)),
    "narrow_input": nn.Sequential(_cr(32, 64), _cr(64, 8), _cr(8, 40), _cr(40, 10), _cr(10, 64)),
    "unaligned_conv": nn.Sequential(_cr(32, 18), _cr(18, 36), _cr(36, 20)),
    "pool24": nn.Sequential(_cr(32, 24), nn.MaxPool2d(2), _cr(24, 64), nn.AvgPool2d(2), _cr(64, 64)),
    "grouped": nn.Sequential(_cr(32, 48), _cr(48, 48, 2, 3), _cr(48, 64), _cr(64, 64, 2, 3)),
}


def test_unaligned_channels_leave_the_blocked_layout_and_padded_ones_stay():
    shape = (1, 32, 16, 16)
    g = capture(_PROBES["unaligned_dw"].eval(), "torch", shape)
    # 34 channels are not a multiple of 4: the depthwise and the next conv run plain
    assert _kinds(g, 16) == [("to_blocked", "input"), ("to_plain", "relu")]
    g = capture(_PROBES["padded_dw"].eval(), "torch", shape)
    # 24 channels are padded to 32 and stay blocked, depthwise included
    assert _kinds(g, 16) == [("to_blocked", "input"), ("to_plain", "relu")]
    g = capture(_PROBES["narrow_input"].eval(), "torch", shape)
    # a conv with fewer input channels than the block reads the plain tensor (8 and 10 channels at block 16)
    assert _kinds(g, 16).count(("to_plain", "relu")) == 3
    # at block 8, 8 channels are not narrow; 10 channels (not a multiple of 4) make the last conv plain
    assert _kinds(g, 8) == [("to_blocked", "input"), ("to_plain", "relu")]
    g = capture(_PROBES["pool24"].eval(), "torch", shape)
    # a pool needs a multiple of the block: 24 channels at block 16 go plain around the max pool
    assert _kinds(g, 16) == [("to_blocked", "input"), ("to_blocked", "maxpool"), ("to_plain", "relu"),
                             ("to_plain", "relu")]
    assert _kinds(g, 8) == [("to_blocked", "input"), ("to_plain", "relu")]


def test_block_size_follows_the_vector_width():
    assert block_size("AVX512") == 16 and block_size("avx2") == 8
    assert block_size(None) == ORT_NCHWC["block"]["default"]


@pytest.mark.parametrize("model, shape", [(_Chain(), (1, 3, 16, 16)), (_Concat(12), (1, 3, 16, 16)),
                                          (_Concat(16), (1, 3, 16, 16))]
                         + [(m, (1, 32, 16, 16)) for m in _PROBES.values()],
                         ids=["chain", "concat12", "concat16", *_PROBES])
def test_predicted_conversions_match_onnxruntimes_compiled_graph(model, shape):
    pytest.importorskip("onnxruntime")
    from hwnas.builder._profile import trace_onnxruntime
    from hwnas.device import fingerprint

    isa = str(fingerprint().get("torch_cpu_capability") or "")
    if block_size(isa) == ORT_NCHWC["block"]["default"]:
        pytest.skip(f"no NCHWc block known for CPU capability {isa!r}")
    trace = trace_onnxruntime(model.eval(), shape, runs=2, warmup=1)
    conv = layout_conversions(trace.graph, block_size(isa))
    assert sum(c.kind == "to_blocked" for c in conv) == sum(r[0] == "ReorderInput" for r in trace.reorders)
    assert sum(c.kind == "to_plain" for c in conv) == sum(r[0] == "ReorderOutput" for r in trace.reorders)
