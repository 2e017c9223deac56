"""TorchScript's oneDNN group rules against its compiled graphs of the zoo (issue 14).

For every zoo network (``--every N``: every N-th) it compiles the model as the ``torchscript-cpu`` backend does
(trace, freeze, ``optimize_for_inference``), counts the ``aten::to_mkldnn`` and ``aten::to_dense`` nodes of the
compiled graph, and compares them with the conversions :func:`hwnas.kernels.conversions` predicts from the op graph
under :data:`hwnas.kernels.TORCHSCRIPT_ONEDNN`. Per family it prints the share of networks whose two predicted
counts both equal the compiled ones, the conversions per network, and the kernels whose first op reads a plain
tensor (:func:`hwnas.kernels.plain_input_heads`). Nothing is timed, so any core will do.

    python -m experiments.benchmarks.ts_layout_rules [--every 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import warnings
from typing import Any


def compiled_conversions(model: Any, shape: tuple[int, ...]) -> dict[str, int]:
    """``to_backend`` / ``to_plain``: the ``aten::to_mkldnn`` / ``aten::to_dense`` nodes of the compiled model."""
    import torch

    with torch.no_grad():
        ts = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, torch.randn(shape),
                                                                               check_trace=False)))
    kinds = collections.Counter(n.kind() for n in ts.graph.nodes())
    return {"to_backend": kinds["aten::to_mkldnn"], "to_plain": kinds["aten::to_dense"]}


def check(every: int = 1, offset: int = 0, progress: bool = True,
          families: Any = None) -> list[dict[str, Any]]:
    """One row per network (every ``every``-th of each family from ``offset``; only ``families`` when given):
    predicted and compiled conversion counts, plain-input heads by op."""
    import gc

    from tqdm.auto import tqdm

    from hwnas.builder import zoo
    from hwnas.graph import capture
    from hwnas.kernels import TORCHSCRIPT_ONEDNN, LayoutRules, conversions, plain_input_heads

    rules = LayoutRules.from_dict(TORCHSCRIPT_ONEDNN)
    rows = []
    seen: dict[str, int] = collections.defaultdict(lambda: -1)
    models = []
    for m in zoo():   # every N-th of each family, as measure_zoo keeps them
        seen[m.family] += 1
        if seen[m.family] % every == offset % every and (not families or m.family in families):
            models.append(m)
    for m in tqdm(models, desc="zoo networks", disable=not progress):
        net = m.build()
        graph = capture(net, "torch", m.input_shape)
        pred = conversions(graph, rules)
        real = compiled_conversions(net, m.input_shape)
        heads = collections.Counter(graph[h].op for h in plain_input_heads(graph, rules))
        rows.append({"model": m.key, "family": m.family, "predicted": pred, "compiled": real,
                     "exact": pred == real, "plain_heads": dict(heads)})
        del net, graph
        gc.collect()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'family':14s} {'n':>4s} {'exact':>6s} {'to_mkldnn pred/real':>20s} {'to_dense pred/real':>19s} "
            f"{'plain heads/net':>16s}  most common plain heads")
    lines = [head, "-" * len(head)]
    for fam in sorted({r["family"] for r in rows}) + ["ALL"]:
        rs = [r for r in rows if fam in ("ALL", r["family"])]
        n = len(rs)
        exact = 100.0 * sum(r["exact"] for r in rs) / n
        mean = {k: {s: sum(r[s][k] for r in rs) / n for s in ("predicted", "compiled")}
                for k in ("to_backend", "to_plain")}
        heads: collections.Counter = collections.Counter()
        for r in rs:
            heads.update(r["plain_heads"])
        top = ", ".join(f"{op} {c / n:.1f}" for op, c in heads.most_common(3))
        lines.append(f"{fam:14s} {n:4d} {exact:5.0f}% {mean['to_backend']['predicted']:10.1f}/"
                     f"{mean['to_backend']['compiled']:<9.1f} {mean['to_plain']['predicted']:9.1f}/"
                     f"{mean['to_plain']['compiled']:<9.1f} {sum(heads.values()) / n:16.1f}  {top}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, default=2, help="check every N-th network of each zoo family (default: the half the zoo passes measure)")
    ap.add_argument("--offset", type=int, default=0, help="first zoo network to check")
    ap.add_argument("--families", nargs="*", default=None, help="only these zoo families (default: all)")
    ap.add_argument("--json", default=None, help="write the per-network comparison here")
    args = ap.parse_args(argv)
    if args.every < 1:
        raise SystemExit(f"error: --every must be >= 1, got {args.every}")
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    import torch

    from hwnas.device import describe, fingerprint

    rows = check(args.every, args.offset, families=args.families)
    print(f"torch {torch.__version__}, compiled on: {describe(fingerprint())}; {len(rows)} zoo networks")
    print(table(rows))
    if args.json:
        from hwnas.files import atomic_write

        atomic_write(args.json, json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
