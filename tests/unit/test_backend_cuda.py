"""``torchscript-cuda`` on a machine without CUDA: registered, listed as unavailable with the reason, and measuring
raises a clear error before anything is compiled. The CUDA-event timer's bookkeeping is checked with a fake clock.

The GPU path itself (compile on the device, event timing) runs in ``experiments/gpu/run.sh``, not in CI.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from hwnas.builder import MeasureProtocol, backend_status, list_backends, measure, measure_latency
from hwnas.builder._backend_cuda import TorchScriptCUDA, cuda_unavailable_reason, time_cuda_callable
from hwnas.builder._backends import get_backend
from hwnas.errors import BackendUnavailableError, HwnasError

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


def _tiny():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())


def test_registered_and_listed():
    assert "torchscript-cuda" in list_backends()
    be = get_backend("torchscript-cuda")
    assert isinstance(be, TorchScriptCUDA) and be.name == "torchscript-cuda"
    names = [r["name"] for r in backend_status()]
    assert names == list_backends()


@needs_no_cuda
def test_unavailable_without_cuda_with_a_reason():
    be = get_backend("torchscript-cuda")
    assert not be.available()
    assert "torchscript-cuda" not in list_backends(available_only=True)
    row = next(r for r in backend_status() if r["name"] == "torchscript-cuda")
    assert row["available"] is False
    assert "CUDA is not available" in row["reason"] and row["reason"] == cuda_unavailable_reason()
    # the CPU backends are available and carry no reason
    cpu = {r["name"]: r for r in backend_status() if r["name"] != "torchscript-cuda"}
    assert cpu["torchscript-cpu"] == {"name": "torchscript-cpu", "available": True, "reason": None}


@needs_no_cuda
@pytest.mark.parametrize("call", ["measure_latency", "measure", "prepare"])
def test_measuring_without_cuda_raises_a_clear_error(call):
    model = _tiny()
    with pytest.raises(BackendUnavailableError, match="torchscript-cuda.*CUDA is not available") as info:
        if call == "measure_latency":
            measure_latency(model, "torchscript-cuda", (1, 3, 8, 8))
        elif call == "measure":
            measure(model, "torchscript-cuda", (1, 3, 8, 8), MeasureProtocol(warmup=1, runs_per_block=2, blocks=1))
        else:
            TorchScriptCUDA().prepare(model, (1, 3, 8, 8))
    assert isinstance(info.value, HwnasError)
    assert all(p.device.type == "cpu" for p in model.parameters())   # nothing moved


@needs_no_cuda
def test_cli_lists_the_backend_as_unavailable(capsys):
    from hwnas.cli import main

    assert main(["list-backends"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "unavailable: CUDA is not available" in lines["torchscript-cuda"]
    assert lines["torchscript-cpu"].split()[1] == "available"
    assert main(["list-backends", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["torchscript-cuda"]["available"] is False and rows["torchscript-cuda"]["reason"]


def test_reason_for_a_cpu_only_torch_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "build without CUDA support" in cuda_unavailable_reason()
    assert not TorchScriptCUDA().available()


class _FakeEvent:
    """Stands in for ``torch.cuda.Event``: the 'GPU clock' advances by 1 ms per call of the timed function."""

    clock = [0.0]

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.t = None

    def record(self):
        self.t = self.clock[0]

    def elapsed_time(self, end):
        return end.t - self.t


def test_event_timer_times_every_run_and_synchronises_per_block(monkeypatch):
    syncs = []
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: syncs.append(len(calls)))
    calls = []

    def fn():
        calls.append(1)
        _FakeEvent.clock[0] += 1.0 + 0.5 * (len(calls) % 2)   # alternating 1.5 and 1.0 ms runs

    warm, runs = time_cuda_callable(fn, MeasureProtocol(warmup=2, runs_per_block=3, blocks=2))
    assert len(calls) == 2 + 6
    assert warm == (1.5, 1.0)
    assert runs == ((1.5, 1.0, 1.5), (1.0, 1.5, 1.0))
    # one synchronisation before and one after each block (warm-up included), none between runs
    assert syncs == [0, 2, 2, 5, 5, 8]


def test_no_cuda_import_cost_at_import():
    # importing the module must not initialise CUDA (it is imported by get_backend on any machine)
    import importlib

    importlib.reload(sys.modules["hwnas.builder._backend_cuda"])
    assert not torch.cuda.is_initialized()
