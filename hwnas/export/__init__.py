"""Export winning subnets: TorchScript with metadata, ONNX, and a Triton model repository.

Public API (everything else is private machinery and may change):

- :func:`export_subnet` — one architecture of a search space, with weights from the supernet, a subnet, a state
  dict or a checkpoint, to TorchScript (and optionally ONNX and Triton); the entry point for search winners.
- :func:`export_torchscript` — any module: ``torch.jit.script`` (trace only as a recorded fallback), optional
  freezing, metadata in the file, parity checked on the file as loaded back, predicted vs measured latency (ms).
- :func:`subnet_with_weights` — the plain subnet of an architecture with those weights (no export).
- :class:`ExportReport` — what an export did (``.to_dict()``, ``.table()``).
- :func:`read_metadata` — the ``hwnas.json`` metadata of an exported file.
- :func:`arch_document`, :func:`read_arch_document`, :class:`ArchFile` — the architecture file a search writes
  (space, config, architecture, input shape) and reads back.
- :func:`export_onnx`, :class:`OnnxExport` — ONNX file, ``onnx.checker`` and ONNX Runtime parity.
- :func:`write_triton_repo`, :func:`validate_triton_config`, :class:`TritonConfig` — Triton's PyTorch-backend
  layout, the config validated with Triton's own schema (``tritonclient``).
- :class:`ExportError` — an export could not be written, read back or checked.
- :func:`register_commands` — adds ``hwnas export`` to the ``hwnas`` parser.

A file written here loads with plain ``torch.jit.load`` (no hwnas, no NNI)::

    extra = {"hwnas.json": ""}
    model = torch.jit.load("model.pt", _extra_files=extra)
    meta = json.loads(extra["hwnas.json"])

Names are imported lazily on first use (no torch, NNI or onnx import at ``import hwnas.export``).
"""

from __future__ import annotations

from hwnas._lazy import lazy_exports

_LAZY = {
    "export_subnet": "hwnas.export._subnet",
    "subnet_with_weights": "hwnas.export._subnet",
    "export_torchscript": "hwnas.export._torchscript",
    "read_metadata": "hwnas.export._torchscript",
    "METADATA_FILE": "hwnas.export._torchscript",
    "METADATA_SCHEMA": "hwnas.export._torchscript",
    "ExportReport": "hwnas.export._report",
    "arch_document": "hwnas.export._arch_file",
    "read_arch_document": "hwnas.export._arch_file",
    "ArchFile": "hwnas.export._arch_file",
    "latency_check": "hwnas.export._report",
    "ExportError": "hwnas.export._common",
    "register_commands": "hwnas.export._cli",
    "export_onnx": "hwnas.export._onnx",
    "OnnxExport": "hwnas.export._onnx",
    "write_triton_repo": "hwnas.export._triton",
    "validate_triton_config": "hwnas.export._triton",
    "TritonConfig": "hwnas.export._triton",
    "TritonTensor": "hwnas.export._triton",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
