"""The ProxylessNAS search space, mobile setting (Cai et al., "ProxylessNAS", ICLR 2019).

Structure (ImageNet, ``width_mult=1``): stem conv 3x3 stride 2 to 32 channels + BN + ReLU6; a fixed
MBConv (k3, expansion 1) to 16 channels; 21 choice blocks in 6 stages of widths
[24, 40, 80, 96, 192, 320], depths [4, 4, 4, 4, 4, 1] and first-block strides [2, 2, 2, 1, 2, 1]; last
conv 1x1 to 1280 + BN + ReLU6; global average pooling; dropout; linear classifier with bias.
Input 224 -> 112 (stem) -> 56 -> 28 -> 14 -> 14 -> 7 -> 7. Every block chooses an MBConv
``k{3,5,7}e{3,6}`` (kernel size x expansion ratio); every block but the first of a stage (where input
and output shapes match) may also be ``skip`` (the paper's zero op: the block is the identity).
Labels ``s1_b0`` ... ``s6_b0``; 6^6 * 7^15 architectures.

Checked against the official code (mit-han-lab/proxylessnas, ``search/imagenet_arch_search.py``,
``search/models/super_nets/super_proxyless.py``, ``search/modules/layers.py``):

- Stage widths ``24,40,80,96,192,320`` (the search script's default), depths ``4,4,4,4,4,1``, strides
  ``2,2,2,1,2,1``, candidates ``3x3_MBConv3 ... 7x7_MBConv6`` in this order. The reference adds
  ``Zero`` (and an identity shortcut) when ``stride == 1`` and input channels equal output channels:
  at every default width exactly the blocks after the first of each stage. We offer ``skip`` on
  those blocks only, so the choices never depend on the config; when width rounding makes two
  consecutive stage widths equal (``width_mult=0.25``: 24 and 24 for stages 3 and 4) the first block
  of the later stage keeps its residual add (shape rule) but gets no ``skip``.
  The released ProxylessNAS-Mobile network and NNI's hub ``ProxylessNAS`` have 32 channels in the
  first searched stage: ``ProxylessConfig(stage_widths=(32, 40, 80, 96, 192, 320))`` reproduces
  them. With those widths, NNI's hub ``proxyless-mobile`` architecture counts 320,427,584 MACs and
  4,080,512 parameters here and in NNI's model, the 320M usually reported for it (tested).
- MBConv (``MBInvertedConvLayer``): 1x1 expand (``round(in * e)`` channels) -> BN -> ReLU6, kxk
  depthwise (stride, padding k//2) -> BN -> ReLU6, 1x1 project -> BN (no activation); no expand conv
  when e = 1. Residual add inside the block when stride 1 and channels equal.
- First block ``3x3_MBConv1`` 32 -> 16 without shortcut; first conv 3x3 stride 2 with BN and ReLU6;
  feature-mix layer 1x1 to 1280 (scaled only for ``width_mult > 1``) with BN and ReLU6; classifier
  ``LinearLayer`` = dropout then linear with bias. Dropout 0 by default (the reference scripts'
  default).
- BN momentum 0.1 and eps 1e-3 (``bn_param=(0.1, 1e-3)``); init ``he_fout``: convs
  N(0, sqrt(2 / (k*k*out_channels))), BN (1, 0), linear U(-1/sqrt(in), 1/sqrt(in)) and bias 0.
- Width multiplier: every width (stem 32, first block 16, stages) is ``make_divisible(c * w, 8)``.
- FLOPs in the reference (``count_conv_flop``, ``LinearLayer.get_flops``) are multiply-accumulates
  of the convs and the linear weight, the convention of :func:`search_spaces.count_macs`.

Small-input variant (``input_size <= 64`` unless ``small_input`` says otherwise; for 32x32 images such
as CIFAR-10): the stem conv and the first block of stage 1 have stride 1, so 32x32 -> 32 -> 32 -> 16 ->
8 -> 8 -> 4 -> 4 before pooling. Labels and choices are unchanged (the first block of stage 1 still
changes channels, so it has no ``skip``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ._base import BlockSpec, ChainSpace, ClassifierHead, SpaceConfig, conv_bn, make_divisible, stage_labels

__all__ = ["MBConv", "PROXYLESS_CHOICES", "ProxylessConfig", "ProxylessSpace"]

PROXYLESS_STEM_CHANNELS = 32
PROXYLESS_FIRST_CHANNELS = 16
PROXYLESS_WIDTHS = (24, 40, 80, 96, 192, 320)
PROXYLESS_DEPTHS = (4, 4, 4, 4, 4, 1)
PROXYLESS_STRIDES = (2, 2, 2, 1, 2, 1)
PROXYLESS_LAST_CHANNELS = 1280
PROXYLESS_CHOICES = ("k3e3", "k3e6", "k5e3", "k5e6", "k7e3", "k7e6")
SKIP = "skip"
BN_EPS, BN_MOMENTUM = 1e-3, 0.1


@dataclass(frozen=True)
class ProxylessConfig(SpaceConfig):
    """Configuration of :class:`ProxylessSpace`.

    Parameters
    ----------
    width_mult, input_size, num_classes, small_input
        See :class:`~search_spaces._base.SpaceConfig`.
    dropout : float
        Dropout before the classifier; 0 as in the reference scripts.
    stage_widths : tuple of 6 ints
        Output channels of the six searched stages at ``width_mult=1``. The default is the search
        code's ``24,40,80,96,192,320``; the released ProxylessNAS-Mobile network (and NNI's hub space)
        has 32 channels in the first searched stage: ``(32, 40, 80, 96, 192, 320)``.
    """

    dropout: float = 0.0
    stage_widths: tuple[int, ...] = PROXYLESS_WIDTHS

    def __post_init__(self) -> None:
        super().__post_init__()
        widths = tuple(self.stage_widths) if isinstance(self.stage_widths, (list, tuple)) else None
        if widths is None or len(widths) != len(PROXYLESS_DEPTHS) or not all(
                isinstance(c, int) and c > 0 for c in widths):
            raise ValueError(f"stage_widths must be {len(PROXYLESS_DEPTHS)} positive ints, got {self.stage_widths!r}")
        object.__setattr__(self, "stage_widths", widths)  # a list (e.g. from JSON) becomes a hashable tuple


def proxyless_widths(config: ProxylessConfig) -> dict:
    """Channels under ``config.width_mult``: ``{"stem", "first", "stages": [6 ints], "last"}``."""
    w = config.width_mult
    return {"stem": make_divisible(PROXYLESS_STEM_CHANNELS * w, 8),
            "first": make_divisible(PROXYLESS_FIRST_CHANNELS * w, 8),
            "stages": [make_divisible(c * w, 8) for c in config.stage_widths],
            "last": PROXYLESS_LAST_CHANNELS if w <= 1.0 else make_divisible(PROXYLESS_LAST_CHANNELS * w, 8)}


def _parse_choice(choice: str) -> tuple[int, int]:
    """``"k5e6"`` -> (5, 6)."""
    kernel, expand = choice[1:].split("e")
    return int(kernel), int(expand)


def _relu6() -> nn.Module:
    return nn.ReLU6(inplace=True)


class MBConv(nn.Module):
    """Mobile inverted bottleneck (MobileNetV2 block) of ProxylessNAS, self-contained.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the block input and output.
    kernel_size : int
        Depthwise kernel size.
    expand_ratio : int
        Hidden channels = ``round(in_channels * expand_ratio)``; no expand conv when 1.
    stride : int
        Stride of the depthwise conv.

    Notes
    -----
    ``x + body(x)`` when ``stride == 1`` and ``in_channels == out_channels``, else ``body(x)``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int, expand_ratio: int, stride: int):
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        bn = {"bn_eps": BN_EPS, "bn_momentum": BN_MOMENTUM}
        self.expand: nn.Module = (nn.Identity() if expand_ratio == 1 else
                                  nn.Sequential(*conv_bn(in_channels, hidden, 1, act=_relu6(), **bn)))
        self.depthwise = nn.Sequential(*conv_bn(hidden, hidden, kernel_size, stride, groups=hidden, act=_relu6(), **bn))
        self.project = nn.Sequential(*conv_bn(hidden, out_channels, 1, **bn))
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        if self.residual:
            out = out + x
        return out


class ProxylessSpace(ChainSpace):
    """ProxylessNAS (mobile) model space (NNI 3.0 ``ModelSpace``); see the module docstring.

    Parameters
    ----------
    config : ProxylessConfig or mapping, optional
        Configuration (defaults: ImageNet, width 1.0).
    **overrides
        Fields of :class:`ProxylessConfig`.
    """

    config_cls = ProxylessConfig

    @classmethod
    def stem_stride(cls, config: ProxylessConfig) -> int:
        return 1 if config.use_small_input else 2

    @classmethod
    def block_specs(cls, config: ProxylessConfig) -> list[BlockSpec]:
        widths = proxyless_widths(config)
        specs = [BlockSpec("first", None, widths["stem"], widths["first"], 1, ("fixed",))]
        in_ch = widths["first"]
        stages = zip(stage_labels(PROXYLESS_DEPTHS), widths["stages"], PROXYLESS_STRIDES)
        for stage, (labels, out_ch, first_stride) in enumerate(stages, start=1):
            for index, label in enumerate(labels):
                stride = first_stride if index == 0 else 1
                if stage == 1 and config.use_small_input:
                    stride = 1
                # skip on every block but the first of a stage (see the module docstring).
                names = PROXYLESS_CHOICES + ((SKIP,) if index > 0 else ())
                specs.append(BlockSpec(label, label, in_ch, out_ch, stride, names))
                in_ch = out_ch
        return specs

    @classmethod
    def build_stem(cls, config: ProxylessConfig) -> nn.Module:
        return nn.Sequential(*conv_bn(3, proxyless_widths(config)["stem"], 3, cls.stem_stride(config), act=_relu6(),
                                      bn_eps=BN_EPS, bn_momentum=BN_MOMENTUM))

    @classmethod
    def build_block(cls, config: ProxylessConfig, spec: BlockSpec, choice: str) -> nn.Module:
        if choice == "fixed":
            return MBConv(spec.in_channels, spec.out_channels, kernel_size=3, expand_ratio=1, stride=spec.stride)
        if choice == SKIP:
            return nn.Identity()
        kernel, expand = _parse_choice(choice)
        return MBConv(spec.in_channels, spec.out_channels, kernel_size=kernel, expand_ratio=expand, stride=spec.stride)

    @classmethod
    def build_head(cls, config: ProxylessConfig) -> nn.Module:
        widths = proxyless_widths(config)
        return ClassifierHead(widths["stages"][-1], widths["last"], config.num_classes, act=_relu6(),
                              dropout=config.dropout, bias=True, bn_eps=BN_EPS, bn_momentum=BN_MOMENTUM)

    @staticmethod
    def init_weights(module: nn.Module) -> None:
        """Reference ``he_fout`` init: convs N(0, sqrt(2/(k*k*out))), BN (1, 0), linear U(+-1/sqrt(in)), bias 0."""
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.shape[1])
                nn.init.uniform_(m.weight, -bound, bound)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
