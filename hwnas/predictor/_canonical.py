"""Kernel types of a predictor file, renamed to the kernels the current op graph has.

The op graph folds an inference batch norm into the convolution before it (:func:`hwnas.kernels.canonical_ops`),
so ``conv-bn-relu`` kernels are now ``conv-relu``. Predictors measured before the fold name their types with the
``bn``; this module maps every type-keyed entry of such a predictor (regressors, calibration, transfer,
unsupported types) to the folded names. Where two old types fold into one (``conv-bn`` and ``conv``, both the
same executed convolution once the backend has folded the batch norm), the type fitted on more kernels wins,
consistently across every entry.
"""

from __future__ import annotations

from typing import Any, Mapping, TypeVar

from hwnas.kernels import canonical_type

V = TypeVar("V")


def winners(types: Mapping[str, Any], sample_counts: Mapping[str, int]) -> dict[str, str]:
    """Folded type -> the old type whose regressor prices it (most kernels fitted; the folded name on a tie)."""
    groups: dict[str, list[str]] = {}
    for t in types:
        groups.setdefault(canonical_type(t), []).append(t)
    return {c: max(ts, key=lambda t: (sample_counts.get(t, 0), t == c, t)) for c, ts in groups.items()}


def rekey(entries: Mapping[str, V], chosen: Mapping[str, str]) -> dict[str, V]:
    """``entries`` keyed by folded type: each folded type takes the entry of its chosen old type (or the entry
    already under the folded name, when ``entries`` were re-keyed before); old types outside ``chosen`` (types of
    the calibration the regressors lack) fold on their own name."""
    out: dict[str, V] = {}
    for c, old in chosen.items():
        if old in entries:
            out[c] = entries[old]
        elif c in entries:
            out[c] = entries[c]
    for old, v in entries.items():
        c = canonical_type(old)
        if c not in chosen and c not in out:
            out[c] = v
    return out


def sample_counts(metadata: Mapping[str, Any]) -> dict[str, int]:
    """Kernels each type's regressor was fitted on, from the predictor's accuracy report (0 where unknown)."""
    report = (metadata.get("accuracy") or {}).get("kernels_holdout") or {}
    counts = {}
    for t, rep in report.items():
        try:
            counts[str(t)] = int(rep.get("n") or 0)
        except (AttributeError, TypeError, ValueError):
            counts[str(t)] = 0
    return counts
