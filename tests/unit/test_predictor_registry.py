"""Predictor registry: 'auto' by device fingerprint, explicit names and paths, user predictors, name clashes."""

import json
import shutil
import warnings

import pytest

import hwnas
from hwnas.device import explain_differences, isa_level, short_name
from hwnas.errors import PredictorFileError
from hwnas.predictor import (DeviceMismatchWarning, find_predictors, load_latency_predictor, lookup,
                             register_predictor, select, user_dir)
from hwnas.predictor import _registry


def _embedded(backend="torchscript-cpu"):
    return [e for e in find_predictors(backend) if e.source == "embedded"]


def _built(backend="torchscript-cpu"):
    """Embedded predictors of a full build (not adapted), all measured on AVX-512 machines."""
    return [e for e in _embedded(backend) if "transfer" not in e.meta]


def _avx2_fingerprint(like):
    fp = dict(like)
    fp["kernel_flags"] = ["avx", "avx2", "f16c", "fma", "sse4_1", "sse4_2"]
    fp["cpu_signature"] = "family 23 model 1"
    return fp


def _copy_as(entry, dest, name):
    """A copy of an embedded predictor under another name (the name is descriptive: the checksum stays valid)."""
    shutil.copytree(entry.path, dest)
    meta = json.loads((dest / "predictor.json").read_text())
    meta["name"] = name
    (dest / "predictor.json").write_text(json.dumps(meta))
    return dest


def test_auto_picks_the_predictor_whose_fingerprint_matches(monkeypatch):
    for entry in _embedded() + _embedded("onnxruntime-cpu"):
        monkeypatch.setattr(_registry, "fingerprint", lambda e=entry: dict(e.device_fingerprint))
        sel = select(entry.backend)
        assert sel.matches and sel.message == ""
        # two embedded predictors of one backend never describe the same machine kind
        assert sel.entry.name == entry.name


def test_auto_without_a_match_names_the_difference_and_the_command(monkeypatch):
    src = _built()[0]
    here = dict(_avx2_fingerprint(src.device_fingerprint), cpu_signature="family 99 model 9")   # no embedded one
    monkeypatch.setattr(_registry, "fingerprint", lambda: here)
    sel = select("torchscript-cpu")
    assert not sel.matches
    assert "hwnas adapt --backend torchscript-cpu" in sel.message
    assert sel.entry.name in sel.message
    # the closest: same instruction-set level and model name; the message names what still differs
    assert isa_level(sel.entry.device_fingerprint) == "avx2"
    assert sel.entry.device_fingerprint["cpu_model"] == src.device_fingerprint["cpu_model"]
    assert "'family 99 model 9' (this machine)" in sel.message
    assert "avx512 (predictor) vs avx2 (this machine)" in explain_differences(src.device_fingerprint, here)
    with pytest.warns(DeviceMismatchWarning, match="avx2"):
        pred = load_latency_predictor("auto")
    assert pred.selection_note == sel.message


def test_explicit_name_or_path_wins_over_auto(monkeypatch):
    entries = _embedded()
    monkeypatch.setattr(_registry, "fingerprint", lambda: dict(entries[0].device_fingerprint))
    other = entries[-1]
    assert load_latency_predictor(other.name).name == other.name
    assert load_latency_predictor(str(other.path)).name == other.name
    with pytest.raises(PredictorFileError, match="not 'onnxruntime-cpu'"):
        load_latency_predictor(other.name, backend="onnxruntime-cpu")


def test_auto_with_a_backend_and_old_names():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeviceMismatchWarning)
        assert load_latency_predictor("auto:onnxruntime-cpu").backend == "onnxruntime-cpu"
        assert load_latency_predictor("auto", backend="onnxruntime-cpu").backend == "onnxruntime-cpu"
    for old, new in _registry.aliases().items():
        assert lookup(old).name == new
    with pytest.raises(PredictorFileError, match="asks for backend"):
        load_latency_predictor("auto:onnxruntime-cpu", backend="torchscript-cpu")


def test_list_carries_matches_this_machine(monkeypatch):
    entry = _embedded()[0]
    monkeypatch.setattr("hwnas.predictor.fingerprint", lambda: dict(entry.device_fingerprint))
    rows = hwnas.list_latency_predictors()
    assert all(isinstance(r["matches_this_machine"], bool) for r in rows)
    matched = {r["name"] for r in rows if r["matches_this_machine"]}
    assert entry.name in matched
    others = [e.name for e in find_predictors() if e.device_fingerprint["cpu_model"] !=
              entry.device_fingerprint["cpu_model"]]
    assert others and not matched & set(others)
    assert all(r["isa"] for r in rows)


def test_register_finds_and_refuses_clashes(tmp_path):
    entry = _embedded()[0]
    mine = _copy_as(entry, tmp_path / "mine", "torchscript-cpu-my-machine")
    where = register_predictor(mine)
    assert where.parent == user_dir()
    assert lookup("torchscript-cpu-my-machine").source == "user"
    assert load_latency_predictor("torchscript-cpu-my-machine").name == "torchscript-cpu-my-machine"
    with pytest.raises(PredictorFileError, match="refusing to shadow"):
        register_predictor(mine)   # taken by the user's copy
    register_predictor(mine, replace=True)   # a rerun of the same adaptation may replace its own
    with pytest.raises(PredictorFileError, match="refusing to shadow"):
        register_predictor(_copy_as(entry, tmp_path / "clash", entry.name), replace=True)   # an embedded name
    # a clash placed by hand is an error when the name is asked for, never a silent choice
    _copy_as(entry, user_dir() / "by-hand", entry.name)
    with pytest.raises(PredictorFileError, match="two predictors are named"):
        load_latency_predictor(entry.name)


def test_a_user_predictor_of_this_machine_wins_auto(monkeypatch, tmp_path):
    entry = _embedded()[0]
    here = _avx2_fingerprint(entry.device_fingerprint)
    mine = _copy_as(entry, tmp_path / "mine", "torchscript-cpu-here")
    meta = json.loads((mine / "predictor.json").read_text())
    meta["device"] = {"description": "here", "fingerprint": here}
    (mine / "predictor.json").write_text(json.dumps(meta))
    register_predictor(mine)
    monkeypatch.setattr(_registry, "fingerprint", lambda: here)
    sel = select("torchscript-cpu")
    assert sel.matches and sel.entry.name == "torchscript-cpu-here"


def test_names_tell_cpus_apart():
    from hwnas.builder._config import default_name

    avx512 = _built()[0].device_fingerprint
    avx2 = _avx2_fingerprint(avx512)
    zen3 = dict(avx2, cpu_signature="family 25 model 1")
    names = {default_name("torchscript-cpu", fp) for fp in (avx512, avx2, zen3)}
    assert len(names) == 3
    assert default_name("torchscript-cpu", avx2) == "torchscript-cpu-amd-epyc-avx2-f23m1"
    assert isa_level(avx512) == "avx512" and isa_level(avx2) == "avx2"
    assert short_name(zen3).endswith("-avx2-f25m1")
    assert "family 23 model 1" in explain_differences(avx2, zen3)


def test_unknown_name_lists_what_is_installed():
    with pytest.raises(PredictorFileError, match="auto"):
        load_latency_predictor("no-such-predictor")
