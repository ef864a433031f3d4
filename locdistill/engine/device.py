"""Where and how a run computes: device choice, seeding, determinism, mixed precision.

The bottom of the engine: it imports nothing from the rest of ``locdistill.engine``, so
:mod:`~locdistill.engine.dist`, the training loop and the tools (``predict``, ``demo``,
``check-teacher``) all take :func:`select_device` from here.
"""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from ..config import TrainConfig
from ..errors import ConfigError


def select_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; an unusable explicit device is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"train.device='{name}' is not a valid device (use auto, cpu, cuda, cuda:N)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device='{name}' but CUDA is not available here; use --set train.device=cpu")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (``train.seed``)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def set_determinism(on: bool) -> None:
    """``train.deterministic``: deterministic kernels (warn where none exists), no cuDNN autotuning."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(on, warn_only=True)


def targets_to(targets: list[dict], device: torch.device) -> list[dict]:
    """Copies of the per-image target dicts with ``boxes`` and ``labels`` on ``device`` (other keys as-is)."""
    out = []
    for t in targets:
        t = dict(t)
        t["boxes"] = t["boxes"].to(device, non_blocking=True)
        t["labels"] = t["labels"].to(device, non_blocking=True)
        out.append(t)
    return out


class Precision:
    """Autocast dtype and gradient scaler of a run (``train.amp`` / ``train.amp_dtype``).

    bf16 needs no scaling and works on CPU and CUDA; fp16 is CUDA-only and uses a
    :class:`torch.amp.GradScaler` (its state goes into checkpoints). The losses are
    computed in float32 by the criterion whatever the autocast dtype.
    """

    DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}

    def __init__(self, train_cfg: TrainConfig, device: torch.device):
        self.enabled = bool(train_cfg.amp)
        self.device_type = device.type
        dtype = self.DTYPES.get(str(train_cfg.amp_dtype).lower())
        if dtype is None:
            raise ConfigError(f"train.amp_dtype={train_cfg.amp_dtype!r} is not supported; use 'bfloat16' or 'float16'")
        if self.enabled and dtype == torch.float16 and device.type != "cuda":
            raise ConfigError("train.amp_dtype='float16' needs a CUDA device (it trains with a GradScaler); "
                              "use train.amp_dtype='bfloat16' (--amp-dtype bf16) on the CPU")
        if self.enabled and dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("this GPU does not support bfloat16; use --amp-dtype fp16")
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.enabled and dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    @property
    def name(self) -> str:
        if not self.enabled:
            return "float32"
        return "float16 + GradScaler" if self.scaler.is_enabled() else "bfloat16"
