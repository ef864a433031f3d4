"""How much can LD give at most? Swap the student's boxes for the teacher's, region by region.

A thin wrapper of ``locdistill check-teacher`` (:mod:`locdistill.tools.check_teacher`), kept
for its command line. It evaluates the student with the teacher's box logits put in at its
ATSS positives (the main LD region), at the VLR, at both and everywhere, the teacher's
class logits with the student's boxes, and the teacher alone; then compares the teacher's
and the student's boxes at the positives and gives a verdict. AP(positives) − AP(student)
is the headroom of main-region LD: if it is small, no LD recipe can help.

    python benchmarks/ld_headroom.py demo/gfl_r18_digits work_dirs/demo/student/latest.pth \\
        demo/gfl_r34_digits_teacher locdistill/data/assets/digits_teacher.pth
    python benchmarks/ld_headroom.py ... --split train   # the training images (and their labels)

``--set`` overrides the student's config (data, model, test settings).
"""
from __future__ import annotations

import argparse

import torch

from locdistill.tools.check_teacher import check_teacher, format_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("student_config")
    ap.add_argument("student_checkpoint")
    ap.add_argument("teacher_config")
    ap.add_argument("teacher_checkpoint")
    ap.add_argument("--split", choices=("val", "train"), default="val",
                    help="train: the training images, without augmentation")
    ap.add_argument("--images", type=int, default=None, help="only the first N images")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", nargs="*", default=[], dest="overrides", help="overrides of the student config")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    check = check_teacher(args.student_config, args.student_checkpoint, args.teacher_config,
                          args.teacher_checkpoint, split=args.split, images=args.images, overrides=args.overrides)
    print("\n" + "\n".join(format_report(check)), flush=True)


if __name__ == "__main__":
    main()
