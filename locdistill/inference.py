"""Single-image inference: open a detector, prepare an image, detect.

The one single-image path of locdistill: ``predict``, ``benchmark``, ``visualize-distribution``
and the demo's pictures use it. A detector is opened with :func:`open_detector` (built and
loaded by :func:`locdistill.models.build.load_detector`); :func:`prepare_image` /
:func:`prepare_tensor` run the test pipeline of ``cfg.data`` on one image (resize, normalise,
pad, exactly as the val loader does) and :func:`detect` returns its post-processed detections.
Choosing the device (``auto`` → CUDA) is the caller's (:func:`locdistill.engine.device.select_device`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .config import Config
from .data.loader import collate
from .data.transforms import build_transforms
from .data.voc import VOC_CLASSES
from .errors import DatasetError
from .models.build import load_detector
from .models.build import postprocess

__all__ = ["LoadedDetector", "class_names", "detect", "open_detector", "prepare_image", "prepare_tensor",
           "read_image"]


@dataclass
class LoadedDetector:
    """A detector ready for inference: ``cfg`` (with ``model.num_classes`` set), ``model``
    (eval mode, on ``device``) and the class names."""

    cfg: Config
    model: torch.nn.Module
    classes: list[str]
    device: torch.device


def class_names(cfg: Config, recorded: Optional[Sequence[str]], num_classes: int) -> list[str]:
    """``recorded`` (the checkpoint's names), else ``data.classes``, else VOC's for a 20-class VOC
    config, else ``class 0..C-1``."""
    names = list(recorded) if recorded else None
    if not names and cfg.data.classes:
        names = list(cfg.data.classes)
    if not names and cfg.data.dataset == "voc" and num_classes == 20:
        names = list(VOC_CLASSES)
    if not names or len(names) != num_classes:
        names = [f"class {i}" for i in range(num_classes)]
    return [str(n) for n in names]


def open_detector(cfg: Config, checkpoint: Union[str, os.PathLike, Mapping, None],
                  device: torch.device) -> LoadedDetector:
    """``cfg`` + checkpoint (loaded strictly by :func:`~locdistill.models.build.load_detector`)
    → :class:`LoadedDetector` in eval mode on ``device``.

    The class count follows the checkpoint (as ``locdistill test``); without a checkpoint the
    model keeps its random initialisation.
    """
    model, recorded = load_detector(cfg, checkpoint, strict=True)
    model.to(device).eval()
    return LoadedDetector(cfg, model, class_names(cfg, recorded, cfg.model.num_classes), device)


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as RGB, or raise DatasetError naming the file."""
    try:
        with Image.open(path) as pil:
            return pil.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"image {path} does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot decode image {path}: {e}; fix: pass a readable image file") from None


def prepare_tensor(image: torch.Tensor, target: dict, cfg: Config) -> tuple[torch.Tensor, dict]:
    """The test pipeline of ``cfg.data`` on one uint8 image ``[3, H, W]`` and its target (as a
    dataset's ``get_raw`` returns them): ``(images [1, 3, Hp, Wp], meta)``, resized, normalised
    and padded to ``data.size_divisor``; ``meta`` has ``img_shape``, ``scale_factor``, ``ori_shape``."""
    image, target = build_transforms(cfg.data, train=False)(image, target)
    images, targets = collate([(image, target)], size_divisor=cfg.data.size_divisor)
    t = targets[0]
    return images, {"img_shape": t["img_shape"], "scale_factor": t["scale_factor"], "ori_shape": t["ori_shape"]}


def prepare_image(pil: Image.Image, cfg: Config) -> tuple[torch.Tensor, dict]:
    """:func:`prepare_tensor` of one RGB PIL image: ``(images [1, 3, Hp, Wp], meta)``."""
    image = torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1)
    h, w = image.shape[1:]
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "image_id": 0,
              "ori_shape": (h, w), "img_shape": (h, w), "scale_factor": (1.0, 1.0), "flip": False}
    return prepare_tensor(image, target, cfg)


@torch.no_grad()
def detect(det: LoadedDetector, pil: Image.Image) -> dict[str, torch.Tensor]:
    """Detections of one image: ``boxes [K, 4]`` (original pixels), ``scores [K]``, ``labels [K]`` (CPU)."""
    images, meta = prepare_image(pil, det.cfg)
    outputs = det.model(images.to(det.device))
    result = postprocess(outputs, [meta], det.cfg.test, det.model.strides, det.model.reg_max)[0]
    return {k: v.cpu() for k, v in result.items()}
