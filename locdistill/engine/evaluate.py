"""Inference over a data loader and COCO / VOC evaluation.

:func:`test` (a config + a checkpoint → metrics on a dataset) is the one evaluation entry of
``locdistill test`` and the demo; :func:`evaluate` scores a model in hand (the training
loop), and :func:`score_detections` scores detections already made (``check-teacher``'s
variants).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import nn

from ..config import Config
from ..data.loader import build_dataloader
from ..errors import LocDistillError
from ..evaluation.coco import coco_evaluate, detections_to_coco
from ..evaluation.voc import format_voc_table, voc_metrics
from ..models.build import load_detector
from ..models.build import postprocess
from . import dist
from .logging import console, make_progress, warn


def unwrap(model: nn.Module) -> nn.Module:
    """The detector inside DDP / Distiller wrappers (the student when distilling)."""
    m = getattr(model, "module", model)
    m = getattr(m, "student", m)
    return getattr(m, "module", m)  # a student wrapped in DDP inside the Distiller


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
             progress: bool = True, out: str | os.PathLike | None = None,
             metric: str | None = None) -> tuple[dict[str, float], list[dict]]:
    """COCO bbox metrics (or VOC mAP) of ``model`` on ``dataset`` (the loader's dataset).

    Returns ``(metrics, coco_results)``; with ``metric="bbox"`` metrics hold AP, AP50, AP75,
    APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl as fractions; with ``metric="mAP"``
    (:func:`locdistill.evaluation.voc.voc_metrics`, the per-class table is printed) mAP,
    AP, AP50 … AP95 and AR100. ``metric=None`` takes the dataset's ``default_metric``
    (``"mAP"`` for VOC, ``"bbox"`` otherwise). ``out`` writes the COCO results JSON with
    the dataset's own image and category ids. A val set without any ground-truth box scores
    ``-1`` (undefined) everywhere, with a warning.
    """
    detections, image_ids = predict_loader(model, loader, cfg, device, progress)
    if dist.is_distributed():  # each rank predicted its shard: rank 0 scores them all, the others wait
        detections, image_ids = dist.gather_detections(detections, image_ids)
        if not dist.is_main_process():
            return dist.broadcast_from_main(None), []
    metrics, results = score_detections(dataset, detections, image_ids, metric, cfg.data.map_mode, out)
    return dist.broadcast_from_main(metrics), results


def score_detections(dataset, detections: list[dict], image_ids: list[int], metric: Optional[str] = None,
                     map_mode: str = "auto", out: str | os.PathLike | None = None,
                     warn_empty: bool = True) -> tuple[dict[str, float], list[dict]]:
    """Metrics of ``detections`` (one dict per image of ``image_ids``, as :func:`predict_loader`'s)
    on ``dataset``: COCO bbox (``metric="bbox"``) or VOC mAP (``"mAP"``, ``map_mode`` as
    ``data.map_mode``; the per-class table is printed); ``None`` takes the dataset's
    ``default_metric``. ``out`` writes the COCO results JSON. ``warn_empty`` warns when the
    dataset has no annotations (every metric is then ``-1``). Returns ``(metrics, coco_results)``.
    """
    results = detections_to_coco(detections, image_ids, dataset.cat_ids)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(out) + ".tmp")
        tmp.write_text(json.dumps(results))
        os.replace(tmp, out)
    if (metric or getattr(dataset, "default_metric", "bbox")) == "mAP":
        metrics, table = voc_metrics(dataset, detections, image_ids, mode=map_mode)
        console.print(format_voc_table(table, dataset.classes), markup=False, soft_wrap=True)
    else:
        gt = dataset.coco_gt() if hasattr(dataset, "coco_gt") else dataset.json_path  # VOC data: as COCO
        metrics = coco_evaluate(gt, results, cat_ids=list(dataset.cat_ids), img_ids=image_ids)
        if warn_empty and metrics["AP"] < 0:  # AP over every area is undefined only without any ground-truth box
            warn(f"{dataset.json_path}: the val set has no annotations; every metric is undefined (shown as "
                 "n/a); fix: point data.val_json (data.voc_val for VOC data) at a file whose 'annotations' "
                 "list the (non-crowd) boxes of its images, of the classes in data.classes if it is set")
    return metrics, results


def test(cfg: Config, checkpoint: Union[str, os.PathLike, Mapping], dataset, device: torch.device,
         source: Optional[str] = None, distributed: bool = False, progress: bool = True,
         out: str | os.PathLike | None = None, metric: str | None = None) -> tuple[dict[str, float], list[dict]]:
    """Evaluate ``checkpoint`` (a path or a checkpoint dict already read) with the detector of ``cfg``
    on ``dataset``: the one evaluation entry of ``locdistill test`` and the demo.

    The detector is built and loaded strictly by :func:`~locdistill.models.build.load_detector`
    (``cfg.model.num_classes`` follows the checkpoint, else the dataset); a checkpoint that predicts
    another number of classes than ``dataset`` has raises :class:`LocDistillError` naming both.
    ``distributed``: each rank of a process group scores its shard (as in training). ``source``
    names the checkpoint in errors (default: the path). ``out`` / ``metric``: as :func:`evaluate`.
    Returns ``(metrics, coco_results)``.
    """
    source = source or ("checkpoint" if isinstance(checkpoint, Mapping) else str(checkpoint))
    model, _ = load_detector(cfg, checkpoint, strict=True, num_classes=len(dataset.classes), source=source)
    if model.num_classes != len(dataset.classes):
        raise LocDistillError(
            f"checkpoint {source} predicts {model.num_classes} classes but {dataset.json_path} "
            f"has {len(dataset.classes)}; evaluate on the dataset it was trained for "
            "(--set data.val_json=... data.val_images=...)")
    model.to(device)
    loader = build_dataloader(dataset, cfg.data.batch_size, cfg.data.workers, shuffle=False, distributed=distributed)
    return evaluate(model, loader, cfg, dataset, device, progress=progress, out=out, metric=metric)
