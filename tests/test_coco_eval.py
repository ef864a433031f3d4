"""COCO evaluation: conversion, perfect detections, agreement with pycocotools, empty results."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch

from locdistill.evaluation import METRIC_KEYS, coco_evaluate, detections_to_coco, format_metrics_table

CAT_IDS = [2, 5, 9]  # non-contiguous on purpose


@pytest.fixture(scope="module")
def gt_path(tmp_path_factory):
    """30 images of 320x240 with 0-8 boxes of 4..200 px (small, medium and large), one crowd."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(30):
        images.append({"id": 100 + i, "file_name": f"{i}.jpg", "width": 320, "height": 240})
        for _ in range(rng.integers(0, 9)):
            w, h = np.exp(rng.uniform(np.log(4), np.log(200), size=2))
            x, y = rng.uniform(0, 320 - w), rng.uniform(0, 240 - h)
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": int(rng.choice(CAT_IDS)),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    anns.append({"id": len(anns) + 1, "image_id": 100, "category_id": 2, "bbox": [0, 0, 100, 100],
                 "area": 10000.0, "iscrowd": 1})
    cats = [{"id": c, "name": f"c{c}"} for c in CAT_IDS]
    path = tmp_path_factory.mktemp("eval") / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _gt_as_detections(gt_path):
    data = json.loads(gt_path.read_text())
    dets, ids = [], [im["id"] for im in data["images"]]
    for image_id in ids:
        anns = [a for a in data["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        dets.append({
            "boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
            "scores": torch.linspace(0.9, 0.5, len(anns)),
            "labels": torch.tensor([CAT_IDS.index(a["category_id"]) for a in anns], dtype=torch.int64),
        })
    return dets, ids


def test_detections_to_coco():
    det = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.5, 1.5, 2.5, 4.0]]),
           "scores": torch.tensor([0.9, 0.25]), "labels": torch.tensor([2, 0])}
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    out = detections_to_coco([det, empty], [7, 8], CAT_IDS)
    assert out == [
        {"image_id": 7, "category_id": 9, "bbox": [10.0, 20.0, 20.0, 40.0], "score": pytest.approx(0.9)},
        {"image_id": 7, "category_id": 2, "bbox": [0.5, 1.5, 2.0, 2.5], "score": pytest.approx(0.25)},
    ]
    assert all(type(v) in (int, float) for r in out for v in [r["image_id"], r["category_id"], r["score"], *r["bbox"]])
    json.dumps(out)  # serialisable as is


def test_ground_truth_as_detections_scores_one(gt_path, capsys):
    dets, ids = _gt_as_detections(gt_path)
    m = coco_evaluate(gt_path, detections_to_coco(dets, ids, CAT_IDS))
    assert list(m) == list(METRIC_KEYS)
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert m[k] == pytest.approx(1.0), k
    assert capsys.readouterr().out == ""  # silent unless verbose


def test_agrees_with_pycocotools_on_random_detections(gt_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(1)
    dets, ids = _gt_as_detections(gt_path)
    noisy = []
    for d in dets:
        n = len(d["boxes"])
        boxes = d["boxes"] + torch.from_numpy(rng.normal(0, 4, (n, 4)))
        corner = torch.from_numpy(rng.uniform(0, 200, (5, 2)))
        extra = torch.cat([corner, corner + torch.from_numpy(rng.uniform(2, 90, (5, 2)))], 1)  # false positives
        labels = torch.cat([d["labels"], torch.from_numpy(rng.integers(0, 3, 5))])
        flip = torch.from_numpy(rng.random(len(labels)) < 0.15)
        labels = torch.where(flip, torch.from_numpy(rng.integers(0, 3, len(labels))), labels)
        scores = torch.from_numpy(rng.random(n + 5))
        noisy.append({"boxes": torch.cat([boxes, extra]), "scores": scores, "labels": labels})
    results = detections_to_coco(noisy, ids, CAT_IDS)
    ours = coco_evaluate(gt_path, results)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ref = dict(zip(METRIC_KEYS, ev.stats.tolist()))
    assert 0.05 < ours["AP"] < 0.95  # a non-trivial case
    for k in METRIC_KEYS:
        assert ours[k] == pytest.approx(ref[k], abs=1e-6), k
    # restricting to some categories / images agrees too
    ours = coco_evaluate(gt_path, results, cat_ids=[5, 9], img_ids=ids[:20])
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "bbox")
        ev.params.catIds, ev.params.imgIds = [5, 9], ids[:20]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert np.allclose([ours[k] for k in METRIC_KEYS], ev.stats, atol=1e-6)


def test_empty_detections(gt_path):
    assert coco_evaluate(gt_path, []) == {k: 0.0 for k in METRIC_KEYS}
    none = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    assert coco_evaluate(gt_path, detections_to_coco([none, none], [100, 101], CAT_IDS))["AP"] == 0.0


def test_format_metrics_table():
    table = format_metrics_table({k: (0.5 if k != "APl" else -1.0) for k in METRIC_KEYS})
    assert "0.500" in table and "n/a" in table and len(table.splitlines()) == 13
