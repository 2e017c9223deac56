"""SGD whose step costs what the trained path costs: a single-path supernet's optimizer.

A single-path step gives gradients to one candidate per choice block; torch's ``SGD.step`` and ``zero_grad``
still visit every parameter of the supernet in Python (a 20-block, 4-choice space holds about four times the
parameters of its path). :class:`PathSGD` keeps one parameter group per unit of the supernet (stem, head, every
candidate; each split into weights with and without weight decay) and hands torch's SGD only the groups that
hold gradients (merged into one group per set of hyper-parameters, so torch's per-group work is done once), so
the per-parameter work of a step follows the path.

Limitations: a group is "active" when its first parameter has a gradient, so every parameter of a group must
be used together (true of a candidate block's parameters, which all take part in its forward pass; checked by
the tests for the hwnas spaces). ``zero_grad`` always sets gradients to ``None`` (``set_to_none=False`` is
refused: zero-filled gradients would make every group active).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

__all__ = ["PathSGD", "unit_param_groups"]


def unit_param_groups(units: Iterable[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """One parameter group per unit and kind: ``weight_decay`` on weights of rank > 1, none on the rest.

    Parameters
    ----------
    units : iterable of nn.Module
        The supernet's units (stem, candidates, fixed blocks, head), each parameter in exactly one of them.
    weight_decay : float
        Weight decay of conv and linear weights (L2 coefficient, per step).

    Returns
    -------
    list of dict
        Non-empty groups only, in the order of ``units`` (decayed group first).

    Raises
    ------
    ValueError
        A parameter belongs to two units.
    """
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for unit in units:
        decay, no_decay = [], []
        for p in unit.parameters():
            if not p.requires_grad:
                continue
            if id(p) in seen:
                raise ValueError("a parameter belongs to two units of the supernet")
            seen.add(id(p))
            (decay if p.dim() > 1 else no_decay).append(p)
        groups += [{"params": ps, "weight_decay": wd} for ps, wd in ((decay, weight_decay), (no_decay, 0.0)) if ps]
    return groups


class PathSGD(torch.optim.SGD):
    """``torch.optim.SGD`` over the parameter groups that hold gradients only.

    Same constructor as ``torch.optim.SGD``; same update, on the same tensors, with the same arithmetic (a
    group without a gradient keeps its parameters and momentum buffers, as SGD does with a parameter whose
    ``grad`` is ``None``). State dicts are SGD's (all groups, every step).
    """

    def _active(self) -> list[dict[str, Any]]:
        return [g for g in self.param_groups if g["params"] and g["params"][0].grad is not None]

    @staticmethod
    def _merged(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Groups of equal hyper-parameters as one (torch's per-group call costs about as much as a small group's
        update); a group with an unhashable hyper-parameter (e.g. a tensor learning rate) stays on its own."""
        merged: dict[Any, dict[str, Any]] = {}
        for i, g in enumerate(groups):
            key = tuple(sorted(((k, v) for k, v in g.items() if k != "params"), key=lambda kv: kv[0]))
            try:
                hash(key)
            except TypeError:
                key = ("unhashable", i)
            if key in merged:
                merged[key]["params"] = merged[key]["params"] + g["params"]
            else:
                merged[key] = dict(g)
        return list(merged.values())

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # noqa: D102 - SGD's
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = self.param_groups
        self.param_groups = self._merged(self._active())
        try:
            super().step()
        finally:
            self.param_groups = groups
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Set the gradients of the active groups to ``None`` (the others have none)."""
        if not set_to_none:
            raise ValueError("PathSGD.zero_grad sets gradients to None only (zeroed gradients would make every "
                             "group active)")
        for group in self._active():
            for p in group["params"]:
                p.grad = None
