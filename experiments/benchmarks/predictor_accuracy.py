"""Model-level accuracy of a predictor against end-to-end measurements, side by side with a FLOPs baseline.

Measures a set of networks end to end on the predictor's backend with its protocol (kept in a resumable JSONL
store), predicts each, and prints per family: share within ±5% and ±10%, RMSE (ms) and RMSPE of (a) the hwnas
predictor and (b) a FLOPs linear regression fitted leave-one-family-out (so the baseline never sees the family it
is scored on). Also writes a predicted-vs-measured scatter plot.

    python -m experiments.benchmarks.predictor_accuracy --predictor DIR_OR_NAME --store runs/models.jsonl \\
        [--set quick|full] [--plot runs/accuracy.png]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision

from hwnas.builder._fit import error_metrics

QUICK = {
    "mobilenet_v2": [("mobilenet_v2", {"width_mult": w}) for w in (0.5, 1.0)],
    "mobilenet_v3": [("mobilenet_v3_large", {}), ("mobilenet_v3_small", {})],
    "resnet": [("resnet18", {}), ("resnet34", {})],
    "shufflenet_v2": [("shufflenet_v2_x0_5", {}), ("shufflenet_v2_x1_0", {})],
    "mnasnet": [("mnasnet0_5", {}), ("mnasnet1_0", {})],
    "efficientnet": [("efficientnet_b0", {})],
    "regnet": [("regnet_x_400mf", {}), ("regnet_y_400mf", {})],
    "squeezenet": [("squeezenet1_0", {}), ("squeezenet1_1", {})],
}


def _models(which: str, seed: int):
    import search_spaces as ss

    out = []
    for family, entries in QUICK.items():
        for name, kw in entries:
            for res in ((160, 224) if which == "full" else (224,)):
                out.append((family, f"{name}{kw or ''}@{res}", lambda n=name, k=kw: torchvision.models.get_model(
                    n, weights=None, **k), (1, 3, res, res)))
    for space_name in ss.list_spaces():
        space = ss.create_space(space_name)
        for i in range(6 if which == "full" else 3):
            arch = ss.random_arch(space, seed=seed + i)
            out.append((space_name, f"{space_name}#{seed + i}", lambda s=space, a=arch: ss.build_subnet(s, a),
                        (1, 3, 224, 224)))
    return out


def _errors(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    m = error_metrics(pred, true)
    return {"n": m["n"], "±5%": m["within_5pct"], "±10%": m["within_10pct"], "rmse_ms": m["rmse_ms"],
            "rmspe": m["rmspe"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictor", required=True)
    ap.add_argument("--store", required=True, help="JSONL file of end-to-end measurements (resumed)")
    ap.add_argument("--set", choices=("quick", "full"), default="quick")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from tqdm.auto import tqdm

    from hwnas.builder._backends import get_backend
    from hwnas.builder._protocol import MeasureProtocol
    from hwnas.builder._store import open_store
    from hwnas.predictor import load_latency_predictor

    pred = load_latency_predictor(args.predictor)
    protocol = MeasureProtocol.from_dict(pred.metadata["protocol"]) if "protocol" in pred.metadata else None
    backend = get_backend(pred.backend)
    Path(args.store).parent.mkdir(parents=True, exist_ok=True)
    store = open_store(args.store)
    rows = []
    with store:
        for family, name, build, shape in tqdm(_models(args.set, args.seed), desc="models"):
            model = build().eval()
            key = f"model:{name}:{list(shape)}"
            if key not in store:
                store.append(key, backend.measure(model, shape, protocol), raw=False, family=family)
            measured = float(store.get(key)["ms"])
            macs = sum(k.features["macs"] for k in pred.kernels(model, "torch", shape))
            rows.append((family, name, measured, pred.predict(model, "torch", shape), macs))
    fams = sorted({r[0] for r in rows})
    true = np.array([r[2] for r in rows])
    hw = np.array([r[3] for r in rows])
    flops = np.zeros_like(true)
    for f in fams:   # FLOPs baseline, leave-one-family-out
        tr = np.array([r[0] != f for r in rows])
        x = np.array([[r[4], 1.0] for r in rows])
        coef, *_ = np.linalg.lstsq(x[tr], true[tr], rcond=None)
        flops[~tr] = x[~tr] @ coef
    print(f"predictor {pred.name} ({pred.backend}); device: {pred.metadata.get('device', {}).get('description')}")
    print(f"{'family':15s} {'n':>3s} | {'hwnas ±5%':>9s} {'±10%':>6s} {'RMSPE':>7s} | {'FLOPs ±5%':>9s} {'±10%':>6s} "
          f"{'RMSPE':>7s}")
    for f in fams + ["ALL"]:
        sel = np.array([f == "ALL" or r[0] == f for r in rows])
        a, b = _errors(hw[sel], true[sel]), _errors(flops[sel], true[sel])
        print(f"{f:15s} {a['n']:3d} | {a['±5%']:9.0%} {a['±10%']:6.0%} {a['rmspe']:7.1%} | {b['±5%']:9.0%} "
              f"{b['±10%']:6.0%} {b['rmspe']:7.1%}")
    print("\nper model: measured ms, hwnas predicted ms, ratio")
    for r in rows:
        print(f"  {r[1]:40s} {r[2]:8.2f} {r[3]:8.2f} {r[3] / r[2]:6.2f}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 6))
        for f in fams:
            sel = np.array([r[0] == f for r in rows])
            ax.scatter(true[sel], hw[sel], label=f, s=18)
        lim = [0, max(true.max(), hw.max()) * 1.05]
        ax.plot(lim, lim, "k-", lw=0.8)
        ax.plot(lim, [v * 1.1 for v in lim], "k:", lw=0.6)
        ax.plot(lim, [v * 0.9 for v in lim], "k:", lw=0.6)
        ax.set(xlabel="measured (ms)", ylabel="predicted (ms)", title=f"{pred.name}: predicted vs measured")
        ax.legend(fontsize=7)
        fig.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
