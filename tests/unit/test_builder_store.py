"""Measurement store: append, resume, torn tail, gzip, shards, merge."""

import gzip
import json
import warnings

import pytest

from hwnas.builder._backends import Measurement
from hwnas.device import fingerprint
from hwnas.builder._protocol import QUICK_PROTOCOL, MeasureProtocol
from hwnas.builder._store import (StoreError, item_key, merge, open_store, parse_shard, read_records, shard,
                                  shard_index)


@pytest.fixture(scope="module")
def fp():
    return fingerprint()


def _other(fp, **kw):
    d = dict(fp, **kw)
    d.pop("fingerprint_id", None)
    return d


def _fake_measurement(ms=1.0):
    runs = ((ms, ms * 1.1, ms * 1.2), (ms * 1.05, ms, ms * 1.3))
    return Measurement(ms=QUICK_PROTOCOL.aggregate(runs), runs_ms=runs, backend="torchscript-cpu",
                       input_shape=(1, 3, 8, 8), protocol=QUICK_PROTOCOL)


def _write(path, fp, keys, protocol=QUICK_PROTOCOL):
    with open_store(path, fingerprint=fp) as st:
        for i, k in enumerate(keys):
            st.append(k, ms=1.0 + i, protocol=protocol)


def test_item_key_canonical():
    assert item_key("conv", {"b": 1, "a": [1, 2]}) == item_key("conv", {"a": [1, 2], "b": 1})
    assert item_key("model", {"name": "r18", "input_shape": (1, 3, 224, 224)}) == \
        'model:{"input_shape":[1,3,224,224],"name":"r18"}'
    assert item_key("reference") == "reference"


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_append_and_resume(tmp_path, fp, suffix):
    path = tmp_path / f"sub/store{suffix}"
    keys = [item_key("conv", {"cin": c}) for c in (8, 16, 32)]
    with open_store(path, fingerprint=fp) as st:
        st.append(keys[0], _fake_measurement(1.0))
        st.append(keys[1], _fake_measurement(2.0), raw=False, features=[1, 2])
        st.append(keys[2], ms=3.0, protocol=QUICK_PROTOCOL)
        assert len(st) == 3
    st = open_store(path, fingerprint=fp)
    assert st.keys() == set(keys) and keys[0] in st
    assert st.pending(keys + ["new"]) == ["new"]
    r0, r1 = st.get(keys[0]), st.get(keys[1])
    assert r0["ms"] == pytest.approx(_fake_measurement(1.0).ms) and len(r0["runs_ms"]) == 2
    assert "runs_ms" not in r1 and r1["features"] == [1, 2] and r1["stats"]["n"] == 6
    assert r0["protocol_id"] == QUICK_PROTOCOL.id and r0["fingerprint_id"] == fp["fingerprint_id"]
    assert st.protocols[QUICK_PROTOCOL.id]["runs_per_block"] == QUICK_PROTOCOL.runs_per_block
    st.append("k4", ms=4.0, protocol=QUICK_PROTOCOL)
    st.close()
    types = [r["type"] for r in read_records(path)]
    assert types.count("device") == 1 and types.count("protocol") == 1 and types.count("measurement") == 4
    with pytest.raises(StoreError):
        st.append("k5", ms=1.0)  # closed


def test_torn_last_line_is_ignored_with_warning(tmp_path, fp):
    path = tmp_path / "s.jsonl"
    _write(path, fp, ["a", "b", "c"])
    with open(path, "ab") as f:
        f.write(b'{"type":"measurement","key":"d","ms":1.')  # killed mid-write
    with pytest.warns(RuntimeWarning, match="torn"):
        st = open_store(path, fingerprint=fp)
    assert st.keys() == {"a", "b", "c"}
    st.append("d", ms=2.0, protocol=QUICK_PROTOCOL)  # the torn tail is cut before appending
    st.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_store(path, readonly=True).keys() == {"a", "b", "c", "d"}
    for line in path.read_bytes().splitlines():
        json.loads(line)


def test_torn_gzip_is_repaired(tmp_path, fp):
    path = tmp_path / "s.jsonl.gz"
    _write(path, fp, ["a", "b"])
    data = path.read_bytes()
    path.write_bytes(data[:-6])  # gzip trailer lost
    with pytest.warns(RuntimeWarning):
        st = open_store(path, fingerprint=fp)
    st.append("c", ms=1.0, protocol=QUICK_PROTOCOL)
    st.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_store(path, readonly=True).keys() == {"a", "b", "c"}
    assert gzip.decompress(path.read_bytes())


def test_corrupt_middle_line_raises(tmp_path, fp):
    path = tmp_path / "s.jsonl"
    _write(path, fp, ["a"])
    with open(path, "ab") as f:
        f.write(b"garbage\n" + json.dumps({"type": "measurement", "key": "b", "ms": 1.0}).encode() + b"\n")
    with pytest.raises(StoreError, match="corrupt at line"):
        open_store(path, readonly=True)
    with pytest.raises(StoreError, match="corrupt at line"):
        open_store(path, fingerprint=fp)


def test_readonly(tmp_path, fp):
    with pytest.raises(StoreError):
        open_store(tmp_path / "missing.jsonl", readonly=True)
    _write(tmp_path / "s.jsonl", fp, ["a"])
    st = open_store(tmp_path / "s.jsonl", readonly=True)
    with pytest.raises(StoreError):
        st.append("b", ms=1.0)


def test_store_refuses_other_machine(tmp_path, fp):
    path = tmp_path / "s.jsonl"
    _write(path, fp, ["a"])
    other = _other(fp, cpu_model="Some Other CPU")
    with pytest.raises(StoreError, match="cpu_model"):
        open_store(path, fingerprint=other)
    with open_store(path, fingerprint=other, allow_mixed=True) as st:
        st.append("b", ms=1.0)
    assert len(open_store(path, readonly=True).devices) == 2


def test_store_refuses_a_cpu_told_apart_only_by_its_signature(tmp_path, fp):
    # two "AMD EPYC" VMs with the same AVX2 flags, a Zen 1 and a Zen 3 core: 2x apart in speed
    zen1 = _other(fp, cpu_model="AMD EPYC", kernel_flags=["avx2"], cpu_signature="family 23 model 1")
    zen3 = _other(zen1, cpu_signature="family 25 model 1")
    path = tmp_path / "s.jsonl"
    _write(path, zen1, ["a"])
    with pytest.raises(StoreError, match="cpu_signature"):
        open_store(path, fingerprint=zen3)


def test_append_rejects_nan(tmp_path, fp):
    with open_store(tmp_path / "s.jsonl", fingerprint=fp) as st:
        with pytest.raises(ValueError):
            st.append("a", ms=float("nan"))
        with pytest.raises(ValueError):
            st.append("a")


def test_shard_deterministic_and_covering():
    items = [item_key("conv", {"cin": c, "hw": h}) for c in range(1, 40) for h in (7, 14, 28)]
    parts = [shard(items, f"{i}/4") for i in range(4)]
    assert parts == [shard(items, f"{i}/4") for i in range(4)]
    assert sorted(sum(parts, [])) == sorted(items)
    assert all(parts)  # 117 items over 4 shards: none empty
    for p in parts:
        assert p == [it for it in items if it in set(p)]  # order kept
    assert shard(items, "0/1") == items
    assert shard_index("conv:{}", 7) == shard_index("conv:{}", 7)
    dicts = [{"cin": c} for c in range(20)]
    dict_parts = [shard(dicts, f"{i}/3") for i in range(3)]
    assert all(dict_parts), [len(p) for p in dict_parts]   # 20 dicts over 3 shards: every shard non-empty
    assert sorted(d["cin"] for p in dict_parts for d in p) == list(range(20))   # a partition: each dict once


@pytest.mark.parametrize("bad", ["4/4", "-1/4", "1/0", "a/b", "1", "1/2/3"])
def test_shard_spec_errors(bad):
    with pytest.raises(ValueError):
        parse_shard(bad)


def test_merge_dedupes_and_compresses(tmp_path, fp):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write(a, fp, ["k1", "k2", "k3"])
    _write(b, fp, ["k3", "k4"])
    out = tmp_path / "merged.jsonl.gz"
    info = merge([a, b], out)
    assert info["measurements"] == 4 and info["duplicates"] == 1
    assert info["sources"] == {str(a): 3, str(b): 2}
    st = open_store(out, readonly=True)
    assert st.keys() == {"k1", "k2", "k3", "k4"}
    assert st.get("k3")["ms"] == 3.0  # first wins (from a)
    assert len(st.devices) == 1 and len(st.protocols) == 1
    with pytest.raises(StoreError):
        merge([a, out], out)


def test_merge_refuses_different_fingerprints_and_protocols(tmp_path, fp):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    _write(a, fp, ["k1"])
    _write(b, _other(fp, kernel_flags=["avx2", "fma"]), ["k2"])
    with pytest.raises(StoreError, match="kernel_flags"):
        merge([a, b], tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()
    assert merge([a, b], tmp_path / "m.jsonl", force=True)["measurements"] == 2
    _write(c, fp, ["k3"], protocol=MeasureProtocol(runs_per_block=7))
    with pytest.raises(StoreError, match="protocols"):
        merge([a, c], tmp_path / "m2.jsonl")
    runtime = _other(fp, runtimes=dict(fp["runtimes"], onnxruntime="0.1"))
    _write(tmp_path / "d.jsonl", runtime, ["k4"])
    with pytest.raises(StoreError, match="runtimes"):
        merge([a, tmp_path / "d.jsonl"], tmp_path / "m3.jsonl")
