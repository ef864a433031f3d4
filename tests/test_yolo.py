"""The YOLOv8 family: scales, points, TAL, CIoU, DFL bins, training / testing through the engine."""
from __future__ import annotations

import math

import pytest
import torch

from locdistill.cli import main
from locdistill.config import Config, load_config
from locdistill import config as lcfg
from locdistill.distill import build_criterion
from locdistill.errors import ConfigError
from locdistill.losses import ciou, ciou_loss
from locdistill.models.build import build_detector, load_detector, postprocess
from locdistill.models.dense import Assignment, DenseOutputs, integral
from locdistill.models.yolo import YOLO, YOLOCriterion
from locdistill.models.yolo.assigner import TaskAlignedAssigner
from locdistill.models.yolo.postprocess import yolo_postprocess

PUBLISHED_M = {"n": 3.2, "s": 11.2, "m": 25.9, "l": 43.7, "x": 68.2}


def tiny_yolo(num_classes: int = 3) -> YOLO:
    torch.manual_seed(0)
    return YOLO(num_classes, depth=0.33, width=0.125, max_channels=1024)


@pytest.mark.parametrize("scale", sorted(PUBLISHED_M))
def test_parameter_counts_match_published(scale):
    cfg = load_config(f"yolo/yolov8{scale}_coco")
    assert cfg.model.type == "yolo" and cfg.model.num_classes == 80
    with torch.device("meta"):
        model = build_detector(cfg.model)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - PUBLISHED_M[scale]) / PUBLISHED_M[scale] < 0.02, (scale, count)


def test_points_at_cell_centres():
    crit = YOLOCriterion(2)
    outputs = {"cls_logits": [torch.zeros(1, 2, 4, 6), torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 1, 2)],
               "box_logits": [torch.zeros(1, 64, 4, 6), torch.zeros(1, 64, 2, 3), torch.zeros(1, 64, 1, 2)]}
    dense = crit.flatten(outputs)
    assert dense.points.shape == (24 + 6 + 2, 2) and dense.box_logits.shape == (1, 32, 4, 16)
    assert dense.reg_max == 15 and dense.level_sizes == ((4, 6), (2, 3), (1, 2))
    assert dense.points[0].tolist() == [4.0, 4.0]  # (j+0.5)·8, (i+0.5)·8
    assert dense.points[7].tolist() == [12.0, 12.0]  # row 1, column 1 of P3
    assert dense.points[24].tolist() == [8.0, 8.0] and dense.strides[24] == 16  # first cell of P4
    assert dense.points[-1].tolist() == [48.0, 16.0] and dense.level_ids[-1] == 2
    assert torch.equal(dense.centers, dense.points / dense.strides[:, None])


def test_ciou_hand_computed():
    # same aspect: IoU 1/7, centre distance² 2, enclosing diagonal² 18, v = 0
    a, b = torch.tensor([0.0, 0.0, 2.0, 2.0]), torch.tensor([1.0, 1.0, 3.0, 3.0])
    assert ciou(a, b).item() == pytest.approx(1 / 7 - 2 / 18, abs=1e-6)
    assert ciou_loss(a, b).item() == pytest.approx(1 - (1 / 7 - 2 / 18), abs=1e-6)
    # 2×1 against 1×2 at the origin: IoU 1/3, ρ² = 0.5, c² = 8, v = 4/π² (atan 2 − atan ½)²
    p, t = torch.tensor([[0.0, 0.0, 2.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0, 2.0]])
    v = 4 / math.pi ** 2 * (math.atan(2) - math.atan(0.5)) ** 2
    alpha = v / (v - 1 / 3 + 1)
    assert ciou(p, t).item() == pytest.approx(1 / 3 - 0.5 / 8 - alpha * v, abs=1e-5)
    assert ciou(t, t).item() == pytest.approx(1.0, abs=1e-6)


def test_task_aligned_assignment_hand_case():
    # P3-like grid of 4×4 points (stride 8, centres 4, 12, 20, 28); one GT [0,0,16,16] holds 4 points
    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    points = (torch.stack([xs.reshape(-1), ys.reshape(-1)], -1) + 0.5) * 8  # [16, 2]
    pred = torch.cat([points - 1, points + 1], -1)  # tiny boxes: IoU with the GT ≈ 0
    pred[0] = torch.tensor([0.0, 0.0, 16.0, 16.0])  # point (4, 4): exact box
    pred[5] = torch.tensor([0.0, 0.0, 16.0, 14.0])  # point (12, 12): good box
    pred = pred[None].repeat(2, 1, 1)
    scores = torch.full((2, 16, 3), 0.5)
    gt_boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0]], [[0.0, 0.0, 0.0, 0.0]]])
    gt_labels = torch.tensor([[1], [0]])
    gt_mask = torch.tensor([[True], [False]])  # image 1 has no GT (a padding slot)
    res = TaskAlignedAssigner(topk=2, alpha=0.5, beta=6.0).assign(scores, pred, points, gt_labels, gt_boxes, gt_mask)
    assert res.pos[0].nonzero().flatten().tolist() == [0, 5]
    assert not res.pos[1].any() and (res.gt_index[1] == -1).all()
    assert res.gt_index[0, 0] == 0 and res.gt_index[0, 5] == 0 and res.gt_index[0, 1] == -1
    # normalised metric: the GT's best anchor gets its best IoU (1), the other (iou5/iou0)^β times that
    iou5 = ciou(pred[0, 5], gt_boxes[0, 0]).item()
    assert res.norm_metric[0, 0].item() == pytest.approx(1.0, abs=1e-4)
    assert res.norm_metric[0, 5].item() == pytest.approx(iou5 ** 6, rel=1e-4)
    assert res.norm_metric[0, 1] == 0 and (res.norm_metric[1] == 0).all()


def test_task_aligned_assignment_conflict_keeps_the_larger_iou():
    points = torch.tensor([[8.0, 8.0], [40.0, 40.0]])
    pred = torch.tensor([[[2.0, 2.0, 14.0, 14.0], [39.0, 39.0, 41.0, 41.0]]])  # anchor 0 fits GT 1 best
    gt_boxes = torch.tensor([[[0.0, 0.0, 30.0, 30.0], [2.0, 2.0, 14.0, 14.0]]])  # both GTs hold point 0
    res = TaskAlignedAssigner(topk=1).assign(torch.full((1, 2, 2), 0.5), pred, points, torch.tensor([[0, 1]]),
                                             gt_boxes, torch.ones(1, 2, dtype=torch.bool))
    assert res.pos.tolist() == [[True, False]] and res.gt_index[0, 0] == 1
    assert res.mask_pos[0, :, 0].tolist() == [False, True]


def test_losses_float32_under_autocast():
    model = tiny_yolo(2)
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([1])}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 64, 64))
    losses = YOLOCriterion(2)(out, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_assignment_and_losses_are_dense_interface():
    crit = YOLOCriterion(3)
    model = tiny_yolo(3)
    out = model(torch.randn(2, 3, 64, 64))
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0], [30.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([0, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    dense = crit.flatten(out)
    assert isinstance(dense, DenseOutputs)
    a = crit.assign(dense, targets, image_sizes=[(64, 64), (64, 32)])
    assert isinstance(a, Assignment) and a.pos.shape == (2, 64 + 16 + 4)
    assert a.pos[0].any() and not a.pos[1].any()
    assert ((a.pos_weight >= 0) & (a.pos_weight <= 1)).all() and (a.pos_weight[~a.pos] == 0).all()
    assert a.anchors.shape == (84, 4) and a.anchor_ious.shape == (2, 84, 2) and a.thresholds.shape == (2, 2)
    assert not a.valid[1][dense.points[:, 0] > 32].any()  # outside image 1's padded extent
    losses = crit(out, targets, image_sizes=[(64, 64), (64, 32)])
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_dfl"}
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    sum(losses.values()).backward()
    head = model.bbox_head
    assert head.cls_branches[0][-1].weight.grad.abs().sum() > 0
    assert head.reg_branches[0][-1].weight.grad.abs().sum() > 0
    assert model.backbone.stem.conv.weight.grad is not None


def test_dfl_bins_and_head_layout():
    model = tiny_yolo(5)
    assert model.reg_max == 15 and model.bbox_head.num_bins == 16
    out = model(torch.zeros(1, 3, 64, 64))
    assert [t.shape[1] for t in out["box_logits"]] == [64, 64, 64]  # 4 sides × 16 bins
    assert [t.shape[-1] for t in out["cls_logits"]] == [8, 4, 2]
    assert out["point_offset"] == 0.5
    # bias init: box 1.0, class log(5 / C / (640/s)²)
    assert torch.allclose(model.bbox_head.reg_branches[1][-1].bias, torch.ones(64))
    assert model.bbox_head.cls_branches[2][-1].bias[0].item() == pytest.approx(math.log(5 / 5 / 20 ** 2))
    dense = YOLOCriterion(5).flatten({k: v for k, v in out.items() if k != "point_offset"})
    assert dense.distances().shape == (1, 84, 4)
    assert torch.allclose(integral(torch.zeros(4, 16)), torch.full((4,), 7.5))  # bins take the values 0..15
    # 16 bins per side in the config, 15 = the top bin value in DenseOutputs terms
    crit = YOLOCriterion(5)
    assert crit.reg_max == 15 and crit.num_bins == 16


def test_predict_shapes_and_centre_decoding():
    model = tiny_yolo(3).eval()
    metas = [{"img_shape": (64, 64), "scale_factor": (1.0, 1.0)}, {"img_shape": (64, 48), "scale_factor": (0.5, 0.5)}]
    res = model.predict(torch.randn(2, 3, 64, 64), metas, lcfg.TestConfig(score_thr=0.0, max_per_img=7))
    assert len(res) == 2
    for r in res:
        assert r["boxes"].shape[1:] == (4,) and r["boxes"].shape[0] == r["scores"].shape[0] == r["labels"].shape[0] <= 7
        assert r["labels"].dtype == torch.long
    # one confident cell of P3 at (row 1, col 2): distances of 2 bins on every side → box around (20, 12)
    cls = [torch.full((1, 1, 2, 4), -20.0), torch.full((1, 1, 1, 2), -20.0), torch.full((1, 1, 1, 1), -20.0)]
    cls[0][0, 0, 1, 2] = 10.0
    box = [torch.full((1, 64, 2, 4), -30.0), torch.zeros(1, 64, 1, 2), torch.zeros(1, 64, 1, 1)]
    for side in range(4):
        box[0][0, side * 16 + 2] = 30.0
    outputs = {"cls_logits": cls, "box_logits": box, "point_offset": 0.5}
    meta = [{"img_shape": (64, 64), "scale_factor": (1.0, 1.0)}]
    for fn in (yolo_postprocess, postprocess):  # the family dispatcher picks the YOLO decoding
        r = fn(outputs, meta, lcfg.TestConfig(score_thr=0.5), (8, 16, 32), 15)[0]
        assert r["boxes"].shape == (1, 4)
        assert torch.allclose(r["boxes"][0], torch.tensor([4.0, 0.0, 36.0, 28.0]), atol=1e-3)


def test_config_dispatch_and_teacher_error():
    cfg = load_config("yolo/yolov8n_digits")
    assert cfg.model.type == "yolo" and cfg.data.dataset == "digits"
    crit = build_criterion(cfg)
    assert isinstance(crit, YOLOCriterion)
    assert (crit.loss_cls_weight, crit.loss_bbox_weight, crit.loss_dfl_weight) == (0.5, 7.5, 1.5)
    assert (crit.assigner.topk, crit.assigner.alpha, crit.assigner.beta) == (10, 0.5, 6.0)
    cfg.distill.teacher_config = "yolo/yolov8s_digits"
    with pytest.raises(ConfigError, match="yolo"):
        build_criterion(cfg)
    bad = Config()
    bad.model.type = "yolov9"
    with pytest.raises(ConfigError, match="model.type"):
        build_detector(bad.model)


def test_train_two_iterations_and_test(tmp_path):
    tiny = ["data.digits_train=16", "data.digits_val=8", "data.digits_image_size=64", "data.img_scale=(64, 64)",
            "data.batch_size=8", "data.workers=0", "train.epochs=1", "train.max_iters_per_epoch=2",
            "train.warmup_iters=2", "train.log_interval=1", "train.eval_interval=1", "train.device=cpu",
            "model.yolo.width=0.125"]
    wd = tmp_path / "yolo"
    assert main(["train", "yolo/yolov8n_digits", "--work-dir", str(wd), "--set", *tiny]) == 0
    assert (wd / "latest.pth").is_file()
    model, classes = load_detector(load_config(wd / "config.py"), wd / "latest.pth")
    assert isinstance(model, YOLO) and classes == [str(i) for i in range(10)]
    assert main(["test", str(wd / "config.py"), str(wd / "latest.pth"), "--set", *tiny[:5]]) == 0
