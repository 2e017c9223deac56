"""The zoo's truth over passes: the median of each network's passes."""

import pytest

from hwnas.builder._calibrate import zoo_measurements
from hwnas.builder._protocol import QUICK_PROTOCOL
from hwnas.builder._store import open_store
from hwnas.builder._zoo import zoo_key


def _write(path, rows):
    with open_store(path) as store:
        for model, pass_id, ms in rows:
            store.append(zoo_key(model, pass_id), ms=ms, protocol=QUICK_PROTOCOL, kind="zoo", family="f",
                         model=model, pass_id=pass_id)


def test_median_over_passes_and_single_pass(tmp_path):
    path = tmp_path / "zoo.jsonl"
    _write(path, [("a", 0, 1.0), ("a", 1, 5.0), ("a", 2, 2.0), ("b", 0, 3.0), ("b", 2, 4.0), ("c", 1, 7.0)])
    truth = zoo_measurements(path, None)
    assert truth["a"]["ms"] == pytest.approx(2.0) and truth["a"]["passes"] == 3
    assert truth["b"]["ms"] == pytest.approx(3.5) and truth["b"]["passes"] == 2
    assert truth["c"]["ms"] == pytest.approx(7.0) and truth["c"]["passes"] == 1
    assert {k: r["ms"] for k, r in zoo_measurements(path, 1).items()} == {"a": 5.0, "c": 7.0}
    # the per-pass records are not changed by computing the truth
    assert zoo_measurements(path, 0)["a"]["ms"] == 1.0 and "passes" not in zoo_measurements(path, 0)["a"]
