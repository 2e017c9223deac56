"""How a latency is measured, written down as data.

A :class:`MeasureProtocol` says how many warm-up runs, how many blocks of how many back-to-back runs, which
statistic summarises a block, how the block values are combined, and how many threads run the model. Latency is
defined as **back-to-back inference of the same model on the same input** (as a deployment serves requests), with
batch and input shape given by the caller. All times are milliseconds (ms).

The protocol travels with every measurement (its :attr:`MeasureProtocol.id` in the measurement store, its
:meth:`MeasureProtocol.to_dict` in a predictor's metadata), so a number is never read without knowing how it was
taken.

The reference workload, timed with a protocol to tell how fast the machine is now, is in
:mod:`hwnas.builder._reference` (it needs a backend; this module needs none).

Limitations
-----------
- Blocks run one after the other inside one call; spreading blocks over time (passes over a list of items) is the
  caller's job, e.g. measuring every item once per pass with ``blocks=1`` and aggregating records afterwards.
- The default protocol was chosen from measurements on a busy machine (see :data:`DEFAULT_PROTOCOL`); re-check it
  with ``experiments/benchmarks/noise.py`` on a quiet machine before a measurement campaign.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

SCHEMA_VERSION = 1


# ---------------------------------------------------------------------------------------------------- statistics
def _as_array(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("statistic of an empty sample")
    if not np.all(np.isfinite(a)):
        raise ValueError("statistic of a sample with non-finite values")
    return a


def stat_min(values: Sequence[float]) -> float:
    """Minimum of the sample (ms in, ms out): the least disturbed run."""
    return float(_as_array(values).min())


def stat_max(values: Sequence[float]) -> float:
    """Maximum of the sample (ms)."""
    return float(_as_array(values).max())


def stat_median(values: Sequence[float]) -> float:
    """Median of the sample (ms)."""
    return float(np.median(_as_array(values)))


def stat_mean(values: Sequence[float]) -> float:
    """Arithmetic mean of the sample (ms)."""
    return float(_as_array(values).mean())


def stat_trimmed_mean(values: Sequence[float], proportion: float = 0.1) -> float:
    """Mean after cutting ``floor(proportion * n)`` values from each end of the sorted sample (ms).

    Parameters
    ----------
    values : sequence of float
        Run times (ms).
    proportion : float
        Share cut from *each* end, in ``[0, 0.5)``. With fewer than ``1 / proportion`` values nothing is cut.
    """
    if not 0.0 <= proportion < 0.5:
        raise ValueError(f"trim proportion must be in [0, 0.5), got {proportion}")
    a = np.sort(_as_array(values))
    k = int(np.floor(proportion * a.size))
    return float(a[k:a.size - k].mean())


def stat_percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100, linear interpolation) of the sample (ms)."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    return float(np.percentile(_as_array(values), q))


STATISTICS: Mapping[str, Callable[[Sequence[float]], float]] = {
    "min": stat_min,
    "max": stat_max,
    "median": stat_median,
    "mean": stat_mean,
    "trimmed_mean": stat_trimmed_mean,
}
_PERCENTILE = re.compile(r"^p(\d{1,2}(?:\.\d+)?|100)$")


def get_statistic(name: str) -> Callable[[Sequence[float]], float]:
    """The statistic function for a name.

    Parameters
    ----------
    name : str
        One of ``min``, ``max``, ``median``, ``mean``, ``trimmed_mean`` (10% cut each side), or ``pQ`` for the Q-th
        percentile (``p10``, ``p25``, ``p2.5``).

    Returns
    -------
    callable
        ``f(values_ms) -> float`` (ms).
    """
    if name in STATISTICS:
        return STATISTICS[name]
    m = _PERCENTILE.match(name)
    if m:
        q = float(m.group(1))
        return lambda values: stat_percentile(values, q)
    raise ValueError(f"unknown statistic {name!r}; expected one of {sorted(STATISTICS)} or 'pQ' (e.g. 'p10')")


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Summary of a sample of run times (ms): n, min, p10, median, mean, trimmed_mean, max."""
    a = _as_array(values)
    return {"n": int(a.size), "min": stat_min(a), "p10": stat_percentile(a, 10), "median": stat_median(a),
            "mean": stat_mean(a), "trimmed_mean": stat_trimmed_mean(a), "max": stat_max(a)}


# ------------------------------------------------------------------------------------------------------ protocol
@dataclasses.dataclass(frozen=True)
class MeasureProtocol:
    """How one latency is measured; JSON-serialisable.

    Parameters
    ----------
    warmup : int
        Runs discarded before timing (first-run compilation, profiling executor, caches, allocator).
    runs_per_block : int
        Back-to-back timed runs per block.
    blocks : int
        Number of blocks; each gives one value, the ``statistic`` of its runs.
    statistic : str
        Statistic of the runs inside a block (see :func:`get_statistic`): ``min``, ``median``, ``trimmed_mean``,
        ``pQ``...
    block_aggregate : str
        Statistic combining the block values into the reported latency (``median`` resists one odd block).
    threads : int
        Intra-op threads of the runtime while measuring (restored afterwards).

    Notes
    -----
    The reported latency (ms) is ``block_aggregate([statistic(block) for block in blocks])``. Raw run times are
    always kept, so any other statistic can be computed afterwards.
    """

    warmup: int = 10
    runs_per_block: int = 15
    blocks: int = 3
    statistic: str = "min"
    block_aggregate: str = "median"
    threads: int = 1

    def __post_init__(self) -> None:
        if int(self.warmup) < 0:
            raise ValueError(f"MeasureProtocol.warmup must be >= 0, got {self.warmup}")
        for name in ("runs_per_block", "blocks", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"MeasureProtocol.{name} must be >= 1, got {getattr(self, name)}")
        get_statistic(self.statistic)
        get_statistic(self.block_aggregate)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict, with the schema version and the protocol id."""
        d = dataclasses.asdict(self)
        d["schema"] = SCHEMA_VERSION
        d["id"] = self.id
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MeasureProtocol":
        """Inverse of :meth:`to_dict` (unknown keys such as ``schema`` and ``id`` are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def id(self) -> str:
        """Short stable hash of the fields, e.g. ``"p-1a2b3c4d"`` (the store records it with each measurement)."""
        fields = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return "p-" + hashlib.sha256(fields.encode()).hexdigest()[:8]

    @property
    def total_runs(self) -> int:
        """Number of timed runs (warm-up excluded)."""
        return self.runs_per_block * self.blocks

    def aggregate(self, runs_ms: Sequence[Sequence[float]]) -> float:
        """Latency (ms) from raw run times grouped by block."""
        return get_statistic(self.block_aggregate)(self.block_values(runs_ms))

    def block_values(self, runs_ms: Sequence[Sequence[float]]) -> list[float]:
        """One value (ms) per block: ``statistic`` of that block's runs."""
        f = get_statistic(self.statistic)
        return [f(block) for block in runs_ms]


#: Default protocol. Minimum inside blocks because on this machine kind (2 vCPU VM, shared) the minimum of
#: back-to-back runs agreed within ±10% across processes in 93% of pairs against 53% for the median
#: (experiments/benchmarks/noise.py); median of 3 blocks so one lucky or unlucky block does not decide; 10 warm-up
#: runs cover TorchScript's profiling executor (1 profiled run, then graph optimisation) and allocator warm-up;
#: measurements keep the warm-up times, so noise.py can check this. 1 thread: the target deployment.
#: Re-check with experiments/benchmarks/noise.py on a quiet machine before a campaign.
DEFAULT_PROTOCOL = MeasureProtocol()

#: A cheap protocol for tests and smoke runs; never for data that is kept.
QUICK_PROTOCOL = MeasureProtocol(warmup=2, runs_per_block=3, blocks=2)
