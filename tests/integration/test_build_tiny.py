"""A tiny real build: sample kernels of a small net, measure them, fit, load the predictor, predict; resume."""

import pytest
import torch.nn as nn

from hwnas.builder._build import BuildConfig, measure_kernels
from hwnas.builder._fit import fit_predictor
from hwnas.builder._protocol import QUICK_PROTOCOL
from hwnas.builder._sampler import PriorModel, prior_specs
from hwnas.builder._store import read_records
from hwnas.kernels import FusionRules
from hwnas.predictor import load_latency_predictor

RULES = [["conv", "bn", "relu"], ["conv", "bn"]]


def _net(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


@pytest.mark.slow
def test_tiny_build_measures_fits_loads_predicts_and_resumes(tmp_path):
    cfg = BuildConfig(out=tmp_path / "b", fusion_rules=RULES, protocol=QUICK_PROTOCOL, name="tiny-build")
    (tmp_path / "b" / "raw").mkdir(parents=True)
    models = [PriorModel(f"net{w}@{r}", "tiny", lambda w=w: _net(w), (1, 3, r, r))
              for w in (8, 16, 24) for r in (16, 24, 32)]
    specs = prior_specs(models, FusionRules(RULES), progress=False)
    assert {s["type"] for s in specs} == {"conv-bn-relu", "global_avgpool", "reshape", "fc"}

    first = measure_kernels(cfg, specs[:5], progress=False)      # an "interrupted" first run
    assert first == 5
    total = measure_kernels(cfg, specs, progress=False)          # resume: only the rest
    assert total == len(specs) - 5
    assert measure_kernels(cfg, specs, progress=False) == 0      # nothing left
    recs = [r for r in read_records(tmp_path / "b" / "raw" / "kernels.jsonl") if r.get("kind") == "kernel"]
    assert len(recs) == len(specs) and len({r["key"] for r in recs}) == len(specs)

    path = fit_predictor(cfg, FusionRules(RULES), progress=False)
    pred = load_latency_predictor(path)
    assert pred.name == "tiny-build" and pred.backend == "torchscript-cpu"
    assert set(pred.metadata["kernels"]) == {"conv-bn-relu", "global_avgpool", "reshape", "fc"}
    ms = pred.predict(_net(16), "torch", (1, 3, 24, 24))
    assert ms > 0


@pytest.mark.slow
def test_an_unmeasurable_kernel_is_recorded_and_skipped_not_fatal(tmp_path, monkeypatch):
    import hwnas.builder._build as build_mod

    cfg = BuildConfig(out=tmp_path / "b", fusion_rules=RULES, protocol=QUICK_PROTOCOL, name="tiny-fail")
    (tmp_path / "b" / "raw").mkdir(parents=True)
    models = [PriorModel(f"net{w}", "tiny", lambda w=w: _net(w), (1, 3, 16, 16)) for w in (8, 16, 24, 32)]
    specs = prior_specs(models, FusionRules(RULES), progress=False)
    real = build_mod._measure_kernel
    calls = {"n": 0}

    def flaky(backend, module, c):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("backend cannot run this kernel")
        return real(backend, module, c)

    monkeypatch.setattr(build_mod, "_measure_kernel", flaky)
    assert measure_kernels(cfg, specs, progress=False) == len(specs) - 1
    recs = [r for r in read_records(tmp_path / "b" / "raw" / "kernels.jsonl") if r.get("kind") == "kernel"]
    failed = [r for r in recs if r["method"] == "failed"]
    assert len(failed) == 1 and "cannot run this kernel" in failed[0]["error"] and failed[0]["ms"] < 0
    pred = load_latency_predictor(fit_predictor(cfg, FusionRules(RULES), progress=False))
    assert pred.metadata["accuracy"]["n_kernels"] == len(specs) - 1
