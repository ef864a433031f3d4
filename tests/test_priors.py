"""Anchor priors and valid flags against mmdetection's AnchorGenerator."""
import pytest
import torch

from locdistill.models.priors import grid_priors, valid_flags, valid_flags_batch
from slow_reference import load_vectors, slow_anchors, slow_valid

REF = load_vectors()["anchor_generator"]


def test_grid_priors_match_mmdet():
    sizes = [tuple(s) for s in REF["featmap_sizes"]]
    priors = grid_priors(sizes, REF["strides"], octave_base_scale=REF["octave_base_scale"])
    assert len(priors) == 5
    for p, ref, base, (h, w) in zip(priors, REF["grid_priors"], REF["base_anchors"], sizes):
        assert p.shape == (h * w, 4) and p.dtype == torch.float32
        torch.testing.assert_close(p, torch.tensor(ref, dtype=torch.float32))
        torch.testing.assert_close(p[0], torch.tensor(base[0]))  # location (0, 0) is the base anchor


def test_valid_flags_match_mmdet():
    sizes = [tuple(s) for s in REF["featmap_sizes"]]
    flags = valid_flags(sizes, REF["strides"], (12, 9))
    for f, ref in zip(flags, REF["valid_flags_pad_12x9"]):
        assert f.dtype == torch.bool
        assert f.tolist() == ref


def test_row_major_order_and_side():
    sizes, strides = [(3, 5), (2, 2)], [8, 16]
    priors = grid_priors(sizes, strides, octave_base_scale=4)
    expected = slow_anchors(sizes, strides, scale=4)
    torch.testing.assert_close(torch.cat(priors), torch.tensor([a[:4] for a in expected], dtype=torch.float32))
    # location i*W + j is centred at (j*s, i*s)
    ctr = (priors[0][:, :2] + priors[0][:, 2:]) / 2
    assert ctr[1 * 5 + 3].tolist() == [24.0, 8.0]
    assert (priors[1][:, 2] - priors[1][:, 0] == 64).all()


@pytest.mark.parametrize("pad", [(12, 9), (64, 32), (96, 160), (8, 8), (200, 300)])
def test_valid_flags_batch_matches_per_image(pad):
    sizes, strides = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2)], [8, 16, 32, 64, 128]
    one = torch.cat(valid_flags(sizes, strides, pad))
    assert one.tolist() == slow_valid(sizes, strides, pad)
    batch = valid_flags_batch(sizes, strides, [pad, (160, 160)])
    assert batch.shape == (2, one.numel())
    assert torch.equal(batch[0], one)
    assert batch[1].all()
    assert torch.equal(valid_flags_batch(sizes, strides, torch.tensor([pad])), one[None])


def test_errors_and_dtype():
    with pytest.raises(ValueError, match="strides"):
        grid_priors([(2, 2)], [8, 16])
    with pytest.raises(ValueError, match="strides"):
        valid_flags([(2, 2)], [8, 16], (16, 16))
    assert grid_priors([(2, 2)], [8], dtype=torch.float64)[0].dtype == torch.float64
