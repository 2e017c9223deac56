"""Reliability of the export: many random architectures of both spaces exported, loaded back, checked for parity.

For each of ``--n`` architectures (alternating between the SPOS and ProxylessNAS spaces, small-input variant,
``--width-mult``), :func:`hwnas.export.export_subnet` compiles the subnet with ``torch.jit.script``, saves it with
metadata, and checks the file as loaded back against the eager subnet (its own parity check, max abs diff
<= 1e-5). The script then checks independently: it loads the file again with plain ``torch.jit.load``, compares
it with a freshly built eager subnet on a new random input (batch 2), and reads the metadata back. Any exception,
a traced fallback (the spaces must script), a wrong architecture in the metadata or a difference above the
tolerance counts as a failure. Weights (BatchNorm statistics and scales, classifier) are randomised once per
space so that outputs are of order 1 and the parity figures mean something.

Prints a table per space (exported, failed, max parity difference, seconds per export) and the wall time;
``--out`` writes the same as JSON with every failure.

    python -m experiments.benchmarks.export_fuzz --n 1000 [--width-mult 0.25] [--freeze] [--onnx] [--out fuzz.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from typing import Any, Sequence

import torch
from tqdm import tqdm

SPACES = ("spos", "proxyless")


def randomize_weights(module: torch.nn.Module, seed: int) -> None:
    """Give BatchNorm statistics, BatchNorm scales and linear layers random values of order 1 (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)


def run_fuzz(n: int, *, width_mult: float = 0.25, input_size: int = 32, seed: int = 0, freeze: bool = False,
             onnx: bool = False, atol: float = 1e-5, progress: bool = True) -> dict[str, Any]:
    """Export ``n`` random architectures (alternating spaces) and count successes and failures.

    Returns
    -------
    dict
        ``per_space``: name -> {``exported``, ``failed``, ``max_parity_diff``, ``max_check_diff``, ``s_per_export``};
        ``failures``: list of {``space``, ``index``, ``arch``, ``error``}; ``n``, ``wall_s``, settings.
    """
    import search_spaces as ss
    from hwnas.export import export_subnet, read_metadata

    spaces = {}
    for k, name in enumerate(SPACES):
        space = ss.create_space(name, input_size=input_size, num_classes=10, width_mult=width_mult).eval()
        randomize_weights(space, seed + k)
        spaces[name] = space
    rngs = {name: random.Random(f"{seed}-{name}") for name in SPACES}
    stats = {name: {"exported": 0, "failed": 0, "max_parity_diff": 0.0, "max_check_diff": 0.0, "seconds": 0.0}
             for name in SPACES}
    failures: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(seed)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hwnas-export-fuzz-") as tmp:
        for i in tqdm(range(n), desc="export fuzz", disable=not progress):
            name = SPACES[i % len(SPACES)]
            space, arch = spaces[name], ss.random_arch(spaces[name], rngs[name])
            path = os.path.join(tmp, f"{name}_{i}.pt")
            onnx_path = os.path.join(tmp, f"{name}_{i}.onnx") if onnx else None
            t0 = time.perf_counter()
            try:
                report = export_subnet(space, arch, out=path, measure=False, freeze=freeze, onnx=onnx_path,
                                       atol=atol, seed=i)
                if report.method != "script":
                    raise RuntimeError(f"fell back to {report.method}: {report.fallback_reason}")
                if read_metadata(path)["arch"] != arch:
                    raise RuntimeError("the metadata read back names another architecture")
                x = torch.randn((2, 3, input_size, input_size), generator=gen)
                loaded = torch.jit.load(path, map_location="cpu")
                eager = ss.build_subnet(space, arch).eval()
                with torch.no_grad():
                    check = float((loaded(x) - eager(x)).abs().max())
                if not check <= atol:
                    raise RuntimeError(f"independent check: loaded file differs by {check:.3g} > {atol:g}")
                s = stats[name]
                s["exported"] += 1
                s["max_parity_diff"] = max(s["max_parity_diff"], report.parity_max_abs_diff)
                s["max_check_diff"] = max(s["max_check_diff"], check)
            except Exception as e:  # noqa: BLE001 - a fuzz run counts every failure and goes on
                stats[name]["failed"] += 1
                failures.append({"space": name, "index": i, "arch": arch,
                                 "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"})
            finally:
                stats[name]["seconds"] += time.perf_counter() - t0
                for p in (path, onnx_path):
                    if p and os.path.exists(p):
                        os.unlink(p)
    per_space = {}
    for name, s in stats.items():
        count = s["exported"] + s["failed"]
        per_space[name] = {"exported": s["exported"], "failed": s["failed"], "max_parity_diff": s["max_parity_diff"],
                           "max_check_diff": s["max_check_diff"],
                           "s_per_export": s["seconds"] / count if count else 0.0}
    return {"n": n, "width_mult": width_mult, "input_size": input_size, "seed": seed, "freeze": freeze,
            "onnx": onnx, "atol": atol, "wall_s": time.perf_counter() - t_start, "per_space": per_space,
            "failures": failures}


def format_table(result: dict[str, Any]) -> str:
    """The per-space count table and the totals, as text."""
    cols = ["space", "exported", "failed", "max parity diff", "max check diff", "s/export"]
    rows = [[name, str(s["exported"]), str(s["failed"]), f"{s['max_parity_diff']:.1e}", f"{s['max_check_diff']:.1e}",
             f"{s['s_per_export']:.2f}"] for name, s in result["per_space"].items()]
    total_ok = sum(s["exported"] for s in result["per_space"].values())
    total_bad = sum(s["failed"] for s in result["per_space"].values())
    rows.append(["total", str(total_ok), str(total_bad), "", "", ""])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(r) for r in rows),
                      f"{total_ok} of {result['n']} exported with zero failures" if not total_bad else
                      f"{total_bad} of {result['n']} FAILED", f"wall time {result['wall_s']:.0f} s"])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="architectures in total, alternating spaces")
    p.add_argument("--width-mult", type=float, default=0.25)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--freeze", action="store_true", help="torch.jit.freeze every export")
    p.add_argument("--onnx", action="store_true", help="also export and check ONNX for every architecture")
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    result = run_fuzz(args.n, width_mult=args.width_mult, input_size=args.input_size, seed=args.seed,
                      freeze=args.freeze, onnx=args.onnx, atol=args.atol)
    print(format_table(result))
    for f in result["failures"][:20]:
        print(f"  failed: {f['space']} #{f['index']}: {f['error']}", file=sys.stderr)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    res = main()
    sys.exit(1 if any(s["failed"] for s in res["per_space"].values()) else 0)
