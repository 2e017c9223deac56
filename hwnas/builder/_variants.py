"""Layout variants: kernels that read a tensor outside the backend's layout, measured as they run there.

The builder times each kernel after a 1x1 convolution (:func:`hwnas.builder._build.measure_in_context`), so on
``torchscript-cpu`` it reads a oneDNN tensor. Where a network feeds a kernel a plain tensor instead (a pool or
batch norm after a concat, an add of a SiLU's output), TorchScript runs ATen's kernel, which can be 25x slower
(:mod:`hwnas.kernels._layout`). This module measures those kernels on a plain input and adds them to a predictor
as their own types (``maxpool@dense``), with the layout rules that say where they occur:

- :func:`variant_specs` — the kernels whose first op reads a plain tensor in the builder's prior networks, the
  prior's other kernels of those types (the same configuration on a plain input), and jittered neighbours;
- :func:`conversion_specs` — the tensor shapes the backend converts between layouts in those networks;
- :func:`measure_variants` — time each kernel alone (its input is the graph's plain input), and each conversion
  shape as a pair (``to_mkldnn`` then ``to_dense``), minus the call overhead, into a resumable store;
- :func:`add_variants` — fit one regressor per variant type, and one for the conversions (half a pair each: the
  two directions are assumed to cost alike, a network's calibration refits their factor), and write them, with
  the ``layout`` entry, into a predictor measured on the same machine (an adapted predictor gets the identity transfer for them: they are
  this machine's own latencies).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from hwnas.builder._protocol import MeasureProtocol
from hwnas.kernels import (CONVERSION_TYPES, FusionRules, LayoutRules, base_type, detect_kernels, plain_input_heads,
                           tensor_kernel)

#: Store name of the variant measurements in a build's ``raw/`` directory (kept apart from ``kernels.jsonl``,
#: whose rows are in-context measurements).
STORE = "layout_variants"


def variant_specs(rules: FusionRules, layout: LayoutRules, models: Iterable[Any], *, jitter: int = 1,
                  max_per_type: int = 80, seed: int = 0, progress: bool = True) -> list[dict[str, Any]]:
    """Kernel specs to measure on a plain input (types with ``layout.suffix``), deterministic for a seed.

    Parameters
    ----------
    rules : FusionRules
        The predictor's fusion rules.
    layout : LayoutRules
        The backend's layout rules; every kernel type whose first op is a ``join`` op may get a variant.
    models : iterable of PriorModel
        Networks to take kernels from (the builder's prior, :mod:`hwnas.builder._sampler`).
    jitter : int
        Neighbours per plain-input kernel (channels and resolution scaled).
    max_per_type : int
        At most this many specs per variant type: the plain-input kernels first, then neighbours, then the same
        type's other kernels of the prior, each group in a seeded random order.
    """
    from tqdm.auto import tqdm

    from hwnas.builder._kernel_modules import kernel_spec
    from hwnas.builder._sampler import jitter as neighbour
    from hwnas.builder._sampler import spec_key
    from hwnas.graph import capture

    plain: dict[str, dict[str, Any]] = {}
    other: dict[str, dict[str, Any]] = {}
    for pm in tqdm(list(models), desc="layout variants: capturing models", disable=not progress):
        graph = capture(pm.build(), "torch", pm.input_shape)
        heads = plain_input_heads(graph, layout)
        for k in detect_kernels(graph, rules):
            first = k.nodes[0]
            if first.op not in layout.join or not first.input_shapes or len(first.input_shapes[0]) != 4:
                continue
            spec = kernel_spec(k)
            spec["type"] = k.type + layout.suffix
            key = spec_key(spec)
            into = plain if first.name in heads else other
            if key not in plain and key not in into:
                into[key] = {**spec, "families": []}
            entry = plain.get(key) or into[key]
            if pm.family not in entry["families"]:
                entry["families"].append(pm.family)
    rng = random.Random(seed)
    near: dict[str, dict[str, Any]] = {}
    for s in plain.values():
        for _ in range(jitter):
            n = neighbour(s, rng)
            if n is not None and spec_key(n) not in plain and spec_key(n) not in near:
                n["families"] = ["jitter"]
                n["parent_families"] = list(s.get("families", []))
                near[spec_key(n)] = n
    types = sorted({s["type"] for s in plain.values()})
    out: list[dict[str, Any]] = []
    for t in types:
        chosen: dict[str, dict[str, Any]] = {}
        for group in (plain, near, other):
            pool = [s for k, s in sorted(group.items()) if s["type"] == t and k not in chosen]
            rng.shuffle(pool)
            chosen.update((spec_key(s), s) for s in pool[:max(0, max_per_type - len(chosen))])
        out += chosen.values()
    return out


def conversion_specs(layout: LayoutRules, models: Iterable[Any], *, max_shapes: int = 160, seed: int = 0,
                     progress: bool = True) -> list[dict[str, Any]]:
    """The distinct 4-d tensor shapes the backend converts in ``models`` (:func:`hwnas.kernels.conversion_tensors`),
    as specs of type ``"conversion"``; at most ``max_shapes``, a seeded random choice."""
    from tqdm.auto import tqdm

    from hwnas.graph import capture
    from hwnas.kernels import conversion_tensors

    shapes: dict[tuple[int, ...], set[str]] = {}
    for pm in tqdm(list(models), desc="layout conversions: capturing models", disable=not progress):
        graph = capture(pm.build(), "torch", pm.input_shape)
        for _, _, shape in conversion_tensors(graph, layout):
            if len(shape) == 4:
                shapes.setdefault(tuple(shape), set()).add(pm.family)
    chosen = sorted(shapes)
    random.Random(seed).shuffle(chosen)
    return [{"type": "conversion", "shape": list(s), "families": sorted(shapes[s])} for s in chosen[:max_shapes]]


def measure_variants(backend: Any, store_path: Path, specs: Sequence[dict[str, Any]],
                     protocol: MeasureProtocol, *, time_budget_min: float | None = None,
                     progress: bool = True) -> int:
    """Time each pending spec alone on its plain input (minus the call overhead, ms) into ``store_path``;
    resumable. Returns how many were measured in this call."""
    from tqdm.auto import tqdm

    from hwnas.builder._backends import get_backend, release_memory
    from hwnas.builder._build import _measure_timed, _net_parts
    from hwnas.builder._kernel_modules import _ConversionPair, _Passthrough, kernel_module
    from hwnas.builder._sampler import spec_key
    from hwnas.builder._store import open_store, round_robin

    def key(spec: dict[str, Any]) -> str:
        return f"conversion:{spec['shape']}" if spec["type"] == "conversion" else spec_key(spec)

    if isinstance(backend, str):   # a name or a backend object
        backend = get_backend(backend)
    backend_name = backend.name
    store = open_store(store_path)
    todo = round_robin(store.pending(list(specs), key=key), key=lambda s: s["type"])
    deadline = time.monotonic() + time_budget_min * 60 if time_budget_min else None
    done = failed = 0
    with store:
        for spec in tqdm(todo, desc=f"measuring layout variants on {backend_name}", disable=not progress):
            if deadline is not None and time.monotonic() > deadline:
                print(f"time budget of {time_budget_min} min reached; run again to measure the rest")
                break
            if spec["type"] == "conversion":
                fields: dict[str, Any] = {"kind": "conversion", "shape": list(spec["shape"])}
                module, shape, method = _ConversionPair(), tuple(spec["shape"]), "conversion_pair"
            else:
                fields = {"kind": "kernel", "spec": {k: spec[k] for k in ("type", "ops")}}
                module = kernel_module(spec)
                shape, method = module.input_shape, "plain_input"
            fields["families"] = spec.get("families", [])
            if spec.get("parent_families"):
                fields["parent_families"] = spec["parent_families"]
            try:
                measured, _ = _measure_timed(backend, [(module, None), (_Passthrough(), None)], shape, protocol)
            except Exception as e:  # noqa: BLE001 - one unmeasurable kernel must not end the run
                failed += 1
                store.append(key(spec), ms=-1.0, protocol=protocol, method="failed",
                             error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}", **fields)
                continue
            finally:
                release_memory(backend)
            parts = _net_parts(measured, prefixed=False)
            store.append(key(spec), ms=parts.pop("ms"), protocol=protocol, method=method, parts=parts, **fields)
            done += 1
    if failed:
        print(f"{failed} layout variants could not be measured on {backend_name}; see records with method 'failed'")
    return done


def fit_variants(raw: Path, layout: LayoutRules, backend: str, seed: int = 0) -> dict[str, Any]:
    """Fit the variant types and the conversions measured in ``raw/`` (no predictor is touched).

    Returns
    -------
    dict
        ``regressors`` and ``kernels`` (type → regressor, type → its metadata entry), ``holdout`` (type →
        held-out report), ``layout`` (the rules with the fitted variants and conversions), ``variants`` (type →
        kernels fitted on), ``too_few`` (types left out: too few measurements; their kernels keep the in-layout
        type) and ``fingerprint`` (of the measuring machine, or None).

    Raises
    ------
    ValueError
        No measurements in ``raw/``.
    """
    from hwnas.builder._fit import MIN_FIT_SAMPLES, fit_regressors, kernel_rows
    from hwnas.builder._store import read_records

    rows, _ = kernel_rows(Path(raw), STORE)
    by_type: dict[str, list[tuple[dict, float]]] = {}
    for r in rows:
        if r["type"].endswith(layout.suffix):
            by_type.setdefault(r["type"], []).append((r["features"], r["ms"]))
    pairs = _conversion_rows(Path(raw))
    if len(pairs) >= MIN_FIT_SAMPLES:   # each conversion: half a measured pair (a reorder each way, assumed alike)
        by_type[CONVERSION_TYPES[0]] = pairs
    if not by_type:
        raise ValueError(f"no layout-variant measurements in {raw}/{STORE}.jsonl; measure them first")
    measured_on = next((r["fingerprint"] for p in sorted(Path(raw).glob(f"{STORE}*.jsonl*"))
                        for r in read_records(p) if r.get("type") == "device" and r.get("fingerprint")), None)
    regs, kernels, accuracy, unsupported = fit_regressors(by_type, backend, seed)
    converts = CONVERSION_TYPES[0] in regs
    for t in CONVERSION_TYPES[1:] if converts else ():   # one regressor prices both kinds
        regs[t], kernels[t], accuracy[t] = regs[CONVERSION_TYPES[0]], kernels[CONVERSION_TYPES[0]], \
            accuracy[CONVERSION_TYPES[0]]
    variants = [base_type(t) for t in regs if t.endswith(layout.suffix)]
    return {"regressors": regs, "kernels": kernels, "holdout": accuracy,
            "layout": layout.with_variants(variants, conversions=converts),
            "variants": {t: len(by_type.get(t, pairs)) for t in regs}, "too_few": unsupported,
            "fingerprint": measured_on}


def merge_variants(meta: dict[str, Any], regs: dict[str, Any], fitted: dict[str, Any]
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A predictor's metadata and regressors with :func:`fit_variants`' types and layout entry added (copies,
    ready for :func:`hwnas.predictor.write_predictor`); a transferred predictor gets the identity transfer for
    them (they are latencies of the machine it describes)."""
    meta = dict(meta)
    meta["kernels"] = {t: {k: v for k, v in spec.items() if k != "regressor"}
                       for t, spec in {**meta["kernels"], **fitted["kernels"]}.items()}
    meta["accuracy"] = dict(meta.get("accuracy") or {})
    meta["accuracy"]["kernels_holdout"] = {**meta["accuracy"].get("kernels_holdout", {}), **fitted["holdout"]}
    if meta.get("transfer"):
        tr = dict(meta["transfer"])
        tr["kernel_types"] = {**tr.get("kernel_types", {}), **{t: [0.0, 1.0] for t in fitted["regressors"]}}
        meta["transfer"] = tr
    meta["layout"] = fitted["layout"].to_dict()
    for k in ("schema_version", "files"):
        meta.pop(k, None)
    return meta, {**regs, **fitted["regressors"]}


def add_variants(predictor: Path, raw: Path, layout: LayoutRules, *, out: Path | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """Fit the variant types measured in ``raw/`` (:func:`fit_variants`) and write them into the predictor at
    ``out`` (default: in place).

    Raises
    ------
    ValueError
        No variant measurements, or they were taken on another machine than the predictor describes (a predictor
        prices one machine; adapt it to this one first).

    Returns
    -------
    dict
        ``variants``, ``too_few`` and ``holdout`` of :func:`fit_variants`, and ``path``.
    """
    from hwnas.device import explain_differences, same_device
    from hwnas.predictor import read_predictor, write_predictor

    meta, regs = read_predictor(predictor)
    fitted = fit_variants(raw, layout, meta["backend"], seed)
    device = meta.get("device") or {}
    fp = device.get("fingerprint") if isinstance(device, dict) else None
    if fitted["fingerprint"] and fp and not same_device(fitted["fingerprint"], fp):
        raise ValueError(f"the variants in {raw} were measured on another machine than predictor "
                         f"{meta.get('name')!r} describes ({explain_differences(fp, fitted['fingerprint'])})")
    path = write_predictor(out or predictor, *merge_variants(meta, regs, fitted))
    return {"variants": fitted["variants"], "too_few": fitted["too_few"], "holdout": fitted["holdout"],
            "path": str(path)}


def with_layout_variants(backend: Any, source: Any, models: Sequence[Any], raw: Path, protocol: MeasureProtocol,
                         minutes: float, progress: bool = True) -> tuple[Any, set[str], str]:
    """``hwnas adapt``'s step: ``source`` (a predictor of another machine) with the layout variants and
    conversions of ``models`` measured here for at most ``minutes`` (resumable in ``raw/``) added as its own types.

    Returns
    -------
    tuple
        The predictor (``source`` itself when too few were measured), the added kernel types (measured here: an
        adaptation must not transfer them) and a one-line note of what was added.
    """
    from hwnas.kernels import LAYOUT_RULES
    from hwnas.predictor import LatencyPredictor

    layout = LayoutRules.from_dict(LAYOUT_RULES[backend.name])
    specs = (variant_specs(source.rules, layout, models, max_per_type=40, progress=False)
             + conversion_specs(layout, models, max_shapes=80, progress=False))
    if specs and minutes > 0:
        measure_variants(backend, raw / f"{STORE}.jsonl", specs, protocol, time_budget_min=minutes,
                         progress=progress)
    try:
        fitted = fit_variants(raw, layout, backend.name)
    except ValueError:
        return source, set(), "no layout variants measured (out of time)"
    meta, regs = merge_variants(source.metadata, source.regressors, fitted)
    pred = LatencyPredictor(meta, regs, path=source.path)
    pred._device_checked = True   # a source of another machine is the point of adapting: no warning
    note = "layout kernel types measured here: " + ", ".join(f"{t} ({n})" for t, n in sorted(fitted["variants"].items()))
    return pred, set(fitted["regressors"]), note


def _conversion_rows(raw: Path) -> list[tuple[dict, float]]:
    """(features, ms) of one conversion per measured pair: the tensor's features, half the pair's time."""
    from hwnas.builder._store import read_records

    rows: dict[str, tuple[dict, float]] = {}
    for path in sorted(raw.glob(f"{STORE}*.jsonl")) + sorted(raw.glob(f"{STORE}*.jsonl.gz")):
        for r in read_records(path):
            if r.get("type") == "measurement" and r.get("kind") == "conversion" and r.get("method") != "failed":
                rows.setdefault(r["key"], (tensor_kernel(CONVERSION_TYPES[0], r["shape"]).features,
                                           max(float(r["ms"]) / 2, 1e-4)))
    return list(rows.values())


def layout_variants(cfg: Any, progress: bool = True) -> dict[str, Any]:
    """``hwnas build --layout-variants``: on the build in ``cfg.out`` (its ``predictor/`` fitted), sample the layout
    variants of the builder's prior (``cfg.resolutions``, ``cfg.space_archs``, ``cfg.seed``, ``cfg.jitter``),
    measure them (resumable, ``cfg.time_budget_min``), add them to ``<out>/predictor`` and, when the build has a
    zoo store, refit its calibration with them (:func:`hwnas.builder._calibrate.calibrate_build`).

    Raises
    ------
    ValueError
        The backend has no layout rules (:data:`hwnas.kernels.LAYOUT_RULES`), or the build has no predictor.
    """
    from hwnas.builder._sampler import space_prior, torchvision_prior
    from hwnas.builder._zoo import zoo_store_path
    from hwnas.kernels import LAYOUT_RULES
    from hwnas.predictor import read_predictor

    if cfg.backend not in LAYOUT_RULES:
        raise ValueError(f"backend {cfg.backend!r} has no layout rules (rules exist for: {sorted(LAYOUT_RULES)})")
    layout = LayoutRules.from_dict(LAYOUT_RULES[cfg.backend])
    out = Path(cfg.out)
    predictor = out / "predictor"
    if not (predictor / "predictor.json").is_file():
        raise ValueError(f"no predictor in {predictor}: build (or adapt) one first")
    meta, _ = read_predictor(predictor)
    rules = FusionRules(meta.get("fusion_rules", []))
    models = torchvision_prior(cfg.resolutions) + space_prior(cfg.space_archs, cfg.seed)
    specs = variant_specs(rules, layout, models, jitter=cfg.jitter, seed=cfg.seed, progress=progress)
    specs += conversion_specs(layout, models, seed=cfg.seed, progress=progress)
    store = out / "raw" / f"{STORE}.jsonl"
    if not store.exists() and store.with_suffix(".jsonl.gz").exists():   # kept compressed: append to that one
        store = store.with_suffix(".jsonl.gz")
    store.parent.mkdir(parents=True, exist_ok=True)
    measure_variants(cfg.backend, store, specs, cfg.protocol, time_budget_min=cfg.time_budget_min,
                     progress=progress)
    result = add_variants(predictor, out / "raw", layout, seed=cfg.seed)
    if zoo_store_path(out / "raw").is_file():
        from hwnas.builder._calibrate import calibrate_build

        result["calibration"] = calibrate_build(out, progress=progress)
    return result
