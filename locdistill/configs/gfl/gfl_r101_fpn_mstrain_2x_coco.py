# GFL R-101 FPN ms-2x: the teacher of most published LD results.
# mmdetection's gfl_r101_fpn_mstrain_2x_coco; published: 44.7 box AP
# (checkpoint gfl_r101_fpn_mstrain_2x_coco_20200629_200126-dd12f847.pth).
from locdistill.config import load_config

config = load_config("gfl/gfl_r50_fpn_mstrain_2x_coco")
config.model.backbone.depth = 101
