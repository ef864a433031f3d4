"""Fault injection for training tests: make the criterion misbehave at a chosen step."""
from __future__ import annotations

import locdistill.engine.train as train


class Injecting:
    """Wraps a criterion: applies ``action(losses)`` at its n-th call (1-based); ``action`` may
    return new losses (e.g. a NaN term) or raise (e.g. KeyboardInterrupt)."""

    def __init__(self, criterion, at: int, action):
        self.criterion, self.at, self.action, self.calls = criterion, at, action, 0

    def __call__(self, *args, **kwargs):
        losses = self.criterion(*args, **kwargs)
        self.calls += 1
        if self.calls == self.at:
            losses = self.action(losses) or losses
        return losses


def inject(monkeypatch, at: int, action) -> None:
    """Make every criterion the training loop builds from now on an :class:`Injecting` one
    (patched where :mod:`locdistill.engine.train` looks ``build_criterion`` up)."""
    real = train.build_criterion
    monkeypatch.setattr(train, "build_criterion", lambda cfg: Injecting(real(cfg), at, action))
