"""Hostile input: non-finite boxes, high bit-depth images, sizes that disagree with the JSON,
errors inside DataLoader workers, val sets without ground truth."""
import json
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from locdistill.data.coco import CocoDetection, decode_rgb
from locdistill.evaluation import METRIC_KEYS, coco_evaluate
from test_data import _write_dataset

# ----------------------------------------------------------------------------- case 2: NaN / Infinity boxes


def _dropped_warnings(record):
    return [str(w.message) for w in record if "dropped" in str(w.message)]


def test_non_finite_boxes_are_dropped_and_counted(tmp_path):
    anns = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [4, 5, 20, 10], "area": 200, "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 7, "bbox": [4, 5, math.nan, 10], "area": 200, "iscrowd": 0},
        {"id": 3, "image_id": 11, "category_id": 3, "bbox": [2, 2, math.inf, 10], "area": 200, "iscrowd": 0},
        {"id": 4, "image_id": 11, "category_id": 3, "bbox": [math.nan, 2, 10, 10], "iscrowd": 0},
        {"id": 5, "image_id": 12, "category_id": 1, "bbox": [math.nan] * 4, "area": math.nan, "iscrowd": 0},
    ]
    path, img_dir = _write_dataset(tmp_path, annotations=anns)
    assert "NaN" in path.read_text() and "Infinity" in path.read_text()  # JSON's non-standard literals
    with pytest.warns(UserWarning) as record:
        ds = CocoDetection(path, img_dir)
    assert ds.num_dropped_boxes == 4
    messages = _dropped_warnings(record)
    assert len(messages) == 1 and "dropped 4 box" in messages[0] and str(path) in messages[0]
    assert "NaN" in messages[0]
    assert ds[0][1]["boxes"].tolist() == [[4, 5, 24, 15]]
    assert len(ds[1][1]["boxes"]) == 0 and len(ds[2][1]["boxes"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert CocoDetection(path, img_dir, filter_empty_gt=True).img_ids == [10]  # no all-NaN "background"


def test_evaluation_ignores_non_finite_ground_truth(tmp_path):
    """A NaN box cannot be matched by any detection: counted as a miss it would cap recall at 1/2."""
    gt = {"images": [{"id": 1, "file_name": "a.png", "width": 200, "height": 200}],
          "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500,
                           "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [math.nan, 10, 50, 50], "iscrowd": 0}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    m = coco_evaluate(path, [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}])
    assert m["AP"] == pytest.approx(1.0) and m["AR100"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- case 3: high bit-depth images

RAMP16 = np.tile(np.linspace(0, 65535, 300).round().astype(np.uint16), (5, 1))  # [5, 300] horizontal ramp
RAMP8 = np.rint(RAMP16 / 257).astype(np.int64)  # the same picture in 8 bits


HIGH_DEPTH = {
    "i16.png": lambda: Image.fromarray(RAMP16),  # PIL mode I;16 (16-bit grayscale PNG)
    "i16.tif": lambda: Image.fromarray(RAMP16),
    "i32.tif": lambda: Image.fromarray(RAMP16.astype(np.int32)),  # mode I holding 16-bit data
    "i32_wide.tif": lambda: Image.fromarray(RAMP8.astype(np.int32) * 100_000),  # mode I beyond 16 bits
    "f32.tif": lambda: Image.fromarray((RAMP16 / 65535).astype(np.float32)),  # mode F in [0, 1]
}


@pytest.mark.parametrize("name", HIGH_DEPTH)
def test_high_bit_depth_gray_decodes_like_its_8_bit_version(tmp_path, name):
    HIGH_DEPTH[name]().save(tmp_path / name)
    with Image.open(tmp_path / name) as check:
        assert check.mode in ("I;16", "I", "F")  # the modes whose conversion to RGB is broken in PIL
    image = decode_rgb(tmp_path / name)
    assert image.dtype == torch.uint8 and image.shape == (3, 5, 300)
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    assert np.abs(image[0].numpy().astype(np.int64) - RAMP8).max() <= 1


# ----------------------------------------------------------------------------- case 4: sizes that disagree


def test_image_size_unlike_the_json_is_warned_once_and_the_file_size_used(tmp_path, monkeypatch):
    anns = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [4, 5, 20, 10], "area": 200, "iscrowd": 0},
        {"id": 2, "image_id": 11, "category_id": 7, "bbox": [80, 60, 40, 30], "area": 1200, "iscrowd": 0},
        {"id": 3, "image_id": 12, "category_id": 3, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 4, "image_id": 12, "category_id": 3, "bbox": [40, 30, 10, 10], "area": 100, "iscrowd": 0},
    ]
    path, img_dir = _write_dataset(tmp_path, annotations=anns)  # the JSON says 64 x 48 for every image
    Image.new("RGB", (128, 96)).save(img_dir / "im1.png")  # larger: its box lies beyond the JSON's size
    Image.new("RGB", (32, 24)).save(img_dir / "im2.png")  # smaller: box 4 lies outside the file
    decoded, load = [], Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or load(self))
    with pytest.warns(UserWarning) as record:
        ds = CocoDetection(path, img_dir)
    assert decoded == []  # the sizes come from the file headers: no pixel is decoded
    monkeypatch.undo()
    sizes = [str(w.message) for w in record if "'width'" in str(w.message)]
    assert len(sizes) == 1, sizes
    assert "2 image" in sizes[0] and str(path) in sizes[0] and "im1.png" in sizes[0] and "128x96" in sizes[0]
    assert "fix:" in sizes[0]
    assert ds.num_size_mismatches == 2 and ds.num_dropped_boxes == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading every image (an epoch) warns no more
        items = [ds[i] for i in range(len(ds))]
    assert items[1][1]["ori_shape"] == (96, 128) and items[1][1]["boxes"].tolist() == [[80, 60, 120, 90]]
    assert items[2][1]["ori_shape"] == (24, 32) and items[2][1]["boxes"].tolist() == [[2, 2, 12, 12]]



# ----------------------------------------------------------------------------- case 8: errors in loader workers

TINY_MODEL = ["train.device=cpu", "train.epochs=1", "data.batch_size=2", "data.img_scale=(64, 64)",
              "model.backbone.base_channels=8", "model.neck.out_channels=32", "model.head.feat_channels=32",
              "model.head.stacked_convs=1", "model.head.num_groups=8"]


def _train_cli(tmp_path, path, img_dir, *overrides):
    data = [f"data.train_json={path}", f"data.train_images={img_dir}", f"data.val_json={path}",
            f"data.val_images={img_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOCDISTILL_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "locdistill", "train", "gfl/gfl_r18_fpn_coco_1x", "--work-dir",
                           str(tmp_path / "work"), "--set", *data, *TINY_MODEL, *overrides],
                          capture_output=True, text=True, timeout=300, env=env)


def test_corrupt_image_in_a_loader_worker_is_a_one_line_error(tmp_path):
    path, img_dir = _write_dataset(tmp_path, n_images=4)
    (img_dir / "im2.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    in_worker = _train_cli(tmp_path, path, img_dir, "data.workers=1")
    assert in_worker.returncode == 2, in_worker.stderr
    lines = in_worker.stderr.strip().splitlines()
    assert len(lines) <= 3 and "Traceback" not in in_worker.stderr, in_worker.stderr
    assert lines[-1].startswith("locdistill: error: cannot decode image file") and "im2.png" in lines[-1]
    in_main = _train_cli(tmp_path, path, img_dir, "data.workers=0")
    assert in_main.returncode == 2 and in_main.stderr.strip().splitlines()[-1] == lines[-1]


# ----------------------------------------------------------------------------- case 9: no ground truth


def _gt_file(tmp_path, annotations):
    gt = {"images": [{"id": 1, "file_name": "im0.png", "width": 300, "height": 300}],
          "categories": [{"id": 1, "name": "a"}], "annotations": annotations}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path


def test_metrics_without_detections_are_zero_where_defined_and_minus_one_where_not(tmp_path):
    small = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0}
    m = coco_evaluate(_gt_file(tmp_path, [small]), [])
    # pycocotools: a metric whose area range has no ground truth is -1 (undefined), a missed one is 0
    assert [k for k in METRIC_KEYS if m[k] == -1.0] == ["APm", "APl", "ARm", "ARl"]
    assert all(m[k] == 0.0 for k in METRIC_KEYS if k not in ("APm", "APl", "ARm", "ARl"))
    assert coco_evaluate(_gt_file(tmp_path, []), []) == {k: -1.0 for k in METRIC_KEYS}


def test_val_set_without_annotations_warns_and_scores_minus_one(tmp_path, capsys):
    from locdistill.config import load_config
    from locdistill.data.loader import build_dataloader, build_dataset
    from locdistill.engine.evaluate import evaluate
    from locdistill.models import build_detector

    path, img_dir = _write_dataset(tmp_path, annotations=[], n_images=2)
    cfg = load_config("gfl/gfl_r18_fpn_coco_1x", [*TINY_MODEL, "data.workers=0", "model.num_classes=3",
                                                  f"data.val_json={path}", f"data.val_images={img_dir}"])
    val_set = build_dataset(cfg.data, "val")
    loader = build_dataloader(val_set, 2, 0, shuffle=False)
    model = build_detector(cfg.model)
    for score_thr in (1.1, 0.0):  # no detections at all, then detections everywhere
        cfg.test.score_thr = score_thr
        capsys.readouterr()
        metrics, results = evaluate(model, loader, cfg, val_set, torch.device("cpu"))
        assert (len(results) == 0) == (score_thr > 1)
        assert metrics == {k: -1.0 for k in METRIC_KEYS}  # kept as pycocotools reports them
        out = "".join(capsys.readouterr().out.split())  # the console wraps long lines
        expected = f"{path}: the val set has no annotations; every metric is undefined (shown as n/a)"
        assert "".join(expected.split()) in out and "fix:" in out
