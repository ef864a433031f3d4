"""``locdistill plot WORK_DIR``: loss terms, learning rate and AP of a run in one PNG.

Reads ``WORK_DIR/metrics.jsonl`` (one JSON object per line: ``mode="train"`` records
with ``iter``, ``lr`` and ``loss*`` terms, ``mode="val"`` records with ``iter``,
``epoch`` and COCO ``AP``...) and draws three panels over the training iteration:
every loss term (log scale when positive), the learning rate, and the validation
AP / AP50 / AP75 (×100). Uses matplotlib's non-interactive Agg backend.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..errors import LocDistillError

AP_KEYS = ("AP", "AP50", "AP75", "mAP")  # COCO keys, and the VOC evaluator's headline


def read_metrics(work_dir: str | os.PathLike) -> list[dict]:
    """Records of ``work_dir/metrics.jsonl`` (a line cut by a crash is skipped)."""
    path = Path(work_dir) / "metrics.jsonl"
    if Path(work_dir).is_file() and Path(work_dir).suffix == ".jsonl":
        path = Path(work_dir)
    if not path.is_file():
        raise LocDistillError(f"{path} does not exist: pass the work dir of a training run "
                              "(locdistill train writes metrics.jsonl there)")
    records = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    if not records:
        raise LocDistillError(f"{path} holds no records yet; plot again after the first log interval")
    return records


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None  # non-finite values are logged as strings
    return float(v) if math.isfinite(v) else None


def plot_metrics(work_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw the run's curves into ``out`` (default ``WORK_DIR/metrics.png``); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(work_dir)
    out = Path(out) if out else Path(work_dir) / "metrics.png"
    train = [r for r in records if r.get("mode") == "train" and _number(r.get("iter")) is not None]
    val = [r for r in records if r.get("mode") == "val" and _number(r.get("iter")) is not None]
    loss_keys = sorted({k for r in train for k in r if k.startswith("loss") and _number(r[k]) is not None},
                       key=lambda k: (k != "loss", k))

    fig, (ax_loss, ax_lr, ax_ap) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    for k in loss_keys:
        pts = [(r["iter"], _number(r.get(k))) for r in train if _number(r.get(k)) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax_loss.plot(xs, ys, label=k, linewidth=2.0 if k == "loss" else 1.2)
    if loss_keys:
        values = [_number(r.get(k)) for r in train for k in loss_keys if _number(r.get(k)) is not None]
        if values and min(values) > 0:
            ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=8, ncol=2)
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(f"{Path(work_dir).name}: training losses")
    ax_loss.grid(alpha=0.3)

    lr_pts = [(r["iter"], _number(r.get("lr"))) for r in train if _number(r.get("lr")) is not None]
    if lr_pts:
        xs, ys = zip(*lr_pts)
        ax_lr.plot(xs, ys, color="tab:purple")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)

    for k in AP_KEYS:
        pts = [(r["iter"], 100 * _number(r.get(k))) for r in val if _number(r.get(k)) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax_ap.plot(xs, ys, marker="o", label=k)
    if val:
        ax_ap.legend(fontsize=8)
    else:
        ax_ap.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=ax_ap.transAxes)
    ax_ap.set_ylabel("val AP (%)")
    ax_ap.set_xlabel("iteration")
    ax_ap.grid(alpha=0.3)

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out
