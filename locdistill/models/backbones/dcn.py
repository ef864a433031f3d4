"""Deformable convolution (DCN v1) on ``torchvision.ops.deform_conv2d``.

Parameter layout matches mmcv's ``DeformConv2dPack`` (what mmdetection / GFocalV2
checkpoints hold): the kernel is ``weight [C_out, C_in/groups, k, k]`` (no bias) on the
module itself, so a ResNet's ``conv2.weight`` keeps its name, and the offsets come from
``conv_offset``: a ``k×k`` conv with bias producing ``2·k·k·deform_groups`` channels,
zero-initialised so a fresh layer samples the regular grid. Offsets are ``(dy, dx)``
pairs per kernel position in row-major order, the layout of both mmcv and torchvision.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import deform_conv2d


class DeformConv2d(nn.Module):
    """``k×k`` deformable conv, a drop-in for ``nn.Conv2d(cin, cout, k, stride, padding, bias=False)``.

    Args:
        cin, cout: input / output channels.
        kernel_size, stride, padding, dilation, groups: as in ``nn.Conv2d``.
        deform_groups: offset groups (channel groups sharing one offset field).

    ``forward(x [B,C_in,H,W]) -> [B,C_out,H',W']``.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 dilation: int = 1, groups: int = 1, deform_groups: int = 1) -> None:
        super().__init__()
        if cin % groups or cout % groups:
            raise ValueError(f"DeformConv2d: groups={groups} must divide cin={cin} and cout={cout}")
        self.in_channels, self.out_channels = cin, cout
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.groups, self.deform_groups = groups, deform_groups
        self.weight = nn.Parameter(torch.empty(cout, cin // groups, kernel_size, kernel_size))
        self.conv_offset = nn.Conv2d(cin, 2 * deform_groups * kernel_size * kernel_size, kernel_size,
                                     stride=stride, padding=padding, dilation=dilation, bias=True)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        self.reset_offset()

    def reset_offset(self) -> None:
        """Zero the offset conv: the layer then equals a plain convolution."""
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        offset = self.conv_offset(x)  # [B, 2·dg·k·k, H', W']
        return deform_conv2d(x, offset.to(x.dtype), self.weight.to(x.dtype), None, stride=self.stride,
                             padding=self.padding, dilation=self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, deform_groups={self.deform_groups}")
