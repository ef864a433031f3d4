"""COCO dataset parsing, transforms, collation and loaders."""
import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from locdistill.config import DataConfig
from locdistill.data.coco import CocoDetection
from locdistill.data.loader import (BatchTargets, EpochSampler, SeededDataset, build_dataloader, build_dataset,
                                    collate, set_epoch, split_normalize_dataset)
from locdistill.data.repeat import RepeatDataset
from locdistill.data.transforms import (MEAN, STD, Compose, Normalize, RandomFlip, Resize, build_transforms,
                                        rescale_size, resize_image, split_normalize)
from locdistill.errors import DatasetError

# ----------------------------------------------------------------------------- transforms


@pytest.mark.parametrize(
    "w, h, img_scale, expected",
    [
        (640, 480, (1333, 800), (1067, 800)),  # scale = 800/480: int(1066.67 + .5) = 1067
        (500, 375, (1333, 800), (1067, 800)),  # scale = 800/375 = 2.1333
        (1000, 200, (1333, 800), (1333, 267)),  # long side binds: 1333/1000, int(266.6 + .5)
        (427, 640, (1333, 800), (800, 1199)),  # portrait: min(1333/640, 800/427) = 1.8735; int(1199.06 + .5)
        (160, 160, (160, 160), (160, 160)),
        (160, 160, (320, 320), (320, 320)),
    ],
)
def test_rescale_size_matches_hand_computation(w, h, img_scale, expected):
    assert rescale_size(w, h, img_scale) == expected


def _target(boxes, h, w):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.zeros(len(boxes), dtype=torch.int64),
        "image_id": 1, "ori_shape": (h, w), "img_shape": (h, w), "scale_factor": (1.0, 1.0), "flip": False,
    }


def test_resize_scales_boxes_per_axis():
    img = torch.randint(0, 256, (3, 480, 640), dtype=torch.uint8)
    out, t = Resize((1333, 800))(img, _target([[10, 20, 110, 220], [600, 400, 700, 500]], 480, 640))
    assert out.shape == (3, 800, 1067) and t["img_shape"] == (800, 1067)
    ws, hs = 1067 / 640, 800 / 480
    assert t["scale_factor"] == pytest.approx((ws, hs))
    assert torch.allclose(t["boxes"][0], torch.tensor([10 * ws, 20 * hs, 110 * ws, 220 * hs]))
    assert torch.allclose(t["boxes"][1], torch.tensor([600 * ws, 400 * hs, 1067, 800]))  # clipped to the image
    # A uint8 image is resized as uint8, as mmcv does (issue 6): integer pixels in 0..255 are now
    # guaranteed by the dtype (this asserted float32 holding rounded 0..255 values before); the
    # float32 conversion happens once, in Normalize.
    assert out.dtype == torch.uint8 and out.is_contiguous()


def test_resize_identity_when_size_unchanged():
    img = torch.randint(0, 256, (3, 160, 160), dtype=torch.uint8)
    out, t = Resize((160, 160))(img, _target([[1, 2, 3, 4]], 160, 160))
    assert torch.equal(out, img) and t["scale_factor"] == (1.0, 1.0)


def test_multiscale_draws_short_side_in_range():
    torch.manual_seed(0)
    rs = Resize((200, 80), short_range=(40, 80))
    shapes = [rs(torch.zeros(3, 10, 15, dtype=torch.uint8), _target([], 10, 15))[1]["img_shape"] for _ in range(300)]
    assert {h for h, _ in shapes} == set(range(40, 81))  # every short side in 40..80, both ends included
    assert all(w == int(15 * min(200 / 15, h / 10) + 0.5) for h, w in shapes)


def test_flip_formula():
    img = torch.arange(3 * 2 * 10, dtype=torch.float32).reshape(3, 2, 10)
    t = _target([[1, 0, 4, 2], [0, 0, 10, 1]], 2, 10)
    out, ft = RandomFlip(1.0)(img, t)
    assert ft["flip"] is True and torch.equal(out, img.flip(-1))
    assert ft["boxes"].tolist() == [[6, 0, 9, 2], [0, 0, 10, 1]]  # x1' = W - x2, x2' = W - x1
    out, nt = RandomFlip(0.0)(img, t)
    assert nt["flip"] is False and torch.equal(out, img) and torch.equal(nt["boxes"], t["boxes"])


def test_normalize_rgb_mean_std():
    img = torch.stack([torch.full((2, 2), m) for m in MEAN])
    img[:, 0, 0] = torch.tensor(MEAN) + torch.tensor(STD)
    out, _ = Normalize()(img, {})
    assert out.dtype == torch.float32
    assert torch.allclose(out[:, 0, 0], torch.ones(3)) and torch.allclose(out[:, 1, 1], torch.zeros(3), atol=1e-6)


def test_build_transforms():
    cfg = DataConfig(img_scale=(1333, 800), train_short_range=(480, 800), flip_prob=0.5)
    train, val = build_transforms(cfg, True), build_transforms(cfg, False)
    assert [type(t).__name__ for t in train.transforms] == ["Resize", "RandomFlip", "Normalize"]
    assert [type(t).__name__ for t in val.transforms] == ["Resize", "Normalize"]
    assert train.transforms[0].short_range == (480, 800) and val.transforms[0].short_range is None


def test_collate_pads_to_32_with_zeros():
    a, b = torch.randn(3, 50, 70), torch.randn(3, 65, 33)
    images, targets = collate([(a, {"img_shape": (50, 70)}), (b, {"img_shape": (65, 33)})])
    assert images.shape == (2, 3, 96, 96)
    assert targets[0]["pad_shape"] == (64, 96) and targets[1]["pad_shape"] == (96, 64)
    assert torch.equal(images[0, :, :50, :70], a) and torch.equal(images[1, :, :65, :33], b)
    assert images[0, :, 50:].abs().sum() == 0 and images[0, :, :, 70:].abs().sum() == 0
    assert images[1, :, 65:].abs().sum() == 0 and images[1, :, :, 33:].abs().sum() == 0


# uint8 resize (issue 6): checked against bilinear interpolation written out here in numpy, half-pixel
# centres (cv2 / align_corners=False), source coordinates clamped to the image, no antialias.


def _bilinear_reference(img: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """``img [C, H, W]`` -> ``[C, new_h, new_w]`` float64, exact bilinear values."""
    _, h, w = img.shape

    def taps(n_out, n_in):
        src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, fy = taps(new_h, h)
    x0, x1, fx = taps(new_w, w)
    img = img.astype(np.float64)
    rows = img[:, y0] * (1 - fy)[None, :, None] + img[:, y1] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


SIZES = [(37, 53), (150, 211), (100, 100), (64, 180), (181, 40)]  # down, up, same, mixed


@pytest.mark.parametrize("new_h, new_w", SIZES)
def test_resize_uint8_constant_image_stays_constant(new_h, new_w):
    img = torch.empty(3, 100, 120, dtype=torch.uint8)
    img[0], img[1], img[2] = 0, 137, 255
    out = resize_image(img, (new_h, new_w))
    assert out.dtype == torch.uint8 and out.shape == (3, new_h, new_w) and out.is_contiguous()
    assert out[0].eq(0).all() and out[1].eq(137).all() and out[2].eq(255).all()


@pytest.mark.parametrize("new_h, new_w", SIZES)
def test_resize_uint8_ramps_within_one_of_exact_bilinear(new_h, new_w):
    h, w = 100, 120
    xs, ys = np.arange(w), np.arange(h)
    ramp = np.stack([np.broadcast_to(2 * xs + 10, (h, w)), np.broadcast_to(2 * ys[:, None] + 20, (h, w)),
                     np.broadcast_to(xs + ys[:, None], (h, w))]).astype(np.uint8)  # values 0..250
    out = resize_image(torch.from_numpy(ramp), (new_h, new_w)).numpy().astype(np.float64)
    # a linear ramp stays linear under bilinear interpolation: 2 * clamp(src x) + 10, ...
    sx = np.clip((np.arange(new_w) + 0.5) * w / new_w - 0.5, 0, w - 1)
    sy = np.clip((np.arange(new_h) + 0.5) * h / new_h - 0.5, 0, h - 1)
    expected = np.stack([np.broadcast_to(2 * sx + 10, (new_h, new_w)),
                         np.broadcast_to(2 * sy[:, None] + 20, (new_h, new_w)), sx + sy[:, None]])
    assert np.abs(out - expected).max() <= 1 + 1e-9  # (1e-9: float64 rounding of the expectation)
    assert np.abs(out - _bilinear_reference(ramp, new_h, new_w)).max() <= 1 + 1e-9


@pytest.mark.parametrize("new_h, new_w", SIZES)
def test_resize_uint8_random_image_within_one_of_exact_bilinear(new_h, new_w):
    img = np.random.default_rng(new_h * new_w).integers(0, 256, (3, 100, 120), dtype=np.uint8)
    # the decoder's layout: a [3, H, W] channels-last view of an HWC array
    hwc = torch.from_numpy(np.ascontiguousarray(img.transpose(1, 2, 0))).permute(2, 0, 1)
    out = resize_image(hwc, (new_h, new_w))
    assert out.dtype == torch.uint8 and out.shape == (3, new_h, new_w)
    assert np.abs(out.numpy().astype(np.float64) - _bilinear_reference(img, new_h, new_w)).max() <= 1 + 1e-9
    assert torch.equal(out, resize_image(torch.from_numpy(img), (new_h, new_w)))  # same pixels from either layout


def test_resize_float_input_is_rounded_and_clamped():
    img = torch.rand(3, 20, 30, dtype=torch.float32) * 300 - 20  # out of 0..255 on purpose
    out = resize_image(img, (11, 17))
    assert out.dtype == torch.float32 and out.shape == (3, 11, 17)
    assert torch.equal(out, out.round()) and out.min() >= 0 and out.max() <= 255
    assert resize_image(img, (20, 30)) is img  # same size: untouched


def test_resize_and_flip_box_arithmetic_is_float32_exact():
    g = torch.Generator().manual_seed(3)
    boxes = torch.rand(7, 4, generator=g) * 300  # some beyond the 200 x 300 image
    boxes[:, 2:] += boxes[:, :2]
    img = torch.zeros(3, 200, 300, dtype=torch.uint8)
    out, t = Resize((333, 111))(img, _target(boxes.tolist(), 200, 300))
    new_h, new_w = out.shape[-2:]
    ws, hs = new_w / 300, new_h / 200
    expected = boxes * torch.tensor([ws, hs, ws, hs], dtype=torch.float32)
    expected[:, 0::2] = expected[:, 0::2].clamp(0, new_w)
    expected[:, 1::2] = expected[:, 1::2].clamp(0, new_h)
    assert t["boxes"].dtype == torch.float32 and torch.equal(t["boxes"], expected)
    _, ft = RandomFlip(1.0)(out, t)
    flipped = torch.stack([new_w - expected[:, 2], expected[:, 1], new_w - expected[:, 0], expected[:, 3]], 1)
    assert ft["boxes"].dtype == torch.float32 and torch.equal(ft["boxes"], flipped)
    assert torch.equal(t["boxes"], expected)  # the input target is not modified


def test_normalize_matches_mmcv_formula_for_uint8_and_channels_last():
    img = torch.randint(0, 256, (40, 50, 3), dtype=torch.uint8).permute(2, 0, 1)  # HWC view
    out, _ = Normalize()(img, {})
    assert out.dtype == torch.float32 and out.shape == (3, 40, 50) and out.is_contiguous()
    mean = torch.tensor(MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(3, 1, 1)
    assert torch.allclose(out.double(), (img.double() - mean) / std, atol=1e-5, rtol=0)


def _hand_normalised(img: torch.Tensor) -> torch.Tensor:
    """mmcv's ``imnormalize`` written out in numpy float32: ``(x - mean) * float32(1 / float64(std))``."""
    x = img.numpy().astype(np.float32)
    mean = np.array(MEAN, dtype=np.float32).reshape(3, 1, 1)
    stdinv = (1.0 / np.array(STD, dtype=np.float64)).astype(np.float32).reshape(3, 1, 1)
    return torch.from_numpy(np.ascontiguousarray((x - mean) * stdinv))


def test_normalize_is_bit_identical_to_the_hand_computed_formula():
    img = torch.randint(0, 256, (40, 50, 3), dtype=torch.uint8).permute(2, 0, 1)  # HWC view
    out, _ = Normalize()(img, {})
    assert torch.equal(out, _hand_normalised(img))


def test_split_normalize_takes_out_only_the_final_normalize():
    img = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    norm = Normalize()
    pipeline = Compose([Resize((8, 8)), norm])
    head, n = split_normalize(pipeline)
    assert n is norm and [type(t) for t in head.transforms] == [Resize]
    assert [type(t) for t in pipeline.transforms] == [Resize, Normalize]  # the pipeline is left as it was
    out, t = head(img, _target([], 8, 8))
    assert out.dtype == torch.uint8 and "normalize" not in t
    assert torch.equal(n(out, t)[0], pipeline(img, _target([], 8, 8))[0])
    head, n = split_normalize(norm)  # the whole pipeline
    assert n is norm and head(img, {})[0] is img
    head, n = split_normalize(Compose([Resize((8, 8)), Compose([RandomFlip(0.0), norm])]))  # nested
    assert n is norm and head(img, _target([], 8, 8))[0].dtype == torch.uint8
    not_last = Compose([norm, lambda i, tg: (i, tg)])
    assert split_normalize(not_last) == (not_last, None) and split_normalize(None) == (None, None)
    # a transform does the same thing wherever it runs: no ambient state
    out, t = pipeline(img, _target([], 8, 8))
    assert out.dtype == torch.float32 and "normalize" not in t and torch.equal(out, _hand_normalised(img))


def test_collate_normalises_into_the_batch():
    norm = Normalize()
    a = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    b = torch.randint(0, 256, (30, 33, 3), dtype=torch.uint8).permute(2, 0, 1)  # channels-last view
    images, targets = collate([(a, {"img_shape": (50, 70)}), (b, {"img_shape": (30, 33)})], normalize=norm)
    assert images.dtype == torch.float32 and images.shape == (2, 3, 64, 96)
    assert torch.equal(images[0, :, :50, :70], norm(a, {})[0]) and torch.equal(images[1, :, :30, :33], norm(b, {})[0])
    assert torch.equal(images[0, :, :50, :70], _hand_normalised(a))
    assert torch.equal(images[1, :, :30, :33], _hand_normalised(b))
    assert images[0, :, 50:].abs().sum() == 0 and images[0, :, :, 70:].abs().sum() == 0
    assert images[1, :, 30:].abs().sum() == 0 and images[1, :, :, 33:].abs().sum() == 0
    assert [t["pad_shape"] for t in targets] == [(64, 96), (32, 64)]
    images, _ = collate([(a, {"img_shape": (50, 70)})])  # without normalize: copied as it is
    assert images.dtype == torch.uint8 and torch.equal(images[0, :, :50, :70], a)


def test_batch_targets_pickle_by_value():
    from multiprocessing.reduction import ForkingPickler  # what DataLoader workers pickle with

    import torch.multiprocessing  # noqa: F401  (registers torch's shared-memory reductions)

    targets = BatchTargets([{"boxes": torch.rand(3, 4), "labels": torch.tensor([1, 2, 0]), "image_id": 5,
                             "img_shape": (10, 20), "flip": True}, {"boxes": torch.zeros(0, 4), "labels":
                             torch.zeros(0, dtype=torch.int64), "image_id": "x", "img_shape": (4, 4), "flip": False}])
    data = bytes(ForkingPickler.dumps(targets))
    assert b"rebuild_storage" not in data and b"rebuild_tensor" not in data  # no shared-memory blocks
    back = ForkingPickler.loads(data)
    assert type(back) is list and len(back) == 2
    for t, u in zip(targets, back):
        assert t.keys() == u.keys()
        for k in t:
            if isinstance(t[k], torch.Tensor):
                assert type(u[k]) is torch.Tensor and u[k].dtype == t[k].dtype and torch.equal(u[k], t[k])
            else:
                assert u[k] == t[k]


# ----------------------------------------------------------------------------- COCO parsing


def _write_dataset(root: Path, annotations=None, images=None, categories=None, n_images=3):
    """A small COCO dataset with non-contiguous category ids 3 (cat), 7 (dog), 1 (bird)."""
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    if images is None:
        images = [{"id": 10 + i, "file_name": f"im{i}.png", "width": 64, "height": 48} for i in range(n_images)]
    for im in images:
        pixels = np.full((im["height"], im["width"], 3), 40 * (im["id"] % 5), np.uint8)
        Image.fromarray(pixels).save(img_dir / im["file_name"])
    if categories is None:
        categories = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 1, "name": "bird"}]
    if annotations is None:
        annotations = [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [4, 5, 20, 10], "area": 200, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 1, "bbox": [30, 2, 10, 30], "area": 300, "iscrowd": 0},
            {"id": 3, "image_id": 11, "category_id": 3, "bbox": [0, 0, 64, 48], "area": 3072, "iscrowd": 1},
            {"id": 4, "image_id": 12, "category_id": 3, "bbox": [1, 1, 0.5, 10], "area": 5, "iscrowd": 0},
            {"id": 5, "image_id": 12, "category_id": 3, "bbox": [1, 1, 10, 0.2], "area": 2, "iscrowd": 0},
            {"id": 6, "image_id": 12, "category_id": 3, "bbox": [2, 3, 12, 13], "area": 156, "iscrowd": 0},
        ]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, img_dir


def _load(path, img_dir, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CocoDetection(path, img_dir, **kw)


def test_category_mapping_round_trip(tmp_path):
    path, img_dir = _write_dataset(tmp_path)
    ds = _load(path, img_dir)
    assert ds.cat_ids == [1, 3, 7] and ds.classes == ["bird", "cat", "dog"] and ds.num_classes == 3
    assert ds.img_ids == [10, 11, 12]
    image, t = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32
    assert t["labels"].tolist() == [2, 0] and t["labels"].dtype == torch.int64
    assert [ds.cat_ids[label] for label in t["labels"].tolist()] == [7, 1]  # back to the JSON ids
    assert t["boxes"].tolist() == [[4, 5, 24, 15], [30, 2, 40, 32]] and t["boxes"].dtype == torch.float32
    assert t["image_id"] == 10 and t["ori_shape"] == (48, 64) and t["img_shape"] == (48, 64)
    assert t["scale_factor"] == (1.0, 1.0) and t["flip"] is False
    # normalised pixels
    assert torch.allclose(image[:, 0, 0], (torch.zeros(3) - torch.tensor(MEAN)) / torch.tensor(STD))


def test_classes_subset_and_order(tmp_path):
    path, img_dir = _write_dataset(tmp_path)
    ds = _load(path, img_dir, classes=["dog", "bird"])
    assert ds.cat_ids == [7, 1] and ds.classes == ["dog", "bird"]
    assert ds[0][1]["labels"].tolist() == [0, 1]
    assert len(ds[2][1]["boxes"]) == 0  # the cat box is not a selected class
    with pytest.raises(DatasetError, match=r"'fish'.*ann\.json|ann\.json.*'fish'"):
        _load(path, img_dir, classes=["dog", "fish"])


def test_crowd_ignored_tiny_boxes_dropped_with_one_warning(tmp_path):
    path, img_dir = _write_dataset(tmp_path)
    with pytest.warns(UserWarning) as record:
        ds = CocoDetection(path, img_dir)
    messages = [str(w.message) for w in record if "dropped" in str(w.message)]
    assert len(messages) == 1 and "dropped 2 box" in messages[0] and str(path) in messages[0]
    assert ds.num_dropped_boxes == 2
    assert len(ds[1][1]["boxes"]) == 0  # the crowd box is ignored
    assert ds[2][1]["boxes"].tolist() == [[2, 3, 14, 16]]


def test_filter_empty_gt(tmp_path):
    path, img_dir = _write_dataset(tmp_path)
    assert _load(path, img_dir, filter_empty_gt=True).img_ids == [10, 12]
    assert _load(path, img_dir, filter_empty_gt=False).img_ids == [10, 11, 12]


def test_dataset_with_transforms_and_loader(tmp_path):
    path, img_dir = _write_dataset(tmp_path)
    cfg = DataConfig(img_scale=(128, 96), flip_prob=0.0)
    ds = _load(path, img_dir, transforms=build_transforms(cfg, train=False))
    image, t = ds[0]
    assert image.shape == (3, 96, 128) and t["img_shape"] == (96, 128) and t["scale_factor"] == (2.0, 2.0)
    assert t["boxes"].tolist() == [[8, 10, 48, 30], [60, 4, 80, 64]] and t["ori_shape"] == (48, 64)
    images, targets = next(iter(build_dataloader(ds, batch_size=3, workers=0, shuffle=False)))
    assert images.shape == (3, 3, 96, 128) and [t["image_id"] for t in targets] == [10, 11, 12]
    assert all(t["pad_shape"] == (96, 128) for t in targets)


# ----------------------------------------------------------------------------- errors


def test_missing_json_and_images_dir(tmp_path):
    path, img_dir = _write_dataset(tmp_path)
    with pytest.raises(DatasetError, match="nope.json.*does not exist"):
        CocoDetection(tmp_path / "nope.json", img_dir)
    with pytest.raises(DatasetError, match="no_images.*does not exist.*data.train_images"):
        CocoDetection(path, tmp_path / "no_images")


def test_invalid_json_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [],\n  "annotations": [,]}')
    with pytest.raises(DatasetError, match=r"bad\.json is not valid JSON.*line 2, column 19"):
        CocoDetection(bad, tmp_path)


def test_json_missing_keys(tmp_path):
    bad = tmp_path / "partial.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match=r"partial\.json.*'annotations', 'categories'"):
        CocoDetection(bad, tmp_path)


def test_annotation_with_unknown_image_or_category(tmp_path):
    ann = [{"id": 9, "image_id": 99, "category_id": 3, "bbox": [0, 0, 5, 5]}]
    path, img_dir = _write_dataset(tmp_path, annotations=ann)
    with pytest.raises(DatasetError, match=r"ann\.json: annotation 9 refers to image_id 99"):
        CocoDetection(path, img_dir)
    ann = [{"id": 8, "image_id": 10, "category_id": 5, "bbox": [0, 0, 5, 5]}]
    path, img_dir = _write_dataset(tmp_path, annotations=ann)
    with pytest.raises(DatasetError, match=r"ann\.json: annotation 8 refers to category_id 5"):
        CocoDetection(path, img_dir)


@pytest.mark.filterwarnings("ignore:.*dropped")
def test_missing_image_file_raises_or_is_skipped(tmp_path):
    path, img_dir = _write_dataset(tmp_path)
    (img_dir / "im1.png").unlink()
    with pytest.raises(DatasetError, match=r"im1\.png.*skip_bad=True"):
        CocoDetection(path, img_dir)
    with pytest.warns(UserWarning, match=r"skipping 1 image file.*im1\.png"):
        ds = CocoDetection(path, img_dir, skip_bad=True)
    assert ds.img_ids == [10, 12] and ds.num_missing_images == 1


def test_corrupt_image_raises_or_is_skipped(tmp_path):
    path, img_dir = _write_dataset(tmp_path)
    (img_dir / "im1.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    ds = _load(path, img_dir)
    with pytest.raises(DatasetError, match=r"cannot decode image file .*im1\.png.*ann\.json.*skip_bad"):
        ds[1]
    ds = _load(path, img_dir, skip_bad=True)
    with pytest.warns(UserWarning, match=r"skipped unreadable image.*im1\.png"):
        _, t = ds[1]
    assert t["image_id"] == 12  # the next loadable image stands in


# ----------------------------------------------------------------------------- loaders


def test_epoch_sampler_order_and_shards():
    s = EpochSampler(10, shuffle=True, seed=1)
    first = list(s)
    assert sorted(first) == list(range(10)) and list(s) == first
    s.set_epoch(1)
    assert list(s) != first and sorted(s) == list(range(10))
    assert list(EpochSampler(10, shuffle=False)) == list(range(10))
    shards = [list(EpochSampler(10, shuffle=True, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert [len(x) for x in shards] == [4, 4, 4] and set(sum(shards, [])) == set(range(10))
    shards = [EpochSampler(10, shuffle=False, rank=r, world_size=3) for r in range(3)]
    assert [len(x) for x in shards] == [4, 3, 3] and sorted(sum((list(x) for x in shards), [])) == list(range(10))


def _digits_cfg(root, **kw):
    return DataConfig(dataset="digits", digits_root=str(root), digits_train=12, digits_val=4,
                      digits_image_size=96, img_scale=(128, 96), train_short_range=(64, 128), **kw)


def test_build_dataset_digits(tmp_path):
    cfg = _digits_cfg(tmp_path)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) <= 12 and len(val) == 4 and train.classes == [str(d) for d in range(10)]
    assert train.cat_ids == list(range(1, 11))
    image, t = val[0]
    assert image.shape == (3, 96, 96) and t["flip"] is False
    # "coco" reads the same files through the data.*_json / *_images fields
    coco_cfg = dataclasses.replace(cfg, dataset="coco", val_json=str(val.json_path), val_images=str(val.images_dir))
    assert build_dataset(coco_cfg, "val").img_ids == val.img_ids


def _epoch(loader, epoch):
    set_epoch(loader, epoch)
    return [(t["image_id"], t["flip"], t["img_shape"]) for _, targets in loader for t in targets]


def test_loader_reproducible_with_workers(tmp_path):
    cfg = _digits_cfg(tmp_path)
    ds = build_dataset(cfg, "train")
    runs = []
    for _ in range(2):
        loader = build_dataloader(ds, batch_size=4, workers=2, shuffle=True, seed=5)
        runs.append([_epoch(loader, 0), _epoch(loader, 1)])
        del loader
    assert runs[0] == runs[1]
    e0, e1 = runs[0]
    assert [i for i, _, _ in e0] != [i for i, _, _ in e1]  # a new order each epoch
    assert len({f for _, f, _ in e0 + e1}) == 2 and len({s for _, _, s in e0 + e1}) > 1  # random flips/scales


def test_dataset_item_is_the_normalised_uint8_pipeline(tmp_path):
    """``dataset[i]``: float32 contiguous ``[3, h, w]`` = Normalize(flip(resize(uint8 image))), the
    pixels of a uint8 image (as in mmdetection), at ``img_shape``."""
    ds = build_dataset(_digits_cfg(tmp_path, flip_prob=1.0), "train")
    raw, raw_t = ds.get_raw(0)
    torch.manual_seed(7)
    image, t = ds[0]
    assert image.dtype == torch.float32 and image.is_contiguous() and image.shape == (3, *t["img_shape"])
    assert t["flip"] is True and "normalize" not in t
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    pixels = image * std + mean
    assert (pixels - pixels.round()).abs().max() < 1e-3 and pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3
    expected = resize_image(raw, t["img_shape"]).flip(-1)
    assert torch.equal(pixels.round().to(torch.uint8), expected)


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_batches_equal_plain_collate_of_dataset_items(tmp_path, workers):
    """The loader normalises into the batch (deferred Normalize); its batches are bit-identical to
    collating ``dataset[i]`` (normalised per image) under the same per-item seeds."""
    ds = build_dataset(_digits_cfg(tmp_path), "train")
    loader = build_dataloader(ds, batch_size=5, workers=workers, shuffle=True, seed=3)
    set_epoch(loader, 1)
    keys = list(loader.sampler)
    plain = SeededDataset(ds)  # no deferral: each item normalised on its own
    for b, (images, targets) in enumerate(loader):
        ref_images, ref_targets = collate([plain[k] for k in keys[5 * b: 5 * b + 5]])
        assert images.dtype == torch.float32 and torch.equal(images, ref_images)
        for t, r in zip(targets, ref_targets):
            assert "normalize" not in t and t.keys() == r.keys()
            assert torch.equal(t["boxes"], r["boxes"]) and torch.equal(t["labels"], r["labels"])
            assert (t["img_shape"], t["pad_shape"], t["flip"]) == (r["img_shape"], r["pad_shape"], r["flip"])
    del loader


def test_split_normalize_dataset_views_leave_the_dataset_as_it_was(tmp_path):
    ds = build_dataset(_digits_cfg(tmp_path, flip_prob=0.0), "train")
    wrapped = torch.utils.data.Subset(RepeatDataset(ds, 2), [1, len(ds) + 1])
    view, norm = split_normalize_dataset(wrapped)
    assert isinstance(norm, Normalize) and norm is ds.transforms.transforms[-1]
    assert type(view) is torch.utils.data.Subset and view.indices == [1, len(ds) + 1] and len(view) == 2
    assert type(view.dataset) is RepeatDataset and view.dataset.times == 2 and view.dataset.dataset is not ds
    assert [type(t) for t in view.dataset.dataset.transforms.transforms] == [Resize]
    assert [type(t) for t in ds.transforms.transforms] == [Resize, Normalize]  # not modified
    torch.manual_seed(0)
    image, t = view[1]
    torch.manual_seed(0)
    ref, rt = wrapped[1]
    assert image.dtype == torch.uint8 and ref.dtype == torch.float32 and t["image_id"] == rt["image_id"]
    assert torch.equal(norm(image, t)[0], ref) and torch.equal(ref, _hand_normalised(image))
    bare = RepeatDataset(torch.utils.data.TensorDataset(torch.zeros(2, 3, 4, 4)), 2)  # no Normalize to take out
    assert split_normalize_dataset(bare) == (bare, None)


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_batches_equal_hand_computed_normalisation(tmp_path, workers):
    """The loader's batches: the uint8 resized/flipped images, normalised by the formula written
    out in numpy (bit-identical) and zero-padded to 32."""
    ds = build_dataset(_digits_cfg(tmp_path), "train")
    loader = build_dataloader(ds, batch_size=4, workers=workers, shuffle=True, seed=2)
    set_epoch(loader, 1)
    keys = list(loader.sampler)
    raw = SeededDataset(split_normalize_dataset(ds)[0])  # the same items, not normalised
    for b, (images, targets) in enumerate(loader):
        for i, (key, t) in enumerate(zip(keys[4 * b: 4 * b + 4], targets)):
            image, rt = raw[key]
            h, w = t["img_shape"]
            assert image.dtype == torch.uint8 and rt["img_shape"] == (h, w) and rt["flip"] == t["flip"]
            expected = torch.zeros(images.shape[1:])
            expected[:, :h, :w] = _hand_normalised(image)
            assert torch.equal(images[i], expected)
    del loader


def _collate_telling_shared(batch):
    images, _ = collate(batch, normalize=Normalize())
    return images.is_shared(), images


def test_worker_batches_are_built_in_shared_memory():
    """In a worker the batch is allocated in shared memory (public API: torch's default_collate), so
    handing it to the main process copies nothing; in the main process it is ordinary memory."""
    items = [(torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8), {"img_shape": (20, 30)}) for _ in range(4)]
    loader = torch.utils.data.DataLoader(items, batch_size=2, num_workers=1, collate_fn=_collate_telling_shared)
    batches = list(loader)
    assert len(batches) == 2 and all(shared for shared, _ in batches)
    for b, (_, images) in enumerate(batches):
        assert torch.equal(images, collate(items[2 * b: 2 * b + 2], normalize=Normalize())[0])
    assert not collate(items[:1])[0].is_shared()
