"""TorchScript kernels labelled inside their networks, against the shipped zoo-calibrated predictor (issue 14).

Reads the traces of ``trace_models --backend torchscript-cpu`` (per network: oneDNN's convolution and eltwise
primitives, the profiler's ATen events, the unprofiled run) and the end-to-end truths of ``measure_models``
(median of the passes). Each network's kernels are those of ``--predictor`` (its fusion and layout rules,
conversions included); :func:`hwnas.builder.ts_kernel_labels` gives each kernel its in-network time, and
:class:`hwnas.builder.TSInNetworkModel` is fitted on them (kernel regressors and additive network terms). Kernel
types no training network labelled are priced by ``--predictor``'s isolated kernels without its calibration.

Reported per family, with the noise ceiling: the share within ±10% held out by family (LOFO) and in a 5-fold
CV over networks, the labels' coverage (share of kernels labelled; labels' sum / measured), the kernel sum
without the network terms / measured, and Kendall τ; beside them the shipped predictor's own LOFO and CV
figures from ``--accuracy`` (``predictor_accuracy``'s JSON of the same zoo).

    python -m experiments.benchmarks.ts_in_network \\
        --build experiments/builds/context-torchscript-cpu-amd-epyc-avx512-f25m17 --json ts_in_network.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from experiments._cli import fail
from experiments.benchmarks.in_network import _noise, _read_jsonl, _tau, _truth
from hwnas.files import atomic_write


def _uncalibrated(predictor: Any) -> Any:
    """``predictor`` without its zoo calibration (its isolated kernels, as measured and transferred)."""
    from hwnas.predictor import LatencyPredictor

    meta = {k: v for k, v in predictor.metadata.items() if k != "calibration"}
    return LatencyPredictor(meta, predictor.regressors, predictor.path)


def load_rows(build: Path, predictor: Any, traces: str = "ts_traces.jsonl", truth_from: str = "zoo"
              ) -> tuple[list[dict[str, Any]], int]:
    """One row per network with a trace and a truth: its kernels, per-kernel labels (median over passes),
    residual, measured ms (median of the passes), noise flag. ``truth_from="traces"``: the truth is the median of
    the traces' unprofiled runs (one per pass), instead of the zoo stores'."""
    from hwnas.builder import TSNetworkTrace, ts_kernel_labels, zoo

    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in _read_jsonl(build / "raw" / traces):
        by_model.setdefault(r["model"], []).append(r)
    if truth_from == "traces":
        truth = {k: [float(r["run_ms"]) for r in v] for k, v in by_model.items()}
        passes = max(len(v) for v in truth.values())
    else:
        truth, passes = _truth(build / "raw")
    models = {m.key: m for m in zoo()}
    rows = []
    from tqdm.auto import tqdm

    for key in tqdm(sorted(by_model), desc="labelling networks"):
        if key not in truth or key not in models:
            continue
        m = models[key]
        kernels = predictor.kernels(m.build(), input_shape=m.input_shape)
        per_pass = [ts_kernel_labels(TSNetworkTrace.from_record(r), kernels) for r in by_model[key]]
        labels = []
        for i in range(len(kernels)):
            got = [p[0][i] for p in per_pass if p[0][i] is not None]
            labels.append(float(np.median(got)) if got else None)
        rows.append({"model": key, "family": m.family, "side": int(m.input_shape[-1]), "kernels": kernels,
                     "labels": labels, "residual_ms": float(np.median([p[1] for p in per_pass])),
                     "traced_ms": float(np.median([r["run_ms"] for r in by_model[key]])),
                     "measured_ms": float(np.median(truth[key])), "noise": _noise(truth[key]),
                     "macs": sum(k.features.get("macs", 0.0) for k in kernels)})
    return rows, passes


def _fit_predict(train: list[dict[str, Any]], test: list[dict[str, Any]], fallback: Any, seed: int,
                 ridge: float) -> tuple[list[float], list[float], dict[str, int]]:
    from hwnas.builder import TSInNetworkModel

    model = TSInNetworkModel.fit([(r["kernels"], r["labels"]) for r in train], [r["measured_ms"] for r in train],
                                 fallback=fallback, seed=seed, ridge=ridge)
    model.fallbacks = {}
    full = [model.predict(r["kernels"]) for r in test]
    raw = [float(model.kernel_ms(r["kernels"]).sum()) for r in test]
    return full, raw, dict(model.fallbacks)


def evaluate(rows: list[dict[str, Any]], fallback: Any, folds: int = 5, seed: int = 0, ridge: float = 0.1
             ) -> dict[str, int]:
    """Fill ``lofo``, ``lofo_raw``, ``cv``, ``cv_raw`` (ms) in every row; returns the fallback counts (LOFO)."""
    from tqdm.auto import tqdm

    used: dict[str, int] = {}
    fams = sorted({r["family"] for r in rows})
    for f in tqdm(fams, desc="leave one family out"):
        test = [r for r in rows if r["family"] == f]
        full, raw, fb = _fit_predict([r for r in rows if r["family"] != f], test, fallback, seed, ridge)
        for r, a, b in zip(test, full, raw):
            r["lofo"], r["lofo_raw"] = a, b
        for t, n in fb.items():
            used[t] = used.get(t, 0) + n
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    for i in tqdm(range(folds), desc="5-fold CV"):
        test = [rows[j] for j in order[i::folds]]
        train = [rows[j] for k, j in enumerate(order) if k % folds != i]
        full, raw, _ = _fit_predict(train, test, fallback, seed, ridge)
        for r, a, b in zip(test, full, raw):
            r["cv"], r["cv_raw"] = a, b
    return used


def _share(sel: list[dict[str, Any]], key: str) -> float:
    return 100 * float(np.mean([abs(r[key] / r["measured_ms"] - 1) <= 0.1 for r in sel]))


def summarise(rows: list[dict[str, Any]], shipped: dict[str, Any] | None) -> dict[str, Any]:
    def one(sel: list[dict[str, Any]], name: str) -> dict[str, Any]:
        noise = [r["noise"] for r in sel if r["noise"] is not None]
        meas = [r["measured_ms"] for r in sel]
        labelled = [sum(v is not None for v in r["labels"]) / max(len(r["labels"]), 1) for r in sel]
        lab_sum = [sum(v for v in r["labels"] if v is not None) / r["measured_ms"] for r in sel]
        ship = (shipped or {}).get("all" if name == "ALL" else "families", {})
        ship = ship if name == "ALL" else ship.get(name, {})
        raw_ratio = [r["cv_raw"] / r["measured_ms"] for r in sel]
        return {"n": len(sel), "noise_within10": 100 * float(np.mean(noise)) if noise else None,
                "lofo_within10": _share(sel, "lofo"), "cal_cv_within10": _share(sel, "cv"),
                "raw_within10": _share(sel, "cv_raw"), "raw_sum_ratio_median": float(np.median(raw_ratio)),
                "lofo_ratio_median": float(np.median([r["lofo"] / r["measured_ms"] for r in sel])),
                "kendall_tau": _tau([r["cv"] for r in sel], meas),
                "kendall_tau_lofo": _tau([r["lofo"] for r in sel], meas),
                "labelled_share": 100 * float(np.mean(labelled)), "label_sum_ratio_median": float(np.median(lab_sum)),
                "traced_over_measured_median": float(np.median([r["traced_ms"] / r["measured_ms"] for r in sel])),
                "shipped_lofo_within10": ship.get("lofo_within10"), "shipped_cv_within10": ship.get("cal_cv_within10")}

    fams = sorted({r["family"] for r in rows})
    return {"all": one(rows, "ALL"), "families": {f: one([r for r in rows if r["family"] == f], f) for f in fams}}


def _table(summary: dict[str, Any]) -> str:
    cols = [("noise_within10", "noise"), ("labelled_share", "labelled"), ("label_sum_ratio_median", "lab/meas"),
            ("raw_sum_ratio_median", "raw/meas"), ("raw_within10", "raw ±10"), ("cal_cv_within10", "CV ±10"),
            ("lofo_within10", "LOFO ±10"), ("lofo_ratio_median", "LOFO rat"), ("kendall_tau", "tau CV"),
            ("shipped_cv_within10", "ship CV"), ("shipped_lofo_within10", "ship LOFO")]
    head = f"{'family':14s} {'n':>3s} | " + " ".join(f"{c:>9s}" for _, c in cols)
    lines = [head, "-" * len(head)]
    for name, s in [*summary["families"].items(), ("ALL", summary["all"])]:
        cells = []
        for k, _ in cols:
            v = s.get(k)
            cells.append(f"{'-':>9s}" if v is None else f"{v:8.0f}%" if k.endswith("within10") or k == "labelled_share"
                         else f"{v:9.3f}" if "ratio" in k or k.startswith("traced") else f"{v:+9.2f}")
        lines.append(f"{name:14s} {s['n']:3d} | " + " ".join(cells))
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    fams = sorted({r["family"] for r in rows})
    for ax, key, name in ((axes[0], "cv", "5-fold CV"), (axes[1], "lofo", "leave one family out")):
        for f in fams:
            sel = [r for r in rows if r["family"] == f]
            ax.scatter([r["measured_ms"] for r in sel], [r[key] for r in sel], s=12, label=f)
        lo = min(r["measured_ms"] for r in rows)
        hi = max(r["measured_ms"] for r in rows)
        xs = np.array([lo, hi])
        ax.plot(xs, xs, "k-", lw=0.8)
        ax.fill_between(xs, 0.9 * xs, 1.1 * xs, color="grey", alpha=0.2, label="±10%")
        ax.set(xscale="log", yscale="log", xlabel="measured (ms)", ylabel="predicted (ms)", title=name)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write(rows: list[dict[str, Any]], predictor: Any, args: Any, summary: dict[str, Any]) -> None:
    from hwnas.builder import TSInNetworkModel
    from hwnas.device import fingerprint

    model = TSInNetworkModel.fit([(r["kernels"], r["labels"]) for r in rows], [r["measured_ms"] for r in rows],
                                 fallback=_uncalibrated(predictor), seed=args.seed, ridge=args.ridge)
    s = summary["all"]
    notes = {"in_network": {"n_networks": len(rows), "truth": args.truth, "ridge": args.ridge,
                            **{k: s[k] for k in ("noise_within10", "cal_cv_within10", "lofo_within10",
                                                 "raw_sum_ratio_median", "kendall_tau")}}}
    name = args.name or Path(args.write_predictor).name
    status = (f"kernels labelled inside {len(rows)} zoo networks traced here (oneDNN verbose and the profiler), "
              f"network terms fitted on their end-to-end medians ({args.truth}): {s['cal_cv_within10']:.0f}% within "
              f"±10% (5-fold CV), {s['lofo_within10']:.0f}% leaving each family out, noise ceiling "
              f"{s['noise_within10']:.0f}% (experiments/benchmarks/ts_in_network.py)")
    path = model.write(args.write_predictor, fingerprint(), predictor, name=name, notes=notes, status=status)
    print(f"predictor written: {path} ({len(model.specs)} fitted kernel types, {len(model.terms)} with terms of "
          f"their own; {model.per_kernel_ms * 1e3:.1f} us per kernel, {model.per_melem_ms:.3f} ms per Melem, "
          f"intercept {model.intercept_ms:.3f} ms)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", required=True, help="build folder with raw/ts_traces.jsonl[.gz] and raw/zoo*.jsonl")
    ap.add_argument("--predictor", default=None, help="kernels' predictor (default: BUILD/predictor)")
    ap.add_argument("--accuracy", default=None, help="the shipped predictor's accuracy JSON (default: "
                                                     "BUILD/accuracy.json when there)")
    ap.add_argument("--json", default=None, help="write rows and summary here")
    ap.add_argument("--plot", default=None, help="write a predicted-vs-measured PNG here")
    ap.add_argument("--truth", choices=("zoo", "traces"), default="zoo",
                    help="end-to-end truth: the zoo stores (measure_models) or the traces' unprofiled runs")
    ap.add_argument("--write-predictor", default=None,
                    help="fit on every network and write the predictor here (for this machine: the traces')")
    ap.add_argument("--name", default=None, help="name of the written predictor (default: the folder's name)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ridge", type=float, default=0.1, help="pull of the per-type network terms towards 0")
    args = ap.parse_args(argv)
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    from hwnas.device import describe, fingerprint
    from hwnas.predictor import load_latency_predictor

    build = Path(args.build)
    if not (build / "raw").is_dir():
        fail(f"no raw/ folder under {build}")
    predictor = load_latency_predictor(args.predictor or build / "predictor")
    if predictor.backend != "torchscript-cpu":
        fail(f"--predictor must be a torchscript-cpu predictor, got {predictor.backend!r}")
    rows, passes = load_rows(build, predictor, truth_from=args.truth)
    if len(rows) < 10:
        fail(f"only {len(rows)} networks have both a trace and a truth under {build / 'raw'}")
    used = evaluate(rows, _uncalibrated(predictor), seed=args.seed, ridge=args.ridge)
    acc_path = Path(args.accuracy) if args.accuracy else build / "accuracy.json"   # read last: may be in the making
    shipped = json.loads(acc_path.read_text())["summary"] if acc_path.is_file() else None
    summary = summarise(rows, shipped)
    print(f"machine now: {describe(fingerprint())}")
    print(f"ridge {args.ridge}; predictor {predictor.name}; {len(rows)} networks, {passes} end-to-end passes of "
          f"{args.truth} (truth: their median); "
          f"shipped figures from {acc_path if shipped else '(none)'}")
    print(_table(summary))
    print("kernels priced by the uncalibrated isolated predictor in LOFO (type: count): "
          + (", ".join(f"{t}: {n}" for t, n in sorted(used.items())) or "none"))
    if args.write_predictor:
        _write(rows, predictor, args, summary)
    if args.json:
        keep = [{k: v for k, v in r.items() if k not in ("kernels", "labels")} for r in rows]
        atomic_write(args.json, json.dumps({"summary": summary, "fallbacks": used, "rows": keep}, indent=1))
        print(f"json: {args.json}")
    if args.plot:
        _plot(rows, args.plot, f"{predictor.name}: TorchScript in-network kernels ({len(rows)} networks)")
        print(f"plot: {args.plot}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
