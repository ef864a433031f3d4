"""PAN-FPN neck of the YOLOv8 family: a top-down path (nearest ×2 upsampling, concatenation, C2f without
shortcuts) then a bottom-up path (3×3 stride-2 conv, concatenation, C2f), giving P3, P4, P5."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import C2f, ConvBNAct, scaled_channels, scaled_depth

__all__ = ["PAFPN"]


class PAFPN(nn.Module):
    """``(C3, C4, C5)`` → ``(P3, P4, P5)``; nominal widths 256 / 512 / 1024 and 3 C2f repeats, scaled like
    the backbone. ``out_channels`` lists the output widths."""

    def __init__(self, in_channels: Sequence[int], depth: float = 0.33, width: float = 0.25,
                 max_channels: int = 1024) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        w3, w4, w5 = (scaled_channels(c, width, max_channels) for c in (256, 512, 1024))
        n = scaled_depth(3, depth)
        self.top_down4 = C2f(c5 + c4, w4, n)  # P5 up + C4 → P4'
        self.top_down3 = C2f(w4 + c3, w3, n)  # P4' up + C3 → P3 out
        self.down3 = ConvBNAct(w3, w3, 3, 2)
        self.bottom_up4 = C2f(w3 + w4, w4, n)  # P3 down + P4' → P4 out
        self.down4 = ConvBNAct(w4, w4, 3, 2)
        self.bottom_up5 = C2f(w4 + c5, w5, n)  # P4 down + C5 → P5 out
        self.out_channels = (w3, w4, w5)

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        c3, c4, c5 = feats
        p4 = self.top_down4(torch.cat([F.interpolate(c5, size=c4.shape[-2:], mode="nearest"), c4], 1))
        p3 = self.top_down3(torch.cat([F.interpolate(p4, size=c3.shape[-2:], mode="nearest"), c3], 1))
        n4 = self.bottom_up4(torch.cat([self.down3(p3), p4], 1))
        n5 = self.bottom_up5(torch.cat([self.down4(n4), c5], 1))
        return p3, n4, n5
