"""The gain of LD on the bundled digits data, measured over several seeds.

Variants, all on the same schedule as the demo (demo/gfl_r18_digits):
  baseline  the R-18 student alone
  ld        + main-region LD from the shipped R-34 teacher
  full      + main LD + VLR-LD (0.25) + class KD (T=2) with the paper's weight 10 scaled by
            C/80 to 1.25: our KD is a mean over classes, so 10 was set for COCO's 80 classes
            (each variant is a recipe, `distill.recipe=NAME`; docs/distillation.md "Recipes")
  ld_t1        main LD at T=1 (the KL of the distributions themselves, not of their tails)
  crosshead    cross-head LD (CrossKD's terms on the student's features run through the
               teacher's head; demo/crosshead_r34_r18_digits), no main LD
  crosshead_ld cross-head terms + main LD 0.25
  crosshead_full cross-head terms + the full recipe (main LD, VLR-LD 0.25, class KD 1.25)
Diagnostics (ask for them with --variants):
  ld_vlr    main LD + VLR-LD, no class KD
  full_w10  the full recipe with the unscaled KD weight 10 (8x stronger on 10 classes)
  ld_sum    main LD with reduction="sum" (16/3 x the per_image magnitude at 16 images per batch)

    python benchmarks/ld_gain.py --seeds 0 1 2 --out-dir work_dirs/ld_gain --jobs 2 --threads 1

YOLO family (--family yolo; docs/yolo.md, "Distillation"): a YOLOv8-n student on the same digits schedule
(yolo/yolov8n_digits), variants
  baseline    the YOLOv8-n student alone
  ld          + main-region LD (TAL positives) from a YOLOv8-s teacher (yolo/ld_yolov8s_yolov8n_digits),
              trained once by this script into OUT_DIR/teacher_yolov8s as the demo's GFL teacher is: other
              scenes, exact boxes, 16 epochs (yolo/yolov8s_digits_teacher)
  full        + VLR-LD on the family's substitute VLR + class KD (1.25), same teacher
  hetero_gfl  main LD from the shipped GFL R-34 teacher (yolo/ld_gfl_r34_yolov8n_digits; heterogeneous:
              P3-P5 matched, reg_max 16 -> 15, half-cell offset)
  hetero_gfl_full  the same with the full recipe (diagnostic)
  ld_same_data     main LD from a YOLOv8-s trained on the student's own data and schedule
                   (yolo/yolov8s_digits, into OUT_DIR/teacher_yolov8s_same; diagnostic)

    python benchmarks/ld_gain.py --family yolo --seeds 0 1 2 --out-dir work_dirs/ld_gain --jobs 2 --threads 1

Settings (--setting, GFL family) say where the teacher comes from; the students are the same:
  demo       the shipped R-34 teacher, trained on 2,000 other scenes with exact boxes
  same_data  the realistic case: an R-34 teacher trained on the student's own 2,000 scenes
             with the same noisy boxes (train.epochs 16), so on the student's training
             images it has seen every answer, and on val it is only a little better than
             the student. Trained once by this script into OUT_DIR/teacher_same_data.

Each run writes its work dir under --out-dir; runs whose final metrics exist are
reused (so the benchmark can be resumed or split across machines). Prints mean ± std
of AP, AP75 and AR100 per variant and the LD − baseline difference, as a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

LD = "demo/ld_r34_r18_digits"  # the demo student + the setting's teacher; each variant names its terms
VARIANTS = {
    "baseline": ("demo/gfl_r18_digits", []),
    "ld": (LD, ["distill.recipe=ld"]),
    "full": (LD, ["distill.recipe=full"]),
    "ld_t1": (LD, ["distill.recipe=ld", "distill.ld_temperature=1.0"]),
    "crosshead": ("demo/crosshead_r34_r18_digits", ["distill.recipe=crosshead"]),
    "crosshead_ld": ("demo/crosshead_r34_r18_digits", ["distill.recipe=crosshead_ld"]),
    "crosshead_full": ("demo/crosshead_r34_r18_digits", ["distill.recipe=crosshead_full"]),
    # diagnostics (not part of the default set)
    "ld_vlr": (LD, ["distill.recipe=full", "distill.kd_weight=0.0"]),
    "full_w10": (LD, ["distill.recipe=full", "distill.kd_weight=10.0"]),
    "ld_sum": (LD, ["distill.recipe=ld", "distill.reduction=sum"]),
}
DEFAULT_VARIANTS = ["baseline", "ld", "full"]
YOLO_LD = "yolo/ld_yolov8s_yolov8n_digits"
YOLO_HETERO = "yolo/ld_gfl_r34_yolov8n_digits"
# YOLO family: variant -> (config, overrides, teacher trained by this script or None = the config's own)
YOLO_VARIANTS = {
    "baseline": ("yolo/yolov8n_digits", [], None),
    "ld": (YOLO_LD, ["distill.recipe=ld"], "yolov8s"),
    "full": (YOLO_LD, ["distill.recipe=full"], "yolov8s"),
    "hetero_gfl": (YOLO_HETERO, ["distill.recipe=ld"], None),
    # diagnostics
    "hetero_gfl_full": (YOLO_HETERO, ["distill.recipe=full"], None),
    "ld_same_data": (YOLO_LD, ["distill.recipe=ld"], "yolov8s_same"),
}
YOLO_DEFAULT_VARIANTS = ["baseline", "ld", "full", "hetero_gfl"]
# the YOLO teachers this script trains (OUT_DIR/teacher_<name>): config, overrides
YOLO_TEACHERS = {"yolov8s": ("yolo/yolov8s_digits_teacher", []), "yolov8s_same": ("yolo/yolov8s_digits", [])}
# setting -> (teacher config, its overrides); None: the shipped teacher the LD configs name
SETTINGS = {
    "demo": None,
    "same_data": ("demo/gfl_r34_digits_teacher", ["data.digits_seed=0", "data.digits_box_noise=0.1"]),
}
KEYS = ("AP", "AP50", "AP75", "AR100")


def final_metrics(work_dir: Path) -> dict | None:
    path = work_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    vals = [json.loads(line) for line in path.read_text().splitlines() if '"mode": "val"' in line]
    cfg = json.loads((work_dir / "config.json").read_text())
    if not vals or vals[-1]["epoch"] != cfg["train"]["epochs"]:
        return None
    return vals[-1]


def run_name(setting: str, variant: str, seed: int, family: str = "gfl") -> str:
    """Work dir name of one run; the baseline has no teacher, so every setting shares it. YOLO runs: ``yolo_``."""
    prefix = "" if setting == "demo" or variant == "baseline" else f"{setting}_"
    return f"{'yolo_' if family == 'yolo' else ''}{prefix}{variant}_seed{seed}"


def train_teacher(out: Path, setting: str, teachers: dict = SETTINGS, overrides: tuple = ()) -> Path:
    """The setting's teacher checkpoint, trained into OUT_DIR/teacher_<setting> unless it is there."""
    config, extra = teachers[setting]
    wd = out / f"teacher_{setting}"
    if final_metrics(wd) is None:
        sets = [*extra, *overrides]
        cmd = [sys.executable, "-m", "locdistill", "train", config, "--work-dir", str(wd),
               *(["--set", *sets] if sets else [])]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=dict(os.environ, LOCDISTILL_NO_PROGRESS="1"), stdout=subprocess.DEVNULL)
    epochs = json.loads((wd / "config.json").read_text())["train"]["epochs"]
    return wd / f"epoch_{epochs}.pth"


def wait_one(running: list) -> list:
    """Wait until one of the ``running`` processes ends; raise if it failed. Returns the others."""
    while True:
        for proc in running:
            if proc.poll() is not None:
                if proc.returncode:
                    raise SystemExit(f"run failed (exit {proc.returncode}): {' '.join(proc.args)}")
                return [p for p in running if p is not proc]
        time.sleep(1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--family", default="gfl", choices=["gfl", "yolo"], help="the student's detector family")
    ap.add_argument("--variants", nargs="+", default=None,
                    help=f"GFL: {', '.join(VARIANTS)} (default {' '.join(DEFAULT_VARIANTS)}); YOLO: "
                         f"{', '.join(YOLO_VARIANTS)} (default {' '.join(YOLO_DEFAULT_VARIANTS)})")
    ap.add_argument("--teacher-set", nargs="*", default=[], dest="teacher_overrides",
                    help="extra overrides for the teachers this script trains (smoke tests)")
    ap.add_argument("--out-dir", default="work_dirs/ld_gain")
    ap.add_argument("--set", nargs="*", default=[], dest="overrides", help="extra overrides for every run")
    ap.add_argument("--threads", type=int, default=None, help="OMP/torch threads per run")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (e.g. --jobs 2 --threads 1 on 2 cores)")
    ap.add_argument("--setting", default="demo", choices=list(SETTINGS), help="where the teacher comes from")
    args = ap.parse_args()
    yolo = args.family == "yolo"
    table = YOLO_VARIANTS if yolo else {k: (c, e, "setting") for k, (c, e) in VARIANTS.items()}
    if args.variants is None:
        args.variants = YOLO_DEFAULT_VARIANTS if yolo else DEFAULT_VARIANTS
    bad = [v for v in args.variants if v not in table]
    if bad:
        ap.error(f"unknown {args.family} variant(s) {', '.join(bad)}; choose from {', '.join(table)}")
    if yolo and args.setting != "demo":
        ap.error("--setting applies to the GFL family; the YOLO teachers are named by the variants")
    out = Path(args.out_dir)
    env = dict(os.environ, LOCDISTILL_NO_PROGRESS="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    teachers = {}  # teacher key -> overrides naming its checkpoint
    if not yolo and SETTINGS[args.setting] is not None:
        teachers["setting"] = [f"distill.teacher_checkpoint={train_teacher(out, args.setting)}"]
    for variant in args.variants:
        key = table[variant][2]
        if yolo and key is not None and key not in teachers:
            ckpt = train_teacher(out, key, YOLO_TEACHERS, tuple(args.teacher_overrides))
            teachers[key] = [f"distill.teacher_checkpoint={ckpt}"]
    todo = []
    for variant in args.variants:
        config, extra, key = table[variant]
        for seed in args.seeds:
            wd = out / run_name(args.setting, variant, seed, args.family)
            if final_metrics(wd) is None:
                todo.append([sys.executable, "-m", "locdistill", "train", config, "--work-dir", str(wd), "--set",
                             f"train.seed={seed}", "train.eval_interval=0", *extra,
                             *(teachers.get(key, []) if variant != "baseline" else []), *args.overrides])
    running: list[subprocess.Popen] = []
    for cmd in todo:  # at most --jobs runs at a time; a failed run stops the benchmark
        while len(running) >= args.jobs:
            running = wait_one(running)
        print("+", " ".join(cmd), flush=True)
        running.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
    while running:
        running = wait_one(running)
    rows = {}
    for variant in args.variants:
        ms = [final_metrics(out / run_name(args.setting, variant, s, args.family)) for s in args.seeds]
        ms = [m for m in ms if m]
        rows[variant] = {k: [100 * m[k] for m in ms] for k in KEYS}
    print("\n| variant | runs | " + " | ".join(KEYS) + " |")
    print("|---|---|" + "---|" * len(KEYS))
    for variant, r in rows.items():
        cells = []
        for k in KEYS:
            v = r[k]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.1f} ± {sd:.1f}" if v else "-")
        print(f"| {variant} | {len(r['AP'])} | " + " | ".join(cells) + " |")
    if "baseline" in rows and rows["baseline"]["AP"]:
        base = statistics.mean(rows["baseline"]["AP"])
        for variant in rows:
            if variant != "baseline" and rows[variant]["AP"]:
                print(f"\n{variant} − baseline: {statistics.mean(rows[variant]['AP']) - base:+.2f} AP")


if __name__ == "__main__":
    main()
