"""Heterogeneous LD: a teacher whose box distributions use other bins, anchor points or levels.

A DFL-style head predicts, per anchor point ``p`` and box side, a distribution over the
distances ``d_k = k · s`` (``k = 0..n``, ``s`` the level's stride, ``n = reg_max``) from ``p``
to that side. GFL places ``p`` at ``(j·s, i·s)`` with ``n = 16`` on P3-P7; a YOLOv8-style head
at the cell centre ``((j+0.5)·s, (i+0.5)·s)`` with ``n = 15`` on P3-P5. This module expresses
a teacher's distributions on the student's bins at the student's anchor points, so that the
LD terms (:mod:`.terms`) compare like with like.

**The rule** (docs/distillation.md, "Heterogeneous LD"):

1. *Levels* are matched by stride: a student level of stride ``s`` takes the teacher level of
   the same stride; levels of either model without a partner are skipped (one warning at
   start-up, from :func:`~.teacher.check_compatible`).
2. *Cells*: student cell ``(i, j)`` of a matched level takes teacher cell ``(i, j)`` of the
   partner level. Both grids start at the image's top-left pixel and both models see the same
   padded batch, so when their sizes differ (a family rounding ``H / s`` down instead of up)
   the grids are aligned top-left and the student cells beyond the teacher's grid are
   unmatched (``matched`` False: the wiring must give them no LD weight).
3. *Anchor offset*: with ``(dx, dy) = p_s − p_t`` (pixels), a teacher distance ``d`` becomes,
   measured from the student's point, ``d + dx`` (left), ``d + dy`` (top), ``d − dx`` (right),
   ``d − dy`` (bottom) (:func:`side_shift`).
4. *Bins*: divided by the student's stride, teacher bin ``k`` of side ``σ`` sits at
   ``v_k = (k · s_t + shift_σ) / s_s`` student bins (:func:`student_bin_values`).
5. *Mass*: the probability ``p_k`` of teacher bin ``k`` goes to the two student bins around
   ``v_k`` by linear interpolation, ``(1 − f)·p_k`` to ``⌊v_k⌋`` and ``f·p_k`` to ``⌊v_k⌋ + 1``
   with ``f = v_k − ⌊v_k⌋`` (:func:`resample_bins`). This keeps the total mass (1) and, while
   every ``v_k`` with ``p_k > 0`` lies in ``[0, n_s]``, the expected distance (the Integral) exactly.
   A ``v_k`` outside ``[0, n_s]`` is clamped: its mass goes to the edge bin (0 or ``n_s``), which
   shifts the mean towards the inside, the only case where the mean is not preserved
   (:func:`clipped_mass` reports how much mass that was).
6. *Temperature*: the LD terms compare ``softmax(t / T)`` with ``softmax(s / T)``. The teacher is
   resampled **at each temperature a term uses**: ``q_T = resample(softmax(t / T))``, handed to the
   terms as the logits ``T · log q_T`` (so that the terms' ``softmax(· / T)`` gives back ``q_T``
   exactly) (:meth:`HeteroTeacher.dense`). On identical bins and points this is the ordinary LD
   target, ``softmax(t / T)``. (Resampling once at ``T = 1`` and tempering ``log q_1`` would
   instead temper the interpolated distribution, whose mean is then not the teacher's.)

Everything here is a pure tensor function of :class:`~locdistill.models.dense.DenseOutputs`; no
detector family is imported. Shapes: ``B`` images, ``A_t`` / ``A_s`` teacher / student anchors,
``C`` classes, ``n_t`` / ``n_s`` teacher / student ``reg_max``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..models.dense import DenseOutputs

__all__ = ["HeteroTeacher", "LevelMatch", "clipped_mass", "describe_mapping", "level_name", "level_strides",
           "map_teacher", "match_levels", "resample_bins", "side_shift", "student_bin_values"]

#: floor of the resampled probabilities before the log (a student bin the teacher gives no mass)
PROB_FLOOR = 1e-12


def resample_bins(probs: Tensor, values: Tensor, n_s: int) -> Tensor:
    """Redistribute each teacher bin's mass onto the student's bins ``0..n_s`` by linear interpolation.

    Teacher bin ``k`` (probability ``p_k``) sits at ``values[..., k]`` student bins; ``v`` is clamped
    to ``[0, n_s]`` (mass outside the student's range goes to the edge bin) and split between
    ``⌊v⌋`` (weight ``1 − f``) and ``⌊v⌋ + 1`` (weight ``f = v − ⌊v⌋``); ``v = n_s`` goes to ``n_s``.
    Dense (two ``scatter_add``), no loop over elements; differentiable in ``probs``.

    Args:
        probs: ``[..., n_t+1]`` teacher probabilities (each row sums to 1).
        values: ``[..., n_t+1]``, broadcastable to ``probs`` (e.g. ``[n_t+1]`` or ``[A, 4, n_t+1]``):
            position of each teacher bin in student-bin units (:func:`student_bin_values`).
        n_s: the student's ``reg_max`` (``>= 1``).
    Returns:
        ``[..., n_s+1]`` probabilities on the student's bins, in ``probs``' dtype; the identity
        (bit for bit) when ``values == arange(n_t+1)`` and ``n_s == n_t``.
    """
    if n_s < 1:
        raise ValueError(f"the student needs at least 2 bins (reg_max >= 1), got reg_max={n_s}")
    shape = torch.broadcast_shapes(probs.shape, values.shape)
    v = values.to(probs.dtype).clamp(0, n_s)
    lo = v.floor().clamp(max=n_s - 1)
    frac = (v - lo).expand(shape)
    lo = lo.long().expand(shape)
    p = probs.expand(shape)
    out = probs.new_zeros(shape[:-1] + (n_s + 1,))
    out = out.scatter_add(-1, lo, p * (1 - frac))
    return out.scatter_add(-1, lo + 1, p * frac)


def clipped_mass(probs: Tensor, values: Tensor, n_s: int) -> Tensor:
    """``[...]``: the mass :func:`resample_bins` moves to an edge bin (teacher bins outside ``[0, n_s]``).

    Args: as :func:`resample_bins`. Zero means the Integral is preserved exactly.
    """
    outside = (values < 0) | (values > n_s)
    return torch.where(outside, probs, torch.zeros((), dtype=probs.dtype, device=probs.device)).sum(-1)


def side_shift(points_t: Tensor, points_s: Tensor) -> Tensor:
    """Per-side change of a distance when measured from the student's point instead of the teacher's.

    Args:
        points_t: ``[A, 2]`` teacher anchor points ``(x, y)`` in pixels.
        points_s: ``[A, 2]`` the corresponding student points.
    Returns:
        ``[A, 4]`` pixels, sides (l, t, r, b): ``(dx, dy, −dx, −dy)`` with ``(dx, dy) = p_s − p_t``
        (a student point to the right of the teacher's is farther from the box's left side).
    """
    d = points_s - points_t
    return torch.cat([d, -d], dim=-1)


def student_bin_values(n_t: int, stride_t: Tensor, stride_s: Tensor, shift: Tensor) -> Tensor:
    """Where each teacher bin lands on the student's bin axis: ``(k · s_t + shift) / s_s``.

    Args:
        n_t: the teacher's ``reg_max``.
        stride_t: ``[A]`` teacher strides (pixels per teacher bin).
        stride_s: ``[A]`` student strides (pixels per student bin).
        shift: ``[A, 4]`` pixels (:func:`side_shift`).
    Returns:
        ``[A, 4, n_t+1]`` positions in student bins (float32).
    """
    k = torch.arange(n_t + 1, device=shift.device, dtype=torch.float32)
    pixels = k * stride_t.float()[:, None, None] + shift.float()[..., None]
    return pixels / stride_s.float()[:, None, None]


def level_name(stride: int) -> str:
    """``"P3 (stride 8)"`` for a power-of-two stride, ``"stride 12"`` otherwise."""
    s = int(stride)
    if s > 0 and s & (s - 1) == 0:
        return f"P{int(math.log2(s))} (stride {s})"
    return f"stride {s}"


@dataclass(frozen=True)
class LevelMatch:
    """Levels of a teacher/student pair matched by stride.

    Attributes:
        pairs: ``((student level, teacher level), ...)`` of equal stride, in the student's order.
        strides: the stride of each pair.
        skipped_teacher: teacher levels (indices) without a student level of their stride.
        skipped_student: student levels without a teacher level of their stride (they get no LD).
    """

    pairs: tuple
    strides: tuple
    skipped_teacher: tuple
    skipped_student: tuple

    def describe_skipped(self, t_strides: Sequence[int], s_strides: Sequence[int]) -> str:
        """One sentence naming the skipped levels ('' when none)."""
        parts = []
        if self.skipped_teacher:
            names = ", ".join(level_name(t_strides[i]) for i in self.skipped_teacher)
            parts.append(f"teacher level(s) {names} have no student level of the same stride and are not used")
        if self.skipped_student:
            names = ", ".join(level_name(s_strides[i]) for i in self.skipped_student)
            parts.append(f"student level(s) {names} have no teacher level of the same stride and get no LD")
        return "; ".join(parts)


def match_levels(t_strides: Sequence[int], s_strides: Sequence[int], warn: bool = True) -> LevelMatch:
    """Match levels by stride; with ``warn``, one ``UserWarning`` naming every skipped level.

    Raises ValueError when no stride is shared (nothing can be mapped).
    """
    t_strides, s_strides = [int(s) for s in t_strides], [int(s) for s in s_strides]
    t_index = {s: i for i, s in enumerate(t_strides)}
    pairs = tuple((i, t_index[s]) for i, s in enumerate(s_strides) if s in t_index)
    if not pairs:
        raise ValueError(f"teacher strides {tuple(t_strides)} and student strides {tuple(s_strides)} share no "
                         "level: no teacher distribution sits at a student anchor")
    used_t = {t for _, t in pairs}
    match = LevelMatch(pairs=pairs, strides=tuple(s_strides[i] for i, _ in pairs),
                       skipped_teacher=tuple(i for i in range(len(t_strides)) if i not in used_t),
                       skipped_student=tuple(i for i in range(len(s_strides)) if s_strides[i] not in t_index))
    if warn and (match.skipped_teacher or match.skipped_student):
        warnings.warn(f"heterogeneous LD: {match.describe_skipped(t_strides, s_strides)}", UserWarning, stacklevel=2)
    return match


def describe_mapping(t_strides: Sequence[int], s_strides: Sequence[int], t_reg_max: int, s_reg_max: int,
                     t_offset: float = 0.0, s_offset: float = 0.0, warn: bool = True) -> tuple:
    """What heterogeneous LD maps for a pair of layouts, in words: ``(LevelMatch, description)``.

    Args:
        t_strides, s_strides: per-level strides of teacher and student.
        t_reg_max, s_reg_max: their ``reg_max``.
        t_offset, s_offset: anchor-point offset in strides (GFL 0: points at ``(j·s, i·s)``; YOLOv8-style
            0.5: cell centres).
        warn: one warning naming the skipped levels (:func:`match_levels`).
    Raises ValueError when no stride is shared.
    """
    levels = match_levels(t_strides, s_strides, warn=warn)
    matched = ", ".join(level_name(s) for s in levels.strides)
    lines = [f"levels matched by stride: {matched}"]
    skipped = levels.describe_skipped(t_strides, s_strides)
    if skipped:
        lines.append(f"skipped: {skipped}")
    delta = float(s_offset) - float(t_offset)
    if delta:
        lines.append(f"anchor points: the student's lie {delta:+g} stride from the teacher's in x and y (offsets "
                     f"{float(t_offset):g} vs {float(s_offset):g}); teacher distances move {delta:+g} student bins "
                     f"(left, top) and {-delta:+g} (right, bottom)")
    lo, hi = min(delta, -delta), t_reg_max + max(delta, -delta)
    if t_reg_max != s_reg_max or delta:
        edge = (f"; teacher mass outside 0..{s_reg_max} student bins (the teacher's span after the shift is "
                f"{lo:g}..{hi:g}) goes to the edge bin" if lo < 0 or hi > s_reg_max else "")
        lines.append(f"bins: the teacher's reg_max={t_reg_max} distributions (distances 0..{t_reg_max} strides) are "
                     f"resampled onto the student's reg_max={s_reg_max} bins by linear interpolation{edge}")
    return levels, "heterogeneous LD: " + "; ".join(lines)


def level_strides(dense: DenseOutputs) -> tuple:
    """The stride of each level of ``dense`` as host ints (one device-to-host copy)."""
    starts, start = [], 0
    for n in dense.num_level_anchors:
        starts.append(start)
        start += n
    idx = torch.tensor(starts, device=dense.strides.device)
    return tuple(int(round(s)) for s in dense.strides[idx].tolist())


@dataclass
class HeteroTeacher:
    """A teacher's outputs gathered at the student's anchors, ready to be resampled (:func:`map_teacher`).

    Attributes:
        box_logits: ``[B, A_s, 4, n_t+1]`` the teacher's box logits at each student anchor's teacher
            cell (0 where unmatched).
        cls_logits: ``[B, A_s, C]`` its class logits there (0 where unmatched); raw_cls_logits: the same
            for a GFLv2 teacher's raw class logits, else None.
        values: ``[A_s, 4, n_t+1]`` position of every teacher bin in student bins (rule steps 3-4).
        matched: ``[A_s]`` bool, the student anchors that have a teacher cell.
        n_s: the student's ``reg_max``.
        levels: the :class:`LevelMatch`.
        student: the student's ``DenseOutputs`` (its points, strides, level ids and sizes are reused).
    """

    box_logits: Tensor
    cls_logits: Tensor
    raw_cls_logits: Optional[Tensor]
    values: Tensor
    matched: Tensor
    n_s: int
    levels: LevelMatch
    student: DenseOutputs

    def probs(self, temperature: float = 1.0) -> Tensor:
        """``[B, A_s, 4, n_s+1]``: ``resample(softmax(t / T))`` on the student's bins (uniform where unmatched)."""
        q = resample_bins(torch.softmax(self.box_logits.float() / temperature, -1), self.values, self.n_s)
        uniform = torch.full((), 1.0 / (self.n_s + 1), device=q.device)
        return torch.where(self.matched[None, :, None, None], q, uniform)

    def clipped(self, temperature: float = 1.0) -> Tensor:
        """``[B, A_s, 4]``: teacher mass moved to an edge bin at temperature ``T`` (0 where unmatched)."""
        m = clipped_mass(torch.softmax(self.box_logits.float() / temperature, -1), self.values, self.n_s)
        return m * self.matched[None, :, None]

    def dense(self, temperature: float) -> DenseOutputs:
        """A teacher :class:`DenseOutputs` on the student's anchors and bins for terms run at ``T``.

        ``box_logits = T · log max(q_T, 1e-12)`` with ``q_T = resample(softmax(t / T))``, so that the
        terms' ``softmax(box_logits / T)`` is ``q_T`` (up to the floor). Build one per temperature the
        terms use (LD and VLR may differ). Unmatched anchors hold uniform box logits and zero class
        logits: multiply the region weights by :attr:`matched`.
        """
        box = temperature * self.probs(temperature).clamp_min(PROB_FLOOR).log()
        s = self.student
        return DenseOutputs(cls_logits=self.cls_logits, box_logits=box, points=s.points, strides=s.strides,
                            level_ids=s.level_ids, centers=s.centers, level_sizes=s.level_sizes,
                            raw_cls_logits=self.raw_cls_logits)


def map_teacher(teacher: DenseOutputs, student: DenseOutputs, warn: bool = False,
                teacher_strides: Optional[Sequence[int]] = None,
                student_strides: Optional[Sequence[int]] = None) -> HeteroTeacher:
    """Gather the teacher's outputs at the student's anchors and place its bins on the student's axis.

    Levels are matched by stride, cells by their ``(i, j)`` (grids aligned top-left; module docstring),
    distances shifted by :func:`side_shift` of the actual anchor points (so any anchor offset is
    handled) and rescaled by the strides (:func:`student_bin_values`). No gradient is taken
    through the teacher here (its outputs come from ``no_grad``).

    Args:
        teacher: ``DenseOutputs`` with ``box_logits [B, A_t, 4, n_t+1]``, ``cls_logits [B, A_t, C]``.
        student: ``DenseOutputs`` with ``box_logits [B, A_s, 4, n_s+1]`` (same ``B``).
        warn: one warning naming the skipped levels (off by default: :func:`~.teacher.check_compatible`
            warns once at start-up).
        teacher_strides, student_strides: per-level strides as host ints; read from the tensors when None.
    Returns:
        a :class:`HeteroTeacher` (``probs(T)``, ``dense(T)``, ``matched``, ``levels``).
    """
    if teacher.box_logits.shape[0] != student.box_logits.shape[0]:
        raise ValueError(f"teacher batch {teacher.box_logits.shape[0]} != student batch {student.box_logits.shape[0]}")
    t_strides = tuple(teacher_strides) if teacher_strides is not None else level_strides(teacher)
    s_strides = tuple(student_strides) if student_strides is not None else level_strides(student)
    levels = match_levels(t_strides, s_strides, warn=warn)
    device = student.points.device
    t_starts = [0]
    for n in teacher.num_level_anchors[:-1]:
        t_starts.append(t_starts[-1] + n)
    index, matched = [], []
    t_of_s = dict(levels.pairs)
    for ls, (hs, ws) in enumerate(student.level_sizes):
        ii = torch.arange(hs, device=device)[:, None].expand(hs, ws).reshape(-1)
        jj = torch.arange(ws, device=device)[None, :].expand(hs, ws).reshape(-1)
        lt = t_of_s.get(ls)
        if lt is None:
            index.append(torch.zeros(hs * ws, dtype=torch.long, device=device))
            matched.append(torch.zeros(hs * ws, dtype=torch.bool, device=device))
            continue
        ht, wt = teacher.level_sizes[lt]
        ok = (ii < ht) & (jj < wt)
        index.append(torch.where(ok, t_starts[lt] + ii * wt + jj, torch.zeros((), dtype=torch.long, device=device)))
        matched.append(ok)
    index, matched = torch.cat(index), torch.cat(matched)
    shift = side_shift(teacher.points[index].float(), student.points.float())
    values = student_bin_values(teacher.reg_max, teacher.strides[index], student.strides, shift)
    keep = matched[None, :, None]
    zero = torch.zeros((), device=device)
    box = torch.where(keep[..., None], teacher.box_logits[:, index].detach().float(), zero)
    cls = torch.where(keep, teacher.cls_logits[:, index].detach().float(), zero)
    raw = None
    if teacher.raw_cls_logits is not None:
        raw = torch.where(keep, teacher.raw_cls_logits[:, index].detach().float(), zero)
    return HeteroTeacher(box_logits=box, cls_logits=cls, raw_cls_logits=raw, values=values, matched=matched,
                         n_s=student.reg_max, levels=levels, student=student)
