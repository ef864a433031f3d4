"""``locdistill import-ultralytics model.pt OUT.pth``: YOLOv8 detection weights from an Ultralytics file.

The file is read by :func:`locdistill.ultralytics_format.read_ultralytics` (no Ultralytics import, no
pickled code runs: the pickled modules become inert placeholders and only tensors and plain metadata
are kept), its keys are renamed onto :class:`locdistill.models.yolo.YOLO`
(:func:`~locdistill.ultralytics_format.ultralytics_to_locdistill`), the scale (n / s / m / l / x) is the one
whose model has exactly the file's tensor shapes (``model.yaml``'s ``scale`` is tried first), the model
of the shipped ``yolo/yolov8<scale>_coco`` config with the file's class count loads the weights with
``strict=True`` and a locdistill checkpoint is written (weights, that config, the class names).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..checkpoint import format_diff, save_checkpoint, state_dict_diff
from ..config import Config, config_to_dict, load_config
from ..configs.yolo._coco import SCALES
from ..data.transforms import MEAN, STD
from ..errors import CheckpointError
from ..models.build import build_detector
from ..ultralytics_format import DETECT_LAYER, UltralyticsCheckpoint, read_ultralytics, ultralytics_to_locdistill

__all__ = ["EXPECTED_LAYERS", "UltralyticsImport", "fold_input_scaling", "import_ultralytics"]

#: block class (last part of the pickled class name) of each layer of the YOLOv8 detection layout
EXPECTED_LAYERS = ("Conv", "Conv", "C2f", "Conv", "C2f", "Conv", "C2f", "Conv", "C2f", "SPPF",
                   "Upsample", "Concat", "C2f", "Upsample", "Concat", "C2f", "Conv", "Concat", "C2f", "Conv",
                   "Concat", "C2f", "Detect")
# heads / models of the other Ultralytics tasks (their detection part is not imported)
_OTHER_TASKS = {"Segment": "an instance-segmentation", "Pose": "a pose", "OBB": "an oriented-box",
                "Classify": "a classification", "RTDETRDecoder": "an RT-DETR", "WorldDetect": "a YOLO-World",
                "v10Detect": "a YOLOv10"}
_MODEL_TASKS = {"SegmentationModel": "Segment", "PoseModel": "Pose", "OBBModel": "OBB",
                "ClassificationModel": "Classify", "RTDETRDetectionModel": "RTDETRDecoder", "WorldModel": "WorldDetect"}


@dataclass
class UltralyticsImport:
    """What :func:`import_ultralytics` read and wrote."""

    path: Path
    scale: str
    num_classes: int
    classes: Optional[list[str]]
    num_tensors: int
    config_name: str
    version: str  # the Ultralytics version recorded in the file, or ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        lines = [f"read Ultralytics YOLOv8{self.scale} detection model ({self.num_classes} classes"
                 + (f", Ultralytics {self.version})" if self.version else ")")]
        lines += self.notes
        lines.append(f"config: {self.config_name} (model.num_classes={self.num_classes})")
        lines.append(f"classes: {len(self.classes)} from the file" if self.classes else
                     "classes: not recorded in the file (the dataset's are used at test time)")
        lines.append(f"wrote {self.path} ({self.num_tensors} tensors, strict load passed)")
        return lines


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _check_task(ck: UltralyticsCheckpoint) -> None:
    """Refuse segmentation / pose / OBB / classification / other models with a clear error."""
    model = _short(ck.model_class)
    head = _short(ck.layer_classes[max(ck.layer_classes)]) if ck.layer_classes else ""
    other = _OTHER_TASKS.get(head) or _OTHER_TASKS.get(_MODEL_TASKS.get(model, ""))
    if other:
        raise CheckpointError(
            f"checkpoint {ck.path} is {other} model ({ck.model_class}, head {head or '?'}), not a detection model: "
            "import-ultralytics reads YOLOv8 detection checkpoints (DetectionModel with a Detect head) only")


def _check_layout(ck: UltralyticsCheckpoint) -> None:
    """The layers must be those of the published YOLOv8 detection layout; name the ones that are not."""
    got = {i: _short(c) for i, c in ck.layer_classes.items()}
    wrong = [f"model.{i} is {ck.layer_classes.get(i, 'missing')} (YOLOv8: {want})"
             for i, want in enumerate(EXPECTED_LAYERS) if got.get(i) != want]
    wrong += [f"model.{i} ({ck.layer_classes[i]}) is not in the YOLOv8 layout" for i in sorted(got)
              if i >= len(EXPECTED_LAYERS)]
    if wrong:
        hint = (" (C3k2 / C2PSA blocks: a YOLO11 model, whose architecture locdistill's YOLO family does not have)"
                if any(c in ("C3k2", "C2PSA") for c in got.values()) else "")
        more = f"\n  ... and {len(wrong) - 8} more" if len(wrong) > 8 else ""
        raise CheckpointError(f"checkpoint {ck.path} does not have the YOLOv8 detection layout{hint}:\n  "
                              + "\n  ".join(wrong[:8]) + more)


def _yolo_config(scale: str, num_classes: int) -> Config:
    cfg = load_config(f"yolo/yolov8{scale}_coco")
    cfg.model.num_classes = num_classes
    return cfg


def _meta_model(cfg: Config) -> nn.Module:
    with torch.device("meta"):  # keys and shapes only
        return build_detector(copy.deepcopy(cfg.model))


def _find_scale(ck: UltralyticsCheckpoint, state: dict[str, torch.Tensor], num_classes: int) -> tuple[str, Config]:
    """The scale whose model has exactly the file's keys and shapes (``yaml.scale`` first)."""
    hinted = str(ck.yaml.get("scale", "")).lower()
    order = ([hinted] if hinted in SCALES else []) + [s for s in SCALES if s != hinted]
    diffs = {}
    for scale in order:
        cfg = _yolo_config(scale, num_classes)
        diff = state_dict_diff(_meta_model(cfg), state)
        if not (diff["missing"] or diff["unexpected"] or diff["shape"]):
            return scale, cfg
        diffs[scale] = diff
    best = hinted if hinted in SCALES else min(
        diffs, key=lambda s: len(diffs[s]["shape"]) + len(diffs[s]["missing"]))
    raise CheckpointError(
        f"checkpoint {ck.path}: its weights fit none of the YOLOv8 scales {'/'.join(SCALES)} "
        f"(yaml scale: {hinted or 'not recorded'}); against yolov8{best} (renamed to locdistill's keys):\n"
        f"{format_diff(diffs[best])}")


def fold_input_scaling(state: dict[str, torch.Tensor], mean=MEAN, std=STD) -> dict[str, torch.Tensor]:
    """Make weights trained on Ultralytics' input (RGB pixels / 255) take locdistill's (``(pixel - mean) / std``).

    With ``x_u = x_l · std / 255 + mean / 255`` per channel, the stem conv ``W * x_u`` equals
    ``W' * x_l + b`` with ``W'[:, c] = W[:, c] · std_c / 255`` and ``b_o = Σ_{c,i,j} W[o, c, i, j] · mean_c / 255``;
    the stem has no conv bias, so ``b`` goes into its BatchNorm: ``running_mean' = running_mean - b``. Exact
    except at the stem's zero padding (a one-pixel frame: zero is black for Ultralytics, the mean colour here).
    Returns a new dict; only ``backbone.stem.conv.weight`` and ``backbone.stem.bn.running_mean`` change.
    """
    w = state["backbone.stem.conv.weight"].double()
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1) / 255
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1) / 255
    out = dict(state)
    out["backbone.stem.conv.weight"] = (w * s).float()
    out["backbone.stem.bn.running_mean"] = (state["backbone.stem.bn.running_mean"].double()
                                            - (w * m).sum((1, 2, 3))).float()
    return out


def import_ultralytics(src: str | os.PathLike, out: str | os.PathLike, fold_input: bool = True
                       ) -> UltralyticsImport:
    """Convert an Ultralytics YOLOv8 detection ``.pt`` file into a locdistill checkpoint at ``out``.

    ``fold_input`` (default): :func:`fold_input_scaling`, so the model takes locdistill's normalised images
    (``test`` / ``predict`` / a distillation teacher); ``False`` keeps every tensor as in the file (the model
    then expects RGB pixels / 255).

    Kept: the weights (half precision → float32), the class names (``model.names``), the Ultralytics
    version and date, the scale. Dropped: the optimizer, training arguments and results,
    the fixed DFL projection conv (locdistill's integral is a function). Writes
    ``{"model", "config", "meta": {"classes", "converted_from", "source": "ultralytics", ...}}``.

    Raises :class:`CheckpointError` naming the file for a refused pickle payload, a model of another task
    (segment / pose / OBB / classify), a layout other than YOLOv8's (naming the layers or keys that differ).
    """
    src = Path(src)
    ck = read_ultralytics(src)
    _check_task(ck)
    _check_layout(ck)
    notes: list[str] = []
    dfl = ck.state.get(f"model.{DETECT_LAYER}.dfl.conv.weight")
    if dfl is None or dfl.numel() != 16 or not torch.equal(dfl.float().flatten(), torch.arange(16.0)):
        raise CheckpointError(f"checkpoint {src}: model.{DETECT_LAYER}.dfl.conv.weight is "
                              f"{'missing' if dfl is None else list(dfl.shape)}, expected the fixed projection "
                              "0..15 of 16 bins per side (locdistill's YOLO family has reg_max = 16)")
    state, dropped, unknown = ultralytics_to_locdistill(ck.state)
    if unknown:
        raise CheckpointError(f"checkpoint {src}: {len(unknown)} keys are not in the YOLOv8 detection layout, e.g. "
                              + ", ".join(unknown[:8]))
    cls_weight = state.get("bbox_head.cls_branches.0.2.weight")
    if cls_weight is None:
        raise CheckpointError(f"checkpoint {src}: no class branch (model.{DETECT_LAYER}.cv3.0.2.weight) in the file")
    num_classes = int(cls_weight.shape[0])
    classes = ck.classes
    if classes and len(classes) != num_classes:
        notes.append(f"ignored {len(classes)} class names in the file: the head has {num_classes} classes")
        classes = None
    scale, cfg = _find_scale(ck, state, num_classes)
    if ck.bn_eps - {1e-3}:
        notes.append(f"the file's BatchNorm eps is {sorted(ck.bn_eps)}; locdistill's YOLO uses 1e-3, so outputs "
                     "differ slightly from the original model")
    cfg.name = f"imported_{src.stem}"
    model = build_detector(cfg.model)
    if fold_input:
        state = fold_input_scaling(state)
        notes.append("folded Ultralytics' input scaling (pixels / 255) into the stem: the model takes locdistill's "
                     "normalised images")
    model.load_state_dict(state, strict=True)
    version = str(ck.metadata.get("version") or "")
    meta: dict[str, Any] = {"converted_from": src.name, "source": "ultralytics",
                            "config_name": f"yolo/yolov8{scale}_coco",
                            "scale": scale, "ultralytics_entry": ck.entry, "dropped_keys": dropped,
                            "input_scaling_folded": bool(fold_input)}
    if version:
        meta["ultralytics_version"] = version
    if isinstance(ck.metadata.get("date"), str):
        meta["ultralytics_date"] = ck.metadata["date"]
    if classes:
        meta["classes"] = classes
    path = save_checkpoint(out, model, config_to_dict(cfg), meta)
    return UltralyticsImport(path=path, scale=scale, num_classes=num_classes, classes=classes,
                             num_tensors=len(state), config_name=f"yolo/yolov8{scale}_coco", version=version,
                             notes=notes)
