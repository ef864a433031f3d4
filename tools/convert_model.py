#!/usr/bin/env python
"""``python tools/convert_model.py IN OUT [--format mmdet] [--half]``: ``locdistill convert``.

Another name for ``tools/model_converters/publish_model.py``; see docs/from_ld_code.md.
"""
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:  # run as a script: the checkout, not tools/, first
    sys.path[0] = str(_HERE.parents[0])

from locdistill.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
