"""Graph passes shared by every front-end, so the same network gives the same op graph from any format.

- ``reshape → permute → reshape`` back to the original 4-d shape is a channel shuffle.
- ``x * sigmoid(x)`` (how ONNX exporters write SiLU) is ``silu``.
- Every op must be canonical (a key of :data:`~hwnas.graph._ir.CANONICAL_OPS`).
"""

from __future__ import annotations

from hwnas.errors import UnsupportedOpError
from hwnas.graph._ir import CANONICAL_OPS, OpGraph, OpNode


def _replace(nodes: list[OpNode], drop: set[str], new: dict[str, OpNode]) -> list[OpNode]:
    return [new.get(n.name, n) for n in nodes if n.name not in drop]


def fold_channel_shuffle(graph: OpGraph) -> OpGraph:
    """Collapse reshape(4-d → 5-d) → permute → reshape(→ same 4-d) chains into ``channel_shuffle``."""
    drop: set[str] = set()
    new: dict[str, OpNode] = {}
    for a in graph.nodes:
        if a.op != "reshape" or len(a.output_shape) != 5 or len(a.input_shapes[0]) != 4:
            continue
        ca = graph.consumers(a.name)
        if len(ca) != 1 or graph[ca[0]].op != "permute":
            continue
        b = graph[ca[0]]
        cb = graph.consumers(b.name)
        if len(cb) != 1 or graph[cb[0]].op != "reshape":
            continue
        c = graph[cb[0]]
        if tuple(c.output_shape) != tuple(a.input_shapes[0]):
            continue
        drop.update({a.name, b.name})
        new[c.name] = OpNode(c.name, "channel_shuffle", list(a.inputs), list(a.input_shapes), c.output_shape,
                             {"groups": int(a.output_shape[1])})
    return OpGraph(_replace(graph.nodes, drop, new), graph.inputs, graph.source) if new else graph


def fold_silu(graph: OpGraph) -> OpGraph:
    """Collapse ``mul(x, sigmoid(x))`` into ``silu`` when the sigmoid feeds only that mul."""
    drop: set[str] = set()
    new: dict[str, OpNode] = {}
    for s in graph.nodes:
        if s.op != "sigmoid" or len(s.inputs) != 1:
            continue
        cs = graph.consumers(s.name)
        if len(cs) != 1:
            continue
        m = graph[cs[0]]
        if m.op == "mul" and set(m.inputs) == {s.inputs[0], s.name}:
            drop.add(s.name)
            new[m.name] = OpNode(m.name, "silu", [s.inputs[0]], [s.input_shapes[0]], m.output_shape, {})
    return OpGraph(_replace(graph.nodes, drop, new), graph.inputs, graph.source) if new else graph


def fold_slices_into_split(graph: OpGraph) -> OpGraph:
    """Merge slices of one tensor that partition an axis (how exporters write ``chunk``) into one ``split``."""
    groups: dict[str, list[OpNode]] = {}
    for n in graph.nodes:
        if n.op == "slice" and len(n.inputs) == 1 and len(n.input_shapes[0]) == len(n.output_shape):
            groups.setdefault(n.inputs[0], []).append(n)
    rename: dict[str, str] = {}
    new: dict[str, OpNode] = {}
    for src, slices in groups.items():
        if len(slices) < 2:
            continue
        shape = slices[0].input_shapes[0]
        diff = [i for i in range(len(shape)) if any(s.output_shape[i] != shape[i] for s in slices)]
        if len(diff) != 1 or sum(s.output_shape[diff[0]] for s in slices) != shape[diff[0]]:
            continue
        head = slices[0]
        new[head.name] = OpNode(head.name, "split", [src], [shape], head.output_shape, {"axis": diff[0]})
        rename.update({s.name: head.name for s in slices[1:]})
    if not new:
        return graph
    nodes = []
    for n in graph.nodes:
        if n.name in rename:
            continue
        n = new.get(n.name, n)
        if any(i in rename for i in n.inputs):
            ins, shapes = [], []
            for i, s in zip(n.inputs, n.input_shapes):
                i = rename.get(i, i)
                if i not in ins:
                    ins.append(i)
                    shapes.append(s)
            n = OpNode(n.name, n.op, ins, shapes, n.output_shape, n.attrs)
        nodes.append(n)
    return OpGraph(nodes, graph.inputs, graph.source)


def check_vocabulary(graph: OpGraph) -> OpGraph:
    """Raise :class:`UnsupportedOpError` for the first op outside the canonical vocabulary."""
    for i, n in enumerate(graph.nodes):
        if n.op not in CANONICAL_OPS:
            raise UnsupportedOpError(n.op, n.name, i, graph.source)
    return graph


def finalize(graph: OpGraph) -> OpGraph:
    """Apply the shared passes and the vocabulary check."""
    return check_vocabulary(fold_silu(fold_channel_shuffle(fold_slices_into_split(graph))))
