"""Model → op graph with shapes. See :func:`capture`.

Public API: :func:`capture` (a model to an :class:`OpGraph`), :class:`OpGraph`, :class:`OpNode`,
:data:`CANONICAL_OPS`, :func:`fold_batchnorm`; :data:`COPIED_INPUTS` (the attribute marking inputs an op read through a
single-input concat the passes removed); :func:`canonicalize` — the shared passes every capture ends with,
applied again to a stored graph (one written by an older hwnas reads as a capture of today's); :func:`check_input_shape` — the one check of an input shape
(>= 2 positive ints, batch first; :class:`~hwnas.errors.InputShapeError`); :func:`onnx_input_shapes` — an ONNX
model's static input shape and the one its hwnas metadata records (imported on first use: it needs numpy).
"""

from hwnas._lazy import lazy_exports
from hwnas.graph._ir import CANONICAL_OPS, OpGraph, OpNode
from hwnas.graph._capture import capture, check_input_shape
from hwnas.graph._passes import COPIED_INPUTS, canonicalize, fold_batchnorm

__all__ = ["CANONICAL_OPS", "COPIED_INPUTS", "OpGraph", "OpNode", "canonicalize", "capture", "check_input_shape",
           "fold_batchnorm", "onnx_input_shapes"]

__getattr__, __dir__ = lazy_exports(__name__, {"onnx_input_shapes": "hwnas.graph._onnx"}, globals())
