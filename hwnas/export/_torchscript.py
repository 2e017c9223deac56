"""TorchScript export with metadata, parity check and measured-vs-predicted latency (private module).

The file written loads with plain ``torch.jit.load`` (no hwnas, no NNI) and carries one extra file,
``hwnas.json`` (see :data:`METADATA_FILE`, :data:`METADATA_SCHEMA`): architecture, search space and config,
input shape, compile method, predictor name and checksum, predicted latency (ms), parameters, MACs (``macs``),
the parity protocol, hwnas and torch versions.

Limitations
-----------
- fp32 models only; the model is copied to the CPU (the caller's model is left untouched).
- A traced fallback records only the path taken on the example inputs (data-dependent control flow is frozen
  into the trace); the parity check runs on random inputs of the export shape only.
- The parity check compares the file as loaded back from disk with the eager model; the file is moved into place
  only when it passes, so a file at ``path`` has always passed it.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from hwnas.errors import ArchitectureError
from hwnas.files import atomic_path

from ._common import (ExportError, check_input_shape, first_line, max_abs, max_abs_diff, quiet_deprecations,
                      reserve_output, writable_dir)
from ._report import ExportReport

__all__ = ["METADATA_FILE", "METADATA_SCHEMA", "export_torchscript", "read_metadata"]

#: Name of the metadata entry in the TorchScript archive's extra files.
METADATA_FILE = "hwnas.json"
#: Version of the metadata layout; :func:`read_metadata` refuses newer ones.
METADATA_SCHEMA = 1
_METHODS = ("auto", "script", "trace")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


# ------------------------------------------------------------------------------------------------ space helpers
def space_info(space: Any, space_config: Mapping[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """(space instance usable by ``count_macs``/``validate_arch``, ``{"name", "class", "config"}``).

    A registered name is instantiated on the ``meta`` device (no memory, no arithmetic).
    """
    import dataclasses

    import torch

    import search_spaces as ss

    if isinstance(space, str):
        try:
            ss.lookup(space)
        except KeyError as e:
            raise ExportError(str(e.args[0])) from None
        try:
            with torch.device("meta"):
                instance = ss.create_space(space, **dict(space_config or {}))
        except (TypeError, ValueError) as e:
            raise ExportError(f"invalid config for search space {space!r}: {e}") from None
        name = space
    elif isinstance(space, ss.ChainSpace):
        if space_config is not None:
            raise TypeError("space_config is only accepted with a space name, not with a space instance")
        instance = space
        name = ss.space_name(space)
    else:
        raise TypeError(f"space must be a search space instance or a registered name, got {type(space).__name__}")
    cfg = dataclasses.asdict(instance.config)
    return instance, {"name": name, "class": type(instance).__name__, "config": cfg}


def check_fits(model: Any, space: Any, arch: Mapping[str, str]) -> None:
    """Check that ``model``'s state-dict keys and shapes are those of ``space``'s subnet of ``arch``.

    Raises
    ------
    ArchitectureError
        Naming the first missing, unexpected or mis-shaped keys.
    """
    import torch

    with torch.device("meta"):
        reference = type(space).assemble_subnet(space.config, arch)
    want = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = mismatch_summary(want, have)
    if problems:
        raise ArchitectureError(f"the model does not fit architecture of {type(space).__name__} "
                                f"({problems}); was it built for another architecture or config?")


def mismatch_summary(want: Mapping[str, tuple[int, ...]], have: Mapping[str, tuple[int, ...]], limit: int = 4
                     ) -> str:
    """``"missing key(s) [...]; unexpected key(s) [...]; shape mismatch ..."`` (first ``limit`` of each), or ``""``."""
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    shapes = [f"{k}: expected {list(want[k])}, got {list(have[k])}" for k in want if k in have and want[k] != have[k]]
    parts = []
    for label, items in (("missing key(s)", missing), ("unexpected key(s)", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            parts.append(f"{label} {items[:limit]}{more}")
    return "; ".join(parts)


def triton_name_for(path: Path) -> str:
    """A Triton model name from a file name: its stem with unusual characters replaced by ``_``."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem) or "model"
    return name if _NAME_RE.match(name) else f"m_{name}"


# ------------------------------------------------------------------------------------------------ compile
def _cpu_fp32_copy(model: Any) -> Any:
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be an nn.Module or a ScriptModule, got {type(model).__name__}")
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point() and t.dtype != torch.float32:
            raise ExportError(f"export checks parity in fp32; the model has {t.dtype} tensors (pass model.float())")
        if t.device.type == "meta":
            raise ExportError("the model has tensors on the meta device (no data to export)")
    with quiet_deprecations():
        eager = copy.deepcopy(model)
    return eager.cpu().eval()


def _compile(eager: Any, example: Any, method: str) -> tuple[Any, str, str | None]:
    """(compiled module, "script" | "trace", fallback reason)."""
    import torch

    if isinstance(eager, torch.jit.ScriptModule):
        if method == "trace":
            raise ExportError("method='trace' needs an eager nn.Module; the model is already a ScriptModule")
        return eager, "script", None
    reason: str | None
    if method in ("auto", "script"):
        try:
            with quiet_deprecations():
                return torch.jit.script(eager), "script", None
        except Exception as e:  # noqa: BLE001 - any scripting failure leads to the trace fallback, reason kept
            if method == "script":
                raise ExportError(f"torch.jit.script failed (method='script', no fallback): {first_line(e)}") from e
            reason = f"torch.jit.script failed: {first_line(e)}"
    else:
        reason = "method='trace' requested"
    try:
        with quiet_deprecations(), torch.no_grad():
            traced = torch.jit.trace(eager, example, check_trace=False)
    except Exception as e:  # noqa: BLE001 - both compilers failed: report both reasons
        raise ExportError(f"cannot compile the model: {reason}; torch.jit.trace failed too: {first_line(e)}") from e
    return traced, "trace", reason


def _versions() -> dict[str, str]:
    import torch

    import hwnas

    return {"hwnas": hwnas.__version__, "torch": torch.__version__}


# ------------------------------------------------------------------------------------------------ public API
def export_torchscript(model: Any, path: str | os.PathLike, input_shape: Sequence[int], *,
                       arch: Mapping[str, str] | None = None, space: Any = None,
                       space_config: Mapping[str, Any] | None = None, predictor: Any = None,
                       freeze: bool = False, method: str = "auto", measure: bool = True,
                       backend: str | None = None, protocol: Any = None,
                       onnx: str | os.PathLike | None = None, triton_repo: str | os.PathLike | None = None,
                       triton_name: str | None = None, max_batch_size: int = 8,
                       atol: float = 1e-5, onnx_atol: float = 1e-4, parity_inputs: int = 3,
                       seed: int = 0) -> ExportReport:
    """Compile a model to TorchScript, save it with hwnas metadata, check parity, optionally measure it.

    Parameters
    ----------
    model : nn.Module or ScriptModule
        The network (fp32; copied to the CPU in eval mode, the argument itself is not changed).
    path : str or path
        Output file (``.pt``). Its directory must exist and be writable (checked before any work).
    input_shape : sequence of int
        Input shape with batch, e.g. ``(1, 3, 32, 32)``: example and parity inputs, prediction and measurement.
    arch : dict of str to str, optional
        The architecture (validated against ``space`` when both are given).
    space : ChainSpace or str, optional
        The search space (instance, or registered name with ``space_config``). With ``arch``, the model's
        state-dict keys and shapes must be those of that subnet, and FLOPs are counted.
    space_config : mapping, optional
        Config fields of a space given by name (e.g. ``{"input_size": 32, "width_mult": 0.5}``).
    predictor : LatencyPredictor or str, optional
        Predictor (or embedded name / directory) whose latency (ms) is stored in the file.
    freeze : bool
        Apply ``torch.jit.freeze`` (folds BatchNorm and constants; the file is then inference-only).
    method : {"auto", "script", "trace"}
        ``"auto"``: ``torch.jit.script``, tracing only when scripting fails (reason recorded); ``"script"``:
        no fallback; ``"trace"``: trace directly.
    measure : bool
        Measure the written file with ``hwnas.builder.measure_latency`` on ``backend``.
    backend : str, optional
        Measurement backend; the predictor's backend when not given. Without both, nothing is measured.
        ``onnxruntime-cpu`` measures the ONNX file when one is written.
    protocol : MeasureProtocol, optional
        Measurement protocol (``hwnas.builder.DEFAULT_PROTOCOL`` when not given).
    onnx : str or path, optional
        Also export ONNX here (``onnx.checker`` and ONNX Runtime parity within ``onnx_atol``).
    triton_repo : str or path, optional
        Also write a Triton model repository entry ``<triton_repo>/<triton_name>/{config.pbtxt,1/model.pt}``.
    triton_name : str, optional
        Triton model name; from the file name when not given.
    max_batch_size : int
        Triton ``max_batch_size`` (0: no batching dimension).
    atol : float
        Largest allowed absolute difference between the loaded file and the eager model (fp32).
    onnx_atol : float
        The same for ONNX Runtime (its kernels differ from torch's).
    parity_inputs : int
        Number of random inputs compared (the first runs TorchScript's profiling pass, later ones the
        optimised graph).
    seed : int
        Seed of the parity inputs (a local generator; the global RNG is not touched).

    Returns
    -------
    ExportReport

    Raises
    ------
    ExportError
        Unwritable path, non-fp32 model, neither script nor trace works, parity beyond ``atol``.
    ArchitectureError
        ``arch`` is not valid for ``space``, or the model does not fit it.
    """
    import torch

    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if not (atol >= 0 and onnx_atol >= 0):
        raise ValueError(f"atol and onnx_atol must be >= 0, got {atol!r} and {onnx_atol!r}")
    if int(parity_inputs) < 1:
        raise ValueError(f"parity_inputs must be >= 1, got {parity_inputs!r}")
    shape = check_input_shape(input_shape)
    out = reserve_output(path, "TorchScript file")
    onnx_out = reserve_output(onnx, "ONNX file") if onnx is not None else None
    triton_dir, triton_model = None, None
    if triton_repo is not None:
        from ._triton import check_model_name

        triton_dir = Path(os.fspath(triton_repo)).expanduser().absolute()
        writable_dir(triton_dir if triton_dir.exists() else triton_dir.parent, "Triton model repository")
        triton_model = check_model_name(triton_name or triton_name_for(out))
    if isinstance(predictor, (str, os.PathLike)):
        from hwnas.predictor import load_latency_predictor

        predictor = load_latency_predictor(predictor)
    backend = backend or (predictor.backend if predictor is not None else None)
    if measure and backend is not None:
        from hwnas.builder import list_backends

        if backend not in list_backends():
            raise ValueError(f"unknown measurement backend {backend!r}; registered: {list_backends()}")

    instance, space_meta = (None, None) if space is None else space_info(space, space_config)
    if arch is not None:
        if not isinstance(arch, Mapping):
            raise ArchitectureError(f"an architecture is a dict label -> choice name, got {type(arch).__name__}")
        arch = {str(k): v for k, v in arch.items()}
        if instance is not None:
            import search_spaces as ss

            ss.validate_arch(instance, arch)
            check_fits(model, instance, arch)

    eager = _cpu_fp32_copy(model)
    gen = torch.Generator().manual_seed(int(seed))
    inputs = [torch.randn(shape, generator=gen) for _ in range(int(parity_inputs))]
    compiled, used, reason = _compile(eager, (inputs[0],), method)
    if freeze:
        try:
            with quiet_deprecations():
                compiled = torch.jit.freeze(compiled.eval())
        except Exception as e:  # noqa: BLE001 - named and chained
            raise ExportError(f"torch.jit.freeze failed: {first_line(e)}") from e

    params = sum(p.numel() for p in eager.parameters())
    macs = None
    if instance is not None and arch is not None and len(shape) == 4:
        import search_spaces as ss

        macs = int(ss.count_macs(instance, arch, input_size=(shape[2], shape[3])))
    predicted = None
    if predictor is not None:
        kind = "torchscript" if isinstance(eager, torch.jit.ScriptModule) else "torch"
        predicted = float(predictor.predict(eager, kind, shape))
    metadata = {
        "schema": METADATA_SCHEMA, "kind": "hwnas-export",
        "arch": arch, "space": space_meta, "input_shape": list(shape),
        "method": used, "fallback_reason": reason, "frozen": bool(freeze),
        "params": int(params), "macs": macs,
        "predictor": None if predictor is None else {"name": predictor.name, "checksum": predictor.checksum,
                                                     "backend": predictor.backend},
        "predicted_ms": predicted,
        "parity": {"atol": float(atol), "inputs": int(parity_inputs), "seed": int(seed), "dtype": "float32"},
        "versions": _versions(),
    }
    text = json.dumps(metadata, sort_keys=True)
    metadata = json.loads(text)   # what read_metadata returns (tuples become lists)
    space_meta = metadata["space"]
    diff, scale = _save_checked(compiled, eager, inputs, out, text, atol)

    report = ExportReport(path=str(out), method=used, fallback_reason=reason, frozen=bool(freeze), input_shape=shape,
                          parity_max_abs_diff=diff, parity_atol=float(atol), parity_inputs=int(parity_inputs),
                          output_scale=scale, params=int(params), macs=macs, arch=arch, space=space_meta,
                          predictor=None if predictor is None else predictor.name,
                          predictor_checksum=None if predictor is None else predictor.checksum,
                          backend=backend, predicted_ms=predicted, metadata=metadata)
    if onnx_out is not None:
        from ._onnx import export_onnx

        result = export_onnx(eager, onnx_out, shape, atol=onnx_atol, metadata=metadata, seed=seed)
        report.onnx_path, report.onnx_parity_max_abs_diff = result.path, result.parity_max_abs_diff
    if triton_dir is not None:
        from ._triton import write_triton_repo

        report.triton_path = str(write_triton_repo(out, triton_dir, triton_model, shape,
                                                   max_batch_size=max_batch_size))
    if measure and backend is not None:
        from hwnas.builder import measure_latency

        target = onnx_out if (backend == "onnxruntime-cpu" and onnx_out is not None) else out
        report.measured_ms = float(measure_latency(os.fspath(target), backend, shape, protocol))
        if predicted:
            report.ratio = report.measured_ms / predicted
    return report


def _save_checked(compiled: Any, eager: Any, inputs: list[Any], out: Path, text: str, atol: float
                  ) -> tuple[float, float]:
    """Save to a temporary file next to ``out``, load it back, compare with ``eager``; move into place if it passes.

    Returns
    -------
    (max abs difference, max abs output)
    """
    import torch

    with atomic_path(out) as tmp_path:
        tmp = str(tmp_path)
        try:
            with quiet_deprecations():
                torch.jit.save(compiled, tmp, _extra_files={METADATA_FILE: text})
                extra = {METADATA_FILE: ""}
                loaded = torch.jit.load(tmp, map_location="cpu", _extra_files=extra)
        except Exception as e:  # noqa: BLE001 - named and chained
            raise ExportError(f"could not save and reload the TorchScript file {str(out)!r}: {first_line(e)}") from e
        stored = extra[METADATA_FILE]
        if (stored.decode() if isinstance(stored, bytes) else stored) != text:
            raise ExportError(f"the metadata read back from {str(out)!r} differs from what was written")
        diff, scale = 0.0, 0.0
        with torch.no_grad():
            for x in inputs:
                want = eager(x)
                diff = max(diff, max_abs_diff(want, loaded(x)))
                scale = max(scale, max_abs(want))
        if not diff <= atol:
            raise ExportError(f"parity check failed for {str(out)!r}: the loaded file differs from the eager model "
                              f"by {diff:.3g} (atol {atol:g}, outputs up to {scale:.3g}); nothing was written")
    return diff, scale


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``hwnas.json`` metadata of an exported TorchScript file (read with plain ``torch.jit.load``).

    Parameters
    ----------
    path : str or path
        A file written by :func:`export_torchscript`.

    Returns
    -------
    dict
        ``schema``, ``arch``, ``space``, ``input_shape``, ``method``, ``fallback_reason``, ``frozen``, ``params``,
        ``macs`` (multiply-accumulates; files written before the rename say ``flops``, returned as ``macs``),
        ``predictor`` (``name``, ``checksum``, ``backend``), ``predicted_ms``, ``parity``, ``versions``.

    Raises
    ------
    ExportError
        Missing or unreadable file, no hwnas metadata, or a newer metadata schema.
    """
    import torch

    p = Path(os.fspath(path))
    if not p.is_file():
        raise ExportError(f"no TorchScript file at {str(p)!r}")
    extra = {METADATA_FILE: ""}
    try:
        with quiet_deprecations():
            torch.jit.load(os.fspath(p), map_location="cpu", _extra_files=extra)
    except Exception as e:  # noqa: BLE001 - named and chained
        raise ExportError(f"cannot load {str(p)!r} as TorchScript: {first_line(e)}") from e
    raw = extra[METADATA_FILE]
    raw = raw.decode() if isinstance(raw, bytes) else raw
    if not raw:
        raise ExportError(f"{str(p)!r} has no {METADATA_FILE} extra file: not exported by hwnas")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ExportError(f"the {METADATA_FILE} of {str(p)!r} is not valid JSON: {e}") from None
    schema = meta.get("schema") if isinstance(meta, dict) else None
    if not isinstance(schema, int) or schema > METADATA_SCHEMA:
        raise ExportError(f"the {METADATA_FILE} of {str(p)!r} has schema {schema!r}; this hwnas reads up to "
                          f"{METADATA_SCHEMA} (upgrade hwnas)")
    if "flops" in meta and "macs" not in meta:   # written before the MAC counts were called macs
        meta["macs"] = meta.pop("flops")
    return meta
