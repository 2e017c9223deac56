"""One-shot NAS on the hwnas search spaces: ProxylessNAS with an exact latency loss, SPOS with budgeted sampling.

Public API (everything else is private machinery and may change):

- ProxylessNAS: :class:`ProxylessModule` (a Lightning module: weights + architecture parameters trained toward a
  target latency), :class:`ProxylessSearchConfig`, :class:`ProxylessBatches` (weight batches plus held-out
  architecture batches), :class:`ProxylessSupernet` (the space, ``alpha``, single-path sampling, binary-gate
  gradient).
- Training harness: :class:`TrainerConfig`, :func:`fit`, :func:`make_trainer`, :func:`make_loader`,
  :class:`ResidentLoader`, :func:`latest_checkpoint`, :func:`resolve_precision` (the precision a config trains in).
- Subnet evaluation: :func:`recalibrate_bn`, :func:`batchnorm_layers`.
- SPOS: :class:`SposSupernetModule`, :class:`SupernetConfig`, :class:`SinglePathSupernet`,
  :class:`SubnetEvaluator` (supernet training within a latency budget, candidates scored with recalibrated
  BatchNorm); :func:`evolve`, :class:`EvolutionConfig`, :class:`EvolutionResult`, :class:`Candidate`,
  :func:`pareto_front` (evolutionary search within the budget).

Names are imported lazily on first use (``import hwnas.oneshot`` imports neither torch, Lightning nor NNI); a name
that is not public here raises ``AttributeError`` naming it.
"""

from __future__ import annotations

from hwnas._lazy import lazy_exports

_LAZY = {
    "ProxylessModule": "hwnas.oneshot._proxyless",
    "ProxylessSearchConfig": "hwnas.oneshot._proxyless",
    "ProxylessBatches": "hwnas.oneshot._proxyless",
    "ProxylessSupernet": "hwnas.oneshot._proxyless_supernet",
    "TrainerConfig": "hwnas.oneshot._trainer",
    "fit": "hwnas.oneshot._trainer",
    "make_trainer": "hwnas.oneshot._trainer",
    "make_loader": "hwnas.oneshot._trainer",
    "resolve_precision": "hwnas.oneshot._trainer",
    "ResidentLoader": "hwnas.oneshot._trainer",
    "latest_checkpoint": "hwnas.oneshot._trainer",
    "recalibrate_bn": "hwnas.oneshot._bn",
    "batchnorm_layers": "hwnas.oneshot._bn",
    "SposSupernetModule": "hwnas.oneshot._spos",
    "SupernetConfig": "hwnas.oneshot._spos",
    "SinglePathSupernet": "hwnas.oneshot._spos",
    "SubnetEvaluator": "hwnas.oneshot._spos",
    "evolve": "hwnas.oneshot._evolution",
    "EvolutionConfig": "hwnas.oneshot._evolution",
    "EvolutionResult": "hwnas.oneshot._evolution",
    "Candidate": "hwnas.oneshot._evolution",
    "pareto_front": "hwnas.oneshot._evolution",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
