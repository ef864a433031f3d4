"""Names other projects give to the experiments locdistill ships (issue 14 fills the table).

The LD code's config paths (``configs/ld/ld_gflv1_r101_r50_fpn_coco_1x.py``) and mmdetection 3.x's
names (``ld_r18-gflv1-r101_fpn_1x_coco``) map to a shipped config name, so a command typed as the
reference README writes it works here.
"""
from __future__ import annotations

ALIASES: dict[str, str] = {}


def config_alias(name: str) -> str | None:
    """The shipped config name that ``name`` (a foreign config name, without ``.py``) stands for, or None."""
    return ALIASES.get(name.rsplit("/", 1)[-1])
