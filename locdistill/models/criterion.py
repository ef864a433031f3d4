"""GFL criterion: ATSS assignment + QFL / GIoU / DFL, and the LD / VLR / KD / imitation terms.

Numerics are mmdetection 3.3's ``GFLHead.loss_by_feat`` (DESIGN §4) and the LD code's
``LDHead`` (DESIGN §5). Everything is computed densely over the concatenated anchor
axis ``A`` of all levels for the whole batch, with masks instead of index lists, so
there is no host synchronisation (no ``.item()``, no ``nonzero``): a negative anchor
has weight exactly 0 and regression targets that are well-formed (its own anchor box),
so it adds exactly 0 to every sum and to every gradient.

Shapes: ``B`` images, ``A`` anchors, ``C`` classes, ``K`` GT slots (GT lists padded to
the longest), ``n = reg_max``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ..boxes import bbox2distance, bbox_diou, bbox_overlaps, box_centers, distance2bbox
from ..imitation import (IMITATION_MODES, finegrained_region, flatten_features, gi_region, imitation_loss,
                         inside_gt_region)
from ..losses import (EPS, distribution_focal_loss, giou_loss, kd_kl_loss, kd_quality_focal_loss,
                      quality_focal_loss)
from .atss import ATSSAssigner, ATSSResult
from .priors import grid_priors, valid_flags_batch

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config

__all__ = ["GFLCriterion", "GFLTargets", "crosshead_terms", "reduce_mean"]


def reduce_mean(x: Tensor) -> Tensor:
    """Mean over DDP ranks (all-reduce); identity when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    x = x.clone()
    dist.all_reduce(x.div_(dist.get_world_size()))
    return x


def crosshead_terms(
    cross_cls: Tensor,
    cross_box: Tensor,
    teacher_cls: Tensor,
    teacher_box: Tensor,
    centers: Tensor,
    valid: Tensor,
    cls_avg_factor: Union[float, Tensor],
    ld_temperature: float = 1.0,
    kd_beta: float = 1.0,
    terms: Sequence[str] = ("ld", "kd", "box"),
) -> dict[str, Tensor]:
    """Unweighted cross-head distillation terms (CrossKD's GFL losses; :mod:`locdistill.distill`).

    Dense over every anchor inside its image (``valid``), not only the positives. With
    ``w_a = max_c σ(teacher_cls)`` on valid anchors (0 elsewhere) and ``W = Σ_a w_a`` (mean over
    DDP ranks):

    - ``"ld"``: ``Σ_a w_a Σ_sides T² · Σ_bins KL(softmax(t/T) ‖ softmax(x/T)) / 4 / W``;
    - ``"kd"``: ``Σ_valid Σ_c kd_quality_focal_loss(x, t, kd_beta) / cls_avg_factor`` (GFL's ``N``);
    - ``"box"``: ``Σ_a w_a (1 − GIoU(decode(x), decode(t))) / W``, boxes decoded from the anchor
      centres in stride units.

    Args:
        cross_cls, teacher_cls: ``[B, A, C]`` cross-head and teacher class logits.
        cross_box, teacher_box: ``[B, A, 4, n+1]`` cross-head and teacher box logits.
        centers: ``[A, 2]`` anchor centres in stride units.
        valid: ``[B, A]`` bool, anchors inside the image.
        cls_avg_factor: the class term's divisor (GFL's ``N``).
        terms: which of ``"ld"``, ``"kd"``, ``"box"`` to compute.

    Returns:
        ``{term: scalar}`` float32 for each requested term; the teacher is detached.
    """
    teacher_cls, teacher_box = teacher_cls.detach().float(), teacher_box.detach().float()
    cross_cls, cross_box = cross_cls.float(), cross_box.float()
    zero = torch.zeros((), device=cross_cls.device)
    out = {}
    if "kd" in terms:
        kd = kd_quality_focal_loss(cross_cls, teacher_cls, kd_beta)  # [B, A]
        out["kd"] = torch.where(valid, kd, zero).sum() / (cls_avg_factor + EPS)
    if "ld" in terms or "box" in terms:
        w = torch.where(valid, teacher_cls.sigmoid().amax(-1), zero)  # [B, A]
        norm = reduce_mean(w.sum()) + EPS
        if "ld" in terms:
            ld = kd_kl_loss(cross_box, teacher_box, ld_temperature, class_reduction="sum").sum(-1)  # [B, A]
            out["ld"] = (ld * w).sum() / (4 + EPS) / norm
        if "box" in terms:
            n1 = cross_box.shape[-1]
            project = torch.linspace(0, n1 - 1, n1, device=cross_box.device)
            cross_boxes = distance2bbox(centers, cross_box.softmax(-1) @ project)  # [B, A, 4] stride units
            teacher_boxes = distance2bbox(centers, teacher_box.softmax(-1) @ project)
            giou = giou_loss(cross_boxes, teacher_boxes, eps=1e-6)  # [B, A]
            out["box"] = (giou * w).sum() / (1 + EPS) / norm
    return out


@dataclass
class GFLTargets:
    """Assignment and per-anchor targets of one batch (output of :meth:`GFLCriterion.get_targets`)."""

    anchors: Tensor  # [A, 4] xyxy pixels, levels concatenated
    strides: Tensor  # [A] stride of each anchor's level
    level_ids: Tensor  # [A] int64 level index of each anchor
    num_level_anchors: list  # anchors per level
    centers: Tensor  # [A, 2] anchor centres in stride units
    valid: Tensor  # [B, A] bool: inside the image's padded extent
    labels: Tensor  # [B, A] int64, num_classes = background
    label_weights: Tensor  # [B, A] float (1 on valid anchors, 0 outside the image)
    pos_mask: Tensor  # [B, A] bool ATSS positives
    gt_inds: Tensor  # [B, A] int64 assigned GT slot, -1 = negative
    assigned_boxes: Tensor  # [B, A, 4] pixels: the GT box of positives, the anchor box otherwise
    num_pos: Tensor  # [B] int64 positives per image
    avg_factor: Tensor  # () N = sum_i max(num_pos_i, 1), mean over ranks
    weight_targets: Tensor  # [B, A] w_p = max_c sigmoid(cls).detach() on positives, 0 elsewhere
    cls_logits: Tensor  # [B, A, C] float32 student class logits (graph)
    box_logits: Tensor  # [B, A, 4, n+1] float32 student box logits (graph)
    pred_boxes: Tensor  # [B, A, 4] decoded student boxes, stride units (graph)
    target_boxes: Tensor  # [B, A, 4] assigned_boxes in stride units
    scores: Tensor  # [B, A] QFL target: IoU(detached pred, GT) on positives, 0 elsewhere
    gt_boxes: Tensor  # [B, K, 4] padded GT boxes (pixels)
    gt_mask: Tensor  # [B, K] bool real GT slots
    assign: ATSSResult  # raw ATSS output (thresholds [B, K], ious [B, A, K], ...)
    raw_cls_logits: Optional[Tensor] = None  # [B, A, C] GFLv2 student's raw class logits (for KD), else None


class GFLCriterion:
    """Losses of a GFL detector, optionally distilled from a teacher (LD).

    Args:
        num_classes: C.
        reg_max: n (``n+1`` bins per side).
        strides: pyramid strides, finest first.
        octave_base_scale: anchor side in strides.
        topk: ATSS candidates per level and GT.
        beta: QFL exponent.
        loss_cls_weight, loss_bbox_weight, loss_dfl_weight: weights of QFL, GIoU and DFL.
        loss_ld_weight: main-region LD weight (on the student's positives, weighted by w_p).
        loss_ld_vlr_weight: VLR LD weight (0.25·thr_g <= DIoU < thr_g, weighted by IoU).
        loss_kd_weight: class KD on positives (0 turns it off).
        ld_temperature, vlr_temperature, kd_temperature: temperatures of main LD (10),
            VLR LD (10) and class KD (2).
        ld_reduction: ``"sum"`` (LD code: grows with images per GPU) or ``"per_image"``
            (sum · 3 / images, equal to ``"sum"`` at 3 images per GPU; batch-size invariant).
        vlr_iou_mode: ``"diou"`` (true DIoU selects the VLR) or ``"iof"`` (the LD code's quirk:
            intersection over the anchor's area in place of IoU inside its DIoU).
        loss_crosshead_ld_weight, loss_crosshead_kd_weight, loss_crosshead_box_weight: the cross-head
            terms (:func:`crosshead_terms`; 0 = off); they need ``"cross_cls_logits"`` /
            ``"cross_box_logits"`` in the teacher outputs (a Distiller with ``crosshead_layer``).
        crosshead_ld_temperature, crosshead_kd_beta: their temperature (1) and KD exponent (1).
        loss_im_weight: feature imitation on the FPN maps (``loss_im``, :mod:`locdistill.imitation`;
            0 = off); needs ``"imitation_feats"`` in both outputs (a Distiller with ``imitation=True``).
        imitation_mode: its region: ``"fitnet"``, ``"inside_gt"``, ``"finegrained"``, ``"decouple"``,
            ``"gibox"`` ("" = off).
        imitation_gi_topk, imitation_gi_iou_thr, imitation_gi_per_image: the ``"gibox"`` selection
            (GI boxes kept per level: 10; NMS IoU: 0.3; NMS over the batch's locations of a level, as
            the LD code, or per image).

    The distillation terms are returned only when ``teacher_outputs`` is given, each only
    if its weight is non-zero.
    """

    def __init__(
        self,
        num_classes: int,
        reg_max: int = 16,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        octave_base_scale: int = 8,
        topk: int = 9,
        beta: float = 2.0,
        loss_cls_weight: float = 1.0,
        loss_bbox_weight: float = 2.0,
        loss_dfl_weight: float = 0.25,
        loss_ld_weight: float = 0.25,
        loss_ld_vlr_weight: float = 0.25,
        loss_kd_weight: float = 10.0,
        ld_temperature: float = 10.0,
        vlr_temperature: float = 10.0,
        kd_temperature: float = 2.0,
        ld_reduction: str = "sum",
        vlr_iou_mode: str = "diou",
        loss_crosshead_ld_weight: float = 0.0,
        loss_crosshead_kd_weight: float = 0.0,
        loss_crosshead_box_weight: float = 0.0,
        crosshead_ld_temperature: float = 1.0,
        crosshead_kd_beta: float = 1.0,
        loss_im_weight: float = 0.0,
        imitation_mode: str = "",
        imitation_gi_topk: int = 10,
        imitation_gi_iou_thr: float = 0.3,
        imitation_gi_per_image: bool = False,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"GFLCriterion: num_classes must be >= 1, got {num_classes}")
        if reg_max < 1:
            raise ValueError(f"GFLCriterion: reg_max must be >= 1, got {reg_max}")
        if ld_reduction not in ("sum", "per_image"):
            raise ValueError(f"GFLCriterion: ld_reduction must be 'sum' or 'per_image', got {ld_reduction!r}")
        if vlr_iou_mode not in ("diou", "iof"):
            raise ValueError(f"GFLCriterion: vlr_iou_mode must be 'diou' or 'iof', got {vlr_iou_mode!r}")
        if imitation_mode not in ("",) + IMITATION_MODES:
            raise ValueError(f"GFLCriterion: imitation_mode must be '' or one of {IMITATION_MODES}, "
                             f"got {imitation_mode!r}")
        self.num_classes = int(num_classes)
        self.reg_max = int(reg_max)
        self.strides = tuple(int(s) for s in strides)
        self.octave_base_scale = octave_base_scale
        self.beta = beta
        self.loss_cls_weight = loss_cls_weight
        self.loss_bbox_weight = loss_bbox_weight
        self.loss_dfl_weight = loss_dfl_weight
        self.loss_ld_weight = loss_ld_weight
        self.loss_ld_vlr_weight = loss_ld_vlr_weight
        self.loss_kd_weight = loss_kd_weight
        self.ld_temperature = ld_temperature
        self.vlr_temperature = vlr_temperature
        self.kd_temperature = kd_temperature
        self.ld_reduction = ld_reduction
        self.vlr_iou_mode = vlr_iou_mode
        self.loss_crosshead_weights = {"ld": loss_crosshead_ld_weight, "kd": loss_crosshead_kd_weight,
                                       "box": loss_crosshead_box_weight}
        self.crosshead_ld_temperature = crosshead_ld_temperature
        self.crosshead_kd_beta = crosshead_kd_beta
        self.loss_im_weight = loss_im_weight if imitation_mode else 0.0
        self.imitation_mode = imitation_mode
        self.imitation_gi_topk = int(imitation_gi_topk)
        self.imitation_gi_iou_thr = float(imitation_gi_iou_thr)
        self.imitation_gi_per_image = bool(imitation_gi_per_image)
        self.assigner = ATSSAssigner(topk)
        self._prior_cache: dict = {}

    @classmethod
    def from_config(cls, cfg: "Config", **kwargs) -> "GFLCriterion":
        """Build from a :class:`locdistill.config.Config`: ``model.*``, ``loss.*`` and the
        ``distill.*`` weights/temperatures; ``kwargs`` override constructor arguments."""
        head, loss = cfg.model.head, cfg.loss
        args = dict(
            num_classes=cfg.model.num_classes,
            reg_max=head.reg_max,
            strides=tuple(head.strides),
            octave_base_scale=head.octave_base_scale,
            topk=loss.topk,
            beta=loss.qfl_beta,
            loss_cls_weight=loss.loss_cls_weight,
            loss_bbox_weight=loss.loss_bbox_weight,
            loss_dfl_weight=loss.loss_dfl_weight,
        )
        d = getattr(cfg, "distill", None)
        if d is not None:
            args.update(
                loss_ld_weight=d.ld_weight,
                ld_temperature=d.ld_temperature,
                loss_ld_vlr_weight=d.vlr_weight,
                vlr_temperature=d.vlr_temperature,
                vlr_iou_mode=d.vlr_iou_mode,
                loss_kd_weight=d.kd_weight,
                kd_temperature=d.kd_temperature,
                ld_reduction=d.reduction,
                loss_crosshead_ld_weight=d.crosshead_ld_weight,
                loss_crosshead_kd_weight=d.crosshead_kd_weight,
                loss_crosshead_box_weight=d.crosshead_box_weight,
                crosshead_ld_temperature=d.crosshead_ld_temperature,
                crosshead_kd_beta=d.crosshead_kd_beta,
            )
            if getattr(d, "imitation_mode", ""):
                args.update(
                    loss_im_weight=d.imitation_weight,
                    imitation_mode=d.imitation_mode,
                    imitation_gi_topk=d.imitation_gi_topk,
                    imitation_gi_iou_thr=d.imitation_gi_iou_thr,
                    imitation_gi_per_image=d.imitation_gi_per_image,
                )
        args.update(kwargs)
        return cls(**args)

    def __repr__(self) -> str:
        return (f"GFLCriterion(num_classes={self.num_classes}, reg_max={self.reg_max}, "
                f"strides={self.strides}, topk={self.assigner.topk})")

    # ------------------------------------------------------------------------------
    # inputs

    def _flatten(self, outputs: Mapping[str, Sequence[Tensor]], who: str) -> tuple[Tensor, Tensor, list]:
        """Per-level head outputs → ``[B, A, C]`` and ``[B, A, 4, n+1]`` float32."""
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
        return torch.cat(cls_flat, 1), torch.cat(box_flat, 1), sizes

    @staticmethod
    def _flatten_raw(outputs: Mapping[str, Sequence[Tensor]]) -> Optional[Tensor]:
        """GFLv2 ``raw_cls_logits`` per level → ``[B, A, C]`` float32; None for GFL v1 outputs."""
        levels = outputs.get("raw_cls_logits") if isinstance(outputs, Mapping) else None
        if levels is None:
            return None
        return torch.cat([c.float().permute(0, 2, 3, 1).reshape(c.shape[0], -1, c.shape[1]) for c in levels], 1)

    def _priors(self, sizes: list, device: torch.device) -> tuple[Tensor, Tensor, Tensor, list]:
        key = (tuple(sizes), str(device))
        if key not in self._prior_cache:
            levels = grid_priors(sizes, self.strides, self.octave_base_scale, device=device)
            counts = [lv.shape[0] for lv in levels]
            strides = torch.cat([torch.full((n,), float(s), device=device) for n, s in zip(counts, self.strides)])
            level_ids = torch.cat([torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(counts)])
            self._prior_cache[key] = (torch.cat(levels), strides, level_ids, counts)
        return self._prior_cache[key]

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

    # ------------------------------------------------------------------------------
    # targets

    def get_targets(
        self,
        outputs: Mapping[str, Sequence[Tensor]],
        targets: Sequence[Mapping[str, Tensor]],
        image_sizes: Optional[Union[Sequence[Sequence[int]], Tensor]] = None,
    ) -> GFLTargets:
        """Assign anchors to GTs and build every per-anchor target of the batch.

        Args:
            outputs: student head outputs (see :meth:`__call__`).
            targets: one ``{"boxes": [K,4], "labels": [K]}`` per image.
            image_sizes: per image ``(h, w)`` of its padded-to-32 extent; anchors outside
                get label weight 0 and are never assigned. None = the batch extent.
        """
        cls_logits, box_logits, sizes = self._flatten(outputs, "student")
        B, A, C = cls_logits.shape
        if C != self.num_classes:
            raise ValueError(f"class logits have {C} channels but the criterion has num_classes={self.num_classes}")
        if len(targets) != B:
            raise ValueError(f"{len(targets)} targets for a batch of {B} images")
        device = cls_logits.device
        anchors, strides, level_ids, counts = self._priors(sizes, device)
        if image_sizes is None:
            valid = torch.ones(B, A, dtype=torch.bool, device=device)
        else:
            if len(image_sizes) != B:
                raise ValueError(f"{len(image_sizes)} image_sizes for a batch of {B} images")
            valid = valid_flags_batch(sizes, self.strides, image_sizes, device=device)

        gt_boxes, gt_labels, gt_mask = self._pad_targets(targets, device)
        assign = self.assigner.assign(anchors, counts, gt_boxes, gt_mask, valid)
        pos = assign.gt_inds >= 0  # [B, A]
        slot = assign.gt_inds.clamp(min=0)
        labels = torch.where(pos, gt_labels.gather(1, slot), torch.full_like(slot, self.num_classes))
        assigned = torch.where(
            pos[..., None], gt_boxes.gather(1, slot[..., None].expand(B, A, 4)), anchors.expand(B, A, 4)
        )
        num_pos = pos.sum(1)
        avg_factor = reduce_mean(num_pos.clamp(min=1).sum().float())

        weight_targets = torch.where(pos, cls_logits.detach().sigmoid().amax(-1), torch.zeros((), device=device))
        project = torch.linspace(0, self.reg_max, self.reg_max + 1, device=device)
        distances = F.linear(box_logits.softmax(-1), project[None]).squeeze(-1)  # [B, A, 4]
        centers = box_centers(anchors) / strides[:, None]  # [A, 2]
        pred_boxes = distance2bbox(centers, distances)
        target_boxes = assigned / strides[:, None]
        scores = bbox_overlaps(pred_boxes.detach(), target_boxes, is_aligned=True)
        scores = torch.where(pos, scores, torch.zeros((), device=device))
        return GFLTargets(
            anchors=anchors, strides=strides, level_ids=level_ids, num_level_anchors=counts, centers=centers,
            valid=valid, labels=labels, label_weights=valid.float(), pos_mask=pos, gt_inds=assign.gt_inds,
            assigned_boxes=assigned, num_pos=num_pos, avg_factor=avg_factor, weight_targets=weight_targets,
            cls_logits=cls_logits, box_logits=box_logits, pred_boxes=pred_boxes, target_boxes=target_boxes,
            scores=scores, gt_boxes=gt_boxes, gt_mask=gt_mask, assign=assign,
            raw_cls_logits=self._flatten_raw(outputs),
        )

    # ------------------------------------------------------------------------------
    # losses

    def gfl_losses(self, t: GFLTargets) -> dict[str, Tensor]:
        """QFL, GIoU and DFL (mmdet ``GFLHead.loss_by_feat``) from :meth:`get_targets`' output."""
        qfl = quality_focal_loss(t.cls_logits, t.labels, t.scores, beta=self.beta)  # [B, A]
        loss_cls = self.loss_cls_weight * ((qfl * t.label_weights).sum() / (t.avg_factor + EPS))

        w = t.weight_targets
        norm = reduce_mean(w.sum()).clamp(min=1)
        giou = giou_loss(t.pred_boxes, t.target_boxes, eps=1e-6)  # [B, A]
        loss_bbox = self.loss_bbox_weight * ((giou * w).sum() / (1 + EPS)) / norm
        dfl_target = bbox2distance(t.centers, t.target_boxes, max_dis=self.reg_max, eps=0.1)  # [B, A, 4]
        dfl = distribution_focal_loss(t.box_logits, dfl_target)  # [B, A, 4]
        loss_dfl = self.loss_dfl_weight * ((dfl * w[..., None]).sum() / (4 + EPS)) / norm
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_dfl": loss_dfl}

    def vlr_weights(self, t: GFLTargets) -> Tensor:
        """VLR weight ``[B, A]``: max IoU over the GTs g with ``0.25·thr_g <= DIoU(anchor, g) < thr_g``
        (all valid anchors of every level, no centre test); 0 outside the region."""
        overlap = "iou" if self.vlr_iou_mode == "diou" else "iof"
        diou = bbox_diou(t.anchors, t.gt_boxes, overlap_mode=overlap)  # [B, A, K]
        thr = t.assign.thresholds[:, None, :]  # [B, 1, K]
        region = (diou >= 0.25 * thr) & (diou < thr) & t.gt_mask[:, None, :] & t.valid[..., None]
        return torch.where(region, t.assign.ious, torch.zeros((), device=diou.device)).amax(-1)

    def distill_losses(self, t: GFLTargets, teacher_outputs: Mapping[str, Sequence[Tensor]],
                       outputs: Optional[Mapping[str, Sequence[Tensor]]] = None) -> dict[str, Tensor]:
        """LD on the main region, LD on the VLR and class KD (DESIGN §5), the cross-head terms, and
        feature imitation (which needs the student ``outputs`` for their ``"imitation_feats"``)."""
        t_cls, t_box, _ = self._flatten(teacher_outputs, "teacher")
        if t_box.shape != t.box_logits.shape:
            raise ValueError(
                f"teacher box logits {tuple(t_box.shape)} do not match the student's {tuple(t.box_logits.shape)}: "
                "teacher and student need the same levels, feature sizes and reg_max"
            )
        B = t.box_logits.shape[0]
        scale = 3.0 / B if self.ld_reduction == "per_image" else 1.0
        losses = {}
        cross = self.crosshead_losses(t, teacher_outputs, t_cls, t_box)
        ld = None
        if self.loss_ld_weight:
            ld = kd_kl_loss(t.box_logits, t_box, self.ld_temperature).sum(-1)  # [B, A], summed over sides
            losses["loss_ld"] = self.loss_ld_weight * scale * (ld * t.weight_targets).sum() / (4 + EPS)
        if self.loss_ld_vlr_weight:
            if ld is None or self.vlr_temperature != self.ld_temperature:
                ld = kd_kl_loss(t.box_logits, t_box, self.vlr_temperature).sum(-1)
            vlr = (ld * self.vlr_weights(t)).sum() / (16 + EPS)
            losses["loss_ld_vlr"] = self.loss_ld_vlr_weight * scale * vlr
        if self.loss_kd_weight:
            # a GFLv2 model's cls_logits are joint-score logits: KD uses its raw class logits (DESIGN §5)
            t_raw = self._flatten_raw(teacher_outputs)
            t_cls = t_raw if t_raw is not None else t_cls
            s_cls = t.raw_cls_logits if t.raw_cls_logits is not None else t.cls_logits
            if t_cls.shape != s_cls.shape:
                raise ValueError(
                    f"teacher class logits {tuple(t_cls.shape)} do not match the student's "
                    f"{tuple(s_cls.shape)}: class KD needs the same number of classes"
                )
            kd = kd_kl_loss(s_cls, t_cls, self.kd_temperature) * t.label_weights  # [B, A]
            pos = t.pos_mask.float()
            # divided by the positive count of each level (over the batch), as in the LD code
            num_levels = len(t.num_level_anchors)
            level_pos = torch.zeros(num_levels, device=pos.device).index_add_(0, t.level_ids, pos.sum(0))
            losses["loss_kd"] = self.loss_kd_weight * (kd * pos / (level_pos + EPS)[t.level_ids]).sum()
        losses.update(cross)
        losses.update(self.imitation_losses(t, outputs, teacher_outputs, t_cls, t_box))
        return losses

    def imitation_region(self, t: GFLTargets, t_cls: Tensor, t_box: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """The ``[B, A]`` bool region of ``imitation_mode`` and, for ``"decouple"``, the background."""
        mode = self.imitation_mode
        if mode == "fitnet":
            return t.valid, None
        if mode in ("inside_gt", "decouple"):
            fg = inside_gt_region(box_centers(t.anchors), t.gt_boxes, t.gt_mask, t.valid)
            return fg, (t.valid & ~fg if mode == "decouple" else None)
        if mode == "finegrained":
            return finegrained_region(t.assign.ious, t.gt_mask, t.valid), None
        # "gibox": scores of both sides, boxes decoded in stride units from the anchor centres
        project = torch.linspace(0, self.reg_max, self.reg_max + 1, device=t_box.device)
        teacher_boxes = distance2bbox(t.centers, t_box.detach().softmax(-1) @ project)
        region = gi_region(t.cls_logits.detach().sigmoid(), t_cls.detach().sigmoid(), t.pred_boxes.detach(),
                           teacher_boxes, t.valid, t.num_level_anchors, self.imitation_gi_topk,
                           self.imitation_gi_iou_thr, self.imitation_gi_per_image)
        return region, None

    def imitation_losses(self, t: GFLTargets, outputs: Optional[Mapping[str, Sequence[Tensor]]],
                         teacher_outputs: Mapping[str, Sequence[Tensor]], t_cls: Tensor,
                         t_box: Tensor) -> dict[str, Tensor]:
        """``loss_im`` (when its weight is non-zero): :func:`locdistill.imitation.imitation_loss` on the
        region of ``imitation_mode``, counting only the levels with a positive in the batch (the LD code)."""
        if not self.loss_im_weight:
            return {}
        s_levels = outputs.get("imitation_feats") if isinstance(outputs, Mapping) else None
        t_levels = teacher_outputs.get("imitation_feats") if isinstance(teacher_outputs, Mapping) else None
        if s_levels is None or t_levels is None:
            raise ValueError("feature imitation is on (loss_im_weight > 0) but the outputs hold no "
                             "'imitation_feats': build the Distiller with imitation=True")
        s_feats, t_feats = flatten_features(s_levels), flatten_features(t_levels)  # [B, A, F]
        if s_feats.shape[:2] != t.valid.shape or s_feats.shape != t_feats.shape:
            raise ValueError(f"imitation features: student {tuple(s_feats.shape)}, teacher {tuple(t_feats.shape)}, "
                             f"expected [B, A, F] with [B, A] = {tuple(t.valid.shape)} and equal widths")
        region, background = self.imitation_region(t, t_cls, t_box)
        num_levels = len(t.num_level_anchors)
        level_pos = torch.zeros(num_levels, device=region.device).index_add_(0, t.level_ids, t.pos_mask.float().sum(0))
        loss = imitation_loss(s_feats, t_feats, region, t.num_level_anchors, background, level_mask=level_pos > 0)
        return {"loss_im": self.loss_im_weight * loss}

    def crosshead_losses(self, t: GFLTargets, teacher_outputs: Mapping[str, Sequence[Tensor]],
                         t_cls: Tensor, t_box: Tensor) -> dict[str, Tensor]:
        """``loss_cross_ld``, ``loss_cross_kd``, ``loss_cross_box`` (those with a non-zero weight)."""
        terms = [k for k, w in self.loss_crosshead_weights.items() if w]
        if not terms:
            return {}
        if "cross_cls_logits" not in teacher_outputs or "cross_box_logits" not in teacher_outputs:
            raise ValueError("cross-head losses are on but the teacher outputs hold no 'cross_cls_logits' / "
                             "'cross_box_logits': build the Distiller with crosshead_layer")
        x_cls, x_box, _ = self._flatten({"cls_logits": teacher_outputs["cross_cls_logits"],
                                         "box_logits": teacher_outputs["cross_box_logits"]}, "cross-head")
        if x_cls.shape != t_cls.shape or x_box.shape != t_box.shape:
            raise ValueError(f"cross-head outputs {tuple(x_cls.shape)} / {tuple(x_box.shape)} do not match the "
                             f"teacher's {tuple(t_cls.shape)} / {tuple(t_box.shape)}")
        vals = crosshead_terms(x_cls, x_box, t_cls, t_box, t.centers, t.valid, t.avg_factor,
                               self.crosshead_ld_temperature, self.crosshead_kd_beta, terms)
        return {f"loss_cross_{k}": self.loss_crosshead_weights[k] * vals[k] for k in terms}

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
            t = self.get_targets(outputs, targets, image_sizes)
            losses = self.gfl_losses(t)
            if teacher_outputs is not None:
                losses.update(self.distill_losses(t, teacher_outputs, outputs))
        return losses
