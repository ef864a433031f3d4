"""GFLCriterion against a slow loop reference (DESIGN §4/§5), plus edge cases."""
import pytest
import torch

from locdistill.config import Config
from criteria import distilling_criterion
from locdistill.distill import DistillTerms, build_criterion
from locdistill.models.criterion import GFLCriterion, reduce_mean
from slow_reference import load_vectors, slow_criterion

SIZES = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]  # a 128x128 batch
STRIDES = (8, 16, 32, 64, 128)
C = 4
N1 = 17


# the LD code's full recipe (main LD 0.25, VLR 0.25, KD 10), cross-head off
LD_ARGS = dict(ld_weight=0.25, vlr_weight=0.25, kd_weight=10.0,
               crosshead_ld_weight=0.0, crosshead_kd_weight=0.0, crosshead_box_weight=0.0)


def ld_criterion(num_classes=C, **kw):
    return distilling_criterion(num_classes, **{**LD_ARGS, **kw})


def make_outputs(B, seed, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    out = {
        "cls_logits": [torch.randn(B, C, h, w, generator=g) - 2 for h, w in SIZES],
        "box_logits": [torch.randn(B, 4 * N1, h, w, generator=g) * 2 for h, w in SIZES],
    }
    if requires_grad:
        out = {k: [x.requires_grad_() for x in v] for k, v in out.items()}
    return out


def make_targets(seed):
    g = torch.Generator().manual_seed(seed)
    targets = []
    for k in (3, 0, 5):
        xy = torch.rand(k, 2, generator=g) * 80
        wh = torch.rand(k, 2, generator=g) * 60 + 10
        targets.append({"boxes": torch.cat([xy, (xy + wh).clamp(max=127)], 1),
                        "labels": torch.randint(0, C, (k,), generator=g)})
    return targets


def teacher_of(outputs, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: [x.detach() + torch.randn(x.shape, generator=g).to(x.device) for x in v] for k, v in outputs.items()}


def close(ours, ref, keys):
    for k in keys:
        assert ours[k].item() == pytest.approx(ref[k], rel=2e-5, abs=1e-6), k


@pytest.mark.parametrize("image_sizes", [None, [(128, 128), (64, 128), (96, 64)]])
def test_gfl_losses_match_slow_reference(image_sizes):
    outputs, targets = make_outputs(3, 0), make_targets(0)
    ours = GFLCriterion(C)(outputs, targets, image_sizes=image_sizes)
    ref = slow_criterion(outputs, targets, STRIDES, C, image_sizes=image_sizes)
    assert set(ours) == {"loss_cls", "loss_bbox", "loss_dfl"}
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in ours.values())
    assert ref["loss_bbox"] > 0
    close(ours, ref, ["loss_cls", "loss_bbox", "loss_dfl"])


@pytest.mark.parametrize("vlr_iou_mode", ["diou", "iof"])
def test_distill_losses_match_slow_reference(vlr_iou_mode):
    outputs, targets = make_outputs(3, 1), make_targets(1)
    teacher = teacher_of(outputs, 1)
    sizes = [(128, 128), (128, 96), (64, 64)]
    ours = ld_criterion(vlr_iou_mode=vlr_iou_mode)(outputs, targets, teacher, image_sizes=sizes)
    ref = slow_criterion(outputs, targets, STRIDES, C, image_sizes=sizes, teacher=teacher,
                         vlr_iof=vlr_iou_mode == "iof")
    assert set(ours) == {"loss_cls", "loss_bbox", "loss_dfl", "loss_ld", "loss_ld_vlr", "loss_kd"}
    assert ref["loss_ld_vlr"] > 0 and ref["loss_kd"] > 0
    close(ours, ref, list(ref))


def test_ld_options():
    outputs, targets = make_outputs(3, 2), make_targets(2)
    teacher = teacher_of(outputs, 2)
    base = ld_criterion()(outputs, targets, teacher)
    per_image = ld_criterion(reduction="per_image")(outputs, targets, teacher)
    for k in ("loss_ld", "loss_ld_vlr"):
        torch.testing.assert_close(per_image[k], base[k])  # 3 images per GPU: the original magnitude
    two = {k: [x[:2] for x in v] for k, v in outputs.items()}
    t2 = {k: [x[:2] for x in v] for k, v in teacher.items()}
    s2 = ld_criterion()(two, targets[:2], t2)
    p2 = ld_criterion(reduction="per_image")(two, targets[:2], t2)
    torch.testing.assert_close(p2["loss_ld"], s2["loss_ld"] * 1.5)
    other_t = ld_criterion(vlr_temperature=5.0)(outputs, targets, teacher)
    torch.testing.assert_close(other_t["loss_ld"], base["loss_ld"])
    assert other_t["loss_ld_vlr"].item() != pytest.approx(base["loss_ld_vlr"].item(), rel=1e-3)
    only_ld = ld_criterion(vlr_weight=0, kd_weight=0)(outputs, targets, teacher)
    assert set(only_ld) == {"loss_cls", "loss_bbox", "loss_dfl", "loss_ld"}
    # a teacher identical to the student gives no distillation signal
    same = ld_criterion()(outputs, targets, {k: [x.detach() for x in v] for k, v in outputs.items()})
    for k in ("loss_ld", "loss_ld_vlr", "loss_kd"):
        assert abs(same[k].item()) < 1e-4


def test_empty_gt_everywhere():
    outputs = make_outputs(2, 3)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    crit = ld_criterion()
    losses = crit(outputs, empty, teacher_of(outputs, 3))
    assert losses["loss_cls"] > 0
    for k in ("loss_bbox", "loss_dfl", "loss_ld", "loss_ld_vlr", "loss_kd"):
        assert losses[k].item() == 0.0 and losses[k].requires_grad, k
    sum(losses.values()).backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in outputs["cls_logits"])
    assert all(x.grad is not None and (x.grad == 0).all() for x in outputs["box_logits"])
    ref = slow_criterion(outputs, empty, STRIDES, C)
    close(losses, ref, ["loss_cls"])


def test_invariant_to_image_order():
    outputs, targets = make_outputs(3, 4, requires_grad=False), make_targets(4)
    teacher = teacher_of(outputs, 4)
    sizes = [(128, 128), (64, 128), (96, 64)]
    perm = [2, 0, 1]
    a = ld_criterion()(outputs, targets, teacher, image_sizes=sizes)
    b = ld_criterion()({k: [x[perm] for x in v] for k, v in outputs.items()}, [targets[i] for i in perm],
                        {k: [x[perm] for x in v] for k, v in teacher.items()}, image_sizes=[sizes[i] for i in perm])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_gradients_flow_only_through_positives_for_box_losses():
    outputs, targets = make_outputs(3, 5), make_targets(5)
    crit = GFLCriterion(C)
    dense = crit.flatten(outputs)
    t = crit.assign(dense, targets)
    losses = crit.gfl_losses(dense, t)
    (losses["loss_bbox"] + losses["loss_dfl"]).backward()
    grad = torch.cat([x.grad.permute(0, 2, 3, 1).reshape(3, -1, 4 * N1) for x in outputs["box_logits"]], 1)
    per_anchor = grad.abs().sum(-1)
    assert (per_anchor[t.pos] > 0).all()
    assert (per_anchor[~t.pos] == 0).all()
    assert all(x.grad is None for x in outputs["cls_logits"])  # w_p is detached
    losses = crit(make_outputs(3, 5), targets)
    losses["loss_cls"].backward()


def test_targets_structure():
    outputs, targets = make_outputs(3, 6), make_targets(6)
    crit = GFLCriterion(C)
    dense = crit.flatten(outputs)
    t = crit.assign(dense, targets, image_sizes=[(128, 128), (64, 64), (128, 128)])
    box = crit.box_targets(dense, t)
    A = sum(h * w for h, w in SIZES)
    assert t.anchors.shape == (A, 4) and box.labels.shape == (3, A) and dense.box_logits.shape == (3, A, 4, N1)
    assert t.num_pos.tolist() == t.pos.sum(1).tolist()
    assert t.avg_factor.item() == sum(max(n, 1) for n in t.num_pos.tolist())
    assert (box.labels[~t.pos] == C).all() and (box.labels[t.pos] < C).all()
    assert not t.valid[1].all()  # label weights are valid.float()
    assert (t.pos_weight[~t.pos] == 0).all() and (box.scores[~t.pos] == 0).all()
    assert t.thresholds.shape == (3, 5)
    assert not any(getattr(t, f).requires_grad for f in t.__dataclass_fields__)  # targets only


def test_outside_anchors_are_ignored():
    outputs, targets = make_outputs(3, 7, requires_grad=False), make_targets(7)
    sizes = [(128, 128), (64, 64), (32, 96)]
    crit = GFLCriterion(C)
    a = crit(outputs, targets, image_sizes=sizes)
    t = crit.assign(crit.flatten(outputs), targets, image_sizes=sizes)
    # blow up the class logits of anchors outside each image: nothing may change
    offset, changed = 0, {"cls_logits": [], "box_logits": outputs["box_logits"]}
    for x, (h, w) in zip(outputs["cls_logits"], SIZES):
        inval = ~t.valid[:, offset:offset + h * w].reshape(3, 1, h, w)
        changed["cls_logits"].append(torch.where(inval, torch.full_like(x, 30.0), x))
        offset += h * w
    b = crit(changed, targets, image_sizes=sizes)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert crit(changed, targets)["loss_cls"] > 10 * a["loss_cls"]  # without sizes they count


def test_integral_decoding_matches_mmdet():
    r = load_vectors()["integral"]
    logits = torch.tensor(r["logits"])  # [3, 68]
    crit = GFLCriterion(2, strides=(8,))
    outputs = {"cls_logits": [torch.zeros(1, 2, 1, 3)], "box_logits": [logits.t().reshape(1, 68, 1, 3)]}
    dense = crit.flatten(outputs)
    t = crit.assign(dense, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    pred_boxes = crit.box_targets(dense, t).pred_boxes
    dist = torch.cat([dense.centers - pred_boxes[0, :, :2], pred_boxes[0, :, 2:] - dense.centers], 1)
    torch.testing.assert_close(dist, torch.tensor(r["out"]), rtol=1e-5, atol=2e-6)


def test_from_config():
    cfg = Config()
    cfg.model.num_classes = 7
    cfg.model.head.reg_max = 8
    cfg.loss.loss_bbox_weight = 3.0
    cfg.loss.topk = 5
    crit = build_criterion(cfg)
    assert (crit.num_classes, crit.reg_max, crit.loss_bbox_weight, crit.assigner.topk) == (7, 8, 3.0, 5)
    assert build_criterion(cfg, distill=True, kd_weight=0.5).distill_terms.kd_weight == 0.5
    cfg.distill.ld_weight, cfg.distill.vlr_weight, cfg.distill.kd_weight = 0.25, 0.25, 10.0
    cfg.distill.vlr_iou_mode = "iof"
    cfg.distill.reduction = "per_image"
    terms = build_criterion(cfg, distill=True).distill_terms
    assert (terms.ld_weight, terms.vlr_weight, terms.kd_weight) == (0.25, 0.25, 10.0)
    assert (terms.ld_temperature, terms.vlr_temperature, terms.kd_temperature) == (10.0, 10.0, 2.0)
    assert (terms.vlr_iou_mode, terms.reduction) == ("iof", "per_image")



def test_distilling_criterion_is_injected():
    """GFLCriterion computes the GT losses only; the distillation terms come in as a component."""
    outputs, targets = make_outputs(3, 13), make_targets(13)
    teacher = teacher_of(outputs, 13)
    with pytest.raises(ValueError, match="build_criterion"):
        GFLCriterion(C)(outputs, targets, teacher)
    cfg = Config()
    cfg.model.num_classes = C
    assert build_criterion(cfg).distill_terms is None  # distill.teacher_config is empty: plain training
    with pytest.raises(TypeError, match="distill=True"):
        build_criterion(cfg, kd_weight=0.5)
    cfg.distill.teacher_config = "gfl/gfl_r101_fpn_mstrain_2x_coco"
    cfg.distill.ld_weight, cfg.distill.vlr_weight, cfg.distill.kd_weight = 0.25, 0.25, 10.0
    cfg.distill.crosshead_ld_weight = cfg.distill.crosshead_kd_weight = cfg.distill.crosshead_box_weight = 0.0
    crit = build_criterion(cfg)
    assert isinstance(crit.distill_terms, DistillTerms)
    ours, ref = crit(outputs, targets, teacher), ld_criterion()(outputs, targets, teacher)
    assert set(ours) == set(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)
    assert build_criterion(cfg, distill=False).distill_terms is None
    # the plain losses do not depend on the terms
    plain = GFLCriterion(C)(outputs, targets)
    assert all(torch.equal(plain[k], ours[k]) for k in plain)

def test_autocast_keeps_float32():
    outputs, targets = make_outputs(3, 8, requires_grad=False), make_targets(8)
    ref = GFLCriterion(C)(outputs, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = {k: [x.bfloat16() for x in v] for k, v in outputs.items()}
        out = GFLCriterion(C)(half, targets)
    for k in ref:
        assert out[k].dtype == torch.float32
        assert out[k].item() == pytest.approx(ref[k].item(), rel=0.05)


def test_input_errors():
    crit = GFLCriterion(C)
    outputs, targets = make_outputs(3, 9, requires_grad=False), make_targets(9)
    with pytest.raises(ValueError, match="num_classes"):
        GFLCriterion(C + 1)(outputs, targets)
    with pytest.raises(ValueError, match="box levels"):
        crit({"cls_logits": outputs["cls_logits"][:4], "box_logits": outputs["box_logits"][:4]}, targets)
    with pytest.raises(ValueError, match="reg_max"):
        GFLCriterion(C, reg_max=7)(outputs, targets)
    with pytest.raises(ValueError, match="targets"):
        crit(outputs, targets[:2])
    with pytest.raises(ValueError, match="boxes"):
        crit(outputs, [{"boxes": torch.zeros(4), "labels": torch.zeros(1)}] * 3)
    with pytest.raises(ValueError, match="teacher"):
        ld_criterion()(outputs, targets, {k: [x[:, :, :1] for x in v] for k, v in outputs.items()})
    with pytest.raises(ValueError, match="reduction"):
        distilling_criterion(C, reduction="mean")


def test_reduce_mean_single_process_group(tmp_path):
    import torch.distributed as dist

    x = torch.tensor(3.5)
    assert reduce_mean(x) is x  # not initialised: identity
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        assert reduce_mean(x).item() == 3.5
        outputs, targets = make_outputs(3, 10, requires_grad=False), make_targets(10)
        ref = slow_criterion(outputs, targets, STRIDES, C)
        close(GFLCriterion(C)(outputs, targets), ref, list(ref))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_on_cuda():
    outputs = {k: [x.cuda() for x in v] for k, v in make_outputs(3, 11).items()}
    targets = [{k: v.cuda() for k, v in t.items()} for t in make_targets(11)]
    teacher = teacher_of(outputs, 11)
    crit = ld_criterion()
    crit(outputs, targets, teacher, image_sizes=[(128, 128), (64, 128), (96, 64)])  # warm caches
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = crit(outputs, targets, teacher, image_sizes=[(128, 128), (64, 128), (96, 64)])
        sum(losses.values()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_prior_cache_is_bounded_under_multi_scale_sizes():
    from locdistill.models.criterion import PRIOR_CACHE_SIZE

    crit = GFLCriterion(C)
    for side in range(1, 2 * PRIOR_CACHE_SIZE + 2):
        sizes = [(side * 4, side * 4), (side * 2, side * 2), (side, side), (side, side), (side, side)]
        crit.flatten({"cls_logits": [torch.zeros(1, C, h, w) for h, w in sizes],
                      "box_logits": [torch.zeros(1, 4 * N1, h, w) for h, w in sizes]})
        assert len(crit._prior_cache) <= PRIOR_CACHE_SIZE
    first = next(iter(crit._prior_cache))
    crit._priors(list(first[0]), torch.device("cpu"))  # a hit moves the entry to the recent end
    assert next(reversed(crit._prior_cache)) == first


def test_assignment_holds_no_graph():
    outputs, targets = make_outputs(3, 12), make_targets(12)
    crit = GFLCriterion(C)
    dense = crit.flatten(outputs)
    assert dense.cls_logits.requires_grad and dense.box_logits.requires_grad
    asg = crit.assign(dense, targets)
    assert not any(getattr(asg, f).requires_grad for f in asg.__dataclass_fields__)
    with pytest.raises(ValueError, match="requires grad"):
        type(asg)(**{**{f: getattr(asg, f) for f in asg.__dataclass_fields__},
                     "pos_weight": dense.cls_logits[..., 0]})
