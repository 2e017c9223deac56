"""How well ``hwnas adapt`` makes a predictor for this machine, side by side on held-out networks.

On one backend: measures held-out torchvision models at 224 px (none is a probe network: the probe uses 96-160 px),
runs ``hwnas adapt`` from the most similar installed predictor (the ``auto`` choice), then from every other
installed predictor of the backend (these reuse the probe measured by the first run, so their wall time is the
fit alone), measures the held-out models a second time, and prints per source: no adaptation, a single global
speed factor (the median ratio measured/predicted over the probe networks: the cheapest possible baseline),
``hwnas adapt``, and a full build of this machine where one is installed; with the wall time of each. The noise
ceiling is the share of held-out models whose two passes agree within ±10%; the truth is their geometric mean.

    python -m experiments.benchmarks.adapt_accuracy --backend onnxruntime-cpu --out runs/adapt-bench/onnxruntime-cpu \\
        --time-budget-min 10 --json accuracy.json --plot accuracy.png

Run it pinned to one core (``taskset -c 1``) on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from hwnas.files import atomic_write

HELDOUT = ("resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
           "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "mnasnet1_0", "efficientnet_b0", "efficientnet_b1",
           "regnet_y_400mf", "regnet_x_800mf", "densenet121", "googlenet", "squeezenet1_1")


def _models(n_models: int | None = None):
    import torchvision

    kw = {"googlenet": {"aux_logits": False, "init_weights": False}}
    return {n: torchvision.models.get_model(n, weights=None, **kw.get(n, {})).eval() for n in HELDOUT[:n_models]}


def _measure_pass(backend: str, models: dict, label: str) -> dict[str, float]:
    from tqdm.auto import tqdm

    from hwnas.builder import measure_latency

    return {n: measure_latency(m, backend, (1, 3, 224, 224)) for n, m in tqdm(models.items(), desc=label)}


def _within10(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.abs(pred / true - 1) <= 0.1) * 100)


def _row(method: str, source: str, pred: dict[str, float], truth: dict[str, float], wall_s: float | None) -> dict:
    names = [n for n in truth if n in pred]
    p, t = np.array([pred[n] for n in names]), np.array([truth[n] for n in names])
    return {"method": method, "source": source, "within10": _within10(p, t),
            "rmspe": float(np.sqrt(np.mean((p / t - 1) ** 2)) * 100), "median_ratio": float(np.median(p / t)),
            "wall_s": wall_s, "predicted_ms": {n: float(pred[n]) for n in names}}


def _probe_factor(raw: Path, source) -> float:
    """Median measured/predicted over the probe networks (the single global speed factor)."""
    from hwnas.builder import probe_networks, read_records

    measured = {r["model"]: float(r["ms"]) for r in read_records(raw / "networks.jsonl")
                if r.get("type") == "measurement" and float(r.get("ms", -1)) > 0}
    nets = [m for m in probe_networks() if m.key in measured]
    ratios = [measured[m.key] / source.predict(m.build(), "torch", m.input_shape) for m in nets]
    return float(np.median(ratios))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="torchscript-cpu")
    ap.add_argument("--out", required=True, help="folder for the adaptations (raw probe data, predictors)")
    ap.add_argument("--time-budget-min", type=float, default=10.0)
    ap.add_argument("--json", default=None, help="write the rows and the held-out measurements here")
    ap.add_argument("--plot", default=None, help="PNG: predicted vs measured per method")
    ap.add_argument("--models", type=int, default=None, help="only the first N held-out models (a smoke run)")
    args = ap.parse_args(argv)
    for category in (DeprecationWarning, FutureWarning):   # torch's jit/ONNX deprecation notices
        warnings.filterwarnings("ignore", category=category)
    from hwnas.predictor import DeviceMismatchWarning

    # scores predictors of the machine that measured the stored data, on purpose: not this machine's
    warnings.filterwarnings("ignore", category=DeviceMismatchWarning)

    import hwnas
    from hwnas.builder import AdaptConfig, adapt
    from hwnas.device import describe, fingerprint

    out = Path(args.out)
    models = _models(args.models)
    first = _measure_pass(args.backend, models, "held-out models, pass 1")
    entries = [p for p in hwnas.list_latency_predictors(args.backend) if p["source"] == "embedded"]
    full = [p for p in hwnas.list_latency_predictors(args.backend) if p["matches_this_machine"]
            and "adapted" not in str(p.get("status"))]
    runs = []
    t0 = time.monotonic()
    rep = adapt(AdaptConfig(backend=args.backend, out=out / "auto", time_budget_min=args.time_budget_min,
                            register=False), progress=True)
    runs.append((rep, time.monotonic() - t0, False))
    for e in entries:
        if e["name"] == rep["source"]:
            continue
        dest = out / f"from-{e['name']}"
        if not (dest / "raw").exists():
            import shutil

            shutil.copytree(out / "auto" / "raw", dest / "raw")   # the same probe: only the fit differs
        t0 = time.monotonic()
        r = adapt(AdaptConfig(backend=args.backend, out=dest, source=e["name"], time_budget_min=args.time_budget_min,
                              register=False), progress=True)
        runs.append((r, time.monotonic() - t0, True))
    second = _measure_pass(args.backend, models, "held-out models, pass 2")
    truth = {n: float(np.sqrt(first[n] * second[n])) for n in models}
    noise = _within10(np.array([first[n] for n in models]), np.array([second[n] for n in models]))

    rows = []
    for rep, wall, reused in runs:
        src = hwnas.load_latency_predictor(rep["source"], warn=False)
        src._device_checked = True
        base = {n: src.predict(m, "torch", (1, 3, 224, 224)) for n, m in models.items()}
        rows.append(_row("no adaptation", src.name, base, truth, 0.0))
        factor = _probe_factor(Path(rep["predictor"]).parent / "raw", src)
        rows.append(_row("global speed factor", src.name, {n: factor * v for n, v in base.items()}, truth, wall))
        ad = hwnas.load_latency_predictor(rep["predictor"], warn=False)
        rows.append(_row(f"hwnas adapt ({rep['form']})" + (" [probe reused]" if reused else ""), src.name,
                         {n: ad.predict(m, "torch", (1, 3, 224, 224)) for n, m in models.items()}, truth, wall))
    for p in full:
        fb = hwnas.load_latency_predictor(p["name"], warn=False)
        rows.append(_row("full build", p["name"], {n: fb.predict(m, "torch", (1, 3, 224, 224))
                                                   for n, m in models.items()}, truth, None))

    fp = fingerprint()
    print(f"\nadapt accuracy on {args.backend}, {len(models)} held-out torchvision models at 224 px; "
          f"machine: {describe(fp)} ({fp['device_id']})")
    print(f"noise ceiling (two passes agree within ±10%): {noise:.0f}%")
    print(f"{'method':40s} {'source':36s} {'±10%':>6s} {'RMSPE':>7s} {'ratio':>6s} {'wall s':>7s}")
    for r in rows:
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.0f}"
        print(f"{r['method']:40s} {r['source']:36s} {r['within10']:5.0f}% {r['rmspe']:6.1f}% "
              f"{r['median_ratio']:6.2f} {wall:>7s}")
    doc = {"backend": args.backend, "device": describe(fp), "device_id": fp["device_id"], "fingerprint": fp,
           "noise_within10": noise, "measured_ms": {"pass1": first, "pass2": second, "truth": truth}, "rows": rows,
           "adapt_reports": [r for r, _, _ in runs]}
    if args.json:
        atomic_write(args.json, json.dumps(doc, indent=1) + "\n")
    if args.plot:
        _plot(rows, truth, args.plot, f"{args.backend}: adapt on {describe(fp).split(';')[0]}")
    return 0


def _plot(rows: list, truth: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 6))
    names = list(truth)
    t = np.array([truth[n] for n in names])
    for r in rows:
        p = np.array([r["predicted_ms"][n] for n in names])
        ax.scatter(t, p, s=14, label=f"{r['method']} / {r['source']} ({r['within10']:.0f}%)")
    lim = [min(t.min(), 1) * 0.5, t.max() * 2]
    ax.plot(lim, lim, "k-", lw=0.8)
    ax.fill_between(lim, [v * 0.9 for v in lim], [v * 1.1 for v in lim], color="k", alpha=0.08)
    ax.set(xscale="log", yscale="log", xlim=lim, ylim=lim, xlabel="measured ms", ylabel="predicted ms", title=title)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
