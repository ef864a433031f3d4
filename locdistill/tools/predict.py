"""``locdistill predict CONFIG CKPT IMAGES... --out-dir D``: detect objects and draw them.

Each input image is written to ``D`` in its own format (JPEG stays JPEG, PNG stays PNG,
anything else becomes PNG) and at its own size, with every detection scoring at least
``--score-thr`` drawn as a box labelled with its class name and score; ``D/detections.json``
lists all detections (after NMS, up to ``test.max_per_img`` per image) in original-image
pixels. Opening the detector, preparing each image and detecting are
:mod:`locdistill.inference`'s; this module draws and writes the results.
"""
from __future__ import annotations

import colorsys
import json
import os
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

from ..config import load_config
from ..engine.device import select_device
from ..engine.logging import make_progress
from ..errors import ConfigError, DatasetError
from ..inference import detect, open_detector, read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


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
    if not 0.0 <= score_thr <= 1.0:
        raise ConfigError(f"--score-thr={score_thr} must be in [0, 1]")
    cfg = load_config(config, list(overrides))
    det = open_detector(cfg, checkpoint, select_device(device or cfg.train.device))
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


__all__ = ["class_colour", "collect_images", "draw_detections", "predict_images"]
