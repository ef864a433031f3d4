#!/usr/bin/env python
"""The LD code's ``python tools/train.py CONFIG [--work-dir DIR] [--resume-from CKPT] [--cfg-options K=V ...]``.

Runs ``locdistill train`` with the same arguments (``--cfg-options`` takes locdistill's config
keys, e.g. ``data.batch_size=2``). ``tools/dist_train.sh CONFIG GPUS`` starts it on several
GPUs. See docs/from_ld_code.md.
"""
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:  # run as a script: the checkout, not tools/, first
    sys.path[0] = str(_HERE.parents[0])

from locdistill.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
