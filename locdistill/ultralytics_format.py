"""The Ultralytics checkpoint format (YOLOv8 ``.pt`` files), read without Ultralytics and without running code.

An Ultralytics ``.pt`` file is a ``torch.save``'d dict (``model``, ``ema``, ``train_args``, ``date``,
``version``, ...) whose ``model`` / ``ema`` entry is a whole pickled ``nn.Module``
(``ultralytics.nn.tasks.DetectionModel``). :func:`read_ultralytics` loads it with
:class:`UltralyticsUnpickler`, the restricted unpickler of :mod:`locdistill.checkpoint` extended so
that classes of ``ultralytics.*`` and ``torch.nn.modules.*`` become inert
:class:`~locdistill.mmdet_format.UnloadedObject` stand-ins: nothing is imported, no class's code
runs, each stand-in only keeps the pickled ``__dict__`` (``_parameters``, ``_buffers``,
``_modules``, plain attributes). Tensors are rebuilt by torch's own functions; every other global
(``os.system``, ``builtins.eval``, ``subprocess``...) is refused. :func:`module_state` then walks the
stand-in tree into a flat state dict (``model.0.conv.weight`` ...).

:func:`ultralytics_to_locdistill` maps the keys of the YOLOv8 detection layout onto
:class:`locdistill.models.yolo.YOLO` (the table is :data:`LAYER_MAP`). This module only reads and
renames; the ``import-ultralytics`` command (:mod:`locdistill.tools.import_ultralytics`) builds the
model, checks it strictly and writes the locdistill checkpoint.
"""
from __future__ import annotations

import os
import pickle
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from .checkpoint import RestrictedUnpickler, _what_is_wrong
from .errors import CheckpointError
from .mmdet_format import UnloadedObject, safe_metadata, stand_in

__all__ = ["LAYER_MAP", "UltralyticsCheckpoint", "UltralyticsUnpickler", "module_state", "read_ultralytics",
           "ultralytics_key_to_locdistill", "ultralytics_to_locdistill"]

# module paths whose classes become stand-ins in an Ultralytics file (the pickled model is a whole nn.Module)
ULTRALYTICS_STAND_IN_PREFIXES = ("ultralytics.", "torch.nn.modules.")


class UltralyticsUnpickler(RestrictedUnpickler):
    """:class:`~locdistill.checkpoint.RestrictedUnpickler` that also turns ``ultralytics.*`` and
    ``torch.nn.modules.*`` classes into inert stand-ins (never imported, never constructed)."""

    dispatch = dict(RestrictedUnpickler.dispatch)

    def find_class(self, module: str, name: str):
        if any(module.startswith(p) for p in ULTRALYTICS_STAND_IN_PREFIXES) or module == "ultralytics":
            return stand_in(module, name)
        return super().find_class(module, name)


def _ultralytics_pickle_load(file, **kwargs):
    return UltralyticsUnpickler(file, **kwargs).load()


ultralytics_pickle_module = types.SimpleNamespace(
    __name__="locdistill_ultralytics_pickle", Unpickler=UltralyticsUnpickler, load=_ultralytics_pickle_load)


# ----------------------------------------------------------------------------- the stand-in module tree


def _module_dict(obj: Any) -> Optional[dict]:
    """The pickled ``__dict__`` of a stand-in module (None if ``obj`` is not one)."""
    if isinstance(obj, UnloadedObject) and isinstance(obj.state, dict) and "_modules" in obj.state:
        return obj.state
    return None


def module_state(root: Any, prefix: str = "") -> dict[str, Tensor]:
    """Flat state dict of a stand-in ``nn.Module`` tree, as ``nn.Module.state_dict`` would name it:
    parameters and persistent buffers of every submodule, keys joined with dots."""
    state = _module_dict(root)
    if state is None:
        raise CheckpointError(f"{prefix or 'the model entry'} is a {type(root).__name__}, not a pickled nn.Module")
    out: dict[str, Tensor] = {}
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if isinstance(value, Tensor) and name not in skip:
                out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(module_state(child, f"{prefix}{name}."))
    return out


def _submodule(root: Any, path: str) -> Any:
    node = root
    for part in path.split("."):
        state = _module_dict(node)
        if state is None or part not in (state.get("_modules") or {}):
            return None
        node = state["_modules"][part]
    return node


def _class_of(obj: Any) -> str:
    return getattr(obj, "pickled_name", type(obj).__name__)


# ----------------------------------------------------------------------------- reading a file


@dataclass
class UltralyticsCheckpoint:
    """What :func:`read_ultralytics` found in a file."""

    path: Path
    entry: str  # "ema" or "model": the pickled model read
    model_class: str  # e.g. ultralytics.nn.tasks.DetectionModel
    state: dict[str, Tensor]  # flat, Ultralytics key names, dtype as stored (often float16)
    classes: Optional[list[str]]
    yaml: dict[str, Any]  # plain-data part of model.yaml (nc, scale, backbone/head lists...)
    layer_classes: dict[int, str]  # index i of model.<i> -> pickled class name
    bn_eps: set[float] = field(default_factory=set)  # the eps of every BatchNorm
    metadata: dict[str, Any] = field(default_factory=dict)  # plain entries of the file: version, date, train_args


def _names(value: Any) -> Optional[list[str]]:
    """Class names from ``model.names`` (``{id: name}``, or a list in old files)."""
    if isinstance(value, Mapping) and value and all(isinstance(k, int) for k in value):
        ids = sorted(value)
        if ids == list(range(len(ids))):
            return [str(value[i]) for i in ids]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _bn_eps(root: Any) -> set[float]:
    found: set[float] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        state = _module_dict(node)
        if state is None:
            continue
        if _class_of(node).endswith("BatchNorm2d") and isinstance(state.get("eps"), float):
            found.add(state["eps"])
        stack.extend(c for c in (state.get("_modules") or {}).values() if c is not None)
    return found


def read_ultralytics(path: str | os.PathLike) -> UltralyticsCheckpoint:
    """Read an Ultralytics ``.pt`` file safely: the model's weights (``ema`` if the file holds one, as
    Ultralytics' own loader, else ``model``), class names, ``model.yaml`` and the plain metadata.

    Raises :class:`CheckpointError` naming the file for a refused pickle payload, a damaged file or a
    file without a pickled model.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=ultralytics_pickle_module)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path} contains pickled Python objects that a safe load refuses ({e}): it could run code "
            "when loaded, so it was not read. Only tensors, plain metadata and the classes of ultralytics / "
            "torch.nn modules (as inert placeholders) are accepted.") from e
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} could not be read: {_what_is_wrong(path, e)}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected an Ultralytics dict "
                              "with a 'model' entry")
    entry = "ema" if _module_dict(obj.get("ema")) is not None else "model"
    root = obj.get(entry)
    if _module_dict(root) is None:
        keys = sorted(str(k) for k in obj)[:10]
        raise CheckpointError(f"checkpoint {path} is not an Ultralytics model file: no pickled model in 'model' or "
                              f"'ema' (keys: {keys}); for a locdistill / mmdetection file use `locdistill test` "
                              "or `locdistill import-mmdet`")
    attrs = _module_dict(root)
    yaml, _ = safe_metadata(attrs.get("yaml") if isinstance(attrs.get("yaml"), dict) else {})
    layers: dict[int, str] = {}
    seq = _submodule(root, "model")
    for name, child in ((_module_dict(seq) or {}).get("_modules") or {}).items():
        if str(name).isdigit():
            layers[int(name)] = _class_of(child)
    metadata, _ = safe_metadata({k: v for k, v in obj.items() if k in ("version", "date", "epoch", "train_args",
                                                                        "license", "docs")})
    return UltralyticsCheckpoint(path=path, entry=entry, model_class=_class_of(root), state=module_state(root),
                                 classes=_names(attrs.get("names")), yaml=yaml, layer_classes=layers,
                                 bn_eps=_bn_eps(root), metadata=metadata)


# ----------------------------------------------------------------------------- the key mapping

#: YOLOv8 detection layout (the layer index ``i`` of ``model.<i>`` in the published yolov8.yaml) →
#: the module of :class:`locdistill.models.yolo.YOLO` and the kind of block. Layers 10, 11, 13, 14, 17 and
#: 20 (Upsample / Concat) have no parameters.
LAYER_MAP: dict[int, tuple[str, str]] = {
    0: ("backbone.stem", "Conv"),
    1: ("backbone.stages.0.0", "Conv"), 2: ("backbone.stages.0.1", "C2f"),
    3: ("backbone.stages.1.0", "Conv"), 4: ("backbone.stages.1.1", "C2f"),
    5: ("backbone.stages.2.0", "Conv"), 6: ("backbone.stages.2.1", "C2f"),
    7: ("backbone.stages.3.0", "Conv"), 8: ("backbone.stages.3.1", "C2f"), 9: ("backbone.stages.3.2", "SPPF"),
    12: ("neck.top_down4", "C2f"),  # concat(up(P5), C4) -> C2f
    15: ("neck.top_down3", "C2f"),  # concat(up(12), C3) -> C2f = P3 out
    16: ("neck.down3", "Conv"),
    18: ("neck.bottom_up4", "C2f"),  # concat(16, 12) -> C2f = P4 out
    19: ("neck.down4", "Conv"),
    21: ("neck.bottom_up5", "C2f"),  # concat(19, SPPF) -> C2f = P5 out
    22: ("bbox_head", "Detect"),
}
DETECT_LAYER = 22
# the Ultralytics block's submodule names -> ours (Conv's `conv` / `bn` keep their names)
_BLOCK_NAMES = {"C2f": {"cv1": "conv_in", "cv2": "conv_out", "m": "blocks"},
                "SPPF": {"cv1": "conv_in", "cv2": "conv_out"},
                "Bottleneck": {"cv1": "conv1", "cv2": "conv2"},
                "Detect": {"cv2": "reg_branches", "cv3": "cls_branches"}}


def ultralytics_key_to_locdistill(key: str) -> Optional[str]:
    """One key of a YOLOv8 DetectionModel state dict → the locdistill :class:`~locdistill.models.yolo.YOLO` key,
    or None when the key has no counterpart (``model.22.dfl.conv.weight``, the fixed DFL projection; any key
    outside the published layout).

    ``model.<i>.`` is replaced by the module of :data:`LAYER_MAP`; inside a C2f ``cv1 / cv2 / m.<k>`` become
    ``conv_in / conv_out / blocks.<k>`` and a bottleneck's ``cv1 / cv2`` ``conv1 / conv2``; inside SPPF
    ``cv1 / cv2`` become ``conv_in / conv_out``; in Detect ``cv2.<level>`` (box branch) becomes
    ``reg_branches.<level>`` and ``cv3.<level>`` (class branch) ``cls_branches.<level>``. The names inside a
    Conv (``conv.weight``, ``bn.{weight,bias,running_mean,running_var,num_batches_tracked}``) and of the
    branches' last ``nn.Conv2d`` (``<level>.2.weight / bias``) are the same in both.
    """
    parts = key.split(".")
    if len(parts) < 3 or parts[0] != "model" or not parts[1].isdigit() or int(parts[1]) not in LAYER_MAP:
        return None
    target, kind = LAYER_MAP[int(parts[1])]
    rest = parts[2:]
    if kind in ("C2f", "SPPF", "Detect"):
        if rest[0] not in _BLOCK_NAMES[kind]:
            return None
        if kind == "C2f" and rest[0] == "m":  # m.<k>.cv1 -> blocks.<k>.conv1
            if len(rest) < 3 or rest[2] not in _BLOCK_NAMES["Bottleneck"]:
                return None
            rest = ["blocks", rest[1], _BLOCK_NAMES["Bottleneck"][rest[2]]] + rest[3:]
        else:
            rest = [_BLOCK_NAMES[kind][rest[0]]] + rest[1:]
    elif rest[0] not in ("conv", "bn"):
        return None
    return ".".join([target] + rest)


def ultralytics_to_locdistill(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """Rename a YOLOv8 DetectionModel state dict with :func:`ultralytics_key_to_locdistill`.

    Returns ``(mapped, dropped, unknown)``: the renamed tensors (float32, as locdistill keeps them;
    ``num_batches_tracked`` stays int64), the keys deliberately dropped (the DFL projection conv) and the keys
    the YOLOv8 layout does not have (they make an unknown-layout error).
    """
    mapped: dict[str, Tensor] = {}
    dropped, unknown = [], []
    for key, value in state.items():
        if key == f"model.{DETECT_LAYER}.dfl.conv.weight":
            dropped.append(key)
            continue
        new = ultralytics_key_to_locdistill(key)
        if new is None:
            unknown.append(key)
            continue
        mapped[new] = value.float() if value.is_floating_point() else value
    return mapped, dropped, unknown
