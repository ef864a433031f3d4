# LD: GFL R-50 FPN student distilled from the GFL R-101 ms-2x teacher, COCO 1x.
# Published (LD repo README, COCO val2017): 41.1 box AP, vs 40.1 for the plain R-50
# (mmdetection's port: 41.0).
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_r50_fpn_coco_1x")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

config.distill = DistillConfig.paper("gfl/gfl_r101_fpn_mstrain_2x_coco", "checkpoints/gfl_r101_fpn_mstrain_2x_coco.pth")
