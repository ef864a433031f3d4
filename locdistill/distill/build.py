"""The one place a criterion is built from a config: the family's criterion + the injected distillation terms.

It sits in ``distill/`` because it sees both sides: :class:`~locdistill.models.criterion.GFLCriterion`
(models layer, no distillation) and :class:`~.criterion.DistillTerms` (this layer).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Union

from ..config import Config
from ..errors import ConfigError
from ..models.criterion import GFLCriterion
from ..models.yolo import YOLOCriterion
from .criterion import DistillTerms

__all__ = ["build_criterion"]

#: the ``distill.*`` fields the distillation terms take (the others configure the teacher and the Distiller)
CRITERION_DISTILL_FIELDS = tuple(f.name for f in dataclasses.fields(DistillTerms))


def build_criterion(cfg: Config, distill: Optional[bool] = None, **changes) -> Union[GFLCriterion, YOLOCriterion]:
    """``Config`` → :class:`~locdistill.models.criterion.GFLCriterion`, distilling or not.

    The argument names are the config field names: ``model.num_classes``,
    ``model.head.{reg_max, strides, octave_base_scale}`` and every ``loss.*`` go to the criterion;
    the ``distill.*`` weights, temperatures and modes to its :class:`~.criterion.DistillTerms`
    (:meth:`~.criterion.DistillTerms.from_config`). With ``model.type = "yolo"``: a
    :class:`~locdistill.models.yolo.YOLOCriterion` from ``model.num_classes`` and ``model.yolo.*``
    (it does not distil yet: a teacher is a :class:`~locdistill.errors.ConfigError`).

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
            raise ConfigError("model.type='yolo' cannot distil yet (distill.teacher_config is set): localization "
                              "distillation for the YOLO family comes later (docs/yolo.md); unset "
                              "distill.teacher_config to train it plainly")
        y = cfg.model.yolo
        args = dict(num_classes=cfg.model.num_classes, reg_max=y.reg_max, topk=y.topk, alpha=y.alpha, beta=y.beta,
                    loss_cls_weight=y.loss_cls_weight, loss_bbox_weight=y.loss_bbox_weight,
                    loss_dfl_weight=y.loss_dfl_weight)
        args.update(changes)
        return YOLOCriterion(**args)
    head = cfg.model.head
    args = dict(num_classes=cfg.model.num_classes, reg_max=head.reg_max, strides=tuple(head.strides),
                octave_base_scale=head.octave_base_scale)
    args.update((f.name, getattr(cfg.loss, f.name)) for f in dataclasses.fields(cfg.loss))
    distill_changes = {k: changes.pop(k) for k in list(changes) if k in CRITERION_DISTILL_FIELDS}
    if distill_changes and not distill:
        raise TypeError(f"build_criterion: {', '.join(sorted(distill_changes))} set the distillation terms, but the "
                        "criterion does not distill (distill.teacher_config is empty); pass distill=True")
    args.update(changes)
    if distill:
        args["distill_terms"] = DistillTerms.from_config(cfg.distill, **distill_changes)
    return GFLCriterion(**args)
