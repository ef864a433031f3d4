"""The YOLOv8-family detector: CSP-Darknet → PAN-FPN → decoupled DFL head, returning raw outputs."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from ...config import TestConfig
from ..dense import DenseOutputs
from .backbone import CSPDarknet
from .criterion import yolo_points
from .head import YOLOHead
from .neck import PAFPN
from .postprocess import POINT_OFFSET_KEY, yolo_postprocess

__all__ = ["YOLO"]


class YOLO(nn.Module):
    """YOLOv8-style detector (strides 8, 16, 32).

    Args:
        num_classes: C.
        depth, width, max_channels: the scale multipliers (n: 0.33 / 0.25 / 1024, s: 0.33 / 0.50 / 1024,
            m: 0.67 / 0.75 / 768, l: 1.0 / 1.0 / 512, x: 1.0 / 1.25 / 512).
        reg_max: bins per side (16: values 0..15).

    Attributes: ``num_classes``, ``reg_max`` (locdistill's convention, the top bin value: 15),
    ``strides``, ``point_offset`` (0.5: points at cell centres ``((j+0.5)·s, (i+0.5)·s)``) and its alias
    ``anchor_offset`` (the name :func:`~locdistill.distill.teacher.check_compatible` reads; GFL has none = 0).
    :meth:`flatten` is the family's ``flatten(outputs) -> DenseOutputs`` for ``locdistill export``.
    """

    point_offset = 0.5
    anchor_offset = point_offset

    def __init__(self, num_classes: int, depth: float = 0.33, width: float = 0.25, max_channels: int = 1024,
                 reg_max: int = 16) -> None:
        super().__init__()
        self.strides = (8, 16, 32)
        self.backbone = CSPDarknet(depth, width, max_channels)
        self.neck = PAFPN(self.backbone.out_channels, depth, width, max_channels)
        self.bbox_head = YOLOHead(num_classes, self.neck.out_channels, reg_max, self.strides)

    @property
    def num_classes(self) -> int:
        return self.bbox_head.num_classes

    @property
    def reg_max(self) -> int:
        return self.bbox_head.reg_max

    def extract_feat(self, images: Tensor) -> list[Tensor]:
        """``images [B,3,H,W]`` → ``[P3, P4, P5]``."""
        return list(self.neck(self.backbone(images)))

    def forward(self, images: Tensor) -> dict:
        """``images [B,3,H,W]`` (H, W multiples of 32) → ``{"cls_logits": [B,C,H/s,W/s] per level,
        "box_logits": [B,4·16,H/s,W/s] per level, "point_offset": 0.5}`` (the last key tells
        post-processing that distances start at cell centres)."""
        out = self.bbox_head(self.extract_feat(images))
        out[POINT_OFFSET_KEY] = self.point_offset
        return out

    @torch.no_grad()
    def predict(self, images: Tensor, image_metas: Sequence[Mapping],
                test_cfg: Optional[TestConfig] = None) -> list[dict[str, Tensor]]:
        """Forward + decoding + class-aware NMS (:func:`~.postprocess.yolo_postprocess`), no gradients.
        Returns per image ``boxes [K,4]`` (original-image pixels), ``scores [K]``, ``labels [K]``."""
        return yolo_postprocess(self(images), image_metas, test_cfg or TestConfig(), self.strides, self.reg_max)

    def flatten(self, outputs: Mapping[str, Sequence[Tensor]]) -> DenseOutputs:
        """Raw outputs → :class:`~locdistill.models.dense.DenseOutputs` (float32, ``box_logits [B, A, 4, num_bins]``,
        points at cell centres), as :meth:`~locdistill.models.yolo.criterion.YOLOCriterion.flatten` gives them.

        Unlike the criterion's, this keeps the feature-map sizes as they come (no ``int()``, no cache), so that
        they stay symbolic when ``locdistill export`` traces the model with dynamic ``H`` and ``W``.
        """
        n1 = self.bbox_head.num_bins
        sizes, cls_flat, box_flat = [], [], []
        for c, b in zip(outputs["cls_logits"], outputs["box_logits"]):
            B, C, H, W = c.shape
            sizes.append((H, W))
            cls_flat.append(c.float().permute(0, 2, 3, 1).reshape(B, H * W, C))
            box_flat.append(b.float().permute(0, 2, 3, 1).reshape(B, H * W, 4, n1))
        cls_logits, box_logits = torch.cat(cls_flat, 1), torch.cat(box_flat, 1)
        points, strides, level_ids = yolo_points(sizes, self.strides, cls_logits.device)
        return DenseOutputs(cls_logits=cls_logits, box_logits=box_logits, points=points, strides=strides,
                            level_ids=level_ids, centers=points / strides[:, None], level_sizes=tuple(sizes))
