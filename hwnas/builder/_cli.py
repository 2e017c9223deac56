"""``hwnas build``, ``hwnas adapt``, ``hwnas list-backends`` (registered into :mod:`hwnas.cli`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable


def _out_dir(parser: argparse.ArgumentParser, help: str) -> None:
    """``--out-dir DIR`` (required), with the old ``--out`` as a deprecated alias (dest ``out``)."""
    from hwnas.cli import DeprecatedAlias

    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out-dir", dest="out", metavar="DIR", help=help)
    group.add_argument("--out", dest="out", metavar="DIR", action=DeprecatedAlias, new="--out-dir",
                       help=argparse.SUPPRESS)


def cmd_build(args: argparse.Namespace) -> int:
    from hwnas.builder._build import build, fit_only, merge_shards
    from hwnas.builder._config import BuildConfig

    try:
        cfg = BuildConfig(backend=args.backend, out=Path(args.out), name=args.name,
                          time_budget_min=args.time_budget_min, shard=args.shard, jitter=args.jitter,
                          space_archs=args.space_archs, register=not args.no_register,
                          compile_workers=args.compile_workers, batch_size=args.batch_size,
                          calibrate=args.batch_size == 1 and not args.no_calibrate)
    except ValueError as e:   # a bad option: say which, no traceback
        print(f"hwnas build: error: {e}", file=sys.stderr)
        return 2
    if args.op_level:   # the op-lookup baseline: every op its own kernel, timed alone
        cfg.fusion_rules, cfg.in_context, cfg.register = [], False, False
    if args.op_level or args.no_calibrate:
        cfg.calibrate = False
    cfg.adaptive_rounds = 0 if args.op_level else args.adaptive_rounds
    if args.adaptive_only:
        from hwnas.builder._build import adaptive_round, build_fusion_rules

        rules = build_fusion_rules(cfg, progress=True)
        for _ in range(max(1, args.adaptive_rounds)):
            if not adaptive_round(cfg, rules):
                break
        print(f"predictor written to {fit_only(cfg)}")
        return 0
    if args.layout_variants:
        from hwnas.builder._variants import layout_variants

        try:
            res = layout_variants(cfg)
        except ValueError as e:   # no layout rules for the backend, no predictor in the build
            print(f"hwnas build: error: {e}", file=sys.stderr)
            return 2
        fitted = ", ".join(f"{t} ({n})" for t, n in sorted(res["variants"].items()))
        print(f"layout variants added to {res['path']}: {fitted}")
        if res["too_few"]:
            print(f"left out (too few measurements; priced as in the backend's layout): {sorted(res['too_few'])}")
        return 0
    if args.calibrate:
        from hwnas.builder._build import calibrate

        cal = calibrate(cfg)
        acc = cal["accuracy"]
        print(f"calibrated on {cal['n_networks']} networks: within ±10% "
              f"{acc['uncalibrated']['within_10pct']:.0%} -> {acc['calibrated_5fold_cv']['within_10pct']:.0%} "
              f"(5-fold cross-validation)")
        return 0
    if args.merge:
        out = merge_shards(cfg)
        print(f"merged shards into {out}")
        return 0
    path = fit_only(cfg) if args.fit_only else build(cfg)
    if path is not None:
        print(f"predictor written to {path}")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from hwnas.builder._adapt import AdaptConfig, adapt

    cfg = AdaptConfig(backend=args.backend, out=Path(args.out), source=args.source,
                      time_budget_min=args.time_budget_min, name=args.name, register=not args.no_register)
    adapt(cfg)
    return 0


def cmd_list_backends(args: argparse.Namespace) -> int:
    import json

    from hwnas.builder._backends import backend_status

    rows = backend_status()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {'available' if r['available'] else 'unavailable: ' + r['reason']}")
    return 0


def register_commands(sub: argparse._SubParsersAction, handlers: dict[str, Callable]) -> None:
    """Add the builder commands (``hwnas list-backends``, ``hwnas build``, ``hwnas adapt``, ...) to the parser.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        The ``hwnas`` parser's subcommands.
    handlers : dict
        Command name -> function of the parsed arguments returning the exit code; filled in here.
    """
    p = sub.add_parser("list-backends", help="list the measurement backends and whether each runs on this machine")
    p.add_argument("--json", action="store_true", help="print JSON")
    handlers["list-backends"] = cmd_list_backends

    p = sub.add_parser("adapt", help="make a predictor for this machine in minutes, from an installed one")
    p.add_argument("--backend", default="torchscript-cpu", help="torchscript-cpu or onnxruntime-cpu")
    _out_dir(p, "output folder (raw probe measurements, predictor/, adapt.json)")
    p.add_argument("--from", dest="source", default=None, metavar="NAME",
                   help="predictor to transfer (default: the most similar installed one of the backend)")
    p.add_argument("--time-budget-min", type=float, default=10.0,
                   help="wall-clock budget in minutes, fitting included (default %(default)s); rerun to resume")
    p.add_argument("--name", default=None, help="predictor name (default: <backend>-<machine>-adapted)")
    p.add_argument("--no-register", action="store_true",
                   help="do not register the predictor in the user's predictor folder for 'auto'")
    handlers["adapt"] = cmd_adapt

    p = sub.add_parser("build", help="measure kernels on a backend and fit a latency predictor")
    p.add_argument("--backend", default="torchscript-cpu", help="torchscript-cpu or onnxruntime-cpu")
    _out_dir(p, "build directory (raw measurements + predictor/)")
    p.add_argument("--name", default=None, help="predictor name (default: <backend>-<cpu>)")
    p.add_argument("--time-budget-min", type=float, default=None,
                   help="stop measuring after N minutes; run again to resume")
    p.add_argument("--shard", default=None, metavar="I/N", help="measure only shard I of N (0-based)")
    p.add_argument("--merge", action="store_true", help="join the kernels.*-of-N.jsonl shards in OUT/raw")
    p.add_argument("--fit-only", action="store_true", help="refit from the raw measurements, measure nothing")
    p.add_argument("--compile-workers", type=int, default=0, metavar="N",
                   help="trace and freeze kernels ahead in N worker processes; this one finishes and times them one "
                        "at a time (TorchScript backends; -1: the usable cores minus one; default 0: compile each "
                        "kernel right before timing it)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="batch every kernel is timed at (default 1); a build at another batch is not calibrated "
                        "(the zoo networks are timed at batch 1)")
    p.add_argument("--jitter", type=int, default=1, help="perturbed neighbours per prior kernel")
    p.add_argument("--space-archs", type=int, default=6, help="random subnets per search space in the prior")
    p.add_argument("--adaptive-rounds", type=int, default=1,
                   help="rounds of adaptive sampling (neighbours of the worst-predicted kernels) after the first fit")
    p.add_argument("--adaptive-only", action="store_true",
                   help="run the adaptive rounds on an existing build, then refit (and recalibrate when raw/zoo.jsonl exists)")
    p.add_argument("--calibrate", action="store_true",
                   help="time the zoo networks end to end (resumed) and fit the calibration into OUT/predictor")
    p.add_argument("--layout-variants", action="store_true",
                   help="on an existing build: measure the kernels that read a tensor outside the backend's layout "
                        "(a pool of a concat on torchscript-cpu) on such an input, add them to OUT/predictor as "
                        "their own types and refit its calibration when OUT/raw has zoo measurements")
    p.add_argument("--no-calibrate", action="store_true", help="fit kernels only, skip the zoo and calibration")
    p.add_argument("--no-register", action="store_true",
                   help="do not register the predictor in the user's predictor folder for 'auto'")
    p.add_argument("--op-level", action="store_true",
                   help="no fusion, every operator timed in isolation: the op-lookup baseline of the accuracy "
                        "benchmark, not a predictor to deploy")
    handlers["build"] = cmd_build
