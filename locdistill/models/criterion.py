"""GFL criterion: ATSS assignment + QFL / GIoU / DFL, then an injected distillation component.

Numerics are mmdetection 3.3's ``GFLHead.loss_by_feat`` (DESIGN §4). The GFL family's side of
the dense interface (DESIGN §10) lives here: :meth:`GFLCriterion.flatten` turns per-level head
outputs into a :class:`~locdistill.models.dense.DenseOutputs` and :meth:`GFLCriterion.assign` runs
ATSS into an :class:`~locdistill.models.dense.Assignment`. The criterion knows nothing of
distillation: a distilling one is built with a ``distill_terms`` component (constructor injection;
:class:`locdistill.distill.criterion.DistillTerms`, joined to this class from a config by
:func:`locdistill.distill.build.build_criterion`), which it calls on the flattened student and
teacher outputs and the assignment.

Everything is computed densely over the concatenated anchor axis ``A`` of all levels for the
whole batch, with masks instead of index lists, so there is no host synchronisation (no
``.item()``, no ``nonzero``): a negative anchor has weight exactly 0 and regression targets
that are well-formed (its own anchor box), so it adds exactly 0 to every sum and gradient.

Shapes: ``B`` images, ``A`` anchors, ``C`` classes, ``K`` GT slots (GT lists padded to
the longest), ``n = reg_max``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Mapping, NamedTuple, Optional, Protocol, Sequence, Union

import torch
from torch import Tensor

from ..boxes import bbox2distance, bbox_overlaps, box_centers, distance2bbox
from ..config import HeadConfig, LossConfig
from ..losses import EPS, distribution_focal_loss, giou_loss, quality_focal_loss
from .atss import ATSSAssigner
from .dense import Assignment, DenseOutputs, integral, reduce_mean
from .priors import grid_priors, valid_flags_batch

__all__ = ["DistillComponent", "GFLBoxTargets", "GFLCriterion", "reduce_mean"]

#: feature-size sets whose priors stay cached (multi-scale training sees many; each entry is small)
PRIOR_CACHE_SIZE = 16

_H, _L = HeadConfig, LossConfig  # constructor defaults: the config's, written there only


class DistillComponent(Protocol):
    """What a criterion calls to distil (:class:`locdistill.distill.criterion.DistillTerms`).

    ``component(student, teacher, assignment, outputs, teacher_outputs, flatten) -> {name: scalar}``:
    the flattened student and teacher predictions, the student's assignment, both raw per-level
    outputs dicts (for what a component reads beyond the head outputs: cross-head predictions,
    imitation features) and the family's ``flatten(outputs, who)`` (for further per-level maps laid
    out like the head outputs). Returns weighted float32 scalar losses.
    """

    def __call__(self, student: DenseOutputs, teacher: DenseOutputs, assignment: Assignment,
                 outputs: Mapping[str, Sequence[Tensor]], teacher_outputs: Mapping[str, Sequence[Tensor]],
                 flatten: Callable[[Mapping[str, Sequence[Tensor]], str], DenseOutputs]) -> dict[str, Tensor]: ...


class GFLBoxTargets(NamedTuple):
    """GFL's per-anchor box and class targets (:meth:`GFLCriterion.box_targets`)."""

    labels: Tensor  # [B, A] int64, num_classes = background
    target_boxes: Tensor  # [B, A, 4] stride units: the GT box of positives, the anchor box otherwise
    pred_boxes: Tensor  # [B, A, 4] decoded student boxes, stride units (carries the graph)
    scores: Tensor  # [B, A] QFL target: IoU(detached pred, GT) on positives, 0 elsewhere


class GFLCriterion:
    """Losses of a GFL detector, optionally distilled from a teacher by an injected component.

    The argument names are the config field names they come from (``model.head.*``, ``loss.*``),
    and the defaults are the config dataclasses' defaults
    (:func:`locdistill.distill.build.build_criterion` builds one from a ``Config``).

    Args:
        num_classes: C.
        reg_max: n (``n+1`` bins per side).
        strides: pyramid strides, finest first.
        octave_base_scale: anchor side in strides.
        topk: ATSS candidates per level and GT.
        qfl_beta: QFL exponent.
        loss_cls_weight, loss_bbox_weight, loss_dfl_weight: weights of QFL, GIoU and DFL.
        distill_terms: the distillation component (:class:`DistillComponent`, e.g.
            :class:`locdistill.distill.criterion.DistillTerms`); None = a criterion that does not distil
            (``teacher_outputs`` are then an error).

    The distillation terms are returned only when ``teacher_outputs`` is given.
    """

    def __init__(
        self,
        num_classes: int,
        reg_max: int = _H.reg_max,
        strides: Sequence[int] = _H.strides,
        octave_base_scale: int = _H.octave_base_scale,
        topk: int = _L.topk,
        qfl_beta: float = _L.qfl_beta,
        loss_cls_weight: float = _L.loss_cls_weight,
        loss_bbox_weight: float = _L.loss_bbox_weight,
        loss_dfl_weight: float = _L.loss_dfl_weight,
        distill_terms: Optional[DistillComponent] = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"GFLCriterion: num_classes must be >= 1, got {num_classes}")
        if reg_max < 1:
            raise ValueError(f"GFLCriterion: reg_max must be >= 1, got {reg_max}")
        if distill_terms is not None and not callable(distill_terms):
            raise TypeError(f"GFLCriterion: distill_terms must be callable (a DistillTerms), got "
                            f"{type(distill_terms).__name__}")
        self.num_classes = int(num_classes)
        self.reg_max = int(reg_max)
        self.strides = tuple(int(s) for s in strides)
        self.octave_base_scale = octave_base_scale
        self.qfl_beta = qfl_beta
        self.loss_cls_weight = loss_cls_weight
        self.loss_bbox_weight = loss_bbox_weight
        self.loss_dfl_weight = loss_dfl_weight
        self.distill_terms = distill_terms
        self.assigner = ATSSAssigner(topk)
        self._prior_cache: OrderedDict = OrderedDict()  # LRU of PRIOR_CACHE_SIZE feature-size sets

    def __repr__(self) -> str:
        distill = "" if self.distill_terms is None else f", distill_terms={self.distill_terms!r}"
        return (f"GFLCriterion(num_classes={self.num_classes}, reg_max={self.reg_max}, "
                f"strides={self.strides}, topk={self.assigner.topk}{distill})")

    # ------------------------------------------------------------------------------
    # the GFL family's dense interface

    def flatten(self, outputs: Mapping[str, Sequence[Tensor]], who: str = "student") -> DenseOutputs:
        """Per-level GFL head outputs → :class:`~locdistill.models.dense.DenseOutputs` (float32).

        ``outputs``: ``{"cls_logits": [B,C,H,W] per level, "box_logits": [B,4(n+1),H,W] per level}``
        (+ a GFLv2 model's ``"raw_cls_logits"``, same layout as ``"cls_logits"``).
        """
        try:
            cls_levels, box_levels = outputs["cls_logits"], outputs["box_logits"]
        except (KeyError, TypeError):
            raise ValueError(f"{who} outputs must be a dict with 'cls_logits' and 'box_logits' lists") from None
        if len(cls_levels) != len(self.strides) or len(box_levels) != len(self.strides):
            raise ValueError(
                f"{who} outputs have {len(cls_levels)} class / {len(box_levels)} box levels; the criterion "
                f"has strides {self.strides}"
            )
        n1 = self.reg_max + 1
        sizes, cls_flat, box_flat = [], [], []
        for lvl, (c, b) in enumerate(zip(cls_levels, box_levels)):
            if c.dim() != 4 or b.dim() != 4 or c.shape[-2:] != b.shape[-2:] or c.shape[0] != b.shape[0]:
                raise ValueError(f"{who} level {lvl}: expected [B,C,H,W] maps of equal B, H, W, got "
                                 f"{tuple(c.shape)} and {tuple(b.shape)}")
            if b.shape[1] != 4 * n1:
                raise ValueError(f"{who} level {lvl}: box logits have {b.shape[1]} channels, expected "
                                 f"4*(reg_max+1) = {4 * n1} (reg_max={self.reg_max})")
            B, C, H, W = c.shape
            sizes.append((H, W))
            cls_flat.append(c.float().permute(0, 2, 3, 1).reshape(B, H * W, C))
            box_flat.append(b.float().permute(0, 2, 3, 1).reshape(B, H * W, 4, n1))
        cls_logits, box_logits = torch.cat(cls_flat, 1), torch.cat(box_flat, 1)
        _, points, centers, strides, level_ids, counts = self._priors(sizes, cls_logits.device)
        raw_levels = outputs.get("raw_cls_logits") if isinstance(outputs, Mapping) else None
        raw = None
        if raw_levels is not None:
            raw = torch.cat([c.float().permute(0, 2, 3, 1).reshape(c.shape[0], -1, c.shape[1]) for c in raw_levels], 1)
        return DenseOutputs(cls_logits=cls_logits, box_logits=box_logits, points=points, strides=strides,
                            level_ids=level_ids, centers=centers, level_sizes=tuple(sizes), raw_cls_logits=raw)

    def _priors(self, sizes: list, device: torch.device) -> tuple:
        """``(anchors [A,4], points [A,2], centers [A,2], strides [A], level_ids [A], counts)`` of the
        feature sizes, from a small LRU cache (multi-scale training changes the sizes every batch)."""
        key = (tuple(tuple(int(v) for v in hw) for hw in sizes), str(device))
        hit = self._prior_cache.get(key)
        if hit is not None:
            self._prior_cache.move_to_end(key)
            return hit
        levels = grid_priors(sizes, self.strides, self.octave_base_scale, device=device)
        counts = tuple(lv.shape[0] for lv in levels)
        strides = torch.cat([torch.full((n,), float(s), device=device) for n, s in zip(counts, self.strides)])
        level_ids = torch.cat([torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(counts)])
        anchors = torch.cat(levels)
        points = box_centers(anchors)  # [A, 2] pixels
        entry = (anchors, points, points / strides[:, None], strides, level_ids, counts)
        self._prior_cache[key] = entry
        while len(self._prior_cache) > PRIOR_CACHE_SIZE:
            self._prior_cache.popitem(last=False)
        return entry

    @staticmethod
    def _pad_targets(targets: Sequence[Mapping[str, Tensor]], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """GT lists → ``[B, K, 4]`` boxes, ``[B, K]`` labels, ``[B, K]`` mask (``K >= 1``)."""
        B = len(targets)
        counts = []
        for i, t in enumerate(targets):
            if "boxes" not in t or "labels" not in t:
                raise ValueError(f"target {i} must have 'boxes' [K,4] and 'labels' [K]")
            boxes, labels = t["boxes"], t["labels"]
            if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
                raise ValueError(f"target {i}: boxes must be [K,4] and labels [K], got {tuple(boxes.shape)} and "
                                 f"{tuple(labels.shape)}")
            counts.append(boxes.shape[0])
        K = max(counts + [1])
        gt_boxes = torch.zeros(B, K, 4, device=device)
        gt_labels = torch.zeros(B, K, dtype=torch.long, device=device)
        for i, (t, k) in enumerate(zip(targets, counts)):
            if k:
                gt_boxes[i, :k] = t["boxes"].to(device=device, dtype=torch.float32)
                gt_labels[i, :k] = t["labels"].to(device=device, dtype=torch.long)
        gt_mask = torch.arange(K, device=device)[None, :] < torch.tensor(counts, device=device)[:, None]
        return gt_boxes, gt_labels, gt_mask

    def assign(
        self,
        dense: DenseOutputs,
        targets: Sequence[Mapping[str, Tensor]],
        image_sizes: Optional[Union[Sequence[Sequence[int]], Tensor]] = None,
    ) -> Assignment:
        """ATSS-assign the anchors of ``dense`` (the student's) to the GTs of ``targets``.

        Args:
            dense: the student's :meth:`flatten`; its class logits give ``pos_weight`` (detached).
            targets: one ``{"boxes": [K,4], "labels": [K]}`` per image.
            image_sizes: per image ``(h, w)`` of its padded-to-32 extent; anchors outside
                get label weight 0 and are never assigned. None = the batch extent.
        """
        cls_logits = dense.cls_logits
        B, A, C = cls_logits.shape
        if C != self.num_classes:
            raise ValueError(f"class logits have {C} channels but the criterion has num_classes={self.num_classes}")
        if len(targets) != B:
            raise ValueError(f"{len(targets)} targets for a batch of {B} images")
        device = cls_logits.device
        anchors, *_, counts = self._priors(dense.level_sizes, device)
        if image_sizes is None:
            valid = torch.ones(B, A, dtype=torch.bool, device=device)
        else:
            if len(image_sizes) != B:
                raise ValueError(f"{len(image_sizes)} image_sizes for a batch of {B} images")
            valid = valid_flags_batch(dense.level_sizes, self.strides, image_sizes, device=device)

        gt_boxes, gt_labels, gt_mask = self._pad_targets(targets, device)
        atss = self.assigner.assign(anchors, list(counts), gt_boxes, gt_mask, valid)
        pos = atss.gt_inds >= 0  # [B, A]
        num_pos = pos.sum(1)
        avg_factor = reduce_mean(num_pos.clamp(min=1).sum().float())
        pos_weight = torch.where(pos, cls_logits.detach().sigmoid().amax(-1), torch.zeros((), device=device))
        return Assignment(pos=pos, pos_weight=pos_weight, gt_index=atss.gt_inds, gt_boxes=gt_boxes,
                          gt_labels=gt_labels, gt_mask=gt_mask, valid=valid, num_pos=num_pos, avg_factor=avg_factor,
                          anchors=anchors, thresholds=atss.thresholds, anchor_ious=atss.ious)

    def box_targets(self, dense: DenseOutputs, assignment: Assignment) -> GFLBoxTargets:
        """GFL's per-anchor class labels, box targets, decoded predictions and QFL scores."""
        pos, slot = assignment.pos, assignment.gt_index.clamp(min=0)
        B, A = pos.shape
        device = pos.device
        labels = torch.where(pos, assignment.gt_labels.gather(1, slot), torch.full_like(slot, self.num_classes))
        assigned = torch.where(pos[..., None], assignment.gt_boxes.gather(1, slot[..., None].expand(B, A, 4)),
                               assignment.anchors.expand(B, A, 4))
        pred_boxes = distance2bbox(dense.centers, integral(dense.box_logits))
        target_boxes = assigned / dense.strides[:, None]
        scores = bbox_overlaps(pred_boxes.detach(), target_boxes, is_aligned=True)
        scores = torch.where(pos, scores, torch.zeros((), device=device))
        return GFLBoxTargets(labels, target_boxes, pred_boxes, scores)

    # ------------------------------------------------------------------------------
    # losses

    def gfl_losses(self, dense: DenseOutputs, assignment: Assignment) -> dict[str, Tensor]:
        """QFL, GIoU and DFL (mmdet ``GFLHead.loss_by_feat``) of the student's ``dense`` outputs."""
        t = self.box_targets(dense, assignment)
        qfl = quality_focal_loss(dense.cls_logits, t.labels, t.scores, beta=self.qfl_beta)  # [B, A]
        loss_cls = self.loss_cls_weight * ((qfl * assignment.valid.float()).sum() / (assignment.avg_factor + EPS))

        w = assignment.pos_weight
        norm = reduce_mean(w.sum()).clamp(min=1)
        giou = giou_loss(t.pred_boxes, t.target_boxes, eps=1e-6)  # [B, A]
        loss_bbox = self.loss_bbox_weight * ((giou * w).sum() / (1 + EPS)) / norm
        dfl_target = bbox2distance(dense.centers, t.target_boxes, max_dis=self.reg_max, eps=0.1)  # [B, A, 4]
        dfl = distribution_focal_loss(dense.box_logits, dfl_target)  # [B, A, 4]
        loss_dfl = self.loss_dfl_weight * ((dfl * w[..., None]).sum() / (4 + EPS)) / norm
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_dfl": loss_dfl}

    def __call__(
        self,
        outputs: Mapping[str, Sequence[Tensor]],
        targets: Sequence[Mapping[str, Tensor]],
        teacher_outputs: Optional[Mapping[str, Sequence[Tensor]]] = None,
        image_sizes: Optional[Union[Sequence[Sequence[int]], Tensor]] = None,
    ) -> dict[str, Tensor]:
        """Weighted scalar losses of a batch.

        Args:
            outputs: ``{"cls_logits": [B,C,H,W] per level, "box_logits": [B,4(n+1),H,W] per level}``.
            targets: per image ``{"boxes": [K,4] xyxy pixels, "labels": [K] int64 in 0..C-1}``.
            teacher_outputs: same layout from the teacher (box logits post-``Scale``); flattened
                and handed with the student's to the ``distill_terms`` component, whose losses are
                added (:class:`locdistill.distill.criterion.DistillTerms`: ``loss_ld``, ``loss_ld_vlr``,
                ``loss_kd``, and with ``"cross_cls_logits"`` / ``"cross_box_logits"`` (cross-head)
                ``loss_cross_ld``, ``loss_cross_kd``, ``loss_cross_box``; with ``"imitation_feats"`` in
                both outputs (FPN maps, feature imitation) ``loss_im``). Needs a criterion built with
                ``distill_terms``. GFLv2 outputs (student or teacher) also hold ``"raw_cls_logits"``:
                their ``cls_logits`` are then logits of the joint score ``σ(cls)·quality``, so QFL and
                ``w_p`` run on that score (GFocalV2's QFL on probabilities) and class KD uses the
                raw logits.
            image_sizes: per image ``(h, w)`` padded extent; None = the whole batch extent.

        Returns:
            ``{"loss_cls", "loss_bbox", "loss_dfl"}`` (+ distillation keys), float32 scalars.
        """
        if teacher_outputs is not None and self.distill_terms is None:
            raise ValueError(
                "GFLCriterion got teacher_outputs but has no distillation terms: build a distilling criterion "
                "with locdistill.distill.build_criterion(cfg) (a config with distill.teacher_config set, or "
                "distill=True) or GFLCriterion(..., distill_terms=locdistill.distill.DistillTerms(...))")
        device_type = outputs["cls_logits"][0].device.type if "cls_logits" in outputs else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            student = self.flatten(outputs, "student")
            assignment = self.assign(student, targets, image_sizes)
            losses = self.gfl_losses(student, assignment)
            if teacher_outputs is not None:
                teacher = self.flatten(teacher_outputs, "teacher")
                losses.update(self.distill_terms(student, teacher, assignment, outputs, teacher_outputs,
                                                 self.flatten))
        return losses
