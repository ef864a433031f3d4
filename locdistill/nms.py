"""Non-maximum suppression on plain tensors: class-aware hard NMS and the LD code's
score-voting Cluster-DIoU-NMS (DESIGN §6), sparse (fast) and dense (reference).

Every function takes boxes ``[N, 4]`` (xyxy), scores ``[N]``, groups ``[N]`` (int64; boxes
of different groups, e.g. image × class, never interact) and plain numbers; none reads
a config. :func:`get_nms` maps a ``test.nms`` name to its function. Imports: errors and
torchvision.ops only (layer 0, DESIGN §10).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from .errors import ConfigError

# An NMS method: (boxes [M,4], scores [M], groups [M] int64, iou_thr)
#   -> (boxes [K,4], scores [K], keep [K] indices into the inputs), sorted by score, descending.
# Boxes of different groups (image × class) never interact. Methods may move boxes
# (score voting), which is why boxes and scores are returned.
NmsFn = Callable[[Tensor, Tensor, Tensor, float], "tuple[Tensor, Tensor, Tensor]"]


def hard_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_thr: float) -> tuple[Tensor, Tensor, Tensor]:
    """Class-aware hard NMS (``torchvision.ops.batched_nms``, IoU > ``iou_thr`` suppressed)."""
    keep = batched_nms(boxes, scores, groups, iou_thr)
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


# Dispatch point for ``test.nms``: each takes (boxes, scores, groups, iou_thr).
NMS_METHODS: dict[str, NmsFn] = {"nms": hard_nms, "voting_cluster_diou": voting_cluster_diou_nms}
# Other spellings accepted for ``test.nms``: the LD code's config type name.
NMS_SPELLINGS: dict[str, str] = {"voting_cluster_diounms": "voting_cluster_diou"}


def get_nms(name: str) -> NmsFn:
    """The NMS function for a ``test.nms`` name (also the LD code's spelling ``"voting_cluster_diounms"``),
    called as ``fn(boxes, scores, groups, iou_thr)``; ConfigError naming the valid values otherwise."""
    try:
        return NMS_METHODS[NMS_SPELLINGS.get(name, name)]
    except KeyError:
        raise ConfigError(
            f"test.nms={name!r} is not a known NMS method; valid values: {sorted(NMS_METHODS)}"
        ) from None
