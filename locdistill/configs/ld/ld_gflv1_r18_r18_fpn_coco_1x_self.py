# Self-LD: GFL R-18 FPN distilled from a normally trained GFL R-18 FPN, COCO 1x.
# Published (LD repo README, "GFocalV1 with Self-LD", COCO val2017): 36.1 box AP, vs 35.8 plain.
# Teacher weights: no released R-18 model; train it first (`locdistill train gfl/gfl_r18_fpn_coco_1x`)
# and copy work_dirs/gfl_r18_fpn_coco_1x/latest.pth to the path below.
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_r18_fpn_coco_1x")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

config.distill = DistillConfig.paper("gfl/gfl_r18_fpn_coco_1x", "checkpoints/gfl_r18_fpn_coco_1x.pth")
