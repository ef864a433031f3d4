"""Build modules from the typed config (constructor injection, no registries).

:func:`load_detector` is the one place that builds a detector and loads a checkpoint into it
(``test``, ``predict``, ``benchmark``, ``visualize-distribution``, ``check-teacher``, the demo
and the distillation teacher all go through it).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Union

from ..checkpoint import (checkpoint_classes, checkpoint_num_classes, inference_checkpoint, load_checkpoint,
                          load_model_weights)
from ..config import Config, ModelConfig
from ..errors import ConfigError
from .backbones import Res2Net, ResNet
from .detector import GFL
from .fpn import FPN
from .gfl_head import GFLHead, GFLv2Head
from .postprocess import postprocess as gfl_postprocess
from .yolo import YOLO
from .yolo.postprocess import POINT_OFFSET_KEY, yolo_postprocess

BACKBONE_TYPES = {"resnet": ResNet, "res2net": Res2Net}
HEAD_TYPES = {"gfl": GFLHead, "gflv2": GFLv2Head}
MODEL_TYPES = ("gfl", "yolo")


def build_yolo(model_cfg: ModelConfig) -> YOLO:
    """``ModelConfig`` (``type = "yolo"``) → :class:`~locdistill.models.yolo.YOLO` from ``model.yolo.*``."""
    y = model_cfg.yolo
    if model_cfg.num_classes < 1:
        raise ConfigError(f"model.num_classes={model_cfg.num_classes} must be >= 1")
    if not (y.depth > 0 and y.width > 0 and y.max_channels >= 8):
        raise ConfigError(f"model.yolo.depth={y.depth}, model.yolo.width={y.width} must be > 0 and "
                          f"model.yolo.max_channels={y.max_channels} >= 8 (yolov8n: 0.33, 0.25, 1024)")
    if y.reg_max < 2:
        raise ConfigError(f"model.yolo.reg_max={y.reg_max} must be >= 2 (bins per side; 16 is standard)")
    return YOLO(model_cfg.num_classes, depth=y.depth, width=y.width, max_channels=y.max_channels, reg_max=y.reg_max)


def postprocess(outputs, image_metas, test_cfg, strides, reg_max) -> list:
    """Detections per image from any family's raw outputs: YOLO outputs (they carry ``"point_offset"``) go to
    :func:`~locdistill.models.yolo.postprocess.yolo_postprocess`, others to
    :func:`locdistill.models.postprocess.postprocess` (same arguments and results)."""
    if POINT_OFFSET_KEY in outputs:
        return yolo_postprocess(outputs, image_metas, test_cfg, strides, reg_max)
    return gfl_postprocess(outputs, image_metas, test_cfg, strides, reg_max)


def build_detector(model_cfg: ModelConfig) -> Union[GFL, YOLO]:
    """``ModelConfig`` → :class:`GFL` (ResNet / ResNeXt / Res2Net, optional DCN → FPN → GFL v1/v2 head),
    or with ``model.type = "yolo"`` a :class:`~locdistill.models.yolo.YOLO` (:func:`build_yolo`).

    Raises :class:`ConfigError` naming the ``model.*`` key on invalid values.
    """
    if model_cfg.type not in MODEL_TYPES:
        raise ConfigError(f"model.type={model_cfg.type!r} is not supported; valid values: {list(MODEL_TYPES)}")
    if model_cfg.type == "yolo":
        return build_yolo(model_cfg)
    b, n, h = model_cfg.backbone, model_cfg.neck, model_cfg.head
    if b.type not in BACKBONE_TYPES:
        raise ConfigError(f"model.backbone.type={b.type!r} is not supported; valid values: {sorted(BACKBONE_TYPES)}")
    backbone_cls = BACKBONE_TYPES[b.type]
    if b.depth not in backbone_cls.arch_settings:
        raise ConfigError(f"model.backbone.depth={b.depth!r} is not supported for model.backbone.type={b.type!r}; "
                          f"use one of {sorted(backbone_cls.arch_settings)}")
    if h.type not in HEAD_TYPES:
        raise ConfigError(f"model.head.type={h.type!r} is not supported; valid values: {sorted(HEAD_TYPES)}")
    if model_cfg.num_classes < 1:
        raise ConfigError(f"model.num_classes={model_cfg.num_classes} must be >= 1")
    if not 0 <= n.start_level <= 3:
        raise ConfigError(f"model.neck.start_level={n.start_level} must be in 0..3 (1 = C3, as in mmdetection)")
    if h.reg_max < 1:
        raise ConfigError(f"model.head.reg_max={h.reg_max} must be >= 1 (16 is standard)")
    if h.num_groups < 1 or h.feat_channels % h.num_groups:
        raise ConfigError(
            f"model.head.num_groups={h.num_groups} must divide model.head.feat_channels={h.feat_channels}"
        )
    in_levels = 4 - n.start_level
    if n.num_outs < in_levels:
        raise ConfigError(
            f"model.neck.num_outs={n.num_outs} must be >= {in_levels}, the backbone levels "
            f"from model.neck.start_level={n.start_level} to C5"
        )
    # C_{start_level+2} has stride 2**(start_level+2); each further level doubles it.
    strides = tuple(2 ** (n.start_level + 2 + i) for i in range(n.num_outs))
    if tuple(h.strides) != strides:
        raise ConfigError(
            f"model.head.strides={tuple(h.strides)} does not match the network "
            f"(neck.start_level={n.start_level}, neck.num_outs={n.num_outs} give {strides}); "
            f"set model.head.strides={list(strides)}"
        )
    common = dict(base_channels=b.base_channels, frozen_stages=b.frozen_stages, norm_eval=b.norm_eval,
                  out_indices=tuple(range(n.start_level, 4)), pretrained=b.pretrained, dcn_stages=tuple(b.dcn_stages))
    if b.type == "res2net":
        if b.groups != 1:
            raise ConfigError(f"model.backbone.groups={b.groups}: Res2Net has no grouped convs; set groups=1")
        if b.scales < 2:
            raise ConfigError(f"model.backbone.scales={b.scales} must be >= 2 for Res2Net (4 is 26w×4s)")
        backbone = Res2Net(b.depth, scales=b.scales, base_width=b.base_width or 26, **common)
    else:
        backbone = ResNet(b.depth, groups=b.groups, base_width=b.base_width or 4, **common)
    neck = FPN(backbone.out_channels, out_channels=n.out_channels, num_outs=n.num_outs)
    head_kw = dict(feat_channels=h.feat_channels, stacked_convs=h.stacked_convs, num_groups=h.num_groups,
                   reg_max=h.reg_max, num_levels=n.num_outs)
    if h.type == "gflv2":
        if not 1 <= h.reg_topk <= h.reg_max + 1 or h.reg_channels < 1:
            raise ConfigError(f"model.head.reg_topk={h.reg_topk} must be in 1..reg_max+1 and "
                              f"model.head.reg_channels={h.reg_channels} >= 1 (GFocalV2: 4 and 64)")
        head_kw.update(reg_topk=h.reg_topk, reg_channels=h.reg_channels)
    head = HEAD_TYPES[h.type](model_cfg.num_classes, n.out_channels, **head_kw)
    return GFL(backbone, neck, head, strides=strides)


def load_detector(cfg: Config, checkpoint: Union[str, os.PathLike, Mapping, None], strict: bool = True,
                  num_classes: Optional[int] = None, source: Optional[str] = None, teacher_config: str = ""
                  ) -> tuple[GFL, Optional[list[str]]]:
    """Build the detector of ``cfg.model`` and load ``checkpoint`` into it (strictly by default).

    ``checkpoint``: a path, a checkpoint dict already read with
    :func:`~locdistill.checkpoint.load_checkpoint`, or None (the model keeps its initialisation).
    A training checkpoint written with ``train.ema`` loads its ``"ema"`` weights, not the raw
    ``"model"`` ones (:func:`~locdistill.checkpoint.inference_checkpoint`): ``test``, ``predict``,
    ``export``, ``check-teacher`` and teachers all see the averaged weights.
    ``cfg.model.num_classes`` is set in place to the checkpoint's class count (its recorded class
    names, else its classifier's rows), else to ``num_classes`` (e.g. the dataset's) when given.
    ``source`` names the file in errors (default: the path); ``teacher_config`` makes a mismatch's
    fix name a teacher config (see :func:`~locdistill.checkpoint.load_model_weights`).

    Returns ``(model, classes)``: the model on the CPU in train mode, and the class names the
    checkpoint records (None when it records none). Key / shape mismatches raise
    :class:`~locdistill.errors.CheckpointError` naming ``source``.
    """
    ckpt = None
    if checkpoint is not None:
        if not isinstance(checkpoint, Mapping):
            source = source or str(checkpoint)
            checkpoint = load_checkpoint(checkpoint)
        ckpt = inference_checkpoint(checkpoint)  # the EMA of the weights when the file holds one
    file_classes = checkpoint_num_classes(ckpt) if ckpt is not None else None
    if file_classes:
        cfg.model.num_classes = file_classes
    elif num_classes is not None:
        cfg.model.num_classes = num_classes
    model = build_detector(cfg.model)
    if ckpt is None:
        return model, None
    load_model_weights(model, ckpt, strict=strict, source=source or "checkpoint", teacher_config=teacher_config)
    return model, checkpoint_classes(ckpt)
