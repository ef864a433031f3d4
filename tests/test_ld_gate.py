"""ld_gate: main LD weighted by the teacher's advantage in IoU with the GT (per batch or per positive)."""
import pytest
import torch

from locdistill.config import load_config
from locdistill.models.criterion import GFLCriterion, teacher_advantage


def _peaked(distances, n1=17, height=50.0):
    """Box logits [4, n+1] whose softmax is (almost) one-hot at each side's distance bin."""
    logits = torch.zeros(4, n1)
    for side, d in enumerate(distances):
        logits[side, d] = height
    return logits


def test_advantage_is_the_teacher_minus_student_iou_with_the_target():
    centers = torch.tensor([[5.0, 5.0], [5.0, 5.0]])  # two anchors at the same place
    target = torch.tensor([[[3.0, 3.0, 7.0, 7.0], [3.0, 3.0, 7.0, 7.0]]])
    student = torch.tensor([[[3.0, 3.0, 8.0, 8.0], [3.0, 3.0, 8.0, 8.0]]])  # IoU 16/25 = 0.64
    teacher = torch.stack([_peaked([2, 2, 2, 2]), _peaked([3, 3, 3, 3])])[None]  # IoU 1.0, then 16/36
    adv = teacher_advantage(teacher, student, target, centers)
    assert adv[0].tolist() == pytest.approx([1.0 - 0.64, 16 / 36 - 0.64], abs=1e-5)


def _criterion(gate):
    cfg = load_config("demo/ld_r34_r18_digits", ["distill.vlr_weight=0.0", "distill.kd_weight=0.0",
                                                 f"distill.ld_gate={gate}"])
    return GFLCriterion.from_config(cfg, strides=(8,))


@pytest.mark.parametrize("gate", ["batch", "positive"])
def test_gated_ld_is_zero_when_the_teacher_is_worse_and_unchanged_when_it_is_far_better(gate):
    torch.manual_seed(0)
    b, h, w, n1, c = 1, 8, 8, 17, 10
    student = {"cls_logits": [torch.randn(b, c, h, w)], "box_logits": [torch.randn(b, 4 * n1, h, w)]}
    targets = [{"boxes": torch.tensor([[12.0, 12.0, 40.0, 44.0]]), "labels": torch.tensor([3])}]
    plain, gated = _criterion("none"), _criterion(gate)
    t = plain.get_targets(student, targets)
    assert t.pos_mask.any()
    # a teacher whose distributions sit exactly on the GT distances: better than the student everywhere
    from locdistill.boxes import bbox2distance

    exact = bbox2distance(t.centers, t.target_boxes, max_dis=16).round().long()  # [B, A, 4]
    good = torch.nn.functional.one_hot(exact, n1).float() * 50.0  # [B, A, 4, n+1]
    good_out = {"cls_logits": student["cls_logits"],
                "box_logits": [good.reshape(b, h, w, 4 * n1).permute(0, 3, 1, 2)]}
    ld_plain = plain(student, targets, teacher_outputs=good_out)["loss_ld"]
    ld_gated = gated(student, targets, teacher_outputs=good_out)["loss_ld"]
    adv = teacher_advantage(good, t.pred_boxes, t.target_boxes, t.centers)[t.pos_mask]
    assert (adv >= 0.1).all()  # at least the margin everywhere: factor 1
    assert ld_gated == pytest.approx(float(ld_plain), rel=1e-6) and float(ld_plain) > 0
    # a teacher predicting zero-size boxes (IoU 0): never better, no LD at all
    bad = torch.full((b, 4 * n1, h, w), -50.0)
    bad[:, ::n1] = 50.0  # every side at bin 0
    bad_out = {"cls_logits": student["cls_logits"], "box_logits": [bad]}
    assert float(gated(student, targets, teacher_outputs=bad_out)["loss_ld"]) == 0.0
    assert float(plain(student, targets, teacher_outputs=bad_out)["loss_ld"]) > 0


def test_positive_gate_scales_each_positive_by_its_advantage():
    torch.manual_seed(1)
    b, h, w, n1, c = 1, 8, 8, 17, 10
    student = {"cls_logits": [torch.randn(b, c, h, w)], "box_logits": [torch.randn(b, 4 * n1, h, w)]}
    teacher = {"cls_logits": [torch.randn(b, c, h, w)], "box_logits": [torch.randn(b, 4 * n1, h, w) * 3]}
    targets = [{"boxes": torch.tensor([[12.0, 12.0, 40.0, 44.0]]), "labels": torch.tensor([3])}]
    plain = _criterion("none")
    t = plain.get_targets(student, targets)
    t_box = plain._flatten(teacher, "teacher")[1]
    adv = teacher_advantage(t_box, t.pred_boxes, t.target_boxes, t.centers)
    from locdistill.losses import kd_kl_loss

    ld = kd_kl_loss(t.box_logits, t_box, 10.0).sum(-1)  # [B, A]
    for margin in (0.05, 0.5):
        cfg = load_config("demo/ld_r34_r18_digits", ["distill.vlr_weight=0.0", "distill.kd_weight=0.0",
                                                     "distill.ld_gate=positive",
                                                     f"distill.ld_gate_margin={margin}"])
        gated = GFLCriterion.from_config(cfg, strides=(8,))
        expected = 0.25 * 3.0 / b * (ld * t.weight_targets * (adv / margin).clamp(0, 1)).sum() / 4
        got = gated(student, targets, teacher_outputs=teacher)["loss_ld"]
        assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_batch_gate_scales_all_positives_by_the_mean_advantage():
    torch.manual_seed(2)
    b, h, w, n1, c = 2, 8, 8, 17, 10
    student = {"cls_logits": [torch.randn(b, c, h, w)], "box_logits": [torch.randn(b, 4 * n1, h, w)]}
    targets = [{"boxes": torch.tensor([[12.0, 12.0, 40.0, 44.0]]), "labels": torch.tensor([3])},
               {"boxes": torch.tensor([[2.0, 30.0, 20.0, 60.0]]), "labels": torch.tensor([1])}]
    plain = _criterion("none")
    t = plain.get_targets(student, targets)
    from locdistill.boxes import bbox2distance

    # a teacher leaning towards the GT distances, with noise: better than the random student on average
    exact = bbox2distance(t.centers, t.target_boxes, max_dis=16).round().long()
    t_box = torch.nn.functional.one_hot(exact, n1).float() * 6.0 + torch.randn(b, h * w, 4, n1)
    teacher = {"cls_logits": [torch.randn(b, c, h, w)],
               "box_logits": [t_box.reshape(b, h, w, 4 * n1).permute(0, 3, 1, 2)]}
    adv = teacher_advantage(t_box, t.pred_boxes, t.target_boxes, t.centers)
    mean = float(adv[t.pos_mask].mean())
    assert 0.05 < mean < 0.95  # both margins below give a factor strictly inside (0, 1] that differs
    for margin in (0.01, 2.0):
        cfg = load_config("demo/ld_r34_r18_digits", ["distill.vlr_weight=0.0", "distill.kd_weight=0.0",
                                                     "distill.ld_gate=batch", f"distill.ld_gate_margin={margin}"])
        gated = GFLCriterion.from_config(cfg, strides=(8,))
        ratio = float(gated(student, targets, teacher_outputs=teacher)["loss_ld"]) / float(
            plain(student, targets, teacher_outputs=teacher)["loss_ld"])
        assert ratio == pytest.approx(min(1.0, max(0.0, mean) / margin), rel=1e-5)


def test_unknown_gate_is_refused():
    with pytest.raises(ValueError, match="ld_gate"):
        GFLCriterion(num_classes=2, ld_gate="sometimes")
