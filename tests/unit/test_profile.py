"""In-network kernel times from ONNX Runtime's profiler: every node's time lands on one hwnas kernel, a layout
conversion or the unattributed list, and the bookkeeping adds up (issue 14, item 2). Nothing here asserts a
timing."""

import numpy as np
import pytest
import torch.nn as nn

pytest.importorskip("onnxruntime")

from hwnas.builder._profile import profile_onnxruntime   # noqa: E402
from hwnas.kernels import FusionRules                    # noqa: E402


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))

    def forward(self, x):
        import torch

        y = self.a(x)
        return self.head(torch.cat([y, self.b(y) + y], 1))


def test_node_times_sum_to_the_profiled_total_and_land_on_kernels():
    rules = FusionRules([["conv", "relu"]])
    p = profile_onnxruntime(_Block().eval(), (1, 8, 16, 16), rules, runs=5, warmup=2)
    assert [k.type for k in p.kernels][:2] == ["conv-relu", "conv"]      # the batch norms are folded
    assert p.kernel_ms.shape == (len(p.kernels),) and np.all(p.kernel_ms >= 0)
    assert p.nodes_ms == pytest.approx(p.kernel_ms.sum() + p.reorder_ms + p.unattributed_ms, rel=1e-12)
    assert p.unattributed == [] and p.unattributed_ms == 0.0             # every node led to an hwnas op
    assert p.nodes_ms > 0 and p.run_ms > 0
    timed = set(range(len(p.kernels))) - set(p.absorbed)
    assert all(p.kernel_ms[i] > 0 for i in timed) and all(p.kernel_ms[i] == 0 for i in p.absorbed)
    assert {p.kernels[i].type for i in timed} >= {"conv-relu", "concat", "fc"}
    d = p.to_dict()
    assert len(d["kernels"]) == len(p.kernels) and d["run_ms"] == p.run_ms
