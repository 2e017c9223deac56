"""Regressors as plain arrays, evaluated with numpy: no pickles, no dependence on the installed scikit-learn.

:class:`TreeEnsemble` holds any number of regression trees stacked into one node table and predicts
``base + scale * Σ_trees tree(x)``; it covers scikit-learn's ``DecisionTreeRegressor``, ``RandomForestRegressor``,
``ExtraTreesRegressor`` (base 0, scale 1/T) and ``GradientBoostingRegressor`` (base = the init constant,
scale = learning rate). Evaluation walks all (sample, tree) pairs level by level with fancy indexing and
compares ``float32(x) <= threshold`` exactly as scikit-learn does, so predictions equal scikit-learn's to
floating-point rounding of the final sum (tested to 1e-9 relative).

:class:`LinearModel` is ``x @ coef + intercept``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from hwnas.errors import PredictorFileError


@dataclasses.dataclass(frozen=True, eq=False)
class TreeEnsemble:
    """Stacked regression trees.

    Attributes
    ----------
    left, right : ndarray of int32
        Child indices into the stacked table (-1 for leaves).
    feature : ndarray of int32
        Feature compared at each internal node.
    threshold : ndarray of float64
        Split threshold: go left when ``float32(x[feature]) <= threshold``.
    value : ndarray of float64
        Node output (used at leaves).
    roots : ndarray of int32
        Root node of each tree.
    base, scale : float
        Prediction = ``base + scale * Σ_trees leaf value``.
    n_features : int
    """

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    base: float
    scale: float
    n_features: int
    kind = "tree_ensemble"

    @classmethod
    def from_sklearn(cls, est: Any) -> "TreeEnsemble":
        """Convert a fitted scikit-learn tree regressor (single output)."""
        from sklearn.ensemble import (ExtraTreesRegressor, GradientBoostingRegressor, RandomForestRegressor)
        from sklearn.tree import DecisionTreeRegressor

        if isinstance(est, DecisionTreeRegressor):
            trees, base, scale = [est.tree_], 0.0, 1.0
        elif isinstance(est, (RandomForestRegressor, ExtraTreesRegressor)):
            trees, base, scale = [t.tree_ for t in est.estimators_], 0.0, 1.0 / len(est.estimators_)
        elif isinstance(est, GradientBoostingRegressor):
            if est.loss != "squared_error":
                raise TypeError(f"GradientBoostingRegressor with loss={est.loss!r} is not supported (squared_error only)")
            trees = [t[0].tree_ for t in est.estimators_]
            scale = float(est.learning_rate)
            if est.init_ == "zero":
                base = 0.0
            else:
                from sklearn.dummy import DummyRegressor

                if not isinstance(est.init_, DummyRegressor):
                    raise TypeError("GradientBoostingRegressor needs a constant init (None, 'zero' or DummyRegressor)")
                base = float(np.ravel(est.init_.constant_)[0])
        else:
            raise TypeError(f"cannot convert {type(est).__name__}; supported: DecisionTree, RandomForest, "
                            "ExtraTrees and GradientBoosting regressors")
        if getattr(est, "n_outputs_", 1) != 1:
            raise TypeError("multi-output regressors are not supported")
        lefts, rights, feats, thrs, vals, roots = [], [], [], [], [], []
        offset = 0
        for t in trees:
            left, right = t.children_left.astype(np.int64), t.children_right.astype(np.int64)
            leaf = left == -1
            lefts.append(np.where(leaf, -1, left + offset))
            rights.append(np.where(leaf, -1, right + offset))
            feats.append(np.where(leaf, 0, t.feature))
            thrs.append(np.where(leaf, 0.0, t.threshold))
            vals.append(t.value[:, 0, 0])
            roots.append(offset)
            offset += t.node_count
        return cls(np.concatenate(lefts).astype(np.int32), np.concatenate(rights).astype(np.int32),
                   np.concatenate(feats).astype(np.int32), np.concatenate(thrs).astype(np.float64),
                   np.concatenate(vals).astype(np.float64), np.asarray(roots, dtype=np.int32), base, scale,
                   int(est.n_features_in_))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions for rows of ``x`` (n_samples, n_features)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected features of shape (n, {self.n_features}), got {x.shape}")
        xf = x.astype(np.float32).astype(np.float64)   # scikit-learn compares float32 features
        n, t = x.shape[0], self.roots.shape[0]
        node = np.broadcast_to(self.roots, (n, t)).copy()
        rows = np.broadcast_to(np.arange(n)[:, None], (n, t))
        active = self.left[node] != -1
        while active.any():
            r, c = np.nonzero(active)
            nd = node[r, c]
            go_left = xf[rows[r, c], self.feature[nd]] <= self.threshold[nd]
            node[r, c] = np.where(go_left, self.left[nd], self.right[nd])
            active[r, c] = self.left[node[r, c]] != -1
        return self.base + self.scale * self.value[node].sum(axis=1)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}/left": self.left, f"{prefix}/right": self.right, f"{prefix}/feature": self.feature,
                f"{prefix}/threshold": self.threshold, f"{prefix}/value": self.value, f"{prefix}/roots": self.roots,
                f"{prefix}/params": np.array([self.base, self.scale, self.n_features], dtype=np.float64)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> "TreeEnsemble":
        """Rebuild from arrays, validating structure (no cycles, indices in range, finite values)."""
        a = _take(arrays, prefix, ("left", "right", "feature", "threshold", "value", "roots", "params"))
        params = a["params"]
        if params.shape != (3,) or not np.isfinite(params).all():
            raise PredictorFileError(f"{prefix}: bad params array")
        n_features = int(params[2])
        ints = {k: a[k] for k in ("left", "right", "feature", "roots")}
        for k, v in ints.items():
            if v.dtype.kind not in "iu" or v.ndim != 1:
                raise PredictorFileError(f"{prefix}/{k}: expected a 1-d integer array, got {v.dtype} {v.shape}")
        m = a["left"].shape[0]
        for k in ("right", "feature", "threshold", "value"):
            if a[k].shape != (m,):
                raise PredictorFileError(f"{prefix}/{k}: length {a[k].shape} differs from left ({m},)")
        if not (np.isfinite(a["threshold"]).all() and np.isfinite(a["value"]).all()):
            raise PredictorFileError(f"{prefix}: non-finite threshold or value")
        idx = np.arange(m)
        left, right = a["left"].astype(np.int64), a["right"].astype(np.int64)
        internal = left != -1
        if np.any((right != -1) != internal):
            raise PredictorFileError(f"{prefix}: a node has exactly one child")
        if np.any(left[internal] <= idx[internal]) or np.any(right[internal] <= idx[internal]) \
                or np.any(left[internal] >= m) or np.any(right[internal] >= m):
            raise PredictorFileError(f"{prefix}: child index out of range or not after its parent (cycle)")
        feat = a["feature"]
        if np.any(feat[internal] < 0) or np.any(feat[internal] >= n_features):
            raise PredictorFileError(f"{prefix}: feature index outside 0..{n_features - 1}")
        roots = a["roots"]
        if roots.size == 0 or np.any(roots < 0) or np.any(roots >= m):
            raise PredictorFileError(f"{prefix}: root index out of range")
        return cls(left.astype(np.int32), right.astype(np.int32), feat.astype(np.int32),
                   a["threshold"].astype(np.float64), a["value"].astype(np.float64), roots.astype(np.int32),
                   float(params[0]), float(params[1]), n_features)


@dataclasses.dataclass(frozen=True, eq=False)
class LinearModel:
    """``x @ coef + intercept``."""

    coef: np.ndarray
    intercept: float
    kind = "linear"

    @property
    def n_features(self) -> int:
        return int(self.coef.shape[0])

    @classmethod
    def from_sklearn(cls, est: Any) -> "LinearModel":
        coef = np.asarray(est.coef_, dtype=np.float64)
        if coef.ndim != 1:
            raise TypeError("multi-output linear models are not supported")
        return cls(coef, float(est.intercept_))

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected features of shape (n, {self.n_features}), got {x.shape}")
        return x @ self.coef + self.intercept

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}/coef": self.coef, f"{prefix}/intercept": np.array([self.intercept])}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> "LinearModel":
        a = _take(arrays, prefix, ("coef", "intercept"))
        if a["coef"].ndim != 1 or a["intercept"].shape != (1,) or not np.isfinite(a["coef"]).all():
            raise PredictorFileError(f"{prefix}: bad linear model arrays")
        return cls(a["coef"].astype(np.float64), float(a["intercept"][0]))


REGRESSOR_KINDS: Mapping[str, type] = {"tree_ensemble": TreeEnsemble, "linear": LinearModel}
TARGETS = ("ms", "log_ms")


def apply_target(target: str, raw: np.ndarray) -> np.ndarray:
    """Regressor output → ms (``log_ms`` regressors predict the natural log of ms)."""
    if target == "ms":
        return np.asarray(raw, dtype=np.float64)
    if target == "log_ms":
        return np.exp(raw)
    raise PredictorFileError(f"unknown regression target {target!r}; expected one of {TARGETS}")


def _take(arrays: Mapping[str, np.ndarray], prefix: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    out = {}
    for n in names:
        key = f"{prefix}/{n}"
        if key not in arrays:
            raise PredictorFileError(f"array {key!r} is missing")
        v = np.asarray(arrays[key])
        if v.dtype == object:
            raise PredictorFileError(f"array {key!r} has object dtype (refused: could carry pickled code)")
        out[n] = v
    return out
