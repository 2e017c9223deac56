"""The shared end of a multi-trial search (random script and NNI launch): ranking, table, plot, best network.

:func:`finish_search` takes the finished trials as plain records (``{"trial", "arch", "default", "latency_ms",
"macs", "params", ...}``: what a trial reports, plus its id and architecture; an older file's ``"flops"`` is read
as ``"macs"``) and writes into ``out_dir``:

- ``topk.json``: the ``top_k`` most accurate trials within the budget (ties broken by lower latency), with the
  space, budget and units;
- ``search.png``: validation accuracy against predicted latency for every trial, the top-k highlighted, the best
  starred, the budget as a vertical line;
- ``best/arch.json`` (the architecture with its space, the space's whole configuration, input shape and
  classes: all ``hwnas export --arch`` needs) and ``best/state_dict.pt``: the best network, re-instantiated from
  its architecture with :func:`search_spaces.build_subnet` and its saved weights loaded strictly (and, given the
  validation data, re-evaluated: it must reproduce the recorded accuracy);
- ``best/model.pt``: the TorchScript file, through :func:`hwnas.export.export_subnet` unless ``export=False``
  (its parity and predicted/measured latency go into the report).

It prints and returns the table. Nothing here imports NNI: the NNI launcher calls it with the records it
collected.

Limitations: trials whose accuracy is missing or not finite are plotted nowhere and never ranked; trials outside
the budget are plotted (grey) but never ranked. Without weights for the best trial, only its architecture is saved
(the report says so).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from hwnas.errors import HwnasError
from hwnas.files import atomic_write

__all__ = ["SearchReport", "finish_search", "format_table", "rank_records", "short_arch"]

_REQUIRED = ("trial", "arch", "default", "latency_ms", "macs", "params")
# Accuracy granularity is 1/len(val); on GPUs a borderline argmax may flip, so allow a couple of samples.
_RELOAD_TOLERANCE_SAMPLES = 2
WeightsSource = Callable[[int], Any] | str | os.PathLike | None


@dataclass
class SearchReport:
    """What :func:`finish_search` wrote and found.

    Attributes
    ----------
    out_dir : Path
        Where the files are.
    top : list of dict
        The top-k records, best first, each with its ``rank`` (from 1).
    table : str
        The printed table.
    files : dict of str to Path
        ``topk_json``, ``plot``, ``best_arch``, and when written ``best_state_dict`` and ``best_model``.
    best : dict or None
        The best record (``top[0]``), ``None`` when no trial is within the budget.
    reload_accuracy : float or None
        Validation accuracy of the re-instantiated best network, when data was given.
    export : object or None
        The :class:`hwnas.export.ExportReport` of ``best/model.pt`` when exported.
    notes : list of str
        What could not be done and why (no trial within the budget, no weights, a failed export).
    n_trials, n_within_budget : int
        Trials reported, and those within the budget with a finite accuracy.
    budget : LatencyBudget or None
        The search's budget (ms); the summary compares the winner's measured latency with it.
    """

    out_dir: Path
    top: list[dict[str, Any]]
    table: str
    files: dict[str, Path]
    best: dict[str, Any] | None = None
    reload_accuracy: float | None = None
    export: Any = None
    notes: list[str] = field(default_factory=list)
    n_trials: int = 0
    n_within_budget: int = 0
    budget: Any = None

    def summary(self) -> str:
        """The table followed by where every file is, as printed at the end of a search."""
        lines = [self.table, ""]
        if self.best is not None:
            lines.append(f"best: trial {self.best['trial']}, accuracy {self.best['default']:.4f}, "
                         f"predicted latency {self.best['latency_ms']:.3f} ms")
        if self.reload_accuracy is not None:
            lines.append(f"best network reloaded from its weights: accuracy {self.reload_accuracy:.4f}")
        exp = self.export
        if exp is not None:
            lines.append(f"exported {getattr(exp, 'path', '?')} ({getattr(exp, 'method', '?')}; parity max |diff| "
                         f"{getattr(exp, 'parity_max_abs_diff', float('nan')):.2e})")
        if self.best is not None:   # the winner against its measurement on this machine, always one line
            from hwnas.export import latency_check

            predicted = getattr(exp, "predicted_ms", None) if exp is not None else None
            lines += latency_check(predicted if predicted is not None else self.best.get("latency_ms"),
                                   getattr(exp, "measured_ms", None), getattr(exp, "backend", None),
                                   getattr(self.budget, "max_ms", None))
        lines += [f"{name}: {path}" for name, path in self.files.items()]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


# -- ranking and formatting ----------------------------------------------------------------------------------------
def _check_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for n, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise HwnasError(f"search record {n} is a {type(rec).__name__}, not a dict")
        if "macs" not in rec and "flops" in rec:   # result files written before the rename say "flops"
            rec = {**rec, "macs": rec["flops"]}
        missing = [k for k in _REQUIRED if k not in rec]
        if missing:
            raise HwnasError(f"search record {n} (trial {rec.get('trial', '?')}) lacks {missing}; every record needs "
                             f"{list(_REQUIRED)}")
        out.append(dict(rec))
    ids = [r["trial"] for r in out]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise HwnasError(f"search records repeat trial id(s) {dup}")
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def rank_records(records: Sequence[Mapping[str, Any]], budget: Any, top_k: int | None = None) -> list[dict[str, Any]]:
    """Records within ``budget`` with a finite accuracy, most accurate first (ties: lower latency, then trial id).

    Parameters
    ----------
    records : sequence of dict
        Trial records (``default`` = accuracy, ``latency_ms`` in ms).
    budget : LatencyBudget
        Only records it contains are ranked.
    top_k : int, optional
        Keep the first ``top_k``; all when ``None``.

    Returns
    -------
    list of dict
        Copies of the records with ``rank`` (1 = best) added.
    """
    fits = [dict(r) for r in _check_records(records)
            if _finite(r["default"]) and _finite(r["latency_ms"]) and budget.contains(float(r["latency_ms"]))]
    fits.sort(key=lambda r: (-float(r["default"]), float(r["latency_ms"]), r["trial"]))
    if top_k is not None:
        fits = fits[: max(int(top_k), 0)]
    for rank, rec in enumerate(fits, start=1):
        rec["rank"] = rank
    return fits


def _short_choice(name: str) -> str:
    """``skip`` → ``-``; a word and a number (``shuffle3``) → its first letter and the number (``s3``); a longer
    plain word (``xception``) → its first letter; anything else (``k3e6``, ``a``) as it is. A rule on the
    names' shape, so no space's choice names are written here."""
    if name == "skip":
        return "-"
    m = re.fullmatch(r"([A-Za-z]+)(\d+)", name)
    if m:
        return m.group(1)[0] + m.group(2)
    if re.fullmatch(r"[A-Za-z]{5,}", name):
        return name[0]
    return name


def short_arch(arch: Mapping[str, str]) -> str:
    """A compact one-line form of an architecture: choices in label order, stages separated by ``|``.

    Choice names are shortened by their shape (:func:`_short_choice`: ``shuffle3`` → ``s3``, ``xception`` →
    ``x``, ``skip`` → ``-``; ``k3e6`` is kept). Labels of the form ``s{stage}_b{block}`` group into stages; other labels form one group.
    """
    groups: list[list[str]] = []
    last = object()
    for label, choice in arch.items():
        m = re.match(r"s(\d+)_", str(label))
        stage = m.group(1) if m else None
        if stage != last or not groups:
            groups.append([])
            last = stage
        groups[-1].append(_short_choice(str(choice)))
    return " | ".join(" ".join(g) for g in groups)


def format_table(top: Sequence[Mapping[str, Any]]) -> str:
    """The top-k table: rank, trial, accuracy, predicted latency (ms), MACs (M), params (M), architecture."""
    head = f"{'rank':>4}  {'trial':>5}  {'accuracy':>8}  {'latency ms':>10}  {'MACs (M)':>8}  {'params (M)':>10}  arch"
    rows = [head, "-" * len(head)]
    for rec in top:
        rows.append(f"{rec['rank']:>4}  {rec['trial']:>5}  {float(rec['default']):>8.4f}  "
                    f"{float(rec['latency_ms']):>10.3f}  {float(rec['macs']) / 1e6:>8.2f}  "
                    f"{float(rec['params']) / 1e6:>10.3f}  {short_arch(rec['arch'])}")
    if not top:
        rows.append("(no trial within the budget)")
    return "\n".join(rows)


# -- files ----------------------------------------------------------------------------------------------------------
def _budget_dict(budget: Any) -> dict[str, Any]:
    return {"max_ms": float(budget.max_ms), "min_ms": None if budget.min_ms is None else float(budget.min_ms)}


def _plot(records: list[dict[str, Any]], top: list[dict[str, Any]], budget: Any, path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    plotted = [r for r in records if _finite(r["default"]) and _finite(r["latency_ms"])]
    inside = [r for r in plotted if budget.contains(float(r["latency_ms"]))]
    outside = [r for r in plotted if not budget.contains(float(r["latency_ms"]))]
    if inside:
        ax.scatter([r["latency_ms"] for r in inside], [r["default"] for r in inside], s=28, c="tab:blue",
                   alpha=0.7, label=f"trials within budget ({len(inside)})")
    if outside:
        ax.scatter([r["latency_ms"] for r in outside], [r["default"] for r in outside], s=28, c="0.6",
                   alpha=0.7, label=f"trials over budget ({len(outside)})")
    if top:
        ax.scatter([r["latency_ms"] for r in top], [r["default"] for r in top], s=70, facecolors="none",
                   edgecolors="tab:orange", linewidths=1.6, label=f"top {len(top)}")
        for r in top:
            ax.annotate(f"#{r['rank']}", (r["latency_ms"], r["default"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
        ax.scatter([top[0]["latency_ms"]], [top[0]["default"]], marker="*", s=220, c="tab:red", zorder=5,
                   label=f"best (trial {top[0]['trial']})")
    ax.axvline(budget.max_ms, color="tab:red", linestyle="--", linewidth=1.2, label=f"budget {budget.max_ms:.3g} ms")
    if budget.min_ms is not None:
        ax.axvline(budget.min_ms, color="tab:red", linestyle=":", linewidth=1.0, label=f"min {budget.min_ms:.3g} ms")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("validation accuracy (top-1)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def _load_weights(source: WeightsSource, trial: int) -> tuple[dict[str, Any] | None, str | None]:
    """(state dict or None, where it came from or why it is missing)."""
    import torch

    if source is None:
        return None, "no weights source given"
    if callable(source):
        got = source(trial)
        if got is None:
            return None, f"no weights for trial {trial}"
        if isinstance(got, Mapping):
            return dict(got), "state dict from the caller"
        source_path = Path(got)
    else:
        source_path = Path(source) / f"{trial}.pt"
    if not source_path.is_file():
        return None, f"no weights file {source_path}"
    try:
        state = torch.load(source_path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn or foreign file: say which
        raise HwnasError(f"cannot read the weights of trial {trial} from {source_path}: {err}") from None
    if not isinstance(state, Mapping):
        raise HwnasError(f"{source_path} holds a {type(state).__name__}, not a state dict")
    return dict(state), str(source_path)


def _export_fn() -> Callable[..., Any] | None:
    """The exporter of the best network; ``None`` (the seam tests use) saves the state dict only.

    :mod:`hwnas.export` always ships with hwnas: an import error there is a real error and is raised.
    """
    from hwnas.export import export_subnet

    return export_subnet


def finish_search(records: Sequence[Mapping[str, Any]], *, space: str, space_config: Mapping[str, Any],
                  budget: Any, out_dir: str | os.PathLike, top_k: int = 5, weights: WeightsSource = None,
                  val_data: Any = None, predictor: Any = None, export: bool = True, measure: bool = True,
                  device: str = "cpu", title: str | None = None, print_fn: Callable[[str], None] | None = print,
                  ) -> SearchReport:
    """Rank the finished trials, write the report files and save the best network (see the module docstring).

    Parameters
    ----------
    records : sequence of dict
        One per finished trial: ``trial`` (int id), ``arch`` (label -> choice), ``default`` (validation
        accuracy in [0, 1]), ``latency_ms`` (predicted, ms), ``macs``, ``params``; extra keys are kept.
    space : str
        Registered space name (``"proxyless"``, ``"spos"``).
    space_config : dict
        The space's config fields (``input_size``, ``num_classes``, ``width_mult``, ...).
    budget : LatencyBudget
        The search's latency budget (ms).
    out_dir : path
        Where the files go (created).
    top_k : int
        Rows of the table and of ``topk.json``.
    weights : callable, directory or None
        Trained weights: a directory of ``<trial>.pt`` state dicts, or ``trial -> state dict or path``.
    val_data : Dataset, optional
        Validation data: the reloaded best network is evaluated on it and must reproduce its recorded accuracy
        (within two samples).
    predictor : LatencyPredictor or str, optional
        For the export's predicted latency.
    export : bool
        Write ``best/model.pt`` through :func:`hwnas.export.export_subnet` (always shipped with hwnas).
    measure : bool
        Let the export measure the file's latency on this machine.
    device : str
        Where the reloaded network is evaluated.
    title : str, optional
        Plot title.
    print_fn : callable or None
        Receives the summary (``print`` by default; ``None``: silent).

    Returns
    -------
    SearchReport

    Raises
    ------
    HwnasError
        Malformed records (missing keys, repeated trial ids), unreadable weights, weights that do not fit the
        architecture, or a reloaded network that does not reproduce the recorded accuracy.
    """
    import search_spaces as ss

    recs = _check_records(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ranked = rank_records(recs, budget)
    top = ranked[: max(int(top_k), 1)]
    notes: list[str] = []
    files: dict[str, Path] = {}
    space_config = dict(space_config)

    doc = {"space": {"name": space, "config": space_config}, "budget": _budget_dict(budget),
           "metric": "default = top-1 validation accuracy in [0, 1]",
           "units": {"latency_ms": "ms (predicted)", "macs": "multiply-accumulates per image", "params": "count"},
           "n_trials": len(recs), "n_within_budget": len(ranked), "top": top}
    files["topk_json"] = out / "topk.json"
    atomic_write(files["topk_json"], json.dumps(doc, indent=2, sort_keys=False, default=_json_default) + "\n")
    files["plot"] = out / "search.png"
    _plot(recs, top, budget, files["plot"],
          title or f"{space}: {len(recs)} trials, {len(ranked)} within budget ({budget})")

    report = SearchReport(out_dir=out, top=top, table=format_table(top), files=files, n_trials=len(recs),
                          n_within_budget=len(ranked), notes=notes, budget=budget)
    if not top:
        notes.append(f"no trial is within the budget {budget}: no best network")
        _emit(report, print_fn)
        return report
    best = top[0]
    report.best = best
    best_dir = out / "best"
    files["best_arch"] = best_dir / "arch.json"
    from hwnas.export import arch_document

    # Everything `hwnas export --arch best/arch.json` needs: space, its whole configuration, input shape, classes.
    atomic_write(files["best_arch"], json.dumps(
        arch_document(space, space_config, best["arch"], record=best, budget=_budget_dict(budget)),
        indent=2, default=_json_default) + "\n")

    state, where = _load_weights(weights, int(best["trial"]))
    if state is None:
        notes.append(f"best trial {best['trial']}: {where}; only its architecture is saved")
        _emit(report, print_fn)
        return report
    net = ss.build_subnet(space, dict(best["arch"]), config=space_config)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise HwnasError(f"the weights of trial {best['trial']} ({where}) do not fit its architecture: "
                         f"{str(err).splitlines()[0]}") from None
    net.eval()
    if val_data is not None:
        from hwnas.train import evaluate

        acc = evaluate(net, val_data, device=device)
        net.to("cpu")
        report.reload_accuracy = acc
        tol = _RELOAD_TOLERANCE_SAMPLES / max(len(val_data), 1) + 1e-9
        if abs(acc - float(best["default"])) > tol:
            raise HwnasError(f"the best network (trial {best['trial']}) reloaded from {where} evaluates to "
                             f"{acc:.4f}, but its trial recorded {float(best['default']):.4f}: the weights do not "
                             "belong to that trial")
    import torch

    files["best_state_dict"] = best_dir / "state_dict.pt"
    atomic_write(files["best_state_dict"], lambda f: torch.save(net.state_dict(), f))

    if export:
        _export_best(report, net, space, space_config, best, best_dir, predictor, measure)
    _emit(report, print_fn)
    return report


def _export_best(report: SearchReport, net: Any, space: str, space_config: Mapping[str, Any],
                 best: Mapping[str, Any], best_dir: Path, predictor: Any, measure: bool) -> None:
    fn = _export_fn()
    if fn is None:
        report.notes.append("hwnas.export.export_subnet is not available: saved the state dict and the "
                            "architecture only")
        return
    try:
        # no warnings filter: the exporter hides torch's deprecation notices itself, and every other warning
        # (a traced fallback, a predictor of another machine) is the user's to see
        exp = fn(space, dict(best["arch"]), out=best_dir / "model.pt", weights=net.state_dict(),
                 config=dict(space_config), predictor=predictor, measure=measure)
    except HwnasError as err:
        report.notes.append(f"export of the best network failed: {err}")
        return
    report.export = exp
    path = getattr(exp, "path", None)
    if path:
        report.files["best_model"] = Path(path)


def _emit(report: SearchReport, print_fn: Callable[[str], None] | None) -> None:
    if print_fn is not None:
        print_fn(report.summary())


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
