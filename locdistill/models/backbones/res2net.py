"""Res2Net backbone (``26w×4s``, deep stem, avg-down) with mmdetection's key layout.

Differences from :class:`~.resnet.ResNet`, all as mmdetection's ``Res2Net``:

- **Deep stem** ``stem.{0..8}``: three 3×3 convs (stride 2, 1, 1) of width
  ``base_channels/2, base_channels/2, base_channels``, each followed by BN and ReLU
  (parameters at ``stem.0/1``, ``stem.3/4``, ``stem.6/7``), then the 3×3 max-pool.
- **Bottle2neck**: ``conv1`` (1×1) to ``width·scales`` channels (``width =
  floor(planes·base_width/base_channels)``), split into ``scales`` groups; groups
  ``0..scales-2`` go through 3×3 convs ``convs.i`` + ``bns.i`` (in the first block of a
  stage each group separately, afterwards each adds the previous group's output first);
  the last group passes through (3×3 average pool in a strided first block);
  concatenated → ``conv3`` + ``bn3``. With DCN, ``convs.i`` are deformable
  (``convs.i.weight`` + ``convs.i.conv_offset``).
- **Avg-down shortcut** of each stage's first block: ``downsample.0`` AvgPool
  (kernel = stride, ceil mode, no padding counted), ``downsample.1`` 1×1 conv,
  ``downsample.2`` BN.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .dcn import DeformConv2d
from .resnet import ResNet


class Bottle2neck(nn.Module):
    """Res2Net bottleneck; output ``planes * 4`` channels.

    Args:
        inplanes, planes: input channels and stage width.
        stride: stride of the 3×3 convs (and of the pass-through pool in a first block).
        downsample: shortcut projection of the first block.
        scales: number of channel groups (4 for ``26w×4s``).
        base_width: width per group for ``planes == base_channels`` (26).
        base_channels: the stem width the widths are relative to (64).
        first: the first block of a stage (mmdetection's ``stage_type='stage'``).
        dcn: deformable 3×3 convs.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 scales: int = 4, base_width: int = 26, base_channels: int = 64, first: bool = False,
                 dcn: bool = False) -> None:
        super().__init__()
        if scales < 2:
            raise ValueError(f"Res2Net needs scales >= 2 (got {scales}); scales=1 is a plain ResNet")
        width = planes * base_width // base_channels
        self.width, self.scales, self.first, self.stride = width, scales, first, stride
        self.conv1 = nn.Conv2d(inplanes, width * scales, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scales)
        if dcn:
            convs = [DeformConv2d(width, width, 3, stride=stride, padding=1) for _ in range(scales - 1)]
        else:
            convs = [nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False) for _ in range(scales - 1)]
        self.convs = nn.ModuleList(convs)
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scales - 1))
        self.pool = nn.AvgPool2d(3, stride=stride, padding=1) if first and stride != 1 else None
        self.conv3 = nn.Conv2d(width * scales, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, inplanes, H, W]`` → ``[B, 4·planes, H/stride, W/stride]``."""
        identity = x if self.downsample is None else self.downsample(x)
        groups = torch.split(self.relu(self.bn1(self.conv1(x))), self.width, dim=1)
        outs = []
        sp = None
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            sp = groups[i] if (i == 0 or self.first) else sp + groups[i]
            sp = self.relu(bn(conv(sp.contiguous())))
            outs.append(sp)
        last = groups[-1]
        outs.append(self.pool(last) if self.pool is not None else last)
        out = self.bn3(self.conv3(torch.cat(outs, dim=1)))
        out += identity
        return self.relu(out)


class Res2Net(ResNet):
    """Res2Net-50/101 (``style=pytorch``, deep stem, avg-down), same interface as :class:`ResNet`.

    Extra args: ``scales`` (4) and ``base_width`` (26, the "26w" of ``26w×4s``);
    ``dcn_stages`` as in :class:`ResNet`. ``groups`` must stay 1.
    """

    arch_settings = {
        50: (Bottle2neck, (3, 4, 6, 3)),
        101: (Bottle2neck, (3, 4, 23, 3)),
    }
    name = "Res2Net"

    def __init__(self, depth: int, base_channels: int = 64, frozen_stages: int = 1, norm_eval: bool = True,
                 out_indices=(1, 2, 3), pretrained: str = "", scales: int = 4, base_width: int = 26,
                 dcn_stages=()) -> None:
        self.scales = scales
        super().__init__(depth, base_channels=base_channels, frozen_stages=frozen_stages, norm_eval=norm_eval,
                         out_indices=out_indices, pretrained=pretrained, groups=1, base_width=base_width,
                         dcn_stages=dcn_stages)

    def make_stem(self, base_channels: int) -> None:
        half = base_channels // 2
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, base_channels, 3, padding=1, bias=False), nn.BatchNorm2d(base_channels),
            nn.ReLU(inplace=True),
        )

    def stem_modules(self) -> list[nn.Module]:
        return [self.stem]

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.stem(x)

    def make_stage(self, block: type, inplanes: int, planes: int, num_blocks: int, stride: int,
                   dcn: bool = False) -> nn.Sequential:
        out = planes * block.expansion
        downsample = None
        if stride != 1 or inplanes != out:
            downsample = nn.Sequential(
                nn.AvgPool2d(stride, stride=stride, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(inplanes, out, 1, bias=False),
                nn.BatchNorm2d(out),
            )
        kw = dict(scales=self.scales, base_width=self.base_width, base_channels=self.base_channels, dcn=dcn)
        blocks = [block(inplanes, planes, stride, downsample, first=True, **kw)]
        blocks += [block(out, planes, **kw) for _ in range(num_blocks - 1)]
        return nn.Sequential(*blocks)
