"""The one place a criterion is built from a config: the family's criterion + the injected distillation terms.

It sits in ``distill/`` because it sees both sides: :class:`~locdistill.models.criterion.GFLCriterion`
(models layer, no distillation) and :class:`~.criterion.DistillTerms` (this layer).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Union

from ..config import Config, load_config
from ..errors import ConfigError
from ..models.criterion import GFLCriterion
from ..models.yolo import YOLOCriterion
from .criterion import DistillTerms

__all__ = ["build_criterion", "layout"]

#: the ``distill.*`` fields the distillation terms take (the others configure the teacher and the Distiller)
CRITERION_DISTILL_FIELDS = tuple(f.name for f in dataclasses.fields(DistillTerms))


def build_criterion(cfg: Config, distill: Optional[bool] = None, **changes) -> Union[GFLCriterion, YOLOCriterion]:
    """``Config`` → :class:`~locdistill.models.criterion.GFLCriterion`, distilling or not.

    The argument names are the config field names: ``model.num_classes``,
    ``model.head.{reg_max, strides, octave_base_scale}`` and every ``loss.*`` go to the criterion;
    the ``distill.*`` weights, temperatures and modes to its :class:`~.criterion.DistillTerms`
    (:meth:`~.criterion.DistillTerms.from_config`). With ``model.type = "yolo"``: a
    :class:`~locdistill.models.yolo.YOLOCriterion` from ``model.num_classes`` and ``model.yolo.*``, with
    the same :class:`~.criterion.DistillTerms` (cross-head LD and feature imitation are a
    :class:`~locdistill.errors.ConfigError` with a YOLO model on either side).

    When the teacher's config (``distill.teacher_config``) describes another layout (:func:`layout`:
    strides, ``reg_max``, anchor offset; e.g. a GFL teacher for a YOLO student) the criterion flattens the
    teacher's outputs with the teacher family's ``flatten`` and the terms map them onto the student's
    anchors and bins each step (``DistillTerms.hetero_strides``; :mod:`.hetero`).

    Args:
        cfg: the run's config.
        distill: inject the distillation terms (the criterion then also takes ``teacher_outputs``);
            None = when the config distils (``distill.teacher_config`` is set). True also serves
            code that compares a student with a teacher it built itself.
        changes: override single arguments by the same names (criterion or ``distill.*`` ones; the
            latter only with the distillation terms).
    """
    if distill is None:
        distill = bool(cfg.distill.teacher_config)
    if cfg.model.type == "yolo":
        if distill:
            _check_yolo_terms(cfg, "student")
        y = cfg.model.yolo
        args = dict(num_classes=cfg.model.num_classes, reg_max=y.reg_max, topk=y.topk, alpha=y.alpha, beta=y.beta,
                    loss_cls_weight=y.loss_cls_weight, loss_bbox_weight=y.loss_bbox_weight,
                    loss_dfl_weight=y.loss_dfl_weight)
    else:
        head = cfg.model.head
        args = dict(num_classes=cfg.model.num_classes, reg_max=head.reg_max, strides=tuple(head.strides),
                    octave_base_scale=head.octave_base_scale)
        args.update((f.name, getattr(cfg.loss, f.name)) for f in dataclasses.fields(cfg.loss))
    distill_changes = {k: changes.pop(k) for k in list(changes) if k in CRITERION_DISTILL_FIELDS}
    if distill_changes and not distill:
        raise TypeError(f"build_criterion: {', '.join(sorted(distill_changes))} set the distillation terms, but the "
                        "criterion does not distill (distill.teacher_config is empty); pass distill=True")
    args.update(changes)
    tcfg = _teacher_config(cfg) if distill else None
    if tcfg is not None and tcfg.model.type == "yolo":
        _check_yolo_terms(cfg, "teacher")
    if distill:
        args["distill_terms"] = DistillTerms.from_config(cfg.distill, **distill_changes)
    criterion = (YOLOCriterion if cfg.model.type == "yolo" else GFLCriterion)(**args)
    if tcfg is not None and layout(tcfg) != layout(cfg):
        d = cfg.distill
        if d.crosshead or d.imitation:
            raise ConfigError(
                f"the teacher ({cfg.distill.teacher_config}: strides, reg_max, anchor offset {layout(tcfg)}) has "
                f"another layout than the student ({layout(cfg)}): heterogeneous LD maps its distributions for "
                "the terms on the student's outputs, but cross-head LD (in the default `crosshead_ld` recipe) and "
                "feature imitation need the same layout; use --set distill.recipe=ld or distill.recipe=full "
                "(docs/distillation.md, \"Heterogeneous LD\")")
        # heterogeneous pair (docs/distillation.md, "Heterogeneous LD"): the teacher's outputs are flattened by
        # its own family's flatten, then mapped onto the student's anchors and bins by the terms each step
        teacher_flatten = build_criterion(tcfg, distill=False).flatten
        criterion.flatten = _TeacherFlatten(criterion.flatten, teacher_flatten)
        criterion.distill_terms.hetero_strides = (layout(tcfg)[0], layout(cfg)[0])
    return criterion


def layout(cfg: Config) -> tuple:
    """``(strides, reg_max, anchor offset)`` of a config's detector: what LD needs to compare two of them.

    GFL: ``model.head.strides``, ``model.head.reg_max``, offset 0 (points at ``(j·s, i·s)``); YOLO: strides
    (8, 16, 32), ``model.yolo.reg_max − 1`` (the top bin value), offset 0.5 (cell centres).
    """
    if cfg.model.type == "yolo":
        return (8, 16, 32), int(cfg.model.yolo.reg_max) - 1, 0.5
    return tuple(int(s) for s in cfg.model.head.strides), int(cfg.model.head.reg_max), 0.0


def _teacher_config(cfg: Config) -> Optional[Config]:
    """The teacher's config (its ``model`` section is what matters), or None when it cannot be read here
    (code that compares a student with a teacher it built itself; training reads it in ``build_teacher``)."""
    if not cfg.distill.teacher_config:
        return None
    try:
        return load_config(cfg.distill.teacher_config)
    except (ConfigError, OSError, ImportError):
        return None


def _check_yolo_terms(cfg: Config, side: str) -> None:
    """The terms that cannot run with a YOLO-family model on ``side``: cross-head LD (it runs the student's
    tower features through the teacher's GFL head) and feature imitation (single-width FPN maps)."""
    d = cfg.distill
    if d.crosshead:
        raise ConfigError(
            f"cross-head LD (distill.crosshead_*_weight, in the default `crosshead_ld` recipe) needs GFL heads on both "
            f"sides; the {side} is a YOLO-family model (model.type='yolo'). Choose a recipe of terms on the "
            "student's own outputs: --set distill.recipe=ld (main-region LD) or distill.recipe=full (+ VLR, "
            "class KD); see docs/yolo.md, \"Distillation\"")
    if d.imitation:
        raise ConfigError(
            f"feature imitation (distill.imitation_mode={d.imitation_mode!r}) is not available when the {side} is a "
            "YOLO-family model (its PAN maps have per-level widths); set distill.imitation_mode='' "
            "(docs/yolo.md, \"Distillation\")")


class _TeacherFlatten:
    """A family criterion's ``flatten`` that hands the teacher's outputs (``who == "teacher"``) to the teacher
    family's ``flatten`` (a heterogeneous pair); everything else to the student's."""

    def __init__(self, student_flatten, teacher_flatten):
        self.student_flatten, self.teacher_flatten = student_flatten, teacher_flatten

    def __call__(self, outputs, who: str = "student"):
        return (self.teacher_flatten if who == "teacher" else self.student_flatten)(outputs, who)
