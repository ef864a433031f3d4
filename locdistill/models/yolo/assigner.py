"""Task-aligned assignment (TOOD / YOLOv8), batched over images, GTs and anchors (no host sync).

For every GT ``k`` and anchor ``a`` whose point lies inside the GT box: the alignment metric
``t = s^α · u^β`` with ``s`` the predicted score of the GT's class and ``u`` the (clamped) CIoU of the
predicted box with the GT. Each GT takes its ``topk`` anchors of largest ``t`` (among those inside it); an
anchor taken by several GTs keeps the one of largest CIoU. The positives' soft class target is the
normalised metric ``t / max_k t · max_k u`` (per GT: its best metric is mapped to its best CIoU).

Shapes: ``B`` images, ``A`` anchors, ``K`` GT slots (padded, masked by ``gt_mask``), ``C`` classes.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ...losses import ciou

__all__ = ["TaskAlignedAssigner", "TALResult"]


class TALResult(NamedTuple):
    pos: Tensor  # [B, A] bool
    gt_index: Tensor  # [B, A] int64, -1 = negative
    norm_metric: Tensor  # [B, A] float32 normalised alignment metric of positives, 0 elsewhere
    ious: Tensor  # [B, K, A] CIoU (clamped at 0) of the predicted boxes with the GTs, 0 outside them
    mask_pos: Tensor  # [B, K, A] bool final (anchor, GT) pairs


class TaskAlignedAssigner:
    """Args: ``topk`` (10), ``alpha`` (0.5, score exponent), ``beta`` (6.0, IoU exponent), ``eps``."""

    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9) -> None:
        self.topk, self.alpha, self.beta, self.eps = int(topk), float(alpha), float(beta), eps

    @torch.no_grad()
    def assign(self, scores: Tensor, pred_boxes: Tensor, points: Tensor, gt_labels: Tensor, gt_boxes: Tensor,
               gt_mask: Tensor, valid: Optional[Tensor] = None) -> TALResult:
        """Args: ``scores [B,A,C]`` probabilities, ``pred_boxes [B,A,4]`` xyxy pixels, ``points [A,2]`` pixels,
        ``gt_labels [B,K]``, ``gt_boxes [B,K,4]`` pixels, ``gt_mask [B,K]``, ``valid [B,A]`` (None = all)."""
        scores, pred_boxes, gt_boxes = scores.float(), pred_boxes.float(), gt_boxes.float()
        B, A, C = scores.shape
        K = gt_boxes.shape[1]
        px, py = points[:, 0].view(1, 1, A), points[:, 1].view(1, 1, A)
        deltas = torch.stack([px - gt_boxes[..., 0:1], py - gt_boxes[..., 1:2],
                              gt_boxes[..., 2:3] - px, gt_boxes[..., 3:4] - py], -1)  # [B, K, A, 4]
        inside = (deltas.amin(-1) > self.eps) & gt_mask[..., None]  # [B, K, A]
        if valid is not None:
            inside &= valid[:, None, :]
        ious = ciou(pred_boxes[:, None, :, :].expand(B, K, A, 4), gt_boxes[:, :, None, :].expand(B, K, A, 4))
        ious = torch.where(inside, ious.clamp(min=0), torch.zeros((), device=ious.device))
        cls_scores = scores.transpose(1, 2).gather(1, gt_labels.clamp(0, C - 1)[..., None].expand(B, K, A))
        metric = cls_scores.pow(self.alpha) * ious.pow(self.beta)  # [B, K, A]
        metric = torch.where(inside, metric, torch.zeros((), device=metric.device))
        k = min(self.topk, A)
        top_idx = metric.topk(k, dim=-1).indices  # [B, K, k]
        in_topk = torch.zeros_like(inside).scatter_(-1, top_idx, True)
        mask_pos = in_topk & inside  # [B, K, A]
        # an anchor claimed by several GTs keeps the GT of largest IoU
        multi = mask_pos.sum(1, keepdim=True) > 1  # [B, 1, A]
        best = F.one_hot(ious.argmax(1), K).transpose(1, 2).bool()  # [B, K, A]
        mask_pos = torch.where(multi, best & inside, mask_pos)
        pos = mask_pos.any(1)
        gt_index = torch.where(pos, mask_pos.float().argmax(1), torch.full_like(pos, -1, dtype=torch.long))
        metric = metric * mask_pos
        pos_metric = metric.amax(-1, keepdim=True)  # [B, K, 1]
        pos_iou = (ious * mask_pos).amax(-1, keepdim=True)
        norm_metric = (metric * pos_iou / (pos_metric + self.eps)).amax(1)  # [B, A]
        return TALResult(pos, gt_index, norm_metric, ious, mask_pos)
