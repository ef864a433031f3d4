"""GFL head (Generalized Focal Loss v1) with mmdetection's layout and init.

Per level (weights shared across levels): two towers of ``stacked_convs`` ×
(3×3 conv without bias → GroupNorm → ReLU); ``gfl_cls`` gives C class logits and
``gfl_reg`` gives ``4·(reg_max+1)`` box-distribution logits (sides l, t, r, b, each
``reg_max+1`` bins), multiplied by the level's learnable ``Scale``. The head owns no
assignment, loss or post-processing.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def bias_init_with_prob(prior_prob: float) -> float:
    """Bias that makes ``sigmoid(bias) == prior_prob`` (``-log(99)`` for 0.01)."""
    return float(-math.log((1 - prior_prob) / prior_prob))


def integral_distances(box_logits: Tensor, project: Tensor) -> Tensor:
    """Expected distance per side: ``softmax(bins) · project``.

    Args:
        box_logits: ``[..., 4*(n+1)]`` logits, sides l, t, r, b, bins contiguous per side.
        project: ``[n+1]`` bin values (``linspace(0, n, n+1)``).
    Returns:
        ``[..., 4]`` distances in stride units.
    """
    n1 = project.numel()
    if box_logits.shape[-1] != 4 * n1:
        raise ValueError(f"box logits have {box_logits.shape[-1]} channels in the last dim, expected 4*{n1}")
    prob = F.softmax(box_logits.reshape(*box_logits.shape[:-1], 4, n1), dim=-1)
    return prob @ project.to(prob.dtype)


class Integral(nn.Module):
    """Turns box-distribution logits into distances (stride units).

    ``project`` is a persistent buffer (``bbox_head.integral.project`` in checkpoints).
    ``forward(x[..., 4*(reg_max+1)]) -> [..., 4]``.
    """

    def __init__(self, reg_max: int = 16) -> None:
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1), persistent=True)

    def forward(self, x: Tensor) -> Tensor:
        return integral_distances(x, self.project)


class Scale(nn.Module):
    """Multiplies its input by a learnable 0-d tensor ``scale`` (init 1.0)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class ConvGNReLU(nn.Module):
    """3×3 conv (no bias) → GroupNorm → ReLU, keys ``conv.weight``, ``gn.weight``, ``gn.bias``."""

    def __init__(self, cin: int, cout: int, num_groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(num_groups, cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.gn(self.conv(x)))


class GFLHead(nn.Module):
    """GFL v1 head.

    Args:
        num_classes: C (sigmoid classification, no background channel).
        in_channels: channels of every input level (the FPN's ``out_channels``).
        feat_channels: tower width.
        stacked_convs: convs per tower.
        num_groups: GroupNorm groups; must divide ``feat_channels``.
        reg_max: n; each side has ``n+1`` bins.
        num_levels: number of pyramid levels (one ``Scale`` each).
    """

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int = 256,
                 stacked_convs: int = 4, num_groups: int = 32, reg_max: int = 16,
                 num_levels: int = 5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.reg_max = reg_max
        self.num_levels = num_levels
        chans = [in_channels] + [feat_channels] * stacked_convs
        self.cls_convs = nn.ModuleList(ConvGNReLU(chans[i], chans[i + 1], num_groups) for i in range(stacked_convs))
        self.reg_convs = nn.ModuleList(ConvGNReLU(chans[i], chans[i + 1], num_groups) for i in range(stacked_convs))
        self.gfl_cls = nn.Conv2d(chans[-1], num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(chans[-1], 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        self.integral = Integral(reg_max)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.gfl_cls.bias, bias_init_with_prob(0.01))

    def forward_single(self, x: Tensor, scale: Scale) -> tuple[Tensor, Tensor]:
        """One level: ``x [B,in,H,W]`` → (``[B,C,H,W]`` class logits, ``[B,4(n+1),H,W]`` box logits)."""
        cls_feat = x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        reg_feat = x
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        return self.gfl_cls(cls_feat), scale(self.gfl_reg(reg_feat))

    def forward(self, feats: Sequence[Tensor]) -> dict[str, list[Tensor]]:
        """``feats``: one ``[B, in_channels, H_l, W_l]`` map per level, finest first.

        Returns ``{"cls_logits": [B,C,H_l,W_l] per level, "box_logits": [B,4(n+1),H_l,W_l]
        per level}``; box logits are already multiplied by the level's ``Scale``.
        """
        if len(feats) != self.num_levels:
            raise ValueError(f"GFLHead built for {self.num_levels} levels got {len(feats)} feature maps")
        cls_logits, box_logits = [], []
        for x, scale in zip(feats, self.scales):
            c, b = self.forward_single(x, scale)
            cls_logits.append(c)
            box_logits.append(b)
        return {"cls_logits": cls_logits, "box_logits": box_logits}
