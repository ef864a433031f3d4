"""Pure loss functions (elementwise; reduce with :func:`weighted_sum`).

Numerics follow mmdetection 3.3 (``quality_focal_loss``, ``distribution_focal_loss``,
``giou_loss``, ``knowledge_distillation_kl_div_loss``). Every function casts its
inputs to float32 and accepts leading batch dimensions (``[..., C]`` instead of
``[N, C]``). No host synchronisation: positives are selected by masks, not indices.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import bbox_overlaps

__all__ = [
    "EPS",
    "weighted_sum",
    "quality_focal_loss",
    "distribution_focal_loss",
    "giou_loss",
    "ciou",
    "ciou_loss",
    "kd_kl_loss",
    "ld_kl_loss",
    "kd_quality_focal_loss",
]

#: float32 machine epsilon, added to every average factor (mmdet ``weight_reduce_loss``).
EPS = float(torch.finfo(torch.float32).eps)


def weighted_sum(
    loss: Tensor, weight: Optional[Tensor] = None, avg_factor: Union[float, Tensor, None] = None
) -> Tensor:
    """``sum(loss * weight) / (avg_factor + EPS)`` → scalar.

    ``weight`` broadcasts against ``loss``; without ``avg_factor`` it is a plain sum.
    """
    if weight is not None:
        loss = loss * weight
    total = loss.sum()
    if avg_factor is not None:
        total = total / (avg_factor + EPS)
    return total


def quality_focal_loss(
    logits: Tensor, labels: Tensor, scores: Tensor, beta: float = 2.0, activated: bool = False
) -> Tensor:
    """Quality Focal Loss (GFL), summed over classes.

    Every (sample, class) pair gets ``BCE(x, 0) * sigma^beta``; at the sample's own class
    (``0 <= label < C``) it is ``BCE(x, score) * |score - sigma|^beta`` instead. A label
    outside ``[0, C)`` (``C`` is background) marks a negative.

    Args:
        logits: ``[..., C]`` class logits (probabilities if ``activated``, as in GFLv2).
        labels: ``[...]`` int64, ``C`` = background.
        scores: ``[...]`` IoU-quality targets of the positives (ignored elsewhere).
        beta: focusing exponent.
        activated: ``logits`` already are probabilities (BCE on probabilities).

    Returns:
        ``[...]`` loss per sample.
    """
    logits = logits.float()
    num_classes = logits.shape[-1]
    classes = torch.arange(num_classes, device=logits.device)
    is_target = labels.unsqueeze(-1) == classes  # [..., C]
    score = scores.float().unsqueeze(-1)
    target = torch.where(is_target, score, torch.zeros((), device=logits.device))
    prob = logits if activated else logits.sigmoid()
    modulator = torch.where(is_target, (score - prob).abs().pow(beta), prob.pow(beta))
    if activated:
        bce = F.binary_cross_entropy(logits, target, reduction="none")
    else:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * modulator).sum(dim=-1)


def distribution_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Distribution Focal Loss: cross-entropy to the two bins around a continuous target.

    ``CE(left) * (right - y) + CE(right) * (y - left)`` with ``left = floor(y)``,
    ``right = left + 1``.

    Args:
        logits: ``[..., n+1]`` bin logits.
        target: ``[...]`` distances in bin units, in ``[0, n]`` (GFL clamps to ``n - 0.1``).

    Returns:
        ``[...]`` loss per distance.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    target = target.float()
    left = target.long()
    right = left + 1
    w_left = right.float() - target
    w_right = target - left.float()
    top = logits.shape[-1] - 1  # y == n exactly: right bin does not exist, its weight is 0
    logp_left = logp.gather(-1, left.clamp(0, top).unsqueeze(-1)).squeeze(-1)
    logp_right = logp.gather(-1, right.clamp(0, top).unsqueeze(-1)).squeeze(-1)
    return -logp_left * w_left - logp_right * w_right


def giou_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """``1 - GIoU(pred, target)`` of aligned ``xyxy`` boxes ``[..., N, 4]`` → ``[..., N]``."""
    return 1 - bbox_overlaps(pred.float(), target.float(), mode="giou", is_aligned=True, eps=eps)


def ciou(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU of aligned ``xyxy`` boxes ``[..., 4]`` → ``[...]`` (float32).

    ``CIoU = IoU - ρ²/c² - α·v`` with ``ρ`` the distance of the centres, ``c`` the diagonal of the
    enclosing box, ``v = 4/π² (atan(w_t/h_t) - atan(w_p/h_p))²`` and ``α = v / (v - IoU + 1 + eps)``
    (``α`` is not differentiated through, as in the CIoU paper). ``eps`` is added to the heights, the
    union and ``c²``.
    """
    pred, target = pred.float(), target.float()
    w1, h1 = pred[..., 2] - pred[..., 0], pred[..., 3] - pred[..., 1] + eps
    w2, h2 = target[..., 2] - target[..., 0], target[..., 3] - target[..., 1] + eps
    iw = (torch.minimum(pred[..., 2], target[..., 2]) - torch.maximum(pred[..., 0], target[..., 0])).clamp(min=0)
    ih = (torch.minimum(pred[..., 3], target[..., 3]) - torch.maximum(pred[..., 1], target[..., 1])).clamp(min=0)
    inter = iw * ih
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.maximum(pred[..., 2], target[..., 2]) - torch.minimum(pred[..., 0], target[..., 0])
    ch = torch.maximum(pred[..., 3], target[..., 3]) - torch.minimum(pred[..., 1], target[..., 1])
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = ((target[..., 0] + target[..., 2] - pred[..., 0] - pred[..., 2]) ** 2
            + (target[..., 1] + target[..., 3] - pred[..., 1] - pred[..., 3]) ** 2) / 4
    v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def ciou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """``1 - CIoU(pred, target)`` of aligned ``xyxy`` boxes ``[..., 4]`` → ``[...]`` (:func:`ciou`)."""
    return 1 - ciou(pred, target, eps)


def _check_same_shape(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)}"
        )


def kd_kl_loss(
    student_logits: Tensor, teacher_logits: Tensor, T: float, class_reduction: str = "mean"
) -> Tensor:
    """Knowledge-distillation KL: ``T^2 * reduce_last KL(softmax(t/T) || softmax(s/T))``.

    The teacher is detached.

    Args:
        student_logits: ``[..., K]``.
        teacher_logits: ``[..., K]`` (same shape).
        T: temperature.
        class_reduction: ``"mean"`` (mmdet / LD default) or ``"sum"`` over the last dim.

    Returns:
        ``[...]``.
    """
    _check_same_shape(student_logits, teacher_logits)
    if class_reduction not in ("mean", "sum"):
        raise ValueError(f"class_reduction must be 'mean' or 'sum', got {class_reduction!r}")
    # the target as log-probabilities: KL is then exactly 0 where student and teacher logits are equal
    # (softmax followed by log would differ from log_softmax by rounding)
    target_log = F.log_softmax(teacher_logits.detach().float() / T, dim=-1)
    kl = F.kl_div(F.log_softmax(student_logits.float() / T, dim=-1), target_log, reduction="none", log_target=True)
    kl = kl.mean(dim=-1) if class_reduction == "mean" else kl.sum(dim=-1)
    return kl * (T * T)


def ld_kl_loss(student_logits: Tensor, teacher_logits: Tensor, T: float = 10.0) -> Tensor:
    """Localization-distillation term of one box side: ``T^2 * mean_bins KL``.

    Args:
        student_logits: ``[..., n+1]`` bin logits of the student.
        teacher_logits: ``[..., n+1]`` bin logits of the teacher (detached).
        T: temperature (10 in LD).

    Returns:
        ``[...]``.
    """
    return kd_kl_loss(student_logits, teacher_logits, T, class_reduction="mean")


def kd_quality_focal_loss(student_logits: Tensor, teacher_logits: Tensor, beta: float = 1.0) -> Tensor:
    """Class KD in quality-focal style (CrossKD's class term), summed over classes.

    Per class: ``BCE(s, σ(t)) · |σ(s) − σ(t)|^beta``, the teacher's sigmoid score as a soft target,
    modulated like QFL by the gap to it (so it is exactly 0 where ``s == t``). The teacher is
    detached.

    Args:
        student_logits: ``[..., C]`` class logits of the student (here: the cross-head predictions).
        teacher_logits: ``[..., C]`` the teacher's class logits.
        beta: focusing exponent (CrossKD: 1).

    Returns:
        ``[...]``.
    """
    _check_same_shape(student_logits, teacher_logits)
    s = student_logits.float()
    target = teacher_logits.detach().float().sigmoid()
    bce = F.binary_cross_entropy_with_logits(s, target, reduction="none")
    return (bce * (s.sigmoid() - target).abs().pow(beta)).sum(dim=-1)
