"""The distillation terms on the student's own predictions (DESIGN §5): LD, VLR-LD and class KD.

Pure functions of the student's and the teacher's
:class:`~locdistill.models.dense.DenseOutputs` and the student's
:class:`~locdistill.models.dense.Assignment` (family-neutral: nothing here imports a detector
family). Each returns a weighted float32 scalar; the weight is an argument so that the
arithmetic (and hence every bit of the loss) is the one of the LD code's formula.

Shapes: ``B`` images, ``A`` anchors, ``C`` classes, ``n = reg_max``, ``L`` levels.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..losses import EPS, kd_kl_loss
from ..models.dense import Assignment, DenseOutputs

__all__ = ["REDUCTIONS", "box_kl", "check_pair", "kd_loss", "ld_loss", "reduction_scale", "vlr_ld_loss"]

#: ``distill.reduction``: "sum" (the LD code) or "per_image" (batch-size invariant)
REDUCTIONS = ("sum", "per_image")


def check_pair(student: DenseOutputs, teacher: DenseOutputs) -> None:
    """Raise ValueError unless the teacher's box logits can supervise the student's (same ``[B, A, 4, n+1]``)."""
    if teacher.box_logits.shape != student.box_logits.shape:
        raise ValueError(
            f"teacher box logits {tuple(teacher.box_logits.shape)} do not match the student's "
            f"{tuple(student.box_logits.shape)}: teacher and student need the same levels, feature sizes and reg_max"
        )


def reduction_scale(reduction: str, num_images: int) -> float:
    """The LD / VLR factor of ``reduction``: 1 for ``"sum"``, ``3 / B`` for ``"per_image"`` (equal at 3 images)."""
    return 3.0 / num_images if reduction == "per_image" else 1.0


def box_kl(student: DenseOutputs, teacher: DenseOutputs, temperature: float) -> Tensor:
    """``[B, A]``: per anchor, ``Σ_sides T² · mean_bins KL(softmax(t/T) ‖ softmax(s/T))``."""
    return kd_kl_loss(student.box_logits, teacher.box_logits, temperature).sum(-1)


def ld_loss(kl: Tensor, region_weights: Tensor, weight: float) -> Tensor:
    """Main-region LD: ``weight · Σ_a w_a · kl_a / 4`` with ``w_a`` the main-region weights (the positives'
    ``pos_weight``, :func:`~.regions.main_region_weights`).

    Args:
        kl: ``[B, A]`` from :func:`box_kl` at the LD temperature.
        region_weights: ``[B, A]``.
        weight: ``ld_weight`` times the :func:`reduction_scale`.
    """
    return weight * (kl * region_weights).sum() / (4 + EPS)


def vlr_ld_loss(kl: Tensor, region_weights: Tensor, weight: float) -> Tensor:
    """VLR LD: ``weight · Σ_a v_a · kl_a / 16`` with ``v_a`` the VLR weights (:func:`~.regions.vlr_weights`).

    Args:
        kl: ``[B, A]`` from :func:`box_kl` at the VLR temperature.
        region_weights: ``[B, A]``.
        weight: ``vlr_weight`` times the :func:`reduction_scale`.
    """
    return weight * ((kl * region_weights).sum() / (16 + EPS))


def kd_loss(student: DenseOutputs, teacher: DenseOutputs, assignment: Assignment, temperature: float,
            weight: float) -> Tensor:
    """Class KD on the positives: ``weight · Σ_{a pos} KL_T(classes)_a / P_level(a)``.

    ``KL_T`` is :func:`~locdistill.losses.kd_kl_loss` (mean over classes, ``× T²``) of the
    :attr:`~locdistill.models.dense.DenseOutputs.kd_cls_logits` (a GFLv2 model's raw class logits),
    0 outside the image; ``P_level`` the positive count of the anchor's level over the batch (the LD code).
    """
    s_cls, t_cls = student.kd_cls_logits, teacher.kd_cls_logits
    if t_cls.shape != s_cls.shape:
        raise ValueError(f"teacher class logits {tuple(t_cls.shape)} do not match the student's "
                         f"{tuple(s_cls.shape)}: class KD needs the same number of classes")
    kd = kd_kl_loss(s_cls, t_cls, temperature) * assignment.valid.float()  # [B, A]
    pos = assignment.pos.float()
    level_ids = student.level_ids
    level_pos = torch.zeros(student.num_levels, device=pos.device).index_add_(0, level_ids, pos.sum(0))
    return weight * (kd * pos / (level_pos + EPS)[level_ids]).sum()
