"""In-network labels of TorchScript kernels: each kernel's time as it ran inside its network.

A frozen, optimised TorchScript network (the ``torchscript-cpu`` backend) runs its ops in two ways, and each is
seen by one instrument only:

- the ops PyTorch's profiler sees: every ATen op the interpreter calls (``aten::relu_``, ``aten::cat``,
  ``aten::to_dense``, ``aten::matmul``, ...; on oneDNN tensors or plain ones), with its wall time;
- the ops it does not see: ``prim::mkldnn_convolution`` and the ``prim::MKLDNN*`` activations, whose time the
  profiler charges to ``forward``. oneDNN's verbose mode prints their primitives (a convolution with the reorder
  of its weights before it, an ``eltwise_hardswish``) with their execution times.

:func:`trace_torchscript_network` records both, from the same compiled module, with the median of unprofiled runs.
:func:`ts_kernel_labels` gives each hwnas kernel (detected under a predictor's fusion and layout rules) the time of
the pieces it ran as: a convolution's primitive and weight reorders, an ATen op's profiled time net of the
profiler's own cost per event, an invisible activation's primitive. Pieces are matched by op and input shape,
in execution order. What no kernel carries (the interpreter between ops, allocations, unmatched events) is the
network's ``residual_ms``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import numpy as np

from hwnas.builder._ts_profile import Primitive, TorchScriptTrace

#: ATen op (without ``aten::``) -> canonical op of the hwnas graph. Ops not listed are not kernels of their own
#: (allocations, ``expand``), or ops a kernel type does not name; their time is the network's residual.
ATEN_OPS: dict[str, str] = {
    "relu": "relu", "relu_": "relu", "hardtanh": "relu6", "hardtanh_": "relu6", "clamp": "relu6", "clamp_": "relu6",
    "hardswish": "hswish",
    "hardswish_": "hswish", "hardsigmoid": "hsigmoid", "hardsigmoid_": "hsigmoid", "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid", "silu": "silu", "silu_": "silu", "gelu": "gelu", "gelu_": "gelu", "tanh": "tanh",
    "tanh_": "tanh", "max_pool2d": "maxpool", "mkldnn_max_pool2d": "maxpool", "avg_pool2d": "avgpool",
    "mkldnn_avg_pool2d": "avgpool", "adaptive_avg_pool2d": "global_avgpool", "mean": "global_avgpool",
    "cat": "concat", "add": "add", "add_": "add", "mul": "mul", "mul_": "mul", "matmul": "fc", "linear": "fc",
    "addmm": "fc", "mm": "fc", "flatten": "reshape", "view": "reshape", "reshape": "reshape",
    "to_mkldnn": "to_backend", "to_dense": "to_plain", "batch_norm": "bn", "split": "split",
    "split_with_sizes": "split", "chunk": "split", "channel_shuffle": "channel_shuffle",
    "native_channel_shuffle": "channel_shuffle", "contiguous": "channel_shuffle", "softmax": "softmax",
    "layer_norm": "ln", "permute": "permute",
    "transpose": "permute", "slice": "slice", "constant_pad_nd": "pad", "pad": "pad",
}

#: oneDNN eltwise algorithm -> canonical op: the activations that run as ``prim::MKLDNN*`` ops, invisible to the
#: profiler, are priced by their primitive.
ELTWISE_ALGS: dict[str, str] = {
    "eltwise_hardswish": "hswish", "eltwise_hsigmoid": "hsigmoid", "eltwise_clip": "relu6",
    "eltwise_clip_v2": "relu6", "eltwise_relu": "relu", "eltwise_logistic": "sigmoid", "eltwise_swish": "silu",
    "eltwise_tanh": "tanh", "eltwise_gelu_erf": "gelu", "eltwise_gelu_tanh": "gelu",
}

#: Ops a frozen graph removes (no piece, no time): a kernel made of them only is free. A batch norm is removed
#: only after a convolution (folded into it); alone it runs as ``aten::batch_norm``.
FREE_OPS = frozenset({"dropout", "identity", "bn"})
#: Ops that run as ``prim::MKLDNN*`` ops on PyTorch's own loops: neither the profiler nor oneDNN sees them (torch
#: 2.14.1). They get no piece; their time is in the residual, which :class:`TSInNetworkModel` prices by their
#: elements.
HIDDEN_OPS = frozenset({"hswish", "hsigmoid"})
CONV_OPS = ("conv", "dwconv")
_BROADCAST_OPS = ("add", "mul")


@dataclasses.dataclass
class TSNetworkTrace:
    """One TorchScript network as it ran: the medians of its profiled pieces and of its unprofiled runs.

    Attributes
    ----------
    convs : list of list
        Per convolution primitive, in execution order: ``[ic, oc, ih, iw, kh, kw, sh, g, conv_ms, weights_ms]``
        (its time and that of the reorders of its weights before it, ms).
    eltwise : list of list
        Per eltwise primitive: ``[op, [shape...], ms]`` (``op`` from :data:`ELTWISE_ALGS`, ``""`` if unknown).
    events : list of list
        Per top-level profiler event (a child of ``forward``) of an op in :data:`ATEN_OPS`:
        ``[aten name, [first input shape], ms]`` (allocations and other events are left to the residual).
    run_ms : float
        Median unprofiled run, ms.
    profiled_ms : float
        Median wall time of a run under the profiler, ms.
    n_events : int
        Profiler events of one run, every depth (the profiler's cost grows with them).
    primitives_ms : float
        Median over verbose runs of the sum of all primitives, ms.
    """

    convs: list[list[float]]
    eltwise: list[list[Any]]
    events: list[list[Any]]
    run_ms: float
    profiled_ms: float
    n_events: int
    primitives_ms: float

    @property
    def event_cost_ms(self) -> float:
        """The profiler's own cost per event, ms: the profiled run's excess over the unprofiled one, per event
        (at least 0)."""
        return max(self.profiled_ms - self.run_ms, 0.0) / max(self.n_events, 1)

    def to_record(self) -> dict[str, Any]:
        """JSON-safe form (:meth:`from_record` reads it back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "TSNetworkTrace":
        """A trace from :meth:`to_record`'s dict; a ``ValueError`` names a missing field."""
        try:
            return cls(**{f.name: rec[f.name] for f in dataclasses.fields(cls)})
        except KeyError as e:
            raise ValueError(f"a TorchScript network trace needs the field {e.args[0]!r}") from None


def _median_pieces(runs: Sequence[Sequence[Any]], key: Any, value: Any) -> list[tuple[Any, float]]:
    """Per position, the key of the first run and the median value over runs with the same keys (runs whose key
    sequence differs from the first's are left out)."""
    keys = [key(p) for p in runs[0]]
    same = [r for r in runs if [key(p) for p in r] == keys]
    vals = np.median(np.array([[value(p) for p in r] for r in same], dtype=np.float64), axis=0) if keys else []
    return list(zip(keys, (float(v) for v in vals)))


def _conv_rows(runs: Sequence[Sequence[Primitive]]) -> list[list[float]]:
    per_run = []
    for run in runs:
        rows = []
        for conv, weights, _ in TorchScriptTrace._groups(run):
            d = conv.dims()
            rows.append(((d.get("ic", 0), d.get("oc", 0), d.get("ih", 1), d.get("iw", 1), d.get("kh", 1),
                          d.get("kw", 1), d.get("sh", 1), d.get("g", 1)), conv.ms, sum(w.ms for w in weights)))
        per_run.append(rows)
    out = []
    for i, (k, conv_ms) in enumerate(_median_pieces(per_run, lambda r: r[0], lambda r: r[1])):
        w_ms = float(np.median([r[i][2] for r in per_run if len(r) > i and r[i][0] == k]))
        out.append([*map(float, k), conv_ms, w_ms])
    return out


def trace_torchscript_network(model: Any, input_shape: Sequence[int], *, runs: int = 5, warmup: int = 10,
                  unprofiled: int = 20, threads: int = 1) -> TSNetworkTrace:
    """Compile ``model`` as the ``torchscript-cpu`` backend does and record its pieces (see the module).

    Parameters
    ----------
    model : nn.Module or torch.jit.ScriptModule
    input_shape : sequence of int
    runs : int
        Runs under oneDNN verbose, and runs under the profiler (medians per piece).
    warmup, unprofiled : int
        Runs before any timing; unprofiled runs timed for :attr:`TSNetworkTrace.run_ms`.
    threads : int
        Intra-op threads.

    Raises
    ------
    CaptureError
        The model cannot be compiled, or oneDNN printed no primitive.
    """
    from torch.profiler import ProfilerActivity, profile

    from hwnas.builder._backends import get_backend
    from hwnas.builder._ts_profile import timed_runs, verbose_runs

    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    backend = get_backend("torchscript-cpu")
    fn = backend.prepare(model, input_shape, threads=threads)
    with backend.runtime(threads):
        wall = timed_runs(fn, warmup, unprofiled)
        prims, _ = verbose_runs(fn, runs)
        ev_runs, prof_wall, counts = [], [], []
        for _ in range(runs):
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                t0 = time.perf_counter()
                fn()
                prof_wall.append((time.perf_counter() - t0) * 1e3)
            events = prof.events()
            counts.append(len(events))
            ev_runs.append([(e.name, e.input_shapes[0] if e.input_shapes else [], e.cpu_time_total / 1e3)
                            for e in events if e.cpu_parent is not None and e.cpu_parent.name == "forward"])
    eltwise = [[ELTWISE_ALGS.get(a, ""), list(s), ms] for (a, s), ms in _median_pieces(
        [[p for p in r if p.kind == "eltwise"] for r in prims], lambda p: (p.alg, p.shape()), lambda p: p.ms)]
    events = [[n, [int(v) for v in s] if isinstance(s, (list, tuple)) else [], ms] for (n, s), ms in
              _median_pieces(ev_runs, lambda e: (e[0], tuple(e[1]) if isinstance(e[1], list) else ()),
                             lambda e: e[2]) if n.split("::")[-1] in ATEN_OPS]   # the rest: residual
    return TSNetworkTrace(convs=_conv_rows(prims), eltwise=eltwise, events=events, run_ms=float(np.median(wall)),
                        profiled_ms=float(np.median(prof_wall)), n_events=int(np.median(counts)),
                        primitives_ms=float(np.median([sum(p.ms for p in r) for r in prims])))


def _conv_key(node: Any) -> tuple[float, ...]:
    (_, c, h, w) = node.input_shapes[0][:4]
    a = node.attrs
    kh, kw = a.get("kernel", (1, 1))
    return tuple(map(float, (c, a.get("cout", 0), h, w, kh, kw, a.get("stride", (1, 1))[0], a.get("groups", 1))))


def _shape(kernel: Any) -> tuple[int, ...]:
    """A kernel's first input shape (a conversion's tensor shape from its features)."""
    if kernel.nodes:
        return tuple(int(v) for v in kernel.nodes[0].input_shapes[0]) if kernel.nodes[0].input_shapes else ()
    f = kernel.features
    return (int(f["batch"]), int(f["cin"]), int(f["hin"]), int(f["win"]))


class _Pool:
    """Pieces of one kind: ``(op, shape key, ms)``, each taken once."""

    def __init__(self, items: Sequence[tuple[Any, Any, float]]):
        self.items = list(items)
        self.used = [False] * len(self.items)

    def take(self, op: str, key: Any, exact: bool) -> float | None:
        """The first unused piece of ``op`` (with ``key`` when ``exact``), in execution order."""
        for i, (o, k, ms) in enumerate(self.items):
            if not self.used[i] and o == op and (k == key or not exact):
                self.used[i] = True
                return ms
        return None


def ts_kernel_labels(trace: TSNetworkTrace, kernels: Sequence[Any]) -> tuple[list[float | None], float]:
    """Each kernel's in-network time (ms), ``None`` where a piece of it was not found, and the residual (ms).

    Every op of every kernel asks for one piece: a convolution for its primitive (by channels, size, kernel,
    stride, groups), any other op for a profiler event of its ATen op with its input shape, else for an eltwise
    primitive with its output shape; a layout conversion for its ``to_mkldnn``/``to_dense`` event. Requests are
    served in graph order with exact keys first, then by op alone for the ones left. Last, an ``add`` or ``mul``
    that broadcasts takes the ``to_dense`` of its smaller input and the ``to_mkldnn`` at its output's shape when
    they are there (a broadcast between oneDNN tensors converts both ways).

    Parameters
    ----------
    trace : TSNetworkTrace
    kernels : sequence of Kernel
        The network's kernels in graph order (a predictor's :meth:`~hwnas.predictor.LatencyPredictor.kernels`,
        layout conversions included).

    Returns
    -------
    labels : list of float or None
        Per kernel: its convolution primitive and weight reorders, profiled ATen ops net of the profiler's cost
        per event (:attr:`TSNetworkTrace.event_cost_ms`), and invisible activations' primitives; 0 for a kernel
        of removed ops only; ``None`` for a kernel of hidden ops only (:data:`HIDDEN_OPS`) or with a piece not
        found.
    residual_ms : float
        The unprofiled run minus every label: the interpreter, allocations, and pieces no kernel took.
    """
    cost = trace.event_cost_ms
    convs = _Pool([("conv", tuple(r[:8]), r[8] + r[9]) for r in trace.convs])
    events = _Pool([(ATEN_OPS.get(n.split("::")[-1], ""), tuple(s), max(ms - cost, 0.0))
                    for n, s, ms in trace.events])
    eltwise = _Pool([(op, tuple(s), ms) for op, s, ms in trace.eltwise])
    requests: list[tuple[int, list[tuple[_Pool, str, Any]]]] = []   # kernel index, alternatives
    optional: list[tuple[int, tuple[_Pool, str, Any]]] = []         # served by an exact key only, after the rest
    for i, k in enumerate(kernels):
        if not k.nodes:   # a layout conversion
            requests.append((i, [(events, k.type, _shape(k))]))
        folded = any(n.op in CONV_OPS for n in k.nodes)   # a batch norm after a convolution is folded into it
        for n in k.nodes:
            if (n.op in FREE_OPS and (n.op != "bn" or folded)) or n.op in HIDDEN_OPS:
                continue
            if n.op in CONV_OPS:
                requests.append((i, [(convs, "conv", _conv_key(n))]))
            else:
                key = tuple(int(v) for v in n.input_shapes[0]) if n.input_shapes else ()
                requests.append((i, [(events, n.op, key), (eltwise, n.op, tuple(int(v) for v in n.output_shape))]))
                if n.op in _BROADCAST_OPS and len({tuple(x) for x in n.input_shapes}) > 1:
                    # a broadcast on oneDNN tensors (BroadcastMKLDNNTensors): the smaller input goes to a plain
                    # tensor, is expanded, and comes back at the output's shape
                    small = min(n.input_shapes, key=lambda x: int(np.prod(x)))
                    optional.append((i, (events, "to_plain", tuple(int(v) for v in small))))
                    optional.append((i, (events, "to_backend", tuple(int(v) for v in n.output_shape))))
    got: list[float | None] = [None] * len(requests)
    for exact in (True, False):
        for r, (_, alternatives) in enumerate(requests):
            for pool, op, key in alternatives:
                if got[r] is None:
                    got[r] = pool.take(op, key, exact)
    labels: list[float | None] = [0.0] * len(kernels)
    for i, k in enumerate(kernels):     # only hidden ops (and removed ones): no piece shows its time
        if k.nodes and any(n.op in HIDDEN_OPS for n in k.nodes) and all(n.op in HIDDEN_OPS | FREE_OPS
                                                                         for n in k.nodes):
            labels[i] = None
    for (i, _), ms in zip(requests, got):
        labels[i] = None if ms is None or labels[i] is None else labels[i] + ms
    for i, (pool, op, key) in optional:
        ms = pool.take(op, key, True)
        if ms is not None and labels[i] is not None:
            labels[i] += ms
    residual = trace.run_ms - sum(v for v in labels if v is not None)
    return labels, float(residual)


#: The pool of the single element-wise kernels (activations and batch norms, either layout) that ran with a label:
#: it prices such a type no training network labelled (``silu`` when efficientnet is held out) per output element.
ELTWISE_POOL = "eltwise-*"


def _eltwise(ktype: str) -> bool:
    """Whether a kernel type is one element-wise op whose time a label shows (a member of :data:`ELTWISE_POOL`)."""
    from hwnas.kernels import ACTIVATION_OPS

    b = ktype.split("@")[0]
    return b in (*ACTIVATION_OPS, "bn") and b not in HIDDEN_OPS


def _stand_in(ktype: str, specs: Any) -> str | None:
    """The fitted regressor that prices a type no label showed, if any: the pool for one element-wise op (a
    hidden one too: the pool prices it as an activation of its size), the bare convolution for a convolution
    whose other ops are hidden (its label is the convolution's time alone)."""
    b = ktype.split("@")[0]
    ops = b.split("-")
    if (_eltwise(ktype) or b in HIDDEN_OPS) and ELTWISE_POOL in specs:
        return ELTWISE_POOL
    if ops[0] in CONV_OPS and len(ops) > 1 and all(op in HIDDEN_OPS for op in ops[1:]) and ops[0] in specs:
        return ops[0]
    return None


def _hidden(ktype: str) -> bool:
    """Whether a kernel type has an op whose time no instrument sees (:data:`HIDDEN_OPS`)."""
    return any(op in HIDDEN_OPS for op in ktype.split("@")[0].split("-"))


@dataclasses.dataclass
class TSInNetworkModel:
    """Kernel regressors fitted on in-network TorchScript labels (:func:`ts_kernel_labels`), plus a network term.

    A network's latency (ms) is the sum over its kernels of the kernel's regressor, a cost every kernel pays
    (``per_kernel_ms``, ``per_melem_ms``: the interpreter's step and the output's allocation) and its type's
    terms (``per_kernel`` ms, ``per_melem`` ms per million output elements), plus ``intercept_ms``: every term is
    additive over kernels, so latency tables of search spaces stay exact. The
    terms carry what no kernel's label holds (the interpreter between ops, allocations, the hidden activations);
    they are fitted by non-negative least squares on the relative error of the training networks.

    Attributes
    ----------
    regressors, specs : dict
        Per kernel type, its regressor and its metadata (features, target, unit feature).
    terms : dict of str to dict of str to float
        Per kernel type, ``{"per_kernel": ms, "per_melem": ms}`` (both >= 0), pulled towards 0 by the ridge.
    intercept_ms : float
    n_networks : int
        Networks the model was fitted on.
    per_kernel_ms, per_melem_ms : float
        Cost of every kernel not free, ms, and per million of its output elements, ms (>= 0, not pulled by the
        ridge: the interpreter's step and the allocation of the output, whose pages a large tensor touches anew).
    free : frozenset of str
        Kernel types whose labels were 0 in most places (ops the frozen graph removes): priced 0.
    fallback : LatencyPredictor, optional
        Prices the kernel types no label showed, but for single element-wise types (hidden ones too), which the
        regressor of :data:`ELTWISE_POOL` prices, and convolutions with hidden ops, which the bare convolution's
        does (pass the fallback without its calibration, which a zoo fit would leak).
    fallbacks : dict of str to int
        How many kernels of each type the fallback priced (since the last fit), under :data:`ELTWISE_POOL` and
        ``conv`` how many those stand-ins priced; ``"<none>"`` counts kernels nothing could price (priced 0:
        an evaluation says how often).
    """

    regressors: dict[str, Any]
    specs: dict[str, dict[str, Any]]
    terms: dict[str, dict[str, float]]
    intercept_ms: float
    free: frozenset[str]
    per_kernel_ms: float = 0.0
    per_melem_ms: float = 0.0
    n_networks: int = 0
    fallback: Any = None
    fallbacks: dict[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def fit(cls, networks: Sequence[tuple[Sequence[Any], Sequence[float | None]]], measured_ms: Sequence[float],
            *, fallback: Any = None, seed: int = 0, ridge: float = 0.1, max_rows: int = 3000
            ) -> "TSInNetworkModel":
        """Fit on ``networks`` (each its kernels and their labels, ``None`` for an unlabelled kernel) and their
        measured latencies (ms). A type with more than ``max_rows`` labels is fitted on a seeded sample of them;
        ``ridge`` pulls the terms towards 0 (relative to the design's scale)."""
        import random

        from scipy.optimize import nnls

        from hwnas.builder._fit import MIN_FIT_SAMPLES, fit_regressors

        if len(networks) != len(measured_ms) or not networks:
            raise ValueError(f"need one measured latency per network, got {len(networks)} networks and "
                             f"{len(measured_ms)} latencies")
        by_type: dict[str, list[tuple[dict, float]]] = {}
        zeros: dict[str, list[bool]] = {}
        for kernels, labels in networks:
            for k, ms in zip(kernels, labels):
                if ms is None:
                    continue
                zeros.setdefault(k.type, []).append(ms <= 0)
                if ms > 0:
                    by_type.setdefault(k.type, []).append((k.features, ms))
                    if _eltwise(k.type):
                        by_type.setdefault(ELTWISE_POOL, []).append((k.features, ms))
        free = frozenset(t for t, z in zeros.items() if np.mean(z) >= 0.5)
        rng = random.Random(seed)
        cap = {t: 4 * max_rows if t == ELTWISE_POOL else max_rows for t in by_type}
        by_type = {t: (v if len(v) <= cap[t] else rng.sample(v, cap[t])) for t, v in by_type.items()
                   if t not in free and len(v) >= MIN_FIT_SAMPLES}
        regressors, specs, _, _ = fit_regressors(by_type, "torchscript-cpu", seed, targets=("log_ms_per_unit",))
        model = cls(regressors, specs, {}, 0.0, free, n_networks=len(networks), fallback=fallback)
        y = np.asarray(measured_ms, dtype=np.float64)
        sums = np.array([model.kernel_ms(k).sum() for k, _ in networks])
        cols = sorted({(k.type, term) for ks, _ in networks for k in ks if k.type not in free
                       for term in ("per_kernel", "per_melem")})
        head = 4             # intercept (either sign); every kernel's cost, and its cost per million output elements
        x = np.zeros((len(networks), len(cols) + head))
        x[:, 0], x[:, 1] = 1.0, -1.0
        index = {c: j + head for j, c in enumerate(cols)}
        for i, (ks, _) in enumerate(networks):
            for k in ks:
                if k.type in free:
                    continue
                x[i, 2] += 1.0
                x[i, 3] += k.features["out_elems"]
                x[i, index[(k.type, "per_kernel")]] += 1.0
                x[i, index[(k.type, "per_melem")]] += k.features["out_elems"]
        w = 1.0 / y                                        # relative error
        a, b = x * w[:, None], (y - sums) * w
        scale = float(np.mean(np.sum(a[:, head:] ** 2, axis=0))) if cols else 0.0
        pen = np.sqrt(ridge * scale) * np.eye(len(cols) + head)[head:]   # the type terms only
        coef, _ = nnls(np.vstack([a, pen]), np.concatenate([b, np.zeros(len(cols))]),
                       maxiter=50 * (len(cols) + head))
        model.intercept_ms = float(coef[0] - coef[1])
        model.per_kernel_ms, model.per_melem_ms = float(coef[2]), float(coef[3])
        for (t, term), j in index.items():
            if coef[j] > 0:
                model.terms.setdefault(t, {})[term] = float(coef[j])
        model.fallbacks = {}
        return model

    def kernel_ms(self, kernels: Sequence[Any], terms: bool = False) -> np.ndarray:
        """Each kernel's latency (ms): its regressor, the fallback for a type no label showed, 0 for a free type;
        with ``terms``, plus its type's network terms."""
        from hwnas.errors import UnknownKernelError
        from hwnas.predictor import apply_target

        out = np.zeros(len(kernels))
        by_type: dict[str, list[int]] = {}
        for i, k in enumerate(kernels):
            by_type.setdefault(k.type, []).append(i)
        for t, idx in by_type.items():
            if t in self.free:
                continue
            own = t if t in self.specs else _stand_in(t, self.specs)
            if own is not None:
                if own != t:
                    self.fallbacks[own] = self.fallbacks.get(own, 0) + len(idx)
                spec = self.specs[own]
                x = np.array([[kernels[i].features[n] for n in spec["features"]] for i in idx], dtype=np.float64)
                unit = x[:, spec["features"].index(spec["unit_feature"])] if "unit_feature" in spec else None
                out[idx] = apply_target(spec["target"], self.regressors[own].predict(x), unit)
            else:
                try:
                    if self.fallback is None:
                        raise UnknownKernelError(t, kernels[idx[0]].ops, idx[0], "in-network model", None)
                    out[idx] = self.fallback.kernel_latencies([kernels[i] for i in idx])
                    self.fallbacks[t] = self.fallbacks.get(t, 0) + len(idx)
                except UnknownKernelError:
                    self.fallbacks["<none>"] = self.fallbacks.get("<none>", 0) + len(idx)
            if terms:
                c = self.terms.get(t, {})
                out[idx] += self.per_kernel_ms + c.get("per_kernel", 0.0) + (
                    self.per_melem_ms + c.get("per_melem", 0.0)) * np.array([kernels[i].features["out_elems"]
                                                                              for i in idx])
        return out

    def predict(self, kernels: Sequence[Any]) -> float:
        """A network's latency from its kernels, ms."""
        return float(self.kernel_ms(kernels, terms=True).sum()) + self.intercept_ms

    def write(self, path: Any, fp: dict[str, Any], complete_from: Any, *, name: str,
              notes: dict[str, Any] | None = None, status: str = "") -> Any:
        """Write this model as a ``torchscript-cpu`` predictor directory for the machine with fingerprint ``fp``
        (the machine the traces were taken on); returns its path.

        ``complete_from`` is the predictor whose kernels the labels were given to (its fusion and layout rules
        are written). Every type it prices and the labels lack is written too: a stand-in's regressor under the
        type's name where there is one (:data:`ELTWISE_POOL`, the bare convolution), else its own regressor and
        transfer pair, without its calibration. The network terms go into the calibration entry (per type
        ``per_kernel`` and ``per_melem``, shared part included; the intercept), so latency tables stay exact.
        """
        import hwnas
        from hwnas.builder._config import utc_now
        from hwnas.device import describe
        from hwnas.predictor import write_predictor

        regressors, specs, transfer, stand_ins = {}, {}, {}, {}
        base = complete_from.kernel_specs
        layout = complete_from.layout   # its variant types must have a regressor, even where labels were 0
        required = {f"{v}{layout.suffix}" for v in layout.variants} if layout is not None else set()
        for t in sorted({*self.specs, *base} - {ELTWISE_POOL} - (set(self.free) - required)):
            own = t if t in self.specs else _stand_in(t, self.specs)
            if own is not None:
                regressors[t], specs[t], transfer[t] = self.regressors[own], dict(self.specs[own]), [0.0, 1.0]
                if own != t:
                    stand_ins[t] = own
            elif t in complete_from.regressors:
                regressors[t], specs[t] = complete_from.regressors[t], dict(base[t])
                pair = complete_from.transfer.get(t, complete_from.transfer_default) or (0.0, 1.0)
                transfer[t] = [float(pair[0]), float(pair[1])]
        terms = {t: {"per_kernel": self.per_kernel_ms + self.terms.get(t, {}).get("per_kernel", 0.0),
                     "per_melem": self.per_melem_ms + self.terms.get(t, {}).get("per_melem", 0.0)} for t in specs}
        meta = {
            "name": name, "version": utc_now()[:10].replace("-", "."), "backend": "torchscript-cpu",
            "device": {"description": describe(fp), "fingerprint": fp}, "runtime": dict(fp.get("runtimes", {})),
            "threads": 1, "batch_size": 1, "precision": "fp32", "units": "ms",
            "protocol": {"labels": "in-network: per kernel, its oneDNN convolution primitive and weight reorders "
                                   "(verbose), its ATen ops' profiled times net of the profiler's cost per event, "
                                   "median over passes",
                         "network_terms": "per kernel and per million output elements (shared and per type, >= 0) "
                                          "and an intercept, fitted on end-to-end medians in relative error",
                         "stand_in_kernel_types": stand_ins,
                         "borrowed_from": complete_from.name},
            "fusion_rules": complete_from.rules.to_list(), "layout": complete_from.metadata.get("layout"),
            "zero_cost_ops": sorted(set(complete_from.zero_cost_ops)
                                    | {t for t in set(self.free) - required if "-" not in t}),
            "zero_cost_kernels": sorted(t for t in set(self.free) - required if "-" in t),
            "model_overhead_ms": 0.0, "kernels": specs,
            "calibration": {"intercept_ms": float(self.intercept_ms), "kernel_scale": {}, "kernel_terms": terms,
                            "n_networks": int(self.n_networks)},
            # types the kernel predictor declared it cannot price, and which no label priced either
            "unsupported_kernel_types": {t: r for t, r in (complete_from.metadata.get("unsupported_kernel_types")
                                                          or {}).items() if t not in specs},
            "transfer": {"form": "in-network types as fitted; borrowed types as " + complete_from.name,
                         "kernel_types": transfer, "default": [0.0, 1.0]},
            "created": utc_now(), "hwnas_version": hwnas.__version__, "accuracy": dict(notes or {}),
            "status": status or "kernels labelled inside networks traced on this machine",
        }
        return write_predictor(path, meta, regressors)
