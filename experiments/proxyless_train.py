"""ProxylessNAS one-shot search toward a target latency on a named predictor.

Trains the ProxylessNAS supernet's weights and architecture parameters together (weights on one part of the
training data, architecture parameters on a held-out part, as in the paper), with the exact differentiable latency
loss of the latency table; derives the most probable architecture; recalibrates its BatchNorm statistics on
training batches and evaluates it on the validation split (its inherited weights, no fine-tuning); saves it.

    python -m experiments.proxyless_train                               # digits, target from the table's range
    python -m experiments.proxyless_train --target-ms 2.0 --loss add#linear --epochs 10
    python -m experiments.proxyless_train --config experiments/configs/proxyless.yaml
    python -m experiments.proxyless_train --data cifar10 --data-root ~/data/cifar10 --devices 2 --compile
    python -m experiments.proxyless_train --out-dir runs/proxyless --resume   # continue an interrupted run

A YAML file given with ``--config`` sets the defaults (keys are the option names, with ``_`` or ``-``); options
given on the command line win.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from experiments._cli import add_data_args, add_out_dir_arg, parse_with_config
from hwnas.nas import DEFAULT_RANGE_FRACTION
from hwnas.files import atomic_write

DESCRIPTION = __doc__.split("\n\n")[0]
EPILOG = """\
output (OUT_DIR): arch.json (the derived architecture, with its space, configuration and input shape), subnet.pt
(its state dict: inherited weights, recalibrated BatchNorm), subnet_finetuned.pt (with --finetune-epochs),
result.json (expected and table latency, target, predictor, accuracy, probabilities, settings), model.pt
(TorchScript, when hwnas.export is available), checkpoints/ (last.ckpt every epoch, on_exception.ckpt on
interruption; --resume continues from the newest, and resuming a finished run only re-derives, re-evaluates and
saves).
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line (also the keys a YAML config may set)."""
    p = argparse.ArgumentParser(prog="python -m experiments.proxyless_train", description=DESCRIPTION,
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="YAML", help="YAML file of option defaults (keys = option names)")
    add_out_dir_arg(p, "runs/proxyless", "results folder (%(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT_DIR/checkpoints")

    g = p.add_argument_group("search")
    g.add_argument("--space", default="proxyless", help="search space (%(default)s)")
    g.add_argument("--width-mult", metavar="W", type=float, default=0.35, help="channel width multiplier (%(default)s)")
    g.add_argument("--predictor", metavar="NAME", default="auto",
                   help="latency predictor: auto (the one of this machine), auto:BACKEND, a name or a directory "
                        "(%(default)s)")
    g.add_argument("--target-ms", metavar="MS", type=float, default=None,
                   help=f"target latency on the predictor, ms (default: {round(100 * DEFAULT_RANGE_FRACTION)}%% of the "
                        "way from the table's fastest to its slowest architecture, as the SPOS search's budget)")
    g.add_argument("--loss", default="mul#log", choices=("mul#log", "add#linear"),
                   help="latency loss form (%(default)s)")
    g.add_argument("--loss-alpha", metavar="A", type=float, default=0.2, help="mul#log scale (%(default)s)")
    g.add_argument("--loss-beta", metavar="B", type=float, default=0.3, help="mul#log exponent (%(default)s)")
    g.add_argument("--loss-lambda", metavar="L", type=float, default=0.1, help="add#linear weight (%(default)s)")
    g.add_argument("--arch-lr", metavar="LR", type=float, default=1e-3, help="Adam lr of alpha (%(default)s)")
    g.add_argument("--arch-every", metavar="N", type=int, default=5,
                   help="an architecture step every N weight steps (%(default)s)")
    g.add_argument("--binary-mode", default="full", choices=("full", "two"),
                   help="candidates priced per architecture step: all or two (%(default)s)")
    g.add_argument("--arch-fraction", metavar="F", type=float, default=0.2,
                   help="share of the training split held out for architecture steps (%(default)s)")

    add_data_args(p)

    g = p.add_argument_group("training")
    g.add_argument("--epochs", metavar="N", type=int, default=10, help="epochs, warm-up included (%(default)s)")
    g.add_argument("--warmup-epochs", metavar="N", type=int, default=2,
                   help="first epochs train the weights only (%(default)s)")
    g.add_argument("--max-steps", metavar="N", type=int, default=None, help="stop after N weight steps")
    g.add_argument("--batch-size", metavar="N", type=int, default=64, help="per device (%(default)s)")
    g.add_argument("--lr", metavar="LR", type=float, default=0.05, help="SGD lr, cosine to 0 (%(default)s)")
    g.add_argument("--label-smoothing", metavar="S", type=float, default=0.1, help="(%(default)s)")
    g.add_argument("--seed", metavar="N", type=int, default=0, help="(%(default)s)")
    g.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "gpu", "cuda"), help="(%(default)s)")
    g.add_argument("--devices", metavar="N", default="1", help="devices per node (%(default)s)")
    g.add_argument("--num-nodes", metavar="N", type=int, default=1, help="(%(default)s)")
    g.add_argument("--precision", default=None, help="Lightning precision (default: bf16-mixed on CUDA, else 32-true)")
    g.add_argument("--compile", action="store_true", help="torch.compile every block")
    g.add_argument("--threads", metavar="N", type=int, default=None, help="torch CPU threads")

    g = p.add_argument_group("report")
    g.add_argument("--bn-batches", metavar="N", type=int, default=20,
                   help="training batches to recalibrate the derived subnet's BatchNorm (%(default)s)")
    g.add_argument("--finetune-epochs", metavar="N", type=int, default=0,
                   help="also fine-tune the derived subnet from its inherited weights for N epochs on the whole "
                        "training split and report that accuracy too (0: no fine-tuning; %(default)s)")
    g.add_argument("--no-export", dest="export", action="store_false", help="do not export model.pt")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument("--json", action="store_true", help="also print result.json on the last line")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    if not 0.0 < args.arch_fraction < 1.0:   # a usage error (exit 2), before any data is read
        parser.error(f"--arch-fraction must be in (0, 1), got {args.arch_fraction}")
    args.devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    return args


def split_train(dataset: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """(weight part, architecture part) of the training split: a seeded random split, tensors kept as tensors."""
    import torch
    from torch.utils.data import Subset, TensorDataset

    if not 0.0 < fraction < 1.0:
        raise SystemExit(f"--arch-fraction must be in (0, 1), got {fraction}")
    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    cut = n - max(1, int(round(n * fraction)))
    parts = order[:cut], order[cut:]
    if isinstance(dataset, TensorDataset):
        return tuple(TensorDataset(*(t[idx] for t in dataset.tensors)) for idx in parts)
    return tuple(Subset(dataset, idx.tolist()) for idx in parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from hwnas.errors import EXIT_ERROR, HwnasError

    try:
        return _run(args)
    except HwnasError as err:   # hwnas errors name the problem (a data path, a predictor): no traceback
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR


def _run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import pytorch_lightning as pl

    import hwnas
    import search_spaces as ss
    from hwnas.data import DataConfig
    from hwnas.nas import LatencyBudget, LatencyLossConfig
    from hwnas.oneshot import ProxylessBatches, ProxylessModule, ProxylessSearchConfig, recalibrate_bn
    from hwnas.oneshot import TrainerConfig, fit, make_loader, resolve_precision
    from hwnas.train import evaluate

    out = Path(args.out_dir)
    data = DataConfig(name=args.data, root=args.data_root, image_size=args.image_size, batch_size=args.batch_size,
                      num_workers=args.workers, seed=args.seed)
    train_all, val_ds = data.dataset("train"), data.dataset("val")
    weight_ds, arch_ds = split_train(train_all, args.arch_fraction, args.seed)
    out.mkdir(parents=True, exist_ok=True)   # once the data is read: a wrong path leaves no folder behind

    pl.seed_everything(args.seed, verbose=False)
    space = ss.create_space(args.space, input_size=args.image_size, num_classes=data.num_classes,
                            width_mult=args.width_mult)
    predictor = hwnas.load_latency_predictor(args.predictor)
    shape = (1, 3, args.image_size, args.image_size)
    table = hwnas.LatencyTable.build(space, predictor, input_shape=shape, cache_dir=out / "tables")
    lo, hi = table.min_latency(), table.max_latency()
    default = LatencyBudget.from_range(table).max_ms   # the one-shot rule, as the SPOS search's
    target = args.target_ms if args.target_ms is not None else default
    print(f"space {args.space} (width {args.width_mult}, {args.image_size}px), predictor {predictor.name}: "
          f"{lo:.3f} .. {hi:.3f} ms; target {target:.3f} ms ({args.loss})", flush=True)
    if not lo <= target <= hi:
        print(f"note: the target lies outside the space's range {lo:.3f} .. {hi:.3f} ms", flush=True)

    search = ProxylessSearchConfig(
        loss=LatencyLossConfig(target_ms=target, mode=args.loss, alpha=args.loss_alpha, beta=args.loss_beta,
                               lam=args.loss_lambda),
        lr=args.lr, label_smoothing=args.label_smoothing, arch_lr=args.arch_lr, arch_every=args.arch_every,
        binary_mode=args.binary_mode, warmup_epochs=args.warmup_epochs, seed=args.seed)
    module = ProxylessModule(space, table, search)
    world = (args.devices if isinstance(args.devices, int) else 2) * args.num_nodes
    trainer_cfg = TrainerConfig(
        max_epochs=args.epochs, max_steps=args.max_steps, accelerator=args.accelerator, devices=args.devices,
        num_nodes=args.num_nodes, strategy="ddp_find_unused_parameters_true" if world > 1 else "auto",
        precision=args.precision, compile=args.compile, checkpoint_dir=str(out / "checkpoints"),
        resume=args.resume, seed=args.seed, progress=args.progress)
    channels_last = trainer_cfg.uses_channels_last
    loader = dict(num_workers=args.workers, channels_last=channels_last)
    batches = ProxylessBatches(make_loader(weight_ds, args.batch_size, train=True, seed=args.seed, **loader),
                               make_loader(arch_ds, args.batch_size, train=True, seed=args.seed + 1, **loader),
                               arch_every=args.arch_every, warmup_epochs=args.warmup_epochs)
    val_loader = make_loader(val_ds, 2 * args.batch_size, train=False, **loader)
    started = time.perf_counter()
    trainer = fit(module, batches, val_loader, trainer_cfg)
    seconds = time.perf_counter() - started
    if not trainer.is_global_zero:
        return 0

    arch = module.derived_arch()
    expected = module.expected_latency()
    table_ms = table.latency(arch)
    device = trainer.strategy.root_device
    subnet = ss.build_subnet(space, arch).float().to(device)
    recalibrate_bn(subnet, make_loader(weight_ds, args.batch_size, train=True, seed=args.seed, resident=False),
                   n_batches=args.bn_batches, device=device)
    accuracy = evaluate(subnet, val_ds, device=str(device))
    subnet = subnet.cpu().eval()
    predicted = float(predictor.predict(subnet, model_type="torch", input_shape=shape))
    torch.save(subnet.state_dict(), out / "subnet.pt")
    finetuned = None
    if args.finetune_epochs > 0:
        from hwnas.train import TrainConfig, train_model

        tuned = ss.build_subnet(space, arch).float().cpu()
        run = train_model(tuned, train_all, val_ds, TrainConfig(epochs=args.finetune_epochs, batch_size=args.batch_size,
                                                                lr=args.lr, seed=args.seed, device=str(device)))
        finetuned = run.accuracy
        torch.save(tuned.cpu().state_dict(), out / "subnet_finetuned.pt")
    from hwnas.export import arch_document

    # the architecture with what rebuilds and prices it (space, config, input shape): `hwnas export --arch` reads it
    atomic_write(out / "arch.json", json.dumps(arch_document(args.space, space.config, arch, input_shape=shape),
                                              indent=1) + "\n")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    result = {
        "arch": arch, "target_ms": target, "expected_ms": expected, "table_ms": table_ms, "predicted_ms": predicted,
        "val_acc": accuracy, "finetuned_val_acc": finetuned, "finetune_epochs": args.finetune_epochs,
        "supernet_val_acc": metrics.get("val_acc"), "macs": table.macs(arch),
        "params": table.params(arch), "predictor": {"name": predictor.name, "checksum": predictor.checksum},
        "table_range_ms": [lo, hi], "train_seconds": seconds, "steps": int(trainer.global_step),
        "precision": resolve_precision(trainer_cfg), "device": str(trainer.strategy.root_device),
        "search": search.to_dict(), "data": dataclasses.asdict(data), "probs": module.arch_probs(),
    }
    export_note = "not exported (--no-export)"
    if args.export:
        from hwnas.export import export_subnet, latency_check   # always ship with hwnas: no fallback

        report = export_subnet(space, arch, weights=subnet, out=out / "model.pt", input_shape=shape,
                               predictor=predictor, measure=True)
        export_note = f"exported {report.path} ({report.method})\n" + "\n".join(
            latency_check(report.predicted_ms, report.measured_ms, report.backend, target))
        result["export"] = {"path": str(report.path), "method": report.method,
                            "predicted_ms": report.predicted_ms, "measured_ms": report.measured_ms}
    atomic_write(out / "result.json", json.dumps(result, indent=1) + "\n")

    print("\nderived architecture:")
    print("  " + " ".join(f"{k}={v}" for k, v in arch.items()))
    print(f"expected latency (softmax(alpha))   {expected:8.3f} ms")
    print(f"table latency of the derived subnet {table_ms:8.3f} ms   target {target:.3f} ms "
          f"({100 * (table_ms / target - 1):+.1f} %)")
    print(f"predictor on the derived subnet     {predicted:8.3f} ms   ({predictor.name})")
    print(f"validation accuracy                 {accuracy:8.4f}   (inherited weights, BatchNorm recalibrated on "
          f"{args.bn_batches} batches; {len(val_ds)} images)")
    if finetuned is not None:
        print(f"validation accuracy, fine-tuned     {finetuned:8.4f}   ({args.finetune_epochs} epochs from the "
              "inherited weights; saved subnet_finetuned.pt)")
    print(f"{trainer.global_step} steps in {seconds:.1f} s on {trainer.strategy.root_device}; {export_note}")
    print(f"saved {out / 'arch.json'}, {out / 'subnet.pt'}, {out / 'result.json'}")
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "probs"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
