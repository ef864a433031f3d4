"""The distillation side of a criterion: :class:`DistillTerms`, injected into a detector family's criterion.

A family's criterion (:class:`~locdistill.models.criterion.GFLCriterion`) computes its ground-truth
losses and knows nothing of distillation; built with ``distill_terms=DistillTerms(...)`` it flattens
the teacher's outputs too and calls the terms with (student
:class:`~locdistill.models.dense.DenseOutputs`, teacher ``DenseOutputs``,
:class:`~locdistill.models.dense.Assignment`) plus the raw outputs dicts (cross-head predictions,
imitation features) and its own ``flatten`` (to turn the cross-head predictions, per-level maps of
the teacher's head, into ``DenseOutputs``). Nothing here imports a detector family
(:func:`locdistill.distill.build.build_criterion` joins the two).

Numerics are the LD code's ``LDHead`` (DESIGN §5), CrossKD's GFL losses and the LD code's
``IMLoss``; every term is the function of :mod:`.terms`, :mod:`.crosshead` or :mod:`.imitation`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from torch import Tensor

from ..config import DistillConfig
from ..models.dense import Assignment, DenseOutputs
from .crosshead import CROSSHEAD_TERMS, crosshead_terms
from .hetero import map_teacher
from .imitation import IMITATION_MODES, imitation_region, imitation_term
from .regions import VLR_IOU_MODES, main_region_weights, vlr_weights
from .terms import REDUCTIONS, box_kl, check_pair, kd_loss, ld_loss, reduction_scale, vlr_ld_loss

__all__ = ["DistillTerms"]

_D = DistillConfig  # field defaults: the config's, written there only

#: a family's ``flatten(per-level outputs, who) -> DenseOutputs``
Flatten = Callable[[Mapping[str, Sequence[Tensor]], str], DenseOutputs]


@dataclass
class DistillTerms:
    """LD / VLR-LD / class KD, the cross-head terms and feature imitation, with their weights and settings.

    The field names are the ``distill.*`` config field names (:meth:`from_config`) and the defaults
    are :class:`~locdistill.config.DistillConfig`'s. A term is computed only if its weight is non-zero.

    Attributes:
        ld_weight, ld_temperature: main-region LD (on the student's positives, weighted by ``pos_weight``).
        vlr_weight, vlr_temperature: VLR LD (0.25·thr_g <= DIoU < thr_g, weighted by IoU).
        vlr_iou_mode: ``"diou"`` (true DIoU selects the VLR) or ``"iof"`` (the LD code's quirk:
            intersection over the anchor's area in place of IoU inside its DIoU).
        kd_weight, kd_temperature: class KD on positives.
        reduction: ``"sum"`` (LD code: grows with images per GPU) or ``"per_image"``
            (sum · 3 / images, equal to ``"sum"`` at 3 images per GPU; batch-size invariant).
        crosshead_ld_weight, crosshead_kd_weight, crosshead_box_weight: the cross-head terms
            (:func:`~.crosshead.crosshead_terms`); they need ``"cross_cls_logits"`` / ``"cross_box_logits"``
            in the teacher outputs (a Distiller with ``crosshead_layer``).
        crosshead_ld_temperature, crosshead_kd_beta: their temperature and KD exponent.
        imitation_mode: feature imitation's region (:mod:`.imitation`): ``"fitnet"``, ``"inside_gt"``,
            ``"finegrained"``, ``"decouple"``, ``"gibox"`` ("" = off).
        imitation_weight: ``loss_im``'s weight (0 = off; set to 0 when ``imitation_mode`` is "");
            needs ``"imitation_feats"`` in both outputs (a Distiller with ``imitation=True``).
        imitation_gi_topk, imitation_gi_iou_thr, imitation_gi_per_image: the ``"gibox"`` selection
            (GI boxes kept per level; NMS IoU; NMS per image instead of over the batch's locations
            of a level, as the LD code).
    """

    ld_weight: float = _D.ld_weight
    ld_temperature: float = _D.ld_temperature
    vlr_weight: float = _D.vlr_weight
    vlr_temperature: float = _D.vlr_temperature
    vlr_iou_mode: str = _D.vlr_iou_mode
    kd_weight: float = _D.kd_weight
    kd_temperature: float = _D.kd_temperature
    reduction: str = _D.reduction
    crosshead_ld_weight: float = _D.crosshead_ld_weight
    crosshead_ld_temperature: float = _D.crosshead_ld_temperature
    crosshead_kd_weight: float = _D.crosshead_kd_weight
    crosshead_kd_beta: float = _D.crosshead_kd_beta
    crosshead_box_weight: float = _D.crosshead_box_weight
    imitation_mode: str = _D.imitation_mode
    imitation_weight: float = _D.imitation_weight
    imitation_gi_topk: int = _D.imitation_gi_topk
    imitation_gi_iou_thr: float = _D.imitation_gi_iou_thr
    imitation_gi_per_image: bool = _D.imitation_gi_per_image

    #: not a config field: ``(teacher strides, student strides)`` per level as host ints when the pair's layouts
    #: differ (set by :func:`~.build.build_criterion` from both configs; heterogeneous LD, :mod:`.hetero`).
    #: None = same layout (a teacher of another shape is then a ValueError, :func:`~.terms.check_pair`).
    hetero_strides = None

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"DistillTerms: reduction must be 'sum' or 'per_image', got {self.reduction!r}")
        if self.vlr_iou_mode not in VLR_IOU_MODES:
            raise ValueError(f"DistillTerms: vlr_iou_mode must be 'diou' or 'iof', got {self.vlr_iou_mode!r}")
        if self.imitation_mode not in ("",) + IMITATION_MODES:
            raise ValueError(f"DistillTerms: imitation_mode must be '' or one of {IMITATION_MODES}, "
                             f"got {self.imitation_mode!r}")
        if not self.imitation_mode:
            self.imitation_weight = 0.0
        self.imitation_gi_topk = int(self.imitation_gi_topk)
        self.imitation_gi_iou_thr = float(self.imitation_gi_iou_thr)
        self.imitation_gi_per_image = bool(self.imitation_gi_per_image)

    @classmethod
    def from_config(cls, d: DistillConfig, **changes) -> "DistillTerms":
        """From a :class:`~locdistill.config.DistillConfig` (each field by its own name), then ``changes``."""
        args = {f.name: getattr(d, f.name) for f in dataclasses.fields(cls)}
        args.update(changes)
        return cls(**args)

    @property
    def crosshead_weights(self) -> dict[str, float]:
        """``{"ld", "kd", "box"}`` → the cross-head terms' weights."""
        return {"ld": self.crosshead_ld_weight, "kd": self.crosshead_kd_weight, "box": self.crosshead_box_weight}

    def __call__(
        self,
        student: DenseOutputs,
        teacher: DenseOutputs,
        assignment: Assignment,
        outputs: Optional[Mapping[str, Sequence[Tensor]]] = None,
        teacher_outputs: Optional[Mapping[str, Sequence[Tensor]]] = None,
        flatten: Optional[Flatten] = None,
    ) -> dict[str, Tensor]:
        """LD on the main region, LD on the VLR and class KD (DESIGN §5; :mod:`.terms`), then the
        cross-head terms and feature imitation.

        Any family's outputs (GFL, YOLO): the regions come from its ``Assignment`` (YOLO: TAL positives
        weighted by the normalised alignment metric; VLR on the substitute anchors and thresholds).
        A teacher of another layout (``hetero_strides`` set, as :func:`~.build.build_criterion` does) is first
        mapped onto the student's anchors and bins (:func:`~.hetero.map_teacher`, one resampling per
        temperature) and every region weight, class KD's positives included, is multiplied by
        ``matched``; cross-head LD and feature imitation are then a ValueError.

        Args:
            student, teacher: both sides' flat predictions (the family's ``flatten``).
            assignment: the student's assignment.
            outputs, teacher_outputs: the raw per-level outputs dicts; feature imitation reads both
                ``"imitation_feats"``, the cross-head terms the teacher's ``"cross_cls_logits"`` /
                ``"cross_box_logits"``.
            flatten: the family's ``flatten(outputs, who)``; turns the cross-head predictions (laid out
                like the teacher's ``"cls_logits"`` / ``"box_logits"``) into ``DenseOutputs``.

        Returns:
            ``loss_ld``, ``loss_ld_vlr``, ``loss_kd``, ``loss_cross_{ld,kd,box}``, ``loss_im``: those
            with a non-zero weight, float32 scalars.
        """
        scale = reduction_scale(self.reduction, student.box_logits.shape[0])
        losses = {}
        if self.hetero_strides is not None:
            # heterogeneous LD (docs/distillation.md): the teacher on the student's anchors and bins, the same
            # terms, every region weight (class KD's positives too) times `matched`
            if self.crosshead_ld_weight or self.crosshead_kd_weight or self.crosshead_box_weight or \
                    self.imitation_weight:
                raise ValueError("cross-head LD and feature imitation need a teacher of the student's layout; "
                                 "with a heterogeneous pair use the ld / full terms only")
            t_strides, s_strides = self.hetero_strides or (None, None)
            mapped = map_teacher(teacher, student, teacher_strides=t_strides, student_strides=s_strides)
            matched = mapped.matched[None]  # [1, A]
            assignment = dataclasses.replace(assignment, pos=assignment.pos & matched)
            at = {}  # temperature -> the mapped teacher's DenseOutputs (one resampling per temperature)

            def teacher_at(temperature: float) -> DenseOutputs:
                if temperature not in at:
                    at[temperature] = mapped.dense(temperature)
                return at[temperature]
        else:
            check_pair(student, teacher)
            matched = None

            def teacher_at(temperature: float) -> DenseOutputs:
                return teacher
        cross = self.crosshead_losses(teacher, assignment, teacher_outputs, flatten)
        kl = None
        if self.ld_weight:
            kl = box_kl(student, teacher_at(self.ld_temperature), self.ld_temperature)  # [B, A]
            region = main_region_weights(assignment)
            region = region if matched is None else region * matched
            losses["loss_ld"] = ld_loss(kl, region, self.ld_weight * scale)
        if self.vlr_weight:
            if kl is None or self.vlr_temperature != self.ld_temperature:
                kl = box_kl(student, teacher_at(self.vlr_temperature), self.vlr_temperature)
            region = vlr_weights(assignment, self.vlr_iou_mode)
            region = region if matched is None else region * matched
            losses["loss_ld_vlr"] = vlr_ld_loss(kl, region, self.vlr_weight * scale)
        if self.kd_weight:
            # heterogeneous: `assignment.pos` holds the matched positives only (also in each level's count)
            # (class logits only: reuse a mapped teacher the box terms built)
            t = teacher_at(self.ld_temperature if self.ld_weight else
                           self.vlr_temperature if self.vlr_weight else self.kd_temperature)
            losses["loss_kd"] = kd_loss(student, t, assignment, self.kd_temperature, self.kd_weight)
        losses.update(cross)
        losses.update(self.imitation_losses(student, teacher, assignment, outputs, teacher_outputs))
        return losses

    def crosshead_losses(self, teacher: DenseOutputs, assignment: Assignment,
                         teacher_outputs: Optional[Mapping[str, Sequence[Tensor]]],
                         flatten: Optional[Flatten]) -> dict[str, Tensor]:
        """``loss_cross_ld``, ``loss_cross_kd``, ``loss_cross_box`` (those with a non-zero weight)."""
        weights = self.crosshead_weights
        terms = [k for k in CROSSHEAD_TERMS if weights[k]]
        if not terms:
            return {}
        if not isinstance(teacher_outputs, Mapping) or "cross_cls_logits" not in teacher_outputs \
                or "cross_box_logits" not in teacher_outputs:
            raise ValueError("cross-head losses are on but the teacher outputs hold no 'cross_cls_logits' / "
                             "'cross_box_logits': build the Distiller with crosshead_layer")
        if flatten is None:
            raise ValueError("cross-head losses need the detector family's flatten (the criterion passes its own)")
        cross = flatten({"cls_logits": teacher_outputs["cross_cls_logits"],
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
        """``loss_im`` (when its weight is non-zero) on the region of ``imitation_mode`` (:mod:`.imitation`)."""
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
