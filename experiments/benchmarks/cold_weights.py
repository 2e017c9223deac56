"""Kernel labels by three methods against the measured network, side by side: hot, cold-weight, in-network profile.

Issue 14 asks for kernel latencies that add up inside a network, chosen by measurement. For each network of a
sample (torchvision families at several resolutions, weights from 0.1 to 100 MB, against a last-level cache of
about 32 MB), this measures in one process

- **measured**: the network end to end (the default protocol);
- **hot**: every distinct kernel timed back to back after a 1x1 convolution, as the builder times kernels
  (``hwnas.builder.measure_cold_in_context``'s hot blocks); the sum over the network's kernels;
- **cold**: the same kernels with a flush of ``--factor`` times the last-level cache before each run and the
  input re-read (weights from memory, activations in cache, as inside a network whose weights exceed the cache);
  hot and cold blocks alternate, so the two sums are a side-by-side comparison;
- **profile**: on ``torchscript-cpu`` the oneDNN primitives of the compiled network
  (``hwnas.builder.trace_torchscript``; ops outside oneDNN are not in it), with a table of the weight reorders
  and of the primitives against an unprofiled run; on ``onnxruntime-cpu`` the sum of the optimised nodes' times in ONNX Runtime's profile of the
  network (``hwnas.builder.trace_onnxruntime``), the raw material of the in-network predictors;

and prints per network and per family the ratio sum / measured of each method, with its Spearman correlation
against resolution and against weight bytes (the trends issue 14 names). Kernels come from the fusion rules of
``--predictor`` (default ``auto`` of the backend); the per-kernel timings are kept in ``--store`` (resumable).

    taskset -c 1 python -m experiments.benchmarks.cold_weights --store runs/cold/kernels.jsonl \\
        --json cold.json --plot cold.png

Run it pinned to one core on an otherwise quiet machine. A smoke run: ``--networks resnet18@32 --quick``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

#: The default sample: (torchvision model, resolution).
NETWORKS = ("resnet18@64", "resnet18@128", "resnet18@224", "resnet50@64", "resnet50@224", "mobilenet_v2@64",
            "mobilenet_v2@224", "densenet121@64", "densenet121@224", "efficientnet_b0@64", "efficientnet_b0@224",
            "googlenet@64", "googlenet@224", "regnet_y_800mf@128")
METHODS = ("hot", "cold", "profile")


def _network(spec: str) -> tuple[str, int, Any]:
    import torchvision

    name, _, px = spec.partition("@")
    if not px.isdigit():
        raise SystemExit(f"network {spec!r}: expected NAME@RESOLUTION, e.g. resnet18@64")
    kw = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    try:
        model = torchvision.models.get_model(name, weights=None, **kw)
    except ValueError as e:
        raise SystemExit(f"network {spec!r}: {e}") from e
    return name, int(px), model.eval()


def _spearman(x: list[float], y: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2:
        return None
    r = spearmanr(x, y).statistic
    return float(r) if np.isfinite(r) else None


def _kernel_times(kernels: list, be: str, protocol: Any, factor: float, store: Path, done: dict) -> tuple:
    """(hot sum, cold sum, kernels failed) in ms over ``kernels``, measuring distinct ones not in ``done``."""
    from hwnas.builder import kernel_module, kernel_spec, measure_cold_conversion, measure_cold_in_context, spec_key
    from hwnas.files import append_jsonl
    from hwnas.kernels import CONVERSION_TYPES

    hot = cold = 0.0
    failed = 0
    for k in kernels:
        conversion = k.type in CONVERSION_TYPES
        if conversion:   # a layout conversion: half a to_mkldnn + to_dense pair of its tensor, as the builder prices it
            f = k.features
            shape = (int(f["batch"]), int(f["cin"]), int(f["hin"]), int(f["win"]))
            key = f"{be}|conversion:{list(shape)}"
        else:
            spec = kernel_spec(k)
            key = f"{be}|{spec_key(spec)}"
        if key not in done:
            try:
                if conversion:
                    r = measure_cold_conversion(be, shape, protocol, factor=factor)
                else:
                    module = kernel_module(spec)
                    r = measure_cold_in_context(module, be, module.input_shape, protocol, factor=factor)
            except Exception as e:  # noqa: BLE001 - one kernel that fails is counted, never fatal
                r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            done[key] = r
            append_jsonl(store, {"key": key, "type": k.type, **r})
        r = done[key]
        if "error" in r:
            failed += 1
            continue
        hot += r["hot_ms"]
        cold += r["cold_ms"]
    return hot, cold, failed


def _ts_profile_table(rows: list[dict[str, Any]]) -> str:
    """TorchScript profiles: primitives against the unprofiled run of the same process (the profiler's own effect),
    and the share of the primitives' time spent reordering convolution weights."""
    out = ["", "torchscript-cpu oneDNN profiles (median profiled run; 'unprof' = same compiled module, no verbose)",
           f"{'network':20s} {'unprof ms':>9s} {'prof run':>9s} {'prims ms':>9s} {'prims/unprof':>12s} "
           f"{'wt reorder ms':>13s} {'share':>6s}"]
    for r in rows:
        if r.get("profile") is None:
            continue
        out.append(f"{r['network']:20s} {r['profile_unprofiled_ms']:9.3f} {r['profile_run_ms']:9.3f} "
                   f"{r['profile']:9.3f} {r['profile'] / r['profile_unprofiled_ms']:12.3f} "
                   f"{r['weight_reorder_ms']:13.3f} {r['weight_reorder_ms'] / r['profile']:6.0%}")
    return "\n".join(out)


def _summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for fam in sorted({r["family"] for r in rows}) + ["ALL"]:
        rs = [r for r in rows if fam in ("ALL", r["family"])]
        s: dict[str, Any] = {"n": len(rs)}
        for m in METHODS:
            got = [r for r in rs if r.get(m) is not None]
            ratios = [r[m] / r["measured"] for r in got]
            s[m] = {"ratio_median": float(np.median(ratios)) if ratios else None,
                    "within10": 100.0 * float(np.mean([abs(q - 1) <= 0.1 for q in ratios])) if ratios else None,
                    "spearman_resolution": _spearman([r["px"] for r in got], ratios),
                    "spearman_weights": _spearman([r["weight_mb"] for r in got], ratios)}
        out[fam] = s
    return out


def _fmt(v: Any, spec: str) -> str:
    """``v`` formatted by ``spec``, or a dash as wide as the spec's width."""
    if v is not None:
        return format(v, spec)
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    return "-".rjust(int(width or 1))


def _table(rows: list[dict[str, Any]], summary: dict[str, dict[str, Any]]) -> str:
    head = (f"{'network':22s} {'weights MB':>10s} {'measured ms':>11s} | " +
            " ".join(f"{m + '/meas':>12s}" for m in METHODS) + f" {'cold/hot':>9s} {'failed':>6s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratios = " ".join(f"{_fmt(r[m] / r['measured'] if r.get(m) is not None else None, '.3f'):>12s}"
                          for m in METHODS)
        lines.append(f"{r['network']:22s} {r['weight_mb']:10.1f} {r['measured']:11.3f} | {ratios} "
                     f"{r['cold'] / r['hot']:9.3f} {r['failed']:6d}")
    lines.append("")
    head = f"{'family':14s} {'n':>3s} | " + " | ".join(f"{m:>7s} median ±10%  rho(px) rho(MB)" for m in METHODS)
    lines += [head, "-" * len(head)]
    for fam, s in summary.items():
        cells = " | ".join(f"{_fmt(s[m]['ratio_median'], '13.3f')} {_fmt(s[m]['within10'], '4.0f')}% "
                           f"{_fmt(s[m]['spearman_resolution'], '+8.2f')} {_fmt(s[m]['spearman_weights'], '+7.2f')}"
                           for m in METHODS)
        lines.append(f"{fam:14s} {s['n']:3d} | {cells}")
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for m, marker in zip(METHODS, "o^s"):
        got = [r for r in rows if r.get(m) is not None]
        ax.scatter([r["weight_mb"] for r in got], [r[m] / r["measured"] for r in got], marker=marker, label=m)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhspan(0.9, 1.1, color="0.9", zorder=0)
    ax.set_xscale("log")
    ax.set_xlabel("network weights (MB)")
    ax.set_ylabel("kernel sum / measured network")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="onnxruntime-cpu", help="onnxruntime-cpu or torchscript-cpu")
    ap.add_argument("--predictor", default=None, help="predictor whose fusion rules split the networks "
                    "(default auto of the backend)")
    ap.add_argument("--networks", nargs="*", default=list(NETWORKS), metavar="NAME@PX")
    ap.add_argument("--factor", type=float, default=3.0, help="flush size in multiples of the last-level cache")
    ap.add_argument("--store", required=True, help="JSONL store of per-kernel timings (created, resumed)")
    ap.add_argument("--quick", action="store_true", help="a short protocol for a smoke run (figures not kept)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    for category in (DeprecationWarning, FutureWarning, UserWarning):   # torch's export notices
        warnings.filterwarnings("ignore", category=category)
    import torch
    from tqdm.auto import tqdm

    from hwnas.builder import (DEFAULT_PROTOCOL, QUICK_PROTOCOL, MeasureProtocol, measure, trace_onnxruntime,
                               trace_torchscript)
    from hwnas.device import describe, fingerprint, last_level_cache_bytes
    from hwnas.files import atomic_write, read_jsonl
    from hwnas.predictor import load_latency_predictor

    torch.set_num_threads(1)
    pred = load_latency_predictor(args.predictor or f"auto:{args.backend}")
    kprot = QUICK_PROTOCOL if args.quick else MeasureProtocol(warmup=3, runs_per_block=5, blocks=3)
    nprot = QUICK_PROTOCOL if args.quick else DEFAULT_PROTOCOL
    store = Path(args.store)
    store.parent.mkdir(parents=True, exist_ok=True)
    done = {r["key"]: r for r in read_jsonl(store, repair=True, what="a kernel timing")}
    cache = last_level_cache_bytes()
    device = describe(fingerprint())
    rows = []
    for spec in tqdm(args.networks, desc="networks"):
        name, px, model = _network(spec)
        shape = (1, 3, px, px)
        kernels = pred.kernels(model, "torch", shape)
        hot, cold, failed = _kernel_times(kernels, args.backend, kprot, args.factor, store, done)
        row = {"network": spec, "family": name, "px": px, "kernels": len(kernels), "failed": failed,
               "weight_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
               "measured": measure(model, args.backend, shape, nprot).ms, "hot": hot, "cold": cold,
               "profile": None}
        if args.backend == "onnxruntime-cpu":
            trace = trace_onnxruntime(model, shape, runs=5 if args.quick else 20, warmup=5)
            row["profile"] = float(sum(n[2] for n in trace.nodes))
            row["profile_run_ms"] = trace.run_ms
        elif args.backend == "torchscript-cpu":   # oneDNN primitives only: ops outside oneDNN are not in the sum
            tt = trace_torchscript(model, shape, runs=3 if args.quick else 5)
            kinds = tt.by_kind()
            row.update(profile=tt.primitives_ms, profile_unprofiled_ms=tt.unprofiled_ms,
                       profile_run_ms=float(np.median(tt.run_ms)), profile_kinds=kinds,
                       weight_reorder_ms=kinds.get("reorder:weights", 0.0))
        rows.append(row)
    summary = _summary(rows)
    title = (f"{args.backend}, flush {args.factor:g} x {cache / 2**20:.0f} MB LLC; {device}")
    print(title)
    print(f"kernels split by {pred.name}'s rules; kernel protocol {kprot.to_dict()}")
    print(_table(rows, summary))
    if args.backend == "torchscript-cpu":
        print(_ts_profile_table(rows))
    if args.json:
        atomic_write(args.json, json.dumps({"device": device, "cache_bytes": cache, "factor": args.factor,
                                            "backend": args.backend, "predictor": pred.name, "rows": rows,
                                            "summary": summary, "kernel_protocol": kprot.to_dict()}, indent=1))
    if args.plot:
        _plot(rows, args.plot, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
