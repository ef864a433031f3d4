"""COCO-format detection datasets (any JSON with ``images``, ``annotations``, ``categories``).

The JSON is parsed with the standard library (no pycocotools at run time) into
compact per-image arrays. Category ids may be anything: they are mapped to
contiguous labels ``0..C-1`` in increasing id order (or in the order of ``classes``)
and back through :attr:`CocoDetection.cat_ids`.

Bad input raises :class:`~locdistill.errors.DatasetError` naming the file and the fix.
With ``skip_bad=True``, images whose file is missing are dropped when the dataset is
built (one warning with the count), and an image that fails to decode is skipped when
it is loaded: ``dataset[i]`` then returns the next loadable image instead (so an
epoch may see that image twice, and an evaluation that scores the image ids it
predicted leaves the skipped image out; a warning names each skipped file).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import DatasetError
from .transforms import Normalize

SKIP_HINT = "or set data.skip_bad=True to skip such images"


def gray_to_8bit(pixels: np.ndarray) -> np.ndarray:
    """One channel of more than 8 bits (PIL modes ``I;16*``, ``I``, ``F``) as uint8 ``[H, W]``.

    Integers in 0..65535 (16-bit PNG/TIFF data, whether PIL reads it as ``I;16`` or ``I``) keep
    their high byte, ``v >> 8`` (``257 * u`` gives the 8-bit ``u`` back); floats in [0, 1] are
    scaled by 255. Other data (32-bit integers beyond 16 bits, floats outside [0, 1]) has no
    standard range: its min..max is stretched to 0..255 (non-finite floats become 0).
    """
    if pixels.dtype.kind in "ui" and pixels.min() >= 0 and pixels.max() <= 65535:
        return (pixels.astype(np.uint32) >> 8).astype(np.uint8)
    values = np.nan_to_num(pixels.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = values.min(), values.max()
    if pixels.dtype.kind == "f" and lo >= 0 and hi <= 1:
        return np.rint(values * 255).astype(np.uint8)
    return np.rint((values - lo) * (255 / max(hi - lo, 1e-12))).astype(np.uint8)


def decode_rgb(file: str | os.PathLike, where: str = "") -> torch.Tensor:
    """Decode an image file as RGB ``[3, H, W]`` uint8.

    High bit-depth grayscale (16-bit PNG/TIFF, 32-bit integer or float TIFF, which PIL's own
    conversion saturates to white or black) is scaled to 8 bits by :func:`gray_to_8bit`;
    16-bit RGB(A) PNGs are reduced to 8 bits by PIL itself.

    Raises:
        DatasetError: naming ``file`` (and ``where``, e.g. the annotation file that lists it)
        when it is missing or cannot be decoded.
    """
    try:
        with Image.open(file) as pil:
            if pil.mode in ("I", "F") or pil.mode.startswith("I;16"):
                pil = Image.fromarray(gray_to_8bit(np.asarray(pil)))
            pil = pil.convert("RGB")
    except FileNotFoundError as e:
        raise DatasetError(f"image file {file}{where} does not exist; fix: restore it, {SKIP_HINT}") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(
            f"cannot decode image file {file}{where}: {e}; fix: replace or delete the file, {SKIP_HINT}"
        ) from e
    return torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1)


def raw_target(image: torch.Tensor, boxes: np.ndarray, labels: np.ndarray, image_id: int) -> dict:
    """The untransformed target of a decoded ``image [3, H, W]``: ``boxes [K, 4]`` float32 and
    ``labels [K]`` int64 copied from the arrays, original shape, unit scale, no flip."""
    shape = (int(image.shape[1]), int(image.shape[2]))
    return {"boxes": torch.from_numpy(boxes.copy()), "labels": torch.from_numpy(labels.copy()),
            "image_id": image_id, "ori_shape": shape, "img_shape": shape, "scale_factor": (1.0, 1.0),
            "flip": False}


class SkippingDataset(torch.utils.data.Dataset):
    """``__getitem__`` shared by the detection datasets.

    Subclasses provide ``get_raw(i) -> (uint8 image, target)``, ``transforms``, ``skip_bad``
    and :meth:`all_bad_message`. With ``skip_bad`` an image that raises DatasetError is
    remembered, counted in a warning and replaced by the next readable one; otherwise the
    error propagates.
    """

    skip_bad: bool = False
    transforms: Callable

    def get_raw(self, index: int) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def all_bad_message(self) -> str:
        return "no image of the dataset could be decoded"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        bad = self.__dict__.setdefault("_bad", set())
        n = len(self)
        for step in range(n):
            j = (index + step) % n
            if j in bad:
                continue
            try:
                image, target = self.get_raw(j)
            except DatasetError as e:
                if not self.skip_bad:
                    raise
                bad.add(j)
                warnings.warn(f"skipped unreadable image ({len(bad)} so far in this process): {e}")
                continue
            return self.transforms(image, target)
        raise DatasetError(self.all_bad_message())


def load_json(path: str | os.PathLike, what: str = "annotation file") -> Any:
    """Read a JSON file, turning a missing file or a syntax error into a DatasetError."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"{what} {path} does not exist; fix: point data.train_json / data.val_json at an existing "
            "COCO-format JSON file (see docs/datasets.md)"
        )
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{what} {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}; "
            "fix: repair or re-export the file"
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {what} {path}: {e}; fix: check the file and its permissions") from e


def load_coco_json(path: str | os.PathLike) -> dict:
    """Load and check the top level of a COCO detection JSON (``images``, ``annotations``, ``categories`` lists)."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path} is not a COCO detection file: the top level is a {type(data).__name__}, not an object; "
            "fix: use a JSON object with 'images', 'annotations' and 'categories' lists"
        )
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise DatasetError(
            f"{path} is not a COCO detection file: missing the list(s) {', '.join(repr(k) for k in missing)}; "
            "fix: a COCO JSON needs top-level 'images', 'annotations' and 'categories' lists"
        )
    return data


def _field(entry: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise DatasetError(f"{path}: {where} has no '{key}' field; fix: every entry needs one (COCO format)")
    return entry[key]


class CocoDetection(SkippingDataset):
    """A COCO-format detection dataset.

    ``dataset[i] -> (image [3, H, W] float32, target)`` with target keys ``boxes [K, 4]``
    (xyxy float32, resized-image pixels), ``labels [K]`` int64 (``0..C-1``), ``image_id``
    (the JSON id), ``ori_shape (h, w)``, ``img_shape (h, w)``, ``scale_factor (w_scale,
    h_scale)`` and ``flip``. Without ``transforms`` the image is only normalised
    (no resize, no flip).

    Attributes: ``classes`` (names, label order), ``cat_ids`` (label -> category id),
    ``img_ids`` (JSON ids, dataset order), ``json_path``, ``images_dir``,
    ``image_infos`` (the JSON image entries in dataset order), ``num_dropped_boxes``,
    ``num_missing_images``, ``num_size_mismatches`` (images whose file is not the JSON's
    ``width`` x ``height``: the file's size is used, see :meth:`_find_files`).
    """

    def __init__(
        self,
        json_path: str | os.PathLike,
        images_dir: str | os.PathLike,
        transforms: Optional[Callable] = None,
        classes: Optional[Sequence[str]] = None,
        filter_empty_gt: bool = False,
        skip_bad: bool = False,
    ):
        self.json_path = Path(json_path)
        self.images_dir = Path(images_dir)
        self.transforms = transforms if transforms is not None else Normalize()
        self.skip_bad = skip_bad
        self._bad: set[int] = set()
        data = load_coco_json(self.json_path)
        if not self.images_dir.is_dir():
            raise DatasetError(
                f"images folder {self.images_dir} (for {self.json_path}) does not exist; fix: set "
                "data.train_images / data.val_images to the folder holding the image files"
            )
        self._parse_categories(data["categories"], classes)
        self._parse_images_and_annotations(data, filter_empty_gt)

    # ------------------------------------------------------------------ parsing
    def _parse_categories(self, categories: list, classes: Optional[Sequence[str]]) -> None:
        path = self.json_path
        by_id: dict[int, str] = {}
        for k, cat in enumerate(categories):
            cid = _field(cat, "id", path, f"categories[{k}]")
            if cid in by_id:
                raise DatasetError(f"{path}: category id {cid} appears twice; fix: give every category a unique id")
            by_id[cid] = str(_field(cat, "name", path, f"categories[{k}]"))
        if not by_id:
            raise DatasetError(f"{path}: 'categories' is empty; fix: list the object classes there")
        if classes is None:
            self.cat_ids = sorted(by_id)
        else:
            name_to_id: dict[str, int] = {}
            for cid in sorted(by_id):
                name_to_id.setdefault(by_id[cid], cid)
            unknown = [c for c in classes if c not in name_to_id]
            if unknown:
                raise DatasetError(
                    f"{path}: class name(s) {', '.join(repr(c) for c in unknown)} requested by data.classes "
                    f"are not categories of this file (it has: {', '.join(name_to_id)}); fix: correct "
                    "data.classes or leave it unset to use every category"
                )
            self.cat_ids = [name_to_id[c] for c in classes]
        self.classes = [by_id[c] for c in self.cat_ids]
        self._all_cat_ids = set(by_id)
        self._label_of = {cid: i for i, cid in enumerate(self.cat_ids)}

    def _parse_images_and_annotations(self, data: dict, filter_empty_gt: bool) -> None:
        path = self.json_path
        infos: dict[Any, dict] = {}
        for k, img in enumerate(data["images"]):
            iid = _field(img, "id", path, f"images[{k}]")
            _field(img, "file_name", path, f"images[{k}] (id {iid})")
            if iid in infos:
                raise DatasetError(f"{path}: image id {iid} appears twice; fix: give every image a unique id")
            infos[iid] = img
        files, sizes, mismatched = self._find_files(infos)
        self.num_size_mismatches = len(mismatched)
        if mismatched:
            file, (w, h), (jw, jh) = mismatched[0]
            warnings.warn(
                f"{path}: {len(mismatched)} image(s) differ in size from their 'width'/'height' in the JSON, "
                f"e.g. {file} is {w}x{h}, listed as {jw}x{jh}; their file's size is used and their boxes are "
                "read as pixels of the file. fix: correct 'width'/'height' in the JSON; if the images were "
                "resized after annotation, rescale their boxes too (or restore the original images); "
                "width and height swapped may be a photo rotated by its EXIF tag, which is not applied",
                stacklevel=3,
            )

        per_image: dict[Any, list] = {iid: [] for iid in infos}
        dropped = 0
        for k, ann in enumerate(data["annotations"]):
            aid = ann.get("id", k) if isinstance(ann, dict) else k
            where = f"annotation {aid}"
            iid = _field(ann, "image_id", path, where)
            cid = _field(ann, "category_id", path, where)
            if iid not in infos:
                raise DatasetError(
                    f"{path}: {where} refers to image_id {iid}, which is not in 'images'; "
                    "fix: add the image entry or remove the annotation"
                )
            if cid not in self._all_cat_ids:
                raise DatasetError(
                    f"{path}: {where} refers to category_id {cid}, which is not in 'categories'; "
                    "fix: add the category or remove the annotation"
                )
            if ann.get("iscrowd", 0) or cid not in self._label_of:
                continue  # crowd regions are ignored; so are classes not selected
            bbox = _field(ann, "bbox", path, where)
            try:
                x, y, w, h = (float(v) for v in bbox)
            except (TypeError, ValueError):
                raise DatasetError(
                    f"{path}: {where} has bbox {bbox!r}; fix: use [x, y, width, height] numbers"
                ) from None
            width, height = sizes.get(iid, (math.inf, math.inf))
            inter_w = min(x + w, width) - max(x, 0.0)
            inter_h = min(y + h, height) - max(y, 0.0)
            if not all(map(math.isfinite, (x, y, w, h))) or w < 1 or h < 1 or ann.get("area", 1) <= 0 \
                    or inter_w <= 0 or inter_h <= 0:  # (NaN passes every comparison: tested first)
                dropped += 1
                continue
            per_image[iid].append((x, y, x + w, y + h, self._label_of[cid]))
        self.num_dropped_boxes = dropped
        if dropped:
            warnings.warn(
                f"{path}: dropped {dropped} box(es) with NaN or infinite coordinates, width or height "
                "< 1 pixel, area <= 0 or lying outside their image",
                stacklevel=3,
            )

        self.img_ids, self.image_infos, self._files, self._boxes, self._labels = [], [], [], [], []
        missing: list[Path] = []
        for iid, info in infos.items():
            rows = per_image[iid]
            if filter_empty_gt and not rows:
                continue
            file = files[iid]
            if sizes.get(iid) is None:
                missing.append(file)
                continue
            arr = np.asarray(rows, dtype=np.float32).reshape(-1, 5)
            self.img_ids.append(iid)
            self.image_infos.append(info)
            self._files.append(file)
            self._boxes.append(np.ascontiguousarray(arr[:, :4]))
            self._labels.append(arr[:, 4].astype(np.int64))
        self.num_missing_images = len(missing)
        if missing:
            shown = ", ".join(str(m) for m in missing[:3]) + (" ..." if len(missing) > 3 else "")
            msg = f"{len(missing)} image file(s) listed in {path} do not exist in {self.images_dir}: {shown}"
            if not self.skip_bad:
                raise DatasetError(f"{msg}; fix: check data.train_images / data.val_images, {SKIP_HINT}")
            warnings.warn(f"skipping {msg}", stacklevel=3)
        if not self.img_ids:
            raise DatasetError(
                f"{path}: no usable images (of {len(infos)}) after filtering; fix: check that the file has "
                "annotated images whose files exist"
                + (" and that data.classes names its categories" if len(self.cat_ids) < len(self._all_cat_ids) else "")
            )

    def _find_files(self, infos: dict) -> tuple[dict, dict, list]:
        """``(files, sizes, mismatched)``: each image's path, its ``(width, height)`` (absent when
        the file does not exist) and ``(file, size, json_size)`` for each image whose size differs
        from the JSON's ``width``/``height``.

        Sizes come from the file headers (PIL's lazy open, no pixel decoded), once, when the
        dataset is built: measured 20 us a file (building the dataset of 2,000 cached 160x120
        PNGs took 0.055 s instead of 0.016 s; COCO train's 118k images: about 2.5 s, more from
        a cold network disk). This was chosen over a check at load time, which is free but runs
        in each DataLoader worker, every epoch, and cannot count: here one warning gives the
        exact count before training starts, and boxes lying outside the real image are dropped
        and counted with the other bad boxes instead of being clipped to zero width later.

        Where the JSON's size is wrong, the file's size is used (it is what :func:`decode_rgb`
        returns) and the boxes are kept as written: COCO boxes are pixels of the image file. A
        header that cannot be read falls back to the JSON's size; decoding that file then
        raises (or is skipped) when it is loaded.
        """
        names = set(os.listdir(self.images_dir))
        files: dict[Any, Path] = {}
        sizes: dict[Any, tuple] = {}
        mismatched: list[tuple] = []
        for iid, info in infos.items():
            name = str(info["file_name"])
            files[iid] = file = self.images_dir / name
            if not (name in names if "/" not in name and os.sep not in name else file.is_file()):
                continue
            listed = (info.get("width"), info.get("height"))
            try:
                with Image.open(file) as pil:
                    sizes[iid] = pil.size
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
                sizes[iid] = tuple(math.inf if v is None else v for v in listed)
                continue
            if None not in listed and listed != sizes[iid]:
                mismatched.append((file, sizes[iid], listed))
        return files, sizes, mismatched

    # ------------------------------------------------------------------ access
    @property
    def num_classes(self) -> int:
        """Number of classes (contiguous labels ``0..num_classes-1``)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.img_ids)

    def load_image(self, index: int) -> torch.Tensor:
        """Decode image ``index`` as RGB ``[3, H, W]`` uint8, or raise DatasetError naming the file."""
        return decode_rgb(self._files[index], f" (listed in {self.json_path})")

    def get_raw(self, index: int) -> tuple[torch.Tensor, dict]:
        """Image ``index`` as decoded (uint8) with its untransformed target."""
        image = self.load_image(index)
        return image, raw_target(image, self._boxes[index], self._labels[index], self.img_ids[index])

    def all_bad_message(self) -> str:
        return f"no image listed in {self.json_path} could be decoded; fix: check {self.images_dir}"

    def __repr__(self) -> str:
        return (
            f"CocoDetection({self.json_path}, images={len(self)}, classes={self.num_classes}, "
            f"transforms={self.transforms!r})"
        )
