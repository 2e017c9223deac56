"""Which kernels read a tensor outside the backend's own layout (rules as data), and their kernel types.

A frozen TorchScript graph on CPU (``torch.jit.optimize_for_inference``) runs each convolution on oneDNN tensors
and grows a group around it: an op joins the group when every tensor it reads is already a oneDNN tensor and
oneDNN has a kernel for it (activations, pools, batch norm, add, mul, linear). ``aten::cat``, ``silu``,
reshapes and channel shuffles have none, so their outputs are plain (dense) tensors, and an op reading one runs
ATen's own CPU kernel instead of oneDNN's: a 3x3 max pool of a 192x28x28 concat output takes 4.4 ms there
against 0.18 ms after a convolution on an AMD EPYC Zen 4 (``experiments/benchmarks/ts_dense_inputs.py``).
Conversions (``to_mkldnn`` before a convolution that reads a plain tensor, ``to_dense`` after a group tensor
read by a plain op) sit at each boundary.

The builder times kernels after a 1x1 convolution, i.e. on a oneDNN input. :func:`apply_layout` gives a kernel
whose first op would join a group but reads a plain tensor its own type (``maxpool@dense``), which a predictor
prices with its own regressor, measured on a plain input. The rules are data (:class:`LayoutRules`, stored in the
predictor's ``layout`` entry); :data:`TORCHSCRIPT_ONEDNN` is PyTorch 2.14's ``ConvertFrozenOpsToMKLDNN`` pass in
the canonical op vocabulary, checked against the compiled graphs of the zoo
(``experiments/benchmarks/ts_layout_rules.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

from hwnas.graph import COPIED_INPUTS, OpGraph

#: TorchScript (CPU, frozen, ``optimize_for_inference``) oneDNN groups, in canonical ops:
#:
#: - ``start``: ops that open a group whatever their input's layout (a convolution with constant weights; a plain
#:   input gets a ``to_mkldnn``);
#: - ``join``: ops that run in a group when every tensor input is a group tensor (else on ATen, plain);
#: - ``transparent``: ops the frozen graph removes (their output has their input's layout);
#: - every other op reads and writes plain tensors.
TORCHSCRIPT_ONEDNN: dict[str, Any] = {
    "name": "torchscript-onednn",
    "start": ["conv", "dwconv"],
    "join": ["relu", "relu6", "hswish", "hsigmoid", "sigmoid", "tanh", "gelu", "bn", "maxpool", "avgpool",
             "global_avgpool", "adaptive_avgpool", "add", "mul", "fc"],
    "transparent": ["dropout", "identity"],
    "suffix": "@dense",
}


#: Layout rules by backend name (backends without an entry run every op in one layout).
LAYOUT_RULES: dict[str, dict[str, Any]] = {"torchscript-cpu": TORCHSCRIPT_ONEDNN}


@dataclasses.dataclass(frozen=True)
class LayoutRules:
    """Layout rules of a backend (see :data:`TORCHSCRIPT_ONEDNN` for the fields).

    ``variants``: the kernel types (base names) that get a ``suffix`` type when their first op reads a plain
    tensor; the predictor prices those types. A kernel of another type keeps its name whatever its input's layout
    (it is priced as measured after a convolution), and the predictor's metadata says so by listing ``variants``.
    ``conversions``: the predictor also prices each layout conversion (:data:`CONVERSION_TYPES`) as a kernel.
    """

    name: str
    start: frozenset[str]
    join: frozenset[str]
    transparent: frozenset[str] = frozenset()
    suffix: str = "@dense"
    variants: frozenset[str] = frozenset()
    conversions: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayoutRules":
        """Rules from a predictor's ``layout`` entry (or :data:`TORCHSCRIPT_ONEDNN`); a ``ValueError`` names a
        missing or malformed field."""
        try:
            suffix = str(d.get("suffix", "@dense"))
            rules = cls(str(d["name"]), frozenset(map(str, d["start"])), frozenset(map(str, d["join"])),
                        frozenset(map(str, d.get("transparent", ()))), suffix,
                        frozenset(map(str, d.get("variants", ()))), bool(d.get("conversions", False)))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"layout rules need 'name', 'start' and 'join' (lists of op names): {e!r}") from None
        if not suffix.startswith("@") or "-" in suffix:
            raise ValueError(f"layout suffix must start with '@' and hold no '-', got {suffix!r}")
        return rules

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "start": sorted(self.start), "join": sorted(self.join),
                "transparent": sorted(self.transparent), "suffix": self.suffix, "variants": sorted(self.variants),
                "conversions": self.conversions}

    def with_variants(self, variants: Iterable[str], conversions: bool | None = None) -> "LayoutRules":
        return dataclasses.replace(self, variants=frozenset(variants),
                                   conversions=self.conversions if conversions is None else conversions)


def base_type(ktype: str) -> str:
    """A kernel type without its layout suffix (``maxpool@dense`` → ``maxpool``)."""
    return ktype.split("@", 1)[0]


def _copied(node: Any) -> frozenset[int]:
    """Input positions ``node`` reads through a single-input concat the graph passes removed (a copy that runs as a
    plain op: its reader sees a plain tensor)."""
    return frozenset(int(k) for k in node.attrs.get(COPIED_INPUTS, ()))


def _edges(node: Any, group: Mapping[str, int | None]) -> list[tuple[str, int | None, int | None]]:
    """``(tensor, group as read, group that wrote it)`` per input of ``node`` that ``group`` knows; an input read
    through a removed copy is read plain."""
    copied = _copied(node)
    return [(i, None if k in copied else group[i], group[i]) for k, i in enumerate(node.inputs) if i in group]


def groups(graph: OpGraph, rules: LayoutRules, inputs_in_group: bool = False) -> dict[str, int | None]:
    """Tensor name → the group that writes it (an int), or ``None`` for a plain tensor. Graph inputs are plain,
    or each in a group of its own with ``inputs_in_group`` (a block priced alone whose input, inside its network,
    is a group tensor).

    Ops are placed in topological order. An op that may run in a group joins the groups of its group-tensor
    inputs, merging them, except a group it is reachable from through a plain op (merging it would make a
    cycle: the backend keeps the two groups apart and converts the tensor between them); with no group left a
    start op opens a new one and a join op runs plain. An input an op reads through a single-input concat the
    graph passes removed (:data:`hwnas.graph.COPIED_INPUTS`) is read plain: TorchScript runs that copy outside
    its groups (densenet's first layer of each block)."""
    parent: list[int] = []

    def find(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    group: dict[str, int | None] = {}
    for i in graph.inputs:
        group[i] = len(parent) if inputs_in_group else None
        if inputs_in_group:
            parent.append(len(parent))
    via_plain: dict[str, frozenset[int]] = {i: frozenset() for i in graph.inputs}   # groups reaching it via a plain op
    for node in graph.nodes:
        edges = _edges(node, group)
        ins = [i for i, _, _ in edges]
        # a group read through a removed copy reaches this op through a plain op
        upstream = frozenset().union(*(via_plain[i] for i in ins), (w for _, r, w in edges if r is None and w is not None))
        if node.op in rules.transparent and ins:
            group[node.name], via_plain[node.name] = edges[0][1], upstream
            continue
        eligible = node.op in rules.start or (node.op in rules.join and bool(ins)
                                               and all(r is not None for _, r, _ in edges))
        blocked = {find(g) for g in upstream}
        joinable = sorted({find(r) for _, r, _ in edges if r is not None} - blocked) if eligible else []
        if joinable:
            g = joinable[0]
            for h in joinable[1:]:
                parent[h] = g
        elif node.op in rules.start:
            g = len(parent)
            parent.append(g)
        else:   # runs plain: every group above it now reaches its readers through a plain op
            group[node.name] = None
            via_plain[node.name] = upstream.union(r for _, r, _ in edges if r is not None)
            continue
        group[node.name] = g
        via_plain[node.name] = upstream
    return {t: (find(g) if g is not None else None) for t, g in group.items()}


def output_in_group(graph: OpGraph, rules: LayoutRules, inputs_in_group: bool = False) -> bool:
    """Whether the graph's output (its last op's) is a group tensor; an empty graph passes its input on."""
    if not graph.nodes:
        return inputs_in_group
    return groups(graph, rules, inputs_in_group)[graph.nodes[-1].name] is not None


def plain_input_heads(graph: OpGraph, rules: LayoutRules, inputs_in_group: bool = False) -> set[str]:
    """Ops that would join a group but read a plain 4-d tensor (they run on ATen); graph inputs: see
    :func:`groups`."""
    return _plain_heads(graph, rules, groups(graph, rules, inputs_in_group))


def _plain_heads(graph: OpGraph, rules: LayoutRules, group: dict[str, int | None]) -> set[str]:
    return {n.name for n in graph.nodes
            if n.op in rules.join and n.input_shapes and len(n.input_shapes[0]) == 4
            and any(group.get(i, 0) is None or k in _copied(n) for k, i in enumerate(n.inputs))}


#: Kernel types of the layout conversions: into the backend's layout, and back to a plain tensor.
CONVERSION_TYPES = ("to_backend", "to_plain")


def conversion_tensors(graph: OpGraph, rules: LayoutRules, inputs_in_group: bool = False,
                       output_returned: bool = True) -> list[tuple[str, str, tuple[int, ...]]]:
    """The conversions the backend inserts, as ``(kind, tensor, shape)`` in graph order, each tensor converted at
    most once per kind: ``to_backend`` (a plain tensor read by a group op, or a group tensor read by another
    group) and ``to_plain`` (a group tensor read by a plain op or by another group, or returned). Graph inputs: see
    :func:`groups`; ``output_returned=False`` (a block priced alone, inside a network) leaves the conversion of a
    returned group tensor to whoever reads it."""
    return _conversions(graph, rules, groups(graph, rules, inputs_in_group), output_returned)


def _conversions(graph: OpGraph, rules: LayoutRules, group: dict[str, int | None],
                 output_returned: bool) -> list[tuple[str, str, tuple[int, ...]]]:
    shapes: dict[str, tuple[int, ...]] = {}
    alias = {i: i for i in graph.inputs}   # a removed op's output is its input's tensor
    for n in graph.nodes:
        alias[n.name] = alias.get(n.inputs[0], n.inputs[0]) if n.op in rules.transparent and n.inputs else n.name
        shapes[n.name] = tuple(n.output_shape)
        for i, sh in zip(n.inputs, n.input_shapes):
            shapes.setdefault(i, tuple(sh))
    out: dict[tuple[str, str], tuple[int, ...]] = {}
    consumed: set[str] = set()
    for node in graph.nodes:
        if node.op in rules.transparent:
            continue
        mine = group[node.name]
        for i, src, wrote in _edges(node, group):
            t = alias.get(i, i)
            consumed.add(t)
            if wrote is not None and wrote != mine:   # read by a plain op (a removed copy too) or another group
                out.setdefault(("to_plain", t), shapes.get(t, ()))
            if mine is not None and src != mine:      # a copy's output is a tensor of its own
                out.setdefault(("to_backend", t if src is not None or wrote is None else f"{t}#copy"), shapes.get(t, ()))
    if output_returned:
        for n in graph.nodes:
            if group[n.name] is not None and alias[n.name] == n.name and n.name not in consumed:
                out.setdefault(("to_plain", n.name), shapes[n.name])
    return [(kind, t, shape) for (kind, t), shape in out.items()]


def conversions(graph: OpGraph, rules: LayoutRules, inputs_in_group: bool = False,
                output_returned: bool = True) -> dict[str, int]:
    """How many conversions of each kind :func:`conversion_tensors` finds."""
    found = conversion_tensors(graph, rules, inputs_in_group, output_returned)
    return {k: sum(1 for c in found if c[0] == k) for k in CONVERSION_TYPES}


def tensor_kernel(kind: str, shape: Sequence[int]) -> Any:
    """A kernel of type ``kind`` with no ops that moves one tensor of ``shape`` (a layout conversion): the features
    of the tensor (channels, height and width as input and output, its elements as ``in_elems``, ``out_elems``
    and ``elementwise``, in millions)."""
    import math

    from hwnas.kernels import FEATURE_NAMES, Kernel

    shape = tuple(int(v) for v in shape)
    n = math.prod(shape) / 1e6 if shape else 0.0
    h, w = (shape[2], shape[3]) if len(shape) == 4 else (1, 1)
    c = shape[1] if len(shape) >= 2 else 1
    f = {k: 0.0 for k in FEATURE_NAMES}
    f.update(batch=float(shape[0]) if shape else 1.0, hin=h, win=w, hout=h, wout=w, cin=c, cout=c, n_inputs=1.0,
             elementwise=n, in_elems=n, out_elems=n)
    return Kernel(kind, [], {k: float(v) for k, v in f.items()})


def apply_layout(kernels: Sequence[Any], graph: OpGraph, rules: LayoutRules | None,
                 inputs_in_group: bool = False, output_returned: bool = True) -> list[Any]:
    """``kernels`` with each kernel of a ``rules.variants`` type whose first op reads a plain tensor renamed to
    its layout type (``maxpool`` → ``maxpool@dense``), other kernels unchanged (the same objects), and, when
    ``rules.conversions``, one kernel per conversion (:func:`conversion_tensors`, :func:`tensor_kernel`) after
    them. Graph inputs and output: see :func:`conversion_tensors`."""
    if rules is None or not (rules.variants or rules.conversions):
        return list(kernels)
    group = groups(graph, rules, inputs_in_group)   # once: the renames and the conversions both read it
    heads = _plain_heads(graph, rules, group)
    out = []
    for k in kernels:
        if k.type in rules.variants and k.nodes and k.nodes[0].name in heads:
            k = dataclasses.replace(k, type=k.type + rules.suffix)
        out.append(k)
    if rules.conversions:
        out += [tensor_kernel(kind, shape)
                for kind, _, shape in _conversions(graph, rules, group, output_returned)]
    return out
