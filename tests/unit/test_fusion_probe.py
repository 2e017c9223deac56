"""The fusions a backend's compiled graph shows (untimed), and fusion rules derived from traces starting from them
(issue 14): a probed fusion no training network showed holds, one the traces contradict does not."""

import pytest
import torch

pytest.importorskip("onnxruntime")

from hwnas.builder import FusionConfig, probe_fused_chains                               # noqa: E402
from hwnas.builder._context import derive_fusion_rules                                   # noqa: E402
from hwnas.builder._profile import trace_onnxruntime                                     # noqa: E402
from tests._nets import ResBlockNet                                                      # noqa: E402


def test_the_probe_reads_onnx_runtimes_fusions_from_its_compiled_graphs():
    got = {"-".join(r["ops"]): r for r in probe_fused_chains(
        "onnxruntime-cpu", chains=[("conv", "relu"), ("conv", "silu"), ("bn", "relu"), ("conv", "hswish")])}
    assert got["conv-relu"]["fused"] and not got["conv-silu"]["fused"]
    # after a blocked convolution, NCHWc runs BatchNormalization -> Relu as one node, and folds the two ops of
    # HardSwish into the convolution before a blocked consumer
    assert got["bn-relu"]["fused"] and got["conv-hswish"]["fused"]
    assert len(got["conv-silu"]["graph"]["ab"]) == len(got["conv-silu"]["graph"]["a"]) + 1


def test_the_probe_refuses_a_backend_without_a_graph_and_a_frame_that_changes_the_shape():
    class Blind:
        name = "blind"

        def prepare(self, *a, **k): ...

        def measure(self, *a, **k): ...

        def runtime(self, *a, **k): ...

    with pytest.raises(ValueError, match="compiled_ops"):
        probe_fused_chains(Blind())
    with pytest.raises(ValueError, match="keep the shape"):
        probe_fused_chains("onnxruntime-cpu", config=FusionConfig(32, 16, 3, 2))


@pytest.fixture(scope="module")
def traces():
    torch.manual_seed(0)
    return [trace_onnxruntime(ResBlockNet(c).eval(), (1, 3, s, s), runs=2, warmup=1)
            for c, s in ((16, 16), (32, 16))]


def test_a_prior_rule_no_trace_showed_holds_and_one_the_traces_contradict_does_not(traces):
    plain, _ = derive_fusion_rules(traces)
    assert ("conv", "hswish") not in plain.patterns
    rules, stats = derive_fusion_rules(traces, prior=[("conv", "hswish"), ("add", "relu")])
    assert ("conv", "hswish") in rules.patterns and stats["conv-hswish"] == {"fused": 0, "occurs": 0, "prior": True}
    # add -> relu occurs alone in every trace but ORT ran it inside conv-add-relu, never as add-relu: dropped
    assert ("add", "relu") not in rules.patterns
    assert stats["add-relu"]["occurs"] == len(traces) and stats["add-relu"]["fused"] == 0
    assert set(plain.patterns) <= set(rules.patterns)


def test_a_prior_rule_across_a_block_boundary_is_cut(traces):
    rules, stats = derive_fusion_rules(traces, split_pairs=[("conv", "hswish")], prior=[("conv", "hswish")])
    assert ("conv", "hswish") not in rules.patterns and "conv-hswish" not in stats


def test_a_prior_convolution_rule_no_label_showed_is_priced_by_its_pool(traces):
    from hwnas.builder import InNetworkModel
    from hwnas.graph import OpGraph, OpNode

    rules, _ = derive_fusion_rules(traces, prior=[("conv", "hswish")])
    model = InNetworkModel.fit(traces, [t.run_ms for t in traces], block=0, rules=rules, absorb_layout=True)
    assert "conv-hswish" in model.pools["conv-*"] and "conv-hswish" in model.specs
    a = {"kernel": [3, 3], "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1, "cin": 16,
         "cout": 16, "bias": True}
    g = OpGraph([OpNode("c", "conv", ["x"], [(1, 16, 16, 16)], (1, 16, 16, 16), a),
                 OpNode("h", "hswish", ["c"], [(1, 16, 16, 16)], (1, 16, 16, 16), {})], ["x"])
    (k,) = model.kernels(g)
    assert k.type == "conv-hswish"
    assert model.kernel_latencies([k])[0] > 0 and model.fallbacks == {}
