"""The contexts ts_dense_inputs compares: under TorchScript's oneDNN pass a pool after a concat reads the concat's
plain tensor, a pool after a convolution reads the convolution's oneDNN tensor."""

import pytest
import torch

from experiments.benchmarks.ts_dense_inputs import _module


def _pool_input_kind(ctx: str, kind: str = "maxpool_s1") -> str:
    m = _module(16, kind, ctx)
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        ts = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(m, x)))
    pools = [n for n in ts.graph.nodes() if "pool" in n.kind()]
    assert len(pools) == 1
    return next(iter(pools[0].inputs())).node().kind()


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn)")
def test_pool_after_cat_reads_the_plain_concat_and_after_conv_the_onednn_conv():
    assert _pool_input_kind("cat") == "aten::cat"
    assert _pool_input_kind("conv") == "prim::mkldnn_convolution"
