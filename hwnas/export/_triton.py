"""A Triton Inference Server model repository entry for a TorchScript file (private module).

Layout of Triton's PyTorch (LibTorch) backend::

    <repo>/<name>/config.pbtxt
    <repo>/<name>/<version>/model.pt

``config.pbtxt`` is written from :class:`TritonConfig` in protobuf text format: ``platform:
"pytorch_libtorch"``, inputs ``INPUT__0``, outputs ``OUTPUT__<i>`` (the backend's ``<name>__<index>`` naming
convention), data types (``TYPE_FP32``...), dims and ``max_batch_size``. With ``max_batch_size > 0`` the dims
leave out the batch dimension (Triton adds it); with 0 they are the full shapes.

The text is validated by parsing it with Triton's own model-config schema, ``ModelConfig`` of
``model_config_pb2`` shipped by the ``tritonclient`` package (``pip install tritonclient``; its gRPC extra is
not needed: when ``grpcio`` is missing the schema module is loaded from the package's file directly).

Limitations
-----------
- One tensor input; outputs may be a tensor or a (nested) tuple/list of tensors.
- No Triton server is started: the check is the schema parse plus the consistency checks of
  :func:`validate_triton_config`, and a run of the model on the declared shapes.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hwnas.files import atomic_path, atomic_write

from ._common import ExportError, check_input_shape, first_line, output_tensors, quiet_deprecations, writable_dir

__all__ = ["TritonConfig", "TritonTensor", "check_model_name", "validate_triton_config", "write_triton_repo"]

PLATFORM = "pytorch_libtorch"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_DTYPES = {"torch.float32": "TYPE_FP32", "torch.float16": "TYPE_FP16", "torch.bfloat16": "TYPE_BF16",
           "torch.float64": "TYPE_FP64", "torch.int64": "TYPE_INT64", "torch.int32": "TYPE_INT32",
           "torch.int16": "TYPE_INT16", "torch.int8": "TYPE_INT8", "torch.uint8": "TYPE_UINT8",
           "torch.bool": "TYPE_BOOL"}
_KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU")


@dataclass(frozen=True)
class TritonTensor:
    """One input or output of a Triton model: name, data type (``TYPE_FP32``...) and dims."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class TritonConfig:
    """The fields of ``config.pbtxt`` hwnas writes.

    Parameters
    ----------
    name : str
        Model name (= its directory name in the repository).
    inputs, outputs : tuple of TritonTensor
        Dims without the batch dimension when ``max_batch_size > 0``.
    max_batch_size : int
        Largest batch Triton may form (0: the model takes no batch dimension from Triton).
    platform : str
        ``"pytorch_libtorch"``.
    instance_kind : str, optional
        ``KIND_CPU``, ``KIND_GPU`` or ``KIND_AUTO`` for one ``instance_group``; none written when not given
        (Triton's default: GPUs when present).
    default_model_filename : str
        File name inside the version directory.
    """

    name: str
    inputs: tuple[TritonTensor, ...]
    outputs: tuple[TritonTensor, ...]
    max_batch_size: int = 8
    platform: str = PLATFORM
    instance_kind: str | None = None
    default_model_filename: str = "model.pt"

    def to_pbtxt(self) -> str:
        """The config in protobuf text format (what Triton reads from ``config.pbtxt``)."""

        def tensor(t: TritonTensor) -> str:
            dims = ", ".join(str(int(d)) for d in t.dims)
            return f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n    dims: [ {dims} ]\n  }}'

        lines = [f'name: "{self.name}"', f'platform: "{self.platform}"', f"max_batch_size: {int(self.max_batch_size)}",
                 f'default_model_filename: "{self.default_model_filename}"',
                 "input [\n" + ",\n".join(tensor(t) for t in self.inputs) + "\n]",
                 "output [\n" + ",\n".join(tensor(t) for t in self.outputs) + "\n]"]
        if self.instance_kind is not None:
            lines.append(f"instance_group [\n  {{\n    count: 1\n    kind: {self.instance_kind}\n  }}\n]")
        return "\n".join(lines) + "\n"


def check_model_name(name: str) -> str:
    """A valid Triton model (directory) name, else :class:`ExportError`."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ExportError(f"Triton model name must be letters, digits, '_', '.', '-' (not starting with '.' "
                          f"or '-'), got {name!r}")
    return name


@functools.lru_cache(maxsize=1)
def _model_config_pb2() -> Any:
    """Triton's ``model_config_pb2`` (the schema of ``config.pbtxt``), from the ``tritonclient`` package."""
    try:
        from tritonclient.grpc import model_config_pb2
        return model_config_pb2
    except ImportError:
        pass
    except RuntimeError:
        pass   # tritonclient without its gRPC extra: its grpc package refuses to import, the schema file is there
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise ExportError("validating a Triton config needs Triton's model-config schema from the tritonclient "
                          "package: pip install tritonclient")
    file = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    if not file.is_file():
        raise ExportError(f"the installed tritonclient has no grpc/model_config_pb2.py ({file}); "
                          "reinstall it: pip install --force-reinstall tritonclient")
    mod_spec = importlib.util.spec_from_file_location("_hwnas_triton_model_config_pb2", file)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - e.g. a protobuf runtime too old for the generated code
        raise ExportError(f"cannot load Triton's model-config schema from {file}: {first_line(e)}") from e
    return module


def validate_triton_config(text: str, *, name: str | None = None) -> Any:
    """Parse ``config.pbtxt`` text with Triton's ``ModelConfig`` schema and check what the LibTorch backend needs.

    Parameters
    ----------
    text : str
        The config in protobuf text format.
    name : str, optional
        Expected model name (the directory name).

    Returns
    -------
    inference.ModelConfig
        The parsed protobuf message.

    Raises
    ------
    ExportError
        A field unknown to the schema, a malformed value, or: platform not ``pytorch_libtorch``, no input or
        output, an invalid data type, empty or non-positive dims (``-1`` allowed: variable size), a negative
        ``max_batch_size``, a name that differs from ``name``, tensor names off the ``<name>__<index>``
        convention.
    """
    from google.protobuf import text_format

    pb2 = _model_config_pb2()
    try:
        config = text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ExportError(f"config.pbtxt does not parse with Triton's ModelConfig schema: {e}") from None
    problems = []
    if config.platform != PLATFORM and config.backend != "pytorch":
        problems.append(f"platform is {config.platform!r}, not {PLATFORM!r}")
    if name is not None and config.name != name:
        problems.append(f"name is {config.name!r} but the model directory is {name!r}")
    if config.max_batch_size < 0:
        problems.append(f"max_batch_size is {config.max_batch_size} (must be >= 0)")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        if not tensors:
            problems.append(f"no {kind}")
        for i, t in enumerate(tensors):
            if not re.match(r"^[A-Za-z0-9_]+__\d+$", t.name):
                problems.append(f"{kind} name {t.name!r} does not follow the <name>__<index> convention")
            if t.data_type == pb2.TYPE_INVALID:
                problems.append(f"{kind} {t.name!r} has no valid data_type")
            if not t.dims or any(d == 0 or d < -1 for d in t.dims):
                problems.append(f"{kind} {t.name!r} has dims {list(t.dims)} (need positive sizes or -1)")
    if problems:
        raise ExportError("invalid Triton config: " + "; ".join(problems))
    return config


def _load(model: Any) -> tuple[Any, Path | None]:
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        return model, None
    if isinstance(model, (str, os.PathLike)):
        p = Path(os.fspath(model))
        if not p.is_file():
            raise ExportError(f"no TorchScript file at {str(p)!r}")
        try:
            with quiet_deprecations():
                return torch.jit.load(os.fspath(p), map_location="cpu"), p
        except Exception as e:  # noqa: BLE001 - named and chained
            raise ExportError(f"cannot load {str(p)!r} as TorchScript: {first_line(e)}") from e
    raise TypeError(f"model must be a TorchScript file path or a ScriptModule, got {type(model).__name__} "
                    "(export it with export_torchscript first)")


def triton_config_for(module: Any, name: str, input_shape: Sequence[int], max_batch_size: int = 8,
                      instance_kind: str | None = None) -> TritonConfig:
    """The :class:`TritonConfig` of a TorchScript module, output shapes found by running it once on zeros."""
    import torch

    shape = check_input_shape(input_shape)
    if int(max_batch_size) < 0:
        raise ExportError(f"max_batch_size must be >= 0, got {max_batch_size}")
    if instance_kind is not None and instance_kind not in _KINDS:
        raise ExportError(f"instance_kind must be one of {_KINDS} or None, got {instance_kind!r}")
    try:
        with torch.no_grad():
            outs = output_tensors(module(torch.zeros(shape)))
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - named and chained
        raise ExportError(f"the model does not run on input shape {shape}: {first_line(e)}") from e
    batched = int(max_batch_size) > 0

    def dims(s: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(d) for d in (s[1:] if batched else s))

    def dtype(t: Any) -> str:
        if str(t.dtype) not in _DTYPES:
            raise ExportError(f"no Triton data type for {t.dtype}")
        return _DTYPES[str(t.dtype)]

    inputs = (TritonTensor("INPUT__0", "TYPE_FP32", dims(shape)),)
    outputs = tuple(TritonTensor(f"OUTPUT__{i}", dtype(t), dims(tuple(t.shape))) for i, t in enumerate(outs))
    if batched and any(len(t.dims) == 0 for t in outputs):
        raise ExportError("an output has no dimension besides the batch; use max_batch_size=0")
    return TritonConfig(name=name, inputs=inputs, outputs=outputs, max_batch_size=int(max_batch_size),
                        instance_kind=instance_kind)


def write_triton_repo(model: Any, repo_dir: str | os.PathLike, name: str, input_shape: Sequence[int], *,
                      max_batch_size: int = 8, version: int = 1, instance_kind: str | None = None) -> Path:
    """Write ``<repo_dir>/<name>/config.pbtxt`` and ``<repo_dir>/<name>/<version>/model.pt``.

    Parameters
    ----------
    model : str, path or ScriptModule
        A TorchScript file (copied, hwnas metadata included) or module (saved).
    repo_dir : str or path
        The model repository; created if missing (its parent must exist). Other models in it are left alone;
        this model's ``config.pbtxt`` and version file are overwritten.
    name : str
        Model name (letters, digits, ``_``, ``.``, ``-``).
    input_shape : sequence of int
        Input shape with batch, e.g. ``(1, 3, 32, 32)``; the batch is left out of the dims when
        ``max_batch_size > 0``.
    max_batch_size : int
        Triton's ``max_batch_size``; with > 0 the model is also run at batch ``max_batch_size`` to check it
        batches.
    version : int
        Version directory (>= 1).
    instance_kind : str, optional
        ``KIND_CPU``, ``KIND_GPU`` or ``KIND_AUTO`` for an ``instance_group``.

    Returns
    -------
    Path
        The model directory ``<repo_dir>/<name>``.

    Raises
    ------
    ExportError
        Unwritable repository, invalid name, a model that does not run on the declared shapes, a config the
        schema rejects, or tritonclient missing (the message says what to install).
    """
    import torch

    check_model_name(name)
    if int(version) < 1:
        raise ExportError(f"Triton model versions start at 1, got {version}")
    repo = Path(os.fspath(repo_dir)).expanduser().absolute()
    writable_dir(repo if repo.exists() else repo.parent, "Triton model repository")
    module, source = _load(model)
    shape = check_input_shape(input_shape)
    config = triton_config_for(module, name, shape, max_batch_size, instance_kind)
    text = config.to_pbtxt()
    validate_triton_config(text, name=name)
    if int(max_batch_size) > 0 and max_batch_size != shape[0]:
        try:
            with torch.no_grad():
                module(torch.zeros((int(max_batch_size), *shape[1:])))
        except Exception as e:  # noqa: BLE001 - named and chained
            raise ExportError(f"the model does not run at batch {max_batch_size} (max_batch_size): "
                              f"{first_line(e)}") from e
    model_dir = repo / name
    version_dir = model_dir / str(int(version))
    version_dir.mkdir(parents=True, exist_ok=True)
    target = version_dir / config.default_model_filename
    with atomic_path(target) as tmp:
        if source is not None:
            shutil.copyfile(source, tmp)
        else:
            with quiet_deprecations():
                torch.jit.save(module, os.fspath(tmp))
    atomic_write(model_dir / "config.pbtxt", text)
    return model_dir
