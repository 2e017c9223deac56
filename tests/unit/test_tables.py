"""LatencyTable: exact against whole-subnet prediction, FLOPs/params, batch paths, extremes, loss, files, errors.

The predictor here is a tiny fake (:func:`fake_predictor`): per kernel type a linear function of the kernel's
shape features with positive coefficients, so latencies are positive and depend on shapes and position. The
integration test and ``experiments/benchmarks/table_speed.py`` reuse it.
"""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
import torch

import search_spaces as ss
from hwnas.errors import ArchitectureError
from hwnas.predictor import LatencyPredictor
from hwnas.tables import SCHEMA, SCHEMA_VERSION, FusionBoundaryError, LatencyTable, TableFileError

RULES = [["conv", "bn", "relu"], ["conv", "bn", "relu6"], ["conv", "bn"], ["dwconv", "bn", "relu6"],
         ["dwconv", "bn", "relu"], ["dwconv", "bn"], ["add", "relu"]]
# Every kernel type the two spaces produce under RULES (collected by detecting kernels on all candidates),
# plus the unfused single ops, so the fake prices any subnet.
KERNEL_TYPES = ["conv-bn-relu", "conv-bn-relu6", "conv-bn", "dwconv-bn-relu6", "dwconv-bn-relu", "dwconv-bn",
                "add-relu", "add", "concat", "reshape", "permute", "slice", "split", "channel_shuffle",
                "global_avgpool", "fc", "conv", "dwconv", "bn", "relu", "relu6", "maxpool", "avgpool",
                "concat-channel_shuffle"]   # the last one only for the boundary-fusion test
FEATURES = ["macs", "in_elems", "out_elems", "hin", "cin", "kernel"]


class _Linear:
    """``predict(X) = intercept + X @ coef``: a tiny regressor with ``predict(X) -> ndarray``."""

    def __init__(self, coef: list[float], intercept: float):
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = float(intercept)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.intercept + np.asarray(x, dtype=np.float64) @ self.coef


def fake_predictor(rules: list[list[str]] | None = None, overhead_ms: float = 0.25,
                   name: str = "fake-test", layout: dict | None = None) -> LatencyPredictor:
    """A deterministic fake predictor pricing every kernel type of the SPOS and ProxylessNAS spaces (ms).

    ``global_avgpool`` uses the ``log_ms`` target, the others ``ms``. With ``layout`` (layout rules), every type
    the rules list as a variant also gets its plain-input type, five times dearer."""
    rng = np.random.default_rng(1234)
    regressors, kernels = {}, {}
    for ktype in KERNEL_TYPES:
        coef = rng.uniform(0.005, 0.1, size=len(FEATURES)) * np.array([1.0, 0.5, 0.5, 1e-3, 1e-3, 1e-3])
        if ktype == "global_avgpool":
            regressors[ktype] = _Linear(list(coef), float(np.log(0.004)))
            kernels[ktype] = {"features": FEATURES, "target": "log_ms"}
        else:
            regressors[ktype] = _Linear(list(coef), float(rng.uniform(0.001, 0.01)))
            kernels[ktype] = {"features": FEATURES, "target": "ms"}
    for v in (layout or {}).get("variants", []):
        regressors[v + "@dense"] = _Linear(list(5 * regressors[v].coef), 5 * regressors[v].intercept)
        kernels[v + "@dense"] = kernels[v]
    for t in ("to_backend", "to_plain") if (layout or {}).get("conversions") else ():
        regressors[t] = _Linear(list(rng.uniform(0.005, 0.1, size=len(FEATURES))), 0.002)
        kernels[t] = {"features": FEATURES, "target": "ms"}
    meta = {"name": name, "version": "0", "backend": "fake", "units": "ms", "batch_size": 1,
            "fusion_rules": RULES if rules is None else rules, "zero_cost_ops": ["dropout", "identity"],
            "model_overhead_ms": overhead_ms, "kernels": kernels}
    if layout:
        meta["layout"] = layout
    return LatencyPredictor(meta, regressors)


def full_prediction(pred: LatencyPredictor, space, arch: dict, shape) -> float:
    return pred.predict(ss.build_subnet(space, arch), "torch", shape)


SMALL = {"spos": {"input_size": 32, "num_classes": 10}, "proxyless": {"input_size": 32, "num_classes": 10}}
BIG = {"spos": {"width_mult": 0.5, "num_classes": 10}, "proxyless": {"width_mult": 0.35, "num_classes": 10}}


@pytest.fixture(scope="module")
def pred():
    return fake_predictor()


@pytest.fixture(scope="module")
def small(pred):
    """name -> (space, table) at 32 px."""
    out = {}
    for name, cfg in SMALL.items():
        space = ss.create_space(name, **cfg).eval()
        out[name] = (space, LatencyTable.build(space, pred, (1, 3, 32, 32)))
    return out


# ----- exactness ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["spos", "proxyless"])
def test_table_equals_whole_subnet_prediction_32px(small, pred, name):
    space, table = small[name]
    errors = []
    for seed in range(10):
        arch = ss.random_arch(space, seed)
        full = full_prediction(pred, space, arch, (1, 3, 32, 32))
        errors.append(abs(table.latency(arch) - full) / full)
    assert max(errors) < 1e-9, f"max relative error {max(errors):.3g}"


@pytest.mark.parametrize("name", ["spos", "proxyless"])
def test_table_equals_whole_subnet_prediction_224px(pred, name):
    space = ss.create_space(name, **BIG[name]).eval()
    table = LatencyTable.build(space, pred, (1, 3, 224, 224))
    rng = random.Random(7)
    for arch in [ss.random_arch(space, rng), ss.random_arch(space, rng), table.fastest_arch()]:
        full = full_prediction(pred, space, arch, (1, 3, 224, 224))
        assert table.latency(arch) == pytest.approx(full, rel=1e-9)
    assert table.fixed_latency > 0.25 and table.min_latency() < table.max_latency()


@pytest.mark.parametrize("name", ["spos", "proxyless"])
def test_a_predictor_with_layout_rules_keeps_the_table_exact(name):
    # a block priced alone reads a plain graph input; inside the network its input has its predecessor's
    # layout (a ProxylessNAS block reads a convolution's oneDNN tensor, so its residual add is no plain-input add),
    # and its output is converted (or not) by the block that reads it
    from hwnas.kernels import TORCHSCRIPT_ONEDNN, LayoutRules

    layout = LayoutRules.from_dict(TORCHSCRIPT_ONEDNN).with_variants(["add", "relu", "bn", "maxpool"],
                                                                      conversions=True).to_dict()
    pred = fake_predictor([], layout=layout)
    space = ss.create_space(name, **SMALL[name]).eval()
    table = LatencyTable.build(space, pred, (1, 3, 32, 32))
    for seed in range(5):
        arch = ss.random_arch(space, seed)
        assert table.latency(arch) == pytest.approx(full_prediction(pred, space, arch, (1, 3, 32, 32)), rel=1e-9)
    if name == "proxyless":   # the block input is a group tensor: its adds are priced as such
        types = {r["type"] for r in pred.predict_kernels(ss.build_subnet(space, ss.random_arch(space, 0)), "torch",
                                                         (1, 3, 32, 32))}
        assert "add" in types and "add@dense" not in types
    else:   # channel shuffles and concats are plain: every block converts
        types = [r["type"] for r in pred.predict_kernels(ss.build_subnet(space, ss.random_arch(space, 0)), "torch",
                                                         (1, 3, 32, 32))]
        assert types.count("to_backend") > 5 and types.count("to_plain") > 5


def test_overhead_counted_once(small, pred):
    space, table = small["proxyless"]
    no_overhead = LatencyTable.build(space, fake_predictor(overhead_ms=0.0), (1, 3, 32, 32))
    arch = ss.random_arch(space, 3)
    assert table.latency(arch) - no_overhead.latency(arch) == pytest.approx(0.25, abs=1e-12)
    assert table.metadata["predictor"]["checksum"] == pred.checksum


@pytest.mark.parametrize("name", ["spos", "proxyless"])
def test_flops_and_params_equal_the_counters(small, name):
    space, table = small[name]
    archs = [ss.random_arch(space, s) for s in range(10)] + [table.fastest_arch(), table.slowest_arch()]
    for arch in archs:
        assert table.macs(arch) == ss.count_macs(space, arch, 32)
        assert table.params(arch) == ss.count_params(space, arch)


# ----- batch paths ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["spos", "proxyless"])
def test_batch_from_dicts_equals_index_matrix_equals_loop(small, name):
    space, table = small[name]
    rng = random.Random(0)
    archs = [ss.random_arch(space, rng) for _ in range(50)]
    idx = ss.arch_to_indices(space, archs)
    assert table.labels == list(ss.choices(space)) and table.choices == ss.choices(space)
    from_dicts = table.latency_batch(archs)
    np.testing.assert_array_equal(from_dicts, table.latency_batch(idx))
    np.testing.assert_array_equal(from_dicts, [table.latency(a) for a in archs])
    np.testing.assert_array_equal(table.macs_batch(archs), table.macs_batch(idx))
    np.testing.assert_array_equal(table.params_batch(idx), [table.params(a) for a in archs])
    assert from_dicts.dtype == np.float64 and from_dicts.shape == (50,)
    assert table.latency_batch(np.zeros((0, len(table.labels)), dtype=int)).shape == (0,)


def test_rows_sum_to_latency(small):
    space, table = small["spos"]
    arch = ss.random_arch(space, 11)
    rows = table.rows
    assert table.latency(arch) == pytest.approx(table.fixed_latency + sum(rows[l][c] for l, c in arch.items()),
                                                rel=1e-12)
    assert all(v > 0 for row in rows.values() for v in row.values())


# ----- extremes ---------------------------------------------------------------------------------------------------
def _tiny_document(rows: list[list[float]], fixed: float = 1.0) -> dict:
    blocks = [{"label": f"b{i}", "choices": [f"c{j}" for j in range(len(r))], "latency_ms": r,
               "flops": [int(10 * v) for v in r], "params": [1] * len(r)} for i, r in enumerate(rows)]
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "units": {"latency": "ms"},
            "space": {"name": "tiny", "config": {}}, "input_shape": [1, 3, 8, 8],
            "predictor": {"name": "p", "checksum": "0"},
            "fixed": {"latency_ms": fixed, "overhead_ms": 0.0, "flops": 0, "params": 0, "slots": []},
            "blocks": blocks}


def test_min_max_exact_by_brute_force():
    rows = [[0.3, 0.1, 0.2], [1.5, 0.7], [0.9, 0.4, 2.2, 0.05]]
    table = LatencyTable(_tiny_document(rows))
    all_archs = [dict(zip(table.labels, combo)) for combo in itertools.product(*table.choices.values())]
    lat = table.latency_batch(all_archs)
    assert table.min_latency() == lat.min() and table.max_latency() == lat.max()
    assert table.latency(table.fastest_arch()) == lat.min()
    assert table.slowest_arch() == all_archs[int(lat.argmax())]
    assert table.min_latency() == pytest.approx(1.0 + 0.1 + 0.7 + 0.05)
    np.testing.assert_array_equal(table.n_choices, [3, 2, 4])


@pytest.mark.parametrize("name", ["spos", "proxyless"])
def test_min_max_bound_samples(small, name):
    space, table = small[name]
    lat = table.latency_batch(np.array([[rng.randrange(n) for n in table.n_choices]
                                        for rng in [random.Random(5)] for _ in range(2000)]))
    rows = table.rows
    assert table.min_latency() <= lat.min() and lat.max() <= table.max_latency()
    assert table.min_latency() == pytest.approx(table.fixed_latency + sum(min(r.values()) for r in rows.values()))
    assert table.max_latency() == pytest.approx(table.fixed_latency + sum(max(r.values()) for r in rows.values()))


# ----- differentiable expected latency ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["spos", "proxyless"])
def test_expected_latency_is_differentiable(small, name):
    space, table = small[name]
    gen = torch.Generator().manual_seed(0)
    alphas = {l: torch.randn(len(c), generator=gen, dtype=torch.float64, requires_grad=True)
              for l, c in table.choices.items()}
    expected = table.expected_latency({l: torch.softmax(a, 0) for l, a in alphas.items()})
    expected.backward()
    for label, a in alphas.items():
        assert a.grad is not None and a.grad.abs().sum() > 0, label
    assert table.min_latency() < float(expected.detach()) < table.max_latency()
    # the padded-matrix form gives the same value and gradient
    mask = torch.arange(table.as_tensor().shape[1])[None, :] < torch.as_tensor(table.n_choices)[:, None]
    logits = torch.zeros(mask.shape, dtype=torch.float64)
    for i, a in enumerate(alphas.values()):
        logits[i, :len(a)] = a.detach()
    logits.requires_grad_(True)
    probs = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=1)
    matrix = table.expected_latency(probs)
    matrix.backward()
    assert float(matrix.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    for i, a in enumerate(alphas.values()):
        torch.testing.assert_close(logits.grad[i, :len(a)], a.grad)


@pytest.mark.parametrize("name", ["spos", "proxyless"])
def test_expected_latency_of_one_hot_is_latency(small, name):
    space, table = small[name]
    arch = ss.random_arch(space, 4)
    one_hot = {l: torch.nn.functional.one_hot(torch.tensor(c.index(arch[l])), len(c)).double()
               for l, c in table.choices.items()}
    assert float(table.expected_latency(one_hot)) == pytest.approx(table.latency(arch), rel=1e-12)


# ----- files and cache --------------------------------------------------------------------------------------------
def test_save_load_round_trip(small, tmp_path):
    space, table = small["proxyless"]
    path = table.save(tmp_path / "t.json")
    loaded = LatencyTable.load(path)
    assert loaded.to_dict() == table.to_dict()
    archs = [ss.random_arch(space, s) for s in range(20)]
    np.testing.assert_array_equal(loaded.latency_batch(archs), table.latency_batch(archs))
    meta = loaded.metadata
    assert meta["space"] == {"name": "proxyless", "config": json.loads(json.dumps(
        {**space.config.__dict__}, sort_keys=True))}
    assert meta["input_shape"] == [1, 3, 32, 32] and meta["units"]["latency"] == "ms"
    assert meta["schema_version"] == SCHEMA_VERSION and "hwnas_version" in meta
    assert meta["predictor"]["name"] == "fake-test"


def test_load_refuses_newer_schema_and_corrupt_files(small, tmp_path):
    doc = small["spos"][1].to_dict()
    doc["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "new.json").write_text(json.dumps(doc))
    with pytest.raises(TableFileError, match="newer"):
        LatencyTable.load(tmp_path / "new.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TableFileError, match="JSON"):
        LatencyTable.load(tmp_path / "bad.json")
    doc = small["spos"][1].to_dict()
    doc["blocks"][0]["latency_ms"] = doc["blocks"][0]["latency_ms"][:-1]
    with pytest.raises(TableFileError, match="s1_b0"):
        LatencyTable(doc)
    with pytest.raises(TableFileError, match="no latency table"):
        LatencyTable.load(tmp_path / "missing.json")


def test_cache_hit_avoids_recomputation(small, tmp_path, capsys):
    space, table = small["spos"]
    pred = fake_predictor()
    built = LatencyTable.build(space, pred, (1, 3, 32, 32), cache_dir=tmp_path, progress=True)
    assert "slot 1/" in capsys.readouterr().err
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("spos-")

    def refuse(*args, **kwargs):
        raise AssertionError("the cached table was rebuilt")

    pred.kernels = refuse
    pred.kernel_latencies = refuse
    again = LatencyTable.build(space, pred, (1, 3, 32, 32), cache_dir=tmp_path)
    assert again.to_dict() == built.to_dict() == table.to_dict()
    with pytest.raises(AssertionError, match="rebuilt"):   # another input shape is another key
        LatencyTable.build(space, pred, (1, 3, 40, 40), cache_dir=tmp_path)


# ----- errors -----------------------------------------------------------------------------------------------------
def test_bad_labels_and_choices_are_named(small):
    space, table = small["spos"]
    arch = ss.random_arch(space, 0)
    with pytest.raises(ArchitectureError, match="'s1_b0' has no choice 'k9'"):
        table.latency({**arch, "s1_b0": "k9"})
    with pytest.raises(ArchitectureError, match="unknown label.*'s9_b9'"):
        table.latency({**arch, "s9_b9": "shuffle3"})
    missing = dict(arch)
    del missing["s2_b1"]
    with pytest.raises(ArchitectureError, match="missing label.*'s2_b1'"):
        table.latency_batch([arch, missing])
    idx = ss.arch_to_indices(space, [arch, arch])
    idx[1, 3] = 4
    with pytest.raises(ArchitectureError, match="index 4 .*architecture 1.*'s1_b3'"):
        table.latency_batch(idx)
    with pytest.raises(ArchitectureError, match="shape"):
        table.latency_batch(idx[:, :5])
    with pytest.raises(ArchitectureError, match="one dict"):
        table.latency_batch(arch)
    with pytest.raises(ArchitectureError, match="missing label"):
        table.expected_latency({"s1_b0": torch.ones(4) / 4})


def test_fusion_across_a_block_boundary_is_refused(pred):
    # SPOS blocks end with concat and the next stride-1 block starts by shuffling its input's channels: a rule
    # concat-channel_shuffle fuses across the boundary, which a per-block table cannot represent.
    space = ss.create_space("spos", **SMALL["spos"])
    crossing = fake_predictor(RULES + [["concat", "channel_shuffle"]], name="crossing")
    kinds = {k["type"] for k in crossing.predict_kernels(ss.build_subnet(space, ss.random_arch(space, 0)),
                                                         "torch", (1, 3, 32, 32))}
    assert "concat-channel_shuffle" in kinds   # the whole network really fuses across blocks
    with pytest.raises(FusionBoundaryError, match="'concat-channel_shuffle'.*s1_b1"):
        LatencyTable.build(space, crossing, (1, 3, 32, 32))


def test_boundary_op_pairs_name_the_pairs_the_table_check_refuses():
    from hwnas.tables import boundary_op_pairs

    space = ss.create_space("spos", **SMALL["spos"])
    pairs = boundary_op_pairs(space, (1, 3, 32, 32))
    assert ("concat", "channel_shuffle") in pairs   # a shuffle block's output concat, the next block's shuffle
    assert ("conv", "bn") not in pairs         # inside a block only
    safe = [r for r in RULES + [["concat", "channel_shuffle"]] if not any(tuple(r[i:i + 2]) in pairs
                                                                 for i in range(len(r) - 1))]
    LatencyTable.build(space, fake_predictor(safe, name="split"), (1, 3, 32, 32))   # no FusionBoundaryError


def test_space_mutated_by_a_strategy_is_rebuilt_from_its_config(small, pred):
    space, table = small["spos"]
    mutated = ss.create_space("spos", **SMALL["spos"])
    mutated.blocks.s1_b0 = torch.nn.Identity()   # what a one-shot strategy's in-place rewrite looks like to layout
    assert LatencyTable.build(mutated, pred, (1, 3, 32, 32)).to_dict() == table.to_dict()
