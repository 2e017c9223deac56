"""Fitting regressors for kernel types with few measurements: never negative, never from too little data."""

import numpy as np
import pytest

from hwnas.builder._fit import MIN_FIT_SAMPLES, fit_regressors, fit_type
from hwnas.errors import UnknownKernelError
from hwnas.kernels import FEATURES


def _rows(values):
    rows = []
    for i, (macs, ms) in enumerate(values):
        f = {name: 1.0 for name in FEATURES}
        f.update(macs=float(macs), elementwise=float(10 * i), in_elems=float(100 + i), out_elems=float(100 - i))
        rows.append((f, float(ms)))
    return rows


def test_few_samples_give_a_linear_model_that_never_prices_below_zero():
    # A decreasing trend in one feature would extrapolate below 0 ms with an unconstrained least-squares fit.
    rows = _rows([(1, 0.9), (2, 0.7), (3, 0.6), (4, 0.4), (5, 0.35)])
    (reg, names, target), report = fit_type("softmax", rows)
    assert report["model"] == "linear" and target == "ms"
    far = np.array([[1e6, 1e6, 1e6, 1e6], [0, 0, 0, 0], [1e9, 0, 1e3, 0]], dtype=np.float64)
    pred = reg.predict(far[:, : len(names)])
    assert np.all(pred >= 0), pred


def test_too_few_samples_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match="at least"):
        fit_type("mha", _rows([(1, 0.5)] * (MIN_FIT_SAMPLES - 1)))


def test_declared_unsupported_kernel_type_raises_through_kernel_latencies(tmp_path):
    """A type with too few measurements is declared unsupported by the fit; pricing it raises with that reason."""
    from torch import nn

    from hwnas.predictor import load_latency_predictor
    from hwnas.predictor._format import write_predictor

    fc_rows = _rows([(m, 0.01 + 0.002 * m) for m in range(1, 13)])
    regs, kernels, _, unsupported = fit_regressors({"fc": fc_rows, "tanh": _rows([(1, 0.5)])}, "onnxruntime-cpu")
    assert set(regs) == {"fc"} and set(unsupported) == {"tanh"}
    meta = {"name": "declared", "version": "0", "backend": "onnxruntime-cpu", "device": {"description": "test"},
            "threads": 1, "batch_size": 1, "precision": "fp32", "units": "ms", "fusion_rules": [],
            "zero_cost_ops": ["dropout", "identity"], "model_overhead_ms": 0.0, "kernels": kernels,
            "unsupported_kernel_types": unsupported}
    pred = load_latency_predictor(write_predictor(tmp_path / "p", meta, regs))
    fc_only = pred.kernels(nn.Linear(8, 4), "torch", (1, 8))
    assert [k.type for k in fc_only] == ["fc"] and pred.kernel_latencies(fc_only)[0] > 0   # the priced type works
    kernels_ = pred.kernels(nn.Sequential(nn.Linear(8, 4), nn.Tanh()), "torch", (1, 8))
    assert [k.type for k in kernels_] == ["fc", "tanh"]
    with pytest.raises(UnknownKernelError) as info:
        pred.kernel_latencies(kernels_)
    err = info.value
    assert (err.kernel_type, err.ops, err.position, err.predictor) == ("tanh", ["tanh"], 1, "declared")
    assert err.reason == unsupported["tanh"] and "only 1 successful measurement(s) on onnxruntime-cpu" in err.reason
    assert str(err).endswith(f"'tanh' (kernel 1, ops ['tanh']): {err.reason}; refusing to price it as 0 ms")
    # the same kernel type, not declared: still an error, without a reason
    del meta["unsupported_kernel_types"]
    bare = load_latency_predictor(write_predictor(tmp_path / "q", meta, regs))
    with pytest.raises(UnknownKernelError) as info:
        bare.kernel_latencies(kernels_)
    assert info.value.reason is None and "refusing to price it as 0 ms" in str(info.value)
