"""postprocess(): hand-built head outputs with known boxes, and a reference loop."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import batched_nms

from locdistill.config import TestConfig as InferenceCfg
from locdistill.errors import ConfigError
from locdistill.models.postprocess import postprocess

STRIDES = (8, 16)
REG_MAX = 4
C = 3
BIG = 60.0  # one-hot bin logit: softmax puts all the mass on that bin


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids thread-pool hand-offs (slow on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def blank(batch: int = 1, sizes=((10, 12), (5, 6))) -> dict[str, list[torch.Tensor]]:
    """Scores ~0 everywhere; every box distribution one-hot at bin 1."""
    cls = [torch.full((batch, C, h, w), -30.0) for h, w in sizes]
    box = []
    for h, w in sizes:
        b = torch.full((batch, 4, REG_MAX + 1, h, w), -BIG)
        b[:, :, 1] = BIG
        box.append(b.reshape(batch, 4 * (REG_MAX + 1), h, w))
    return {"cls_logits": cls, "box_logits": box}


def put(out, level, i, j, cls, score, dists=(1, 1, 1, 1), image=0):
    """Score ``score`` for class ``cls`` at location (i, j) with one-hot distances (bins)."""
    out["cls_logits"][level][image, cls, i, j] = logit(score)
    b = out["box_logits"][level].view(out["box_logits"][level].shape[0], 4, REG_MAX + 1,
                                      *out["box_logits"][level].shape[-2:])
    b[image, :, :, i, j] = -BIG
    for side, d in enumerate(dists):
        b[image, side, d, i, j] = BIG


def run(out, metas=None, **cfg):
    n = out["cls_logits"][0].shape[0]
    metas = metas or [{"img_shape": (200, 200), "scale_factor": (1.0, 1.0)}] * n
    return postprocess(out, metas, InferenceCfg(**cfg), STRIDES, REG_MAX)


def test_one_hot_distribution_gives_exact_box():
    out = blank()
    put(out, 0, 3, 5, cls=2, score=0.9, dists=(2, 1, 3, 4))  # centre (5*8, 3*8) = (40, 24)
    put(out, 1, 2, 1, cls=0, score=0.7, dists=(1, 0, 2, 3))  # centre (16, 32), stride 16
    (det,) = run(out)
    torch.testing.assert_close(det["boxes"], torch.tensor([[24.0, 16.0, 64.0, 56.0], [0.0, 32.0, 48.0, 80.0]]))
    torch.testing.assert_close(det["scores"], torch.tensor([0.9, 0.7]))
    assert det["labels"].tolist() == [2, 0] and det["labels"].dtype == torch.int64


def test_clip_to_img_shape_then_rescale():
    out = blank()
    put(out, 0, 0, 0, cls=1, score=0.8, dists=(2, 2, 4, 4))  # (-16, -16, 32, 32) before clipping
    put(out, 0, 9, 11, cls=0, score=0.6, dists=(1, 1, 4, 4))  # centre (88, 72) -> (80, 64, 120, 104)
    meta = {"img_shape": (90, 100), "scale_factor": (2.0, 0.5)}
    (det,) = run(out, [meta])
    # clipped to w=100, h=90, then x / 2 and y / 0.5
    torch.testing.assert_close(det["boxes"], torch.tensor([[0.0, 0.0, 16.0, 64.0], [40.0, 128.0, 50.0, 180.0]]))


def test_score_threshold_is_strict_and_configurable():
    out = blank()
    put(out, 0, 1, 1, cls=0, score=0.04)
    put(out, 0, 5, 5, cls=1, score=0.06)
    assert run(out)[0]["labels"].tolist() == [1]
    assert run(out, score_thr=0.01)[0]["labels"].tolist() == [1, 0]


def test_nms_pre_is_per_level():
    out = blank()
    for k, s in enumerate((0.7, 0.9, 0.8)):
        put(out, 0, 2, 3 * k + 1, cls=0, score=s)  # far apart: no NMS interaction
    put(out, 1, 4, 5, cls=1, score=0.3)
    det = run(out, nms_pre=2)[0]
    torch.testing.assert_close(det["scores"], torch.tensor([0.9, 0.8, 0.3]))
    # several classes at one location count as separate (location, class) pairs
    out = blank()
    put(out, 0, 2, 2, cls=0, score=0.9)
    out["cls_logits"][0][0, 1, 2, 2] = logit(0.8)
    out["cls_logits"][0][0, 2, 2, 2] = logit(0.7)
    assert run(out, nms_pre=2)[0]["labels"].tolist() == [0, 1]


def test_class_aware_nms_and_image_separation():
    out = blank(batch=2)
    big = (4, 4, 4, 4)  # 64x64 boxes; neighbours 8 px apart overlap with IoU 0.78
    put(out, 0, 5, 5, cls=0, score=0.9, dists=big)
    put(out, 0, 5, 6, cls=0, score=0.8, dists=big)  # same class: suppressed
    out["cls_logits"][0][0, 1, 5, 6] = logit(0.7)  # other class, same box: kept
    put(out, 0, 5, 5, cls=0, score=0.5, dists=big, image=1)  # same box in image 1: kept
    d0, d1 = run(out)
    assert d0["labels"].tolist() == [0, 1] and d0["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert d1["labels"].tolist() == [0] and d1["scores"].tolist() == pytest.approx([0.5])
    # iou_thr above the overlap keeps both boxes of class 0
    assert run(out, iou_thr=0.8)[0]["labels"].tolist() == [0, 0, 1]


def test_max_per_img_keeps_best_in_order():
    out = blank()
    scores = [0.3, 0.9, 0.5, 0.7, 0.6]
    for k, s in enumerate(scores):
        put(out, 0, 1 + 2 * k, 1 + 2 * k, cls=k % C, score=s)
    det = run(out, max_per_img=3)[0]
    torch.testing.assert_close(det["scores"], torch.tensor([0.9, 0.7, 0.6]))
    assert len(run(out, max_per_img=0)[0]["scores"]) == 5


def test_degenerate_boxes_are_dropped():
    out = blank()
    put(out, 0, 3, 3, cls=0, score=0.9, dists=(0, 1, 0, 1))  # zero width
    put(out, 0, 4, 11, cls=1, score=0.8, dists=(0, 1, 1, 1))  # x1 = 88 >= img w 80 -> clipped to zero width
    put(out, 0, 6, 4, cls=2, score=0.7)
    det = run(out, [{"img_shape": (200, 80), "scale_factor": (1.0, 1.0)}])[0]
    assert det["labels"].tolist() == [2]


def test_empty_results_have_the_right_shapes():
    d0, d1 = run(blank(batch=2))
    for d in (d0, d1):
        assert d["boxes"].shape == (0, 4) and d["scores"].shape == (0,) and d["labels"].shape == (0,)
        assert d["boxes"].dtype == torch.float32 and d["labels"].dtype == torch.int64


def test_unknown_nms_and_bad_metas():
    with pytest.raises(ConfigError, match="test.nms"):
        run(blank(), nms="soft_nms")
    with pytest.raises(ValueError, match="img_shape"):
        postprocess(blank(), [{"scale_factor": (1.0, 1.0)}], InferenceCfg(), STRIDES, REG_MAX)


def _reference(outputs, metas, cfg, strides, reg_max):
    """Straightforward per-image loop following mmdetection's GFLHead._predict_by_feat_single."""
    project = torch.linspace(0, reg_max, reg_max + 1)
    results = []
    for n, meta in enumerate(metas):
        all_b, all_s, all_l = [], [], []
        for cls, box, s in zip(outputs["cls_logits"], outputs["box_logits"], strides):
            c, h, w = cls.shape[1:]
            scores = cls[n].permute(1, 2, 0).reshape(-1, c).sigmoid()  # [HW, C]
            dist = box[n].permute(1, 2, 0).reshape(-1, 4, reg_max + 1).softmax(-1) @ project * s
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            pts = torch.stack((xs.reshape(-1) * s, ys.reshape(-1) * s), 1).float()
            keep = (scores > cfg.score_thr).nonzero()
            sc = scores[keep[:, 0], keep[:, 1]]
            sc, order = sc.sort(descending=True)
            keep = keep[order[: cfg.nms_pre]]
            sc = sc[: cfg.nms_pre]
            p, d = pts[keep[:, 0]], dist[keep[:, 0]]
            b = torch.cat((p - d[:, :2], p + d[:, 2:]), 1)
            ih, iw = meta["img_shape"]
            b[:, 0::2] = b[:, 0::2].clamp(0, iw)
            b[:, 1::2] = b[:, 1::2].clamp(0, ih)
            all_b.append(b)
            all_s.append(sc)
            all_l.append(keep[:, 1])
        b, s, l = torch.cat(all_b), torch.cat(all_s), torch.cat(all_l)
        b = b / torch.tensor(meta["scale_factor"]).repeat(2)
        ok = (b[:, 2] - b[:, 0] > 0) & (b[:, 3] - b[:, 1] > 0)
        b, s, l = b[ok], s[ok], l[ok]
        k = batched_nms(b, s, l, cfg.iou_thr)[: cfg.max_per_img]
        results.append({"boxes": b[k], "scores": s[k], "labels": l[k]})
    return results


@pytest.mark.parametrize("nms_pre,score_thr", [(100, 0.05), (1000, 0.05), (1000, 0.0), (50, 0.3)])
def test_matches_reference_loop_on_random_outputs(nms_pre, score_thr):
    g = torch.Generator().manual_seed(0)
    sizes = ((20, 24), (10, 12))
    outputs = {
        "cls_logits": [torch.randn(2, C, h, w, generator=g) * 2 - 3 for h, w in sizes],
        "box_logits": [torch.randn(2, 4 * (REG_MAX + 1), h, w, generator=g) * 2 for h, w in sizes],
    }
    metas = [{"img_shape": (150, 190), "scale_factor": (1.5, 1.25)},
             {"img_shape": (160, 120), "scale_factor": (0.5, 0.5)}]
    cfg = InferenceCfg(score_thr=score_thr, nms_pre=nms_pre, iou_thr=0.6, max_per_img=40)
    got = postprocess(outputs, metas, cfg, STRIDES, REG_MAX)
    want = _reference(outputs, metas, cfg, STRIDES, REG_MAX)
    for g_, w_ in zip(got, want):
        assert len(w_["scores"]) == 40
        torch.testing.assert_close(g_["scores"], w_["scores"])
        torch.testing.assert_close(g_["boxes"], w_["boxes"])
        assert torch.equal(g_["labels"], w_["labels"])
