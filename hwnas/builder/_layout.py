"""Layout conversions a backend inserts into a network, predicted from the op graph (rules as data).

ONNX Runtime's NCHWc transformer runs convolutions, pools, batch norms, element-wise ops and concats in a blocked
channel layout (channels in blocks of 8 with AVX2, 16 with AVX-512) where it can, and inserts a conversion
wherever a tensor crosses between the blocked and the plain layout: ``ReorderInput`` (plain → blocked) before a
blocked convolution fed by a plain tensor, ``ReorderOutput`` (blocked → plain) after a blocked tensor read by an op
that has no blocked kernel. Which ops run blocked, and on what condition, is the data in :data:`ORT_NCHWC`; the
block size comes from the CPU's vector width. :func:`layout_conversions` propagates the layout through a graph
and returns one conversion per converted tensor (each tensor is converted once, whatever reads it).

The rules are checked against the compiled graphs of the zoo (``experiments/benchmarks/kernel_context.py``
reports the share of networks whose predicted conversion count equals ONNX Runtime's).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hwnas.graph import OpGraph, OpNode

#: ONNX Runtime (CPU, NCHWc) layout rules, as ONNX Runtime 1.32's NCHWc transformer applies them (checked on its
#: optimised graphs of small probe networks and of the zoo, with blocks of 8 and 16; tests/unit/test_layout.py).
#: Channel counts are logical (a blocked tensor is padded up to the block; the padding is not counted).
#:
#: - ``conv``: a convolution with fewer input channels than the block reads the plain tensor itself (the first
#:   convolution reads the image so) and writes a blocked one; otherwise it runs blocked when its input channels are
#:   a multiple of ``channel_align`` (ONNX Runtime pads them up to the block), whatever the layout of its input (a
#:   plain input gets a ``ReorderInput``), and plain otherwise. A depthwise convolution runs blocked when its
#:   channels are a multiple of ``channel_align``; another grouped convolution when each group's input and output
#:   channels are multiples of the block.
#: - ``pool``: runs blocked when its input is blocked and its channels are a multiple of the block.
#: - ``follow``: ops that run blocked when every tensor input is blocked (``same_shape`` ones: of one shape).
#: - ``concat``: blocked when every input is blocked and has a multiple of the block channels.
#: - Every other op reads plain tensors.
ORT_NCHWC: dict[str, Any] = {
    "block": {"avx512": 16, "avx2": 8, "default": 4},
    "conv_ops": ["conv", "dwconv"],
    "channel_align": 4,
    "pool": ["maxpool", "avgpool", "global_avgpool"],
    "follow": ["relu", "relu6", "sigmoid", "hsigmoid", "hswish", "silu", "tanh", "bn", "add"],
    "same_shape": ["add"],
    "concat": ["concat"],
}


@dataclasses.dataclass(frozen=True)
class Conversion:
    """One layout conversion: ``kind`` (``to_blocked`` or ``to_plain``) of the output of op ``source``
    (``"input"`` for the graph input), a tensor of ``shape``."""

    kind: str
    source: str
    shape: tuple[int, ...]


def block_size(isa: str | None, rules: dict[str, Any] = ORT_NCHWC) -> int:
    """Channel block of the blocked layout on a CPU whose widest vector extension is ``isa``."""
    blocks = rules["block"]
    return int(blocks.get((isa or "").lower(), blocks["default"]))


def _conv_blocked(node: OpNode, block: int, rules: dict[str, Any]) -> tuple[bool, bool]:
    """(runs blocked, reads its input plain) for a convolution."""
    a = node.attrs
    cin, cout, groups = int(a.get("cin", 0)), int(a.get("cout", 0)), int(a.get("groups", 1) or 1)
    align = int(rules["channel_align"])
    if groups > 1:
        if groups == cin == cout:
            return cout % align == 0, False
        return (cin // groups) % block == 0 and (cout // groups) % block == 0, False
    if cin < block:
        return True, True
    return cin % align == 0, False


def layout_conversions(graph: OpGraph, block: int, rules: dict[str, Any] = ORT_NCHWC) -> list[Conversion]:
    """The conversions the backend inserts into ``graph`` with channel block ``block`` (one per converted
    tensor, in topological order of their source)."""
    blocked: dict[str, bool] = {i: False for i in graph.inputs}
    plain_reader: dict[str, bool] = {}       # tensor → read by an op that needs it plain
    blocked_reader: dict[str, bool] = {}     # plain tensor → read by a blocked convolution
    shapes: dict[str, tuple[int, ...]] = {}
    follow, same, concat = set(rules["follow"]), set(rules["same_shape"]), set(rules["concat"])
    pool = set(rules["pool"])
    for node in graph.nodes:
        ins = [i for i in node.inputs if i in blocked]
        for i, s in zip(node.inputs, node.input_shapes):
            shapes.setdefault(i, tuple(s))
        shapes[node.name] = tuple(node.output_shape)
        if node.op in rules["conv_ops"]:
            on, reads_plain = _conv_blocked(node, block, rules)
            if on and not reads_plain:
                for i in ins:
                    if not blocked[i]:
                        blocked_reader[i] = True
            else:
                for i in ins:
                    plain_reader[i] = plain_reader.get(i, False) or blocked[i]
            blocked[node.name] = on
            continue
        all_blocked = bool(ins) and all(blocked[i] for i in ins)
        if node.op in follow and all_blocked and len(node.output_shape) == 4:
            if node.op in same and len({tuple(s) for s in node.input_shapes}) > 1:
                all_blocked = False
        elif node.op in pool and all_blocked and len(node.output_shape) == 4:
            all_blocked = int(node.input_shapes[0][1]) % block == 0
        elif node.op in concat and all_blocked:
            all_blocked = all(len(s) == 4 and int(s[1]) % block == 0 for s in node.input_shapes)
        else:
            all_blocked = False
        if not all_blocked:
            for i in ins:
                if blocked[i]:
                    plain_reader[i] = True
        blocked[node.name] = all_blocked
    consumed = {i for n in graph.nodes for i in n.inputs}
    out: list[Conversion] = []
    for name in [*graph.inputs, *(n.name for n in graph.nodes)]:
        if blocked.get(name) and (plain_reader.get(name) or name not in consumed):
            out.append(Conversion("to_plain", name, shapes.get(name, ())))
        if blocked_reader.get(name):
            out.append(Conversion("to_blocked", name, shapes.get(name, ())))
    return out
