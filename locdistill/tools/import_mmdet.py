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

:func:`normalize_state_dict` is applied by :func:`locdistill.checkpoint.load_model_weights`,
so ``train`` / ``test`` / the Distiller load these files directly; ``locdistill
import-mmdet IN OUT`` (:func:`import_checkpoint`) writes a self-describing locdistill
checkpoint (weights + the matching config + class names). When the weights do not fit
the config, :func:`mismatch_hint` reads the architecture off the keys and shapes
(:func:`infer_model_config`) and names the shipped config or the ``--set`` overrides
that would fit.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from .. import __version__
from ..checkpoint import atomic_torch_save, extract_state_dict, format_diff, load_checkpoint, state_dict_diff
from ..config import (BackboneConfig, Config, HeadConfig, ModelConfig, NeckConfig, config_to_dict, list_configs,
                      load_config)
from ..errors import CheckpointError, ConfigError
from .convert import is_teacher_key, safe_metadata

__all__ = ["ImportResult", "checkpoint_classes", "describe_model", "detect_source", "import_checkpoint",
           "checkpoint_num_classes", "infer_model_config", "matching_configs", "mismatch_hint",
           "normalize_state_dict"]

# configs whose model is a released teacher / baseline (the LD configs' models are students)
ZOO_CONFIG_DIRS = ("gfl/", "gflv2/")


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
            parts = key.split(".")
            stripped[".".join(parts[: next(i for i, p in enumerate(parts) if p.startswith("teacher")) + 1])] += 1
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


def checkpoint_num_classes(ckpt: Mapping) -> Optional[int]:
    """How many classes a checkpoint's detector predicts: its recorded class names, else the
    rows of its classifier (``bbox_head.gfl_cls.weight``, a bare state dict too), else None."""
    classes = checkpoint_classes(ckpt)
    if classes:
        return len(classes)
    try:
        state, _ = normalize_state_dict(extract_state_dict(ckpt))
    except CheckpointError:
        return None
    weight = state.get("bbox_head.gfl_cls.weight")
    return int(weight.shape[0]) if weight is not None else None


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
    from ..models.build import build_detector

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
