"""Helpers shared by the exporters (private): the error type, output paths, warnings, output comparison."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from hwnas._warnings import quiet_deprecations  # noqa: F401  (shared with the builder's backends)
from hwnas.errors import ExportError  # noqa: F401  (re-exported by hwnas.export)

__all__ = ["ExportError", "check_input_shape", "first_line", "max_abs_diff", "quiet_deprecations",
           "reserve_output", "writable_dir"]


def first_line(e: BaseException) -> str:
    """``"TypeName: first line of the message"`` (TorchScript errors run to dozens of lines)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else '(no message)'}"


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """A tuple of >= 2 positive ints (batch first), else :class:`ExportError` naming the shape.

    The check is :func:`hwnas.graph.check_input_shape`'s (the one check); only the error type is the exporters'.
    """
    from hwnas.graph import check_input_shape as check
    from hwnas.errors import InputShapeError

    try:
        return check(input_shape)
    except InputShapeError as e:
        raise ExportError(str(e)) from None


def writable_dir(directory: Path, what: str) -> None:
    """Check that ``directory`` exists, is a directory, and a file can be created in it (a real probe: root passes
    ``os.access`` everywhere).

    Raises
    ------
    ExportError
        Naming ``what`` (e.g. "TorchScript output") and the directory.
    """
    if not directory.exists():
        raise ExportError(f"cannot write the {what}: directory {str(directory)!r} does not exist")
    if not directory.is_dir():
        raise ExportError(f"cannot write the {what}: {str(directory)!r} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".hwnas-probe-", dir=directory)
    except OSError as e:
        raise ExportError(f"cannot write the {what}: directory {str(directory)!r} is not writable "
                          f"({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def reserve_output(path: str | os.PathLike, what: str) -> Path:
    """Validate an output file path before any work: not a directory, parent exists and is writable.

    Returns
    -------
    Path
        The absolute path.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ExportError(f"the {what} path must be a non-empty str or path, got {path!r}")
    p = Path(os.fspath(path)).expanduser().absolute()
    if p.is_dir():
        raise ExportError(f"cannot write the {what}: {str(p)!r} is a directory, not a file path")
    writable_dir(p.parent, what)
    return p


def _leaves(out: Any) -> list[Any]:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _leaves(o)]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _leaves(out[k])]
    raise ExportError(f"model outputs must be tensors or (nested) tuples, lists or dicts of tensors, "
                      f"got {type(out).__name__}")


def output_tensors(out: Any) -> list[Any]:
    """The tensors of a model output (a tensor, or nested tuples/lists/dicts of tensors), in a stable order."""
    return _leaves(out)


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two model outputs of the same structure; ``inf`` on a shape mismatch
    or a NaN."""
    ta, tb = output_tensors(a), output_tensors(b)
    if len(ta) != len(tb):
        return float("inf")
    worst = 0.0
    for x, y in zip(ta, tb):
        x = x.detach().cpu().double() if hasattr(x, "detach") else x
        y = y.detach().cpu().double() if hasattr(y, "detach") else y
        if tuple(x.shape) != tuple(y.shape):
            return float("inf")
        if x.numel():
            d = float((x - y).abs().max())
            if d != d:   # NaN
                return float("inf")
            worst = max(worst, d)
    return worst


def max_abs(out: Any) -> float:
    """Largest absolute value of a model output (the scale a parity figure is read against)."""
    return max((float(t.detach().abs().max()) for t in output_tensors(out) if t.numel()), default=0.0)
