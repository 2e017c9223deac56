"""One network, one set of kernels whatever route it comes in by: the graph passes that fold what every backend
folds (batch norm into the convolution, a constant add into a bias-free linear layer, an adaptive pool that is a
plain pool), and predictors named before the fold pricing the folded kernels (issue 14, item 0)."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from hwnas.graph import OpGraph, OpNode, capture, fold_batchnorm
from hwnas.kernels import FusionRules, canonical_ops, canonical_type, detect_kernels
from hwnas.predictor import load_latency_predictor
from hwnas.predictor._canonical import rekey, winners
from hwnas.predictor._format import write_predictor
from hwnas.predictor._regressors import LinearModel


def _node(name, op, inputs, shape=(1, 8, 4, 4), **attrs):
    return OpNode(name, op, list(inputs), [shape] * len(inputs), shape, attrs)


def test_bn_after_a_conv_read_only_by_it_folds_into_a_bias():
    g = OpGraph([_node("c", "conv", ["input"], bias=False), _node("b", "bn", ["c"]), _node("r", "relu", ["b"])])
    f = fold_batchnorm(g)
    assert [n.op for n in f] == ["conv", "relu"] and f["c"].attrs["bias"] and f["r"].inputs == ["c"]


def test_a_conv_bn_reading_a_folded_bn_reads_its_conv():
    # two conv-bn in a row, the first output read twice (a residual): both folds keep every edge, so the first
    # conv has two readers and cannot fuse with the add (it once lost its reader, and a conv-add crossed blocks)
    g = OpGraph([_node("c1", "conv", ["input"]), _node("b1", "bn", ["c1"]), _node("c2", "conv", ["b1"]),
                 _node("b2", "bn", ["c2"]), _node("a", "add", ["b2", "b1"])])
    f = fold_batchnorm(g)
    assert [n.op for n in f] == ["conv", "conv", "add"]
    assert f["c2"].inputs == ["c1"] and f["c2"].attrs["bias"] and f["a"].inputs == ["c2", "c1"]
    assert sorted(f.consumers("c1")) == ["a", "c2"] and f.consumers("c2") == ["a"]


def test_bn_is_kept_where_the_conv_output_is_read_twice_or_no_conv_precedes():
    shared = OpGraph([_node("c", "conv", ["input"]), _node("b", "bn", ["c"]), _node("a", "add", ["b", "c"])])
    assert [n.op for n in fold_batchnorm(shared)] == ["conv", "bn", "add"]
    pre = OpGraph([_node("p", "concat", ["input"]), _node("b", "bn", ["p"]), _node("c", "conv", ["b"])])
    assert [n.op for n in fold_batchnorm(pre)] == ["concat", "bn", "conv"]   # densenet's pre-activation bn


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        y = self.pool(torch.relu(self.bn(self.conv(x))))          # 8 px -> 4 px: a plain 2x2 average pool
        return self.fc(y.flatten(2).transpose(1, 2))              # a linear layer on a 3-d input


def test_every_route_gives_the_same_graph(tmp_path):
    m = _Mixed().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)                         # a folded bias that is not zero
    x = torch.randn(1, 3, 8, 8)
    torch.onnx.export(m, (x,), str(tmp_path / "m.onnx"), dynamo=False, do_constant_folding=True)
    torch.jit.save(torch.jit.trace(m, x), str(tmp_path / "m.pt"))
    graphs = {"torch": capture(m, "torch", (1, 3, 8, 8)),
              "onnx": capture(str(tmp_path / "m.onnx"), "onnx", (1, 3, 8, 8)),
              "torchscript": capture(str(tmp_path / "m.pt"), "torchscript", (1, 3, 8, 8))}

    def ops(g):
        return [(n.op, n.output_shape, {k: v for k, v in n.attrs.items() if k in ("kernel", "stride", "bias")})
                for n in g if n.op not in ("reshape", "permute")]

    want = ops(graphs["torch"])
    assert [o for o, _, _ in want] == ["conv", "relu", "avgpool", "fc"]
    assert want[2][2] == {"kernel": (2, 2), "stride": (2, 2)} and want[0][2]["bias"] and want[3][2]["bias"]
    for route, g in graphs.items():
        assert ops(g) == want, route


def test_canonical_types_and_rules():
    assert canonical_type("conv-bn-relu") == "conv-relu" and canonical_type("dwconv-bn") == "dwconv"
    assert canonical_type("bn-relu") == "bn-relu" and canonical_ops(["add", "bn"]) == ("add", "bn")
    rules = FusionRules([["conv", "bn", "relu"], ["conv", "bn"], ["fc", "relu"]])
    assert rules.to_list() == [["conv", "relu"], ["fc", "relu"]]   # conv-bn is one conv: no rule left


def test_a_clash_keeps_the_type_fitted_on_more_kernels_in_every_entry():
    chosen = winners({"conv": 0, "conv-bn": 0, "conv-bn-relu": 0, "add": 0}, {"conv": 40, "conv-bn": 900})
    assert chosen == {"conv": "conv-bn", "conv-relu": "conv-bn-relu", "add": "add"}
    assert rekey({"conv": 1.0, "conv-bn": 2.0, "relu": 3.0}, chosen) == {"conv": 2.0, "relu": 3.0}
    again = rekey({"conv": 2.0, "conv-relu": 4.0}, chosen)            # entries re-keyed already keep their keys
    assert again == {"conv": 2.0, "conv-relu": 4.0}


def test_a_predictor_named_before_the_fold_prices_the_folded_kernels(tmp_path):
    kernels = {t: {"features": ["macs"], "target": "ms"} for t in ("conv", "conv-bn")}
    regs = {"conv": LinearModel(np.array([1.0]), 0.0), "conv-bn": LinearModel(np.array([5.0]), 0.0)}
    meta = {"name": "old", "version": "0", "backend": "torchscript-cpu", "device": {"description": "test"},
            "threads": 1, "batch_size": 1, "precision": "fp32", "units": "ms", "fusion_rules": [["conv", "bn"]],
            "zero_cost_ops": [], "model_overhead_ms": 0.0, "kernels": kernels,
            "calibration": {"kernel_scale": {"conv": 3.0, "conv-bn": 2.0}},
            "accuracy": {"kernels_holdout": {"conv": {"n": 10}, "conv-bn": {"n": 500}}}}
    p = load_latency_predictor(write_predictor(tmp_path / "old", meta, regs))
    net = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4)).eval()
    (row,) = p.predict_kernels(net, "torch", (1, 3, 2, 2))
    macs = 4 * 4 * 3 / 1e6
    assert row["type"] == "conv" and row["ms"] == pytest.approx(5.0 * macs * 2.0)   # conv-bn's regressor and factor
    plain = p.predict_kernels(nn.Conv2d(3, 4, 1), "torch", (1, 3, 2, 2))
    assert plain[0]["ms"] == pytest.approx(row["ms"])   # one executed kernel, one price


def test_single_input_concat_and_unit_axis_permute_are_no_ops():
    from hwnas.graph._passes import drop_no_op_data_movement

    g = OpGraph([_node("c", "conv", ["input"]), _node("k", "concat", ["c"]), _node("r", "relu", ["k"]),
                 OpNode("p", "permute", ["r"], [(1, 8, 1, 1)], (1, 1, 1, 8), {}),
                 OpNode("q", "permute", ["r"], [(1, 8, 4, 4)], (1, 4, 4, 8), {})])
    f = drop_no_op_data_movement(g)
    assert [n.op for n in f] == ["conv", "relu", "reshape", "permute"] and f["r"].inputs == ["c"]


def test_nested_concats_merge_and_reshape_chains_collapse():
    from hwnas.graph._passes import drop_no_op_data_movement

    s4 = (1, 4, 2, 2)
    g = OpGraph([_node("a", "conv", ["input"], s4), _node("b", "conv", ["input"], s4),
                 OpNode("inner", "concat", ["a", "b"], [s4, s4], (1, 8, 2, 2), {"axis": 1}),
                 _node("c", "conv", ["input"], s4),
                 OpNode("outer", "concat", ["inner", "c"], [(1, 8, 2, 2), s4], (1, 12, 2, 2), {"axis": 1}),
                 OpNode("r1", "reshape", ["outer"], [(1, 12, 2, 2)], (12, 4), {}),
                 OpNode("r2", "reshape", ["r1"], [(12, 4)], (1, 48), {})])
    f = drop_no_op_data_movement(g)
    assert [n.op for n in f] == ["conv", "conv", "conv", "concat", "reshape"]
    assert f["outer"].inputs == ["a", "b", "c"] and f["r2"].input_shapes == [(1, 12, 2, 2)]
