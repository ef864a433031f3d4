"""Backbone / FPN / GFL head / detector: mmdet key layout, freezing, shapes, init."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from locdistill.config import BackboneConfig, HeadConfig, ModelConfig, NeckConfig
from locdistill.errors import CheckpointError, ConfigError
from locdistill.models import FPN, GFL, GFLHead, Integral, ResNet, build_detector

_SHARED = Path(__file__).resolve().parents[2] / "shared" / "specs"
# the shared reference data when present, else the verbatim copies in tests/data (clean clones)
SPEC_DIR = _SHARED if (_SHARED / "mmdet_gfl_r50_fpn_coco_keys.json").is_file() else Path(__file__).parent / "data"
SPEC = SPEC_DIR / "mmdet_gfl_r50_fpn_coco_keys.json"


@pytest.fixture(scope="module")
def spec() -> dict[str, list[int]]:
    return json.loads(SPEC.read_text())


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids thread-pool hand-offs (slow on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _meta_build(cfg: ModelConfig) -> GFL:
    with torch.device("meta"):  # keys and shapes only: no memory, no init cost
        return build_detector(cfg)


def _tiny_cfg(depth: int = 18, **backbone) -> ModelConfig:
    return ModelConfig(
        num_classes=3,
        backbone=BackboneConfig(depth=depth, base_channels=8, **backbone),
        neck=NeckConfig(out_channels=16),
        head=HeadConfig(feat_channels=16, stacked_convs=2, num_groups=4, reg_max=4),
    )


# ----------------------------------------------------------------------------- key layout


def test_r50_keys_and_shapes_match_mmdet_exactly(spec):
    model = build_detector(ModelConfig(num_classes=80))
    assert _shapes(model) == spec
    gen = torch.Generator().manual_seed(0)
    random_sd = {k: (torch.randn(s, generator=gen) if s else torch.tensor(7)) for k, s in spec.items()}
    result = model.load_state_dict(random_sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    sd = model.state_dict()
    for k in ("backbone.layer3.5.conv2.weight", "neck.fpn_convs.4.conv.bias",
              "bbox_head.gfl_reg.weight", "bbox_head.scales.2.scale", "bbox_head.cls_convs.3.gn.weight"):
        assert torch.equal(sd[k], random_sd[k]), k


def test_r101_keys_are_r50_plus_layer3_blocks_6_to_22(spec):
    shapes = _shapes(_meta_build(ModelConfig(backbone=BackboneConfig(depth=101))))
    extra = {k: v for k, v in shapes.items() if k not in spec}
    assert {k: v for k, v in shapes.items() if k in spec} == spec
    blocks = {int(re.match(r"backbone\.layer3\.(\d+)\.", k).group(1)) for k in extra}
    assert blocks == set(range(6, 23))
    # every extra block has the same keys/shapes as layer3.5
    for k, v in extra.items():
        assert spec[re.sub(r"layer3\.\d+\.", "layer3.5.", k)] == v


@pytest.mark.parametrize("depth,blocks", [(18, (2, 2, 2, 2)), (34, (3, 4, 6, 3))])
def test_basicblock_keys(spec, depth, blocks):
    shapes = _shapes(_meta_build(ModelConfig(backbone=BackboneConfig(depth=depth))))
    bb = {k[len("backbone."):]: v for k, v in shapes.items() if k.startswith("backbone.")}
    assert not any("conv3" in k or "bn3" in k for k in bb)
    for stage, n in enumerate(blocks, start=1):
        width = 64 * 2 ** (stage - 1)
        assert {int(k.split(".")[1]) for k in bb if k.startswith(f"layer{stage}.")} == set(range(n))
        for m in range(n):
            cin = width if (m > 0 or stage == 1) else width // 2
            blk = f"layer{stage}.{m}."
            assert bb[blk + "conv1.weight"] == [width, cin, 3, 3]
            assert bb[blk + "conv2.weight"] == [width, width, 3, 3]
            for bn in ("bn1", "bn2"):
                assert bb[f"{blk}{bn}.running_var"] == [width]
            has_ds = any(k.startswith(blk + "downsample") for k in bb)
            assert has_ds == (m == 0 and stage > 1)
            if has_ds:
                assert bb[blk + "downsample.0.weight"] == [width, cin, 1, 1]
                assert bb[blk + "downsample.1.weight"] == [width]
    assert bb["conv1.weight"] == [64, 3, 7, 7]
    # neck laterals from 128/256/512 channels; head identical to the R-50 model
    for i, c in enumerate((128, 256, 512)):
        assert shapes[f"neck.lateral_convs.{i}.conv.weight"] == [256, c, 1, 1]
    rest = {k: v for k, v in shapes.items() if not k.startswith(("backbone.", "neck.lateral_convs"))}
    assert rest == {k: v for k, v in spec.items() if not k.startswith(("backbone.", "neck.lateral_convs"))}


def test_base_channels_scales_widths():
    r = ResNet(50, base_channels=16, frozen_stages=-1)
    assert r.out_channels == [128, 256, 512] and r.out_strides == [8, 16, 32]
    assert r.conv1.weight.shape == (16, 3, 7, 7)
    assert ResNet(18, base_channels=8, out_indices=(0, 1, 2, 3)).out_channels == [8, 16, 32, 64]


# ----------------------------------------------------------------------------- freezing


def _bns(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_frozen_stages_and_norm_eval():
    r = ResNet(18, base_channels=8, frozen_stages=1, norm_eval=True)
    frozen = [r.conv1, r.bn1, r.layer1]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in (r.layer2, r.layer3, r.layer4) for p in m.parameters())
    r.train()
    assert r.training and r.layer2.training  # the modules themselves follow train()
    assert all(not m.training for m in _bns(r))  # norm_eval: every BN in eval
    assert all(not m.training for m in r.layer1.modules())  # frozen stage fully in eval
    before = r.layer3[0].bn1.running_mean.clone()
    r(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, r.layer3[0].bn1.running_mean)  # stats untouched in train mode


def test_no_norm_eval_trains_unfrozen_bn_only():
    r = ResNet(18, base_channels=8, frozen_stages=1, norm_eval=False).train()
    assert all(not m.training for m in _bns(r.layer1)) and not r.bn1.training
    assert all(m.training for m in _bns(r.layer2) + _bns(r.layer4))
    r.eval()
    assert not any(m.training for m in r.modules())
    r2 = ResNet(18, base_channels=8, frozen_stages=-1, norm_eval=False).train()
    assert all(p.requires_grad for p in r2.parameters()) and all(m.training for m in _bns(r2))


def test_detector_train_keeps_backbone_frozen():
    model = build_detector(_tiny_cfg())
    model.train()
    assert model.bbox_head.training and not model.backbone.layer1.training
    assert not model.backbone.layer4[0].bn1.training and model.backbone.layer4[0].bn1.weight.requires_grad
    out = model(torch.randn(2, 3, 64, 64))
    (sum(x.sum() for x in out["cls_logits"]) + sum(x.sum() for x in out["box_logits"])).backward()
    assert model.backbone.layer1[0].conv1.weight.grad is None and model.backbone.conv1.weight.grad is None
    for p in (model.backbone.layer2[0].conv1.weight, model.backbone.layer4[1].bn2.weight,
              model.neck.fpn_convs[4].conv.weight, model.bbox_head.scales[0].scale, model.bbox_head.gfl_reg.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all()


# ----------------------------------------------------------------------------- FPN


def test_fpn_matches_manual_computation_and_p7_has_no_relu():
    torch.manual_seed(0)
    fpn = FPN([4, 6, 8], out_channels=5, num_outs=5)
    for m in fpn.modules():  # non-zero biases make a missing/extra term visible
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.bias)
    c3, c4, c5 = torch.randn(2, 4, 13, 11), torch.randn(2, 6, 7, 6), torch.randn(2, 8, 4, 3)
    outs = fpn([c3, c4, c5])

    def conv(i, x, name="fpn_convs", stride=1):
        c = getattr(fpn, name)[i].conv
        return F.conv2d(x, c.weight, c.bias, stride=stride, padding=c.padding)

    l5 = conv(2, c5, "lateral_convs")
    l4 = conv(1, c4, "lateral_convs") + F.interpolate(l5, size=(7, 6), mode="nearest")
    l3 = conv(0, c3, "lateral_convs") + F.interpolate(l4, size=(13, 11), mode="nearest")
    p3, p4, p5 = conv(0, l3), conv(1, l4), conv(2, l5)
    p6 = conv(3, p5, stride=2)  # on P5's output, not on C5
    p7 = conv(4, p6, stride=2)  # no ReLU in between
    for got, want in zip(outs, (p3, p4, p5, p6, p7)):
        torch.testing.assert_close(got, want)
    assert [tuple(o.shape[-2:]) for o in outs] == [(13, 11), (7, 6), (4, 3), (2, 2), (1, 1)]
    assert (p6 < 0).any()
    assert not torch.allclose(outs[4], conv(4, F.relu(p6), stride=2))


def test_fpn_init_xavier_bias_zero():
    fpn = FPN([64, 128, 256], out_channels=32)
    conv = fpn.lateral_convs[1].conv
    bound = math.sqrt(6.0 / (128 + 32))
    assert conv.weight.abs().max() <= bound and conv.weight.std() > bound / 4
    assert all(torch.all(m.conv.bias == 0) for m in list(fpn.lateral_convs) + list(fpn.fpn_convs))
    assert len(fpn.fpn_convs) == 5 and fpn.fpn_convs[3].conv.stride == (2, 2)


# ----------------------------------------------------------------------------- head / detector


def test_head_init():
    head = GFLHead(num_classes=7, in_channels=32, feat_channels=32, num_groups=8, reg_max=16)
    torch.testing.assert_close(head.gfl_cls.bias, torch.full((7,), -math.log(99)))
    torch.testing.assert_close(torch.sigmoid(head.gfl_cls.bias), torch.full((7,), 0.01))
    assert torch.all(head.gfl_reg.bias == 0) and head.gfl_reg.out_channels == 68
    assert head.cls_convs[0].conv.bias is None and head.reg_convs[3].gn.num_groups == 8
    assert abs(head.cls_convs[1].conv.weight.std().item() - 0.01) < 0.002
    for s in head.scales:
        assert s.scale.dim() == 0 and s.scale.item() == 1.0 and s.scale.requires_grad
    assert "integral.project" in head.state_dict()
    torch.testing.assert_close(head.integral.project, torch.arange(17.0))


def test_head_box_logits_are_scaled():
    torch.manual_seed(0)
    head = GFLHead(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1, num_groups=2,
                   reg_max=3, num_levels=2)
    feats = [torch.randn(1, 8, 5, 4), torch.randn(1, 8, 3, 2)]
    ref = head(feats)["box_logits"][1]
    with torch.no_grad():
        head.scales[1].scale.fill_(2.5)
    out = head(feats)
    torch.testing.assert_close(out["box_logits"][1], 2.5 * ref)
    assert out["cls_logits"][0].shape == (1, 2, 5, 4) and out["box_logits"][0].shape == (1, 16, 5, 4)


def test_integral_on_hand_built_distributions():
    integral = Integral(reg_max=4)
    big = 60.0
    one_hot = torch.full((2, 20), -big)
    for side, bin_ in enumerate((0, 1, 3, 4)):  # image 0: exact bins
        one_hot[0, side * 5 + bin_] = big
    one_hot[1] = 0.0  # image 1: uniform → mean bin 2
    out = integral(one_hot)
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]]))
    # half on bin 2, half on bin 3 → 2.5; 0.25/0.75 on bins 0/4 → 3.0
    probs = torch.full((20,), 1e-12)
    probs[[2, 3]] = 0.5
    probs[[5, 9]] = torch.tensor([0.25, 0.75])
    probs[10] = probs[19] = 1.0
    out = integral(probs.log())
    torch.testing.assert_close(out, torch.tensor([2.5, 3.0, 0.0, 4.0]), atol=1e-5, rtol=0)
    assert integral(torch.zeros(3, 7, 20)).shape == (3, 7, 4)


def test_integral_matches_mmdet_reference_vectors():
    path = SPEC.parent / "mmdet_reference_vectors.json"
    ref = json.loads(path.read_text())["integral"]
    out = Integral(ref["reg_max"])(torch.tensor(ref["logits"]))
    torch.testing.assert_close(out, torch.tensor(ref["out"]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [(97, 131), (64, 64), (33, 200)])
def test_detector_output_shapes_for_odd_sizes(size):
    model = build_detector(_tiny_cfg()).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    h, w = size
    expected = []
    for _ in range(3):  # stem conv, max-pool, layer2 each halve with ceil
        h, w = -(-h // 2), -(-w // 2)
    for _ in range(5):
        expected.append((h, w))
        h, w = -(-h // 2), -(-w // 2)
    assert [tuple(x.shape) for x in out["cls_logits"]] == [(2, 3, *s) for s in expected]
    assert [tuple(x.shape) for x in out["box_logits"]] == [(2, 20, *s) for s in expected]
    assert model.num_classes == 3 and model.reg_max == 4 and model.strides == (8, 16, 32, 64, 128)


def test_predict_runs():
    model = build_detector(_tiny_cfg()).eval()
    dets = model.predict(torch.randn(1, 3, 64, 96), [{"img_shape": (60, 90), "scale_factor": (0.5, 0.5)}])
    assert len(dets) == 1 and dets[0]["boxes"].shape[1] == 4


# ----------------------------------------------------------------------------- config errors / pretrained


@pytest.mark.parametrize("cfg,key", [
    (ModelConfig(backbone=BackboneConfig(depth=42)), "model.backbone.depth"),
    (ModelConfig(head=HeadConfig(type="atss")), "model.head.type"),
    (ModelConfig(head=HeadConfig(num_groups=30)), "model.head.num_groups"),
    (ModelConfig(head=HeadConfig(strides=(4, 8, 16, 32, 64))), "model.head.strides"),
    (ModelConfig(neck=NeckConfig(num_outs=2)), "model.neck.num_outs"),
    (ModelConfig(num_classes=0), "model.num_classes"),
])
def test_build_errors_name_the_key(cfg, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        build_detector(cfg)


def test_pretrained_from_local_file(tmp_path):
    src = ResNet(18, base_channels=8, frozen_stages=-1)
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    sd["module.fc.weight"] = torch.zeros(10, 64)  # classifier weights are ignored
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": sd}, path)
    dst = ResNet(18, base_channels=8, frozen_stages=1, pretrained=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    assert not dst.layer1[0].conv1.weight.requires_grad
    with pytest.raises(CheckpointError, match="does not exist"):
        ResNet(18, base_channels=8, pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(CheckpointError, match="missing"):
        ResNet(34, base_channels=8, pretrained=str(path))
    with pytest.raises(CheckpointError, match="shape"):
        ResNet(18, base_channels=16, pretrained=str(path))
