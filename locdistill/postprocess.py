"""Raw GFL head outputs → detections per image (mmdetection's test semantics).

Per level and image: sigmoid scores of every (location, class) pair; the top
``nms_pre`` pairs among those with score > ``score_thr``; their boxes decoded from the
anchor centre ``(j·s, i·s)`` with the Integral distances × stride, clipped to the
resized image; then all levels together: rescaled to the original image
(÷ ``scale_factor``), boxes with width or height ≤ 0 dropped, class-aware NMS,
the best ``max_per_img`` kept. The whole batch is processed with tensor ops; NMS runs
once for the batch with (image, class) groups.

``test.nms`` picks the NMS: ``"nms"`` (hard NMS, torchvision) or
``"voting_cluster_diou"`` (the LD code's score-voting Cluster-DIoU-NMS, DESIGN §6,
:func:`voting_cluster_diou_nms`).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from .config import TestConfig
from .errors import ConfigError
from .models.gfl_head import integral_distances

# An NMS method: (boxes [M,4], scores [M], groups [M] int64, test_cfg)
#   -> (boxes [K,4], scores [K], keep [K] indices into the inputs), sorted by score, descending.
# Boxes of different groups (image × class) never interact. Methods may move boxes
# (score voting), which is why boxes and scores are returned.
NmsFn = Callable[[Tensor, Tensor, Tensor, TestConfig], "tuple[Tensor, Tensor, Tensor]"]


def _nms(boxes: Tensor, scores: Tensor, groups: Tensor, test_cfg: TestConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Class-aware hard NMS (``torchvision.ops.batched_nms``, IoU > ``iou_thr`` suppressed)."""
    keep = batched_nms(boxes, scores, groups, test_cfg.iou_thr)
    return boxes[keep], scores[keep], keep


# ----------------------------------------------------------------------------------
# score-voting Cluster-DIoU-NMS (DESIGN §6)

VOTE_THR = 0.7  # boxes with DIoU > VOTE_THR to a kept box vote for its coordinates
VOTE_SIGMA = 0.025  # vote weight exp(-(1 - DIoU)^2 / VOTE_SIGMA) * score
DIOU_BETA = 0.8  # DIoU = IoU - (rho^2 / c^2) ** DIOU_BETA


def pair_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of matching rows: ``a [..., 4]``, ``b [..., 4]`` (xyxy) → ``[...]``."""
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter).clamp(min=1e-12)


def pair_diou(a: Tensor, b: Tensor, beta: float = DIOU_BETA, iou: Tensor | None = None) -> Tensor:
    """The LD code's DIoU of matching rows: ``IoU - (rho^2 / (c^2 + 1e-7)) ** beta``.

    ``rho``: distance of the box centres; ``c``: diagonal of the smallest box enclosing
    both. ``a [..., 4]``, ``b [..., 4]`` → ``[...]``; ``iou`` may pass a precomputed IoU.
    """
    if iou is None:
        iou = pair_iou(a, b)
    rho2 = (((a[..., :2] + a[..., 2:]) - (b[..., :2] + b[..., 2:])) / 2).square().sum(-1)
    c2 = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).square().sum(-1)
    return iou - (rho2 / (c2 + 1e-7)).pow(beta)


def _overlapping_pairs(boxes: Tensor, groups: Tensor, min_iou: float) -> tuple[Tensor, Tensor, Tensor]:
    """Every pair ``(i, j)``, ``i < j``, of the same group with ``IoU > min_iou``.

    Exact candidate pruning without an N×N matrix: after sorting each group by ``x1``, a
    box ``j`` with ``x1_j >= x1_i + (1 - min_iou)·w_i`` overlaps ``i`` by less than
    ``min_iou·w_i`` in x, so their IoU is ≤ ``min_iou``; only the boxes inside that window
    (found by ``searchsorted``) are paired and their IoU computed.

    Args: boxes ``[N, 4]``, groups ``[N]`` int64, ``min_iou`` in [0, 1).
    Returns: ``i [P]``, ``j [P]`` (int64, ``i < j``) and ``iou [P]``.
    """
    n, device = boxes.shape[0], boxes.device
    perm = torch.argsort(boxes[:, 0], stable=True)
    perm = perm[torch.argsort(groups[perm], stable=True)]  # positions sorted by (group, x1)
    x1, y1, x2, y2 = boxes[perm].unbind(1)
    area = (x2 - x1) * (y2 - y1)
    xs, width = x1.double(), (x2 - x1).double().clamp(min=0)
    span = float(xs.max() - xs.min()) + float(width.max()) + 1.0
    if min_iou > 0:  # a slightly wider window than the bound: rounding never drops a pair
        window = (1.0 - min_iou) * width * 1.001 + 1e-3
    else:
        window = torch.full_like(width, span)
    key = groups[perm].double() * (2 * span) + (xs - xs.min())
    end = torch.searchsorted(key, key + window)  # first position outside the window (or group)
    counts = (end - torch.arange(1, n + 1, device=device)).clamp(min=0)
    p = torch.repeat_interleave(torch.arange(n, device=device), counts)  # [P] left box
    q = torch.arange(p.numel(), device=device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts - torch.arange(1, n + 1, device=device), counts)  # [P] right box
    # IoU; x1[q] >= x1[p] in this order, so the intersection starts at x1[q]
    table = torch.stack((x1, y1, x2, y2, area))  # [5, n]: one gather per side
    bp, bq = table.index_select(1, p), table.index_select(1, q)  # [5, P]
    iw = (torch.minimum(bp[2], bq[2]) - bq[0]).clamp_(min=0)
    ih = (torch.minimum(bp[3], bq[3]) - torch.maximum(bp[1], bq[1])).clamp_(min=0)
    inter = iw * ih
    iou = inter / (bp[4] + bq[4] - inter).clamp_(min=1e-12)
    close = (iou > min_iou).nonzero().squeeze(1)
    a, b = perm[p[close]], perm[q[close]]
    return torch.minimum(a, b), torch.maximum(a, b), iou[close]


class _Windows:
    """Boxes (in rank order) indexed by ``(group, x1)`` to find, for given source boxes, the
    same-group boxes that can overlap them by ``IoU > t`` without an N×N matrix.

    ``IoU > t`` needs ``min(w) / max(w) > t`` and an x-overlap ``> t·max(w)``, so a partner
    ``q`` of ``p`` has ``x1_q`` in ``(x1_p - (1-t)/t·w_p, x1_p + (1-t)·w_p)``: two
    ``searchsorted`` calls give each source its window of candidates.
    """

    def __init__(self, boxes: Tensor, groups: Tensor):
        self.boxes, self.groups = boxes, groups  # [N, 4], [N]
        x1 = boxes[:, 0]
        self.width = (boxes[:, 2] - x1).clamp(min=0).double()
        perm = torch.argsort(x1, stable=True)
        self.perm = perm.index_select(0, torch.argsort(groups.index_select(0, perm), stable=True))  # position -> box
        self.x = (x1 - x1.min()).double()
        self.reach = float(self.x.max()) + float(self.width.max()) + 1.0
        self.spacing = 4.0 * self.reach  # groups never share a window
        self.key = (groups.double() * self.spacing + self.x).index_select(0, self.perm)  # [N] ascending

    def pairs_from(self, src: Tensor, t: float, targets: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Pairs ``(i, j)``: ``i`` in ``src [S]``, ``j > i`` of the same group (and with
        ``targets[j]`` when given), ``IoU > t``. Returns ``i [P]``, ``j [P]``, ``iou [P]``."""
        device = src.device
        if t >= 1.0:  # no IoU exceeds 1
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty, self.boxes.new_zeros(0)
        g = self.groups.index_select(0, src).double() * self.spacing
        if t >= 0.4:  # the margins make the windows a little wider than the bound: rounding drops no pair
            x, w = self.x.index_select(0, src), self.width.index_select(0, src)
            lo_key = g + x - ((1 - t) / t * w * 1.001 + 1e-3)
            hi_key = g + x + ((1 - t) * w * 1.001 + 1e-3)
        else:  # wide windows: the whole group
            lo_key, hi_key = g - 1.0, g + self.reach
        lo = torch.searchsorted(self.key, lo_key)
        counts = (torch.searchsorted(self.key, hi_key) - lo).clamp(min=0)
        k = torch.repeat_interleave(torch.arange(src.numel(), device=device), counts)
        offset = torch.arange(k.numel(), device=device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        i = src.index_select(0, k)
        j = self.perm.index_select(0, lo.index_select(0, k) + offset)
        wanted = j > i
        if targets is not None:
            wanted &= targets.index_select(0, j)
        sel = wanted.nonzero().squeeze(1)
        i, j = i.index_select(0, sel), j.index_select(0, sel)
        iou = pair_iou(self.boxes.index_select(0, i), self.boxes.index_select(0, j))
        close = (iou > t).nonzero().squeeze(1)
        return i.index_select(0, close), j.index_select(0, close), iou.index_select(0, close)


def _cluster_fixed_point(n: int, src: Tensor, dst: Tensor) -> Tensor:
    """Cluster-NMS on the edges ``src -> dst`` (``src`` ranked above ``dst``): from "all kept",
    a box is kept when no kept box has an edge into it, repeated until nothing changes
    (at most ``n`` rounds; the fixed point is greedy NMS). Returns ``keep [n]`` bool."""
    keep = torch.ones(n, dtype=torch.bool, device=src.device)
    for _ in range(n + 1):
        hits = torch.zeros(n, device=src.device).index_add_(0, dst, keep.index_select(0, src).float())
        new_keep = hits == 0
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def voting_cluster_diou_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_thr: float = 0.6,
                            vote_thr: float = VOTE_THR, sigma: float = VOTE_SIGMA, beta: float = DIOU_BETA,
                            max_num: int = -1, penalty: bool = True, voting: bool = True,
                            block: int = 512) -> tuple[Tensor, Tensor, Tensor]:
    """Score-voting Cluster-DIoU-NMS (the LD code's ``voting_cluster_diounms``, DESIGN §6).

    Candidates are ranked by score (descending, ties in input order). Boxes of different
    ``groups`` (image × class) never interact. Cluster-NMS: a box is suppressed when a
    *kept* box ranked above it has ``DIoU > iou_thr``, iterated from "all kept" until the
    kept set stops changing (the fixed point equals greedy DIoU-NMS). Then every kept box
    becomes the weighted mean of itself and the boxes ranked below it with
    ``DIoU > vote_thr`` to it (the upper triangle of the LD code's matrix), weights
    ``exp(-(1 - DIoU)^2 / sigma) · score``; scores are unchanged.

    Computed exactly like the dense algorithm (:func:`voting_cluster_diou_nms_dense`) but
    on sparse same-group pairs (only pairs with ``IoU > iou_thr`` or ``> vote_thr`` can
    suppress or vote, since DIoU ≤ IoU), in rounds: the ``block`` best undecided boxes run
    Cluster-NMS among themselves (their fate depends only on boxes ranked above them, all
    decided), then the boxes they keep suppress the undecided rest, found by a windowed
    search (:class:`_Windows`). The work follows kept boxes × their neighbours, not the
    square of the candidates.

    Args:
        boxes: ``[N, 4]`` xyxy; scores: ``[N]``; groups: ``[N]`` int64 (e.g. ``image·C + label``).
        iou_thr: suppression threshold on DIoU; vote_thr, sigma: voting; beta: DIoU penalty exponent.
        max_num: keep at most this many (the best); ≤ 0 keeps all.
        penalty: False uses plain IoU (Cluster-NMS, which keeps what greedy NMS keeps).
        voting: False returns the kept boxes unchanged.
        block: boxes decided per round (speed only; the result does not depend on it).
    Returns:
        ``boxes [K, 4]`` (voted), ``scores [K]`` and ``keep [K]`` (indices into the inputs),
        sorted by score, descending.
    """
    n, device = boxes.shape[0], boxes.device
    if n == 0:
        return boxes.new_zeros((0, 4)), scores.new_zeros((0,)), torch.zeros(0, dtype=torch.long, device=device)
    order = torch.argsort(scores, descending=True, stable=True)
    # from here on a box is its rank: i < j means i scored at least as high as j
    b, s, g = boxes.index_select(0, order).float(), scores.index_select(0, order).float(), groups.index_select(0, order)

    def overlap(i: Tensor, j: Tensor, iou: Tensor) -> Tensor:
        return pair_diou(b.index_select(0, i), b.index_select(0, j), beta, iou=iou) if penalty else iou

    windows = _Windows(b, g)
    t_sup, block = max(iou_thr, 0.0), max(int(block), 1)
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    undecided = torch.ones(n, dtype=torch.bool, device=device)
    one_round = None  # (i, j, overlap) of every pair, when one block held all the boxes
    while True:
        rest = undecided.nonzero().squeeze(1)
        if rest.numel() == 0:
            break
        blk = rest[:block]  # the best undecided boxes
        bi, bj, biou = _overlapping_pairs(b.index_select(0, blk), g.index_select(0, blk), t_sup)
        bi, bj = blk.index_select(0, bi), blk.index_select(0, bj)
        bd = overlap(bi, bj, biou)
        over = (bd > iou_thr).nonzero().squeeze(1)
        kept_now = blk[_cluster_fixed_point(n, bi.index_select(0, over), bj.index_select(0, over))[blk]]
        keep[kept_now] = True
        undecided[blk] = False
        if blk.numel() == n:
            one_round = (bi, bj, bd)
        elif rest.numel() > blk.numel():
            i, j, iou = windows.pairs_from(kept_now, t_sup, targets=undecided)
            undecided[j[overlap(i, j, iou) > iou_thr]] = False

    kept = keep.nonzero().squeeze(1)
    if max_num > 0:
        kept = kept[:max_num]
    if not voting:
        return boxes[order[kept]], scores[order[kept]], order[kept]
    if one_round is not None and vote_thr >= t_sup:  # those pairs hold every possible voter
        i, j, d = one_round
    else:
        i, j, iou = windows.pairs_from(kept, max(vote_thr, 0.0))
        d = overlap(i, j, iou)
    votes = (d > vote_thr).nonzero().squeeze(1)
    vi, vj, vd = i.index_select(0, votes), j.index_select(0, votes), d.index_select(0, votes)
    weight = torch.exp(-(1 - vd).square() / sigma) * s.index_select(0, vj)  # [V]
    num = (b * s[:, None]).index_add_(0, vi, b.index_select(0, vj) * weight[:, None])
    den = s.clone().index_add_(0, vi, weight)[kept, None]
    voted = torch.where(den > 0, num[kept] / den, b[kept]).to(boxes.dtype)  # all-zero scores: unchanged
    return voted, scores[order[kept]], order[kept]


def voting_cluster_diou_nms_dense(boxes: Tensor, scores: Tensor, groups: Tensor, iou_thr: float = 0.6,
                                  vote_thr: float = VOTE_THR, sigma: float = VOTE_SIGMA, beta: float = DIOU_BETA,
                                  max_num: int = -1, penalty: bool = True, voting: bool = True,
                                  ) -> tuple[Tensor, Tensor, Tensor]:
    """The literal DESIGN §6 algorithm on one N×N DIoU matrix (reference; O(N²) memory).

    Boxes are offset by ``group · C`` (C larger than any coordinate) so that groups never
    overlap, the matrix is computed in float64, Cluster-NMS runs on its upper triangle and
    voting on the kept rows. Same arguments and results as :func:`voting_cluster_diou_nms`.
    """
    n = boxes.shape[0]
    if n == 0:
        return boxes.new_zeros((0, 4)), scores.new_zeros((0,)), torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    b, s = boxes[order].double(), scores[order].double()
    offset = (b.abs().max() * 4 + 1) * groups[order].double()
    shifted = b + offset[:, None]
    pairwise = pair_diou if penalty else (lambda a, b_, _beta: pair_iou(a, b_))
    diou = pairwise(shifted[:, None, :], shifted[None, :, :], beta)  # [N, N]
    upper = diou.triu(diagonal=1)
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    for _ in range(n + 1):
        new_keep = (upper * keep[:, None]).amax(dim=0) <= iou_thr
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    if not voting:
        kept = keep.nonzero().squeeze(1)[: max_num if max_num > 0 else None]
        return boxes[order[kept]], scores[order[kept]], order[kept]
    rows = diou.triu()[keep]  # [K, N]: each kept box with itself and the boxes ranked below
    weight = torch.where(rows > vote_thr, torch.exp(-(1 - rows).square() / sigma), 0.0) * s[None]
    den = weight.sum(1, keepdim=True)
    voted = torch.where(den > 0, (weight @ b) / den, b[keep])
    kept = keep.nonzero().squeeze(1)
    if max_num > 0:
        kept, voted = kept[:max_num], voted[:max_num]
    return voted.to(boxes.dtype), scores[order[kept]], order[kept]


def _voting_cluster_diou(boxes: Tensor, scores: Tensor, groups: Tensor,
                         test_cfg: TestConfig) -> tuple[Tensor, Tensor, Tensor]:
    """``test.nms="voting_cluster_diou"``: :func:`voting_cluster_diou_nms` at ``test.iou_thr``."""
    return voting_cluster_diou_nms(boxes, scores, groups, iou_thr=test_cfg.iou_thr)


# Dispatch point for ``test_cfg.nms``.
NMS_METHODS: dict[str, NmsFn] = {"nms": _nms, "voting_cluster_diou": _voting_cluster_diou}
# Other spellings accepted for ``test_cfg.nms``: the LD code's config type name.
NMS_SPELLINGS: dict[str, str] = {"voting_cluster_diounms": "voting_cluster_diou"}


def get_nms(name: str) -> NmsFn:
    """The NMS function for ``test_cfg.nms`` (also the LD code's spelling ``"voting_cluster_diounms"``);
    ConfigError naming the valid values otherwise."""
    try:
        return NMS_METHODS[NMS_SPELLINGS.get(name, name)]
    except KeyError:
        raise ConfigError(
            f"test.nms={name!r} is not a known NMS method; valid values: {sorted(NMS_METHODS)}"
        ) from None


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
    valid = ((scores > test_cfg.score_thr)
             & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1]))
    image_ids = torch.arange(num_images, device=device).unsqueeze(1).expand_as(labels)[valid]
    boxes, scores, labels = boxes[valid], scores[valid], labels[valid]

    boxes, scores, keep = nms_fn(boxes, scores, image_ids * num_classes + labels, test_cfg)
    labels, image_ids = labels[keep], image_ids[keep]
    results = []
    for i in range(num_images):
        sel = (image_ids == i).nonzero().squeeze(1)
        if test_cfg.max_per_img > 0:
            sel = sel[: test_cfg.max_per_img]
        results.append({"boxes": boxes[sel], "scores": scores[sel], "labels": labels[sel]})
    return results
