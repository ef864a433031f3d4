"""Adaptive Training Sample Selection (ATSS), batched over images.

mmdetection semantics (DESIGN §4): for each GT and pyramid level the ``topk`` valid
anchors nearest by centre distance are candidates; the GT's threshold is the mean
plus the unbiased standard deviation of the candidates' IoUs; a candidate is
positive if its IoU reaches the threshold and its centre lies inside the GT by more
than 0.01 px; an anchor claimed by several GTs goes to the one of highest IoU.
Anchors whose valid flag is off take no part (as mmdet, which drops them before
assigning). Images are batched by padding the GT lists; the only Python loop is over
pyramid levels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..boxes import bbox_overlaps, box_centers

__all__ = ["ATSSAssigner", "ATSSResult"]


@dataclass
class ATSSResult:
    """Output of :meth:`ATSSAssigner.assign` (``B`` images, ``A`` anchors, ``K`` GT slots)."""

    gt_inds: Tensor  # [B, A] int64: index of the assigned GT in its image's list, -1 = negative
    assigned_ious: Tensor  # [B, A] IoU with the assigned GT (0 for negatives)
    max_ious: Tensor  # [B, A] highest IoU with any real GT of the image (0 if none)
    thresholds: Tensor  # [B, K] per-GT IoU threshold (mean + std); 0 for padding slots
    ious: Tensor  # [B, A, K] anchor/GT IoU; 0 for padding slots


class ATSSAssigner:
    """ATSS assigner.

    Args:
        topk: candidates per level and GT (9).
    """

    def __init__(self, topk: int = 9) -> None:
        if topk < 1:
            raise ValueError(f"ATSSAssigner: topk must be >= 1, got {topk}")
        self.topk = int(topk)

    def __repr__(self) -> str:
        return f"ATSSAssigner(topk={self.topk})"

    @torch.no_grad()
    def assign(
        self,
        anchors: Tensor,
        num_level_anchors: Sequence[int],
        gt_boxes: Tensor,
        gt_mask: Optional[Tensor] = None,
        valid: Optional[Tensor] = None,
    ) -> ATSSResult:
        """Assign GT boxes to anchors.

        Args:
            anchors: ``[A, 4]`` ``xyxy``, levels concatenated in order.
            num_level_anchors: anchors per level (sums to ``A``).
            gt_boxes: ``[B, K, 4]`` padded GT boxes, or ``[K, 4]`` for one image.
            gt_mask: ``[B, K]`` (or ``[K]``) bool, False for padding slots; None = all real.
            valid: ``[B, A]`` (or ``[A]``) bool valid flags; None = all valid.

        Returns:
            :class:`ATSSResult`; without a batch dim when ``gt_boxes`` had none.
        """
        single = gt_boxes.dim() == 2
        if single:
            gt_boxes = gt_boxes[None]
            gt_mask = None if gt_mask is None else gt_mask[None]
            valid = None if valid is None else valid.reshape(1, -1)
        if gt_boxes.dim() != 3 or gt_boxes.shape[-1] != 4:
            raise ValueError(f"ATSS: gt_boxes must be [B, K, 4] or [K, 4], got {tuple(gt_boxes.shape)}")
        if anchors.dim() != 2 or anchors.shape[-1] != 4:
            raise ValueError(f"ATSS: anchors must be [A, 4], got {tuple(anchors.shape)}")
        if sum(num_level_anchors) != anchors.shape[0]:
            raise ValueError(
                f"ATSS: num_level_anchors {list(num_level_anchors)} sum to {sum(num_level_anchors)}, "
                f"but there are {anchors.shape[0]} anchors"
            )
        B, K, A = gt_boxes.shape[0], gt_boxes.shape[1], anchors.shape[0]
        device = anchors.device
        anchors = anchors.float()
        gt_boxes = gt_boxes.float()
        if gt_mask is None:
            gt_mask = torch.ones(B, K, dtype=torch.bool, device=device)
        if valid is None:
            valid = torch.ones(B, A, dtype=torch.bool, device=device)
        valid = valid.expand(B, A)

        if K == 0 or A == 0:
            zeros = anchors.new_zeros(B, A)
            result = ATSSResult(
                gt_inds=torch.full((B, A), -1, dtype=torch.long, device=device),
                assigned_ious=zeros, max_ious=zeros.clone(),
                thresholds=anchors.new_zeros(B, K), ious=anchors.new_zeros(B, A, K),
            )
            return _squeeze(result) if single else result

        ious = bbox_overlaps(anchors, gt_boxes)  # [B, A, K]
        ious = ious.masked_fill(~gt_mask[:, None, :], 0.0)

        # centre distances, same formula as mmdet so candidate selection matches bitwise
        anchor_ctr = box_centers(anchors)  # [A, 2]
        gt_ctr = box_centers(gt_boxes)  # [B, K, 2]
        dist = (anchor_ctr[None, :, None, :] - gt_ctr[:, None, :, :]).pow(2).sum(-1).sqrt()  # [B, A, K]
        dist = dist.masked_fill(~valid[:, :, None], float("inf"))

        cands = []
        start = 0
        for n in num_level_anchors:
            if n > 0:
                k = min(self.topk, n)
                cands.append(dist[:, start:start + n].topk(k, dim=1, largest=False).indices + start)
            start += n
        cand = torch.cat(cands, dim=1)  # [B, C, K]
        C = cand.shape[1]
        cand_iou = ious.gather(1, cand)  # [B, C, K]
        cand_valid = valid.gather(1, cand.reshape(B, -1)).reshape(B, C, K)

        # threshold = mean + unbiased std over the valid candidates. When every candidate of
        # a GT is valid (the usual case) use torch's own mean/std, exactly like mmdet.
        mask = cand_valid.float()
        count = mask.sum(1)  # [B, K]
        mean_m = (cand_iou * mask).sum(1) / count.clamp(min=1)
        var_m = ((cand_iou - mean_m[:, None]).pow(2) * mask).sum(1) / (count - 1).clamp(min=1)
        thr = mean_m + var_m.sqrt()
        if C > 1:
            thr = torch.where(cand_valid.all(1), cand_iou.mean(1) + cand_iou.std(1), thr)
        thr = thr.masked_fill(~gt_mask, 0.0)

        # candidate centre strictly inside its GT (by > 0.01 px)
        cand_ctr = anchor_ctr[cand]  # [B, C, K, 2]
        inside = torch.stack(
            [
                cand_ctr[..., 0] - gt_boxes[:, None, :, 0],
                cand_ctr[..., 1] - gt_boxes[:, None, :, 1],
                gt_boxes[:, None, :, 2] - cand_ctr[..., 0],
                gt_boxes[:, None, :, 3] - cand_ctr[..., 1],
            ],
            dim=-1,
        ).amin(-1) > 0.01
        is_pos = (cand_iou >= thr[:, None, :]) & inside & cand_valid & gt_mask[:, None, :]

        # an anchor claimed by several GTs goes to the one of highest IoU
        neg_inf = torch.tensor(float("-inf"), device=device)
        claimed = torch.full_like(ious, float("-inf"))
        claimed.scatter_(1, cand, torch.where(is_pos, cand_iou, neg_inf))
        best, best_gt = claimed.max(dim=2)  # [B, A]
        is_assigned = best > float("-inf")
        gt_inds = torch.where(is_assigned, best_gt, torch.full_like(best_gt, -1))
        result = ATSSResult(
            gt_inds=gt_inds,
            assigned_ious=torch.where(is_assigned, best, torch.zeros_like(best)),
            max_ious=ious.amax(dim=2),
            thresholds=thr,
            ious=ious,
        )
        return _squeeze(result) if single else result

    __call__ = assign


def _squeeze(r: ATSSResult) -> ATSSResult:
    return ATSSResult(r.gt_inds[0], r.assigned_ious[0], r.max_ious[0], r.thresholds[0], r.ious[0])
