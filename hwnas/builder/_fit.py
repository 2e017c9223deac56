"""Fit one regressor per kernel type from a build's measurements and write the predictor.

For each kernel type, candidate regressors (random forest as nn-Meter uses, extra trees, gradient boosting) are
fitted on 80% of its measured kernels on a log-latency target and compared on the held-out 20% (RMSPE); the
best is kept, refitted on all kernels, and its held-out figures go into the accuracy report. Types with fewer
than ``min_tree_samples`` kernels get a linear model on MACs and element counts.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.builder._config import BuildConfig, default_name, utc_now
from hwnas.graph import OpGraph, fold_batchnorm
from hwnas.kernels import ACTIVATION_OPS, EPILOGUE_OPS, FusionRules, base_type, kernel_features
from hwnas.predictor import UNIT_FLOOR

# Features per kernel family (by the main op); the rest use GENERIC.
CONV = ["hin", "win", "cin", "cout", "hout", "kernel", "stride", "groups", "macs", "params", "in_elems", "out_elems"]
FC = ["cin", "cout", "macs", "in_elems", "out_elems"]
POOL = ["hin", "cin", "hout", "kernel", "stride", "in_elems", "out_elems"]
GENERIC = ["hin", "cin", "cout", "hout", "n_inputs", "elementwise", "in_elems", "out_elems"]
#: A pooled convolution regressor (:func:`pool_of`) reads the convolution's features and its epilogue's.
POOLED_CONV = CONV + [f"epi_{op}" for op in EPILOGUE_OPS]
ZERO_COST_OPS = ["dropout", "identity"]
MIN_TREE_SAMPLES = 12
#: The regression targets a kernel type's regressor is chosen among (:func:`fit_type`).
TARGETS = ("log_ms", "log_ms_per_unit")
MIN_FIT_SAMPLES = 3     # fewer successful measurements: no regressor; the type is declared unsupported


def unit_feature(ktype: str) -> str:
    """The work measure a kernel's latency is normalised by: MACs for convolutions and matrix products, output
    elements otherwise (both are among :func:`features_for`)."""
    return "macs" if base_type(ktype).split("-")[0] in ("conv", "dwconv", "fc", "matmul", "mha") else "out_elems"


def pool_of(ktype: str) -> str | None:
    """The pool a kernel type can share a regressor with: ``"conv-*"`` / ``"dwconv-*"`` for a convolution whose
    other ops are all epilogue ops (:data:`~hwnas.kernels.EPILOGUE_OPS`), else None. Pooled, a kernel size or
    width one activation variant never showed is learnt from the others (a 7x7 ``dwconv-relu6`` from the 7x7
    ``dwconv`` kernels), instead of extrapolated from its own few rows."""
    ops = ktype.split("-")
    if ops[0] in ("conv", "dwconv") and all(op in EPILOGUE_OPS for op in ops[1:]):
        return ops[0] + "-*"
    return None


#: The pool of the element-wise ops that ran as kernels of their own (activations, ``add``, ``mul``): it prices an
#: activation no label showed (``silu`` when no training network had one), by its tensor sizes.
ACT_POOL = "eltwise-*"


def is_elementwise(ktype: str) -> bool:
    """Whether ``ktype`` is a single element-wise op (a member of :data:`ACT_POOL`'s labels)."""
    return ktype in ACTIVATION_OPS or ktype in ("add", "mul")


def features_for(ktype: str) -> list[str]:
    if ktype in ("conv-*", "dwconv-*"):
        return POOLED_CONV
    main = base_type(ktype).split("-")[0]
    if main in ("conv", "dwconv"):
        return CONV
    if main in ("fc", "matmul", "mha"):
        return FC + (["hin"] if main != "fc" else [])
    if main in ("maxpool", "avgpool"):
        return POOL
    return GENERIC


def kernel_rows(raw: Path, stores: str = "kernels") -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Successful kernel measurements of a build's ``raw/`` directory (the stores ``<stores>*.jsonl[.gz]``), net
    of the call overhead. A layout variant keeps its suffix in its type (``maxpool@dense``).

    Returns
    -------
    rows : list of dict
        One per measured kernel: ``key``, ``type``, ``features`` (dict), ``ms`` (net, >= 1e-4), ``families``
        (prior families that brought it in; ``["jitter"]`` for a neighbour) and, where recorded,
        ``parent_families`` (a neighbour's source families).
    overhead : dict
        Input shape (as a string) → per-call overhead (ms).
    """
    from hwnas.builder._kernel_modules import spec_nodes
    from hwnas.builder._store import read_records

    overhead: dict[str, float] = {}
    kernel_recs = []
    seen: set[str] = set()
    for path in sorted(Path(raw).glob(f"{stores}*.jsonl")) + sorted(Path(raw).glob(f"{stores}*.jsonl.gz")):
        for r in read_records(path):
            if r.get("type") != "measurement" or r["key"] in seen:
                continue   # a key measured twice (a plain and a gzipped copy of one store): first record wins
            seen.add(r["key"])
            if r.get("kind") == "overhead":
                overhead[str(list(r["input_shape"]))] = float(r["ms"])
            elif r.get("kind") == "kernel":
                kernel_recs.append(r)
    rows = []
    for r in kernel_recs:
        if r.get("method") == "failed":   # recorded with ms = -1 and the error
            continue
        spec = r["spec"]
        raw_nodes = spec_nodes(spec)
        # the batch norm of a conv-bn kernel is folded, as in every op graph: its row is a conv with a bias
        nodes = fold_batchnorm(OpGraph(raw_nodes, [i for n in raw_nodes for i in n.inputs if i.startswith("x")])).nodes
        shape = str(list(nodes[0].input_shapes[0])) if nodes[0].input_shapes else None
        # in-context and isolated-fallback records are already net of the call overhead; old isolated ones are not
        net = float(r["ms"]) if "parts" in r else float(r["ms"]) - overhead.get(shape, 0.0)
        suffix = spec["type"][len(base_type(spec["type"])):]
        rows.append({"key": r["key"], "type": "-".join(n.op for n in nodes) + suffix, "features": kernel_features(nodes),
                     "ms": max(net, 1e-4), "families": list(r.get("families", [])),
                     "parent_families": list(r.get("parent_families", []))})
    return rows, overhead


def measuring_fingerprint(raw: Path) -> dict[str, Any] | None:
    """Fingerprint of the machine that measured the kernels (the first device record of the kernel stores), so a
    predictor describes where it was measured, not where it was fitted."""
    from hwnas.builder._store import read_records

    for path in sorted(Path(raw).glob("kernels*.jsonl")) + sorted(Path(raw).glob("kernels*.jsonl.gz")):
        for r in read_records(path):
            if r.get("type") == "device" and r.get("fingerprint"):
                return dict(r["fingerprint"])
    return None


def _records(cfg: BuildConfig) -> tuple[dict[str, list[tuple[dict, float]]], dict[str, float]]:
    rows, overhead = kernel_rows(Path(cfg.out) / "raw")
    by_type: dict[str, list[tuple[dict, float]]] = {}
    for r in rows:
        by_type.setdefault(r["type"], []).append((r["features"], r["ms"]))
    return by_type, overhead


def fit_regressors(by_type: dict[str, list[tuple[dict, float]]], backend: str, seed: int = 0,
                   progress: bool = False, targets: tuple[str, ...] = TARGETS) -> tuple[dict, dict, dict, dict]:
    """Fit every kernel type: returns ``(regressors, kernels metadata, accuracy report, unsupported types)``;
    ``targets``: see :func:`fit_type`."""
    from tqdm.auto import tqdm

    regressors, kernels, accuracy, unsupported = {}, {}, {}, {}
    for ktype in tqdm(sorted(by_type), desc="fitting kernel regressors", disable=not progress):
        if len(by_type[ktype]) < MIN_FIT_SAMPLES:
            # Pricing such a kernel raises UnknownKernelError naming the type (never an extrapolated guess).
            unsupported[ktype] = (f"only {len(by_type[ktype])} successful measurement(s) on {backend} "
                                  f"(at least {MIN_FIT_SAMPLES} are needed); see the failed records in raw/")
            continue
        (reg, names, target), rep = fit_type(ktype, by_type[ktype], seed, targets)
        regressors[ktype] = reg
        kernels[ktype] = {"features": names, "target": target}
        if target == "log_ms_per_unit":
            kernels[ktype]["unit_feature"] = unit_feature(ktype)
        accuracy[ktype] = rep
    return regressors, kernels, accuracy, unsupported


def _candidates(seed: int) -> dict[str, Any]:
    from sklearn.ensemble import ExtraTreesRegressor, GradientBoostingRegressor, RandomForestRegressor

    return {
        # 64 trees with 2 samples per leaf keep a shipped predictor to a few MB (full trees: ~30 MB)
        "random_forest": RandomForestRegressor(n_estimators=64, min_samples_leaf=2, random_state=seed, n_jobs=1),
        "extra_trees": ExtraTreesRegressor(n_estimators=64, min_samples_leaf=2, random_state=seed, n_jobs=1),
        "gradient_boosting": GradientBoostingRegressor(n_estimators=300, max_depth=4, learning_rate=0.05,
                                                       subsample=0.8, random_state=seed),
    }


def error_metrics(pred: Any, true: Any) -> dict[str, float]:
    """Accuracy of predicted against measured latencies (both ms): ``n``, ``within_5pct`` and ``within_10pct``
    (share of predictions within ±5% / ±10% of the measurement), ``rmse_ms`` and ``rmspe`` (root mean square
    percentage error, as a fraction)."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    rel = (pred - true) / true
    return {"n": int(len(true)), "within_5pct": float(np.mean(np.abs(rel) <= 0.05)),
            "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
            "rmse_ms": float(np.sqrt(np.mean((pred - true) ** 2))), "rmspe": float(np.sqrt(np.mean(rel ** 2)))}


def fit_type(ktype: str, rows: list[tuple[dict, float]], seed: int = 0,
             targets: tuple[str, ...] = TARGETS) -> tuple[Any, dict[str, Any]]:
    """The best regressor for one kernel type and its held-out report, over the candidates and ``targets``
    (``"log_ms"``, ``"log_ms_per_unit"``: log latency per unit of work, :func:`unit_feature`). A tree on
    ``log_ms`` cannot price a kernel above the slowest it was fitted on; per unit of work, the exact unit count
    carries the scale, so a bigger kernel than any fitted one is priced by its work."""
    from sklearn.linear_model import LinearRegression

    from hwnas.predictor import LinearModel, TreeEnsemble

    names = features_for(ktype)
    x = np.array([[f[n] for n in names] for f, _ in rows], dtype=np.float64)
    y = np.log(np.array([ms for _, ms in rows], dtype=np.float64))
    n = len(rows)
    if n < MIN_FIT_SAMPLES:
        raise ValueError(f"kernel type {ktype!r}: {n} measurement(s), at least {MIN_FIT_SAMPLES} are needed to fit")
    if n < MIN_TREE_SAMPLES:
        lin_names = ["macs", "elementwise", "in_elems", "out_elems"]
        xl = np.array([[f[k] for k in lin_names] for f, _ in rows])
        # Few samples: a linear model in ms with non-negative coefficients and intercept, so that no input (all
        # features are non-negative sizes) can be priced below 0 ms, however far it lies from the samples.
        est = LinearRegression(positive=True).fit(xl, np.exp(y))
        if est.intercept_ < 0:
            est = LinearRegression(positive=True, fit_intercept=False).fit(xl, np.exp(y))
        return (LinearModel.from_sklearn(est), lin_names, "ms"), {"n": n, "model": "linear", "holdout": None}
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    cut = max(1, int(round(0.2 * n)))
    test, train = idx[:cut], idx[cut:]
    unit_name = unit_feature(ktype)
    unit = np.maximum(x[:, names.index(unit_name)], UNIT_FLOOR)
    # Two targets: log latency, and log latency per unit of work (time per MAC or per element varies slowly,
    # so trees interpolate it better; the exact unit count carries the scale).
    unknown = set(targets) - set(TARGETS)
    if unknown or not targets:
        raise ValueError(f"targets must be among {TARGETS}, got {targets}")
    targets = {k: v for k, v in {"log_ms": (y, np.ones(n)), "log_ms_per_unit": (y - np.log(unit), unit)}.items()
               if k in targets}
    best = None
    report: dict[str, Any] = {"n": n, "candidates": {}}
    for target, (yt, scale) in targets.items():
        for name, est in _candidates(seed).items():
            est.fit(x[train], yt[train])
            err = error_metrics(np.exp(est.predict(x[test])) * scale[test], np.exp(y[test]))
            label = name if target == "log_ms" else f"{name}/per_{unit_name}"
            report["candidates"][label] = err
            if best is None or err["rmspe"] < report["candidates"][best[2]]["rmspe"]:
                best = (name, target, label)
    name, target, label = best
    final = _candidates(seed)[name].fit(x, targets[target][0])
    report.update(model=label, holdout=report["candidates"][label])
    return (TreeEnsemble.from_sklearn(final), names, target), report


def fit_predictor(cfg: BuildConfig, rules: FusionRules, progress: bool = True) -> Path:
    """Fit every measured kernel type and write ``<out>/predictor``; returns its path."""
    import hwnas
    from hwnas.device import describe, fingerprint
    from hwnas.predictor import write_predictor

    by_type, overhead = _records(cfg)
    if not by_type:
        raise RuntimeError(f"no kernel measurements under {Path(cfg.out) / 'raw'}; run the measuring stage first")
    regressors, kernels, accuracy, unsupported = fit_regressors(by_type, cfg.backend, cfg.seed, progress)
    fp = measuring_fingerprint(Path(cfg.out) / "raw") or fingerprint()
    model_overhead = float(np.median(list(overhead.values()))) if overhead else 0.0
    meta = {
        "name": cfg.name or default_name(cfg.backend, fp), "version": utc_now()[:10].replace("-", "."),
        "backend": cfg.backend, "device": {"description": describe(fp), "fingerprint": fp},
        "runtime": {k: fp.get(k) for k in ("torch", "onnxruntime", "numpy") if k in fp} or fp.get("runtimes", {}),
        "threads": cfg.protocol.threads, "batch_size": cfg.batch_size, "precision": "fp32", "units": "ms",
        "protocol": cfg.protocol.to_dict(), "fusion_rules": rules.to_list(), "zero_cost_ops": ZERO_COST_OPS,
        "model_overhead_ms": model_overhead, "kernels": kernels,
        "accuracy": {"kernels_holdout": accuracy, "n_kernels": sum(len(v) for v in by_type.values())},
        "created": utc_now(), "hwnas_version": hwnas.__version__,
    }
    if unsupported:
        meta["unsupported_kernel_types"] = unsupported
    return write_predictor(Path(cfg.out) / "predictor", meta, regressors)
