"""Fitting regressors for kernel types with few measurements: never negative, never from too little data."""

import numpy as np
import pytest

from hwnas.builder._fit import MIN_FIT_SAMPLES, fit_type
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


def test_unknown_kernel_error_names_the_declared_reason():
    err = UnknownKernelError("mha", ["mha"], 3, "p", "does not export to ONNX")
    assert "mha" in str(err) and "does not export to ONNX" in str(err) and err.reason
