"""Feature imitation (the LD code's IMLoss): region masks and the per-level masked MSE against
hand-computed values, gradients that reach only the student, zero loss for a student equal to its
teacher, the config switches, the Distiller's FPN taps and adapter, and a tiny digits training.

Hand-computed cases: 1 image, 2 levels of 2x2 locations (strides 8 and 16), 2 channels, so
``A = 8`` anchors in the head's order (level 0 row-major, then level 1).
"""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torchvision

from locdistill.checkpoint import load_checkpoint
from locdistill.config import DistillConfig, ModelConfig, apply_overrides, load_config
from locdistill.distill import Distiller, ImitationAdapter
from locdistill.errors import ConfigError
from locdistill.distill.imitation import (IMITATION_MODES, finegrained_region, flatten_features, gi_region,
                                          greedy_nms_topk, imitation_loss, imitation_region, inside_gt_region,
                                          masked_mse_per_level)
from locdistill.models import build_detector
from criteria import distilling_criterion
from locdistill.distill import build_criterion

COUNTS = [4, 4]  # anchors per level
NUM_CLASSES = 3


def hand_features():
    """Student / teacher maps per level ``[1, 2, 2, 2]``; squared distances per anchor:
    level 0: 1, 4, 9, 16 (channel 0 is 1..4 against 0), level 1: 0, 0, 0, 4."""
    s0 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    t0 = torch.zeros(1, 2, 2, 2)
    s1 = torch.ones(1, 2, 2, 2)
    t1 = torch.ones(1, 2, 2, 2)
    t1[0, 1, 1, 1] = 3.0
    return [s0, s1], [t0, t1]


def mask(*idx, n=8):
    m = torch.zeros(1, n, dtype=torch.bool)
    m[0, list(idx)] = True
    return m


# ----------------------------------------------------------------------------- the loss


def test_flatten_features_follows_the_heads_anchor_order():
    s, _ = hand_features()
    flat = flatten_features(s)
    assert flat.shape == (1, 8, 2) and flat.dtype == torch.float32
    assert flat[0, :4, 0].tolist() == [1.0, 2.0, 3.0, 4.0]  # (row 0, col 0), (0, 1), (1, 0), (1, 1)
    assert flat[0, 4:].eq(1).all()


def test_masked_mse_per_level_hand_computed():
    s, t = (flatten_features(x) for x in hand_features())
    every = torch.ones(1, 8, dtype=torch.bool)
    mse, count = masked_mse_per_level(s, t, every, COUNTS)
    # level 0: (1 + 4 + 9 + 16) / (4 locations * 2 channels); level 1: 4 / 8
    torch.testing.assert_close(mse, torch.tensor([30 / 8, 4 / 8]))
    assert count.tolist() == [4.0, 4.0]
    # anchors 1, 3 (level 0) and 7 (level 1): (4 + 16) / (2 * 2) and 4 / (1 * 2)
    mse, count = masked_mse_per_level(s, t, mask(1, 3, 7), COUNTS)
    torch.testing.assert_close(mse, torch.tensor([5.0, 2.0]))
    # an empty level adds exactly 0 (and no NaN)
    mse, count = masked_mse_per_level(s, t, mask(1, 3), COUNTS)
    assert mse.tolist() == [5.0, 0.0] and count.tolist() == [2.0, 0.0]


def test_imitation_loss_sums_levels_decouples_and_skips_masked_levels():
    s, t = (flatten_features(x) for x in hand_features())
    every = torch.ones(1, 8, dtype=torch.bool)
    assert imitation_loss(s, t, every, COUNTS).item() == pytest.approx(30 / 8 + 0.5)
    # "decouple": foreground {1, 3} in level 0, none in level 1. Level 0: MSE(fg) = 5, MSE(bg {0, 2}) =
    # (1 + 9) / 4 = 2.5 -> 5 + 2 * 2.5 = 10; level 1 has no foreground -> 0, its background ignored
    fg = mask(1, 3)
    assert imitation_loss(s, t, fg, COUNTS, background=~fg).item() == pytest.approx(10.0)
    assert imitation_loss(s, t, fg, COUNTS, background=~fg, background_weight=1.0).item() == pytest.approx(7.5)
    # the LD code counts only the levels with a positive
    level_mask = torch.tensor([True, False])
    assert imitation_loss(s, t, every, COUNTS, level_mask=level_mask).item() == pytest.approx(30 / 8)
    assert imitation_loss(s, t, mask(), COUNTS).item() == 0.0
    with pytest.raises(ValueError, match="ImitationAdapter"):
        imitation_loss(s, t[..., :1], every, COUNTS)


def test_gradients_reach_only_the_student_and_match_the_formula():
    s_levels, t_levels = hand_features()
    s_levels = [x.clone().requires_grad_(True) for x in s_levels]
    t_levels = [x.clone().requires_grad_(True) for x in t_levels]  # even a teacher map with grad gets none
    s, t = flatten_features(s_levels), flatten_features(t_levels)
    loss = imitation_loss(s, t, mask(1, 3, 7), COUNTS)
    loss.backward()
    assert all(x.grad is None for x in t_levels)
    # d/ds of sum_sel ||s - t||^2 / (|R_l| F) = 2 (s - t) / (|R_l| F) at the selected anchors, 0 elsewhere
    g0 = torch.zeros(1, 2, 2, 2)
    g0[0, 0, 0, 1] = 2 * 2.0 / 4  # anchor 1, channel 0: s - t = 2
    g0[0, 0, 1, 1] = 2 * 4.0 / 4  # anchor 3, channel 0: s - t = 4
    g1 = torch.zeros(1, 2, 2, 2)
    g1[0, 1, 1, 1] = 2 * -2.0 / 2  # anchor 7, channel 1: s - t = -2, one location
    torch.testing.assert_close(s_levels[0].grad, g0)
    torch.testing.assert_close(s_levels[1].grad, g1)


@pytest.mark.parametrize("background", [False, True])
def test_zero_when_the_student_equals_the_teacher(background):
    _, t_levels = hand_features()
    t = flatten_features(t_levels)
    s = t.clone().requires_grad_(True)
    every = torch.ones(1, 8, dtype=torch.bool)
    fg = mask(1, 3)
    loss = imitation_loss(s, t, fg if background else every, COUNTS, background=~fg if background else None)
    assert loss.item() == 0.0
    loss.backward()
    assert s.grad.abs().max() == 0


# ----------------------------------------------------------------------------- the regions

# anchor centres of the two 2x2 levels (no half-cell offset): stride 8 then stride 16
POINTS = torch.tensor([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 8.0],
                       [0.0, 0.0], [16.0, 0.0], [0.0, 16.0], [16.0, 16.0]])


def test_inside_gt_region_is_strict_and_ignores_padding_slots():
    valid = torch.ones(1, 8, dtype=torch.bool)
    # GT [4, -2, 20, 12]: (8, 0), (8, 8) and (16, 0) lie strictly inside; x = 0 and y = 16 do not.
    # The second slot is padding: it would cover everything
    gt = torch.tensor([[[4.0, -2.0, 20.0, 12.0], [-100.0, -100.0, 100.0, 100.0]]])
    gt_mask = torch.tensor([[True, False]])
    assert inside_gt_region(POINTS, gt, gt_mask, valid)[0].tolist() == [False, True, False, True,
                                                                        False, True, False, False]
    # on the border is outside: GT [0, 0, 8, 8] holds no centre strictly
    assert not inside_gt_region(POINTS, torch.tensor([[[0.0, 0.0, 8.0, 8.0]]]), torch.tensor([[True]]), valid).any()
    # outside the image: never
    valid[0, 1] = False
    assert inside_gt_region(POINTS, gt, gt_mask, valid)[0, 1].item() is False


def test_finegrained_region_hand_computed():
    # IoU(anchor, GT 0); GT 1 is a padding slot whose IoUs must be ignored
    iou0 = torch.tensor([0.1, 0.6, 0.2, 0.35, 0.0, 0.3, 0.0, 0.0])
    iou1 = torch.tensor([0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    ious = torch.stack([iou0, iou1], -1)[None]  # [1, 8, 2]
    gt_mask = torch.tensor([[True, False]])
    valid = torch.ones(1, 8, dtype=torch.bool)
    # max 0.6 -> IoU > 0.3 (strict): anchors 1 and 3, not 5 (0.3)
    assert finegrained_region(ious, gt_mask, valid)[0].nonzero().flatten().tolist() == [1, 3]
    # the maximum is taken over the anchors inside the image: without anchor 1 it is 0.35 -> IoU > 0.175
    valid[0, 1] = False
    assert finegrained_region(ious, gt_mask, valid)[0].nonzero().flatten().tolist() == [2, 3, 5]
    assert finegrained_region(ious, gt_mask, valid, ratio=0.9)[0].nonzero().flatten().tolist() == [3]
    # two real GTs: the union of their regions
    both = finegrained_region(ious, torch.tensor([[True, True]]), torch.ones(1, 8, dtype=torch.bool))
    assert both[0].nonzero().flatten().tolist() == [0, 1, 3]


def gi_case():
    """Scores [1, 8, 2] and boxes [1, 8, 4] of the hand-computed GI case (see the test)."""
    s = torch.tensor([[0.1, 0.2], [0.9, 0.1], [0.3, 0.3], [0.5, 0.5],
                      [0.2, 0.2], [0.2, 0.2], [0.6, 0.2], [0.0, 0.0]])[None]
    t = torch.tensor([[0.5, 0.2], [0.2, 0.3], [0.3, 0.35], [0.5, 0.5],
                      [0.4, 0.2], [0.2, 0.5], [0.2, 0.2], [0.9, 0.0]])[None]
    far = [500.0, 500.0, 510.0, 510.0]
    sb = torch.tensor([far, [1, 1, 11, 11], far, far, far, far, [2, 2, 6, 6], far], dtype=torch.float32)[None]
    tb = torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30], [21, 21, 31, 31],
                       [0, 0, 4, 4], [0, 0, 4, 4], far, [0, 0, 4, 4]], dtype=torch.float32)[None]
    valid = torch.ones(1, 8, dtype=torch.bool)
    valid[0, 7] = False
    return s, t, sb, tb, valid


def test_gi_region_hand_computed():
    # GI score max_c |t - s| and whose box (teacher's if t >= s at that class):
    #   level 0: a0 0.4 teacher [0,0,10,10]; a1 0.7 student [1,1,11,11]; a2 0.05 teacher [20,20,30,30];
    #            a3 0 (t == s: teacher) [21,21,31,31]
    #   level 1: a4 0.2 teacher [0,0,4,4]; a5 0.3 teacher [0,0,4,4]; a6 0.4 student [2,2,6,6];
    #            a7 0.9 but outside the image
    # greedy NMS (IoU > 0.3 suppresses), per level:
    #   level 0: a1 kept; a0 IoU(a1) = 81/119 = 0.68 -> out; a2 kept; a3 IoU(a2) = 0.68 -> out
    #   level 1: a6 kept; a5 IoU(a6) = 4/28 = 0.14 -> kept; a4 IoU(a5) = 1 -> out; a7 never (and suppresses nothing)
    s, t, sb, tb, valid = gi_case()
    region = gi_region(s, t, sb, tb, valid, COUNTS)
    assert region[0].nonzero().flatten().tolist() == [1, 2, 5, 6]
    # top-k per level: only the highest GI box of each level
    assert gi_region(s, t, sb, tb, valid, COUNTS, top_k=1)[0].nonzero().flatten().tolist() == [1, 6]
    # a looser threshold keeps a0 (IoU 0.68 <= 0.7) and a3
    loose = gi_region(s, t, sb, tb, valid, COUNTS, iou_thr=0.7)[0].nonzero().flatten().tolist()
    assert loose == [0, 1, 2, 3, 5, 6]  # a4 still out: IoU(a5) = 1
    # the boxes come from the right side: swapping every student/teacher box changes the choice
    swapped = gi_region(s, t, tb, sb, valid, COUNTS)[0].nonzero().flatten().tolist()
    assert swapped != [1, 2, 5, 6]


def test_gi_region_over_the_batch_or_per_image():
    s, t, sb, tb, valid = (torch.cat([x, x]) for x in gi_case())  # the same image twice
    # the LD code: one NMS per level over the whole batch; image 1's boxes equal image 0's, so they are suppressed
    batch = gi_region(s, t, sb, tb, valid, COUNTS)
    assert batch[0].nonzero().flatten().tolist() == [1, 2, 5, 6] and not batch[1].any()
    per_image = gi_region(s, t, sb, tb, valid, COUNTS, per_image=True)
    assert per_image[0].tolist() == per_image[1].tolist() == batch[0].tolist()
    # top_k counts per level over the batch, or per image and level
    assert gi_region(s, t, sb, tb, valid, COUNTS, top_k=1).sum().item() == 2
    assert gi_region(s, t, sb, tb, valid, COUNTS, top_k=1, per_image=True).sum().item() == 4


def test_greedy_nms_topk_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        n = 200
        xy = torch.rand(n, 2, generator=g) * 100
        wh = torch.rand(n, 2, generator=g) * 30 + 1
        boxes = torch.cat([xy, xy + wh], -1)
        scores = torch.rand(n, generator=g)
        for thr in (0.3, 0.5):
            want = torchvision.ops.nms(boxes, scores, thr)[:10]
            keep = greedy_nms_topk(scores[None], boxes[None], 10, thr)[0]
            assert sorted(keep.nonzero().flatten().tolist()) == sorted(want.tolist()), (trial, thr)
    # groups are independent, -inf is never kept, fewer survivors than top_k is fine
    scores = torch.tensor([[0.5, float("-inf"), 0.4], [float("-inf")] * 3])
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]]).expand(2, 3, 4)
    assert greedy_nms_topk(scores, boxes, 10, 0.3).tolist() == [[True, False, True], [False] * 3]


# ----------------------------------------------------------------------------- config


def test_config_fields_and_their_errors():
    d = DistillConfig()
    assert (d.imitation_mode, d.imitation_weight, d.imitation) == ("", 0.0, False)
    assert DistillConfig._imitation_modes == IMITATION_MODES
    assert DistillConfig(imitation_mode="gibox", imitation_weight=2.0).imitation
    assert not DistillConfig(imitation_mode="gibox").imitation  # weight 0: off
    with pytest.raises(ConfigError, match="did you mean fitnet"):
        DistillConfig(imitation_mode="fitnets")
    with pytest.raises(ConfigError, match="imitation_mode is ''"):
        DistillConfig(imitation_weight=2.0)
    with pytest.raises(ConfigError, match="imitation_weight.*>= 0"):
        DistillConfig(imitation_mode="fitnet", imitation_weight=-1.0)
    with pytest.raises(ConfigError, match="imitation_gi_topk"):
        DistillConfig(imitation_mode="gibox", imitation_gi_topk=0)
    with pytest.raises(ConfigError, match="imitation_gi_iou_thr"):
        DistillConfig(imitation_mode="gibox", imitation_gi_iou_thr=1.5)
    base = load_config("gfl/gfl_r50_fpn_coco_1x")
    with pytest.raises(ConfigError, match="distill.imitation_mode"):
        apply_overrides(base, ["distill.imitation_mode=gi"])
    on = apply_overrides(base, ["distill.imitation_mode=decouple", "distill.imitation_weight=1"])
    assert on.distill.imitation and on.distill.imitation_weight == 1.0
    with pytest.raises(ValueError, match="imitation_mode"):
        distilling_criterion(NUM_CLASSES, imitation_mode="gi")


def test_full_gi_config_is_the_ld_codes_recipe_with_gi_imitation():
    cfg = load_config("ld/ld_gflv1_r101_r50_fpn_coco_1x_full_gi")
    d = cfg.distill
    assert cfg.model.backbone.depth == 50 and cfg.model.neck.out_channels == 256
    assert load_config(d.teacher_config).model.neck.out_channels == 256  # no adapter, as the LD code
    assert (d.ld_weight, d.vlr_weight, d.kd_weight, d.reduction, d.vlr_iou_mode) == (0.25, 0.25, 10.0, "sum", "iof")
    assert (d.imitation_mode, d.imitation_weight, d.imitation_gi_topk, d.imitation_gi_iou_thr,
            d.imitation_gi_per_image) == ("gibox", 2.0, 10, 0.3, False)
    assert d.teacher_checkpoint == "checkpoints/gfl_r101_fpn_mstrain_2x_coco.pth"
    terms = build_criterion(cfg).distill_terms
    assert (terms.imitation_weight, terms.imitation_mode, terms.imitation_gi_topk) == (2.0, "gibox", 10)
    # imitation off: the criterion carries no weight even if a mode is left over
    full = build_criterion(load_config("ld/ld_gflv1_r101_r50_fpn_coco_1x_full"))
    assert full.distill_terms.imitation_weight == 0.0


# ----------------------------------------------------------------------------- Distiller + criterion


def tiny_model(seed=0, neck=16, head="gfl"):
    torch.manual_seed(seed)
    m = ModelConfig(num_classes=NUM_CLASSES)
    m.backbone.depth = 18
    m.backbone.base_channels = 8
    m.neck.out_channels = neck
    m.head.type = head
    m.head.feat_channels = 16
    m.head.stacked_convs = 2
    m.head.num_groups = 8
    return build_detector(m)


def images(n=2, seed=0):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def targets():
    return [
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0], [30.0, 5.0, 60.0, 30.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[4.0, 4.0, 28.0, 36.0]]), "labels": torch.tensor([1])},
    ]


def criterion(mode, weight=2.0, **kw):
    return distilling_criterion(NUM_CLASSES, ld_weight=0.25, vlr_weight=0.25, kd_weight=1.0, crosshead_ld_weight=0.0,
                                crosshead_kd_weight=0.0, crosshead_box_weight=0.0, imitation_weight=weight,
                                imitation_mode=mode, **kw)


def test_distiller_returns_both_fpn_maps_and_removes_its_hooks():
    student, teacher = tiny_model(0), tiny_model(1)
    plain = Distiller(student, teacher).train()
    s_plain, t_plain = plain(images())
    assert "imitation_feats" not in s_plain and "imitation_feats" not in t_plain
    dist = Distiller(student, teacher, imitation=True).train()
    assert dist.imitation_adapter is None  # equal widths: compared as they are (the LD code)
    s_out, t_out = dist(images())
    x = images()
    with torch.no_grad():
        want_s, want_t = student.extract_feat(x), teacher.extract_feat(x)
    for got, want in ((s_out["imitation_feats"], want_s), (t_out["imitation_feats"], want_t)):
        assert len(got) == 5
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
    assert s_out["imitation_feats"][0].requires_grad and not t_out["imitation_feats"][0].requires_grad
    assert not student.neck._forward_hooks and not teacher.neck._forward_hooks
    for key in ("cls_logits", "box_logits"):  # the predictions are the plain forward's
        for a, b in zip(s_out[key], s_plain[key]):
            assert torch.equal(a, b)
    # imitation on or off changes no other loss
    with_im = criterion("gibox")(s_out, targets(), t_out)
    without = criterion("")(s_plain, targets(), t_plain)
    assert set(with_im) == set(without) | {"loss_im"}
    for k, v in without.items():
        torch.testing.assert_close(with_im[k], v, rtol=0, atol=0)
    with pytest.raises(ValueError, match="imitation=True"):
        criterion("fitnet")(s_plain, targets(), t_plain)


@pytest.mark.parametrize("mode", IMITATION_MODES)
def test_student_equal_to_teacher_gives_zero_imitation_loss(mode):
    student = tiny_model(0)
    dist = Distiller(student, copy.deepcopy(student), imitation=True).train()
    s_out, t_out = dist(images())
    loss = criterion(mode)(s_out, targets(), t_out)["loss_im"]
    assert loss.item() == 0.0
    other = Distiller(student, tiny_model(1), imitation=True).train()
    s_out, t_out = other(images())
    assert criterion(mode)(s_out, targets(), t_out)["loss_im"].item() > 0


def test_criterion_loss_im_is_the_formula_on_its_region():
    """loss_im = w * sum over levels with a positive of the region's MSE, with the region computed
    independently from the assignment."""
    student, teacher = tiny_model(0), tiny_model(1)
    dist = Distiller(student, teacher, imitation=True).train()
    s_out, t_out = dist(images())
    s_feats = flatten_features(s_out["imitation_feats"])
    t_feats = flatten_features(t_out["imitation_feats"])
    for mode in IMITATION_MODES:
        crit = criterion(mode, weight=1.5)
        student = crit.flatten(s_out)
        t = crit.assign(student, targets())
        region, background = imitation_region(mode, student, crit.flatten(t_out, "teacher"), t,
                                              crit.distill_terms.imitation_gi_topk,
                                              crit.distill_terms.imitation_gi_iou_thr,
                                              crit.distill_terms.imitation_gi_per_image)
        want = 0.0
        start = 0
        for lvl, n in enumerate(student.num_level_anchors):
            sl = slice(start, start + n)
            start += n
            if not t.pos[:, sl].any():
                continue
            def mse(m):
                d = ((s_feats[:, sl] - t_feats[:, sl]) ** 2).sum(-1)[m[:, sl]]
                return d.sum().item() / max(m[:, sl].sum().item() * s_feats.shape[-1], 1)
            if background is None:
                want += mse(region)
            elif region[:, sl].any():
                want += mse(region) + 2 * mse(background)
        got = crit(s_out, targets(), t_out)["loss_im"].item()
        assert got == pytest.approx(1.5 * want, rel=1e-5), mode
        if mode == "fitnet":
            assert torch.equal(region, t.valid)
        if mode == "gibox":
            assert int(region.sum()) <= 10 * len(student.num_level_anchors)


def test_a_training_step_moves_the_student_and_adapter_but_never_the_teacher():
    student = tiny_model(0, neck=16)
    teacher = tiny_model(1, neck=24)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    dist = Distiller(student, teacher, imitation=True).train()
    assert isinstance(dist.imitation_adapter, ImitationAdapter)
    assert dist.imitation_adapter.conv.weight.shape == (24, 16, 1, 1)
    assert not any("adapter" in k for k in student.state_dict())
    adapter_before = copy.deepcopy(dist.imitation_adapter.state_dict())
    neck_before = student.neck.fpn_convs[0].conv.weight.detach().clone()
    crit = criterion("fitnet")
    opt = torch.optim.SGD(dist.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for step in range(2):
        s_out, t_out = dist(images(seed=step))
        assert s_out["imitation_feats"][0].shape[1] == 24  # through the adapter
        losses = crit(s_out, targets(), t_out)
        opt.zero_grad()
        losses["loss_im"].backward()
        assert all(p.grad is None for p in teacher.parameters())
        assert dist.imitation_adapter.conv.weight.grad.abs().sum() > 0
        assert student.neck.fpn_convs[0].conv.weight.grad.abs().sum() > 0
        assert student.bbox_head.gfl_cls.weight.grad is None  # imitation alone does not reach the head
        opt.step()
    after = teacher.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"teacher {k} changed"
    assert not torch.equal(student.neck.fpn_convs[0].conv.weight, neck_before)
    assert any(not torch.equal(v, dist.imitation_adapter.state_dict()[k]) for k, v in adapter_before.items())
    # the adapter is training state, saved and restored apart from the student's weights
    state = dist.training_state_dict()
    assert set(state) == {"imitation_adapter.conv.weight", "imitation_adapter.conv.bias"}
    fresh = Distiller(tiny_model(0, neck=16), tiny_model(1, neck=24), imitation=True)
    fresh.load_training_state_dict(state)
    assert all(torch.equal(v, fresh.training_state_dict()[k]) for k, v in state.items())
    with pytest.raises(ConfigError, match="imitation_adapter"):
        Distiller(tiny_model(0), tiny_model(1)).load_training_state_dict(state)


def test_from_config_and_gflv2_and_bf16():
    d = DistillConfig(imitation_mode="gibox", imitation_weight=2.0)
    dist = Distiller.from_config(tiny_model(0, head="gflv2"), tiny_model(1, neck=24, head="gflv2"), d)
    assert dist.imitation and dist.imitation_adapter is not None
    assert not Distiller.from_config(tiny_model(0), tiny_model(1), DistillConfig()).imitation
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s_out, t_out = dist.train()(images())
    losses = criterion("gibox")(s_out, targets(), t_out)
    assert losses["loss_im"].dtype == torch.float32 and torch.isfinite(losses["loss_im"])
    losses["loss_im"].backward()
    assert torch.isfinite(dist.imitation_adapter.conv.weight.grad).all()


def test_empty_ground_truth_gives_zero_imitation():
    dist = Distiller(tiny_model(0), tiny_model(1), imitation=True).train()
    s_out, t_out = dist(images(1))
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    for mode in IMITATION_MODES:
        loss = criterion(mode)(s_out, empty, t_out)["loss_im"]
        assert loss.item() == 0.0, mode  # no positives in any level: the LD code adds nothing


# ----------------------------------------------------------------------------- end to end


TINY = ["data.digits_train=24", "data.digits_val=12", "data.digits_image_size=96", "data.img_scale=(96, 96)",
        "data.batch_size=8", "data.workers=0", "train.epochs=1", "train.warmup_iters=3", "train.log_interval=1",
        "train.device=cpu", "train.tensorboard=False", "model.backbone.base_channels=8",
        "model.neck.out_channels=32", "model.head.feat_channels=32", "model.head.stacked_convs=2",
        "model.head.num_groups=8", "distill.imitation_mode=gibox", "distill.imitation_weight=2.0"]


def test_tiny_digits_training_with_gi_imitation(tmp_path):
    from locdistill.cli import main

    wd = tmp_path / "run"
    assert main(["train", "demo/ld_r34_r18_digits", "--work-dir", str(wd), "--set", *TINY]) == 0
    recs = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["mode"] == "train"]
    assert train_recs and all("loss_im" in r and math.isfinite(r["loss_im"]) for r in train_recs)
    ck = load_checkpoint(wd / "latest.pth")
    teacher_neck = load_config(load_config("demo/ld_r34_r18_digits").distill.teacher_config).model.neck.out_channels
    assert ck["distill_state"]["imitation_adapter.conv.weight"].shape == (teacher_neck, 32, 1, 1)
    assert not any("adapter" in k or k.startswith("teacher") for k in ck["model"])
