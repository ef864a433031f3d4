"""COCO box metrics through faster-coco-eval (the same 12 numbers as pycocotools)."""
from __future__ import annotations

import contextlib
import io
import math
import os
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..data.coco import load_coco_json

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_DESCRIPTIONS = (
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
)


def detections_to_coco(
    detections: Sequence[dict], image_ids: Sequence[Any], cat_ids: Sequence[int]
) -> list[dict]:
    """Turn per-image detections into COCO result entries.

    ``detections[i]`` = ``{"boxes": [K, 4] xyxy (original-image pixels), "scores": [K],
    "labels": [K] contiguous 0..C-1}`` for the image whose JSON id is ``image_ids[i]``;
    ``cat_ids[label]`` is the category id. Returns ``[{"image_id", "category_id", "bbox":
    [x, y, w, h], "score"}, ...]`` with plain Python numbers.
    """
    if len(detections) != len(image_ids):
        raise ValueError(f"{len(detections)} detection sets for {len(image_ids)} image ids")
    cat_lut = np.asarray(cat_ids, dtype=np.int64)
    results: list[dict] = []
    for det, image_id in zip(detections, image_ids):
        boxes = torch.as_tensor(det["boxes"]).detach().to("cpu", torch.float64).reshape(-1, 4)
        if boxes.shape[0] == 0:
            continue
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        scores = torch.as_tensor(det["scores"]).detach().to("cpu", torch.float64).tolist()
        cats = cat_lut[torch.as_tensor(det["labels"]).detach().cpu().long().numpy()].tolist()
        results.extend(
            {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
            for b, s, c in zip(xywh, scores, cats)
        )
    return results


def _load_gt(gt_json: str | os.PathLike | dict) -> dict:
    """The GT JSON as a dict, with the fields COCOeval needs (``area``, ``iscrowd``) filled in.

    Boxes with a NaN or infinite coordinate are left out: no detection can match them (they
    would only count as misses), and :class:`~locdistill.data.coco.CocoDetection` drops them
    from training with a warning that counts them.
    """
    if isinstance(gt_json, dict):
        data = gt_json
    else:
        data = load_coco_json(gt_json)  # one place for the file errors
    kept = []
    for ann in data.get("annotations", []):
        if "bbox" in ann:
            if not all(math.isfinite(float(v)) for v in ann["bbox"]):
                continue
            if not math.isfinite(float(ann.get("area", math.nan))):
                ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
        ann.setdefault("iscrowd", 0)
        kept.append(ann)
    return {**data, "annotations": kept}


def coco_evaluate(
    gt_json: str | os.PathLike | dict,
    coco_results: Sequence[dict],
    cat_ids: Optional[Sequence[int]] = None,
    img_ids: Optional[Sequence[Any]] = None,
    verbose: bool = False,
) -> dict[str, float]:
    """Box AP/AR of ``coco_results`` against the ground truth ``gt_json`` (path or dict).

    Returns ``{AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl}`` as fractions
    in [0, 1] (``-1.0`` where COCO defines none: an area range without ground truth, as
    pycocotools reports it). ``cat_ids`` / ``img_ids`` restrict the evaluation (e.g. to the
    classes and images a dataset actually uses); by default every category and image of
    the JSON counts. Empty results score 0 where there is ground truth and -1 where there is
    none (no ground truth at all: every metric is -1). faster-coco-eval's printing is
    silenced unless ``verbose``.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    say = print if verbose else (lambda *args, **kwargs: None)
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        gt = COCO(_load_gt(gt_json), print_function=say)
        dt = gt.loadRes([dict(r) for r in coco_results])  # loadRes adds keys: don't touch the caller's
        ev = COCOeval_faster(gt, dt, iouType="bbox", print_function=say)
        if cat_ids is not None:
            ev.params.catIds = list(cat_ids)
        if img_ids is not None:
            ev.params.imgIds = list(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(METRIC_KEYS, ev.stats[: len(METRIC_KEYS)])}


def format_metrics_table(metrics: dict[str, float], title: str = "bbox") -> str:
    """The 12 COCO numbers as the familiar pycocotools summary (``n/a`` for -1)."""
    lines = [f"COCO {title} metrics"]
    for key, desc in zip(METRIC_KEYS, _DESCRIPTIONS):
        v = metrics.get(key)
        text = "n/a" if v is None or v < 0 else f"{v:.3f}"
        lines.append(f" {desc} = {text}   ({key})")
    return "\n".join(lines)
