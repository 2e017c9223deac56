"""Warning filters shared by the packages that compile or export torch models (the builder's backends, the
exporters): library plumbing, so that neither imports the other for it."""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

__all__ = ["quiet_deprecations"]

#: Messages of torch's deprecation notices about ``torch.jit`` and the legacy (TorchScript-based) ONNX exporter.
DEPRECATION_PATTERNS = (r".*is deprecated.*", r".*legacy TorchScript-based ONNX export.*",
                        r".*feature will be removed.*")


@contextlib.contextmanager
def quiet_deprecations() -> Iterator[None]:
    """Hide torch's deprecation notices about jit/legacy ONNX export within the block.

    Every other warning stays (a ``TracerWarning``, hwnas's own warnings); the filters are restored when the
    block ends.
    """
    with warnings.catch_warnings():
        for pattern in DEPRECATION_PATTERNS:
            warnings.filterwarnings("ignore", message=pattern)
        yield
