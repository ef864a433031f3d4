# GFL R-18 FPN, COCO 1x: the LD paper's R-18 student baseline.
# Published (LD repo README, COCO val2017): 35.8 box AP. No released checkpoint: train it
# with `locdistill train gfl/gfl_r18_fpn_coco_1x` (mmdetection has no GFL R-18 model).
from locdistill.config import load_config

config = load_config("gfl/gfl_r50_fpn_coco_1x")
config.model.backbone.depth = 18
