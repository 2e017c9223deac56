"""The SPOS search space: ShuffleNetV2-based choice blocks (Guo et al., "Single Path One-Shot NAS", ECCV 2020).

Structure (ImageNet, ``width_mult=1``): stem conv 3x3 stride 2 to 16 channels + BN + ReLU; 20 choice
blocks in 4 stages of depths [4, 4, 8, 4] with output channels [64, 160, 320, 640], the first block of
every stage with stride 2; last conv 1x1 to 1024 + BN + ReLU; global average pooling; dropout; linear
classifier without bias. Input 224 -> 112 (stem) -> 56 -> 28 -> 14 -> 7. Every block chooses one of
``shuffle3``, ``shuffle5``, ``shuffle7`` (ShuffleNetV2 unit with a k x k depthwise conv) and ``xception``
(ShuffleNetV2 unit whose main branch is three dw3x3 + pw pairs). Labels ``s1_b0`` ... ``s4_b3``; the
space has 4^20 architectures.

Checked against the paper and the official code (megvii-model/SinglePathOneShot, ``network.py`` and
``blocks.py`` of its supernet; NNI's ``nni/nas/hub/pytorch/shufflenet.py`` agrees):

- No max-pool after the stem (unlike the hand-made ShuffleNetV2): the stem and the four stages give
  the 5 downsamplings, 224 -> 7.
- Stride-1 block (input channels = output channels = C): channel split by the official
  ``channel_shuffle``, which reshapes to (N*C/2, 2, H*W), swaps the first two axes and takes the
  two halves, i.e. even channels pass through unchanged and odd channels enter the main branch;
  output ``cat(passthrough, main)``. The shuffle of ShuffleNetV2 thus happens at the next block's
  input, as in the reference code (no shuffle after the concat).
- Main branch of ``shuffleK``: pw 1x1 -> BN -> ReLU, dw KxK (stride) -> BN, pw 1x1 -> BN -> ReLU.
  Of ``xception``: [dw3x3 (stride on the first only) -> BN, pw 1x1 -> BN -> ReLU] x 3.
  Mid channels = output channels // 2; the main branch outputs ``out - in_branch`` channels.
- Stride-2 block (first of a stage): no split; projection branch dw KxK stride 2 -> BN -> pw 1x1 (same
  channels) -> BN -> ReLU on the whole input (K = 3 for ``xception``), main branch on the whole input,
  output ``cat(projection, main)``.
- Convs have no bias; the classifier has no bias; dropout 0.1 (defaults of the reference code).
- Weight init as the reference code: stem conv N(0, 0.01), other convs N(0, 1 / weight.shape[1]),
  BN weight 1 and bias 1e-4, classifier N(0, 0.01).
- The reference supernet trains with ``BatchNorm2d(affine=False)``; its evaluation networks use affine
  BN. ``bn_affine`` (default True) selects.
- MACs at 224 of all 80 (block, choice) pairs equal the per-block table of the reference FLOPs
  code as carried by SPOS forks (e.g. 13,396,992 for ``s1_b0=shuffle3``), and NNI's hub ``spos``
  architecture counts 322,918,720 MACs and 3,558,464 parameters here and in NNI's model (tested).
  The paper reports 319M FLOPs / 3.3M parameters for its block-search model, whose exact choices are
  not in the code we read.

Width multiplier: stem and stage channels are ``make_divisible(c * width_mult, 8)`` (even, so the
channel split is exact); the last conv keeps 1024 channels for ``width_mult <= 1`` and is scaled
above (ShuffleNetV2 convention). Channel search (SPOS's second search dimension) is not part of
this space.

Small-input variant (``input_size <= 64`` unless ``small_input`` says otherwise; for 32x32 images
such as CIFAR-10): the stem conv and the first block of stage 1 have stride 1, so 32x32 -> 32 -> 32
-> 16 -> 8 -> 4 before pooling. That first block keeps its projection branch (its input and output
channels differ) with stride 1. Labels and choices are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._base import BlockSpec, ChainSpace, ClassifierHead, SpaceConfig, conv_bn, make_divisible, stage_labels

__all__ = ["SPOS_CHOICES", "ShuffleBlock", "SposConfig", "SposSpace"]

SPOS_DEPTHS = (4, 4, 8, 4)
SPOS_CHANNELS = (64, 160, 320, 640)
SPOS_STEM_CHANNELS = 16
SPOS_LAST_CHANNELS = 1024
SPOS_CHOICES = ("shuffle3", "shuffle5", "shuffle7", "xception")
_KERNEL = {"shuffle3": 3, "shuffle5": 5, "shuffle7": 7, "xception": 3}


@dataclass(frozen=True)
class SposConfig(SpaceConfig):
    """Configuration of :class:`SposSpace`.

    Parameters
    ----------
    width_mult, input_size, num_classes, small_input
        See :class:`~search_spaces._base.SpaceConfig`.
    dropout : float
        Dropout before the classifier; 0.1 as in the reference code.
    bn_affine : bool
        Learnable BN scale/shift (True). The reference supernet training used False.
    """

    dropout: float = 0.1
    bn_affine: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        widths = spos_widths(self)
        previous = widths["stem"]
        for stage, channels in enumerate(widths["stages"], start=1):
            if channels <= previous:
                raise ValueError(f"width_mult={self.width_mult} gives stage {stage} {channels} channels, not more "
                                 f"than its input's {previous}: its first block would have an empty main branch")
            previous = channels


def spos_widths(config: SposConfig) -> dict:
    """Channel counts under ``config.width_mult``: ``{"stem": int, "stages": [int] * 4, "last": int}``."""
    w = config.width_mult
    last = SPOS_LAST_CHANNELS if w <= 1.0 else make_divisible(SPOS_LAST_CHANNELS * w, 8)
    return {"stem": make_divisible(SPOS_STEM_CHANNELS * w, 8),
            "stages": [make_divisible(c * w, 8) for c in SPOS_CHANNELS],
            "last": last}


def _relu() -> nn.Module:
    return nn.ReLU(inplace=True)


def _channel_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Official SPOS channel shuffle-and-split: (even channels, odd channels)."""
    n, c, h, w = x.size()
    x = x.reshape(n * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w)
    return x[0], x[1]


class ShuffleBlock(nn.Module):
    """A ShuffleNetV2 unit of SPOS (``shuffleK`` or ``xception``), self-contained.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the block input and output. Equal for a split block; the output must be larger
        than the input for a projection block.
    kernel_size : int
        Depthwise kernel size (3, 5 or 7; 3 for ``xception``).
    stride : int
        1 or 2 (on the first depthwise conv of each branch).
    xception : bool
        Main branch of three dw3x3 + pw pairs instead of pw-dw-pw.
    bn_affine : bool
        Learnable BN scale/shift.

    Notes
    -----
    The block has a projection branch (no channel split) when ``stride == 2`` or the channels change.
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int, stride: int,
                 xception: bool = False, bn_affine: bool = True):
        super().__init__()
        if xception and kernel_size != 3:
            raise ValueError(f"the xception block is 3x3 throughout, got kernel_size={kernel_size}")
        self.project = stride != 1 or in_channels != out_channels
        if not self.project and in_channels % 2:
            raise ValueError(f"a split block needs an even channel count, got {in_channels}")
        branch_in = in_channels if self.project else in_channels // 2
        main_out = out_channels - branch_in
        if main_out <= 0:
            raise ValueError(f"block {in_channels}->{out_channels} channels leaves no channel to its main branch")
        mid = out_channels // 2
        bn = {"bn_affine": bn_affine}
        if xception:
            main = [*conv_bn(branch_in, branch_in, 3, stride, groups=branch_in, **bn),
                    *conv_bn(branch_in, mid, 1, act=_relu(), **bn),
                    *conv_bn(mid, mid, 3, 1, groups=mid, **bn),
                    *conv_bn(mid, mid, 1, act=_relu(), **bn),
                    *conv_bn(mid, mid, 3, 1, groups=mid, **bn),
                    *conv_bn(mid, main_out, 1, act=_relu(), **bn)]
        else:
            main = [*conv_bn(branch_in, mid, 1, act=_relu(), **bn),
                    *conv_bn(mid, mid, kernel_size, stride, groups=mid, **bn),
                    *conv_bn(mid, main_out, 1, act=_relu(), **bn)]
        self.main = nn.Sequential(*main)
        if self.project:
            self.proj: nn.Module = nn.Sequential(
                *conv_bn(in_channels, in_channels, kernel_size, stride, groups=in_channels, **bn),
                *conv_bn(in_channels, in_channels, 1, act=_relu(), **bn))
        else:
            self.proj = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.project:
            return torch.cat([self.proj(x), self.main(x)], 1)
        passthrough, x = _channel_split(x)
        return torch.cat([passthrough, self.main(x)], 1)


class SposSpace(ChainSpace):
    """SPOS model space (NNI 3.0 ``ModelSpace``); see the module docstring for the structure.

    Parameters
    ----------
    config : SposConfig or mapping, optional
        Configuration (defaults: ImageNet, width 1.0).
    **overrides
        Fields of :class:`SposConfig` (``width_mult``, ``input_size``, ``num_classes``, ``dropout``, ...).
    """

    config_cls = SposConfig

    @classmethod
    def stem_stride(cls, config: SposConfig) -> int:
        return 1 if config.use_small_input else 2

    @classmethod
    def block_specs(cls, config: SposConfig) -> list[BlockSpec]:
        widths = spos_widths(config)
        specs, in_ch = [], widths["stem"]
        for stage, (labels, out_ch) in enumerate(zip(stage_labels(SPOS_DEPTHS), widths["stages"]), start=1):
            for index, label in enumerate(labels):
                stride = 1 if index > 0 or (stage == 1 and config.use_small_input) else 2
                specs.append(BlockSpec(label, label, in_ch, out_ch, stride, SPOS_CHOICES))
                in_ch = out_ch
        return specs

    @classmethod
    def build_stem(cls, config: SposConfig) -> nn.Module:
        widths = spos_widths(config)
        return nn.Sequential(*conv_bn(3, widths["stem"], 3, cls.stem_stride(config), act=_relu(),
                                      bn_affine=config.bn_affine))

    @classmethod
    def build_block(cls, config: SposConfig, spec: BlockSpec, choice: str) -> nn.Module:
        return ShuffleBlock(spec.in_channels, spec.out_channels, kernel_size=_KERNEL[choice], stride=spec.stride,
                            xception=choice == "xception", bn_affine=config.bn_affine)

    @classmethod
    def build_head(cls, config: SposConfig) -> nn.Module:
        widths = spos_widths(config)
        return ClassifierHead(widths["stages"][-1], widths["last"], config.num_classes, act=_relu(),
                              dropout=config.dropout, bias=False, bn_affine=config.bn_affine)

    @staticmethod
    def init_weights(module: nn.Module) -> None:
        """Reference SPOS init: stem conv N(0, 0.01), convs N(0, 1/fan_in_per_group), BN (1, 1e-4), fc N(0, 0.01)."""
        for name, m in module.named_modules():
            if isinstance(m, nn.Conv2d):
                std = 0.01 if name.startswith("stem") else 1.0 / m.weight.shape[1]
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                if m.affine:
                    nn.init.ones_(m.weight)
                    nn.init.constant_(m.bias, 1e-4)
                if m.running_mean is not None:
                    nn.init.zeros_(m.running_mean)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

