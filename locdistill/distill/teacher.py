"""The teacher: build it from its own config, load its checkpoint strictly, check it fits the student.

A teacher that silently failed to load turns LD into plain training (DESIGN §5), so the
checkpoint is loaded with ``strict=True`` and the start-up checks name the config key to fix.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..config import load_config
from ..errors import ConfigError
from ..models.build import load_detector
from .hetero import describe_mapping, level_name

__all__ = ["build_teacher", "check_compatible"]


def _anchor_offset(model: nn.Module) -> float:
    """Anchor-point offset in strides: the detector's ``anchor_offset``, else 0 (GFL/ATSS: ``(j·s, i·s)``)."""
    return float(getattr(model, "anchor_offset", 0.0))


def check_compatible(student: nn.Module, teacher: nn.Module, need_same_classes: bool = True,
                     heterogeneous: bool = False) -> str:
    """Raise :class:`ConfigError` unless the teacher's outputs can supervise the student; say how.

    Reads the detectors' ``strides``, ``reg_max``, ``num_classes``, ``num_priors`` (default 1) and
    ``anchor_offset`` (anchor points at ``((j + o)·s, (i + o)·s)``; default 0, the GFL convention).

    Default (the LD terms as wired today): equal strides (hence levels), one prior per location,
    equal ``reg_max``, equal anchor offsets and, when class KD is on, an equal class count.

    ``heterogeneous=True`` (:mod:`.hetero`): different ``reg_max``, anchor offsets and level sets
    are accepted when a mapping exists, i.e. at least one stride is shared; levels without a
    partner are skipped with one warning. One prior per location and (with class KD) equal
    class counts are still required.

    Returns:
        a human-readable description of the mapping ("same layout: ..." when nothing is mapped).
    """
    s_strides, t_strides = tuple(student.strides), tuple(teacher.strides)
    s_off, t_off = _anchor_offset(student), _anchor_offset(teacher)
    hint = (" (heterogeneous LD can map such a pair, see docs/distillation.md, \"Heterogeneous LD\"; this strict "
            "check is for code not wired into training yet: training from a config and "
            "Distiller(..., heterogeneous=True) accept it)")
    if not heterogeneous and s_strides != t_strides:
        raise ConfigError(
            f"teacher and student use different FPN strides/levels (teacher {t_strides}, student {s_strides}); "
            "set model.head.strides (and model.neck.num_outs) of the student to the teacher's" + hint)
    for name, m in (("student", student), ("teacher", teacher)):
        n = getattr(m, "num_priors", 1)
        if n != 1:
            raise ConfigError(f"the {name} has {n} priors per location; LD needs exactly one (GFL/ATSS style)")
    if not heterogeneous and student.reg_max != teacher.reg_max:
        raise ConfigError(
            f"teacher reg_max={teacher.reg_max} but student reg_max={student.reg_max}: the box distributions "
            f"must have the same bins; set model.head.reg_max={teacher.reg_max} in the student config" + hint)
    if not heterogeneous and s_off != t_off:
        raise ConfigError(
            f"teacher anchor offset {t_off:g} but student {s_off:g} (anchor points at ((j+o)·s, (i+o)·s)): the "
            "distances are measured from different points; distil between detectors of the same family" + hint)
    if need_same_classes and student.num_classes != teacher.num_classes:
        raise ConfigError(
            f"class KD needs the same classes: teacher has {teacher.num_classes}, student {student.num_classes}; "
            "use a teacher trained on the same dataset or set distill.kd_weight=0")
    if s_strides == t_strides and student.reg_max == teacher.reg_max and s_off == t_off:
        return (f"same layout: levels {', '.join(level_name(s) for s in s_strides)}, reg_max={student.reg_max}, "
                f"anchor offset {s_off:g}; the teacher's distributions are used as they are")
    try:
        _, text = describe_mapping(t_strides, s_strides, teacher.reg_max, student.reg_max, t_off, s_off, warn=True)
    except ValueError as e:
        raise ConfigError(f"{e}; set model.head.strides (and model.neck.num_outs) so that teacher and student "
                          "share at least one pyramid level") from None
    return text


def build_teacher(teacher_config: str, teacher_checkpoint: str, num_classes: int | None = None) -> nn.Module:
    """Build the teacher from its own config and load its checkpoint **strictly**.

    ``num_classes`` is taken from the checkpoint's metadata when it records classes,
    else from ``num_classes`` (the student's dataset).
    """
    if not teacher_config or not teacher_checkpoint:
        raise ConfigError("distillation needs both distill.teacher_config and distill.teacher_checkpoint "
                          "(e.g. --set distill.teacher_config=gfl/gfl_r101_fpn_mstrain_2x_coco "
                          "distill.teacher_checkpoint=teacher.pth)")
    tcfg = load_config(teacher_config)  # an LD config works too: only its `model` section is used
    if not Path(teacher_checkpoint).is_file():
        raise ConfigError(
            f"teacher checkpoint {teacher_checkpoint} does not exist (distill.teacher_checkpoint); download or "
            "train the teacher first, or pass --set distill.teacher_checkpoint=PATH (see docs/distillation.md)")
    # classes: the recorded names (any of locdistill's / mmdetection's spellings), else the classifier's rows
    teacher, _ = load_detector(tcfg, teacher_checkpoint, strict=True, num_classes=num_classes,
                               source=f"teacher checkpoint {teacher_checkpoint}", teacher_config=teacher_config)
    return teacher
