"""``locdistill check-teacher``: can this teacher help this student, before a training run is spent on LD?

Inputs: a student trained *without* LD (the baseline you have, or a short run of it) and
a teacher. On the val split of the student's config (or its training images, through the
val pipeline, with ``split="train"``) this measures

1. **Headroom**: the student's COCO AP as it is, and with the teacher's box logits swapped
   in at the student's positives (ATSS for GFL, TAL for the YOLO family: the region of main
   LD), at the VLR (VLR-LD), at both, and everywhere; then the teacher's class logits with the student's boxes (what
   class KD could give) and the teacher alone. Nothing else changes (the student's class
   scores, the same post-processing), so AP(positives) − AP(student) is the most main LD
   could give if the student copied the teacher's box distributions exactly: a ceiling,
   not a promise.
2. **Teacher vs student boxes** at the positives: the mean IoU of each one's decoded box
   with the annotated box, and the share of positives where the teacher's box is the
   better one (strictly higher IoU).
3. A **verdict** from the two numbers that matter for main LD (its headroom, and the share
   of positives where the teacher's box is better). The thresholds are rules of thumb from
   the digits measurements, not guarantees:

   * headroom ≥ ``HELPS_AP`` (+2 AP) and teacher better at ≥ ``HELPS_SHARE`` (60 %) of the
     positives: LD is likely to help. The demo pair (shipped teacher, the demo's 10-epoch
     baseline) gives +10.2 AP and 83 % on the val split (+9.0 AP for the seed-0 baseline of
     docs/benchmarks.md), and main LD gains +6.3 AP there.
   * headroom < ``NO_GAIN_AP`` (+1 AP) or teacher better at < ``NO_GAIN_SHARE`` (55 %):
     expect no gain, possibly a loss. A teacher trained on the student's own noisy scenes
     gives IoU 0.767 vs the student's 0.765 and is better at 50 % of the val positives;
     LD from such teachers did not help on digits.
   * in between: LD may give a little; compare short runs with and without it.

   Judge on val. On the training split the annotated boxes are those the student was
   trained on: it fits them, noise included, and a teacher that memorised them wins (the
   demo teacher, trained on other scenes, is better at only 23 % of the noisy training
   positives although it is better at 83 % on val).

   The class side adds a note when the teacher's class logits are worth ≥ ``KD_AP``
   (+1 AP) with the student's boxes (class KD, ``distill.kd_weight``).

Teacher and student must share one layout (family, strides, bins, anchor points): outputs are
swapped location by location, so a heterogeneous pair (GFL ↔ YOLO) is refused; compare
``locdistill test`` of each instead. Box swaps assume the class scores do not depend on the
boxes (GFL v1, YOLO); for GFLv2 they do (DGQP) and are not recomputed, so its rows show the
boxes' effect only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.utils.data
from torch import Tensor

from ..boxes import bbox_overlaps, distance2bbox
from ..checkpoint import checkpoint_num_classes, load_checkpoint
from ..config import load_config
from ..data.digits import ensure_digits
from ..data.loader import build_dataloader, build_dataset
from ..distill import build_criterion, check_compatible
from ..distill.regions import VLR_IOU_MODES, vlr_weights
from ..engine.device import select_device
from ..engine.evaluate import image_metas, score_detections
from ..engine.logging import make_progress
from ..errors import CheckpointError, ConfigError
from ..models.build import load_detector as build_and_load
from ..models.build import postprocess
from ..models.dense import Assignment, DenseOutputs, integral

HELPS_AP = 2.0  # main-LD headroom (AP points) from which LD is likely to help ...
HELPS_SHARE = 60.0  # ... together with the teacher's box being better at this share (%) of the positives
NO_GAIN_AP = 1.0  # below this headroom, or ...
NO_GAIN_SHARE = 55.0  # ... below this share, expect no gain
KD_AP = 1.0  # the teacher's class logits worth this much: mention class KD

REGIONS = ("none", "positives", "vlr", "pos+vlr", "all")  # where the teacher's box logits go in
VARIANTS = (*REGIONS, "teacher cls", "teacher")
LABELS = {
    "none": "the student as it is",
    "positives": "teacher's boxes at the student's {assigner} positives (main LD)",
    "vlr": "teacher's boxes at the VLR (VLR-LD)",
    "pos+vlr": "teacher's boxes at positives + VLR",
    "all": "teacher's boxes everywhere",
    "teacher cls": "teacher's class logits, student's boxes (class KD)",
    "teacher": "the teacher alone",
}
COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "AR100")


# ----------------------------------------------------------------------------- results


@dataclass
class BoxComparison:
    """Teacher vs student decoded boxes at the student's positives (ATSS / TAL), summed over images.

    ``iou_teacher`` / ``iou_student``: sums of the IoU of each one's box with the assigned GT
    box; ``teacher_better``: positives where the teacher's IoU is strictly higher.
    """

    positives: int = 0
    iou_teacher: float = 0.0
    iou_student: float = 0.0
    teacher_better: int = 0

    def add(self, iou_teacher: Tensor, iou_student: Tensor) -> None:
        """Accumulate the IoUs ``[P]`` of ``P`` positives (teacher's and student's, same order)."""
        self.positives += int(iou_teacher.numel())
        self.iou_teacher += float(iou_teacher.sum())
        self.iou_student += float(iou_student.sum())
        self.teacher_better += int((iou_teacher > iou_student).sum())

    @property
    def mean_iou_teacher(self) -> float:
        return self.iou_teacher / self.positives if self.positives else math.nan

    @property
    def mean_iou_student(self) -> float:
        return self.iou_student / self.positives if self.positives else math.nan

    @property
    def better_share(self) -> float:
        """Percentage of the positives where the teacher's box is the better one (NaN without positives)."""
        return 100.0 * self.teacher_better / self.positives if self.positives else math.nan


@dataclass
class TeacherCheck:
    """Everything ``check-teacher`` measured.

    ``metrics[variant]``: COCO metrics (fractions, -1 = undefined) of each of
    :data:`VARIANTS`; ``boxes``: the teacher vs student comparison at the positives;
    ``assigner``: the student's ("ATSS" for GFL, "TAL" for the YOLO family).
    """

    student_checkpoint: str
    teacher_checkpoint: str
    split: str
    num_images: int
    metrics: dict = field(default_factory=dict)
    boxes: BoxComparison = field(default_factory=BoxComparison)
    assigner: str = "ATSS"

    def ap(self, variant: str) -> float:
        """AP × 100 of a variant."""
        return 100.0 * self.metrics[variant]["AP"]

    def delta(self, variant: str) -> float:
        """AP of a variant minus the student's, in AP points."""
        return self.ap(variant) - self.ap("none")

    @property
    def headroom(self) -> float:
        """Main-LD headroom: AP with the teacher's boxes at the positives minus the student's."""
        return self.delta("positives")


# ----------------------------------------------------------------------------- loading


def _load_config(role: str, config: str, overrides: Sequence[str]):
    """``load_config`` whose errors say whose config ("student" / "teacher") is wrong."""
    try:
        return load_config(config, list(overrides))
    except ConfigError as e:
        raise ConfigError(f"{role} config: {e}") from None


def load_detector(role: str, config: str, checkpoint: str, overrides: Sequence[str] = (),
                  num_classes: Optional[int] = None):
    """Build ``role``'s ("student" / "teacher") detector from its config and load its checkpoint strictly
    (:func:`locdistill.models.build.load_detector`).

    The class count is the checkpoint's (recorded names or classifier rows), else ``num_classes``.
    Returns ``(cfg, model in eval mode, class count of the checkpoint or None)``. Missing files and
    mismatching weights raise :class:`~locdistill.errors.LocDistillError` subclasses naming the role.
    """
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"{role} checkpoint {checkpoint} does not exist; check the path")
    cfg = _load_config(role, config, overrides)
    ckpt = load_checkpoint(checkpoint)
    file_classes = checkpoint_num_classes(ckpt)
    try:
        model, _ = build_and_load(cfg, ckpt, strict=True, num_classes=num_classes,
                                  source=f"{role} checkpoint {checkpoint}")
    except CheckpointError as e:
        if role != "teacher":
            raise
        # the teacher's config takes its overrides from --teacher-set: make the printed fix say so
        raise CheckpointError(str(e).replace("Or override the config: --set ",
                                             "Or override the teacher's config: --teacher-set ")) from None
    return cfg, model.eval(), file_classes


def eval_dataset(cfg, split: str):
    """The ``split`` ("val" / "train") images of ``cfg.data`` through the val pipeline (no augmentation).

    ``train`` reads the training images and labels as trained on (digits: with their
    ``digits_box_noise``; ``digits_fresh`` scenes are generated per epoch, so the fixed
    training set stands in); ``cfg.data`` is changed in place to point val at them.
    """
    if split not in ("val", "train"):
        raise ConfigError(f"split must be 'val' or 'train', got {split!r}")
    d = cfg.data
    if split == "train":
        if d.dataset == "digits":
            paths = ensure_digits(d.digits_root, d.digits_train, d.digits_val, d.digits_image_size, d.digits_seed,
                                  d.digits_box_noise)
            d.dataset, d.val_json, d.val_images = "coco", str(paths["train_json"]), str(paths["train_images"])
        elif d.dataset == "coco":
            d.val_json, d.val_images = d.train_json, d.train_images
        elif d.dataset == "voc":
            d.voc_val = d.voc_train
        else:
            raise ConfigError(f"--split train does not support data.dataset={d.dataset!r}")
    return build_dataset(d, "val")


# ----------------------------------------------------------------------------- tensors


def mix_levels(student: Sequence[Tensor], teacher: Sequence[Tensor], mask: Tensor) -> list[Tensor]:
    """Per level ``where(mask, teacher, student)``.

    Args:
        student, teacher: per level ``[B, K, H, W]`` maps (same shapes).
        mask: ``[B, A]`` bool over the locations of all levels (row-major per level, levels
            concatenated, as :class:`~locdistill.models.dense.DenseOutputs`), ``A = Σ H·W``.
    Returns:
        per level ``[B, K, H, W]``.
    """
    out, start = [], 0
    for s, t in zip(student, teacher):
        b, _, h, w = s.shape
        m = mask[:, start:start + h * w].reshape(b, 1, h, w)
        out.append(torch.where(m, t, s))
        start += h * w
    if start != mask.shape[1]:
        raise ValueError(f"mask covers {mask.shape[1]} locations, the levels {start}")
    return out


def decode_boxes(box_levels: Sequence[Tensor], centers: Tensor) -> Tensor:
    """Decode per-level box logits into boxes, as the criterion decodes the student's.

    Args:
        box_levels: per level ``[B, 4(n+1), H, W]`` box logits.
        centers: ``[A, 2]`` location centres in stride units (``DenseOutputs.centers``).
    Returns:
        ``[B, A, 4]`` xyxy boxes in stride units (the expected distance of each side's softmax).
    """
    flat = []
    for b in box_levels:
        B, ch, H, W = b.shape
        flat.append(b.float().permute(0, 2, 3, 1).reshape(B, H * W, 4, ch // 4))
    logits = torch.cat(flat, 1)  # [B, A, 4, n+1]
    n1 = logits.shape[-1]
    project = torch.linspace(0, n1 - 1, n1, device=logits.device)
    return distance2bbox(centers, logits.softmax(-1) @ project)


def positive_boxes(dense: DenseOutputs, assignment: Assignment) -> tuple[Tensor, Tensor]:
    """The student's decoded boxes and the boxes assigned to its locations, any family.

    Returns:
        ``(pred_boxes, target_boxes)``, each ``[B, A, 4]`` xyxy in stride units; ``pred_boxes`` the
        expected distance of each side's softmax from ``dense.centers``, ``target_boxes`` the
        annotated box of ``assignment.gt_index`` (meaningful where ``assignment.pos``).
    """
    B, A = assignment.pos.shape
    slot = assignment.gt_index.clamp(min=0)[..., None].expand(B, A, 4)
    target = assignment.gt_boxes.gather(1, slot) / dense.strides[:, None]
    return distance2bbox(dense.centers, integral(dense.box_logits)), target


def variant_outputs(s_out: dict, t_out: dict, masks: dict) -> dict:
    """Head outputs of every variant: the student's class logits with box logits mixed per
    ``masks`` (name → ``[B, A]`` bool), the teacher's class logits with the student's boxes
    (``"teacher cls"``) and the teacher's own (``"teacher"``). Other entries of the outputs
    (a family's extras, e.g. the YOLO point offset) are the student's."""
    outputs = {n: {**s_out, "box_logits": mix_levels(s_out["box_logits"], t_out["box_logits"], m)}
               for n, m in masks.items()}
    outputs["teacher cls"] = {**s_out, "cls_logits": t_out["cls_logits"], "box_logits": s_out["box_logits"]}
    outputs["teacher"] = t_out
    return outputs


# ----------------------------------------------------------------------------- the check


@torch.no_grad()
def collect(student, teacher, loader, criterion, test_cfg, device: torch.device, vlr_iou_mode: str = "diou"):
    """Run both detectors over ``loader`` and gather every variant's detections.

    Returns ``(detections, image_ids, boxes)``: ``detections[variant]`` one dict per image
    (``boxes [K, 4]`` original pixels, ``scores [K]``, ``labels [K]``, CPU), in the order of
    ``image_ids``; ``boxes`` the :class:`BoxComparison` at the student's positives.
    """
    detections: dict[str, list] = {n: [] for n in VARIANTS}
    image_ids: list[int] = []
    seen: set[int] = set()
    boxes = BoxComparison()
    with make_progress(transient=True) as bar:
        task = bar.add_task("check-teacher", total=len(loader), info="")
        for images, targets in loader:
            images = images.to(device)
            s_out, t_out = student(images), teacher(images)
            gt = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
            dense = criterion.flatten(s_out)
            asg = criterion.assign(dense, gt, [t["pad_shape"] for t in targets])
            pred_boxes, target_boxes = positive_boxes(dense, asg)
            pos, vlr = asg.pos, vlr_weights(asg, vlr_iou_mode) > 0  # [B, A]
            masks = {"none": torch.zeros_like(pos), "positives": pos, "vlr": vlr, "pos+vlr": pos | vlr,
                     "all": torch.ones_like(pos)}
            t_boxes = decode_boxes(t_out["box_logits"], dense.centers)  # [B, A, 4]
            boxes.add(bbox_overlaps(t_boxes, target_boxes, is_aligned=True)[pos],
                      bbox_overlaps(pred_boxes, target_boxes, is_aligned=True)[pos])
            metas = image_metas(targets)
            keep = []
            for i, t in enumerate(targets):
                if int(t["image_id"]) not in seen:  # skip_bad may substitute an image already seen
                    seen.add(int(t["image_id"]))
                    keep.append(i)
                    image_ids.append(int(t["image_id"]))
            for n, out in variant_outputs(s_out, t_out, masks).items():
                res = postprocess(out, metas, test_cfg, student.strides, student.reg_max)
                detections[n] += [{k: v.cpu() for k, v in res[i].items()} for i in keep]
            bar.advance(task)
    return detections, image_ids, boxes


def evaluate_variants(dataset, detections: dict, image_ids: list[int]) -> dict:
    """COCO bbox metrics of each variant's detections on the images ``image_ids`` of ``dataset``
    (a :class:`~locdistill.data.coco.CocoDetection` or VOC dataset, not a Subset)."""
    return {n: score_detections(dataset, dets, image_ids, metric="bbox", warn_empty=False)[0]
            for n, dets in detections.items()}


def check_teacher(student_config: str, student_checkpoint: str, teacher_config: str, teacher_checkpoint: str,
                  split: str = "val", images: Optional[int] = None, overrides: Sequence[str] = (),
                  teacher_overrides: Sequence[str] = ()) -> TeacherCheck:
    """Measure what ``teacher`` could teach ``student`` (see the module docstring).

    ``overrides`` apply to the student's config (its model, data, test settings and the
    assigner (ATSS / TAL): these define the split, the positives and the post-processing of every
    row); ``teacher_overrides`` to the teacher's, whose model section alone is used.
    ``images``: the first N images of the split (default all).
    """
    if images is not None and images < 1:
        raise ConfigError(f"--images must be >= 1 (got {images})")
    for role, path in (("student", student_checkpoint), ("teacher", teacher_checkpoint)):
        if not Path(path).is_file():
            raise CheckpointError(f"{role} checkpoint {path} does not exist; check the path")
    cfg = _load_config("student", student_config, overrides)
    t_cfg = _load_config("teacher", teacher_config, teacher_overrides)  # its errors now, not after the data
    if cfg.model.type != t_cfg.model.type:
        raise ConfigError(f"check-teacher swaps the teacher's outputs into the student's location by location, so "
                          f"both must be of one family; the student config {cfg.name} is model.type="
                          f"{cfg.model.type!r}, the teacher config {t_cfg.name} model.type={t_cfg.model.type!r}. "
                          "For a heterogeneous pair compare `locdistill test` of the teacher and of the baseline "
                          "student on the same val data instead (docs/yolo.md)")
    dataset = eval_dataset(cfg, split)
    classes = len(dataset.classes)
    s_cfg, student, s_classes = load_detector("student", student_config, student_checkpoint, overrides, classes)
    if s_classes and s_classes != classes:
        raise ConfigError(f"student checkpoint {student_checkpoint} predicts {s_classes} classes but its data "
                          f"({getattr(dataset, 'json_path', cfg.data.dataset)}) has {classes}; check the student "
                          "config (--set data....) the checkpoint was trained with")
    _, teacher, _ = load_detector("teacher", teacher_config, teacher_checkpoint, teacher_overrides, classes)
    if teacher.num_classes != student.num_classes:
        raise ConfigError(f"teacher checkpoint {teacher_checkpoint} predicts {teacher.num_classes} classes but "
                          f"student checkpoint {student_checkpoint} predicts {student.num_classes}; use a teacher "
                          "trained on the student's classes")
    try:
        check_compatible(student, teacher, need_same_classes=True)
    except ConfigError as e:
        raise ConfigError(f"check-teacher needs teacher and student of the same layout (their outputs are swapped "
                          f"location by location): {str(e).split(' (heterogeneous LD')[0]}") from None
    device = select_device(cfg.train.device)
    student.to(device)
    teacher.to(device)
    cfg.model = s_cfg.model  # with the checkpoint's class count
    criterion = build_criterion(cfg)  # the student's assigner; no distill terms (none runs here)
    if cfg.distill.vlr_iou_mode not in VLR_IOU_MODES:
        raise ConfigError(f"distill.vlr_iou_mode={cfg.distill.vlr_iou_mode!r}: use one of {list(VLR_IOU_MODES)}")
    subset = dataset if images is None else torch.utils.data.Subset(dataset, range(min(images, len(dataset))))
    loader = build_dataloader(subset, cfg.data.batch_size, cfg.data.workers, shuffle=False,
                              size_divisor=cfg.data.size_divisor)
    detections, image_ids, boxes = collect(student, teacher, loader, criterion, cfg.test, device,
                                              cfg.distill.vlr_iou_mode)
    if not image_ids:
        raise ConfigError(f"no image of the {split} split could be read; nothing to measure")
    return TeacherCheck(str(student_checkpoint), str(teacher_checkpoint), split, len(image_ids),
                        evaluate_variants(dataset, detections, image_ids), boxes,
                        "TAL" if cfg.model.type == "yolo" else "ATSS")


# ----------------------------------------------------------------------------- report


def verdict(check: TeacherCheck) -> str:
    """The plain-words reading of ``check``, with the numbers behind it (rules of thumb, see the module)."""
    b = check.boxes
    if not b.positives:
        return (f"no {check.assigner} positives on these images (no annotated boxes?): the teacher cannot be judged here; "
                "use a split with annotations")
    d, share = check.headroom, b.better_share
    numbers = f"main LD headroom {d:+.1f} AP at the positives and the teacher's box is better at {share:.0f} % of them"
    if d >= HELPS_AP and share >= HELPS_SHARE:
        text = f"{numbers}: LD is likely to help (the headroom is its ceiling, not a promise)."
    elif d < NO_GAIN_AP and share < NO_GAIN_SHARE:
        knows = "less than" if d < 0 and share < 50 else "little more than"
        text = (f"headroom {d:+.1f} AP and the teacher is better at only {share:.0f} % of positives: this teacher "
                f"knows {knows} the student about boxes; expect no gain from LD, and possibly a loss.")
    elif d < NO_GAIN_AP:
        text = (f"headroom only {d:+.1f} AP although the teacher's box is better at {share:.0f} % of positives: "
                "its boxes are not better by enough to matter; expect no gain from LD, and possibly a loss.")
    elif share < NO_GAIN_SHARE:
        text = (f"headroom {d:+.1f} AP but the teacher is better at only {share:.0f} % of positives: LD would pull "
                "the student towards worse boxes about as often as towards better ones; expect little or no gain, "
                "possibly a loss.")
    else:
        text = (f"{numbers}: borderline; LD may give a little. Compare a short run with and without LD "
                "before a long one.")
    kd = check.delta("teacher cls")
    if kd >= KD_AP:
        text += (f" The teacher's class logits are worth {kd:+.1f} AP with the student's boxes: class KD "
                 "(distill.kd_weight) may add to it.")
    return text


def _pct(v: float) -> str:
    return "n/a" if v < 0 else f"{100 * v:.1f}"


def format_report(check: TeacherCheck) -> list[str]:
    """The lines ``check-teacher`` prints: the headroom table (markdown), the box comparison, the verdict."""
    lines = [f"student {check.student_checkpoint} / teacher {check.teacher_checkpoint}: {check.split} split, "
             f"{check.num_images} images, COCO bbox x100", "",
             "| student with | " + " | ".join(COLUMNS) + " | ΔAP |",
             "|---|" + "---|" * (len(COLUMNS) + 1)]
    for n in VARIANTS:
        m = check.metrics[n]
        delta = "n/a" if m["AP"] < 0 or check.metrics["none"]["AP"] < 0 else f"{check.delta(n):+.1f}"
        lines.append(f"| {LABELS[n].format(assigner=check.assigner)} | " + " | ".join(_pct(m[c]) for c in COLUMNS) + f" | {delta} |")
    b = check.boxes
    lines.append("")
    if b.positives:
        lines.append(f"at the student's {b.positives} {check.assigner} positives: mean IoU with the annotated box: teacher "
                     f"{b.mean_iou_teacher:.3f}, student {b.mean_iou_student:.3f}; the teacher's box is better "
                     f"at {b.better_share:.1f} % of them")
    else:
        lines.append(f"no {check.assigner} positives on these images")
    if check.split == "train":
        lines.append("(training split: scored against the boxes the student was trained on, noise included; "
                     "a teacher is best judged on val)")
    lines += ["", f"verdict: {verdict(check)}"]
    return lines
