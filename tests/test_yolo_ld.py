"""LD for the YOLO family: the same DistillTerms on YOLO DenseOutputs / Assignment, and heterogeneous pairs
(GFL -> YOLO, YOLO -> GFL) mapped onto the student's anchors and bins (docs/yolo.md, "Distillation")."""
from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

from locdistill.checkpoint import load_checkpoint
from locdistill.cli import main
from locdistill.config import Config, load_config, recipe_values
from locdistill.distill import Distiller, build_criterion
from locdistill.distill import criterion as dcrit
from locdistill.distill import regions, terms
from locdistill.distill.criterion import DistillTerms
from locdistill.errors import ConfigError
from locdistill.models.build import build_detector, load_detector
from locdistill.models.yolo import YOLO, YOLOCriterion


def tiny_yolo(num_classes: int = 3, seed: int = 0) -> YOLO:
    torch.manual_seed(seed)
    return YOLO(num_classes, depth=0.33, width=0.125, max_channels=1024)


def tiny_gfl(num_classes: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    cfg = Config()
    m = cfg.model
    m.num_classes = num_classes
    m.backbone.depth, m.backbone.base_channels = 18, 8
    m.neck.out_channels = m.head.feat_channels = 32
    m.head.stacked_convs, m.head.num_groups = 1, 8
    return build_detector(m)


TARGETS = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0], [30.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([0, 2])},
           {"boxes": torch.tensor([[4.0, 20.0, 36.0, 60.0]]), "labels": torch.tensor([1])}]
FULL = {k: v for k, v in recipe_values("full", 3).items() if k in {f for f in DistillTerms.__dataclass_fields__}}


def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64)


def full_criterion() -> YOLOCriterion:
    return YOLOCriterion(3, distill_terms=DistillTerms(**FULL))


# ----------------------------------------------------------------------------- same family


def test_same_weights_give_zero_kl_terms():
    student = tiny_yolo()
    dist = Distiller(student, copy.deepcopy(student)).eval()  # eval: identical outputs of both
    s_out, t_out = dist(images())
    losses = full_criterion()(s_out, TARGETS, t_out)
    assert {"loss_ld", "loss_ld_vlr", "loss_kd"} <= set(losses)
    for k in ("loss_ld", "loss_ld_vlr", "loss_kd"):
        assert losses[k].dtype == torch.float32 and abs(float(losses[k].detach())) < 1e-6, k


def test_terms_finite_and_gradients_reach_only_the_student():
    student, teacher = tiny_yolo(seed=0), tiny_yolo(seed=1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    dist = Distiller(student, teacher).train()
    opt = torch.optim.SGD([p for p in dist.parameters() if p.requires_grad], lr=0.1)
    s_out, t_out = dist(images())
    losses = full_criterion()(s_out, TARGETS, t_out)
    for k in ("loss_ld", "loss_ld_vlr", "loss_kd"):
        assert torch.isfinite(losses[k]) and losses[k] > 0, k
    (losses["loss_ld"] + losses["loss_ld_vlr"] + losses["loss_kd"]).backward()
    assert student.bbox_head.reg_branches[0][-1].weight.grad.abs().sum() > 0
    assert student.bbox_head.cls_branches[0][-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    opt.step()
    assert not teacher.training
    for k, v in teacher.state_dict().items():  # the teacher never changes (BN statistics included)
        assert torch.equal(v, before[k]), k


def test_yolo_assignment_feeds_the_shared_distill_terms(monkeypatch):
    # no YOLO-specific copy: the criterion's terms are distill/terms.py's and distill/regions.py's functions
    calls = []
    for mod, names in ((terms, ("box_kl", "ld_loss", "vlr_ld_loss", "kd_loss")),
                       (regions, ("main_region_weights", "vlr_weights"))):
        for name in names:
            original = getattr(mod, name)
            assert getattr(dcrit, name) is original

            def spy(*args, _f=original, _n=name, **kw):
                calls.append(_n)
                return _f(*args, **kw)
            monkeypatch.setattr(dcrit, name, spy)
    cfg = load_config("yolo/ld_yolov8s_yolov8n_digits")
    cfg.model.num_classes = 3
    cfg.distill.vlr_weight, cfg.distill.kd_weight = 0.25, 1.0
    crit = build_criterion(cfg)
    assert isinstance(crit, YOLOCriterion) and isinstance(crit.distill_terms, DistillTerms)
    assert crit.distill_terms.hetero_strides is None  # same layout: no mapping
    s_out, t_out = tiny_yolo(seed=0)(images()), tiny_yolo(seed=1)(images())
    losses = crit(s_out, TARGETS, t_out)
    assert {"box_kl", "ld_loss", "vlr_ld_loss", "kd_loss", "main_region_weights", "vlr_weights"} <= set(calls)
    assert all(torch.isfinite(losses[k]) for k in ("loss_ld", "loss_ld_vlr", "loss_kd"))


def test_yolo_vlr_substitute_and_main_region():
    crit = YOLOCriterion(3)
    dense = crit.flatten(tiny_yolo()(images()))
    a = crit.assign(dense, TARGETS)
    main_w = regions.main_region_weights(a)
    assert torch.equal(main_w, a.pos_weight) and (main_w[~a.pos] == 0).all() and (main_w[a.pos] > 0).any()
    vlr = regions.vlr_weights(a)
    assert vlr.shape == a.pos.shape and ((vlr >= 0) & (vlr <= 1)).all()
    assert (vlr > 0).any()  # the 8-stride squares give every GT a ring of VLR anchors
    assert (a.thresholds[a.gt_mask] > 0).all()


def test_crosshead_and_imitation_are_config_errors_for_yolo():
    cfg = load_config("yolo/ld_yolov8s_yolov8n_digits")
    cfg.distill.crosshead_ld_weight = 3.0
    with pytest.raises(ConfigError, match=r"cross-head.*distill.recipe=ld"):
        build_criterion(cfg)
    with pytest.raises(ConfigError, match="cross-head"):
        Distiller(tiny_yolo(), tiny_yolo(seed=1), crosshead_layer=-2)
    with pytest.raises(ConfigError, match="feature imitation"):
        Distiller(tiny_yolo(), tiny_yolo(seed=1), imitation=True)


# ----------------------------------------------------------------------------- heterogeneous pairs


def test_check_compatible_messages_for_gfl_yolo_pairs():
    yolo, gfl = tiny_yolo(), tiny_gfl()
    assert yolo.anchor_offset == 0.5 and not hasattr(gfl, "anchor_offset")
    with pytest.raises(ConfigError, match="strides"):
        Distiller(yolo, gfl)  # strict unless heterogeneous
    with pytest.warns(UserWarning, match=r"teacher level\(s\) P6 \(stride 64\), P7 \(stride 128\)") as rec:
        d = Distiller(yolo, gfl, heterogeneous=True)
    assert len(rec) == 1
    text = d.compatibility
    assert "levels matched by stride: P3 (stride 8), P4 (stride 16), P5 (stride 32)" in text
    assert "reg_max=16" in text and "reg_max=15" in text and "+0.5 student bins (left, top)" in text
    with pytest.warns(UserWarning, match=r"student level\(s\) P6 \(stride 64\), P7 \(stride 128\).*no LD"):
        text = Distiller(tiny_gfl(), tiny_yolo(), heterogeneous=True).compatibility
    assert "-0.5 student bins (left, top)" in text and "reg_max=15" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Distiller(tiny_yolo(), tiny_yolo(seed=1), heterogeneous=True).compatibility.startswith("same layout")


def test_gfl_teacher_terms_on_a_yolo_student_are_masked_to_matched_anchors():
    student, teacher = tiny_yolo(), tiny_gfl()
    with pytest.warns(UserWarning):
        dist = Distiller(student, teacher, heterogeneous=True).train()
    cfg = load_config("yolo/ld_gfl_r34_yolov8n_digits")
    cfg.model.num_classes = 3
    cfg.model.yolo.width = 0.125
    cfg.distill.__dict__.update(recipe_values("full", 3))
    crit = build_criterion(cfg)
    assert crit.distill_terms.hetero_strides == ((8, 16, 32, 64, 128), (8, 16, 32))
    s_out, t_out = dist(images())
    losses = crit(s_out, TARGETS, t_out)
    for k in ("loss_ld", "loss_ld_vlr", "loss_kd"):
        assert torch.isfinite(losses[k]) and losses[k] > 0, k
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())


# ----------------------------------------------------------------------------- CLI trainings on digits

SMALL = ["data.digits_train=32", "data.digits_val=16", "data.digits_image_size=64", "data.img_scale=(64, 64)",
         "data.batch_size=8", "data.workers=0", "train.epochs=1", "train.max_iters_per_epoch=2",
         "train.warmup_iters=2", "train.log_interval=1", "train.eval_interval=1", "train.device=cpu"]
TINY_YOLO = ["model.yolo.width=0.125"]
TINY_GFL = ["model.backbone.base_channels=8", "model.neck.out_channels=32", "model.head.feat_channels=32",
            "model.head.stacked_convs=1", "model.head.num_groups=8"]


def _train_records(wd):
    recs = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["mode"] == "train"]


def _no_teacher_in(ckpt):
    state = load_checkpoint(ckpt)["model"]
    return not any(k.startswith("teacher") for k in state)


def test_gfl_teacher_to_yolo_student_cli(tmp_path):
    wd = tmp_path / "gfl2yolo"
    with pytest.warns(UserWarning, match="P6"):
        assert main(["train", "yolo/ld_gfl_r34_yolov8n_digits", "--work-dir", str(wd), "--set", *SMALL,
                     *TINY_YOLO]) == 0
    recs = _train_records(wd)
    assert recs and all(r["loss_ld"] > 0 for r in recs)
    assert _no_teacher_in(wd / "latest.pth")
    model, _ = load_detector(load_config(wd / "config.py"), wd / "latest.pth")
    assert isinstance(model, YOLO)
    assert main(["test", str(wd / "config.py"), str(wd / "latest.pth"), "--set", *SMALL[:6]]) == 0


def test_yolo_teacher_to_gfl_student_cli(tmp_path):
    teacher = tmp_path / "yolo_teacher"
    assert main(["train", "yolo/yolov8n_digits", "--work-dir", str(teacher), "--set", *SMALL, *TINY_YOLO]) == 0
    t_bytes = (teacher / "latest.pth").read_bytes()
    wd = tmp_path / "yolo2gfl"
    with pytest.warns(UserWarning, match=r"student level\(s\) P6"):
        assert main(["train", "demo/ld_r34_r18_digits", "--work-dir", str(wd), "--set", *SMALL, *TINY_GFL,
                     f"distill.teacher_config={teacher / 'config.py'}",
                     f"distill.teacher_checkpoint={teacher / 'latest.pth'}", "distill.recipe=full"]) == 0
    recs = _train_records(wd)
    assert recs and all(r["loss_ld"] > 0 and r["loss_kd"] >= 0 for r in recs)
    assert all("loss_ld_vlr" in r for r in recs)
    assert (teacher / "latest.pth").read_bytes() == t_bytes  # the teacher never changes
    assert _no_teacher_in(wd / "latest.pth")
    assert main(["test", str(wd / "config.py"), str(wd / "latest.pth"), "--set", *SMALL[:6]]) == 0


def test_heterogeneous_gfl_pair_with_crosshead_is_a_config_error():
    cfg = load_config("demo/ld_r34_r18_digits")
    cfg.distill.teacher_config = "yolo/yolov8s_digits"
    cfg.distill.__dict__.update(recipe_values("crosshead", 10))
    with pytest.raises(ConfigError, match="cross-head"):  # a YOLO teacher: the family check
        build_criterion(cfg)
    cfg = load_config("demo/ld_r34_r18_digits")
    cfg.model.head.reg_max = 8  # same family, other bins: mapped for LD, not for cross-head
    cfg.distill.__dict__.update(recipe_values("crosshead", 10))
    with pytest.raises(ConfigError, match=r"another layout.*distill.recipe=ld"):
        build_criterion(cfg)
    cfg.distill.__dict__.update(recipe_values("full", 10))
    crit = build_criterion(cfg)
    assert crit.distill_terms.hetero_strides == ((8, 16, 32, 64, 128), (8, 16, 32, 64, 128))
