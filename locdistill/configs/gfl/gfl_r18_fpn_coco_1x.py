# GFL R-18 FPN, COCO 1x: the LD paper's R-18 student baseline (35.8 AP in its table).
from locdistill.config import load_config

config = load_config("gfl/gfl_r50_fpn_coco_1x")
config.model.backbone.depth = 18
