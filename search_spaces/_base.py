"""Machinery shared by the chain-structured search spaces (private).

A *chain space* is a network ``stem -> blocks -> head`` where every block is either fixed or a
:class:`~nni.nas.nn.pytorch.LayerChoice` over self-contained candidate modules. A space family
describes itself with four hooks (``block_specs``, ``build_stem``, ``build_block``, ``build_head``)
plus ``init_weights``; the same hooks build both the NNI model space (all candidates) and the
plain subnet of one architecture (chosen candidates only). Because both are assembled by the same
code under the same attribute names, a subnet's state-dict key ``blocks.<name>.<rest>`` is exactly
the supernet key ``blocks.<name>.<choice>.<rest>`` (fixed parts keep their key unchanged).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from torch import nn

__all__ = ["BlockSpec", "ChainNet", "ChainSpace", "ClassifierHead", "SpaceConfig", "make_divisible",
           "resolve_config"]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never going down by more than 10 %.

    The rule of the MobileNet / ProxylessNAS reference code (``make_divisible``).

    Parameters
    ----------
    value : float
        Unrounded number of channels (e.g. ``64 * width_mult``).
    divisor : int
        The result is a multiple of this number.
    min_value : int, optional
        Lower bound of the result; ``divisor`` when not given.

    Returns
    -------
    int
        The rounded channel count.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class SpaceConfig:
    """Fields every chain space has. Subclasses add their own (frozen dataclasses as well).

    Parameters
    ----------
    width_mult : float
        Multiplier of every channel count; results are rounded with :func:`make_divisible` (multiples of 8).
    input_size : int
        Side of the square input image in pixels (224 for ImageNet, 32 for CIFAR-10). Only the default
        input shape and the choice of the small-input variant depend on it: every network of the space
        runs on any input size (the head pools globally).
    num_classes : int
        Number of outputs of the classifier.
    dropout : float
        Dropout probability before the classifier, in [0, 1).
    small_input : bool, optional
        Use the small-input variant (fewer early downsamplings, see the space's module docstring).
        ``None`` (default) picks it when ``input_size <= 64``.
    """

    width_mult: float = 1.0
    input_size: int = 224
    num_classes: int = 1000
    dropout: float = 0.0
    small_input: bool | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.width_mult, (int, float)) and self.width_mult > 0):
            raise ValueError(f"width_mult must be a positive number, got {self.width_mult!r}")
        if not (isinstance(self.input_size, int) and self.input_size >= 1):
            raise ValueError(f"input_size must be a positive int (pixels), got {self.input_size!r}")
        if not (isinstance(self.num_classes, int) and self.num_classes >= 1):
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.small_input not in (None, True, False):
            raise ValueError(f"small_input must be None, True or False, got {self.small_input!r}")

    @property
    def use_small_input(self) -> bool:
        """Whether the small-input variant is used (``small_input``, or ``input_size <= 64`` when unset)."""
        return self.input_size <= 64 if self.small_input is None else bool(self.small_input)


def resolve_config(config_cls: type, config: Any = None, overrides: Mapping[str, Any] | None = None) -> Any:
    """Build a config of ``config_cls`` from an instance, a mapping and/or keyword overrides.

    Raises
    ------
    TypeError
        On an unknown field name (the message lists the valid ones) or a config of another class.
    """
    overrides = dict(overrides or {})
    if config is None:
        base: dict[str, Any] = {}
    elif isinstance(config, config_cls):
        base = {f.name: getattr(config, f.name) for f in dataclasses.fields(config_cls)}
    elif isinstance(config, Mapping):
        base = dict(config)
    else:
        raise TypeError(f"config must be a {config_cls.__name__}, a mapping or None, got {type(config).__name__}")
    base.update(overrides)
    names = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(base) - set(names))
    if unknown:
        raise TypeError(f"unknown {config_cls.__name__} field(s) {unknown}; valid fields: {names}")
    return config_cls(**base)


@dataclass(frozen=True)
class BlockSpec:
    """One block of a chain space, before any module is built.

    Parameters
    ----------
    name : str
        Attribute name under ``blocks`` (the label for a choice block).
    label : str or None
        The ``LayerChoice`` label, or ``None`` for a fixed block.
    in_channels, out_channels : int
        Channels of the block's input and output tensors.
    stride : int
        Spatial stride of the block (output side = ``(side - 1) // stride + 1``).
    choices : tuple of str
        Candidate names in network order; ``("fixed",)`` for a fixed block.
    """

    name: str
    label: str | None
    in_channels: int
    out_channels: int
    stride: int
    choices: tuple[str, ...]


class ClassifierHead(nn.Module):
    """1x1 conv + BN + activation, global average pooling, flatten, dropout, linear classifier.

    Parameters
    ----------
    in_channels, mid_channels, num_classes : int
        Channels entering the head, after the 1x1 conv, and number of classes.
    act : nn.Module
        Activation after the BN (``nn.ReLU`` for SPOS, ``nn.ReLU6`` for ProxylessNAS).
    dropout : float
        Dropout probability before the linear layer.
    bias : bool
        Whether the linear layer has a bias.
    bn_eps, bn_momentum : float
        BatchNorm parameters.
    bn_affine : bool
        Whether the BatchNorm has learnable scale and shift.
    """

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int, *, act: nn.Module,
                 dropout: float, bias: bool, bn_eps: float = 1e-5, bn_momentum: float = 0.1,
                 bn_affine: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, mid_channels, 1, 1, 0, bias=False)
        self.bn = nn.BatchNorm2d(mid_channels, eps=bn_eps, momentum=bn_momentum, affine=bn_affine)
        self.act = act
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(mid_channels, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(x)))
        return self.fc(self.dropout(self.flatten(self.pool(x))))


class ChainNet(nn.Module):
    """A plain subnet: ``head(blocks(stem(x)))``. No NNI class inside; scriptable with ``torch.jit.script``.

    Parameters
    ----------
    stem : nn.Module
        Fixed input layers.
    blocks : nn.Sequential
        The chosen candidate of every choice block and the fixed blocks, named as in the space.
    head : nn.Module
        Fixed output layers (last conv, pooling, flatten, dropout, classifier).
    """

    def __init__(self, stem: nn.Module, blocks: nn.Sequential, head: nn.Module):
        super().__init__()
        self.stem = stem
        self.blocks = blocks
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class ChainSpace(ModelSpace, disable_init_wrapper=True):
    """Base of the chain-structured NNI model spaces of hwnas.

    A subclass sets ``config_cls`` and implements the hooks below; ``__init__`` then builds
    ``stem``, ``blocks`` (one :class:`~nni.nas.nn.pytorch.LayerChoice` per labelled block, its
    label and candidate names from :meth:`block_specs`) and ``head``. The constructor takes a config
    instance and/or keyword overrides of its fields, so NNI can record and replay plain keyword
    arguments.

    Parameters
    ----------
    config : SpaceConfig, mapping, optional
        The configuration; defaults of ``config_cls`` when not given.
    **overrides
        Config fields that replace those of ``config``.

    Attributes
    ----------
    config : SpaceConfig
        The resolved, frozen configuration.
    """

    config_cls: ClassVar[type[SpaceConfig]] = SpaceConfig

    def __init__(self, config: SpaceConfig | Mapping[str, Any] | None = None, **overrides: Any):
        super().__init__()
        cfg = resolve_config(self.config_cls, config, overrides)
        self.config = cfg
        self.stem = self.build_stem(cfg)
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        for spec in self.block_specs(cfg):
            if spec.label is None:
                blocks[spec.name] = self.build_block(cfg, spec, "fixed")
            else:
                blocks[spec.name] = LayerChoice(
                    {choice: self.build_block(cfg, spec, choice) for choice in spec.choices}, label=spec.label)
        self.blocks = nn.Sequential(blocks)
        self.head = self.build_head(cfg)
        self.init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    # ----- hooks a space family implements --------------------------------------------------
    @classmethod
    def block_specs(cls, config: SpaceConfig) -> list[BlockSpec]:
        """The blocks of the space in network order."""
        raise NotImplementedError

    @classmethod
    def stem_stride(cls, config: SpaceConfig) -> int:
        """Spatial stride of the stem."""
        raise NotImplementedError

    @classmethod
    def build_stem(cls, config: SpaceConfig) -> nn.Module:
        """The fixed input layers, taking a ``(N, 3, H, W)`` image batch."""
        raise NotImplementedError

    @classmethod
    def build_block(cls, config: SpaceConfig, spec: BlockSpec, choice: str) -> nn.Module:
        """The self-contained module of ``choice`` (``"fixed"`` for a fixed block) of block ``spec``."""
        raise NotImplementedError

    @classmethod
    def build_head(cls, config: SpaceConfig) -> nn.Module:
        """The fixed output layers, ending with the classifier."""
        raise NotImplementedError

    @staticmethod
    def init_weights(module: nn.Module) -> None:
        """Initialise the weights of a space or subnet in place (the reference code's scheme)."""

    # ----- shared -------------------------------------------------------------------------------
    @classmethod
    def assemble_subnet(cls, config: SpaceConfig, arch: Mapping[str, str]) -> ChainNet:
        """Build a freshly initialised plain subnet (``arch`` must already be valid)."""
        blocks = OrderedDict(
            (spec.name, cls.build_block(config, spec, "fixed" if spec.label is None else arch[spec.label]))
            for spec in cls.block_specs(config))
        net = ChainNet(cls.build_stem(config), nn.Sequential(blocks), cls.build_head(config))
        cls.init_weights(net)
        return net


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *, groups: int = 1,
            act: nn.Module | None = None, bn_eps: float = 1e-5, bn_momentum: float = 0.1,
            bn_affine: bool = True) -> list[nn.Module]:
    """Layers ``conv (same padding, no bias) -> BN [-> act]`` as a list (to splice into a Sequential)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum, affine=bn_affine),
    ]
    if act is not None:
        layers.append(act)
    return layers


def stage_labels(depths: Sequence[int]) -> list[list[str]]:
    """Labels ``s{stage}_b{block}`` (stages from 1, blocks from 0) for the given stage depths."""
    return [[f"s{stage}_b{block}" for block in range(depth)] for stage, depth in enumerate(depths, start=1)]
