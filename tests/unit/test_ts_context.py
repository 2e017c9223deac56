"""In-network labels of TorchScript kernels (``hwnas.builder._ts_context``)."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from hwnas.builder import TSInNetworkModel, TSNetworkTrace, trace_torchscript_network, ts_kernel_labels
from hwnas.builder._ts_profile import parse_line
from hwnas.graph import capture
from hwnas.kernels import TORCHSCRIPT_ONEDNN, FusionRules, LayoutRules, apply_layout, detect_kernels
from tests._nets import ResBlockNet

RULES = FusionRules([["conv", "bn"], ["conv", "bn", "hswish"], ["fc", "relu"]])
LAYOUT = LayoutRules.from_dict(TORCHSCRIPT_ONEDNN).with_variants(["maxpool", "relu"], conversions=True)


def _kernels(model, shape):
    graph = capture(model.eval(), "torch", shape)
    return apply_layout(detect_kernels(graph, RULES), graph, LAYOUT)


class _TwoConvs(nn.Module):
    """Two convolutions of different shapes, a ReLU, and a squeeze-excite style broadcast mul."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 1)
        self.gate = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        g = self.gate(nn.functional.adaptive_avg_pool2d(y, 1))
        return y * g


def _synthetic(kernels, conv_ms):
    """A trace whose pieces are given: each convolution (in reverse order, to test the keys), an event per
    other op."""
    convs, events = [], [["aten::to_mkldnn", [1, 3, 8, 8], 0.01]]
    for k in kernels:
        for n in k.nodes:
            if n.op in ("conv", "dwconv"):
                (_, c, h, w), a = n.input_shapes[0], n.attrs
                convs.append([c, a["cout"], h, w, *a["kernel"], a["stride"][0], a["groups"], conv_ms[a["cout"]], 0.001])
            elif n.op == "relu":
                events.append(["aten::relu_", list(n.input_shapes[0]), 0.002])
            elif n.op == "global_avgpool":
                events.append(["aten::adaptive_avg_pool2d", list(n.input_shapes[0]), 0.003])
            elif n.op == "mul":
                small = min(n.input_shapes, key=lambda s: int(np.prod(s)))
                events += [["aten::to_dense", list(small), 0.004], ["aten::to_mkldnn", list(n.output_shape), 0.005],
                           ["aten::mul_", list(n.input_shapes[0]), 0.006]]
    events.append(["aten::to_dense", [1, 16, 8, 8], 0.007])
    return TSNetworkTrace(convs=convs[::-1], eltwise=[], events=events, run_ms=1.0, profiled_ms=1.0, n_events=10,
                          primitives_ms=0.0)


def test_labels_match_pieces_by_shape_and_give_a_broadcast_its_conversions():
    torch.manual_seed(0)
    kernels = _kernels(_TwoConvs(), (1, 3, 8, 8))
    conv_ms = {8: 0.1, 16: 0.2}
    trace = _synthetic(kernels, conv_ms)
    labels, residual = ts_kernel_labels(trace, kernels)
    by_type = {}
    for k, v in zip(kernels, labels):
        assert v is not None, k.type
        by_type.setdefault(k.type, []).append(v)
    # the 3->8 conv gets the 8-channel piece although the trace lists it last
    first_conv = next(v for k, v in zip(kernels, labels) if k.type.startswith("conv") and k.features["cout"] == 8)
    assert first_conv == pytest.approx(0.1 + 0.001)
    assert by_type["mul"] == [pytest.approx(0.004 + 0.005 + 0.006)]     # broadcast: both conversions
    assert residual == pytest.approx(1.0 - sum(labels))


def test_a_missing_piece_leaves_its_kernel_unlabelled_and_time_in_the_residual():
    torch.manual_seed(0)
    kernels = _kernels(_TwoConvs(), (1, 3, 8, 8))
    trace = _synthetic(kernels, {8: 0.1, 16: 0.2})
    trace.convs = trace.convs[1:]     # one convolution primitive lost
    labels, residual = ts_kernel_labels(trace, kernels)
    assert sum(v is None for v in labels) == 1
    assert residual == pytest.approx(1.0 - sum(v for v in labels if v is not None))


def test_eltwise_alg_is_parsed():
    line = ("onednn_verbose,v1,primitive,exec,cpu,eltwise,jit:avx512_core,forward_inference,data:f32::blocked:aBcd16b"
            "::f0,,alg:eltwise_hardswish alpha:0.166667 beta:0.5,1x16x8x8,0.004")
    assert parse_line(line).alg == "eltwise_hardswish"


def test_record_round_trip_and_a_missing_field_is_named():
    t = TSNetworkTrace(convs=[[3, 8, 8, 8, 3, 3, 1, 1, 0.1, 0.0]], eltwise=[], events=[], run_ms=0.5,
                       profiled_ms=0.6, n_events=4, primitives_ms=0.1)
    assert TSNetworkTrace.from_record(t.to_record()) == t
    assert t.event_cost_ms == pytest.approx(0.1 / 4)
    rec = t.to_record()
    del rec["run_ms"]
    with pytest.raises(ValueError, match="run_ms"):
        TSNetworkTrace.from_record(rec)


def test_model_recovers_a_cost_per_kernel_and_its_prediction_is_a_sum_over_kernels():
    torch.manual_seed(0)
    nets, truths = [], []
    rng = np.random.default_rng(0)
    for make in (lambda c: ResBlockNet(c), lambda c: _TwoConvs()):    # two kernel counts: per kernel vs intercept
        for c in (8, 12, 16, 24):
            for s in (8, 12, 16):
                ks = _kernels(make(c), (1, 3, s, s))
                labels = [float(k.features["macs"] * 2e-3 + k.features["out_elems"] * 0.5 + 1e-3) for k in ks]
                nets.append((ks, labels))
                truths.append(sum(labels) + 0.01 * len(ks) + 0.05 + float(rng.normal(0, 1e-4)))
    model = TSInNetworkModel.fit(nets, truths, ridge=1.0)
    assert model.per_kernel_ms == pytest.approx(0.01, rel=0.3)
    pred = [model.predict(ks) for ks, _ in nets]
    assert np.max(np.abs(np.array(pred) / np.array(truths) - 1)) < 0.1
    ks = nets[0][0]
    assert model.predict(ks) == pytest.approx(float(model.kernel_ms(ks, terms=True).sum()) + model.intercept_ms,
                                              rel=1e-12)
    assert all(v >= 0 for t in model.terms.values() for v in t.values())


@pytest.mark.slow
def test_traced_network_labels_every_kernel_and_sum_with_the_residual_to_the_run():
    torch.manual_seed(0)
    net = ResBlockNet(16).eval()
    trace = trace_torchscript_network(net, (1, 3, 16, 16), runs=2, warmup=2, unprofiled=3)
    assert trace.convs and all(r[8] > 0 for r in trace.convs)
    assert trace.run_ms > 0 and trace.n_events > 0
    kernels = _kernels(net, (1, 3, 16, 16))
    labels, residual = ts_kernel_labels(trace, kernels)
    assert all(v is not None for v in labels), [(k.type, v) for k, v in zip(kernels, labels)]
    convs = [v for k, v in zip(kernels, labels) if k.type.startswith("conv")]
    assert len(convs) == 2 and all(v > 0 for v in convs)
    assert sum(labels) + residual == pytest.approx(trace.run_ms, rel=1e-9)


def test_a_written_predictor_prices_as_the_model_does(tmp_path):
    from hwnas.device import fingerprint
    from hwnas.predictor import load_latency_predictor

    base = load_latency_predictor("torchscript-cpu-amd-epyc-avx512-f25m17")
    torch.manual_seed(0)
    nets, truths, models = [], [], []
    for make in (lambda c: ResBlockNet(c), lambda c: _TwoConvs()):
        for c in (8, 16, 24):
            for s in (8, 16):
                m = make(c).eval()
                ks = base.kernels(m, input_shape=(1, 3, s, s))
                labels = [None if k.type == "hsigmoid" else float(k.features["out_elems"] + 1e-3) for k in ks]
                nets.append((ks, labels))
                models.append((m, (1, 3, s, s)))
                truths.append(sum(v for v in labels if v is not None) + 0.01 * len(ks) + 0.05)
    model = TSInNetworkModel.fit(nets, truths, fallback=base)
    path = model.write(tmp_path / "p", fingerprint(), base, name="torchscript-cpu-test-in-network")
    written = load_latency_predictor(path)
    assert {"to_backend", "to_plain", "silu", "maxpool@dense"} <= set(written.kernel_specs)  # completed from base
    for (m, shape), (ks, _) in zip(models, nets):
        assert written.predict(m, input_shape=shape) == pytest.approx(model.predict(ks), rel=1e-9)
