"""Build a predictor for a backend: fusion rules → kernel sampling → measurement → fit → predictor files.

Every stage writes what it measured into ``<out>/raw/`` as it goes (JSONL, flushed per record), so an
interrupted build resumes where it stopped, shards measured on several machines of one kind merge, and the
predictor can be refitted and audited without re-measuring.

Layout of ``<out>``::

    raw/fusion.json           detected fusion rules with their timing evidence
    raw/kernels[.I-of-N].jsonl  one record per measured kernel (spec, ms, stats, raw runs)
    predictor/                the predictor (predictor.json + regressors.npz)

Kernel latency is stored net of the backend's per-call overhead (the time of a module that returns its input),
and the overhead is added once per model at prediction time (``model_overhead_ms`` in the metadata): timing
kernels one call each would otherwise charge that overhead once per kernel.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Sequence

import torch.nn as nn

from hwnas.builder._config import BuildConfig
from hwnas.builder._protocol import MeasureProtocol
from hwnas.files import atomic_write
from hwnas.kernels import FusionRules


class _Passthrough(nn.Module):
    def forward(self, x):
        return x.clone()


def _prefix(shape: Sequence[int]) -> nn.Module:
    c = int(shape[1])
    return nn.Conv2d(c, c, 1, bias=False).eval()


def measure_in_context(backend: Any, module: nn.Module, input_shape: Sequence[int],
                       protocol: MeasureProtocol) -> dict[str, float]:
    """Latency of a kernel as it runs inside a network, ms.

    Timed alone, a kernel pays costs a network pays once: on ``torchscript-cpu`` every isolated convolution
    converts its input to oneDNN's layout and its output back (``to_mkldnn``/``to_dense``), which made the sum
    of isolated kernels 3x the measured MobileNetV2. For 4-d inputs this times ``P → K`` and ``P`` alone, where
    ``P`` is a dense 1x1 convolution (it leaves the data as a real predecessor does), and returns the
    difference; other kernels are timed alone minus the per-call overhead. Returns ``ms`` and the raw parts.

    The prefix is a dense 1x1 convolution: a depthwise one leaves oneDNN's output in another memory format, and
    the kernel after it then pays a reorder it never pays in a network (measured on MobileNetV2's first expansion
    conv: isolated 3.84 ms, after a depthwise prefix 3.29 ms, after a dense 1x1 prefix 0.85 ms, after its real
    predecessor kernel 0.86 ms; torchscript-cpu, 1 thread).
    """
    if len(input_shape) == 4:
        pre = _prefix(input_shape)
        with_k = backend.measure(nn.Sequential(pre, module).eval(), input_shape, protocol)
        alone = backend.measure(pre, input_shape, protocol)
        return {"ms": with_k.ms - alone.ms, "with_prefix_ms": with_k.ms, "prefix_ms": alone.ms}
    m = backend.measure(module, input_shape, protocol)
    o = backend.measure(_Passthrough(), input_shape, protocol)
    return {"ms": m.ms - o.ms, "isolated_ms": m.ms, "overhead_ms": o.ms}


def build_fusion_rules(cfg: BuildConfig, progress: bool) -> FusionRules:
    """The fusion rules a build prices with: ``cfg.fusion_rules`` when given, else the rules stored in
    ``<out>/raw/fusion.json``, else detected on ``cfg.backend`` now (and stored there); only the rules that fuse
    (:func:`rule_fuses`) are kept."""
    raw = Path(cfg.out) / "raw"
    path = raw / "fusion.json"
    if cfg.fusion_rules is not None:
        return FusionRules(cfg.fusion_rules)
    if path.is_file():
        found = json.loads(path.read_text())
    else:
        from hwnas.builder._fusion import detect_fusion_rules

        found = detect_fusion_rules(cfg.backend, protocol=cfg.protocol, progress=progress)
        atomic_write(path, json.dumps(found, indent=1))   # read back on resume: never half a file
    return FusionRules([r["ops"] for r in found if rule_fuses(r)])


def rule_fuses(rule: dict[str, Any]) -> bool:
    """A chain fuses if the timing test says so (nn-Meter's rule) or the compiled graph has fewer ops than A and
    B compiled apart (noise-free evidence: on a shared VM the timing test misses cheap fusions such as conv→bn
    folding, whose saving is within the noise of the conv's time)."""
    return bool(rule.get("fused")) or bool(rule.get("graph_fused"))


def _store_path(cfg: BuildConfig) -> Path:
    suffix = "" if not cfg.shard else "." + cfg.shard.replace("/", "-of-")
    return Path(cfg.out) / "raw" / f"kernels{suffix}.jsonl"


def sample_kernels(cfg: BuildConfig, rules: FusionRules, progress: bool = True) -> list[dict[str, Any]]:
    """The kernel specs a build measures: the prior and jittered neighbours (deterministic)."""
    from hwnas.builder._sampler import jitter, prior_specs, space_prior, spec_key, torchvision_prior

    models = torchvision_prior(cfg.resolutions) + space_prior(cfg.space_archs, cfg.seed)
    specs = prior_specs(models, rules, progress)
    rng = random.Random(cfg.seed)
    keys = {spec_key(s) for s in specs}
    extra = []
    for s in specs:
        for _ in range(cfg.jitter):
            n = jitter(s, rng)
            if n is not None and spec_key(n) not in keys:
                n["families"] = ["jitter"]
                n["parent_families"] = list(s.get("families", []))
                keys.add(spec_key(n))
                extra.append(n)
    return specs + extra


def measure_kernels(cfg: BuildConfig, specs: Sequence[dict[str, Any]], progress: bool = True) -> int:
    """Measure the pending specs into the store; returns how many were measured in this call."""
    from tqdm.auto import tqdm

    from hwnas.builder._backends import get_backend, release_memory
    from hwnas.builder._kernel_modules import kernel_module
    from hwnas.builder._sampler import spec_key
    from hwnas.builder._store import open_store, round_robin, shard

    backend = get_backend(cfg.backend)
    store = open_store(_store_path(cfg))
    todo = list(specs)
    if cfg.shard:
        todo = shard(todo, cfg.shard, key=spec_key)
    todo = round_robin(store.pending(todo, key=spec_key), key=lambda s: s["type"])
    # one overhead record per input shape that occurs
    shapes = sorted({tuple(s["ops"][0]["input_shapes"][0]) for s in todo if s["ops"][0]["input_shapes"]})
    deadline = time.monotonic() + cfg.time_budget_min * 60 if cfg.time_budget_min else None
    done = failed = 0
    with store:
        for shape in shapes:
            key = f"overhead:{list(shape)}"
            if key not in store:
                store.append(key, backend.measure(_Passthrough(), shape, cfg.protocol), raw=False, kind="overhead",
                             input_shape=list(shape))
        bar = tqdm(todo, desc=f"measuring kernels on {cfg.backend}", disable=not progress)
        for spec in bar:
            if deadline is not None and time.monotonic() > deadline:
                bar.write(f"time budget of {cfg.time_budget_min} min reached; resume to measure the rest")
                break
            module = kernel_module(spec)
            fields = {"kind": "kernel", "spec": {k: spec[k] for k in ("type", "ops")},
                      "families": spec.get("families", [])}
            if spec.get("parent_families"):
                fields["parent_families"] = spec["parent_families"]
            try:
                parts = _measure_kernel(backend, module, cfg)
            except Exception as e:  # noqa: BLE001 - one unmeasurable kernel must not end a two-hour build
                failed += 1
                store.append(spec_key(spec), ms=-1.0, protocol=cfg.protocol, method="failed",
                             error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}", **fields)
                continue
            finally:
                del module
                release_memory(backend)
            method = parts.pop("method")
            store.append(spec_key(spec), ms=parts.pop("ms"), protocol=cfg.protocol, method=method, parts=parts,
                         **fields)
            done += 1
    if failed:
        print(f"{failed} kernels could not be measured on {cfg.backend}; see records with method 'failed'")
    return done


def _measure_kernel(backend: Any, module: nn.Module, cfg: BuildConfig) -> dict[str, Any]:
    """In-context timing when configured and possible; isolated timing (minus the call overhead) otherwise."""
    if cfg.in_context:
        try:
            return {**measure_in_context(backend, module, module.input_shape, cfg.protocol), "method": "in_context"}
        except Exception:  # noqa: BLE001 - e.g. an op the prefix's layout does not support: time it alone
            pass
    m = backend.measure(module, module.input_shape, cfg.protocol)
    o = backend.measure(_Passthrough(), module.input_shape, cfg.protocol)
    return {"ms": m.ms - o.ms, "isolated_ms": m.ms, "overhead_ms": o.ms, "method": "isolated"}


def build(cfg: BuildConfig, progress: bool = True) -> Path:
    """Run a whole build (resumable): rules, sampling, measurement, fit; returns the predictor directory."""
    from hwnas.builder._fit import fit_predictor

    Path(cfg.out, "raw").mkdir(parents=True, exist_ok=True)
    rules = build_fusion_rules(cfg, progress)
    specs = sample_kernels(cfg, rules, progress)
    measure_kernels(cfg, specs, progress)
    path = fit_predictor(cfg, rules, progress=progress)
    for _ in range(cfg.adaptive_rounds if not cfg.shard else 0):
        if not adaptive_round(cfg, rules, progress):
            break
        path = fit_predictor(cfg, rules, progress=progress)
    if cfg.calibrate and not cfg.shard:
        calibrate(cfg, progress)
    if cfg.register and not cfg.shard:
        from hwnas.predictor import register_predictor

        where = register_predictor(path, replace=True)
        if progress:
            print(f"predictor registered for 'auto' at {where}")
    return path


def adaptive_round(cfg: BuildConfig, rules: FusionRules, progress: bool = True) -> int:
    """Measure the neighbours of the worst-predicted kernels (one round); returns how many were measured."""
    from hwnas.builder._fit import kernel_rows
    from hwnas.builder._sampler import adaptive_specs

    rows, _ = kernel_rows(Path(cfg.out) / "raw")
    specs = adaptive_specs(rows, seed=cfg.seed + 1 + len(rows))
    if progress:
        print(f"adaptive sampling: {len(specs)} neighbours of the worst-predicted kernels")
    return measure_kernels(cfg, specs, progress) if specs else 0


def calibrate(cfg: BuildConfig, progress: bool = True) -> dict[str, Any]:
    """Measure the zoo's pass 0 (resumed) and write the calibration into ``<out>/predictor``."""
    from hwnas.builder._calibrate import calibrate_build
    from hwnas.builder._zoo import measure_zoo, zoo_store_path

    measure_zoo(cfg.backend, zoo_store_path(Path(cfg.out) / "raw"), 0, cfg.protocol, progress=progress)
    return calibrate_build(cfg.out, progress=progress)


def fit_only(cfg: BuildConfig) -> Path:
    """Refit the predictor from the raw measurements already in ``cfg.out`` (and its calibration, when
    ``cfg.calibrate`` and ``raw/zoo.jsonl`` exists)."""
    from hwnas.builder._calibrate import calibrate_build
    from hwnas.builder._fit import fit_predictor

    path = fit_predictor(cfg, build_fusion_rules(cfg, progress=False))
    from hwnas.builder._zoo import zoo_store_path

    if cfg.calibrate and zoo_store_path(Path(cfg.out) / "raw").is_file():
        calibrate_build(cfg.out)
    return path


def merge_shards(cfg: BuildConfig) -> Path:
    """Join ``raw/kernels.I-of-N.jsonl`` shards into ``raw/kernels.jsonl`` (same machine kind only)."""
    from hwnas.builder._store import merge

    raw = Path(cfg.out) / "raw"
    shards = sorted(raw.glob("kernels.*-of-*.jsonl"))
    if not shards:
        raise FileNotFoundError(f"no shard files kernels.I-of-N.jsonl in {raw}")
    out = raw / "kernels.jsonl"
    merge([*([out] if out.exists() else []), *shards], raw / "kernels.merged.jsonl")
    (raw / "kernels.merged.jsonl").replace(out)
    for s in shards:
        s.unlink()
    return out
