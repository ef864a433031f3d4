"""Where the distillation terms look (DESIGN §5): the main region, the VLR, teacher-score weights.

Each region is a per-anchor weight ``[B, A]`` (0 outside the region), computed from an
:class:`~locdistill.models.dense.Assignment` (and for teacher-score weights the teacher's class
logits); nothing here depends on a detector family or synchronises with the host.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..boxes import bbox_diou
from ..models.dense import Assignment

__all__ = ["VLR_IOU_MODES", "main_region_weights", "teacher_score_weights", "vlr_weights"]

#: ``distill.vlr_iou_mode``: "diou" (true DIoU) or "iof" (the LD code's intersection over the anchor)
VLR_IOU_MODES = ("diou", "iof")


def main_region_weights(assignment: Assignment) -> Tensor:
    """Main LD region: the positives, each weighted by its ``pos_weight`` (GFL: ``w_p``); ``[B, A]``."""
    return assignment.pos_weight


def vlr_weights(assignment: Assignment, iou_mode: str = "diou") -> Tensor:
    """VLR weight ``[B, A]``: max IoU over the GTs g with ``0.25·thr_g <= DIoU(anchor, g) < thr_g``.

    All valid anchors of every level, no centre test; 0 outside the region. ``thr_g`` is the
    assignment's per-GT threshold (ATSS's), the IoU its ``anchor_ious``.

    Args:
        assignment: ``anchors [A, 4]``, ``gt_boxes [B, K, 4]``, ``gt_mask``, ``valid``, ``thresholds [B, K]``,
            ``anchor_ious [B, A, K]``.
        iou_mode: ``"diou"`` (true DIoU selects the region) or ``"iof"`` (the LD code's quirk: intersection
            over the anchor's area in place of IoU inside its DIoU).
    """
    overlap = "iou" if iou_mode == "diou" else "iof"
    diou = bbox_diou(assignment.anchors, assignment.gt_boxes, overlap_mode=overlap)  # [B, A, K]
    thr = assignment.thresholds[:, None, :]  # [B, 1, K]
    region = (diou >= 0.25 * thr) & (diou < thr) & assignment.gt_mask[:, None, :] & assignment.valid[..., None]
    return torch.where(region, assignment.anchor_ious, torch.zeros((), device=diou.device)).amax(-1)


def teacher_score_weights(teacher_cls_logits: Tensor, valid: Tensor) -> Tensor:
    """``max_c σ(teacher class logit)`` on valid anchors, 0 elsewhere: ``[B, A]`` (cross-head LD / GIoU).

    Args:
        teacher_cls_logits: ``[B, A, C]``; valid: ``[B, A]`` bool.
    """
    zero = torch.zeros((), device=teacher_cls_logits.device)
    return torch.where(valid, teacher_cls_logits.sigmoid().amax(-1), zero)
