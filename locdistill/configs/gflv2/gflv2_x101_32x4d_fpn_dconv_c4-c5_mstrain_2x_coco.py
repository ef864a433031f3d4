# GFLv2 ResNeXt-101 32x4d FPN with deformable convs in C4-C5 (layer3-4), multi-scale 2x: student of
# the LD table's R2-101-DCN -> X-101-32x4d-DCN row (49.0 -> 50.2 test-dev).
# GFocalV2 repo's gfocal_x101_dcn_fpn_ms2x.py; published: 48.8 box AP (minival), 49.0 (test-dev)
# (checkpoint "GFocal_X_101_dcnv2_FPN_2x" of the GFocalV2 README, Google Drive; save it as
# checkpoints/gflv2_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco.pth).
from locdistill.config import load_config

config = load_config("gflv2/gflv2_r101_fpn_mstrain_2x_coco")
config.model.backbone.groups = 32
config.model.backbone.base_width = 4
config.model.backbone.dcn_stages = (3, 4)
