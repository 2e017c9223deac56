"""Kernel models fitted on in-network labels against the shipped predictor, on held-out families (issue 14).

Reads the traces of ``trace_models`` (every optimised node of each network as ONNX Runtime ran it) and the
end-to-end truths of ``measure_models`` (median of the passes), and compares, per family, leave one family out:

- **shipped**: the installed predictor for this machine (``--predictor``, default ``auto``), as it predicts;
- **in-network, ORT's own kernels**: the next model's regressors pricing the kernels ONNX Runtime really ran
  (its fusion and its layout conversions, read from the trace): the error left when fusion and layout are known;
- **in-network, derived rules**: regressors fitted on the other families' in-network labels of the kernels that
  fusion rules derived from their traces detect (:func:`hwnas.builder.rule_labels`), and the layout conversions
  predicted by the NCHWc rules (``hwnas/builder/_layout.py``): what a
  predictor built this way would say of a network it has never seen;
- the same without predicted conversions (what item 1 adds);
- **in-network, conversions absorbed**: regressors fitted with each conversion's time in the kernel on its plain
  side (:func:`hwnas.builder.trace_labels`), the network's own kernels only: the variant that keeps latency
  tables exact, hence the one a shipped predictor uses;

and two baselines: a MACs line fitted on the other families (``flops_lofo``) and an **op lookup**
(``op_lookup``): the isolated-kernel predictor (``--predictor``'s fallback) pricing every op alone, no fusion,
no network fitting (nn-Meter's op-level baseline; a network with an op it has no regressor for gets none).
Fusion rules are derived from the training families' traces starting from the chains ONNX Runtime's optimiser
fuses in small probe graphs (:func:`hwnas.builder.probe_fused_chains`, run here; the traces' ONNX Runtime version
must be this machine's): a held-out family's ``bn-relu`` or ``conv-hswish`` is then a rule although no training
family had one (``--no-fusion-probe``: the traces alone).

For the seen-family figure, a 5-fold cross-validation over networks of the absorbed variant. It also
reports how often the layout rules predict the compiled graph's conversion count exactly. Kernel types the
training families never showed are priced by the shipped predictor's isolated kernels, split under its own rules
(``--no-fallback``: by the longest fitted prefix, else a regressor pooled over non-MAC kernels).

    python -m experiments.benchmarks.in_network --out experiments/builds/context-onnxruntime-cpu-<machine>/raw \\
        --json in_network.json --plot in_network.png
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from experiments._cli import fail
from hwnas.files import atomic_write

METHODS = ("shipped", "oracle", "derived", "derived_no_layout", "absorbed")
LABELS = {"shipped": "shipped predictor", "oracle": "in-net, ORT kernels", "derived": "in-net, derived rules",
          "derived_no_layout": "  ... no conversions", "absorbed": "in-net, conv. absorbed",
          "cv": "in-net absorbed, 5-fold CV", "raw_cv": "kernel sum, 5-fold CV",
          "flops_lofo": "FLOPs line, LOFO", "op_lookup": "op lookup (isolated)"}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of ``path``, or of ``path.gz`` when only the compressed copy is there."""
    from hwnas.files import read_jsonl

    for p in (path, Path(str(path) + ".gz")):
        if p.is_file():
            return read_jsonl(p, what="a trace record")
    raise FileNotFoundError(f"no store {path} (or .gz)")


def _truth(out: Path) -> tuple[dict[str, list[float]], int]:
    """End-to-end passes per network from every ``zoo*.jsonl`` store in ``out`` (or its ``.gz``), and the most
    passes any store has."""
    from hwnas.builder import zoo_measurements

    stores = {p.name.removesuffix(".gz"): p for p in sorted(out.glob("zoo*.jsonl.gz"))}
    stores.update({p.name: p for p in sorted(out.glob("zoo*.jsonl"))})
    truth: dict[str, list[float]] = {}
    most = 0
    for store in stores.values():
        p = 0
        while True:
            got = zoo_measurements(store, p)
            if not got:
                break
            for k, r in got.items():
                truth.setdefault(k, []).append(float(r["ms"]))
            p += 1
        most = max(most, p)
    return truth, most


def _noise(passes: list[float]) -> float | None:
    if len(passes) < 2:
        return None
    return float(np.mean([abs(v / np.median(passes[:i] + passes[i + 1:]) - 1) <= 0.1 for i, v in enumerate(passes)]))


def _tau(x: list[float], y: list[float]) -> float | None:
    from scipy.stats import kendalltau

    if len(x) < 3:
        return None
    t = kendalltau(x, y).statistic
    return float(t) if np.isfinite(t) else None


def _spearman(x: list[float], y: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(set(x)) < 3:
        return None
    r = spearmanr(x, y).statistic
    return float(r) if np.isfinite(r) else None


def block_pairs() -> list[tuple[str, str]]:
    """The op pairs meeting across a block boundary of every registered search space (default configs): derived
    fusion rules are cut there, so latency tables of the rebuilt predictor stay exact."""
    import search_spaces as ss
    from hwnas.tables import boundary_op_pairs

    return sorted({p for name in ss.list_spaces() for p in boundary_op_pairs(name)})


def evaluate(rows: list[dict[str, Any]], block: int, predictor: Any, folds: int = 5,
             fallback: Any = None, split_pairs: list[tuple[str, str]] = (),
             prior: list[tuple[str, ...]] = ()) -> dict[str, Any]:
    """Fill each row's predictions (``rows``: model, family, side, trace, measured_ms, noise); kernel types the
    training families never showed are priced by ``fallback`` (a predictor of isolated kernels), if given; rules
    are cut at ``split_pairs`` (:func:`block_pairs`) and start from the backend's probed fusions ``prior``
    (:func:`fusion_prior`)."""
    from tqdm.auto import tqdm

    from hwnas.builder import InNetworkModel, derive_fusion_rules

    for r in rows:
        r["shipped"] = float(predictor.predict(r["trace"].graph, model_type="graph"))
    families = sorted({r["family"] for r in rows})
    rules_by_family = {}
    cache: dict = {}
    for f in tqdm(families, desc="leave one family out"):
        train = [r for r in rows if r["family"] != f]
        rules, _ = derive_fusion_rules((r["trace"] for r in train), cache=cache, split_pairs=split_pairs,
                                       prior=prior)
        rules_by_family[f] = [ "-".join(p) for p in rules.patterns]
        model = InNetworkModel.fit([r["trace"] for r in train], [r["measured_ms"] for r in train], block=block,
                                   rules=rules, fallback=fallback)
        bare = InNetworkModel(rules, 0, model.regressors, model.specs, fallback=fallback,
                              free_types=model.free_types)
        bare.fit_network_term([r["trace"].graph for r in train], [r["measured_ms"] for r in train])
        absorbed = InNetworkModel.fit([r["trace"] for r in train], [r["measured_ms"] for r in train], block=0,
                                      rules=rules, absorb_layout=True, fallback=fallback)
        for r in rows:
            if r["family"] == f:
                r["oracle"] = model.predict_groups(r["trace"])
                r["derived"] = model.predict(r["trace"].graph)
                r["derived_no_layout"] = bare.predict(r["trace"].graph)
                r["absorbed"] = absorbed.predict(r["trace"].graph)
        for r in rows:
            if r["family"] == f:
                r["fallbacks"] = sum(absorbed.fallbacks.values())
    idx = list(range(len(rows)))
    random.Random(0).shuffle(idx)
    for k in tqdm(range(folds), desc="5-fold CV"):
        test = set(idx[k::folds])
        train = [rows[i] for i in idx if i not in test]
        rules, _ = derive_fusion_rules((r["trace"] for r in train), cache=cache, split_pairs=split_pairs,
                                       prior=prior)
        model = InNetworkModel.fit([r["trace"] for r in train], [r["measured_ms"] for r in train], block=0,
                                   rules=rules, absorb_layout=True, fallback=fallback)
        for i in test:
            ks = model.kernels(rows[i]["trace"].graph)
            rows[i]["cv"] = model.network_ms(ks)
            rows[i]["raw_cv"] = float(model.kernel_latencies(ks).sum())   # the kernel sum alone
    _flops_lofo(rows)
    _op_lookup(rows, fallback if fallback is not None else predictor)
    return {"rules_by_family": rules_by_family}


def _op_lookup(rows: list[dict[str, Any]], isolated: Any) -> None:
    """``op_lookup``: every op of the network its own kernel (no fusion rule), priced by ``isolated`` (a predictor
    of kernels timed alone) plus its per-call overhead; None where it has no regressor for an op."""
    from hwnas.errors import UnknownKernelError
    from hwnas.kernels import FusionRules, detect_kernels

    alone = FusionRules([])
    for r in rows:
        try:
            ms = isolated.kernel_latencies(detect_kernels(r["trace"].graph, alone))
            r["op_lookup"] = float(ms.sum()) + isolated.overhead_ms
        except UnknownKernelError:
            r["op_lookup"] = None


def _flops_lofo(rows: list[dict[str, Any]]) -> None:
    """``flops_lofo``: ms = a * MACs + b, fitted on the other families in relative error (the baseline of
    ``predictor_accuracy``)."""
    from hwnas.kernels import op_macs

    macs = np.array([sum(op_macs(n) for n in r["trace"].graph.nodes) for r in rows], dtype=np.float64)
    y = np.array([r["measured_ms"] for r in rows])
    fam = np.array([r["family"] for r in rows])
    for f in sorted(set(fam)):
        tr = fam != f
        coef, *_ = np.linalg.lstsq(np.stack([macs[tr], np.ones(tr.sum())], 1) / y[tr, None], np.ones(tr.sum()),
                                   rcond=None)
        for i in np.flatnonzero(~tr):
            rows[i]["flops_lofo"] = float(coef[0] * macs[i] + coef[1])


def fusion_prior(rows: list[dict[str, Any]], fp: dict[str, Any]) -> tuple[list[tuple[str, ...]], dict[str, Any]]:
    """The chains ONNX Runtime fuses, probed here from its compiled graphs (:func:`hwnas.builder.probe_fused_chains`),
    and a record of the probe. The probe reads the optimiser, not the CPU's speed, so it holds for traces taken on
    another machine with the same ONNX Runtime version; a different version is refused."""
    from hwnas.builder import probe_fused_chains
    from hwnas.device import describe

    here = str(fp.get("onnxruntime") or (fp.get("runtimes") or {}).get("onnxruntime") or "")
    traced = {m.group(1) for r in rows for m in [re.search(r"onnxruntime ([0-9][^ ;,]*)", r["device"] or "")] if m}
    if not here or traced != {here}:
        fail(f"the fusion probe runs ONNX Runtime {here or '(not installed)'} here, the traces were taken with "
             f"{sorted(traced) or 'an unrecorded version'}: its rules would describe another optimiser; run where "
             "the versions agree, or pass --no-fusion-probe")
    probe = probe_fused_chains("onnxruntime-cpu")
    fused = [tuple(r["ops"]) for r in probe if r["fused"]]
    return fused, {"onnxruntime": here, "probed_on": describe(fp), "fused": ["-".join(c) for c in fused],
                   "not_fused": ["-".join(r["ops"]) for r in probe if not r["fused"]]}


def _write(rows: list[dict[str, Any]], path: str, fp: dict[str, Any], passes: int, fallback: Any,
           split_pairs: list[tuple[str, str]], prior: list[tuple[str, ...]] = (),
           probe: dict[str, Any] | None = None) -> None:
    from hwnas.builder import InNetworkModel, derive_fusion_rules

    from hwnas.device import describe

    traced = {r["device"] for r in rows if r["device"]}
    if traced != {describe(fp)}:
        # Written elsewhere than traced: the machine's full fingerprint is the completing predictor's, when that
        # predictor was measured on the traced machine (its description matches the traces').
        theirs = (fallback.metadata.get("device") or {}).get("fingerprint") if fallback is not None else None
        if not theirs or traced != {describe(theirs)}:
            fail(f"the traces were taken on {sorted(traced)}, this machine is {describe(fp)}, and no --predictor "
                 "of the traced machine gives its fingerprint: a predictor written here would carry the wrong "
                 "machine's fingerprint; write it where the traces were taken, or name that machine's predictor")
        print(f"traced on another machine: the predictor carries the fingerprint of {fallback.name!r} "
              f"({describe(theirs)})")
        fp = dict(theirs)
    if fallback is not None and str(fallback.metadata.get("protocol", {}).get("labels", "")).startswith("in-network"):
        fail(f"{fallback.name!r} is itself an in-network predictor; name the isolated-kernel "
                         "predictor to complete it from with --predictor")
    rules, stats = derive_fusion_rules((r["trace"] for r in rows), split_pairs=split_pairs, prior=prior)
    model = InNetworkModel.fit([r["trace"] for r in rows], [r["measured_ms"] for r in rows], block=0, rules=rules,
                               absorb_layout=True, fallback=fallback)
    notes = {"in_network": {"networks": len(rows), "families": sorted({r["family"] for r in rows}),
                            "end_to_end_passes": passes, "fusion_rule_evidence": stats,
                            "rules_cut_at": ["-".join(p) for p in split_pairs], "fusion_probe": probe,
                            "network_term_ms": {"a": model.overhead[0], "b_per_kernel": model.overhead[1],
                                                "c_per_mweight": model.overhead[2]},
                            "benchmark": "experiments/benchmarks/in_network.py"}}
    out = model.write(path, fp, notes=notes, complete_from=fallback)
    print(f"predictor written: {out} ({len(model.specs)} kernel types, rules {model.rules})")


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def one(sel: list[dict[str, Any]]) -> dict[str, Any]:
        meas = np.array([r["measured_ms"] for r in sel])
        noise = [r["noise"] for r in sel if r["noise"] is not None]
        out: dict[str, Any] = {"n": len(sel), "noise_within10": 100 * float(np.mean(noise)) if noise else None,
                               "layout_count_exact": 100 * float(np.mean([r["layout_exact"] for r in sel]))}
        for m in (*METHODS, "cv", "raw_cv", "flops_lofo", "op_lookup"):
            have = [r.get(m) is not None for r in sel]     # op_lookup: None where an op has no regressor
            if not any(have):
                out[m] = {"ratio_median": None, "within10": None, "kendall_tau": None, "resolution_spearman": None,
                          "n": 0}
                continue
            v = np.array([r[m] for r, h in zip(sel, have) if h], dtype=np.float64)
            ratio = v / meas[np.array(have)]
            # a network the method cannot price counts as a miss in within10 (the share is of all networks)
            out[m] = {"ratio_median": float(np.median(ratio)),
                      "within10": 100 * float(np.sum(np.abs(ratio - 1) <= 0.1)) / len(sel),
                      "kendall_tau": _tau(list(v), list(meas[np.array(have)])),
                      "resolution_spearman": _spearman([r["side"] for r, h in zip(sel, have) if h], list(ratio)),
                      "n": int(sum(have))}
        return out

    fams = sorted({r["family"] for r in rows})
    return {"all": one(rows), "families": {f: one([r for r in rows if r["family"] == f]) for f in fams}}


def accuracy_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary in ``predictor_accuracy``'s keys (issue 14) for the shipped variant (conversions absorbed):
    ``raw`` is its kernel sum without the network term and ``cal_cv`` the full model, both from the 5-fold CV fits;
    ``lofo`` held out by family; ``flops`` a MACs line fitted on the other families; ``op_lookup`` the isolated
    predictor pricing every op alone (a network it cannot price counts as outside ±10%)."""
    def one(s: dict[str, Any]) -> dict[str, Any]:
        return {"n": s["n"], "noise_within10": s["noise_within10"], "raw_within10": s["raw_cv"]["within10"],
                "cal_cv_within10": s["cv"]["within10"], "lofo_within10": s["absorbed"]["within10"],
                "flops_within10": s["flops_lofo"]["within10"],
                "op_lookup_within10": s["op_lookup"]["within10"] if "op_lookup" in s else None,
                "raw_sum_ratio_median": s["raw_cv"]["ratio_median"], "kendall_tau": s["cv"]["kendall_tau"],
                "kendall_tau_lofo": s["absorbed"]["kendall_tau"],
                "raw_ratio_resolution_spearman": s["raw_cv"]["resolution_spearman"]}

    return {"all": one(summary["all"]), "families": {f: one(v) for f, v in summary["families"].items()}}


def _table(summary: dict[str, Any]) -> str:
    cols = (*METHODS, "cv", "flops_lofo", "op_lookup")
    head = f"{'family':14s} {'n':>3s} {'noise':>5s} {'layout=':>7s} | " + " | ".join(f"{LABELS[c]:>22s}" for c in cols)
    sub = f"{'':14s} {'':3s} {'':5s} {'':7s} | " + " | ".join(f"{'±10%   ratio    tau':>22s}" for _ in cols)
    lines = [head, sub, "-" * len(head)]
    for name, s in [*summary["families"].items(), ("ALL", summary["all"])]:
        nz = f"{s['noise_within10']:4.0f}%" if s["noise_within10"] is not None else "    -"
        cells = []
        for c in cols:
            t = (s.get(c) or {}).get("kendall_tau")
            if s.get(c) is None or s[c]["within10"] is None:      # older JSON without the column, or none priced
                cells.append(f"{'-':>22s}")
                continue
            cells.append(f"{s[c]['within10']:4.0f}%  {s[c]['ratio_median']:6.3f}  {t:+.2f}" if t is not None
                         else f"{s[c]['within10']:4.0f}%  {s[c]['ratio_median']:6.3f}     -")
        lines.append(f"{name:14s} {s['n']:3d} {nz} {s['layout_count_exact']:6.0f}% | " +
                     " | ".join(f"{c:>22s}" for c in cells))
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = sorted({r["family"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(17, 5), sharey=True)
    cmap = plt.get_cmap("tab20")
    for ax, m in zip(axes, ("shipped", "oracle", "derived")):
        for j, f in enumerate(fams):
            sel = [r for r in rows if r["family"] == f]
            ax.scatter([r["side"] for r in sel], [r[m] / r["measured_ms"] for r in sel], s=12, color=cmap(j % 20),
                       label=f)
        ax.axhline(1.0, color="k", lw=0.8)
        for k in (0.9, 1.1):
            ax.axhline(k, color="k", ls=":", lw=0.6)
        ax.set(xlabel="input resolution (px)", title=LABELS[m] + (" (LOFO)" if m != "shipped" else ""),
               yscale="log")
    axes[0].set_ylabel("predicted / measured")
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder with traces.jsonl(.gz) and zoo.jsonl(.gz)")
    ap.add_argument("--predictor", default="auto", help="shipped predictor to compare with (default auto)")
    ap.add_argument("--isa", default=None, help="vector ISA of the traced CPU (default: this machine's)")
    ap.add_argument("--write-predictor", default=None, metavar="DIR",
                    help="also fit the absorbed variant on every network and write it as a predictor to DIR")
    ap.add_argument("--skip-eval", action="store_true", help="with --write-predictor: no comparison")
    ap.add_argument("--no-fallback", action="store_true",
                    help="price kernel types the training families lack by prefix / pooled regressors, not by "
                         "the shipped predictor's isolated kernels")
    ap.add_argument("--no-fusion-probe", action="store_true",
                    help="derive fusion rules from the training traces alone, not also from ONNX Runtime's "
                         "compiled graphs of small chains (the ablation)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--accuracy-json", default=None, metavar="PATH",
                    help="also write the summary in predictor_accuracy's keys (a build's accuracy.json)")
    ap.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    print("$ python -m experiments.benchmarks.in_network " + " ".join(sys.argv[1:] if argv is None else argv))
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from hwnas.builder import NodeTrace, block_size, layout_conversions, zoo
    from hwnas.device import describe, fingerprint
    from hwnas.predictor import load_latency_predictor

    out = Path(args.out)
    fp = fingerprint()
    isa = args.isa or str(fp.get("torch_cpu_capability") or "")
    block = block_size(isa)
    predictor = load_latency_predictor(args.predictor if args.predictor != "auto" else "auto:onnxruntime-cpu")
    truth, passes = _truth(out)
    sides = {m.key: int(m.input_shape[-1]) for m in zoo()}
    traces: dict[str, dict[str, Any]] = {}
    for r in _read_jsonl(out / "traces.jsonl"):
        traces.setdefault(r["model"], r)          # the first pass's trace is the structure and the labels
    rows = []
    for key, r in traces.items():
        if key not in truth:
            continue
        t = NodeTrace.from_dict(r)
        conv = layout_conversions(t.graph, block)
        exact = (sum(c.kind == "to_blocked" for c in conv) == sum(x[0] == "ReorderInput" for x in t.reorders) and
                 sum(c.kind == "to_plain" for c in conv) == sum(x[0] == "ReorderOutput" for x in t.reorders))
        rows.append({"model": key, "family": r["family"], "side": sides.get(key, 0), "trace": t,
                     "measured_ms": float(np.median(truth[key])), "noise": _noise(truth[key]),
                     "layout_exact": exact, "device": r.get("device")})
    dev = describe(fp)
    pairs = block_pairs()
    prior, probe = ([], None) if args.no_fusion_probe else fusion_prior(rows, fp)
    if probe:
        print(f"fusion probe (ONNX Runtime {probe['onnxruntime']}): fused {', '.join(probe['fused'])}")
    if args.write_predictor:
        _write(rows, args.write_predictor, fp, passes, None if args.no_fallback else predictor, pairs, prior, probe)
        if args.skip_eval:
            return
    extra = evaluate(rows, block, predictor, fallback=None if args.no_fallback else predictor, split_pairs=pairs,
                     prior=prior)
    extra["fusion_probe"] = probe
    summary = summarise(rows)
    traced_on = sorted({r["device"] for r in rows if r["device"]})
    print(f"\nmachine now: {dev}\ntraced on: {'; '.join(traced_on)}\nblock {block} ({isa}); predictor "
          f"{predictor.name}; {len(rows)} networks, {passes} end-to-end passes (truth: their median)\n")
    print(_table(summary))
    if args.json:
        keep = ("model", "family", "side", "measured_ms", "noise", "layout_exact", *METHODS, "cv", "raw_cv",
                "flops_lofo", "op_lookup", "fallbacks")
        atomic_write(args.json, json.dumps({
            "machine": dev, "traced_on": traced_on, "block": block, "predictor": predictor.name, "passes": passes,
            "summary": summary, "rules_cut_at": ["-".join(p) for p in pairs], **extra,
            "rows": [{k: r[k] for k in keep if k in r} for r in rows]}, indent=1))
        print(f"json: {args.json}")
    if args.accuracy_json:
        atomic_write(args.accuracy_json, json.dumps({
            "machine": dev, "traced_on": traced_on, "predictor_compared": predictor.name, "passes": passes,
            "method": "in-network labels (experiments/benchmarks/in_network.py), conversions absorbed",
            "summary": accuracy_summary(summary)}, indent=1))
        print(f"accuracy json: {args.accuracy_json}")
    if args.plot:
        _plot(rows, args.plot, f"in-network kernel models vs {predictor.name}, {dev}")


if __name__ == "__main__":
    main()
