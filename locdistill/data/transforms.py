"""Image/box transforms of the detection pipeline (mmdetection 2.x semantics, DESIGN §4).

Every transform is a callable ``(image, target) -> (image, target)`` where ``image``
is a ``[3, H, W]`` tensor and ``target`` a dict holding ``boxes [K, 4]`` xyxy float32
pixels, ``labels [K]`` and the image metadata ``ori_shape``, ``img_shape``,
``scale_factor``, ``flip``.

As in mmdetection, the image stays uint8 (0..255) through :class:`Resize` and
:class:`RandomFlip` (mmcv resizes the uint8 array with cv2's bilinear, no antialias) and
becomes float32 only in :class:`Normalize`, the last step: ``(x - mean) * (1 / std)``
into a contiguous ``[3, H, W]`` float32 tensor. Besides being closer to mmdetection, this
is 4x less memory traffic than resizing and flipping float32 images.

A transform does the same thing wherever it runs. The data loaders do not run the final
``Normalize`` per image: :func:`split_normalize` separates it from the pipeline, the
datasets of a loader yield the uint8 images, and the loader's collate function applies
that ``Normalize`` explicitly, straight into the padded float32 batch
(:func:`locdistill.data.loader.collate`, same values as normalising each image).

Randomness (the multi-scale draw, the flip) uses torch's global generator, which the
data loader seeds per worker (see :mod:`locdistill.data.loader`).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

MEAN = (123.675, 116.28, 103.53)  # RGB, mmdetection/ImageNet statistics in 0..255
STD = (58.395, 57.12, 57.375)

Transform = Callable[[torch.Tensor, dict], "tuple[torch.Tensor, dict]"]

def _numpy_view(boxes: torch.Tensor) -> Optional[np.ndarray]:
    """``boxes [K, 4]`` as a numpy view when it is a plain CPU float32 tensor, else None.

    The box arithmetic of a few boxes runs in numpy: the same IEEE float32 operations as
    torch's (so the same values), at a fraction of the per-call cost of a torch op, which
    is what these K x 4 computations are made of.
    """
    if type(boxes) is torch.Tensor and boxes.dtype == torch.float32 and boxes.device.type == "cpu" \
            and not boxes.requires_grad:
        return boxes.numpy()
    return None


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


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize (half-pixel centres, ``align_corners=False``, no antialias) of
    ``image [C, H, W]`` to ``size = (new_h, new_w)``: ``[C, new_h, new_w]``, contiguous.

    A uint8 image is resized as uint8 (torch's fixed-point kernel, like cv2's; within
    ±1 of the exact bilinear value) and stays uint8. Any other dtype (or a uint8 image
    the kernel refuses, e.g. on a device without a uint8 bilinear kernel) is
    interpolated in float32 and rounded and clamped to 0..255, as mmcv's uint8 resize
    would; the result then has the input's dtype (float32 for a float32 input).
    """
    new_h, new_w = int(size[0]), int(size[1])
    if tuple(image.shape[-2:]) == (new_h, new_w):
        return image
    if image.dtype == torch.uint8:
        try:
            # [1, C, H, W]; a decoded image is a channels-last view of the HWC array, which the
            # uint8 kernel reads directly and writes out as a contiguous [C, H, W] image.
            return F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                                 antialias=False)[0]
        except RuntimeError:  # no uint8 bilinear kernel for this device: the float path below
            pass
    out = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    out = out.round_().clamp_(0, 255)
    return out if image.dtype == torch.float32 else out.to(image.dtype)


class Resize:
    """Keep-ratio bilinear resize into ``img_scale = (long, short)``.

    With ``short_range = (lo, hi)`` (multi-scale training) the short bound is drawn
    uniformly from the integers ``lo..hi`` per image, the long bound stays
    ``img_scale[0]``. The size rule is :func:`rescale_size`. Boxes are scaled by
    ``(w_scale, h_scale) = new / old`` per axis and clipped to the new image. The pixels
    are resized by :func:`resize_image`: a uint8 image ``[3, H, W]`` (the decoder's
    output) stays uint8, ``[3, new_h, new_w]``, as in mmcv.
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
        image = resize_image(image, (new_h, new_w))
        w_scale, h_scale = new_w / w, new_h / h
        b = _numpy_view(target["boxes"])
        if b is not None:
            b = b * np.array((w_scale, h_scale, w_scale, h_scale), dtype=np.float32)
            np.maximum(b, 0, out=b)
            np.minimum(b, np.array((new_w, new_h, new_w, new_h), dtype=np.float32), out=b)
            boxes = torch.from_numpy(b)
        else:
            boxes = target["boxes"] * torch.tensor([w_scale, h_scale, w_scale, h_scale], dtype=torch.float32)
            boxes = torch.minimum(boxes.clamp_(min=0), torch.tensor([new_w, new_h, new_w, new_h], dtype=torch.float32))
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
        b = _numpy_view(target["boxes"])
        if b is not None:
            f = b[:, [2, 1, 0, 3]]  # a copy: x2, y1, x1, y2
            np.subtract(width, f[:, 0::2], out=f[:, 0::2])
            boxes = torch.from_numpy(f)
        else:
            boxes = target["boxes"].clone()
            boxes[:, 0] = width - target["boxes"][:, 2]
            boxes[:, 2] = width - target["boxes"][:, 0]
        return image.flip(-1), dict(target, boxes=boxes, flip=True)

    def __repr__(self) -> str:
        return f"RandomFlip(p={self.p})"


class Normalize:
    """``(image - mean) * (1 / std)`` per RGB channel (mmcv's ``imnormalize``).

    ``image [3, H, W]`` of any dtype and layout (uint8 from the decoder or
    :class:`Resize`, possibly a channels-last view) -> a new contiguous ``[3, H, W]``
    float32 tensor: one conversion pass into fresh memory, then subtraction and
    multiplication in place (:meth:`normalize_into`, which the loaders' collate function
    calls to write the image straight into its slot of the batch).
    """

    def __init__(self, mean: Sequence[float] = MEAN, std: Sequence[float] = STD):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.stdinv = (1.0 / torch.tensor(std, dtype=torch.float64)).float().view(3, 1, 1)  # as mmcv: 1 / float64

    def normalize_into(self, out: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Write the normalised ``image [3, H, W]`` into ``out`` (a float32 ``[3, H, W]``
        tensor or view, e.g. a slot of a batch) and return ``out``."""
        out.copy_(image)
        mean, stdinv = self.mean, self.stdinv
        if out.device != mean.device:
            mean, stdinv = mean.to(out.device), stdinv.to(out.device)
        return out.sub_(mean).mul_(stdinv)

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        out = torch.empty(image.shape, dtype=torch.float32, device=image.device)
        return self.normalize_into(out, image), target

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


def split_normalize(transforms: Optional[Transform]) -> tuple[Optional[Transform], Optional[Normalize]]:
    """``(head, normalize)``: a pipeline whose last step is a :class:`Normalize` split into
    the steps before it and that ``Normalize``, so that ``head`` then ``normalize`` does
    what ``transforms`` does. ``head`` is a new :class:`Compose` (``transforms`` is left
    as it is; a pipeline that is only a ``Normalize`` gives an empty ``Compose``), and a
    nested ``Compose`` ending in a ``Normalize`` is split the same way. Any other
    ``transforms`` (including None) gives ``(transforms, None)``.
    """
    if isinstance(transforms, Normalize):
        return Compose([]), transforms
    if isinstance(transforms, Compose) and transforms.transforms:
        *steps, last = transforms.transforms
        if isinstance(last, Normalize):
            return Compose(steps), last
        last_head, normalize = split_normalize(last)
        if normalize is not None:
            return Compose(steps + [last_head]), normalize
    return transforms, None
