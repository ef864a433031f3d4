"""``locdistill predict CONFIG CKPT IMAGES... --out-dir D``: detect objects and draw them.

Each input image is written to ``D`` in its own format (JPEG stays JPEG, PNG stays PNG,
anything else becomes PNG) and at its own size, with every detection scoring at least
``--score-thr`` drawn as a box labelled with its class name and score; ``D/detections.json``
lists all detections (after NMS, up to ``test.max_per_img`` per image) in original-image
pixels. Also home of the helpers the other user tools share: :func:`load_detector`,
:func:`prepare_image`, :func:`detect`.
"""
from __future__ import annotations

import colorsys
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..errors import ConfigError, DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class LoadedDetector:
    """A detector ready for inference: ``cfg`` (with ``model.num_classes`` set), ``model``
    (eval mode, on ``device``) and the class names."""

    cfg: object
    model: torch.nn.Module
    classes: list[str]
    device: torch.device


def class_names(cfg, ckpt: Optional[dict], num_classes: int) -> list[str]:
    """Names from the checkpoint, else ``data.classes``, else VOC's for a 20-class VOC config,
    else ``class 0..C-1``."""
    names = None
    if ckpt is not None:
        from .import_mmdet import checkpoint_classes

        names = checkpoint_classes(ckpt)
    if not names and cfg.data.classes:
        names = list(cfg.data.classes)
    if not names and cfg.data.dataset == "voc" and num_classes == 20:
        from ..data.voc import VOC_CLASSES

        names = list(VOC_CLASSES)
    if not names or len(names) != num_classes:
        names = [f"class {i}" for i in range(num_classes)]
    return [str(n) for n in names]


def load_detector(config: str, checkpoint: Optional[str], overrides: Sequence[str] = (),
                  device: Optional[str] = None) -> LoadedDetector:
    """Config + checkpoint (loaded strictly) → :class:`LoadedDetector`.

    The class count follows the checkpoint's recorded classes (as ``locdistill test``);
    without a checkpoint the model keeps its random initialisation.
    """
    from ..checkpoint import load_checkpoint, load_model_weights
    from ..config import load_config
    from ..engine.device import select_device
    from ..models.build import build_detector

    cfg = load_config(config, list(overrides))
    ckpt = load_checkpoint(checkpoint) if checkpoint else None
    if ckpt is not None:
        from .import_mmdet import checkpoint_classes

        recorded = checkpoint_classes(ckpt)
        if recorded:
            cfg.model.num_classes = len(recorded)
    model = build_detector(cfg.model)
    if ckpt is not None:
        load_model_weights(model, ckpt, strict=True, source=str(checkpoint))
    dev = select_device(device or cfg.train.device)
    model.to(dev).eval()
    return LoadedDetector(cfg, model, class_names(cfg, ckpt, cfg.model.num_classes), dev)


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as RGB, or raise DatasetError naming the file."""
    try:
        with Image.open(path) as pil:
            return pil.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"image {path} does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot decode image {path}: {e}; fix: pass a readable image file") from None


def prepare_image(pil: Image.Image, cfg) -> tuple[torch.Tensor, dict]:
    """The test pipeline of ``cfg.data`` on one RGB image: ``(images [1, 3, Hp, Wp], meta)``
    (resized, normalised, padded to ``data.size_divisor``); ``meta`` has ``img_shape``,
    ``scale_factor``, ``ori_shape``."""
    from ..data.loader import collate
    from ..data.transforms import build_transforms

    image = torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1)
    h, w = image.shape[1:]
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "image_id": 0,
              "ori_shape": (h, w), "img_shape": (h, w), "scale_factor": (1.0, 1.0), "flip": False}
    image, target = build_transforms(cfg.data, train=False)(image, target)
    images, targets = collate([(image, target)], size_divisor=cfg.data.size_divisor)
    t = targets[0]
    return images, {"img_shape": t["img_shape"], "scale_factor": t["scale_factor"], "ori_shape": t["ori_shape"]}


@torch.no_grad()
def detect(det: LoadedDetector, pil: Image.Image) -> dict[str, torch.Tensor]:
    """Detections of one image: ``boxes [K, 4]`` (original pixels), ``scores [K]``, ``labels [K]`` (CPU)."""
    from ..models.postprocess import postprocess

    images, meta = prepare_image(pil, det.cfg)
    outputs = det.model(images.to(det.device))
    result = postprocess(outputs, [meta], det.cfg.test, det.model.strides, det.model.reg_max)[0]
    return {k: v.cpu() for k, v in result.items()}


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct, saturated colour per class (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def draw_detections(pil: Image.Image, boxes, scores, labels, classes: Sequence[str],
                    score_thr: float = 0.3, numbered: bool = False) -> Image.Image:
    """A copy of ``pil`` with the boxes scoring ≥ ``score_thr`` drawn, each labelled
    ``"name: 0.87"`` (``"#k name: 0.87"`` with ``numbered``, k counting in the given order) on a
    filled background; the best box is drawn last, on top. The image size is unchanged."""
    out = pil.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    line = max(1, round(min(w, h) / 250))
    font = _font(max(12, round(min(w, h) / 32)))  # 12 px at 160 px images, 20 px at 640
    scores = scores.tolist()
    for k in sorted(range(len(scores)), key=lambda i: scores[i]):  # worst first: the best ends on top
        box, score, label = boxes[k].tolist(), scores[k], int(labels[k])
        if score < score_thr:
            continue
        colour = class_colour(label)
        x1, y1, x2, y2 = box
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        name = classes[label] if label < len(classes) else str(label)
        text = (f"#{k + 1} " if numbered else "") + f"{name}: {score:.2f}"
        tx1, ty1, tx2, ty2 = draw.textbbox((0, 0), text, font=font)
        tw, th = tx2 - tx1 + 4, ty2 - ty1 + 4
        ty = y1 - th if y1 >= th else (y2 if y2 + th <= h else y1)  # above the box, else below, else inside
        tx = max(0, min(x1, w - tw))  # inside the picture
        draw.rectangle([tx, ty, tx + tw, ty + th], fill=colour)
        ink = (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 128 else (255, 255, 255)
        draw.text((tx + 2 - tx1, ty + 2 - ty1), text, fill=ink, font=font)
    return out


def collect_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files given directly, plus the images inside given folders (sorted)."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise DatasetError(f"{p} is neither an image file nor a folder")
    if not files:
        raise DatasetError(f"no images found in {', '.join(str(i) for i in inputs)}")
    return files


def _output_path(out_dir: Path, src: Path, used: set[str]) -> Path:
    suffix = src.suffix.lower() if src.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"
    name, k = src.stem + suffix, 1
    while name in used:  # same name from another folder
        name, k = f"{src.stem}_{k}{suffix}", k + 1
    used.add(name)
    return out_dir / name


def predict_images(config: str, checkpoint: str, images: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                   score_thr: float = 0.3, overrides: Sequence[str] = (), device: Optional[str] = None,
                   progress: bool = True) -> Path:
    """Detect, draw and save every image; returns the path of ``detections.json``."""
    from ..engine.logging import make_progress

    if not 0.0 <= score_thr <= 1.0:
        raise ConfigError(f"--score-thr={score_thr} must be in [0, 1]")
    det = load_detector(config, checkpoint, overrides, device)
    files = collect_images(images)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records, used = [], set()
    with make_progress(transient=True) as bar:
        task = bar.add_task("predict", total=len(files), info="")
        for src in files:
            pil = read_image(src)
            result = detect(det, pil)
            drawn = draw_detections(pil, result["boxes"], result["scores"], result["labels"], det.classes, score_thr)
            dst = _output_path(out_dir, src, used)
            drawn.save(dst, **({"quality": 95} if dst.suffix in (".jpg", ".jpeg") else {}))
            records.append({
                "image": str(src), "output": str(dst), "width": pil.size[0], "height": pil.size[1],
                "detections": [{"bbox": [round(v, 2) for v in b], "score": round(s, 4), "label": int(l),
                                "class": det.classes[int(l)]}
                               for b, s, l in zip(result["boxes"].tolist(), result["scores"].tolist(),
                                                  result["labels"].tolist())],
            })
            bar.advance(task)
    path = out_dir / "detections.json"
    path.write_text(json.dumps({"config": det.cfg.name, "checkpoint": str(checkpoint), "classes": det.classes,
                                "bbox_format": "xyxy (original-image pixels)", "images": records}, indent=1))
    return path


__all__ = ["LoadedDetector", "class_colour", "collect_images", "detect", "draw_detections",
           "load_detector", "predict_images", "prepare_image", "read_image"]
