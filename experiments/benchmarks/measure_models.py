"""Measure the zoo (the model-level benchmark set) end to end on a backend, into a resumable JSONL store.

Each invocation is one *pass*: one process timing every network once with the builder's default protocol. Two
passes run at different times in separate processes give the noise ceiling. ``hwnas build`` measures pass 0
itself; this script adds passes and subsets.

    python -m experiments.benchmarks.measure_models --backend onnxruntime-cpu \\
        --store experiments/builds/onnxruntime-cpu/raw/zoo.jsonl --pass-id 1 [--every 2] [--families resnet,spos]
"""

from __future__ import annotations

import argparse
import warnings


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", required=True, help="torchscript-cpu or onnxruntime-cpu")
    ap.add_argument("--store", required=True, help="JSONL store (created, resumed)")
    ap.add_argument("--pass-id", type=int, default=0, help="which independent pass this process is")
    ap.add_argument("--every", type=int, default=1, help="measure every N-th network of each family (subset)")
    ap.add_argument("--offset", type=int, default=0, help="with --every: start at the offset-th network")
    ap.add_argument("--families", default=None, help="comma-separated subset of families")
    ap.add_argument("--time-budget-min", type=float, default=None, help="stop after this many minutes")
    args = ap.parse_args(argv)
    for category in (DeprecationWarning, FutureWarning):   # torch's jit/ONNX deprecation notices
        warnings.filterwarnings("ignore", category=category)
    import torch

    from hwnas.builder import measure_zoo

    torch.set_num_threads(1)
    done, failed = measure_zoo(args.backend, args.store, args.pass_id, every=args.every, offset=args.offset,
                               families=tuple(args.families.split(",")) if args.families else None,
                               time_budget_min=args.time_budget_min)
    print(f"measured {done} networks ({failed} failed) into {args.store}")


if __name__ == "__main__":
    main()
