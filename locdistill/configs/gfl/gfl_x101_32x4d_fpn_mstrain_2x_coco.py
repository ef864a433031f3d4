# GFL ResNeXt-101 32x4d FPN, multi-scale 2x.
# mmdetection's gfl_x101_32x4d_fpn_mstrain_2x_coco; published: 45.9 box AP
# (checkpoint gfl_x101_32x4d_fpn_mstrain_2x_coco_20200630_102002-50c1ffdb.pth).
# ImageNet init in mmdetection: open-mmlab://resnext101_32x4d (set model.backbone.pretrained to a local copy).
from locdistill.config import load_config

config = load_config("gfl/gfl_r101_fpn_mstrain_2x_coco")
config.model.backbone.groups = 32
config.model.backbone.base_width = 4
