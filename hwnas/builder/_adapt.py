"""``hwnas adapt``: a predictor for this machine in minutes, transferred from an existing one.

A full build measures thousands of kernels and hundreds of networks (30-110 minutes on a 2-core VM). Adapting
measures a small probe on this machine and transfers a predictor of another machine onto it:

1. **Probe networks**: zoo networks (:mod:`hwnas.builder._zoo`) of every family at small resolutions, timed end
   to end, round-robin over the families, about 45% of the time budget. Every third one is held out of the fit
   and scores the result.
2. **Source**: every installed predictor of the backend predicts the probe networks; the one whose ratio
   measured/predicted varies least (:func:`hwnas.builder._transfer.similarity`) is the source, unless
   ``source`` names one.
   On a backend with layout rules (``torchscript-cpu``), the kernels of the probe networks that read a tensor
   outside the backend's layout, and the layout conversions, are measured here (about 10% of the budget,
   :func:`hwnas.builder._variants.with_layout_variants`) and added to the source as this machine's own types:
   never transferred.
3. **Probe kernels**: kernels of the probe networks under the source's fusion rules, spread over each type's
   size range, round-robin over the types, timed in context (:func:`hwnas.builder._build.measure_in_context`)
   until the kernel share of the budget is spent.
4. **Transfer**: a log-linear map per kernel type from the source's kernel latencies to the measured ones
   (:func:`hwnas.builder._transfer.fit_transfer`), then the network-level calibration
   (:mod:`hwnas.builder._calibrate`) refitted on the fitting probe networks, scored on the held-out ones, and
   finally refitted on all of them.

Everything measured goes to ``<out>/raw`` (resumable JSONL stores: a rerun measures only what is missing, and a
rerun from another source reuses the networks and every kernel spec already measured); the predictor goes to
``<out>/predictor`` with this machine's fingerprint and the transfer as data, and is registered in the user's
predictor folder so that ``"auto"`` finds it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from hwnas.builder._protocol import DEFAULT_PROTOCOL, MeasureProtocol
from hwnas.errors import HwnasError
from hwnas.kernels import LAYOUT_RULES
from hwnas.files import atomic_write

#: Resolutions of the probe networks (small: the probe must be cheap) and networks per family.
PROBE_RESOLUTIONS = (96, 112, 128, 144, 160)
NETWORKS_PER_FAMILY = 8
#: Shares of the time budget: networks, then layout variants (backends with layout rules), then kernels; the rest
#: is reserved for capture and fitting.
NETWORK_SHARE, LAYOUT_SHARE, KERNEL_SHARE = 0.5, 0.1, 0.28
#: Probe kernels per kernel type, at most.
KERNELS_PER_TYPE = 24
#: A probe kernel enters the transfer fit only if its in-context time is at least this share of the prefix's
#: and this many ms: below, the difference of two timings is noise (fused or free ops measure 0 +- noise).
MIN_KERNEL_SHARE, MIN_KERNEL_MS = 0.05, 0.002
#: Fewest measured probe networks for a network-level calibration (fewer: a global factor only).
MIN_CALIBRATION_NETWORKS = 8


class AdaptError(HwnasError):
    """An adaptation that cannot produce a predictor (too few measurements, no source predictor)."""


@dataclasses.dataclass
class AdaptConfig:
    """What ``hwnas adapt`` measures and writes.

    Parameters
    ----------
    backend : str or Backend
        Backend to adapt to (a registered name, or a backend object, e.g. a fake one in tests).
    out : Path
        Output folder: ``raw/`` (probe measurements), ``predictor/``, ``adapt.json`` (report).
    source : str, optional
        Predictor to transfer (name or path); default: the most similar installed predictor of the backend.
    time_budget_min : float
        Wall-clock budget of this call (minutes), measuring and fitting included.
    name : str, optional
        Name of the new predictor; default ``"<backend>-<machine>-adapted"``.
    protocol : MeasureProtocol
        How each probe is timed.
    register : bool
        Copy the predictor into the user's predictor folder (``"auto"`` finds it there).
    families : tuple of str, optional
        Only probe networks of these zoo families.
    """

    backend: Any = "torchscript-cpu"
    out: Path = Path("runs/adapt")
    source: str | None = None
    time_budget_min: float = 10.0
    name: str | None = None
    protocol: MeasureProtocol = DEFAULT_PROTOCOL
    register: bool = True
    families: tuple[str, ...] | None = None


def probe_networks(families: Sequence[str] | None = None) -> list[Any]:
    """The probe networks, in measuring order: per zoo family up to :data:`NETWORKS_PER_FAMILY` networks at the
    :data:`PROBE_RESOLUTIONS`, spread over the family's variants, taken round-robin over the families."""
    from hwnas.builder._store import round_robin
    from hwnas.builder._zoo import zoo

    by_family: dict[str, list[Any]] = {}
    for m in zoo(tuple(families) if families else None):
        if m.input_shape[-1] in PROBE_RESOLUTIONS:
            by_family.setdefault(m.family, []).append(m)
    chosen = []
    for fam, models in by_family.items():
        names = sorted({m.name for m in models}, key=lambda n: [m.name for m in models].index(n))
        for i in range(min(NETWORKS_PER_FAMILY, len(models))):
            name = names[(i * max(len(names) // NETWORKS_PER_FAMILY, 1)) % len(names)]
            res = [m for m in models if m.name == name]
            pick = res[(i * 2 + 1) % len(res)]
            if pick not in chosen:
                chosen.append(pick)
    return round_robin(chosen, key=lambda m: m.family)


def _sources(cfg: AdaptConfig, backend_name: str) -> list[Any]:
    from hwnas.predictor import find_predictors, load_latency_predictor

    if cfg.source:
        preds = [load_latency_predictor(cfg.source, backend=backend_name, warn=False)]
    else:
        preds = [load_latency_predictor(e.path, warn=False) for e in find_predictors(backend_name)
                 if not (cfg.name and e.name == cfg.name) and "transfer" not in e.meta]
    if not preds:
        raise AdaptError(f"no installed predictor of backend {backend_name!r} to adapt; build one with "
                         f"`hwnas build --backend {backend_name}`")
    for p in preds:
        p._device_checked = True   # sources describe other machines: that is what adapting is for
    return preds


def _bare(pred: Any) -> Any:
    """The predictor's regressors alone: no transfer, no calibration (what the transfer is fitted on)."""
    from hwnas.predictor import LatencyPredictor

    meta = {k: v for k, v in pred.metadata.items() if k not in ("calibration", "transfer")}
    bare = LatencyPredictor(meta, pred.regressors, path=pred.path)
    bare._device_checked = True   # a source of another machine is the point of adapting: no warning
    return bare


def source_metadata(source: Any) -> dict[str, Any]:
    """The source's metadata an adapted predictor starts from: without its calibration, transfer, accuracy and
    file records, and with the kernel types of its loaded regressors (folded names: a source measured before the
    batch-norm fold names ``conv-bn``, which the loader prices as ``conv``), so metadata and regressors match."""
    meta = {k: v for k, v in source.metadata.items() if k not in ("calibration", "transfer", "schema_version",
                                                                  "files", "status", "accuracy")}
    meta["kernels"] = source.kernel_specs
    return meta


def _deadline(start: float, minutes: float, share: float) -> float:
    return start + 60.0 * minutes * share


def measure_networks(be: Any, store_path: Path, models: Sequence[Any], protocol: MeasureProtocol, deadline: float,
                     progress: bool) -> dict[str, float]:
    """Time probe networks into the store until ``deadline`` (monotonic s); returns model key -> ms of all
    networks measured so far (this call and earlier ones)."""
    from tqdm.auto import tqdm

    from hwnas.builder._backends import release_memory
    from hwnas.builder._store import open_store

    store = open_store(store_path)
    with store:
        todo = [m for m in models if f"net:{m.key}" not in store]
        bar = tqdm(todo, desc=f"adapt: probe networks on {be.name}", disable=not progress)
        for m in bar:
            if time.monotonic() > deadline:
                bar.write("adapt: network share of the time budget spent")
                break
            try:
                meas = be.measure(m.build(), m.input_shape, protocol)
            except Exception as e:  # noqa: BLE001 - one network that fails to compile must not end the probe
                store.append(f"net:{m.key}", ms=-1.0, protocol=protocol, kind="net", model=m.key, family=m.family,
                             method="failed", error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
                continue
            finally:
                release_memory(be)
            store.append(f"net:{m.key}", meas, raw=False, kind="net", model=m.key, family=m.family,
                         input_shape=list(m.input_shape))
        bar.close()
        return {r["model"]: float(r["ms"]) for r in (store.get(f"net:{m.key}") for m in models)
                if r is not None and float(r["ms"]) > 0}


def probe_kernel_specs(source: Any, kernel_lists: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Distinct kernel specs of the probe networks, up to :data:`KERNELS_PER_TYPE` per type spread over its size
    range, round-robin over the types (so a budget cut short still covers every type)."""
    from hwnas.builder._fit import unit_feature
    from hwnas.builder._kernel_modules import kernel_spec
    from hwnas.builder._sampler import spec_key
    from hwnas.builder._store import round_robin
    from hwnas.builder._transfer import spread_sample

    # a kernel whose first op fuses into the 1x1 convolution prefix of the in-context timing (conv -> relu, bn...)
    # cannot be timed that way: the difference would price the fused pair, not the kernel
    fuses_into_prefix = {p[1] for p in source.rules.starting_with("conv")}
    by_type: dict[str, dict[str, dict]] = {}
    for ks in kernel_lists:
        for k in ks:
            if k.type not in source._specs or k.ops[0] in fuses_into_prefix:
                continue
            spec = kernel_spec(k)
            key = spec_key(spec)
            by_type.setdefault(k.type, {}).setdefault(
                key, {"key": key, "spec": spec, "size": float(k.features.get(unit_feature(k.type), 0.0))})
    picked = [it for t in sorted(by_type) for it in spread_sample(list(by_type[t].values()), "size",
                                                                   KERNELS_PER_TYPE)]
    return [it["spec"] for it in round_robin(picked, key=lambda it: it["spec"]["type"])]


def measure_kernel_probes(be: Any, store_path: Path, specs: Sequence[dict[str, Any]], protocol: MeasureProtocol,
                          deadline: float, progress: bool) -> dict[str, float]:
    """Time probe kernels in context into the store until ``deadline``; returns spec key -> net ms of the kernels
    measured so far whose time stands out of the noise (:data:`MIN_KERNEL_SHARE`, :data:`MIN_KERNEL_MS`)."""
    from tqdm.auto import tqdm

    from hwnas.builder._backends import release_memory
    from hwnas.builder._build import measure_in_context
    from hwnas.builder._kernel_modules import kernel_module
    from hwnas.builder._sampler import spec_key
    from hwnas.builder._store import open_store

    store = open_store(store_path)
    with store:
        todo = [s for s in specs if spec_key(s) not in store]
        bar = tqdm(todo, desc=f"adapt: probe kernels on {be.name}", disable=not progress)
        for spec in bar:
            if time.monotonic() > deadline:
                bar.write("adapt: kernel share of the time budget spent")
                break
            module = kernel_module(spec)
            try:
                parts = measure_in_context(be, module, module.input_shape, protocol)
            except Exception as e:  # noqa: BLE001 - recorded, never fatal
                store.append(spec_key(spec), ms=-1.0, protocol=protocol, kind="kernel", spec=spec, method="failed",
                             error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
                continue
            finally:
                del module
                release_memory(be)
            store.append(spec_key(spec), ms=parts.pop("ms"), protocol=protocol, kind="kernel", spec=spec,
                         method="in_context", parts=parts)
        bar.close()
        out = {}
        for s in specs:
            r = store.get(spec_key(s))
            if r is not None and r.get("method") != "failed":
                floor = max(MIN_KERNEL_MS, MIN_KERNEL_SHARE * float((r.get("parts") or {}).get("prefix_ms", 0.0)))
                if float(r["ms"]) >= floor:
                    out[spec_key(s)] = float(r["ms"])
        return out


def adapt(cfg: AdaptConfig, progress: bool = True, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Measure the probe, transfer the most similar predictor and write ``<out>/predictor`` (see the module
    docstring).

    Returns
    -------
    dict
        The report also written to ``<out>/adapt.json``: ``predictor`` (path), ``name``, ``source``,
        ``similarity`` (per candidate source), ``n_networks``, ``n_kernels``, ``transfer`` holdout figures,
        ``heldout`` (accuracy on the held-out probe networks: ``raw``, ``global_factor``, ``adapted``),
        ``registered`` (path or None) and ``wall_s``.

    Raises
    ------
    AdaptError
        Too few measurements within the budget to fit anything (rerun to resume, or give more time).
    """
    from hwnas.builder._backends import get_backend
    from hwnas.builder._config import default_name, utc_now
    from hwnas.builder._fit import error_metrics
    from hwnas.builder._kernel_modules import _Passthrough, spec_nodes
    from hwnas.builder._sampler import spec_key
    from hwnas.builder._transfer import fit_transfer, similarity
    from hwnas.device import describe, fingerprint
    from hwnas.graph import capture
    from hwnas.kernels import Kernel, kernel_features

    say = log or (lambda _m: None)
    start = time.monotonic()
    budget = float(cfg.time_budget_min)
    if not budget > 0:
        raise ValueError(f"time_budget_min must be > 0, got {cfg.time_budget_min!r}")
    be = get_backend(cfg.backend)
    out, raw = Path(cfg.out), Path(cfg.out) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    sources = _sources(cfg, be.name)

    # 1. probe networks, end to end
    models = probe_networks(cfg.families)
    measured = measure_networks(be, raw / "networks.jsonl", models, cfg.protocol,
                                _deadline(start, budget, NETWORK_SHARE), progress)
    nets = [m for m in models if m.key in measured]
    if not nets:
        raise AdaptError(f"no probe network could be measured within {budget} min on {be.name}; rerun to resume "
                         "(measurements are kept in " + str(raw) + ") or give a larger time budget")
    graphs = [capture(m.build(), "torch", m.input_shape) for m in nets]
    y = np.array([measured[m.key] for m in nets])

    # 2. the source: the predictor whose ratio measured / predicted varies least over the probe networks
    scores = {}
    for p in sources:
        pred = np.array([p.predict(g, "graph") for g in graphs])
        scores[p.name] = similarity(y, np.maximum(pred, 1e-6))
    source = min(sources, key=lambda p: scores[p.name]["spread"])
    say(f"adapt: {len(nets)} probe networks measured; source {source.name!r} (spread of log ratio "
        f"{scores[source.name]['spread']:.3f}, speed factor {scores[source.name]['speed_factor']:.2f}"
        + (f"; others: " + ", ".join(f"{n} {s['spread']:.3f}" for n, s in scores.items() if n != source.name)
           if len(scores) > 1 else "") + ")")

    # 2b. on a backend with layout rules: this machine's own kernels that read a plain tensor, and conversions
    original, native = source, set()
    if be.name in LAYOUT_RULES and source.layout is None:
        from hwnas.builder._variants import with_layout_variants

        minutes = (_deadline(start, budget, NETWORK_SHARE + LAYOUT_SHARE) - time.monotonic()) / 60
        source, native, note = with_layout_variants(be, source, nets, raw, cfg.protocol, minutes, progress)
        say(f"adapt: {note}")

    # 3. probe kernels under the source's fusion rules
    bare = _bare(source)
    kernel_lists = [bare.graph_kernels(g) for g in graphs]
    specs = probe_kernel_specs(bare, [[k for k in ks if k.type not in native] for ks in kernel_lists])
    kms = measure_kernel_probes(be, raw / "kernels.jsonl", specs, cfg.protocol,
                                _deadline(start, budget, NETWORK_SHARE + LAYOUT_SHARE + KERNEL_SHARE), progress)
    probe = [s for s in specs if spec_key(s) in kms]
    if len(probe) >= 2:
        pk = [Kernel(s["type"], spec_nodes(s), kernel_features(spec_nodes(s))) for s in probe]
        transfer = fit_transfer([s["type"] for s in probe], bare.kernel_latencies(pk),
                                [kms[spec_key(s)] for s in probe])
    else:   # too few kernels: one global factor from the networks, exponent 1
        factor = scores[source.name]["speed_factor"]
        transfer = {"kernel_types": {}, "default": [float(np.log(factor)), 1.0], "n_kernels": {}, "holdout": None}
        say(f"adapt: only {len(probe)} probe kernel(s) measured; transferring with one global factor {factor:.2f}")

    # 4. the network-level form, chosen by cross-validation on the fitting networks, scored on the held-out ones,
    #    refitted on all networks
    fp = fingerprint()
    overhead = float(be.measure(_Passthrough(), (1, 3, 128, 128), cfg.protocol).ms)
    name = cfg.name or _free_name(f"{default_name(be.name, fp)}-adapted")
    meta = source_metadata(source)
    meta.update(name=name, version=utc_now()[:10].replace("-", "."), created=utc_now(),
                device={"description": describe(fp), "fingerprint": fp}, protocol=cfg.protocol.to_dict(),
                model_overhead_ms=overhead)
    probe_nets = _ProbeNetworks(bare, kernel_lists, y, overhead, source.metadata.get("calibration"), native)
    kt = transfer if transfer.get("holdout") is not None else None
    heldout_idx = [i for i in range(len(nets)) if i % 3 == 2] if len(nets) >= 6 else []
    fit_idx = [i for i in range(len(nets)) if i not in heldout_idx]
    candidates = [f for f in FORMS if kt is not None or not f.startswith("kernels")]
    if len(fit_idx) < MIN_CALIBRATION_NETWORKS:   # too few networks to compare forms: the simplest
        candidates = [SIMPLEST_FORM if source.metadata.get("calibration") else "global"]
    forms = {f: probe_nets.cv_error(f, fit_idx, kt) for f in candidates}
    form = choose_form(forms)
    heldout = None
    if heldout_idx:
        yh = y[heldout_idx]
        p_src = np.array([source.predict(graphs[i], "graph") for i in heldout_idx])
        p_fit = np.array([source.predict(graphs[i], "graph") for i in fit_idx])
        f_fit = float(np.exp(np.median(np.log(y[fit_idx] / p_fit))))
        heldout = {"networks": [nets[i].key for i in heldout_idx], "raw": error_metrics(p_src, yh),
                   "global_factor": error_metrics(f_fit * p_src, yh),
                   "forms": {f: error_metrics(probe_nets.predict(*probe_nets.fit(f, fit_idx, kt), heldout_idx), yh)
                             for f in forms}}
        heldout["adapted"] = heldout["forms"][form]
    tr, cal = probe_nets.fit(form, list(range(len(nets))), kt)
    meta["transfer"] = {**tr, "form": form, "source": original.name, "source_checksum": original.checksum,
                        "source_device": (original.metadata.get("device") or {}).get("description"),
                        "n_kernels": transfer["n_kernels"]}
    if cal is not None:
        meta["calibration"] = cal
    within = f"{heldout['adapted']['within_10pct']:.0%} of {len(heldout_idx)} held-out probe networks within " \
             f"±10% (unadapted: {heldout['raw']['within_10pct']:.0%})" if heldout else "no held-out networks"
    meta["status"] = (f"adapted from {source.name!r} on {len(nets)} networks and {len(probe)} kernels measured "
                      f"here (form {form}): {within}")
    meta["accuracy"] = {"adapt": {"heldout": heldout, "transfer_holdout": transfer.get("holdout"),
                                  "similarity": scores, "forms_cv": forms}}
    from hwnas.predictor import write_predictor

    path = write_predictor(out / "predictor", meta, source.regressors)
    registered = None
    if cfg.register:
        from hwnas.predictor import register_predictor

        registered = str(register_predictor(path, replace=True))
    report = {"predictor": str(path), "name": name, "source": source.name, "similarity": scores, "form": form,
              "forms_cv": forms, "kernel_transfer": {"kernel_types": transfer["kernel_types"],
                                                     "default": transfer["default"],
                                                     "n_kernels": transfer["n_kernels"]},
              "n_networks": len(nets), "n_kernels": len(probe), "transfer_holdout": transfer.get("holdout"),
              "heldout": heldout, "registered": registered, "wall_s": round(time.monotonic() - start, 1),
              "time_budget_min": budget, "status": meta["status"]}
    atomic_write(out / "adapt.json", json.dumps(report, indent=2) + "\n")
    say(f"adapt: {meta['status']}; predictor {name!r} written to {path}"
        + (f", registered for 'auto' at {registered}" if registered else "") + f" ({report['wall_s']:.0f} s)")
    return report


#: Network-level forms compared by cross-validation: ``global`` (one factor on the source's kernels) or
#: ``kernels`` (the per-type kernel transfer, times one factor), each with no network calibration, with the
#: source's calibration (``+source``: its factors kept, its ms costs scaled by the same factor), with a
#: calibration refitted on the probe networks (``+refit``), or with the source's calibration times a factor per
#: kernel type fitted on the probe networks (``+source+refit``).
FORMS = ("global", "global+source", "global+refit", "global+source+refit", "kernels", "kernels+source",
         "kernels+refit", "kernels+source+refit")


#: Forms ``adapt`` may ship, chosen among by cross-validated RMSPE on the fitting probe networks. Every form in
#: :data:`FORMS` is fitted and reported; only those that refit the network calibration on this machine are
#: shipped: compared on 16 held-out torchvision models on an AMD EPYC AVX2 VM (adapting the AVX-512 predictors),
#: the refitted forms were the best or near it on both backends (ONNX Runtime: kernels+refit 94% within ±10%,
#: global+source 81%; TorchScript: global+refit 69%, kernels+refit 62%, global+source 50%), while cross-validation
#: over all forms picked global+source (TorchScript, 50%) on a few dozen probe networks.
SELECTABLE = ("global+refit", "kernels+refit")
#: The form used when too few probe networks were measured to refit a calibration.
SIMPLEST_FORM = "global+source"


def _free_name(name: str) -> str:
    """``name``, or ``name`` with today's date when an embedded predictor already has it (a user's own earlier
    adaptation of the same name is replaced, not renamed)."""
    from hwnas.builder._config import utc_now
    from hwnas.predictor import lookup

    entry = lookup(name)
    return name if entry is None or entry.source == "user" else f"{name}-{utc_now()[:10].replace('-', '')}"


def choose_form(forms: Mapping[str, Mapping[str, float]]) -> str:
    """The form to ship: the one of :data:`SELECTABLE` with the lowest cross-validated RMSPE, else the best one."""
    pool = [f for f in SELECTABLE if f in forms] or list(forms)
    return min(pool, key=lambda f: forms[f]["rmspe"])


class _ProbeNetworks:
    """The probe networks' kernels priced once by the bare source; every form is fitted and scored on them in
    numpy, exactly as :meth:`hwnas.predictor.LatencyPredictor.kernel_latencies` would price them."""

    def __init__(self, bare: Any, kernel_lists: Sequence[Sequence[Any]], y: np.ndarray, overhead_ms: float,
                 source_calibration: Mapping[str, Any] | None, native: Iterable[str] = ()):
        self.kernels, self.y, self.overhead = kernel_lists, np.asarray(y, dtype=float), float(overhead_ms)
        #: kernel types measured on this machine (layout variants): never transferred, never rescaled
        self.native = frozenset(native)
        self.source_cal = dict(source_calibration) if source_calibration else None
        self.bare = [bare.kernel_latencies(ks) for ks in kernel_lists]
        self.types = [[k.type for k in ks] for ks in kernel_lists]

    def _transferred(self, tr: Mapping[str, Any], i: int) -> np.ndarray:
        ms = self.bare[i]
        a = np.array([tr["kernel_types"].get(t, tr["default"])[0] for t in self.types[i]])
        b = np.array([tr["kernel_types"].get(t, tr["default"])[1] for t in self.types[i]])
        return np.where(ms > 0, np.exp(a + b * np.log(np.maximum(ms, 1e-9))), 0.0)

    def fit(self, form: str, idx: Sequence[int], kernel_transfer: Mapping[str, Any] | None
            ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """``(transfer, calibration or None)`` of ``form`` fitted on the networks ``idx``."""
        from hwnas.builder._calibrate import network_terms, select_calibration

        base, _, cal_mode = form.partition("+")
        if base == "kernels":
            tr = {"kernel_types": {t: list(v) for t, v in kernel_transfer["kernel_types"].items()},
                  "default": list(kernel_transfer["default"])}
        else:
            tr = {"kernel_types": {}, "default": [0.0, 1.0]}
        tr["kernel_types"].update({t: [0.0, 1.0] for t in self.native})
        cal = None
        if cal_mode.startswith("source") and self.source_cal:
            cal = {k: v for k, v in self.source_cal.items() if k in ("kernel_scale", "kernel_terms", "intercept_ms")}
        # one factor f on everything in ms (kernels, the calibration's costs and intercept) so that the median
        # network is exact; the prediction is linear in f
        sums = self.predict(tr, cal, idx) - self.overhead
        f = float(np.exp(np.median(np.log(np.maximum(self.y[list(idx)] - self.overhead, 1e-6) /
                                          np.maximum(sums, 1e-9)))))
        tr["default"][0] += np.log(f)
        for t, v in tr["kernel_types"].items():
            if t not in self.native:
                v[0] += np.log(f)
        if cal is not None:
            cal = {"kernel_scale": dict(cal.get("kernel_scale", {})),
                   "kernel_terms": {t: {n: c * f for n, c in d.items()} for t, d in cal.get("kernel_terms", {}).items()},
                   "intercept_ms": float(cal.get("intercept_ms", 0.0)) * f, "method": "the source's, costs scaled"}
        target = self.y[list(idx)] - self.overhead
        if cal_mode == "refit" and len(idx) >= MIN_CALIBRATION_NETWORKS and np.all(target > 0):
            nets = [network_terms(self._transferred(tr, i), self.kernels[i]) for i in idx]
            cal, _ = select_calibration(nets, target, self.overhead)
            cal["n_networks"] = len(idx)
        elif cal_mode == "source+refit" and cal is not None and len(idx) >= MIN_CALIBRATION_NETWORKS \
                and np.all(target > 0):
            cal = self._refit_on_top(tr, cal, idx, target)
        return tr, cal

    def _calibrated(self, tr: Mapping[str, Any], cal: Mapping[str, Any] | None, i: int) -> np.ndarray:
        """Per-kernel ms of network ``i`` under a transfer and a calibration (its intercept left out)."""
        from hwnas.predictor import CALIBRATION_TERMS

        ms = self._transferred(tr, i)
        if not cal:
            return ms
        scale, terms = cal.get("kernel_scale", {}), cal.get("kernel_terms", {})
        out = ms * np.array([scale.get(t, 1.0) for t in self.types[i]])
        for j, (k, t) in enumerate(zip(self.kernels[i], self.types[i])):
            for name, c in terms.get(t, {}).items():
                feature = CALIBRATION_TERMS[name]
                out[j] += c * (1.0 if feature is None else float(k.features.get(feature, 0.0)))
        return out

    def _refit_on_top(self, tr: Mapping[str, Any], cal: Mapping[str, Any], idx: Sequence[int],
                      target: np.ndarray) -> dict[str, Any]:
        """A factor ``g`` per kernel type on top of the (scaled) source calibration, fitted on the networks:
        ``g * (s * ms + costs) = (g s) ms + g costs``, so the result is again one calibration entry."""
        from hwnas.builder._calibrate import fit_calibration, network_terms

        nets = [network_terms(self._calibrated(tr, cal, i), self.kernels[i]) for i in idx]
        g = fit_calibration(nets, target, terms=False, ridge=0.1)
        types = set(cal.get("kernel_scale", {})) | set(g["kernel_scale"]) | set(cal.get("kernel_terms", {}))
        gs = g["kernel_scale"]
        return {"kernel_scale": {t: gs.get(t, 1.0) * cal.get("kernel_scale", {}).get(t, 1.0) for t in types},
                "kernel_terms": {t: {n: gs.get(t, 1.0) * c for n, c in d.items()}
                                 for t, d in cal.get("kernel_terms", {}).items()},
                "intercept_ms": float(g["intercept_ms"]), "n_networks": len(idx),
                "method": "the source's calibration (costs scaled by the global factor) times a factor per kernel "
                          "type fitted on the probe networks (least squares on relative error, ridge towards 1)"}

    def predict(self, tr: Mapping[str, Any], cal: Mapping[str, Any] | None, idx: Sequence[int]) -> np.ndarray:
        """Latencies (ms) of the networks ``idx`` under a transfer and calibration."""
        from hwnas.builder._calibrate import apply_calibration, network_terms

        return np.array([apply_calibration(cal, network_terms(self._transferred(tr, i), self.kernels[i]))
                         + self.overhead for i in idx])

    def cv_error(self, form: str, idx: Sequence[int], kernel_transfer: Mapping[str, Any] | None,
                 folds: int = 5) -> dict[str, float]:
        """Out-of-fold accuracy of ``form`` over the networks ``idx`` (:func:`hwnas.builder._fit.error_metrics`)."""
        from hwnas.builder._fit import error_metrics

        idx = list(idx)
        pred = np.empty(len(idx))
        for f in range(min(folds, len(idx))):
            test = list(range(f, len(idx), folds))
            train = [idx[j] for j in range(len(idx)) if j not in test]
            tr, cal = self.fit(form, train, kernel_transfer)
            pred[test] = self.predict(tr, cal, [idx[j] for j in test])
        return error_metrics(pred, self.y[idx])


def ensure_predictor(backend: str = "torchscript-cpu", *, time_budget_min: float = 4.0, out: Any = None,
                     log: Callable[[str], None] | None = print, progress: bool = True) -> str:
    """The name of a predictor of ``backend`` for this machine: the matching installed one, or one made now by a
    bounded :func:`adapt` (registered, so the next call finds it without measuring).

    Parameters
    ----------
    backend : str
    time_budget_min : float
        Budget of the adaptation when one is needed (minutes).
    out : path-like, optional
        Adaptation folder (default ``runs/adapt-<backend>``).
    """
    from hwnas.predictor import select

    sel = select(backend)
    if sel.matches:
        return sel.entry.name
    say = log or (lambda _m: None)
    say(f"{sel.message}\nadapting it now (at most {time_budget_min:g} min; the result is registered for the next run)")
    rep = adapt(AdaptConfig(backend=backend, out=Path(out or f"runs/adapt-{backend}"),
                            time_budget_min=time_budget_min), progress=progress, log=log)
    return str(rep["name"])
