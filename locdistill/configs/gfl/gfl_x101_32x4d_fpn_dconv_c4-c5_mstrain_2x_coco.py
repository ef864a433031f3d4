# GFL ResNeXt-101 32x4d FPN with deformable convs in C4-C5 (layer3-4), multi-scale 2x:
# the LD table's Self-LD X-101-32x4d-DCN model (46.9 -> 47.5 box AP with Self-LD, LD repo).
# mmdetection's gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco; published: 48.1 box AP
# (checkpoint gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco_20200630_102002-14a2bf25.pth).
from locdistill.config import load_config

config = load_config("gfl/gfl_x101_32x4d_fpn_mstrain_2x_coco")
config.model.backbone.dcn_stages = (3, 4)
