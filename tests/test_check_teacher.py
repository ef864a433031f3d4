"""``locdistill check-teacher``: headroom rows, teacher vs student boxes, verdict, errors.

Tiny random models on a tiny digits split. The expectations do not come from the tool:
a teacher that *is* the student (same file) changes nothing in any row and is never
strictly better; a teacher that differs from the student only in its box regression
layer leaves the class side unchanged ("teacher cls" = the student, "all" = the
teacher alone); the student's mean IoU at its positives is the mean of the criterion's
QFL targets there (IoU of its box with the GT on positives).
"""
from __future__ import annotations

import pytest
import torch

from locdistill.boxes import bbox_overlaps
from locdistill.checkpoint import save_checkpoint
from locdistill.cli import main
from locdistill.config import load_config
from locdistill.data.loader import build_dataloader, build_dataset
from locdistill.distill import build_criterion
from locdistill.errors import ConfigError
from locdistill.models.build import build_detector
from locdistill.tools.check_teacher import (
    REGIONS, VARIANTS, BoxComparison, TeacherCheck, check_teacher, format_report, verdict,
)

CONFIG = "demo/gfl_r18_digits"
MODEL = ["model.backbone.base_channels=8", "model.neck.out_channels=32", "model.head.feat_channels=32",
         "model.head.stacked_convs=1", "model.head.num_groups=8"]
# score_thr=0: a random head scores ~0.01 everywhere; keep its detections so AP is not trivially 0
DATA = ["data.digits_train=8", "data.digits_val=6", "data.digits_image_size=96", "data.img_scale=(96, 96)",
        "data.batch_size=3", "data.workers=0", "train.device=cpu", "test.score_thr=0.0"]


def _box_layers(model) -> list:
    """The last box-regression conv(s): GFL's shared ``gfl_reg``, YOLO's last 1×1 conv per level."""
    head = model.bbox_head
    return [head.gfl_reg] if hasattr(head, "gfl_reg") else [branch[-1] for branch in head.reg_branches]


def _save(path, num_classes: int = 10, seed: int = 0, reg_noise: float = 0.0, state=None,
          config: str = CONFIG, overrides=MODEL):
    """A random detector of ``config`` (optionally ``state`` with noise on its box layers) saved to ``path``."""
    cfg = load_config(config, [*overrides, f"model.num_classes={num_classes}"])
    torch.manual_seed(seed)
    model = build_detector(cfg.model)
    if state is not None:
        model.load_state_dict(state)
    if reg_noise:
        with torch.no_grad():
            for layer in _box_layers(model):
                w = layer.weight
                w.add_(reg_noise * torch.randn(w.shape, generator=torch.Generator().manual_seed(1)))
    save_checkpoint(path, model, meta={"classes": [str(i) for i in range(num_classes)]})
    return model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("check_teacher")
    student = _save(d / "student.pth")
    _save(d / "reg_teacher.pth", state=student.state_dict(), reg_noise=0.05)
    _save(d / "three.pth", num_classes=3)
    return d


def _check(ckpts, teacher: str, **kw) -> TeacherCheck:
    return check_teacher(CONFIG, str(ckpts / "student.pth"), CONFIG, str(ckpts / teacher),
                         overrides=[*MODEL, *DATA], teacher_overrides=MODEL, **kw)


def test_teacher_that_is_the_student_changes_nothing(ckpts):
    check = _check(ckpts, "student.pth")
    assert check.num_images == 6 and check.split == "val"
    assert check.metrics["none"]["AR100"] > 0  # the rows compare real detections, not empty sets
    for n in VARIANTS:
        assert check.metrics[n] == check.metrics["none"], n
        assert check.delta(n) == 0.0
    b = check.boxes
    assert b.positives > 0
    assert b.teacher_better == 0 and b.better_share == 0.0
    assert b.mean_iou_teacher == b.mean_iou_student
    assert "expect no gain" in verdict(check)


def test_teacher_differing_only_in_boxes_keeps_the_class_side(ckpts):
    check = _check(ckpts, "reg_teacher.pth", images=4)
    assert check.num_images == 4
    assert check.metrics["teacher cls"] == check.metrics["none"]  # same class logits, student's boxes
    assert check.metrics["all"] == check.metrics["teacher"]  # same class logits, teacher's boxes
    b = check.boxes
    assert 0 < b.teacher_better < b.positives
    assert b.mean_iou_teacher != b.mean_iou_student

    # the student's mean IoU at its positives = the mean QFL target there (computed by the criterion)
    cfg = load_config(CONFIG, [*MODEL, *DATA])
    student = build_detector(cfg.model)
    student.load_state_dict(torch.load(ckpts / "student.pth", weights_only=True)["model"])
    data = torch.utils.data.Subset(build_dataset(cfg.data, "val"), range(4))
    criterion = build_criterion(cfg)
    total, count = 0.0, 0
    with torch.no_grad():
        for images, targets in build_dataloader(data, 3, 0, shuffle=False):
            dense = criterion.flatten(student.eval()(images))
            asg = criterion.assign(dense, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets],
                                   [t["pad_shape"] for t in targets])
            tg = criterion.box_targets(dense, asg)
            total += float(tg.scores[asg.pos].sum())
            count += int(asg.pos.sum())
    assert count == b.positives
    assert b.mean_iou_student == pytest.approx(total / count, rel=1e-5)


def _synthetic(headroom: float, better: int, kd: float = 0.0) -> TeacherCheck:
    base = 0.40
    metrics = {n: {"AP": base} for n in VARIANTS}
    metrics["positives"] = {"AP": base + headroom / 100}
    metrics["teacher cls"] = {"AP": base + kd / 100}
    return TeacherCheck("s.pth", "t.pth", "val", 500, metrics, BoxComparison(100, 80.0, 78.0, better))


def test_verdict_rules_of_thumb():
    demo = verdict(_synthetic(9.0, 76, kd=4.5))
    assert "+9.0 AP" in demo and "76 %" in demo and "likely to help" in demo and "class KD" in demo
    same = verdict(_synthetic(0.3, 51))
    assert "+0.3 AP" in same and "51 %" in same and "expect no gain" in same and "class KD" not in same
    assert "expect no gain" in verdict(_synthetic(0.5, 80))  # better often, but by too little
    assert "little or no gain" in verdict(_synthetic(3.0, 50))  # some headroom, teacher better at only half
    assert "borderline" in verdict(_synthetic(1.5, 65))
    assert set(REGIONS) < set(VARIANTS)


def test_cli_prints_table_boxes_and_verdict(ckpts, capsys):
    s = str(ckpts / "student.pth")
    rc = main(["check-teacher", CONFIG, s, CONFIG, s, "--images", "3", "--set", *MODEL, *DATA,
               "--teacher-set", *MODEL])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| the student as it is |" in out and "| the teacher alone |" in out
    assert "the teacher's box is better at 0.0 % of them" in out
    assert "verdict: headroom +0.0 AP and the teacher is better at only 0 % of positives" in out


def test_cli_class_count_mismatch_is_a_one_line_error(ckpts, capsys):
    s, t = str(ckpts / "student.pth"), str(ckpts / "three.pth")
    rc = main(["check-teacher", CONFIG, s, CONFIG, t, "--set", *MODEL, *DATA, "--teacher-set", *MODEL])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert t in err and s in err and "3 classes" in err and "10" in err


def test_cli_missing_checkpoint(ckpts, capsys):
    missing = str(ckpts / "nope.pth")
    rc = main(["check-teacher", CONFIG, str(ckpts / "student.pth"), CONFIG, missing, "--set", *MODEL, *DATA])
    err = capsys.readouterr().err
    assert rc == 2 and f"teacher checkpoint {missing} does not exist" in err


def test_teacher_architecture_hint_names_teacher_set_and_following_it_works(ckpts, capsys):
    import re
    import shlex

    s = str(ckpts / "student.pth")
    argv = ["check-teacher", CONFIG, s, CONFIG, s, "--images", "3", "--set", *MODEL, *DATA]
    assert main(argv) == 2
    err = capsys.readouterr().err
    fix = re.search(r"Or override the teacher's config: (--teacher-set .*)", err).group(1)
    assert "model.backbone.base_channels=8" in fix
    assert main(argv + shlex.split(fix)) == 0


# ----------------------------------------------------------------------------- the YOLO family

Y_CONFIG = "yolo/yolov8n_digits"
Y_MODEL = ["model.yolo.width=0.125", "model.yolo.depth=0.2"]


def _save_yolo(path, reg_max: int = 16, **kw):
    return _save(path, config=Y_CONFIG, overrides=[*Y_MODEL, f"model.yolo.reg_max={reg_max}"], **kw)


@pytest.fixture(scope="module")
def yolo_ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("check_teacher_yolo")
    student = _save_yolo(d / "student.pth")
    _save_yolo(d / "reg_teacher.pth", state=student.state_dict(), reg_noise=0.05)
    _save_yolo(d / "bins8.pth", reg_max=8)
    return d


def _check_yolo(d, teacher: str, teacher_model=(), **kw) -> TeacherCheck:
    return check_teacher(Y_CONFIG, str(d / "student.pth"), Y_CONFIG, str(d / teacher),
                         overrides=[*Y_MODEL, *DATA], teacher_overrides=[*Y_MODEL, *teacher_model], **kw)


def test_yolo_teacher_that_is_the_student_changes_nothing(yolo_ckpts):
    check = _check_yolo(yolo_ckpts, "student.pth")
    assert check.assigner == "TAL" and check.num_images == 6
    assert check.metrics["none"]["AR100"] > 0
    for n in VARIANTS:
        assert check.metrics[n] == check.metrics["none"], n
    assert check.boxes.positives > 0 and check.boxes.teacher_better == 0
    report = "\n".join(format_report(check))
    assert "student's TAL positives (main LD)" in report and "ATSS" not in report


def test_yolo_teacher_differing_only_in_boxes(yolo_ckpts):
    check = _check_yolo(yolo_ckpts, "reg_teacher.pth", images=4)
    assert check.metrics["teacher cls"] == check.metrics["none"]
    # equal only if the mixed outputs are decoded as YOLO outputs (cell-centre points), as the teacher's own
    assert check.metrics["all"] == check.metrics["teacher"]
    b = check.boxes
    assert 0 < b.teacher_better < b.positives

    # the student's mean IoU at its TAL positives, decoded here independently: distances are the
    # expected bin (0..15) times the stride, measured from the cell centres ((j + 0.5)·s, (i + 0.5)·s)
    cfg = load_config(Y_CONFIG, [*Y_MODEL, *DATA])
    student = build_detector(cfg.model)
    student.load_state_dict(torch.load(yolo_ckpts / "student.pth", weights_only=True)["model"])
    data = torch.utils.data.Subset(build_dataset(cfg.data, "val"), range(4))
    criterion = build_criterion(cfg)
    total, count = 0.0, 0
    with torch.no_grad():
        for images, targets in build_dataloader(data, 3, 0, shuffle=False):
            out = student.eval()(images)
            boxes = []
            for s, box in zip((8, 16, 32), out["box_logits"]):
                B, _, H, W = box.shape
                p = box.reshape(B, 4, 16, H, W).softmax(2)
                d = (p * torch.arange(16.0).view(1, 1, 16, 1, 1)).sum(2) * s  # [B, 4, H, W]
                ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
                xy = torch.stack([xs * s - d[:, 0], ys * s - d[:, 1], xs * s + d[:, 2], ys * s + d[:, 3]], -1)
                boxes.append(xy.reshape(B, H * W, 4))
            boxes = torch.cat(boxes, 1)
            gt = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
            asg = criterion.assign(criterion.flatten(out), gt, [t["pad_shape"] for t in targets])
            for i in range(len(targets)):
                pos = asg.pos[i]
                matched = asg.gt_boxes[i][asg.gt_index[i][pos]]
                total += float(bbox_overlaps(boxes[i][pos], matched, is_aligned=True).sum())
                count += int(pos.sum())
    assert count == b.positives
    assert b.mean_iou_student == pytest.approx(total / count, rel=1e-4)


def test_yolo_pairs_of_another_layout_or_family_are_refused(yolo_ckpts):
    with pytest.raises(ConfigError, match=r"same layout .*teacher reg_max=7 but student reg_max=15"):
        _check_yolo(yolo_ckpts, "bins8.pth", teacher_model=["model.yolo.reg_max=8"])
    with pytest.raises(ConfigError, match=r"both must be of one family; the student config yolov8n_digits is "
                                          r"model.type='yolo', the teacher config gfl_r34_digits_teacher"):
        check_teacher(Y_CONFIG, str(yolo_ckpts / "student.pth"), "demo/gfl_r34_digits_teacher",
                      str(yolo_ckpts / "student.pth"))
