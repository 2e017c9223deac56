"""Front door of graph capture: dispatch on ``model_type``."""

from __future__ import annotations

import os
from typing import Any, Sequence

from hwnas.errors import CaptureError, InputShapeError
from hwnas.graph._ir import OpGraph

MODEL_TYPES = ("torch", "torchscript", "onnx", "graph")


def check_input_shape(input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """Validate an input shape: a sequence of >= 2 positive ints (batch included); raises InputShapeError."""
    if input_shape is None:
        raise InputShapeError("input_shape is required (e.g. (1, 3, 224, 224))")
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError) as e:
        raise InputShapeError(f"input_shape must be a sequence of ints, got {input_shape!r}") from e
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise InputShapeError(f"input_shape must have rank >= 2 and positive sizes, got {shape}")
    return shape


def capture(model: Any, model_type: str = "torch", input_shape: Sequence[int] | None = (1, 3, 224, 224)) -> OpGraph:
    """Turn a model into an :class:`OpGraph` with shapes.

    Parameters
    ----------
    model : nn.Module, torch.jit.ScriptModule, onnx.ModelProto, OpGraph, str or path
        The model; for ``torchscript`` and ``onnx`` a file path also works, for ``graph`` an :class:`OpGraph`
        or its JSON file.
    model_type : {"torch", "torchscript", "onnx", "graph"}
        The model's format (the names nn-Meter users know).
    input_shape : sequence of int
        Input tensor shape including batch, NCHW (ignored for ``graph``; for ``onnx`` it overrides dynamic
        dimensions only).

    Returns
    -------
    OpGraph

    Raises
    ------
    CaptureError
        The model cannot be traced or read; :class:`~hwnas.errors.UnsupportedOpError` for an op outside the
        vocabulary; :class:`~hwnas.errors.InputShapeError` for an input shape the model rejects.
    """
    if model_type not in MODEL_TYPES:
        raise CaptureError(f"unknown model_type {model_type!r}; expected one of {MODEL_TYPES}")
    if model_type == "graph":
        if isinstance(model, OpGraph):
            return model
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise CaptureError(f"graph file not found: {path}")
        with open(path, encoding="utf-8") as f:
            return OpGraph.from_json(f.read())
    if model_type == "onnx":
        from hwnas.graph._onnx import capture_onnx

        return capture_onnx(model, check_input_shape(input_shape) if input_shape is not None else None)
    shape = check_input_shape(input_shape)
    if model_type == "torchscript":
        from hwnas.graph._onnx import capture_torchscript

        return capture_torchscript(model, shape)
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        raise CaptureError("got a TorchScript module with model_type='torch'; pass model_type='torchscript'")
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"model_type='torch' needs a torch.nn.Module, got {type(model).__name__}")
    from hwnas.graph._fx import capture_module

    return capture_module(model, shape)
