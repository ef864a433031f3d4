"""The bundled digits dataset: determinism, box tightness, balance, scale spread, caching."""
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from locdistill.data import digits as D
from locdistill.errors import ConfigError

SIZE = 128


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return root, D.ensure_digits(root, num_train=24, num_val=8, image_size=SIZE, seed=3)


@pytest.fixture(scope="module")
def scenes():
    return [D.render_scene(D.scene_rng(0, "train", i), SIZE, "train", return_masks=True) for i in range(150)]


def test_bundled_asset_is_real_mnist():
    images, labels = D.load_mnist()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [500] * 10
    assert D.ASSET.stat().st_size < 3_000_000
    assert (D.ASSET.parent / "MNIST_LICENSE.txt").is_file()


def test_train_val_use_disjoint_digits():
    _, labels = D.load_mnist()
    tr, va = D.split_indices(labels, "train"), D.split_indices(labels, "val")
    assert len(set(tr) & set(va)) == 0 and len(tr) + len(va) == 5000
    assert np.bincount(labels[va], minlength=10).tolist() == [100] * 10  # every class in val


def test_deterministic_and_cached(dataset, tmp_path):
    root, paths = dataset
    assert set(paths) == {"train_json", "train_images", "val_json", "val_images"}
    again = D.ensure_digits(tmp_path, num_train=24, num_val=8, image_size=SIZE, seed=3)
    for key in ("train_json", "val_json"):
        assert Path(paths[key]).read_bytes() == Path(again[key]).read_bytes()
    for name in ("000000.png", "000007.png"):
        assert (Path(paths["val_images"]) / name).read_bytes() == (Path(again["val_images"]) / name).read_bytes()
    # generated once: a second call reuses the files
    mtime = Path(paths["train_json"]).stat().st_mtime_ns
    assert D.ensure_digits(root, num_train=24, num_val=8, image_size=SIZE, seed=3) == paths
    assert Path(paths["train_json"]).stat().st_mtime_ns == mtime
    # other parameters live in another folder; no temporary folder is left behind
    other = D.ensure_digits(root, num_train=4, num_val=2, image_size=SIZE, seed=4)
    assert Path(other["train_json"]).parent != Path(paths["train_json"]).parent
    assert Path(other["train_json"]).read_bytes() != Path(paths["train_json"]).read_bytes()
    assert not [p for p in Path(root).iterdir() if p.name.startswith(".tmp")]


def test_crash_leaves_no_partial_dataset(tmp_path, monkeypatch):
    real = D.write_split

    def crash_on_val(out_dir, split, *args):
        if split == "val":
            raise KeyboardInterrupt
        return real(out_dir, split, *args)

    monkeypatch.setattr(D, "write_split", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        D.ensure_digits(tmp_path, num_train=3, num_val=2, image_size=SIZE, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_default_root_respects_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCDISTILL_CACHE", str(tmp_path))
    assert D.default_root() == tmp_path / "digits"
    monkeypatch.delenv("LOCDISTILL_CACHE")
    assert D.default_root() == Path.home() / ".cache" / "locdistill" / "digits"


def test_bad_parameters():
    with pytest.raises(ConfigError, match="digits_image_size"):
        D.ensure_digits("", num_train=2, num_val=2, image_size=16)
    with pytest.raises(ConfigError, match="digits_train"):
        D.ensure_digits("", num_train=0, num_val=2)


def test_boxes_inside_and_tight_around_visible_ink(scenes):
    for s in scenes:
        assert s["image"].shape == (SIZE, SIZE, 3) and s["image"].dtype == np.uint8
        assert 1 <= len(s["boxes"]) <= 7
        for (x, y, w, h), (visible, mx, my) in zip(s["boxes"], s["masks"]):
            assert x >= 0 and y >= 0 and w >= 1 and h >= 1 and x + w <= SIZE and y + h <= SIZE
            ink = visible >= D.INK_THRESHOLD
            full = np.zeros((SIZE, SIZE), bool)
            full[my:my + ink.shape[0], mx:mx + ink.shape[1]] = ink
            inside = full[y:y + h, x:x + w]
            assert inside.sum() == full.sum()  # all visible ink inside the box
            # tight: ink touches each of the four box edges
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()


def test_digits_are_visible_in_the_image(scenes):
    # the pixels under a digit's ink differ from the background just outside its box
    s = scenes[0]
    img = s["image"].astype(np.float32)
    for (x, y, w, h), (visible, mx, my) in zip(s["boxes"], s["masks"]):
        ink = visible >= 0.9
        if ink.sum() < 10:
            continue
        patch = img[my:my + ink.shape[0], mx:mx + ink.shape[1]]
        assert np.abs(patch[ink].mean(0) - patch[visible < 0.01].mean(0)).max() > 40


def test_class_balance(scenes):
    labels = np.concatenate([s["labels"] for s in scenes])
    counts = np.bincount(labels, minlength=10)
    assert len(labels) > 400
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()


def test_sizes_span_fpn_levels(scenes):
    boxes = np.concatenate([s["boxes"] for s in scenes])
    heights = boxes[:, 3]
    assert heights.min() <= 12 and heights.max() >= 0.5 * SIZE
    # small, medium and large (relative to the image) digits are all common
    for lo, hi in ((0, 20), (20, 40), (40, SIZE)):
        assert ((heights >= lo) & (heights < hi)).mean() > 0.1


def test_json_loads_in_pycocotools(dataset):
    from pycocotools.coco import COCO

    _, paths = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(paths["train_json"])
    assert coco.getCatIds() == list(range(1, 11))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == [str(d) for d in range(10)]
    assert len(coco.getImgIds()) == 24
    data = json.loads(Path(paths["train_json"]).read_text())
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        assert ann["area"] == w * h and ann["iscrowd"] == 0
    files = sorted(p.name for p in Path(paths["train_images"]).iterdir())
    assert files == sorted(im["file_name"] for im in data["images"])


def _fresh_batches(workers: int, epochs=(0, 0, 1), seed: int = 0):
    import torch

    from locdistill.config import load_config
    from locdistill.data.loader import build_dataset, build_dataloader, set_epoch

    cfg = load_config("demo/gfl_r18_digits")
    cfg.data.digits_fresh, cfg.data.digits_train, cfg.data.digits_image_size = True, 6, SIZE
    ds = build_dataset(cfg.data, "train")
    assert isinstance(ds, D.FreshDigits) and len(ds) == 6
    loader = build_dataloader(ds, 3, workers, shuffle=True, seed=seed)
    out = []
    for e in epochs:
        set_epoch(loader, e)
        out.append([(im.clone(), [t["boxes"].clone() for t in tg]) for im, tg in loader])
    return out


def test_fresh_digits_new_scenes_each_epoch_reproducibly():
    import torch

    first, again, next_epoch = _fresh_batches(workers=0)
    assert len(first) == 2  # 6 scenes per epoch in batches of 3
    for (a, ba), (b, bb) in zip(first, again):  # same (seed, epoch): the same scenes
        assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ba, bb))
    # another epoch: other scenes (images and boxes)
    assert not any(torch.equal(a, c) for (a, _), (c, _) in zip(first, next_epoch))
    # and none of them is a cached train scene
    cached = [D.render_scene(D.scene_rng(0, "train", i), SIZE, "train")["boxes"] for i in range(6)]
    fresh = [b for _, boxes in first + next_epoch for b in boxes]
    assert not any(len(c) == len(f) and np.array_equal(c[:, :2], f[:, :2].numpy()) for c in cached for f in fresh)


def test_fresh_digits_do_not_depend_on_workers():
    import torch

    (solo,) = _fresh_batches(workers=0, epochs=(1,))
    (pooled,) = _fresh_batches(workers=2, epochs=(1,))
    for (a, ba), (b, bb) in zip(solo, pooled):
        assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ba, bb))


def test_fresh_digits_targets_are_xyxy_boxes_of_the_rendered_scene():
    import torch

    ds = D.FreshDigits(4, SIZE, seed=5, transforms=lambda img, tgt: (img, tgt))
    torch.manual_seed(11)
    number = int(torch.randint(0, 2**62, ()))
    torch.manual_seed(11)
    image, target = ds[2]
    scene = D.render_scene(np.random.default_rng([5, 2, number]), SIZE, "train")
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.uint8
    assert torch.equal(image, torch.from_numpy(scene["image"]).permute(2, 0, 1))
    x, y, w, h = scene["boxes"].T
    assert target["boxes"].tolist() == np.stack([x, y, x + w, y + h], 1).astype(np.float32).tolist()
    assert target["labels"].tolist() == scene["labels"].tolist()
    assert target["image_id"] == 3 and target["ori_shape"] == (SIZE, SIZE)
    with pytest.raises(ConfigError, match="digits_train"):
        D.FreshDigits(0, SIZE, seed=0, transforms=None)


def test_jitter_boxes_statistics_and_bounds():
    rng = np.random.default_rng(0)
    boxes = np.tile([[40, 50, 20, 30]], (20000, 1))
    noisy = D.jitter_boxes(boxes, rng, 0.1, 160)
    x0, y0, x1, y1 = noisy[:, 0], noisy[:, 1], noisy[:, 0] + noisy[:, 2], noisy[:, 1] + noisy[:, 3]
    # each edge: unbiased, std = sigma x the box side (w = 20 for x edges, h = 30 for y edges)
    for edge, true, side in ((x0, 40, 20), (x1, 60, 20), (y0, 50, 30), (y1, 80, 30)):
        assert abs(edge.mean() - true) < 0.05 * side * 0.1 * 4
        assert abs(edge.std() - 0.1 * side) < 0.05 * 0.1 * side
    # clipped to the image, never narrower than 1 px; sigma 0 leaves the boxes as they are
    edge_boxes = np.array([[0, 0, 3, 3], [157, 157, 3, 3]])
    many = D.jitter_boxes(np.repeat(edge_boxes, 500, 0), rng, 0.5, 160)
    assert (many[:, :2] >= 0).all() and (many[:, :2] + many[:, 2:] <= 160).all() and (many[:, 2:] >= 1 - 1e-9).all()
    assert np.array_equal(D.jitter_boxes(edge_boxes, rng, 0.0, 160), edge_boxes)
    with pytest.raises(ConfigError, match="digits_box_noise"):
        D.ensure_digits("", num_train=2, num_val=2, image_size=SIZE, box_noise=0.9)


def test_box_noise_moves_train_boxes_only(dataset):
    from locdistill.boxes import bbox_overlaps
    import torch

    root, exact = dataset
    noisy = D.ensure_digits(root, num_train=24, num_val=8, image_size=SIZE, seed=3, box_noise=0.1)
    assert Path(noisy["train_json"]).parent != Path(exact["train_json"]).parent
    a, b = (json.loads(Path(p["train_json"]).read_text()) for p in (exact, noisy))
    assert [x["image_id"] for x in a["annotations"]] == [x["image_id"] for x in b["annotations"]]
    assert b["info"]["box_noise"] == 0.1
    xyxy = lambda anns: torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (t["bbox"] for t in anns)])
    iou = bbox_overlaps(xyxy(a["annotations"]), xyxy(b["annotations"]), is_aligned=True)
    assert 0.6 < iou.mean() < 0.95 and (iou < 0.999).float().mean() > 0.9  # moved, but the same digits
    # val boxes and images are exact: identical to the noise-free dataset
    assert Path(noisy["val_json"]).read_bytes() == Path(exact["val_json"]).read_bytes()
    assert (Path(noisy["val_images"]) / "000003.png").read_bytes() == (Path(exact["val_images"]) / "000003.png").read_bytes()
