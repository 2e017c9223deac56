"""The on-disk predictor: round trip, zip archives, checksums, and one precise error per kind of bad file."""

import hashlib
import io
import json
import shutil
import zipfile

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingRegressor

from hwnas.errors import PredictorFileError
from hwnas.predictor._format import (SCHEMA_VERSION, predictor_checksum, read_predictor, sha256_file,
                                     write_predictor)
from hwnas.predictor._regressors import LinearModel, TreeEnsemble

FEATURES = {"conv-bn-relu": ["macs", "in_elems", "out_elems"], "add": ["out_elems"]}


def _metadata():
    return {
        "name": "tiny-fmt-µ", "version": "0.1", "backend": "torchscript-cpu",
        "device": {"description": "test box", "fingerprint": {"cpu_model": "x"}}, "runtime": {"torch": "2"},
        "threads": 1, "batch_size": 1, "precision": "fp32", "units": "ms", "protocol": {"runs": 10},
        "fusion_rules": [["conv", "bn", "relu"]], "zero_cost_ops": ["dropout"], "model_overhead_ms": 0.25,
        "kernels": {"conv-bn-relu": {"features": FEATURES["conv-bn-relu"], "target": "log_ms"},
                    "add": {"features": FEATURES["add"], "target": "ms"}},
        "accuracy": {"rmspe": 0.05}, "created": "2026-01-01T00:00:00Z", "hwnas_version": "0.0.0",
    }


@pytest.fixture(scope="module")
def regressors():
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 100, size=(300, 3))
    y = np.log(0.01 * x[:, 0] + 0.001 * x[:, 1] * x[:, 2] / 100)
    gb = GradientBoostingRegressor(n_estimators=20, max_depth=3, random_state=0).fit(x, y)
    return {"conv-bn-relu": TreeEnsemble.from_sklearn(gb), "add": LinearModel(np.array([2e-3]), 0.01)}


@pytest.fixture
def pred(tmp_path, regressors):
    return write_predictor(tmp_path / "pred", _metadata(), regressors)


def _x(ktype, n=50):
    return np.random.default_rng(1).uniform(1, 100, size=(n, len(FEATURES[ktype])))


def _edit_json(path, change):
    meta = json.loads((path / "predictor.json").read_text(encoding="utf-8"))
    change(meta)
    (path / "predictor.json").write_text(json.dumps(meta), encoding="utf-8")


def _edit_arrays(path, change, allow_pickle=False):
    """Rewrite regressors.npz with changed arrays and a matching checksum (so only the arrays are wrong)."""
    with np.load(path / "regressors.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _set_npz(path, buf.getvalue())


def _set_npz(path, data):
    (path / "regressors.npz").write_bytes(data)
    _edit_json(path, lambda m: m["files"].update({"regressors.npz": hashlib.sha256(data).hexdigest()}))


# -- round trip ----------------------------------------------------------------------------------------------------

def test_round_trip_predicts_identically(pred, regressors):
    meta, regs = read_predictor(pred)
    assert set(regs) == set(regressors)
    for ktype, reg in regressors.items():
        np.testing.assert_array_equal(regs[ktype].predict(_x(ktype)), reg.predict(_x(ktype)))
        assert type(regs[ktype]) is type(reg)
    assert meta["schema_version"] == SCHEMA_VERSION == 3
    assert meta["files"] == {"regressors.npz": sha256_file(pred / "regressors.npz")}
    assert meta["kernels"]["add"]["regressor"] == {"kind": "linear", "prefix": "add"}
    assert meta["kernels"]["conv-bn-relu"]["regressor"]["kind"] == "tree_ensemble"
    assert meta["name"] == "tiny-fmt-µ" and meta["device"]["fingerprint"] == {"cpu_model": "x"}


def test_a_regressor_shared_by_two_types_is_stored_once_and_read_back_as_one(tmp_path, regressors):
    import copy

    def write(second, where):
        meta = _metadata()
        meta["kernels"]["conv-bn-relu6"] = {"features": FEATURES["conv-bn-relu"], "target": "log_ms"}
        return write_predictor(tmp_path / where, meta, dict(regressors, **{"conv-bn-relu6": second}))

    shared = write(regressors["conv-bn-relu"], "shared")
    copied = write(copy.deepcopy(regressors["conv-bn-relu"]), "copied")
    meta, regs = read_predictor(shared)
    prefixes = {t: meta["kernels"][t]["regressor"]["prefix"] for t in ("conv-bn-relu", "conv-bn-relu6")}
    assert len(set(prefixes.values())) == 1                          # one prefix, one set of arrays
    assert regs["conv-bn-relu"] is regs["conv-bn-relu6"]
    x = _x("conv-bn-relu")
    np.testing.assert_array_equal(regs["conv-bn-relu6"].predict(x), regressors["conv-bn-relu"].predict(x))
    with np.load(shared / "regressors.npz") as a, np.load(copied / "regressors.npz") as b:
        assert len(b.files) > len(a.files)                           # a distinct copy is stored twice
    meta_c, regs_c = read_predictor(copied)
    assert regs_c["conv-bn-relu"] is not regs_c["conv-bn-relu6"]
    np.testing.assert_array_equal(regs_c["conv-bn-relu6"].predict(x), regs["conv-bn-relu6"].predict(x))


def test_written_files_are_plain_sorted_json_and_a_plain_npz(pred):
    text = (pred / "predictor.json").read_text(encoding="utf-8")
    assert "tiny-fmt-µ" in text and "\n  " in text                    # UTF-8, indented
    keys = list(json.loads(text))
    assert keys == sorted(keys)
    with np.load(pred / "regressors.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)
    assert sorted(p.name for p in pred.iterdir()) == ["predictor.json", "regressors.npz"]   # no temp files left


def test_writer_leaves_caller_metadata_alone_and_is_deterministic(tmp_path, regressors):
    meta = _metadata()
    a = write_predictor(tmp_path / "a", meta, regressors)
    assert meta == _metadata()
    b = write_predictor(tmp_path / "b", meta, regressors)
    assert (a / "regressors.npz").read_bytes() == (b / "regressors.npz").read_bytes()
    assert predictor_checksum(a) == predictor_checksum(b)


def test_rewrite_in_place_keeps_other_files(pred, regressors):
    (pred / "README.md").write_text("notes")
    meta = _metadata()
    meta["kernels"]["add"]["target"] = "ms"
    regs = dict(regressors, add=LinearModel(np.array([5.0]), 0.0))
    write_predictor(pred, meta, regs)
    assert (pred / "README.md").read_text() == "notes"
    _, back = read_predictor(pred)
    assert back["add"].predict(np.ones((1, 1)))[0] == 5.0


# -- zip archives --------------------------------------------------------------------------------------------------

def test_zip_archives_read_like_the_directory(pred, tmp_path, regressors):
    flat = shutil.make_archive(str(tmp_path / "flat"), "zip", root_dir=pred)
    nested = shutil.make_archive(str(tmp_path / "nested"), "zip", root_dir=pred.parent, base_dir=pred.name)
    written = write_predictor(tmp_path / "written.zip", _metadata(), regressors)
    x = _x("conv-bn-relu")
    ref = regressors["conv-bn-relu"].predict(x)
    for archive in (flat, nested, written):
        meta, regs = read_predictor(archive)
        np.testing.assert_array_equal(regs["conv-bn-relu"].predict(x), ref)
        assert predictor_checksum(archive) == predictor_checksum(pred)


def test_zip_errors(pred, tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(pred / "predictor.json", "predictor.json")
    with pytest.raises(PredictorFileError, match=r"bad.zip/regressors.npz: listed .* but missing"):
        read_predictor(archive)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("other.txt", "x")
    with pytest.raises(PredictorFileError, match="predictor.json: missing"):
        read_predictor(empty)


# -- checksums -----------------------------------------------------------------------------------------------------

def test_sha256_file(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"hwnas" * 1000)
    assert sha256_file(f) == hashlib.sha256(b"hwnas" * 1000).hexdigest()


def test_predictor_checksum_tracks_what_predicts(pred, tmp_path, regressors):
    base = predictor_checksum(pred)
    assert len(base) == 64 and base == predictor_checksum(read_predictor(pred)[0])
    cosmetic = _metadata()
    cosmetic.update(name="renamed", created="2030-01-01", accuracy={}, version="9")
    assert predictor_checksum(write_predictor(tmp_path / "c", cosmetic, regressors)) == base
    for change in (lambda m: m.update(fusion_rules=[]), lambda m: m.update(model_overhead_ms=1.0),
                   lambda m: m["kernels"]["add"].update(target="log_ms")):
        meta = _metadata()
        change(meta)
        assert predictor_checksum(write_predictor(tmp_path / "d", meta, regressors)) != base
    other = dict(regressors, add=LinearModel(np.array([3e-3]), 0.01))
    assert predictor_checksum(write_predictor(tmp_path / "e", _metadata(), other)) != base


# -- errors on read ------------------------------------------------------------------------------------------------

def test_missing_path_and_not_a_predictor(tmp_path):
    with pytest.raises(PredictorFileError, match="no such predictor"):
        read_predictor(tmp_path / "nope")
    f = tmp_path / "file.txt"
    f.write_text("hello")
    with pytest.raises(PredictorFileError, match="not a predictor directory or .zip"):
        read_predictor(f)
    with pytest.raises(PredictorFileError, match=r"predictor.json: missing"):
        read_predictor(tmp_path)


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"schema_version": NaN}', "not valid JSON"),
    ("[1, 2]", "top level must be a JSON object"),
])
def test_corrupt_json(pred, text, match):
    (pred / "predictor.json").write_text(text)
    with pytest.raises(PredictorFileError, match=f"predictor.json: {match}"):
        read_predictor(pred)


@pytest.mark.parametrize("change, match", [
    (lambda m: m.pop("schema_version"), "'schema_version' is missing"),
    (lambda m: m.update(schema_version="1"), "positive integer"),
    (lambda m: m.update(schema_version=4), r"written by a newer hwnas \(schema 4 > 3\); upgrade hwnas"),
    (lambda m: m.pop("name"), r"required keys missing: \['name'\]"),
    (lambda m: m.pop("backend"), r"required keys missing: \['backend'\]"),
    (lambda m: m.pop("kernels"), r"required keys missing: \['kernels'\]"),
    (lambda m: m.pop("files"), r"required keys missing: \['files'\]"),
    (lambda m: m.pop("units"), r"required keys missing: \['units'\]"),
    (lambda m: m.update(units="s"), "'units' must be 'ms'"),
    (lambda m: m["files"].update({"../../etc/passwd": "0" * 64}), "not a plain data file name"),
    (lambda m: m["files"].update({"regressors.npz": "abc"}), "sha256 hex digest"),
    (lambda m: m["kernels"]["add"].update(target="s"), "kernel 'add': 'target' must be one of"),
    (lambda m: m["kernels"]["add"].update(features=[]), "kernel 'add': 'features' must be a non-empty list"),
    (lambda m: m["kernels"]["add"]["regressor"].update(kind="xgboost"), "unknown regressor kind 'xgboost'"),
    (lambda m: m["kernels"]["add"].pop("regressor"), "kernel 'add': 'regressor' must be an object"),
])
def test_bad_metadata(pred, change, match):
    _edit_json(pred, change)
    with pytest.raises(PredictorFileError, match=match) as err:
        read_predictor(pred)
    assert "predictor.json" in str(err.value)


def test_tampered_npz_is_a_checksum_error(pred):
    data = bytearray((pred / "regressors.npz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (pred / "regressors.npz").write_bytes(bytes(data))
    with pytest.raises(PredictorFileError, match=r"regressors.npz: checksum mismatch: file tampered or corrupt"):
        read_predictor(pred)


def test_missing_npz(pred):
    (pred / "regressors.npz").unlink()
    with pytest.raises(PredictorFileError, match="regressors.npz: listed in predictor.json 'files' but missing"):
        read_predictor(pred)


def test_unreadable_npz(pred):
    _set_npz(pred, b"not a zip at all")
    with pytest.raises(PredictorFileError, match="regressors.npz: unreadable npz"):
        read_predictor(pred)


def test_npz_with_a_garbage_member(pred):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("add.coef.npy", b"\x93NUMPY garbage")
    _set_npz(pred, buf.getvalue())
    with pytest.raises(PredictorFileError, match="regressors.npz: unreadable npz: ValueError"):
        read_predictor(pred)


def test_pickled_object_array_is_refused(pred):
    _edit_arrays(pred, lambda a: a.update({"add.coef": np.array([{"evil": 1}], dtype=object)}))
    with pytest.raises(PredictorFileError, match="regressors.npz: unreadable npz.*allow_pickle"):
        read_predictor(pred)


def test_missing_array(pred):
    _edit_arrays(pred, lambda a: a.pop("conv-bn-relu.threshold"))
    with pytest.raises(PredictorFileError,
                       match=r"regressors.npz: kernel 'conv-bn-relu': .*'conv-bn-relu.threshold' is missing"):
        read_predictor(pred)


def test_bad_child_index(pred):
    def cycle(arrays):
        left = arrays["conv-bn-relu.left"].copy()
        left[0] = 0
        arrays["conv-bn-relu.left"] = left

    _edit_arrays(pred, cycle)
    with pytest.raises(PredictorFileError, match=r"kernel 'conv-bn-relu'.*node 0: left child 0 is out of range"):
        read_predictor(pred)


def test_feature_count_mismatch(pred):
    _edit_json(pred, lambda m: m["kernels"]["add"]["features"].append("in_elems"))
    with pytest.raises(PredictorFileError, match="kernel 'add': regressor takes 1 features but predictor.json lists 2"):
        read_predictor(pred)


# -- errors on write -----------------------------------------------------------------------------------------------

def test_write_errors(tmp_path, regressors):
    with pytest.raises(ValueError, match=r"kernel types differ: metadata only \[\], regressors only \['extra'\]"):
        write_predictor(tmp_path / "p", _metadata(), dict(regressors, extra=regressors["add"]))
    meta = _metadata()
    meta["kernels"]["add"]["features"] = ["a", "b"]
    with pytest.raises(ValueError, match="kernel 'add': regressor takes 1 features, metadata lists 2"):
        write_predictor(tmp_path / "p", meta, regressors)
    with pytest.raises(ValueError, match="not JSON-safe"):
        write_predictor(tmp_path / "p", dict(_metadata(), created=object()), regressors)
    with pytest.raises(TypeError, match="not a known regressor kind"):
        write_predictor(tmp_path / "p", _metadata(), dict(regressors, add=object()))
    meta = _metadata()
    meta["units"] = "s"
    with pytest.raises(ValueError, match="'units' must be 'ms'"):
        write_predictor(tmp_path / "p", meta, regressors)
    assert not (tmp_path / "p" / "predictor.json").exists()
