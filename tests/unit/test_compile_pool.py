"""Kernels compiled in worker processes (``BuildConfig.compile_workers``) compile to the same graph and compute the
same outputs as the serial compile; the build really uses the workers; on the CPU no worker runs while the main
process holds a kernel to time. No timing is asserted."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
import torch.nn as nn
import torchvision

from hwnas.builder._backends import TorchScriptCPU, _TS_PLUMBING
from hwnas.builder._build import BuildConfig, measure_kernels, timed_modules
from hwnas.builder._compile_pool import CompilePool, foreign_device, resolve_workers, usable_cores
from hwnas.builder._kernel_modules import kernel_module, kernel_spec
from hwnas.builder._protocol import MeasureProtocol
from hwnas.builder._sampler import spec_key
from hwnas.builder._store import read_records
from hwnas.graph import capture
from hwnas.kernels import FusionRules, detect_kernels

RULES = FusionRules([["conv", "bn", "relu"], ["conv", "bn"], ["conv", "bn", "hswish"], ["add", "relu"]])
TINY = MeasureProtocol(warmup=1, runs_per_block=2, blocks=1)


def _specs(n: int = 14) -> list[dict]:
    """Distinct kernels of two small networks (convolutions, depthwise, SE, residual add, channel shuffle, fc)."""
    return [json.loads(s) for s in _spec_texts()[:n]]


@functools.lru_cache(maxsize=1)
def _spec_texts() -> tuple[str, ...]:
    specs: dict[str, str] = {}
    for name in ("mobilenet_v3_small", "shufflenet_v2_x0_5"):
        model = torchvision.models.get_model(name, weights=None).eval()
        for k in detect_kernels(capture(model, "torch", (1, 3, 32, 32)), RULES):
            specs.setdefault(k.type, json.dumps(kernel_spec(k)))   # one per type: much variety, few compiles
    return tuple(specs.values())


def _ops(module) -> list[str]:
    return [n.kind() for n in module.graph.nodes() if n.kind() not in _TS_PLUMBING]


def test_resolve_workers():
    assert resolve_workers(0) == 0 and resolve_workers(3) == 3
    assert resolve_workers(-1) == max(1, usable_cores() - 1)
    with pytest.raises(ValueError, match="compile_workers"):
        resolve_workers(-2)


def test_foreign_device_constants_are_found():
    class Factory(nn.Module):
        def forward(self, x):
            return x + torch.ones(x.shape, device=x.device)

    traced = torch.jit.freeze(torch.jit.trace(Factory().eval(), torch.zeros(2, 3)))
    assert foreign_device(traced, "cuda") and not foreign_device(traced, "cpu")
    plain = torch.jit.freeze(torch.jit.trace(nn.Sequential(nn.Linear(3, 2)).eval(), torch.zeros(2, 3)))
    assert not foreign_device(plain, "cuda")


@pytest.mark.slow
def test_worker_compiles_match_the_serial_compile_graph_and_outputs():
    be = TorchScriptCPU()
    jobs = []
    for spec in _specs():
        m = kernel_module(spec)
        jobs.append((spec["type"], timed_modules(m, m.input_shape, in_context=True), m.input_shape))
    assert len(jobs) >= 10 and any(len(shape) != 4 for _, _, shape in jobs)   # 4-d (prefixed) and the others
    seen = 0
    with CompilePool(2, device="cpu") as pool:
        for ktype, timed in pool.stream(jobs):
            shape = next(s for t, _, s in jobs if t == ktype)
            for module, compiled in timed:
                assert compiled is not None, ktype   # the worker's compile was used, not the fallback
                serial, x = be._compile(module, shape, 1)
                parallel, _ = be._compile(compiled, shape, 1)   # optimize_for_inference here, as measure does
                assert _ops(parallel) == _ops(serial), ktype
                with torch.inference_mode():
                    a, b = serial(x), parallel(x)
                assert torch.equal(a, b), (ktype, (a - b).abs().max().item())
                seen += 1
    assert pool.compiled == seen == sum(len(t) for _, t, _ in jobs) and pool.fallbacks == 0


@pytest.mark.slow
def test_on_the_cpu_no_worker_runs_while_a_kernel_is_held_for_timing():
    jobs = []
    for spec in _specs(8):
        m = kernel_module(spec)
        jobs.append((spec_key(spec), timed_modules(m, m.input_shape), m.input_shape))
    with CompilePool(2, device="cpu", prefetch=3) as pool:
        assert not pool.overlap
        got = []
        for key, timed in pool.stream(jobs):
            assert not pool._pool._pending_work_items   # every submitted compile finished before timing starts
            got.append(key)
    assert got == [k for k, _, _ in jobs]   # in order, none lost


class Untraceable(nn.Module):
    """A dict output: the trace refuses it (strict), in the worker as in the serial compile."""

    def forward(self, x):
        return {"y": x.relu()}


@pytest.mark.slow
def test_a_module_the_worker_cannot_compile_or_receive_falls_back_to_the_serial_compile():
    class Local(nn.Module):   # not a kind of module a build times: no recipe, never sent to a worker
        def forward(self, x):
            return x.relu()

    with CompilePool(1) as pool:
        out = list(pool.stream([("bad", [Untraceable()], (1, 4)), ("local", [Local()], (1, 4))]))
    assert [tag for tag, _ in out] == ["bad", "local"]
    assert all(compiled is None for _, timed in out for _, compiled in timed)
    assert pool.fallbacks == 2 and pool.compiled == 0


@pytest.mark.slow
def test_build_with_compile_workers_measures_every_kernel_from_the_workers(tmp_path):
    specs = _specs(8)
    cfg = BuildConfig(out=tmp_path / "p", fusion_rules=[], protocol=TINY, compile_workers=2)
    (tmp_path / "p" / "raw").mkdir(parents=True)
    assert measure_kernels(cfg, specs, progress=False) == len(specs)
    recs = [r for r in read_records(tmp_path / "p" / "raw" / "kernels.jsonl") if r.get("kind") == "kernel"]
    assert sorted(r["key"] for r in recs) == sorted(spec_key(s) for s in specs)
    assert all(r["compiled_in_worker"] == 2 and r["method"] == "in_context" for r in recs)
    assert all(math.isfinite(r["ms"]) for r in recs)
    serial = BuildConfig(out=tmp_path / "s", fusion_rules=[], protocol=TINY)
    (tmp_path / "s" / "raw").mkdir(parents=True)
    assert measure_kernels(serial, specs, progress=False) == len(specs)
    srecs = [r for r in read_records(tmp_path / "s" / "raw" / "kernels.jsonl") if r.get("kind") == "kernel"]
    assert all("compiled_in_worker" not in r for r in srecs)   # the serial build's records are as before
    assert [(r["key"], r["method"], sorted(r["parts"])) for r in srecs] == \
        [(r["key"], r["method"], sorted(r["parts"])) for r in recs]


def test_compile_workers_refuses_a_backend_that_is_not_torchscript(tmp_path):
    pytest.importorskip("onnxruntime")
    cfg = BuildConfig(backend="onnxruntime-cpu", out=tmp_path, fusion_rules=[], compile_workers=1)
    (tmp_path / "raw").mkdir(parents=True)
    spec = kernel_spec(detect_kernels(capture(nn.Sequential(nn.Conv2d(3, 4, 3)), "torch", (1, 3, 8, 8)), RULES)[0])
    with pytest.raises(ValueError, match="TorchScript backends"):
        measure_kernels(cfg, [spec], progress=False)
