"""Cross-head LD (CrossKD): the head's tower taps, the Distiller's cross-head predictions, the
quality-focal KD loss, the three cross-head terms, a frozen teacher, the adapter, and a tiny
digits training whose checkpoint loads into the plain student.

Tiny GFL models (R-18, 8 base channels, 16-channel FPN) on 64x64 images: seconds on a CPU.
"""
from __future__ import annotations

import copy
import json
import math
import socket

import pytest
import torch
import torch.nn.functional as F

from locdistill.checkpoint import load_checkpoint, load_model_weights
from locdistill.config import DistillConfig, ModelConfig, load_config
from locdistill.distill import CrossHeadAdapter, Distiller, crosshead_layers
from locdistill.errors import ConfigError
from locdistill.losses import kd_quality_focal_loss
from locdistill.models import build_detector
from criteria import distilling_criterion
from locdistill.distill import build_criterion

NUM_CLASSES = 3
CROSS_KEYS = ("loss_cross_ld", "loss_cross_kd", "loss_cross_box")


def tiny_cfg(width=16, convs=2, head="gfl", train_bn=False) -> ModelConfig:
    m = ModelConfig(num_classes=NUM_CLASSES)
    m.backbone.depth = 18
    m.backbone.base_channels = 8
    if train_bn:  # every BatchNorm in train mode: running statistics would change on each forward
        m.backbone.frozen_stages = -1
        m.backbone.norm_eval = False
    m.neck.out_channels = 16
    m.head.type = head
    m.head.feat_channels = width
    m.head.stacked_convs = convs
    m.head.num_groups = 8
    return m


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return build_detector(tiny_cfg(**kw))


def images(n=2, seed=0):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def targets():
    return [
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0], [30.0, 5.0, 60.0, 30.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[4.0, 4.0, 28.0, 36.0]]), "labels": torch.tensor([1])},
    ]


def criterion(main=False):
    """CrossKD's GFL weights; the main LD / VLR / KD terms only with ``main``."""
    w = 0.25 if main else 0.0
    return distilling_criterion(NUM_CLASSES, ld_weight=w, vlr_weight=w, kd_weight=40 * w,
                                crosshead_ld_weight=3.0, crosshead_kd_weight=1.0, crosshead_box_weight=2.0)


# ----------------------------------------------------------------------------- the loss


def test_kd_quality_focal_loss_hand_computed():
    # per class BCE(s, σ(t)) · |σ(s) − σ(t)|^β, summed over classes:
    #   s=2,  t=0: σ(t)=0.5, BCE = (softplus(-2) + softplus(2))/2 = 1.126928, |σ(2) − 0.5| = 0.380797
    #   s=-1, t=1: σ(t)=0.731059, BCE = 0.731059·softplus(1) + 0.268941·softplus(-1) = 1.044320,
    #              |σ(-1) − σ(1)| = 0.462117
    #   s=t (0 and 1): modulator 0, whatever the BCE (0.693147, 0.582203)
    s = torch.tensor([[2.0, 0.0], [-1.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    expected = {1.0: [1.126928 * 0.380797, 1.044320 * 0.462117], 2.0: [1.126928 * 0.380797 ** 2,
                                                                      1.044320 * 0.462117 ** 2]}
    for beta, values in expected.items():
        torch.testing.assert_close(kd_quality_focal_loss(s, t, beta), torch.tensor(values), atol=2e-6, rtol=0)
    assert kd_quality_focal_loss(t, t).abs().max() == 0  # exactly 0 where the student is the teacher
    # leading dimensions, float32 out of bf16, the teacher detached
    s3 = s.bfloat16().expand(4, 2, 2).requires_grad_(True)
    t3 = t.expand(4, 2, 2).requires_grad_(True)
    out = kd_quality_focal_loss(s3, t3)
    assert out.shape == (4, 2) and out.dtype == torch.float32
    out.sum().backward()
    assert t3.grad is None and s3.grad is not None
    with pytest.raises(ValueError, match="differ in shape"):
        kd_quality_focal_loss(s, t[:, :1])


# ----------------------------------------------------------------------------- the head


@pytest.mark.parametrize("head", ["gfl", "gflv2"])
def test_head_from_a_tap_finishes_the_forward(head):
    model = tiny(0, width=16, convs=3, head=head).eval()
    feats = model.extract_feat(images())
    full = model.bbox_head(feats)
    for k in (0, 1, 2, -1):
        tapped = model.bbox_head(feats, tower_layer=k)
        for lvl, scale in enumerate(model.bbox_head.scales):
            c, b = model.bbox_head.head_from(tapped["cls_tower"][lvl], tapped["reg_tower"][lvl], k, scale)
            torch.testing.assert_close(c, full["cls_logits"][lvl], atol=1e-6, rtol=0)
            torch.testing.assert_close(b, full["box_logits"][lvl], atol=1e-6, rtol=0)
            assert torch.equal(tapped["box_logits"][lvl], full["box_logits"][lvl])
    with pytest.raises(ValueError, match="out of range"):
        model.bbox_head(feats, tower_layer=3)


# ----------------------------------------------------------------------------- the Distiller


@pytest.mark.parametrize("head", ["gfl", "gflv2"])
def test_student_equal_to_teacher_gives_the_teachers_predictions_and_zero_losses(head):
    student = tiny(0, head=head)
    dist = Distiller(student, copy.deepcopy(student), crosshead_layer=-2).train()  # norm_eval: BN in eval
    assert dist.crosshead_adapter is None  # same widths
    s_out, t_out = dist(images())
    assert set(s_out) == {"cls_logits", "box_logits"} | ({"raw_cls_logits"} if head == "gflv2" else set())
    for key in ("cls_logits", "box_logits"):
        for cross, own in zip(t_out[f"cross_{key}"], t_out[key]):
            torch.testing.assert_close(cross, own, atol=1e-5, rtol=0)
    losses = criterion()(s_out, targets(), t_out)
    for k in CROSS_KEYS:
        assert abs(losses[k].item()) < 1e-5, (k, losses[k])
    other = Distiller(student, tiny(1, head=head), crosshead_layer=-2).train()
    s_out, t_out = other(images())
    losses = criterion()(s_out, targets(), t_out)
    for k in CROSS_KEYS:
        assert losses[k].item() > 1e-4, k


def _manual_tap(head, x, k):
    """Tower features after conv k (its GroupNorm, before its ReLU), written out by hand."""
    taps = []
    for convs in (head.cls_convs, head.reg_convs):
        h = x
        for conv in convs[:k]:
            h = F.relu(conv.gn(conv.conv(h)))
        taps.append(convs[k].gn(convs[k].conv(h)))
    return taps


def _standardise(s, t):
    m_s, m_t = s.mean(dim=(0, 2, 3), keepdim=True), t.mean(dim=(0, 2, 3), keepdim=True)
    sd_s = ((s - m_s) ** 2).mean(dim=(0, 2, 3), keepdim=True).sqrt()
    sd_t = ((t - m_t) ** 2).mean(dim=(0, 2, 3), keepdim=True).sqrt()
    return (s - m_s) / (sd_s + 1e-6) * sd_t + m_t


@pytest.mark.parametrize("layer, conv", [(-1, 1), (1, 1), (0, 0), (-2, 0)])
def test_crosshead_layer_selects_the_tower_depth(layer, conv):
    student, teacher = tiny(0), tiny(1)
    dist = Distiller(student, teacher, crosshead_layer=layer).train()
    assert dist.crosshead_layers == (conv, conv)
    x = images()
    _, t_out = dist(x)
    with torch.no_grad():
        s_feats, t_feats = student.extract_feat(x), teacher.extract_feat(x)
        th = teacher.bbox_head
        for lvl, (sf, tf) in enumerate(zip(s_feats, t_feats)):
            s_cls, s_reg = _manual_tap(student.bbox_head, sf, conv)
            t_cls, t_reg = _manual_tap(th, tf, conv)
            c, r = F.relu(_standardise(s_cls, t_cls)), F.relu(_standardise(s_reg, t_reg))
            if conv == 0:  # the teacher's second (last) conv, then its predictors
                c, r = th.cls_convs[1](c), th.reg_convs[1](r)
            torch.testing.assert_close(t_out["cross_cls_logits"][lvl], th.gfl_cls(c), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(t_out["cross_box_logits"][lvl], th.scales[lvl](th.gfl_reg(r)),
                                       atol=1e-5, rtol=1e-5)


def test_negative_layers_count_from_each_towers_end():
    shallow, deep = tiny(0, convs=1), tiny(1, convs=3)
    assert crosshead_layers(shallow, deep, -1) == (0, 2)  # the teacher reuses only its predictors
    assert crosshead_layers(deep, shallow, -1) == (2, 0)
    assert crosshead_layers(tiny(0, convs=2), deep, -2) == (0, 1)
    assert crosshead_layers(shallow, deep, 0) == (0, 0)
    for bad in (1, -2, 5):
        with pytest.raises(ConfigError, match="distill.crosshead_layer"):
            Distiller(shallow, deep, crosshead_layer=bad)


def test_training_steps_leave_the_teacher_alone_and_train_the_student_and_adapter():
    student = tiny(0, width=16, convs=2)
    teacher = tiny(1, width=24, convs=3, train_bn=True)  # its BN would update if it were ever in train mode
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    dist = Distiller(student, teacher, crosshead_layer=-2).train()
    assert dist.crosshead_layers == (0, 1)
    assert isinstance(dist.crosshead_adapter, CrossHeadAdapter)
    assert not any(k.startswith("crosshead") for k in student.state_dict())  # the student stays plain
    adapter_before = copy.deepcopy(dist.crosshead_adapter.state_dict())
    crit = criterion(main=True)
    # a careless optimizer over *all* parameters (weight decay too) must still leave the teacher alone
    opt = torch.optim.SGD(dist.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    assert {id(p) for p in dist.crosshead_adapter.parameters()} <= {id(p) for g in opt.param_groups for p in g["params"]}
    for step in range(2):
        s_out, t_out = dist(images(seed=step))
        losses = crit(s_out, targets(), t_out)
        assert set(CROSS_KEYS) | {"loss_ld", "loss_ld_vlr", "loss_kd"} <= set(losses)
        opt.zero_grad()
        sum(losses.values()).backward()
        assert all(p.grad is None for p in teacher.parameters())
        assert dist.crosshead_adapter.cls.weight.grad.abs().sum() > 0
        assert dist.crosshead_adapter.reg.weight.grad.abs().sum() > 0
        opt.step()
    after = teacher.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), f"teacher {k} changed"
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert any(not torch.equal(v, dist.crosshead_adapter.state_dict()[k]) for k, v in adapter_before.items())

    # the cross-head terms alone reach the student only through the teacher's layers: its towers up to
    # the tapped conv get gradients, its later convs and its own predictors none
    dist.zero_grad(set_to_none=True)
    s_out, t_out = dist(images(seed=5))
    losses = crit(s_out, targets(), t_out)
    sum(losses[k] for k in CROSS_KEYS).backward()
    head = student.bbox_head
    for tower in (head.cls_convs, head.reg_convs):
        assert tower[0].conv.weight.grad.abs().sum() > 0
        assert tower[1].conv.weight.grad is None
    assert head.gfl_cls.weight.grad is None and head.gfl_reg.weight.grad is None
    assert student.backbone.layer4[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_bf16_autocast_and_missing_cross_outputs():
    dist = Distiller(tiny(0), tiny(1, width=24), crosshead_layer=-1).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s_out, t_out = dist(images())
    losses = criterion()(s_out, targets(), t_out)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert torch.isfinite(dist.crosshead_adapter.cls.weight.grad).all()
    plain_t_out = Distiller(tiny(0), tiny(1))(images())[1]
    with pytest.raises(ValueError, match="crosshead_layer"):
        criterion()(s_out, targets(), plain_t_out)


def test_config_switches_crosshead_on_and_from_config_builds_it():
    d = DistillConfig.from_recipe("ld")
    assert not d.crosshead and d.crosshead_layer == -2
    paper = DistillConfig.crosskd("t.py", "t.pth")
    assert paper.crosshead and (paper.ld_weight, paper.vlr_weight, paper.kd_weight) == (0, 0, 0)
    assert (paper.crosshead_ld_weight, paper.crosshead_ld_temperature, paper.crosshead_kd_weight,
            paper.crosshead_kd_beta, paper.crosshead_box_weight) == (3.0, 1.0, 1.0, 1.0, 2.0)
    assert Distiller.from_config(tiny(0), tiny(1), d).crosshead_layers is None
    assert Distiller.from_config(tiny(0), tiny(1, convs=4), paper).crosshead_layers == (0, 2)
    coco = load_config("ld/crosshead_gflv1_r101_r50_fpn_coco_1x")
    assert coco.distill.crosshead and coco.model.backbone.depth == 50
    assert load_config(coco.distill.teacher_config).model.backbone.depth == 101
    terms = build_criterion(coco).distill_terms
    assert terms.crosshead_weights == {"ld": 3.0, "kd": 1.0, "box": 2.0}
    assert (terms.crosshead_ld_temperature, terms.crosshead_kd_beta) == (1.0, 1.0)


# ----------------------------------------------------------------------------- DDP (gloo, 2 processes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, port: int) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from locdistill.engine.dist import wrap_ddp

        dist = Distiller(tiny(0), tiny(1, width=24), crosshead_layer=-1).train()
        with torch.no_grad():
            dist.crosshead_adapter.cls.weight.add_(rank)  # different adapters: DDP must broadcast rank 0's
        model = wrap_ddp(dist, torch.device("cpu"))
        assert type(dist.crosshead_adapter).__name__ == "DistributedDataParallel"
        weights = [torch.empty_like(dist.crosshead_adapter.module.cls.weight) for _ in range(2)]
        torch.distributed.all_gather(weights, dist.crosshead_adapter.module.cls.weight.detach())
        assert torch.equal(weights[0], weights[1])
        assert type(dist.teacher).__name__ != "DistributedDataParallel"
        crit = distilling_criterion(NUM_CLASSES, ld_weight=0.0, vlr_weight=0.25, kd_weight=10.0,
                                    crosshead_ld_weight=0.0, crosshead_kd_weight=1.0,
                                    crosshead_box_weight=0.0)  # the cls tower only
        s_out, t_out = model(images(seed=rank))
        sum(crit(s_out, targets(), t_out).values()).backward()
        assert all(p.grad is None for p in dist.teacher.parameters())
        grad = dist.crosshead_adapter.module.cls.weight.grad
        both = [torch.empty_like(grad) for _ in range(2)]
        torch.distributed.all_gather(both, grad)
        assert torch.equal(both[0], both[1]) and both[0].abs().sum() > 0  # averaged by DDP
        state = dist.training_state_dict()  # unwrapped from DDP
        assert set(state) == {"crosshead_adapter.cls.weight", "crosshead_adapter.cls.bias",
                              "crosshead_adapter.reg.weight", "crosshead_adapter.reg.bias"}
        fresh = Distiller(tiny(0), tiny(1, width=24), crosshead_layer=-1)
        fresh.load_training_state_dict(state)
        assert all(torch.equal(v, fresh.training_state_dict()[k]) for k, v in state.items())
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_wraps_the_adapter_with_the_student():
    torch.multiprocessing.spawn(_ddp_rank, args=(_free_port(),), nprocs=2, join=True)


# ----------------------------------------------------------------------------- end to end


TINY = ["data.digits_train=24", "data.digits_val=12", "data.digits_image_size=96", "data.img_scale=(96, 96)",
        "data.batch_size=8", "data.workers=0", "train.epochs=1", "train.warmup_iters=3", "train.log_interval=1",
        "train.device=cpu", "train.tensorboard=False", "model.backbone.base_channels=8",
        "model.neck.out_channels=32", "model.head.feat_channels=32", "model.head.stacked_convs=2",
        "model.head.num_groups=8"]


def test_tiny_digits_training_and_its_checkpoint_loads_into_the_plain_student(tmp_path):
    from locdistill.cli import main

    wd = tmp_path / "run"
    assert main(["train", "demo/crosshead_r34_r18_digits", "--work-dir", str(wd), "--set", *TINY]) == 0
    recs = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["mode"] == "train"]
    assert train_recs and all(set(CROSS_KEYS) <= set(r) for r in train_recs)
    assert all(math.isfinite(r[k]) for r in train_recs for k in CROSS_KEYS)
    assert "loss_ld" not in train_recs[0]  # the CrossKD recipe: cross-head terms only
    ck = load_checkpoint(wd / "latest.pth")
    # the adapter (student 32 → teacher 96 channels) is kept for --resume, outside the weights
    assert ck["distill_state"]["crosshead_adapter.cls.weight"].shape == (96, 32, 1, 1)
    assert not any("crosshead" in k or k.startswith("teacher") for k in ck["model"])
    plain = build_detector(load_config("demo/crosshead_r34_r18_digits", TINY).model)
    load_model_weights(plain, ck, strict=True)
    # --resume restores the adapter and trains on
    two = [o for o in TINY if not o.startswith("train.epochs")] + ["train.epochs=2"]
    assert main(["train", "demo/crosshead_r34_r18_digits", "--work-dir", str(wd), "--resume", "--set", *two]) == 0
    ck2 = load_checkpoint(wd / "latest.pth")
    assert ck2["meta"]["epoch"] == 2
    assert not torch.equal(ck2["distill_state"]["crosshead_adapter.cls.weight"],
                           ck["distill_state"]["crosshead_adapter.cls.weight"])
