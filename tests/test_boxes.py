"""locdistill.boxes against mmdetection 3.3 reference vectors and hand-computed cases."""
import pytest
import torch

from locdistill.boxes import bbox2distance, bbox_diou, bbox_overlaps, box_area, box_centers, distance2bbox
from slow_reference import load_vectors

REF = load_vectors()
TOL = dict(rtol=1e-5, atol=1e-6)


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_bbox2distance_matches_mmdet():
    r = REF["bbox2distance"]
    pts, boxes = t(r["points"]), t(r["bboxes"])
    torch.testing.assert_close(bbox2distance(pts, boxes), t(r["out_no_max"]), **TOL)
    torch.testing.assert_close(bbox2distance(pts, boxes, max_dis=16, eps=0.1), t(r["out_max_dis_16_eps_0p1"]), **TOL)


def test_distance2bbox_matches_mmdet():
    r = REF["distance2bbox"]
    pts, d = t(r["points"]), t(r["distance"])
    torch.testing.assert_close(distance2bbox(pts, d), t(r["out"]), **TOL)
    torch.testing.assert_close(distance2bbox(pts, d, max_shape=r["max_shape"]), t(r["out_clipped"]), **TOL)
    # per-image shapes as a tensor, with a leading batch dim
    both = distance2bbox(pts.expand(2, -1, -1), d.expand(2, -1, -1), max_shape=torch.tensor([r["max_shape"], [1e9, 1e9]]))
    torch.testing.assert_close(both[0], t(r["out_clipped"]), **TOL)
    torch.testing.assert_close(both[1], t(r["out"]).clamp(min=0), **TOL)


def test_distance_roundtrip_and_batch_dims():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(3, 7, 2, generator=g) * 50
    d = torch.rand(3, 7, 4, generator=g) * 20
    torch.testing.assert_close(bbox2distance(pts, distance2bbox(pts, d)), d, rtol=0, atol=1e-5)


def test_bbox_overlaps_matches_mmdet():
    r = REF["bbox_overlaps"]
    b1, b2 = t(r["bboxes1"]), t(r["bboxes2"])
    torch.testing.assert_close(bbox_overlaps(b1, b2, is_aligned=True), t(r["iou_aligned"]), **TOL)
    torch.testing.assert_close(bbox_overlaps(b1, b2, "giou", is_aligned=True, eps=1e-6), t(r["giou_aligned_eps1e6"]), **TOL)
    torch.testing.assert_close(bbox_overlaps(b1, b2), t(r["iou_pairwise"]), **TOL)
    torch.testing.assert_close(bbox_overlaps(b1, b2, "iof"), t(r["iof_pairwise"]), **TOL)


def test_bbox_overlaps_hand_case_and_shapes():
    a = t([[0, 0, 10, 10]])
    b = t([[5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 10]])
    torch.testing.assert_close(bbox_overlaps(a, b), t([[25 / 175, 0.0, 1.0]]))
    torch.testing.assert_close(bbox_overlaps(a, b, "iof"), t([[0.25, 0.0, 1.0]]))
    # GIoU of disjoint boxes: 0 - (enclose - union) / enclose = -(900 - 200) / 900
    torch.testing.assert_close(bbox_overlaps(a, b[1:2], "giou", is_aligned=True), t([-700 / 900]))
    # broadcasting leading dims: one anchor set against per-image GT sets
    gts = torch.stack([b, b.flip(0)])  # [2, 3, 4]
    out = bbox_overlaps(a, gts)
    assert out.shape == (2, 1, 3)
    torch.testing.assert_close(out[1], bbox_overlaps(a, b.flip(0)))
    assert bbox_overlaps(torch.zeros(0, 4), b).shape == (0, 3)
    assert bbox_overlaps(a, torch.zeros(0, 4)).shape == (1, 0)
    assert bbox_overlaps(torch.zeros(0, 4), torch.zeros(0, 4), is_aligned=True).shape == (0,)


def test_bbox_overlaps_errors():
    with pytest.raises(ValueError, match="mode"):
        bbox_overlaps(torch.zeros(1, 4), torch.zeros(1, 4), mode="diou")
    with pytest.raises(ValueError, match="is_aligned"):
        bbox_overlaps(torch.zeros(2, 4), torch.zeros(3, 4), is_aligned=True)
    with pytest.raises(ValueError, match="4 coordinates"):
        bbox_overlaps(torch.zeros(2, 5), torch.zeros(3, 4))


def test_area_and_centers():
    b = t([[0, 0, 4, 2], [1, 1, 3, 7]])
    torch.testing.assert_close(box_area(b), t([8, 12]))
    torch.testing.assert_close(box_centers(b), t([[2, 1], [2, 4]]))


def test_diou_hand_case():
    a = t([[0, 0, 10, 10]])
    b = t([[5, 0, 15, 10]])
    iou = 50 / 150
    rho2, c2 = 25.0, 15.0 ** 2 + 10.0 ** 2
    torch.testing.assert_close(bbox_diou(a, b), t([[iou - rho2 / c2]]))
    torch.testing.assert_close(bbox_diou(a, b, is_aligned=True), t([iou - rho2 / c2]))
    # the LD code's quirk: intersection over the first box's area
    torch.testing.assert_close(bbox_diou(a, b, overlap_mode="iof"), t([[0.5 - rho2 / c2]]))
    torch.testing.assert_close(bbox_diou(a, b, penalty_power=0.8), t([[iou - (rho2 / c2) ** 0.8]]))
    # identical boxes: 1; DIoU never exceeds IoU
    torch.testing.assert_close(bbox_diou(a, a), t([[1.0]]))
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(20, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + torch.rand(20, 2, generator=g) * 30 + 1], 1)
    assert (bbox_diou(boxes, boxes) <= bbox_overlaps(boxes, boxes) + 1e-6).all()
    with pytest.raises(ValueError, match="overlap_mode"):
        bbox_diou(a, b, overlap_mode="giou")
