"""search_spaces: registry, configs, labels and choices, architecture validation and encoding."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

import search_spaces as ss
from hwnas.errors import ArchitectureError

SMALL = {"width_mult": 0.25, "input_size": 32, "num_classes": 10}
SPOS_CHOICES = ["shuffle3", "shuffle5", "shuffle7", "xception"]
PROXYLESS_MB = ["k3e3", "k3e6", "k5e3", "k5e6", "k7e3", "k7e6"]


@pytest.fixture(scope="module")
def spaces():
    return {name: ss.create_space(name, **SMALL) for name in ("spos", "proxyless")}


def test_registry_lists_builtin_spaces():
    assert ss.list_spaces() == ["proxyless", "spos"]
    with pytest.raises(KeyError, match="unknown search space 'nope'.*proxyless"):
        ss.create_space("nope")


def test_register_space_refuses_duplicates_and_mismatched_classes():
    with pytest.raises(ValueError, match="already registered"):
        ss.register_space("spos", ss.SposSpace, ss.SposConfig)
    with pytest.raises(TypeError, match="config_cls"):
        ss.register_space("spos_other", ss.SposSpace, ss.ProxylessConfig)
    with pytest.raises(TypeError, match="ChainSpace subclass"):
        ss.register_space("not_a_space", dict, ss.SposConfig)
    assert "spos_other" not in ss.list_spaces()


@pytest.mark.parametrize("name,config_cls", [("spos", ss.SposConfig), ("proxyless", ss.ProxylessConfig)])
def test_create_space_config(name, config_cls, spaces):
    space = spaces[name]
    assert isinstance(space, ss.ChainSpace)
    assert type(space.config) is config_cls
    assert (space.config.width_mult, space.config.input_size, space.config.num_classes) == (0.25, 32, 10)
    assert space.config.use_small_input
    # NNI records plain, JSON-safe keyword arguments, so it can rebuild the space elsewhere.
    json.dumps(space.trace_kwargs)
    assert config_cls(**space.trace_kwargs) == space.config


def test_config_defaults_and_validation():
    assert ss.SposConfig().dropout == 0.1 and ss.ProxylessConfig().dropout == 0.0
    assert not ss.SposConfig().use_small_input
    assert ss.SposConfig(input_size=32).use_small_input
    assert not ss.SposConfig(input_size=32, small_input=False).use_small_input
    assert ss.ProxylessConfig(stage_widths=[32, 40, 80, 96, 192, 320]).stage_widths == (32, 40, 80, 96, 192, 320)
    with pytest.raises(TypeError, match="unknown SposConfig field.*'widht_mult'.*width_mult"):
        ss.create_space("spos", widht_mult=0.5)
    with pytest.raises(ValueError, match="dropout"):
        ss.SposConfig(dropout=1.0)
    with pytest.raises(ValueError, match="width_mult"):
        ss.ProxylessConfig(width_mult=0)
    with pytest.raises(ValueError, match="stage 1 .*empty main branch"):
        ss.SposConfig(width_mult=0.05)
    with pytest.raises(ValueError, match="stage_widths"):
        ss.ProxylessConfig(stage_widths=(24, 40))


def test_choices_labels_and_order(spaces):
    spos = ss.choices(spaces["spos"])
    depths = {1: 4, 2: 4, 3: 8, 4: 4}
    assert list(spos) == [f"s{s}_b{b}" for s, d in depths.items() for b in range(d)]
    assert all(v == SPOS_CHOICES for v in spos.values())

    proxyless = ss.choices(spaces["proxyless"])
    depths = {1: 4, 2: 4, 3: 4, 4: 4, 5: 4, 6: 1}
    assert list(proxyless) == [f"s{s}_b{b}" for s, d in depths.items() for b in range(d)]
    for label, names in proxyless.items():
        first_of_stage = label.endswith("_b0")
        assert names == (PROXYLESS_MB if first_of_stage else PROXYLESS_MB + ["skip"]), label
    # Labels do not depend on the configuration; a name means the default config.
    assert ss.choices("proxyless") == proxyless and ss.choices("spos") == spos


@pytest.mark.parametrize("name", ["spos", "proxyless"])
def test_nni_sees_exactly_our_labels_and_choices(name, spaces):
    simplified = spaces[name].simplify()
    ours = ss.choices(spaces[name])
    assert list(simplified) == list(ours)
    assert {label: list(m.values) for label, m in simplified.items()} == ours


@pytest.mark.parametrize("name", ["spos", "proxyless"])
def test_random_arch_is_deterministic_and_local(name, spaces):
    space = spaces[name]
    state = random.getstate()
    a, b = ss.random_arch(space, seed=7), ss.random_arch(space, seed=7)
    assert random.getstate() == state  # the global RNG is neither used nor reseeded
    assert a == b and isinstance(a, dict)
    assert json.loads(json.dumps(a)) == a
    ss.validate_arch(space, a)
    draws = [ss.random_arch(space, seed=s) for s in range(20)]
    assert len({json.dumps(d, sort_keys=True) for d in draws}) > 1
    rng1, rng2 = random.Random(3), random.Random(3)
    assert [ss.random_arch(space, rng1) for _ in range(3)] == [ss.random_arch(space, rng2) for _ in range(3)]


def test_validate_arch_errors_name_the_problem(spaces):
    space = spaces["proxyless"]
    arch = ss.random_arch(space, 0)
    bad_label = {**arch, "s9_b0": "k3e3"}
    with pytest.raises(ArchitectureError, match=r"unknown label\(s\) \['s9_b0'\]; valid labels: \['s1_b0'"):
        ss.validate_arch(space, bad_label)
    with pytest.raises(ArchitectureError, match=r"label 's1_b0' has no choice 'skip'; valid choices: \['k3e3'"):
        ss.validate_arch(space, {**arch, "s1_b0": "skip"})
    with pytest.raises(ArchitectureError, match=r"label 's2_b1' has no choice 'k9e9'"):
        ss.validate_arch(space, {**arch, "s2_b1": "k9e9"})
    missing = dict(arch)
    del missing["s3_b2"]
    with pytest.raises(ArchitectureError, match=r"missing label\(s\) \['s3_b2'\]"):
        ss.validate_arch(space, missing)
    with pytest.raises(ArchitectureError, match="has no choice 3"):
        ss.validate_arch(spaces["spos"], {**ss.random_arch(spaces["spos"], 0), "s1_b0": 3})
    with pytest.raises(ArchitectureError, match="dict label -> choice"):
        ss.validate_arch(space, ["k3e3"])
    assert issubclass(ArchitectureError, ValueError)
    for fn in (ss.build_subnet, ss.count_macs, ss.count_params):
        with pytest.raises(ArchitectureError, match="s3_b2"):
            fn(space, missing)


@pytest.mark.parametrize("name", ["spos", "proxyless"])
def test_indices_round_trip(name, spaces):
    space = spaces[name]
    labels = ss.choices(space)
    archs = [ss.random_arch(space, seed) for seed in range(5)]
    idx = ss.arch_to_indices(space, archs)
    assert idx.shape == (5, len(labels)) and idx.dtype == np.int64
    for row, arch in zip(idx, archs):
        assert [labels[k][i] for k, i in zip(labels, row)] == list(arch.values())
    assert ss.indices_to_arch(space, idx) == archs
    assert ss.indices_to_arch(space, idx[2]) == archs[2]
    assert ss.arch_to_indices(space, archs[1]).shape == (1, len(labels))
    assert ss.arch_to_indices(space, []).shape == (0, len(labels))


def test_indices_errors(spaces):
    space = spaces["proxyless"]
    row = ss.arch_to_indices(space, ss.random_arch(space, 0))[0]
    row[0] = 6  # s1_b0 has 6 choices (no skip)
    with pytest.raises(ArchitectureError, match="index 6 out of range for label 's1_b0'"):
        ss.indices_to_arch(space, row)
    with pytest.raises(ArchitectureError, match="n_labels=21"):
        ss.indices_to_arch(space, np.zeros((2, 20), dtype=int))
    with pytest.raises(ArchitectureError, match="integers"):
        ss.indices_to_arch(space, np.zeros(21) + 0.5)
    with pytest.raises(ArchitectureError, match="s1_b0"):
        ss.arch_to_indices(space, [{**ss.random_arch(space, 0), "s1_b0": "skip"}])
