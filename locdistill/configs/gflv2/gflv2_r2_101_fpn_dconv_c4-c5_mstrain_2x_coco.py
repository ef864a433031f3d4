# GFLv2 Res2Net-101 (26w×4s, deep stem, avg-down) FPN with deformable convs in C4-C5 (layer3-4),
# multi-scale 2x: the strongest teacher of the LD tables (students R-101-DCN 48.2 -> 49.1,
# X-101-32x4d-DCN 49.0 -> 50.2, Self-LD 50.5 -> 51.0, test-dev).
# GFocalV2 repo's gfocal_r2n101_dcn_fpn_ms2x.py; published: 49.9 box AP (minival), 50.5 (test-dev)
# (checkpoint "GFocal_R2_101_dcnv2_FPN_2x" of the GFocalV2 README, Google Drive; save it as
# checkpoints/gflv2_r2_101_fpn_dconv_c4-c5_mstrain_2x_coco.pth).
# ImageNet init in mmdetection: open-mmlab://res2net101_v1d_26w_4s (a local copy via model.backbone.pretrained).
from locdistill.config import load_config

config = load_config("gflv2/gflv2_r101_fpn_mstrain_2x_coco")
config.model.backbone.type = "res2net"
config.model.backbone.base_width = 26
config.model.backbone.scales = 4
config.model.backbone.dcn_stages = (3, 4)
