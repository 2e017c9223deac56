"""Measurement backends: compile a model once, run it back to back, time every run (ms).

A backend is a small object with a ``name``, ``available()``, ``prepare(model, input_shape, threads=...)`` (compile
once, return a zero-argument callable running one inference), ``runtime(threads)`` (a context manager to call that
callable in), ``measure(model, input_shape, protocol)`` (returns a :class:`Measurement`) and, optionally,
``compiled_ops(model, input_shape)`` (op kinds of the compiled graph, the structural evidence of fusion).
Backends are found by name in :data:`BACKENDS`, a read-only mapping from name to ``"module:Class"``; they are
imported on first use, so ``onnxruntime`` is only needed for ``onnxruntime-cpu``. To add one, write a class with
the same methods and add one line to :data:`BACKENDS`; to try one without editing, pass an instance wherever a
backend name is accepted. A backend may also say why it cannot run here (``unavailable_reason()``, ``None`` when
it can); :func:`backend_status` lists every backend with its availability and that reason.

Backends
--------
``torchscript-cpu``
    eval mode, ``torch.jit.trace``, ``torch.jit.freeze`` (folds BatchNorm into conv), ``torch.jit.
    optimize_for_inference`` (oneDNN conv, fused activations), intra-op threads set for the measurement and
    restored afterwards, under ``torch.inference_mode()``; batch and shape as given, fp32.
``onnxruntime-cpu``
    legacy ``torch.onnx.export(..., dynamo=False)`` (opset 17) to bytes in memory, ONNX Runtime
    ``CPUExecutionProvider``, ``intra_op_num_threads = threads``, ``inter_op_num_threads = 1``, sequential
    execution, ``ORT_ENABLE_ALL``; fp32.
``torchscript-cuda``
    as ``torchscript-cpu`` on a CUDA GPU, timed with CUDA events (:mod:`hwnas.builder._backend_cuda`); listed but
    unavailable on machines without CUDA, where measuring raises :class:`~hwnas.errors.BackendUnavailableError`.

Limitations
-----------
- Models must be fp32 and on the CPU (``torchscript-cuda``: fp32, copied to the GPU); anything else is refused
  with a :class:`~hwnas.errors.CaptureError`.
- The input is one fixed random tensor (seed 0); data-dependent models are timed on that tensor only.
- The timer is ``time.perf_counter_ns`` around each call; Python's call overhead (~1 µs) is included, which
  matters only for kernels faster than ~20 µs.
- Python's garbage collector is paused during timed blocks (and restored).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import importlib.util
import io
import os
import tempfile
import time
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from hwnas._warnings import quiet_deprecations  # noqa: F401  (hwnas.builder's public name; the exporters share it)
from hwnas.builder._protocol import DEFAULT_PROTOCOL, MeasureProtocol, summarize
from hwnas.errors import CaptureError

#: Registered backends: name -> "module:Class". Read-only; extend by adding a line here.
BACKENDS: Mapping[str, str] = MappingProxyType({
    "torchscript-cpu": "hwnas.builder._backends:TorchScriptCPU",
    "onnxruntime-cpu": "hwnas.builder._backends:OnnxRuntimeCPU",
    "torchscript-cuda": "hwnas.builder._backend_cuda:TorchScriptCUDA",
})

ONNX_OPSET = 17
_INPUT_SEED = 0
# Graph nodes that are not kernels: constants and layout conversions at graph boundaries.
_TS_PLUMBING = frozenset({"prim::Constant", "prim::ListConstruct", "prim::TupleConstruct", "prim::GetAttr",
                          "prim::ConstantMKLDNNTensor", "aten::to_mkldnn", "aten::to_dense"})
_ORT_PLUMBING = frozenset({"ReorderInput", "ReorderOutput"})


class Backend(Protocol):
    """What a measurement backend provides (structural type; no base class to inherit)."""

    name: str

    def available(self) -> bool: ...

    def prepare(self, model: Any, input_shape: Sequence[int], *, threads: int = 1) -> Callable[[], Any]: ...

    def runtime(self, threads: int = 1) -> contextlib.AbstractContextManager: ...

    def measure(self, model: Any, input_shape: Sequence[int],
                protocol: MeasureProtocol | None = None) -> "Measurement": ...


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One latency measurement.

    Attributes
    ----------
    ms : float
        The latency (ms): ``protocol.block_aggregate`` of the per-block ``protocol.statistic``.
    runs_ms : tuple of tuple of float
        Raw run times (ms), one tuple per block, in run order.
    backend : str
        Backend name.
    input_shape : tuple of int
        Input shape, batch included.
    protocol : MeasureProtocol
        The protocol used.
    warmup_ms : tuple of float
        Times of the warm-up runs (ms), to check that the warm-up was long enough.
    """

    ms: float
    runs_ms: tuple[tuple[float, ...], ...]
    backend: str
    input_shape: tuple[int, ...]
    protocol: MeasureProtocol
    warmup_ms: tuple[float, ...] = ()

    @property
    def block_ms(self) -> list[float]:
        """One value (ms) per block."""
        return self.protocol.block_values(self.runs_ms)

    def stats(self) -> dict[str, float]:
        """Summary of all runs pooled (ms): n, min, p10, median, mean, trimmed_mean, max."""
        return summarize([t for block in self.runs_ms for t in block])

    def to_dict(self, raw: bool = True) -> dict[str, Any]:
        """JSON-safe dict; ``raw=False`` leaves out the run times (keeps ``stats`` and ``block_ms``)."""
        d: dict[str, Any] = {"ms": self.ms, "backend": self.backend, "input_shape": list(self.input_shape),
                             "protocol": self.protocol.to_dict(), "block_ms": self.block_ms, "stats": self.stats()}
        if raw:
            d["runs_ms"] = [list(b) for b in self.runs_ms]
            d["warmup_ms"] = list(self.warmup_ms)
        return d


# ------------------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Set torch's intra-op thread count to ``n`` inside the block and restore the previous count on exit."""
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """Validate an input shape: a sequence of >= 2 positive ints (batch included)."""
    from hwnas.graph import check_input_shape as _check

    return _check(input_shape)


def _example_input(shape: tuple[int, ...]) -> Any:
    import torch

    return torch.randn(shape, generator=torch.Generator().manual_seed(_INPUT_SEED))


def _check_cpu_fp32(model: Any, backend: str) -> None:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type != "cpu":
            raise CaptureError(f"backend {backend!r} measures CPU models; the model has tensors on "
                               f"{t.device} (pass model.cpu())")
        if t.is_floating_point() and str(t.dtype) != "torch.float32":
            raise CaptureError(f"backend {backend!r} measures fp32; the model has {t.dtype} tensors "
                               f"(pass model.float())")


def _load_torch(source: Any, backend: str) -> Any:
    """nn.Module or ScriptModule as given; a path is loaded with ``torch.jit.load``."""
    import torch

    if isinstance(source, torch.nn.Module):
        return source
    if isinstance(source, (str, os.PathLike)):
        try:
            with quiet_deprecations():
                return torch.jit.load(os.fspath(source), map_location="cpu")
        except Exception as e:  # noqa: BLE001 - any load failure is reported as a capture failure
            raise CaptureError(f"backend {backend!r} could not load TorchScript file {os.fspath(source)!r}: "
                               f"{type(e).__name__}: {e}") from e
    raise CaptureError(f"backend {backend!r} expects an nn.Module, a ScriptModule or a file path, "
                       f"got {type(source).__name__}")


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[Any]:
    """Put ``model`` in eval mode inside the block and restore its training flags afterwards."""
    modes = [(m, m.training) for m in model.modules() if hasattr(m, "training")]  # frozen modules have none
    if hasattr(model, "training"):
        model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def time_callable(fn: Callable[[], Any], protocol: MeasureProtocol
                  ) -> tuple[tuple[float, ...], tuple[tuple[float, ...], ...]]:
    """Run ``fn`` ``protocol.warmup`` times, then ``protocol.blocks`` blocks of ``protocol.runs_per_block``
    back-to-back timed calls.

    Returns
    -------
    warmup_ms : tuple of float
        Times of the warm-up runs (ms).
    runs_ms : tuple of tuple of float
        Run times (ms) per block.
    """
    warm = timed_block(fn, protocol.warmup)
    with _gc_paused():
        blocks = [timed_block(fn, protocol.runs_per_block) for _ in range(protocol.blocks)]
    return warm, tuple(blocks)


def timed_block(fn: Callable[[], Any], runs: int, before: Callable[[], Any] | None = None) -> tuple[float, ...]:
    """Times (ms) of ``runs`` calls of ``fn``, each preceded by an untimed call of ``before`` when given."""
    clock = time.perf_counter_ns
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        t0 = clock()
        fn()
        times.append((clock() - t0) / 1e6)
    return tuple(times)


def _measure(backend: Any, model: Any, input_shape: Sequence[int],
             protocol: MeasureProtocol | None) -> Measurement:
    protocol = protocol or DEFAULT_PROTOCOL
    shape = check_input_shape(input_shape)
    fn = backend.prepare(model, shape, threads=protocol.threads)
    with backend.runtime(protocol.threads):
        warm, runs = time_callable(fn, protocol)
    return Measurement(ms=protocol.aggregate(runs), runs_ms=runs, backend=backend.name, input_shape=shape,
                       protocol=protocol, warmup_ms=warm)


# ------------------------------------------------------------------------------------------------------ backends
class TorchScriptCPU:
    """TorchScript on the CPU: trace, freeze, ``optimize_for_inference``; see the module docstring."""

    name = "torchscript-cpu"

    def available(self) -> bool:
        """Always true: torch is a hard dependency."""
        return True

    def unavailable_reason(self) -> str | None:
        """Always ``None``: the backend runs wherever torch does."""
        return None

    @contextlib.contextmanager
    def runtime(self, threads: int = 1) -> Iterator[None]:
        """Context to call prepared callables in: ``threads`` intra-op threads (restored) and inference mode."""
        import torch

        with torch_threads(threads), torch.inference_mode():
            yield

    def prepare(self, model: Any, input_shape: Sequence[int], *, threads: int = 1) -> Callable[[], Any]:
        """Compile once; return a zero-argument callable running one inference (call it inside :meth:`runtime`).

        Raises
        ------
        CaptureError
            The model cannot be traced, frozen or optimised (the cause is chained and named).
        """
        module, x = self._compile(model, input_shape, threads)
        return lambda: module(x)

    def compiled_ops(self, model: Any, input_shape: Sequence[int]) -> list[str]:
        """Node kinds of the optimised graph, without constants and oneDNN layout conversions (graph evidence of
        fusion: ``conv -> bn`` compiles to one ``prim::mkldnn_convolution``)."""
        module, _ = self._compile(model, input_shape, 1)
        return [n.kind() for n in module.graph.nodes() if n.kind() not in _TS_PLUMBING]

    def _compile(self, model: Any, input_shape: Sequence[int], threads: int) -> tuple[Any, Any]:
        import torch

        shape = check_input_shape(input_shape)
        model = _load_torch(model, self.name)
        _check_cpu_fp32(model, self.name)
        x = _example_input(shape)
        step = "trace"
        try:
            with quiet_deprecations(), torch.no_grad(), torch_threads(threads), _eval_mode(model):
                if isinstance(model, torch.jit.ScriptModule):
                    scripted = model
                else:
                    scripted = torch.jit.trace(model, x, check_trace=False)
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
        """Compile once and time back-to-back runs with ``protocol`` (default :data:`DEFAULT_PROTOCOL`)."""
        return _measure(self, model, input_shape, protocol)

    @staticmethod
    def release() -> None:
        """Drop TorchScript's global registry of traced classes.

        Every trace registers a new class in TorchScript's process-wide compilation unit and nothing removes it:
        a build that compiled 5,601 kernels held 20 GB and then thrashed. The builder calls this between
        measurements (measured: 0.65 MB kept per small conv compile without it, 0.06 MB with it). Modules already
        compiled keep working (they hold their own types); only name lookups of old traced classes are lost.
        """
        import torch
        import torch.jit._recursive

        torch._C._jit_clear_class_registry()
        torch.jit._state._clear_class_state()
        # The store of scripted nn.Module types refers to the classes just dropped: reusing one of its entries (a
        # module type scripted before, e.g. an exported subnet's block) would crash torch.jit.script. Start anew.
        torch.jit._recursive.concrete_type_store = torch.jit._recursive.ConcreteTypeStore()


def release_memory(backend: Any) -> None:
    """Let a backend drop per-compile global state between measurements (a no-op for backends without any)."""
    fn = getattr(backend, "release", None)
    if fn is not None:
        fn()


def ort_session_options(threads: int = 1) -> Any:
    """The ONNX Runtime session options every measurement uses: ``threads`` intra-op threads, one inter-op
    thread, sequential execution, all graph optimisations, quiet logging."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


class OnnxRuntimeCPU:
    """ONNX Runtime, CPU execution provider; see the module docstring.

    Accepts an ``nn.Module``/``ScriptModule`` (exported with the legacy exporter), an ``onnx.ModelProto``,
    serialized ONNX ``bytes``, or a path to an ``.onnx`` file.
    """

    name = "onnxruntime-cpu"

    def available(self) -> bool:
        """Whether ``onnxruntime`` can be imported."""
        return importlib.util.find_spec("onnxruntime") is not None

    def unavailable_reason(self) -> str | None:
        """Why the backend cannot run here (``None`` when it can)."""
        return None if self.available() else "the onnxruntime package is not installed (pip install onnxruntime)"

    def runtime(self, threads: int = 1) -> contextlib.AbstractContextManager:
        """Nothing to scope: ONNX Runtime threads are set per session in :meth:`prepare`."""
        return contextlib.nullcontext()

    def _onnx_bytes(self, model: Any, x: Any) -> bytes:
        import torch

        if isinstance(model, bytes):
            return model
        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            if not path.endswith(".onnx"):
                model = _load_torch(path, self.name)
            else:
                try:
                    with open(path, "rb") as f:
                        return f.read()
                except OSError as e:
                    raise CaptureError(f"backend {self.name!r} could not read ONNX file {path!r}: {e}") from e
        if hasattr(model, "SerializeToString"):
            return model.SerializeToString()
        if not isinstance(model, torch.nn.Module):
            raise CaptureError(f"backend {self.name!r} expects an nn.Module, ONNX bytes/ModelProto or a "
                               f"file path, got {type(model).__name__}")
        _check_cpu_fp32(model, self.name)
        buf = io.BytesIO()
        try:
            with quiet_deprecations(), torch.no_grad(), _eval_mode(model):
                torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=ONNX_OPSET,
                                  input_names=["input"], output_names=["output"], do_constant_folding=True)
        except Exception as e:  # noqa: BLE001 - wrapped with the backend named
            raise CaptureError(f"backend {self.name!r} could not export the model to ONNX: "
                               f"{type(e).__name__}: {_first_line(e)}") from e
        return buf.getvalue()

    def prepare(self, model: Any, input_shape: Sequence[int], *, threads: int = 1) -> Callable[[], Any]:
        """Export (if needed) and open one session; return a callable running one inference.

        Raises
        ------
        CaptureError
            The model cannot be exported or the session cannot be created.
        """
        sess, feed = self._session(model, input_shape, threads)
        run = sess.run
        return lambda: run(None, feed)

    def compiled_ops(self, model: Any, input_shape: Sequence[int]) -> list[str]:
        """Op types of the graph ONNX Runtime optimised, without NCHWc layout reorders (graph evidence of
        fusion: ``conv -> relu`` becomes one ``Conv`` with an activation attribute)."""
        import onnx

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "optimized.onnx")
            self._session(model, input_shape, 1, optimized_path=path)
            graph = onnx.load(path).graph
        return [n.op_type for n in graph.node if n.op_type not in _ORT_PLUMBING]

    def _session(self, model: Any, input_shape: Sequence[int], threads: int,
                 optimized_path: str | None = None) -> tuple[Any, dict]:
        if not self.available():
            raise CaptureError(f"backend {self.name!r} needs the onnxruntime package (pip install onnxruntime)")
        import onnxruntime as ort

        shape = check_input_shape(input_shape)
        x = _example_input(shape)
        data = self._onnx_bytes(model, x)
        so = ort_session_options(threads)
        if optimized_path:
            so.optimized_model_filepath = optimized_path
        try:
            sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x.numpy()}
            sess.run(None, feed)
        except Exception as e:  # noqa: BLE001 - wrapped with the backend named
            raise CaptureError(f"backend {self.name!r}: ONNX Runtime could not run the model: "
                               f"{type(e).__name__}: {_first_line(e)}") from e
        return sess, feed

    def measure(self, model: Any, input_shape: Sequence[int],
                protocol: MeasureProtocol | None = None) -> Measurement:
        """Compile once and time back-to-back runs with ``protocol`` (default :data:`DEFAULT_PROTOCOL`)."""
        return _measure(self, model, input_shape, protocol)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "(no message)"


# ----------------------------------------------------------------------------------------------------- public API
def list_backends(available_only: bool = False) -> list[str]:
    """Names of the registered backends, sorted; ``available_only`` keeps those whose runtime is installed."""
    names = sorted(BACKENDS)
    return [n for n in names if get_backend(n).available()] if available_only else names


def backend_status() -> list[dict[str, Any]]:
    """Every registered backend with whether it runs on this machine and, when not, why.

    Returns
    -------
    list of dict
        ``{"name": str, "available": bool, "reason": str or None}``, sorted by name.
    """
    out = []
    for name in list_backends():
        be = get_backend(name)
        available = bool(be.available())
        reason = None
        if not available:
            why = getattr(be, "unavailable_reason", None)
            reason = (why() if why is not None else None) or "the backend reports that it cannot run here"
        out.append({"name": name, "available": available, "reason": reason})
    return out


def get_backend(backend: Any) -> Backend:
    """A backend instance from a name in :data:`BACKENDS` (an instance is returned as is)."""
    if not isinstance(backend, str):
        if all(hasattr(backend, a) for a in ("name", "prepare", "measure", "runtime")):
            return backend
        raise TypeError(f"backend must be a name or a backend object, got {type(backend).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; registered: {sorted(BACKENDS)}")
    module, cls = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module), cls)()


def measure(model: Any, backend: Any = "torchscript-cpu", input_shape: Sequence[int] = (1, 3, 224, 224),
            protocol: MeasureProtocol | None = None) -> Measurement:
    """Measure a model's latency and keep the raw run times.

    Parameters
    ----------
    model : nn.Module, ScriptModule, str or path
        The model (``onnxruntime-cpu`` also takes ONNX bytes, a ModelProto or an ``.onnx`` path).
    backend : str or Backend
        Backend name from :func:`list_backends`, or an instance.
    input_shape : sequence of int
        Input shape including batch, e.g. ``(1, 3, 224, 224)``.
    protocol : MeasureProtocol, optional
        Defaults to :data:`~hwnas.builder.DEFAULT_PROTOCOL`.

    Returns
    -------
    Measurement
        ``.ms`` is the latency in milliseconds; ``.runs_ms`` the raw run times.

    Raises
    ------
    CaptureError
        The backend cannot compile the model (trace, freeze, export or session failure), named in the message.
    """
    return get_backend(backend).measure(model, input_shape, protocol)


def measure_latency(model: Any, backend: Any = "torchscript-cpu", input_shape: Sequence[int] = (1, 3, 224, 224),
                    protocol: MeasureProtocol | None = None) -> float:
    """Latency of ``model`` on ``backend`` in milliseconds (see :func:`measure` for the parameters).

    Examples
    --------
    >>> import torchvision
    >>> ms = measure_latency(torchvision.models.mobilenet_v2(), "torchscript-cpu", (1, 3, 224, 224))
    """
    return measure(model, backend, input_shape, protocol).ms
