"""Random multi-trial search under a latency budget, without the NNI manager (the README's main job).

Samples architectures of a search space uniformly among those whose predicted latency meets the budget (the
latency table rejects the others before any training), trains each for a few epochs, evaluates it, appends the
result to ``OUT_DIR/trials.jsonl``, and ends with the top-k table, ``search.png``, ``topk.json`` and the best
network saved (and exported to TorchScript). Running the same command again resumes: finished trials are not
repeated, and ``--trials`` may grow.

    python -m experiments.random_search                          # the default: digits, proxyless, 8 trials x 2 epochs
    python -m experiments.random_search --config experiments/configs/random_search.yaml
    python -m experiments.random_search --data cifar10 --data-root ~/data/cifar10 --trials 20 --epochs 5

A YAML file given with ``--config`` sets the defaults (keys are the option names, with ``_`` or ``-``); options
given on the command line win.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from experiments._cli import add_data_args, add_out_dir_arg, parse_with_config
from hwnas.nas import DEFAULT_QUANTILE

DESCRIPTION = __doc__.split("\n\n")[0]
EPILOG = """\
budget: by default the budget is the median predicted latency of the space (--budget-quantile 0.5), so about half
of the architectures pass; --budget-ms sets it in milliseconds of the predictor's device. The run prints the space's
latency range and the acceptance rate.

output (OUT_DIR): config.json, trials.jsonl (one line per finished trial: arch, accuracy as "default",
latency_ms, macs, params, ...), trials/<i>.pt (weights of the current top-k), topk.json, search.png,
best/arch.json, best/state_dict.pt, best/model.pt (TorchScript).

resume: rerun the same command. A different configuration in the same OUT_DIR is refused; --force discards the
old results and starts over.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line (also the list of keys a YAML config may set)."""
    p = argparse.ArgumentParser(prog="python -m experiments.random_search", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="YAML", help="YAML file of option defaults (keys = option names)")
    add_out_dir_arg(p, "runs/random_search", "results folder; rerun to resume (%(default)s)")
    p.add_argument("--force", action="store_true", help="discard the results already in OUT_DIR and start over")

    g = p.add_argument_group("search")
    g.add_argument("--space", metavar="NAME", default="proxyless", help="search space: proxyless or spos (%(default)s)")
    g.add_argument("--width-mult", metavar="W", type=float, default=0.35, help="channel width multiplier (%(default)s)")
    g.add_argument("--predictor", metavar="NAME", default="auto",
                   help="latency predictor: auto (the one of this machine), auto:BACKEND, a name or a directory "
                        "(%(default)s)")
    g.add_argument("--adapt-if-needed", metavar="MIN", type=float, default=None,
                   help="with --predictor auto: when no predictor matches this machine, adapt the closest one first "
                        "(at most MIN minutes, registered for the next run) instead of searching with another "
                        "machine's latencies")
    g.add_argument("--budget-ms", metavar="MS", type=float, default=None,
                   help="latency budget, predicted ms (default: the --budget-quantile of the space)")
    g.add_argument("--budget-min-ms", metavar="MS", type=float, default=None, help="optional lower latency bound, ms")
    g.add_argument("--budget-quantile", metavar="Q", type=float, default=DEFAULT_QUANTILE,
                   help="without --budget-ms: this quantile of the space's latencies is the budget (%(default)s)")
    g.add_argument("--trials", metavar="N", type=int, default=8, help="architectures to train in all (%(default)s)")
    g.add_argument("--seed", metavar="N", type=int, default=0,
                   help="seeds architectures, initialisations, training (%(default)s)")
    g.add_argument("--top-k", metavar="K", type=int, default=5, help="rows of the final table (%(default)s)")
    g.add_argument("--keep-weights", choices=("topk", "all"), default="topk",
                   help="keep the weights of the current top-k trials only, or of all (%(default)s)")

    add_data_args(p)

    g = p.add_argument_group("training (per trial)")
    g.add_argument("--epochs", metavar="N", type=int, default=2, help="passes over the training data (%(default)s)")
    g.add_argument("--batch-size", metavar="N", type=int, default=64, help="(%(default)s)")
    g.add_argument("--lr", metavar="LR", type=float, default=0.05,
                   help="peak SGD learning rate, cosine decay (%(default)s)")
    g.add_argument("--max-steps", metavar="N", type=int, default=None,
                   help="cap on optimiser steps per trial (quick runs)")
    g.add_argument("--device", metavar="DEV", default="cpu", help="cpu, cuda, ... (%(default)s)")
    g.add_argument("--threads", metavar="N", type=int, default=None, help="torch CPU threads (default: torch's choice)")

    g = p.add_argument_group("report")
    g.add_argument("--no-export", dest="export", action="store_false", help="do not export best/model.pt")
    g.add_argument("--no-measure", dest="measure", action="store_false",
                   help="do not measure the exported file's latency on this machine")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    g.add_argument("--json", action="store_true", help="also print a JSON summary on the last line")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_with_config(build_parser(), argv)


def to_config(args: argparse.Namespace) -> Any:
    """The :class:`~hwnas.nas._random_search.RandomSearchConfig` of the parsed options."""
    from hwnas.data import DataConfig
    from hwnas.nas import LatencyBudget, RandomSearchConfig
    from hwnas.train import TrainConfig

    budget = None
    if args.budget_ms is not None:
        budget = LatencyBudget(float(args.budget_ms), None if args.budget_min_ms is None else float(args.budget_min_ms))
    elif args.budget_min_ms is not None:
        raise ValueError("--budget-min-ms needs --budget-ms")
    data = DataConfig(name=args.data, root=args.data_root, image_size=args.image_size, batch_size=args.batch_size,
                      num_workers=args.workers)   # the split stays fixed (seed 0) whatever the search seed
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_steps=args.max_steps,
                        device=args.device, seed=args.seed)
    return RandomSearchConfig(out_dir=str(args.out_dir), space=args.space, space_config={"width_mult": args.width_mult},
                              predictor=args.predictor, budget=budget, budget_quantile=args.budget_quantile,
                              trials=args.trials, data=data, train=train, seed=args.seed, top_k=args.top_k,
                              keep_weights=args.keep_weights, export=args.export, measure=args.measure)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from hwnas.errors import EXIT_ERROR, HwnasError

    try:
        if args.adapt_if_needed is not None and str(args.predictor).partition(":")[0] == "auto":
            from hwnas.builder import ensure_predictor

            args.predictor = ensure_predictor(str(args.predictor).partition(":")[2] or "torchscript-cpu",
                                              time_budget_min=args.adapt_if_needed)
        cfg = to_config(args)
    except (ValueError, TypeError, HwnasError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    import torch

    from hwnas.nas import run_random_search

    if args.threads:
        torch.set_num_threads(int(args.threads))
    start = time.perf_counter()
    try:   # NNI's harmless import notices are silenced by hwnas.nas._compat; every other warning shows
        result = run_random_search(cfg, progress=args.progress, fresh=args.force)
    except HwnasError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    wall = time.perf_counter() - start
    ran = set(result.ran)
    trained = [r["seconds"] for r in result.records if r["trial"] in ran and r.get("seconds") is not None]
    per = f", {sum(trained) / len(trained):.1f} s of training per trial" if trained else ""
    print(f"\n{len(result.records)} trials ({len(ran)} run now, {result.resumed} resumed) in {wall:.1f} s{per}")
    print(f"results: {result.out_dir.resolve()}  (table above; topk.json, search.png, best/)")
    if args.json:
        best = result.best
        print(json.dumps({"out_dir": str(result.out_dir.resolve()), "trials": len(result.records), "ran": len(ran),
                          "resumed": result.resumed, "seconds": wall, "budget_ms": result.budget.max_ms,
                          "acceptance_rate": result.acceptance_rate, "latency_range_ms": list(result.latency_range),
                          "best": None if best is None else {k: best[k] for k in ("trial", "arch", "default",
                                                                                 "latency_ms", "macs", "params")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
