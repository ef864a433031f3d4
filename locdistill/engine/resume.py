"""Stopping and continuing a run exactly (DESIGN §8).

- :class:`TrainState`: the run's position (epoch, iteration, batch inside the epoch),
  skipped steps, evaluation history and the last checkpoint;
- :func:`rng_state` / :func:`set_rng_state`: the generator states a checkpoint carries
  as plain data (``weights_only`` loadable);
- :class:`Checkpointer`: what a checkpoint of a run holds besides the weights (optimizer,
  schedule, scaler, RNG, distillation state, EMA of the weights, position), written and read back, and the
  epoch checkpoints with ``latest.pth`` linked to the newest and only
  ``train.keep_checkpoints`` of them kept;
- :func:`find_resume_checkpoint` (``--resume`` without a path) and
  :func:`remove_orphaned_temps` (temp files of writes a killed run never finished);
- :class:`GracefulInterrupt`: Ctrl-C (SIGINT) deferred to the end of the training step,
  so that the checkpoint the engine then writes is consistent.
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..checkpoint import DiskFullError, load_checkpoint, load_model_weights, save_checkpoint
from ..config import Config, TrainConfig, config_to_dict
from ..errors import CheckpointError
from . import dist
from .device import Precision
from .ema import ModelEMA
from .evaluate import unwrap
from .logging import warn
from .schedule import WarmupStepSchedule


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    iter: int = 0  # iterations (batches) done, skipped steps included
    epoch_iter: int = 0  # iterations done inside the current, unfinished epoch
    skipped: int = 0  # steps skipped because of a non-finite loss (train.skip_nonfinite)
    history: list = field(default_factory=list)  # evaluation records
    checkpoint: tuple | None = None  # (path, "epoch N") of the last checkpoint written or resumed from

    def position(self) -> str:
        return f"batch {self.epoch_iter} of epoch {self.epoch + 1}" if self.epoch_iter else f"epoch {self.epoch}"

    def checkpoint_note(self) -> tuple[str, str]:
        """What a run that stops now leaves behind, and how to continue it (two clauses)."""
        if self.checkpoint is None:
            return "no checkpoint was written yet", "run the same command again"
        path, where = self.checkpoint
        return (f"the last checkpoint, {path} ({where}), is intact",
                f"continue with the same command plus --resume {path}")


# ----------------------------------------------------------------------------- Ctrl-C


class GracefulInterrupt:
    """Defers Ctrl-C (SIGINT) to the end of the current training step.

    Inside :meth:`deferred` a SIGINT only sets ``requested``; leaving the block then
    raises :class:`KeyboardInterrupt`, so the run state (weights, optimizer, counters)
    is always consistent when the engine saves its Ctrl-C checkpoint. Outside it, and
    at a second Ctrl-C, the interrupt is raised at once. The handler is only installed
    in the main thread (Python's rule) and the previous one is restored on exit.
    """

    def __init__(self):
        self.requested = False
        self._depth = 0
        self._previous = None

    def _handler(self, signum, frame):
        if self._depth > 0 and not self.requested:
            self.requested = True
            return
        raise KeyboardInterrupt

    def __enter__(self) -> "GracefulInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        except RuntimeError:
            if self.requested:  # a collective broken by a DDP peer that already stopped on the same Ctrl-C
                raise KeyboardInterrupt from None
            raise
        finally:
            self._depth -= 1
        if self._depth == 0 and self.requested:
            raise KeyboardInterrupt


# ----------------------------------------------------------------------------- RNG states


def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) generator states as plain data (``weights_only`` loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state` (missing parts are left alone)."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- files of a work dir


def epoch_checkpoints(work_dir: Path) -> list[Path]:
    """The ``epoch_N.pth`` files of ``work_dir``, oldest epoch first."""
    def epoch_of(p: Path) -> int:
        m = re.match(r"epoch_(\d+)\.pth$", p.name)
        return int(m.group(1)) if m else -1
    return sorted((p for p in work_dir.glob("epoch_*.pth") if epoch_of(p) >= 0), key=epoch_of)


def find_resume_checkpoint(work_dir: Path) -> Path | None:
    """``latest.pth`` or the newest ``epoch_N.pth`` in ``work_dir``."""
    latest = work_dir / "latest.pth"
    if latest.is_file():
        return latest
    ck = epoch_checkpoints(work_dir)
    return ck[-1] if ck else None


def link_latest(src: Path, latest: Path) -> None:
    """Make ``latest`` the same file as ``src`` (a hard link, else a copy), atomically."""
    tmp = latest.with_name(f".{latest.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # file systems without hard links
        shutil.copyfile(src, tmp)
    os.replace(tmp, latest)


_ORPHANED_TMP = re.compile(r"\.(epoch_\d+|latest)\.pth\.\w+\.tmp")  # atomic_torch_save / link_latest temp files


def remove_orphaned_temps(work_dir: Path) -> int:
    """Remove the temp files of checkpoint writes that a killed run never finished; returns how many."""
    orphans = [p for p in work_dir.glob(".*.tmp") if _ORPHANED_TMP.fullmatch(p.name) and p.is_file()]
    for p in orphans:
        p.unlink(missing_ok=True)
    return len(orphans)


# ----------------------------------------------------------------------------- a run's checkpoints


class Checkpointer:
    """What a checkpoint of a run holds besides the weights (DESIGN §8): writes and restores it.

    ``model`` is the trained module (set it again after DDP wrapping); ``meta_base`` goes into
    every checkpoint's ``meta`` (classes, config name); ``ema`` (``train.ema``) is saved as the
    checkpoint's ``"ema"`` entry and restored with the rest.
    """

    def __init__(self, cfg: Config, model, optimizer, schedule: WarmupStepSchedule, precision: Precision,
                 state: TrainState, meta_base: dict, ema: ModelEMA | None = None):
        self.cfg, self.model, self.optimizer, self.schedule = cfg, model, optimizer, schedule
        self.precision, self.state, self.meta_base, self.ema = precision, state, meta_base, ema
        self.cfg_dict = config_to_dict(cfg)
        self.rng = None  # the RNG states of the last checkpoint saved or restored

    def save(self, path: Path, keep_rng: bool = False, **meta) -> Path:
        """Write a checkpoint of the run; ``keep_rng``: with the RNG states of the previous one
        (rewriting it after an evaluation must not change how a resumed run trains on)."""
        s = self.state
        if not (keep_rng and self.rng):
            self.rng = rng_state()
        scaler = self.precision.scaler if self.precision.scaler.is_enabled() else None
        extra = {"rng": self.rng, "train_state": {"skipped": s.skipped, "history": list(s.history)}}
        if getattr(self.model, "training_state_dict", None) and self.model.training_state_dict():
            extra["distill_state"] = self.model.training_state_dict()  # a Distiller's training-only modules
        if self.ema is not None:
            extra["ema"] = self.ema.state_dict()  # "model" stays the raw weights: training resumes from them
        try:
            path = save_checkpoint(
                path, unwrap(self.model), self.cfg_dict,
                {**self.meta_base, "epoch": s.epoch, "iter": s.iter, "epoch_iter": s.epoch_iter,
                 "world_size": dist.get_world_size(), "batch_size": self.cfg.data.batch_size,
                 "seed": self.cfg.train.seed, **meta},
                self.optimizer, self.schedule, scaler, extra=extra)
        except DiskFullError as e:
            if s.checkpoint is None:
                note = "no checkpoint was written yet; free some space on that disk and run the same command again"
            else:
                last, where = s.checkpoint
                note = (f"the previous checkpoints are intact, the last is {last} ({where}); free some space on "
                        f"that disk, then continue with the same command plus --resume {last}")
            raise DiskFullError(e.path, e.reason, note) from e
        return path

    def save_epoch(self, work_dir: Path, keep_rng: bool = False) -> Path:
        """Checkpoint of the finished epoch ``state.epoch`` → epoch_N.pth, linked as latest.pth, the oldest
        beyond ``train.keep_checkpoints`` removed. Every rank calls it; rank 0 alone writes."""
        ckpt = work_dir / f"epoch_{self.state.epoch}.pth"
        if dist.is_main_process():
            self.save(ckpt, keep_rng=keep_rng)
            link_latest(ckpt, work_dir / "latest.pth")
            for old in epoch_checkpoints(work_dir)[: -max(self.cfg.train.keep_checkpoints, 1)]:
                old.unlink(missing_ok=True)
        self.state.checkpoint = (ckpt, self.state.position())
        return ckpt

    def restore(self, path: Path) -> None:
        ck = load_checkpoint(path)
        load_model_weights(unwrap(self.model), ck, strict=True, source=str(path))
        if getattr(self.model, "load_training_state_dict", None):
            self.model.load_training_state_dict(ck.get("distill_state") or {})
        if "optimizer" in ck:
            try:
                self.optimizer.load_state_dict(ck["optimizer"])
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{path}: its optimizer state does not fit this run's optimizer "
                                      f"(train.optimizer={self.cfg.train.optimizer!r}): {e}; resume with the "
                                      "config the checkpoint was written with") from e
        if self.ema is not None:
            if isinstance(ck.get("ema"), dict):
                self.ema.load_state_dict(ck["ema"], source=str(path))
            else:
                self.ema.reset(unwrap(self.model))
                warn(f"{path} holds no EMA of the weights (written with train.ema off): the EMA starts from its "
                     "weights")
        if "scheduler" in ck:
            self.schedule.load_state_dict(ck["scheduler"])
        if ck.get("scaler") and self.precision.scaler.is_enabled():
            self.precision.scaler.load_state_dict(ck["scaler"])
        meta = ck.get("meta", {})
        s = self.state
        s.epoch, s.iter = int(meta.get("epoch", 0)), int(meta.get("iter", 0))
        s.epoch_iter = int(meta.get("epoch_iter", 0))
        ts = ck.get("train_state") or {}
        s.skipped, s.history = int(ts.get("skipped", 0)), list(ts.get("history", []))
        if s.epoch_iter:
            same = (int(meta.get("world_size", 1)) == dist.get_world_size()
                    and int(meta.get("batch_size", -1)) == self.cfg.data.batch_size
                    and int(meta.get("seed", self.cfg.train.seed)) == self.cfg.train.seed)
            if not same:
                warn(f"{path} was written in the middle of epoch {s.epoch + 1} by a run with "
                     f"{meta.get('world_size')} process(es) × batch {meta.get('batch_size')}; this run has "
                     f"{dist.get_world_size()} × {self.cfg.data.batch_size}, so epoch {s.epoch + 1} restarts "
                     "from its first batch")
                s.iter -= s.epoch_iter
                s.epoch_iter = 0
        if "rng" in ck:
            set_rng_state(ck["rng"])
            self.rng = ck["rng"]
        s.checkpoint = (path, s.position())


def resumed_lr(tcfg: TrainConfig, schedule: WarmupStepSchedule, lr: float) -> str | None:
    """After a restore: a ``train.lr`` other than the checkpoint's wins, else the checkpoint's lr stays.
    Returns the lr text of the summary line, None when the checkpoint's lr is this config's."""
    old = schedule.base_lr
    if old == lr:
        return None
    if tcfg.lr is not None:
        schedule.base_lr = lr
        return f"lr from the checkpoint {old:.5g} → {lr:.5g} (train.lr)"
    return (f"lr {old:.5g} (from the checkpoint; the scaling rule would give {lr:.5g}: "
            "pin another with --set train.lr=...)")
