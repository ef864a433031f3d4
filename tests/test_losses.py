"""locdistill.losses against mmdetection 3.3 reference vectors and hand-computed cases."""
import math

import pytest
import torch
import torch.nn.functional as F

from locdistill.losses import (EPS, distribution_focal_loss, giou_loss, kd_kl_loss, ld_kl_loss,
                               quality_focal_loss, weighted_sum)
from slow_reference import load_vectors

REF = load_vectors()
TOL = dict(rtol=1e-5, atol=1e-6)


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def scalar(x):
    return torch.tensor(float(x))


def test_eps_is_float32_eps():
    assert EPS == pytest.approx(1.1920929e-07, rel=1e-7)


def test_giou_loss_matches_mmdet():
    r = REF["giou_loss"]
    pred, target, w = t(r["pred"]), t(r["target"]), t(r["weight"])
    el = giou_loss(pred, target, eps=1e-6)
    torch.testing.assert_close(el, t(r["elementwise_eps1e6"]), **TOL)
    torch.testing.assert_close(2.0 * weighted_sum(el, w, 1.0), scalar(r["GIoULoss_w2_weight_avg1"]), **TOL)
    torch.testing.assert_close(2.0 * el.mean(), scalar(r["GIoULoss_w2_mean"]), **TOL)
    assert 2.0 * weighted_sum(el, torch.zeros_like(w), 1.0) == r["GIoULoss_zero_weight"]


def test_dfl_matches_mmdet():
    r = REF["distribution_focal_loss"]
    el = distribution_focal_loss(t(r["pred"]), t(r["label"]))
    torch.testing.assert_close(el, t(r["elementwise"]), **TOL)
    torch.testing.assert_close(0.25 * weighted_sum(el, t(r["weight"]), 4.0), scalar(r["DFL_w0p25_weight_avg4"]), **TOL)


def test_dfl_hand_cases():
    logits = torch.randn(3, 17, generator=torch.Generator().manual_seed(0))
    logp = F.log_softmax(logits, -1)
    # integer target: plain cross-entropy at that bin; target 2.25 mixes bins 2 and 3
    out = distribution_focal_loss(logits, t([4.0, 2.25, 16.0]))
    torch.testing.assert_close(out[0], -logp[0, 4])
    torch.testing.assert_close(out[1], -0.75 * logp[1, 2] - 0.25 * logp[1, 3])
    torch.testing.assert_close(out[2], -logp[2, 16])  # y == n: the missing right bin has weight 0
    # leading dims
    x = torch.randn(2, 5, 4, 17)
    y = torch.rand(2, 5, 4) * 15.9
    torch.testing.assert_close(distribution_focal_loss(x, y), distribution_focal_loss(x.reshape(-1, 17), y.reshape(-1)).reshape(2, 5, 4))


def test_qfl_matches_mmdet():
    r = REF["quality_focal_loss"]
    pred, label, score, lw = t(r["pred"]), t(r["label"], torch.long), t(r["score"]), t(r["label_weight"])
    el = quality_focal_loss(pred, label, score, beta=r["beta"])
    torch.testing.assert_close(el, t(r["elementwise"]), **TOL)
    torch.testing.assert_close(weighted_sum(el, lw, 3.0), scalar(r["QFL_weight_avg3"]), **TOL)
    torch.testing.assert_close(el.mean(), scalar(r["QFL_tuple_target_mean"]), **TOL)
    torch.testing.assert_close(el.mean(), scalar(r["QFL_tensor_target_mean"]), **TOL)


def test_qfl_hand_case_and_gradient():
    x = t([[0.3, -1.2, 2.0]]).requires_grad_()
    loss = quality_focal_loss(x, t([2], torch.long), t([0.6]), beta=2.0)

    def bce(v, y):
        return max(v, 0) - v * y + math.log1p(math.exp(-abs(v)))

    s = [1 / (1 + math.exp(-v)) for v in (0.3, -1.2, 2.0)]
    expected = bce(0.3, 0) * s[0] ** 2 + bce(-1.2, 0) * s[1] ** 2 + bce(2.0, 0.6) * abs(0.6 - s[2]) ** 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).all()
    # background label C and an out-of-range negative label behave the same
    y = torch.randn(4, 3)
    torch.testing.assert_close(quality_focal_loss(y, t([3] * 4, torch.long), torch.rand(4)),
                               quality_focal_loss(y, t([-1] * 4, torch.long), torch.zeros(4)))


def test_qfl_activated_matches_logit_form():
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    labels, scores = t([0, 4, 2, 1, 4, 3], torch.long), torch.rand(6)
    torch.testing.assert_close(quality_focal_loss(x.sigmoid(), labels, scores, activated=True),
                               quality_focal_loss(x, labels, scores), rtol=1e-4, atol=1e-5)


def test_kd_matches_mmdet():
    r = REF["knowledge_distillation_kl_div_loss"]
    pred, soft = t(r["pred"]), t(r["soft_label"])
    el10 = ld_kl_loss(pred, soft, T=10.0)
    torch.testing.assert_close(el10, t(r["elementwise_T10"]), **TOL)
    torch.testing.assert_close(ld_kl_loss(pred, soft, T=1.0), t(r["elementwise_T1"]), **TOL)
    torch.testing.assert_close(0.25 * weighted_sum(el10, t(r["weight"]), 4.0), scalar(r["KD_w0p25_T10_weight_avg4"]), **TOL)


def test_kd_properties():
    s = torch.randn(5, 17, requires_grad=True)
    teacher = torch.randn(5, 17, requires_grad=True)
    assert ld_kl_loss(s.detach(), s.detach()).abs().max() < 1e-5  # T^2 = 100 scales rounding
    ld_kl_loss(s, teacher).sum().backward()
    assert s.grad is not None and teacher.grad is None  # the teacher is detached
    torch.testing.assert_close(kd_kl_loss(s, teacher, 2.0, "sum"), 17 * kd_kl_loss(s, teacher, 2.0))
    with pytest.raises(ValueError, match="shape"):
        ld_kl_loss(torch.zeros(2, 17), torch.zeros(2, 9))
    with pytest.raises(ValueError, match="class_reduction"):
        kd_kl_loss(s, teacher, 1.0, "max")


def test_weighted_sum():
    x = t([1.0, 2.0, 3.0])
    assert weighted_sum(x).item() == 6.0
    assert weighted_sum(x, t([1.0, 0.0, 2.0])).item() == 7.0
    assert weighted_sum(x, None, 2.0).item() == pytest.approx(6 / (2 + EPS))


def test_losses_are_float32_under_half_inputs():
    x = torch.randn(3, 17).half()
    assert distribution_focal_loss(x, torch.rand(3) * 10).dtype == torch.float32
    assert ld_kl_loss(x, x).dtype == torch.float32
    assert quality_focal_loss(torch.randn(3, 4).half(), t([0, 1, 4], torch.long), torch.rand(3)).dtype == torch.float32
