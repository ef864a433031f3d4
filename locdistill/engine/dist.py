"""Distributed training helpers on top of ``torch.distributed`` (DESIGN §8).

locdistill does not launch processes itself: ``torchrun`` does, and sets the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`init_distributed` reads it and joins the process group — NCCL when training
on CUDA, gloo on the CPU — and every other helper here is a no-op in a single process,
so the engine calls them unconditionally.

Conventions:

- rank 0 is the *main process*: it alone writes checkpoints, ``metrics.jsonl``,
  TensorBoard events and progress bars;
- collectives are only called where every rank reaches the same line (the log
  interval, the end of an epoch, evaluation), never on one rank's error path;
- the helpers never read tensors back to the host except where their docstring says so.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError
from .device import select_device


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's global rank (0 without a process group; ``RANK`` before init)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def is_main_process() -> bool:
    """True on rank 0: the process that writes files and prints progress."""
    return get_rank() == 0


def local_rank() -> int:
    """The rank inside this machine (``LOCAL_RANK`` from torchrun), which picks the GPU."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def init_distributed(device_name: str = "auto", timeout_min: float = 30.0) -> torch.device:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` and return this rank's device.

    ``device_name`` is ``train.device``: ``auto`` picks CUDA when available. On CUDA
    each process uses GPU ``LOCAL_RANK`` and the NCCL backend; on the CPU, gloo. Already
    initialised groups are kept (a caller may have set one up). In a single process this
    is :func:`~locdistill.engine.device.select_device`.
    """
    device = select_device(device_name)
    if env_world_size() <= 1 and not (dist.is_available() and dist.is_initialized()):
        return device
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; "
                          "run a single process or install a PyTorch build with distributed support")
    if device.type == "cuda":
        n = torch.cuda.device_count()
        if local_rank() >= n:
            raise ConfigError(f"LOCAL_RANK={local_rank()} but this machine has {n} GPU(s); "
                              f"start at most {n} processes per node (torchrun --nproc_per_node={n})")
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
            if var not in os.environ:
                raise ConfigError(f"WORLD_SIZE={env_world_size()} but {var} is not set: launch with "
                                  "`torchrun --nproc_per_node=N -m locdistill train CONFIG` (docs/distributed.md)")
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(minutes=timeout_min)}
        if device.type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    return device


def cleanup_distributed() -> None:
    """Leave the process group (call once, by whoever called :func:`init_distributed`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the other ranks (dataset generation, downloads)."""
    if is_distributed() and not is_main_process():
        dist.barrier()
    try:
        yield
    finally:
        if is_distributed() and is_main_process():
            dist.barrier()


def all_reduce_mean(values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean over ranks of a dict of scalar tensors, in one all-reduce.

    ``values``: ``{name: tensor []}`` with the same keys on every rank (in any order).
    Returns new float tensors on the same device; the inputs are left alone.
    """
    if not values:
        return {}
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])  # [K]
    if is_distributed():
        dist.all_reduce(stacked)
        stacked = stacked / dist.get_world_size()
    return dict(zip(keys, stacked.unbind(0)))


def all_reduce_max(flag: torch.Tensor) -> torch.Tensor:
    """Elementwise max over ranks (e.g. "any rank saw a non-finite loss")."""
    if is_distributed():
        flag = flag.clone()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag


def all_reduce_min(values: torch.Tensor) -> torch.Tensor:
    """Elementwise min over ranks (e.g. the first iteration at which any rank saw a NaN)."""
    if is_distributed():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return values


def gather_to_main(obj: Any) -> list[Any] | None:
    """Pickle-able ``obj`` of every rank, as a list in rank order on rank 0; None elsewhere.

    Tensors inside should be on the CPU (detections are). In a single process: ``[obj]``.
    """
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if is_main_process() else None
    dist.gather_object(obj, out, dst=0)  # NCCL stages through the current GPU (set by init_distributed)
    return out


def gather_detections(detections: list[dict], image_ids: list[int]) -> tuple[list[dict], list[int]]:
    """Every rank's predictions on rank 0 (empty lists elsewhere), each image once.

    ``detections``: per image ``{"boxes": [K,4], "scores": [K], "labels": [K]}`` CPU tensors;
    ``image_ids``: the matching dataset image ids. Order: by rank, then as predicted.
    """
    parts = gather_to_main((detections, image_ids))
    if parts is None:
        return [], []
    all_dets: list[dict] = []
    all_ids: list[int] = []
    seen: set[int] = set()
    for dets, ids in parts:
        for d, i in zip(dets, ids):
            if i not in seen:  # skip_bad may make two ranks predict the same stand-in image
                seen.add(i)
                all_dets.append(d)
                all_ids.append(i)
    return all_dets, all_ids


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's pickle-able ``obj`` on every rank (identity in a single process)."""
    if not is_distributed():
        return obj
    box = [obj if is_main_process() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """Wrap the trainable model in DistributedDataParallel (a no-op in a single process).

    For a :class:`~locdistill.distill.Distiller` only the **student** is wrapped (and, under
    cross-head distillation or feature imitation with different widths, the student-side
    ``crosshead_adapter`` / ``imitation_adapter`` each in its own DDP; ``find_unused_parameters`` because a tower may feed no active loss term): the
    frozen teacher is never broadcast or synchronised (each rank loaded the same file).
    Returns the model to train (the Distiller itself when distilling).
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    if hasattr(model, "student") and hasattr(model, "teacher"):
        model.student = DDP(model.student, device_ids=ids)
        for name in ("crosshead_adapter", "imitation_adapter"):  # student-side modules outside the student
            if getattr(model, name, None) is not None:
                setattr(model, name, DDP(getattr(model, name), device_ids=ids, find_unused_parameters=True))
        return model
    return DDP(model, device_ids=ids)
