#!/usr/bin/env python
"""mmdetection 2.x's and the later LD code's ``python tools/analysis_tools/benchmark.py CONFIG CHECKPOINT``.

The same as ``tools/benchmark.py`` (``locdistill benchmark``); see docs/from_ld_code.md.
"""
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:  # run as a script: the checkout, not tools/, first
    sys.path[0] = str(_HERE.parents[1])

from locdistill.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
