"""Calibrate a predictor's kernel sums against networks measured end to end.

Kernels are timed one at a time (after a prefix, see :func:`hwnas.builder._build.measure_in_context`), but a
network pays costs no single kernel shows: layout reorders between kernels (ONNX Runtime's NCHWc ``Reorder``
nodes, oneDNN's format conversions), colder caches than a kernel timed back to back, and the call overhead of
the runtime. Measured on the 483 zoo networks (AMD EPYC VM), the uncalibrated sum was a median 0.84 of the
measured latency on ONNX Runtime and 0.68 on TorchScript, by family and resolution.

The calibration stays additive over kernels (so lookup tables, the latency loss and the search still sum
kernel latencies exactly). Per kernel type ``t`` it has a factor on the measured kernel latency and three
non-negative costs the in-context timing cannot see: a constant per kernel (dispatch, reorders between kernels),
a cost per million weights (weights read from memory rather than a warm cache: networks whose weights exceed the
last-level cache ran up to 1.9x their kernel sum) and a cost per million output elements (activations written
to memory). All are fitted by least squares on the *relative* error over the measured networks (every network
counts the same whatever its latency), with a ridge pull of each factor towards 1 and bounds, so a type seen in
few networks keeps its measured kernel latencies::

    kernel_ms'(k) = scale[t] * kernel_ms(k) + per_kernel[t] + per_mparam[t] * params(k) + per_melem[t] * out_elems(k)
    predicted_ms  = overhead_ms + intercept_ms + sum over kernels k of kernel_ms'(k)

The factors are data in the predictor (``metadata["calibration"]``), applied by
:meth:`hwnas.predictor.LatencyPredictor.kernel_latencies`, so every consumer (tables, the latency loss, the
search) sees the same calibrated kernel latencies.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from hwnas.predictor import CALIBRATION_TERMS

#: Bounds of a kernel type's factor: a calibration may correct, never rewrite, what the kernels measured.
SCALE_BOUNDS = (0.5, 2.0)
#: Ridge weight pulling each factor towards 1 (against relative errors of order 0.1, per network).
RIDGE = 0.01
#: Additive terms per kernel type: name -> (kernel feature or None for a count, column scale for conditioning);
#: the names and features are the predictor's (:data:`hwnas.predictor.CALIBRATION_TERMS`).
TERMS = {name: (feature, 1e-3 if feature is None else 1.0) for name, feature in CALIBRATION_TERMS.items()}
#: A type must occur in at least this many networks to get its own factor.
MIN_NETWORKS = 5


def network_terms(kernel_ms: np.ndarray, kernels: Sequence[Any]) -> dict[str, dict[str, float]]:
    """What the calibration needs of one network, per kernel type: ``ms`` (sum of uncalibrated kernel latencies),
    ``per_kernel`` (count), ``per_mparam`` (million weights), ``per_melem`` (million output elements)."""
    out: dict[str, dict[str, float]] = {}
    for k, ms in zip(kernels, kernel_ms):
        d = out.setdefault(k.type, {"ms": 0.0, **{name: 0.0 for name in TERMS}})
        d["ms"] += float(ms)
        for name, (feature, _) in TERMS.items():
            d[name] += 1.0 if feature is None else float(k.features.get(feature, 0.0))
    return out


def fit_calibration(nets: Sequence[Mapping[str, Mapping[str, float]]], measured_ms: Sequence[float], *,
                    ridge: float = RIDGE, bounds: tuple[float, float] = SCALE_BOUNDS,
                    min_networks: int = MIN_NETWORKS, terms: bool = True) -> dict[str, Any]:
    """Fit the per-type factors, additive terms and intercept.

    Parameters
    ----------
    nets : sequence of mapping
        Per network, kernel type → :func:`network_terms` entry (``ms`` uncalibrated, without model overhead).
    measured_ms : sequence of float
        Measured latency of each network, minus the predictor's model overhead (ms).
    ridge, bounds, min_networks
        See :data:`RIDGE`, :data:`SCALE_BOUNDS`, :data:`MIN_NETWORKS`.
    terms : bool
        Fit the additive terms (:data:`TERMS`) too; ``False`` fits factors and intercept only.

    Returns
    -------
    dict
        ``{"kernel_scale": {type: factor}, "kernel_terms": {type: {term: ms per unit}}, "intercept_ms": float}``
        (types not fitted are absent: factor 1, no terms).
    """
    from scipy.optimize import lsq_linear

    y = np.asarray(measured_ms, dtype=np.float64)
    if len(nets) != len(y) or len(y) == 0:
        raise ValueError(f"calibration needs one measurement per network, got {len(nets)} networks and {len(y)}")
    if np.any(y <= 0):
        raise ValueError("calibration needs positive measured latencies")
    counts: dict[str, int] = {}
    for net in nets:
        for t, d in net.items():
            if d["ms"] > 0:
                counts[t] = counts.get(t, 0) + 1
    types = sorted(t for t, c in counts.items() if c >= min_networks)
    extra = list(TERMS) if terms else []
    per = 1 + len(extra)
    fixed = np.array([sum(d["ms"] for t, d in net.items() if t not in types) for net in nets])
    x = np.zeros((len(y), per * len(types)))
    for i, net in enumerate(nets):
        for j, t in enumerate(types):
            d = net.get(t)
            if d:
                x[i, per * j] = d["ms"]
                for e, name in enumerate(extra):
                    x[i, per * j + 1 + e] = d[name] * TERMS[name][1]
    k = x.shape[1]
    is_scale = np.arange(k) % per == 0
    # rows: (x . theta + b + fixed - y) / y ; prior rows: sqrt(ridge) (scale - 1), sqrt(ridge) * term
    a = np.vstack([np.hstack([x, np.ones((len(y), 1))]) / y[:, None],
                   np.hstack([np.sqrt(ridge) * np.eye(k), np.zeros((k, 1))])])
    rhs = np.concatenate([(y - fixed) / y, np.sqrt(ridge) * is_scale.astype(float)])
    lo = np.append(np.where(is_scale, bounds[0], 0.0), 0.0)
    hi = np.append(np.where(is_scale, bounds[1], np.inf), np.inf)
    sol = np.clip(lsq_linear(a, rhs, bounds=(lo, hi), method="bvls").x, lo, hi)   # solver round-off (-1e-18)
    out: dict[str, Any] = {"kernel_scale": {}, "kernel_terms": {}, "intercept_ms": float(sol[k])}
    for j, t in enumerate(types):
        out["kernel_scale"][t] = float(sol[per * j])
        if extra:
            out["kernel_terms"][t] = {name: float(sol[per * j + 1 + e] * TERMS[name][1])
                                      for e, name in enumerate(extra)}
    return out


def apply_calibration(calibration: Mapping[str, Any] | None, net: Mapping[str, Mapping[str, float]]) -> float:
    """Calibrated latency (ms, without the model overhead) of one network from its :func:`network_terms`."""
    if not calibration:
        return float(sum(d["ms"] for d in net.values()))
    scale = calibration.get("kernel_scale", {})
    kterms = calibration.get("kernel_terms", {})
    total = calibration.get("intercept_ms", 0.0)
    for t, d in net.items():
        total += scale.get(t, 1.0) * d["ms"] + sum(c * d[name] for name, c in kterms.get(t, {}).items())
    return float(total)


def cross_validate(sums: Sequence[Mapping[str, Mapping[str, float]]], measured_ms: Sequence[float],
                   folds: int = 5, seed: int = 0, **kw: Any) -> np.ndarray:
    """Out-of-fold calibrated predictions (ms, without overhead): each network predicted by a calibration
    fitted on the other folds."""
    y = np.asarray(measured_ms, dtype=np.float64)
    order = np.random.default_rng(seed).permutation(len(y))
    out = np.empty(len(y))
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        cal = fit_calibration([sums[i] for i in train], y[train], **kw)
        for i in test:
            out[i] = apply_calibration(cal, sums[i])
    return out


#: Calibration forms compared by cross-validation: (fit the additive terms?, ridge).
CANDIDATES = ((False, 0.01), (False, 0.1), (True, 0.01), (True, 0.1), (True, 1.0))


def select_calibration(nets: Sequence[Mapping[str, Mapping[str, float]]], measured_ms: Sequence[float],
                       overhead_ms: float = 0.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Choose the calibration form with the lowest 5-fold cross-validated RMSPE, then fit it on all networks.

    Returns
    -------
    calibration : dict
        As :func:`fit_calibration`, plus ``terms`` and ``ridge`` (the chosen form).
    report : dict
        ``{"candidates": [{"terms", "ridge", "cv": metrics}], "cv_predictions": ndarray (ms, with overhead)}``.
    """
    from hwnas.builder._fit import error_metrics

    y = np.asarray(measured_ms, dtype=np.float64)
    rows, best = [], None
    for terms, ridge in CANDIDATES:
        cv = cross_validate(nets, y, terms=terms, ridge=ridge) + overhead_ms
        m = error_metrics(cv, y + overhead_ms)
        rows.append({"terms": terms, "ridge": ridge, "cv": m})
        if best is None or m["rmspe"] < best[0]["cv"]["rmspe"]:
            best = (rows[-1], cv)
    chosen, cv = best
    cal = fit_calibration(nets, y, terms=chosen["terms"], ridge=chosen["ridge"])
    cal.update(terms=chosen["terms"], ridge=chosen["ridge"])
    return cal, {"candidates": rows, "cv_predictions": cv}


def zoo_measurements(store_path: Any, pass_id: int | None = 0) -> dict[str, dict[str, Any]]:
    """Successful end-to-end measurements of a zoo store: model key → record.

    With a ``pass_id``, that pass's records. With ``None``, the truth over every pass: each network's record of
    its first pass, with ``ms`` replaced by the median of its passes (ms) and ``passes`` the number of them."""
    from hwnas.builder._store import read_records

    by_pass: dict[Any, dict[str, dict[str, Any]]] = {}
    for r in read_records(store_path):
        if r.get("type") == "measurement" and r.get("kind") == "zoo" and float(r.get("ms", -1)) > 0 \
                and (pass_id is None or r.get("pass_id") == pass_id):
            by_pass.setdefault(r.get("pass_id"), {}).setdefault(r["model"], r)
    if pass_id is not None:
        return by_pass.get(pass_id, {})
    out: dict[str, dict[str, Any]] = {}
    for pid in sorted(by_pass, key=str):
        for key, r in by_pass[pid].items():
            out.setdefault(key, dict(r))
    for key, r in out.items():
        ms = [float(p[key]["ms"]) for p in by_pass.values() if key in p]
        r.update(ms=float(np.median(ms)), passes=len(ms))
    return out


def network_sums(predictor: Any, kernel_lists: Sequence[Sequence[Any]]) -> list[dict[str, dict]]:
    """:func:`network_terms` of each network (given as its kernels) under ``predictor``, in one vectorised
    :meth:`~hwnas.predictor.LatencyPredictor.kernel_latencies` call."""
    flat = [k for ks in kernel_lists for k in ks]
    ms = predictor.kernel_latencies(flat)
    out, i = [], 0
    for ks in kernel_lists:
        out.append(network_terms(ms[i:i + len(ks)], ks))
        i += len(ks)
    return out


def calibrate_build(build_dir: Any, store: Any = None, pass_id: int | None = None, progress: bool = True
                    ) -> dict[str, Any]:
    """Fit the calibration of ``<build_dir>/predictor`` on the zoo networks measured in ``store`` (default
    ``<build_dir>/raw/zoo.jsonl[.gz]``) and write it into the predictor; returns the calibration written.
    ``pass_id``: the pass whose latencies are the truth, or ``None`` (default) for each network's median over the
    passes the store holds (:func:`zoo_measurements`; one pass: that pass)."""
    from pathlib import Path

    from hwnas.builder._fit import error_metrics
    from hwnas.builder._zoo import zoo, zoo_store_path
    from hwnas.predictor import LatencyPredictor, read_predictor, write_predictor

    build_dir = Path(build_dir)
    store = Path(store) if store else zoo_store_path(build_dir / "raw")
    meta, regs = read_predictor(build_dir / "predictor")
    meta.pop("calibration", None)
    pred = LatencyPredictor(meta, regs)
    measured = zoo_measurements(store, pass_id)
    models = [m for m in zoo() if m.key in measured]
    if len(models) < 20:
        which = "all passes" if pass_id is None else f"pass {pass_id}"
        raise ValueError(f"{store}: only {len(models)} measured zoo networks ({which}); at least 20 needed")
    from tqdm.auto import tqdm

    kernels = [pred.kernels(m.build(), "torch", m.input_shape)
               for m in tqdm(models, desc="capturing networks", disable=not progress)]
    sums = network_sums(pred, kernels)
    y = np.array([float(measured[m.key]["ms"]) for m in models]) - pred.overhead_ms
    cal, report = select_calibration(sums, y, pred.overhead_ms)
    raw_pred = np.array([apply_calibration(None, s) for s in sums])
    total = y + pred.overhead_ms
    cal.update({
        "method": "per kernel type: factor (and, when cross-validation prefers it, a cost per kernel, per million "
                  "weights and per million output elements); least squares on relative error, ridge towards "
                  "factor 1 and no extra cost; form chosen by 5-fold cross-validated RMSPE",
        "bounds": list(SCALE_BOUNDS), "min_networks": MIN_NETWORKS, "n_networks": len(models),
        "families": sorted({m.family for m in models}), "store": store.name,
        "pass_id": "median of every pass" if pass_id is None else pass_id,
        "accuracy": {"uncalibrated": error_metrics(raw_pred + pred.overhead_ms, total),
                     "calibrated_5fold_cv": error_metrics(report["cv_predictions"], total),
                     "forms": report["candidates"]},
    })
    meta["calibration"] = cal
    cv = cal["accuracy"]["calibrated_5fold_cv"]
    meta["status"] = (f"measured; calibrated on {len(models)} networks end to end: {cv['within_10pct']:.0%} within "
                      f"±10%, RMSPE {cv['rmspe']:.1%} (5-fold cross-validation)")
    for key in ("schema_version", "files"):
        meta.pop(key, None)
    for spec in meta["kernels"].values():
        spec.pop("regressor", None)
    write_predictor(build_dir / "predictor", meta, regs)
    return cal
