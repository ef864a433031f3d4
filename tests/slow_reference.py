"""Slow, loop-based references for the criterion tests (not collected by pytest).

Written straight from the formulas of DESIGN §4/§5, one image, one GT, one anchor at a
time, independent of locdistill's batched code. Assignment runs in float32 (as mmdet);
the loss arithmetic runs in float64.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

EPS32 = 1.1920928955078125e-07


def load_vectors() -> dict:
    """mmdet reference vectors: the shared spec if present, else the copy in tests/data."""
    shared = Path(__file__).resolve().parents[2] / "shared/specs/mmdet_reference_vectors.json"
    local = Path(__file__).resolve().parent / "data/mmdet_reference_vectors.json"
    return json.loads((shared if shared.is_file() else local).read_text())


# ----------------------------------------------------------------------------------
# anchors


def slow_anchors(featmap_sizes, strides, scale=8):
    """List of (x1, y1, x2, y2, stride, level) for every location, row-major per level."""
    out = []
    for lvl, ((h, w), s) in enumerate(zip(featmap_sizes, strides)):
        half = scale * s / 2
        for i in range(h):
            for j in range(w):
                out.append((j * s - half, i * s - half, j * s + half, i * s + half, s, lvl))
    return out


def slow_valid(featmap_sizes, strides, pad_hw):
    flags = []
    for (h, w), s in zip(featmap_sizes, strides):
        vh, vw = min(math.ceil(pad_hw[0] / s), h), min(math.ceil(pad_hw[1] / s), w)
        for i in range(h):
            for j in range(w):
                flags.append(i < vh and j < vw)
    return flags


# ----------------------------------------------------------------------------------
# ATSS


def _iou32(anchors: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """IoU of anchors [A,4] with one box [4], float32, written out by hand."""
    iw = (torch.minimum(anchors[:, 2], box[2]) - torch.maximum(anchors[:, 0], box[0])).clamp(min=0)
    ih = (torch.minimum(anchors[:, 3], box[3]) - torch.maximum(anchors[:, 1], box[1])).clamp(min=0)
    inter = iw * ih
    area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    area_b = (box[2] - box[0]) * (box[3] - box[1])
    return inter / torch.clamp(area_a + area_b - inter, min=1e-6)


def slow_atss(anchors: torch.Tensor, num_level, gts: torch.Tensor, topk: int = 9):
    """ATSS on one image's *valid* anchors. Returns (gt_inds list, thresholds list, ious [A,K])."""
    A, K = anchors.shape[0], gts.shape[0]
    if K == 0:
        return [-1] * A, [], torch.zeros(A, 0)
    acx = ((anchors[:, 0] + anchors[:, 2]) / 2).tolist()
    acy = ((anchors[:, 1] + anchors[:, 3]) / 2).tolist()
    ious = torch.stack([_iou32(anchors, gts[g]) for g in range(K)], dim=1)  # [A, K]
    best_iou = [-math.inf] * A
    gt_inds = [-1] * A
    thresholds = []
    for g in range(K):
        x1, y1, x2, y2 = gts[g].tolist()
        gcx, gcy = (x1 + x2) / 2, (y1 + y2) / 2
        cands = []
        start = 0
        for n in num_level:
            idx = list(range(start, start + n))
            idx.sort(key=lambda a: math.hypot(acx[a] - gcx, acy[a] - gcy))
            cands += idx[: min(topk, n)]
            start += n
        vals = [ious[a, g].item() for a in cands]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        thr = mean + std
        thresholds.append(thr)
        for a in cands:
            inside = min(acx[a] - x1, acy[a] - y1, x2 - acx[a], y2 - acy[a]) > 0.01
            v = ious[a, g].item()
            if v >= thr and inside and v > best_iou[a]:
                best_iou[a] = v
                gt_inds[a] = g
    return gt_inds, thresholds, ious


# ----------------------------------------------------------------------------------
# losses (float64)


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def _bce(x, y):
    return max(x, 0.0) - x * y + math.log1p(math.exp(-abs(x)))


def _softmax(v):
    m = max(v)
    e = [math.exp(x - m) for x in v]
    s = sum(e)
    return [x / s for x in e]


def _iou_giou(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = max((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter, 1e-6)
    iou = inter / union
    ew = max(max(a[2], b[2]) - min(a[0], b[0]), 0.0)
    eh = max(max(a[3], b[3]) - min(a[1], b[1]), 0.0)
    enc = max(ew * eh, 1e-6)
    return iou, iou - (enc - union) / enc


def _diou(a, b, iof=False):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    denom = area_a if iof else area_a + (b[2] - b[0]) * (b[3] - b[1]) - inter
    overlap = inter / max(denom, 1e-6)
    rho2 = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + ((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) ** 2
    c2 = (max(a[2], b[2]) - min(a[0], b[0])) ** 2 + (max(a[3], b[3]) - min(a[1], b[1])) ** 2
    return overlap - rho2 / max(c2, 1e-6)


def _kl_mean(s_logits, t_logits, T):
    ps = _softmax([x / T for x in s_logits])
    pt = _softmax([x / T for x in t_logits])
    kl = sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt) if q > 0)
    return T * T * kl / len(s_logits)


def slow_criterion(outputs, targets, strides, num_classes, reg_max=16, image_sizes=None,
                   teacher=None, topk=9, beta=2.0, vlr_iof=False):
    """Reference losses of a batch; dict like GFLCriterion's (plain floats)."""
    n1 = reg_max + 1
    sizes = [tuple(c.shape[-2:]) for c in outputs["cls_logits"]]
    B = outputs["cls_logits"][0].shape[0]
    anchors = slow_anchors(sizes, strides)
    A = len(anchors)
    anchor_t = torch.tensor([a[:4] for a in anchors], dtype=torch.float32)

    def flat(levels, ch):  # per image, per anchor list of channel values (float64)
        rows = []
        for b in range(B):
            per = []
            for x in levels:
                x = x[b].detach().double()
                for i in range(x.shape[1]):
                    for j in range(x.shape[2]):
                        per.append(x[:, i, j].tolist())
            rows.append(per)
        return rows

    cls = flat(outputs["cls_logits"], num_classes)
    box = flat(outputs["box_logits"], 4 * n1)
    if teacher is not None:
        t_cls = flat(teacher["cls_logits"], num_classes)
        t_box = flat(teacher["box_logits"], 4 * n1)

    qfl_sum = giou_sum = dfl_sum = w_sum = 0.0
    ld_sum = vlr_sum = 0.0
    kd_per_level = [0.0] * len(strides)
    pos_per_level = [0] * len(strides)
    N = 0
    for b in range(B):
        valid = [True] * A if image_sizes is None else slow_valid(sizes, strides, image_sizes[b])
        vidx = [a for a in range(A) if valid[a]]
        num_level = [sum(1 for a in vidx if anchors[a][5] == lvl) for lvl in range(len(strides))]
        gts = targets[b]["boxes"].float()
        labels_gt = targets[b]["labels"].tolist()
        inds_v, thrs, ious_v = slow_atss(anchor_t[vidx], num_level, gts, topk)
        gt_of = {a: g for a, g in zip(vidx, inds_v)}
        n_pos = 0
        for a in range(A):
            if not valid[a]:
                continue
            x1, y1, x2, y2, s, lvl = anchors[a]
            g = gt_of[a]
            cx, cy = (x1 + x2) / 2 / s, (y1 + y2) / 2 / s
            sig = [_sigmoid(v) for v in cls[b][a]]
            score = 0.0
            if g >= 0:
                n_pos += 1
                w = max(sig)
                dists = []
                for side in range(4):
                    p = _softmax(box[b][a][side * n1:(side + 1) * n1])
                    dists.append(sum(k * pk for k, pk in enumerate(p)))
                pred = (cx - dists[0], cy - dists[1], cx + dists[2], cy + dists[3])
                tgt = [v / s for v in gts[g].tolist()]
                score, giou = _iou_giou(pred, tgt)
                w_sum += w
                giou_sum += w * (1 - giou)
                raw = (cx - tgt[0], cy - tgt[1], tgt[2] - cx, tgt[3] - cy)
                for side in range(4):
                    y = min(max(raw[side], 0.0), reg_max - 0.1)
                    left = int(y)
                    logp = [math.log(p) for p in _softmax(box[b][a][side * n1:(side + 1) * n1])]
                    dfl_sum += w * (-logp[left] * (left + 1 - y) - logp[left + 1] * (y - left))
                if teacher is not None:
                    for side in range(4):
                        sl = slice(side * n1, (side + 1) * n1)
                        ld_sum += w * _kl_mean(box[b][a][sl], t_box[b][a][sl], 10.0)
                    kd_per_level[lvl] += _kl_mean(cls[b][a], t_cls[b][a], 2.0)
                    pos_per_level[lvl] += 1
            for c in range(num_classes):
                if g >= 0 and c == labels_gt[g]:
                    qfl_sum += _bce(cls[b][a][c], score) * abs(score - sig[c]) ** beta
                else:
                    qfl_sum += _bce(cls[b][a][c], 0.0) * sig[c] ** beta
            if teacher is not None and gts.shape[0]:
                vw = 0.0
                for k in range(gts.shape[0]):
                    d = _diou(anchors[a][:4], gts[k].tolist(), iof=vlr_iof)
                    if 0.25 * thrs[k] <= d < thrs[k]:
                        vw = max(vw, _iou_giou(anchors[a][:4], gts[k].tolist())[0])
                if vw > 0:
                    for side in range(4):
                        sl = slice(side * n1, (side + 1) * n1)
                        vlr_sum += vw * _kl_mean(box[b][a][sl], t_box[b][a][sl], 10.0)
        N += max(n_pos, 1)
    W = max(w_sum, 1.0)
    out = {
        "loss_cls": qfl_sum / (N + EPS32),
        "loss_bbox": 2.0 * giou_sum / (1 + EPS32) / W,
        "loss_dfl": 0.25 * dfl_sum / (4 + EPS32) / W,
    }
    if teacher is not None:
        out["loss_ld"] = 0.25 * ld_sum / (4 + EPS32)
        out["loss_ld_vlr"] = 0.25 * vlr_sum / (16 + EPS32)
        out["loss_kd"] = 10.0 * sum(k / (n + EPS32) for k, n in zip(kd_per_level, pos_per_level))
    return out
