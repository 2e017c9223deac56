"""ONNX export of a subnet, checked with ``onnx.checker`` and against ONNX Runtime (private module).

Legacy TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, opset 17), the one the
``onnxruntime-cpu`` measurement backend uses; input ``input``, output ``output`` (``output_<i>`` for several
outputs), dynamic batch dimension. The hwnas metadata is stored as the model's ``metadata_props`` entry ``hwnas``.
Constants are not folded, so BatchNorm stays a node of its own (ONNX Runtime folds it into the convolution when it
loads the file); ``hwnas predict --onnx`` folds it as every backend does and prices the file with the same kernels
(``conv-relu6``...) as the module itself, as it does a file exported with BatchNorm already folded.

Limitations
-----------
- ONNX Runtime's kernels differ from torch's; parity is checked against ``atol`` (default 1e-4, fp32).
- Models whose forward takes more than one tensor are not supported.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from hwnas.files import atomic_path

from ._common import ExportError, check_input_shape, first_line, max_abs_diff, quiet_deprecations, reserve_output

__all__ = ["OnnxExport", "export_onnx"]

ONNX_OPSET = 17


@dataclass(frozen=True)
class OnnxExport:
    """An ONNX file written by :func:`export_onnx`.

    Attributes
    ----------
    path : str
        The file.
    opset : int
        ONNX opset version.
    parity_max_abs_diff : float
        Largest absolute difference between ONNX Runtime's outputs and the eager model's (fp32).
    parity_atol : float
        The tolerance it passed.
    """

    path: str
    opset: int
    parity_max_abs_diff: float
    parity_atol: float


def export_onnx(model: Any, path: str | os.PathLike, input_shape: Sequence[int], *, opset: int = ONNX_OPSET,
                dynamic_batch: bool = True, atol: float = 1e-4, metadata: Mapping[str, Any] | None = None,
                parity_inputs: int = 2, seed: int = 0) -> OnnxExport:
    """Export a model to ONNX, check the file with ``onnx.checker`` and compare ONNX Runtime with torch.

    Parameters
    ----------
    model : nn.Module
        The network (fp32, CPU); put in eval mode for the export, its training flags restored afterwards.
    path : str or path
        Output file; its directory must exist and be writable (checked first).
    input_shape : sequence of int
        Input shape with batch, e.g. ``(1, 3, 32, 32)``.
    opset : int
        ONNX opset version.
    dynamic_batch : bool
        Mark the batch dimension of input and outputs dynamic (parity is then also checked at batch + 1).
    atol : float
        Largest allowed absolute difference between ONNX Runtime and torch.
    metadata : mapping, optional
        JSON-safe metadata stored as ``metadata_props["hwnas"]``.
    parity_inputs : int
        Random inputs compared at ``input_shape`` (one more at batch + 1 with ``dynamic_batch``).
    seed : int
        Seed of the parity inputs (local generator).

    Returns
    -------
    OnnxExport

    Raises
    ------
    ExportError
        Unwritable path, export failure, checker failure, ONNX Runtime failure or parity beyond ``atol``; the file
        is only left at ``path`` when every check passed.
    """
    import onnx
    import torch

    shape = check_input_shape(input_shape)
    out = reserve_output(path, "ONNX file")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    gen = torch.Generator().manual_seed(int(seed))
    inputs = [torch.randn(shape, generator=gen) for _ in range(max(1, int(parity_inputs)))]
    if dynamic_batch:
        inputs.append(torch.randn((shape[0] + 1, *shape[1:]), generator=gen))
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with atomic_path(out) as tmp_path:
            tmp = str(tmp_path)
            with torch.no_grad():
                reference = [model(x) for x in inputs]
            n_out = len(_flat(reference[0]))
            output_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
            dynamic_axes = {name: {0: "batch"} for name in ["input", *output_names]} if dynamic_batch else None
            try:
                with quiet_deprecations(), torch.no_grad():
                    torch.onnx.export(model, (inputs[0],), tmp, dynamo=False, opset_version=int(opset),
                                      input_names=["input"], output_names=output_names, dynamic_axes=dynamic_axes,
                                      do_constant_folding=False)   # BatchNorm kept: see the module docstring
            except Exception as e:  # noqa: BLE001 - named and chained
                raise ExportError(f"torch.onnx.export failed for {str(out)!r}: {first_line(e)}") from e
            proto = onnx.load(tmp)
            if metadata is not None:
                entry = proto.metadata_props.add()
                entry.key, entry.value = "hwnas", json.dumps(dict(metadata), sort_keys=True)
                onnx.save(proto, tmp)
            try:
                onnx.checker.check_model(tmp, full_check=True)
            except Exception as e:  # noqa: BLE001 - named and chained
                raise ExportError(f"onnx.checker rejects the export of {str(out)!r}: {first_line(e)}") from e
            diff = _ort_parity(tmp, inputs, reference, out)
            if not diff <= atol:
                raise ExportError(f"ONNX parity check failed for {str(out)!r}: ONNX Runtime differs from torch by "
                                  f"{diff:.3g} (atol {atol:g}); nothing was written")
    finally:
        for m, training in modes:
            m.training = training
    return OnnxExport(path=str(out), opset=int(opset), parity_max_abs_diff=diff, parity_atol=float(atol))


def _flat(out: Any) -> list[Any]:
    from ._common import output_tensors

    return output_tensors(out)


def _ort_parity(file: str, inputs: list[Any], reference: list[Any], out: Path) -> float:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("the ONNX parity check needs onnxruntime (pip install onnxruntime)") from None
    import torch

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(file, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        diff = 0.0
        for x, want in zip(inputs, reference):
            got = [torch.from_numpy(a) for a in sess.run(None, {name: x.numpy()})]
            diff = max(diff, max_abs_diff(_flat(want), got))
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - named and chained
        raise ExportError(f"ONNX Runtime could not run the export of {str(out)!r}: {first_line(e)}") from e
    return diff
