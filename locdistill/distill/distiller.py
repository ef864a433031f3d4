"""The Distiller: a frozen teacher and a trainable student in one ``nn.Module`` (DESIGN §5).

The teacher runs in eval mode under ``torch.no_grad()`` on the same augmented batch as
the student; ``forward`` returns ``(student_outputs, teacher_outputs)`` and the
criterion turns the pair into LD / VLR-LD / KD terms (:mod:`locdistill.distill.terms`).
Checkpoints written from a Distiller hold the student only
(:func:`locdistill.checkpoint.model_state_dict`).

Two options add outputs: cross-head distillation (``crosshead_layer``;
:mod:`locdistill.distill.crosshead`) adds ``"cross_cls_logits"`` / ``"cross_box_logits"`` to the
teacher outputs, and feature imitation (``imitation=True``; :mod:`locdistill.distill.imitation`)
adds the FPN maps as ``"imitation_feats"`` to both. The Distiller taps both necks' outputs during
the ordinary forwards; the student's maps go through an ``ImitationAdapter`` first when the FPN
widths differ (the LD code has none: its FPNs are all 256 wide and compared as they are).
"""
from __future__ import annotations

import contextlib
import logging

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .crosshead import CrossHeadAdapter, crosshead_layers, match_channel_stats
from .imitation import ImitationAdapter, neck_channels
from .teacher import check_compatible


logger = logging.getLogger(__name__)


def _is_yolo(model: nn.Module) -> bool:
    """A YOLO-family detector (by its module path: this layer imports no family's code)."""
    return ".models.yolo." in type(model).__module__


@contextlib.contextmanager
def _neck_tap(model: nn.Module, store: list):
    """While active, append each output of ``model.neck`` (a list of per-level maps) to ``store``.

    A forward hook, so the maps are those of the model's own forward (also inside DDP's), with
    their autograd graph when the forward has one."""
    handle = model.neck.register_forward_hook(lambda module, args, out: store.append(list(out)))
    try:
        yield
    finally:
        handle.remove()


class Distiller(nn.Module):
    """Student + frozen teacher. ``forward(images[B,3,H,W]) -> (student_out, teacher_out)``.

    The teacher never trains: its parameters have ``requires_grad=False``, it stays in
    eval mode when ``.train()`` is called (BN statistics are never updated) and it runs
    without autograd. It follows ``.to(device)`` like any submodule.

    ``crosshead_layer`` (an int, None = off) turns on cross-head distillation (module
    docstring): ``teacher_out`` then also holds ``"cross_cls_logits"`` and ``"cross_box_logits"``,
    computed *with* autograd through the teacher's frozen layers, so gradients reach the student's
    towers (and the adapter) but never the teacher's parameters. When the tower widths differ, a
    :class:`CrossHeadAdapter` (``self.crosshead_adapter``) maps the student's features first.

    ``heterogeneous=True`` accepts a teacher of another layout (``reg_max``, anchor offset, levels, family;
    :func:`~.teacher.check_compatible`), as training from a config does; the criterion then maps its
    outputs onto the student's anchors and bins (:mod:`.hetero`). ``compatibility`` holds the description.

    ``imitation=True`` turns on feature imitation (module docstring): both outputs then also hold
    ``"imitation_feats"``, the FPN maps per level (the student's through ``self.imitation_adapter``
    when the widths differ, with autograd; the teacher's without).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, need_same_classes: bool = True,
                 crosshead_layer: int | None = None, imitation: bool = False, heterogeneous: bool = False):
        super().__init__()
        #: what the LD terms map between the pair (:func:`~.teacher.check_compatible`), logged at start-up
        self.compatibility = check_compatible(student, teacher, need_same_classes, heterogeneous=heterogeneous)
        if not self.compatibility.startswith("same layout"):
            logger.info(self.compatibility)
        for name, m in (("student", student), ("teacher", teacher)):
            if _is_yolo(m) and crosshead_layer is not None:
                raise ConfigError(f"cross-head LD needs GFL heads on both sides; the {name} is a YOLO-family model: "
                                  "use distill.recipe=ld or full (docs/yolo.md, \"Distillation\")")
            if _is_yolo(m) and imitation:
                raise ConfigError(f"feature imitation is not available when the {name} is a YOLO-family model; "
                                  "set distill.imitation_mode='' (docs/yolo.md, \"Distillation\")")
        self.student = student
        self.teacher = teacher
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.crosshead_layers = None  # (student conv index, teacher conv index)
        self.crosshead_adapter = None
        if crosshead_layer is not None:
            self.crosshead_layers = crosshead_layers(student, teacher, int(crosshead_layer))
            s_w, t_w = student.bbox_head.feat_channels, teacher.bbox_head.feat_channels
            if s_w != t_w:
                self.crosshead_adapter = CrossHeadAdapter(s_w, t_w)
        self.imitation = bool(imitation)
        self.imitation_adapter = None
        if self.imitation:
            s_w, t_w = neck_channels(student, "student"), neck_channels(teacher, "teacher")
            if s_w != t_w:
                self.imitation_adapter = ImitationAdapter(s_w, t_w)

    @classmethod
    def from_config(cls, student: nn.Module, teacher: nn.Module, d) -> "Distiller":
        """From a :class:`~locdistill.config.DistillConfig`: same classes only for class KD, cross-head on
        when one of its weights is non-zero, feature imitation when ``d.imitation``; heterogeneous pairs
        (other ``reg_max``, anchor offsets, levels or family) accepted and described (``compatibility``)."""
        return cls(student, teacher, need_same_classes=d.kd_weight > 0,
                   crosshead_layer=d.crosshead_layer if d.crosshead else None,
                   imitation=bool(getattr(d, "imitation", False)), heterogeneous=True)

    # mirror the student's attributes so engine code can treat both alike
    @property
    def student_detector(self) -> nn.Module:
        """The student itself, also when the engine wrapped it in DistributedDataParallel."""
        return getattr(self.student, "module", self.student)

    @property
    def strides(self):
        return self.student_detector.strides

    @property
    def reg_max(self) -> int:
        return self.student_detector.reg_max

    @property
    def num_classes(self) -> int:
        return self.student_detector.num_classes

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, images: torch.Tensor) -> tuple[dict, dict]:
        if not self.imitation:
            return self._forward_outputs(images)
        s_taps, t_taps = [], []
        with _neck_tap(self.student_detector, s_taps), _neck_tap(self.teacher, t_taps):
            student_out, teacher_out = self._forward_outputs(images)
        s_feats, t_feats = s_taps[0], t_taps[0]  # the first neck call of each forward
        if self.imitation_adapter is not None:
            s_feats = self.imitation_adapter(s_feats)
        student_out, teacher_out = dict(student_out), dict(teacher_out)
        student_out["imitation_feats"], teacher_out["imitation_feats"] = s_feats, t_feats
        return student_out, teacher_out

    def _forward_outputs(self, images: torch.Tensor) -> tuple[dict, dict]:
        if self.crosshead_layers is None:
            student_out = self.student(images)
            with torch.no_grad():
                teacher_out = self.teacher(images)
            return student_out, teacher_out
        s_layer, t_layer = self.crosshead_layers
        student_out = dict(self.student(images, tower_layer=s_layer))
        cls_s, reg_s = student_out.pop("cls_tower"), student_out.pop("reg_tower")
        with torch.no_grad():
            teacher_out = dict(self.teacher(images, tower_layer=t_layer))
        cls_t, reg_t = teacher_out.pop("cls_tower"), teacher_out.pop("reg_tower")
        if self.crosshead_adapter is not None:
            cls_s, reg_s = self.crosshead_adapter(cls_s, reg_s)
        head = self.teacher.bbox_head
        cross_cls, cross_box = [], []
        for cs, rs, ct, rt, scale in zip(cls_s, reg_s, cls_t, reg_t, head.scales):
            dtype = ct.dtype  # the teacher's feature dtype (a bf16 / fp16 teacher: its own)
            c, b = head.head_from(match_channel_stats(cs, ct).to(dtype), match_channel_stats(rs, rt).to(dtype),
                                  t_layer, scale)
            cross_cls.append(c)
            cross_box.append(b)
        teacher_out["cross_cls_logits"], teacher_out["cross_box_logits"] = cross_cls, cross_box
        return student_out, teacher_out

    def _training_modules(self) -> dict[str, nn.Module]:
        """The training-only modules by attribute name (unwrapped from DDP)."""
        out = {}
        for name in ("crosshead_adapter", "imitation_adapter"):
            m = getattr(self, name, None)
            if m is not None:
                out[name] = getattr(m, "module", m)
        return out

    def training_state_dict(self) -> dict[str, Tensor]:
        """Weights of the training-only modules (the cross-head and imitation adapters), for ``--resume``;
        ``{}`` if none."""
        return {f"{name}.{k}": v.detach().cpu()
                for name, m in self._training_modules().items() for k, v in m.state_dict().items()}

    def load_training_state_dict(self, state: dict[str, Tensor]) -> None:
        """Inverse of :meth:`training_state_dict`. A module the ``state`` holds nothing of (a checkpoint
        written without it) stays as initialised."""
        if not state:
            return
        modules = self._training_modules()
        foreign = sorted(k for k in state if k.split(".", 1)[0] not in modules)
        if foreign:
            raise ConfigError(f"the checkpoint holds training-only modules ({', '.join(foreign)}) that "
                              "this run does not have; resume with the distill settings it was written with")
        for name, m in modules.items():
            prefix = name + "."
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if part:
                m.load_state_dict(part, strict=True)
