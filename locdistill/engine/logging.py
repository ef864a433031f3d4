"""Console output (rich), progress bars and the ``metrics.jsonl`` log."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=False, highlight=False)

COCO_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def progress_enabled() -> bool:
    """Progress bars unless LOCDISTILL_NO_PROGRESS is set (tests, CI logs)."""
    return not os.environ.get("LOCDISTILL_NO_PROGRESS")


def make_progress(transient: bool = False) -> Progress:
    """A rich progress bar with count, elapsed time, ETA and a free-text field ``info``."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=transient,
        disable=not progress_enabled(),
    )


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLogger:
    """Appends one JSON object per line to ``work_dir/metrics.jsonl`` (and TensorBoard if asked)."""

    def __init__(self, work_dir: str | os.PathLike | None, tensorboard: bool = False):
        self.path = Path(work_dir) / "metrics.jsonl" if work_dir else None
        self.tb = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(str(self.path.parent / "tb"))
                except Exception:  # tensorboard not installed
                    self.tb = None

    def log(self, record: Mapping[str, Any]) -> None:
        rec = {"time": round(time.time(), 3), **{k: _jsonable(v) for k, v in record.items()}}
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            step = rec.get("iter", 0)
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("iter", "epoch", "time"):
                    self.tb.add_scalar(f"{rec.get('mode', 'train')}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def metrics_table(rows: Iterable[tuple[str, Mapping[str, float]]], title: str = "COCO bbox",
                  columns: Iterable[str] = COCO_COLUMNS, extra: Iterable[str] = ()) -> Table:
    """A rich table, one row per (name, metrics); AP-like values shown ×100 with one decimal."""
    columns = list(columns)
    extra = list(extra)
    t = Table(title=title)
    t.add_column("model")
    for c in columns + extra:
        t.add_column(c, justify="right")
    for name, m in rows:
        cells = []
        for c in columns:
            v = m.get(c)
            cells.append("-" if v is None else f"{100 * v:.1f}")
        for c in extra:
            v = m.get(c)
            cells.append("-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v)))
        t.add_row(name, *cells)
    return t


def print_table(table: Table) -> None:
    console.print(table)


def info(msg: str) -> None:
    console.print(msg)


def warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {msg}")


def is_tty() -> bool:
    return sys.stdout.isatty()
