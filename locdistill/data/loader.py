"""Datasets and data loaders from a :class:`~locdistill.config.DataConfig`.

Reproducibility: the order of the images is a function of ``(seed, epoch)`` only
(call ``loader.sampler.set_epoch(epoch)`` or :func:`set_epoch` before each epoch).
The random resize/flip draws use torch's generator, which DataLoader seeds in each
worker process from the loader's own generator (seeded from ``seed`` and the rank);
:func:`worker_init_fn` seeds ``random`` and numpy from it too. With ``workers=0`` the
draws come from the main process's global generator (the engine seeds it).
"""
from __future__ import annotations

import functools
import math
import random
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import ConfigError
from .coco import CocoDetection
from .digits import ensure_digits
from .transforms import build_transforms


def collate(
    batch: Sequence[tuple[torch.Tensor, dict]], size_divisor: int = 32
) -> tuple[torch.Tensor, list[dict]]:
    """Stack ``(image [3,H,W], target)`` items into ``images [B, 3, Hp, Wp]``, zero-padded at
    the bottom/right (after normalisation) to multiples of ``size_divisor``.

    Each target gets ``pad_shape (h, w)``: its own ``img_shape`` rounded up to ``size_divisor``.
    """
    images, targets = zip(*batch)
    pad_shapes = [
        (math.ceil(im.shape[-2] / size_divisor) * size_divisor, math.ceil(im.shape[-1] / size_divisor) * size_divisor)
        for im in images
    ]
    hp, wp = max(p[0] for p in pad_shapes), max(p[1] for p in pad_shapes)
    out = images[0].new_zeros((len(images), images[0].shape[0], hp, wp))
    for i, im in enumerate(images):
        out[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
    return out, [dict(t, pad_shape=p) for t, p in zip(targets, pad_shapes)]


def build_dataset(data_cfg, split: str) -> CocoDetection:
    """The ``"train"`` or ``"val"`` dataset of a data config.

    ``data.dataset == "digits"`` generates (once) and uses the bundled digits scenes;
    ``"coco"`` reads ``data.{split}_json`` / ``data.{split}_images``. The train split uses
    the training transforms and ``data.filter_empty_gt``; val keeps every image.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if data_cfg.dataset == "digits":
        paths = ensure_digits(
            data_cfg.digits_root, data_cfg.digits_train, data_cfg.digits_val,
            data_cfg.digits_image_size, data_cfg.digits_seed,
        )
        json_path, images_dir = paths[f"{split}_json"], paths[f"{split}_images"]
    elif data_cfg.dataset == "coco":
        json_path = getattr(data_cfg, f"{split}_json")
        images_dir = getattr(data_cfg, f"{split}_images")
    else:
        raise ConfigError(f"data.dataset={data_cfg.dataset!r} is not supported; use 'coco' or 'digits'")
    train = split == "train"
    return CocoDetection(
        json_path,
        images_dir,
        transforms=build_transforms(data_cfg, train=train),
        classes=list(data_cfg.classes) if data_cfg.classes else None,
        filter_empty_gt=bool(data_cfg.filter_empty_gt) and train,
        skip_bad=data_cfg.skip_bad,
    )


class EpochSampler(Sampler[int]):
    """Indices of one epoch: a permutation seeded by ``seed + epoch`` (or in order), then
    this rank's share ``[rank::world_size]``.

    With ``pad`` (default: when shuffling) the index list is first extended by repeating
    its start so that every rank gets the same number of items (needed by DDP training);
    without it (evaluation) the shares may differ by one and no image is seen twice.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: Optional[bool] = None):
        self.size, self.shuffle, self.seed = int(size), bool(shuffle), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.pad = self.shuffle if pad is None else bool(pad)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (call before iterating each epoch)."""
        self.epoch = int(epoch)

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(self.size, generator=g).tolist()
        else:
            idx = list(range(self.size))
        if self.world_size > 1:
            if self.pad and idx:
                total = math.ceil(self.size / self.world_size) * self.world_size
                idx = (idx * math.ceil(total / len(idx)))[:total]
            idx = idx[self.rank :: self.world_size]
        return idx

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.size
        if self.pad:
            return math.ceil(self.size / self.world_size)
        return len(range(self.rank, self.size, self.world_size))


def worker_init_fn(worker_id: int) -> None:
    """Seed ``random`` and numpy in a worker from its torch seed (set by DataLoader)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    distributed: bool = False,
    size_divisor: int = 32,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader yielding ``(images [B,3,Hp,Wp], targets)`` batches (see :func:`collate`).

    ``loader.sampler`` is an :class:`EpochSampler`; call :func:`set_epoch` each epoch for a
    fresh, reproducible order. ``distributed`` shards by ``torch.distributed`` rank (training
    shards are padded to equal length, evaluation shards are not). Worker processes are
    persistent when ``workers > 0``.
    """
    rank, world = 0, 1
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world)
    generator = torch.Generator().manual_seed(seed * 1000 + rank)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=functools.partial(collate, size_divisor=size_divisor),
        drop_last=drop_last,
        persistent_workers=workers > 0,
        worker_init_fn=worker_init_fn,
        generator=generator,
        pin_memory=pin_memory,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Select ``epoch``'s shuffling order of a loader made by :func:`build_dataloader`."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
