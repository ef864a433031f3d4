"""distill.ld_detach_shared: LD trains the box branch only, never the backbone / FPN shared with classification."""
import torch

from locdistill.config import load_config
from locdistill.distill import Distiller
from locdistill.models.build import build_criterion, build_detector

TINY = ["model.backbone.base_channels=8", "model.neck.out_channels=32", "model.head.feat_channels=32",
        "model.head.stacked_convs=1", "model.head.num_groups=8", "distill.vlr_weight=0.25",
        "distill.kd_weight=0.0"]


def _setup(detach):
    torch.manual_seed(0)
    cfg = load_config("demo/ld_r34_r18_digits", TINY + [f"distill.ld_detach_shared={detach}"])
    student, teacher = build_detector(cfg.model), build_detector(cfg.model)
    for p in teacher.parameters():
        p.data.normal_(0, 0.05)  # a teacher that differs from the student
    model = Distiller.from_config(student, teacher, cfg.distill)
    images = torch.randn(2, 3, 96, 96)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[30.0, 20.0, 90.0, 70.0]]), "labels": torch.tensor([5])}]
    return model, build_criterion(cfg), images, targets


def _grads(model, loss):
    model.zero_grad()
    loss.backward(retain_graph=True)
    return {n: (p.grad.abs().sum().item() if p.grad is not None else 0.0)
            for n, p in model.student.named_parameters()}


def test_detached_ld_reaches_only_the_box_branch_and_equals_the_plain_ld_value():
    model, criterion, images, targets = _setup(True)
    s_out, t_out = model(images)
    losses = criterion(s_out, targets, teacher_outputs=t_out)
    plain_model, plain_criterion, _, _ = _setup(False)
    plain = plain_criterion(*[plain_model(images)[0]], targets, teacher_outputs=plain_model(images)[1])
    for k in ("loss_ld", "loss_ld_vlr", "loss_cls", "loss_bbox", "loss_dfl"):
        assert torch.allclose(losses[k], plain[k], rtol=1e-5), k  # same values: only the graph differs
    for k in ("loss_ld", "loss_ld_vlr"):
        g = _grads(model, losses[k])
        shared = [n for n in g if n.startswith(("backbone.", "neck.", "bbox_head.cls_convs", "bbox_head.gfl_cls"))]
        box = [n for n in g if n.startswith(("bbox_head.reg_convs", "bbox_head.gfl_reg", "bbox_head.scales"))]
        assert shared and box
        assert all(g[n] == 0.0 for n in shared), k
        assert any(g[n] > 0.0 for n in box), k
    g_plain = _grads(plain_model, plain["loss_ld"])
    assert any(g_plain[n] > 0 for n in g_plain if n.startswith("neck."))  # without the option it does reach the FPN


def test_ground_truth_losses_still_train_everything():
    model, criterion, images, targets = _setup(True)
    s_out, t_out = model(images)
    losses = criterion(s_out, targets, teacher_outputs=t_out)
    g = _grads(model, losses["loss_bbox"] + losses["loss_cls"])
    assert any(g[n] > 0 for n in g if n.startswith("neck.")) and any(g[n] > 0 for n in g if n.startswith("backbone."))
