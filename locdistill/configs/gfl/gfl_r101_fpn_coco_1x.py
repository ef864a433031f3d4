# GFL R-101 FPN, COCO 1x: the LD paper's main teacher (LD repo: 44.7 AP with ms-2x, see
# gfl_r101_fpn_mstrain_2x_coco).
from locdistill.config import load_config

config = load_config("gfl/gfl_r50_fpn_coco_1x")
config.model.backbone.depth = 101
