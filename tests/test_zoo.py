"""Model zoo: GFLv2 head, ResNeXt / DCN / Res2Net backbones, mmdetection-family checkpoints.

Synthetic checkpoints follow the key/shape rules of ``shared/specs/README.md`` (built from
the R-50 spec file plus those rules, not from locdistill's own models) and hold small
broadcast tensors, so full-size layouts cost kilobytes on disk.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from locdistill.checkpoint import load_checkpoint, load_model_weights
from locdistill.cli import main
from locdistill.config import BackboneConfig, Config, HeadConfig, ModelConfig, NeckConfig, list_configs, load_config
from locdistill.errors import CheckpointError, ConfigError
from locdistill.losses import quality_focal_loss
from locdistill.models import DeformConv2d, GFLv2Head, Res2Net, ResNet, build_detector
from criteria import distilling_criterion
from locdistill.models.criterion import GFLCriterion
from locdistill.models.gfl_head import distribution_stats, joint_score_logits
from locdistill.tools.import_mmdet import (detect_source, import_checkpoint, infer_model_config, matching_configs,
                                           normalize_state_dict)

_SHARED = Path(__file__).resolve().parents[2] / "shared" / "specs"
SPEC_DIR = _SHARED if (_SHARED / "mmdet_gfl_r50_fpn_coco_keys.json").is_file() else Path(__file__).parent / "data"
SPEC: dict[str, list[int]] = json.loads((SPEC_DIR / "mmdet_gfl_r50_fpn_coco_keys.json").read_text())
COCO = tuple(f"class_{i}" for i in range(80))


# ----------------------------------------------------------------------------- synthetic layouts (spec rules)


def r101_shapes() -> dict[str, list[int]]:
    """R-50 spec + ``backbone.layer3.6 … layer3.22`` with layer3.5's shapes."""
    out = dict(SPEC)
    for k, v in SPEC.items():
        if k.startswith("backbone.layer3.5."):
            for m in range(6, 23):
                out[k.replace("layer3.5.", f"layer3.{m}.")] = v
    return dict(sorted(out.items()))


def with_dcn(shapes: dict, stages) -> dict:
    """DCN rule: ``conv2.conv_offset.weight [18, C, 3, 3]`` + ``.bias [18]`` in ``layerK`` for K in stages."""
    out = dict(shapes)
    for k, v in shapes.items():
        m = re.match(r"backbone\.layer(\d)\.\d+\.conv2\.weight$", k)
        if m and int(m.group(1)) in stages:
            out[k.replace("conv2.weight", "conv2.conv_offset.weight")] = [18, v[0], 3, 3]
            out[k.replace("conv2.weight", "conv2.conv_offset.bias")] = [18]
    return out


def with_gflv2(shapes: dict) -> dict:
    return {**shapes, "bbox_head.reg_conf.0.weight": [64, 20, 1, 1], "bbox_head.reg_conf.0.bias": [64],
            "bbox_head.reg_conf.2.weight": [1, 64, 1, 1], "bbox_head.reg_conf.2.bias": [1]}


def as_resnext_32x4d(shapes: dict) -> dict:
    """ResNeXt-101 32x4d: inner width ``w = 128·2^i`` in stage i, conv2 grouped 32 ways ``[w, w/32, 3, 3]``."""
    out = dict(shapes)
    for k, v in shapes.items():
        m = re.match(r"backbone\.layer(\d)\.\d+\.(conv1|bn1|conv2|bn2|conv3)\.(\w+)$", k)
        if not m or m.group(3) == "num_batches_tracked":
            continue
        w = 128 * 2 ** (int(m.group(1)) - 1)
        layer = m.group(2)
        if layer == "conv1":
            out[k] = [w, v[1], 1, 1]
        elif layer == "conv2":
            out[k] = [w, w // 32, 3, 3]  # 32 groups
        elif layer == "conv3":
            out[k] = [v[0], w, 1, 1]
        else:  # bn1 / bn2
            out[k] = [w]
    return out


def synth_state(shapes: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of exactly these shapes, stored as broadcast views (tiny on disk).

    Conv weights ~ N(0, 1/fan_in) along the last dim; BN variances positive;
    ``num_batches_tracked`` int64; ``integral.project`` the fixed ``linspace``.
    """
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(0)
        elif k.endswith("integral.project"):
            sd[k] = torch.linspace(0, shape[0] - 1, shape[0])
        elif not shape:
            sd[k] = torch.tensor(1.0 + 0.1 * torch.randn((), generator=gen).item())
        else:
            v = torch.randn(shape[-1], generator=gen)
            if k.endswith("running_var"):
                v = v.abs() + 0.5
            elif len(shape) == 4:
                v = v / math.sqrt(math.prod(shape[1:]))
            elif k.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "gn.weight")):
                v = 1 + 0.1 * v
            else:
                v = 0.1 * v
            sd[k] = v.expand(*shape)
    return sd


def meta_model(cfg: ModelConfig):
    with torch.device("meta"):
        return build_detector(cfg)


def loaded(cfg: ModelConfig, sd: dict) -> torch.nn.Module:
    """A detector holding exactly ``sd`` (built on meta, tensors assigned: no init cost)."""
    model = meta_model(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def zoo_model(name: str) -> ModelConfig:
    return load_config(name).model


LAYOUTS = {  # published layout -> (config, shapes)
    "mmdet GFL R-50": ("gfl/gfl_r50_fpn_coco_1x", lambda: dict(SPEC)),
    "mmdet GFL R-101 ms-2x": ("gfl/gfl_r101_fpn_mstrain_2x_coco", r101_shapes),
    "mmdet GFL R-101-DCN": ("gfl/gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco", lambda: with_dcn(r101_shapes(), (2, 3, 4))),
    "mmdet GFL X-101-32x4d-DCN": ("gfl/gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco",
                                  lambda: with_dcn(as_resnext_32x4d(r101_shapes()), (3, 4))),
    "GFocalV2 R-50": ("gflv2/gflv2_r50_fpn_mstrain_2x_coco", lambda: with_gflv2(SPEC)),
    "GFocalV2 R-101-DCN": ("gflv2/gflv2_r101_fpn_dconv_c3-c5_mstrain_2x_coco",
                           lambda: with_gflv2(with_dcn(r101_shapes(), (2, 3, 4)))),
    "GFocalV2 X-101-32x4d-DCN": ("gflv2/gflv2_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco",
                                 lambda: with_gflv2(with_dcn(as_resnext_32x4d(r101_shapes()), (3, 4)))),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- DCN


@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 1), (2, 4)])
def test_dcn_with_zero_offsets_is_the_plain_conv(stride, groups):
    torch.manual_seed(0)
    dcn = DeformConv2d(8, 16, 3, stride=stride, padding=1, groups=groups)
    assert torch.count_nonzero(dcn.conv_offset.weight) == 0 and torch.count_nonzero(dcn.conv_offset.bias) == 0
    x = torch.randn(2, 8, 11, 9)
    want = F.conv2d(x, dcn.weight, stride=stride, padding=1, groups=groups)
    torch.testing.assert_close(dcn(x), want, rtol=1e-5, atol=1e-5)


def test_dcn_offsets_are_dy_dx_pairs():
    """A constant offset (dy, dx) = (0, +1) samples one pixel to the right: conv of the shifted input."""
    torch.manual_seed(1)
    dcn = DeformConv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        dcn.conv_offset.bias[1::2] = 1.0  # odd channels are dx
    x = torch.randn(1, 3, 6, 7)
    # y(i, j) = sum_k w(ky, kx) · x(i + ky - 1, j + kx - 1 + 1), zero outside the image
    padded = F.pad(x, (0, 2, 1, 1))
    torch.testing.assert_close(dcn(x), F.conv2d(padded, dcn.weight), rtol=1e-5, atol=1e-5)


def test_resnet_dcn_and_resnext_keys_and_shapes():
    with torch.device("meta"):
        r = ResNet(101, dcn_stages=(2, 3, 4))
        x = ResNet(101, groups=32, base_width=4, dcn_stages=(3, 4))
    sd = {k: list(v.shape) for k, v in r.state_dict().items()}
    assert {("backbone." + k): v for k, v in sd.items()} == {
        k: v for k, v in with_dcn(r101_shapes(), (2, 3, 4)).items() if k.startswith("backbone.")}
    assert not any("conv_offset" in k for k in sd if k.startswith("layer1."))
    assert isinstance(r.layer2[0].conv2, DeformConv2d) and r.layer2[0].conv2.stride == 2
    xs = {k: list(v.shape) for k, v in x.state_dict().items()}
    assert xs["layer1.0.conv1.weight"] == [128, 64, 1, 1]
    assert xs["layer1.0.conv2.weight"] == [128, 4, 3, 3]
    assert xs["layer1.0.conv3.weight"] == [256, 128, 1, 1]
    assert xs["layer4.2.conv2.weight"] == [1024, 32, 3, 3]
    assert xs["layer3.0.conv2.conv_offset.weight"] == [18, 512, 3, 3]
    assert "layer2.0.conv2.conv_offset.weight" not in xs


def test_dcn_backbone_starts_as_the_plain_backbone():
    torch.manual_seed(0)
    plain = ResNet(50, base_channels=8, frozen_stages=-1).eval()
    dcn = ResNet(50, base_channels=8, frozen_stages=-1, dcn_stages=(2, 3, 4)).eval()
    missing = dcn.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(".conv_offset." in k for k in missing)
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(plain(x), dcn(x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_dcn_needs_bottlenecks():
    with pytest.raises(ConfigError, match="basic blocks"):
        ResNet(18, dcn_stages=(2,))
    with pytest.raises(ConfigError, match="dcn_stages"):
        build_detector(ModelConfig(backbone=BackboneConfig(depth=50, dcn_stages=(5,))))


# ----------------------------------------------------------------------------- Res2Net


def test_res2net_101_keys_and_shapes():
    with torch.device("meta"):
        r = Res2Net(101, dcn_stages=(3, 4))
    sd = {k: list(v.shape) for k, v in r.state_dict().items()}
    assert sd["stem.0.weight"] == [32, 3, 3, 3] and sd["stem.3.weight"] == [32, 32, 3, 3]
    assert sd["stem.6.weight"] == [64, 32, 3, 3] and sd["stem.7.running_var"] == [64]
    assert not any(k.startswith(("conv1.", "bn1.")) for k in sd)
    expect = {  # 26w×4s: width 26·2^i per scale, 4 scales
        "layer1.0.conv1.weight": [104, 64, 1, 1], "layer1.0.convs.0.weight": [26, 26, 3, 3],
        "layer1.0.bns.2.weight": [26], "layer1.0.conv3.weight": [256, 104, 1, 1],
        "layer1.0.downsample.1.weight": [256, 64, 1, 1], "layer1.0.downsample.2.weight": [256],
        "layer2.0.conv1.weight": [208, 256, 1, 1], "layer2.0.convs.2.weight": [52, 52, 3, 3],
        "layer2.0.downsample.1.weight": [512, 256, 1, 1], "layer3.22.conv3.weight": [1024, 416, 1, 1],
        "layer3.0.convs.1.conv_offset.weight": [18, 104, 3, 3], "layer4.2.convs.0.conv_offset.bias": [18],
        "layer4.0.downsample.2.running_mean": [2048],
    }
    assert {k: sd.get(k) for k in expect} == expect
    assert len({int(k.split(".")[1]) for k in sd if k.startswith("layer3.")}) == 23
    assert not any("conv_offset" in k for k in sd if k.startswith(("layer1.", "layer2.")))
    assert not any(".convs.3." in k or ".bns.3." in k or ".conv2." in k for k in sd)
    assert "layer1.1.downsample.1.weight" not in sd


def _manual_bottle2neck(blk, x):
    """The Res2Net block written out with functional ops (eval-mode BN)."""
    def bn(m, t):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    out = F.relu(bn(blk.bn1, F.conv2d(x, blk.conv1.weight)))
    w = blk.width
    parts = [out[:, i * w:(i + 1) * w] for i in range(blk.scales)]
    ys = []
    for i in range(blk.scales - 1):
        inp = parts[i] if (i == 0 or blk.first) else ys[-1] + parts[i]
        ys.append(F.relu(bn(blk.bns[i], F.conv2d(inp, blk.convs[i].weight, stride=blk.stride, padding=1))))
    last = parts[-1]
    if blk.first and blk.stride != 1:
        last = F.avg_pool2d(last, 3, blk.stride, 1)
    out = bn(blk.bn3, F.conv2d(torch.cat(ys + [last], 1), blk.conv3.weight))
    ident = x
    if blk.downsample is not None:
        pooled = F.avg_pool2d(x, blk.stride, blk.stride, ceil_mode=True, count_include_pad=False)
        ident = bn(blk.downsample[2], F.conv2d(pooled, blk.downsample[1].weight))
    return F.relu(out + ident)


def test_res2net_blocks_match_a_manual_computation():
    torch.manual_seed(0)
    r = Res2Net(50, base_channels=16, frozen_stages=-1, out_indices=(0, 1, 2, 3)).eval()
    for m in r.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 16, 13, 11)  # odd sizes: ceil-mode avg-down
    first, normal = r.layer1[0], r.layer1[1]
    assert first.first and first.stride == 1 and not normal.first
    torch.testing.assert_close(first(x), _manual_bottle2neck(first, x), rtol=1e-4, atol=1e-5)
    y = torch.randn(1, 64, 13, 11)
    torch.testing.assert_close(normal(y), _manual_bottle2neck(normal, y), rtol=1e-4, atol=1e-5)
    strided = r.layer2[0]  # strided first block: pooled pass-through group, ceil-mode avg-down
    assert strided.first and strided.stride == 2
    torch.testing.assert_close(strided(y), _manual_bottle2neck(strided, y), rtol=1e-4, atol=1e-5)
    outs = r(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]


def test_res2net_stem_is_frozen():
    r = Res2Net(50, base_channels=16, frozen_stages=1).train()
    assert not r.stem.training and not any(p.requires_grad for p in r.stem.parameters())
    assert not any(p.requires_grad for p in r.layer1.parameters())
    assert all(p.requires_grad for p in r.layer2.parameters())


# ----------------------------------------------------------------------------- GFLv2 head


def test_gflv2_quality_on_a_hand_built_distribution():
    """Known bin probabilities and DGQP weights -> quality computed by hand in numpy."""
    head = GFLv2Head(num_classes=2, in_channels=4, feat_channels=4, stacked_convs=1, num_groups=1, reg_max=4,
                     num_levels=1)
    probs = np.array([[0.1, 0.2, 0.4, 0.2, 0.1],     # l
                      [0.0625, 0.0625, 0.75, 0.0625, 0.0625],  # t
                      [0.2, 0.2, 0.2, 0.2, 0.2],     # r
                      [0.5, 0.3, 0.1, 0.05, 0.05]])  # b
    # per side: the 4 largest, descending, then their mean
    stats = np.array([0.4, 0.2, 0.2, 0.1, 0.225,
                      0.75, 0.0625, 0.0625, 0.0625, 0.234375,
                      0.2, 0.2, 0.2, 0.2, 0.2,
                      0.5, 0.3, 0.1, 0.05, 0.2375])
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(64, 20)), rng.normal(size=64)
    w1, b1 = rng.normal(size=(1, 64)) * 0.1, np.array([0.3])
    with torch.no_grad():
        head.reg_conf[0].weight.copy_(torch.tensor(w0).view(64, 20, 1, 1))
        head.reg_conf[0].bias.copy_(torch.tensor(b0))
        head.reg_conf[2].weight.copy_(torch.tensor(w1).view(1, 64, 1, 1))
        head.reg_conf[2].bias.copy_(torch.tensor(b1))
    box_logits = torch.tensor(np.log(probs), dtype=torch.float32).reshape(1, 20, 1, 1)
    np.testing.assert_allclose(distribution_stats(box_logits, 4).reshape(20).numpy(), stats, rtol=1e-6, atol=1e-7)
    hidden = np.maximum(w0 @ stats + b0, 0)
    quality = 1 / (1 + np.exp(-(w1 @ hidden + b1)))  # [1]
    got = torch.sigmoid(head.quality_logits(box_logits)).item()
    assert got == pytest.approx(quality[0], rel=1e-5)

    # the joint score of a full forward: sigmoid(cls) * quality
    feats = [torch.randn(1, 4, 3, 3)]
    out = head(feats)
    assert set(out) == {"cls_logits", "box_logits", "raw_cls_logits"}
    q = torch.sigmoid(head.quality_logits(out["box_logits"][0]))
    torch.testing.assert_close(out["cls_logits"][0].sigmoid(), out["raw_cls_logits"][0].sigmoid() * q,
                               rtol=1e-5, atol=1e-7)


def test_joint_score_logits_is_stable_and_exact():
    a = torch.tensor([-40.0, -5.0, 0.0, 3.0, 30.0, 80.0]).repeat_interleave(6)
    d = torch.tensor([-40.0, -5.0, 0.0, 3.0, 30.0, 80.0]).repeat(6)
    z = joint_score_logits(a.view(1, -1, 1, 1), d.view(1, -1, 1, 1)).flatten()
    assert torch.isfinite(z).all()
    p = torch.sigmoid(a.double()) * torch.sigmoid(d.double())
    torch.testing.assert_close(torch.sigmoid(z.double()), p, rtol=1e-5, atol=1e-30)


def test_qfl_on_joint_logits_is_gfocalv2_qfl_on_probabilities():
    """GFocalV2 runs QFL (BCE) on sigmoid(cls)·quality; ours runs it on the joint logits: same values and grads."""
    torch.manual_seed(0)
    a = torch.randn(50, 5, requires_grad=True)
    d = torch.randn(50, 1, requires_grad=True)
    labels = torch.randint(0, 6, (50,))
    scores = torch.rand(50)
    z = joint_score_logits(a[..., None, None], d[..., None, None].expand(50, 1, 1, 1))[..., 0, 0]
    ours = quality_focal_loss(z, labels, scores).sum()
    ga, gd = torch.autograd.grad(ours, (a, d))
    ref = quality_focal_loss(a.sigmoid() * d.sigmoid(), labels, scores, activated=True).sum()
    ra, rd = torch.autograd.grad(ref, (a, d))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ga, ra, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gd, rd, rtol=1e-4, atol=1e-6)


def _tiny(head_type="gfl", depth=18, **backbone) -> ModelConfig:
    return ModelConfig(num_classes=3, backbone=BackboneConfig(depth=depth, base_channels=8, **backbone),
                       neck=NeckConfig(out_channels=16),
                       head=HeadConfig(type=head_type, feat_channels=16, stacked_convs=2, num_groups=4, reg_max=4))


TARGETS = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 30.0], [20.0, 20.0, 60.0, 62.0]]), "labels": torch.tensor([1, 2])},
           {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]


def test_gflv2_student_trains_and_kd_uses_raw_logits():
    torch.manual_seed(0)
    model = build_detector(_tiny("gflv2")).train()
    crit = GFLCriterion(3, reg_max=4)
    out = model(torch.randn(2, 3, 64, 64))
    losses = crit(out, TARGETS)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_dfl"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.bbox_head.reg_conf[0].weight.grad.abs().sum() > 0
    assert model.bbox_head.gfl_cls.weight.grad.abs().sum() > 0
    # teacher with the same raw class logits but another quality: KD (on raw logits) is zero
    detached = {k: [t.detach() for t in v] for k, v in out.items()}
    teacher = dict(detached, cls_logits=[c - 3.0 for c in detached["cls_logits"]])
    kd = distilling_criterion(3, reg_max=4, ld_weight=0, vlr_weight=0, kd_weight=10, crosshead_ld_weight=0.0,
                              crosshead_kd_weight=0.0, crosshead_box_weight=0.0)
    assert kd(detached, TARGETS, teacher_outputs=teacher)["loss_kd"].item() == pytest.approx(0.0, abs=1e-7)
    teacher_v1 = {"cls_logits": detached["raw_cls_logits"], "box_logits": detached["box_logits"]}  # a GFL v1 teacher
    assert kd(detached, TARGETS, teacher_outputs=teacher_v1)["loss_kd"].item() == pytest.approx(0.0, abs=1e-7)


def test_gflv2_teacher_from_an_ld_repo_checkpoint_distils_a_v1_student(tmp_path):
    from locdistill.config import dump_config_py
    from locdistill.distill import Distiller, build_teacher

    torch.manual_seed(0)
    t_cfg = Config(name="t", model=_tiny("gflv2", depth=50))
    (tmp_path / "t.py").write_text(dump_config_py(t_cfg))
    t_sd = build_detector(t_cfg.model).state_dict()
    # LD-repo layout: the (GFLv2) model's keys plus its own teacher's, CLASSES in mmdet 2.x meta
    sd = dict(t_sd, **{f"teacher_model.{k}": v for k, v in t_sd.items()})
    torch.save({"meta": {"mmdet_version": "2.11.0", "CLASSES": ("a", "b", "c")}, "state_dict": sd},
               tmp_path / "t.pth")
    teacher = build_teacher(str(tmp_path / "t.py"), str(tmp_path / "t.pth"))
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, t_sd[k]), k
    student = build_detector(_tiny("gfl", depth=18))
    d = Distiller(student, teacher).train()
    s_out, t_out = d(torch.randn(2, 3, 64, 64))
    assert "raw_cls_logits" in t_out and "raw_cls_logits" not in s_out
    crit = distilling_criterion(3, reg_max=4, ld_weight=0.25, vlr_weight=0.25, kd_weight=10.0, crosshead_ld_weight=0.0,
                                crosshead_kd_weight=0.0, crosshead_box_weight=0.0)
    losses = crit(s_out, TARGETS, teacher_outputs=t_out)
    assert {"loss_ld", "loss_ld_vlr", "loss_kd"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


# ----------------------------------------------------------------------------- configs


ALL_CONFIGS = list_configs()
ZOO_CONFIGS = [n for n in ALL_CONFIGS if n.startswith(("gfl/", "gflv2/"))]


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_config_builds(name):
    cfg = load_config(name)
    model = meta_model(cfg.model)
    assert model.strides == tuple(cfg.model.head.strides)


@pytest.mark.parametrize("name", ZOO_CONFIGS)
def test_zoo_configs_name_checkpoint_and_ap(name):
    from locdistill.config import resolve_config_path

    text = resolve_config_path(name).read_text()
    comment = " ".join(line for line in text.splitlines() if line.startswith("#"))
    assert re.search(r"\d\d\.\d box AP|\d\d\.\d AP", comment), name
    assert "checkpoint" in comment, name


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_published_layout_equals_the_config_model(layout):
    name, shapes = LAYOUTS[layout]
    own = {k: list(v.shape) for k, v in meta_model(zoo_model(name)).state_dict().items()}
    assert own == shapes()


# ----------------------------------------------------------------------------- checkpoints


def _save_layout(path: Path, sd: dict, fmt: str) -> Path:
    if fmt == "mmdet2":
        obj = {"meta": {"mmdet_version": "2.3.0", "CLASSES": COCO, "epoch": 24, "config": "model = dict()"},
               "state_dict": sd}
    elif fmt == "mmdet3":
        obj = {"meta": {"mmengine_version": "0.10.3", "dataset_meta": {"classes": COCO, "palette": [[1, 2, 3]]},
                        "epoch": 24}, "state_dict": sd, "message_hub": {"log_scalars": {}}}
    elif fmt == "ld":
        obj = {"meta": {"mmdet_version": "2.11.0", "CLASSES": COCO}, "state_dict": {
            **sd, **{f"teacher_model.{k}": v for k, v in list(sd.items())[:40]},
            "bbox_head.teacher_models.0.gfl_cls.weight": sd["bbox_head.gfl_cls.weight"]}}
    else:
        obj = sd
    torch.save(obj, path)
    return path


def _outputs_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        for x, y in zip(a[k], b[k]):
            assert torch.equal(x, y), k


META_COPY = "ignore:for .*copying from a non-meta parameter"  # load_model_weights into a meta model: keys only


@pytest.mark.filterwarnings(META_COPY)
@pytest.mark.parametrize("layout,fmt", [
    ("mmdet GFL R-50", "mmdet2"), ("mmdet GFL R-50", "bare"), ("mmdet GFL R-101 ms-2x", "mmdet3"),
    ("mmdet GFL R-101-DCN", "mmdet2"), ("mmdet GFL X-101-32x4d-DCN", "mmdet2"), ("GFocalV2 R-50", "mmdet2"),
    ("GFocalV2 R-101-DCN", "ld"), ("GFocalV2 X-101-32x4d-DCN", "mmdet2")])
def test_published_layouts_load_strictly_and_round_trip(tmp_path, layout, fmt):
    name, shapes = LAYOUTS[layout]
    sd = synth_state(shapes())
    src = _save_layout(tmp_path / f"{name.split('/')[-1]}_20200630-0123abcd.pth", sd, fmt)

    cfg = zoo_model(name)
    direct = meta_model(cfg)
    ck = load_checkpoint(src)
    diff = load_model_weights(direct, ck, strict=True)  # the transparent path: train / test / Distiller
    assert not any(diff.values())

    res = import_checkpoint(src, tmp_path / "imported.pth")
    assert res.config_name == name  # the file name picks among same-architecture configs
    assert (res.classes == list(COCO)) == (fmt != "bare")
    imported = torch.load(res.path, weights_only=True)  # plain data only
    assert imported["config"]["name"] == name.split("/")[-1] and imported["meta"]["source"] == detect_source(ck, (
        ck.get("state_dict") or ck))
    assert not any(k.startswith("teacher") or ".teacher" in k for k in imported["model"])
    ref = {k: v for k, v in sd.items()}
    assert set(imported["model"]) == set(ref)
    assert all(torch.equal(imported["model"][k], ref[k]) for k in ref)

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = loaded(cfg, normalize_state_dict(ck.get("state_dict") or ck)[0])(x)
        b = loaded(cfg, imported["model"])(x)
    _outputs_equal(a, b)

    # the imported file also works through the CLI-facing loader with its own config
    load_model_weights(meta_model(cfg), res.path, strict=True)


def test_import_mmdet_cli_and_sources(tmp_path, capsys):
    sd = synth_state(with_gflv2(SPEC))
    src = _save_layout(tmp_path / "gfocal_r50_fpn_ms2x.pth", sd, "mmdet2")
    assert main(["import-mmdet", str(src), str(tmp_path / "out.pth")]) == 0
    out = capsys.readouterr().out
    assert "GFocalV2 repository" in out and "GFLv2" in out and "strict key check passed" in out
    assert "gflv2/gflv2_r50_fpn_1x_coco" in out and "gflv2/gflv2_r50_fpn_mstrain_2x_coco" in out
    ck = load_checkpoint(tmp_path / "out.pth")
    assert ck["meta"]["classes"] == list(COCO)
    # with an explicit config that fits
    assert main(["import-mmdet", str(src), str(tmp_path / "o2.pth"), "--config", "gflv2/gflv2_r50_fpn_1x_coco"]) == 0
    # ... and one that does not: grouped diff + the right config named, nothing written
    rc = main(["import-mmdet", str(src), str(tmp_path / "o3.pth"), "--config", "gfl/gfl_r101_fpn_mstrain_2x_coco"])
    err = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / "o3.pth").exists()
    assert "missing in file" in err and "unexpected in file (4): bbox_head.reg_conf.* (4)" in err
    assert "model.head.type=gflv2" in err and "model.backbone.depth=50" in err


def test_non_gfl_checkpoint_is_named(tmp_path):
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, tmp_path / "r.pth")
    with pytest.raises(CheckpointError, match=r"r\.pth.*no 'bbox_head\.gfl_cls\.weight'.*not a GFL"):
        import_checkpoint(tmp_path / "r.pth", tmp_path / "o.pth")


def test_missing_fixed_buffers_are_filled():
    sd = synth_state(SPEC)
    del sd["bbox_head.integral.project"]
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    model = meta_model(zoo_model("gfl/gfl_r50_fpn_coco_1x"))
    out, notes = normalize_state_dict(sd, own=model.state_dict())
    assert set(out) == set(SPEC) and notes and "filled 54 fixed buffers" in notes[-1]


# ----------------------------------------------------------------------------- config guessing


@pytest.mark.filterwarnings(META_COPY)
@pytest.mark.parametrize("layout,config,expect", [
    ("mmdet GFL R-101 ms-2x", "gfl/gfl_r50_fpn_coco_1x",
     ["ResNet-101", "gfl/gfl_r101_fpn_mstrain_2x_coco", "--set model.backbone.depth=101"]),
    ("GFocalV2 R-50", "gfl/gfl_r50_fpn_coco_1x",
     ["GFLv2 (DGQP)", "gflv2/gflv2_r50_fpn_mstrain_2x_coco", "model.head.type=gflv2"]),
    ("mmdet GFL R-101-DCN", "gfl/gfl_r101_fpn_mstrain_2x_coco",
     ["DCN in layer2,3,4", "gfl/gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco", "model.backbone.dcn_stages=[2,3,4]"]),
    ("mmdet GFL X-101-32x4d-DCN", "gfl/gfl_r101_fpn_mstrain_2x_coco",
     ["ResNeXt-101 32x4d", "model.backbone.groups=32", "model.backbone.base_width=4",
      "model.backbone.dcn_stages=[3,4]"]),
])
def test_mismatch_names_the_right_config(layout, config, expect):
    _, shapes = LAYOUTS[layout]
    with pytest.raises(CheckpointError) as e:
        load_model_weights(meta_model(zoo_model(config)), {"state_dict": synth_state(shapes())}, source="zoo.pth")
    msg = str(e.value)
    assert "zoo.pth does not match" in msg and "The file holds:" in msg
    for s in expect:
        assert s in msg, (s, msg)


def test_infer_model_config_of_the_spec():
    m = infer_model_config(synth_state(SPEC))
    assert (m.backbone.depth, m.backbone.groups, m.backbone.dcn_stages, m.head.type, m.num_classes) == (
        50, 1, (), "gfl", 80)
    assert matching_configs(m) == ["gfl/gfl_r50_fpn_coco_1x", "gfl/gfl_r50_fpn_mstrain_2x_coco"]
    r2 = infer_model_config(meta_model(zoo_model("gflv2/gflv2_r2_101_fpn_dconv_c4-c5_mstrain_2x_coco")).state_dict())
    assert (r2.backbone.type, r2.backbone.depth, r2.backbone.base_width, r2.backbone.scales,
            r2.backbone.dcn_stages, r2.head.type) == ("res2net", 101, 26, 4, (3, 4), "gflv2")


# ----------------------------------------------------------------------------- safety


class _Reduce:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("kind", ["os.system", "eval"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, capsys, kind):
    marker = tmp_path / "pwned"
    payload = (_Reduce(os.system, f"touch {marker}") if kind == "os.system"
               else _Reduce(eval, f"open({str(marker)!r}, 'w').close()"))
    src = tmp_path / "evil.pth"
    torch.save({"meta": {"CLASSES": COCO, "config": payload}, "state_dict": synth_state(SPEC)}, src)

    rc = main(["import-mmdet", str(src), str(tmp_path / "out.pth")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "evil.pth" in err and "safe load refuses" in err and "is not allowed" in err and "could run code" in err
    with pytest.raises(CheckpointError, match="safe load refuses"):
        load_model_weights(meta_model(zoo_model("gfl/gfl_r50_fpn_coco_1x")), src)
    assert main(["test", "gfl/gfl_r50_fpn_coco_1x", str(src)]) == 2
    assert not marker.exists() and not (tmp_path / "out.pth").exists()


def test_mmengine_metadata_objects_are_read_without_importing_mmengine(tmp_path):
    """mmdet 3.x files pickle mmengine objects (message hub); they load as inert stand-ins."""
    mod = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self):
            self._log_history = np.array([0.5, 0.25])

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = mod.__name__, "HistoryBuffer"
    mod.HistoryBuffer = HistoryBuffer
    names = ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer")
    sys.modules.update({n: (mod if n == mod.__name__ else types.ModuleType(n)) for n in names})
    try:
        torch.save({"meta": {"dataset_meta": {"classes": COCO}, "mmengine_version": "0.10.3"},
                    "state_dict": synth_state(SPEC), "message_hub": {"loss": HistoryBuffer()}}, tmp_path / "m3.pth")
    finally:
        for n in names:
            sys.modules.pop(n, None)
    res = import_checkpoint(tmp_path / "m3.pth", tmp_path / "out.pth")
    assert "mmengine" not in sys.modules
    assert res.source == "mmdetection 3.x" and res.classes == list(COCO)


# ----------------------------------------------------------------------------- slow: full-size real tensors


@pytest.mark.slow
def test_full_size_gflv2_r101_dcn_round_trip_with_real_tensors(tmp_path):
    """Dense random weights (not broadcast), a real (non-meta) model, the CLI test-time loader."""
    name = "gflv2/gflv2_r101_fpn_dconv_c3-c5_mstrain_2x_coco"
    shapes = with_gflv2(with_dcn(r101_shapes(), (2, 3, 4)))
    sd = {k: v.clone() for k, v in synth_state(shapes).items()}
    gen = torch.Generator().manual_seed(3)
    for k, v in sd.items():
        if v.is_floating_point() and v.dim() == 4:
            sd[k] = torch.randn(v.shape, generator=gen) / math.sqrt(math.prod(v.shape[1:]))
    src = _save_layout(tmp_path / "gfocal_r101_dcn_fpn_ms2x.pth", sd, "ld")
    res = import_checkpoint(src, tmp_path / "imp.pth")
    assert res.config_name == name
    a, b = build_detector(zoo_model(name)).eval(), build_detector(zoo_model(name)).eval()
    load_model_weights(a, src)
    load_model_weights(b, res.path)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        _outputs_equal(a(x), b(x))


@pytest.mark.parametrize("name", [n for n in ALL_CONFIGS if n.startswith("ld/ld_gflv2_")])
def test_gflv2_ld_configs_pair_compatible_models(name):
    """The LD repo's GFLv2 recipe: main-region LD only; teacher and student both GFLv2, same levels / bins."""
    from locdistill.distill import check_compatible

    cfg = load_config(name)
    d = cfg.distill
    assert (d.ld_weight, d.ld_temperature, d.vlr_weight, d.kd_weight) == (0.25, 10.0, 0.0, 0.0)
    teacher = load_config(d.teacher_config)
    assert cfg.model.head.type == teacher.model.head.type == "gflv2"
    assert d.teacher_checkpoint == f"checkpoints/{d.teacher_config.split('/')[-1]}.pth"
    check_compatible(meta_model(cfg.model), meta_model(teacher.model))
    text = Path(__file__).resolve().parents[1].joinpath("locdistill/configs", name + ".py").read_text()
    assert re.search(r"Published .*\d\d\.\d box AP", text)
