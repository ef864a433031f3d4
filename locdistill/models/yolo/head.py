"""Decoupled DFL head of the YOLOv8 family: per level a box branch and a class branch, no shared weights,
no per-level Scale.

Channel rule (as published): box branch ``max(16, C3 / 4, 4·reg_max)`` channels, class branch
``max(C3, min(num_classes, 100))``, where ``C3`` is the width of the finest input level; each branch is two
3×3 ConvBNAct and a 1×1 conv with bias. Bias init: box logits 1.0, class logits
``log(5 / num_classes / (640 / stride)²)`` (a prior of about 5 objects per 640² image).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .backbone import ConvBNAct

__all__ = ["YOLOHead"]


class YOLOHead(nn.Module):
    """``(P3, P4, P5)`` → ``{"cls_logits": [B,C,H,W] per level, "box_logits": [B,4·reg_max,H,W] per level}``.

    ``box_logits`` are side-major: channel ``side·reg_max + bin`` for sides l, t, r, b and bins 0..reg_max-1
    (distances in stride units from the cell centre). Attributes ``num_classes``, ``num_bins`` (= the
    config's ``reg_max``, 16), ``reg_max`` (locdistill's convention: the top bin value, ``num_bins - 1``),
    ``num_levels``.
    """

    def __init__(self, num_classes: int, in_channels: Sequence[int], reg_max: int = 16,
                 strides: Sequence[int] = (8, 16, 32)) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.num_bins = int(reg_max)
        self.reg_max = self.num_bins - 1
        self.num_levels = len(in_channels)
        self.strides = tuple(int(s) for s in strides)
        box_ch = max(16, in_channels[0] // 4, 4 * self.num_bins)
        cls_ch = max(in_channels[0], min(self.num_classes, 100))
        self.reg_branches = nn.ModuleList(
            nn.Sequential(ConvBNAct(c, box_ch, 3), ConvBNAct(box_ch, box_ch, 3), nn.Conv2d(box_ch, 4 * self.num_bins, 1))
            for c in in_channels)
        self.cls_branches = nn.ModuleList(
            nn.Sequential(ConvBNAct(c, cls_ch, 3), ConvBNAct(cls_ch, cls_ch, 3), nn.Conv2d(cls_ch, self.num_classes, 1))
            for c in in_channels)
        self.init_biases()

    @torch.no_grad()
    def init_biases(self) -> None:
        """Box biases 1.0; class biases ``log(5 / C / (640 / s)²)`` per level."""
        for reg, cls, s in zip(self.reg_branches, self.cls_branches, self.strides):
            reg[-1].bias.fill_(1.0)
            cls[-1].bias.fill_(math.log(5 / self.num_classes / (640 / s) ** 2))

    def forward(self, feats: Sequence[Tensor]) -> dict[str, list[Tensor]]:
        return {"cls_logits": [b(x) for b, x in zip(self.cls_branches, feats)],
                "box_logits": [b(x) for b, x in zip(self.reg_branches, feats)]}
