"""oneDNN primitive profiles of TorchScript networks (``hwnas.builder._ts_profile``)."""

import pytest
import torch
import torch.nn as nn

from hwnas.builder._ts_profile import Primitive, TorchScriptTrace, parse_line, read_runs, trace_torchscript

CONV = ("onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx512_core,forward_training,src:f32:a:blocked:aBcd16b::f0"
        " wei:f32:a:blocked:ABcd16b16a::f0 dst:f32:a:blocked:aBcd16b::f0,attr-scratchpad:user,alg:convolution_direct,"
        "mb1_ic8oc16_ih16oh16kh3sh1dh0ph1_iw16ow16kw3sw1dw0pw1,0.25")
WREORDER = ("onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:Acdb64a::f0 "
            "dst:f32::blocked:ABcd16b16a::f0,attr-scratchpad:user,,16x8x3x3,0.125")
AREORDER = ("onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:abcd::f0 "
            "dst:f32::blocked:aBcd16b::f0,attr-scratchpad:user,,1x8x16x16,0.0625")
RELU = ("onednn_verbose,v1,primitive,exec,cpu,eltwise,jit:avx512_core,forward_training,data:f32::blocked:aBcd16b::f0,"
        ",alg:eltwise_relu alpha:0 beta:0,1x16x16x16,0.03125")
LEGACY = "onednn_verbose,exec,cpu,sum,simple:any,undef,src_f32::blocked:aBcd16b:f0,,,1x16x16x16,0.5"


def test_parse_line_reads_both_verbose_formats_and_ignores_others():
    p = parse_line(CONV)
    assert (p.kind, p.ms) == ("convolution", 0.25)
    assert p.dims()["ic"] == 8 and p.dims()["oc"] == 16 and p.dims()["kh"] == 3
    assert parse_line(WREORDER).shape() == (16, 8, 3, 3)
    legacy = parse_line(LEGACY)
    assert (legacy.kind, legacy.ms, legacy.shape()) == ("sum", 0.5, (1, 16, 16, 16))
    assert parse_line("onednn_verbose,v1,info,cpu,runtime:OpenMP") is None
    assert parse_line("some other output") is None


def test_weight_reorders_are_charged_to_their_convolution_and_activation_reorders_are_conversions():
    log = "\n".join([AREORDER, WREORDER, CONV, RELU, "### hwnas run 1", AREORDER, WREORDER, CONV, RELU,
                     "### hwnas run 2"])
    runs = read_runs(log)
    assert [len(r) for r in runs] == [4, 4]
    tr = TorchScriptTrace(runs=runs, run_ms=[1.0, 1.0], unprofiled_ms=0.9, input_shape=(1, 8, 16, 16))
    (c,) = tr.conv_costs()
    assert (c.conv_ms, c.weight_reorder_ms, c.post_ms) == (0.25, 0.125, 0.03125)
    assert tr.conversions() == [((1, 8, 16, 16), 0.0625)]
    kinds = tr.by_kind()
    assert kinds["reorder:weights"] == 0.125 and kinds["reorder"] == 0.0625
    assert tr.primitives_ms == pytest.approx(0.25 + 0.125 + 0.0625 + 0.03125)
    assert tr.other_ms == pytest.approx(0.9 - tr.primitives_ms)


def test_a_pooling_closes_the_convolution_before_it():
    pool = ("onednn_verbose,v1,primitive,exec,cpu,pooling,jit:avx512_core,forward_inference,src:f32::blocked:aBcd16b"
            "::f0,,alg:pooling_max,mb1ic16_ih16oh8kh2sh2_iw16ow8kw2sw2,0.01")
    runs = read_runs("\n".join([CONV, pool, RELU, "### hwnas run 1"]))
    tr = TorchScriptTrace(runs=runs, run_ms=[1.0], unprofiled_ms=1.0, input_shape=(1, 8, 16, 16))
    assert tr.conv_costs()[0].post_ms == 0.0


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.pool(self.b(y) + y)


def test_trace_of_a_tiny_network_sums_within_each_profiled_run():
    tr = trace_torchscript(_Tiny().eval(), (1, 8, 16, 16), runs=4, warmup=3, unprofiled=5)
    assert len(tr.runs) == 4 and len(tr.run_ms) == 4
    for prims, wall in zip(tr.runs, tr.run_ms):
        assert sum(p.kind == "convolution" for p in prims) == 2
        assert 0 < sum(p.ms for p in prims) <= wall   # every primitive ran inside the timed run
    costs = tr.conv_costs()
    assert [(c.dims["ic"], c.dims["oc"]) for c in costs] == [(8, 16), (16, 16)]
    assert all(c.conv_ms > 0 for c in costs)
    assert tr.unprofiled_ms > 0


def test_runs_must_be_positive():
    with pytest.raises(ValueError, match="runs must be >= 1"):
        trace_torchscript(_Tiny().eval(), (1, 8, 16, 16), runs=0)
