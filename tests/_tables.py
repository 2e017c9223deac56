"""Test helpers shared by several test modules (not a test module itself)."""

import numpy as np

import search_spaces as ss
from hwnas.tables import SCHEMA, SCHEMA_VERSION, LatencyTable

SMALL = {"width_mult": 0.25, "input_size": 32, "num_classes": 10}


def spos_table(seed: int = 0) -> LatencyTable:
    """A table with the SPOS space's labels and choices and distinct, irregular latencies (ms)."""
    rng = np.random.default_rng(seed)
    blocks = [{"label": label, "choices": names, "latency_ms": [float(v) for v in rng.uniform(0.05, 0.4, len(names))],
               "flops": [int(v) for v in rng.integers(1000, 9000, len(names))],
               "params": [int(v) for v in rng.integers(10, 900, len(names))]}
              for label, names in ss.choices(ss.create_space("spos", **SMALL)).items()]
    return LatencyTable({"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "units": {"latency": "ms"},
                         "space": {"name": "spos", "config": SMALL}, "input_shape": [1, 3, 32, 32],
                         "predictor": {"name": "synthetic", "checksum": "0"},
                         "fixed": {"latency_ms": 0.731, "overhead_ms": 0.0, "flops": 7, "params": 3, "slots": []},
                         "blocks": blocks})
