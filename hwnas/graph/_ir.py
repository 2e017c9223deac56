"""The op graph: one representation for every model format.

A captured model is an :class:`OpGraph`: a list of :class:`OpNode` in topological order, each with a
canonical op type (the vocabulary below), the shapes of its tensor inputs and of its output, and the
attributes that shape its cost (kernel, stride, padding, groups, dilation, channels).

Shapes are tuples of ints in NCHW order for 4-d tensors, and include the batch dimension.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable, Iterator

# Canonical op vocabulary. Capture front-ends map framework ops onto these names and nothing else.
CANONICAL_OPS: dict[str, str] = {
    # convolution-like
    "conv": "2-d convolution (groups < channels)",
    "dwconv": "depthwise 2-d convolution (groups == in channels == out channels / multiplier)",
    "fc": "fully connected (linear) layer",
    "matmul": "matrix multiplication of two activations (attention)",
    # normalisation
    "bn": "batch normalisation (inference)",
    "ln": "layer normalisation",
    # activations
    "relu": "ReLU",
    "relu6": "ReLU6 / hardtanh(0, 6)",
    "hswish": "hard swish",
    "hsigmoid": "hard sigmoid",
    "sigmoid": "sigmoid",
    "silu": "SiLU / swish",
    "gelu": "GELU",
    "tanh": "tanh",
    "softmax": "softmax",
    # element-wise binary
    "add": "element-wise addition",
    "mul": "element-wise multiplication (incl. broadcast, e.g. squeeze-excite scaling)",
    # data movement
    "concat": "concatenation along the channel axis",
    "split": "split / chunk along an axis",
    "channel_shuffle": "channel shuffle (reshape-transpose-reshape)",
    "permute": "transpose / permute of axes",
    "reshape": "reshape / view / flatten (no data movement unless non-contiguous)",
    "pad": "constant padding",
    "slice": "slicing / indexing along an axis",
    "roll": "cyclic shift along axes",
    # pooling
    "maxpool": "max pooling",
    "avgpool": "average pooling",
    "global_avgpool": "global (or adaptive to 1x1) average pooling",
    "adaptive_avgpool": "adaptive average pooling to an output size larger than 1x1",
    # attention (kept whole where a framework exposes it as one call)
    "mha": "multi-head attention as one op",
    # no computation at inference
    "dropout": "dropout / stochastic depth (identity at inference)",
    "identity": "identity",
}

# Ops whose attributes or shapes are needed to compute features; documented here for front-ends.
ATTRIBUTES = ("kernel", "stride", "padding", "dilation", "groups", "cin", "cout", "bias", "axis")


@dataclasses.dataclass
class OpNode:
    """One operation of a captured model.

    Parameters
    ----------
    name : str
        Unique name within the graph (the framework's node or module name).
    op : str
        Canonical op type, a key of :data:`CANONICAL_OPS`.
    inputs : list of str
        Names of the producer nodes of this op's tensor inputs (graph inputs are named ``"input"``,
        ``"input_1"``...). Weights and constants are not inputs.
    input_shapes : list of tuple of int
        Shape of each tensor input, in the same order as ``inputs``.
    output_shape : tuple of int
        Shape of the (first) output tensor.
    attrs : dict
        Op attributes: ``kernel`` (kh, kw), ``stride`` (sh, sw), ``padding`` (ph, pw), ``dilation``,
        ``groups``, ``cin``, ``cout``, ``bias`` (bool) for convolutions and ``fc``; ``axis`` for concat,
        split and softmax; ``groups`` for channel shuffle.
    """

    name: str
    op: str
    inputs: list[str]
    input_shapes: list[tuple[int, ...]]
    output_shape: tuple[int, ...]
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "inputs": list(self.inputs),
            "input_shapes": [list(s) for s in self.input_shapes],
            "output_shape": list(self.output_shape),
            "attrs": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.attrs.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OpNode":
        return cls(
            name=str(d["name"]),
            op=str(d["op"]),
            inputs=[str(x) for x in d.get("inputs", [])],
            input_shapes=[tuple(int(v) for v in s) for s in d.get("input_shapes", [])],
            output_shape=tuple(int(v) for v in d.get("output_shape", [])),
            attrs={k: (tuple(v) if isinstance(v, list) else v) for k, v in d.get("attrs", {}).items()},
        )


class OpGraph:
    """A model as ops in topological order, with shapes.

    Parameters
    ----------
    nodes : iterable of OpNode
        The ops, in an order where every producer comes before its consumers.
    inputs : list of str
        Names of the graph inputs (as used in ``OpNode.inputs``).
    source : str
        Where the graph came from (``torch``, ``torchscript``, ``onnx``, ``json``), for messages.
    """

    def __init__(self, nodes: Iterable[OpNode], inputs: list[str] | None = None, source: str = "graph"):
        self.nodes: list[OpNode] = list(nodes)
        self.inputs: list[str] = list(inputs or ["input"])
        self.source = source
        self._by_name = {n.name: n for n in self.nodes}
        if len(self._by_name) != len(self.nodes):
            raise ValueError("OpGraph node names must be unique")
        self._consumers: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for src in n.inputs:
                if src in self._consumers:
                    self._consumers[src].append(n.name)

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[OpNode]:
        return iter(self.nodes)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> OpNode:
        return self._by_name[name]

    def consumers(self, name: str) -> list[str]:
        """Names of the nodes that read the output of node ``name``."""
        return self._consumers.get(name, [])

    def op_counts(self) -> dict[str, int]:
        """Number of nodes of each canonical op type."""
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    def to_json(self) -> str:
        return json.dumps({"schema": "hwnas.opgraph/1", "source": self.source, "inputs": self.inputs,
                           "nodes": [n.to_dict() for n in self.nodes]})

    @classmethod
    def from_json(cls, text: str) -> "OpGraph":
        d = json.loads(text)
        return cls([OpNode.from_dict(x) for x in d["nodes"]], d.get("inputs"), d.get("source", "json"))

    def __repr__(self) -> str:
        return f"OpGraph({len(self.nodes)} ops from {self.source})"
