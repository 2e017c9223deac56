"""Cold-weight timing: a kernel's latency with its weights in memory and its input in cache, as inside a network.

Timed back to back, a kernel finds its weights in cache from the run before (the last-level cache is 32 MB on
the EPYC VMs); inside a network whose weights exceed the cache, each kernel reads its weights from memory, while
its input was written a moment ago by the kernel before it. Before each cold run, :func:`measure_cold` streams
through a flush buffer of ``factor`` times the last-level cache (weights, packed weights and activations all
leave the cache), reads the kernel's input again (activations back in cache, the same array every run), and then
times one inference. The effect is TVM's flush of every argument but the input, done from outside the runtime;
oneDNN's benchdnn ``--cold-cache`` reaches the same state by rotating copies of the weights instead, which here
would need one compiled session per copy (hundreds for a small kernel).

Hot and cold blocks alternate in one process, so their ratio is a side-by-side comparison. Only the two CPU
backends are supported: the flush works on host memory.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from hwnas.builder._backends import (OnnxRuntimeCPU, TorchScriptCPU, _gc_paused, check_input_shape, get_backend,
                                     timed_block)
from hwnas.builder._protocol import DEFAULT_PROTOCOL, MeasureProtocol
from hwnas.errors import HwnasError

#: Flush buffer size as a multiple of the last-level cache (benchdnn sizes its pile of weight copies about so).
FLUSH_FACTOR = 3.0


@dataclasses.dataclass(frozen=True)
class ColdMeasurement:
    """Hot and cold latency of one model, measured side by side.

    Attributes
    ----------
    ms : float
        Cold latency (ms): weights and everything else flushed, the input re-read, then one timed run.
    hot_ms : float
        Back-to-back latency (ms) of the same compiled model, in blocks interleaved with the cold ones.
    runs_ms, hot_runs_ms : tuple of tuple of float
        Raw run times (ms) per block.
    flush_bytes : int
        Bytes streamed through before each cold run.
    cache_bytes : int
        The last-level cache size the flush was sized from (bytes).
    weight_bytes : int or None
        Bytes of the model's parameters and buffers (None for a model given as ONNX or TorchScript file).
    input_bytes : int
        Bytes of the input re-read before each cold run.
    """

    ms: float
    hot_ms: float
    runs_ms: tuple[tuple[float, ...], ...]
    hot_runs_ms: tuple[tuple[float, ...], ...]
    flush_bytes: int
    cache_bytes: int
    weight_bytes: int | None
    input_bytes: int
    backend: str
    input_shape: tuple[int, ...]
    protocol: MeasureProtocol

    @property
    def cold_over_hot(self) -> float:
        """``ms / hot_ms``."""
        return self.ms / self.hot_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict with the raw runs."""
        d = dataclasses.asdict(self)
        d["protocol"] = self.protocol.to_dict()
        d["input_shape"] = list(self.input_shape)
        d["runs_ms"] = [list(b) for b in self.runs_ms]
        d["hot_runs_ms"] = [list(b) for b in self.hot_runs_ms]
        return d


def weight_bytes(model: Any) -> int | None:
    """Bytes of a torch module's parameters and buffers (``None`` for anything that is not an ``nn.Module``)."""
    import torch

    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return None
    tensors = list(model.parameters()) + list(model.buffers())
    return int(sum(t.numel() * t.element_size() for t in tensors))


class CacheFlush:
    """A host buffer of ``nbytes``; calling it reads and writes every cache line of it once."""

    def __init__(self, nbytes: int):
        if nbytes < 1:
            raise ValueError(f"flush buffer size must be positive, got {nbytes} bytes")
        self.buf = np.ones(-(-int(nbytes) // 8), dtype=np.float64)

    @property
    def nbytes(self) -> int:
        """Size of the buffer (bytes)."""
        return int(self.buf.nbytes)

    def __call__(self) -> None:
        np.add(self.buf, 1.0, out=self.buf)


def _parts(backend: Any, model: Any, shape: tuple[int, ...], threads: int
           ) -> tuple[Callable[[], Any], Callable[[], float], int]:
    """One compiled model: (run one inference, re-read the input, input bytes)."""
    if isinstance(backend, OnnxRuntimeCPU):
        sess, feed = backend._session(model, shape, threads)
        x = next(iter(feed.values()))
        return (lambda: sess.run(None, feed)), (lambda: float(x.sum())), int(x.nbytes)
    if isinstance(backend, TorchScriptCPU):
        module, x = backend._compile(model, shape, threads)
        return (lambda: module(x)), (lambda: float(x.sum())), int(x.numel() * x.element_size())
    raise HwnasError(f"cold-weight timing works on the CPU backends 'onnxruntime-cpu' and 'torchscript-cpu', "
                     f"not {getattr(backend, 'name', backend)!r}: the flush streams host memory")


def measure_cold(model: Any, backend: Any = "onnxruntime-cpu", input_shape: Sequence[int] = (1, 3, 224, 224),
                 protocol: MeasureProtocol | None = None, *, cache_bytes: int | None = None,
                 factor: float = FLUSH_FACTOR) -> ColdMeasurement:
    """Cold-weight and hot latency (ms) of ``model`` on a CPU backend, side by side (see the module docstring).

    Parameters
    ----------
    model : nn.Module or what the backend accepts
        The model or kernel module.
    backend : str or backend instance
        ``onnxruntime-cpu`` or ``torchscript-cpu``.
    input_shape : sequence of int
        Input shape, batch included.
    protocol : MeasureProtocol, optional
        Warm-up, blocks and runs per block of each kind; defaults to ``DEFAULT_PROTOCOL``. Hot and cold blocks
        alternate.
    cache_bytes : int, optional
        Last-level cache size (bytes); read from the machine by :func:`hwnas.device.last_level_cache_bytes` when
        not given (an error if the machine does not say).
    factor : float
        Flush buffer size in multiples of ``cache_bytes`` (at least 1).

    Raises
    ------
    HwnasError
        A backend other than the two CPU ones.
    CaptureError
        The backend cannot compile the model.
    """
    from hwnas.device import last_level_cache_bytes

    if factor < 1.0:
        raise ValueError(f"factor must be >= 1 so the flush covers the cache, got {factor}")
    protocol = protocol or DEFAULT_PROTOCOL
    shape = check_input_shape(input_shape)
    be = get_backend(backend)
    cache = int(cache_bytes) if cache_bytes is not None else last_level_cache_bytes()
    flush = CacheFlush(int(factor * cache))
    run, touch, in_bytes = _parts(be, model, shape, protocol.threads)
    def flush_and_reread() -> None:
        flush()
        touch()

    hot, cold = [], []
    with be.runtime(protocol.threads):
        for _ in range(protocol.warmup):
            run()
        with _gc_paused():
            for _ in range(protocol.blocks):
                hot.append(timed_block(run, protocol.runs_per_block))
                cold.append(timed_block(run, protocol.runs_per_block, before=flush_and_reread))
    return ColdMeasurement(ms=protocol.aggregate(cold), hot_ms=protocol.aggregate(hot), runs_ms=tuple(cold),
                           hot_runs_ms=tuple(hot), flush_bytes=flush.nbytes, cache_bytes=cache,
                           weight_bytes=weight_bytes(model), input_bytes=in_bytes, backend=be.name,
                           input_shape=shape, protocol=protocol)


def measure_cold_in_context(model: Any, backend: Any = "onnxruntime-cpu",
                            input_shape: Sequence[int] = (1, 3, 224, 224), protocol: MeasureProtocol | None = None,
                            *, cache_bytes: int | None = None, factor: float = FLUSH_FACTOR) -> dict[str, float]:
    """Cold and hot latency (ms) of a kernel module as the builder times kernels in context
    (:func:`hwnas.builder._build.measure_in_context`): for a 4-d input, ``P -> K`` minus ``P`` alone, ``P`` a dense
    1x1 convolution, both measured with :func:`measure_cold`; otherwise the kernel minus a pass-through module.

    Returns
    -------
    dict
        ``cold_ms`` and ``hot_ms`` (the kernel's share), and the raw parts ``cold_total_ms``, ``hot_total_ms``,
        ``cold_base_ms``, ``hot_base_ms`` (with and without the kernel).
    """
    import torch.nn as nn

    from hwnas.builder._kernel_modules import _Passthrough, _prefix

    shape = check_input_shape(input_shape)
    if len(shape) == 4:
        pre = _prefix(shape)
        full, base = nn.Sequential(pre, model).eval(), pre
    else:
        full, base = model, _Passthrough()
    kw = {"cache_bytes": cache_bytes, "factor": factor}
    a = measure_cold(full, backend, shape, protocol, **kw)
    b = measure_cold(base, backend, shape, protocol, **kw)
    return {"cold_ms": a.ms - b.ms, "hot_ms": a.hot_ms - b.hot_ms, "cold_total_ms": a.ms, "hot_total_ms": a.hot_ms,
            "cold_base_ms": b.ms, "hot_base_ms": b.hot_ms}


def measure_cold_conversion(backend: Any, shape: Sequence[int], protocol: MeasureProtocol | None = None, *,
                            cache_bytes: int | None = None, factor: float = FLUSH_FACTOR) -> dict[str, float]:
    """Cold and hot latency (ms) of one layout conversion of a tensor of ``shape``, priced as the builder prices
    conversions (:mod:`hwnas.builder._variants`): half of a ``to_mkldnn`` + ``to_dense`` pair, net of the per-call
    overhead (a module returning a copy of its input). Returns ``cold_ms`` and ``hot_ms``."""
    from hwnas.builder._kernel_modules import _ConversionPair, _Passthrough

    kw = {"cache_bytes": cache_bytes, "factor": factor}
    pair = measure_cold(_ConversionPair(), backend, shape, protocol, **kw)
    base = measure_cold(_Passthrough(), backend, shape, protocol, **kw)
    return {"cold_ms": (pair.ms - base.ms) / 2, "hot_ms": (pair.hot_ms - base.hot_ms) / 2}
