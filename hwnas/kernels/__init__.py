"""Op graph → kernels: the units a backend really executes.

A backend fuses chains of ops into one kernel (a frozen TorchScript graph folds BatchNorm into the preceding
convolution and runs the activation in the convolution's epilogue; ONNX Runtime fuses Conv+Add+Relu...).
Which chains fuse is *data*: a list of op-name patterns measured per backend and stored in each predictor
(``fusion_rules``). The matcher is deterministic: nodes are visited in topological order and each unassigned
node starts the longest rule that matches a chain of single-consumer successors; otherwise it is a kernel of
its own.

The op graph arrives with each inference BatchNorm already folded into its convolution (:mod:`hwnas.graph`), so
fusion patterns and kernel types never hold a ``bn`` right after a convolution (:func:`canonical_ops`).

Each kernel gets a type (its ops joined by ``-``, e.g. ``conv-relu``) and a feature vector: the shapes and
attributes of its first (main) op plus counts over the whole kernel. See :data:`FEATURES`.

Layout rules (:mod:`hwnas.kernels._layout`, data like the fusion rules): which ops a backend runs on its own tensor
layout and which read a plain tensor; :func:`apply_layout` gives a kernel whose first op reads a plain tensor
its own type (``maxpool@dense``), :func:`conversions` counts the layout conversions at the boundaries.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

from hwnas.graph import OpGraph, OpNode

# Feature names every kernel has (0 where not applicable). Regressors pick a subset by name.
FEATURES: dict[str, str] = {
    "batch": "batch size",
    "hin": "input height of the main op (1 for rank < 4)",
    "win": "input width of the main op",
    "cin": "input channels (features for fc, embedding for tokens)",
    "cout": "output channels",
    "hout": "output height",
    "wout": "output width",
    "kernel": "kernel height of a conv or pool (0 otherwise)",
    "stride": "stride height of a conv or pool (0 otherwise)",
    "groups": "convolution groups (0 otherwise)",
    "n_inputs": "number of tensor inputs of the main op (concat fan-in)",
    "macs": "multiply-accumulates of conv/fc/matmul ops in the kernel, in millions",
    "elementwise": "elements touched by the kernel's non-MAC ops, in millions",
    "params": "weight elements, in millions (biases not counted: a folded batch norm adds one, an exporter may "
              "drop a zero one, and either way it costs the kernel nothing measurable)",
    "in_elems": "elements of the kernel's tensor inputs, in millions",
    "out_elems": "elements of the kernel's output, in millions",
}
#: Ops a convolution may run in its epilogue; a kernel's ``epi_<op>`` feature counts that op after its main op,
#: so one regressor can price a convolution with any of these epilogues (``conv-relu``, ``conv-add-hswish``).
EPILOGUE_OPS: tuple[str, ...] = ("relu", "relu6", "hswish", "hsigmoid", "sigmoid", "add")
FEATURES.update({f"epi_{op}": f"times {op} follows the main op in the kernel" for op in EPILOGUE_OPS})
#: Unary element-wise ops: one kernel each when no rule fuses them, all costing about the same per element.
ACTIVATION_OPS: tuple[str, ...] = ("relu", "relu6", "hswish", "hsigmoid", "sigmoid", "silu", "gelu", "tanh")
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES)

#: Version of the graph-to-kernels model (graph passes, fusion matching, features). Part of every predictor's
#: checksum, so tables and search results derived under another version are recomputed, not reused.
KERNEL_MODEL_VERSION = 2

_MAC_OPS = {"conv", "dwconv", "fc", "matmul", "mha"}


@dataclasses.dataclass
class Kernel:
    """A group of ops the backend runs as one unit.

    Attributes
    ----------
    type : str
        Ops joined by ``-`` (``conv-relu``).
    nodes : list of OpNode
        The ops, main op first.
    features : dict of str to float
        Values for every name in :data:`FEATURE_NAMES`.
    """

    type: str
    nodes: list[OpNode]
    features: dict[str, float]

    @property
    def ops(self) -> list[str]:
        return [n.op for n in self.nodes]

    def vector(self, names: Sequence[str]) -> list[float]:
        """Feature values in the order of ``names``."""
        return [self.features[n] for n in names]


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 0


def _spatial(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) >= 4:
        return int(shape[-2]), int(shape[-1])
    if len(shape) == 3:   # tokens: (batch, length, embed)
        return int(shape[1]), 1
    return 1, 1


def _channels(shape: Sequence[int]) -> int:
    if len(shape) >= 4 or len(shape) == 2:
        return int(shape[1])
    if len(shape) == 3:
        return int(shape[2])
    return 1


def op_macs(node: OpNode) -> int:
    """Multiply-accumulates of one op (0 for ops that do no MACs)."""
    out = node.output_shape
    a = node.attrs
    if node.op in ("conv", "dwconv"):
        kh, kw = a["kernel"]
        return _numel(out) * (a["cin"] // a["groups"]) * kh * kw
    if node.op == "fc":
        return _numel(out) * a["cin"]
    if node.op == "matmul":
        return _numel(out) * int(node.input_shapes[0][-1]) if node.input_shapes else 0
    if node.op == "mha":
        shape = node.input_shapes[0]
        e = int(shape[-1])
        tokens = _numel(shape) // e
        window = int(node.attrs.get("window", 0) or 0)
        length = window * window if window else (int(shape[1]) if len(shape) == 3 else tokens)
        return 4 * tokens * e * e + 2 * tokens * length * e
    return 0


def op_params(node: OpNode, bias: bool = True) -> int:
    """Weight elements of one op (with its bias unless ``bias`` is False)."""
    a = node.attrs
    if node.op in ("conv", "dwconv"):
        kh, kw = a["kernel"]
        return a["cout"] * (a["cin"] // a["groups"]) * kh * kw + (a["cout"] if bias and a.get("bias") else 0)
    if node.op == "fc":
        return a["cin"] * a["cout"] + (a["cout"] if bias and a.get("bias", True) else 0)
    if node.op in ("bn", "ln"):
        return 2 * _channels(node.output_shape)
    if node.op == "mha":
        e = int(node.input_shapes[0][-1])
        return 4 * e * e + 4 * e
    return 0


def kernel_features(nodes: Sequence[OpNode]) -> dict[str, float]:
    """The feature dict of a kernel made of ``nodes`` (main op first)."""
    main = nodes[0]
    in_shape = main.input_shapes[0] if main.input_shapes else main.output_shape
    out_shape = nodes[-1].output_shape
    hin, win = _spatial(in_shape)
    hout, wout = _spatial(out_shape)
    a = main.attrs
    kernel = a.get("kernel", (0, 0))
    stride = a.get("stride", (0, 0))
    internal = {n.name for n in nodes}
    ext_inputs = [s for n in nodes for i, s in zip(n.inputs, n.input_shapes) if i not in internal]
    macs = sum(op_macs(n) for n in nodes)
    elementwise = sum(_numel(n.output_shape) for n in nodes if n.op not in _MAC_OPS)
    return {
        "batch": float(in_shape[0]) if in_shape else 1.0,
        "hin": float(hin), "win": float(win),
        "cin": float(a.get("cin", _channels(in_shape))),
        "cout": float(a.get("cout", _channels(out_shape))),
        "hout": float(hout), "wout": float(wout),
        "kernel": float(kernel[0] if isinstance(kernel, (tuple, list)) else kernel),
        "stride": float(stride[0] if isinstance(stride, (tuple, list)) else stride),
        "groups": float(a.get("groups", 0) if main.op in ("conv", "dwconv") else 0),
        "n_inputs": float(len(main.inputs)),
        "macs": macs / 1e6,
        "elementwise": elementwise / 1e6,
        "params": sum(op_params(n, bias=False) for n in nodes) / 1e6,
        "in_elems": sum(_numel(s) for s in ext_inputs) / 1e6,
        "out_elems": _numel(out_shape) / 1e6,
        **{f"epi_{op}": float(sum(n.op == op for n in nodes[1:])) for op in EPILOGUE_OPS},
    }


_FOLDS_BN = ("conv", "dwconv")


def canonical_ops(ops: Sequence[str]) -> tuple[str, ...]:
    """``ops`` with each ``bn`` right after a ``conv``/``dwconv`` removed: the op graph folds such a batch norm into
    the convolution (:func:`hwnas.graph.fold_batchnorm`), so fusion rules and kernel types measured before that
    fold (``conv-bn-relu``) name the kernel the folded graph has (``conv-relu``)."""
    out: list[str] = []
    for op in ops:
        if op == "bn" and out and out[-1] in _FOLDS_BN:
            continue
        out.append(op)
    return tuple(out)


def canonical_type(ktype: str) -> str:
    """Kernel type after the batch-norm fold (``conv-bn-relu`` → ``conv-relu``; see :func:`canonical_ops`)."""
    return "-".join(canonical_ops(ktype.split("-")))


class FusionRules:
    """Op-name patterns that a backend runs as one kernel.

    Parameters
    ----------
    patterns : iterable of sequence of str
        Each a chain of canonical op names, e.g. ``["conv", "relu"]``. Single ops need no rule. A batch norm
        right after a convolution is dropped from a pattern (``conv-bn-relu`` is ``conv-relu``): op graphs
        have it folded (:func:`canonical_ops`).
    """

    def __init__(self, patterns: Iterable[Sequence[str]]):
        canonical = {canonical_ops(p) for p in patterns}
        self.patterns: list[tuple[str, ...]] = sorted({p for p in canonical if len(p) >= 2},
                                                      key=lambda p: (-len(p), p))
        self._by_head: dict[str, list[tuple[str, ...]]] = {}
        for p in self.patterns:
            self._by_head.setdefault(p[0], []).append(p)

    def to_list(self) -> list[list[str]]:
        return [list(p) for p in self.patterns]

    def starting_with(self, op: str) -> list[tuple[str, ...]]:
        """Patterns whose first op is ``op``, longest first."""
        return self._by_head.get(op, [])

    def __repr__(self) -> str:
        return f"FusionRules({['-'.join(p) for p in self.patterns]})"


def detect_kernels(graph: OpGraph, rules: FusionRules) -> list[Kernel]:
    """Group the ops of ``graph`` into kernels by ``rules`` (deterministic, topological order)."""
    assigned: set[str] = set()
    kernels: list[Kernel] = []
    for node in graph.nodes:
        if node.name in assigned:
            continue
        chain = [node]
        for pattern in rules.starting_with(node.op):
            chain = _match(graph, node, pattern, assigned)
            if chain:
                break
        if not chain:
            chain = [node]
        assigned.update(n.name for n in chain)
        kernels.append(Kernel("-".join(n.op for n in chain), chain, kernel_features(chain)))
    return kernels


def _match(graph: OpGraph, head: OpNode, pattern: tuple[str, ...], assigned: set[str]) -> list[OpNode]:
    chain = [head]
    for op in pattern[1:]:
        cur = chain[-1]
        consumers = graph.consumers(cur.name)
        if len(consumers) != 1:
            return []   # the intermediate result is read elsewhere: it must be materialised
        nxt = graph[consumers[0]]
        if nxt.op != op or nxt.name in assigned:
            return []
        chain.append(nxt)
    return chain


from hwnas.kernels._layout import (CONVERSION_TYPES, LAYOUT_RULES, TORCHSCRIPT_ONEDNN, LayoutRules,  # noqa: E402
                                   apply_layout, base_type, conversion_tensors, conversions, groups,
                                   output_in_group, plain_input_heads, tensor_kernel)
