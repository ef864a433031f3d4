# GFLv2 R-101 FPN, multi-scale 2x: teacher of the LD table's GFLv2 R-101 -> R-50 row (44.4 -> 44.8
# test-dev) and its R-101 student baseline (46.0 test-dev).
# GFocalV2 repo's gfocal_r101_fpn_ms2x.py; published: 45.8 box AP (minival), 46.0 (test-dev)
# (checkpoint "GFocal_R_101_FPN_2x" of the GFocalV2 README, Google Drive; save it as
# checkpoints/gflv2_r101_fpn_mstrain_2x_coco.pth).
from locdistill.config import load_config

config = load_config("gflv2/gflv2_r50_fpn_mstrain_2x_coco")
config.model.backbone.depth = 101
