"""Capture a ``torch.nn.Module`` with torch.fx and propagate shapes on meta tensors.

Why this route: ``torch.fx.symbolic_trace`` traces every torchvision 0.29 classification model and NNI's frozen
subnets, without running the model, and keeps module boundaries (a ``Conv2d`` stays one node with its
attributes). Shapes come from running each node once on *meta* tensors (no data, no arithmetic), so capturing
ResNet-50 costs milliseconds instead of a real forward pass. Tracing with ``torch.jit.trace`` would need a real
forward (tens of ms at 224 px on one core) and yields an aten graph where module attributes must be
reconstructed.

Limitations: models with data-dependent Python control flow cannot be symbolically traced; such models raise
:class:`~hwnas.errors.CaptureError` naming the fx error (export them to ONNX or TorchScript instead). Only
the first ``forward`` argument is treated as the input image; others must have defaults.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from hwnas.errors import CaptureError, InputShapeError, UnsupportedOpError
from hwnas.graph._ir import OpGraph, OpNode
from hwnas.graph._passes import finalize

_pair = nn.modules.utils._pair

# ---------------------------------------------------------------------------------------------------------------
# Module → canonical op. Order matters: subclasses before base classes.
# ---------------------------------------------------------------------------------------------------------------


def _conv_attrs(m: nn.Conv2d) -> dict[str, Any]:
    return {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride), "padding": _pair(m.padding)
            if not isinstance(m.padding, str) else m.padding, "dilation": _pair(m.dilation),
            "groups": m.groups, "cin": m.in_channels, "cout": m.out_channels, "bias": m.bias is not None}


def _conv_op(groups: int, cin: int, cout: int) -> str:
    return "dwconv" if groups > 1 and groups == cin and cout % cin == 0 else "conv"


def _pool_attrs(m: nn.Module) -> dict[str, Any]:
    stride = m.stride if m.stride is not None else m.kernel_size
    return {"kernel": _pair(m.kernel_size), "stride": _pair(stride), "padding": _pair(m.padding),
            "ceil_mode": bool(getattr(m, "ceil_mode", False))}


def _adaptive_op(out_shape: tuple[int, ...]) -> str:
    return "global_avgpool" if tuple(out_shape[2:]) == (1,) * (len(out_shape) - 2) else "adaptive_avgpool"


_MODULE_OPS: list[tuple[type, Callable[[nn.Module, tuple], tuple[str, dict]]]] = [
    (nn.Conv2d, lambda m, s: (_conv_op(m.groups, m.in_channels, m.out_channels), _conv_attrs(m))),
    (nn.Linear, lambda m, s: ("fc", {"cin": m.in_features, "cout": m.out_features, "bias": m.bias is not None})),
    (nn.BatchNorm2d, lambda m, s: ("bn", {"cin": m.num_features})),
    (nn.BatchNorm1d, lambda m, s: ("bn", {"cin": m.num_features})),
    (nn.LayerNorm, lambda m, s: ("ln", {})),
    (nn.ReLU6, lambda m, s: ("relu6", {})),
    (nn.ReLU, lambda m, s: ("relu", {})),
    (nn.Hardtanh, lambda m, s: ("relu6", {}) if (m.min_val, m.max_val) == (0.0, 6.0) else ("unsupported", {})),
    (nn.Hardswish, lambda m, s: ("hswish", {})),
    (nn.Hardsigmoid, lambda m, s: ("hsigmoid", {})),
    (nn.Sigmoid, lambda m, s: ("sigmoid", {})),
    (nn.SiLU, lambda m, s: ("silu", {})),
    (nn.GELU, lambda m, s: ("gelu", {})),
    (nn.Tanh, lambda m, s: ("tanh", {})),
    (nn.Softmax, lambda m, s: ("softmax", {"axis": m.dim if m.dim is not None else -1})),
    (nn.MaxPool2d, lambda m, s: ("maxpool", _pool_attrs(m))),
    (nn.AvgPool2d, lambda m, s: ("avgpool", _pool_attrs(m))),
    (nn.AdaptiveAvgPool2d, lambda m, s: (_adaptive_op(s), {})),
    (nn.AdaptiveAvgPool1d, lambda m, s: (_adaptive_op(s), {})),
    (nn.Dropout, lambda m, s: ("dropout", {})),
    (nn.Dropout2d, lambda m, s: ("dropout", {})),
    (nn.Identity, lambda m, s: ("identity", {})),
    (nn.Flatten, lambda m, s: ("reshape", {})),
    (nn.MultiheadAttention, lambda m, s: ("mha", {"embed_dim": m.embed_dim, "heads": m.num_heads})),
]

# Modules whose output has exactly the input's shape, dtype and device (evaluation skipped on meta tensors).
_SHAPE_PRESERVING = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish,
                     nn.Hardsigmoid, nn.Sigmoid, nn.SiLU, nn.GELU, nn.Tanh, nn.Softmax, nn.Dropout, nn.Dropout2d,
                     nn.Identity)

# Functions and tensor methods → canonical op (None: not an op, the value is aliased to its first tensor input).
_ELEMENTWISE: dict[Any, str] = {
    operator.add: "add", operator.iadd: "add", torch.add: "add", operator.sub: "add", torch.sub: "add",
    operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", operator.truediv: "mul", torch.div: "mul",
    operator.matmul: "matmul", torch.matmul: "matmul", torch.bmm: "matmul",
    torch.cat: "concat", torch.concat: "concat", torch.stack: "concat",
    torch.flatten: "reshape", torch.reshape: "reshape", torch.squeeze: "reshape", torch.unsqueeze: "reshape",
    torch.transpose: "permute", torch.permute: "permute", torch.swapaxes: "permute", torch.movedim: "permute",
    torch.roll: "roll",
    torch.chunk: "split", torch.split: "split", torch.sigmoid: "sigmoid", torch.tanh: "tanh",
    torch.relu: "relu", F.relu: "relu", F.relu6: "relu6", F.hardswish: "hswish", F.hardsigmoid: "hsigmoid",
    F.silu: "silu", F.gelu: "gelu", F.sigmoid: "sigmoid", torch.softmax: "softmax", F.softmax: "softmax",
    F.layer_norm: "ln", F.pad: "pad", F.dropout: "dropout", F.linear: "fc",
    F.max_pool2d: "maxpool", F.avg_pool2d: "avgpool", F.adaptive_avg_pool2d: "adaptive_avgpool",
    torch.mean: "mean", F.scaled_dot_product_attention: "mha", operator.getitem: "slice", torch.einsum: "matmul",
}
_METHODS: dict[str, str | None] = {
    "add": "add", "add_": "add", "sub": "add", "mul": "mul", "mul_": "mul", "div": "mul", "matmul": "matmul",
    "view": "reshape", "reshape": "reshape", "flatten": "reshape", "squeeze": "reshape", "unsqueeze": "reshape",
    "expand": "reshape", "view_as": "reshape", "transpose": "permute", "permute": "permute",
    "swapaxes": "permute", "movedim": "permute",
    "chunk": "split", "split": "split", "unbind": "split", "sigmoid": "sigmoid", "relu": "relu", "relu_": "relu",
    "tanh": "tanh", "softmax": "softmax", "mean": "mean", "roll": "roll",
    "contiguous": None, "clone": None, "to": None, "float": None, "type_as": None,
}
# Names of functions by qualified name, for functions fx wraps as leaves (torchvision's swin) or that are not
# importable as objects here.
_FUNCTION_NAMES: dict[str, str] = {
    "shifted_window_attention": "mha",
    "_patch_merging_pad": "pad",
    "stochastic_depth": "dropout",
}
_NOT_OPS = {"size", "dim", "numel", "__getattribute__", "shape", "device", "dtype"}


def _is_tensor(v: Any) -> bool:
    return isinstance(v, torch.Tensor)


def _tensors_in(v: Any) -> list[torch.Tensor]:
    if _is_tensor(v):
        return [v]
    if isinstance(v, (list, tuple)):
        return [t for x in v for t in _tensors_in(x)]
    return []


def _meta(v: Any) -> Any:
    return v.to("meta") if _is_tensor(v) else v


class _Capture:
    """Runs an fx graph on meta tensors and emits canonical :class:`OpNode` objects."""

    def __init__(self, root: nn.Module, graph: fx.Graph, input_shape: tuple[int, ...]):
        self.gm = root
        self.graph = graph
        self.input_shape = input_shape
        self.modules = dict(root.named_modules())
        self.env: dict[fx.Node, Any] = {}
        self.producer: dict[fx.Node, str | None] = {}   # fx node → OpNode name carrying its data (None: constant)
        self.nodes: list[OpNode] = []
        self._meta_states: dict[str, dict[str, torch.Tensor]] = {}

    # -- evaluation -----------------------------------------------------------------------------------------
    def _load(self, a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: self.env[n])

    def _run_module(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        mod = self.modules[node.target]
        if isinstance(mod, _SHAPE_PRESERVING) and len(args) == 1 and not kwargs and _is_tensor(args[0]):
            return args[0]   # output has the input's shape: no need to run it (BN on meta is slow)
        state = self._meta_states.get(node.target)
        if state is None:
            state = {k: v.to("meta") for k, v in list(mod.named_parameters()) + list(mod.named_buffers())}
            self._meta_states[node.target] = state
        return torch.func.functional_call(mod, state, args, kwargs, strict=False)

    def _evaluate(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            if not self.env:
                return torch.empty(self.input_shape, device="meta")
            if node.args:  # default value
                return node.args[0]
            raise CaptureError(f"forward argument {node.target!r} has no default; hwnas feeds one input tensor")
        if node.op == "get_attr":
            obj: Any = self.gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            return _meta(obj)
        args, kwargs = self._load(node.args), self._load(node.kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "call_module":
            return self._run_module(node, args, kwargs)
        return None

    # -- classification ---------------------------------------------------------------------------------------
    def _data_inputs(self, node: fx.Node) -> list[fx.Node]:
        seen: list[fx.Node] = []
        for a in node.all_input_nodes:
            if self.producer.get(a) is not None and a not in seen:
                seen.append(a)
        return seen

    def _classify(self, node: fx.Node, value: Any) -> tuple[str | None, dict[str, Any]]:
        """Canonical op of a node, or (None, {}) when the node only forwards its input."""
        out_shape = tuple(value.shape) if _is_tensor(value) else ()
        if node.op == "call_module":
            mod = self.modules[node.target]
            for cls, fn in _MODULE_OPS:
                if isinstance(mod, cls):
                    return fn(mod, out_shape)
            return f"module:{type(mod).__module__}.{type(mod).__name__}", {}
        if node.op == "call_method":
            if node.target in _METHODS:
                op = _METHODS[node.target]
                return (self._refine(op, node, value), {}) if op else (None, {})
            return f"method:{node.target}", {}
        target = node.target
        if target in _ELEMENTWISE:
            return self._refine(_ELEMENTWISE[target], node, value), self._fn_attrs(target, node, value)
        name = getattr(target, "__name__", str(target))
        if name in _FUNCTION_NAMES:
            return _FUNCTION_NAMES[name], self._fn_attrs(target, node, value)
        if target is F.conv2d:
            w = self._load(node.args[1] if len(node.args) > 1 else node.kwargs["weight"])
            groups = self._load(node.kwargs.get("groups", node.args[6] if len(node.args) > 6 else 1))
            cin, cout = w.shape[1] * groups, w.shape[0]
            return _conv_op(groups, cin, cout), {"kernel": tuple(w.shape[2:]), "groups": groups, "cin": cin,
                                                 "cout": cout, "stride": _pair(self._arg(node, 3, "stride", 1))}
        return f"function:{getattr(target, '__module__', '')}.{name}", {}

    def _arg(self, node: fx.Node, pos: int, key: str, default: Any) -> Any:
        if len(node.args) > pos:
            return self._load(node.args[pos])
        return self._load(node.kwargs.get(key, default))

    def _fn_attrs(self, target: Any, node: fx.Node, value: Any) -> dict[str, Any]:
        if target in (F.max_pool2d, F.avg_pool2d):
            k = _pair(self._arg(node, 1, "kernel_size", 1))
            s = self._arg(node, 2, "stride", None)
            return {"kernel": k, "stride": _pair(s) if s else k, "padding": _pair(self._arg(node, 3, "padding", 0)),
                    "ceil_mode": bool(self._arg(node, 5 if target is F.max_pool2d else 4, "ceil_mode", False))}
        if target in (torch.cat, torch.concat, torch.stack):
            dim = self._arg(node, 1, "dim", 0)
            return {"axis": int(dim) % len(value.shape)}
        if getattr(target, "__name__", "") == "shifted_window_attention":
            window = self._load(node.args[4])
            return {"window": int(window[0]), "heads": int(self._load(node.args[5]))}
        if target is F.linear:
            w = self._load(node.args[1] if len(node.args) > 1 else node.kwargs["weight"])
            return {"cin": int(w.shape[1]), "cout": int(w.shape[0])}
        return {}

    def _refine(self, op: str, node: fx.Node, value: Any) -> str:
        """Ops whose canonical name depends on arguments (mean over H, W is global pooling; getitem)."""
        if op == "mean":
            x = self.env[node.args[0]]
            dims = self._arg(node, 1, "dim", None)
            dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
            spatial = {d % x.dim() for d in dims}
            return "global_avgpool" if x.dim() == 4 and spatial == {2, 3} else "mean"
        if op == "adaptive_avgpool":
            return _adaptive_op(tuple(value.shape))
        return op

    # -- main loop ------------------------------------------------------------------------------------------------
    def run(self) -> OpGraph:
        for i, node in enumerate(self.graph.nodes):
            try:
                value = self._evaluate(node)
            except (CaptureError, UnsupportedOpError):
                raise
            except Exception as e:  # the model's own code failed on these shapes
                raise InputShapeError(
                    f"shape propagation failed at node {node.name!r} ({node.op} {node.target}) with input shape "
                    f"{self.input_shape}: {type(e).__name__}: {e}") from e
            self.env[node] = value
            if node.op == "placeholder":
                self.producer[node] = "input" if i == 0 else None
                continue
            if node.op in ("get_attr", "output"):
                self.producer[node] = None
                continue
            data_in = self._data_inputs(node)
            if not data_in or not _tensors_in(value):
                self.producer[node] = None   # constants or shape arithmetic: folded away at inference
                continue
            # getitem on a tuple/list produced by a split or attention: alias to that producer
            if node.target is operator.getitem and not _is_tensor(self.env[node.args[0]]):
                self.producer[node] = self.producer[node.args[0]]
                continue
            op, attrs = self._classify(node, value)
            if op is None:
                self.producer[node] = self.producer[data_in[0]]
                continue
            if ":" in op:
                raise UnsupportedOpError(op, node.name, len(self.nodes), "torch.fx",
                                         "hwnas's canonical vocabulary has no mapping for it")
            outs = _tensors_in(value)
            in_shapes = [tuple(self.env[a].shape) if _is_tensor(self.env[a])
                         else tuple(_tensors_in(self.env[a])[0].shape) for a in data_in]
            self.nodes.append(OpNode(name=node.name, op=op, inputs=[self.producer[a] for a in data_in],
                                     input_shapes=in_shapes, output_shape=tuple(outs[0].shape), attrs=attrs))
            self.producer[node] = node.name
        return finalize(OpGraph(self.nodes, ["input"], source="torch"))


def capture_module(model: nn.Module, input_shape: tuple[int, ...]) -> OpGraph:
    """Op graph of a ``torch.nn.Module`` in inference mode, for an input of ``input_shape`` (NCHW)."""
    was_training = model.training
    model.eval()
    try:
        try:
            # Tracer.trace gives the Graph without generating and compiling a GraphModule (half the cost).
            graph = model.graph if isinstance(model, fx.GraphModule) else fx.Tracer().trace(model)
        except Exception as e:
            raise CaptureError(f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {e}. "
                               "Export the model to ONNX or TorchScript and pass that instead.") from e
        return _Capture(model, graph, tuple(int(s) for s in input_shape)).run()
    finally:
        model.train(was_training)
