"""Compile a build's kernels in worker processes while the main process times them, one at a time.

Used by :func:`hwnas.builder._build.measure_kernels` when ``BuildConfig.compile_workers`` is not 0, for the
TorchScript backends (``torchscript-cpu``, ``torchscript-cuda``). Each kernel is timed as two modules (in context:
the kernel after a 1x1 convolution prefix, and the prefix alone; see :func:`hwnas.builder._build.timed_modules`).
The main process describes each as data (:func:`module_recipe`: its kind and ops) with its state dict of tensors,
and hands them to a pool of worker processes
(``concurrent.futures.ProcessPoolExecutor``, spawn context, one intra-op thread each, CUDA never initialised
there), which run the device-independent part of the backends' compile on the CPU, exactly as the backend would:
``torch.jit.trace(model, x, check_trace=False)`` on the backend's fixed example input, then ``torch.jit.freeze``,
and return the frozen module as ``torch.jit.save`` bytes. The main process loads it with
``torch.jit.load(..., map_location=device)`` and gives it to the backend's ``measure``, which skips trace and
freeze for a frozen ScriptModule and does the rest there: ``torch.jit.optimize_for_inference`` (oneDNN weights and
fused convolutions on the CPU; it must run in the process that times, its result cannot be serialised) and the
timing.

Timing stays serial, in the main process, and never runs while anything compiles on the device it times:

- on the CPU (``torchscript-cpu``) the pool compiles a batch of ``prefetch`` kernels, waits until every worker is
  idle, and only then is the batch timed, kernel after kernel;
- on a GPU (``torchscript-cuda``) the workers compile up to ``prefetch`` kernels ahead while the GPU is timed
  (they use CPU cores only).

At most ``prefetch`` kernels (default: 2 per worker) are built, compiled and waiting at any time, so memory stays
bounded. Workers rebuild modules from that data and load the tensors with ``weights_only=True``: nothing they
receive is unpickled code. A module falls back to the ordinary serial compile in the main process when it is not
one of the kinds a build times, when
its worker failed (the serial compile then raises the same error, recorded as before), when the trace baked a
constant of another device into the graph (a factory op's ``device=cpu``), when the loaded module cannot be
measured, or, for the rest of the build, when the pool broke (a worker was killed).

Measured on the CPU (2026-12-03, AMD EPYC VM, 2 cores, ``torchscript-cpu``, 439 kernels of the torchvision prior
at 32 px, quick protocol; ``experiments/benchmarks/compile_workers.py``): measuring took 19.8 s serially and
24.2 s with 2 workers (x0.82), the same kernels and methods, every timed module from a worker. On the CPU the
workers must idle while the main process times, and trace and freeze are only 44% of a module's serial work at
32 px (for 240 modules: trace 1.52 s, freeze 0.21 s; ``optimize_for_inference`` 0.72 s and the timing 1.46 s stay
in the main process, which added 0.5 s of pickling and ``torch.jit.load`` when whole modules were pickled to the
workers; the workers' start costs seconds). CPU builds therefore keep the default (serial); the workers are meant
for the GPU, where compiling overlaps timing.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import io
import multiprocessing
import os
from typing import Any, Iterable, Iterator, Sequence

__all__ = ["CompilePool", "foreign_device", "resolve_workers", "usable_cores"]

#: Kernels compiled ahead per worker (the default ``prefetch`` is this times the number of workers).
PREFETCH_PER_WORKER = 2


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_workers(workers: int) -> int:
    """``BuildConfig.compile_workers`` as a number of processes: ``0`` serial, ``N > 0`` N workers, ``-1`` the
    usable cores minus one (the main process keeps one to time on), at least 1.

    Raises
    ------
    ValueError
        ``workers`` below -1.
    """
    workers = int(workers)
    if workers < -1:
        raise ValueError(f"compile_workers must be -1 (usable cores minus one), 0 (serial) or a positive number, "
                         f"not {workers}")
    return max(1, usable_cores() - 1) if workers == -1 else workers


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def module_recipe(module: Any) -> dict[str, Any] | None:
    """How a worker rebuilds one of the modules a build times, as plain data: a kernel module (its ops), the
    1x1 prefix, the prefix followed by a kernel, or the pass-through; ``None`` for any other module (the caller
    compiles it serially). The weights travel apart, as a state dict of tensors."""
    import torch.nn as nn

    from hwnas.builder._kernel_modules import KernelModule, _Passthrough

    if isinstance(module, KernelModule):
        return {"kind": "kernel", "nodes": module.node_dicts, "seed": module.seed}
    if isinstance(module, _Passthrough):
        return {"kind": "passthrough"}
    if (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.bias is None
            and module.in_channels == module.out_channels and module.groups == 1):
        return {"kind": "prefix", "channels": int(module.in_channels)}
    if isinstance(module, nn.Sequential):
        parts = [module_recipe(m) for m in module]
        return None if any(p is None for p in parts) else {"kind": "sequential", "parts": parts}
    return None


def build_from_recipe(recipe: dict[str, Any]) -> Any:
    """The module :func:`module_recipe` describes (weights as initialised; load the state dict next)."""
    import torch.nn as nn

    from hwnas.builder._kernel_modules import KernelModule, _Passthrough, _prefix
    from hwnas.graph import OpNode

    kind = recipe["kind"]
    if kind == "kernel":
        return KernelModule([OpNode.from_dict(d) for d in recipe["nodes"]], recipe["seed"]).eval()
    if kind == "passthrough":
        return _Passthrough()
    if kind == "prefix":
        return _prefix((1, recipe["channels"], 1, 1))
    if kind == "sequential":
        return nn.Sequential(*(build_from_recipe(r) for r in recipe["parts"])).eval()
    raise ValueError(f"unknown module recipe kind {kind!r}")


def trace_freeze_to_bytes(recipe: dict[str, Any], state: bytes, input_shape: Sequence[int]) -> bytes:
    """The worker's job: rebuild a module from its recipe and state dict (tensors only, loaded with
    ``weights_only=True``: nothing is unpickled that could run code), trace and freeze it on the CPU as the
    TorchScript backends do (eval mode, no grad, the backends' example input) and return it as
    ``torch.jit.save`` bytes."""
    import torch

    from hwnas.builder._backends import TorchScriptCPU, _eval_mode, _example_input, quiet_deprecations

    model = build_from_recipe(recipe)
    model.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
    x = _example_input(tuple(int(d) for d in input_shape))
    with quiet_deprecations(), torch.no_grad(), _eval_mode(model):
        frozen = torch.jit.freeze(torch.jit.trace(model, x, check_trace=False))
        out = io.BytesIO()
        torch.jit.save(frozen, out)
    TorchScriptCPU.release()   # traces register classes process-wide: drop them, as the builder does between kernels
    return out.getvalue()


def load_frozen(data: bytes, device: str) -> Any | None:
    """A worker's frozen module, loaded onto ``device``; ``None`` when its graph holds a device constant of
    another device type (see :func:`foreign_device`: compile that module serially)."""
    import torch

    from hwnas.builder._backends import quiet_deprecations

    with quiet_deprecations():
        module = torch.jit.load(io.BytesIO(data), map_location=device)
    return None if foreign_device(module, device) else module


def foreign_device(module: Any, device: str) -> bool:
    """Whether a TorchScript module's graph holds a device constant of another type than ``device``'s: a trace on
    the CPU bakes ``device=cpu`` into factory ops (``torch.ones(..., device=x.device)``), which
    ``map_location`` does not move."""
    import torch

    want = torch.device(device).type
    for node in module.graph.findAllNodes("prim::Constant", True):
        out = node.output()
        if out.type().kind() == "DeviceObjType" and torch.device(out.toIValue()).type != want:
            return True
    return False


class CompilePool:
    """Worker processes that trace and freeze modules on the CPU for a main process that times them.

    Parameters
    ----------
    workers : int
        Worker processes (at least 1; see :func:`resolve_workers`).
    device : str
        Where the main process times: ``"cpu"`` or a CUDA device such as ``"cuda:0"``; loaded modules go there.
    prefetch : int, optional
        Kernels built and compiled ahead of the one being timed (default ``2 * workers``).
    overlap : bool, optional
        Compile while timing (default: only when ``device`` is not the CPU).

    Attributes
    ----------
    compiled : int
        Modules compiled by a worker and loaded.
    fallbacks : int
        Modules left to the serial compile (a worker failed, a foreign device constant, the pool broke).
    """

    def __init__(self, workers: int, device: str = "cpu", prefetch: int | None = None,
                 overlap: bool | None = None):
        if workers < 1:
            raise ValueError(f"a compile pool needs at least one worker, not {workers}")
        self.workers = int(workers)
        self.device = str(device)
        self.prefetch = max(1, int(prefetch if prefetch is not None else PREFETCH_PER_WORKER * self.workers))
        self.overlap = (not self.device.startswith("cpu")) if overlap is None else bool(overlap)
        self.compiled = self.fallbacks = 0
        self._pool: cf.ProcessPoolExecutor | None = None

    def __enter__(self) -> "CompilePool":
        self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _submit(self, module: Any, shape: Sequence[int]) -> cf.Future | None:
        import torch

        if self._pool is None:
            return None
        recipe = module_recipe(module)
        if recipe is None:   # not a module a build times (or a ScriptModule): compile it here
            return None
        buf = io.BytesIO()
        torch.save(module.state_dict(), buf)
        try:
            return self._pool.submit(trace_freeze_to_bytes, recipe, buf.getvalue(), tuple(shape))
        except (cf.BrokenExecutor, RuntimeError):   # a worker died: the rest compiles serially
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            return None

    def _collect(self, future: cf.Future | None) -> Any | None:
        loaded = None
        if future is not None:
            try:
                loaded = load_frozen(future.result(), self.device)
            except Exception:  # noqa: BLE001 - the worker failed: the serial compile reports the real error
                loaded = None
        if loaded is None:
            self.fallbacks += 1
        else:
            self.compiled += 1
        return loaded

    def stream(self, jobs: Iterable[tuple[Any, Sequence[Any], Sequence[int]]]
               ) -> Iterator[tuple[Any, list[tuple[Any, Any | None]]]]:
        """Compile jobs ahead and yield them in order, each when the caller may time it.

        Parameters
        ----------
        jobs : iterable of (tag, modules, input_shape)
            Read lazily, at most ``prefetch`` ahead: ``tag`` is passed through, ``modules`` are the ``nn.Module``
            to compile, all of input shape ``input_shape`` (batch first).

        Yields
        ------
        tag, list of (module, compiled)
            Each module with its frozen, loaded ScriptModule (give it to the backend's ``measure``), or ``None``
            (compile the module itself). Without overlap, no worker is busy while the caller holds a job.
        """
        it = iter(jobs)
        pending: collections.deque = collections.deque()

        def fill() -> None:
            while len(pending) < self.prefetch:
                job = next(it, None)
                if job is None:
                    return
                tag, modules, shape = job
                pending.append((tag, [(m, self._submit(m, shape)) for m in modules]))

        fill()
        while pending:
            if not self.overlap:   # the whole batch compiled, every worker idle, before any of it is timed
                cf.wait([f for _, mods in pending for _, f in mods if f is not None])
                batch = [(tag, [(m, self._collect(f)) for m, f in mods]) for tag, mods in pending]
                pending.clear()
                yield from batch
                fill()
                continue
            tag, mods = pending.popleft()
            ready = [(m, self._collect(f)) for m, f in mods]
            fill()   # the next kernels compile while this one is timed
            yield tag, ready
