"""Raw GFL head outputs → detections per image (mmdetection's test semantics).

Per level and image: sigmoid scores of every (location, class) pair; the top
``nms_pre`` pairs among those with score > ``score_thr``; their boxes decoded from the
anchor centre ``(j·s, i·s)`` with the Integral distances × stride, clipped to the
resized image; then all levels together: rescaled to the original image
(÷ ``scale_factor``), boxes with width or height ≤ 0 dropped, class-aware NMS,
the best ``max_per_img`` kept. The whole batch is processed with tensor ops; NMS runs
once for the batch with (image, class) groups.

``test.nms`` picks the NMS through :func:`locdistill.nms.get_nms`: ``"nms"`` (hard NMS,
torchvision) or ``"voting_cluster_diou"`` (the LD code's score-voting Cluster-DIoU-NMS,
DESIGN §6, :func:`locdistill.nms.voting_cluster_diou_nms`).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import Tensor

from ..config import TestConfig
from ..nms import NmsFn, get_nms
from .gfl_head import integral_distances


def _meta_tensors(image_metas: Sequence[Mapping], device: torch.device) -> tuple[Tensor, Tensor]:
    """Per image ``[h, w]`` of the resized image and ``[w_s, h_s, w_s, h_s]`` scale factors."""
    shapes, factors = [], []
    for i, meta in enumerate(image_metas):
        if "img_shape" not in meta:
            raise ValueError(
                f"image_metas[{i}] has no 'img_shape' (h, w) of the resized, unpadded image; "
                f"the data pipeline must provide it (keys found: {sorted(meta)})"
            )
        h, w = meta["img_shape"][:2]
        shapes.append([float(h), float(w)])
        sf = meta.get("scale_factor", (1.0, 1.0))
        sf = [float(v) for v in (sf.tolist() if isinstance(sf, Tensor) else
                                 (sf if isinstance(sf, (list, tuple)) else [sf]))]
        if len(sf) == 1:
            sf = sf * 2
        if len(sf) not in (2, 4):
            raise ValueError(f"image_metas[{i}]['scale_factor'] must be (w_scale, h_scale), got {sf}")
        factors.append(sf[:2] * 2)
    return (torch.tensor(shapes, dtype=torch.float32, device=device),
            torch.tensor(factors, dtype=torch.float32, device=device))


def _level_candidates(cls_logits: Tensor, box_logits: Tensor, stride: int, project: Tensor,
                      nms_pre: int, score_thr: float, img_hw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``nms_pre`` (location, class) pairs of one level for every image.

    Args:
        cls_logits: ``[B, C, H, W]``; box_logits: ``[B, 4(n+1), H, W]``;
        project: ``[n+1]``; img_hw: ``[B, 2]`` resized image sizes for clipping.
    Returns:
        boxes ``[B, k, 4]`` (clipped, resized-image pixels), scores ``[B, k]``,
        labels ``[B, k]`` (int64). ``k`` may exceed the pairs above ``score_thr``: the
        caller still applies the threshold.
    """
    b, c, h, w = cls_logits.shape
    hw = h * w
    # Channel-major flat index (class * HW + location) avoids a permute copy; the order of
    # the logits equals the order of the sigmoid scores, so top-k runs on raw logits.
    logits = cls_logits.reshape(b, c * hw)
    k = c * hw if nms_pre <= 0 else min(nms_pre, c * hw)
    if 0.0 < score_thr < 1.0:
        # Top-k among the pairs above the threshold == the above-threshold part of the
        # overall top-k, so k can shrink to the most any image has above it (a slightly
        # lower logit bound keeps this an upper count despite rounding).
        bound = math.log(score_thr / (1.0 - score_thr)) - 1e-3
        k = min(k, int((logits > bound).sum(1).max()))
    top_logits, flat = logits.topk(k, dim=1, sorted=False)  # [B, k]
    scores = top_logits.float().sigmoid()
    labels = flat // hw
    loc = flat - labels * hw  # [B, k]
    nb = box_logits.shape[1]
    picked = box_logits.reshape(b, nb, hw).gather(2, loc.unsqueeze(1).expand(b, nb, k))  # [B, 4(n+1), k]
    dist = integral_distances(picked.transpose(1, 2).float(), project) * stride  # [B, k, 4]
    ys = torch.div(loc, w, rounding_mode="floor")
    cx = (loc - ys * w).float() * stride
    cy = ys.float() * stride
    max_xy = img_hw.flip(1).repeat(1, 2).unsqueeze(1)  # [B, 1, 4] = (w, h, w, h)
    boxes = torch.stack((cx - dist[..., 0], cy - dist[..., 1], cx + dist[..., 2], cy + dist[..., 3]), dim=-1)
    boxes = torch.minimum(boxes.clamp(min=0), max_xy)
    return boxes, scores, labels


def postprocess(outputs: Mapping[str, Sequence[Tensor]], image_metas: Sequence[Mapping],
                test_cfg: TestConfig, strides: Sequence[int], reg_max: int) -> list[dict[str, Tensor]]:
    """Detections per image from raw GFL head outputs.

    Args:
        outputs: ``{"cls_logits": [B,C,H,W] per level, "box_logits": [B,4(n+1),H,W] per level}``
            (box logits after the level's Scale), levels ordered as ``strides``.
        image_metas: per image a dict with ``img_shape`` ``(h, w)`` of the resized, unpadded
            image and ``scale_factor`` ``(w_scale, h_scale)`` (resized / original; default 1).
        test_cfg: ``score_thr``, ``nms_pre`` (per level; ≤ 0 = all), ``nms``, ``iou_thr``,
            ``max_per_img`` (≤ 0 = all).
        strides: stride of each level (e.g. ``(8, 16, 32, 64, 128)``).
        reg_max: n, the box distributions have ``n+1`` bins per side.
    Returns:
        one dict per image: ``boxes [K,4]`` xyxy float32 in original-image pixels,
        ``scores [K]`` float32 (descending), ``labels [K]`` int64 in ``0..C-1``.
    """
    nms_fn = get_nms(test_cfg.nms)
    cls_levels, box_levels = list(outputs["cls_logits"]), list(outputs["box_logits"])
    if not (len(cls_levels) == len(box_levels) == len(strides)):
        raise ValueError(
            f"postprocess got {len(cls_levels)} cls levels, {len(box_levels)} box levels and "
            f"{len(strides)} strides; they must match"
        )
    num_images, num_classes = cls_levels[0].shape[:2]
    if len(image_metas) != num_images:
        raise ValueError(f"postprocess got {len(image_metas)} image_metas for a batch of {num_images}")
    device = cls_levels[0].device
    img_hw, scale = _meta_tensors(image_metas, device)
    project = torch.linspace(0, reg_max, reg_max + 1, device=device)

    per_level = [_level_candidates(c, b, s, project, test_cfg.nms_pre, test_cfg.score_thr, img_hw)
                 for c, b, s in zip(cls_levels, box_levels, strides)]
    boxes = torch.cat([p[0] for p in per_level], dim=1) / scale.unsqueeze(1)  # [B, K, 4]
    scores = torch.cat([p[1] for p in per_level], dim=1)  # [B, K]
    labels = torch.cat([p[2] for p in per_level], dim=1)  # [B, K]
    return finish_detections(boxes, scores, labels, num_classes, nms_fn, test_cfg)


def finish_detections(boxes: Tensor, scores: Tensor, labels: Tensor, num_classes: int, nms_fn: NmsFn,
                      test_cfg: TestConfig) -> list[dict[str, Tensor]]:
    """The last step of every family's post-processing: candidates ``boxes [B,K,4]`` (original-image
    pixels), ``scores [B,K]``, ``labels [B,K]`` → score threshold, non-empty boxes, class-aware NMS
    over the whole batch (groups = image × class), at most ``test_cfg.max_per_img`` per image."""
    num_images = boxes.shape[0]
    valid = ((scores > test_cfg.score_thr)
             & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1]))
    image_ids = torch.arange(num_images, device=boxes.device).unsqueeze(1).expand_as(labels)[valid]
    boxes, scores, labels = boxes[valid], scores[valid], labels[valid]

    boxes, scores, keep = nms_fn(boxes, scores, image_ids * num_classes + labels, test_cfg.iou_thr)
    labels, image_ids = labels[keep], image_ids[keep]
    results = []
    for i in range(num_images):
        sel = (image_ids == i).nonzero().squeeze(1)
        if test_cfg.max_per_img > 0:
            sel = sel[: test_cfg.max_per_img]
        results.append({"boxes": boxes[sel], "scores": scores[sel], "labels": labels[sel]})
    return results
