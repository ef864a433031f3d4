"""Cost of an LD training step against its parts, measured in one process.

R-50 teacher (eval, no autograd) and R-18 student, 80 classes, a batch of 2 synthetic
640×640 images with 7 GT boxes each, CPU. Three measurements, interleaved so that
machine noise hits all of them alike (median of --iters):

- ``student``: one plain GFL training step of the student (forward, loss, backward, SGD step);
- ``teacher``: one teacher forward under ``torch.no_grad()``;
- ``ld``:      one Distiller step (student + teacher forward, GFL + LD + VLR + KD, backward, step).

Reports ``t(ld) / (t(student) + t(teacher))`` (target ≤ 1.05) and peak memory:
``peak(ld)`` against ``peak(student) + peak(teacher)`` (+10 % allowed), each measured as
the growth of the process's max RSS in a fresh subprocess (CPU) or
``torch.cuda.max_memory_allocated`` (CUDA).

    python benchmarks/bench_ld_overhead.py --iters 5 --threads 2

``--pair yolo`` measures the same three steps, with the same definitions and target, for the
YOLO family: a yolov8s teacher (``yolo/yolov8s_coco``'s model) → a yolov8n student
(``yolo/yolov8n_coco``), 80 classes, recipe ``ld`` (main-region LD on the TAL positives, 0.25 / T 10,
``per_image`` reduction, as ``yolo/ld_yolov8s_yolov8n_digits``)::

    python benchmarks/bench_ld_overhead.py --iters 5 --threads 2 --pair yolo
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locdistill.config import Config, DistillConfig, load_config  # noqa: E402
from locdistill.distill import Distiller, build_criterion  # noqa: E402
from locdistill.models.build import build_detector  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import synthetic_batch  # noqa: E402


#: per pair: (student, teacher, the student config's LD recipe and its changes, a label)
PAIRS = {
    # the LD code's full recipe: main LD + VLR + class KD (no cross-head terms)
    "gfl": ("r18", "r50", "full", {}, "R-50 teacher → R-18 student"),
    # as yolo/ld_yolov8s_yolov8n_digits: main-region LD on the TAL positives
    "yolo": ("yolov8n", "yolov8s", "ld", {"reduction": "per_image"}, "yolov8s teacher → yolov8n student"),
}


def model_config(name: str) -> Config:
    """``r18`` / ``r50``: the default GFL config with that backbone depth; ``yolov8<scale>``: its COCO config."""
    if name.startswith("yolov8"):
        return load_config(f"yolo/{name}_coco")
    cfg = Config()
    cfg.model.backbone.depth = int(name[1:])
    return cfg


def build(name: str) -> torch.nn.Module:
    return build_detector(model_config(name).model)


def make_criterion(distill: bool, pair: str = "gfl"):
    student, teacher, recipe, changes, _ = PAIRS[pair]
    cfg = model_config(student)
    if distill:
        teacher_config = f"yolo/{teacher}_coco" if teacher.startswith("yolov8") else ""
        cfg.distill = DistillConfig.from_recipe(recipe, teacher_config, num_classes=cfg.model.num_classes, **changes)
    return build_criterion(cfg, distill=distill)


class Runner:
    def __init__(self, h: int, w: int, batch: int, pair: str = "gfl"):
        torch.manual_seed(0)
        student, teacher = PAIRS[pair][:2]
        self.student = build(student).train()
        self.teacher = build(teacher).eval().requires_grad_(False)
        self.distiller = Distiller(build(student), self.teacher).train()
        self.distiller.student.load_state_dict(self.student.state_dict())
        self.crit = make_criterion(False, pair)
        self.crit_ld = make_criterion(True, pair)
        self.opt_s = torch.optim.SGD([p for p in self.student.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
        self.opt_d = torch.optim.SGD([p for p in self.distiller.parameters() if p.requires_grad], lr=1e-3,
                                     momentum=0.9)
        gen = torch.Generator().manual_seed(0)
        self.images, self.targets = synthetic_batch(batch, h, w, 7, 80, gen)
        self.sizes = [t["pad_shape"] for t in self.targets]

    def student_step(self) -> None:
        out = self.student(self.images)
        loss = sum(self.crit(out, self.targets, image_sizes=self.sizes).values())
        self.opt_s.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_s.step()

    def teacher_forward(self) -> None:
        with torch.no_grad():
            self.teacher(self.images)

    def ld_step(self) -> None:
        out, t_out = self.distiller(self.images)
        loss = sum(self.crit_ld(out, self.targets, teacher_outputs=t_out, image_sizes=self.sizes).values())
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()


def _child(kind: str, h: int, w: int, batch: int, threads: int, pair: str = "gfl") -> None:
    """In a fresh process: build only what ``kind`` needs, then print the RSS growth of one step."""
    import os

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    images, targets = synthetic_batch(batch, h, w, 7, 80, gen)
    sizes = [t["pad_shape"] for t in targets]
    student, teacher = PAIRS[pair][:2]
    if kind == "teacher":
        model = build(teacher).eval().requires_grad_(False)
    elif kind == "student":
        model, crit = build(student).train(), make_criterion(False, pair)
    else:
        model, crit = Distiller(build(student), build(teacher)).train(), make_criterion(True, pair)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9) if params else None
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as f:
        rss_before = int(f.read().split()[1]) * page
    if kind == "teacher":
        with torch.no_grad():
            model(images)
    else:
        out = model(images)
        out, t_out = out if isinstance(out, tuple) else (out, None)
        loss = sum(crit(out, targets, teacher_outputs=t_out, image_sizes=sizes).values())
        loss.backward()
        opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print((peak - rss_before) / 2**20)


def peak_child(kind: str, h: int, w: int, batch: int, threads: int, pair: str = "gfl") -> float:
    """Peak-RSS growth (MiB) of one ``kind`` step ("student", "teacher", "ld"), in a fresh process."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"import bench_ld_overhead as b; b._child({kind!r}, {h}, {w}, {batch}, {threads}, {pair!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--size", default="640x640")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--pair", default="gfl", choices=sorted(PAIRS),
                    help="gfl: R-50 → R-18, recipe full (default); yolo: yolov8s → yolov8n, recipe ld")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    r = Runner(h, w, args.batch, args.pair)
    times = {"student": [], "teacher": [], "ld": []}
    fns = {"student": r.student_step, "teacher": r.teacher_forward, "ld": r.ld_step}
    order = list(fns)
    for i in range(args.warmup + args.iters):
        for k in order[i % 3:] + order[: i % 3]:  # rotate who goes first
            t0 = time.perf_counter()
            fns[k]()
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times[k].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["ld"] / (med["student"] + med["teacher"])
    print(f"\nLD step overhead, {args.batch}×{h}×{w}, {PAIRS[args.pair][4]} (recipe {PAIRS[args.pair][2]}), "
          f"{args.threads} threads, "
          f"median of {args.iters}")
    print("| step | ms |")
    print("|---|---|")
    for k in ("student", "teacher", "ld"):
        print(f"| {k} | {1000 * med[k]:.0f} |")
    print(f"\nt(ld) / (t(student) + t(teacher)) = {ratio:.3f}  (target ≤ 1.05)")
    if not args.no_memory:
        peaks = {k: peak_child(k, h, w, args.batch, args.threads, args.pair) for k in ("student", "teacher", "ld")}
        mem_ratio = peaks["ld"] / (peaks["student"] + peaks["teacher"])
        print(f"peak RSS growth of one step (MiB): student {peaks['student']:.0f}, teacher forward "
              f"{peaks['teacher']:.0f}, LD {peaks['ld']:.0f}; LD / (student + teacher) = {mem_ratio:.3f} "
              "(target ≤ 1.10)")
    print(json.dumps({"ratio": ratio, **{f"ms_{k}": 1000 * v for k, v in med.items()}}))


if __name__ == "__main__":
    main()
