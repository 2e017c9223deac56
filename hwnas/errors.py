"""Errors hwnas raises. Each names the thing that is wrong so a user can fix it without reading code."""

from __future__ import annotations

#: Exit status of a command-line program (``hwnas``, the ``experiments/`` entry points) that ends on a
#: :class:`HwnasError`: one ``error:`` line, no traceback; the same status as argparse's usage errors.
EXIT_ERROR = 2


class HwnasError(Exception):
    """Base class of every error hwnas raises on purpose."""


class CaptureError(HwnasError):
    """A model could not be turned into an op graph (failed trace, unreadable file, bad input shape)."""


class UnsupportedOpError(CaptureError):
    """The model contains an op outside hwnas's canonical vocabulary."""

    def __init__(self, op: str, node: str, position: int, source: str, hint: str = ""):
        self.op, self.node, self.position, self.source = op, node, position, source
        msg = (f"unsupported op {op!r} at node {node!r} (position {position} of the {source} graph)"
               + (f": {hint}" if hint else ""))
        super().__init__(msg)


class InputShapeError(CaptureError):
    """The input shape does not fit the model (wrong rank, wrong channels, too small)."""


class UnknownKernelError(HwnasError):
    """A kernel has no regressor in the predictor: never priced as 0 ms."""

    def __init__(self, kernel_type: str, ops: list[str], position: int, predictor: str, reason: str | None = None):
        self.kernel_type, self.ops, self.position, self.predictor = kernel_type, ops, position, predictor
        self.reason = reason
        why = f": {reason}" if reason else ""
        super().__init__(
            f"predictor {predictor!r} has no regressor for kernel type {kernel_type!r} "
            f"(kernel {position}, ops {ops}){why}; refusing to price it as 0 ms")


class PredictorFileError(HwnasError):
    """A predictor file is missing, corrupt, tampered with (checksum), or of a future schema."""


class InfeasibleBudgetError(HwnasError):
    """A latency budget that no architecture of the space meets."""


class ArchitectureError(HwnasError, ValueError):
    """An architecture names a label or a choice the search space does not have."""


class TableFileError(HwnasError):
    """A latency table file is missing, corrupt, or of a newer schema than this hwnas reads."""


class FusionBoundaryError(HwnasError):
    """A fusion rule of the predictor can fuse ops across a block boundary: a per-block table cannot be exact."""


class StoreError(HwnasError):
    """A measurement store is corrupt, or stores of different machines or protocols would be mixed."""


class DataError(HwnasError):
    """A dataset path is missing or malformed (hwnas never downloads data)."""


class ExportError(HwnasError):
    """An export could not be written, read back, or failed its parity check (the file and the check are named)."""


class BackendUnavailableError(HwnasError):
    """A measurement backend cannot run on this machine (``torchscript-cuda`` without CUDA); the reason is named."""
