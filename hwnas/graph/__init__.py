"""Model → op graph with shapes. See :func:`capture`."""

from hwnas.graph._ir import CANONICAL_OPS, OpGraph, OpNode
from hwnas.graph._capture import capture

__all__ = ["CANONICAL_OPS", "OpGraph", "OpNode", "capture"]
