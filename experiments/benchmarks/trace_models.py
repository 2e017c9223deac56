"""Record every zoo network as its backend runs it, into a resumable JSONL store.

``--backend onnxruntime-cpu`` (default): per optimised node its median time and the hwnas op it is named after,
plus the layout conversions (:func:`hwnas.builder.trace_onnxruntime`). ``--backend torchscript-cpu``: the
convolution and eltwise primitives oneDNN printed, the profiler's ATen events and the unprofiled run
(:func:`hwnas.builder.trace_torchscript_network`); ``experiments/benchmarks/ts_in_network.py`` reads them.

Each invocation is one *pass* (one process); the traces are the raw material of in-network kernel labels and of
the layout-conversion rules (``experiments/benchmarks/kernel_context.py`` reads them).

    python -m experiments.benchmarks.trace_models --store runs/context/traces.jsonl --pass-id 0 --every 4
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="JSONL store (created, resumed)")
    ap.add_argument("--pass-id", type=int, default=0, help="which independent pass this process is")
    ap.add_argument("--every", type=int, default=4, help="every N-th network of each family")
    ap.add_argument("--offset", type=int, default=0, help="start at the offset-th network of each family")
    ap.add_argument("--runs", type=int, default=None,
                    help="profiled runs per network (default: 20 on onnxruntime-cpu after 5 warm-up runs; 5 under "
                         "oneDNN verbose and 5 under the profiler on torchscript-cpu, after 10)")
    ap.add_argument("--backend", choices=("onnxruntime-cpu", "torchscript-cpu"), default="onnxruntime-cpu")
    args = ap.parse_args(argv)
    from hwnas.files import append_jsonl, read_jsonl

    store = Path(args.store)
    store.parent.mkdir(parents=True, exist_ok=True)
    # before the warning filters below: a torn last line (a pass killed mid-write) is dropped with a warning and
    # cut, so the next trace starts a clean line; any other bad line is an error naming it
    done = {(r["model"], r["pass"]) for r in read_jsonl(store, repair=True, what="a trace record")}
    for category in (DeprecationWarning, FutureWarning, UserWarning):   # torch's export notices
        warnings.filterwarnings("ignore", category=category)
    import torch
    from tqdm.auto import tqdm

    from hwnas.builder import trace_onnxruntime, trace_torchscript_network, zoo
    from hwnas.device import describe, fingerprint

    torch.set_num_threads(1)
    seen: dict[str, int] = {}
    todo = []
    for m in zoo():
        seen[m.family] = seen.get(m.family, -1) + 1
        if seen[m.family] % args.every == args.offset % args.every and (m.key, args.pass_id) not in done:
            todo.append(m)
    device = describe(fingerprint())
    failed = 0
    for m in tqdm(todo, desc=f"tracing pass {args.pass_id}"):
        try:
            if args.backend == "onnxruntime-cpu":
                record = trace_onnxruntime(m.build(), m.input_shape, runs=args.runs or 20, warmup=5).to_dict()
            else:
                record = trace_torchscript_network(m.build(), m.input_shape, runs=args.runs or 5).to_record()
        except Exception as e:  # noqa: BLE001 - one network that fails must not end the pass
            failed += 1
            print(f"{m.key}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        append_jsonl(store, {"model": m.key, "family": m.family, "pass": args.pass_id, "device": device,
                             "backend": args.backend, "input_shape": list(m.input_shape), **record})
    print(f"traced {len(todo) - failed} networks ({failed} failed) into {store}")


if __name__ == "__main__":
    main()
