"""Model-level accuracy of a built predictor on the zoo, side by side with baselines and the noise ceiling.

Reads what a build measured (no timing happens here): ``<build>/raw/kernels*.jsonl[.gz]`` (kernels), the zoo
networks measured end to end by ``experiments.benchmarks.measure_models`` (``<build>/raw/zoo.jsonl``; each pass
an independent process), and optionally an op-level build (``hwnas build --op-level``). The truth of a network
is the median of its passes. Prints one table per family, all columns from the same measurements:

- **noise**: the share of networks where a single pass agrees with the median of the other passes within ±10%,
  averaged over the passes (with two passes: pass 1 against pass 0); the best any predictor can be scored at;
- **hwnas raw**: the kernel sum without calibration;
- **hwnas cal (CV)**: with the kernel-type calibration, each network predicted by a calibration fitted on the
  other four fifths of the networks (5-fold cross-validation, so no network scores itself);
- **hwnas LOFO**: leave one family out: kernel regressors refitted without the kernels only that family brought
  into the prior (neighbours of its kernels included) and the calibration fitted without its networks (for an
  adapted predictor, whose kernels were fitted on no zoo network of this machine, the calibration only);
- **FLOPs**: latency = a * MACs + b fitted on the other families;
- **op-lookup**: the sum of per-operator latencies, every operator timed alone, no fusion;
- **raw/meas**: the median of the uncalibrated kernel sum over the measured latency, and **tau**: Kendall's tau
  between the calibrated (CV) prediction and the measured latency (the ranking a search relies on).

Neighbour kernels (jitter, adaptive) belong to the family of the prior kernel they perturb. Where a build did not
record that source, it is recovered by re-sampling the prior; a neighbour still without one is attributed to every
family whose prior kernels share its signature (type, kernel, stride, depthwise or not), or to all families if
none does, so a leave-one-family-out fit never trains on a kernel its family may have brought in.

``--json PATH`` writes the rows, the calibration forms and a ``summary``: ``{"all": {...}, "families": {NAME:
{...}}}``, each with ``noise_within10``, ``raw_within10``, ``cal_cv_within10``, ``lofo_within10``,
``flops_within10``, ``op_lookup_within10`` (percent, 0-100; null where not computed), ``raw_sum_ratio_median``,
``kendall_tau`` (calibrated CV), ``kendall_tau_raw``, ``raw_ratio_resolution_spearman`` (does the raw ratio drift
with input resolution?) and ``n``.

    python -m experiments.benchmarks.predictor_accuracy --build experiments/builds/onnxruntime-cpu \\
        --ops-build experiments/builds/onnxruntime-cpu-ops --plot accuracy.png --json accuracy.json
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.builder import apply_calibration, error_metrics, network_sums, select_calibration, zoo_measurements
from hwnas.files import atomic_write

COLUMNS = ("hwnas_raw", "hwnas_cal_cv", "hwnas_lofo", "flops_lofo", "op_lookup")
SUMMARY_KEYS = {"raw_within10": "hwnas_raw", "cal_cv_within10": "hwnas_cal_cv", "lofo_within10": "hwnas_lofo",
                "flops_within10": "flops_lofo", "op_lookup_within10": "op_lookup"}
NEIGHBOUR = {"jitter", "adaptive"}


def _predictor(path: Path, calibrated: bool) -> Any:
    from hwnas.predictor import LatencyPredictor
    from hwnas.predictor import read_predictor

    meta, regs = read_predictor(path)
    if not calibrated:
        meta.pop("calibration", None)
    return LatencyPredictor(meta, regs, path=path)


def _signature(r: dict[str, Any]) -> tuple:
    f = r["features"]
    return r["type"], f["kernel"], f["stride"], f["groups"] > 1 and f["groups"] == f["cin"]


def _parents(build: Path, rows: list[dict[str, Any]]) -> tuple[dict[str, set[str]], dict[str, int]]:
    """Source families of every neighbour (jitter, adaptive) kernel, and how they were found.

    Recorded ``parent_families`` first; then a re-sampling of the prior with the build's deterministic sampler;
    then every family whose prior kernels share the neighbour's signature; else every family."""
    families = sorted({f for r in rows for f in r["families"]} - NEIGHBOUR)
    out = {r["key"]: set(r["parent_families"]) for r in rows if r["parent_families"]}
    missing = [r for r in rows if set(r["families"]) <= NEIGHBOUR and r["key"] not in out]
    how = {"recorded": len(out), "resampled": 0, "signature": 0, "all_families": 0}
    if missing:
        from hwnas.builder import BuildConfig, build_fusion_rules as _rules, sample_kernels, spec_key

        cfg = BuildConfig(backend="?", out=build)
        resampled = {spec_key(s): s["parent_families"] for s in sample_kernels(cfg, _rules(cfg, progress=False),
                                                                               progress=False)
                     if s.get("parent_families")}
        by_sig: dict[tuple, set[str]] = {}
        for r in rows:
            if set(r["families"]) - NEIGHBOUR:
                by_sig.setdefault(_signature(r), set()).update(set(r["families"]) - NEIGHBOUR)
        for r in missing:
            if r["key"] in resampled:
                out[r["key"]], kind = set(resampled[r["key"]]), "resampled"
            elif _signature(r) in by_sig:
                out[r["key"]], kind = by_sig[_signature(r)], "signature"
            else:
                out[r["key"]], kind = set(families), "all_families"
            how[kind] += 1
    return out, how


def _lofo_predictor(base: Any, rows: list[dict[str, Any]], parents: dict[str, set[str]], family: str,
                    backend: str) -> tuple[Any, list[str]]:
    """The base predictor refitted without the kernels only ``family`` brought in (and without every neighbour
    whose source may be ``family``)."""
    from hwnas.builder import MIN_FIT_SAMPLES, fit_regressors
    from hwnas.kernels import CONVERSION_TYPES
    from hwnas.predictor import LatencyPredictor

    def own(r: dict[str, Any]) -> bool:
        prior = set(r["families"]) - NEIGHBOUR
        if prior:
            return prior == {family}
        return family in parents.get(r["key"], {family})

    by_type: dict[str, list] = {}
    dropped: dict[str, list] = {}
    for r in rows:
        (dropped if own(r) else by_type).setdefault(r["type"], []).append((r["features"], r["ms"]))
    kept_from_family = []
    for t, v in dropped.items():   # a type only this family has: keep its rows (a type must stay priceable)
        if len(by_type.get(t, [])) < MIN_FIT_SAMPLES:
            by_type.setdefault(t, []).extend(v)
            kept_from_family.append(t)
    regs, kernels, _, _ = fit_regressors(by_type, backend)
    for t in CONVERSION_TYPES:   # layout conversions are priced per tensor shape, not fitted on kernel rows: kept
        if t in base.regressors and t not in regs:
            regs[t], kernels[t] = base.regressors[t], base.metadata["kernels"][t]
            kept_from_family.append(t)
    meta = {k: v for k, v in base.metadata.items() if k not in ("kernels", "calibration", "accuracy")}
    meta["kernels"] = kernels
    if meta.get("layout"):   # the layout variants refitted like the rest: the ones still fitted are the variants
        suffix = meta["layout"].get("suffix", "@dense")
        meta["layout"] = {**meta["layout"], "variants": sorted(t[:-len(suffix)] for t in regs if t.endswith(suffix))}
    return LatencyPredictor(meta, regs), kept_from_family


def _passes(store: Path) -> list[dict[str, dict[str, Any]]]:
    """Every pass of the zoo store (pass 0, 1, ... until one is missing)."""
    out = []
    while True:
        p = zoo_measurements(store, len(out))
        if not p:
            return out
        out.append(p)


def _single_pass_agreement(ms: list[float]) -> float | None:
    """Share of a network's passes that agree with the median of its other passes within ±10% (None with one)."""
    if len(ms) < 2:
        return None
    ok = [abs(v / float(np.median(ms[:i] + ms[i + 1:])) - 1) <= 0.10 for i, v in enumerate(ms)]
    return float(np.mean(ok))


def _summary_of(sel: list[dict[str, Any]]) -> dict[str, Any]:
    from scipy.stats import kendalltau, spearmanr

    true = np.array([r["measured_ms"] for r in sel])
    out: dict[str, Any] = {"n": len(sel)}
    noisy = [r["noise_within10"] for r in sel if r["noise_within10"] is not None]
    out["n_noise"] = len(noisy)
    out["noise_within10"] = 100 * float(np.mean(noisy)) if noisy else None
    for key, col in SUMMARY_KEYS.items():
        ok = [i for i, r in enumerate(sel) if r.get(col) is not None]
        out[key] = 100 * error_metrics([sel[i][col] for i in ok], true[ok])["within_10pct"] if ok else None
    ratio = np.array([r["hwnas_raw"] / r["measured_ms"] for r in sel])
    out["raw_sum_ratio_median"] = float(np.median(ratio))

    def tau(col: str) -> float | None:
        if len(sel) < 3:
            return None
        t = kendalltau([r[col] for r in sel], true).statistic
        return None if not np.isfinite(t) else float(t)

    out["kendall_tau"] = tau("hwnas_cal_cv")
    out["kendall_tau_raw"] = tau("hwnas_raw")
    sides = [r["side"] for r in sel]
    rho = spearmanr(sides, ratio).statistic if len(set(sides)) > 2 else float("nan")
    out["raw_ratio_resolution_spearman"] = float(rho) if np.isfinite(rho) else None
    return out


def _summary(rows: list[dict[str, Any]], families: list[str]) -> dict[str, Any]:
    return {"all": _summary_of(rows),
            "families": {f: _summary_of([r for r in rows if r["family"] == f]) for f in families}}


def _table(rows: list[dict[str, Any]], families: list[str], noise: dict[str, dict],
           summary: dict[str, Any]) -> str:
    def cell(m: dict | None, full: bool = True) -> str:
        if not m or not m["n"]:
            return f"{'-':>5s} {'-':>5s} {'-':>6s}" if full else f"{'-':>5s} {'-':>6s}"
        s = f"{m['within_5pct']:5.0%} " if full else ""
        return s + f"{m['within_10pct']:5.0%} {m['rmspe']:6.1%}"

    head = (f"{'family':14s} {'n':>4s} | {'noise ±10%':>10s} | {'hwnas raw ±5/±10/RMSPE':>18s} | "
            f"{'hwnas cal CV':>18s} | {'hwnas LOFO':>18s} | {'FLOPs ±10/RMSPE':>12s} | {'op-lookup':>12s} | "
            f"{'raw/meas':>8s} | {'tau':>5s}")
    lines = [head, "-" * len(head)]
    for f in families + ["ALL"]:
        sel = [r for r in rows if f == "ALL" or r["family"] == f]
        true = np.array([r["measured_ms"] for r in sel])
        m = {}
        for c in COLUMNS:
            ok = [i for i, r in enumerate(sel) if r.get(c) is not None]
            m[c] = error_metrics([sel[i][c] for i in ok], true[ok]) if ok else None
        nz = noise.get(f)
        nz_s = f"{nz['within_10pct']:4.0%} (n={nz['n']})" if nz else "-"
        sm = summary["all"] if f == "ALL" else summary["families"][f]
        tau = f"{sm['kendall_tau']:5.2f}" if sm["kendall_tau"] is not None else "    -"
        lines.append(f"{f:14s} {len(sel):4d} | {nz_s:>10s} | {cell(m['hwnas_raw'])} | {cell(m['hwnas_cal_cv'])} | "
                     f"{cell(m['hwnas_lofo'])} | {cell(m['flops_lofo'], False)} | {cell(m['op_lookup'], False)} | "
                     f"{sm['raw_sum_ratio_median']:8.3f} | {tau}")
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], families: list[str], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5), sharex=True, sharey=True)
    cmap = plt.get_cmap("tab20")
    panels = (("hwnas_cal_cv", "hwnas, calibrated (5-fold CV)"), ("hwnas_lofo", "hwnas, leave one family out"),
              ("flops_lofo", "FLOPs regression (other families)"))
    true_all = np.array([r["measured_ms"] for r in rows])
    lim = [true_all.min() * 0.7, true_all.max() * 1.4]
    for ax, (col, label) in zip(axes, panels):
        for j, f in enumerate(families):
            sel = [r for r in rows if r["family"] == f and r.get(col) is not None]
            ax.scatter([r["measured_ms"] for r in sel], [r[col] for r in sel], s=9, color=cmap(j % 20), label=f)
        ax.plot(lim, lim, "k-", lw=0.8)
        for k in (0.9, 1.1):
            ax.plot(lim, [v * k for v in lim], "k:", lw=0.6)
        ax.set(xscale="log", yscale="log", xlim=lim, ylim=lim, xlabel="measured (ms)", title=label)
    axes[0].set_ylabel("predicted (ms)")
    axes[0].legend(fontsize=7, markerscale=1.5)
    fig.suptitle(title + " (dotted: ±10%)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", required=True, help="build directory (raw/ and predictor/)")
    ap.add_argument("--predictor", default=None, help="predictor directory (default BUILD/predictor)")
    ap.add_argument("--store", default=None, help="zoo measurements (default BUILD/raw/zoo.jsonl[.gz])")
    ap.add_argument("--ops-build", default=None, help="op-level build for the op-lookup baseline")
    ap.add_argument("--no-lofo", action="store_true", help="skip the leave-one-family-out refits")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    for category in (DeprecationWarning, FutureWarning):   # torch's jit/ONNX deprecation notices
        warnings.filterwarnings("ignore", category=category)
    from hwnas.predictor import DeviceMismatchWarning

    # scores predictors of the machine that measured the stored data, on purpose: not this machine's
    warnings.filterwarnings("ignore", category=DeviceMismatchWarning)
    from tqdm.auto import tqdm

    from hwnas.builder import kernel_rows, zoo, zoo_store_path
    from hwnas.graph import capture
    from hwnas.kernels import detect_kernels

    build = Path(args.build)
    store = Path(args.store) if args.store else zoo_store_path(build / "raw")
    pred_dir = Path(args.predictor) if args.predictor else build / "predictor"
    base = _predictor(pred_dir, calibrated=False)
    passes = _passes(store)
    ref = passes[0]
    models = [m for m in zoo() if m.key in ref]
    families = sorted({m.family for m in models})
    graphs = [capture(m.build(), "torch", m.input_shape) for m in tqdm(models, desc="capturing networks")]
    kernels = [base.graph_kernels(g) for g in graphs]   # fusion and, where it has them, layout rules
    pass_ms = [[float(p[m.key]["ms"]) for p in passes if m.key in p] for m in models]
    y = np.array([float(np.median(v)) for v in pass_ms])
    ov = base.overhead_ms
    rows = [{"family": m.family, "model": m.key, "side": int(m.input_shape[-1]), "measured_ms": float(v),
             "pass_ms": ms, "noise_within10": _single_pass_agreement(ms)} for m, v, ms in zip(models, y, pass_ms)]
    fam = np.array([m.family for m in models])

    sums = network_sums(base, kernels)
    chosen, report = select_calibration(sums, y - ov, ov)
    cv = report["cv_predictions"] - ov
    macs = np.array([sum(k.features["macs"] for k in ks) for ks in kernels], dtype=np.float64)
    flops = np.zeros_like(y)
    for f in families:
        tr = fam != f
        # least squares on the relative error, the metric it is scored on (absolute least squares favours big nets)
        coef, *_ = np.linalg.lstsq(np.stack([macs[tr], np.ones(tr.sum())], 1) / y[tr, None], np.ones(tr.sum()),
                                   rcond=None)
        flops[~tr] = coef[0] * macs[~tr] + coef[1]
    for r, s, c, fl in zip(rows, sums, cv, flops):
        r.update(hwnas_raw=apply_calibration(None, s) + ov, hwnas_cal_cv=float(c) + ov, flops_lofo=float(fl))

    lofo_notes: dict[str, Any] = {}
    if not args.no_lofo:
        # an adapted predictor's kernels were fitted on another machine and moved here on probe networks: no zoo
        # network of this machine went into them, so holding a family out refits the calibration only
        adapted = "transfer" in base.metadata
        lofo_notes["mode"] = ("calibration refitted without the family (adapted kernels, fitted on no zoo network)"
                              if adapted else "kernels and calibration refitted without the family")
        print("leave-one-family-out: " + lofo_notes["mode"])
        if not adapted:
            krows = kernel_rows(build / "raw")[0] + kernel_rows(build / "raw", "layout_variants")[0]
            parents, how = _parents(build, krows)
            lofo_notes["neighbour_sources"] = how
            print("source family of the neighbour kernels: " + ", ".join(f"{k} {v}" for k, v in how.items()))
        for f in tqdm(families, desc="leave-one-family-out refits"):
            s_all = sums
            if not adapted:
                lp, kept = _lofo_predictor(base, krows, parents, f, base.backend)
                s_all = network_sums(lp, kernels)
                lofo_notes[f] = {"types_kept_from_family": kept}
            tr = np.flatnonzero(fam != f)
            cal, _ = select_calibration([s_all[i] for i in tr], y[tr] - ov, ov)
            for i in np.flatnonzero(fam == f):
                rows[i]["hwnas_lofo"] = apply_calibration(cal, s_all[i]) + ov

    if args.ops_build:
        from hwnas.errors import UnknownKernelError

        ops = _predictor(Path(args.ops_build) / "predictor", calibrated=False)
        for r, g in zip(rows, graphs):
            try:
                r["op_lookup"] = float(ops.kernel_latencies(detect_kernels(g, ops.rules)).sum()) + ops.overhead_ms
            except UnknownKernelError as e:
                r["op_lookup"] = None
                r["op_lookup_error"] = str(e).splitlines()[0]

    summary = _summary(rows, families)
    noise = {f: {"n": v["n_noise"], "within_10pct": v["noise_within10"] / 100}
             for f, v in [("ALL", summary["all"]), *summary["families"].items()] if v["noise_within10"] is not None}
    dev = base.metadata.get("device", {}).get("description")
    print(f"\npredictor {base.name} ({base.backend}); measured on: {dev}")
    print(f"zoo: {len(models)} networks in {len(families)} families, {len(passes)} passes (truth: their median); "
          f"store {store}\n")
    print(_table(rows, families, noise, summary))
    ratio = np.array([r["hwnas_raw"] / r["measured_ms"] for r in rows])
    print(f"\ncalibration form chosen by 5-fold CV: additive terms {chosen['terms']}, ridge {chosen['ridge']} "
          f"(CV RMSPE of each form: " + ", ".join(f"{c['terms']}/{c['ridge']}: {c['cv']['rmspe']:.1%}"
                                                  for c in report["candidates"]) + ")")
    print(f"uncalibrated sum / measured: median {np.median(ratio):.3f}, 10-90% {np.percentile(ratio, 10):.3f}"
          f"..{np.percentile(ratio, 90):.3f}")
    fails = [r for r in rows if r.get("op_lookup_error")]
    if fails:
        print(f"op-lookup could not price {len(fails)} networks (first: {fails[0]['op_lookup_error']})")
    if args.plot:
        _plot(rows, families, args.plot, f"{base.name}: {len(models)} networks")
    if args.json:
        atomic_write(args.json, json.dumps({"predictor": base.name, "device": dev, "passes": len(passes),
                                            "summary": summary, "calibration_forms": report["candidates"],
                                            "lofo": lofo_notes, "rows": rows}, indent=1))
        print(f"json: {args.json}")


if __name__ == "__main__":
    main()
