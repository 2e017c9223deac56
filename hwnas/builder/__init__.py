"""Measure kernels and models on a backend, test fusion rules, keep measurements, build predictors.

Public API (everything else is private machinery and may change):

- :func:`measure_latency` — a model's latency in ms on a backend; :func:`measure` keeps the raw run times.
- :func:`list_backends` — registered backend names (``onnxruntime-cpu``, ``torchscript-cpu``, ``torchscript-cuda``);
  :func:`backend_status` — each with whether it runs on this machine and why not (``hwnas list-backends``).
- :func:`check_input_shape` — :func:`hwnas.graph.check_input_shape`, the one check of an input shape (>= 2
  positive ints, batch first; :class:`~hwnas.errors.InputShapeError`); :func:`quiet_deprecations` — hides
  torch's jit/ONNX-export deprecation notices within a block, every other warning stays.
- :class:`MeasureProtocol`, :data:`DEFAULT_PROTOCOL` — how a latency is measured, as data;
  :func:`reference_ms` — the machine's speed now, on a fixed reference workload (a diagnostic; nothing rescales
  predictions by it).
- :func:`fingerprint`, :func:`same_device` — which machine and runtimes measured (from :mod:`hwnas.device`).
- :func:`fuses`, :func:`detect_fusion_rules`, :func:`build_chain`, :data:`FUSION_CATALOGUE` — fusion test;
  :func:`probe_fused_chains`, :data:`PROBE_CATALOGUE` — the fusions a backend's compiled graph shows, untimed.
- :class:`AdaptConfig`, :func:`adapt`, :func:`ensure_predictor` — a predictor for this machine in minutes,
  transferred from an installed one (``hwnas adapt``); :func:`probe_networks` — the networks it measures.
- :func:`measure_zoo` — time the zoo networks end to end into a resumable store (one pass per call);
  :func:`zoo` — those networks; :func:`zoo_measurements` — one pass of such a store, or the median of its passes;
- :func:`profile_onnxruntime`, :class:`NetworkProfile` — each kernel's time inside a network, from ONNX Runtime's
  per-node profile; :func:`trace_onnxruntime`, :class:`NodeTrace` — the raw per-node record behind it (kept, so
  labels can be derived again under other rules: :func:`profile_from_trace`; :func:`ort_kernel_groups` — the
  kernels as ONNX Runtime fused them); :class:`InNetworkModel`, :func:`derive_fusion_rules`, :func:`trace_labels`,
  :func:`rule_labels`
  — kernel regressors and fusion rules fitted on such in-network labels; :func:`layout_conversions`,
  :func:`block_size`, :data:`ORT_NCHWC` — the layout conversions ONNX Runtime's NCHWc pass inserts (rules as data); :func:`fit_transfer` — a per-kernel-type log-linear map from one set of kernel latencies to
  another (ms);
  :func:`features_for` — the feature names a kernel type's regressor is fitted on.
- :func:`layout_variants` — ``hwnas build --layout-variants``: kernels that read a tensor outside the backend's
  layout (:mod:`hwnas.kernels._layout`; a pool of a concat on ``torchscript-cpu``) measured on such an input and
  added to a build's predictor as their own types; its stages :func:`variant_specs`, :func:`measure_variants`,
  :func:`add_variants`.
- :func:`measure_cold`, :class:`ColdMeasurement` — a model's latency with its weights out of cache and its input
  in cache (as inside a network whose weights exceed the cache), beside its back-to-back latency (ms);
  :func:`measure_cold_in_context` — the same for a kernel, timed after a 1x1 convolution as the builder times it;
  :func:`measure_cold_conversion` — the same for a layout conversion (half a ``to_mkldnn`` + ``to_dense`` pair).
- :func:`trace_torchscript`, :class:`TorchScriptTrace` — the oneDNN primitives a compiled TorchScript network runs,
  with their times (ms): each convolution with the reorder of its weights, the layout conversions, and what runs
  outside oneDNN. :func:`trace_torchscript_network`, :class:`TSNetworkTrace` — the same network's pieces from
  oneDNN and the profiler; :func:`ts_kernel_labels` gives each kernel its in-network time (ms) from them, and
  :class:`TSInNetworkModel` fits kernel regressors and a network term on those labels.
- :class:`BuildConfig`, :func:`build` — a whole resumable predictor build; :func:`kernel_module` — a kernel as a
  standalone module. Its stages, for benchmarks that re-run one of them: :func:`build_fusion_rules` (the rules a
  build prices with), :func:`sample_kernels` (the kernel specs it measures; :func:`spec_key` names one);
  :func:`kernel_rows` (a build's measured kernels as fit rows), :func:`fit_regressors` (one regressor per kernel
  type; none below :data:`MIN_FIT_SAMPLES` measurements), :func:`error_metrics` (shares within ±5% and ±10%, RMSE, RMSPE);
  :func:`network_sums` (a network's kernel sums per type), :func:`select_calibration` (the calibration a build
  keeps) and :func:`apply_calibration` (a calibrated network latency, ms); :func:`calibrate_build` (fit a build's
  calibration on its zoo store, one pass or the median of all, into its predictor); :func:`zoo_store_path`
  (where a build keeps its zoo measurements).
- :func:`open_store`, :func:`shard`, :func:`merge`, :func:`item_key` — the resumable measurement store.
- :func:`register_commands` — adds ``hwnas build``, ``hwnas adapt`` and the other builder subcommands to the
  ``hwnas`` parser.

Names are imported lazily on first use (no torch or onnxruntime import at ``import hwnas.builder``).
"""

from __future__ import annotations

from hwnas._lazy import lazy_exports

_LAZY = {
    # backends
    "measure_latency": "hwnas.builder._backends",
    "measure": "hwnas.builder._backends",
    "list_backends": "hwnas.builder._backends",
    "backend_status": "hwnas.builder._backends",
    "get_backend": "hwnas.builder._backends",
    "Measurement": "hwnas.builder._backends",
    "BACKENDS": "hwnas.builder._backends",
    "check_input_shape": "hwnas.builder._backends",
    "quiet_deprecations": "hwnas._warnings",
    # protocol
    "MeasureProtocol": "hwnas.builder._protocol",
    "DEFAULT_PROTOCOL": "hwnas.builder._protocol",
    "QUICK_PROTOCOL": "hwnas.builder._protocol",
    "get_statistic": "hwnas.builder._protocol",
    "reference_workload": "hwnas.builder._reference",
    "reference_ms": "hwnas.builder._reference",
    # device
    "fingerprint": "hwnas.device",
    "same_device": "hwnas.device",
    "same_runtime": "hwnas.device",
    # fusion
    "fuses": "hwnas.builder._fusion",
    "vote": "hwnas.builder._fusion",
    "detect_fusion_rules": "hwnas.builder._fusion",
    "build_chain": "hwnas.builder._fusion",
    "build_test_modules": "hwnas.builder._fusion",
    "FusionConfig": "hwnas.builder._fusion",
    "FUSION_CATALOGUE": "hwnas.builder._fusion",
    "PROBE_CATALOGUE": "hwnas.builder._fusion",
    "probe_fused_chains": "hwnas.builder._fusion",
    # kernels as modules, sampling, builds
    "kernel_module": "hwnas.builder._kernel_modules",
    "kernel_spec": "hwnas.builder._kernel_modules",
    "BuildConfig": "hwnas.builder._config",
    "AdaptConfig": "hwnas.builder._adapt",
    "AdaptError": "hwnas.builder._adapt",
    "adapt": "hwnas.builder._adapt",
    "ensure_predictor": "hwnas.builder._adapt",
    "probe_networks": "hwnas.builder._adapt",
    "features_for": "hwnas.builder._fit",
    "kernel_rows": "hwnas.builder._fit",
    "fit_regressors": "hwnas.builder._fit",
    "error_metrics": "hwnas.builder._fit",
    "MIN_FIT_SAMPLES": "hwnas.builder._fit",
    "build_fusion_rules": "hwnas.builder._build",
    "sample_kernels": "hwnas.builder._build",
    "spec_key": "hwnas.builder._sampler",
    "network_sums": "hwnas.builder._calibrate",
    "select_calibration": "hwnas.builder._calibrate",
    "apply_calibration": "hwnas.builder._calibrate",
    "calibrate_build": "hwnas.builder._calibrate",
    "zoo_store_path": "hwnas.builder._zoo",
    "measure_zoo": "hwnas.builder._zoo",
    "zoo": "hwnas.builder._zoo",
    "zoo_measurements": "hwnas.builder._calibrate",
    "profile_onnxruntime": "hwnas.builder._profile",
    "NetworkProfile": "hwnas.builder._profile",
    "NodeTrace": "hwnas.builder._profile",
    "trace_onnxruntime": "hwnas.builder._profile",
    "trace_torchscript": "hwnas.builder._ts_profile",
    "TorchScriptTrace": "hwnas.builder._ts_profile",
    "trace_torchscript_network": "hwnas.builder._ts_context",
    "TSNetworkTrace": "hwnas.builder._ts_context",
    "ts_kernel_labels": "hwnas.builder._ts_context",
    "TSInNetworkModel": "hwnas.builder._ts_context",
    "profile_from_trace": "hwnas.builder._profile",
    "ort_kernel_groups": "hwnas.builder._profile",
    "InNetworkModel": "hwnas.builder._context",
    "derive_fusion_rules": "hwnas.builder._context",
    "trace_labels": "hwnas.builder._context",
    "rule_labels": "hwnas.builder._context",
    "conversion_kernel": "hwnas.builder._context",
    "layout_conversions": "hwnas.builder._layout",
    "block_size": "hwnas.builder._layout",
    "Conversion": "hwnas.builder._layout",
    "ORT_NCHWC": "hwnas.builder._layout",
    "fit_transfer": "hwnas.builder._transfer",
    "variant_specs": "hwnas.builder._variants",
    "measure_variants": "hwnas.builder._variants",
    "add_variants": "hwnas.builder._variants",
    "layout_variants": "hwnas.builder._variants",
    "build": "hwnas.builder._build",
    "measure_cold": "hwnas.builder._cold",
    "measure_cold_in_context": "hwnas.builder._cold",
    "measure_cold_conversion": "hwnas.builder._cold",
    "ColdMeasurement": "hwnas.builder._cold",
    # store
    "register_commands": "hwnas.builder._cli",
    "open_store": "hwnas.builder._store",
    "read_records": "hwnas.builder._store",
    "item_key": "hwnas.builder._store",
    "shard": "hwnas.builder._store",
    "merge": "hwnas.builder._store",
    "MeasurementStore": "hwnas.builder._store",
    "StoreError": "hwnas.builder._store",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
