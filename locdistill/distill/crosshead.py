"""Cross-head distillation: the adapter, the feature standardisation and the cross-head terms.

**Cross-head distillation** (CrossKD: "CrossKD: Cross-Head Knowledge Distillation for Object
Detection", Wang et al., CVPR 2024, arXiv 2306.11369) is an option of the Distiller
(``crosshead_layer``). The student's head-tower features after tower conv ``k`` (after its
GroupNorm, before its ReLU), per level and for both towers (cls and reg), are

1. mapped to the teacher's tower width by :class:`CrossHeadAdapter` (1×1 convs; only when the
   widths differ),
2. standardised to the teacher's per-channel statistics (:func:`match_channel_stats`) taken from the
   teacher's features at the same place (after its tower conv ``k``),
3. run through the frozen teacher's ReLU, tower convs ``k+1 ..`` end, ``gfl_cls`` / ``gfl_reg`` and the
   level's ``Scale`` (:meth:`~locdistill.models.gfl_head.GFLHead.head_from`).

The resulting *cross-head predictions* go into the teacher outputs as ``"cross_cls_logits"``
(``[B,C,H,W]`` per level) and ``"cross_box_logits"`` (``[B,4(n+1),H,W]`` per level); the criterion
compares them with the teacher's own predictions (:func:`crosshead_terms`).
The student's own predictions then only receive the ground-truth losses (plus any main LD / VLR /
KD configured): the distillation signal reaches the student through the teacher's frozen layers,
so the student's head is not pulled towards the GT and the teacher at once (the paper's argument).

Facts used from the paper and its GFL R-101 → R-50 config (``crosskd_r50_gflv1_r101-2x-ms_fpn_1x_coco``;
published COCO val 43.7 AP after 1x, vs 40.2 for the plain R-50):

- the student's features leave its head after the 3rd of GFL's 4 tower convs
  (``reused_teacher_head_idx=3``), after that conv's norm and before its activation; the teacher
  reuses its 4th conv and its predictors. Here: ``crosshead_layer = -2`` (0-based conv 2 of 4);
- standardisation: per channel, mean and standard deviation over batch and space, ``+1e-6`` on the
  student's std; the teacher's statistics are constants, the student's are differentiated through
  (as in the reference). The population std is used on both sides: the unbiased one differs by the
  same factor on both and cancels in ``std_t / std_s``, and a 1-element map stays finite;
- losses: cross-head LD = KL of the box distributions at T=1 summed over the bins, weight 3.0;
  class KD = quality-focal KD (BCE against σ(teacher) times ``|σ(s) − σ(t)|^β``), β=1, weight 1.0,
  over all valid anchors divided by GFL's positive count; GIoU between the decoded cross-head box
  and the teacher's decoded box, weight 2.0. LD and GIoU are weighted per anchor by the teacher's
  highest class score, 0 outside the image, and divided by the sum of those weights.

Choices of locdistill (not in the paper): a tower-width adapter (the paper's pairs share the head
width); ``crosshead_layer`` resolved on each side (a negative index counts from the end of each
tower, so teacher and student may have different depths); a GFLv2 teacher's cross-head class
logits are its joint-score logits (:meth:`~locdistill.models.gfl_head.GFLv2Head.head_from`), the
same score its ``"cls_logits"`` holds.

The cross-head terms are functions of the cross-head predictions and the teacher's as
:class:`~locdistill.models.dense.DenseOutputs` and the student's
:class:`~locdistill.models.dense.Assignment`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..boxes import distance2bbox
from ..errors import ConfigError
from ..losses import EPS, giou_loss, kd_kl_loss, kd_quality_focal_loss
from ..models.dense import Assignment, DenseOutputs, integral, reduce_mean
from .regions import teacher_score_weights

__all__ = ["CrossHeadAdapter", "crosshead_layers", "crosshead_terms", "match_channel_stats"]

CROSSHEAD_TERMS = ("ld", "kd", "box")


def match_channel_stats(student_feat: Tensor, teacher_feat: Tensor, eps: float = 1e-6) -> Tensor:
    """Standardise ``student_feat`` to the per-channel statistics of ``teacher_feat``.

    ``(s − mean_s) / (std_s + eps) · std_t + mean_t`` with the mean and (population) standard
    deviation of each channel over batch and space. The teacher's statistics are detached; the
    student's are part of the graph. Computed in float32.

    Args:
        student_feat: ``[B, F, H, W]``.
        teacher_feat: ``[B, F, H', W']`` (same channels; usually the same size).
    Returns:
        ``[B, F, H, W]`` float32.
    """
    if student_feat.shape[1] != teacher_feat.shape[1]:
        raise ValueError(f"student features have {student_feat.shape[1]} channels, the teacher's "
                         f"{teacher_feat.shape[1]}: map them to the teacher's width first (CrossHeadAdapter)")
    s = student_feat.float()
    t = teacher_feat.detach().float()
    s_std, s_mean = torch.std_mean(s, dim=(0, 2, 3), keepdim=True, correction=0)
    t_std, t_mean = torch.std_mean(t, dim=(0, 2, 3), keepdim=True, correction=0)
    return (s - s_mean) / (s_std + eps) * t_std + t_mean


class CrossHeadAdapter(nn.Module):
    """Trainable 1×1 convs (student tower width → teacher tower width), one per tower, shared by the levels.

    Part of the student side of cross-head distillation, **training only**: it lives on the
    :class:`Distiller` (``crosshead_adapter``), not in the student detector, so the student's
    state dict and every checkpoint's ``"model"`` stay exactly the plain student's and load into
    it with ``strict=True``. It is in the optimizer (a parameter of the Distiller), wrapped in DDP
    next to the student, and saved in training checkpoints under ``"distill_state"`` so that
    ``--resume`` continues with it; ``locdistill convert`` and evaluation ignore it.

    ``forward(cls_feats, reg_feats)`` takes and returns one ``[B, F, H, W]`` map per level per
    tower (one call per step, as DDP needs).
    """

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.cls = nn.Conv2d(student_channels, teacher_channels, 1)
        self.reg = nn.Conv2d(student_channels, teacher_channels, 1)

    def forward(self, cls_feats: list[Tensor], reg_feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        return [self.cls(x) for x in cls_feats], [self.reg(x) for x in reg_feats]


def _head(model: nn.Module, who: str) -> nn.Module:
    head = getattr(model, "bbox_head", None)
    if head is None or not hasattr(head, "head_from"):
        raise ConfigError(f"cross-head distillation needs GFL-style heads with tower convs; the {who} "
                          f"({type(model).__name__}) has none; set the distill.crosshead_*_weight options to 0")
    return head


def crosshead_layers(student: nn.Module, teacher: nn.Module, layer: int) -> tuple[int, int]:
    """Resolve ``distill.crosshead_layer`` into (student conv index, teacher conv index), both ``>= 0``.

    A negative index counts from the end of each side's tower (``-1``: the last conv), so
    towers of different depths are allowed; a non-negative one is the same conv on both sides.
    """
    s_n, t_n = _head(student, "student").stacked_convs, _head(teacher, "teacher").stacked_convs
    for who, n in (("student", s_n), ("teacher", t_n)):
        if not -n <= layer < n:
            raise ConfigError(
                f"distill.crosshead_layer={layer} is out of range for the {who}'s head towers of {n} conv(s) "
                f"(student {s_n}, teacher {t_n}); use an index in -{min(s_n, t_n)}..{min(s_n, t_n) - 1}, "
                "e.g. -1 (after the last conv: the teacher reuses only its predictors)")
    return layer % s_n, layer % t_n


def crosshead_terms(
    cross: DenseOutputs,
    teacher: DenseOutputs,
    assignment: Assignment,
    temperature: float,
    kd_beta: float,
    terms: Sequence[str] = CROSSHEAD_TERMS,
) -> dict[str, Tensor]:
    """Unweighted cross-head distillation terms (CrossKD's GFL losses).

    Dense over every anchor inside its image (``assignment.valid``), not only the positives. With
    ``w_a = max_c σ(teacher_cls)`` on valid anchors (0 elsewhere; :func:`~.regions.teacher_score_weights`)
    and ``W = Σ_a w_a`` (mean over DDP ranks):

    - ``"ld"``: ``Σ_a w_a Σ_sides T² · Σ_bins KL(softmax(t/T) ‖ softmax(x/T)) / 4 / W``;
    - ``"kd"``: ``Σ_valid Σ_c kd_quality_focal_loss(x, t, kd_beta) / N`` (``N = assignment.avg_factor``);
    - ``"box"``: ``Σ_a w_a (1 − GIoU(decode(x), decode(t))) / W``, boxes decoded from the anchor
      centres in stride units.

    Args:
        cross: the cross-head predictions (``cls_logits [B, A, C]``, ``box_logits [B, A, 4, n+1]``).
        teacher: the teacher's own predictions, same shapes; detached here.
        assignment: the student's assignment (``valid``, ``avg_factor``).
        temperature: the LD temperature (CrossKD: 1); kd_beta: the KD exponent (CrossKD: 1).
        terms: which of ``"ld"``, ``"kd"``, ``"box"`` to compute.

    Returns:
        ``{term: scalar}`` float32 for each requested term.
    """
    teacher_cls, teacher_box = teacher.cls_logits.detach().float(), teacher.box_logits.detach().float()
    cross_cls, cross_box = cross.cls_logits.float(), cross.box_logits.float()
    valid = assignment.valid
    zero = torch.zeros((), device=cross_cls.device)
    out = {}
    if "kd" in terms:
        kd = kd_quality_focal_loss(cross_cls, teacher_cls, kd_beta)  # [B, A]
        out["kd"] = torch.where(valid, kd, zero).sum() / (assignment.avg_factor + EPS)
    if "ld" in terms or "box" in terms:
        w = teacher_score_weights(teacher_cls, valid)  # [B, A]
        norm = reduce_mean(w.sum()) + EPS
        if "ld" in terms:
            ld = kd_kl_loss(cross_box, teacher_box, temperature, class_reduction="sum").sum(-1)  # [B, A]
            out["ld"] = (ld * w).sum() / (4 + EPS) / norm
        if "box" in terms:
            cross_boxes = distance2bbox(cross.centers, integral(cross_box))  # [B, A, 4] stride units
            teacher_boxes = distance2bbox(teacher.centers, integral(teacher_box))
            giou = giou_loss(cross_boxes, teacher_boxes, eps=1e-6)  # [B, A]
            out["box"] = (giou * w).sum() / (1 + EPS) / norm
    return out
