"""Regressors as arrays: exact agreement with scikit-learn, validation of stored trees, target transform.

Run as a script (``python -m tests.unit.test_regressors``) for a micro-benchmark of the tree evaluator.
"""

import numpy as np
import pytest
from sklearn.dummy import DummyRegressor
from sklearn.ensemble import (ExtraTreesRegressor, GradientBoostingRegressor, RandomForestClassifier,
                              RandomForestRegressor)
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import Lasso, LinearRegression, Ridge
from sklearn.tree import DecisionTreeRegressor

from hwnas.errors import PredictorFileError
from hwnas.predictor import _regressors
from hwnas.predictor._regressors import REGRESSOR_KINDS, LinearModel, TreeEnsemble, apply_target

RTOL = 1e-9


def _data(n=400, seed=0):
    """Features with ties (small integers), float32-adjacent values, wide ranges; a positive target."""
    rng = np.random.default_rng(seed)
    one32 = np.float32(1.0)
    x = np.column_stack([
        rng.normal(size=n),
        rng.integers(0, 4, size=n).astype(np.float64),                           # heavy ties
        np.nextafter(one32, np.float32(2), dtype=np.float32) ** rng.integers(0, 6, size=n),  # adjacent float32
        rng.uniform(1e3, 1e7, size=n),                                            # macs-like magnitudes
        rng.integers(0, 2, size=n).astype(np.float64),
    ])
    y = 3.0 + x[:, 0] ** 2 + x[:, 1] + 1e-6 * x[:, 3] + 0.1 * rng.normal(size=n)
    return x, y


def _queries(x, seed=1):
    """Training rows (exactly on split values), fresh points, and integers between the ties."""
    rng = np.random.default_rng(seed)
    fresh = x[rng.integers(0, len(x), 200)] * rng.uniform(0.9, 1.1, size=(200, x.shape[1]))
    grid = x[:50].copy()
    grid[:, 1] = np.arange(50) % 5 - 0.5
    return np.concatenate([x, fresh, grid])


ESTIMATORS = {
    "decision_tree_deep": lambda: DecisionTreeRegressor(random_state=0),                 # max_depth=None
    "decision_tree_best_first": lambda: DecisionTreeRegressor(max_leaf_nodes=40, random_state=0),
    "random_forest": lambda: RandomForestRegressor(n_estimators=12, random_state=0, n_jobs=1),
    "extra_trees": lambda: ExtraTreesRegressor(n_estimators=12, random_state=0, n_jobs=1),
    "gradient_boosting": lambda: GradientBoostingRegressor(n_estimators=40, max_depth=4, subsample=0.8,
                                                           random_state=0),
    "gradient_boosting_zero_init": lambda: GradientBoostingRegressor(n_estimators=40, init="zero", random_state=0),
    "gradient_boosting_median_init": lambda: GradientBoostingRegressor(
        n_estimators=20, init=DummyRegressor(strategy="median"), random_state=0),
}


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_trees_match_sklearn_exactly(name, data):
    x, y = data
    est = ESTIMATORS[name]().fit(x, y)
    te = TreeEnsemble.from_sklearn(est)
    q = _queries(x)
    np.testing.assert_allclose(te.predict(q), est.predict(q), rtol=RTOL, atol=0)
    again = TreeEnsemble.from_arrays(te.to_arrays("k"), "k")
    np.testing.assert_array_equal(again.predict(q), te.predict(q))


def test_deep_tree_is_deep(data):
    x, _ = data
    noise = np.random.default_rng(3).normal(size=len(x))
    est = DecisionTreeRegressor(random_state=0).fit(x, noise)
    assert est.get_depth() >= 15
    te = TreeEnsemble.from_sklearn(est)
    np.testing.assert_allclose(te.predict(_queries(x)), est.predict(_queries(x)), rtol=RTOL, atol=0)


def test_gradient_boosting_base_and_scale(data):
    x, y = data
    est = GradientBoostingRegressor(n_estimators=5, learning_rate=0.3, random_state=0).fit(x, y)
    te = TreeEnsemble.from_sklearn(est)
    assert te.base == pytest.approx(y.mean()) and te.scale == 0.3 and te.n_trees == 5
    zero = TreeEnsemble.from_sklearn(GradientBoostingRegressor(n_estimators=5, init="zero").fit(x, y))
    assert zero.base == 0.0


def _naive_float64_walk(te, x):
    out = []
    for row in x:
        node = int(te.roots[0])
        while te.left[node] >= 0:
            node = te.left[node] if row[te.feature[node]] <= te.threshold[node] else te.right[node]
        out.append(te.value[node])
    return np.array(out)


def test_float32_cast_is_reproduced(data):
    """Points a hair above a threshold in float64 that round onto it in float32 go left, as in scikit-learn."""
    x, y = data
    est = DecisionTreeRegressor(random_state=0).fit(x, y)
    te = TreeEnsemble.from_sklearn(est)
    inner = np.flatnonzero(te.left >= 0)
    q = np.repeat(x[:1], len(inner), axis=0)
    q[np.arange(len(inner)), te.feature[inner]] = te.threshold[inner] * (1 + 1e-12) + 1e-300
    sk = est.predict(q)
    np.testing.assert_allclose(te.predict(q), sk, rtol=RTOL, atol=0)
    assert np.any(_naive_float64_walk(te, q) != sk), "test points do not exercise the float32 cast"


def test_single_leaf_trees_and_chunking(data, monkeypatch):
    x, y = data
    const = DecisionTreeRegressor().fit(x, np.full(len(x), 2.5))
    assert const.tree_.node_count == 1
    np.testing.assert_array_equal(TreeEnsemble.from_sklearn(const).predict(x[:7]), np.full(7, 2.5))
    est = RandomForestRegressor(n_estimators=5, max_depth=3, random_state=0).fit(x, y)
    te = TreeEnsemble.from_sklearn(est)
    whole = te.predict(x)
    monkeypatch.setattr(_regressors, "_PAIRS_PER_CHUNK", 7)   # several samples per chunk, uneven tail
    np.testing.assert_array_equal(te.predict(x), whole)
    assert te.predict(np.empty((0, x.shape[1]))).shape == (0,)


def test_predict_input_checks(data):
    x, y = data
    te = TreeEnsemble.from_sklearn(DecisionTreeRegressor(max_depth=2).fit(x, y))
    with pytest.raises(ValueError, match=r"shape \(n_samples, 5\)"):
        te.predict(x[:, :3])
    with pytest.raises(ValueError, match="NaN or inf"):
        te.predict(np.full((1, 5), np.nan))
    with pytest.raises(ValueError, match="float32"):
        te.predict(np.full((1, 5), 1e39))
    assert not te.left.flags.writeable


@pytest.mark.parametrize("make, match", [
    (lambda x, y: RandomForestClassifier(n_estimators=2).fit(x, y > y.mean()), "cannot convert"),
    (lambda x, y: LinearRegression().fit(x, y), "cannot convert LinearRegression"),
    (lambda x, y: DecisionTreeRegressor(max_depth=2).fit(x, np.column_stack([y, y])), "2 outputs"),
    (lambda x, y: GradientBoostingRegressor(n_estimators=2, loss="absolute_error").fit(x, y), "squared_error"),
    (lambda x, y: GradientBoostingRegressor(n_estimators=2, init=LinearRegression()).fit(x, y), "constant init"),
])
def test_unsupported_estimators_are_type_errors(make, match, data):
    with pytest.raises(TypeError, match=match):
        TreeEnsemble.from_sklearn(make(*data))


def test_unfitted_estimator_is_refused():
    with pytest.raises(NotFittedError):
        TreeEnsemble.from_sklearn(RandomForestRegressor())


@pytest.mark.parametrize("est", [LinearRegression(), Ridge(alpha=0.5, solver="svd")], ids=["linear", "ridge"])
def test_linear_matches_sklearn(est, data):
    x, y = data
    est.fit(x, y)
    lm = LinearModel.from_sklearn(est)
    np.testing.assert_allclose(lm.predict(_queries(x)), est.predict(_queries(x)), rtol=RTOL, atol=0)
    again = LinearModel.from_arrays(lm.to_arrays("p"), "p")
    np.testing.assert_array_equal(again.predict(x), lm.predict(x))


def test_linear_rejects_others(data):
    x, y = data
    with pytest.raises(TypeError, match="single-output"):
        LinearModel.from_sklearn(LinearRegression().fit(x, np.column_stack([y, y])))
    with pytest.raises(TypeError, match="Lasso"):
        LinearModel.from_sklearn(Lasso().fit(x, y))
    with pytest.raises(ValueError, match="finite"):
        LinearModel(np.array([np.inf]), 0.0)


# -- validation of stored trees ------------------------------------------------------------------------------------

def _tree_arrays():
    """Two stumps: nodes 0 (x0 <= 0.5 ? 1 : 2) and 3 (x1 <= 1 ? 4 : 5)."""
    return {
        "t.left": np.array([1, -1, -1, 4, -1, -1], np.int32),
        "t.right": np.array([2, -1, -1, 5, -1, -1], np.int32),
        "t.feature": np.array([0, -1, -1, 1, -1, -1], np.int32),
        "t.threshold": np.array([0.5, 0, 0, 1.0, 0, 0]),
        "t.value": np.array([0, 1.0, 2.0, 0, 10.0, 20.0]),
        "t.roots": np.array([0, 3], np.int32),
        "t.base": np.array(0.5), "t.scale": np.array(2.0), "t.n_features": np.array(2),
    }


def test_hand_written_ensemble():
    te = TreeEnsemble.from_arrays(_tree_arrays(), "t")
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 2.0]])
    np.testing.assert_array_equal(te.predict(x), 0.5 + 2.0 * np.array([11, 12, 21, 22]))


@pytest.mark.parametrize("field, value, match", [
    ("t.left", np.array([0, -1, -1, 4, -1, -1], np.int32), r"node 0: left child 0 is out of range"),   # cycle
    ("t.left", np.array([1, -1, -1, 2, -1, -1], np.int32), r"node 3: left child 2 .* after its parent"),
    ("t.right", np.array([4, -1, -1, 5, -1, -1], np.int32), r"node 0: right child 4 .* inside its tree"),
    ("t.right", np.array([2, -1, -1, 9, -1, -1], np.int32), r"node 3: right child 9 is out of range"),
    ("t.right", np.array([-1, -1, -1, 5, -1, -1], np.int32), "one child only"),
    ("t.feature", np.array([0, -1, -1, 2, -1, -1], np.int32), r"node 3: feature 2 is out of range \[0, 2\)"),
    ("t.threshold", np.array([np.nan, 0, 0, 1, 0, 0]), r"threshold\[0\] is not finite"),
    ("t.value", np.array([0, 1.0, 2.0]), "value has 3 entries"),
    ("t.left", np.array([1.0, -1, -1, 4, -1, -1]), "expected integer"),
    ("t.roots", np.array([0, 0], np.int32), "roots must start at 0, increase strictly"),
    ("t.roots", np.array([1, 3], np.int32), "roots must start at 0"),
    ("t.left", np.array([1, -1, -1, 4, -1, 2**40]), "outside int32"),
    ("t.n_features", np.array([2]), "t.n_features.*1 dimensions, expected 0"),
])
def test_invalid_trees_are_predictor_file_errors(field, value, match):
    arrays = _tree_arrays()
    arrays[field] = value
    with pytest.raises(PredictorFileError, match=match):
        TreeEnsemble.from_arrays(arrays, "t")


def test_missing_array_is_named():
    arrays = _tree_arrays()
    del arrays["t.threshold"]
    with pytest.raises(PredictorFileError, match="'t.threshold' is missing"):
        TreeEnsemble.from_arrays(arrays, "t")


def test_apply_target_and_registry():
    np.testing.assert_array_equal(apply_target("ms", [1.5]), [1.5])
    np.testing.assert_allclose(apply_target("log_ms", np.log([0.2, 3.0])), [0.2, 3.0])
    with pytest.raises(ValueError, match="unknown regressor target"):
        apply_target("seconds", [1.0])
    assert REGRESSOR_KINDS == {"tree_ensemble": TreeEnsemble, "linear": LinearModel}
    assert all(cls.kind == kind for kind, cls in REGRESSOR_KINDS.items())
    with pytest.raises(TypeError):
        REGRESSOR_KINDS["other"] = LinearModel   # read-only


def _benchmark(n_trees=100, depth=15, n_samples=1000, repeats=7):
    import time

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(20_000, 8))
    y = np.sin(x @ rng.normal(size=8)) + 0.1 * rng.normal(size=len(x))
    est = RandomForestRegressor(n_estimators=n_trees, max_depth=depth, random_state=0, n_jobs=1).fit(x, y)
    te = TreeEnsemble.from_sklearn(est)
    q = rng.uniform(size=(n_samples, 8))

    def best(f):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return 1e3 * min(times)

    print(f"{n_trees} trees, depth {depth}, {te.left.size} nodes; {n_samples} samples (best of {repeats}):")
    print(f"  hwnas TreeEnsemble.predict  {best(lambda: te.predict(q)):8.2f} ms")
    print(f"  sklearn predict (n_jobs=1)  {best(lambda: est.predict(q)):8.2f} ms")
    one, one_sk = best(lambda: te.predict(q[:1])), best(lambda: est.predict(q[:1]))
    print(f"  1 sample: hwnas {one:.3f} ms, sklearn {one_sk:.3f} ms")


if __name__ == "__main__":
    _benchmark()
