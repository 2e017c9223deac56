"""What an export did: :class:`ExportReport` (private module; re-exported by :mod:`hwnas.export`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ExportReport"]


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


@dataclass
class ExportReport:
    """The result of one export; every latency in milliseconds.

    Attributes
    ----------
    path : str
        The TorchScript file written.
    method : {"script", "trace"}
        How the module was compiled; ``"trace"`` only as a fallback (or when asked for).
    fallback_reason : str or None
        Why ``torch.jit.script`` was not used (its error's first line), ``None`` when scripted.
    frozen : bool
        Whether ``torch.jit.freeze`` was applied.
    input_shape : tuple of int
        Input shape with batch, e.g. ``(1, 3, 32, 32)``.
    parity_max_abs_diff : float
        Largest absolute difference between the loaded file's outputs and the eager model's, over
        ``parity_inputs`` random inputs (fp32).
    parity_atol : float
        The tolerance it was checked against (the file is only written when the check passes).
    parity_inputs : int
        Number of random inputs compared.
    output_scale : float
        Largest absolute output of the eager model on those inputs (what the difference is read against).
    params : int
        Number of parameters of the model.
    macs : int or None
        Multiply-accumulates for one input at ``input_shape`` (the papers' "FLOPs"), known when the space and
        the architecture are. ``flops`` is its old name, still readable.
    arch : dict or None
        The architecture, label -> choice.
    space : dict or None
        ``{"name", "class", "config"}`` of the search space.
    predictor, predictor_checksum, backend : str or None
        The latency predictor's name, data checksum and backend.
    predicted_ms : float or None
        The predictor's latency of the model at ``input_shape``.
    measured_ms : float or None
        The written file measured on ``backend`` (``hwnas.builder.measure_latency``).
    ratio : float or None
        ``measured_ms / predicted_ms``.
    onnx_path : str or None
        The ONNX file written, if any.
    onnx_parity_max_abs_diff : float or None
        Largest absolute difference between ONNX Runtime's outputs and the eager model's.
    triton_path : str or None
        The Triton model directory written (``<repo>/<name>``), if any.
    metadata : dict
        The metadata stored in the file (``hwnas.json``).
    """

    path: str
    method: str
    fallback_reason: str | None
    frozen: bool
    input_shape: tuple[int, ...]
    parity_max_abs_diff: float
    parity_atol: float
    parity_inputs: int
    output_scale: float
    params: int
    macs: int | None = None
    arch: dict[str, str] | None = None
    space: dict[str, Any] | None = None
    predictor: str | None = None
    predictor_checksum: str | None = None
    backend: str | None = None
    predicted_ms: float | None = None
    measured_ms: float | None = None
    ratio: float | None = None
    onnx_path: str | None = None
    onnx_parity_max_abs_diff: float | None = None
    triton_path: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def flops(self) -> int | None:
        """The old name of :attr:`macs` (multiply-accumulates), kept for one release."""
        return self.macs

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field (``metadata`` included)."""
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    def table(self) -> str:
        """A short two-column text table: file, method, parameters, FLOPs, predicted and measured ms, parity."""
        rows = [("file", f"{self.path} ({self.method}{', frozen' if self.frozen else ''})")]
        if self.fallback_reason:
            rows.append(("fallback reason", self.fallback_reason))
        if self.arch is not None and self.space is not None:
            rows.append(("space", f"{self.space.get('name') or self.space.get('class')}, "
                                  f"{len(self.arch)} choice blocks"))
        rows.append(("input shape", "x".join(str(d) for d in self.input_shape)))
        rows.append(("parameters", f"{self.params:,}"))
        rows.append(("FLOPs (MACs)", "-" if self.macs is None else f"{self.macs / 1e6:,.2f} M"))
        pred = _fmt_ms(self.predicted_ms)
        rows.append(("predicted ms", pred + (f"  ({self.predictor})" if self.predicted_ms is not None else "")))
        meas = _fmt_ms(self.measured_ms)
        rows.append(("measured ms", meas + (f"  ({self.backend})" if self.measured_ms is not None else "")))
        if self.ratio is not None:
            rows.append(("measured / predicted", f"{self.ratio:.2f}"))
            rows += [("warning", line) for line in latency_check(self.predicted_ms, self.measured_ms,
                                                                  self.backend)[1:]]
        rows.append(("parity", f"max |diff| {self.parity_max_abs_diff:.1e} <= {self.parity_atol:g} "
                               f"({self.parity_inputs} inputs, outputs up to {self.output_scale:.3g})"))
        if self.onnx_path is not None:
            rows.append(("onnx", f"{self.onnx_path}, ONNX Runtime max |diff| {self.onnx_parity_max_abs_diff:.1e}"))
        if self.triton_path is not None:
            rows.append(("triton model", self.triton_path))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


#: A measured latency this far from its prediction (relative) is reported as a warning.
LATENCY_TOLERANCE = 0.10


def latency_check(predicted_ms: float | None, measured_ms: float | None, backend: str | None,
                  budget_ms: float | None = None) -> list[str]:
    """The comparison a search ends with: one line ``[budget B ms; ]winner predicted P ms, measured M ms
    (BACKEND, this machine)``, then a warning line when M is more than :data:`LATENCY_TOLERANCE` off P, and one
    when M is more than that over the budget (both ms)."""
    head = f"budget {budget_ms:.3f} ms; " if budget_ms is not None else ""
    if predicted_ms is None or measured_ms is None:
        return [f"{head}winner predicted {_fmt_ms(predicted_ms)} ms, not measured on this machine"]
    lines = [f"{head}winner predicted {predicted_ms:.3f} ms, measured {measured_ms:.3f} ms ({backend}, this machine)"]
    off = measured_ms / predicted_ms - 1
    if abs(off) > LATENCY_TOLERANCE:
        from hwnas.predictor import adapt_command

        lines.append(f"warning: the measured latency is {off:+.0%} off the prediction (more than "
                     f"±{LATENCY_TOLERANCE:.0%}): the predictor does not describe this machine well; make one that "
                     f"does with: {adapt_command(backend or 'torchscript-cpu')}")
    if budget_ms is not None and measured_ms > (1 + LATENCY_TOLERANCE) * budget_ms:
        lines.append(f"warning: the winner measured {measured_ms / budget_ms - 1:+.0%} over the budget of "
                     f"{budget_ms:.3f} ms on this machine")
    return lines
