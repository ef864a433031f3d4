"""Raw YOLO head outputs → detections per image.

The test semantics of :mod:`locdistill.models.postprocess` (per level the top ``nms_pre`` (location, class)
pairs above ``score_thr``, boxes clipped to the resized image, rescaled to the original image, class-aware
NMS through :func:`locdistill.nms.get_nms`, the best ``max_per_img``) with two differences of the family:
distances start at the cell centre ``((j+0.5)·s, (i+0.5)·s)`` and the box distributions have ``reg_max+1``
bins (16: values 0..15).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from ...config import TestConfig
from ...nms import get_nms
from ..dense import integral
from ..postprocess import _meta_tensors, finish_detections

__all__ = ["POINT_OFFSET_KEY", "yolo_postprocess"]

#: the outputs key by which a YOLO model's raw outputs say where its distances start (0.5: cell centres)
POINT_OFFSET_KEY = "point_offset"


def yolo_postprocess(outputs: Mapping, image_metas: Sequence[Mapping], test_cfg: TestConfig,
                     strides: Sequence[int], reg_max: int) -> list[dict[str, Tensor]]:
    """Detections per image from raw YOLO outputs (arguments as :func:`locdistill.models.postprocess.postprocess`;
    ``reg_max`` = the top bin value, 15)."""
    nms_fn = get_nms(test_cfg.nms)
    offset = float(outputs.get(POINT_OFFSET_KEY, 0.5))
    cls_levels, box_levels = list(outputs["cls_logits"]), list(outputs["box_logits"])
    if not (len(cls_levels) == len(box_levels) == len(strides)):
        raise ValueError(f"postprocess got {len(cls_levels)} cls levels, {len(box_levels)} box levels and "
                         f"{len(strides)} strides; they must match")
    num_images, num_classes = cls_levels[0].shape[:2]
    if len(image_metas) != num_images:
        raise ValueError(f"postprocess got {len(image_metas)} image_metas for a batch of {num_images}")
    device = cls_levels[0].device
    img_hw, scale = _meta_tensors(image_metas, device)
    max_xy = img_hw.flip(1).repeat(1, 2).unsqueeze(1)  # [B, 1, 4] = (w, h, w, h)
    n1 = reg_max + 1
    all_boxes, all_scores, all_labels = [], [], []
    for cls, box, s in zip(cls_levels, box_levels, strides):
        b, c, h, w = cls.shape
        hw = h * w
        logits = cls.reshape(b, c * hw)  # channel-major: class * HW + location
        k = c * hw if test_cfg.nms_pre <= 0 else min(test_cfg.nms_pre, c * hw)
        top, flat = logits.topk(k, dim=1, sorted=False)  # [B, k]
        labels = flat // hw
        loc = flat - labels * hw
        picked = box.reshape(b, 4 * n1, hw).gather(2, loc.unsqueeze(1).expand(b, 4 * n1, k))  # [B, 4·n1, k]
        dist = integral(picked.transpose(1, 2).float().reshape(b, k, 4, n1)) * s  # [B, k, 4] pixels
        ys = torch.div(loc, w, rounding_mode="floor")
        cx = ((loc - ys * w).float() + offset) * s
        cy = (ys.float() + offset) * s
        boxes = torch.stack((cx - dist[..., 0], cy - dist[..., 1], cx + dist[..., 2], cy + dist[..., 3]), -1)
        all_boxes.append(torch.minimum(boxes.clamp(min=0), max_xy))
        all_scores.append(top.float().sigmoid())
        all_labels.append(labels)
    boxes = torch.cat(all_boxes, 1) / scale.unsqueeze(1)
    scores, labels = torch.cat(all_scores, 1), torch.cat(all_labels, 1)
    return finish_detections(boxes, scores, labels, num_classes, nms_fn, test_cfg)
