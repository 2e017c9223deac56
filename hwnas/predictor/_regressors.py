"""Kernel regressors as plain arrays: tree ensembles and linear models, evaluated with numpy only.

A predictor file stores each kernel type's regressor as a few named numpy arrays (see
:mod:`hwnas.predictor._format`), never as a pickle, so loading executes no code and predictions do not change
with the installed scikit-learn version. scikit-learn is needed only to *convert* a fitted estimator
(``from_sklearn``); evaluating a regressor needs numpy alone.

Regressors
----------
:class:`TreeEnsemble`
    Any number of binary regression trees stacked into one node table;
    prediction = ``base + scale * sum over trees of tree(x)``. Converts ``DecisionTreeRegressor``,
    ``RandomForestRegressor``, ``ExtraTreesRegressor`` (mean of trees) and ``GradientBoostingRegressor``
    (squared-error loss, constant or zero init). Matches scikit-learn's ``predict`` up to the order of the
    final floating-point sum (well within 1e-9 relative), including its cast of ``X`` to float32 before the
    ``x[feature] <= threshold`` test.
:class:`LinearModel`
    ``X @ coef + intercept``; converts ``LinearRegression`` and ``Ridge``.

Both expose ``kind``, ``n_features``, ``predict(X)``, ``to_arrays(prefix)`` and ``from_arrays(arrays, prefix)``,
so many regressors share one ``.npz`` under distinct prefixes (array names are ``"<prefix>.<field>"``).
:data:`REGRESSOR_KINDS` maps the ``kind`` string stored in metadata to the class.

Target transform
----------------
A regressor predicts the kernel's ``target`` declared in metadata: ``"ms"`` (latency itself), ``"log_ms"``
(natural log of the latency) or ``"log_ms_per_unit"`` (natural log of the latency per unit of work, the unit being
the kernel feature named by ``unit_feature``, e.g. ``macs`` for convolutions: the regressor learns the time per
multiply-accumulate, which varies slowly, and the exact MAC count carries the scale); :func:`apply_target` turns
each into milliseconds.

Limitations
-----------
- Single-output regressors only; no classifiers; no missing values (``predict`` refuses NaN or inf, and, for
  trees, values that overflow float32, as scikit-learn does).
- Trees are stored with every child index greater than its parent's and inside its own tree (the layout
  scikit-learn produces); this is what guarantees that every walk ends.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, ClassVar, Mapping, Protocol

import numpy as np

from hwnas.errors import PredictorFileError

__all__ = ["TreeEnsemble", "LinearModel", "Regressor", "REGRESSOR_KINDS", "TARGETS", "apply_target"]

#: Smallest unit value used by ``log_ms_per_unit`` (a kernel with no work still costs its fitted time per unit).
UNIT_FLOOR = 1e-9
#: Targets a regressor may predict; see :func:`apply_target`.
TARGETS = ("ms", "log_ms", "log_ms_per_unit")

# (sample, tree) pairs walked at once; bounds the evaluator's working memory to a few tens of MB.
_PAIRS_PER_CHUNK = 1 << 20


class Regressor(Protocol):
    """What the predictor needs from a kernel regressor."""

    kind: ClassVar[str]

    @property
    def n_features(self) -> int: ...

    def predict(self, X: np.ndarray) -> np.ndarray: ...

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]: ...


def apply_target(kind: str, raw: np.ndarray, unit: np.ndarray | None = None) -> np.ndarray:
    """Turn a regressor's raw output into milliseconds.

    Parameters
    ----------
    kind : {"ms", "log_ms"}
        The kernel's ``target`` from predictor metadata.
    raw : array_like
        Regressor output, in ``kind`` units.
    unit : array_like, optional
        The unit feature's values (required for ``"log_ms_per_unit"``).

    Returns
    -------
    ndarray of float64
        Latency, ms.
    """
    raw = np.asarray(raw, dtype=np.float64)
    if kind == "ms":
        return raw
    if kind == "log_ms":
        return np.exp(raw)
    if kind == "log_ms_per_unit":
        if unit is None:
            raise ValueError("target 'log_ms_per_unit' needs the unit feature's values")
        return np.exp(raw) * np.maximum(np.asarray(unit, dtype=np.float64), UNIT_FLOOR)
    raise ValueError(f"unknown regressor target {kind!r}; expected one of {TARGETS}")


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _frozen(a: Any, dtype: Any) -> np.ndarray:
    out = np.array(a, dtype=dtype, copy=True)
    out.flags.writeable = False
    return out


def _check_X(X: Any, n_features: int) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"X must have shape (n_samples, {n_features}); got {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or inf; kernel features must be finite")
    return X


def _get(arrays: Mapping[str, np.ndarray], prefix: str, field: str, kinds: str, ndim: int) -> np.ndarray:
    """Array ``<prefix>.<field>`` with a dtype kind in ``kinds`` ("i" integer, "f" float) and ``ndim`` dims."""
    key = f"{prefix}.{field}"
    if key not in arrays:
        raise PredictorFileError(f"regressor {prefix!r}: array {key!r} is missing")
    a = np.asarray(arrays[key])
    kind = "i" if a.dtype.kind in "iu" else a.dtype.kind
    if kind not in kinds:
        want = {"i": "integer", "f": "float"}
        raise PredictorFileError(f"regressor {prefix!r}: array {key!r} has dtype {a.dtype}, expected "
                                 + " or ".join(want[k] for k in kinds))
    if a.ndim != ndim:
        raise PredictorFileError(f"regressor {prefix!r}: array {key!r} has {a.ndim} dimensions, expected {ndim}")
    if kind == "i" and a.size and (a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max):
        raise PredictorFileError(f"regressor {prefix!r}: array {key!r} has values outside int32")
    return a


# ---------------------------------------------------------------------------------------------------------------
# tree ensembles


@dataclasses.dataclass(frozen=True, eq=False)
class TreeEnsemble:
    """Binary regression trees stacked into one node table, evaluated with numpy.

    Tree ``t`` occupies nodes ``roots[t]`` to ``roots[t + 1] - 1`` (the last tree runs to the end of the table).
    At an internal node a sample goes to ``left`` when ``float32(x[feature]) <= threshold``, else to ``right``.

    Parameters
    ----------
    left, right : ndarray of int32, shape (n_nodes,)
        Child indices into the stacked table; ``-1`` (both) marks a leaf. A child's index is greater than its
        parent's and lies inside the parent's tree.
    feature : ndarray of int32, shape (n_nodes,)
        Feature tested at each internal node, in ``[0, n_features)``; ``-1`` at leaves.
    threshold : ndarray of float64, shape (n_nodes,)
        Split threshold at internal nodes (ignored at leaves, must be finite).
    value : ndarray of float64, shape (n_nodes,)
        Node value; the value of the leaf a sample reaches is the tree's output, in target units.
    roots : ndarray of int32, shape (n_trees,)
        First node of each tree: ``roots[0] == 0``, strictly increasing.
    base, scale : float
        Prediction = ``base + scale * sum of the trees' outputs``.
    n_features : int
        Number of input features.

    Raises
    ------
    ValueError
        Inconsistent shapes, out-of-range or backward child indices, out-of-range features, non-finite values.
    """

    kind: ClassVar[str] = "tree_ensemble"

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    base: float
    scale: float
    n_features: int
    # Derived at construction for the evaluator (not stored in files, not compared).
    _kids: np.ndarray = dataclasses.field(init=False, repr=False)
    _feat: np.ndarray = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        def put(name: str, v: Any) -> None:
            object.__setattr__(self, name, v)

        for name in ("left", "right", "feature", "roots"):
            put(name, _frozen(getattr(self, name), np.int32))
        for name in ("threshold", "value"):
            put(name, _frozen(getattr(self, name), np.float64))
        put("base", float(self.base))
        put("scale", float(self.scale))
        put("n_features", int(self.n_features))
        self._validate()
        n = self.left.shape[0]
        leaf = self.left < 0
        # Step table: kids[2 * node + went_right] is the child, encoded as ~child (< 0) when the child is a leaf.
        kids = np.stack([self.left, self.right], axis=1).astype(np.intp).ravel()
        to_leaf = np.zeros(2 * n, dtype=bool)
        has = kids >= 0                        # a leaf's own slots (-1) are never read
        to_leaf[has] = leaf[kids[has]]
        kids[to_leaf] = ~kids[to_leaf]
        put("_kids", _frozen(kids, np.intp))
        put("_feat", _frozen(np.where(leaf, 0, self.feature), np.intp))

    def _validate(self) -> None:
        for name in ("left", "right", "feature", "threshold", "value", "roots"):
            a = getattr(self, name)
            if a.ndim != 1:
                raise ValueError(f"{name} must be 1-D; got shape {a.shape}")
        n = self.left.shape[0]
        if n == 0 or self.roots.shape[0] == 0:
            raise ValueError("a tree ensemble needs at least one tree and one node")
        for name in ("right", "feature", "threshold", "value"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} entries; left has {n}")
        if self.n_features < 1:
            raise ValueError(f"n_features must be >= 1; got {self.n_features}")
        for name in ("threshold", "value"):
            bad = np.flatnonzero(~np.isfinite(getattr(self, name)))
            if bad.size:
                raise ValueError(f"{name}[{bad[0]}] is not finite")
        if not (np.isfinite(self.base) and np.isfinite(self.scale)):
            raise ValueError(f"base ({self.base}) and scale ({self.scale}) must be finite")
        r = self.roots
        if r[0] != 0 or np.any(np.diff(r) <= 0) or r[-1] >= n:
            raise ValueError(f"roots must start at 0, increase strictly and stay below {n} (the node count); "
                             f"got {r[:8].tolist()}{'...' if r.size > 8 else ''}")
        idx = np.arange(n)
        end = np.append(r[1:], n)[np.searchsorted(r, idx, side="right") - 1]   # one past each node's tree
        leaf_l, leaf_r = self.left == -1, self.right == -1
        if np.any(leaf_l != leaf_r):
            i = np.flatnonzero(leaf_l != leaf_r)[0]
            raise ValueError(f"node {i} has one child only (left={self.left[i]}, right={self.right[i]})")
        inner = ~leaf_l
        for name in ("left", "right"):
            c = getattr(self, name)
            bad = np.flatnonzero(inner & ((c <= idx) | (c >= end)))
            if bad.size:
                i = bad[0]
                raise ValueError(f"node {i}: {name} child {c[i]} is out of range; it must lie in "
                                 f"[{i + 1}, {end[i] - 1}], after its parent and inside its tree")
        f = self.feature
        bad = np.flatnonzero(inner & ((f < 0) | (f >= self.n_features)))
        if bad.size:
            i = bad[0]
            raise ValueError(f"node {i}: feature {f[i]} is out of range [0, {self.n_features})")
        bad = np.flatnonzero(~inner & (f != -1))
        if bad.size:
            raise ValueError(f"leaf node {bad[0]} has feature {f[bad[0]]}; leaves have feature -1")

    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return int(self.roots.shape[0])

    # -- evaluation -------------------------------------------------------------------------------------------------
    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predict, vectorised over samples and trees.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_features)
            Features; cast to float32 before the threshold tests, as scikit-learn does.

        Returns
        -------
        ndarray of float64, shape (n_samples,)
            ``base + scale * sum of the trees' outputs``, in the regressor's target units.
        """
        X = _check_X(X, self.n_features)
        with np.errstate(over="ignore"):
            x32 = X.astype(np.float32)
        if not np.isfinite(x32).all():
            raise ValueError("X has values too large for float32, which tree thresholds are compared in")
        xq = x32.astype(np.float64).ravel()
        n, nf = X.shape[0], self.n_features
        out = np.empty(n, dtype=np.float64)
        step = max(1, _PAIRS_PER_CHUNK // self.n_trees)
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            out[lo:hi] = self._leaf_values(xq[lo * nf:hi * nf], hi - lo).sum(axis=0)   # trees in order
        return self.base + self.scale * out

    def _leaf_values(self, xq: np.ndarray, n: int) -> np.ndarray:
        """Value of the leaf each (tree, sample) pair reaches, shape (n_trees, n); ``xq`` is flat, row-major.

        All pairs step down one level per iteration; pairs that reach a leaf leave the working set.
        """
        t, nf = self.n_trees, self.n_features
        kids, feat, thr, value = self._kids, self._feat, self.threshold, self.value
        out = np.empty(n * t, dtype=np.float64)
        node = np.repeat(self.roots.astype(np.intp), n)   # pair p = tree * n + sample: nearby pairs, nearby nodes
        pair = np.arange(n * t, dtype=np.intp)
        done = self.left[node] < 0                       # single-leaf trees
        if done.any():
            out[pair[done]] = value[node[done]]
            node, pair = node[~done], pair[~done]
        row = (pair % n) * nf
        while pair.size:
            went_right = xq[row + feat[node]] > thr[node]
            node = kids[2 * node + went_right]
            done = node < 0
            if done.any():
                out[pair[done]] = value[~node[done]]
                keep = ~done
                node, pair, row = node[keep], pair[keep], row[keep]
        return out.reshape(t, n)

    # -- conversion -------------------------------------------------------------------------------------------------
    @classmethod
    def from_sklearn(cls, est: Any) -> "TreeEnsemble":
        """Convert a fitted scikit-learn tree regressor.

        Parameters
        ----------
        est : DecisionTreeRegressor, RandomForestRegressor, ExtraTreesRegressor or GradientBoostingRegressor
            Fitted, single-output. Gradient boosting must use ``loss="squared_error"`` and a constant init
            (``init=None``, i.e. the mean; ``init="zero"``; or a ``DummyRegressor``).

        Raises
        ------
        TypeError
            Any other estimator, multi-output, another loss, or a non-constant init.
        """
        from sklearn.dummy import DummyRegressor
        from sklearn.ensemble import ExtraTreesRegressor, GradientBoostingRegressor, RandomForestRegressor
        from sklearn.tree import DecisionTreeRegressor
        from sklearn.utils.validation import check_is_fitted

        name = type(est).__name__
        if not isinstance(est, (DecisionTreeRegressor, RandomForestRegressor, ExtraTreesRegressor,
                                GradientBoostingRegressor)):
            raise TypeError(f"cannot convert {name}: TreeEnsemble takes DecisionTreeRegressor, "
                            "RandomForestRegressor, ExtraTreesRegressor or GradientBoostingRegressor")
        check_is_fitted(est)
        if getattr(est, "n_outputs_", 1) != 1:
            raise TypeError(f"cannot convert {name} with {est.n_outputs_} outputs; only single-output regressors")
        if isinstance(est, DecisionTreeRegressor):
            trees, base, scale = [est], 0.0, 1.0
        elif isinstance(est, GradientBoostingRegressor):
            if est.loss != "squared_error":
                raise TypeError(f"cannot convert {name} with loss={est.loss!r}; only 'squared_error'")
            if est.estimators_.ndim != 2 or est.estimators_.shape[1] != 1:
                raise TypeError(f"cannot convert {name} with estimators_ of shape {est.estimators_.shape}")
            init = est.init_
            if isinstance(init, str) and init == "zero":
                base = 0.0
            elif isinstance(init, DummyRegressor):
                const = np.asarray(init.constant_, dtype=np.float64).ravel()
                if const.size != 1:
                    raise TypeError(f"cannot convert {name}: init estimator has {const.size} outputs")
                base = float(const[0])
            else:
                raise TypeError(f"cannot convert {name} with init={type(init).__name__}: only a constant init "
                                "(None, 'zero' or a DummyRegressor) is a plain number")
            trees, scale = list(est.estimators_[:, 0]), float(est.learning_rate)
        else:
            trees = list(est.estimators_)
            base, scale = 0.0, 1.0 / len(trees)
        return cls._stack([t.tree_ for t in trees], base, scale, int(est.n_features_in_))

    @classmethod
    def _stack(cls, trees: list[Any], base: float, scale: float, n_features: int) -> "TreeEnsemble":
        offsets = np.cumsum([0] + [t.node_count for t in trees])
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("left", "right", "feature", "threshold", "value")}
        for off, t in zip(offsets, trees):
            if t.value.shape[1:] != (1, 1):
                raise TypeError(f"cannot convert a tree with value shape {t.value.shape}; only single-output")
            leaf = t.children_left == -1
            cols["left"].append(np.where(leaf, -1, t.children_left + off))
            cols["right"].append(np.where(leaf, -1, t.children_right + off))
            cols["feature"].append(np.where(leaf, -1, t.feature))
            cols["threshold"].append(np.where(leaf, 0.0, t.threshold))
            cols["value"].append(t.value[:, 0, 0])
        arrays = {k: np.concatenate(v) for k, v in cols.items()}
        return cls(roots=offsets[:-1], base=base, scale=scale, n_features=n_features, **arrays)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays to store under ``prefix``: ``"<prefix>.<field>"`` for every field (scalars as 0-d arrays)."""
        out = {f"{prefix}.{k}": np.asarray(getattr(self, k)) for k in
               ("left", "right", "feature", "threshold", "value", "roots")}
        out[f"{prefix}.base"] = np.array(self.base, dtype=np.float64)
        out[f"{prefix}.scale"] = np.array(self.scale, dtype=np.float64)
        out[f"{prefix}.n_features"] = np.array(self.n_features, dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> "TreeEnsemble":
        """Rebuild from :meth:`to_arrays` output, validating everything.

        Raises
        ------
        PredictorFileError
            A missing array, a wrong dtype or shape, or an invalid tree (the message names the array or node).
        """
        fields: dict[str, Any] = {k: _get(arrays, prefix, k, "i", 1) for k in ("left", "right", "feature", "roots")}
        fields.update({k: _get(arrays, prefix, k, "fi", 1) for k in ("threshold", "value")})
        fields.update({k: float(_get(arrays, prefix, k, "fi", 0)) for k in ("base", "scale")})
        fields["n_features"] = int(_get(arrays, prefix, "n_features", "i", 0))
        try:
            return cls(**fields)
        except ValueError as e:
            raise PredictorFileError(f"regressor {prefix!r}: invalid tree ensemble: {e}") from None


# ---------------------------------------------------------------------------------------------------------------
# linear models


@dataclasses.dataclass(frozen=True, eq=False)
class LinearModel:
    """``X @ coef + intercept``.

    Parameters
    ----------
    coef : ndarray of float64, shape (n_features,)
        Weights, in target units per feature unit.
    intercept : float
        Offset, in target units.

    Raises
    ------
    ValueError
        ``coef`` not 1-D or empty, or non-finite values.
    """

    kind: ClassVar[str] = "linear"

    coef: np.ndarray
    intercept: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "coef", _frozen(self.coef, np.float64))
        object.__setattr__(self, "intercept", float(self.intercept))
        if self.coef.ndim != 1 or self.coef.shape[0] < 1:
            raise ValueError(f"coef must be 1-D with at least one entry; got shape {self.coef.shape}")
        if not (np.isfinite(self.coef).all() and np.isfinite(self.intercept)):
            raise ValueError("coef and intercept must be finite")

    @property
    def n_features(self) -> int:
        """Number of input features."""
        return int(self.coef.shape[0])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predict; ``X`` has shape (n_samples, n_features); returns float64 (n_samples,), target units."""
        return _check_X(X, self.n_features) @ self.coef + self.intercept

    @classmethod
    def from_sklearn(cls, est: Any) -> "LinearModel":
        """Convert a fitted single-output ``LinearRegression`` or ``Ridge``.

        Raises
        ------
        TypeError
            Any other estimator, or several outputs.
        """
        from sklearn.linear_model import LinearRegression, Ridge
        from sklearn.utils.validation import check_is_fitted

        if not isinstance(est, (LinearRegression, Ridge)):
            raise TypeError(f"cannot convert {type(est).__name__}: LinearModel takes LinearRegression or Ridge")
        check_is_fitted(est)
        coef = np.asarray(est.coef_, dtype=np.float64)
        intercept = np.asarray(est.intercept_, dtype=np.float64)
        if coef.ndim != 1 or intercept.ndim != 0:
            raise TypeError(f"cannot convert {type(est).__name__} with coef_ of shape {coef.shape}; "
                            "only single-output regressors (fit on a 1-D y)")
        return cls(coef=coef, intercept=float(intercept))

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays to store under ``prefix``: ``"<prefix>.coef"`` and ``"<prefix>.intercept"`` (0-d)."""
        return {f"{prefix}.coef": np.asarray(self.coef),
                f"{prefix}.intercept": np.array(self.intercept, dtype=np.float64)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> "LinearModel":
        """Rebuild from :meth:`to_arrays` output.

        Raises
        ------
        PredictorFileError
            A missing array, a wrong dtype or shape, or non-finite values.
        """
        coef = _get(arrays, prefix, "coef", "fi", 1)
        intercept = float(_get(arrays, prefix, "intercept", "fi", 0))
        try:
            return cls(coef=coef, intercept=intercept)
        except ValueError as e:
            raise PredictorFileError(f"regressor {prefix!r}: invalid linear model: {e}") from None


#: ``kind`` string stored in metadata → regressor class (read-only).
REGRESSOR_KINDS: Mapping[str, Any] = MappingProxyType({"tree_ensemble": TreeEnsemble, "linear": LinearModel})
