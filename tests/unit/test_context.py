"""In-network kernel labels from ONNX Runtime traces (issue 14, item 2): the kernels as ONNX Runtime fused them
carry every node's time, fusion rules read from traces name the fused chains, and a model fitted on the labels
prices a network. Nothing here asserts a timing."""

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("onnxruntime")

from hwnas.builder._context import InNetworkModel, derive_fusion_rules, trace_labels   # noqa: E402
from hwnas.builder._profile import NodeTrace, ort_kernel_groups, trace_onnxruntime     # noqa: E402
from tests._nets import ResBlockNet                                                    # noqa: E402


@pytest.fixture(scope="module")
def traces():
    torch.manual_seed(0)
    return [trace_onnxruntime(ResBlockNet(c).eval(), (1, 3, s, s), runs=3, warmup=1) for c, s in
            ((16, 16), (16, 24), (32, 16), (32, 24))]


def test_kernel_groups_carry_every_node_time_and_follow_ort_fusion(traces):
    for t in traces:
        kernels, ms = ort_kernel_groups(t)
        assert sum(len(k.nodes) for k in kernels) == len(t.graph)          # every op in exactly one kernel
        timed = sum(n[2] for n in t.nodes if n[3] is not None)
        assert ms.sum() == pytest.approx(timed, rel=1e-12) and timed > 0   # node times sum to the kernel times
        assert all(n[3] is not None for n in t.nodes)                      # every node named after an op
        types = [k.type for k in kernels]
        assert "conv-relu" in types and "conv-add-relu" in types           # ORT fuses the residual and the relu
    d = traces[0].to_dict()
    again = NodeTrace.from_dict(d)
    assert again.nodes == traces[0].nodes and len(again.graph) == len(traces[0].graph)


def test_labels_include_the_layout_conversions_as_kernels(traces):
    rows = trace_labels(traces[0])
    kinds = {k.type for k, _ in rows}
    assert kinds & {"to_plain"} == {"to_plain"}                            # blocked pool output into the flatten
    assert all(ms > 0 for _, ms in rows)
    conv = [k for k, _ in rows if k.type == "to_plain"][0]
    assert conv.features["out_elems"] == pytest.approx(16 / 1e6)          # (1, 16, 1, 1) after the pool


def test_rules_derived_from_traces_name_the_fused_chains(traces):
    rules, stats = derive_fusion_rules(traces)
    assert ("conv", "relu") in rules.patterns and ("conv", "add", "relu") in rules.patterns
    assert stats["conv-relu"]["fused"] == stats["conv-relu"]["occurs"] == len(traces)


def test_split_pairs_cut_the_derived_rules(traces):
    rules, stats = derive_fusion_rules(traces, split_pairs=[("conv", "add")])
    assert ("conv", "relu") in rules.patterns
    assert not any(("conv", "add") == tuple(p[i:i + 2]) for p in rules.patterns for i in range(len(p) - 1))
    assert ("add", "relu") in rules.patterns                              # the cut-off tail is a rule of its own


def test_a_model_fitted_on_labels_prices_a_network(traces):
    model = InNetworkModel.fit(traces, block=8)
    for t in traces:
        ms = model.predict(t.graph)
        assert np.isfinite(ms) and ms > 0
        assert model.predict_groups(t) > 0
    ktypes = {k.type for k in model.kernels(traces[0].graph)}
    assert "to_plain" in ktypes and "conv-add-relu" in ktypes


def test_absorbed_conversions_keep_the_total_and_the_graphs_kernels(traces):
    for t in traces:
        plain = trace_labels(t)
        absorbed = trace_labels(t, absorb_layout=True)
        total = sum(n[2] for n in t.nodes) + sum(r[1] for r in t.reorders)
        assert sum(ms for _, ms in plain) == pytest.approx(total, rel=1e-9)
        assert sum(ms for _, ms in absorbed) == pytest.approx(total, rel=1e-9)
        assert not {k.type for k, _ in absorbed} & {"to_plain", "to_blocked"}


def test_a_written_in_network_predictor_prices_as_the_model(traces, tmp_path):
    import warnings

    from hwnas.device import fingerprint
    from hwnas.predictor import load_latency_predictor

    model = InNetworkModel.fit(traces, block=0, absorb_layout=True)
    model.overhead, model.scale = (0.05, 0.002, 0.01), 1.1
    path = model.write(tmp_path / "p", fingerprint(), name="onnxruntime-cpu-test-in-network")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # written for this machine: no device warning
        pred = load_latency_predictor(path)
        for t in traces:
            assert pred.predict(t.graph, model_type="graph") == pytest.approx(model.predict(t.graph), rel=1e-9)
    with pytest.raises(ValueError, match="block=0"):
        InNetworkModel.fit(traces, block=8).write(tmp_path / "q", fingerprint())


def test_the_network_term_is_fitted_on_sums_over_kernels(traces):
    from hwnas.graph import capture

    model = InNetworkModel.fit(traces, block=0, absorb_layout=True)
    model.scale = 1.0
    graphs = [capture(nn.Sequential(*[nn.Sequential(nn.Conv2d(3 if i == 0 else c, c, 3, padding=1), nn.ReLU())
                                      for i in range(depth)]).eval(), "torch", (1, 3, 16, 16))
              for depth, c in ((1, 16), (2, 16), (3, 32), (4, 16), (2, 64))]
    truth = []
    for g in graphs:
        kernels = model.kernels(g)
        params = sum(k.features["params"] for k in kernels)
        truth.append(float(model.kernel_latencies(kernels).sum()) + 0.1 + 0.01 * len(kernels) + 0.5 * params)
    model.fit_network_term(graphs, truth, rescale=False)
    assert model.overhead == pytest.approx((0.1, 0.01, 0.5), rel=1e-5, abs=1e-8)
    assert [model.predict(g) for g in graphs] == pytest.approx(truth, rel=1e-9)


def test_a_completed_predictor_prices_types_without_labels_as_the_isolated_one(traces, tmp_path):
    import warnings

    from hwnas.device import fingerprint
    from hwnas.kernels import FusionRules, detect_kernels
    from hwnas.graph import capture
    from hwnas.predictor import load_latency_predictor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")               # an embedded predictor of another machine is the source
        iso = load_latency_predictor("onnxruntime-cpu-amd-epyc-avx512")
    model = InNetworkModel.fit(traces, block=0, absorb_layout=True, fallback=iso)
    model.overhead = (0.05, 0.002, 0.01)
    model.rules = FusionRules([*model.rules.to_list(), ["reshape", "permute"]])   # a prefix no label had
    pred = load_latency_predictor(model.write(tmp_path / "p", fingerprint(), name="onnxruntime-cpu-test-completed",
                                              complete_from=iso))
    assert "permute" not in model.specs and "permute" in pred.kernel_specs
    # a rule without a regressor is left out (its ops priced one by one, not refused); the isolated
    # predictor's refusals are kept, with their reasons
    assert ["reshape", "permute"] not in pred.metadata["fusion_rules"] and pred.metadata["fusion_rules"]
    assert pred.metadata["unsupported_kernel_types"] == iso.metadata["unsupported_kernel_types"]
    g = capture(nn.Sequential(nn.Conv2d(3, 8, 1), nn.Flatten(), nn.Linear(8 * 64, 4)).eval(), "torch", (1, 3, 8, 8))
    kernels = detect_kernels(g, pred.rules)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = pred.kernel_latencies(kernels)
        theirs = iso.kernel_latencies(kernels)
    borrowed = [(k, a, b) for k, a, b in zip(kernels, ours, theirs) if k.type not in model.specs]
    assert borrowed                                    # the lone conv (no relu) had no label
    for k, a, b in borrowed:                           # the isolated price plus the network term's slopes
        assert a == pytest.approx(model.scale * b + 0.002 + 0.01 * k.features["params"], rel=1e-9)


def test_rule_labels_give_kernels_ort_ran_inside_a_neighbour_zero_and_the_model_prices_them_free(traces):
    from hwnas.builder._context import rule_labels
    from hwnas.kernels import FusionRules

    rules = FusionRules([["conv", "relu"]])            # ORT also fuses the residual add and its relu
    for t in traces:
        rows = rule_labels(t, rules)
        total = sum(n[2] for n in t.nodes) + sum(r[1] for r in t.reorders)
        assert sum(ms for _, ms in rows) == pytest.approx(total, rel=1e-9)
        by = {k.type: ms for k, ms in rows}
        assert by["add"] == 0 and by["relu"] == 0 and by["conv"] > 0   # the add and relu ran in the conv's node
    model = InNetworkModel.fit(traces, block=0, absorb_layout=True, rules=rules)
    assert {"add", "relu"} <= model.free_types
    kernels = model.kernels(traces[0].graph)
    ms = model.kernel_latencies(kernels)
    assert all(m == 0 for k, m in zip(kernels, ms) if k.type in ("add", "relu"))
    assert all(m > 0 for k, m in zip(kernels, ms) if k.type not in ("add", "relu"))


def test_in_network_accuracy_summary_has_predictor_accuracys_keys(traces):
    from experiments.benchmarks import in_network as bench

    rows = []
    for i, t in enumerate(traces):
        truth = 1.0 + i
        row = {"model": f"m{i}", "family": "a" if i < 2 else "b", "side": 16 + 8 * (i % 2), "trace": t,
               "measured_ms": truth, "noise": 1.0, "layout_exact": True}
        row.update({m: truth * (1.05 if m == "cv" else 1.3) for m in (*bench.METHODS, "cv", "raw_cv")})
        row["op_lookup"] = truth if i < 3 else None      # the last network has an op the lookup cannot price
        rows.append(row)
    bench._flops_lofo(rows)
    summary = bench.accuracy_summary(bench.summarise(rows))
    keys = {"noise_within10", "raw_within10", "cal_cv_within10", "lofo_within10", "flops_within10",
            "op_lookup_within10", "raw_sum_ratio_median", "kendall_tau"}
    assert keys <= set(summary["all"]) and set(summary["families"]) == {"a", "b"}
    assert summary["all"]["cal_cv_within10"] == 100.0 and summary["all"]["raw_within10"] == 0.0
    assert summary["all"]["raw_sum_ratio_median"] == pytest.approx(1.3)
    assert summary["all"]["op_lookup_within10"] == 75.0          # the unpriced network counts as a miss
    assert summary["families"]["b"]["op_lookup_within10"] == 50.0 and summary["families"]["a"]["noise_within10"] == 100.0
    assert "op lookup" in bench._table(bench.summarise(rows))


class _SposSplit(nn.Module):
    """SPOS's shuffle-and-split into a conv and a concat."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv = nn.Conv2d(c // 2, c // 2, 1)

    def forward(self, x):
        x = self.stem(x)
        n, c, h, w = x.size()
        x = x.reshape(n * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w)
        return torch.cat([x[0], self.conv(x[1])], 1)


def test_a_trace_stored_before_a_graph_pass_reads_as_a_fresh_trace(monkeypatch):
    from hwnas.graph import _passes

    fresh = trace_onnxruntime(_SposSplit().eval(), (1, 3, 8, 8), runs=2, warmup=1)
    with monkeypatch.context() as m:          # the capture as it was before the shuffle-and-split pass
        m.setattr(_passes, "fold_shuffle_split", lambda g: g)
        old = trace_onnxruntime(_SposSplit().eval(), (1, 3, 8, 8), runs=2, warmup=1)
    assert "channel_shuffle" not in {n.op for n in old.graph}
    again = NodeTrace.from_dict(old.to_dict())
    assert [n.op for n in again.graph] == [n.op for n in fresh.graph]
    assert {"channel_shuffle", "split"} <= {n.op for n in again.graph}
    assert [(a, b, e) for a, b, _, e in again.nodes] == [(a, b, e) for a, b, _, e in fresh.nodes]
    assert [(k, s, t) for k, _, s, t in again.reorders] == [(k, s, t) for k, _, s, t in fresh.reorders]
    kernels, ms = ort_kernel_groups(again)                 # no node time lost on the way
    assert ms.sum() == pytest.approx(sum(n[2] for n in again.nodes if n[3] is not None), rel=1e-12)


def test_pool_of_groups_convolutions_by_main_op_when_the_rest_is_an_epilogue():
    from hwnas.builder._fit import POOLED_CONV, features_for, pool_of

    assert pool_of("conv-relu") == pool_of("conv-add-relu") == pool_of("conv") == "conv-*"
    assert pool_of("dwconv-relu6") == "dwconv-*"
    assert pool_of("conv-maxpool") is None and pool_of("fc-relu") is None and pool_of("add-relu") is None
    assert features_for("conv-*") == POOLED_CONV and "epi_add" in POOLED_CONV


def test_pooled_convolutions_share_one_regressor_and_a_written_predictor_stores_it_once(traces, tmp_path):
    from hwnas.device import fingerprint
    from hwnas.predictor._format import read_predictor

    model = InNetworkModel.fit(traces, block=0, absorb_layout=True)
    assert {"conv-relu", "conv-add-relu"} <= set(model.pools["conv-*"])
    assert model.regressors["conv-relu"] is model.regressors["conv-add-relu"] is model.regressors["conv-*"]
    alone = InNetworkModel.fit(traces, block=0, absorb_layout=True, pool=False)
    assert not alone.pools and alone.regressors["conv-relu"] is not alone.regressors["conv-add-relu"]
    # the epilogue is a feature of the pooled regressor: the same convolution with and without the residual add
    kernels = {k.type: k for k in model.kernels(traces[0].graph)}
    assert kernels["conv-add-relu"].features["epi_add"] == 1 and kernels["conv-relu"].features["epi_add"] == 0
    meta, regs = read_predictor(model.write(tmp_path / "p", fingerprint(), name="onnxruntime-cpu-test-pooled"))
    prefixes = {meta["kernels"][t]["regressor"]["prefix"] for t in model.pools["conv-*"]}
    assert len(prefixes) == 1 and "conv-*" not in meta["kernels"]
    assert meta["protocol"]["pooled_kernel_types"] == model.pools
    # a convolution type no label showed (relu6 epilogue) is priced by the pool, counted as a fallback
    from hwnas.kernels import Kernel

    k = kernels["conv-relu"]
    six = Kernel("conv-relu6", k.nodes, dict(k.features, epi_relu=0.0, epi_relu6=1.0))
    assert model.kernel_latencies([six])[0] > 0 and model.fallbacks == {"conv-relu6": 1}


def test_the_profilers_cost_per_node_is_recovered_and_taken_off_with_a_floor(traces):
    import dataclasses

    from hwnas.builder._context import NODE_FLOOR, fit_node_overhead, net_of_overhead

    rng = np.random.default_rng(0)
    made, truth = [], []
    for i in range(8):           # networks of 5-40 nodes, unprofiled each node 0.01-0.2 ms, profiled 4 µs more
        n = int(rng.integers(5, 40))
        ms = rng.uniform(0.01, 0.2, size=n)
        nodes = [(f"n{j}", "Conv", float(m) + 0.004, None) for j, m in enumerate(ms)]
        made.append(dataclasses.replace(traces[0], nodes=nodes, reorders=[], run_ms=float(ms.sum() + 0.004 * n)))
        truth.append(float(ms.sum()) * 1.02)      # the unprofiled run, and a share the profiler does not explain
    assert fit_node_overhead(made, truth) == pytest.approx(0.004, rel=1e-6)
    assert fit_node_overhead(made[:3], truth[:3]) == 0.0                 # too few networks to tell
    t = dataclasses.replace(traces[0], nodes=[("a", "Conv", 1.0, "x"), ("b", "Relu", 0.002, "y"),
                                              ("c", "Relu", 0.0, "z")], reorders=[("ReorderOutput", 0.5, "x", ["y"])])
    net = net_of_overhead(t, 0.004)
    assert [n[2] for n in net.nodes] == pytest.approx([0.996, NODE_FLOOR * 0.002, 0.0])
    assert net.reorders[0][1] == pytest.approx(0.496) and t.nodes[0][2] == 1.0   # the input trace is untouched
    assert net_of_overhead(t, 0.0) is t


class _Gate(nn.Module):
    """Two convolutions multiplied, then a tanh: ONNX Runtime runs the mul and the tanh as nodes of their own."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(3, c, 1)

    def forward(self, x):
        return torch.tanh(self.a(x) * self.b(x))


def test_an_activation_no_label_showed_is_priced_by_the_elementwise_pool(tmp_path):
    from hwnas.builder._fit import ACT_POOL
    from hwnas.device import fingerprint
    from hwnas.predictor._format import read_predictor

    torch.manual_seed(0)
    gates = [trace_onnxruntime(_Gate(c).eval(), (1, 3, s, s), runs=3, warmup=1) for c, s in
             ((8, 16), (8, 24), (16, 16), (16, 24))]
    model = InNetworkModel.fit(gates, block=0, absorb_layout=True)
    assert {"mul", "tanh"} <= set(model.specs) and ACT_POOL in model.specs
    assert model.regressors["mul"] is not model.regressors[ACT_POOL]          # seen ops keep their own
    assert "silu" in model.pools[ACT_POOL] and "tanh" not in model.pools[ACT_POOL]
    assert model.regressors["silu"] is model.regressors[ACT_POOL]
    meta, regs = read_predictor(model.write(tmp_path / "p", fingerprint(), name="onnxruntime-cpu-test-eltwise"))
    assert meta["kernels"]["silu"]["regressor"] == meta["kernels"]["hswish"]["regressor"]
    assert ACT_POOL not in meta["kernels"] and regs["silu"] is regs["hswish"]
