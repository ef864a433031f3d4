"""Datasets and data loaders from a :class:`~locdistill.config.DataConfig`.

Reproducibility: the order of the images is a function of ``(seed, epoch)`` only
(call ``loader.sampler.set_epoch(epoch)`` or :func:`set_epoch` before each epoch).
The random resize/flip draws of each image use torch's generator re-seeded from
``(seed, epoch, index)`` (:class:`SeededDataset`), so they are the same with any number
of workers or DDP processes and after resuming in the middle of an epoch;
:func:`worker_init_fn` seeds ``random`` and numpy in each worker from torch's seed.
"""
from __future__ import annotations

import copy
import functools
import math
import random
import traceback
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, default_collate

from ..errors import ConfigError, LocDistillError
from .coco import CocoDetection
from .digits import FreshDigits, ensure_digits
from .repeat import RepeatDataset
from .transforms import Normalize, build_transforms, split_normalize
from .voc import VOCDetection


class WorkerTraceback(Exception):
    """Where an error of a DataLoader worker came from: its message is the worker's traceback
    (the ``__cause__`` of the re-raised error, shown by ``--debug``)."""


class _WorkerError:
    """A :class:`~locdistill.errors.LocDistillError` raised by the dataset in a DataLoader worker,
    handed to the main process as the batch, which :class:`DetectionLoader` re-raises there.

    Torch's own route would re-raise a new exception of the same type whose message is the
    worker's whole traceback ("Caught DatasetError in DataLoader worker process 0 ..."), which
    the CLI would print in place of the one-line message.
    """

    def __init__(self, error: LocDistillError):
        self.error = error
        self.trace = traceback.format_exc()

    def reraise(self):
        raise self.error from WorkerTraceback(self.trace)


class DetectionLoader(DataLoader):
    """A DataLoader on which a LocDistillError raised in a worker process surfaces in the main
    process as itself (same type, same message, as with ``num_workers=0``)."""

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, _WorkerError):
                batch.reraise()
            yield batch


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Memory for a batch of ``shape = (B, ...)``; the caller writes every element.

    In the main process: uninitialised. In a DataLoader worker: in shared memory, so that handing
    the filled batch to the main process copies nothing more. It is allocated there by torch's
    own ``default_collate`` (public API), which puts its output in shared memory inside a worker:
    here the zeros of ``B`` one-element zero items expanded to ``shape[1:]``. That write of zeros
    over the batch is the price of public APIs (only a private one allocates shared memory
    without writing it); moving the tensor with ``share_memory_()`` instead copies it, which
    measured about twice that.
    """
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    zero = torch.zeros((), dtype=dtype).expand(shape[1:])
    return default_collate([zero] * shape[0])


def _rebuild_targets(items: list) -> list[dict]:
    """Inverse of :meth:`BatchTargets.__reduce__`: plain dicts, numpy arrays back to tensors."""
    out = []
    for target, tensor_keys in items:
        for key in tensor_keys:
            target[key] = torch.from_numpy(target[key])
        out.append(target)
    return out


class BatchTargets(list):
    """The target dicts of a batch (a ``list``), which leave a worker process by value.

    Pickled, each CPU tensor of a target (``boxes``, ``labels``: a few bytes) travels as a
    numpy array inside the message and is a tensor again on arrival, where the main
    process receives a plain ``list``. Torch's own pickling would put each tensor in a
    shared-memory block whose file descriptor the main process then fetches from the
    worker in a separate round trip per block (about 1-3 ms each on a busy machine,
    with the worker's interpreter lock contended): more than decoding an image.
    """

    def __reduce__(self):
        items = []
        for target in self:
            target, tensor_keys = dict(target), []
            for key, value in target.items():
                if type(value) is torch.Tensor and value.device.type == "cpu" and not value.requires_grad:
                    try:
                        target[key] = value.numpy()
                    except (TypeError, RuntimeError):  # a dtype numpy lacks (bfloat16...): torch's sharing
                        continue
                    tensor_keys.append(key)
            items.append((target, tensor_keys))
        return _rebuild_targets, (items,)


def _fill_batch(out: torch.Tensor, images: Sequence[torch.Tensor], normalize: Optional[Normalize]) -> torch.Tensor:
    """Write ``images [3, h, w]`` into the top-left of ``out [B, 3, Hp, Wp]`` (normalised by
    ``normalize.normalize_into`` if given, else copied) and zero the rest."""
    hp, wp = out.shape[-2:]
    for i, im in enumerate(images):
        h, w = im.shape[-2:]
        if normalize is None:
            out[i, :, :h, :w].copy_(im)
        else:
            normalize.normalize_into(out[i, :, :h, :w], im)
        if h < hp:  # only the padding is zeroed: the image region is written once
            out[i, :, h:].zero_()
        if w < wp:
            out[i, :, :h, w:].zero_()
    return out


def collate(
    batch: Sequence[tuple[torch.Tensor, dict]], size_divisor: int = 32, normalize: Optional[Normalize] = None
) -> tuple[torch.Tensor, list[dict]]:
    """Stack ``(image [3,H,W], target)`` items into ``images [B, 3, Hp, Wp]``, zero-padded at
    the bottom/right (after normalisation) to multiples of ``size_divisor``.

    With ``normalize`` (a :class:`~locdistill.data.transforms.Normalize`: the loaders of
    :func:`build_dataloader` pass their dataset's final one, see :func:`split_normalize_dataset`)
    each image (uint8, any layout) is normalised straight into its slot of the float32 batch:
    the same values as ``normalize(image)``, written once. Without it the images are copied
    as they are (``images`` then has the first image's dtype).
    Each target gets ``pad_shape (h, w)``: its own ``img_shape`` rounded up to ``size_divisor``.
    The targets come as a :class:`BatchTargets` list, which a worker process hands over by
    value (one shared-memory block per batch, the images, instead of one per tensor).
    """
    failed = next((item for item in batch if isinstance(item, _WorkerError)), None)
    if failed is not None:  # an item a worker could not load: the batch is the error (DetectionLoader)
        return failed
    images, targets = zip(*batch)
    pad_shapes = [
        (math.ceil(im.shape[-2] / size_divisor) * size_divisor, math.ceil(im.shape[-1] / size_divisor) * size_divisor)
        for im in images
    ]
    hp, wp = max(p[0] for p in pad_shapes), max(p[1] for p in pad_shapes)
    shape = (len(images), images[0].shape[0], hp, wp)
    targets = BatchTargets({**t, "pad_shape": p} for t, p in zip(targets, pad_shapes))
    dtype = torch.float32 if normalize is not None else images[0].dtype
    return _fill_batch(_batch_tensor(shape, dtype), images, normalize), targets


def split_normalize_dataset(dataset: Dataset) -> tuple[Dataset, Optional[Normalize]]:
    """``(view, normalize)``: a dataset whose pipeline ends in a
    :class:`~locdistill.data.transforms.Normalize` (:func:`build_dataset`'s, or a dataset
    made with ``transforms=None``) as a view that yields the images before that step
    (uint8), and that ``Normalize``, which :func:`collate` then applies to the batch.

    The view is a shallow copy whose ``transforms`` is the pipeline without its final
    ``Normalize`` (:func:`~locdistill.data.transforms.split_normalize`); the wrappers
    :class:`~locdistill.data.repeat.RepeatDataset` and ``torch.utils.data.Subset`` are
    copied around a view of the dataset they wrap. ``dataset`` itself is not modified
    (``dataset[i]`` stays normalised). Any other dataset gives ``(dataset, None)``: its
    items are batched as they are.
    """
    if isinstance(dataset, (RepeatDataset, Subset)):
        inner, normalize = split_normalize_dataset(dataset.dataset)
        if normalize is None:
            return dataset, None
        view = copy.copy(dataset)
        view.dataset = inner
        return view, normalize
    head, normalize = split_normalize(vars(dataset).get("transforms") if hasattr(dataset, "__dict__") else None)
    if normalize is None:
        return dataset, None
    view = copy.copy(dataset)
    view.transforms = head
    return view, normalize


def build_dataset(data_cfg, split: str):
    """The ``"train"`` or ``"val"`` dataset of a data config.

    ``data.dataset == "digits"`` generates (once) and uses the bundled digits scenes;
    ``"coco"`` reads ``data.{split}_json`` / ``data.{split}_images``; ``"voc"`` reads the
    Pascal VOC folders ``data.voc_{split}`` under ``data.voc_root`` (a
    :class:`~locdistill.data.voc.VOCDetection`). The train split uses the training
    transforms and ``data.filter_empty_gt``, and is repeated ``data.repeat`` times
    (:class:`~locdistill.data.repeat.RepeatDataset`); val keeps every image once.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    train = split == "train"
    classes = list(data_cfg.classes) if data_cfg.classes else None
    if data_cfg.map_mode not in ("auto", "area", "11points"):  # checked now, not after an epoch of training
        raise ConfigError(f"data.map_mode={data_cfg.map_mode!r} is not valid; use 'auto', 'area' or '11points'")
    if data_cfg.dataset == "voc":
        dataset = VOCDetection(getattr(data_cfg, f"voc_{split}"), data_cfg.voc_root,
                               transforms=build_transforms(data_cfg, train=train), classes=classes,
                               filter_empty_gt=bool(data_cfg.filter_empty_gt) and train, skip_bad=data_cfg.skip_bad)
    elif data_cfg.dataset == "digits" and train and data_cfg.digits_fresh:
        dataset = FreshDigits(data_cfg.digits_train, data_cfg.digits_image_size, data_cfg.digits_seed,
                              transforms=build_transforms(data_cfg, train=True), box_noise=data_cfg.digits_box_noise)
    else:
        if data_cfg.dataset == "digits":
            paths = ensure_digits(
                data_cfg.digits_root, data_cfg.digits_train, data_cfg.digits_val,
                data_cfg.digits_image_size, data_cfg.digits_seed, data_cfg.digits_box_noise,
            )
            json_path, images_dir = paths[f"{split}_json"], paths[f"{split}_images"]
        elif data_cfg.dataset == "coco":
            json_path = getattr(data_cfg, f"{split}_json")
            images_dir = getattr(data_cfg, f"{split}_images")
        else:
            raise ConfigError(f"data.dataset={data_cfg.dataset!r} is not supported; use 'coco', 'voc' or 'digits'")
        dataset = CocoDetection(
            json_path,
            images_dir,
            transforms=build_transforms(data_cfg, train=train),
            classes=classes,
            filter_empty_gt=bool(data_cfg.filter_empty_gt) and train,
            skip_bad=data_cfg.skip_bad,
        )
    if train and data_cfg.repeat != 1:
        if data_cfg.repeat < 1:
            raise ConfigError(f"data.repeat={data_cfg.repeat} must be >= 1 (the training set's repetitions per epoch)")
        dataset = RepeatDataset(dataset, data_cfg.repeat)
    return dataset


class EpochSampler(Sampler):
    """Indices of one epoch: a permutation seeded by ``seed + epoch`` (or in order), then
    this rank's share ``[rank::world_size]``.

    With ``pad`` (default: when shuffling) the index list is first extended by repeating
    its start so that every rank gets the same number of items (needed by DDP training);
    without it (evaluation) the shares may differ by one and no image is seen twice.

    ``set_epoch(epoch, start)`` skips the first ``start`` items of this rank's share
    (resuming in the middle of an epoch); ``len()`` counts the items still to come.
    With ``seeded`` the sampler yields ``(index, item_seed)`` pairs for
    :class:`SeededDataset`: each image's random augmentation is then a function of
    ``(seed, epoch, index)`` alone, whatever the number of workers, processes or
    where a run was resumed.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: Optional[bool] = None, seeded: bool = False):
        self.size, self.shuffle, self.seed = int(size), bool(shuffle), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.pad = self.shuffle if pad is None else bool(pad)
        self.seeded = bool(seeded)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the permutation of ``epoch`` (call before iterating each epoch) and skip the
        first ``start`` items of this rank's share."""
        if not 0 <= start <= self.epoch_length:
            raise ValueError(f"start={start} is outside this rank's epoch of {self.epoch_length} items")
        self.epoch = int(epoch)
        self.start = int(start)

    def _order(self) -> tuple[list[int], list[int]]:
        """(indices of the whole epoch, one augmentation seed per dataset index)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        idx = torch.randperm(self.size, generator=g).tolist() if self.shuffle else list(range(self.size))
        seeds = torch.randint(0, 2**62, (self.size,), generator=g).tolist() if self.seeded else []
        return idx, seeds

    def _indices(self) -> list[int]:
        idx, _ = self._order()
        return self._share(idx)

    def _share(self, idx: list[int]) -> list[int]:
        if self.world_size > 1:
            if self.pad and idx:
                total = math.ceil(self.size / self.world_size) * self.world_size
                idx = (idx * math.ceil(total / len(idx)))[:total]
            idx = idx[self.rank :: self.world_size]
        return idx

    def __iter__(self) -> Iterator:
        idx, seeds = self._order()
        share = self._share(idx)[self.start :]
        if self.seeded:
            return iter([(i, seeds[i]) for i in share])
        return iter(share)

    @property
    def epoch_length(self) -> int:
        """Items of this rank's share in a whole epoch (``len(self) + self.start``)."""
        if self.world_size == 1:
            return self.size
        if self.pad:
            return math.ceil(self.size / self.world_size)
        return len(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return self.epoch_length - self.start

    def state_dict(self) -> dict:
        """Where the sampler stands: ``{"epoch", "start", "seed", "world_size"}``."""
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed, "world_size": self.world_size}


class SeededDataset(Dataset):
    """Wraps a dataset so that ``dataset[(index, seed)]`` runs its random transforms from
    ``torch.manual_seed(seed)``; the caller's (or worker's) global torch generator is
    left as it was. Keys come from an :class:`EpochSampler` with ``seeded=True``.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        gen = torch.default_generator  # the CPU generator the transforms draw from
        saved = gen.get_state()  # (much cheaper than torch.random.fork_rng + torch.manual_seed)
        gen.manual_seed(seed)
        try:
            return self.dataset[index]
        except LocDistillError as e:
            if torch.utils.data.get_worker_info() is None:
                raise
            return _WorkerError(e)  # collate passes it on as the batch: DetectionLoader raises it
        finally:
            gen.set_state(saved)


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
) -> DetectionLoader:
    """A DataLoader yielding ``(images [B,3,Hp,Wp], targets)`` batches (see :func:`collate`).

    ``loader.sampler`` is an :class:`EpochSampler`; call :func:`set_epoch` each epoch for a
    fresh, reproducible order. ``distributed`` shards by ``torch.distributed`` rank (training
    shards are padded to equal length, evaluation shards are not). Worker processes are
    persistent when ``workers > 0``. Each item's random transforms are seeded from
    ``(seed, epoch, index)`` (:class:`SeededDataset`), so the batches of an epoch do not
    depend on the number of workers or processes, nor on where a run was resumed;
    ``loader.dataset`` is that wrapper. The dataset's final ``Normalize`` is taken out of
    its pipeline (``loader.dataset.dataset`` is the view of :func:`split_normalize_dataset`,
    which yields uint8 images) and applied by :func:`collate`, straight into the batch:
    the batches hold the same values as collating the normalised ``dataset[i]``.
    A LocDistillError raised by the dataset in a worker is raised by the loader in the main
    process unchanged (:class:`DetectionLoader`).
    """
    rank, world = 0, 1
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world, seeded=True)
    generator = torch.Generator().manual_seed(seed * 1000 + rank)
    items, normalize = split_normalize_dataset(dataset)
    return DetectionLoader(
        SeededDataset(items),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=functools.partial(collate, size_divisor=size_divisor, normalize=normalize),
        drop_last=drop_last,
        persistent_workers=workers > 0,
        worker_init_fn=worker_init_fn,
        generator=generator,
        pin_memory=pin_memory,
    )


def set_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Select ``epoch``'s shuffling order of a loader made by :func:`build_dataloader`,
    starting at batch ``start_batch`` of this rank's share (mid-epoch resume)."""
    if isinstance(loader.sampler, EpochSampler):
        loader.sampler.set_epoch(epoch, start=min(start_batch * loader.batch_size, loader.sampler.epoch_length))
    elif hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
