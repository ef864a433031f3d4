# GFL R-34 FPN, COCO 1x: the LD paper's R-34 student baseline (38.9 AP in its table).
from locdistill.config import load_config

config = load_config("gfl/gfl_r50_fpn_coco_1x")
config.model.backbone.depth = 34
