"""GFL criterion: ATSS assignment + QFL / GIoU / DFL, then the distillation terms.

Numerics are mmdetection 3.3's ``GFLHead.loss_by_feat`` (DESIGN §4) and the LD code's
``LDHead`` (DESIGN §5). The GFL family's side of the dense interface (DESIGN §10) lives
here: :meth:`GFLCriterion.flatten` turns per-level head outputs into a
:class:`~locdistill.models.dense.DenseOutputs` and :meth:`GFLCriterion.assign` runs ATSS into an
:class:`~locdistill.models.dense.Assignment`; the LD / VLR / KD, cross-head and imitation terms are
the family-neutral functions of :mod:`locdistill.distill`.

Everything is computed densely over the concatenated anchor axis ``A`` of all levels for the
whole batch, with masks instead of index lists, so there is no host synchronisation (no
``.item()``, no ``nonzero``): a negative anchor has weight exactly 0 and regression targets
that are well-formed (its own anchor box), so it adds exactly 0 to every sum and gradient.

Shapes: ``B`` images, ``A`` anchors, ``C`` classes, ``K`` GT slots (GT lists padded to
the longest), ``n = reg_max``.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import TYPE_CHECKING, Mapping, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from ..boxes import bbox2distance, bbox_overlaps, box_centers, distance2bbox
from ..config import DistillConfig, HeadConfig, LossConfig
from ..distill.crosshead import CROSSHEAD_TERMS, crosshead_terms
from ..distill.imitation import IMITATION_MODES, imitation_region, imitation_term
from ..distill.regions import VLR_IOU_MODES, main_region_weights, vlr_weights
from ..distill.terms import REDUCTIONS, box_kl, check_pair, kd_loss, ld_loss, reduction_scale, vlr_ld_loss
from ..losses import EPS, distribution_focal_loss, giou_loss, quality_focal_loss
from .atss import ATSSAssigner
from .build import build_criterion
from .dense import Assignment, DenseOutputs, integral, reduce_mean
from .priors import grid_priors, valid_flags_batch

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config

__all__ = ["GFLBoxTargets", "GFLCriterion", "reduce_mean"]

#: feature-size sets whose priors stay cached (multi-scale training sees many; each entry is small)
PRIOR_CACHE_SIZE = 16

_H, _L, _D = HeadConfig, LossConfig, DistillConfig  # constructor defaults: the config's, written there only


class GFLBoxTargets(NamedTuple):
    """GFL's per-anchor box and class targets (:meth:`GFLCriterion.box_targets`)."""

    labels: Tensor  # [B, A] int64, num_classes = background
    target_boxes: Tensor  # [B, A, 4] stride units: the GT box of positives, the anchor box otherwise
    pred_boxes: Tensor  # [B, A, 4] decoded student boxes, stride units (carries the graph)
    scores: Tensor  # [B, A] QFL target: IoU(detached pred, GT) on positives, 0 elsewhere


class GFLCriterion:
    """Losses of a GFL detector, optionally distilled from a teacher (LD).

    The argument names are the config field names they come from (``model.head.*``,
    ``loss.*``, ``distill.*``), and the defaults are the config dataclasses' defaults
    (:func:`locdistill.models.build.build_criterion` builds one from a ``Config``).

    Args:
        num_classes: C.
        reg_max: n (``n+1`` bins per side).
        strides: pyramid strides, finest first.
        octave_base_scale: anchor side in strides.
        topk: ATSS candidates per level and GT.
        qfl_beta: QFL exponent.
        loss_cls_weight, loss_bbox_weight, loss_dfl_weight: weights of QFL, GIoU and DFL.
        ld_weight: main-region LD weight (on the student's positives, weighted by w_p).
        ld_temperature: its temperature.
        vlr_weight, vlr_temperature: VLR LD (0.25·thr_g <= DIoU < thr_g, weighted by IoU).
        vlr_iou_mode: ``"diou"`` (true DIoU selects the VLR) or ``"iof"`` (the LD code's quirk:
            intersection over the anchor's area in place of IoU inside its DIoU).
        kd_weight, kd_temperature: class KD on positives (0 turns it off).
        reduction: ``"sum"`` (LD code: grows with images per GPU) or ``"per_image"``
            (sum · 3 / images, equal to ``"sum"`` at 3 images per GPU; batch-size invariant).
        crosshead_ld_weight, crosshead_kd_weight, crosshead_box_weight: the cross-head terms
            (:func:`locdistill.distill.crosshead.crosshead_terms`; 0 = off); they need ``"cross_cls_logits"`` /
            ``"cross_box_logits"`` in the teacher outputs (a Distiller with ``crosshead_layer``).
        crosshead_ld_temperature, crosshead_kd_beta: their temperature and KD exponent.
        imitation_mode: feature imitation's region (:mod:`locdistill.distill.imitation`): ``"fitnet"``,
            ``"inside_gt"``, ``"finegrained"``, ``"decouple"``, ``"gibox"`` ("" = off).
        imitation_weight: ``loss_im``'s weight (0 = off); needs ``"imitation_feats"`` in both outputs
            (a Distiller with ``imitation=True``).
        imitation_gi_topk, imitation_gi_iou_thr, imitation_gi_per_image: the ``"gibox"`` selection
            (GI boxes kept per level; NMS IoU; NMS per image instead of over the batch's locations
            of a level, as the LD code).

    The distillation terms are returned only when ``teacher_outputs`` is given, each only
    if its weight is non-zero.
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
        ld_weight: float = _D.ld_weight,
        ld_temperature: float = _D.ld_temperature,
        vlr_weight: float = _D.vlr_weight,
        vlr_temperature: float = _D.vlr_temperature,
        vlr_iou_mode: str = _D.vlr_iou_mode,
        kd_weight: float = _D.kd_weight,
        kd_temperature: float = _D.kd_temperature,
        reduction: str = _D.reduction,
        crosshead_ld_weight: float = _D.crosshead_ld_weight,
        crosshead_ld_temperature: float = _D.crosshead_ld_temperature,
        crosshead_kd_weight: float = _D.crosshead_kd_weight,
        crosshead_kd_beta: float = _D.crosshead_kd_beta,
        crosshead_box_weight: float = _D.crosshead_box_weight,
        imitation_mode: str = _D.imitation_mode,
        imitation_weight: float = _D.imitation_weight,
        imitation_gi_topk: int = _D.imitation_gi_topk,
        imitation_gi_iou_thr: float = _D.imitation_gi_iou_thr,
        imitation_gi_per_image: bool = _D.imitation_gi_per_image,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"GFLCriterion: num_classes must be >= 1, got {num_classes}")
        if reg_max < 1:
            raise ValueError(f"GFLCriterion: reg_max must be >= 1, got {reg_max}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"GFLCriterion: reduction must be 'sum' or 'per_image', got {reduction!r}")
        if vlr_iou_mode not in VLR_IOU_MODES:
            raise ValueError(f"GFLCriterion: vlr_iou_mode must be 'diou' or 'iof', got {vlr_iou_mode!r}")
        if imitation_mode not in ("",) + IMITATION_MODES:
            raise ValueError(f"GFLCriterion: imitation_mode must be '' or one of {IMITATION_MODES}, "
                             f"got {imitation_mode!r}")
        self.num_classes = int(num_classes)
        self.reg_max = int(reg_max)
        self.strides = tuple(int(s) for s in strides)
        self.octave_base_scale = octave_base_scale
        self.qfl_beta = qfl_beta
        self.loss_cls_weight = loss_cls_weight
        self.loss_bbox_weight = loss_bbox_weight
        self.loss_dfl_weight = loss_dfl_weight
        self.ld_weight = ld_weight
        self.ld_temperature = ld_temperature
        self.vlr_weight = vlr_weight
        self.vlr_temperature = vlr_temperature
        self.vlr_iou_mode = vlr_iou_mode
        self.kd_weight = kd_weight
        self.kd_temperature = kd_temperature
        self.reduction = reduction
        self.crosshead_ld_weight = crosshead_ld_weight
        self.crosshead_ld_temperature = crosshead_ld_temperature
        self.crosshead_kd_weight = crosshead_kd_weight
        self.crosshead_kd_beta = crosshead_kd_beta
        self.crosshead_box_weight = crosshead_box_weight
        self.imitation_mode = imitation_mode
        self.imitation_weight = imitation_weight if imitation_mode else 0.0
        self.imitation_gi_topk = int(imitation_gi_topk)
        self.imitation_gi_iou_thr = float(imitation_gi_iou_thr)
        self.imitation_gi_per_image = bool(imitation_gi_per_image)
        self.assigner = ATSSAssigner(topk)
        self._prior_cache: OrderedDict = OrderedDict()  # LRU of PRIOR_CACHE_SIZE feature-size sets

    @classmethod
    def from_config(cls, cfg: "Config", **changes) -> "GFLCriterion":
        """:func:`locdistill.models.build.build_criterion` (kept for the README's and users' code)."""
        return build_criterion(cfg, **changes)

    def __repr__(self) -> str:
        return (f"GFLCriterion(num_classes={self.num_classes}, reg_max={self.reg_max}, "
                f"strides={self.strides}, topk={self.assigner.topk})")

    @property
    def crosshead_weights(self) -> dict[str, float]:
        """``{"ld", "kd", "box"}`` → the cross-head terms' weights."""
        return {"ld": self.crosshead_ld_weight, "kd": self.crosshead_kd_weight, "box": self.crosshead_box_weight}

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

    def distill_losses(self, student: DenseOutputs, teacher: DenseOutputs, assignment: Assignment,
                       outputs: Optional[Mapping[str, Sequence[Tensor]]] = None,
                       teacher_outputs: Optional[Mapping[str, Sequence[Tensor]]] = None) -> dict[str, Tensor]:
        """LD on the main region, LD on the VLR and class KD (DESIGN §5; :mod:`locdistill.distill.terms`),
        then the cross-head terms (which need ``teacher_outputs``' cross-head predictions) and feature
        imitation (which needs both raw outputs' ``"imitation_feats"``)."""
        check_pair(student, teacher)
        scale = reduction_scale(self.reduction, student.box_logits.shape[0])
        losses = {}
        cross = self.crosshead_losses(teacher, assignment, teacher_outputs)
        kl = None
        if self.ld_weight:
            kl = box_kl(student, teacher, self.ld_temperature)  # [B, A]
            losses["loss_ld"] = ld_loss(kl, main_region_weights(assignment), self.ld_weight * scale)
        if self.vlr_weight:
            if kl is None or self.vlr_temperature != self.ld_temperature:
                kl = box_kl(student, teacher, self.vlr_temperature)
            region = vlr_weights(assignment, self.vlr_iou_mode)
            losses["loss_ld_vlr"] = vlr_ld_loss(kl, region, self.vlr_weight * scale)
        if self.kd_weight:
            losses["loss_kd"] = kd_loss(student, teacher, assignment, self.kd_temperature, self.kd_weight)
        losses.update(cross)
        losses.update(self.imitation_losses(student, teacher, assignment, outputs, teacher_outputs))
        return losses

    def crosshead_losses(self, teacher: DenseOutputs, assignment: Assignment,
                         teacher_outputs: Optional[Mapping[str, Sequence[Tensor]]]) -> dict[str, Tensor]:
        """``loss_cross_ld``, ``loss_cross_kd``, ``loss_cross_box`` (those with a non-zero weight)."""
        weights = self.crosshead_weights
        terms = [k for k in CROSSHEAD_TERMS if weights[k]]
        if not terms:
            return {}
        if not isinstance(teacher_outputs, Mapping) or "cross_cls_logits" not in teacher_outputs \
                or "cross_box_logits" not in teacher_outputs:
            raise ValueError("cross-head losses are on but the teacher outputs hold no 'cross_cls_logits' / "
                             "'cross_box_logits': build the Distiller with crosshead_layer")
        cross = self.flatten({"cls_logits": teacher_outputs["cross_cls_logits"],
                              "box_logits": teacher_outputs["cross_box_logits"]}, "cross-head")
        if cross.cls_logits.shape != teacher.cls_logits.shape or cross.box_logits.shape != teacher.box_logits.shape:
            raise ValueError(f"cross-head outputs {tuple(cross.cls_logits.shape)} / {tuple(cross.box_logits.shape)} "
                             f"do not match the teacher's {tuple(teacher.cls_logits.shape)} / "
                             f"{tuple(teacher.box_logits.shape)}")
        vals = crosshead_terms(cross, teacher, assignment, self.crosshead_ld_temperature, self.crosshead_kd_beta,
                               terms)
        return {f"loss_cross_{k}": weights[k] * vals[k] for k in terms}

    def imitation_losses(self, student: DenseOutputs, teacher: DenseOutputs, assignment: Assignment,
                         outputs: Optional[Mapping[str, Sequence[Tensor]]],
                         teacher_outputs: Optional[Mapping[str, Sequence[Tensor]]]) -> dict[str, Tensor]:
        """``loss_im`` (when its weight is non-zero) on the region of ``imitation_mode``
        (:mod:`locdistill.distill.imitation`)."""
        if not self.imitation_weight:
            return {}
        s_levels = outputs.get("imitation_feats") if isinstance(outputs, Mapping) else None
        t_levels = teacher_outputs.get("imitation_feats") if isinstance(teacher_outputs, Mapping) else None
        if s_levels is None or t_levels is None:
            raise ValueError("feature imitation is on (imitation_weight > 0) but the outputs hold no "
                             "'imitation_feats': build the Distiller with imitation=True")
        if self.kd_weight and teacher.raw_cls_logits is not None:
            # kept as it was (bit-identical): with class KD on, "gibox" compares a GFLv2 teacher's *raw*
            # class scores with the student's joint scores (the KD term's logits leaked into the region)
            teacher = dataclasses.replace(teacher, cls_logits=teacher.raw_cls_logits)
        region, background = imitation_region(self.imitation_mode, student, teacher, assignment,
                                              self.imitation_gi_topk, self.imitation_gi_iou_thr,
                                              self.imitation_gi_per_image)
        return {"loss_im": imitation_term(s_levels, t_levels, region, background, student, assignment,
                                          self.imitation_weight)}

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
            teacher_outputs: same layout from the teacher (box logits post-``Scale``); adds
                ``loss_ld``, ``loss_ld_vlr`` and ``loss_kd``, and with ``"cross_cls_logits"`` /
                ``"cross_box_logits"`` (cross-head) ``loss_cross_ld``, ``loss_cross_kd``, ``loss_cross_box``;
                with ``"imitation_feats"`` in both outputs (FPN maps, feature imitation) ``loss_im``.
                GFLv2 outputs (student or teacher) also hold ``"raw_cls_logits"``: their
                ``cls_logits`` are then logits of the joint score ``σ(cls)·quality``, so QFL and
                ``w_p`` run on that score (GFocalV2's QFL on probabilities) and class KD uses the
                raw logits.
            image_sizes: per image ``(h, w)`` padded extent; None = the whole batch extent.

        Returns:
            ``{"loss_cls", "loss_bbox", "loss_dfl"}`` (+ distillation keys), float32 scalars.
        """
        device_type = outputs["cls_logits"][0].device.type if "cls_logits" in outputs else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            student = self.flatten(outputs, "student")
            assignment = self.assign(student, targets, image_sizes)
            losses = self.gfl_losses(student, assignment)
            if teacher_outputs is not None:
                teacher = self.flatten(teacher_outputs, "teacher")
                losses.update(self.distill_losses(student, teacher, assignment, outputs, teacher_outputs))
        return losses
