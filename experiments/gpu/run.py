"""One prepared device run (issue 17): one-shot throughput, a ``torchscript-cuda`` predictor, a small zoo.

Run through ``experiments/gpu/run.sh`` (which installs hwnas ``--no-deps`` first), or directly::

    python -m experiments.gpu.run --out "$OUT"             # on the GPU machine, at most ~8.5 min
    python -m experiments.gpu.run --out runs/gpu-dry --dry-run   # the same steps on CPU, tiny (a test runs it)

Steps, each within what is left of ``--deadline-s`` (a step that does not fit is recorded as skipped, never
started; a failing step is recorded with its error and the run goes on):

1. ``env``: versions, the GPU, whether NNI imports, :func:`hwnas.builder.backend_status`.
2. ``throughput``: :func:`experiments.benchmarks.oneshot_throughput.measure` for SPOS and ProxylessNAS, hwnas's
   harness at fp32 and ``bf16-mixed``, NCHW and channels_last; NNI's stock pipeline once per method (fp32, its
   default); the same with ``torch.compile`` runs last (5., ``throughput_compiled``), its compile time being the
   least predictable. Needs NNI (the search spaces are NNI model
   spaces): without it the step is skipped and says so.
3. ``build``: two small predictors on the backend (``torchscript-cuda`` on the GPU; ``torchscript-cpu`` in the
   dry run), kernels at batch 1 (60% of the build time) and at the zoo's batch (``BuildConfig.batch_size``, the
   rest): the builder's kernel sampling and measurement under a time budget, then the fit; each predictor folder
   is packed as ``predictor-b<batch>.tar.gz``. Kernels are traced and frozen ahead in worker processes
   (``BuildConfig.compile_workers``: the usable cores minus one on the GPU machine, 2 in the dry run) while the
   main process finishes each compile on the device and times it, one kernel at a time.
4. ``zoo``: torchvision networks measured end to end on the backend at batch 1 and a larger batch, and priced by
   the predictor of that batch: measured ms, predicted ms, relative error.

Everything is written to ``results.json`` under ``--out`` after every step (a run cut short keeps what it had);
``--out`` gets at most 3 files (results.json, run.log from run.sh, predictor.tar.gz), the device tool's limit
being 8 files, 2 folders deep.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tarfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

GPU_ZOO = ("mobilenet_v2", "resnet18", "mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x1_0", "resnet50")
DRY_ZOO = ("mobilenet_v3_small", "resnet18")
#: (precision, channels_last, compile) per hwnas throughput run, per method; compiled ones last (they may not fit)
FULL_MATRIX = tuple((p, c, k) for k in (False, True) for p in ("32-true", "bf16-mixed") for c in (False, True))
#: the dry run: every setting once, in two runs per method
DRY_MATRIX = (("32-true", False, False), ("bf16-mixed", True, True))


@dataclass
class RunConfig:
    """Sizes and budgets of one run (:func:`gpu_config`, :func:`dry_config`)."""

    out: Path
    dry_run: bool
    deadline_s: float
    device: str
    backend: str
    image_size: int
    width_mult: float
    batch_size: int
    steps: int
    warmup_steps: int
    compile_backend: str
    build_minutes: float
    build_resolution: int
    zoo: tuple[str, ...]
    zoo_resolution: int
    zoo_batch: int
    compile_workers: int = 0
    matrix: tuple[tuple[str, bool, bool], ...] = FULL_MATRIX
    step_reserve_s: dict[str, float] = field(default_factory=dict)


def gpu_config(out: Path, deadline_s: float = 510.0) -> RunConfig:
    """The GPU run: 224 px ImageNet-shaped synthetic batches of 128, width 1.0."""
    return RunConfig(out=out, dry_run=False, deadline_s=deadline_s, device="cuda", backend="torchscript-cuda",
                     image_size=224, width_mult=1.0, batch_size=128, steps=10, warmup_steps=3,
                     compile_backend="inductor", build_minutes=2.0, build_resolution=224, zoo=GPU_ZOO,
                     zoo_resolution=224, zoo_batch=32, compile_workers=-1,
                     step_reserve_s={"throughput": 20.0, "build": 60.0, "zoo": 20.0, "throughput_compiled": 80.0})


def dry_config(out: Path, deadline_s: float = 600.0) -> RunConfig:
    """The dry run: the same steps on CPU, tiny (16 px, width 0.25, batch 8, two timed steps, every setting of the
    matrix once); compile with the ``eager`` backend (dynamo's capture, guards and recompiles without code
    generation: inductor's C++ compile of every block takes many minutes on a small CPU). Its deadline is a
    safety net: every step should run."""
    return RunConfig(out=out, dry_run=True, deadline_s=deadline_s, device="cpu", backend="torchscript-cpu",
                     image_size=16, width_mult=0.25, batch_size=8, steps=2, warmup_steps=1,
                     compile_backend="eager", build_minutes=1.0, build_resolution=32, zoo=DRY_ZOO,
                     zoo_resolution=32, zoo_batch=4, compile_workers=2, matrix=DRY_MATRIX,
                     step_reserve_s={"throughput": 5.0, "build": 5.0, "zoo": 2.0, "throughput_compiled": 5.0})


class Run:
    """Results and the clock of one run; :meth:`step` runs a step when it fits and records what happened."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.t0 = time.monotonic()
        self.results: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v)
                                                   for k, v in asdict(cfg).items()}, "steps": {}}
        cfg.out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.cfg.deadline_s - (time.monotonic() - self.t0)

    def save(self) -> None:
        self.results["elapsed_s"] = time.monotonic() - self.t0
        (self.cfg.out / "results.json").write_text(json.dumps(self.results, indent=2, default=str))

    def step(self, name: str, fn: Callable[["Run"], Any]) -> Any:
        reserve = self.cfg.step_reserve_s.get(name, 0.0)
        if self.left() < reserve:
            self.results["steps"][name] = {"status": "skipped", "reason": f"{self.left():.0f} s left, the step "
                                           f"needs at least {reserve:.0f} s"}
            self.save()
            return None
        start = time.monotonic()
        print(f"[{time.monotonic() - self.t0:6.1f} s] {name} ...", flush=True)
        try:
            value = fn(self)
            entry = {"status": "ok", "result": value}
        except Exception as e:  # noqa: BLE001 - a failing step is recorded, the run goes on
            value = None
            entry = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(entry["traceback"], file=sys.stderr, flush=True)
        entry["seconds"] = time.monotonic() - start
        self.results["steps"][name] = entry
        self.save()
        print(f"[{time.monotonic() - self.t0:6.1f} s] {name}: {entry['status']} ({entry['seconds']:.1f} s)",
              flush=True)
        return value


def nni_available() -> bool:
    return importlib.util.find_spec("nni") is not None


# --- steps -----------------------------------------------------------------------------------------------------------
def step_env(run: Run) -> dict[str, Any]:
    import torch

    from hwnas.builder import backend_status

    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gib": props.total_memory / 2**30, "sm": f"{props.major}.{props.minor}",
               "multiprocessors": props.multi_processor_count}
    versions = {}
    for mod in ("torch", "torchvision", "pytorch_lightning", "onnx", "onnxruntime", "nni", "numpy"):
        try:
            versions[mod] = importlib.import_module(mod).__version__
        except Exception as e:  # noqa: BLE001 - absent or broken: recorded
            versions[mod] = f"absent ({type(e).__name__})"
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cuda": torch.version.cuda,
            "gpu": gpu, "versions": versions, "nni": nni_available(), "backends": backend_status(),
            "cpu_threads": torch.get_num_threads()}


def _throughput_args(cfg: RunConfig, method: str, precision: str, channels_last: bool, compile_: bool,
                     with_nni: bool) -> argparse.Namespace:
    from experiments.benchmarks.oneshot_throughput import parser

    argv = ["--method", method, "--device", cfg.device, "--width-mult", str(cfg.width_mult),
            "--image-size", str(cfg.image_size), "--batch-size", str(cfg.batch_size), "--data", "random",
            "--random-images", str(cfg.batch_size * 5), "--steps", str(cfg.steps),
            "--warmup-steps", str(cfg.warmup_steps), "--precision", precision,
            "--channels-last" if channels_last else "--no-channels-last", "--compile-backend", cfg.compile_backend]
    if compile_:
        argv.append("--compile")
    if not with_nni:   # the first configuration of a method also times NNI and SPOS's plain paths
        argv += ["--skip-nni", "--no-plain-path"]
    return parser().parse_args(argv)


def step_throughput(run: Run, compiled: bool = False) -> dict[str, Any]:
    """The throughput matrix's entries without compile (``compiled=False``) or with it."""
    if not nni_available():
        return {"skipped": "nni is not importable: the search spaces are NNI model spaces, so no one-shot "
                           "pipeline (hwnas's or NNI's) can run; install the stripped nni wheel "
                           "(experiments/gpu/pack_wheels.py)",
                "rows": []}
    from experiments.benchmarks.oneshot_throughput import measure

    rows, skipped, errors, plain_ratios = [], [], [], []
    for method in ("spos", "proxyless"):
        first = not compiled
        for precision, channels_last, compile_ in [m for m in run.cfg.matrix if m[2] == compiled]:
            name = f"{method} {precision} {'NHWC' if channels_last else 'NCHW'} compile={compile_}"
            # a compiled configuration needs room for its compile; the others one benchmark run
            need = run.cfg.step_reserve_s["throughput"] * (4 if compile_ else 1)
            if run.left() < need:
                skipped.append(name)
                continue
            try:
                args = _throughput_args(run.cfg, method, precision, channels_last, compile_, first)
                result = measure(args)
                rows.extend(result["rows"])
                if result["spos_plain_ratios"]:   # SPOS step / the same paths as plain modules
                    plain_ratios.append({"config": name, **result["spos_plain_ratios"]})
                first = False
            except Exception as e:  # noqa: BLE001 - recorded, the matrix goes on
                errors.append({"config": name, "error": f"{type(e).__name__}: {e}"})
            mine = [r for r in rows if r["pipeline"] == "hwnas"]
            print(f"  {name}: {mine[-1]['ms_per_step']:.1f} ms/step" if mine else f"  {name}", flush=True)
            key = "throughput_compiled" if compiled else "throughput"
            run.results["steps"][key] = {"status": "running", "result": {"rows": rows}}
            run.save()
    return {"rows": rows, "spos_plain_ratios": plain_ratios, "skipped_for_time": skipped, "errors": errors}


def step_build(run: Run) -> dict[str, Any]:
    from hwnas.builder import QUICK_PROTOCOL, BuildConfig, build

    cfg = run.cfg
    # -1: the cores this process may use minus one (the main process times while the others compile)
    workers = cfg.compile_workers if cfg.compile_workers >= 0 else max(1, len(os.sched_getaffinity(0)) - 1)
    result: dict[str, Any] = {"compile_workers": workers}
    # one predictor per batch: batch 1 (latency) with 60% of the build time, the zoo's batch with the rest
    for batch, share in ((1, 0.6), (cfg.zoo_batch, 0.4)):
        out = cfg.out / f"build-b{batch}"
        bcfg = BuildConfig(backend=cfg.backend, out=out,
                           name=f"{cfg.backend}-issue17-b{batch}{'-dry' if cfg.dry_run else ''}",
                           time_budget_min=cfg.build_minutes * share, protocol=QUICK_PROTOCOL,
                           resolutions=(cfg.build_resolution,), space_archs=1 if nni_available() else 0, jitter=0,
                           adaptive_rounds=0, calibrate=False, register=False,
                           fusion_rules=[] if cfg.dry_run else None, compile_workers=workers, batch_size=batch)
        path = Path(build(bcfg, progress=False))
        packed = cfg.out / f"predictor-b{batch}.tar.gz"
        with tarfile.open(packed, "w:gz") as tar:
            tar.add(path, arcname=f"predictor-b{batch}")
        lines = [json.loads(line) for f in (out / "raw").glob("*.jsonl") for line in f.open() if line.strip()]
        kernels = [r for r in lines if r.get("kind") == "kernel"]
        result[f"b{batch}"] = {"predictor": str(path), "packed": packed.name, "raw_records": len(lines),
                               "kernels": len(kernels),
                               # timed modules (two per kernel) measured from a worker's compile
                               "compiled_in_worker": sum(int(r.get("compiled_in_worker", 0)) for r in kernels)}
    return result


def step_zoo(run: Run) -> dict[str, Any]:
    import torch
    import torchvision

    import hwnas
    from hwnas.builder import QUICK_PROTOCOL, measure

    cfg = run.cfg
    built = run.results["steps"].get("build", {})
    predictors = {}
    if built.get("status") == "ok":
        for batch in (1, cfg.zoo_batch):
            if f"b{batch}" in built["result"]:
                predictors[batch] = hwnas.load_latency_predictor(built["result"][f"b{batch}"]["predictor"])
    rows = []
    for name in cfg.zoo:
        if run.left() < cfg.step_reserve_s["zoo"] / 2:
            rows.append({"model": name, "skipped": "time"})
            continue
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        row: dict[str, Any] = {"model": name, "resolution": cfg.zoo_resolution}
        for batch in (1, cfg.zoo_batch):
            shape = (batch, 3, cfg.zoo_resolution, cfg.zoo_resolution)
            try:
                row[f"measured_ms_b{batch}"] = measure(model, cfg.backend, shape, QUICK_PROTOCOL).ms
            except Exception as e:  # noqa: BLE001 - recorded per model
                row[f"error_b{batch}"] = f"{type(e).__name__}: {e}"
        for batch, predictor in predictors.items():
            try:
                pred = predictor.predict(model, input_shape=(batch, 3, cfg.zoo_resolution, cfg.zoo_resolution))
                row[f"predicted_ms_b{batch}"] = pred
                if f"measured_ms_b{batch}" in row:
                    row[f"rel_error_b{batch}"] = pred / row[f"measured_ms_b{batch}"] - 1.0
            except Exception as e:  # noqa: BLE001 - e.g. a kernel type the small build never measured
                row[f"predict_error_b{batch}"] = f"{type(e).__name__}: {e}"
        rows.append(row)
    summary = {}
    for batch in (1, cfg.zoo_batch):
        errors = [abs(r[f"rel_error_b{batch}"]) for r in rows if f"rel_error_b{batch}" in r]
        summary[f"b{batch}"] = {"priced": len(errors),
                                "within_10pct": sum(e <= 0.1 for e in errors) / len(errors) if errors else None}
    return {"rows": rows, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.gpu.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="results folder ($OUT on the device machine)")
    p.add_argument("--dry-run", action="store_true", help="the same steps on CPU at a tiny size")
    p.add_argument("--deadline-s", type=float, default=None, help="wall-clock budget of all steps (s)")
    p.add_argument("--steps", default="env,throughput,build,zoo,throughput_compiled",
                   help="comma-separated steps to run (compiled throughput last: its compile time is the least "
                        "predictable)")
    args = p.parse_args(argv)
    make = dry_config if args.dry_run else gpu_config
    cfg = make(Path(args.out)) if args.deadline_s is None else make(Path(args.out), args.deadline_s)
    if not cfg.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: use --dry-run on a machine without a GPU", file=sys.stderr)
            return 2
    run = Run(cfg)
    steps = {"env": step_env, "throughput": step_throughput, "build": step_build, "zoo": step_zoo,
             "throughput_compiled": lambda r: step_throughput(r, compiled=True)}
    for name in args.steps.split(","):
        run.step(name, steps[name])
    run.save()
    status = {k: v["status"] for k, v in run.results["steps"].items()}
    print(f"done in {time.monotonic() - run.t0:.0f} s: {status}; results in {cfg.out / 'results.json'}")
    return 0 if all(s != "error" for s in status.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
