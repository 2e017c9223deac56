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

import contextlib
import json
import random
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch.nn as nn

from hwnas.builder._config import BuildConfig
from hwnas.builder._kernel_modules import _Passthrough, _prefix
from hwnas.builder._protocol import MeasureProtocol
from hwnas.files import atomic_write
from hwnas.kernels import FusionRules


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
    timed = timed_modules(module, input_shape, in_context=True)
    return _net_parts([backend.measure(m, input_shape, protocol) for m in timed], prefixed=len(input_shape) == 4)


def timed_modules(module: nn.Module, input_shape: Sequence[int], in_context: bool = True) -> list[nn.Module]:
    """The two modules whose latency difference is a kernel's: ``[P → K, P]`` in context for a 4-d input (``P``
    a fresh dense 1x1 convolution, see :func:`measure_in_context`), else ``[K, a module returning its input]``."""
    if in_context and len(input_shape) == 4:
        pre = _prefix(input_shape)
        return [nn.Sequential(pre, module).eval(), pre]
    return [module, _Passthrough()]


def _net_parts(measured: Sequence[Any], prefixed: bool) -> dict[str, float]:
    """``ms`` (the first module minus the second, ms) and the two parts, named as the store keeps them."""
    a, b = (float(m.ms) for m in measured)
    names = ("with_prefix_ms", "prefix_ms") if prefixed else ("isolated_ms", "overhead_ms")
    return {"ms": a - b, names[0]: a, names[1]: b}


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
    return [with_batch(s, cfg.batch_size) for s in specs + extra] if cfg.batch_size != 1 else specs + extra


def with_batch(spec: dict[str, Any], batch: int) -> dict[str, Any]:
    """A kernel spec (captured at batch 1) at batch ``batch``: the leading dimension of every shape of its ops."""
    def scaled(shape: Sequence[int]) -> list[int]:
        return [batch, *shape[1:]] if shape else list(shape)

    ops = [{**o, "input_shapes": [scaled(x) for x in o["input_shapes"]], "output_shape": scaled(o["output_shape"])}
           for o in spec["ops"]]
    return {**spec, "ops": ops}


def measure_kernels(cfg: BuildConfig, specs: Sequence[dict[str, Any]], progress: bool = True) -> int:
    """Measure the pending specs into the store; returns how many were measured in this call."""
    from tqdm.auto import tqdm

    from hwnas.builder._backends import get_backend, release_memory
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
    pool = _compile_pool(cfg, backend) if todo else None
    with store, pool or contextlib.nullcontext():
        for shape in shapes:
            key = f"overhead:{list(shape)}"
            if key not in store:
                store.append(key, backend.measure(_Passthrough(), shape, cfg.protocol), raw=False, kind="overhead",
                             input_shape=list(shape))
        bar = tqdm(total=len(todo), desc=f"measuring kernels on {cfg.backend}", disable=not progress)
        for spec, module, timed in _kernels(todo, cfg, pool):
            bar.update()
            if deadline is not None and time.monotonic() > deadline:
                bar.write(f"time budget of {cfg.time_budget_min} min reached; resume to measure the rest")
                break
            fields = {"kind": "kernel", "spec": {k: spec[k] for k in ("type", "ops")},
                      "families": spec.get("families", [])}
            if spec.get("parent_families"):
                fields["parent_families"] = spec["parent_families"]
            try:
                parts = _measure_kernel(backend, module, cfg, timed)
            except Exception as e:  # noqa: BLE001 - one unmeasurable kernel must not end a two-hour build
                failed += 1
                store.append(spec_key(spec), ms=-1.0, protocol=cfg.protocol, method="failed",
                             error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}", **fields)
                continue
            finally:
                del module, timed
                release_memory(backend)
            method = parts.pop("method")
            if pool is not None:   # how many of its timed modules a worker compiled (0-2; 0: all compiled here)
                fields["compiled_in_worker"] = parts.pop("compiled_in_worker")
            store.append(spec_key(spec), ms=parts.pop("ms"), protocol=cfg.protocol, method=method, parts=parts,
                         **fields)
            done += 1
        bar.close()
    if failed:
        print(f"{failed} kernels could not be measured on {cfg.backend}; see records with method 'failed'")
    if pool is not None and progress:
        print(f"{pool.compiled} modules compiled by {pool.workers} worker processes, {pool.fallbacks} here")
    return done


def _compile_pool(cfg: BuildConfig, backend: Any) -> Any:
    """The worker pool of ``cfg.compile_workers`` (``None``: compile serially, in this process)."""
    from hwnas.builder._compile_pool import CompilePool, resolve_workers

    workers = resolve_workers(cfg.compile_workers)
    if workers == 0:
        return None
    if not str(getattr(backend, "name", "")).startswith("torchscript-"):
        raise ValueError(f"compile_workers is for the TorchScript backends (torchscript-cpu, torchscript-cuda); "
                         f"{getattr(backend, 'name', backend)!r} compiles in the process that times")
    return CompilePool(workers, device=str(getattr(backend, "device", "cpu")))


def _kernels(todo: Sequence[dict[str, Any]], cfg: BuildConfig, pool: Any) -> Iterator[tuple[Any, ...]]:
    """``(spec, module, timed)`` per spec, lazily: ``timed`` is ``None`` (compile serially) or the timed modules
    (:func:`timed_modules`) with what the pool compiled for each."""
    from hwnas.builder._kernel_modules import kernel_module

    if pool is None:
        for spec in todo:
            yield spec, kernel_module(spec), None
        return

    def jobs() -> Iterator[tuple[Any, list[nn.Module], tuple[int, ...]]]:
        for spec in todo:
            module = kernel_module(spec)
            yield (spec, module), timed_modules(module, module.input_shape, cfg.in_context), module.input_shape

    for (spec, module), timed in pool.stream(jobs()):
        yield spec, module, timed


def _measure_kernel(backend: Any, module: nn.Module, cfg: BuildConfig,
                    timed: Sequence[tuple[nn.Module, Any]] | None = None) -> dict[str, Any]:
    """In-context timing when configured and possible; isolated timing (minus the call overhead) otherwise.

    ``timed``: the modules of :func:`timed_modules` (for ``cfg.in_context``), each with its frozen module compiled
    by a worker (or ``None``); the result then also says how many of them were measured from a worker's compile
    (``compiled_in_worker``). A worker's module that fails to measure is compiled again here."""
    shape = module.input_shape
    if cfg.in_context:
        try:
            if timed is None:
                return {**measure_in_context(backend, module, shape, cfg.protocol), "method": "in_context"}
            measured, used = _measure_timed(backend, timed, shape, cfg.protocol)
            return {**_net_parts(measured, len(shape) == 4), "method": "in_context", "compiled_in_worker": used}
        except Exception:  # noqa: BLE001 - e.g. an op the prefix's layout does not support: time it alone
            pass
    pair = timed if timed is not None and not cfg.in_context else [(module, None), (_Passthrough(), None)]
    measured, used = _measure_timed(backend, pair, shape, cfg.protocol)
    out = {**_net_parts(measured, prefixed=False), "method": "isolated"}
    return out if timed is None else {**out, "compiled_in_worker": used}


def _measure_timed(backend: Any, timed: Sequence[tuple[nn.Module, Any]], shape: Sequence[int],
                   protocol: MeasureProtocol) -> tuple[list[Any], int]:
    """Measure each module, from its worker-compiled version when there is one and it runs (else compiled here);
    returns the measurements and how many came from a worker's compile."""
    measured, used = [], 0
    for module, compiled in timed:
        if compiled is not None:
            try:
                measured.append(backend.measure(compiled, shape, protocol))
                used += 1
                continue
            except Exception:  # noqa: BLE001 - the serial compile below raises the real error, if any
                pass
        measured.append(backend.measure(module, shape, protocol))
    return measured, used


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
    """Measure the zoo's pass 0 (resumed) and write the calibration into ``<out>/predictor``, fitted on each
    network's median over the passes the store holds."""
    from hwnas.builder._calibrate import calibrate_build
    from hwnas.builder._zoo import measure_zoo, zoo_store_path

    if cfg.batch_size != 1:
        raise ValueError(f"a build at batch {cfg.batch_size} cannot be calibrated: the zoo networks are timed at "
                         "batch 1")
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
