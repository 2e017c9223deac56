"""What an op costs under TorchScript when it reads a concat's output (a plain tensor) instead of a convolution's.

TorchScript's frozen-graph oneDNN pass (``torch.jit.optimize_for_inference``) runs convolutions and the ops it
groups with them on oneDNN tensors; ``aten::cat`` is not in a group, so its output is a plain (dense) tensor and
an op reading it runs ATen's own CPU kernel instead of oneDNN's. The builder times every kernel after a 1x1
convolution, i.e. on a oneDNN input. This script times each op in both contexts, side by side in one process:

- ``conv``: ``1x1 conv -> op`` minus ``1x1 conv``;
- ``cat``: ``cat(1x1 conv, 1x1 conv) -> op`` minus ``cat(1x1 conv, 1x1 conv)``;

each the best of ``--blocks`` blocks of ``--runs`` calls (ms), with the two repeated timings' spread as the noise.

    taskset -c 1 python -m experiments.benchmarks.ts_dense_inputs [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import Any, Callable

#: (label, channels, side, op factory): the ops inception and dense blocks apply to a concat's output
CASES: tuple[tuple[str, int, int, str], ...] = (
    ("maxpool 3x3 s1 (inception branch)", 192, 28, "maxpool_s1"),
    ("maxpool 3x3 s1", 480, 14, "maxpool_s1"),
    ("maxpool 3x3 s1", 832, 7, "maxpool_s1"),
    ("maxpool 3x3 s2 (between stages)", 480, 28, "maxpool_s2"),
    ("batchnorm+relu (dense layer)", 256, 28, "bn_relu"),
    ("batchnorm+relu", 512, 14, "bn_relu"),
    ("avgpool 2x2 s2 (transition)", 256, 28, "avgpool"),
)


def _op(kind: str, c: int) -> Any:
    import torch.nn as nn

    return {"maxpool_s1": lambda: nn.MaxPool2d(3, 1, 1, ceil_mode=True),
            "maxpool_s2": lambda: nn.MaxPool2d(3, 2, ceil_mode=True),
            "bn_relu": lambda: nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True)),
            "avgpool": lambda: nn.AvgPool2d(2, 2)}[kind]()


def _module(c: int, kind: str | None, ctx: str) -> Any:
    """``ctx`` ``"conv"``: ``1x1 conv -> op``; ``"cat"``: ``cat(1x1 conv, 1x1 conv) -> op`` (no op: ``kind`` None)."""
    import torch
    import torch.nn as nn

    class Conv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.op = nn.Conv2d(c, c, 1), (_op(kind, c) if kind else nn.Identity())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.op(self.conv(x))

    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c, c - c // 2, 1)
            self.op = _op(kind, c) if kind else nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.op(torch.cat([self.a(x), self.b(x)], 1))

    return {"conv": Conv, "cat": Cat}[ctx]().eval()


def _time(fn: Callable[[], Any], runs: int, blocks: int) -> tuple[float, float]:
    """(best, second best) of ``blocks`` blocks of ``runs`` calls, ms per call."""
    for _ in range(3):
        fn()
    per = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(runs):
            fn()
        per.append((time.perf_counter() - t0) / runs * 1e3)
    per.sort()
    return per[0], per[1]


def measure(runs: int = 20, blocks: int = 5) -> list[dict[str, Any]]:
    """One row per case: the op's cost after a convolution and after a concat (ms), and the pool kernels run."""
    import torch
    from tqdm.auto import tqdm

    torch.set_num_threads(1)
    rows = []
    for label, c, side, kind in tqdm(CASES, desc="cases"):
        x = torch.randn(1, c, side, side)
        row: dict[str, Any] = {"op": label, "shape": [1, c, side, side]}
        for ctx in ("conv", "cat"):
            with torch.no_grad():
                ts = {}
                for name, k in (("with", kind), ("without", None)):
                    torch.manual_seed(0)
                    m = _module(c, k, ctx)
                    ts[name] = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(m, x)))
                w, w2 = _time(lambda: ts["with"](x), runs, blocks)
                wo, wo2 = _time(lambda: ts["without"](x), runs, blocks)
            row[f"{ctx}_ms"] = w - wo
            row[f"{ctx}_noise_ms"] = abs(w2 - w) + abs(wo2 - wo)
        row["ratio"] = row["cat_ms"] / row["conv_ms"] if row["conv_ms"] > 0 else None
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="calls per timed block")
    ap.add_argument("--blocks", type=int, default=5, help="timed blocks (the best is kept)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    from hwnas.device import describe, fingerprint

    rows = measure(args.runs, args.blocks)
    fp = fingerprint()
    print(f"torchscript-cpu, 1 thread, measured on: {describe(fp)}")
    print(f"{'op':36s} {'input':>16s} {'after conv ms':>14s} {'after cat ms':>13s} {'cat/conv':>9s} {'noise ms':>9s}")
    for r in rows:
        shape = "x".join(map(str, r["shape"][1:]))
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        print(f"{r['op']:36s} {shape:>16s} {r['conv_ms']:14.3f} {r['cat_ms']:13.3f} {ratio:>9s} "
              f"{max(r['conv_noise_ms'], r['cat_noise_ms']):9.3f}")
    if args.json:
        from hwnas.files import atomic_write

        atomic_write(args.json, json.dumps({"fingerprint": fp, "rows": rows}, indent=1))
        print(f"json: {args.json}")


if __name__ == "__main__":
    main()
