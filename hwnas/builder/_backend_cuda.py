"""The ``torchscript-cuda`` measurement backend: TorchScript on one CUDA GPU, timed with CUDA events.

Compilation as ``torchscript-cpu`` (eval mode, ``torch.jit.trace``, ``torch.jit.freeze``,
``torch.jit.optimize_for_inference``), on ``cuda:0`` (or the device named by ``device``), fp32 by default, under
``torch.inference_mode()``. The model may be given on the CPU (the builder's kernel modules are): it is copied to
the GPU; the caller's module is left where it was.

Timing: every run is bracketed by a pair of CUDA events recorded on the current stream; after each block of
``protocol.runs_per_block`` back-to-back runs the device is synchronised once and the events' elapsed times are
read (ms, the GPU's own clock, resolution about 0.5 µs). Runs within a block are therefore queued without host
synchronisation, as in a real inference loop; the host's launch overhead counts only where the GPU waits for it
(small kernels: it usually does). Warm-up runs are timed the same way (and include cuDNN's algorithm search).

Availability: :meth:`TorchScriptCUDA.available` is ``torch.cuda.is_available()``;
:meth:`TorchScriptCUDA.unavailable_reason` says why not (a CPU-only torch build, or no device visible).
Measuring on a machine without CUDA raises :class:`~hwnas.errors.BackendUnavailableError` with that reason.

Limitations
-----------
- One GPU per process; the GPU is assumed idle otherwise (concurrent processes timing on one GPU disturb each
  other: parallel builds should compile in parallel and time serially).
- ``threads`` (the protocol's intra-op threads) only bounds host-side work; it does not change GPU time.
- cuDNN's autotuner is enabled (``torch.backends.cudnn.benchmark``) inside the timed context and restored after.
- TF32 is left as torch's default (off for matrix products, on for cuDNN convolutions).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

from hwnas.builder._backends import (Measurement, TorchScriptCPU, _TS_PLUMBING, _eval_mode, _example_input,
                                     _first_line, _load_torch, check_input_shape, quiet_deprecations, torch_threads)
from hwnas.builder._protocol import DEFAULT_PROTOCOL, MeasureProtocol
from hwnas.errors import BackendUnavailableError, CaptureError

__all__ = ["TorchScriptCUDA", "cuda_unavailable_reason", "time_cuda_callable"]


def cuda_unavailable_reason() -> str | None:
    """Why CUDA cannot be used by this process, or ``None`` when it can."""
    import torch

    if torch.version.cuda is None:
        return (f"CUDA is not available: this torch ({torch.__version__}) is a build without CUDA support "
                "(install a CUDA build of torch on a machine with an NVIDIA GPU)")
    if not torch.cuda.is_available():
        return (f"CUDA is not available: torch {torch.__version__} (built for CUDA {torch.version.cuda}) finds no "
                "CUDA device (torch.cuda.is_available() is False: no GPU, no driver, or CUDA_VISIBLE_DEVICES hides "
                "it)")
    return None


def time_cuda_callable(fn: Callable[[], Any], protocol: MeasureProtocol
                       ) -> tuple[tuple[float, ...], tuple[tuple[float, ...], ...]]:
    """Time ``fn`` with CUDA events: ``protocol.warmup`` runs, then ``protocol.blocks`` blocks of
    ``protocol.runs_per_block`` back-to-back runs, one device synchronisation per block.

    Returns
    -------
    warmup_ms : tuple of float
        Times of the warm-up runs (ms, GPU clock).
    runs_ms : tuple of tuple of float
        Run times (ms, GPU clock) per block.
    """
    import torch

    def block(n: int) -> tuple[float, ...]:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        torch.cuda.synchronize()
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return tuple(float(start.elapsed_time(end)) for start, end in events)

    warm = block(protocol.warmup) if protocol.warmup else ()
    return warm, tuple(block(protocol.runs_per_block) for _ in range(protocol.blocks))


class TorchScriptCUDA:
    """TorchScript on a CUDA GPU, timed with CUDA events; see the module docstring.

    Parameters
    ----------
    device : str
        The CUDA device (default ``"cuda:0"``).
    """

    name = "torchscript-cuda"

    def __init__(self, device: str = "cuda:0"):
        self.device = device

    def available(self) -> bool:
        """Whether torch can use a CUDA device."""
        return cuda_unavailable_reason() is None

    def unavailable_reason(self) -> str | None:
        """Why the backend cannot run here (``None`` when it can)."""
        return cuda_unavailable_reason()

    def _require(self) -> None:
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"backend {self.name!r} cannot run on this machine: {reason}")

    @contextlib.contextmanager
    def runtime(self, threads: int = 1) -> Iterator[None]:
        """Context to call prepared callables in: inference mode, cuDNN autotuner on (restored), host threads."""
        import torch

        self._require()
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            with torch_threads(threads), torch.inference_mode(), torch.cuda.device(self.device):
                yield
        finally:
            torch.backends.cudnn.benchmark = before

    def prepare(self, model: Any, input_shape: Sequence[int], *, threads: int = 1) -> Callable[[], Any]:
        """Compile once on the GPU; return a zero-argument callable running one inference (asynchronous: call
        it inside :meth:`runtime` and synchronise before reading results).

        Raises
        ------
        BackendUnavailableError
            No CUDA device (the reason is in the message).
        CaptureError
            The model cannot be traced, frozen or optimised.
        """
        module, x = self._compile(model, input_shape, threads)
        return lambda: module(x)

    def compiled_ops(self, model: Any, input_shape: Sequence[int]) -> list[str]:
        """Node kinds of the optimised graph (constants left out)."""
        module, _ = self._compile(model, input_shape, 1)
        return [n.kind() for n in module.graph.nodes() if n.kind() not in _TS_PLUMBING]

    def _compile(self, model: Any, input_shape: Sequence[int], threads: int) -> tuple[Any, Any]:
        import copy

        import torch

        self._require()
        shape = check_input_shape(input_shape)
        model = _load_torch(model, self.name)
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point() and t.dtype != torch.float32:
                raise CaptureError(f"backend {self.name!r} measures fp32; the model has {t.dtype} tensors "
                                   f"(pass model.float())")
        device = torch.device(self.device)
        on_device = all(t.device == device for t in list(model.parameters()) + list(model.buffers()))
        if not on_device:
            model = copy.deepcopy(model).to(device)   # the caller's module stays where it is
        x = _example_input(shape).to(device)
        step = "trace"
        try:
            with quiet_deprecations(), torch.no_grad(), torch_threads(threads), _eval_mode(model):
                scripted = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.trace(
                    model, x, check_trace=False)
                step = "freeze"
                frozen = torch.jit.freeze(scripted) if hasattr(scripted, "training") else scripted
                step = "optimize_for_inference"
                module = torch.jit.optimize_for_inference(frozen)
        except Exception as e:  # noqa: BLE001 - wrapped with the backend and the failing step named
            raise CaptureError(f"backend {self.name!r} could not capture the model ({step} failed): "
                               f"{type(e).__name__}: {_first_line(e)}") from e
        return module, x

    def measure(self, model: Any, input_shape: Sequence[int],
                protocol: MeasureProtocol | None = None) -> Measurement:
        """Compile once and time back-to-back runs with CUDA events (default :data:`DEFAULT_PROTOCOL`).

        Raises
        ------
        BackendUnavailableError
            No CUDA device (the reason is in the message).
        """
        self._require()
        protocol = protocol or DEFAULT_PROTOCOL
        shape = check_input_shape(input_shape)
        fn = self.prepare(model, shape, threads=protocol.threads)
        with self.runtime(protocol.threads):
            warm, runs = time_cuda_callable(fn, protocol)
        return Measurement(ms=protocol.aggregate(runs), runs_ms=runs, backend=self.name, input_shape=shape,
                           protocol=protocol, warmup_ms=warm)

    @staticmethod
    def release() -> None:
        """Drop TorchScript's registry of traced classes (as ``torchscript-cpu``) and the CUDA cache."""
        import torch

        TorchScriptCPU.release()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
