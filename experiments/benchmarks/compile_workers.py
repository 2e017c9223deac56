"""Kernel builds with and without compile workers (``BuildConfig.compile_workers``): wall seconds and parity.

Builds the same share of kernels twice on one backend, into two fresh folders: first serially (each kernel
compiled right before it is timed), then with ``--workers`` processes tracing and freezing ahead while the main
process finishes each compile and times it. The kernels are the torchvision prior at ``--resolution`` (no search
space subnets, no jitter), under fixed fusion rules, shard ``0/--share`` of them (deterministic); both builds time
with the quick protocol (2 warm-ups, 2 blocks of 3 runs), fit, and neither calibrates nor registers.

Printed and written (``--json``): the kernels measured, the wall seconds of each build's measuring (from its
store's record times: the first overhead record to the last kernel, the pool's start included) and of the whole
build (sampling and fit included), the speed-up of measuring, and parity: the same kernel keys and measuring methods
in both stores, and how many of the parallel build's timed modules a worker compiled (two per kernel). The
kernel latencies of the two builds are timing, not asserted; the median ratio of the first timed module (the kernel
after its prefix) is printed for information (``--parallel-first`` swaps the order, to tell a bias from drift).

    python -m experiments.benchmarks.compile_workers --workers 2 --resolution 32 --share 8 --json cw.json

On a machine shared with other measurements, pin it (``taskset -c ...``): with the workers on the same cores as
the timing process, the parallel build cannot be faster.

Measured 2026-12-03 on the AMD EPYC VM (2 vCPUs, AVX2, nothing else running), ``taskset -c 0,1 python -m
experiments.benchmarks.compile_workers --workers 2 --resolution 32 --share 4``: 439 kernels, measuring 19.8 s
serial, 24.2 s with 2 workers (x0.82; whole builds 41.6 s and 44.2 s); same kernels and methods, 878/878 timed
modules from a worker, median latency ratio 0.986. On the CPU the workers idle while the main process times (nothing
compiles on the device being timed), so there is nothing to gain there; on one core (``taskset -c 0``,
118 kernels, ``--share 16``) 5.4 s against 14.3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from hwnas.builder import QUICK_PROTOCOL, BuildConfig, build, read_records

RULES = [["conv", "bn", "relu"], ["conv", "bn"], ["conv", "bn", "relu6"], ["conv", "bn", "hswish"],
         ["dwconv", "bn", "relu6"], ["dwconv", "bn", "relu"], ["dwconv", "bn"], ["add", "relu"]]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmarks.compile_workers",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="torchscript-cpu", help="torchscript-cpu or torchscript-cuda")
    p.add_argument("--workers", type=int, default=2, help="compile workers of the parallel build (-1: cores - 1)")
    p.add_argument("--resolution", type=int, default=32, help="input resolution of the torchvision prior (px)")
    p.add_argument("--share", type=int, default=8, help="measure shard 0 of this many (1: every kernel)")
    p.add_argument("--parallel-first", action="store_true", help="build with workers first (order check)")
    p.add_argument("--json", default=None, help="write the figures here")
    return p


def _records(out: Path) -> list[dict[str, Any]]:
    return [r for f in sorted((out / "raw").glob("kernels*.jsonl")) for r in read_records(f)
            if r.get("kind") in ("kernel", "overhead")]


def _span_s(records: list[dict[str, Any]]) -> float:
    """Seconds from the first record (an overhead, written when measuring starts) to the last kernel's."""
    times = sorted(datetime.fromisoformat(r["time"]) for r in records)
    return (times[-1] - times[0]).total_seconds()


def run(args: argparse.Namespace) -> dict[str, Any]:
    def config(out: Path, workers: int) -> BuildConfig:
        return BuildConfig(backend=args.backend, out=out, name="compile-workers-bench", protocol=QUICK_PROTOCOL,
                           resolutions=(args.resolution,), space_archs=0, jitter=0, fusion_rules=RULES,
                           shard=f"0/{args.share}" if args.share > 1 else None, adaptive_rounds=0,
                           calibrate=False, register=False, compile_workers=workers)

    with tempfile.TemporaryDirectory(prefix="hwnas-cw-") as tmp:
        walls, spans, recs = {}, {}, {}
        order = (("serial", 0), ("parallel", args.workers))
        for label, workers in order[::-1] if args.parallel_first else order:
            out = Path(tmp, label)
            t = time.perf_counter()
            build(config(out, workers), progress=False)
            walls[label] = time.perf_counter() - t
            records = _records(out)
            spans[label] = _span_s(records)
            recs[label] = {r["key"]: r for r in records if r["kind"] == "kernel"}
    serial, parallel = recs["serial"], recs["parallel"]
    same = [k for k in serial if k in parallel]
    ratios = [_first_part(parallel[k]) / _first_part(serial[k]) for k in same
              if _first_part(serial[k]) > 0 and _first_part(parallel[k]) > 0]
    return {
        "backend": args.backend, "cpu": _cpu_name(), "cores": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "workers": args.workers, "resolution": args.resolution, "share": args.share, "kernels": len(serial),
        "order": "parallel first" if args.parallel_first else "serial first",
        # measuring alone (the pool's start included), from the stores' record times
        "serial_s": spans["serial"], "parallel_s": spans["parallel"], "speedup": spans["serial"] / spans["parallel"],
        # whole builds: sampling (the same kernels) and the fit included
        "serial_build_s": walls["serial"], "parallel_build_s": walls["parallel"],
        "same_keys": set(serial) == set(parallel),
        "same_methods": all(serial[k]["method"] == parallel[k]["method"] for k in same),
        "modules_from_workers": sum(int(r.get("compiled_in_worker", 0)) for r in parallel.values()),
        "modules_timed": 2 * len(parallel),
        "median_first_module_ratio": statistics.median(ratios) if ratios else None,
    }


def _first_part(rec: dict[str, Any]) -> float:
    """The first timed module's latency, ms (the kernel after its prefix, or alone): larger than the net."""
    parts = rec.get("parts") or {}
    return float(parts.get("with_prefix_ms", parts.get("isolated_ms", -1.0)))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    r = run(args)
    print(f"{r['kernels']} kernels on {r['backend']} ({r['resolution']} px, shard 0/{r['share']}), {r['order']}; "
          f"{r['cpu']}, cores {r['affinity']}")
    print(f"serial   {r['serial_s']:7.1f} s measuring ({r['serial_build_s']:.1f} s the whole build)")
    print(f"parallel {r['parallel_s']:7.1f} s measuring ({r['parallel_build_s']:.1f} s the whole build), "
          f"{r['workers']} compile workers")
    print(f"parity: same kernels {r['same_keys']}, same methods {r['same_methods']}, "
          f"{r['modules_from_workers']}/{r['modules_timed']} timed modules compiled by a worker; median latency "
          f"ratio of the first timed module {r['median_first_module_ratio']:.3f} (timing noise, not asserted)")
    print(f"compile workers speed-up x{r['speedup']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0 if r["same_keys"] and r["same_methods"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
