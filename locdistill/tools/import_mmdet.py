"""Model-zoo checkpoints: recognise, normalise, check and import mmdetection-family files.

Accepted inputs (all read through :func:`locdistill.checkpoint.load_checkpoint`:
``weights_only=True`` first, then the restricted unpickler, never arbitrary code):

- **mmdetection 2.x** files ``{"meta": {"CLASSES", "mmdet_version", "config", ...}, "state_dict"}``;
- **mmdetection 3.x / mmengine** files (``meta.dataset_meta.classes``, ``message_hub``
  objects in the metadata). mmdetection 2.x and 3.x use the same GFL key names
  (ResNet / FPN ``ConvModule`` / ``GFLHead``; the model zoo of 3.x serves the 2.x files), so
  no key renaming is needed between them;
- **GFocalV2 repository** files (mmdetection 2.x based; ``bbox_head.reg_conf.{0,2}``);
- **LD repository** files, which may also hold the teacher (``teacher_model.*``,
  ``bbox_head.teacher_models.*``): those keys are dropped;
- locdistill checkpoints and bare state dicts.

Reading these files is core code and lives in :mod:`locdistill.mmdet_format` (key
normalisation, class names, the architecture read off the keys, :func:`mismatch_hint`), which
:func:`locdistill.checkpoint.load_model_weights` applies, so ``train`` / ``test`` / the Distiller
load these files directly. This module is the ``locdistill import-mmdet IN OUT`` command
(:func:`import_checkpoint`): it writes a self-describing locdistill checkpoint (weights + the
matching config + class names); the names it re-exports keep their old import path.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .. import __version__
from ..checkpoint import (atomic_torch_save, checkpoint_num_classes, extract_state_dict, format_diff, load_checkpoint,
                          state_dict_diff)
from ..config import Config, ModelConfig, config_to_dict, load_config
from ..errors import CheckpointError
from ..mmdet_format import (checkpoint_classes, describe_model, detect_source, infer_model_config, matching_configs,
                            mismatch_hint, normalize_state_dict, safe_metadata)
from ..models.build import build_detector

__all__ = ["ImportResult", "checkpoint_classes", "describe_model", "detect_source", "import_checkpoint",
           "checkpoint_num_classes", "infer_model_config", "matching_configs", "mismatch_hint",
           "normalize_state_dict"]


# ----------------------------------------------------------------------------- import-mmdet


@dataclass
class ImportResult:
    """What :func:`import_checkpoint` read and wrote."""

    path: Path
    source: str  # detect_source()
    config_name: str  # the shipped config used, or "" when the architecture was inferred
    model: str  # describe_model()
    num_tensors: int
    classes: Optional[list[str]]
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        """Human-readable lines (printed by the CLI)."""
        lines = [f"read {self.source} checkpoint: {self.model}"]
        lines += self.notes
        lines.append(f"config: {self.config_name}" if self.config_name else
                     "config: none of the shipped configs matches; the inferred model config is stored in the file")
        lines.append(f"classes: {len(self.classes)} from the file's metadata" if self.classes else
                     "classes: not recorded in the file (the dataset's are used at test time)")
        lines.append(f"wrote {self.path} ({self.num_tensors} tensors, strict key check passed)")
        return lines


def _meta_model(cfg: ModelConfig) -> nn.Module:
    cfg = copy.deepcopy(cfg)
    cfg.backbone.pretrained = ""  # a key check never needs ImageNet weights
    with torch.device("meta"):  # keys and shapes only
        return build_detector(cfg)


def import_checkpoint(src: str | os.PathLike, out: str | os.PathLike, config: Optional[str] = None) -> ImportResult:
    """Convert an mmdetection / GFocalV2 / LD-repo checkpoint into a locdistill checkpoint.

    The weights are checked strictly against ``config`` (a shipped name or a path; its
    ``model.num_classes`` follows the file) or, without one, against the shipped config
    whose architecture the keys show (:func:`matching_configs`; else the inferred model
    config). Writes ``{"model", "config", "meta": {"classes", "imported_from", "source", ...}}``
    atomically to ``out``; it loads with ``torch.load(weights_only=True)``.

    Raises :class:`CheckpointError` naming the file, with the grouped key diff and a hint,
    when the weights do not fit.
    """
    src = Path(src)
    ckpt = load_checkpoint(src)
    raw = extract_state_dict(ckpt, source=f"checkpoint {src}")
    source = detect_source(ckpt, raw)
    state, notes = normalize_state_dict(raw)
    inferred = infer_model_config(state, source=f"checkpoint {src}")

    if config:
        cfg = load_config(config)
        cfg.model.num_classes = inferred.num_classes
        config_name = str(config)
    else:
        names = matching_configs(inferred)
        # same architecture, different schedules: prefer the config the file is named after
        names.sort(key=lambda n: n.split("/")[-1] not in src.name)
        if len(names) > 1:
            notes.append("configs with this architecture (they differ in training settings only): "
                         + ", ".join(names))
        if names:
            cfg = load_config(names[0])
            cfg.model.num_classes = inferred.num_classes
            config_name = names[0]
        else:
            cfg = Config(name=f"imported_{src.stem}", model=inferred)
            config_name = ""
    model = _meta_model(cfg.model)
    state, fill_notes = normalize_state_dict(state, own=model.state_dict())
    diff = state_dict_diff(model, state)
    if diff["missing"] or diff["unexpected"] or diff["shape"]:
        hint = mismatch_hint(model, state)
        raise CheckpointError(
            f"checkpoint {src} ({source}) does not match config '{cfg.name}':\n{format_diff(diff)}"
            + (f"\n{hint}" if hint else "\nCheck --config (model.num_classes / backbone / head settings)."))

    classes = checkpoint_classes(ckpt)
    if classes and len(classes) != cfg.model.num_classes:
        notes.append(f"ignored {len(classes)} class names in the metadata: "
                     f"the head has {cfg.model.num_classes} classes")
        classes = None
    meta_in, _ = safe_metadata(ckpt.get("meta"))
    meta: dict[str, Any] = {"version": __version__, "imported_from": src.name, "source": source,
                            "config_name": config_name}
    for key in ("epoch", "iter", "mmdet_version"):
        if isinstance(meta_in.get(key), (int, str)):
            meta[key] = meta_in[key]
    if classes:
        meta["classes"] = classes
    sd = {k: v.detach().cpu() for k, v in state.items()}
    path = atomic_torch_save({"model": sd, "config": config_to_dict(cfg), "meta": meta}, out)
    return ImportResult(path=path, source=source, config_name=config_name, model=describe_model(inferred),
                        num_tensors=len(sd), classes=classes, notes=notes + fill_notes)
