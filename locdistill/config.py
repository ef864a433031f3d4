"""Typed configuration.

A config is a tree of dataclasses. Experiments are Python files (shipped under
``locdistill/configs/`` and addressable by name, e.g. ``gfl/gfl_r50_fpn_coco_1x``, or
any path) that define a module-level ``config = Config(...)``. Command-line overrides
``--set a.b=c`` are parsed with :func:`ast.literal_eval` and type-checked against the
dataclass fields; an unknown key fails with the list of valid keys.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import os
import pprint
import runpy
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Tuple

from .config_aliases import closest_names, config_alias
from .errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class BackboneConfig:
    depth: int = 50  # 18, 34, 50, 101
    base_channels: int = 64  # width of the stem; 64 is the standard ResNet
    frozen_stages: int = 1  # -1: nothing frozen; 1: stem + layer1 frozen (mmdet)
    norm_eval: bool = True  # keep every BatchNorm in eval mode while training
    pretrained: str = ""  # "" (random init), "torchvision" (download if possible) or a file
    type: str = "resnet"  # "resnet" (ResNet / ResNeXt) or "res2net" (deep stem, avg-down)
    groups: int = 1  # ResNeXt cardinality (32 for X-101-32x4d); 1 = plain ResNet
    base_width: int = 0  # ResNeXt width per group / Res2Net width per scale; 0 = standard (4 / 26)
    scales: int = 4  # Res2Net scales (the "4s" of 26w×4s)
    dcn_stages: Tuple[int, ...] = ()  # deformable 3×3 convs in these stages (layer1..4): (2, 3, 4) = dconv_c3-c5


@dataclass
class NeckConfig:
    out_channels: int = 256
    start_level: int = 1  # C3 (C2 is level 0)
    num_outs: int = 5  # P3-P7


@dataclass
class HeadConfig:
    type: str = "gfl"  # "gfl" (GFocal v1) or "gflv2" (GFocal v2: DGQP quality branch `reg_conf`)
    reg_topk: int = 4  # GFLv2 DGQP: top-k bin probabilities per side (+ their mean)
    reg_channels: int = 64  # GFLv2 DGQP hidden width
    feat_channels: int = 256
    stacked_convs: int = 4
    num_groups: int = 32  # GroupNorm groups in the towers
    reg_max: int = 16
    strides: Tuple[int, ...] = (8, 16, 32, 64, 128)
    octave_base_scale: int = 8  # anchor side = octave_base_scale * stride


@dataclass
class YoloConfig:
    """The YOLOv8 family (``model.type = "yolo"``, docs/yolo.md): scale multipliers, TAL and loss gains.

    Scales: n 0.33/0.25/1024, s 0.33/0.50/1024, m 0.67/0.75/768, l 1.0/1.0/512, x 1.0/1.25/512.
    """

    depth: float = 0.33  # C2f repeats multiplier
    width: float = 0.25  # channel multiplier
    max_channels: int = 1024  # nominal channels are capped here before the width multiplier
    reg_max: int = 16  # bins per box side (values 0..15); DenseOutputs.reg_max = 15
    topk: int = 10  # TAL candidates per GT
    alpha: float = 0.5  # TAL score exponent
    beta: float = 6.0  # TAL IoU exponent
    loss_cls_weight: float = 0.5  # BCE gain
    loss_bbox_weight: float = 7.5  # CIoU gain
    loss_dfl_weight: float = 1.5  # DFL gain


@dataclass
class ModelConfig:
    num_classes: int = 80
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    type: str = "gfl"  # detector family: "gfl" (backbone/neck/head + loss.*) or "yolo" (model.yolo.* only)
    yolo: YoloConfig = field(default_factory=YoloConfig)


@dataclass
class LossConfig:
    topk: int = 9  # ATSS candidates per level and GT
    qfl_beta: float = 2.0
    loss_cls_weight: float = 1.0
    loss_bbox_weight: float = 2.0
    loss_dfl_weight: float = 0.25


@dataclass
class TestConfig:
    score_thr: float = 0.05
    nms_pre: int = 1000  # top-k candidates per level
    nms: str = "nms"  # "nms" (class-aware, torchvision) or "voting_cluster_diou" (LD's score-voting Cluster-DIoU-NMS)
    iou_thr: float = 0.6
    max_per_img: int = 100


@dataclass
class DataConfig:
    dataset: str = "coco"  # "coco" (any COCO-format JSON), "voc" (Pascal VOC XML) or "digits" (bundled)
    train_json: str = "data/coco/annotations/instances_train2017.json"
    train_images: str = "data/coco/train2017"
    val_json: str = "data/coco/annotations/instances_val2017.json"
    val_images: str = "data/coco/val2017"
    classes: Optional[Tuple[str, ...]] = None  # None: taken from the JSON categories
    img_scale: Tuple[int, int] = (1333, 800)  # (long, short) bound of keep-ratio resize
    train_short_range: Optional[Tuple[int, int]] = None  # multi-scale training: short side range
    flip_prob: float = 0.5
    size_divisor: int = 32
    batch_size: int = 2  # images per GPU / process
    workers: int = 2
    filter_empty_gt: bool = True
    skip_bad: bool = False  # skip (and count) corrupt/missing images instead of raising
    # bundled digits dataset (used when dataset == "digits")
    digits_root: str = ""  # "" -> ~/.cache/locdistill/digits
    digits_train: int = 2000
    digits_val: int = 500
    digits_image_size: int = 160
    digits_seed: int = 0
    digits_fresh: bool = False  # train on newly rendered scenes every epoch (digits_train per epoch)
    digits_box_noise: float = 0.0  # annotation noise of the training boxes: edge shift std / box side
    # Pascal VOC (used when dataset == "voc"): "VOC2007/trainval" = a split of a VOCdevkit folder,
    # "VOC2007" or any folder = all its XMLs (VOCdevkit layout or images + XMLs side by side)
    voc_root: str = "data/VOCdevkit"
    voc_train: Tuple[str, ...] = ("VOC2007/trainval", "VOC2012/trainval")
    voc_val: Tuple[str, ...] = ("VOC2007/test",)
    map_mode: str = "auto"  # VOC mAP: "11points", "area" or "auto" (11points on VOC2007, as the devkit)
    repeat: int = 1  # the training set is repeated this many times per epoch (VOC: 3, as the LD paper)


@dataclass
class TrainConfig:
    epochs: int = 12
    base_lr: float = 0.01  # learning rate for a total batch of `base_batch`
    base_batch: int = 16
    lr: Optional[float] = None  # pin the learning rate (disables the scaling rule)
    optimizer: str = "sgd"  # "sgd" (mmdet default) or "adamw" (faster from-scratch training)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    milestones: Tuple[int, ...] = (8, 11)  # epochs at which lr *= gamma
    gamma: float = 0.1
    grad_clip: Optional[float] = None  # max grad norm
    eval_interval: int = 1  # epochs between evaluations (0: only at the end)
    log_interval: int = 50  # iterations between metrics.jsonl lines
    keep_checkpoints: int = 3
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    amp: bool = False
    amp_dtype: str = "bfloat16"  # "bfloat16" (CPU or CUDA) or "float16" (CUDA, with a GradScaler)
    channels_last: bool = False  # NHWC memory format for the model and the images (faster convs on GPUs)
    skip_nonfinite: bool = False  # skip (and count) steps whose loss is NaN/inf instead of stopping
    deterministic: bool = False  # torch.use_deterministic_algorithms, no cuDNN autotuning (exact repeats)
    tensorboard: bool = True  # also write TensorBoard events to work_dir/tb when tensorboard is installed
    max_iters_per_epoch: Optional[int] = None  # cap (smoke tests, debugging)
    # exponential moving average of the weights (locdistill.engine.ema.ModelEMA), updated after every optimizer
    # step with decay ema_decay · (1 − exp(−updates / ema_tau)); evaluation and inference use it, checkpoints
    # keep the raw weights as "model" (to resume) and the average as "ema"
    ema: bool = False
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0  # updates over which the decay ramps up to ema_decay

    def __post_init__(self) -> None:
        number = (int, float)
        if isinstance(self.ema_decay, number) and not 0 < self.ema_decay < 1:
            raise ConfigError(f"config key 'train.ema_decay': must be in (0, 1) (the share of the average kept at "
                              f"each update; 0.9999 as YOLOv8), got {self.ema_decay}")
        if isinstance(self.ema_tau, number) and not self.ema_tau > 0:
            raise ConfigError(f"config key 'train.ema_tau': must be > 0 (the updates over which the EMA decay ramps "
                              f"up; 2000 as YOLOv8), got {self.ema_tau}")


# Named distillation recipes (docs/distillation.md, "Recipes"): each sets every term's weight and temperature,
# so one word selects a whole recipe (`--set distill.recipe=crosshead`, `DistillConfig.from_recipe`); keys
# given after it change single terms. "kd_weight_per_80_classes" is the class-KD weight for 80 classes:
# our KD is a mean over the classes, so the weight is scaled by C/80 (10 on COCO as the LD paper, 1.25 on
# digits; measured in docs/benchmarks.md: the unscaled 10 costs 9.5 AP on 10 classes).
_TERMS_OFF = dict(ld_weight=0.0, vlr_weight=0.0, kd_weight_per_80_classes=0.0, crosshead_ld_weight=0.0,
                  crosshead_kd_weight=0.0, crosshead_box_weight=0.0)
_MAIN_LD = dict(ld_weight=0.25, ld_temperature=10.0)
_PAPER_FULL = dict(_MAIN_LD, vlr_weight=0.25, vlr_temperature=10.0, kd_weight_per_80_classes=10.0,
                   kd_temperature=2.0)
_CROSSKD = dict(crosshead_layer=-2, crosshead_ld_weight=3.0, crosshead_ld_temperature=1.0, crosshead_kd_weight=1.0,
                crosshead_kd_beta=1.0, crosshead_box_weight=2.0)
RECIPES: dict[str, dict[str, float]] = {
    # the LD paper's GFLv1 tables: main-region LD only (T=10, weight 0.25)
    "ld": dict(_TERMS_OFF, **_MAIN_LD),
    # the LD code's full recipe: main LD + VLR-LD (0.25, T=10) + class KD (10 per 80 classes, T=2)
    "full": dict(_TERMS_OFF, **_PAPER_FULL),
    # CrossKD's GFL terms on the student's features run through the teacher's head; no term on the student's
    # own outputs
    "crosshead": dict(_TERMS_OFF, **_CROSSKD),
    # cross-head + main LD: above the baseline with a teacher barely better than the student and +9 AP with a
    # clearly better one, on every seed (docs/benchmarks.md, "Recipes compared"): the default
    "crosshead_ld": dict(_TERMS_OFF, **_CROSSKD, **_MAIN_LD),
    "crosshead_full": dict(_TERMS_OFF, **_CROSSKD, **_PAPER_FULL),
}
DEFAULT_RECIPE = "crosshead_ld"


def recipe_values(name: str, num_classes: int) -> dict[str, float]:
    """The DistillConfig field values of recipe ``name`` for a detector with ``num_classes`` classes."""
    if name not in RECIPES:
        close = difflib.get_close_matches(name, list(RECIPES), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown distillation recipe '{name}'{hint}; recipes: {', '.join(RECIPES)}")
    values = dict(RECIPES[name])
    values["kd_weight"] = values.pop("kd_weight_per_80_classes") * num_classes / 80
    return values


@dataclass
class DistillConfig:
    """Localization distillation (DESIGN §5); off while ``teacher_config`` is empty.

    The term defaults are the ``crosshead_ld`` recipe (:data:`RECIPES`): measured safe when the teacher is
    trained on the student's own data and barely better, where main LD alone costs AP, and within 1 AP of
    the best recipe with a clearly better teacher (docs/benchmarks.md, "Recipes compared").
    """

    teacher_config: str = ""  # config name or path of the teacher; "" = plain training
    teacher_checkpoint: str = ""  # loaded strictly
    ld_weight: float = 0.25  # main-region LD on the student's positives (0 = off)
    ld_temperature: float = 10.0
    vlr_weight: float = 0.0  # valuable localisation region LD (0 = off; recipe "full": 0.25)
    vlr_temperature: float = 10.0
    vlr_iou_mode: str = "diou"  # "diou" (true DIoU) or "iof" (the LD code's quirk)
    kd_weight: float = 0.0  # class-score KD on positives (0 = off; recipe "full": 10 x C/80)
    kd_temperature: float = 2.0
    reduction: str = "sum"  # "sum" (original; grows with images/GPU) or "per_image"
    # cross-head distillation (CrossKD, CVPR 2024; docs/distillation.md): the student's head-tower features
    # after tower conv `crosshead_layer` go through the frozen teacher's rest of the head; the three terms
    # compare those cross-head predictions with the teacher's own. On when any of the three weights is > 0.
    crosshead_layer: int = -2  # tower conv index (negative: from each tower's end); -2 = CrossKD's default
    crosshead_ld_weight: float = 3.0  # KL of the box distributions (0 = off; CrossKD GFL: 3.0)
    crosshead_ld_temperature: float = 1.0  # CrossKD GFL: T=1, KL summed over the bins
    crosshead_kd_weight: float = 1.0  # class KD, quality-focal style (0 = off; CrossKD GFL: 1.0)
    crosshead_kd_beta: float = 1.0  # exponent of |sigmoid(s) - sigmoid(t)| (CrossKD GFL: 1)
    crosshead_box_weight: float = 2.0  # GIoU to the teacher's decoded box (0 = off; CrossKD GFL: 2.0)
    # feature imitation on the FPN maps (the LD code's IMLoss; docs/distillation.md, "Feature imitation"): MSE
    # between the student's (through a 1x1 adapter when the widths differ) and the teacher's maps on a region.
    # On when imitation_mode is set and imitation_weight > 0.
    imitation_mode: str = ""  # "" (off), "fitnet", "inside_gt", "finegrained", "decouple" or "gibox"
    imitation_weight: float = 0.0  # loss_im weight (LD code, R-50 student: 2.0)
    imitation_gi_topk: int = 10  # "gibox": GI locations kept per level by the NMS
    imitation_gi_iou_thr: float = 0.3  # "gibox": NMS IoU threshold
    imitation_gi_per_image: bool = False  # "gibox": NMS per image (False: over the batch, as the LD code)

    # the regions of locdistill.distill.imitation.IMITATION_MODES (config.py imports no tensor code); not a field
    _imitation_modes = ("fitnet", "inside_gt", "finegrained", "decouple", "gibox")

    def __post_init__(self) -> None:
        IMITATION_MODES = self._imitation_modes
        if self.imitation_mode not in ("",) + IMITATION_MODES:
            close = difflib.get_close_matches(str(self.imitation_mode), IMITATION_MODES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"config key 'distill.imitation_mode': unknown region {self.imitation_mode!r}{hint}; "
                              f"use '' (off) or one of {', '.join(IMITATION_MODES)}")
        number = (int, float)
        if isinstance(self.imitation_weight, number) and self.imitation_weight < 0:
            raise ConfigError(f"config key 'distill.imitation_weight': must be >= 0, got {self.imitation_weight}")
        if isinstance(self.imitation_weight, number) and self.imitation_weight > 0 and not self.imitation_mode:
            raise ConfigError(f"config key 'distill.imitation_weight' is {self.imitation_weight} but "
                              f"distill.imitation_mode is '': choose a region ({', '.join(IMITATION_MODES)}) "
                              "or set the weight to 0")
        if isinstance(self.imitation_gi_topk, int) and self.imitation_gi_topk < 1:
            raise ConfigError(f"config key 'distill.imitation_gi_topk': must be >= 1, got {self.imitation_gi_topk}")
        if isinstance(self.imitation_gi_iou_thr, number) and not 0 < self.imitation_gi_iou_thr <= 1:
            raise ConfigError("config key 'distill.imitation_gi_iou_thr': must be in (0, 1], got "
                              f"{self.imitation_gi_iou_thr}")

    @classmethod
    def from_recipe(cls, recipe: str, teacher_config: str = "", teacher_checkpoint: str = "", *,
                    num_classes: int = 80, **changes: Any) -> "DistillConfig":
        """A config with every term set by ``recipe`` (a key of :data:`RECIPES`), then ``changes``."""
        return cls(teacher_config=teacher_config, teacher_checkpoint=teacher_checkpoint,
                   **{**recipe_values(recipe, num_classes), **changes})

    @classmethod
    def paper(cls, teacher_config: str, teacher_checkpoint: str) -> "DistillConfig":
        """The LD code's full recipe on COCO: main LD 0.25/T10, VLR 0.25/T10, class KD 10/T2, "sum"."""
        return cls.from_recipe("full", teacher_config, teacher_checkpoint, reduction="sum")

    @classmethod
    def crosskd(cls, teacher_config: str, teacher_checkpoint: str) -> "DistillConfig":
        """CrossKD's GFL recipe: cross-head only (main LD, VLR and KD off), tower conv -2 (the third of four),
        cross-head LD 3.0/T1, quality-focal KD 1.0/beta 1, GIoU 2.0."""
        return cls.from_recipe("crosshead", teacher_config, teacher_checkpoint)

    def recipe(self, num_classes: int) -> str:
        """The name of the recipe whose terms these are, or "custom"."""
        for name in RECIPES:
            values = recipe_values(name, num_classes)
            if all(abs(getattr(self, k) - v) < 1e-9 for k, v in values.items()):
                return name
        return "custom"

    @property
    def crosshead(self) -> bool:
        """Cross-head distillation is on (one of its weights is non-zero)."""
        return bool(self.crosshead_ld_weight or self.crosshead_kd_weight or self.crosshead_box_weight)

    @property
    def imitation(self) -> bool:
        """Feature imitation is on (a region is chosen and its weight is non-zero)."""
        return bool(self.imitation_mode and self.imitation_weight)


@dataclass
class Config:
    name: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    test: TestConfig = field(default_factory=TestConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


# ----------------------------------------------------------------------------------
# finding and loading configs


def list_configs() -> list[str]:
    """Names of the configs shipped in the package (e.g. ``gfl/gfl_r50_fpn_coco_1x``)."""
    names = []
    for p in sorted(CONFIG_DIR.rglob("*.py")):
        if p.name.startswith("_"):
            continue
        names.append(p.relative_to(CONFIG_DIR).with_suffix("").as_posix())
    return names


def resolve_config_path(path_or_name: str | os.PathLike) -> Path:
    """Map a config name or a path to an existing ``.py`` file, or raise ConfigError."""
    s = str(path_or_name)
    p = Path(s)
    if p.suffix == ".py" and p.is_file():
        return p
    name = s[:-3] if s.endswith(".py") else s
    for prefix in ("locdistill/configs/", "configs/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    cand = CONFIG_DIR / (name + ".py")
    if cand.is_file():
        return cand
    alias = config_alias(name)  # the LD code's and mmdetection's names and paths of the same experiment
    if alias is not None:
        return CONFIG_DIR / (alias + ".py")
    # a bare file name without its folder
    hits = [n for n in list_configs() if n.split("/")[-1] == name]
    if len(hits) == 1:
        return CONFIG_DIR / (hits[0] + ".py")
    close = closest_names(name, list_configs())  # shipped names and the foreign names of config_aliases
    hint = ("did you mean: " + ", ".join(close)) if close else "run `locdistill configs` to list them"
    raise ConfigError(f"config '{s}' not found: it is neither an existing .py file nor a shipped config name; {hint}")


def load_config(path_or_name: str | os.PathLike | Config, overrides: list[str] | None = None) -> Config:
    """Load a config by shipped name or file path and apply ``a.b=c`` overrides.

    The file must define a module-level ``config`` (a :class:`Config`) or a JSON/dict
    dump of one. A work dir's ``config.py`` snapshot loads the same way.
    """
    if isinstance(path_or_name, Config):
        cfg = dataclasses.replace(path_or_name)
        cfg = config_from_dict(config_to_dict(cfg))
    else:
        path = resolve_config_path(path_or_name)
        try:
            ns = runpy.run_path(str(path))
        except ConfigError:
            raise
        except Exception as e:  # a broken experiment file
            raise ConfigError(f"config file {path} failed to execute: {type(e).__name__}: {e}") from e
        cfg = ns.get("config")
        if isinstance(cfg, dict):
            cfg = config_from_dict(cfg)
        if not isinstance(cfg, Config):
            raise ConfigError(
                f"config file {path} must define a module-level `config = Config(...)` "
                f"(found {type(cfg).__name__})"
            )
        try:  # the same checks as --set values: unknown attributes, wrong types
            _check_attributes(cfg, "")
            cfg = validate(cfg)
        except ConfigError as e:
            raise ConfigError(f"config file {path}: {e}") from None
        if path.stem != "config" or not cfg.name:  # work-dir snapshots keep their name
            cfg.name = path.stem
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg


# ----------------------------------------------------------------------------------
# type checking / conversion


def _valid_keys(obj: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            keys += _valid_keys(v, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def valid_keys(cfg: Config) -> list[str]:
    """All dotted leaf keys of a config, e.g. ``train.epochs``."""
    return _valid_keys(cfg)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, getattr(types, "UnionType", typing.Union)):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{key}': {value!r} is not a valid {_type_name(tp)}")
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a tuple/list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"config key '{key}': expected {len(args)} values, got {value!r}")
        if not args:
            return tuple(value)
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (list, typing.List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a dict, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):  # --set train.ema=true
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected True or False, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    return value


def _unknown_key(key: str, valid: list[str]) -> ConfigError:
    """The error for a key that is not a config field, with the closest valid ones."""
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}; valid keys: " + ", ".join(valid))


def _check_attributes(obj: Any, prefix: str) -> None:
    """Refuse attributes that are not dataclass fields (``config.train.epoch = 3`` in a config
    file silently adds an attribute nobody reads)."""
    names = [f.name for f in dataclasses.fields(obj)]
    for attr in vars(obj):
        if attr not in names:
            raise _unknown_key(prefix + attr, [prefix + n for n in names])
    for n in names:
        v = getattr(obj, n)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            _check_attributes(v, prefix + n + ".")


def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples become lists) suitable for JSON and checkpoints."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(cfg)


def _from_dict(cls: type, d: dict, prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {d!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in d if k not in names]
    if unknown:
        raise _unknown_key(f"{prefix}{unknown[0]}", [prefix + n for n in sorted(names)])
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        tp = hints[f.name]
        v = d[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _from_dict(tp, v, prefix + f.name + ".")
        else:
            kwargs[f.name] = _coerce(v, tp, prefix + f.name)
    return cls(**kwargs)


def config_from_dict(d: dict) -> Config:
    """Inverse of :func:`config_to_dict`; validates every key and type."""
    return _from_dict(Config, d, "")


def validate(cfg: Config) -> Config:
    """Re-check every field's type (configs built in Python may hold anything)."""
    return config_from_dict(config_to_dict(cfg))


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # bare words are strings: --set data.dataset=digits


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``["a.b=c", ...]`` to a copy of ``cfg``; values go through ``ast.literal_eval``.

    ``distill.recipe=NAME`` is not a field: it sets every distillation term to recipe NAME
    (:data:`RECIPES`, scaled to the final ``model.num_classes``); keys after it change single terms.
    """
    d = config_to_dict(cfg)
    keys = valid_keys(cfg)
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. train.epochs=12")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in keys and key != "distill.recipe":
            raise _unknown_key(key, keys + ["distill.recipe"])
        parsed.append((key, _parse_value(text.strip())))
    num_classes = dict(parsed).get("model.num_classes", cfg.model.num_classes)
    if not isinstance(num_classes, int):  # config_from_dict below names the bad value
        num_classes = cfg.model.num_classes
    for key, value in parsed:
        if key == "distill.recipe":
            d["distill"].update(recipe_values(str(value), num_classes))
            continue
        node = d
        parts = key.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return config_from_dict(d)


def dump_config_py(cfg: Config) -> str:
    """Source of a Python config file that rebuilds ``cfg`` exactly (loadable by load_config)."""
    body = pprint.pformat(config_to_dict(cfg), indent=1, width=100, sort_dicts=False)
    return (
        "# Resolved config written by locdistill; load it with `locdistill train <this file>`.\n"
        "from locdistill.config import config_from_dict\n\n"
        f"config = config_from_dict({body})\n"
    )


def save_config(cfg: Config, work_dir: str | os.PathLike) -> None:
    """Write ``config.py`` and ``config.json`` snapshots into ``work_dir``."""
    wd = Path(work_dir)
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "config.py").write_text(dump_config_py(cfg))
    (wd / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
