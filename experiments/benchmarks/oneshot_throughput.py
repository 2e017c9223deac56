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
- plain path (SPOS, not with ``--compile``): after every step of a supernet (hwnas's, and NNI's
  ``RandomOneShot``, whose sample is recorded from its ``resample``), the path that step trained is built as a
  plain module (``search_spaces.build_subnet``: stem, exactly the chosen blocks, head; no NNI class, no
  supernet) and trained in a bare PyTorch loop on the same batch, one untimed step, then the timed one (SGD
  with the supernet's momentum, weight decay and label smoothing, same precision and layout). Interleaved step
  by step, so both see the same machine (a core shared with other work slows both alike), and timed on two
  clocks, wall and process CPU time (``--clock`` picks the one of the table and the last line). The goal:
  hwnas's SPOS step at most ``SPOS_PLAIN_LIMIT`` (1.15) times its plain path; the run ends with the line
  ``spos step / plain path xR.RR``.

Timing: ``--warmup-steps`` untimed steps, then ``--steps`` timed ones (device synchronised at both ends).
Throughput is training images per second (the weight batches); architecture-batch images are counted apart.

    python -m experiments.benchmarks.oneshot_throughput                       # CPU, small
    python -m experiments.benchmarks.oneshot_throughput --quick               # SPOS vs plain path, < 3 min
    python -m experiments.benchmarks.oneshot_throughput --method both --image-size 32 --batch-size 64 \
        --steps 20 --threads 1                                                # the SPOS goal's setting, CPU
    python -m experiments.benchmarks.oneshot_throughput --device cuda --batch-size 256 --image-size 32 \
        --width-mult 1.0 --data random --steps 50 --method both
    python -m experiments.benchmarks.oneshot_throughput --precision bf16-mixed --channels-last --compile \
        --skip-nni --json runs/throughput.json      # one hwnas setting, no NNI, figures as JSON

``--json`` writes every row (and the settings) to a file; ``--skip-nni`` times hwnas alone (NNI absent).
:func:`measure` is the same as a function (used by ``experiments/gpu/run.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from experiments._cli import fail
from hwnas.files import atomic_write

SPOS_PLAIN_LIMIT = 1.15
"""Goal of issue 17: SPOS supernet step time at most this many times its plain path's."""
QUICK = {"method": "spos", "image_size": 32, "batch_size": 64, "steps": 8, "warmup_steps": 2}
"""What ``--quick`` sets: the SPOS goal's setting with few steps (ProxylessNAS left out: NNI's stock Proxyless
takes about 8 s a step there on one CPU thread)."""


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
    paths: list | None = None   # SPOS: the architectures of the warm-up and timed steps, in order
    wall_over_plain: float | None = None   # SPOS pipelines timed with their plain paths: both clocks' ratios
    cpu_over_plain: float | None = None

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
        fail(f"--data {args.data} has {len(x)} images: too few for batch size {args.batch_size}")
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


def _space(args: argparse.Namespace, method: str) -> Any:
    import search_spaces as ss

    return ss.create_space("proxyless" if method == "proxyless" else "spos", input_size=args.image_size,
                           num_classes=10, width_mult=args.width_mult)


def run_nni(args: argparse.Namespace, method: str, device: torch.device, plain: bool = False) -> Any:
    """NNI 3.0's stock one-shot pipeline (see the module docstring); with ``plain`` (SPOS), also its paths as plain
    modules, interleaved: then ``(measurement, plain measurement)``."""
    import nni
    from nni.nas.evaluator.pytorch import Classification
    from nni.nas.strategy import Proxyless, RandomOneShot
    from torch.utils.data import DataLoader

    weight, arch = _data(args)
    torch.manual_seed(0)
    space = _space(args, method)
    recorder = _sample_recorder()
    timer = (_alongside_callback(args, device, args.nni_precision, False, lambda module, step: recorder.samples[-1])
             if plain else _timer_callback(args.warmup_steps, args.steps, device))
    pin = device.type == "cuda"
    loader = nni.trace(DataLoader)
    evaluator = Classification(
        learning_rate=0.05, optimizer=torch.optim.SGD, num_classes=10, export_onnx=False,
        train_dataloaders=loader(weight, batch_size=args.batch_size, shuffle=True, drop_last=True, pin_memory=pin),
        val_dataloaders=loader(arch, batch_size=args.batch_size, shuffle=True, drop_last=True, pin_memory=pin),
        max_epochs=10_000, limit_val_batches=0, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision=args.nni_precision, enable_progress_bar=False, logger=False, enable_checkpointing=False,
        enable_model_summary=False, callbacks=[recorder, timer])
    strategy = Proxyless() if method == "proxyless" else RandomOneShot()
    model = strategy.mutate_model(space)
    strategy.mutate_evaluator(evaluator).evaluate(model)
    steps = args.steps
    arch_images = steps * args.batch_size if method == "proxyless" else 0   # an architecture step every step
    if plain:
        return _side_by_side(Measurement(method, "NNI 3.0 stock", steps, 0.0, steps * args.batch_size, 0,
                                         args.nni_precision), timer, args.clock)
    return Measurement(method, "NNI 3.0 stock", steps, timer.end - timer.start, steps * args.batch_size, arch_images,
                       args.nni_precision)


def _sample_recorder() -> Any:
    """A Lightning callback that records the architecture NNI's one-shot module samples at every training step
    (``samples``: label to choice name, in step order), by wrapping the module's ``resample``."""
    import pytorch_lightning as pl

    class Recorder(pl.Callback):
        def __init__(self) -> None:
            self.samples: list[dict[str, str]] = []

        def on_train_start(self, trainer, pl_module) -> None:
            resample = pl_module.resample

            def recorded() -> Any:
                sample = resample()
                if trainer.training:   # RandomOneShot also resamples in validation steps
                    self.samples.append({str(k): str(v) for k, v in sample.items()})
                return sample

            pl_module.resample = recorded

    return Recorder()


def run_hwnas(args: argparse.Namespace, method: str, device: torch.device, plain: bool = False) -> Any:
    """hwnas's one-shot module on the shared harness; with ``plain`` (SPOS), also its paths as plain modules,
    interleaved: then ``(measurement, plain measurement)``."""
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
    precision = resolve_precision(cfg)
    # one optimizer step per batch: the step-th batch trained the path of global step ``step``
    timer = (_alongside_callback(args, device, precision, cl, lambda module, step: module.sample_arch(step))
             if plain else _timer_callback(args.warmup_steps, args.steps, device))
    fit(module, data, None, cfg, callbacks=[timer])
    if plain:
        return _side_by_side(Measurement(method, "hwnas", args.steps, 0.0, args.steps * args.batch_size, 0, precision,
                                         cl), timer, args.clock)
    return Measurement(method, "hwnas", args.steps, timer.end - timer.start, args.steps * args.batch_size,
                       arch_images, precision, cl, args.compile_backend if args.compile else "off")


def _clocks(device: torch.device) -> tuple[float, float]:
    """(wall s, process CPU s), the device synchronised first."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter(), time.process_time()


def _alongside_callback(args: argparse.Namespace, device: torch.device, precision: str, channels_last: bool,
                        path_of: Any) -> Any:
    """Times a SPOS pipeline and, interleaved with it, each step's path as a plain module (stops training after).

    After every training step of the pipeline, ``path_of(pl_module, step)`` gives the path it just trained; that
    path is built as a plain module (``search_spaces.build_subnet`` of a freshly seeded space: stem, exactly the
    chosen blocks, head; untimed) and trained two steps in a bare PyTorch loop on the same batch (SGD with the
    supernet's lr, momentum and weight decay on conv/linear weights, label smoothing 0.1, ``precision`` and
    layout), of which the second is timed: the steady-state step of a fixed plain network, its weights and
    momentum buffers just used (the supernet's path weights were last used steps ago). Pipeline time: from the
    end of one training step to the end of the next (everything the pipeline does per step), less the work of
    this callback. Both on two clocks: wall and process CPU time (the CPU clock
    is not charged for time the process waits for a core another process holds).
    """
    import pytorch_lightning as pl
    from torch.nn import functional as F

    import search_spaces as ss
    from hwnas.oneshot import SupernetConfig

    warmup, steps = args.warmup_steps, args.steps
    torch.manual_seed(0)
    space = _space(args, "spos")
    sgd = SupernetConfig()
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16-mixed"
           else contextlib.nullcontext())

    class Alongside(pl.Callback):
        def __init__(self) -> None:
            self.seen = 0
            self.mark: tuple[float, float] | None = None
            self.pipeline = [0.0, 0.0]
            self.plain = [0.0, 0.0]
            self.paths: list[dict[str, str]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            now = _clocks(device)
            if self.seen >= warmup + 1:
                self.pipeline = [t + n - m for t, n, m in zip(self.pipeline, now, self.mark)]
            arch = path_of(pl_module, self.seen)
            self.paths.append(arch)
            self.seen += 1
            net = ss.build_subnet(space, arch).to(device).train()
            if channels_last:
                net.to(memory_format=torch.channels_last)
            opt = torch.optim.SGD([{"params": [p for p in net.parameters() if p.dim() > 1],
                                    "weight_decay": sgd.weight_decay},
                                   {"params": [p for p in net.parameters() if p.dim() <= 1], "weight_decay": 0.0}],
                                  lr=sgd.lr, momentum=sgd.momentum)
            x, y = batch[0], batch[1]

            def step() -> None:
                with amp:
                    loss = F.cross_entropy(net(x), y, label_smoothing=sgd.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            step()   # untimed: the timed step is a steady-state one (momentum buffers made, memory touched)
            start = _clocks(device)
            step()
            end = _clocks(device)
            if self.seen > warmup:
                self.plain = [t + e - b for t, e, b in zip(self.plain, end, start)]
            if self.seen == warmup + steps:
                trainer.should_stop = True
            del net, opt
            self.mark = _clocks(device)

    return Alongside()


def _side_by_side(m: Measurement, cb: Any, clock: str) -> tuple[Measurement, Measurement]:
    """The pipeline's and its plain paths' measurements from an :func:`_alongside_callback` (``clock`` chosen)."""
    i = 0 if clock == "wall" else 1
    m.seconds, m.paths = cb.pipeline[i], cb.paths
    plain = Measurement("spos", "plain path" if m.pipeline == "hwnas" else "plain path/NNI", m.steps, cb.plain[i],
                        m.train_images, 0, m.precision, m.channels_last)
    m.cpu_over_plain = cb.pipeline[1] / cb.plain[1]
    m.wall_over_plain = cb.pipeline[0] / cb.plain[0]
    return m, plain


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
    p.add_argument("--plain-path", action=argparse.BooleanOptionalAction, default=True,
                   help="SPOS: also time the sampled paths as plain modules, interleaved (not with --compile)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="SPOS side by side: the clock of the table and the last line (both ratios are printed; "
                        "cpu: process CPU time, for a core shared with other work)")
    p.add_argument("--quick", action="store_true",
                   help="the SPOS goal's setting in under 3 minutes: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                                                 for k, v in QUICK.items()))
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
    rows, ratios = [], {}
    for method in methods:
        plain = method == "spos" and args.plain_path and not args.compile
        for pipeline, run in (("nni", run_nni), ("spos", run_hwnas)):
            if pipeline == "nni" and args.skip_nni:
                continue
            if not plain:
                rows.append(row(run(args, method, device)))
                continue
            m, m_plain = run(args, method, device, plain=True)   # NNI's own paths in its (stock) precision
            rows += [row(m), row(m_plain)]
            ratios[f"{pipeline}_step_over_plain"] = m.ms_per_step / m_plain.ms_per_step
            ratios[f"{pipeline}_step_over_plain_wall"] = m.wall_over_plain
            ratios[f"{pipeline}_step_over_plain_cpu"] = m.cpu_over_plain
    if ratios:
        ratios.update(limit=SPOS_PLAIN_LIMIT, clock=args.clock)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    settings = {k: getattr(args, k) for k in ("width_mult", "image_size", "batch_size", "data", "steps",
                                              "warmup_steps", "arch_every", "binary_mode")}
    return {"device": name, "settings": settings, "rows": rows, "spos_plain_ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
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
        if "hwnas" in pair and "NNI 3.0 stock" in pair:
            ratio = pair["hwnas"]["train_images_per_s"] / pair["NNI 3.0 stock"]["train_images_per_s"]
            print(f"{method}: hwnas / NNI throughput ratio: {ratio:.2f}x")
    if args.json:
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.json, json.dumps(result, indent=2))
    ratios = result["spos_plain_ratios"]
    if "spos_step_over_plain" in ratios:
        mine, limit = ratios["spos_step_over_plain"], ratios["limit"]
        print(f"spos, each step's path also built as a plain module and timed on a steady-state bare PyTorch "
              f"step right after it (table: {ratios['clock']} clock):")
        for key, name in (("spos", "hwnas SPOS step"), ("nni", "NNI 3.0 RandomOneShot step")):
            if f"{key}_step_over_plain" in ratios:
                print(f"  {name} / its plain path: {ratios[f'{key}_step_over_plain_wall']:.2f}x wall clock, "
                      f"{ratios[f'{key}_step_over_plain_cpu']:.2f}x CPU time")
        print(f"  limit {limit:.2f}x ({ratios['clock']} clock): {'met' if mine <= limit else 'NOT met'}")
        print(f"spos step / plain path x{mine:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
