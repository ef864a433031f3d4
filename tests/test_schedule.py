import pytest
import torch

from locdistill.config import TrainConfig
from locdistill.engine.schedule import WarmupStepSchedule, build_optimizer, scaled_lr


def test_lr_scaling_rule():
    t = TrainConfig()
    assert scaled_lr(t, 16) == pytest.approx(0.01)
    assert scaled_lr(t, 4) == pytest.approx(0.0025)
    t.lr = 0.05
    assert scaled_lr(t, 4) == 0.05


def test_warmup_and_steps_hand_computed():
    t = TrainConfig(warmup_iters=500, warmup_ratio=0.001, milestones=(8, 11), gamma=0.1)
    opt = build_optimizer(torch.nn.Linear(1, 1), t, 0.02)
    s = WarmupStepSchedule(opt, 0.02, t)
    assert s.step(0, 0) == pytest.approx(0.02 * 0.001)
    assert s.step(0, 250) == pytest.approx(0.02 * (1 - 0.5 * 0.999))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02 * (1 - 0.5 * 0.999))
    assert s.step(0, 500) == pytest.approx(0.02)
    assert s.step(7, 9000) == pytest.approx(0.02)
    assert s.step(8, 9000) == pytest.approx(0.002)
    assert s.step(11, 9000) == pytest.approx(0.0002)
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["weight_decay"] == 1e-4
