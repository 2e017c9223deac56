"""Kernels in their network: how far the kernel sum is from the network, and how much in-network labels close it.

On this machine and one backend (``onnxruntime-cpu``; its profiler gives per-node times), for a subset of the zoo:

1. each network is measured end to end in ``--passes`` separate processes (``measure_models``; the truth is the
   median, the noise ceiling a single pass against the median of the others);
2. each network is run once under ONNX Runtime's profiler (:func:`hwnas.builder.profile_onnxruntime`):
   every kernel gets its in-network time, layout conversions and fused-away kernels are counted;
3. per family, side by side:

   - **kernel sum / measured** of the predictor (``--predictor``, default ``auto``): its kernels as it prices them
     (transfer and calibration included) plus its per-call overhead, i.e. its prediction: the method in use
     (kernels timed alone or behind a prefix, transferred and calibrated to this machine);
   - **profiled nodes / measured**: what in-network labels account for (the ceiling of a kernel model fitted on
     them: the rest is the session's own work between nodes);
   - **in-network transfer (LOFO)**: the predictor's kernel prices mapped per type onto in-network labels (log-linear,
     :func:`hwnas.builder.fit_transfer`) fitted on the *other* families' profiles, plus the per-call
     overhead; within ±10% and its sum / measured;
   - Spearman correlation of each ratio with the input resolution (a trend the kernel model misses).

    python -m experiments.benchmarks.kernel_context --backend onnxruntime-cpu --out runs/context --every 4 \\
        --passes 3 --json context.json --plot context.png

Measuring is resumable (the stores live in ``--out``); ``--analyse-only`` times nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.files import atomic_write


def _subset(every: int) -> list[Any]:
    from hwnas.builder import zoo

    seen: dict[str, int] = {}
    kept = []
    for m in zoo():
        seen[m.family] = seen.get(m.family, -1) + 1
        if seen[m.family] % every == 0:
            kept.append(m)
    return kept


def _measure(args: argparse.Namespace, store: Path) -> None:
    for p in range(args.passes):
        cmd = [sys.executable, "-m", "experiments.benchmarks.measure_models", "--backend", args.backend,
               "--store", str(store), "--pass-id", str(p), "--every", str(args.every)]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)


def _profile(args: argparse.Namespace, models: list[Any], rules: Any, path: Path) -> dict[str, dict]:
    from tqdm.auto import tqdm

    from hwnas.builder import profile_onnxruntime
    from hwnas.files import append_jsonl, read_jsonl

    # a torn last line (a run killed mid-write) is dropped with a warning and cut, so the next record starts clean
    done = {r["model"]: r for r in read_jsonl(path, repair=True, what="a profile record")}
    todo = [m for m in models if m.key not in done]
    for m in tqdm(todo, desc="profiling networks"):
        try:
            prof = profile_onnxruntime(m.build(), m.input_shape, rules, runs=args.runs, warmup=5)
        except Exception as e:  # noqa: BLE001 - one network that fails must not end the pass
            print(f"{m.key}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        r = {"model": m.key, "family": m.family, **prof.to_dict()}
        append_jsonl(path, r)
        done[m.key] = r
    return done


def _read_profiles(out: Path) -> dict[str, dict]:
    """The stored profiles (``profiles.jsonl``, or the ``.gz`` kept in the repository)."""
    from hwnas.files import read_jsonl

    plain = out / "profiles.jsonl"
    path = plain if plain.is_file() else out / "profiles.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"no profile store {plain} (or .gz)")
    return {r["model"]: r for r in read_jsonl(path, what="a profile record")}


def _spearman(x: list[float], y: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(set(x)) < 3:
        return None
    rho = spearmanr(x, y).statistic
    return float(rho) if np.isfinite(rho) else None


def analyse(models: list[Any], truth: dict[str, list[float]], profiles: dict[str, dict], predictor: Any
            ) -> dict[str, Any]:
    """Per-family comparison of the kernel sum, the profiled sum and the in-network transfer (LOFO)."""
    from hwnas.builder import fit_transfer
    from hwnas.kernels import Kernel

    rows = []
    for m in models:
        if m.key not in truth or m.key not in profiles:
            continue
        prof = profiles[m.key]
        kernels = [Kernel(k["type"], [], k["features"]) for k in prof["kernels"]]
        pred = predictor.kernel_latencies(kernels)
        passes = truth[m.key]
        med = float(np.median(passes))
        single = None
        if len(passes) > 1:
            single = float(np.mean([abs(v / np.median(passes[:i] + passes[i + 1:]) - 1) <= 0.1
                                    for i, v in enumerate(passes)]))
        rows.append({"model": m.key, "family": m.family, "side": int(m.input_shape[-1]), "measured_ms": med,
                     "noise": single, "types": [k.type for k in kernels], "pred": pred.tolist(),
                     "label": [k["ms"] for k in prof["kernels"]], "sum_ms": float(pred.sum()) + predictor.overhead_ms,
                     "nodes_ms": prof["nodes_ms"], "run_ms": prof["run_ms"], "reorders": prof["reorders"],
                     "reorder_ms": prof["reorder_ms"], "absorbed": [kernels[i].type for i in prof["absorbed"]]})
    families = sorted({r["family"] for r in rows})
    for f in families:
        train = [r for r in rows if r["family"] != f]
        tr = fit_transfer([t for r in train for t in r["types"]], [p for r in train for p in r["pred"]],
                          [y for r in train for y in r["label"]])
        pairs, default = tr["kernel_types"], tr["default"]
        for r in rows:
            if r["family"] != f:
                continue
            ms = [float(np.exp(pairs.get(t, default)[0]) * p ** pairs.get(t, default)[1]) if p > 0 else 0.0
                  for t, p in zip(r["types"], r["pred"])]
            r["context_ms"] = sum(ms) + predictor.overhead_ms

    def fam(sel: list[dict[str, Any]]) -> dict[str, Any]:
        meas = np.array([r["measured_ms"] for r in sel])
        out: dict[str, Any] = {"n": len(sel)}
        noise = [r["noise"] for r in sel if r["noise"] is not None]
        out["noise_within10"] = 100 * float(np.mean(noise)) if noise else None
        for key, col in (("sum", "sum_ms"), ("profiled", "nodes_ms"), ("context", "context_ms")):
            v = np.array([r[col] for r in sel])
            out[f"{key}_ratio_median"] = float(np.median(v / meas))
            out[f"{key}_within10"] = 100 * float(np.mean(np.abs(v / meas - 1) <= 0.1))
            out[f"{key}_ratio_resolution_spearman"] = _spearman([r["side"] for r in sel], list(v / meas))
        out["reorders_mean"] = float(np.mean([r["reorders"] for r in sel]))
        absorbed: dict[str, int] = {}
        for r in sel:
            for t in r["absorbed"]:
                absorbed[t] = absorbed.get(t, 0) + 1
        out["absorbed_kernels"] = absorbed
        return out

    return {"all": fam(rows), "families": {f: fam([r for r in rows if r["family"] == f]) for f in families},
            "rows": [{k: v for k, v in r.items() if k not in ("types", "pred", "label")} for r in rows]}


def _table(summary: dict[str, Any]) -> str:
    head = (f"{'family':14s} {'n':>4s} | {'noise':>5s} | {'kernel sum/meas ±10%':>20s} | {'profiled/meas':>13s} | "
            f"{'in-network LOFO ±10%':>20s} | {'res. trend (sum, LOFO)':>22s} | reorders")
    lines = [head, "-" * len(head)]
    for name, s in [*summary["families"].items(), ("ALL", summary["all"])]:
        nz = f"{s['noise_within10']:4.0f}%" if s["noise_within10"] is not None else "    -"
        trend = "/".join("  -" if s[f"{k}_ratio_resolution_spearman"] is None
                         else f"{s[f'{k}_ratio_resolution_spearman']:+.2f}" for k in ("sum", "context"))
        lines.append(f"{name:14s} {s['n']:4d} | {nz} | {s['sum_ratio_median']:8.3f} {s['sum_within10']:9.0f}% | "
                     f"{s['profiled_ratio_median']:13.3f} | {s['context_ratio_median']:8.3f} "
                     f"{s['context_within10']:9.0f}% | {trend:>22s} | {s['reorders_mean']:.1f}")
    return "\n".join(lines)


def _plot(summary: dict[str, Any], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    fams = sorted({r["family"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    cmap = plt.get_cmap("tab20")
    for ax, (col, label) in zip(axes, (("sum_ms", "kernel sum (predictor, uncalibrated)"),
                                       ("context_ms", "in-network transfer, leave one family out"))):
        for j, f in enumerate(fams):
            sel = [r for r in rows if r["family"] == f]
            ax.scatter([r["side"] for r in sel], [r[col] / r["measured_ms"] for r in sel], s=12,
                       color=cmap(j % 20), label=f)
        ax.axhline(1.0, color="k", lw=0.8)
        for k in (0.9, 1.1):
            ax.axhline(k, color="k", ls=":", lw=0.6)
        ax.set(xlabel="input resolution (px)", title=label, yscale="log")
    axes[0].set_ylabel("predicted / measured")
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="onnxruntime-cpu", choices=["onnxruntime-cpu"],
                    help="backend (its profiler gives per-node times)")
    ap.add_argument("--out", required=True, help="folder of the stores (zoo.jsonl, profiles.jsonl)")
    ap.add_argument("--predictor", default="auto", help="predictor whose kernels are compared (default auto)")
    ap.add_argument("--every", type=int, default=4, help="every N-th zoo network of each family")
    ap.add_argument("--passes", type=int, default=3, help="end-to-end passes (separate processes)")
    ap.add_argument("--runs", type=int, default=20, help="profiled runs per network")
    ap.add_argument("--analyse-only", action="store_true", help="time nothing; read the stores")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import torch

    from hwnas.builder import zoo_measurements
    from hwnas.device import describe, fingerprint
    from hwnas.predictor import load_latency_predictor

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "zoo.jsonl" if (out / "zoo.jsonl").is_file() or not (out / "zoo.jsonl.gz").is_file() \
        else out / "zoo.jsonl.gz"
    predictor = load_latency_predictor(args.predictor if args.predictor != "auto" else f"auto:{args.backend}")
    models = _subset(args.every)
    if not args.analyse_only:
        _measure(args, store)
    profiles = (_profile(args, models, predictor.rules, out / "profiles.jsonl") if not args.analyse_only
                else _read_profiles(out))
    truth: dict[str, list[float]] = {}
    p = 0
    while True:
        got = zoo_measurements(store, p)
        if not got:
            break
        for k, r in got.items():
            truth.setdefault(k, []).append(float(r["ms"]))
        p += 1
    summary = analyse(models, truth, profiles, predictor)
    dev = describe(fingerprint())
    print(f"\nmachine: {dev}\npredictor {predictor.name} ({predictor.backend}); {summary['all']['n']} networks, "
          f"{p} passes (truth: their median)\n")
    print(_table(summary))
    if args.json:
        atomic_write(args.json, json.dumps({"machine": dev, "predictor": predictor.name, "passes": p,
                                            "summary": {k: v for k, v in summary.items() if k != "rows"},
                                            "rows": summary["rows"]}, indent=1))
        print(f"json: {args.json}")
    if args.plot:
        _plot(summary, args.plot, f"{predictor.name} on {dev}")


if __name__ == "__main__":
    main()
