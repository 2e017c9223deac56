"""Model → op graph with shapes. See :func:`capture`."""

from hwnas.graph._ir import CANONICAL_OPS, OpGraph, OpNode
from hwnas.graph._capture import capture
from hwnas.graph._passes import fold_batchnorm

__all__ = ["CANONICAL_OPS", "OpGraph", "OpNode", "capture", "fold_batchnorm"]
