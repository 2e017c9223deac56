"""Kernel-type calibration: fitted from network measurements, stored as data, applied to every kernel."""

import json

import numpy as np
import pytest

from hwnas.predictor._canonical import rekey, sample_counts, winners

from hwnas.builder._calibrate import SCALE_BOUNDS, apply_calibration, cross_validate, fit_calibration, \
    network_terms
from hwnas.errors import PredictorFileError
from hwnas.predictor import load_latency_predictor
from hwnas.predictor._format import read_predictor, write_predictor

from tests.unit.test_graph import TinyNet
from tests.unit.test_predictor import pred_dir  # noqa: F401 - the module's predictor fixture


def _entry(ms, n=1.0, mparams=0.0, melems=0.0):
    return {"ms": ms, "per_kernel": n, "per_mparam": mparams, "per_melem": melems}


def _networks(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return [{"conv": _entry(float(rng.uniform(1, 10)), float(rng.integers(5, 50)), float(rng.uniform(0, 20))),
             "add": _entry(float(rng.uniform(0.1, 1)), float(rng.integers(1, 10))),
             "rare": _entry(float(rng.uniform(0, 1)) if i < 3 else 0.0)} for i in range(n)]


def _ms(net, t):
    return net[t]["ms"]


def test_fit_recovers_true_factors_and_intercept():
    sums = _networks()
    y = np.array([1.3 * _ms(s, "conv") + 0.8 * _ms(s, "add") + _ms(s, "rare") + 0.05 for s in sums])
    cal = fit_calibration(sums, y, ridge=1e-6, terms=False)
    assert cal["kernel_scale"]["conv"] == pytest.approx(1.3, rel=1e-3)
    assert cal["kernel_scale"]["add"] == pytest.approx(0.8, rel=1e-2)
    assert cal["intercept_ms"] == pytest.approx(0.05, abs=1e-3)
    assert "rare" not in cal["kernel_scale"]          # in 3 networks only: keeps its measured latencies
    assert apply_calibration(cal, sums[0]) == pytest.approx(y[0], rel=1e-3)


def test_factors_stay_within_bounds_and_ridge_pulls_towards_one():
    sums = _networks()
    y = np.array([5.0 * _ms(s, "conv") + _ms(s, "add") for s in sums])   # a factor of 5 is out of bounds
    cal = fit_calibration(sums, y, terms=False)
    assert SCALE_BOUNDS[0] <= min(cal["kernel_scale"].values())
    assert max(cal["kernel_scale"].values()) <= SCALE_BOUNDS[1]
    y = np.array([1.2 * _ms(s, "conv") + _ms(s, "add") for s in sums])
    weak, strong = fit_calibration(sums, y, ridge=1e-6, terms=False), fit_calibration(sums, y, ridge=100.0,
                                                                                       terms=False)
    assert abs(strong["kernel_scale"]["conv"] - 1) < abs(weak["kernel_scale"]["conv"] - 1)


def test_cross_validation_never_scores_a_network_with_itself():
    sums = _networks(40)
    y = np.array([1.2 * _ms(s, "conv") + _ms(s, "add") for s in sums])
    y[7] *= 3.0                                           # one outlier: its own fit would pull towards it
    cv = cross_validate(sums, y, ridge=1e-6, terms=False)
    assert abs(cv[7] - y[7]) > 0.5 * y[7]
    assert np.median(np.abs(cv / y - 1)) < 0.05


def test_additive_terms_recover_memory_costs():
    sums = _networks()
    # a cost of 0.05 ms per million conv weights and 2 us per add kernel, on top of the kernel sums
    y = np.array([_ms(s, "conv") + 0.05 * s["conv"]["per_mparam"] + _ms(s, "add") + 0.002 * s["add"]["per_kernel"]
                  + _ms(s, "rare") for s in sums])
    cal = fit_calibration(sums, y, ridge=1e-8)
    assert cal["kernel_terms"]["conv"]["per_mparam"] == pytest.approx(0.05, rel=0.05)
    assert cal["kernel_terms"]["add"]["per_kernel"] == pytest.approx(0.002, rel=0.1)
    assert all(c >= 0 for v in cal["kernel_terms"].values() for c in v.values())
    assert apply_calibration(cal, sums[3]) == pytest.approx(y[3], rel=1e-2)


def test_network_terms_group_kernels_by_type():
    class K:
        def __init__(self, t, params, elems):
            self.type, self.features = t, {"params": params, "out_elems": elems}

    out = network_terms(np.array([1.0, 2.0, 3.0]), [K("a", 0.5, 1.0), K("b", 0.0, 2.0), K("a", 0.25, 3.0)])
    assert out["a"] == {"ms": 4.0, "per_kernel": 2.0, "per_mparam": 0.75, "per_melem": 4.0}
    assert out["b"]["ms"] == 2.0 and out["b"]["per_kernel"] == 1.0


def test_predictor_applies_calibration_to_each_kernel_and_intercept(pred_dir, tmp_path):  # noqa: F811
    base = load_latency_predictor(pred_dir)
    meta, regs = read_predictor(pred_dir)
    for spec in meta["kernels"].values():
        spec.pop("regressor")
    meta["calibration"] = {"kernel_scale": {"conv-bn-relu": 2.0}, "intercept_ms": 0.25,
                           "kernel_terms": {"add": {"per_kernel": 0.125}}}
    cal = load_latency_predictor(write_predictor(tmp_path / "cal", meta, regs))
    a = {r["type"]: r["ms"] for r in base.predict_kernels(TinyNet(), "torch", (1, 3, 32, 32))}
    b = {r["type"]: r["ms"] for r in cal.predict_kernels(TinyNet(), "torch", (1, 3, 32, 32))}
    # the file's conv-bn-relu factor prices the folded conv-relu kernel
    assert b["conv-relu"] == pytest.approx(2 * a["conv-relu"])
    assert b["add"] == pytest.approx(a["add"] + 0.125)
    assert b["fc"] == pytest.approx(a["fc"])
    diff = cal.predict(TinyNet(), "torch", (1, 3, 32, 32)) - base.predict(TinyNet(), "torch", (1, 3, 32, 32))
    assert diff == pytest.approx(a["conv-relu"] + 0.125 + 0.25)


@pytest.mark.parametrize("bad", [{"kernel_scale": {"conv-bn-relu": -1.0}}, {"kernel_scale": {"fc": "x"}},
                                 {"kernel_terms": {"fc": {"per_kernel": -0.1}}},
                                 {"kernel_terms": {"fc": {"per_banana": 0.1}}},
                                 {"kernel_scale": {}, "intercept_ms": float("nan")}, {"kernel_scale": 3}])
def test_malformed_calibration_is_a_clear_error(pred_dir, tmp_path, bad):  # noqa: F811
    meta, regs = read_predictor(pred_dir)
    for spec in meta["kernels"].values():
        spec.pop("regressor")
    path = tmp_path / "bad"
    if isinstance(bad.get("intercept_ms"), float) and np.isnan(bad["intercept_ms"]):
        meta["calibration"] = {"kernel_scale": {}, "intercept_ms": 0.0}
        write_predictor(path, meta, regs)
        text = (path / "predictor.json").read_text().replace('"intercept_ms": 0.0', '"intercept_ms": NaN')
        (path / "predictor.json").write_text(text)
        with pytest.raises(PredictorFileError):
            load_latency_predictor(path)
        return
    meta["calibration"] = bad
    write_predictor(path, meta, regs)
    with pytest.raises(PredictorFileError, match="calibration"):
        load_latency_predictor(path)


def _embedded_calibrations() -> list[tuple[str, dict, dict]]:
    """(name, predictor.json, its calibration) of every calibrated embedded predictor (no arrays loaded)."""
    from pathlib import Path

    from hwnas.predictor import list_latency_predictors

    out = []
    for info in list_latency_predictors():
        if info.get("source", "embedded") != "embedded":   # the user's own predictors are not this package's data
            continue
        meta = json.loads((Path(info["path"]) / "predictor.json").read_text())
        if meta.get("calibration"):
            out.append((info["name"], meta, meta["calibration"]))
    return out


def test_embedded_predictors_calibration_is_well_formed():
    """At least one embedded predictor is calibrated by its build; each calibration is in bounds, with known terms;
    a build's is the form cross-validation chose, and better than none."""
    from hwnas.predictor import CALIBRATION_TERMS

    calibrations = _embedded_calibrations()
    built = []
    for name, meta, cal in calibrations:
        types = set(meta["kernels"])
        assert tuple(cal.get("bounds", SCALE_BOUNDS)) == SCALE_BOUNDS, name
        # factors, or (an in-network predictor) additive terms only
        assert (cal["kernel_scale"] or cal.get("kernel_terms")) and set(cal["kernel_scale"]) <= types, name
        assert all(SCALE_BOUNDS[0] <= v <= SCALE_BOUNDS[1] for v in cal["kernel_scale"].values()), name
        assert set(cal.get("kernel_terms", {})) <= types, name
        for ktype, terms in cal.get("kernel_terms", {}).items():
            assert set(terms) <= set(CALIBRATION_TERMS) and all(np.isfinite(c) and c >= 0 for c in terms.values()), \
                (name, ktype, terms)
        assert np.isfinite(cal["intercept_ms"]) and cal["n_networks"] >= 20, name
        if "method" in cal:   # fitted by the build (hwnas.builder._calibrate.calibrate_build), not by hwnas adapt
            built.append(name)
            assert cal["n_networks"] >= cal["min_networks"], name
            # the stored form is the one with the lowest cross-validated RMSPE, and it beats no calibration
            acc = cal["accuracy"]
            best = min(acc["forms"], key=lambda f: f["cv"]["rmspe"])
            assert (best["terms"], best["ridge"]) == (cal["terms"], cal["ridge"]), name
            assert best["cv"] == acc["calibrated_5fold_cv"], name
            assert acc["calibrated_5fold_cv"]["n"] == acc["uncalibrated"]["n"] == cal["n_networks"], name
            assert acc["calibrated_5fold_cv"]["rmspe"] < acc["uncalibrated"]["rmspe"], name
    assert built, f"no embedded predictor is calibrated by its build (calibrated: {[c[0] for c in calibrations]})"


@pytest.mark.slow   # loads every calibrated embedded predictor's regressors
def test_embedded_predictors_apply_their_calibration_kernel_by_kernel():
    """Each calibrated embedded predictor, loaded, prices a kernel as factor x uncalibrated + its additive terms
    (after an adapted predictor's transfer), and adds the intercept once."""
    import search_spaces as ss
    from hwnas.predictor import CALIBRATION_TERMS, LatencyPredictor

    calibrations = _embedded_calibrations()
    assert calibrations
    space = ss.create_space("proxyless", input_size=32, num_classes=10, width_mult=0.25)
    net = ss.build_subnet(space, ss.random_arch(space, seed=0)).eval()
    for name, _, cal in calibrations:
        pred = load_latency_predictor(name)
        raw = LatencyPredictor({k: v for k, v in pred.metadata.items() if k != "calibration"}, pred.regressors)
        # the file names its types before the batch-norm fold (conv-bn-relu6): the loaded factors are re-keyed
        chosen = winners(pred.metadata["kernels"], sample_counts(pred.metadata))
        assert pred.kernel_scale == rekey(cal["kernel_scale"], chosen)
        assert pred.kernel_terms == rekey(cal.get("kernel_terms", {}), chosen)
        assert pred.overhead_ms == pytest.approx(raw.overhead_ms + cal["intercept_ms"], abs=1e-12)
        kernels = pred.kernels(net, "torch", (1, 3, 32, 32))
        got, base = pred.kernel_latencies(kernels), raw.kernel_latencies(kernels)
        scale, terms = rekey(cal["kernel_scale"], chosen), rekey(cal.get("kernel_terms", {}), chosen)
        want = np.array([b * scale.get(k.type, 1.0)
                         + sum(c * (1.0 if CALIBRATION_TERMS[t] is None else k.features[CALIBRATION_TERMS[t]])
                               for t, c in terms.get(k.type, {}).items())
                         for k, b in zip(kernels, base)])
        assert any((k.type in scale and scale[k.type] != 1.0) or terms.get(k.type) for k in kernels), name
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=name)
