"""Graph passes shared by every front-end, so the same network gives the same op graph from any format.

- ``reshape → permute → reshape`` back to the original 4-d shape is a channel shuffle.
- SPOS's shuffle-and-split (``reshape`` to ``(N*C/k, k, H*W)``, swap the first two axes, ``reshape`` to
  ``(k, N, C/k, H, W)``, then ``x[0]`` ... ``x[k-1]``) is a ``channel_shuffle`` followed by a ``split`` into ``k``
  parts on the channel axis: the same data movement as ShuffleNetV2's shuffle and chunk, so both price alike.
- ``x * sigmoid(x)`` (how ONNX exporters write SiLU) is ``silu``.
- ``conv → bn`` (the convolution read by nothing else) is one convolution with a bias: every backend folds an
  inference batch norm into the convolution before it, and an ONNX file exported in eval mode arrives folded
  already; folding here gives a network the same ops whichever route it comes in by.
- ``fc`` without bias → ``add`` of a constant (how exporters write a linear layer on a 3-d input: MatMul, Add) is
  one ``fc`` with a bias.
- A ``concat`` of one tensor is no op (the dynamo exporter drops it), a concat read only by a concat on the same
  axis is part of it (exporters merge them); a ``permute`` that only moves axes of size 1, or a ``slice`` that
  keeps every element, is a ``reshape``, and a reshape read only by a reshape is part of it (exporters write
  each of these either way).
- ``adaptive_avgpool`` whose output size divides its input is the plain ``avgpool`` it computes (kernel = stride
  = input / output), as the ONNX exporters and TorchScript write it.
- Every op must be canonical (a key of :data:`~hwnas.graph._ir.CANONICAL_OPS`).
"""

from __future__ import annotations

from hwnas.errors import UnsupportedOpError
from hwnas.graph._ir import CANONICAL_OPS, OpGraph, OpNode



#: Attribute of an op that read some inputs through a single-input concat the graph no longer has: the input
#: positions (see :func:`drop_no_op_data_movement`).
COPIED_INPUTS = "copied_inputs"

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


def fold_shuffle_split(graph: OpGraph) -> OpGraph:
    """Rewrite SPOS's shuffle-and-split as ``channel_shuffle`` → ``split`` (axis 1).

    The chain is ``reshape (N, C, H, W) → (N*C/k, k, H*W)``, a ``permute`` to ``(k, N*C/k, H*W)``, a ``reshape`` to
    ``(k, N, C/k, H, W)`` and ``k`` selects along its first axis, each ``(N, C/k, H, W)``. Part ``j`` holds channels
    ``j, j+k, ...``: the inverse of the ``groups=k`` channel shuffle, which moves the same bytes, so the shuffle is
    recorded with ``groups=k``. The shuffle takes the second reshape's name, the split the first select's; the
    other selects' readers read the split, as for the ``split`` of a ``chunk``.
    """
    drop: set[str] = set()
    new: dict[str, OpNode] = {}
    rename: dict[str, str] = {}
    for a in graph.nodes:
        if a.op != "reshape" or len(a.input_shapes[0]) != 4 or len(a.output_shape) != 3:
            continue
        n, ch, h, w = a.input_shapes[0]
        m, k, hw = a.output_shape
        if k < 2 or ch % k or m != n * ch // k or hw != h * w:
            continue
        ca = graph.consumers(a.name)
        if len(ca) != 1 or graph[ca[0]].op != "permute" or tuple(graph[ca[0]].output_shape) != (k, m, hw):
            continue
        b = graph[ca[0]]
        cb = graph.consumers(b.name)
        if len(cb) != 1 or graph[cb[0]].op != "reshape" or tuple(graph[cb[0]].output_shape) != (k, n, ch // k, h, w):
            continue
        c = graph[cb[0]]
        parts = [graph[i] for i in graph.consumers(c.name)]
        if len(parts) != k or any(p.op != "slice" or tuple(p.output_shape) != (n, ch // k, h, w) for p in parts):
            continue
        drop.update({a.name, b.name})
        new[c.name] = OpNode(c.name, "channel_shuffle", list(a.inputs), list(a.input_shapes), (n, ch, h, w),
                             {"groups": int(k)})
        new[parts[0].name] = OpNode(parts[0].name, "split", [c.name], [(n, ch, h, w)], parts[0].output_shape,
                                    {"axis": 1})
        rename.update({p.name: parts[0].name for p in parts[1:]})
    return _rewire(graph, drop, new, rename) if new else graph


def _rewire(graph: OpGraph, drop: set[str], new: dict[str, OpNode], rename: dict[str, str]) -> OpGraph:
    """``graph`` without ``drop`` and the nodes named in ``rename``, with ``new`` in place of nodes of the same
    name, and every input named in ``rename`` read from its new name (once per reader)."""
    nodes = []
    for n in graph.nodes:
        if n.name in drop or n.name in rename:
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
    return _rewire(graph, set(), new, rename) if new else graph


def fold_batchnorm(graph: OpGraph) -> OpGraph:
    """Fold each ``bn`` that reads a ``conv``/``dwconv`` output nothing else reads into that convolution (which then
    has a bias), as the backends do at inference. Consumers of the batch norm read the convolution instead."""
    rename: dict[str, str] = {}
    for n in graph.nodes:
        if n.op != "bn" or len(n.inputs) != 1 or n.inputs[0] not in graph:
            continue
        src = graph[n.inputs[0]]
        if src.op in ("conv", "dwconv") and graph.consumers(src.name) == [n.name] \
                and tuple(src.output_shape) == tuple(n.output_shape):
            rename[n.name] = src.name
    return _fold_into_producer(graph, rename, {"bias": True})


def _fold_into_producer(graph: OpGraph, rename: dict[str, str], attrs: dict) -> OpGraph:
    """Drop the nodes keyed in ``rename`` (each into the producer it maps to, which gains ``attrs``); their
    consumers read the producer instead."""
    if not rename:
        return graph
    folded = set(rename.values())
    nodes = []
    for n in graph.nodes:
        if n.name in rename:
            continue
        # a producer can read a dropped node too (a conv-bn reading the previous conv-bn): both are rewritten
        if n.name in folded or any(i in rename for i in n.inputs):
            n = OpNode(n.name, n.op, [rename.get(i, i) for i in n.inputs], list(n.input_shapes), n.output_shape,
                       {**n.attrs, **attrs} if n.name in folded else n.attrs)
        nodes.append(n)
    return OpGraph(nodes, graph.inputs, graph.source)


def fold_bias_add(graph: OpGraph) -> OpGraph:
    """Fold an ``add`` of a constant (one data input) into the bias-free ``fc`` before it, when nothing else reads
    the ``fc``'s output."""
    rename: dict[str, str] = {}
    for n in graph.nodes:
        if n.op != "add" or len(n.inputs) != 1 or n.inputs[0] not in graph:
            continue
        src = graph[n.inputs[0]]
        if src.op == "fc" and not src.attrs.get("bias") and graph.consumers(src.name) == [n.name] \
                and tuple(src.output_shape) == tuple(n.output_shape):
            rename[n.name] = src.name
    return _fold_into_producer(graph, rename, {"bias": True})


def _moves_only_unit_axes(n: OpNode) -> bool:
    """Whether a permute keeps the order of its input's axes longer than 1 (so it moves no data). Told from the
    shapes: the axes longer than 1 read the same in and out, and are all of different lengths (or at most one),
    so each is where it was relative to the others."""
    src = [d for d in n.input_shapes[0] if d != 1]
    out = [d for d in n.output_shape if d != 1]
    return src == out and (len(src) <= 1 or len(set(src)) == len(src))


def drop_no_op_data_movement(graph: OpGraph) -> OpGraph:
    """Remove single-input concats and reshapes read only by a reshape, merge a concat read only by a concat on
    the same axis into it, and rewrite data-preserving permutes and slices as reshapes.

    A reader of a removed single-input concat keeps the positions of the inputs it read through it in
    ``attrs[COPIED_INPUTS]``: a concat copies its input, and a backend may run that copy (TorchScript runs it
    outside its oneDNN groups, which the layout rules of :mod:`hwnas.kernels._layout` read from the mark)."""
    import math

    drop: dict[str, str] = {}
    copies: set[str] = set()   # dropped single-input concats: their readers are marked (COPIED_INPUTS)
    source_shape: dict[str, tuple[int, ...]] = {}   # a dropped node -> the shape its consumers now read
    new: dict[str, OpNode] = {}
    for n in graph.nodes:
        if n.op == "concat" and len(n.inputs) == 1 and tuple(n.input_shapes[0]) == tuple(n.output_shape):
            drop[n.name] = n.inputs[0]
            copies.add(n.name)
        elif (n.op == "permute" and len(n.input_shapes) == 1 and _moves_only_unit_axes(n)) or (
                n.op == "slice" and len(n.input_shapes) == 1
                and math.prod(n.input_shapes[0]) == math.prod(n.output_shape)):
            new[n.name] = OpNode(n.name, "reshape", list(n.inputs), list(n.input_shapes), n.output_shape, {})
    for n in graph.nodes:   # a reshape (or one just made) read only by a reshape
        m = new.get(n.name, n)
        cons = graph.consumers(n.name)
        if m.op == "reshape" and len(cons) == 1 and new.get(cons[0], graph[cons[0]]).op == "reshape":
            drop[n.name] = m.inputs[0]
            source_shape[n.name] = tuple(m.input_shapes[0])
    merged: dict[str, OpNode] = {}
    for n in graph.nodes:   # concat inputs that are concats read only here, on the same axis
        if n.op != "concat" or n.name in drop:
            continue
        ins, shapes = [], []
        for i, sh in zip(n.inputs, n.input_shapes):
            src = graph[i] if i in graph else None
            if src is not None and src.op == "concat" and src.name not in drop and graph.consumers(i) == [n.name] \
                    and src.attrs.get("axis", 1) == n.attrs.get("axis", 1) and len(src.inputs) > 1:
                drop[i] = "__merged__"
                ins += src.inputs
                shapes += src.input_shapes
            else:
                ins.append(i)
                shapes.append(sh)
        if len(ins) != len(n.inputs):
            merged[n.name] = OpNode(n.name, "concat", ins, shapes, n.output_shape, n.attrs)
    if not drop and not new:
        return graph
    nodes = []
    for n in graph.nodes:
        if n.name in drop:
            continue
        n = merged.get(n.name) or new.get(n.name, n)
        if any(i in drop for i in n.inputs):
            shapes = [_source_shape(drop, source_shape, i, sh) for i, sh in zip(n.inputs, n.input_shapes)]
            attrs = n.attrs
            copied = [k for k, i in enumerate(n.inputs) if i in copies]
            if copied:   # the backend may still run the copy (TorchScript does: a plain op, see hwnas.kernels._layout)
                attrs = {**attrs, COPIED_INPUTS: sorted(set(attrs.get(COPIED_INPUTS, [])) | set(copied))}
            n = OpNode(n.name, n.op, [_follow(drop, i) for i in n.inputs], shapes, n.output_shape, attrs)
        nodes.append(n)
    return OpGraph(nodes, graph.inputs, graph.source)


def _source_shape(drop: dict[str, str], source_shape: dict[str, tuple[int, ...]], name: str,
                  shape: tuple[int, ...]) -> tuple[int, ...]:
    while name in drop:
        shape = source_shape.get(name, shape)
        name = drop[name]
    return shape


def _follow(drop: dict[str, str], name: str) -> str:
    while name in drop:
        name = drop[name]
    return name


def fold_adaptive_pool(graph: OpGraph) -> OpGraph:
    """Rewrite each ``adaptive_avgpool`` whose output divides its (4-d) input as the equivalent ``avgpool``."""
    new: dict[str, OpNode] = {}
    for n in graph.nodes:
        if n.op != "adaptive_avgpool" or len(n.input_shapes) != 1 or len(n.input_shapes[0]) != 4:
            continue
        (hi, wi), (ho, wo) = n.input_shapes[0][2:], n.output_shape[2:]
        if ho and wo and hi % ho == 0 and wi % wo == 0:
            k = (hi // ho, wi // wo)
            new[n.name] = OpNode(n.name, "avgpool", list(n.inputs), list(n.input_shapes), n.output_shape,
                                 {"kernel": k, "stride": k, "padding": (0, 0), "ceil_mode": False})
    return OpGraph(_replace(graph.nodes, set(), new), graph.inputs, graph.source) if new else graph


def check_vocabulary(graph: OpGraph) -> OpGraph:
    """Raise :class:`UnsupportedOpError` for the first op outside the canonical vocabulary."""
    for i, n in enumerate(graph.nodes):
        if n.op not in CANONICAL_OPS:
            raise UnsupportedOpError(n.op, n.name, i, graph.source)
    return graph


def finalize(graph: OpGraph) -> OpGraph:
    """Apply the shared passes and the vocabulary check (what every front-end ends with)."""
    graph = fold_silu(fold_channel_shuffle(fold_slices_into_split(fold_shuffle_split(graph))))
    graph = fold_adaptive_pool(fold_bias_add(fold_batchnorm(drop_no_op_data_movement(graph))))
    return check_vocabulary(graph)


def canonicalize(graph: OpGraph) -> OpGraph:
    """``graph`` in today's canonical form: the shared passes and the vocabulary check, as every capture ends.

    A graph captured now is unchanged; one stored by an older hwnas (before a pass was added) comes out as a
    capture of the same network would today. The passes only merge, drop or rename nodes: every node of the
    result keeps the name of a node of ``graph``.
    """
    return finalize(graph)
