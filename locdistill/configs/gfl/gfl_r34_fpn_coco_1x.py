# GFL R-34 FPN, COCO 1x: the LD paper's R-34 student baseline.
# Published (LD repo README, COCO val2017): 38.9 box AP. No released checkpoint: train it
# with `locdistill train gfl/gfl_r34_fpn_coco_1x` (mmdetection has no GFL R-34 model).
from locdistill.config import load_config

config = load_config("gfl/gfl_r50_fpn_coco_1x")
config.model.backbone.depth = 34
