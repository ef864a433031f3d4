"""``locdistill demo``: the main job on the bundled digits data, start to finish on a CPU."""
from __future__ import annotations

import time
from pathlib import Path

from ..config import load_config
from ..engine.logging import info, metrics_table, print_table

DEMO_CONFIG = "demo/gfl_r18_digits"


def quick_overrides() -> list[str]:
    """A smoke-test sized run (seconds, not minutes)."""
    return ["data.digits_train=64", "data.digits_val=32", "train.epochs=1", "train.warmup_iters=5",
            "data.batch_size=8", "train.log_interval=2"]


def run_demo(work_dir: str | Path = "work_dirs/demo", quick: bool = False) -> dict:
    """Train and evaluate the digits GFL baseline; print one metrics table with train time."""
    from ..engine.train import fit

    work_dir = Path(work_dir)
    overrides = quick_overrides() if quick else []
    cfg = load_config(DEMO_CONFIG, overrides)
    info(f"[bold]locdistill demo[/bold]: GFL baseline on the bundled digits data → {work_dir}")
    t0 = time.perf_counter()
    out = fit(cfg, work_dir / "gfl_r18_digits")
    rows = [(cfg.name, {**out["metrics"], "train time (s)": out["train_time"]})]
    print_table(metrics_table(rows, title="locdistill demo: digits val (COCO bbox)",
                              columns=("AP", "AP50", "AP75", "AR100"), extra=("train time (s)",)))
    info(f"checkpoint: {out['checkpoint']}")
    info(f"total time: {time.perf_counter() - t0:.0f} s")
    return out
