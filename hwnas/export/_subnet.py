"""Export one architecture of a search space, with weights from a supernet, a subnet or a checkpoint (private).

Weights are accepted as (see :func:`subnet_with_weights`):

- nothing: the space instance's own weights (a trained or one-shot-mutated supernet), or a freshly initialised
  subnet when the space is given by name;
- a space instance (the supernet module), or any ``nn.Module`` (its ``state_dict()``);
- a state dict of the subnet (``ChainNet`` keys ``blocks.<label>.<rest>``) or of the supernet (the space's keys
  ``blocks.<label>.<choice>.<rest>``; other candidates and architecture parameters are ignored);
- a file with either (``torch.load(weights_only=True)``); a checkpoint's ``"state_dict"`` (Lightning) or
  ``"model"`` entry is used, and a common key prefix such as ``model.`` is found and removed.

A state dict that does not fit the architecture (missing or unexpected keys, other shapes) is an
:class:`~hwnas.errors.ArchitectureError` naming the first offending keys.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from hwnas.errors import ArchitectureError

from ._common import ExportError, first_line
from ._report import ExportReport
from ._torchscript import export_torchscript, mismatch_summary

__all__ = ["export_subnet", "load_weights_file", "subnet_with_weights"]

_ANCHORS = ("stem.", "blocks.", "head.")


def load_weights_file(path: str | os.PathLike) -> Mapping[str, Any]:
    """A state dict from a file: ``torch.load(weights_only=True)``, unwrapping a checkpoint's ``state_dict``.

    Raises
    ------
    ExportError
        Missing file, a file ``weights_only`` loading refuses, or no tensors in it.
    """
    import torch

    p = Path(os.fspath(path)).expanduser()
    if not p.is_file():
        raise ExportError(f"weights file {str(p)!r} does not exist")
    try:
        obj = torch.load(os.fspath(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - named and chained
        raise ExportError(f"cannot load weights from {str(p)!r} with torch.load(weights_only=True): "
                          f"{first_line(e)}") from e
    return _unwrap(obj, str(p))


def _unwrap(obj: Any, where: str) -> Mapping[str, Any]:
    import torch

    for _ in range(3):   # {"state_dict": ...} (Lightning), {"model": ...}, nested at most a few levels
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in ("state_dict", "model", "model_state_dict")
                          if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ExportError(f"{where}: no state dict found (expected a dict of tensors, or a checkpoint with a "
                          f"'state_dict' entry), got {type(obj).__name__}")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _best_prefix(keys: Sequence[str], wanted: set[str]) -> str:
    """The key prefix (``""``, ``"model."``, ...) under which most keys are ``wanted`` keys."""
    prefixes = Counter({"": 0})
    for k in keys:
        for anchor in _ANCHORS:
            pos = k.find("." + anchor)
            if pos >= 0:
                prefixes[k[:pos + 1]] += 1
    scores = {p: sum(1 for k in keys if k.startswith(p) and k[len(p):] in wanted) for p in prefixes}
    return max(scores, key=lambda p: (scores[p], -len(p)))


def _from_state_dict(space_cls: type, cfg: Any, arch: Mapping[str, str], state: Mapping[str, Any]) -> Any:
    import torch

    net = space_cls.assemble_subnet(cfg, arch)
    own = net.state_dict()
    choice_of = {s.name: arch[s.label] for s in space_cls.block_specs(cfg) if s.label is not None}

    def super_key(key: str) -> str:
        parts = key.split(".")
        if parts[0] == "blocks" and parts[1] in choice_of:
            return ".".join(["blocks", parts[1], choice_of[parts[1]], *parts[2:]])
        return key

    to_super = {k: super_key(k) for k in own}
    prefix = _best_prefix(list(state), set(own) | set(to_super.values()))
    stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    sub_hits = sum(1 for k in own if k in stripped)
    super_hits = sum(1 for k in own if to_super[k] in stripped)
    as_subnet = all(k in stripped for k in own) or (sub_hits > super_hits)
    if as_subnet:
        want = {k: tuple(v.shape) for k, v in own.items()}
        have = {k: tuple(v.shape) for k, v in stripped.items()}
        kind = "subnet"
    else:   # supernet: only the chosen candidates' keys are needed; other candidates and extras are ignored
        want = {to_super[k]: tuple(v.shape) for k, v in own.items()}
        have = {k: tuple(v.shape) for k, v in stripped.items() if k in want}
        kind = "supernet"
    problems = mismatch_summary(want, have)
    if problems:
        where = f" (key prefix {prefix!r} removed)" if prefix else ""
        raise ArchitectureError(f"the weights do not fit architecture of {space_cls.__name__} read as a {kind} "
                                f"state dict{where}: {problems}")
    mapped = {k: (stripped[k] if as_subnet else stripped[to_super[k]]) for k in own}
    with torch.no_grad():
        net.load_state_dict(mapped, strict=True)
    return net


def subnet_with_weights(space: Any, arch: Mapping[str, str], weights: Any = None,
                        config: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """The plain subnet of ``arch`` with the given weights, and the space (instance or name) it belongs to.

    Parameters
    ----------
    space : ChainSpace or str
        A space instance or a registered name (with ``config``).
    arch : dict of str to str
        The architecture (validated).
    weights : None, ChainSpace, nn.Module, state dict, str or path
        See the module docstring.
    config : mapping, optional
        Config fields of a space given by name.

    Returns
    -------
    (ChainNet, ChainSpace)
        The subnet (CPU, eval mode) and a space instance of the right config (a ``meta``-device one when the
        space was given by name).

    Raises
    ------
    ArchitectureError
        Invalid architecture, or weights that do not fit it.
    ExportError
        Unreadable weights file.
    """
    import torch

    import search_spaces as ss

    from ._torchscript import space_info

    instance, _ = space_info(space, config)
    ss.validate_arch(instance, arch)
    space_cls, cfg = type(instance), instance.config
    if weights is None and isinstance(space, ss.ChainSpace):
        weights = space
    if weights is None:
        net = space_cls.assemble_subnet(cfg, arch)
    elif isinstance(weights, ss.ChainSpace):
        if type(weights) is not space_cls or weights.config != cfg:
            raise ArchitectureError(f"the supernet is a {type(weights).__name__} with {weights.config}, not a "
                                    f"{space_cls.__name__} with {cfg}")
        try:
            net = ss.build_subnet(weights, arch)
        except ValueError as e:
            raise ArchitectureError(f"the supernet's weights do not fit the architecture: {e}") from None
    else:
        if isinstance(weights, torch.nn.Module):
            state = dict(weights.state_dict())
        elif isinstance(weights, (str, os.PathLike)):
            state = load_weights_file(weights)
        elif isinstance(weights, Mapping):
            state = _unwrap(weights, "weights")
        else:
            raise TypeError(f"weights must be None, a module, a state dict or a file path, got "
                            f"{type(weights).__name__}")
        net = _from_state_dict(space_cls, cfg, arch, state)
    return net.cpu().float().eval(), instance


def export_subnet(space: Any, arch: Mapping[str, str], *, out: str | os.PathLike, weights: Any = None,
                  config: Mapping[str, Any] | None = None, input_shape: Sequence[int] | None = None,
                  predictor: Any = None, onnx: str | os.PathLike | None = None,
                  triton_repo: str | os.PathLike | None = None, measure: bool = True, freeze: bool = False,
                  **options: Any) -> ExportReport:
    """Export one architecture of a search space to TorchScript (and optionally ONNX and Triton).

    The entry point for the winners of a search: builds the plain subnet with
    :func:`search_spaces.build_subnet` semantics, loads ``weights``, and calls
    :func:`~hwnas.export.export_torchscript` with the architecture and the space, so the file records both, the
    FLOPs, and the predicted latency.

    Parameters
    ----------
    space : ChainSpace or str
        A space instance (its weights are used when ``weights`` is None) or a registered name.
    arch : dict of str to str
        The architecture, label -> choice.
    out : str or path
        The TorchScript file to write.
    weights : optional
        Supernet module, any module, subnet or supernet state dict, or a checkpoint file (see
        :func:`subnet_with_weights`).
    config : mapping, optional
        Config fields of a space given by name (``input_size``, ``num_classes``, ``width_mult``...).
    input_shape : sequence of int, optional
        ``(1, 3, input_size, input_size)`` of the space's config when not given.
    predictor : LatencyPredictor or str, optional
        Predictor (or embedded name) whose latency (ms) is stored and compared with the measurement.
    onnx, triton_repo : str or path, optional
        Also write an ONNX file / a Triton model repository entry.
    measure : bool
        Measure the file on the predictor's backend (needs ``predictor`` or ``backend=``).
    freeze : bool
        ``torch.jit.freeze`` the module.
    **options
        Passed to :func:`~hwnas.export.export_torchscript` (``method``, ``backend``, ``protocol``,
        ``triton_name``, ``max_batch_size``, ``atol``, ``onnx_atol``, ``parity_inputs``, ``seed``).

    Returns
    -------
    ExportReport
    """
    from ._common import reserve_output

    reserve_output(out, "TorchScript file")   # before building anything
    if isinstance(arch, Mapping):
        arch = {str(k): v for k, v in arch.items()}   # NNI label objects -> str
    net, instance = subnet_with_weights(space, arch, weights, config)
    cfg = instance.config
    shape = tuple(input_shape) if input_shape is not None else (1, 3, cfg.input_size, cfg.input_size)
    return export_torchscript(net, out, shape, arch=arch, space=instance,
                              predictor=predictor, onnx=onnx, triton_repo=triton_repo, measure=measure,
                              freeze=freeze, **options)
