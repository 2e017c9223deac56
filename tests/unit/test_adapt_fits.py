"""The fits of ``hwnas adapt`` (similarity, per-type transfer, form choice) and its demo entry, without measuring."""

import math

import numpy as np
import pytest

from hwnas.builder import _adapt
from hwnas.builder._transfer import EXPONENT_BOUNDS, fit_transfer, similarity, spread_sample


def test_similarity_ignores_a_uniform_speed_factor():
    y = np.array([1.0, 2.0, 4.0, 8.0])
    same = similarity(y, y / 3.0)
    assert same["spread"] == pytest.approx(0.0, abs=1e-12)
    assert same["speed_factor"] == pytest.approx(3.0)
    assert same["raw_within10"] == 0.0 and same["scaled_within10"] == 1.0
    assert similarity(y, y * np.array([1, 2, 1, 2]))["spread"] > 0.3
    with pytest.raises(ValueError):
        similarity(y, np.zeros(4))


def test_transfer_recovers_per_type_factors_and_falls_back_to_the_global_pair():
    rng = np.random.default_rng(0)
    types, src, meas = [], [], []
    for ktype, factor, n in (("conv", 3.0, 40), ("dwconv", 1.5, 40), ("rare", 10.0, 2)):
        s = rng.uniform(0.01, 2.0, n)
        types += [ktype] * n
        src += list(s)
        meas += list(s * factor)
    tr = fit_transfer(types, src, meas)
    assert set(tr["kernel_types"]) == {"conv", "dwconv"}   # "rare" has too few kernels: the global pair
    for ktype, factor in (("conv", 3.0), ("dwconv", 1.5)):
        a, b = tr["kernel_types"][ktype]
        assert b == pytest.approx(1.0, abs=0.01)   # the pull towards the global pair (2 of 40 kernels)
        assert math.exp(a) == pytest.approx(factor, rel=0.03)
    assert EXPONENT_BOUNDS[0] <= tr["default"][1] <= EXPONENT_BOUNDS[1]
    assert tr["holdout"]["per_type_rmspe"] < tr["holdout"]["global_rmspe"]
    with pytest.raises(ValueError, match="at least 2"):
        fit_transfer(["conv"], [1.0], [2.0])


def test_spread_sample_keeps_the_ends():
    items = [{"key": str(i), "size": float(i)} for i in range(100)]
    picked = spread_sample(items, "size", 5)
    assert [p["size"] for p in picked] == [0.0, 25.0, 50.0, 74.0, 99.0]
    assert spread_sample(items[:3], "size", 5) == items[:3]


def test_choose_form_ships_a_refitted_form():
    forms = {"global+source": {"rmspe": 0.05}, "global+refit": {"rmspe": 0.2}, "kernels+refit": {"rmspe": 0.1}}
    assert _adapt.choose_form(forms) == "kernels+refit"
    assert _adapt.choose_form({"global+source": {"rmspe": 0.1}}) == "global+source"


def test_ensure_predictor_adapts_only_without_a_match(monkeypatch, tmp_path):
    import hwnas.predictor as hp

    class Entry:
        name = "matching"

    calls = []
    monkeypatch.setattr(hp, "select", lambda backend: hp.Selection(Entry(), True, ""))
    monkeypatch.setattr(_adapt, "adapt", lambda cfg, **kw: calls.append(cfg) or {"name": "new"})
    assert _adapt.ensure_predictor("torchscript-cpu", log=None) == "matching" and not calls
    monkeypatch.setattr(hp, "select", lambda backend: hp.Selection(Entry(), False, "no match"))
    said = []
    assert _adapt.ensure_predictor("torchscript-cpu", time_budget_min=2, out=tmp_path, log=said.append) == "new"
    assert calls[0].time_budget_min == 2 and calls[0].out == tmp_path and calls[0].register
    assert "no match" in said[0]


def test_an_adapted_predictor_starts_from_the_source_types_as_loaded(tmp_path):
    # torchscript-cpu-amd-epyc-avx512 was measured before the batch-norm fold: its file names conv-bn, which
    # the loader prices as conv. The adapted metadata must name the loaded types, or it cannot be written.
    from hwnas.predictor import load_latency_predictor, write_predictor

    source = load_latency_predictor("torchscript-cpu-amd-epyc-avx512")
    assert "conv-bn" in source.metadata["kernels"]   # the case this test is about
    meta = _adapt.source_metadata(source)
    assert set(meta["kernels"]) == set(source.regressors) and "conv-bn" not in meta["kernels"]
    assert not {"calibration", "transfer", "accuracy"} & set(meta)
    write_predictor(tmp_path / "p", {**meta, "name": "adapted-test"}, source.regressors)
    again = load_latency_predictor(tmp_path / "p")
    assert again.kernel_specs == source.kernel_specs


def test_kernel_types_measured_here_are_never_transferred_or_rescaled():
    # a machine twice as slow as the source: the source's types get the factor, the types measured here do not
    from hwnas.kernels import tensor_kernel

    class _Bare:
        def kernel_latencies(self, ks):
            return np.array([k.features["out_elems"] for k in ks])

    nets = [[tensor_kernel("conv", (1, 4 * (i + 1), 10, 10)), tensor_kernel("to_plain", (1, 2, 10, 10))]
            for i in range(10)]
    y = np.array([2 * ks[0].features["out_elems"] + ks[1].features["out_elems"] for ks in nets])
    probe = _adapt._ProbeNetworks(_Bare(), nets, y, 0.0, None, native={"to_plain"})
    tr, cal = probe.fit("global", list(range(10)), None)
    assert tr["kernel_types"]["to_plain"] == [0.0, 1.0]
    assert tr["default"][1] == 1.0 and 1.6 < math.exp(tr["default"][0]) < 2.0   # fitted on the networks' sums
    assert cal is None
