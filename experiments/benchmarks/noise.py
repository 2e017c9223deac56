"""Noise study: how repeatable is a latency measurement across processes, per statistic?

Measures a list of models in several *separate processes* (one subprocess per repetition, run one after the
other), each time with the same protocol, keeping the raw run times; then, for each model and each statistic, it
prints the spread across processes (max/min - 1) and the share of process pairs within ±5% and ±10% — the noise
ceiling a predictor's accuracy is judged against — and recommends the statistic with the most pairs within ±10%.
Each process also times the reference workload (:func:`hwnas.builder.reference_workload`), so the same figures
are printed for latencies divided by the reference (how much of the spread a rescaling by it would remove).

Models: torchvision constructor names (``resnet18``, ``mobilenet_v2``..., built with ``weights=None``), small
random nets built here (``tiny_convnet``, ``tiny_resnet``), or reference items (``ref:mbnet_tiny_128``).

Examples
--------
Full study on a quiet machine (minutes)::

    python -m experiments.benchmarks.noise --models resnet18,mobilenet_v2,mobilenet_v3_small,tiny_convnet \
        --processes 5 --backend torchscript-cpu --out noise.json

Smoke run::

    python -m experiments.benchmarks.noise --models tiny_convnet,tiny_resnet --processes 2 --runs 5 --blocks 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from experiments._cli import fail

STATISTICS = ("min", "p10", "p25", "median", "trimmed_mean", "mean")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------------------------------------- models
def _tiny_convnet(nn: Any) -> Any:
    def cbr(cin: int, cout: int, s: int) -> list:
        return [nn.Conv2d(cin, cout, 3, s, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*cbr(3, 16, 2), *cbr(16, 32, 2), *cbr(32, 64, 2), *cbr(64, 64, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def _tiny_resnet(nn: Any) -> Any:
    import torchvision

    return torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10,
                                            width_per_group=64)


SMALL_NETS = {"tiny_convnet": _tiny_convnet, "tiny_resnet": _tiny_resnet}


def build_model(name: str, input_size: int) -> tuple[Any, tuple[int, ...]]:
    """(model in eval mode, input shape) for a model name (see the module docstring)."""
    import torch
    from torch import nn

    from hwnas.builder import reference_workload

    torch.manual_seed(0)  # a subprocess of its own: global seeding is fine here
    if name.startswith("ref:"):
        items = reference_workload()
        if name[4:] not in items:
            fail(f"unknown reference item {name!r}; known: {['ref:' + k for k in items]}")
        return items[name[4:]]
    shape = (1, 3, input_size, input_size)
    if name in SMALL_NETS:
        return SMALL_NETS[name](nn).eval(), shape
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None).eval(), shape
    except ValueError as e:
        fail(f"unknown model {name!r}: {e}")


# ----------------------------------------------------------------------------------------------------- worker
def run_worker(args: argparse.Namespace) -> None:
    """One repetition: measure every model (in the given order) and the reference workload; write raw runs."""
    from hwnas.builder import MeasureProtocol, fingerprint, get_backend, reference_workload

    protocol = MeasureProtocol(warmup=args.warmup, runs_per_block=args.runs, blocks=args.blocks,
                               threads=args.threads)
    backend = get_backend(args.backend)
    out: dict[str, Any] = {"pid": os.getpid(), "start": time.time(), "models": {}, "reference": {}}
    for name in args.models:
        model, shape = build_model(name, args.input_size)
        m = backend.measure(model, shape, protocol)
        out["models"][name] = {"input_shape": list(shape), "runs_ms": [list(b) for b in m.runs_ms],
                               "warmup_ms": list(m.warmup_ms)}
    for name, (model, shape) in reference_workload().items():
        out["reference"][name] = [list(b) for b in backend.measure(model, shape, protocol).runs_ms]
    out["end"] = time.time()
    out["fingerprint"] = fingerprint()
    with open(args.worker_out, "w", encoding="utf-8") as f:
        json.dump(out, f)


# ----------------------------------------------------------------------------------------------------- analysis
def value(runs_ms: Sequence[Sequence[float]], statistic: str) -> float:
    """Latency (ms) of raw runs: median over blocks of the per-block ``statistic`` (as MeasureProtocol)."""
    from hwnas.builder import get_statistic

    f = get_statistic(statistic)
    return float(np.median([f(b) for b in runs_ms]))


def agreement(values: Sequence[float]) -> dict[str, float]:
    """Spread (max/min - 1) and share of pairs within ±5% / ±10% (pair ratio max/min - 1) of per-process values."""
    v = np.asarray(values, dtype=float)
    pairs = [max(a, b) / min(a, b) - 1.0 for a, b in itertools.combinations(v, 2)]
    share = (lambda tol: float(np.mean([p <= tol for p in pairs]))) if pairs else (lambda tol: float("nan"))
    return {"spread": float(v.max() / v.min() - 1.0), "within_5": share(0.05), "within_10": share(0.10)}


def settle_runs(warmup_ms: Sequence[float], typical_ms: float, factor: float = 1.5) -> int:
    """Warm-up runs needed: the leading warm-up runs slower than ``factor * typical_ms`` (later spikes are noise,
    not warm-up)."""
    n = 0
    for t in warmup_ms:
        if t <= factor * typical_ms:
            break
        n += 1
    return n


def warmup_report(procs: list[dict], models: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per model: warm-up runs needed (median and max over processes) against the warm-up runs done."""
    out = {}
    for name in models:
        k = [settle_runs(p["models"][name].get("warmup_ms", []), value(p["models"][name]["runs_ms"], "median"))
             for p in procs]
        out[name] = {"median": int(np.median(k)), "max": int(max(k)),
                     "done": len(procs[0]["models"][name].get("warmup_ms", []))}
    return out


def analyse(procs: list[dict], models: Sequence[str], statistics: Sequence[str]) -> dict[str, Any]:
    """Per model and statistic: per-process values (ms), agreement raw and divided by the reference."""
    summary: dict[str, Any] = {}
    for name in models:
        summary[name] = {}
        for s in statistics:
            vals = [value(p["models"][name]["runs_ms"], s) for p in procs]
            refs = [sum(value(r, s) for r in p["reference"].values()) for p in procs]
            summary[name][s] = {"values_ms": vals, "reference_ms": refs, **agreement(vals),
                                "normalized": agreement([v / r for v, r in zip(vals, refs)])}
    return summary


def recommend(summary: dict[str, Any], statistics: Sequence[str]) -> dict[str, Any]:
    """The statistic with the highest mean share within ±10% (ties: ±5%, then the lower mean spread)."""
    scores = {}
    for s in statistics:
        rows = [summary[m][s] for m in summary]
        scores[s] = {"within_10": float(np.nanmean([r["within_10"] for r in rows])),
                     "within_5": float(np.nanmean([r["within_5"] for r in rows])),
                     "spread": float(np.mean([r["spread"] for r in rows])),
                     "normalized_within_10": float(np.nanmean([r["normalized"]["within_10"] for r in rows])),
                     "normalized_spread": float(np.mean([r["normalized"]["spread"] for r in rows]))}
    best = max(statistics, key=lambda s: (scores[s]["within_10"], scores[s]["within_5"], -scores[s]["spread"]))
    b = scores[best]
    return {"statistic": best, "scores": scores,
            "calibration_helps": b["normalized_within_10"] > b["within_10"] or
            (b["normalized_within_10"] == b["within_10"] and b["normalized_spread"] < b["spread"])}


def print_report(summary: dict[str, Any], rec: dict[str, Any], statistics: Sequence[str], n_proc: int,
                 warm: dict[str, dict[str, int]] | None = None) -> None:
    w = max(12, *(len(m) for m in summary))
    print(f"\nNoise across {n_proc} processes: spread (max/min-1) | pairs within ±5% | ±10%  (raw; '/ref' = "
          f"divided by the reference workload)")
    print(f"{'model':<{w}} {'ms(' + statistics[0] + ')':>9}  " + "  ".join(f"{s:>20}" for s in statistics))
    for m, row in summary.items():
        ms = np.median(row[statistics[0]]["values_ms"])
        cells = [f"{r['spread']:6.1%} |{r['within_5']:4.0%} |{r['within_10']:4.0%}" for r in
                 (row[s] for s in statistics)]
        print(f"{m:<{w}} {ms:9.3f}  " + "  ".join(f"{c:>20}" for c in cells))
        cells = [f"{r['spread']:6.1%} |{r['within_5']:4.0%} |{r['within_10']:4.0%}" for r in
                 (row[s]["normalized"] for s in statistics)]
        print(f"{'  /ref':<{w}} {'':9}  " + "  ".join(f"{c:>20}" for c in cells))
    print("\nmean over models:  " + "  ".join(
        f"{s}: ±10% {v['within_10']:.0%} (/ref {v['normalized_within_10']:.0%}), spread {v['spread']:.1%}"
        for s, v in rec["scores"].items()))
    print(f"recommended statistic: {rec['statistic']}"
          f"{' (dividing by the reference workload improves agreement)' if rec['calibration_helps'] else ''}")
    if warm:
        print("warm-up runs needed (leading runs > 1.5x the median latency; median/max over processes, of runs "
              "done): " + ", ".join(f"{m} {w['median']}/{w['max']} of {w['done']}" for m, w in warm.items()))
        if any(w["max"] >= w["done"] > 0 for w in warm.values()):
            print("  warning: some model was still slow at the end of the warm-up: raise --warmup")
    if n_proc < 5:
        print(f"note: only {n_proc} processes ({n_proc * (n_proc - 1) // 2} pairs); use >= 5 on a quiet machine "
              f"before relying on this")


# ----------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default="resnet18,mobilenet_v2,mobilenet_v3_small,shufflenet_v2_x1_0,tiny_convnet",
                   help="comma-separated model names (torchvision, tiny_convnet, tiny_resnet, ref:<item>)")
    p.add_argument("--processes", type=int, default=5, help="separate processes (repetitions)")
    p.add_argument("--backend", default="torchscript-cpu", help="backend name (hwnas.builder.list_backends())")
    p.add_argument("--input-size", type=int, default=224, help="input height and width (batch 1, 3 channels)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up runs per model")
    p.add_argument("--runs", type=int, default=15, help="timed runs per block")
    p.add_argument("--blocks", type=int, default=3, help="blocks per model")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads")
    p.add_argument("--statistics", default=",".join(STATISTICS), help="comma-separated statistics to compare")
    p.add_argument("--out", default=None, help="write raw runs and the summary to this JSON file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.statistics = [s.strip() for s in args.statistics.split(",") if s.strip()]
    if args.processes < 2 and not args.worker:
        p.error("--processes must be >= 2 to compare processes")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return None
    from hwnas.builder import get_statistic

    for s in args.statistics:
        get_statistic(s)  # fail early on a typo
    procs = []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=_ROOT + os.pathsep +
               os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            k = i % len(args.models)  # rotate the order so no model is always first
            order = args.models[k:] + args.models[:k]
            out = os.path.join(tmp, f"proc{i}.json")
            cmd = [sys.executable, "-m", "experiments.benchmarks.noise", "--worker", "--worker-out", out,
                   "--models", ",".join(order), "--backend", args.backend, "--input-size", str(args.input_size),
                   "--warmup", str(args.warmup), "--runs", str(args.runs), "--blocks", str(args.blocks),
                   "--threads", str(args.threads)]
            t0 = time.time()
            subprocess.run(cmd, check=True, cwd=_ROOT, env=env)
            with open(out, encoding="utf-8") as f:
                rec = json.load(f)
            rec["order"] = order
            procs.append(rec)
            print(f"process {i + 1}/{args.processes} done in {time.time() - t0:.1f} s", file=sys.stderr)
    summary = analyse(procs, args.models, args.statistics)
    rec = recommend(summary, args.statistics)
    warm = warmup_report(procs, args.models)
    print_report(summary, rec, args.statistics, len(procs), warm)
    result = {"config": {k: v for k, v in vars(args).items() if not k.startswith("worker")},
              "fingerprint": procs[0]["fingerprint"], "processes": procs, "summary": summary,
              "warmup": warm, "recommendation": rec}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
