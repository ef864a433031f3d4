"""Exponential moving average (EMA) of a detector's weights (``train.ema``).

:class:`ModelEMA` keeps a frozen copy of the detector whose every state-dict entry follows
the trained one after each optimizer step:

    ema ← d · ema + (1 − d) · weights,   d(u) = decay · (1 − exp(−u / tau))

where ``u`` is the number of updates so far (the first one included). The decay ramps up
from about 0 (the average follows the weights closely at the start, when they move fast)
to ``decay`` over a few ``tau`` updates; YOLOv8 trains with decay 0.9999 and tau 2000.
Floating-point buffers (BatchNorm running statistics) are averaged like the parameters;
integer buffers (``num_batches_tracked``) are copied. The copy stays in eval mode and
never receives gradients; the training loop evaluates it, and checkpoints carry it as
``{"state_dict", "updates", "decay", "tau"}`` next to the raw weights.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CheckpointError


class ModelEMA:
    """EMA of ``model``'s weights (``model``: the detector itself, not a DDP / Distiller wrapper)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        self.decay, self.tau, self.updates = float(decay), float(tau), int(updates)
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    def decay_at(self, updates: int) -> float:
        """The decay of update number ``updates`` (1 for the first): ``decay · (1 − exp(−updates / tau))``."""
        return self.decay * (1.0 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards ``model``'s current weights (call after each optimizer step)."""
        self.updates += 1
        weight = 1.0 - self.decay_at(self.updates)  # the share of the new weights
        current = model.state_dict()
        for key, avg in self.module.state_dict().items():
            new = current[key].detach()
            if avg.is_floating_point():
                avg.lerp_(new.to(avg.dtype), weight)  # avg + weight · (new − avg): a constant buffer stays exact
            else:
                avg.copy_(new)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Start the average again from ``model``'s weights (no update done)."""
        self.module.load_state_dict(model.state_dict())
        self.updates = 0

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint's ``"ema"`` entry holds: CPU copies of the averaged weights and the update count."""
        weights = {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}
        return {"state_dict": weights, "updates": self.updates, "decay": self.decay, "tau": self.tau}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any], source: str = "checkpoint") -> None:
        """Inverse of :meth:`state_dict` (the update count included; decay and tau stay this run's)."""
        weights = state.get("state_dict") if isinstance(state, Mapping) else None
        if not isinstance(weights, Mapping):
            raise CheckpointError(f"{source}: its 'ema' entry holds no state_dict; resume from another checkpoint "
                                  "or start the EMA anew with --set train.ema=False")
        own = self.module.state_dict()
        if set(weights) != set(own) or any(tuple(weights[k].shape) != tuple(v.shape) for k, v in own.items()):
            raise CheckpointError(f"{source}: its EMA weights do not match this run's model; resume with the "
                                  "config the checkpoint was written with")
        self.module.load_state_dict(weights)
        self.updates = int(state.get("updates", 0))
