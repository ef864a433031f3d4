"""YOLOv8-family criterion: task-aligned assignment + BCE (classes), CIoU and DFL (boxes), with gains.

The family's side of the dense interface (DESIGN §10): :meth:`YOLOCriterion.flatten` (points at cell
centres ``((j+0.5)·s, (i+0.5)·s)``, 16 bins per side = ``DenseOutputs.reg_max`` 15) and
:meth:`YOLOCriterion.assign` → :class:`~locdistill.models.dense.Assignment` with

* ``pos_weight`` = the normalised alignment metric of TAL (the soft class target of a positive, also the
  weight of its CIoU and DFL terms);
* ``anchors`` = a documented substitute (the family is anchor-free): squares of side ``8·s`` centred on the
  points (GFL's ATSS anchor shape), for VLR's DIoU;
* ``anchor_ious`` = IoU of those squares with the GTs ``[B, A, K]``, ``thresholds`` = per GT the mean + std
  of ``anchor_ious`` over its positives (ATSS's statistic on TAL's positives; 0 for a GT without one).

Losses (per batch, float32): ``S = max(Σ pos_weight, 1)`` (mean over DDP ranks);
``loss_cls = w_cls · Σ_valid BCE(logits, one_hot(label)·pos_weight) / S``,
``loss_bbox = w_box · Σ_pos (1 − CIoU)·pos_weight / S``,
``loss_dfl = w_dfl · Σ_pos mean_sides DFL·pos_weight / S`` (targets clamped to ``15 − 0.01``).
Unlike Ultralytics, the sum is not multiplied by the batch size (a learning-rate convention, docs/yolo.md).
Everything is dense over the batch with masks: no ``.item()``, no ``nonzero``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ...boxes import bbox2distance, bbox_overlaps, distance2bbox
from ...config import YoloConfig
from ..criterion import DistillComponent, GFLCriterion
from ..dense import Assignment, DenseOutputs, integral, reduce_mean
from .assigner import TaskAlignedAssigner
from ...losses import ciou_loss, distribution_focal_loss

__all__ = ["YOLOCriterion", "yolo_points"]

_Y = YoloConfig  # constructor defaults: the config's

#: the anchor-square side (in strides) substituted for anchors in an Assignment (VLR's DIoU)
ANCHOR_SCALE = 8


def yolo_points(sizes: Sequence[Sequence[int]], strides: Sequence[int], device=None) -> tuple[Tensor, Tensor, Tensor]:
    """Cell-centre points of the levels: ``points [A,2]`` pixels ``((j+0.5)·s, (i+0.5)·s)``, row-major per level,
    ``strides [A]`` float32, ``level_ids [A]`` int64."""
    pts, strs, lvls = [], [], []
    for lvl, ((h, w), s) in enumerate(zip(sizes, strides)):
        ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                                torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
        pts.append((torch.stack([xs.reshape(-1), ys.reshape(-1)], -1) + 0.5) * s)
        strs.append(torch.full((h * w,), float(s), device=device))
        lvls.append(torch.full((h * w,), lvl, dtype=torch.long, device=device))
    return torch.cat(pts), torch.cat(strs), torch.cat(lvls)


class YOLOCriterion:
    """Losses of a YOLO detector (argument names = the ``model.yolo.*`` config fields).

    Args:
        num_classes: C.
        reg_max: bins per side (16).
        strides: (8, 16, 32).
        topk, alpha, beta: TAL.
        loss_cls_weight, loss_bbox_weight, loss_dfl_weight: gains of BCE, CIoU, DFL (0.5, 7.5, 1.5).
        distill_terms: a distillation component called as in :class:`~locdistill.models.criterion.GFLCriterion`
            (the family-neutral terms run on this family's DenseOutputs / Assignment); None = no distillation.
    """

    def __init__(self, num_classes: int, reg_max: int = _Y.reg_max, strides: Sequence[int] = (8, 16, 32),
                 topk: int = _Y.topk, alpha: float = _Y.alpha, beta: float = _Y.beta,
                 loss_cls_weight: float = _Y.loss_cls_weight, loss_bbox_weight: float = _Y.loss_bbox_weight,
                 loss_dfl_weight: float = _Y.loss_dfl_weight, distill_terms: Optional[DistillComponent] = None) -> None:
        if num_classes < 1:
            raise ValueError(f"YOLOCriterion: num_classes must be >= 1, got {num_classes}")
        if reg_max < 2:
            raise ValueError(f"YOLOCriterion: reg_max (bins per side) must be >= 2, got {reg_max}")
        self.num_classes = int(num_classes)
        self.num_bins = int(reg_max)
        self.reg_max = self.num_bins - 1
        self.strides = tuple(int(s) for s in strides)
        self.assigner = TaskAlignedAssigner(topk, alpha, beta)
        self.loss_cls_weight, self.loss_bbox_weight, self.loss_dfl_weight = loss_cls_weight, loss_bbox_weight, loss_dfl_weight
        self.distill_terms = distill_terms
        self._cache: OrderedDict = OrderedDict()

    def __repr__(self) -> str:
        return (f"YOLOCriterion(num_classes={self.num_classes}, reg_max={self.num_bins}, strides={self.strides}, "
                f"topk={self.assigner.topk}, alpha={self.assigner.alpha}, beta={self.assigner.beta})")

    def _points(self, sizes: tuple, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        key = (sizes, str(device))
        if key not in self._cache:
            self._cache[key] = yolo_points(sizes, self.strides, device)
            while len(self._cache) > 16:
                self._cache.popitem(last=False)
        return self._cache[key]

    def flatten(self, outputs: Mapping[str, Sequence[Tensor]], who: str = "student") -> DenseOutputs:
        """Per-level outputs → :class:`DenseOutputs` (float32; ``box_logits [B, A, 4, 16]``)."""
        try:
            cls_levels, box_levels = outputs["cls_logits"], outputs["box_logits"]
        except (KeyError, TypeError):
            raise ValueError(f"{who} outputs must be a dict with 'cls_logits' and 'box_logits' lists") from None
        if len(cls_levels) != len(self.strides) or len(box_levels) != len(self.strides):
            raise ValueError(f"{who} outputs have {len(cls_levels)} class / {len(box_levels)} box levels; the "
                             f"criterion has strides {self.strides}")
        n1 = self.num_bins
        sizes, cls_flat, box_flat = [], [], []
        for lvl, (c, b) in enumerate(zip(cls_levels, box_levels)):
            if b.shape[1] != 4 * n1 or c.shape[-2:] != b.shape[-2:]:
                raise ValueError(f"{who} level {lvl}: box logits {tuple(b.shape)} must have 4*reg_max = {4 * n1} "
                                 f"channels and the class maps' size {tuple(c.shape[-2:])}")
            B, C, H, W = c.shape
            sizes.append((int(H), int(W)))
            cls_flat.append(c.float().permute(0, 2, 3, 1).reshape(B, H * W, C))
            box_flat.append(b.float().permute(0, 2, 3, 1).reshape(B, H * W, 4, n1))
        cls_logits, box_logits = torch.cat(cls_flat, 1), torch.cat(box_flat, 1)
        points, strides, level_ids = self._points(tuple(sizes), cls_logits.device)
        return DenseOutputs(cls_logits=cls_logits, box_logits=box_logits, points=points, strides=strides,
                            level_ids=level_ids, centers=points / strides[:, None], level_sizes=tuple(sizes))

    def assign(self, dense: DenseOutputs, targets: Sequence[Mapping[str, Tensor]],
               image_sizes: Optional[Union[Sequence[Sequence[int]], Tensor]] = None) -> Assignment:
        """Task-aligned assignment of the student's ``dense`` outputs (scores and decoded boxes, detached)."""
        B, A, C = dense.cls_logits.shape
        if C != self.num_classes:
            raise ValueError(f"class logits have {C} channels but the criterion has num_classes={self.num_classes}")
        if len(targets) != B:
            raise ValueError(f"{len(targets)} targets for a batch of {B} images")
        device = dense.cls_logits.device
        points, strides = dense.points, dense.strides
        if image_sizes is None:
            valid = torch.ones(B, A, dtype=torch.bool, device=device)
        else:
            if len(image_sizes) != B:
                raise ValueError(f"{len(image_sizes)} image_sizes for a batch of {B} images")
            hw = torch.as_tensor([[float(v) for v in s[:2]] for s in image_sizes], device=device)  # [B, 2]
            valid = (points[None, :, 0] < hw[:, 1:2]) & (points[None, :, 1] < hw[:, 0:1])
        gt_boxes, gt_labels, gt_mask = GFLCriterion._pad_targets(targets, device)
        with torch.no_grad():
            pred_boxes = distance2bbox(points, integral(dense.box_logits.detach()) * strides[:, None])
            tal = self.assigner.assign(dense.cls_logits.detach().sigmoid(), pred_boxes, points, gt_labels,
                                       gt_boxes, gt_mask, valid)
            pos = tal.pos
            num_pos = pos.sum(1)
            avg_factor = reduce_mean(num_pos.clamp(min=1).sum().float())
            half = ANCHOR_SCALE * strides[:, None] / 2
            anchors = torch.cat([points - half, points + half], -1)  # [A, 4] substitute anchors
            anchor_ious = bbox_overlaps(anchors[None].expand(B, A, 4), gt_boxes) * gt_mask[:, None, :]  # [B, A, K]
            m = tal.mask_pos.float()  # [B, K, A]
            cnt = m.sum(-1).clamp(min=1)
            ious_ka = anchor_ious.transpose(1, 2)
            mean = (ious_ka * m).sum(-1) / cnt
            std = (((ious_ka - mean[..., None]) ** 2 * m).sum(-1) / (cnt - 1).clamp(min=1)).sqrt()
            thresholds = torch.where(m.sum(-1) > 0, mean + std, torch.zeros((), device=device))
        return Assignment(pos=pos, pos_weight=tal.norm_metric, gt_index=tal.gt_index, gt_boxes=gt_boxes,
                          gt_labels=gt_labels, gt_mask=gt_mask, valid=valid, num_pos=num_pos, avg_factor=avg_factor,
                          anchors=anchors, thresholds=thresholds, anchor_ious=anchor_ious)

    def yolo_losses(self, dense: DenseOutputs, assignment: Assignment) -> dict[str, Tensor]:
        """BCE, CIoU and DFL of the student's ``dense`` outputs (weighted by the gains)."""
        pos, w = assignment.pos, assignment.pos_weight
        B, A = pos.shape
        slot = assignment.gt_index.clamp(min=0)
        labels = assignment.gt_labels.gather(1, slot)
        norm = reduce_mean(w.sum()).clamp(min=1)
        cls_target = F.one_hot(labels, self.num_classes).float() * w[..., None]  # 0 on negatives
        bce = F.binary_cross_entropy_with_logits(dense.cls_logits, cls_target, reduction="none").sum(-1)
        loss_cls = self.loss_cls_weight * (bce * assignment.valid.float()).sum() / norm

        centers = dense.centers  # [A, 2] stride units
        unit = torch.cat([centers - 1, centers + 1], -1).expand(B, A, 4)  # well-formed target of negatives
        gt = assignment.gt_boxes.gather(1, slot[..., None].expand(B, A, 4)) / dense.strides[:, None]
        target = torch.where(pos[..., None], gt, unit)
        pred = distance2bbox(centers, integral(dense.box_logits))
        loss_bbox = self.loss_bbox_weight * (ciou_loss(pred, target) * w).sum() / norm
        dist = bbox2distance(centers, target, max_dis=self.reg_max, eps=0.01)
        dfl = distribution_focal_loss(dense.box_logits, dist).mean(-1)
        loss_dfl = self.loss_dfl_weight * (dfl * w).sum() / norm
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_dfl": loss_dfl}

    def __call__(self, outputs: Mapping[str, Sequence[Tensor]], targets: Sequence[Mapping[str, Tensor]],
                 teacher_outputs: Optional[Mapping[str, Sequence[Tensor]]] = None,
                 image_sizes: Optional[Union[Sequence[Sequence[int]], Tensor]] = None) -> dict[str, Tensor]:
        """``{"loss_cls", "loss_bbox", "loss_dfl"}`` float32 scalars (+ the distillation terms' with a teacher)."""
        if teacher_outputs is not None and self.distill_terms is None:
            raise ValueError("YOLOCriterion got teacher_outputs but has no distillation terms")
        device_type = outputs["cls_logits"][0].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            student = self.flatten(outputs, "student")
            assignment = self.assign(student, targets, image_sizes)
            losses = self.yolo_losses(student, assignment)
            if teacher_outputs is not None:
                teacher = self.flatten(teacher_outputs, "teacher")
                losses.update(self.distill_terms(student, teacher, assignment, outputs, teacher_outputs, self.flatten))
        return losses
