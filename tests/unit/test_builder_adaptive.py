"""Adaptive sampling: neighbours of the kernels the regressors predict worst, tagged with their source."""

import torch.nn as nn

from hwnas.builder._sampler import PriorModel, adaptive_specs, prior_specs, spec_from_key, spec_key
from hwnas.kernels import FusionRules, kernel_features

RULES = FusionRules([["conv", "bn", "relu"]])


def _net(width):
    return nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())


def _rows():
    from hwnas.builder._kernel_modules import spec_nodes

    models = [PriorModel(f"n{w}@{r}", "tiny", lambda w=w: _net(w), (1, 3, r, r))
              for w in range(8, 72, 8) for r in (16, 24, 32)]
    rows = []
    for spec in prior_specs(models, RULES, progress=False):
        f = kernel_features(spec_nodes(spec))
        rows.append({"key": spec_key(spec), "type": spec["type"], "features": f, "ms": 2.0 * f["macs"],
                     "families": list(spec["families"]), "parent_families": []})
    return rows


def test_neighbours_of_the_worst_predicted_kernel_are_proposed(monkeypatch):
    import hwnas.builder._sampler as sampler

    rows = _rows()
    assert len(rows) >= 40
    bad = rows[17]
    bad["ms"] *= 6.0                                       # one kernel the smooth trend cannot explain
    sources = []
    real = sampler.jitter
    monkeypatch.setattr(sampler, "jitter", lambda spec, rng: sources.append(spec_key(spec)) or real(spec, rng))
    specs = adaptive_specs(rows, worst_fraction=0.01, neighbours=2, seed=0)
    assert set(sources) == {bad["key"]}                    # the one worst kernel, and only it, is perturbed
    assert specs and all(s["families"] == ["adaptive"] and s["parent_families"] == ["tiny"] for s in specs)
    measured = {r["key"] for r in rows}
    assert not {spec_key(s) for s in specs} & measured     # never re-measures a configuration
    assert all(s["type"] == bad["type"] for s in specs)


def test_spec_key_round_trip():
    row = _rows()[0]
    assert spec_key(spec_from_key(row["key"])) == row["key"]


def test_types_with_few_measurements_are_left_alone():
    assert adaptive_specs(_rows()[:5], min_rows=20) == []
