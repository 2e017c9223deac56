"""BatchNorm recalibration: the running statistics of one subnet, measured on training batches.

In a single-path supernet every BatchNorm is shared by all the paths through it, so its running statistics
are an average over whatever paths happened to be sampled, not those of any one architecture. Before a
candidate is evaluated its statistics are therefore recomputed (SPOS, Guo et al. 2020, Sec. 3.3; NNI's
one-shot search does not do it): every BatchNorm is reset, the subnet runs forward on a few training batches
with only its BatchNorm layers in training mode (no gradients; dropout and the like stay in eval mode and
draw no random numbers), and the running statistics become the *cumulative* average of the per-batch
statistics (``momentum=None``): the mean of the batch means and the mean of the batch (unbiased) variances,
every batch weighted equally. Afterwards the momenta are restored and the model is left in eval mode.

:func:`recalibrate_bn` works in place on the module it is given. For a supernet, give it a candidate's own
subnet (:func:`search_spaces.build_subnet` copies the weights into a fresh module), so the supernet's
statistics and those of other candidates are untouched.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable

import torch
from torch import nn

__all__ = ["batchnorm_layers", "recalibrate_bn"]


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers (any dimension, sync BN included) of ``model`` that track running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _inputs(batch: Any) -> Any:
    """The model input of a batch: the first element of a tuple/list ``(x, y, ...)``, else the batch."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def recalibrate_bn(model: nn.Module, batches: Iterable[Any], n_batches: int | None = None,
                   device: torch.device | str | None = None, autocast: bool | None = None) -> nn.Module:
    """Recompute the running statistics of every BatchNorm of ``model`` from ``batches`` (in place).

    Parameters
    ----------
    model : nn.Module
        The network (e.g. a candidate subnet). Left in eval mode.
    batches : iterable
        Training batches: tensors, or tuples/lists whose first element is the input.
    n_batches : int, optional
        Use at most this many batches (all of ``batches`` when ``None``).
    device : torch.device or str, optional
        Move each input there first (the model must already be there); inputs are used as they are when
        ``None``.
    autocast : bool, optional
        Run under bf16 autocast (BatchNorm itself stays float32); default: on CUDA inputs.

    Returns
    -------
    nn.Module
        ``model``, with its BatchNorm running statistics replaced, its momenta unchanged, in eval mode.

    Raises
    ------
    ValueError
        ``n_batches`` is not positive, or ``batches`` yielded nothing.
    """
    if n_batches is not None and not (isinstance(n_batches, int) and n_batches >= 1):
        raise ValueError(f"n_batches must be None or a positive int, got {n_batches!r}")
    layers = batchnorm_layers(model)
    model.eval()
    if not layers:
        return model
    momenta = [m.momentum for m in layers]
    used = 0
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch weighs the same
            m.train()
        with torch.no_grad():
            for batch in batches:
                if n_batches is not None and used >= n_batches:
                    break
                x = _inputs(batch)
                if device is not None:
                    x = x.to(device, non_blocking=True)
                use_amp = x.is_cuda if autocast is None else autocast
                ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
                with ctx:
                    model(x)
                used += 1
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.eval()
    if used == 0:
        raise ValueError("recalibrate_bn got no batches: its statistics were reset and nothing was measured")
    return model
