"""Console output (rich), progress bars, the ``metrics.jsonl`` log and the training loop's
bookkeeping (:class:`StepMeter`: loss windows, non-finite tracking, skipped steps, timings)."""
from __future__ import annotations

import json
import math
import os
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from rich.console import Console
from rich.padding import Padding
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
import torch

from ..config import TrainConfig
from ..errors import TrainingError
from .dist import all_reduce_max, all_reduce_mean, all_reduce_min, is_main_process

if TYPE_CHECKING:
    from .resume import TrainState

console = Console(stderr=False, highlight=False)

COCO_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def progress_enabled() -> bool:
    """Progress bars on rank 0 only, unless LOCDISTILL_NO_PROGRESS is set (tests)."""
    return not os.environ.get("LOCDISTILL_NO_PROGRESS") and is_main_process()


def format_duration(seconds: float | None) -> str:
    """``0:41``, ``12:05``, ``1:02:03``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# fn(done, total) -> a line shown under training progress (the demo's overall ETA); see overall_status
_overall: Callable[[int, int], str | None] | None = None


@contextmanager
def overall_status(fn: Callable[[int, int], str | None]):
    """While active, training progress shows one more line, ``fn(done, total)``: ``done`` / ``total``
    are the iterations of the running training so far / in all its epochs."""
    global _overall
    _overall = fn
    try:
        yield
    finally:
        _overall = None


class _Progress(Progress):
    """Bar, count, elapsed time and ETA on one line that fits 80 columns; each task's ``info``
    (losses) on a line of its own, then the overall line (:func:`overall_status`).

    ``plain``: instead of a live display (which only a terminal redraws), print a plain line
    every 10% of a task or every 30 s, and at its end: for log files and CI logs.
    """

    def __init__(self, *columns, plain: bool = False, **kwargs):
        super().__init__(*columns, **kwargs)
        self.plain = plain
        self._said: dict = {}  # task id -> (completed, time) at the last plain line

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            if task.fields.get("info"):
                yield Padding(Text(task.fields["info"], style="dim"), (0, 0, 0, 2))
        line = self._overall_line()
        if line:
            yield Text(line)

    def _overall_line(self) -> str | None:
        runs = [t for t in self.tasks if "epochs" in t.fields and t.total]
        if _overall is None or not runs:
            return None
        t = runs[-1]
        return _overall(int(t.fields["epoch"] * t.total + t.completed), int(t.fields["epochs"] * t.total))

    def add_task(self, *args, **kwargs):
        task_id = super().add_task(*args, **kwargs)
        self._said[task_id] = (self._tasks[task_id].completed, self.get_time())
        return task_id

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        if self.plain:
            self._plain_line(self._tasks[task_id])

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        if self.plain:
            self._plain_line(self._tasks[task_id])

    def _plain_line(self, task) -> None:
        done, now = task.completed, self.get_time()
        last_done, last_time = self._said[task.id]
        step = max(1, math.ceil((task.total or 1) / 10))
        end = task.total is not None and done >= task.total
        if done <= last_done or not (end or done - last_done >= step or now - last_time >= 30):
            return
        self._said[task.id] = (done, now)
        total = "?" if task.total is None else f"{task.total:.0f}"
        line = (f"{task.description}  {done:.0f}/{total}  elapsed {format_duration(task.elapsed)}"
                f"  eta {format_duration(0 if end else task.time_remaining)}")
        extra = task.fields.get("info", "")
        if extra and len(line) + 2 + len(extra) <= 80:
            line, extra = f"{line}  {extra}", ""
        lines = [line] + textwrap.wrap(extra, 80, initial_indent="  ", subsequent_indent="  ")
        lines += [self._overall_line() or ""]
        self.console.print("\n".join(x for x in lines if x), markup=False, highlight=False, soft_wrap=True)


def make_progress(transient: bool = False, out: Console | None = None, **kwargs) -> Progress:
    """A progress display with count, elapsed time, ETA and a free-text field ``info`` (shown
    on its own line). Off a terminal, a lasting (not ``transient``) one prints plain lines
    now and then instead; nothing at all with LOCDISTILL_NO_PROGRESS. ``kwargs`` go to rich's
    Progress (e.g. ``get_time``); ``out``: the console (default: this module's)."""
    out = out or console
    enabled = progress_enabled()
    plain = enabled and not transient and not out.is_terminal
    return _Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=out,
        transient=transient,
        disable=not enabled or plain,
        plain=plain,
        **kwargs,
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


def info(msg: str, raw: bool = False) -> None:
    """Print on rank 0 only (every rank runs the same code). ``raw``: no markup and no line breaks
    added (a command or path to copy)."""
    if is_main_process():
        console.print(msg, markup=not raw, soft_wrap=raw)


def warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {msg}")


def is_tty() -> bool:
    return sys.stdout.isatty()


# ----------------------------------------------------------------------------- the training loop's bookkeeping


def _nonfinite_message(terms: list[str], iteration: int, state: TrainState) -> str:
    saved, then = state.checkpoint_note()
    return (f"non-finite loss ({', '.join(terms)}) at iteration {iteration} (epoch {state.epoch + 1}); {saved}. "
            "Lower the learning rate (--set train.lr=...), add gradient clipping (--set train.grad_clip=35.0), "
            "check the annotations for degenerate boxes, or skip such steps (--set train.skip_nonfinite=True); "
            f"then {then}, adding the fix.")


class StepMeter:
    """What ``train_one_epoch`` keeps track of besides training, for one epoch.

    Per step (:meth:`update`) the detached loss terms are added, on the device, to the
    epoch's sums and to a *window*, and the first iteration at which each term was
    non-finite is kept, also on the device. The host reads the window only every
    ``min(train.log_interval, 10)`` global iterations, at each multiple of
    ``train.log_interval`` and at the last batch (:meth:`step_done`; one all-reduce then
    under DDP): that read stops the run with a :class:`~locdistill.errors.TrainingError`
    on a non-finite loss, updates the progress text (:attr:`text`) and, at a log point,
    writes a ``metrics.jsonl`` record with the mean losses of the steps since the previous
    record. With ``train.skip_nonfinite`` :meth:`update` reads one flag per step instead
    (every rank takes the same decision) and counts the skipped steps in ``state.skipped``.
    Every rank calls the methods at the same iterations (they hold collectives).
    """

    NEVER = 2**62  # first_bad of a term that was never non-finite

    def __init__(self, train_cfg: TrainConfig, state: TrainState, logger: MetricsLogger | None,
                 device: torch.device):
        self.tcfg, self.state, self.logger, self.device = train_cfg, state, logger, device
        self.terms: list[str] = []  # loss names, fixed at the first step (the total, "loss", last)
        self.sums: dict[str, torch.Tensor] = {}  # over the applied steps of the epoch, on the device
        self.n_applied = 0
        self.window: dict[str, torch.Tensor] = {}  # since the last host read, on the device
        self.window_n = 0
        self.since_log: dict[str, float] = {}  # loss sums (host floats) since the last metrics.jsonl record
        self.since_log_n = 0
        self.first_bad: torch.Tensor | None = None  # [T] first non-finite iteration of each term (NEVER: none)
        self.show_every = min(train_cfg.log_interval, 10)
        self.text = ""  # the progress bar's loss line
        self.t0 = time.perf_counter()
        self.data_time = 0.0
        self.n_run = 0  # steps run in this call
        self._t_data = self.t0

    def wait_for_data(self) -> None:
        """The loop asks the loader for the next batch now (data time starts)."""
        self._t_data = time.perf_counter()

    def data_arrived(self) -> None:
        self.data_time += time.perf_counter() - self._t_data

    def update(self, losses: dict[str, torch.Tensor]) -> bool:
        """Track one step's detached losses (with their sum as ``"loss"``); False: skip this step
        (non-finite under ``train.skip_nonfinite``; counted), True: apply it (added to the sums)."""
        if not self.terms:
            self.terms = list(losses)
            self.first_bad = torch.full((len(self.terms),), self.NEVER, dtype=torch.int64, device=self.device)
        bad = ~torch.isfinite(torch.stack([losses[k].float() for k in self.terms]))  # [T]
        if self.tcfg.skip_nonfinite and bool(all_reduce_max(bad.any().to(torch.int32)).item()):
            self.state.skipped += 1
            return False
        self.first_bad = torch.where(bad & (self.first_bad == self.NEVER), self.state.iter + 1, self.first_bad)
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0) + v
            self.window[k] = self.window.get(k, 0) + v
        self.window_n += 1
        self.n_applied += 1
        return True

    def step_done(self, lr: float, last: bool) -> None:
        """After ``state.iter`` counted the step: read the window back when it is time (``last``:
        the epoch's last batch, always a log point). Logged before a Ctrl-C takes effect."""
        self.n_run += 1
        log_now = self.state.iter % self.tcfg.log_interval == 0 or last
        if log_now or self.state.iter % self.show_every == 0:
            self.text = self._read_window(lr, log_now) or self.text
            self.window, self.window_n = {}, 0

    def epoch_means(self) -> dict[str, float]:
        """The mean of each loss term over the applied steps run here, averaged over the ranks."""
        if not self.sums:
            return {}
        means = all_reduce_mean({k: v / max(self.n_applied, 1) for k, v in self.sums.items()})
        return {k: float(v) for k, v in means.items()}

    def _read_window(self, lr: float, log_now: bool) -> str:
        """Read the window's mean losses (means over ranks), stop on a non-finite one; at a log point,
        log the means since the last record. Returns the progress-bar text."""
        state, tcfg = self.state, self.tcfg
        data_time, iter_time = self.data_time / self.n_run, (time.perf_counter() - self.t0) / self.n_run
        if self.first_bad is not None:
            first = all_reduce_min(self.first_bad)
            if int(first.min()) < self.NEVER and not tcfg.skip_nonfinite:
                it = int(first.min())
                bad_terms = [k for k, f in zip(self.terms, first.tolist()) if f == it]
                bad_terms = [k for k in bad_terms if k != "loss"] or bad_terms
                err = TrainingError(_nonfinite_message(bad_terms, it, state))
                err.quiet = not is_main_process()  # every rank stops; one prints
                raise err
        record: dict[str, Any] = {"mode": "train", "epoch": state.epoch + 1, "iter": state.iter, "lr": lr}
        text = ""
        if self.window_n:
            vals = {k: float(v) / self.window_n for k, v in all_reduce_mean(self.window).items()}
            vals = {k: vals[k] for k in self.terms}  # the criterion's order, total first in the log
            text = " ".join(f"{k.replace('loss_', '')}={v:.3f}" for k, v in vals.items() if k != "loss")
            text = f"loss={vals['loss']:.3f} {text} lr={lr:.2e}"
            for k, v in vals.items():
                self.since_log[k] = self.since_log.get(k, 0.0) + v * self.window_n
            self.since_log_n += self.window_n
        if tcfg.skip_nonfinite and state.skipped:
            text += f" skipped={state.skipped}"
        if log_now and self.logger is not None:
            if self.since_log_n:
                means = {k: v / self.since_log_n for k, v in self.since_log.items()}
                record.update(loss=means.pop("loss"), **means)
            if tcfg.skip_nonfinite:
                record["skipped"] = state.skipped
            self.logger.log({**record, "data_time": data_time, "iter_time": iter_time})
            self.since_log, self.since_log_n = {}, 0
        return text
