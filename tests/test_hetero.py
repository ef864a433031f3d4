"""Heterogeneous LD (locdistill.distill.hetero): a teacher's box distributions resampled onto the
student's bins, anchor points and levels; check_compatible(heterogeneous=True) explains the mapping."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from locdistill.distill import check_compatible
from locdistill.distill.hetero import (clipped_mass, map_teacher, match_levels, resample_bins, side_shift,
                                       student_bin_values)
from locdistill.distill.terms import box_kl
from locdistill.errors import ConfigError
from locdistill.models.dense import DenseOutputs, integral

GFL_STRIDES = (8, 16, 32, 64, 128)
YOLO_STRIDES = (8, 16, 32)


def dense(sizes, strides, reg_max, offset, batch=2, classes=3, seed=0, logits=None) -> DenseOutputs:
    """A DenseOutputs on grids ``sizes`` with points at ``((j + offset)·s, (i + offset)·s)``."""
    g = torch.Generator().manual_seed(seed)
    points, strd, lvl = [], [], []
    for k, ((h, w), s) in enumerate(zip(sizes, strides)):
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        points.append(torch.stack([(xx.reshape(-1) + offset) * s, (yy.reshape(-1) + offset) * s], -1).float())
        strd.append(torch.full((h * w,), float(s)))
        lvl.append(torch.full((h * w,), k, dtype=torch.long))
    points, strd, lvl = torch.cat(points), torch.cat(strd), torch.cat(lvl)
    a = points.shape[0]
    box = logits if logits is not None else torch.randn(batch, a, 4, reg_max + 1, generator=g) * 3
    return DenseOutputs(cls_logits=torch.randn(batch, a, classes, generator=g), box_logits=box, points=points,
                        strides=strd, level_ids=lvl, centers=points / strd[:, None], level_sizes=tuple(sizes))


def random_probs(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 3).softmax(-1)


# ----------------------------------------------------------------------------- resample_bins


def test_identical_bins_are_the_identity_bit_for_bit():
    p = random_probs(5, 7, 4, 17)
    assert torch.equal(resample_bins(p, torch.arange(17.0), 16), p)
    # through the mapping: same layout, same points → the teacher's own distributions, and LD's own target
    t = dense([(4, 5), (2, 3)], (8, 16), 16, 0.0, seed=1)
    s = dense([(4, 5), (2, 3)], (8, 16), 16, 0.0, seed=2)
    m = map_teacher(t, s)
    assert m.matched.all() and m.levels.pairs == ((0, 0), (1, 1))
    assert torch.equal(m.probs(1.0), t.box_logits.softmax(-1))
    for temp in (1.0, 10.0):
        torch.testing.assert_close(box_kl(s, m.dense(temp), temp), box_kl(s, t, temp), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_t,n_s", [(16, 16), (16, 15), (7, 20), (16, 4)])
def test_integral_and_mass_are_preserved_inside_the_range(n_t, n_s):
    g = torch.Generator().manual_seed(n_t * 100 + n_s)
    probs = random_probs(64, 4, n_t + 1, seed=n_s)
    # arbitrary real positions of the teacher bins, all inside [0, n_s] (monotone like a real mapping)
    scale = torch.rand(64, 4, 1, generator=g) * n_s / n_t
    start = torch.rand(64, 4, 1, generator=g) * (n_s - scale * n_t)
    values = start + scale * torch.arange(n_t + 1.0)
    q = resample_bins(probs, values, n_s)
    assert q.shape == (64, 4, n_s + 1) and (q >= 0).all()
    torch.testing.assert_close(q.sum(-1), torch.ones(64, 4), rtol=0, atol=1e-6)
    mean_t = (probs * values).sum(-1)
    mean_s = (q * torch.arange(n_s + 1.0)).sum(-1)
    assert (mean_s - mean_t).abs().max() < 1e-4
    assert clipped_mass(probs, values, n_s).abs().max() == 0


def test_mass_beyond_the_range_goes_to_the_edge_bins_and_is_reported():
    probs = torch.tensor([[0.25, 0.25, 0.5]])
    q = resample_bins(probs, torch.tensor([-1.0, 1.5, 4.0]), 2)
    torch.testing.assert_close(q, torch.tensor([[0.25, 0.125, 0.625]]))  # -1 → bin 0, 4 → bin 2 (the edge)
    torch.testing.assert_close(q.sum(-1), torch.ones(1))
    torch.testing.assert_close(clipped_mass(probs, torch.tensor([-1.0, 1.5, 4.0]), 2), torch.tensor([0.75]))


def test_stride_ratio_rescale_doubles_the_expected_distance():
    """Teacher stride 16 → student stride 8: teacher bin k sits at 2k student bins."""
    shift = torch.zeros(3, 4)
    values = student_bin_values(16, torch.full((3,), 16.0), torch.full((3,), 8.0), shift)  # [3, 4, 17]
    assert torch.equal(values[0, 0], 2 * torch.arange(17.0))
    logits = torch.randn(3, 4, 17, generator=torch.Generator().manual_seed(2)) * 2
    inside = logits.clone()
    inside[..., 9:] = -1e4  # teacher mass on bins 0..8 only: 0..16 student bins, inside the student's range
    p = inside.softmax(-1)
    q = resample_bins(p, values, 16)
    mean_t = integral(inside)
    assert ((q * torch.arange(17.0)).sum(-1) - 2 * mean_t).abs().max() < 1e-4
    assert clipped_mass(p, values, 16).max() == 0
    # mass on teacher bins above 8 lands beyond 16 student bins: moved to the edge bin 16, and reported
    p = logits.softmax(-1)
    q = resample_bins(p, values, 16)
    torch.testing.assert_close(clipped_mass(p, values, 16), p[..., 9:].sum(-1))
    torch.testing.assert_close(q[..., 16], p[..., 8:].sum(-1))
    assert ((q * torch.arange(17.0)).sum(-1) < 2 * integral(logits)).all()  # the clamp pulls the mean inwards


# ----------------------------------------------------------------------------- anchor offsets and levels


def test_side_shift_directions():
    pt = torch.tensor([[0.0, 0.0], [16.0, 8.0]])
    ps = torch.tensor([[4.0, 4.0], [20.0, 6.0]])
    assert torch.equal(side_shift(pt, ps), torch.tensor([[4.0, 4.0, -4.0, -4.0], [4.0, -2.0, -4.0, 2.0]]))


def test_half_cell_shift_moves_expected_distances_by_half_a_bin():
    """GFL teacher (points at (j·s, i·s), reg_max 16) → YOLO-style student (cell centres, reg_max 15):
    left/top distances grow by exactly 0.5 student bins, right/bottom shrink by 0.5."""
    sizes = [(4, 6), (2, 3), (1, 2)]
    g = torch.Generator().manual_seed(3)
    a = sum(h * w for h, w in sizes)
    logits = torch.randn(2, a, 4, 17, generator=g) * 2
    logits[..., 0] = logits[..., 15:] = -1e4  # mass on bins 1..14: inside 0..15 after a ±0.5 shift
    t = dense(sizes, YOLO_STRIDES, 16, 0.0, logits=logits)
    s = dense(sizes, YOLO_STRIDES, 15, 0.5, seed=4)
    m = map_teacher(t, s)
    assert m.matched.all()
    q = m.probs(1.0)
    assert q.shape == (2, a, 4, 16)
    torch.testing.assert_close(q.sum(-1), torch.ones(2, a, 4), rtol=0, atol=1e-6)
    moved = (q * torch.arange(16.0)).sum(-1) - integral(logits)
    assert (moved - torch.tensor([0.5, 0.5, -0.5, -0.5])).abs().max() < 1e-4
    assert m.clipped(1.0).max() == 0
    # at T = 10 (LD): the terms see resample(softmax(t / 10)), whose mean moves by the same half bin
    d10 = m.dense(10.0)
    assert d10.box_logits.shape == s.box_logits.shape and torch.equal(d10.points, s.points)
    q10 = (d10.box_logits / 10.0).softmax(-1)
    moved10 = (q10 * torch.arange(16.0)).sum(-1) - integral(logits / 10.0)
    assert (moved10 - torch.tensor([0.5, 0.5, -0.5, -0.5])).abs().max() < 1e-4
    kl = box_kl(s, d10, 10.0)
    assert kl.shape == (2, a) and torch.isfinite(kl).all()


def test_level_matching_skips_p6_p7_with_one_warning():
    with pytest.warns(UserWarning) as rec:
        match = match_levels(GFL_STRIDES, YOLO_STRIDES)
    assert len(rec) == 1
    assert "P6 (stride 64), P7 (stride 128)" in str(rec[0].message)
    assert match.pairs == ((0, 0), (1, 1), (2, 2)) and match.skipped_teacher == (3, 4) and not match.skipped_student
    with pytest.raises(ValueError, match="share no level"):
        match_levels((64, 128), (8, 16, 32))
    # the mapping: GFL teacher on P3-P7, YOLO student on P3-P5 of the same image
    t_sizes = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]
    t = dense(t_sizes, GFL_STRIDES, 16, 0.0, seed=5)
    s = dense(t_sizes[:3], YOLO_STRIDES, 15, 0.5, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # map_teacher does not warn by default (check_compatible does, once)
        m = map_teacher(t, s)
    assert m.levels.skipped_teacher == (3, 4) and m.matched.all()
    assert torch.equal(m.cls_logits, t.cls_logits[:, :s.points.shape[0]])
    assert torch.equal(m.box_logits, t.box_logits[:, :s.points.shape[0]])
    with pytest.warns(UserWarning, match="P6"):
        map_teacher(t, s, warn=True)


def test_grids_of_different_sizes_align_top_left():
    """A student rounding H/s down (3×4) against a teacher rounding up (4×5): cell (i, j) ↔ (i, j);
    a student level or cells the teacher lacks are unmatched (uniform, no weight)."""
    t = dense([(4, 5)], (8,), 16, 0.0, seed=7)
    s = dense([(3, 4), (2, 2)], (8, 16), 16, 0.0, seed=8)
    m = map_teacher(t, s)
    assert m.levels.skipped_student == (1,)
    idx = torch.tensor([i * 5 + j for i in range(3) for j in range(4)])
    assert torch.equal(m.box_logits[:, :12], t.box_logits[:, idx])
    assert m.matched.tolist() == [True] * 12 + [False] * 4
    torch.testing.assert_close(m.probs()[:, 12:], torch.full((2, 4, 4, 17), 1 / 17))
    s_big = dense([(5, 5)], (8,), 16, 0.0, seed=9)
    assert map_teacher(t, s_big).matched.tolist() == [True] * 20 + [False] * 5


# ----------------------------------------------------------------------------- check_compatible


def detector(strides, reg_max, offset=None, classes=80):
    d = SimpleNamespace(strides=tuple(strides), reg_max=reg_max, num_classes=classes)
    if offset is not None:
        d.anchor_offset = offset
    return d


def test_check_compatible_same_layout_is_unchanged():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for hetero in (False, True):
            text = check_compatible(detector(GFL_STRIDES, 16), detector(GFL_STRIDES, 16), heterogeneous=hetero)
            assert text.startswith("same layout") and "P3 (stride 8)" in text


def test_check_compatible_describes_a_gfl_to_yolo_mapping():
    student, teacher = detector(YOLO_STRIDES, 15, 0.5), detector(GFL_STRIDES, 16)
    with pytest.raises(ConfigError, match=r"strides.*not wired into training yet"):
        check_compatible(student, teacher)  # the terms as wired today need the same layout
    with pytest.warns(UserWarning) as rec:
        text = check_compatible(student, teacher, heterogeneous=True)
    assert len(rec) == 1 and "P6 (stride 64), P7 (stride 128)" in str(rec[0].message)
    assert "levels matched by stride: P3 (stride 8), P4 (stride 16), P5 (stride 32)" in text
    assert "teacher level(s) P6 (stride 64), P7 (stride 128)" in text
    assert "+0.5 student bins (left, top) and -0.5 (right, bottom)" in text
    assert "reg_max=16" in text and "reg_max=15" in text and "linear interpolation" in text
    assert "-0.5..16.5" in text and "edge bin" in text


def test_check_compatible_other_pairs():
    # only reg_max differs: no level skipped, no warning; a wider student range clips nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = check_compatible(detector(GFL_STRIDES, 20), detector(GFL_STRIDES, 16), heterogeneous=True)
    assert "reg_max=16" in text and "reg_max=20" in text and "edge bin" not in text and "skipped" not in text
    with pytest.raises(ConfigError, match=r"reg_max=16 but student reg_max=20.*not wired"):
        check_compatible(detector(GFL_STRIDES, 20), detector(GFL_STRIDES, 16))
    # only the anchor offset differs
    with pytest.raises(ConfigError, match=r"anchor offset 0 but student 0.5"):
        check_compatible(detector(GFL_STRIDES, 16, 0.5), detector(GFL_STRIDES, 16))
    text = check_compatible(detector(GFL_STRIDES, 16, 0.5), detector(GFL_STRIDES, 16), heterogeneous=True)
    assert "+0.5 stride" in text and "edge bin" in text
    # no common stride: nothing to map, a ConfigError naming the fix
    with pytest.raises(ConfigError, match=r"share no level.*model.head.strides"):
        check_compatible(detector((8, 16, 32), 15, 0.5), detector((64, 128), 16), heterogeneous=True)
    # the class check is kept in both modes
    with pytest.raises(ConfigError, match="distill.kd_weight=0"):
        check_compatible(detector(YOLO_STRIDES, 15, 0.5), detector(GFL_STRIDES, 16, classes=20), heterogeneous=True)
    with pytest.warns(UserWarning):
        check_compatible(detector(YOLO_STRIDES, 15, 0.5), detector(GFL_STRIDES, 16, classes=20),
                         need_same_classes=False, heterogeneous=True)
