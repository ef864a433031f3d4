"""One prepared GPU check: training/inference throughput ratios measured in one run.

Run it through ``bash benchmarks/device_check.sh`` (from a clean checkout, no install, no
downloads). Every figure is a ratio of two timings taken in the same process, with the
variants interleaved (each round rotates which variant goes first, CUDA synchronised around
every timed block), so clock drift and other load hit all of them alike. Random weights and
synthetic batches throughout.

Three groups:

1. **train** — GFL R-50 FPN (``gfl/gfl_r50_fpn_coco_1x``) training steps (forward, loss,
   backward, SGD step, as :func:`locdistill.engine.train.train_one_epoch` runs them, with its
   :class:`~locdistill.engine.train.Precision`) in fp32, bf16 AMP, fp16 AMP + GradScaler and
   both AMP dtypes with channels-last; goal: the best ≥ 1.8× the fp32 img/s. In the same
   loop torchvision's FCOS R-50 FPN trains in fp32 and bf16 AMP: GFL / FCOS step-time
   ratio ≤ 1.0 at equal precision. FCOS is built as ``fcos_resnet50_fpn`` builds it with
   ImageNet backbone weights (FrozenBatchNorm2d, stem + layer1 frozen; the weights are not
   loaded) to match GFL's ``frozen_stages=1`` / ``norm_eval``.
2. **inference** — both detectors in eval mode under ``torch.inference_mode``, fp32,
   pre-processing (normalise + pad / FCOS's transform) and post-processing (top-k, decode,
   NMS) included, class biases zeroed so both post-process full candidate sets; goal:
   GFL / FCOS time ≤ 1.0.
3. **ld** — one LD step (``ld/ld_gflv1_r101_r50_fpn_coco_1x_full``: R-101 teacher, R-50
   student, LD + VLR + class KD) against a plain student step and a teacher forward,
   as ``benchmarks/bench_ld_overhead.py``; goal: t(ld) / (t(student) + t(teacher)) ≤ 1.05.
   bf16 AMP on CUDA (the teacher runs under the same autocast, as in training), fp32 on CPU.
   t(ld) / t(student) is printed too, without a goal: it includes the teacher's forward.

Not timed: data loading and the host-to-device copy (each batch sits on the device). CUDA
defaults: 4 images of 800×1333 (GFL pads them to 800×1344), 7 GT boxes each, 3 warm-up steps
per variant, then up to 12 rounds of 2 steps each, no new round after ``--budget`` (200 s);
cuDNN autotuning off as in ``locdistill train`` (``--cudnn-benchmark`` turns it on); "fp32"
is PyTorch's default, which lets cuDNN use TF32 for convolutions (printed in the header).

Without CUDA it falls back to the CPU with small models (GFL/FCOS R-18, LD R-34 → R-18),
small images and few iterations, so it ends in about a minute; the figures then only show
that the script works. The last line is ``DEVICE_CHECK_JSON {...}`` with every figure.

    python benchmarks/device_check.py                  # CUDA if available, else the CPU fallback
    python benchmarks/device_check.py --json-out r.json --cudnn-benchmark
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train_step import synthetic_batch  # noqa: E402
from locdistill.config import TestConfig, TrainConfig, load_config  # noqa: E402
from locdistill.distill import Distiller  # noqa: E402
from locdistill.engine.train import Precision, targets_to  # noqa: E402
from locdistill.models.build import build_criterion, build_detector  # noqa: E402
from locdistill.models.postprocess import postprocess  # noqa: E402

GOAL_AMP = 1.8  # best AMP variant img/s / fp32 img/s, at least
GOAL_VS_FCOS = 1.0  # GFL step time / FCOS step time, at most
GOAL_LD = 1.05  # t(ld) / (t(student) + t(teacher)), at most
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
PRECISIONS = {"fp32": (False, "bfloat16"), "bf16": (True, "bfloat16"), "fp16": (True, "float16")}


# ----------------------------------------------------------------------------- timing

class Clock:
    """Interleaved timing of several step functions; a failing variant is dropped and its error kept."""

    def __init__(self, device: torch.device, deadline: float):
        self.device = device
        self.deadline = deadline  # time.perf_counter() after which no new round starts (min_rounds apart)
        self.errors: dict[str, str] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _call(self, name: str, fn: Callable[[], object], times: int) -> bool:
        try:
            for _ in range(times):
                fn()
            return True
        except Exception as e:  # report it, keep measuring the others
            self.errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            return False

    def measure(self, fns: dict[str, Callable[[], object]], warmup: int, rounds: int, per_round: int,
                min_rounds: int) -> tuple[dict[str, float], int]:
        """Median seconds per call of each ``fns`` entry, and the number of timed rounds."""
        live = dict(fns)
        for name, fn in list(live.items()):
            if not self._call(name, fn, warmup):
                del live[name]
        self.sync()
        times: dict[str, list[float]] = {name: [] for name in live}
        done = 0
        for r in range(rounds):
            if r >= min_rounds and time.perf_counter() > self.deadline:
                break
            names = list(live)
            shift = r % max(len(names), 1)
            for name in names[shift:] + names[:shift]:
                self.sync()
                t = time.perf_counter()
                ok = self._call(name, live[name], per_round)
                self.sync()
                if ok:
                    times[name].append((time.perf_counter() - t) / per_round)
                else:
                    del live[name]
                    del times[name]
            done += 1
        return {name: statistics.median(v) for name, v in times.items() if v}, done


# ----------------------------------------------------------------------------- models and steps

def gfl_model(cfg_name: str, depth: int | None) -> torch.nn.Module:
    cfg = load_config(cfg_name)
    if depth is not None:
        cfg.model.backbone.depth = depth
    cfg.model.backbone.pretrained = ""  # random init, never a download
    return build_detector(cfg.model)


def fcos_model(depth: int, size: tuple[int, int]) -> torch.nn.Module:
    """torchvision's FCOS as ``fcos_resnet50_fpn`` builds it with an ImageNet backbone (FrozenBN, 3
    trainable stages), no weights loaded; its transform keeps ``size`` (scale 1.0)."""
    from torchvision.models import resnet18, resnet34, resnet50
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    resnet = {18: resnet18, 34: resnet34, 50: resnet50}[depth](weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(resnet, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    h, w = size
    return FCOS(backbone, num_classes=80, min_size=min(h, w), max_size=max(h, w))


def precision_for(name: str, device: torch.device) -> Precision:
    amp, dtype = PRECISIONS[name]
    return Precision(TrainConfig(amp=amp, amp_dtype=dtype), device)


def gfl_train_step(model, criterion, precision: Precision, images, targets, sizes, lr: float):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                          weight_decay=1e-4)

    def step() -> None:  # the body of train_one_epoch's step, without its logging
        with precision.autocast():
            out = model(images)
        outputs, teacher_outputs = out if isinstance(out, tuple) else (out, None)
        losses = criterion(outputs, targets, teacher_outputs=teacher_outputs, image_sizes=sizes)
        total = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        precision.scaler.scale(total).backward()
        precision.scaler.step(opt)
        precision.scaler.update()
    return step


def fcos_train_step(model, precision: Precision, images01: list, targets, lr: float):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                          weight_decay=1e-4)
    fcos_targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]

    def step() -> None:
        with precision.autocast():
            losses = model(images01, fcos_targets)
        total = sum(v.float() for v in losses.values())
        opt.zero_grad(set_to_none=True)
        precision.scaler.scale(total).backward()
        precision.scaler.step(opt)
        precision.scaler.update()
    return step


# ----------------------------------------------------------------------------- groups

def run_train(a, device, clock: Clock, report: dict) -> None:
    h, w = a.hw
    gen = torch.Generator().manual_seed(0)
    images, targets = synthetic_batch(a.batch, h, w, a.boxes, 80, gen)  # normalised, padded to 32
    sizes = [t["pad_shape"] for t in targets]
    images, targets = images.to(device), targets_to(targets, device)
    images_cl = images.contiguous(memory_format=torch.channels_last)
    images01 = [(im * STD.to(device) + MEAN.to(device)).clamp(0, 255)[:, :h, :w] / 255 for im in images]
    cfg = load_config("gfl/gfl_r50_fpn_coco_1x")
    criterion = build_criterion(cfg)
    torch.manual_seed(0)
    base = gfl_model("gfl/gfl_r50_fpn_coco_1x", a.depth).train()
    fcos_base = fcos_model(a.depth or 50, a.hw).train()
    fns: dict[str, Callable[[], None]] = {}
    skipped: dict[str, str] = {}
    for prec in ("fp32", "bf16", "fp16"):
        for cl in (False, True):
            if cl and prec == "fp32":
                continue
            name = f"gfl {prec}" + (" + channels-last" if cl else "")
            try:
                p = precision_for(prec, device)
            except Exception as e:  # fp16 on the CPU, bf16 on an old GPU
                skipped[name] = "needs CUDA" if device.type != "cuda" else str(e).split(";")[0]
                continue
            model = copy.deepcopy(base).to(device)
            if cl:
                model = model.to(memory_format=torch.channels_last)
            fns[name] = gfl_train_step(model, criterion, p, images_cl if cl else images, targets, sizes, a.lr)
    for prec in ("fp32", "bf16"):
        fns[f"fcos {prec}"] = fcos_train_step(copy.deepcopy(fcos_base).to(device), precision_for(prec, device),
                                              images01, targets, a.lr)
    del base, fcos_base
    med, rounds = clock.measure(fns, a.warmup, a.rounds, a.per_round, a.min_rounds)
    report["train"] = {"rounds": rounds, "per_round": a.per_round, "skipped": skipped,
                       "ms": {k: 1000 * v for k, v in med.items()},
                       "img_s": {k: a.batch / v for k, v in med.items()}}


def run_inference(a, device, clock: Clock, report: dict) -> None:
    h, w = a.hw
    torch.manual_seed(0)
    gfl = gfl_model("gfl/gfl_r50_fpn_coco_1x", a.depth).eval().to(device)
    fcos = fcos_model(a.depth or 50, a.hw).eval().to(device)
    with torch.no_grad():  # dense scores: both post-process full candidate sets (random init keeps ~nothing)
        gfl.bbox_head.gfl_cls.bias.zero_()
        fcos.head.classification_head.cls_logits.bias.zero_()
    g = torch.Generator().manual_seed(1)
    raw = [(torch.rand(3, h, w, generator=g) * 255).to(device) for _ in range(a.batch)]  # RGB 0..255
    mean, std = MEAN.to(device), STD.to(device)
    metas = [{"img_shape": (h, w), "scale_factor": (1.0, 1.0), "ori_shape": (h, w)}] * a.batch
    test_cfg = TestConfig()
    counts: dict[str, int] = {}

    def run_gfl() -> None:
        x = torch.stack([F.pad((im - mean) / std, (0, -w % 32, 0, -h % 32)) for im in raw])
        dets = postprocess(gfl(x), metas, test_cfg, gfl.strides, gfl.reg_max)
        counts["gfl"] = len(dets[0]["scores"])

    def run_fcos() -> None:
        counts["fcos"] = len(fcos([im / 255 for im in raw])[0]["scores"])

    with torch.inference_mode():
        med, rounds = clock.measure({"gfl fp32": run_gfl, "fcos fp32": run_fcos}, a.warmup, a.rounds,
                                    a.per_round, a.min_rounds)
    report["inference"] = {"rounds": rounds, "per_round": a.per_round, "detections_image0": counts,
                           "ms": {k: 1000 * v for k, v in med.items()},
                           "img_s": {k: a.batch / v for k, v in med.items()}}


def run_ld(a, device, clock: Clock, report: dict) -> None:
    h, w = a.hw
    cfg = load_config("ld/ld_gflv1_r101_r50_fpn_coco_1x_full")
    gen = torch.Generator().manual_seed(2)
    images, targets = synthetic_batch(a.batch, h, w, a.boxes, 80, gen)
    sizes = [t["pad_shape"] for t in targets]
    images, targets = images.to(device), targets_to(targets, device)
    torch.manual_seed(0)
    student = gfl_model("ld/ld_gflv1_r101_r50_fpn_coco_1x_full", a.depth).train().to(device)
    teacher = gfl_model(cfg.distill.teacher_config, a.teacher_depth).eval().requires_grad_(False).to(device)
    distiller = Distiller.from_config(copy.deepcopy(student), teacher, cfg.distill).train()
    plain = build_criterion(load_config("gfl/gfl_r50_fpn_coco_1x"))
    ld_crit = build_criterion(cfg)
    prec = precision_for(a.ld_precision, device)

    def teacher_forward() -> None:
        with torch.no_grad(), prec.autocast():
            teacher(images)

    fns = {"student step": gfl_train_step(student, plain, prec, images, targets, sizes, a.lr),
           "teacher forward": teacher_forward,
           "ld step": gfl_train_step(distiller, ld_crit, prec, images, targets, sizes, a.lr)}
    med, rounds = clock.measure(fns, a.warmup, a.rounds, a.per_round, a.min_rounds)
    d = cfg.distill
    report["ld"] = {"rounds": rounds, "per_round": a.per_round, "precision": a.ld_precision,
                    "recipe": f"LD w={d.ld_weight} T={d.ld_temperature}, VLR w={d.vlr_weight}, KD w={d.kd_weight}",
                    "ms": {k: 1000 * v for k, v in med.items()}}


# ----------------------------------------------------------------------------- report

def verdict(value: float | None, goal: float, at_least: bool) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return "PASS" if (value >= goal if at_least else value <= goal) else "FAIL"


def summarise(report: dict, errors: dict[str, str]) -> list[list[str]]:
    """Table rows (check, variant, ms/step, img/s, ratio, goal, result); fills report["ratios"]."""
    rows: list[list[str]] = []
    ratios: dict[str, float | None] = {}
    results: dict[str, str] = {}
    tr = report.get("train")
    if tr:
        ips, ms = tr["img_s"], tr["ms"]
        base = ips.get("gfl fp32")
        amp = {k: v for k, v in ips.items() if k.startswith("gfl ") and k != "gfl fp32"}
        for k in [k for k in ips if k.startswith("gfl ")]:
            r = ips[k] / base if base else None
            if k != "gfl fp32":
                ratios[f"train {k} / fp32 img/s"] = r
            rows.append(["train GFL", k, f"{ms[k]:.1f}", f"{ips[k]:.2f}", "1.00 (base)" if k == "gfl fp32" else
                         (f"{r:.2f}x" if r else "n/a"), "", ""])
        for k, why in tr["skipped"].items():
            rows.append(["train GFL", k, "-", "-", "-", "", f"skipped ({why})"])
        best = max(amp, key=amp.get) if amp else None
        r = amp[best] / base if best and base else None
        ratios["train best AMP / fp32 img/s"] = r
        results["amp"] = verdict(r, GOAL_AMP, True)
        rows.append(["train GFL", f"best: {best or 'n/a'}", "", "", f"{r:.2f}x" if r else "n/a",
                     f">= {GOAL_AMP:.2f}x", results["amp"]])
        for prec in ("fp32", "bf16"):
            g, f = f"gfl {prec}", f"fcos {prec}"
            if f in ms:
                rows.append(["train FCOS", f, f"{ms[f]:.1f}", f"{ips[f]:.2f}", "", "", ""])
            r = ms[g] / ms[f] if g in ms and f in ms else None
            ratios[f"train gfl/fcos time {prec}"] = r
            results[f"vs_fcos_train_{prec}"] = verdict(r, GOAL_VS_FCOS, False)
            rows.append(["train GFL vs FCOS", f"time ratio, {prec}", "", "", f"{r:.2f}" if r else "n/a",
                         f"<= {GOAL_VS_FCOS:.2f}", results[f"vs_fcos_train_{prec}"]])
    inf = report.get("inference")
    if inf:
        ms, ips = inf["ms"], inf["img_s"]
        for k in ms:
            rows.append(["inference", k, f"{ms[k]:.1f}", f"{ips[k]:.2f}", "", "", ""])
        r = ms["gfl fp32"] / ms["fcos fp32"] if len(ms) == 2 else None
        ratios["inference gfl/fcos time fp32"] = r
        results["vs_fcos_inference"] = verdict(r, GOAL_VS_FCOS, False)
        rows.append(["inference GFL vs FCOS", "time ratio, fp32", "", "", f"{r:.2f}" if r else "n/a",
                     f"<= {GOAL_VS_FCOS:.2f}", results["vs_fcos_inference"]])
    ld = report.get("ld")
    if ld:
        ms = ld["ms"]
        for k in ms:
            rows.append(["LD", f"{k} ({ld['precision']})", f"{ms[k]:.1f}", "", "", "", ""])
        ok = all(k in ms for k in ("student step", "teacher forward", "ld step"))
        r = ms["ld step"] / (ms["student step"] + ms["teacher forward"]) if ok else None
        ratios["ld / (student + teacher)"] = r
        ratios["ld / student (no goal)"] = ms["ld step"] / ms["student step"] if ok else None
        results["ld_overhead"] = verdict(r, GOAL_LD, False)
        rows.append(["LD", "ld / (student + teacher)", "", "", f"{r:.3f}" if r else "n/a", f"<= {GOAL_LD:.2f}",
                     results["ld_overhead"]])
        if ok:
            rows.append(["LD", "ld / student (info)", "", "", f"{ratios['ld / student (no goal)']:.2f}", "", ""])
    for k, e in errors.items():
        rows.append(["error", k, "", "", "", "", e])
    report["ratios"], report["results"] = ratios, results
    return rows


def print_table(rows: list[list[str]]) -> None:
    head = ["check", "variant", "ms/step", "img/s", "ratio", "goal", "result"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "threads": torch.get_num_threads()}
    try:
        import torchvision
        env["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:  # the legacy flags; newer torch also has backends.*.fp32_precision
                env["cudnn_tf32"] = bool(torch.backends.cudnn.allow_tf32)
                env["matmul_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
            except Exception as e:
                env["cudnn_tf32"] = env["matmul_tf32"] = f"unknown ({type(e).__name__})"
        env["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (CUDA if available), cuda, cuda:N or cpu")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for all measurements; no new round starts after it (GPU 200, CPU 40)")
    ap.add_argument("--batch", type=int, default=None, help="images per step (GPU 4, CPU 1)")
    ap.add_argument("--size", default=None, help="image HxW (GPU 800x1333, CPU 224x288)")
    ap.add_argument("--boxes", type=int, default=7, help="GT boxes per image (COCO averages about 7)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls per variant (GPU 3, CPU 1)")
    ap.add_argument("--rounds", type=int, default=None, help="most timed rounds per group (GPU 12, CPU 3)")
    ap.add_argument("--min-rounds", type=int, default=None, help="timed rounds even past the budget (GPU 3, CPU 2)")
    ap.add_argument("--per-round", type=int, default=None, help="calls per variant per round (GPU 2, CPU 1)")
    ap.add_argument("--models", choices=("auto", "full", "small"), default="auto",
                    help="full: GFL/FCOS R-50, LD R-101 -> R-50; small: R-18, LD R-34 -> R-18; auto: full on CUDA")
    ap.add_argument("--groups", default="train,inference,ld", help="comma-separated: train, inference, ld")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="torch.backends.cudnn.benchmark=True (training leaves it off)")
    ap.add_argument("--json-out", default=None, help="also write the JSON report to this file")
    a = ap.parse_args()
    t_start = time.perf_counter()

    want = a.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
        if want == "cpu":
            print("# note: CUDA is not available here; CPU fallback (small models unless --models full, small "
                  "images, few iterations): the figures only show that the check runs, not GPU speed")
    elif want.startswith("cuda") and not torch.cuda.is_available():
        print(f"# note: --device {want} asked for but CUDA is not available; CPU fallback")
        want = "cpu"
    device = torch.device(want)
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = bool(a.cudnn_benchmark)
    defaults = dict(budget=200.0, batch=4, size="800x1333", warmup=3, rounds=12, min_rounds=3, per_round=2) if gpu \
        else dict(budget=40.0, batch=1, size="224x288", warmup=1, rounds=3, min_rounds=2, per_round=1)
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.hw = tuple(int(v) for v in a.size.lower().replace(",", "x").split("x"))
    full = a.models == "full" or (a.models == "auto" and gpu)
    a.depth, a.teacher_depth = (None, None) if full else (18, 34)  # None: the configs' R-50 / R-101
    a.ld_precision = "bf16" if gpu else "fp32"
    a.lr = 1e-4  # small: the weights stay near their init over the run
    groups = [g.strip() for g in a.groups.split(",") if g.strip()]
    shares = {"train": 0.5, "inference": 0.15, "ld": 0.35}
    unknown = [g for g in groups if g not in shares]
    if unknown:
        ap.error(f"unknown group(s) {unknown}; use train, inference, ld")

    env = environment(device)
    names = "R-50 / R-101 teacher" if full else "R-18 / R-34 teacher"
    print(f"# device check: {env.get('gpu', env.get('cpu'))} ({device}), torch {env['torch']}, "
          f"torchvision {env.get('torchvision')}, {env['threads']} CPU threads; models {names}, batch {a.batch} x "
          f"{a.hw[0]}x{a.hw[1]}, {a.boxes} GT/image; budget {a.budget:.0f} s")
    if gpu:
        print(f"# fp32 = PyTorch defaults: cuDNN TF32 {env['cudnn_tf32']}, matmul TF32 {env['matmul_tf32']}; "
              f"cudnn.benchmark {env['cudnn_benchmark']}")
    report: dict = {"env": env, "settings": {k: getattr(a, k) for k in (
        "batch", "boxes", "warmup", "rounds", "min_rounds", "per_round", "budget", "ld_precision", "lr")},
        "size": list(a.hw), "models": names}
    end = t_start + a.budget
    errors: dict[str, str] = {}
    runners = {"train": run_train, "inference": run_inference, "ld": run_ld}
    for i, g in enumerate(groups):
        now = time.perf_counter()
        left = sum(shares[x] for x in groups[i:])
        clock = Clock(device, now + max(end - now, 0.0) * shares[g] / left)
        t0 = time.perf_counter()
        try:
            runners[g](a, device, clock, report)
        except Exception as e:  # a group that cannot even be built: report, go on
            errors[g] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        errors.update({f"{g}: {k}": v for k, v in clock.errors.items()})
        if g in report:
            report[g]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"# {g}: {time.perf_counter() - t0:.1f} s"
              + (f", {report[g]['rounds']} rounds x {a.per_round}" if g in report else ", failed"))
        if gpu:
            torch.cuda.empty_cache()
    if gpu:
        report["env"]["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    rows = summarise(report, errors)
    report["errors"] = errors
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    print()
    print_table(rows)
    verdicts = list(report["results"].values())
    print(f"\n# {verdicts.count('PASS')} PASS, {verdicts.count('FAIL')} FAIL, {len(errors)} errors, "
          f"{report['seconds']:.0f} s" + ("" if gpu else " (CPU fallback: not a GPU result)"))
    line = json.dumps(report, default=str)
    if a.json_out:
        Path(a.json_out).write_text(line + "\n")
    print("DEVICE_CHECK_JSON " + line)
    sys.exit(1 if not any(g in report for g in groups) else 0)  # nothing measured at all


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
