#!/usr/bin/env python
"""The LD code's ``python tools/test.py CONFIG CHECKPOINT --eval bbox|mAP [--out FILE]``.

Runs ``locdistill test`` with the same arguments: ``--eval bbox`` prints the COCO metrics,
``--eval mAP`` the VOC table, ``AP:`` and ``AP50 … AP95``. ``--out`` writes COCO-format JSON
detections (not the original's pickle). ``tools/dist_test.sh CONFIG CHECKPOINT GPUS`` starts
it on several GPUs. See docs/from_ld_code.md.
"""
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:  # run as a script: the checkout, not tools/, first
    sys.path[0] = str(_HERE.parents[0])

from locdistill.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["test", *sys.argv[1:]]))
