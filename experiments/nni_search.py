"""NNI experiment launch: multi-trial search under a latency budget with NNI's manager, web UI and strategies.

The command line of :func:`hwnas.nas.run_nni_search` (the library runs the search; this module reads the
configuration): a ``NasExperiment`` over the SPOS or ProxylessNAS space, NNI's ``Random`` or ``RegularizedEvolution``
strategy behind hwnas's latency filter, each accepted architecture trained in an NNI trial through NNI's local
training service (manager and web UI on 127.0.0.1) or, with ``engine: sequential``, in this process. The search ends
with the top-k table, ``search.png``, ``topk.json`` and the best network saved (as ``experiments.random_search``).

    python -m experiments.nni_search                                    # digits, SPOS, 8 random trials, web UI
    python -m experiments.nni_search --config experiments/configs/nni_search.yaml --strategy evolution
    python -m experiments.nni_search --engine sequential --trials 3 --set training.max_steps=20
    python -m experiments.nni_search --resume EXPERIMENT_ID             # continue a stopped experiment
    python -m experiments.nni_search --keep-ui                          # web UI stays up after the report

Configuration: a YAML file (sections ``space``, ``budget``, ``strategy``, ``trials``, ``training``, ``data``,
``engine``, ``training_service``; see ``experiments/configs/nni_search.yaml``), then ``--set section.key=value``
and the shortcut options, which win. ``training_service`` is NNI's own training-service config, passed through:
``platform: local`` by default; ``remote``, ``kubeflow``, ... scale out (NNI's documentation lists their keys).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from experiments._cli import add_out_dir_arg, apply_override, load_sections, read_yaml
from hwnas.data import DataConfig
from hwnas.nas import (ENGINES, STRATEGIES, BudgetSection, EngineSection, NniSearchConfig, SpaceSection,
                       StrategySection, TrialsSection, run_nni_search)
from hwnas.train import TrainConfig

DEFAULT_CONFIG = Path(__file__).with_name("configs") / "nni_search.yaml"


# -- configuration: YAML and --set, at the command-line edge -------------------------------------------------------
_SECTIONS = {"space": SpaceSection, "budget": BudgetSection, "strategy": StrategySection, "trials": TrialsSection,
             "training": TrainConfig, "data": DataConfig, "engine": EngineSection}


def config_from_dict(doc: Mapping[str, Any]) -> NniSearchConfig:
    """An :class:`NniSearchConfig` from a nested mapping (a YAML document); unknown keys are an error naming them."""
    if "out" in doc:   # the old spelling, kept for one release
        if "out_dir" in doc:
            raise ValueError("the config sets both out and out_dir; out is the old spelling of out_dir: keep one")
        print("note: the config key 'out' is deprecated and will be removed in the next release; use 'out_dir'",
              file=sys.stderr)
        doc = {("out_dir" if k == "out" else k): v for k, v in doc.items()}
    return load_sections(NniSearchConfig, _SECTIONS, doc)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> NniSearchConfig:
    """The configuration of a YAML file (``None``: the dataclass defaults) with ``section.key=value`` overrides."""
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            doc = read_yaml(path, "sections")
        except ValueError as err:
            raise ValueError(f"config file {err}") from None
    for assignment in overrides:
        apply_override(doc, assignment)
    return config_from_dict(doc)


# -- command line --------------------------------------------------------------------------------------------------
_SHORTCUTS = {"space": "space.name", "width_mult": "space.width_mult", "strategy": "strategy.name",
              "budget_ms": "budget.max_ms", "trials": "trials.max_trial_number", "concurrency": "trials.concurrency",
              "engine": "engine.name", "port": "engine.port", "epochs": "training.epochs",
              "max_steps": "training.max_steps", "data": "data.name", "data_root": "data.root", "out_dir": "out_dir",
              "seed": "strategy.seed", "resume": "resume", "keep_ui": "engine.keep_ui"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.nni_search", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", metavar="YAML", default=str(DEFAULT_CONFIG),
                   help="YAML config (default: %(default)s)")
    p.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override one config value (YAML syntax), e.g. training.lr=0.1; repeatable")
    p.add_argument("--space", choices=("spos", "proxyless"))
    p.add_argument("--width-mult", type=float, metavar="W")
    p.add_argument("--strategy", choices=STRATEGIES)
    p.add_argument("--budget-ms", type=float, metavar="MS", help="latency budget, predicted ms")
    p.add_argument("--trials", type=int, metavar="N", help="trials to train (max_trial_number)")
    p.add_argument("--concurrency", type=int, metavar="N", help="trials at once (training service)")
    p.add_argument("--engine", choices=ENGINES)
    p.add_argument("--port", type=int, help="web UI / manager port (a free one is used when taken)")
    p.add_argument("--epochs", type=int, metavar="N")
    p.add_argument("--max-steps", type=int, metavar="N", help="optimiser steps per trial at most")
    p.add_argument("--data", choices=("digits", "cifar10", "imagefolder"))
    p.add_argument("--data-root", metavar="DIR", help="CIFAR-10 or image-folder directory (never downloaded)")
    p.add_argument("--seed", type=int)
    add_out_dir_arg(p, None, "results folder (default: the config's out_dir, runs/nni_search)")
    p.add_argument("--resume", metavar="EXPERIMENT_ID", help="resume a stopped experiment in the same --out-dir")
    p.add_argument("--keep-ui", action="store_true", default=None,
                   help="keep the manager and web UI up after the report, until Ctrl-C")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hwnas.errors import EXIT_ERROR, HwnasError

    overrides = list(args.overrides)
    for dest, key in _SHORTCUTS.items():
        value = getattr(args, dest)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    try:
        cfg = load_config(args.config, overrides)
        result = run_nni_search(cfg)
    except (HwnasError, ValueError, TypeError) as err:   # a hwnas error, or a bad configuration value
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    per = result.seconds_per_trial()
    print(f"\nexperiment {result.experiment_id}: {len(result.records)} trials in {result.wall_seconds:.1f} s"
          + (f", {per['wall_seconds']:.1f} s per trial (submit to end)" if "wall_seconds" in per else "")
          + (f", {per['seconds']:.1f} s inside the trial" if "seconds" in per else ""))
    if result.web_ui:
        print(f"the web UI was at {result.web_ui} while the experiment ran (--keep-ui keeps it up after the report); "
              f"NNI's records: {(result.out_dir / 'nni' / result.experiment_id).resolve()}")
    print(f"results: {result.out_dir.resolve()}")
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
