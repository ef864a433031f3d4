"""Anchor priors of the GFL head (mmdetection ``AnchorGenerator`` with one square
anchor per location, ``center_offset=0``) and their valid flags."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["grid_priors", "valid_flags", "valid_flags_batch"]

Size = Sequence[int]


def _check(featmap_sizes: Sequence[Size], strides: Sequence[int]) -> None:
    if len(featmap_sizes) != len(strides):
        raise ValueError(f"{len(featmap_sizes)} feature-map sizes but {len(strides)} strides")


def grid_priors(
    featmap_sizes: Sequence[Size],
    strides: Sequence[int],
    octave_base_scale: int = 8,
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """Square anchors of side ``octave_base_scale * stride`` centred at ``(j*s, i*s)``.

    Args:
        featmap_sizes: ``(H, W)`` per level.
        strides: stride per level (8, 16, 32, 64, 128 for P3-P7).
        octave_base_scale: anchor side in strides.

    Returns:
        one ``[H*W, 4]`` ``xyxy`` tensor per level, row-major (index ``i*W + j``).
    """
    _check(featmap_sizes, strides)
    out = []
    for (h, w), s in zip(featmap_sizes, strides):
        half = octave_base_scale * s / 2
        xs = torch.arange(int(w), device=device, dtype=dtype) * s
        ys = torch.arange(int(h), device=device, dtype=dtype) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        out.append(torch.stack([xx - half, yy - half, xx + half, yy + half], dim=-1))
    return out


def valid_flags(
    featmap_sizes: Sequence[Size],
    strides: Sequence[int],
    pad_shape: Size,
    device: Optional[Union[str, torch.device]] = None,
) -> list[Tensor]:
    """Which locations fall inside one image's padded extent (mmdetection semantics).

    A location ``(i, j)`` is valid when ``i < ceil(pad_h / s)`` and ``j < ceil(pad_w / s)``.

    Args:
        featmap_sizes: ``(H, W)`` per level.
        strides: stride per level.
        pad_shape: ``(h, w)`` of the image padded to the size divisor.

    Returns:
        one ``BoolTensor[H*W]`` per level.
    """
    _check(featmap_sizes, strides)
    ph, pw = int(pad_shape[0]), int(pad_shape[1])
    out = []
    for (h, w), s in zip(featmap_sizes, strides):
        vh, vw = min(math.ceil(ph / s), int(h)), min(math.ceil(pw / s), int(w))
        rows = torch.arange(int(h), device=device) < vh
        cols = torch.arange(int(w), device=device) < vw
        out.append((rows[:, None] & cols[None, :]).reshape(-1))
    return out


def valid_flags_batch(
    featmap_sizes: Sequence[Size],
    strides: Sequence[int],
    pad_shapes: Union[Sequence[Size], Tensor],
    device: Optional[Union[str, torch.device]] = None,
) -> Tensor:
    """:func:`valid_flags` for a batch, concatenated over levels.

    Args:
        pad_shapes: ``[B, 2]`` (list of ``(h, w)`` or an integer tensor).

    Returns:
        ``BoolTensor[B, sum(H*W)]``.
    """
    _check(featmap_sizes, strides)
    sizes = torch.as_tensor(pad_shapes, device=device).long().reshape(-1, 2)  # [B, 2]
    out = []
    for (h, w), s in zip(featmap_sizes, strides):
        valid_hw = torch.div(sizes + (s - 1), s, rounding_mode="floor")  # ceil(size / s)
        rows = torch.arange(int(h), device=sizes.device) < valid_hw[:, :1]  # [B, H]
        cols = torch.arange(int(w), device=sizes.device) < valid_hw[:, 1:]  # [B, W]
        out.append((rows[:, :, None] & cols[:, None, :]).reshape(sizes.shape[0], -1))
    return torch.cat(out, dim=1)
