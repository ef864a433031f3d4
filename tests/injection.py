"""Fault injection for training tests: make the criterion misbehave at a chosen step."""
from __future__ import annotations


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
    """Make every criterion the training loop builds from now on (``build_criterion``) an :class:`Injecting` one
    (patched where :mod:`locdistill.engine.train` looks it up: its own module when it imports it there,
    else the :mod:`locdistill.distill` package it imports it from on use)."""
    import locdistill.distill
    import locdistill.engine.train as train

    owner = train if hasattr(train, "build_criterion") else locdistill.distill
    real = owner.build_criterion
    monkeypatch.setattr(owner, "build_criterion", lambda cfg: Injecting(real(cfg), at, action))
