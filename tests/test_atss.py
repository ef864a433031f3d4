"""ATSS assigner: mmdet unit test, a slow loop reference, valid flags, ties, batching."""
import pytest
import torch

from locdistill.models.atss import ATSSAssigner
from locdistill.models.priors import grid_priors, valid_flags_batch
from slow_reference import load_vectors, slow_atss

SIZES = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
STRIDES = [8, 16, 32, 64, 128]


def random_gts(k, extent, gen):
    xy = torch.rand(k, 2, generator=gen) * (extent - 40)
    wh = torch.rand(k, 2, generator=gen) * 90 + 6
    return torch.cat([xy, (xy + wh).clamp(max=extent)], dim=1)


def test_mmdet_unit_test():
    r = load_vectors()["atss_unit_test"]
    res = ATSSAssigner(topk=9).assign(torch.tensor(r["priors"]), r["num_level_priors"], torch.tensor(r["gt_bboxes"]))
    gt_inds_1based = (res.gt_inds + 1).tolist()
    assert gt_inds_1based == r["gt_inds"]
    labels = torch.tensor(r["gt_labels"])[res.gt_inds.clamp(min=0)]
    assert torch.where(res.gt_inds >= 0, labels, -1).tolist() == r["labels"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_slow_reference_with_valid_flags(seed):
    gen = torch.Generator().manual_seed(seed)
    anchors_lv = grid_priors(SIZES, STRIDES)
    anchors = torch.cat(anchors_lv)
    counts = [a.shape[0] for a in anchors_lv]
    # images of different padded extents inside a 128x128 batch; GT counts 4, 0, 7
    pads = [(128, 128), (64, 128), (96, 32)]
    gts = [random_gts(4, 128, gen), torch.zeros(0, 4), random_gts(7, 64, gen)]
    gts[2][:, 0::2] = gts[2][:, 0::2].clamp(max=32)
    K = 7
    padded = torch.zeros(3, K, 4)
    mask = torch.zeros(3, K, dtype=torch.bool)
    for i, g in enumerate(gts):
        padded[i, : len(g)] = g
        mask[i, : len(g)] = True
    valid = valid_flags_batch(SIZES, STRIDES, pads)
    res = ATSSAssigner(9).assign(anchors, counts, padded, mask, valid)
    assert res.gt_inds.shape == (3, anchors.shape[0]) and res.thresholds.shape == (3, K)
    for i, g in enumerate(gts):
        vidx = valid[i].nonzero().squeeze(1)
        num_level = [int(valid[i, s:s + n].sum()) for s, n in zip([0] + list(torch.tensor(counts).cumsum(0)[:-1]), counts)]
        inds, thrs, _ = slow_atss(anchors[vidx], num_level, g, 9)
        expected = torch.full((anchors.shape[0],), -1, dtype=torch.long)
        expected[vidx] = torch.tensor(inds, dtype=torch.long)
        assert torch.equal(res.gt_inds[i], expected)
        if len(g):
            torch.testing.assert_close(res.thresholds[i, : len(g)], torch.tensor(thrs, dtype=torch.float32),
                                       rtol=1e-5, atol=1e-6)
        assert not (res.gt_inds[i][~valid[i]] >= 0).any()  # invalid anchors are never positive
    assert (res.gt_inds[1] == -1).all()
    assert (res.gt_inds[0] >= 0).any() and (res.gt_inds[2] >= 0).any()
    # assigned / max IoU bookkeeping
    pos = res.gt_inds >= 0
    iou_assigned = res.ious.gather(2, res.gt_inds.clamp(min=0)[..., None]).squeeze(-1)
    torch.testing.assert_close(res.assigned_ious[pos], iou_assigned[pos])
    assert (res.assigned_ious[~pos] == 0).all()
    torch.testing.assert_close(res.max_ious, res.ious.amax(-1))


def test_batched_equals_single_images():
    gen = torch.Generator().manual_seed(5)
    anchors_lv = grid_priors(SIZES, STRIDES)
    anchors, counts = torch.cat(anchors_lv), [a.shape[0] for a in anchors_lv]
    g0, g1 = random_gts(3, 128, gen), random_gts(6, 128, gen)
    padded = torch.zeros(2, 6, 4)
    padded[0, :3], padded[1] = g0, g1
    mask = torch.tensor([[True] * 3 + [False] * 3, [True] * 6])
    a = ATSSAssigner().assign(anchors, counts, padded, mask)
    for i, g in enumerate([g0, g1]):
        single = ATSSAssigner().assign(anchors, counts, g)
        assert torch.equal(a.gt_inds[i], single.gt_inds)
        torch.testing.assert_close(a.thresholds[i, : len(g)], single.thresholds)


def test_ties_go_to_highest_iou_gt():
    far = [[200.0 + 20 * i, 200.0, 210.0 + 20 * i, 210.0] for i in range(8)]
    anchors = torch.tensor([[0.0, 0, 40, 40], [1.0, 1, 41, 41]] + far)
    g = torch.tensor([[0.0, 0, 40, 40], [1.0, 1, 41, 41]])
    res = ATSSAssigner(9).assign(anchors, [10], g)
    assert res.gt_inds[:2].tolist() == [0, 1]  # both anchors are positive for both GTs
    assert (res.gt_inds[2:] == -1).all()
    assert ATSSAssigner(9).assign(anchors, [10], g.flip(0)).gt_inds[:2].tolist() == [1, 0]


def test_centre_must_be_inside_by_more_than_001():
    # one anchor centred at the GT corner, eight far away: threshold = IoU/9 + IoU/3 < IoU
    far = [[200.0 + 20 * i, 200.0, 210.0 + 20 * i, 210.0] for i in range(8)]
    anchors = torch.tensor([[-10.0, -10, 10, 10]] + far)
    inside = ATSSAssigner(9).assign(anchors, [9], torch.tensor([[-0.02, -0.02, 30.0, 30.0]]))
    on_edge = ATSSAssigner(9).assign(anchors, [9], torch.tensor([[-0.005, -0.005, 30.0, 30.0]]))
    assert inside.gt_inds.tolist() == [0] + [-1] * 8
    assert (on_edge.gt_inds == -1).all()


def test_no_gt_and_errors():
    anchors = torch.cat(grid_priors(SIZES, STRIDES))
    res = ATSSAssigner().assign(anchors, [256, 64, 16, 4, 1], torch.zeros(2, 0, 4))
    assert res.gt_inds.shape == (2, 341) and (res.gt_inds == -1).all()
    assert res.thresholds.shape == (2, 0) and res.ious.shape == (2, 341, 0)
    with pytest.raises(ValueError, match="sum"):
        ATSSAssigner().assign(anchors, [10], torch.zeros(1, 4))
    with pytest.raises(ValueError, match="topk"):
        ATSSAssigner(0)
