"""Pascal VOC box mAP (``locdistill test ... --eval mAP``), as mmdetection 2.x computes it.

Per class, the detections of all images are ranked by score; in each image a
detection is matched to the ground-truth box of its class it overlaps most. With
``IoU >= thr`` it is a true positive if that box is not matched yet and not
*difficult*, a false positive if the box was already matched, and is **ignored**
(neither) if the box is difficult; below ``thr`` it is a false positive. Difficult
boxes do not count as ground truth (``gts``). AP from the precision/recall curve:
``"area"`` (all points: the area under the monotone precision envelope) or
``"11points"`` (VOC2007: mean of the best precision at recall ≥ 0, 0.1, …, 1).
mAP is the mean over the classes that have ground truth.

The seed's VOC table adds the mean of mAP over IoU 0.50:0.05:0.95 (its "AP") and
prints the list ``AP50 … AP95``; :func:`voc_metrics` returns all of them.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..data.coco import load_coco_json
from ..errors import ConfigError

IOU_THRS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50, 0.55, ..., 0.95
MODES = ("area", "11points")
_EPS = np.finfo(np.float32).eps


def _np(x: Any, dtype, shape) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(shape)


def average_precision(recall: np.ndarray, precision: np.ndarray, mode: str = "area") -> float:
    """AP of one precision/recall curve (``recall [D]``, ``precision [D]``, in rank order)."""
    if mode == "11points":
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.linspace(0, 1, 11)]))
    if mode != "area":
        raise ValueError(f"AP mode must be one of {MODES}, got {mode!r}")
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope (max to the right)
    step = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _pairwise_iou(a: np.ndarray, b: np.ndarray, legacy: bool) -> np.ndarray:
    """IoU ``[A, B]`` of xyxy ``a [A, 4]`` and ``b [B, 4]`` (``legacy``: +1 on widths and heights)."""
    one = 1.0 if legacy else 0.0
    wh = np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]) + one
    inter = np.clip(wh, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)
    area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, _EPS)


def voc_eval(
    detections: Sequence[Mapping[str, Any]],
    annotations: Sequence[Mapping[str, Any]],
    num_classes: int,
    iou_thrs: Sequence[float] = (0.5,),
    mode: str = "area",
    legacy_coordinate: bool = False,
) -> dict[str, Any]:
    """VOC AP per class and IoU threshold.

    Args:
        detections: per image ``{"boxes" [K, 4] xyxy, "scores" [K], "labels" [K] in 0..C-1}``
            (tensors or arrays).
        annotations: per image (same order) ``{"boxes" [G, 4], "labels" [G], "ignore" [G] bool}``
            (``ignore``: difficult; optional).
        num_classes: C.
        iou_thrs: thresholds T (a detection matches at ``IoU >= thr``).
        mode: ``"area"`` or ``"11points"``.
        legacy_coordinate: the VOC devkit's ``+1`` on widths and heights (mmdetection 2.x,
            which the LD code uses, does not add it: default False).
    Returns:
        ``{"ap": [T, C], "recall": [T, C] (at the last detection), "num_gts": [C],
        "num_dets": [C], "map": [T] (mean AP over classes with ground truth),
        "iou_thrs": tuple, "mode": mode}``.
    """
    if len(detections) != len(annotations):
        raise ValueError(f"{len(detections)} detection sets for {len(annotations)} annotated images")
    if mode not in MODES:
        raise ValueError(f"AP mode must be one of {MODES}, got {mode!r}")
    thrs = np.asarray(iou_thrs, dtype=np.float64)
    # 1) per detection: its class, score, best-overlapping GT of its class (global id) and that IoU
    labels_all, scores_all, gt_all, iou_all = [], [], [], []
    gt_ignore, gt_labels = [], []
    num_gt_total = 0
    for det, ann in zip(detections, annotations):
        d_boxes = _np(det["boxes"], np.float64, (-1, 4))
        d_scores = _np(det["scores"], np.float64, (-1,))
        d_labels = _np(det["labels"], np.int64, (-1,))
        g_boxes = _np(ann["boxes"], np.float64, (-1, 4))
        g_labels = _np(ann["labels"], np.int64, (-1,))
        ignore = ann.get("ignore")
        g_ignore = np.zeros(len(g_labels), bool) if ignore is None else _np(ignore, bool, (-1,))
        best_gt = np.full(len(d_labels), -1, dtype=np.int64)
        best_iou = np.full(len(d_labels), -1.0)
        if len(g_labels) and len(d_labels):
            iou = _pairwise_iou(d_boxes, g_boxes, legacy_coordinate)
            iou[d_labels[:, None] != g_labels[None, :]] = -1.0
            j = iou.argmax(1)
            best_iou = iou[np.arange(len(j)), j]
            best_gt = np.where(best_iou >= 0, j + num_gt_total, -1)
        labels_all.append(d_labels)
        scores_all.append(d_scores)
        gt_all.append(best_gt)
        iou_all.append(best_iou)
        gt_ignore.append(g_ignore)
        gt_labels.append(g_labels)
        num_gt_total += len(g_labels)
    labels = np.concatenate(labels_all) if labels_all else np.zeros(0, np.int64)
    scores = np.concatenate(scores_all) if scores_all else np.zeros(0)
    best_gt = np.concatenate(gt_all) if gt_all else np.zeros(0, np.int64)
    best_iou = np.concatenate(iou_all) if iou_all else np.zeros(0)
    ignore = np.concatenate(gt_ignore) if gt_ignore else np.zeros(0, bool)
    g_labels = np.concatenate(gt_labels) if gt_labels else np.zeros(0, np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"detection labels must be in 0..{num_classes - 1}")

    num_gts = np.bincount(g_labels[~ignore], minlength=num_classes)[:num_classes]
    ap = np.zeros((len(thrs), num_classes))
    recall_at_end = np.zeros((len(thrs), num_classes))
    num_dets = np.zeros(num_classes, dtype=np.int64)
    # 2) per class: rank by score; at each threshold the first detection on a GT is its TP
    for c in range(num_classes):
        sel = np.nonzero(labels == c)[0]
        num_dets[c] = len(sel)
        if not len(sel):
            continue
        sel = sel[np.argsort(-scores[sel], kind="stable")]
        gt, iou = best_gt[sel], best_iou[sel]
        hard = np.where(gt >= 0, ignore[np.maximum(gt, 0)], False)
        for t, thr in enumerate(thrs):
            hit = iou >= thr
            tp = np.zeros(len(sel), bool)
            cand = np.nonzero(hit & ~hard)[0]
            _, first = np.unique(gt[cand], return_index=True)
            tp[cand[first]] = True
            fp = ~hit | (hit & ~hard & ~tp)
            tp_cum, fp_cum = np.cumsum(tp), np.cumsum(fp)
            rec = tp_cum / max(num_gts[c], _EPS)
            prec = tp_cum / np.maximum(tp_cum + fp_cum, _EPS)
            ap[t, c] = average_precision(rec, prec, mode)
            recall_at_end[t, c] = rec[-1]
    has_gt = num_gts > 0
    mean_ap = ap[:, has_gt].mean(1) if has_gt.any() else np.zeros(len(thrs))
    return {"ap": ap, "recall": recall_at_end, "num_gts": num_gts, "num_dets": num_dets, "map": mean_ap,
            "iou_thrs": tuple(float(t) for t in thrs), "mode": mode}


def summarize(result: Mapping[str, Any]) -> dict[str, float]:
    """Flat metrics of a :func:`voc_eval` result over ``IOU_THRS``: ``mAP`` (at IoU 0.5),
    ``AP`` (mean of the mAPs over the thresholds, the seed's VOC "AP"), ``AP50``, ``AP55``,
    …, ``AP95`` and ``AR100`` (final recall averaged over thresholds and the classes with
    ground truth; at most ``test.max_per_img`` = 100 detections per image)."""
    thrs, maps = result["iou_thrs"], result["map"]
    out = {"mAP": float(maps[0])}
    out["AP"] = float(np.mean(maps))
    for t, m in zip(thrs, maps):
        out[f"AP{int(round(t * 100))}"] = float(m)
    has_gt = result["num_gts"] > 0
    out["AR100"] = float(result["recall"][:, has_gt].mean()) if has_gt.any() else 0.0
    return out


def _ascii_table(rows: Sequence[Sequence[str]], footer_rows: int = 1) -> list[str]:
    """Rows of cells as the seed prints them (mmdetection's terminal table): every column as
    wide as its widest cell, left-aligned, one space of padding, rules above and below the
    header and above the last ``footer_rows`` rows."""
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def row(cells):
        return "|" + "|".join(f" {c:<{w}} " for c, w in zip(cells, widths)) + "|"

    body = [row(r) for r in rows]
    split = len(rows) - footer_rows
    return [rule, body[0], rule, *body[1:split], rule, *body[split:], rule]


def format_voc_table(result: Mapping[str, Any], classes: Sequence[str]) -> str:
    """The seed's VOC printout (the LD README's example): a title line, the table of
    ``class, gts, dets, recall, ap`` at the first IoU threshold with the ``mAP`` row, then
    (with several thresholds) ``AP:`` (the mean of the mAPs over IoU 0.50:0.95) and the list
    ``['AP50: …', …, 'AP95: …']``.

    The seed prints one such table per threshold (its README shows the last, at IoU 0.95);
    here the table is the one at IoU 0.50, the threshold of the reported mAP.
    """
    thr = result["iou_thrs"][0]
    rows = [["class", "gts", "dets", "recall", "ap"]]
    for c, name in enumerate(classes):
        rows.append([str(name), str(int(result["num_gts"][c])), str(int(result["num_dets"][c])),
                     f"{result['recall'][0, c]:.3f}", f"{result['ap'][0, c]:.3f}"])
    rows.append(["mAP", "", "", "", f"{result['map'][0]:.3f}"])
    lines = [f"VOC mAP @ IoU {thr:.2f} ({result['mode']})", *_ascii_table(rows)]
    if len(result["iou_thrs"]) > 1:
        lines.append(f"AP:  {float(np.mean(result['map']))}")
        lines.append(str([f"AP{int(round(t * 100))}: {m:.6f}" for t, m in zip(result["iou_thrs"], result["map"])]))
    return "\n".join(lines)


def coco_json_annotations(json_path, image_ids: Sequence[Any], cat_ids: Sequence[int]) -> list[dict]:
    """Ground truth of ``image_ids`` from a COCO-format JSON for VOC mAP: boxes xyxy,
    labels by position in ``cat_ids`` (other categories left out), crowd boxes as ignore."""
    data = load_coco_json(json_path)
    label_of = {cid: k for k, cid in enumerate(cat_ids)}
    per_image: dict[Any, list] = {iid: [] for iid in image_ids}
    for ann in data["annotations"]:
        rows = per_image.get(ann.get("image_id"))
        if rows is None or ann.get("category_id") not in label_of:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            continue
        rows.append((x, y, x + w, y + h, label_of[ann["category_id"]], bool(ann.get("iscrowd", 0))))
    out = []
    for iid in image_ids:
        arr = np.asarray([r[:5] for r in per_image[iid]], dtype=np.float64).reshape(-1, 5)
        out.append({"boxes": arr[:, :4], "labels": arr[:, 4].astype(np.int64),
                    "ignore": np.asarray([r[5] for r in per_image[iid]], dtype=bool)})
    return out


def resolve_mode(mode: str, dataset: Any = None) -> str:
    """``data.map_mode``: ``"auto"`` is ``"11points"`` for VOC2007 data (as the devkit and
    mmdetection do), ``"area"`` otherwise."""
    if mode == "auto":
        return "11points" if getattr(dataset, "is_voc2007", False) else "area"
    if mode not in MODES:
        raise ConfigError(f"data.map_mode={mode!r} is not valid; use 'auto', 'area' or '11points'")
    return mode


def voc_metrics(dataset: Any, detections: Sequence[Mapping[str, Any]], image_ids: Sequence[Any],
                mode: str = "auto", iou_thrs: Sequence[float] = IOU_THRS,
                legacy_coordinate: bool = False) -> tuple[dict[str, float], dict[str, Any]]:
    """VOC mAP of per-image ``detections`` (for ``image_ids``) on ``dataset``.

    A :class:`~locdistill.data.voc.VOCDetection` gives its annotations (difficult =
    ignore); any other dataset with ``json_path`` / ``cat_ids`` is read as COCO JSON
    (crowd = ignore). Returns ``(summarize(result), result)``.
    """
    if hasattr(dataset, "get_annotation"):
        index = {iid: k for k, iid in enumerate(dataset.img_ids)}
        annotations = [dataset.get_annotation(index[i]) for i in image_ids]
    else:
        annotations = coco_json_annotations(dataset.json_path, image_ids, list(dataset.cat_ids))
    result = voc_eval(detections, annotations, len(dataset.classes), iou_thrs, resolve_mode(mode, dataset),
                      legacy_coordinate)
    return summarize(result), result

