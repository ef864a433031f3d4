"""Image/box transforms of the detection pipeline (mmdetection 2.x semantics, DESIGN §4).

Every transform is a callable ``(image, target) -> (image, target)`` where ``image``
is a ``[3, H, W]`` tensor (uint8 straight from the decoder, float32 after resizing)
and ``target`` a dict holding ``boxes [K, 4]`` xyxy float32 pixels, ``labels [K]`` and
the image metadata ``ori_shape``, ``img_shape``, ``scale_factor``, ``flip``.

Randomness (the multi-scale draw, the flip) uses torch's global generator, which the
data loader seeds per worker (see :mod:`locdistill.data.loader`).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

MEAN = (123.675, 116.28, 103.53)  # RGB, mmdetection/ImageNet statistics in 0..255
STD = (58.395, 57.12, 57.375)

Transform = Callable[[torch.Tensor, dict], "tuple[torch.Tensor, dict]"]


def rescale_size(width: int, height: int, img_scale: Sequence[int]) -> tuple[int, int]:
    """Keep-ratio target size ``(new_w, new_h)`` fitting inside ``img_scale = (long, short)``.

    ``scale = min(long / max(w, h), short / min(w, h))``, ``new = int(x * scale + 0.5)``.
    """
    long_max, short_max = max(img_scale), min(img_scale)
    scale = min(long_max / max(width, height), short_max / min(width, height))
    return int(width * scale + 0.5), int(height * scale + 0.5)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class Resize:
    """Keep-ratio bilinear resize into ``img_scale = (long, short)``.

    With ``short_range = (lo, hi)`` (multi-scale training) the short bound is drawn
    uniformly from the integers ``lo..hi`` per image, the long bound stays
    ``img_scale[0]``. Boxes are scaled by ``(w_scale, h_scale) = new / old`` per axis and
    clipped to the new image. Pixels are rounded back to integers as mmcv's uint8
    resize does.
    """

    def __init__(self, img_scale: Sequence[int] = (1333, 800), short_range: Optional[Sequence[int]] = None):
        self.img_scale = (int(img_scale[0]), int(img_scale[1]))
        self.short_range = None if short_range is None else (int(min(short_range)), int(max(short_range)))

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        h, w = image.shape[-2:]
        scale = self.img_scale
        if self.short_range is not None:
            short = int(torch.randint(self.short_range[0], self.short_range[1] + 1, ()).item())
            scale = (self.img_scale[0], short)
        new_w, new_h = rescale_size(w, h, scale)
        if (new_h, new_w) != (h, w):
            x = image[None].float()
            image = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
            image = image.round_().clamp_(0, 255)
        w_scale, h_scale = new_w / w, new_h / h
        boxes = target["boxes"] * torch.tensor([w_scale, h_scale, w_scale, h_scale], dtype=torch.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_h)
        target = dict(target, boxes=boxes, img_shape=(new_h, new_w), scale_factor=(w_scale, h_scale))
        return image, target

    def __repr__(self) -> str:
        return f"Resize(img_scale={self.img_scale}, short_range={self.short_range})"


class RandomFlip:
    """Horizontal flip with probability ``p``: ``x1' = W - x2``, ``x2' = W - x1``."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        if self.p <= 0 or torch.rand(()).item() >= self.p:
            return image, dict(target, flip=bool(target.get("flip", False)))
        width = image.shape[-1]
        boxes = target["boxes"].clone()
        boxes[:, 0] = width - target["boxes"][:, 2]
        boxes[:, 2] = width - target["boxes"][:, 0]
        return image.flip(-1), dict(target, boxes=boxes, flip=True)

    def __repr__(self) -> str:
        return f"RandomFlip(p={self.p})"


class Normalize:
    """``(image - mean) / std`` per RGB channel; returns float32."""

    def __init__(self, mean: Sequence[float] = MEAN, std: Sequence[float] = STD):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        return (image.float() - self.mean) / self.std, target

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def build_transforms(data_cfg, train: bool) -> Compose:
    """Pipeline of a split: resize (multi-scale when training and ``train_short_range`` is
    set), flip (training only, ``flip_prob``), normalise."""
    short_range = data_cfg.train_short_range if train else None
    steps: list[Transform] = [Resize(data_cfg.img_scale, short_range)]
    if train and data_cfg.flip_prob > 0:
        steps.append(RandomFlip(data_cfg.flip_prob))
    steps.append(Normalize())
    return Compose(steps)
