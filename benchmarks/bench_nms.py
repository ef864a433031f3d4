"""Score-voting Cluster-DIoU-NMS vs hard NMS vs a per-detection score-voting loop.

Candidates look like a detector's: boxes jittered around a few objects per image
(1333×800 image), most carrying their object's class, some another class, scores
uniform in (0.05, 1). For each size (1,000 and 5,000 candidates) and class count (80
and 5), in one run and on the same data:

- ``voting``: :func:`locdistill.nms.voting_cluster_diou_nms` (``test.nms=
  "voting_cluster_diou"``, DESIGN §6),
- ``nms``: ``torchvision.ops.batched_nms`` at IoU 0.6 (no voting),
- ``loop``: ``batched_nms`` then score voting one kept box at a time, the way
  mmdetection's score voting works: per class, for each kept box, every candidate of
  that class with IoU > 0.01 votes with weight ``exp(-(1 - IoU)^2 / 0.025) · score``,
- ``dense`` (≤ 2,000 candidates unless ``--dense-all``): the literal algorithm on one
  N×N DIoU matrix (:func:`voting_cluster_diou_nms_dense`), also checked to keep the
  same boxes as ``voting``.

Each is timed as the median of ``--repeats`` runs, methods interleaved. Then GFL R-50
(random weights, one 800×1333 image, eval mode) is timed with the same threads, to put
the NMS at 1,000 candidates in proportion to the inference of one image.

    python benchmarks/bench_nms.py --threads 2 --repeats 7
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.ops import batched_nms, box_iou

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locdistill.nms import voting_cluster_diou_nms, voting_cluster_diou_nms_dense  # noqa: E402

IMAGE_W, IMAGE_H = 1333, 800


def make_candidates(num: int, num_classes: int, objects: int, seed: int) -> tuple[torch.Tensor, ...]:
    """``boxes [num, 4]``, ``scores [num]``, ``labels [num]`` clustered around ``objects`` objects."""
    g = torch.Generator().manual_seed(seed)
    wh = torch.exp(torch.empty(objects, 2).uniform_(3.0, 6.0, generator=g))  # ~20..400 px
    centre = torch.rand(objects, 2, generator=g) * torch.tensor([IMAGE_W, IMAGE_H])
    obj_label = torch.randint(0, num_classes, (objects,), generator=g)
    k = torch.randint(0, objects, (num,), generator=g)
    c = centre[k] + torch.randn(num, 2, generator=g) * wh[k] * 0.15
    s = wh[k] * torch.exp(torch.randn(num, 2, generator=g) * 0.15)
    boxes = torch.cat([c - s / 2, c + s / 2], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, IMAGE_W)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, IMAGE_H)
    other = torch.rand(num, generator=g) < 0.3
    labels = torch.where(other, torch.randint(0, num_classes, (num,), generator=g), obj_label[k])
    scores = 0.05 + 0.95 * torch.rand(num, generator=g)
    ok = (boxes[:, 2] > boxes[:, 0] + 1) & (boxes[:, 3] > boxes[:, 1] + 1)
    return boxes[ok], scores[ok], labels[ok]


def nms_then_vote_loop(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                       iou_thr: float = 0.6, sigma: float = 0.025) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard NMS, then score voting kept box by kept box (per class, IoU > 0.01 voters)."""
    keep = batched_nms(boxes, scores, labels, iou_thr)
    voted = boxes[keep].clone()
    for c in labels[keep].unique().tolist():
        cand = labels == c
        cand_boxes, cand_scores = boxes[cand], scores[cand]
        dets = (labels[keep] == c).nonzero().squeeze(1)
        ious_all = box_iou(voted[dets], cand_boxes)  # one matrix per class, as mmdetection
        for row, k in enumerate(dets.tolist()):
            ious = ious_all[row]
            near = ious > 0.01
            w = torch.exp(-(1 - ious[near]).square() / sigma) * cand_scores[near]
            voted[k] = (w[:, None] * cand_boxes[near]).sum(0) / w.sum()
    return voted, scores[keep]


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def gfl_r50_ms(iters: int) -> float:
    from locdistill.config import ModelConfig, TestConfig
    from locdistill.models import build_detector
    from locdistill.models.postprocess import postprocess

    model = build_detector(ModelConfig(num_classes=80)).eval()
    x = torch.randn(1, 3, 800, 1344)
    metas = [{"img_shape": (800, 1333), "scale_factor": (1.0, 1.0)}]

    def run():
        with torch.inference_mode():
            postprocess(model(x), metas, TestConfig(), model.strides, model.reg_max)

    run()  # warm-up
    return median_ms(run, iters)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per method (median)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--classes", type=int, nargs="+", default=[80, 5])
    ap.add_argument("--objects", type=int, default=20, help="objects per image the candidates gather on")
    ap.add_argument("--dense-all", action="store_true", help="time the N×N reference at every size")
    ap.add_argument("--r50-iters", type=int, default=2, help="timed GFL R-50 forwards (0: skip)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU, median of {args.repeats} runs")

    rows = []
    for num in args.sizes:
        for nc in args.classes:
            boxes, scores, labels = make_candidates(num, nc, args.objects, seed=num + nc)
            fast = lambda: voting_cluster_diou_nms(boxes, scores, labels, 0.6, max_num=100)  # noqa: E731
            hard = lambda: batched_nms(boxes, scores, labels, 0.6)[:100]  # noqa: E731
            loop = lambda: nms_then_vote_loop(boxes, scores, labels)  # noqa: E731
            dense = lambda: voting_cluster_diou_nms_dense(boxes, scores, labels, 0.6, max_num=100)  # noqa: E731
            with_dense = args.dense_all or num <= 2000
            fast(), hard(), loop()  # warm-up
            kept = len(voting_cluster_diou_nms(boxes, scores, labels, 0.6)[2])
            if with_dense:
                a, b = voting_cluster_diou_nms(boxes, scores, labels), voting_cluster_diou_nms_dense(boxes, scores, labels)
                assert torch.equal(a[2], b[2]), "fast path and N×N reference keep different boxes"
                torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-3)
            t = {"voting": [], "nms": [], "loop": [], "dense": []}
            for _ in range(args.repeats):  # interleaved, so background load hits all alike
                t["voting"].append(median_ms(fast, 1))
                t["nms"].append(median_ms(hard, 1))
                t["loop"].append(median_ms(loop, 1))
                if with_dense:
                    t["dense"].append(median_ms(dense, 1))
            m = {k: statistics.median(v) if v else float("nan") for k, v in t.items()}
            rows.append((len(scores), nc, kept, m))
            print(f"{len(scores):>5} cand {nc:>2} cls: kept {kept:>4} | voting {m['voting']:8.2f} ms | "
                  f"nms {m['nms']:7.2f} ms | loop {m['loop']:8.2f} ms | dense {m['dense']:8.2f} ms | "
                  f"loop/voting {m['loop'] / m['voting']:5.1f}x | voting/nms {m['voting'] / m['nms']:5.1f}x",
                  flush=True)

    print("\n| candidates | classes | kept (before top 100) | voting Cluster-DIoU (ms) | batched_nms (ms) | "
          "NMS + voting loop (ms) | N×N reference (ms) | loop / voting | voting / batched_nms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, nc, kept, m in rows:
        dense = "-" if m["dense"] != m["dense"] else f"{m['dense']:.1f}"
        print(f"| {n} | {nc} | {kept} | {m['voting']:.2f} | {m['nms']:.2f} | {m['loop']:.1f} | {dense} | "
              f"**{m['loop'] / m['voting']:.1f}×** | {m['voting'] / m['nms']:.1f}× |")
    if args.r50_iters > 0:
        r50 = gfl_r50_ms(args.r50_iters)
        at_1k = [m["voting"] for n, _, _, m in rows if n <= 1000]
        worst = max(at_1k) if at_1k else float("nan")
        print(f"\nGFL R-50 inference, one 800x1333 image: {r50:.0f} ms; voting NMS at ~1,000 candidates "
              f"(slowest class count): {worst:.2f} ms = {100 * worst / r50:.2f} % of it (target <= 10 %)")


if __name__ == "__main__":
    main()
