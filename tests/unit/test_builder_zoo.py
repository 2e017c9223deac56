"""The model-level set: at least 10 families of at least 40 networks, unique keys, families known to the prior."""

from collections import Counter

import pytest

from hwnas.builder._zoo import zoo


def test_zoo_has_forty_networks_in_each_of_ten_families():
    models = zoo()
    counts = Counter(m.family for m in models)
    assert len(counts) >= 10 and min(counts.values()) >= 40, counts
    keys = [m.key for m in models]
    assert len(set(keys)) == len(keys)


def test_zoo_families_are_prior_families():
    from hwnas.builder._sampler import space_prior, torchvision_prior

    prior = {m.family for m in torchvision_prior((224,))} | {m.family for m in space_prior(1)}
    assert {m.family for m in zoo()} <= prior


def test_zoo_subset_and_unknown_family():
    assert {m.family for m in zoo(("spos",))} == {"spos"}
    with pytest.raises(ValueError, match="unknown families"):
        zoo(("nope",))


def test_a_zoo_network_builds_and_runs():
    import torch

    m = next(m for m in zoo(("squeezenet",)) if m.input_shape[-1] == 64)
    with torch.no_grad():
        assert m.build()(torch.zeros(m.input_shape)).shape == (1, 1000)
