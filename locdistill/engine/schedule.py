"""Optimizer, learning-rate scaling rule and the warm-up + step schedule (DESIGN §8)."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import ConfigError


def scaled_lr(train_cfg: TrainConfig, total_batch: int) -> float:
    """``lr = base_lr * total_batch / base_batch`` unless ``train.lr`` pins it."""
    if train_cfg.lr is not None:
        return float(train_cfg.lr)
    return train_cfg.base_lr * total_batch / train_cfg.base_batch


def build_optimizer(model: nn.Module, train_cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """SGD(momentum, weight decay) — or AdamW — over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay)
    if train_cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=train_cfg.weight_decay)
    raise ConfigError(f"train.optimizer={train_cfg.optimizer!r} is not supported; use 'sgd' or 'adamw'")


class WarmupStepSchedule:
    """Per-iteration lr: linear warm-up (mmdet rule) then ×gamma at each milestone epoch.

    ``step(epoch, it)`` sets the lr for global iteration ``it`` inside ``epoch`` (0-based).
    Warm-up: ``lr = base · (1 - (1 - it/warmup_iters)(1 - warmup_ratio))`` for
    ``it < warmup_iters``. After epoch ``m`` of ``milestones`` has finished (i.e. from
    0-based epoch ``m`` on) the lr is multiplied by ``gamma``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, train_cfg: TrainConfig):
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.warmup_iters = train_cfg.warmup_iters
        self.warmup_ratio = train_cfg.warmup_ratio
        self.milestones = tuple(train_cfg.milestones)
        self.gamma = train_cfg.gamma
        self.last_lr = base_lr

    def lr_at(self, epoch: int, it: int) -> float:
        lr = self.base_lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        if self.warmup_iters > 0 and it < self.warmup_iters:
            k = (1 - it / self.warmup_iters) * (1 - self.warmup_ratio)
            lr = lr * (1 - k)
        return lr

    def step(self, epoch: int, it: int) -> float:
        lr = self.lr_at(epoch, it)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.last_lr = lr
        return lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "last_lr": self.last_lr}

    def load_state_dict(self, state: dict) -> None:
        self.base_lr = float(state.get("base_lr", self.base_lr))
        self.last_lr = float(state.get("last_lr", self.last_lr))


def is_finite(x: float) -> bool:
    return math.isfinite(x)
