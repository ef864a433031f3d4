"""The mmdetection-family checkpoint format, below the models: what reading a model-zoo file needs.

mmdetection 2.x / 3.x, GFocalV2-repository and LD-repository files use locdistill's key names
(DESIGN §3), so reading them takes no key renaming, only:

- :func:`normalize_state_dict`: drop teacher weights (:func:`is_teacher_key`), a ``student.``
  prefix and non-tensor entries; fill fixed buffers the file lacks;
- :func:`safe_metadata` / :func:`checkpoint_classes`: the plain-data part of the metadata and the
  class names in any of the spellings (``classes``, ``CLASSES``, ``dataset_meta.classes``);
  :class:`UnloadedObject` is the inert stand-in the restricted unpickler of
  :mod:`locdistill.checkpoint` gives mmcv / mmengine objects;
- :func:`infer_model_config` / :func:`describe_model` / :func:`matching_configs` /
  :func:`mismatch_hint`: the architecture read off the keys and shapes (no model is built) and
  the fix named in a key-mismatch error.

It imports only :mod:`locdistill.errors` and :mod:`locdistill.config`;
:mod:`locdistill.checkpoint` uses it when it loads weights, and the ``import-mmdet`` /
``convert`` tools (:mod:`locdistill.tools`) are thin wrappers around it.
"""
from __future__ import annotations

import dataclasses
import numbers
import re
from collections import defaultdict
from functools import lru_cache
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from .config import BackboneConfig, HeadConfig, ModelConfig, NeckConfig, list_configs, load_config
from .errors import CheckpointError, ConfigError

__all__ = ["UnloadedObject", "checkpoint_classes", "describe_model", "detect_source", "infer_model_config",
           "is_teacher_key", "matching_configs", "mismatch_hint", "normalize_state_dict", "overrides_for",
           "safe_metadata", "teacher_prefix"]

# configs whose model is a released teacher / baseline (the LD configs' models are students)
ZOO_CONFIG_DIRS = ("gfl/", "gflv2/")


# ----------------------------------------------------------------------------- stand-ins for third-party objects


class UnloadedObject(dict):
    """Inert stand-in for a pickled object whose class the restricted loader does not import.

    Used for classes of ``mmcv`` / ``mmengine`` / ``mmdet`` / ``addict`` found in the
    metadata of mmdetection / LD-repo checkpoints (``ConfigDict``, ``HistoryBuffer``...).
    It keeps what the pickle carried as plain data: dict items (it is a ``dict``),
    ``args`` / ``kwargs`` (constructor arguments), ``items_appended`` (list items) and
    ``state``; it has no behaviour. ``pickled_name`` is the original ``module.Class``.
    (The stand-in types cannot be pickled again: they are not importable by name.)
    """

    pickled_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.items_appended, obj.state = args, kwargs, [], None
        return obj

    def __init__(self, *args, **kwargs):  # never runs the original constructor
        pass

    def __setstate__(self, state):
        self.state = state

    def append(self, item):
        self.items_appended.append(item)

    def extend(self, items):
        self.items_appended.extend(items)

    def __repr__(self) -> str:
        return f"<unloaded {self.pickled_name}>"


# modules whose classes may appear in checkpoint metadata; mapped to UnloadedObject, never imported
STAND_IN_ROOTS = ("mmcv", "mmengine", "mmdet", "addict")
_stand_in_types: dict[str, type] = {}


def stand_in(module: str, name: str) -> type:
    """The :class:`UnloadedObject` subclass standing in for the pickled class ``module.name`` (one per name)."""
    full = f"{module}.{name}"
    if full not in _stand_in_types:
        _stand_in_types[full] = type(name, (UnloadedObject,), {"pickled_name": full, "__module__": __name__})
    return _stand_in_types[full]


# ----------------------------------------------------------------------------- teacher keys, metadata


def is_teacher_key(key: str) -> bool:
    """True for teacher weights: any dot-separated part of the key starts with ``teacher``."""
    return any(part.startswith("teacher") for part in key.split("."))


def teacher_prefix(key: str) -> str:
    """The part of a teacher key up to its ``teacher…`` part (``bbox_head.teacher_models``)."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part.startswith("teacher"):
            return ".".join(parts[: i + 1])
    return key


def _plain(value: Any) -> tuple[bool, Any]:
    """``(ok, value)``: ``value`` as JSON-like plain data (numpy scalars become Python numbers)."""
    if value is None or type(value) in (bool, str, int, float):
        return True, value
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == ():  # numpy scalar / 0-d array
        return _plain(value.item())
    for kind in (bool, int, float, str):  # subclasses (enums, TorchVersion...) become the plain type
        if isinstance(value, kind):
            return True, kind(value)
    if isinstance(value, numbers.Real):
        return True, float(value)
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        if all(ok for ok, _ in items):
            return True, [v for _, v in items]
        return False, None
    if isinstance(value, dict) and not isinstance(value, UnloadedObject):
        out = {}
        for k, v in value.items():
            ok, pv = _plain(v)
            if not isinstance(k, str) or not ok:
                return False, None
            out[k] = pv
        return True, out
    return False, None


def safe_metadata(meta: Any) -> tuple[dict[str, Any], list[str]]:
    """Keep the entries of ``meta`` that are plain data; return ``(kept, dropped_keys)``.

    Adds ``classes`` from mmdetection's ``CLASSES`` or mmengine's ``dataset_meta["classes"]``
    when the file does not name them the locdistill way.
    """
    if not isinstance(meta, dict) or isinstance(meta, UnloadedObject):
        return {}, ([] if meta is None else [f"meta ({type(meta).__name__})"])
    kept, dropped = {}, []
    for key, value in meta.items():
        ok, pv = _plain(value)
        if ok and isinstance(key, str):
            kept[key] = pv
        elif isinstance(key, str) and isinstance(value, dict) and not isinstance(value, UnloadedObject):
            sub, sub_dropped = safe_metadata(value)  # keep the plain part of a mixed dict
            if sub:
                kept[key] = sub
            dropped += [f"{key}.{k}" for k in sub_dropped]
        elif isinstance(value, UnloadedObject):
            dropped.append(f"{key} ({value.pickled_name})")
        else:
            dropped.append(f"{key} ({type(value).__name__})")
    if not kept.get("classes"):
        classes = kept.get("CLASSES") or (kept.get("dataset_meta") or {}).get("classes")
        if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
            kept["classes"] = list(classes)
    return kept, dropped


# ----------------------------------------------------------------------------- normalising


def normalize_state_dict(state: Mapping[str, Any], own: Optional[Mapping[str, Tensor]] = None
                         ) -> tuple[dict[str, Tensor], list[str]]:
    """Student weights of a checkpoint's state dict, in locdistill's key layout.

    Drops teacher weights (any key part starting with ``teacher``: the LD repository's
    ``teacher_model.*`` / ``bbox_head.teacher_models.*``) and non-tensor entries, removes
    a ``student.`` prefix (a whole Distiller's state) and, when ``own`` (the target model's
    state dict) is given, fills buffers that carry no learned information if the file lacks
    them: ``*.integral.project`` (the fixed ``linspace(0, reg_max)``) and BatchNorm
    ``num_batches_tracked`` (unused in eval / ``norm_eval``).

    Returns ``(state_dict, notes)``; ``notes`` are human-readable lines about what changed.
    """
    notes: list[str] = []
    stripped: dict[str, int] = defaultdict(int)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if is_teacher_key(key):
            stripped[teacher_prefix(key)] += 1
        elif isinstance(value, Tensor):
            out[key] = value
    if stripped:
        notes.append("dropped teacher weights: " + ", ".join(f"{p}.* ({n})" for p, n in sorted(stripped.items())))
    if out and all(k.startswith("student.") for k in out):
        out = {k[len("student."):]: v for k, v in out.items()}
        notes.append("removed the 'student.' prefix")
    if own is not None:
        filled = []
        for key, value in own.items():
            if key in out:
                continue
            if key.endswith(".integral.project"):
                out[key] = value.detach().clone()
                filled.append(key)
            elif key.endswith(".num_batches_tracked") and key[: -len("num_batches_tracked")] + "running_mean" in out:
                out[key] = torch.zeros((), dtype=torch.long)
                filled.append(key)
        if filled:
            notes.append(f"filled {len(filled)} fixed buffers missing from the file (integral.project / "
                         "num_batches_tracked)")
    return out, notes


def detect_source(ckpt: Mapping, state: Mapping[str, Any]) -> str:
    """Which tool wrote ``ckpt`` (for messages): locdistill, mmdetection 2.x / 3.x, GFocalV2 or LD repo."""
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), Mapping) else {}
    teacher = any(is_teacher_key(k) for k in state)
    if "model" in ckpt and isinstance(ckpt.get("model"), Mapping) and not teacher:
        return "locdistill"
    version = str(meta.get("mmdet_version", ""))
    if "mmengine_version" in meta or "dataset_meta" in meta or version.startswith("3."):
        family = "mmdetection 3.x"
    elif version or "CLASSES" in meta or "state_dict" in ckpt:
        family = "mmdetection 2.x"
    else:
        family = "a bare state dict"
    if teacher:
        return f"LD repository ({family}, with teacher weights)"
    if any(k.startswith("bbox_head.reg_conf.") for k in state) and family == "mmdetection 2.x":
        return "GFocalV2 repository (mmdetection 2.x)"
    return family


def checkpoint_classes(ckpt: Mapping) -> Optional[list[str]]:
    """Class names recorded in a checkpoint's metadata (locdistill ``classes``, mmdetection 2.x
    ``CLASSES``, mmengine ``dataset_meta.classes``), or None."""
    meta, _ = safe_metadata(ckpt.get("meta"))
    classes = meta.get("classes")
    return list(classes) if classes else None



# ----------------------------------------------------------------------------- architecture from keys


def _indices(state: Mapping[str, Tensor], prefix: str) -> list[int]:
    """Sorted distinct integers ``i`` of keys ``prefix{i}.…``."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pat.match(k))})


_DEPTHS = {("basic", (2, 2, 2, 2)): 18, ("basic", (3, 4, 6, 3)): 34,
           ("bottleneck", (3, 4, 6, 3)): 50, ("bottleneck", (3, 4, 23, 3)): 101,
           ("bottleneck", (3, 8, 36, 3)): 152}


def infer_model_config(state: Mapping[str, Tensor], source: str = "checkpoint") -> ModelConfig:
    """Read the architecture of a GFL / GFocalV2 detector off its state dict's keys and shapes.

    Recognised: ResNet-18/34/50/101 (a block count, e.g. ``layer3.22`` → R-101), ResNeXt
    (``conv2`` grouped: groups and width per group from its shape), Res2Net (``stem.*`` deep
    stem, ``convs.i``), DCN stages (``conv_offset``), GFLv2 (``bbox_head.reg_conf``), the
    FPN width / levels, the head's width / depth / classes / ``reg_max``. GroupNorm group
    counts cannot be read from weights (the default 32 is kept).

    Raises :class:`CheckpointError` naming ``source`` when the file is not a GFL detector.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"{source} has no '{key}': it is not a GFL / GFocalV2 detector in mmdetection's "
                                  "key layout (locdistill reads GFL-family checkpoints only)")
        return tuple(state[key].shape)

    num_classes, feat = shape("bbox_head.gfl_cls.weight")[:2]
    reg_max = shape("bbox_head.gfl_reg.weight")[0] // 4 - 1
    head = HeadConfig(type="gfl", feat_channels=feat, stacked_convs=len(_indices(state, "bbox_head.cls_convs.")),
                      reg_max=reg_max)
    if "bbox_head.reg_conf.0.weight" in state:
        hidden, stat_ch = shape("bbox_head.reg_conf.0.weight")[:2]
        head = dataclasses.replace(head, type="gflv2", reg_channels=hidden, reg_topk=stat_ch // 4 - 1)

    num_in = len(_indices(state, "neck.lateral_convs."))
    num_outs = len(_indices(state, "neck.fpn_convs."))
    out_ch = shape("neck.lateral_convs.0.conv.weight")[0]
    start_level = 4 - num_in
    head.strides = tuple(2 ** (start_level + 2 + i) for i in range(num_outs))
    neck = NeckConfig(out_channels=out_ch, start_level=start_level, num_outs=num_outs)

    res2net = "backbone.stem.0.weight" in state
    base = shape("backbone.stem.6.weight" if res2net else "backbone.conv1.weight")[0]
    counts = tuple(len(_indices(state, f"backbone.layer{i}.")) for i in range(1, 5))
    kind = "bottleneck" if res2net or "backbone.layer1.0.conv3.weight" in state else "basic"
    depth = _DEPTHS.get((kind, counts), 0)
    dcn = tuple(i for i in range(1, 5) if any(k.startswith(f"backbone.layer{i}.") and ".conv_offset." in k
                                                for k in state))
    backbone = BackboneConfig(depth=depth, base_channels=base, dcn_stages=dcn)
    if res2net:
        width = shape("backbone.layer1.0.convs.0.weight")[0]
        backbone = dataclasses.replace(backbone, type="res2net", base_width=width,
                                       scales=shape("backbone.layer1.0.conv1.weight")[0] // width)
    elif kind == "bottleneck":
        w_out, w_in = shape("backbone.layer1.0.conv2.weight")[:2]
        if w_in != w_out:  # grouped 3×3: ResNeXt
            groups = w_out // w_in
            backbone = dataclasses.replace(backbone, groups=groups, base_width=w_out // groups)
    return ModelConfig(num_classes=num_classes, backbone=backbone, neck=neck, head=head)


def _backbone_name(b: BackboneConfig) -> str:
    depth = b.depth or "?"
    if b.type == "res2net":
        name = f"Res2Net-{depth} ({b.base_width or 26}w×{b.scales}s)"
    elif b.groups > 1:
        name = f"ResNeXt-{depth} {b.groups}x{b.base_width or 4}d"
    else:
        name = f"ResNet-{depth}"
    if b.base_channels != 64:
        name += f" (base_channels {b.base_channels})"
    if b.dcn_stages:
        name += f" + DCN in layer{','.join(map(str, b.dcn_stages))} (c{min(b.dcn_stages) + 1}-c5)"
    return name


def describe_model(m: ModelConfig) -> str:
    """One line, e.g. ``GFLv2 · ResNet-101 + DCN in layer2,3,4 (c3-c5) · FPN 256 × 5 · 80 classes, reg_max 16``."""
    head = "GFLv2 (DGQP)" if m.head.type == "gflv2" else "GFL v1"
    return (f"{head} · {_backbone_name(m.backbone)} · FPN {m.neck.out_channels} × {m.neck.num_outs} · "
            f"head {m.head.stacked_convs}×{m.head.feat_channels} · {m.num_classes} classes, reg_max {m.head.reg_max}")


# fields of a ModelConfig that the weights determine (GroupNorm groups, freezing, init do not)
_ARCH_FIELDS = {
    "backbone": ("type", "depth", "base_channels", "groups", "base_width", "scales", "dcn_stages"),
    "neck": ("out_channels", "start_level", "num_outs"),
    "head": ("type", "feat_channels", "stacked_convs", "reg_max", "strides", "reg_topk", "reg_channels"),
}


def _arch_items(m: ModelConfig) -> dict[str, Any]:
    """``{"backbone.depth": 101, ...}``: the weight-determined fields, with type defaults resolved."""
    items: dict[str, Any] = {}
    for section, names in _ARCH_FIELDS.items():
        sub = getattr(m, section)
        for name in names:
            value = getattr(sub, name)
            if name == "base_width":
                if m.backbone.type != "res2net" and m.backbone.groups == 1:
                    continue  # unused by a plain ResNet
                value = value or (26 if m.backbone.type == "res2net" else 4)
            if name == "scales" and m.backbone.type != "res2net":
                continue
            if name in ("reg_topk", "reg_channels") and m.head.type != "gflv2":
                continue
            items[f"{section}.{name}"] = tuple(value) if isinstance(value, (list, tuple)) else value
    return items


@lru_cache(maxsize=1)
def _zoo_signatures() -> tuple[tuple[str, tuple], ...]:
    sigs = []
    for name in list_configs():
        if not name.startswith(ZOO_CONFIG_DIRS):
            continue
        try:
            cfg = load_config(name)
        except ConfigError:  # pragma: no cover - a broken shipped config is caught by the config tests
            continue
        sigs.append((name, tuple(sorted(_arch_items(cfg.model).items()))))
    return tuple(sigs)


def matching_configs(m: ModelConfig) -> list[str]:
    """Shipped ``gfl/`` / ``gflv2/`` configs whose model has the architecture of ``m`` (classes aside)."""
    want = tuple(sorted(_arch_items(m).items()))
    return [name for name, sig in _zoo_signatures() if sig == want]


def _set_value(v: Any) -> str:
    if isinstance(v, tuple):
        return "[" + ",".join(str(x) for x in v) + "]"
    return str(v)


def overrides_for(current: ModelConfig, wanted: ModelConfig) -> list[str]:
    """``model.a.b=value`` overrides turning ``current``'s architecture into ``wanted``'s."""
    cur, want = _arch_items(current), _arch_items(wanted)
    out = []
    for key, value in want.items():
        if cur.get(key) != value:
            out.append(f"model.{key}={_set_value(value)}")
    if current.num_classes != wanted.num_classes:
        out.append(f"model.num_classes={wanted.num_classes}")
    return out


def mismatch_hint(model: nn.Module, state: Mapping[str, Tensor], teacher_config: str = "") -> str:
    """Explain a key/shape mismatch: what the file holds vs what the config built, and the fix.

    The fix is one that works when followed: for the model built from the command's own config,
    ``--set model.…`` overrides; for a distillation teacher (``teacher_config``: the name in
    ``distill.teacher_config``), whose model no ``--set model.…`` reaches, a teacher config with
    the file's architecture (a shipped one, or a three-line file deriving one). Returns ``""``
    when the file's architecture cannot be read (not a GFL detector) or equals the model's
    (then the plain key diff says it all).
    """
    try:
        file_model = infer_model_config(state)
        own_model = infer_model_config(model.state_dict())
    except CheckpointError:
        return ""
    fixes = overrides_for(own_model, file_model)
    if not fixes:
        return ""
    lines = [f"The file holds:       {describe_model(file_model)}",
             f"The config builds:    {describe_model(own_model)}"]
    if not file_model.backbone.depth:
        lines.append("The file's backbone depth is not one locdistill builds (18, 34, 50, 101).")
    names = matching_configs(file_model)
    if teacher_config:
        fixes = [f for f in fixes if not f.startswith("model.num_classes=")]  # follows the checkpoint / data
        if names:
            lines.append("Fix: a teacher config with the file's architecture, e.g. --set distill.teacher_config="
                         + names[0] + (f" (also: {', '.join(names[1:])})" if names[1:] else ""))
        if fixes:
            args = ", ".join(repr(f) for f in fixes)
            lines.append(("Or" if names else "Fix:") + " write a teacher config file my_teacher.py holding\n"
                         f"    from locdistill.config import load_config\n"
                         f"    config = load_config({teacher_config!r}, [{args}])\n"
                         "  and pass --set distill.teacher_config=my_teacher.py")
        return "\n".join(lines)
    if names:
        lines.append("Shipped config(s) with the file's architecture: " + ", ".join(names))
    lines.append("Or override the config: --set " + " ".join(fixes))
    return "\n".join(lines)
