"""Capture ONNX models, and TorchScript models through ONNX.

ONNX: shapes come from ``onnx.shape_inference`` after the data input's dimensions are set to ``input_shape``.
Sub-graphs that only compute shapes (``Shape``, ``Gather`` on shapes, ``Constant``...) are not ops of the
network and are dropped: a node is an op only when one of its inputs carries data derived from the image input.
The first graph input that is not an initializer is the image; other non-initializer inputs are treated as
parameters (exporters with ``export_params=False`` write weights that way).

TorchScript: a ScriptModule cannot be re-traced, and its graph carries no shapes; the legacy TorchScript ONNX
exporter (``dynamo=False``) was built for ScriptModules, so a TorchScript model is exported to ONNX in memory
(without constant folding, so BatchNorm is kept and the op graph matches the ``torch`` route) and captured as
ONNX. Frozen modules with backend-specific prepacked ops (``optimize_for_inference``) cannot be exported and
raise :class:`~hwnas.errors.CaptureError`.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from hwnas.errors import CaptureError, InputShapeError, UnsupportedOpError
from hwnas.graph._ir import OpGraph, OpNode
from hwnas.graph._passes import finalize

_SIMPLE = {
    "BatchNormalization": "bn", "InstanceNormalization": "bn", "LayerNormalization": "ln", "Relu": "relu",
    "HardSwish": "hswish", "HardSigmoid": "hsigmoid", "Sigmoid": "sigmoid", "Tanh": "tanh", "Gelu": "gelu",
    "Erf": "gelu", "Softmax": "softmax", "Add": "add", "Sub": "add", "Mul": "mul", "Div": "mul",
    "Concat": "concat", "Split": "split", "Slice": "slice", "Gather": "slice", "Reshape": "reshape",
    "Flatten": "reshape", "Squeeze": "reshape", "Unsqueeze": "reshape", "Expand": "reshape",
    "Transpose": "permute", "GlobalAveragePool": "global_avgpool", "Pad": "pad", "Dropout": "dropout",
    "Einsum": "matmul",
}
_ALIAS = {"Identity", "Cast"}


def _dims(value_info: Any) -> tuple[int, ...] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if not d.HasField("dim_value"):
            return None
        dims.append(int(d.dim_value))
    return tuple(dims)


def _load_onnx(model: Any):
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise CaptureError(f"ONNX file not found: {path}")
    try:
        return onnx.load(path)
    except Exception as e:
        raise CaptureError(f"cannot read ONNX file {path}: {type(e).__name__}: {e}") from e


class _OnnxCapture:
    def __init__(self, proto: Any, input_shape: tuple[int, ...] | None):
        import onnx
        from onnx import numpy_helper

        inits = {i.name for i in proto.graph.initializer}
        data_inputs = [i for i in proto.graph.input if i.name not in inits]
        if not data_inputs:
            raise CaptureError("ONNX graph has no data input")
        self.input_name = data_inputs[0].name
        if input_shape is not None:
            self._set_input_shape(data_inputs[0], input_shape)
        try:
            proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        except Exception as e:
            raise InputShapeError(f"ONNX shape inference failed for input shape {input_shape}: {e}") from e
        self.graph = proto.graph
        self.shapes: dict[str, tuple[int, ...] | None] = {}
        for vi in list(proto.graph.input) + list(proto.graph.value_info) + list(proto.graph.output):
            self.shapes[vi.name] = _dims(vi)
        self.proto = proto
        self._ran = False
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        for init in proto.graph.initializer:
            self.shapes.setdefault(init.name, tuple(init.dims))
        for n in proto.graph.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)

    @staticmethod
    def _set_input_shape(vi: Any, input_shape: tuple[int, ...]) -> None:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(input_shape):
            raise InputShapeError(f"ONNX input {vi.name!r} has rank {len(dims)}, input_shape {input_shape} "
                                  f"has rank {len(input_shape)}")
        for d, s in zip(dims, input_shape):
            if d.HasField("dim_value") and d.dim_value != s:
                raise InputShapeError(f"ONNX input {vi.name!r} is fixed to "
                                      f"{tuple(x.dim_value for x in dims)}; input_shape {input_shape} differs")
            d.dim_value = s

    def _run_for_shapes(self) -> None:
        """Fallback when static inference leaves shapes unknown (slices with computed bounds in scripted
        models): run the graph once in ONNX Runtime on zeros with every intermediate tensor as an output."""
        import onnx
        import onnxruntime as ort

        self._ran = True
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        known = {o.name for o in proto.graph.output}
        for n in proto.graph.node:
            for out in n.output:
                if out and out not in known and n.op_type not in ("SequenceConstruct",):
                    proto.graph.output.append(onnx.ValueInfoProto(name=out))
                    known.add(out)
        inits = {i.name for i in proto.graph.initializer}
        feeds = {}
        for vi in proto.graph.input:
            if vi.name in inits:
                continue
            shape = _dims(vi)
            if shape is None:
                raise CaptureError(f"ONNX input {vi.name!r} has no static shape; pass input_shape")
            dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            feeds[vi.name] = np.zeros(shape, dtype=dtype)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = 1
        try:
            sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            names = [o.name for o in sess.get_outputs()]
            for name, value in zip(names, sess.run(names, feeds)):
                if isinstance(value, np.ndarray):
                    self.shapes[name] = tuple(int(d) for d in value.shape)
        except Exception as e:
            raise CaptureError(f"ONNX shapes could not be inferred nor computed by running the graph: {e}") from e

    def _shape(self, name: str, node: Any) -> tuple[int, ...]:
        s = self.shapes.get(name)
        if s is None and not self._ran:
            self._run_for_shapes()
            s = self.shapes.get(name)
        if s is None:
            raise CaptureError(f"ONNX shape inference left tensor {name!r} (node {node.name!r}, {node.op_type}) "
                               "without a static shape")
        return s

    def _attrs(self, node: Any) -> dict[str, Any]:
        from onnx import helper

        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def _classify(self, node: Any, data_in: list[str]) -> tuple[str, dict[str, Any]]:
        t, a = node.op_type, self._attrs(node)
        if t == "Conv":
            w = self._shape(node.input[1], node)
            groups = int(a.get("group", 1))
            cout, cin = w[0], w[1] * groups
            pads = a.get("pads", [0, 0, 0, 0])
            attrs = {"kernel": tuple(w[2:]), "stride": tuple(a.get("strides", [1, 1])),
                     "padding": tuple(pads[: len(pads) // 2]), "dilation": tuple(a.get("dilations", [1, 1])),
                     "groups": groups, "cin": cin, "cout": cout, "bias": len(node.input) > 2}
            return ("dwconv" if groups > 1 and groups == cin and cout % cin == 0 else "conv"), attrs
        if t in ("Gemm", "MatMul"):
            if len(data_in) >= 2 or node.input[1] in data_in:
                return "matmul", {}
            w = self._shape(node.input[1], node)
            trans = t == "Gemm" and int(a.get("transB", 0)) == 1
            return "fc", {"cin": int(w[1] if trans else w[0]), "cout": int(w[0] if trans else w[1]),
                          "bias": len(node.input) > 2}
        if t in ("MaxPool", "AveragePool"):
            k = tuple(a["kernel_shape"])
            pads = a.get("pads", [0] * 2 * len(k))
            return ("maxpool" if t == "MaxPool" else "avgpool"), {
                "kernel": k, "stride": tuple(a.get("strides", [1] * len(k))), "padding": tuple(pads[: len(k)]),
                "ceil_mode": bool(a.get("ceil_mode", 0))}
        if t == "Clip":
            lo = self._const(node.input[1]) if len(node.input) > 1 and node.input[1] else a.get("min")
            hi = self._const(node.input[2]) if len(node.input) > 2 and node.input[2] else a.get("max")
            if lo is not None and hi is not None and float(lo) == 0.0 and float(hi) == 6.0:
                return "relu6", {}
            return "unsupported Clip", {}
        if t == "ReduceMean":
            axes = a.get("axes")
            if axes is None and len(node.input) > 1:
                axes = self._const(node.input[1])
            rank = len(self._shape(node.input[0], node))
            if axes is not None and rank == 4 and {int(x) % 4 for x in np.ravel(axes)} == {2, 3}:
                return "global_avgpool", {}
            return "mean", {}
        if t == "ConcatFromSequence":
            return "concat", {"axis": int(a["axis"])}
        if t in _SIMPLE:
            if t in ("Concat", "Softmax") and "axis" in a:
                rank = len(self._shape(node.output[0], node))
                return _SIMPLE[t], {"axis": int(a["axis"]) % rank}
            return _SIMPLE[t], {}
        return t, {}

    def _const(self, name: str) -> Any:
        v = self.consts.get(name)
        return None if v is None else v.item() if v.size == 1 else v

    def run(self) -> OpGraph:
        producer: dict[str, str] = {self.input_name: "input"}
        sequences: dict[str, list[str]] = {}   # SequenceConstruct output → member tensors (scripted torch.cat)
        nodes: list[OpNode] = []
        for i, node in enumerate(self.graph.node):
            if node.op_type in ("SequenceConstruct", "SequenceEmpty"):
                sequences[node.output[0]] = list(node.input)
                continue
            if node.op_type == "SequenceInsert" and node.input[0] in sequences and len(node.input) == 2:
                sequences[node.output[0]] = sequences[node.input[0]] + [node.input[1]]
                continue
            if node.op_type == "ConcatFromSequence" and node.input[0] in sequences:
                inputs = sequences[node.input[0]]
            else:
                inputs = list(node.input)
            data_in = [x for x in inputs if x in producer]
            if not data_in or node.op_type in ("Shape", "Size", "Constant", "ConstantOfShape"):
                continue   # shape arithmetic and constants
            if node.op_type in _ALIAS:
                producer[node.output[0]] = producer[data_in[0]]
                continue
            op, attrs = self._classify(node, data_in)
            name = node.name or f"{node.op_type}_{i}"
            if op not in _SIMPLE.values() and op not in ("conv", "dwconv", "fc", "matmul", "maxpool", "avgpool",
                                                         "relu6", "global_avgpool", "mean", "concat"):
                raise UnsupportedOpError(op, name, len(nodes), "onnx")
            srcs = list(dict.fromkeys(producer[x] for x in data_in))
            first = {}
            for x in data_in:
                first.setdefault(producer[x], x)
            nodes.append(OpNode(name, op, srcs, [self._shape(first[s], node) for s in srcs],
                                self._shape(node.output[0], node), attrs))
            for out in node.output:
                producer[out] = name
        return finalize(OpGraph(nodes, ["input"], source="onnx"))


def onnx_input_shapes(model: Any) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """(the static shape of an ONNX model's data input, the input shape its hwnas metadata records).

    The data input is the first non-initializer input; its shape is ``None`` when a dim is dynamic (a symbolic
    batch, for instance). The recorded shape is the ``input_shape`` of the ``metadata_props`` entry ``hwnas``
    (files written by ``hwnas export``), ``None`` without one.
    """
    import json

    import onnx

    if isinstance(model, (str, os.PathLike)) and os.path.isfile(os.fspath(model)):
        try:   # the graph only: external weights are not needed for the input's shape
            model = onnx.load(os.fspath(model), load_external_data=False)
        except Exception as e:
            raise CaptureError(f"cannot read ONNX file {os.fspath(model)}: {type(e).__name__}: {e}") from e
    proto = _load_onnx(model)
    inits = {i.name for i in proto.graph.initializer}
    data_inputs = [i for i in proto.graph.input if i.name not in inits]
    if not data_inputs:
        raise CaptureError("ONNX graph has no data input")
    recorded = None
    for entry in proto.metadata_props:
        if entry.key == "hwnas":
            try:
                shape = json.loads(entry.value).get("input_shape")
            except (ValueError, AttributeError):
                shape = None
            if isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape):
                recorded = tuple(shape)
    return _dims(data_inputs[0]), recorded


def capture_onnx(model: Any, input_shape: tuple[int, ...] | None) -> OpGraph:
    """Op graph of an ONNX model (``onnx.ModelProto``, bytes, or a file path)."""
    return _OnnxCapture(_load_onnx(model), input_shape).run()


def capture_torchscript(model: Any, input_shape: tuple[int, ...]) -> OpGraph:
    """Op graph of a TorchScript module or ``.pt`` file, through an in-memory ONNX export."""
    import warnings

    import torch

    if not isinstance(model, torch.jit.ScriptModule):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise CaptureError(f"TorchScript file not found: {path}")
        try:
            model = torch.jit.load(path, map_location="cpu")
        except Exception as e:
            raise CaptureError(f"cannot load TorchScript file {path}: {type(e).__name__}: {e}") from e
    model.eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(input_shape),), buf, dynamo=False, do_constant_folding=False,
                              export_params=False, input_names=["input"])
    except Exception as e:
        raise CaptureError(f"cannot export the TorchScript module to ONNX for capture with input shape "
                           f"{input_shape}: {type(e).__name__}: {str(e)[:500]}") from e
    graph = capture_onnx(buf.getvalue(), input_shape)
    graph.source = "torchscript"
    return graph
