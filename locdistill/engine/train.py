"""The plain training loop: ``fit`` → ``train_one_epoch`` / ``evaluate``.

One loop serves a single process and ``torchrun`` (DDP): :mod:`locdistill.engine.dist`
joins the process group, rank 0 alone writes files, and the loss values shown are
means over the ranks. The pieces around the loop live next to it:

- :mod:`~locdistill.engine.device`: device choice, seeding, determinism, mixed precision
  (:class:`~locdistill.engine.device.Precision`: bf16, or fp16 with a GradScaler on CUDA);
- :mod:`~locdistill.engine.resume`: exact resume (weights, optimizer, schedule, scaler,
  sampler position, RNG states, also in the middle of an epoch), the epoch checkpoints and
  ``latest.pth``, and the Ctrl-C handling
  (:class:`~locdistill.engine.resume.GracefulInterrupt`);
- :mod:`~locdistill.engine.logging`: :class:`~locdistill.engine.logging.StepMeter`, the loop's
  loss windows, non-finite checks, skipped steps and ``metrics.jsonl`` records;
- :mod:`~locdistill.engine.ema`: :class:`~locdistill.engine.ema.ModelEMA` (``train.ema``), the
  moving average of the weights updated after each optimizer step and evaluated instead of them.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..config import RECIPES, Config, TrainConfig, recipe_values, save_config
from ..data.loader import build_dataloader, build_dataset, set_epoch
from ..distill import Distiller, build_criterion, build_teacher
from ..errors import CheckpointError, ConfigError, TrainingError
from ..models.build import build_detector
from . import dist
from .device import Precision, seed_everything, set_determinism, targets_to
from .ema import ModelEMA
from .evaluate import evaluate, unwrap
from .logging import MetricsLogger, StepMeter, format_ap, info, make_progress, metrics_table, print_table
from .resume import (Checkpointer, GracefulInterrupt, TrainState, find_resume_checkpoint, remove_orphaned_temps,
                     resumed_lr)
from .schedule import WarmupStepSchedule, build_optimizer, scaled_lr


@dataclass
class TrainContext:
    """What one epoch of training works with besides the data (``fit`` builds it once per run).

    ``precision`` defaults to the config's (``train.amp``); ``interrupt`` to a
    :class:`GracefulInterrupt` whose SIGINT handler is not installed; ``logger=None``
    writes no ``metrics.jsonl`` records; ``ema`` (``train.ema``), when given, is updated
    after every optimizer step that was taken.
    """

    model: nn.Module
    criterion: Callable
    optimizer: torch.optim.Optimizer
    schedule: WarmupStepSchedule
    cfg: Config
    device: torch.device
    state: TrainState = field(default_factory=TrainState)
    logger: MetricsLogger | None = None
    precision: Precision | None = None
    interrupt: GracefulInterrupt = field(default_factory=GracefulInterrupt)
    ema: ModelEMA | None = None

    def __post_init__(self):
        if self.precision is None:
            self.precision = Precision(self.cfg.train, self.device)


# ----------------------------------------------------------------------------- one epoch


def train_one_epoch(ctx: TrainContext, loader) -> dict[str, float]:
    """Train from batch ``ctx.state.epoch_iter`` of epoch ``ctx.state.epoch`` to its end; returns
    the mean of each loss term (averaged over ranks) over the steps run here.

    ``loader`` yields ``(images [B,3,H,W], targets)``; its sampler must already be set to
    this epoch and start position (:func:`locdistill.data.loader.set_epoch`). Loss values
    reach the host only at the intervals of :class:`~locdistill.engine.logging.StepMeter`
    (never per iteration, except one flag per step with ``train.skip_nonfinite``);
    ``metrics.jsonl`` gets a record at each multiple of ``train.log_interval`` and at the
    end of the epoch. A Ctrl-C takes effect between two steps.
    """
    ctx.model.train()
    tcfg, state = ctx.cfg.train, ctx.state
    n_iters = len(loader) + state.epoch_iter  # batches of the whole epoch for this rank
    if tcfg.max_iters_per_epoch:
        n_iters = min(n_iters, tcfg.max_iters_per_epoch)
    meter = StepMeter(tcfg, state, ctx.logger, ctx.device)
    with make_progress() as bar:
        task = bar.add_task(f"epoch {state.epoch + 1}/{tcfg.epochs}", total=n_iters, completed=state.epoch_iter,
                            info="", epoch=state.epoch, epochs=tcfg.epochs)
        meter.wait_for_data()
        for i, (images, targets) in enumerate(loader, start=state.epoch_iter):
            if i >= n_iters:
                break
            meter.data_arrived()
            with ctx.interrupt.deferred():
                lr = ctx.schedule.step(state.epoch, state.iter)
                losses = _forward_backward(ctx, images, targets)
                if meter.update(losses):  # False: non-finite, skipped (train.skip_nonfinite)
                    if _optimizer_step(ctx) and ctx.ema is not None:
                        ctx.ema.update(unwrap(ctx.model))
                else:
                    ctx.optimizer.zero_grad(set_to_none=True)
                state.iter += 1
                state.epoch_iter = i + 1
                meter.step_done(lr, last=i + 1 == n_iters)
            bar.update(task, advance=1, info=meter.text)
            meter.wait_for_data()
    return meter.epoch_means()


def _split_outputs(out: Any) -> tuple[dict, dict | None]:
    """A detector returns its outputs; a Distiller returns (student_outputs, teacher_outputs)."""
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


def _forward_backward(ctx: TrainContext, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
    """Batch to the device, forward under autocast (the teacher of a Distiller too), float32 losses,
    backward of their (scaled) sum. Returns the detached loss terms and their sum as ``"loss"``."""
    memory_format = torch.channels_last if ctx.cfg.train.channels_last else torch.contiguous_format
    images = images.to(ctx.device, non_blocking=True, memory_format=memory_format)
    targets = targets_to(targets, ctx.device)
    try:
        with ctx.precision.autocast():
            outputs, teacher_outputs = _split_outputs(ctx.model(images))
        losses = ctx.criterion(outputs, targets, teacher_outputs=teacher_outputs,
                               image_sizes=[t["pad_shape"] for t in targets])  # float32 scalars
        total = sum(losses.values())
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.precision.scaler.scale(total).backward()
    except torch.OutOfMemoryError:
        raise TrainingError(_oom_message(images, ctx.cfg, ctx.state)) from None
    detached = {k: v.detach() for k, v in losses.items()}
    detached["loss"] = total.detach()
    return detached


def _optimizer_step(ctx: TrainContext) -> bool:
    """Gradient clipping (``train.grad_clip``, on unscaled gradients), then the (scaler's) step.

    Returns whether the weights were stepped: False when the fp16 GradScaler skipped the step
    for inf/NaN gradients (it then lowers its scale); known only with an EMA to update, to spare
    the host sync otherwise (True then)."""
    scaler, tcfg = ctx.precision.scaler, ctx.cfg.train
    if tcfg.grad_clip:
        scaler.unscale_(ctx.optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in ctx.model.parameters() if p.requires_grad], tcfg.grad_clip)
    check = ctx.ema is not None and scaler.is_enabled()
    scale = scaler.get_scale() if check else 0.0
    scaler.step(ctx.optimizer)
    scaler.update()
    return not check or scaler.get_scale() >= scale


def _oom_message(images: torch.Tensor, cfg: Config, state: TrainState) -> str:
    b, _, h, w = images.shape
    saved, then = state.checkpoint_note()
    amp = "" if cfg.train.amp else ", train with --amp (halves activation memory)"
    return (f"CUDA out of memory with {b} image(s) per GPU of {h}x{w} pixels (padded batch); {saved}. Lower "
            f"data.batch_size (--set data.batch_size={max(1, b // 2)}) and scale the learning rate with it "
            f"(automatic unless train.lr pins it), or lower data.img_scale (now {tuple(cfg.data.img_scale)}){amp}; "
            f"then {then}, adding the fix.")


# ----------------------------------------------------------------------------- building


def build_training(cfg: Config, device: torch.device):
    """Datasets, loaders, model and criterion for ``cfg`` (num_classes follows the data).

    The loaders shard by rank when a process group is initialised (train shards padded
    to equal length, val shards not).
    """
    with dist.main_process_first():  # rank 0 generates/caches dataset files before the others read them
        train_set = build_dataset(cfg.data, "train")
        val_set = build_dataset(cfg.data, "val")
    num_classes = len(train_set.classes)
    if cfg.model.num_classes != num_classes:
        info(f"model.num_classes: {cfg.model.num_classes} → {num_classes} (from {train_set.json_path})")
        recipe = cfg.distill.recipe(cfg.model.num_classes)
        if cfg.distill.kd_weight and recipe in RECIPES:  # the recipe's class-KD weight is per 80 classes
            kd_weight = recipe_values(recipe, num_classes)["kd_weight"]
            info(f"distill.kd_weight: {cfg.distill.kd_weight:g} → {kd_weight:g} (recipe {recipe} for "
                 f"{num_classes} classes)")
            cfg.distill.kd_weight = kd_weight
        cfg.model.num_classes = num_classes
    if list(val_set.classes) != list(train_set.classes):
        raise ConfigError(
            f"the train and val JSONs name different classes ({len(train_set.classes)} vs "
            f"{len(val_set.classes)}): {train_set.json_path} / {val_set.json_path}; "
            "pin them with --set data.classes=(...)")
    pin = device.type == "cuda"
    train_loader = build_dataloader(train_set, cfg.data.batch_size, cfg.data.workers, shuffle=True,
                                    seed=cfg.train.seed, drop_last=False, distributed=True,
                                    size_divisor=cfg.data.size_divisor, pin_memory=pin)
    val_loader = build_dataloader(val_set, cfg.data.batch_size, cfg.data.workers, shuffle=False,
                                  seed=cfg.train.seed, distributed=True, size_divisor=cfg.data.size_divisor,
                                  pin_memory=pin)
    model = build_detector(cfg.model)
    if cfg.distill.teacher_config:
        teacher = build_teacher(cfg.distill.teacher_config, cfg.distill.teacher_checkpoint, num_classes)
        model = Distiller.from_config(model, teacher, cfg.distill)  # + cross-head when its weights are set
        d = cfg.distill
        info(f"distilling from {d.teacher_config} ({d.teacher_checkpoint}), recipe "
             f"{d.recipe(cfg.model.num_classes)}: LD w={d.ld_weight} T={d.ld_temperature}, "
             f"VLR w={d.vlr_weight}, KD w={d.kd_weight} T={d.kd_temperature}, reduction={d.reduction}"
             + (f"; cross-head after tower conv {d.crosshead_layer}: LD w={d.crosshead_ld_weight} "
                f"T={d.crosshead_ld_temperature}, KD w={d.crosshead_kd_weight}, box w={d.crosshead_box_weight}"
                if d.crosshead else "")
             + (f"; feature imitation {d.imitation_mode} w={d.imitation_weight}" if d.imitation else ""))
        if not model.compatibility.startswith("same layout"):  # a heterogeneous pair: what is mapped
            info(model.compatibility)
    model = model.to(device)
    criterion = build_criterion(cfg)
    return train_set, val_set, train_loader, val_loader, model, criterion


# ----------------------------------------------------------------------------- fit


def _check_train_config(tcfg: TrainConfig) -> None:
    """Values with which a run would do nothing or fail late; checked before anything is built."""
    if tcfg.epochs < 1:
        raise ConfigError(f"train.epochs={tcfg.epochs}: a run trains at least one epoch; use --set train.epochs=N "
                          "with N >= 1 (to evaluate a checkpoint without training: locdistill test CONFIG CKPT)")
    if tcfg.log_interval < 1:
        raise ConfigError(f"train.log_interval={tcfg.log_interval}: the iterations between two metrics.jsonl "
                          "records must be at least 1; use e.g. --set train.log_interval=50")


def fit(cfg: Config, work_dir: str | os.PathLike, resume: str | os.PathLike | bool | None = None,
        model_factory: Callable | None = None) -> dict[str, Any]:
    """Train ``cfg`` in ``work_dir``; evaluate every ``train.eval_interval`` epochs and at the end.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process calls this: it joins the process
    group (NCCL on CUDA, gloo on CPU), trains with DDP on its share of each batch, and
    rank 0 alone writes the work dir. ``resume=True`` continues from the latest checkpoint
    in ``work_dir``, a path from that file. ``model_factory(cfg, model, device) -> nn.Module``
    may wrap the detector (e.g. the Distiller adds a teacher). With ``train.ema`` the
    evaluations score the EMA of the detector's weights (:class:`~locdistill.engine.ema.ModelEMA`),
    which the checkpoints carry as ``"ema"`` next to the raw ``"model"``. Returns
    ``{"metrics", "checkpoint", "train_time", "work_dir"}`` (the same on every rank).
    The work dir is created only once the data and the model are built (a failed start
    leaves nothing behind).
    """
    _check_train_config(cfg.train)
    own_group = dist.env_world_size() > 1 and not (torch.distributed.is_available()
                                                   and torch.distributed.is_initialized())
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    device = dist.init_distributed(cfg.train.device)
    try:
        set_determinism(cfg.train.deterministic)
        return _fit(cfg, Path(work_dir), device, resume, model_factory)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        if own_group:
            dist.cleanup_distributed()


def _fit(cfg: Config, work_dir: Path, device: torch.device, resume, model_factory) -> dict[str, Any]:
    main = dist.is_main_process()
    seed_everything(cfg.train.seed)
    train_set, val_set, train_loader, val_loader, model, criterion = build_training(cfg, device)
    if model_factory is not None:
        model = model_factory(cfg, model, device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    precision = Precision(cfg.train, device)
    world = dist.get_world_size()
    total_batch = cfg.data.batch_size * world
    lr = scaled_lr(cfg.train, total_batch)
    rule = "pinned by train.lr" if cfg.train.lr is not None else (
        f"{cfg.train.base_lr} × {total_batch} / {cfg.train.base_batch}")
    lr_text = f"lr {lr:.5g} ({rule})"
    optimizer = build_optimizer(model, cfg.train, lr)
    schedule = WarmupStepSchedule(optimizer, lr, cfg.train)
    state = TrainState()
    meta_base = {"classes": list(train_set.classes), "config_name": cfg.name}
    # the EMA of the detector (the student when distilling), on its device; a resume restores it
    ema = ModelEMA(unwrap(model), cfg.train.ema_decay, cfg.train.ema_tau) if cfg.train.ema else None
    run = Checkpointer(cfg, model, optimizer, schedule, precision, state, meta_base, ema)

    path = None  # the checkpoint resumed from
    if resume:
        path = find_resume_checkpoint(work_dir) if resume is True else Path(resume)
        if path is None:
            raise CheckpointError(f"--resume: no checkpoint in {work_dir}; start without --resume")
        run.restore(path)
        lr_text = resumed_lr(cfg.train, schedule, lr) or lr_text
    procs = f", {world} processes × {cfg.data.batch_size} images" if world > 1 else ""
    info(f"[bold]{cfg.name}[/bold]: {len(train_set)} train / {len(val_set)} val images, "
         f"{cfg.model.num_classes} classes, device {device}{procs}, {lr_text}, {precision.name}")
    if path is not None:
        where = f", batch {state.epoch_iter} of epoch {state.epoch + 1}" if state.epoch_iter else ""
        info(f"resumed from {path} at epoch {state.epoch}, iteration {state.iter}{where}")
        if state.epoch_iter and state.epoch >= cfg.train.epochs:
            raise ConfigError(f"{path} is in the middle of epoch {state.epoch + 1}, past train.epochs="
                              f"{cfg.train.epochs}; finish that epoch with --set train.epochs={state.epoch + 1}")
    model = dist.wrap_ddp(model, device)  # after loading: every rank starts from the same weights
    run.model = model

    if main:
        work_dir.mkdir(parents=True, exist_ok=True)
        removed = remove_orphaned_temps(work_dir)
        if removed:
            info(f"removed {removed} unfinished checkpoint file(s) (.*.pth.*.tmp) that a killed run left in {work_dir}")
    logger = MetricsLogger(work_dir if main else None, tensorboard=cfg.train.tensorboard,
                           purge_step=state.iter + 1 if path is not None else None)
    if main:
        save_config(cfg, work_dir)
        if path is not None:
            logger.truncate_after(state.iter, state.epoch)

    def evaluate_epoch() -> dict[str, float]:
        metrics, _ = evaluate(model if ema is None else ema.module, val_loader, cfg, val_set, device)
        rec = {"mode": "val", "epoch": state.epoch, "iter": state.iter, **metrics}
        logger.log(rec)
        state.history.append(rec)
        shown = "  ".join(f"{k} {format_ap(metrics[k])}" for k in ("AP", "AP50", "AP75", "AR100"))
        weights = "" if ema is None else f" (EMA of the weights, {ema.updates} updates)"
        info(f"epoch {state.epoch} val{weights}: {shown}")  # n/a: undefined (-1), e.g. no ground truth of that kind
        return metrics

    metrics: dict[str, float] = {}
    ckpt_path = path
    trained = state.epoch >= cfg.train.epochs  # a resumed run that has nothing left to train
    final = next((r for r in state.history if r.get("mode") == "val" and r.get("epoch") == state.epoch), None)
    if trained and final is not None:
        metrics = {k: v for k, v in final.items() if k not in ("mode", "epoch", "iter")}
        info(f"this run already finished: {path} holds epoch {state.epoch} (train.epochs={cfg.train.epochs}) and "
             f"its evaluation, so there is nothing to do. To train longer, resume with --set train.epochs=N, "
             f"N > {state.epoch}")
    t_start = time.perf_counter()
    try:
        with GracefulInterrupt() as interrupt:
            ctx = TrainContext(model, criterion, optimizer, schedule, cfg, device, state, logger, precision, interrupt,
                               ema)
            try:
                if trained and final is None:  # e.g. a Ctrl-C during the final evaluation
                    info(f"epoch {state.epoch} was trained but not evaluated: evaluating it now")
                    metrics = evaluate_epoch()
                    with interrupt.deferred():
                        ckpt_path = run.save_epoch(work_dir, keep_rng=True)
                while state.epoch < cfg.train.epochs:
                    set_epoch(train_loader, state.epoch, start_batch=state.epoch_iter)
                    means = train_one_epoch(ctx, train_loader)
                    with interrupt.deferred():
                        state.epoch += 1
                        state.epoch_iter = 0
                        ckpt_path = run.save_epoch(work_dir)
                    loss_txt = ", ".join(f"{k}={v:.4f}" for k, v in means.items())
                    skipped = f" ({state.skipped} non-finite steps skipped so far)" if state.skipped else ""
                    info(f"epoch {state.epoch}/{cfg.train.epochs}: {loss_txt}{skipped}")
                    last = state.epoch == cfg.train.epochs
                    ei = cfg.train.eval_interval
                    if last or (ei > 0 and state.epoch % ei == 0):
                        metrics = evaluate_epoch()
                    if last:  # rewritten with its evaluation in the history: a resume sees the run is complete
                        with interrupt.deferred():
                            run.save_epoch(work_dir, keep_rng=True)
            except KeyboardInterrupt:
                if main:
                    saved = run.save(work_dir / "latest.pth", interrupted=True)
                    where = (f"batch {state.epoch_iter} of epoch {state.epoch + 1}" if state.epoch_iter
                             else f"the end of epoch {state.epoch}")
                    info(f"interrupted at iteration {state.iter} ({where}); saved {saved}. Continue with the same "
                         f"command plus --resume (--work-dir {work_dir})")
                raise
    finally:
        logger.close()
    train_time = time.perf_counter() - t_start
    if state.skipped:
        info(f"{state.skipped} step(s) with a non-finite loss were skipped (train.skip_nonfinite)")
    if metrics:
        if "mAP" in metrics:  # VOC protocol (evaluate's default on VOC data)
            table = metrics_table([(cfg.name, metrics)], title=f"{cfg.name} (val, VOC)",
                                  columns=("mAP", "AP", "AP50", "AP75", "AR100"))
        else:
            table = metrics_table([(cfg.name, metrics)], title=f"{cfg.name} (val, COCO bbox)")
        print_table(table)
    return {"metrics": metrics, "checkpoint": ckpt_path, "train_time": train_time, "work_dir": work_dir}
