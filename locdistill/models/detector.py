"""The GFL detector: backbone → neck → head, returning raw outputs (never a loss)."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from ..config import TestConfig
from ..errors import ConfigError
from .postprocess import postprocess


class GFL(nn.Module):
    """Dense one-stage detector with mmdetection's attribute names.

    Args:
        backbone: maps ``images [B,3,H,W]`` to a tuple of feature maps (e.g. C3-C5).
        neck: maps those to ``len(strides)`` pyramid levels.
        bbox_head: a head with ``num_classes``, ``reg_max`` and ``num_levels`` whose forward
            returns ``{"cls_logits": [...], "box_logits": [...]}``.
        strides: stride of each pyramid level, finest first.

    Attributes: ``num_classes``, ``reg_max``, ``strides`` (tuple of ints).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, bbox_head: nn.Module,
                 strides: Sequence[int] = (8, 16, 32, 64, 128)) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.bbox_head = bbox_head
        self.strides = tuple(int(s) for s in strides)
        if getattr(bbox_head, "num_levels", len(self.strides)) != len(self.strides):
            raise ConfigError(
                f"model.head.strides has {len(self.strides)} entries but the head has "
                f"{bbox_head.num_levels} levels; they must match model.neck.num_outs"
            )

    @property
    def num_classes(self) -> int:
        return self.bbox_head.num_classes

    @property
    def reg_max(self) -> int:
        return self.bbox_head.reg_max

    def extract_feat(self, images: Tensor) -> list[Tensor]:
        """``images [B,3,H,W]`` → pyramid maps ``[B, F, H/s, W/s]`` per level."""
        return list(self.neck(self.backbone(images)))

    def forward(self, images: Tensor, tower_layer: Optional[int] = None) -> dict[str, list[Tensor]]:
        """``images [B,3,H,W]`` (normalised, padded) → ``{"cls_logits": [B,C,H/s,W/s] per level,
        "box_logits": [B,4(reg_max+1),H/s,W/s] per level}``.

        ``tower_layer=k`` adds the head towers' features after conv ``k`` (``"cls_tower"``,
        ``"reg_tower"``; cross-head distillation, :meth:`GFLHead.forward`)."""
        feats = self.extract_feat(images)
        if tower_layer is None:
            return self.bbox_head(feats)
        return self.bbox_head(feats, tower_layer=tower_layer)

    @torch.no_grad()
    def predict(self, images: Tensor, image_metas: Sequence[Mapping],
                test_cfg: Optional[TestConfig] = None) -> list[dict[str, Tensor]]:
        """Forward + :func:`locdistill.models.postprocess.postprocess` (no gradients).

        ``image_metas``: per image ``img_shape (h, w)`` and ``scale_factor (w_scale, h_scale)``.
        Returns per image ``boxes [K,4]`` (original-image pixels), ``scores [K]``, ``labels [K]``.
        Call ``.eval()`` first: the mode is left as the caller set it.
        """
        outputs = self(images)
        return postprocess(outputs, image_metas, test_cfg or TestConfig(), self.strides, self.reg_max)
