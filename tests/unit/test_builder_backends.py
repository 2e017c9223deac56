"""Backends: compile, measure, restore state, fail clearly. Timings are never asserted beyond positive/finite."""

import math
import warnings

import pytest
import torch
from torch import nn

from hwnas.builder import MeasureProtocol, list_backends, measure, measure_latency
from hwnas.builder._backends import BACKENDS, Measurement, get_backend, time_callable, torch_threads
from hwnas.errors import CaptureError, InputShapeError

PROTO = MeasureProtocol(warmup=1, runs_per_block=3, blocks=2)
SHAPE = (1, 3, 16, 16)


def _tiny():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


class _Untraceable(nn.Module):
    def forward(self, x):
        return x.tolist()  # not a tensor: neither tracing nor ONNX export can capture it


def test_registry():
    assert {"torchscript-cpu", "onnxruntime-cpu"} <= set(list_backends())
    assert list_backends() == sorted(BACKENDS)
    # both CPU backends run here (torch and onnxruntime are install requirements), and available_only agrees
    available = list_backends(available_only=True)
    assert {"torchscript-cpu", "onnxruntime-cpu"} <= set(available)
    assert available == [n for n in list_backends() if get_backend(n).available()]
    with pytest.raises(ValueError, match="unknown backend"):
        get_backend("tpu-magic")
    be = get_backend("torchscript-cpu")
    assert get_backend(be) is be  # instances pass through (extension without editing the registry)
    with pytest.raises(TypeError):
        get_backend(42)


@pytest.mark.parametrize("backend", ["torchscript-cpu", "onnxruntime-cpu"])
def test_measure_latency_positive(backend):
    ms = measure_latency(_tiny(), backend, SHAPE, PROTO)
    assert isinstance(ms, float) and math.isfinite(ms) and ms > 0


@pytest.mark.parametrize("backend", ["torchscript-cpu", "onnxruntime-cpu"])
def test_measurement_has_requested_runs(backend):
    m = measure(_tiny(), backend, SHAPE, PROTO)
    assert isinstance(m, Measurement) and m.backend == backend and m.input_shape == SHAPE
    assert len(m.runs_ms) == PROTO.blocks and all(len(b) == PROTO.runs_per_block for b in m.runs_ms)
    assert all(t > 0 and math.isfinite(t) for b in m.runs_ms for t in b)
    assert m.ms == PROTO.aggregate(m.runs_ms)
    assert len(m.block_ms) == PROTO.blocks and len(m.warmup_ms) == PROTO.warmup
    d = m.to_dict()
    assert d["protocol"]["id"] == PROTO.id and len(d["runs_ms"]) == PROTO.blocks and d["stats"]["n"] == 6
    assert "runs_ms" not in m.to_dict(raw=False)


def test_model_training_flag_restored():
    model = _tiny().train()
    measure_latency(model, "torchscript-cpu", SHAPE, PROTO)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    measure_latency(model, "onnxruntime-cpu", SHAPE, PROTO)
    assert not model.training


def test_thread_count_restored():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        measure_latency(_tiny(), "torchscript-cpu", SHAPE, MeasureProtocol(warmup=0, runs_per_block=1, blocks=1))
        assert torch.get_num_threads() == 2
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError):
            with get_backend("torchscript-cpu").runtime(1):
                assert torch.get_num_threads() == 1 and torch.is_inference_mode_enabled()
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 2 and not torch.is_inference_mode_enabled()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("backend", ["torchscript-cpu", "onnxruntime-cpu"])
def test_untraceable_model_raises_capture_error(backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer warns about .tolist() before failing
        with pytest.raises(CaptureError, match=backend) as info:
            measure_latency(_Untraceable(), backend, SHAPE, PROTO)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("backend", ["torchscript-cpu", "onnxruntime-cpu"])
def test_wrong_input_channels_and_dtype_raise_capture_error(backend):
    with pytest.raises(CaptureError, match=backend):
        measure_latency(_tiny(), backend, (1, 5, 16, 16), PROTO)
    with pytest.raises(CaptureError, match="fp32"):
        measure_latency(_tiny().double(), backend, SHAPE, PROTO)


@pytest.mark.parametrize("shape", [(3,), (1, 0, 4, 4), "abc", (1, -3)])
def test_bad_input_shape(shape):
    with pytest.raises(InputShapeError):
        measure_latency(_tiny(), "torchscript-cpu", shape, PROTO)


def test_scriptmodule_and_files(tmp_path):
    model = _tiny().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model)
        path = tmp_path / "m.pt"
        torch.jit.save(torch.jit.trace(model, torch.randn(SHAPE)), str(path))
    assert measure_latency(scripted, "torchscript-cpu", SHAPE, PROTO) > 0
    assert measure_latency(str(path), "torchscript-cpu", SHAPE, PROTO) > 0
    onnx_path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(SHAPE),), str(onnx_path), dynamo=False)
    assert measure_latency(str(onnx_path), "onnxruntime-cpu", SHAPE, PROTO) > 0


def test_time_callable_counts_calls():
    calls = []
    warm, runs = time_callable(lambda: calls.append(1), MeasureProtocol(warmup=2, runs_per_block=4, blocks=3))
    assert len(calls) == 2 + 12 and [len(b) for b in runs] == [4, 4, 4] and len(warm) == 2
    assert all(t >= 0 for b in runs for t in b)


def test_prepare_returns_callable_output_matches_eager():
    model = _tiny().eval()
    be = get_backend("torchscript-cpu")
    fn = be.prepare(model, SHAPE)
    with be.runtime(1):
        y = fn()
    from hwnas.builder._backends import _example_input

    with torch.no_grad():
        assert torch.allclose(y, model(_example_input(SHAPE)), atol=1e-5)
    ort_fn = get_backend("onnxruntime-cpu").prepare(model, SHAPE)
    (y_ort,) = ort_fn()
    assert torch.allclose(torch.from_numpy(y_ort), y, atol=1e-4)


def test_reference_ms_quick():
    from hwnas.builder import reference_ms

    r = reference_ms("torchscript-cpu", MeasureProtocol(warmup=1, runs_per_block=2, blocks=1))
    assert r["version"] and r["backend"] == "torchscript-cpu" and r["total_ms"] > 0
    assert all(v > 0 and math.isfinite(v) for v in r["items"].values())


_SCRIPT_RELEASE_SCRIPT = '''
import torch
from torch import nn
from hwnas.builder._backends import get_backend
class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))) + x
net = lambda: nn.Sequential(Block(4), Block(4)).eval()
torch.jit.script(net())
get_backend("torchscript-cpu").release()
m, x = net(), torch.randn(1, 4, 8, 8)
with torch.no_grad():
    torch.testing.assert_close(torch.jit.script(m)(x), m(x))
print("ok")
'''


def test_script_after_release_does_not_crash(tmp_path):
    """release() between builder measurements, then scripting a module type scripted before (an export after a
    build in one process): TorchScript's module-type store must not point at the dropped classes (it segfaulted).
    Run in a child process, since the failure is a crash (from a file: TorchScript reads the classes' source)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "script_after_release.py"
    script.write_text(_SCRIPT_RELEASE_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr[-2000:])
