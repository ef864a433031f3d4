"""CSP-Darknet of the YOLOv8 family: Conv-BN-SiLU, C2f blocks and SPPF (written from the published structure).

Width / depth / max-channels multipliers give the n / s / m / l / x scales: a stage of nominal width ``c``
has ``make_divisible(min(c, max_channels) * width, 8)`` channels and a block repeated ``r`` times nominally
is repeated ``max(round(r * depth), 1)`` times.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["C2f", "ConvBNAct", "CSPDarknet", "Bottleneck", "SPPF", "scaled_channels", "scaled_depth"]


def scaled_channels(c: int, width: float, max_channels: int) -> int:
    """Nominal channels ``c`` → the scale's channels (rounded up to a multiple of 8)."""
    return int(math.ceil(min(c, max_channels) * width / 8) * 8)


def scaled_depth(n: int, depth: float) -> int:
    """Nominal repeats ``n`` → the scale's repeats (at least 1)."""
    return max(round(n * depth), 1)


class ConvBNAct(nn.Module):
    """``k×k`` conv (no bias, 'same' padding) → BatchNorm (eps 1e-3, momentum 0.03) → SiLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3×3 ConvBNAct of equal width, with a residual connection when ``shortcut``."""

    def __init__(self, channels: int, shortcut: bool = True) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(channels, channels, 3)
        self.conv2 = ConvBNAct(channels, channels, 3)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class C2f(nn.Module):
    """CSP block with two convolutions: a 1×1 conv splits into two halves of ``c = out/2`` channels, ``n``
    bottlenecks run in sequence on the second half, and every intermediate map (2 + n of them) is
    concatenated and fused by a 1×1 conv."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.hidden = out_channels // 2
        self.conv_in = ConvBNAct(in_channels, 2 * self.hidden, 1)
        self.conv_out = ConvBNAct((2 + num_blocks) * self.hidden, out_channels, 1)
        self.blocks = nn.ModuleList(Bottleneck(self.hidden, shortcut) for _ in range(num_blocks))

    def forward(self, x: Tensor) -> Tensor:
        parts = list(self.conv_in(x).split(self.hidden, dim=1))
        for block in self.blocks:
            parts.append(block(parts[-1]))
        return self.conv_out(torch.cat(parts, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): a 1×1 conv to half the channels, three chained ``k×k`` stride-1
    max-pools, the four maps concatenated and fused by a 1×1 conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.conv_in = ConvBNAct(in_channels, hidden, 1)
        self.conv_out = ConvBNAct(4 * hidden, out_channels, 1)
        self.pool = nn.MaxPool2d(kernel_size, stride=1, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        maps = [self.conv_in(x)]
        for _ in range(3):
            maps.append(self.pool(maps[-1]))
        return self.conv_out(torch.cat(maps, dim=1))


class CSPDarknet(nn.Module):
    """YOLOv8 backbone: stem (3×3 s2) then four stages (3×3 s2 conv + C2f with shortcuts), SPPF after the last.

    Nominal widths 64 (stem), 128, 256, 512, 1024 and C2f repeats 3, 6, 6, 3, scaled by ``width``, ``depth``
    and ``max_channels``. Returns C3, C4, C5 (strides 8, 16, 32); ``out_channels`` lists their widths.
    """

    def __init__(self, depth: float = 0.33, width: float = 0.25, max_channels: int = 1024) -> None:
        super().__init__()
        ch = [scaled_channels(c, width, max_channels) for c in (64, 128, 256, 512, 1024)]
        self.stem = ConvBNAct(3, ch[0], 3, 2)
        stages = []
        for i, repeats in enumerate((3, 6, 6, 3)):
            layers = [ConvBNAct(ch[i], ch[i + 1], 3, 2), C2f(ch[i + 1], ch[i + 1], scaled_depth(repeats, depth), True)]
            if i == 3:
                layers.append(SPPF(ch[4], ch[4], 5))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_channels = (ch[2], ch[3], ch[4])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 1:
                outs.append(x)
        return tuple(outs)
