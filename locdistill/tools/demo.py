"""``locdistill demo``: the main job on the bundled digits data, start to finish on a CPU.

1. the shipped R-34 teacher (``data/assets/digits_teacher.pth``) is evaluated;
2. the R-18 student is trained alone (the GFL baseline);
3. the same student is distilled from the teacher (same seed, same schedule) with the recipe
   measured best on this setting, ``crosshead_full`` (cross-head LD + the LD paper's full recipe;
   docs/distillation.md "Recipes");
4. one table compares the three: AP, AP50, AP75, AR100, train time.

With two or more CPU threads, steps 2 and 3 run side by side: the baseline in a
background process (its log in ``WORK_DIR/student.log``) with half of the threads,
LD in this process with the rest. On a CPU two single-threaded trainings of these
small models finish sooner than the same two one after the other with two threads
each (``--sequential`` turns this off). If the shipped teacher is missing (or
``--train-teacher``), it is trained first.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from ..config import load_config
from ..data.loader import build_dataset
from ..engine.device import select_device
from ..engine.evaluate import test
from ..engine.logging import format_duration, info, metrics_table, overall_status, print_table, warn
from ..engine.train import fit

STUDENT_CONFIG = "demo/gfl_r18_digits"
TEACHER_CONFIG = "demo/gfl_r34_digits_teacher"
LD_CONFIG = "demo/crosshead_full_r34_r18_digits"  # main LD alone: demo/ld_r34_r18_digits
BUNDLED_TEACHER = Path(__file__).resolve().parents[1] / "data" / "assets" / "digits_teacher.pth"


def quick_overrides() -> list[str]:
    """A smoke-test sized run (seconds, not minutes)."""
    return ["data.digits_train=64", "data.digits_val=32", "train.epochs=1", "train.warmup_iters=5",
            "data.batch_size=8", "train.log_interval=2"]


def evaluate_checkpoint(config: str, checkpoint: Path, overrides: list[str], data_from: str = STUDENT_CONFIG) -> dict:
    """COCO metrics of ``checkpoint`` (built from ``config``) on the digits val split of
    ``data_from``'s data section (the teacher is scored on the student's val images)."""
    cfg = load_config(config, overrides)
    cfg.data = load_config(data_from, overrides).data
    val = build_dataset(cfg.data, "val")
    metrics, _ = test(cfg, checkpoint, val, select_device(cfg.train.device))
    return metrics


class BackgroundRun:
    """``locdistill train CONFIG`` in a child process with ``threads`` CPU threads, output to a log file."""

    def __init__(self, config: str, work_dir: Path, overrides: list[str], threads: int):
        self.work_dir = work_dir
        self.log = work_dir.parent / f"{work_dir.name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.wall0 = time.time()
        self.ended: float | None = None  # perf_counter() when the child exited
        self.wall_end = 0.0
        self._progress = (0.0, 0)  # (when read, last train iteration in its metrics.jsonl)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self.command(config, work_dir, overrides), stdout=log,
                                         stderr=subprocess.STDOUT, env=env)
        self._waiter = threading.Thread(target=self._wait, daemon=True)  # its own end, not when we ask
        self._waiter.start()

    @staticmethod
    def command(config: str, work_dir: Path, overrides: list[str]) -> list[str]:
        cmd = [sys.executable, "-m", "locdistill", "train", config, "--work-dir", str(work_dir)]
        return cmd + ["--set", *overrides] if overrides else cmd

    def _wait(self) -> None:
        self.proc.wait()
        self.wall_end = time.time()
        self.ended = time.perf_counter()

    def running(self) -> bool:
        return self.ended is None

    def fraction(self, total_iters: int) -> float:
        """How much of its ``total_iters`` iterations the run has done, from its metrics.jsonl (read every 5 s)."""
        if not self.running():
            return 1.0
        when, it = self._progress
        if time.perf_counter() - when > 5:
            path = self.work_dir / "metrics.jsonl"
            for line in reversed(path.read_text().splitlines() if path.is_file() else []):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # being written
                    continue
                if rec.get("mode") == "train" and rec.get("time", 0) >= self.wall0:  # not an earlier run's
                    it = rec["iter"]
                    break
            self._progress = (time.perf_counter(), it)
        return min(1.0, it / max(total_iters, 1))

    def result(self) -> dict:
        """Wait for the run; ``{"metrics", "checkpoint", "train_time"}`` like :func:`~locdistill.engine.train.fit`."""
        self._waiter.join()
        rc = self.proc.returncode
        if rc != 0:
            tail = "".join(self.log.read_text(errors="replace").splitlines(keepends=True)[-15:])
            raise RuntimeError(f"the background baseline run failed (exit {rc}); last lines of {self.log}:\n{tail}")
        records = [json.loads(line) for line in (self.work_dir / "metrics.jsonl").read_text().splitlines() if line]
        metrics = [r for r in records if r.get("mode") == "val"][-1]
        metrics = {k: v for k, v in metrics.items() if k not in ("mode", "epoch", "iter", "time")}
        epochs = sorted(self.work_dir.glob("epoch_*.pth"), key=lambda f: int(f.stem.split("_")[1]))
        checkpoint = epochs[-1] if epochs else self.work_dir / "latest.pth"  # the file fit() would name
        return {"metrics": metrics, "checkpoint": checkpoint, "train_time": self.train_time()}

    def train_time(self) -> float:
        """Seconds from the child's start of training (it writes ``config.json`` then; else from its
        launch) to its exit: its own time, however long the demo took to ask."""
        snapshot = self.work_dir / "config.json"
        start = snapshot.stat().st_mtime if snapshot.is_file() else 0.0
        return self.wall_end - max(start, self.wall0)

    def status(self) -> str:
        """What the demo says once its own training is done."""
        if self.running():
            return f"waiting for the baseline run (log: {self.log}) ..."
        return f"the baseline run had finished {format_duration(time.perf_counter() - self.ended)} earlier"

    def kill(self) -> None:
        if self.running():
            self.proc.terminate()
            self._waiter.join()


class DemoETA:
    """The demo's line under the training progress (:func:`~locdistill.engine.logging.overall_status`):
    time since the demo started and an estimate of the time left for the student trainings."""

    def __init__(self, t0: float, background: BackgroundRun | None = None):
        self.t0, self.background = t0, background
        self.start(runs_after=0)

    def start(self, runs_after: int) -> None:
        """A foreground training starts now; ``runs_after`` more of the same length follow it."""
        self.t_run, self.runs_after = time.perf_counter(), runs_after

    def __call__(self, done: int, total: int) -> str:
        now = time.perf_counter()
        p = done / max(total, 1)
        if self.background is not None:  # both students train side by side: the slower one decides
            p = min(p, self.background.fraction(total))
        took = now - self.t_run
        left = took * (1 - p) / p + self.runs_after * took / p if p >= 0.01 else None
        return f"demo: {format_duration(now - self.t0)} so far, about {format_duration(left)} to go"


def _set_value(v) -> str:
    """``v`` as ``--set`` reads it back (ast.literal_eval, else a bare string)."""
    if isinstance(v, str):
        try:
            ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
    return repr(v)


def reproduce_command(config: str, checkpoint: Path, overrides: list[str], data_from: str | None = None) -> str:
    """The ``locdistill test`` command that scores ``checkpoint`` as the demo did: with the demo's
    ``overrides`` and, for ``data_from``, the ``--set data.*`` items that give ``config`` its data."""
    items = list(overrides)
    if data_from is not None:
        mine, theirs = load_config(config, overrides).data, load_config(data_from, overrides).data
        for f in dataclasses.fields(theirs):
            v = getattr(theirs, f.name)
            if getattr(mine, f.name) != v:
                items.append(f"data.{f.name}={_set_value(v)}")
    return shlex.join(["locdistill", "test", config, str(checkpoint)] + (["--set", *items] if items else []))


def run_demo(work_dir: str | Path = "work_dirs/demo", quick: bool = False, train_teacher: bool = False,
             sequential: bool = False) -> dict:
    """Teacher vs student vs student + LD on digits; prints one table and, per row, the
    ``locdistill test`` command that scores it again.

    ``sequential=False`` trains the baseline in a background process next to the LD run
    when at least two CPU threads are available (see the module docstring).
    """
    work_dir = Path(work_dir)
    overrides = quick_overrides() if quick else []
    t0 = time.perf_counter()
    info(f"[bold]locdistill demo[/bold]: localization distillation on the bundled digits data → {work_dir}")
    rows = []

    teacher_ckpt = work_dir / "teacher.pth"  # a copy: the shipped file goes with a reinstall
    teacher_time = None
    if train_teacher or not BUNDLED_TEACHER.is_file():
        if not train_teacher:
            warn(f"shipped teacher {BUNDLED_TEACHER} not found: training the teacher first (slower)")
        out = fit(load_config(TEACHER_CONFIG, overrides), work_dir / "teacher")
        teacher_ckpt, teacher_time = Path(out["checkpoint"]), out["train_time"]
    else:
        work_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(BUNDLED_TEACHER, teacher_ckpt)
        info(f"teacher: {TEACHER_CONFIG} from the shipped checkpoint (copied to {teacher_ckpt})")
    # the teacher trains on other scenes; it is scored on the student's val split, like the students
    teacher_metrics = evaluate_checkpoint(TEACHER_CONFIG, teacher_ckpt, overrides)
    rows.append(("teacher R-34 (" + ("trained" if teacher_time else "shipped") + ")",
                 {**teacher_metrics, "train time (s)": teacher_time if teacher_time else "-"}))
    commands = [reproduce_command(TEACHER_CONFIG, teacher_ckpt, overrides, data_from=STUDENT_CONFIG)]

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
            with overall_status(DemoETA(t0, background)):
                ld_out = fit(load_config(LD_CONFIG, ld_over), work_dir / "student_ld")
            info(background.status())
            base_out = background.result()
        finally:
            background.kill()
            torch.set_num_threads(threads)
    else:
        eta = DemoETA(t0)
        with overall_status(eta):
            info(f"[bold]student baseline[/bold]: {STUDENT_CONFIG}")
            eta.start(runs_after=1)
            base_out = fit(load_config(STUDENT_CONFIG, overrides), work_dir / "student")
            info(f"[bold]student + LD[/bold]: {LD_CONFIG}")
            eta.start(runs_after=0)
            ld_out = fit(load_config(LD_CONFIG, ld_over), work_dir / "student_ld")
    rows.append(("student R-18", {**base_out["metrics"], "train time (s)": base_out["train_time"]}))
    commands.append(reproduce_command(STUDENT_CONFIG, base_out["checkpoint"], overrides))
    ld_cfg = load_config(LD_CONFIG)
    recipe = ld_cfg.distill.recipe(ld_cfg.model.num_classes)
    rows.append(("student R-18 + LD", {**ld_out["metrics"], "train time (s)": ld_out["train_time"]}))
    commands.append(reproduce_command(LD_CONFIG, ld_out["checkpoint"], overrides))

    print_table(metrics_table(rows, title="locdistill demo: digits val (COCO bbox, ×100)",
                              columns=("AP", "AP50", "AP75", "AR100"), extra=("train time (s)",)))
    gain = 100 * (rows[2][1]["AP"] - rows[1][1]["AP"])
    info(f"LD gain over the baseline (recipe {recipe}): {gain:+.1f} AP (same student, seed and schedule; "
         "seed-to-seed spread is in docs/benchmarks.md)")
    if not quick and gain < 0.5:
        warn("LD gained less than 0.5 AP here, below what docs/benchmarks.md measured over seeds "
             "('The gain of LD on digits'); check the teacher row and the two training logs")
    info("score each row again (config, checkpoint and the data it was scored on):")
    for (name, _), cmd in zip(rows, commands):
        info(f"  {name}:")
        info(f"    {cmd}", raw=True)
    info(f"total time: {time.perf_counter() - t0:.0f} s on {torch.get_num_threads()} threads")
    return {"rows": rows, "commands": commands,
            "paths": {"teacher": teacher_ckpt, "student": base_out["checkpoint"], "student_ld": ld_out["checkpoint"]}}
