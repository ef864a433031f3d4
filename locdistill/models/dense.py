"""The family-neutral interface between a detector family and the distillation terms (DESIGN §10).

A detector family (GFL today) turns its per-level head outputs into one :class:`DenseOutputs`
(``flatten``) and its assigner + loss into one :class:`Assignment`. The distillation terms
(:mod:`locdistill.distill`) are functions of (student ``DenseOutputs``, teacher ``DenseOutputs``,
``Assignment``) and never import a family's code.

Shapes: ``B`` images, ``A`` anchors / locations (levels concatenated, row-major inside a level),
``C`` classes, ``K`` GT slots (GT lists padded to the longest, ``K >= 1``), ``n = reg_max``,
``L`` levels.

Predictions and targets are separate objects: a ``DenseOutputs`` holds predictions (the
student's carry their autograd graph), an ``Assignment`` holds targets and assignment results
and never a tensor that requires grad.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Assignment", "DenseOutputs", "integral", "reduce_mean"]


def reduce_mean(x: Tensor) -> Tensor:
    """Mean over DDP ranks (all-reduce); identity when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    x = x.clone()
    dist.all_reduce(x.div_(dist.get_world_size()))
    return x


def integral(box_logits: Tensor, project: Optional[Tensor] = None) -> Tensor:
    """The Integral of DFL-style heads: expected distance per side, ``softmax(bins) · project``.

    The one implementation in locdistill (the GFL head's :class:`~locdistill.models.gfl_head.Integral`,
    the criterion, post-processing and the distillation terms all use it).

    Args:
        box_logits: ``[..., 4, n+1]`` logits, sides l, t, r, b.
        project: ``[n+1]`` bin values; None = ``linspace(0, n, n+1)`` (bins in stride units).
    Returns:
        ``[..., 4]`` distances (stride units with the default ``project``), in ``box_logits``' dtype.
    """
    prob = box_logits.softmax(-1)
    if project is None:
        n = box_logits.shape[-1] - 1
        project = torch.linspace(0, n, n + 1, device=box_logits.device)
    return F.linear(prob, project.to(prob.dtype)[None]).squeeze(-1)


@dataclass
class DenseOutputs:
    """One detector's predictions over the flat anchor axis (output of a family's ``flatten``).

    Attributes:
        cls_logits: ``[B, A, C]`` float32 class logits (a GFLv2 model: joint-score logits).
        box_logits: ``[B, A, 4, n+1]`` float32 box-distribution logits per side (l, t, r, b),
            bins in stride units.
        points: ``[A, 2]`` anchor / prior centres ``(x, y)`` in pixels.
        strides: ``[A]`` float32 stride of each anchor's level.
        level_ids: ``[A]`` int64 level index of each anchor.
        centers: ``[A, 2]`` ``points / strides`` (stride units: boxes decode from here).
        level_sizes: ``(H, W)`` of each level's feature map (host ints; ``Σ H·W = A``).
        raw_cls_logits: family extra: ``[B, A, C]`` float32 raw class logits of a GFLv2 model
            (used by class KD), None otherwise.
    """

    cls_logits: Tensor
    box_logits: Tensor
    points: Tensor
    strides: Tensor
    level_ids: Tensor
    centers: Tensor
    level_sizes: tuple
    raw_cls_logits: Optional[Tensor] = None

    @property
    def reg_max(self) -> int:
        return self.box_logits.shape[-1] - 1

    @property
    def num_levels(self) -> int:
        return len(self.level_sizes)

    @property
    def num_level_anchors(self) -> tuple:
        """Anchors per level (host ints)."""
        return tuple(h * w for h, w in self.level_sizes)

    @property
    def kd_cls_logits(self) -> Tensor:
        """The class logits class KD compares: the raw ones when the family has them (GFLv2)."""
        return self.raw_cls_logits if self.raw_cls_logits is not None else self.cls_logits

    def distances(self) -> Tensor:
        """``[B, A, 4]`` expected distance per side in stride units (:func:`integral`)."""
        return integral(self.box_logits)


@dataclass
class Assignment:
    """Targets and assignment of one batch (output of a family's assigner + loss).

    Carries no tensor that requires grad (checked at construction).

    Attributes:
        pos: ``[B, A]`` bool positives.
        pos_weight: ``[B, A]`` float32 weight of each positive, 0 elsewhere (GFL: ``w_p`` =
            ``max_c σ(cls).detach()``).
        gt_index: ``[B, A]`` int64 assigned GT slot, -1 = negative.
        gt_boxes: ``[B, K, 4]`` xyxy pixels, padded; gt_labels: ``[B, K]`` int64; gt_mask: ``[B, K]``
            bool real slots.
        valid: ``[B, A]`` bool, anchors inside their image's padded extent.
        num_pos: ``[B]`` int64 positives per image.
        avg_factor: ``()`` float32 ``N = Σ_i max(num_pos_i, 1)``, mean over DDP ranks.
        anchors: ``[A, 4]`` xyxy pixels, the anchor boxes the assigner used (VLR's DIoU).
        thresholds: ``[B, K]`` per-GT IoU threshold (ATSS: mean + std of the candidates; 0 for
            padding). An assigner without thresholds documents its substitute.
        anchor_ious: ``[B, A, K]`` anchor/GT IoU, 0 for padding slots.
    """

    pos: Tensor
    pos_weight: Tensor
    gt_index: Tensor
    gt_boxes: Tensor
    gt_labels: Tensor
    gt_mask: Tensor
    valid: Tensor
    num_pos: Tensor
    avg_factor: Tensor
    anchors: Tensor
    thresholds: Tensor
    anchor_ious: Tensor

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name).requires_grad:
                raise ValueError(f"Assignment.{f.name} requires grad: an Assignment holds targets only")
