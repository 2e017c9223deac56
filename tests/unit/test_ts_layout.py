"""TorchScript's oneDNN groups as data: which ops read a plain tensor, the conversions at the group boundaries
(checked against TorchScript's own compiled graphs), and predictors that price plain-input kernels apart."""

import collections

import numpy as np
import pytest
import torch
import torch.nn as nn

from hwnas.errors import PredictorFileError
from hwnas.graph import COPIED_INPUTS, capture
from hwnas.kernels import (TORCHSCRIPT_ONEDNN, FusionRules, LayoutRules, apply_layout, base_type, conversions,
                           detect_kernels, plain_input_heads)
from hwnas.predictor import load_latency_predictor
from hwnas.predictor._format import write_predictor
from hwnas.predictor._regressors import LinearModel

RULES = LayoutRules.from_dict(TORCHSCRIPT_ONEDNN)
needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn)")


class _Inception(nn.Module):
    """Two branches concatenated, then a pool of the concat and a conv of the pool (googlenet's pattern)."""

    def __init__(self, c=16):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c, c // 2, 1)
        self.pool, self.conv = nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        return torch.relu(self.conv(self.pool(torch.cat([self.a(x), self.b(x)], 1))))


class _SiluResidual(nn.Module):
    """conv -> silu -> conv, plus the block input: the add cannot join the input's group (efficientnet)."""

    def __init__(self, c=16):
        super().__init__()
        self.stem, self.c1, self.c2 = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.c2(torch.nn.functional.silu(self.c1(y))) + y


class _Residual(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.stem, self.c1 = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        return torch.relu(self.c1(y) + y)


class _DenseLayer(nn.Module):
    """densenet's first layer of a block: a single-input concat (a copy TorchScript runs) before bn -> relu -> conv,
    the block input also read by the next concat."""

    def __init__(self, c=16):
        super().__init__()
        self.stem, self.bn, self.conv = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        z = self.conv(torch.relu(self.bn(torch.cat([y], 1))))
        return torch.cat([y, z], 1)


def _compiled(m, shape):
    with torch.no_grad():
        ts = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(m.eval(), torch.randn(shape))))
    kinds = collections.Counter(n.kind() for n in ts.graph.nodes())
    return {"to_backend": kinds["aten::to_mkldnn"], "to_plain": kinds["aten::to_dense"]}


@needs_onednn
@pytest.mark.parametrize("cls,shape", [(_Inception, (1, 16, 8, 8)), (_SiluResidual, (1, 3, 8, 8)),
                                       (_Residual, (1, 3, 8, 8)), (_DenseLayer, (1, 3, 8, 8))])
def test_predicted_conversions_are_the_ones_torchscript_inserts(cls, shape):
    m = cls()
    assert conversions(capture(m.eval(), "torch", shape), RULES) == _compiled(m, shape)


def test_the_cross_group_edge_and_the_single_group_are_told_apart():
    assert conversions(capture(_SiluResidual().eval(), "torch", (1, 3, 8, 8)), RULES) == {"to_backend": 3,
                                                                                         "to_plain": 3}
    assert conversions(capture(_Residual().eval(), "torch", (1, 3, 8, 8)), RULES) == {"to_backend": 1,
                                                                                     "to_plain": 1}


def test_the_pool_of_a_concat_reads_a_plain_tensor_and_the_pool_of_a_conv_does_not():
    g = capture(_Inception().eval(), "torch", (1, 16, 8, 8))
    heads = plain_input_heads(g, RULES)
    assert [g[h].op for h in heads] == ["maxpool"]
    pooled = nn.Sequential(nn.Conv2d(3, 8, 1), nn.MaxPool2d(2)).eval()
    assert plain_input_heads(capture(pooled, "torch", (1, 3, 8, 8)), RULES) == set()


def test_a_removed_single_input_concat_still_breaks_the_group_it_sat_in():
    g = capture(_DenseLayer().eval(), "torch", (1, 3, 8, 8))
    assert "concat" not in [n.op for n in g.nodes if len(n.inputs) == 1]   # the graph passes removed the copy ...
    (bn,) = [n for n in g.nodes if n.op == "bn"]
    assert bn.attrs[COPIED_INPUTS] == [0]                                  # ... and marked its reader
    assert bn.name in plain_input_heads(g, RULES)                          # which reads a plain tensor
    assert conversions(g, RULES) == {"to_backend": 2, "to_plain": 2}


def test_only_variant_types_are_renamed():
    g = capture(_Inception().eval(), "torch", (1, 16, 8, 8))
    kernels = detect_kernels(g, FusionRules([]))
    assert [k.type for k in apply_layout(kernels, g, RULES)] == [k.type for k in kernels]   # no variants declared
    renamed = apply_layout(kernels, g, RULES.with_variants(["maxpool", "relu"]))
    assert [k.type for k in renamed] == ["conv", "conv", "concat", "maxpool@dense", "conv", "relu"]
    assert base_type("maxpool@dense") == "maxpool"


@pytest.mark.parametrize("bad", [{"start": ["conv"], "join": []}, {"name": "x", "start": 3, "join": []},
                                 {"name": "x", "start": [], "join": [], "suffix": "dense"}])
def test_malformed_rules_are_refused(bad):
    with pytest.raises(ValueError):
        LayoutRules.from_dict(bad)


def _predictor(tmp_path, with_variant=True):
    types = ["conv", "concat", "maxpool", "relu"] + (["maxpool@dense"] if with_variant else [])
    kernels = {t: {"features": ["out_elems"], "target": "ms"} for t in types}
    regs = {t: LinearModel(np.array([100.0 if t == "maxpool@dense" else 1.0]), 0.0) for t in types}
    meta = {"name": "layout", "version": "0", "backend": "torchscript-cpu", "device": {"description": "test"},
            "threads": 1, "batch_size": 1, "precision": "fp32", "units": "ms", "fusion_rules": [],
            "zero_cost_ops": [], "model_overhead_ms": 0.0, "kernels": kernels,
            "layout": RULES.with_variants(["maxpool"]).to_dict()}
    return write_predictor(tmp_path / "p", meta, regs)


def test_a_predictor_with_layout_rules_prices_the_plain_input_pool_with_its_own_regressor(tmp_path):
    p = load_latency_predictor(_predictor(tmp_path))
    rows = {r["type"]: r for r in p.predict_kernels(_Inception().eval(), "torch", (1, 16, 8, 8))}
    assert "maxpool@dense" in rows and "maxpool" not in rows
    assert rows["maxpool@dense"]["ms"] == pytest.approx(100.0 * 16 * 64 / 1e6)
    pooled = nn.Sequential(nn.Conv2d(3, 8, 1), nn.MaxPool2d(2)).eval()
    assert [r["type"] for r in p.predict_kernels(pooled, "torch", (1, 3, 8, 8))] == ["conv", "maxpool"]


def test_layout_rules_naming_a_type_without_a_regressor_are_refused(tmp_path):
    with pytest.raises(PredictorFileError, match="maxpool@dense"):
        load_latency_predictor(_predictor(tmp_path, with_variant=False))


def test_conversions_become_kernels_when_the_rules_price_them():
    g = capture(_Inception().eval(), "torch", (1, 16, 8, 8))
    kernels = detect_kernels(g, FusionRules([]))
    priced = apply_layout(kernels, g, RULES.with_variants([], conversions=True))
    extra = [k for k in priced if not k.nodes]
    assert sorted(k.type for k in extra) == sorted(["to_backend"] * 2 + ["to_plain"] * 3)
    assert all(k.features["out_elems"] > 0 for k in extra)
    # a block inside a network: its group-tensor output is converted by whoever reads it, not by the block
    inner = apply_layout(kernels, g, RULES.with_variants([], conversions=True), output_returned=False)
    assert sum(k.type == "to_plain" for k in inner) == 2


def test_a_kernel_with_no_ops_is_never_free_by_default(tmp_path):
    # a conversion kernel has no ops: "all of its ops are free" must not make it cost 0 ms
    p = load_latency_predictor(_predictor(tmp_path))
    from hwnas.errors import UnknownKernelError
    from hwnas.kernels import tensor_kernel

    with pytest.raises(UnknownKernelError):
        p.kernel_latencies([tensor_kernel("to_plain", (1, 8, 4, 4))])


def test_conversion_rules_without_their_regressors_are_refused(tmp_path):
    types = ["conv", "concat", "maxpool", "relu"]
    meta = {"name": "layout", "version": "0", "backend": "torchscript-cpu", "device": {"description": "test"},
            "threads": 1, "batch_size": 1, "precision": "fp32", "units": "ms", "fusion_rules": [],
            "zero_cost_ops": [], "model_overhead_ms": 0.0,
            "kernels": {t: {"features": ["out_elems"], "target": "ms"} for t in types},
            "layout": RULES.with_variants([], conversions=True).to_dict()}
    path = write_predictor(tmp_path / "p", meta, {t: LinearModel(np.array([1.0]), 0.0) for t in types})
    with pytest.raises(PredictorFileError, match="to_backend"):
        load_latency_predictor(path)
