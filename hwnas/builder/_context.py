"""Kernel models fitted on in-network labels: kernels as the backend fused them, timed inside their networks.

From ONNX Runtime traces of whole networks (:class:`~hwnas.builder._profile.NodeTrace`):

- :func:`trace_labels` — each kernel as ONNX Runtime ran it (:func:`ort_kernel_groups`) with its in-network
  time, and each layout conversion as a kernel of its own (``to_blocked``/``to_plain``);
- :func:`derive_fusion_rules` — the op chains ONNX Runtime ran as one node in most of the places they occur:
  fusion rules read from compiled, profiled networks instead of a fusion test on isolated chains;
- :class:`InNetworkModel` — regressors fitted on those labels (one per kernel type; one per main op for the
  convolutions with an epilogue, :func:`~hwnas.builder._fit.pool_of`), the labels net of the profiler's cost per
  node (:func:`fit_node_overhead`), plus a network term (``a + b * kernels + c * Mweights``, ms, sums over
  kernels); it prices a graph under the derived rules, with the conversions
  :func:`~hwnas.builder._layout.layout_conversions` predicts.

A kernel type the labels never showed is priced by the fallback predictor if one is given, else by its pool's
regressor, its longest fitted prefix (``conv-add-relu`` by ``conv-add``, then ``conv``), or a regressor pooled
over all non-MAC kernels; :attr:`InNetworkModel.fallbacks` counts these, so an evaluation can say how often it
happened.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Iterable, Sequence

import numpy as np

from hwnas.graph import OpGraph
from hwnas.kernels import ACTIVATION_OPS, FusionRules, Kernel, detect_kernels, tensor_kernel

from hwnas.builder._fit import pool_of
from hwnas.builder._layout import ORT_NCHWC, Conversion, layout_conversions
from hwnas.builder._profile import NodeTrace, ort_kernel_groups, profile_from_trace

_KINDS = {"ReorderInput": "to_blocked", "ReorderOutput": "to_plain"}
_MAC_MAIN = ("conv", "dwconv", "fc", "matmul", "mha")
POOLED = "*"


def _tensor_shape(graph: OpGraph, source: str) -> tuple[int, ...]:
    if source in graph:
        return tuple(graph[source].output_shape)
    for n in graph.nodes:
        for i, s in zip(n.inputs, n.input_shapes):
            if i == source:
                return tuple(s)
    return ()


#: A layout conversion of a tensor of ``shape`` as a kernel of type ``kind`` (features of the tensor).
conversion_kernel = tensor_kernel


def _place_conversions(trace: NodeTrace, kernels: Sequence[Kernel], ms: Any, absorb_layout: bool
                       ) -> tuple[np.ndarray, list[tuple[Kernel, float]]]:
    """The trace's layout conversions: with ``absorb_layout`` each one's time added to the kernel on its plain
    side (the reader of a ``to_plain``, the writer of a ``to_blocked``, else its reader), otherwise, or when that
    side is in no kernel, a conversion kernel of its own. Returns the kernels' times (a copy) and those rows."""
    ms = np.array(ms, dtype=np.float64)
    kernel_of = {n.name: i for i, k in enumerate(kernels) for n in k.nodes}
    rows: list[tuple[Kernel, float]] = []
    for op_type, t, src, dst in trace.reorders:
        side = (dst[0] if dst else None) if op_type == "ReorderOutput" or src not in kernel_of else src
        if absorb_layout and side in kernel_of:
            ms[kernel_of[side]] += t
        elif op_type in _KINDS and t > 0:
            rows.append((conversion_kernel(_KINDS[op_type], _tensor_shape(trace.graph, src)), float(t)))
    return ms, rows


def trace_labels(trace: NodeTrace, absorb_layout: bool = False) -> list[tuple[Kernel, float]]:
    """Every kernel of a traced network as ONNX Runtime ran it, with its in-network time (ms); kernels with no
    timed node (0 ms) are left out.

    Layout conversions are kernels of their own (``to_blocked``/``to_plain``), or, with ``absorb_layout``, their
    time is added to the kernel on the plain side of the conversion: the kernel reading the plain tensor of a
    ``to_plain``, the kernel writing the plain tensor of a ``to_blocked`` (the reader's when that is the graph
    input). Ops without a blocked kernel (a broadcast ``mul``, a channel shuffle) then carry the conversions they
    cause, and the network's kernels stay those the graph has (which keeps latency tables exact).
    """
    kernels, ms = ort_kernel_groups(trace)
    ms, rows = _place_conversions(trace, kernels, ms, absorb_layout)
    return [(k, float(t)) for k, t in zip(kernels, ms) if t > 0] + rows


def derive_fusion_rules(traces: Iterable[NodeTrace], min_share: float = 0.5, cache: dict | None = None,
                        split_pairs: Iterable[tuple[str, str]] = (),
                        prior: Iterable[Sequence[str]] = ()) -> tuple[FusionRules, dict]:
    """Fusion rules read from traces: an op chain becomes a rule when ONNX Runtime ran it as one kernel in at
    least ``min_share`` of the places the chain occurs (counted by matching the chain alone). Candidates are the
    op sequences of ONNX Runtime's kernels and their prefixes (a ``channel_shuffle-split`` where one kernel shuffles
    the channels and cuts them in two). Returns the rules and per
    candidate pattern ``{"fused": n, "occurs": n}``. ``cache`` (a dict kept by the caller) keeps the per-trace
    counts between calls on overlapping sets of traces (and the same ``split_pairs``). A kernel is cut between
    two consecutive ops forming one of ``split_pairs`` (the ops meeting across a search space's block boundary,
    :func:`hwnas.tables.boundary_op_pairs`), so that no rule fuses across blocks and latency tables stay exact.

    ``prior`` (op chains, e.g. the fused ones of :func:`~hwnas.builder.probe_fused_chains`) are rules the backend's
    compiler is known to apply: each is kept unless the traces contradict it (it occurs and ran fused in less
    than ``min_share`` of its places) or it holds a ``split_pairs`` pair, so a fusion no training network showed
    still holds (a held-out family's ``conv-hswish``). Their statistics carry ``"prior": True``."""
    traces = list(traces)
    cache = {} if cache is None else cache
    split = frozenset(tuple(p) for p in split_pairs)
    prior_set = {p for p in map(tuple, prior) if len(_cut(p, split)) == 1}
    per: list[dict[tuple[str, ...], list[int]]] = []
    for t in traces:
        key = ("fused", id(t), split)
        if key not in cache:
            fused: dict[tuple[str, ...], int] = {}
            for k in ort_kernel_groups(t)[0]:
                for seg in _cut(tuple(k.ops), split):
                    for n in range(2, len(seg) + 1):
                        fused[seg[:n]] = fused.get(seg[:n], 0) + 1
            cache[key] = fused
        per.append(cache[key])
    candidates = sorted({p for f in per for p in f} | prior_set)
    stats: dict[str, dict[str, int]] = {}
    kept = []
    for pattern in candidates:
        single = FusionRules([pattern])
        if tuple(single.patterns[0] if single.patterns else ()) != pattern:
            continue   # not a canonical chain
        occurs = 0
        for t in traces:
            key = ("occurs", id(t), pattern)
            if key not in cache:
                cache[key] = sum(1 for k in detect_kernels(t.graph, single) if tuple(k.ops) == pattern)
            occurs += cache[key]
        n = sum(f.get(pattern, 0) for f in per)
        if not occurs and pattern not in prior_set:
            continue
        stats["-".join(pattern)] = {"fused": n, "occurs": occurs, **({"prior": True} if pattern in prior_set else {})}
        if (n / occurs >= min_share) if occurs else True:
            kept.append(pattern)
    return FusionRules(kept), stats


def _cut(ops: tuple[str, ...], split: frozenset) -> list[tuple[str, ...]]:
    """``ops`` cut between every consecutive pair in ``split``."""
    segments, start = [], 0
    for i in range(1, len(ops)):
        if (ops[i - 1], ops[i]) in split:
            segments.append(ops[start:i])
            start = i
    return segments + [ops[start:]]


def rule_labels(trace: NodeTrace, rules: FusionRules, absorb_layout: bool = True) -> list[tuple[Kernel, float]]:
    """The kernels of a traced network under ``rules``, each with the time of the nodes named after its ops (ms;
    0 for a kernel ONNX Runtime ran inside a neighbour's node), and the layout conversions: in the kernel on their
    plain side (``absorb_layout``), or as kernels of their own. These are the labels a model pricing
    ``detect_kernels(graph, rules)`` is fitted on."""
    prof = profile_from_trace(trace, rules)
    kernels = prof.kernels
    ms, rows = _place_conversions(trace, kernels, prof.kernel_ms, absorb_layout)
    return [(k, float(t)) for k, t in zip(kernels, ms)] + rows


_ALWAYS_FREE = ("dropout", "identity")


def _priced(k: Kernel, free_types: Iterable[str] = ()) -> bool:
    return not ((k.ops and all(op in _ALWAYS_FREE for op in k.ops)) or k.type in free_types)


def _terms(kernels: Sequence[Kernel], free_types: Iterable[str] = ()) -> tuple[float, float]:
    """(priced kernels, their weights in millions): the quantities of the network term."""
    free_types = set(free_types)
    priced = [k for k in kernels if _priced(k, free_types)]
    return float(len(priced)), float(sum(k.features["params"] for k in priced))


def fit_node_overhead(traces: Sequence[NodeTrace], measured_ms: Sequence[float]) -> float:
    """The profiler's cost per timed node (ms): the least-squares ``d`` of ``nodes_sum / measured ≈ d * nodes /
    measured + s`` over the networks (``nodes`` counts the timed nodes and conversions of a trace, ``nodes_sum``
    their summed times, ``measured`` the unprofiled end-to-end latency), at least 0. A profiled node runs a few
    microseconds longer than the same node unprofiled; a network of many small nodes is over-labelled by that
    much per node, which no factor on its kernels corrects. 0 with fewer than 4 networks."""
    if len(traces) < 4:
        return 0.0
    meas = np.asarray(measured_ms, dtype=np.float64)
    count = np.array([sum(ms > 0 for _, _, ms, _ in t.nodes) + sum(ms > 0 for _, ms, _, _ in t.reorders)
                      for t in traces], dtype=np.float64)
    total = np.array([sum(ms for _, _, ms, _ in t.nodes) + sum(ms for _, ms, _, _ in t.reorders) for t in traces])
    a = np.stack([count / meas, np.ones_like(meas)], axis=1)
    d, _ = np.linalg.lstsq(a, total / meas, rcond=None)[0]
    return max(float(d), 0.0)


#: A node's label never falls below this share of its profiled time when the per-node overhead is taken off.
NODE_FLOOR = 0.25


def net_of_overhead(trace: NodeTrace, node_ms: float) -> NodeTrace:
    """``trace`` with ``node_ms`` taken off every timed node and conversion (never below :data:`NODE_FLOOR` of
    its time): what each would take unprofiled."""
    if node_ms <= 0:
        return trace
    net = lambda ms: max(ms - node_ms, NODE_FLOOR * ms) if ms > 0 else ms   # noqa: E731
    return dataclasses.replace(trace, nodes=[(n, op, net(ms), a) for n, op, ms, a in trace.nodes],
                               reorders=[(op, net(ms), src, dst) for op, ms, src, dst in trace.reorders])


def _fit_overhead(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Fit the network term ``y - kernel_sum ≈ a + b * kernels + c * Mweights`` (``x`` rows: ``[kernel_sum, 1,
    kernels, Mweights]``; ``y``: measured ms) in relative error (each network weighs as much as any other,
    whatever its latency), every coefficient >= 0: a network term never makes a network faster. The kernel sum
    is taken as given (a factor fitted jointly with ``c`` trades off against it and extrapolates badly to families
    not fitted on; :meth:`InNetworkModel.fit_network_term` fixes its scale first). Returns ``(a, b, c)``."""
    from scipy.optimize import lsq_linear

    if len(y) == 0:
        return 0.0, 0.0, 0.0
    rest = np.asarray(y, float) - x[:, 0]
    if len(y) < 4:
        return max(float(np.median(rest)), 0.0), 0.0, 0.0
    w = 1.0 / np.asarray(y, float)
    res = lsq_linear(x[:, 1:] * w[:, None], rest * w, bounds=(0.0, np.inf))
    return tuple(float(v) for v in res.x)


@dataclasses.dataclass
class InNetworkModel:
    """Regressors fitted on in-network kernel labels, and a per-network overhead line.

    Attributes
    ----------
    rules : FusionRules
        The rules kernels are detected with (:func:`derive_fusion_rules`).
    block : int
        Channel block of the layout conversions (0: none predicted).
    regressors, specs : dict
        Per kernel type, the regressor and its ``{"features", "target", "unit_feature"}``.
    overhead : tuple of float
        ``(a, b, c)``: a network costs ``a + b * kernels + c * weights`` ms on top of its kernels (``kernels``
        counts the priced ones, ``weights`` is the total of their ``params`` feature, in millions). Both are sums
        over kernels, so the term is additive over a search space's blocks and latency tables stay exact.
    scale : float
        Factor on every kernel's regressor (:meth:`fit_network_term`).
    absorb_layout : bool
        Whether the conversions' time is in the kernels on their plain side (:func:`trace_labels`).
    free_types : frozenset of str
        Kernel types priced 0 ms: ONNX Runtime ran them inside a neighbour's node (no node named after any of
        their ops) in most of their labelled occurrences; they count in no network term.
    fallback : LatencyPredictor, optional
        Prices kernel types without labels: their ops are split into that predictor's kernels (its own fusion
        rules) and priced by it. Without it, the longest fitted prefix or the pooled regressor does.
    fallbacks : dict of str to int
        How many kernels of each type were priced by a fallback (since the last fit).
    n_networks : int
        How many networks the network term was fitted on.
    node_overhead_ms : float
        The profiler's cost per node taken off every node's time before labelling (:func:`fit_node_overhead`).
    pools : dict of str to list of str
        Per pool, the kernel types priced by its regressor: per main op (``"conv-*"``), the convolutions with an
        epilogue (:func:`~hwnas.builder._fit.pool_of`), those of a rule no label showed included; for
        ``"eltwise-*"``, the activations without labels of their own.
    """

    rules: FusionRules
    block: int
    regressors: dict[str, Any]
    specs: dict[str, dict[str, Any]]
    overhead: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0
    absorb_layout: bool = False
    fallback: Any = None
    free_types: frozenset = frozenset()
    fallbacks: dict[str, int] = dataclasses.field(default_factory=dict)
    n_networks: int = 0
    node_overhead_ms: float = 0.0
    pools: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @classmethod
    def fit(cls, traces: Sequence[NodeTrace], measured_ms: Sequence[float] | None = None, *, block: int = 0,
            rules: FusionRules | None = None, seed: int = 0, max_rows: int = 250,
            absorb_layout: bool = False, fallback: Any = None, labels: str = "rules", pool: bool = True,
            node_overhead: bool = True) -> "InNetworkModel":
        """Fit on ``traces`` (and the networks' end-to-end ``measured_ms`` for the overhead line; without them
        the trace's own run time is used). With ``absorb_layout`` the conversions' time is fitted into the
        kernels on their plain side (use ``block=0`` then). ``labels``: ``"rules"`` fits the kernels the rules
        detect, each labelled with the nodes named after its ops (:func:`rule_labels`; types mostly without a
        node of their own become :attr:`free_types`); ``"groups"`` fits the kernels as ONNX Runtime fused them
        (:func:`trace_labels`). ``fallback``: see the class.
        A kernel type with more than ``max_rows`` labels is fitted on a seeded
        random sample of that many (the fit's time grows with them; a pool on four times as many).
        With ``pool``, convolution types whose other ops are epilogue ops share one regressor per main op
        (:func:`~hwnas.builder._fit.pool_of`, :attr:`pools`), and an activation no label showed is priced by a
        regressor fitted on all element-wise ops that ran alone (:data:`~hwnas.builder._fit.ACT_POOL`). With
        ``node_overhead``, the profiler's cost per
        node (:func:`fit_node_overhead`, against the truths) is taken off every node's time first."""
        from hwnas.builder._fit import ACT_POOL, MIN_FIT_SAMPLES, fit_regressors, is_elementwise, pool_of

        rules = rules if rules is not None else derive_fusion_rules(traces)[0]
        truth = list(measured_ms) if measured_ms is not None else [t.run_ms for t in traces]
        delta = fit_node_overhead(traces, truth) if node_overhead else 0.0
        by_type: dict[str, list[tuple[dict, float]]] = {}
        members: dict[str, set[str]] = {}
        zeros: dict[str, list[bool]] = {}
        for t in traces:
            t = net_of_overhead(t, delta)
            rows = rule_labels(t, rules, absorb_layout) if labels == "rules" else trace_labels(t, absorb_layout)
            for k, ms in rows:
                zeros.setdefault(k.type, []).append(ms <= 0)
                if ms <= 0:
                    continue
                key = (pool_of(k.type) if pool else None) or k.type
                by_type.setdefault(key, []).append((k.features, ms))
                if key != k.type:
                    members.setdefault(key, set()).add(k.type)   # a member with labels: priced by its pool
                if pool and is_elementwise(k.type):
                    by_type.setdefault(ACT_POOL, []).append((k.features, ms))
                if k.type.split("-")[0] not in _MAC_MAIN:
                    by_type.setdefault(POOLED, []).append((k.features, ms))
        free = frozenset(t for t, z in zeros.items() if np.mean(z) >= 0.5)
        rng = random.Random(seed)
        cap = {k: (4 if k in members or k == ACT_POOL else 1) * max_rows for k in by_type}
        by_type = {k: (v if len(v) <= cap[k] else rng.sample(v, cap[k]))
                   for k, v in by_type.items() if len(v) >= MIN_FIT_SAMPLES}
        # per unit of work only: labels come from a few families, and a network of another family has bigger
        # kernels than any of theirs (a log-latency tree would price those at the slowest fitted one)
        regressors, specs, _, _ = fit_regressors(by_type, "onnxruntime-cpu", seed, targets=("log_ms_per_unit",))
        pools = {p: sorted(m) for p, m in members.items() if p in specs}
        if pool:   # a rule's convolution type no label showed (a probed conv-hswish): priced by its pool
            for t in ("-".join(p) for p in rules.patterns):
                if pool_of(t) in specs and t not in specs and t not in free:
                    pools[pool_of(t)] = sorted({*pools.get(pool_of(t), []), t})
        if ACT_POOL in specs:   # activations without labels of their own (seen ones keep their own regressor)
            pools[ACT_POOL] = [op for op in ACTIVATION_OPS if op not in specs and op not in free]
        for p, m in pools.items():
            for ktype in m:
                regressors[ktype], specs[ktype] = regressors[p], specs[p]
        model = cls(rules, block, regressors, specs, absorb_layout=absorb_layout, fallback=fallback,
                    free_types=free, node_overhead_ms=delta, pools=pools)
        model.fit_network_term([t.graph for t in traces], truth)
        return model

    def fit_network_term(self, graphs: Sequence[OpGraph], measured_ms: Sequence[float], rescale: bool = True
                         ) -> None:
        """Fit :attr:`scale` and :attr:`overhead` on networks' end-to-end latencies (ms).

        With ``rescale``, :attr:`scale` is first the median of measured / kernel sum over the networks, within
        [0.8, 1.25] (profiled node times run a few percent above an unprofiled run); then the network term is
        fitted on what the scaled kernel sums leave (:func:`_fit_overhead`). Without it the scale stays 1.
        """
        kernels = [self.kernels(g) for g in graphs]
        sums = np.array([float(self._kernel_ms(k).sum()) for k in kernels])
        meas = np.asarray(measured_ms, dtype=np.float64)
        self.scale = 1.0
        if rescale and len(meas) and np.all(sums > 0):
            self.scale = float(np.clip(np.median(meas / sums), 0.8, 1.25))
        x = [[self.scale * sm, 1.0, *_terms(k, self.free_types)] for sm, k in zip(sums, kernels)]
        self.overhead = _fit_overhead(np.asarray(x).reshape(len(x), 4), meas)
        self.fallbacks = {}
        self.n_networks = len(meas)

    def kernels(self, graph: OpGraph) -> list[Kernel]:
        """The graph's kernels under the rules, plus the predicted layout conversions."""
        out = detect_kernels(graph, self.rules)
        if self.block:
            out += [conversion_kernel(c.kind, c.shape) for c in layout_conversions(graph, self.block, ORT_NCHWC)]
        return out

    def _spec_for(self, ktype: str) -> str:
        if ktype in self.specs:
            return ktype
        if pool_of(ktype) in self.specs:
            self.fallbacks[ktype] = self.fallbacks.get(ktype, 0) + 1
            return pool_of(ktype)
        ops = ktype.split("-")
        for n in range(len(ops) - 1, 0, -1):
            if "-".join(ops[:n]) in self.specs:
                self.fallbacks[ktype] = self.fallbacks.get(ktype, 0) + 1
                return "-".join(ops[:n])
        self.fallbacks[ktype] = self.fallbacks.get(ktype, 0) + 1
        return POOLED

    def kernel_latencies(self, kernels: Sequence[Kernel]) -> np.ndarray:
        """Latency of each kernel (its regressor's, times :attr:`scale`), ms."""
        return self.scale * self._kernel_ms(kernels)

    def _kernel_ms(self, kernels: Sequence[Kernel]) -> np.ndarray:
        from hwnas.predictor import apply_target

        out = np.zeros(len(kernels))
        by: dict[str, list[int]] = {}
        for i, k in enumerate(kernels):
            if not _priced(k, self.free_types):
                continue
            if k.type not in self.specs and self.fallback is not None and k.nodes:
                self.fallbacks[k.type] = self.fallbacks.get(k.type, 0) + 1
                parts = detect_kernels(OpGraph(k.nodes, source="kernel"), self.fallback.rules)
                out[i] = float(self.fallback.kernel_latencies(parts).sum())
                continue
            by.setdefault(self._spec_for(k.type), []).append(i)
        for ktype, idx in by.items():
            spec = self.specs[ktype]
            names = spec["features"]
            x = np.array([[kernels[i].features[n] for n in names] for i in idx], dtype=np.float64)
            raw = self.regressors[ktype].predict(x)
            unit = x[:, names.index(spec["unit_feature"])] if spec["target"] == "log_ms_per_unit" else None
            out[idx] = apply_target(spec["target"], raw, unit)
        return out

    def network_ms(self, kernels: Sequence[Kernel]) -> float:
        """Latency of a network made of ``kernels``: their sum and the network term, ms."""
        a, b, c = self.overhead
        n, params = _terms(kernels, self.free_types)
        return float(self.kernel_latencies(kernels).sum() + a + b * n + c * params)

    def predict(self, graph: OpGraph) -> float:
        """Latency of the network ``graph``, ms."""
        return self.network_ms(self.kernels(graph))

    def predict_groups(self, trace: NodeTrace) -> float:
        """Latency of a traced network priced on the kernels ONNX Runtime really ran and its real conversions
        (the fusion and layout known exactly: what is left is the regressors' error), ms."""
        return self.network_ms([k for k, _ in trace_labels(trace, self.absorb_layout)])


    def write(self, path: Any, fp: dict[str, Any], *, name: str | None = None, notes: dict[str, Any] | None = None,
              complete_from: Any = None) -> Any:
        """Write this model as a predictor directory of backend ``onnxruntime-cpu`` for the machine with
        fingerprint ``fp`` (the machine the traces were taken on); returns its path.

        The network term goes into the calibration: ``a`` as the per-call overhead, ``b`` and ``c`` as the
        per-kernel and per-million-weights terms of every kernel type. Kernel types with labels of their own are
        written; with ``complete_from`` (an isolated-kernel predictor of the same machine), every type of that
        predictor the labels lack is written too, with its regressor, transfer pair, factor and terms (both times
        :attr:`scale`), so ops no
        zoo network had in ONNX Runtime's graph (a ``permute`` from a module) are priced as that predictor
        prices them. Without it such a type raises ``UnknownKernelError`` when priced (no pooled or prefix
        fallback is written). Conversion kernels need ``absorb_layout`` (the predictor prices the network's own
        kernels).
        """
        import hwnas
        from hwnas.builder._config import default_name, utc_now
        from hwnas.builder._fit import ZERO_COST_OPS
        from hwnas.device import describe
        from hwnas.predictor import write_predictor

        if self.block:
            raise ValueError("a predictor prices the network's own kernels: fit with block=0 and absorb_layout")
        a, b, c = self.overhead
        from hwnas.builder._calibrate import SCALE_BOUNDS

        # a free single-op type is written as a zero-cost op, a free chain as a zero-cost kernel type; ops free
        # on every backend (dropout, identity) are never priced, not even by a borrowed regressor
        free_ops = {t for t in self.free_types if "-" not in t} | set(ZERO_COST_OPS) | set(_ALWAYS_FREE)
        free_chains = sorted(t for t in self.free_types if "-" in t)
        # a pool's regressor is written once, under each member type (write_predictor stores it once)
        own = sorted(t for t in self.specs if not t.endswith(POOLED) and t not in free_ops and t not in free_chains)
        regressors = {t: self.regressors[t] for t in own}
        specs = {t: self.specs[t] for t in own}
        scale = {t: float(self.scale) for t in own}
        terms = {t: {"per_kernel": float(b), "per_mparam": float(c)} for t in own}
        transfer = None
        borrowed: list[str] = []
        if complete_from is not None:
            theirs = complete_from.kernel_specs
            borrowed = sorted(t for t in complete_from.regressors
                              if t not in regressors and t not in free_ops and t not in free_chains)
            for t in borrowed:
                regressors[t] = complete_from.regressors[t]
                specs[t] = theirs[t]
                # within the calibration's bounds (a factor at a bound times a scale below 1 would leave them)
                scale[t] = float(np.clip(float(complete_from.kernel_scale.get(t, 1.0)) * float(self.scale),
                                         *SCALE_BOUNDS))
                extra = {k: float(v) * float(self.scale) for k, v in complete_from.kernel_terms.get(t, {}).items()}
                terms[t] = {**extra, "per_kernel": extra.get("per_kernel", 0.0) + float(b),
                            "per_mparam": extra.get("per_mparam", 0.0) + float(c)}
            if complete_from.transfer_default is not None:
                transfer = {"form": "in-network types as fitted; borrowed types as " + complete_from.name,
                            "kernel_types": {**{t: [0.0, 1.0] for t in own},
                                             **{t: list(complete_from.transfer.get(t, complete_from.transfer_default))
                                                for t in borrowed}},
                            "default": [0.0, 1.0]}
        meta = {
            "name": name or default_name("onnxruntime-cpu", fp), "version": utc_now()[:10].replace("-", "."),
            "backend": "onnxruntime-cpu", "device": {"description": describe(fp), "fingerprint": fp},
            "runtime": dict(fp.get("runtimes", {})), "threads": 1, "batch_size": 1, "precision": "fp32",
            "units": "ms",
            "protocol": {"labels": "in-network: ONNX Runtime profiles of whole networks (median node time over the "
                                   "profiled runs), layout conversions in the kernel on their plain side",
                         "overhead": "a + b * kernels + c * Mweights on top of the kernel sum, fitted on "
                                     "end-to-end medians in relative error",
                         "profiler_ms_per_node": float(self.node_overhead_ms),
                         "pooled_kernel_types": {p: list(m) for p, m in self.pools.items()},
                         "borrowed_kernel_types": borrowed,
                         "borrowed_from": complete_from.name if complete_from is not None else None},
            # a rule whose kernel type has no regressor and is not free (a prefix no label had) is left out:
            # its ops are priced one by one rather than refused
            "fusion_rules": [r for r in self.rules.to_list()
                             if "-".join(r) in regressors or "-".join(r) in free_chains],
            "zero_cost_ops": sorted(free_ops), "zero_cost_kernels": free_chains,
            "model_overhead_ms": float(max(a, 0.0)), "kernels": specs,
            "calibration": {"intercept_ms": 0.0, "kernel_scale": scale, "kernel_terms": terms,
                            "n_networks": int(self.n_networks)},
            "created": utc_now(), "hwnas_version": hwnas.__version__, "accuracy": dict(notes or {}),
        }
        if transfer is not None:
            meta["transfer"] = transfer
        if complete_from is not None:   # what that predictor could not measure, this one cannot price either
            refused = {t: why for t, why in (complete_from.metadata.get("unsupported_kernel_types") or {}).items()
                       if t not in regressors}
            if refused:
                meta["unsupported_kernel_types"] = refused
        return write_predictor(path, meta, regressors)

__all__ = ["Conversion", "InNetworkModel", "conversion_kernel", "derive_fusion_rules", "rule_labels", "trace_labels"]
