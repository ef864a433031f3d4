"""The plain training loop: ``fit`` → ``train_one_epoch`` / ``evaluate``."""
from __future__ import annotations

import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from ..config import Config, config_to_dict, save_config
from ..errors import CheckpointError, ConfigError, TrainingError
from .evaluate import evaluate, unwrap
from .logging import MetricsLogger, info, make_progress, metrics_table, print_table
from .schedule import WarmupStepSchedule, build_optimizer, scaled_lr


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


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


def targets_to(targets: list[dict], device: torch.device) -> list[dict]:
    out = []
    for t in targets:
        t = dict(t)
        t["boxes"] = t["boxes"].to(device, non_blocking=True)
        t["labels"] = t["labels"].to(device, non_blocking=True)
        out.append(t)
    return out


def _split_outputs(out: Any) -> tuple[dict, dict | None]:
    """A detector returns its outputs; a Distiller returns (student_outputs, teacher_outputs)."""
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    iter: int = 0  # optimizer steps taken
    history: list = field(default_factory=list)  # evaluation records


def train_one_epoch(
    model: nn.Module,
    criterion: Callable,
    loader,
    optimizer: torch.optim.Optimizer,
    schedule: WarmupStepSchedule,
    state: TrainState,
    cfg: Config,
    device: torch.device,
    logger: MetricsLogger | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of each loss term over the epoch.

    Loss values are read back to the host only every ``train.log_interval`` steps
    (and for the progress bar every few steps), never per iteration on the GPU path.
    """
    model.train()
    tcfg = cfg.train
    n_iters = len(loader)
    if tcfg.max_iters_per_epoch:
        n_iters = min(n_iters, tcfg.max_iters_per_epoch)
    sums: dict[str, torch.Tensor] = {}
    window: dict[str, torch.Tensor] = {}
    window_n = 0
    show_every = max(1, min(tcfg.log_interval, 10))
    t0 = time.perf_counter()
    data_time = 0.0
    info_text = ""
    with make_progress() as bar:
        task = bar.add_task(f"epoch {state.epoch + 1}/{tcfg.epochs}", total=n_iters, info="")
        t_data = time.perf_counter()
        for i, (images, targets) in enumerate(loader):
            if i >= n_iters:
                break
            data_time += time.perf_counter() - t_data
            lr = schedule.step(state.epoch, state.iter)
            images = images.to(device, non_blocking=True)
            targets = targets_to(targets, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tcfg.amp):
                outputs, teacher_outputs = _split_outputs(model(images))
            losses = criterion(outputs, targets, teacher_outputs=teacher_outputs,
                               image_sizes=[t["pad_shape"] for t in targets])
            total = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if tcfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], tcfg.grad_clip)
            optimizer.step()
            state.iter += 1
            detached = {k: v.detach() for k, v in losses.items()}
            detached["loss"] = total.detach()
            for k, v in detached.items():
                sums[k] = sums.get(k, 0) + v
                window[k] = window.get(k, 0) + v
            window_n += 1
            last = i + 1 == n_iters
            if (i + 1) % show_every == 0 or last:
                vals = {k: float(v) / window_n for k, v in window.items()}
                if not all(math.isfinite(v) for v in vals.values()):
                    bad = [k for k, v in vals.items() if not math.isfinite(v)]
                    raise TrainingError(
                        f"non-finite loss ({', '.join(bad)}) at iteration {state.iter} (epoch {state.epoch + 1}); "
                        "the last checkpoint in the work dir is intact. Lower the learning rate "
                        "(--set train.lr=...), add gradient clipping (--set train.grad_clip=35.0) "
                        "or check the annotations for degenerate boxes."
                    )
                info_text = " ".join(f"{k.replace('loss_', '')}={v:.3f}" for k, v in vals.items() if k != "loss")
                info_text = f"loss={vals['loss']:.3f} {info_text} lr={lr:.2e}"
                if logger is not None and ((i + 1) % tcfg.log_interval == 0 or last):
                    logger.log({"mode": "train", "epoch": state.epoch + 1, "iter": state.iter, "lr": lr,
                                **vals, "data_time": data_time / max(i + 1, 1),
                                "iter_time": (time.perf_counter() - t0) / (i + 1)})
                window, window_n = {}, 0
            bar.update(task, advance=1, info=info_text)
            t_data = time.perf_counter()
    n = max(min(n_iters, i + 1) if n_iters else 0, 1)
    return {k: float(v) / n for k, v in sums.items()}


def build_training(cfg: Config, device: torch.device):
    """Datasets, loaders, model and criterion for ``cfg`` (num_classes follows the data)."""
    from ..data.loader import build_dataloader, build_dataset
    from ..models.build import build_criterion, build_detector

    train_set = build_dataset(cfg.data, "train")
    val_set = build_dataset(cfg.data, "val")
    num_classes = len(train_set.classes)
    if cfg.model.num_classes != num_classes:
        info(f"model.num_classes: {cfg.model.num_classes} → {num_classes} (from {train_set.json_path})")
        cfg.model.num_classes = num_classes
    if list(val_set.classes) != list(train_set.classes):
        raise ConfigError(
            f"the train and val JSONs name different classes ({len(train_set.classes)} vs "
            f"{len(val_set.classes)}): {train_set.json_path} / {val_set.json_path}; "
            "pin them with --set data.classes=(...)")
    train_loader = build_dataloader(train_set, cfg.data.batch_size, cfg.data.workers, shuffle=True,
                                    seed=cfg.train.seed, drop_last=False)
    val_loader = build_dataloader(val_set, cfg.data.batch_size, cfg.data.workers, shuffle=False,
                                  seed=cfg.train.seed)
    model = build_detector(cfg.model)
    if cfg.distill.teacher_config:
        from ..distill import Distiller, build_teacher

        teacher = build_teacher(cfg.distill.teacher_config, cfg.distill.teacher_checkpoint, num_classes)
        model = Distiller(model, teacher, need_same_classes=cfg.distill.kd_weight > 0)
        d = cfg.distill
        info(f"distilling from {d.teacher_config} ({d.teacher_checkpoint}): LD w={d.ld_weight} T={d.ld_temperature}, "
             f"VLR w={d.vlr_weight}, KD w={d.kd_weight} T={d.kd_temperature}, reduction={d.reduction}")
    model = model.to(device)
    criterion = build_criterion(cfg)
    return train_set, val_set, train_loader, val_loader, model, criterion


def _checkpoints(work_dir: Path) -> list[Path]:
    def epoch_of(p: Path) -> int:
        m = re.match(r"epoch_(\d+)\.pth$", p.name)
        return int(m.group(1)) if m else -1
    return sorted((p for p in work_dir.glob("epoch_*.pth") if epoch_of(p) >= 0), key=epoch_of)


def find_resume_checkpoint(work_dir: Path) -> Path | None:
    """``latest.pth`` or the newest ``epoch_N.pth`` in ``work_dir``."""
    latest = work_dir / "latest.pth"
    if latest.is_file():
        return latest
    ck = _checkpoints(work_dir)
    return ck[-1] if ck else None


def fit(cfg: Config, work_dir: str | os.PathLike, resume: str | os.PathLike | bool | None = None,
        model_factory: Callable | None = None) -> dict[str, Any]:
    """Train ``cfg`` in ``work_dir``; evaluate every ``train.eval_interval`` epochs and at the end.

    ``model_factory(cfg, model, device) -> nn.Module`` may wrap the detector (e.g. the
    Distiller adds a teacher). Returns ``{"metrics", "checkpoint", "train_time", "work_dir"}``.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.train.seed)
    device = select_device(cfg.train.device)
    train_set, val_set, train_loader, val_loader, model, criterion = build_training(cfg, device)
    if model_factory is not None:
        model = model_factory(cfg, model, device)
    total_batch = cfg.data.batch_size  # × world size once distributed
    lr = scaled_lr(cfg.train, total_batch)
    rule = "pinned by train.lr" if cfg.train.lr is not None else (
        f"{cfg.train.base_lr} × {total_batch} / {cfg.train.base_batch}")
    info(f"[bold]{cfg.name}[/bold]: {len(train_set)} train / {len(val_set)} val images, "
         f"{cfg.model.num_classes} classes, device {device}, lr {lr:.5g} ({rule})")
    optimizer = build_optimizer(model, cfg.train, lr)
    schedule = WarmupStepSchedule(optimizer, lr, cfg.train)
    state = TrainState()
    save_config(cfg, work_dir)
    logger = MetricsLogger(work_dir)

    if resume:
        path = find_resume_checkpoint(work_dir) if resume is True else Path(resume)
        if path is None:
            raise CheckpointError(f"--resume: no checkpoint in {work_dir}; start without --resume")
        ck = load_checkpoint(path)
        load_model_weights(unwrap(model), ck, strict=True, source=str(path))
        if "optimizer" in ck:
            optimizer.load_state_dict(ck["optimizer"])
        if "scheduler" in ck:
            schedule.load_state_dict(ck["scheduler"])
        state.epoch = int(ck.get("meta", {}).get("epoch", 0))
        state.iter = int(ck.get("meta", {}).get("iter", 0))
        info(f"resumed from {path} at epoch {state.epoch}, iteration {state.iter}")

    meta_base = {"classes": list(train_set.classes), "config_name": cfg.name}
    metrics: dict[str, float] = {}
    t_start = time.perf_counter()
    ckpt_path = None
    cfg_dict = config_to_dict(cfg)
    while state.epoch < cfg.train.epochs:
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(state.epoch)
        means = train_one_epoch(model, criterion, train_loader, optimizer, schedule, state, cfg, device, logger)
        state.epoch += 1
        ckpt_path = work_dir / f"epoch_{state.epoch}.pth"
        save_checkpoint(ckpt_path, model, cfg_dict, {**meta_base, "epoch": state.epoch, "iter": state.iter},
                        optimizer, schedule)
        save_checkpoint(work_dir / "latest.pth", model, cfg_dict,
                        {**meta_base, "epoch": state.epoch, "iter": state.iter}, optimizer, schedule)
        for old in _checkpoints(work_dir)[: -max(cfg.train.keep_checkpoints, 1)]:
            old.unlink(missing_ok=True)
        loss_txt = ", ".join(f"{k}={v:.4f}" for k, v in means.items())
        info(f"epoch {state.epoch}/{cfg.train.epochs}: {loss_txt}")
        last = state.epoch == cfg.train.epochs
        ei = cfg.train.eval_interval
        if last or (ei > 0 and state.epoch % ei == 0):
            metrics, _ = evaluate(model, val_loader, cfg, val_set, device)
            rec = {"mode": "val", "epoch": state.epoch, "iter": state.iter, **metrics}
            logger.log(rec)
            state.history.append(rec)
            info(f"epoch {state.epoch} val: AP {100 * metrics['AP']:.1f}  AP50 {100 * metrics['AP50']:.1f}  "
                 f"AP75 {100 * metrics['AP75']:.1f}  AR100 {100 * metrics['AR100']:.1f}")
    train_time = time.perf_counter() - t_start
    logger.close()
    if metrics:
        print_table(metrics_table([(cfg.name, metrics)], title=f"{cfg.name} (val, COCO bbox)"))
    return {"metrics": metrics, "checkpoint": ckpt_path, "train_time": train_time, "work_dir": work_dir}
