# GFLv2 R-101 FPN with deformable convs in C3-C5 (layer2-4), multi-scale 2x: teacher of the LD
# table's R-101-DCN -> R-101 row (46.0 -> 46.8 test-dev), student of R2-101-DCN (48.2 -> 49.1).
# GFocalV2 repo's gfocal_r101_dcn_fpn_ms2x.py (mmcv "DCN", 18 offset channels); published: 48.0 box AP
# (minival), 48.2 (test-dev) (checkpoint "GFocal_R_101_dcnv2_FPN_2x" of the GFocalV2 README,
# Google Drive; save it as checkpoints/gflv2_r101_fpn_dconv_c3-c5_mstrain_2x_coco.pth).
from locdistill.config import load_config

config = load_config("gflv2/gflv2_r101_fpn_mstrain_2x_coco")
config.model.backbone.dcn_stages = (2, 3, 4)
