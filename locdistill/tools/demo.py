"""``locdistill demo``: the main job on the bundled digits data, start to finish on a CPU.

1. the shipped R-34 teacher (``data/assets/digits_teacher.pth``) is evaluated;
2. the R-18 student is trained alone (the GFL baseline);
3. the same student is trained with LD from the teacher (same seed, same schedule);
4. one table compares the three: AP, AP50, AP75, AR100, train time.

With two or more CPU threads, steps 2 and 3 run side by side: the baseline in a
background process (its log in ``WORK_DIR/student.log``) with half of the threads,
LD in this process with the rest. On a CPU two single-threaded trainings of these
small models finish sooner than the same two one after the other with two threads
each (``--sequential`` turns this off). If the shipped teacher is missing (or
``--train-teacher``), it is trained first.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..config import load_config
from ..engine.logging import info, metrics_table, print_table, warn

STUDENT_CONFIG = "demo/gfl_r18_digits"
TEACHER_CONFIG = "demo/gfl_r34_digits_teacher"
LD_CONFIG = "demo/ld_r34_r18_digits"
BUNDLED_TEACHER = Path(__file__).resolve().parents[1] / "data" / "assets" / "digits_teacher.pth"


def quick_overrides() -> list[str]:
    """A smoke-test sized run (seconds, not minutes)."""
    return ["data.digits_train=64", "data.digits_val=32", "train.epochs=1", "train.warmup_iters=5",
            "data.batch_size=8", "train.log_interval=2"]


def evaluate_checkpoint(config: str, checkpoint: Path, overrides: list[str], data_from: str = STUDENT_CONFIG) -> dict:
    """COCO metrics of ``checkpoint`` (built from ``config``) on the digits val split of
    ``data_from``'s data section (the teacher is scored on the student's val images)."""
    from ..checkpoint import load_checkpoint, load_model_weights
    from ..data.loader import build_dataloader, build_dataset
    from ..engine.evaluate import evaluate
    from ..engine.train import select_device
    from ..models.build import build_detector

    cfg = load_config(config, overrides)
    cfg.data = load_config(data_from, overrides).data
    val = build_dataset(cfg.data, "val")
    cfg.model.num_classes = len(val.classes)
    model = build_detector(cfg.model)
    load_model_weights(model, load_checkpoint(checkpoint), strict=True, source=str(checkpoint))
    device = select_device(cfg.train.device)
    loader = build_dataloader(val, cfg.data.batch_size, cfg.data.workers, shuffle=False)
    metrics, _ = evaluate(model.to(device), loader, cfg, val, device)
    return metrics


class BackgroundRun:
    """``locdistill train CONFIG`` in a child process with ``threads`` CPU threads, output to a log file."""

    def __init__(self, config: str, work_dir: Path, overrides: list[str], threads: int):
        self.work_dir = work_dir
        self.log = work_dir.parent / f"{work_dir.name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "locdistill", "train", config, "--work-dir", str(work_dir)]
        if overrides:
            cmd += ["--set", *overrides]
        self.t0 = time.perf_counter()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def result(self) -> dict:
        """Wait for the run; ``{"metrics", "checkpoint", "train_time"}`` like :func:`~locdistill.engine.train.fit`."""
        rc = self.proc.wait()
        elapsed = time.perf_counter() - self.t0
        if rc != 0:
            tail = "".join(self.log.read_text(errors="replace").splitlines(keepends=True)[-15:])
            raise RuntimeError(f"the background baseline run failed (exit {rc}); last lines of {self.log}:\n{tail}")
        records = [json.loads(line) for line in (self.work_dir / "metrics.jsonl").read_text().splitlines() if line]
        metrics = [r for r in records if r.get("mode") == "val"][-1]
        metrics = {k: v for k, v in metrics.items() if k not in ("mode", "epoch", "iter", "time")}
        epochs = sorted(self.work_dir.glob("epoch_*.pth"), key=lambda f: int(f.stem.split("_")[1]))
        checkpoint = epochs[-1] if epochs else self.work_dir / "latest.pth"  # the file fit() would name
        return {"metrics": metrics, "checkpoint": checkpoint, "train_time": elapsed}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


def run_demo(work_dir: str | Path = "work_dirs/demo", quick: bool = False, train_teacher: bool = False,
             sequential: bool = False) -> dict:
    """Teacher vs student vs student + LD on digits; prints one table and the checkpoint paths.

    ``sequential=False`` trains the baseline in a background process next to the LD run
    when at least two CPU threads are available (see the module docstring).
    """
    from ..engine.train import fit

    work_dir = Path(work_dir)
    overrides = quick_overrides() if quick else []
    t0 = time.perf_counter()
    info(f"[bold]locdistill demo[/bold]: localization distillation on the bundled digits data → {work_dir}")
    rows, paths = [], {}

    teacher_ckpt = BUNDLED_TEACHER
    teacher_time = None
    if train_teacher or not BUNDLED_TEACHER.is_file():
        if not train_teacher:
            warn(f"shipped teacher {BUNDLED_TEACHER} not found: training the teacher first (slower)")
        out = fit(load_config(TEACHER_CONFIG, overrides), work_dir / "teacher")
        teacher_ckpt, teacher_time = Path(out["checkpoint"]), out["train_time"]
    else:
        info(f"teacher: {TEACHER_CONFIG} from the shipped checkpoint {teacher_ckpt}")
    # the teacher trains on other scenes; it is scored on the student's val split, like the students
    teacher_metrics = evaluate_checkpoint(TEACHER_CONFIG, teacher_ckpt, overrides)
    rows.append(("teacher R-34 (" + ("trained" if teacher_time else "shipped") + ")",
                 {**teacher_metrics, "train time (s)": teacher_time if teacher_time else "-"}))
    paths["teacher"] = teacher_ckpt

    ld_over = overrides + [f"distill.teacher_checkpoint={teacher_ckpt}"]
    threads = torch.get_num_threads()
    cfg_device = load_config(STUDENT_CONFIG, overrides).train.device
    if not sequential and threads >= 2 and cfg_device == "cpu":
        background = BackgroundRun(STUDENT_CONFIG, work_dir / "student", overrides, threads // 2)
        torch.set_num_threads(threads - threads // 2)
        info(f"[bold]student baseline[/bold]: {STUDENT_CONFIG}, in a background process with {threads // 2} "
             f"thread(s) (log: {background.log})")
        info(f"[bold]student + LD[/bold]: {LD_CONFIG}, here with {threads - threads // 2} thread(s)")
        try:
            ld_out = fit(load_config(LD_CONFIG, ld_over), work_dir / "student_ld")
            info("waiting for the baseline run ...")
            base_out = background.result()
        finally:
            background.kill()
            torch.set_num_threads(threads)
    else:
        info(f"[bold]student baseline[/bold]: {STUDENT_CONFIG}")
        base_out = fit(load_config(STUDENT_CONFIG, overrides), work_dir / "student")
        info(f"[bold]student + LD[/bold]: {LD_CONFIG}")
        ld_out = fit(load_config(LD_CONFIG, ld_over), work_dir / "student_ld")
    rows.append(("student R-18", {**base_out["metrics"], "train time (s)": base_out["train_time"]}))
    paths["student"] = base_out["checkpoint"]
    rows.append(("student R-18 + LD", {**ld_out["metrics"], "train time (s)": ld_out["train_time"]}))
    paths["student_ld"] = ld_out["checkpoint"]

    print_table(metrics_table(rows, title="locdistill demo: digits val (COCO bbox, ×100)",
                              columns=("AP", "AP50", "AP75", "AR100"), extra=("train time (s)",)))
    gain = 100 * (rows[2][1]["AP"] - rows[1][1]["AP"])
    info(f"LD gain over the baseline: {gain:+.1f} AP (same student, seed and schedule; "
         "seed-to-seed spread is in docs/benchmarks.md)")
    if not quick and gain < 0.5:
        warn("LD gained less than 0.5 AP here, below what docs/benchmarks.md measured over seeds "
             "('The gain of LD on digits'); check the teacher row and the two training logs")
    for k, p in paths.items():
        info(f"{k:>10}: {p}")
    info(f"total time: {time.perf_counter() - t0:.0f} s on {torch.get_num_threads()} threads")
    return {"rows": rows, "paths": paths}
