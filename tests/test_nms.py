"""Score-voting Cluster-DIoU-NMS (DESIGN §6): the fast path against the N×N reference and
torchvision's NMS, voting, class separation, and its use through `test.nms`."""
import math

import pytest
import torch
from torchvision.ops import batched_nms

from locdistill.config import TestConfig as InferenceCfg
from locdistill.models.postprocess import postprocess
from locdistill.nms import get_nms, pair_diou, voting_cluster_diou_nms, voting_cluster_diou_nms_dense


def clustered(n, groups, objects=12, seed=0, size=400.0):
    """Candidates jittered around a few objects, like a detector's (boxes, scores, groups)."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(objects, 2, generator=g) * size
    wh = torch.rand(objects, 2, generator=g) * 80 + 10
    k = torch.randint(0, objects, (n,), generator=g)
    c = centre[k] + torch.randn(n, 2, generator=g) * wh[k] * 0.12
    s = wh[k] * torch.exp(torch.randn(n, 2, generator=g) * 0.12)
    boxes = torch.cat([c - s / 2, c + s / 2], 1)
    return boxes, torch.rand(n, generator=g), torch.randint(0, groups, (n,), generator=g)


@pytest.mark.parametrize("n,groups,seed", [(1, 1, 0), (40, 1, 1), (300, 3, 2), (600, 20, 3), (800, 2, 4)])
def test_fast_path_equals_the_dense_reference(n, groups, seed):
    boxes, scores, labels = clustered(n, groups, seed=seed)
    for kwargs in ({}, {"iou_thr": 0.5, "vote_thr": 0.8}, {"max_num": 25}, {"penalty": False}, {"iou_thr": 0.3}):
        fb, fs, fk = voting_cluster_diou_nms(boxes, scores, labels, **kwargs)
        db, ds, dk = voting_cluster_diou_nms_dense(boxes, scores, labels, **kwargs)
        assert torch.equal(fk, dk)
        torch.testing.assert_close(fs, ds)
        torch.testing.assert_close(fb, db, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("block", [1, 7, 64, 100000])
def test_the_block_size_changes_nothing(block):
    boxes, scores, labels = clustered(700, 3, objects=5, seed=9)
    want = voting_cluster_diou_nms_dense(boxes, scores, labels)
    got = voting_cluster_diou_nms(boxes, scores, labels, block=block)
    assert torch.equal(got[2], want[2])
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-3)


def test_thresholds_at_or_above_one():
    boxes, scores, labels = clustered(100, 2, seed=3)
    b, s, k = voting_cluster_diou_nms(boxes, scores, labels, iou_thr=1.0, vote_thr=1.0)
    assert k.numel() == 100 and torch.equal(k, torch.argsort(scores, descending=True, stable=True))
    torch.testing.assert_close(b, boxes[k])


def test_ties_duplicates_and_uniform_random_boxes():
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(200, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(200, 2, generator=g) * 60 + 1], 1)
    boxes = torch.cat([boxes, boxes[:50]])  # exact duplicates
    scores = torch.cat([torch.rand(200, generator=g).round(decimals=1), torch.full((50,), 0.5)])  # many ties
    labels = torch.randint(0, 4, (250,), generator=g)
    fast = voting_cluster_diou_nms(boxes, scores, labels)
    ref = voting_cluster_diou_nms_dense(boxes, scores, labels)
    assert torch.equal(fast[2], ref[2])
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("thr", [0.3, 0.6])
def test_without_voting_and_penalty_it_keeps_what_batched_nms_keeps(seed, thr):
    boxes, scores, labels = clustered(500, 4, seed=seed)
    fb, fs, fk = voting_cluster_diou_nms(boxes, scores, labels, iou_thr=thr, penalty=False, voting=False)
    want = batched_nms(boxes, scores, labels, thr)
    assert torch.equal(fk, want)
    assert torch.equal(fb, boxes[want]) and torch.equal(fs, scores[want])


def test_voting_moves_a_box_toward_its_high_score_neighbours_and_keeps_scores():
    kept = torch.tensor([10.0, 10.0, 50.0, 50.0])
    right = kept + torch.tensor([2.0, 0.0, 2.0, 0.0])  # DIoU ~0.9 to it, ranked below
    left = kept - torch.tensor([2.0, 0.0, 2.0, 0.0])
    far = torch.tensor([200.0, 200.0, 240.0, 240.0])
    boxes = torch.stack([kept, right, left, far])
    labels = torch.zeros(4, dtype=torch.long)
    for s_right, s_left, direction in ((0.8, 0.1, 1), (0.1, 0.8, -1)):
        scores = torch.tensor([0.9, s_right, s_left, 0.3])
        vb, vs, vk = voting_cluster_diou_nms(boxes, scores, labels)
        assert vk.tolist() == [0, 3] and torch.equal(vs, scores[[0, 3]])
        shift = vb[0, 0] - kept[0]
        assert direction * shift > 0.1  # toward the better-scored neighbour
        assert abs(float(shift)) < 2.0  # a weighted mean: inside the cluster
        torch.testing.assert_close(vb[1], far)  # no neighbour: unchanged
        # the weights are exp(-(1 - DIoU)^2 / 0.025) * score, the box itself weighing its score
        d = pair_diou(kept.expand(2, 4), torch.stack([right, left]))
        w = torch.exp(-(1 - d) ** 2 / 0.025) * torch.tensor([s_right, s_left])
        want = (0.9 * kept + w[0] * right + w[1] * left) / (0.9 + w.sum())
        torch.testing.assert_close(vb[0], want)


def test_a_neighbour_below_the_vote_threshold_does_not_vote():
    kept = torch.tensor([0.0, 0.0, 40.0, 40.0])
    other = torch.tensor([8.0, 0.0, 48.0, 40.0])  # DIoU 0.63: suppressed (> 0.6) but no vote (<= 0.7)
    assert 0.6 < float(pair_diou(kept, other)) <= 0.7
    vb, _, vk = voting_cluster_diou_nms(torch.stack([kept, other]), torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.long))
    assert vk.tolist() == [0]
    torch.testing.assert_close(vb[0], kept)


def test_classes_never_suppress_or_vote_for_each_other():
    box = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    boxes = torch.cat([box, box + 1, box, box + 1])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 1, 2, 3])
    vb, vs, vk = voting_cluster_diou_nms(boxes, scores, labels)
    assert vk.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(vb, boxes)
    # the same boxes in one class: one survives, voted with the others
    vb, vs, vk = voting_cluster_diou_nms(boxes, scores, torch.zeros(4, dtype=torch.long))
    assert vk.tolist() == [0] and vb[0, 0] > 10.0


def test_empty_input_gives_empty_output():
    for fn in (voting_cluster_diou_nms, voting_cluster_diou_nms_dense):
        b, s, k = fn(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
        assert b.shape == (0, 4) and s.shape == (0,) and k.shape == (0,) and k.dtype == torch.long


def test_cluster_nms_iterates_to_the_fixed_point():
    # a chain: A suppresses B, B would suppress C, but B is gone so C stays (greedy NMS);
    # one round of Fast-NMS would wrongly drop C too
    a = torch.tensor([0.0, 0.0, 10.0, 10.0])
    b = torch.tensor([0.0, 0.0, 10.0, 10.0]) + torch.tensor([1.5, 0.0, 1.5, 0.0])
    c = b + torch.tensor([1.5, 0.0, 1.5, 0.0])
    boxes, scores = torch.stack([a, b, c]), torch.tensor([0.9, 0.8, 0.7])
    groups = torch.zeros(3, dtype=torch.long)
    d = pair_diou(boxes[[0, 1, 0]], boxes[[1, 2, 2]])
    assert d[0] > 0.6 and d[1] > 0.6 and d[2] <= 0.6
    _, _, keep = voting_cluster_diou_nms(boxes, scores, groups, voting=False)
    assert keep.tolist() == [0, 2]


def test_through_postprocess_per_image_and_top_100():
    torch.manual_seed(0)
    strides, reg_max, c = (8, 16), 4, 3
    outputs = {"cls_logits": [torch.randn(2, c, h, h) for h in (16, 8)],
               "box_logits": [torch.randn(2, 4 * (reg_max + 1), h, h) for h in (16, 8)]}
    metas = [{"img_shape": (128, 128), "scale_factor": (1.0, 1.0)}] * 2
    cfg = InferenceCfg(score_thr=0.05, nms="voting_cluster_diou", max_per_img=100)
    results = postprocess(outputs, metas, cfg, strides, reg_max)
    assert get_nms("voting_cluster_diou") is not None
    for r in results:
        assert 0 < len(r["scores"]) <= 100
        assert torch.all(r["scores"][:-1] >= r["scores"][1:])
    hard = postprocess(outputs, metas, InferenceCfg(score_thr=0.05, max_per_img=100), strides, reg_max)
    assert not all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(results, hard))  # voting moved boxes


def test_pair_diou_matches_its_definition():
    a = torch.tensor([0.0, 0.0, 10.0, 10.0])
    b = torch.tensor([5.0, 0.0, 15.0, 10.0])
    iou = 50 / 150
    rho2, c2 = 25.0, 15.0**2 + 10.0**2
    assert float(pair_diou(a, b)) == pytest.approx(iou - (rho2 / (c2 + 1e-7)) ** 0.8)
    assert math.isclose(float(pair_diou(a, a)), 1.0)
