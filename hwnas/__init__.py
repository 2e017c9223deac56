"""hwnas: hardware-aware neural architecture search for NNI.

Public API (everything else is private machinery and may change):

- :func:`list_latency_predictors` — metadata of the embedded predictors.
- :func:`load_latency_predictor` — a predictor by name or path; ``.predict(model, model_type, input_shape)`` → ms.
- :class:`LatencyTable` — per-choice latencies (ms) of a search space; scores millions of architectures per second.
- :mod:`hwnas.builder` — ``measure_latency`` and the predictor builder.
- :mod:`hwnas.export` — ``export_torchscript`` and friends.

Heavy modules (torch, NNI) are imported lazily, on first use of the name that needs them.
"""

from __future__ import annotations

from hwnas._lazy import lazy_exports
from hwnas.nas import quiet_nni_import

quiet_nni_import()   # before anything imports NNI: its import-time torch-version notices are harmless

__version__ = "0.1.0"

_LAZY = {
    "list_latency_predictors": "hwnas.predictor",
    "load_latency_predictor": "hwnas.predictor",
    "LatencyPredictor": "hwnas.predictor",
    "LatencyTable": "hwnas.tables",
    "capture": "hwnas.graph",
    "OpGraph": "hwnas.graph",
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
