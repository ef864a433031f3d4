"""Pascal VOC detection datasets (XML annotations).

Two layouts are read, named by entries of ``data.voc_train`` / ``data.voc_val`` (paths
relative to ``data.voc_root`` unless absolute):

- **VOCdevkit**: ``"VOC2007/trainval"`` names ``<root>/VOC2007`` with the image list
  ``ImageSets/Main/trainval.txt``, XMLs in ``Annotations/`` and images in
  ``JPEGImages/``. A folder with ``Annotations/`` and ``JPEGImages/`` named without a
  split (``"VOC2007"``, ``"/data/mine"``) uses every XML of ``Annotations/``.
- **plain folder**: a folder holding the images and their XMLs side by side (an
  image is found by the XML's ``<filename>``, else by the XML's stem).

Objects flagged ``<difficult>1</difficult>`` are left out of the training targets and
kept as *ignore* boxes for evaluation, as the VOC protocol does (neither a miss nor a
false positive; :mod:`locdistill.evaluation.voc`). Coordinates are used as written
(VOC's 1-based pixel indices, as mmdetection 2.x reads them).

Bad input raises :class:`~locdistill.errors.DatasetError` naming the file: a folder
without ``Annotations/`` / ``JPEGImages/``, an XML that does not parse, an unknown class,
a malformed box (missing or non-numeric coordinates, ``xmax < xmin``), a missing or
undecodable image. With ``skip_bad=True`` such XMLs / images are skipped, and counted in
a warning. Boxes narrower or lower than 1 pixel are dropped with a counted warning.
"""
from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import DatasetError
from .coco import SkippingDataset, decode_rgb, raw_target
from .transforms import Normalize

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")
SKIP_HINT = "or set data.skip_bad=True to skip such files"


class _BadFile(Exception):
    """An XML or image that is skipped with ``skip_bad`` (message names the file)."""


def _number(obj: ET.Element, key: str, xml: Path, where: str) -> float:
    text = obj.findtext(key)
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _BadFile(f"{xml}: {where} has a malformed box: <{key}> is {text!r}, not a number") from None
    if not np.isfinite(value):
        raise _BadFile(f"{xml}: {where} has a malformed box: <{key}> is {text!r}")
    return value


def parse_voc_xml(xml: Path, class_index: dict[str, int]) -> dict:
    """Read one VOC XML into ``{"filename", "width", "height", "boxes" [K,4] float32,
    "labels" [K] int64, "difficult" [K] bool, "dropped"}`` (``dropped``: boxes < 1 px).

    Raises ``_BadFile`` (turned into DatasetError or a skip by the caller) for a file
    that does not parse, an unknown class or a malformed box.
    """
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as e:
        raise _BadFile(f"{xml} is not valid XML ({e})") from None
    except OSError as e:
        raise _BadFile(f"cannot read {xml}: {e}") from None
    if root.tag != "annotation":
        raise _BadFile(f"{xml} is not a VOC annotation (root element <{root.tag}>, expected <annotation>)")

    def size(key: str) -> int:
        try:
            return int(float(root.findtext(f"size/{key}") or 0))
        except ValueError:
            return 0

    rows, labels, difficult, dropped = [], [], [], 0
    for k, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        where = f"object {k} ({name!r})"
        if name not in class_index:
            raise _BadFile(
                f"{xml}: {where} has the unknown class {name!r} (known: {', '.join(class_index)}); fix: add it "
                "to data.classes or correct the name")
        box = obj.find("bndbox")
        if box is None:
            raise _BadFile(f"{xml}: {where} has no <bndbox>")
        x1, y1, x2, y2 = (_number(box, key, xml, where) for key in ("xmin", "ymin", "xmax", "ymax"))
        if x2 < x1 or y2 < y1:
            raise _BadFile(f"{xml}: {where} has a malformed box: xmin={x1:g} ymin={y1:g} xmax={x2:g} ymax={y2:g}")
        if x2 - x1 < 1 or y2 - y1 < 1:
            dropped += 1
            continue
        try:
            hard = int(float(obj.findtext("difficult") or 0)) != 0
        except ValueError:
            raise _BadFile(f"{xml}: {where} has <difficult>{obj.findtext('difficult')}</difficult>, "
                           "expected 0 or 1") from None
        rows.append((x1, y1, x2, y2))
        labels.append(class_index[name])
        difficult.append(hard)
    return {
        "filename": (root.findtext("filename") or "").strip(),
        "width": size("width"),
        "height": size("height"),
        "boxes": np.asarray(rows, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "difficult": np.asarray(difficult, dtype=bool),
        "dropped": dropped,
    }


def resolve_voc_source(entry: str, root: str | os.PathLike = "") -> tuple[Path, list[tuple[Path, Optional[Path]]]]:
    """The XML files (and image folder) of one ``data.voc_*`` entry.

    Returns ``(folder, [(xml, images_dir or None), ...])``; ``images_dir`` is None for a
    plain folder (images next to the XMLs). Raises DatasetError for a missing folder, a
    VOCdevkit folder without ``Annotations/`` or ``JPEGImages/``, or a missing split file.
    """
    path = Path(entry)
    if not path.is_absolute() and root:
        path = Path(root) / path
    split = None
    if not path.is_dir() and any((path.parent / d).is_dir() for d in ("ImageSets", "Annotations", "JPEGImages")):
        path, split = path.parent, path.name  # "VOC2007/trainval": a split of the VOC2007 folder
    if not path.is_dir():
        raise DatasetError(
            f"VOC data {path} (data.voc_train / data.voc_val entry {entry!r}, data.voc_root={str(root)!r}) "
            "does not exist; fix: point data.voc_root at the VOCdevkit folder or give the folder's path")
    ann, img = path / "Annotations", path / "JPEGImages"
    if split is None and not ann.is_dir() and not img.is_dir() and any(path.glob("*.xml")):
        return path, [(xml, None) for xml in sorted(path.glob("*.xml"))]  # plain folder
    missing = [d.name + "/" for d in (ann, img) if not d.is_dir()]
    if missing:
        raise DatasetError(
            f"VOC folder {path} has no {' and no '.join(missing)}; fix: use the VOCdevkit layout "
            "(Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/<split>.txt) or a plain folder of images "
            "with their .xml files side by side")
    if split is None:
        return path, [(xml, img) for xml in sorted(ann.glob("*.xml"))]
    list_file = path / "ImageSets" / "Main" / f"{split}.txt"
    if not list_file.is_file():
        raise DatasetError(f"VOC split file {list_file} does not exist; fix: check the split name in {entry!r}")
    stems = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    return path, [(ann / f"{stem}.xml", img) for stem in stems]


def _find_image(xml: Path, images_dir: Optional[Path], filename: str) -> Optional[Path]:
    folder = images_dir if images_dir is not None else xml.parent
    if images_dir is not None:  # VOCdevkit: JPEGImages/<stem>.jpg, as mmdetection reads it
        cand = folder / f"{xml.stem}.jpg"
        if cand.is_file():
            return cand
    if filename and (folder / filename).is_file():
        return folder / filename
    for ext in IMAGE_EXTS:
        if (folder / (xml.stem + ext)).is_file():
            return folder / (xml.stem + ext)
    return None


class VOCDetection(SkippingDataset):
    """Pascal VOC-format detection data from one or more sources (see the module doc).

    ``dataset[i] -> (image [3, H, W] float32, target)`` with the same target keys as
    :class:`~locdistill.data.coco.CocoDetection` (``boxes [K, 4]`` of the non-difficult
    objects, ``labels [K]``, ``image_id`` = ``i``, ``ori_shape``, ``img_shape``,
    ``scale_factor``, ``flip``).

    Attributes: ``classes``, ``cat_ids`` (``1..C``, for COCO-format result files),
    ``img_ids`` (``0..N-1``), ``image_infos`` (``{"id", "file_name", "xml", "width",
    "height"}``), ``sources`` (the folders), ``json_path`` (the first folder, named
    like CocoDetection's attribute for messages), ``is_voc2007`` (every source is a
    VOC2007 folder: the VOC07 11-point AP applies), ``default_metric = "mAP"``,
    ``num_dropped_boxes``, ``num_bad_files``, ``num_missing_images``.
    """

    default_metric = "mAP"

    def __init__(
        self,
        sources: Sequence[str | os.PathLike],
        root: str | os.PathLike = "",
        transforms: Optional[Callable] = None,
        classes: Optional[Sequence[str]] = None,
        filter_empty_gt: bool = False,
        skip_bad: bool = False,
    ):
        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        if not sources:
            raise DatasetError("no VOC data given; fix: set data.voc_train / data.voc_val (e.g. 'VOC2007/test')")
        self.transforms = transforms if transforms is not None else Normalize()
        self.skip_bad = skip_bad
        self.classes = list(classes) if classes else list(VOC_CLASSES)
        self.cat_ids = list(range(1, len(self.classes) + 1))
        class_index = {c: i for i, c in enumerate(self.classes)}
        resolved = [resolve_voc_source(str(s), root) for s in sources]
        self.sources = [folder for folder, _ in resolved]
        self.json_path = self.sources[0]
        self.is_voc2007 = all("VOC2007" in folder.name for folder in self.sources)
        self._bad: set[int] = set()
        self.image_infos: list[dict] = []
        self._files: list[Path] = []
        self._boxes: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._difficult: list[np.ndarray] = []
        bad, missing, dropped, total = [], [], 0, 0
        for _, items in resolved:
            for xml, images_dir in items:
                total += 1
                try:
                    if not xml.is_file():
                        raise _BadFile(f"annotation file {xml} does not exist")
                    ann = parse_voc_xml(xml, class_index)
                except _BadFile as e:
                    if not skip_bad:
                        raise DatasetError(f"{e}; fix: repair or delete the file, {SKIP_HINT}") from None
                    bad.append(str(e))
                    continue
                dropped += ann["dropped"]
                if filter_empty_gt and len(ann["labels"]) == 0:
                    continue
                image = _find_image(xml, images_dir, ann["filename"])
                if image is None:
                    missing.append(xml)
                    continue
                self.image_infos.append({"id": len(self._files), "file_name": str(image), "xml": str(xml),
                                         "width": ann["width"], "height": ann["height"]})
                self._files.append(image)
                self._boxes.append(ann["boxes"])
                self._labels.append(ann["labels"])
                self._difficult.append(ann["difficult"])
        self.img_ids = list(range(len(self._files)))
        self.num_dropped_boxes, self.num_bad_files, self.num_missing_images = dropped, len(bad), len(missing)
        where = ", ".join(str(s) for s in self.sources)
        if dropped:
            warnings.warn(f"{where}: dropped {dropped} box(es) narrower or lower than 1 pixel", stacklevel=2)
        if bad:
            warnings.warn(f"skipped {len(bad)} bad annotation file(s) (data.skip_bad=True), e.g. {bad[0]}",
                          stacklevel=2)
        if missing:
            shown = ", ".join(str(m) for m in missing[:3]) + (" ..." if len(missing) > 3 else "")
            msg = f"{len(missing)} annotation file(s) have no image file: {shown}"
            if not skip_bad:
                raise DatasetError(f"{msg}; fix: restore the images, {SKIP_HINT}")
            warnings.warn(f"skipping {msg}", stacklevel=2)
        if not self._files:
            raise DatasetError(f"{where}: no usable images (of {total} annotation files); fix: check the folder "
                               "and data.classes")

    # ------------------------------------------------------------------ access
    @property
    def num_classes(self) -> int:
        """Number of classes (labels ``0..num_classes-1``)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self._files)

    def get_annotation(self, index: int) -> dict[str, np.ndarray]:
        """Ground truth of image ``index`` in original pixels, difficult objects included:
        ``{"boxes" [G, 4] float32, "labels" [G] int64, "ignore" [G] bool (difficult)}``."""
        return {"boxes": self._boxes[index], "labels": self._labels[index], "ignore": self._difficult[index]}

    def load_image(self, index: int) -> torch.Tensor:
        """Decode image ``index`` as RGB ``[3, H, W]`` uint8, or raise DatasetError naming the file."""
        return decode_rgb(self._files[index])

    def get_raw(self, index: int) -> tuple[torch.Tensor, dict]:
        """Image ``index`` as decoded (uint8) with its untransformed target (non-difficult boxes)."""
        image = self.load_image(index)
        easy = ~self._difficult[index]
        return image, raw_target(image, self._boxes[index][easy], self._labels[index][easy], self.img_ids[index])

    def all_bad_message(self) -> str:
        return f"no image of {self.json_path} could be decoded; fix: check the image files"

    def coco_gt(self) -> dict:
        """The ground truth as a COCO detection dict (for ``--eval bbox``); difficult
        objects become ``iscrowd`` regions, which COCO evaluation ignores."""
        images, annotations = [], []
        for i, info in enumerate(self.image_infos):
            w, h = info["width"], info["height"]
            if not (w and h):
                with Image.open(self._files[i]) as pil:  # reads the header only
                    w, h = pil.size
            images.append({"id": i, "file_name": info["file_name"], "width": w, "height": h})
            for box, label, hard in zip(self._boxes[i], self._labels[i], self._difficult[i]):
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label) + 1,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                    "iscrowd": int(hard)})
        return {"images": images, "annotations": annotations,
                "categories": [{"id": i + 1, "name": c} for i, c in enumerate(self.classes)]}

    def __repr__(self) -> str:
        return (f"VOCDetection({', '.join(str(s) for s in self.sources)}, images={len(self)}, "
                f"classes={self.num_classes}, transforms={self.transforms!r})")
