# GFL R-101 FPN, COCO 1x (single-scale training, 12 epochs).
# No released 1x checkpoint: the published R-101 teacher is the ms-2x model
# (gfl_r101_fpn_mstrain_2x_coco, 44.7 box AP); the LD table's plain R-101 2x student is 44.6.
from locdistill.config import load_config

config = load_config("gfl/gfl_r50_fpn_coco_1x")
config.model.backbone.depth = 101
