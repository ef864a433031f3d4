# Self-LD: GFL R-50 FPN distilled from a normally trained GFL R-50 FPN (same architecture), COCO 1x.
# Published (LD repo README, "GFocalV1 with Self-LD", COCO val2017): 40.6 box AP, vs 40.1 plain.
# Teacher weights: mmdetection's gfl_r50_fpn_1x_coco_20200629_121244-25944287.pth saved as the
# path below, or your own `locdistill train gfl/gfl_r50_fpn_coco_1x` result.
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_r50_fpn_coco_1x")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

config.distill = DistillConfig.paper("gfl/gfl_r50_fpn_coco_1x", "checkpoints/gfl_r50_fpn_coco_1x.pth")
