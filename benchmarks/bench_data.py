"""Throughput of the training data pipeline vs decoding alone (issue 6).

On the bundled digits scenes (PNG files), measures images per second of

- ``decode``: ``dataset.load_image(i)`` in a loop (PIL decode → ``[3,H,W]`` uint8): the baseline;
- ``pipeline, W workers``: the training loader of ``locdistill.data.loader.build_dataloader``
  (decode + keep-ratio resize + random flip + normalise + pad/collate into batches, each
  image's randomness seeded per item) with W = 0, 1, 2 worker processes.

- ``decode + collate only``: the same loader with the transforms removed, which isolates
  the loader's own cost (worker hand-over, padding into a batch) from the transforms'.

Each pipeline epoch is timed after an untimed warm-up epoch (worker start-up excluded;
workers are persistent in training). The configurations alternate for ``--repeats``
rounds; ratios to decode-only are taken within a round and their median is reported,
which damps the noise of a shared machine. The CPU column is the CPU time of this
process plus its worker processes (from ``/proc``, Linux) per image: unlike images/s
it does not depend on how much of the machine other jobs take (when the cores are
saturated, images/s ~ 1 / CPU per image whatever the number of workers).
Target: the full pipeline at >= 70 % of decode-only throughput with each number of workers.

    python benchmarks/bench_data.py --images 512 --repeats 3
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locdistill.config import DataConfig  # noqa: E402
from locdistill.data.loader import build_dataloader, build_dataset, set_epoch  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and of its live child processes (the loaders' workers): the
    children's from ``/proc/<pid>/stat`` (Linux; elsewhere this process's only)."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    me = os.getpid()
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return total
    for pid in entries:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me:
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def decode_rate(dataset, n: int) -> tuple[float, float]:
    """(images/s, CPU ms per image) of decoding ``n`` images in this process."""
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        dataset.load_image(i % len(dataset))
    return n / (time.perf_counter() - t0), 1e3 * (time.process_time() - c0) / n


def pipeline_rate(loader, epoch: int) -> tuple[float, float]:
    """(images/s, CPU ms per image of all processes) of one epoch of ``loader`` (batches fully
    materialised)."""
    set_epoch(loader, epoch)
    n = 0
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    for images, targets in loader:
        n += images.shape[0]
    wall = time.perf_counter() - t0
    return n / wall, 1e3 * (cpu_seconds() - c0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=512, help="digits training images (generated once)")
    ap.add_argument("--image-size", type=int, default=160, help="side of the generated digits scenes")
    ap.add_argument("--img-scale", type=int, nargs=2, default=(160, 160), help="resize bound (long, short)")
    ap.add_argument("--short-range", type=int, nargs=2, default=(128, 192),
                    help="multi-scale short side drawn per image (so every image is resized)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    ap.add_argument("--root", default="", help="digits cache folder (default: a temp folder)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    root = args.root or os.path.join(tempfile.gettempdir(), "locdistill-bench-data")
    cfg = DataConfig(dataset="digits", digits_root=root, digits_train=args.images, digits_val=8,
                     digits_image_size=args.image_size, img_scale=tuple(args.img_scale),
                     train_short_range=tuple(args.short_range), flip_prob=0.5, workers=0)
    dataset = build_dataset(cfg, "train")
    n = len(dataset)
    bare = copy.copy(dataset)  # the same files without resize/flip/normalise: the loader's own cost
    bare.transforms = lambda image, target: (image, target)
    loaders = {f"pipeline, {w} worker{'s' if w != 1 else ''}": build_dataloader(dataset, args.batch, w, shuffle=True)
               for w in args.workers}
    w_max = max(args.workers)
    loaders[f"decode + collate only, {w_max} workers"] = build_dataloader(bare, args.batch, w_max, shuffle=True)
    for loader in loaders.values():  # warm-up: worker start-up, file cache
        pipeline_rate(loader, 0)
    decode_rate(dataset, n)

    rounds: dict[str, list[tuple[float, float]]] = {"decode only": []}
    load = []
    for r in range(args.repeats):
        rounds["decode only"].append(decode_rate(dataset, n))
        for name, loader in loaders.items():
            rounds.setdefault(name, []).append(pipeline_rate(loader, r + 1))
        load.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))

    base = [rate for rate, _ in rounds["decode only"]]
    print(f"{n} digits images of {args.image_size}x{args.image_size} (PNG), resize to short side "
          f"{args.short_range[0]}..{args.short_range[1]}, flip 0.5, batch {args.batch}, "
          f"{os.cpu_count()} CPU cores (1-min load average {min(load):.1f}-{max(load):.1f}), "
          f"torch {torch.__version__}, {args.repeats} alternating rounds\n")
    print("| stage | images/s (median) | images/s (best) | vs decode only (median of rounds) "
          "| CPU ms/image, all processes (median) |")
    print("|---|---|---|---|---|")
    ratios = {}
    for name, results in rounds.items():
        rates = [rate for rate, _ in results]
        ratios[name] = statistics.median(v / b for v, b in zip(rates, base))
        cpu = statistics.median(c for _, c in results)
        print(f"| {name} | {statistics.median(rates):.0f} | {max(rates):.0f} | {100 * ratios[name]:.0f} % "
              f"| {cpu:.2f} |")
    full = {k: v for k, v in ratios.items() if k.startswith("pipeline")}
    below = [k for k, v in full.items() if v < 0.7]
    verdict = "OK for every number of workers" if not below else "below target: " + ", ".join(below)
    print(f"\nfull pipeline: {min(full.values()) * 100:.0f}-{max(full.values()) * 100:.0f} % of decode-only "
          f"(target >= 70 % with each number of workers): {verdict}")


if __name__ == "__main__":
    main()
