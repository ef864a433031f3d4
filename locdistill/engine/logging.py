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

from .dist import is_main_process

console = Console(stderr=False, highlight=False)

COCO_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def progress_enabled() -> bool:
    """Progress bars on rank 0 only, unless LOCDISTILL_NO_PROGRESS is set (tests, CI logs)."""
    return not os.environ.get("LOCDISTILL_NO_PROGRESS") and is_main_process()


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
    """Appends one JSON object per line to ``work_dir/metrics.jsonl`` (and TensorBoard if asked).

    ``tensorboard=True`` also writes events to ``work_dir/tb`` when the ``tensorboard``
    package is importable, and is silently skipped otherwise. ``work_dir=None`` logs
    nothing (the non-main ranks of a distributed run).
    """

    def __init__(self, work_dir: str | os.PathLike | None, tensorboard: bool = False,
                 purge_step: int | None = None):
        self.path = Path(work_dir) / "metrics.jsonl" if work_dir else None
        self.tb = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    # purge_step: a resumed run drops the events the interrupted one logged after its checkpoint
                    self.tb = SummaryWriter(str(self.path.parent / "tb"), purge_step=purge_step)
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

    def truncate_after(self, iteration: int, epoch: int) -> int:
        """Drop records logged after ``iteration`` / ``epoch`` (a run resumed from an earlier
        checkpoint rewrites them); returns how many were dropped. The file is replaced atomically."""
        if self.path is None or not self.path.is_file():
            return 0
        keep, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash
                dropped += 1
                continue
            late = rec.get("iter", 0) > iteration or (rec.get("mode") == "val" and rec.get("epoch", 0) > epoch)
            if late:
                dropped += 1
            else:
                keep.append(line)
        if dropped:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            os.replace(tmp, self.path)
        return dropped

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def format_ap(v: float | None) -> str:
    """An AP-like value as a percentage with one decimal; '-' when missing, 'n/a' when undefined
    (pycocotools reports -1 for a metric with no ground truth of that kind, e.g. no small objects)."""
    if v is None:
        return "-"
    v = float(v)
    if not math.isfinite(v) or v < 0:
        return "n/a"
    return f"{100 * v:.1f}"


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
            cells.append(format_ap(m.get(c)))
        for c in extra:
            v = m.get(c)
            cells.append("-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v)))
        t.add_row(name, *cells)
    return t


def print_table(table: Table) -> None:
    if is_main_process():
        console.print(table)


def info(msg: str) -> None:
    """Print on rank 0 only (every rank runs the same code)."""
    if is_main_process():
        console.print(msg)


def warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {msg}")


def is_tty() -> bool:
    return sys.stdout.isatty()
