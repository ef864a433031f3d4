"""Why does LD help or hurt a student? Per-term gradients on the shared features, and teacher vs student boxes.

For a student checkpoint (typically one trained *without* LD, at the point where LD would
act) and a teacher, on the training images (through the val pipeline, no augmentation) or
the val images, this prints

  1. the gradient norm of each loss term (QFL, GIoU, DFL, main LD, VLR-LD, class KD, with
     the weights and temperatures of LD_CONFIG) with respect to the FPN features, which
     both head towers share, and the cosine between each term's gradient and the sum of
     the ground-truth terms' (negative: the term pulls the shared features against the
     labels);
  2. at the student's ATSS positives: the mean IoU of the teacher's and of the student's
     decoded box with the annotated box, and the share of positives where the teacher's
     box is the better one (a teacher that memorised the training boxes wins almost
     everywhere on the training images, which says nothing about val).

    python benchmarks/ld_diagnose.py STUDENT_CKPT TEACHER_CKPT [--split train|val] \\
        [--student-config demo/gfl_r18_digits] [--teacher-config demo/gfl_r34_digits_teacher] \\
        [--ld-config demo/ld_r34_r18_digits] [--set distill.kd_weight=1.25 ...] [--images 256]
"""
from __future__ import annotations

import argparse
import math
from collections import defaultdict

import torch

from locdistill.boxes import bbox_overlaps
from locdistill.config import load_config
from locdistill.data.loader import build_dataloader
from locdistill.distill import build_criterion
from locdistill.tools.check_teacher import eval_dataset, load_detector

GT_TERMS = ("loss_cls", "loss_bbox", "loss_dfl")


def split_dataset(cfg, split: str):
    """The ``split`` images through the val pipeline (no augmentation). Digits training images come
    with their **exact** boxes (the dataset without ``digits_box_noise``): the truth that neither
    model was trained on, so teacher and student are compared where LD acts, against what is right."""
    if split == "train":
        cfg.data.digits_box_noise = 0.0
    return eval_dataset(cfg, split)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("student_checkpoint")
    ap.add_argument("teacher_checkpoint")
    ap.add_argument("--split", choices=("train", "val"), default="train")
    ap.add_argument("--student-config", default="demo/gfl_r18_digits")
    ap.add_argument("--teacher-config", default="demo/gfl_r34_digits_teacher")
    ap.add_argument("--ld-config", default="demo/ld_r34_r18_digits", help="weights and temperatures of the terms")
    ap.add_argument("--set", nargs="*", default=[], dest="overrides", help="overrides of the LD config")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_config(args.ld_config, args.overrides)
    if not cfg.distill.vlr_weight:
        cfg.distill.vlr_weight = 0.25  # measured even when the recipe leaves it off
    if not cfg.distill.kd_weight:
        cfg.distill.kd_weight = 1.25
    data = split_dataset(cfg, args.split)
    data = torch.utils.data.Subset(data, range(min(args.images, len(data))))
    classes = len(data.dataset.classes)
    cfg.model.num_classes = classes
    loader = build_dataloader(data, cfg.data.batch_size, 0, shuffle=False)
    student = load_detector("student", args.student_config, args.student_checkpoint, num_classes=classes)[1].train()
    teacher = load_detector("teacher", args.teacher_config, args.teacher_checkpoint, num_classes=classes)[1]
    criterion = build_criterion(cfg, distill=True)

    norms: dict[str, list] = defaultdict(list)
    cosines: dict[str, list] = defaultdict(list)
    iou_t, iou_s, n_pos = 0.0, 0.0, 0
    t_better = 0
    for images, targets in loader:
        gt = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        sizes = [t["pad_shape"] for t in targets]
        feats = [f.detach().requires_grad_(True) for f in student.extract_feat(images)]
        s_out = student.bbox_head(feats)
        with torch.no_grad():
            t_out = teacher(images)
        losses = criterion(s_out, gt, teacher_outputs=t_out, image_sizes=sizes)
        grads = {}
        for k, v in losses.items():
            g = torch.autograd.grad(v, feats, retain_graph=True, allow_unused=True)
            grads[k] = torch.cat([(x if x is not None else torch.zeros_like(f)).flatten() for x, f in zip(g, feats)])
        gt_grad = sum(grads[k] for k in GT_TERMS)
        for k, g in grads.items():
            norms[k].append(float(g.norm()))
            cosines[k].append(float(torch.nn.functional.cosine_similarity(g, gt_grad, dim=0)))
        with torch.no_grad():
            sd, td = criterion.flatten(s_out), criterion.flatten(t_out, "teacher")
            sa = criterion.assign(sd, gt, sizes)  # the assignment depends on the anchors and GTs only
            st, tt = criterion.box_targets(sd, sa), criterion.box_targets(td, sa)
            pos = sa.pos
            it = bbox_overlaps(tt.pred_boxes, st.target_boxes, is_aligned=True)[pos]
            is_ = bbox_overlaps(st.pred_boxes, st.target_boxes, is_aligned=True)[pos]
            iou_t += float(it.sum())
            iou_s += float(is_.sum())
            t_better += int((it > is_).sum())
            n_pos += int(pos.sum())

    d = cfg.distill
    print(f"\nstudent {args.student_checkpoint} / teacher {args.teacher_checkpoint}: {args.split} split, "
          f"{len(data)} images; LD T={d.ld_temperature} w={d.ld_weight}, VLR w={d.vlr_weight}, "
          f"KD w={d.kd_weight} T={d.kd_temperature}, reduction={d.reduction}\n")
    print("| term | |grad| on FPN features (mean over batches) | cosine with the GT terms' gradient |")
    print("|---|---|---|")
    for k in norms:
        print(f"| {k} | {sum(norms[k]) / len(norms[k]):.4g} | {sum(cosines[k]) / len(cosines[k]):+.3f} |")
    if n_pos:
        print(f"\npositives {n_pos}: IoU with the annotated box: teacher {iou_t / n_pos:.4f}, student "
              f"{iou_s / n_pos:.4f}; teacher's box better at {100 * t_better / n_pos:.1f} % of them")
    else:
        print(f"\nno positives ({math.nan})")


if __name__ == "__main__":
    main()
