"""Functions over a search space and its architectures (re-exported by :mod:`search_spaces`).

An architecture is a flat, JSON-safe ``dict[str, str]``: label (``"s1_b0"``) -> choice name
(``"shuffle5"``, ``"k5e6"``, ``"skip"``), one entry per label, nothing else.

FLOPs convention: :func:`count_macs` (old name ``count_flops``) returns multiply-accumulates (MACs) of the
convolutions and the linear layer for one image, ``out_h * out_w * out_channels * (in_channels / groups) * k_h *
k_w`` per conv and ``in_features * out_features`` for the classifier; biases, BatchNorm, activations, pooling,
residual adds, concatenations and shuffles are not counted. This is what the SPOS and ProxylessNAS
papers and their reference code call FLOPs (SPOS "319M", ProxylessNAS-Mobile "320M").
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from nni.nas.nn.pytorch import LayerChoice
from torch import nn

from hwnas.errors import ArchitectureError, InputShapeError

from ._base import BlockSpec, ChainNet, ChainSpace, SpaceConfig, resolve_config
from ._registry import lookup

__all__ = ["Slot", "arch_to_indices", "build_subnet", "choices", "count_flops", "count_macs", "count_params",
           "indices_to_arch", "layout", "random_arch", "validate_arch"]

SpaceLike = ChainSpace | str


@dataclass(eq=False)
class Slot:
    """One position of a network's decomposition for latency tables (see :func:`layout`).

    Attributes
    ----------
    label : str or None
        The choice label, ``None`` for a fixed part (stem, fixed block, head).
    in_shape : tuple of int
        NCHW shape (with batch) of the tensor entering the slot.
    candidates : dict of str to nn.Module
        Choice name -> standalone module taking a tensor of ``in_shape`` (``{"fixed": module}`` for a
        fixed part). The modules are the space's own (weights shared with the space).
    name : str
        ``"stem"``, the block name (the label for choice blocks), or ``"head"``.
    out_shape : tuple of int
        Shape of the slot's output, the same for every candidate; ``(N, num_classes)`` for the head.
    """

    label: str | None
    in_shape: tuple[int, ...]
    candidates: dict[str, nn.Module]
    name: str = ""
    out_shape: tuple[int, ...] = ()


def _resolve(space: SpaceLike, config: Mapping[str, Any] | SpaceConfig | None = None
             ) -> tuple[type[ChainSpace], SpaceConfig, ChainSpace | None]:
    """(space class, config, instance or None) of a space instance or a registered name."""
    if isinstance(space, ChainSpace):
        if config is not None:
            raise TypeError("config is only accepted with a space name, not with a space instance")
        return type(space), space.config, space
    if isinstance(space, str):
        entry = lookup(space)
        return entry.space_cls, resolve_config(entry.config_cls, config), None
    raise TypeError(f"space must be a search space instance or a registered name, got {type(space).__name__}")


def _specs(space: SpaceLike) -> tuple[str, list[BlockSpec]]:
    space_cls, cfg, _ = _resolve(space)
    return space_cls.__name__, space_cls.block_specs(cfg)


def choices(space: SpaceLike) -> dict[str, list[str]]:
    """Label -> candidate names, both in network order.

    Parameters
    ----------
    space : ChainSpace or str
        A space instance, or a registered name (its default config).

    Returns
    -------
    dict of str to list of str
    """
    _, specs = _specs(space)
    return {s.label: list(s.choices) for s in specs if s.label is not None}


def _check(arch: Any, table: Mapping[str, Sequence[str]], where: str) -> None:
    if not isinstance(arch, Mapping):
        raise ArchitectureError(f"{where}: an architecture is a dict label -> choice name, got {type(arch).__name__}")
    labels = list(table)
    unknown = [k for k in arch if k not in table]
    if unknown:
        raise ArchitectureError(f"{where}: unknown label(s) {unknown}; valid labels: {labels}")
    missing = [k for k in labels if k not in arch]
    if missing:
        raise ArchitectureError(f"{where}: missing label(s) {missing}; every label needs a choice")
    for label, value in arch.items():
        if not (isinstance(value, str) and value in table[label]):
            raise ArchitectureError(f"{where}: label {label!r} has no choice {value!r}; "
                                    f"valid choices: {list(table[label])}")


def validate_arch(space: SpaceLike, arch: Mapping[str, str]) -> None:
    """Check that ``arch`` names exactly the labels of the space, each with one of its choices.

    Parameters
    ----------
    space : ChainSpace or str
        A space instance, or a registered name (its default config).
    arch : dict of str to str
        The architecture.

    Raises
    ------
    ArchitectureError
        Naming the unknown or missing label(s), or the label with an invalid choice, and listing the
        valid labels or choices.
    """
    name, _ = _specs(space)
    _check(arch, choices(space), name)


def random_arch(space: SpaceLike, seed: int | random.Random | None = None) -> dict[str, str]:
    """A uniformly random architecture.

    Parameters
    ----------
    space : ChainSpace or str
        A space instance, or a registered name (its default config).
    seed : int, random.Random or None
        Seed of a local ``random.Random`` (the global RNG is never used), or a generator to draw from
        (to sample a stream of architectures). ``None`` seeds from the OS.

    Returns
    -------
    dict of str to str
        The same architecture for the same integer seed.
    """
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    return {label: rng.choice(names) for label, names in choices(space).items()}


def build_subnet(space: SpaceLike, arch: Mapping[str, str], *,
                 config: Mapping[str, Any] | SpaceConfig | None = None) -> ChainNet:
    """The plain ``nn.Module`` of one architecture (no NNI class inside, scriptable).

    Parameters
    ----------
    space : ChainSpace or str
        A space instance: the subnet gets a copy of its weights and buffers (the chosen candidates
        and the fixed parts), so a trained supernet's weights transfer, and its device, dtype and
        train/eval mode. This also holds for a space mutated in place by an NNI one-shot strategy
        (``RandomOneShot``, ``Proxyless``: candidates keep their keys) and for one built frozen
        inside ``nni.nas.space.model_context`` (its own weights, checked to fit ``arch``).
        A registered name: a freshly initialised subnet of ``config``.
    arch : dict of str to str
        The architecture (validated).
    config : mapping or config dataclass, optional
        Only with a space name; the space's default config when not given.

    Returns
    -------
    ChainNet
        ``head(blocks(stem(x)))``; its state-dict key ``blocks.<label>.<rest>`` is the space's
        ``blocks.<label>.<choice>.<rest>``, every other key is unchanged.

    Raises
    ------
    ArchitectureError
        Invalid architecture.
    ValueError
        The weights of the space instance do not fit the architecture (e.g. a space built frozen to
        another architecture inside ``nni.nas.space.model_context``).
    """
    space_cls, cfg, instance = _resolve(space, config)
    _check(arch, {s.label: s.choices for s in space_cls.block_specs(cfg) if s.label is not None},
           space_cls.__name__)
    net = space_cls.assemble_subnet(cfg, arch)
    if instance is not None:
        _copy_weights(net, instance, space_cls.block_specs(cfg), arch)
        reference = next(iter(instance.parameters()), None)
        if reference is not None:
            net.to(device=reference.device, dtype=reference.dtype)
        net.train(instance.training)
    return net


def _copy_weights(net: ChainNet, space: ChainSpace, specs: list[BlockSpec], arch: Mapping[str, str]) -> None:
    # A block whose module holds named candidates (NNI's LayerChoice, or what a one-shot strategy
    # mutated it into) contributes its chosen candidate; a block that is a plain module already (a
    # space built inside ``nni.nas.space.model_context``) contributes itself under the same key.
    choice_of = {s.name: arch[s.label] for s in specs
                 if s.label is not None and isinstance(getattr(space.blocks, s.name), LayerChoice)}
    source = space.state_dict()
    mapped = {}
    for key in net.state_dict():
        parts = key.split(".")
        if parts[0] == "blocks" and parts[1] in choice_of:
            src = ".".join(["blocks", parts[1], choice_of[parts[1]], *parts[2:]])
        else:
            src = key
        if src not in source:
            raise ValueError(f"the space instance has no entry {src!r} for the subnet's {key!r}: its structure "
                             "does not fit this architecture")
        mapped[key] = source[src]
    try:
        net.load_state_dict(mapped, strict=True)
    except RuntimeError as err:
        raise ValueError(f"the space instance's weights do not fit this architecture: {err}") from None


def _side(input_size: int | Sequence[int] | None, cfg: SpaceConfig) -> tuple[int, int]:
    if input_size is None:
        return cfg.input_size, cfg.input_size
    if isinstance(input_size, int):
        return input_size, input_size
    h, w = input_size
    return int(h), int(w)


def count_macs(space: SpaceLike, arch: Mapping[str, str], input_size: int | Sequence[int] | None = None) -> int:
    """Multiply-accumulates of the subnet's convs and linear layer for one image (what the papers call "FLOPs").

    Parameters
    ----------
    space : ChainSpace or str
        A space instance, or a registered name (its default config).
    arch : dict of str to str
        The architecture (validated).
    input_size : int or (int, int), optional
        Input side(s) in pixels; ``space.config.input_size`` when not given.

    Returns
    -------
    int
        MACs (see the module docstring for what is counted), exact: read from the output shapes of
        every conv and linear layer of each candidate, run once per (space, config, input size) on
        the ``meta`` device (no arithmetic, no weights touched) and kept in a small memo.
    """
    space_cls, cfg, _ = _resolve(space)
    specs = space_cls.block_specs(cfg)
    _check(arch, {s.label: s.choices for s in specs if s.label is not None}, space_cls.__name__)
    table = _cost_table(space_cls, cfg, _side(input_size, cfg))
    return sum(table[name][choice][0] for name, choice in _chosen(specs, arch))


#: The old name of :func:`count_macs` (it always counted multiply-accumulates), kept so existing code runs.
count_flops = count_macs


def count_params(space: SpaceLike, arch: Mapping[str, str]) -> int:
    """Number of parameters of the subnet (convs, BN scale/shift, classifier weight and bias; no buffers).

    Parameters
    ----------
    space : ChainSpace or str
        A space instance, or a registered name (its default config).
    arch : dict of str to str
        The architecture (validated).

    Returns
    -------
    int
    """
    space_cls, cfg, _ = _resolve(space)
    specs = space_cls.block_specs(cfg)
    _check(arch, {s.label: s.choices for s in specs if s.label is not None}, space_cls.__name__)
    table = _cost_table(space_cls, cfg, (cfg.input_size, cfg.input_size))
    return sum(table[name][choice][1] for name, choice in _chosen(specs, arch))


def _chosen(specs: list[BlockSpec], arch: Mapping[str, str]) -> list[tuple[str, str]]:
    """(slot name, chosen candidate) of every slot, stem and head included."""
    blocks = [(s.name, "fixed" if s.label is None else arch[s.label]) for s in specs]
    return [("stem", "fixed"), *blocks, ("head", "fixed")]


@functools.lru_cache(maxsize=16)
def _cost_table(space_cls: type[ChainSpace], cfg: SpaceConfig, side: tuple[int, int]
                ) -> dict[str, dict[str, tuple[int, int]]]:
    """Slot name -> choice -> (MACs, params) at input ``(1, 3, *side)``.

    A memo of a pure function of its (immutable) arguments: it never changes a result.
    """
    h, w = side
    stride = space_cls.stem_stride(cfg)
    specs = space_cls.block_specs(cfg)
    table: dict[str, dict[str, tuple[int, int]]] = {}
    with torch.device("meta"):
        stem = space_cls.build_stem(cfg)
        table["stem"] = {"fixed": _costs(stem, (1, 3, h, w))}
        h, w = (h - 1) // stride + 1, (w - 1) // stride + 1
        for spec in specs:
            in_shape = (1, spec.in_channels, h, w)
            table[spec.name] = {c: _costs(space_cls.build_block(cfg, spec, c), in_shape) for c in spec.choices}
            h, w = (h - 1) // spec.stride + 1, (w - 1) // spec.stride + 1
        table["head"] = {"fixed": _costs(space_cls.build_head(cfg), (1, specs[-1].out_channels, h, w))}
    return table


_SHAPE_PRESERVING = (nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Dropout, nn.Hardswish,
                     nn.SiLU, nn.Sigmoid)


def _costs(module: nn.Module, in_shape: tuple[int, ...]) -> tuple[int, int]:
    """(MACs, parameter count) of a ``meta``-device module on an input of ``in_shape`` (batch 1)."""
    params = sum(p.numel() for p in module.parameters())
    # BatchNorm and activations on meta tensors go through slow Python decompositions; they have no
    # MACs and keep the shape, so they are replaced by identities for the shape run.
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, _SHAPE_PRESERVING):
                setattr(parent, child_name, nn.Identity())
    total = [0]

    def conv_hook(m: nn.Conv2d, _inputs: Any, out: torch.Tensor) -> None:
        kh, kw = m.kernel_size
        total[0] += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inputs: Any, out: torch.Tensor) -> None:
        total[0] += out.numel() * m.in_features

    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear_hook)
    with torch.no_grad():
        module.eval()(torch.empty(in_shape, device="meta"))
    return total[0], params


def layout(space: SpaceLike, input_shape: Sequence[int] | None = None) -> list[Slot]:
    """The network as an ordered list of slots: stem, every block, head (for latency tables).

    Contract: for any architecture, running ``slot.candidates[arch.get(slot.label, "fixed")]`` of
    every slot in order computes exactly the subnet of :func:`build_subnet` (same ops, same order,
    same weights when the subnet is built from the same instance), so the subnet's latency is about
    the sum of its slots' latencies.

    Parameters
    ----------
    space : ChainSpace or str
        A space instance (the slots hold its modules), or a registered name (a fresh space of the
        default config is built).
    input_shape : sequence of int, optional
        NCHW input shape with batch; ``(1, 3, input_size, input_size)`` when not given.

    Returns
    -------
    list of Slot
        The ``skip`` candidates are ``nn.Identity``; the head slot holds last conv, pooling,
        flatten, dropout and classifier.

    Raises
    ------
    InputShapeError
        If the shape is not NCHW with 3 channels and positive sizes.
    """
    space_cls, cfg, instance = _resolve(space)
    if instance is None:
        instance = space_cls(cfg)
    shape = (1, 3, cfg.input_size, cfg.input_size) if input_shape is None else tuple(int(d) for d in input_shape)
    if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
        raise InputShapeError(f"layout needs an NCHW input shape with 3 channels, got {shape}")
    n, _, h, w = shape

    def down(size: int, stride: int) -> int:
        return (size - 1) // stride + 1

    stride = space_cls.stem_stride(cfg)
    specs = space_cls.block_specs(cfg)
    first_in = specs[0].in_channels if specs else 0
    out = (n, first_in, down(h, stride), down(w, stride))
    slots = [Slot(None, shape, {"fixed": instance.stem}, "stem", out)]
    for spec in specs:
        module = getattr(instance.blocks, spec.name)
        in_shape = out
        out = (n, spec.out_channels, down(in_shape[2], spec.stride), down(in_shape[3], spec.stride))
        if spec.label is None:
            candidates = {"fixed": module}
        else:
            if not isinstance(module, LayerChoice):
                raise ValueError(f"block {spec.name!r} of the space instance has no candidates (built frozen?)")
            candidates = {choice: module[choice] for choice in spec.choices}
        slots.append(Slot(spec.label, in_shape, candidates, spec.name, out))
    slots.append(Slot(None, out, {"fixed": instance.head}, "head", (n, cfg.num_classes)))
    return slots


def arch_to_indices(space: SpaceLike, archs: Iterable[Mapping[str, str]] | Mapping[str, str]) -> np.ndarray:
    """Encode architectures as choice indices.

    Parameters
    ----------
    space : ChainSpace or str
        A space instance, or a registered name (its default config).
    archs : iterable of dict, or one dict
        Architectures (each validated); a single dict counts as a list of one.

    Returns
    -------
    numpy.ndarray of int64, shape (n_archs, n_labels)
        Entry ``[i, j]`` is the position of ``archs[i][label_j]`` in ``choices(space)[label_j]``,
        labels in :func:`choices` order.
    """
    name, _ = _specs(space)
    table = choices(space)
    position = {label: {c: i for i, c in enumerate(names)} for label, names in table.items()}
    if isinstance(archs, Mapping):
        archs = [archs]
    rows = []
    for arch in archs:
        _check(arch, table, name)
        rows.append([position[label][arch[label]] for label in table])
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), len(table))


def indices_to_arch(space: SpaceLike, indices: Any) -> dict[str, str] | list[dict[str, str]]:
    """Decode choice indices (the inverse of :func:`arch_to_indices`).

    Parameters
    ----------
    space : ChainSpace or str
        A space instance, or a registered name (its default config).
    indices : array-like of int, shape (n_labels,) or (n_archs, n_labels)

    Returns
    -------
    dict or list of dict
        One architecture for a 1-D input, a list for a 2-D input.

    Raises
    ------
    ArchitectureError
        Wrong number of labels, or an index out of range for its label (named).
    """
    name, _ = _specs(space)
    table = choices(space)
    labels = list(table)
    array = np.asarray(indices)
    if array.ndim not in (1, 2) or array.shape[-1] != len(labels):
        raise ArchitectureError(f"{name}: indices must have shape (n_labels,) or (n_archs, n_labels) with "
                                f"n_labels={len(labels)}, got {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ArchitectureError(f"{name}: indices must be integers, got dtype {array.dtype}")
    rows = array.reshape(-1, len(labels))
    archs = []
    for row in rows:
        arch = {}
        for label, index in zip(labels, row.tolist()):
            if not 0 <= index < len(table[label]):
                raise ArchitectureError(f"{name}: index {index} out of range for label {label!r} "
                                        f"({len(table[label])} choices: {table[label]})")
            arch[label] = table[label][index]
        archs.append(arch)
    return archs[0] if array.ndim == 1 else archs
