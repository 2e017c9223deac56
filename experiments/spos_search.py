"""SPOS under a latency budget: train a single-path supernet, then search it by evolution.

Phases (Guo et al., "Single Path One-Shot NAS", ECCV 2020, with predicted latency in place of FLOPs):

1. Supernet training (checkpointed every epoch and on interruption; ``--resume`` continues): every step
   trains one path, drawn uniformly among the architectures within the budget.
2. Evolutionary search over the trained supernet, only candidates within the budget; every candidate gets its
   own copy of the weights with BatchNorm statistics recalibrated on training batches before its validation
   accuracy is measured.
3. Outputs in ``--out-dir``: ``pareto.csv`` (and a printed table) of accuracy vs predicted latency, ``pareto.png``,
   ``history.csv`` (every candidate), ``search.json``, ``best_arch.json`` (with the space's configuration and
   input shape, for ``hwnas export --arch``), ``best_subnet.pt`` (the best architecture's state dict: inherited
   weights, recalibrated BatchNorm) and, when ``hwnas.export`` is installed, ``best_subnet.torchscript.pt``
   with its export report.

    python -m experiments.spos_search --out-dir runs/spos    # digits, 32 px, width 0.25: ~30 min on one CPU core
    python -m experiments.spos_search --config experiments/configs/spos.yaml --out-dir runs/spos --resume
    python -m experiments.spos_search --data cifar10 --data-root ~/data/cifar10 --devices 4 --budget-ms 3.5 ...

Without ``--budget-ms`` the budget is the fastest latency of the space plus ``--budget-fraction`` (0.35) of its
range (:meth:`hwnas.nas.LatencyBudget.from_range`, the one-shot rule). YAML keys are the long option names with
``_`` (``budget_ms: 3.2``); command-line options override them.
The defaults are those of the reported digits run (the supernet needs about 2000 steps at this size before
its paths agree and the loss leaves chance level; 60 epochs with the LR decayed to zero by then stayed near
chance).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from experiments._cli import DeprecatedAlias, add_data_args, add_out_dir_arg, parse_with_config
from hwnas.nas import DEFAULT_RANGE_FRACTION
from hwnas.files import atomic_write

DEFAULT_PREDICTOR = "auto"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.spos_search", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML file of option defaults (keys: long option names with '_')")
    add_out_dir_arg(p, "runs/spos", "output folder (checkpoints in OUT_DIR/checkpoints)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("budget")
    g.add_argument("--predictor", default=DEFAULT_PREDICTOR, help="latency predictor: auto (the one of this machine), auto:BACKEND, a name or a directory "
                        "(%(default)s)")
    g.add_argument("--budget-ms", type=float, help="latency budget, ms (predicted)")
    g.add_argument("--min-ms", type=float, help="optional lower latency bound, ms")
    g.add_argument("--budget-fraction", type=float, default=DEFAULT_RANGE_FRACTION,
                   help="without --budget-ms: fastest + fraction * (slowest - fastest) (%(default)s)")
    g = add_data_args(p)   # --data, --data-root, --image-size, --workers: the options of every entry point
    p.set_defaults(workers=4)   # SPOS keeps workers busy on datasets that are not kept resident
    g.add_argument("--num-workers", dest="workers", type=int, action=DeprecatedAlias, new="--workers",
                   help=argparse.SUPPRESS)
    g.add_argument("--width-mult", type=float, default=0.25)
    g = p.add_argument_group("supernet training")
    g.add_argument("--epochs", type=int, default=200,
                   help="a supernet needs thousands of steps before its paths agree (digits: ~2000)")
    g.add_argument("--max-steps", type=int, help="stop training after this many steps")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--lr", type=float, default=0.02, help="peak SGD LR (the paper: 0.5 at batch 1024)")
    g.add_argument("--weight-decay", type=float, default=4e-5)
    g.add_argument("--label-smoothing", type=float, default=0.0, help="the paper: 0.1")
    g.add_argument("--schedule", default="linear", choices=["linear", "cosine"])
    g.add_argument("--warmup-steps", type=int, default=0)
    g.add_argument("--accelerator", default="auto", choices=["auto", "gpu", "cuda", "cpu"])
    g.add_argument("--devices", default="1", help="devices per node (an int or 'auto')")
    g.add_argument("--num-nodes", type=int, default=1)
    g.add_argument("--strategy", default="auto",
                   help="Lightning strategy; 'auto' becomes DDP with unused parameters on several devices")
    g.add_argument("--precision", help="Lightning precision (default: bf16-mixed on CUDA, 32-true on CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile every block (once per candidate)")
    g.add_argument("--no-channels-last", action="store_true")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    g.add_argument("--log-every", type=int, default=50, help="logging interval, steps")
    g = p.add_argument_group("evolution")
    g.add_argument("--population", type=int, default=50)
    g.add_argument("--generations", type=int, default=20)
    g.add_argument("--parents", type=int, default=10)
    g.add_argument("--mutation-prob", type=float, default=0.1)
    g.add_argument("--n-mutation", type=int, default=25)
    g.add_argument("--n-crossover", type=int, default=25)
    g.add_argument("--bn-batches", type=int, default=20, help="training batches of BN recalibration per candidate")
    g.add_argument("--no-recalibrate", action="store_true", help="evaluate with the supernet's shared BN statistics")
    g.add_argument("--no-export", action="store_true", help="skip the TorchScript export of the best subnet")
    g.add_argument("--no-measure", action="store_true", help="export without measuring the exported file")
    g.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options from ``argv``, with defaults from ``--config`` (YAML) when given."""
    return parse_with_config(build_parser(), argv)


def _devices(value: Any) -> int | str:
    return value if value == "auto" else int(value)


def configs(args: argparse.Namespace) -> dict[str, Any]:
    """The library configs of a run: trainer, supernet and evolution."""
    from hwnas.oneshot import EvolutionConfig, SupernetConfig, TrainerConfig

    devices = _devices(args.devices)
    strategy = args.strategy
    if strategy == "auto" and (args.num_nodes > 1 or devices == "auto" or devices > 1):
        strategy = "ddp_find_unused_parameters_true"  # one path per step: the other candidates get no gradient
    trainer = TrainerConfig(max_epochs=args.epochs, max_steps=args.max_steps, accelerator=args.accelerator,
                            devices=devices, num_nodes=args.num_nodes, strategy=strategy, precision=args.precision,
                            channels_last=False if args.no_channels_last else None, compile=args.compile,
                            checkpoint_dir=str(Path(args.out_dir) / "checkpoints"), resume=args.resume, seed=args.seed,
                            progress=not args.no_progress, log_every_n_steps=args.log_every)
    supernet = SupernetConfig(lr=args.lr, weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                              schedule=args.schedule, warmup_steps=args.warmup_steps, seed=args.seed)
    evolution = EvolutionConfig(population=args.population, generations=args.generations, parents=args.parents,
                                mutation_prob=args.mutation_prob, n_mutation=args.n_mutation,
                                n_crossover=args.n_crossover, seed=args.seed)
    return {"trainer": trainer, "supernet": supernet, "evolution": evolution}


def pareto_table(result: Any, budget_ms: float) -> str:
    """The Pareto front as a text table."""
    lines = [f"{'accuracy':>9s} {'latency ms':>11s} {'of budget':>9s} {'M MACs':>8s} {'params':>9s} {'gen':>4s}"]
    for c in result.pareto:
        lines.append(f"{c.accuracy:9.4f} {c.latency_ms:11.4f} {c.latency_ms / budget_ms:9.1%} "
                     f"{c.macs / 1e6:8.2f} {c.params:9d} {c.generation:4d}")
    return "\n".join(lines)


def plot_pareto(result: Any, path: Path, title: str) -> None:
    """Accuracy vs predicted latency of every candidate, the Pareto front, the budget and the best."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    gens = np.array([c.generation for c in result.history])
    sc = ax.scatter([c.latency_ms for c in result.history], [c.accuracy for c in result.history], c=gens,
                    cmap="viridis", s=14, alpha=0.7, label="candidates")
    fig.colorbar(sc, ax=ax, label="generation")
    ax.step([c.latency_ms for c in result.pareto], [c.accuracy for c in result.pareto], where="post", color="C3",
            lw=1.5, label="Pareto front")
    ax.axvline(result.budget["max_ms"], color="k", ls="--", lw=1, label=f"budget {result.budget['max_ms']:.3g} ms")
    if result.budget.get("min_ms") is not None:
        ax.axvline(result.budget["min_ms"], color="k", ls=":", lw=1)
    ax.scatter([result.best.latency_ms], [result.best.accuracy], marker="*", s=160, color="C3", zorder=5,
               label="best")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("validation accuracy (BN recalibrated)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="best", fontsize=8, framealpha=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """Train, search and write the outputs; the summary dict (``None`` on non-zero DDP ranks)."""
    import pytorch_lightning as pl

    import hwnas
    import search_spaces as ss
    from hwnas.data import load_dataset, num_classes
    from hwnas.nas import BudgetedSampler, LatencyBudget
    from hwnas.oneshot import SposSupernetModule, SubnetEvaluator, evolve, fit, make_loader

    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    # Cheap checks first: the data is read (a wrong path fails here, in seconds) before the space is priced.
    train_ds = load_dataset(args.data, "train", root=args.data_root, image_size=args.image_size)
    val_ds = load_dataset(args.data, "val", root=args.data_root, image_size=args.image_size)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfgs = configs(args)
    progress = not args.no_progress

    # Then the budget: an infeasible budget fails before anything is trained.
    space = ss.create_space("spos", input_size=args.image_size, num_classes=num_classes(args.data, args.data_root),
                            width_mult=args.width_mult)
    predictor = hwnas.load_latency_predictor(args.predictor)
    table = hwnas.LatencyTable.build(space, predictor, input_shape=(1, 3, args.image_size, args.image_size),
                                     cache_dir=out / "tables")
    lo, hi = table.min_latency(), table.max_latency()
    budget = (LatencyBudget(float(args.budget_ms), args.min_ms) if args.budget_ms is not None
              else LatencyBudget.from_range(table, args.budget_fraction, min_ms=args.min_ms))
    sampler = BudgetedSampler(table, budget)
    sampler.check_feasible()
    print(f"space spos (width {args.width_mult}, {args.image_size}px): predicted latency {lo:.4f}..{hi:.4f} ms on "
          f"{predictor.name}; budget {sampler.budget}; {sampler.acceptance_rate():.1%} of uniform archs fit")

    channels_last = cfgs["trainer"].uses_channels_last
    train_loader = make_loader(train_ds, args.batch_size, train=True, seed=args.seed, num_workers=args.workers,
                               channels_last=channels_last)
    val_loader = make_loader(val_ds, 2 * args.batch_size, train=False, num_workers=args.workers,
                             channels_last=channels_last)

    # Phase 1: supernet training.
    pl.seed_everything(args.seed, verbose=False)
    module = SposSupernetModule(space, sampler, cfgs["supernet"])
    t0 = time.perf_counter()
    trainer = fit(module, train_loader, val_loader, cfgs["trainer"])
    train_s = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    print(f"supernet: {trainer.global_step} steps in {train_s:.1f} s; last metrics "
          + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))

    # Phase 2: evolution, BN recalibrated per candidate.
    device = trainer.strategy.root_device
    module.to(device)
    bn_loader = make_loader(train_ds, args.batch_size, train=True, seed=args.seed + 1, num_workers=args.workers,
                            channels_last=channels_last)
    if hasattr(bn_loader, "to"):
        bn_loader.to(device)
    evaluator = SubnetEvaluator(module.supernet, bn_loader, val_loader, n_bn_batches=args.bn_batches, device=device,
                                recalibrate=not args.no_recalibrate)
    t0 = time.perf_counter()
    result = evolve(space, evaluator, sampler, cfgs["evolution"], progress=progress)
    search_s = time.perf_counter() - t0
    best = result.best

    # Phase 3: outputs.
    result.write_csv(out / "pareto.csv", "pareto")
    result.write_csv(out / "history.csv", "history")
    best_net = evaluator.subnet(best.arch).cpu().float()
    torch.save(best_net.state_dict(), out / "best_subnet.pt")
    from hwnas.export import arch_document

    atomic_write(out / "best_arch.json", json.dumps(arch_document(  # what `hwnas export --arch` needs
        "spos", space.config, best.arch, input_shape=(1, 3, args.image_size, args.image_size)), indent=1) + "\n")
    title = (f"SPOS {args.data} width {args.width_mult}: {len(result.history)} candidates, "
             f"{predictor.name}")
    plot_pareto(result, out / "pareto.png", title)
    summary: dict[str, Any] = {
        "best_arch": best.arch, "accuracy": best.accuracy, "predicted_latency_ms": best.latency_ms,
        "budget_ms": sampler.budget.max_ms, "min_ms": sampler.budget.min_ms, "macs": best.macs,
        "params": best.params, "space_latency_range_ms": [lo, hi], "predictor": predictor.name,
        "steps": trainer.global_step, "train_seconds": train_s, "search_seconds": search_s,
        "candidates": len(result.history), "supernet_metrics": metrics, "choice_counts": module.choice_counts,
        "args": {k: v for k, v in vars(args).items()}}
    if not args.no_export:
        from hwnas.export import export_subnet   # always ships with hwnas: an import error is a real error

        report = export_subnet(space, best.arch, out=out / "best_subnet.torchscript.pt",
                               weights=best_net.state_dict(), predictor=predictor, measure=not args.no_measure)
        summary["export"] = report.to_dict()
        print(report.table())
    summary["wall_seconds"] = time.perf_counter() - started
    atomic_write(out / "search.json", json.dumps({"summary": summary, "search": result.to_dict()}, indent=1) + "\n")
    print("\nPareto front (accuracy vs predicted latency):")
    print(pareto_table(result, sampler.budget.max_ms))
    print(f"\nbest under {sampler.budget}: accuracy {best.accuracy:.4f}, predicted {best.latency_ms:.4f} ms "
          f"({best.latency_ms / sampler.budget.max_ms:.1%} of the budget), {best.macs / 1e6:.2f} M MACs, "
          f"{best.params} params\n{json.dumps(best.arch)}")
    print(f"train {train_s:.1f} s, search {search_s:.1f} s ({len(result.history)} candidates), "
          f"wall {summary['wall_seconds']:.1f} s; outputs in {out}")
    if "export" in summary:
        from hwnas.export import latency_check

        print("\n".join(latency_check(summary["export"].get("predicted_ms"), summary["export"].get("measured_ms"),
                                     summary["export"].get("backend"), sampler.budget.max_ms)))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except Exception as err:  # noqa: BLE001 - hwnas errors name the problem; show them without a traceback
        from hwnas.errors import EXIT_ERROR, HwnasError

        if isinstance(err, HwnasError):
            print(f"error: {err}", file=sys.stderr)
            return EXIT_ERROR
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
