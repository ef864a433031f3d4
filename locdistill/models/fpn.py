"""Feature Pyramid Network with mmdetection's semantics for GFL/ATSS.

Inputs are the backbone maps it is given (C3..C5 by default; the backbone already
dropped C2, which is mmdetection's ``start_level=1``). 1×1 laterals, nearest top-down
addition resized to each lateral's exact size (odd sizes work), 3×3 output convs.
Extra levels (``add_extra_convs='on_output'``): P6 = 3×3 stride-2 conv on P5's
*output*, P7 = 3×3 stride-2 conv on P6 with **no ReLU in between**
(``relu_before_extra_convs=False``; torchvision's ``LastLevelP6P7`` differs).
Key names: ``lateral_convs.i.conv``, ``fpn_convs.i.conv`` (the extra convs are
``fpn_convs.{len(in_channels)}...``).
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


class ConvOnly(nn.Module):
    """A conv wrapped so its parameters sit at ``<name>.conv.*`` (mmcv ConvModule without norm/act)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """FPN neck.

    Args:
        in_channels: channels of the input maps, finest first (e.g. ``[512, 1024, 2048]``).
        out_channels: channels of every output level.
        num_outs: number of output levels; the ``num_outs - len(in_channels)`` extra
            levels come from stride-2 3×3 convs on the previous output.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 5) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if not in_channels:
            raise ConfigError("FPN needs at least one input level (in_channels is empty)")
        if num_outs < len(in_channels):
            raise ConfigError(
                f"model.neck.num_outs={num_outs} is smaller than the {len(in_channels)} backbone "
                f"levels it receives; use num_outs >= {len(in_channels)} (5 gives P3-P7)"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.lateral_convs = nn.ModuleList(ConvOnly(c, out_channels, 1) for c in in_channels)
        convs = [ConvOnly(out_channels, out_channels, 3, padding=1) for _ in in_channels]
        convs += [ConvOnly(out_channels, out_channels, 3, stride=2, padding=1)
                  for _ in range(num_outs - len(in_channels))]
        self.fpn_convs = nn.ModuleList(convs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        """``inputs``: maps ``[B, in_channels[i], H_i, W_i]``, finest first.

        Returns ``num_outs`` maps ``[B, out_channels, H/s, W/s]``, finest first.
        """
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} input maps, got {len(inputs)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        outs = [self.fpn_convs[i](lat) for i, lat in enumerate(laterals)]
        for conv in self.fpn_convs[len(laterals):]:
            outs.append(conv(outs[-1]))
        return outs
