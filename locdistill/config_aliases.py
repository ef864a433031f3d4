"""Names other projects give to the experiments locdistill ships.

The LD code's config paths (``configs/ld/ld_gflv1_r101_r50_fpn_coco_1x.py``), mmdetection 2.x
and 3.x names (``ld_r18_gflv1_r101_fpn_coco_1x``, ``ld_r18-gflv1-r101_fpn_1x_coco``,
``gfl_r50_fpn_1x_coco``) and the GFocalV2 repository's names (``gfocal_r101_fpn_ms2x``) map to
the shipped config of the same experiment, so a command typed as the reference README
writes it works here. :func:`locdistill.config.load_config` strips a leading ``configs/``
and ``.py`` first and only asks this table when the name is not a shipped config.

An entry exists only where the shipped config is the same experiment (model, data,
schedule). Names of experiments locdistill does not ship (ATSS/FCOS/RetinaNet students,
feature-imitation-only runs, the LD code's GFLv2 1x configs) are left out on purpose:
they fail with a list of the closest names (:func:`closest_names`). docs/from_ld_code.md
explains each row.
"""
from __future__ import annotations

import difflib
from pathlib import Path

_CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# foreign name (a file name without folder and ``.py``) -> shipped config name
ALIASES: dict[str, str] = {
    # --- LD code (HikariTJU/LD), current and earlier file names; mmdetection 2.x's configs/ld
    "ld_r18_gflv1_r101_fpn_coco_1x": "ld/ld_gflv1_r101_r18_fpn_coco_1x",
    "ld_r34_gflv1_r101_fpn_coco_1x": "ld/ld_gflv1_r101_r34_fpn_coco_1x",
    "ld_r50_gflv1_r101_fpn_coco_1x": "ld/ld_gflv1_r101_r50_fpn_coco_1x",
    "ld_r101_gflv1_r101dcn_fpn_coco_2x": "ld/ld_gflv1_r101dcn_r101_fpn_coco_2x",
    "ld_gflv1_r101_r18_fpn_voc": "voc/ld_gflv1_r101_r18_fpn_voc",
    "ld_r18_gflv1_r101_fpn_voc_1x": "voc/ld_gflv1_r101_r18_fpn_voc",
    "ld_gflv2_r2n_r101dcn_fpn_coco_2x": "ld/ld_gflv2_r2_101dcn_r101dcn_fpn_coco_2x",
    "ld_gflv2_r2n_x101_fpn_coco_2x": "ld/ld_gflv2_r2_101dcn_x101dcn_fpn_coco_2x",
    "ld_gflv2_r2n_r2n_fpn_coco_2x": "ld/ld_gflv2_r2_101dcn_r2_101dcn_fpn_coco_2x_self",
    "ld_gflv2_r2n_selfkd_fpn_coco_2x": "ld/ld_gflv2_r2_101dcn_r2_101dcn_fpn_coco_2x_self",
    # the LD code's GFL baselines and teachers (configs/gfl/)
    "gfl_r101_fpn_voc": "voc/gfl_r101_fpn_voc",
    "gfl_r101_fpn_1x_voc": "voc/gfl_r101_fpn_voc",
    "gfl_r18_fpn1x_voc": "voc/gfl_r18_fpn_voc",
    "gfl_r18_voc_1x": "voc/gfl_r18_fpn_voc",
    "gfl_r18_fpn_1x_coco": "gfl/gfl_r18_fpn_coco_1x",
    "gfl_r34_fpn_1x_coco": "gfl/gfl_r34_fpn_coco_1x",
    "gfl_r101_fpn_1x_coco": "gfl/gfl_r101_fpn_coco_1x",
    "gflv2_r101_fpn_2x_coco": "gflv2/gflv2_r101_fpn_mstrain_2x_coco",
    # --- mmdetection 2.x / 3.x configs/gfl (1x single-scale and ms-2x, with the renames of 3.x)
    "gfl_r50_fpn_1x_coco": "gfl/gfl_r50_fpn_coco_1x",
    "gfl_r50-fpn_1x_coco": "gfl/gfl_r50_fpn_coco_1x",
    "gfl_r50_fpn_ms-2x_coco": "gfl/gfl_r50_fpn_mstrain_2x_coco",
    "gfl_r50-fpn_mstrain-2x_coco": "gfl/gfl_r50_fpn_mstrain_2x_coco",
    "gfl_r101_fpn_ms-2x_coco": "gfl/gfl_r101_fpn_mstrain_2x_coco",
    "gfl_r101-fpn_mstrain-2x_coco": "gfl/gfl_r101_fpn_mstrain_2x_coco",
    "gfl_r101-dconv-c3-c5_fpn_ms-2x_coco": "gfl/gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco",
    "gfl_r101-dconv-c3-c5-fpn_ms-2x_coco": "gfl/gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco",
    "gfl_r101-fpn-dconv-c3-c5_mstrain-2x_coco": "gfl/gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco",
    "gfl_x101-32x4d_fpn_ms-2x_coco": "gfl/gfl_x101_32x4d_fpn_mstrain_2x_coco",
    "gfl_x101-32x4d-fpn_mstrain-2x_coco": "gfl/gfl_x101_32x4d_fpn_mstrain_2x_coco",
    "gfl_x101-32x4d-dconv-c4-c5_fpn_ms-2x_coco": "gfl/gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco",
    "gfl_x101-32x4d-fpn-dconv-c4-c5_mstrain-2x_coco": "gfl/gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco",
    # --- mmdetection 3.x configs/ld (and the names it had in between)
    "ld_r18-gflv1-r101_fpn_1x_coco": "ld/ld_gflv1_r101_r18_fpn_coco_1x",
    "ld_r34-gflv1-r101_fpn_1x_coco": "ld/ld_gflv1_r101_r34_fpn_coco_1x",
    "ld_r34-gflv1-r101-fpn_1x_coco": "ld/ld_gflv1_r101_r34_fpn_coco_1x",
    "ld_r50-gflv1-r101_fpn_1x_coco": "ld/ld_gflv1_r101_r50_fpn_coco_1x",
    "ld_r50-gflv1-r101-fpn_1x_coco": "ld/ld_gflv1_r101_r50_fpn_coco_1x",
    "ld_r101-gflv1-r101-dcn_fpn_2x_coco": "ld/ld_gflv1_r101dcn_r101_fpn_coco_2x",
    "ld_r101-gflv1-r101dcn-fpn_2x_coco": "ld/ld_gflv1_r101dcn_r101_fpn_coco_2x",
    # --- GFocalV2 repository (implus/GFocalV2 configs/gfocal), the LD code's GFLv2 teachers
    "gfocal_r50_fpn_1x": "gflv2/gflv2_r50_fpn_1x_coco",
    "gfocal_r50_fpn_ms2x": "gflv2/gflv2_r50_fpn_mstrain_2x_coco",
    "gfocal_r101_fpn_ms2x": "gflv2/gflv2_r101_fpn_mstrain_2x_coco",
    "gfocal_r101_dcn_fpn_ms2x": "gflv2/gflv2_r101_fpn_dconv_c3-c5_mstrain_2x_coco",
    "gfocal_x101_dcn_fpn_ms2x": "gflv2/gflv2_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco",
    "gfocal_r2n101_dcn_fpn_ms2x": "gflv2/gflv2_r2_101_fpn_dconv_c4-c5_mstrain_2x_coco",
    "gfocal_r2n101_dcn_2x": "gflv2/gflv2_r2_101_fpn_dconv_c4-c5_mstrain_2x_coco",
}


def _shipped() -> list[str]:
    """Shipped config names (``folder/name``), read off the package folder."""
    return sorted(p.relative_to(_CONFIG_DIR).with_suffix("").as_posix() for p in _CONFIG_DIR.rglob("*.py")
                  if not p.name.startswith("_"))


def _basename(name: str) -> str:
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return name[:-3] if name.endswith(".py") else name


def config_alias(name: str) -> str | None:
    """The shipped config name that ``name`` (a foreign config name or path, without ``.py``)
    stands for, or None.

    Looks the file name (without its folder) up in :data:`ALIASES`, then among the shipped
    configs: a foreign path whose file name is a shipped config's in another folder
    (``configs/gfl/gflv2_r50_fpn_1x_coco`` → ``gflv2/gflv2_r50_fpn_1x_coco``) resolves to it
    when exactly one shipped config has that file name.
    """
    base = _basename(name)
    if base in ALIASES:
        return ALIASES[base]
    hits = [n for n in _shipped() if n.rsplit("/", 1)[-1] == base]
    return hits[0] if len(hits) == 1 else None


def closest_names(name: str, shipped: list[str] | None = None, n: int = 5) -> list[str]:
    """Up to ``n`` names close to ``name``: shipped configs, and foreign names of
    :data:`ALIASES` written as ``foreign (= shipped)``; closest first.

    Matching compares file names (folders and ``.py`` left out), so ``configs/ld/ld_r50_gflv1.py``
    still finds ``ld_r50_gflv1_r101_fpn_coco_1x``.
    """
    shipped = _shipped() if shipped is None else list(shipped)
    base = _basename(name)
    by_base: dict[str, str] = {}
    for s in shipped:
        by_base.setdefault(s.rsplit("/", 1)[-1], s)
    for foreign, target in ALIASES.items():
        by_base.setdefault(foreign, f"{foreign} (= {target})")
    close = difflib.get_close_matches(base, list(by_base), n=n, cutoff=0.4)
    return [by_base[c] for c in close]
