"""A tiny synthetic Pascal VOC dataset written into a temp folder (no downloads)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image

CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
           "tvmonitor")


def voc_xml(filename: str, size: tuple[int, int], objects: Iterable[tuple]) -> str:
    """VOC XML text; ``objects``: ``(name, x1, y1, x2, y2[, difficult])``."""
    w, h = size
    parts = [f"<annotation><folder>VOC</folder><filename>{filename}</filename>",
             f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"]
    for obj in objects:
        name, x1, y1, x2, y2 = obj[:5]
        hard = obj[5] if len(obj) > 5 else 0
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>{hard}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                     f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    parts.append("</annotation>")
    return "\n".join(parts)


def draw_image(path: Path, size: tuple[int, int], objects: Iterable[tuple], seed: int) -> None:
    """A noisy background with a filled rectangle per object (JPEG or PNG by suffix)."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = (rng.random((h, w, 3)) * 60 + 40).astype(np.uint8)
    for k, obj in enumerate(objects):
        _, x1, y1, x2, y2 = obj[:5]
        arr[int(y1):int(y2), int(x1):int(x2)] = (200, 60 + 40 * k % 180, 30)
    Image.fromarray(arr).save(path)


def random_objects(rng: np.random.Generator, size: tuple[int, int], n: int) -> list[tuple]:
    w, h = size
    out = []
    for _ in range(n):
        bw, bh = rng.integers(8, w // 2), rng.integers(8, h // 2)
        x1, y1 = rng.integers(1, w - bw), rng.integers(1, h - bh)
        out.append((CLASSES[rng.integers(0, 3)], int(x1), int(y1), int(x1 + bw), int(y1 + bh),
                    int(rng.random() < 0.15)))
    return out


def make_devkit(root: Path, years: dict[str, dict[str, int]], size=(64, 48), seed: int = 0,
                objects: Optional[dict[str, list]] = None) -> Path:
    """``root/VOCdevkit/<year>/{Annotations,JPEGImages,ImageSets/Main}`` with random boxes.

    ``years``: e.g. ``{"VOC2007": {"trainval": 4, "test": 3}}`` (images per split).
    ``objects`` may pin the objects of given image stems.
    """
    rng = np.random.default_rng(seed)
    devkit = root / "VOCdevkit"
    for year, splits in years.items():
        base = devkit / year
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        for split, count in splits.items():
            stems = [f"{year[-4:]}_{split}_{i:03d}" for i in range(count)]
            (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
            for i, stem in enumerate(stems):
                objs = (objects or {}).get(stem) or random_objects(rng, size, int(rng.integers(1, 4)))
                (base / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", size, objs))
                draw_image(base / "JPEGImages" / f"{stem}.jpg", size, objs, seed + i)
    return devkit


def make_plain(folder: Path, count: int, size=(64, 48), seed: int = 0, ext: str = ".png") -> Path:
    """A plain folder of images with their XMLs side by side."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        objs = random_objects(rng, size, 2)
        (folder / f"img{i}.xml").write_text(voc_xml(f"img{i}{ext}", size, objs))
        draw_image(folder / f"img{i}{ext}", size, objs, seed + i)
    return folder
