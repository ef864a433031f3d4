"""The plain training loop: ``fit`` → ``train_one_epoch`` / ``evaluate``.

One loop serves a single process and ``torchrun`` (DDP): :mod:`locdistill.engine.dist`
joins the process group, rank 0 alone writes files, and the loss values shown are
means over the ranks. Mixed precision (bf16, or fp16 with a GradScaler on CUDA),
exact resume (weights, optimizer, schedule, scaler, sampler position, RNG states,
also in the middle of an epoch) and Ctrl-C checkpoints live here too.
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..checkpoint import DiskFullError, load_checkpoint, load_model_weights, save_checkpoint
from ..config import Config, TrainConfig, config_to_dict, save_config
from ..errors import CheckpointError, ConfigError, TrainingError
from . import dist
from .evaluate import evaluate, unwrap
from .logging import MetricsLogger, format_ap, info, make_progress, metrics_table, print_table, warn
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


# ----------------------------------------------------------------------------- run state


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


def set_determinism(on: bool) -> None:
    """``train.deterministic``: deterministic kernels (warn where none exists), no cuDNN autotuning."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(on, warn_only=True)


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


def _oom_message(images: torch.Tensor, cfg: Config, state: TrainState) -> str:
    b, _, h, w = images.shape
    saved, then = state.checkpoint_note()
    amp = "" if cfg.train.amp else ", train with --amp (halves activation memory)"
    return (f"CUDA out of memory with {b} image(s) per GPU of {h}x{w} pixels (padded batch); {saved}. Lower "
            f"data.batch_size (--set data.batch_size={max(1, b // 2)}) and scale the learning rate with it "
            f"(automatic unless train.lr pins it), or lower data.img_scale (now {tuple(cfg.data.img_scale)}){amp}; "
            f"then {then}, adding the fix.")


def _nonfinite_message(terms: list[str], iteration: int, state: TrainState) -> str:
    saved, then = state.checkpoint_note()
    return (f"non-finite loss ({', '.join(terms)}) at iteration {iteration} (epoch {state.epoch + 1}); {saved}. "
            "Lower the learning rate (--set train.lr=...), add gradient clipping (--set train.grad_clip=35.0), "
            "check the annotations for degenerate boxes, or skip such steps (--set train.skip_nonfinite=True); "
            f"then {then}, adding the fix.")


# ----------------------------------------------------------------------------- one epoch


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
    precision: Precision | None = None,
    interrupt: GracefulInterrupt | None = None,
) -> dict[str, float]:
    """Train from batch ``state.epoch_iter`` of epoch ``state.epoch`` to its end; returns the
    mean of each loss term (averaged over ranks) over the steps run here.

    ``loader`` yields ``(images [B,3,H,W], targets)``; its sampler must already be set to
    this epoch and start position (:func:`locdistill.data.loader.set_epoch`). Loss values
    reach the host only every ``min(train.log_interval, 10)`` global iterations, at each
    multiple of ``train.log_interval`` and at the end of the epoch (one all-reduce then
    under DDP), never per iteration — except with ``train.skip_nonfinite``, which reads
    one flag per step to decide whether to apply it. ``metrics.jsonl`` gets a record at each
    multiple of ``train.log_interval`` and at the end of the epoch: the mean losses of the
    steps since the previous record.
    """
    model.train()
    tcfg = cfg.train
    precision = precision or Precision(tcfg, device)
    interrupt = interrupt or GracefulInterrupt()
    n_iters = len(loader) + state.epoch_iter  # batches of the whole epoch for this rank
    if tcfg.max_iters_per_epoch:
        n_iters = min(n_iters, tcfg.max_iters_per_epoch)
    memory_format = torch.channels_last if tcfg.channels_last else torch.contiguous_format
    terms: list[str] = []  # loss names, fixed at the first step
    sums: dict[str, torch.Tensor] = {}
    window: dict[str, torch.Tensor] = {}
    window_n = 0  # applied steps in the window
    since_log = _SinceLog()
    n_applied = 0
    first_bad = None  # [T] first iteration at which each term was non-finite (no_bad: never), on the device
    no_bad = 2**62
    show_every = min(tcfg.log_interval, 10)
    t0 = time.perf_counter()
    data_time = 0.0
    n_run = 0
    info_text = ""
    lr = schedule.last_lr
    with make_progress() as bar:
        task = bar.add_task(f"epoch {state.epoch + 1}/{tcfg.epochs}", total=n_iters,
                            completed=state.epoch_iter, info="", epoch=state.epoch, epochs=tcfg.epochs)
        t_data = time.perf_counter()
        for i, (images, targets) in enumerate(loader, start=state.epoch_iter):
            if i >= n_iters:
                break
            data_time += time.perf_counter() - t_data
            with interrupt.deferred():
                lr = schedule.step(state.epoch, state.iter)
                images = images.to(device, non_blocking=True, memory_format=memory_format)
                targets = targets_to(targets, device)
                try:
                    with precision.autocast():  # the teacher of a Distiller runs under it too
                        outputs, teacher_outputs = _split_outputs(model(images))
                    losses = criterion(outputs, targets, teacher_outputs=teacher_outputs,
                                       image_sizes=[t["pad_shape"] for t in targets])  # float32 scalars
                    total = sum(losses.values())
                    optimizer.zero_grad(set_to_none=True)
                    precision.scaler.scale(total).backward()
                except torch.OutOfMemoryError:
                    raise TrainingError(_oom_message(images, cfg, state)) from None
                detached = {k: v.detach() for k, v in losses.items()}
                detached["loss"] = total.detach()
                if not terms:
                    terms = list(detached)
                    first_bad = torch.full((len(terms),), no_bad, dtype=torch.int64, device=device)
                bad = ~torch.isfinite(torch.stack([detached[k].float() for k in terms]))  # [T]
                skip = False
                if tcfg.skip_nonfinite:  # one host read per step; every rank takes the same decision
                    skip = bool(dist.all_reduce_max(bad.any().to(torch.int32)).item())
                if skip:
                    optimizer.zero_grad(set_to_none=True)
                    state.skipped += 1
                else:
                    first_bad = torch.where(bad & (first_bad == no_bad), state.iter + 1, first_bad)
                    if tcfg.grad_clip:
                        precision.scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                       tcfg.grad_clip)
                    precision.scaler.step(optimizer)
                    precision.scaler.update()
                    for k, v in detached.items():
                        sums[k] = sums.get(k, 0) + v
                        window[k] = window.get(k, 0) + v
                    window_n += 1
                    n_applied += 1
                state.iter += 1
                state.epoch_iter = i + 1
                n_run += 1
                log_now = state.iter % tcfg.log_interval == 0 or i + 1 == n_iters
                if log_now or state.iter % show_every == 0:  # logged before a Ctrl-C takes effect
                    info_text = _check_window(window, window_n, first_bad, terms, state, lr, since_log,
                                              logger if log_now else None, tcfg, data_time / n_run,
                                              (time.perf_counter() - t0) / n_run) or info_text
                    window, window_n = {}, 0
            bar.update(task, advance=1, info=info_text)
            t_data = time.perf_counter()
    means = dist.all_reduce_mean({k: v / max(n_applied, 1) for k, v in sums.items()}) if sums else {}
    return {k: float(v) for k, v in means.items()}


@dataclass
class _SinceLog:
    """Loss sums (host floats) and applied steps since the last ``metrics.jsonl`` record."""
    sums: dict = field(default_factory=dict)
    n: int = 0


def _check_window(window: dict, window_n: int, first_bad, terms: list[str], state: TrainState, lr: float,
                  since_log: _SinceLog, logger: MetricsLogger | None, tcfg: TrainConfig, data_time: float,
                  iter_time: float) -> str:
    """Read the window's mean losses (means over ranks), stop on a non-finite one; with a ``logger``,
    log the means since the last record. Returns the progress-bar text. Every rank calls it at the
    same iterations (it holds collectives)."""
    if first_bad is not None:
        first = dist.all_reduce_min(first_bad)
        if int(first.min()) < 2**62 and not tcfg.skip_nonfinite:
            it = int(first.min())
            bad_terms = [k for k, f in zip(terms, first.tolist()) if f == it]
            bad_terms = [k for k in bad_terms if k != "loss"] or bad_terms
            err = TrainingError(_nonfinite_message(bad_terms, it, state))
            err.quiet = not dist.is_main_process()  # every rank stops; one prints
            raise err
    record: dict[str, Any] = {"mode": "train", "epoch": state.epoch + 1, "iter": state.iter, "lr": lr}
    text = ""
    if window_n:
        vals = {k: float(v) / window_n for k, v in dist.all_reduce_mean(window).items()}
        vals = {k: vals[k] for k in terms}  # the criterion's order, total first in the log
        text = " ".join(f"{k.replace('loss_', '')}={v:.3f}" for k, v in vals.items() if k != "loss")
        text = f"loss={vals['loss']:.3f} {text} lr={lr:.2e}"
        for k, v in vals.items():
            since_log.sums[k] = since_log.sums.get(k, 0.0) + v * window_n
        since_log.n += window_n
    if tcfg.skip_nonfinite and state.skipped:
        text += f" skipped={state.skipped}"
    if logger is not None:
        if since_log.n:
            means = {k: v / since_log.n for k, v in since_log.sums.items()}
            record.update(loss=means.pop("loss"), **means)
        if tcfg.skip_nonfinite:
            record["skipped"] = state.skipped
        logger.log({**record, "data_time": data_time, "iter_time": iter_time})
        since_log.sums, since_log.n = {}, 0
    return text


# ----------------------------------------------------------------------------- building


def build_training(cfg: Config, device: torch.device):
    """Datasets, loaders, model and criterion for ``cfg`` (num_classes follows the data).

    The loaders shard by rank when a process group is initialised (train shards padded
    to equal length, val shards not).
    """
    from ..data.loader import build_dataloader, build_dataset
    from ..models.build import build_criterion, build_detector

    with dist.main_process_first():  # rank 0 generates/caches dataset files before the others read them
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
    pin = device.type == "cuda"
    train_loader = build_dataloader(train_set, cfg.data.batch_size, cfg.data.workers, shuffle=True,
                                    seed=cfg.train.seed, drop_last=False, distributed=True,
                                    size_divisor=cfg.data.size_divisor, pin_memory=pin)
    val_loader = build_dataloader(val_set, cfg.data.batch_size, cfg.data.workers, shuffle=False,
                                  seed=cfg.train.seed, distributed=True, size_divisor=cfg.data.size_divisor,
                                  pin_memory=pin)
    model = build_detector(cfg.model)
    if cfg.distill.teacher_config:
        from ..distill import Distiller, build_teacher

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
    model = model.to(device)
    criterion = build_criterion(cfg)
    return train_set, val_set, train_loader, val_loader, model, criterion


# ----------------------------------------------------------------------------- checkpoints


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


def _link_latest(src: Path, latest: Path) -> None:
    """Make ``latest`` the same file as ``src`` (a hard link, else a copy), atomically."""
    tmp = latest.with_name(f".{latest.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # file systems without hard links
        shutil.copyfile(src, tmp)
    os.replace(tmp, latest)


class _Run:
    """What a checkpoint of a run holds besides the weights (DESIGN §8)."""

    def __init__(self, cfg: Config, model, optimizer, schedule, precision: Precision, state: TrainState,
                 meta_base: dict):
        self.cfg, self.model, self.optimizer, self.schedule = cfg, model, optimizer, schedule
        self.precision, self.state, self.meta_base = precision, state, meta_base
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
    may wrap the detector (e.g. the Distiller adds a teacher). Returns
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


def _resumed_lr(tcfg: TrainConfig, schedule: WarmupStepSchedule, lr: float) -> str | None:
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


_ORPHANED_TMP = re.compile(r"\.(epoch_\d+|latest)\.pth\.\w+\.tmp")  # atomic_torch_save / _link_latest temp files


def _remove_orphaned_temps(work_dir: Path) -> int:
    """Remove the temp files of checkpoint writes that a killed run never finished; returns how many."""
    orphans = [p for p in work_dir.glob(".*.tmp") if _ORPHANED_TMP.fullmatch(p.name) and p.is_file()]
    for p in orphans:
        p.unlink(missing_ok=True)
    return len(orphans)


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
    run = _Run(cfg, model, optimizer, schedule, precision, state, meta_base)

    path = None  # the checkpoint resumed from
    if resume:
        path = find_resume_checkpoint(work_dir) if resume is True else Path(resume)
        if path is None:
            raise CheckpointError(f"--resume: no checkpoint in {work_dir}; start without --resume")
        run.restore(path)
        lr_text = _resumed_lr(cfg.train, schedule, lr) or lr_text
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
        removed = _remove_orphaned_temps(work_dir)
        if removed:
            info(f"removed {removed} unfinished checkpoint file(s) (.*.pth.*.tmp) that a killed run left in {work_dir}")
    logger = MetricsLogger(work_dir if main else None, tensorboard=cfg.train.tensorboard,
                           purge_step=state.iter + 1 if path is not None else None)
    if main:
        save_config(cfg, work_dir)
        if path is not None:
            logger.truncate_after(state.iter, state.epoch)

    def save_epoch(keep_rng: bool = False) -> Path:
        """Checkpoint of the finished epoch ``state.epoch`` → epoch_N.pth and latest.pth (all ranks call it)."""
        ckpt = work_dir / f"epoch_{state.epoch}.pth"
        if main:
            run.save(ckpt, keep_rng=keep_rng)
            _link_latest(ckpt, work_dir / "latest.pth")
            for old in _checkpoints(work_dir)[: -max(cfg.train.keep_checkpoints, 1)]:
                old.unlink(missing_ok=True)
        state.checkpoint = (ckpt, state.position())
        return ckpt

    def evaluate_epoch() -> dict[str, float]:
        metrics, _ = evaluate(model, val_loader, cfg, val_set, device)
        rec = {"mode": "val", "epoch": state.epoch, "iter": state.iter, **metrics}
        logger.log(rec)
        state.history.append(rec)
        shown = "  ".join(f"{k} {format_ap(metrics[k])}" for k in ("AP", "AP50", "AP75", "AR100"))
        info(f"epoch {state.epoch} val: {shown}")  # n/a: undefined (-1), e.g. no ground truth of that kind
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
    from ..data.loader import set_epoch

    try:
        with GracefulInterrupt() as interrupt:
            try:
                if trained and final is None:  # e.g. a Ctrl-C during the final evaluation
                    info(f"epoch {state.epoch} was trained but not evaluated: evaluating it now")
                    metrics = evaluate_epoch()
                    with interrupt.deferred():
                        ckpt_path = save_epoch(keep_rng=True)
                while state.epoch < cfg.train.epochs:
                    set_epoch(train_loader, state.epoch, start_batch=state.epoch_iter)
                    means = train_one_epoch(model, criterion, train_loader, optimizer, schedule, state, cfg, device,
                                            logger, precision, interrupt)
                    with interrupt.deferred():
                        state.epoch += 1
                        state.epoch_iter = 0
                        ckpt_path = save_epoch()
                    loss_txt = ", ".join(f"{k}={v:.4f}" for k, v in means.items())
                    skipped = f" ({state.skipped} non-finite steps skipped so far)" if state.skipped else ""
                    info(f"epoch {state.epoch}/{cfg.train.epochs}: {loss_txt}{skipped}")
                    last = state.epoch == cfg.train.epochs
                    ei = cfg.train.eval_interval
                    if last or (ei > 0 and state.epoch % ei == 0):
                        metrics = evaluate_epoch()
                    if last:  # rewritten with its evaluation in the history: a resume sees the run is complete
                        with interrupt.deferred():
                            save_epoch(keep_rng=True)
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
