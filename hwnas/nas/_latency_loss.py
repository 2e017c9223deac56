"""Differentiable hardware-latency loss for gradient-based NAS (ProxylessNAS), exact in the architecture parameters.

The expected latency of a supernet whose choice layer ``l`` picks candidate ``j`` with probability
``p_lj = softmax(α_l)_j`` is, with the per-choice rows of a :class:`~hwnas.tables.LatencyTable`,

    ``E[lat](α) = fixed + Σ_l Σ_j p_lj · row_l[j]``      (ms)

(``skip`` choices included, with their own row entry). It is a torch expression of ``α``: its gradient is exact,
unlike NNI 3.0's ``ExpectationProfilerPenalty`` (its probabilities come from ``softmax(...).tolist()``, so no
gradient reaches ``α``). Two ways of combining it with the cross-entropy ``CE`` of the architecture step, as in
the ProxylessNAS reference code (mit-han-lab/proxylessnas, ``search/nas_manager.py``,
``GradientArchSearchConfig.add_regularization_loss``):

- ``"mul#log"``: ``α_reg · CE · (log E[lat] / log ref) ** β``
- ``"add#linear"``: ``CE + λ · (E[lat] − ref) / ref``

where ``ref`` is the target latency. Defaults and where they come from (``search/imagenet_arch_search.py`` of the
reference code): ``mode="mul#log"`` (``--grad_reg_loss_type``), ``alpha=0.2`` (``--grad_reg_loss_alpha``),
``beta=0.3`` (``--grad_reg_loss_beta``), ``lam=0.1`` (``--grad_reg_loss_lambda``); the reference's ``ref`` for its
mobile setting was 80 ms.

The log form depends on the unit of time: the reference takes logarithms of milliseconds around 80 ms, where
``log E / log ref`` varies gently (``d log(loss) / d log E = β / ln 80 ≈ 0.068`` at the target). Tables of small
networks are a few ms, where ``ln ref`` is near 0 (singular at 1 ms) and below 1 ms the base turns negative (NaN).
hwnas therefore measures the log form in units of ``log_unit_ms``, by default ``target_ms / 80``: the penalty then
has the reference's shape around any target (``E = ref`` gives factor 1, the same relative sensitivity as at
80 ms). ``log_unit_ms=1.0`` reproduces the reference code literally (logarithms of ms). The linear form has no
unit (a relative latency).

Only the latency term is differentiated exactly here. In ProxylessNAS the cross-entropy reaches ``α`` through the
binary-gate estimator of the supernet (:mod:`hwnas.oneshot`), which backpropagates this loss's value to the block
outputs (so under ``mul#log`` the cross-entropy's gradient carries the latency factor, as in the reference).
NNI-free: this module needs only torch and a table.

Precision: the expected latency, the loss and their gradients are computed in fp32 at least, whatever the
caller's autocast (``bf16-mixed`` training) or parameter dtype: autocast is disabled inside, bf16/fp16 inputs are
upcast (a bf16 sum of 21 rows of ms would be off by up to 0.4%), fp64 stays fp64. Tested with central
differences under CPU bf16 autocast (tests/unit/test_latency_loss.py).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from hwnas.errors import ArchitectureError

__all__ = ["LATENCY_LOSS_MODES", "LatencyLoss", "LatencyLossConfig"]


def _full(t: torch.Tensor) -> torch.Tensor:
    """``t`` in fp32 when it is a half-precision float (differentiable), unchanged otherwise."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _no_autocast(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast disabled for ``t``'s device type (the caller's autocast must not downcast the loss)."""
    if t.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(t.device.type):
        return torch.autocast(t.device.type, enabled=False)
    return contextlib.nullcontext()

LATENCY_LOSS_MODES = ("mul#log", "add#linear")
REFERENCE_TARGET_MS = 80.0   # the reference code's mobile target: the default log unit is target_ms / 80


@dataclass(frozen=True)
class LatencyLossConfig:
    """Settings of :class:`LatencyLoss`.

    Parameters
    ----------
    target_ms : float
        Target (reference) latency ``ref``, ms, on the table's predictor and input shape.
    mode : {"mul#log", "add#linear"}
        ``"mul#log"``: ``alpha · CE · (log E / log ref) ** beta``; ``"add#linear"``: ``CE + lam · (E − ref) / ref``.
        Default ``"mul#log"``, the reference code's default.
    alpha : float
        Scale of the ``mul#log`` loss (reference default 0.2).
    beta : float
        Exponent of the ``mul#log`` latency factor (reference default 0.3).
    lam : float
        Weight ``λ`` of the ``add#linear`` latency term (reference default 0.1).
    log_unit_ms : float, optional
        Unit (ms) of the logarithms of ``mul#log``: ``log(E / u) / log(ref / u)``. ``None`` (default):
        ``target_ms / 80``, the reference's shape at any target (module docstring); ``1.0``: the reference literally.
    """

    target_ms: float
    mode: str = "mul#log"
    alpha: float = 0.2
    beta: float = 0.3
    lam: float = 0.1
    log_unit_ms: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in LATENCY_LOSS_MODES:
            raise ValueError(f"latency loss mode must be one of {list(LATENCY_LOSS_MODES)}, got {self.mode!r}")
        for name in ("target_ms", "alpha", "beta", "lam"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
                raise ValueError(f"latency loss {name} must be a finite number, got {value!r}")
        if self.target_ms <= 0:
            raise ValueError(f"target_ms must be positive (ms), got {self.target_ms}")
        if self.alpha <= 0 or self.beta < 0 or self.lam < 0:
            raise ValueError(f"need alpha > 0, beta >= 0 and lam >= 0, got alpha={self.alpha}, beta={self.beta}, "
                             f"lam={self.lam}")
        if self.log_unit_ms is not None and not (math.isfinite(self.log_unit_ms) and self.log_unit_ms > 0):
            raise ValueError(f"log_unit_ms must be a positive number of ms or None, got {self.log_unit_ms!r}")
        if self.mode == "mul#log" and self.log_unit >= self.target_ms:
            raise ValueError(f"mul#log needs log_unit_ms < target_ms (log(ref / unit) must be positive); got "
                             f"log_unit_ms={self.log_unit_ms} ms, target_ms={self.target_ms} ms")

    @property
    def log_unit(self) -> float:
        """The unit of the ``mul#log`` logarithms, ms (``target_ms / 80`` unless ``log_unit_ms`` is set)."""
        return self.target_ms / REFERENCE_TARGET_MS if self.log_unit_ms is None else float(self.log_unit_ms)


class LatencyLoss(nn.Module):
    """ProxylessNAS latency loss over the architecture parameters of one search space (see the module docstring).

    Parameters
    ----------
    table : LatencyTable
        Per-choice latencies of the space on the target predictor (its labels and choice order define the layout
        of the architecture parameters).
    config : LatencyLossConfig
        Target and form of the loss.

    Raises
    ------
    ValueError
        ``mul#log`` with a log unit at or above the table's fastest latency (the logarithm of an expected latency
        could be ≤ 0); the message gives the table's range.

    Notes
    -----
    The latency rows are a buffer (``float64``; cast to the dtype of ``α`` on use), so the module follows
    ``.to(device)`` and is saved with a state dict. Architecture parameters are either a mapping label →
    1-D tensor of that label's choice count, or one ``(L, max_choices)`` matrix whose entries beyond a label's
    choice count are ignored (masked out of the softmax; their gradient is 0).
    """

    def __init__(self, table: Any, config: LatencyLossConfig):
        super().__init__()
        if not isinstance(config, LatencyLossConfig):
            raise TypeError(f"config must be a LatencyLossConfig, got {type(config).__name__}")
        self.config = config
        self.labels = table.labels
        self.choices = table.choices
        self.fixed_ms = float(table.fixed_latency)
        self.min_ms, self.max_ms = float(table.min_latency()), float(table.max_latency())
        counts = torch.as_tensor(table.n_choices, dtype=torch.long)
        width = int(counts.max()) if len(counts) else 1
        self.register_buffer("rows", table.as_tensor(torch.float64), persistent=False)
        self.register_buffer("mask", torch.arange(width)[None, :] < counts[:, None], persistent=False)
        if config.mode == "mul#log" and config.log_unit >= self.min_ms:
            raise ValueError(
                f"mul#log with log unit {config.log_unit:.4g} ms: the table's fastest architecture takes "
                f"{self.min_ms:.4g} ms, so log(E / unit) could be <= 0. Use a smaller log_unit_ms, a target below "
                f"{REFERENCE_TARGET_MS * self.min_ms:.4g} ms, or add#linear (table range {self.min_ms:.4g}.."
                f"{self.max_ms:.4g} ms)")

    def extra_repr(self) -> str:
        c = self.config
        if c.mode == "mul#log":
            terms = f"alpha={c.alpha}, beta={c.beta}, log_unit={c.log_unit:.4g} ms"
        else:
            terms = f"lam={c.lam}"
        return f"mode={c.mode!r}, target={c.target_ms} ms, {terms}, labels={len(self.labels)}"

    # -- probabilities ----------------------------------------------------------------------------------------------
    def probs(self, alphas: Mapping[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Choice probabilities ``softmax(α_l)`` as one zero-padded ``(L, max_choices)`` matrix (differentiable)."""
        if isinstance(alphas, Mapping):
            alphas = self._stack(alphas)
        if not isinstance(alphas, torch.Tensor) or tuple(alphas.shape) != tuple(self.mask.shape):
            got = tuple(alphas.shape) if isinstance(alphas, torch.Tensor) else type(alphas).__name__
            raise ValueError(f"architecture parameters must be a mapping label -> tensor or a matrix of shape "
                             f"{tuple(self.mask.shape)} (labels x choices), got {got}")
        with _no_autocast(alphas):
            logits = _full(alphas).masked_fill(~self.mask, float("-inf"))
            return torch.softmax(logits, dim=-1)

    def _stack(self, alphas: Mapping[str, torch.Tensor]) -> torch.Tensor:
        unknown = [k for k in alphas if k not in self.choices]
        missing = [k for k in self.labels if k not in alphas]
        if unknown or missing:
            raise ArchitectureError(f"architecture parameters: unknown label(s) {unknown}, missing label(s) "
                                    f"{missing}; the table's labels are {self.labels}")
        width = self.mask.shape[1]
        rows = []
        for label in self.labels:
            a = alphas[label]
            k = len(self.choices[label])
            if not isinstance(a, torch.Tensor) or tuple(a.shape) != (k,):
                got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
                raise ValueError(f"architecture parameters of {label!r} must be a tensor of shape ({k},) "
                                 f"({self.choices[label]}), got {got}")
            rows.append(nn.functional.pad(a, (0, width - k)))
        return torch.stack(rows)

    # -- loss -------------------------------------------------------------------------------------------------------
    def expected_latency(self, alphas: Mapping[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Expected latency ``fixed + Σ_l softmax(α_l) · row_l``, ms: a scalar tensor, differentiable in ``α``.

        Equal to :meth:`LatencyTable.expected_latency` of the softmax probabilities. In fp32 at least (fp64 for
        fp64 parameters), also under autocast (module docstring).
        """
        p = self.probs(alphas)
        with _no_autocast(p):
            return (p * self.rows.to(p.dtype)).sum() + self.fixed_ms

    def combine(self, ce: torch.Tensor, expected_ms: torch.Tensor) -> torch.Tensor:
        """The configured loss from the cross-entropy and an expected latency (ms) already computed (in fp32 at
        least: a bf16 cross-entropy of a ``bf16-mixed`` step is upcast)."""
        c = self.config
        ce, expected_ms = _full(ce), _full(expected_ms)
        with _no_autocast(expected_ms):
            if c.mode == "add#linear":
                return ce + c.lam * (expected_ms - c.target_ms) / c.target_ms
            unit = c.log_unit
            factor = (torch.log(expected_ms / unit) / math.log(c.target_ms / unit)) ** c.beta
            return c.alpha * ce * factor

    def forward(self, ce: torch.Tensor, alphas: Mapping[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """``combine(ce, expected_latency(alphas))``: the architecture step's loss (a scalar tensor)."""
        return self.combine(ce, self.expected_latency(alphas))
