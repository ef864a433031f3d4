"""Behaviour of localization distillation: the Distiller, the LD / VLR / KD terms, the teacher
checks, the shipped LD configs and the teacher-assistant chain (DESIGN §5).

Everything runs on tiny GFL models (R-18/34/50 with 8 base channels, 16-channel FPN/head,
one stacked conv) and 64x64 images, so the whole file takes seconds on a CPU.
"""
from __future__ import annotations

import copy
import statistics
from fractions import Fraction

import pytest
import torch

from locdistill.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from locdistill.config import Config, ModelConfig, config_to_dict, dump_config_py, list_configs, load_config
from locdistill.distill import Distiller, build_teacher
from locdistill.errors import CheckpointError, ConfigError
from locdistill.losses import ld_kl_loss
from locdistill.models import build_detector
from locdistill.distill.regions import vlr_weights
from criteria import distilling_criterion

NUM_CLASSES = 3
SIZE = 64


def tiny_cfg(num_classes=NUM_CLASSES, depth=18, reg_max=16, num_outs=5, train_bn=False) -> ModelConfig:
    m = ModelConfig(num_classes=num_classes)
    m.backbone.depth = depth
    m.backbone.base_channels = 8
    if train_bn:  # every BatchNorm in train mode: running statistics change on each forward
        m.backbone.frozen_stages = -1
        m.backbone.norm_eval = False
    m.neck.out_channels = 16
    m.neck.num_outs = num_outs
    m.head.feat_channels = 16
    m.head.stacked_convs = 1
    m.head.num_groups = 8
    m.head.reg_max = reg_max
    m.head.strides = tuple(8 * 2 ** i for i in range(num_outs))
    return m


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return build_detector(tiny_cfg(**kw))


def images(n=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g).to(dtype)


def box_targets():
    """Two images, three GTs (boxes in 64x64 pixels)."""
    return [
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0], [30.0, 5.0, 60.0, 30.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[4.0, 4.0, 28.0, 36.0]]), "labels": torch.tensor([1])},
    ]


def empty_target():
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}


def criterion(**kw):
    """The LD configs' weights: LD 0.25 (T 10), VLR 0.25 (T 10), KD 10 (T 2)."""
    args = dict(ld_weight=0.25, vlr_weight=0.25, kd_weight=10.0,
                crosshead_ld_weight=0.0, crosshead_kd_weight=0.0, crosshead_box_weight=0.0)
    args.update(kw)
    return distilling_criterion(NUM_CLASSES, **args)


LD_KEYS = ("loss_ld", "loss_ld_vlr", "loss_kd")


# ----------------------------------------------------------------------------- the LD signal


def test_ld_is_zero_for_an_identical_teacher_and_positive_otherwise():
    student = tiny(0)
    x, targets = images(), box_targets()
    crit = criterion()

    same = Distiller(student, copy.deepcopy(student)).train()  # norm_eval: the student's BN use running stats
    s_out, t_out = same(x)
    for a, b in zip(s_out["box_logits"] + s_out["cls_logits"], t_out["box_logits"] + t_out["cls_logits"]):
        assert torch.equal(a, b)  # precondition: the teacher really is the student
    t = crit.assign(crit.flatten(s_out), targets)
    # both regions are non-empty
    assert t.pos.any() and (vlr_weights(t, crit.distill_terms.vlr_iou_mode) > 0).any()
    losses = crit(s_out, targets, t_out)
    for k in LD_KEYS:
        assert losses[k].item() == 0.0, k

    other = Distiller(student, tiny(1))
    s_out, t_out = other(x)
    losses = crit(s_out, targets, t_out)
    for k in LD_KEYS:
        assert losses[k].item() > 0, k
    (losses["loss_ld"] + losses["loss_ld_vlr"] + losses["loss_kd"]).backward()
    assert all(p.grad is None for p in other.teacher.parameters())  # nothing reaches the teacher
    assert other.student.bbox_head.gfl_reg.weight.grad.abs().sum() > 0  # LD reaches the student's box branch
    assert other.student.bbox_head.gfl_cls.weight.grad.abs().sum() > 0  # KD reaches its class branch


def test_teacher_is_frozen_through_training_steps():
    student, teacher = tiny(0, train_bn=True), tiny(1, train_bn=True)  # teacher BN would update if trained
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_bn = student.backbone.state_dict()["bn1.running_mean"].clone()
    dist = Distiller(student, teacher)
    dist.train()
    assert dist.training and dist.student.training
    assert not any(m.training for m in dist.teacher.modules())
    assert not any(p.requires_grad for p in dist.teacher.parameters())
    # a careless optimizer over *all* parameters (weight decay too) must still leave the teacher alone
    opt = torch.optim.SGD(dist.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    crit = criterion()
    for step in range(3):
        s_out, t_out = dist(images(seed=step))
        loss = sum(crit(s_out, box_targets(), t_out).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        dist.train()
    assert not torch.equal(student.backbone.state_dict()["bn1.running_mean"], student_bn)  # the student's BN moved
    after = teacher.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), f"teacher {k} changed"
    assert not dist.teacher.training and not any(m.training for m in dist.teacher.modules())
    dist.eval()
    dist.train(True)
    assert dist.student.training and not dist.teacher.training


def test_checkpoint_holds_the_student_only(tmp_path):
    student, teacher = tiny(0), tiny(1)
    dist = Distiller(student, teacher)
    path = save_checkpoint(tmp_path / "d.pth", dist, {"name": "x"}, {"classes": ["a", "b", "c"]})
    ck = load_checkpoint(path)
    assert set(ck["model"]) == set(student.state_dict())
    assert not any("teacher" in k for k in ck["model"])
    fresh = tiny(5)
    load_model_weights(fresh, ck, strict=True)
    for k, v in student.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_teacher_runs_without_autograd_and_follows_dtype():
    dist = Distiller(tiny(0), tiny(1))
    s_out, t_out = dist(images().requires_grad_())  # an input in the graph: only no_grad keeps the teacher out
    assert all(x.requires_grad for x in s_out["box_logits"])
    assert all(not x.requires_grad and x.grad_fn is None for x in t_out["box_logits"] + t_out["cls_logits"])

    dist.to(torch.float64)  # stands in for a device move: the teacher must follow like any submodule
    for name, tensor in list(dist.named_parameters()) + list(dist.named_buffers()):
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float64, name
    assert any(n.startswith("teacher.") for n, _ in dist.named_parameters())
    s_out, t_out = dist(images(dtype=torch.float64))
    assert s_out["box_logits"][0].dtype == t_out["box_logits"][0].dtype == torch.float64
    losses = criterion()(s_out, box_targets(), t_out)
    assert all(torch.isfinite(v) for v in losses.values())


# ----------------------------------------------------------------------------- compatibility checks


def test_mismatched_teachers_are_config_errors():
    with pytest.raises(ConfigError, match=r"reg_max=16 but student reg_max=8.*model.head.reg_max=16"):
        Distiller(tiny(0, reg_max=8), tiny(1, reg_max=16))
    with pytest.raises(ConfigError, match=r"strides.*\(8, 16, 32, 64, 128\).*\(8, 16, 32, 64\)"):
        Distiller(tiny(0, num_outs=4), tiny(1, num_outs=5))
    with pytest.raises(ConfigError, match=r"teacher has 5, student 3.*distill.kd_weight=0"):
        Distiller(tiny(0), tiny(1, num_classes=5), need_same_classes=True)
    # without class KD a teacher trained on other classes still teaches localisation
    dist = Distiller(tiny(0), tiny(1, num_classes=5), need_same_classes=False)
    s_out, t_out = dist(images())
    losses = criterion(kd_weight=0.0)(s_out, box_targets(), t_out)
    assert "loss_kd" not in losses and losses["loss_ld"] > 0 and losses["loss_ld_vlr"] > 0


def _teacher_files(tmp_path, **kw):
    cfg = Config(model=tiny_cfg(**kw))
    cfg_path = tmp_path / "tiny_teacher.py"
    cfg_path.write_text(dump_config_py(cfg))
    model = build_detector(cfg.model)
    return cfg_path, model


def test_build_teacher_loads_strictly(tmp_path):
    cfg_path, model = _teacher_files(tmp_path)
    good = save_checkpoint(tmp_path / "good.pth", model, meta={"classes": ["a", "b", "c"]})
    teacher = build_teacher(str(cfg_path), str(good))
    for k, v in model.state_dict().items():
        assert torch.equal(teacher.state_dict()[k], v)

    def broken(name, edit):
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        edit(sd)
        path = tmp_path / name
        torch.save({"model": sd, "meta": {"classes": ["a", "b", "c"]}}, path)
        with pytest.raises(CheckpointError) as e:
            build_teacher(str(cfg_path), str(path))
        assert f"teacher checkpoint {path}" in str(e.value)
        return str(e.value)

    msg = broken("missing.pth", lambda sd: sd.pop("bbox_head.gfl_reg.bias"))
    assert "missing in file (1): bbox_head.gfl_reg.*" in msg
    msg = broken("unexpected.pth", lambda sd: sd.__setitem__("bbox_head.extra.weight", torch.zeros(2)))
    assert "unexpected in file (1): bbox_head.extra.*" in msg
    msg = broken("shape.pth", lambda sd: sd.__setitem__("bbox_head.gfl_cls.weight", torch.zeros(7, 16, 3, 3)))
    assert "shape mismatch bbox_head.gfl_cls.weight: file [7, 16, 3, 3] vs model [3, 16, 3, 3]" in msg

    with pytest.raises(ConfigError, match="does not exist.*distill.teacher_checkpoint"):
        build_teacher(str(cfg_path), str(tmp_path / "nowhere.pth"))


# ----------------------------------------------------------------------------- reductions


def test_per_image_reduction_is_batch_size_invariant():
    dist = Distiller(tiny(0), tiny(1)).eval()  # eval: each image's outputs independent of the batch
    x, targets = images(2), box_targets()
    s2, t2 = dist(x)
    s4, t4 = dist(torch.cat([x, x]))
    targets4 = targets + targets
    for reduction in ("sum", "per_image"):
        crit = criterion(reduction=reduction)
        a, b = crit(s2, targets, t2), crit(s4, targets4, t4)
        factor = 2.0 if reduction == "sum" else 1.0
        for k in ("loss_ld", "loss_ld_vlr"):
            assert a[k] > 0
            torch.testing.assert_close(b[k], a[k] * factor, rtol=1e-5, atol=0)
        torch.testing.assert_close(b["loss_kd"], a["loss_kd"], rtol=1e-5, atol=0)  # per-level mean already

    x3 = images(3, seed=7)
    targets3 = box_targets() + [{"boxes": torch.tensor([[20.0, 20.0, 50.0, 58.0]]), "labels": torch.tensor([2])}]
    s3, t3 = dist(x3)
    a, b = criterion(reduction="sum")(s3, targets3, t3), criterion(reduction="per_image")(s3, targets3, t3)
    for k in ("loss_ld", "loss_ld_vlr"):
        assert a[k] > 0
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=0)


def test_empty_gt_gives_zero_distillation():
    dist = Distiller(tiny(0), tiny(1)).eval()
    x = images(2)
    s_out, t_out = dist(x)
    crit = criterion()
    losses = crit(s_out, [empty_target(), empty_target()], t_out)
    assert losses["loss_cls"] > 0
    for k in LD_KEYS:
        assert losses[k].item() == 0.0, k
    # an empty image adds nothing to a batch: the LD sums equal those of the other image alone
    one = crit({k: [v[:1] for v in vs] for k, vs in s_out.items()}, box_targets()[:1],
               {k: [v[:1] for v in vs] for k, vs in t_out.items()})
    mixed = crit(s_out, [box_targets()[0], empty_target()], t_out)
    for k in ("loss_ld", "loss_ld_vlr"):
        assert one[k] > 0
        torch.testing.assert_close(mixed[k], one[k], rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- VLR by hand
#
# One level, stride 8, anchors of side 16 (octave_base_scale 2) on a 2x3 grid, centred at
# (8j, 8i): index = 3i + j. One GT g = [1, 0, 25, 16] (24 x 16, area 384, centre (13, 8)).
#
#   idx  anchor             inter  union  IoU      rho^2  enclosing   c^2    DIoU            IoF (= inter/256)
#    0   [-8, -8,  8,  8]     56    584   7/73      233   33 x 24     1665   7/73  - 233/1665   56/256
#    1   [ 0, -8, 16,  8]    120    520   3/13       89   25 x 24     1201   3/13  -  89/1201  120/256
#    2   [ 8, -8, 24,  8]    128    512   1/4        73   24 x 24     1152   1/4   -  73/1152  128/256
#    3   [-8,  0,  8, 16]    112    528   7/33      169   33 x 16     1345   7/33  - 169/1345  112/256
#    4   [ 0,  0, 16, 16]    240    400   3/5        25   25 x 16      881   3/5   -  25/881   240/256
#    5   [ 8,  0, 24, 16]    256    384   2/3         9   24 x 16      832   2/3   -   9/832   256/256
#
# ATSS (topk 9 > 6 anchors: all are candidates): thr = mean + unbiased std of the six IoUs
# = 0.57506. Positives: IoU >= thr and centre inside g -> anchors 4 (0.6) and 5 (0.667).
# DIoU: 0.0959-0.1399=-0.044, 0.2308-0.0741=0.157, 0.25-0.0634=0.187, 0.2121-0.1257=0.087,
#       0.6-0.0284=0.572, 0.6667-0.0108=0.656.
# VLR = 0.25*thr (0.1438) <= DIoU < thr (0.5751) -> {1, 2, 4}: anchor 4 is a positive AND in the
# VLR (its DIoU 0.5716 is just under thr); 5 is above thr, 0 and 3 below 0.25*thr.
# IoF mode (the LD code's quirk): IoF - penalty = 0.079, 0.395, 0.437, 0.312, 0.909, 0.989
# -> {1, 2, 3}: anchor 3 enters (0.312), anchor 4 leaves (0.909 >= thr).
# VLR weight = the plain IoU with g.

HAND_ANCHORS = [[8.0 * j - 8, 8.0 * i - 8, 8.0 * j + 8, 8.0 * i + 8] for i in range(2) for j in range(3)]
HAND_GT = [1.0, 0.0, 25.0, 16.0]
HAND_IOU = [Fraction(7, 73), Fraction(3, 13), Fraction(1, 4), Fraction(7, 33), Fraction(3, 5), Fraction(2, 3)]
HAND_PENALTY = [Fraction(233, 1665), Fraction(89, 1201), Fraction(73, 1152), Fraction(169, 1345),
                Fraction(25, 881), Fraction(9, 832)]
HAND_IOF = [Fraction(n, 256) for n in (56, 120, 128, 112, 240, 256)]


def _hand_case(mode):
    crit = distilling_criterion(1, strides=(8,), octave_base_scale=2, topk=9, vlr_iou_mode=mode, ld_weight=0.25,
                                vlr_weight=0.25, kd_weight=10.0, crosshead_ld_weight=0.0, crosshead_kd_weight=0.0,
                                crosshead_box_weight=0.0)
    n1 = crit.reg_max + 1
    outputs = {"cls_logits": [torch.zeros(1, 1, 2, 3)], "box_logits": [torch.zeros(1, 4 * n1, 2, 3)]}
    targets = [{"boxes": torch.tensor([HAND_GT]), "labels": torch.tensor([0])}]
    return crit, outputs, targets


def test_hand_computation_is_self_consistent():
    # the table above, recomputed from the geometry with plain fractions
    gx, gy = (HAND_GT[0] + HAND_GT[2]) / 2, (HAND_GT[1] + HAND_GT[3]) / 2
    for a, iou, pen, iof in zip(HAND_ANCHORS, HAND_IOU, HAND_PENALTY, HAND_IOF):
        iw = max(0.0, min(a[2], HAND_GT[2]) - max(a[0], HAND_GT[0]))
        ih = max(0.0, min(a[3], HAND_GT[3]) - max(a[1], HAND_GT[1]))
        inter = Fraction(int(iw * ih))
        assert iou == inter / (256 + 384 - inter) and iof == inter / 256
        cw = max(a[2], HAND_GT[2]) - min(a[0], HAND_GT[0])
        ch = max(a[3], HAND_GT[3]) - min(a[1], HAND_GT[1])
        rho2 = ((a[0] + a[2]) / 2 - gx) ** 2 + ((a[1] + a[3]) / 2 - gy) ** 2
        assert pen == Fraction(int(rho2)) / Fraction(int(cw * cw + ch * ch))


@pytest.mark.parametrize("mode, expected_region", [("diou", {1, 2, 4}), ("iof", {1, 2, 3})])
def test_vlr_selection_matches_hand_computation(mode, expected_region):
    crit, outputs, targets = _hand_case(mode)
    t = crit.assign(crit.flatten(outputs), targets)
    assert t.anchors.tolist() == HAND_ANCHORS

    ious = [float(v) for v in HAND_IOU]
    thr = statistics.mean(ious) + statistics.stdev(ious)
    assert thr == pytest.approx(0.575059, abs=1e-6)
    torch.testing.assert_close(t.thresholds[0, 0], torch.tensor(thr), rtol=1e-6, atol=1e-6)
    assert set(t.pos[0].nonzero().flatten().tolist()) == {4, 5}

    overlap = HAND_IOU if mode == "diou" else HAND_IOF
    region = {i for i in range(6) if 0.25 * thr <= float(overlap[i] - HAND_PENALTY[i]) < thr}
    assert region == expected_region  # the hand table and the expectation agree
    expected = torch.tensor([float(HAND_IOU[i]) if i in region else 0.0 for i in range(6)])
    weights = vlr_weights(t, crit.distill_terms.vlr_iou_mode)[0]
    torch.testing.assert_close(weights, expected, rtol=1e-6, atol=1e-7)
    if mode == "diou":
        assert 4 in region and t.pos[0, 4]  # a positive may also be in the VLR

    # loss_ld_vlr = 0.25 * sum_a w_a * sum_sides T^2 mean-bin KL / 16 (DESIGN §5)
    g = torch.Generator().manual_seed(3)
    n1 = crit.reg_max + 1
    student_box = torch.randn(1, 4 * n1, 2, 3, generator=g)
    teacher_box = torch.randn(1, 4 * n1, 2, 3, generator=g)
    s_out = {"cls_logits": outputs["cls_logits"], "box_logits": [student_box]}
    t_out = {"cls_logits": outputs["cls_logits"], "box_logits": [teacher_box]}
    losses = crit(s_out, targets, t_out)
    per_anchor = [
        sum(ld_kl_loss(student_box[0, s * n1:(s + 1) * n1, i // 3, i % 3][None],
                       teacher_box[0, s * n1:(s + 1) * n1, i // 3, i % 3][None], T=10.0).item() for s in range(4))
        for i in range(6)
    ]
    want = 0.25 * sum(float(HAND_IOU[i]) * per_anchor[i] for i in region) / 16
    assert losses["loss_ld_vlr"].item() == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------------------------- configs and the TA chain

# main-region LD only (the LD repo README's GFLv1 tables) and the full recipe (main LD + VLR + class KD)
LD_CONFIGS = ["ld/ld_gflv1_r101_r18_fpn_coco_1x", "ld/ld_gflv1_r101_r34_fpn_coco_1x",
              "ld/ld_gflv1_r101_r50_fpn_coco_1x", "ld/ld_gflv1_r50_r50_fpn_coco_1x_self",
              "ld/ld_gflv1_r34_r18_fpn_coco_1x_ta", "ld/ld_gflv1_r18_r18_fpn_coco_1x_self",
              "ld/ld_gflv1_r101dcn_r101_fpn_coco_2x", "ld/ld_gflv1_x101dcn_x101dcn_fpn_coco_2x_self",
              "ld/ld_gflv1_x101dcn_x101dcn_fpn_coco_1x_self"]
FULL_CONFIGS = ["ld/ld_gflv1_r101_r18_fpn_coco_1x_full", "ld/ld_gflv1_r101_r34_fpn_coco_1x_full",
                "ld/ld_gflv1_r101_r50_fpn_coco_1x_full"]
OTHER_CONFIGS = {"ld/ld_gflv1_r101_r50_fpn_coco_1x_full_gi"}  # full + feature imitation: tests/test_imitation*


def test_every_ld_config_loads_with_the_paper_settings():
    # GFocalV1 LD configs; the GFLv2 ones (LD only, as the LD repo's) are checked in tests/test_zoo.py,
    # every published row against its config in tests/test_seed_rows.py
    shipped = [n for n in list_configs() if n.startswith("ld/ld_gflv1_") and n not in OTHER_CONFIGS]
    assert sorted(shipped) == sorted(LD_CONFIGS + FULL_CONFIGS)
    depths = {}
    for name in shipped:
        cfg = load_config(name)
        d = cfg.distill
        assert cfg.name == name.split("/")[1]
        if name in FULL_CONFIGS:  # the LD code's full recipe, its VLR selection included
            assert (d.ld_weight, d.ld_temperature, d.vlr_weight, d.vlr_temperature) == (0.25, 10.0, 0.25, 10.0)
            assert (d.kd_weight, d.kd_temperature, d.reduction, d.vlr_iou_mode) == (10.0, 2.0, "sum", "iof")
        else:  # main-region LD only, as the v1 code of the README's GFLv1 tables
            assert (d.ld_weight, d.ld_temperature, d.vlr_weight, d.kd_weight, d.reduction) == (0.25, 10.0, 0, 0, "sum")
        assert not d.crosshead
        assert d.teacher_checkpoint.endswith(".pth") and cfg.data.batch_size <= 3
        teacher = load_config(d.teacher_config)
        # what check_compatible will demand of the built models
        assert tuple(teacher.model.head.strides) == tuple(cfg.model.head.strides)
        assert teacher.model.head.reg_max == cfg.model.head.reg_max
        assert teacher.model.num_classes == cfg.model.num_classes
        depths[name] = (teacher.model.backbone.depth, cfg.model.backbone.depth)
    assert depths == {
        "ld/ld_gflv1_r101_r18_fpn_coco_1x": (101, 18), "ld/ld_gflv1_r101_r34_fpn_coco_1x": (101, 34),
        "ld/ld_gflv1_r101_r50_fpn_coco_1x": (101, 50), "ld/ld_gflv1_r50_r50_fpn_coco_1x_self": (50, 50),
        "ld/ld_gflv1_r34_r18_fpn_coco_1x_ta": (34, 18), "ld/ld_gflv1_r18_r18_fpn_coco_1x_self": (18, 18),
        "ld/ld_gflv1_r101dcn_r101_fpn_coco_2x": (101, 101), "ld/ld_gflv1_x101dcn_x101dcn_fpn_coco_2x_self": (101, 101),
        "ld/ld_gflv1_x101dcn_x101dcn_fpn_coco_1x_self": (101, 101),
        "ld/ld_gflv1_r101_r18_fpn_coco_1x_full": (101, 18), "ld/ld_gflv1_r101_r34_fpn_coco_1x_full": (101, 34),
        "ld/ld_gflv1_r101_r50_fpn_coco_1x_full": (101, 50),
    }
    self_ld = load_config("ld/ld_gflv1_r50_r50_fpn_coco_1x_self")
    assert config_to_dict(load_config(self_ld.distill.teacher_config).model) == config_to_dict(self_ld.model)
    ta = load_config("ld/ld_gflv1_r34_r18_fpn_coco_1x_ta")
    assert ta.distill.teacher_config == "ld/ld_gflv1_r101_r34_fpn_coco_1x"  # the distilled R-34 is the teacher
    assert ta.distill.teacher_checkpoint == "work_dirs/ld_gflv1_r101_r34_fpn_coco_1x/latest.pth"


def test_teacher_assistant_chain_needs_no_conversion(tmp_path):
    classes = ["a", "b", "c"]
    # 1. the big teacher ("R-101", here a tiny R-50), trained normally
    big_cfg = Config(name="big", model=tiny_cfg(depth=50))
    (tmp_path / "big.py").write_text(dump_config_py(big_cfg))
    torch.manual_seed(0)
    big_ckpt = save_checkpoint(tmp_path / "big.pth", build_detector(big_cfg.model), meta={"classes": classes})

    # 2. the assistant ("R-34") distilled from it with an LD config, saved like fit() does (optimizer too)
    ta_cfg = Config(name="ld_ta", model=tiny_cfg(depth=34))
    ta_cfg.distill.teacher_config = str(tmp_path / "big.py")
    ta_cfg.distill.teacher_checkpoint = str(big_ckpt)
    (tmp_path / "ld_ta.py").write_text(dump_config_py(ta_cfg))
    ta_cfg = load_config(tmp_path / "ld_ta.py")
    torch.manual_seed(1)
    dist = Distiller(build_detector(ta_cfg.model),
                     build_teacher(ta_cfg.distill.teacher_config, ta_cfg.distill.teacher_checkpoint))
    opt = torch.optim.SGD([p for p in dist.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    s_out, t_out = dist(images())
    sum(criterion()(s_out, box_targets(), t_out).values()).backward()
    opt.step()
    ta_ckpt = save_checkpoint(tmp_path / "ld_ta" / "latest.pth", dist, config_to_dict(ta_cfg),
                              {"classes": classes, "epoch": 1, "iter": 1}, opt)

    # 3. the student ("R-18") uses the distilled checkpoint + the LD config as its teacher, as is;
    #    the LD config's own teacher must not be needed (its checkpoint may be gone by now)
    big_ckpt.unlink()
    teacher = build_teacher(str(tmp_path / "ld_ta.py"), str(ta_ckpt))
    assert teacher.backbone.state_dict().keys() == dist.student.backbone.state_dict().keys()
    for k, v in dist.student.state_dict().items():
        assert torch.equal(teacher.state_dict()[k], v), k
    torch.manual_seed(2)
    student = build_detector(tiny_cfg(depth=18))
    final = Distiller(student, teacher)
    s_out, t_out = final(images())
    losses = criterion()(s_out, box_targets(), t_out)
    assert all(losses[k] > 0 for k in LD_KEYS)
    assert not any("teacher" in k for k in load_checkpoint(
        save_checkpoint(tmp_path / "final.pth", final))["model"])
