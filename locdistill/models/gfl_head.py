"""GFL heads (Generalized Focal Loss v1, and v2 with its DGQP) with mmdetection's layout and init.

Per level (weights shared across levels): two towers of ``stacked_convs`` ×
(3×3 conv without bias → GroupNorm → ReLU); ``gfl_cls`` gives C class logits and
``gfl_reg`` gives ``4·(reg_max+1)`` box-distribution logits (sides l, t, r, b, each
``reg_max+1`` bins), multiplied by the level's learnable ``Scale``. The head owns no
assignment, loss or post-processing. :class:`GFLv2Head` adds GFocalV2's
distribution-guided quality predictor (``reg_conf``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dense import integral


def bias_init_with_prob(prior_prob: float) -> float:
    """Bias that makes ``sigmoid(bias) == prior_prob`` (``-log(99)`` for 0.01)."""
    return float(-math.log((1 - prior_prob) / prior_prob))


def integral_distances(box_logits: Tensor, project: Tensor) -> Tensor:
    """Expected distance per side of flat box logits (:func:`locdistill.models.dense.integral`).

    Args:
        box_logits: ``[..., 4*(n+1)]`` logits, sides l, t, r, b, bins contiguous per side.
        project: ``[n+1]`` bin values (``linspace(0, n, n+1)``).
    Returns:
        ``[..., 4]`` distances in stride units.
    """
    n1 = project.numel()
    if box_logits.shape[-1] != 4 * n1:
        raise ValueError(f"box logits have {box_logits.shape[-1]} channels in the last dim, expected 4*{n1}")
    return integral(box_logits.reshape(*box_logits.shape[:-1], 4, n1), project)


class Integral(nn.Module):
    """Turns box-distribution logits into distances (stride units).

    ``project`` is a persistent buffer (``bbox_head.integral.project`` in checkpoints).
    ``forward(x[..., 4*(reg_max+1)]) -> [..., 4]``.
    """

    def __init__(self, reg_max: int = 16) -> None:
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1), persistent=True)

    def forward(self, x: Tensor) -> Tensor:
        return integral_distances(x, self.project)


class Scale(nn.Module):
    """Multiplies its input by a learnable 0-d tensor ``scale`` (init 1.0)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class ConvGNReLU(nn.Module):
    """3×3 conv (no bias) → GroupNorm → ReLU, keys ``conv.weight``, ``gn.weight``, ``gn.bias``."""

    def __init__(self, cin: int, cout: int, num_groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(num_groups, cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.gn(self.conv(x)))


class GFLHead(nn.Module):
    """GFL v1 head.

    Args:
        num_classes: C (sigmoid classification, no background channel).
        in_channels: channels of every input level (the FPN's ``out_channels``).
        feat_channels: tower width.
        stacked_convs: convs per tower.
        num_groups: GroupNorm groups; must divide ``feat_channels``.
        reg_max: n; each side has ``n+1`` bins.
        num_levels: number of pyramid levels (one ``Scale`` each).
    """

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int = 256,
                 stacked_convs: int = 4, num_groups: int = 32, reg_max: int = 16,
                 num_levels: int = 5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.reg_max = reg_max
        self.num_levels = num_levels
        chans = [in_channels] + [feat_channels] * stacked_convs
        self.cls_convs = nn.ModuleList(ConvGNReLU(chans[i], chans[i + 1], num_groups) for i in range(stacked_convs))
        self.reg_convs = nn.ModuleList(ConvGNReLU(chans[i], chans[i + 1], num_groups) for i in range(stacked_convs))
        self.gfl_cls = nn.Conv2d(chans[-1], num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(chans[-1], 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        self.integral = Integral(reg_max)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.gfl_cls.bias, bias_init_with_prob(0.01))

    def forward_single(self, x: Tensor, scale: Scale) -> tuple[Tensor, Tensor]:
        """One level: ``x [B,in,H,W]`` → (``[B,C,H,W]`` class logits, ``[B,4(n+1),H,W]`` box logits)."""
        cls_feat = x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        reg_feat = x
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        return self.gfl_cls(cls_feat), scale(self.gfl_reg(reg_feat))

    @property
    def stacked_convs(self) -> int:
        return len(self.cls_convs)

    def tower_index(self, layer: int) -> int:
        """``layer`` (a tower conv index, negative counts from the end) → ``0 <= k < stacked_convs``."""
        n = self.stacked_convs
        if not -n <= layer < n:
            raise ValueError(f"tower conv index {layer} is out of range for a head with {n} stacked convs")
        return layer % n

    @staticmethod
    def _tower_tap(convs: nn.ModuleList, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Run a tower; also return conv ``k``'s output after its GroupNorm, before its ReLU."""
        tap = x
        for i, conv in enumerate(convs):
            if i == k:
                tap = conv.gn(conv.conv(x))
                x = F.relu(tap)  # not in place: ``tap`` is returned
            else:
                x = conv(x)
        return x, tap

    def forward_single_tap(self, x: Tensor, scale: Scale, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:meth:`forward_single` that also returns both towers' features after tower conv ``layer``.

        The features are taken after that conv's GroupNorm and before its ReLU (cross-head
        distillation standardises them, then :meth:`head_from` applies the ReLU).
        Returns ``(cls_logits, box_logits, cls_tap [B,F,H,W], reg_tap [B,F,H,W])``.
        """
        k = self.tower_index(layer)
        cls_feat, cls_tap = self._tower_tap(self.cls_convs, x, k)
        reg_feat, reg_tap = self._tower_tap(self.reg_convs, x, k)
        return self.gfl_cls(cls_feat), scale(self.gfl_reg(reg_feat)), cls_tap, reg_tap

    def head_from(self, cls_tap: Tensor, reg_tap: Tensor, layer: int, scale: Scale) -> tuple[Tensor, Tensor]:
        """Finish the head from tower features taken after conv ``layer`` (see :meth:`forward_single_tap`):
        ReLU, tower convs ``layer+1 ..`` end, ``gfl_cls`` / ``gfl_reg`` and the level's ``scale``.

        ``head_from(*forward_single_tap(x, scale, k)[2:], k, scale)`` equals ``forward_single(x, scale)``.
        Returns (``[B,C,H,W]`` class logits, ``[B,4(n+1),H,W]`` box logits).
        """
        k = self.tower_index(layer)
        cls_feat, reg_feat = F.relu(cls_tap), F.relu(reg_tap)
        for conv in self.cls_convs[k + 1:]:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs[k + 1:]:
            reg_feat = conv(reg_feat)
        return self.gfl_cls(cls_feat), scale(self.gfl_reg(reg_feat))

    def forward(self, feats: Sequence[Tensor], tower_layer: Optional[int] = None) -> dict[str, list[Tensor]]:
        """``feats``: one ``[B, in_channels, H_l, W_l]`` map per level, finest first.

        Returns ``{"cls_logits": [B,C,H_l,W_l] per level, "box_logits": [B,4(n+1),H_l,W_l]
        per level}``; box logits are already multiplied by the level's ``Scale``. With
        ``tower_layer=k`` also ``"cls_tower"`` / ``"reg_tower"``: ``[B,F,H_l,W_l]`` per level, the
        towers' features after conv ``k`` (pre-ReLU, :meth:`forward_single_tap`).
        """
        if len(feats) != self.num_levels:
            raise ValueError(f"GFLHead built for {self.num_levels} levels got {len(feats)} feature maps")
        cls_logits, box_logits, cls_taps, reg_taps = [], [], [], []
        for x, scale in zip(feats, self.scales):
            if tower_layer is None:
                c, b = self.forward_single(x, scale)
            else:
                c, b, ct, rt = self.forward_single_tap(x, scale, tower_layer)
                cls_taps.append(ct)
                reg_taps.append(rt)
            cls_logits.append(c)
            box_logits.append(b)
        out = {"cls_logits": cls_logits, "box_logits": box_logits}
        if tower_layer is not None:
            out.update(cls_tower=cls_taps, reg_tower=reg_taps)
        return out


def joint_score_logits(cls_logits: Tensor, quality_logits: Tensor) -> Tensor:
    """Logit of ``sigmoid(cls_logits) · sigmoid(quality_logits)``, computed without forming the product.

    With ``p = σ(a)·σ(d)``: ``log p = logσ(a) + logσ(d)`` and
    ``1 − p = σ(−a) + σ(a)·σ(−d)``, so
    ``logit(p) = log p − logaddexp(logσ(−a), logσ(a) + logσ(−d))``: finite and accurate for
    any ``a, d`` (no ``log(0)``, no cancellation in ``1 − p``).

    Args:
        cls_logits: ``[B, C, H, W]`` raw class logits ``a``.
        quality_logits: ``[B, 1, H, W]`` DGQP pre-sigmoid output ``d`` (broadcast over classes).
    Returns:
        ``[B, C, H, W]`` logits ``z`` with ``sigmoid(z) == sigmoid(a)·sigmoid(d)``.
    """
    a, d = cls_logits.float(), quality_logits.float()
    log_sig_a = F.logsigmoid(a)
    log_sig_d = F.logsigmoid(d)
    log_p = log_sig_a + log_sig_d
    log_1mp = torch.logaddexp(log_sig_a - a, log_sig_a + (log_sig_d - d))  # logσ(−x) = logσ(x) − x
    return log_p - log_1mp


def distribution_stats(box_logits: Tensor, reg_max: int, topk: int = 4, add_mean: bool = True) -> Tensor:
    """DGQP input: per side the ``topk`` largest bin probabilities (descending) and, with
    ``add_mean``, their mean.

    Args:
        box_logits: ``[B, 4(n+1), H, W]`` box-distribution logits (after the level's Scale).
    Returns:
        ``[B, 4·(topk+1), H, W]`` float32, channel ``side·(topk+1) + j`` (sides l, t, r, b;
        ``j < topk``: the j-th largest probability, ``j = topk``: their mean).
    """
    b, _, h, w = box_logits.shape
    prob = F.softmax(box_logits.float().reshape(b, 4, reg_max + 1, h, w), dim=2)
    top = prob.topk(topk, dim=2).values  # [B, 4, k, H, W], sorted descending
    stats = torch.cat([top, top.mean(dim=2, keepdim=True)], dim=2) if add_mean else top
    return stats.reshape(b, -1, h, w)


class GFLv2Head(GFLHead):
    """GFocal v2 head: the GFL v1 towers plus a Distribution-Guided Quality Predictor (DGQP).

    The DGQP (``reg_conf``: 1×1 conv ``4·(reg_topk+1) → reg_channels``, ReLU, 1×1 conv →
    1; keys ``reg_conf.0`` and ``reg_conf.2``) reads :func:`distribution_stats` of the
    box logits and gives a localisation quality ``q = σ(d)`` per location. The
    classification–quality score is ``σ(cls) · q`` (GFocalV2).

    Outputs (``forward``): ``"cls_logits"`` holds, per level, the **logit of that joint
    score** (:func:`joint_score_logits`), so everything that applies a sigmoid to
    ``cls_logits`` (post-processing, QFL, the positive weights ``w_p``) works on the
    GFLv2 score unchanged; QFL on these logits equals GFocalV2's BCE on probabilities.
    ``"raw_cls_logits"`` holds ``gfl_cls``'s raw logits (used for class KD);
    ``"box_logits"`` as in :class:`GFLHead`.

    Extra args: ``reg_topk`` (4), ``reg_channels`` (64), ``add_mean`` (True).
    """

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int = 256,
                 stacked_convs: int = 4, num_groups: int = 32, reg_max: int = 16,
                 num_levels: int = 5, reg_topk: int = 4, reg_channels: int = 64, add_mean: bool = True) -> None:
        if not 1 <= reg_topk <= reg_max + 1:
            raise ValueError(f"GFLv2Head: reg_topk={reg_topk} must be in 1..reg_max+1={reg_max + 1}")
        self.reg_topk, self.reg_channels, self.add_mean = reg_topk, reg_channels, add_mean
        super().__init__(num_classes, in_channels, feat_channels=feat_channels, stacked_convs=stacked_convs,
                         num_groups=num_groups, reg_max=reg_max, num_levels=num_levels)
        stat_channels = 4 * (reg_topk + (1 if add_mean else 0))
        self.reg_conf = nn.Sequential(
            nn.Conv2d(stat_channels, reg_channels, 1), nn.ReLU(inplace=True), nn.Conv2d(reg_channels, 1, 1))
        for m in self.reg_conf:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                nn.init.zeros_(m.bias)

    def quality_logits(self, box_logits: Tensor) -> Tensor:
        """``box_logits [B,4(n+1),H,W]`` → DGQP pre-sigmoid quality ``[B,1,H,W]`` (float32)."""
        stats = distribution_stats(box_logits, self.reg_max, self.reg_topk, self.add_mean)
        return self.reg_conf(stats.to(self.reg_conf[0].weight.dtype)).float()

    def head_from(self, cls_tap: Tensor, reg_tap: Tensor, layer: int, scale: Scale) -> tuple[Tensor, Tensor]:
        """:meth:`GFLHead.head_from` with GFLv2's output: the class logits returned are the
        **joint-score** logits (the DGQP reads the box logits computed here), as ``"cls_logits"``."""
        raw, box = super().head_from(cls_tap, reg_tap, layer, scale)
        return joint_score_logits(raw, self.quality_logits(box)), box

    def forward(self, feats: Sequence[Tensor], tower_layer: Optional[int] = None) -> dict[str, list[Tensor]]:
        """``feats``: one ``[B, in_channels, H_l, W_l]`` map per level, finest first.

        Returns ``{"cls_logits": joint-score logits [B,C,H_l,W_l], "box_logits": [B,4(n+1),H_l,W_l],
        "raw_cls_logits": [B,C,H_l,W_l]}`` per level (+ the tower features of ``tower_layer``, as
        :meth:`GFLHead.forward`).
        """
        out = super().forward(feats, tower_layer)
        raw = out["cls_logits"]
        out["cls_logits"] = [joint_score_logits(c, self.quality_logits(b)) for c, b in zip(raw, out["box_logits"])]
        out["raw_cls_logits"] = raw
        return out
