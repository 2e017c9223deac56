"""Fusion rule, catalogue modules and detection (synthetic timings; one tiny real run, nothing asserted on time)."""

import math

import pytest
import torch

from hwnas.builder._fusion import (DEFAULT_CONFIGS, FUSION_CATALOGUE, FusionConfig, build_chain,
                                   build_test_modules, detect_fusion_rules, fuses, fusion_gain, vote)
from hwnas.builder._protocol import QUICK_PROTOCOL


@pytest.mark.parametrize("t_a, t_b, t_ab, expected", [
    (1.0, 1.0, 1.0, True),     # B is free inside A: saved 1.0 > 0.5
    (1.0, 1.0, 2.0, False),    # no saving
    (1.0, 1.0, 2.5, False),    # together slower
    (1.0, 1.0, 1.5, False),    # exactly at the threshold: not strictly above
    (1.0, 1.0, 1.49, True),
    (10.0, 0.2, 10.0, True),   # a cheap activation absorbed into a conv
    (10.0, 0.2, 10.15, False),  # saved 0.05 < 0.1
])
def test_fuses_synthetic(t_a, t_b, t_ab, expected):
    assert fuses(t_a, t_b, t_ab) is expected


def test_fuses_threshold_and_gain():
    assert fusion_gain(2.0, 1.0, 2.0) == pytest.approx(1.0)
    assert fuses(1.0, 1.0, 1.8, threshold=0.1)
    assert not fuses(1.0, 1.0, 1.8, threshold=0.5)


@pytest.mark.parametrize("bad", [(0.0, 1.0, 1.0), (1.0, -1.0, 1.0), (1.0, 1.0, math.nan), (math.inf, 1.0, 1.0),
                                 (1.0, 1.0, 0.0)])
def test_fuses_rejects_bad_times(bad):
    with pytest.raises(ValueError):
        fuses(*bad)


def test_vote_majority_tie_and_evidence():
    yes, no = {"t_a": 1.0, "t_b": 1.0, "t_ab": 1.0}, {"t_a": 1.0, "t_b": 1.0, "t_ab": 2.0}
    r = vote([yes, yes, no])
    assert r["fused"] and r["votes_for"] == 2 and r["votes"] == 3 and len(r["evidence"]) == 3
    assert r["evidence"][2]["fused"] is False and "gain" in r["evidence"][0]
    assert vote([yes, no])["fused"] is False  # tie -> not fused
    with pytest.raises(ValueError):
        vote([])


def test_catalogue_has_required_chains():
    names = {"-".join(c) for c in FUSION_CATALOGUE}
    for required in ["conv-bn", "conv-relu", "conv-relu6", "conv-hswish", "conv-silu", "conv-bn-relu",
                     "conv-bn-relu6", "conv-bn-hswish", "conv-bn-silu", "dwconv-bn", "dwconv-bn-relu",
                     "dwconv-bn-relu6", "dwconv-bn-hswish", "bn-relu", "add-relu", "fc-relu", "conv-add",
                     "conv-bn-add"]:
        assert required in names


@pytest.mark.parametrize("cfg", [FusionConfig(8, 12, 3, 1), FusionConfig(4, 9, 3, 2, out_channels=6),
                                 FusionConfig(6, 7, 1, 1)])
@pytest.mark.parametrize("ops", FUSION_CATALOGUE, ids="-".join)
def test_catalogue_chains_forward_with_shapes(ops, cfg):
    mods = build_test_modules(ops, cfg)
    assert mods["b"][1] == mods["a"][0].output_shape  # B's input is A's output
    assert mods["ab"][0].output_shape == mods["b"][0].output_shape
    with torch.no_grad():
        for key, (module, shape) in mods.items():
            assert not module.training
            y = module(torch.randn(shape))
            assert tuple(y.shape) == module.output_shape, key
            assert torch.isfinite(y).all()


def test_chain_shapes_explicit():
    c = build_chain(["conv", "bn", "relu"], FusionConfig(8, 16, 3, 2, out_channels=12))
    assert c.input_shape == (1, 8, 16, 16) and c.output_shape == (1, 12, 8, 8)
    d = build_chain(["dwconv", "bn"], FusionConfig(8, 15, 5, 2))
    assert d.output_shape == (1, 8, 8, 8)
    f = build_chain(["fc", "relu"], FusionConfig(32, 1, out_channels=10))
    assert f.input_shape == (1, 32) and f.output_shape == (1, 10)


def test_residual_add_adds_chain_input_and_add_alone_adds_constant():
    cfg = FusionConfig(4, 6, 3, 1)
    chain = build_chain(["conv", "add"], cfg)
    conv = build_chain(["conv"], cfg)
    x = torch.randn(chain.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(chain(x), chain.ops[0](x) + x)
        add = build_chain(["add"], cfg)
        # x + fixed tensor; (x + c) - x differs from c by rounding on the scale of x, not of c
        assert torch.allclose(add(x) - x, add(torch.zeros_like(x)), atol=1e-6)
    assert conv.output_shape == chain.output_shape
    strided = build_chain(["conv", "add"], FusionConfig(4, 6, 3, 2))  # shapes differ: constant operand
    assert strided(torch.randn(strided.input_shape)).shape == strided.output_shape


def test_builders_leave_global_rng_alone_and_are_seeded():
    state = torch.get_rng_state()
    a = build_chain(["conv", "bn"], FusionConfig(4, 6))
    b = build_chain(["conv", "bn"], FusionConfig(4, 6))
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a.ops[0].weight, b.ops[0].weight)


def test_unsupported_op():
    with pytest.raises(ValueError, match="unsupported op 'softmax'"):
        build_chain(["conv", "softmax"], FusionConfig(4, 6))
    with pytest.raises(ValueError):
        build_test_modules(["conv"], FusionConfig(4, 6))


@pytest.mark.parametrize("fusing", [True, False])
def test_detect_fusion_rules_with_fake_timings(monkeypatch, fusing):
    """Chains cost 1 ms per op, or 1 ms whatever their length when ``fusing`` (timing replaced by a fake)."""
    import hwnas.builder._fusion as fusion

    calls = []

    def fake_time_items(be, items, protocol, rounds):
        calls.append(rounds)
        return {k: [(1.0 if fusing else float(len(m.ops)),) * protocol.runs_per_block] * (protocol.blocks * rounds)
                for k, (m, _) in items.items()}

    monkeypatch.setattr(fusion, "_time_items", fake_time_items)
    cfgs = [FusionConfig(4, 8), FusionConfig(8, 4, 1, 1)]
    rules = detect_fusion_rules("torchscript-cpu", cfgs, QUICK_PROTOCOL, progress=False, rounds=2,
                                chains=[("conv", "bn", "relu"), ("bn", "relu"), ("fc", "relu")], graph_check=False)
    assert [r["name"] for r in rules] == ["conv-bn-relu", "bn-relu", "fc-relu"]
    for r in rules:
        assert r["fused"] is fusing and r["votes"] == 2 and r["backend"] == "torchscript-cpu"
        assert r["b"] == "relu" and r["a"] == r["ops"][:-1] and r["rounds"] == 2 and r["graph_fused"] is None
        for e in r["evidence"]:
            assert {"t_a", "t_b", "t_ab", "gain", "fused", "config", "input_shape", "round_votes"} <= set(e)
            assert e["round_votes"] == [fusing, fusing]
    assert calls == [2] * 6
    with pytest.raises(ValueError):
        detect_fusion_rules("torchscript-cpu", cfgs, QUICK_PROTOCOL, progress=False, rounds=0)


def test_detect_fusion_rules_real_backend_tiny():
    rules = detect_fusion_rules("torchscript-cpu", [FusionConfig(4, 8)], QUICK_PROTOCOL, progress=False,
                                chains=[("conv", "relu")], rounds=2)
    (r,) = rules
    e = r["evidence"][0]
    assert all(math.isfinite(e[k]) and e[k] > 0 for k in ("t_a", "t_b", "t_ab"))
    assert isinstance(r["fused"], bool) and len(e["round_votes"]) == 2
    assert e["graph"]["ab"] and isinstance(r["graph_fused"], bool)


@pytest.mark.parametrize("backend", ["torchscript-cpu", "onnxruntime-cpu"])
def test_graph_evidence_conv_bn_folds(backend):
    """Both backends fold an inference BatchNorm into the conv: a structural fact, no timing involved."""
    from hwnas.builder._backends import get_backend
    from hwnas.builder._fusion import _graph_evidence

    g = _graph_evidence(get_backend(backend), build_test_modules(["conv", "bn"], FusionConfig(8, 8)))
    assert g["fused"] and len(g["ab"]) == len(g["a"])


def test_default_configs_reasonable():
    assert len(DEFAULT_CONFIGS) >= 3 and len(DEFAULT_CONFIGS) % 2 == 1  # odd: no ties
