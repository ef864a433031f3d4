# GFL R-101 FPN with deformable convs in C3-C5 (layer2-4), multi-scale 2x: the teacher of
# the LD table's R-101-DCN -> R-101 row (student 44.6 -> 45.4 with LD).
# mmdetection's gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco; published: 47.1 box AP
# (checkpoint gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco_20200630_102002-134b07df.pth).
from locdistill.config import load_config

config = load_config("gfl/gfl_r101_fpn_mstrain_2x_coco")
config.model.backbone.dcn_stages = (2, 3, 4)
