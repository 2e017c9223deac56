"""Kernel-level latency predictors: load by name or path, predict a model's latency in ms.

A predictor is plain data (see :mod:`hwnas.predictor._format`): fusion rules, the kernel types it prices with
their feature names, and one regressor per kernel type. Prediction = capture the model (:mod:`hwnas.graph`),
group ops into kernels by the predictor's fusion rules (:mod:`hwnas.kernels`), evaluate each kernel type's
regressor on its kernels' features, and sum. A predictor with layout rules (a ``layout`` entry,
:mod:`hwnas.kernels._layout`) gives a kernel of a listed type whose first op reads a tensor outside the backend's
layout its own type (``maxpool@dense``), priced by its own regressor. A kernel made only of ops the backend removes
(``zero_cost_ops``, e.g. dropout at inference), or of a type declared free (``zero_cost_kernels``: its time
lands on neighbouring kernels inside a network), costs 0 ms *by declaration in the predictor*; any other kernel
without a regressor is an :class:`~hwnas.errors.UnknownKernelError`, never a silent 0.

Public API for writers of predictors (the builder, benchmarks): :func:`write_predictor` and
:func:`read_predictor` (the checked file format), the regressor classes :class:`TreeEnsemble` and
:class:`LinearModel`, and :data:`UNIT_FLOOR` (the smallest unit count a per-unit target divides by).
"""

from __future__ import annotations

import json
import os
import warnings
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hwnas.device import explain_differences, fingerprint, isa_level, same_device
from hwnas.errors import PredictorFileError, UnknownKernelError
from hwnas.graph import OpGraph, capture
from hwnas.kernels import (CONVERSION_TYPES, FEATURE_NAMES, KERNEL_MODEL_VERSION, FusionRules, Kernel, LayoutRules,
                           apply_layout, detect_kernels)
from hwnas.predictor._canonical import rekey, sample_counts, winners
from hwnas.predictor._format import predictor_checksum, read_predictor, write_predictor
from hwnas.predictor._registry import (AUTO, PredictorEntry, Selection, adapt_command, embedded_dir,
                                      find_predictors, lookup, register_predictor, select, user_dir)
from hwnas.predictor._regressors import UNIT_FLOOR, LinearModel, TreeEnsemble, apply_target

__all__ = ["LatencyPredictor", "list_latency_predictors", "load_latency_predictor", "embedded_dir", "user_dir",
           "register_predictor", "select", "find_predictors", "adapt_command", "DeviceMismatchWarning", "AUTO",
           "DEFAULT_BACKEND", "PredictorEntry", "Selection", "lookup", "read_predictor", "write_predictor",
           "TreeEnsemble", "LinearModel", "UNIT_FLOOR"]

#: Backend of ``"auto"`` when none is named.
DEFAULT_BACKEND = "torchscript-cpu"


class DeviceMismatchWarning(UserWarning):
    """A predictor describes another machine than this one (the message names what differs)."""

_CACHE_SIZE = 64


def list_latency_predictors(backend: str | None = None) -> list[dict[str, Any]]:
    """Metadata of the installed predictors, embedded and the user's own (no arrays are loaded).

    Parameters
    ----------
    backend : str, optional
        Only predictors of this backend.

    Returns
    -------
    list of dict
        One per predictor, with ``name``, ``version``, ``backend``, ``device``, ``isa`` (instruction-set level of
        the measuring CPU), ``matches_this_machine`` (its device fingerprint matches this machine's, see
        :func:`hwnas.device.same_device`), ``source`` (``"embedded"`` or ``"user"``), ``status``, ``threads``,
        ``batch_size``, ``precision``, ``units`` and ``path``.
    """
    here = fingerprint()
    out = []
    for e in find_predictors(backend):
        meta, fp = e.meta, e.device_fingerprint
        device = meta.get("device", {})
        out.append({
            "name": e.name, "version": meta.get("version"), "backend": meta.get("backend"),
            "device": device.get("description") if isinstance(device, dict) else device,
            "isa": isa_level(fp) if fp else None, "matches_this_machine": bool(fp) and same_device(fp, here),
            "source": e.source, "status": meta.get("status"), "threads": meta.get("threads"),
            "batch_size": meta.get("batch_size"), "precision": meta.get("precision"),
            "units": meta.get("units", "ms"), "path": str(e.path),
        })
    return out


def load_latency_predictor(name_or_path: str | os.PathLike = AUTO, backend: str | None = None, *,
                           warn: bool = True) -> "LatencyPredictor":
    """Load a predictor: ``"auto"`` (the one of this machine), a name, or a predictor directory / ``.zip``.

    Parameters
    ----------
    name_or_path : str or path-like
        ``"auto"`` (or ``"auto:BACKEND"``): the predictor of ``backend`` whose device fingerprint matches this
        machine, among the embedded ones and the user's (:mod:`hwnas.predictor._registry`); without a match the closest one, with a
        :class:`DeviceMismatchWarning` that names what differs and the command that adapts it. A name or a path
        always wins over ``"auto"``.
    backend : str, optional
        Backend for ``"auto"`` (default ``"torchscript-cpu"``); with a name or path, the predictor must be of
        this backend when given.
    warn : bool
        Emit the mismatch warning (the message stays in :attr:`LatencyPredictor.selection_note` either way).

    Raises
    ------
    PredictorFileError
        Unknown name, missing path, a name held twice, a predictor of another backend than asked for, or a
        corrupt, tampered or future-schema file.
    """
    key = os.fspath(name_or_path)
    note = ""
    if key == AUTO or key.startswith(AUTO + ":"):
        named = key.partition(":")[2] or None
        if named and backend and named != backend:
            raise PredictorFileError(f"{key!r} asks for backend {named!r}, but backend {backend!r} was given")
        backend = named or backend
        sel = select(backend or DEFAULT_BACKEND)
        path, note = sel.entry.path, sel.message
    else:
        entry = lookup(key)
        if entry is not None:
            path = entry.path
        elif os.path.exists(key):
            path = Path(key)
        else:
            known = ", ".join(e.name for e in find_predictors()) or "none"
            raise PredictorFileError(f"no predictor named {key!r} and no such path; installed predictors: {known} "
                                     f"(or 'auto' for the one of this machine)")
    metadata, regressors = read_predictor(path)
    if backend is not None and metadata.get("backend") != backend:
        raise PredictorFileError(f"predictor {metadata.get('name')!r} ({path}) is for backend "
                                 f"{metadata.get('backend')!r}, not {backend!r}")
    pred = LatencyPredictor(metadata, regressors, path=path)
    pred.selection_note = note
    if note:
        pred._device_checked = True   # the selection already said it, once
        if warn:
            warnings.warn(note, DeviceMismatchWarning, stacklevel=2)
    return pred


#: Additive calibration terms a predictor understands: term -> kernel feature (None: one per kernel).
CALIBRATION_TERMS = {"per_kernel": None, "per_mparam": "params", "per_melem": "out_elems"}


def _default_input_shape(model: Any, model_type: str, input_shape: Sequence[int] | None) -> Sequence[int] | None:
    """``input_shape`` when given; else 1x3x224x224 for an ``nn.Module``, the input shape a TorchScript or ONNX
    file's hwnas metadata records, or ``None`` (the capture then takes an ONNX file's static dims, or asks for it)."""
    if input_shape is not None:
        return input_shape
    if model_type == "torch":
        return (1, 3, 224, 224)
    if not isinstance(model, (str, os.PathLike)) or not os.path.isfile(os.fspath(model)):
        return None
    if model_type == "torchscript":
        from hwnas.export import ExportError, read_metadata

        try:
            recorded = read_metadata(os.fspath(model)).get("input_shape")
        except ExportError:   # not written by hwnas export
            recorded = None
        if not recorded:
            from hwnas.errors import InputShapeError

            raise InputShapeError(f"{os.fspath(model)} records no input shape (no hwnas export metadata): pass "
                                  "input_shape, e.g. (1, 3, 224, 224)")
        return tuple(int(s) for s in recorded)
    if model_type == "onnx":
        from hwnas.graph import onnx_input_shapes

        return onnx_input_shapes(os.fspath(model))[1]
    return None


def _read_calibration(cal: Any, name: str) -> tuple[dict[str, float], dict[str, dict[str, float]], float]:
    """Kernel factors, additive terms and intercept (ms) of a ``calibration`` entry, checked: finite, factors > 0,
    terms >= 0 and known."""
    try:
        scale = {str(k): float(v) for k, v in dict(cal.get("kernel_scale", {})).items()}
        terms = {str(t): {str(n): float(c) for n, c in dict(v).items()}
                 for t, v in dict(cal.get("kernel_terms", {})).items()}
        intercept = float(cal.get("intercept_ms", 0.0))
    except (AttributeError, TypeError, ValueError) as e:
        raise PredictorFileError(f"predictor {name!r}: malformed 'calibration' entry ({e})") from None
    bad: dict[str, Any] = {k: v for k, v in scale.items() if not (np.isfinite(v) and v > 0)}
    bad.update({f"{t}.{n}": c for t, v in terms.items() for n, c in v.items()
                if n not in CALIBRATION_TERMS or not (np.isfinite(c) and c >= 0)})
    if bad or not np.isfinite(intercept):
        raise PredictorFileError(f"predictor {name!r}: calibration factors must be finite and > 0, terms known, "
                                 f"finite and >= 0, and the intercept finite; got {bad or intercept}")
    return scale, terms, intercept


def _read_transfer(tr: Any, name: str) -> tuple[dict[str, tuple[float, float]], tuple[float, float] | None]:
    """The ``transfer`` entry (written by ``hwnas adapt``): kernel type -> (a, b) with ``ms' = exp(a) * ms ** b``
    on the regressor's output, and the default pair for types the probe did not measure; checked."""
    if not tr:
        return {}, None
    try:
        pairs = {str(k): (float(v[0]), float(v[1])) for k, v in dict(tr.get("kernel_types", {})).items()}
        default = (float(tr["default"][0]), float(tr["default"][1]))
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as e:
        raise PredictorFileError(f"predictor {name!r}: malformed 'transfer' entry ({e})") from None
    bad = {k: v for k, v in {**pairs, "default": default}.items()
           if not (np.isfinite(v[0]) and np.isfinite(v[1]) and 0.25 <= v[1] <= 4.0)}
    if bad:
        raise PredictorFileError(f"predictor {name!r}: transfer pairs must be finite with an exponent in "
                                 f"[0.25, 4]; got {bad}")
    return pairs, default


def _read_layout(entry: Any, name: str, specs: Mapping[str, Any]) -> LayoutRules | None:
    """The ``layout`` entry, checked: well-formed, and every variant type it names has a regressor."""
    if not entry:
        return None
    try:
        rules = LayoutRules.from_dict(entry)
    except ValueError as e:
        raise PredictorFileError(f"predictor {name!r}: malformed 'layout' entry ({e})") from None
    missing = sorted([v + rules.suffix for v in rules.variants if v + rules.suffix not in specs]
                     + [t for t in (CONVERSION_TYPES if rules.conversions else ()) if t not in specs])
    if missing:
        raise PredictorFileError(f"predictor {name!r}: its layout rules name kernel types without a regressor: "
                                 f"{missing}")
    return rules


class LatencyPredictor:
    """Predicts the latency of models (ms) on one backend and device.

    Parameters
    ----------
    metadata : dict
        The predictor's ``predictor.json`` content.
    regressors : dict
        Kernel type → regressor with ``predict(X) -> ndarray``.
    path : Path, optional
        Where it was loaded from (for messages and checksums).
    """

    def __init__(self, metadata: dict[str, Any], regressors: dict[str, Any], path: Path | None = None):
        self.metadata = metadata
        self.regressors = regressors
        self.path = path
        self.name: str = metadata["name"]
        self.backend: str = metadata["backend"]
        self.rules = FusionRules(metadata.get("fusion_rules", []))
        self.zero_cost_ops = frozenset(metadata.get("zero_cost_ops", []))
        self.zero_cost_kernels = frozenset(metadata.get("zero_cost_kernels", []))
        #: Per-call cost of the backend (ms), paid once per model run, not once per kernel.
        self.overhead_ms = float(metadata.get("model_overhead_ms", 0.0))
        #: Per-kernel-type factors fitted on networks measured end to end (see hwnas.builder._calibrate).
        self.kernel_scale: dict[str, float] = {}
        #: Per-kernel-type additive costs: term name -> ms per unit (see hwnas.builder._calibrate.TERMS).
        self.kernel_terms: dict[str, dict[str, float]] = {}
        cal = metadata.get("calibration")
        if cal:
            self.kernel_scale, self.kernel_terms, intercept = _read_calibration(cal, self.name)
            self.overhead_ms += intercept
        # Types named before the batch-norm fold (conv-bn-relu) price the folded kernels (conv-relu).
        chosen = winners(metadata["kernels"], sample_counts(metadata))
        self._specs = rekey(metadata["kernels"], chosen)
        self.regressors = rekey(regressors, chosen)
        self.kernel_scale = rekey(self.kernel_scale, chosen)
        self.kernel_terms = rekey(self.kernel_terms, chosen)
        self._unsupported = rekey(metadata.get("unsupported_kernel_types") or {}, chosen)
        for ktype, spec in self._specs.items():
            unknown = [f for f in spec["features"] if f not in FEATURE_NAMES]
            if unknown:
                raise PredictorFileError(f"predictor {self.name!r}: kernel {ktype!r} uses unknown features {unknown}")
        self._module_cache: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
        self._path_cache: OrderedDict[tuple, list[Kernel]] = OrderedDict()
        self._device_checked = False
        #: What ``"auto"`` said when it chose this predictor for another machine ("" otherwise).
        self.selection_note = ""
        #: Per-kernel-type transfer to another machine (``hwnas adapt``): type -> (log factor, exponent).
        self.transfer, self.transfer_default = _read_transfer(metadata.get("transfer"), self.name)
        self.transfer = rekey(self.transfer, chosen)
        #: Layout rules (see :mod:`hwnas.kernels._layout`): kernels of ``layout.variants`` types whose first op reads
        #: a tensor outside the backend's layout get their own type (``maxpool@dense``); ``None``: no such rules.
        self.layout = _read_layout(metadata.get("layout"), self.name, self._specs)

    # -- identity -------------------------------------------------------------------------------------------------
    @property
    def checksum(self) -> str:
        """Stable digest of the predictor's data and of the kernel model that reads it (for caching derived
        tables: a change in how graphs become kernels invalidates them)."""
        # the loaded, verified predictor.json: no second read
        return predictor_checksum({**self.metadata, "kernel_model_version": KERNEL_MODEL_VERSION})

    def __repr__(self) -> str:
        return f"LatencyPredictor({self.name!r}, backend={self.backend!r}, kernel types={len(self._specs)})"

    def _check_device(self) -> None:
        if self._device_checked:
            return
        self._device_checked = True
        dev = self.metadata.get("device")
        fp = dev.get("fingerprint") if isinstance(dev, dict) else None
        if not fp:
            return
        here = fingerprint()
        if not same_device(fp, here):
            warnings.warn(f"predictor {self.name!r} describes another machine ({explain_differences(fp, here)}); "
                          f"its latencies are that machine's, not this one's. Adapt it to this machine with: "
                          f"{adapt_command(self.backend)}", DeviceMismatchWarning, stacklevel=3)

    @property
    def kernel_specs(self) -> dict[str, dict[str, Any]]:
        """Per kernel type (folded names), what its regressor reads and predicts: ``features``, ``target`` and,
        for ``log_ms_per_unit``, ``unit_feature`` (a copy)."""
        return {t: {k: v for k, v in spec.items() if k != "regressor"} for t, spec in self._specs.items()}

    # -- kernels ----------------------------------------------------------------------------------------------------
    def graph_kernels(self, graph: OpGraph, inputs_in_group: bool = False, output_returned: bool = True
                      ) -> list[Kernel]:
        """Kernels of an op graph under this predictor's fusion rules, and its layout rules when it has them
        (:func:`hwnas.kernels.apply_layout`: with ``inputs_in_group`` the graph's inputs are in the backend's
        layout, and with ``output_returned=False`` its output is read inside a network, as for a block)."""
        return apply_layout(detect_kernels(graph, self.rules), graph, self.layout, inputs_in_group, output_returned)

    def kernels(self, model: Any, model_type: str = "torch",
                input_shape: Sequence[int] | None = None) -> list[Kernel]:
        """Kernels of a model; the capture is cached per model object (or file) and input shape.

        The cache holds a weak reference to ``nn.Module`` and TorchScript objects: a model changed in place
        after a prediction keeps its old graph; call :meth:`clear_cache` after changing its structure.
        """
        input_shape = _default_input_shape(model, model_type, input_shape)
        shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
        key = (model_type, shape)
        if isinstance(model, (str, os.PathLike)):
            st = os.stat(model) if os.path.exists(model) else None
            pkey = (os.fspath(model), st.st_mtime_ns if st else 0, st.st_size if st else 0, key)
            if pkey in self._path_cache:
                self._path_cache.move_to_end(pkey)
                return self._path_cache[pkey]
            kernels = self.graph_kernels(capture(model, model_type, shape))
            self._path_cache[pkey] = kernels
            if len(self._path_cache) > _CACHE_SIZE:
                self._path_cache.popitem(last=False)
            return kernels
        if isinstance(model, OpGraph):
            return self.graph_kernels(model)
        try:
            per_model = self._module_cache.setdefault(model, {})
        except TypeError:   # not weak-referenceable (e.g. an onnx.ModelProto)
            return self.graph_kernels(capture(model, model_type, shape))
        if key not in per_model:
            per_model[key] = self.graph_kernels(capture(model, model_type, shape))
        return per_model[key]

    def clear_cache(self) -> None:
        """Forget cached graphs."""
        self._module_cache = weakref.WeakKeyDictionary()
        self._path_cache.clear()

    # -- prediction -------------------------------------------------------------------------------------------------
    def kernel_latencies(self, kernels: Sequence[Kernel]) -> np.ndarray:
        """Latency of each kernel, ms (vectorised per kernel type)."""
        self._check_device()
        out = np.zeros(len(kernels), dtype=np.float64)
        by_type: dict[str, list[int]] = {}
        for i, k in enumerate(kernels):
            if k.type in self._specs:
                by_type.setdefault(k.type, []).append(i)
            elif k.type in self.zero_cost_kernels or (k.ops and all(op in self.zero_cost_ops for op in k.ops)):
                continue   # declared free on this backend
            else:
                reason = self._unsupported.get(k.type)
                raise UnknownKernelError(k.type, k.ops, i, self.name, reason)
        for ktype, idx in by_type.items():
            spec = self._specs[ktype]
            names = spec["features"]
            x = np.array([[kernels[i].features[n] for n in names] for i in idx], dtype=np.float64)
            raw = self.regressors[ktype].predict(x)
            target = spec.get("target", "ms")
            unit = x[:, names.index(spec["unit_feature"])] if target == "log_ms_per_unit" else None
            ms = apply_target(target, raw, unit)
            if self.transfer_default is not None:
                a, b = self.transfer.get(ktype, self.transfer_default)
                ms = np.exp(a + b * np.log(np.maximum(ms, 1e-9)))
            ms = ms * self.kernel_scale.get(ktype, 1.0)
            for term, cost in self.kernel_terms.get(ktype, {}).items():
                feature = CALIBRATION_TERMS[term]
                ms = ms + cost * (1.0 if feature is None else
                                  np.array([kernels[i].features.get(feature, 0.0) for i in idx]))
            out[idx] = ms
        return out

    def predict(self, model: Any, model_type: str = "torch",
                input_shape: Sequence[int] | None = None) -> float:
        """Predicted latency of ``model``, in ms.

        Parameters
        ----------
        model : nn.Module, ScriptModule, onnx.ModelProto, OpGraph, or a file path
        model_type : {"torch", "torchscript", "onnx", "graph"}
        input_shape : sequence of int, optional
            Input shape with batch, NCHW. Should match the predictor's ``batch_size``. Default: 1x3x224x224 for
            an ``nn.Module``; for a TorchScript or ONNX file the input shape its hwnas metadata records
            (``hwnas export``), else an ONNX file's static input dims; a file with neither needs it (an
            :class:`~hwnas.errors.InputShapeError`, never a 224 px guess).

        Returns
        -------
        float
            Latency in milliseconds: the kernels' latencies plus the backend's per-call overhead
            (:attr:`overhead_ms`), once.
        """
        kernels = self.kernels(model, model_type, input_shape)
        return float(self.kernel_latencies(kernels).sum()) + self.overhead_ms

    def predict_kernels(self, model: Any, model_type: str = "torch",
                        input_shape: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """One row per kernel: ``type``, ``ops``, ``nodes``, ``features``, ``ms`` (for debugging).

        The rows sum to :meth:`predict` minus :attr:`overhead_ms`."""
        kernels = self.kernels(model, model_type, input_shape)
        ms = self.kernel_latencies(kernels)
        return [{"type": k.type, "ops": k.ops, "nodes": [n.name for n in k.nodes], "features": dict(k.features),
                 "ms": float(t)} for k, t in zip(kernels, ms)]

