"""hwnas.nas._compat: each NNI 3.0 fix, shown failing without it (the unpatched NNI/torch call) and working with it."""

from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from nni.nas.space import SimplifiedModelSpace
from nni.nas.strategy import Random
from nni.nas.utils import serializer as nni_serializer

import search_spaces as ss
from hwnas.errors import ArchitectureError
from hwnas.nas._compat import LOOPBACK, allowlisted_checkpoints, loopback_manager, plain_arch


@pytest.fixture(scope="module")
def nni_model():
    """A frozen NNI model of the SPOS space, as a strategy hands it to filters and trials."""
    space = ss.create_space("spos", width_mult=0.25, input_size=32, num_classes=10)
    return SimplifiedModelSpace.from_model(space).random(random_state=np.random.RandomState(0))


# ----- plain_arch ---------------------------------------------------------------------------------------------------
def test_nni_sample_keys_break_weights_only_loading_and_plain_arch_fixes_it(nni_model, tmp_path):
    sample = nni_model.sample
    assert any(type(k) is not str for k in sample)          # NNI's label objects
    torch.save({"arch": sample}, tmp_path / "raw.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "raw.pt", weights_only=True)

    arch = plain_arch(nni_model)                              # the model itself, or its .sample
    assert arch == plain_arch(sample) == {str(k): v for k, v in sample.items()}
    assert all(type(k) is str and type(v) is str for k, v in arch.items())
    torch.save({"arch": arch}, tmp_path / "plain.pt")
    assert torch.load(tmp_path / "plain.pt", weights_only=True)["arch"] == arch
    ss.validate_arch("spos", arch)


def test_plain_arch_is_idempotent_and_keeps_order():
    arch = {"b": "x", "a": "y"}
    assert plain_arch(arch) == arch and list(plain_arch(plain_arch(arch))) == ["b", "a"]


@pytest.mark.parametrize("bad", [3, "s1_b0", ["s1_b0"], {"s1_b0": 2}, {"s1_b0": None}])
def test_plain_arch_rejects_what_is_not_label_to_choice_name(bad):
    with pytest.raises(ArchitectureError):
        plain_arch(bad)


# ----- allowlisted_checkpoints -----------------------------------------------------------------------------------------
def _strategy_state() -> dict:
    strategy = Random(seed=3)
    strategy._random_state.uniform(size=5)   # some progress, so the restored state is not the seed's
    return {"version": 1, "strategy": strategy.state_dict()}


def test_resume_checkpoint_fails_on_torch_default_and_loads_with_the_fix(tmp_path):
    # What NasExperiment.save_checkpoint / load_checkpoint do with the strategy state (numpy random state inside).
    state = _strategy_state()
    path = tmp_path / "state.ckpt"
    nni_serializer.get_default_serializer().save(state, path)
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        nni_serializer.get_default_serializer().load(path)

    before = nni_serializer._default_serializer
    with allowlisted_checkpoints():
        with allowlisted_checkpoints():   # nested use is harmless
            loaded = nni_serializer.get_default_serializer().load(path)
        again = nni_serializer.get_default_serializer().load(path)
    assert nni_serializer._default_serializer is before      # restored on exit
    original = Random(seed=3)
    original._random_state.uniform(size=5)
    expected = original._random_state.uniform(size=3)
    for state in (loaded, again):
        restored = Random(seed=0)
        restored.load_state_dict(state["strategy"])
        assert np.array_equal(restored._random_state.uniform(size=3), expected)


# ----- loopback_manager --------------------------------------------------------------------------------------------
def _node() -> Path:
    import nni_node

    return Path(nni_node.__path__[0]) / "node"


_SERVE = ("const http = require('http'); const s = http.createServer(); "
          "s.listen(0, HOST, () => { console.log(s.address().address); s.close(); });")


def _bound_address(host: str | None = None) -> str:
    """Where the manager's Node.js runtime binds a server started like NNI's REST server (``app.listen(port)``)."""
    script = _SERVE.replace("HOST, ", "" if host is None else f"'{host}', ")
    done = subprocess.run([str(_node()), "-e", script], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_nni_manager_runtime_listens_on_every_interface_without_the_fix():
    assert _bound_address() in ("::", "0.0.0.0")


def test_loopback_manager_binds_servers_without_a_host_to_loopback_and_restores_the_environment():
    saved = os.environ.get("NODE_OPTIONS")
    with loopback_manager() as host:
        assert host == LOOPBACK == "127.0.0.1"
        assert _bound_address() == "127.0.0.1"
        assert _bound_address("0.0.0.0") == "127.0.0.1"       # a wildcard host too
        assert _bound_address("127.0.0.2") == "127.0.0.2"     # an explicit address is left alone
        with loopback_manager():                               # nested: a no-op
            assert _bound_address() == "127.0.0.1"
        assert _bound_address() == "127.0.0.1"
    assert os.environ.get("NODE_OPTIONS") == saved
    assert _bound_address() in ("::", "0.0.0.0")


class _NotAllowed:
    """A class a checkpoint must never be allowed to construct."""


def test_allowlisted_checkpoints_load_evolution_state_and_still_refuse_other_classes(tmp_path):
    from nni.mutable.utils import label
    from nni.nas.strategy.evolution import Individual

    state = {"version": 1, "strategy": {"population": [Individual({label("s1_b0"): "k3e3"}, 0.5)],
                                        "random_state": np.random.RandomState(0).get_state(),
                                        "history": frozenset({"a"})}}
    path = tmp_path / "evo.ckpt"
    nni_serializer.get_default_serializer().save(state, path)
    with allowlisted_checkpoints():
        loaded = nni_serializer.get_default_serializer().load(path)
    assert loaded["strategy"]["population"][0].y == 0.5
    assert loaded["strategy"]["history"] == frozenset({"a"})

    bad = tmp_path / "bad.ckpt"
    nni_serializer.get_default_serializer().save({"x": _NotAllowed()}, bad)
    with allowlisted_checkpoints(), pytest.raises(pickle.UnpicklingError, match="weights_only"):
        nni_serializer.get_default_serializer().load(bad)


# ----- quiet_nni_import -------------------------------------------------------------------------------------------
def _stderr_of(code: str) -> str:
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    done = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=300,
                          env=env, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_nni_import_warns_without_the_fix_and_hwnas_imports_it_quietly():
    assert "is found to be not a nn.Module" in _stderr_of("import nni.nas.nn.pytorch")
    for code in ("import search_spaces", "import hwnas, nni.nas.nn.pytorch",
                 "from hwnas.cli import main; import sys; sys.argv = ['hwnas', 'export', '--help']\n"
                 "try:\n    main()\nexcept SystemExit:\n    pass\nimport search_spaces, hwnas.export._subnet"):
        assert "not a nn.Module" not in _stderr_of(code), code


def test_quiet_nni_import_silences_only_nni_s_notice():
    import warnings

    from hwnas.nas._compat import quiet_nni_import

    notice = ("<class 'torch.nn.parameter.Buffer'> is found to be not a nn.Module, which is unexpected. "
              "It means your PyTorch version might not be supported.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_nni_import()
        warnings.warn_explicit(notice, RuntimeWarning, "layers.py", 94, module="nni.nas.nn.pytorch.layers")
        warnings.warn_explicit(notice, RuntimeWarning, "mine.py", 1, module="mypackage")      # not NNI's
        warnings.warn_explicit("another NNI warning", RuntimeWarning, "layers.py", 95, module="nni.nas.nn.pytorch")
    assert [str(w.message) for w in caught] == [notice, "another NNI warning"]
