"""Training throughput of one-shot NAS: NNI 3.0's stock pipeline against hwnas's, side by side in one run.

Same search space (the hwnas ``proxyless`` space for ProxylessNAS, ``spos`` for SPOS; ``--width-mult``,
``--image-size``), same batch size, same data (weight batches and, for ProxylessNAS, a held-out architecture
split), same device, in one process:

- NNI stock: ``nni.nas.strategy.Proxyless()`` / ``RandomOneShot()`` mutate the space, the stock
  ``Classification`` evaluator (SGD, its default ``32-true`` precision, traced ``DataLoader``s) trains it; this is
  what ``NasExperiment`` runs in-process for a one-shot strategy (``mutate_model``, ``mutate_evaluator``,
  ``evaluate``), without the experiment manager and web UI. NNI's Proxyless takes an architecture step on a
  validation batch at every step.
- hwnas: :class:`~hwnas.oneshot.ProxylessModule` (weight step every step, an architecture step every
  ``--arch-every`` steps, reference default 5, binary gradients ``full``) or ``SposSupernetModule`` on the
  shared harness (bf16 autocast and channels_last on CUDA, data resident on the device, optional
  ``--compile``).

Timing: ``--warmup-steps`` untimed steps, then ``--steps`` timed ones (device synchronised at both ends).
Throughput is training images per second (the weight batches); architecture-batch images are counted apart.

    python -m experiments.benchmarks.oneshot_throughput                       # CPU, small
    python -m experiments.benchmarks.oneshot_throughput --device cuda --batch-size 256 --image-size 32 \
        --width-mult 1.0 --data random --steps 50 --method both
    python -m experiments.benchmarks.oneshot_throughput --precision bf16-mixed --channels-last --compile \
        --skip-nni --json runs/throughput.json      # one hwnas setting, no NNI, figures as JSON

``--json`` writes every row (and the settings) to a file; ``--skip-nni`` times hwnas alone (NNI absent).
:func:`measure` is the same as a function (used by ``experiments/gpu/run.py``).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Measurement:
    method: str
    pipeline: str
    steps: int
    seconds: float
    train_images: int
    arch_images: int
    precision: str
    channels_last: bool = False
    compile: str = "off"

    @property
    def images_per_s(self) -> float:
        return self.train_images / self.seconds

    @property
    def ms_per_step(self) -> float:
        return 1e3 * self.seconds / self.steps


def _timer_callback(warmup: int, steps: int, device: torch.device) -> Any:
    import pytorch_lightning as pl

    class Timer(pl.Callback):
        """Times batches ``warmup .. warmup + steps - 1`` and stops training after them."""

        def __init__(self) -> None:
            self.seen = 0
            self.start = self.end = None

        def _sync(self) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self.seen == warmup:
                self._sync()
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.seen += 1
            if self.seen == warmup + steps:
                self._sync()
                self.end = time.perf_counter()
                trainer.should_stop = True

    return Timer()


def _data(args: argparse.Namespace) -> tuple[Any, Any]:
    """(weight split, architecture split) as TensorDatasets."""
    from torch.utils.data import TensorDataset

    if args.data == "digits":
        from hwnas.data import digits

        x, y = digits("train", image_size=args.image_size).tensors
    else:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.random_images, 3, args.image_size, args.image_size, generator=gen)
        y = torch.randint(0, 10, (args.random_images,), generator=gen)
    cut = int(len(x) * 0.8)
    needed = args.batch_size * 2
    if cut < needed or len(x) - cut < args.batch_size:
        raise SystemExit(f"--data {args.data} has {len(x)} images: too few for batch size {args.batch_size}")
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


def _space(args: argparse.Namespace, method: str) -> Any:
    import search_spaces as ss

    return ss.create_space("proxyless" if method == "proxyless" else "spos", input_size=args.image_size,
                           num_classes=10, width_mult=args.width_mult)


def run_nni(args: argparse.Namespace, method: str, device: torch.device) -> Measurement:
    """NNI 3.0's stock one-shot pipeline (see the module docstring)."""
    import nni
    from nni.nas.evaluator.pytorch import Classification
    from nni.nas.strategy import Proxyless, RandomOneShot
    from torch.utils.data import DataLoader

    weight, arch = _data(args)
    torch.manual_seed(0)
    space = _space(args, method)
    timer = _timer_callback(args.warmup_steps, args.steps, device)
    pin = device.type == "cuda"
    loader = nni.trace(DataLoader)
    evaluator = Classification(
        learning_rate=0.05, optimizer=torch.optim.SGD, num_classes=10, export_onnx=False,
        train_dataloaders=loader(weight, batch_size=args.batch_size, shuffle=True, drop_last=True, pin_memory=pin),
        val_dataloaders=loader(arch, batch_size=args.batch_size, shuffle=True, drop_last=True, pin_memory=pin),
        max_epochs=10_000, limit_val_batches=0, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision=args.nni_precision, enable_progress_bar=False, logger=False, enable_checkpointing=False,
        enable_model_summary=False, callbacks=[timer])
    strategy = Proxyless() if method == "proxyless" else RandomOneShot()
    model = strategy.mutate_model(space)
    strategy.mutate_evaluator(evaluator).evaluate(model)
    steps = args.steps
    arch_images = steps * args.batch_size if method == "proxyless" else 0   # an architecture step every step
    return Measurement(method, "NNI 3.0 stock", steps, timer.end - timer.start, steps * args.batch_size, arch_images,
                       args.nni_precision)


def run_hwnas(args: argparse.Namespace, method: str, device: torch.device) -> Measurement:
    """hwnas's one-shot module on the shared harness."""
    import pytorch_lightning as pl

    import hwnas
    from hwnas.oneshot import TrainerConfig, fit, make_loader, resolve_precision

    weight, arch = _data(args)
    pl.seed_everything(0, verbose=False)
    space = _space(args, method)
    predictor = hwnas.load_latency_predictor("auto")
    table = hwnas.LatencyTable.build(space, predictor)
    compile_ = args.compile_backend if args.compile and args.compile_backend != "inductor" else bool(args.compile)
    if compile_:
        _raise_recompile_limit()
    cfg = TrainerConfig(max_epochs=10_000, accelerator="cuda" if device.type == "cuda" else "cpu", progress=False,
                        compile=compile_, seed=0, precision=args.precision, channels_last=args.channels_last)
    cl = cfg.uses_channels_last
    train = make_loader(weight, args.batch_size, train=True, seed=0, channels_last=cl)
    if method == "proxyless":
        from hwnas.nas import LatencyLossConfig
        from hwnas.oneshot import ProxylessBatches, ProxylessModule, ProxylessSearchConfig

        target = 0.5 * (table.min_latency() + table.max_latency())
        module = ProxylessModule(space, table, ProxylessSearchConfig(
            loss=LatencyLossConfig(target_ms=target), arch_every=args.arch_every, binary_mode=args.binary_mode))
        data = ProxylessBatches(train, make_loader(arch, args.batch_size, train=True, seed=1, channels_last=cl),
                                arch_every=args.arch_every)
        arch_images = (args.steps // args.arch_every) * args.batch_size
    else:
        from hwnas.nas import BudgetedSampler, LatencyBudget
        from hwnas.oneshot import SposSupernetModule

        module = SposSupernetModule(space, BudgetedSampler(table, LatencyBudget(max_ms=table.max_latency())))
        data, arch_images = train, 0
    timer = _timer_callback(args.warmup_steps, args.steps, device)
    fit(module, data, None, cfg, callbacks=[timer])
    return Measurement(method, "hwnas", args.steps, timer.end - timer.start, args.steps * args.batch_size,
                       arch_images, resolve_precision(cfg), cfg.uses_channels_last,
                       args.compile_backend if args.compile else "off")


def _raise_recompile_limit(limit: int = 256) -> None:
    """Let dynamo keep one compiled entry per candidate block: the blocks of one class share their ``forward``'s
    cache, one entry per input shape and layout, and past the default limit of 8 the rest run eagerly (seen in the
    dry run: "hit config.recompile_limit (8)", with channels_last strides)."""
    import torch._dynamo.config as dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo, name):
            setattr(dynamo, name, max(int(getattr(dynamo, name)), limit))
            break


def row(m: Measurement) -> dict[str, Any]:
    """A measurement as a JSON-safe dict (ms per step, images per second)."""
    return {"method": m.method, "pipeline": m.pipeline, "precision": m.precision, "channels_last": m.channels_last,
            "compile": m.compile, "steps": m.steps, "seconds": m.seconds, "ms_per_step": m.ms_per_step,
            "train_images_per_s": m.images_per_s, "arch_images_per_s": m.arch_images / m.seconds}


def parser() -> argparse.ArgumentParser:
    """The benchmark's command-line options (defaults: CPU, small)."""
    p = argparse.ArgumentParser(prog="python -m experiments.benchmarks.oneshot_throughput",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=("proxyless", "spos", "both"), default="proxyless")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width-mult", type=float, default=0.25)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data", choices=("digits", "random"), default="digits",
                   help="digits (1437 training images) or random tensors (--random-images of them)")
    p.add_argument("--random-images", type=int, default=20_000)
    p.add_argument("--steps", type=int, default=10, help="timed steps per pipeline")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first")
    p.add_argument("--arch-every", type=int, default=5, help="hwnas ProxylessNAS architecture-step interval")
    p.add_argument("--binary-mode", choices=("full", "two"), default="full")
    p.add_argument("--nni-precision", default="32-true", help="precision of the stock pipeline (its default)")
    p.add_argument("--precision", default=None,
                   help="hwnas precision (default: bf16-mixed on CUDA, 32-true on CPU)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="hwnas weights and batches channels_last (default: on CUDA only)")
    p.add_argument("--compile", action="store_true", help="torch.compile hwnas's blocks")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend with --compile (inductor; aot_eager for a quick check of the path)")
    p.add_argument("--skip-nni", action="store_true", help="time hwnas only (e.g. NNI's stock pipeline absent)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the rows and settings as JSON")
    p.add_argument("--threads", type=int, default=None)
    return p


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark of ``args`` (see :func:`parser`); returns the settings and one row per pipeline."""
    import logging

    for category in (DeprecationWarning, FutureWarning):   # torch's jit/ONNX deprecation notices
        warnings.filterwarnings("ignore", category=category)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("nni").setLevel(logging.ERROR)
    device = torch.device(args.device)
    methods = ("proxyless", "spos") if args.method == "both" else (args.method,)
    rows = []
    for method in methods:
        if not args.skip_nni:
            rows.append(row(run_nni(args, method, device)))
        rows.append(row(run_hwnas(args, method, device)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    settings = {k: getattr(args, k) for k in ("width_mult", "image_size", "batch_size", "data", "steps",
                                              "warmup_steps", "arch_every", "binary_mode")}
    return {"device": name, "settings": settings, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args)
    s = result["settings"]
    print(f"\ndevice: {result['device']}; width {s['width_mult']}, {s['image_size']}px, batch {s['batch_size']}, "
          f"data {s['data']}, {s['steps']} timed steps after {s['warmup_steps']}")
    print(f"{'method':10s} {'pipeline':14s} {'precision':10s} {'layout':8s} {'compile':9s} {'ms/step':>9s} "
          f"{'train img/s':>12s} {'arch img/s':>11s}")
    for r in result["rows"]:
        layout = "NHWC" if r["channels_last"] else "NCHW"
        print(f"{r['method']:10s} {r['pipeline']:14s} {r['precision']:10s} {layout:8s} {r['compile']:9s} "
              f"{r['ms_per_step']:9.1f} {r['train_images_per_s']:12.1f} {r['arch_images_per_s']:11.1f}")
    for method in dict.fromkeys(r["method"] for r in result["rows"]):
        pair = {r["pipeline"]: r for r in result["rows"] if r["method"] == method}
        if len(pair) == 2:
            ratio = pair["hwnas"]["train_images_per_s"] / pair["NNI 3.0 stock"]["train_images_per_s"]
            print(f"{method}: hwnas / NNI throughput ratio: {ratio:.2f}x")
    if args.json:
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
