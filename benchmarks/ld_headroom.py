"""How much can LD give at most? Swap the student's boxes for the teacher's, region by region.

LD teaches the student's box distributions; its ceiling is a student whose class scores
are its own but whose box logits equal the teacher's. This script evaluates, on the val
split of the student's config, the student with the teacher's box logits put in

  none      the student as it is
  positives the student's ATSS positives (the main LD region)
  vlr       the valuable localisation region (DESIGN §5; negatives near a GT)
  pos+vlr   both (what main LD + VLR-LD teach)
  all       every location
  teacher   the teacher alone (its own classes and boxes)

and, for the class side, the teacher's class logits with the student's boxes
("teacher cls"). AP(positives) − AP(none) is the headroom of main-region LD: if it is
small, the teacher's boxes are not better where it matters and no LD recipe can help.

    python benchmarks/ld_headroom.py demo/gfl_r18_digits work_dirs/demo/student/latest.pth \\
        demo/gfl_r34_digits_teacher locdistill/data/assets/digits_teacher.pth
    python benchmarks/ld_headroom.py ... --split train   # the same on the training images

The positives and the VLR come from the val (or train) annotations, as in training.
"""
from __future__ import annotations

import argparse

import torch

from locdistill.checkpoint import load_checkpoint, load_model_weights
from locdistill.config import load_config
from locdistill.data.loader import build_dataloader, build_dataset
from locdistill.engine.evaluate import image_metas
from locdistill.evaluation.coco import coco_evaluate, detections_to_coco
from locdistill.models.build import build_criterion, build_detector
from locdistill.postprocess import postprocess

REGIONS = ("none", "positives", "vlr", "pos+vlr", "all")


def load(config_name: str, checkpoint: str, num_classes: int) -> torch.nn.Module:
    cfg = load_config(config_name)
    cfg.model.num_classes = num_classes
    model = build_detector(cfg.model)
    load_model_weights(model, load_checkpoint(checkpoint), strict=True, source=checkpoint)
    return model.eval()


def mix_levels(student: list, teacher: list, mask: torch.Tensor) -> list:
    """Per level ``where(mask, teacher, student)``; ``mask [B, A]`` runs over the levels' locations."""
    out, start = [], 0
    for s, t in zip(student, teacher):
        b, _, h, w = s.shape
        m = mask[:, start:start + h * w].reshape(b, 1, h, w)
        out.append(torch.where(m, t, s))
        start += h * w
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("student_config")
    ap.add_argument("student_checkpoint")
    ap.add_argument("teacher_config")
    ap.add_argument("teacher_checkpoint")
    ap.add_argument("--split", choices=("val", "train"), default="val",
                    help="train: the training images, without augmentation")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", nargs="*", default=[], dest="overrides", help="overrides of the student config")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_config(args.student_config, args.overrides)
    if args.split == "train":  # the training images through the val pipeline
        if cfg.data.dataset == "digits":
            from locdistill.data.digits import ensure_digits

            d = cfg.data
            paths = ensure_digits(d.digits_root, d.digits_train, d.digits_val, d.digits_image_size, d.digits_seed)
            d.dataset, d.val_json, d.val_images = "coco", str(paths["train_json"]), str(paths["train_images"])
        elif cfg.data.dataset == "coco":
            cfg.data.val_json, cfg.data.val_images = cfg.data.train_json, cfg.data.train_images
        else:
            raise SystemExit("--split train supports digits and COCO-format data")
    val = build_dataset(cfg.data, "val")
    loader = build_dataloader(val, cfg.data.batch_size, 0, shuffle=False)
    classes = len(val.classes)
    student = load(args.student_config, args.student_checkpoint, classes)
    teacher = load(args.teacher_config, args.teacher_checkpoint, classes)
    cfg.model.num_classes = classes
    criterion = build_criterion(cfg)

    names = [*REGIONS, "teacher cls", "teacher"]
    detections: dict[str, list] = {n: [] for n in names}
    image_ids: list[int] = []
    with torch.no_grad():
        for images, targets in loader:
            s_out, t_out = student(images), teacher(images)
            gt = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
            tg = criterion.get_targets(s_out, gt, [t["pad_shape"] for t in targets])
            pos, vlr = tg.pos_mask, criterion.vlr_weights(tg) > 0
            masks = {"none": torch.zeros_like(pos), "positives": pos, "vlr": vlr, "pos+vlr": pos | vlr,
                     "all": torch.ones_like(pos)}
            outputs = {n: {"cls_logits": s_out["cls_logits"],
                           "box_logits": mix_levels(s_out["box_logits"], t_out["box_logits"], m)}
                       for n, m in masks.items()}
            outputs["teacher cls"] = {"cls_logits": t_out["cls_logits"], "box_logits": s_out["box_logits"]}
            outputs["teacher"] = t_out
            metas = image_metas(targets)
            for n, out in outputs.items():
                res = postprocess(out, metas, cfg.test, student.strides, student.reg_max)
                detections[n] += [{k: v.cpu() for k, v in r.items()} for r in res]
            image_ids += [int(t["image_id"]) for t in targets]

    print(f"\nstudent {args.student_checkpoint} / teacher {args.teacher_checkpoint}, {args.split} split "
          f"({len(image_ids)} images), COCO bbox ×100\n")
    print("| student with teacher boxes at | AP | AP50 | AP75 | APs | APm | AR100 | ΔAP |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    for n in names:
        results = detections_to_coco(detections[n], image_ids, val.cat_ids)
        m = coco_evaluate(val.coco_gt() if hasattr(val, "coco_gt") else val.json_path, results,
                          cat_ids=list(val.cat_ids), img_ids=image_ids)
        ap = 100 * m["AP"]
        base = ap if base is None else base
        label = {"teacher cls": "(teacher's class logits, student's boxes)",
                 "teacher": "(the teacher alone)"}.get(n, n)
        print(f"| {label} | {ap:.1f} | {100 * m['AP50']:.1f} | {100 * m['AP75']:.1f} | "
              f"{100 * m['APs']:.1f} | {100 * m['APm']:.1f} | {100 * m['AR100']:.1f} | {ap - base:+.1f} |", flush=True)


if __name__ == "__main__":
    main()
