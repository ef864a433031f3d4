#!/usr/bin/env python
"""The LD code's ``python tools/benchmark.py CONFIG CHECKPOINT [--fuse-conv-bn] [--log-interval N]``.

Runs ``locdistill benchmark`` with the same arguments: 2000 images after 5 warm-up, one at a
time, printed as the LD code prints them (``Done image [50 / 2000], fps: ... img / s``,
``Overall fps: ... img / s``). CONFIG may be the LD code's or mmdetection's config path or name
(``configs/ld/ld_gflv1_r101_r50_fpn_coco_1x.py``); see docs/from_ld_code.md.
"""
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:  # run as a script: the checkout, not tools/, first
    sys.path[0] = str(_HERE.parents[0])

from locdistill.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
