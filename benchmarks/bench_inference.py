"""Inference time of locdistill's GFL R-50 FPN vs torchvision's FCOS R-50 FPN.

Both models: random weights, eval mode, ``torch.inference_mode``, the same torch
threads, one image of the same size, pre-processing (normalise + pad to 32) and
post-processing (top-k, decode, NMS) included. torchvision's FCOS resizes inputs to
min 800 / max 1333; an 800×1333 image is kept at that size by it (scale 1.0) and
padded to 800×1344, which is also what our pipeline feeds GFL. For another --size the
FCOS transform is set to keep that size too. Measurements alternate between the two
models, each going first every other iteration (median of --iters), so load from
other processes hits both alike.

    python benchmarks/bench_inference.py --iters 5 --threads 2 --size 800x1333

``--dense-scores`` zeroes both classification biases so that sigmoid scores are ~0.5
and post-processing handles the full 1000 candidates per level (random init otherwise
keeps almost nothing above the thresholds).

``--zoo`` adds model-zoo teachers timed in the same loop (same input, same rotation),
each reported as a ratio to the same-run GFL R-50 and FCOS R-50: GFL R-101, GFL R-101
with DCN in C3-C5 (``torchvision.ops.deform_conv2d``) and GFLv2 R-50 (DGQP head)::

    python benchmarks/bench_inference.py --iters 3 --threads 2 --zoo

``--yolo`` adds the YOLO family in the same loop: GFL R-18 (``model.backbone.depth=18``) and
yolov8n / yolov8s (the ``yolo/yolov8n_coco`` / ``yolo/yolov8s_coco`` configs' model, 80 classes),
each with the same pre-processing and the family-neutral post-processing
(:func:`locdistill.models.build.postprocess`; each YOLO model with its config's ``test`` settings,
score_thr 0.001 / IoU 0.7 / 300 per image, the GFL models with ``TestConfig()``). Reported as ratios
to the same-run GFL R-18, with the goal yolov8n ≤ 0.5× GFL R-18. Without ``--size`` the input is
then 640×640::

    python benchmarks/bench_inference.py --iters 5 --threads 2 --yolo
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locdistill.config import ModelConfig, TestConfig, load_config  # noqa: E402
from locdistill.models import build_detector  # noqa: E402
from locdistill.models.build import postprocess  # noqa: E402  (family-neutral: GFL or YOLO outputs)

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


def parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().replace(",", "x").split("x")
    return int(h), int(w)


def zero_class_biases(model) -> None:
    """``--dense-scores``: sigmoid scores ~0.5 everywhere (GFL head or YOLO head)."""
    with torch.no_grad():
        if hasattr(model.bbox_head, "gfl_cls"):
            model.bbox_head.gfl_cls.bias.zero_()
        else:  # YOLO head: the last conv of each level's class branch
            for branch in model.bbox_head.cls_branches:
                branch[-1].bias.zero_()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=5, help="timed iterations per model (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed iterations per model first")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    ap.add_argument("--size", default=None, help="image HxW (default 800x1333; 640x640 with --yolo)")
    ap.add_argument("--dense-scores", action="store_true", help="zero the class biases: stress post-processing")
    ap.add_argument("--zoo", action="store_true", help="also time GFL R-101, R-101-DCN and GFLv2 R-50")
    ap.add_argument("--yolo", action="store_true", help="also time GFL R-18, yolov8n and yolov8s (goal: "
                    "yolov8n <= 0.5x GFL R-18)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = parse_size(args.size or ("640x640" if args.yolo else "800x1333"))

    from torchvision.models.detection import fcos_resnet50_fpn

    fcos = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=80,
                             min_size=min(h, w), max_size=max(h, w)).eval()
    gfl = build_detector(ModelConfig(num_classes=80)).eval()
    if args.dense_scores:
        zero_class_biases(gfl)
        with torch.no_grad():
            fcos.head.classification_head.cls_logits.bias.zero_()
    test_cfg = TestConfig()
    image = torch.rand(3, h, w) * 255  # RGB 0..255 (FCOS gets it in 0..1, as it expects)
    metas = [{"img_shape": (h, w), "scale_factor": (1.0, 1.0), "ori_shape": (h, w)}]
    pp_times: list[float] = []

    def run_gfl() -> int:
        x = ((image - MEAN) / STD).unsqueeze(0)
        x = F.pad(x, (0, -w % 32, 0, -h % 32))  # [1, 3, 800, 1344]
        out = gfl(x)
        t = time.perf_counter()
        dets = postprocess(out, metas, test_cfg, gfl.strides, gfl.reg_max)
        pp_times.append(time.perf_counter() - t)
        return len(dets[0]["scores"])

    def run_fcos() -> int:
        return len(fcos([image / 255])[0]["scores"])

    def detector_runner(model, cfg: TestConfig = test_cfg):
        """A runner for any locdistill detector (GFL or YOLO): normalise + pad, forward, post-process."""
        def run() -> int:
            x = F.pad(((image - MEAN) / STD).unsqueeze(0), (0, -w % 32, 0, -h % 32))
            return len(postprocess(model(x), metas, cfg, model.strides, model.reg_max)[0]["scores"])
        return run

    runners = {"gfl": run_gfl, "fcos": run_fcos}
    zoo = {"GFL R-101": "gfl/gfl_r101_fpn_mstrain_2x_coco",
           "GFL R-101-DCN (c3-c5)": "gfl/gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco",
           "GFLv2 R-50": "gflv2/gflv2_r50_fpn_mstrain_2x_coco"} if args.zoo else {}
    yolo = {"GFL R-18": None, "yolov8n": "yolo/yolov8n_coco", "yolov8s": "yolo/yolov8s_coco"} if args.yolo else {}
    for label, name in {**zoo, **yolo}.items():
        if name is None:  # GFL R-18: the default GFL with an R-18 backbone
            model_cfg, cfg = ModelConfig(num_classes=80), test_cfg
            model_cfg.backbone.depth = 18
        else:
            config = load_config(name)
            model_cfg, cfg = config.model, (config.test if config.model.type == "yolo" else test_cfg)
        model = build_detector(model_cfg).eval()
        if args.dense_scores:
            zero_class_biases(model)
        runners[label] = detector_runner(model, cfg)

    times: dict[str, list[float]] = {name: [] for name in runners}
    counts = {}
    order = list(runners)
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            shift = i % len(order)  # rotate who goes first
            for name in order[shift:] + order[:shift]:
                t = time.perf_counter()
                counts[name] = runners[name]()
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t)
    ours, theirs = statistics.median(times["gfl"]), statistics.median(times["fcos"])
    best = min(times["gfl"]) / min(times["fcos"])
    pp = statistics.median(pp_times[args.warmup:])
    cmd = "python " + " ".join([sys.argv[0]] + sys.argv[1:])
    print(f"# {cmd}")
    print(f"# torch {torch.__version__}, threads {args.threads}, detections: gfl {counts['gfl']}, fcos {counts['fcos']}; "
          f"gfl post-processing {pp * 1e3:.1f} ms (median); ratio of the fastest runs {best:.2f}")
    print("| input | threads | scores | GFL R-50 (ms) | FCOS R-50 (ms) | ratio GFL/FCOS |")
    print("|---|---|---|---|---|---|")
    print(f"| {h}x{w} | {args.threads} | {'dense' if args.dense_scores else 'random init'} | "
          f"{ours * 1e3:.0f} | {theirs * 1e3:.0f} | {ours / theirs:.2f} |")
    if zoo:
        print()
        print("| model | ms (median) | ratio to GFL R-50 (same run) | ratio to FCOS R-50 (same run) |")
        print("|---|---|---|---|")
        for label in zoo:
            t = statistics.median(times[label])
            print(f"| {label} | {t * 1e3:.0f} | {t / ours:.2f} | {t / theirs:.2f} |")
    if yolo:
        r18 = statistics.median(times["GFL R-18"])
        print()
        print("# detections: " + ", ".join(f"{label} {counts[label]}" for label in yolo))
        print("| model | ms (median) | ms (fastest) | ratio to GFL R-18 (same run) | ratio to GFL R-50 (same run) |")
        print("|---|---|---|---|---|")
        for label, key in [("GFL R-50", "gfl")] + [(k, k) for k in yolo]:
            t = statistics.median(times[key])
            print(f"| {label} | {t * 1e3:.0f} | {min(times[key]) * 1e3:.0f} | {t / r18:.2f} | {t / ours:.2f} |")
        ratio = statistics.median(times["yolov8n"]) / r18
        best_n = min(times["yolov8n"]) / min(times["GFL R-18"])
        print(f"# yolov8n / GFL R-18 = {ratio:.2f} (fastest runs {best_n:.2f}; goal <= 0.50): "
              f"{'OK' if ratio <= 0.5 else 'MISSED'}")


if __name__ == "__main__":
    main()
