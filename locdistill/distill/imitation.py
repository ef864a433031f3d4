"""Feature imitation on FPN features (the LD code's ``IMLoss``): region masks and the masked MSE.

Pure tensor code over the dense anchor axis (:mod:`locdistill.models.dense`): per-level
FPN maps are flattened into ``[B, A, F]`` in the same order as the head outputs (levels
concatenated, row-major inside a level), regions are boolean masks ``[B, A]``, and nothing here
synchronises with the host or loops over boxes. The functions take plain tensors (features,
scores, boxes, the assignment's IoUs and GT lists), so they do not depend on a detector family.

Shapes: ``B`` images, ``A`` anchors (one per location, levels concatenated), ``F`` feature
channels, ``C`` classes, ``K`` GT slots, ``L`` levels with ``num_level_anchors[l]`` anchors each.

**The loss** (LD code: ``F.mse_loss`` with mean reduction, applied per pyramid level to the
selected locations of the whole batch, summed over the levels). With ``R_l`` the selected
locations of level ``l`` over all images:

    ``loss_im = w · Σ_l  Σ_{(b,a) ∈ R_l} ‖s_ba − t_ba‖² / (|R_l| · F)``

a level with no selected location adds 0. ``s`` are the student's features after the
:class:`ImitationAdapter` (identity when the widths are equal), ``t`` the
frozen teacher's (detached). It is a mean, so it does not grow with the images per GPU.

**Regions** (``mode``):

- ``"fitnet"``: every location inside its image (FitNets; the "FitNets" row of the LD README);
- ``"inside_gt"``: locations whose anchor centre lies strictly inside a GT box (what the LD code's
  ``imitation_method='fitnet'`` selects; the README's "Inside GT Box" row);
- ``"finegrained"``: fine-grained imitation (Wang et al., CVPR 2019): anchors whose IoU with some
  GT ``g`` exceeds ``0.5 · max_a IoU(a, g)``, the maximum over all anchors of the image (all levels);
- ``"decouple"``: DeFeat-style, foreground and background imitated apart:
  ``Σ_l [|FG_l| > 0] · (MSE_l(FG) + 2 · MSE_l(BG))``, foreground = ``"inside_gt"``, background =
  the other locations inside the image;
- ``"gibox"``: general-instance (GI) locations chosen from the scores (General Instance
  Distillation, Dai et al., CVPR 2021): per location ``gi = max_c |σ(t_c) − σ(s_c)|`` over the
  class scores, with the box decoded from the teacher's distribution if the teacher's score is
  the larger one at that class, else from the student's; per level, greedy NMS (IoU > 0.3
  suppresses) in decreasing ``gi`` keeps the first 10. The LD code runs that NMS over the level's
  locations of the whole batch at once (``per_image=False``: 10 per level per batch, boxes of
  different images may suppress each other); ``per_image=True`` keeps 10 per level per image.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..boxes import bbox_overlaps, distance2bbox
from ..errors import ConfigError
from ..models.dense import Assignment, DenseOutputs, integral

__all__ = [
    "IMITATION_MODES",
    "ImitationAdapter",
    "neck_channels",
    "imitation_region",
    "imitation_term",
    "flatten_features",
    "level_ids_of",
    "inside_gt_region",
    "finegrained_region",
    "gi_scores_and_boxes",
    "greedy_nms_topk",
    "gi_region",
    "masked_mse_per_level",
    "imitation_loss",
]

#: the region choices of ``distill.imitation_mode`` ("" turns imitation off)
IMITATION_MODES = ("fitnet", "inside_gt", "finegrained", "decouple", "gibox")


def flatten_features(feats: Sequence[Tensor]) -> Tensor:
    """Per-level maps ``[B, F, H_l, W_l]`` → ``[B, A, F]`` float32 (``A = Σ_l H_l·W_l``, the head's order)."""
    return torch.cat([f.float().flatten(2).transpose(1, 2) for f in feats], 1)


def level_ids_of(num_level_anchors: Sequence[int], device: Optional[torch.device] = None) -> Tensor:
    """``[A]`` int64: the level index of every anchor (levels concatenated)."""
    return torch.cat([torch.full((int(n),), i, dtype=torch.long, device=device)
                      for i, n in enumerate(num_level_anchors)])


def inside_gt_region(points: Tensor, gt_boxes: Tensor, gt_mask: Tensor, valid: Tensor) -> Tensor:
    """Locations whose point lies strictly inside a real GT box.

    Args:
        points: ``[A, 2]`` anchor centres ``(x, y)`` in pixels.
        gt_boxes: ``[B, K, 4]`` xyxy pixels; gt_mask: ``[B, K]`` bool real slots.
        valid: ``[B, A]`` bool, locations inside their image.
    Returns:
        ``[B, A]`` bool.
    """
    x, y = points[None, :, None, 0], points[None, :, None, 1]  # [1, A, 1]
    g = gt_boxes[:, None]  # [B, 1, K, 4]
    inside = (x > g[..., 0]) & (x < g[..., 2]) & (y > g[..., 1]) & (y < g[..., 3])  # [B, A, K]
    return (inside & gt_mask[:, None, :]).any(-1) & valid


def finegrained_region(ious: Tensor, gt_mask: Tensor, valid: Tensor, ratio: float = 0.5) -> Tensor:
    """Fine-grained imitation mask: ``IoU(a, g) > ratio · max_{a' valid} IoU(a', g)`` for some real GT ``g``.

    Args:
        ious: ``[B, A, K]`` anchor/GT IoU (anchor boxes, all levels).
        gt_mask: ``[B, K]`` bool; valid: ``[B, A]`` bool.
        ratio: the threshold factor ψ (0.5 in the LD code and the fine-grained paper).
    Returns:
        ``[B, A]`` bool.
    """
    ious = ious.masked_fill(~valid[..., None], 0.0)
    best = ious.amax(1, keepdim=True)  # [B, 1, K] over the anchors of the image
    return ((ious > ratio * best) & gt_mask[:, None, :]).any(-1) & valid


def gi_scores_and_boxes(student_scores: Tensor, teacher_scores: Tensor, student_boxes: Tensor,
                        teacher_boxes: Tensor) -> tuple[Tensor, Tensor]:
    """GI score and GI box of every location.

    ``gi = max_c |t_c − s_c|``; at that class ``c*`` (the first one on ties) the box is the
    teacher's if ``t_c* ≥ s_c*``, else the student's.

    Args:
        student_scores, teacher_scores: ``[B, A, C]`` class probabilities.
        student_boxes, teacher_boxes: ``[B, A, 4]`` decoded boxes (any unit shared inside a level).
    Returns:
        ``gi [B, A]`` and ``boxes [B, A, 4]``, detached.
    """
    diff = teacher_scores.detach().float() - student_scores.detach().float()  # [B, A, C]
    index = diff.abs().argmax(-1, keepdim=True)  # [B, A, 1]
    signed = diff.gather(-1, index).squeeze(-1)  # [B, A]
    boxes = torch.where((signed >= 0)[..., None], teacher_boxes.detach(), student_boxes.detach()).float()
    return signed.abs(), boxes


def greedy_nms_topk(scores: Tensor, boxes: Tensor, top_k: int, iou_thr: float) -> Tensor:
    """The first ``top_k`` boxes greedy NMS keeps, in each group; dense, no host synchronisation.

    Each of ``top_k`` rounds takes the highest remaining score of every group and removes it and
    every box whose IoU with it exceeds ``iou_thr`` (torchvision's rule). Locations with score
    ``-inf`` are never kept. Equal to ``torchvision.ops.nms(boxes, scores, iou_thr)[:top_k]`` per
    group (up to the order of exactly equal scores).

    Args:
        scores: ``[G, N]``; boxes: ``[G, N, 4]`` xyxy.
    Returns:
        ``[G, N]`` bool, at most ``top_k`` per group.
    """
    G, N = scores.shape
    keep = torch.zeros(G, N, dtype=torch.bool, device=scores.device)
    remaining = scores.clone()
    arange = torch.arange(N, device=scores.device)
    neg_inf = torch.tensor(float("-inf"), device=scores.device, dtype=scores.dtype)
    for _ in range(min(int(top_k), N)):  # a fixed number of rounds, not a loop over boxes
        best = remaining.argmax(-1, keepdim=True)  # [G, 1]
        alive = remaining.gather(-1, best) > neg_inf  # [G, 1] a group may have run out
        picked = arange[None, :] == best  # [G, N]
        keep |= picked & alive
        best_box = boxes.gather(1, best[..., None].expand(G, 1, 4))  # [G, 1, 4]
        iou = bbox_overlaps(best_box, boxes).squeeze(1)  # [G, N]
        remaining = torch.where(picked | (iou > iou_thr), neg_inf, remaining)
    return keep


def gi_region(student_scores: Tensor, teacher_scores: Tensor, student_boxes: Tensor, teacher_boxes: Tensor,
              valid: Tensor, num_level_anchors: Sequence[int], top_k: int = 10, iou_thr: float = 0.3,
              per_image: bool = False) -> Tensor:
    """GI locations: per level, the first ``top_k`` GI boxes greedy NMS keeps (module docstring).

    Args:
        student_scores, teacher_scores: ``[B, A, C]`` class probabilities.
        student_boxes, teacher_boxes: ``[B, A, 4]`` boxes decoded in the level's stride units
            (the LD code's units; any unit shared by a level works).
        valid: ``[B, A]`` bool; locations outside their image are never chosen.
        num_level_anchors: anchors per level (Python ints).
        per_image: NMS per image and level (``top_k`` per image) instead of per level over the
            whole batch (the LD code).
    Returns:
        ``[B, A]`` bool.
    """
    gi, boxes = gi_scores_and_boxes(student_scores, teacher_scores, student_boxes, teacher_boxes)
    gi = gi.masked_fill(~valid, float("-inf"))
    B = gi.shape[0]
    # levels differ in size: one padded [*, L, n_max] layout, so the NMS rounds run for all levels at once
    counts = [int(n) for n in num_level_anchors]
    L, n_max = len(counts), max(counts)
    device = gi.device
    slot = torch.cat([torch.arange(n, device=device) + i * n_max for i, n in enumerate(counts)])  # [A]
    pad_scores = gi.new_full((B, L * n_max), float("-inf")).index_copy_(1, slot, gi)
    pad_boxes = boxes.new_zeros(B, L * n_max, 4).index_copy_(1, slot, boxes)
    pad_scores, pad_boxes = pad_scores.view(B, L, n_max), pad_boxes.view(B, L, n_max, 4)
    if per_image:
        keep = greedy_nms_topk(pad_scores.reshape(B * L, n_max), pad_boxes.reshape(B * L, n_max, 4), top_k, iou_thr)
        keep = keep.view(B, L * n_max)
    else:  # one group per level holding the locations of every image
        s = pad_scores.transpose(0, 1).reshape(L, B * n_max)
        b = pad_boxes.transpose(0, 1).reshape(L, B * n_max, 4)
        keep = greedy_nms_topk(s, b, top_k, iou_thr).view(L, B, n_max).transpose(0, 1).reshape(B, L * n_max)
    return keep.index_select(1, slot)  # [B, A]


def masked_mse_per_level(student_feats: Tensor, teacher_feats: Tensor, region: Tensor,
                         num_level_anchors: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Per level, the mean squared difference over the selected locations and all channels.

    ``mse_l = Σ_{(b,a) ∈ R_l} ‖s_ba − t_ba‖² / (|R_l| · F)`` (0 when ``R_l`` is empty).

    Args:
        student_feats: ``[B, A, F]`` (graph); teacher_feats: ``[B, A, F]`` (detached here).
        region: ``[B, A]`` bool.
        num_level_anchors: anchors per level.
    Returns:
        ``mse [L]`` float32 and ``count [L]`` (selected locations per level, float32).
    """
    if student_feats.shape != teacher_feats.shape:
        raise ValueError(f"student features {tuple(student_feats.shape)} and teacher features "
                         f"{tuple(teacher_feats.shape)} differ: imitation needs equal levels, sizes and widths "
                         "(an ImitationAdapter maps the student's width to the teacher's)")
    F_ = student_feats.shape[-1]
    sq = (student_feats.float() - teacher_feats.detach().float()).pow(2).sum(-1)  # [B, A]
    sel = region.float()
    ids = level_ids_of(num_level_anchors, sq.device)
    L = len(num_level_anchors)
    num = sq.new_zeros(L).index_add(0, ids, (sq * sel).sum(0))
    count = sq.new_zeros(L).index_add(0, ids, sel.sum(0))
    return num / (count * F_).clamp(min=1), count


def imitation_loss(student_feats: Tensor, teacher_feats: Tensor, region: Tensor,
                   num_level_anchors: Sequence[int], background: Optional[Tensor] = None,
                   background_weight: float = 2.0, level_mask: Optional[Tensor] = None) -> Tensor:
    """Unweighted imitation loss: ``Σ_l mse_l(region)`` (module docstring).

    With ``background`` (the ``"decouple"`` mode) each level adds
    ``[|region_l| > 0] · (mse_l(region) + background_weight · mse_l(background))``.

    Args:
        student_feats, teacher_feats: ``[B, A, F]``; the teacher side is detached.
        region: ``[B, A]`` bool (the foreground for ``"decouple"``).
        num_level_anchors: anchors per level.
        background: ``[B, A]`` bool or None.
        level_mask: ``[L]`` bool or float, levels to count (the LD code skips a level without
            positives); None = all.
    Returns:
        scalar float32.
    """
    per_level, count = masked_mse_per_level(student_feats, teacher_feats, region, num_level_anchors)
    if background is not None:
        bg, _ = masked_mse_per_level(student_feats, teacher_feats, background, num_level_anchors)
        per_level = torch.where(count > 0, per_level + background_weight * bg, torch.zeros_like(per_level))
    if level_mask is not None:
        per_level = per_level * level_mask.to(per_level.dtype)
    return per_level.sum()


# ----------------------------------------------------------------------------- the student side


class ImitationAdapter(nn.Module):
    """Trainable 1×1 conv (student FPN width → teacher FPN width), shared by the levels: ``a(x) = W x + b``.

    The student side of feature imitation when the widths differ (a FitNets-style regressor; the LD
    code needs none, its FPNs are all 256 wide). Training only, like :class:`CrossHeadAdapter`: it
    lives on the :class:`Distiller` (``imitation_adapter``), is trained with the student, saved in
    training checkpoints under ``"distill_state"`` and never in the student's weights.
    ``forward(feats)`` maps one ``[B, F_s, H, W]`` map per level to ``[B, F_t, H, W]``.
    """

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(student_channels, teacher_channels, 1)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return [self.conv(x) for x in feats]


def neck_channels(model: nn.Module, who: str) -> int:
    """Width of a detector's FPN outputs (``model.neck.out_channels``)."""
    width = getattr(getattr(model, "neck", None), "out_channels", None)
    if not isinstance(width, int):
        raise ConfigError(f"feature imitation needs an FPN neck with `out_channels`; the {who} "
                          f"({type(model).__name__}) has none; set distill.imitation_mode=''")
    return width


# ----------------------------------------------------------------------------- on dense outputs


def imitation_region(mode: str, student: DenseOutputs, teacher: DenseOutputs, assignment: Assignment,
                     gi_topk: int = 10, gi_iou_thr: float = 0.3,
                     gi_per_image: bool = False) -> tuple[Tensor, Optional[Tensor]]:
    """The ``[B, A]`` bool region of ``mode`` and, for ``"decouple"``, the background (else None).

    ``"gibox"`` decodes both sides' boxes in stride units from the anchor centres and compares
    both sides' class scores (all detached); the others read the assignment only.
    """
    valid = assignment.valid
    if mode == "fitnet":
        return valid, None
    if mode in ("inside_gt", "decouple"):
        fg = inside_gt_region(student.points, assignment.gt_boxes, assignment.gt_mask, valid)
        return fg, (valid & ~fg if mode == "decouple" else None)
    if mode == "finegrained":
        return finegrained_region(assignment.anchor_ious, assignment.gt_mask, valid), None
    if mode != "gibox":
        raise ValueError(f"imitation mode must be one of {IMITATION_MODES}, got {mode!r}")
    student_boxes = distance2bbox(student.centers, integral(student.box_logits.detach()))
    teacher_boxes = distance2bbox(teacher.centers, integral(teacher.box_logits.detach()))
    region = gi_region(student.cls_logits.detach().sigmoid(), teacher.cls_logits.detach().sigmoid(), student_boxes,
                       teacher_boxes, valid, student.num_level_anchors, gi_topk, gi_iou_thr, gi_per_image)
    return region, None


def imitation_term(student_levels: Sequence[Tensor], teacher_levels: Sequence[Tensor], region: Tensor,
                   background: Optional[Tensor], student: DenseOutputs, assignment: Assignment,
                   weight: float) -> Tensor:
    """``loss_im = weight · imitation_loss(...)`` on ``region``, counting only the levels with a
    positive in the batch (the LD code).

    Args:
        student_levels, teacher_levels: the FPN maps, one ``[B, F, H, W]`` per level (``"imitation_feats"``).
        region, background: from :func:`imitation_region`.
    """
    s_feats, t_feats = flatten_features(student_levels), flatten_features(teacher_levels)  # [B, A, F]
    if s_feats.shape[:2] != assignment.valid.shape or s_feats.shape != t_feats.shape:
        raise ValueError(f"imitation features: student {tuple(s_feats.shape)}, teacher {tuple(t_feats.shape)}, "
                         f"expected [B, A, F] with [B, A] = {tuple(assignment.valid.shape)} and equal widths")
    counts = student.num_level_anchors
    level_pos = torch.zeros(len(counts), device=region.device).index_add_(0, student.level_ids,
                                                                          assignment.pos.float().sum(0))
    return weight * imitation_loss(s_feats, t_feats, region, counts, background, level_mask=level_pos > 0)
