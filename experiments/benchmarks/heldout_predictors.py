"""Every installed predictor of a backend against the same held-out networks measured on this machine, side by side.

The question this answers: how far off is a predictor on a CPU it was not made on, and how close is the one made
on this machine? It measures the held-out torchvision models of ``adapt_accuracy`` (224 px; none is a probe or zoo
network at that resolution) in two passes, prices them with every installed predictor of the backend (the
embedded ones and the user's), and prints per predictor the machine it describes, whether that is this machine,
the share within ±10% of the truth (the geometric mean of the passes), RMSPE and the median ratio
predicted/measured. The noise ceiling is the share of models whose two passes agree within ±10%.

    taskset -c 1 python -m experiments.benchmarks.heldout_predictors --backend onnxruntime-cpu \\
        --json heldout.json --plot heldout.png

Run it pinned to one core on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from experiments.benchmarks.adapt_accuracy import _measure_pass, _models, _plot, _row, _within10
from hwnas.files import atomic_write


def _predictors(backend: str, extra: list[str]) -> list[Any]:
    """Every installed predictor of ``backend``, then the predictor directories ``extra``."""
    from hwnas.predictor import find_predictors, load_latency_predictor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # predictors of other machines are the point of the comparison
        return [load_latency_predictor(p) for p in
                [e.path for e in find_predictors() if e.backend == backend] + list(extra)]


def _table(rows: list[dict[str, Any]], noise: float) -> str:
    names = [r["source"] for r in rows]
    shown = []
    for r, name in zip(rows, names):
        if names.count(name) > 1 and r.get("path"):   # two predictors of one name: say which folder
            p = Path(r["path"])
            name = f"{name} ({p.parent.name if p.name == 'predictor' else 'installed'})"
        shown.append(name)
    w = max([46] + [len(n) for n in shown])
    head = f"{'predictor':{w}s} {'describes':44s} {'here':>4s} {'±10%':>6s} {'RMSPE':>7s} {'ratio':>6s}"
    lines = [head, "-" * len(head)]
    for r, name in zip(rows, shown):
        lines.append(f"{name:{w}s} {r['describes'][:44]:44s} {'yes' if r['here'] else 'no':>4s} "
                     f"{r['within10']:5.0f}% {r['rmspe']:6.1f}% {r['median_ratio']:6.2f}")
    lines.append(f"noise ceiling (two passes agree within ±10%): {noise:.0f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from hwnas.device import describe, explain_differences, fingerprint, isa_level

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="torchscript-cpu", help="torchscript-cpu or onnxruntime-cpu")
    ap.add_argument("--extra", nargs="*", default=[], metavar="DIR",
                    help="predictor directories to compare too (an adapted predictor kept in its build folder)")
    ap.add_argument("--models", type=int, default=None, help="only the first N held-out models (a smoke run)")
    ap.add_argument("--json", default=None, help="write the rows and the measurements here")
    ap.add_argument("--plot", default=None, help="PNG: predicted against measured per model and predictor")
    args = ap.parse_args(argv)
    print("$ python -m experiments.benchmarks.heldout_predictors " + " ".join(sys.argv[1:] if argv is None else argv))
    fp = fingerprint()
    preds = _predictors(args.backend, args.extra)
    models = _models(args.models)
    first = _measure_pass(args.backend, models, "held-out models, pass 1")
    second = _measure_pass(args.backend, models, "held-out models, pass 2")
    truth = {n: float(np.sqrt(first[n] * second[n])) for n in models}
    noise = _within10(np.array([first[n] for n in models]), np.array([second[n] for n in models]))
    rows = []
    for p in preds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            priced = {n: p.predict(m, "torch", (1, 3, 224, 224)) for n, m in models.items()}
        dev = p.metadata["device"]
        row = _row("predictor", p.name, priced, truth, None)
        short = f"{dev['fingerprint'].get('cpu_model', '?')}, {isa_level(dev['fingerprint'])}, " \
                f"{dev['fingerprint'].get('cpu_signature') or 'no cpu signature'}"
        row.update(path=str(p.path), describes=short, here=not explain_differences(dev["fingerprint"], fp))
        rows.append(row)
    rows.sort(key=lambda r: (not r["here"], -r["within10"]))
    print(f"\n{args.backend}, {len(models)} held-out torchvision models at 224 px, measured on: {describe(fp)}\n")
    print(_table(rows, noise))
    if args.json:
        atomic_write(args.json, json.dumps({"backend": args.backend, "machine": describe(fp), "fingerprint": fp,
                                            "models": list(models), "noise_within10": noise,
                                            "measured_ms": {"pass1": first, "pass2": second, "truth": truth},
                                            "rows": rows}, indent=1))
        print(f"json: {args.json}")
    if args.plot:
        _plot(rows, truth, args.plot, f"{args.backend}, {len(models)} held-out models, on {fp.get('cpu_model')} "
                                      f"{isa_level(fp)} {fp.get('cpu_signature') or ''}")
        print(f"plot: {args.plot}")
    return 0


__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
