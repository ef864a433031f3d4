"""Box operations on ``xyxy`` tensors.

Every function accepts leading batch dimensions (``[..., N, 4]``) and broadcasts
them where that is natural. Numerics follow mmdetection 3.3 (``bbox_overlaps`` with
its ``eps`` clamp of the union and of the enclosing area; ``distance2bbox`` /
``bbox2distance`` of ``DistancePointBBoxCoder``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = [
    "box_area",
    "box_centers",
    "distance2bbox",
    "bbox2distance",
    "bbox_overlaps",
    "bbox_diou",
]

_MODES = ("iou", "iof", "giou")


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``boxes [..., 4]`` → ``[...]`` (negative for inverted boxes, as mmdet)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_centers(boxes: Tensor) -> Tensor:
    """Centres ``(cx, cy)`` of ``boxes [..., 4]`` → ``[..., 2]``."""
    cx = (boxes[..., 0] + boxes[..., 2]) / 2
    cy = (boxes[..., 1] + boxes[..., 3]) / 2
    return torch.stack([cx, cy], dim=-1)


def distance2bbox(
    points: Tensor,
    dist: Tensor,
    max_shape: Optional[Union[Sequence[int], Tensor]] = None,
) -> Tensor:
    """Decode side distances ``(l, t, r, b)`` from points into ``xyxy`` boxes.

    Args:
        points: ``[..., N, 2]`` ``(x, y)``.
        dist: ``[..., N, 4]`` distances to the left, top, right and bottom sides.
        max_shape: optional ``(h, w)`` to clip to (x into ``[0, w]``, y into ``[0, h]``);
            a tensor ``[..., 2]`` gives one shape per leading batch index.

    Returns:
        ``[..., N, 4]`` boxes.
    """
    x1 = points[..., 0] - dist[..., 0]
    y1 = points[..., 1] - dist[..., 1]
    x2 = points[..., 0] + dist[..., 2]
    y2 = points[..., 1] + dist[..., 3]
    if max_shape is not None:
        if isinstance(max_shape, Tensor):
            h = max_shape[..., 0].unsqueeze(-1).to(x1.dtype)
            w = max_shape[..., 1].unsqueeze(-1).to(x1.dtype)
            zero = torch.zeros((), dtype=x1.dtype, device=x1.device)
            x1, x2 = (torch.minimum(torch.maximum(v, zero), w) for v in (x1, x2))
            y1, y2 = (torch.minimum(torch.maximum(v, zero), h) for v in (y1, y2))
        else:
            h, w = max_shape[0], max_shape[1]
            x1, x2 = x1.clamp(0, w), x2.clamp(0, w)
            y1, y2 = y1.clamp(0, h), y2.clamp(0, h)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def bbox2distance(
    points: Tensor, boxes: Tensor, max_dis: Optional[float] = None, eps: float = 0.1
) -> Tensor:
    """Encode ``xyxy`` boxes as side distances ``(l, t, r, b)`` from points.

    Args:
        points: ``[..., N, 2]`` ``(x, y)``.
        boxes: ``[..., N, 4]``.
        max_dis: if given, distances are clamped to ``[0, max_dis - eps]`` (the DFL
            target range for ``max_dis = reg_max``).
        eps: margin below ``max_dis``.

    Returns:
        ``[..., N, 4]`` distances.
    """
    left = points[..., 0] - boxes[..., 0]
    top = points[..., 1] - boxes[..., 1]
    right = boxes[..., 2] - points[..., 0]
    bottom = boxes[..., 3] - points[..., 1]
    out = torch.stack([left, top, right, bottom], dim=-1)
    if max_dis is not None:
        out = out.clamp(min=0, max=max_dis - eps)
    return out


def _pair(b1: Tensor, b2: Tensor, is_aligned: bool) -> tuple[Tensor, Tensor]:
    """Views of the two box sets that broadcast to ``[..., N]`` or ``[..., N, M]``."""
    if b1.shape[-1] != 4 or b2.shape[-1] != 4:
        raise ValueError(f"boxes must have 4 coordinates in the last dim, got {tuple(b1.shape)} and {tuple(b2.shape)}")
    if is_aligned:
        if b1.shape[-2] != b2.shape[-2]:
            raise ValueError(
                f"is_aligned=True needs the same number of boxes, got {b1.shape[-2]} and {b2.shape[-2]}"
            )
        return b1, b2
    return b1[..., :, None, :], b2[..., None, :, :]


def bbox_overlaps(
    b1: Tensor, b2: Tensor, mode: str = "iou", is_aligned: bool = False, eps: float = 1e-6
) -> Tensor:
    """IoU / IoF / GIoU between two sets of ``xyxy`` boxes (mmdetection semantics).

    Args:
        b1: ``[..., N, 4]``.
        b2: ``[..., M, 4]`` (``M == N`` when ``is_aligned``); leading dims broadcast.
        mode: ``"iou"``, ``"iof"`` (intersection over the area of ``b1``) or ``"giou"``.
        is_aligned: compare ``b1[i]`` with ``b2[i]`` instead of every pair.
        eps: lower clamp of the union (and of the enclosing area for GIoU).

    Returns:
        ``[..., N]`` if ``is_aligned`` else ``[..., N, M]``.
    """
    if mode not in _MODES:
        raise ValueError(f"bbox_overlaps: mode must be one of {_MODES}, got {mode!r}")
    p1, p2 = _pair(b1, b2, is_aligned)
    area1 = box_area(p1)
    lt = torch.maximum(p1[..., :2], p2[..., :2])
    rb = torch.minimum(p1[..., 2:], p2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    if mode == "iof":
        union = area1.expand_as(overlap)
    else:
        union = area1 + box_area(p2) - overlap
    eps_t = torch.tensor(eps, dtype=union.dtype, device=union.device)
    union = torch.maximum(union, eps_t)
    ious = overlap / union
    if mode != "giou":
        return ious
    enclose_wh = (torch.maximum(p1[..., 2:], p2[..., 2:]) - torch.minimum(p1[..., :2], p2[..., :2])).clamp(min=0)
    enclose_area = torch.maximum(enclose_wh[..., 0] * enclose_wh[..., 1], eps_t)
    return ious - (enclose_area - union) / enclose_area


def bbox_diou(
    b1: Tensor,
    b2: Tensor,
    is_aligned: bool = False,
    eps: float = 1e-6,
    overlap_mode: str = "iou",
    penalty_power: float = 1.0,
) -> Tensor:
    """Distance-IoU: ``overlap - (rho^2 / c^2) ** penalty_power``.

    ``rho`` is the distance between the box centres and ``c`` the diagonal of the
    smallest enclosing box (``c^2`` clamped below by ``eps``).

    Args:
        b1: ``[..., N, 4]``.
        b2: ``[..., M, 4]``; leading dims broadcast.
        is_aligned: elementwise (``[..., N]``) instead of pairwise (``[..., N, M]``).
        eps: clamp of the union and of ``c^2``.
        overlap_mode: ``"iou"`` (true DIoU) or ``"iof"`` (intersection over the area of
            ``b1``: the LD reference code's VLR quirk, with ``b1`` the anchors).
        penalty_power: exponent of the centre penalty (0.8 in Cluster-DIoU-NMS).

    Returns:
        ``[..., N]`` or ``[..., N, M]``.
    """
    if overlap_mode not in ("iou", "iof"):
        raise ValueError(f"bbox_diou: overlap_mode must be 'iou' or 'iof', got {overlap_mode!r}")
    ious = bbox_overlaps(b1, b2, mode=overlap_mode, is_aligned=is_aligned, eps=eps)
    p1, p2 = _pair(b1, b2, is_aligned)
    dx = (p2[..., 0] + p2[..., 2]) - (p1[..., 0] + p1[..., 2])
    dy = (p2[..., 1] + p2[..., 3]) - (p1[..., 1] + p1[..., 3])
    rho2 = (dx * dx + dy * dy) / 4
    enclose_wh = (torch.maximum(p1[..., 2:], p2[..., 2:]) - torch.minimum(p1[..., :2], p2[..., :2])).clamp(min=0)
    c2 = (enclose_wh[..., 0] ** 2 + enclose_wh[..., 1] ** 2).clamp(min=eps)
    penalty = rho2 / c2
    if penalty_power != 1.0:
        penalty = penalty.pow(penalty_power)
    return ious - penalty
