"""oneDNN primitive profiles of TorchScript networks: where the time of a frozen, optimised network goes.

TorchScript's frozen oneDNN graph (``torch.jit.freeze`` + ``optimize_for_inference``) runs convolutions,
pointwise ops, pools and adds as oneDNN primitives inside prepacked ops, which PyTorch's profiler does not see
(it charges them to ``forward``). oneDNN's verbose mode (``torch.backends.mkldnn.verbose``) prints one line per
executed primitive with its kind, memory formats, problem and time (ms). :func:`trace_torchscript` runs a compiled
network under it and keeps every primitive of every profiled run, with the wall time of each profiled run and the
median of unprofiled runs (the printing costs time: compare the two before trusting a profile).

What a profile shows that a kernel timed alone does not: :meth:`TorchScriptTrace.conv_costs` gives each
convolution with the reorder of its weights that precedes it (on the AMD EPYC Zen 4 with torch 2.14.1 the frozen
graph keeps weights in a format the convolution does not use, so every run reorders every weight: 9.5 of 26 ms
of resnet18 at 128 px) and the pointwise primitives after it. Activation reorders (``to_mkldnn``/``to_dense``,
the layout conversions of :mod:`hwnas.kernels._layout`) are :meth:`TorchScriptTrace.conversions`. Ops that run
outside oneDNN (``aten::cat``, ``silu``, reshapes) and the interpreter between ops are not primitives: their
time is the run's time minus the primitives' (``other_ms``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import re
import tempfile
import time
from typing import Any, Iterator, Sequence

import numpy as np

from hwnas.errors import CaptureError

_PREFIX = "onednn_verbose,"
_RUN_MARK = "### hwnas run "


@dataclasses.dataclass(frozen=True)
class Primitive:
    """One executed oneDNN primitive.

    Attributes
    ----------
    kind : str
        Primitive kind: ``convolution``, ``reorder``, ``eltwise``, ``sum``, ``binary``, ``pooling``, ...
    impl : str
        Implementation (``brg_conv_fwd:avx512_core``, ``jit:uni``).
    formats : str
        Memory descriptors as oneDNN prints them.
    problem : str
        Problem descriptor: ``mb1_ic64oc64_ih32oh32kh3sh1...`` for a convolution, ``1x64x32x32`` for a reorder.
    ms : float
        Execution time, ms.
    alg : str
        Algorithm of an eltwise, binary or pooling primitive without its ``alg:`` prefix (``eltwise_hardswish``,
        ``binary_mul``, ``pooling_max``); ``""`` when the line names none.
    """

    kind: str
    impl: str
    formats: str
    problem: str
    ms: float
    alg: str = ""

    def dims(self) -> dict[str, int]:
        """A convolution's or pooling's problem as numbers: ``{"mb": 1, "ic": 64, "oc": 64, "ih": 32, ...}``."""
        return {k: int(v) for k, v in re.findall(r"([a-z]+)(\d+)", self.problem.replace("_", " "))}

    def shape(self) -> tuple[int, ...]:
        """The tensor shape of a reorder, eltwise or sum (``1x64x32x32`` -> ``(1, 64, 32, 32)``); ``()`` if none."""
        head = self.problem.split(":")[0]
        if not re.fullmatch(r"\d+(x\d+)*", head):
            return ()
        return tuple(int(v) for v in head.split("x"))


def parse_line(line: str) -> Primitive | None:
    """The primitive of one oneDNN verbose ``exec`` line (``None`` for any other line).

    oneDNN v3 prints ``onednn_verbose,v1,primitive,exec,cpu,<kind>,<impl>,<prop>,<formats>,<attrs>,<aux>,
    <problem>,<ms>`` (older versions lack the ``v1,primitive`` fields; both are read)."""
    if not line.startswith(_PREFIX):
        return None
    f = line.strip().split(",")
    try:
        i = f.index("exec")
    except ValueError:
        return None
    rest = f[i + 1:]
    if len(rest) < 8 or rest[0] != "cpu":
        return None
    try:
        ms = float(rest[-1])
    except ValueError:
        return None
    aux = rest[-3] if len(rest) >= 9 else ""
    alg = aux.split(" ")[0][4:] if aux.startswith("alg:") else ""
    return Primitive(kind=rest[1], impl=rest[2], formats=rest[4], problem=rest[-2], ms=ms, alg=alg)


@dataclasses.dataclass(frozen=True)
class ConvCost:
    """A convolution inside a network: its own time, the reorder of its weights before it, the pointwise
    primitives after it (until the next convolution or pooling), ms."""

    dims: dict[str, int]
    conv_ms: float
    weight_reorder_ms: float
    post_ms: float

    @property
    def ms(self) -> float:
        """Everything charged to the convolution, ms."""
        return self.conv_ms + self.weight_reorder_ms + self.post_ms


def _weight_shape(d: dict[str, int]) -> set[tuple[int, ...]]:
    """Shapes oneDNN prints for a convolution's weights: ``oc x ic x kh x kw``, or per group for grouped ones."""
    oc, ic, g = d.get("oc", 0), d.get("ic", 0), d.get("g", 1)
    kh, kw = d.get("kh", 1), d.get("kw", 1)
    return {(oc, ic // max(g, 1), kh, kw), (g, oc // max(g, 1), ic // max(g, 1), kh, kw)}


@dataclasses.dataclass
class TorchScriptTrace:
    """oneDNN primitives of a TorchScript network over several profiled runs.

    Attributes
    ----------
    runs : list of list of Primitive
        The primitives of each profiled run, in execution order.
    run_ms : list of float
        Wall time of each profiled run, ms (longer than an unprofiled run by the printing).
    unprofiled_ms : float
        Median wall time of unprofiled runs of the same compiled module, ms.
    input_shape : tuple of int
    """

    runs: list[list[Primitive]]
    run_ms: list[float]
    unprofiled_ms: float
    input_shape: tuple[int, ...]

    def _median_run(self) -> list[Primitive]:
        """The run whose primitive sum is the median one (the primitive list of a typical run)."""
        sums = [sum(p.ms for p in r) for r in self.runs]
        return self.runs[int(np.argsort(sums)[len(sums) // 2])]

    @property
    def primitives_ms(self) -> float:
        """Median over runs of the sum of every primitive's time, ms."""
        return float(np.median([sum(p.ms for p in r) for r in self.runs]))

    @property
    def other_ms(self) -> float:
        """Unprofiled run time minus the primitives' time, ms: ops outside oneDNN and the interpreter."""
        return self.unprofiled_ms - self.primitives_ms

    def by_kind(self) -> dict[str, float]:
        """Median-run time per primitive kind, ms; weight reorders are ``reorder:weights``."""
        out: dict[str, float] = {}
        run = self._median_run()
        weights = self._weight_reorders(run)
        for p in run:
            k = "reorder:weights" if id(p) in weights else p.kind
            out[k] = out.get(k, 0.0) + p.ms
        return out

    @classmethod
    def _weight_reorders(cls, run: Sequence[Primitive]) -> set[int]:
        """``id`` of every reorder of ``run`` that reorders a convolution's weights."""
        return {id(p) for _, w, _ in cls._groups(run) for p in w}

    @staticmethod
    def _groups(run: Sequence[Primitive]) -> list[tuple[Primitive, list[Primitive], list[Primitive]]]:
        """(convolution, its weight reorders, pointwise primitives after it) for each convolution of ``run``."""
        out: list[tuple[Primitive, list[Primitive], list[Primitive]]] = []
        pending: list[Primitive] = []
        open_group = False   # pointwise primitives belong to the last convolution until a pooling closes it
        for p in run:
            if p.kind == "convolution":
                wshapes = _weight_shape(p.dims())
                out.append((p, [r for r in pending if r.shape() in wshapes], []))
                pending, open_group = [], True
            elif p.kind == "reorder":
                pending.append(p)
            elif p.kind == "pooling":
                pending, open_group = [], False
            elif p.kind in ("eltwise", "sum", "binary") and open_group:
                out[-1][2].append(p)
        return out

    def conv_costs(self) -> list[ConvCost]:
        """Each convolution of the median run with its weight reorder and following pointwise primitives."""
        return [ConvCost(c.dims(), c.ms, sum(r.ms for r in w), sum(q.ms for q in post))
                for c, w, post in self._groups(self._median_run())]

    def conversions(self) -> list[tuple[tuple[int, ...], float]]:
        """Activation reorders of the median run (shape, ms): reorders whose tensor has the input's batch and are
        no convolution's weights."""
        run = self._median_run()
        weights = self._weight_reorders(run)
        batch = self.input_shape[0] if self.input_shape else 1
        return [(p.shape(), p.ms) for p in run
                if p.kind == "reorder" and id(p) not in weights and p.shape()[:1] == (batch,)]


@contextlib.contextmanager
def _stdout_to(path: str) -> Iterator[None]:
    """Send the process's file descriptor 1 (where oneDNN prints) to ``path``; C and Python buffers flushed."""
    import sys

    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.dup2(fd, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(fd)
        os.close(saved)


def read_runs(text: str) -> list[list[Primitive]]:
    """Primitives per run of a verbose log in which each run ends with a run mark line."""
    runs: list[list[Primitive]] = []
    cur: list[Primitive] = []
    for line in text.splitlines():
        if line.startswith(_RUN_MARK):
            runs.append(cur)
            cur = []
            continue
        p = parse_line(line)
        if p is not None:
            cur.append(p)
    return runs


def timed_runs(fn: Any, warmup: int, runs: int) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times (at least once): the wall time of each, ms."""
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(max(runs, 1)):
        t0 = time.perf_counter()
        fn()
        t.append((time.perf_counter() - t0) * 1e3)
    return t


def verbose_runs(fn: Any, runs: int) -> tuple[list[list[Primitive]], list[float]]:
    """Call ``fn`` ``runs`` times under oneDNN verbose: the primitives of each run and its wall time (ms).

    Raises
    ------
    CaptureError
        oneDNN printed no primitive (a torch build without oneDNN verbose support).
    """
    import torch

    wall: list[float] = []
    libc = ctypes.CDLL(None)   # flushes oneDNN's C stdio buffer before each run mark
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "onednn.log")
        with _stdout_to(log), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            for _ in range(runs):
                t0 = time.perf_counter()
                fn()
                wall.append((time.perf_counter() - t0) * 1e3)
                libc.fflush(None)
                os.write(1, f"{_RUN_MARK}{len(wall)}\n".encode())
        with open(log, encoding="utf-8", errors="replace") as f:
            text = f.read()
    found = read_runs(text)
    if len(found) != runs or not any(found):
        raise CaptureError(f"oneDNN printed no primitive for {runs} profiled runs (got {len(found)} run marks); "
                           "this torch build may lack oneDNN verbose support")
    return found, wall


def trace_torchscript(model: Any, input_shape: Sequence[int], *, runs: int = 5, warmup: int = 10,
                      unprofiled: int = 20, threads: int = 1) -> TorchScriptTrace:
    """Compile ``model`` as the ``torchscript-cpu`` backend does and record the oneDNN primitives of ``runs`` runs.

    Parameters
    ----------
    model : nn.Module or torch.jit.ScriptModule
    input_shape : sequence of int
    runs : int
        Profiled runs (each primitive's time is that of one run; the median run is used by the accessors).
    warmup, unprofiled : int
        Runs before any timing, and unprofiled runs timed for :attr:`TorchScriptTrace.unprofiled_ms`.
    threads : int
        Intra-op threads.

    Raises
    ------
    CaptureError
        The model cannot be compiled, or oneDNN printed no primitive (a torch build without oneDNN verbose).
    """
    from hwnas.builder._backends import get_backend

    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    backend = get_backend("torchscript-cpu")
    fn = backend.prepare(model, input_shape, threads=threads)
    with backend.runtime(threads):
        t = timed_runs(fn, warmup, unprofiled)
        found, wall = verbose_runs(fn, runs)
    return TorchScriptTrace(runs=found, run_ms=wall, unprofiled_ms=float(np.median(t)),
                            input_shape=tuple(int(v) for v in input_shape))
