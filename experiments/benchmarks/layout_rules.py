"""The NCHWc layout rules against ONNX Runtime's compiled graphs of stored zoo traces (issue 14, item 1).

For every traced network of a store (``experiments/benchmarks/trace_models.py``) it compares the layout
conversions :func:`hwnas.builder.layout_conversions` predicts with the ``ReorderInput``/``ReorderOutput`` nodes
ONNX Runtime ran, and prints per family the share of networks whose predicted counts of both kinds equal the
compiled ones, with the conversions predicted and found. Nothing is measured: it reads the traces, so it can check
the rules for a CPU other than this one (``--isa`` names the traced CPU's vector extension).

    python -m experiments.benchmarks.layout_rules \\
        --traces experiments/builds/context-onnxruntime-cpu-amd-epyc-avx512-f25m17/raw/traces.jsonl --isa avx512
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from hwnas.files import atomic_write


def check(rows: list[dict[str, Any]], block: int) -> list[dict[str, Any]]:
    """Per trace record: predicted and compiled conversion counts (to_blocked, to_plain) and whether they agree."""
    from hwnas.builder import NodeTrace, layout_conversions

    out = []
    seen = set()
    for r in rows:
        if r["model"] in seen:          # one trace per network: the structure is the same in every pass
            continue
        seen.add(r["model"])
        t = NodeTrace.from_dict(r)
        conv = layout_conversions(t.graph, block)
        pred = (sum(c.kind == "to_blocked" for c in conv), sum(c.kind == "to_plain" for c in conv))
        real = (sum(x[0] == "ReorderInput" for x in t.reorders), sum(x[0] == "ReorderOutput" for x in t.reorders))
        out.append({"model": r["model"], "family": r["family"], "predicted": list(pred), "compiled": list(real),
                    "exact": pred == real})
    return out


def table(results: list[dict[str, Any]]) -> str:
    """Per family: networks, share exact, mean conversions predicted and compiled."""
    head = f"{'family':14s} {'n':>4s} {'exact':>6s} {'pred/net':>9s} {'compiled/net':>13s}"
    lines = [head, "-" * len(head)]
    for fam in sorted({r["family"] for r in results}) + ["ALL"]:
        rs = [r for r in results if fam in ("ALL", r["family"])]
        exact = 100.0 * sum(r["exact"] for r in rs) / len(rs)
        pred = sum(sum(r["predicted"]) for r in rs) / len(rs)
        real = sum(sum(r["compiled"]) for r in rs) / len(rs)
        lines.append(f"{fam:14s} {len(rs):4d} {exact:5.0f}% {pred:9.1f} {real:13.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", required=True, help="trace store (.jsonl or .jsonl.gz)")
    ap.add_argument("--isa", required=True, help="vector extension of the traced CPU (avx512, avx2)")
    ap.add_argument("--json", default=None, help="write the per-network comparison here")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from hwnas.builder import block_size
    from hwnas.files import read_jsonl

    path = Path(args.traces)
    if not path.is_file():
        raise SystemExit(f"error: no trace store {path}")
    block = block_size(args.isa)
    results = check(read_jsonl(path, what="a trace record"), block)
    print(f"{path}: block {block} ({args.isa}), {len(results)} networks")
    print(table(results))
    if args.json:
        atomic_write(args.json, json.dumps({"traces": str(path), "block": block, "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
