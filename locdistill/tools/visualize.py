"""``locdistill visualize-distribution CONFIG CKPT IMAGE [--teacher CONFIG CKPT] --out FILE``.

The picture of *localization ambiguity* that LD distils: for the top detections of an
image, the four per-side distance distributions (softmax over the ``reg_max + 1`` bins of
left, top, right, bottom) the head predicted at the location that produced the box, in
original-image pixels from that location, next to a crop of the image with the box. With
``--teacher``, the teacher's distributions at the same location are drawn over the
student's: where the student is unsure (flat, two-peaked) and the teacher is sharp is
what LD teaches. Detections are chosen with the config's test settings (score threshold,
top-k per level, hard NMS at ``test.iou_thr``). Matplotlib's Agg backend draws the figure
(no display needed); also written: ``<FILE stem>_boxes.png``, the whole image at its own
size with the numbered boxes.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from ..config import load_config
from ..engine.device import select_device
from ..errors import ConfigError, LocDistillError
from ..inference import LoadedDetector, open_detector, prepare_image, read_image
from ..models.gfl_head import integral_distances
from .predict import draw_detections

SIDES = ("left", "top", "right", "bottom")


@torch.no_grad()
def top_detections(det: LoadedDetector, outputs: dict, meta: dict, k: int) -> list[dict]:
    """The best ``k`` detections of one image with the place they came from.

    ``outputs``: the detector's raw outputs (batch of 1). Returns dicts with ``level``,
    ``y``, ``x`` (feature-map cell), ``stride``, ``label``, ``score``, ``box`` (xyxy, original
    pixels) and ``point`` (the anchor point, original pixels), best first.
    """
    cfg, strides, n = det.cfg.test, det.model.strides, det.model.reg_max
    h_img, w_img = meta["img_shape"]
    sx, sy = meta["scale_factor"]
    project = torch.linspace(0, n, n + 1, device=det.device)
    cand = []  # (score, label, level, y, x, box)
    for level, (cls, box, s) in enumerate(zip(outputs["cls_logits"], outputs["box_logits"], strides)):
        c, h, w = cls.shape[1:]
        scores = cls[0].float().sigmoid().reshape(-1)  # [C*H*W], class-major
        keep = (scores > cfg.score_thr).nonzero().squeeze(1)
        if cfg.nms_pre > 0 and keep.numel() > cfg.nms_pre:
            keep = keep[scores[keep].topk(cfg.nms_pre).indices]
        label, loc = keep // (h * w), keep % (h * w)
        y, x = loc // w, loc % w
        dist = integral_distances(box[0].float().permute(1, 2, 0)[y, x], project) * s  # [K, 4]
        px, py = x.float() * s, y.float() * s
        boxes = torch.stack([px - dist[:, 0], py - dist[:, 1], px + dist[:, 2], py + dist[:, 3]], 1)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w_img)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h_img)
        boxes = boxes / torch.tensor([sx, sy, sx, sy], device=boxes.device)
        cand.append((scores[keep], label, torch.full_like(label, level), y, x, boxes))
    scores, labels, levels, ys, xs, boxes = (torch.cat(t) for t in zip(*cand))
    ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    idx = ok.nonzero().squeeze(1)
    idx = idx[batched_nms(boxes[idx], scores[idx], labels[idx], cfg.iou_thr)][:k]
    out = []
    for i in idx.tolist():
        s = strides[int(levels[i])]
        out.append({"level": int(levels[i]), "y": int(ys[i]), "x": int(xs[i]), "stride": s,
                    "label": int(labels[i]), "score": float(scores[i]), "box": boxes[i].tolist(),
                    "point": (float(xs[i]) * s / sx, float(ys[i]) * s / sy)})
    return out


def side_distributions(outputs: dict, where: dict, reg_max: int) -> Tensor:
    """Softmax over the bins of each side at ``where`` (level, y, x): ``[4, reg_max + 1]``."""
    logits = outputs["box_logits"][where["level"]][0, :, where["y"], where["x"]].float()
    return logits.reshape(4, reg_max + 1).softmax(-1).cpu()


def _check_teacher(student: LoadedDetector, teacher: LoadedDetector) -> None:
    if tuple(student.model.strides) != tuple(teacher.model.strides) or student.model.reg_max != teacher.model.reg_max:
        raise ConfigError(
            f"teacher {teacher.cfg.name} (strides {teacher.model.strides}, reg_max {teacher.model.reg_max}) and "
            f"student {student.cfg.name} (strides {student.model.strides}, reg_max {student.model.reg_max}) must "
            "predict the same distributions at the same locations to be compared")


def _open(config: str, checkpoint: str, overrides: Sequence[str], device: Optional[str]) -> LoadedDetector:
    cfg = load_config(config, list(overrides))
    return open_detector(cfg, checkpoint, select_device(device or cfg.train.device))


def visualize_distribution(config: str, checkpoint: str, image: str | os.PathLike, out: str | os.PathLike,
                           teacher: Optional[Sequence[str]] = None, top: int = 3,
                           overrides: Sequence[str] = (), device: Optional[str] = None) -> tuple[Path, Path]:
    """Draw the figure (see the module doc); returns ``(figure PNG, boxes PNG)``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    student = _open(config, checkpoint, overrides, device)
    tdet = None
    if teacher:
        if len(teacher) != 2:
            raise ConfigError("--teacher takes the teacher's CONFIG and CKPT")
        tdet = _open(teacher[0], teacher[1], overrides, device)
        _check_teacher(student, tdet)
    pil = read_image(image)
    images, meta = prepare_image(pil, student.cfg)
    with torch.no_grad():
        outputs = student.model(images.to(student.device))
        t_outputs = tdet.model(images.to(tdet.device)) if tdet is not None else None
    found = top_detections(student, outputs, meta, top)
    if not found:
        raise LocDistillError(
            f"no detection in {image} scored above test.score_thr={student.cfg.test.score_thr}; lower it, "
            "e.g. --set test.score_thr=0.01")
    n = student.model.reg_max
    sx, sy = meta["scale_factor"]

    fig = Figure(figsize=(3.0 * 5, 2.6 * len(found)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(found), 5, squeeze=False)
    title = f"box distributions of {student.cfg.name}" + (f" (bars) vs teacher {tdet.cfg.name} (line)" if tdet else "")
    fig.suptitle(f"{Path(image).name}: {title}")
    w_img, h_img = pil.size
    for row, d in zip(axes, found):
        x1, y1, x2, y2 = d["box"]
        bw, bh = x2 - x1, y2 - y1
        cx1, cy1 = max(0, int(x1 - 0.5 * bw)), max(0, int(y1 - 0.5 * bh))
        cx2, cy2 = min(w_img, int(x2 + 0.5 * bw) + 1), min(h_img, int(y2 + 0.5 * bh) + 1)
        ax = row[0]
        ax.imshow(pil.crop((cx1, cy1, cx2, cy2)), extent=(cx1, cx2, cy2, cy1))
        ax.add_patch(Rectangle((x1, y1), bw, bh, fill=False, edgecolor="lime", linewidth=2))
        ax.plot(*d["point"], marker="+", color="red", markersize=10)
        ax.set_xlim(cx1, cx2)
        ax.set_ylim(cy2, cy1)
        rank = found.index(d) + 1
        ax.set_title(f"#{rank} {student.classes[d['label']]}: {d['score']:.2f} (P{int(math.log2(d['stride']))}, stride {d['stride']})",
                     fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        probs = side_distributions(outputs, d, n)
        t_probs = side_distributions(t_outputs, d, n) if t_outputs is not None else None
        for side, ax in enumerate(row[1:]):
            scale = d["stride"] / (sx if side in (0, 2) else sy)  # bin -> original pixels
            bins = (torch.arange(n + 1) * scale).numpy()
            ax.bar(bins, probs[side].numpy(), width=0.8 * scale, color="tab:blue", alpha=0.75, label="student")
            mean = float((probs[side].numpy() * bins).sum())
            ax.axvline(mean, color="tab:blue", linestyle="--", linewidth=1)
            text = f"{SIDES[side]}: {mean:.1f}px"
            if t_probs is not None:
                ax.plot(bins, t_probs[side].numpy(), color="tab:orange", marker="o", markersize=3, label="teacher")
                t_mean = float((t_probs[side].numpy() * bins).sum())
                ax.axvline(t_mean, color="tab:orange", linestyle="--", linewidth=1)
                text += f" (T {t_mean:.1f}px)"
            mass = probs[side] if t_probs is None else torch.maximum(probs[side], t_probs[side])
            last = int((mass > 0.005).nonzero().max()) if bool((mass > 0.005).any()) else n
            ax.set_xlim(-scale, min(n, last + 3) * scale)  # zoom on where the probability is
            ax.set_title(text, fontsize=9)
            ax.set_ylim(0, 1.05)
            ax.set_xlabel("distance from the point (px)", fontsize=8)
            ax.tick_params(labelsize=7)
            if side == 0 and t_probs is not None and rank == 1:
                ax.legend(fontsize=7)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    boxes = torch.tensor([d["box"] for d in found])
    scores = torch.tensor([d["score"] for d in found])
    labels = torch.tensor([d["label"] for d in found])
    boxes_path = out.with_name(out.stem + "_boxes.png")
    draw_detections(pil, boxes, scores, labels, student.classes, score_thr=0.0, numbered=True).save(boxes_path)
    return out, boxes_path
