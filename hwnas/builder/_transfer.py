"""The fits of ``hwnas adapt``: which predictor describes this machine best, and how its kernels map onto it.

Pure numpy on measurements already taken (measuring is :mod:`hwnas.builder._adapt`'s job).

Similarity (as LitePred scores candidate predictors on a small probe): the spread of
``log(measured / predicted)`` over the probe networks once one global factor is removed. A predictor of a machine
that is uniformly 3x slower is as good a source as one of an equally fast machine; what cannot be fixed cheaply is
a ratio that varies from network to network.

Transfer: per kernel type ``t`` a log-linear map from the source's kernel latency to this machine's,
``log ms_here = a_t + b_t log ms_source``, fitted on the probe kernels by least squares with a ridge pull of
``(a_t, b_t)`` towards the global pair fitted on all probe kernels, so a type with few probes stays near the
global map and a type the probe did not see uses it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

#: Exponent bounds of a transfer pair: nearly a factor per type. The probe kernels come from networks at
#: 96-160 px; an exponent far from 1 fitted on them misprices the larger kernels of a 224 px network (measured on
#: ONNX Runtime, AMD EPYC AVX2: bounds 0.6-1.4 put held-out 224 px networks at 0.39 of their latency).
EXPONENT_BOUNDS = (0.95, 1.05)
#: Pseudo-observations pulling a type's pair towards the global pair.
PRIOR_WEIGHT = 2.0
#: Probe kernels a type needs for its own pair.
MIN_KERNELS = 3


def similarity(measured_ms: Sequence[float], predicted_ms: Sequence[float]) -> dict[str, float]:
    """How well a predictor describes this machine, from probe networks (ms both).

    Returns
    -------
    dict
        ``n``; ``spread`` (standard deviation of the log ratio measured/predicted: lower is more similar);
        ``speed_factor`` (median ratio measured/predicted); ``raw_within10`` and ``scaled_within10`` (share of
        networks within ±10% as it is, and after the one global factor).
    """
    y, p = np.asarray(measured_ms, dtype=float), np.asarray(predicted_ms, dtype=float)
    if len(y) == 0 or len(y) != len(p) or np.any(y <= 0) or np.any(p <= 0):
        raise ValueError("similarity needs as many positive predictions as positive measurements, at least one")
    r = np.log(y / p)
    factor = float(np.exp(np.median(r)))
    return {"n": int(len(y)), "spread": float(np.std(r)), "speed_factor": factor,
            "raw_within10": float(np.mean(np.abs(p / y - 1) <= 0.1)),
            "scaled_within10": float(np.mean(np.abs(factor * p / y - 1) <= 0.1))}


def _ridge_line(x: np.ndarray, y: np.ndarray, prior: tuple[float, float], weight: float) -> tuple[float, float]:
    """Least squares ``y = a + b x`` with ``weight`` pseudo-observations pulling (a, b) to ``prior``; b bounded."""
    xm = float(np.mean(x)) if len(x) else 0.0
    # centre x so the pull on the intercept acts at the data's own scale: a + b x = c + b (x - xm)
    c0 = prior[0] + prior[1] * xm
    xc = x - xm
    sxx, sxy, n = float(xc @ xc), float(xc @ (y - np.mean(y))) if len(x) else 0.0, len(x)
    b = (sxy + weight * prior[1]) / (sxx + weight) if (sxx + weight) > 0 else prior[1]
    b = float(np.clip(b, *EXPONENT_BOUNDS))
    c = (float(np.sum(y - b * xc)) + weight * c0) / (n + weight)
    return c - b * xm, b


def fit_transfer(kernel_types: Sequence[str], source_ms: Sequence[float], measured_ms: Sequence[float], *,
                 weight: float = PRIOR_WEIGHT, min_kernels: int = MIN_KERNELS) -> dict[str, Any]:
    """Fit the per-type log-linear transfer from the source's kernel latencies to the measured ones (ms).

    Parameters
    ----------
    kernel_types : sequence of str
        Kernel type of each probe kernel.
    source_ms : sequence of float
        The source predictor's (uncalibrated) latency of each probe kernel, ms.
    measured_ms : sequence of float
        Its latency measured on this machine, ms (values <= 0 are dropped).

    Returns
    -------
    dict
        ``{"kernel_types": {type: [a, b]}, "default": [a, b], "n_kernels": {type: n}, "holdout": {...}}`` with
        ``ms_here = exp(a) * ms_source ** b``; ``holdout`` gives the leave-one-out RMSPE of the per-type map and
        of the global one over the probe kernels.
    """
    t = np.asarray(kernel_types, dtype=object)
    x, y = np.asarray(source_ms, dtype=float), np.asarray(measured_ms, dtype=float)
    ok = (x > 0) & (y > 0)
    t, x, y = t[ok], np.log(x[ok]), np.log(y[ok])
    if len(x) < 2:
        raise ValueError(f"a transfer needs at least 2 measured probe kernels, got {len(x)}")
    glob = _ridge_line(x, y, (float(np.mean(y - x)), 1.0), 1e-3)
    pairs, counts = {}, {}
    for ktype in sorted(set(t)):
        m = t == ktype
        counts[str(ktype)] = int(m.sum())
        if m.sum() >= min_kernels:
            pairs[str(ktype)] = list(_ridge_line(x[m], y[m], glob, weight))
    # leave-one-out, to say what the per-type map buys over the global one
    err_t, err_g = [], []
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        g = _ridge_line(x[keep], y[keep], (float(np.mean(y[keep] - x[keep])), 1.0), 1e-3)
        m = keep & (t == t[i])
        a, b = _ridge_line(x[m], y[m], g, weight) if m.sum() >= min_kernels else g
        err_t.append(np.exp(a + b * x[i] - y[i]) - 1)
        err_g.append(np.exp(g[0] + g[1] * x[i] - y[i]) - 1)
    err_t, err_g = np.array(err_t), np.array(err_g)
    return {"kernel_types": pairs, "default": list(glob), "n_kernels": counts,
            "holdout": {"n": int(len(x)), "per_type_rmspe": float(np.sqrt(np.mean(err_t ** 2))),
                        "per_type_within10": float(np.mean(np.abs(err_t) <= 0.1)),
                        "global_rmspe": float(np.sqrt(np.mean(err_g ** 2))),
                        "global_within10": float(np.mean(np.abs(err_g) <= 0.1))}}


def spread_sample(items: Sequence[Mapping[str, Any]], value: str, k: int) -> list[Mapping[str, Any]]:
    """Up to ``k`` items at evenly spaced ranks of ``value`` (smallest and largest included), in a fixed order."""
    if len(items) <= k:
        return list(items)
    order = sorted(items, key=lambda it: (float(it[value]), str(it.get("key", ""))))
    idx = np.unique(np.round(np.linspace(0, len(order) - 1, k)).astype(int))
    return [order[i] for i in idx]
