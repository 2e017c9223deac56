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


def profile_onnxruntime(model: Any, input_shape: Sequence[int], rules: FusionRules, *, runs: int = 20,
                        warmup: int = 5, threads: int = 1) -> NetworkProfile:
    """Run ``model`` under ONNX Runtime's profiler and give each of its kernels its in-network time.

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
    import onnx
    import onnxruntime as ort

    from hwnas.builder._backends import OnnxRuntimeCPU, _example_input, check_input_shape, ort_session_options
    from hwnas.graph import capture

    shape = check_input_shape(input_shape)
    x = _example_input(shape)
    data = OnnxRuntimeCPU()._onnx_bytes(model, x)
    proto = onnx.load_from_string(data)
    graph = capture(proto, "onnx", shape)
    kernels = detect_kernels(graph, rules)
    tensor, node = _tensor_owners(proto, graph)
    with tempfile.TemporaryDirectory() as tmp:
        so = ort_session_options(threads)   # as the onnxruntime-cpu backend measures
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "profile")
        sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.numpy()}
        for _ in range(warmup + runs):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            trace = json.load(f)
    per, ops, run_ms = _events(trace, runs)
    kernel_of = {n.name: i for i, k in enumerate(kernels) for n in k.nodes}
    kernel_ms = np.zeros(len(kernels))
    timed: set[int] = set()
    reorder_ms, reorders, lost_ms, lost = 0.0, 0, 0.0, []
    for name, durations in per.items():
        ms = float(np.median(durations))
        if ops[name] in REORDER_OPS:
            reorder_ms += ms
            reorders += 1
            continue
        owner = _resolve(name, tensor, node)
        if owner is None or owner not in kernel_of:
            lost_ms += ms
            lost.append(f"{name} ({ops[name]})")
            continue
        kernel_ms[kernel_of[owner]] += ms
        timed.add(kernel_of[owner])
    absorbed = [i for i in range(len(kernels)) if i not in timed]
    nodes_ms = float(kernel_ms.sum() + reorder_ms + lost_ms)
    return NetworkProfile(kernels, kernel_ms, absorbed, reorder_ms, reorders, lost_ms, lost, nodes_ms,
                          float(np.median(run_ms)))
