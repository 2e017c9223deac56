"""Kernel latencies as they run inside a network: per-node profiles of ONNX Runtime, mapped onto hwnas kernels.

A kernel timed on its own keeps its weights in cache and pays no layout conversion; inside a network it may do
both, or be fused into a neighbour the fusion rules do not know of. ONNX Runtime's profiler
(``SessionOptions.enable_profiling``) records the duration of every node of the optimised graph in every run.
:func:`profile_onnxruntime` runs a network under it and gives each hwnas kernel of the network (under given
fusion rules) the time of the optimised nodes that compute it:

- an optimised node is named after the tensor it writes (``<tensor>_nchwc`` after the NCHWc layout pass) or keeps
  the ONNX node's name; either leads to the hwnas op that produces that tensor, and through it to its kernel;
- a fused node (Conv+BatchNorm+Relu, Conv+Add) carries the time of every op it absorbed: hwnas ops with no node
  of their own are reported as ``absorbed`` (their kernel's time is that of the node that computed them);
- layout conversions (``ReorderInput``/``ReorderOutput``) are no hwnas op: their time and count are reported apart.

Per node, the median over the profiled runs is taken. The node times add up to ``nodes_ms``; the run itself
(``run_ms``, the profiler's ``model_run``) is longer by the session's own work between nodes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Sequence

import numpy as np

from hwnas.errors import CaptureError
from hwnas.graph import OpGraph, canonicalize
from hwnas.kernels import FusionRules, Kernel, detect_kernels

#: Suffixes ONNX Runtime's graph transformers append to the names of the nodes they rewrite.
_SUFFIXES = ("_kernel_time", "_nchwc", "_bn", "_fused", "_token")
REORDER_OPS = ("ReorderInput", "ReorderOutput")


@dataclasses.dataclass
class NetworkProfile:
    """One network's in-network kernel times.

    Attributes
    ----------
    kernels : list of Kernel
        The network's kernels under the fusion rules given.
    kernel_ms : ndarray
        In-network time of each kernel, ms (median over runs of the nodes attributed to it).
    absorbed : list of int
        Indices of kernels none of whose ops has a node of its own (fused by the backend into a neighbour; their
        ``kernel_ms`` is 0 and their time is in that neighbour's).
    reorder_ms : float
        Time of the layout conversions, ms.
    reorders : int
        Number of layout-conversion nodes.
    unattributed_ms : float
        Time of nodes that lead to no hwnas op (listed in ``unattributed``), ms.
    nodes_ms : float
        Sum of every node's median time, ms: ``kernel_ms.sum() + reorder_ms + unattributed_ms``.
    run_ms : float
        Median duration of a whole profiled run, ms.
    """

    kernels: list[Kernel]
    kernel_ms: np.ndarray
    absorbed: list[int]
    reorder_ms: float
    reorders: int
    unattributed_ms: float
    unattributed: list[str]
    nodes_ms: float
    run_ms: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary with one row per kernel (type, features, ms)."""
        return {"kernels": [{"type": k.type, "features": k.features, "ms": float(t)}
                            for k, t in zip(self.kernels, self.kernel_ms)],
                "absorbed": list(self.absorbed), "reorder_ms": self.reorder_ms, "reorders": self.reorders,
                "unattributed_ms": self.unattributed_ms, "unattributed": list(self.unattributed),
                "nodes_ms": self.nodes_ms, "run_ms": self.run_ms}


def _tensor_owners(proto: Any, graph: Any) -> tuple[dict[str, str], dict[str, str]]:
    """ONNX tensor → hwnas op, and ONNX node name → hwnas op. An ONNX node with no hwnas op of its own (an
    alias, a batch norm folded into its convolution) belongs to the op of its first data input."""
    names = {n.name for n in graph.nodes}
    tensor: dict[str, str] = {i: "input" for i in graph.inputs}
    tensor.update({i.name: "input" for i in proto.graph.input})
    node: dict[str, str] = {}
    for i, n in enumerate(proto.graph.node):
        own = n.name or f"{n.op_type}_{i}"
        if own in names:
            owner = own
        else:
            owner = next((tensor[x] for x in n.input if x in tensor and tensor[x] != "input"), None)
        if owner is None:
            continue
        node[own] = owner
        for out in n.output:
            tensor[out] = owner
    return tensor, node


def _resolve(name: str, tensor: dict[str, str], node: dict[str, str]) -> str | None:
    # a fusion that builds a node of another type names it "<node>/<Name>Fusion/" (QuickGelu for x * sigmoid(x),
    # Split for the two Slices of a channel split)
    parts = name.rstrip("/").rsplit("/", 1)
    if len(parts) == 2 and parts[1].endswith("Fusion"):
        name = parts[0]
    while True:
        for table in (node, tensor):
            if name in table and table[name] != "input":
                return table[name]
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        else:
            return None


def _events(trace: list[dict[str, Any]], runs: int) -> tuple[dict[str, list[float]], dict[str, str], list[float]]:
    """Per node name the durations (ms) in the last ``runs`` runs, its op type, and the run durations (ms)."""
    sessions = sorted((e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"),
                      key=lambda e: e["ts"])[-runs:]
    if not sessions:
        raise CaptureError("the ONNX Runtime profile holds no model_run event")
    start = sessions[0]["ts"]
    per: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        name = e["name"][: -len("_kernel_time")]
        per.setdefault(name, []).append(e["dur"] / 1e3)
        ops[name] = (e.get("args") or {}).get("op_name", "")
    return per, ops, [s["dur"] / 1e3 for s in sessions]


@dataclasses.dataclass
class NodeTrace:
    """One network as ONNX Runtime ran it: every optimised node with its median time and the hwnas op it is
    anchored to. The raw material of in-network kernel labels: fusion, layout conversions and kernel times can all
    be derived from it again later, under any fusion rules (:func:`ort_kernel_groups`, :func:`profile_from_trace`).

    Attributes
    ----------
    graph : OpGraph
        The network's op graph (as the ``onnx`` front-end captures the exported model).
    nodes : list of tuple
        ``(name, op_type, ms, anchor)`` per optimised node: median time over the profiled runs in ms, and the hwnas
        op whose output the node is named after; a node ONNX Runtime generated under a name of its own gets the
        anchor of the node whose output it reads (None when neither leads to an op).
    reorders : list of tuple
        ``(op_type, ms, source, targets)`` per layout conversion: the hwnas op whose output it converts (the
        producer's anchor; ``"input"`` for the graph input) and the anchors of the nodes reading the converted
        tensor.
    run_ms : float
        Median duration of a whole profiled run, ms.
    """

    graph: OpGraph
    nodes: list[tuple[str, str, float, str | None]]
    reorders: list[tuple[str, float, str, list[str]]]
    run_ms: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the graph as its JSON text); :meth:`from_dict` reads it back."""
        return {"graph": self.graph.to_json(), "nodes": [list(n) for n in self.nodes],
                "reorders": [[k, ms, src, list(t)] for k, ms, src, t in self.reorders], "run_ms": self.run_ms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NodeTrace":
        """Read :meth:`to_dict`'s form. The graph is brought to today's canonical form
        (:func:`hwnas.graph.canonicalize`: a trace stored before a graph pass was added reads as a fresh trace
        of the network would), and an anchor whose op a pass removed moves to the op of that op's first input,
        the rule a fresh trace follows for an ONNX node with no hwnas op of its own."""
        stored = OpGraph.from_json(d["graph"])
        graph = canonicalize(stored)
        anchor = _reanchor(stored, graph)
        return cls(graph, [(str(a), str(b), float(c), anchor(e)) for a, b, c, e in d["nodes"]],
                   [(str(a), float(b), str(anchor(c)), [str(anchor(x)) for x in t]) for a, b, c, t in d["reorders"]],
                   float(d["run_ms"]))


def _reanchor(stored: OpGraph, graph: OpGraph) -> Any:
    """Map an anchor of ``stored`` onto ``graph`` (its canonical form): kept if the op is still there, else the
    anchor of its first input (``"input"`` for the graph input, None if it has no input)."""
    kept = {n.name for n in graph.nodes}
    if len(kept) == len(stored.nodes):
        return lambda name: name
    old = {n.name: n for n in stored.nodes}

    def anchor(name: str | None) -> str | None:
        seen = set()
        while name is not None and name not in kept and name in old and name not in seen:
            seen.add(name)
            ins = old[name].inputs
            name = ins[0] if ins else None
        return "input" if name in stored.inputs else name

    return anchor


def _reorder_links(optimized: Any, anchor_of: dict[str, str | None]) -> dict[str, tuple[str, list[str]]]:
    """Per layout-conversion node of the optimised graph: the anchor of the node producing its input and the
    anchors of the nodes reading its output (conversions chained through conversions are followed)."""
    producer = {o: n for n in optimized.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in optimized.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def source(tensor: str) -> str:
        n = producer.get(tensor)
        if n is None:
            return "input"
        if n.op_type in REORDER_OPS:
            return source(n.input[0])
        return anchor_of.get(n.name) or "?"

    def targets(tensor: str) -> list[str]:
        out: list[str] = []
        for n in readers.get(tensor, []):
            out.extend(targets(n.output[0]) if n.op_type in REORDER_OPS else [anchor_of.get(n.name) or "?"])
        return out

    return {n.name: (source(n.input[0]), targets(n.output[0]))
            for n in optimized.node if n.op_type in REORDER_OPS}


def _inherit_anchors(optimized: Any, anchor_of: dict[str, str | None]) -> None:
    """Give a node ONNX Runtime generated (a ``Squeeze_token_3``, a ``Reshape_new_reshape``: named after no
    tensor of the exported model) the anchor of the node producing its first input, through layout conversions;
    in topological order, so chains of generated nodes inherit too. Nodes reading only the graph input keep
    None."""
    producer = {o: n for n in optimized.node for o in n.output}
    for n in optimized.node:
        if n.op_type in REORDER_OPS or anchor_of.get(n.name) is not None or not n.input:
            continue
        src = producer.get(n.input[0])
        while src is not None and src.op_type in REORDER_OPS:
            src = producer.get(src.input[0])
        if src is not None:
            anchor_of[n.name] = anchor_of.get(src.name)


def trace_onnxruntime(model: Any, input_shape: Sequence[int], *, runs: int = 20, warmup: int = 5,
                      threads: int = 1) -> NodeTrace:
    """Run ``model`` under ONNX Runtime's profiler and record every optimised node's time.

    Parameters
    ----------
    model : nn.Module, onnx.ModelProto, bytes or path
        The network (a module is exported as the ``onnxruntime-cpu`` backend exports it).
    input_shape : sequence of int
        Input shape with batch.
    runs, warmup : int
        Profiled runs kept, after ``warmup`` runs that are not.
    threads : int
        Intra-op threads (1, as the builder measures).

    Returns
    -------
    NodeTrace
    """
    import onnx
    import onnxruntime as ort

    from hwnas.builder._backends import OnnxRuntimeCPU, _example_input, check_input_shape, ort_session_options
    from hwnas.graph import capture

    shape = check_input_shape(input_shape)
    x = _example_input(shape)
    data = OnnxRuntimeCPU()._onnx_bytes(model, x)
    proto = onnx.load_from_string(data)
    graph = capture(proto, "onnx", shape)
    tensor, node = _tensor_owners(proto, graph)
    with tempfile.TemporaryDirectory() as tmp:
        so = ort_session_options(threads)   # as the onnxruntime-cpu backend measures
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "profile")
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.numpy()}
        for _ in range(warmup + runs):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            trace = json.load(f)
        optimized = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
    per, ops, run_ms = _events(trace, runs)
    anchor_of = {n.name: (None if n.op_type in REORDER_OPS else _resolve(n.name, tensor, node))
                 for n in optimized.node}
    _inherit_anchors(optimized, anchor_of)
    links = _reorder_links(optimized, anchor_of)
    nodes, reorders = [], []
    for name, durations in per.items():
        ms = float(np.median(durations))
        if ops[name] in REORDER_OPS:
            src, dst = links.get(name, ("?", []))
            reorders.append((ops[name], ms, src, dst))
        else:
            nodes.append((name, ops[name], ms, anchor_of.get(name, _resolve(name, tensor, node))))
    return NodeTrace(graph, nodes, reorders, float(np.median(run_ms)))


def profile_from_trace(trace: NodeTrace, rules: FusionRules) -> NetworkProfile:
    """Give each kernel of ``trace``'s network under ``rules`` the time of the optimised nodes anchored to its
    ops (see :class:`NetworkProfile`)."""
    kernels = detect_kernels(trace.graph, rules)
    kernel_of = {n.name: i for i, k in enumerate(kernels) for n in k.nodes}
    kernel_ms = np.zeros(len(kernels))
    timed: set[int] = set()
    lost_ms, lost = 0.0, []
    for name, op_type, ms, anchor in trace.nodes:
        if anchor is None or anchor not in kernel_of:
            lost_ms += ms
            lost.append(f"{name} ({op_type})")
            continue
        kernel_ms[kernel_of[anchor]] += ms
        timed.add(kernel_of[anchor])
    reorder_ms = float(sum(ms for _, ms, _, _ in trace.reorders))
    absorbed = [i for i in range(len(kernels)) if i not in timed]
    nodes_ms = float(kernel_ms.sum() + reorder_ms + lost_ms)
    return NetworkProfile(kernels, kernel_ms, absorbed, reorder_ms, len(trace.reorders), lost_ms, lost, nodes_ms,
                          trace.run_ms)


def profile_onnxruntime(model: Any, input_shape: Sequence[int], rules: FusionRules, *, runs: int = 20,
                        warmup: int = 5, threads: int = 1) -> NetworkProfile:
    """Run ``model`` under ONNX Runtime's profiler and give each of its kernels its in-network time
    (:func:`trace_onnxruntime`, then :func:`profile_from_trace`).

    Parameters
    ----------
    model : nn.Module, onnx.ModelProto, bytes or path
        The network (a module is exported as the ``onnxruntime-cpu`` backend exports it).
    input_shape : sequence of int
        Input shape with batch.
    rules : FusionRules
        The fusion rules whose kernels get the times (a predictor's ``rules``).
    runs, warmup : int
        Profiled runs kept, after ``warmup`` runs that are not.
    threads : int
        Intra-op threads (1, as the builder measures).

    Returns
    -------
    NetworkProfile
    """
    return profile_from_trace(trace_onnxruntime(model, input_shape, runs=runs, warmup=warmup, threads=threads),
                              rules)


#: ONNX Runtime node types (lower case, without ``nchwc``/``fused`` prefixes) → the hwnas ops such a node can start
#: with: a fused node is named after the tensor it writes (the last op it computes), its main op is the nearest one
#: of these behind it. Types not listed start with the op they are named after.
_MAIN_OPS = {
    "conv": ("conv", "dwconv", "bn"), "maxpool": ("maxpool",), "averagepool": ("avgpool", "adaptive_avgpool"),
    "globalaveragepool": ("global_avgpool", "adaptive_avgpool"), "gemm": ("fc", "matmul"),
    "matmul": ("fc", "matmul"), "batchnormalization": ("bn",),
}


def _main_types(op_type: str) -> tuple[str, ...] | None:
    t = op_type.lower()
    for prefix in ("nchwc", "fused"):
        t = t[len(prefix):] if t.startswith(prefix) else t
    return _MAIN_OPS.get(t)


def ort_kernel_groups(trace: NodeTrace) -> tuple[list[Kernel], np.ndarray]:
    """The kernels as ONNX Runtime ran them, each with its in-network time (ms).

    An optimised node is named after the tensor it writes, so its anchor is the *last* op it computes; its first
    op is found by walking back from the anchor over ops that no other node is named after and that feed only
    this chain, to the nearest op the node's type computes (a ``Conv`` node named after a ``relu`` starts at the
    convolution behind it). Ops no node covers were fused by ONNX Runtime into a neighbour that is not named
    after them (``conv → add → relu`` as one ``NchwcConv`` named after the convolution): each joins the kernel of
    its topologically latest producer. A kernel's time is the sum of its nodes' times; ops covered by no node and
    with no producer form kernels of their own with time 0.
    """
    from hwnas.kernels import kernel_features

    graph = trace.graph
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    anchors: dict[str, list[tuple[str, float]]] = {}
    for _, op_type, ms, anchor in trace.nodes:
        if anchor is not None and anchor in order:
            anchors.setdefault(anchor, []).append((op_type, ms))
    head_of: dict[str, str] = {}
    ms_of: dict[str, float] = {}
    for anchor, rows in sorted(anchors.items(), key=lambda kv: order[kv[0]]):
        ms_of[anchor] = sum(ms for _, ms in rows)
        chain = [anchor]
        wanted = _main_types(rows[0][0])
        if wanted is not None and graph[anchor].op not in wanted:
            cur = anchor
            while True:
                ins = [p for p in graph[cur].inputs if p in order]
                if not ins:
                    break
                p = ins[0]
                if p in anchors or p in head_of or len(graph.consumers(p)) != 1:
                    break
                chain.append(p)
                if graph[p].op in wanted:
                    break
                cur = p
            if graph[chain[-1]].op not in wanted:
                chain = [anchor]
        for op in chain:
            head_of[op] = anchor
    members: dict[str, list[Any]] = {}
    for n in graph.nodes:
        if n.name not in head_of:
            producers = [p for p in n.inputs if p in head_of]
            head_of[n.name] = head_of[max(producers, key=order.__getitem__)] if producers else n.name
        members.setdefault(head_of[n.name], []).append(n)
    kernels, ms = [], []
    for head, nodes in members.items():
        kernels.append(Kernel("-".join(n.op for n in nodes), nodes, kernel_features(nodes)))
        ms.append(ms_of.get(head, 0.0))
    return kernels, np.asarray(ms)
