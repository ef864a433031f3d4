#!/usr/bin/env python
"""The LD code's ``python tools/model_converters/publish_model.py IN_FILE OUT_FILE``.

Runs ``locdistill convert IN_FILE OUT_FILE``: drops the optimizer (as the original) and also
the teacher weights and other training state, and writes ``OUT_FILE-<sha256[:8]>.pth``. Add
``--format mmdet`` for a file that mmdetection and the LD code load (the default is
locdistill's layout; locdistill reads both). See docs/from_ld_code.md.
"""
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:  # run as a script: the checkout, not tools/, first
    sys.path[0] = str(_HERE.parents[1])

from locdistill.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
