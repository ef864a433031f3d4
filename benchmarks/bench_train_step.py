"""Where the time of one GFL training step goes (CPU by default).

GFL R-18 FPN (``Config`` with ``model.backbone.depth=18``, 80 classes), random weights,
SGD, a batch of ``--batch`` synthetic images of ``--size`` with ``--boxes`` random GT
boxes each (COCO averages about 7). Each step is split into

- data: synthetic images + targets through ``locdistill.data.loader.collate``,
- forward: ``model(images)``,
- targets+loss: ``GFLCriterion`` (ATSS assignment, QFL/GIoU/DFL), also split into
  assignment/targets and the loss sums,
- backward+step: ``zero_grad``, ``backward``, ``optimizer.step``.

The median of ``--iters`` steps after ``--warmup`` untimed ones is reported as a
markdown table with each phase's share of the step.

    python benchmarks/bench_train_step.py --iters 5 --threads 2

``--model yolov8n`` (or ``yolov8s`` … ``yolov8x``) times the YOLO family instead: the
``yolo/yolov8<scale>_coco`` config's model (80 classes) and its criterion
(:class:`~locdistill.models.yolo.YOLOCriterion`: task-aligned assignment (TAL) + targets, then
BCE / CIoU / DFL), with the same phases, data and budget::

    python benchmarks/bench_train_step.py --iters 5 --threads 2 --model yolov8n
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locdistill.config import Config, load_config  # noqa: E402
from locdistill.data.loader import collate  # noqa: E402
from locdistill.distill import build_criterion  # noqa: E402
from locdistill.models.build import build_detector  # noqa: E402


def synthetic_batch(batch: int, h: int, w: int, boxes: int, num_classes: int, gen: torch.Generator):
    items = []
    for _ in range(batch):
        image = torch.randn(3, h, w, generator=gen)  # already "normalised"
        xy = torch.rand(boxes, 2, generator=gen) * torch.tensor([w * 0.8, h * 0.8])
        wh = torch.rand(boxes, 2, generator=gen) * torch.tensor([w * 0.4, h * 0.4]) + 8
        b = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w - 1.0, h - 1.0]))], 1)
        items.append((image, {"boxes": b, "labels": torch.randint(0, num_classes, (boxes,), generator=gen)}))
    return collate(items, size_divisor=32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", default="640x640", help="image HxW")
    ap.add_argument("--boxes", type=int, default=7, help="GT boxes per image")
    ap.add_argument("--depth", type=int, default=18, help="GFL backbone depth (--model gfl)")
    ap.add_argument("--model", default="gfl", choices=["gfl"] + [f"yolov8{s}" for s in "nsmlx"],
                    help="gfl (GFL R-<depth> FPN, default) or a yolo/yolov8<scale>_coco model")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = (int(v) for v in args.size.lower().split("x"))

    if args.model == "gfl":
        cfg = Config()
        cfg.model.backbone.depth = args.depth
        label, assign_label = f"GFL R-{args.depth} FPN", "ATSS"
    else:
        cfg = load_config(f"yolo/{args.model}_coco")
        label, assign_label = f"{args.model} (yolo/{args.model}_coco)", "TAL"
    cfg.model.num_classes = 80
    model = build_detector(cfg.model).train()
    criterion = build_criterion(cfg, distill=False)
    losses_of = criterion.yolo_losses if cfg.model.type == "yolo" else criterion.gfl_losses
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)

    phases = ["data", "forward", "targets+loss", "backward+step"]
    parts = [f"  assignment ({assign_label})+targets", "  loss sums"]
    times: dict[str, list[float]] = {k: [] for k in phases + parts}
    for i in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        images, targets = synthetic_batch(args.batch, h, w, args.boxes, 80, gen)
        sizes = [t["pad_shape"] for t in targets]
        t1 = time.perf_counter()
        outputs = model(images)
        t2 = time.perf_counter()
        dense = criterion.flatten(outputs)
        tg = criterion.assign(dense, targets, image_sizes=sizes)
        t2b = time.perf_counter()
        losses = losses_of(dense, tg)
        loss = sum(losses.values())
        t3 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        t4 = time.perf_counter()
        if i >= args.warmup:
            for k, v in zip(phases + parts,
                            [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t2b - t2, t3 - t2b]):
                times[k].append(v)

    med = {k: statistics.median(v) for k, v in times.items()}
    step = sum(med[k] for k in phases)
    cmd = "python " + " ".join([sys.argv[0]] + sys.argv[1:])
    print(f"# {cmd}")
    print(f"# torch {torch.__version__}, threads {args.threads}, {label}, 80 classes, "
          f"batch {args.batch} x {h}x{w}, {args.boxes} GT/image, positives/image "
          f"{tg.num_pos.tolist()}, median of {args.iters} steps")
    print("| phase | ms | share of step |")
    print("|---|---|---|")
    for k in list(times):
        print(f"| {k} | {med[k] * 1e3:.1f} | {100 * med[k] / step:.1f} % |")
    print(f"| step (sum of phases) | {step * 1e3:.1f} | 100 % |")
    share = med["targets+loss"] / step
    print(f"# targets+loss share {100 * share:.1f} % (budget 15 %): {'OK' if share <= 0.15 else 'OVER'}")


if __name__ == "__main__":
    main()
