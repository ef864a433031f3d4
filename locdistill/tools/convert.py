"""``locdistill convert IN OUT``: strip a checkpoint down to the student and publish it.

Reads a locdistill, mmdetection or LD-repo checkpoint (``{"model", ...}``,
``{"meta", "state_dict"}`` or a bare state dict; third-party metadata goes through the
restricted loader of :mod:`locdistill.checkpoint`), removes

- teacher weights: every key with a dot-separated part starting with ``teacher``
  (``teacher_model.*``, ``teacher.*``, ``bbox_head.teacher_models.*``),
- training state: optimizer, scheduler, AMP scaler and any other top-level entry,
- metadata that is not plain data (numpy arrays, mmcv objects, tensors),

and writes ``{"model": state_dict, "meta": {..., "converted_from": IN's name}}``
atomically as ``OUT-<sha256[:8]>.pth`` (the hash of the final file, as mmdetection's
``publish_model``). The result loads with ``torch.load(weights_only=True)``. A training
checkpoint written with ``train.ema`` is published with its EMA weights (the ones its
evaluations scored; ``meta.ema_updates`` records their update count), not its raw ``model``.

``format="mmdet"`` (``locdistill convert --format mmdet``) writes the same weights in the
layout of an mmdetection 2.x checkpoint instead, ``{"meta": {..., "CLASSES",
"mmdet_version"}, "state_dict": ...}``: locdistill's module names are mmdetection's
(DESIGN §3), so the keys need no renaming and mmdetection 2.x/3.x and the LD code load the
file with their ``load_checkpoint`` / ``init_detector`` (both take the class names from
``meta["CLASSES"]`` when the file has no mmengine ``dataset_meta``). locdistill reads it back like any
mmdetection file (``import-mmdet``, ``test``, a teacher checkpoint).
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .. import __version__
from ..checkpoint import atomic_torch_save, extract_state_dict, inference_checkpoint, load_checkpoint
from ..errors import CheckpointError
from ..mmdet_format import is_teacher_key, safe_metadata, teacher_prefix

__all__ = ["FORMATS", "MMDET_VERSION", "ConvertResult", "convert_checkpoint", "mmdet_meta", "is_teacher_key", "publish_path", "safe_metadata", "sha256_file"]

# top-level entries that are weights or metadata; anything else is training state and dropped
_WEIGHT_ENTRIES = ("model", "state_dict")

FORMATS = ("locdistill", "mmdet")
# the mmdetection release of the LD code, whose checkpoint layout --format mmdet follows
MMDET_VERSION = "2.10.0"


@dataclass
class ConvertResult:
    """What :func:`convert_checkpoint` wrote and what it removed."""

    path: Path  # the published file, OUT-<sha256[:8]>.pth
    sha256: str  # hex digest of that file
    num_tensors: int  # tensors kept in "model"
    stripped: dict[str, int] = field(default_factory=dict)  # teacher prefix -> tensors removed
    dropped_entries: list[str] = field(default_factory=list)  # top-level entries removed (optimizer, config...)
    dropped_meta: list[str] = field(default_factory=list)  # metadata keys that were not plain data
    dropped_prefix: str = ""  # "student." when the weights came from a whole Distiller
    ema: bool = False  # the weights are the file's EMA ("ema" entry of a train.ema checkpoint), not its "model"
    meta: dict[str, Any] = field(default_factory=dict)
    format: str = "locdistill"  # "locdistill" ({"model", "meta"}) or "mmdet" ({"meta", "state_dict"})

    def summary(self) -> list[str]:
        """Human-readable lines (printed by the CLI)."""
        lines = []
        if self.stripped:
            total = sum(self.stripped.values())
            groups = ", ".join(f"{p}.* ({n})" for p, n in sorted(self.stripped.items()))
            lines.append(f"stripped {total} teacher tensors: {groups}")
        else:
            lines.append("stripped 0 teacher tensors (none in the file)")
        if self.ema:
            lines.append(f"kept the EMA of the weights ({self.meta.get('ema_updates')} updates), not the raw 'model'")
        if self.dropped_prefix:
            lines.append(f"removed the '{self.dropped_prefix}' prefix of the student weights")
        lines.append("dropped entries (training state, config): " + (", ".join(self.dropped_entries) or "none"))
        if self.dropped_meta:
            lines.append("dropped metadata that is not plain data: " + ", ".join(self.dropped_meta))
        lines.append(f"kept {self.num_tensors} student tensors; meta: {', '.join(sorted(self.meta))}")
        if self.format == "mmdet":
            lines.append("format: mmdet ({'meta', 'state_dict'}), for mmdetection 2.x/3.x and the LD code")
        lines.append(f"sha256 {self.sha256}")
        lines.append(f"wrote {self.path}")
        return lines


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def publish_path(out: str | os.PathLike, sha256: str) -> Path:
    """``OUT-<sha256[:8]>.pth``; the hash goes before a ``.pth`` / ``.pt`` suffix."""
    out = Path(out)
    if out.suffix in (".pth", ".pt"):
        return out.with_name(f"{out.stem}-{sha256[:8]}{out.suffix}")
    return out.with_name(f"{out.name}-{sha256[:8]}.pth")


def mmdet_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` (plain data) with the entries mmdetection reads: ``CLASSES`` when the class
    names are known and ``mmdet_version`` (:data:`MMDET_VERSION` unless the file came from
    mmdetection)."""
    out = dict(meta)
    classes = out.get("classes") or out.get("CLASSES") or (out.get("dataset_meta") or {}).get("classes")
    if isinstance(classes, (list, tuple)) and classes:
        out["CLASSES"] = tuple(str(c) for c in classes)
    out.setdefault("mmdet_version", MMDET_VERSION)
    out.setdefault("locdistill_version", __version__)
    return out


def convert_checkpoint(src: str | os.PathLike, out: str | os.PathLike, half: bool = False,
                       format: str = "locdistill") -> ConvertResult:
    """Strip teacher weights, training state and non-plain metadata from ``src``; publish at ``out``.

    ``half`` stores floating-point tensors as float16 (half the size; they are cast back
    to the model's dtype when loaded). ``format``: ``"locdistill"`` (``{"model", "meta"}``)
    or ``"mmdet"`` (``{"meta", "state_dict"}`` for mmdetection and the LD code, see the
    module docstring).

    Returns a :class:`ConvertResult`; raises :class:`CheckpointError` naming ``src`` when it
    holds no student weights.
    """
    if format not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {format!r}; use one of {', '.join(FORMATS)}")
    src = Path(src)
    raw = load_checkpoint(src)
    ckpt = inference_checkpoint(raw)  # a train.ema checkpoint publishes its EMA weights
    ema = ckpt is not raw
    state = extract_state_dict(ckpt, source=f"checkpoint {src}")

    stripped: dict[str, int] = defaultdict(int)
    student: dict[str, torch.Tensor] = {}
    skipped = []
    for key, value in state.items():
        if is_teacher_key(key):
            stripped[teacher_prefix(key)] += 1
        elif isinstance(value, torch.Tensor):
            value = value.detach().cpu().clone()
            student[key] = value.half() if half and value.is_floating_point() else value
        else:
            skipped.append(key)
    dropped_prefix = ""
    if student and all(k.startswith("student.") for k in student):  # a whole Distiller's state dict
        student = {k[len("student."):]: v for k, v in student.items()}
        dropped_prefix = "student."
    if not student:
        raise CheckpointError(
            f"checkpoint {src} holds no student weights after removing {sum(stripped.values())} teacher tensors; "
            "nothing to convert")

    bare = not any(isinstance(ckpt.get(k), Mapping) for k in _WEIGHT_ENTRIES)  # a bare state dict
    dropped_entries = [] if bare else sorted(str(k) for k in ckpt if k not in _WEIGHT_ENTRIES and k != "meta")
    meta, dropped_meta = safe_metadata(None if bare else ckpt.get("meta"))
    dropped_meta += [f"state_dict.{k} (not a tensor)" for k in skipped]
    meta["converted_from"] = src.name
    if ema:
        meta["ema_updates"] = int(raw["ema"].get("updates", 0))
    if half:
        meta["dtype"] = "float16"
    if format == "mmdet":
        meta = mmdet_meta(meta)
        obj = {"meta": meta, "state_dict": student}
    else:
        obj = {"model": student, "meta": meta}

    out = Path(out)
    digests: list[str] = []

    def hashed_name(tmp: Path) -> Path:  # renaming keeps the bytes: this is the final file's hash
        digests.append(sha256_file(tmp))
        return publish_path(out, digests[0])

    final = atomic_torch_save(obj, out, final_name=hashed_name)
    digest = digests[0]
    return ConvertResult(path=final, sha256=digest, num_tensors=len(student), stripped=dict(stripped),
                         dropped_entries=dropped_entries, dropped_meta=dropped_meta,
                         dropped_prefix=dropped_prefix, meta=meta, format=format, ema=ema)
