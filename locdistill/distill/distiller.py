"""The Distiller: a frozen teacher and a trainable student in one ``nn.Module`` (DESIGN §5).

The teacher runs in eval mode under ``torch.no_grad()`` on the same augmented batch as
the student; ``forward`` returns ``(student_outputs, teacher_outputs)`` and the
criterion turns the pair into LD / VLR-LD / KD terms. Checkpoints written from a
Distiller hold the student only (:func:`locdistill.checkpoint.model_state_dict`).

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
compares them with the teacher's own predictions (:func:`locdistill.models.criterion.crosshead_terms`).
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

**Feature imitation** (the LD code's ``IMLoss``; :mod:`locdistill.imitation`) is the other option
(``imitation=True``): the Distiller taps both necks' outputs (the FPN maps, one ``[B, F, H, W]`` per
level) during the ordinary forwards and returns them as ``"imitation_feats"`` in the student and
teacher outputs; the criterion turns them into ``loss_im``. The student's maps go through an
:class:`ImitationAdapter` first when the FPN widths differ. The LD code has no adapter: its
students and teachers all have 256-channel FPNs and it compares the maps as they are, which is
what happens here when the widths are equal.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from .errors import ConfigError


def check_compatible(student: nn.Module, teacher: nn.Module, need_same_classes: bool = True) -> None:
    """Raise :class:`ConfigError` unless the teacher's outputs can supervise the student.

    Checks equal strides (hence levels), one prior per location, equal ``reg_max`` and,
    when class KD is on, an equal class count.
    """
    s_strides, t_strides = tuple(student.strides), tuple(teacher.strides)
    if s_strides != t_strides:
        raise ConfigError(
            f"teacher and student use different FPN strides/levels (teacher {t_strides}, student {s_strides}); "
            "set model.head.strides (and model.neck.num_outs) of the student to the teacher's")
    for name, m in (("student", student), ("teacher", teacher)):
        n = getattr(m, "num_priors", 1)
        if n != 1:
            raise ConfigError(f"the {name} has {n} priors per location; LD needs exactly one (GFL/ATSS style)")
    if student.reg_max != teacher.reg_max:
        raise ConfigError(
            f"teacher reg_max={teacher.reg_max} but student reg_max={student.reg_max}: the box distributions "
            f"must have the same bins; set model.head.reg_max={teacher.reg_max} in the student config")
    if need_same_classes and student.num_classes != teacher.num_classes:
        raise ConfigError(
            f"class KD needs the same classes: teacher has {teacher.num_classes}, student {student.num_classes}; "
            "use a teacher trained on the same dataset or set distill.kd_weight=0")


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

    ``imitation=True`` turns on feature imitation (module docstring): both outputs then also hold
    ``"imitation_feats"``, the FPN maps per level (the student's through ``self.imitation_adapter``
    when the widths differ, with autograd; the teacher's without).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, need_same_classes: bool = True,
                 crosshead_layer: int | None = None, imitation: bool = False):
        super().__init__()
        check_compatible(student, teacher, need_same_classes)
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
        when one of its weights is non-zero, feature imitation when ``d.imitation``."""
        return cls(student, teacher, need_same_classes=d.kd_weight > 0,
                   crosshead_layer=d.crosshead_layer if d.crosshead else None,
                   imitation=bool(getattr(d, "imitation", False)))

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


def build_teacher(teacher_config: str, teacher_checkpoint: str, num_classes: int | None = None) -> nn.Module:
    """Build the teacher from its own config and load its checkpoint **strictly**.

    ``num_classes`` is taken from the checkpoint's metadata when it records classes,
    else from ``num_classes`` (the student's dataset).
    """
    from .checkpoint import load_checkpoint, load_model_weights
    from .config import load_config
    from .models.build import build_detector
    from .tools.import_mmdet import checkpoint_num_classes

    if not teacher_config or not teacher_checkpoint:
        raise ConfigError("distillation needs both distill.teacher_config and distill.teacher_checkpoint "
                          "(e.g. --set distill.teacher_config=gfl/gfl_r101_fpn_mstrain_2x_coco "
                          "distill.teacher_checkpoint=teacher.pth)")
    from pathlib import Path

    tcfg = load_config(teacher_config)  # an LD config works too: only its `model` section is used
    if not Path(teacher_checkpoint).is_file():
        raise ConfigError(
            f"teacher checkpoint {teacher_checkpoint} does not exist (distill.teacher_checkpoint); download or "
            "train the teacher first, or pass --set distill.teacher_checkpoint=PATH (see docs/distillation.md)")
    ckpt = load_checkpoint(teacher_checkpoint)
    # recorded class names (any of locdistill's / mmdetection's spellings), else the classifier's rows
    file_classes = checkpoint_num_classes(ckpt)
    if file_classes:
        tcfg.model.num_classes = file_classes
    elif num_classes is not None:
        tcfg.model.num_classes = num_classes
    teacher = build_detector(tcfg.model)
    load_model_weights(teacher, ckpt, strict=True, source=f"teacher checkpoint {teacher_checkpoint}",
                       teacher_config=teacher_config)
    return teacher
