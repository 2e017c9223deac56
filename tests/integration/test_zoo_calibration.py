"""Zoo measurement (resumable passes) and calibration written into a real predictor."""

import shutil

import numpy as np
import pytest

from hwnas.builder._calibrate import calibrate_build, network_sums, zoo_measurements
from hwnas.builder._protocol import QUICK_PROTOCOL
from hwnas.builder._store import open_store
from hwnas.builder._zoo import measure_zoo, zoo, zoo_key
from hwnas.predictor import load_latency_predictor


@pytest.mark.slow
def test_zoo_pass_measures_a_subset_and_resumes(tmp_path):
    store = tmp_path / "zoo.jsonl"
    done, failed = measure_zoo("onnxruntime-cpu", store, 0, QUICK_PROTOCOL, every=10, families=("squeezenet",),
                               progress=False)
    assert (done, failed) == (4, 0)
    assert measure_zoo("onnxruntime-cpu", store, 0, QUICK_PROTOCOL, every=10, families=("squeezenet",),
                       progress=False) == (0, 0)
    again = measure_zoo("onnxruntime-cpu", store, 1, QUICK_PROTOCOL, every=20, families=("squeezenet",),
                        progress=False)
    assert again == (2, 0)                                  # a second pass is a separate set of records
    first, second = zoo_measurements(store, 0), zoo_measurements(store, 1)
    assert len(first) == 4 and set(second) <= set(first)
    assert all(r["ms"] > 0 and r["family"] == "squeezenet" for r in first.values())


@pytest.mark.slow
def test_calibration_is_fitted_from_the_store_and_applied_by_the_predictor(tmp_path):
    build = tmp_path / "build"
    # by name (an alias resolves to the ISA-tagged folder), not by folder name
    shutil.copytree(load_latency_predictor("onnxruntime-cpu-amd-epyc").path, build / "predictor")
    (build / "raw").mkdir()
    models = [m for m in zoo(("squeezenet", "mobilenet_v2"))][::3][:24]
    base = load_latency_predictor(build / "predictor")
    base.metadata.pop("calibration", None)
    from hwnas.predictor import LatencyPredictor

    raw = LatencyPredictor({k: v for k, v in base.metadata.items() if k != "calibration"}, base.regressors)
    kernels = [raw.kernels(m.build(), "torch", m.input_shape) for m in models]
    sums = network_sums(raw, kernels)
    # synthetic "measurements": 25% above the kernel sum, plus the per-call overhead
    with open_store(build / "raw" / "zoo.jsonl") as store:
        for m, s in zip(models, sums):
            ms = 1.25 * sum(d["ms"] for d in s.values()) + raw.overhead_ms
            store.append(zoo_key(m.key, 0), ms=ms, protocol=QUICK_PROTOCOL, kind="zoo", family=m.family,
                         model=m.key, pass_id=0)
    cal = calibrate_build(build, progress=False)
    assert cal["n_networks"] == len(models)
    assert cal["accuracy"]["calibrated_5fold_cv"]["within_5pct"] > cal["accuracy"]["uncalibrated"]["within_5pct"]
    pred = load_latency_predictor(build / "predictor")
    assert pred.metadata["calibration"]["n_networks"] == len(models)
    m = models[5]
    ratio = (pred.predict(m.build(), "torch", m.input_shape) - pred.overhead_ms) / \
        (raw.predict(m.build(), "torch", m.input_shape) - raw.overhead_ms)
    assert ratio == pytest.approx(1.25, rel=0.02)
    assert np.isfinite(pred.overhead_ms)
    # the fitted factors themselves: weighted by each type's share of the latency they average the true 1.25 (one
    # factor per type is not identifiable from networks whose types all scale together; the ridge keeps the small
    # types near 1 and the large ones take up the rest)
    total = sum(d["ms"] for s in sums for d in s.values())
    weighted = sum(pred.kernel_scale.get(t, 1.0) * d["ms"] for s in sums for t, d in s.items()) / total
    assert weighted == pytest.approx(1.25, rel=0.02)
    assert pred.kernel_scale == cal["kernel_scale"] and all(1.0 < pred.kernel_scale[t] <= 2.0 for t in
                                                            ("conv-relu", "conv-relu6", "conv"))
    # and every network's calibrated prediction reproduces its synthetic measurement (in sample)
    for m, ks, s in zip(models, kernels, sums):
        want = 1.25 * sum(d["ms"] for d in s.values()) + raw.overhead_ms
        got = float(pred.kernel_latencies(ks).sum()) + pred.overhead_ms
        assert got == pytest.approx(want, rel=0.02), m.key
