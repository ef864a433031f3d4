"""Inference over a data loader and COCO evaluation."""
from __future__ import annotations

import json
import os
from pathlib import Path


import torch
from torch import nn

from ..config import Config
from ..evaluation.coco import coco_evaluate, detections_to_coco
from ..postprocess import postprocess
from .logging import make_progress


def unwrap(model: nn.Module) -> nn.Module:
    """The detector inside DDP / Distiller wrappers (the student when distilling)."""
    m = getattr(model, "module", model)
    return getattr(m, "student", m)


def image_metas(targets: list[dict]) -> list[dict]:
    return [
        {"img_shape": t["img_shape"], "scale_factor": t["scale_factor"], "ori_shape": t["ori_shape"]}
        for t in targets
    ]


@torch.no_grad()
def predict_loader(model: nn.Module, loader, cfg: Config, device: torch.device,
                   progress: bool = True, desc: str = "eval") -> tuple[list[dict], list[int]]:
    """Run the detector on every batch; returns (detections per image, image ids).

    Each detection dict holds ``boxes [K,4]`` (original-image xyxy), ``scores [K]``,
    ``labels [K]`` on the CPU.
    """
    det = unwrap(model)
    was_training = det.training
    det.eval()
    detections: list[dict] = []
    image_ids: list[int] = []
    seen: set[int] = set()
    try:
        with make_progress(transient=True) as bar:
            task = bar.add_task(desc, total=len(loader), info="")
            for images, targets in loader:
                images = images.to(device, non_blocking=True)
                outputs = det(images)
                results = postprocess(outputs, image_metas(targets), cfg.test, det.strides, det.reg_max)
                for t, r in zip(targets, results):
                    if int(t["image_id"]) in seen:  # skip_bad may substitute an image already seen
                        continue
                    seen.add(int(t["image_id"]))
                    detections.append({k: v.detach().cpu() for k, v in r.items()})
                    image_ids.append(int(t["image_id"]))
                bar.advance(task)
    finally:
        det.train(was_training)
    return detections, image_ids


def evaluate(model: nn.Module, loader, cfg: Config, dataset, device: torch.device,
             progress: bool = True, out: str | os.PathLike | None = None) -> tuple[dict[str, float], list[dict]]:
    """COCO bbox metrics of ``model`` on ``dataset`` (the loader's dataset).

    Returns ``(metrics, coco_results)``; metrics hold AP, AP50, AP75, APs, APm, APl,
    AR1, AR10, AR100, ARs, ARm, ARl as fractions. ``out`` writes the COCO results JSON
    with the dataset's own image and category ids.
    """
    detections, image_ids = predict_loader(model, loader, cfg, device, progress)
    results = detections_to_coco(detections, image_ids, dataset.cat_ids)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(out) + ".tmp")
        tmp.write_text(json.dumps(results))
        os.replace(tmp, out)
    metrics = coco_evaluate(dataset.json_path, results, cat_ids=list(dataset.cat_ids), img_ids=image_ids)
    return metrics, results
