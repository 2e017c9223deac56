"""Rebuild a kernel (a chain of :class:`~hwnas.graph.OpNode`) as a standalone ``nn.Module`` to time it.

The module takes one tensor of the kernel's main input shape. Tensor operands that come from outside the
kernel (the other summand of a residual ``add``, the other inputs of a ``concat``, the key of a ``matmul``) are
random buffers held by the module, so a frozen backend sees them as constants of the same shape: the kernel
does the same work as inside the network.

Kernels are also described as plain dicts (``kernel_spec``) so that measured configurations can be stored in
JSONL and rebuilt later without the network they came from.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from hwnas.graph import OpNode
from hwnas.kernels import Kernel


def kernel_spec(kernel: Kernel) -> dict[str, Any]:
    """JSON-safe description of a kernel: its ops with shapes and attributes, internal names removed."""
    names = {n.name: i for i, n in enumerate(kernel.nodes)}
    ops = []
    for n in kernel.nodes:
        d = n.to_dict()
        d["inputs"] = [names.get(i, -1) for i in n.inputs]   # -1: from outside the kernel
        del d["name"]
        ops.append(d)
    return {"type": kernel.type, "ops": ops}


def spec_nodes(spec: dict[str, Any]) -> list[OpNode]:
    """Inverse of :func:`kernel_spec` (names become ``k0``, ``k1``...; outside inputs ``x``, ``x1``...)."""
    nodes = []
    outside = 0
    for i, d in enumerate(spec["ops"]):
        inputs = []
        for j in d["inputs"]:
            if j >= 0:
                inputs.append(f"k{j}")
            else:
                inputs.append("x" if outside == 0 else f"x{outside}")
                outside += 1
        nodes.append(OpNode.from_dict({**d, "name": f"k{i}", "inputs": inputs}))
    return nodes


def _act(op: str) -> nn.Module | None:
    return {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "hswish": nn.Hardswish(), "hsigmoid": nn.Hardsigmoid(),
            "sigmoid": nn.Sigmoid(), "silu": nn.SiLU(), "gelu": nn.GELU(), "tanh": nn.Tanh(),
            "dropout": nn.Identity(), "identity": nn.Identity()}.get(op)


class _Op(nn.Module):
    """One op of a kernel: ``forward(x)`` where x is the output of the previous op (or the kernel input)."""

    def __init__(self, node: OpNode, main_index: int, generator: torch.Generator):
        super().__init__()
        self.op = node.op
        a = node.attrs
        self.extra = nn.ParameterList()   # outside operands (constants after freezing)
        for k, shape in enumerate(node.input_shapes):
            if k != main_index:
                self.extra.append(nn.Parameter(torch.randn(shape, generator=generator), requires_grad=False))
        self.layer: nn.Module = nn.Identity()
        self.out_shape = tuple(node.output_shape)
        self.axis = int(a.get("axis", 1)) if a.get("axis") is not None else 1
        self.groups = int(a.get("groups", 1) or 1)
        self.in_shape = tuple(node.input_shapes[main_index]) if node.input_shapes else self.out_shape
        self.window = 0
        if node.op == "concat":   # operands that are constants in the network (ViT's class token) still count
            have = sum(int(sh[self.axis]) for sh in node.input_shapes)
            if self.out_shape[self.axis] > have:
                shape = list(self.out_shape)
                shape[self.axis] = self.out_shape[self.axis] - have
                self.extra.append(nn.Parameter(torch.randn(shape, generator=generator), requires_grad=False))
        if node.op == "matmul":   # right operand shaped so that x @ rhs has the op's output shape
            rhs = tuple(self.out_shape[:-2]) + (self.in_shape[-1], self.out_shape[-1])
            self.register_buffer("rhs", torch.randn(rhs, generator=generator))
        if node.op in ("conv", "dwconv"):
            pad = a.get("padding", (0, 0))
            self.layer = nn.Conv2d(a["cin"], a["cout"], tuple(a["kernel"]), tuple(a.get("stride", (1, 1))),
                                   tuple(pad) if not isinstance(pad, str) else pad, tuple(a.get("dilation", (1, 1))),
                                   a["groups"], bias=bool(a.get("bias", False)))
        elif node.op == "fc":
            self.layer = nn.Linear(a["cin"], a["cout"], bias=bool(a.get("bias", True)))
        elif node.op == "bn":
            self.layer = nn.BatchNorm2d(self.in_shape[1]) if len(self.in_shape) == 4 else nn.BatchNorm1d(self.in_shape[1])
            self.layer.running_mean.normal_(generator=generator)
            self.layer.running_var.uniform_(0.5, 2.0, generator=generator)
        elif node.op == "ln":
            self.layer = nn.LayerNorm(self.in_shape[-1])
        elif node.op in ("maxpool", "avgpool"):
            cls = nn.MaxPool2d if node.op == "maxpool" else nn.AvgPool2d
            self.layer = cls(tuple(a["kernel"]), tuple(a.get("stride", a["kernel"])), tuple(a.get("padding", (0, 0))),
                             ceil_mode=bool(a.get("ceil_mode", False)))
        elif node.op == "global_avgpool":
            self.layer = nn.AdaptiveAvgPool2d(1)
        elif node.op == "adaptive_avgpool":
            self.layer = nn.AdaptiveAvgPool2d(tuple(self.out_shape[2:]))
        elif node.op == "mha":
            e = self.in_shape[-1]
            self.window = int(a.get("window", 0) or 0)
            self.layer = nn.MultiheadAttention(e, int(a.get("heads", max(1, e // 64))), batch_first=True)
        elif node.op == "softmax":
            self.layer = nn.Softmax(dim=self.axis if a.get("axis") is not None else -1)
        elif _act(node.op) is not None:
            self.layer = _act(node.op)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = self.op
        if op in ("add", "mul"):
            y = x
            for t in self.extra:
                y = y + t if op == "add" else y * t
            if len(self.extra) == 0:   # x + x (both operands from the chain)
                y = y + x if op == "add" else y * x
            return y
        if op == "concat":
            return torch.cat([x] + [t for t in self.extra], dim=self.axis)
        if op == "matmul":
            return torch.matmul(x, self.rhs)
        if op in ("split", "slice") and len(self.in_shape) == len(self.out_shape):
            for d, (i, o) in enumerate(zip(self.in_shape, self.out_shape)):
                if i != o:
                    x = x.narrow(d, 0, o)
            return x.contiguous()
        if op == "channel_shuffle":
            n, c, h, w = x.shape
            return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        if op == "permute":
            return x.transpose(-1, -2).contiguous().reshape(self.out_shape)
        if op == "reshape":
            return x.reshape(self.out_shape)
        if op == "slice":
            return x.flatten()[: math.prod(self.out_shape)].reshape(self.out_shape)
        if op == "pad":
            pads: list[int] = []
            for i in range(len(self.in_shape) - 1, 0, -1):
                extra = self.out_shape[i] - self.in_shape[i]
                pads += [extra // 2, extra - extra // 2]
            return F.pad(x, pads)
        if op == "roll":
            return torch.roll(x, shifts=(1, 1), dims=(1, 2))
        if op == "mean":
            return x.mean(dim=-1)
        if op == "mha":
            if x.dim() == 4:   # (B, H, W, C) windowed attention (Swin): attend within windows
                b, h, w, c = x.shape
                win = self.window if self.window > 0 else h
                t = F.pad(x, [0, 0, 0, (win - w % win) % win, 0, (win - h % win) % win])
                hp, wp = t.shape[1], t.shape[2]
                t = t.view(b, hp // win, win, wp // win, win, c).transpose(2, 3).reshape(-1, win * win, c)
                t = self.layer(t, t, t, need_weights=False)[0]
                t = t.view(b, hp // win, wp // win, win, win, c).transpose(2, 3).reshape(b, hp, wp, c)
                return t[:, :h, :w, :].contiguous()
            return self.layer(x, x, x, need_weights=False)[0]
        if op == "global_avgpool":
            return self.layer(x).reshape(self.out_shape)
        return self.layer(x)


class KernelModule(nn.Module):
    """A kernel as a module: its ops applied in order to one input tensor. ``node_dicts`` keeps the ops as plain
    data, so the module can be rebuilt elsewhere (a compile worker) from data and a state dict, never a pickle."""

    def __init__(self, nodes: Sequence[OpNode], seed: int = 0):
        super().__init__()
        self.node_dicts = [n.to_dict() for n in nodes]
        self.seed = int(seed)
        g = torch.Generator().manual_seed(seed)
        ops = []
        internal: set[str] = set()
        for i, n in enumerate(nodes):
            main = 0
            if i > 0:   # the chain input is the previous op's output
                main = next((k for k, src in enumerate(n.inputs) if src == nodes[i - 1].name), 0)
            ops.append(_Op(n, main, g))
            internal.add(n.name)
        self.ops = nn.ModuleList(ops)
        first = nodes[0]
        self.input_shape: tuple[int, ...] = tuple(first.input_shapes[0]) if first.input_shapes else tuple(first.output_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op(x)
        return x


class _Passthrough(nn.Module):
    """The second module of a kernel timed alone: returns (a copy of) its input, the per-call overhead."""

    def forward(self, x):
        return x.clone()


class _ConversionPair(nn.Module):
    """A plain tensor into oneDNN's layout and back (``aten::to_mkldnn``, ``aten::to_dense``): the two layout
    conversions of TorchScript's oneDNN groups, timed as a pair (:mod:`hwnas.builder._variants`)."""

    def forward(self, x):
        return x.to_mkldnn().to_dense()


def _prefix(shape: Sequence[int]) -> nn.Module:
    """The dense 1x1 convolution a kernel is timed after, in context (see ``_build.measure_in_context``)."""
    c = int(shape[1])
    return nn.Conv2d(c, c, 1, bias=False).eval()


def kernel_module(kernel: Kernel | Sequence[OpNode] | dict[str, Any], seed: int = 0) -> KernelModule:
    """A standalone module for a kernel, a list of nodes, or a :func:`kernel_spec` dict."""
    if isinstance(kernel, dict):
        nodes = spec_nodes(kernel)
    elif isinstance(kernel, Kernel):
        nodes = kernel.nodes
    else:
        nodes = list(kernel)
    return KernelModule(nodes, seed).eval()
